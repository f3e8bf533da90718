//! Hostile images through the running agent: FIFO and device entrypoints, symlink loops,
//! symlinks aimed at host files, a malformed ELF with an absurd e_phnum, a 2 GiB sparse
//! binary, an entrypoint 10,000 directories deep. The agent never opens the host canary
//! (inotify proves it), never hangs or panics, diagnoses each, and goes on diagnosing the
//! next container.

use std::os::fd::AsFd;
use std::time::Duration;

use archwatch::oci::{ImageSpec, Item, Layer, Layout};
use rustix::fs::inotify;

use crate::support::{self, agent::Agent, containerd::Containerd};

const NS: &str = "k8s.io";

fn elf_header_with_phnum(phnum: u16) -> Vec<u8> {
    let mut h = support::busybox("amd64")[..4096].to_vec();
    h[56..58].copy_from_slice(&phnum.to_le_bytes());
    h
}

/// The unpacked snapshot directory holding `marker` (a file only that image has).
fn snapshot_with(ctd: &Containerd, marker: &str) -> std::path::PathBuf {
    let snaps = ctd
        .root()
        .join("io.containerd.snapshotter.v1.overlayfs/snapshots");
    std::fs::read_dir(&snaps)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("fs"))
        .find(|fs| fs.join(marker.trim_start_matches('/')).exists())
        .unwrap_or_else(|| panic!("no snapshot holds {marker}"))
}

#[test]
fn huge_and_deep_entrypoints_are_read_by_their_headers_only() {
    huge_and_deep_entrypoints(&[]);
}

/// The same, the agent resolving one `openat` per component: 10,000 directories still fit
/// the time budget.
#[test]
fn huge_and_deep_entrypoints_are_read_by_their_headers_only_under_the_openat_walk() {
    huge_and_deep_entrypoints(&[("ARCHWATCH_RESOLVER", std::path::Path::new("openat"))]);
}

fn huge_and_deep_entrypoints(env: &[(&str, &std::path::Path)]) {
    let _binfmt = support::binfmt_shared();
    let mut ctd = Containerd::start();
    let agent = Agent::start_with_env(&ctd.socket, &[], env);
    agent.wait_ready();
    resolver_as_asked(&agent, env);
    let work = tempfile::tempdir().unwrap();
    // The images carry placeholders; their unpacked snapshots are then edited in place into
    // what no image tar could carry cheaply: a 2 GiB sparse file, a 10,000-deep tree.
    let mut l = Layout::new();
    let sparse = l
        .add_image(&ImageSpec::new(
            "amd64",
            &["/app"],
            vec![Layer(vec![
                Item::file("/app", b"placeholder".to_vec(), 0o755),
                Item::file("/marker-sparse", b"".to_vec(), 0o644),
            ])],
        ))
        .unwrap();
    l.tag("archwatch.test/hostile-sparse:v1", &sparse);
    // /entry -> /d/…/d/s1 (2,000 deep) -> d/…/d/s2 … five hops down to depth 10,000.
    let hop = "d/".repeat(2000);
    let deep = l
        .add_image(&ImageSpec::new(
            "amd64",
            &["/entry"],
            vec![Layer(vec![
                Item::symlink("/entry", &format!("/{hop}s1")),
                Item::file("/marker-deep", b"".to_vec(), 0o644),
            ])],
        ))
        .unwrap();
    l.tag("archwatch.test/hostile-deep:v1", &deep);
    let p = work.path().join("huge.tar");
    l.write_archive(&p).unwrap();
    ctd.import(NS, &p);

    let arm64 = support::busybox("arm64");
    let fs = snapshot_with(&ctd, "/marker-sparse");
    let f = std::fs::File::create(fs.join("app")).unwrap();
    std::io::Write::write_all(&mut &f, &arm64[..4096]).unwrap();
    f.set_len(2 << 30).unwrap();
    drop(f);

    deepen(&snapshot_with(&ctd, "/marker-deep"), &hop, &arm64);

    for (pod, image) in [
        ("sparse", "archwatch.test/hostile-sparse:v1"),
        ("deep", "archwatch.test/hostile-deep:v1"),
    ] {
        run_kept(
            &ctd,
            image,
            &format!("{pod}-1"),
            &[
                ("io.kubernetes.pod.name", pod),
                ("io.kubernetes.pod.namespace", "hostile"),
            ],
        );
    }
    for pod in ["sparse", "deep"] {
        agent.wait_for(
            &format!("diagnosis of {pod}"),
            Duration::from_secs(30),
            || {
                agent
                    .lines()
                    .iter()
                    .any(|l| l["kind"] == "exec_failure" && l["pod"] == pod)
            },
        );
        let d = agent
            .lines()
            .into_iter()
            .find(|l| l["kind"] == "exec_failure" && l["pod"] == pod)
            .unwrap();
        assert_eq!(d["verdict"], "arch_mismatch", "{pod}: {d}");
        assert_eq!(d["binary_arch"], "arm64", "{pod}: {d}");
    }
    assert_eq!(
        agent.metric(
            "archwatch_inspection_errors_total",
            &[("kind", "inspection_timeout")]
        ),
        0.0
    );
    assert_eq!(agent.metric("archwatch_containerd_connected", &[]), 1.0);
}

