//! Remote builders through Nix's serve protocol (`nix-store --serve`), both ways.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use ksbuild::compat::derivation::{Derivation, DerivationError, Output};
use ksbuild::compat::{FileIngestionMethod, Hash, StoreDir, StorePath};
use ksbuild::remote::wire::{self, BuildResult, BuildSettings, Command as Cmd, Status};

use crate::common::{ksbuild_bin, nix, run_ok, scratch, skip_without_nix};
use crate::realise::skip_without_busybox;
use crate::ssh_server::Sshd;

// ---------------------------------------------------------------------------------------
// The server, `ksbuild --serve --write`: driven over pipes with the wire format, side by
// side with `nix-store --serve --write`, and used by real Nix as a remote builder over a
// real sshd.
// ---------------------------------------------------------------------------------------

/// One session with a serve-protocol server run as a child process, its stderr in a file.
struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    stderr: PathBuf,
    /// The server's protocol version.
    version: u64,
    /// The last export stream read.
    last_export: Vec<u8>,
}

/// A write to the server: a server that has refused what came before and hung up (a
/// broken pipe) is fine here; what it said is checked from its exit and stderr.
fn sent<E: std::fmt::Debug>(r: Result<(), E>) {
    if let Err(e) = r {
        let text = format!("{e:?}");
        assert!(text.contains("BrokenPipe"), "writing to the server: {text}");
    }
}

impl Session {
    /// Starts `command` and exchanges the greeting.
    fn start(mut command: Command, stderr: &Path) -> Session {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut s = Session {
            child,
            stdin,
            stdout,
            stderr: stderr.to_path_buf(),
            version: 0,
            last_export: Vec::new(),
        };
        s.u64(wire::SERVE_MAGIC_1);
        s.u64(wire::PROTOCOL_VERSION);
        s.flush();
        assert_eq!(s.read_u64(), wire::SERVE_MAGIC_2, "{}", s.stderr_text());
        s.version = s.read_u64();
        s
    }

    /// `ksbuild --serve --write --store ROOT`.
    fn ksbuild(root: &Path, log: &Path) -> Session {
        let mut c = Command::new(ksbuild_bin());
        c.args(["--serve", "--write", "--store"])
            .arg(root)
            .env_remove("KSBUILD_STORE")
            .env("NO_COLOR", "1");
        Session::start(c, log)
    }

    /// `nix-store --serve --write --store ROOT` (a chroot store).
    fn nix(root: &Path, log: &Path) -> Session {
        let mut c = nix("nix-store");
        c.args(["--serve", "--write", "--store"]).arg(root);
        Session::start(c, log)
    }

    fn w(&mut self) -> &mut ChildStdin {
        self.stdin.as_mut().expect("stdin open")
    }
    fn u64(&mut self, n: u64) {
        sent(wire::write_u64(self.w(), n));
    }
    fn string(&mut self, s: &str) {
        sent(wire::write_bytes(self.w(), s.as_bytes()));
    }
    fn paths(&mut self, paths: &[&StorePath]) {
        let sd = StoreDir::default();
        sent(wire::write_paths(self.w(), paths.iter().copied(), &sd));
    }
    fn flush(&mut self) {
        sent(self.w().flush());
    }
    fn read_u64(&mut self) -> u64 {
        wire::read_u64(&mut self.stdout)
            .unwrap_or_else(|e| panic!("{e}; server stderr:\n{}", self.stderr_text()))
    }
    fn read_string(&mut self) -> String {
        wire::read_string(&mut self.stdout)
            .unwrap_or_else(|e| panic!("{e}; server stderr:\n{}", self.stderr_text()))
    }
    fn read_strings(&mut self) -> Vec<String> {
        wire::read_strings(&mut self.stdout)
            .unwrap_or_else(|e| panic!("{e}; server stderr:\n{}", self.stderr_text()))
    }
    fn read_exact(&mut self, n: u64) -> Vec<u8> {
        let mut buf = vec![0u8; n as usize];
        self.stdout.read_exact(&mut buf).unwrap();
        buf
    }
    fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn query_valid_paths(&mut self, paths: &[&StorePath]) -> Vec<String> {
        self.u64(Cmd::QueryValidPaths as u64);
        self.u64(0); // lock
        self.u64(0); // substitute
        self.paths(paths);
        self.flush();
        self.read_strings()
    }

