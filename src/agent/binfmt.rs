//! The node's binfmt_misc table, read at start and polled (procfs has no inotify).

use std::sync::Arc;
use std::time::Duration;

use crate::binfmt::Table;
use crate::sinks::metrics::{self, Metrics};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::agent::*;

pub(crate) fn read_binfmt(cfg: &Config, metrics: &Metrics, first: bool) -> Table {
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
pub(crate) async fn poll_binfmt(
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
