//! Architecture names: ELF `e_machine`/class/endianness (+ ARM attributes) ↔ OCI
//! `architecture`/`variant` ↔ `uname -m`.
//!
//! `Arch` is a closed set so it can be a metric label; `Arch::Other` carries the raw ELF
//! identity of everything else.

use serde::{Serialize, Serializer};

/// ELF class (EI_CLASS).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    Elf32,
    Elf64,
}

/// ELF data encoding (EI_DATA).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endian {
    Little,
    Big,
}

/// A CPU architecture as containers name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    Amd64,
    I386,
    Arm64,
    /// 32-bit ARM; `None` when the variant could not be told.
    Arm(Option<ArmVariant>),
    Ppc64le,
    Ppc64,
    S390x,
    Riscv64,
    Mips64le,
    Mips64,
    Mipsle,
    Mips,
    Loong64,
    Sparc64,
    /// Anything else, identified by its raw ELF identity.
    Other {
        machine: u16,
        class: Class,
        endian: Endian,
    },
}

/// 32-bit ARM variants as OCI names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ArmVariant {
    V5,
    V6,
    V7,
    V8,
}

impl Serialize for Arch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

const EM_386: u16 = 3;
const EM_MIPS: u16 = 8;
const EM_PPC64: u16 = 21;
const EM_S390: u16 = 22;
const EM_ARM: u16 = 40;
const EM_SPARCV9: u16 = 43;
const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;
const EM_RISCV: u16 = 243;
const EM_LOONGARCH: u16 = 258;

/// Every known arch, for tables and tests.
pub const KNOWN: [Arch; 19] = [
    Arch::Amd64,
    Arch::I386,
    Arch::Arm64,
    Arch::Arm(None),
    Arch::Arm(Some(ArmVariant::V5)),
    Arch::Arm(Some(ArmVariant::V6)),
    Arch::Arm(Some(ArmVariant::V7)),
    Arch::Arm(Some(ArmVariant::V8)),
    Arch::Ppc64le,
    Arch::Ppc64,
    Arch::S390x,
    Arch::Riscv64,
    Arch::Mips64le,
    Arch::Mips64,
    Arch::Mipsle,
    Arch::Mips,
    Arch::Loong64,
    Arch::Sparc64,
    Arch::Other {
        machine: 0,
        class: Class::Elf32,
        endian: Endian::Little,
    },
];

impl Arch {
    /// Maps an ELF identity to an architecture. `arm_cpu_arch` is `Tag_CPU_arch` from the
    /// `.ARM.attributes` section when present.
    pub fn from_elf(
        machine: u16,
        class: Class,
        endian: Endian,
        _e_flags: u32,
        arm_cpu_arch: Option<u8>,
    ) -> Arch {
        use Class::*;
        use Endian::*;
        match (machine, class, endian) {
            (EM_X86_64, Elf64, Little) => Arch::Amd64,
            (EM_386, Elf32, Little) => Arch::I386,
            (EM_AARCH64, Elf64, Little) => Arch::Arm64,
            (EM_ARM, Elf32, Little) => Arch::Arm(arm_cpu_arch.and_then(arm_variant)),
            (EM_PPC64, Elf64, Little) => Arch::Ppc64le,
            (EM_PPC64, Elf64, Big) => Arch::Ppc64,
            (EM_S390, Elf64, Big) => Arch::S390x,
            (EM_RISCV, Elf64, Little) => Arch::Riscv64,
            (EM_MIPS, Elf64, Little) => Arch::Mips64le,
            (EM_MIPS, Elf64, Big) => Arch::Mips64,
            (EM_MIPS, Elf32, Little) => Arch::Mipsle,
            (EM_MIPS, Elf32, Big) => Arch::Mips,
            (EM_LOONGARCH, Elf64, Little) => Arch::Loong64,
            (EM_SPARCV9, Elf64, Big) => Arch::Sparc64,
            _ => Arch::Other {
                machine,
                class,
                endian,
            },
        }
    }

