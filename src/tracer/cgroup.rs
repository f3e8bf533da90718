//! From a failed exec to its container: the cgroup (by the kernel's cgroup id, or from
//! `/proc/<pid>/cgroup`), then the container id by the cgroup names runtimes choose.
//!
//! Patterns, searched from the root down (the outermost container wins, so a container that
//! makes cgroups of its own is still itself):
//! - systemd driver: `cri-containerd-<id>.scope` (containerd's CRI), `docker-<id>.scope`,
//!   `crio-<id>.scope`, `nerdctl-<id>.scope`, each `<id>` 64 hex digits;
//! - cgroupfs driver, Kubernetes: `kubepods[/<qos>]/pod<uid>/<id>`;
//! - cgroupfs driver, Docker: `/docker/<id>`;
//! - plain containerd (`ctr run`, cgroupfs): `/<namespace>/<id>`, two components that are
//!   valid containerd identifiers and no systemd unit. This one is a candidate only: the
//!   caller confirms it against the runtime's records (a host's own two-level cgroup, such
//!   as a pure cgroup v1 host's `/lxc/<name>`, has the same shape).
//!
//! Anything else is the host. Paths seen through another cgroup namespace start with `/..`
//! components; those are skipped (the plain containerd pattern then does not apply).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::record::ExecError;

/// Which runtime a cgroup name points to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    Containerd,
    Docker,
    CriO,
}

/// A container named by its cgroup.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ContainerRef {
    /// `None` when the name does not tell (Kubernetes with the cgroupfs driver).
    pub runtime: Option<Runtime>,
    pub id: String,
    /// containerd's namespace when the name tells it (`k8s.io` for the CRI plugin, the
    /// first component for plain containerd).
    pub namespace: Option<String>,
    /// The Kubernetes pod's uid, from its slice or directory.
    pub pod_uid: Option<String>,
}

/// Where a failed exec came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum Attribution {
    /// A process outside any container (its cgroup path given).
    Host { cgroup: String },
    Container {
        container: ContainerRef,
        cgroup: String,
    },
    /// Neither the cgroup id nor the process could be read any more.
    Unknown,
}

/// `/proc/<pid>/cgroup`: the unified (v2) line and the v1 lines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcCgroup {
    /// The `0::<path>` line's path.
    pub unified: Option<String>,
    /// `(controllers, path)` of every v1 hierarchy (`name=systemd` included).
    pub v1: Vec<(String, String)>,
}

/// v1 controllers in the order their path is trusted, when there is no unified line.
const V1_PREFERENCE: [&str; 5] = ["pids", "memory", "name=systemd", "cpu", "devices"];