    /// Per valid path: path, deriver, references, download size, NAR size, NAR hash, ca,
    /// signatures.
    fn query_path_infos(&mut self, paths: &[&StorePath]) -> Vec<Vec<String>> {
        self.u64(Cmd::QueryPathInfos as u64);
        self.paths(paths);
        self.flush();
        let mut infos = Vec::new();
        loop {
            let path = self.read_string();
            if path.is_empty() {
                return infos;
            }
            let deriver = self.read_string();
            let refs = self.read_strings().join(" ");
            let download = self.read_u64().to_string();
            let nar_size = self.read_u64().to_string();
            let nar_hash = self.read_string();
            let ca = self.read_string();
            let sigs = self.read_strings().join(" ");
            infos.push(vec![
                path, deriver, refs, download, nar_size, nar_hash, ca, sigs,
            ]);
        }
    }

    /// Sends `AddToStoreNar` as Nix's client does (NAR hash in base16 without a prefix).
    fn add_to_store_nar(&mut self, nar: &Upload, claimed_hash: &Hash) {
        let sd = StoreDir::default();
        self.u64(Cmd::AddToStoreNar as u64);
        self.string(&sd.display(&nar.path));
        self.string("");
        self.string(&claimed_hash.to_hex());
        let refs: Vec<&StorePath> = nar.references.iter().collect();
        self.paths(&refs);
        self.u64(0); // registration time
        self.u64(nar.nar.len() as u64);
        self.u64(0); // ultimate
        self.u64(0); // signatures
        self.string(&nar.ca);
        let bytes = nar.nar.clone();
        sent(self.w().write_all(&bytes));
        self.flush();
    }

    fn dump(&mut self, path: &StorePath, nar_size: u64) -> Vec<u8> {
        self.u64(Cmd::DumpStorePath as u64);
        self.string(&StoreDir::default().display(path));
        self.flush();
        self.read_exact(nar_size)
    }

    fn build_derivation(&mut self, drv_path: &StorePath, drv: &Derivation) -> BuildResult {
        let sd = StoreDir::default();
        self.u64(Cmd::BuildDerivation as u64);
        self.string(&sd.display(drv_path));
        let inputs = drv.input_sources.clone();
        sent(wire::write_basic_derivation(self.w(), drv, &inputs, &sd));
        sent(
            BuildSettings {
                max_silent_time: 60,
                build_timeout: 120,
                ..Default::default()
            }
            .write(self.w()),
        );
        self.flush();
        let version = self.version;
        BuildResult::read(&mut self.stdout, version)
            .unwrap_or_else(|e| panic!("{e}; server stderr:\n{}", self.stderr_text()))
    }

    /// `BuildPaths`: 0, or the failure's status and message.
    fn build_paths(&mut self, paths: &[String]) -> (u64, String) {
        self.u64(Cmd::BuildPaths as u64);
        sent(wire::write_strings(self.w(), paths));
        sent(BuildSettings::default().write(self.w()));
        self.flush();
        match self.read_u64() {
            0 => (0, String::new()),
            status => (status, self.read_string()),
        }
    }

    fn query_closure(&mut self, paths: &[&StorePath]) -> Vec<String> {
        self.u64(Cmd::QueryClosure as u64);
        self.u64(0);
        self.paths(paths);
        self.flush();
        self.read_strings()
    }

    /// The export stream of `paths`, as bytes (parsed only to find its end).
    fn export(&mut self, paths: &[&StorePath]) -> Vec<u8> {
        self.u64(Cmd::ExportPaths as u64);
        self.u64(0);
        self.paths(paths);
        self.flush();
        let mut tee = Tee {
            inner: &mut self.stdout,
            seen: Vec::new(),
        };
        loop {
            match wire::read_u64(&mut tee).unwrap() {
                0 => break,
                1 => {}
                n => panic!("export stream: {n}"),
            }
            ksbuild::compat::nar::read_nar_prefix(&mut tee, &mut ksbuild::compat::nar::NullSink)
                .unwrap();
            assert_eq!(wire::read_u64(&mut tee).unwrap(), 0x4558_494e);
            wire::read_string(&mut tee).unwrap();
            wire::read_strings(&mut tee).unwrap();
            wire::read_string(&mut tee).unwrap();
            assert_eq!(wire::read_u64(&mut tee).unwrap(), 0);
        }
        tee.seen
    }

