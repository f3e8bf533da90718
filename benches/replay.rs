//! Event pipeline throughput: a containerd event stream recorded on a private containerd
//! (one `exec format error` container, one healthy container, one exec probe), scaled to a
//! node with 110 pods in CrashLoopBackOff and 30 exec-probed pods, replayed through the
//! whole agent (decode → identify → verdict cache → diagnose → metrics + journal) on one
//! core: a current-thread runtime.
//!
//! Run: `cargo bench --bench replay` (as root; ARCHWATCH_BENCH_ENVELOPES, default 100000).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use archwatch::agent::{Config, Feed, Replay};
use archwatch::replay::NodeTemplates;
use tokio_util::sync::CancellationToken;

fn main() {
    let total: usize = support::env_or("ARCHWATCH_BENCH_ENVELOPES", 100_000);
    let mut ctd = archwatch::lab::Containerd::start().expect("containerd");
    let t = NodeTemplates::record(
        &mut ctd,
        support::fixture("busybox-arm64"),
        support::fixture("busybox-amd64"),
    )
    .expect("record");
    drop(ctd);
    println!(
        "replay: recorded {} + {} + {} envelopes (crash, healthy start, exec probe)",
        t.crash.envelopes.len(),
        t.host.envelopes.len(),
        t.probe.envelopes.len()
    );
    let s = t
        .stream(110, 30, total, chrono::Duration::seconds(10))
        .expect("stream");
    let work = tempfile::tempdir().expect("tempdir");
    let journal = work.path().join("journal.jsonl");
    let cfg = Config {
        address: Some(work.path().join("no-containerd.sock")),
        docker_host: None,
        docker_timeout: std::time::Duration::from_secs(10),
        namespaces: Vec::new(),
        listen: None,
        node_name: "bench".into(),
        journal: Some(journal.clone()),
        journal_max_bytes: 1 << 30,
        binfmt_dir: work.path().join("no-binfmt"),
        node: archwatch::platform::Node::detect(),
        snapshotter: "overlayfs".into(),
        inspect_timeout: Duration::from_secs(5),
        windows: archwatch::pipeline::Windows::default(),
        kube: "off".into(),
        kube_queue: 1000,
        kubeconfig: None,
        view_lease_ttl: archwatch::containerd::LEASE_TTL,
        api_socket: None,
        proc_dir: work.path().join("no-proc"),
        unhealthy_after: std::time::Duration::from_secs(120),
        kube_request_timeout: archwatch::sinks::kube_events::REQUEST_TIMEOUT,
        exec_tracer: archwatch::tracer::TracerMode::Off,
        cgroup_dir: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let envelopes = s.envelopes.len();
    let rss_before = support::status_kib("self", "VmRSS:");
    let samples = Arc::new(std::sync::Mutex::new(Vec::<(f64, u64)>::new()));
    let sampler = {
        let samples = samples.clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        let h = std::thread::spawn(move || {
            let t0 = Instant::now();
            while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                samples.lock().unwrap().push((
                    t0.elapsed().as_secs_f64(),
                    support::status_kib("self", "VmRSS:"),
                ));
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        (stop, h)
    };
    let cpu0 = support::cpu_seconds("self");
    let stats = rt.block_on(async move {
        let (done, finished) = tokio::sync::oneshot::channel();
        let stop = CancellationToken::new();
        let replay = Replay {
            recording: Arc::new(s.recording),
            envelopes: s.envelopes,
            per_second: None,
            done,
        };
        let agent = tokio::spawn(archwatch::agent::run_fed(
            cfg,
            Feed::Replay(replay),
            stop.clone(),
            None,
        ));
        let stats = finished.await.expect("replay finished");
        stop.cancel();
        agent.await.expect("agent").expect("agent ran");
        stats
    });
    let cpu = support::cpu_seconds("self") - cpu0;
    sampler.0.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.1.join().unwrap();
    let diagnosed = std::fs::read_to_string(&journal)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"kind\":\"exec_failure\""))
        .count();
    let secs = stats.elapsed.as_secs_f64();
    println!(
        "replay: {envelopes} envelopes ({} decode errors) in {:.3} s = {:.0} envelopes/s on one core ({:.2} s CPU)",
        stats.decode_errors,
        secs,
        envelopes as f64 / secs,
        cpu
    );
    println!(
        "replay: {diagnosed} exec failures journaled of {} complete crash lifecycles; {} exec probes",
        s.failures, s.probes
    );
    let samples = samples.lock().unwrap();
    let at = |q: f64| {
        let end = samples.last().map(|s| s.0).unwrap_or(0.0);
        samples
            .iter()
            .find(|s| s.0 >= end * q)
            .map(|s| s.1)
            .unwrap_or(0)
    };
    println!(
        "replay: RSS before {rss_before} KiB; at 25/50/75/100 % of the replay {} / {} / {} / {} KiB; peak {} KiB",
        at(0.25),
        at(0.5),
        at(0.75),
        at(1.0),
        support::status_kib("self", "VmHWM:")
    );
}
