//! One failed exec as the kernel program reports it: the ring buffer's 576-byte record
//! (`struct exec_event` in `bpf/exec.bpf.c`, native byte order) parsed by hand into an
//! [`ExecError`]. A record that is too short or names an errno or syscall the program never
//! sends is refused, never guessed at.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::time::SystemTime;

use serde::Serialize;

/// Size of `struct exec_event`.
pub const RECORD_LEN: usize = 576;
/// Bytes of path the kernel program copies, its NUL included: longer paths are cut to
/// `PATH_BUF - 1` bytes and flagged [`ExecError::truncated`].
pub const PATH_BUF: usize = 512;
/// `AT_FDCWD`: execveat's dirfd meaning "the working directory".
pub const AT_FDCWD: i32 = -100;
/// execveat's `AT_EMPTY_PATH`: the file is `dirfd` itself (fexecve).
pub const AT_EMPTY_PATH: u32 = 0x1000;

const OFF_CGROUP: usize = 0;
const OFF_PID: usize = 16;
const OFF_TGID: usize = 20;
const OFF_ERR: usize = 24;
const OFF_DIRFD: usize = 28;
const OFF_FLAGS: usize = 32;
const OFF_SYSCALL: usize = 36;
const OFF_PATH_LEN: usize = 40;
const OFF_TRUNCATED: usize = 44;
const OFF_COMM: usize = 48;
const COMM_LEN: usize = 16;
const OFF_PATH: usize = 64;

/// The errnos the kernel program reports: the ones a verdict explains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ExecErrno {
    /// "exec format error": another architecture, or no format the kernel knows.
    Enoexec,
    /// "no such file or directory": the file, or its interpreter or loader, is missing.
    Enoent,
    /// "permission denied": no execute bit, a directory not searchable, not a regular file.
    Eacces,
    /// "too many levels of symbolic links".
    Eloop,
    /// "accessing a corrupted shared library": a loader of another architecture.
    Elibbad,
}

impl ExecErrno {
    pub fn from_code(code: i32) -> Option<ExecErrno> {
        Some(match code {
            8 => ExecErrno::Enoexec,
            2 => ExecErrno::Enoent,
            13 => ExecErrno::Eacces,
            40 => ExecErrno::Eloop,
            80 => ExecErrno::Elibbad,
            _ => return None,
        })
    }
    /// The errno's value (the same on x86_64 and arm64).
    pub fn code(self) -> i32 {
        match self {
            ExecErrno::Enoexec => 8,
            ExecErrno::Enoent => 2,
            ExecErrno::Eacces => 13,
            ExecErrno::Eloop => 40,
            ExecErrno::Elibbad => 80,
        }
    }
    /// The symbolic name (`ENOEXEC`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ExecErrno::Enoexec => "ENOEXEC",
            ExecErrno::Enoent => "ENOENT",
            ExecErrno::Eacces => "EACCES",
            ExecErrno::Eloop => "ELOOP",
            ExecErrno::Elibbad => "ELIBBAD",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Syscall {
    Execve,
    Execveat,
}

/// A failed execve/execveat, as the kernel saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExecError {
    /// The thread that called exec.
    pub pid: u32,
    /// Its process (thread group).
    pub tgid: u32,
    /// Its cgroup in the cgroup v2 hierarchy (the directory's inode number).
    pub cgroup_id: u64,
    /// Its command name (the kernel's 15 bytes at most) when it called exec.
    pub comm: String,
    pub errno: ExecErrno,
    /// The path as passed to exec (absolute, or relative to [`ExecError::dirfd`] or the
    /// working directory); empty when the kernel could not read it.
    pub path: PathBuf,
    /// The path was longer than [`PATH_BUF`]` - 1` bytes and is cut.
    pub truncated: bool,
    pub syscall: Syscall,
    /// execveat's directory descriptor ([`AT_FDCWD`] for the working directory); `None` for
    /// execve.
    pub dirfd: Option<i32>,
    /// execveat's flags (0 for execve).
    pub flags: u32,
    /// When userspace read the record.
    #[serde(with = "system_time")]
    pub at: SystemTime,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("a ring buffer record of {len} bytes, {RECORD_LEN} expected")]
    Short { len: usize },
    #[error("a record with errno {0}, which the program never sends")]
    Errno(i32),
    #[error("a record with syscall {0}, which the program never sends")]
    Syscall(u32),
}

