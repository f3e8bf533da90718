//! A private Docker Engine for `archwatch demo`, the benches and the integration suite: Debian's docker.io (Engine 20.10) in a temp dir, never the
//! system one. Its own data root, exec root, pidfile, API socket, cgroup parent and trust key;
//! no bridge, no iptables, no userland proxy; `/etc/docker/daemon.json` is never read. dockerd
//! starts and manages its own containerd, whose socket, state and config live under the
//! exec root (`<exec-root>/containerd/containerd.sock`) and whose containers are in the
//! `moby` namespace: it cannot meet the suite's other private containerds.
//!
//! The CLI is Debian's `/usr/bin/docker` by its full path (a newer static CLI may come first
//! in PATH), with a private `DOCKER_CONFIG` and without the caller's `DOCKER_*` variables.
//! Images are built with the legacy builder, `FROM scratch` only: no network is needed.
//!
//! Drop removes every container, stops dockerd (SIGTERM, then SIGKILL), kills what is left in
//! its cgroups, its containerd and shims, unmounts whatever is left under the temp dir
//! (overlay mounts, network namespaces, the data root's own bind mount) and removes it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{io, LabError};

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Debian's CLI (docker.io), never the one PATH finds first.
pub const DOCKER: &str = "/usr/bin/docker";

