//! A container's jobs: reading its record, inspecting its files, asking what became of it;
//! and saying when it could not be judged.

use crate::diagnose::Identity;
use crate::pipeline::{CacheKey, Key, Process};
use chrono::{DateTime, Utc};
use futures::FutureExt;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use tracing::warn;

use crate::agent::jobs::*;
use crate::agent::pipeline::*;
use crate::agent::runtime::Hint;

impl Pipeline {
    /// Reads the container record (argv, identity, layers) off the pipeline; with
    /// `ask_history`, also what the runtime remembers of a container that has no task.
    pub(crate) fn identify(&mut self, key: Key, hint: Hint, ask_history: bool) {
        let errors = self.sinks.metrics.inspection_errors.clone();
        let Some(job) = self
            .runtimes
            .identify(key.clone(), hint, ask_history, errors)
        else {
            // Its runtime is away: judged at the next reconcile.
            return;
        };
        let bounds = self.bounds.clone();
        self.spawn_container_job(key, async move {
            let _permit = bounds.lookup().await;
            job.await
        });
    }

    /// A container seen for the first time: true when it is new to the tracker.
    pub(crate) fn created(&mut self, key: Key, at: DateTime<Utc>) -> bool {
        if self.runtimes.records_refusals(&key.namespace) {
            self.tracker.container_created_recording_refusals(key, at)
        } else {
            self.tracker.container_created(key, at)
        }
    }

    /// Asks the runtime whether the containers that never got a task had their start
    /// refused.
    pub(crate) fn ask_refusals(&mut self) {
        for key in self.tracker.take_to_ask() {
            let Some(job) = self.runtimes.ask(key) else {
                continue;
            };
            let bounds = self.bounds.clone();
            self.jobs.spawn(async move {
                let _permit = bounds.lookup().await;
                Some(job.await)
            });
        }
    }

    /// Spawns a job about container `key`, marked under way in its record until it
    /// answers; a job that panics answers [`Done::Lost`].
    pub(crate) fn spawn_container_job(
        &mut self,
        key: Key,
        job: impl std::future::Future<Output = Done> + Send + 'static,
    ) {
        self.tracker.job_started(&key);
        self.jobs.spawn(async move {
            Some(
                AssertUnwindSafe(job)
                    .catch_unwind()
                    .await
                    .unwrap_or(Done::Lost(key)),
            )
        });
    }
    /// Containers whose deferred failure found them gone at a reconcile: said now.
    pub(crate) fn journal_gone_unjudged(&mut self) {
        for (key, who, d) in self.tracker.take_gone_unjudged() {
            let f = InspectFailure {
                kind: d.kind,
                detail: d.detail,
                retry: false,
            };
            self.inspection_failed_as(&key, Some(who), &f);
        }
    }
    /// A container that will run only under emulation: said once, when its verdict lands.
    /// Says which container went unjudged and why, in the log and the journal.
    pub(crate) fn inspection_failed(&mut self, key: &Key, f: &InspectFailure) {
        self.inspection_failed_as(key, None, f);
    }
    pub(crate) fn inspection_failed_as(
        &mut self,
        key: &Key,
        known: Option<Identity>,
        f: &InspectFailure,
    ) {
        let who = match known.as_ref().or(self.tracker.identity(key)) {
            Some(w) if !w.container_id.is_empty() => w.clone(),
            // The record itself was unreadable (gone before it could be read: a container
            // removed that fast leaves nothing to judge it by): the key is all there is.
            _ => Identity {
                containerd_namespace: key.namespace.clone(),
                container_id: key.id.clone(),
                runtime: self.runtimes.runtime(&key.namespace),
                ..Identity::default()
            },
        };
        warn!(
            namespace = who.namespace(),
            pod = who.pod.as_deref().unwrap_or(""),
            container = who.container.as_deref().unwrap_or(&who.container_id),
            image = %who.image,
            error_kind = f.kind,
            "Container could not be inspected; an exec failure of it cannot be diagnosed: {}",
            f.detail
        );
        let node = self.cfg.node_name.clone();
        self.sinks.write(&Record::InspectionFailed {
            diagnosed_at: Utc::now(),
            node: &node,
            identity: &who,
            error_kind: f.kind,
            error: &f.detail,
        });
    }
    pub(crate) fn inspect_container(
        &mut self,
        key: Key,
        process: Process,
        cache_key: Option<CacheKey>,
        layers: Vec<PathBuf>,
        from: FromImage,
    ) {
        let node = self.cfg.node.clone();
        let binfmt = self.binfmt.clone();
        let timeout = self.cfg.inspect_timeout;
        let m = self.sinks.metrics.clone();
        let bounds = self.bounds.clone();
        let job_key = key.clone();
        // Where the runtime can tell which variant of the image the container runs.
        let variants = self.runtimes.variants(&key.namespace);
        self.spawn_container_job(job_key, async move {
            let ns = key.namespace.as_str();
            // The variant the layers are, and what its config claims (a config that lies
            // about the binary is the build stage's doing).
            let origin = match (&variants, &from.parent) {
                (Some(v), Some(parent)) => {
                    let _lookup = bounds.lookup().await;
                    v.origin(ns, &from.image, parent, timeout).await
                }
                _ => None,
            };
            let claimed = origin
                .as_ref()
                .and_then(|o| o.config.as_ref())
                .and_then(|c| c.arch())
                .or(from.claimed);
            let permit = bounds.container().await;
            // The table as it is when the inspection starts, not when it was queued.
            let table = binfmt.borrow().clone();
            let mut result = inspect_off_runtime(
                layers,
                process,
                claimed,
                node.clone(),
                table,
                timeout,
                &m,
                "container",
            )
            .await;
            drop(permit);
            // A verdict about a binary of another arch: was the variant forced, or is the
            // node's copy of the tag stale?
            if let (Ok(i), Some(o)) = (&mut result, &origin) {
                if crate::fix::variant_matters(i) {
                    let v = match (&from.parent, &variants) {
                        (Some(parent), _) if !o.manifests.is_empty() => {
                            o.forced(&from.image, parent, &node)
                        }
                        (_, Some(v)) if o.manifests.is_empty() => {
                            let _lookup = bounds.lookup().await;
                            v.stale(ns, &from.image, &o.target_digest, &node, timeout)
                                .await
                        }
                        _ => None,
                    };
                    if let Some(v) = v {
                        crate::fix::note_variant(i, &v);
                    }
                }
            }
            Done::ContainerInspected {
                key,
                cache_key,
                result: result.map(Arc::new),
            }
        });
    }

