//! Loading the kernel program, attaching it to the four syscall tracepoints, and reading its
//! ring buffer from a Tokio task into a bounded channel.
//!
//! What the node must provide is checked first, in this order, so that the error says what
//! is missing rather than which syscall failed: the capabilities (CAP_BPF and CAP_PERFMON,
//! or CAP_SYS_ADMIN), a mounted tracefs (aya finds a tracepoint's id there before it opens
//! the perf event), the syscall tracepoints themselves (CONFIG_FTRACE_SYSCALLS), and the
//! BPF ring buffer (Linux 5.8). The kernel's BTF is never used: the program reads no kernel
//! structure, so it loads the same on a kernel built without CONFIG_DEBUG_INFO_BTF.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aya::maps::{MapData, MapType, PerCpuArray, RingBuf};
use aya::programs::TracePoint;
use aya::{Ebpf, EbpfLoader};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use super::record::{self, ExecError};
use super::TracerError;

/// The object compiled by build.rs from `bpf/exec.bpf.c`.
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/exec.bpf.o"));

/// The programs and the tracepoints they attach to, in attach order: the exits first, so
/// that no entry is left behind by an exit nobody sees.
const PROGRAMS: [(&str, &str); 4] = [
    ("exit_execve", "sys_exit_execve"),
    ("exit_execveat", "sys_exit_execveat"),
    ("enter_execve", "sys_enter_execve"),
    ("enter_execveat", "sys_enter_execveat"),
];

/// Where aya looks for tracefs, in its order.
const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Index of each counter in the program's DROPS per-CPU array.
const DROP_RATE_LIMITED: u32 = 0;
const DROP_RING_FULL: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TracerConfig {
    /// Failed execs reported per second and per cgroup, in the kernel.
    pub rate_per_sec: u32,
    /// How many may come at once before the rate applies.
    pub burst: u32,
    /// Size of the ring buffer in bytes: a power of two, a multiple of the page size
    /// (each record takes 584 bytes with the ring's header).
    pub ring_bytes: u32,
    /// Capacity of the channel between the ring buffer's reader and the consumer; what does
    /// not fit is dropped and counted ([`TracerStats::channel_full`]).
    pub channel: usize,
}

impl Default for TracerConfig {
    fn default() -> TracerConfig {
        TracerConfig {
            rate_per_sec: 20,
            burst: 50,
            ring_bytes: 1 << 20,
            channel: 1024,
        }
    }
}

/// How often one of the tracer's programs ran and the kernel time it took: counted only
/// while the kernel's BPF run-time statistics are on (`sysctl kernel.bpf_stats_enabled=1`, or
/// the descriptor of [`enable_run_stats`] held open).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgramStats {
    pub program: &'static str,
    pub runs: u64,
    pub run_time: Duration,
}

/// Turns the kernel's BPF run-time statistics on for as long as the returned descriptor is
/// open (BPF_ENABLE_STATS, Linux 5.8; no sysctl is changed). They cost two clock reads per
/// program run.
pub fn enable_run_stats() -> Result<OwnedFd, TracerError> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| classify("enabling BPF run-time statistics", e))
}

/// What was dropped or refused on the way, since the tracer started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TracerStats {
    /// Failures the kernel's per-cgroup token bucket did not let through.
    pub rate_limited: u64,
    /// Failures lost because the ring buffer was full.
    pub ring_full: u64,
    /// Records read but dropped because the consumer did not keep up.
    pub channel_full: u64,
    /// Records that did not parse (a program and a reader out of step).
    pub malformed: u64,
    /// Events handed to the channel.
    pub delivered: u64,
}

#[derive(Default)]
struct Counters {
    channel_full: AtomicU64,
    malformed: AtomicU64,
    delivered: AtomicU64,
}

/// The running tracer: the attached programs (detached when it is dropped), the drop
/// counters and the channel of failed execs.
pub struct Tracer {
    events: mpsc::Receiver<ExecError>,
    drops: PerCpuArray<MapData, u64>,
    counters: Arc<Counters>,
    reader: tokio::task::JoinHandle<()>,
    // Dropped last: dropping it detaches the programs.
    ebpf: Ebpf,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer").finish_non_exhaustive()
    }
}

