//! What the exec tracer costs and how fast it reports, on this machine's kernel (as root):
//! - successful execs (`/bin/true` spawned and waited for, from one thread per core) with
//!   the tracer detached and attached, in alternating rounds: execs/s and the added cost per
//!   exec (the success path is one map update and one map delete);
//! - failed execs (an arm64 binary, ENOEXEC) the same way, with the per-cgroup limit lifted
//!   so that every failure is copied and sent: the added cost per failed exec;
//! - the kernel time the programs take per successful and per failed exec, from the kernel's
//!   BPF run-time statistics (turned on for that pass only, by BPF_ENABLE_STATS);
//! - the latency from a failing execve (the clock read just before the call) to its event
//!   in userspace (the reader's timestamp), sequential attempts: median and p99.
//!
//! Run: `cargo bench --bench exec_tracer` (ARCHWATCH_BENCH_SECS per round, default 3;
//! ARCHWATCH_BENCH_ROUNDS, default 3; ARCHWATCH_BENCH_FAILS for the latency, default 1000).
//! tracefs is mounted at /sys/kernel/tracing for the run when it is not already.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use archwatch::tracer::{enable_run_stats, ProgramStats, Tracer, TracerConfig};

/// Mounts tracefs for the bench when nothing is there, and unmounts it after.
struct Tracefs(bool);

impl Tracefs {
    fn ensure() -> Tracefs {
        let mounted = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
            .iter()
            .any(|p| {
                std::fs::read_dir(p)
                    .map(|mut d| d.next().is_some())
                    .unwrap_or(false)
            });
        if mounted {
            return Tracefs(false);
        }
        let ok = std::process::Command::new("mount")
            .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "mounting tracefs (run as root)");
        Tracefs(true)
    }
}

impl Drop for Tracefs {
    fn drop(&mut self) {
        if self.0 {
            let _ = std::process::Command::new("umount")
                .arg("/sys/kernel/tracing")
                .status();
        }
    }
}

/// Spawns `program` from `threads` threads for `secs`, waiting for each; returns execs/s.
fn exec_rate(program: &Path, threads: usize, secs: f64, expect_ok: bool) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (stop, count, program) = (stop.clone(), count.clone(), program.to_path_buf());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let r = std::process::Command::new(&program).status();
                    assert_eq!(r.is_ok(), expect_ok, "{r:?}");
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("exec thread");
    }
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median, lowest and highest.
struct Spread {
    median: f64,
    low: f64,
    high: f64,
}

fn spread(mut v: Vec<f64>) -> Spread {
    let median = median(&mut v);
    Spread {
        median,
        low: v[0],
        high: v[v.len() - 1],
    }
}

/// Alternating rounds, tracer off then on: execs/s each way, and the events delivered.
fn compare(
    rt: &tokio::runtime::Runtime,
    config: &TracerConfig,
    program: &Path,
    threads: usize,
    secs: f64,
    rounds: usize,
    expect_ok: bool,
) -> (Spread, Spread, u64) {
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let mut delivered = 0;
    for _ in 0..rounds {
        off.push(exec_rate(program, threads, secs, expect_ok));
        let tracer = rt
            .block_on(async { Tracer::start(config) })
            .expect("tracer");
        on.push(exec_rate(program, threads, secs, expect_ok));
        delivered += tracer.stats().map(|s| s.delivered).unwrap_or(0);
        drop(tracer);
    }
    (spread(off), spread(on), delivered)
}

