//! Kubernetes Events (events.k8s.io/v1), rate limited and folded into series.
//!
//! The pipeline hands an [`EventSpec`] to [`EventsHandle::push`], which never blocks: the
//! queue is bounded and drops its oldest entry when full. One publisher task drains it:
//!
//! - the first occurrence of (regarded object, container, reason) is created (POST); repeats
//!   become a series on that object (PATCH `series.count` + `lastObservedTime`), never new
//!   objects — 200 failures of one pod are one Event; the object's name is stable, so after an
//!   agent restart the create meets 409 and the series goes on from the count the object holds;
//! - a token bucket per regarded object (burst 25, one token per 5 minutes, like client-go)
//!   and one for the whole node keep a CrashLoopBackOff fleet from flooding the API server;
//!   a repeat that finds no token is still counted and its count rides on the next write;
//! - 429 (honouring Retry-After), 5xx and connection errors are retried with capped
//!   exponential backoff; a 404 on a series update (the API server expired the Event after
//!   its `--event-ttl`) creates it anew with its count; a 409 on create (an Event written
//!   before a restart) reads it and extends its series; a 403 (RBAC) is logged once and
//!   retried after a growing pause; other 4xx are not retried;
//! - every outcome is counted in `archwatch_kube_events_total{reason,result}`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Patch, PatchParams, PostParams};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::metrics::{KubeLabels, Metrics};
use crate::diagnose::{Diagnosis, Identity};

pub const REPORTING_CONTROLLER: &str = "archwatch.io/agent";
/// The API server limits `note` to 1 kB.
pub const NOTE_MAX: usize = 1024;

/// What to publish.
#[derive(Clone, Debug)]
pub struct EventSpec {
    pub regarding: ObjectReference,
    /// What within the regarded object the Event is about (a Pod's container, the image
    /// digest on a Node): one series each, even where `regarding` cannot say it.
    pub about: Option<String>,
    /// Namespace the Event object lives in (the Pod's; `default` for the Node).
    pub namespace: String,
    pub reason: &'static str,
    pub note: String,
    pub time: DateTime<Utc>,
}

impl EventSpec {
    /// The series an occurrence belongs to.
    fn series_key(&self) -> String {
        let r = &self.regarding;
        format!(
            "{}/{}/{}/{}/{}/{}",
            r.kind.as_deref().unwrap_or(""),
            r.namespace.as_deref().unwrap_or(""),
            r.uid.as_deref().or(r.name.as_deref()).unwrap_or(""),
            r.field_path.as_deref().unwrap_or(""),
            self.about.as_deref().unwrap_or(""),
            self.reason
        )
    }
    fn object_key(&self) -> String {
        let r = &self.regarding;
        format!(
            "{}/{}/{}",
            r.kind.as_deref().unwrap_or(""),
            r.namespace.as_deref().unwrap_or(""),
            r.name.as_deref().unwrap_or("")
        )
    }
    /// A stable object name: `<regarded name>.<hash of the series>`.
    fn name(&self) -> String {
        let h = hex::encode(&Sha256::digest(self.series_key().as_bytes())[..8]);
        format!(
            "{}.{h}",
            self.regarding.name.as_deref().unwrap_or("archwatch")
        )
    }
}

/// Cause and fix in one note of at most 1 kB.
pub fn note(cause: &str, fix: &str) -> String {
    let sep = if cause.ends_with('.') { " " } else { ". " };
    let mut n = format!("{cause}{sep}{fix}");
    if n.len() > NOTE_MAX {
        let mut end = NOTE_MAX - 3;
        while !n.is_char_boundary(end) {
            end -= 1;
        }
        n.truncate(end);
        n.push_str("...");
    }
    n
}

/// The Pod an exec failure regards, from the CRI labels; `None` outside Kubernetes.
pub fn for_diagnosis(d: &Diagnosis) -> Option<EventSpec> {
    for_pod(
        &d.identity,
        d.reason,
        &d.cause,
        &d.fix,
        d.exited_at.unwrap_or_else(Utc::now),
    )
}

