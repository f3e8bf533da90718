//! A private containerd + runc for `archwatch demo` and the integration suite: its own root,
//! state and socket in a temp dir, never the system containerd. The release is Debian's (on
//! `PATH`) or a newer one unpacked by scripts/containerd-releases; the CRI plugin is off unless
//! asked for. Killed, unmounted and removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod docker;

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
    /// The socket, alone in its directory as `/run/containerd/containerd.sock` is on a node:
    /// containerd removes and re-creates it on every start.
    pub socket: PathBuf,
    bin: Binaries,
    opts: Options,
    child: Option<Child>,
    namespaces: Vec<String>,
}

/// What `ctr run` reported.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub code: Option<i32>,
    pub output: String,
}

/// The containerd release a lab runs: its binaries and the version they report.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// Directory with `containerd`, `containerd-shim-runc-v2` and `ctr`; `None` for the ones
    /// on `PATH` (Debian's package).
    pub dir: Option<PathBuf>,
    /// `major.minor.patch` from `containerd --version`.
    pub version: (u32, u32, u32),
}

impl Binaries {
    /// The release named by `ARCHWATCH_CONTAINERD_DIR` (a directory holding a newer
    /// containerd, see scripts/containerd-releases), else the one on `PATH`.
    pub fn from_env() -> Result<Binaries, LabError> {
        let dir = std::env::var_os("ARCHWATCH_CONTAINERD_DIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);
        Binaries::at(dir)
    }

    pub fn at(dir: Option<PathBuf>) -> Result<Binaries, LabError> {
        let mut b = Binaries {
            dir,
            version: (0, 0, 0),
        };
        let out = Command::new(b.path("containerd"))
            .arg("--version")
            .output()
            .map_err(io(
                "running containerd --version (is it installed? scripts/install-deps)",
            ))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        b.version = parse_version(&text).ok_or_else(|| LabError::Command {
            cmd: "containerd --version".into(),
            stderr: format!("no version in {text:?}"),
        })?;
        Ok(b)
    }

    /// Path of one of the release's programs.
    pub fn path(&self, program: &str) -> PathBuf {
        match &self.dir {
            Some(d) => d.join(program),
            None => PathBuf::from(program),
        }
    }

    /// `1.6.20`, for reports.
    pub fn version_string(&self) -> String {
        let (a, b, c) = self.version;
        format!("{a}.{b}.{c}")
    }
}

/// The first `X.Y.Z` in `containerd --version` output (`containerd github.com/containerd/
/// containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3`, or `.../containerd/v2 2.1.9+unknown`).
fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    text.split_whitespace().skip(1).find_map(|w| {
        let w = w.trim_start_matches('v');
        let mut it = w.split(|c: char| !c.is_ascii_digit());
        let a = it.next()?.parse().ok()?;
        let b = it.next()?.parse().ok()?;
        let c = it.next()?.parse().ok()?;
        w.starts_with(|c: char| c.is_ascii_digit())
            .then_some((a, b, c))
    })
}

/// How a lab containerd is configured.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Enable the CRI plugin (as the kubelet drives it). `None`: CRI disabled.
    pub cri: Option<CriOptions>,
}

/// The CRI plugin's settings that a lab needs.
#[derive(Clone, Debug, Default)]
pub struct CriOptions {
    /// The pause image (imported before the first sandbox).
    pub sandbox_image: String,
    /// `certs.d`-style registry host directory (`hosts.toml` per registry), for pulls from
    /// a plain-HTTP registry on loopback.
    pub registry_config_path: Option<PathBuf>,
}

