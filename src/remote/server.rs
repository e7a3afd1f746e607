//! `ksbuild --serve --write`: the server side of Nix's serve protocol, what
//! `nix-store --serve --write` speaks on stdin and stdout when a Nix machine (or Hydra, or
//! another ksbuild) uses this one as a remote builder over `ssh`. The commands are
//! answered as Nix 2.8's `opServe` answers them, against the ksbuild store, and builds run
//! in ksbuild's sandbox. Does I/O.
//!
//! As in Nix there is no error framing: an error ends the session ([`serve`] returns it,
//! the CLI prints `error: …` on stderr and exits non-zero), and the client sees the
//! connection close. A build's log goes to the reporter (the CLI writes it on stderr, which
//! Nix's client shows as the build log). What differs from Nix:
//!
//! * `QueryValidPaths` never substitutes (ksbuild's server has no substituters); its `lock`
//!   holds the store's GC lock shared until the session ends, where Nix adds temporary
//!   roots: `ksbuild store gc` waits for the session instead of deleting what it uses.
//! * Every path added (`AddToStoreNar`, `ImportPaths`) is registered as not `ultimate`: it
//!   was not built here, so it is never a build round of `ksbuild check`. (Its NAR hash,
//!   size and content address are checked, and its references must be valid, as Nix checks
//!   them.)
//! * The build settings' `maxLogSize`, `buildRepeat` and `enforceDeterminism` are read and
//!   ignored; `ksbuild check` is the tool for repeated builds.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead, Read, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::wire::{
    self, read_bool, read_path_text, read_paths, read_string, read_strings, read_u64, write_bytes,
    write_paths, write_u64, BuildResult, BuildSettings, Command, Status, WireError,
};
use crate::compat::derivation::{Derivation, DerivationError};
use crate::compat::hash::Hasher;
use crate::compat::narinfo::ContentAddress;
use crate::compat::{FileIngestionMethod, Hash, HashAlgo, StorePath};
use crate::graph::build::{log_tail, BuildOptions, SandboxExecutor};
use crate::graph::{outputs_valid, BuildOutcome, Executor, Reporter, Slot};
use crate::model::Node;
use crate::store::{self, RestoreMode, Store, StoreError, ValidPathInfo};

/// The magic that starts every path of an export stream (`nix-store --export`).
pub const EXPORT_MAGIC: u64 = 0x4558_494e;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Whether commands that change the store (imports, builds) are allowed (`--write`).
    pub write: bool,
    /// The settings of builds; the client's timeouts replace `timeout` and
    /// `max_silent_time` when it sets them, and its `keepFailed` adds to `keep_failed`.
    pub build: BuildOptions,
}