fn main() {
    let secs: f64 = support::env_or("ARCHWATCH_BENCH_SECS", 3.0);
    let rounds: usize = support::env_or("ARCHWATCH_BENCH_ROUNDS", 3);
    let fails: usize = support::env_or("ARCHWATCH_BENCH_FAILS", 1000);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let _tracefs = Tracefs::ensure();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let arm: PathBuf = dir.path().join("arm-helper");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&arm, support::fixture("busybox-arm64")).expect("write");
        std::fs::set_permissions(&arm, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let per_exec_us = |rate: f64| threads as f64 / rate * 1e6;

    let (off, on, _) = compare(
        &rt,
        &TracerConfig::default(),
        Path::new("/bin/true"),
        threads,
        secs,
        rounds,
        true,
    );
    println!(
        "successful execs (/bin/true spawned and waited for, {threads} threads, {rounds} rounds of {secs} s each way): tracer off {:.0}/s ({:.0}-{:.0}), on {:.0}/s ({:.0}-{:.0}); wall time per exec {:.1} µs off, {:.1} µs on: {:+.1} µs ({:+.1} %)",
        off.median, off.low, off.high, on.median, on.low, on.high,
        per_exec_us(off.median),
        per_exec_us(on.median),
        per_exec_us(on.median) - per_exec_us(off.median),
        (off.median / on.median - 1.0) * 100.0
    );

    let unlimited = TracerConfig {
        rate_per_sec: 1_000_000,
        burst: 1_000_000,
        channel: 1 << 16,
        ..TracerConfig::default()
    };
    let (off, on, delivered) = compare(&rt, &unlimited, &arm, threads, secs, rounds, false);
    println!(
        "failed execs (ENOEXEC, {threads} threads, limit lifted: every one copied and sent, {delivered} events delivered): tracer off {:.0}/s ({:.0}-{:.0}), on {:.0}/s ({:.0}-{:.0}); wall time per failed exec {:.1} µs off, {:.1} µs on: {:+.1} µs ({:+.1} %)",
        off.median, off.low, off.high, on.median, on.low, on.high,
        per_exec_us(off.median),
        per_exec_us(on.median),
        per_exec_us(on.median) - per_exec_us(off.median),
        (off.median / on.median - 1.0) * 100.0
    );

    // The programs' own kernel time, from the kernel's BPF run-time statistics.
    {
        let tracer = rt
            .block_on(async { Tracer::start(&unlimited) })
            .expect("tracer");
        let _stats_on = enable_run_stats().expect("BPF_ENABLE_STATS");
        let per_run = |tracer: &Tracer, before: &[ProgramStats], prog: &str| {
            let now = tracer.program_stats().expect("program stats");
            let (a, b) = (
                before.iter().find(|p| p.program == prog).expect("program"),
                now.iter().find(|p| p.program == prog).expect("program"),
            );
            let runs = b.runs - a.runs;
            let ns = (b.run_time - a.run_time).as_nanos() as f64 / runs.max(1) as f64;
            (runs, ns)
        };
        let before = tracer.program_stats().expect("program stats");
        exec_rate(Path::new("/bin/true"), threads, secs, true);
        let (runs, enter) = per_run(&tracer, &before, "enter_execve");
        let (_, exit) = per_run(&tracer, &before, "exit_execve");
        println!(
            "kernel time in the tracer's programs per successful exec: {:.0} ns (enter {enter:.0} ns + exit {exit:.0} ns, {runs} execs)",
            enter + exit
        );
        let before = tracer.program_stats().expect("program stats");
        exec_rate(&arm, threads, secs, false);
        let (runs, enter) = per_run(&tracer, &before, "enter_execve");
        let (_, exit) = per_run(&tracer, &before, "exit_execve");
        println!(
            "kernel time in the tracer's programs per failed exec, every one reported: {:.0} ns (enter {enter:.0} ns + exit {exit:.0} ns, {runs} execs)",
            enter + exit
        );
    }

    // Latency: one failing exec at a time, each waited for.
    let mut tracer = rt
        .block_on(async { Tracer::start(&unlimited) })
        .expect("tracer");
    let mut lat: Vec<f64> = Vec::with_capacity(fails);
    for _ in 0..fails {
        let before = SystemTime::now();
        let r = std::process::Command::new(&arm).spawn();
        assert!(r.is_err(), "the arm64 binary must fail here");
        let ev = rt.block_on(async {
            loop {
                match tokio::time::timeout(Duration::from_secs(5), tracer.recv()).await {
                    Ok(Some(e)) if e.path == arm => return e,
                    Ok(Some(_)) => continue,
                    _ => panic!("no event for a failed exec within 5 s"),
                }
            }
        });
        let d = ev.at.duration_since(before).unwrap_or_default();
        lat.push(d.as_secs_f64() * 1e6);
    }
    lat.sort_by(f64::total_cmp);
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    let stats = tracer.stats().expect("stats");
    println!(
        "failed execve → event in userspace ({fails} sequential): median {:.0} µs, p99 {:.0} µs, max {:.0} µs; dropped: {} rate-limited, {} ring full, {} channel full",
        p(0.5),
        p(0.99),
        lat[lat.len() - 1],
        stats.rate_limited,
        stats.ring_full,
        stats.channel_full
    );
    drop(tracer);
    agent_latency(dir.path());
}

