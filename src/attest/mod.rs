//! Attestations about what ksbuild built: SLSA provenance in in-toto statements, DSSE
//! envelopes signed with Nix keys. Pure: the CLI gathers the facts from the store and the
//! project; these modules only write and check documents.

// The bill and its SPDX form are shared with the images' in-sandbox SBOM writer, whose
// crate (built by Debian's rustc 1.63 in the `rust` environment) holds the file.
#[path = "../../fragments/sbom-tool/src/bill.rs"]
pub mod bill;
pub mod dsse;
pub mod provenance;
pub mod sbom;
