//! The agent's gRPC API on a unix socket: a stream of diagnoses (with replay of the last N
//! from memory), the verdict of every image on the node (one entry per content and
//! namespace, under its most readable name), and status. Fed from the same `Diagnosis`
//! values as the journal, metrics and Events.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use tokio::sync::broadcast;
use tokio_stream::wrappers::{BroadcastStream, UnixListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::diagnose::Diagnosis;
use crate::inspect::Inspection;

#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("archwatch.v1");
}

/// How many diagnoses are kept for replay.
pub const REPLAY_MAX: usize = 4096;

fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

struct Ring {
    seq: u64,
    items: VecDeque<Arc<pb::Diagnosis>>,
}

/// Shared between the pipeline (writer) and the server (readers).
pub struct ApiState {
    ring: Mutex<Ring>,
    tx: broadcast::Sender<Arc<pb::Diagnosis>>,
    /// By (namespace, digest).
    images: Mutex<BTreeMap<(String, String), pb::ImageVerdict>>,
    status: Mutex<pb::Status>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ApiState {
    pub fn new(node: &str, node_arch: &str) -> Arc<ApiState> {
        let (tx, _) = broadcast::channel(REPLAY_MAX);
        Arc::new(ApiState {
            ring: Mutex::new(Ring {
                seq: 0,
                items: VecDeque::new(),
            }),
            tx,
            images: Mutex::new(BTreeMap::new()),
            status: Mutex::new(pb::Status {
                node: node.into(),
                node_arch: node_arch.into(),
                version: env!("CARGO_PKG_VERSION").into(),
                ..Default::default()
            }),
        })
    }

    /// Appends a diagnosis (in order) for every watcher.
    pub fn publish(&self, d: &Diagnosis, diagnosed_at: DateTime<Utc>) {
        let mut ring = lock(&self.ring);
        ring.seq += 1;
        let msg = Arc::new(pb::Diagnosis {
            sequence: ring.seq,
            node: d.node.clone(),
            containerd_namespace: d.identity.containerd_namespace.clone(),
            pod: d.identity.pod.clone().unwrap_or_default(),
            pod_namespace: d.identity.pod_namespace.clone().unwrap_or_default(),
            pod_uid: d.identity.pod_uid.clone().unwrap_or_default(),
            container: d.identity.container.clone().unwrap_or_default(),
            container_id: d.identity.container_id.clone(),
            image: d.identity.image.clone(),
            image_digest: d.identity.image_digest.clone().unwrap_or_default(),
            argv: d.argv.clone(),
            verdict: d.verdict.code().into(),
            reason: d.reason.into(),
            symptom: d.symptom.into(),
            cause: d.cause.clone(),
            fix: d.fix.clone(),
            fix_code: d.fix_code.code().into(),
            binary_arch: d.binary_arch.clone().unwrap_or_default(),
            node_arch: d.node_arch.clone(),
            signal: serde_json::to_value(d.signal)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            exit_code: d.exit_code,
            exited_at: d.exited_at.map(ts),
            diagnosed_at: Some(ts(diagnosed_at)),
            findings: d
                .findings
                .iter()
                .map(|f| format!("{}: {}", f.code, f.detail))
                .collect(),
            runtime: d.identity.runtime.as_str().into(),
            compose_project: d.identity.compose_project.clone().unwrap_or_default(),
            compose_service: d.identity.compose_service.clone().unwrap_or_default(),
        });
        if ring.items.len() >= REPLAY_MAX {
            ring.items.pop_front();
        }
        ring.items.push_back(msg.clone());
        // No receivers is fine; sending under the ring lock keeps replay + live in order.
        let _ = self.tx.send(msg);
        lock(&self.status).diagnoses = ring.seq;
    }

    /// Lists the verdict of content `digest` in `ns` under `name` (replacing its entry).
    pub fn set_image(&self, ns: &str, name: &str, digest: &str, i: &Inspection) {
        let v = pb::ImageVerdict {
            containerd_namespace: ns.into(),
            image: name.into(),
            digest: digest.into(),
            verdict: i.verdict.code().into(),
            binary_arch: i.binary_arch.map(|a| a.to_string()).unwrap_or_default(),
            cause: i.cause.clone(),
            fix: i.fix.clone(),
            findings: i
                .findings
                .iter()
                .map(|f| format!("{}: {}", f.code, f.detail))
                .collect(),
            handler: i.handler.clone().unwrap_or_default(),
            fix_code: i.fix_code.code().into(),
        };
        let mut images = lock(&self.images);
        images.insert((ns.into(), digest.into()), v);
        lock(&self.status).images = u32::try_from(images.len()).unwrap_or(u32::MAX);
    }

    /// Keeps only the images for which `keep(namespace, digest)` holds.
    pub fn retain_images(&self, keep: impl Fn(&str, &str) -> bool) {
        let mut images = lock(&self.images);
        images.retain(|(ns, d), _| keep(ns, d));
        lock(&self.status).images = u32::try_from(images.len()).unwrap_or(u32::MAX);
    }

    /// How many containers the pipeline tracks (what containerd holds, sandboxes aside).
    pub fn set_tracked(&self, n: usize) {
        lock(&self.status).tracked_containers = u32::try_from(n).unwrap_or(u32::MAX);
    }

    pub fn set_connected(&self, connected: bool, ready: bool) {
        let mut s = lock(&self.status);
        s.containerd_connected = connected;
        s.ready = ready;
    }
}

struct Service {
    state: Arc<ApiState>,
}

type DiagnosisStream = Pin<Box<dyn Stream<Item = Result<pb::Diagnosis, Status>> + Send>>;

#[tonic::async_trait]
impl pb::archwatch_server::Archwatch for Service {
    type WatchDiagnosesStream = DiagnosisStream;

