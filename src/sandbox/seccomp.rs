//! Nix's seccomp filter, as a classic BPF program built here (no libseccomp): builders may
//! not set the setuid or setgid bit (`chmod`, `fchmod`, `fchmodat`, `fchmodat2` fail with
//! `EPERM`) nor extended attributes (`setxattr` and friends fail with `ENOTSUP`, since NAR
//! cannot represent them), and system calls of an unknown architecture kill the process,
//! as libseccomp's default does for Nix. Pure: builds the instructions; `sys.rs` installs
//! them. See [`seccomp(2)`](https://man7.org/linux/man-pages/man2/seccomp.2.html).

/// One classic BPF instruction, laid out as the kernel's `struct sock_filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct Instruction {
    /// Opcode.
    pub code: u16,
    /// Jump offset if true.
    pub jt: u8,
    /// Jump offset if false.
    pub jf: u8,
    /// Operand.
    pub k: u32,
}

// Opcodes (linux/bpf_common.h).
const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const ALU_AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K

// Offsets in `struct seccomp_data`: nr, arch, instruction_pointer, args[6] (little endian:
// the low 32 bits of args[i] are at 16 + 8 i).
const NR: u32 = 0;
const ARCH: u32 = 4;
fn arg_low(i: u32) -> u32 {
    16 + 8 * i
}

/// `SECCOMP_RET_ALLOW`.
pub(crate) const RET_ALLOW: u32 = 0x7fff_0000;
/// `SECCOMP_RET_KILL_PROCESS`.
pub(crate) const RET_KILL_PROCESS: u32 = 0x8000_0000;
/// `SECCOMP_RET_ERRNO | errno`.
pub(crate) const fn ret_errno(errno: i32) -> u32 {
    0x0005_0000 | (errno as u32 & 0xffff)
}

const EPERM: i32 = 1;
const ENOTSUP: i32 = 95;
const S_ISUID_OR_ISGID: u32 = 0o6000;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// `AUDIT_ARCH_X86_64`.
pub(crate) const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// `AUDIT_ARCH_I386`.
pub(crate) const AUDIT_ARCH_I386: u32 = 0x4000_0003;
/// `AUDIT_ARCH_AARCH64`.
pub(crate) const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
/// `AUDIT_ARCH_ARM`.
pub(crate) const AUDIT_ARCH_ARM: u32 = 0x4000_0028;

/// What the filter does with one system call.
#[derive(Debug, Clone, Copy)]
enum Rule {
    /// `EPERM` if argument `n` (a mode) has the setuid or setgid bit.
    NoSetId(u32),
    /// Always `ENOTSUP`.
    NotSupported,
}

/// The system calls of one architecture's table that the filter looks at.
struct Table {
    arch: u32,
    /// Bits to clear from the syscall number first (x32's marker on x86_64).
    fold: u32,
    rules: &'static [(u32, Rule)],
}

use Rule::{NoSetId, NotSupported};

// Numbers from the kernel's syscall tables (arch/x86/entry/syscalls/syscall_{64,32}.tbl,
// include/uapi/asm-generic/unistd.h, arch/arm/tools/syscall.tbl). `fchmodat2` (452) and
// `setxattrat` (463) are newer than Nix 2.8 but would otherwise bypass its rules.
const X86_64: Table = Table {
    arch: AUDIT_ARCH_X86_64,
    fold: X32_SYSCALL_BIT,
    rules: &[
        (90, NoSetId(1)),    // chmod
        (91, NoSetId(1)),    // fchmod
        (268, NoSetId(2)),   // fchmodat
        (452, NoSetId(2)),   // fchmodat2
        (188, NotSupported), // setxattr
        (189, NotSupported), // lsetxattr
        (190, NotSupported), // fsetxattr
        (463, NotSupported), // setxattrat
    ],
};
const I386: Table = Table {
    arch: AUDIT_ARCH_I386,
    fold: 0,
    rules: &[
        (15, NoSetId(1)),
        (94, NoSetId(1)),
        (306, NoSetId(2)),
        (452, NoSetId(2)),
        (226, NotSupported),
        (227, NotSupported),
        (228, NotSupported),
        (463, NotSupported),
    ],
};
const AARCH64: Table = Table {
    arch: AUDIT_ARCH_AARCH64,
    fold: 0,
    rules: &[
        (52, NoSetId(1)), // fchmod (no chmod on the generic table)
        (53, NoSetId(2)), // fchmodat
        (452, NoSetId(2)),
        (5, NotSupported),
        (6, NotSupported),
        (7, NotSupported),
        (463, NotSupported),
    ],
};
const ARM: Table = Table {
    arch: AUDIT_ARCH_ARM,
    fold: 0,
    rules: &[
        (15, NoSetId(1)),
        (94, NoSetId(1)),
        (333, NoSetId(2)),
        (452, NoSetId(2)),
        (226, NotSupported),
        (227, NotSupported),
        (228, NotSupported),
        (463, NotSupported),
    ],
};

