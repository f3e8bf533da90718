//! `archwatch`: parse the command line and run one subcommand.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};

use archwatch::binfmt::Table;
use archwatch::inspect::{self, Request};
use archwatch::platform::{Arch, Node};
use archwatch::report;
use archwatch::rootfs::Rootfs;

const DEFAULT_BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";
const DEFAULT_API_SOCKET: &str = "/run/archwatch/archwatch.sock";

#[derive(Parser)]
#[command(
    name = "archwatch",
    version,
    about = "Says why a container's entrypoint will not exec on this node"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Will argv[0] exec on this node? Inspects the files of a container root.
    Inspect(InspectArgs),
    /// Lists binfmt_misc handlers and the architecture each one emulates.
    Binfmt(BinfmtArgs),
    /// Follows containerd (and Docker Engine) and diagnoses every exec-shaped start failure
    /// on this node.
    Agent(AgentArgs),
    /// Reproduces the classic incidents on a private containerd and shows the diagnoses.
    #[cfg(feature = "lab")]
    Demo(DemoArgs),
    /// Proves every platform of an image runs its own entrypoint (a CI guardrail).
    Verify(VerifyArgs),
    /// Prints this node's diagnoses as a timeline (from the agent's API socket).
    Events(EventsArgs),
    /// Prints the agent's connection state and the verdict of every image on the node.
    Status(StatusArgs),
}

#[derive(Args)]
struct VerifyArgs {
    /// An OCI image layout directory, an OCI or `docker save` tar archive, or a registry
    /// reference (`registry/repo:tag`, `registry/repo@sha256:...`).
    target: String,
    /// Talk to the registry over plain HTTP.
    #[arg(long)]
    plain_http: bool,
    /// Platforms that must be present, e.g. linux/amd64,linux/arm64,linux/arm/v7.
    #[arg(long, value_delimiter = ',')]
    require_platforms: Vec<String>,
    /// Whether a 32-bit binary passes in its 64-bit companion's image (386 in amd64, arm in
    /// arm64): yes, or no (auto: no, as on nodes without 32-bit support).
    #[arg(long, default_value = "auto", value_parser = ["auto", "yes", "no"])]
    compat32: String,
    /// Do not read the headers of the other executables in PATH (foreign_executables):
    /// only the layers the entrypoint's paths need are read.
    #[arg(long)]
    no_census: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct EventsArgs {
    #[arg(long, default_value = DEFAULT_API_SOCKET)]
    api_socket: PathBuf,
    /// Keep printing new diagnoses as they happen.
    #[arg(long, short)]
    follow: bool,
    /// How many past diagnoses to show first.
    #[arg(long, default_value_t = 100)]
    replay: u32,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct StatusArgs {
    #[arg(long, default_value = DEFAULT_API_SOCKET)]
    api_socket: PathBuf,
    #[arg(long)]
    json: bool,
}

#[cfg(feature = "lab")]
#[derive(Args)]
struct DemoArgs {
    /// Where scripts/fixtures put Debian's foreign-architecture binaries.
    #[arg(
        long,
        env = "ARCHWATCH_FIXTURES",
        default_value = "/var/cache/archwatch-fixtures"
    )]
    fixtures: PathBuf,
}

