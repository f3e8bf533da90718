//! Confined path resolution over a container root given as one directory or an overlay
//! stack of layer directories (top first), as the kernel sees the merged view.
//!
//! Invariant: nothing outside the given layer directories is ever opened, stat'ed or read;
//! nothing blocks (FIFOs and devices are never opened for reading).
//!
//! How: each layer directory is opened once; every lookup is one `openat2` relative to that
//! descriptor with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS` and
//! `O_PATH | O_NOFOLLOW`, so the kernel itself refuses to leave the layer or follow a link.
//! Symlinks are read (`readlinkat` on the link's own descriptor) and followed here, in the
//! merged view, re-anchored at the container root.
//!
//! Overlay semantics (as overlayfs shows the merged view): a char device 0/0 or a `.wh.NAME`
//! file hides NAME below; a directory marked opaque (`trusted.overlay.opaque=y`, or
//! `user.overlay.opaque=y`, or holding `.wh..wh..opq`) hides what lower layers have in it; a
//! non-directory hides a directory below it and a directory over a non-directory stops the
//! merge there.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use serde::Serialize;

use crate::source::{FileSource, Source};

/// Linux MAXSYMLINKS.
pub const MAX_SYMLINK_HOPS: usize = 40;

/// runc's default PATH when the spec has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Metadata of one entry of one layer, links not followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub kind: FileKind,
    pub mode: u32,
    pub size: u64,
    /// A character device 0/0: an overlay whiteout.
    pub whiteout: bool,
}

/// Where the layers' entries come from: directories on disk ([`Dirs`]) or image layer
/// archives (`verify`). Paths are relative to the layer root, symlink-free by construction.
pub trait Layers {
    /// What `stat` found, kept for `readlink` (a descriptor, an index).
    type Node;
    /// An open regular file.
    type File: Source;
    fn count(&self) -> usize;
    /// The entry at `rel` in `layer`, or `None` when the layer has nothing there.
    fn stat(&self, layer: usize, rel: &str) -> Result<Option<(Stat, Self::Node)>, RootfsError>;
    fn readlink(&self, layer: usize, rel: &str, node: &Self::Node) -> Result<Vec<u8>, RootfsError>;
    /// Whether the directory at `rel` in `layer` hides lower layers' content.
    fn opaque(&self, layer: usize, rel: &str) -> Result<bool, RootfsError>;
    /// Opens a regular file found by resolution.
    fn open(&self, entry: &Entry) -> Result<Self::File, RootfsError>;
    /// Mode of the root directory.
    fn root_mode(&self) -> u32 {
        0o755
    }
    /// A layer removed since the stack was opened (a snapshot deleted mid-inspection): what
    /// was read from it may be absence that is not the image's.
    fn vanished(&self) -> Option<String> {
        None
    }
}

/// A container root: layers, top first, seen as one merged tree.
#[derive(Debug)]
pub struct Stack<L> {
    layers: L,
}

/// Layer directories on disk (one directory is a one-layer stack).
#[derive(Debug)]
pub struct Dirs {
    paths: Vec<PathBuf>,
    fds: Vec<OwnedFd>,
    /// Per layer, the last directory found there whose path is [`KEEP_DIR_FROM`] bytes or more:
    /// the resolver walks one component at a time, so lookups below it start from it instead
    /// of from the layer's root (linear in the depth, not quadratic). Ordinary paths never
    /// fill it.
    last_dir: std::sync::Mutex<Vec<Option<(String, OwnedFd)>>>,
}

/// A container root on disk.
pub type Rootfs = Stack<Dirs>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    Regular,
    Directory,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// A file found in the merged view, all symlinks followed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Canonical path inside the container (absolute, no symlinks).
    pub path: String,
    /// Index of the layer that provides it (0 = top).
    pub layer: usize,
    pub kind: FileKind,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub size: u64,
}