/// Where docker.io puts dockerd (`/usr/sbin` in Debian 12; `/usr/bin` is tried too).
pub fn dockerd_binary() -> Option<PathBuf> {
    ["/usr/sbin/dockerd", "/usr/bin/dockerd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Whether a private Docker Engine can start here: dockerd and the CLI are installed, and no
/// containerd answers at the system path (dockerd 20.10 would use it instead of its own).
pub fn available() -> Result<(), LabError> {
    if dockerd_binary().is_none() || !Path::new(DOCKER).is_file() {
        return Err(LabError::Command {
            cmd: "dockerd".into(),
            stderr: "not installed (Debian's docker.io; scripts/install-deps)".into(),
        });
    }
    if Path::new(SYSTEM_CONTAINERD).exists() {
        return Err(LabError::Command {
            cmd: "dockerd".into(),
            stderr: format!(
                "{SYSTEM_CONTAINERD} exists: dockerd 20.10 would use that containerd instead of starting its own"
            ),
        });
    }
    Ok(())
}

/// The containerd socket whose mere existence makes dockerd 20.10 use that containerd
/// instead of starting its own.
const SYSTEM_CONTAINERD: &str = "/run/containerd/containerd.sock";

/// What `docker run` said.
#[derive(Debug)]
pub struct RunOutcome {
    /// The CLI's exit status: the container's exit code, or 125-127 when Docker refused.
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

pub struct Dockerd {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    child: Option<Child>,
    socket: PathBuf,
    cgroup_parent: String,
    contexts: std::sync::atomic::AtomicU32,
}

impl Dockerd {
    /// Starts dockerd and waits until `docker version` answers (60 s, the machine is small
    /// and shared); panics with the tail of dockerd's log otherwise.
    pub fn start() -> Result<Dockerd, LabError> {
        available()?;
        let dir = tempfile::Builder::new()
            .prefix("aw-dockerd-")
            .tempdir()
            .map_err(io("dockerd temp dir"))?;
        let root = dir.path().to_path_buf();
        // A unix socket path has room for 107 bytes: the longest one dockerd makes is
        // containerd's ttrpc socket under the exec root.
        let longest = root.join("exec/containerd/containerd.sock.ttrpc");
        if longest.as_os_str().len() >= 100 {
            return Err(LabError::Command {
                cmd: "dockerd".into(),
                stderr: format!(
                    "{}: temp dir path too long for a unix socket (set TMPDIR shorter)",
                    longest.display()
                ),
            });
        }
        for d in ["data", "exec", "cli"] {
            std::fs::create_dir_all(root.join(d)).map_err(io("dockerd dirs"))?;
        }
        // Not quite `{}`: dockerd 20.10 writes its libtrust key to /etc/docker/key.json
        // unless told otherwise, and this key has no command-line flag.
        let config = serde_json::json!({ "deprecated-key-path": root.join("key.json") });
        std::fs::write(root.join("daemon.json"), config.to_string()).map_err(io("daemon.json"))?;
        let mut d = Dockerd {
            socket: root.join("docker.sock"),
            cgroup_parent: format!(
                "aw-dockerd-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            ),
            root,
            dir: Some(dir),
            child: None,
            contexts: std::sync::atomic::AtomicU32::new(0),
        };
        d.spawn()?;
        Ok(d)
    }

    fn spawn(&mut self) -> Result<(), LabError> {
        let log =
            std::fs::File::create(self.root.join("dockerd.log")).map_err(io("dockerd log"))?;
        let log2 = log.try_clone().map_err(io("dockerd log"))?;
        let bin = dockerd_binary().ok_or_else(|| LabError::Command {
            cmd: "dockerd".into(),
            stderr: "not installed".into(),
        })?;
        let mut cmd = Command::new(bin);
        cmd.arg("--data-root")
            .arg(self.data_root())
            .arg("--exec-root")
            .arg(self.exec_root())
            .arg("--pidfile")
            .arg(self.root.join("docker.pid"))
            .arg("-H")
            .arg(self.host())
            .arg("--config-file")
            .arg(self.root.join("daemon.json"))
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--userland-proxy=false",
                "--storage-driver=overlay2",
                "--exec-opt=native.cgroupdriver=cgroupfs",
                "--shutdown-timeout=3",
            ])
            .arg(format!("--cgroup-parent=/{}", self.cgroup_parent));
        for v in [
            "DOCKER_HOST",
            "DOCKER_CONFIG",
            "DOCKER_CONTEXT",
            "NOTIFY_SOCKET",
        ] {
            cmd.env_remove(v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(io(
                "starting dockerd (scripts/install-deps installs docker.io)",
            ))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(LabError::Command {
                    cmd: "dockerd".into(),
                    stderr: format!(
                        "exited during start ({status}); its log ends:\n{}",
                        self.log_tail(40)
                    ),
                });
            }
            if self
                .docker(&["version", "--format", "{{.Server.APIVersion}}"])
                .is_ok_and(|v| v.status.success())
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                let tail = self.log_tail(40);
                self.stop();
                return Err(LabError::Command {
                    cmd: "dockerd".into(),
                    stderr: format!(
                        "did not answer `docker version` within 60 s; its log ends:\n{tail}"
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `unix://<socket>`, for DOCKER_HOST or `--docker-host`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The temp dir everything lives in.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    pub fn data_root(&self) -> PathBuf {
        self.root.join("data")
    }

    pub fn exec_root(&self) -> PathBuf {
        self.root.join("exec")
    }

    /// The socket of the containerd that dockerd started and manages.
    pub fn containerd_socket(&self) -> PathBuf {
        self.exec_root().join("containerd/containerd.sock")
    }

    /// The cgroup (relative to each hierarchy's root) that holds this daemon's containers.
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    /// dockerd's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// dockerd's log (its managed containerd logs into it too).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("dockerd.log")).unwrap_or_default()
    }

    fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Runs Debian's `docker -H <socket> ARGS` (legacy builder, private CLI config, two
    /// minutes at most) and returns what it said.
    pub fn docker(&self, args: &[&str]) -> Result<Output, LabError> {
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "5", "120", DOCKER, "-H"])
            .arg(self.host())
            .args(args)
            .env("DOCKER_CONFIG", self.root.join("cli"))
            .env("DOCKER_BUILDKIT", "0")
            .stdin(Stdio::null());
        for v in [
            "DOCKER_HOST",
            "DOCKER_CONTEXT",
            "DOCKER_TLS_VERIFY",
            "DOCKER_CERT_PATH",
            "DOCKER_API_VERSION",
            "DOCKER_DEFAULT_PLATFORM",
        ] {
            cmd.env_remove(v);
        }
        cmd.output().map_err(io("running /usr/bin/docker"))
    }

    /// `docker ARGS` that must succeed; returns its stdout, trimmed.
    pub fn docker_ok(&self, args: &[&str]) -> Result<String, LabError> {
        let o = self.docker(args)?;
        if !o.status.success() {
            return Err(LabError::Command {
                cmd: format!("docker {}", args.join(" ")),
                stderr: format!(
                    "{}: {}{}",
                    o.status,
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
            });
        }
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    /// The API version the daemon speaks.
    pub fn api_version(&self) -> Result<String, LabError> {
        self.docker_ok(&["version", "--format", "{{.Server.APIVersion}}"])
    }

    /// Builds `tag` with the legacy builder from a context of `files` (path in the context,
    /// bytes, mode) and a Dockerfile of `FROM scratch` followed by `dockerfile_lines`.
    /// Returns the image id.
    pub fn build(
        &self,
        tag: &str,
        files: &[(&str, &[u8], u32)],
        dockerfile_lines: &[&str],
    ) -> Result<String, LabError> {
        use std::os::unix::fs::PermissionsExt;
        let n = self
            .contexts
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let ctx = self.root.join(format!("context-{n}"));
        std::fs::create_dir_all(&ctx).map_err(io("build context"))?;
        for (path, bytes, mode) in files {
            let p = ctx.join(path.trim_start_matches('/'));
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).map_err(io("context dir"))?;
            }
            std::fs::write(&p, bytes).map_err(io("context file"))?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))
                .map_err(io("context file mode"))?;
        }
        let mut dockerfile = String::from("FROM scratch\n");
        for l in dockerfile_lines {
            if l.trim_start().to_ascii_uppercase().starts_with("FROM") {
                return Err(LabError::Command {
                    cmd: "docker build".into(),
                    stderr: format!("FROM scratch only (no network): {l}"),
                });
            }
            dockerfile.push_str(l);
            dockerfile.push('\n');
        }
        std::fs::write(ctx.join("Dockerfile"), dockerfile).map_err(io("Dockerfile"))?;
        let ctx_s = ctx.display().to_string();
        self.docker_ok(&["build", "-q", "-t", tag, &ctx_s])
    }

    /// Loads `spec` as image `tag` with `docker load`, for what `docker build` cannot make
    /// (a config that claims another architecture). Engine 20.10's `docker load` reads only
    /// Docker's own archive format (an OCI layout fails with `open …/blobs/json: no such
    /// file or directory`), so the OCI archive that `archwatch::oci` writes is converted by
    /// skopeo first. Returns the image id.
    pub fn load(&self, tag: &str, spec: &crate::oci::ImageSpec) -> Result<String, LabError> {
        let n = self
            .contexts
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let oci = self.root.join(format!("load-{n}.oci.tar"));
        let archive = self.root.join(format!("load-{n}.docker.tar"));
        let oci_err = |e: crate::oci::OciError| LabError::Command {
            cmd: "writing an OCI archive".into(),
            stderr: e.to_string(),
        };
        let mut l = crate::oci::Layout::new();
        let m = l.add_image(spec).map_err(oci_err)?;
        l.tag(tag, &m);
        l.write_archive(&oci).map_err(oci_err)?;
        let out = Command::new("skopeo")
            .args(["--insecure-policy", "copy", "-q"])
            .arg(format!("oci-archive:{}", oci.display()))
            .arg(format!("docker-archive:{}:{tag}", archive.display()))
            .output()
            .map_err(io("skopeo (scripts/install-deps)"))?;
        if !out.status.success() {
            return Err(LabError::Command {
                cmd: "skopeo copy oci-archive: docker-archive:".into(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        let a = archive.display().to_string();
        let said = self.docker_ok(&["load", "-i", &a])?;
        let _ = std::fs::remove_file(&oci);
        let _ = std::fs::remove_file(&archive);
        if !said.contains(tag) {
            return Err(LabError::Command {
                cmd: "docker load".into(),
                stderr: format!("said {said:?}, not {tag}"),
            });
        }
        self.docker_ok(&["image", "inspect", "--format", "{{.Id}}", tag])
    }

    /// `docker run --name NAME --network none OPTIONS IMAGE`.
    pub fn run(&self, name: &str, image: &str, options: &[&str]) -> Result<RunOutcome, LabError> {
        self.run_cmd(name, image, options, &[])
    }

    /// `docker run --name NAME --network none OPTIONS IMAGE ARGS`.
    pub fn run_cmd(
        &self,
        name: &str,
        image: &str,
        options: &[&str],
        args: &[&str],
    ) -> Result<RunOutcome, LabError> {
        let mut a = vec!["run", "--name", name, "--network", "none"];
        a.extend_from_slice(options);
        a.push(image);
        a.extend_from_slice(args);
        let o = self.docker(&a)?;
        Ok(RunOutcome {
            exit_code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        })
    }

    /// `docker inspect` of one object, as JSON.
    pub fn inspect(&self, what: &str) -> Result<serde_json::Value, LabError> {
        let out = self.docker_ok(&["inspect", what])?;
        let bad = |stderr: String| LabError::Command {
            cmd: format!("docker inspect {what}"),
            stderr,
        };
        let mut v: Vec<serde_json::Value> =
            serde_json::from_str(&out).map_err(|e| bad(e.to_string()))?;
        if v.len() != 1 {
            return Err(bad(format!("{} objects: {out}", v.len())));
        }
        Ok(v.remove(0))
    }

    /// `docker logs NAME`: (stdout, stderr) as the container wrote them.
    pub fn logs(&self, name: &str) -> Result<(String, String), LabError> {
        let o = self.docker(&["logs", name])?;
        if !o.status.success() {
            return Err(LabError::Command {
                cmd: format!("docker logs {name}"),
                stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            });
        }
        Ok((
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        ))
    }

    /// Removes every container, then stops dockerd: SIGTERM, SIGKILL after 10 s.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        let ids = self
            .docker(&["ps", "-aq"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut a = vec!["rm", "-f"];
            a.extend(ids);
            let _ = self.docker(&a);
        }
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGKILL to dockerd alone, as a crash would: its containerd, shims and containers
    /// stay (Drop still cleans them up).
    pub fn kill_hard(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Processes of this daemon that may outlive it: its containerd and shims (their
    /// command lines name the exec root) and whatever runs in its cgroups.
    pub fn leftover_processes(&self) -> Vec<u32> {
        let exec_root = self.exec_root().display().to_string();
        let mut pids: Vec<u32> = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if Some(pid) == self.pid() {
                continue;
            }
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&exec_root) {
                pids.push(pid);
            }
        }
        for dir in self.cgroup_dirs() {
            for procs in walk_dirs(&dir).into_iter().map(|d| d.join("cgroup.procs")) {
                for l in std::fs::read_to_string(procs).unwrap_or_default().lines() {
                    if let Ok(pid) = l.trim().parse() {
                        pids.push(pid);
                    }
                }
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids.retain(|p| alive(*p));
        pids
    }

    /// This daemon's cgroup parent in every hierarchy where it exists.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let base = Path::new("/sys/fs/cgroup");
        let mut out = vec![base.join(&self.cgroup_parent)];
        for e in std::fs::read_dir(base).into_iter().flatten().flatten() {
            out.push(e.path().join(&self.cgroup_parent));
        }
        out.retain(|p| p.is_dir());
        out
    }

    /// Mount points under the temp dir (overlays, netns files, the data root's bind mount).
    pub fn mounts(&self) -> Vec<String> {
        mounts_under(&self.root)
    }
}

/// Whether `pid` is a live process: not gone, and not a zombie waiting for a parent that is
/// not this test (a container's process is reparented when its shim dies).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
        })
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// Mount points at or under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    let mut points: Vec<String> = std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|p| *p == prefix || p.starts_with(&format!("{prefix}/")))
        .map(String::from)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points
}

/// `dir` and every directory below it, deepest first.
fn walk_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.extend(walk_dirs(&e.path()));
        }
    }
    out.push(dir.to_path_buf());
    out
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
        // What a SIGKILLed dockerd leaves: its containerd, shims, container processes.
        for _ in 0..3 {
            let left = self.leftover_processes();
            if left.is_empty() {
                break;
            }
            for pid in left {
                if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        for p in self.mounts() {
            let _ = Command::new("umount").arg("-l").arg(&p).status();
        }
        for dir in self.cgroup_dirs() {
            for d in walk_dirs(&dir) {
                let _ = std::fs::remove_dir(&d);
            }
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}