/// containerd's config file for a release: one writer per config version (1.6 and 1.7 read
/// version 2 with the CRI plugin as `io.containerd.grpc.v1.cri`; 2.x reads version 3 with
/// the CRI plugin split into `io.containerd.cri.v1.{runtime,images}`).
pub fn config_for(
    version: (u32, u32, u32),
    root: &Path,
    state: &Path,
    socket: &Path,
    opts: &Options,
) -> String {
    let head = |v: u32| {
        format!(
            "version = {v}\nroot = \"{}\"\nstate = \"{}\"\n[grpc]\n  address = \"{}\"\n",
            root.display(),
            state.display(),
            socket.display()
        )
    };
    if version.0 >= 2 {
        let mut c = head(3);
        match &opts.cri {
            None => c.push_str(
                "disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.cri.v1.images\", \"io.containerd.cri.v1.runtime\", \"io.containerd.podsandbox.controller.v1.podsandbox\", \"io.containerd.sandbox.controller.v1.shim\"]\n",
            ),
            Some(cri) => {
                // `disabled_plugins` must come before the first table.
                c = c.replacen(
                    "[grpc]",
                    "disabled_plugins = []\n[grpc]",
                    1,
                );
                c.push_str(&format!(
                    "[plugins.'io.containerd.cri.v1.runtime']\n  restrict_oom_score_adj = true\n  enable_selinux = false\n  [plugins.'io.containerd.cri.v1.runtime'.containerd]\n    default_runtime_name = 'runc'\n    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]\n      runtime_type = 'io.containerd.runc.v2'\n[plugins.'io.containerd.cri.v1.images']\n  snapshotter = 'overlayfs'\n  [plugins.'io.containerd.cri.v1.images'.pinned_images]\n    sandbox = '{}'\n",
                    cri.sandbox_image
                ));
                if let Some(p) = &cri.registry_config_path {
                    c.push_str(&format!(
                        "  [plugins.'io.containerd.cri.v1.images'.registry]\n    config_path = '{}'\n",
                        p.display()
                    ));
                }
            }
        }
        c
    } else {
        let mut c = head(2);
        match &opts.cri {
            None => {
                c = c.replacen(
                    "[grpc]",
                    "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]",
                    1,
                )
            }
            Some(cri) => {
                c.push_str(&format!(
                    "[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"{}\"\n  restrict_oom_score_adj = true\n  enable_selinux = false\n  [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n    snapshotter = \"overlayfs\"\n    default_runtime_name = \"runc\"\n    [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n      runtime_type = \"io.containerd.runc.v2\"\n",
                    cri.sandbox_image
                ));
                if let Some(p) = &cri.registry_config_path {
                    c.push_str(&format!(
                        "  [plugins.\"io.containerd.grpc.v1.cri\".registry]\n    config_path = \"{}\"\n",
                        p.display()
                    ));
                }
            }
        }
        c
    }
}

impl Containerd {
    /// A lab on the release `ARCHWATCH_CONTAINERD_DIR` names (else Debian's), CRI disabled.
    pub fn start() -> Result<Containerd, LabError> {
        Containerd::start_with(Binaries::from_env()?, Options::default())
    }

    pub fn start_with(bin: Binaries, opts: Options) -> Result<Containerd, LabError> {
        let dir = tempfile::Builder::new()
            .prefix("archwatch-containerd-")
            .tempdir()
            .map_err(io("temp dir"))?;
        let run = dir.path().join("run").join("containerd");
        std::fs::create_dir_all(&run).map_err(io("socket directory"))?;
        let socket = run.join("containerd.sock");
        let config = config_for(
            bin.version,
            &dir.path().join("root"),
            &dir.path().join("state"),
            &socket,
            &opts,
        );
        std::fs::write(dir.path().join("config.toml"), config).map_err(io("containerd config"))?;
        let mut c = Containerd {
            dir,
            socket,
            bin,
            opts,
            child: None,
            namespaces: Vec::new(),
        };
        c.spawn()?;
        Ok(c)
    }

    /// The release this lab runs.
    pub fn binaries(&self) -> &Binaries {
        &self.bin
    }

