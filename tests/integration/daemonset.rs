//! The agent as the shipped DaemonSet runs it (support::pod): the manifest's capabilities,
//! no_new_privs, read-only root and hostPath mounts, against a real containerd that restarts
//! under it. A change to `manifests/` that takes away what the agent needs fails here.

use std::time::{Duration, Instant};

use archwatch::oci::{ImageSpec, Item, Layer};

use crate::support::{
    self,
    containerd::Containerd,
    manifests,
    pod::{self, ContainerSpec, HostMount, NodePaths, PodAgent},
};

const NS: &str = "k8s.io";

fn import(ctd: &mut Containerd, _dir: &std::path::Path, tag: &str, spec: &ImageSpec) {
    ctd.import_spec(NS, tag, spec);
}

/// Runs `tag` as pod `pod`, checks the runtime's own words, and waits for the agent's
/// diagnosis.
fn run_and_diagnose(
    ctd: &mut Containerd,
    agent: &mut PodAgent,
    tag: &str,
    pod: &str,
    runtime_says: &str,
) -> serde_json::Value {
    let out = ctd.run(
        NS,
        tag,
        &support::unique(pod),
        &labels(pod),
        Duration::from_secs(20),
    );
    assert!(
        out.output.contains(runtime_says),
        "the runtime's own words on {pod}: {}",
        out.output
    );
    agent.wait_for(
        &format!("the diagnosis of {pod}"),
        Duration::from_secs(20),
        |a| failure(a, pod).is_some(),
    );
    failure(agent, pod).unwrap()
}

fn labels(pod: &str) -> Vec<(&str, &str)> {
    vec![
        ("io.kubernetes.pod.name", pod),
        ("io.kubernetes.pod.namespace", "shop"),
        (
            "io.kubernetes.pod.uid",
            "3f1c2a9e-0000-4000-8000-00000000d5e7",
        ),
        ("io.kubernetes.container.name", "app"),
    ]
}

fn node(ctd: &Containerd, scratch: &std::path::Path) -> NodePaths {
    let run_dir = ctd.socket.parent().expect("socket dir").to_path_buf();
    NodePaths::lab(&run_dir, &ctd.root(), scratch)
}

/// The shipped DaemonSet's container spec (the base rendering).
fn shipped() -> ContainerSpec {
    ContainerSpec::from_daemonset(&manifests::daemonset(manifests::BASE))
}

/// A lab containerd and the agent started as `spec` says, ready.
fn start(spec: &ContainerSpec, extra: &[&str]) -> (Containerd, tempfile::TempDir, PodAgent) {
    let ctd = Containerd::start();
    let scratch = tempfile::tempdir().unwrap();
    let mut agent = PodAgent::start(spec, &node(&ctd, scratch.path()), extra);
    agent.wait_ready();
    (ctd, scratch, agent)
}

fn failure(a: &PodAgent, pod: &str) -> Option<serde_json::Value> {
    a.lines()
        .into_iter()
        .find(|l| l["kind"] == "exec_failure" && l["pod"] == pod)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Runs an arm64 image as pod `pod` and waits for the agent's diagnosis.
fn wrong_arch_is_diagnosed(
    ctd: &mut Containerd,
    agent: &mut PodAgent,
    dir: &std::path::Path,
    pod: &str,
) {
    let tag = format!("archwatch.test/{pod}:v1");
    import(
        ctd,
        dir,
        &tag,
        &ImageSpec::new(
            "arm64",
            &["/app"],
            vec![Layer(vec![Item::file(
                "/app",
                support::busybox("arm64"),
                0o755,
            )])],
        ),
    );
    let d = run_and_diagnose(ctd, agent, &tag, pod, "exec format error");
    assert_eq!(d["verdict"], "arch_mismatch");
    assert_eq!(d["binary_arch"], "arm64");
    assert_eq!(d["pod_namespace"], "shop");
}

#[test]
fn the_agent_runs_with_exactly_the_daemonsets_privileges_and_diagnoses() {
    let _binfmt = support::binfmt_shared();
    let spec = shipped();
    let (mut ctd, scratch, mut agent) = start(&spec, &[]);

    // What the kernel says the process has is what the manifest grants, nothing more.
    let eff = pod::decode_caps(&agent.status_field("CapEff").unwrap());
    let bnd = pod::decode_caps(&agent.status_field("CapBnd").unwrap());
    assert_eq!(sorted(eff), sorted(spec.caps.clone()));
    assert_eq!(sorted(bnd), sorted(spec.caps.clone()));
    assert_eq!(
        agent.status_field("NoNewPrivs").as_deref(),
        Some(if spec.no_new_privs { "1" } else { "0" })
    );
    let mountinfo =
        std::fs::read_to_string(format!("/proc/{}/mountinfo", agent.pid().unwrap())).unwrap();
    let root_opts = mountinfo
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.get(4) == Some(&"/"))
        .map(|f| f[5].to_string())
        .expect("the agent's root in its mountinfo");
    assert_eq!(
        root_opts.split(',').any(|o| o == "ro"),
        spec.read_only_root,
        "root mount options {root_opts}"
    );

    wrong_arch_is_diagnosed(&mut ctd, &mut agent, scratch.path(), "confined");
    assert_eq!(agent.stop(), Some(0), "SIGTERM drains and exits 0");
}

