//! binfmt_misc: parse the kernel's registration table and match files exactly like
//! `fs/binfmt_misc.c` does.
//!
//! CONTRACT: signatures fixed; bodies to be implemented.

use std::path::Path;

use serde::Serialize;

use crate::platform::Arch;

/// The kernel reads this many bytes of a file before choosing a handler (BINPRM_BUF_SIZE).
pub const BINPRM_BUF_SIZE: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Table {
    /// Global `status` file says `enabled`.
    pub enabled: bool,
    /// In kernel match order (most recently registered first when known; otherwise name order).
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
        let _ = dir;
        unimplemented!()
    }
    /// Parses one handler file's text.
    pub fn parse_entry(name: &str, text: &str) -> Result<Handler, BinfmtError> {
        let _ = (name, text);
        unimplemented!()
    }
    /// First enabled handler that takes a file whose first bytes are `head` (at most
    /// BINPRM_BUF_SIZE are considered; shorter files are zero-padded like the kernel's buffer)
    /// and whose path is `filename` (for extension rules). None when `status` is disabled.
    pub fn matching(&self, head: &[u8], filename: &str) -> Option<&Handler> {
        let _ = (head, filename);
        unimplemented!()
    }
}

impl Handler {
    /// `F`: the interpreter was opened at registration, so it works in any mount namespace.
    pub fn fix_binary(&self) -> bool {
        self.flags.contains('F')
    }
}
