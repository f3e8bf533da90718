//! The real runtime without containerd: `runc run` over a root directory, with the spec's
//! `process.user` and capabilities. What the kernel and runc say about an exec, for the
//! cases whose expectation depends on a user (ctr 1.6 cannot set one) and for the many
//! small cases of the exec-chain table (a container each, without an image import).

use std::path::Path;
use std::process::Command;

/// The capabilities containerd and Docker give a container by default.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Who the process runs as.
#[derive(Clone, Debug)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// Effective (and permitted) capabilities; the bounding set is always the default.
    pub effective: Vec<&'static str>,
}

impl User {
    /// root with the default capabilities.
    pub fn root() -> User {
        User {
            uid: 0,
            gid: 0,
            groups: Vec::new(),
            effective: DEFAULT_CAPS.to_vec(),
        }
    }
    /// A non-root user as Docker and CRI-O start one: no effective capabilities.
    pub fn plain(uid: u32, gid: u32, groups: &[u32]) -> User {
        User {
            uid,
            gid,
            groups: groups.to_vec(),
            effective: Vec::new(),
        }
    }
}

/// What runc and the process said.
#[derive(Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    pub output: String,
}

/// Runs `args` in `rootfs` as `user` under runc; `env` is the process environment.
pub fn run(rootfs: &Path, args: &[&str], env: &[&str], user: &User) -> Outcome {
    let bundle = tempfile::tempdir().expect("bundle dir");
    let state = tempfile::tempdir().expect("runc state dir");
    let caps = |v: &[&str]| serde_json::Value::from(v.to_vec());
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": user.uid, "gid": user.gid, "additionalGids": user.groups},
            "args": args,
            "env": env,
            "cwd": "/",
            "capabilities": {
                "bounding": caps(DEFAULT_CAPS),
                "effective": caps(&user.effective),
                "permitted": caps(&user.effective),
                "ambient": [],
            },
            "noNewPrivileges": true,
        },
        "root": {"path": rootfs, "readonly": true},
        "hostname": "archwatch",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
            ],
        },
    });
    std::fs::write(
        bundle.path().join("config.json"),
        serde_json::to_vec(&spec).expect("spec"),
    )
    .expect("config.json");
    let id = super::unique("aw-runc");
    let out = Command::new("timeout")
        .arg("30")
        .arg("runc")
        .arg("--root")
        .arg(state.path())
        .args(["run", "--bundle"])
        .arg(bundle.path())
        .arg(&id)
        .output()
        .expect("runc run");
    let _ = Command::new("runc")
        .arg("--root")
        .arg(state.path())
        .args(["delete", "-f", &id])
        .output();
    Outcome {
        code: out.status.code(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}
