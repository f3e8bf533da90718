//! ELF headers read the way `fs/binfmt_elf.c` reads them: the file header, the program
//! header table (at most one page, like the kernel), the PT_INTERP string (at most PATH_MAX)
//! and, for 32-bit ARM only, the `.ARM.attributes` section that names the CPU architecture.
//!
//! Every read is bounded; nothing here depends on the file's size.

use std::io;

use goblin::container::{Container, Ctx};
use goblin::elf::header::{self, Header};
use goblin::elf::program_header::{ProgramHeader, PT_INTERP};
use goblin::elf::section_header::SectionHeader;
use serde::Serialize;

use crate::platform::{Arch, Class, Endian};
use crate::source::{read_vec, Source};

/// The kernel's ELF_MIN_ALIGN bound on the program header table (one page).
const MAX_PHDR_BYTES: usize = 4096;
/// PATH_MAX: the kernel refuses a longer PT_INTERP.
const PATH_MAX: u64 = 4096;
/// Section header tables larger than this are not read (only needed for ARM variants).
const MAX_SHDR_BYTES: usize = 64 * 1024;
/// `.ARM.attributes` is tiny; read at most this much of it.
const MAX_ATTR_BYTES: usize = 4096;
const SHT_ARM_ATTRIBUTES: u32 = 0x7000_0003;
/// The ARM EABI version in e_flags (0: the old ABI).
pub const EF_ARM_EABIMASK: u32 = 0xff00_0000;
const EM_ARM: u16 = 40;

/// Which C library a dynamic binary expects, told by its loader's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Libc {
    Glibc,
    Musl,
    Bionic,
    Other,
}

impl Libc {
    pub fn from_loader(path: &str) -> Libc {
        let base = path.rsplit('/').next().unwrap_or(path);
        if base.starts_with("ld-musl-") {
            Libc::Musl
        } else if base.starts_with("ld-linux") || base.starts_with("ld64.so") || base == "ld.so.1" {
            Libc::Glibc
        } else if base.starts_with("linker") {
            Libc::Bionic
        } else {
            Libc::Other
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Libc::Glibc => "glibc",
            Libc::Musl => "musl",
            Libc::Bionic => "bionic",
            Libc::Other => "unknown libc",
        }
    }
}

/// What the ELF header says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ElfInfo {
    pub arch: Arch,
    pub bits: u8,
    pub endian: &'static str,
    pub machine: u16,
    pub e_type: u16,
    pub osabi: u8,
    pub e_flags: u32,
    /// PT_INTERP, when present and well-formed.
    pub interp: Option<String>,
    pub libc: Option<Libc>,
    /// Why the kernel's ELF loader would refuse this file even on the right machine.
    pub malformed: Option<String>,
}

impl ElfInfo {
    pub fn is_static(&self) -> bool {
        self.interp.is_none()
    }
    /// One phrase: `ELF 64-bit LSB arm64, dynamic (glibc loader /lib/ld-linux-aarch64.so.1)`.
    pub fn describe(&self) -> String {
        let order = if self.endian == "little" {
            "LSB"
        } else {
            "MSB"
        };
        let link = match (&self.interp, self.libc) {
            (Some(i), Some(l)) => format!("dynamic ({} loader {i})", l.name()),
            (Some(i), None) => format!("dynamic (loader {i})"),
            (None, _) if self.e_type == header::ET_DYN => "static-pie".to_string(),
            (None, _) => "static".to_string(),
        };
        format!("ELF {}-bit {order} {}, {link}", self.bits, self.arch)
    }
}

/// Outcome of reading a file that starts with the ELF magic.
pub enum Parsed {
    Elf(Box<ElfInfo>),
    /// Too short or inconsistent to even name a machine.
    Truncated(String),
}

