//! What a user sees while a realisation runs: the live view on a pseudo-terminal (made by
//! util-linux's `script`, its screen rebuilt here by a small terminal model), the plain
//! lines of a CI log with heartbeats, the plan of `--dry-run` against the realisation's own,
//! the summary, and the build history behind the estimates.

use std::fs;
use std::process::Command;

use crate::common::{command_available, ksbuild_bin, run, run_ok};
use crate::realise::{skip_without_busybox, Project};

/// Two builds of eight log lines, 0.4 s apart, and one that needs both. `ROUND` in the
/// project's environment changes every `.drv` and keeps the names.
fn graph() -> Vec<(&'static str, String)> {
    let slow = |name: &str| {
        format!(
            "builder = \"${{bb}}/bin/busybox\"\nargs = [\"sh\", \"-c\", \"for i in 1 2 3 4 5 6 7 8; do echo {name} step $i of 8; $builder sleep 0.4; done; echo $ROUND > $out\"]\n[inputs]\nbb = {{ path = \"tools/busybox\" }}\n"
        )
    };
    vec![
        ("derivations/a.toml", slow("a")),
        ("derivations/b.toml", slow("b")),
        (
            "derivations/c.toml",
            "builder = \"${bb}/bin/busybox\"\nargs = [\"sh\", \"-c\", \"echo c; $builder sleep 1; cat ${a} ${b} > $out\"]\n[inputs]\nbb = { path = \"tools/busybox\" }\na = \"a\"\nb = \"b\"\n".into(),
        ),
    ]
}

fn project() -> Project {
    let files = graph();
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    Project::new(&files)
}

fn set_round(p: &Project, round: u32) {
    fs::write(
        p.dir.join("derivations/_project.toml"),
        format!("system = \"x86_64-linux\"\n[env]\nSOURCE_DATE_EPOCH = \"1704067200\"\nROUND = \"{round}\"\n"),
    )
    .unwrap();
}

/// The screens a terminal showed for `bytes`: the rows on the screen each time the program
/// erased its live view (just before the erase, i.e. the frame it had drawn), and at the end.
/// Understands what the live view writes: text, `\r`, `\n`, `ESC[nA`, `ESC[J`, `ESC[K` and
/// SGR colours (ignored). Anything else fails the test.
fn screens(bytes: &[u8]) -> (Vec<Vec<String>>, Vec<String>) {
    let text = String::from_utf8_lossy(bytes);
    let mut rows: Vec<String> = vec![String::new()];
    let (mut row, mut col) = (0usize, 0usize);
    let mut frames = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => col = 0,
            '\n' => {
                row += 1;
                col = 0;
                if rows.len() <= row {
                    rows.push(String::new());
                }
            }
            '\x1b' => {
                assert_eq!(chars.next(), Some('['), "only CSI sequences: {text:?}");
                let mut param = String::new();
                let fin = loop {
                    let c = chars.next().expect("a complete escape sequence");
                    if c.is_ascii_digit() || c == ';' {
                        param.push(c);
                    } else {
                        break c;
                    }
                };
                let n: usize = param.parse().unwrap_or(1);
                match fin {
                    'A' => row = row.saturating_sub(n),
                    'J' => {
                        frames.push(rows[row..].to_vec());
                        rows.truncate(row + 1);
                        let keep: String = rows[row].chars().take(col).collect();
                        rows[row] = keep;
                    }
                    'K' => {
                        let keep: String = rows[row].chars().take(col).collect();
                        rows[row] = keep;
                    }
                    'm' => {}
                    other => panic!("unexpected escape ESC[{param}{other} in {text:?}"),
                }
            }
            c => {
                let mut line: Vec<char> = rows[row].chars().collect();
                if col < line.len() {
                    line[col] = c;
                } else {
                    line.resize(col, ' ');
                    line.push(c);
                }
                rows[row] = line.into_iter().collect();
                col += 1;
            }
        }
    }
    (frames, rows)
}