/// An Event regarding the Pod of a container (CRI labels); `None` outside Kubernetes.
///
/// `regarding.fieldPath` names the container's place in the pod spec only when the kubelet
/// said which list it is in (`spec.initContainers{NAME}`, `spec.containers{NAME}`,
/// `spec.ephemeralContainers{NAME}`); kubelets that do not set
/// `io.kubernetes.container.type` leave nothing that tells an init container from a regular
/// one, so the field is left out rather than guessed, and the note names the container.
pub fn for_pod(
    who: &Identity,
    reason: &'static str,
    cause: &str,
    fix: &str,
    time: DateTime<Utc>,
) -> Option<EventSpec> {
    let (name, ns) = (who.pod.clone()?, who.pod_namespace.clone()?);
    let field_path = match (&who.container, who.container_type) {
        (Some(c), Some(t)) => Some(format!("{}{{{c}}}", t.spec_field())),
        _ => None,
    };
    let note = match (&who.container, &field_path) {
        (Some(c), None) => self::note(&format!("Container {c}: {cause}"), fix),
        _ => self::note(cause, fix),
    };
    Some(EventSpec {
        regarding: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name),
            namespace: Some(ns.clone()),
            uid: who.pod_uid.clone(),
            field_path,
            ..Default::default()
        },
        about: who.container.clone(),
        namespace: ns,
        reason,
        note,
        time,
    })
}

/// The Node a pulled image (`about`: its digest) cannot run on; one series per image.
pub fn for_node(
    node: &str,
    about: Option<&str>,
    reason: &'static str,
    cause: &str,
    fix: &str,
) -> EventSpec {
    EventSpec {
        regarding: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.into()),
            ..Default::default()
        },
        about: about.map(str::to_string),
        namespace: "default".into(),
        reason,
        note: note(cause, fix),
        time: Utc::now(),
    }
}

