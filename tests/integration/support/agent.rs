//! The agent binary, started against a private containerd, with its journal and metrics.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

pub struct Agent {
    child: Child,
    pub journal: PathBuf,
    pub api_socket: PathBuf,
    pub listen: String,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Agent {
    pub fn start(socket: &std::path::Path, extra: &[&str]) -> Agent {
        Agent::start_with_env(socket, extra, &[])
    }

    pub fn start_with_env(
        socket: &std::path::Path,
        extra: &[&str],
        env: &[(&str, &std::path::Path)],
    ) -> Agent {
        Agent::launch(super::archwatch(), socket, None, extra, env)
    }

    /// [`Agent::start_with_env`] writing to `journal` when given (a restarted agent reads
    /// what the one before it wrote there).
    pub fn start_with_journal(
        socket: &std::path::Path,
        journal: Option<&std::path::Path>,
        extra: &[&str],
        env: &[(&str, &std::path::Path)],
    ) -> Agent {
        Agent::launch(super::archwatch(), socket, journal, extra, env)
    }

    /// The agent run by `wrapper` (a program and its arguments, e.g. `setpriv` dropping a
    /// capability), which execs the archwatch binary with the agent's arguments.
    pub fn start_under(
        wrapper: &[&str],
        socket: &std::path::Path,
        extra: &[&str],
        env: &[(&str, &std::path::Path)],
    ) -> Agent {
        let (program, args) = wrapper.split_first().expect("a wrapper program");
        let mut cmd = std::process::Command::new(program);
        cmd.args(args).arg(env!("CARGO_BIN_EXE_archwatch"));
        Agent::launch(cmd, socket, None, extra, env)
    }

    fn launch(
        mut cmd: std::process::Command,
        socket: &std::path::Path,
        journal: Option<&std::path::Path>,
        extra: &[&str],
        env: &[(&str, &std::path::Path)],
    ) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = journal
            .map(std::path::Path::to_path_buf)
            .unwrap_or_else(|| dir.path().join("journal.jsonl"));
        let log = dir.path().join("agent.log");
        let listen = format!("127.0.0.1:{}", free_port());
        let api_socket = dir.path().join("api.sock");
        let child = cmd
            .args(["agent", "--node-name", "test-node", "--address"])
            .arg(socket)
            .arg("--journal")
            .arg(&journal)
            .args(["--listen", &listen])
            .arg("--api-socket")
            .arg(&api_socket)
            .args(if extra.contains(&"--kube") {
                &[][..]
            } else {
                &["--kube", "off"][..]
            })
            .args(if extra.contains(&"--exec-tracer") {
                &[][..]
            } else {
                // One tracer per test that asks for it: every agent of a parallel suite
                // tracing every container would report the others' execs.
                &["--exec-tracer", "off"][..]
            })
            .args(extra)
            .env_remove("DOCKER_HOST")
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .env("RUST_LOG", "archwatch=debug,info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("archwatch agent");
        Agent {
            child,
            journal,
            api_socket,
            listen,
            log,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The paths the agent's open descriptors point to.
    pub fn open_files(&self) -> Vec<std::path::PathBuf> {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| std::fs::read_link(e.path()).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        super::pod::http_get(&self.listen, path)
    }

    pub fn wait_ready(&self) {
        self.wait_for("ready", Duration::from_secs(30), || {
            self.get("/readyz").map(|(c, _)| c == 200).unwrap_or(false)
        });
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics").map(|(_, b)| b).unwrap_or_default()
    }

    /// Sum of a metric family's samples whose labels contain every `k="v"` in `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics(), name, labels)
    }

    /// The journal's `exec_failure` lines.
    pub fn failures(&self) -> Vec<serde_json::Value> {
        self.lines()
            .into_iter()
            .filter(|l| l["kind"] == "exec_failure")
            .collect()
    }

    pub fn lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.journal)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("journal lines are whole JSON objects"))
            .collect()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_for(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "timed out waiting for {what}; agent log:\n{}",
            self.log_text()
        );
    }

    /// SIGTERM and wait (the agent drains and exits by itself).
    pub fn stop(&mut self) -> Option<i32> {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.child.id() as i32).expect("pid"),
            rustix::process::Signal::TERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        None
    }
}

impl Agent {
    /// SIGSTOP: the agent falls behind (a starved node) until [`Agent::thaw`].
    pub fn freeze(&self) {
        self.signal(rustix::process::Signal::STOP);
    }

    /// SIGCONT after [`Agent::freeze`].
    pub fn thaw(&self) {
        self.signal(rustix::process::Signal::CONT);
    }

    fn signal(&self, s: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("pid");
        rustix::process::kill_process(pid, s).expect("signal the agent");
    }

    /// SIGKILL, as the OOM killer or a node drain past its grace period would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub use super::pod::metric_value;