/// An upper layer that replaces /app with an opaque directory hides the lower layer's
/// /app/server: the kernel (and runc) say "no such file or directory". Read with the
/// DaemonSet's privileges, the agent must see the same merged tree.
#[test]
fn opaque_directories_are_judged_as_the_kernel_merges_them_under_the_daemonsets_privileges() {
    let _binfmt = support::binfmt_shared();
    let spec = shipped();
    let (mut ctd, scratch, mut agent) = start(&spec, &[]);

    assert_eq!(agent.metric("archwatch_overlay_xattrs_readable", &[]), 1.0);
    // Lower /app/server is runnable (amd64) or not (arm64); either way the opaque upper /app
    // hides it.
    for (pod, lower_arch) in [
        ("opaque-hides-native", "amd64"),
        ("opaque-hides-foreign", "arm64"),
    ] {
        let tag = import_opaque(&mut ctd, scratch.path(), pod, lower_arch);
        let d = run_and_diagnose(&mut ctd, &mut agent, &tag, pod, "no such file or directory");
        assert_eq!(d["verdict"], "not_found", "{pod}: {d}");
    }
}

/// An image whose upper layer makes /app opaque over a lower /app/server of `lower_arch`.
fn import_opaque(
    ctd: &mut Containerd,
    dir: &std::path::Path,
    pod: &str,
    lower_arch: &str,
) -> String {
    let tag = format!("archwatch.test/{pod}:v1");
    import(
        ctd,
        dir,
        &tag,
        &ImageSpec::new(
            "amd64",
            &["/app/server"],
            vec![
                Layer(vec![
                    Item::file("/bin/busybox", support::busybox("amd64"), 0o755),
                    Item::file("/app/server", support::busybox(lower_arch), 0o755),
                ]),
                Layer(vec![
                    Item::dir("/app"),
                    Item::Opaque { dir: "/app".into() },
                    Item::file("/app/README", b"replaced\n".to_vec(), 0o644),
                ]),
            ],
        ),
    );
    tag
}