#[derive(Args)]
struct AgentArgs {
    /// containerd socket; `off` when there is no containerd to follow (a Docker host with
    /// --docker-host).
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    address: PathBuf,
    /// Docker Engine to follow as well (unix:///var/run/docker.sock, tcp://HOST:PORT);
    /// `off` or unset: none.
    #[arg(long, env = "DOCKER_HOST")]
    docker_host: Option<String>,
    /// Limit of one Docker Engine request (connecting, a record, a listing), in seconds: a
    /// socket that does not answer is given up on and reconnected with backoff.
    #[arg(long, default_value_t = 10)]
    docker_request_timeout_secs: u64,
    /// Every failed exec in every container (probes, kubectl exec, helpers), from eBPF:
    /// `auto` runs it when the node allows (saying once why not), `on` or fail, `off`.
    #[arg(long, default_value = "auto", value_parser = ["auto", "on", "off"])]
    exec_tracer: String,
    /// The host's cgroup v2 hierarchy, where the exec tracer attributes a cgroup id to its
    /// container (in a pod: a hostPath mount of /sys/fs/cgroup); default: the one this
    /// process sees.
    #[arg(long)]
    cgroup_dir: Option<PathBuf>,
    /// Namespace to watch (repeatable); default: all (k8s.io, moby, default, ...).
    #[arg(long = "namespace")]
    namespaces: Vec<String>,
    /// Serve /metrics, /healthz and /readyz here.
    #[arg(long, default_value = "0.0.0.0:9808")]
    listen: String,
    /// Node name for reports (in a pod: NODE_NAME from the downward API).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Append one JSON line per diagnosis to this file (the incident timeline).
    #[arg(long)]
    journal: Option<PathBuf>,
    /// Rotate the journal (FILE -> FILE.1) past this many bytes.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    journal_max_bytes: u64,
    /// Kubernetes Events: auto (in-cluster or kubeconfig when present) or off.
    #[arg(long, default_value = "auto", value_parser = ["auto", "off"])]
    kube: String,
    /// Use this kubeconfig (default: in-cluster config, then $KUBECONFIG, then ~/.kube/config).
    #[arg(long, env = "ARCHWATCH_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Expiry of the lease under each image view: anything a killed agent leaves in
    /// containerd is garbage-collected after this many seconds.
    #[arg(long, env = "ARCHWATCH_VIEW_LEASE_SECS", default_value_t = archwatch::containerd::LEASE_TTL.as_secs())]
    view_lease_secs: u64,
    /// Events waiting for the API server beyond this many are dropped, oldest first.
    #[arg(long, default_value_t = 1024)]
    kube_queue: usize,
    /// Serve the archwatch.v1 gRPC API on this unix socket (`off` to disable).
    #[arg(long, default_value = DEFAULT_API_SOCKET)]
    api_socket: PathBuf,
    /// The host's /proc, to confirm emulation from /proc/<pid>/exe (in a pod: hostPID, or the
    /// host's /proc mounted read-only).
    #[arg(long, default_value = "/proc")]
    proc_dir: PathBuf,
    #[arg(long, default_value = DEFAULT_BINFMT_DIR)]
    binfmt_dir: PathBuf,
    /// Node architecture; default: this machine.
    #[arg(long)]
    node_arch: Option<String>,
    /// Snapshotter of image views.
    #[arg(long, default_value = "overlayfs")]
    snapshotter: String,
    /// Time budget of one inspection, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    inspect_timeout_ms: u64,
    /// /healthz fails once containerd has been unreachable for this many seconds (so the
    /// kubelet restarts an agent that cannot get back to it).
    #[arg(long, default_value_t = 120)]
    unhealthy_after_secs: u64,
    /// Limit of one Kubernetes API request, in seconds: a silent API server or half-open
    /// connection is given up on and the write retried.
    #[arg(long, default_value_t = archwatch::sinks::kube_events::REQUEST_TIMEOUT.as_secs())]
    kube_request_timeout_secs: u64,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

#[derive(Args)]
struct InspectArgs {
    /// The container root as one directory.
    #[arg(long, conflicts_with = "layers")]
    rootfs: Option<PathBuf>,
    /// Overlay layers, top first: TOP:...:BOTTOM.
    #[arg(long, conflicts_with = "image")]
    layers: Option<String>,
    /// An image in containerd (its files are read through a read-only snapshot view).
    #[arg(long, conflicts_with = "rootfs")]
    image: Option<String>,
    /// A container, live or dead, by ID or name: on Docker Engine with --docker-host (or
    /// DOCKER_HOST), else in containerd (--address, --namespace). Its command, environment,
    /// working directory, user and layers are the record's.
    #[arg(long, value_name = "ID|NAME", conflicts_with_all = ["rootfs", "layers", "image"])]
    container: Option<String>,
    /// Docker Engine, with --container (unix:///var/run/docker.sock, tcp://HOST:PORT).
    #[arg(long, env = "DOCKER_HOST")]
    docker_host: Option<String>,
    /// containerd socket, with --image.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    address: PathBuf,
    /// containerd namespace, with --image.
    #[arg(long, default_value = "k8s.io")]
    namespace: String,
    /// Snapshotter of the view, with --image.
    #[arg(long, default_value = "overlayfs")]
    snapshotter: String,
    /// Node architecture (OCI or uname name); default: this machine.
    #[arg(long)]
    node_arch: Option<String>,
    /// Whether the node runs 32-bit binaries (386 on amd64, arm on arm64): auto probes this
    /// machine (ia32_emulation, AArch32) and assumes yes for a --node-arch.
    #[arg(long, default_value = "auto", value_parser = ["auto", "yes", "no"])]
    compat32: String,
    /// binfmt_misc table to use (files in the format of /proc/sys/fs/binfmt_misc).
    #[arg(long)]
    binfmt_dir: Option<PathBuf>,
    /// Process environment, KEY=VALUE (PATH is used for the lookup of a bare argv[0]).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory inside the container (default: the image's, else /).
    #[arg(long)]
    workdir: Option<String>,
    /// Architecture the image config claims (reports config_arch_mismatch when it lies).
    #[arg(long)]
    claimed_arch: Option<String>,
    /// The container's user, UID[:GID] (numbers): permissions are judged as it (a non-root
    /// user without capabilities, as Docker and CRI-O start one); default root.
    #[arg(long, value_name = "UID[:GID]")]
    user: Option<String>,
    /// Additional group ids of the user (repeatable).
    #[arg(long = "group", value_name = "GID")]
    groups: Vec<u32>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// The command: argv[0] and its arguments.
    #[arg(last = true)]
    argv: Vec<String>,
}

#[derive(Args)]
struct BinfmtArgs {
    #[arg(long, default_value = DEFAULT_BINFMT_DIR)]
    binfmt_dir: PathBuf,
    /// The agent's API socket: when it answers, the images that depend on each handler.
    #[arg(long, default_value = DEFAULT_API_SOCKET)]
    api_socket: PathBuf,
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Command::Inspect(a) => run_inspect(a),
        Command::Binfmt(a) => run_binfmt(a),
        Command::Agent(a) => run_agent(a),
        #[cfg(feature = "lab")]
        Command::Demo(a) => run_demo(a),
        Command::Verify(a) => run_verify(a),
        Command::Events(a) => run_events(a),
        Command::Status(a) => run_status(a),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("archwatch: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn node(arch: Option<&str>) -> anyhow::Result<Node> {
    match arch {
        Some(a) => Ok(Node::with_arch(Arch::parse(a).with_context(|| {
            format!("unknown architecture {a:?} (try amd64, arm64, arm/v7, s390x, ...)")
        })?)),
        None => Ok(Node::detect()),
    }
}

/// Reads the binfmt table: an explicit directory must be readable; the default one may be
/// absent (binfmt_misc not mounted), which means no handlers.
fn binfmt_table(dir: Option<&PathBuf>) -> anyhow::Result<(Table, Option<String>)> {
    let explicit = dir.is_some();
    let dir = dir
        .cloned()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BINFMT_DIR));
    match Table::read_dir(&dir) {
        Ok((t, errs)) => {
            for e in errs {
                eprintln!("archwatch: skipping {e}");
            }
            Ok((t, None))
        }
        Err(e) if !explicit => Ok((
            Table::empty(),
            Some(format!(
                "{e}; treating the node as having no binfmt_misc handlers"
            )),
        )),
        Err(e) => Err(e.into()),
    }
}

