//! What the soak reads while it runs: a process's resident memory and open descriptors from
//! /proc, and the journal as it grows (rotation included).

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `VmRSS` of `pid` (`self` allowed) in KiB; `None` once the process is gone.
pub fn rss_kib(pid: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// Open descriptors of `pid`; `None` once the process is gone.
pub fn fds(pid: &str) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Wall seconds since the run started.
    pub at: f64,
    pub rss_kib: u64,
    pub fds: usize,
}

/// Samples of one process (one agent between two restarts).
#[derive(Clone, Debug)]
pub struct Life {
    pub pid: String,
    pub samples: Vec<Sample>,
}

impl Life {
    pub fn new(pid: impl ToString) -> Life {
        Life {
            pid: pid.to_string(),
            samples: Vec::new(),
        }
    }

    pub fn sample(&mut self, t0: Instant) {
        if let (Some(rss_kib), Some(fds)) = (rss_kib(&self.pid), fds(&self.pid)) {
            self.samples.push(Sample {
                at: t0.elapsed().as_secs_f64(),
                rss_kib,
                fds,
            });
        }
    }

    pub fn span(&self) -> f64 {
        match (self.samples.first(), self.samples.last()) {
            (Some(a), Some(b)) => b.at - a.at,
            _ => 0.0,
        }
    }

    /// The samples after the first `warm` fraction of the life.
    pub fn settled(&self, warm: f64) -> &[Sample] {
        let Some(first) = self.samples.first() else {
            return &[];
        };
        let from = first.at + self.span() * warm;
        let i = self.samples.partition_point(|s| s.at < from);
        &self.samples[i..]
    }

    /// Least-squares slope of RSS over the settled samples, KiB per wall second.
    pub fn rss_slope(&self, warm: f64) -> f64 {
        let s = self.settled(warm);
        let n = s.len() as f64;
        if s.len() < 3 {
            return 0.0;
        }
        let mx = s.iter().map(|x| x.at).sum::<f64>() / n;
        let my = s.iter().map(|x| x.rss_kib as f64).sum::<f64>() / n;
        let sxy: f64 = s
            .iter()
            .map(|x| (x.at - mx) * (x.rss_kib as f64 - my))
            .sum();
        let sxx: f64 = s.iter().map(|x| (x.at - mx).powi(2)).sum();
        if sxx == 0.0 {
            0.0
        } else {
            sxy / sxx
        }
    }

    /// The samples in the fraction `[from, to]` of the life.
    fn within(&self, from: f64, to: f64) -> impl Iterator<Item = &Sample> {
        let first = self.samples.first().map_or(0.0, |s| s.at);
        let (a, b) = (first + self.span() * from, first + self.span() * to);
        self.samples.iter().filter(move |s| s.at >= a && s.at <= b)
    }

    /// Largest RSS in the fraction `[from, to]` of the life.
    pub fn rss_max_in(&self, from: f64, to: f64) -> u64 {
        self.within(from, to).map(|s| s.rss_kib).max().unwrap_or(0)
    }

    /// Most descriptors open in the fraction `[from, to]` of the life.
    pub fn fds_max_in(&self, from: f64, to: f64) -> usize {
        self.within(from, to).map(|s| s.fds).max().unwrap_or(0)
    }

    pub fn peak_fds(&self) -> usize {
        self.samples.iter().map(|s| s.fds).max().unwrap_or(0)
    }

    pub fn rss_range(&self) -> (u64, u64) {
        let it = self.samples.iter().map(|s| s.rss_kib);
        (it.clone().min().unwrap_or(0), it.max().unwrap_or(0))
    }
}

/// One journal line, as much of it as the soak checks.
#[derive(Clone, Debug)]
pub struct Line {
    pub kind: String,
    pub container_id: String,
    pub pod: String,
    pub reason: String,
    pub verdict: String,
    pub signal: String,
    pub digest: String,
    pub exited_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Line {
    fn parse(text: &str) -> Line {
        let v: serde_json::Value =
            serde_json::from_str(text).expect("journal lines are whole JSON objects");
        let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
        Line {
            kind: s("kind"),
            container_id: s("container_id"),
            pod: s("pod"),
            reason: s("reason"),
            verdict: s("verdict"),
            signal: s("signal"),
            digest: s("digest"),
            exited_at: v["exited_at"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&chrono::Utc)),
        }
    }
}

/// Follows `FILE` as the agents append to it, through rotations (`FILE` → `FILE.1`): every
/// line read once.
pub struct JournalTail {
    path: PathBuf,
    /// Inode and offset of the file being read.
    at: Option<(u64, u64)>,
    pub lines: Vec<Line>,
}

impl JournalTail {
    pub fn new(path: &Path) -> JournalTail {
        JournalTail {
            path: path.to_path_buf(),
            at: None,
            lines: Vec::new(),
        }
    }

    /// Reads the whole lines of `f` from `offset`; returns the offset after them.
    fn read_from(&mut self, mut f: std::fs::File, offset: u64) -> u64 {
        f.seek(SeekFrom::Start(offset)).unwrap();
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).unwrap();
        // Only whole lines: a line is written with one write, but may be read mid-way.
        let end = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        for l in String::from_utf8_lossy(&buf[..end]).lines() {
            self.lines.push(Line::parse(l));
        }
        offset + end as u64
    }

    /// Reads what was appended since the last call.
    pub fn poll(&mut self) -> &[Line] {
        let before = self.lines.len();
        let Ok(f) = std::fs::File::open(&self.path) else {
            return &self.lines[before..];
        };
        let ino = f.metadata().unwrap().ino();
        let offset = match self.at {
            Some((was, off)) if was == ino => off,
            Some((was, off)) => {
                // Rotated: finish the old file, now FILE.1, then start the new one.
                let mut old = self.path.clone().into_os_string();
                old.push(".1");
                if let Ok(o) = std::fs::File::open(PathBuf::from(old)) {
                    if o.metadata().unwrap().ino() == was {
                        self.read_from(o, off);
                    }
                }
                0
            }
            None => 0,
        };
        let off = self.read_from(f, offset);
        self.at = Some((ino, off));
        &self.lines[before..]
    }

    /// `exec_failure` (and `inspection_failed`) lines by container id.
    pub fn by_container(&self) -> HashMap<&str, Vec<&Line>> {
        let mut m: HashMap<&str, Vec<&Line>> = HashMap::new();
        for l in &self.lines {
            if l.kind == "exec_failure" || l.kind == "inspection_failed" {
                m.entry(l.container_id.as_str()).or_default().push(l);
            }
        }
        m
    }
}
