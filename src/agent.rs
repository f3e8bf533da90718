//! `archwatch agent`: the long-running job. One task per concern, bounded channels between
//! them:
//!
//! ```text
//! watcher (connect, subscribe, reconcile, reconnect) ──Input──► pipeline ──► jobs (inspect)
//!                                                                  │  ▲          │
//!                                                                  │  └─JobDone──┘
//!                                                                  ▼
//!                                                 Diagnosis ─► log, metrics, journal
//! ```
//!
//! The watcher subscribes first and lists second, so nothing falls in the gap; duplicates
//! are harmless (the tracker knows what it has seen). Everything known of a container is one
//! record in the tracker's store: a reconcile prunes what containerd no longer lists from
//! every bit of state and every gauge, and judges again, once, what a dropped connection
//! left unjudged. Jobs (`jobs`) are bounded: a few inspections at once, each on the
//! blocking pool with a time budget; one bad image never stalls the rest. Containers that
//! run under emulation: `emulation`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt};
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::binfmt::Table;
use crate::containerd::event::{self, Envelope, Event};
use crate::containerd::{self, Client, ContainerdError};
use crate::diagnose::{Diagnosis, Identity};
use crate::fix::FixCode;
use crate::inspect::{Finding, Inspection, Verdict};
use crate::pipeline::images::{Images, Named};
use crate::pipeline::{CacheKey, History, Key, Process, Tracker, Windows};
use crate::platform::Node;
use crate::replay::Recording;
use crate::sinks::api::{self, ApiState};
use crate::sinks::http::{self, Liveness, Readiness};
use crate::sinks::journal::Journal;
use crate::sinks::kube_events;
use crate::sinks::metrics::{self, Metrics};

mod docker;
mod emulation;
mod jobs;

use jobs::{
    identify_job, inspect_off_runtime, origin_of, stale_of, Bounds, Done, FromImage, ImageJob,
    ImageOutcome, InspectFailure,
};

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
    #[error("cannot serve the API on {path}: {source}")]
    Api {
        path: String,
        source: std::io::Error,
    },
}

/// One line of the journal.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Record<'a> {
    /// A container that failed to exec.
    ExecFailure {
        diagnosed_at: DateTime<Utc>,
        #[serde(flatten)]
        diagnosis: &'a Diagnosis,
    },
    /// A container whose entrypoint runs only through a binfmt_misc emulator.
    Emulated {
        diagnosed_at: DateTime<Utc>,
        node: &'a str,
        #[serde(flatten)]
        identity: &'a Identity,
        argv: &'a [String],
        verdict: Verdict,
        reason: &'static str,
        handler: Option<&'a str>,
        /// `/proc/<pid>/exe` of the init process, when it could be read: the emulator.
        confirmed_by: Option<String>,
        binary_arch: Option<String>,
        node_arch: String,
        cause: &'a str,
        fix: &'a str,
        fix_code: FixCode,
    },
    /// A container whose files could not be judged (unreadable record or snapshot, an
    /// inspection over its time budget): its exit, if it fails, cannot be diagnosed.
    InspectionFailed {
        diagnosed_at: DateTime<Utc>,
        node: &'a str,
        #[serde(flatten)]
        identity: &'a Identity,
        /// A code of `archwatch_inspection_errors_total{kind}`.
        error_kind: &'static str,
        error: &'a str,
    },
    /// A pulled image whose entrypoint will not exec here (or needs emulation).
    Image {
        diagnosed_at: DateTime<Utc>,
        node: &'a str,
        runtime: crate::diagnose::Runtime,
        namespace: &'a str,
        image: &'a str,
        digest: &'a str,
        verdict: Verdict,
        reason: &'static str,
        cause: &'a str,
        fix: &'a str,
        fix_code: FixCode,
        binary_arch: Option<String>,
        node_arch: String,
        #[serde(skip_serializing_if = "<[Finding]>::is_empty")]
        findings: &'a [Finding],
    },
}

/// What the watcher tells the pipeline.
enum Input {
    /// A fresh connection and everything containerd lists right after subscribing.
    Reconciled {
        client: Lookup,
        listing: Box<Listing>,
    },
    Event(Envelope),
    Disconnected,
    /// A fresh connection to Docker Engine, with every container id and image name it
    /// lists right after subscribing.
    DockerReconciled {
        client: crate::docker::Client,
        containers: Vec<String>,
        images: Vec<String>,
    },
    DockerDisconnected,
    /// Docker's image names after an image event.
    DockerImages(Vec<String>),
    /// The init pid of a started Docker container, read from its record.
    DockerPid {
        id: String,
        pid: u32,
    },
    /// Answered once every job started so far has finished (a replay's end).
    Drained(tokio::sync::oneshot::Sender<()>),
}

/// Where the pipeline reads what events do not carry: containerd, or a recording.
#[derive(Clone)]
enum Lookup {
    Live(Client),
    Recorded(Arc<Recording>),
}

fn not_recorded(call: &'static str) -> ContainerdError {
    ContainerdError::Rpc {
        call,
        status: Box::new(tonic::Status::not_found("not in the recording")),
    }
}

impl Lookup {
    async fn container(
        &self,
        ns: &str,
        id: &str,
    ) -> Result<containerd_client::services::v1::Container, ContainerdError> {
        match self {
            Lookup::Live(c) => c.container(ns, id).await,
            Lookup::Recorded(r) => r
                .containers
                .get(&(ns.to_string(), id.to_string()))
                .cloned()
                .ok_or_else(|| not_recorded("Containers.Get")),
        }
    }

    async fn snapshot_layers(
        &self,
        ns: &str,
        snapshotter: &str,
        key: &str,
    ) -> Result<Vec<PathBuf>, ContainerdError> {
        match self {
            Lookup::Live(c) => c.snapshot_layers(ns, snapshotter, key).await,
            Lookup::Recorded(r) => r
                .snapshots
                .get(key)
                .cloned()
                .ok_or_else(|| not_recorded("Snapshots.Mounts")),
        }
    }