/// The tables for the machine ksbuild runs on: the native one and the compat one Nix also
/// admits (i386 on x86_64, 32-bit ARM on aarch64).
fn tables() -> &'static [Table] {
    if cfg!(target_arch = "x86_64") {
        &[X86_64, I386]
    } else if cfg!(target_arch = "aarch64") {
        &[AARCH64, ARM]
    } else {
        &[]
    }
}

/// Whether this architecture has a filter; elsewhere the step is refused (fail closed).
pub(crate) fn supported() -> bool {
    !tables().is_empty()
}

fn ins(code: u16, k: u32, jt: u8, jf: u8) -> Instruction {
    Instruction { code, jt, jf, k }
}

/// Code for one table, entered with nothing loaded: `ld nr` (`and ~fold`), one `jeq` per
/// rule to its action block, `ret ALLOW`, then the action blocks — `NoSetId(a)`: `ld
/// args[a]`, `jset 06000`, `ret EPERM`, `ret ALLOW`; `NotSupported`: `ret ENOTSUP`.
fn table_code(t: &Table) -> Vec<Instruction> {
    let block_len = |rule: &Rule| match rule {
        NoSetId(_) => 4,
        NotSupported => 1,
    };
    let mut out = vec![ins(LD_W_ABS, NR, 0, 0)];
    if t.fold != 0 {
        out.push(ins(ALU_AND_K, !t.fold, 0, 0));
    }
    let n = t.rules.len();
    let mut blocks_before = 0;
    for (i, (nr, rule)) in t.rules.iter().enumerate() {
        // Skip the remaining jeqs, the `ret ALLOW`, and the blocks before this one's.
        let offset = (n - 1 - i) + 1 + blocks_before;
        out.push(ins(JEQ_K, *nr, jump(offset), 0));
        blocks_before += block_len(rule);
    }
    out.push(ins(RET_K, RET_ALLOW, 0, 0));
    for (_, rule) in t.rules {
        match *rule {
            NoSetId(arg) => {
                out.push(ins(LD_W_ABS, arg_low(arg), 0, 0));
                out.push(ins(JSET_K, S_ISUID_OR_ISGID, 0, 1));
                out.push(ins(RET_K, ret_errno(EPERM), 0, 0));
                out.push(ins(RET_K, RET_ALLOW, 0, 0));
            }
            NotSupported => out.push(ins(RET_K, ret_errno(ENOTSUP), 0, 0)),
        }
    }
    out
}

/// A forward jump offset; the programs here are a few dozen instructions long, far below
/// the 255 a classic BPF jump can reach (checked by the tests).
fn jump(offset: usize) -> u8 {
    u8::try_from(offset).unwrap_or(u8::MAX)
}