    /// A failed exec the tracer saw in a running container: said with the container's
    /// identity (from its record when the agent tracks it, else what its cgroup says),
    /// counted, journaled, streamed and sent as an Event (one series per pod, path and
    /// reason).
    pub(crate) fn exec_error(&mut self, seen: crate::agent::exec_tracer::SeenExec) {
        use crate::diagnose::{Diagnosis, Runtime, Signal};
        let c = &seen.container;
        let who = self
            .tracker
            .identity_by_id(&c.id)
            .cloned()
            .unwrap_or_else(|| Identity {
                containerd_namespace: c.namespace.clone().unwrap_or_default(),
                container_id: c.id.clone(),
                pod_uid: c.pod_uid.clone(),
                runtime: match c.runtime {
                    Some(crate::tracer::Runtime::Docker) => Runtime::Docker,
                    _ => Runtime::Containerd,
                },
                ..Identity::default()
            });
        let ev = &seen.event;
        // runc's init execs a container's first process, and the process of every `runc
        // exec`: the first is the container's own start, reported as its exec failure.
        if ev.comm.starts_with("runc:[") && self.tracker.is_start_exec(&c.id, ev.tgid) {
            self.sinks
                .metrics
                .exec_events
                .get_or_create(&crate::sinks::metrics::OutcomeLabels {
                    outcome: "container_start".into(),
                })
                .inc();
            return;
        }
        let i = match seen.judged {
            Ok(i) => i,
            Err(e) => {
                warn!(container = %c.id, path = %ev.path.display(), errno = ev.errno.name(), error = %e, "A failed exec could not be judged.");
                return;
            }
        };
        let d = Diagnosis {
            node: self.cfg.node_name.clone(),
            identity: who,
            argv: i.argv.clone(),
            verdict: i.verdict,
            reason: i.verdict.event_reason(),
            symptom: i.symptom,
            cause: i.cause.clone(),
            fix: i.fix.clone(),
            fix_code: i.fix_code,
            binary_arch: i.binary_arch.map(|a| a.to_string()),
            binary_arch_label: i.binary_arch.map(|a| a.label()).unwrap_or("unknown"),
            node_arch: i.node_arch.to_string(),
            signal: Signal::ExecError,
            exit_code: None,
            started_at: None,
            exited_at: Some(seen.at),
            findings: i.findings.clone(),
        };
        self.sinks.exec_error(&d, ev);
    }
}
