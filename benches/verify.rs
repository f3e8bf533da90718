//! `archwatch verify` on a two-platform image (linux/amd64, linux/arm64) with a large lower
//! layer, side by side with the playbook it replaces on the same OCI layout: per platform,
//! `skopeo copy --override-arch` out of the index, `umoci unpack`, `file` on the entrypoint.
//!
//! Run: `cargo bench --bench verify` (as root; ARCHWATCH_BENCH_LOWER_MIB, default 256, is
//! the size of the incompressible lower layer; ARCHWATCH_BENCH_RUNS, default 5).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use archwatch::oci::{ImageSpec, Item, Layer, Layout};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Incompressible bytes (xorshift), so the layer is as large on the wire as on disk.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The playbook for one platform; returns what `file` says of the entrypoint.
fn playbook(layout: &Path, scratch: &Path, arch: &str) -> String {
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch).expect("scratch");
    let img = scratch.join("img");
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--override-arch", arch])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("oci:{}:{arch}", img.display())));
    let bundle = scratch.join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{arch}", img.display()))
        .arg(&bundle));
    run(Command::new("file")
        .arg("-b")
        .arg(bundle.join("rootfs/bin/busybox")))
}

fn main() {
    let mib: usize = support::env_or("ARCHWATCH_BENCH_LOWER_MIB", 256);
    let runs: usize = support::env_or("ARCHWATCH_BENCH_RUNS", 5);
    let work = tempfile::tempdir().expect("tempdir");
    let lower = Layer(vec![Item::file("/opt/model.bin", noise(mib << 20), 0o644)]);
    let mut l = Layout::new();
    let images = [("amd64", "busybox-amd64"), ("arm64", "busybox-arm64")]
        .iter()
        .map(|(arch, fixture)| {
            let top = Layer(vec![Item::file(
                "/bin/busybox",
                support::fixture(fixture),
                0o755,
            )]);
            l.add_image(&ImageSpec::new(
                arch,
                &["/bin/busybox", "true"],
                vec![lower.clone(), top],
            ))
            .expect("image")
        })
        .collect();
    let idx = l.add_index(images).expect("index");
    l.tag("bench.example/app:v1", &idx);
    let layout = work.path().join("layout");
    l.write_dir(&layout).expect("layout");

    let mut verify = Vec::new();
    let mut entry_only = Vec::new();
    let mut manual = Vec::new();
    let mut bytes = (0u64, 0u64);
    let blob_bytes = |v: &serde_json::Value| -> u64 {
        v["platforms"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| p["blob_bytes_read"].as_u64())
                    .sum()
            })
            .unwrap_or(0)
    };
    for _ in 0..runs {
        let t = Instant::now();
        let out = run(Command::new(env!("CARGO_BIN_EXE_archwatch"))
            .arg("verify")
            .arg(&layout)
            .args(["--json", "--require-platforms", "linux/amd64,linux/arm64"]));
        verify.push(t.elapsed());
        let v: serde_json::Value = serde_json::from_str(&out).expect("verify --json");
        assert_eq!(v["platforms"].as_array().map(Vec::len), Some(2), "{v:#}");
        bytes.0 = blob_bytes(&v);

        // Only the entrypoint's paths: the census of PATH left out.
        let t = Instant::now();
        let out = run(Command::new(env!("CARGO_BIN_EXE_archwatch"))
            .arg("verify")
            .arg(&layout)
            .args([
                "--json",
                "--no-census",
                "--require-platforms",
                "linux/amd64,linux/arm64",
            ]));
        entry_only.push(t.elapsed());
        let v: serde_json::Value = serde_json::from_str(&out).expect("verify --json");
        assert_eq!(v["ok"], true, "{v:#}");
        bytes.1 = blob_bytes(&v);

        let t = Instant::now();
        let said: Vec<String> = ["amd64", "arm64"]
            .iter()
            .map(|a| playbook(&layout, &work.path().join("playbook"), a))
            .collect();
        manual.push(t.elapsed());
        assert!(said[0].contains("x86-64"), "{said:?}");
        assert!(said[1].contains("aarch64"), "{said:?}");
    }
    let (v, e, m) = (median(verify), median(entry_only), median(manual));
    println!(
        "verify: 2 platforms, each a {mib} MiB lower layer + the busybox layer; median of {runs}"
    );
    println!(
        "verify: archwatch verify {:.0} ms; skopeo copy + umoci unpack + file per platform {:.0} ms: the playbook takes {:.1}x the time",
        v.as_secs_f64() * 1000.0,
        m.as_secs_f64() * 1000.0,
        m.as_secs_f64() / v.as_secs_f64()
    );
    println!(
        "verify: blob bytes read {} (with the census of PATH), {} in {:.0} ms with --no-census (the entrypoint's paths only)",
        bytes.0,
        bytes.1,
        e.as_secs_f64() * 1000.0
    );
}
