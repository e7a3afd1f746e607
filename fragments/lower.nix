# The lowering of `derivations/` to Nix derivations, in pure Nix: the rules of ksbuild's
# `src/model/lower.rs` (README, "The derivation language"), written a second time so that a
# Nix user needs neither ksbuild nor nixpkgs. Reads the same files ksbuild reads —
# `derivations/**.toml`, `derivations/_project.toml`, `derivations/pins.lock`,
# `sandboxes/NAME.toml` and `NAME.lock`, the repository files named by `path` inputs — with
# `builtins.fromTOML`, `readFile`, `readDir`, `path`, `toFile` and `derivation`; no inputs,
# no import-from-derivation. Every `.drv` it yields is the one `ksbuild instantiate` writes
# (tests/it/flake.rs checks every target and variant); a rule found on one side only is a bug.
#
# Usage: `import ./fragments/lower.nix { root = ./.; }` (what flake.nix does), or without
# flakes: `nix-instantiate -E '(import ./fragments/lower.nix { root = ./.; }).targets.hello'`.
{ root }:
let
  inherit (builtins)
    attrNames attrValues concatLists concatMap concatStringsSep elem filter foldl' fromTOML
    genList getContext hasAttr head isAttrs isBool isList isString length listToAttrs
    mapAttrs match pathExists readDir readFile split stringLength substring tail;

  # Every error names its file and, where one helps, the fix (as ksbuild's `help:` does).
  fail = where: message: help:
    throw ("ksbuild flake: ${where}: ${message}" + (if help == null then "" else "\n  help: ${help}"));

  # Keys a table may hold: ksbuild's schema denies unknown fields, so does this.
  checkKeys = where: allowed: table:
    let unknown = filter (k: !(elem k allowed)) (attrNames table);
    in if unknown == [ ] then table
       else fail where "unknown field `${head unknown}`, expected one of ${concatStringsSep ", " (map (k: "`${k}`") allowed)}"
         "see the key reference in README.md, \"The derivation language\"";
  checkString = where: key: v:
    if isString v then v else fail where "`${key}` must be a string" null;
  checkStrings = where: key: vs:
    if isList vs && foldl' (ok: v: ok && isString v) true vs then vs
    else fail where "`${key}` must be a list of strings" null;
  checkEnv = where: key: env:
    if isAttrs env then mapAttrs (k: checkString where "${key}.${k}") env
    else fail where "`${key}` must be a table of strings" null;

  chars = s: genList (i: substring i 1 s) (stringLength s);
  hasSuffix = suffix: s:
    let n = stringLength s; m = stringLength suffix;
    in n >= m && substring (n - m) m s == suffix;
  removeSuffix = suffix: s:
    if hasSuffix suffix s then substring 0 (stringLength s - stringLength suffix) s else s;
  last = l: builtins.elemAt l (length l - 1);
  # Store names: letters, digits and `+-._?=`, not starting with `.`.
  validName = n: n != "" && match "[A-Za-z0-9+._?=-]+" n != null && substring 0 1 n != "."
    && stringLength n <= 211;
  checkName = where: n:
    if validName n then n
    else fail where "`${n}` cannot name a store path" "use letters, digits and `+-._?=`";

  readToml = path: fromTOML (readFile path);

  # ---- The project's files --------------------------------------------------------------

  derivationsDir = root + "/derivations";

  # derivations/**.toml except `_*` and `.*` files (ksbuild's `Index::new`), in path order.
  walk = dir: rel:
    let entries = readDir dir;
    in concatMap (n:
      let
        kind = entries.${n};
        r = if rel == "" then n else "${rel}/${n}";
      in
        if kind == "directory" then walk (dir + "/${n}") r
        else if kind == "regular" && match "[^_.].*\\.toml" n != null
        then [ { name = head (match "(.*)\\.toml" n); file = "derivations/${r}"; path = dir + "/${n}"; } ]
        else [ ]) (attrNames entries);
  files = if pathExists derivationsDir then walk derivationsDir "" else [ ];

  settingsFile = derivationsDir + "/_project.toml";
  settings =
    if pathExists settingsFile
    then
      let s = checkKeys "derivations/_project.toml" [ "system" "env" ] (readToml settingsFile);
      in {
        system = if s ? system then checkString "derivations/_project.toml" "system" s.system else null;
        env =
          let
            env = checkEnv "derivations/_project.toml" "env" (s.env or { });
            bad = filter (k: elem k reservedEnv) (attrNames env);
          in if bad == [ ] then env
             else fail "derivations/_project.toml" "`env.${head bad}` is set by ksbuild itself"
               "`${head bad}` is derived from each derivation's keys; remove it from `[env]`";
      }
    else { system = null; env = { }; };

  pinsFile = derivationsDir + "/pins.lock";
  pins =
    if pathExists pinsFile
    then map (checkKeys "derivations/pins.lock" [ "url" "mode" "hash" ])
      ((checkKeys "derivations/pins.lock" [ "pin" ] (readToml pinsFile)).pin or [ ])
    else [ ];
  findPin = url: mode:
    let found = filter (p: p.url == url && p.mode == mode) pins;
    in if found == [ ] then null else (head found).hash;

  derivationKeys = [ "name" "system" "builder" "args" "env" "outputs" "environment" "inputs" "fetch" "variants"
    "required-system-features" ];
  variantKeys = [ "name" "args" "env" "inputs" "required-system-features" ];
  fetchKeys = [ "url" "hash" "name" "recursive" "unpack" "executable" ];

  # Targets by name: each file, and `FILE@VARIANT` for each of its `[variants]` (ksbuild's
  # `insert_target`): env and inputs merged, args and required-system-features replaced, the store name
  # `NAME-of-file-VARIANT` unless the variant names one.
  parsed = map (f: f // { spec = checkKeys f.file derivationKeys (readToml f.path); }) files;
  targetList = concatMap (f:
    let
      base = removeAttrs f.spec [ "variants" ];
      baseName = f.spec.name or f.name;
      variants = f.spec.variants or { };
    in [ { name = f.name; value = { inherit (f) file; spec = base; }; } ]
      ++ map (v:
        let vs = checkKeys "${f.file} [variants.${v}]" variantKeys variants.${v};
        in {
          name = "${f.name}@${v}";
          value = {
            inherit (f) file;
            spec = base // {
              name = vs.name or "${baseName}-${v}";
              env = (base.env or { }) // (vs.env or { });
              inputs = (base.inputs or { }) // (vs.inputs or { });
            } // (if vs ? args then { inherit (vs) args; } else { })
              // (if vs ? required-system-features then { inherit (vs) required-system-features; } else { });
          };
        }) (attrNames variants)) parsed;
  targets =
    let
      byName = foldl' (acc: t:
        if acc ? ${t.name}
        then fail t.value.file "two files define the target `${t.name}`: `${acc.${t.name}.file}` and `${t.value.file}`"
          "target names come from file names; rename one of the files"
        else acc // { ${t.name} = t.value; }) { } targetList;
    in byName;

  # ---- Downloads ------------------------------------------------------------------------

  # How a download is stored: part of what a pin pins (`pins::fetch_mode`).
  fetchMode = spec:
    if spec ? unpack then (if elem spec.unpack [ "deb" "tar" ] then spec.unpack else "unpack")
    else if spec.recursive or false then "recursive"
    else if spec.executable or false then "executable"
    else "flat";

  # The algorithm of a download hash: SRI, `algo:digest`, or a bare digest's length
  # (`lower::parse_fetch_hash`; hex or nix32, md5 first as in `HashAlgo::ALL`).
  hashAlgo = where: text:
    let
      sri = match "(md5|sha1|sha256|sha512)-.*" text;
      prefixed = match "(md5|sha1|sha256|sha512):.*" text;
      n = stringLength text;
      byLength = filter (a: n == a.hex || n == a.nix32) [
        { name = "md5"; hex = 32; nix32 = 26; }
        { name = "sha1"; hex = 40; nix32 = 32; }
        { name = "sha256"; hex = 64; nix32 = 52; }
        { name = "sha512"; hex = 128; nix32 = 103; }
      ];
    in if sri != null then head sri
       else if prefixed != null then head prefixed
       else if byLength != [ ] then (head byLength).name
       else fail where "malformed hash `${text}`"
         "write it in SRI form (`sha256-<base64>`), or as nix32 or hex (optionally prefixed `sha256:`)";

  pinCommand = key: url:
    let file = head (match "([^?#]*).*" (last (split "/" url)));
    in "ksbuild pin ${key} /path/to/${if file == "" then "FILE" else file}";

  # A fixed-output download (`Lowerer::fetch_node`): `builtin:fetchurl` with the URL as
  # written; its output path depends only on its name, mode and hash.
  fetchNode = { key, where, defaultName ? null, spec }:
    let
      s = checkKeys where fetchKeys spec;
      url = checkString where "url" s.url;
      schemeOk = match "(https|http|file)://.*" url != null || match "mirror://[^/]+/.+" url != null;
      mode = fetchMode s;
      pinned = findPin url mode;
      hashText =
        if s ? hash then checkString where "hash" s.hash
        else if pinned != null then pinned
        else fail where "the download `${url}` (`${key}`) has no hash and is not pinned yet"
          "`ksbuild realise` pins it on first fetch; where it cannot be downloaded, provide the file with `${pinCommand key url}`";
      unpack = s.unpack or null;
      recursive = s.recursive or false || unpack != null;
      executable = s.executable or false;
      base = head (match "([^?#]*).*" (last (split "/" url)));
      tarExts = filter (e: hasSuffix e base) [ ".tar.gz" ".tgz" ".tar.xz" ".tar.zst" ".tar.bz2" ".tar" ];
      derived =
        if unpack == "deb" then removeSuffix ".deb" base
        else if unpack == "tar" && tarExts != [ ] then removeSuffix (head tarExts) base
        else base;
      name = checkName where (s.name or (if defaultName != null then defaultName else derived));
    in
      if !schemeOk then fail where "unsupported URL `${url}`" "use `https://`, `http://`, `file://` or `mirror://NAME/path`"
      else if unpack != null && !(elem unpack [ "deb" "tar" ]) then fail where "unknown unpack format `${unpack}`" "use `deb` or `tar`"
      else if executable && recursive then fail where "`executable` applies only to flat downloads" null
      else derivation ({
        inherit name url;
        system = "builtin";
        builder = "builtin:fetchurl";
        outputHash = hashText;
        outputHashAlgo = hashAlgo where hashText;
        outputHashMode = if recursive then "recursive" else "flat";
      } // (if executable then { executable = "1"; } else { })
        // (if unpack != null then { ksbuildUnpack = unpack; } else { }));

  # ---- Environments ---------------------------------------------------------------------

  busyboxTarget = "busybox-static";
  busybox = where:
    if lowered ? ${busyboxTarget} then lowered.${busyboxTarget}
    else fail where "this derivation runs in an environment, which needs a `${busyboxTarget}` derivation"
      "add `derivations/${busyboxTarget}.toml` (Debian's busybox-static, a `[fetch]` with `unpack = \"deb\"`)";
  enterScript = builtins.toFile "environment-enter.sh" (readFile (root + "/fragments/environment-enter.sh"));
  unpackScript = builtins.toFile "environment-unpack.sh" (readFile (root + "/fragments/environment-unpack.sh"));

  sandboxes = root + "/sandboxes";
  environmentNames =
    if pathExists sandboxes
    then map (n: head (match "(.*)\\.toml" n)) (filter (n: match ".*\\.toml" n != null) (attrNames (readDir sandboxes)))
    else [ ];

  # The locked `.deb`s of environment NAME: one download each, in the lock's order
  # (`Lowerer::environment`), as { name; drv; }.
  environmentDebs = listToAttrs (map (envName: {
    name = envName;
    value =
      let
        lockPath = sandboxes + "/${envName}.lock";
        lock =
          if pathExists lockPath then readToml lockPath
          else fail "sandboxes/${envName}.toml" "environment `${envName}` is not locked (`sandboxes/${envName}.lock` is missing)" "run `ksbuild lock ${envName}`";
      in map (deb: {
        inherit (deb) name;
        drv = fetchNode {
          key = "environment-${envName}.${deb.name}-${deb.architecture}";
          where = "sandboxes/${envName}.lock";
          spec = {
            url = "mirror://${deb.mirror}/${deb.path}";
            hash = "sha256:${deb.sha256}";
            name = builtins.concatStringsSep "" (map (c: if match "[A-Za-z0-9+._?=-]" c != null then c else "_")
              (chars (last (split "/" deb.path))));
          };
        };
      }) (lock.deb or [ ]);
  }) environmentNames);

  # The tree of environment NAME (`Lowerer::environment`): its `.deb`s unpacked with the
  # static busybox by `fragments/environment-unpack.sh`.
  environments = listToAttrs (map (envName: {
    name = envName;
    value =
      let
        where = "sandboxes/${envName}.toml";
        declared = checkKeys where [ "suites" "security" "components" "architecture" "essential" "packages" "data" "fixups" ]
          (readToml (sandboxes + "/${envName}.toml"));
        treeKey = "environment-${envName}";
        bb = busybox where;
        debs = map (d: d.drv) environmentDebs.${envName};
        fixups = declared.fixups or { };
        system = if settings.system != null then settings.system
          else fail where "environment `${envName}` needs the project's `system`, where its builder (the static busybox of `${busyboxTarget}`) runs"
            "add `system = \"x86_64-linux\"` to `derivations/_project.toml`";
      in derivation (settings.env // {
        name = treeKey;
        inherit system;
        builder = "${bb}/bin/busybox";
        args = [ "sh" "-e" "${unpackScript}" ];
        debs = concatStringsSep " " (map (d: "${d}") debs);
        fixups = concatStringsSep "\n" (map (p: "${p} ${fixups.${p}}") (attrNames fixups));
      });
  }) environmentNames);
  # The `.deb`s of environment NAME as an input: all, or those of `packages`.
  environmentDebsInput = where: envName: packages:
    let
      debs = environmentDebs.${envName};
      missing = filter (p: !(builtins.any (d: d.name == p) debs)) packages;
      chosen = if packages == null then debs else filter (d: elem d.name packages) debs;
    in
    if packages != null && missing != [ ] then
      fail where "environment `${envName}` has no locked package `${head missing}`"
        "add it to `sandboxes/${envName}.toml` and run `ksbuild lock ${envName}`"
    else concatStringsSep " " (map (d: "${d.drv}") chosen);
  environment = where: envName:
    environments.${envName} or (fail where "unknown environment `${envName}`"
      "environments are `sandboxes/NAME.toml`: ${concatStringsSep ", " environmentNames}");

  # ---- Builds ---------------------------------------------------------------------------

  # `${NAME}` is the store path of input NAME; `$${` is a literal `${` (`lower::substitute`).
  substitute = where: values: outputs: text:
    concatStringsSep "" (map (part:
      if isString part then
        (if match ".*[$][{].*" part != null
         then fail where "unterminated `\${` in `${text}`" "write `$\${` for a literal `\${`"
         else part)
      else if head part == null then "\${"
      else let n = head part; in
        values.${n} or (fail where "unknown input `${n}`"
          (if elem n outputs then "`${n}` is an output: use the shell variable `\$${n}`, or write `$\${${n}}`"
           else "inputs are: ${concatStringsSep ", " (attrNames values)}")))
      (split "[$][$][{]|[$][{]([^}]*)[}]" (checkString where "value" text)));

  # Keys of env that `derivation` itself interprets (ksbuild reserves the same).
  reservedEnv = [ "name" "system" "builder" "outputs" "args" "__structuredAttrs" "__ignoreNulls"
    "__contentAddressed" "__impure" "outputHash" "outputHashAlgo" "outputHashMode"
    "requiredSystemFeatures" ];

  # `required-system-features`: single words (Nix splits the attribute on spaces, tabs and
  # newlines when it reads it back), passed to `derivation` as a list, which it writes as
  # the words joined by single spaces (`lower::required_system_features`).
  checkFeatures = where: features:
    let bad = filter (f: match "[^ \t\n\r]+" f == null) (checkStrings where "required-system-features" features);
    in if bad == [ ] then features
       else fail where "`${head bad}` is not one system feature"
         "features are single words, such as `big-parallel` or `kvm`: list each as its own string";

  lowerBuild = targetName: where: spec:
    let
      builder = if spec ? builder then checkString where "builder" spec.builder
        else fail where "`${targetName}` has neither `builder` nor `[fetch]`"
          "add `builder = \"\${busybox}/bin/busybox\"` (and inputs), or a `[fetch]` table";
      name = checkName where (spec.name or targetName);
      system = if spec ? system then spec.system
        else if settings.system != null then settings.system
        else fail where "`${targetName}` does not say its `system`"
          "add `system = \"x86_64-linux\"` here or to `derivations/_project.toml`";
      outputs = if spec ? outputs then checkStrings where "outputs" spec.outputs else [ "out" ];
      features = if spec ? required-system-features then checkFeatures where spec.required-system-features else null;
      outputsOk = outputs != [ ]
        && foldl' (ok: o: ok && validOutput o) true outputs
        && length (attrNames (listToAttrs (map (o: { name = o; value = null; }) outputs))) == length outputs;
      validOutput = o: match "[A-Za-z0-9+._?=-]+" o != null && o != "drv";
      inputValue = input: i:
        let w = "${where}: input `${input}`"; in
        if isString i then depOutput w i "out"
        else if !isAttrs i then fail w "a derivation name, or a table with `drv`, `path`, `url`, `environment` or `debs`" null
        else if i ? drv then depOutput w (checkKeys w [ "drv" "output" ] i).drv (i.output or "out")
        else if i ? environment then "${environment w (checkKeys w [ "environment" ] i).environment}"
        else if i ? debs then
          let d = checkKeys w [ "debs" "packages" ] i;
          in builtins.seq (environment w d.debs) (environmentDebsInput w d.debs (if d ? packages then checkStrings w "packages" d.packages else null))
        else if i ? path then
          let
            p = (checkKeys w [ "path" "name" ] i).path;
            storeName = i.name or (baseNameOf p);
          in if substring 0 1 p == "/" then fail w "`${p}` is an absolute path" "path inputs are files of the project, relative to its root"
             else if elem storeName [ "" "." ".." ] || match "(\\./?)*" p != null then fail w "`${p}` holds the project root, which ksbuild never imports" "import the folders the build needs (`fragments`, `tools/…`)"
             else "${builtins.path { path = root + "/${p}"; name = checkName w storeName; }}"
        else if i ? url then "${fetchNode { key = "${targetName}.${input}"; where = w; spec = i; }}"
        else fail w "an input table needs exactly one of `drv` (a derivation), `path` (a repository file), `url` (a download), `environment` (a locked tree, as data) or `debs` (an environment's locked .deb files)" null;
      depOutput = w: dep: output:
        let drv = lowered.${dep} or (fail w "names the unknown derivation `${dep}`" "no such file in derivations/");
        in if elem output (drv.outputs or [ "out" ]) then "${drv.${output}}"
           else fail w "`${dep}` has no output `${output}`" "its outputs are: ${concatStringsSep ", " drv.outputs}";
      values = mapAttrs inputValue (spec.inputs or { });
      subst = substitute where values outputs;
      # Checked before any value is used: a reserved key would be overridden, never forced.
      env =
        let
          declared = checkEnv where "env" (spec.env or { });
          bad = filter (k: elem k (reservedEnv ++ outputs)) (attrNames declared);
        in if bad == [ ] then mapAttrs (_: subst) declared
           else fail where "`env.${head bad}` is set by ksbuild itself"
             "`${head bad}` is derived from the derivation's keys; remove it from `env`";
      args = map subst (checkStrings where "args" (spec.args or [ ]));
      # Every declared input is an input of the derivation, used in a string or not: its
      # context goes on the builder, as ksbuild lists every input in the `.drv`.
      inputsContext = getContext (concatStringsSep "" (attrValues values));
      builder' = builtins.appendContext (subst builder) inputsContext;
      entered =
        if spec ? environment then
          let
            bb = busybox where;
            tree = environment where (checkString where "environment" spec.environment);
          in {
            builder = "${bb}/bin/busybox";
            args = [ "sh" "-e" "${enterScript}" "${tree}" builder' ] ++ args;
          }
        else { builder = builder'; inherit args; };
    in
      if !outputsOk then fail where "invalid or repeated output name in `outputs`" "output names are distinct words like `out`, `dev`, `lib`"
      else derivation (settings.env // env // {
        inherit name system;
        inherit (entered) builder args;
      } // (if spec ? outputs then { inherit outputs; } else { })
        // (if features != null then { requiredSystemFeatures = features; } else { }));

  lowerTarget = targetName: { file, spec }:
    if spec ? fetch then
      (if spec ? builder || spec.args or [ ] != [ ] || spec.inputs or { } != { } || spec.env or { } != { } || spec ? outputs
         || spec ? required-system-features
       then fail file "`${targetName}` has both `[fetch]` and build keys"
         "a derivation file is either a download (`[fetch]`) or a build (`builder`, `args`, `inputs`…)"
       else fetchNode { key = targetName; where = file; defaultName = spec.name or targetName; spec = spec.fetch; })
    else lowerBuild targetName file spec;

  # Every target, lowered lazily: a target is evaluated only when it (or a dependent) is.
  lowered = mapAttrs lowerTarget targets;
in {
  inherit targets environments;
  # Target names, variants included (`NAME@VARIANT`), sorted.
  targetNames = attrNames targets;
  # The derivation of every target.
  derivations = lowered;
}
