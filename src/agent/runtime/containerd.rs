//! containerd as the agent follows it: the watcher (connect, subscribe, list, forward,
//! reconnect) and the jobs that read a container's record, resolve and view an image, and
//! tell which variant of a multi-platform image a container runs.

use crate::binfmt::Table;
use crate::containerd::event::{self, Envelope};
use crate::containerd::{self, Client, ContainerdError};
use crate::diagnose::Identity;
use crate::inspect::{Finding, Inspection, Verdict};
use crate::pipeline::{Key, Process};
use crate::platform::Node;
use crate::sinks::http::Liveness;
use crate::sinks::metrics::{self, Metrics};
use futures::StreamExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::agent::jobs::*;
use crate::agent::runtime::*;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Whether the containerd side follows namespace `ns`: Docker's own (`moby`) is followed
/// through Docker when the agent follows Docker.
pub(crate) fn wanted(cfg: &Config, ns: &str) -> bool {
    (cfg.namespaces.is_empty() || cfg.namespaces.iter().any(|n| n == ns))
        && !(cfg.docker_host.is_some() && ns == crate::docker::NAMESPACE)
}

/// Connect, subscribe, list, forward; on any failure back off (capped, jittered) and redo.
/// The backoff starts over after every session that got connected: a node whose containerd
/// restarts now and then is reconnected within a second each time, not after the cap.
pub(crate) async fn watch_containerd(
    cfg: Config,
    address: PathBuf,
    metrics: Metrics,
    live: Liveness,
    tx: mpsc::Sender<Input>,
    stop: CancellationToken,
) {
    reconnecting(
        Which::Containerd,
        &metrics.containerd_connected,
        &live,
        &tx,
        &stop,
        |reconnecting| {
            let (cfg, address, metrics, live, tx, stop) = (
                &cfg, &address, &metrics, &live, &tx, &stop,
            );
            async move {
                let mut connected = false;
                let r = session(
                    cfg,
                    address,
                    metrics,
                    live,
                    tx,
                    stop,
                    reconnecting,
                    &mut connected,
                )
                .await;
                (r, connected)
            }
        },
        |e, first, attempt| {
            // One line per outage, not one per failed attempt.
            if first {
                warn!(error = %e, address = %address.display(), "containerd connection lost; reconnecting.");
            } else {
                debug!(error = %e, attempt, "containerd still unreachable.");
            }
        },
    )
    .await;
}

