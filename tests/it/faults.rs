//! Fault tests of the store: `store add` (and `store gc`) killed with SIGKILL at random
//! points, four processes adding overlapping paths at once, and garbage collection around
//! indirect roots (`result` links). Needs no Nix. Does I/O and runs processes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{ksbuild, run, run_ok};
use crate::trees::{self, Scratch, SplitMix64, TreeOptions};

/// `nix path-info --json` output keyed by path.
fn path_infos(store: &Path, paths: &[String]) -> BTreeMap<String, serde_json::Value> {
    let text = run_ok(
        ksbuild(store)
            .args(["store", "path-info", "--json"])
            .args(paths),
    );
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON {text}: {e}"));
    v.as_array()
        .expect("array")
        .iter()
        .map(|o| (o["path"].as_str().expect("path").to_string(), o.clone()))
        .collect()
}

/// The names in `dir`; none if it does not exist (a `store add` killed before it created
/// the store).
fn names(dir: &Path) -> BTreeSet<String> {
    match fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
        listing => listing
            .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect(),
    }
}

/// The valid paths of a store, from its metadata records.
fn valid_paths(store: &Path) -> BTreeSet<String> {
    names(&store.join("nix/var/ksbuild/db"))
        .into_iter()
        .filter_map(|n| n.strip_suffix(".json").map(|b| format!("/nix/store/{b}")))
        .collect()
}

/// Asserts the store holds no leftovers: nothing staged, no half-written record, and
/// exactly one record for each entry of the store directory.
fn assert_no_leftovers(store: &Path, when: &str) {
    let staged = names(&store.join("nix/var/ksbuild/tmp"));
    assert!(staged.is_empty(), "{when}: staging left over: {staged:?}");
    let db = names(&store.join("nix/var/ksbuild/db"));
    let temps: Vec<_> = db.iter().filter(|n| !n.ends_with(".json")).collect();
    assert!(
        temps.is_empty(),
        "{when}: temporary records left over: {temps:?}"
    );
    let records: BTreeSet<String> = db
        .iter()
        .filter_map(|n| n.strip_suffix(".json"))
        .map(str::to_string)
        .collect();
    let entries = names(&store.join("nix/store"));
    assert_eq!(entries, records, "{when}: store entries and records differ");
}

/// Asserts every valid path is one of `expected` (path → source), with the expected
/// metadata, and holds exactly its source tree.
fn assert_valid_paths_complete(
    store: &Path,
    expected: &BTreeMap<String, (PathBuf, serde_json::Value)>,
    when: &str,
) {
    let valid: Vec<String> = valid_paths(store).into_iter().collect();
    if valid.is_empty() {
        return;
    }
    let infos = path_infos(store, &valid);
    for p in &valid {
        let (source, want) = expected
            .get(p)
            .unwrap_or_else(|| panic!("{when}: unexpected valid path {p}"));
        for field in ["narHash", "narSize", "ca", "references"] {
            assert_eq!(infos[p][field], want[field], "{when}: `{field}` of {p}");
        }
        let physical = store.join(p.trim_start_matches('/'));
        trees::compare_trees(source, &physical)
            .unwrap_or_else(|e| panic!("{when}: {p} is incomplete: {e}"));
        trees::assert_canonical(&physical);
    }
}

