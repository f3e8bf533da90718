//! `archwatch demo`: the classic incidents, for real, on a private containerd.
//!
//! Builds images that reproduce them, imports them into a private containerd (never the
//! system one), runs the agent against it, runs each container with `ctr run`, and prints
//! what the runtime said beside what archwatch diagnosed. Everything it starts is stopped
//! and removed at the end, also on Ctrl-C.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::lab::{self, Containerd};
use crate::oci::{ImageSpec, Item, Layer, Layout};
use crate::pipeline::Windows;
use crate::platform::{Arch, Node};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("the demo runs as root (it starts containerd and runc): try sudo")]
    NotRoot,
    #[error(
        "{0} is missing; run scripts/demo (it installs packages and fixtures), or scripts/fixtures"
    )]
    Missing(String),
    #[error(transparent)]
    Lab(#[from] lab::LabError),
    #[error(transparent)]
    Oci(#[from] crate::oci::OciError),
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),
    #[error("interrupted")]
    Interrupted,
    #[error("the demo needs an amd64 or arm64 node, this is {0}")]
    Node(String),
}

impl DemoError {
    pub fn kind(&self) -> &'static str {
        match self {
            DemoError::NotRoot => "not_root",
            DemoError::Missing(_) => "missing",
            DemoError::Lab(e) => e.kind(),
            DemoError::Oci(e) => e.kind(),
            DemoError::Agent(_) => "agent",
            DemoError::Interrupted => "interrupted",
            DemoError::Node(_) => "node",
        }
    }
}

const NS: &str = "k8s.io";

struct Scenario {
    title: &'static str,
    pod: &'static str,
    image: String,
    /// Expected verdict (`None`: healthy, must stay silent).
    expect: Option<&'static str>,
    /// `ctr run --platform`: a variant forced on this node.
    platform: Option<String>,
    /// Warned about when pulled (the node's own variant of a multi-arch image is not).
    warned: bool,
}

fn say(s: impl AsRef<str>) {
    println!("{}", s.as_ref());
    let _ = std::io::stdout().flush();
}

fn fixture(dir: &Path, name: &str) -> Result<Vec<u8>, DemoError> {
    let p = dir.join(name);
    std::fs::read(&p).map_err(|_| DemoError::Missing(p.display().to_string()))
}

fn labels(pod: &str) -> Vec<(String, String)> {
    vec![
        ("io.kubernetes.pod.name".into(), pod.into()),
        ("io.kubernetes.pod.namespace".into(), "shop".into()),
        (
            "io.kubernetes.pod.uid".into(),
            format!("5f0c2a1e-0000-4000-8000-{:012x}", pod.len()),
        ),
        ("io.kubernetes.container.name".into(), "app".into()),
    ]
}

