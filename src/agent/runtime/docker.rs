//! Docker Engine as the agent follows it: the watcher (connect, subscribe, list, forward,
//! reconnect) and the jobs that read a container's or an image's record.
//!
//! Docker's events become the pipeline's: `create`, `start` (with the init pid read from
//! the record), `die` (with its exit code) and `destroy`; any image event (pull, load,
//! build, tag, untag, delete) lists the image names again. Docker flushes the event
//! stream's headers at once, so subscribing first and listing second leaves no gap.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::agent::jobs::{inspect_off_runtime, Done, FromImage, ImageOutcome, InspectFailure};
use crate::agent::pipeline::Input;
use crate::containerd::event::{Envelope, Event};
use crate::diagnose::{Identity, Runtime};
use crate::docker::{self, Change, Client, DockerError, Layers};
use crate::pipeline::Key;
use crate::platform::{Arch, Node};
use crate::sinks::http::Liveness;
use crate::sinks::metrics::{self, Metrics};

/// Connect, subscribe, list, forward; on any failure back off (capped, jittered) and redo,
/// as for containerd, and never touching the containerd side.
pub(crate) async fn watch(
    host: String,
    timeout: Duration,
    metrics: Metrics,
    live: Liveness,
    tx: mpsc::Sender<Input>,
    stop: CancellationToken,
) {
    super::reconnecting(
        super::Which::Docker,
        &metrics.docker_connected,
        &live,
        &tx,
        &stop,
        |reconnecting| {
            let (host, metrics, live, tx, stop) = (&host, &metrics, &live, &tx, &stop);
            async move {
                let mut connected = false;
                let r = session(
                    host,
                    timeout,
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
            metrics.inspection_error(e.kind());
            if first {
                warn!(error = %e, host = %host, "Docker connection lost; reconnecting.");
            } else {
                debug!(error = %e, attempt, "Docker still unreachable.");
            }
        },
    )
    .await;
}

/// Docker's image names, keyed in its namespace.
fn in_namespace(names: Vec<String>) -> Vec<(String, String)> {
    names
        .into_iter()
        .map(|n| (docker::NAMESPACE.to_string(), n))
        .collect()
}

/// Aborts the task that forwards the event stream when the session ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[allow(clippy::too_many_arguments)]
async fn session(
    host: &str,
    timeout: Duration,
    metrics: &Metrics,
    live: &Liveness,
    tx: &mpsc::Sender<Input>,
    stop: &CancellationToken,
    reconnecting: bool,
    connected: &mut bool,
) -> Result<(), DockerError> {
    let client = Client::connect(host, timeout).await?;
    // Subscribe first: the stream is polled (the request sent) by its own task, which
    // buffers what comes while the listing runs.
    let (etx, mut events) = mpsc::channel(4096);
    let stream = client.events();
    let (first_poll_tx, first_poll) = tokio::sync::oneshot::channel::<()>();
    let _forward = AbortOnDrop(tokio::spawn(async move {
        let mut stream = Box::pin(stream);
        let mut first = Some(first_poll_tx);
        loop {
            let next = stream.next();
            tokio::pin!(next);
            // The request goes out on the first poll; the listing waits for that.
            let item = match futures::poll!(&mut next) {
                std::task::Poll::Ready(i) => i,
                std::task::Poll::Pending => {
                    if let Some(t) = first.take() {
                        let _ = t.send(());
                    }
                    next.await
                }
            };
            if let Some(t) = first.take() {
                let _ = t.send(());
            }
            let Some(item) = item else {
                return;
            };
            if etx.send(item).await.is_err() {
                return;
            }
        }
    }));
    let _ = first_poll.await;
    // Let the request reach the daemon before the listing's do.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let containers = client.container_ids().await?;
    let images = client.image_names().await?;
    metrics.docker_connected.set(1);
    if reconnecting {
        metrics.docker_reconnects.inc();
    }
    live.connected();
    *connected = true;
    info!(host, api_version = %client.api_version(), containers = containers.len(), images = images.len(), "Connected to Docker Engine.");
    if tx
        .send(Input::Reconciled {
            connection: super::Connection::Docker(client.clone()),
            listing: Box::new(super::Listing {
                images: in_namespace(images),
                containers: containers
                    .into_iter()
                    .map(|id| {
                        let key = Key {
                            namespace: docker::NAMESPACE.into(),
                            id,
                        };
                        (key, super::Hint::default())
                    })
                    .collect(),
                tasks: Vec::new(),
                records_say: true,
            }),
        })
        .await
        .is_err()
    {
        return Ok(());
    }
    loop {
        let item = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            item = events.recv() => item,
        };
        let msg = match item {
            Some(Ok(m)) => m,
            Some(Err(error)) => {
                return Err(DockerError::Api {
                    call: "events",
                    error,
                })
            }
            None => {
                return Err(DockerError::Missing {
                    call: "events",
                    what: "an open stream (it ended)",
                })
            }
        };
        metrics
            .containerd_events
            .get_or_create(&metrics::TopicLabels {
                topic: docker::topic_label(&msg),
            })
            .inc();
        let inputs = match docker::decode(&msg) {
            Change::Container(env) => vec![Input::Event(env)],
            Change::Started { id, at } => {
                // The init pid (to confirm emulation from /proc/<pid>/exe) is in the record,
                // read off the stream's path: a `die` right behind this `start` is not held
                // up by it.
                let (client, tx, key) = (client.clone(), tx.clone(), id.clone());
                tokio::spawn(async move {
                    match client.container(&key).await {
                        Ok(c) => {
                            if let Some(pid) = c.pid {
                                let key = Key {
                                    namespace: docker::NAMESPACE.into(),
                                    id: key,
                                };
                                let _ = tx.send(Input::Pid { key, pid }).await;
                            }
                        }
                        Err(e) => {
                            debug!(container = %key, error = %e, "Started container unreadable.")
                        }
                    }
                });
                let pid = 0;
                let env = |event| {
                    Input::Event(Envelope {
                        namespace: docker::NAMESPACE.into(),
                        topic: "docker/container/start".into(),
                        timestamp: at,
                        event,
                    })
                };
                vec![
                    env(Event::TaskCreate {
                        container_id: id.clone(),
                        pid,
                        rootfs: Vec::new(),
                    }),
                    env(Event::TaskStart {
                        container_id: id,
                        pid,
                    }),
                ]
            }
            Change::Images => vec![Input::Images {
                which: super::Which::Docker,
                names: in_namespace(client.image_names().await?),
            }],
            Change::Other => Vec::new(),
        };
        for i in inputs {
            if tx.send(i).await.is_err() {
                return Ok(());
            }
        }
    }
}

fn failure(e: &DockerError, errors: &Family<metrics::KindLabels, Counter>) -> InspectFailure {
    errors
        .get_or_create(&metrics::KindLabels {
            kind: e.kind().into(),
        })
        .inc();
    InspectFailure {
        kind: e.kind(),
        detail: e.to_string(),
        // Docker could not say: judged again at the next reconcile, unless the container is
        // gone.
        retry: !e.is_not_found(),
    }
}

/// The layer directories of a Docker container or image: overlay2's own, or (with the
/// containerd image store) its snapshot's through containerd.
async fn layer_dirs(
    layers: Result<Layers, String>,
    containerd: Option<&crate::containerd::Client>,
) -> Result<Vec<PathBuf>, InspectFailure> {
    match layers {
        Ok(Layers::Dirs(d)) => Ok(d),
        Ok(Layers::Snapshot { snapshotter, key }) => match containerd {
            Some(c) => c
                .snapshot_layers(docker::NAMESPACE, &snapshotter, &key)
                .await
                .map_err(|e| InspectFailure {
                    kind: e.kind(),
                    detail: e.to_string(),
                    retry: true,
                }),
            None => Err(InspectFailure {
                kind: "snapshotter_unsupported",
                detail: format!(
                    "Docker keeps this container in containerd's snapshotter {snapshotter:?}: follow Docker's containerd too (--address) to read it"
                ),
                retry: false,
            }),
        },
        Err(detail) => Err(InspectFailure {
            kind: "snapshotter_unsupported",
            detail,
            retry: false,
        }),
    }
}

/// Reads a Docker container's record: who it is, what it runs as whom, its layers, and
/// (with `ask_history`, at a reconcile) what became of it.
pub(crate) async fn identify(
    client: &Client,
    containerd: Option<&crate::containerd::Client>,
    key: Key,
    ask_history: bool,
    errors: &Family<metrics::KindLabels, Counter>,
) -> Done {
    let c = match client.container(&key.id).await {
        Ok(c) => c,
        Err(e) => {
            debug!(container = %key.id, error = %e, "Docker container record unreadable.");
            return Done::ContainerInspected {
                key,
                cache_key: None,
                result: Err(failure(&e, errors)),
            };
        }
    };
    let layers = match layer_dirs(c.layers.clone(), containerd).await {
        Ok(l) => l,
        Err(f) => {
            errors
                .get_or_create(&metrics::KindLabels {
                    kind: f.kind.into(),
                })
                .inc();
            return Done::ContainerInspected {
                key,
                cache_key: None,
                result: Err(f),
            };
        }
    };
    let mut process = c.process.clone();
    if let Some(name) = &c.user_name {
        // A user by name: the image's /etc/passwd and /etc/group say who.
        let (dirs, spec) = (layers.clone(), name.clone());
        let found = tokio::task::spawn_blocking(move || {
            let root = crate::rootfs::Rootfs::new(dirs).ok()?;
            crate::inspect::user_in_image(&root, &spec).ok().flatten()
        })
        .await
        .ok()
        .flatten();
        match found {
            Some(ids) => process.user = Some(docker::docker_creds(ids, c.caps)),
            None => {
                warn!(container = %key.id, user = %name, "The container's user is not in its image's /etc/passwd; judged as root.")
            }
        }
    } else if process.user.is_none() {
        process.user = Some(docker::docker_creds(crate::rootfs::Creds::root(), c.caps));
    }
    let label = |k: &str| c.labels.get(k).cloned();
    let who = Identity {
        containerd_namespace: docker::NAMESPACE.into(),
        container_id: key.id.clone(),
        container: Some(c.name.clone()).filter(|n| !n.is_empty()),
        image: c.image.clone(),
        image_digest: Some(c.image_id.clone()).filter(|d| !d.is_empty()),
        runtime: Runtime::Docker,
        compose_project: label(docker::COMPOSE_PROJECT),
        compose_service: label(docker::COMPOSE_SERVICE),
        ..Identity::default()
    };
    if let Some(err) = &c.error {
        debug!(container = %key.id, error = %err, "Docker's State.Error.");
    }
    // What the image's config claims: a binary of another arch in it is the build stage's
    // doing, as at pull.
    let claimed = if c.image_id.is_empty() {
        None
    } else {
        match client.image(&c.image_id).await {
            Ok(i) => i
                .architecture
                .as_deref()
                .and_then(|a| Arch::from_oci(a, i.variant.as_deref())),
            Err(e) => {
                debug!(image = %c.image_id, error = %e, "Docker image record unreadable.");
                None
            }
        }
    };
    let content = if c.image_id.is_empty() {
        key.id.clone()
    } else {
        c.image_id.clone()
    };
    let cache_key = Some(process.cache_key(&content));
    Done::Identified {
        key,
        who: Box::new(who),
        process,
        cache_key,
        layers,
        history: ask_history.then_some(c.history),
        from: FromImage {
            image: c.image,
            parent: None,
            claimed,
        },
    }
}

/// Whether a container that never got a task had its start refused: Docker records that
/// in the container's state (`State.Error`, exit code 127 or 126) and sends no event.
pub(crate) async fn asked(client: &Client, key: Key) -> Done {
    let history = match client.container(&key.id).await {
        Ok(c) => {
            if let Some(e) = &c.error {
                debug!(container = %key.id, error = %e, "Docker refused the start.");
            }
            Some(c.history)
        }
        Err(e) => {
            debug!(container = %key.id, error = %e, "Docker container state unreadable.");
            None
        }
    };
    Done::Asked { key, history }
}

/// An image name's content (the image ID), as `Done::ImageNamed`.
pub(crate) async fn image_named(client: &Client, ns: String, name: String) -> Done {
    let digest = match client.image(&name).await {
        Ok(i) => Some(i.id),
        Err(e) => {
            debug!(image = %name, error = %e, "Docker image record unreadable.");
            None
        }
    };
    Done::ImageNamed {
        ns,
        name,
        digest,
        index: false,
    }
}

/// What an image inspection on Docker needs.
pub(crate) struct ImageJob {
    pub(crate) node: Node,
    pub(crate) binfmt: tokio::sync::watch::Receiver<Arc<crate::binfmt::Table>>,
    pub(crate) timeout: Duration,
    pub(crate) metrics: Metrics,
    pub(crate) bounds: crate::agent::jobs::Bounds,
}

impl ImageJob {
    /// Reads the image's record and inspects its layers as its containers would run them.
    pub(crate) async fn run(
        self,
        client: &Client,
        containerd: Option<&crate::containerd::Client>,
        name: &str,
    ) -> ImageOutcome {
        let image = {
            let _lookup = self.bounds.lookup().await;
            client.image(name).await
        };
        let image = match image {
            Ok(i) => i,
            Err(e) => {
                self.metrics.inspection_error(e.kind());
                debug!(image = name, error = %e, "Docker image unreadable.");
                return ImageOutcome::Failed;
            }
        };
        let layers = match layer_dirs(image.layers.clone(), containerd).await {
            Ok(l) => l,
            Err(f) => {
                self.metrics.inspection_error(f.kind);
                debug!(image = name, error = %f.detail, "Docker image layers unreadable.");
                return ImageOutcome::Failed;
            }
        };
        let claimed = image
            .architecture
            .as_deref()
            .and_then(|a| Arch::from_oci(a, image.variant.as_deref()));
        let _permit = self.bounds.image().await;
        let table = self.binfmt.borrow().clone();
        match inspect_off_runtime(
            layers,
            image.process,
            claimed,
            self.node,
            table,
            self.timeout,
            &self.metrics,
            "image",
        )
        .await
        {
            Ok(i) => {
                let mut i = i;
                crate::fix::settle(&mut i);
                ImageOutcome::Verdict {
                    digest: image.id,
                    inspection: Arc::new(i),
                }
            }
            Err(f) => {
                debug!(image = name, error = %f.detail, "Docker image not inspected.");
                ImageOutcome::Failed
            }
        }
    }
}
