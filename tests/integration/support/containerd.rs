//! A private containerd: its own root, state and socket in a temp dir, CRI disabled.
//! Killed, unmounted and removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Containerd {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    child: Option<Child>,
}

/// What `ctr run` reported.
#[derive(Debug)]
pub struct RunOutcome {
    pub code: Option<i32>,
    pub output: String,
}

impl Containerd {
    pub fn start() -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("archwatch-ctd-")
            .tempdir()
            .expect("tempdir");
        let socket = dir.path().join("containerd.sock");
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{sock}\"\n",
            root = dir.path().join("root").display(),
            state = dir.path().join("state").display(),
            sock = socket.display()
        );
        std::fs::write(dir.path().join("config.toml"), config).expect("config");
        let mut c = Containerd {
            dir,
            socket,
            child: None,
        };
        c.spawn();
        c
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("containerd.log"))
            .expect("log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("containerd is installed (scripts/install-deps)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.ctr(&["version"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("private containerd did not answer; log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("ctr")
    }

    pub fn ctr_ns(&self, ns: &str, args: &[&str]) -> Output {
        let mut all = vec!["--namespace", ns];
        all.extend_from_slice(args);
        self.ctr(&all)
    }

    pub fn import(&self, ns: &str, archive: &Path) {
        let out = self.ctr_ns(
            ns,
            &[
                "images",
                "import",
                "--all-platforms",
                archive.to_str().expect("utf-8 path"),
            ],
        );
        assert!(
            out.status.success(),
            "import {}: {}",
            archive.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `ctr run --rm` with labels; returns the exit code and everything printed.
    pub fn run(
        &self,
        ns: &str,
        image: &str,
        id: &str,
        labels: &[(&str, &str)],
        timeout: Duration,
    ) -> RunOutcome {
        let mut cmd = Command::new("timeout");
        cmd.arg(timeout.as_secs().max(1).to_string())
            .arg("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", ns, "run", "--rm"]);
        for (k, v) in labels {
            cmd.arg("--label").arg(format!("{k}={v}"));
        }
        let out = cmd.arg(image).arg(id).output().expect("ctr run");
        // ctr run --rm leaves the container behind when the task could not be created.
        let _ = self.ctr_ns(ns, &["containers", "delete", id]);
        RunOutcome {
            code: out.status.code(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill_hard(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill_hard();
        self.spawn();
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
        // Stop every task first so no shim outlives the test.
        for ns in ["default", "k8s.io", "archwatch-test"] {
            if let Ok(o) = Command::new("ctr")
                .arg("--address")
                .arg(&self.socket)
                .args(["-n", ns, "tasks", "ls", "-q"])
                .output()
            {
                for id in String::from_utf8_lossy(&o.stdout).lines() {
                    let _ = Command::new("ctr")
                        .arg("--address")
                        .arg(&self.socket)
                        .args(["-n", ns, "tasks", "kill", "-s", "SIGKILL", id])
                        .output();
                    let _ = Command::new("ctr")
                        .arg("--address")
                        .arg(&self.socket)
                        .args(["-n", ns, "tasks", "delete", "-f", id])
                        .output();
                }
            }
        }
        self.kill_hard();
        self.cleanup_mounts();
    }
}
