//! ELF files compared section by section: two differing ELF files (32- or 64-bit, either
//! byte order) are told apart by the first sections whose bytes differ, named
//! (`/bin/foo › ELF section .rodata`), the GNU build-id told apart from the rest (it is a
//! hash of them). Pure: works on two byte slices.

use super::explain::{Cause, Difference};
use super::image::content_difference;

/// At most this many differing sections are named per file (besides the build-id).
const MAX_SECTIONS: usize = 3;
/// `sh_type` of a section that takes no room in the file (`.bss`).
const SHT_NOBITS: u64 = 8;
/// The section of the GNU build-id note.
pub const BUILD_ID: &str = ".note.gnu.build-id";

/// One section: its name, type and where its bytes are in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Its name, from the section-name string table.
    pub name: String,
    /// `sh_type`.
    pub kind: u64,
    /// `sh_offset`.
    pub offset: u64,
    /// `sh_size`.
    pub size: u64,
}

/// Whether `bytes` start like an ELF file.
pub fn is_elf(bytes: &[u8]) -> bool {
    bytes.len() >= 52 && bytes.starts_with(b"\x7fELF")
}

/// The sections of an ELF file, in section-table order; `None` if it is not one this
/// reads (or its section table is out of the file).
pub fn sections(bytes: &[u8]) -> Option<Vec<Section>> {
    if !is_elf(bytes) {
        return None;
    }
    let wide = match bytes[4] {
        1 => false,
        2 => true,
        _ => return None,
    };
    let big = match bytes[5] {
        1 => false,
        2 => true,
        _ => return None,
    };
    let int = |at: usize, n: usize| -> Option<u64> {
        let b = bytes.get(at..at.checked_add(n)?)?;
        Some(if big {
            b.iter().fold(0u64, |v, &x| v << 8 | u64::from(x))
        } else {
            b.iter().rev().fold(0u64, |v, &x| v << 8 | u64::from(x))
        })
    };
    let word = if wide { 8 } else { 4 };
    let (shoff, shentsize, shnum, shstrndx) = if wide {
        (int(0x28, 8)?, int(0x3A, 2)?, int(0x3C, 2)?, int(0x3E, 2)?)
    } else {
        (int(0x20, 4)?, int(0x2E, 2)?, int(0x30, 2)?, int(0x32, 2)?)
    };
    if shoff == 0 || shnum == 0 || shentsize < if wide { 64 } else { 40 } {
        return None;
    }
    let header = |i: u64| -> Option<(u64, u64, u64, u64)> {
        let at = usize::try_from(shoff.checked_add(i.checked_mul(shentsize)?)?).ok()?;
        Some((
            int(at, 4)?,
            int(at + 4, 4)?,
            int(at + 8 + 2 * word, word)?,
            int(at + 8 + 3 * word, word)?,
        ))
    };
    let (_, _, str_offset, str_size) = header(shstrndx)?;
    let strings = bytes.get(
        usize::try_from(str_offset).ok()?
            ..usize::try_from(str_offset.checked_add(str_size)?).ok()?,
    )?;
    (0..shnum)
        .map(|i| {
            let (name, kind, offset, size) = header(i)?;
            let name = strings.get(usize::try_from(name).ok()?..)?;
            let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
            Some(Section {
                name: String::from_utf8_lossy(&name[..end]).into_owned(),
                kind,
                offset,
                size,
            })
        })
        .collect()
}

/// A section's bytes (none for `SHT_NOBITS`, or out of the file).
fn bytes_of<'b>(bytes: &'b [u8], s: &Section) -> &'b [u8] {
    if s.kind == SHT_NOBITS {
        return &[];
    }
    let start = usize::try_from(s.offset).unwrap_or(usize::MAX);
    let end = start.saturating_add(usize::try_from(s.size).unwrap_or(usize::MAX));
    bytes.get(start..end).unwrap_or_default()
}

