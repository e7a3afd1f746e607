# Builder script of derivations/hello.toml; run by busybox sh with PATH unset.
bb=$builder
$bb mkdir -p "$out/share"
echo "$GREETING from ksbuild (SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH)" > "$out/share/hello.txt"
$bb ln -s share/hello.txt "$out/hello"
