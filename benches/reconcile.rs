//! A reconcile of many images, and a binfmt_misc change that judges them all again: how long
//! the agent takes and how many files it holds open meanwhile.
//!
//! ARCHWATCH_BENCH_IMAGES distinct arm64 images (default 1,000; one shared busybox layer and
//! one tiny layer of its own each, imported in batches of 100) are in a private containerd
//! before the agent starts. The agent reads a temp `--binfmt-dir` with no handler, so every
//! image is `arch_mismatch`. Measured:
//! 1. from the agent's start to every image judged (`archwatch_images_inspected` sums to
//!    the count), and the peak of the agent's open descriptors (/proc/<pid>/fd, polled every
//!    2 ms) meanwhile;
//! 2. a qemu-aarch64 handler written into that dir (no machine-wide change): the time until
//!    every image is judged `emulated` again, and the peak of open descriptors meanwhile.
//!
//! ARCHWATCH_BIN runs another build of the agent (e.g. an earlier commit's) for comparison.
//!
//! Run: `cargo bench --bench reconcile` (as root, after scripts/fixtures).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use archwatch::lab::Containerd;
use archwatch::oci::{ImageSpec, Item, Layer, Layout};

const NS: &str = "k8s.io";
const BATCH: usize = 100;

/// The kernel's view of a qemu-user-static aarch64 registration, as binfmt_misc shows it.
const QEMU_AARCH64: &str = "enabled\ninterpreter /usr/bin/qemu-aarch64-static\nflags: F\noffset 0\nmagic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n";

fn import_images(ctd: &mut Containerd, work: &Path, n: usize) {
    let base = Layer(vec![Item::file(
        "/bin/busybox",
        support::fixture("busybox-arm64"),
        0o755,
    )]);
    let mut done = 0;
    while done < n {
        let mut l = Layout::new();
        for i in done..(done + BATCH).min(n) {
            let own = Layer(vec![Item::file(
                "/etc/image-id",
                format!("{i}\n").into_bytes(),
                0o644,
            )]);
            let m = l
                .add_image(&ImageSpec::new(
                    "arm64",
                    &["/bin/busybox", "true"],
                    vec![base.clone(), own],
                ))
                .expect("image");
            l.tag(&format!("bench.example/many/img-{i}:v1"), &m);
        }
        let archive = work.join(format!("batch-{done}.tar"));
        l.write_archive(&archive).expect("archive");
        ctd.import(NS, &archive).expect("import");
        let _ = std::fs::remove_file(&archive);
        done = (done + BATCH).min(n);
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Polls the agent's descriptors every 2 ms while `f` runs; the peak.
fn peak_fds_during<T>(pid: u32, f: impl FnOnce() -> T) -> (T, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicUsize::new(0));
    let poller = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(open_fds(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let out = f();
    stop.store(true, Ordering::Relaxed);
    let _ = poller.join();
    (out, peak.load(Ordering::Relaxed))
}

fn images_inspected(metrics: &str, verdict: Option<&str>) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("archwatch_images_inspected{"))
        .filter(|l| verdict.is_none_or(|v| l.contains(&format!("verdict=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn until(addr: std::net::SocketAddr, what: &str, limit: Duration, done: impl Fn(&str) -> bool) {
    let t = Instant::now();
    loop {
        if done(&support::scrape(addr)) {
            return;
        }
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn agent_binary() -> PathBuf {
    std::env::var_os("ARCHWATCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_archwatch")))
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let n: usize = support::env_or("ARCHWATCH_BENCH_IMAGES", 1000);
    let mut ctd = Containerd::start().expect("containerd");
    let work = tempfile::tempdir().expect("tempdir");
    let t = Instant::now();
    import_images(&mut ctd, work.path(), n);
    println!(
        "{n} images imported in {:.1} s (containerd {})",
        t.elapsed().as_secs_f64(),
        ctd.binaries().version_string()
    );

    let binfmt = work.path().join("binfmt_misc");
    std::fs::create_dir(&binfmt).expect("binfmt dir");
    std::fs::write(binfmt.join("status"), "enabled\n").expect("status");
    let addr = support::free_port();
    let limit = Duration::from_secs(600);
    let start = Instant::now();
    let agent = Agent(
        Command::new(agent_binary())
            .args(["agent", "--kube", "off", "--api-socket", "off"])
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--address")
            .arg(&ctd.socket)
            .arg("--binfmt-dir")
            .arg(&binfmt)
            .arg("--journal")
            .arg(work.path().join("journal.jsonl"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("agent"),
    );
    let pid = agent.0.id();
    let ((), peak_reconcile) = peak_fds_during(pid, || {
        until(addr, "every image judged", limit, |m| {
            images_inspected(m, None) >= n as f64
        })
    });
    let reconciled = start.elapsed();
    let m = support::scrape(addr);
    assert_eq!(
        images_inspected(&m, Some("arch_mismatch")),
        n as f64,
        "every image judged arch_mismatch"
    );
    std::thread::sleep(Duration::from_secs(1));
    let idle = open_fds(pid);

    // A handler appears: every image runs under emulation now.
    let changed = Instant::now();
    std::fs::write(binfmt.join("qemu-aarch64"), QEMU_AARCH64).expect("handler");
    let ((), peak_rejudge) = peak_fds_during(pid, || {
        until(addr, "every image judged again", limit, |m| {
            images_inspected(m, Some("emulated")) >= n as f64
        })
    });
    let rejudged = changed.elapsed();
    let rss = support::status_kib(&pid.to_string(), "VmHWM:");

    println!("agent: {}", agent_binary().display());
    println!(
        "reconcile of {n} images: all judged {:.2} s after the agent started; peak open fds {peak_reconcile}",
        reconciled.as_secs_f64()
    );
    println!(
        "binfmt change, {n} images judged again: {:.2} s after the change (the table is polled every 2 s); peak open fds {peak_rejudge}",
        rejudged.as_secs_f64()
    );
    println!("open fds when idle: {idle}; peak resident memory {rss} KiB");
}
