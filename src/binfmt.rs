//! binfmt_misc: parse the kernel's registration table and match files exactly like
//! `fs/binfmt_misc.c` does.
//!
//! The kernel asks binfmt_misc before the ELF and script loaders (it is inserted at the head
//! of the formats list), and its handlers in their list's order: each registration is added
//! at the head (fs/binfmt_misc.c, `list_add(&e->list, &misc->entries)`), so the newest is
//! asked first. Each entry's inode is made at registration with the time of that moment, and
//! the directory lists the newest entries first (dcache order): handlers are ordered by
//! modification time, newest first, then by their place in the listing.
//!
//! A handler without the `F` flag opens its interpreter at exec time, in the mount namespace
//! of the process — inside the container. With `F` the kernel opened it at registration.

use std::path::Path;

use serde::Serialize;

use crate::platform::{Arch, Class, Endian};

/// The kernel reads this many bytes of a file before choosing a handler (BINPRM_BUF_SIZE).
pub const BINPRM_BUF_SIZE: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Table {
    /// Global `status` file says `enabled`.
    pub enabled: bool,
    /// In kernel match order: most recently registered first.
    pub handlers: Vec<Handler>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Handler {
    pub name: String,
    pub enabled: bool,
    pub interpreter: String,
    /// Flag letters as the kernel prints them (`POCF`).
    pub flags: String,
    pub rule: Rule,
    /// Architecture the magic/mask selects, when it is an ELF header pattern.
    pub arch: Option<Arch>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    Magic {
        offset: usize,
        #[serde(serialize_with = "hex_bytes")]
        magic: Vec<u8>,
        #[serde(serialize_with = "hex_bytes")]
        mask: Vec<u8>,
    },
    Extension(String),
}

fn hex_bytes<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&b.iter().map(|x| format!("{x:02x}")).collect::<String>())
}

#[derive(Debug, thiserror::Error)]
pub enum BinfmtError {
    #[error("binfmt_misc directory {path} is not readable: {source}")]
    Unreadable {
        path: String,
        source: std::io::Error,
    },
    #[error("binfmt_misc entry {name}: {reason}")]
    Malformed { name: String, reason: String },
}

impl BinfmtError {
    pub fn kind(&self) -> &'static str {
        match self {
            BinfmtError::Unreadable { .. } => "binfmt_unreadable",
            BinfmtError::Malformed { .. } => "binfmt_malformed",
        }
    }
}

impl Table {
    /// An empty table (no handlers; the node runs only native binaries).
    pub fn empty() -> Table {
        Table {
            enabled: true,
            handlers: Vec::new(),
        }
    }

