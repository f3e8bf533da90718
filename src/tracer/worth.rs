//! Which failed execs are worth a report. Every ENOEXEC, EACCES, ELOOP and ELIBBAD is. An
//! ENOENT is only when the file itself exists in the process's root: then what is missing
//! is its interpreter or its loader, which a verdict explains. An ENOENT for a file that is
//! not there is a shell or `execvp` trying each PATH directory in turn: noise.
//!
//! The path is resolved as the process saw it, confined to `/proc/<pid>/root` by
//! [`crate::rootfs::Rootfs`] (symlinks re-anchored there, `..` never above it), a relative
//! path against the process's working directory (`/proc/<pid>/cwd`) or execveat's dirfd
//! (`/proc/<pid>/fd/<dirfd>`), both read as the process's own paths.

use std::path::Path;

use serde::Serialize;

use super::record::{ExecErrno, ExecError, AT_EMPTY_PATH, AT_FDCWD};
use crate::rootfs::{Resolved, Rootfs};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Worth {
    Report,
    /// ENOENT for a file that does not exist (a PATH search).
    Noise,
    /// ENOENT, and the process's root or working directory cannot be read any more (it
    /// exited): another process of the same container can stand in for an absolute path.
    ProcessGone,
    /// ENOENT for a path that cannot be looked up as given (cut by the kernel program, or
    /// not UTF-8).
    Unjudgeable,
}

