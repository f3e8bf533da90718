//! Confined path resolution over a container root given as one directory or an overlay
//! stack of layer directories (top first), as the kernel sees the merged view.
//!
//! Invariant: nothing outside the given layer directories is ever opened, stat'ed or read;
//! nothing blocks (FIFOs and devices are never opened for reading).
//!
//! How: each layer directory is opened once; every lookup is relative to that descriptor,
//! `O_PATH | O_NOFOLLOW`, through a [`Resolver`] that never leaves the layer nor follows a
//! link: one `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` where the
//! kernel allows it, one `openat` per component where it does not (see [`beneath`]); both
//! give the same answers. Symlinks are read (`readlinkat` on the link's own descriptor) and
//! followed here, in the merged view, re-anchored at the container root.
//!
//! Overlay semantics (as overlayfs shows the merged view): a char device 0/0 or a `.wh.NAME`
//! file hides NAME below; a directory marked opaque (`trusted.overlay.opaque=y`, or
//! `user.overlay.opaque=y`, or holding `.wh..wh..opq`) hides what lower layers have in it; a
//! non-directory hides a directory below it and a directory over a non-directory stops the
//! merge there. A process that cannot read `trusted.*` attributes (no CAP_SYS_ADMIN, see
//! [`xattrs`]) cannot tell whether a directory is opaque by its attribute: an answer taken
//! from a layer below such a directory is kept, and noted as [`Unsure`].

pub mod beneath;
pub mod creds;
pub mod xattrs;

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Mutex;

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;

use serde::Serialize;

use crate::source::{FileSource, Source};
pub use beneath::Resolver;
pub use creds::{Caps, Creds, Want};

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
    pub uid: u32,
    pub gid: u32,
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
    /// Like [`Layers::opaque`], for a source that may not be able to tell.
    fn opacity(&self, layer: usize, rel: &str) -> Result<Opacity, RootfsError> {
        Ok(if self.opaque(layer, rel)? {
            Opacity::Opaque
        } else {
            Opacity::Transparent
        })
    }
    /// How a layer is named in reports.
    fn layer_name(&self, layer: usize) -> String {
        format!("layer {layer}")
    }
    /// Opens a regular file found by resolution.
    fn open(&self, entry: &Entry) -> Result<Self::File, RootfsError>;
    /// Whether a merged directory's lower layers are looked at only when a lookup in the
    /// layers above does not decide: for sources where a layer costs a read of its whole
    /// blob (image archives), so a lower layer is never read for paths the upper ones hold.
    fn lazy_merge(&self) -> bool {
        false
    }
    /// The names in the directory at `rel` of `layer` (whiteout markers included), at most
    /// `max`.
    fn list(&self, layer: usize, rel: &str, max: usize) -> Result<Vec<String>, RootfsError>;
    /// The first `len` bytes of each of `entries` (regular files found by resolution).
    fn heads(&self, entries: &[Entry], len: usize) -> Result<Vec<Vec<u8>>, RootfsError> {
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let f = self.open(e)?;
            out.push(
                crate::source::read_vec(&f, 0, len).map_err(|source| RootfsError::Io {
                    path: e.path.clone(),
                    layer: e.layer,
                    source,
                })?,
            );
        }
        Ok(out)
    }
    /// Mode of the root directory.
    fn root_mode(&self) -> u32 {
        0o755
    }
    /// Owner (uid, gid) of the root directory.
    fn root_owner(&self) -> (u32, u32) {
        (0, 0)
    }
    /// A layer removed since the stack was opened (a snapshot deleted mid-inspection): what
    /// was read from it may be absence that is not the image's.
    fn vanished(&self) -> Option<String> {
        None
    }
}

/// Whether a directory of one layer hides what lower layers have at its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opacity {
    Opaque,
    Transparent,
    /// No marker this process can read says so, and one it cannot read may.
    Unknown,
}

/// An answer taken from a layer that an opaque directory above it might hide: the directory
/// carries no marker this process can read, and may carry `trusted.overlay.opaque`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsure {
    /// Container path of the directory whose opacity is unknown.
    pub dir: String,
    /// The layer holding that directory (its report name).
    pub dir_layer: String,
    /// Container path whose answer came from below it.
    pub path: String,
    /// The layer that answered (its report name).
    pub from_layer: String,
}

