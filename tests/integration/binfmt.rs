//! binfmt_misc live, with the real kernel: a QEMU handler registered under a unique name
//! makes an arm64 container run on this node; the agent reports it as emulated (confirmed
//! from /proc/<pid>/exe), counts it, sends RunningUnderEmulation, and when the handler goes
//! the image's verdict turns to arch_mismatch before anything restarts. Without the F flag
//! the kernel looks for the emulator inside the container: emulator_missing, for real.

use std::time::Duration;

use archwatch::lab::{BinfmtHandler, BinfmtMount};
use archwatch::oci::{ImageSpec, Item, Layer, Layout};

use crate::kube::FakeApi;
use crate::support::{self, agent::Agent, containerd::Containerd};

const NS: &str = "k8s.io";
const QEMU: &str = "/usr/bin/qemu-aarch64-static";
const MAGIC: &[u8] = b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00";
const MASK: &[u8] =
    b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff";

#[test]
fn emulation_is_confirmed_counted_and_follows_the_handler_table() {
    let _x = support::binfmt_exclusive();
    assert!(
        std::path::Path::new(QEMU).exists(),
        "qemu-user-static is installed by scripts/install-deps"
    );
    let _mount = BinfmtMount::ensure().expect("binfmt_misc can be mounted");
    let mut ctd = Containerd::start();
    let work = tempfile::tempdir().unwrap();
    let mut l = Layout::new();
    let m = l
        .add_image(&ImageSpec::new(
            "arm64",
            &["/bin/busybox", "sleep", "60"],
            vec![Layer(vec![Item::file(
                "/bin/busybox",
                support::busybox("arm64"),
                0o755,
            )])],
        ))
        .unwrap();
    l.tag("archwatch.test/emu:v1", &m);
    let archive = work.path().join("emu.tar");
    l.write_archive(&archive).unwrap();

    let (api, url) = FakeApi::start();
    let kubeconfig = work.path().join("kubeconfig");
    std::fs::write(&kubeconfig, crate::support::fake_api::kubeconfig(&url)).unwrap();
    let agent = Agent::start_with_env(
        &ctd.socket,
        &["--kube", "auto"],
        &[("KUBECONFIG", &kubeconfig)],
    );
    agent.wait_ready();

    let name = support::unique("archwatch-test-aarch64");
    let handler = BinfmtHandler::register(&name, MAGIC, MASK, QEMU, "F").expect("register handler");
    agent.wait_for(
        "the handler in the metrics",
        Duration::from_secs(15),
        || {
            agent.metric(
                "archwatch_binfmt_handler_info",
                &[("name", name.as_str()), ("arch", "arm64"), ("flags", "F")],
            ) == 1.0
        },
    );
    ctd.import(NS, &archive);
    // An image with no entrypoint cannot be inspected: counted, not guessed.
    let mut l2 = Layout::new();
    let mut spec = ImageSpec::new(
        "amd64",
        &[],
        vec![Layer(vec![Item::file(
            "/README",
            b"data only".to_vec(),
            0o644,
        )])],
    );
    spec.entrypoint.clear();
    let m2 = l2.add_image(&spec).unwrap();
    l2.tag("archwatch.test/data-only:v1", &m2);
    let archive2 = work.path().join("data.tar");
    l2.write_archive(&archive2).unwrap();
    ctd.import(NS, &archive2);
    agent.wait_for(
        "the inspection error counted",
        Duration::from_secs(20),
        || {
            agent.metric(
                "archwatch_inspection_errors_total",
                &[("kind", "empty_argv")],
            ) >= 1.0
        },
    );
    agent.wait_for("the image judged emulated", Duration::from_secs(20), || {
        agent.metric(
            "archwatch_images_inspected",
            &[("verdict", "emulated"), ("binary_arch", "arm64")],
        ) == 1.0
    });
    // `archwatch binfmt` shows the handler, its arch, and the images that depend on it.
    let out = support::archwatch()
        .args(["binfmt", "--json", "--api-socket"])
        .arg(&agent.api_socket)
        .output()
        .unwrap();
    let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let h = t["handlers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == name.as_str())
        .expect("handler listed")
        .clone();
    assert_eq!(h["arch"], "arm64");
    assert_eq!(
        h["images"],
        serde_json::json!(["archwatch.test/emu:v1"]),
        "{h}"
    );

    let out = ctd.ctr_ns(
        NS,
        &[
            "run",
            "-d",
            "--label",
            "io.kubernetes.pod.name=emu-pod",
            "--label",
            "io.kubernetes.pod.namespace=shop",
            "--label",
            "io.kubernetes.pod.uid=uid-emu",
            "--label",
            "io.kubernetes.container.name=app",
            "archwatch.test/emu:v1",
            "emu-1",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    agent.wait_for("containers_emulated", Duration::from_secs(20), || {
        agent.metric("archwatch_containers_emulated", &[("binary_arch", "arm64")]) == 1.0
    });
    let rec = agent
        .lines()
        .into_iter()
        .find(|l| l["kind"] == "emulated" && l["pod"] == "emu-pod")
        .expect("emulated journal line");
    assert!(
        rec["confirmed_by"]
            .as_str()
            .unwrap_or("")
            .contains("qemu-aarch64"),
        "{rec}"
    );
    assert_eq!(rec["handler"], name.as_str());
    agent.wait_for(
        "RunningUnderEmulation Event",
        Duration::from_secs(10),
        || {
            api.requests().iter().any(|r| {
                r.method == "POST"
                    && r.body["reason"] == "RunningUnderEmulation"
                    && r.body["regarding"]["name"] == "emu-pod"
            })
        },
    );

    // The task ends: it no longer counts.
    let _ = ctd.ctr_ns(NS, &["tasks", "kill", "-s", "SIGKILL", "emu-1"]);
    agent.wait_for("gauge back to 0", Duration::from_secs(20), || {
        agent.metric("archwatch_containers_emulated", &[("binary_arch", "arm64")]) == 0.0
    });

    // The handler goes: the image cannot run here any more, before any pod restarts.
    drop(handler);
    agent.wait_for("the image judged again", Duration::from_secs(20), || {
        agent.metric(
            "archwatch_images_inspected",
            &[("verdict", "arch_mismatch"), ("binary_arch", "arm64")],
        ) == 1.0
    });

    // Without F: the kernel opens the emulator in the container's mount namespace.
    let handler =
        BinfmtHandler::register(&name, MAGIC, MASK, QEMU, "").expect("register handler without F");
    agent.wait_for(
        "the image judged emulator_missing",
        Duration::from_secs(20),
        || {
            agent.metric(
                "archwatch_images_inspected",
                &[("verdict", "emulator_missing")],
            ) == 1.0
        },
    );
    let r = ctd.run(
        NS,
        "archwatch.test/emu:v1",
        "nof-1",
        &[
            ("io.kubernetes.pod.name", "nof-pod"),
            ("io.kubernetes.pod.namespace", "shop"),
        ],
        Duration::from_secs(30),
    );
    assert_ne!(
        r.code,
        Some(0),
        "without F and without qemu in the image, the exec fails: {r:?}"
    );
    agent.wait_for(
        "emulator_missing diagnosed",
        Duration::from_secs(20),
        || {
            agent.lines().iter().any(|l| {
                l["kind"] == "exec_failure"
                    && l["pod"] == "nof-pod"
                    && l["verdict"] == "emulator_missing"
            })
        },
    );
    // Now the agent has seen failures, images, a handler, emulation, Events and an inspection
    // error: every metric the alert rules and the dashboard use must be in its exposition.
    crate::manifests::assert_exported(&agent.metrics());
    drop(handler);
    assert!(
        !std::path::Path::new("/proc/sys/fs/binfmt_misc")
            .join(&name)
            .exists(),
        "handler removed"
    );
}

/// Two handlers take the same file: the kernel asks the newest registration first, and so
/// does archwatch, whatever the handlers' names.
#[test]
fn the_newest_of_two_matching_handlers_is_the_one_the_kernel_uses() {
    let _x = support::binfmt_exclusive();
    let _mount = BinfmtMount::ensure().expect("binfmt_misc can be mounted");
    let work = tempfile::tempdir().unwrap();
    // Two interpreters that say which one ran; a file only these handlers take.
    let say = |who: &str| {
        let p = work.path().join(format!("{who}.sh"));
        std::fs::write(&p, format!("#!/bin/sh\necho {who}\n")).unwrap();
        rustix::fs::chmod(&p, rustix::fs::Mode::from_raw_mode(0o755)).unwrap();
        p.display().to_string()
    };
    let (old_sh, new_sh) = (say("old"), say("new"));
    let magic = b"\x7fAWNEWEST";
    let mask = b"\xff\xff\xff\xff\xff\xff\xff\xff\xff";
    let root = work.path().join("rootfs");
    std::fs::create_dir(&root).unwrap();
    let mut file = magic.to_vec();
    file.extend_from_slice(b" payload\n");
    std::fs::write(root.join("app"), &file).unwrap();
    rustix::fs::chmod(root.join("app"), rustix::fs::Mode::from_raw_mode(0o755)).unwrap();
    // Named so that name order would pick the older one.
    let old = support::unique("aaa-archwatch-old");
    let new = support::unique("zzz-archwatch-new");
    let _old = BinfmtHandler::register(&old, magic, mask, &old_sh, "F").expect("register");
    std::thread::sleep(Duration::from_millis(20));
    let _new = BinfmtHandler::register(&new, magic, mask, &new_sh, "F").expect("register");

    let ran = std::process::Command::new(root.join("app"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ran.stdout).trim(),
        "new",
        "{ran:?}"
    );

    let out = support::archwatch()
        .args(["inspect", "--json", "--rootfs"])
        .arg(&root)
        .args(["--", "/app"])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["verdict"], "emulated", "{json:#}");
    assert_eq!(json["handler"], new.as_str(), "{json:#}");
}