impl ProcCgroup {
    pub fn parse(text: &str) -> ProcCgroup {
        let mut out = ProcCgroup::default();
        for line in text.lines() {
            let mut it = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) = (it.next(), it.next(), it.next())
            else {
                continue;
            };
            if id == "0" && controllers.is_empty() {
                out.unified = Some(path.to_string());
            } else {
                out.v1.push((controllers.to_string(), path.to_string()));
            }
        }
        out
    }

    /// Reads `<proc>/<pid>/cgroup`.
    pub fn read(proc: &Path, pid: u32) -> std::io::Result<ProcCgroup> {
        Ok(ProcCgroup::parse(&std::fs::read_to_string(
            proc.join(pid.to_string()).join("cgroup"),
        )?))
    }

    /// The path that names the process's cgroup: the unified one when the unified
    /// hierarchy is mounted (pure v2, or hybrid, where runc places containers in it too,
    /// and where the kernel's cgroup id points), else a v1 controller's.
    pub fn path(&self) -> Option<&str> {
        if let Some(u) = &self.unified {
            return Some(u);
        }
        V1_PREFERENCE
            .iter()
            .find_map(|want| {
                self.v1
                    .iter()
                    .find(|(c, _)| c.split(',').any(|x| x == *want))
            })
            .or_else(|| self.v1.first())
            .map(|(_, p)| p.as_str())
    }

    pub fn container(&self) -> Option<ContainerRef> {
        self.path().and_then(container_of_path)
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// containerd's identifier rule (namespaces and container ids): alphanumerics separated by
/// single `.`, `_` or `-`, at most 76 characters.
fn is_containerd_identifier(s: &str) -> bool {
    if s.is_empty() || s.len() > 76 {
        return false;
    }
    let mut prev_sep = true;
    for b in s.bytes() {
        let sep = matches!(b, b'.' | b'_' | b'-');
        if sep && prev_sep {
            return false;
        }
        if !sep && !b.is_ascii_alphanumeric() {
            return false;
        }
        prev_sep = sep;
    }
    !prev_sep
}

const SYSTEMD_UNITS: [&str; 7] = [
    ".slice", ".scope", ".service", ".socket", ".mount", ".swap", ".target",
];

/// systemd scope prefixes of container runtimes.
const SCOPES: [(&str, Runtime, Option<&str>); 4] = [
    ("cri-containerd-", Runtime::Containerd, Some("k8s.io")),
    ("docker-", Runtime::Docker, None),
    ("crio-", Runtime::CriO, None),
    ("nerdctl-", Runtime::Containerd, None),
];

/// The pod uid in a `kubepods…-pod<uid>.slice` (dashes written as `_`) or `pod<uid>`.
fn pod_uid(component: &str) -> Option<String> {
    if let Some(stem) = component.strip_suffix(".slice") {
        let (_, uid) = stem.rsplit_once("-pod")?;
        return (!uid.is_empty()).then(|| uid.replace('_', "-"));
    }
    let uid = component.strip_prefix("pod")?;
    (!uid.is_empty() && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
        .then(|| uid.to_string())
}

/// The container a cgroup path belongs to, or `None` for the host.
pub fn container_of_path(path: &str) -> Option<ContainerRef> {
    let relative = path.split('/').any(|c| c == "..");
    let comps: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != "." && *c != "..")
        .collect();
    let mut kubepods = false;
    let mut uid: Option<String> = None;
    for (i, c) in comps.iter().enumerate() {
        if let Some(stem) = c.strip_suffix(".scope") {
            for (prefix, runtime, ns) in SCOPES {
                if let Some(id) = stem.strip_prefix(prefix) {
                    if is_hex64(id) {
                        return Some(ContainerRef {
                            runtime: Some(runtime),
                            id: id.to_string(),
                            namespace: ns.map(str::to_string),
                            pod_uid: uid,
                        });
                    }
                }
            }
        }
        if c.starts_with("kubepods") {
            kubepods = true;
        }
        if kubepods {
            if let Some(u) = pod_uid(c) {
                uid = Some(u);
                // cgroupfs driver: the container is the pod directory's child.
                if !c.ends_with(".slice") {
                    if let Some(id) = comps.get(i + 1).filter(|id| is_hex64(id)) {
                        return Some(ContainerRef {
                            runtime: None,
                            id: id.to_string(),
                            namespace: None,
                            pod_uid: uid,
                        });
                    }
                }
            }
        }
        if *c == "docker" {
            if let Some(id) = comps.get(i + 1).filter(|id| is_hex64(id)) {
                return Some(ContainerRef {
                    runtime: Some(Runtime::Docker),
                    id: id.to_string(),
                    namespace: None,
                    pod_uid: None,
                });
            }
        }
    }
    if kubepods || relative {
        return None;
    }
    // Plain containerd: /<namespace>/<id>.
    match comps.as_slice() {
        [ns, id]
            if is_containerd_identifier(ns)
                && is_containerd_identifier(id)
                && !SYSTEMD_UNITS
                    .iter()
                    .any(|s| ns.ends_with(s) || id.ends_with(s)) =>
        {
            Some(ContainerRef {
                runtime: Some(Runtime::Containerd),
                id: id.to_string(),
                namespace: Some(ns.to_string()),
                pod_uid: None,
            })
        }
        _ => None,
    }
}

/// The cgroup2 mount point in a `/proc/self/mountinfo`.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let fields: Vec<&str> = left.split_whitespace().collect();
        Some(PathBuf::from(unescape_mountinfo(fields.get(4)?)))
    })
}

