//! The commands (`status`, `apply`, `healthcheck`, `rollback`, `reboot`): each one an
//! operation over the boot environment, the bundle passes, the state and the health check.
//! Every message goes through [`Console`], one line each, prefixed `kubesolo-update: `.

use crate::bootenv::{self, BootEnv, Slot};
use crate::bundle::{self, Expect};
use crate::health;
use crate::http;
use crate::json::Json;
use crate::paths::Paths;
use crate::slot;
use crate::state::{self, Config, State};
use crate::sys;
use std::cell::RefCell;
use std::fs;
use std::io::BufReader;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where messages go: printed (stdout) and kept (tests read them).
pub struct Console {
    lines: RefCell<Vec<String>>,
    echo: bool,
}

impl Console {
    /// A console that prints (`echo`) and records.
    pub fn new(echo: bool) -> Console {
        Console {
            lines: RefCell::new(Vec::new()),
            echo,
        }
    }

    /// Says one line.
    pub fn say(&self, msg: &str) {
        for part in msg.lines() {
            let line = format!("kubesolo-update: {}", part);
            if self.echo {
                println!("{}", line);
            }
            self.lines.borrow_mut().push(line);
        }
    }

    /// Everything said so far.
    #[cfg(test)]
    pub fn lines(&self) -> Vec<String> {
        self.lines.borrow().clone()
    }
}

/// The agent: where its files are and where it speaks.
pub struct Agent {
    /// The file-system root (test mode when prefixed).
    pub paths: Paths,
    /// Messages.
    pub console: Console,
}

/// What a command ended with, for the exit code.
pub type Outcome = Result<(), String>;

