//! Architecture names: ELF `e_machine`/class/endianness (+ ARM attributes) ↔ OCI
//! `architecture`/`variant` ↔ `uname -m`.
//!
//! CONTRACT (used by inspect, binfmt, metrics labels): `Arch` is a closed set so it can be a
//! metric label; `Arch::Other` carries the raw ELF identity for everything else.

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

// ---- CONTRACT: to be implemented (signatures fixed) ----

impl Arch {
    /// Maps an ELF identity to an architecture. `arm_cpu_arch` is `Tag_CPU_arch` from the
    /// `.ARM.attributes` section when present; `e_flags` decides MIPS/RISC-V/ARM details.
    pub fn from_elf(
        machine: u16,
        class: Class,
        endian: Endian,
        e_flags: u32,
        arm_cpu_arch: Option<u8>,
    ) -> Arch {
        let _ = (machine, class, endian, e_flags, arm_cpu_arch);
        unimplemented!()
    }
    /// OCI name with variant, e.g. `amd64`, `arm64`, `arm/v7`, `arm`.
    pub fn name(&self) -> String {
        unimplemented!()
    }
    /// Closed-set label for metrics (`other` for [`Arch::Other`]).
    pub fn label(&self) -> &'static str {
        unimplemented!()
    }
    pub fn oci_architecture(&self) -> &'static str {
        unimplemented!()
    }
    pub fn oci_variant(&self) -> Option<&'static str> {
        unimplemented!()
    }
    /// `uname -m` name, e.g. `x86_64`, `aarch64`, `armv7l`.
    pub fn uname(&self) -> &'static str {
        unimplemented!()
    }
    /// Parses OCI (`arm64`, `linux/arm/v7`, `arm64/v8`) and uname (`aarch64`, `x86_64`) names.
    pub fn parse(s: &str) -> Option<Arch> {
        let _ = s;
        unimplemented!()
    }
    pub fn from_oci(architecture: &str, variant: Option<&str>) -> Option<Arch> {
        let _ = (architecture, variant);
        unimplemented!()
    }
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Node {
    pub arch: Arch,
    /// Whether the kernel runs 32-bit binaries of the companion arch.
    pub compat32: bool,
}

impl Node {
    /// This machine: `uname -m`, compat from the kernel.
    pub fn detect() -> Node {
        unimplemented!()
    }
    pub fn with_arch(arch: Arch) -> Node {
        let _ = arch;
        unimplemented!()
    }
    pub fn nativity(&self, binary: Arch) -> Nativity {
        let _ = binary;
        unimplemented!()
    }
}