    /// OCI name with variant, e.g. `amd64`, `arm64`, `arm/v7`, `arm`.
    pub fn name(&self) -> String {
        match self {
            Arch::Arm(Some(v)) => format!("arm/{}", v.name()),
            Arch::Other {
                machine,
                class,
                endian,
            } => format!(
                "elf-machine-{machine:#06x}-{}-{}",
                if *class == Class::Elf64 {
                    "elf64"
                } else {
                    "elf32"
                },
                if *endian == Endian::Little {
                    "le"
                } else {
                    "be"
                }
            ),
            _ => self.oci_architecture().to_string(),
        }
    }

    /// Closed-set label for metrics (`other` for [`Arch::Other`]).
    pub fn label(&self) -> &'static str {
        match self {
            Arch::Arm(Some(ArmVariant::V5)) => "arm/v5",
            Arch::Arm(Some(ArmVariant::V6)) => "arm/v6",
            Arch::Arm(Some(ArmVariant::V7)) => "arm/v7",
            Arch::Arm(Some(ArmVariant::V8)) => "arm/v8",
            Arch::Other { .. } => "other",
            _ => self.oci_architecture(),
        }
    }

    pub fn oci_architecture(&self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::I386 => "386",
            Arch::Arm64 => "arm64",
            Arch::Arm(_) => "arm",
            Arch::Ppc64le => "ppc64le",
            Arch::Ppc64 => "ppc64",
            Arch::S390x => "s390x",
            Arch::Riscv64 => "riscv64",
            Arch::Mips64le => "mips64le",
            Arch::Mips64 => "mips64",
            Arch::Mipsle => "mipsle",
            Arch::Mips => "mips",
            Arch::Loong64 => "loong64",
            Arch::Sparc64 => "sparc64",
            Arch::Other { .. } => "unknown",
        }
    }

    pub fn oci_variant(&self) -> Option<&'static str> {
        match self {
            Arch::Arm(Some(v)) => Some(v.name()),
            _ => None,
        }
    }

    /// `uname -m` name, e.g. `x86_64`, `aarch64`, `armv7l`.
    pub fn uname(&self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64",
            Arch::I386 => "i686",
            Arch::Arm64 => "aarch64",
            Arch::Arm(Some(ArmVariant::V5)) => "armv5tel",
            Arch::Arm(Some(ArmVariant::V6)) => "armv6l",
            Arch::Arm(Some(ArmVariant::V8)) => "armv8l",
            Arch::Arm(_) => "armv7l",
            Arch::Ppc64le => "ppc64le",
            Arch::Ppc64 => "ppc64",
            Arch::S390x => "s390x",
            Arch::Riscv64 => "riscv64",
            Arch::Mips64le | Arch::Mips64 => "mips64",
            Arch::Mipsle | Arch::Mips => "mips",
            Arch::Loong64 => "loongarch64",
            Arch::Sparc64 => "sparc64",
            Arch::Other { .. } => "unknown",
        }
    }

    /// Parses OCI (`arm64`, `linux/arm/v7`, `arm64/v8`), uname (`aarch64`, `x86_64`) and
    /// Debian (`armhf`, `ppc64el`) names, case-insensitively.
    pub fn parse(s: &str) -> Option<Arch> {
        let lower = s.trim().to_ascii_lowercase();
        let s = lower.strip_prefix("linux/").unwrap_or(&lower);
        let (arch, variant) = match s.split_once('/') {
            Some((a, v)) => (a, Some(v)),
            None => (s, None),
        };
        if let Some(a) = Arch::from_oci(arch, variant) {
            return Some(a);
        }
        if variant.is_some() {
            return None;
        }
        Some(match arch {
            "x86_64" | "x86-64" | "x64" => Arch::Amd64,
            "i386" | "i486" | "i586" | "i686" | "x86" => Arch::I386,
            "aarch64" | "arm64v8" => Arch::Arm64,
            "armhf" | "armv7l" | "armv7" | "arm32v7" => Arch::Arm(Some(ArmVariant::V7)),
            "armel" | "armv5tel" | "armv5" | "arm32v5" => Arch::Arm(Some(ArmVariant::V5)),
            "armv6l" | "armv6" | "arm32v6" => Arch::Arm(Some(ArmVariant::V6)),
            "armv8l" => Arch::Arm(Some(ArmVariant::V8)),
            "ppc64el" | "powerpc64le" => Arch::Ppc64le,
            "powerpc64" => Arch::Ppc64,
            "mips64el" => Arch::Mips64le,
            "mipsel" => Arch::Mipsle,
            "loongarch64" => Arch::Loong64,
            _ => return None,
        })
    }

    pub fn from_oci(architecture: &str, variant: Option<&str>) -> Option<Arch> {
        let a = match architecture {
            "amd64" => Arch::Amd64,
            "386" => Arch::I386,
            "arm64" => Arch::Arm64,
            "arm" => {
                return match variant {
                    None | Some("") => Some(Arch::Arm(None)),
                    Some(v) => ArmVariant::parse(v).map(|v| Arch::Arm(Some(v))),
                }
            }
            "ppc64le" => Arch::Ppc64le,
            "ppc64" => Arch::Ppc64,
            "s390x" => Arch::S390x,
            "riscv64" => Arch::Riscv64,
            "mips64le" => Arch::Mips64le,
            "mips64" => Arch::Mips64,
            "mipsle" => Arch::Mipsle,
            "mips" => Arch::Mips,
            "loong64" => Arch::Loong64,
            "sparc64" => Arch::Sparc64,
            _ => return None,
        };
        // arm64/v8 is the only variant other arches carry in practice.
        match (a, variant) {
            (_, None | Some("")) | (Arch::Arm64, Some("v8")) => Some(a),
            _ => None,
        }
    }
}