/// One symlink followed during resolution.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Hop {
    /// Container path of the link.
    pub link: String,
    /// Its target as stored.
    pub target: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Resolved {
    Found {
        entry: Entry,
        hops: Vec<Hop>,
    },
    /// ENOENT: `missing` is the first container path that does not exist (after symlinks).
    NotFound {
        missing: String,
        hops: Vec<Hop>,
    },
    /// ENOTDIR: a non-directory was used as a directory.
    NotADirectory {
        at: String,
        hops: Vec<Hop>,
    },
    /// ELOOP: more than [`MAX_SYMLINK_HOPS`] symlinks.
    Loop {
        hops: Vec<Hop>,
    },
}

/// Result of looking up argv[0] the way runc does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExecLookup {
    /// What argv[0] resolved to: for a bare name, the first PATH entry that is an executable
    /// non-directory (Go's exec.LookPath), otherwise the last candidate's result.
    pub resolved: Resolved,
    /// Container paths tried in PATH order (empty when argv[0] contains a `/`).
    pub searched: Vec<String>,
    /// True when argv[0] was a bare name and no PATH entry qualified.
    pub path_exhausted: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("layer directory {path} cannot be opened: {source}")]
    Layer {
        path: String,
        source: std::io::Error,
    },
    #[error("reading {path} in layer {layer}: {source}")]
    Io {
        path: String,
        layer: usize,
        source: std::io::Error,
    },
    #[error("{path} is not a regular file")]
    NotRegular { path: String },
}

impl RootfsError {
    pub fn kind(&self) -> &'static str {
        match self {
            RootfsError::Layer { .. } => "layer_unreadable",
            RootfsError::Io { .. } => "io",
            RootfsError::NotRegular { .. } => "not_regular",
        }
    }
}

/// Longest symlink target accepted (PATH_MAX).
const MAX_LINK_LEN: usize = 4096;
/// Bound on components processed in one resolution (every hop adds at most PATH_MAX/2).
const MAX_COMPONENTS: usize = 64 * 1024;

fn resolve_flags() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

/// A directory of the merged view: its components and the layers that contribute to it.
#[derive(Clone, Debug)]
struct Dir {
    /// The path below the root without its leading `/` ("" for the root). One string, not a
    /// list of components: a 10,000-deep directory is cloned as one allocation.
    rel: String,
    layers: Vec<usize>,
    mode: u32,
}

impl Dir {
    fn path(&self) -> String {
        format!("/{}", self.rel)
    }
    fn rel(&self, name: &str) -> String {
        if self.rel.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.rel)
        }
    }
}

enum Child<N> {
    Missing,
    Dir(Dir),
    Other {
        layer: usize,
        kind: FileKind,
        mode: u32,
        size: u64,
        node: N,
    },
}

fn kind_of(ft: FileType) -> FileKind {
    match ft {
        FileType::RegularFile => FileKind::Regular,
        FileType::Directory => FileKind::Directory,
        FileType::Symlink => FileKind::Symlink,
        FileType::Fifo => FileKind::Fifo,
        FileType::Socket => FileKind::Socket,
        FileType::CharacterDevice => FileKind::CharDevice,
        FileType::BlockDevice => FileKind::BlockDevice,
        FileType::Unknown => FileKind::Regular,
    }
}

impl Rootfs {
    /// Layers top first. Each must be a directory; they are opened once (O_PATH|O_DIRECTORY).
    pub fn new(layers: Vec<PathBuf>) -> Result<Rootfs, RootfsError> {
        Ok(Stack {
            layers: Dirs::open(layers)?,
        })
    }

    pub fn layers(&self) -> &[PathBuf] {
        &self.layers.paths
    }

    /// Opens a found regular file for reading, confined to its layer (see [`Dirs`]).
    pub fn open_regular(&self, entry: &Entry) -> Result<File, RootfsError> {
        self.layers.open_regular(entry)
    }
}

/// A directory path this long is kept for the lookups below it (see `Dirs::last_dir`).
const KEEP_DIR_FROM: usize = 256;

/// Components per `openat2` call stay under this many bytes (PATH_MAX is 4096).
const OPEN_CHUNK: usize = 2048;