    fn import(&mut self, stream: &[u8]) -> u64 {
        self.u64(Cmd::ImportPaths as u64);
        sent(self.w().write_all(stream));
        self.flush();
        self.read_u64()
    }

    /// Closes stdin (the end of the session) and waits for the server.
    fn finish(mut self) -> (std::process::ExitStatus, String) {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        (status, self.stderr_text())
    }
}

/// A reader that keeps what it reads.
struct Tee<'a, R: Read> {
    inner: &'a mut R,
    seen: Vec<u8>,
}
impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.seen.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

/// A path to upload: its NAR and what `AddToStoreNar` says of it.
struct Upload {
    path: StorePath,
    nar: Vec<u8>,
    references: BTreeSet<StorePath>,
    ca: String,
}

/// The host's static busybox in a directory `bin/busybox`, as Nix adds `./bb`: a
/// `fixed:r:sha256` path named `bb`.
fn busybox_upload(dir: &Path) -> Upload {
    let tree = dir.join("bb");
    fs::create_dir_all(tree.join("bin")).unwrap();
    fs::copy("/bin/busybox", tree.join("bin/busybox")).unwrap();
    let nar = ksbuild::store::dump_path(&tree, Vec::new()).unwrap();
    let hash = Hash::sha256(&nar);
    let path = StoreDir::default()
        .make_fixed_output_path(
            FileIngestionMethod::Recursive,
            &hash,
            "bb",
            &BTreeSet::new(),
            false,
        )
        .unwrap();
    Upload {
        path,
        nar,
        references: BTreeSet::new(),
        ca: format!("fixed:r:{}", hash.to_nix32_prefixed()),
    }
}

/// A derivation built by busybox `bb` running `script`, and its `.drv` path.
fn busybox_derivation(name: &str, bb: &StorePath, script: &str) -> (StorePath, Derivation) {
    let sd = StoreDir::default();
    let builder = format!("{}/bin/busybox", sd.display(bb));
    let mut drv = Derivation {
        system: "x86_64-linux".into(),
        builder: builder.clone(),
        args: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    };
    drv.input_sources.insert(bb.clone());
    drv.outputs.insert(
        "out".into(),
        Output {
            path: None,
            fixed: None,
        },
    );
    for (k, v) in [
        ("name", name),
        ("system", "x86_64-linux"),
        ("builder", &builder),
    ] {
        drv.env.insert(k.into(), v.into());
    }
    drv.fill_output_paths::<DerivationError>(&sd, &mut |_| unreachable!("no input derivations"))
        .unwrap();
    let drv_path = drv.drv_path(&sd).unwrap();
    (drv_path, drv)
}

/// The `.drv` of `drv` as an upload (a text path referring to its inputs).
fn drv_upload(dir: &Path, drv_path: &StorePath, drv: &Derivation) -> Upload {
    let sd = StoreDir::default();
    let text = drv.to_aterm(&sd);
    let file = dir.join(drv_path.to_string());
    fs::write(&file, &text).unwrap();
    let nar = ksbuild::store::dump_path(&file, Vec::new()).unwrap();
    Upload {
        path: drv_path.clone(),
        nar,
        references: drv.references(),
        ca: format!("text:{}", Hash::sha256(&text).to_nix32_prefixed()),
    }
}

/// SHA-256 and size of `bytes`, for readable comparisons.
fn digest(bytes: &[u8]) -> String {
    format!(
        "{} ({} bytes)",
        Hash::sha256(bytes).to_nix32_prefixed(),
        bytes.len()
    )
}