fn verify_clean(store: &Path, when: &str) {
    let out = run(ksbuild(store).args(["store", "verify", "--check-contents"]));
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "{when}: verify found damage:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts `cmd` and sends it SIGKILL after `delay`. Returns whether it was still running.
fn kill_after(cmd: &mut Command, delay: Duration) -> bool {
    let mut child: Child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    std::thread::sleep(delay);
    // `Child::kill` sends SIGKILL on Unix; it fails only if the child was already reaped.
    let _ = child.kill();
    let status = child.wait().expect("wait for the killed process");
    !status.success()
}

/// Random delay up to `max`.
fn delay_up_to(rng: &mut SplitMix64, max: Duration) -> Duration {
    Duration::from_micros(rng.below(max.as_micros() as u64 + 1))
}

/// Sources of the kill tests: a tree of a few hundred files and some MB, a small tree and
/// a single 1 MB file.
fn kill_sources(dir: &Path) -> Vec<PathBuf> {
    let big = dir.join("big-tree");
    trees::generate(
        &big,
        101,
        &TreeOptions {
            random_entries: 350,
            max_file_size: 96 * 1024,
            big_file: Some(2 << 20),
            depth: 45,
        },
    );
    let small = dir.join("small-tree");
    trees::generate(
        &small,
        102,
        &TreeOptions {
            random_entries: 30,
            depth: 5,
            ..TreeOptions::default()
        },
    );
    let file = dir.join("one-file.bin");
    let mut bytes = vec![0u8; 1 << 20];
    SplitMix64::new(103).fill(&mut bytes);
    fs::write(&file, bytes).expect("write one-file.bin");
    vec![big, small, file]
}

/// One uninterrupted `store add`, timed.
struct TimedAdd {
    /// The printed paths.
    printed: String,
    /// How long the whole add took.
    took: Duration,
    /// When each path was printed, i.e. just after it was registered.
    registered: Vec<Duration>,
}

/// Runs `store add sources` to completion, noting when each path is printed.
fn timed_add(store: &Path, sources: &[PathBuf]) -> TimedAdd {
    let start = Instant::now();
    let mut child = ksbuild(store)
        .args(["store", "add"])
        .args(sources)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn ksbuild store add");
    let mut printed = String::new();
    let mut registered = Vec::new();
    for line in BufReader::new(child.stdout.take().expect("stdout")).lines() {
        registered.push(start.elapsed());
        printed.push_str(&line.expect("read stdout"));
        printed.push('\n');
    }
    assert!(child.wait().expect("wait").success(), "store add failed");
    TimedAdd {
        printed,
        took: start.elapsed(),
        registered,
    }
}

/// Adds `sources` to a fresh store at `reference`: path → (source, `path-info --json`
/// object), and the timing.
fn reference_add(
    reference: &Path,
    sources: &[PathBuf],
) -> (BTreeMap<String, (PathBuf, serde_json::Value)>, TimedAdd) {
    let timing = timed_add(reference, sources);
    let paths: Vec<String> = timing.printed.lines().map(str::to_string).collect();
    assert_eq!(paths.len(), sources.len());
    let infos = path_infos(reference, &paths);
    let expected = paths
        .iter()
        .zip(sources)
        .map(|(p, s)| (p.clone(), (s.clone(), infos[p].clone())))
        .collect();
    (expected, timing)
}

/// SIGKILL `store add` at random points, many times; after each kill the store verifies
/// clean, every valid path is complete, a rerun completes with the expected paths, and a
/// later command leaves no staging behind. Some trials also kill `store gc`.
#[test]
fn killed_store_add_leaves_a_consistent_store() {
    let s = Scratch::new();
    let sources = kill_sources(s.path());
    let (expected, mut timing) = reference_add(&s.path().join("reference"), &sources);
    let printed = timing.printed.clone();
    let first_took = timing.took;
    let ks = s.path().join("ks");
    let mut rng = SplitMix64::new(0x5eed_fa17);
    let (mut killed, mut gc_killed) = (0, 0);
    let mut valid_after_kill = BTreeMap::<usize, usize>::new();
    let (mut staged_after_kill, mut unregistered_after_kill) = (0, 0);
    const TRIALS: usize = 30;
    for trial in 0..TRIALS {
        // Half the kills fall anywhere in the time an add takes, the other half near the
        // moments a path was registered (the rename into the store, then the record).
        // Both come from the last uninterrupted add, as the speed changes with the load
        // of the machine: a fixed 0–300 ms would miss the end of a slow add.
        let delay = if trial % 2 == 0 {
            let max =
                (timing.took * 5 / 4).clamp(Duration::from_millis(20), Duration::from_secs(3));
            delay_up_to(&mut rng, max)
        } else {
            let at = *rng.pick(&timing.registered);
            at * 85 / 100 + delay_up_to(&mut rng, at * 15 / 100)
        };
        let when = format!("trial {trial} (add killed after {delay:?})");
        if kill_after(ksbuild(&ks).args(["store", "add"]).args(&sources), delay) {
            killed += 1;
        }
        *valid_after_kill.entry(valid_paths(&ks).len()).or_default() += 1;
        if !names(&ks.join("nix/var/ksbuild/tmp")).is_empty() {
            staged_after_kill += 1;
        }
        if names(&ks.join("nix/store")).len() > valid_paths(&ks).len() {
            unregistered_after_kill += 1;
        }
        // `verify` is the next command: it sweeps the leftovers and finds no damage.
        verify_clean(&ks, &when);
        assert_no_leftovers(&ks, &when);
        assert_valid_paths_complete(&ks, &expected, &when);

        timing = timed_add(&ks, &sources);
        assert_eq!(
            timing.printed, printed,
            "{when}: the rerun prints the expected paths"
        );
        assert_no_leftovers(&ks, &when);
        assert_valid_paths_complete(&ks, &expected, &when);
        assert_eq!(valid_paths(&ks).len(), sources.len());

        // Start the next trial with all, none, or (killed GC) some of the paths valid.
        match rng.below(4) {
            0 => {}
            1 => {
                let delay = delay_up_to(&mut rng, Duration::from_millis(40));
                let when = format!("trial {trial} (gc killed after {delay:?})");
                if kill_after(ksbuild(&ks).args(["store", "gc"]), delay) {
                    gc_killed += 1;
                }
                verify_clean(&ks, &when);
                assert_no_leftovers(&ks, &when);
                assert_valid_paths_complete(&ks, &expected, &when);
            }
            _ => {
                let deleted = run_ok(ksbuild(&ks).args(["store", "gc"]));
                assert_eq!(
                    deleted.lines().count(),
                    sources.len(),
                    "trial {trial}: gc deletes the unrooted paths"
                );
            }
        }
    }
    eprintln!(
        "{TRIALS} trials, an add took {first_took:?} at first and {:?} at last: {killed} adds killed while running, \
         {gc_killed} GCs killed; number of valid paths right after the kill → trials: {valid_after_kill:?}; \
         kills that left staging: {staged_after_kill}, an unregistered store entry: {unregistered_after_kill}",
        timing.took
    );
    assert!(
        killed >= TRIALS / 4,
        "too few kills hit a running add ({killed}); the timing calibration is off"
    );
    assert!(
        staged_after_kill > 0,
        "no kill left staging behind, so the sweep was never tested"
    );
}

/// Four processes add overlapping sets of trees to one store at once: all succeed, print
/// what a sequential run prints, and each path is registered exactly once.
#[test]
fn concurrent_adds_register_each_path_once() {
    let s = Scratch::new();
    let sources: Vec<PathBuf> = (0..5)
        .map(|i| {
            let p = s.path().join(format!("tree-{i}"));
            trees::generate(
                &p,
                200 + i,
                &TreeOptions {
                    random_entries: 150,
                    max_file_size: 128 * 1024,
                    depth: 12,
                    big_file: None,
                },
            );
            p
        })
        .collect();
    let (expected, _) = reference_add(&s.path().join("reference"), &sources);
    let path_of: BTreeMap<&PathBuf, &String> =
        expected.iter().map(|(p, (src, _))| (src, p)).collect();
    let sets: [[usize; 3]; 4] = [[0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 0]];
    let (mut waited, mut overlapping_rounds) = (0, 0);
    for round in 0..3 {
        let ks = s.path().join(format!("ks-{round}"));
        if round == 2 {
            // A store that already exists and holds one of the paths.
            run_ok(ksbuild(&ks).args(["store", "add"]).arg(&sources[2]));
        }
        let started = Instant::now();
        let children: Vec<(Vec<&PathBuf>, Child)> = sets
            .iter()
            .enumerate()
            .map(|(i, set)| {
                let mut args: Vec<&PathBuf> = set.iter().map(|&k| &sources[k]).collect();
                if (round + i) % 2 == 1 {
                    args.reverse();
                }
                let child = ksbuild(&ks)
                    .args(["store", "add"])
                    .args(&args)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn ksbuild store add");
                (args, child)
            })
            .collect();
        let all_started = started.elapsed();
        // Note when each process ends, to know whether all four ran at once.
        let mut children: Vec<(Vec<&PathBuf>, Child, Option<Duration>)> =
            children.into_iter().map(|(a, c)| (a, c, None)).collect();
        while children.iter().any(|c| c.2.is_none()) {
            for (_, child, ended) in children.iter_mut().filter(|c| c.2.is_none()) {
                if child.try_wait().expect("try_wait").is_some() {
                    *ended = Some(started.elapsed());
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let first_end = children
            .iter()
            .filter_map(|c| c.2)
            .min()
            .unwrap_or_default();
        if first_end > all_started {
            overlapping_rounds += 1;
        }
        for (args, child, _) in children {
            let out = child.wait_with_output().expect("wait");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success(),
                "round {round}: a concurrent add failed:\n{stderr}"
            );
            let want: String = args.iter().map(|a| format!("{}\n", path_of[a])).collect();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                want,
                "round {round}: printed paths"
            );
            // Replacing an existing store entry would mean a second registration.
            assert!(
                !stderr.contains("left over"),
                "round {round}: a path was replaced:\n{stderr}"
            );
            waited += stderr.matches("waiting for the lock").count();
        }
        let when = format!("round {round}");
        assert_no_leftovers(&ks, &when);
        let valid = valid_paths(&ks);
        assert_eq!(
            valid,
            expected.keys().cloned().collect::<BTreeSet<_>>(),
            "{when}: one record per path"
        );
        verify_clean(&ks, &when);
        assert_valid_paths_complete(&ks, &expected, &when);
    }
    eprintln!("concurrent adds: {overlapping_rounds} of 3 rounds had all four running at once; {waited} waits for a lock");
    assert!(
        overlapping_rounds > 0,
        "the four processes never ran at the same time"
    );
}

/// GC deletes exactly the paths no root reaches; `--dry-run` deletes nothing; removing or
/// retargeting a `result` link releases its path.
#[test]
fn gc_respects_indirect_roots() {
    let s = Scratch::new();
    let ks = s.path().join("ks");
    let sources: Vec<PathBuf> = ["w", "x", "y", "z"]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let p = s.path().join(n);
            trees::generate(
                &p,
                300 + i as u64,
                &TreeOptions {
                    random_entries: 30,
                    depth: 5,
                    ..TreeOptions::default()
                },
            );
            p
        })
        .collect();
    let printed = run_ok(ksbuild(&ks).args(["store", "add"]).args(&sources));
    let paths: Vec<String> = printed.lines().map(str::to_string).collect();
    let [w, x, y, z] = [&paths[0], &paths[1], &paths[2], &paths[3]];
    let set = |ps: &[&String]| {
        ps.iter()
            .map(|p| p.to_string())
            .collect::<BTreeSet<String>>()
    };
    let lines = |out: String| {
        out.lines()
            .map(str::to_string)
            .collect::<BTreeSet<String>>()
    };

    let links = s.path().join("links");
    fs::create_dir(&links).expect("mkdir links");
    let result = links.join("result");
    run_ok(ksbuild(&ks).args(["store", "add-root"]).arg(&result).arg(x));
    // A relative link, made from its directory, first to y and then retargeted to z.
    run_ok(
        ksbuild(&ks)
            .current_dir(&links)
            .args(["store", "add-root", "result-2", y]),
    );
    run_ok(
        ksbuild(&ks)
            .current_dir(&links)
            .args(["store", "add-root", "result-2", z]),
    );
    assert_eq!(
        run_ok(ksbuild(&ks).args(["store", "path-info"]).arg(&result)).trim(),
        x.as_str()
    );

    // Dry run: lists w and y, deletes nothing.
    assert_eq!(
        lines(run_ok(ksbuild(&ks).args(["store", "gc", "--dry-run"]))),
        set(&[w, y])
    );
    let json: serde_json::Value = serde_json::from_str(&run_ok(ksbuild(&ks).args([
        "store",
        "gc",
        "--dry-run",
        "--json",
    ])))
    .expect("gc JSON");
    assert_eq!(json["dryRun"], true);
    assert_eq!(json["deleted"].as_array().map(Vec::len), Some(2));
    assert_eq!(valid_paths(&ks), set(&[w, x, y, z]));
    for p in &paths {
        assert!(
            ks.join(p.trim_start_matches('/')).exists(),
            "dry run deleted {p}"
        );
    }
    verify_clean(&ks, "after gc --dry-run");

    // GC: deletes w and y; the rooted paths stay valid and complete.
    assert_eq!(
        lines(run_ok(ksbuild(&ks).args(["store", "gc"]))),
        set(&[w, y])
    );
    assert_eq!(valid_paths(&ks), set(&[x, z]));
    for gone in [w, y] {
        assert!(
            !ks.join(gone.trim_start_matches('/')).exists(),
            "{gone} is still on disk"
        );
        assert!(
            !run(ksbuild(&ks).args(["store", "path-info", gone]))
                .status
                .success(),
            "{gone} is still valid"
        );
    }
    assert_no_leftovers(&ks, "after gc");
    verify_clean(&ks, "after gc");
    trees::compare_trees(&sources[1], &ks.join(x.trim_start_matches('/'))).expect("x intact");
    trees::compare_trees(&sources[3], &ks.join(z.trim_start_matches('/'))).expect("z intact");
    assert_eq!(
        run_ok(ksbuild(&ks).args(["store", "gc"])),
        "",
        "nothing more to collect"
    );

    // Removing `result` releases x, and only x.
    fs::remove_file(&result).expect("rm result");
    assert_eq!(
        lines(run_ok(ksbuild(&ks).args(["store", "gc", "--dry-run"]))),
        set(&[x])
    );
    assert_eq!(valid_paths(&ks), set(&[x, z]));
    assert_eq!(lines(run_ok(ksbuild(&ks).args(["store", "gc"]))), set(&[x]));
    assert_eq!(valid_paths(&ks), set(&[z]));
    verify_clean(&ks, "after removing result");

    fs::remove_file(links.join("result-2")).expect("rm result-2");
    assert_eq!(lines(run_ok(ksbuild(&ks).args(["store", "gc"]))), set(&[z]));
    assert_eq!(valid_paths(&ks), BTreeSet::new());
    assert_no_leftovers(&ks, "after the last gc");

    // The store still works: re-adding gives the same path.
    assert_eq!(
        run_ok(ksbuild(&ks).args(["store", "add"]).arg(&sources[0])).trim(),
        w.as_str()
    );
    verify_clean(&ks, "after re-adding");
}