/// `openat2` beneath `base` (no symlinks, nothing above `base`) for a relative path of any
/// length: a path longer than PATH_MAX (an image can nest directories 10,000 deep) is walked
/// in chunks, each opened beneath the directory the previous one reached, with the same
/// confinement. `rel` holds no `..` (the resolver has already applied them).
fn openat2_deep(base: &OwnedFd, rel: &str, flags: OFlags) -> Result<OwnedFd, Errno> {
    if rel.len() < OPEN_CHUNK {
        return rustix::fs::openat2(base, rel, flags, Mode::empty(), resolve_flags());
    }
    let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
    let mut dir: Option<OwnedFd> = None;
    let mut i = 0;
    while i < comps.len() {
        let (mut j, mut len) = (i, 0);
        while j < comps.len() && (j == i || len + comps[j].len() + 1 < OPEN_CHUNK) {
            len += comps[j].len() + 1;
            j += 1;
        }
        let chunk = comps[i..j].join("/");
        let f = if j == comps.len() {
            flags
        } else {
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
        };
        let at = dir.as_ref().unwrap_or(base);
        dir = Some(rustix::fs::openat2(
            at,
            chunk.as_str(),
            f,
            Mode::empty(),
            resolve_flags(),
        )?);
        i = j;
    }
    dir.ok_or(Errno::NOENT)
}

