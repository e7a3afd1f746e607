//! Remote builders through Nix's serve protocol (`nix-store --serve`): the wire format
//! ([`wire`]); which machines may build a derivation and which one does ([`machines`],
//! Nix's `builders` setting); the client that copies closures over `ssh`, builds and copies
//! the outputs back, checked ([`client`]); and the server, `ksbuild --serve --write`
//! ([`server`]). See `../shared/reference/nix-serve-protocol.md`.

pub mod client;
pub mod dispatch;
pub mod machines;
pub mod wire;
