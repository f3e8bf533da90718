//! Kubernetes Events against a local HTTP server that speaks the real REST paths
//! (`/apis/events.k8s.io/v1/namespaces/{ns}/events[/{name}]`, POST and PATCH) and answers with
//! real status codes and Status bodies: 201, 409 AlreadyExists, 422, 429 with Retry-After,
//! 500, connection refused.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use archwatch::diagnose::{Diagnosis, Exit, Identity, Signal};
use archwatch::inspect::{Inspection, Verdict};
use archwatch::platform::Arch;
use archwatch::sinks::kube_events::{self, EventsHandle, Limits};
use archwatch::sinks::metrics::{KubeLabels, Metrics};

pub(crate) use crate::support::fake_api::{Answer, FakeApi, Req};
use k8s_openapi::api::events::v1::Event;
use tokio_util::sync::CancellationToken;

fn diagnosis(pod: &str) -> Diagnosis {
    let i = Inspection {
        verdict: Verdict::ArchMismatch,
        cause: format!("/app is a linux/arm64 binary and this node is linux/amd64 ({pod})"),
        fix: "Publish a multi-arch image.".into(),
        fix_code: archwatch::fix::FixCode::PublishMultiarch,
        symptom: "exec format error",
        argv: vec!["/app".into()],
        node_arch: Arch::Amd64,
        binary_arch: Some(Arch::Arm64),
        handler: None,
        chain: Vec::new(),
        findings: Vec::new(),
        bytes_read: 0,
        suspects: Vec::new(),
    };
    let who = Identity {
        containerd_namespace: "k8s.io".into(),
        container_id: format!("{pod}-c"),
        pod: Some(pod.into()),
        pod_namespace: Some("shop".into()),
        pod_uid: Some(format!("uid-{pod}")),
        container: Some("app".into()),
        image: "registry.example/shop/app:1".into(),
        image_digest: None,
        container_type: Some(archwatch::diagnose::ContainerType::Container),
        attempt: None,
        ..Identity::default()
    };
    archwatch::diagnose::diagnose(
        "node-1",
        &who,
        &i,
        &Exit {
            signal: Signal::TaskExit,
            exit_code: Some(1),
            started_at: None,
            exited_at: None,
        },
    )
    .unwrap()
}

fn client(url: &str) -> kube::Client {
    archwatch::tls::kube_client(kube::Config::new(url.parse().unwrap())).unwrap()
}

fn counter(m: &Metrics, result: &str) -> u64 {
    m.kube_events
        .get_or_create(&KubeLabels {
            reason: "ExecFormatError".into(),
            result: result.into(),
        })
        .get()
}

fn limits() -> Limits {
    Limits {
        node_refill: Duration::from_secs(3600),
        backoff: Duration::from_millis(20),
        ..Limits::default()
    }
}

/// Starts the publisher on `url`, pushes, waits until the queue is drained and writes settle.
fn run(
    url: &str,
    capacity: usize,
    limits: Limits,
    push: impl FnOnce(&EventsHandle),
    settle: Duration,
) -> Metrics {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let metrics = Metrics::default();
    let handle = EventsHandle::new(capacity, metrics.clone());
    let stop = CancellationToken::new();
    rt.block_on(async {
        let task = tokio::spawn(kube_events::publish(
            client(url),
            handle.clone(),
            "node-1".into(),
            limits,
            stop.clone(),
        ));
        push(&handle);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !handle.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(settle).await;
        stop.cancel();
        let _ = task.await;
    });
    metrics
}