fn compat32(s: &str) -> anyhow::Result<archwatch::platform::Compat32> {
    s.parse()
        .map_err(|e: String| anyhow::anyhow!("--compat32 {e}"))
}

fn run_inspect(a: InspectArgs) -> anyhow::Result<u8> {
    let node = node(a.node_arch.as_deref())?.with_compat32(compat32(&a.compat32)?);
    let (table, binfmt_note) = binfmt_table(a.binfmt_dir.as_ref())?;
    let mut path_env = None;
    for kv in &a.env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--env wants KEY=VALUE, got {kv:?}"))?;
        if k == "PATH" {
            path_env = Some(v.to_string());
        }
    }
    let mut claimed_arch = match &a.claimed_arch {
        Some(c) => Some(Arch::parse(c).with_context(|| format!("unknown architecture {c:?}"))?),
        None => None,
    };
    let mut user = match &a.user {
        Some(u) => {
            let mut c = archwatch::rootfs::Creds::parse(u)
                .with_context(|| format!("--user wants UID[:GID] (numbers), got {u:?}"))?;
            c.groups.clone_from(&a.groups);
            Some(c)
        }
        None => None,
    };
    let mut argv = a.argv.clone();
    let mut cwd = a.workdir.clone();
    // With --image: the files come from a read-only view of the image's top snapshot.
    let mut view = None;
    let layers: Vec<PathBuf> = match (&a.rootfs, &a.layers, &a.image) {
        _ if a.container.is_some() => {
            let c = container_record(&a)?;
            if argv.is_empty() {
                argv = c.process.argv;
            }
            path_env = path_env.or(c.process.path_env);
            cwd = cwd.or(Some(c.process.cwd));
            claimed_arch = claimed_arch.or(c.claimed);
            if a.user.is_none() {
                user = c.process.user;
            }
            c.layers
        }
        (Some(r), None, None) => vec![r.clone()],
        (None, Some(l), None) => l
            .split(':')
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect(),
        (None, None, Some(image)) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (client, target, v) = rt.block_on(async {
                let client = archwatch::containerd::Client::connect(
                    &a.address,
                    std::time::Duration::from_secs(5),
                )
                .await?;
                let target = client.resolve_image(&a.namespace, image, &node).await?;
                let chain = target
                    .config
                    .chain_id()
                    .context("the image config lists no layers")?;
                let v = client
                    .open_view(&a.namespace, &a.snapshotter, &chain)
                    .await?;
                anyhow::Ok((client, target, v))
            })?;
            if argv.is_empty() {
                argv = target.config.argv();
            }
            path_env = path_env.or_else(|| target.config.path_env());
            cwd = cwd.or_else(|| Some(target.config.cwd()));
            claimed_arch = claimed_arch.or_else(|| target.config.arch());
            let layers = v.layers.clone();
            view = Some((rt, client, v));
            layers
        }
        _ => bail!(
            "give the container root with --rootfs DIR, --layers TOP:...:BOTTOM, --image REF or --container ID|NAME"
        ),
    };
    // How the layers are read: a resolver override that cannot work, or opaque overlay
    // directories this process cannot see, are said before the verdict.
    let access = archwatch::rootfs::Access::process();
    if let Some(p) = &archwatch::rootfs::beneath::choice().problem {
        eprintln!("archwatch: {p}");
    }
    if layers.len() > 1 {
        if let Some(w) = archwatch::rootfs::xattrs::visibility().warning() {
            eprintln!("archwatch: {w}");
        }
    }
    let cwd = cwd.unwrap_or_else(|| "/".to_string());
    let req = Request {
        argv: &argv,
        path_env: path_env.as_deref(),
        cwd: &cwd,
        claimed_arch,
        user: user.as_ref(),
    };
    let result = inspect_layers(layers, &req, &node, &table);
    if let Some((rt, client, v)) = view {
        rt.block_on(client.close_view(v));
    }
    let mut result = result?;
    if let Some(n) = binfmt_note {
        result.findings.push(inspect::Finding {
            code: "binfmt_unavailable",
            detail: n,
        });
    }
    if a.json {
        let mut v = serde_json::to_value(&result)?;
        v["resolver"] = access.resolver.name().into();
        v["overlay_xattrs_readable"] = access.overlay_xattrs_readable.into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", report::inspection(&result, &node));
    }
    Ok(u8::try_from(result.verdict.exit_code()).unwrap_or(1))
}