    async fn image_digest(&self, ns: &str, name: &str) -> Option<String> {
        match self {
            Lookup::Live(c) => c.image(ns, name).await.ok()?.target.map(|t| t.digest),
            Lookup::Recorded(r) => r.images.get(&(ns.to_string(), name.to_string())).cloned(),
        }
    }

    /// The parent of a container's snapshot (a recording has none).
    async fn snapshot_parent(&self, ns: &str, snapshotter: &str, key: &str) -> Option<String> {
        match self {
            Lookup::Live(c) => match c.snapshot_parent(ns, snapshotter, key).await {
                Ok(p) => p,
                Err(e) => {
                    debug!(key, error = %e, "Snapshot parent unreadable.");
                    None
                }
            },
            Lookup::Recorded(_) => None,
        }
    }

    /// What the CRI plugin remembers of a container of its own (a recording has none).
    async fn cri_history(&self, ns: &str, id: &str) -> Option<History> {
        match self {
            Lookup::Live(c) if ns == containerd::cri::NAMESPACE => match c.cri_history(id).await {
                Ok(h) => h,
                Err(e) => {
                    debug!(container = id, error = %e, "CRI status unreadable.");
                    None
                }
            },
            _ => None,
        }
    }
}

/// What feeds the pipeline: containerd's event stream, or a replay of one.
pub enum Feed {
    Containerd,
    Replay(Replay),
}

/// A recorded event stream to push through the pipeline, as fast as it goes or paced.
pub struct Replay {
    pub recording: Arc<Recording>,
    pub envelopes: Vec<containerd_client::types::Envelope>,
    /// Envelopes per second; `None` for as fast as the pipeline takes them.
    pub per_second: Option<f64>,
    /// Told when every envelope was decoded and every job they started has finished.
    pub done: tokio::sync::oneshot::Sender<ReplayStats>,
}

/// What a replay took.
#[derive(Clone, Debug)]
pub struct ReplayStats {
    pub envelopes: usize,
    pub decode_errors: usize,
    pub elapsed: Duration,
}

#[derive(Default)]
struct Listing {
    images: Vec<(String, String)>,
    containers: Vec<(String, containerd_client::services::v1::Container)>,
    tasks: Vec<(String, containerd_client::types::v1::Process)>,
}

/// The sinks every diagnosis goes to, fed from one value.
struct Sinks {
    metrics: Metrics,
    journal: Option<Journal>,
    events: Option<kube_events::EventsHandle>,
    api: Arc<ApiState>,
}

impl Sinks {
    fn exec_failure(&mut self, d: &Diagnosis) {
        warn!(
            namespace = d.identity.namespace(),
            pod = d.identity.pod.as_deref().unwrap_or(""),
            container = d.identity.container.as_deref().unwrap_or(&d.identity.container_id),
            image = %d.identity.image,
            verdict = %d.verdict,
            binary_arch = d.binary_arch.as_deref().unwrap_or(""),
            exit_code = d.exit_code,
            "Exec failure: {}",
            d.cause
        );
        self.metrics.record(d);
        if let (Some(ev), Some(spec)) = (&self.events, kube_events::for_diagnosis(d)) {
            ev.push(spec);
        }
        let diagnosed_at = Utc::now();
        self.api.publish(d, diagnosed_at);
        self.write(&Record::ExecFailure {
            diagnosed_at,
            diagnosis: d,
        });
    }

    fn write(&mut self, r: &Record) {
        if let Some(j) = &mut self.journal {
            if let Err(e) = j.append(r) {
                self.metrics
                    .inspection_errors
                    .get_or_create(&metrics::KindLabels {
                        kind: e.kind().into(),
                    })
                    .inc();
                warn!(error = %e, "Journal write failed.");
            }
        }
    }
}

/// Runs until `stop` is cancelled. Never returns because containerd went away.
pub async fn run(
    cfg: Config,
    stop: CancellationToken,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), AgentError> {
    run_fed(cfg, Feed::Containerd, stop, bound).await
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

    let (tx, rx) = mpsc::channel::<Input>(1024);
    let mut watchers = Vec::new();
    if let Some(host) = &cfg.docker_host {
        info!(host = %host, "Following Docker Engine.");
        watchers.push(tokio::spawn(docker::watch(
            host.clone(),
            cfg.docker_timeout,
            metrics.clone(),
            live.runtime("docker"),
            tx.clone(),
            stop.clone(),
        )));
    }
    match feed {
        Feed::Containerd => {
            if let Some(address) = cfg.address.clone() {
                watchers.push(tokio::spawn(watch_containerd(
                    cfg.clone(),
                    address,
                    metrics.clone(),
                    live.runtime("containerd"),
                    tx,
                    stop.clone(),
                )));
            }
        }
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

fn read_binfmt(cfg: &Config, metrics: &Metrics, first: bool) -> Table {
    let table = match Table::read_dir(&cfg.binfmt_dir) {
        Ok((t, errs)) => {
            for e in errs {
                debug!(error = %e, "Skipping a binfmt_misc entry.");
            }
            t
        }
        Err(e) => {
            if first {
                warn!(error = %e, "binfmt_misc is not readable; treating the node as having no handlers.");
            }
            Table::empty()
        }
    };
    metrics.binfmt_handler_info.clear();
    for h in &table.handlers {
        metrics
            .binfmt_handler_info
            .get_or_create(&metrics::HandlerLabels {
                name: h.name.clone(),
                arch: h
                    .arch
                    .map(|a| a.label().to_string())
                    .unwrap_or_else(|| "unknown".into()),
                flags: h.flags.clone(),
                enabled: (h.enabled && table.enabled).to_string(),
            })
            .set(1);
    }
    table
}

/// procfs has no inotify: re-read the binfmt_misc table on a short period.
async fn poll_binfmt(
    cfg: Config,
    metrics: Metrics,
    tx: watch::Sender<Arc<Table>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let t = read_binfmt(&cfg, &metrics, false);
                if **tx.borrow() != t {
                    info!(handlers = t.handlers.len(), "binfmt_misc table changed.");
                    let _ = tx.send(Arc::new(t));
                }
            }
        }
    }
}

