//! The runtimes the agent follows, as the pipeline sees them: containerd (its event
//! stream, records and snapshots) and Docker Engine (its API), each a watcher that feeds the
//! pipeline and the jobs that read what events do not carry.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::containerd::{Client, ContainerdError};
use crate::pipeline::{History, Key};
#[cfg(feature = "lab")]
use crate::replay::Recording;
use tracing::debug;

use crate::agent::jobs::*;
use crate::agent::pipeline::*;
use crate::agent::*;

pub(crate) mod containerd;
pub(crate) mod docker;

/// Where the pipeline reads what events do not carry: containerd, or (in the lab) a
/// recording.
#[derive(Clone)]
pub(crate) enum Lookup {
    Live(Client),
    #[cfg(feature = "lab")]
    Recorded(Arc<Recording>),
}

#[cfg(feature = "lab")]
pub(crate) fn not_recorded(call: &'static str) -> ContainerdError {
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
            #[cfg(feature = "lab")]
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
            #[cfg(feature = "lab")]
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
            #[cfg(feature = "lab")]
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
            #[cfg(feature = "lab")]
            Lookup::Recorded(_) => None,
        }
    }

    /// What the CRI plugin remembers of a container of its own (a recording has none).
    async fn cri_history(&self, ns: &str, id: &str) -> Option<History> {
        match self {
            Lookup::Live(c) if ns == crate::containerd::cri::NAMESPACE => {
                match c.cri_history(id).await {
                    Ok(h) => h,
                    Err(e) => {
                        debug!(container = id, error = %e, "CRI status unreadable.");
                        None
                    }
                }
            }
            _ => None,
        }
    }
}

pub(crate) use crate::containerd::event::{Envelope, Event};

/// Which runtime a container or image belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Which {
    Containerd,
    Docker,
}

/// A runtime's connection, as a watcher hands it to the pipeline.
#[derive(Clone)]
pub(crate) enum Connection {
    Containerd(Lookup),
    Docker(crate::docker::Client),
}

/// What a runtime gave along with a container (containerd: its record from a listing, the
/// mounts of its task from an event): read by the runtime's own job, opaque to the pipeline.
#[derive(Default)]
pub(crate) struct Hint {
    pub(crate) record: Option<containerd_client::services::v1::Container>,
    pub(crate) rootfs: Option<Vec<containerd_client::types::Mount>>,
}

/// A container's task as a listing shows it.
pub(crate) enum Task {
    Running {
        pid: u32,
    },
    Stopped {
        exit_status: u32,
        at: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Created, or in a state that says nothing more.
    Created,
}

/// What a runtime lists right after subscribing, in the pipeline's terms.
#[derive(Default)]
pub(crate) struct Listing {
    pub(crate) images: Vec<(String, String)>,
    pub(crate) containers: Vec<(Key, Hint)>,
    pub(crate) tasks: Vec<(Key, Task)>,
    /// The runtime lists no tasks: each new container's own record says what became of it
    /// (Docker).
    pub(crate) records_say: bool,
}

/// The runtimes the agent follows, and their connections while connected. The pipeline asks
/// it for every job that reads what events do not carry; it routes each container and image
/// to the runtime that runs it (Docker's containers are keyed in its containerd namespace,
/// `moby`, so one followed through both runtimes is one record).
pub(crate) struct Runtimes {
    follow_containerd: bool,
    follow_docker: bool,
    containerd: Option<Lookup>,
    docker: Option<crate::docker::Client>,
}

/// What an image inspection needs besides the runtime and the name.
pub(crate) struct ImageParams {
    pub(crate) node: crate::platform::Node,
    /// Read when the inspection starts, not when it was queued.
    pub(crate) binfmt: tokio::sync::watch::Receiver<Arc<crate::binfmt::Table>>,
    pub(crate) timeout: Duration,
    pub(crate) snapshotter: String,
    pub(crate) metrics: crate::sinks::metrics::Metrics,
    pub(crate) bounds: Bounds,
}

type Job<T> = futures::future::BoxFuture<'static, T>;

impl Runtimes {
    pub(crate) fn new(cfg: &Config) -> Runtimes {
        Runtimes {
            follow_containerd: cfg.address.is_some(),
            follow_docker: cfg.docker_host.is_some(),
            containerd: None,
            docker: None,
        }
    }

    /// The runtime that runs what is in namespace `ns`.
    pub(crate) fn which(&self, ns: &str) -> Which {
        if self.follow_docker && ns == crate::docker::NAMESPACE {
            Which::Docker
        } else {
            Which::Containerd
        }
    }

    /// As reports name it.
    pub(crate) fn runtime(&self, ns: &str) -> crate::diagnose::Runtime {
        match self.which(ns) {
            Which::Containerd => crate::diagnose::Runtime::Containerd,
            Which::Docker => crate::diagnose::Runtime::Docker,
        }
    }

    /// The namespaces a runtime's listing answers for.
    pub(crate) fn scope(&self, which: Which) -> impl Fn(&str) -> bool + 'static {
        let docker = self.follow_docker;
        move |ns: &str| {
            let w = if docker && ns == crate::docker::NAMESPACE {
                Which::Docker
            } else {
                Which::Containerd
            };
            w == which
        }
    }

    pub(crate) fn connected(&mut self, c: Connection) -> Which {
        match c {
            Connection::Containerd(l) => {
                self.containerd = Some(l);
                Which::Containerd
            }
            Connection::Docker(d) => {
                self.docker = Some(d);
                Which::Docker
            }
        }
    }

    pub(crate) fn disconnected(&mut self, which: Which) {
        match which {
            Which::Containerd => self.containerd = None,
            Which::Docker => self.docker = None,
        }
    }

