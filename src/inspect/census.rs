//! Every executable of the image, not only argv[0]: the regular files with an execute bit
//! in the PATH directories, and the programs the entrypoint chain names. Headers only: the
//! first [`HEAD_BYTES`] of each (the ELF identification and `e_machine`), at most
//! [`MAX_FILES`] files. An ELF executable of another architecture is what a
//! `RUN curl -L …/tool-linux-amd64` in an arm64 build leaves, which no metadata shows.

use crate::platform::{Arch, Class, Endian, Nativity, Node};
use crate::rootfs::{self, Entry, FileKind, Layers, Resolved, Stack};

use super::{Finding, InspectError, Inspection, Suspect, Verdict};

/// Files whose header is read, at most.
pub const MAX_FILES: usize = 8192;
/// Bytes read of each: the ELF header's first 20 bytes name the machine.
pub const HEAD_BYTES: usize = 20;
/// Names listed per directory, at most.
const MAX_NAMES: usize = 16 * 1024;
/// Foreign files named in the finding.
const NAMED: usize = 10;
/// Foreign files kept as suspects (to explain a 126/127 exit).
const SUSPECTS: usize = 3;

/// What the census found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// Executable regular files whose header was read.
    pub files: usize,
    /// ELF executables another machine's (path, arch), in PATH order.
    pub foreign: Vec<(String, Arch)>,
    pub bytes_read: u64,
    /// More files than [`MAX_FILES`]: the rest were not read.
    pub capped: bool,
}