    /// Reads a directory in the format of `/proc/sys/fs/binfmt_misc`. Malformed entries are
    /// skipped and reported in the second element; `register` and `status` are not handlers.
    pub fn read_dir(dir: &Path) -> Result<(Table, Vec<BinfmtError>), BinfmtError> {
        let unreadable = |source| BinfmtError::Unreadable {
            path: dir.display().to_string(),
            source,
        };
        let rd = std::fs::read_dir(dir).map_err(unreadable)?;
        let mut enabled = true;
        let mut status_seen = false;
        let mut names = Vec::new();
        for ent in rd {
            let ent = ent.map_err(unreadable)?;
            let name = ent.file_name().to_string_lossy().into_owned();
            match name.as_str() {
                "register" => {}
                "status" => {
                    status_seen = true;
                    let text = std::fs::read_to_string(ent.path()).map_err(unreadable)?;
                    enabled = text.trim() != "disabled";
                }
                _ => {
                    // Registration time; an entry that cannot be stat'ed sorts last.
                    let made = ent.metadata().and_then(|m| m.modified()).ok();
                    names.push((made, names.len(), name, ent.path()));
                }
            }
        }
        if !status_seen && names.is_empty() {
            // An empty directory: binfmt_misc is not mounted here.
            return Err(unreadable(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no status file: binfmt_misc is not mounted there",
            )));
        }
        // Newest first; the listing's order (the kernel's, for binfmt_misc) breaks ties.
        names.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut handlers = Vec::new();
        let mut errors = Vec::new();
        for (_, _, name, path) in names {
            // Entries are tiny; refuse anything that is not.
            let text = match read_small(&path) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(BinfmtError::Malformed {
                        name,
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            match Table::parse_entry(&name, &text) {
                Ok(h) => handlers.push(h),
                Err(e) => errors.push(e),
            }
        }
        Ok((Table { enabled, handlers }, errors))
    }

    /// Parses one handler file's text.
    pub fn parse_entry(name: &str, text: &str) -> Result<Handler, BinfmtError> {
        let bad = |reason: String| BinfmtError::Malformed {
            name: name.to_string(),
            reason,
        };
        let mut enabled = None;
        let mut interpreter = None;
        let mut flags = String::new();
        let mut offset = 0usize;
        let mut magic = None;
        let mut mask = None;
        let mut extension = None;
        for line in text.lines() {
            let line = line.trim_end();
            if line == "enabled" {
                enabled = Some(true);
            } else if line == "disabled" {
                enabled = Some(false);
            } else if let Some(v) = line.strip_prefix("interpreter ") {
                interpreter = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("flags:") {
                flags = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("offset ") {
                offset = v
                    .trim()
                    .parse()
                    .map_err(|_| bad(format!("offset {v:?} is not a number")))?;
            } else if let Some(v) = line.strip_prefix("magic ") {
                magic = Some(hex::decode(v.trim()).map_err(|e| bad(format!("magic: {e}")))?);
            } else if let Some(v) = line.strip_prefix("mask ") {
                mask = Some(hex::decode(v.trim()).map_err(|e| bad(format!("mask: {e}")))?);
            } else if let Some(v) = line.strip_prefix("extension ") {
                extension = Some(v.trim().trim_start_matches('.').to_string());
            } else if !line.is_empty() {
                return Err(bad(format!("unexpected line {line:?}")));
            }
        }
        let enabled = enabled.ok_or_else(|| bad("no enabled/disabled line".into()))?;
        let interpreter = interpreter
            .filter(|i| !i.is_empty())
            .ok_or_else(|| bad("no interpreter".into()))?;
        let rule = match (magic, extension) {
            (Some(magic), None) => {
                if magic.is_empty() {
                    return Err(bad("empty magic".into()));
                }
                let mask = mask.unwrap_or_else(|| vec![0xff; magic.len()]);
                if mask.len() != magic.len() {
                    return Err(bad(format!(
                        "mask has {} bytes, magic {}",
                        mask.len(),
                        magic.len()
                    )));
                }
                if offset + magic.len() > BINPRM_BUF_SIZE {
                    return Err(bad(format!(
                        "offset {offset} + magic {} bytes is past the kernel's {BINPRM_BUF_SIZE}-byte buffer",
                        magic.len()
                    )));
                }
                Rule::Magic {
                    offset,
                    magic,
                    mask,
                }
            }
            (None, Some(ext)) if !ext.is_empty() => Rule::Extension(ext),
            (None, Some(_)) => return Err(bad("empty extension".into())),
            (Some(_), Some(_)) => return Err(bad("both magic and extension".into())),
            (None, None) => return Err(bad("neither magic nor extension".into())),
        };
        let arch = elf_arch(&rule);
        Ok(Handler {
            name: name.to_string(),
            enabled,
            interpreter,
            flags,
            rule,
            arch,
        })
    }

    /// First enabled handler that takes a file whose first bytes are `head` (at most
    /// BINPRM_BUF_SIZE are considered; shorter files are zero-padded like the kernel's buffer)
    /// and whose path is `filename` (for extension rules). None when `status` is disabled.
    pub fn matching(&self, head: &[u8], filename: &str) -> Option<&Handler> {
        if !self.enabled {
            return None;
        }
        let mut buf = [0u8; BINPRM_BUF_SIZE];
        let n = head.len().min(BINPRM_BUF_SIZE);
        buf[..n].copy_from_slice(&head[..n]);
        self.handlers
            .iter()
            .filter(|h| h.enabled)
            .find(|h| h.rule.matches(&buf, filename))
    }
}

impl Rule {
    fn matches(&self, buf: &[u8; BINPRM_BUF_SIZE], filename: &str) -> bool {
        match self {
            Rule::Magic {
                offset,
                magic,
                mask,
            } => {
                let Some(window) = buf.get(*offset..offset.saturating_add(magic.len())) else {
                    return false;
                };
                window
                    .iter()
                    .zip(magic)
                    .zip(mask)
                    .all(|((b, m), k)| (b ^ m) & k == 0)
            }
            // fs/binfmt_misc.c: the part after the last '.' of the last path component.
            Rule::Extension(ext) => {
                let base = filename.rsplit('/').next().unwrap_or(filename);
                base.rfind('.')
                    .map(|i| &base[i + 1..])
                    .is_some_and(|e| e == ext)
            }
        }
    }
}

/// Reads an entry, refusing more than 4 KiB (entries are a few hundred bytes).
fn read_small(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(path)?
        .take(4096)
        .read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The architecture an ELF-header pattern selects: class and data at bytes 4 and 5,
/// e_machine at 18..20, all under the mask.
fn elf_arch(rule: &Rule) -> Option<Arch> {
    let Rule::Magic {
        offset: 0,
        magic,
        mask,
    } = rule
    else {
        return None;
    };
    // A byte the mask ignores reads as zero (ppc64le's handler ignores e_machine's high byte).
    let byte = |i: usize| -> Option<u8> { Some(*magic.get(i)? & *mask.get(i)?) };
    let exact = |i: usize| mask.get(i) == Some(&0xff);
    if !(0..6).all(exact) || (0..4).map(byte).collect::<Option<Vec<u8>>>()? != b"\x7fELF" {
        return None;
    }
    let class = match byte(4)? {
        1 => Class::Elf32,
        2 => Class::Elf64,
        _ => return None,
    };
    let endian = match byte(5)? {
        1 => Endian::Little,
        2 => Endian::Big,
        _ => return None,
    };
    let (lo, hi) = (byte(18)?, byte(19)?);
    let machine = match endian {
        Endian::Little => u16::from_le_bytes([lo, hi]),
        Endian::Big => u16::from_be_bytes([lo, hi]),
    };
    Some(Arch::from_elf(machine, class, endian, 0, None))
}

impl Handler {
    /// `F`: the interpreter was opened at registration, so it works in any mount namespace.
    pub fn fix_binary(&self) -> bool {
        self.flags.contains('F')
    }

    /// The entry in the format the kernel prints under /proc/sys/fs/binfmt_misc.
    pub fn render(&self) -> String {
        let mut s = format!(
            "{}\ninterpreter {}\nflags: {}\n",
            if self.enabled { "enabled" } else { "disabled" },
            self.interpreter,
            self.flags
        );
        match &self.rule {
            Rule::Magic {
                offset,
                magic,
                mask,
            } => {
                s.push_str(&format!(
                    "offset {offset}\nmagic {}\nmask {}\n",
                    hex::encode(magic),
                    hex::encode(mask)
                ));
            }
            Rule::Extension(e) => s.push_str(&format!("extension .{e}\n")),
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The exact magic/mask strings Debian 12's qemu-user-static registers
    /// (/usr/share/binfmts/qemu-*), as the kernel prints them.
    pub(crate) const DEBIAN_QEMU: &[(&str, &str, &str, Arch)] = &[
        (
            "qemu-aarch64",
            "7f454c460201010000000000000000000200b700",
            "ffffffffffffff00fffffffffffffffffeffffff",
            Arch::Arm64,
        ),
        (
            "qemu-arm",
            "7f454c4601010100000000000000000002002800",
            "ffffffffffffff00fffffffffffffffffeffffff",
            Arch::Arm(None),
        ),
        (
            "qemu-s390x",
            "7f454c4602020100000000000000000000020016",
            "ffffffffffffff00fffffffffffffffffffeffff",
            Arch::S390x,
        ),
        (
            "qemu-ppc64le",
            "7f454c4602010100000000000000000002001500",
            "ffffffffffffff00fffffffffffffffffeffff00",
            Arch::Ppc64le,
        ),
        (
            "qemu-mips64el",
            "7f454c4602010100000000000000000002000800",
            "ffffffffffffff00fffffffffffffffffeffffff",
            Arch::Mips64le,
        ),
        (
            "qemu-riscv64",
            "7f454c460201010000000000000000000200f300",
            "ffffffffffffff00fffffffffffffffffeffffff",
            Arch::Riscv64,
        ),
    ];

    fn write_table(dir: &Path, status: &str, entries: &[(&str, String)]) {
        std::fs::write(dir.join("status"), status).unwrap();
        std::fs::write(dir.join("register"), "").unwrap();
        for (name, text) in entries {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }

    fn entry(magic: &str, mask: &str, flags: &str, enabled: bool) -> String {
        format!(
            "{}\ninterpreter /usr/libexec/qemu-binfmt/x-binfmt-P\nflags: {flags}\noffset 0\nmagic {magic}\nmask {mask}\n",
            if enabled { "enabled" } else { "disabled" }
        )
    }

    /// A 64-byte ELF header for (class, data, machine).
    fn header(class: u8, data: u8, machine: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = class;
        h[5] = data;
        h[6] = 1;
        let (t, m) = if data == 1 {
            (2u16.to_le_bytes(), machine.to_le_bytes())
        } else {
            (2u16.to_be_bytes(), machine.to_be_bytes())
        };
        h[16..18].copy_from_slice(&t);
        h[18..20].copy_from_slice(&m);
        h
    }

    #[test]
    fn debian_qemu_handlers_decode_and_match_exactly_their_arch() {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<(&str, String)> = DEBIAN_QEMU
            .iter()
            .map(|(n, m, k, _)| (*n, entry(m, k, "POCF", true)))
            .collect();
        write_table(dir.path(), "enabled\n", &entries);
        let (t, errs) = Table::read_dir(dir.path()).unwrap();
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(t.handlers.len(), DEBIAN_QEMU.len());
        for (name, _, _, arch) in DEBIAN_QEMU {
            let h = t.handlers.iter().find(|h| h.name == *name).unwrap();
            assert_eq!(h.arch, Some(*arch), "{name}");
            assert!(h.fix_binary());
        }
        let bins = [
            (header(2, 1, 183), Some("qemu-aarch64")),
            (header(1, 1, 40), Some("qemu-arm")),
            (header(2, 2, 22), Some("qemu-s390x")),
            (header(2, 1, 21), Some("qemu-ppc64le")),
            (header(2, 1, 8), Some("qemu-mips64el")),
            (header(2, 1, 243), Some("qemu-riscv64")),
            (header(2, 1, 62), None),
            (header(1, 1, 3), None),
            (b"#!/bin/sh\n".to_vec(), None),
        ];
        for (bin, want) in bins {
            assert_eq!(t.matching(&bin, "/app").map(|h| h.name.as_str()), want);
        }
        // ET_DYN (type 3) matches too: the mask's 0xfe clears the low bit of e_type.
        let mut pie = header(2, 1, 183);
        pie[16] = 3;
        assert!(t.matching(&pie, "/app").is_some());
        // The real amd64 binaries of this machine match no foreign handler.
        let native = std::fs::read("/bin/true").unwrap();
        assert!(t.matching(&native, "/bin/true").is_none());
    }

    #[test]
    fn disabled_entries_status_extension_offset_and_padding() {
        let (m, k) = (DEBIAN_QEMU[0].1, DEBIAN_QEMU[0].2);
        let dir = tempfile::tempdir().unwrap();
        write_table(
            dir.path(),
            "enabled\n",
            &[
                ("off", entry(m, k, "", false)),
                (
                    "dotnet",
                    "enabled\ninterpreter /usr/bin/mono\nflags: \nextension .exe\n".into(),
                ),
                (
                    "at4",
                    "enabled\ninterpreter /x\nflags: F\noffset 4\nmagic 41424344\n".into(),
                ),
            ],
        );
        let (t, errs) = Table::read_dir(dir.path()).unwrap();
        assert!(errs.is_empty());
        assert!(
            t.matching(&header(2, 1, 183), "/app").is_none(),
            "disabled entry"
        );
        assert_eq!(t.matching(b"MZ", "/srv/app.exe").unwrap().name, "dotnet");
        assert!(t.matching(b"MZ", "/srv.exe/app").is_none());
        assert!(t.matching(b"MZ", "/srv/app.exe.bak").is_none());
        assert_eq!(t.matching(b"....ABCD", "/a").unwrap().name, "at4");
        assert!(
            t.matching(b"....ABC", "/a").is_none(),
            "zero padding is not D"
        );
        write_table(dir.path(), "disabled\n", &[]);
        let (t, _) = Table::read_dir(dir.path()).unwrap();
        assert!(!t.enabled);
        assert!(
            t.matching(b"....ABCD", "/a").is_none(),
            "global status disabled"
        );
    }

    #[test]
    fn the_newest_registration_is_asked_first() {
        // Two handlers take the same binary; the later registration wins, whatever the
        // names. Registration time is the entry's mtime.
        let dir = tempfile::tempdir().unwrap();
        let (_, m, k, _) = DEBIAN_QEMU[0];
        write_table(
            dir.path(),
            "enabled\n",
            &[
                ("aaa-old", entry(m, k, "F", true)),
                ("zzz-new", entry(m, k, "F", true)),
            ],
        );
        let at = |name: &str, secs: u64| {
            let f = std::fs::File::options()
                .write(true)
                .open(dir.path().join(name))
                .unwrap();
            f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
                .unwrap();
        };
        at("aaa-old", 1_000);
        at("zzz-new", 2_000);
        let (t, _) = Table::read_dir(dir.path()).unwrap();
        let names: Vec<&str> = t.handlers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["zzz-new", "aaa-old"]);
        assert_eq!(
            t.matching(&header(2, 1, 183), "/app").unwrap().name,
            "zzz-new"
        );
        at("aaa-old", 3_000);
        let (t, _) = Table::read_dir(dir.path()).unwrap();
        assert_eq!(
            t.matching(&header(2, 1, 183), "/app").unwrap().name,
            "aaa-old"
        );
    }

    #[test]
    fn malformed_entries_are_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        write_table(
            dir.path(),
            "enabled\n",
            &[
                (
                    "badhex",
                    "enabled\ninterpreter /x\nflags: \noffset 0\nmagic 7fzz\n".into(),
                ),
                (
                    "odd",
                    "enabled\ninterpreter /x\nflags: \noffset 0\nmagic 7f4\n".into(),
                ),
                (
                    "masklen",
                    "enabled\ninterpreter /x\nflags: \noffset 0\nmagic 7f45\nmask ff\n".into(),
                ),
                (
                    "nointerp",
                    "enabled\nflags: \noffset 0\nmagic 7f45\n".into(),
                ),
                (
                    "far",
                    "enabled\ninterpreter /x\nflags: \noffset 255\nmagic 7f45\n".into(),
                ),
                ("good", entry(DEBIAN_QEMU[0].1, DEBIAN_QEMU[0].2, "F", true)),
            ],
        );
        let (t, errs) = Table::read_dir(dir.path()).unwrap();
        assert_eq!(t.handlers.len(), 1);
        assert_eq!(errs.len(), 5);
        assert!(errs.iter().all(|e| e.kind() == "binfmt_malformed"));
        let missing = Table::read_dir(&dir.path().join("nope")).unwrap_err();
        assert_eq!(missing.kind(), "binfmt_unreadable");
        let empty = tempfile::tempdir().unwrap();
        assert!(
            Table::read_dir(empty.path()).is_err(),
            "unmounted: empty dir"
        );
    }

    proptest! {
        #[test]
        fn parse_entry_never_panics(text in ".{0,400}") {
            let _ = Table::parse_entry("x", &text);
        }

        #[test]
        fn rendered_entries_parse_back(
            magic in proptest::collection::vec(any::<u8>(), 1..32),
            offset in 0usize..200,
            flags in "[POCF]{0,4}",
            enabled in any::<bool>(),
            mask_seed in any::<u8>(),
        ) {
            let mask: Vec<u8> = magic.iter().map(|b| b | mask_seed).collect();
            let h = Handler {
                name: "gen".into(),
                enabled,
                interpreter: "/usr/bin/qemu-x".into(),
                flags,
                rule: Rule::Magic { offset, magic, mask },
                arch: None,
            };
            let back = Table::parse_entry("gen", &h.render()).unwrap();
            prop_assert_eq!(back.rule, h.rule);
            prop_assert_eq!(back.enabled, h.enabled);
            prop_assert_eq!(back.flags, h.flags);
        }

        #[test]
        fn matching_never_panics(head in proptest::collection::vec(any::<u8>(), 0..400), offset in 0usize..256, len in 1usize..64) {
            let magic = vec![0x41u8; len];
            let t = Table { enabled: true, handlers: vec![Handler {
                name: "p".into(), enabled: true, interpreter: "/x".into(), flags: String::new(),
                rule: Rule::Magic { offset, mask: vec![0xff; magic.len()], magic }, arch: None,
            }]};
            let _ = t.matching(&head, "/a.b");
        }
    }
}