/// Judges `ev` in the root of the process whose procfs directory is `proc_pid`
/// (`/proc/<tgid>`, or a process of the same container when that one is gone).
pub fn worth_reporting(ev: &ExecError, proc_pid: &Path) -> Worth {
    if ev.errno != ExecErrno::Enoent {
        return Worth::Report;
    }
    if ev.path.as_os_str().is_empty() {
        // fexecve: the file is the descriptor itself, which exists.
        return if ev.dirfd.is_some() && ev.flags & AT_EMPTY_PATH != 0 {
            Worth::Report
        } else {
            Worth::Noise
        };
    }
    if ev.truncated {
        return Worth::Unjudgeable;
    }
    let Some(path) = ev.path.to_str() else {
        return Worth::Unjudgeable;
    };
    let cwd = if path.starts_with('/') {
        "/".to_string()
    } else {
        let base = match ev.dirfd {
            Some(fd) if fd != AT_FDCWD => proc_pid.join("fd").join(fd.to_string()),
            _ => proc_pid.join("cwd"),
        };
        match std::fs::read_link(&base) {
            Ok(p) => match p.to_str() {
                Some(s) if s.starts_with('/') => s.to_string(),
                _ => return Worth::Unjudgeable,
            },
            Err(_) => return Worth::ProcessGone,
        }
    };
    let Ok(root) = Rootfs::new(vec![proc_pid.join("root")]) else {
        return Worth::ProcessGone;
    };
    match root.resolve(path, &cwd) {
        Ok(Resolved::Found { .. }) => Worth::Report,
        Ok(_) => Worth::Noise,
        Err(_) => Worth::Unjudgeable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracer::record::Syscall;
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;
    use std::time::SystemTime;

    fn ev(errno: ExecErrno, path: &str, syscall: Syscall, dirfd: Option<i32>) -> ExecError {
        ExecError {
            pid: 1,
            tgid: 1,
            cgroup_id: 1,
            comm: "sh".into(),
            errno,
            path: PathBuf::from(path),
            truncated: false,
            syscall,
            dirfd,
            flags: 0,
            at: SystemTime::UNIX_EPOCH,
        }
    }

    /// A stand-in for `/proc/<pid>`: `root/` a container tree, `cwd` and `fd/3` links to
    /// paths inside it (dangling on the host, as they are read, never followed).
    fn proc_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("app/bin")).unwrap();
        std::fs::create_dir_all(root.join("opt")).unwrap();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::write(root.join("app/run.sh"), "#!/missing/interp\n").unwrap();
        std::fs::write(root.join("opt/tool"), "#!/missing/interp\n").unwrap();
        std::fs::write(root.join("usr/bin/tool"), b"\x7fELF").unwrap();
        // A link that climbs out: resolved inside the root, never on the host.
        symlink("../../../../../etc/passwd", root.join("app/escape")).unwrap();
        symlink("/usr/bin/tool", root.join("app/bin/tool")).unwrap();
        symlink("/app", d.path().join("cwd")).unwrap();
        std::fs::create_dir_all(d.path().join("fd")).unwrap();
        symlink("/opt", d.path().join("fd/3")).unwrap();
        d
    }

    #[test]
    fn enoent_is_reported_only_when_the_file_exists() {
        let d = proc_dir();
        let p = d.path();
        use ExecErrno::*;
        use Syscall::*;
        let cases = [
            // Every other errno, whatever the path.
            (ev(Enoexec, "/nowhere", Execve, None), Worth::Report),
            (ev(Eacces, "/nowhere", Execve, None), Worth::Report),
            (ev(Elibbad, "/nowhere", Execve, None), Worth::Report),
            (ev(Eloop, "/nowhere", Execve, None), Worth::Report),
            // A script whose interpreter is missing.
            (ev(Enoent, "/app/run.sh", Execve, None), Worth::Report),
            // Relative to the working directory (/app).
            (ev(Enoent, "run.sh", Execve, None), Worth::Report),
            (ev(Enoent, "./run.sh", Execve, None), Worth::Report),
            // Through a symlink inside the root.
            (ev(Enoent, "/app/bin/tool", Execve, None), Worth::Report),
            // A shell's PATH search.
            (
                ev(Enoent, "/usr/local/sbin/tool", Execve, None),
                Worth::Noise,
            ),
            (ev(Enoent, "missing", Execve, None), Worth::Noise),
            // A link out of the root finds nothing on the host's side.
            (ev(Enoent, "/app/escape", Execve, None), Worth::Noise),
            (
                ev(Enoent, "../../../../etc/passwd", Execve, None),
                Worth::Noise,
            ),
            // execveat: relative to its dirfd (/opt), or to the working directory.
            (ev(Enoent, "tool", Execveat, Some(3)), Worth::Report),
            (
                ev(Enoent, "run.sh", Execveat, Some(AT_FDCWD)),
                Worth::Report,
            ),
            (ev(Enoent, "run.sh", Execveat, Some(3)), Worth::Noise),
            // execveat on a descriptor that is gone.
            (ev(Enoent, "tool", Execveat, Some(9)), Worth::ProcessGone),
            (ev(Enoent, "", Execve, None), Worth::Noise),
        ];
        for (e, want) in cases {
            assert_eq!(worth_reporting(&e, p), want, "{e:?}");
        }
        let mut fexecve = ev(Enoent, "", Execveat, Some(3));
        fexecve.flags = AT_EMPTY_PATH;
        assert_eq!(worth_reporting(&fexecve, p), Worth::Report);
        let mut cut = ev(Enoent, "/app/run.sh", Execve, None);
        cut.truncated = true;
        assert_eq!(worth_reporting(&cut, p), Worth::Unjudgeable);
    }

    #[test]
    fn a_process_that_is_gone_cannot_be_judged() {
        let d = tempfile::tempdir().unwrap();
        let e = ev(ExecErrno::Enoent, "/app/run.sh", Syscall::Execve, None);
        assert_eq!(
            worth_reporting(&e, &d.path().join("4242")),
            Worth::ProcessGone
        );
        let e = ev(ExecErrno::Enoent, "run.sh", Syscall::Execve, None);
        assert_eq!(
            worth_reporting(&e, &d.path().join("4242")),
            Worth::ProcessGone
        );
        // Other errnos need no process.
        let e = ev(ExecErrno::Enoexec, "/app/run.sh", Syscall::Execve, None);
        assert_eq!(worth_reporting(&e, &d.path().join("4242")), Worth::Report);
    }

    #[test]
    fn a_real_process_is_judged_in_its_own_root_and_cwd() {
        // This test process: /proc/self/root is the host's root, cwd the crate directory.
        let p = Path::new("/proc/self");
        let e = ev(ExecErrno::Enoent, "Cargo.toml", Syscall::Execve, None);
        assert_eq!(worth_reporting(&e, p), Worth::Report);
        let e = ev(
            ExecErrno::Enoent,
            "no-such-file-here",
            Syscall::Execve,
            None,
        );
        assert_eq!(worth_reporting(&e, p), Worth::Noise);
    }
}
