//! A kubelet stand-in: a private containerd with its CRI plugin, driven over the CRI gRPC API
//! (`runtime.v1`, the `k8s-cri` crate) the way the kubelet drives it, with images pulled by
//! the CRI plugin from a private docker-registry.
//!
//! - [`CriLab::start`] builds a pause image (busybox `sleep`), imports it into `k8s.io`
//!   before the first sandbox and pins it as the config's sandbox image; starts a registry
//!   and gives containerd a `certs.d`-style `hosts.toml` for it (plain HTTP on loopback).
//! - [`CriLab::run_pod`] is RunPodSandbox with host networking (no CNI) and the kubelet's
//!   sandbox labels; [`CriLab::create`] / [`CriLab::start_container`] are CreateContainer and
//!   StartContainer with the kubelet's container labels and annotations
//!   (pkg/kubelet/kuberuntime/labels.go: `io.kubernetes.container.{name,hash,restartCount,
//!   terminationMessagePath,terminationMessagePolicy,type}`, `io.kubernetes.pod.*`).
//! - [`CriLab::crash_loop`] is the kubelet's restart loop: attempt N+1 after a back-off of
//!   10 s doubling to 5 min, and its container GC (every minute, the dead attempts beyond the
//!   newest `keep_dead` removed), all divided by one compression factor.
//!
//! Test-only: nothing here is in the agent binary.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use archwatch::lab::{self, Binaries, CriOptions, Options, Registry};
use archwatch::oci::{ImageSpec, Item, Layer, Layout};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// The containerd namespace the CRI plugin keeps everything in.
pub const NS: &str = "k8s.io";
const PAUSE: &str = "archwatch.test/pause:1";

/// The kubelet's labels and annotations (pkg/kubelet/kuberuntime/labels.go,
/// pkg/kubelet/types/labels.go).
pub mod keys {
    pub const POD_NAME: &str = "io.kubernetes.pod.name";
    pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
    pub const POD_UID: &str = "io.kubernetes.pod.uid";
    pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
    pub const HASH: &str = "io.kubernetes.container.hash";
    pub const RESTART_COUNT: &str = "io.kubernetes.container.restartCount";
    pub const TERMINATION_MESSAGE_PATH: &str = "io.kubernetes.container.terminationMessagePath";
    pub const TERMINATION_MESSAGE_POLICY: &str = "io.kubernetes.container.terminationMessagePolicy";
    pub const TERMINATION_GRACE_PERIOD: &str = "io.kubernetes.pod.terminationGracePeriod";
    /// `init`, `container` or `ephemeral` (kubelets that set it).
    pub const CONTAINER_TYPE: &str = "io.kubernetes.container.type";
}

/// A pod as the kubelet knows it.
#[derive(Clone, Debug)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// The sandbox id, once running.
    pub sandbox: String,
    config: cri::PodSandboxConfig,
}

/// What kind of pod spec entry a container is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Init,
    Regular,
}

/// A container of a pod spec.
#[derive(Clone, Debug)]
pub struct Container {
    pub name: String,
    /// The image reference as written in the pod spec (a registry reference).
    pub image: String,
    /// `command:` (overrides the entrypoint); empty keeps the image's.
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub kind: Kind,
    /// Whether the kubelet sets `io.kubernetes.container.type` (recent kubelets do).
    pub type_annotation: bool,
    /// `securityContext.runAsUser`.
    pub run_as_user: Option<i64>,
}

impl Container {
    pub fn new(name: &str, image: &str) -> Container {
        Container {
            name: name.into(),
            image: image.into(),
            command: Vec::new(),
            args: Vec::new(),
            kind: Kind::Regular,
            type_annotation: true,
            run_as_user: None,
        }
    }
    pub fn run_as_user(mut self, uid: i64) -> Container {
        self.run_as_user = Some(uid);
        self
    }
    pub fn init(mut self) -> Container {
        self.kind = Kind::Init;
        self
    }
    pub fn command(mut self, argv: &[&str]) -> Container {
        self.command = argv.iter().map(|s| s.to_string()).collect();
        self
    }
}