    /// How this lab was configured.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// containerd's root directory (snapshots live under it).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// containerd's state directory (its socket's directory is beside it).
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
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
        let mut cmd = Command::new(self.bin.path("containerd"));
        if let Some(d) = &self.bin.dir {
            // containerd finds its shim on PATH: the release's own first.
            let path = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("{}:{path}", d.display()));
        }
        let child = cmd
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
        Command::new(self.bin.path("ctr"))
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
        self.run_platform(ns, image, id, labels, None, timeout)
    }

    /// [`Containerd::run`] with `ctr run --platform`: the variant `platform` of a
    /// multi-platform image, unpacked first if it is not (what a forced platform does).
    pub fn run_platform(
        &mut self,
        ns: &str,
        image: &str,
        id: &str,
        labels: &[(&str, &str)],
        platform: Option<&str>,
        timeout: Duration,
    ) -> Result<RunOutcome, LabError> {
        self.note_ns(ns);
        let mut cmd = Command::new("timeout");
        cmd.arg(timeout.as_secs().max(1).to_string())
            .arg(self.bin.path("ctr"))
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", ns, "run", "--rm"]);
        if let Some(p) = platform {
            cmd.arg("--platform").arg(p);
        }
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

    /// SIGKILL and start again: containerd removes its old socket and binds a new one (a new
    /// inode), as on every restart of a node's containerd.
    pub fn restart(&mut self) -> Result<(), LabError> {
        self.kill_hard();
        self.spawn()
    }

    /// SIGTERM (as `systemctl restart containerd` sends), wait for it to exit, start again.
    pub fn restart_graceful(&mut self) -> Result<(), LabError> {
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = rustix::process::Pid::from_raw(c.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
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
        self.push_as(archive, tag, repo, tag)
    }

    /// `skopeo copy` the image tagged `tag` in an OCI archive to `repo:as_tag` here (a tag
    /// pushed again points at the new image).
    pub fn push_as(
        &self,
        archive: &Path,
        tag: &str,
        repo: &str,
        as_tag: &str,
    ) -> Result<String, LabError> {
        let reference = format!("{}/{repo}:{as_tag}", self.addr);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_of_the_releases_in_debian() {
        for (text, v) in [
            (
                "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3",
                (1, 6, 20),
            ),
            (
                "containerd github.com/containerd/containerd 1.7.24~ds1 1.7.24~ds1-6+deb13u1",
                (1, 7, 24),
            ),
            (
                "containerd github.com/containerd/containerd/v2 2.1.9+unknown ",
                (2, 1, 9),
            ),
            (
                "containerd github.com/containerd/containerd v1.7.2 abc",
                (1, 7, 2),
            ),
        ] {
            assert_eq!(parse_version(text), Some(v), "{text}");
        }
        assert_eq!(parse_version("containerd (devel)"), None);
    }

    #[test]
    fn one_config_writer_per_config_version() {
        let p = Path::new("/x");
        let cri = Options {
            cri: Some(CriOptions {
                sandbox_image: "lab/pause:1".into(),
                registry_config_path: Some("/x/certs.d".into()),
            }),
        };
        let v16 = config_for((1, 6, 20), p, p, p, &Options::default());
        assert!(v16.starts_with("version = 2\n"));
        assert!(v16.contains("disabled_plugins = [\"io.containerd.grpc.v1.cri\"]"));
        let v17 = config_for((1, 7, 24), p, p, p, &cri);
        assert!(v17.contains("[plugins.\"io.containerd.grpc.v1.cri\"]"));
        assert!(v17.contains("sandbox_image = \"lab/pause:1\""));
        assert!(v17.contains("restrict_oom_score_adj = true"));
        let v2 = config_for((2, 1, 9), p, p, p, &cri);
        assert!(v2.starts_with("version = 3\n"));
        assert!(v2.contains("[plugins.'io.containerd.cri.v1.images'.pinned_images]"));
        assert!(v2.contains("config_path = '/x/certs.d'"));
        let v2_plain = config_for((2, 1, 9), p, p, p, &Options::default());
        assert!(v2_plain.contains("\"io.containerd.grpc.v1.cri\""));
    }
}