impl RecordError {
    pub fn kind(&self) -> &'static str {
        match self {
            RecordError::Short { .. } => "short_record",
            RecordError::Errno(_) => "unknown_errno",
            RecordError::Syscall(_) => "unknown_syscall",
        }
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_ne_bytes(a)
}

fn i32_at(b: &[u8], off: usize) -> i32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    i32::from_ne_bytes(a)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_ne_bytes(a)
}

/// Bytes up to the first NUL.
fn c_str(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(n) => &b[..n],
        None => b,
    }
}

/// Parses one ring buffer record, stamped `at`.
pub fn parse(b: &[u8], at: SystemTime) -> Result<ExecError, RecordError> {
    if b.len() < RECORD_LEN {
        return Err(RecordError::Short { len: b.len() });
    }
    let err = i32_at(b, OFF_ERR);
    let errno = ExecErrno::from_code(err).ok_or(RecordError::Errno(err))?;
    let syscall = match u32_at(b, OFF_SYSCALL) {
        0 => Syscall::Execve,
        1 => Syscall::Execveat,
        other => return Err(RecordError::Syscall(other)),
    };
    // bpf_probe_read_user_str's result: bytes copied with the NUL, or a negative errno.
    let copied = i32_at(b, OFF_PATH_LEN);
    let path = if copied > 0 {
        let n = (copied as usize).min(PATH_BUF);
        c_str(&b[OFF_PATH..OFF_PATH + n]).to_vec()
    } else {
        Vec::new()
    };
    Ok(ExecError {
        pid: u32_at(b, OFF_PID),
        tgid: u32_at(b, OFF_TGID),
        cgroup_id: u64_at(b, OFF_CGROUP),
        comm: String::from_utf8_lossy(c_str(&b[OFF_COMM..OFF_COMM + COMM_LEN])).into_owned(),
        errno,
        path: PathBuf::from(OsString::from_vec(path)),
        truncated: b[OFF_TRUNCATED] != 0,
        syscall,
        dirfd: match syscall {
            Syscall::Execve => None,
            Syscall::Execveat => Some(i32_at(b, OFF_DIRFD)),
        },
        flags: u32_at(b, OFF_FLAGS),
        at,
    })
}

