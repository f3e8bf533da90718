//! The agent as the shipped DaemonSet runs it, without a kubelet: the container's args, env,
//! capabilities, no_new_privs, read-only root and hostPath volumes (with their mount
//! propagation) are read from a DaemonSet object — the one `manifests/` ships, as kustomize
//! renders it — and applied to the real binary in a private mount and PID namespace:
//!
//! ```text
//! unshare --mount --pid --fork --propagation slave
//!   └ sh: new root (the image: /archwatch), one bind mount per volumeMount (rbind, ro remount,
//!         rslave for HostToContainer, rprivate for None), fresh /proc, minimal /dev,
//!         root remounted read-only when readOnlyRootFilesystem
//!       └ capsh --chroot --drop=<all but the manifest's> --inh= --no-new-privs
//!           └ /archwatch <the manifest's args>
//! ```
//!
//! The node's paths (`/run/containerd`, `/var/lib/containerd`, `/var/log/archwatch`, …) are
//! the lab's: [`NodePaths`] says where each one is here. A volume mounted at its own host path
//! (the containerd root, whose snapshot paths the agent reads as containerd reports them) is
//! mounted at the lab path, and the args that point into such a volume are rewritten the same
//! way. What this does not reproduce: the seccomp profile, the memory limit and the pod
//! network (the agent shares the host's network so the test can scrape it). The test binary
//! is linked dynamically, so the host's library directories are bound read-only into the root
//! as a base image would carry them.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;

pub use super::manifests::HostMount;
use super::manifests::{agent_container, host_mounts};

/// Where each node path the manifests name is in this lab (longest prefix wins).
#[derive(Clone, Debug, Default)]
pub struct NodePaths {
    map: Vec<(String, PathBuf)>,
}

impl NodePaths {
    /// The node paths of a lab containerd (vanilla, k3s and RKE2 layouts all lead to it), the
    /// host's own `/proc` and binfmt_misc, and fresh directories for the agent's journal and
    /// API socket.
    pub fn lab(run_dir: &Path, root: &Path, scratch: &Path) -> NodePaths {
        let log = scratch.join("var-log-archwatch");
        let api = scratch.join("run-archwatch");
        std::fs::create_dir_all(&log).expect("journal dir");
        std::fs::create_dir_all(&api).expect("api dir");
        let mut n = NodePaths::default();
        for p in ["/run/containerd", "/run/k3s/containerd"] {
            n = n.with(p, run_dir);
        }
        for p in [
            "/var/lib/containerd",
            "/var/lib/rancher/k3s/agent/containerd",
            "/var/lib/rancher/rke2/agent/containerd",
        ] {
            n = n.with(p, root);
        }
        n.with("/var/log/archwatch", &log)
            .with("/run/archwatch", &api)
            .with("/proc", Path::new("/proc"))
    }

    pub fn with(mut self, node: &str, here: &Path) -> NodePaths {
        self.map.retain(|(n, _)| n != node);
        self.map.push((node.to_string(), here.to_path_buf()));
        self
    }

    /// Where `node_path` is here; `None` when no known prefix covers it.
    pub fn resolve(&self, node_path: &str) -> Option<PathBuf> {
        self.map
            .iter()
            .filter(|(n, _)| {
                node_path == n
                    || (node_path.starts_with(n.as_str())
                        && node_path.as_bytes().get(n.len()) == Some(&b'/'))
            })
            .max_by_key(|(n, _)| n.len())
            .map(|(n, here)| {
                let rest = node_path[n.len()..].trim_start_matches('/');
                if rest.is_empty() {
                    here.clone()
                } else {
                    here.join(rest)
                }
            })
    }
}

/// What the DaemonSet's agent container is given.
#[derive(Clone, Debug)]
pub struct ContainerSpec {
    pub command: Vec<String>,
    pub args: Vec<String>,
    /// Plain values; `fieldRef` values are filled in by [`PodAgent::start`].
    pub env: Vec<(String, Option<String>)>,
    pub mounts: Vec<HostMount>,
    /// Capabilities the process keeps, as capsh names (`cap_sys_admin`).
    pub caps: Vec<String>,
    pub no_new_privs: bool,
    pub read_only_root: bool,
    pub run_as_user: i64,
}