/// One connection's life. `Ok` only when stopping; `connected` is set once the listing is
/// done and handed to the pipeline (counted as a reconnect when `reconnecting`).
///
/// containerd (grpc-go) sends the response headers of `Subscribe` with the first event, so
/// the call cannot be awaited before listing. It is sent first, on the same connection, and
/// awaited after the listing; the handler registers the subscriber on arrival, before the
/// list calls that follow it are answered.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn session(
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
            connection: super::Connection::Containerd(Lookup::Live(client.clone())),
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
pub(crate) fn accept(
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

pub(crate) async fn list_everything(
    cfg: &Config,
    client: &Client,
) -> Result<super::Listing, ContainerdError> {
    let mut l = super::Listing::default();
    for ns in client.namespaces().await? {
        if !wanted(cfg, &ns) {
            continue;
        }
        for i in client.images(&ns).await? {
            l.images.push((ns.clone(), i.name));
        }
        for c in client.containers(&ns).await? {
            let key = Key {
                namespace: ns.clone(),
                id: c.id.clone(),
            };
            let hint = super::Hint {
                record: Some(c),
                rootfs: None,
            };
            l.containers.push((key, hint));
        }
        for t in client.tasks(&ns).await? {
            l.tasks.push(task(&ns, &t));
        }
    }
    Ok(l)
}

/// Task status codes of containerd's Process message.
const TASK_RUNNING: i32 = 2;
const TASK_STOPPED: i32 = 3;
const TASK_PAUSED: i32 = 4;

/// A listed task in the pipeline's terms. containerd 1.6 leaves `container_id` empty in
/// Tasks.List; the init process's id is the container's.
fn task(ns: &str, t: &containerd_client::types::v1::Process) -> (Key, super::Task) {
    let key = Key {
        namespace: ns.to_string(),
        id: if t.container_id.is_empty() {
            t.id.clone()
        } else {
            t.container_id.clone()
        },
    };
    let state = match t.status {
        TASK_STOPPED => super::Task::Stopped {
            exit_status: t.exit_status,
            at: crate::containerd::event::timestamp(t.exited_at.as_ref()),
        },
        TASK_RUNNING | TASK_PAUSED => super::Task::Running { pid: t.pid },
        _ => super::Task::Created,
    };
    (key, state)
}

/// Reads a container's record (unless given), its spec, its layers and who it is.
pub(crate) async fn identify_job(
    client: &Lookup,
    key: Key,
    record: Option<containerd_client::services::v1::Container>,
    rootfs: Option<Vec<containerd_client::types::Mount>>,
    ask_history: bool,
    errors: &Family<metrics::KindLabels, Counter>,
) -> Done {
    let count = |e: &ContainerdError| {
        errors
            .get_or_create(&metrics::KindLabels {
                kind: e.kind().into(),
            })
            .inc();
    };
    let c = match record {
        Some(c) => c,
        None => match client.container(&key.namespace, &key.id).await {
            Ok(c) => c,
            Err(e) => {
                count(&e);
                debug!(container = %key.id, error = %e, "Container record unreadable.");
                return Done::ContainerInspected {
                    key,
                    cache_key: None,
                    result: Err(InspectFailure::lookup(&e)),
                };
            }
        },
    };
    if containerd::is_sandbox(&c) {
        return Done::Sandbox(key);
    }
    let fail = |e: ContainerdError| {
        count(&e);
        warn!(container = %c.id, error = %e, "Container cannot be inspected.");
        Err(InspectFailure::lookup(&e))
    };
    let spec = match containerd::spec_process(&c) {
        Ok(s) => s,
        Err(e) => {
            return Done::ContainerInspected {
                key,
                cache_key: None,
                result: fail(e),
            };
        }
    };
    let layers = match rootfs.filter(|m| !m.is_empty()) {
        Some(m) => containerd::mounts_layers(&m),
        None => {
            client
                .snapshot_layers(&key.namespace, &c.snapshotter, &c.snapshot_key)
                .await
        }
    };
    let layers = match layers {
        Ok(l) => l,
        Err(e) => {
            return Done::ContainerInspected {
                key,
                cache_key: None,
                result: fail(e),
            };
        }
    };
    let digest = client.image_digest(&key.namespace, &c.image).await;
    let parent = client
        .snapshot_parent(&key.namespace, &c.snapshotter, &c.snapshot_key)
        .await;
    let history = if ask_history && containerd::cri::is_cri_container(&c) {
        client.cri_history(&key.namespace, &key.id).await
    } else {
        None
    };
    let meta = containerd::cri::metadata(&c);
    let label = |k: &str| c.labels.get(k).cloned();
    let who = Identity {
        containerd_namespace: key.namespace.clone(),
        container_id: key.id.clone(),
        pod: label("io.kubernetes.pod.name"),
        pod_namespace: label("io.kubernetes.pod.namespace"),
        pod_uid: label("io.kubernetes.pod.uid"),
        container: label("io.kubernetes.container.name"),
        image: c.image.clone(),
        image_digest: digest.clone(),
        container_type: meta.container_type,
        attempt: meta.attempt,
        ..Identity::default()
    };
    let process = Process {
        argv: spec.args,
        path_env: spec.path_env,
        cwd: spec.cwd,
        user: Some(spec.user),
    };
    // Same image content + same layers + same process = same verdict. The layers matter: the
    // containers of one multi-platform image may run different variants of it (a forced
    // platform). Without a digest, the snapshot key names the content.
    let content = match (digest, &parent) {
        (Some(d), Some(p)) => format!("{d}/{p}"),
        (Some(d), None) => d,
        (None, _) => format!("{}/{}", c.snapshotter, c.snapshot_key),
    };
    let cache_key = Some(process.cache_key(&content));
    Done::Identified {
        key,
        who: Box::new(who),
        process,
        cache_key,
        layers,
        history,
        from: FromImage {
            image: c.image.clone(),
            parent,
            claimed: None,
        },
    }
}

/// What an image inspection needs besides the client and the name.
pub(crate) struct ImageJob {
    pub(crate) node: Node,
    /// Read when the inspection starts, not when it was queued.
    pub(crate) binfmt: watch::Receiver<Arc<Table>>,
    pub(crate) timeout: Duration,
    pub(crate) snapshotter: String,
    pub(crate) metrics: Metrics,
    pub(crate) bounds: Bounds,
}

impl ImageJob {
    /// Resolves `name` for the node, views its snapshot and inspects it.
    pub(crate) async fn run(self, client: &Client, ns: &str, name: &str) -> ImageOutcome {
        let node = &self.node;
        let m = &self.metrics;
        let count = |kind: &str| {
            m.inspection_errors
                .get_or_create(&metrics::KindLabels { kind: kind.into() })
                .inc()
        };
        let resolved = {
            let _lookup = self.bounds.lookup().await;
            client.resolve_image(ns, name, node).await
        };
        let target = match resolved {
            Ok(t) => t,
            Err(e @ ContainerdError::NoPlatform { .. }) => {
                let mut inspection = Inspection {
                verdict: Verdict::ArchMismatch,
                cause: format!("{e}: this node cannot pull or run it"),
                fix: format!("Publish the image as a multi-arch index that includes linux/{} (docker buildx build --platform ...).", node.arch),
                fix_code: crate::fix::FixCode::None,
                symptom: Verdict::ArchMismatch.symptom(),
                argv: Vec::new(),
                node_arch: node.arch,
                binary_arch: None,
                handler: None,
                chain: Vec::new(),
                findings: vec![Finding { code: "index_lacks_node_platform", detail: e.to_string() }],
                bytes_read: 0,
                suspects: Vec::new(),
            };
                crate::fix::settle(&mut inspection);
                let digest = client
                    .image(ns, name)
                    .await
                    .ok()
                    .and_then(|i| i.target)
                    .map(|t| t.digest)
                    .unwrap_or_default();
                return ImageOutcome::Verdict {
                    digest,
                    inspection: Arc::new(inspection),
                };
            }
            Err(e) => {
                count(e.kind());
                debug!(image = name, error = %e, "Image cannot be resolved.");
                return ImageOutcome::Failed;
            }
        };
        let Some(chain) = target.config.chain_id() else {
            count("image_no_layers");
            return ImageOutcome::Failed;
        };
        // From the view to its removal, the job holds a view in containerd and open files: at
        // most a few such jobs run at once.
        let mut permit = self.bounds.image().await;
        // /images/create comes before the unpack: wait for the snapshot to exist.
        let mut delay = Duration::from_millis(200);
        let view = loop {
            match client.open_view(ns, &self.snapshotter, &chain).await {
                Ok(v) => break v,
                Err(e) if e.is_not_found() && delay < Duration::from_secs(30) => {
                    // Waiting holds no permit: another inspection goes meanwhile.
                    drop(permit);
                    tokio::time::sleep(delay).await;
                    permit = self.bounds.image().await;
                    delay *= 2;
                }
                Err(e) => {
                    count(e.kind());
                    debug!(image = name, error = %e, "Image snapshot cannot be viewed.");
                    return ImageOutcome::Failed;
                }
            }
        };
        let process = Process {
            argv: target.config.argv(),
            path_env: target.config.path_env(),
            cwd: target.config.cwd(),
            user: None,
        };
        let mut findings = Vec::new();
        let config_arch = target.config.arch();
        if target.index_platforms.is_empty()
            && config_arch.is_some_and(|a| node.nativity(a) != crate::platform::Nativity::Native)
        {
            findings.push(Finding {
            code: "single_arch_image",
            detail: format!(
                "{name} points to a single linux/{} image, not a multi-arch index; deploy by the digest of an index that includes linux/{}",
                config_arch.map(|a| a.to_string()).unwrap_or_default(),
                node.arch
            ),
        });
        }
        let claimed = target.config.arch();
        // The table as it is when the inspection starts, not when it was queued.
        let table = self.binfmt.borrow().clone();
        let result = inspect_off_runtime(
            view.layers.clone(),
            process,
            claimed,
            node.clone(),
            table,
            self.timeout,
            m,
            "image",
        )
        .await;
        client.close_view(view).await;
        drop(permit);
        match result {
            Ok(mut i) => {
                i.findings.append(&mut findings);
                crate::fix::settle(&mut i);
                // A single-arch image that an index on the node lists beside a variant for
                // the node: a stale copy of the tag.
                if target.index_platforms.is_empty() && crate::fix::variant_matters(&i) {
                    let _lookup = self.bounds.lookup().await;
                    let manifest = &target.manifest_digest;
                    let variants = Variants(client.clone());
                    if let Some(v) = variants.stale(ns, name, manifest, node, self.timeout).await {
                        crate::fix::note_variant(&mut i, &v);
                    }
                }
                ImageOutcome::Verdict {
                    digest: target.target_digest,
                    inspection: Arc::new(i),
                }
            }
            Err(f) => {
                warn!(
                    namespace = ns,
                    image = name,
                    error_kind = f.kind,
                    "Pulled image could not be inspected: {}",
                    f.detail
                );
                ImageOutcome::Failed
            }
        }
    }
}

/// containerd's images and indexes, to tell which variant of an image a container runs.
pub(crate) struct Variants(pub(crate) Client);

impl Variants {
    /// Where the layers `parent` of image `name` come from, within `timeout` (the answer only
    /// adds to a verdict: a lookup that fails or takes too long says nothing).
    pub(crate) async fn origin(
        &self,
        ns: &str,
        name: &str,
        parent: &str,
        timeout: Duration,
    ) -> Option<containerd::Origin> {
        match tokio::time::timeout(timeout, self.0.origin(ns, name, parent)).await {
            Ok(Ok(o)) => Some(o),
            Ok(Err(e)) => {
                debug!(image = name, error = %e, "Image of the container unreadable.");
                None
            }
            Err(_) => {
                debug!(image = name, "Image of the container: no answer in time.");
                None
            }
        }
    }

    /// Whether the single-arch image `name` (manifest `manifest`) is a stale copy of a tag,
    /// within `timeout`.
    pub(crate) async fn stale(
        &self,
        ns: &str,
        name: &str,
        manifest: &str,
        node: &Node,
        timeout: Duration,
    ) -> Option<crate::variant::Variant> {
        match tokio::time::timeout(timeout, self.0.stale(ns, name, manifest, node)).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                debug!(image = name, error = %e, "Indexes of the repository unreadable.");
                None
            }
            Err(_) => {
                debug!(
                    image = name,
                    "Indexes of the repository: no answer in time."
                );
                None
            }
        }
    }
}