impl std::fmt::Display for Unsure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} was taken from {}, below the directory {} of {}, which may be opaque (trusted.overlay.opaque cannot be read without CAP_SYS_ADMIN): if it is, {} does not exist in the container",
            self.path, self.from_layer, self.dir, self.dir_layer, self.path
        )
    }
}

/// A container root: layers, top first, seen as one merged tree.
#[derive(Debug)]
pub struct Stack<L> {
    layers: L,
    /// When set, every lookup checks it (per path component, per layer) and the walk stops
    /// with [`RootfsError::Deadline`] past it, so a budget stops the work, not just the wait.
    deadline: Option<std::time::Instant>,
    /// Answers taken through directories of unknown opacity, since the last
    /// [`Stack::take_unsure`].
    unsure: Mutex<Vec<Unsure>>,
}

/// How this process reads layer directories: decided once per process ([`Access::process`]),
/// or given (tests, both resolvers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Access {
    pub resolver: Resolver,
    /// Whether `trusted.overlay.opaque` can be read (CAP_SYS_ADMIN).
    pub overlay_xattrs_readable: bool,
}

impl Access {
    /// This process's: the resolver from [`beneath::choice`], the attribute visibility from
    /// [`xattrs::visibility`].
    pub fn process() -> Access {
        Access {
            resolver: beneath::choice().resolver,
            overlay_xattrs_readable: xattrs::visibility().readable,
        }
    }
}

/// Layer directories on disk (one directory is a one-layer stack).
#[derive(Debug)]
pub struct Dirs {
    paths: Vec<PathBuf>,
    fds: Vec<OwnedFd>,
    access: Access,
    /// Per layer, the last directory found there whose path is [`KEEP_DIR_FROM`] bytes or more:
    /// the resolver walks one component at a time, so lookups below it start from it instead
    /// of from the layer's root (linear in the depth, not quadratic). Ordinary paths never
    /// fill it.
    last_dir: Mutex<Vec<Option<(String, OwnedFd)>>>,
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
    pub uid: u32,
    pub gid: u32,
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
    /// EACCES: the directory `at` (its mode and owner given) may not be searched by the
    /// user the lookup was made for.
    Denied {
        at: String,
        mode: u32,
        uid: u32,
        gid: u32,
        hops: Vec<Hop>,
    },
}

impl Resolved {
    /// The symlinks followed, whatever the outcome.
    pub fn into_hops(self) -> Vec<Hop> {
        match self {
            Resolved::Found { hops, .. }
            | Resolved::NotFound { hops, .. }
            | Resolved::NotADirectory { hops, .. }
            | Resolved::Loop { hops }
            | Resolved::Denied { hops, .. } => hops,
        }
    }
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
    /// With [`LookupStyle::Execvp`]: some candidate was refused with EACCES (the caller
    /// then fails with "permission denied", not "not found").
    pub denied: bool,
}

/// How a bare name is looked up in PATH.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupStyle {
    /// runc's `exec.LookPath` (Go before 1.20, as the runc of Debian 12): the first
    /// candidate that is a non-directory with any execute bit, whoever may exec it.
    Runc,
    /// A shell's or libc's `execvp`: each candidate is exec'd in turn; one refused with
    /// EACCES (not executable by the user, or in a directory it cannot search) is passed
    /// over and remembered.
    Execvp,
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
    /// The inspection's time budget ran out in the middle of the walk.
    #[error("the time budget ran out while resolving paths")]
    Deadline,
}

impl RootfsError {
    pub fn kind(&self) -> &'static str {
        match self {
            RootfsError::Layer { .. } => "layer_unreadable",
            RootfsError::Io { .. } => "io",
            RootfsError::NotRegular { .. } => "not_regular",
            RootfsError::Deadline => "inspection_timeout",
        }
    }
}

/// Longest symlink target accepted (PATH_MAX).
const MAX_LINK_LEN: usize = 4096;
/// Bound on components processed in one resolution (every hop adds at most PATH_MAX/2).
const MAX_COMPONENTS: usize = 64 * 1024;