#[test]
fn two_hundred_identical_failures_are_one_event_with_a_series() {
    let (api, url) = FakeApi::start();
    let d = diagnosis("checkout-5d8f");
    let m = run(
        &url,
        1024,
        limits(),
        |h| {
            for _ in 0..200 {
                h.push(kube_events::for_diagnosis(&d).unwrap());
            }
        },
        Duration::from_millis(300),
    );
    let reqs = api.requests();
    let posts: Vec<&Req> = reqs.iter().filter(|r| r.method == "POST").collect();
    let patches: Vec<&Req> = reqs.iter().filter(|r| r.method == "PATCH").collect();
    assert_eq!(posts.len(), 1, "one object, not 200");
    assert_eq!(
        posts[0].path.split('?').next().unwrap(),
        "/apis/events.k8s.io/v1/namespaces/shop/events"
    );
    let ev: Event =
        serde_json::from_value(posts[0].body.clone()).expect("a valid events.k8s.io/v1 Event");
    let reg = ev.regarding.unwrap();
    assert_eq!(
        (
            reg.kind.as_deref(),
            reg.name.as_deref(),
            reg.namespace.as_deref()
        ),
        (Some("Pod"), Some("checkout-5d8f"), Some("shop"))
    );
    assert_eq!(reg.uid.as_deref(), Some("uid-checkout-5d8f"));
    assert_eq!(reg.field_path.as_deref(), Some("spec.containers{app}"));
    assert_eq!(ev.reason.as_deref(), Some("ExecFormatError"));
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert_eq!(
        ev.reporting_controller.as_deref(),
        Some("archwatch.io/agent")
    );
    assert_eq!(ev.reporting_instance.as_deref(), Some("node-1"));
    let note = ev.note.unwrap();
    assert!(
        note.contains("linux/arm64") && note.contains("multi-arch") && note.len() <= 1024,
        "{note}"
    );
    // Burst 25 per object: the create and 24 series updates; the rest are counted, not sent.
    assert_eq!(patches.len(), 24);
    let name = ev.metadata.name.unwrap();
    assert!(patches.iter().all(|p| p.path.starts_with(&format!(
        "/apis/events.k8s.io/v1/namespaces/shop/events/{name}"
    ))));
    let counts: Vec<i64> = patches
        .iter()
        .map(|p| p.body["series"]["count"].as_i64().unwrap())
        .collect();
    assert_eq!(counts.first(), Some(&2));
    assert_eq!(counts.last(), Some(&25));
    assert!(patches
        .iter()
        .all(|p| p.body["series"]["lastObservedTime"].is_string()));
    assert_eq!(
        (
            counter(&m, "created"),
            counter(&m, "series_updated"),
            counter(&m, "rate_limited")
        ),
        (1, 24, 175)
    );
}

#[test]
fn retries_honour_retry_after_and_errors_are_classified() {
    let (api, url) = FakeApi::start();
    api.script.lock().unwrap().extend([
        Answer::Status(500, "InternalError"),
        Answer::TooMany { retry_after: 1 },
    ]);
    let m = run(
        &url,
        16,
        limits(),
        |h| h.push(kube_events::for_diagnosis(&diagnosis("a")).unwrap()),
        Duration::from_millis(100),
    );
    let reqs = api.requests();
    assert_eq!(reqs.len(), 3, "500, 429, then 201");
    assert!(
        reqs[2].at - reqs[1].at >= Duration::from_millis(950),
        "Retry-After: 1 was honoured"
    );
    assert_eq!(counter(&m, "created"), 1);

    // 409: the object exists (an agent restart) — the occurrence extends its series, from
    // the count the object holds (here unreadable: 2).
    let (api, url) = FakeApi::start();
    api.script
        .lock()
        .unwrap()
        .push_back(Answer::Status(409, "AlreadyExists"));
    let m = run(
        &url,
        16,
        limits(),
        |h| h.push(kube_events::for_diagnosis(&diagnosis("b")).unwrap()),
        Duration::from_millis(100),
    );
    // The 409's object is gone by the time it is read (expired in between): created again.
    let reqs = api.requests();
    let methods: Vec<&str> = reqs.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(methods, vec!["POST", "GET", "POST"]);
    assert_eq!(counter(&m, "created"), 1);

    // An agent restarted after 7 occurrences goes on at 8.
    let (api, url) = FakeApi::start();
    let d = diagnosis("d");
    run(
        &url,
        16,
        limits(),
        |h| {
            for _ in 0..7 {
                h.push(kube_events::for_diagnosis(&d).unwrap());
            }
        },
        Duration::from_millis(100),
    );
    run(
        &url,
        16,
        limits(),
        |h| h.push(kube_events::for_diagnosis(&d).unwrap()),
        Duration::from_millis(100),
    );
    let reqs = api.requests();
    let methods: Vec<&str> = reqs.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(methods[..2], ["POST", "PATCH"]);
    assert_eq!(methods[7..], ["POST", "GET", "PATCH"], "{methods:?}");
    assert_eq!(reqs[9].body["series"]["count"], 8);

    // 422: invalid — not retried.
    let (api, url) = FakeApi::start();
    api.script
        .lock()
        .unwrap()
        .push_back(Answer::Status(422, "Invalid"));
    let m = run(
        &url,
        16,
        limits(),
        |h| h.push(kube_events::for_diagnosis(&diagnosis("c")).unwrap()),
        Duration::from_millis(100),
    );
    assert_eq!(api.requests().len(), 1);
    assert_eq!(counter(&m, "failed"), 1);
}

