//! `archwatch agent`: the long-running job. One task per concern, bounded channels between
//! them:
//!
//! ```text
//! runtime/containerd watcher ─┐
//!                             ├─Input─► pipeline ──► jobs (records, inspections) ──┐
//! runtime/docker watcher ─────┘            │  ▲                                    │
//!                                          │  └──────────────── Done ──────────────┘
//!                                          ▼
//!                           Diagnosis ─► report: log, metrics, Events, API, journal
//! ```
//!
//! Each watcher (`runtime/`) subscribes first and lists second, so nothing falls in the gap;
//! duplicates are harmless (the tracker knows what it has seen). It hands the pipeline a
//! connection, a listing and events in the pipeline's own terms; every job that reads what
//! events do not carry is asked of the runtimes (`runtime::Runtimes`), so the pipeline
//! (`pipeline/`) names no runtime. Everything known of a container is one record in the
//! tracker's store: a reconcile prunes what a runtime no longer lists from every bit of state
//! and every gauge, and judges again, once, what a dropped connection left unjudged. Jobs
//! (`jobs`) are bounded: a few inspections at once, each on the blocking pool with a time
//! budget; one bad image never stalls the rest.

use crate::pipeline::Windows;
use crate::platform::Node;
use crate::sinks::api::{self, ApiState};
use crate::sinks::http::{self, Liveness, Readiness};
use crate::sinks::journal::Journal;
use crate::sinks::kube_events;
use crate::sinks::metrics::{self, Metrics};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

mod binfmt;
mod exec_tracer;
mod jobs;
mod pipeline;
#[cfg(feature = "lab")]
mod replay;
mod report;
mod runtime;

#[cfg(feature = "lab")]
pub use replay::{Replay, ReplayStats};

/// What feeds the pipeline: the runtimes the agent follows, or (in the lab) a recorded
/// stream replayed in their place.
pub enum Feed {
    Runtimes,
    #[cfg(feature = "lab")]
    Replay(Replay),
}

use binfmt::*;
use pipeline::*;
#[cfg(feature = "lab")]
use replay::*;
use report::*;