/// The agent logged the resolver the environment forced, if it forced one.
fn resolver_as_asked(agent: &Agent, env: &[(&str, &std::path::Path)]) {
    for (k, v) in env {
        if *k == "ARCHWATCH_RESOLVER" {
            let said = format!("{k}={}", v.display());
            assert!(agent.log_text().contains(&said), "{}", agent.log_text());
        }
    }
}

/// `ctr run` without `--rm`: the failed container stays, like the kubelet keeps a dead one,
/// so a slow inspection is not cut short by its snapshot's removal (that case is
/// `snapshot_vanished`).
fn run_kept(ctd: &Containerd, image: &str, id: &str, labels: &[(&str, &str)]) {
    let mut args: Vec<String> = vec!["run".into()];
    args.extend(labels.iter().map(|(k, v)| format!("--label={k}={v}")));
    args.extend([image.to_string(), id.to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ctd.ctr_ns(NS, &args);
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{id} ran: {text}");
}

/// Turns the snapshot of an image whose `/entry` links to `/{hop}s1` into a chain of five
/// symlinks, each `hop` deeper, the last one the binary `bin`, 10,000 directories down.
fn deepen(fs: &std::path::Path, hop: &str, bin: &[u8]) {
    let mut at = rustix::fs::openat(
        rustix::fs::CWD,
        fs,
        rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    for i in 1..=5 {
        let below = dig_from(&at, 2000);
        let name = format!("s{i}");
        if i < 5 {
            rustix::fs::symlinkat(format!("{hop}s{}", i + 1), below.as_fd(), name.as_str())
                .unwrap();
        } else {
            let fd = rustix::fs::openat(
                below.as_fd(),
                name.as_str(),
                rustix::fs::OFlags::CREATE | rustix::fs::OFlags::WRONLY,
                rustix::fs::Mode::from_raw_mode(0o755),
            )
            .unwrap();
            rustix::io::write(&fd, bin).unwrap();
        }
        at = below;
    }
}

/// `depth` more `d` directories below the directory `from`, made with *at calls (the path
/// is far longer than PATH_MAX); returns the deepest one.
fn dig_from(from: &rustix::fd::OwnedFd, depth: usize) -> rustix::fd::OwnedFd {
    use rustix::fs::{mkdirat, openat, Mode, OFlags};
    let mut fd = from.try_clone().unwrap();
    for _ in 0..depth {
        let _ = mkdirat(fd.as_fd(), "d", Mode::from_raw_mode(0o755));
        fd = openat(
            fd.as_fd(),
            "d",
            OFlags::DIRECTORY | OFlags::RDONLY,
            Mode::empty(),
        )
        .unwrap();
    }
    fd
}

#[test]
fn hostile_images_are_diagnosed_without_reading_the_host() {
    hostile_images_diagnosed(&[]);
}

/// The same images, the agent resolving with one `openat` per component (as on a kernel
/// without openat2, or under a seccomp profile that refuses it).
#[test]
fn hostile_images_are_diagnosed_without_reading_the_host_under_the_openat_walk() {
    hostile_images_diagnosed(&[("ARCHWATCH_RESOLVER", std::path::Path::new("openat"))]);
}

fn hostile_images_diagnosed(env: &[(&str, &std::path::Path)]) {
    let _binfmt = support::binfmt_shared();
    let canary_dir = tempfile::tempdir().unwrap();
    let canary = canary_dir.path().join("canary");
    // Were it ever read, it would be an amd64 ELF that runs: verdict ok.
    std::fs::write(&canary, support::busybox("amd64")).unwrap();
    let canary_s = canary.to_str().unwrap().to_string();
    let ino =
        inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC).unwrap();
    inotify::add_watch(
        &ino,
        &canary,
        inotify::WatchFlags::OPEN | inotify::WatchFlags::ACCESS,
    )
    .unwrap();
    // Positive control: the watch sees a read of the canary.
    let _ = std::fs::read(&canary).unwrap();
    {
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        let mut reader = inotify::Reader::new(&ino, &mut buf);
        assert!(
            reader.next().is_ok(),
            "inotify reports an open of the canary"
        );
        while reader.next().is_ok() {}
    }

    let mut ctd = Containerd::start();
    let agent = Agent::start_with_env(&ctd.socket, &[], env);
    agent.wait_ready();
    resolver_as_asked(&agent, env);
    let work = tempfile::tempdir().unwrap();
    let bb = || Item::file("/bin/busybox", support::busybox("amd64"), 0o755);
    let up = format!("{}{}", "../".repeat(30), canary_s.trim_start_matches('/'));
    let canary_dir_s = canary_dir.path().to_str().unwrap().to_string();
    let cases: Vec<(&str, Vec<&str>, Vec<Item>, &str)> = vec![
        (
            "fifo",
            vec!["/app"],
            vec![
                bb(),
                Item::Fifo {
                    path: "/app".into(),
                    mode: 0o755,
                },
            ],
            "not_a_regular_file",
        ),
        (
            "chardev",
            vec!["/app"],
            vec![
                bb(),
                Item::CharDevice {
                    path: "/app".into(),
                    major: 1,
                    minor: 3,
                    mode: 0o755,
                },
            ],
            "not_a_regular_file",
        ),
        (
            "loop",
            vec!["/a"],
            vec![bb(), Item::symlink("/a", "/b"), Item::symlink("/b", "/a")],
            "symlink_loop",
        ),
        (
            "escape-abs",
            vec!["/app"],
            vec![bb(), Item::symlink("/app", &canary_s)],
            "not_found",
        ),
        (
            "escape-rel",
            vec!["/app"],
            vec![bb(), Item::symlink("/app", &up)],
            "not_found",
        ),
        (
            // A symlinked directory met mid-path, toward the canary's directory.
            "escape-dir",
            vec!["/opt/canary"],
            vec![bb(), Item::symlink("/opt", &canary_dir_s)],
            "not_found",
        ),
        (
            "escape-shebang",
            vec!["/run.sh"],
            vec![
                bb(),
                Item::symlink("/bin/sh", &canary_s),
                Item::file("/run.sh", b"#!/bin/sh\n".to_vec(), 0o755),
            ],
            "script_interpreter_missing",
        ),
        (
            "absurd-phnum",
            vec!["/app"],
            vec![
                bb(),
                Item::file("/app", elf_header_with_phnum(0xffff), 0o755),
            ],
            "unknown_format",
        ),
        (
            "truncated-elf",
            vec!["/app"],
            vec![
                bb(),
                Item::file("/app", support::busybox("amd64")[..20].to_vec(), 0o755),
            ],
            "unknown_format",
        ),
    ];
    for (name, argv, items, _) in &cases {
        let mut l = Layout::new();
        let m = l
            .add_image(&ImageSpec::new("amd64", argv, vec![Layer(items.clone())]))
            .unwrap();
        let tag = format!("archwatch.test/hostile-{name}:v1");
        l.tag(&tag, &m);
        let p = work.path().join(format!("{name}.tar"));
        l.write_archive(&p).unwrap();
        ctd.import(NS, &p);
        let _ = ctd.run(
            NS,
            &tag,
            &format!("{name}-1"),
            &[
                ("io.kubernetes.pod.name", name),
                ("io.kubernetes.pod.namespace", "hostile"),
            ],
            Duration::from_secs(30),
        );
    }
    for (name, _, _, want) in &cases {
        agent.wait_for(
            &format!("diagnosis of {name}"),
            Duration::from_secs(20),
            || {
                agent
                    .lines()
                    .iter()
                    .any(|l| l["kind"] == "exec_failure" && l["pod"] == *name)
            },
        );
        let d = agent
            .lines()
            .into_iter()
            .find(|l| l["kind"] == "exec_failure" && l["pod"] == *name)
            .unwrap();
        assert_eq!(d["verdict"], *want, "{name}: {d}");
    }
    // And it goes on: an ordinary failure right after.
    let mut l = Layout::new();
    let m = l
        .add_image(&ImageSpec::new(
            "arm64",
            &["/app"],
            vec![Layer(vec![Item::file(
                "/app",
                support::busybox("arm64"),
                0o755,
            )])],
        ))
        .unwrap();
    l.tag("archwatch.test/after:v1", &m);
    let p = work.path().join("after.tar");
    l.write_archive(&p).unwrap();
    ctd.import(NS, &p);
    let _ = ctd.run(
        NS,
        "archwatch.test/after:v1",
        "after-1",
        &[
            ("io.kubernetes.pod.name", "after"),
            ("io.kubernetes.pod.namespace", "hostile"),
        ],
        Duration::from_secs(30),
    );
    agent.wait_for("the next diagnosis", Duration::from_secs(20), || {
        agent
            .lines()
            .iter()
            .any(|l| l["pod"] == "after" && l["verdict"] == "arch_mismatch")
    });
    assert_eq!(
        agent.metric(
            "archwatch_inspection_errors_total",
            &[("kind", "inspection_panicked")]
        ),
        0.0
    );
    assert_eq!(
        agent.metric(
            "archwatch_inspection_errors_total",
            &[("kind", "inspection_timeout")]
        ),
        0.0
    );
    assert_eq!(agent.metric("archwatch_containerd_connected", &[]), 1.0);
    // The canary was never opened.
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
    let mut reader = inotify::Reader::new(&ino, &mut buf);
    match reader.next() {
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => {}
        Ok(ev) => panic!("the host canary was touched: {:?}", ev.events()),
        Err(e) => panic!("inotify: {e}"),
    }
}

#[test]
fn a_container_that_cannot_be_judged_in_time_is_named_in_the_journal() {
    let _binfmt = support::binfmt_shared();
    let mut ctd = Containerd::start();
    // 10,000 directory lookups do not fit in 1 ms.
    let agent = Agent::start(&ctd.socket, &["--inspect-timeout-ms", "1"]);
    agent.wait_ready();
    let work = tempfile::tempdir().unwrap();
    let hop = "d/".repeat(2000);
    let mut l = Layout::new();
    let m = l
        .add_image(&ImageSpec::new(
            "amd64",
            &["/entry"],
            vec![Layer(vec![
                Item::symlink("/entry", &format!("/{hop}s1")),
                Item::file("/marker-unjudged", b"".to_vec(), 0o644),
            ])],
        ))
        .unwrap();
    l.tag("archwatch.test/unjudged:v1", &m);
    let p = work.path().join("unjudged.tar");
    l.write_archive(&p).unwrap();
    ctd.import(NS, &p);
    deepen(
        &snapshot_with(&ctd, "/marker-unjudged"),
        &hop,
        &support::busybox("arm64"),
    );
    run_kept(
        &ctd,
        "archwatch.test/unjudged:v1",
        "unjudged-1",
        &[
            ("io.kubernetes.pod.name", "unjudged"),
            ("io.kubernetes.pod.namespace", "hostile"),
            ("io.kubernetes.container.name", "app"),
        ],
    );
    agent.wait_for("the inspection failure", Duration::from_secs(20), || {
        agent
            .lines()
            .iter()
            .any(|l| l["kind"] == "inspection_failed" && l["pod"] == "unjudged")
    });
    let lines = agent.lines();
    let r = lines
        .iter()
        .find(|l| l["kind"] == "inspection_failed" && l["pod"] == "unjudged")
        .unwrap();
    assert_eq!(r["error_kind"], "inspection_timeout", "{r}");
    // The budget stops the walk, not only the waiting: by the time the record is written,
    // nothing of the snapshot is held open any more.
    let snapshots = ctd.root().join("io.containerd.snapshotter.v1.overlayfs");
    let held: Vec<_> = agent
        .open_files()
        .into_iter()
        .filter(|p| p.starts_with(&snapshots))
        .collect();
    assert!(held.is_empty(), "still open after the budget: {held:?}");
    assert_eq!(r["pod_namespace"], "hostile", "{r}");
    assert_eq!(r["container"], "app", "{r}");
    assert_eq!(r["image"], "archwatch.test/unjudged:v1", "{r}");
    assert!(r["error"].as_str().unwrap().contains("1 ms"), "{r}");
    // Nothing is guessed: no verdict is made up for it.
    assert!(
        !lines
            .iter()
            .any(|l| l["kind"] == "exec_failure" && l["pod"] == "unjudged"),
        "{lines:?}"
    );
    assert!(
        agent.metric(
            "archwatch_inspection_errors_total",
            &[("kind", "inspection_timeout")]
        ) >= 1.0
    );
    assert_eq!(agent.metric("archwatch_containerd_connected", &[]), 1.0);
}
