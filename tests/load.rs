//! Load: a node where 50 containers a second die with `exec format error` (110 pods in
//! CrashLoopBackOff, plus exec probes on 30 healthy pods), replayed from a stream recorded
//! on a private containerd through the whole agent with the journal, metrics and Kubernetes
//! Events (to a local API server) on. Its own test binary, so the process's memory is the
//! agent's.
//!
//! CI runs it for 120 s (the diagnosis ring of the gRPC API fills in 82 s); `ARCHWATCH_LOAD_SECS=600 cargo test --release --test load -- --nocapture`
//! is the 10-minute run.

#[path = "integration/support/fake_api.rs"]
mod fake_api;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use archwatch::agent::{Config, Feed, Replay};
use archwatch::replay::NodeTemplates;
use tokio_util::sync::CancellationToken;

const RATE: f64 = 50.0;
const CRASH_PODS: usize = 110;
const PROBE_PODS: usize = 30;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn metric_sum(text: &str, name: &str, label: Option<&str>) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.split(['{', ' '])
                .next()
                .is_some_and(|n| n == name || n == format!("{name}_total"))
        })
        .filter(|l| label.is_none_or(|lb| l.contains(lb)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("metrics listener");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn fifty_failures_a_second_stay_bounded_lose_nothing_and_respect_the_api() {
    let secs: f64 = std::env::var("ARCHWATCH_LOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120.0);
    let fixtures = std::env::var("ARCHWATCH_FIXTURES")
        .unwrap_or_else(|_| "/var/cache/archwatch-fixtures".into());
    let read = |n: &str| std::fs::read(format!("{fixtures}/{n}")).expect("run scripts/fixtures");
    let mut ctd = archwatch::lab::Containerd::start().expect("containerd");
    let t = NodeTemplates::record(&mut ctd, read("busybox-arm64"), read("busybox-amd64"))
        .expect("record a crash, a healthy start and a probe");
    drop(ctd);

    let per_round = CRASH_PODS * t.crash.envelopes.len() + PROBE_PODS * t.probe.envelopes.len();
    let rounds = (RATE * secs / CRASH_PODS as f64).ceil() as usize;
    let total = PROBE_PODS * t.host.envelopes.len() + rounds * per_round;
    let round = Duration::from_secs_f64(CRASH_PODS as f64 / RATE);
    let s = t
        .stream(
            CRASH_PODS,
            PROBE_PODS,
            total,
            chrono::Duration::from_std(round).unwrap(),
        )
        .expect("stream");
    let per_second = per_round as f64 / round.as_secs_f64();

    let (api, url) = fake_api::FakeApi::start_lean();
    let work = tempfile::tempdir().unwrap();
    let kubeconfig = work.path().join("kubeconfig");
    std::fs::write(&kubeconfig, fake_api::kubeconfig(&url)).unwrap();
    let journal = work.path().join("journal.jsonl");
    let queue = 1024;
    let cfg = Config {
        address: Some(work.path().join("no-containerd.sock")),
        docker_host: None,
        docker_timeout: std::time::Duration::from_secs(10),
        namespaces: Vec::new(),
        listen: Some(([127, 0, 0, 1], 0).into()),
        node_name: "load-node".into(),
        journal: Some(journal.clone()),
        journal_max_bytes: 1 << 30,
        binfmt_dir: work.path().join("no-binfmt"),
        node: archwatch::platform::Node::detect(),
        snapshotter: "overlayfs".into(),
        inspect_timeout: Duration::from_secs(5),
        windows: archwatch::pipeline::Windows::default(),
        kube: "auto".into(),
        kube_queue: queue,
        kubeconfig: Some(kubeconfig),
        view_lease_ttl: archwatch::containerd::LEASE_TTL,
        api_socket: None,
        proc_dir: work.path().join("no-proc"),
        unhealthy_after: std::time::Duration::from_secs(120),
        kube_request_timeout: archwatch::sinks::kube_events::REQUEST_TIMEOUT,
        exec_tracer: archwatch::tracer::TracerMode::Off,
        cgroup_dir: None,
    };

    let samples = Arc::new(Mutex::new(Vec::<(f64, u64)>::new()));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (samples, sampling) = (samples.clone(), sampling.clone());
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while sampling.load(Ordering::Relaxed) {
                samples
                    .lock()
                    .unwrap()
                    .push((t0.elapsed().as_secs_f64(), rss_kib()));
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    let failures = s.failures;
    let envelopes = s.envelopes.len();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (stats, metrics) = rt.block_on(async move {
        let (done, finished) = tokio::sync::oneshot::channel();
        let (bound_tx, bound) = tokio::sync::oneshot::channel();
        let stop = CancellationToken::new();
        let replay = Replay {
            recording: Arc::new(s.recording),
            envelopes: s.envelopes,
            per_second: Some(per_second),
            done,
        };
        let agent = tokio::spawn(archwatch::agent::run_fed(
            cfg,
            Feed::Replay(replay),
            stop.clone(),
            Some(bound_tx),
        ));
        let addr = bound.await.expect("metrics address");
        let stats = finished.await.expect("replay finished");
        // Let the Events publisher take what is queued.
        let deadline = Instant::now() + Duration::from_secs(30);
        let metrics = loop {
            let m = tokio::task::spawn_blocking(move || get(addr, "/metrics"))
                .await
                .unwrap();
            let accounted = metric_sum(&m, "archwatch_kube_events", None);
            if accounted as usize >= failures || Instant::now() > deadline {
                break m;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        stop.cancel();
        agent.await.unwrap().expect("agent ran");
        (stats, metrics)
    });
    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();

    // Paced as asked: the replay took the planned time.
    println!(
        "load: {envelopes} envelopes, {failures} failing containers in {:.1} s ({:.1} failures/s)",
        stats.elapsed.as_secs_f64(),
        failures as f64 / stats.elapsed.as_secs_f64()
    );
    assert!(stats.elapsed.as_secs_f64() >= secs * 0.9);
    assert_eq!(stats.decode_errors, 0);

    // No diagnosis lost: one journal line per failing container, none twice.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&journal)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|l: &serde_json::Value| l["kind"] == "exec_failure")
        .collect();
    let ids: std::collections::HashSet<&str> = lines
        .iter()
        .map(|l| l["container_id"].as_str().unwrap())
        .collect();
    assert_eq!(lines.len(), failures, "one journal line per failure");
    assert_eq!(ids.len(), failures, "no container diagnosed twice");
    assert!(lines.iter().all(|l| l["verdict"] == "arch_mismatch"));
    assert_eq!(
        metric_sum(&metrics, "archwatch_exec_failures", None) as usize,
        failures
    );

    // Every Event accounted for, none dropped below the queue bound.
    let result = |r: &str| {
        metric_sum(
            &metrics,
            "archwatch_kube_events",
            Some(&format!("result=\"{r}\"")),
        )
    };
    let (created, updated, limited, dropped, failed) = (
        result("created"),
        result("series_updated"),
        result("rate_limited"),
        result("dropped"),
        result("failed"),
    );
    println!(
        "load: Events created {}, series updated {}, rate limited {}, dropped {}, failed {}",
        created as u64, updated as u64, limited as u64, dropped as u64, failed as u64
    );
    assert_eq!(
        (created + updated + limited + dropped + failed) as usize,
        failures
    );
    assert_eq!(dropped, 0.0, "the queue ({queue}) never overflowed");
    assert_eq!(failed, 0.0);
    assert_eq!(
        created as usize, CRASH_PODS,
        "one Event per pod, then its series"
    );

    // API writes within the limits: node bucket (burst 100, 1/s) and per pod (burst 25).
    let reqs = api.requests();
    let writes = reqs.len();
    println!(
        "load: {writes} API writes in {:.1} s over {} connections",
        stats.elapsed.as_secs_f64(),
        api.connections.load(Ordering::Relaxed)
    );
    assert_eq!(writes, (created + updated) as usize);
    assert!(writes as f64 <= 100.0 + stats.elapsed.as_secs_f64() + 30.0 + 1.0);
    let mut per_pod: std::collections::HashMap<String, usize> = Default::default();
    for r in &reqs {
        let pod = if r.method == "POST" {
            r.body["regarding"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string()
        } else {
            // PATCH .../events/<pod>.<hash>: the name starts with the pod's.
            r.path
                .rsplit('/')
                .next()
                .unwrap_or("")
                .split('.')
                .next()
                .unwrap_or("")
                .to_string()
        };
        *per_pod.entry(pod).or_default() += 1;
    }
    let most = per_pod.values().copied().max().unwrap_or(0);
    assert!(
        most <= 25 + 1 + (secs / 300.0) as usize,
        "a pod got {most} writes"
    );
    let mut times: Vec<Instant> = reqs.iter().map(|r| r.at).collect();
    times.sort();
    let busiest = (0..times.len())
        .map(|i| {
            times[i..]
                .iter()
                .take_while(|t| **t - times[i] < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    println!("load: busiest second {busiest} writes; busiest pod {most} writes");
    assert!(busiest <= 101, "{busiest} writes within one second");

    // Flat memory: once the bounded structures are full (the gRPC API's ring of 4096
    // diagnoses fills after 82 s at this rate), the resident set stops growing.
    let samples = samples.lock().unwrap();
    let end = samples.last().unwrap().0;
    let max_in = |from: f64, to: f64| {
        samples
            .iter()
            .filter(|s| s.0 > end * from && s.0 <= end * to)
            .map(|s| s.1)
            .max()
            .unwrap_or(0)
    };
    let deciles: Vec<String> = (1..=10)
        .map(|d| max_in(f64::from(d - 1) / 10.0, f64::from(d) / 10.0).to_string())
        .collect();
    println!(
        "load: RSS max per tenth of the run (KiB): {}",
        deciles.join(" ")
    );
    let (settled, last) = (max_in(0.5, 0.75), max_in(0.75, 1.0));
    assert!(
        last <= settled + 2048,
        "memory grew from {settled} KiB to {last} KiB in the last quarter"
    );
}
