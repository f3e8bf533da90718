//! What the agent reports, from one value: the journal's records and the sinks every
//! diagnosis goes to (log, metrics, Events, API stream, journal).

use crate::diagnose::{Diagnosis, Identity};
use crate::fix::FixCode;
use crate::inspect::{Finding, Verdict};
use crate::sinks::api::ApiState;
use crate::sinks::journal::Journal;
use crate::sinks::kube_events;
use crate::sinks::metrics::{self, Metrics};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::Arc;
use tracing::warn;

/// One line of the journal.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Record<'a> {
    /// A container that failed to exec.
    ExecFailure {
        diagnosed_at: DateTime<Utc>,
        #[serde(flatten)]
        diagnosis: &'a Diagnosis,
    },
    /// A later exec in a running container that failed (the exec tracer).
    ExecError {
        diagnosed_at: DateTime<Utc>,
        #[serde(flatten)]
        diagnosis: &'a Diagnosis,
        pid: u32,
        tgid: u32,
        comm: &'a str,
        path: String,
        path_truncated: bool,
        errno: &'static str,
    },
    /// A container whose entrypoint runs only through a binfmt_misc emulator.
    Emulated {
        diagnosed_at: DateTime<Utc>,
        node: &'a str,
        #[serde(flatten)]
        identity: &'a Identity,
        argv: &'a [String],
        verdict: Verdict,
        reason: &'static str,
        handler: Option<&'a str>,
        /// `/proc/<pid>/exe` of the init process, when it could be read: the emulator.
        confirmed_by: Option<String>,
        binary_arch: Option<String>,
        node_arch: String,
        cause: &'a str,
        fix: &'a str,
        fix_code: FixCode,
    },
    /// A container whose files could not be judged (unreadable record or snapshot, an
    /// inspection over its time budget): its exit, if it fails, cannot be diagnosed.
    InspectionFailed {
        diagnosed_at: DateTime<Utc>,
        node: &'a str,
        #[serde(flatten)]
        identity: &'a Identity,
        /// A code of `archwatch_inspection_errors_total{kind}`.
        error_kind: &'static str,
        error: &'a str,
    },
    /// A pulled image whose entrypoint will not exec here (or needs emulation).
    Image {
        diagnosed_at: DateTime<Utc>,
        node: &'a str,
        runtime: crate::diagnose::Runtime,
        namespace: &'a str,
        image: &'a str,
        digest: &'a str,
        verdict: Verdict,
        reason: &'static str,
        cause: &'a str,
        fix: &'a str,
        fix_code: FixCode,
        binary_arch: Option<String>,
        node_arch: String,
        #[serde(skip_serializing_if = "<[Finding]>::is_empty")]
        findings: &'a [Finding],
    },
}

/// The sinks every diagnosis goes to, fed from one value.
pub(crate) struct Sinks {
    pub(crate) metrics: Metrics,
    pub(crate) journal: Option<Journal>,
    pub(crate) events: Option<kube_events::EventsHandle>,
    pub(crate) api: Arc<ApiState>,
}

impl Sinks {
    pub(crate) fn exec_failure(&mut self, d: &Diagnosis) {
        warn!(
            namespace = d.identity.namespace(),
            pod = d.identity.pod.as_deref().unwrap_or(""),
            container = d.identity.container.as_deref().unwrap_or(&d.identity.container_id),
            image = %d.identity.image,
            verdict = %d.verdict,
            binary_arch = d.binary_arch.as_deref().unwrap_or(""),
            exit_code = d.exit_code,
            "Exec failure: {}",
            d.cause
        );
        self.metrics.record(d);
        if let (Some(ev), Some(spec)) = (&self.events, kube_events::for_diagnosis(d)) {
            ev.push(spec);
        }
        let diagnosed_at = Utc::now();
        self.api.publish(d, diagnosed_at);
        self.write(&Record::ExecFailure {
            diagnosed_at,
            diagnosis: d,
        });
    }

    pub(crate) fn exec_error(&mut self, d: &Diagnosis, ev: &crate::tracer::ExecError) {
        warn!(
            namespace = d.identity.namespace(),
            pod = d.identity.pod.as_deref().unwrap_or(""),
            container = d.identity.container.as_deref().unwrap_or(&d.identity.container_id),
            pid = ev.tgid,
            comm = %ev.comm,
            path = %ev.path.display(),
            errno = ev.errno.name(),
            verdict = %d.verdict,
            "Exec failed in a running container: {}",
            d.cause
        );
        self.metrics
            .exec_errors
            .get_or_create(&metrics::FailureLabels {
                namespace: d.identity.namespace().to_string(),
                reason: d.verdict.code().to_string(),
                binary_arch: d.binary_arch_label.to_string(),
                node_arch: d.node_arch.clone(),
            })
            .inc();
        if let (Some(events), Some(mut spec)) = (&self.events, kube_events::for_diagnosis(d)) {
            // One series per pod, path and reason: a probe failing every 10 s is one Event
            // whose count grows.
            spec.about = Some(format!(
                "{}:{}",
                spec.about.as_deref().unwrap_or(""),
                ev.path.display()
            ));
            events.push(spec);
        }
        let diagnosed_at = Utc::now();
        self.api.publish(d, diagnosed_at);
        self.write(&Record::ExecError {
            diagnosed_at,
            diagnosis: d,
            pid: ev.pid,
            tgid: ev.tgid,
            comm: &ev.comm,
            path: ev.path.to_string_lossy().into_owned(),
            path_truncated: ev.truncated,
            errno: ev.errno.name(),
        });
    }

    pub(crate) fn write(&mut self, r: &Record) {
        if let Some(j) = &mut self.journal {
            if let Err(e) = j.append(r) {
                self.metrics
                    .inspection_errors
                    .get_or_create(&metrics::KindLabels {
                        kind: e.kind().into(),
                    })
                    .inc();
                warn!(error = %e, "Journal write failed.");
            }
        }
    }
}