/// Parses an ELF file from `src`.
pub fn parse<S: Source + ?Sized>(src: &S) -> io::Result<Parsed> {
    let head = read_vec(src, 0, header::header64::SIZEOF_EHDR)?;
    if head.len() < header::SIZEOF_IDENT {
        return Ok(Parsed::Truncated(format!(
            "truncated ELF: {} bytes, shorter than the identification",
            head.len()
        )));
    }
    let class = match head[header::EI_CLASS] {
        header::ELFCLASS32 => Class::Elf32,
        header::ELFCLASS64 => Class::Elf64,
        c => return Ok(Parsed::Truncated(format!("ELF with invalid class {c}"))),
    };
    let endian = match head[header::EI_DATA] {
        header::ELFDATA2LSB => Endian::Little,
        header::ELFDATA2MSB => Endian::Big,
        d => {
            return Ok(Parsed::Truncated(format!(
                "ELF with invalid data encoding {d}"
            )))
        }
    };
    let need = match class {
        Class::Elf32 => header::header32::SIZEOF_EHDR,
        Class::Elf64 => header::header64::SIZEOF_EHDR,
    };
    if head.len() < need {
        return Ok(Parsed::Truncated(format!(
            "truncated ELF: {} bytes, the header needs {need}",
            head.len()
        )));
    }
    let hdr = match goblin::elf::Elf::parse_header(&head) {
        Ok(h) => h,
        Err(e) => return Ok(Parsed::Truncated(format!("unreadable ELF header: {e}"))),
    };
    let ctx = Ctx::new(
        match class {
            Class::Elf32 => Container::Little,
            Class::Elf64 => Container::Big,
        },
        match endian {
            Endian::Little => goblin::container::Endian::Little,
            Endian::Big => goblin::container::Endian::Big,
        },
    );

    let mut info = ElfInfo {
        arch: Arch::from_elf(hdr.e_machine, class, endian, hdr.e_flags, None),
        bits: if class == Class::Elf64 { 64 } else { 32 },
        endian: if endian == Endian::Little {
            "little"
        } else {
            "big"
        },
        machine: hdr.e_machine,
        e_type: hdr.e_type,
        osabi: head[header::EI_OSABI],
        e_flags: hdr.e_flags,
        interp: None,
        libc: None,
        malformed: None,
    };
    if hdr.e_machine == EM_ARM && class == Class::Elf32 {
        let cpu = arm_cpu_arch(src, &hdr, ctx)?;
        info.arch = Arch::from_elf(hdr.e_machine, class, endian, hdr.e_flags, cpu);
    }
    if hdr.e_type != header::ET_EXEC && hdr.e_type != header::ET_DYN {
        info.malformed = Some(format!(
            "ELF type {} is not an executable (only ET_EXEC and ET_DYN run)",
            header::et_to_str(hdr.e_type)
        ));
        return Ok(Parsed::Elf(Box::new(info)));
    }
    match program_headers(src, &hdr, ctx)? {
        Err(why) => info.malformed = Some(why),
        Ok(phdrs) => match interp(src, &phdrs)? {
            Err(why) => info.malformed = Some(why),
            Ok(i) => {
                info.libc = i.as_deref().map(Libc::from_loader);
                info.interp = i;
            }
        },
    }
    Ok(Parsed::Elf(Box::new(info)))
}

fn program_headers<S: Source + ?Sized>(
    src: &S,
    hdr: &Header,
    ctx: Ctx,
) -> io::Result<Result<Vec<ProgramHeader>, String>> {
    let entsize = ProgramHeader::size(ctx);
    if usize::from(hdr.e_phentsize) != entsize {
        return Ok(Err(format!(
            "program header entry size {} is not {entsize}",
            hdr.e_phentsize
        )));
    }
    let size = entsize * usize::from(hdr.e_phnum);
    if size == 0 || size > MAX_PHDR_BYTES {
        return Ok(Err(format!(
            "{} program headers: the kernel accepts 1 to {}",
            hdr.e_phnum,
            MAX_PHDR_BYTES / entsize
        )));
    }
    let bytes = read_vec(src, hdr.e_phoff, size)?;
    if bytes.len() < size {
        return Ok(Err(
            "program header table is cut off by the end of the file".into(),
        ));
    }
    Ok(
        ProgramHeader::parse(&bytes, 0, usize::from(hdr.e_phnum), ctx)
            .map_err(|e| format!("unreadable program headers: {e}")),
    )
}

