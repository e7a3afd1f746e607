//! The one integration test binary: end-to-end tests of the `ksbuild` command and
//! cross-checks against real Nix 2.8. Shared helpers live in `common`.

mod cache;
mod cache_export;
mod check;
mod common;
mod environment;
mod faults;
mod firstboot;
mod flake;
mod graph;
mod http_server;
mod images;
mod init;
mod instantiate;
mod iso;
mod kernels;
mod lock;
mod nix_derivations;
mod nix_narinfo;
mod nix_store;
mod progress;
mod provenance;
mod realise;
mod remote;
mod remote_build;
mod sandbox;
mod sbom;
mod ssh_server;
mod substitute;
mod system_features;
mod trees;
mod update;
mod update_agent;
mod vm;