/// The whole agent with its tracer, against a lab containerd: a running container runs an
/// arm64 helper every 600 ms (within the agent's per-container limit); for each failed exec,
/// the time from the tracer's reading it (the journal's `exited_at`) to its `exec_error`
/// journal line (`diagnosed_at`): attribution, the judgement in the process's root, and the
/// report.
fn agent_latency(work: &Path) {
    use archwatch::oci::{ImageSpec, Item, Layer, Layout};
    let n: usize = support::env_or("ARCHWATCH_BENCH_AGENT_FAILS", 30);
    let mut ctd = archwatch::lab::Containerd::start().expect("containerd");
    let mut l = Layout::new();
    let m = l
        .add_image(&ImageSpec::new(
            "amd64",
            &["/bin/sh"],
            vec![Layer(vec![
                Item::file("/bin/busybox", support::fixture("busybox-amd64"), 0o755),
                Item::symlink("/bin/sh", "busybox"),
                Item::symlink("/bin/sleep", "busybox"),
                Item::file("/arm-helper", support::fixture("busybox-arm64"), 0o755),
            ])],
        ))
        .expect("image");
    l.tag("bench/probe:1", &m);
    let archive = work.join("probe.tar");
    l.write_archive(&archive).expect("archive");
    ctd.import("k8s.io", &archive).expect("import");
    let journal = work.join("journal.jsonl");
    let mut agent = std::process::Command::new(env!("CARGO_BIN_EXE_archwatch"))
        .args([
            "agent",
            "--exec-tracer",
            "on",
            "--kube",
            "off",
            "--listen",
            "off",
            "--api-socket",
            "off",
            "--address",
        ])
        .arg(&ctd.socket)
        .arg("--journal")
        .arg(&journal)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("agent");
    std::thread::sleep(Duration::from_secs(2));
    let out = ctd
        .ctr_ns(
            "k8s.io",
            &[
                "run",
                "-d",
                "bench/probe:1",
                "probe",
                "/bin/sh",
                "-c",
                "while true; do /arm-helper; sleep 0.6; done",
            ],
        )
        .expect("ctr run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = support::journal_lines(
        &journal,
        "exec_error",
        n,
        Duration::from_secs(n as u64 + 30),
    );
    let _ = ctd.ctr_ns("k8s.io", &["tasks", "kill", "-s", "SIGKILL", "probe"]);
    let _ = agent.kill();
    let _ = agent.wait();
    // `exited_at` of an exec error is when the tracer read it.
    let ms = support::exit_to_journal_ms(&lines);
    if ms.is_empty() {
        println!("agent: no exec_error line within the deadline");
        return;
    }
    let p = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "agent: failed exec read by the tracer → exec_error journal line ({} of {n}, judged in the process's root): median {:.2} ms, p99 {:.2} ms, worst {:.2} ms",
        ms.len(),
        p(0.5),
        p(0.99),
        ms[ms.len() - 1]
    );
}
