//! The agent against a real containerd: failures diagnosed from events and from reconcile,
//! healthy containers silent, and containerd killed and restarted under it.

use std::time::{Duration, Instant};

use archwatch::oci::{ImageSpec, Item, Layer};

use crate::support::{self, agent::Agent, containerd::Containerd};

const NS: &str = "k8s.io";

fn import(ctd: &mut Containerd, _dir: &std::path::Path, tag: &str, spec: &ImageSpec) {
    ctd.import_spec(NS, tag, spec);
}

fn pod_labels<'a>(pod: &'a str, container: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("io.kubernetes.pod.name", pod),
        ("io.kubernetes.pod.namespace", "shop"),
        (
            "io.kubernetes.pod.uid",
            "0b5f6c1e-6d1d-4c55-9c8e-000000000001",
        ),
        ("io.kubernetes.container.name", container),
    ]
}

fn failure_for(a: &Agent, pod: &str) -> Option<serde_json::Value> {
    a.failures().into_iter().find(|l| l["pod"] == pod)
}

#[test]
fn agent_diagnoses_real_failures_and_survives_containerd_restarts() {
    let _binfmt = support::binfmt_shared();
    let mut ctd = Containerd::start();
    let work = tempfile::tempdir().unwrap();
    let bb = |arch: &str| Item::file("/bin/busybox", support::busybox(arch), 0o755);

    // Before the agent: an arm64 image whose container fails while nobody watches.
    import(
        &mut ctd,
        work.path(),
        "archwatch.test/before:v1",
        &ImageSpec::new(
            "arm64",
            &["/bin/busybox", "true"],
            vec![Layer(vec![bb("arm64")])],
        ),
    );
    let mut cmd = vec!["run", "-d"];
    let labels = pod_labels("early", "app");
    let label_args: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("--label={k}={v}"))
        .collect();
    cmd.extend(label_args.iter().map(String::as_str));
    cmd.extend(["archwatch.test/before:v1", "early-1"]);
    let out = ctd.ctr_ns(NS, &cmd);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let ls = String::from_utf8_lossy(&ctd.ctr_ns(NS, &["tasks", "ls"]).stdout).to_string();
        if ls.contains("STOPPED") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let agent = Agent::start(&ctd.socket, &[]);
    agent.wait_ready();
    agent.wait_for(
        "the failure that happened before the agent started",
        Duration::from_secs(20),
        || failure_for(&agent, "early").is_some(),
    );
    let early = failure_for(&agent, "early").unwrap();
    assert_eq!(early["verdict"], "arch_mismatch");
    assert_eq!(early["signal"], "stopped_before_watch");
    assert_eq!(early["binary_arch"], "arm64");
    assert_eq!(early["pod_namespace"], "shop");

    // After the agent: the classic incidents, plus a healthy container.
    let host_true = std::fs::read("/usr/bin/true").unwrap();
    let cases: Vec<(&str, ImageSpec, Option<&str>)> = vec![
        (
            "wrong-arch",
            ImageSpec::new(
                "arm64",
                &["/app", "true"],
                vec![Layer(vec![Item::file(
                    "/app",
                    support::busybox("arm64"),
                    0o755,
                )])],
            ),
            Some("arch_mismatch"),
        ),
        (
            "config-lies",
            ImageSpec::new(
                "amd64",
                &["/app", "true"],
                vec![Layer(vec![Item::file(
                    "/app",
                    support::busybox("arm64"),
                    0o755,
                )])],
            ),
            Some("arch_mismatch"),
        ),
        (
            "crlf",
            ImageSpec::new(
                "amd64",
                &["/entrypoint.sh"],
                vec![Layer(vec![
                    bb("amd64"),
                    Item::symlink("/bin/sh", "/bin/busybox"),
                    Item::file(
                        "/entrypoint.sh",
                        b"#!/bin/sh\r\necho hi\r\n".to_vec(),
                        0o755,
                    ),
                ])],
            ),
            Some("script_crlf"),
        ),
        (
            "glibc-on-musl",
            ImageSpec::new(
                "amd64",
                &["/app"],
                vec![Layer(vec![
                    Item::file("/app", host_true, 0o755),
                    Item::file(
                        "/lib/x86_64-linux-musl/libc.so",
                        support::musl_loader(),
                        0o755,
                    ),
                    Item::symlink("/lib/ld-musl-x86_64.so.1", "/lib/x86_64-linux-musl/libc.so"),
                ])],
            ),
            Some("missing_loader"),
        ),
        (
            "refused-at-create",
            ImageSpec::new("amd64", &["/nope"], vec![Layer(vec![bb("amd64")])]),
            Some("not_found"),
        ),
        (
            "healthy",
            ImageSpec::new(
                "amd64",
                &["/bin/busybox", "true"],
                vec![Layer(vec![bb("amd64")])],
            ),
            None,
        ),
        (
            "healthy-crash",
            ImageSpec::new(
                "amd64",
                &["/bin/busybox", "false"],
                vec![Layer(vec![bb("amd64")])],
            ),
            None,
        ),
    ];
    for (name, spec, _) in &cases {
        import(
            &mut ctd,
            work.path(),
            &format!("archwatch.test/{name}:v1"),
            spec,
        );
    }
    // Pulled images are judged before anything runs.
    agent.wait_for("image verdicts", Duration::from_secs(30), || {
        let m = agent.metrics();
        support::agent::metric_value(&m, "archwatch_images_inspected", &[]) >= 8.0
    });
    let image_lines: Vec<_> = agent
        .lines()
        .into_iter()
        .filter(|l| l["kind"] == "image")
        .collect();
    let lies = image_lines
        .iter()
        .find(|l| l["image"] == "archwatch.test/config-lies:v1")
        .expect("image warning for config-lies");
    assert_eq!(lies["verdict"], "arch_mismatch");
    assert_eq!(lies["reason"], "IncompatibleImagePulled");
    assert!(
        lies["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["code"] == "config_arch_mismatch"),
        "{lies}"
    );
    assert!(
        !image_lines
            .iter()
            .any(|l| l["image"] == "archwatch.test/healthy:v1"),
        "healthy images are not warned about"
    );

    for (name, _, _) in &cases {
        let r = ctd.run(
            NS,
            &format!("archwatch.test/{name}:v1"),
            &format!("{name}-1"),
            &pod_labels(name, "app"),
            Duration::from_secs(30),
        );
        // The runtime's own words can be lost by `ctr run --rm` under load; the outcome is
        // what matters here (the e2e suite checks the words).
        assert_eq!(r.code == Some(0), *name == "healthy", "{name}: {r:?}");
    }
    for (name, _, want) in &cases {
        if let Some(v) = want {
            agent.wait_for(
                &format!("diagnosis of {name}"),
                Duration::from_secs(20),
                || failure_for(&agent, name).is_some(),
            );
            let d = failure_for(&agent, name).unwrap();
            assert_eq!(d["verdict"], *v, "{name}: {d}");
            assert_eq!(d["node"], "test-node");
            assert_eq!(d["container"], "app");
            assert!(d["cause"].as_str().unwrap().len() > 10);
            assert!(d["fix"].as_str().unwrap().len() > 10);
        }
    }
    let refused = failure_for(&agent, "refused-at-create").unwrap();
    assert_eq!(refused["signal"], "task_never_created");
    let crlf = failure_for(&agent, "crlf").unwrap();
    assert_eq!(crlf["signal"], "task_exit");
    assert_eq!(crlf["exit_code"], 1);
    // Give a wrongly reported healthy container time to show up, then check none did.
    std::thread::sleep(Duration::from_secs(2));
    assert!(failure_for(&agent, "healthy").is_none());
    assert!(
        failure_for(&agent, "healthy-crash").is_none(),
        "a crash of a binary that runs is not an exec failure"
    );
    assert_eq!(
        agent.metric(
            "archwatch_exec_failures_total",
            &[("namespace", "shop"), ("reason", "arch_mismatch")]
        ),
        3.0
    );
    assert_eq!(
        agent.metric(
            "archwatch_exec_failures_total",
            &[("reason", "script_crlf"), ("binary_arch", "unknown")]
        ),
        1.0
    );
    assert_eq!(agent.metric("archwatch_containerd_connected", &[]), 1.0);
    assert!(
        agent.metric(
            "archwatch_containerd_events_total",
            &[("topic", "/tasks/exit")]
        ) >= 1.0
    );
    assert!(
        agent.metric(
            "archwatch_inspection_duration_seconds_count",
            &[("target", "image")]
        ) >= 8.0
    );

    // The same diagnoses through the API socket: `archwatch events` and `archwatch status`.
    let out = support::archwatch()
        .args(["events", "--json", "--replay", "1000", "--api-socket"])
        .arg(&agent.api_socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let streamed: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let journal_pods: Vec<String> = agent
        .failures()
        .iter()
        .map(|l| l["pod"].as_str().unwrap().to_string())
        .collect();
    let stream_pods: Vec<String> = streamed
        .iter()
        .map(|l| l["pod"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        stream_pods, journal_pods,
        "stream and journal carry the same diagnoses in the same order"
    );
    let out = support::archwatch()
        .args(["status", "--json", "--api-socket"])
        .arg(&agent.api_socket)
        .output()
        .unwrap();
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["containerd_connected"], true);
    assert_eq!(st["node"], "test-node");
    let lies_status = st["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["image"] == "archwatch.test/config-lies:v1")
        .expect("image listed")
        .clone();
    assert_eq!(lies_status["verdict"], "arch_mismatch");

    // containerd dies hard and comes back: the agent reconnects by itself and goes on.
    ctd.restart();
    agent.wait_for("reconnect", Duration::from_secs(40), || {
        agent.metric("archwatch_containerd_reconnects_total", &[]) >= 1.0
            && agent.metric("archwatch_containerd_connected", &[]) == 1.0
    });
    let r = ctd.run(
        NS,
        "archwatch.test/wrong-arch:v1",
        "after-restart-1",
        &pod_labels("after-restart", "app"),
        Duration::from_secs(30),
    );
    assert_ne!(r.code, Some(0));
    agent.wait_for("diagnosis after restart", Duration::from_secs(20), || {
        failure_for(&agent, "after-restart").is_some()
    });

    // Every failure exactly once.
    let mut pods: Vec<String> = agent
        .failures()
        .iter()
        .map(|l| l["pod"].as_str().unwrap_or("").to_string())
        .collect();
    let n = pods.len();
    pods.sort();
    pods.dedup();
    assert_eq!(pods.len(), n, "a failure was reported twice: {pods:?}");
    let mut agent = agent;
    assert_eq!(agent.stop(), Some(0), "clean exit on SIGTERM");
    // No view or lease left behind.
    let leases =
        String::from_utf8_lossy(&ctd.ctr_ns(NS, &["leases", "ls", "-q"]).stdout).to_string();
    assert!(!leases.contains("archwatch"), "leases left: {leases}");
    let snaps = String::from_utf8_lossy(&ctd.ctr_ns(NS, &["snapshots", "ls"]).stdout).to_string();
    assert!(!snaps.contains("archwatch-view"), "views left: {snaps}");
}

#[test]
fn inspect_an_image_in_containerd_through_a_view() {
    let _binfmt = support::binfmt_shared();
    let mut ctd = Containerd::start();
    let work = tempfile::tempdir().unwrap();
    import(
        &mut ctd,
        work.path(),
        "archwatch.test/lies:v1",
        &ImageSpec::new(
            "amd64",
            &["/app", "true"],
            vec![Layer(vec![Item::file(
                "/app",
                support::busybox("arm64"),
                0o755,
            )])],
        ),
    );
    let out = support::archwatch()
        .args([
            "inspect",
            "--json",
            "--namespace",
            NS,
            "--image",
            "archwatch.test/lies:v1",
            "--address",
        ])
        .arg(&ctd.socket)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json["verdict"], "arch_mismatch");
    assert_eq!(
        json["argv"],
        serde_json::json!(["/app", "true"]),
        "argv from the image config"
    );
    assert!(
        json["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["code"] == "config_arch_mismatch"),
        "{json}"
    );
    let leases =
        String::from_utf8_lossy(&ctd.ctr_ns(NS, &["leases", "ls", "-q"]).stdout).to_string();
    assert!(!leases.contains("archwatch"), "leases left: {leases}");
    let snaps = String::from_utf8_lossy(&ctd.ctr_ns(NS, &["snapshots", "ls"]).stdout).to_string();
    assert!(!snaps.contains("archwatch-view"), "views left: {snaps}");
}

/// Entrypoint scripts that exec a program that cannot run: diagnosed as that program; a
/// script whose exec archwatch cannot be sure of runs (`ok`), and its shell's exit is
/// attributed to the program it may exec.
#[test]
fn agent_follows_entrypoint_execs_and_attributes_shell_exits() {
    let _binfmt = support::binfmt_shared();
    let mut ctd = Containerd::start();
    let work = tempfile::tempdir().unwrap();
    let base = || {
        vec![
            Item::file("/bin/busybox", support::busybox("amd64"), 0o755),
            Item::symlink("/bin/sh", "/bin/busybox"),
            Item::symlink("/usr/bin/true", "/bin/busybox"),
        ]
    };
    let with = |mut items: Vec<Item>, more: Vec<Item>| {
        items.extend(more);
        items
    };
    let entrypoint = b"#!/bin/sh\nset -e\nif [ \"${1#-}\" != \"$1\" ]; then\n\tset -- app \"$@\"\nfi\nexec \"$@\"\n";
    let maybe = b"#!/bin/sh\nif [ -f /etc/app.conf ]; then\n  exec /usr/local/bin/server\nfi\n";
    let mut ep_arm64 = ImageSpec::new(
        "amd64",
        &["/docker-entrypoint.sh"],
        vec![Layer(with(
            base(),
            vec![
                Item::file("/docker-entrypoint.sh", entrypoint.to_vec(), 0o755),
                Item::file("/usr/local/bin/app", support::busybox("arm64"), 0o755),
            ],
        ))],
    );
    ep_arm64.cmd = vec!["app".into(), "--serve".into()];
    let mut ep_ok = ImageSpec::new(
        "amd64",
        &["/docker-entrypoint.sh"],
        vec![Layer(with(
            base(),
            vec![Item::file(
                "/docker-entrypoint.sh",
                entrypoint.to_vec(),
                0o755,
            )],
        ))],
    );
    ep_ok.cmd = vec!["true".into()];
    let maybe_arm64 = ImageSpec::new(
        "amd64",
        &["/start.sh"],
        vec![Layer(with(
            base(),
            vec![
                Item::file("/start.sh", maybe.to_vec(), 0o755),
                Item::file("/etc/app.conf", b"x=1\n".to_vec(), 0o644),
                Item::file("/usr/local/bin/server", support::busybox("arm64"), 0o755),
            ],
        ))],
    );
    // No exec at all: the script runs an arm64 tool that a build step downloaded for the
    // wrong arch; only the census of the image's executables can name it.
    let runs_tool = ImageSpec::new(
        "amd64",
        &["/start.sh"],
        vec![Layer(with(
            base(),
            vec![
                Item::file(
                    "/start.sh",
                    b"#!/bin/sh
set -e
tool --init
echo ready
"
                    .to_vec(),
                    0o755,
                ),
                Item::file("/usr/local/bin/tool", support::busybox("arm64"), 0o755),
            ],
        ))],
    );
    let cases = [
        ("ep-arm64-cmd", ep_arm64),
        ("ep-native-cmd", ep_ok),
        ("maybe-arm64", maybe_arm64),
        ("runs-arm64-tool", runs_tool),
    ];
    for (name, spec) in &cases {
        import(
            &mut ctd,
            work.path(),
            &format!("archwatch.test/{name}:v1"),
            spec,
        );
    }
    let agent = Agent::start(&ctd.socket, &[]);
    agent.wait_ready();
    for (name, _) in &cases {
        let r = ctd.run(
            NS,
            &format!("archwatch.test/{name}:v1"),
            &format!("{name}-1"),
            &pod_labels(name, "app"),
            Duration::from_secs(30),
        );
        assert_eq!(r.code == Some(0), *name == "ep-native-cmd", "{name}: {r:?}");
    }
    for name in ["ep-arm64-cmd", "maybe-arm64", "runs-arm64-tool"] {
        agent.wait_for(
            &format!("diagnosis of {name}"),
            Duration::from_secs(20),
            || failure_for(&agent, name).is_some(),
        );
    }
    let ep = failure_for(&agent, "ep-arm64-cmd").unwrap();
    assert_eq!(ep["verdict"], "arch_mismatch", "{ep}");
    assert_eq!(ep["binary_arch"], "arm64", "{ep}");
    assert!(
        ep["cause"].as_str().unwrap().contains("/usr/local/bin/app"),
        "{ep}"
    );
    let maybe = failure_for(&agent, "maybe-arm64").unwrap();
    assert_eq!(maybe["verdict"], "arch_mismatch", "{maybe}");
    // busybox's exec runs the arm64 file as a script: exit 2.
    assert_eq!(maybe["exit_code"], 2, "{maybe}");
    let codes: Vec<&str> = maybe["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["code"].as_str())
        .collect();
    assert!(codes.contains(&"exit_attributed"), "{maybe}");
    assert!(codes.contains(&"exec_uncertain"), "{maybe}");
    let tool = failure_for(&agent, "runs-arm64-tool").unwrap();
    assert_eq!(tool["verdict"], "arch_mismatch", "{tool}");
    assert!(
        tool["cause"]
            .as_str()
            .unwrap()
            .contains("/usr/local/bin/tool"),
        "{tool}"
    );
    let codes: Vec<&str> = tool["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["code"].as_str())
        .collect();
    assert!(codes.contains(&"foreign_executables"), "{tool}");
    assert!(codes.contains(&"exit_attributed"), "{tool}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(failure_for(&agent, "ep-native-cmd").is_none());
}
