//! Nix's data formats, byte for byte: nixbase32, hashes, store paths, ATerm derivations,
//! NAR, NAR listings, narinfo and signatures. Pure: this layer does no I/O — serialisers take
//! `&mut impl io::Write`, parsers take `impl io::Read` or bytes, and hash-modulo gets the
//! hashes of input derivations through a closure.

pub mod base64;
pub mod derivation;
pub mod hash;
pub mod nar;
pub mod nar_listing;
pub mod narinfo;
pub mod nixbase32;
pub mod refscan;
pub mod signing;
pub mod store_path;

pub use hash::{Hash, HashAlgo};
pub use store_path::{FileIngestionMethod, StoreDir, StorePath};
