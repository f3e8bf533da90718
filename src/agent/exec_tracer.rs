//! Every failed exec in every container, not only a container's first process: the eBPF
//! exec tracer's events, attributed to their container, rate-limited per container, the
//! ENOENT of a PATH search dropped, and the failed path judged in the process's own root
//! (`/proc/<pid>/root`, confined as any container's files are) as the process's user.
//!
//! ```text
//! Tracer (ring buffer) ─► Attributor (cgroup → container; host processes dropped)
//!   ─► RateLimiter per container ─► worth (ENOENT only when the file exists)
//!   ─► inspect in /proc/<pid>/root (blocking pool, time budget) ─► Input::ExecError
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::agent::pipeline::Input;
use crate::agent::AgentError;
use crate::binfmt::Table;
use crate::inspect::{self, Inspection, Request};
use crate::platform::Node;
use crate::rootfs::{Caps, Creds, Rootfs};
use crate::sinks::metrics::{self, Metrics};
use crate::tracer::{
    Attribution, Attributor, ContainerRef, ExecError, RateLimiter, Tracer, TracerConfig,
    TracerMode, Worth,
};

/// Failed execs reported per second and per container by the agent (the kernel holds each
/// cgroup to its own bucket first).
const PER_CONTAINER_RATE: f64 = 2.0;
const PER_CONTAINER_BURST: u32 = 10;
const TRACKED_CONTAINERS: usize = 4096;

/// A failed exec in a container, judged.
#[derive(Debug)]
pub(crate) struct SeenExec {
    pub(crate) event: ExecError,
    pub(crate) container: ContainerRef,
    pub(crate) at: DateTime<Utc>,
    /// The verdict for the failed path, or why it could not be judged.
    pub(crate) judged: Result<Inspection, String>,
}

/// Starts the tracer as `mode` says: `off` never, `auto` when the node allows (saying once
/// why not), `on` or fail.
pub(crate) fn start(mode: TracerMode, metrics: &Metrics) -> Result<Option<Tracer>, AgentError> {
    if mode == TracerMode::Off {
        metrics.exec_tracer_up.set(0);
        return Ok(None);
    }
    match Tracer::start(&TracerConfig::default()) {
        Ok(t) => {
            metrics.exec_tracer_up.set(1);
            info!("Tracing failed execs in every container (eBPF).");
            Ok(Some(t))
        }
        Err(e) if mode == TracerMode::On => Err(AgentError::Tracer(e)),
        Err(e) => {
            metrics.exec_tracer_up.set(0);
            warn!(error = %e, reason = e.kind(), "The exec tracer is off: only each container's first process is judged.");
            Ok(None)
        }
    }
}

/// Reads the tracer's events until `stop`, and hands each failed exec worth reporting to
/// the pipeline, judged.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn follow(
    mut tracer: Tracer,
    proc_dir: PathBuf,
    cgroup_dir: Option<PathBuf>,
    node: Node,
    binfmt: watch::Receiver<Arc<Table>>,
    timeout: Duration,
    metrics: Metrics,
    tx: mpsc::Sender<Input>,
    stop: CancellationToken,
) {
    let cgroup2 = match cgroup_dir {
        Some(d) => crate::tracer::cgroup::cgroup2_root_in(&d),
        None => std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|m| crate::tracer::cgroup::cgroup2_mount(&m)),
    };
    if cgroup2.is_none() {
        warn!("No cgroup v2 hierarchy: failed execs of processes that already exited cannot be attributed.");
    }
    let mut attributor = Attributor::new(proc_dir.clone(), cgroup2);
    let mut limiter: RateLimiter<String> =
        RateLimiter::new(PER_CONTAINER_RATE, PER_CONTAINER_BURST, TRACKED_CONTAINERS);
    let mut last_prune = Instant::now();
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => return,
            ev = tracer.recv() => match ev {
                Some(ev) => ev,
                None => {
                    warn!("The exec tracer's stream ended.");
                    metrics.exec_tracer_up.set(0);
                    return;
                }
            },
        };
        let count = |outcome: &str| {
            metrics
                .exec_events
                .get_or_create(&metrics::OutcomeLabels {
                    outcome: outcome.into(),
                })
                .inc();
        };
        let (container, cgroup) = match attributor.attribute(&ev) {
            Attribution::Container { container, cgroup } => (container, cgroup),
            // Processes outside containers are not reported.
            Attribution::Host { .. } => {
                count("host");
                continue;
            }
            Attribution::Unknown => {
                count("unattributed");
                continue;
            }
        };
        let now = Instant::now();
        if now.duration_since(last_prune) > Duration::from_secs(60) {
            limiter.prune(now, Duration::from_secs(300));
            last_prune = now;
        }
        if !limiter.allow(&container.id, now) {
            count("rate_limited");
            continue;
        }
        match attributor.worth(&ev, &cgroup) {
            Worth::Report => {}
            Worth::Noise => {
                count("path_search");
                continue;
            }
            Worth::ProcessGone | Worth::Unjudgeable => {
                count("unjudgeable");
                continue;
            }
        }
        count("reported");
        // The failing process often exits right after its exec fails (a forked child, an
        // exec'd probe), even while it is judged: another process of the same container
        // shares its root, for an absolute path.
        let own = proc_dir.join(ev.tgid.to_string());
        let table = binfmt.borrow().clone();
        let mut judged = judge(&ev, own, node.clone(), table.clone(), timeout, &metrics).await;
        if judged.is_err() && ev.path.is_absolute() {
            let other = attributor
                .pids_in(&cgroup)
                .into_iter()
                .filter(|pid| *pid != ev.tgid)
                .map(|pid| proc_dir.join(pid.to_string()))
                .find(|p| std::fs::metadata(p.join("root")).is_ok());
            if let Some(p) = other {
                judged = judge(&ev, p, node.clone(), table, timeout, &metrics).await;
            }
        }
        let seen = SeenExec {
            at: DateTime::<Utc>::from(ev.at),
            event: ev,
            container,
            judged,
        };
        if tx.send(Input::ExecError(Box::new(seen))).await.is_err() {
            return;
        }
    }
}