impl ArmVariant {
    pub fn name(self) -> &'static str {
        match self {
            ArmVariant::V5 => "v5",
            ArmVariant::V6 => "v6",
            ArmVariant::V7 => "v7",
            ArmVariant::V8 => "v8",
        }
    }
    fn parse(s: &str) -> Option<ArmVariant> {
        Some(match s {
            "v5" => ArmVariant::V5,
            "v6" => ArmVariant::V6,
            "v7" => ArmVariant::V7,
            "v8" => ArmVariant::V8,
            _ => return None,
        })
    }
}

/// ARM ARM `Tag_CPU_arch` values to OCI variants.
fn arm_variant(tag: u8) -> Option<ArmVariant> {
    Some(match tag {
        1..=5 => ArmVariant::V5,
        6..=9 | 11 | 12 => ArmVariant::V6,
        10 | 13 => ArmVariant::V7,
        14.. => ArmVariant::V8,
        0 => return None,
    })
}

/// Whether a binary of one arch runs natively on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Nativity {
    Native,
    /// 32-bit compat mode of a 64-bit kernel (386 on amd64, arm on arm64).
    Compat32,
    Foreign,
}

/// The node a verdict is for.
///
/// 32-bit compat: a 386 binary on amd64 and an arm/v5–v8 binary on arm64 run through the
/// 64-bit kernel's compat layer when the node has one (`ok` with a `compat_32bit` finding),
/// and fail with `exec format error` when it has not. [`Node::detect`] asks the kernel:
/// - x86_64: IA32 emulation is built in when `/proc/sys/abi/vsyscall32` exists, and is then
///   on unless the kernel command line turns it off with `ia32_emulation=0` (Linux 6.7+,
///   arch/x86/entry/common.c; the last occurrence wins, read as kstrtobool does);
/// - aarch64: `personality(PER_LINUX32)` fails with EINVAL when no CPU can run AArch32 at EL0
///   or the kernel has no COMPAT (arch/arm64/kernel/sys.c, arm64_personality(): Graviton 3
///   and 4, AmpereOne, Apple M-series). The probe runs on a thread of its own and puts the
///   personality back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Node {
    pub arch: Arch,
    /// Whether the kernel runs 32-bit binaries of the companion arch.
    pub compat32: bool,
}