/// The cgroup v2 hierarchy in a host's `/sys/fs/cgroup` mounted elsewhere: the directory
/// itself (pure v2) or its `unified` directory (hybrid); `None` on a pure v1 host.
pub fn cgroup2_root_in(dir: &Path) -> Option<PathBuf> {
    [dir.to_path_buf(), dir.join("unified")]
        .into_iter()
        .find(|d| d.join("cgroup.controllers").exists())
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|d| (b'0'..=b'7').contains(d))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Directories visited at most when looking for a cgroup by id.
const MAX_WALK: usize = 65_536;
/// Cgroup ids remembered (found or not).
const MAX_CACHED: usize = 4096;

/// The path (from the hierarchy's root, `/`-separated) of the cgroup v2 directory whose
/// inode number is `id`: the kernel's cgroup id is that inode number.
pub fn find_cgroup(root: &Path, id: u64) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let mut queue = std::collections::VecDeque::from([(root.to_path_buf(), String::new())]);
    let mut seen = 0usize;
    while let Some((dir, rel)) = queue.pop_front() {
        seen += 1;
        if seen > MAX_WALK {
            return None;
        }
        let Ok(md) = std::fs::symlink_metadata(&dir) else {
            continue;
        };
        if md.ino() == id {
            return Some(if rel.is_empty() { "/".into() } else { rel });
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                let name = e.file_name().to_string_lossy().into_owned();
                queue.push_back((e.path(), format!("{rel}/{name}")));
            }
        }
    }
    None
}

/// Attributes failed execs to containers, remembering each cgroup id's path.
#[derive(Debug)]
pub struct Attributor {
    proc: PathBuf,
    cgroup2: Option<PathBuf>,
    paths: HashMap<u64, Option<String>>,
}

impl Attributor {
    /// `proc`: the host's procfs (`/proc`, or where the agent mounts it); `cgroup2`: the
    /// host's cgroup v2 hierarchy, `None` when there is none (pure cgroup v1).
    pub fn new(proc: impl Into<PathBuf>, cgroup2: Option<PathBuf>) -> Attributor {
        Attributor {
            proc: proc.into(),
            cgroup2,
            paths: HashMap::new(),
        }
    }

