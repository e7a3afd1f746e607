# Builds a Rust crate of the project (the update agent, fragments/update-agent; the images'
# SBOM writer, fragments/sbom-tool) inside the `rust` environment with Debian's cargo and
# rustc, offline, against Debian's crate registry: a static executable. Run by /bin/sh
# (dash) from the tree.
#   src          the crate (a store path: copied to /build/src, its Cargo.lock ignored)
#   BIN          the executable's name: $out/bin/$BIN
#   RUST_TARGET  x86_64-unknown-linux-gnu, or aarch64-unknown-linux-gnu (cross)
#   CROSS_COMPILE  the GNU tool prefix of a cross build (aarch64-linux-gnu-)
# Reproducible: always built at /build/src with one codegen unit; the paths of the build,
# the registry and the input are remapped; the output holds the binary and the Cargo.lock
# cargo resolved (which versions of Debian's crates went in).
set -eu
export LC_ALL=C TZ=UTC
cd /build
crate=/build/src
cp -R "$src" "$crate"
chmod -R u+w "$crate"
# The environment's registry decides the versions, not a lock written elsewhere.
rm -rf "$crate/Cargo.lock" "$crate/target"
export CARGO_HOME=/build/cargo-home CARGO_TARGET_DIR=/build/target
mkdir -p "$CARGO_HOME"
cat > "$CARGO_HOME/config.toml" <<'CONFIG'
[source.crates-io]
replace-with = "debian"

[source.debian]
directory = "/usr/share/cargo/registry"

[net]
offline = true
CONFIG
export CARGO_TERM_COLOR=never CARGO_INCREMENTAL=0 CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 CARGO_PROFILE_RELEASE_DEBUG=0 \
  CARGO_PROFILE_RELEASE_STRIP=symbols
case "$RUST_TARGET" in
  x86_64-unknown-linux-gnu) machine='Advanced Micro Devices X86-64' cc=gcc ;;
  aarch64-unknown-linux-gnu)
    machine=AArch64 cc=${CROSS_COMPILE}gcc
    # The C compiler and archiver of ring's build script (the cc crate).
    export CC_aarch64_unknown_linux_gnu="$cc" AR_aarch64_unknown_linux_gnu="${CROSS_COMPILE}ar"
    ;;
  *) echo "build-rust-crate.sh: unknown RUST_TARGET=$RUST_TARGET" >&2; exit 1 ;;
esac
# The linker: gcc, minus `-Wl,-Bdynamic` in a static link. rustc links a crt-static
# executable with -static-pie (x86_64) or -static, but the libc crate without its `std`
# feature (as ring uses it) asks for -lc -lm -lrt -lpthread as shared libraries, after
# `-Wl,-Bdynamic`: ld then finds libc.so, binds __tls_get_addr (which Debian's libstd
# references) to ld-linux-x86-64.so.2, and the "static" executable NEEDs the loader. In a
# static link every library is static; build scripts (host programs, also linked here in
# a native build) stay dynamic.
cat > /build/link-static <<LINK
#!/bin/sh
case " \$* " in
  *" -static-pie "*|*" -static "*)
    for a; do shift; [ "\$a" = -Wl,-Bdynamic ] || set -- "\$@" "\$a"; done ;;
esac
exec $cc "\$@"
LINK
chmod 0755 /build/link-static
target_var=$(echo "$RUST_TARGET" | tr a-z- A-Z_)
export "CARGO_TARGET_${target_var}_LINKER=/build/link-static"
# With --target, RUSTFLAGS reach only the target's crates: build scripts and proc macros
# stay ordinary dynamic host programs.
export RUSTFLAGS="-C target-feature=+crt-static -C codegen-units=1 -C debuginfo=0 \
  --remap-path-prefix=$src=/$BIN --remap-path-prefix=/build/src=/$BIN \
  --remap-path-prefix=/build/target=/target --remap-path-prefix=$CARGO_HOME=/cargo-home \
  --remap-path-prefix=/usr/share/cargo/registry=/cargo/registry"
cargo build --offline --release --target "$RUST_TARGET" -j "${NIX_BUILD_CORES:-1}" \
  --manifest-path "$crate/Cargo.toml"
bin=/build/target/$RUST_TARGET/release/$BIN
# An image has no loader for it: it must be static, and for the target's machine.
m=$(readelf -h "$bin" | sed -n 's/^ *Machine: *//p')
[ "$m" = "$machine" ] || { echo "$BIN is an ELF for $m, not $machine" >&2; exit 1; }
if readelf -l "$bin" | grep -q 'Requesting program interpreter' || readelf -d "$bin" | grep -q '(NEEDED)'; then
  echo "$BIN is not static:" >&2
  readelf -l -d "$bin" >&2
  exit 1
fi
mkdir -p "$out/bin" "$out/share/$BIN"
cp "$bin" "$out/bin/$BIN"
chmod 0755 "$out/bin/$BIN"
cp "$crate/Cargo.lock" "$out/share/$BIN/Cargo.lock"
