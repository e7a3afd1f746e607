//! GRUB's environment block (`grubenv`, what `grub-editenv` and `save_env` write): a
//! header line, `name=value` lines, and `#` padding to a fixed size (1024 bytes), so that
//! GRUB can rewrite it in place. Pure: bytes in, bytes out.

/// The first line of every environment block.
pub const HEADER: &str = "# GRUB Environment Block\n";

/// Why a block cannot be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrubenvError {
    /// It does not start with [`HEADER`].
    #[error("not a GRUB environment block (it does not start with `# GRUB Environment Block`)")]
    NotABlock,
    /// The variables no longer fit in the block's size.
    #[error("the variables take {needed} bytes, more than the block's {size}")]
    TooLong { needed: usize, size: usize },
}

/// The variables of a block, in order (values as written: GRUB's `\`-escapes kept).
pub fn parse(block: &[u8]) -> Result<Vec<(String, String)>, GrubenvError> {
    let text = String::from_utf8_lossy(block);
    let body = text.strip_prefix(HEADER).ok_or(GrubenvError::NotABlock)?;
    Ok(body
        .split('\n')
        .take_while(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// `block` with each of `set` given its value (replaced in place, or added at the end),
/// padded with `#` to the block's own size, as `grub-editenv set` writes it.
pub fn with(block: &[u8], set: &[(&str, &str)]) -> Result<Vec<u8>, GrubenvError> {
    let mut vars = parse(block)?;
    for (name, value) in set {
        match vars.iter_mut().find(|(k, _)| k == name) {
            Some(v) => v.1 = value.to_string(),
            None => vars.push((name.to_string(), value.to_string())),
        }
    }
    let mut out = HEADER.to_string();
    for (k, v) in &vars {
        out.push_str(&format!("{k}={v}\n"));
    }
    let size = block.len();
    if out.len() > size {
        return Err(GrubenvError::TooLong {
            needed: out.len(),
            size,
        });
    }
    let mut bytes = out.into_bytes();
    bytes.resize(size, b'#');
    Ok(bytes)
}

/// The value of `name`, if the block sets it.
pub fn get(block: &[u8], name: &str) -> Option<String> {
    parse(block)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `grub-editenv grubenv create; grub-editenv grubenv set active_slot=A
    /// boot_counter=3 boot_success=1` writes (the images' initial block).
    fn initial() -> Vec<u8> {
        let mut b = format!("{HEADER}active_slot=A\nboot_counter=3\nboot_success=1\n").into_bytes();
        b.resize(1024, b'#');
        b
    }

    #[test]
    fn a_set_replaces_values_in_place_and_keeps_the_size() {
        let out = with(&initial(), &[("active_slot", "B"), ("boot_success", "1")]).unwrap();
        assert_eq!(out.len(), 1024);
        let mut want =
            format!("{HEADER}active_slot=B\nboot_counter=3\nboot_success=1\n").into_bytes();
        want.resize(1024, b'#');
        assert_eq!(out, want);
        assert_eq!(get(&out, "active_slot").as_deref(), Some("B"));
        assert_eq!(get(&out, "missing"), None);
    }

    #[test]
    fn a_new_variable_is_added_at_the_end() {
        let out = with(&initial(), &[("extra", "x")]).unwrap();
        assert_eq!(
            parse(&out).unwrap(),
            [
                ("active_slot".into(), "A".into()),
                ("boot_counter".into(), "3".into()),
                ("boot_success".into(), "1".into()),
                ("extra".into(), "x".into())
            ]
        );
    }

    #[test]
    fn a_block_that_is_not_one_or_overflows_is_refused() {
        assert_eq!(parse(b"active_slot=A\n"), Err(GrubenvError::NotABlock));
        let long = "x".repeat(2000);
        assert!(matches!(
            with(&initial(), &[("k", &long)]),
            Err(GrubenvError::TooLong { size: 1024, .. })
        ));
    }
}