    /// `/proc`, and the cgroup2 mount this process sees.
    pub fn detect() -> Attributor {
        let cgroup2 = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|m| cgroup2_mount(&m));
        Attributor::new("/proc", cgroup2)
    }

    pub fn proc_dir(&self) -> &Path {
        &self.proc
    }

    pub fn attribute(&mut self, ev: &ExecError) -> Attribution {
        let path = self.cgroup_path(ev.cgroup_id, ev.tgid).or_else(|| {
            ProcCgroup::read(&self.proc, ev.tgid)
                .ok()
                .and_then(|p| p.path().map(str::to_string))
        });
        match path {
            Some(cgroup) => match container_of_path(&cgroup) {
                Some(container) => Attribution::Container { container, cgroup },
                None => Attribution::Host { cgroup },
            },
            None => Attribution::Unknown,
        }
    }

    /// The cgroup v2 path of `id`: remembered, or the unified path of `pid` when its
    /// directory has that id, or found by walking the hierarchy.
    pub fn cgroup_path(&mut self, id: u64, pid: u32) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let root = self.cgroup2.clone()?;
        if let Some(p) = self.paths.get(&id) {
            return p.clone();
        }
        let from_proc = ProcCgroup::read(&self.proc, pid)
            .ok()
            .and_then(|p| p.unified)
            .filter(|p| !p.split('/').any(|c| c == ".."))
            .filter(|p| {
                std::fs::symlink_metadata(root.join(p.trim_start_matches('/')))
                    .map(|m| m.ino() == id)
                    .unwrap_or(false)
            });
        let found = from_proc.or_else(|| find_cgroup(&root, id));
        if self.paths.len() >= MAX_CACHED {
            self.paths.clear();
        }
        self.paths.insert(id, found.clone());
        found
    }

    /// [`super::worth_reporting`] in the failing process's own root, or, when it is gone and
    /// the path is absolute, in the root of another process of the same cgroup.
    pub fn worth(&self, ev: &ExecError, cgroup: &str) -> super::Worth {
        use super::Worth;
        let own = super::worth_reporting(ev, &self.proc.join(ev.tgid.to_string()));
        if own != Worth::ProcessGone || !ev.path.is_absolute() {
            return own;
        }
        self.pids_in(cgroup)
            .into_iter()
            .map(|pid| super::worth_reporting(ev, &self.proc.join(pid.to_string())))
            .find(|w| *w != Worth::ProcessGone)
            .unwrap_or(Worth::ProcessGone)
    }

    /// Processes in a cgroup v2 path: when the failing process is gone, one of these
    /// shares its container's root (see [`super::worth_reporting`]).
    pub fn pids_in(&self, cgroup: &str) -> Vec<u32> {
        let Some(root) = &self.cgroup2 else {
            return Vec::new();
        };
        // A path seen through another cgroup namespace climbs with `..`: never outside.
        if cgroup.split('/').any(|c| c == "..") {
            return Vec::new();
        }
        std::fs::read_to_string(
            root.join(cgroup.trim_start_matches('/'))
                .join("cgroup.procs"),
        )
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f3b5c2d1e0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c";

    fn c(runtime: Option<Runtime>, ns: Option<&str>, uid: Option<&str>) -> Option<ContainerRef> {
        Some(ContainerRef {
            runtime,
            id: ID.into(),
            namespace: ns.map(str::to_string),
            pod_uid: uid.map(str::to_string),
        })
    }

    #[test]
    fn cgroup_paths_name_their_container() {
        let uid = "0b7f1e8c-3f2a-4a4e-9f7e-1c2d3e4f5a6b";
        let uid_ = uid.replace('-', "_");
        let cases: Vec<(String, Option<ContainerRef>)> = vec![
            // containerd CRI, systemd driver (kubeadm's default on cgroup v2).
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"),
                c(Some(Runtime::Containerd), Some("k8s.io"), Some(uid)),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{ID}.scope"),
                c(Some(Runtime::Containerd), Some("k8s.io"), Some(uid)),
            ),
            // A container's own sub-cgroup (systemd inside it) is still that container.
            (
                format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{ID}.scope/init.scope"),
                c(Some(Runtime::Containerd), Some("k8s.io"), Some(uid)),
            ),
            // Seen from the agent's own cgroup namespace.
            (
                format!("/../../kubepods-besteffort-pod{uid_}.slice/cri-containerd-{ID}.scope"),
                c(Some(Runtime::Containerd), Some("k8s.io"), Some(uid)),
            ),
            // cgroupfs driver (k3s, older kubeadm).
            (
                format!("/kubepods/burstable/pod{uid}/{ID}"),
                c(None, None, Some(uid)),
            ),
            (format!("/kubepods/pod{uid}/{ID}"), c(None, None, Some(uid))),
            // CRI-O; its conmon is not the container.
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/crio-{ID}.scope"),
                c(Some(Runtime::CriO), None, Some(uid)),
            ),
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/crio-conmon-{ID}.scope"),
                None,
            ),
            // Docker, systemd and cgroupfs drivers.
            (format!("/system.slice/docker-{ID}.scope"), c(Some(Runtime::Docker), None, None)),
            (format!("/docker/{ID}"), c(Some(Runtime::Docker), None, None)),
            // Plain containerd (ctr run): /<namespace>/<id>.
            (
                "/default/web-1".into(),
                Some(ContainerRef {
                    runtime: Some(Runtime::Containerd),
                    id: "web-1".into(),
                    namespace: Some("default".into()),
                    pod_uid: None,
                }),
            ),
            (format!("/system.slice/nerdctl-{ID}.scope"), c(Some(Runtime::Containerd), None, None)),
            // The host.
            ("/".into(), None),
            ("/init.scope".into(), None),
            ("/system.slice/containerd.service".into(), None),
            ("/user.slice/user-1000.slice/session-3.scope".into(), None),
            ("/user.slice/user-1000.slice/user@1000.service/app.slice/app-org.gnome.Terminal.slice/vte-spawn-1.scope".into(), None),
            ("/kubepods.slice/kubepods-burstable.slice".into(), None),
            ("/kubepods/burstable".into(), None),
            (format!("/kubepods/burstable/pod{uid}"), None),
            ("/system.slice/docker-notanid.scope".into(), None),
            ("/docker".into(), None),
            ("/../../default/web-1".into(), None),
        ];
        for (path, want) in cases {
            assert_eq!(container_of_path(&path), want, "{path}");
        }
    }

    #[test]
    fn proc_cgroup_prefers_the_unified_line() {
        // Hybrid (this CI machine's layout): runc joins the unified hierarchy as well.
        let hybrid =
            "9:name=systemd:/default/c1\n4:memory:/default/c1\n1:cpu:/default/c1\n0::/default/c1\n";
        let p = ProcCgroup::parse(hybrid);
        assert_eq!(p.unified.as_deref(), Some("/default/c1"));
        assert_eq!(p.container().map(|c| c.id), Some("c1".into()));
        // A host process of a hybrid host whose v1 memory cgroup is two levels deep: the
        // unified line (root) wins, it is the host.
        let host = "4:memory:/process_api/76c0aa57f303e107250ce6b89eef0598\n0::/\n";
        assert_eq!(ProcCgroup::parse(host).container(), None);
        // Pure v2.
        let v2 = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(
            ProcCgroup::parse(&v2).container().map(|c| c.runtime),
            Some(Some(Runtime::Docker))
        );
        // Pure v1: pids first, `cpu,cpuacct` lists are split.
        let v1 = format!(
            "12:cpu,cpuacct:/docker/{ID}\n5:pids:/docker/{ID}\n1:name=systemd:/docker/{ID}\n"
        );
        let p = ProcCgroup::parse(&v1);
        assert_eq!(p.unified, None);
        assert_eq!(p.path(), Some(format!("/docker/{ID}").as_str()));
        assert_eq!(p.container().map(|c| c.id), Some(ID.to_string()));
        // A path with colons survives.
        assert_eq!(
            ProcCgroup::parse("0::/a:b\n").unified.as_deref(),
            Some("/a:b")
        );
    }

    #[test]
    fn the_cgroup2_mount_is_found_in_mountinfo() {
        let hybrid = "25 20 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:5 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let escaped = "26 25 0:23 / /mnt/with\\040space rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(escaped),
            Some(PathBuf::from("/mnt/with space"))
        );
        assert_eq!(cgroup2_mount("22 1 0:5 / /proc rw - proc proc rw\n"), None);
    }

    #[test]
    fn the_v2_hierarchy_is_found_in_a_hosts_sys_fs_cgroup() {
        let pure = tempfile::tempdir().unwrap();
        std::fs::write(
            pure.path().join("cgroup.controllers"),
            "cpu io memory pids\n",
        )
        .unwrap();
        assert_eq!(
            cgroup2_root_in(pure.path()),
            Some(pure.path().to_path_buf())
        );
        let hybrid = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(hybrid.path().join("unified")).unwrap();
        std::fs::create_dir_all(hybrid.path().join("memory")).unwrap();
        std::fs::write(hybrid.path().join("unified/cgroup.controllers"), "").unwrap();
        assert_eq!(
            cgroup2_root_in(hybrid.path()),
            Some(hybrid.path().join("unified"))
        );
        let v1 = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(v1.path().join("memory")).unwrap();
        assert_eq!(cgroup2_root_in(v1.path()), None);
    }

    #[test]
    fn cgroups_are_found_by_inode_number() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("default/web-1")).unwrap();
        let ino = std::fs::metadata(d.path().join("default/web-1"))
            .unwrap()
            .ino();
        assert_eq!(find_cgroup(d.path(), ino), Some("/default/web-1".into()));
        let root = std::fs::metadata(d.path()).unwrap().ino();
        assert_eq!(find_cgroup(d.path(), root), Some("/".into()));
        assert_eq!(find_cgroup(d.path(), u64::MAX), None);
    }
}