/// Every benchmark script works in a directory of its own under `BENCH_DIR` and deletes
/// only that: `store-vs-nix.sh` once used `BENCH_DIR` itself and removed it on exit
/// (`BENCH_DIR=/dev/shm` emptied `/dev/shm`). Each script is stopped early, where its
/// clean-up runs (a `mkdir` that fails; `cargo` and Nix are stand-ins that succeed), with
/// `BENCH_DIR` holding a file of the user's.
#[test]
fn benchmark_scripts_delete_only_what_they_created() {
    let tmp = crate::common::scratch();
    let fake = tmp.path().join("bin");
    fs::create_dir(&fake).unwrap();
    for (name, body) in [
        ("cargo", "exit 0"),
        ("nix", "exit 0"),
        ("nix-build", "exit 0"),
        ("nix-store", "exit 0"),
        ("nix-instantiate", "exit 0"),
        ("sshd", "exit 0"),
        ("ssh", "exit 0"),
        ("mkdir", "echo stopped here >&2; exit 1"),
        // kernel-overhead.sh asks ksbuild (`KS`) for the kernel's derivation first.
        (
            "ksbuild",
            r#"[ "$1" = show-derivation ] && echo '{"k.drv": {"args": ["0", "1", "2", "/t", "4", "5", "/s"], "env": {"A": "b"}}}'; exit 0"#,
        ),
    ] {
        let path = fake.join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        run_ok(Command::new("chmod").arg("755").arg(&path));
    }
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bench");
    let mut ran = 0;
    for entry in fs::read_dir(&scripts).unwrap() {
        let script = entry.unwrap().path();
        // lib.sh is sourced by the others, not run.
        if script.extension().is_none_or(|e| e != "sh") || script.ends_with("lib.sh") {
            continue;
        }
        let bench_dir = tmp.path().join("users-dir");
        fs::create_dir_all(&bench_dir).unwrap();
        fs::write(bench_dir.join("keep-me"), "the user's\n").unwrap();
        let out = run(Command::new("timeout")
            .arg("60")
            .arg("bash")
            .arg(&script)
            .arg("1")
            .env("BENCH_DIR", &bench_dir)
            .env("KS", fake.join("ksbuild"))
            .env(
                "PATH",
                format!("{}:{}", fake.display(), std::env::var("PATH").unwrap()),
            ));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("stopped here"),
            "{}: did not reach its work directory:\n{stderr}",
            script.display()
        );
        let left: Vec<String> = fs::read_dir(&bench_dir)
            .unwrap_or_else(|e| panic!("{}: deleted BENCH_DIR: {e}", script.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            left,
            ["keep-me"],
            "{}: BENCH_DIR must keep the user's files and lose the script's own",
            script.display()
        );
        ran += 1;
    }
    assert_eq!(ran, 11, "every script in tests/bench is checked");
}
