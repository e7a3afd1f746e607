{
  description = "ksbuild: hermetic, Nix-compatible builds of KubeSolo OS";

  # No inputs: the flake evaluates offline. Every target of derivations/ is a package, lowered
  # in pure Nix by fragments/lower.nix to the same .drv as `ksbuild instantiate` (README,
  # "Nix users").
  outputs = { self }:
    let
      cargo = builtins.fromTOML (builtins.readFile ./Cargo.toml);
      project = import ./fragments/lower.nix { root = ./.; };
      # `NAME@VARIANT` is a quoted attribute (`.#"rpi-image@small"`); `NAME-VARIANT` is an
      # alias for it unless a target of that name exists.
      aliases = builtins.listToAttrs (builtins.concatMap (t:
        let m = builtins.match "(.*)@(.*)" t; alias = "${builtins.head m}-${builtins.elemAt m 1}";
        in if m == null || project.derivations ? ${alias} then [ ]
           else [ { name = alias; value = project.derivations.${t}; } ]) project.targetNames);
      packages = project.derivations // aliases
        // (if project.derivations ? rpi-image then { default = project.derivations.rpi-image; } else { });
    in {
      packages.x86_64-linux = packages;
      lib = {
        # The ksbuild version, read from Cargo.toml (checked by the test suite).
        version = cargo.package.version;
        # Targets declared in derivations/ (one TOML file each, and `FILE@VARIANT` for each of
        # its variants; `_*.toml` are settings).
        targets = project.targetNames;
        # The logical store directory every path is hashed with.
        storeDir = builtins.storeDir;
        # The .drv path of every target, variants included: `nix eval --json .#lib.drvPaths`.
        drvPaths = builtins.mapAttrs (_: d: d.drvPath) project.derivations;
        # The locked build environments (`sandboxes/NAME.toml`), as derivations.
        environments = project.environments;
      };
    };
}