/// A directory of the merged view: its components and the layers that contribute to it.
#[derive(Clone, Debug)]
struct Dir {
    /// The path below the root without its leading `/` ("" for the root). One string, not a
    /// list of components: a 10,000-deep directory is cloned as one allocation.
    rel: String,
    layers: Vec<usize>,
    mode: u32,
    uid: u32,
    gid: u32,
    /// The first `certain` of `layers` surely contribute; the rest do only if the directory
    /// named in `unsure_of` (path, layer) is not opaque, which could not be read.
    certain: usize,
    unsure_of: Option<(String, usize)>,
    /// `layers` stops at the first layer that holds the directory (lazy merge): the layers
    /// below were not looked at.
    partial: bool,
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
        uid: u32,
        gid: u32,
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
    /// Read the way this process can ([`Access::process`]).
    pub fn new(layers: Vec<PathBuf>) -> Result<Rootfs, RootfsError> {
        Rootfs::with_access(layers, Access::process())
    }

    /// Like [`Rootfs::new`], with a given resolver and attribute visibility.
    pub fn with_access(layers: Vec<PathBuf>, access: Access) -> Result<Rootfs, RootfsError> {
        Ok(Stack::from_layers(Dirs::open(layers, access)?))
    }

    pub fn access(&self) -> Access {
        self.layers.access
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

impl Dirs {
    fn open(layers: Vec<PathBuf>, access: Access) -> Result<Dirs, RootfsError> {
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
        let last_dir = Mutex::new(fds.iter().map(|_| None).collect());
        Ok(Dirs {
            paths: layers,
            fds,
            access,
            last_dir,
        })
    }
    /// Opens a found regular file for reading, confined to its layer by the same resolver,
    /// no symlink followed (the last component included). What is opened for reading has
    /// first been seen, through an `O_PATH` descriptor, to be a regular file, so a FIFO or a
    /// device put where the resolution found a file is never opened for reading; the file
    /// opened (O_NOFOLLOW|O_NONBLOCK|O_NOCTTY) must then be that same regular file. Callers
    /// read bounded amounts with `FileExt::read_at`.
    pub fn open_regular(&self, entry: &Entry) -> Result<File, RootfsError> {
        let not_regular = || RootfsError::NotRegular {
            path: entry.path.clone(),
        };
        if entry.kind != FileKind::Regular {
            return Err(not_regular());
        }
        let io = |e: Errno| RootfsError::Io {
            path: entry.path.clone(),
            layer: entry.layer,
            source: e.into(),
        };
        let layer_fd = self.fds.get(entry.layer).ok_or_else(not_regular)?;
        let rel = entry.path.trim_start_matches('/');
        let (parent, name) = match rel.rsplit_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, rel),
        };
        let parent = match parent {
            Some(p) => Some(
                self.open_beneath(
                    layer_fd.as_fd(),
                    p,
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                )
                .map_err(io)?,
            ),
            None => None,
        };
        let at = parent.as_ref().map_or(layer_fd.as_fd(), |d| d.as_fd());
        let seen = self
            .open_beneath(at, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC)
            .map_err(io)?;
        let seen = rustix::fs::fstat(&seen).map_err(io)?;
        if FileType::from_raw_mode(seen.st_mode) != FileType::RegularFile {
            return Err(not_regular());
        }
        let fd = self
            .open_beneath(
                at,
                name,
                OFlags::RDONLY
                    | OFlags::NOFOLLOW
                    | OFlags::NONBLOCK
                    | OFlags::CLOEXEC
                    | OFlags::NOCTTY,
            )
            .map_err(io)?;
        let st = rustix::fs::fstat(&fd).map_err(io)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
            || (st.st_dev, st.st_ino) != (seen.st_dev, seen.st_ino)
        {
            return Err(not_regular());
        }
        Ok(File::from(fd))
    }

    fn open_beneath(
        &self,
        base: std::os::fd::BorrowedFd<'_>,
        rel: &str,
        flags: OFlags,
    ) -> Result<OwnedFd, Errno> {
        self.access.resolver.open(base, rel, flags)
    }