/// Whether the containerd side follows namespace `ns`: Docker's own (`moby`) is followed
/// through Docker when the agent follows Docker.
fn wanted(cfg: &Config, ns: &str) -> bool {
    (cfg.namespaces.is_empty() || cfg.namespaces.iter().any(|n| n == ns))
        && !(cfg.docker_host.is_some() && ns == crate::docker::NAMESPACE)
}

/// Connect, subscribe, list, forward; on any failure back off (capped, jittered) and redo.
/// The backoff starts over after every session that got connected: a node whose containerd
/// restarts now and then is reconnected within a second each time, not after the cap.
async fn watch_containerd(
    cfg: Config,
    address: PathBuf,
    metrics: Metrics,
    live: Liveness,
    tx: mpsc::Sender<Input>,
    stop: CancellationToken,
) {
    let mut attempt: u32 = 0;
    let mut was_connected = false;
    while !stop.is_cancelled() {
        let mut connected = false;
        match session(
            &cfg,
            &address,
            &metrics,
            &live,
            &tx,
            &stop,
            was_connected,
            &mut connected,
        )
        .await
        {
            Ok(()) => return,
            Err(e) => {
                metrics.containerd_connected.set(0);
                live.disconnected();
                let _ = tx.send(Input::Disconnected).await;
                // One line per outage, not one per failed attempt.
                if connected || attempt == 0 {
                    warn!(error = %e, address = %address.display(), "containerd connection lost; reconnecting.");
                } else {
                    debug!(error = %e, attempt, "containerd still unreachable.");
                }
            }
        }
        if connected {
            attempt = 0;
            was_connected = true;
        }
        let delay = backoff(attempt, rand::random::<f64>());
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Delay before reconnect attempt `attempt` (0-based): 100 ms doubling to a 15 s cap, plus up
/// to half of that again at random (`jitter` in 0..1), so a fleet does not reconnect in step.
fn backoff(attempt: u32, jitter: f64) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(1u32 << attempt.min(8));
    let capped = base.min(Duration::from_secs(15));
    capped + capped.mul_f64(jitter.clamp(0.0, 1.0) * 0.5)
}

/// One connection's life. `Ok` only when stopping; `connected` is set once the listing is
/// done and handed to the pipeline (counted as a reconnect when `reconnecting`).
///
/// containerd (grpc-go) sends the response headers of `Subscribe` with the first event, so
/// the call cannot be awaited before listing. It is sent first, on the same connection, and
/// awaited after the listing; the handler registers the subscriber on arrival, before the
/// list calls that follow it are answered.
#[allow(clippy::too_many_arguments)]
async fn session(
    cfg: &Config,
    address: &std::path::Path,
    metrics: &Metrics,
    live: &Liveness,
    tx: &mpsc::Sender<Input>,
    stop: &CancellationToken,
    reconnecting: bool,
    connected: &mut bool,
) -> Result<(), ContainerdError> {
    let client = Client::connect(address, Duration::from_secs(5))
        .await?
        .with_lease_ttl(cfg.view_lease_ttl);
    let sub_client = client.clone();
    let mut subscribe = tokio::spawn(async move { sub_client.subscribe().await });
    // Let the request reach containerd before the listing requests do. If the call is
    // already answered (an event came at once), its stream is kept: events buffer in it
    // while the listing runs.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let listing = list_everything(cfg, &client).await?;
    metrics.containerd_connected.set(1);
    if reconnecting {
        metrics.containerd_reconnects.inc();
    }
    live.connected();
    *connected = true;
    info!(address = %address.display(), containers = listing.containers.len(), images = listing.images.len(), "Connected to containerd.");
    if tx
        .send(Input::Reconciled {
            client: Lookup::Live(client.clone()),
            listing: Box::new(listing),
        })
        .await
        .is_err()
    {
        return Ok(());
    }
    let mut stream = tokio::select! {
        _ = stop.cancelled() => { subscribe.abort(); return Ok(()) }
        r = &mut subscribe => match r {
            Ok(r) => r?,
            Err(_) => return Err(ContainerdError::Missing("subscription task")),
        },
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            item = stream.next() => match item {
                Some(Ok(env)) => {
                    if let Some(e) = accept(cfg, metrics, &env) {
                        if tx.send(Input::Event(e)).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                Some(Err(status)) => return Err(ContainerdError::Rpc { call: "Events.Subscribe", status: Box::new(status) }),
                None => return Err(ContainerdError::Rpc { call: "Events.Subscribe", status: Box::new(tonic::Status::unavailable("event stream ended")) }),
            }
        }
    }
}

/// Counts an envelope and decodes it, if its namespace is watched.
fn accept(
    cfg: &Config,
    metrics: &Metrics,
    env: &containerd_client::types::Envelope,
) -> Option<Envelope> {
    metrics
        .containerd_events
        .get_or_create(&metrics::TopicLabels {
            topic: event::topic_label(&env.topic).into(),
        })
        .inc();
    if !wanted(cfg, &env.namespace) {
        return None;
    }
    match event::decode(env) {
        Ok(e) => Some(e),
        Err(e) => {
            metrics
                .inspection_errors
                .get_or_create(&metrics::KindLabels {
                    kind: "event_decode".into(),
                })
                .inc();
            warn!(error = %e, "Undecodable containerd event.");
            None
        }
    }
}

/// Pushes a recorded stream through the pipeline in place of containerd.
async fn replay_feed(cfg: Config, metrics: Metrics, r: Replay, tx: mpsc::Sender<Input>) {
    let start = tokio::time::Instant::now();
    let mut stats = ReplayStats {
        envelopes: r.envelopes.len(),
        decode_errors: 0,
        elapsed: Duration::ZERO,
    };
    let reconciled = Input::Reconciled {
        client: Lookup::Recorded(r.recording),
        listing: Box::default(),
    };
    if tx.send(reconciled).await.is_err() {
        return;
    }
    metrics.containerd_connected.set(1);
    for (i, env) in r.envelopes.iter().enumerate() {
        if let Some(rate) = r.per_second {
            tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        }
        match accept(&cfg, &metrics, env) {
            Some(e) => {
                if tx.send(Input::Event(e)).await.is_err() {
                    return;
                }
            }
            None => stats.decode_errors += usize::from(wanted(&cfg, &env.namespace)),
        }
    }
    let (t, drained) = tokio::sync::oneshot::channel();
    if tx.send(Input::Drained(t)).await.is_err() {
        return;
    }
    let _ = drained.await;
    stats.elapsed = start.elapsed();
    let _ = r.done.send(stats);
}

async fn list_everything(cfg: &Config, client: &Client) -> Result<Listing, ContainerdError> {
    let mut l = Listing::default();
    for ns in client.namespaces().await? {
        if !wanted(cfg, &ns) {
            continue;
        }
        for i in client.images(&ns).await? {
            l.images.push((ns.clone(), i.name));
        }
        for c in client.containers(&ns).await? {
            l.containers.push((ns.clone(), c));
        }
        for t in client.tasks(&ns).await? {
            l.tasks.push((ns.clone(), t));
        }
    }
    Ok(l)
}

/// Task status codes of containerd's Process message.
const TASK_RUNNING: i32 = 2;
const TASK_STOPPED: i32 = 3;
const TASK_PAUSED: i32 = 4;

struct Pipeline {
    cfg: Config,
    tracker: Tracker,
    client: Option<Lookup>,
    /// Docker Engine while connected (with `--docker-host`).
    docker: Option<crate::docker::Client>,
    drained: Vec<tokio::sync::oneshot::Sender<()>>,
    binfmt: watch::Receiver<Arc<Table>>,
    /// Image verdicts by content, however many names point at it.
    images: Images,
    sinks: Sinks,
    jobs: JoinSet<Option<Done>>,
    bounds: Bounds,
    ready: Readiness,
}

async fn pipeline(
    cfg: Config,
    mut rx: mpsc::Receiver<Input>,
    sinks: Sinks,
    binfmt: watch::Receiver<Arc<Table>>,
    ready: Readiness,
    stop: CancellationToken,
) {
    let mut tracker = Tracker::new(&cfg.node_name, cfg.windows);
    let mut images = Images::default();
    // What an earlier run journaled is not reported again (the journal survives restarts).
    if let Some(path) = &cfg.journal {
        let seen = crate::sinks::journal::reported(path, cfg.journal_max_bytes);
        if !seen.failures.is_empty() || !seen.images.is_empty() {
            info!(
                failures = seen.failures.len(),
                images = seen.images.len(),
                "Journal read: these are not reported again."
            );
        }
        tracker.already_reported(
            seen.failures
                .into_iter()
                .map(|(namespace, id)| Key { namespace, id }),
        );
        images.already_warned(seen.images);
    }
    let mut p = Pipeline {
        tracker,
        cfg,
        client: None,
        docker: None,
        drained: Vec::new(),
        binfmt,
        images,
        sinks,
        jobs: JoinSet::new(),
        bounds: Bounds::default(),
        ready,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            input = rx.recv() => match input {
                Some(i) => p.input(i),
                None => break,
            },
            Some(done) = p.jobs.join_next(), if !p.jobs.is_empty() => {
                if let Ok(Some(d)) = done {
                    p.done(d);
                }
            }
            _ = tick.tick() => {
                for d in p.tracker.tick(Utc::now()) {
                    p.sinks.exec_failure(&d);
                }
                p.ask_refusals();
                p.confirm_pending_emulation();
            }
            Ok(()) = p.binfmt.changed() => p.binfmt_changed(),
        }
        p.sinks.api.set_tracked(p.tracker.len());
        p.sync_emulated_gauge();
        if p.jobs.is_empty() {
            for t in p.drained.drain(..) {
                let _ = t.send(());
            }
        }
    }
    // Drain: let in-flight jobs finish (and remove their views), within a deadline.
    let deadline = tokio::time::sleep(Duration::from_secs(5));
    tokio::pin!(deadline);
    while !p.jobs.is_empty() {
        tokio::select! {
            _ = &mut deadline => { p.jobs.abort_all(); break; }
            _ = p.jobs.join_next() => {}
        }
    }
    p.ready.set(false);
}

impl Pipeline {
    fn input(&mut self, input: Input) {
        match input {
            Input::Disconnected => {
                self.client = None;
                self.update_ready();
                self.sinks.api.set_connected(false, false);
            }
            Input::Reconciled { client, listing } => {
                self.client = Some(client);
                self.reconcile(*listing);
                self.update_ready();
                self.sinks.api.set_connected(true, true);
            }
            Input::DockerDisconnected => {
                self.docker = None;
                self.update_ready();
            }
            Input::DockerReconciled {
                client,
                containers,
                images,
            } => {
                self.docker = Some(client);
                self.reconcile_docker(containers, images);
                self.update_ready();
            }
            Input::DockerImages(names) => self.docker_images(names),
            Input::DockerPid { id, pid } => {
                let key = Key {
                    namespace: crate::docker::NAMESPACE.into(),
                    id,
                };
                self.tracker.init_pid(&key, pid);
                self.note_emulated(&key);
            }
            Input::Event(env) => self.event(env),
            Input::Drained(t) => self.drained.push(t),
        }
    }

    /// Ready when every runtime the agent follows is connected and listed.
    fn update_ready(&mut self) {
        let containerd = self.cfg.address.is_none() || self.client.is_some();
        let docker = self.cfg.docker_host.is_none() || self.docker.is_some();
        self.ready.set(containerd && docker);
    }

    /// In scope of the containerd side's reconcile: every namespace but Docker's when Docker
    /// is followed.
    fn containerd_scope(&self) -> impl Fn(&str) -> bool {
        let docker = self.cfg.docker_host.is_some();
        move |ns: &str| !(docker && ns == crate::docker::NAMESPACE)
    }

    /// What Docker lists right after subscribing: containers not seen yet are judged, with
    /// what became of them (one that died while the agent was away is reported from its
    /// record); what went is forgotten; image names are reconciled.
    fn reconcile_docker(&mut self, containers: Vec<String>, images: Vec<String>) {
        let now = Utc::now();
        let ns = crate::docker::NAMESPACE;
        let keys: Vec<Key> = containers
            .into_iter()
            .map(|id| Key {
                namespace: ns.to_string(),
                id,
            })
            .collect();
        let seen: HashSet<Key> = keys.iter().cloned().collect();
        let again: HashSet<Key> = self
            .tracker
            .reconciled_in(&seen, |k| k.namespace == ns)
            .into_iter()
            .collect();
        self.journal_gone_unjudged();
        for key in keys {
            if again.contains(&key) || self.created(key.clone(), now) {
                self.identify(key, None, None, true);
            }
        }
        self.docker_images(images);
    }

    /// Docker's image names now: new ones are judged, gone ones forgotten.
    fn docker_images(&mut self, names: Vec<String>) {
        let ns = crate::docker::NAMESPACE;
        let listed: Vec<(String, String)> =
            names.into_iter().map(|n| (ns.to_string(), n)).collect();
        for (ns, name) in self.images.reconciled_in(&listed, |n| n == ns) {
            self.inspect_image(ns, name);
        }
        let images = &self.images;
        self.sinks
            .api
            .retain_images(|ns, digest| images.display_name(ns, digest).is_some());
        self.update_image_gauge();
    }

    fn reconcile(&mut self, l: Listing) {
        let now = Utc::now();
        // containerd 1.6 leaves container_id empty in Tasks.List; the init process's id is
        // the container's.
        let task_key = |ns: &str, t: &containerd_client::types::v1::Process| Key {
            namespace: ns.to_string(),
            id: if t.container_id.is_empty() {
                t.id.clone()
            } else {
                t.container_id.clone()
            },
        };
        let with_task: HashSet<Key> = l.tasks.iter().map(|(ns, t)| task_key(ns, t)).collect();
        let seen: HashSet<Key> = l
            .containers
            .iter()
            .map(|(ns, c)| Key {
                namespace: ns.clone(),
                id: c.id.clone(),
            })
            .collect();
        // What went while the agent was away goes from every bit of state; what a dropped
        // connection left unjudged is judged again.
        let scope = self.containerd_scope();
        let again: HashSet<Key> = self
            .tracker
            .reconciled_in(&seen, |k| scope(&k.namespace))
            .into_iter()
            .collect();
        self.journal_gone_unjudged();
        for (ns, c) in l.containers {
            let key = Key {
                namespace: ns,
                id: c.id.clone(),
            };
            // First seen here: without a task, only the runtime knows whether it ran.
            let ask = !with_task.contains(&key);
            if again.contains(&key) {
                debug!(container = %key.id, "Judging again what a dropped connection left unjudged.");
                self.identify(key, Some(c), None, ask);
            } else if self.tracker.container_created(key.clone(), now) {
                self.identify(key, Some(c), None, ask);
            }
        }
        for (ns, t) in l.tasks {
            let key = task_key(&ns, &t);
            match t.status {
                TASK_STOPPED if t.exit_status != 0 => {
                    let at = event::timestamp(t.exited_at.as_ref());
                    for d in self
                        .tracker
                        .task_stopped_before_watch(&key, t.exit_status, at)
                    {
                        self.sinks.exec_failure(&d);
                    }
                }
                TASK_RUNNING | TASK_PAUSED => self.tracker.task_running(&key, t.pid),
                TASK_STOPPED => self.tracker.task_created(&key),
                _ => self.tracker.task_created(&key),
            }
        }
        let scope = self.containerd_scope();
        for (ns, name) in self.images.reconciled_in(&l.images, scope) {
            self.inspect_image(ns, name);
        }
        let images = &self.images;
        self.sinks
            .api
            .retain_images(|ns, digest| images.display_name(ns, digest).is_some());
        self.update_image_gauge();
    }

    fn event(&mut self, env: Envelope) {
        let ns = env.namespace;
        let at = env.timestamp.unwrap_or_else(Utc::now);
        let key = |id: String| Key {
            namespace: ns.clone(),
            id,
        };
        let diagnoses = match env.event {
            Event::ImageCreate { name } => {
                self.inspect_image(ns.clone(), name);
                Vec::new()
            }
            Event::ImageUpdate { name } => {
                // Labels changed, or the name points at other content now: looked up again.
                self.inspect_image(ns.clone(), name);
                Vec::new()
            }
            Event::ImageDelete { name } => {
                self.image_name_gone(&ns, &name);
                Vec::new()
            }
            Event::ContainerCreate { id, .. } => {
                let k = key(id);
                if self.created(k.clone(), at) {
                    self.identify(k, None, None, false);
                }
                Vec::new()
            }
            Event::ContainerDelete { id } => {
                let k = key(id);
                self.note_emulated(&k);
                self.tracker.container_deleted(&k, at)
            }
            Event::TaskCreate {
                container_id,
                rootfs,
                ..
            } => {
                let k = key(container_id);
                self.tracker.task_created(&k);
                if !self.tracker.knows(&k) && self.created(k.clone(), at) {
                    self.identify(k, None, Some(rootfs), false);
                }
                Vec::new()
            }
            Event::TaskStart { container_id, pid } => {
                let k = key(container_id);
                self.tracker.task_started(&k, at, pid);
                self.note_emulated(&k);
                Vec::new()
            }
            Event::TaskExit {
                container_id,
                id,
                exit_status,
                exited_at,
                ..
            } => {
                let k = key(container_id);
                if id == k.id {
                    // Not running any more: reported (if not yet) without confirmation.
                    self.tracker.init_gone(&k);
                    self.note_emulated(&k);
                }
                self.tracker
                    .task_exited(&k, &id, exit_status, exited_at.unwrap_or(at))
            }
            Event::TaskDelete { .. } | Event::Other => Vec::new(),
        };
        for d in diagnoses {
            self.sinks.exec_failure(&d);
        }
    }

    /// Reads the container record (argv, identity, layers) off the pipeline; with
    /// `ask_history`, also what the runtime remembers of a container that has no task.
    fn identify(
        &mut self,
        key: Key,
        record: Option<containerd_client::services::v1::Container>,
        rootfs: Option<Vec<containerd_client::types::Mount>>,
        ask_history: bool,
    ) {
        if docker::is_docker(&self.cfg, &key.namespace) {
            let Some(client) = self.docker.clone() else {
                return;
            };
            let containerd = self.live_containerd();
            let errors = self.sinks.metrics.inspection_errors.clone();
            let bounds = self.bounds.clone();
            let job_key = key.clone();
            self.spawn_container_job(job_key, async move {
                let _permit = bounds.lookup().await;
                docker::identify(&client, containerd.as_ref(), key, ask_history, &errors).await
            });
            return;
        }
        let Some(client) = self.client.clone() else {
            // Judged at the next reconcile.
            return;
        };
        let errors = self.sinks.metrics.inspection_errors.clone();
        let bounds = self.bounds.clone();
        let job_key = key.clone();
        self.spawn_container_job(job_key, async move {
            let _permit = bounds.lookup().await;
            identify_job(&client, key, record, rootfs, ask_history, &errors).await
        });
    }

    /// A container seen for the first time: true when it is new to the tracker.
    fn created(&mut self, key: Key, at: DateTime<Utc>) -> bool {
        if docker::is_docker(&self.cfg, &key.namespace) {
            self.tracker.container_created_recording_refusals(key, at)
        } else {
            self.tracker.container_created(key, at)
        }
    }

    /// Asks Docker whether the containers that never got a task had their start refused.
    fn ask_refusals(&mut self) {
        let keys = self.tracker.take_to_ask();
        let Some(client) = self.docker.clone() else {
            return;
        };
        for key in keys {
            let client = client.clone();
            let bounds = self.bounds.clone();
            self.jobs.spawn(async move {
                let _permit = bounds.lookup().await;
                Some(docker::asked(&client, key).await)
            });
        }
    }

    /// The live containerd client, if the agent follows one.
    fn live_containerd(&self) -> Option<Client> {
        match &self.client {
            Some(Lookup::Live(c)) => Some(c.clone()),
            _ => None,
        }
    }

    /// Spawns a job about container `key`, marked under way in its record until it
    /// answers; a job that panics answers [`Done::Lost`].
    fn spawn_container_job(
        &mut self,
        key: Key,
        job: impl std::future::Future<Output = Done> + Send + 'static,
    ) {
        self.tracker.job_started(&key);
        self.jobs.spawn(async move {
            Some(
                AssertUnwindSafe(job)
                    .catch_unwind()
                    .await
                    .unwrap_or(Done::Lost(key)),
            )
        });
    }

    fn done(&mut self, d: Done) {
        match d {
            Done::Sandbox(key) => self.tracker.forget(&key),
            Done::Asked { key, history } => {
                if let Some(h) = history {
                    for d in self.tracker.history(&key, h) {
                        self.sinks.exec_failure(&d);
                    }
                }
            }
            Done::Lost(key) => {
                warn!(container = %key.id, "A job about this container ended without an answer; it is judged again at the next reconcile.");
                self.tracker.job_lost(&key);
            }
            Done::Identified {
                key,
                who,
                process,
                cache_key,
                layers,
                history,
                from,
            } => {
                let (need, mut diagnoses) = self.tracker.identified(&key, *who, cache_key.as_ref());
                if let Some(h) = history {
                    diagnoses.extend(self.tracker.history(&key, h));
                }
                for d in diagnoses {
                    self.sinks.exec_failure(&d);
                }
                if need {
                    self.inspect_container(key, process, cache_key, layers, from);
                } else {
                    self.note_emulated(&key);
                    self.tracker.reap_deleted(&key);
                }
            }
            Done::ContainerInspected {
                key,
                cache_key,
                result,
            } => {
                let result = match result {
                    Ok(i) => Ok(i),
                    Err(f) => {
                        if f.retry && self.tracker.will_retry(&key) {
                            // The runtime could not say (restarting, say): judged again at
                            // the next reconcile, and journaled only if that fails too or
                            // the container goes first, so a container is never both
                            // unjudged and judged in the journal.
                            debug!(container = %key.id, error_kind = f.kind, "Lookup failed; judged again at the next reconcile: {}", f.detail);
                            self.tracker.defer_failure(&key, f.kind, f.detail.clone());
                        } else {
                            self.inspection_failed(&key, &f);
                        }
                        Err(f.retry)
                    }
                };
                for d in self.tracker.inspected(&key, cache_key.as_ref(), result) {
                    self.sinks.exec_failure(&d);
                }
                self.note_emulated(&key);
                self.tracker.reap_deleted(&key);
            }
            Done::ImageNamed {
                ns,
                name,
                digest,
                index,
            } => {
                let Some(digest) = digest else {
                    self.images.unnamed(&(ns, name));
                    return;
                };
                let key = (ns.clone(), name.clone());
                let before = self.images.digest_of(&key).map(str::to_string);
                if before.as_ref().is_some_and(|d| *d != digest) {
                    // Re-pointed: the old content loses this name.
                    self.image_name_gone(&ns, &name);
                }
                if index && before.as_ref() != Some(&digest) {
                    // A name newly on an index can make the node's copy of a single-arch tag
                    // of that repository stale (`stale_image`), which a cached verdict would
                    // not say.
                    self.tracker.clear_cache();
                }
                match self.images.named((ns.clone(), name.clone()), &digest) {
                    Named::Known(i) => self.show_image(&ns, &digest, &i),
                    Named::Inspect => self.spawn_image_job(ns, name, digest),
                    Named::Wait => {}
                }
            }
            Done::Image {
                ns,
                name,
                expected,
                outcome,
            } => {
                let judged = match outcome {
                    ImageOutcome::Verdict { digest, inspection } => {
                        Some((digest, crate::pipeline::cache::capped(inspection)))
                    }
                    ImageOutcome::Failed => None,
                };
                let namespaces = self.images.judged(
                    &expected,
                    judged.as_ref().map(|(d, i)| (d.as_str(), i.clone())),
                );
                let Some((digest, inspection)) = judged else {
                    return;
                };
                for n in &namespaces {
                    self.show_image(n, &digest, &inspection);
                }
                if !inspection.verdict.will_exec()
                    || inspection.verdict == Verdict::Emulated
                    || !inspection.findings.is_empty()
                {
                    let shown = self
                        .images
                        .display_name(&ns, &digest)
                        .unwrap_or_else(|| name.clone());
                    self.image_warning(&ns, &shown, &digest, &inspection);
                }
                self.update_image_gauge();
            }
        }
    }

    /// Lists `digest`'s verdict in the API under its most readable name in `ns`.
    fn show_image(&mut self, ns: &str, digest: &str, i: &Inspection) {
        if let Some(name) = self.images.display_name(ns, digest) {
            self.sinks.api.set_image(ns, &name, digest, i);
        }
    }

    /// An image name went (deleted, or re-pointed): the verdict goes with its last name.
    fn image_name_gone(&mut self, ns: &str, name: &str) {
        let Some(r) = self.images.removed(&(ns.to_string(), name.to_string())) else {
            return;
        };
        if r.in_namespace {
            // Listed under the name that remains.
            if let Some(i) = self.images.verdict(&r.digest) {
                self.show_image(ns, &r.digest, &i);
            }
        } else {
            self.sinks
                .api
                .retain_images(|n, d| !(n == ns && d == r.digest));
        }
        self.update_image_gauge();
    }

    /// A handler came or went: cached verdicts may be wrong, and every image on the node is
    /// judged again (a removed handler turns `emulated` into `arch_mismatch` before any pod
    /// restarts).
    fn binfmt_changed(&mut self) {
        self.tracker.clear_cache();
        for ((ns, name), digest) in self.images.rejudge() {
            self.spawn_image_job(ns, name, digest);
        }
    }

    /// Containers whose deferred failure found them gone at a reconcile: said now.
    fn journal_gone_unjudged(&mut self) {
        for (key, who, d) in self.tracker.take_gone_unjudged() {
            let f = InspectFailure {
                kind: d.kind,
                detail: d.detail,
                retry: false,
            };
            self.inspection_failed_as(&key, Some(who), &f);
        }
    }

    /// A container that will run only under emulation: said once, when its verdict lands.
    /// Says which container went unjudged and why, in the log and the journal.
    fn inspection_failed(&mut self, key: &Key, f: &InspectFailure) {
        self.inspection_failed_as(key, None, f);
    }

    fn inspection_failed_as(&mut self, key: &Key, known: Option<Identity>, f: &InspectFailure) {
        let who = match known.as_ref().or(self.tracker.identity(key)) {
            Some(w) if !w.container_id.is_empty() => w.clone(),
            // The record itself was unreadable (gone before it could be read: a container
            // removed that fast leaves nothing to judge it by): the key is all there is.
            _ => Identity {
                containerd_namespace: key.namespace.clone(),
                container_id: key.id.clone(),
                runtime: if docker::is_docker(&self.cfg, &key.namespace) {
                    crate::diagnose::Runtime::Docker
                } else {
                    crate::diagnose::Runtime::Containerd
                },
                ..Identity::default()
            },
        };
        warn!(
            namespace = who.namespace(),
            pod = who.pod.as_deref().unwrap_or(""),
            container = who.container.as_deref().unwrap_or(&who.container_id),
            image = %who.image,
            error_kind = f.kind,
            "Container could not be inspected; an exec failure of it cannot be diagnosed: {}",
            f.detail
        );
        let node = self.cfg.node_name.clone();
        self.sinks.write(&Record::InspectionFailed {
            diagnosed_at: Utc::now(),
            node: &node,
            identity: &who,
            error_kind: f.kind,
            error: &f.detail,
        });
    }

    fn image_warning(&mut self, ns: &str, name: &str, digest: &str, i: &Inspection) {
        if !self.images.warn_once(digest, i.verdict.code()) {
            return;
        }
        if !i.verdict.will_exec() {
            warn!(namespace = ns, image = name, digest, verdict = %i.verdict, "Pulled image cannot run on this node: {}", i.cause);
        } else {
            info!(namespace = ns, image = name, digest, verdict = %i.verdict, "Pulled image: {}", i.cause);
        }
        let node = self.cfg.node_name.clone();
        if !i.verdict.will_exec() {
            if let Some(ev) = &self.sinks.events {
                let cause = format!("Image {name} ({digest}): {}", i.cause);
                ev.push(kube_events::for_node(
                    &node,
                    Some(digest),
                    "IncompatibleImagePulled",
                    &cause,
                    &i.fix,
                ));
            }
        }
        let runtime = if docker::is_docker(&self.cfg, ns) {
            crate::diagnose::Runtime::Docker
        } else {
            crate::diagnose::Runtime::Containerd
        };
        self.sinks.write(&Record::Image {
            diagnosed_at: Utc::now(),
            node: &node,
            runtime,
            namespace: ns,
            image: name,
            digest,
            verdict: i.verdict,
            reason: if i.verdict.will_exec() {
                i.verdict.event_reason()
            } else {
                "IncompatibleImagePulled"
            },
            cause: &i.cause,
            fix: &i.fix,
            fix_code: i.fix_code,
            binary_arch: i.binary_arch.map(|a| a.to_string()),
            node_arch: i.node_arch.to_string(),
            findings: &i.findings,
        });
    }

    /// One count per judged content, however many names it has.
    fn update_image_gauge(&mut self) {
        let g = &self.sinks.metrics.images_inspected;
        g.clear();
        for i in self.images.verdicts() {
            g.get_or_create(&metrics::ImageLabels {
                verdict: i.verdict.code().into(),
                binary_arch: i.binary_arch.map(|a| a.label()).unwrap_or("unknown").into(),
            })
            .inc();
        }
    }

    fn inspect_container(
        &mut self,
        key: Key,
        process: Process,
        cache_key: Option<CacheKey>,
        layers: Vec<PathBuf>,
        from: FromImage,
    ) {
        let node = self.cfg.node.clone();
        let binfmt = self.binfmt.clone();
        let timeout = self.cfg.inspect_timeout;
        let m = self.sinks.metrics.clone();
        let bounds = self.bounds.clone();
        let job_key = key.clone();
        // Docker's containers have no containerd image to tell the variant by.
        let live = if docker::is_docker(&self.cfg, &key.namespace) {
            None
        } else {
            self.live_containerd()
        };
        self.spawn_container_job(job_key, async move {
            let ns = key.namespace.as_str();
            // The variant the layers are, and what its config claims (a config that lies
            // about the binary is the build stage's doing).
            let origin = match (&live, &from.parent) {
                (Some(c), Some(parent)) => {
                    let _lookup = bounds.lookup().await;
                    origin_of(c, ns, &from.image, parent, timeout).await
                }
                _ => None,
            };
            let claimed = origin
                .as_ref()
                .and_then(|o| o.config.as_ref())
                .and_then(|c| c.arch())
                .or(from.claimed);
            let permit = bounds.container().await;
            // The table as it is when the inspection starts, not when it was queued.
            let table = binfmt.borrow().clone();
            let mut result = inspect_off_runtime(
                layers,
                process,
                claimed,
                node.clone(),
                table,
                timeout,
                &m,
                "container",
            )
            .await;
            drop(permit);
            // A verdict about a binary of another arch: was the variant forced, or is the
            // node's copy of the tag stale?
            if let (Ok(i), Some(o)) = (&mut result, &origin) {
                if crate::fix::variant_matters(i) {
                    let v = match (&from.parent, &live) {
                        (Some(parent), _) if !o.manifests.is_empty() => {
                            o.forced(&from.image, parent, &node)
                        }
                        (_, Some(c)) if o.manifests.is_empty() => {
                            let _lookup = bounds.lookup().await;
                            stale_of(c, ns, &from.image, &o.target_digest, &node, timeout).await
                        }
                        _ => None,
                    };
                    if let Some(v) = v {
                        crate::fix::note_variant(i, &v);
                    }
                }
            }
            Done::ContainerInspected {
                key,
                cache_key,
                result: result.map(Arc::new),
            }
        });
    }

    /// Resolves an image name to its target digest; the content is judged once per digest.
    fn inspect_image(&mut self, ns: String, name: String) {
        if docker::is_docker(&self.cfg, &ns) {
            let Some(client) = self.docker.clone() else {
                return;
            };
            if !self.images.want((ns.clone(), name.clone())) {
                return;
            }
            let bounds = self.bounds.clone();
            self.jobs.spawn(async move {
                let _permit = bounds.lookup().await;
                Some(docker::image_named(&client, ns, name).await)
            });
            return;
        }
        // A recording carries no image content: images are judged live only.
        let Some(Lookup::Live(client)) = self.client.clone() else {
            return;
        };
        if !self.images.want((ns.clone(), name.clone())) {
            return;
        }
        let bounds = self.bounds.clone();
        self.jobs.spawn(async move {
            let _permit = bounds.lookup().await;
            let target = client.image(&ns, &name).await.ok().and_then(|i| i.target);
            let index = target
                .as_ref()
                .is_some_and(|t| crate::variant::is_index(&t.media_type));
            Some(Done::ImageNamed {
                ns,
                name,
                digest: target.map(|t| t.digest),
                index,
            })
        });
    }

    /// Inspects the content `digest` through one of its names.
    fn spawn_image_job(&mut self, ns: String, name: String, expected: String) {
        if docker::is_docker(&self.cfg, &ns) {
            let Some(client) = self.docker.clone() else {
                self.images.judged(&expected, None);
                return;
            };
            let containerd = self.live_containerd();
            let job = docker::ImageJob {
                node: self.cfg.node.clone(),
                binfmt: self.binfmt.clone(),
                timeout: self.cfg.inspect_timeout,
                metrics: self.sinks.metrics.clone(),
                bounds: self.bounds.clone(),
            };
            self.jobs.spawn(async move {
                let outcome = AssertUnwindSafe(job.run(&client, containerd.as_ref(), &name))
                    .catch_unwind()
                    .await
                    .unwrap_or(ImageOutcome::Failed);
                Some(Done::Image {
                    ns,
                    name,
                    expected,
                    outcome,
                })
            });
            return;
        }
        let Some(Lookup::Live(client)) = self.client.clone() else {
            self.images.judged(&expected, None);
            return;
        };
        let job = ImageJob {
            node: self.cfg.node.clone(),
            binfmt: self.binfmt.clone(),
            timeout: self.cfg.inspect_timeout,
            snapshotter: self.cfg.snapshotter.clone(),
            metrics: self.sinks.metrics.clone(),
            bounds: self.bounds.clone(),
        };
        self.jobs.spawn(async move {
            // A job that panics leaves the content unjudged (tried again at a reconcile),
            // never marked as under way for ever.
            let outcome = AssertUnwindSafe(job.run(&client, &ns, &name))
                .catch_unwind()
                .await
                .unwrap_or(ImageOutcome::Failed);
            Some(Done::Image {
                ns,
                name,
                expected,
                outcome,
            })
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_bounded_jitter() {
        assert_eq!(backoff(0, 0.0), Duration::from_millis(100));
        assert_eq!(backoff(0, 1.0), Duration::from_millis(150));
        assert_eq!(backoff(3, 0.0), Duration::from_millis(800));
        assert_eq!(backoff(8, 0.0), Duration::from_secs(15));
        assert_eq!(backoff(1000, 0.0), Duration::from_secs(15));
        assert_eq!(backoff(1000, 1.0), Duration::from_millis(22_500));
    }
}
