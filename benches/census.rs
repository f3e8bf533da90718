//! The cost of the census (every executable's header in PATH) on a real Debian tree: this
//! machine's own root, a Debian 12 installation, read as a one-layer container root with
//! runc's default PATH.
//!
//! Run: `cargo bench --bench census` (ARCHWATCH_BENCH_RUNS, default 30;
//! ARCHWATCH_BENCH_ROOT, default `/`).

use std::time::{Duration, Instant};

use archwatch::inspect::census::census;
use archwatch::platform::Node;
use archwatch::rootfs::Rootfs;

fn main() {
    let runs: usize = std::env::var("ARCHWATCH_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let root_dir = std::env::var("ARCHWATCH_BENCH_ROOT").unwrap_or_else(|_| "/".into());
    let node = Node::detect();
    let mut times: Vec<Duration> = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        // A new stack each run, as each inspection opens its own.
        let root = Rootfs::new(vec![root_dir.clone().into()]).expect("root");
        let t = Instant::now();
        let c = census(&root, None, &[], &node).expect("census");
        times.push(t.elapsed());
        last = Some(c);
    }
    let c = last.expect("at least one run");
    let first = times[0];
    times.sort();
    let median = times[times.len() / 2];
    let p90 = times[(times.len() * 9 / 10).min(times.len() - 1)];
    println!(
        "census of {root_dir} (runc's default PATH), {runs} runs: median {:.1} ms, p90 {:.1} ms, first {:.1} ms; {} executables, {} bytes read ({} per file), {} foreign{}",
        median.as_secs_f64() * 1e3,
        p90.as_secs_f64() * 1e3,
        first.as_secs_f64() * 1e3,
        c.files,
        c.bytes_read,
        c.bytes_read / c.files.max(1) as u64,
        c.foreign.len(),
        if c.capped { " (capped)" } else { "" }
    );
}