/// A container's record, as `inspect --container` judges it.
struct ContainerRecord {
    process: archwatch::pipeline::Process,
    layers: Vec<PathBuf>,
    claimed: Option<Arch>,
}

/// Reads `--container` from Docker Engine (with a Docker host) or containerd.
fn container_record(a: &InspectArgs) -> anyhow::Result<ContainerRecord> {
    let id = a.container.as_deref().unwrap_or_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let timeout = std::time::Duration::from_secs(10);
    let docker_host = a
        .docker_host
        .as_deref()
        .filter(|h| !h.is_empty() && *h != "off");
    rt.block_on(async {
        if let Some(host) = docker_host {
            let client = archwatch::docker::Client::connect(host, timeout).await?;
            let c = client.container(id).await?;
            let layers = match &c.layers {
                Ok(archwatch::docker::Layers::Dirs(d)) => d.clone(),
                Ok(archwatch::docker::Layers::Snapshot { snapshotter, key }) => {
                    let ctd = archwatch::containerd::Client::connect(&a.address, timeout).await?;
                    ctd.snapshot_layers(archwatch::docker::NAMESPACE, snapshotter, key)
                        .await?
                }
                Err(e) => bail!("container {id}: {e}"),
            };
            let mut process = c.process.clone();
            if let Some(name) = &c.user_name {
                let root = Rootfs::new(layers.clone())?;
                let ids = inspect::user_in_image(&root, name)?.with_context(|| {
                    format!("container {id}: user {name:?} is not in its image's /etc/passwd")
                })?;
                process.user = Some(archwatch::docker::docker_creds(ids, c.caps));
            } else if process.user.is_none() {
                process.user = Some(archwatch::docker::docker_creds(
                    archwatch::rootfs::Creds::root(),
                    c.caps,
                ));
            }
            let claimed = match client.image(&c.image_id).await {
                Ok(i) => i
                    .architecture
                    .as_deref()
                    .and_then(|x| Arch::from_oci(x, i.variant.as_deref())),
                Err(_) => None,
            };
            return Ok(ContainerRecord {
                process,
                layers,
                claimed,
            });
        }
        let client = archwatch::containerd::Client::connect(&a.address, timeout).await?;
        let c = client.container(&a.namespace, id).await?;
        let spec = archwatch::containerd::spec_process(&c)?;
        let layers = client
            .snapshot_layers(&a.namespace, &c.snapshotter, &c.snapshot_key)
            .await?;
        Ok(ContainerRecord {
            process: archwatch::pipeline::Process {
                argv: spec.args,
                path_env: spec.path_env,
                cwd: spec.cwd,
                user: Some(spec.user),
            },
            layers,
            claimed: None,
        })
    })
}