/// What a server answered in [`scenario`], for comparing two servers.
#[derive(Debug, PartialEq)]
struct Transcript {
    valid_before: Vec<String>,
    valid_after_upload: Vec<String>,
    bb_info: Vec<Vec<String>>,
    bb_dump_equal: bool,
    status: Status,
    times_built: u64,
    built_outputs: BTreeMap<String, String>,
    out_info: Vec<Vec<String>>,
    /// SHA-256 and size of the output's NAR as dumped.
    out_nar: String,
    closure: Vec<String>,
    /// SHA-256 and size of the export stream.
    export: String,
    again: Status,
    build_paths: (u64, String),
    built_by_build_paths: Vec<String>,
}

/// One session exercising every command but `ImportPaths`: upload busybox, build a
/// derivation with `BuildDerivation` and another (whose `.drv` is uploaded) with
/// `BuildPaths`, read the outputs back.
fn scenario(s: &mut Session, dir: &Path) -> Transcript {
    let bb = busybox_upload(dir);
    let (drv_path, drv) = busybox_derivation(
        "serve-test",
        &bb.path,
        "echo building over serve; echo $builder > $out",
    );
    let out = drv.outputs["out"].path.clone().unwrap();
    let valid_before = s.query_valid_paths(&[&bb.path, &out]);
    s.add_to_store_nar(&bb, &Hash::sha256(&bb.nar));
    assert_eq!(s.read_u64(), 1);
    let valid_after_upload = s.query_valid_paths(&[&bb.path, &out]);
    let bb_info = s.query_path_infos(&[&bb.path, &out]);
    let bb_dump_equal = s.dump(&bb.path, bb.nar.len() as u64) == bb.nar;
    let result = s.build_derivation(&drv_path, &drv);
    assert!(
        result.status.success(),
        "{result:?}\nstderr:\n{}",
        s.stderr_text()
    );
    let out_info = s.query_path_infos(&[&out]);
    let out_nar = s.dump(&out, out_info[0][4].parse().unwrap());
    let closure = s.query_closure(&[&out]);
    let export = s.export(&[&out, &bb.path]);
    s.last_export = export.clone();
    let again = s.build_derivation(&drv_path, &drv).status;
    // BuildPaths of a `.drv` in the store.
    let (drv2_path, drv2) = busybox_derivation("serve-test-2", &bb.path, "echo two > $out");
    let upload = drv_upload(dir, &drv2_path, &drv2);
    s.add_to_store_nar(&upload, &Hash::sha256(&upload.nar));
    assert_eq!(s.read_u64(), 1);
    let sd = StoreDir::default();
    let build_paths = s.build_paths(&[format!("{}!out", sd.display(&drv2_path))]);
    let out2 = drv2.outputs["out"].path.clone().unwrap();
    let built_by_build_paths = s.query_valid_paths(&[&out2]);
    Transcript {
        valid_before,
        valid_after_upload,
        bb_info,
        bb_dump_equal,
        status: result.status,
        times_built: result.times_built,
        built_outputs: result.built_outputs,
        out_info,
        out_nar: digest(&out_nar),
        closure,
        export: digest(&export),
        again,
        build_paths,
        built_by_build_paths,
    }
}

