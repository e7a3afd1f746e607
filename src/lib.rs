//! ksbuild: a Nix-style hermetic derivation builder for KubeSolo OS.
#![doc = "(architecture tour: to be written)"]

pub mod compat;
pub mod cli;
pub mod store;