fn inspect_layers(
    layers: Vec<PathBuf>,
    req: &Request,
    node: &Node,
    table: &Table,
) -> anyhow::Result<inspect::Inspection> {
    if req.argv.is_empty() {
        bail!("give the command after --, e.g. archwatch inspect --rootfs DIR -- /app --flag");
    }
    let root = Rootfs::new(layers)?;
    Ok(inspect::inspect(
        &root,
        req,
        inspect::Context {
            node,
            binfmt: table,
        },
    )?)
}

fn run_binfmt(a: BinfmtArgs) -> anyhow::Result<u8> {
    let (table, errs) = Table::read_dir(&a.binfmt_dir)?;
    for e in &errs {
        eprintln!("archwatch: skipping {e}");
    }
    // Which images on this node depend on each handler, when the agent answers.
    let dependents: Vec<(String, String)> = if a.api_socket.exists() {
        api_runtime()?
            .block_on(async {
                let mut c = archwatch::sinks::api::connect(&a.api_socket).await.ok()?;
                let images = c
                    .list_image_verdicts(archwatch::sinks::api::pb::ListImageVerdictsRequest {})
                    .await
                    .ok()?
                    .into_inner()
                    .images;
                Some(
                    images
                        .into_iter()
                        .filter(|i| !i.handler.is_empty())
                        .map(|i| (i.handler, i.image))
                        .collect(),
                )
            })
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    if a.json {
        let mut v = serde_json::to_value(&table)?;
        if let Some(hs) = v["handlers"].as_array_mut() {
            for h in hs {
                let name = h["name"].as_str().unwrap_or("").to_string();
                h["images"] = dependents
                    .iter()
                    .filter(|(n, _)| *n == name)
                    .map(|(_, i)| i.clone())
                    .collect();
            }
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!(
            "{}",
            report::binfmt(&table, &a.binfmt_dir.display().to_string())
        );
        for (handler, image) in &dependents {
            println!("  {image} runs only through {handler}");
        }
    }
    Ok(0)
}

fn run_agent(a: AgentArgs) -> anyhow::Result<u8> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if a.log_json {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .json()
            .with_writer(std::io::stderr)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let node = node(a.node_arch.as_deref())?;
    let node_name = match a.node_name {
        Some(n) if !n.is_empty() => n,
        _ => rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned(),
    };
    let listen = if a.listen.is_empty() || a.listen == "off" {
        None
    } else {
        Some(a.listen.parse().with_context(|| {
            format!(
                "--listen {:?} is not an address like 0.0.0.0:9808",
                a.listen
            )
        })?)
    };
    let address = (a.address.as_os_str() != "off").then_some(a.address);
    let docker_host = a.docker_host.filter(|h| !h.is_empty() && h != "off");
    if address.is_none() && docker_host.is_none() {
        anyhow::bail!("--address off needs --docker-host: the agent has no runtime to follow");
    }
    let cfg = archwatch::agent::Config {
        address,
        docker_host,
        docker_timeout: std::time::Duration::from_secs(a.docker_request_timeout_secs.max(1)),
        namespaces: a.namespaces,
        listen,
        node_name,
        journal: a.journal,
        journal_max_bytes: a.journal_max_bytes,
        binfmt_dir: a.binfmt_dir,
        node,
        snapshotter: a.snapshotter,
        inspect_timeout: std::time::Duration::from_millis(a.inspect_timeout_ms),
        windows: archwatch::pipeline::Windows::default(),
        kube: a.kube.clone(),
        kube_queue: a.kube_queue,
        kubeconfig: a.kubeconfig.clone(),
        view_lease_ttl: std::time::Duration::from_secs(a.view_lease_secs.max(1)),
        api_socket: (a.api_socket.as_os_str() != "off").then_some(a.api_socket.clone()),
        proc_dir: a.proc_dir.clone(),
        unhealthy_after: std::time::Duration::from_secs(a.unhealthy_after_secs.max(1)),
        kube_request_timeout: std::time::Duration::from_secs(a.kube_request_timeout_secs.max(1)),
        exec_tracer: a
            .exec_tracer
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--exec-tracer {e}"))?,
        cgroup_dir: a.cgroup_dir.clone(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let stop = stop_on_signals(|| tracing::info!("Stopping: draining in-flight inspections."));
        archwatch::agent::run(cfg, stop, None).await
    })?;
    Ok(0)
}

#[cfg(feature = "lab")]
fn run_demo(a: DemoArgs) -> anyhow::Result<u8> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let stop = stop_on_signals(|| eprintln!("archwatch demo: interrupted, cleaning up"));
        archwatch::demo::run(a.fixtures, stop).await
    })?;
    Ok(0)
}