    async fn watch_diagnoses(
        &self,
        req: Request<pb::WatchDiagnosesRequest>,
    ) -> Result<Response<DiagnosisStream>, Status> {
        let req = req.into_inner();
        // Replay and subscribe under the same lock as publish: no gap, no duplicate.
        let (replay, rx) = {
            let ring = lock(&self.state.ring);
            let n = usize::try_from(req.replay)
                .unwrap_or(usize::MAX)
                .min(ring.items.len());
            let replay: Vec<pb::Diagnosis> = ring
                .items
                .iter()
                .skip(ring.items.len() - n)
                .map(|d| (**d).clone())
                .collect();
            (replay, self.state.tx.subscribe())
        };
        let head = futures::stream::iter(replay.into_iter().map(Ok));
        if req.no_follow {
            return Ok(Response::new(Box::pin(head)));
        }
        let live = BroadcastStream::new(rx).map(|r| match r {
            Ok(d) => Ok((*d).clone()),
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                Err(Status::data_loss(format!(
                    "this watcher fell {n} diagnoses behind; reconnect with replay"
                )))
            }
        });
        // A lagging watcher gets one data_loss error and its stream ends.
        let live = live.scan(false, |failed, item| {
            if *failed {
                return futures::future::ready(None);
            }
            *failed = item.is_err();
            futures::future::ready(Some(item))
        });
        Ok(Response::new(Box::pin(head.chain(live))))
    }

    async fn list_image_verdicts(
        &self,
        _: Request<pb::ListImageVerdictsRequest>,
    ) -> Result<Response<pb::ListImageVerdictsResponse>, Status> {
        let images = lock(&self.state.images).values().cloned().collect();
        Ok(Response::new(pb::ListImageVerdictsResponse { images }))
    }

    async fn get_status(
        &self,
        _: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::Status>, Status> {
        Ok(Response::new(lock(&self.state.status).clone()))
    }
}

/// Binds `path` (replacing a stale socket) and serves until `stop`.
pub async fn serve(
    path: &Path,
    state: Arc<ApiState>,
    stop: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    let owned: PathBuf = path.to_path_buf();
    Ok(tokio::spawn(async move {
        let r = tonic::transport::Server::builder()
            .add_service(pb::archwatch_server::ArchwatchServer::new(Service {
                state,
            }))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stop.cancelled())
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "API server stopped.");
        }
        let _ = std::fs::remove_file(owned);
    }))
}

/// A client for `archwatch events` / `status`.
pub async fn connect(
    path: &Path,
) -> Result<pb::archwatch_client::ArchwatchClient<tonic::transport::Channel>, tonic::transport::Error>
{
    let channel = containerd_client::connect(path).await?;
    Ok(pb::archwatch_client::ArchwatchClient::new(channel))
}