/// `ksbuild ARGS` on a pseudo-terminal of 60 columns; everything it wrote there.
fn on_terminal(p: &Project, args: &str) -> Vec<u8> {
    let cmd = format!(
        "stty cols 60 rows 20; {} --store {} --project {} {args}",
        ksbuild_bin().display(),
        p.scratch.join("st").display(),
        p.dir.display()
    );
    let out = run(Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env_remove("NO_COLOR")
        .env("TERM", "xterm")
        .current_dir(&p.scratch));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    out.stdout
}

#[test]
fn the_live_view_shows_counts_one_line_per_build_and_an_eta_from_the_last_build() {
    if skip_without_busybox() {
        return;
    }
    assert!(
        command_available("script"),
        "util-linux's `script` (Debian bsdutils) makes the pseudo-terminal"
    );
    let p = project();
    set_round(&p, 1);
    let first = on_terminal(&p, "realise -j2 c");
    let (frames, end) = screens(&first);
    let shown: Vec<&Vec<String>> = frames.iter().filter(|f| !f.join("").is_empty()).collect();
    assert!(
        shown.len() > 5,
        "the view was drawn as the builds ran: {frames:?}"
    );
    for f in &shown {
        // A header, then at most one line per running build (two at -j2), each cut to the
        // terminal's width.
        assert!(f[0].starts_with('['), "{f:?}");
        assert!(f.len() <= 3, "one line per running build: {f:?}");
        for l in f.iter() {
            assert!(l.chars().count() < 60, "wider than the terminal: {l:?}");
        }
    }
    assert!(
        shown
            .iter()
            .any(|f| f[0].starts_with("[0/3] 2 running, 1 queued")),
        "{shown:?}"
    );
    assert!(
        shown.iter().any(|f| f.len() == 3
            && f[1].trim_start().starts_with("a ")
            && f[1].contains("a step")
            && f[2].trim_start().starts_with("b ")),
        "a line per running build with its last log line: {shown:?}"
    );
    assert!(
        !shown.iter().any(|f| f[0].contains("ETA")),
        "no history yet, no ETA: {shown:?}"
    );
    // The permanent lines above the view: the plan, each build, the summary; then the path.
    let text: Vec<&str> = end
        .iter()
        .map(String::as_str)
        .filter(|l| !l.is_empty())
        .collect();
    assert!(text[0].starts_with("plan: 3 to build;"), "{text:?}");
    assert!(
        text.iter().any(|l| l.starts_with("built `a` in ")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|l| l.starts_with("built 3 (") && l.ends_with(" wall")),
        "the summary: {text:?}"
    );
    assert!(text.last().unwrap().starts_with("/nix/store/"), "{text:?}");

    // The same names again (every .drv changed): estimates from the first builds.
    set_round(&p, 2);
    let second = on_terminal(&p, "realise -j2 c");
    let (frames, end) = screens(&second);
    assert!(
        end.iter()
            .any(|l| l.starts_with("plan: 3 to build (~") && l.contains("of building")),
        "{end:?}"
    );
    assert!(
        frames
            .iter()
            .any(|f| !f.is_empty() && f[0].contains(", ETA ")),
        "an overall ETA: {frames:?}"
    );
    assert!(
        frames
            .iter()
            .any(|f| f.len() > 1 && f[1].contains(" / ~3s") && f[1].contains('%')),
        "each build's ETA and progress from its last build (3.2 s or so): {frames:?}"
    );
}

