//! What the benches share: settings from the environment, the fixtures, a private containerd
//! holding one wrong-arch image, and readings of /proc.
#![allow(dead_code)]

use archwatch::lab::Containerd;
use archwatch::oci::{ImageSpec, Item, Layer, Layout};

/// An arm64 busybox image: every container of it fails with `exec format error` here.
pub const WRONG_ARCH: &str = "bench.example/wrong-arch:v1";

/// `name` from the environment, else `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A file of the fixtures `scripts/fixtures` fetches.
pub fn fixture(name: &str) -> Vec<u8> {
    let dir = std::env::var("ARCHWATCH_FIXTURES")
        .unwrap_or_else(|_| "/var/cache/archwatch-fixtures".into());
    std::fs::read(format!("{dir}/{name}")).expect("run scripts/fixtures first")
}

/// A private containerd with [`WRONG_ARCH`] imported into `k8s.io`, and a work directory.
pub fn wrong_arch_lab() -> (Containerd, tempfile::TempDir) {
    let mut ctd = Containerd::start().expect("containerd");
    let work = tempfile::tempdir().expect("tempdir");
    let mut l = Layout::new();
    let m = l
        .add_image(&ImageSpec::new(
            "arm64",
            &["/bin/busybox", "true"],
            vec![Layer(vec![Item::file(
                "/bin/busybox",
                fixture("busybox-arm64"),
                0o755,
            )])],
        ))
        .expect("image");
    l.tag(WRONG_ARCH, &m);
    let archive = work.path().join("img.tar");
    l.write_archive(&archive).expect("archive");
    ctd.import("k8s.io", &archive).expect("import");
    (ctd, work)
}

/// A `KiB` field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`); `pid` may be `self`.
pub fn status_kib(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of `pid` (`self` allowed), in seconds.
pub fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0
}

/// A loopback address nothing listens on yet.
pub fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// `GET /metrics` from `addr` as Prometheus would; the whole response, empty when refused.
pub fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The journal's lines of `kind`, once there are `n` of them or `timeout` has passed.
pub fn journal_lines(
    journal: &std::path::Path,
    kind: &str,
    n: usize,
    timeout: std::time::Duration,
) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(journal)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|l: &serde_json::Value| l["kind"] == kind)
            .collect();
        if lines.len() >= n || std::time::Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Milliseconds from each line's `exited_at` to its `diagnosed_at`, sorted.
pub fn exit_to_journal_ms(lines: &[serde_json::Value]) -> Vec<f64> {
    let mut ms: Vec<f64> = lines
        .iter()
        .filter_map(|l| {
            let exited = chrono::DateTime::parse_from_rfc3339(l["exited_at"].as_str()?).ok()?;
            let diagnosed =
                chrono::DateTime::parse_from_rfc3339(l["diagnosed_at"].as_str()?).ok()?;
            Some((diagnosed - exited).num_microseconds()? as f64 / 1000.0)
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    ms
}