    /// Opens `rel` in `layer` beneath the layer, from the layer's last directory when `rel` is
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
                    Some(self.open_beneath(fd.as_fd(), &rel[dir.len() + 1..], flags))
                }
                Some((dir, fd)) if rel == dir => Some(self.open_beneath(fd.as_fd(), ".", flags)),
                _ => None,
            }
        };
        match from_last {
            Some(r) => r,
            None => self.open_beneath(self.fds[layer].as_fd(), rel, flags),
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
            // layer has nothing at this path. A name longer than NAME_MAX (a `.wh.` marker
            // for a 252-byte name) cannot be in it either.
            Err(Errno::NOENT)
            | Err(Errno::NOTDIR)
            | Err(Errno::LOOP)
            | Err(Errno::XDEV)
            | Err(Errno::NAMETOOLONG) => Ok(None),
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

    fn opaque_dir(&self, layer: usize, rel: &str) -> Result<Opacity, RootfsError> {
        // What a process without CAP_SYS_ADMIN cannot see: the kernel answers ENODATA, as for
        // a directory that is not opaque.
        let unseen = if self.access.overlay_xattrs_readable {
            Opacity::Transparent
        } else {
            Opacity::Unknown
        };
        if self.exists_in(layer, &format!("{rel}/.wh..wh..opq"))? {
            return Ok(Opacity::Opaque);
        }
        let Ok(fd) = self.open_from_last(
            layer,
            rel,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        ) else {
            return Ok(unseen);
        };
        let names: &[&str] = if self.access.overlay_xattrs_readable {
            &["trusted.overlay.opaque", "user.overlay.opaque"]
        } else {
            &["user.overlay.opaque"]
        };
        for name in names {
            let mut buf = [0u8; 8];
            if let Ok(n) = rustix::fs::fgetxattr(&fd, *name, &mut buf) {
                if buf[..n] == *b"y" {
                    return Ok(Opacity::Opaque);
                }
            }
        }
        Ok(unseen)
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
            uid: st.st_uid,
            gid: st.st_gid,
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
        Ok(self.opaque_dir(layer, rel)? == Opacity::Opaque)
    }

    fn opacity(&self, layer: usize, rel: &str) -> Result<Opacity, RootfsError> {
        self.opaque_dir(layer, rel)
    }

    fn layer_name(&self, layer: usize) -> String {
        match self.paths.get(layer) {
            Some(p) => format!("layer {layer} ({})", p.display()),
            None => format!("layer {layer}"),
        }
    }

    fn open(&self, entry: &Entry) -> Result<FileSource, RootfsError> {
        Ok(FileSource::new(self.open_regular(entry)?, entry.size))
    }

    fn list(&self, layer: usize, rel: &str, max: usize) -> Result<Vec<String>, RootfsError> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let at = if rel.is_empty() { "." } else { rel };
        let fd = match self.open_from_last(layer, at, flags) {
            Ok(fd) => fd,
            Err(Errno::NOENT) | Err(Errno::NOTDIR) | Err(Errno::LOOP) | Err(Errno::XDEV) => {
                return Ok(Vec::new())
            }
            Err(e) => {
                return Err(RootfsError::Io {
                    path: format!("/{rel}"),
                    layer,
                    source: e.into(),
                })
            }
        };
        let io = |e: Errno| RootfsError::Io {
            path: format!("/{rel}"),
            layer,
            source: e.into(),
        };
        let mut dir = rustix::fs::Dir::read_from(&fd).map_err(io)?;
        let mut names = Vec::new();
        while let Some(ent) = dir.read() {
            let ent = ent.map_err(io)?;
            let name = ent.file_name().to_string_lossy().into_owned();
            if name == "." || name == ".." {
                continue;
            }
            if names.len() >= max {
                break;
            }
            names.push(name);
        }
        Ok(names)
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

    fn root_owner(&self) -> (u32, u32) {
        self.fds
            .first()
            .and_then(|fd| rustix::fs::fstat(fd).ok())
            .map(|s| (s.st_uid, s.st_gid))
            .unwrap_or((0, 0))
    }
}

impl<L: Layers> Stack<L> {
    /// A stack over any layer source.
    pub fn from_layers(layers: L) -> Stack<L> {
        Stack {
            layers,
            deadline: None,
            unsure: Mutex::new(Vec::new()),
        }
    }

