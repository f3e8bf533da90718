//! A recorded event stream fed through the whole agent in place of a runtime (benchmarks
//! and load tests).

use std::sync::Arc;
use std::time::Duration;

use crate::replay::Recording;
use crate::sinks::metrics::Metrics;
use tokio::sync::mpsc;

use crate::agent::pipeline::*;
use crate::agent::runtime::containerd::*;
use crate::agent::runtime::*;
use crate::agent::*;

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

/// Pushes a recorded stream through the pipeline in place of containerd.
pub(crate) async fn replay_feed(cfg: Config, metrics: Metrics, r: Replay, tx: mpsc::Sender<Input>) {
    let start = tokio::time::Instant::now();
    let mut stats = ReplayStats {
        envelopes: r.envelopes.len(),
        decode_errors: 0,
        elapsed: Duration::ZERO,
    };
    let reconciled = Input::Reconciled {
        connection: Connection::Containerd(Lookup::Recorded(r.recording)),
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