fn micro(t: DateTime<Utc>) -> MicroTime {
    MicroTime(
        k8s_openapi::jiff::Timestamp::from_microsecond(t.timestamp_micros())
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// The Event object for the first occurrence.
pub fn event_object(spec: &EventSpec, node: &str) -> Event {
    Event {
        metadata: ObjectMeta {
            name: Some(spec.name()),
            namespace: Some(spec.namespace.clone()),
            ..Default::default()
        },
        event_time: Some(micro(spec.time)),
        action: Some("Diagnose".into()),
        reason: Some(spec.reason.into()),
        note: Some(spec.note.clone()),
        regarding: Some(spec.regarding.clone()),
        reporting_controller: Some(REPORTING_CONTROLLER.into()),
        reporting_instance: Some(node.into()),
        type_: Some("Warning".into()),
        ..Default::default()
    }
}

/// Bounded, drop-oldest queue shared by the pipeline (push) and the publisher (pop).
#[derive(Clone)]
pub struct EventsHandle {
    inner: Arc<(Mutex<VecDeque<EventSpec>>, Notify)>,
    capacity: usize,
    metrics: Metrics,
}

impl EventsHandle {
    pub fn new(capacity: usize, metrics: Metrics) -> EventsHandle {
        EventsHandle {
            inner: Arc::new((Mutex::new(VecDeque::new()), Notify::new())),
            capacity: capacity.max(1),
            metrics,
        }
    }

    /// Never blocks; when full, the oldest waiting Event is dropped (and counted).
    pub fn push(&self, spec: EventSpec) {
        let dropped = {
            let mut q = self.inner.0.lock().unwrap_or_else(|e| e.into_inner());
            let d = if q.len() >= self.capacity {
                q.pop_front()
            } else {
                None
            };
            q.push_back(spec);
            d
        };
        if let Some(d) = dropped {
            count(&self.metrics, d.reason, "dropped");
        }
        self.inner.1.notify_one();
    }

    fn pop(&self) -> Option<EventSpec> {
        self.inner
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }

    pub fn len(&self) -> usize {
        self.inner.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn count(m: &Metrics, reason: &str, result: &str) {
    m.kube_events
        .get_or_create(&KubeLabels {
            reason: reason.into(),
            result: result.into(),
        })
        .inc();
}

/// A token bucket.
#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    tokens: f64,
    burst: f64,
    per_sec: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(burst: u32, refill_every: Duration) -> Bucket {
        Bucket {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            per_sec: 1.0 / refill_every.as_secs_f64().max(1e-9),
            at: Instant::now(),
        }
    }
    pub fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn refill(&mut self, now: Instant) {
        self.tokens = (self.tokens
            + now.saturating_duration_since(self.at).as_secs_f64() * self.per_sec)
            .min(self.burst);
        self.at = now;
    }

    /// Takes a token from both buckets or from neither; `keep` tokens of `node` stay for
    /// writes of higher priority.
    pub fn take_both(object: &mut Bucket, node: &mut Bucket, keep: f64, now: Instant) -> bool {
        object.refill(now);
        node.refill(now);
        if object.tokens >= 1.0 && node.tokens >= 1.0 + keep {
            object.tokens -= 1.0;
            node.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Refilled to its burst by `now`: forgetting it changes nothing.
    pub fn is_full(&self, now: Instant) -> bool {
        self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * self.per_sec
            >= self.burst
    }
}

/// Default limit of one API request (`--kube-request-timeout-secs`).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Per-object buckets kept before the full ones are forgotten.
const MAX_BUCKETS: usize = 10_000;

/// Rate limits, overridable for tests.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub object_burst: u32,
    pub object_refill: Duration,
    pub node_burst: u32,
    pub node_refill: Duration,
    pub max_attempts: u32,
    pub backoff: Duration,
    /// First pause after a 403 (RBAC); doubles up to `forbidden_max`.
    pub forbidden_backoff: Duration,
    pub forbidden_max: Duration,
    /// One request's limit: an API server (or a proxy's half-open connection) that stops
    /// answering must not hold the publisher for good; the write is retried.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            object_burst: 25,
            object_refill: Duration::from_secs(300),
            node_burst: 100,
            node_refill: Duration::from_secs(1),
            max_attempts: 5,
            backoff: Duration::from_millis(200),
            forbidden_backoff: Duration::from_secs(30),
            forbidden_max: Duration::from_secs(600),
            request_timeout: REQUEST_TIMEOUT,
        }
    }
}

struct Series {
    name: String,
    count: i32,
}

/// Why a write did not take: the API server's status codes, mapped once at this boundary.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    /// 409: an Event of that name exists (written before a restart of the agent).
    #[error("the Event already exists")]
    Conflict,
    /// 404: the Event is gone (the API server deletes Events after its --event-ttl, 1 h).
    #[error("the Event no longer exists")]
    NotFound,
    /// 403: RBAC does not let the agent write Events.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Any other refusal (422 and the like): not retried.
    #[error("rejected with {code}: {message}")]
    Rejected { code: u16, message: String },
    #[error("gave up after {0} attempts (API server unreachable, overloaded or failing)")]
    GaveUp(u32),
    #[error("stopping")]
    Stopping,
}

enum Outcome {
    Ok,
    Done(WriteError),
    Retry(Option<Duration>),
}

/// What happened to one occurrence.
enum Published {
    /// Counted under this `result` of `archwatch_kube_events_total`.
    Counted(&'static str),
    /// 403: keep the occurrence and try again after a long pause.
    Forbidden(String),
}

/// Drains the queue until `stop`.
///
/// Over days: an Event the API server has expired (404 on a series update) is created
/// anew carrying its count, as client-go's recorder does; an Event found existing on create
/// (409, written before an agent restart) is read and its series extended, not reset; a 403
/// is logged once, counted, and retried after a pause that grows to
/// [`Limits::forbidden_max`], while the bounded queue keeps the newest occurrences.
pub async fn publish(
    client: kube::Client,
    handle: EventsHandle,
    node: String,
    limits: Limits,
    stop: CancellationToken,
) {
    let mut p = Publisher {
        client,
        node,
        limits,
        series: HashMap::new(),
        buckets: HashMap::new(),
        node_bucket: Bucket::new(limits.node_burst, limits.node_refill),
        stop: stop.clone(),
    };
    let mut held: Option<EventSpec> = None;
    let mut forbidden_pause = limits.forbidden_backoff;
    let mut forbidden_since: Option<Instant> = None;
    loop {
        let spec = match held.take().or_else(|| handle.pop()) {
            Some(s) => s,
            None => {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = handle.inner.1.notified() => continue,
                }
            }
        };
        match p.one(&spec).await {
            Published::Counted(result) => {
                count(&handle.metrics, spec.reason, result);
                if result != "failed" {
                    if let Some(since) = forbidden_since.take() {
                        tracing::info!(
                            after_secs = since.elapsed().as_secs(),
                            "Kubernetes Events are accepted again."
                        );
                        forbidden_pause = limits.forbidden_backoff;
                    }
                }
            }
            Published::Forbidden(why) => {
                count(&handle.metrics, spec.reason, "failed");
                if forbidden_since.is_none() {
                    warn!(error = %why, retry_secs = forbidden_pause.as_secs(), "Kubernetes Events are forbidden: the agent's ServiceAccount may not create or patch events.k8s.io Events (check the ClusterRole and its binding). Diagnoses still go to the journal and metrics; Events are retried with a growing pause.");
                    forbidden_since = Some(Instant::now());
                } else {
                    debug!(error = %why, "Kubernetes Events still forbidden.");
                }
                held = Some(spec);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(forbidden_pause) => {}
                }
                forbidden_pause = (forbidden_pause * 2).min(limits.forbidden_max);
            }
        }
    }
}