fn journal_lines(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn wait_line(
    journal: &Path,
    timeout: Duration,
    f: impl Fn(&serde_json::Value) -> bool,
) -> Option<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(l) = journal_lines(journal).into_iter().find(|l| f(l)) {
            return Some(l);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wrap(s: &str, width: usize, indent: &str) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for w in s.split_whitespace() {
        if !line.is_empty() && line.len() + w.len() + 1 > width {
            out.push_str(&line);
            out.push('\n');
            out.push_str(indent);
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(w);
    }
    out.push_str(&line);
    out
}

/// Runs the demo. `fixtures` is where scripts/fixtures put Debian's binaries.
pub async fn run(fixtures: PathBuf, stop: CancellationToken) -> Result<(), DemoError> {
    if !rustix::process::geteuid().is_root() {
        return Err(DemoError::NotRoot);
    }
    let node = Node::detect();
    let (native, foreign) = match node.arch {
        Arch::Amd64 => ("amd64", "arm64"),
        Arch::Arm64 => ("arm64", "amd64"),
        other => return Err(DemoError::Node(other.to_string())),
    };
    let bb_native = fixture(&fixtures, &format!("busybox-{native}"))?;
    let bb_foreign = fixture(&fixtures, &format!("busybox-{foreign}"))?;
    let host_true =
        std::fs::read("/usr/bin/true").map_err(|_| DemoError::Missing("/usr/bin/true".into()))?;
    let musl = fixture(&fixtures, "musl-amd64/lib/x86_64-linux-musl/libc.so")
        .ok()
        .filter(|_| node.arch == Arch::Amd64);
    let started = Instant::now();
    let uname = rustix::system::uname();
    say(format!(
        "archwatch demo — node linux/{} ({}), kernel {}",
        node.arch,
        node.arch.uname(),
        uname.release().to_string_lossy()
    ));
    say("Starting a private containerd + runc in a temp dir (the system containerd is not touched)...");
    let mut ctd = tokio::task::block_in_place(Containerd::start)?;
    let work = tempfile::Builder::new()
        .prefix("archwatch-demo-")
        .tempdir()
        .map_err(|e| lab::LabError::Io {
            what: "temp dir".into(),
            source: e,
        })?;
    let journal = work.path().join("timeline.jsonl");

    // The agent, in this process, watching that containerd.
    let agent_stop = stop.child_token();
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let cfg = crate::agent::Config {
        address: Some(ctd.socket.clone()),
        namespaces: vec![NS.into()],
        listen: Some(([127, 0, 0, 1], 0).into()),
        ..agent_config(&journal, &node)
    };
    let agent = tokio::spawn(crate::agent::run(cfg, agent_stop.clone(), Some(bound_tx)));
    let metrics_addr = bound_rx.await.ok();
    if let Some(a) = metrics_addr {
        let _ = METRICS.set(a);
    }
    say(format!(
        "Agent started: watching {} (namespace {NS}), metrics on http://{}/metrics",
        ctd.socket.display(),
        metrics_addr.map(|a| a.to_string()).unwrap_or_default()
    ));

    let mut scenarios: Vec<Scenario> = Vec::new();
    let mut build = |title: &'static str,
                     pod: &'static str,
                     tag: &str,
                     spec: ImageSpec,
                     expect: Option<&'static str>,
                     ctd: &mut Containerd|
     -> Result<(), DemoError> {
        say(format!("  building image {:<44} ({title})", tag));
        let mut l = Layout::new();
        let m = l.add_image(&spec)?;
        l.tag(tag, &m);
        let p = work.path().join(format!("{pod}.tar"));
        l.write_archive(&p)?;
        tokio::task::block_in_place(|| ctd.import(NS, &p))?;
        scenarios.push(Scenario {
            title,
            pod,
            image: tag.to_string(),
            expect,
            platform: None,
            warned: expect.is_some(),
        });
        Ok(())
    };
    say("Building and importing the incident images:");
    let bb = |b: &Vec<u8>| Item::file("/bin/busybox", b.clone(), 0o755);
    build(
        "an arm64 binary built on an Apple Silicon laptop",
        "checkout-5d8f",
        "registry.example/shop/checkout:1.4.2",
        ImageSpec::new(
            foreign,
            &["/bin/busybox", "true"],
            vec![Layer(vec![bb(&bb_foreign)])],
        ),
        Some("arch_mismatch"),
        &mut ctd,
    )?;
    build(
        "config says amd64, the multi-stage build copied the arm64 artifact",
        "payments-7c4b",
        "registry.example/shop/payments:2.0.0",
        ImageSpec::new(
            native,
            &["/app", "true"],
            vec![
                Layer(vec![bb(&bb_native)]),
                Layer(vec![Item::file("/app", bb_foreign.clone(), 0o755)]),
            ],
        ),
        Some("arch_mismatch"),
        &mut ctd,
    )?;
    build(
        "an entrypoint script saved with Windows line endings",
        "cart-9a1e",
        "registry.example/shop/cart:3.1.0",
        ImageSpec::new(
            native,
            &["/entrypoint.sh"],
            vec![Layer(vec![
                bb(&bb_native),
                Item::symlink("/bin/sh", "/bin/busybox"),
                Item::file(
                    "/entrypoint.sh",
                    b"#!/bin/sh\r\nexec /bin/busybox true\r\n".to_vec(),
                    0o755,
                ),
            ])],
        ),
        Some("script_crlf"),
        &mut ctd,
    )?;
    if let Some(musl) = &musl {
        build(
            "a glibc binary shipped in a musl (Alpine-style) image",
            "search-3f2d",
            "registry.example/shop/search:0.9.1",
            ImageSpec::new(
                native,
                &["/app"],
                vec![Layer(vec![
                    bb(&bb_native),
                    Item::file("/lib/x86_64-linux-musl/libc.so", musl.clone(), 0o755),
                    Item::symlink("/lib/ld-musl-x86_64.so.1", "/lib/x86_64-linux-musl/libc.so"),
                    Item::file("/app", host_true.clone(), 0o755),
                ])],
            ),
            Some("missing_loader"),
            &mut ctd,
        )?;
    }
    build(
        "a healthy image",
        "frontend-1b7c",
        "registry.example/shop/frontend:5.2.0",
        ImageSpec::new(
            native,
            &["/bin/busybox", "true"],
            vec![Layer(vec![bb(&bb_native)])],
        ),
        None,
        &mut ctd,
    )?;

    // A tag that points to a single-arch image, pushed to and pulled from a local registry.
    let registry = match tokio::task::block_in_place(lab::Registry::start) {
        Ok(r) => Some(r),
        Err(e) => {
            say(format!("  (skipping the registry scene: {e})"));
            None
        }
    };
    if let Some(reg) = &registry {
        say(format!("  pushing a single-arch linux/{foreign} image as :latest to the local registry {} and pulling it", reg.addr));
        let mut l = Layout::new();
        let m = l.add_image(&ImageSpec::new(
            foreign,
            &["/app", "true"],
            vec![Layer(vec![Item::file("/app", bb_foreign.clone(), 0o755)])],
        ))?;
        l.tag("latest", &m);
        let p = work.path().join("single-arch.tar");
        l.write_archive(&p)?;
        let reference = tokio::task::block_in_place(|| reg.push(&p, "latest", "shop/api"))?;
        // Like `docker pull`, take the image whatever its platform (ctr refuses otherwise).
        let out = tokio::task::block_in_place(|| {
            ctd.ctr_ns(
                NS,
                &[
                    "images",
                    "pull",
                    "--plain-http",
                    "--platform",
                    &format!("linux/{foreign}"),
                    &reference,
                ],
            )
        })?;
        if out.status.success() {
            scenarios.push(Scenario {
                title: "a tag that points to a single-arch image, not a manifest list",
                pod: "api-6e0a",
                image: reference,
                expect: Some("arch_mismatch"),
                platform: None,
                warned: true,
            });
        } else {
            say(format!(
                "  (pull failed: {})",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    // A multi-arch tag whose index holds both platforms, and the node runs the other one:
    // its platform forced (`ctr run --platform`, as a forced pull or a runtime default does).
    let orders = "registry.example/shop/orders:3.0";
    say(format!(
        "  building image {orders:<44} (an index of linux/{native} and linux/{foreign})"
    ));
    let mut l = Layout::new();
    let variants = [(native, &bb_native), (foreign, &bb_foreign)]
        .into_iter()
        .map(|(arch, b)| {
            l.add_image(&ImageSpec::new(
                arch,
                &["/bin/busybox", "true"],
                vec![Layer(vec![bb(b)])],
            ))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let idx = l.add_index(variants)?;
    l.tag(orders, &idx);
    let p = work.path().join("orders.tar");
    l.write_archive(&p)?;
    tokio::task::block_in_place(|| ctd.import(NS, &p))?;
    scenarios.push(Scenario {
        title: "a multi-arch tag, and the node runs the wrong variant: its platform forced",
        pod: "orders-4c2f",
        image: orders.to_string(),
        expect: Some("arch_mismatch"),
        platform: Some(format!("linux/{foreign}")),
        warned: false,
    });
    if stop.is_cancelled() {
        return Err(DemoError::Interrupted);
    }

    // Images are judged as soon as they are pulled, before anything runs.
    say("\nWarnings when the images were pulled (before anything ran):");
    let n_warn = scenarios.iter().filter(|s| s.warned).count();
    let deadline = Instant::now() + Duration::from_secs(30);
    while journal_lines(&journal)
        .iter()
        .filter(|l| l["kind"] == "image")
        .count()
        < n_warn
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for l in journal_lines(&journal)
        .iter()
        .filter(|l| l["kind"] == "image")
    {
        say(format!(
            "  {} {}: {}",
            l["reason"].as_str().unwrap_or(""),
            l["image"].as_str().unwrap_or(""),
            wrap(l["cause"].as_str().unwrap_or(""), 90, "      ")
        ));
        for f in l["findings"].as_array().into_iter().flatten() {
            say(format!(
                "      {}: {}",
                f["code"].as_str().unwrap_or(""),
                wrap(f["detail"].as_str().unwrap_or(""), 90, "      ")
            ));
        }
    }

    say("\nRunning each container (ctr run), as kubelet would start the pod:\n");
    let mut failures = 0;
    for s in &scenarios {
        if stop.is_cancelled() {
            return Err(DemoError::Interrupted);
        }
        let id = format!("{}-1", s.pod);
        let owned = labels(s.pod);
        let lbl: Vec<(&str, &str)> = owned
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let platform = s.platform.as_deref();
        let mut run = tokio::task::block_in_place(|| {
            ctd.run_platform(NS, &s.image, &id, &lbl, platform, Duration::from_secs(30))
        })?;
        // `ctr run --rm` can lose a fast-exiting task's output on a loaded machine; the pod
        // would restart anyway, so run it again to show what the runtime says.
        for attempt in 2..=3 {
            if run.code == Some(0) || !run.output.trim().is_empty() {
                break;
            }
            let retry_id = format!("{}-{attempt}", s.pod);
            run = tokio::task::block_in_place(|| {
                ctd.run_platform(
                    NS,
                    &s.image,
                    &retry_id,
                    &lbl,
                    platform,
                    Duration::from_secs(30),
                )
            })?;
        }
        let said = run
            .output
            .trim()
            .lines()
            .last()
            .unwrap_or("")
            .trim()
            .to_string();
        say(format!("● {} — pod shop/{}", s.title, s.pod));
        if let Some(p) = platform {
            say(format!(
                "  ran as:        ctr run --platform {p} {}",
                s.image
            ));
        }
        say(format!(
            "  runtime said:  {}",
            if said.is_empty() {
                format!("exit {}", run.code.unwrap_or(-1))
            } else {
                said
            }
        ));
        let pod = s.pod;
        match s.expect {
            Some(_) => match wait_line(&journal, Duration::from_secs(15), |l| {
                l["kind"] == "exec_failure" && l["pod"] == pod
            }) {
                Some(d) => {
                    failures += 1;
                    say(format!(
                        "  archwatch:     {} ({}) — {}",
                        d["verdict"].as_str().unwrap_or(""),
                        d["reason"].as_str().unwrap_or(""),
                        wrap(d["cause"].as_str().unwrap_or(""), 80, "                 ")
                    ));
                    for f in d["findings"].as_array().into_iter().flatten() {
                        say(format!(
                            "  finding:       {}: {}",
                            f["code"].as_str().unwrap_or(""),
                            wrap(f["detail"].as_str().unwrap_or(""), 80, "                 ")
                        ));
                    }
                    say(format!(
                        "  fix_code:      {}",
                        d["fix_code"].as_str().unwrap_or("")
                    ));
                    say(format!(
                        "  fix:           {}",
                        wrap(d["fix"].as_str().unwrap_or(""), 80, "                 ")
                    ));
                }
                None => say("  archwatch:     (no diagnosis within 15 s)"),
            },
            None => {
                let quiet = wait_line(&journal, Duration::from_secs(2), |l| {
                    l["kind"] == "exec_failure" && l["pod"] == pod
                })
                .is_none();
                say(format!(
                    "  archwatch:     {}",
                    if quiet {
                        "silent — it runs (exit 0), nothing to report"
                    } else {
                        "reported it (unexpected)"
                    }
                ));
            }
        }
        say("");
    }

    // Emulation: the same foreign image, "working" through a temporary QEMU handler.
    if stop.is_cancelled() {
        return Err(DemoError::Interrupted);
    }
    emulation_scene(&mut ctd, &journal, foreign, &stop).await;

    // The same failures on a Docker host (a CI runner, a compose deployment).
    if stop.is_cancelled() {
        return Err(DemoError::Interrupted);
    }
    docker_scene(work.path(), &node, &bb_native, &bb_foreign, &stop).await;

    if let Some(addr) = metrics_addr {
        say("Scraped from /metrics:");
        if let Ok(text) = scrape(addr).await {
            for l in text.lines().filter(|l| {
                l.starts_with("archwatch_exec_failures_total")
                    || l.starts_with("archwatch_images_inspected")
                    || l.starts_with("archwatch_containerd_connected")
                    || l.starts_with("archwatch_binfmt_handler_info")
            }) {
                say(format!("  {l}"));
            }
        }
    }
    say("\nThe Kubernetes Event the agent would send for the first failure (events.k8s.io/v1):");
    if let Some(first) = journal_lines(&journal)
        .into_iter()
        .find(|l| l["kind"] == "exec_failure")
    {
        if let Ok(d) = serde_json::from_value::<EventView>(first) {
            say(serde_json::to_string_pretty(&d.event()).unwrap_or_default());
        }
    }
    say(format!(
        "\nIncident timeline (JSON lines): {} lines in {}",
        journal_lines(&journal).len(),
        journal.display()
    ));
    say(format!("{failures} failures diagnosed in {:.1} s. Cleaning up: agent, containerd, registry, temp files.", started.elapsed().as_secs_f64()));

    agent_stop.cancel();
    let _ = agent.await;
    drop(registry);
    drop(ctd);
    Ok(())
}

async fn scrape(addr: std::net::SocketAddr) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    Ok(buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

static METRICS: std::sync::OnceLock<std::net::SocketAddr> = std::sync::OnceLock::new();

async fn handler_seen(name: &str) -> bool {
    match METRICS.get() {
        Some(a) => scrape(*a)
            .await
            .map(|t| t.contains(&format!("name=\"{name}\"")))
            .unwrap_or(false),
        None => true,
    }
}

/// The demo agents' configuration: no runtime yet, no listener, no Kubernetes, no exec
/// tracer; a journal at `journal`.
fn agent_config(journal: &Path, node: &Node) -> crate::agent::Config {
    crate::agent::Config {
        address: None,
        docker_host: None,
        docker_timeout: Duration::from_secs(10),
        namespaces: Vec::new(),
        listen: None,
        node_name: rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned(),
        journal: Some(journal.to_path_buf()),
        journal_max_bytes: 64 << 20,
        binfmt_dir: PathBuf::from(lab::BINFMT_DIR),
        node: node.clone(),
        snapshotter: "overlayfs".into(),
        inspect_timeout: Duration::from_secs(5),
        windows: Windows::default(),
        kube: "off".into(),
        kube_queue: 0,
        kubeconfig: None,
        view_lease_ttl: crate::containerd::LEASE_TTL,
        api_socket: None,
        proc_dir: PathBuf::from("/proc"),
        unhealthy_after: Duration::from_secs(120),
        kube_request_timeout: crate::sinks::kube_events::REQUEST_TIMEOUT,
        exec_tracer: crate::tracer::TracerMode::Off,
        cgroup_dir: None,
    }
}

/// A Docker scene: its title, the image's tag, the build context's files (path, bytes, mode)
/// and the Dockerfile's lines after `FROM scratch`.
type DockerScene<'a> = (
    &'a str,
    &'a str,
    Vec<(&'a str, &'a [u8], u32)>,
    Vec<&'a str>,
);

/// A private Docker Engine, followed by a second agent through its API (`--docker-host`,
/// `--address off`): `docker run` of images built with `docker build`, and what each side
/// says. Skipped, saying why, where Debian's docker.io is not installed.
async fn docker_scene(
    work: &Path,
    node: &Node,
    bb_native: &[u8],
    bb_foreign: &[u8],
    stop: &CancellationToken,
) {
    let d = match tokio::task::block_in_place(lab::docker::Dockerd::start) {
        Ok(d) => d,
        Err(e) => {
            say(format!("(skipping the Docker scene: {e})\n"));
            return;
        }
    };
    say(format!(
        "On a Docker host: a private Docker Engine ({}), followed by an agent through its API (--docker-host, --address off):",
        d.host()
    ));
    let journal = work.join("docker-timeline.jsonl");
    let agent_stop = stop.child_token();
    let cfg = crate::agent::Config {
        docker_host: Some(d.host()),
        ..agent_config(&journal, node)
    };
    let agent = tokio::spawn(crate::agent::run(cfg, agent_stop.clone(), None));
    let scenes: [DockerScene; 2] = [
        (
            "docker build copied an arm64 artifact into an image whose config says amd64",
            "ci/app:1",
            vec![("bin/app", bb_foreign, 0o755)],
            vec![
                "COPY bin/app /bin/app",
                r#"ENTRYPOINT ["/bin/app", "true"]"#,
            ],
        ),
        (
            "a compose service whose entrypoint script has Windows line endings",
            "ci/worker:1",
            vec![
                ("bin/sh", bb_native, 0o755),
                (
                    "entrypoint.sh",
                    b"#!/bin/sh\r\nexec /bin/sh -c true\r\n",
                    0o755,
                ),
            ],
            vec![
                "COPY bin/sh /bin/sh",
                "COPY entrypoint.sh /entrypoint.sh",
                r#"ENTRYPOINT ["/entrypoint.sh"]"#,
            ],
        ),
    ];
    for (i, (title, tag, files, lines)) in scenes.iter().enumerate() {
        if let Err(e) = tokio::task::block_in_place(|| d.build(tag, files, lines)) {
            say(format!("  (docker build {tag} failed: {e})"));
            continue;
        }
        let name = format!("demo-{i}");
        let service = tag.split([':', '/']).nth(1).unwrap_or("app").to_string();
        let labels = [
            "--label".to_string(),
            "com.docker.compose.project=ci".to_string(),
            "--label".to_string(),
            format!("com.docker.compose.service={service}"),
        ];
        let opts: Vec<&str> = labels.iter().map(String::as_str).collect();
        let run = match tokio::task::block_in_place(|| d.run(&name, tag, &opts)) {
            Ok(r) => r,
            Err(e) => {
                say(format!("  (docker run {tag} failed to start: {e})"));
                continue;
            }
        };
        say(format!("● {title} — docker run {tag}"));
        let said = run
            .stderr
            .trim()
            .lines()
            .last()
            .unwrap_or("")
            .trim()
            .to_string();
        say(format!(
            "  docker said:   {} (exit {})",
            said,
            run.exit_code.unwrap_or(-1)
        ));
        let found = wait_line(&journal, Duration::from_secs(15), |l| {
            l["kind"] == "exec_failure" && l["container"] == name.as_str()
        });
        match found {
            Some(l) => {
                say(format!(
                    "  archwatch:     {} ({}) — {}",
                    l["verdict"].as_str().unwrap_or(""),
                    l["reason"].as_str().unwrap_or(""),
                    wrap(l["cause"].as_str().unwrap_or(""), 80, "                 ")
                ));
                say(format!(
                    "  where:         runtime {}, compose project {}, service {}",
                    l["runtime"].as_str().unwrap_or(""),
                    l["compose_project"].as_str().unwrap_or(""),
                    l["compose_service"].as_str().unwrap_or("")
                ));
                say(format!(
                    "  fix_code:      {}",
                    l["fix_code"].as_str().unwrap_or("")
                ));
            }
            None => say("  archwatch:     (no diagnosis within 15 s)"),
        }
        say("");
    }
    agent_stop.cancel();
    let _ = agent.await;
    tokio::task::block_in_place(|| drop(d));
}

async fn emulation_scene(
    ctd: &mut Containerd,
    journal: &Path,
    foreign: &str,
    stop: &CancellationToken,
) {
    let qemu = match foreign {
        "arm64" => "/usr/bin/qemu-aarch64-static",
        _ => "/usr/bin/qemu-x86_64-static",
    };
    say(format!(
        "● the same linux/{foreign} image, with a temporary QEMU binfmt_misc handler registered"
    ));
    if !Path::new(qemu).exists() {
        say(format!("  (skipped: {qemu} is not installed)\n"));
        return;
    }
    let _mount = match lab::BinfmtMount::ensure() {
        Ok(m) => m,
        Err(e) => {
            say(format!(
                "  (skipped: binfmt_misc cannot be mounted here: {e})\n"
            ));
            return;
        }
    };
    let (magic, mask): (&[u8], &[u8]) = if foreign == "arm64" {
        (
            b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00",
            b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
        )
    } else {
        (
            b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x3e\x00",
            b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
        )
    };
    let name = format!("archwatch-demo-{}", std::process::id());
    let handler = match lab::BinfmtHandler::register(&name, magic, mask, qemu, "F") {
        Ok(h) => h,
        Err(e) => {
            say(format!("  (skipped: {e})\n"));
            return;
        }
    };
    // The agent re-reads the table every 2 s: wait until its metrics show the handler.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !handler_seen(&name).await {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if stop.is_cancelled() {
        return;
    }
    let pod = "checkout-emulated";
    let owned = labels(pod);
    let lbl: Vec<(&str, &str)> = owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let run = tokio::task::block_in_place(|| {
        ctd.run(
            NS,
            "registry.example/shop/checkout:1.4.2",
            &format!("{pod}-1"),
            &lbl,
            Duration::from_secs(60),
        )
    });
    let said = match &run {
        Ok(r) if r.code == Some(0) => "exit 0 — it \"works\"".to_string(),
        Ok(r) => r.output.trim().lines().last().unwrap_or("").to_string(),
        Err(e) => e.to_string(),
    };
    say(format!("  runtime said:  {said}"));
    match wait_line(journal, Duration::from_secs(10), |l| {
        l["kind"] == "emulated" && l["pod"] == pod
    }) {
        Some(l) => {
            say(format!(
                "  archwatch:     emulated ({}) — {}",
                l["reason"].as_str().unwrap_or(""),
                wrap(l["cause"].as_str().unwrap_or(""), 80, "                 ")
            ));
            say(format!(
                "  fix_code:      {}",
                l["fix_code"].as_str().unwrap_or("")
            ));
            say(format!(
                "  fix:           {}",
                wrap(l["fix"].as_str().unwrap_or(""), 80, "                 ")
            ));
        }
        None => say("  archwatch:     (no emulation record within 10 s)"),
    }
    say(format!("  (handler {} removed)\n", handler.name));
    drop(handler);
}

/// The journal fields an Event is built from.
#[derive(serde::Deserialize)]
struct EventView {
    node: String,
    pod: Option<String>,
    pod_namespace: Option<String>,
    pod_uid: Option<String>,
    container: Option<String>,
    reason: String,
    cause: String,
    fix: String,
}

impl EventView {
    fn event(&self) -> serde_json::Value {
        let sep = if self.cause.ends_with('.') { " " } else { ". " };
        let mut note = format!("{}{sep}{}", self.cause, self.fix);
        if note.len() > 1024 {
            let mut end = 1021;
            while !note.is_char_boundary(end) {
                end -= 1;
            }
            note.truncate(end);
            note.push_str("...");
        }
        serde_json::json!({
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"generateName": format!("{}.", self.pod.clone().unwrap_or_default()), "namespace": self.pod_namespace},
            "regarding": {"apiVersion": "v1", "kind": "Pod", "name": self.pod, "namespace": self.pod_namespace, "uid": self.pod_uid,
                          "fieldPath": format!("spec.containers{{{}}}", self.container.clone().unwrap_or_default())},
            "type": "Warning",
            "reason": self.reason,
            "action": "Diagnosed",
            "note": note,
            "reportingController": "archwatch.io/agent",
            "reportingInstance": self.node,
        })
    }
}