impl Dirs {
    fn open(layers: Vec<PathBuf>) -> Result<Dirs, RootfsError> {
        let mut fds = Vec::with_capacity(layers.len());
        for l in &layers {
            let fd = rustix::fs::open(
                l,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| RootfsError::Layer {
                path: l.display().to_string(),
                source: e.into(),
            })?;
            fds.push(fd);
        }
        if layers.is_empty() {
            return Err(RootfsError::Layer {
                path: String::new(),
                source: std::io::Error::other("no layers given"),
            });
        }
        let last_dir = std::sync::Mutex::new(fds.iter().map(|_| None).collect());
        Ok(Dirs {
            paths: layers,
            fds,
            last_dir,
        })
    }
    /// Opens a found regular file for reading, confined to its layer (openat2 with
    /// RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS, O_NOFOLLOW|O_NONBLOCK) and re-checks with fstat that
    /// it is still a regular file. Callers read bounded amounts with `FileExt::read_at`.
    pub fn open_regular(&self, entry: &Entry) -> Result<File, RootfsError> {
        if entry.kind != FileKind::Regular {
            return Err(RootfsError::NotRegular {
                path: entry.path.clone(),
            });
        }
        let io = |e: Errno| RootfsError::Io {
            path: entry.path.clone(),
            layer: entry.layer,
            source: e.into(),
        };
        let layer_fd = self.fds.get(entry.layer).ok_or(RootfsError::NotRegular {
            path: entry.path.clone(),
        })?;
        let rel = entry.path.trim_start_matches('/');
        let fd = openat2_deep(
            layer_fd,
            rel,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        )
        .map_err(io)?;
        let st = rustix::fs::fstat(&fd).map_err(io)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(RootfsError::NotRegular {
                path: entry.path.clone(),
            });
        }
        Ok(File::from(fd))
    }

    /// `openat2_deep` of `rel` in `layer`, from the layer's last directory when `rel` is
    /// below it.
    fn open_from_last(&self, layer: usize, rel: &str, flags: OFlags) -> Result<OwnedFd, Errno> {
        let from_last = {
            let last = self.last_dir.lock().unwrap_or_else(|e| e.into_inner());
            match last.get(layer).and_then(|l| l.as_ref()) {
                Some((dir, fd))
                    if rel.len() > dir.len() + 1
                        && rel.starts_with(dir.as_str())
                        && rel.as_bytes()[dir.len()] == b'/' =>
                {
                    Some(openat2_deep(fd, &rel[dir.len() + 1..], flags))
                }
                Some((dir, fd)) if rel == dir => Some(openat2_deep(fd, ".", flags)),
                _ => None,
            }
        };
        match from_last {
            Some(r) => r,
            None => openat2_deep(&self.fds[layer], rel, flags),
        }
    }

    /// Opens `rel` in `layer` without following anything.
    fn open_in(&self, layer: usize, rel: &str) -> Result<Option<OwnedFd>, RootfsError> {
        match self.open_from_last(
            layer,
            rel,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        ) {
            Ok(fd) => Ok(Some(fd)),
            // Absent, or an ancestor in this layer is not a directory / is a link: the
            // layer has nothing at this path.
            Err(Errno::NOENT) | Err(Errno::NOTDIR) | Err(Errno::LOOP) | Err(Errno::XDEV) => {
                Ok(None)
            }
            Err(e) => Err(RootfsError::Io {
                path: format!("/{rel}"),
                layer,
                source: e.into(),
            }),
        }
    }

    fn exists_in(&self, layer: usize, rel: &str) -> Result<bool, RootfsError> {
        Ok(self.open_in(layer, rel)?.is_some())
    }

    fn opaque_dir(&self, layer: usize, rel: &str) -> Result<bool, RootfsError> {
        if self.exists_in(layer, &format!("{rel}/.wh..wh..opq"))? {
            return Ok(true);
        }
        let Ok(fd) = self.open_from_last(
            layer,
            rel,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        ) else {
            return Ok(false);
        };
        for name in ["trusted.overlay.opaque", "user.overlay.opaque"] {
            let mut buf = [0u8; 8];
            if let Ok(n) = rustix::fs::fgetxattr(&fd, name, &mut buf) {
                if buf[..n] == *b"y" {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

impl Layers for Dirs {
    type Node = OwnedFd;
    type File = FileSource;

    fn count(&self) -> usize {
        self.fds.len()
    }

    fn stat(&self, layer: usize, rel: &str) -> Result<Option<(Stat, OwnedFd)>, RootfsError> {
        let Some(fd) = self.open_in(layer, rel)? else {
            return Ok(None);
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| RootfsError::Io {
            path: format!("/{rel}"),
            layer,
            source: e.into(),
        })?;
        let ft = FileType::from_raw_mode(st.st_mode);
        // Only a deep directory is worth keeping: below it, the next lookups start from it
        // instead of walking the whole path again.
        if ft == FileType::Directory && rel.len() >= KEEP_DIR_FROM {
            if let Ok(dup) = fd.try_clone() {
                let mut last = self.last_dir.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(slot) = last.get_mut(layer) {
                    *slot = Some((rel.to_string(), dup));
                }
            }
        }
        let stat = Stat {
            kind: kind_of(ft),
            mode: st.st_mode & 0o7777,
            size: st.st_size.max(0) as u64,
            whiteout: ft == FileType::CharacterDevice && st.st_rdev == 0,
        };
        Ok(Some((stat, fd)))
    }

    fn readlink(&self, layer: usize, rel: &str, node: &OwnedFd) -> Result<Vec<u8>, RootfsError> {
        let t = rustix::fs::readlinkat(node, "", Vec::new()).map_err(|e| RootfsError::Io {
            path: format!("/{rel}"),
            layer,
            source: e.into(),
        })?;
        Ok(t.into_bytes())
    }

    fn opaque(&self, layer: usize, rel: &str) -> Result<bool, RootfsError> {
        self.opaque_dir(layer, rel)
    }

    fn open(&self, entry: &Entry) -> Result<FileSource, RootfsError> {
        Ok(FileSource::new(self.open_regular(entry)?, entry.size))
    }

    fn vanished(&self) -> Option<String> {
        // Removed: an open directory that has been deleted reports no links, and containerd
        // renames a snapshot away before deleting its files, so the path no longer names the
        // directory that was opened.
        let gone = |fd: &OwnedFd, path: &PathBuf| {
            let Ok(open) = rustix::fs::fstat(fd) else {
                return true;
            };
            let now = rustix::fs::stat(path);
            open.st_nlink == 0
                || !now.is_ok_and(|n| (n.st_dev, n.st_ino) == (open.st_dev, open.st_ino))
        };
        self.fds
            .iter()
            .zip(&self.paths)
            .find(|(fd, p)| gone(fd, p))
            .map(|(_, p)| p.display().to_string())
    }

    fn root_mode(&self) -> u32 {
        self.fds
            .first()
            .and_then(|fd| rustix::fs::fstat(fd).ok())
            .map(|s| s.st_mode & 0o7777)
            .unwrap_or(0o755)
    }
}

impl<L: Layers> Stack<L> {
    /// A stack over any layer source.
    pub fn from_layers(layers: L) -> Stack<L> {
        Stack { layers }
    }

    pub fn backend(&self) -> &L {
        &self.layers
    }

    /// Resolves `path` (absolute, or relative to `cwd`) following every symlink, including a
    /// trailing one, re-anchored at the container root; `..` never climbs above it.
    pub fn resolve(&self, path: &str, cwd: &str) -> Result<Resolved, RootfsError> {
        self.walk(path, cwd, true)
    }

    /// Like [`Rootfs::resolve`] but does not follow a trailing symlink.
    pub fn resolve_nofollow(&self, path: &str, cwd: &str) -> Result<Resolved, RootfsError> {
        self.walk(path, cwd, false)
    }

    /// runc's argv[0] lookup: a name with `/` is resolved as is (relative to `cwd`); a bare name
    /// is searched in `path_env` (default [`DEFAULT_PATH`]; an empty element means `cwd`).
    pub fn lookup_exec(
        &self,
        argv0: &str,
        path_env: Option<&str>,
        cwd: &str,
    ) -> Result<ExecLookup, RootfsError> {
        if argv0.contains('/') {
            return Ok(ExecLookup {
                resolved: self.resolve(argv0, cwd)?,
                searched: Vec::new(),
                path_exhausted: false,
            });
        }
        let mut searched = Vec::new();
        let mut best: Option<Resolved> = None;
        for dir in path_env.unwrap_or(DEFAULT_PATH).split(':') {
            let candidate = if dir.is_empty() {
                format!("{}/{argv0}", cwd.trim_end_matches('/'))
            } else {
                format!("{}/{argv0}", dir.trim_end_matches('/'))
            };
            let r = self.resolve(&candidate, cwd)?;
            searched.push(candidate);
            match &r {
                Resolved::Found { entry, .. }
                    if entry.kind != FileKind::Directory && entry.mode & 0o111 != 0 =>
                {
                    return Ok(ExecLookup {
                        resolved: r,
                        searched,
                        path_exhausted: false,
                    });
                }
                Resolved::Found { .. } => {
                    if !matches!(best, Some(Resolved::Found { .. })) {
                        best = Some(r);
                    }
                }
                _ => {
                    if best.is_none() {
                        best = Some(r);
                    }
                }
            }
        }
        let resolved = best.unwrap_or(Resolved::NotFound {
            missing: argv0.to_string(),
            hops: Vec::new(),
        });
        Ok(ExecLookup {
            resolved,
            searched,
            path_exhausted: true,
        })
    }

    /// Opens a regular file found by resolution, for bounded reads.
    pub fn open_file(&self, entry: &Entry) -> Result<L::File, RootfsError> {
        if entry.kind != FileKind::Regular {
            return Err(RootfsError::NotRegular {
                path: entry.path.clone(),
            });
        }
        self.layers.open(entry)
    }

    fn root_dir(&self) -> Dir {
        Dir {
            rel: String::new(),
            layers: (0..self.layers.count()).collect(),
            mode: self.layers.root_mode(),
        }
    }

    /// Looks `name` up in the merged directory `dir`.
    fn child(&self, dir: &Dir, name: &str) -> Result<Child<L::Node>, RootfsError> {
        if name.starts_with(".wh.") {
            return Ok(Child::Missing);
        }
        let rel = dir.rel(name);
        let mut merged: Option<Dir> = None;
        for &layer in &dir.layers {
            let (st, node) = match self.layers.stat(layer, &rel)? {
                Some(x) => x,
                None => {
                    if self
                        .layers
                        .stat(layer, &dir.rel(&format!(".wh.{name}")))?
                        .is_some()
                    {
                        break;
                    }
                    continue;
                }
            };
            if st.whiteout {
                break;
            }
            if st.kind == FileKind::Directory {
                let d = merged.get_or_insert_with(|| Dir {
                    rel: rel.clone(),
                    layers: Vec::new(),
                    mode: st.mode,
                });
                d.layers.push(layer);
                if self.layers.opaque(layer, &rel)? {
                    break;
                }
                continue;
            }
            if merged.is_some() {
                // A non-directory below a directory is hidden and stops the merge.
                break;
            }
            return Ok(Child::Other {
                layer,
                kind: st.kind,
                mode: st.mode,
                size: st.size,
                node,
            });
        }
        Ok(merged.map_or(Child::Missing, Child::Dir))
    }

    fn walk(&self, path: &str, cwd: &str, follow_last: bool) -> Result<Resolved, RootfsError> {
        use std::collections::VecDeque;
        let mut queue: VecDeque<String> = VecDeque::new();
        if !path.starts_with('/') {
            queue.extend(cwd.split('/').map(str::to_string));
        }
        queue.extend(path.split('/').map(str::to_string));
        let mut stack = vec![self.root_dir()];
        let mut hops: Vec<Hop> = Vec::new();
        let mut processed = 0usize;
        // The last thing resolved when it is not a directory.
        while let Some(comp) = queue.pop_front() {
            processed += 1;
            if processed > MAX_COMPONENTS {
                return Ok(Resolved::Loop { hops });
            }
            if comp.is_empty() || comp == "." {
                continue;
            }
            if comp == ".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            let dir = stack.last().cloned().unwrap_or_else(|| self.root_dir());
            let more = queue.iter().any(|c| !c.is_empty() && c != ".");
            let trailing_slash = !more && !queue.is_empty();
            match self.child(&dir, &comp)? {
                Child::Missing => {
                    let missing = format!("/{}", dir.rel(&comp));
                    return Ok(Resolved::NotFound { missing, hops });
                }
                Child::Dir(d) => stack.push(d),
                Child::Other {
                    kind: FileKind::Symlink,
                    node,
                    layer,
                    ..
                } if more || follow_last || trailing_slash => {
                    let link = format!("{}/{comp}", dir.path().trim_end_matches('/'));
                    if hops.len() >= MAX_SYMLINK_HOPS {
                        return Ok(Resolved::Loop { hops });
                    }
                    let rel = dir.rel(&comp);
                    let target = self.layers.readlink(layer, &rel, &node)?;
                    let target = target.as_slice();
                    if target.len() > MAX_LINK_LEN || target.is_empty() {
                        return Ok(Resolved::NotFound {
                            missing: link,
                            hops,
                        });
                    }
                    let target = String::from_utf8_lossy(target).into_owned();
                    hops.push(Hop {
                        link,
                        target: target.clone(),
                    });
                    if target.starts_with('/') {
                        stack.truncate(1);
                    }
                    for c in target.split('/').rev() {
                        queue.push_front(c.to_string());
                    }
                }
                Child::Other {
                    layer,
                    kind,
                    mode,
                    size,
                    ..
                } => {
                    let at = format!("{}/{comp}", dir.path().trim_end_matches('/'));
                    if more || trailing_slash {
                        return Ok(Resolved::NotADirectory { at, hops });
                    }
                    return Ok(Resolved::Found {
                        entry: Entry {
                            path: at,
                            layer,
                            kind,
                            mode,
                            size,
                        },
                        hops,
                    });
                }
            }
        }
        let d = stack.last().cloned().unwrap_or_else(|| self.root_dir());
        Ok(Resolved::Found {
            entry: Entry {
                path: d.path(),
                layer: d.layers.first().copied().unwrap_or(0),
                kind: FileKind::Directory,
                mode: d.mode,
                size: 0,
            },
            hops,
        })
    }
}

#[cfg(test)]
mod tests;