/// Judges the failed path in the process's root, as the process's user, within `timeout`.
async fn judge(
    ev: &ExecError,
    proc_pid: PathBuf,
    node: Node,
    table: Arc<Table>,
    timeout: Duration,
    metrics: &Metrics,
) -> Result<Inspection, String> {
    let path = ev.path.to_string_lossy().into_owned();
    let started = Instant::now();
    let deadline = started + timeout;
    let job = tokio::task::spawn_blocking(move || -> Result<Inspection, String> {
        let cwd = std::fs::read_link(proc_pid.join("cwd"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "/".into());
        let user = creds_of(&proc_pid);
        let path_env = path_env_of(&proc_pid);
        let root = Rootfs::new(vec![proc_pid.join("root")])
            .map_err(|e| e.to_string())?
            .with_deadline(deadline);
        let argv = vec![path];
        let req = Request {
            argv: &argv,
            path_env: path_env.as_deref(),
            cwd: &cwd,
            claimed_arch: None,
            user: user.as_ref(),
        };
        let mut i = inspect::inspect(
            &root,
            &req,
            inspect::Context {
                node: &node,
                binfmt: &table,
            },
        )
        .map_err(|e| e.to_string())?;
        crate::fix::settle(&mut i);
        Ok(i)
    });
    let r = tokio::time::timeout(timeout + Duration::from_millis(500), job).await;
    metrics
        .inspection_duration
        .get_or_create(&metrics::TargetLabels {
            target: "exec".into(),
        })
        .observe(started.elapsed().as_secs_f64());
    match r {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err("the inspection panicked".into()),
        Err(_) => Err(format!(
            "the inspection took longer than {} ms",
            timeout.as_millis()
        )),
    }
}

/// The process's credentials from `/proc/<pid>/status`: effective ids, supplementary
/// groups, and the file-permission capabilities of its effective set.
fn creds_of(proc_pid: &Path) -> Option<Creds> {
    let status = std::fs::read_to_string(proc_pid.join("status")).ok()?;
    parse_status(&status)
}

fn parse_status(status: &str) -> Option<Creds> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name).map(str::trim))
    };
    // Real, effective, saved, filesystem: the kernel checks exec permission with the
    // filesystem ids (the effective ones, unless setfsuid changed them).
    let id = |name: &str| -> Option<u32> { field(name)?.split_whitespace().nth(3)?.parse().ok() };
    let uid = id("Uid:")?;
    let gid = id("Gid:")?;
    let groups = field("Groups:")
        .map(|g| {
            g.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let eff = u64::from_str_radix(field("CapEff:")?, 16).ok()?;
    let caps = Caps {
        dac_override: eff & (1 << 1) != 0,
        dac_read_search: eff & (1 << 2) != 0,
    };
    Some(Creds {
        caps,
        caps_after_exec: caps,
        ..Creds::with_ids(uid, gid, groups)
    })
}

/// The last `PATH=` of the process's environment (a relative path is looked up nowhere by
/// the kernel, but a wrapper's `#!/usr/bin/env` is).
fn path_env_of(proc_pid: &Path) -> Option<String> {
    let env = std::fs::read(proc_pid.join("environ")).ok()?;
    env.split(|b| *b == 0)
        .rev()
        .find_map(|kv| kv.strip_prefix(b"PATH="))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_gives_the_filesystem_ids_groups_and_file_capabilities() {
        let status = "Name:\tsh\nUid:\t1000\t1000\t1000\t1000\nGid:\t3000\t3000\t3000\t3000\nGroups:\t2000 4000 \nCapEff:\t0000000000000002\n";
        let c = parse_status(status).unwrap();
        assert_eq!(
            (c.uid, c.gid, c.groups.clone()),
            (1000, 3000, vec![2000, 4000])
        );
        assert!(c.caps.dac_override && !c.caps.dac_read_search);
        let root = "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\nCapEff:\t000001ffffffffff\n";
        let r = parse_status(root).unwrap();
        assert_eq!((r.uid, r.caps), (0, Caps::ALL));
        assert!(parse_status("Name:\tx\n").is_none());
    }
}
