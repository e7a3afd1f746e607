{
  description = "ksbuild: hermetic, Nix-compatible builds of KubeSolo OS";

  # No inputs: the flake evaluates offline. Derivations in derivations/*.toml are
  # exposed here as they gain a Nix lowering (see README, "Nix interop").
  outputs = { self }:
    let
      cargo = builtins.fromTOML (builtins.readFile ./Cargo.toml);
      entries = builtins.readDir ./derivations;
      tomlNames = builtins.filter (n: builtins.match "[^_.].*\\.toml" n != null) (builtins.attrNames entries);
    in {
      lib = {
        # The ksbuild version, read from Cargo.toml (checked by the test suite).
        version = cargo.package.version;
        # Targets declared in derivations/ (one TOML file each; `_*.toml` are settings).
        targets = map (n: builtins.head (builtins.match "(.*)\\.toml" n)) tomlNames;
        # The logical store directory every path is hashed with.
        storeDir = builtins.storeDir;
      };
    };
}