mod system_time {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let dt: chrono::DateTime<chrono::Utc> = (*t).into();
        s.serialize_str(&dt.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record laid out as `struct exec_event`.
    pub(crate) fn record(
        err: i32,
        syscall: u32,
        dirfd: i32,
        comm: &[u8],
        path: &[u8],
        truncated: bool,
    ) -> Vec<u8> {
        let mut b = vec![0xAAu8; RECORD_LEN];
        b[OFF_CGROUP..OFF_CGROUP + 8].copy_from_slice(&4242u64.to_ne_bytes());
        b[8..16].copy_from_slice(&99u64.to_ne_bytes());
        b[OFF_PID..OFF_PID + 4].copy_from_slice(&1234u32.to_ne_bytes());
        b[OFF_TGID..OFF_TGID + 4].copy_from_slice(&1200u32.to_ne_bytes());
        b[OFF_ERR..OFF_ERR + 4].copy_from_slice(&err.to_ne_bytes());
        b[OFF_DIRFD..OFF_DIRFD + 4].copy_from_slice(&dirfd.to_ne_bytes());
        b[OFF_FLAGS..OFF_FLAGS + 4].copy_from_slice(&0u32.to_ne_bytes());
        b[OFF_SYSCALL..OFF_SYSCALL + 4].copy_from_slice(&syscall.to_ne_bytes());
        let copied = (path.len() + 1).min(PATH_BUF) as i32;
        b[OFF_PATH_LEN..OFF_PATH_LEN + 4].copy_from_slice(&copied.to_ne_bytes());
        b[OFF_TRUNCATED] = truncated as u8;
        let mut c = [0u8; COMM_LEN];
        c[..comm.len()].copy_from_slice(comm);
        b[OFF_COMM..OFF_COMM + COMM_LEN].copy_from_slice(&c);
        let n = path.len().min(PATH_BUF - 1);
        b[OFF_PATH..OFF_PATH + n].copy_from_slice(&path[..n]);
        b[OFF_PATH + n] = 0;
        b
    }

    #[test]
    fn records_parse_into_their_fields() {
        let at = SystemTime::UNIX_EPOCH;
        let e = parse(&record(8, 0, 0, b"sh", b"/bin/arm-helper", false), at).unwrap();
        assert_eq!(e.pid, 1234);
        assert_eq!(e.tgid, 1200);
        assert_eq!(e.cgroup_id, 4242);
        assert_eq!(e.comm, "sh");
        assert_eq!(e.errno, ExecErrno::Enoexec);
        assert_eq!(e.path, PathBuf::from("/bin/arm-helper"));
        assert!(!e.truncated);
        assert_eq!(e.syscall, Syscall::Execve);
        assert_eq!(e.dirfd, None);

        let e = parse(&record(2, 1, 5, b"runc:[2:INIT]", b"rel/x", false), at).unwrap();
        assert_eq!(e.errno, ExecErrno::Enoent);
        assert_eq!(e.syscall, Syscall::Execveat);
        assert_eq!(e.dirfd, Some(5));
        assert_eq!(e.comm, "runc:[2:INIT]");

        // A full comm (no NUL in 16 bytes) and a path cut by the kernel.
        let long = vec![b'a'; 2000];
        let e = parse(&record(13, 0, 0, b"0123456789abcdef", &long, true), at).unwrap();
        assert_eq!(e.comm, "0123456789abcdef");
        assert_eq!(e.path.as_os_str().len(), PATH_BUF - 1);
        assert!(e.truncated);
    }

    #[test]
    fn errnos_round_trip_and_unknown_ones_are_refused() {
        for e in [
            ExecErrno::Enoexec,
            ExecErrno::Enoent,
            ExecErrno::Eacces,
            ExecErrno::Eloop,
            ExecErrno::Elibbad,
        ] {
            assert_eq!(ExecErrno::from_code(e.code()), Some(e));
        }
        let at = SystemTime::UNIX_EPOCH;
        assert_eq!(
            parse(&record(36, 0, 0, b"x", b"/x", false), at),
            Err(RecordError::Errno(36))
        );
        assert_eq!(
            parse(&record(8, 7, 0, b"x", b"/x", false), at),
            Err(RecordError::Syscall(7))
        );
        assert_eq!(parse(&[0u8; 100], at), Err(RecordError::Short { len: 100 }));
    }

    #[test]
    fn an_unreadable_path_is_empty() {
        let mut b = record(8, 0, 0, b"x", b"/x", false);
        b[OFF_PATH_LEN..OFF_PATH_LEN + 4].copy_from_slice(&(-14i32).to_ne_bytes());
        let e = parse(&b, SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(e.path, PathBuf::new());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_or_are_refused(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..700)) {
            if let Ok(e) = parse(&bytes, SystemTime::UNIX_EPOCH) {
                proptest::prop_assert!(e.path.as_os_str().len() < PATH_BUF);
                proptest::prop_assert!(e.comm.chars().count() <= COMM_LEN);
            } else {
                proptest::prop_assert!(bytes.len() < RECORD_LEN || ExecErrno::from_code(i32_at(&bytes, OFF_ERR)).is_none() || u32_at(&bytes, OFF_SYSCALL) > 1);
            }
        }
    }
}
