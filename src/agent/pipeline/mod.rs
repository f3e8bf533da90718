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
use crate::containerd::event::{self, Envelope, Event};
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
use crate::agent::runtime::containerd::*;
use crate::agent::runtime::*;
use crate::agent::*;

mod containers;
mod emulation;
mod images;

/// What the watcher tells the pipeline.
pub(crate) enum Input {
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

/// Task status codes of containerd's Process message.
pub(crate) const TASK_RUNNING: i32 = 2;
pub(crate) const TASK_STOPPED: i32 = 3;
pub(crate) const TASK_PAUSED: i32 = 4;

pub(crate) struct Pipeline {
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
    pub(crate) fn input(&mut self, input: Input) {
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
    pub(crate) fn update_ready(&mut self) {
        let containerd = self.cfg.address.is_none() || self.client.is_some();
        let docker = self.cfg.docker_host.is_none() || self.docker.is_some();
        self.ready.set(containerd && docker);
    }
    /// In scope of the containerd side's reconcile: every namespace but Docker's when Docker
    /// is followed.
    pub(crate) fn containerd_scope(&self) -> impl Fn(&str) -> bool {
        let docker = self.cfg.docker_host.is_some();
        move |ns: &str| !(docker && ns == crate::docker::NAMESPACE)
    }
    /// What Docker lists right after subscribing: containers not seen yet are judged, with
    /// what became of them (one that died while the agent was away is reported from its
    /// record); what went is forgotten; image names are reconciled.
    pub(crate) fn reconcile_docker(&mut self, containers: Vec<String>, images: Vec<String>) {
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
    pub(crate) fn reconcile(&mut self, l: Listing) {
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