/// One attempt of a container, as the kubelet saw it end.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub id: String,
    pub attempt: u32,
    /// StartContainer's error, when it failed (refused at create time).
    pub start_error: Option<String>,
    pub status: cri::ContainerStatus,
}

/// The kubelet's crash-loop back-off (10 s doubling to 5 min) and container GC (every
/// minute), divided by `compression`.
#[derive(Clone, Copy, Debug)]
pub struct BackOff {
    pub compression: u32,
    /// Dead attempts of a container that GC keeps, newest first (the kubelet's
    /// MaxPerPodContainer: 1 by default).
    pub keep_dead: usize,
}

impl BackOff {
    /// The wait before attempt `n + 1` after attempt `n` (0-based) died.
    pub fn delay(&self, n: u32) -> Duration {
        let full = Duration::from_secs(10)
            .saturating_mul(1u32 << n.min(5))
            .min(Duration::from_secs(300));
        full / self.compression.max(1)
    }

    /// How often container GC runs (the kubelet's ContainerGCPeriod, one minute).
    pub fn gc_period(&self) -> Duration {
        Duration::from_secs(60) / self.compression.max(1)
    }
}

impl Default for BackOff {
    fn default() -> Self {
        BackOff {
            compression: 100,
            keep_dead: 1,
        }
    }
}

pub struct CriLab {
    pub ctd: lab::Containerd,
    pub registry: Registry,
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    work: tempfile::TempDir,
    pub socket: PathBuf,
    pods: Vec<String>,
}

fn channel(rt: &tokio::runtime::Runtime, socket: &Path) -> Channel {
    let socket = socket.to_path_buf();
    rt.block_on(async move {
        Endpoint::try_from("http://[::]:50051")
            .expect("endpoint")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let s = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(s).await?))
                }
            }))
            .await
            .expect("CRI connection")
    })
}

/// busybox as a pause container: `sleep` until killed.
pub fn pause_spec() -> ImageSpec {
    ImageSpec::new(
        "amd64",
        &["/bin/busybox", "sleep", "2147483647"],
        vec![Layer(vec![Item::file(
            "/bin/busybox",
            super::busybox("amd64"),
            0o755,
        )])],
    )
}

impl CriLab {
    /// A lab on the release `ARCHWATCH_CONTAINERD_DIR` names (else Debian's).
    pub fn start() -> CriLab {
        let work = tempfile::Builder::new()
            .prefix("archwatch-cri-")
            .tempdir()
            .expect("temp dir");
        let registry = Registry::start().expect("docker-registry");
        // containerd's hosts.toml for the registry: plain HTTP, no TLS.
        let certs = work.path().join("certs.d");
        let host_dir = certs.join(&registry.addr);
        std::fs::create_dir_all(&host_dir).expect("certs.d");
        std::fs::write(
            host_dir.join("hosts.toml"),
            format!(
                "server = \"http://{0}\"\n\n[host.\"http://{0}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n",
                registry.addr
            ),
        )
        .expect("hosts.toml");
        let bin = Binaries::from_env().expect("containerd release");
        let mut ctd = lab::Containerd::start_with(
            bin,
            Options {
                cri: Some(CriOptions {
                    sandbox_image: PAUSE.into(),
                    registry_config_path: Some(certs),
                }),
            },
        )
        .expect("private containerd with CRI");
        // The sandbox image, imported before the first sandbox.
        let mut l = Layout::new();
        let m = l.add_image(&pause_spec()).expect("pause image");
        l.tag(PAUSE, &m);
        let archive = work.path().join("pause.tar");
        l.write_archive(&archive).expect("pause archive");
        ctd.import(NS, &archive).expect("pause import");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let socket = ctd.socket.clone();
        let ch = channel(&rt, &socket);
        let mut lab = CriLab {
            ctd,
            registry,
            runtime: RuntimeServiceClient::new(ch.clone()),
            images: ImageServiceClient::new(ch),
            rt,
            work,
            socket,
            pods: Vec::new(),
        };
        lab.wait_cri();
        lab
    }