#[test]
fn an_api_outage_loses_at_most_the_queue_and_never_blocks() {
    // Nothing listens here: connection refused on every attempt.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let lim = Limits {
        max_attempts: 2,
        backoff: Duration::from_millis(5),
        ..limits()
    };
    let pushed = 2000u64;
    let m = run(
        &url,
        100,
        lim,
        |h| {
            for i in 0..pushed {
                h.push(kube_events::for_diagnosis(&diagnosis(&format!("pod-{i}"))).unwrap());
            }
            assert!(h.len() <= 100, "the queue is bounded");
        },
        Duration::from_millis(200),
    );
    let (dropped, failed) = (counter(&m, "dropped"), counter(&m, "failed"));
    // Pushing never waits for the publisher: it took only the few it could fail in the
    // meantime, the bounded queue kept 100 at most, and the rest were dropped oldest first.
    assert!(
        dropped >= pushed * 9 / 10 - 100,
        "dropped {dropped}, failed {failed}"
    );
    assert!(failed >= 1, "the outage was tried, not skipped");
    assert_eq!(
        dropped + failed + counter(&m, "rate_limited"),
        pushed,
        "every Event is accounted for"
    );
}

#[test]
fn a_node_wide_cap_bounds_a_crashlooping_fleet() {
    let (api, url) = FakeApi::start();
    let lim = Limits {
        node_burst: 100,
        ..limits()
    };
    let pushed_at = Arc::new(Mutex::new(std::collections::HashMap::new()));
    let p2 = pushed_at.clone();
    let m = run(
        &url,
        1024,
        lim,
        move |h| {
            for i in 0..110 {
                let pod = format!("fleet-{i}");
                p2.lock().unwrap().insert(pod.clone(), Instant::now());
                h.push(kube_events::for_diagnosis(&diagnosis(&pod)).unwrap());
            }
        },
        Duration::from_millis(300),
    );
    let reqs = api.requests();
    assert_eq!(reqs.len(), 100);
    assert_eq!(
        (counter(&m, "created"), counter(&m, "rate_limited")),
        (100, 10)
    );
    // The delay the Events path adds: from push (beside the journal write) to the POST.
    let pushed = pushed_at.lock().unwrap();
    let mut delays: Vec<f64> = reqs
        .iter()
        .filter_map(|r| {
            Some(
                (r.at - *pushed.get(r.body["regarding"]["name"].as_str()?)?).as_secs_f64() * 1000.0,
            )
        })
        .collect();
    delays.sort_by(f64::total_cmp);
    assert_eq!(delays.len(), 100);
    eprintln!(
        "events: push -> POST, a burst of 100 pods: median {:.2} ms, worst {:.2} ms",
        delays[50], delays[99]
    );
}

fn fast() -> Limits {
    Limits {
        object_refill: Duration::from_millis(1),
        node_refill: Duration::from_millis(1),
        backoff: Duration::from_millis(20),
        forbidden_backoff: Duration::from_millis(300),
        forbidden_max: Duration::from_millis(600),
        ..Limits::default()
    }
}