fn interp<S: Source + ?Sized>(
    src: &S,
    phdrs: &[ProgramHeader],
) -> io::Result<Result<Option<String>, String>> {
    let Some(ph) = phdrs.iter().find(|p| p.p_type == PT_INTERP) else {
        return Ok(Ok(None));
    };
    if ph.p_filesz > PATH_MAX || ph.p_filesz < 2 {
        return Ok(Err(format!(
            "PT_INTERP of {} bytes (the kernel accepts 2 to {PATH_MAX})",
            ph.p_filesz
        )));
    }
    // Bounded by PATH_MAX above.
    let len = ph.p_filesz as usize;
    let bytes = read_vec(src, ph.p_offset, len)?;
    if bytes.len() < len || bytes[len - 1] != 0 {
        return Ok(Err("PT_INTERP is not a NUL-terminated string".into()));
    }
    let s = &bytes[..len - 1];
    let s = match s.iter().position(|&b| b == 0) {
        Some(n) => &s[..n],
        None => s,
    };
    Ok(Ok(Some(String::from_utf8_lossy(s).into_owned())))
}

/// `Tag_CPU_arch` from `.ARM.attributes`, when the section headers can be read cheaply.
fn arm_cpu_arch<S: Source + ?Sized>(src: &S, hdr: &Header, ctx: Ctx) -> io::Result<Option<u8>> {
    let entsize = SectionHeader::size(ctx);
    if usize::from(hdr.e_shentsize) != entsize || hdr.e_shnum == 0 || hdr.e_shoff == 0 {
        return Ok(None);
    }
    let size = entsize * usize::from(hdr.e_shnum);
    if size > MAX_SHDR_BYTES {
        return Ok(None);
    }
    let bytes = read_vec(src, hdr.e_shoff, size)?;
    // parse_from: the table was read on its own, so offset 0 is its start (parse() would
    // take offset 0 to mean "no section headers").
    let Ok(shdrs) = SectionHeader::parse_from(&bytes, 0, bytes.len() / entsize, ctx) else {
        return Ok(None);
    };
    let Some(sh) = shdrs.iter().find(|s| s.sh_type == SHT_ARM_ATTRIBUTES) else {
        return Ok(None);
    };
    let len = usize::try_from(sh.sh_size)
        .unwrap_or(MAX_ATTR_BYTES)
        .min(MAX_ATTR_BYTES);
    let attrs = read_vec(src, sh.sh_offset, len)?;
    Ok(parse_arm_attributes(
        &attrs,
        ctx.le == goblin::container::Endian::Little,
    ))
}

/// Finds `Tag_CPU_arch` (6) in the `aeabi` subsection of an ARM attributes section.
pub fn parse_arm_attributes(data: &[u8], little: bool) -> Option<u8> {
    let u32_at = |b: &[u8], i: usize| -> Option<usize> {
        let w: [u8; 4] = b.get(i..i + 4)?.try_into().ok()?;
        Some(if little {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        } as usize)
    };
    if data.first() != Some(&b'A') {
        return None;
    }
    let mut pos = 1;
    while pos < data.len() {
        let sub_len = u32_at(data, pos)?;
        let end = pos.checked_add(sub_len)?.min(data.len());
        if sub_len < 5 {
            return None;
        }
        let name_start = pos + 4;
        let name_end = name_start + data.get(name_start..end)?.iter().position(|&b| b == 0)?;
        if &data[name_start..name_end] == b"aeabi" {
            let mut p = name_end + 1;
            while p < end {
                let tag = *data.get(p)?;
                let size = u32_at(data, p + 1)?;
                let sec_end = p.checked_add(size)?.min(end);
                if size < 5 {
                    return None;
                }
                if tag == 1 {
                    return cpu_arch_in(&data[p + 5..sec_end]);
                }
                p = sec_end;
            }
        }
        pos = end;
    }
    None
}

fn uleb(data: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let b = *data.get(*pos)?;
        *pos += 1;
        if shift < 64 {
            v |= u64::from(b & 0x7f) << shift;
        }
        if b & 0x80 == 0 {
            return Some(v);
        }
        shift += 7;
    }
}