/// ksbuild's server, driven as Nix's client drives it: upload, query, dump, build (the log
/// on stderr), export; another store imports the export.
#[test]
fn serve_over_pipes() {
    if skip_without_busybox() {
        return;
    }
    let tmp = scratch();
    let dir = tmp.path();
    let root = dir.join("ks");
    let mut s = Session::ksbuild(&root, &dir.join("ks.log"));
    assert_eq!(s.version, wire::PROTOCOL_VERSION);
    let t = scenario(&mut s, dir);
    let export = std::mem::take(&mut s.last_export);
    let (status, stderr) = s.finish();
    assert!(status.success(), "{status}: {stderr}");
    let sd = StoreDir::default();
    let bb = busybox_upload(&dir.join("again"));
    let (drv_path, drv) = busybox_derivation(
        "serve-test",
        &bb.path,
        "echo building over serve; echo $builder > $out",
    );
    let out = drv.outputs["out"].path.clone().unwrap();
    let (bb_s, out_s) = (sd.display(&bb.path), sd.display(&out));
    assert_eq!(t.valid_before, Vec::<String>::new());
    assert_eq!(t.valid_after_upload, vec![bb_s.clone()]);
    let bb_hash = Hash::sha256(&bb.nar);
    let n = bb.nar.len().to_string();
    assert_eq!(
        t.bb_info,
        vec![vec![
            bb_s.clone(),
            String::new(),
            String::new(),
            n.clone(),
            n,
            bb_hash.to_nix32_prefixed(),
            bb.ca.clone(),
            String::new(),
        ]]
    );
    assert!(
        t.bb_dump_equal,
        "DumpStorePath gave other bytes than uploaded"
    );
    assert_eq!((t.status, t.times_built), (Status::Built, 1));
    // The output holds busybox's path, so it refers to it; its deriver is the drvPath sent.
    let expected_out = {
        let tmp = dir.join("expected");
        fs::write(&tmp, format!("{}/bin/busybox\n", bb_s)).unwrap();
        ksbuild::store::dump_path(&tmp, Vec::new()).unwrap()
    };
    assert_eq!(t.out_nar, digest(&expected_out));
    assert_eq!(
        t.out_info[0][..3],
        [out_s.clone(), sd.display(&drv_path), bb_s.clone()]
    );
    assert_eq!(
        t.out_info[0][5],
        Hash::sha256(&expected_out).to_nix32_prefixed()
    );
    let mut masked = drv.clone();
    masked.mask_outputs();
    let key = format!(
        "sha256:{}!out",
        Hash::sha256(&masked.to_aterm(&sd)).to_hex()
    );
    let realisation: serde_json::Value = serde_json::from_str(&t.built_outputs[&key]).unwrap();
    assert_eq!(realisation["outPath"], out.to_string());
    let closure: BTreeSet<&str> = t.closure.iter().map(String::as_str).collect();
    assert_eq!(closure, BTreeSet::from([out_s.as_str(), bb_s.as_str()]));
    assert_eq!(t.again, Status::AlreadyValid);
    assert_eq!(t.build_paths, (0, String::new()));
    assert_eq!(t.built_by_build_paths.len(), 1);
    // The build log went to stderr as the build ran.
    assert!(stderr.contains("building over serve"), "{stderr}");
    // The export stream imports into another store, whole.
    let root2 = dir.join("ks2");
    let mut s2 = Session::ksbuild(&root2, &dir.join("ks2.log"));
    assert_eq!(s2.import(&export), 1);
    assert_eq!(s2.query_valid_paths(&[&bb.path, &out]).len(), 2);
    assert_eq!(s2.query_path_infos(&[&out]), t.out_info);
    let (status, stderr) = s2.finish();
    assert!(status.success(), "{status}: {stderr}");
    // Imported paths check out (`store verify` fails on damage).
    run_ok(
        Command::new(ksbuild_bin())
            .arg("--store")
            .arg(&root2)
            .args(["store", "verify", "--check-contents"]),
    );
}

/// The same session against `nix-store --serve --write` gives the same answers: path
/// infos, the build result's status and built outputs (keys and Realisations), the
/// outputs' bytes, closures and the export stream byte for byte.
#[test]
fn serve_answers_as_nix_store_serve_does() {
    if skip_without_busybox() || skip_without_nix() {
        return;
    }
    let tmp = scratch();
    let dir = tmp.path();
    let mut ours = Session::ksbuild(&dir.join("ks"), &dir.join("ks.log"));
    let mut theirs = Session::nix(&dir.join("nixroot"), &dir.join("nix.log"));
    assert_eq!(ours.version, theirs.version);
    let a = scenario(&mut ours, &dir.join("a"));
    let b = scenario(&mut theirs, &dir.join("b"));
    let (status, stderr) = theirs.finish();
    assert!(status.success(), "nix-store --serve: {status}: {stderr}");
    let (status, stderr) = ours.finish();
    assert!(status.success(), "ksbuild --serve: {status}: {stderr}");
    assert_eq!(a, b);
}

