//! The agent against a real containerd: failures diagnosed from events and from reconcile,
//! healthy containers silent, and containerd killed and restarted under it.

use std::time::{Duration, Instant};

use archwatch::oci::{ImageSpec, Item, Layer, Layout};

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
    assert_eq!(early["fix_code"], "publish_multiarch");

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
    assert_eq!(lies["fix_code"], "fix_build_stage", "{lies}");
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
    // The fix fits the cause: one code per incident, the config that lies included (its
    // container's config is read too, not only the image's at pull time).
    for (name, code) in [
        ("wrong-arch", "publish_multiarch"),
        ("config-lies", "fix_build_stage"),
        ("crlf", "convert_to_lf"),
        ("glibc-on-musl", "use_glibc_base_or_static"),
        ("refused-at-create", "fix_entrypoint_path"),
    ] {
        let d = failure_for(&agent, name).unwrap();
        assert_eq!(d["fix_code"], code, "{name}: {d}");
    }
    let lies = failure_for(&agent, "config-lies").unwrap();
    assert!(
        lies["findings"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["code"] == "config_arch_mismatch")),
        "{lies}"
    );
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
    let stream_codes: Vec<&serde_json::Value> = streamed.iter().map(|l| &l["fix_code"]).collect();
    let journal_lines = agent.failures();
    let journal_codes: Vec<&serde_json::Value> =
        journal_lines.iter().map(|l| &l["fix_code"]).collect();
    assert_eq!(
        stream_codes, journal_codes,
        "the same fix codes on the stream"
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
    assert_eq!(lies_status["fix_code"], "fix_build_stage");

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

fn busybox_image(arch: &str, deb: &str) -> ImageSpec {
    ImageSpec::new(
        arch,
        &["/bin/busybox", "true"],
        vec![Layer(vec![Item::file(
            "/bin/busybox",
            support::busybox(deb),
            0o755,
        )])],
    )
}

fn findings(d: &serde_json::Value) -> Vec<String> {
    d["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| f["code"].as_str().unwrap_or("").to_string())
        .collect()
}

/// The multi-arch scenes: an index that holds both platforms with the other one forced on
/// this node (`ctr run --platform`), a tag that points to a single-arch image pulled from a
/// registry, and that tag again once the node also holds the multi-arch index the registry's
/// tag became. Same symptom, same verdict; the fix code names each cause.
#[test]
fn a_forced_platform_and_a_stale_tag_get_the_fix_that_fits() {
    let _binfmt = support::binfmt_shared();
    let mut ctd = Containerd::start();
    let reg = archwatch::lab::Registry::start().expect("docker-registry (scripts/install-deps)");
    let work = tempfile::tempdir().unwrap();
    let agent = Agent::start(&ctd.socket, &[]);
    agent.wait_ready();

    // An index of linux/amd64 and linux/arm64, each with its own binary.
    let mut l = Layout::new();
    let amd = l.add_image(&busybox_image("amd64", "amd64")).unwrap();
    let arm = l.add_image(&busybox_image("arm64", "arm64")).unwrap();
    let idx = l.add_index(vec![amd, arm]).unwrap();
    let orders = "archwatch.test/orders:3.0";
    l.tag(orders, &idx);
    let archive = work.path().join("orders.tar");
    l.write_archive(&archive).unwrap();
    ctd.import(NS, &archive);

    // The node's own variant first: it runs, and its verdict is cached.
    let native = ctd.run(
        NS,
        orders,
        "native-1",
        &pod_labels("native", "app"),
        Duration::from_secs(30),
    );
    assert_eq!(native.code, Some(0), "{native:?}");
    // The same image with the arm64 variant forced: judged on its own layers, not taken
    // for the cached verdict of the node's variant.
    let forced = ctd.run_platform(
        NS,
        orders,
        "forced-1",
        &pod_labels("forced", "app"),
        "linux/arm64",
        Duration::from_secs(30),
    );
    assert_ne!(forced.code, Some(0), "{forced:?}");
    agent.wait_for(
        "the forced variant diagnosed",
        Duration::from_secs(20),
        || failure_for(&agent, "forced").is_some(),
    );
    let d = failure_for(&agent, "forced").unwrap();
    assert_eq!(d["verdict"], "arch_mismatch", "{d}");
    assert_eq!(d["binary_arch"], "arm64");
    assert_eq!(d["fix_code"], "remove_platform_override", "{d}");
    assert_eq!(findings(&d), vec!["platform_forced"], "{d}");
    let fix = d["fix"].as_str().unwrap();
    let by_digest = format!("archwatch.test/orders@{}", idx.digest());
    assert!(
        fix.contains("--platform") && fix.contains(&by_digest) && !fix.contains("Publish"),
        "the fix names the override and the digest to pull by: {fix}"
    );
    assert!(failure_for(&agent, "native").is_none());

    // A tag that points to a single-arch linux/arm64 image, in a registry.
    let api_image = |arch: &str, deb: &str| {
        ImageSpec::new(
            arch,
            &["/app", "true"],
            vec![Layer(vec![Item::file(
                "/app",
                support::busybox(deb),
                0o755,
            )])],
        )
    };
    let mut l = Layout::new();
    let m = l.add_image(&api_image("arm64", "arm64")).unwrap();
    let a = l.add_image(&api_image("amd64", "amd64")).unwrap();
    let multi = l.add_index(vec![a, m.clone()]).unwrap();
    l.tag("archwatch.test/api:1.0", &m);
    l.tag("archwatch.test/api:multi", &multi);
    let archive = work.path().join("api.tar");
    l.write_archive(&archive).unwrap();
    let api = reg
        .push_as(&archive, "1.0", "shop/api", "1.0")
        .expect("push");
    // Like `docker pull`, whatever its platform (ctr refuses a foreign one otherwise).
    let out = ctd.ctr_ns(
        NS,
        &[
            "images",
            "pull",
            "--plain-http",
            "--platform",
            "linux/arm64",
            &api,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = ctd.run(
        NS,
        &api,
        "single-1",
        &pod_labels("single", "app"),
        Duration::from_secs(30),
    );
    assert_ne!(r.code, Some(0));
    agent.wait_for(
        "the single-arch tag diagnosed",
        Duration::from_secs(20),
        || failure_for(&agent, "single").is_some(),
    );
    let d = failure_for(&agent, "single").unwrap();
    assert_eq!(d["verdict"], "arch_mismatch", "{d}");
    assert_eq!(d["fix_code"], "publish_multiarch", "{d}");
    assert!(findings(&d).is_empty(), "no index on the node yet: {d}");

    // The registry's tag becomes the multi-arch index that lists that very manifest, and the
    // node pulls the index by digest (another deployment); the tag on the node is the old
    // copy.
    reg.push_as(&archive, "multi", "shop/api", "1.0")
        .expect("push the index over the tag");
    let index_ref = format!("{}/shop/api@{}", reg.addr, multi.digest());
    let out = ctd.ctr_ns(NS, &["images", "pull", "--plain-http", &index_ref]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    agent.wait_for("the index judged", Duration::from_secs(30), || {
        let out = support::archwatch()
            .args(["status", "--json", "--api-socket"])
            .arg(&agent.api_socket)
            .output()
            .unwrap();
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        st["images"]
            .as_array()
            .is_some_and(|i| i.iter().any(|i| i["digest"] == multi.digest().to_string()))
    });
    let r = ctd.run(
        NS,
        &api,
        "stale-1",
        &pod_labels("stale", "app"),
        Duration::from_secs(30),
    );
    assert_ne!(r.code, Some(0));
    agent.wait_for("the stale tag diagnosed", Duration::from_secs(20), || {
        failure_for(&agent, "stale").is_some()
    });
    let d = failure_for(&agent, "stale").unwrap();
    assert_eq!(d["verdict"], "arch_mismatch", "{d}");
    assert_eq!(d["fix_code"], "deploy_by_digest", "{d}");
    assert_eq!(findings(&d), vec!["stale_image"], "{d}");
    let fix = d["fix"].as_str().unwrap();
    assert!(
        fix.contains(&format!("{}/shop/api@{}", reg.addr, multi.digest()))
            && fix.contains("imagePullPolicy: Always"),
        "{fix}"
    );
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