/// The whole filter for this machine.
pub(crate) fn program() -> Vec<Instruction> {
    let tables = tables();
    let codes: Vec<Vec<Instruction>> = tables.iter().map(table_code).collect();
    // ld arch; one jeq per table to its code; ret KILL for any other arch; the codes.
    let mut out = vec![ins(LD_W_ABS, ARCH, 0, 0)];
    let n = tables.len();
    let mut skip = 0usize;
    for (i, t) in tables.iter().enumerate() {
        let offset = (n - 1 - i) + 1 + skip;
        out.push(ins(JEQ_K, t.arch, jump(offset), 0));
        skip += codes[i].len();
    }
    out.push(ins(RET_K, RET_KILL_PROCESS, 0, 0));
    for c in codes {
        out.extend(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic-BPF interpreter for the opcodes used here.
    fn run(code: &[Instruction], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
        let mut data = Vec::new();
        data.extend(nr.to_le_bytes());
        data.extend(arch.to_le_bytes());
        data.extend(0u64.to_le_bytes());
        for a in args {
            data.extend(a.to_le_bytes());
        }
        let word = |off: u32| {
            let o = off as usize;
            u32::from_le_bytes(data[o..o + 4].try_into().unwrap())
        };
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = code[pc];
            pc += 1;
            match i.code {
                LD_W_ABS => acc = word(i.k),
                ALU_AND_K => acc &= i.k,
                JEQ_K => pc += usize::from(if acc == i.k { i.jt } else { i.jf }),
                JSET_K => pc += usize::from(if acc & i.k != 0 { i.jt } else { i.jf }),
                RET_K => return i.k,
                other => panic!("opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn the_filter_does_what_nix_s_does() {
        let code = program();
        if !supported() {
            return;
        }
        let (native, compat) = (tables()[0].arch, tables()[1].arch);
        let fchmodat = tables()[0]
            .rules
            .iter()
            .find(|(nr, r)| matches!(r, NoSetId(2)) && *nr != 452)
            .unwrap()
            .0;
        let mode = |m: u64| [u64::from(u32::MAX), 0, m, 0, 0, 0];
        assert_eq!(run(&code, fchmodat, native, mode(0o755)), RET_ALLOW);
        assert_eq!(run(&code, fchmodat, native, mode(0o4755)), ret_errno(EPERM));
        assert_eq!(run(&code, fchmodat, native, mode(0o2755)), ret_errno(EPERM));
        assert_eq!(run(&code, 452, native, mode(0o6000)), ret_errno(EPERM));
        assert_eq!(run(&code, 452, native, mode(0o1777)), RET_ALLOW);
        let fchmod = tables()[0]
            .rules
            .iter()
            .find(|(_, r)| matches!(r, NoSetId(1)))
            .unwrap()
            .0;
        assert_eq!(
            run(&code, fchmod, native, [3, 0o4555, 0, 0, 0, 0]),
            ret_errno(EPERM)
        );
        assert_eq!(
            run(&code, fchmod, native, [3, 0o555, 0, 0, 0, 0]),
            RET_ALLOW
        );
        let setxattr = tables()[0]
            .rules
            .iter()
            .find(|(_, r)| matches!(r, NotSupported))
            .unwrap()
            .0;
        assert_eq!(run(&code, setxattr, native, [0; 6]), ret_errno(ENOTSUP));
        // Unrelated calls (read = 0 on x86_64, 63 on aarch64) pass; so does the compat ABI's
        // harmless chmod, and its setuid chmod does not.
        assert_eq!(run(&code, 0, native, [0; 6]), RET_ALLOW);
        assert_eq!(run(&code, 63, native, [0; 6]), RET_ALLOW);
        let compat_chmod = tables()[1].rules[0];
        assert_eq!(
            run(&code, compat_chmod.0, compat, [0, 0o755, 0, 0, 0, 0]),
            RET_ALLOW
        );
        assert_eq!(
            run(&code, compat_chmod.0, compat, [0, 0o4755, 0, 0, 0, 0]),
            ret_errno(EPERM)
        );
        // Any other architecture is killed.
        assert_eq!(run(&code, 90, 0x1234, [0; 6]), RET_KILL_PROCESS);
        if native == AUDIT_ARCH_X86_64 {
            // x32's chmod is x86_64's with the x32 bit.
            assert_eq!(
                run(&code, 90 | X32_SYSCALL_BIT, native, [0, 0o4755, 0, 0, 0, 0]),
                ret_errno(EPERM)
            );
        }
    }

    #[test]
    fn jumps_fit() {
        assert!(program().len() < 200);
    }

    #[test]
    fn every_table_works_whatever_the_host() {
        for t in [X86_64, I386, AARCH64, ARM] {
            let code = table_code(&t);
            let mut with_arch = vec![ins(LD_W_ABS, ARCH, 0, 0)];
            with_arch.extend(code);
            for (nr, rule) in t.rules {
                let (allowed, denied) = match rule {
                    NoSetId(a) => {
                        let mut ok = [0u64; 6];
                        ok[*a as usize] = 0o755;
                        let mut bad = ok;
                        bad[*a as usize] = 0o4755;
                        (
                            run(&with_arch, *nr, t.arch, ok),
                            run(&with_arch, *nr, t.arch, bad),
                        )
                    }
                    NotSupported => (RET_ALLOW, run(&with_arch, *nr, t.arch, [0; 6])),
                };
                assert_eq!(allowed, RET_ALLOW, "{:#x} {nr}", t.arch);
                assert_ne!(denied, RET_ALLOW, "{:#x} {nr}", t.arch);
            }
            assert_eq!(run(&with_arch, 1000, t.arch, [0; 6]), RET_ALLOW);
        }
    }
}
