//! The agent following Docker Engine: a Docker socket that answers garbage, or nothing at
//! all, is a clear error, counted, retried with backoff, and the containerd side goes on.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use archwatch::oci::{ImageSpec, Item, Layer};

use crate::support::{self, agent::Agent, containerd::Containerd, docker::Dockerd};

/// A unix socket that accepts and then never says a byte (a hung daemon).
fn silent_socket(path: &std::path::Path) {
    let l = UnixListener::bind(path).expect("bind silent socket");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
}

/// A unix socket that answers every request with bytes that are not HTTP.
fn garbage_socket(path: &std::path::Path) {
    let l = UnixListener::bind(path).expect("bind garbage socket");
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"\x00\xff\xfeSSH-2.0-not-docker\r\n\r\n{{{{");
        }
    });
}

#[test]
fn a_docker_socket_that_hangs_or_speaks_garbage_is_counted_and_containerd_goes_on() {
    let mut ctd = Containerd::start();
    let work = tempfile::tempdir().unwrap();
    ctd.import_spec(
        "k8s.io",
        "archwatch.test/docker-hostile:v1",
        &ImageSpec::new(
            "arm64",
            &["/app", "true"],
            vec![Layer(vec![Item::file(
                "/app",
                support::busybox("arm64"),
                0o755,
            )])],
        ),
    );
    for (name, bad, kind) in [
        (
            "silent",
            silent_socket as fn(&std::path::Path),
            "docker_timeout",
        ),
        ("garbage", garbage_socket, "docker_unreachable"),
    ] {
        let sock = work.path().join(format!("{name}.sock"));
        bad(&sock);
        let host = format!("unix://{}", sock.display());
        let agent = Agent::start(
            &ctd.socket,
            &[
                "--docker-host",
                &host,
                "--docker-request-timeout-secs",
                "1",
                "--unhealthy-after-secs",
                "3",
            ],
        );
        // containerd is followed whatever Docker does.
        agent.wait_for("containerd connected", Duration::from_secs(20), || {
            agent.metric("archwatch_containerd_connected", &[]) == 1.0
        });
        let id = support::unique(&format!("dk-{name}"));
        let out = ctd.run(
            "k8s.io",
            "archwatch.test/docker-hostile:v1",
            &id,
            &[
                ("io.kubernetes.pod.name", id.as_str()),
                ("io.kubernetes.pod.namespace", "shop"),
                ("io.kubernetes.container.name", "app"),
            ],
            Duration::from_secs(20),
        );
        assert_ne!(out.code, Some(0), "{name}: the arm64 container fails");
        agent.wait_for(
            "the containerd failure diagnosed",
            Duration::from_secs(20),
            || agent.failures().iter().any(|f| f["pod"] == id.as_str()),
        );
        let f = agent
            .failures()
            .into_iter()
            .find(|f| f["pod"] == id.as_str())
            .unwrap();
        assert_eq!(f["verdict"], "arch_mismatch", "{name}");
        assert_eq!(f["runtime"], "containerd", "{name}");
        // Docker: counted by kind, retried with backoff, never connected.
        agent.wait_for(
            "Docker failures counted and retried",
            Duration::from_secs(20),
            || agent.metric("archwatch_inspection_errors_total", &[("kind", kind)]) >= 2.0,
        );
        assert_eq!(
            agent.metric("archwatch_docker_connected", &[]),
            0.0,
            "{name}"
        );
        assert_eq!(
            agent.metric("archwatch_docker_reconnects_total", &[]),
            0.0,
            "{name}"
        );
        // Past --unhealthy-after-secs without Docker, /healthz says so (and names it);
        // /readyz is not ready while a followed runtime is away.
        agent.wait_for("/healthz fails", Duration::from_secs(10), || {
            agent.get("/healthz").is_some_and(|(code, _)| code == 503)
        });
        let (_, body) = agent.get("/healthz").unwrap();
        assert!(body.contains("docker"), "{name}: {body}");
        assert_eq!(agent.get("/readyz").map(|(c, _)| c), Some(503), "{name}");
        let log = agent.log_text();
        assert!(
            log.contains("Docker connection lost") || log.contains("Docker still unreachable"),
            "{name}: the log says what is wrong"
        );
        assert!(!log.contains("panicked"), "{name}: {log}");
    }
}

/// One seed scene on Docker: how it is built, how it is run, and what the agent must say.
struct Scene {
    name: &'static str,
    /// The verdict and fix code the journal must carry (`None`: a healthy container, silent).
    want: Option<(&'static str, &'static str)>,
    /// What `docker run` exits with.
    docker_exit: i32,
}

