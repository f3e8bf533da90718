//! Footprint, side by side with Debian's prometheus-node-exporter on the same machine:
//! resident memory and CPU of each process while idle, then under churn — containers
//! started on a private containerd and failing with `exec format error` continuously.
//! Both are scraped every 15 s, as Prometheus would.
//!
//! Run: `cargo bench --bench footprint` (as root; ARCHWATCH_IDLE_SECS default 60,
//! ARCHWATCH_CHURN_SECS default 300).

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Proc {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
}

#[derive(Default, Clone, Copy)]
struct Sample {
    rss_kib: u64,
    cpu_seconds: f64,
}

fn sample(pid: u32) -> Sample {
    let pid = pid.to_string();
    Sample {
        rss_kib: support::status_kib(&pid, "VmRSS:"),
        cpu_seconds: support::cpu_seconds(&pid),
    }
}

struct Phase {
    rss_mean: f64,
    rss_max: u64,
    cpu_percent: f64,
}

/// Samples every process once a second for `secs`, scraping every 15 s, while `work` runs
/// between samples.
fn measure(procs: &[Proc], secs: u64, mut work: impl FnMut()) -> Vec<Phase> {
    let start = Instant::now();
    let first: Vec<Sample> = procs.iter().map(|p| sample(p.child.id())).collect();
    let mut rss: Vec<Vec<u64>> = vec![Vec::new(); procs.len()];
    let mut next_sample = Instant::now();
    let mut next_scrape = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if Instant::now() >= next_scrape {
            for p in procs {
                support::scrape(p.addr);
            }
            next_scrape += Duration::from_secs(15);
        }
        if Instant::now() >= next_sample {
            for (i, p) in procs.iter().enumerate() {
                rss[i].push(sample(p.child.id()).rss_kib);
            }
            next_sample += Duration::from_secs(1);
        }
        work();
    }
    let wall = start.elapsed().as_secs_f64();
    procs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let last = sample(p.child.id());
            let r = &rss[i];
            Phase {
                rss_mean: r.iter().sum::<u64>() as f64 / r.len().max(1) as f64,
                rss_max: r.iter().copied().max().unwrap_or(0),
                cpu_percent: (last.cpu_seconds - first[i].cpu_seconds) / wall * 100.0,
            }
        })
        .collect()
}

fn main() {
    let idle: u64 = support::env_or("ARCHWATCH_IDLE_SECS", 60);
    let churn: u64 = support::env_or("ARCHWATCH_CHURN_SECS", 300);
    let (mut ctd, work) = support::wrong_arch_lab();

    let agent_addr = support::free_port();
    let agent = Command::new(env!("CARGO_BIN_EXE_archwatch"))
        .args(["agent", "--kube", "off", "--api-socket"])
        .arg(work.path().join("api.sock"))
        .arg("--listen")
        .arg(agent_addr.to_string())
        .arg("--journal")
        .arg(work.path().join("journal.jsonl"))
        .arg("--address")
        .arg(&ctd.socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent");
    let ne_addr = support::free_port();
    let ne = Command::new("prometheus-node-exporter")
        .arg(format!("--web.listen-address={ne_addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus-node-exporter (scripts/install-deps installs it)");
    let mut procs = [
        Proc {
            name: "archwatch agent",
            child: agent,
            addr: agent_addr,
        },
        Proc {
            name: "prometheus-node-exporter",
            child: ne,
            addr: ne_addr,
        },
    ];
    std::thread::sleep(Duration::from_secs(3));
    println!(
        "footprint: scrape sizes: archwatch {} bytes, node_exporter {} bytes",
        support::scrape(agent_addr).len(),
        support::scrape(ne_addr).len()
    );

    let idle_phase = measure(&procs, idle, || {
        std::thread::sleep(Duration::from_millis(100))
    });
    let mut started = 0usize;
    let churn_phase = measure(&procs, churn, || {
        let id = format!("churn-{started}");
        let pod = format!("crashloop-{}", started % 110);
        let _ = ctd.run(
            "k8s.io",
            support::WRONG_ARCH,
            &id,
            &[
                ("io.kubernetes.pod.name", pod.as_str()),
                ("io.kubernetes.pod.namespace", "bench"),
                ("io.kubernetes.container.name", "app"),
            ],
            Duration::from_secs(30),
        );
        started += 1;
    });
    let diagnosed = std::fs::read_to_string(work.path().join("journal.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"kind\":\"exec_failure\""))
        .count();
    println!(
        "footprint: idle {idle} s, then {churn} s of churn: {started} containers started and failed ({:.1}/s), {diagnosed} diagnosed",
        started as f64 / churn as f64
    );
    for (i, p) in procs.iter().enumerate() {
        println!(
            "footprint: {:<25} idle RSS mean {:.1} MiB (max {:.1}), CPU {:.2} % of a core | churn RSS mean {:.1} MiB (max {:.1}), CPU {:.2} % of a core",
            p.name,
            idle_phase[i].rss_mean / 1024.0,
            idle_phase[i].rss_max as f64 / 1024.0,
            idle_phase[i].cpu_percent,
            churn_phase[i].rss_mean / 1024.0,
            churn_phase[i].rss_max as f64 / 1024.0,
            churn_phase[i].cpu_percent,
        );
    }
    for p in &mut procs {
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
}