/// A NAR whose claimed hash is wrong is refused and nothing is registered; without
/// `--write` uploads are refused; a stranger's greeting is refused.
#[test]
fn serve_refuses_bad_uploads() {
    let tmp = scratch();
    let dir = tmp.path();
    let root = dir.join("ks");
    let file = dir.join("f");
    fs::write(&file, "contents\n").unwrap();
    let nar = ksbuild::store::dump_path(&file, Vec::new()).unwrap();
    let hash = Hash::sha256(&nar);
    let path = StoreDir::default()
        .make_fixed_output_path(
            FileIngestionMethod::Recursive,
            &hash,
            "f",
            &BTreeSet::new(),
            false,
        )
        .unwrap();
    let upload = Upload {
        path: path.clone(),
        nar,
        references: BTreeSet::new(),
        ca: String::new(),
    };
    let mut s = Session::ksbuild(&root, &dir.join("1.log"));
    s.add_to_store_nar(&upload, &Hash::sha256(b"something else"));
    let (status, stderr) = s.finish();
    assert!(!status.success());
    assert!(
        stderr.contains("error: hash mismatch importing path"),
        "{stderr}"
    );
    let mut s = Session::ksbuild(&root, &dir.join("2.log"));
    assert_eq!(s.query_valid_paths(&[&path]), Vec::<String>::new());
    // A reference that is not valid here.
    let mut dangling = Upload {
        path: path.clone(),
        nar: upload.nar.clone(),
        references: BTreeSet::from([StoreDir::default()
            .parse_path("/nix/store/00000000000000000000000000000000-missing")
            .unwrap()]),
        ca: String::new(),
    };
    s.add_to_store_nar(&dangling, &hash);
    let (status, stderr) = s.finish();
    assert!(!status.success());
    assert!(stderr.contains("missing"), "{stderr}");
    // A content address the contents do not have.
    dangling.references.clear();
    dangling.ca = format!("fixed:r:{}", Hash::sha256(b"x").to_nix32_prefixed());
    let mut s = Session::ksbuild(&root, &dir.join("3.log"));
    s.add_to_store_nar(&dangling, &hash);
    let (status, stderr) = s.finish();
    assert!(!status.success());
    assert!(stderr.contains("content address mismatch"), "{stderr}");
    // Read-only: the upload is refused.
    let mut c = Command::new(ksbuild_bin());
    c.args(["--serve", "--store"]).arg(&root);
    let mut s = Session::start(c, &dir.join("4.log"));
    s.add_to_store_nar(&upload, &hash);
    let (status, stderr) = s.finish();
    assert!(!status.success());
    assert!(stderr.contains("without `--write`"), "{stderr}");
    // The right upload is accepted: the refusals were for their reasons.
    let mut s = Session::ksbuild(&root, &dir.join("5.log"));
    s.add_to_store_nar(&upload, &hash);
    assert_eq!(s.read_u64(), 1);
    assert_eq!(s.query_valid_paths(&[&path]).len(), 1);
    let (status, _) = s.finish();
    assert!(status.success());
    // Not the serve protocol.
    let mut child = Command::new(ksbuild_bin())
        .args(["--serve", "--write", "--store"])
        .arg(&root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error: protocol mismatch"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Nix 2.8 with `--max-jobs 0` and ksbuild as its only builder, over a real sshd: the
/// derivation is built by ksbuild (its log shows in Nix's output, its store holds the output,
/// built there) and the output equals Nix's own local build.
#[test]
fn nix_builds_through_ksbuild_over_ssh() {
    if skip_without_busybox() || skip_without_nix() {
        return;
    }
    let Some(sshd) = Sshd::start_or_skip() else {
        return;
    };
    let tmp = scratch();
    let dir = tmp.path();
    let proj = dir.join("proj");
    fs::create_dir_all(proj.join("bb/bin")).unwrap();
    fs::copy("/bin/busybox", proj.join("bb/bin/busybox")).unwrap();
    fs::write(
        proj.join("default.nix"),
        r#"derivation {
  name = "via-ksbuild"; system = "x86_64-linux"; builder = "${./bb}/bin/busybox";
  args = [ "sh" "-c" "echo building on the remote; $builder mkdir $out; echo built > $out/file; $builder ln -s $builder $out/bb" ];
}
"#,
    )
    .unwrap();
    // Nix's own build.
    let local = run_ok(
        nix("nix-build")
            .arg("--store")
            .arg(dir.join("local"))
            .arg("--no-out-link")
            .arg(proj.join("default.nix")),
    );
    let local = local.trim();
    // Through ksbuild: Nix builds nothing itself (`--max-jobs 0`).
    let ks_root = dir.join("ks");
    let builders = format!(
        "{}?remote-program={}&remote-store={} x86_64-linux - 1 1 - - {}",
        sshd.uri(),
        ksbuild_bin().display(),
        ks_root.display(),
        sshd.host_public_key_base64()
    );
    let out = crate::common::run(
        nix("nix-build")
            .arg("--store")
            .arg(dir.join("remote"))
            .args(["--no-out-link", "--max-jobs", "0", "--builders"])
            .arg(&builders)
            .arg(proj.join("default.nix"))
            .env("NIX_SSHOPTS", sshd.nix_sshopts()),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "nix-build failed: {stderr}\nsshd log:\n{}",
        sshd.log()
    );
    let remote = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(remote, local, "{stderr}");
    assert!(stderr.contains("on 'ssh://"), "{stderr}");
    assert!(stderr.contains("building on the remote"), "{stderr}");
    assert!(sshd.log().contains("Accepted publickey"), "{}", sshd.log());
    let nar_hash = |root: &Path| {
        let json = run_ok(
            nix("nix")
                .args(["path-info", "--json", "--store"])
                .arg(root)
                .arg(local),
        );
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v[0]["narHash"].as_str().unwrap().to_string()
    };
    assert_eq!(nar_hash(&dir.join("remote")), nar_hash(&dir.join("local")));
    // ksbuild built it (ultimate) and holds it, with its deriver.
    let json = run_ok(
        Command::new(ksbuild_bin())
            .arg("--store")
            .arg(&ks_root)
            .args(["store", "path-info", "--json", local]),
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        v[0]["narHash"].as_str().unwrap(),
        nar_hash(&dir.join("local"))
    );
    assert_eq!(v[0]["ultimate"], true, "{json}");
    assert!(v[0]["deriver"]
        .as_str()
        .unwrap()
        .ends_with("-via-ksbuild.drv"));
}

/// A build that fails, and one whose inputs are missing, are reported in the build result
/// (the session goes on); nothing is registered.
#[test]
fn serve_reports_failed_builds() {
    if skip_without_busybox() {
        return;
    }
    let tmp = scratch();
    let dir = tmp.path();
    let mut s = Session::ksbuild(&dir.join("ks"), &dir.join("ks.log"));
    let bb = busybox_upload(dir);
    // Missing input: busybox is not there yet.
    let (drv_path, drv) = busybox_derivation("fails", &bb.path, "echo about to fail; exit 3");
    let out = drv.outputs["out"].path.clone().unwrap();
    let result = s.build_derivation(&drv_path, &drv);
    assert_eq!(result.status, Status::MiscFailure, "{result:?}");
    assert!(result.error.contains("not valid"), "{}", result.error);
    s.add_to_store_nar(&bb, &Hash::sha256(&bb.nar));
    assert_eq!(s.read_u64(), 1);
    let result = s.build_derivation(&drv_path, &drv);
    assert_eq!(result.status, Status::PermanentFailure, "{result:?}");
    assert!(result.error.contains("failed"), "{}", result.error);
    assert!(result.error.contains("about to fail"), "{}", result.error);
    assert!(result.built_outputs.is_empty());
    assert_eq!(s.query_valid_paths(&[&out]), Vec::<String>::new());
    // A derivation for another system is refused before anything runs.
    let mut other = drv.clone();
    other.system = "riscv64-linux".into();
    let result = s.build_derivation(&drv_path, &other);
    assert_eq!(result.status, Status::InputRejected, "{result:?}");
    assert!(result.error.contains("riscv64-linux"), "{}", result.error);
    let (status, stderr) = s.finish();
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("about to fail"), "{stderr}");
}
