//! The Raspberry Pi firmware's `autoboot.txt` (on the control partition): read and edit
//! `boot_partition` in the `[all]` and `[tryboot]` sections, keeping every other line. Pure:
//! the atomic file replacement is in `bootenv.rs`.

/// The firmware reads at most this many bytes of autoboot.txt.
pub const MAX_SIZE: usize = 512;

/// An autoboot.txt as lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoBoot {
    lines: Vec<String>,
}

impl AutoBoot {
    /// Parses the file's text (any line ending; `\r` is dropped).
    pub fn parse(text: &str) -> Result<AutoBoot, String> {
        if text.len() > MAX_SIZE {
            return Err(format!(
                "is {} bytes; the firmware reads only the first {}",
                text.len(),
                MAX_SIZE
            ));
        }
        let lines = text
            .lines()
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect();
        Ok(AutoBoot { lines })
    }

    /// The text to write (`\n` line ends), refused over [`MAX_SIZE`] bytes.
    pub fn to_text(&self) -> Result<String, String> {
        let mut text = self.lines.join("\n");
        text.push('\n');
        if text.len() > MAX_SIZE {
            return Err(format!(
                "would be {} bytes; the firmware reads only {}",
                text.len(),
                MAX_SIZE
            ));
        }
        Ok(text)
    }

    /// The section each line is in (lines before any `[...]` are in `all`).
    fn sections(&self) -> Vec<String> {
        let mut current = "all".to_string();
        self.lines
            .iter()
            .map(|line| {
                let t = line.trim();
                if t.starts_with('[') && t.ends_with(']') {
                    current = t[1..t.len() - 1].trim().to_string();
                }
                current.clone()
            })
            .collect()
    }

    /// The value of `key` in `section` (the last one wins, as in config.txt).
    pub fn get(&self, section: &str, key: &str) -> Option<String> {
        let sections = self.sections();
        let mut found = None;
        for (line, s) in self.lines.iter().zip(sections) {
            if s != section {
                continue;
            }
            if let Some((k, v)) = line.split_once('=') {
                if k.trim() == key {
                    found = Some(v.trim().to_string());
                }
            }
        }
        found
    }

    /// `boot_partition` of `section` as a number.
    pub fn boot_partition(&self, section: &str) -> Option<u32> {
        self.get(section, "boot_partition")
            .and_then(|v| v.parse().ok())
    }

    /// Sets `key=value` in `section`: every existing line for it is rewritten; otherwise a line
    /// is added at the end of the section, or the section is added at the end of the file.
    pub fn set(&mut self, section: &str, key: &str, value: &str) {
        let sections = self.sections();
        let mut replaced = false;
        let mut last_in_section = None;
        for (i, s) in sections.iter().enumerate() {
            if s != section {
                continue;
            }
            last_in_section = Some(i);
            let is_key = match self.lines[i].split_once('=') {
                Some((k, _)) => k.trim() == key,
                None => false,
            };
            if is_key {
                self.lines[i] = format!("{}={}", key, value);
                replaced = true;
            }
        }
        if replaced {
            return;
        }
        match last_in_section {
            Some(i) => self.lines.insert(i + 1, format!("{}={}", key, value)),
            None => {
                self.lines.push(format!("[{}]", section));
                self.lines.push(format!("{}={}", key, value));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGE: &str = "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n";

    #[test]
    fn reads_and_edits_the_image_file() {
        let mut a = AutoBoot::parse(IMAGE).unwrap();
        assert_eq!(a.to_text().unwrap(), IMAGE);
        assert_eq!(a.boot_partition("all"), Some(2));
        assert_eq!(a.boot_partition("tryboot"), Some(3));
        assert_eq!(a.get("all", "tryboot_a_b").as_deref(), Some("1"));
        a.set("all", "boot_partition", "3");
        a.set("tryboot", "boot_partition", "2");
        assert_eq!(
            a.to_text().unwrap(),
            "[all]\ntryboot_a_b=1\nboot_partition=3\n[tryboot]\nboot_partition=2\n"
        );
    }

    #[test]
    fn missing_keys_and_sections_are_added() {
        let mut a = AutoBoot::parse("tryboot_a_b=1\r\n").unwrap();
        assert_eq!(a.boot_partition("all"), None);
        a.set("all", "boot_partition", "2");
        a.set("tryboot", "boot_partition", "3");
        assert_eq!(
            a.to_text().unwrap(),
            "tryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"
        );
    }

    #[test]
    fn the_512_byte_limit_holds() {
        assert!(AutoBoot::parse(&"#".repeat(513)).is_err());
        let mut a = AutoBoot::parse(&format!("{}\n", "#".repeat(490))).unwrap();
        a.set("tryboot", "boot_partition", "3");
        assert!(a.to_text().is_err());
    }
}