/// The publisher's state: series by key, rate limit buckets.
struct Publisher {
    client: kube::Client,
    node: String,
    limits: Limits,
    series: HashMap<String, Series>,
    buckets: HashMap<String, Bucket>,
    node_bucket: Bucket,
    stop: CancellationToken,
}

impl Publisher {
    async fn one(&mut self, spec: &EventSpec) -> Published {
        let now = Instant::now();
        let key = spec.series_key();
        if self.buckets.len() >= MAX_BUCKETS {
            self.buckets.retain(|_, b| !b.is_full(now));
        }
        let limits = self.limits;
        let object = self
            .buckets
            .entry(spec.object_key())
            .or_insert_with(|| Bucket::new(limits.object_burst, limits.object_refill));
        // A series update leaves a quarter of the node's burst to first occurrences: under
        // a flood, every failing pod gets its Event before any pod gets a repeat counted.
        let keep = if self.series.contains_key(&key) {
            f64::from(limits.node_burst) / 4.0
        } else {
            0.0
        };
        let allowed = Bucket::take_both(object, &mut self.node_bucket, keep, now);
        if let Some(s) = self.series.get_mut(&key) {
            s.count += 1;
            if !allowed {
                return Published::Counted("rate_limited");
            }
            let (name, n) = (s.name.clone(), s.count);
            return match self.patch_series(spec, &name, n).await {
                Ok(()) => Published::Counted("series_updated"),
                // Expired: created anew, carrying the series.
                Err(WriteError::NotFound) => match self.create(spec, Some(n)).await {
                    Ok(()) => Published::Counted("created"),
                    Err(e) => self.refused(spec, &key, e).await,
                },
                Err(e) => self.refused(spec, &key, e).await,
            };
        }
        if !allowed {
            return Published::Counted("rate_limited");
        }
        match self.create(spec, None).await {
            Ok(()) => {
                self.remember(key, spec.name(), 1);
                Published::Counted("created")
            }
            Err(e) => self.refused(spec, &key, e).await,
        }
    }

    /// A write that did not take: a conflict extends the existing Event's series; the rest
    /// are counted as failed (a 403 is held for a later retry).
    async fn refused(&mut self, spec: &EventSpec, key: &str, e: WriteError) -> Published {
        match e {
            WriteError::Conflict => {
                let name = spec.name();
                // It exists (from before a restart): read its count and extend it.
                let existing = match self.read_count(spec, &name).await {
                    Ok(c) => c,
                    // Expired between the create and the read: create it again.
                    Err(WriteError::NotFound) => {
                        return match self.create(spec, None).await {
                            Ok(()) => {
                                self.remember(key.to_string(), name, 1);
                                Published::Counted("created")
                            }
                            Err(WriteError::Forbidden(why)) => Published::Forbidden(why),
                            Err(e) => {
                                debug!(reason = spec.reason, error = %e, "Event could not be created.");
                                Published::Counted("failed")
                            }
                        };
                    }
                    Err(WriteError::Forbidden(why)) => return Published::Forbidden(why),
                    Err(e) => {
                        debug!(reason = spec.reason, error = %e, "Existing Event unreadable.");
                        return Published::Counted("failed");
                    }
                };
                let n = existing.max(1) + 1;
                match self.patch_series(spec, &name, n).await {
                    Ok(()) => {
                        self.remember(key.to_string(), name, n);
                        Published::Counted("series_updated")
                    }
                    Err(WriteError::Forbidden(why)) => Published::Forbidden(why),
                    Err(e) => {
                        debug!(reason = spec.reason, error = %e, "Event series update failed.");
                        Published::Counted("failed")
                    }
                }
            }
            WriteError::Forbidden(why) => Published::Forbidden(why),
            WriteError::Stopping => Published::Counted("dropped"),
            e => {
                warn!(reason = spec.reason, error = %e, "Kubernetes Event could not be written.");
                Published::Counted("failed")
            }
        }
    }

