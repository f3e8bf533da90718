//! How quickly the agent reflects a binfmt_misc change: a handler registered (then removed)
//! under a unique name while the agent runs; the time until `/metrics` shows it (then stops
//! showing it) in `archwatch_binfmt_handler_info`, polled every 5 ms.
//!
//! Run: `cargo bench --bench binfmt` (as root; mounts binfmt_misc if needed and removes
//! every handler it registers; ARCHWATCH_BENCH_RUNS, default 10).

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use archwatch::lab::{BinfmtHandler, BinfmtMount, Containerd};

/// The ELF identity of a riscv64 executable, as qemu-user-static registers it.
const MAGIC: &[u8] = b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xf3\x00";
const MASK: &[u8] =
    b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff";

/// Polls until `shown(metrics)` holds; the time it took.
fn until(addr: std::net::SocketAddr, shown: impl Fn(&str) -> bool) -> Duration {
    let t = Instant::now();
    while !shown(&support::scrape(addr)) {
        assert!(t.elapsed() < Duration::from_secs(30), "never reflected");
        std::thread::sleep(Duration::from_millis(5));
    }
    t.elapsed()
}

fn summary(mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "median {:.0} ms, worst {:.0} ms",
        v[v.len() / 2].as_secs_f64() * 1000.0,
        v[v.len() - 1].as_secs_f64() * 1000.0
    )
}

fn main() {
    let runs: usize = support::env_or("ARCHWATCH_BENCH_RUNS", 10);
    let _mount = BinfmtMount::ensure().expect("binfmt_misc");
    let ctd = Containerd::start().expect("containerd");
    let addr = support::free_port();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_archwatch"))
        .args(["agent", "--kube", "off", "--api-socket", "off", "--listen"])
        .arg(addr.to_string())
        .arg("--address")
        .arg(&ctd.socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent");
    until(addr, |m| m.contains("archwatch_containerd_connected 1"));

    let (mut added, mut removed) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let name = format!("archwatch-bench-{}-{i}", std::process::id());
        let label = format!("name=\"{name}\"");
        let h = BinfmtHandler::register(&name, MAGIC, MASK, "/usr/bin/qemu-riscv64-static", "")
            .expect("register");
        added.push(until(addr, |m| m.contains(&label)));
        // Seen just after a re-read: each change is made at a different point of the
        // agent's period (spread over 0–2 s), not always at the same phase.
        std::thread::sleep(Duration::from_millis((i as u64 * 613) % 2000));
        drop(h);
        removed.push(until(addr, |m| !m.contains(&label)));
        std::thread::sleep(Duration::from_millis((i as u64 * 397) % 2000));
    }
    let _ = agent.kill();
    let _ = agent.wait();
    println!("binfmt: {runs} handlers registered and removed while the agent runs");
    println!(
        "binfmt: registration shown in /metrics after {}",
        summary(added)
    );
    println!(
        "binfmt: removal shown in /metrics after {}",
        summary(removed)
    );
}
