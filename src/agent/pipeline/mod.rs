//! The pipeline: one task that owns everything the agent knows of containers and images.
//! It takes the watchers' inputs (a runtime's listing after connecting, its events, a lost
//! connection), starts the jobs that read records and files, and turns what they answer
//! into diagnoses for the sinks. Containers: `containers`; images: `images`; containers
//! that run under emulation: `emulation`.

use chrono::Utc;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::binfmt::Table;
use crate::inspect::Verdict;
use crate::pipeline::images::{Images, Named};
use crate::pipeline::{Key, Tracker};
use crate::sinks::http::Readiness;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::agent::jobs::*;
use crate::agent::report::*;
use crate::agent::runtime::*;
use crate::agent::*;

mod containers;
mod emulation;
mod images;

/// What the watchers tell the pipeline.
pub(crate) enum Input {
    /// A fresh connection to a runtime and everything it lists right after subscribing.
    Reconciled {
        connection: Connection,
        listing: Box<Listing>,
    },
    Event(Envelope),
    Disconnected(Which),
    /// A runtime's image names now (Docker, after an image event).
    Images {
        which: Which,
        names: Vec<(String, String)>,
    },
    /// A failed exec in a running container, seen by the exec tracer and judged.
    ExecError(Box<crate::agent::exec_tracer::SeenExec>),
    /// The init pid of a started container, learnt after its start.
    Pid {
        key: Key,
        pid: u32,
    },
    /// Answered once every job started so far has finished (a replay's end).
    #[cfg(feature = "lab")]
    Drained(tokio::sync::oneshot::Sender<()>),
}

pub(crate) struct Pipeline {
    cfg: Config,
    tracker: Tracker,
    /// The runtimes followed, and their connections.
    runtimes: Runtimes,
    drained: Vec<tokio::sync::oneshot::Sender<()>>,
    binfmt: watch::Receiver<Arc<Table>>,
    /// Image verdicts by content, however many names point at it.
    images: Images,
    sinks: Sinks,
    jobs: JoinSet<Option<Done>>,
    bounds: Bounds,
    ready: Readiness,
}

pub(crate) async fn pipeline(
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
    let runtimes = Runtimes::new(&cfg);
    let mut p = Pipeline {
        tracker,
        cfg,
        runtimes,
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
    pub(crate) fn input(&mut self, input: Input) {
        match input {
            Input::Disconnected(which) => {
                self.runtimes.disconnected(which);
                self.ready.set(self.runtimes.ready());
                if which == Which::Containerd {
                    self.sinks.api.set_connected(false, false);
                }
            }
            Input::Reconciled {
                connection,
                listing,
            } => {
                let which = self.runtimes.connected(connection);
                self.reconcile(which, *listing);
                self.ready.set(self.runtimes.ready());
                if which == Which::Containerd {
                    self.sinks.api.set_connected(true, true);
                }
            }
            Input::Images { which, names } => self.images_listed(which, &names),
            Input::Pid { key, pid } => {
                self.tracker.init_pid(&key, pid);
                self.note_emulated(&key);
            }
            Input::Event(env) => self.event(env),
            Input::ExecError(seen) => self.exec_error(*seen),
            #[cfg(feature = "lab")]
            Input::Drained(t) => self.drained.push(t),
        }
    }

    /// What a runtime lists right after subscribing: what went while the agent was away
    /// goes from every bit of state; what a dropped connection left unjudged is judged
    /// again; containers not seen yet are judged, and those without a task (or all, where
    /// the runtime lists none) with what became of them; listed exits are diagnosed.
    pub(crate) fn reconcile(&mut self, which: Which, l: Listing) {
        let now = Utc::now();
        let scope = self.runtimes.scope(which);
        let with_task: HashSet<Key> = l.tasks.iter().map(|(k, _)| k.clone()).collect();
        let seen: HashSet<Key> = l.containers.iter().map(|(k, _)| k.clone()).collect();
        let again: HashSet<Key> = self
            .tracker
            .reconciled_in(&seen, |k| scope(&k.namespace))
            .into_iter()
            .collect();
        self.journal_gone_unjudged();
        for (key, hint) in l.containers {
            // First seen here: without a task, only the runtime knows whether it ran.
            let ask = l.records_say || !with_task.contains(&key);
            if again.contains(&key) {
                debug!(container = %key.id, "Judging again what a dropped connection left unjudged.");
                self.identify(key, hint, ask);
            } else if self.created(key.clone(), now) {
                self.identify(key, hint, ask);
            }
        }
        for (key, t) in l.tasks {
            match t {
                Task::Stopped { exit_status, at } if exit_status != 0 => {
                    for d in self
                        .tracker
                        .task_stopped_before_watch(&key, exit_status, at)
                    {
                        self.sinks.exec_failure(&d);
                    }
                }
                Task::Running { pid } => self.tracker.task_running(&key, pid),
                Task::Stopped { .. } | Task::Created => self.tracker.task_created(&key),
            }
        }
        self.images_listed(which, &l.images);
    }

    pub(crate) fn event(&mut self, env: Envelope) {
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
                    self.identify(k, Hint::default(), false);
                }
                Vec::new()
            }
            Event::ContainerDelete { id } => {
                let k = key(id);
                self.note_emulated(&k);
                let d = self.tracker.container_deleted(&k, at);
                self.journal_gone_unjudged();
                d
            }
            Event::TaskCreate {
                container_id,
                rootfs,
                ..
            } => {
                let k = key(container_id);
                self.tracker.task_created(&k);
                if !self.tracker.knows(&k) && self.created(k.clone(), at) {
                    self.identify(
                        k,
                        Hint {
                            record: None,
                            rootfs: Some(rootfs),
                        },
                        false,
                    );
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
    pub(crate) fn done(&mut self, d: Done) {
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
}