    /// Gives the stack a deadline: lookups after it fail with [`RootfsError::Deadline`].
    pub fn with_deadline(mut self, deadline: std::time::Instant) -> Stack<L> {
        self.deadline = Some(deadline);
        self
    }

    fn check_deadline(&self) -> Result<(), RootfsError> {
        match self.deadline {
            Some(d) if std::time::Instant::now() > d => Err(RootfsError::Deadline),
            _ => Ok(()),
        }
    }

    /// The answers taken through a directory of unknown opacity since the last call, each
    /// once.
    pub fn take_unsure(&self) -> Vec<Unsure> {
        std::mem::take(&mut *self.unsure.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Notes that `rel` was answered by `layer`, which `why` (a directory and its layer) may
    /// hide.
    fn note_unsure(&self, why: &(String, usize), rel: &str, layer: usize) {
        let u = Unsure {
            dir: why.0.clone(),
            dir_layer: self.layers.layer_name(why.1),
            path: format!("/{rel}"),
            from_layer: self.layers.layer_name(layer),
        };
        let mut all = self.unsure.lock().unwrap_or_else(|e| e.into_inner());
        if !all.contains(&u) {
            all.push(u);
        }
    }

    pub fn backend(&self) -> &L {
        &self.layers
    }

    /// Resolves `path` (absolute, or relative to `cwd`) following every symlink, including a
    /// trailing one, re-anchored at the container root; `..` never climbs above it.
    pub fn resolve(&self, path: &str, cwd: &str) -> Result<Resolved, RootfsError> {
        self.walk(path, cwd, true, None)
    }

    /// Like [`Stack::resolve`], as the kernel resolves it for `who`: every directory on the
    /// way (links followed included) must be searchable by it, or the answer is
    /// [`Resolved::Denied`].
    pub fn resolve_as(
        &self,
        path: &str,
        cwd: &str,
        who: Option<&Creds>,
    ) -> Result<Resolved, RootfsError> {
        self.walk(path, cwd, true, who)
    }

    /// Like [`Rootfs::resolve`] but does not follow a trailing symlink.
    pub fn resolve_nofollow(&self, path: &str, cwd: &str) -> Result<Resolved, RootfsError> {
        self.walk(path, cwd, false, None)
    }

    /// runc's argv[0] lookup: a name with `/` is resolved as is (relative to `cwd`); a bare name
    /// is searched in `path_env` (default [`DEFAULT_PATH`]; an empty element means `cwd`).
    pub fn lookup_exec(
        &self,
        argv0: &str,
        path_env: Option<&str>,
        cwd: &str,
    ) -> Result<ExecLookup, RootfsError> {
        self.lookup_exec_as(argv0, path_env, cwd, None, LookupStyle::Runc)
    }

    /// A lookup of `name` in PATH for `who`, the way `style` does it.
    pub fn lookup_exec_as(
        &self,
        argv0: &str,
        path_env: Option<&str>,
        cwd: &str,
        who: Option<&Creds>,
        style: LookupStyle,
    ) -> Result<ExecLookup, RootfsError> {
        if argv0.contains('/') {
            return Ok(ExecLookup {
                resolved: self.resolve_as(argv0, cwd, who)?,
                searched: Vec::new(),
                path_exhausted: false,
                denied: false,
            });
        }
        let mut searched = Vec::new();
        let mut best: Option<Resolved> = None;
        let mut denied = false;
        for dir in path_env.unwrap_or(DEFAULT_PATH).split(':') {
            let candidate = if dir.is_empty() {
                format!("{}/{argv0}", cwd.trim_end_matches('/'))
            } else {
                format!("{}/{argv0}", dir.trim_end_matches('/'))
            };
            let r = self.resolve_as(&candidate, cwd, who)?;
            searched.push(candidate);
            let runnable = match (&r, style) {
                (Resolved::Found { entry, .. }, LookupStyle::Runc) => {
                    entry.kind != FileKind::Directory && entry.mode & 0o111 != 0
                }
                (Resolved::Found { entry, .. }, LookupStyle::Execvp) => {
                    entry.kind == FileKind::Regular
                        && who.is_none_or(|w| w.may(Want::Exec, entry.mode, entry.uid, entry.gid))
                        && entry.mode & 0o111 != 0
                }
                _ => false,
            };
            if runnable {
                return Ok(ExecLookup {
                    resolved: r,
                    searched,
                    path_exhausted: false,
                    denied: false,
                });
            }
            match &r {
                Resolved::Found { .. } => {
                    // execve of it fails with EACCES: not executable (by this user), or a
                    // directory.
                    denied = true;
                    if !matches!(best, Some(Resolved::Found { .. })) {
                        best = Some(r);
                    }
                }
                Resolved::Denied { .. } => {
                    denied = true;
                    if best.is_none() {
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
            denied: denied && style == LookupStyle::Execvp,
        })
    }

    /// The names in the merged directory at `path` (symlinks followed), at most `max`:
    /// every layer that contributes to it, top first, whiteout markers left out (a name a
    /// whiteout hides is still listed: resolving it says it is gone). `None` when `path` is
    /// no directory.
    pub fn list_dir(&self, path: &str, max: usize) -> Result<Option<Vec<String>>, RootfsError> {
        let Resolved::Found { entry, .. } = self.resolve(path, "/")? else {
            return Ok(None);
        };
        if entry.kind != FileKind::Directory {
            return Ok(None);
        }
        let mut dir = self.root_dir();
        for comp in entry.path.split('/').filter(|c| !c.is_empty()) {
            match self.child_in(&dir, comp, false)? {
                Some(Child::Dir(d)) => dir = d,
                _ => return Ok(None),
            }
        }
        let mut seen = std::collections::HashSet::new();
        let mut names = Vec::new();
        for &layer in &dir.layers {
            self.check_deadline()?;
            for n in self.layers.list(layer, &dir.rel, max)? {
                if n.starts_with(".wh.") || names.len() >= max {
                    continue;
                }
                if seen.insert(n.clone()) {
                    names.push(n);
                }
            }
        }
        Ok(Some(names))
    }

    /// The first `len` bytes of each of `entries`.
    pub fn heads(&self, entries: &[Entry], len: usize) -> Result<Vec<Vec<u8>>, RootfsError> {
        self.check_deadline()?;
        self.layers.heads(entries, len)
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
        let layers: Vec<usize> = (0..self.layers.count()).collect();
        let (uid, gid) = self.layers.root_owner();
        Dir {
            rel: String::new(),
            certain: layers.len(),
            layers,
            mode: self.layers.root_mode(),
            uid,
            gid,
            unsure_of: None,
            partial: false,
        }
    }

    /// Looks `name` up in the merged directory `dir`.
    fn child(&self, dir: &Dir, name: &str) -> Result<Child<L::Node>, RootfsError> {
        let lazy = self.layers.lazy_merge();
        if let Some(c) = self.child_in(dir, name, lazy)? {
            return Ok(c);
        }
        // The layers looked at do not decide: look at all of the directory's.
        let full = self.complete(dir)?;
        Ok(self.child_in(&full, name, lazy)?.unwrap_or(Child::Missing))
    }

    /// `dir` with every layer that contributes to it.
    fn complete(&self, dir: &Dir) -> Result<Dir, RootfsError> {
        let mut d = self.root_dir();
        for comp in dir.rel.split('/').filter(|c| !c.is_empty()) {
            match self.child_in(&d, comp, false)? {
                Some(Child::Dir(x)) => d = x,
                _ => {
                    return Ok(Dir {
                        partial: false,
                        ..dir.clone()
                    })
                }
            }
        }
        Ok(d)
    }

    /// Looks `name` up in `dir`; with `lazy`, a directory found stops the merge (its lower
    /// layers are left for when a lookup needs them). `None` when `dir` is partial and the
    /// layers it holds do not decide.
    fn child_in(
        &self,
        dir: &Dir,
        name: &str,
        lazy: bool,
    ) -> Result<Option<Child<L::Node>>, RootfsError> {
        if name.starts_with(".wh.") {
            return Ok(Some(Child::Missing));
        }
        let rel = dir.rel(name);
        let mut merged: Option<Dir> = None;
        // Set once the layers reached from here on might be hidden by a directory whose
        // opacity could not be read: `dir` itself in an upper layer, or the merged child.
        let mut unsure: Option<(String, usize)> = None;
        // A whiteout, an opaque directory or a non-directory ended the merge.
        let mut settled = false;
        let mut stopped = false;
        for (k, &layer) in dir.layers.iter().enumerate() {
            self.check_deadline()?;
            if k == dir.certain && unsure.is_none() {
                unsure.clone_from(&dir.unsure_of);
            }
            let (st, node) = match self.layers.stat(layer, &rel)? {
                Some(x) => x,
                None => {
                    if self
                        .layers
                        .stat(layer, &dir.rel(&format!(".wh.{name}")))?
                        .is_some()
                    {
                        settled = true;
                        break;
                    }
                    continue;
                }
            };
            if st.whiteout {
                settled = true;
                break;
            }
            if st.kind == FileKind::Directory {
                if merged.is_none() {
                    if let Some(why) = &unsure {
                        self.note_unsure(why, &rel, layer);
                    }
                }
                let d = merged.get_or_insert_with(|| Dir {
                    rel: rel.clone(),
                    layers: Vec::new(),
                    mode: st.mode,
                    uid: st.uid,
                    gid: st.gid,
                    certain: 0,
                    unsure_of: None,
                    partial: false,
                });
                d.layers.push(layer);
                if unsure.is_none() {
                    d.certain = d.layers.len();
                }
                match self.layers.opacity(layer, &rel)? {
                    Opacity::Opaque => {
                        settled = true;
                        break;
                    }
                    Opacity::Transparent => {}
                    Opacity::Unknown => {
                        if unsure.is_none() {
                            unsure = Some((format!("/{rel}"), layer));
                        }
                    }
                }
                if lazy {
                    stopped = true;
                    break;
                }
                continue;
            }
            if merged.is_some() {
                // A non-directory below a directory is hidden and stops the merge.
                settled = true;
                break;
            }
            if let Some(why) = &unsure {
                self.note_unsure(why, &rel, layer);
            }
            return Ok(Some(Child::Other {
                layer,
                kind: st.kind,
                mode: st.mode,
                size: st.size,
                uid: st.uid,
                gid: st.gid,
                node,
            }));
        }
        if dir.partial && !settled && !stopped {
            // Layers below `dir`'s were never looked at: they may hold `name`.
            return Ok(None);
        }
        Ok(Some(merged.map_or(Child::Missing, |mut d| {
            d.unsure_of = unsure;
            d.partial = stopped || (dir.partial && !settled);
            Child::Dir(d)
        })))
    }

    fn walk(
        &self,
        path: &str,
        cwd: &str,
        follow_last: bool,
        who: Option<&Creds>,
    ) -> Result<Resolved, RootfsError> {
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
            self.check_deadline()?;
            processed += 1;
            if processed > MAX_COMPONENTS {
                return Ok(Resolved::Loop { hops });
            }
            if comp.is_empty() {
                continue;
            }
            // may_lookup(): every component, "." and ".." included, needs search permission
            // on the directory it is looked up in.
            if let (Some(w), Some(d)) = (who, stack.last()) {
                if !w.may(Want::Search, d.mode, d.uid, d.gid) {
                    return Ok(Resolved::Denied {
                        at: d.path(),
                        mode: d.mode,
                        uid: d.uid,
                        gid: d.gid,
                        hops,
                    });
                }
            }
            if comp == "." {
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
                    uid,
                    gid,
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
                            uid,
                            gid,
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
                uid: d.uid,
                gid: d.gid,
            },
            hops,
        })
    }
}

/// Runs each named test function (`fn NAME(res: Resolver)`) under both resolvers, as the
/// tests `NAME::openat2` and `NAME::openat`.
#[cfg(test)]
macro_rules! under_both_resolvers {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn openat2() {
                super::$name($crate::rootfs::Resolver::Openat2)
            }
            #[test]
            fn openat() {
                super::$name($crate::rootfs::Resolver::Openat)
            }
        }
    )*};
}
#[cfg(test)]
pub(crate) use under_both_resolvers;

#[cfg(test)]
mod tests;