/// Reads the headers of the executables in `path_env`'s directories (runc's default PATH
/// when `None`) and of `named` (container paths).
pub fn census<L: Layers>(
    root: &Stack<L>,
    path_env: Option<&str>,
    named: &[String],
    node: &Node,
) -> Result<Census, InspectError> {
    let mut candidates: Vec<String> = named.to_vec();
    let mut dirs: Vec<&str> = Vec::new();
    for d in path_env.unwrap_or(rootfs::DEFAULT_PATH).split(':') {
        if d.starts_with('/') && !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    for d in dirs {
        if let Some(names) = root.list_dir(d, MAX_NAMES)? {
            let d = d.trim_end_matches('/');
            candidates.extend(names.into_iter().map(|n| format!("{d}/{n}")));
        }
    }
    let mut c = Census::default();
    let mut seen = std::collections::HashSet::new();
    let mut entries: Vec<Entry> = Vec::new();
    for p in candidates {
        let Resolved::Found { entry, .. } = root.resolve(&p, "/")? else {
            continue;
        };
        if entry.kind != FileKind::Regular || entry.mode & 0o111 == 0 {
            continue;
        }
        if !seen.insert(entry.path.clone()) {
            continue;
        }
        if entries.len() >= MAX_FILES {
            c.capped = true;
            break;
        }
        entries.push(entry);
    }
    let heads = root.heads(&entries, HEAD_BYTES)?;
    c.files = entries.len();
    for (e, head) in entries.iter().zip(heads) {
        c.bytes_read += head.len() as u64;
        let Some(arch) = elf_arch(&head) else {
            continue;
        };
        if node.nativity(arch) == Nativity::Foreign {
            c.foreign.push((e.path.clone(), arch));
        }
    }
    Ok(c)
}

/// The machine an ELF identification and header start name.
fn elf_arch(h: &[u8]) -> Option<Arch> {
    if h.len() < 20 || !h.starts_with(b"\x7fELF") {
        return None;
    }
    let class = match h[4] {
        1 => Class::Elf32,
        2 => Class::Elf64,
        _ => return None,
    };
    let (endian, machine) = match h[5] {
        1 => (Endian::Little, u16::from_le_bytes([h[18], h[19]])),
        2 => (Endian::Big, u16::from_be_bytes([h[18], h[19]])),
        _ => return None,
    };
    Some(Arch::from_elf(machine, class, endian, 0, None))
}

impl Inspection {
    /// Adds what a census found: the `foreign_executables` finding and, for an exit a
    /// shell gives when its exec fails, the first foreign files as suspects.
    pub fn add_census(&mut self, c: &Census) {
        self.bytes_read += c.bytes_read;
        // The files of the chain are judged by the verdict already: the finding is about the
        // others.
        let foreign: Vec<&(String, Arch)> = c
            .foreign
            .iter()
            .filter(|(p, _)| !self.chain.iter().any(|s| s.resolved.as_deref() == Some(p)))
            .collect();
        if foreign.is_empty() {
            return;
        }
        let named: Vec<String> = foreign
            .iter()
            .take(NAMED)
            .map(|(p, a)| format!("{p} (linux/{a})"))
            .collect();
        let more = foreign.len().saturating_sub(NAMED);
        self.findings.push(Finding {
            code: "foreign_executables",
            detail: format!(
                "{} of the {} executables in the image's PATH and entrypoint chain are for another architecture than linux/{}: {}{}",
                foreign.len(),
                c.files,
                self.node_arch,
                named.join(", "),
                if more > 0 { format!(" and {more} more") } else { String::new() }
            ),
        });
        for (p, a) in foreign.into_iter().take(SUSPECTS) {
            self.suspects.push(Suspect {
                program: p.clone(),
                verdict: Verdict::ArchMismatch,
                cause: format!("{p} in the image is a linux/{a} binary and this node is linux/{}", self.node_arch),
                fix: format!("Fix the build step that put the linux/{a} {p} in the image (a download for the build machine's arch instead of $TARGETARCH?)."),
                symptom: Verdict::ArchMismatch.symptom(),
                binary_arch: Some(*a),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::elf::tests::craft;
    use crate::rootfs::{Access, Resolver, Rootfs};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn foreign_executables_in_path_are_found_by_their_headers() {
        let top = tempfile::tempdir().unwrap();
        let low = tempfile::tempdir().unwrap();
        let put = |dir: &std::path::Path, rel: &str, bytes: Vec<u8>, mode: u32| {
            let p = dir.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, bytes).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        put(
            low.path(),
            "usr/bin/native",
            craft(62, true, true, None),
            0o755,
        );
        put(
            low.path(),
            "usr/bin/tool",
            craft(183, true, true, None),
            0o755,
        );
        put(
            low.path(),
            "usr/bin/hidden",
            craft(183, true, true, None),
            0o755,
        );
        put(
            low.path(),
            "usr/bin/data",
            craft(183, true, true, None),
            0o644,
        );
        put(low.path(), "usr/bin/script", b"#!/bin/sh\n".to_vec(), 0o755);
        put(top.path(), "usr/bin/.wh.hidden", Vec::new(), 0o644);
        put(
            top.path(),
            "usr/local/bin/kubectl",
            craft(183, true, true, None),
            0o755,
        );
        put(
            top.path(),
            "opt/app/helper",
            craft(20, true, false, None),
            0o755,
        );
        std::os::unix::fs::symlink("usr/bin", top.path().join("bin")).unwrap();
        let root = Rootfs::with_access(
            vec![top.path().to_path_buf(), low.path().to_path_buf()],
            Access {
                resolver: Resolver::Openat2,
                overlay_xattrs_readable: true,
            },
        )
        .unwrap();
        let c = census(
            &root,
            Some("/usr/local/bin:/usr/bin:/bin"),
            &["/opt/app/helper".to_string()],
            &Node::with_arch(Arch::Amd64),
        )
        .unwrap();
        let foreign: Vec<&str> = c.foreign.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            foreign,
            ["/opt/app/helper", "/usr/local/bin/kubectl", "/usr/bin/tool"]
        );
        // native, tool, kubectl, helper (ppc64 big-endian) and the script; /bin is /usr/bin.
        assert_eq!(c.files, 5);
        assert_eq!(c.bytes_read, 5 * HEAD_BYTES as u64 - (20 - 10));
        assert!(!c.capped);
    }
}