/// containerd's and runc's default capability set for a non-privileged container.
const RUNTIME_DEFAULT_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Every capability this kernel knows, as capsh names.
pub fn all_caps() -> Vec<String> {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .expect("cap_last_cap")
        .trim()
        .parse()
        .expect("cap_last_cap number");
    let mask = (1u64 << (last + 1)) - 1;
    let out = Command::new("capsh")
        .arg(format!("--decode={mask:#x}"))
        .output()
        .expect("capsh (libcap2-bin, scripts/install-deps)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .split_once('=')
        .expect("capsh --decode output")
        .1
        .split(',')
        .map(str::to_string)
        .collect()
}

impl ContainerSpec {
    /// The agent's container of `ds`, with its hostPath volumes.
    pub fn from_daemonset(ds: &DaemonSet) -> ContainerSpec {
        let pod = ds.spec.template.spec.as_ref().expect("pod spec");
        let c = agent_container(ds);
        let mounts = host_mounts(ds);
        assert_eq!(
            mounts.len(),
            c.volume_mounts.as_ref().map_or(0, Vec::len),
            "every volume of the agent is a hostPath"
        );
        let sc = c.security_context.clone().unwrap_or_default();
        let caps = if sc.privileged == Some(true) {
            all_caps()
        } else {
            let capabilities = sc.capabilities.clone().unwrap_or_default();
            let drop: Vec<String> = capabilities
                .drop
                .unwrap_or_default()
                .iter()
                .map(|s| s.to_ascii_uppercase())
                .collect();
            let mut keep: Vec<String> = if drop.iter().any(|d| d == "ALL") {
                Vec::new()
            } else {
                RUNTIME_DEFAULT_CAPS
                    .iter()
                    .map(|s| s.to_string())
                    .filter(|c| !drop.contains(c))
                    .collect()
            };
            for a in capabilities.add.unwrap_or_default() {
                let a = a.to_ascii_uppercase();
                if !keep.contains(&a) {
                    keep.push(a);
                }
            }
            keep.into_iter()
                .map(|c| format!("cap_{}", c.trim_start_matches("CAP_").to_ascii_lowercase()))
                .collect()
        };
        let run_as_user = sc
            .run_as_user
            .or_else(|| pod.security_context.as_ref().and_then(|p| p.run_as_user))
            .unwrap_or(0);
        ContainerSpec {
            command: c.command.clone().unwrap_or_default(),
            args: c.args.clone().unwrap_or_default(),
            env: c
                .env
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|e| (e.name, e.value))
                .collect(),
            mounts,
            caps,
            // Kubernetes sets no_new_privs unless allowPrivilegeEscalation is true.
            no_new_privs: sc.allow_privilege_escalation != Some(true)
                && sc.privileged != Some(true),
            read_only_root: sc.read_only_root_filesystem == Some(true),
            run_as_user,
        }
    }

    /// The arg `--NAME=VALUE` (or `--NAME VALUE`) as the manifest gives it.
    pub fn arg(&self, name: &str) -> Option<String> {
        let flag = format!("--{name}");
        let mut it = self.args.iter();
        while let Some(a) = it.next() {
            if let Some(v) = a.strip_prefix(&format!("{flag}=")) {
                return Some(v.to_string());
            }
            if *a == flag {
                return it.next().cloned();
            }
        }
        None
    }
}