/// Why a session ended in error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The client does not speak the serve protocol.
    #[error("protocol mismatch: the client sent {0:#x}, not the serve protocol's magic {magic:#x}", magic = wire::SERVE_MAGIC_1)]
    Magic(u64),
    /// The client speaks another major version.
    #[error("protocol mismatch: the client speaks version {}.{}, this server {}.{}", .0 >> 8, .0 & 0xff, wire::PROTOCOL_VERSION >> 8, wire::PROTOCOL_VERSION & 0xff)]
    Version(u64),
    /// The client's bytes broke the protocol, or the connection failed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The reply could not be written.
    #[error("cannot write to the client")]
    Reply(#[source] io::Error),
    /// A command that changes the store, without `--write`.
    #[error("{0} is not allowed: the server was started without `--write`")]
    NotAllowed(&'static str),
    /// A command number this protocol version does not have.
    #[error("unknown serve command {0}")]
    UnknownCommand(u64),
    /// A NAR whose hash or size is not what the client claimed.
    #[error("{what} mismatch importing path `{path}`: the client claimed {claimed}, the NAR has {actual}")]
    Mismatch {
        what: &'static str,
        path: String,
        claimed: String,
        actual: String,
    },
    /// A NAR whose contents do not have the content address the client claimed.
    #[error("content address mismatch importing path `{path}`: the client claimed `{claimed}`, the contents hash to {actual}")]
    ContentAddress {
        path: String,
        claimed: String,
        actual: String,
    },
    /// A field the client sent that cannot be used.
    #[error("{0}")]
    BadRequest(String),
    /// The store refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored `.drv` that does not parse.
    #[error("cannot parse `{path}`")]
    Derivation {
        path: String,
        #[source]
        source: DerivationError,
    },
}

impl ServeError {
    /// A short suggestion of what to do, where one helps.
    pub fn hint(&self) -> Option<String> {
        match self {
            ServeError::Magic(_) | ServeError::Version(_) => Some(
                "`ksbuild --serve` is run by Nix's `ssh://` stores and remote builders (`remote-program=ksbuild`), not by hand".into(),
            ),
            ServeError::NotAllowed(_) => Some("run `ksbuild --serve --write`".into()),
            ServeError::Store(e) => e.hint(),
            _ => None,
        }
    }
}

type Result<T, E = ServeError> = std::result::Result<T, E>;

/// Serves one session: the handshake, then commands read from `input` and answered on
/// `output` until the client closes `input`. `input` is read through its buffer for the
/// whole session (NARs are parsed from it without reading past their end). Build logs go
/// to `reporter`'s [`Reporter::log_line`].
pub fn serve(
    store: &Store,
    input: &mut dyn BufRead,
    output: &mut dyn Write,
    options: &ServeOptions,
    reporter: &dyn Reporter,
) -> Result<()> {
    let magic = read_u64(input)?;
    if magic != wire::SERVE_MAGIC_1 {
        return Err(ServeError::Magic(magic));
    }
    reply(output, |w| {
        write_u64(w, wire::SERVE_MAGIC_2)?;
        write_u64(w, wire::PROTOCOL_VERSION)
    })?;
    let client_version = read_u64(input)?;
    if !wire::compatible(client_version) {
        return Err(ServeError::Version(client_version));
    }
    let mut session = Session {
        store,
        options,
        reporter,
        client_version,
        gc_lock: None,
    };
    loop {
        let n = match read_u64(input) {
            Ok(n) => n,
            // The client closing the connection between commands ends the session.
            Err(WireError::Eof) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let command = Command::from_u64(n).ok_or(ServeError::UnknownCommand(n))?;
        session.command(command, input, output)?;
        output.flush().map_err(ServeError::Reply)?;
    }
}

/// Writes a reply and flushes it.
fn reply(
    output: &mut dyn Write,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<()> {
    write(output)
        .and_then(|()| output.flush())
        .map_err(ServeError::Reply)
}

/// What a session knows between commands.
struct Session<'a> {
    store: &'a Store,
    options: &'a ServeOptions,
    reporter: &'a dyn Reporter,
    client_version: u64,
    /// Taken by the first `QueryValidPaths` with `lock` (and `--write`), kept to the end.
    gc_lock: Option<crate::store::GcShared>,
}

impl Session<'_> {
    fn command(
        &mut self,
        command: Command,
        input: &mut dyn BufRead,
        output: &mut dyn Write,
    ) -> Result<()> {
        let store = self.store;
        let sd = store.store_dir();
        match command {
            Command::QueryValidPaths => {
                let lock = read_bool(input)?;
                let _substitute = read_bool(input)?;
                let paths = read_paths(input, sd)?;
                if lock && self.options.write && self.gc_lock.is_none() {
                    self.gc_lock = Some(store.lock_gc_shared()?);
                }
                let mut valid = Vec::new();
                for p in &paths {
                    if store.is_valid(p)? {
                        valid.push(p);
                    }
                }
                write_paths(output, valid, sd).map_err(ServeError::Reply)
            }
            Command::QueryPathInfos => {
                let paths = read_paths(input, sd)?;
                for p in &paths {
                    // Invalid paths are left out, as Nix does.
                    let Some(info) = store.query_path_info(p)? else {
                        continue;
                    };
                    self.write_path_info(output, &info)
                        .map_err(ServeError::Reply)?;
                }
                write_bytes(output, b"").map_err(ServeError::Reply)
            }
            Command::DumpStorePath => {
                let path = read_path_text(&read_string(input)?, sd)?;
                store.path_info(&path)?;
                store::dump_path(&store.physical_path(&path), output)?;
                Ok(())
            }
            Command::ImportPaths => {
                self.require_write("importing paths")?;
                self.import_paths(input)?;
                write_u64(output, 1).map_err(ServeError::Reply)
            }
            Command::ExportPaths => {
                let _obsolete = read_u64(input)?;
                let paths = read_paths(input, sd)?;
                self.export_paths(&paths, output)
            }
            Command::BuildPaths => {
                self.require_write("building paths")?;
                let paths = read_strings(input)?;
                let settings = BuildSettings::read(input, self.client_version)?;
                match self.build_paths(&paths, &settings)? {
                    Ok(()) => write_u64(output, 0).map_err(ServeError::Reply),
                    Err((status, message)) => {
                        write_u64(output, status).map_err(ServeError::Reply)?;
                        write_bytes(output, message.as_bytes()).map_err(ServeError::Reply)
                    }
                }
            }
            Command::QueryClosure => {
                let include_outputs = read_bool(input)?;
                let paths = read_paths(input, sd)?;
                let closure = self.closure(paths, include_outputs)?;
                write_paths(output, &closure, sd).map_err(ServeError::Reply)
            }
            Command::BuildDerivation => {
                self.require_write("building paths")?;
                let drv_path = read_path_text(&read_string(input)?, sd)?;
                let drv = wire::read_basic_derivation(input, sd)?;
                let settings = BuildSettings::read(input, self.client_version)?;
                let result = self.build_derivation(&drv_path, drv, &settings)?;
                result
                    .write(output, self.client_version)
                    .map_err(ServeError::Reply)
            }
            Command::AddToStoreNar => {
                self.require_write("importing paths")?;
                self.add_to_store_nar(input)?;
                write_u64(output, 1).map_err(ServeError::Reply)
            }
        }
    }

    fn require_write(&self, what: &'static str) -> Result<()> {
        if self.options.write {
            Ok(())
        } else {
            Err(ServeError::NotAllowed(what))
        }
    }

    /// One path's entry in the `QueryPathInfos` reply.
    fn write_path_info(&self, w: &mut dyn Write, info: &ValidPathInfo) -> io::Result<()> {
        let store = self.store;
        write_bytes(w, store.print(&info.path).as_bytes())?;
        let deriver = info.deriver.as_ref().map(|d| store.print(d));
        write_bytes(w, deriver.unwrap_or_default().as_bytes())?;
        write_paths(w, &info.references, store.store_dir())?;
        // The download size is the NAR size: nothing is compressed.
        write_u64(w, info.nar_size)?;
        write_u64(w, info.nar_size)?;
        if wire::minor(self.client_version) >= 4 {
            write_bytes(w, info.nar_hash.to_nix32_prefixed().as_bytes())?;
            write_bytes(w, info.ca.as_deref().unwrap_or("").as_bytes())?;
            wire::write_strings(w, &info.signatures)?;
        }
        Ok(())
    }

    /// The closure of `paths`; with `include_outputs`, the valid outputs of every
    /// derivation in it too (and their closures), as Nix's `computeFSClosure` gives them.
    fn closure(
        &self,
        paths: BTreeSet<StorePath>,
        include_outputs: bool,
    ) -> Result<BTreeSet<StorePath>> {
        let store = self.store;
        let mut seen = BTreeSet::new();
        let mut todo: Vec<StorePath> = paths.into_iter().collect();
        while let Some(p) = todo.pop() {
            if seen.contains(&p) {
                continue;
            }
            let info = store.path_info(&p)?;
            todo.extend(info.references.iter().cloned());
            if include_outputs && p.is_derivation() {
                for out in self
                    .read_drv(&p)?
                    .outputs
                    .into_values()
                    .flat_map(|o| o.path)
                {
                    if store.is_valid(&out)? {
                        todo.push(out);
                    }
                }
            }
            seen.insert(p);
        }
        Ok(seen)
    }

    /// The `.drv` at `path` in the store.
    fn read_drv(&self, path: &StorePath) -> Result<Derivation> {
        let store = self.store;
        let physical = store.physical_path(path);
        let text = std::fs::read(&physical).map_err(StoreError::io("read", &physical))?;
        Derivation::from_aterm(&text, store.store_dir()).map_err(|source| ServeError::Derivation {
            path: store.print(path),
            source,
        })
    }

    /// Reads an export stream (`nix-store --export`) and registers its paths.
    fn import_paths(&self, input: &mut dyn BufRead) -> Result<()> {
        let store = self.store;
        let sd = store.store_dir();
        loop {
            match read_u64(input)? {
                0 => return Ok(()),
                1 => {}
                _ => {
                    return Err(ServeError::BadRequest(
                        "input doesn't look like something created by 'nix-store --export'".into(),
                    ))
                }
            }
            let staging = store.staging()?;
            let target = staging.path().join("x");
            let mut nar = HashingReader::new(&mut *input);
            store::restore_nar_prefix(&mut nar, &target, RestoreMode::Canonical)?;
            let (nar_hash, nar_size) = nar.finish();
            if read_u64(input)? != EXPORT_MAGIC {
                return Err(ServeError::BadRequest(
                    "Nix archive cannot be imported; wrong format".into(),
                ));
            }
            let path = read_path_text(&read_string(input)?, sd)?;
            let references = read_paths(input, sd)?;
            let deriver = read_string(input)?;
            // An optional legacy signature, ignored as Nix ignores it.
            if read_u64(input)? == 1 {
                read_string(input)?;
            }
            let info = ValidPathInfo {
                path,
                nar_hash,
                nar_size,
                references,
                deriver: self.deriver(&deriver)?,
                ca: None,
                registration_time: 0,
                signatures: Vec::new(),
                ultimate: false,
            };
            store.register_staged(&target, info)?;
        }
    }

    /// `""` or a `.drv` path.
    fn deriver(&self, text: &str) -> Result<Option<StorePath>> {
        if text.is_empty() {
            return Ok(None);
        }
        Ok(Some(read_path_text(text, self.store.store_dir())?))
    }

    /// Writes an export stream of `paths`, each after the paths it refers to.
    fn export_paths(&self, paths: &BTreeSet<StorePath>, output: &mut dyn Write) -> Result<()> {
        let store = self.store;
        let mut infos = BTreeMap::new();
        for p in paths {
            infos.insert(p.clone(), store.path_info(p)?);
        }
        for path in references_first(&infos) {
            let info = &infos[path];
            write_u64(output, 1).map_err(ServeError::Reply)?;
            let physical = store.physical_path(path);
            let mut tee = HashingWriter {
                inner: &mut *output,
                hasher: Hasher::new(HashAlgo::Sha256),
            };
            store::dump_path(&physical, &mut tee)?;
            let hash = tee.hasher.finish();
            // Refuse to spread a path that changed on disk (as Nix does, after its NAR).
            if hash != info.nar_hash {
                return Err(ServeError::BadRequest(format!(
                    "hash of path `{}` has changed from {} to {}; run `ksbuild store verify`",
                    store.print(path),
                    info.nar_hash.to_nix32_prefixed(),
                    hash.to_nix32_prefixed()
                )));
            }
            let deriver = info.deriver.as_ref().map(|d| store.print(d));
            (|| {
                write_u64(output, EXPORT_MAGIC)?;
                write_bytes(output, store.print(path).as_bytes())?;
                write_paths(output, &info.references, store.store_dir())?;
                write_bytes(output, deriver.unwrap_or_default().as_bytes())?;
                write_u64(output, 0)
            })()
            .map_err(ServeError::Reply)?;
        }
        write_u64(output, 0).map_err(ServeError::Reply)
    }

    /// `AddToStoreNar`: one path's info, then exactly `narSize` bytes of NAR.
    fn add_to_store_nar(&self, input: &mut dyn BufRead) -> Result<()> {
        let store = self.store;
        let sd = store.store_dir();
        let path = read_path_text(&read_string(input)?, sd)?;
        let deriver = read_string(input)?;
        let hash_text = read_string(input)?;
        let references = read_paths(input, sd)?;
        let registration_time = read_u64(input)?;
        let nar_size = read_u64(input)?;
        let _ultimate = read_bool(input)?;
        let signatures = read_strings(input)?;
        let ca = read_string(input)?;
        let printed = store.print(&path);
        // Nix's `Hash::parseAny(…, htSHA256)`: base16 without a prefix from Nix's client.
        let claimed = Hash::parse_with(&hash_text, Some(HashAlgo::Sha256)).map_err(|e| {
            ServeError::BadRequest(format!("bad NAR hash `{hash_text}` for `{printed}`: {e}"))
        })?;
        if nar_size == 0 {
            return Err(ServeError::BadRequest(format!(
                "no NAR size for `{printed}` (narInfo is too old and missing the narSize field)"
            )));
        }
        let ca = if ca.is_empty() {
            None
        } else {
            Some(ContentAddress::parse(&ca).map_err(|e| {
                ServeError::BadRequest(format!("bad content address for `{printed}`: {e}"))
            })?)
        };
        let deriver = self.deriver(&deriver)?;
        let mut sized = input.take(nar_size);
        if store.is_valid(&path)? {
            // Already here: the NAR is read and dropped, as Nix does.
            io::copy(&mut sized, &mut io::sink()).map_err(WireError::from)?;
            return finish_sized(&sized, nar_size, &printed);
        }
        let staging = store.staging()?;
        let target = staging.path().join("x");
        let mut nar = HashingReader::new(&mut sized);
        store::restore_nar(&mut nar, &target, RestoreMode::Canonical)?;
        let (actual, actual_size) = nar.finish();
        finish_sized(&sized, nar_size, &printed)?;
        if actual_size != nar_size {
            return Err(ServeError::Mismatch {
                what: "size",
                path: printed,
                claimed: nar_size.to_string(),
                actual: actual_size.to_string(),
            });
        }
        if actual != claimed {
            return Err(ServeError::Mismatch {
                what: "hash",
                path: printed,
                claimed: claimed.to_nix32_prefixed(),
                actual: actual.to_nix32_prefixed(),
            });
        }
        if let Some(ca) = &ca {
            check_content_address(ca, &target, &actual, &printed)?;
        }
        let info = ValidPathInfo {
            path,
            nar_hash: actual,
            nar_size,
            references,
            deriver,
            ca: ca.map(|c| c.to_string()),
            registration_time,
            signatures,
            // Not built here: never a build round of `ksbuild check`.
            ultimate: false,
        };
        store.register_staged(&target, info)?;
        Ok(())
    }

    /// `BuildPaths`: each `path` must be valid; each `drv!out,…` (or bare `.drv`) is built
    /// here, with the derivations it needs whose outputs are not valid. `Ok(Err((status,
    /// message)))` is a failure reported to the client (Nix's exit status: 100 for a failed
    /// build, 1 otherwise); `Err` ends the session.
    fn build_paths(
        &self,
        paths: &[String],
        settings: &BuildSettings,
    ) -> Result<std::result::Result<(), (u64, String)>> {
        let store = self.store;
        let executor = SandboxExecutor::new(store, self.build_options(settings))?;
        let mut done = BTreeSet::new();
        for text in paths {
            let (path, outputs) = match text.split_once('!') {
                Some((p, o)) => (p, Some(o)),
                None => (text.as_str(), None),
            };
            let path = read_path_text(path, store.store_dir())?;
            if outputs.is_none() && !path.is_derivation() {
                if !store.is_valid(&path)? {
                    return Ok(Err((
                        1,
                        format!(
                            "path `{}` is not valid here, and this server does not substitute",
                            store.print(&path)
                        ),
                    )));
                }
                continue;
            }
            if let Err(message) = self.build_drv_tree(&executor, &path, &mut done)? {
                return Ok(Err((100, message)));
            }
        }
        Ok(Ok(()))
    }

    /// Builds the `.drv` at `drv_path` (valid here) after the derivations it needs, those
    /// whose outputs are not valid. `Ok(Err(message))` is a failed build.
    fn build_drv_tree(
        &self,
        executor: &SandboxExecutor<'_>,
        drv_path: &StorePath,
        done: &mut BTreeSet<StorePath>,
    ) -> Result<std::result::Result<(), String>> {
        if done.contains(drv_path) {
            return Ok(Ok(()));
        }
        let store = self.store;
        if !store.is_valid(drv_path)? {
            return Ok(Err(format!(
                "derivation `{}` is not valid here; copy it first",
                store.print(drv_path)
            )));
        }
        let drv = self.read_drv(drv_path)?;
        for input in drv.input_derivations.keys() {
            if let Err(e) = self.build_drv_tree(executor, input, done)? {
                return Ok(Err(e));
            }
        }
        let node = node_for(drv_path, drv);
        if !outputs_valid(store, &node)? {
            if let Err(f) = executor.build(&node, self.reporter, &Slot::FREE) {
                return Ok(Err(failure_message(f)));
            }
        }
        done.insert(drv_path.clone());
        Ok(Ok(()))
    }

    /// The build options with the client's settings.
    fn build_options(&self, settings: &BuildSettings) -> BuildOptions {
        let mut options = self.options.build.clone();
        if settings.build_timeout > 0 {
            options.timeout = Some(Duration::from_secs(settings.build_timeout));
        }
        if settings.max_silent_time > 0 {
            options.max_silent_time = Some(Duration::from_secs(settings.max_silent_time));
        }
        options.keep_failed |= settings.keep_failed;
        options.jobs = 1;
        options
    }

    /// `BuildDerivation`: builds a basic derivation (its input sources are its whole input
    /// closure, which must be valid here) in the sandbox.
    fn build_derivation(
        &self,
        drv_path: &StorePath,
        drv: Derivation,
        settings: &BuildSettings,
    ) -> Result<BuildResult> {
        let store = self.store;
        let mut result = BuildResult {
            status: Status::Built,
            error: String::new(),
            times_built: 0,
            non_deterministic: false,
            start_time: 0,
            stop_time: 0,
            built_outputs: BTreeMap::new(),
        };
        let fail = |mut result: BuildResult, status, error: String| {
            result.status = status;
            result.error = error;
            Ok(result)
        };
        let printed = store.print(drv_path);
        let built_outputs = match built_outputs(&drv, store) {
            Ok(b) => b,
            Err(e) => return fail(result, Status::MiscFailure, format!("`{printed}`: {e}")),
        };
        if !self.options.build.platforms.can_build(&drv.system) {
            return fail(
                result,
                Status::InputRejected,
                format!(
                    "`{printed}` is for `{}`, but this machine builds for {}",
                    drv.system, self.options.build.platforms
                ),
            );
        }
        let mut missing = Vec::new();
        for p in &drv.input_sources {
            if !store.is_valid(p)? {
                missing.push(format!("`{}`", store.print(p)));
            }
        }
        if !missing.is_empty() {
            return fail(
                result,
                Status::MiscFailure,
                format!(
                    "inputs of `{printed}` are not valid on this machine: {}",
                    missing.join(", ")
                ),
            );
        }
        let node = node_for(drv_path, drv);
        if outputs_valid(store, &node)? {
            result.status = Status::AlreadyValid;
            result.built_outputs = built_outputs;
            return Ok(result);
        }
        let executor = SandboxExecutor::new(store, self.build_options(settings))?;
        result.start_time = now();
        let outcome = executor.build(&node, self.reporter, &Slot::FREE);
        result.stop_time = now();
        match outcome {
            Ok(BuildOutcome::Built) => {
                result.times_built = 1;
                result.built_outputs = built_outputs;
            }
            Ok(BuildOutcome::AlreadyValid) => {
                result.status = Status::AlreadyValid;
                result.built_outputs = built_outputs;
            }
            Err(f) => {
                result.status = Status::PermanentFailure;
                result.error = failure_message(f);
            }
        }
        Ok(result)
    }
}

/// A graph node for one derivation built on its own.
fn node_for(drv_path: &StorePath, drv: Derivation) -> Node {
    Node {
        key: drv_path
            .name()
            .strip_suffix(".drv")
            .unwrap_or(drv_path.name())
            .to_string(),
        drv: drv.into(),
        drv_path: drv_path.clone(),
        fetch: None,
        deps: BTreeSet::new(),
        inputs: BTreeMap::new(),
    }
}

/// A failed build's message with the last lines of its log, as Nix words it.
fn failure_message(f: crate::graph::BuildFailure) -> String {
    let mut message = f.message;
    let tail = match &f.log {
        Some(log) if f.tail.is_empty() => log_tail(log, 10),
        _ => f.tail,
    };
    let tail = &tail[tail.len().saturating_sub(10)..];
    if !tail.is_empty() {
        message.push_str(&format!("\nlast {} log lines:", tail.len()));
        for line in tail {
            message.push_str(&format!("\n> {line}"));
        }
    }
    message
}

/// The `builtOutputs` of a build of `drv`: for each output, `sha256:<h>!<name>` →
/// its Realisation JSON, where `h` is the derivation's `hashDerivationModulo` with its
/// outputs masked (Nix's `staticOutputHashes`; a basic derivation has no input
/// derivations) and `outPath` the output's base name.
fn built_outputs(
    drv: &Derivation,
    store: &Store,
) -> std::result::Result<BTreeMap<String, String>, ModuloError> {
    let mut masked = drv.clone();
    masked.mask_outputs();
    let hash = masked.hash_derivation_modulo(store.store_dir(), &mut |p: &StorePath| {
        Err(ModuloError::InputDerivation(store.print(p)))
    })?;
    let mut out = BTreeMap::new();
    for (name, output) in &drv.outputs {
        let Some(path) = &output.path else {
            continue;
        };
        let id = format!("sha256:{}!{name}", hash.to_hex());
        let json = serde_json::json!({
            "dependentRealisations": {},
            "id": id,
            "outPath": path.to_string(),
            "signatures": [],
        });
        out.insert(id, json.to_string());
    }
    Ok(out)
}

/// Why the modulo hash of a basic derivation could not be computed.
#[derive(Debug, thiserror::Error)]
enum ModuloError {
    #[error(transparent)]
    Derivation(#[from] DerivationError),
    /// Basic derivations have none: their input closure is in their input sources.
    #[error("a basic derivation has no input derivations, but `{0}` is one")]
    InputDerivation(String),
}

/// Checks that the tree at `target` (whose NAR hashes to `nar_hash`) has the content
/// address `ca`, as Nix 2.8's `LocalStore::addToStore` checks an added path's.
fn check_content_address(
    ca: &ContentAddress,
    target: &std::path::Path,
    nar_hash: &Hash,
    printed: &str,
) -> Result<()> {
    let (claimed, actual) = match ca {
        ContentAddress::Text { hash } => (hash, store::hash_file(target, HashAlgo::Sha256)?),
        ContentAddress::Fixed {
            method: FileIngestionMethod::Flat,
            hash,
        } => (hash, store::hash_file(target, hash.algo())?),
        ContentAddress::Fixed {
            method: FileIngestionMethod::Recursive,
            hash,
        } if hash.algo() == HashAlgo::Sha256 => (hash, nar_hash.clone()),
        ContentAddress::Fixed { hash, .. } => (hash, store::dump_nar_hash(target, hash.algo())?.0),
    };
    if claimed != &actual {
        return Err(ServeError::ContentAddress {
            path: printed.to_string(),
            claimed: ca.to_string(),
            actual: actual.to_nix32_prefixed(),
        });
    }
    Ok(())
}

/// Checks that exactly `nar_size` bytes were read from `sized`.
fn finish_sized<R>(sized: &io::Take<R>, nar_size: u64, printed: &str) -> Result<()> {
    if sized.limit() != 0 {
        return Err(ServeError::Mismatch {
            what: "size",
            path: printed.to_string(),
            claimed: nar_size.to_string(),
            actual: format!("{} bytes", nar_size - sized.limit()),
        });
    }
    Ok(())
}

/// The keys of `infos` ordered so that every path comes after the paths of `infos` it
/// refers to (Nix's `topoSortPaths`, reversed).
fn references_first(infos: &BTreeMap<StorePath, ValidPathInfo>) -> Vec<&StorePath> {
    fn visit<'a>(
        p: &'a StorePath,
        infos: &'a BTreeMap<StorePath, ValidPathInfo>,
        seen: &mut BTreeSet<&'a StorePath>,
        order: &mut Vec<&'a StorePath>,
    ) {
        if !seen.insert(p) {
            return;
        }
        for r in &infos[p].references {
            if r != p && infos.contains_key(r) {
                let (key, _) = infos.get_key_value(r).expect("checked");
                visit(key, infos, seen, order);
            }
        }
        order.push(p);
    }
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    for p in infos.keys() {
        visit(p, infos, &mut seen, &mut order);
    }
    order
}

/// Seconds since the epoch.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A reader that hashes (SHA-256) and counts what passes through.
struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    size: u64,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Hasher::new(HashAlgo::Sha256),
            size: 0,
        }
    }

    fn finish(self) -> (Hash, u64) {
        (self.hasher.finish(), self.size)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

/// A writer that hashes (SHA-256) what passes through.
struct HashingWriter<'a> {
    inner: &'a mut dyn Write,
    hasher: Hasher,
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compat::derivation::Output;

    /// The key and value of `builtOutputs` for the derivation Nix 2.8's server built in
    /// the reference's pipe experiment are shaped as Nix shapes them: the masked modulo
    /// hash in hex, and `outPath` without the store directory.
    #[test]
    fn built_outputs_are_keyed_by_the_masked_modulo_hash() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(
            root.path(),
            crate::compat::StoreDir::default(),
            std::sync::Arc::new(store::Silent),
        )
        .unwrap();
        let sd = store.store_dir().clone();
        let out = sd
            .parse_path("/nix/store/favk17dg9z0ypb0ssl1x0xrw5lirgxvh-serve-test")
            .unwrap();
        let mut drv = Derivation {
            system: "x86_64-linux".into(),
            builder: "/bin/sh".into(),
            ..Default::default()
        };
        drv.outputs.insert(
            "out".into(),
            Output {
                path: Some(out.clone()),
                fixed: None,
            },
        );
        drv.env.insert("out".into(), sd.display(&out));
        drv.env.insert("name".into(), "serve-test".into());
        let built = built_outputs(&drv, &store).unwrap();
        let mut masked = drv.clone();
        masked.mask_outputs();
        let h = Hash::sha256(&masked.to_aterm(&sd));
        let key = format!("sha256:{}!out", h.to_hex());
        assert_eq!(
            built.get(&key).map(String::as_str),
            Some(
                format!(
                    r#"{{"dependentRealisations":{{}},"id":"{key}","outPath":"favk17dg9z0ypb0ssl1x0xrw5lirgxvh-serve-test","signatures":[]}}"#
                )
                .as_str()
            )
        );
    }

    /// Paths are exported after the paths they refer to, whatever their names.
    #[test]
    fn exports_put_references_first() {
        let sd = crate::compat::StoreDir::default();
        let p = |s: &str| sd.parse_path(&format!("/nix/store/{s}")).unwrap();
        let (a, b, c) = (
            p("00000000000000000000000000000000-a"),
            p("11111111111111111111111111111111-b"),
            p("22222222222222222222222222222222-c"),
        );
        let info = |path: &StorePath, refs: &[&StorePath]| ValidPathInfo {
            path: path.clone(),
            nar_hash: Hash::sha256(b""),
            nar_size: 0,
            references: refs.iter().map(|r| (*r).clone()).collect(),
            deriver: None,
            ca: None,
            registration_time: 0,
            signatures: Vec::new(),
            ultimate: false,
        };
        // a → b → c, and a refers to itself.
        let infos = BTreeMap::from([
            (a.clone(), info(&a, &[&a, &b])),
            (b.clone(), info(&b, &[&c])),
            (c.clone(), info(&c, &[])),
        ]);
        assert_eq!(references_first(&infos), vec![&c, &b, &a]);
    }
}