impl Tracer {
    /// Loads and attaches the programs and starts reading the ring buffer on the current
    /// Tokio runtime. Any `Err` means the tracer is not running; nothing stays attached.
    pub fn start(config: &TracerConfig) -> Result<Tracer, TracerError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| TracerError::NoRuntime)?;
        check_capabilities()?;
        check_tracefs()?;
        raise_memlock();
        match aya::sys::is_map_supported(MapType::RingBuf) {
            Ok(true) => {}
            Ok(false) => return Err(TracerError::NoRingBuffer),
            Err(e) => return Err(classify("probing the BPF ring buffer", e)),
        }
        let mut ebpf = EbpfLoader::new()
            .btf(None)
            .override_global("rate_per_sec", &config.rate_per_sec, true)
            .override_global("burst", &config.burst, true)
            .map_max_entries("EVENTS", config.ring_bytes)
            .load(OBJECT)
            .map_err(|e| match denied(&e) {
                Some(source) => TracerError::PermissionDenied {
                    what: "creating the tracer's maps".into(),
                    source,
                },
                None => TracerError::Object(Box::new(e)),
            })?;
        for (name, tracepoint) in PROGRAMS {
            let program: &mut TracePoint = ebpf
                .program_mut(name)
                .ok_or(TracerError::MissingPart(name))?
                .try_into()
                .map_err(|e| TracerError::Load {
                    program: name,
                    source: Box::new(e),
                })?;
            program.load().map_err(|e| match denied(&e) {
                Some(source) => TracerError::PermissionDenied {
                    what: format!("loading {name}"),
                    source,
                },
                None => TracerError::Load {
                    program: name,
                    source: Box::new(e),
                },
            })?;
            program
                .attach("syscalls", tracepoint)
                .map_err(|e| match denied(&e) {
                    Some(source) => TracerError::PermissionDenied {
                        what: format!("attaching to {tracepoint}"),
                        source,
                    },
                    None => TracerError::Attach {
                        tracepoint,
                        source: Box::new(e),
                    },
                })?;
        }
        let ring = RingBuf::try_from(
            ebpf.take_map("EVENTS")
                .ok_or(TracerError::MissingPart("EVENTS"))?,
        )
        .map_err(|e| TracerError::Object(Box::new(e)))?;
        let drops = PerCpuArray::try_from(
            ebpf.take_map("DROPS")
                .ok_or(TracerError::MissingPart("DROPS"))?,
        )
        .map_err(|e| TracerError::Object(Box::new(e)))?;
        let ring = {
            let _enter = runtime.enter();
            // `AsyncFd::register` (unsafe) asks that the descriptor stay open and the same
            // while registered: RingBuf owns its map's descriptor, never closes or replaces
            // it, and is dropped with the AsyncFd. The safe, deprecated constructor keeps
            // the library free of `unsafe`.
            #[allow(deprecated)]
            AsyncFd::new(ring).map_err(TracerError::RingBuffer)?
        };
        let (tx, events) = mpsc::channel(config.channel.max(1));
        let counters = Arc::new(Counters::default());
        let reader = runtime.spawn(read_ring(ring, tx, counters.clone()));
        tracing::info!(
            rate_per_sec = config.rate_per_sec,
            burst = config.burst,
            "Exec tracer attached to the execve and execveat tracepoints."
        );
        Ok(Tracer {
            events,
            drops,
            counters,
            reader,
            ebpf,
        })
    }

    /// The next failed exec; `None` once the reader has stopped (it stops only when the
    /// ring buffer cannot be polled any more, which it logs).
    pub async fn recv(&mut self) -> Option<ExecError> {
        self.events.recv().await
    }

    /// The channel itself, for `select!` or a stream adapter.
    pub fn events(&mut self) -> &mut mpsc::Receiver<ExecError> {
        &mut self.events
    }

    /// Runs and kernel time of each program (see [`ProgramStats`]).
    pub fn program_stats(&self) -> Result<Vec<ProgramStats>, TracerError> {
        PROGRAMS
            .iter()
            .map(|(name, _)| {
                let info = self
                    .ebpf
                    .program(name)
                    .ok_or(TracerError::MissingPart(name))?
                    .info()
                    .map_err(|e| TracerError::Counters(Box::new(e)))?;
                Ok(ProgramStats {
                    program: name,
                    runs: info.run_count(),
                    run_time: info.run_time(),
                })
            })
            .collect()
    }

    /// The drop counters: the kernel's (summed over CPUs) and the reader's.
    pub fn stats(&self) -> Result<TracerStats, TracerError> {
        let sum = |index: u32| -> Result<u64, TracerError> {
            let values = self
                .drops
                .get(&index, 0)
                .map_err(|e| TracerError::Counters(Box::new(e)))?;
            Ok(values.iter().copied().fold(0u64, u64::wrapping_add))
        };
        Ok(TracerStats {
            rate_limited: sum(DROP_RATE_LIMITED)?,
            ring_full: sum(DROP_RING_FULL)?,
            channel_full: self.counters.channel_full.load(Ordering::Relaxed),
            malformed: self.counters.malformed.load(Ordering::Relaxed),
            delivered: self.counters.delivered.load(Ordering::Relaxed),
        })
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn read_ring(
    mut ring: AsyncFd<RingBuf<MapData>>,
    tx: mpsc::Sender<ExecError>,
    counters: Arc<Counters>,
) {
    loop {
        let mut guard = match ring.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "Exec tracer's ring buffer cannot be polled; no more failed execs will be seen.");
                return;
            }
        };
        let buf = guard.get_inner_mut();
        while let Some(item) = buf.next() {
            match record::parse(&item, SystemTime::now()) {
                Ok(ev) => match tx.try_send(ev) {
                    Ok(()) => {
                        counters.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        counters.channel_full.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                },
                Err(e) => {
                    counters.malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(kind = e.kind(), error = %e, "Exec tracer record refused.");
                }
            }
        }
        guard.clear_ready();
    }
}