fn api_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn ts(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(|t| {
            chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
        })
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| "-".into())
}

fn run_events(a: EventsArgs) -> anyhow::Result<u8> {
    use futures::StreamExt;
    api_runtime()?.block_on(async {
        let mut client = archwatch::sinks::api::connect(&a.api_socket)
            .await
            .with_context(|| format!("no agent API at {} (is `archwatch agent` running?)", a.api_socket.display()))?;
        let req = archwatch::sinks::api::pb::WatchDiagnosesRequest { replay: a.replay, no_follow: !a.follow };
        let mut stream = client.watch_diagnoses(req).await?.into_inner();
        while let Some(d) = stream.next().await {
            let d = d?;
            if a.json {
                let v = serde_json::json!({
                    "sequence": d.sequence, "diagnosed_at": ts(&d.diagnosed_at), "exited_at": ts(&d.exited_at),
                    "node": d.node, "pod_namespace": d.pod_namespace, "pod": d.pod, "container": d.container,
                    "container_id": d.container_id, "image": d.image, "verdict": d.verdict, "reason": d.reason,
                    "signal": d.signal, "exit_code": d.exit_code, "cause": d.cause, "fix": d.fix, "fix_code": d.fix_code,
                    "binary_arch": d.binary_arch, "node_arch": d.node_arch, "findings": d.findings,
                    "argv": d.argv, "runtime": d.runtime,
                });
                println!("{v}");
            } else {
                let who = if d.pod.is_empty() { format!("container {}", d.container_id) } else { format!("{}/{} {}", d.pod_namespace, d.pod, d.container) };
                println!("{}  {who}  {}  {}", ts(&d.exited_at), d.image, d.verdict);
                if d.signal == "exec_error" {
                    println!("    exec of {} in the running container failed", d.argv.first().map(String::as_str).unwrap_or(""));
                }
                println!("    {}", d.cause);
                println!("    fix ({}): {}", d.fix_code, d.fix);
            }
        }
        anyhow::Ok(())
    })?;
    Ok(0)
}

