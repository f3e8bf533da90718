//! Inspection cost: `inspect()` over a 20-layer overlay stack holding a real dynamic binary
//! (this machine's /usr/bin/true and its loader), a symlinked entrypoint, whiteouts and an
//! opaque directory. Prints the median and p99 time per inspection and the bytes read.
//!
//! Run: `cargo bench --bench inspect`

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use archwatch::binfmt::Table;
use archwatch::inspect::{inspect, Context, Request};
use archwatch::platform::Node;
use archwatch::rootfs::Rootfs;

const LAYERS: usize = 20;
const ITERATIONS: usize = 5000;

fn put(layer: &Path, rel: &str, bytes: &[u8], mode: u32) {
    let p = layer.join(rel);
    fs::create_dir_all(p.parent().expect("has parent")).expect("mkdir");
    fs::write(&p, bytes).expect("write");
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut layers = Vec::new();
    for i in 0..LAYERS {
        let l = dir.path().join(format!("l{i:02}"));
        fs::create_dir_all(l.join("usr/bin")).expect("mkdir");
        // Filler: every layer carries files, so lookups walk real directories.
        for f in 0..50 {
            put(
                &l,
                &format!("usr/share/doc/pkg{i}/file{f}"),
                b"filler",
                0o644,
            );
        }
        layers.push(l);
    }
    let host_true = fs::read("/usr/bin/true").expect("/usr/bin/true");
    let loader = fs::canonicalize("/lib64/ld-linux-x86-64.so.2").expect("host loader");
    let loader_bytes = fs::read(&loader).expect("read loader");
    // Bottom layer: the binary; a middle layer: the loader; top layer: the entrypoint symlink.
    put(&layers[LAYERS - 1], "usr/bin/app", &host_true, 0o755);
    put(
        &layers[LAYERS / 2],
        "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        &loader_bytes,
        0o755,
    );
    fs::create_dir_all(layers[LAYERS / 2].join("lib64")).expect("mkdir");
    symlink(
        "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        layers[LAYERS / 2].join("lib64/ld-linux-x86-64.so.2"),
    )
    .expect("symlink");
    symlink("/usr/bin/app", layers[0].join("entrypoint")).expect("symlink");
    put(&layers[3], "usr/share/doc/.wh.pkg19", b"", 0o644);
    put(&layers[5], "usr/share/doc/pkg18/.wh..wh..opq", b"", 0o644);

    let root = Rootfs::new(layers.clone()).expect("rootfs");
    let node = Node::detect();
    let table = Table::empty();
    let argv = vec!["entrypoint".to_string()];
    let req = Request {
        argv: &argv,
        path_env: Some("/usr/bin:/"),
        cwd: "/",
        claimed_arch: None,
    };
    let ctx = Context {
        node: &node,
        binfmt: &table,
    };

    let first = inspect(&root, &req, ctx).expect("inspect");
    let mut times: Vec<Duration> = Vec::with_capacity(ITERATIONS);
    for _ in 0..ITERATIONS {
        let t = Instant::now();
        let r = inspect(&root, &req, ctx).expect("inspect");
        times.push(t.elapsed());
        std::hint::black_box(r);
    }
    times.sort();
    let median = times[ITERATIONS / 2];
    let p99 = times[ITERATIONS * 99 / 100];
    println!(
        "inspect: {LAYERS}-layer stack, verdict {}, {} files in chain",
        first.verdict,
        first.chain.len()
    );
    println!(
        "inspect: median {:.1} us, p99 {:.1} us over {ITERATIONS} runs",
        median.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    );
    println!(
        "inspect: {} bytes read per inspection (binary {} bytes, loader {} bytes)",
        first.bytes_read,
        host_true.len(),
        loader_bytes.len()
    );
}
