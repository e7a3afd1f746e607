//! ksbuild: a Nix-style hermetic derivation builder for KubeSolo OS.
//!
//! # A tour of the architecture
//!
//! Every artifact of KubeSolo OS (a kernel per track, an initramfs per architecture, the
//! disk images) is a pure derivation with hashed inputs, built in a rootless namespace
//! sandbox into an immutable store. The store speaks Nix's formats, so Nix users and Nix
//! binary caches can consume the same paths. The code is layered; each layer is a folder
//! of `src/` and may use only the layers above it in this list:
//!
//! | layer | owns | effects |
//! |---|---|---|
//! | [`compat`] | nixbase32, hashes, store paths, ATerm `.drv`s and hash-modulo, NAR, narinfo, signatures | none: bytes in, bytes out |
//! | [`model`] | the TOML of `derivations/` and `sandboxes/` with source spans, pins, lowering to [`compat::derivation`] | reads the project's files |
//! | [`store`] | layout, locks, add/register (canonicalise, NAR hash, reference scan), metadata, verify, GC roots, GC | filesystem |
//! | [`sandbox`] | one hermetic build: namespaces, id maps, mounts, `pivot_root`, privilege drop, `exec`; log streaming and timeouts; a check's variations | syscalls (the only `unsafe`) |
//! | [`fetch`] | fixed-output downloads, mirrors, `.deb`/tar unpacking, environment locks | network, store |
//! | [`substitute`] | binary caches read as Nix reads them: configuration, trust, narinfo lookups, NAR download, check and registration | network, store |
//! | [`graph`] | the DAG, the ready queue, `-j` slots, the sandbox executor, why-rebuild records, the graph as a picture | runs builds |
//! | [`check`] | rounds of builds compared, variations, explained differences, recorded outputs | runs builds, reads outputs |
//! | [`remote`] | Nix's serve protocol: remote builders (the client, the machine choice, the dispatching executor) and the server `ksbuild --serve` | ssh, store, runs builds |
//! | [`vm`] | booting built images under QEMU: kinds, QEMU's command lines, writable copies, A/B slots, the console watched | runs QEMU, copies images |
//! | [`attest`] | SLSA provenance (in-toto statements), DSSE envelopes signed with Nix keys, SBOMs | none: facts in, documents out |
//! | [`cli`] | clap commands, output, exit codes | terminal |
//!
//!
//! # Two ideas to keep in mind
//!
//! * **Logical versus physical store.** A [`compat::StoreDir`] (`/nix/store` by default)
//!   is hashed into every path; a [`store::Store`] keeps the bytes under a physical root
//!   (`store/` of the project by default) at `<root>/nix/store/<hash>-<name>`. Hashing
//!   code only ever sees the logical directory.
//! * **Validity is a record.** A path is valid exactly when its metadata record exists;
//!   the record is written by an atomic rename after the contents are complete and
//!   canonical. A killed process therefore never leaves a path that looks valid and is not,
//!   and the next process to find the store idle sweeps away what was left half-done.
//!
//! # Files
//!
//! * `compat/nixbase32.rs`, `base64.rs`, `hash.rs` — encodings and [`compat::Hash`].
//! * `compat/store_path.rs` — [`compat::StorePath`], `makeStorePath` and friends.
//! * `compat/nar.rs` — streaming NAR writer and strict reader; `refscan.rs` — reference scanning.
//! * `compat/derivation.rs` — ATerm, `hashDerivationModulo`, output and `.drv` paths.
//! * `compat/narinfo.rs`, `signing.rs` — narinfo files, fingerprints, Ed25519 keys;
//!   `nar_listing.rs` — the `.ls` NAR listings of binary caches.
//! * `store/mod.rs` — [`store::Store`]: add, register, query; `dump.rs` — trees ⇄ NARs;
//!   `pipe.rs` — the hashing thread; `metadata.rs` — records; `lock.rs` — file locks;
//!   `gc.rs` — roots, collection and the sweep of leftovers; `verify.rs`; `fsutil.rs`;
//!   `cache.rs` — publishing to binary caches (`file://`, HTTP PUT); `compression.rs` —
//!   NAR compressions (xz, zstd, bzip2, gzip, none), encoders and decoders.
//! * `sandbox/` — [`sandbox::run`]: `plan.rs` (spec → typed steps, pure), `step.rs`,
//!   `sys.rs` (the one syscall layer), `init.rs` (the init process), `zygote.rs` (which
//!   clones PID 1s ahead of the builds and reaps them), `pid1.rs`, `supervisor.rs` (log
//!   streaming, timeouts),
//!   `user_ns.rs`, `protocol.rs`.
//! * `model/` — `schema.rs` (the TOML), `mod.rs` (loading, spans), `lower.rs` (to
//!   derivations; path inputs confined to the project), `pins.rs`, `sandbox.rs`
//!   (environments), `excerpt.rs` (source windows for diagnostics).
//! * `substitute/` — [`substitute::Substituters`] (`mod.rs`: lookups, closures, download
//!   and registration), `config.rs` (command line > `config.toml` > `nix.conf`),
//!   `trust.rs` (which narinfo is believed), `transport.rs` (`file://`, HTTP),
//!   `decompress.rs`.
//! * `graph/` — `mod.rs` ([`graph::realise`], events), `queue.rs`, `build.rs` (the sandbox
//!   executor, platforms, rebuilds), `why.rs` (what changed since a realisation),
//!   `picture.rs` (`ksbuild graph`: states, environments grouped, DOT and JSON; pure).
//! * `check/` — `mod.rs` (rounds, variations, verdicts, report), `explain.rs` (tree diffs
//!   with causes), `image.rs` (GPT/MBR, FAT, gzip and cpio opened for diffs), `ext4.rs`
//!   (ext2/3/4 read in place), `elf.rs` (ELF sections), `diffoscope.rs` (`--diffoscope`,
//!   bounded), `record.rs` (`derivations/outputs.lock`).
//! * `remote/` — `wire.rs` (the serve protocol's framing, basic derivations, build
//!   results), `machines.rs` (Nix's `builders` syntax and machine choice), `client.rs`
//!   (a connection over the system's `ssh`: closures up, builds, outputs down, checked),
//!   `dispatch.rs` (the executor sending builds to machines or the local sandbox),
//!   `server.rs` (`ksbuild --serve --write`).
//! * `vm/` — `mod.rs` ([`vm::recognise`], slots, the Pi's kernel copied out), `qemu.rs`
//!   ([`vm::Machine`]: the QEMU command lines, also the tests'), `grubenv.rs`, `state.rs`
//!   (the VM's folder, sparse copies), `run.rs` ([`vm::Session`]: console, `--expect`,
//!   timeouts, signals).
//! * `cli/` — one file per command group.
//! * `timing.rs` — phase timings behind `KSBUILD_TIMINGS`.

pub mod attest;
pub mod check;
pub mod cli;
pub mod compat;
pub mod fetch;
pub mod graph;
pub mod model;
pub mod remote;
pub mod sandbox;
pub mod store;
pub mod substitute;
pub mod timing;
pub mod vm;

/// The CPUs this process may use ([`std::thread::available_parallelism`], which reads
/// cgroup files each time it is asked), read once.
pub fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

/// `f` of each item, in order, spread over the CPUs in chunks of at least `min_chunk`
/// items (on the calling thread alone when there are fewer); a panic in a worker is
/// re-raised here.
pub fn map_parallel<T: Sync, R: Send>(
    items: &[T],
    min_chunk: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let chunk = items.len().div_ceil(cpus().min(8)).max(min_chunk.max(1));
    if items.len() <= chunk {
        return items.iter().map(f).collect();
    }
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(f).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}
