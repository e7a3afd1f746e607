//! Attestations about what ksbuild built: SLSA provenance in in-toto statements, DSSE
//! envelopes signed with Nix keys. Pure: the CLI gathers the facts from the store and the
//! project; these modules only write and check documents.

pub mod bill;
pub mod dsse;
pub mod provenance;
pub mod sbom;