/// Reads the agent's gRPC stream (replay, no follow).
fn stream(sock: &std::path::Path) -> Vec<archwatch::sinks::api::pb::Diagnosis> {
    use archwatch::sinks::api::{self, pb};
    use futures::StreamExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = api::connect(sock).await.expect("API socket");
        c.watch_diagnoses(pb::WatchDiagnosesRequest {
            replay: 100,
            no_follow: true,
        })
        .await
        .expect("watch")
        .into_inner()
        .map(|d| d.expect("diagnosis"))
        .collect()
        .await
    })
}

#[test]
fn the_agent_follows_docker_engine_through_every_seed_scene() {
    let _binfmt = support::binfmt_shared();
    let d = Dockerd::start();
    let host = d.host();
    let bb = support::busybox("amd64");
    let arm = support::busybox("arm64");
    let glibc_true = std::fs::read("/bin/true").unwrap();
    let musl = support::musl_loader();

    // One image before the agent: its warning comes from the first listing.
    d.load(
        "aw/wrong-arch:1",
        &ImageSpec::new(
            "arm64",
            &["/bin/app"],
            vec![Layer(vec![Item::file("/bin/app", arm.clone(), 0o755)])],
        ),
    );
    let mut agent = Agent::start(std::path::Path::new("off"), &["--docker-host", &host]);
    agent.wait_for("Docker connected", Duration::from_secs(30), || {
        agent.metric("archwatch_docker_connected", &[]) == 1.0
    });
    assert!(agent.get("/readyz").is_some_and(|(c, _)| c == 200));
    // Built while the agent watches: warned at build, before anything runs.
    d.build(
        "aw/config-lies:1",
        &[("bin/app", &arm, 0o755)],
        &["COPY bin/app /bin/app", r#"ENTRYPOINT ["/bin/app"]"#],
    );
    d.build(
        "aw/crlf:1",
        &[
            ("bin/sh", &bb, 0o755),
            ("app.sh", b"#!/bin/sh\r\necho started\r\n", 0o755),
        ],
        &[
            "COPY bin/sh /bin/sh",
            "COPY app.sh /app.sh",
            r#"ENTRYPOINT ["/app.sh"]"#,
        ],
    );
    d.build(
        "aw/glibc-on-musl:1",
        &[
            ("bin/true", &glibc_true, 0o755),
            ("lib/ld-musl-x86_64.so.1", &musl, 0o755),
        ],
        &[
            "COPY bin/ /bin/",
            "COPY lib/ /lib/",
            r#"ENTRYPOINT ["/bin/true"]"#,
        ],
    );
    d.build(
        "aw/missing:1",
        &[("bin/busybox", &bb, 0o755)],
        &["COPY bin/busybox /bin/busybox", r#"ENTRYPOINT ["/nope"]"#],
    );
    d.build(
        "aw/healthy:1",
        &[("bin/busybox", &bb, 0o755)],
        &[
            "COPY bin/busybox /bin/busybox",
            r#"ENTRYPOINT ["/bin/busybox", "true"]"#,
        ],
    );
    let images = || -> Vec<serde_json::Value> {
        agent
            .lines()
            .into_iter()
            .filter(|l| l["kind"] == "image")
            .collect()
    };
    agent.wait_for(
        "a warning per unrunnable image",
        Duration::from_secs(30),
        || images().len() >= 5,
    );
    let warned: Vec<(String, String)> = images()
        .iter()
        .map(|l| {
            (
                l["image"].as_str().unwrap().to_string(),
                l["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (image, verdict) in [
        ("aw/wrong-arch:1", "arch_mismatch"),
        ("aw/config-lies:1", "arch_mismatch"),
        ("aw/crlf:1", "script_crlf"),
        ("aw/glibc-on-musl:1", "missing_loader"),
        ("aw/missing:1", "not_found"),
    ] {
        assert!(
            warned.contains(&(image.to_string(), verdict.to_string())),
            "{image} warned as {verdict}: {warned:?}"
        );
    }
    assert!(
        images().iter().all(|l| l["runtime"] == "docker"),
        "{:?}",
        images()
    );
    assert!(
        !warned.iter().any(|(i, _)| i == "aw/healthy:1"),
        "a healthy image is silent"
    );

    let scenes = [
        Scene {
            name: "wrong-arch",
            want: Some(("arch_mismatch", "publish_multiarch")),
            docker_exit: 1,
        },
        Scene {
            name: "config-lies",
            want: Some(("arch_mismatch", "fix_build_stage")),
            docker_exit: 1,
        },
        Scene {
            name: "crlf",
            want: Some(("script_crlf", "convert_to_lf")),
            docker_exit: 1,
        },
        Scene {
            name: "glibc-on-musl",
            want: Some(("missing_loader", "use_glibc_base_or_static")),
            docker_exit: 1,
        },
        Scene {
            name: "missing",
            want: Some(("not_found", "fix_entrypoint_path")),
            docker_exit: 127,
        },
        Scene {
            name: "healthy",
            want: None,
            docker_exit: 0,
        },
    ];
    for s in &scenes {
        // Compose's labels name the project: the metric's namespace.
        let run = d.run(
            s.name,
            &format!("aw/{}:1", s.name),
            &[
                "--label",
                "com.docker.compose.project=shop",
                "--label",
                &format!("com.docker.compose.service={}", s.name),
            ],
        );
        assert_eq!(run.exit_code, Some(s.docker_exit), "{}: {run:?}", s.name);
    }
    let failing = scenes.iter().filter(|s| s.want.is_some()).count();
    // A create-time refusal has no Docker event: it is said after the create window (5 s).
    agent.wait_for(
        "every failing scene journaled",
        Duration::from_secs(30),
        || agent.failures().len() >= failing,
    );
    let failures = agent.failures();
    for s in &scenes {
        let got: Vec<&serde_json::Value> = failures
            .iter()
            .filter(|f| f["container"] == s.name)
            .collect();
        match s.want {
            None => assert!(got.is_empty(), "{}: {got:?}", s.name),
            Some((verdict, fix)) => {
                assert_eq!(got.len(), 1, "{}: once: {failures:#?}", s.name);
                let f = got[0];
                assert_eq!(f["verdict"], verdict, "{}", s.name);
                assert_eq!(f["fix_code"], fix, "{}", s.name);
                assert_eq!(f["runtime"], "docker", "{}", s.name);
                assert_eq!(f["compose_project"], "shop", "{}", s.name);
                assert_eq!(f["compose_service"], s.name, "{}", s.name);
                assert_eq!(f["containerd_namespace"], "moby", "{}", s.name);
                assert_eq!(f["image"], format!("aw/{}:1", s.name));
                if s.docker_exit == 127 {
                    assert_eq!(f["signal"], "task_never_created", "{}", s.name);
                    assert_eq!(f["exit_code"], 127, "State.ExitCode: {}", s.name);
                } else {
                    assert_eq!(f["signal"], "task_exit", "{}", s.name);
                    assert_eq!(f["exit_code"], s.docker_exit, "{}", s.name);
                }
            }
        }
    }
    // Metrics: counted under the compose project.
    assert_eq!(
        agent.metric(
            "archwatch_exec_failures_total",
            &[("namespace", "shop"), ("reason", "arch_mismatch")]
        ),
        2.0
    );
    assert_eq!(
        agent.metric(
            "archwatch_exec_failures_total",
            &[("namespace", "shop"), ("reason", "script_crlf")]
        ),
        1.0
    );
    // The API stream carries the same, with the runtime.
    let streamed = stream(&agent.api_socket);
    assert_eq!(streamed.len(), failing, "{streamed:?}");
    for p in &streamed {
        assert_eq!(p.runtime, "docker");
        assert_eq!(p.compose_project, "shop");
        let j = failures
            .iter()
            .find(|f| f["container"] == p.container.as_str())
            .unwrap();
        assert_eq!(j["verdict"], p.verdict.as_str());
        assert_eq!(j["fix_code"], p.fix_code.as_str());
    }

    // A container without compose labels counts under `docker`; one as a user that may not
    // exec a root-only binary fails as the kernel says, and the agent says why.
    d.build(
        "aw/root-only:1",
        &[("bin/busybox", &bb, 0o700)],
        &[
            "COPY bin/busybox /bin/busybox",
            r#"ENTRYPOINT ["/bin/busybox", "true"]"#,
        ],
    );
    let as_root = d.run("root-only-as-root", "aw/root-only:1", &[]);
    assert_eq!(as_root.exit_code, Some(0), "{as_root:?}");
    let as_user = d.run(
        "root-only-as-1000",
        "aw/root-only:1",
        &["--user", "1000:1000", "--cap-drop", "ALL"],
    );
    assert_ne!(as_user.exit_code, Some(0), "{as_user:?}");
    agent.wait_for(
        "the user's failure journaled",
        Duration::from_secs(20),
        || {
            agent
                .failures()
                .iter()
                .any(|f| f["container"] == "root-only-as-1000")
        },
    );
    let f = agent
        .failures()
        .into_iter()
        .find(|f| f["container"] == "root-only-as-1000")
        .unwrap();
    assert_eq!(f["verdict"], "not_executable", "{f}");
    assert!(
        !agent
            .failures()
            .iter()
            .any(|f| f["container"] == "root-only-as-root"),
        "root runs it"
    );
    // With Docker's default capabilities too: a non-root user has none, and Engine 20.10
    // refuses the start (126), as the agent says.
    let default_caps = d.run(
        "root-only-default-caps",
        "aw/root-only:1",
        &["--user", "1000:1000"],
    );
    assert_eq!(default_caps.exit_code, Some(126), "{default_caps:?}");
    agent.wait_for("the refusal journaled", Duration::from_secs(20), || {
        agent
            .failures()
            .iter()
            .any(|f| f["container"] == "root-only-default-caps")
    });
    let f = agent
        .failures()
        .into_iter()
        .find(|f| f["container"] == "root-only-default-caps")
        .unwrap();
    assert_eq!(f["verdict"], "not_executable", "{f}");
    assert_eq!(f["signal"], "task_never_created", "{f}");
    assert_eq!(f["exit_code"], 126, "State.ExitCode: {f}");
    assert_eq!(
        agent.metric(
            "archwatch_exec_failures_total",
            &[("namespace", "docker"), ("reason", "not_executable")]
        ),
        2.0,
        "{}",
        agent.metrics()
    );

    // `archwatch inspect --container` judges a dead container by name, from Docker's record:
    // its command, user and layers.
    for (name, verdict, code) in [
        ("config-lies", "arch_mismatch", 1),
        ("root-only-as-1000", "not_executable", 1),
        ("healthy", "ok", 0),
    ] {
        let out = support::archwatch()
            .args([
                "inspect",
                "--json",
                "--docker-host",
                &host,
                "--container",
                name,
            ])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{name}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
        assert_eq!(v["verdict"], verdict, "{name}: {v:#}");
        assert_eq!(out.status.code().map(|c| c != 0), Some(code != 0), "{name}");
    }
    let missing = support::archwatch()
        .args([
            "inspect",
            "--docker-host",
            &host,
            "--container",
            "no-such-container",
        ])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("No such container"),
        "{missing:?}"
    );

    // A restart (a rollout): Docker keeps the dead containers; nothing is said again.
    let before = agent.failures().len();
    let journal = agent.journal.clone();
    agent.stop();
    let mut again = Agent::start_with_journal(
        std::path::Path::new("off"),
        Some(&journal),
        &["--docker-host", &host],
        &[],
    );
    again.wait_for("Docker connected", Duration::from_secs(30), || {
        again.metric("archwatch_docker_connected", &[]) == 1.0
    });
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(again.failures().len(), before, "nothing re-reported");
    // A container that dies while no agent watches is reported from Docker's record.
    again.stop();
    let unwatched = d.run("while-away", "aw/wrong-arch:1", &[]);
    assert_eq!(unwatched.exit_code, Some(1));
    let third = Agent::start_with_journal(
        std::path::Path::new("off"),
        Some(&journal),
        &["--docker-host", &host],
        &[],
    );
    third.wait_for("the failure while away", Duration::from_secs(30), || {
        third
            .failures()
            .iter()
            .any(|f| f["container"] == "while-away")
    });
    let f = third
        .failures()
        .into_iter()
        .find(|f| f["container"] == "while-away")
        .unwrap();
    assert_eq!(f["signal"], "stopped_before_watch", "{f}");
    assert_eq!(f["verdict"], "arch_mismatch", "{f}");
    assert_eq!(third.failures().len(), before + 1, "only the new one");
    // Destroyed containers leave no state behind.
    assert!(status(&third.api_socket).tracked_containers >= 10);
    for s in scenes.iter().map(|s| s.name).chain([
        "root-only-as-root",
        "root-only-as-1000",
        "root-only-default-caps",
        "while-away",
    ]) {
        d.docker(&["rm", "-f", s]);
    }
    third.wait_for("no container tracked", Duration::from_secs(20), || {
        status(&third.api_socket).tracked_containers == 0
    });
}

fn status(sock: &std::path::Path) -> archwatch::sinks::api::pb::Status {
    use archwatch::sinks::api::{self, pb};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = api::connect(sock).await.expect("API socket");
        c.get_status(pb::GetStatusRequest {})
            .await
            .expect("status")
            .into_inner()
    })
}

#[test]
fn inspect_a_containerd_container_by_id() {
    let mut ctd = Containerd::start();
    ctd.import_spec(
        "k8s.io",
        "archwatch.test/inspect-container:v1",
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
    let id = support::unique("inspect-ctr");
    let out = ctd.ctr_ns(
        "k8s.io",
        &["run", "-d", "archwatch.test/inspect-container:v1", &id],
    );
    let _ = out;
    let listed = ctd.ctr_ns("k8s.io", &["containers", "ls", "-q"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains(&id),
        "the failed container is kept, as the kubelet keeps it"
    );
    let out = support::archwatch()
        .args(["inspect", "--json", "--address"])
        .arg(&ctd.socket)
        .args(["--namespace", "k8s.io", "--container", &id])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(v["verdict"], "arch_mismatch", "{v:#}");
    assert_eq!(v["argv"], serde_json::json!(["/app", "true"]), "{v:#}");
    assert_eq!(v["binary_arch"], "arm64", "{v:#}");
    assert_eq!(out.status.code(), Some(1));
}