/// Take SYS_ADMIN away from the DaemonSet and the agent says what it cannot see: the gauge
/// is 0, a warning is logged, and a verdict that went through a directory that may be opaque
/// carries the finding instead of a silent merge.
#[test]
fn without_sys_admin_the_daemonset_agent_says_it_cannot_see_opaque_directories() {
    let _binfmt = support::binfmt_shared();
    let mut spec = shipped();
    assert!(
        spec.caps.iter().any(|c| c == "cap_sys_admin"),
        "the DaemonSet grants SYS_ADMIN for overlay attributes"
    );
    spec.caps.retain(|c| c != "cap_sys_admin");
    let (mut ctd, scratch, mut agent) = start(&spec, &[]);
    assert_eq!(agent.metric("archwatch_overlay_xattrs_readable", &[]), 0.0);
    assert!(
        agent.log_text().contains("SYS_ADMIN"),
        "the warning names what to grant:\n{}",
        agent.log_text()
    );
    let pod = "opaque-unseen";
    let tag = import_opaque(&mut ctd, scratch.path(), pod, "arm64");
    ctd.run(
        NS,
        &tag,
        &support::unique(pod),
        &labels(pod),
        Duration::from_secs(20),
    );
    agent.wait_for("the diagnosis", Duration::from_secs(20), |a| {
        failure(a, pod).is_some()
    });
    let d = failure(&agent, pod).unwrap();
    let findings: Vec<&str> = d["findings"]
        .as_array()
        .map(|f| f.iter().filter_map(|x| x["code"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        findings.contains(&"overlay_opaque_unknown"),
        "the merge is reported uncertain: {d}"
    );
}

/// containerd removes and re-creates its socket on every start. Through the socket's
/// directory (as the DaemonSet mounts it) the agent reaches the new one by itself, after a
/// graceful restart and after a crash, and goes on diagnosing.
#[test]
fn containerd_restarts_are_followed_through_the_socket_directory() {
    let _binfmt = support::binfmt_shared();
    let spec = shipped();
    let (mut ctd, scratch, mut agent) = start(&spec, &[]);
    // The inode number may be reused; with its change time it names one file.
    let inode = |p: &std::path::Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p)
            .map(|m| (m.ino(), m.ctime(), m.ctime_nsec()))
            .unwrap_or_default()
    };
    for (round, graceful) in [(1, true), (2, false)] {
        let before = inode(&ctd.socket);
        if graceful {
            ctd.restart_graceful();
        } else {
            ctd.restart();
        }
        assert_ne!(before, inode(&ctd.socket), "a new socket, as on a node");
        agent.wait_for("reconnected", Duration::from_secs(30), |a| {
            a.metric("archwatch_containerd_reconnects_total", &[]) >= round as f64
                && a.metric("archwatch_containerd_connected", &[]) == 1.0
        });
        wrong_arch_is_diagnosed(
            &mut ctd,
            &mut agent,
            scratch.path(),
            &format!("after-restart-{round}"),
        );
        assert_eq!(agent.get("/healthz").map(|r| r.0), Some(200));
    }
}

/// The same restart with the socket FILE bind-mounted (what the DaemonSet once did): the
/// mount keeps the dead inode, the agent can never reconnect, and `/healthz` fails after
/// the bound so that the kubelet restarts the pod.
#[test]
fn a_bind_mounted_socket_file_strands_the_agent_and_healthz_says_so() {
    let _binfmt = support::binfmt_shared();
    let mut ctd = Containerd::start();
    let scratch = tempfile::tempdir().unwrap();
    let mut spec = ContainerSpec::from_daemonset(&manifests::daemonset(manifests::BASE));
    let address = spec.arg("address").expect("--address in the manifest");
    spec.mounts
        .retain(|m| !std::path::Path::new(&address).starts_with(&m.mount_path));
    spec.mounts.push(HostMount {
        volume: "containerd-socket".into(),
        host_path: address.clone().into(),
        host_type: Some("Socket".into()),
        mount_path: address.clone().into(),
        read_only: false,
        propagation: None,
    });
    let mut agent = PodAgent::start(
        &spec,
        &node(&ctd, scratch.path()),
        &["--unhealthy-after-secs=2"],
    );
    agent.wait_ready();
    assert_eq!(agent.get("/healthz").map(|r| r.0), Some(200));
    let t0 = Instant::now();
    ctd.restart_graceful();
    agent.wait_for("/healthz to fail", Duration::from_secs(20), |a| {
        a.get("/healthz").map(|r| r.0) == Some(503)
    });
    assert!(
        t0.elapsed() >= Duration::from_secs(2),
        "not before the bound"
    );
    assert_eq!(agent.metric("archwatch_containerd_connected", &[]), 0.0);
    assert_eq!(agent.get("/readyz").map(|r| r.0), Some(503));
}