/// The differing sections of two ELF files at `path`: the first [`MAX_SECTIONS`] whose
/// bytes (or presence) differ, in the first file's order, located in the section and
/// classified; the build-id note last, as [`Cause::BuildId`]. `None` when either is not
/// ELF, or no section differs (the headers or the gaps between sections do).
pub fn diff_elf(path: &str, a: &[u8], b: &[u8]) -> Option<Vec<Difference>> {
    let (sa, sb) = (sections(a)?, sections(b)?);
    // Sections by name; a repeated name by its occurrence.
    let keyed = |s: &[Section]| -> Vec<(String, usize, Section)> {
        let mut seen = std::collections::BTreeMap::<String, usize>::new();
        s.iter()
            .filter(|x| !x.name.is_empty())
            .map(|x| {
                let n = seen.entry(x.name.clone()).or_default();
                *n += 1;
                (x.name.clone(), *n, x.clone())
            })
            .collect()
    };
    let (ka, kb) = (keyed(&sa), keyed(&sb));
    let mut out = Vec::new();
    let mut build_id = None;
    let here = |name: &str| format!("{path} › ELF section {name}");
    for (name, n, x) in &ka {
        let Some((_, _, y)) = kb.iter().find(|(m, k, _)| m == name && k == n) else {
            out.push(Difference {
                path: here(name),
                what: "only in the first".into(),
                sizes: None,
                offset: None,
                cause: Cause::Other,
                excerpts: None,
                diffoscope: None,
            });
            continue;
        };
        let (xa, xb) = (bytes_of(a, x), bytes_of(b, y));
        if xa == xb && x.size == y.size {
            continue;
        }
        if name == BUILD_ID {
            let hex = |s: &[u8]| {
                // The note's descriptor (the id) follows its 12-byte header and "GNU\0".
                s.get(16..)
                    .unwrap_or(s)
                    .iter()
                    .map(|c| format!("{c:02x}"))
                    .collect::<String>()
            };
            build_id = Some(Difference {
                path: here(name),
                what: "build-id (a hash of the linked file: it follows from the other \
                       differences)"
                    .into(),
                sizes: Some((x.size, y.size)),
                offset: None,
                cause: Cause::BuildId,
                excerpts: Some((hex(xa), hex(xb))),
                diffoscope: None,
            });
            continue;
        }
        let mut d = content_difference(here(name), xa, xb);
        d.sizes = Some((x.size, y.size));
        out.push(d);
    }
    for (name, n, _) in &kb {
        if !ka.iter().any(|(m, k, _)| m == name && k == n) {
            out.push(Difference {
                path: here(name),
                what: "only in the second".into(),
                sizes: None,
                offset: None,
                cause: Cause::Other,
                excerpts: None,
                diffoscope: None,
            });
        }
    }
    out.truncate(MAX_SECTIONS);
    out.extend(build_id);
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
/// An ELF file (`wide`: 64-bit; `big`: big-endian) holding `sections` (name, type,
/// bytes), then `.shstrtab`, then the section table.
pub(crate) fn test_elf(wide: bool, big: bool, sections: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let put = |out: &mut Vec<u8>, v: u64, n: usize| {
        let b = v.to_le_bytes();
        if big {
            out.extend(b[..n].iter().rev());
        } else {
            out.extend_from_slice(&b[..n]);
        }
    };
    let word = if wide { 8 } else { 4 };
    let ehsize = if wide { 64 } else { 52 };
    let mut names = vec![0u8];
    let mut table = Vec::new(); // (name offset, type, offset, size)
    let mut data = Vec::new();
    for (name, kind, bytes) in sections.iter().chain([&(".shstrtab", 3, &[][..])]) {
        table.push((names.len() as u64, *kind, 0u64, 0u64));
        names.extend_from_slice(name.as_bytes());
        names.push(0);
        let at = ehsize + data.len() as u64;
        let bytes: &[u8] = if *name == ".shstrtab" { &names } else { bytes };
        let last = table.last_mut().unwrap();
        last.2 = at;
        last.3 = bytes.len() as u64;
        if *kind != 8 {
            data.extend_from_slice(bytes);
        }
    }
    let shoff = ehsize + data.len() as u64;
    let mut out = vec![
        0x7f,
        b'E',
        b'L',
        b'F',
        1 + u8::from(wide),
        1 + u8::from(big),
        1,
    ];
    out.resize(16, 0);
    put(&mut out, 2, 2); // e_type
    put(&mut out, 62, 2); // e_machine
    put(&mut out, 1, 4); // e_version
    put(&mut out, 0, word); // e_entry
    put(&mut out, 0, word); // e_phoff
    put(&mut out, shoff, word);
    put(&mut out, 0, 4); // e_flags
    let shentsize = if wide { 64 } else { 40 };
    for half in [
        ehsize,
        0,
        0,
        shentsize,
        table.len() as u64 + 1,
        table.len() as u64,
    ] {
        put(&mut out, half, 2);
    }
    out.extend_from_slice(&data);
    out.extend(std::iter::repeat_n(0, shentsize as usize)); // the null section
    for (name, kind, offset, size) in table {
        put(&mut out, name, 4);
        put(&mut out, u64::from(kind), 4);
        put(&mut out, 0, word); // sh_flags
        put(&mut out, 0, word); // sh_addr
        put(&mut out, offset, word);
        put(&mut out, size, word);
        put(&mut out, 0, 4); // sh_link
        put(&mut out, 0, 4); // sh_info
        put(&mut out, 1, word); // sh_addralign
        put(&mut out, 0, word); // sh_entsize
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(id: u8) -> Vec<u8> {
        let mut n = vec![4, 0, 0, 0, 4, 0, 0, 0, 3, 0, 0, 0];
        n.extend_from_slice(b"GNU\0");
        n.extend_from_slice(&[id; 4]);
        n
    }

    /// In 32- and 64-bit files of either byte order, a differing `.rodata` is named with
    /// the byte in it and the differing build-id is told apart as such; identical
    /// sections are not named.
    #[test]
    fn differing_sections_are_named_and_the_build_id_told_apart() {
        for wide in [false, true] {
            for big in [false, true] {
                let (na, nb) = (note(1), note(2));
                let a = test_elf(
                    wide,
                    big,
                    &[
                        (BUILD_ID, 7, &na),
                        (".text", 1, &[0x90; 32]),
                        (".rodata", 1, b"built by ksbuild v1\0"),
                        (".bss", 8, &[0; 64]),
                    ],
                );
                let b = test_elf(
                    wide,
                    big,
                    &[
                        (BUILD_ID, 7, &nb),
                        (".text", 1, &[0x90; 32]),
                        (".rodata", 1, b"built by ksbuild v2\0"),
                        (".bss", 8, &[0; 64]),
                    ],
                );
                let names: Vec<String> =
                    sections(&a).unwrap().into_iter().map(|s| s.name).collect();
                assert_eq!(
                    names,
                    ["", BUILD_ID, ".text", ".rodata", ".bss", ".shstrtab"]
                );
                let d = diff_elf("/bin/foo", &a, &b).unwrap();
                let got: Vec<(&str, Option<u64>, Cause)> = d
                    .iter()
                    .map(|d| (d.path.as_str(), d.offset, d.cause))
                    .collect();
                assert_eq!(
                    got,
                    [
                        ("/bin/foo › ELF section .rodata", Some(18), Cause::Other),
                        (
                            "/bin/foo › ELF section .note.gnu.build-id",
                            None,
                            Cause::BuildId
                        ),
                    ],
                    "wide {wide} big {big}"
                );
                assert!(d[1].what.contains("build-id"));
                assert_eq!(
                    d[0].excerpts,
                    Some((
                        "built by ksbuild v1\\x00".into(),
                        "built by ksbuild v2\\x00".into()
                    ))
                );
                assert_eq!(d[1].excerpts, Some(("01010101".into(), "02020202".into())));
                assert!(diff_elf("/x", b"not elf", &b).is_none());
            }
        }
    }
}