fn run_status(a: StatusArgs) -> anyhow::Result<u8> {
    api_runtime()?.block_on(async {
        let mut client = archwatch::sinks::api::connect(&a.api_socket)
            .await
            .with_context(|| format!("no agent API at {} (is `archwatch agent` running?)", a.api_socket.display()))?;
        let st = client.get_status(archwatch::sinks::api::pb::GetStatusRequest {}).await?.into_inner();
        let images = client.list_image_verdicts(archwatch::sinks::api::pb::ListImageVerdictsRequest {}).await?.into_inner().images;
        if a.json {
            let imgs: Vec<serde_json::Value> = images
                .iter()
                .map(|i| serde_json::json!({"namespace": i.containerd_namespace, "image": i.image, "digest": i.digest, "verdict": i.verdict, "binary_arch": i.binary_arch, "cause": i.cause, "fix": i.fix, "fix_code": i.fix_code, "findings": i.findings}))
                .collect();
            println!("{}", serde_json::json!({"node": st.node, "node_arch": st.node_arch, "containerd_connected": st.containerd_connected, "ready": st.ready, "diagnoses": st.diagnoses, "version": st.version, "tracked_containers": st.tracked_containers, "images": imgs}));
        } else {
            println!(
                "node {} (linux/{}), archwatch {}: containerd {}, {} diagnoses",
                st.node,
                st.node_arch,
                st.version,
                if st.containerd_connected { "connected" } else { "DISCONNECTED" },
                st.diagnoses
            );
            for i in &images {
                println!("{:<22} {:<10} {}  {}", i.verdict, if i.binary_arch.is_empty() { "-" } else { i.binary_arch.as_str() }, i.containerd_namespace, i.image);
            }
        }
        anyhow::Ok(())
    })?;
    Ok(0)
}

fn run_verify(a: VerifyArgs) -> anyhow::Result<u8> {
    let path = std::path::Path::new(&a.target);
    let opts = archwatch::verify::Options {
        required: a.require_platforms.clone(),
        compat32: compat32(&a.compat32)?,
        census: !a.no_census,
    };
    let report = if path.exists() {
        archwatch::verify::verify_with(path, &opts)?
    } else if a.target.contains('/') && !a.target.starts_with('/') && !a.target.starts_with('.') {
        archwatch::verify::verify_reference_with(&a.target, a.plain_http, &opts)?
    } else {
        bail!(
            "{}: no such file or directory, and not a registry reference",
            a.target
        );
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", archwatch::verify::render(&report));
    }
    Ok(if report.ok { 0 } else { 1 })
}

/// The one place signals are handled: SIGTERM or SIGINT cancels the returned token (after
/// `on_signal`), and the task drains from there.
fn stop_on_signals(
    on_signal: impl FnOnce() + Send + 'static,
) -> tokio_util::sync::CancellationToken {
    let stop = tokio_util::sync::CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        on_signal();
        token.cancel();
    });
    stop
}