/// The release matrix is real: the lab's containerd server reports the version of the
/// release `ARCHWATCH_CONTAINERD_DIR` names (Debian's 1.6 when unset).
#[test]
fn the_lab_runs_the_containerd_release_the_matrix_names() {
    let ctd = Containerd::start();
    let want = archwatch::lab::Binaries::from_env().unwrap();
    let out = ctd.ctr_ns("default", &["version"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let server = text
        .split("Server:")
        .nth(1)
        .and_then(|s| s.lines().find_map(|l| l.trim().strip_prefix("Version:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no server version in {text}"));
    let (a, b, c) = want.version;
    assert!(
        server
            .trim_start_matches('v')
            .starts_with(&format!("{a}.{b}.{c}")),
        "server {server}, release {}",
        want.version_string()
    );
    if std::env::var_os("ARCHWATCH_CONTAINERD_DIR").is_some() {
        assert!(want.dir.is_some());
    }
    eprintln!("containerd server {server}");
}

/// The agent connects while containerd emits well over 100 events a second: the Subscribe
/// call is answered at once (an event is already there), and that open stream is kept — no
/// reconnect — and every image created in the storm reaches the agent through the listing
/// or an event.
#[test]
fn connecting_during_an_event_storm_keeps_the_stream_and_misses_nothing() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let mut ctd = Containerd::start();
    let scratch = tempfile::tempdir().unwrap();
    import(
        &mut ctd,
        scratch.path(),
        "archwatch.test/storm:v0",
        &ImageSpec::new(
            "amd64",
            &["/bin/busybox", "true"],
            vec![Layer(vec![Item::file(
                "/bin/busybox",
                support::busybox("amd64"),
                0o755,
            )])],
        ),
    );
    let running = Arc::new(AtomicBool::new(true));
    let images = Arc::new(AtomicUsize::new(0));
    let published = Arc::new(AtomicUsize::new(0));
    let storm = {
        let (running, images, published, socket) = (
            running.clone(),
            images.clone(),
            published.clone(),
            ctd.socket.clone(),
        );
        std::thread::spawn(move || event_storm(&socket, &running, &images, &published, 200.0))
    };
    // The storm is under way before the agent connects.
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let before = images.load(Ordering::SeqCst) + published.load(Ordering::SeqCst);
    let agent = support::agent::Agent::start(&ctd.socket, &[]);
    agent.wait_ready();
    std::thread::sleep(Duration::from_secs(2));
    running.store(false, Ordering::SeqCst);
    storm.join().unwrap();
    let events = images.load(Ordering::SeqCst) + published.load(Ordering::SeqCst) - before;
    let rate = events as f64 / t0.elapsed().as_secs_f64();
    assert!(rate >= 100.0, "the storm reached only {rate:.0} events/s");
    let total = 1 + images.load(Ordering::SeqCst);
    let log = strip_ansi(&agent.log_text());
    let listed: usize = log
        .lines()
        .find(|l| l.contains("Connected to containerd."))
        .and_then(|l| l.split("images=").nth(1))
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or_else(|| panic!("no listing in the log:\n{log}"));
    agent.wait_for("the storm's events", Duration::from_secs(20), || {
        let seen = agent.metric(
            "archwatch_containerd_events_total",
            &[("topic", "/images/create")],
        ) as usize;
        listed + seen >= total
    });
    assert_eq!(
        agent.metric("archwatch_containerd_reconnects_total", &[]),
        0.0
    );
    assert!(
        !log.contains("connection lost"),
        "the first stream was kept:\n{log}"
    );
    assert!(
        agent.metric("archwatch_containerd_events_total", &[("topic", "other")]) > 0.0,
        "the published storm reached the agent"
    );
    eprintln!("storm: {rate:.0} events/s, {listed} images listed at connect, {total} in all");
}

/// Until `running` is cleared, through containerd's API: image records created (new names
/// for one image, one `/images/create` event each, as fast as containerd commits them) and
/// events published on a topic of its own at `per_second` (containerd fans them out to every
/// subscriber without a database write).
fn event_storm(
    socket: &std::path::Path,
    running: &std::sync::atomic::AtomicBool,
    images: &std::sync::atomic::AtomicUsize,
    published: &std::sync::atomic::AtomicUsize,
    per_second: f64,
) {
    use containerd_client::services::v1::events_client::EventsClient;
    use containerd_client::services::v1::images_client::ImagesClient;
    use containerd_client::services::v1::{CreateImageRequest, GetImageRequest, PublishRequest};
    use std::sync::atomic::Ordering;
    fn ns<T>(body: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(body);
        r.metadata_mut()
            .insert("containerd-namespace", NS.parse().unwrap());
        r
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let channel = containerd_client::connect(socket).await.unwrap();
        let mut c = ImagesClient::new(channel.clone());
        let mut image = c
            .get(ns(GetImageRequest {
                name: "archwatch.test/storm:v0".into(),
            }))
            .await
            .unwrap()
            .into_inner()
            .image
            .unwrap();
        let creator = async {
            let mut i = 0;
            while running.load(Ordering::SeqCst) {
                image.name = format!("archwatch.test/storm:n{i}");
                c.create(ns(CreateImageRequest {
                    image: Some(image.clone()),
                    source_date_epoch: None,
                }))
                .await
                .unwrap();
                images.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
        };
        let publisher = async {
            let mut e = EventsClient::new(channel.clone());
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
            while running.load(Ordering::SeqCst) {
                tick.tick().await;
                e.publish(ns(PublishRequest {
                    topic: "/archwatch-test/storm".into(),
                    event: Some(prost_types::Any {
                        type_url: "type.googleapis.com/google.protobuf.Empty".into(),
                        value: Vec::new(),
                    }),
                }))
                .await
                .unwrap();
                published.fetch_add(1, Ordering::SeqCst);
            }
        };
        tokio::join!(creator, publisher);
    });
}

/// The log without terminal colour codes.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The k3s and RKE2 renderings run as they would on those distributions: their socket
/// directory and containerd root (here the lab's) are mounted where their args point, and the
/// agent diagnoses through them.
#[test]
fn the_k3s_and_rke2_renderings_reach_their_containerd() {
    let _binfmt = support::binfmt_shared();
    for overlay in ["k3s", "rke2"] {
        let spec = ContainerSpec::from_daemonset(&manifests::daemonset(overlay));
        let address = spec.arg("address").unwrap();
        assert!(
            address.starts_with("/run/k3s/containerd/"),
            "{overlay}: --address={address}"
        );
        let (mut ctd, scratch, mut agent) = start(&spec, &[]);
        wrong_arch_is_diagnosed(
            &mut ctd,
            &mut agent,
            scratch.path(),
            &format!("on-{overlay}"),
        );
    }
}

/// The exec-tracer component's DaemonSet (CAP_BPF and CAP_PERFMON added, tracefs and the
/// host's cgroup hierarchy mounted, `--exec-tracer=on`): the tracer starts with exactly
/// those privileges and reports a running pod's failing helper.
#[test]
fn the_exec_tracer_runs_with_the_components_privileges_and_reports_a_running_pod() {
    let _fs = crate::tracer::tracefs();
    let spec = ContainerSpec::from_daemonset(&manifests::daemonset("exec-tracer"));
    assert_eq!(spec.arg("exec-tracer").as_deref(), Some("on"));
    let mut ctd = Containerd::start();
    let scratch = tempfile::tempdir().unwrap();
    let node = node(&ctd, scratch.path())
        .with(
            "/sys/kernel/tracing",
            std::path::Path::new("/sys/kernel/tracing"),
        )
        .with("/sys/fs/cgroup", std::path::Path::new("/sys/fs/cgroup"));
    let mut agent = PodAgent::start(&spec, &node, &[]);
    agent.wait_ready();
    let eff = pod::decode_caps(&agent.status_field("CapEff").unwrap());
    assert_eq!(sorted(eff), sorted(spec.caps.clone()));
    assert_eq!(agent.metric("archwatch_exec_tracer_up", &[]), 1.0);

    let tag = "archwatch.test/traced:v1";
    import(
        &mut ctd,
        scratch.path(),
        tag,
        &ImageSpec::new(
            "amd64",
            &["/bin/sh"],
            vec![Layer(vec![
                Item::file("/bin/busybox", support::busybox("amd64"), 0o755),
                Item::symlink("/bin/sh", "busybox"),
                Item::symlink("/bin/sleep", "busybox"),
                Item::file("/probe", support::busybox("arm64"), 0o755),
            ])],
        ),
    );
    let id = support::unique("traced");
    let mut args = vec!["run", "-d"];
    let lbl: Vec<String> = labels(&id)
        .iter()
        .map(|(k, v)| format!("--label={k}={v}"))
        .collect();
    args.extend(lbl.iter().map(String::as_str));
    args.extend([
        tag,
        &id,
        "/bin/sh",
        "-c",
        "while true; do /probe; sleep 0.5; done",
    ]);
    let out = ctd.ctr_ns("k8s.io", &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    agent.wait_for("the probe's exec error", Duration::from_secs(30), |a| {
        a.lines()
            .iter()
            .any(|l| l["kind"] == "exec_error" && l["pod"] == id.as_str())
    });
    let e = agent
        .lines()
        .into_iter()
        .find(|l| l["kind"] == "exec_error" && l["pod"] == id.as_str())
        .unwrap();
    assert_eq!(e["verdict"], "arch_mismatch", "{e}");
    assert_eq!(e["path"], "/probe", "{e}");
    assert_eq!(e["errno"], "ENOEXEC", "{e}");
    let _ = ctd.ctr_ns("k8s.io", &["tasks", "kill", "-s", "SIGKILL", &id]);
    assert_eq!(agent.stop(), Some(0));
}