    /// The release this lab runs, e.g. `1.6.20`.
    pub fn version(&self) -> String {
        self.ctd.binaries().version_string()
    }

    fn wait_cri(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = self
                .rt
                .block_on(self.runtime.clone().version(cri::VersionRequest::default()));
            match r {
                Ok(_) => return,
                Err(e) if Instant::now() > deadline => {
                    panic!("CRI plugin not serving: {e}\n{}", self.ctd.log())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Reconnects after containerd was restarted (a new socket).
    fn reconnect(&mut self) {
        let ch = channel(&self.rt, &self.socket);
        self.runtime = RuntimeServiceClient::new(ch.clone());
        self.images = ImageServiceClient::new(ch);
        self.wait_cri();
    }

    /// SIGKILL containerd and start it again (its shims, and so the pods, live on).
    pub fn restart_containerd(&mut self) {
        self.ctd.restart().expect("containerd restart");
        self.reconnect();
    }

    /// Builds `spec`, pushes it to the registry as `repo:tag`; returns the reference.
    pub fn push(&self, repo: &str, spec: &ImageSpec) -> String {
        let mut l = Layout::new();
        let m = l.add_image(spec).expect("image");
        l.tag(&format!("{repo}:v1"), &m);
        let archive = self
            .work
            .path()
            .join(format!("{}.tar", super::unique("push")));
        l.write_archive(&archive).expect("archive");
        self.registry
            .push(&archive, "v1", repo)
            .unwrap_or_else(|e| panic!("push {repo}: {e}"))
    }

    /// PullImage, as the kubelet does before creating a container; returns the image ref.
    pub fn pull(&mut self, reference: &str) -> String {
        let req = cri::PullImageRequest {
            image: Some(image_spec(reference)),
            ..Default::default()
        };
        self.rt
            .block_on(self.images.pull_image(req))
            .unwrap_or_else(|e| panic!("PullImage {reference}: {e}\n{}", self.ctd.log()))
            .into_inner()
            .image_ref
    }

    /// ListImages: every image the CRI plugin reports, with its tags and digests.
    pub fn list_images(&mut self) -> Vec<cri::Image> {
        self.rt
            .block_on(self.images.list_images(cri::ListImagesRequest::default()))
            .expect("ListImages")
            .into_inner()
            .images
    }

    /// RemoveImage (image GC): every name of the image goes.
    pub fn remove_image(&mut self, reference: &str) {
        let req = cri::RemoveImageRequest {
            image: Some(image_spec(reference)),
        };
        self.rt
            .block_on(self.images.remove_image(req))
            .unwrap_or_else(|e| panic!("RemoveImage {reference}: {e}"));
    }

    /// RunPodSandbox with host networking and the kubelet's sandbox labels.
    pub fn run_pod(&mut self, name: &str, namespace: &str) -> Pod {
        let uid = format!(
            "{:08x}-0000-4000-8000-{:012x}",
            rand::random::<u32>(),
            rand::random::<u64>() & 0xffff_ffff_ffff
        );
        let logs = self
            .work
            .path()
            .join("pods")
            .join(format!("{namespace}_{name}_{uid}"));
        std::fs::create_dir_all(&logs).expect("pod log dir");
        let labels = HashMap::from([
            (keys::POD_NAME.to_string(), name.to_string()),
            (keys::POD_NAMESPACE.to_string(), namespace.to_string()),
            (keys::POD_UID.to_string(), uid.clone()),
            ("app".to_string(), name.to_string()),
        ]);
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: uid.clone(),
                namespace: namespace.into(),
                attempt: 0,
            }),
            hostname: String::new(),
            log_directory: logs.display().to_string(),
            labels,
            annotations: HashMap::from([(
                "kubernetes.io/config.source".to_string(),
                "api".to_string(),
            )]),
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(host_network()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = self
            .rt
            .block_on(self.runtime.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            }))
            .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e}\n{}", self.ctd.log()))
            .into_inner();
        self.pods.push(r.pod_sandbox_id.clone());
        Pod {
            name: name.into(),
            namespace: namespace.into(),
            uid,
            sandbox: r.pod_sandbox_id,
            config,
        }
    }

    /// CreateContainer for attempt `attempt` of `c`, with the kubelet's labels/annotations.
    pub fn create(&mut self, pod: &Pod, c: &Container, attempt: u32) -> String {
        let labels = HashMap::from([
            (keys::POD_NAME.to_string(), pod.name.clone()),
            (keys::POD_NAMESPACE.to_string(), pod.namespace.clone()),
            (keys::POD_UID.to_string(), pod.uid.clone()),
            (keys::CONTAINER_NAME.to_string(), c.name.clone()),
        ]);
        let mut annotations = HashMap::from([
            (
                keys::HASH.to_string(),
                format!("{:x}", fnv(&c.name, &c.image)),
            ),
            (keys::RESTART_COUNT.to_string(), attempt.to_string()),
            (
                keys::TERMINATION_MESSAGE_PATH.to_string(),
                "/dev/termination-log".to_string(),
            ),
            (
                keys::TERMINATION_MESSAGE_POLICY.to_string(),
                "File".to_string(),
            ),
            (keys::TERMINATION_GRACE_PERIOD.to_string(), "30".to_string()),
        ]);
        if c.type_annotation {
            annotations.insert(
                keys::CONTAINER_TYPE.to_string(),
                match c.kind {
                    Kind::Init => "init",
                    Kind::Regular => "container",
                }
                .to_string(),
            );
        }
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: c.name.clone(),
                attempt,
            }),
            image: Some(image_spec(&c.image)),
            command: c.command.clone(),
            args: c.args.clone(),
            labels,
            annotations,
            log_path: format!("{}/{attempt}.log", c.name),
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(host_network()),
                    run_as_user: c.run_as_user.map(|value| cri::Int64Value { value }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.rt
            .block_on(self.runtime.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.sandbox.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            }))
            .unwrap_or_else(|e| panic!("CreateContainer {}: {e}\n{}", c.name, self.ctd.log()))
            .into_inner()
            .container_id
    }

    /// StartContainer; `Err` with the runtime's words when it refuses.
    pub fn start_container(&mut self, id: &str) -> Result<(), String> {
        self.rt
            .block_on(self.runtime.start_container(cri::StartContainerRequest {
                container_id: id.into(),
            }))
            .map(|_| ())
            .map_err(|s| s.message().to_string())
    }

    pub fn status(&mut self, id: &str) -> cri::ContainerStatus {
        self.rt
            .block_on(self.runtime.container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            }))
            .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e}"))
            .into_inner()
            .status
            .expect("status")
    }

    /// Polls ContainerStatus until the container has exited.
    pub fn wait_exited(&mut self, id: &str, timeout: Duration) -> cri::ContainerStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status(id);
            if s.state == cri::ContainerState::ContainerExited as i32 {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} still {:?} after {timeout:?}",
                s.state
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Create + start one attempt and wait for it to end (or to be refused).
    pub fn run_attempt(&mut self, pod: &Pod, c: &Container, attempt: u32) -> Attempt {
        let id = self.create(pod, c, attempt);
        let start_error = self.start_container(&id).err();
        let status = self.wait_exited(&id, Duration::from_secs(30));
        Attempt {
            id,
            attempt,
            start_error,
            status,
        }
    }

    /// Starts `c` and waits until it runs (a healthy long-running container).
    pub fn run_until_running(&mut self, pod: &Pod, c: &Container) -> String {
        let id = self.create(pod, c, 0);
        if let Err(e) = self.start_container(&id) {
            panic!("StartContainer {}: {e}", c.name);
        }
        let s = self.status(&id);
        assert_eq!(
            s.state,
            cri::ContainerState::ContainerRunning as i32,
            "{} should run: {s:?}",
            c.name
        );
        id
    }

    /// The kubelet's restart loop for a container that keeps dying: `attempts` attempts,
    /// the back-off between them, and container GC once a period (the first a period after
    /// the loop starts) removing the dead attempts beyond the newest `keep_dead`.
    /// `between(n)` runs after attempt `n` (0-based) died, before the back-off.
    pub fn crash_loop(
        &mut self,
        pod: &Pod,
        c: &Container,
        attempts: u32,
        backoff: BackOff,
        mut between: impl FnMut(&mut CriLab, u32),
    ) -> Vec<Attempt> {
        let mut out: Vec<Attempt> = Vec::new();
        let mut removed = 0;
        let mut last_gc = Instant::now();
        for n in 0..attempts {
            let a = self.run_attempt(pod, c, n);
            assert_eq!(
                a.status.state,
                cri::ContainerState::ContainerExited as i32,
                "attempt {n} of {} should have died",
                c.name
            );
            out.push(a);
            if last_gc.elapsed() >= backoff.gc_period() {
                last_gc = Instant::now();
                while out.len() - removed > backoff.keep_dead {
                    let old = out[removed].id.clone();
                    self.remove_container(&old);
                    removed += 1;
                }
            }
            between(self, n);
            if n + 1 < attempts {
                std::thread::sleep(backoff.delay(n));
            }
        }
        out
    }

    pub fn stop_container(&mut self, id: &str) {
        self.rt
            .block_on(self.runtime.stop_container(cri::StopContainerRequest {
                container_id: id.into(),
                timeout: 0,
            }))
            .unwrap_or_else(|e| panic!("StopContainer {id}: {e}"));
    }

    pub fn remove_container(&mut self, id: &str) {
        self.rt
            .block_on(self.runtime.remove_container(cri::RemoveContainerRequest {
                container_id: id.into(),
            }))
            .unwrap_or_else(|e| panic!("RemoveContainer {id}: {e}"));
    }

    /// StopPodSandbox + RemovePodSandbox (its containers go with it).
    pub fn remove_pod(&mut self, pod: &Pod) {
        let id = pod.sandbox.clone();
        self.rt
            .block_on(self.runtime.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            }))
            .unwrap_or_else(|e| panic!("StopPodSandbox {id}: {e}"));
        self.rt
            .block_on(
                self.runtime
                    .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    }),
            )
            .unwrap_or_else(|e| panic!("RemovePodSandbox {id}: {e}"));
        self.pods.retain(|p| *p != id);
    }

    /// Ids of the containers containerd holds in `k8s.io` (sandboxes included).
    pub fn containerd_containers(&self) -> Vec<String> {
        let out = self
            .ctd
            .ctr_ns(NS, &["containers", "ls", "-q"])
            .expect("ctr");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for CriLab {
    fn drop(&mut self) {
        // Sandboxes stopped through the CRI plugin: their network and mounts go with them.
        for id in std::mem::take(&mut self.pods) {
            let _ = self
                .rt
                .block_on(self.runtime.stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                }));
            let _ = self.rt.block_on(
                self.runtime
                    .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id }),
            );
        }
    }
}

fn image_spec(reference: &str) -> cri::ImageSpec {
    cri::ImageSpec {
        image: reference.into(),
        user_specified_image: reference.into(),
        ..Default::default()
    }
}

/// A stand-in for the kubelet's container hash (stable per name + image).
fn fnv(a: &str, b: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in a.bytes().chain([0]).chain(b.bytes()) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The namespaces of a host-network pod, as the kubelet asks for them (no CNI needed).
fn host_network() -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}