    /// Every runtime followed is connected and listed.
    pub(crate) fn ready(&self) -> bool {
        (!self.follow_containerd || self.containerd.is_some())
            && (!self.follow_docker || self.docker.is_some())
    }

    /// Whether the runtime of `ns` records a refused start in the container's own state
    /// (Docker), so that a container without a task is asked rather than presumed refused.
    pub(crate) fn records_refusals(&self, ns: &str) -> bool {
        self.which(ns) == Which::Docker
    }

    fn live_containerd(&self) -> Option<Client> {
        match &self.containerd {
            Some(Lookup::Live(c)) => Some(c.clone()),
            _ => None,
        }
    }

    /// The job that reads a container's record (who, what it runs as whom, its layers);
    /// `None` while its runtime is away (judged at the next reconcile).
    pub(crate) fn identify(
        &self,
        key: Key,
        hint: Hint,
        ask_history: bool,
        errors: prometheus_client::metrics::family::Family<
            crate::sinks::metrics::KindLabels,
            prometheus_client::metrics::counter::Counter,
        >,
    ) -> Option<Job<Done>> {
        match self.which(&key.namespace) {
            Which::Docker => {
                let client = self.docker.clone()?;
                let containerd = self.live_containerd();
                Some(Box::pin(async move {
                    docker::identify(&client, containerd.as_ref(), key, ask_history, &errors).await
                }))
            }
            Which::Containerd => {
                let client = self.containerd.clone()?;
                Some(Box::pin(async move {
                    containerd::identify_job(
                        &client,
                        key,
                        hint.record,
                        hint.rootfs,
                        ask_history,
                        &errors,
                    )
                    .await
                }))
            }
        }
    }

    /// The job that asks a runtime that records refusals what became of a container that
    /// never got a task.
    pub(crate) fn ask(&self, key: Key) -> Option<Job<Done>> {
        let client = self.docker.clone()?;
        Some(Box::pin(async move { docker::asked(&client, key).await }))
    }

    /// The job that resolves an image name to its content.
    pub(crate) fn image_named(&self, ns: String, name: String) -> Option<Job<Done>> {
        match self.which(&ns) {
            Which::Docker => {
                let client = self.docker.clone()?;
                Some(Box::pin(async move {
                    docker::image_named(&client, ns, name).await
                }))
            }
            Which::Containerd => {
                // A recording carries no image content: images are judged live only.
                let client = self.live_containerd()?;
                Some(Box::pin(async move {
                    let target = client.image(&ns, &name).await.ok().and_then(|i| i.target);
                    let index = target
                        .as_ref()
                        .is_some_and(|t| crate::variant::is_index(&t.media_type));
                    Done::ImageNamed {
                        ns,
                        name,
                        digest: target.map(|t| t.digest),
                        index,
                    }
                }))
            }
        }
    }

    /// The job that inspects an image's content through one of its names.
    pub(crate) fn image_job(
        &self,
        ns: String,
        name: String,
        p: ImageParams,
    ) -> Option<Job<ImageOutcome>> {
        match self.which(&ns) {
            Which::Docker => {
                let client = self.docker.clone()?;
                let containerd = self.live_containerd();
                let job = docker::ImageJob {
                    node: p.node,
                    binfmt: p.binfmt,
                    timeout: p.timeout,
                    metrics: p.metrics,
                    bounds: p.bounds,
                };
                Some(Box::pin(async move {
                    job.run(&client, containerd.as_ref(), &name).await
                }))
            }
            Which::Containerd => {
                let client = self.live_containerd()?;
                let job = containerd::ImageJob {
                    node: p.node,
                    binfmt: p.binfmt,
                    timeout: p.timeout,
                    snapshotter: p.snapshotter,
                    metrics: p.metrics,
                    bounds: p.bounds,
                };
                Some(Box::pin(async move { job.run(&client, &ns, &name).await }))
            }
        }
    }

    /// Where the variant a container runs can be told (containerd's images and their
    /// indexes); `None` for a runtime without them.
    pub(crate) fn variants(&self, ns: &str) -> Option<containerd::Variants> {
        match self.which(ns) {
            Which::Containerd => self.live_containerd().map(containerd::Variants),
            Which::Docker => None,
        }
    }
}

/// A runtime's watcher loop: runs `session` until it ends by stopping (`Ok`). After a
/// failure the runtime is marked away (its gauge at 0, `/healthz`'s clock started, the
/// pipeline told), `lost` says why (`first`: the first failure of an outage, worth a line at
/// WARN), and the next attempt waits the backoff, which starts over after every session that
/// got connected: a runtime that restarts now and then is back within a second each time.
/// `session(reconnecting)` answers its result and whether it got connected.
pub(crate) async fn reconnecting<E, Fut>(
    which: Which,
    gauge: &prometheus_client::metrics::gauge::Gauge,
    live: &crate::sinks::http::Liveness,
    tx: &tokio::sync::mpsc::Sender<Input>,
    stop: &tokio_util::sync::CancellationToken,
    mut session: impl FnMut(bool) -> Fut,
    mut lost: impl FnMut(&E, bool, u32),
) where
    Fut: std::future::Future<Output = (Result<(), E>, bool)>,
{
    let mut attempt: u32 = 0;
    let mut was_connected = false;
    while !stop.is_cancelled() {
        let (result, connected) = session(was_connected).await;
        let Err(e) = result else {
            return;
        };
        gauge.set(0);
        live.disconnected();
        let _ = tx.send(Input::Disconnected(which)).await;
        lost(&e, connected || attempt == 0, attempt);
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
pub(crate) fn backoff(attempt: u32, jitter: f64) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(1u32 << attempt.min(8));
    let capped = base.min(Duration::from_secs(15));
    capped + capped.mul_f64(jitter.clamp(0.0, 1.0) * 0.5)
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
