//! The one integration test binary: end-to-end tests of the `ksbuild` command and
//! cross-checks against real Nix 2.8. Shared helpers live in `common`.

mod common;
mod flake;
mod sandbox;
