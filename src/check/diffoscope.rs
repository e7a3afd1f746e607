//! `--diffoscope`: a differing file pair handed to `diffoscope --text - A B`, bounded in
//! time (killed, with its process group, after [`Diffoscope::timeout`]) and in output
//! (truncated to [`Diffoscope::limit`] bytes). Runs `diffoscope`; members of images and
//! archives are written to a temporary directory first.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `diffoscope` is not on `PATH` (the fix: `apt-get install diffoscope-minimal`).
#[derive(Debug, thiserror::Error)]
#[error("`--diffoscope` needs `diffoscope` on PATH, and there is none")]
pub struct NotFound;

/// How `diffoscope` is run.
#[derive(Debug, Clone)]
pub struct Diffoscope {
    /// The program.
    pub program: PathBuf,
    /// How long one comparison may take before it is killed.
    pub timeout: Duration,
    /// How many bytes of its report are kept.
    pub limit: usize,
}

impl Diffoscope {
    /// `diffoscope` from `PATH`, 60 s and 16 KiB per pair.
    pub fn find() -> Result<Diffoscope, NotFound> {
        let path = std::env::var_os("PATH").ok_or(NotFound)?;
        let program = std::env::split_paths(&path)
            .map(|d| d.join("diffoscope"))
            .find(|p| p.is_file())
            .ok_or(NotFound)?;
        Ok(Diffoscope {
            program,
            timeout: Duration::from_secs(60),
            limit: 16 << 10,
        })
    }

    /// What diffoscope says of files `a` and `b` (never an error: a failure is told in
    /// the text).
    pub fn compare_files(&self, a: &Path, b: &Path) -> String {
        match self.run(a, b) {
            Ok(text) => text,
            Err(e) => format!("diffoscope could not be run: {e}"),
        }
    }

    /// What diffoscope says of two members' bytes, written to `a/NAME` and `b/NAME` in a
    /// temporary directory (`name`: the member's file name, which diffoscope reads too).
    pub fn compare_bytes(&self, name: &str, a: &[u8], b: &[u8]) -> String {
        let name = Path::new(name)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "member".into());
        let written = (|| -> std::io::Result<(tempfile::TempDir, PathBuf, PathBuf)> {
            let dir = tempfile::tempdir()?;
            let (pa, pb) = (dir.path().join("a"), dir.path().join("b"));
            std::fs::create_dir(&pa)?;
            std::fs::create_dir(&pb)?;
            let (fa, fb) = (pa.join(&name), pb.join(&name));
            std::fs::write(&fa, a)?;
            std::fs::write(&fb, b)?;
            Ok((dir, fa, fb))
        })();
        match written {
            Ok((_dir, fa, fb)) => self.compare_files(&fa, &fb),
            Err(e) => format!("diffoscope could not be run: cannot write the two members: {e}"),
        }
    }

    fn run(&self, a: &Path, b: &Path) -> std::io::Result<String> {
        // The report goes to a file, not a pipe: a pipe would fill while diffoscope runs.
        let mut report = tempfile::tempfile()?;
        let mut errors = tempfile::tempfile()?;
        let mut child = Command::new(&self.program)
            .args(["--text", "-"])
            .arg(a)
            .arg(b)
            .stdin(Stdio::null())
            .stdout(report.try_clone()?)
            .stderr(errors.try_clone()?)
            .process_group(0)
            .spawn()?;
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if started.elapsed() >= self.timeout {
                // Its process group: diffoscope runs other tools.
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let read = |f: &mut std::fs::File, limit: usize| -> std::io::Result<(String, bool)> {
            use std::io::Seek;
            f.seek(std::io::SeekFrom::Start(0))?;
            let mut bytes = Vec::new();
            f.take(limit as u64 + 1).read_to_end(&mut bytes)?;
            let cut = bytes.len() > limit;
            bytes.truncate(limit);
            Ok((String::from_utf8_lossy(&bytes).into_owned(), cut))
        };
        let (mut text, cut) = read(&mut report, self.limit)?;
        if cut {
            text.push_str(&format!("\n[… truncated to {} KiB]", self.limit >> 10));
        }
        match status {
            None => text.push_str(&format!(
                "\n[diffoscope did not finish in {:?} and was killed]",
                self.timeout
            )),
            // 0: the same, 1: differences; anything else is a failure.
            Some(s) if s.code().is_some_and(|c| c <= 1) => {}
            Some(s) => {
                let (err, _) = read(&mut errors, 2048)?;
                text.push_str(&format!("\n[diffoscope failed ({s}): {}]", err.trim()));
            }
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A comparison that outlives its bound is killed and says so, in about the bound.
    #[test]
    fn a_slow_diffoscope_is_killed_at_its_bound() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = tmp.path().join("diffoscope");
        std::fs::write(&fake, "#!/bin/sh\necho started\nsleep 30\necho never\n").unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let d = Diffoscope {
            program: fake,
            timeout: Duration::from_millis(500),
            limit: 1024,
        };
        let t = Instant::now();
        let text = d.compare_bytes("/etc/foo", b"a", b"b");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(text.starts_with("started\n"), "{text}");
        assert!(
            text.contains("did not finish in 500ms and was killed"),
            "{text}"
        );
        assert!(!text.contains("never"), "{text}");
    }
}