/// Pushes `n` occurrences of pod `pod`, `gap` apart, through one publisher, and waits for
/// each to be written (a 403 pause holds it longer).
fn occurrences(
    url: &str,
    limits: Limits,
    pods: &[(&str, usize, Duration)],
    settled: &dyn Fn() -> bool,
) -> Metrics {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let metrics = Metrics::default();
    let handle = EventsHandle::new(64, metrics.clone());
    let stop = CancellationToken::new();
    rt.block_on(async {
        let task = tokio::spawn(kube_events::publish(
            client(url),
            handle.clone(),
            "node-1".into(),
            limits,
            stop.clone(),
        ));
        for (pod, n, gap) in pods {
            for i in 0..*n {
                if i > 0 {
                    tokio::time::sleep(*gap).await;
                }
                handle.push(kube_events::for_diagnosis(&diagnosis(pod)).unwrap());
                while !handle.is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !settled() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.cancel();
        let _ = task.await;
    });
    metrics
}

/// `n` occurrences of `pod`, 5 ms apart, through one publisher with [`fast`] limits.
fn burst(url: &str, pod: &str, n: usize) -> Metrics {
    occurrences(url, fast(), &[(pod, n, Duration::from_millis(5))], &|| true)
}

fn live_series(api: &FakeApi, pod: &str) -> Option<i64> {
    let events = api.store.lock().unwrap().events();
    let ev = events.into_iter().find(|e| e["regarding"]["name"] == pod)?;
    Some(ev["series"]["count"].as_i64().unwrap_or(1))
}

/// kube-apiserver deletes an Event `--event-ttl` after its last write (1 h by default). A
/// CrashLoopBackOff that outlives it still has its Event: the series update that gets 404
/// creates the Event anew with the count so far, as client-go's recorder does. Time is
/// scaled: a 300 ms TTL, failures 400 ms apart.
#[test]
fn events_outlive_the_api_servers_event_ttl() {
    let (api, url) = FakeApi::start_stateful(Duration::from_millis(300));
    let m = occurrences(
        &url,
        fast(),
        &[("loop", 4, Duration::from_millis(400))],
        &|| true,
    );
    let methods: Vec<String> = api.requests().iter().map(|r| r.method.clone()).collect();
    assert_eq!(
        methods,
        vec!["POST", "PATCH", "POST", "PATCH", "POST", "PATCH", "POST"],
        "every update after expiry is a 404, then a create"
    );
    assert_eq!(
        live_series(&api, "loop"),
        Some(4),
        "the count survives expiry"
    );
    assert_eq!(counter(&m, "created"), 4);
    assert_eq!(counter(&m, "failed"), 0);
    // Within the TTL, updates stay updates.
    let (api, url) = FakeApi::start_stateful(Duration::from_secs(60));
    let m = burst(&url, "steady", 5);
    assert_eq!(live_series(&api, "steady"), Some(5));
    assert_eq!(counter(&m, "created"), 1);
    assert_eq!(counter(&m, "series_updated"), 4);
}

/// An Event written before the agent restarted is found on create (409): it is read and its
/// series extended, never reset to 2.
#[test]
fn an_event_from_before_a_restart_is_extended_not_reset() {
    let (api, url) = FakeApi::start_stateful(Duration::from_secs(60));
    burst(&url, "again", 5);
    assert_eq!(live_series(&api, "again"), Some(5));
    // A new agent process: no memory of the series.
    let m = burst(&url, "again", 2);
    assert_eq!(live_series(&api, "again"), Some(7));
    assert_eq!(counter(&m, "series_updated"), 2);
    assert_eq!(counter(&m, "created"), 0);
}

/// A 403 (RBAC missing) is counted, retried after a growing pause instead of hammering the
/// API server, and the occurrence is written once access returns.
#[test]
fn forbidden_is_counted_and_retried_after_a_pause() {
    let (api, url) = FakeApi::start_stateful(Duration::from_secs(60));
    api.script.lock().unwrap().extend([
        Answer::Status(403, "Forbidden"),
        Answer::Status(403, "Forbidden"),
        Answer::Status(403, "Forbidden"),
    ]);
    let t0 = Instant::now();
    let m = occurrences(&url, fast(), &[("denied", 1, Duration::ZERO)], &|| {
        api.requests().len() >= 4
    });
    let reqs = api.requests();
    assert_eq!(reqs.len(), 4, "three refusals, then the create");
    let gaps: Vec<Duration> = reqs.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(gaps[0] >= Duration::from_millis(280), "{gaps:?}");
    assert!(
        gaps[1] >= Duration::from_millis(580),
        "the pause grows: {gaps:?}"
    );
    assert!(t0.elapsed() >= Duration::from_millis(1400));
    assert_eq!(counter(&m, "failed"), 3);
    assert_eq!(counter(&m, "created"), 1);
    assert_eq!(live_series(&api, "denied"), Some(1));
}
