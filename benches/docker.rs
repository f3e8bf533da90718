//! Time to diagnosis on a real Docker Engine: N containers fail with `exec format error`;
//! for each, the time from Docker's `die` event (its `timeNano`, the journal's `exited_at`)
//! to the agent's journal line (`diagnosed_at`). Also the agent's resident memory.
//!
//! Run: `cargo bench --bench docker` (as root, with Debian's docker.io; N from
//! ARCHWATCH_BENCH_N, default 100).

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use archwatch::lab::docker::Dockerd;

fn main() {
    let n: usize = support::env_or("ARCHWATCH_BENCH_N", 100);
    let d = Dockerd::start().expect("private dockerd");
    let arm = support::fixture("busybox-arm64");
    d.build(
        "bench/wrong-arch:1",
        &[("bin/app", &arm, 0o755)],
        &[
            "COPY bin/app /bin/app",
            r#"ENTRYPOINT ["/bin/app", "true"]"#,
        ],
    )
    .expect("docker build");
    let work = tempfile::tempdir().expect("tempdir");
    let journal = work.path().join("journal.jsonl");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_archwatch"))
        .args([
            "agent",
            "--address",
            "off",
            "--kube",
            "off",
            "--listen",
            "off",
            "--api-socket",
            "off",
            "--docker-host",
        ])
        .arg(d.host())
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
        let run = d
            .run(&format!("c{i}"), "bench/wrong-arch:1", &[])
            .expect("docker run");
        assert_eq!(run.exit_code, Some(1), "{run:?}");
    }
    let churn = started.elapsed();
    let lines = support::journal_lines(&journal, "exec_failure", n, Duration::from_secs(30));
    let peak_rss = support::status_kib(&agent.id().to_string(), "VmHWM:");
    let _ = agent.kill();
    let _ = agent.wait();

    let ms = support::exit_to_journal_ms(&lines);
    println!(
        "docker: {} of {n} failing containers diagnosed ({:.1} s of docker run)",
        ms.len(),
        churn.as_secs_f64()
    );
    if !ms.is_empty() {
        let pct = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
        println!(
            "docker: die -> journal line: median {:.2} ms, p99 {:.2} ms, worst {:.2} ms",
            pct(0.5),
            pct(0.99),
            ms[ms.len() - 1]
        );
    }
    println!(
        "docker: agent RSS {:.1} MiB idle, {:.1} MiB peak",
        idle_rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0
    );
}