fn cpu_arch_in(attrs: &[u8]) -> Option<u8> {
    let mut p = 0;
    while p < attrs.len() {
        let tag = uleb(attrs, &mut p)?;
        // Tag_CPU_raw_name (4), Tag_CPU_name (5), Tag_compatibility's string, Tag_conformance
        // (67) and odd tags above 32 are NUL-terminated strings; the rest are ULEB128.
        let is_string = tag == 4 || tag == 5 || tag == 67 || (tag > 32 && tag % 2 == 1);
        if tag == 32 {
            uleb(attrs, &mut p)?;
            p += attrs.get(p..)?.iter().position(|&b| b == 0)? + 1;
        } else if is_string {
            p += attrs.get(p..)?.iter().position(|&b| b == 0)? + 1;
        } else {
            let v = uleb(attrs, &mut p)?;
            if tag == 6 {
                return u8::try_from(v).ok();
            }
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF header + one PT_INTERP program header, for crafted-arch tests.
    pub(crate) fn craft(
        machine: u16,
        class64: bool,
        little: bool,
        interp: Option<&str>,
    ) -> Vec<u8> {
        let mut b = Vec::new();
        let (ehsize, phentsize) = if class64 { (64u16, 56u16) } else { (52, 32) };
        let w16 = |b: &mut Vec<u8>, v: u16| {
            b.extend_from_slice(&if little {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            })
        };
        let w32 = |b: &mut Vec<u8>, v: u32| {
            b.extend_from_slice(&if little {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            })
        };
        let w64 = |b: &mut Vec<u8>, v: u64| {
            b.extend_from_slice(&if little {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            })
        };
        b.extend_from_slice(b"\x7fELF");
        b.push(if class64 { 2 } else { 1 });
        b.push(if little { 1 } else { 2 });
        b.push(1);
        b.extend_from_slice(&[0; 9]);
        w16(&mut b, 2); // ET_EXEC
        w16(&mut b, machine);
        w32(&mut b, 1);
        let phoff = u64::from(ehsize);
        let interp_off = phoff + u64::from(phentsize);
        if class64 {
            w64(&mut b, 0x400000);
            w64(&mut b, phoff);
            w64(&mut b, 0);
        } else {
            w32(&mut b, 0x8000);
            w32(&mut b, phoff as u32);
            w32(&mut b, 0);
        }
        w32(&mut b, 0);
        w16(&mut b, ehsize);
        w16(&mut b, phentsize);
        w16(&mut b, 1);
        w16(&mut b, 0);
        w16(&mut b, 0);
        w16(&mut b, 0);
        assert_eq!(b.len(), usize::from(ehsize));
        let s = interp.map(|s| format!("{s}\0")).unwrap_or_default();
        let (ptype, len) = if interp.is_some() {
            (PT_INTERP, s.len() as u64)
        } else {
            (1, 0) // PT_LOAD
        };
        if class64 {
            w32(&mut b, ptype);
            w32(&mut b, 4);
            w64(&mut b, interp_off);
            w64(&mut b, 0);
            w64(&mut b, 0);
            w64(&mut b, len);
            w64(&mut b, len);
            w64(&mut b, 1);
        } else {
            w32(&mut b, ptype);
            w32(&mut b, interp_off as u32);
            w32(&mut b, 0);
            w32(&mut b, 0);
            w32(&mut b, len as u32);
            w32(&mut b, len as u32);
            w32(&mut b, 4);
            w32(&mut b, 1);
        }
        b.extend_from_slice(s.as_bytes());
        b
    }

    fn parsed(b: &[u8]) -> ElfInfo {
        match parse(b).expect("in-memory read") {
            Parsed::Elf(i) => *i,
            Parsed::Truncated(w) => panic!("unexpected truncation: {w}"),
        }
    }

    #[test]
    fn crafted_headers_name_their_machine_and_loader() {
        type Case<'a> = (u16, bool, bool, Option<&'a str>, Arch, Option<Libc>);
        let cases: &[Case] = &[
            (
                62,
                true,
                true,
                Some("/lib64/ld-linux-x86-64.so.2"),
                Arch::Amd64,
                Some(Libc::Glibc),
            ),
            (
                183,
                true,
                true,
                Some("/lib/ld-musl-aarch64.so.1"),
                Arch::Arm64,
                Some(Libc::Musl),
            ),
            (
                3,
                false,
                true,
                Some("/lib/ld-linux.so.2"),
                Arch::I386,
                Some(Libc::Glibc),
            ),
            (
                22,
                true,
                false,
                Some("/lib/ld64.so.1"),
                Arch::S390x,
                Some(Libc::Glibc),
            ),
            (
                21,
                true,
                true,
                Some("/lib64/ld64.so.2"),
                Arch::Ppc64le,
                Some(Libc::Glibc),
            ),
            (21, true, false, None, Arch::Ppc64, None),
            (243, true, true, None, Arch::Riscv64, None),
            (
                8,
                true,
                true,
                Some("/lib64/ld.so.1"),
                Arch::Mips64le,
                Some(Libc::Glibc),
            ),
            (258, true, true, None, Arch::Loong64, None),
            (
                40,
                false,
                true,
                Some("/lib/ld-linux-armhf.so.3"),
                Arch::Arm(None),
                Some(Libc::Glibc),
            ),
        ];
        for (m, c64, le, interp, arch, libc) in cases {
            let info = parsed(&craft(*m, *c64, *le, *interp));
            assert_eq!(info.arch, *arch, "machine {m}");
            assert_eq!(info.interp.as_deref(), *interp, "machine {m}");
            assert_eq!(info.libc, *libc, "machine {m}");
            assert_eq!(info.malformed, None, "machine {m}");
        }
    }

    #[test]
    fn truncated_and_absurd_headers_are_named_not_panicked() {
        let full = craft(62, true, true, None);
        for n in [4, 16, 20, 40, 63] {
            assert!(
                matches!(parse(&full[..n]).unwrap(), Parsed::Truncated(_)),
                "len {n}"
            );
        }
        // e_phnum = 0xffff: refused like the kernel, without reading 3.6 MB.
        let mut absurd = full.clone();
        absurd[56..58].copy_from_slice(&0xffffu16.to_le_bytes());
        let info = parsed(&absurd);
        assert!(info.malformed.unwrap().contains("65535 program headers"));
        // A relocatable object is ELF but not executable.
        let mut rel = full;
        rel[16] = 1;
        assert!(parsed(&rel).malformed.unwrap().contains("REL"));
    }

    #[test]
    fn interp_without_nul_is_malformed() {
        let mut b = craft(62, true, true, Some("/lib/ld.so"));
        let last = b.len() - 1;
        b[last] = b'x';
        assert!(parsed(&b).malformed.unwrap().contains("NUL"));
    }

    #[test]
    fn arm_attributes_give_the_cpu_arch() {
        // 'A', len, "aeabi\0", Tag_File(1), size, Tag_CPU_name(5) "7-A\0", Tag_CPU_arch(6)=10
        let mut sub = Vec::new();
        sub.extend_from_slice(b"aeabi\0");
        let attrs = [5u8, b'7', b'-', b'A', 0, 6, 10, 8, 1];
        sub.push(1);
        sub.extend_from_slice(&((attrs.len() + 5) as u32).to_le_bytes());
        sub.extend_from_slice(&attrs);
        let mut data = vec![b'A'];
        data.extend_from_slice(&((sub.len() + 4) as u32).to_le_bytes());
        data.extend_from_slice(&sub);
        assert_eq!(parse_arm_attributes(&data, true), Some(10));
        assert_eq!(parse_arm_attributes(&data[..8], true), None);
        assert_eq!(parse_arm_attributes(b"B", true), None);
    }
}

#[cfg(test)]
mod fixture_tests {
    use super::*;

    /// Debian's armhf busybox-static names its CPU in .ARM.attributes (Tag_CPU_arch v7).
    #[test]
    fn real_armhf_binary_is_arm_v7() {
        let dir = std::env::var("ARCHWATCH_FIXTURES")
            .unwrap_or_else(|_| "/var/cache/archwatch-fixtures".into());
        let Ok(bytes) = std::fs::read(format!("{dir}/busybox-armhf")) else {
            assert!(std::env::var_os("CI").is_none(), "fixtures missing in CI");
            return;
        };
        let Parsed::Elf(info) = parse(bytes.as_slice()).unwrap() else {
            panic!()
        };
        assert_eq!(info.arch.name(), "arm/v7");
    }
}
