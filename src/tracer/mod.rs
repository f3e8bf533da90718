//! The exec tracer: every failed execve/execveat on the node, from eBPF programs on the
//! syscall tracepoints, attributed to the container that made it.
//!
//! ```text
//! sys_enter_execve(at) ─► PENDING[pid_tgid] = filename, dirfd      (kernel, every exec)
//! sys_exit_execve(at)  ─► delete; on ENOEXEC|ENOENT|EACCES|ELOOP|ELIBBAD:
//!                         token bucket per cgroup ─► ring buffer {pid, tgid, cgroup, comm,
//!                         errno, path ≤ 511 bytes + truncated}        (kernel, failures only)
//! ring buffer ─► [`Tracer`] (Tokio task) ─► channel of [`ExecError`]
//!   ─► [`Attributor`] (cgroup → container id; host processes are `Host`)
//!   ─► [`RateLimiter`] per container ─► [`worth_reporting`] (ENOENT only when the file exists)
//! ```
//!
//! [`load`] holds what touches the kernel; [`record`] parses the ring buffer's bytes;
//! [`cgroup`] reads `/proc/<pid>/cgroup` and cgroup ids into container ids; [`limit`] is the
//! userspace token bucket; [`worth`] judges which ENOENT is a missing interpreter or loader
//! rather than a shell's PATH search.
//!
//! Needs: Linux 5.8+ (BPF ring buffer) with syscall tracepoints (CONFIG_FTRACE_SYSCALLS),
//! tracefs mounted at /sys/kernel/tracing or /sys/kernel/debug/tracing, and CAP_BPF plus
//! CAP_PERFMON (or CAP_SYS_ADMIN). Not needed: the kernel's BTF, libbpf, bpftool.

pub mod cgroup;
pub mod limit;
pub mod load;
pub mod record;
pub mod worth;

pub use cgroup::{Attribution, Attributor, ContainerRef, ProcCgroup, Runtime};
pub use limit::RateLimiter;
pub use load::{enable_run_stats, ProgramStats, Tracer, TracerConfig, TracerStats};
pub use record::{ExecErrno, ExecError, Syscall};
pub use worth::{worth_reporting, Worth};

/// `--exec-tracer auto|on|off`: `off` never starts it, `on` treats any [`TracerError`] as
/// fatal, `auto` reports it once and goes on without the tracer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TracerMode {
    #[default]
    Auto,
    On,
    Off,
}

impl std::str::FromStr for TracerMode {
    type Err = String;
    fn from_str(s: &str) -> Result<TracerMode, String> {
        match s {
            "auto" => Ok(TracerMode::Auto),
            "on" => Ok(TracerMode::On),
            "off" => Ok(TracerMode::Off),
            other => Err(format!("{other:?}: expected auto, on or off")),
        }
    }
}

impl std::fmt::Display for TracerMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TracerMode::Auto => "auto",
            TracerMode::On => "on",
            TracerMode::Off => "off",
        })
    }
}

/// Why the tracer is not running. The first five say what the node lacks; the others are
/// failures of the tracer itself.
#[derive(Debug, thiserror::Error)]
pub enum TracerError {
    #[error("the exec tracer needs CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN; this process lacks {missing}")]
    Capabilities { missing: &'static str },
    #[error("the kernel refused {what} ({source}): the exec tracer needs CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN, and a seccomp profile that allows bpf and perf_event_open")]
    PermissionDenied {
        what: String,
        source: std::io::Error,
    },
    #[error("this kernel has no BPF ring buffer: the exec tracer needs Linux 5.8 or later")]
    NoRingBuffer,
    #[error("this kernel has no syscall tracepoint {name} (CONFIG_FTRACE_SYSCALLS)")]
    NoTracepoint { name: &'static str },
    #[error("tracefs is not mounted at /sys/kernel/tracing or /sys/kernel/debug/tracing: the exec tracer finds its tracepoints there")]
    NoTracefs,
    #[error("{what}: {source}")]
    Probe {
        what: String,
        source: std::io::Error,
    },
    #[error("the exec tracer's eBPF object: {0}")]
    Object(Box<dyn std::error::Error + Send + Sync>),
    #[error("the exec tracer's eBPF object has no {0}")]
    MissingPart(&'static str),
    #[error("loading the eBPF program {program}: {source}")]
    Load {
        program: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("attaching to the tracepoint {tracepoint}: {source}")]
    Attach {
        tracepoint: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the exec tracer must be started inside a Tokio runtime")]
    NoRuntime,
    #[error("polling the exec tracer's ring buffer: {0}")]
    RingBuffer(std::io::Error),
    #[error("reading the exec tracer's drop counters: {0}")]
    Counters(Box<dyn std::error::Error + Send + Sync>),
}

impl TracerError {
    pub fn kind(&self) -> &'static str {
        match self {
            TracerError::Capabilities { .. } => "capabilities",
            TracerError::PermissionDenied { .. } => "permission_denied",
            TracerError::NoRingBuffer => "no_ring_buffer",
            TracerError::NoTracepoint { .. } => "no_tracepoint",
            TracerError::NoTracefs => "no_tracefs",
            TracerError::Probe { .. } => "probe",
            TracerError::Object(_) => "object",
            TracerError::MissingPart(_) => "object",
            TracerError::Load { .. } => "load",
            TracerError::Attach { .. } => "attach",
            TracerError::NoRuntime => "no_runtime",
            TracerError::RingBuffer(_) => "ring_buffer",
            TracerError::Counters(_) => "counters",
        }
    }

    /// The node (kernel, capabilities, mounts) cannot run the tracer, as opposed to a
    /// failure of the tracer itself.
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self,
            TracerError::Capabilities { .. }
                | TracerError::PermissionDenied { .. }
                | TracerError::NoRingBuffer
                | TracerError::NoTracepoint { .. }
                | TracerError::NoTracefs
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        for m in [TracerMode::Auto, TracerMode::On, TracerMode::Off] {
            assert_eq!(m.to_string().parse::<TracerMode>(), Ok(m));
        }
        assert!("yes".parse::<TracerMode>().is_err());
    }
}