impl Node {
    /// This machine: `uname -m`, compat from the kernel (see [`Node`]).
    pub fn detect() -> Node {
        let uts = rustix::system::uname();
        let machine = uts.machine().to_string_lossy().into_owned();
        let arch = Arch::parse(&machine).unwrap_or(Arch::Other {
            machine: 0,
            class: Class::Elf64,
            endian: Endian::Little,
        });
        let compat32 = match arch {
            Arch::Amd64 => ia32_emulation(std::path::Path::new("/proc")),
            Arch::Arm64 => aarch32_el0(),
            _ => false,
        };
        Node { arch, compat32 }
    }

    /// This node with 32-bit compat as `choice` says: [`Compat32::Auto`] keeps what the
    /// node was found (or assumed) to have.
    pub fn with_compat32(mut self, choice: Compat32) -> Node {
        match choice {
            Compat32::Auto => {}
            Compat32::Yes => self.compat32 = matches!(self.arch, Arch::Amd64 | Arch::Arm64),
            Compat32::No => self.compat32 = false,
        }
        self
    }

    pub fn with_arch(arch: Arch) -> Node {
        Node {
            arch,
            compat32: matches!(arch, Arch::Amd64 | Arch::Arm64),
        }
    }

    pub fn nativity(&self, binary: Arch) -> Nativity {
        match (self.arch, binary) {
            (a, b) if a == b => Nativity::Native,
            // A 32-bit ARM kernel checks the machine, not the ISA level (arch/arm/kernel/
            // elf.c, elf_check_arch()): a binary for a newer variant execs, and dies of
            // SIGILL at the first instruction the CPU lacks (a finding, not a verdict).
            (Arch::Arm(_), Arch::Arm(_)) => Nativity::Native,
            (Arch::Amd64, Arch::I386) | (Arch::Arm64, Arch::Arm(_)) if self.compat32 => {
                Nativity::Compat32
            }
            _ => Nativity::Foreign,
        }
    }
}

/// `--compat32`: whether the node runs 32-bit binaries of its companion arch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compat32 {
    /// Probed on this machine; assumed for a node named with `--node-arch`.
    Auto,
    Yes,
    No,
}

impl std::str::FromStr for Compat32 {
    type Err = String;
    fn from_str(s: &str) -> Result<Compat32, String> {
        match s {
            "auto" => Ok(Compat32::Auto),
            "yes" => Ok(Compat32::Yes),
            "no" => Ok(Compat32::No),
            _ => Err(format!("{s:?}: want auto, yes or no")),
        }
    }
}

/// x86_64: whether 32-bit binaries run, from `proc` (`/proc`).
pub fn ia32_emulation(proc: &std::path::Path) -> bool {
    if !proc.join("sys/abi/vsyscall32").exists() {
        return false;
    }
    let cmdline = std::fs::read_to_string(proc.join("cmdline")).unwrap_or_default();
    ia32_emulation_param(&cmdline).unwrap_or(true)
}

/// The last valid `ia32_emulation=` of a kernel command line, read as kstrtobool() reads
/// it (`1`/`y`/`on` true, `0`/`n`/`off` false); parameters after `--` go to init.
pub fn ia32_emulation_param(cmdline: &str) -> Option<bool> {
    let mut v = None;
    for word in cmdline.split_whitespace() {
        if word == "--" {
            break;
        }
        let Some(val) = word.strip_prefix("ia32_emulation=") else {
            continue;
        };
        let b = val.as_bytes();
        let parsed = match (b.first(), b.get(1)) {
            (Some(b'y' | b'Y' | b'1'), _) => Some(true),
            (Some(b'n' | b'N' | b'0'), _) => Some(false),
            (Some(b'o' | b'O'), Some(b'n' | b'N')) => Some(true),
            (Some(b'o' | b'O'), Some(b'f' | b'F')) => Some(false),
            _ => None,
        };
        if parsed.is_some() {
            v = parsed;
        }
    }
    v
}