/// The agent's lock, held until dropped.
enum Exclusive {
    /// flock(2) on the lock file, released when it is closed.
    Flock(#[allow(dead_code)] std::fs::File),
    /// The pid file of a kernel without file locking, removed on drop.
    PidFile(std::path::PathBuf),
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        if let Exclusive::PidFile(path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn now() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        .to_string()
}

/// The image track of a boot environment on a machine.
pub fn track(boot: &str, arch: &str) -> String {
    match (boot, arch) {
        ("rpi", _) => "rpi".to_string(),
        (_, "aarch64") => "arm64".to_string(),
        (_, a) => a.to_string(),
    }
}

impl Agent {
    /// An agent over `paths`.
    pub fn new(paths: Paths, echo: bool) -> Agent {
        Agent {
            paths,
            console: Console::new(echo),
        }
    }

    fn say(&self, msg: &str) {
        self.console.say(msg);
    }

    fn config(&self) -> Config {
        let (config, warnings) = Config::load(&self.paths);
        for w in warnings {
            self.say(&format!("warning: {}", w));
        }
        config
    }

    /// `status [--json]`.
    pub fn status(&self, json: bool) -> Outcome {
        let env = bootenv::detect(&self.paths);
        let state = State::load(&self.paths)?;
        let arch = state::machine(&self.paths);
        let running = state::running_version(&self.paths);
        let mut problems = Vec::new();
        let booted = env.booted().map_err(|e| problems.push(e)).ok();
        let active = env.active().map_err(|e| problems.push(e)).ok();
        let tentative = match booted {
            Some(b) => env.tentative(b).map_err(|e| problems.push(e)).ok(),
            None => None,
        };
        let details = env
            .details()
            .map_err(|e| problems.push(e))
            .unwrap_or_default();
        let slot_version = |s: Slot| -> Option<String> {
            if Some(s) == booted && running.is_some() {
                return running.clone();
            }
            state
                .get(&format!("version-{}", s.name()))
                .map(|v| v.to_string())
        };
        let pending = state.get("pending-slot").map(|s| s.to_string());
        if json {
            let slot_json = |s: Slot| {
                Json::Object(vec![
                    ("version".to_string(), Json::opt(slot_version(s).as_deref())),
                    ("booted".to_string(), Json::Bool(Some(s) == booted)),
                    ("active".to_string(), Json::Bool(Some(s) == active)),
                ])
            };
            let pending_json = match &pending {
                Some(p) => Json::Object(vec![
                    ("slot".to_string(), Json::str(p)),
                    (
                        "version".to_string(),
                        Json::opt(state.get("pending-version")),
                    ),
                    ("applied_at".to_string(), Json::opt(state.get("applied-at"))),
                ]),
                None => Json::Null,
            };
            let value = Json::Object(vec![
                ("boot".to_string(), Json::str(env.kind())),
                ("arch".to_string(), Json::str(&arch)),
                ("track".to_string(), Json::str(&track(env.kind(), &arch))),
                ("running_version".to_string(), Json::opt(running.as_deref())),
                ("booted".to_string(), Json::opt(booted.map(|s| s.name()))),
                ("active".to_string(), Json::opt(active.map(|s| s.name()))),
                (
                    "tentative".to_string(),
                    tentative.map(Json::Bool).unwrap_or(Json::Null),
                ),
                (
                    "slots".to_string(),
                    Json::Object(vec![
                        ("A".to_string(), slot_json(Slot::A)),
                        ("B".to_string(), slot_json(Slot::B)),
                    ]),
                ),
                ("pending".to_string(), pending_json),
                (env.kind().to_string(), Json::Object(details)),
                (
                    "last_result".to_string(),
                    Json::opt(state.get("last-result")),
                ),
                (
                    "problems".to_string(),
                    Json::Array(problems.iter().map(|p| Json::str(p)).collect()),
                ),
            ]);
            println!("{}", value.to_text());
            return Ok(());
        }
        let name = |s: Option<Slot>| s.map(|s| s.name()).unwrap_or("unknown");
        self.say(&format!(
            "boot {}, track {}, arch {}",
            env.kind(),
            track(env.kind(), &arch),
            arch
        ));
        self.say(&format!(
            "booted slot {} (version {}{}), next boot slot {}",
            name(booted),
            running.as_deref().unwrap_or("unknown"),
            if tentative == Some(true) {
                ", on trial: not committed yet"
            } else {
                ""
            },
            name(active)
        ));
        for s in [Slot::A, Slot::B] {
            let mut notes = Vec::new();
            if Some(s) == booted {
                notes.push("booted");
            }
            if Some(s) == active {
                notes.push("active");
            }
            if pending.as_deref() == Some(s.name()) {
                notes.push("pending");
            }
            self.say(&format!(
                "slot {}: version {}{}",
                s.name(),
                slot_version(s).as_deref().unwrap_or("unknown"),
                if notes.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", notes.join(", "))
                }
            ));
        }
        match &pending {
            Some(p) => self.say(&format!(
                "pending: version {} in slot {}",
                state.get("pending-version").unwrap_or("unknown"),
                p
            )),
            None => self.say("pending: none"),
        }
        let values: Vec<String> = details
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    k,
                    match v {
                        Json::Str(s) => s.clone(),
                        other => other.to_text(),
                    }
                )
            })
            .collect();
        self.say(&format!("{}: {}", env.kind(), values.join(" ")));
        self.say(&format!(
            "last result: {}",
            state.get("last-result").unwrap_or("none")
        ));
        for p in &problems {
            self.say(&format!("problem: {}", p));
        }
        Ok(())
    }

    /// `apply [--reboot] BUNDLE|URL`.
    pub fn apply(&self, source: &str, reboot: bool) -> Outcome {
        let _lock = self.exclusive()?;
        let started = std::time::Instant::now();
        let env = bootenv::detect(&self.paths);
        let config = self.config();
        let (trusted, warnings) = state::trusted_keys(&self.paths, &config);
        for w in warnings {
            self.say(&format!("warning: {}", w));
        }
        let booted = env.booted()?;
        if env.tentative(booted)? {
            return Err(format!(
                "refused: the running slot {} is on trial (not committed yet), and writing slot {} would overwrite the fallback; run `kubesolo-update healthcheck` to commit it first",
                booted.name(),
                booted.other().name()
            ));
        }
        let target = booted.other();
        if target == booted {
            return Err(format!(
                "refused: slot {} is the running slot",
                target.name()
            ));
        }
        let (path, downloaded) = if source.starts_with("http://") || source.starts_with("https://")
        {
            http::parse_url(source)?;
            let dir = state::state_dir(&self.paths).join("download");
            fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create `{}`: {}", dir.display(), e))?;
            let dest = dir.join("bundle.tar");
            self.say(&format!("downloading {} to {}", source, dest.display()));
            let n = http::download(source, &dest, &mut |m| self.say(m))?;
            self.say(&format!("downloaded {} bytes", n));
            (dest, true)
        } else {
            (PathBuf::from(source), false)
        };
        let result = self.apply_file(&*env, &path, &trusted, booted, target);
        if downloaded {
            let _ = fs::remove_file(&path);
        }
        result?;
        // What it cost: the time from start to the flipped boot environment, and the peak
        // memory (the bundle is streamed: it stays the same for any bundle size).
        let peak = fs::read_to_string(self.paths.path("/proc/self/status"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().to_string()))
            })
            .unwrap_or_else(|| "unknown".to_string());
        self.say(&format!(
            "applied in {:.1} s (download, verify and write), peak memory {}",
            started.elapsed().as_secs_f64(),
            peak
        ));
        if reboot {
            self.reboot()
        } else {
            self.say("reboot with `kubesolo-update reboot` to boot it");
            Ok(())
        }
    }

    fn apply_file(
        &self,
        env: &dyn BootEnv,
        path: &std::path::Path,
        trusted: &[crate::keys::PublicKey],
        booted: Slot,
        target: Slot,
    ) -> Outcome {
        let arch = state::machine(&self.paths);
        let running = state::running_version(&self.paths);
        let expect = Expect {
            arch: arch.clone(),
            track: track(env.kind(), &arch),
            boot: env.kind().to_string(),
            running_version: running.clone(),
        };
        let open = || {
            fs::File::open(path)
                .map(|f| BufReader::with_capacity(64 * 1024, f))
                .map_err(|e| format!("cannot open the bundle `{}`: {}", path.display(), e))
        };
        self.say(&format!("verifying {}", path.display()));
        let verified = bundle::verify(open()?, trusted, &expect)
            .map_err(|e| format!("refused `{}`: {}; nothing was written", path.display(), e))?;
        let version = verified.manifest.version.clone();
        self.say(&format!(
            "verified: version {} for {} ({} track), {} files, signed by `{}`",
            version,
            verified.manifest.arch,
            verified.manifest.track,
            verified.manifest.files.len(),
            verified.signer
        ));
        let mut state = State::load(&self.paths)?;
        // A try of the target already set up (applied earlier, not booted yet) is undone before
        // the slot is touched: a half-written slot is never the next boot.
        if env.active()? != booted {
            env.rollback(booted)?;
            self.say(&format!(
                "cancelled the earlier pending update in slot {}",
                target.name()
            ));
        }
        if state.get("pending-slot").is_some() {
            state.clear_pending();
        }
        state.remove(&format!("version-{}", target.name()));
        state.save(&self.paths)?;
        self.say(&format!("writing slot {}", target.name()));
        let write = || -> Outcome {
            let mounted = slot::mount(&self.paths, &env.slot_target(target))?;
            bundle::write_slot(open()?, &verified, mounted.dir())?;
            if env.kind() == "rpi" {
                slot::set_cmdline_slot(mounted.dir(), target.name())?;
            }
            mounted.finish()
        };
        if let Err(e) = write() {
            state.set(
                "last-result",
                &format!(
                    "failed {} {}: writing the slot: {}",
                    target.name(),
                    version,
                    e
                ),
            );
            let _ = state.save(&self.paths);
            return Err(format!(
                "writing slot {}: {}; the boot environment was not changed, slot {} still boots",
                target.name(),
                e,
                booted.name()
            ));
        }
        env.mark_try(target)?;
        state.set("pending-slot", target.name());
        state.set("pending-version", &version);
        state.set("previous-slot", booted.name());
        state.set("previous-version", running.as_deref().unwrap_or("unknown"));
        state.set("applied-at", &now());
        match state::boot_id(&self.paths) {
            Some(id) => state.set("applied-boot", &id),
            None => state.remove("applied-boot"),
        }
        state.set(&format!("version-{}", target.name()), &version);
        if let Some(r) = &running {
            state.set(&format!("version-{}", booted.name()), r);
        }
        state.set(
            "last-result",
            &format!("applied {} {}", target.name(), version),
        );
        state.save(&self.paths)?;
        let how = match env.kind() {
            "rpi" => format!("autoboot.txt [tryboot] boot_partition={}; the next `reboot \"0 tryboot\"` tries it once", target.partition()),
            _ => format!("grubenv active_slot={} boot_counter=3 boot_success=0", target.name()),
        };
        self.say(&format!(
            "slot {} holds version {}; {}",
            target.name(),
            version,
            how
        ));
        Ok(())
    }

    /// Writes the verdict of `healthcheck` to `/run/kubesolo-update/healthcheck.done` (for
    /// what waits on it: it exists once the check, and any commit, is over).
    pub fn mark_healthcheck_done(&self, outcome: &Outcome) {
        let path = self.paths.path("/run/kubesolo-update/healthcheck.done");
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let verdict = match outcome {
            Ok(()) => "healthy\n".to_string(),
            Err(e) => format!("unhealthy: {}\n", e),
        };
        let _ = std::fs::write(path, verdict);
    }

    /// Holds `/run/kubesolo-update/lock` for the rest of a command that reads and changes
    /// the slots or the boot environment (`apply`, `healthcheck`, `rollback`): two agents
    /// at once (the init's health check and an `apply` from KubeSolo, say) would mount the
    /// same partitions at the same places and decide on what the other is changing. The
    /// second waits, saying so. flock(2) where the kernel has it; a kernel built without
    /// file locking (`CONFIG_FILE_LOCKING`, off in tiny configurations) gets a lock file
    /// created exclusively holding the owner's pid, taken over when that process is gone.
    fn exclusive(&self) -> Result<Exclusive, String> {
        let path = self.paths.path("/run/kubesolo-update/lock");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create `{}`: {}", dir.display(), e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("cannot open the lock `{}`: {}", path.display(), e))?;
        let mut said = false;
        let mut waiting = || {
            if !said {
                said = true;
                self.say(
                    "waiting for another kubesolo-update (the health check, or an apply) to finish",
                );
            }
        };
        match crate::sys::lock_exclusive(&file, false) {
            Ok(true) => return Ok(Exclusive::Flock(file)),
            Ok(false) => {
                waiting();
                crate::sys::lock_exclusive(&file, true)
                    .map_err(|e| format!("cannot lock `{}`: {}", path.display(), e))?;
                return Ok(Exclusive::Flock(file));
            }
            Err(e) if e.raw_os_error() == Some(38) => {} // ENOSYS: no file locking
            Err(e) => return Err(format!("cannot lock `{}`: {}", path.display(), e)),
        }
        let owned = path.with_file_name("lock.pid");
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&owned)
            {
                Ok(mut f) => {
                    use std::io::Write;
                    let _ = writeln!(f, "{}", std::process::id());
                    return Ok(Exclusive::PidFile(owned));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(&owned).unwrap_or_default();
                    let alive = holder
                        .trim()
                        .parse::<u32>()
                        .map(|pid| std::path::Path::new(&format!("/proc/{}", pid)).exists())
                        // Being written: give its owner a moment.
                        .unwrap_or(true);
                    if alive {
                        waiting();
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    } else {
                        let _ = std::fs::remove_file(&owned);
                    }
                }
                Err(e) => {
                    return Err(format!(
                        "cannot create the lock `{}`: {}",
                        owned.display(),
                        e
                    ))
                }
            }
        }
    }

    /// `healthcheck`.
    pub fn healthcheck(&self) -> Outcome {
        let _lock = self.exclusive()?;
        let env = bootenv::detect(&self.paths);
        let config = self.config();
        let mut state = State::load(&self.paths)?;
        let booted = env.booted()?;
        let tentative = env.tentative(booted)?;
        let running = state::running_version(&self.paths).unwrap_or_else(|| "unknown".to_string());
        let pending = state.get("pending-slot").and_then(Slot::parse);
        let pending_version = state
            .get("pending-version")
            .unwrap_or("unknown")
            .to_string();
        let this_boot = state::boot_id(&self.paths);
        let rebooted = this_boot.is_none() || state.get("applied-boot") != this_boot.as_deref();
        if let Some(p) = pending {
            if p != booted && rebooted {
                let why = match env.kind() {
                    "rpi" => format!("the tryboot of partition {} did not commit; the firmware booted partition {}", p.partition(), booted.partition()),
                    _ => "rolled back by the boot loader after 3 boots".to_string(),
                };
                let result = format!("failed {} {}: {}", p.name(), pending_version, why);
                self.say(&format!("update {}", result));
                state.set("last-result", &result);
                state.clear_pending();
                state.save(&self.paths)?;
            } else if p != booted {
                self.say(&format!(
                    "version {} waits in slot {}: reboot with `kubesolo-update reboot` to try it",
                    pending_version,
                    p.name()
                ));
            }
        }
        let mut checks = vec![format!("process `{}`", config.health_process)];
        if let Some(port) = config.health_port {
            checks.push(format!("port 127.0.0.1:{}", port));
        }
        if let Some(s) = &config.health_socket {
            checks.push(format!("socket {}", s));
        }
        self.say(&format!(
            "checking slot {} (version {}{}): {}, up to {} s",
            booted.name(),
            running,
            if tentative { ", on trial" } else { "" },
            checks.join(", "),
            config.health_timeout
        ));
        match health::wait_healthy(&self.paths, &config, &mut |m| self.say(m)) {
            Ok(()) => {
                self.say("healthy");
                if tentative {
                    env.commit(booted)?;
                    state.set(
                        "last-result",
                        &format!("committed {} {}", booted.name(), running),
                    );
                    state.set(&format!("version-{}", booted.name()), &running);
                    state.clear_pending();
                    state.save(&self.paths)?;
                    self.say(&format!(
                        "committed slot {} (version {})",
                        booted.name(),
                        running
                    ));
                } else if pending == Some(booted) {
                    // Committed in the boot environment already (e.g. the state write was cut).
                    state.set(
                        "last-result",
                        &format!("committed {} {}", booted.name(), running),
                    );
                    state.clear_pending();
                    state.save(&self.paths)?;
                }
                Ok(())
            }
            Err(why) => {
                if tentative {
                    state.set(
                        "last-result",
                        &format!(
                            "health check failed on {} {}: {}",
                            booted.name(),
                            running,
                            why
                        ),
                    );
                    state.save(&self.paths)?;
                    self.say(&format!("health check failed on trial slot {}: {}; rebooting so the boot loader falls back", booted.name(), why));
                    self.reboot_with(None)?;
                    Err(format!(
                        "health check failed on trial slot {}: {} (reboot requested)",
                        booted.name(),
                        why
                    ))
                } else {
                    Err(format!("unhealthy: {}", why))
                }
            }
        }
    }

    /// `rollback`.
    pub fn rollback(&self) -> Outcome {
        let _lock = self.exclusive()?;
        let env = bootenv::detect(&self.paths);
        let mut state = State::load(&self.paths)?;
        let booted = env.booted()?;
        let other = booted.other();
        let pending = state.get("pending-slot").and_then(Slot::parse);
        if pending == Some(other) {
            // An update applied but not booted (or failed and not yet recorded): rolling back
            // cancels it rather than making an untried slot the default.
            env.rollback(booted)?;
            let version = state
                .get("pending-version")
                .unwrap_or("unknown")
                .to_string();
            state.clear_pending();
            state.set(
                "last-result",
                &format!(
                    "cancelled {} {}: rolled back before it booted",
                    other.name(),
                    version
                ),
            );
            state.save(&self.paths)?;
            self.say(&format!("cancelled the pending update to version {} in slot {}; the next boot stays on slot {}", version, other.name(), booted.name()));
            return Ok(());
        }
        env.rollback(other)?;
        let version = state
            .get(&format!("version-{}", other.name()))
            .unwrap_or("unknown")
            .to_string();
        state.clear_pending();
        state.set(
            "last-result",
            &format!("rolled back to {} {}", other.name(), version),
        );
        state.save(&self.paths)?;
        self.say(&format!(
            "the next boot uses slot {} (version {}); reboot with `kubesolo-update reboot`",
            other.name(),
            version
        ));
        Ok(())
    }

    /// `reboot`: a trial boot of a pending slot (Pi: `0 tryboot`), else a plain reboot.
    pub fn reboot(&self) -> Outcome {
        let env = bootenv::detect(&self.paths);
        let state = State::load(&self.paths)?;
        let booted = env.booted()?;
        let pending = state.get("pending-slot").and_then(Slot::parse);
        let arg = if pending == Some(booted.other()) {
            env.trial_reboot_arg()
        } else {
            None
        };
        match (pending, arg) {
            (Some(p), Some(a)) if p != booted => self.say(&format!(
                "rebooting to try slot {} (reboot \"{}\")",
                p.name(),
                a
            )),
            (Some(p), None) if p != booted => {
                self.say(&format!("rebooting to try slot {}", p.name()))
            }
            _ => self.say("rebooting"),
        }
        self.reboot_with(arg)
    }

    fn reboot_with(&self, arg: Option<&str>) -> Outcome {
        if self.paths.test_mode() {
            let path = self.paths.path("/reboot-requested");
            return fs::write(&path, arg.unwrap_or(""))
                .map_err(|e| format!("cannot write `{}`: {}", path.display(), e));
        }
        let e = sys::reboot_now(arg);
        Err(format!(
            "reboot(2) failed: {} (it needs root; try `reboot -f`)",
            e
        ))
    }
}
