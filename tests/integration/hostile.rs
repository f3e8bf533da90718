//! Hostile images through the running agent: FIFO and device entrypoints, symlink loops,
//! symlinks aimed at host files, a malformed ELF with an absurd e_phnum. The agent never opens
//! the host canary (inotify proves it), never hangs or panics, diagnoses each, and goes on
//! diagnosing the next container.

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

#[test]
fn hostile_images_are_diagnosed_without_reading_the_host() {
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
    let agent = Agent::start(&ctd.socket, &[]);
    agent.wait_ready();
    let work = tempfile::tempdir().unwrap();
    let bb = || Item::file("/bin/busybox", support::busybox("amd64"), 0o755);
    let up = format!("{}{}", "../".repeat(30), canary_s.trim_start_matches('/'));
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