/// aarch64: whether `personality(PER_LINUX32)` is accepted (a CPU with AArch32 EL0 and a
/// kernel with COMPAT). Only asked on arm64: x86_64 accepts it whatever it can run.
fn aarch32_el0() -> bool {
    use nix::sys::personality::{self, Persona};
    const PER_LINUX32: i32 = 0x0008;
    // A thread of its own: the personality is the calling thread's, and is put back.
    std::thread::spawn(
        || match personality::set(Persona::from_bits_retain(PER_LINUX32)) {
            Ok(previous) => {
                let _ = personality::set(previous);
                true
            }
            Err(_) => false,
        },
    )
    .join()
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ia32_emulation_follows_the_kernel_command_line() {
        let cases = [
            ("quiet ro", None),
            ("ia32_emulation=0", Some(false)),
            ("ia32_emulation=off quiet", Some(false)),
            ("ia32_emulation=N", Some(false)),
            ("ia32_emulation=1", Some(true)),
            ("ia32_emulation=on", Some(true)),
            ("ia32_emulation=y", Some(true)),
            // The last valid one wins; an invalid value changes nothing.
            ("ia32_emulation=0 ia32_emulation=1", Some(true)),
            ("ia32_emulation=1 ia32_emulation=0", Some(false)),
            ("ia32_emulation=0 ia32_emulation=maybe", Some(false)),
            // After `--`: init's arguments.
            ("quiet -- ia32_emulation=0", None),
        ];
        for (cmdline, want) in cases {
            assert_eq!(ia32_emulation_param(cmdline), want, "{cmdline}");
        }
        let proc = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(proc.path().join("sys/abi")).unwrap();
        std::fs::write(proc.path().join("cmdline"), "quiet ia32_emulation=0\n").unwrap();
        // Without IA32 emulation built in, no command line turns it on.
        assert!(!ia32_emulation(proc.path()));
        std::fs::write(proc.path().join("sys/abi/vsyscall32"), "1\n").unwrap();
        assert!(!ia32_emulation(proc.path()));
        std::fs::write(proc.path().join("cmdline"), "quiet\n").unwrap();
        assert!(ia32_emulation(proc.path()));
        // This machine: the real /proc.
        if Node::detect().arch == Arch::Amd64 {
            let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap();
            assert_eq!(
                Node::detect().compat32,
                std::path::Path::new("/proc/sys/abi/vsyscall32").exists()
                    && ia32_emulation_param(&cmdline) != Some(false)
            );
        }
    }

    #[test]
    fn compat32_choices() {
        let amd = Node::with_arch(Arch::Amd64);
        assert!(!amd.clone().with_compat32(Compat32::No).compat32);
        assert!(amd.clone().with_compat32(Compat32::Yes).compat32);
        assert!(amd.with_compat32(Compat32::Auto).compat32);
        let s390 = Node::with_arch(Arch::S390x).with_compat32(Compat32::Yes);
        assert!(!s390.compat32);
        assert_eq!("auto".parse::<Compat32>(), Ok(Compat32::Auto));
        assert!("maybe".parse::<Compat32>().is_err());
    }

    #[test]
    fn elf_identities_map_to_oci_names() {
        use Class::*;
        use Endian::*;
        let cases = [
            (62, Elf64, Little, None, "amd64", "x86_64"),
            (3, Elf32, Little, None, "386", "i686"),
            (183, Elf64, Little, None, "arm64", "aarch64"),
            (40, Elf32, Little, Some(10), "arm/v7", "armv7l"),
            (40, Elf32, Little, Some(6), "arm/v6", "armv6l"),
            (40, Elf32, Little, Some(4), "arm/v5", "armv5tel"),
            (40, Elf32, Little, Some(14), "arm/v8", "armv8l"),
            (40, Elf32, Little, None, "arm", "armv7l"),
            (21, Elf64, Little, None, "ppc64le", "ppc64le"),
            (21, Elf64, Big, None, "ppc64", "ppc64"),
            (22, Elf64, Big, None, "s390x", "s390x"),
            (243, Elf64, Little, None, "riscv64", "riscv64"),
            (8, Elf64, Little, None, "mips64le", "mips64"),
            (8, Elf64, Big, None, "mips64", "mips64"),
            (8, Elf32, Little, None, "mipsle", "mips"),
            (8, Elf32, Big, None, "mips", "mips"),
            (258, Elf64, Little, None, "loong64", "loongarch64"),
            (43, Elf64, Big, None, "sparc64", "sparc64"),
        ];
        for (m, c, e, attr, name, uname) in cases {
            let a = Arch::from_elf(m, c, e, 0, attr);
            assert_eq!(a.name(), name, "machine {m}");
            assert_eq!(a.uname(), uname, "machine {m}");
            assert_ne!(a.label(), "other");
        }
        // Right machine, wrong class: not the arch (x32, or a damaged header).
        let x32 = Arch::from_elf(62, Class::Elf32, Endian::Little, 0, None);
        assert_eq!(x32.label(), "other");
        assert_eq!(x32.name(), "elf-machine-0x003e-elf32-le");
    }

    #[test]
    fn names_parse_back() {
        for a in KNOWN
            .into_iter()
            .filter(|a| !matches!(a, Arch::Other { .. }))
        {
            assert_eq!(Arch::parse(&a.name()), Some(a), "{a:?}");
            assert_eq!(
                Arch::from_oci(a.oci_architecture(), a.oci_variant()),
                Some(a)
            );
        }
        let aliases = [
            ("x86_64", Arch::Amd64),
            ("linux/amd64", Arch::Amd64),
            ("AARCH64", Arch::Arm64),
            ("arm64/v8", Arch::Arm64),
            ("linux/arm/v7", Arch::Arm(Some(ArmVariant::V7))),
            ("armhf", Arch::Arm(Some(ArmVariant::V7))),
            ("armel", Arch::Arm(Some(ArmVariant::V5))),
            ("ppc64el", Arch::Ppc64le),
            ("mips64el", Arch::Mips64le),
            ("i386", Arch::I386),
            ("loongarch64", Arch::Loong64),
        ];
        for (s, a) in aliases {
            assert_eq!(Arch::parse(s), Some(a), "{s}");
        }
        for bad in ["", "z80", "arm/v9", "amd64/v3x", "linux/"] {
            assert_eq!(Arch::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn nativity_follows_compat_rules() {
        let amd = Node::with_arch(Arch::Amd64);
        let arm64 = Node::with_arch(Arch::Arm64);
        let armv6 = Node::with_arch(Arch::Arm(Some(ArmVariant::V6)));
        let no_compat = Node {
            arch: Arch::Amd64,
            compat32: false,
        };
        let cases = [
            (&amd, Arch::Amd64, Nativity::Native),
            (&amd, Arch::I386, Nativity::Compat32),
            (&no_compat, Arch::I386, Nativity::Foreign),
            (&amd, Arch::Arm64, Nativity::Foreign),
            (&arm64, Arch::Arm(Some(ArmVariant::V7)), Nativity::Compat32),
            (&arm64, Arch::Amd64, Nativity::Foreign),
            (&armv6, Arch::Arm(Some(ArmVariant::V5)), Nativity::Native),
            (&armv6, Arch::Arm(Some(ArmVariant::V7)), Nativity::Native),
            (&armv6, Arch::Arm(None), Nativity::Native),
            (&amd, Arch::S390x, Nativity::Foreign),
        ];
        for (node, bin, want) in cases {
            assert_eq!(node.nativity(bin), want, "{bin:?} on {:?}", node.arch);
        }
        assert!(
            Node::detect().arch
                != Arch::Other {
                    machine: 0,
                    class: Class::Elf64,
                    endian: Endian::Little
                }
        );
    }
}
