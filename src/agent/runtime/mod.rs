//! The runtimes the agent follows, as the pipeline sees them: containerd (its event
//! stream, records and snapshots) and Docker Engine (its API), each a watcher that feeds the
//! pipeline and the jobs that read what events do not carry.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::containerd::{Client, ContainerdError};
use crate::pipeline::History;
use crate::replay::Recording;
use tracing::debug;

use crate::agent::jobs::*;
use crate::agent::pipeline::*;
use crate::agent::*;

pub(crate) mod containerd;
pub(crate) mod docker;

/// Where the pipeline reads what events do not carry: containerd, or a recording.
#[derive(Clone)]
pub(crate) enum Lookup {
    Live(Client),
    Recorded(Arc<Recording>),
}

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
