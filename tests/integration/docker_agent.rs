//! The agent following Docker Engine: a Docker socket that answers garbage, or nothing at
//! all, is a clear error, counted, retried with backoff, and the containerd side goes on.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use archwatch::oci::{ImageSpec, Item, Layer};

use crate::support::{self, agent::Agent, containerd::Containerd};

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
