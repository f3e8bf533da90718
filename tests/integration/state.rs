//! Per-container state across lost connections, with a real containerd: a container that
//! containerd deleted while the agent could not see it leaves every gauge and the status
//! at the next reconcile; a container a dropped connection left unjudged is judged at the
//! next reconcile, once.

use std::time::{Duration, Instant};

use archwatch::lab::{self, BinfmtHandler, BinfmtMount};
use archwatch::oci::{ImageSpec, Item, Layer, Layout};

use crate::support::{self, agent::Agent};

const NS: &str = "k8s.io";
const QEMU: &str = "/usr/bin/qemu-aarch64-static";
const MAGIC: &[u8] = b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00";
const MASK: &[u8] =
    b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff";

fn ctr(ctd: &lab::Containerd, args: &[&str]) -> String {
    let out = ctd.ctr_ns(NS, args).expect("ctr");
    assert!(
        out.status.success(),
        "ctr {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn import_arm64(ctd: &mut lab::Containerd, dir: &std::path::Path, tag: &str, argv: &[&str]) {
    let mut l = Layout::new();
    let m = l
        .add_image(&ImageSpec::new(
            "arm64",
            argv,
            vec![Layer(vec![Item::file(
                "/bin/busybox",
                support::busybox("arm64"),
                0o755,
            )])],
        ))
        .unwrap();
    l.tag(tag, &m);
    let p = dir.join(format!("{}.tar", support::unique("img")));
    l.write_archive(&p).unwrap();
    ctd.import(NS, &p).expect("import");
}

fn run_detached(ctd: &lab::Containerd, image: &str, id: &str, pod: &str) {
    let labels = [
        format!("--label=io.kubernetes.pod.name={pod}"),
        "--label=io.kubernetes.pod.namespace=shop".to_string(),
        format!("--label=io.kubernetes.pod.uid=uid-{pod}"),
        "--label=io.kubernetes.container.name=app".to_string(),
    ];
    let mut args = vec!["run", "-d"];
    args.extend(labels.iter().map(String::as_str));
    args.extend([image, id]);
    ctr(ctd, &args);
}

fn wait_task_stopped(ctd: &lab::Containerd, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let ls = ctr(ctd, &["tasks", "ls"]);
        if ls
            .lines()
            .any(|l| l.starts_with(id) && l.contains("STOPPED"))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("task {id} never stopped");
}

fn status(agent: &Agent) -> serde_json::Value {
    let out = support::archwatch()
        .args(["status", "--json", "--api-socket"])
        .arg(&agent.api_socket)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
}

fn tracked(agent: &Agent) -> u64 {
    status(agent)["tracked_containers"].as_u64().unwrap_or(0)
}

fn reconnected(agent: &Agent, n: f64) {
    agent.wait_for("the agent reconnected", Duration::from_secs(40), || {
        agent.metric("archwatch_containerd_reconnects_total", &[]) >= n
            && agent.metric("archwatch_containerd_connected", &[]) == 1.0
    });
}

fn emulated(agent: &Agent) -> f64 {
    agent.metric("archwatch_containers_emulated", &[("binary_arch", "arm64")])
}

#[test]
fn a_container_deleted_while_disconnected_leaves_the_emulated_gauge_and_the_status() {
    let _x = support::binfmt_exclusive();
    assert!(
        std::path::Path::new(QEMU).exists(),
        "qemu-user-static is installed by scripts/install-deps"
    );
    let _mount = BinfmtMount::ensure().expect("binfmt_misc can be mounted");
    let mut ctd = lab::Containerd::start().expect("containerd");
    let work = tempfile::tempdir().unwrap();
    import_arm64(
        &mut ctd,
        work.path(),
        "archwatch.test/emu-state:v1",
        &["/bin/busybox", "sleep", "600"],
    );
    let name = support::unique("archwatch-test-state");
    let _handler =
        BinfmtHandler::register(&name, MAGIC, MASK, QEMU, "F").expect("register handler");
    let agent = Agent::start(&ctd.socket, &[]);
    agent.wait_ready();
    agent.wait_for("the image judged emulated", Duration::from_secs(30), || {
        agent.metric(
            "archwatch_images_inspected",
            &[("verdict", "emulated"), ("binary_arch", "arm64")],
        ) == 1.0
    });

    for (id, pod) in [("emu-gone", "gone"), ("emu-stays", "stays")] {
        run_detached(&ctd, "archwatch.test/emu-state:v1", id, pod);
    }
    agent.wait_for("both counted as emulated", Duration::from_secs(30), || {
        emulated(&agent) == 2.0
    });
    assert_eq!(tracked(&agent), 2);

    // The agent is frozen, containerd dies under it and comes back, and one container is
    // deleted: no event about it ever reaches the agent.
    agent.freeze();
    ctd.kill_hard();
    ctd.restart().expect("containerd back");
    ctr(&ctd, &["tasks", "kill", "-s", "SIGKILL", "emu-gone"]);
    wait_task_stopped(&ctd, "emu-gone");
    ctr(&ctd, &["tasks", "delete", "emu-gone"]);
    ctr(&ctd, &["containers", "delete", "emu-gone"]);
    agent.thaw();

    reconnected(&agent, 1.0);
    agent.wait_for(
        "the deleted container out of the gauge",
        Duration::from_secs(20),
        || emulated(&agent) == 1.0,
    );
    assert_eq!(tracked(&agent), 1, "{}", status(&agent));
    assert_eq!(
        emulated(&agent),
        1.0,
        "the one still running is still counted"
    );

    // The same again with the agent's connection down for longer: the last one goes too,
    // and the series stays at 0 rather than vanishing.
    agent.freeze();
    ctd.kill_hard();
    ctd.restart().expect("containerd back");
    ctr(&ctd, &["tasks", "kill", "-s", "SIGKILL", "emu-stays"]);
    wait_task_stopped(&ctd, "emu-stays");
    ctr(&ctd, &["tasks", "delete", "emu-stays"]);
    ctr(&ctd, &["containers", "delete", "emu-stays"]);
    agent.thaw();
    reconnected(&agent, 2.0);
    agent.wait_for("the gauge back to 0", Duration::from_secs(20), || {
        agent
            .metrics()
            .contains("archwatch_containers_emulated{binary_arch=\"arm64\"} 0")
    });
    assert_eq!(tracked(&agent), 0);
    // One journal line each: noted once, not again at the reconnects.
    let noted: Vec<_> = agent
        .lines()
        .into_iter()
        .filter(|l| l["kind"] == "emulated")
        .collect();
    assert_eq!(noted.len(), 2, "{noted:?}");
}

#[test]
fn a_container_left_unjudged_by_a_dropped_connection_is_judged_at_the_next_reconcile_once() {
    let _b = support::binfmt_shared();
    let mut ctd = lab::Containerd::start().expect("containerd");
    let work = tempfile::tempdir().unwrap();
    import_arm64(
        &mut ctd,
        work.path(),
        "archwatch.test/retry:v1",
        &["/bin/busybox", "true"],
    );
    let agent = Agent::start(&ctd.socket, &[]);
    agent.wait_ready();
    agent.wait_for("the image judged", Duration::from_secs(30), || {
        agent.metric(
            "archwatch_images_inspected",
            &[("verdict", "arch_mismatch")],
        ) == 1.0
    });

    let lookups_failed = || {
        agent.metric(
            "archwatch_inspection_errors_total",
            &[("kind", "containerd_rpc")],
        ) + agent.metric(
            "archwatch_inspection_errors_total",
            &[("kind", "containerd_connect")],
        )
    };
    let failed_before = lookups_failed();
    // While the agent is frozen the container is created and fails; its events wait in the
    // agent's socket. containerd dies before the agent can read the container's record.
    agent.freeze();
    run_detached(&ctd, "archwatch.test/retry:v1", "retry-1", "retry");
    wait_task_stopped(&ctd, "retry-1");
    // The exit event on its way to the agent's socket.
    std::thread::sleep(Duration::from_millis(300));
    ctd.kill_hard();
    agent.thaw();
    // The lookup fails; the failure is held back for the retry, not journaled: the
    // container is judged at the next reconcile, and the journal says one thing of it.
    agent.wait_for("the record lookup failed", Duration::from_secs(20), || {
        lookups_failed() > failed_before
    });
    assert!(
        agent
            .log_text()
            .contains("judged again at the next reconcile"),
        "the deferral is logged"
    );
    let failures = |a: &Agent| {
        a.lines()
            .into_iter()
            .filter(|l| l["kind"] == "exec_failure" && l["pod"] == "retry")
            .collect::<Vec<_>>()
    };
    assert!(failures(&agent).is_empty(), "not judged without its files");
    let inspected = || {
        agent.metric(
            "archwatch_inspection_duration_seconds_count",
            &[("target", "container")],
        )
    };
    let before = inspected();

    // containerd is back: the reconcile judges it, and its exit (seen in the events) is
    // diagnosed.
    ctd.restart().expect("containerd back");
    reconnected(&agent, 1.0);
    agent.wait_for("the retried diagnosis", Duration::from_secs(20), || {
        !failures(&agent).is_empty()
    });
    let d = failures(&agent).remove(0);
    assert_eq!(d["verdict"], "arch_mismatch", "{d}");
    assert_eq!(d["container_id"], "retry-1");
    assert_eq!(d["binary_arch"], "arm64");
    assert_eq!(inspected(), before + 1.0, "judged once");

    // Another reconnect: nothing is judged or reported again.
    ctd.restart().expect("containerd back");
    reconnected(&agent, 2.0);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(failures(&agent).len(), 1, "{:?}", failures(&agent));
    assert_eq!(inspected(), before + 1.0, "judged once");
    assert_eq!(tracked(&agent), 1);
    assert!(
        !agent
            .lines()
            .iter()
            .any(|l| l["kind"] == "inspection_failed" && l["container_id"] == "retry-1"),
        "judged after all: never said to be unjudged"
    );
}
