//! The incident timeline: one JSON object per line, appended with a single `write` so a
//! line is never torn, rotated by size (`FILE` → `FILE.1`) without fsync.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("journal line could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

impl JournalError {
    pub fn kind(&self) -> &'static str {
        match self {
            JournalError::Io { .. } => "journal_io",
            JournalError::Encode(_) => "journal_encode",
        }
    }
}

pub struct Journal {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
}

impl Journal {
    /// Opens `path` for appending; rotates when a line would take it past `max_bytes`.
    pub fn open(path: &Path, max_bytes: u64) -> Result<Journal, JournalError> {
        let io = |source| JournalError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        Ok(Journal {
            path: path.to_path_buf(),
            file,
            size,
            max_bytes,
        })
    }

    /// Appends one record as one line.
    pub fn append<T: Serialize>(&mut self, record: &T) -> Result<(), JournalError> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        let io = |source| JournalError::Io {
            path: self.path.display().to_string(),
            source,
        };
        self.file.write_all(&line).map_err(io)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), JournalError> {
        let io = |source| JournalError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, &old).map_err(io)?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        self.size = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_whole_and_rotation_keeps_the_previous_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j/timeline.jsonl");
        let mut j = Journal::open(&p, 200).unwrap();
        for i in 0..10 {
            j.append(&serde_json::json!({"n": i, "pad": "x".repeat(30)}))
                .unwrap();
        }
        let cur = std::fs::read_to_string(&p).unwrap();
        let old = std::fs::read_to_string(dir.path().join("j/timeline.jsonl.1")).unwrap();
        let mut ns: Vec<i64> = Vec::new();
        for line in old.lines().chain(cur.lines()) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            ns.push(v["n"].as_i64().unwrap());
        }
        assert!(cur.len() <= 200 && old.len() <= 200);
        assert_eq!(ns.last(), Some(&9));
        assert!(ns.windows(2).all(|w| w[1] == w[0] + 1), "{ns:?}");
    }
}