#[test]
fn a_ci_log_has_plain_lines_start_and_end_heartbeats_and_a_summary() {
    if skip_without_busybox() {
        return;
    }
    let p = project();
    set_round(&p, 1);
    let out = run(p
        .ks("st")
        .env("KSBUILD_HEARTBEAT", "1")
        .args(["realise", "-j2", "c"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains('\r') && !stderr.contains('\x1b'),
        "{stderr:?}"
    );
    for line in [
        "plan: 3 to build; 0 valid already",
        "building `a`",
        "built `a` in ",
        "building `c`",
        "still building `a`: ",
        "still building `b`: ",
    ] {
        assert!(
            stderr.lines().any(|l| l.starts_with(line)),
            "`{line}` in:\n{stderr}"
        );
    }
    let beat = stderr
        .lines()
        .find(|l| l.starts_with("still building `a`"))
        .unwrap();
    assert!(
        beat.contains("log lines") && beat.contains("last: a step"),
        "{beat}"
    );
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with("built 3 (") && last.contains("longest `") && last.ends_with(" wall"),
        "{stderr}"
    );
    // A failure is summarised with the command that shows its log.
    fs::write(
        p.dir.join("derivations/bad.toml"),
        "builder = \"${bb}/bin/busybox\"\nargs = [\"sh\", \"-c\", \"echo about to fail; exit 3\"]\n[inputs]\nbb = { path = \"tools/busybox\" }\n",
    )
    .unwrap();
    let out = run(p.ks("st").args(["realise", "bad"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(100), "{stderr}");
    assert!(
        stderr.contains("> about to fail"),
        "the log's last lines: {stderr}"
    );
    assert!(
        stderr
            .lines()
            .last()
            .unwrap()
            .contains("1 failed (see above; `ksbuild log bad`)"),
        "{stderr}"
    );
}

#[test]
fn dry_run_lists_what_the_realisation_then_does() {
    if skip_without_busybox() {
        return;
    }
    let p = project();
    set_round(&p, 1);
    run_ok(p.ks("st").args(["realise", "a"]));
    let dry = run_ok(p.ks("st").args(["realise", "--dry-run", "--json", "c"]));
    let dry: serde_json::Value = serde_json::from_str(dry.trim()).unwrap();
    let human = run_ok(p.ks("st").args(["realise", "--dry-run", "c"]));
    assert_eq!(
        human,
        "plan: 2 to build; 1 valid already\nthese 2 will be built:\n  b\n  c\n"
    );
    // Nothing was done.
    let again = run_ok(p.ks("st").args(["realise", "--dry-run", "--json", "c"]));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(again.trim()).unwrap(),
        dry
    );
    let real = run_ok(p.ks("st").args(["realise", "--json", "c"]));
    let plan: serde_json::Value = real
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["event"] == "plan")
        .unwrap();
    assert_eq!(plan, dry, "the dry run's plan is the realisation's");
    let built: Vec<String> = real
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "build-finished")
        .map(|e| e["target"].as_str().unwrap().to_string())
        .collect();
    let planned: Vec<String> = dry["to_build"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["target"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(built, planned, "{real}");
    assert_eq!(dry["cached"], 1);
    // `a`'s build is in the history: `log --stats` shows it, and its estimate is there.
    let stats = run_ok(p.ks("st").args(["log", "--stats", "--json", "a"]));
    let stats: serde_json::Value = serde_json::from_str(stats.trim()).unwrap();
    assert_eq!(stats["builds"].as_array().unwrap().len(), 1, "{stats}");
    assert_eq!(stats["builds"][0]["lines"], 8, "{stats}");
    let s = stats["builds"][0]["seconds"].as_f64().unwrap();
    assert!((3.0..10.0).contains(&s), "{stats}");
}

/// A quick realisation does not wait for the progress ticker: a stop that comes before the
/// ticker's thread first waits is not lost (it was, and every no-op in a CI log took a
/// second, the ticker's period, instead of milliseconds).
#[test]
fn a_quick_run_ends_without_waiting_for_the_ticker() {
    if skip_without_busybox() {
        return;
    }
    let p = Project::new(&[(
        "derivations/t.toml",
        "builder = \"${bb}/bin/busybox\"\nargs = [\"sh\", \"-c\", \"echo t > $out\"]\n[inputs]\nbb = { path = \"tools/busybox\" }\n",
    )]);
    run_ok(p.ks("st").args(["realise", "--no-link", "t"]));
    for _ in 0..5 {
        let t0 = std::time::Instant::now();
        // stderr is a pipe: the CI log's mode, whose ticker wakes once a second.
        run_ok(p.ks("st").args(["realise", "--no-link", "t"]));
        let took = t0.elapsed();
        assert!(
            // The lost wake-up cost a whole period (1 s); a no-op takes milliseconds, and
            // the margin is for a machine busy compiling kernels beside the test.
            took < std::time::Duration::from_millis(900),
            "a no-op took {took:?}"
        );
    }
}