/// Everything the agent is told on the command line.
#[derive(Clone, Debug)]
pub struct Config {
    /// containerd's socket; `None` (`--address off`) when there is no containerd to follow.
    pub address: Option<PathBuf>,
    /// Docker Engine to follow (`unix://…`, `tcp://…`), if any.
    pub docker_host: Option<String>,
    /// How long one Docker request may take to be answered (a silent socket is given up on
    /// and reconnected with backoff).
    pub docker_timeout: Duration,
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    pub listen: Option<SocketAddr>,
    pub node_name: String,
    pub journal: Option<PathBuf>,
    pub journal_max_bytes: u64,
    pub binfmt_dir: PathBuf,
    pub node: Node,
    pub snapshotter: String,
    pub inspect_timeout: Duration,
    pub windows: Windows,
    /// Kubernetes Events: `auto` (in-cluster or kubeconfig) or `off`.
    pub kube: String,
    /// Events waiting for the API server beyond this are dropped, oldest first.
    pub kube_queue: usize,
    /// A kubeconfig to use instead of the in-cluster config or `$KUBECONFIG`.
    pub kubeconfig: Option<PathBuf>,
    /// Expiry of the lease under each image view: what a killed agent leaves behind is
    /// collected by containerd after this.
    pub view_lease_ttl: Duration,
    /// Serve the gRPC API (diagnosis stream, image verdicts, status) on this unix socket.
    pub api_socket: Option<PathBuf>,
    /// The host's /proc (hostPID or a hostPath mount in a pod), to confirm emulation from
    /// `/proc/<pid>/exe`.
    pub proc_dir: PathBuf,
    /// `/healthz` fails once containerd has been unreachable this long, so the kubelet
    /// restarts an agent that cannot get back to it.
    pub unhealthy_after: Duration,
    /// One Kubernetes API request's limit (a silent connection never holds Events for good).
    pub kube_request_timeout: Duration,
    /// Every failed exec in every container, from eBPF: `auto`, `on` or `off`.
    pub exec_tracer: crate::tracer::TracerMode,
    /// The host's cgroup v2 hierarchy (a pod's own /sys/fs/cgroup shows only itself);
    /// `None`: the one this process sees.
    pub cgroup_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Journal(#[from] crate::sinks::journal::JournalError),
    #[error("--exec-tracer on: {0}")]
    Tracer(crate::tracer::TracerError),
    #[error("cannot serve the API on {path}: {source}")]
    Api {
        path: String,
        source: std::io::Error,
    },
}

/// Runs until `stop` is cancelled. Never returns because containerd went away.
pub async fn run(
    cfg: Config,
    stop: CancellationToken,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), AgentError> {
    run_fed(cfg, Feed::Runtimes, stop, bound).await
}

/// [`run`], fed by containerd or by a replay (benchmarks and load tests drive the whole
/// agent, sinks included, with a recorded stream this way).
pub async fn run_fed(
    cfg: Config,
    feed: Feed,
    stop: CancellationToken,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), AgentError> {
    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let registry = Arc::new(Mutex::new(registry));
    let ready = Readiness::default();
    let live = Liveness::new(cfg.unhealthy_after);
    metrics.start_at_zero();
    metrics
        .build_info
        .get_or_create(&metrics::VersionLabels {
            version: env!("CARGO_PKG_VERSION").into(),
        })
        .set(1);
    let kernel = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    metrics
        .node_info
        .get_or_create(&metrics::NodeLabels {
            arch: cfg.node.arch.to_string(),
            kernel,
        })
        .set(1);
    // How image layers are read on this host: the path resolver, and whether opaque overlay
    // directories can be seen.
    let resolver = crate::rootfs::beneath::choice();
    info!(resolver = resolver.resolver.name(), reason = %resolver.reason, "Resolving paths in image layers.");
    if let Some(problem) = &resolver.problem {
        warn!(problem = %problem, "The resolver override is not usable.");
    }
    let xattrs = crate::rootfs::xattrs::visibility();
    metrics
        .overlay_xattrs_readable
        .set(i64::from(xattrs.readable));
    if let Some(w) = xattrs.warning() {
        warn!(overlay_xattrs_readable = false, "{w}");
    }

    let mut server = None;
    if let Some(addr) = cfg.listen {
        let (local, handle) = http::serve(
            addr,
            registry.clone(),
            ready.clone(),
            live.clone(),
            stop.clone(),
        )
        .await
        .map_err(|source| AgentError::Listen { addr, source })?;
        info!(address = %local, "Serving /metrics, /healthz and /readyz.");
        if let Some(tx) = bound {
            let _ = tx.send(local);
        }
        server = Some(handle);
    }
    let journal = match &cfg.journal {
        Some(p) => Some(Journal::open(p, cfg.journal_max_bytes)?),
        None => None,
    };

    let (binfmt_tx, binfmt_rx) = watch::channel(Arc::new(read_binfmt(&cfg, &metrics, true)));
    let binfmt_task = tokio::spawn(poll_binfmt(
        cfg.clone(),
        metrics.clone(),
        binfmt_tx,
        stop.clone(),
    ));

    // Started before anything else runs: `--exec-tracer on` on a node that cannot run it
    // fails here.
    let tracer = exec_tracer::start(cfg.exec_tracer, &metrics)?;
    let (tx, rx) = mpsc::channel::<Input>(1024);
    let mut watchers = Vec::new();
    if let Some(t) = tracer {
        watchers.push(tokio::spawn(exec_tracer::follow(
            t,
            cfg.proc_dir.clone(),
            cfg.cgroup_dir.clone(),
            cfg.node.clone(),
            binfmt_rx.clone(),
            cfg.inspect_timeout,
            metrics.clone(),
            tx.clone(),
            stop.clone(),
        )));
    }
    if let Some(host) = &cfg.docker_host {
        info!(host = %host, "Following Docker Engine.");
        watchers.push(tokio::spawn(runtime::docker::watch(
            host.clone(),
            cfg.docker_timeout,
            metrics.clone(),
            live.runtime("docker"),
            tx.clone(),
            stop.clone(),
        )));
    }
    match feed {
        Feed::Runtimes => {
            if let Some(address) = cfg.address.clone() {
                watchers.push(tokio::spawn(runtime::containerd::watch_containerd(
                    cfg.clone(),
                    address,
                    metrics.clone(),
                    live.runtime("containerd"),
                    tx,
                    stop.clone(),
                )));
            }
        }
        #[cfg(feature = "lab")]
        Feed::Replay(r) => {
            live.runtime("containerd").connected();
            watchers.push(tokio::spawn(replay_feed(
                cfg.clone(),
                metrics.clone(),
                r,
                tx,
            )));
        }
    }
    let mut events = None;
    let mut publisher = None;
    if let Some(client) = kube_events::client(
        &cfg.kube,
        cfg.kubeconfig.as_deref(),
        cfg.kube_request_timeout,
    )
    .await
    {
        let handle = kube_events::EventsHandle::new(cfg.kube_queue, metrics.clone());
        info!(queue = cfg.kube_queue, "Sending Kubernetes Events.");
        publisher = Some(tokio::spawn(kube_events::publish(
            client,
            handle.clone(),
            cfg.node_name.clone(),
            kube_events::Limits {
                request_timeout: cfg.kube_request_timeout,
                ..kube_events::Limits::default()
            },
            stop.clone(),
        )));
        events = Some(handle);
    }
    let api_state = ApiState::new(&cfg.node_name, &cfg.node.arch.to_string());
    let mut api_server = None;
    if let Some(path) = &cfg.api_socket {
        let h = api::serve(path, api_state.clone(), stop.clone())
            .await
            .map_err(|source| AgentError::Api {
                path: path.display().to_string(),
                source,
            })?;
        info!(socket = %path.display(), "Serving the archwatch.v1 API.");
        api_server = Some(h);
    }
    let sinks = Sinks {
        metrics: metrics.clone(),
        journal,
        events,
        api: api_state,
    };
    pipeline(cfg, rx, sinks, binfmt_rx, ready, stop.clone()).await;

    for w in watchers {
        let _ = w.await;
    }
    let _ = binfmt_task.await;
    if let Some(a) = api_server {
        let _ = a.await;
    }
    if let Some(p) = publisher {
        // In-flight writes get a moment; what is still queued is dropped with the process.
        let _ = tokio::time::timeout(Duration::from_secs(2), p).await;
    }
    if let Some(s) = server {
        let _ = s.await;
    }
    Ok(())
}
