//! A private containerd + runc for `archwatch demo` and the integration suite: its own root,
//! state and socket in a temp dir, CRI disabled, never the system containerd. Killed,
//! unmounted and removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("containerd did not answer within 20 s; its log:\n{0}")]
    NotReady(String),
    #[error("{cmd} failed: {stderr}")]
    Command { cmd: String, stderr: String },
}

impl LabError {
    pub fn kind(&self) -> &'static str {
        match self {
            LabError::Io { .. } => "io",
            LabError::NotReady(_) => "containerd_not_ready",
            LabError::Command { .. } => "command",
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

pub struct Containerd {
    dir: tempfile::TempDir,
    pub socket: PathBuf,
    child: Option<Child>,
    namespaces: Vec<String>,
}

/// What `ctr run` reported.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub code: Option<i32>,
    pub output: String,
}

impl Containerd {
    pub fn start() -> Result<Containerd, LabError> {
        let dir = tempfile::Builder::new()
            .prefix("archwatch-containerd-")
            .tempdir()
            .map_err(io("temp dir"))?;
        let socket = dir.path().join("containerd.sock");
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{sock}\"\n",
            root = dir.path().join("root").display(),
            state = dir.path().join("state").display(),
            sock = socket.display()
        );
        std::fs::write(dir.path().join("config.toml"), config).map_err(io("containerd config"))?;
        let mut c = Containerd {
            dir,
            socket,
            child: None,
            namespaces: Vec::new(),
        };
        c.spawn()?;
        Ok(c)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self) -> Result<(), LabError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("containerd.log"))
            .map_err(io("containerd log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(io(
                "starting containerd (is it installed? scripts/install-deps)",
            ))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self
                .ctr(&["version"])
                .map(|o| o.status.success())
                .unwrap_or(false)
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(LabError::NotReady(self.log()))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    pub fn ctr(&self, args: &[&str]) -> Result<Output, LabError> {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .output()
            .map_err(io("running ctr"))
    }

    pub fn ctr_ns(&self, ns: &str, args: &[&str]) -> Result<Output, LabError> {
        let mut all = vec!["--namespace", ns];
        all.extend_from_slice(args);
        self.ctr(&all)
    }

    fn note_ns(&mut self, ns: &str) {
        if !self.namespaces.iter().any(|n| n == ns) {
            self.namespaces.push(ns.to_string());
        }
    }

    /// `ctr images import --all-platforms`.
    pub fn import(&mut self, ns: &str, archive: &Path) -> Result<(), LabError> {
        self.note_ns(ns);
        let path = archive.to_string_lossy().into_owned();
        let out = self.ctr_ns(ns, &["images", "import", "--all-platforms", &path])?;
        if !out.status.success() {
            return Err(LabError::Command {
                cmd: format!("ctr images import {path}"),
                stderr: String::from_utf8_lossy(&out.stderr).into(),
            });
        }
        Ok(())
    }

    /// `ctr images pull --plain-http` (from a registry on loopback).
    pub fn pull_plain_http(&mut self, ns: &str, reference: &str) -> Result<(), LabError> {
        self.note_ns(ns);
        let out = self.ctr_ns(ns, &["images", "pull", "--plain-http", reference])?;
        if !out.status.success() {
            return Err(LabError::Command {
                cmd: format!("ctr images pull {reference}"),
                stderr: String::from_utf8_lossy(&out.stderr).into(),
            });
        }
        Ok(())
    }

    /// `ctr run --rm` with labels; returns the exit code and everything printed. The
    /// container is removed afterwards even when its task could not be created.
    pub fn run(
        &mut self,
        ns: &str,
        image: &str,
        id: &str,
        labels: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<RunOutcome, LabError> {
        self.note_ns(ns);
        let mut cmd = Command::new("timeout");
        cmd.arg(timeout.as_secs().max(1).to_string())
            .arg("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", ns, "run", "--rm"]);
        for (k, v) in labels {
            cmd.arg("--label").arg(format!("{k}={v}"));
        }
        let out = cmd
            .arg(image)
            .arg(id)
            .output()
            .map_err(io("running ctr run"))?;
        let _ = self.ctr_ns(ns, &["containers", "delete", id]);
        Ok(RunOutcome {
            code: out.status.code(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }

    /// SIGKILL, as a crash would.
    pub fn kill_hard(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) -> Result<(), LabError> {
        self.kill_hard();
        self.spawn()
    }

    fn cleanup_mounts(&self) {
        let root = self.dir.path().display().to_string();
        if let Ok(m) = std::fs::read_to_string("/proc/self/mounts") {
            let mut points: Vec<&str> = m
                .lines()
                .filter_map(|l| l.split(' ').nth(1))
                .filter(|p| p.starts_with(&root))
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for p in points {
                let _ = Command::new("umount").arg("-l").arg(p).status();
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            let mut namespaces = self.namespaces.clone();
            namespaces.push("default".into());
            for ns in namespaces {
                if let Ok(o) = self.ctr_ns(&ns, &["tasks", "ls", "-q"]) {
                    for id in String::from_utf8_lossy(&o.stdout).lines() {
                        let _ = self.ctr_ns(&ns, &["tasks", "kill", "-s", "SIGKILL", id]);
                        let _ = self.ctr_ns(&ns, &["tasks", "delete", "-f", id]);
                    }
                }
            }
        }
        self.kill_hard();
        self.cleanup_mounts();
    }
}

/// A registry on loopback (Debian's docker-registry), storage in a temp dir.
pub struct Registry {
    _dir: tempfile::TempDir,
    pub addr: String,
    child: Child,
}

impl Registry {
    pub fn start() -> Result<Registry, LabError> {
        let dir = tempfile::Builder::new()
            .prefix("archwatch-registry-")
            .tempdir()
            .map_err(io("temp dir"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io("free port"))?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).map_err(io("registry config"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io(
                "starting docker-registry (scripts/install-deps installs it)",
            ))?;
        let r = Registry {
            _dir: dir,
            addr,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(&r.addr).is_ok() {
                return Ok(r);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(LabError::Command {
            cmd: "docker-registry serve".into(),
            stderr: "did not listen within 15 s".into(),
        })
    }

    /// `skopeo copy` an OCI archive (tag `tag` inside it) to `repo:tag` here, plain HTTP.
    pub fn push(&self, archive: &Path, tag: &str, repo: &str) -> Result<String, LabError> {
        let reference = format!("{}/{repo}:{tag}", self.addr);
        let out = Command::new("skopeo")
            .args(["copy", "--all", "--dest-tls-verify=false"])
            .arg(format!("oci-archive:{}:{tag}", archive.display()))
            .arg(format!("docker://{reference}"))
            .output()
            .map_err(io("running skopeo"))?;
        if !out.status.success() {
            return Err(LabError::Command {
                cmd: format!("skopeo copy to {reference}"),
                stderr: String::from_utf8_lossy(&out.stderr).into(),
            });
        }
        Ok(reference)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// binfmt_misc, mounted for the duration when it was not.
pub struct BinfmtMount {
    mounted_here: bool,
}

pub const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";

impl BinfmtMount {
    pub fn ensure() -> Result<BinfmtMount, LabError> {
        if Path::new(BINFMT_DIR).join("status").exists() {
            return Ok(BinfmtMount {
                mounted_here: false,
            });
        }
        let out = Command::new("mount")
            .args(["-t", "binfmt_misc", "binfmt_misc", BINFMT_DIR])
            .output()
            .map_err(io("mount"))?;
        if !out.status.success() {
            return Err(LabError::Command {
                cmd: "mount -t binfmt_misc".into(),
                stderr: String::from_utf8_lossy(&out.stderr).into(),
            });
        }
        Ok(BinfmtMount { mounted_here: true })
    }
}

impl Drop for BinfmtMount {
    fn drop(&mut self) {
        if self.mounted_here {
            let _ = Command::new("umount").arg(BINFMT_DIR).status();
        }
    }
}

/// A binfmt_misc handler registered under a unique name; unregistered on drop.
pub struct BinfmtHandler {
    pub name: String,
}

impl BinfmtHandler {
    /// Registers `:name:M:offset:magic:mask:interpreter:flags` (bytes escaped as `\xHH`).
    pub fn register(
        name: &str,
        magic: &[u8],
        mask: &[u8],
        interpreter: &str,
        flags: &str,
    ) -> Result<BinfmtHandler, LabError> {
        let esc = |b: &[u8]| b.iter().map(|x| format!("\\x{x:02x}")).collect::<String>();
        let line = format!(
            ":{name}:M:0:{}:{}:{interpreter}:{flags}",
            esc(magic),
            esc(mask)
        );
        std::fs::write(Path::new(BINFMT_DIR).join("register"), line)
            .map_err(io(format!("registering binfmt_misc handler {name}")))?;
        Ok(BinfmtHandler {
            name: name.to_string(),
        })
    }
}

impl Drop for BinfmtHandler {
    fn drop(&mut self) {
        let _ = std::fs::write(Path::new(BINFMT_DIR).join(&self.name), "-1");
    }
}