    fn remember(&mut self, key: String, name: String, count: i32) {
        if self.series.len() > 50_000 {
            self.series.clear();
        }
        self.series.insert(key, Series { name, count });
    }

    /// POST the Event; with `series`, an Event that had occurrences before (recreated after
    /// its expiry) carries its count.
    async fn create(&self, spec: &EventSpec, series: Option<i32>) -> Result<(), WriteError> {
        let mut ev = event_object(spec, &self.node);
        if let Some(count) = series.filter(|c| *c >= 2) {
            ev.series = Some(EventSeries {
                count,
                last_observed_time: micro(spec.time),
            });
        }
        write(&self.client, spec, &self.limits, &self.stop, |api| {
            let ev = ev.clone();
            async move { api.create(&PostParams::default(), &ev).await.map(|_| ()) }
        })
        .await
    }

    async fn patch_series(
        &self,
        spec: &EventSpec,
        name: &str,
        count: i32,
    ) -> Result<(), WriteError> {
        let body = serde_json::json!({"series": EventSeries { count, last_observed_time: micro(spec.time) }});
        write(&self.client, spec, &self.limits, &self.stop, |api| {
            let body = body.clone();
            let name = name.to_string();
            async move {
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&body))
                    .await
                    .map(|_| ())
            }
        })
        .await
    }

    /// The series count of an existing Event (1 when it has no series yet).
    async fn read_count(&self, spec: &EventSpec, name: &str) -> Result<i32, WriteError> {
        let api: kube::Api<Event> = kube::Api::namespaced(self.client.clone(), &spec.namespace);
        let got = tokio::time::timeout(self.limits.request_timeout, api.get(name))
            .await
            .map_err(|_| WriteError::GaveUp(1))?;
        match got {
            Ok(ev) => Ok(ev.series.map(|s| s.count).unwrap_or(1)),
            Err(e) => Err(match classify(e) {
                Outcome::Done(w) => w,
                Outcome::Retry(_) => WriteError::GaveUp(1),
                Outcome::Ok => WriteError::GaveUp(0),
            }),
        }
    }
}

/// Maps a client error to what the publisher does with it.
fn classify(e: kube::Error) -> Outcome {
    match e {
        kube::Error::Api(s) => match s.code {
            409 => Outcome::Done(WriteError::Conflict),
            404 => Outcome::Done(WriteError::NotFound),
            403 => Outcome::Done(WriteError::Forbidden(s.message)),
            // The API server puts Retry-After into the Status body too (details.retryAfterSeconds).
            429 => Outcome::Retry(
                s.details
                    .as_ref()
                    .map(|d| d.retry_after_seconds)
                    .filter(|s| *s > 0)
                    .map(|s| Duration::from_secs(u64::from(s))),
            ),
            c if c >= 500 => Outcome::Retry(None),
            code => Outcome::Done(WriteError::Rejected {
                code,
                message: s.message,
            }),
        },
        e => {
            debug!(error = %e, "Kubernetes API unreachable.");
            Outcome::Retry(None)
        }
    }
}

