//! `/metrics` (OpenMetrics text), `/healthz` (the process answers and has not been cut off
//! from containerd for longer than a bound) and `/readyz` (connected to containerd and the
//! first reconcile is done).
//!
//! Why `/healthz` looks at the connection: an agent that cannot reach containerd for good
//! (a socket path that will never answer again, a mount that kept a dead inode) must be
//! restarted by the kubelet, or the pod sits not-ready forever and stalls the next rollout.
//! The bound is generous (`--unhealthy-after-secs`): a containerd restart or upgrade takes
//! seconds and the agent reconnects by itself well before it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// Shared readiness flag.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Since when the agent has been without each runtime it follows (`None` while connected),
/// and how long that may last before `/healthz` fails.
#[derive(Clone)]
pub struct Liveness {
    parts: Arc<Mutex<BTreeMap<&'static str, Option<Instant>>>>,
    name: &'static str,
    bound: Duration,
}

impl Liveness {
    /// Follows no runtime yet: [`Liveness::runtime`] adds one.
    pub fn new(bound: Duration) -> Liveness {
        Liveness {
            parts: Arc::default(),
            name: "",
            bound,
        }
    }

    /// The part for runtime `name`, shared with this one. Starts disconnected: an agent that
    /// never reaches a runtime it follows goes unhealthy too.
    pub fn runtime(&self, name: &'static str) -> Liveness {
        self.lock()
            .entry(name)
            .or_insert_with(|| Some(Instant::now()));
        Liveness {
            parts: self.parts.clone(),
            name,
            bound: self.bound,
        }
    }

    pub fn connected(&self) {
        self.lock().insert(self.name, None);
    }

    /// Marks the start of a disconnection (a later call keeps the first time).
    pub fn disconnected(&self) {
        self.lock()
            .entry(self.name)
            .or_default()
            .get_or_insert_with(Instant::now);
    }

    /// The runtime the agent has been without beyond the bound, and for how long, if any.
    pub fn overdue(&self) -> Option<(&'static str, Duration)> {
        self.lock()
            .iter()
            .filter_map(|(name, since)| Some((*name, (*since)?.elapsed())))
            .filter(|(_, gone)| *gone > self.bound)
            .max_by_key(|(_, gone)| *gone)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Option<Instant>>> {
        self.parts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Mutex<Registry>>,
    ready: Readiness,
    live: Liveness,
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let body = match s.registry.lock() {
        Ok(r) => super::metrics::encode(&r),
        Err(poisoned) => super::metrics::encode(&poisoned.into_inner()),
    };
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    match s.live.overdue() {
        None => (StatusCode::OK, "ok\n".to_string()),
        Some((runtime, gone)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "unhealthy: not connected to {runtime} for {} s\n",
                gone.as_secs()
            ),
        ),
    }
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    if s.ready.get() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: containerd not connected or not reconciled\n",
        )
    }
}

/// Binds `addr` now (so a bad address fails at start) and serves until `stop`.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Mutex<Registry>>,
    ready: Readiness,
    live: Liveness,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState {
            registry,
            ready,
            live,
        });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "Metrics server stopped.");
        }
    });
    Ok((bound, handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_fails_only_after_the_bound_and_recovers_on_reconnect() {
        let all = Liveness::new(Duration::from_millis(30));
        assert_eq!(all.overdue(), None, "following nothing, nothing is missed");
        let l = all.runtime("containerd");
        assert_eq!(l.overdue(), None, "a fresh agent has time to connect");
        std::thread::sleep(Duration::from_millis(40));
        assert!(l.overdue().is_some(), "never connected within the bound");
        l.connected();
        assert_eq!(l.overdue(), None);
        l.disconnected();
        std::thread::sleep(Duration::from_millis(20));
        l.disconnected(); // a later failure keeps the first time
        std::thread::sleep(Duration::from_millis(20));
        assert!(l.overdue().is_some());
        l.connected();
        assert_eq!(l.overdue(), None);
        // Each runtime answers for itself: one gone too long is named.
        let d = all.runtime("docker");
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(all.overdue().map(|(n, _)| n), Some("docker"));
        d.connected();
        assert_eq!(all.overdue(), None);
    }
}