/// The agent running as the DaemonSet's container.
pub struct PodAgent {
    child: Child,
    pub spec: ContainerSpec,
    /// The new root (inside the mount namespace).
    pub root: PathBuf,
    pub listen: String,
    /// Host-side paths of what the manifest's args name.
    pub journal: Option<PathBuf>,
    pub api_socket: Option<PathBuf>,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

impl PodAgent {
    /// Starts the agent as `spec` says, on the node `node` describes. `extra` args are added
    /// after the manifest's (the test's own: a shorter bound, `--kube off`, …); the listen
    /// address is always moved to a free loopback port.
    pub fn start(spec: &ContainerSpec, node: &NodePaths, extra: &[&str]) -> PodAgent {
        assert_eq!(
            spec.run_as_user, 0,
            "the harness runs the agent as root, as the DaemonSet does"
        );
        let dir = tempfile::Builder::new()
            .prefix("archwatch-pod-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(&root).expect("rootfs");
        let log = dir.path().join("agent.log");

        // Where each volume lands inside the root, and how args are rewritten.
        let mut rewrites: Vec<(String, String)> = Vec::new();
        let mut script = String::from("set -eu\n");
        let r = root.display().to_string();
        script += &format!("R={}\n", sh_quote(&r));
        script += "mount --bind \"$R\" \"$R\"\nmount --make-private \"$R\"\n";
        // The image: the binary at /archwatch, and the host's libraries it links.
        script += &format!(
            "touch \"$R/archwatch\"\nmount --bind {} \"$R/archwatch\"\n",
            sh_quote(env!("CARGO_BIN_EXE_archwatch"))
        );
        for lib in ["/lib", "/lib64", "/usr/lib"] {
            if Path::new(lib).is_dir() {
                script += &format!(
                    "mkdir -p \"$R{lib}\"\nmount --rbind {lib} \"$R{lib}\"\nmount -o remount,bind,ro \"$R{lib}\"\n"
                );
            }
        }
        for m in &spec.mounts {
            let host_path = m.host_path.display().to_string();
            let mount_path = m.mount_path.display().to_string();
            let src = node.resolve(&host_path).unwrap_or_else(|| {
                panic!("hostPath {host_path} has no place in this lab (NodePaths::with)")
            });
            let dst = if mount_path == host_path {
                let here = src.display().to_string();
                rewrites.push((mount_path.clone(), here.clone()));
                here
            } else {
                mount_path.clone()
            };
            let is_dir = std::fs::metadata(&src)
                .map(|md| md.is_dir())
                .unwrap_or(true);
            if !src.exists() && m.host_type.as_deref() == Some("DirectoryOrCreate") {
                std::fs::create_dir_all(&src).expect("DirectoryOrCreate");
            }
            assert!(
                src.exists(),
                "hostPath {host_path} ({}) does not exist: the kubelet would refuse the pod",
                src.display()
            );
            if is_dir {
                script += &format!("mkdir -p \"$R\"{}\n", sh_quote(&dst));
            } else {
                script += &format!(
                    "mkdir -p \"$(dirname \"$R\"{d})\"\ntouch \"$R\"{d}\n",
                    d = sh_quote(&dst)
                );
            }
            script += &format!(
                "mount --rbind {} \"$R\"{}\n",
                sh_quote(&src.display().to_string()),
                sh_quote(&dst)
            );
            if m.read_only {
                script += &format!("mount -o remount,bind,ro \"$R\"{}\n", sh_quote(&dst));
            }
            let prop = match m.propagation.as_deref().unwrap_or("None") {
                "HostToContainer" => "--make-rslave",
                "Bidirectional" => "--make-rshared",
                _ => "--make-rprivate",
            };
            script += &format!("mount {prop} \"$R\"{}\n", sh_quote(&dst));
        }
        script += "mkdir -p \"$R/proc\" \"$R/dev\"\nmount -t proc proc \"$R/proc\"\n";
        script += "mount -t tmpfs -o nosuid,mode=755 tmpfs \"$R/dev\"\n";
        script += "for n in null zero random urandom; do touch \"$R/dev/$n\"; mount --bind \"/dev/$n\" \"$R/dev/$n\"; done\n";
        if spec.read_only_root {
            script += "mount -o remount,bind,ro \"$R\"\n";
        }

        let rewrite = |a: &str| -> String {
            let mut best: Option<&(String, String)> = None;
            for rw in &rewrites {
                let hit = a.contains(&format!("={}", rw.0))
                    || a == rw.0
                    || a.starts_with(&format!("{}/", rw.0));
                if hit && best.is_none_or(|b| b.0.len() < rw.0.len()) {
                    best = Some(rw);
                }
            }
            match best {
                Some((from, to)) => a.replacen(from.as_str(), to, 1),
                None => a.to_string(),
            }
        };
        let listen = format!("127.0.0.1:{}", free_port());
        let mut args: Vec<String> = spec
            .args
            .iter()
            .filter(|a| !a.starts_with("--listen"))
            .map(|a| rewrite(a))
            .collect();
        args.push(format!("--listen={listen}"));
        args.extend(extra.iter().map(|s| s.to_string()));

        let keep = &spec.caps;
        let drop: Vec<String> = all_caps()
            .into_iter()
            .filter(|c| !keep.contains(c))
            .collect();
        let mut capsh = vec![
            "capsh".to_string(),
            "--chroot=$R".to_string(),
            format!("--drop={}", drop.join(",")),
            "--inh=".to_string(),
            "--noamb".to_string(),
        ];
        if spec.no_new_privs {
            capsh.push("--no-new-privs".into());
        }
        let entry = spec
            .command
            .first()
            .cloned()
            .unwrap_or_else(|| "/archwatch".into());
        capsh.push(format!("--shell={entry}"));
        capsh.push("--".into());
        let cmd_args: Vec<String> = spec.command.iter().skip(1).cloned().chain(args).collect();
        script += "exec env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root";
        for (k, v) in &spec.env {
            let v = v.clone().unwrap_or_else(|| match k.as_str() {
                "NODE_NAME" => "test-node".into(),
                other => panic!("env {other} has no value and no known fieldRef"),
            });
            script += &format!(" {}", sh_quote(&format!("{k}={v}")));
        }
        script += " RUST_LOG=archwatch=debug,info";
        for c in &capsh {
            if c == "--chroot=$R" {
                script += " --chroot=\"$R\"";
            } else {
                script += &format!(" {}", sh_quote(c));
            }
        }
        for a in &cmd_args {
            script += &format!(" {}", sh_quote(a));
        }
        script += "\n";
        std::fs::write(dir.path().join("start.sh"), &script).expect("script");

        let child = Command::new("unshare")
            .args([
                "--mount",
                "--pid",
                "--fork",
                "--kill-child",
                "--propagation",
                "slave",
                "sh",
            ])
            .arg(dir.path().join("start.sh"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("unshare (util-linux)");

        let host_of = |flag: &str| {
            spec.arg(flag).filter(|v| v != "off").map(|v| {
                PathBuf::from(
                    rewrite(&format!("--{flag}={v}"))
                        .split_once('=')
                        .expect("flag")
                        .1,
                )
            })
        };
        PodAgent {
            child,
            spec: spec.clone(),
            root,
            listen,
            journal: host_of("journal"),
            api_socket: host_of("api-socket"),
            log,
            _dir: dir,
        }
    }

    /// The agent's pid as the host sees it (the child of `unshare`, PID 1 of its namespace).
    pub fn pid(&self) -> Option<u32> {
        let children =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.child.id()))
                .ok()?;
        children.split_whitespace().next()?.parse().ok()
    }

    /// A line of `/proc/<pid>/status` (`CapEff`, `NoNewPrivs`, …).
    pub fn status_field(&self, field: &str) -> Option<String> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .map(|v| v.trim().to_string())
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(&self.listen, path)
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics").map(|(_, b)| b).unwrap_or_default()
    }

    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics(), name, labels)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn lines(&self) -> Vec<serde_json::Value> {
        let Some(j) = &self.journal else {
            return Vec::new();
        };
        std::fs::read_to_string(j)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("journal lines are whole JSON objects"))
            .collect()
    }

    pub fn wait_for(&mut self, what: &str, timeout: Duration, mut f: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if f(self) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the agent's pod exited ({status}) while waiting for {what}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "timed out waiting for {what}; agent log:\n{}",
            self.log_text()
        );
    }

    pub fn wait_ready(&mut self) {
        self.wait_for("ready", Duration::from_secs(30), |a| {
            a.get("/readyz").map(|(c, _)| c == 200).unwrap_or(false)
        });
    }

    /// SIGTERM to the agent (PID 1 of its namespace handles it) and wait.
    pub fn stop(&mut self) -> Option<i32> {
        if let Some(pid) = self
            .pid()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        None
    }
}

impl Drop for PodAgent {
    fn drop(&mut self) {
        // unshare --kill-child takes the namespace's PID 1 (the agent) with it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Capability names (capsh's) decoded from a `/proc/<pid>/status` hex mask.
pub fn decode_caps(hex: &str) -> Vec<String> {
    let out = Command::new("capsh")
        .arg(format!("--decode={hex}"))
        .output()
        .expect("capsh");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match text.split_once('=') {
        Some((_, list)) if !list.is_empty() => list.split(',').map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

/// Sum of a metric family's samples whose labels contain every `k="v"` in `labels`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b'{') | Some(b' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `GET path` from `addr` (HTTP/1.1, one request): the status and the body.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split(' ').nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}