/// One API write with retries of what may pass later (429, 5xx, connection errors).
async fn write<F, Fut>(
    client: &kube::Client,
    spec: &EventSpec,
    limits: &Limits,
    stop: &CancellationToken,
    op: F,
) -> Result<(), WriteError>
where
    F: Fn(kube::Api<Event>) -> Fut,
    Fut: std::future::Future<Output = Result<(), kube::Error>>,
{
    let api: kube::Api<Event> = kube::Api::namespaced(client.clone(), &spec.namespace);
    let mut delay = limits.backoff;
    for attempt in 1..=limits.max_attempts {
        let outcome = match tokio::time::timeout(limits.request_timeout, op(api.clone())).await {
            Ok(Ok(())) => Outcome::Ok,
            Ok(Err(e)) => classify(e),
            Err(_) => {
                debug!(attempt, "Kubernetes API request timed out.");
                Outcome::Retry(None)
            }
        };
        match outcome {
            Outcome::Ok => return Ok(()),
            Outcome::Done(e) => return Err(e),
            Outcome::Retry(after) => {
                if attempt == limits.max_attempts {
                    break;
                }
                let wait = after.unwrap_or(delay).min(Duration::from_secs(30));
                tokio::select! {
                    _ = stop.cancelled() => return Err(WriteError::Stopping),
                    _ = tokio::time::sleep(wait) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
    Err(WriteError::GaveUp(limits.max_attempts))
}

/// Connects per `--kube`: `off` never; `auto` the given kubeconfig, else in-cluster or
/// `$KUBECONFIG`, or none.
pub async fn client(
    mode: &str,
    kubeconfig: Option<&std::path::Path>,
    request_timeout: Duration,
) -> Option<kube::Client> {
    if mode == "off" {
        return None;
    }
    let config = match kubeconfig {
        Some(path) => match kube::config::Kubeconfig::read_from(path) {
            Ok(kc) => kube::Config::from_custom_kubeconfig(
                kc,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .map_err(|e| e.to_string()),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "Kubeconfig unreadable; Kubernetes Events are off.");
                return None;
            }
        },
        None => kube::Config::infer().await.map_err(|e| e.to_string()),
    };
    match config {
        Ok(mut cfg) => {
            // kube's default is no read timeout: a silent connection would hold a request
            // for good.
            cfg.read_timeout = Some(request_timeout);
            cfg.write_timeout = Some(request_timeout);
            cfg.connect_timeout = Some(request_timeout.min(Duration::from_secs(10)));
            match crate::tls::kube_client(cfg) {
                Ok(c) => Some(c),
                Err(e) => {
                    warn!(error = %e, "Kubernetes client could not be built; Events are off.");
                    None
                }
            }
        }
        Err(e) => {
            tracing::info!(error = %e, "No in-cluster config or kubeconfig; Kubernetes Events are off (journal and metrics carry every diagnosis).");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_buckets_or_neither_and_the_reserve_is_kept() {
        let t0 = Instant::now();
        let mut object = Bucket::new(1, Duration::from_secs(300));
        let mut node = Bucket::new(4, Duration::from_secs(300));
        assert!(Bucket::take_both(&mut object, &mut node, 0.0, t0));
        // The object is empty: the node keeps its token.
        assert!(!Bucket::take_both(&mut object, &mut node, 0.0, t0));
        let mut other = Bucket::new(5, Duration::from_secs(300));
        // 3 node tokens left; keeping 2 allows one take, then none.
        assert!(Bucket::take_both(&mut other, &mut node, 2.0, t0));
        assert!(!Bucket::take_both(&mut other, &mut node, 2.0, t0));
        // Without the reserve the rest can be taken.
        assert!(Bucket::take_both(&mut other, &mut node, 0.0, t0));
        assert!(Bucket::take_both(&mut other, &mut node, 0.0, t0));
        assert!(!Bucket::take_both(&mut other, &mut node, 0.0, t0));
    }

    #[test]
    fn a_bucket_is_full_again_after_its_refill() {
        let t0 = Instant::now();
        let mut b = Bucket::new(2, Duration::from_secs(1));
        assert!(b.is_full(t0));
        assert!(b.take(t0));
        assert!(!b.is_full(t0));
        assert!(!b.is_full(t0 + Duration::from_millis(500)));
        assert!(b.is_full(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn notes_fit_in_one_kilobyte_on_a_char_boundary() {
        let long = "é".repeat(900);
        let n = note(&long, "fix it");
        assert!(n.len() <= NOTE_MAX);
        assert!(n.ends_with("..."));
        assert_eq!(note("cause", "Fix."), "cause. Fix.");
    }

    #[test]
    fn buckets_allow_a_burst_then_refill() {
        let t0 = Instant::now();
        let mut b = Bucket::new(25, Duration::from_secs(300));
        assert_eq!((0..30).filter(|_| b.take(t0)).count(), 25);
        assert!(!b.take(t0 + Duration::from_secs(299)));
        assert!(b.take(t0 + Duration::from_secs(301)));
    }

    #[test]
    fn field_path_follows_the_kubelets_container_type() {
        use crate::diagnose::ContainerType;
        let who = |t: Option<ContainerType>, c: &str| Identity {
            pod: Some("p".into()),
            pod_namespace: Some("shop".into()),
            pod_uid: Some("u".into()),
            container: Some(c.into()),
            container_type: t,
            ..Identity::default()
        };
        let spec =
            |w: &Identity| for_pod(w, "ExecFormatError", "cause", "Fix.", Utc::now()).unwrap();
        let init = spec(&who(Some(ContainerType::Init), "migrate"));
        assert_eq!(
            init.regarding.field_path.as_deref(),
            Some("spec.initContainers{migrate}")
        );
        let app = spec(&who(Some(ContainerType::Container), "app"));
        assert_eq!(
            app.regarding.field_path.as_deref(),
            Some("spec.containers{app}")
        );
        let debug = spec(&who(Some(ContainerType::Ephemeral), "dbg"));
        assert_eq!(
            debug.regarding.field_path.as_deref(),
            Some("spec.ephemeralContainers{dbg}")
        );
        // The kubelet did not say: no guessed field path, the note names the container, and
        // two containers of one pod stay two series.
        let a = spec(&who(None, "a"));
        let b = spec(&who(None, "b"));
        assert_eq!(a.regarding.field_path, None);
        assert!(a.note.starts_with("Container a: cause"), "{}", a.note);
        assert_ne!(a.series_key(), b.series_key());
        assert_ne!(a.name(), b.name());
    }

    #[test]
    fn names_are_stable_per_series() {
        let s = for_node(
            "node-1",
            Some("sha256:aa"),
            "IncompatibleImagePulled",
            "c",
            "f",
        );
        let mut other = s.clone();
        assert_eq!(s.name(), other.name());
        other.reason = "RunningUnderEmulation";
        assert_ne!(s.name(), other.name());
        let another_image = for_node(
            "node-1",
            Some("sha256:bb"),
            "IncompatibleImagePulled",
            "c",
            "f",
        );
        assert_ne!(s.name(), another_image.name(), "one series per image");
        assert!(s.name().starts_with("node-1."));
    }
}

#[cfg(test)]
mod crashloop {
    use super::*;

    /// A 110-pod CrashLoopBackOff node for an hour, kubelet's back-off (10 s doubling to
    /// 5 min), through the same buckets the publisher uses: API writes per minute.
    #[test]
    fn a_crashlooping_node_stays_within_the_rate_limits() {
        let l = Limits::default();
        let t0 = Instant::now();
        let mut node = Bucket::new(l.node_burst, l.node_refill);
        let mut objects: Vec<Bucket> = (0..110)
            .map(|_| Bucket::new(l.object_burst, l.object_refill))
            .collect();
        let mut failures: Vec<(f64, usize, u32)> =
            (0..110).map(|p| (p as f64 * 0.1, p, 0)).collect();
        let mut per_minute = [0u32; 60];
        let mut occurrences = 0u32;
        loop {
            failures.sort_by(|a, b| b.0.total_cmp(&a.0));
            let Some((t, pod, n)) = failures.pop() else {
                break;
            };
            if t >= 3600.0 {
                break;
            }
            occurrences += 1;
            let now = t0 + Duration::from_secs_f64(t);
            if objects[pod].take(now) && node.take(now) {
                per_minute[(t / 60.0) as usize] += 1;
            }
            let backoff = (10.0 * 2f64.powi(n.min(5) as i32)).min(300.0);
            failures.push((t + backoff + 1.0, pod, n + 1));
        }
        let first = per_minute[0];
        let steady = per_minute[30..].iter().sum::<u32>() as f64 / 30.0;
        let max = *per_minute.iter().max().unwrap_or(&0);
        println!("crashloop: {occurrences} failures in 60 min; API writes: first minute {first}, max {max}/min, steady {steady:.1}/min");
        // Node cap: at most the burst plus one per second in any minute.
        assert!(max <= l.node_burst + 60, "max {max}");
        // Per object: one write per 5 minutes per pod once the bursts are spent.
        assert!(steady <= 110.0 / 5.0 + 1.0, "steady {steady}");
        assert!(
            occurrences > 110 * 11,
            "the simulation really crash-looped ({occurrences})"
        );
    }
}
