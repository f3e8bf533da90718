//! Confined path resolution over a container root given as one directory or an overlay
//! stack of layer directories (top first), as the kernel sees the merged view.
//!
//! Invariant: nothing outside the given layer directories is ever opened, stat'ed or read;
//! nothing blocks (FIFOs and devices are never opened for reading).
//!
//! CONTRACT: signatures fixed; bodies to be implemented.

use std::fs::File;
use std::path::PathBuf;

use serde::Serialize;

/// Linux MAXSYMLINKS.
pub const MAX_SYMLINK_HOPS: usize = 40;

/// runc's default PATH when the spec has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A container root: overlay layers, top first. One directory is a one-layer stack.
#[derive(Debug)]
pub struct Rootfs {
    layers: Vec<PathBuf>,
}

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

impl Rootfs {
    /// Layers top first. Each must be a directory; they are opened once (O_PATH|O_DIRECTORY).
    pub fn new(layers: Vec<PathBuf>) -> Result<Rootfs, RootfsError> {
        let _ = layers;
        unimplemented!()
    }
    pub fn layers(&self) -> &[PathBuf] {
        &self.layers
    }
    /// Resolves `path` (absolute, or relative to `cwd`) following every symlink, including a
    /// trailing one, re-anchored at the container root; `..` never climbs above it.
    pub fn resolve(&self, path: &str, cwd: &str) -> Result<Resolved, RootfsError> {
        let _ = (path, cwd);
        unimplemented!()
    }
    /// Like [`Rootfs::resolve`] but does not follow a trailing symlink.
    pub fn resolve_nofollow(&self, path: &str, cwd: &str) -> Result<Resolved, RootfsError> {
        let _ = (path, cwd);
        unimplemented!()
    }
    /// runc's argv[0] lookup: a name with `/` is resolved as is (relative to `cwd`); a bare name
    /// is searched in `path_env` (default [`DEFAULT_PATH`]; an empty element means `cwd`).
    pub fn lookup_exec(
        &self,
        argv0: &str,
        path_env: Option<&str>,
        cwd: &str,
    ) -> Result<ExecLookup, RootfsError> {
        let _ = (argv0, path_env, cwd);
        unimplemented!()
    }
    /// Opens a found regular file for reading, confined to its layer (openat2 with
    /// RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS, O_NOFOLLOW|O_NONBLOCK) and re-checks with fstat that
    /// it is still a regular file. Callers read bounded amounts with `FileExt::read_at`.
    pub fn open_regular(&self, entry: &Entry) -> Result<File, RootfsError> {
        let _ = entry;
        unimplemented!()
    }
}
