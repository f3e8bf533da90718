//! Inspection cost: `inspect()` over a 20-layer overlay stack holding a real dynamic binary
//! (this machine's /usr/bin/true and its loader), a symlinked entrypoint, whiteouts and an
//! opaque directory. Prints the median and p99 time per inspection and the bytes read.
//!
//! Then the same 20 layers as an image in a private containerd, side by side: the
//! `archwatch inspect` command (`--layers` over the directories, `--image` through a
//! snapshot view) against the manual playbook (`ctr image mount`, `file`, `readelf -h -l`,
//! `ctr image unmount`), each run as the processes an SRE would start.
//!
//! Run: `cargo bench --bench inspect` (as root, for containerd).

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use archwatch::binfmt::Table;
use archwatch::inspect::{inspect, Context, Request};
use archwatch::oci::{ImageSpec, Item, Layer, Layout};
use archwatch::platform::Node;
use archwatch::rootfs::Rootfs;

const LAYERS: usize = 20;
const ITERATIONS: usize = 5000;
const COMMAND_RUNS: usize = 30;
const IMAGE: &str = "bench.example/twenty-layers:v1";

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn median_of(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The same tree as the layer directories, as image layers.
fn as_image_layer(dir: &Path) -> Layer {
    let mut items = Vec::new();
    for e in walk(dir) {
        let rel = format!("/{}", e.strip_prefix(dir).unwrap().display());
        let m = fs::symlink_metadata(&e).unwrap();
        if m.file_type().is_symlink() {
            let t = fs::read_link(&e).unwrap();
            items.push(Item::symlink(&rel, &t.to_string_lossy()));
        } else if m.is_file() {
            items.push(Item::file(
                &rel,
                fs::read(&e).unwrap(),
                m.permissions().mode() & 0o7777,
            ));
        }
    }
    Layer(items)
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

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
        user: None,
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

    // The same stack through the command line, and as an image in containerd.
    let bin = env!("CARGO_BIN_EXE_archwatch");
    let joined = layers
        .iter()
        .map(|l| l.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let layers_cmd = || {
        let mut c = Command::new(bin);
        c.args([
            "inspect",
            "--layers",
            &joined,
            "--env",
            "PATH=/usr/bin:/",
            "--",
            "entrypoint",
        ]);
        c
    };
    assert!(sh(&mut layers_cmd()).contains("ok"));
    let t_layers = median_of(
        (0..COMMAND_RUNS)
            .map(|_| {
                let t = Instant::now();
                sh(&mut layers_cmd());
                t.elapsed()
            })
            .collect(),
    );

    let mut ctd = archwatch::lab::Containerd::start().expect("containerd");
    let mut l = Layout::new();
    // Image layers are bottom first; the stack is top first.
    let image_layers: Vec<Layer> = layers.iter().rev().map(|d| as_image_layer(d)).collect();
    let m = l
        .add_image(&ImageSpec::new(
            node.arch.oci_architecture(),
            &["/entrypoint"],
            image_layers,
        ))
        .expect("image");
    l.tag(IMAGE, &m);
    let archive = dir.path().join("image.tar");
    l.write_archive(&archive).expect("archive");
    ctd.import("bench", &archive).expect("import");
    let image_cmd = || {
        let mut c = Command::new(bin);
        c.args([
            "inspect",
            "--image",
            IMAGE,
            "--namespace",
            "bench",
            "--address",
        ])
        .arg(&ctd.socket);
        c
    };
    assert!(sh(&mut image_cmd()).contains("ok"));
    let t_image = median_of(
        (0..COMMAND_RUNS)
            .map(|_| {
                let t = Instant::now();
                sh(&mut image_cmd());
                t.elapsed()
            })
            .collect(),
    );

    // The playbook: mount the image, find the binary, ask `file` and `readelf`, unmount.
    let mnt = dir.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let ctr = |args: &[&str]| {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(&ctd.socket)
            .args(["--namespace", "bench"])
            .args(args);
        c
    };
    let playbook = || {
        let t = Instant::now();
        sh(ctr(&["image", "mount", IMAGE]).arg(&mnt));
        // /entrypoint -> /usr/bin/app: absolute, so resolve it by hand under the mount.
        let target = fs::read_link(mnt.join("entrypoint")).unwrap();
        let app = mnt.join(target.strip_prefix("/").unwrap());
        let file = sh(Command::new("file").arg(&app));
        let elf = sh(Command::new("readelf").args(["-h", "-l"]).arg(&app));
        sh(ctr(&["image", "unmount"]).arg(&mnt));
        assert!(file.contains("ELF") && elf.contains("Requesting program interpreter"));
        t.elapsed()
    };
    let t_playbook = median_of((0..COMMAND_RUNS).map(|_| playbook()).collect());
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "inspect: command line, median of {COMMAND_RUNS}: archwatch inspect --layers {:.1} ms, archwatch inspect --image {:.1} ms, playbook (ctr image mount + file + readelf + unmount) {:.1} ms",
        ms(t_layers),
        ms(t_image),
        ms(t_playbook)
    );
    println!(
        "inspect: the playbook takes {:.1}x the time of inspect --layers and {:.1}x that of inspect --image",
        t_playbook.as_secs_f64() / t_layers.as_secs_f64(),
        t_playbook.as_secs_f64() / t_image.as_secs_f64()
    );
}
