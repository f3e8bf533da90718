//! Time to diagnosis on a real containerd: N containers fail with `exec format error`; for
//! each, the time from containerd's `/tasks/exit` timestamp (`exited_at`) to the agent's
//! journal line (`diagnosed_at`) and to the Kubernetes Event POST arriving at a local API
//! server. Also the agent's resident memory.
//!
//! Run: `cargo bench --bench diagnosis` (as root; N from ARCHWATCH_BENCH_N, default 200).

#[path = "../tests/integration/support/fake_api.rs"]
mod fake_api;
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let n: usize = support::env_or("ARCHWATCH_BENCH_N", 200);
    let (mut ctd, work) = support::wrong_arch_lab();

    let journal = work.path().join("journal.jsonl");
    let (api, url) = fake_api::FakeApi::start();
    let kubeconfig = work.path().join("kubeconfig");
    std::fs::write(&kubeconfig, fake_api::kubeconfig(&url)).expect("kubeconfig");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_archwatch"))
        .args([
            "agent",
            "--kube",
            "auto",
            "--listen",
            "off",
            "--api-socket",
            "off",
        ])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--address")
        .arg(&ctd.socket)
        .arg("--journal")
        .arg(&journal)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent");
    std::thread::sleep(Duration::from_secs(2));
    let idle_rss = support::status_kib(&agent.id().to_string(), "VmRSS:");

    let started = Instant::now();
    for i in 0..n {
        let labels = [
            ("io.kubernetes.pod.name", format!("crashloop-{i}")),
            ("io.kubernetes.pod.namespace", "bench".to_string()),
        ];
        let lbl: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        ctd.run(
            "k8s.io",
            support::WRONG_ARCH,
            &format!("c{i}"),
            &lbl,
            Duration::from_secs(30),
        )
        .expect("run");
    }
    let lines = support::journal_lines(&journal, "exec_failure", n, Duration::from_secs(30));
    // Events: wait for the publisher, then match each POST to its container's exit.
    let deadline = Instant::now() + Duration::from_secs(10);
    while api.requests().len() < lines.len().min(100) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let exits: std::collections::HashMap<String, chrono::DateTime<chrono::FixedOffset>> = lines
        .iter()
        .filter_map(|l| {
            Some((
                l["pod"].as_str()?.to_string(),
                chrono::DateTime::parse_from_rfc3339(l["exited_at"].as_str()?).ok()?,
            ))
        })
        .collect();
    let mut post_ms: Vec<f64> = api
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .filter_map(|r| {
            let exited = exits.get(r.body["regarding"]["name"].as_str()?)?;
            Some(
                (r.received - exited.with_timezone(&chrono::Utc)).num_microseconds()? as f64
                    / 1000.0,
            )
        })
        .collect();
    post_ms.sort_by(f64::total_cmp);
    let peak_rss = support::status_kib(&agent.id().to_string(), "VmHWM:");
    let _ = agent.kill();
    let _ = agent.wait();

    let ms = support::exit_to_journal_ms(&lines);
    let pct = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "diagnosis: {} of {n} failing containers diagnosed in {:.1} s of churn",
        ms.len(),
        started.elapsed().as_secs_f64()
    );
    if !ms.is_empty() {
        println!(
            "diagnosis: /tasks/exit -> journal line: median {:.2} ms, p99 {:.2} ms, worst {:.2} ms",
            pct(0.5),
            pct(0.99),
            ms[ms.len() - 1]
        );
    }
    if !post_ms.is_empty() {
        let p = |q: f64| post_ms[((post_ms.len() as f64 - 1.0) * q).round() as usize];
        println!(
            "diagnosis: /tasks/exit -> Event POST at the API server ({} Events; the node-wide limit of 100 + 1/s held back the rest): median {:.2} ms, p99 {:.2} ms, worst {:.2} ms",
            post_ms.len(),
            p(0.5),
            p(0.99),
            post_ms[post_ms.len() - 1]
        );
    }
    println!(
        "diagnosis: agent RSS idle {} KiB, peak {} KiB",
        idle_rss, peak_rss
    );
}
