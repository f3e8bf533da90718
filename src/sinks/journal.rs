//! The incident timeline: one JSON object per line, appended with a single `write` so a
//! line is never torn, rotated by size (`FILE` → `FILE.1`) without fsync.
//!
//! It is also what the agent remembers across restarts (it lives on a hostPath): at start,
//! [`reported`] reads `FILE.1` and `FILE` for what was already reported, so a restarted
//! agent does not report it again.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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

/// What an earlier run of the agent journaled.
#[derive(Debug, Default)]
pub struct Reported {
    /// `exec_failure` lines: (containerd namespace, container id).
    pub failures: Vec<(String, String)>,
    /// `image` lines: (digest, verdict).
    pub images: Vec<(String, String)>,
}

#[derive(Deserialize)]
struct Line {
    kind: String,
    containerd_namespace: Option<String>,
    container_id: Option<String>,
    digest: Option<String>,
    verdict: Option<String>,
}

/// Longest line considered; anything longer is not one the agent wrote.
const LINE_MAX: u64 = 1 << 20;

/// Reads `FILE.1` then `FILE` (each up to twice `max_bytes`): what was reported before.
/// Missing files are empty; unreadable or foreign lines are skipped.
pub fn reported(path: &Path, max_bytes: u64) -> Reported {
    let mut out = Reported::default();
    let mut old = path.as_os_str().to_owned();
    old.push(".1");
    for p in [PathBuf::from(old), path.to_path_buf()] {
        let Ok(f) = File::open(&p) else {
            continue;
        };
        let mut r = BufReader::new(f.take(max_bytes.saturating_mul(2).max(LINE_MAX)));
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match (&mut r).take(LINE_MAX).read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if buf.last() != Some(&b'\n') && buf.len() as u64 >= LINE_MAX {
                // Past the limit: skip to the next line.
                let mut rest = Vec::new();
                if r.read_until(b'\n', &mut rest).unwrap_or(0) == 0 {
                    break;
                }
                continue;
            }
            let Ok(l) = serde_json::from_slice::<Line>(&buf) else {
                continue;
            };
            match (l.kind.as_str(), l.containerd_namespace, l.container_id) {
                ("exec_failure", Some(ns), Some(id)) => out.failures.push((ns, id)),
                ("image", _, _) => {
                    if let (Some(d), Some(v)) = (l.digest, l.verdict) {
                        out.images.push((d, v));
                    }
                }
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_was_reported_survives_a_restart_and_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("timeline.jsonl");
        let mut j = Journal::open(&p, 300).unwrap();
        for i in 0..6 {
            j.append(&serde_json::json!({"kind": "exec_failure", "containerd_namespace": "k8s.io", "container_id": format!("c{i}"), "pad": "x".repeat(60)}))
                .unwrap();
        }
        j.append(&serde_json::json!({"kind": "image", "namespace": "k8s.io", "digest": "sha256:aa", "verdict": "arch_mismatch"}))
            .unwrap();
        j.append(&serde_json::json!({"kind": "emulated", "containerd_namespace": "k8s.io", "container_id": "e"}))
            .unwrap();
        drop(j);
        // A torn or foreign line is skipped, not fatal.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"kind\": \"exec_fail\n").unwrap();
        let r = reported(&p, 300);
        let ids: Vec<&str> = r.failures.iter().map(|(_, id)| id.as_str()).collect();
        let rotated = std::fs::read_to_string(dir.path().join("timeline.jsonl.1")).unwrap();
        assert!(rotated.contains("\"c5\""), "{rotated}");
        assert!(ids.contains(&"c5"), "FILE.1 is read: {ids:?}");
        assert!(ids.contains(&"c4"), "{ids:?}");
        assert!(!ids.contains(&"e"));
        assert_eq!(
            r.images,
            vec![("sha256:aa".to_string(), "arch_mismatch".to_string())]
        );
        assert!(reported(&dir.path().join("none"), 300).failures.is_empty());
    }

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