/// CAP_BPF and CAP_PERFMON (Linux 5.8+), or CAP_SYS_ADMIN, in this thread's effective set.
fn check_capabilities() -> Result<(), TracerError> {
    let sets = rustix::thread::capabilities(None).map_err(|e| TracerError::Probe {
        what: "reading this thread's capabilities".into(),
        source: e.into(),
    })?;
    match missing_capabilities(sets.effective) {
        Some(missing) => Err(TracerError::Capabilities { missing }),
        None => Ok(()),
    }
}

/// What the effective set lacks for the tracer, or `None` when it suffices.
pub(crate) fn missing_capabilities(
    effective: rustix::thread::CapabilitySet,
) -> Option<&'static str> {
    use rustix::thread::CapabilitySet as C;
    if effective.contains(C::SYS_ADMIN) {
        return None;
    }
    match (effective.contains(C::BPF), effective.contains(C::PERFMON)) {
        (true, true) => None,
        (true, false) => Some("CAP_PERFMON (or CAP_SYS_ADMIN)"),
        (false, true) => Some("CAP_BPF (or CAP_SYS_ADMIN)"),
        (false, false) => Some("CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)"),
    }
}

/// tracefs where aya looks for it (mounted: a non-empty directory), and the four events in it.
fn check_tracefs() -> Result<(), TracerError> {
    let root = TRACEFS
        .iter()
        .map(Path::new)
        .find(|p| {
            p.read_dir()
                .map(|mut d| d.next().is_some())
                .unwrap_or(false)
        })
        .ok_or(TracerError::NoTracefs)?;
    for (_, tracepoint) in PROGRAMS {
        let id = root.join("events/syscalls").join(tracepoint).join("id");
        if let Err(e) = std::fs::metadata(&id) {
            return Err(match e.kind() {
                std::io::ErrorKind::PermissionDenied => TracerError::PermissionDenied {
                    what: format!("reading {}", id.display()),
                    source: e,
                },
                _ => TracerError::NoTracepoint { name: tracepoint },
            });
        }
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK: the soft limit is raised to the
/// hard one (which needs no privilege). Later kernels charge the memory cgroup instead.
fn raise_memlock() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Memlock);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Memlock, raised) {
            tracing::debug!(error = %e, "RLIMIT_MEMLOCK could not be raised.");
        }
    }
}

/// EPERM or EACCES anywhere in an error's chain (aya wraps the syscall's `io::Error`).
fn denied(e: &(dyn std::error::Error + 'static)) -> Option<std::io::Error> {
    const EPERM: i32 = 1;
    const EACCES: i32 = 13;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let code = match err.downcast_ref::<aya::sys::SyscallError>() {
            Some(sys) => sys.io_error.raw_os_error(),
            None => err
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::raw_os_error),
        };
        if let Some(code @ (EPERM | EACCES)) = code {
            return Some(std::io::Error::from_raw_os_error(code));
        }
        cur = err.source();
    }
    None
}

fn classify(what: &str, e: aya::sys::SyscallError) -> TracerError {
    match denied(&e) {
        Some(source) => TracerError::PermissionDenied {
            what: what.into(),
            source,
        },
        None => TracerError::Probe {
            what: what.to_string(),
            source: e.io_error,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::thread::CapabilitySet as C;

    #[test]
    fn bpf_and_perfmon_or_sys_admin_suffice() {
        assert_eq!(missing_capabilities(C::SYS_ADMIN), None);
        assert_eq!(missing_capabilities(C::BPF | C::PERFMON), None);
        assert_eq!(
            missing_capabilities(C::BPF | C::DAC_READ_SEARCH),
            Some("CAP_PERFMON (or CAP_SYS_ADMIN)")
        );
        assert_eq!(
            missing_capabilities(C::PERFMON),
            Some("CAP_BPF (or CAP_SYS_ADMIN)")
        );
        assert_eq!(
            missing_capabilities(C::empty()),
            Some("CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)")
        );
    }

    #[test]
    fn starting_outside_a_runtime_touches_nothing_and_says_so() {
        let err = Tracer::start(&TracerConfig::default()).unwrap_err();
        assert_eq!(err.kind(), "no_runtime");
        assert!(!err.is_unsupported());
    }

    #[test]
    fn refusals_are_found_in_an_error_chain() {
        let e = aya::sys::SyscallError {
            call: "bpf_map_create",
            io_error: std::io::Error::from_raw_os_error(1),
        };
        assert_eq!(denied(&e).and_then(|e| e.raw_os_error()), Some(1));
        let e = aya::sys::SyscallError {
            call: "bpf_map_create",
            io_error: std::io::Error::from_raw_os_error(22),
        };
        assert!(denied(&e).is_none());
        assert!(matches!(classify("probing", e), TracerError::Probe { .. }));
    }
}
