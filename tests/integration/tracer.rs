//! The exec tracer on this machine's kernel: failed execs of host processes and of
//! processes in real containers (a private containerd + runc), attributed by cgroup, rate
//! limited per cgroup in the kernel, with long and hostile paths.
//!
//! Runs as root. tracefs is mounted at /sys/kernel/tracing for the tracers' lifetime when it
//! is not already (and unmounted after the last one).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use archwatch::oci::{ImageSpec, Item, Layer};
use archwatch::tracer::{
    cgroup, Attribution, Attributor, ExecErrno, ExecError, Syscall, Tracer, TracerConfig,
    TracerError, Worth,
};

use crate::support::{self, containerd::Containerd};

const NS: &str = "tracer";
const IMAGE: &str = "archwatch.test/tracer:v1";

/// (tracers holding it, whether this process mounted it).
static TRACEFS: Mutex<(usize, bool)> = Mutex::new((0, false));

pub(crate) struct TracefsGuard;

fn tracefs_mounted() -> bool {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .any(|p| {
            std::fs::read_dir(p)
                .map(|mut d| d.next().is_some())
                .unwrap_or(false)
        })
}

pub(crate) fn tracefs() -> TracefsGuard {
    let mut g = TRACEFS.lock().unwrap_or_else(|e| e.into_inner());
    if g.0 == 0 && !tracefs_mounted() {
        let st = std::process::Command::new("mount")
            .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
            .status()
            .expect("mount");
        assert!(st.success(), "mounting tracefs");
        g.1 = true;
    }
    g.0 += 1;
    TracefsGuard
}

impl Drop for TracefsGuard {
    fn drop(&mut self) {
        let mut g = TRACEFS.lock().unwrap_or_else(|e| e.into_inner());
        g.0 -= 1;
        if g.0 == 0 && g.1 {
            let _ = std::process::Command::new("umount")
                .arg("/sys/kernel/tracing")
                .status();
            g.1 = false;
        }
    }
}

/// A running tracer and every event it delivered so far.
struct Traced {
    tracer: Tracer,
    seen: Vec<ExecError>,
    rt: tokio::runtime::Runtime,
    _tracefs: TracefsGuard,
}

impl Traced {
    fn start(config: TracerConfig) -> Traced {
        let tracefs = tracefs();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let tracer = rt
            .block_on(async { Tracer::start(&config) })
            .expect("the tracer starts as root on this kernel");
        Traced {
            tracer,
            seen: Vec::new(),
            rt,
            _tracefs: tracefs,
        }
    }

    /// Receives until an event matches, or panics after `timeout`.
    fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&ExecError) -> bool,
    ) -> ExecError {
        if let Some(e) = self.seen.iter().find(|e| pred(e)) {
            return e.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let got = self
                .rt
                .block_on(async { tokio::time::timeout(left, self.tracer.recv()).await });
            match got {
                Ok(Some(e)) => {
                    let hit = pred(&e);
                    self.seen.push(e.clone());
                    if hit {
                        return e;
                    }
                }
                _ => panic!(
                    "{what}: not seen within {timeout:?}; last events: {:#?}",
                    self.seen.iter().rev().take(5).collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Receives until nothing arrives for `quiet`.
    fn drain(&mut self, quiet: Duration) {
        while let Ok(Some(e)) = self
            .rt
            .block_on(async { tokio::time::timeout(quiet, self.tracer.recv()).await })
        {
            self.seen.push(e);
        }
    }
}

/// Writes the arm64 busybox (a binary this amd64 kernel refuses with ENOEXEC) at `path`.
fn arm_binary(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, support::busybox("arm64")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// This thread's command name: what a child it spawns carries when its exec fails.
fn my_comm() -> String {
    std::fs::read_to_string("/proc/thread-self/comm")
        .unwrap()
        .trim_end()
        .to_string()
}

fn spawn_fails(path: &Path) -> i32 {
    let e = std::process::Command::new(path)
        .spawn()
        .expect_err("the exec fails");
    e.raw_os_error().unwrap_or(0)
}

fn own_cgroup_id() -> (u64, String) {
    use std::os::unix::fs::MetadataExt;
    let mount = cgroup::cgroup2_mount(&std::fs::read_to_string("/proc/self/mountinfo").unwrap())
        .expect("a cgroup2 hierarchy on this machine");
    let me = cgroup::ProcCgroup::read(Path::new("/proc"), std::process::id()).unwrap();
    let path = me.unified.expect("a unified line");
    let ino = std::fs::metadata(mount.join(path.trim_start_matches('/')))
        .unwrap()
        .ino();
    (ino, path)
}

#[test]
fn a_host_process_failing_an_exec_is_seen_and_attributed_to_the_host() {
    let mut t = Traced::start(TracerConfig::default());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(support::unique("arm-helper"));
    arm_binary(&path);
    let comm = my_comm();
    assert_eq!(spawn_fails(&path), 8, "ENOEXEC");

    let e = t.wait_for("the host's failed exec", Duration::from_secs(10), |e| {
        e.path == path
    });
    assert_eq!(e.errno, ExecErrno::Enoexec);
    assert_eq!(e.syscall, Syscall::Execve);
    assert_eq!(e.comm, comm);
    assert!(!e.truncated);
    assert_eq!(e.pid, e.tgid, "a single-threaded child");
    assert_ne!(
        e.tgid,
        std::process::id(),
        "the spawned child, not this process"
    );
    let (cgroup_id, cgroup_path) = own_cgroup_id();
    assert_eq!(
        e.cgroup_id, cgroup_id,
        "the kernel's cgroup id is this process's"
    );

    // The child is gone: attribution goes through the cgroup id, and says host.
    let mut a = Attributor::detect();
    assert_eq!(
        a.attribute(&e),
        Attribution::Host {
            cgroup: cgroup_path.clone()
        }
    );
    assert_eq!(
        a.worth(&e, &cgroup_path),
        Worth::Report,
        "ENOEXEC is always worth it"
    );
    let stats = t.tracer.stats().unwrap();
    assert!(stats.delivered >= 1);
    assert_eq!(stats.malformed, 0);
}

#[test]
fn successful_execs_send_nothing_and_long_paths_are_cut_not_crashed() {
    let mut t = Traced::start(TracerConfig::default());
    let dir = tempfile::tempdir().unwrap();
    // A copy of /bin/true under a unique name, exec'd many times, successfully.
    let ok = dir.path().join(support::unique("true"));
    std::fs::copy("/bin/true", &ok).unwrap();
    for _ in 0..200 {
        assert!(std::process::Command::new(&ok).status().unwrap().success());
    }
    // A path longer than the buffer (512 bytes), deep in real directories.
    let mut deep = dir.path().to_path_buf();
    for i in 0..6 {
        deep.push(format!("{i}{}", "d".repeat(150)));
    }
    std::fs::create_dir_all(&deep).unwrap();
    let long = deep.join("arm-helper");
    arm_binary(&long);
    assert!(long.as_os_str().len() > 900);
    assert_eq!(spawn_fails(&long), 8);
    // Longer than PATH_MAX: the kernel refuses it with ENAMETOOLONG, which is not reported.
    let huge = PathBuf::from(format!("/{}", "x/".repeat(3000)));
    assert_eq!(spawn_fails(&huge), 36, "ENAMETOOLONG");
    // A marker after all of these: the ring buffer is ordered, so once it arrives,
    // everything before it has too.
    let marker = dir.path().join(support::unique("marker"));
    arm_binary(&marker);
    assert_eq!(spawn_fails(&marker), 8);

    let cut = t.wait_for("the long path", Duration::from_secs(10), |e| {
        e.truncated
            && long
                .as_os_str()
                .as_encoded_bytes()
                .starts_with(e.path.as_os_str().as_encoded_bytes())
    });
    assert_eq!(cut.path.as_os_str().len(), 511);
    assert_eq!(cut.errno, ExecErrno::Enoexec);
    t.wait_for("the marker", Duration::from_secs(10), |e| e.path == marker);
    assert!(
        !t.seen.iter().any(|e| e.path == ok),
        "a successful exec produced an event"
    );
    assert!(
        !t.seen
            .iter()
            .any(|e| e.path.as_os_str().as_encoded_bytes().starts_with(b"/x/x/")),
        "ENAMETOOLONG is not reported"
    );
    // A cut path cannot be judged for ENOENT, but ENOEXEC needs no judging.
    assert_eq!(
        archwatch::tracer::worth_reporting(&cut, Path::new("/proc/self")),
        Worth::Report
    );
    assert_eq!(t.tracer.stats().unwrap().malformed, 0);
}

#[test]
fn without_capabilities_the_tracer_says_which_and_bpf_with_perfmon_suffice() {
    use rustix::thread::{capabilities, set_capabilities, CapabilitySet};
    let _tracefs = tracefs();
    // Capabilities are per thread: this one gives them up, the test process keeps them.
    let run = |effective: CapabilitySet| {
        std::thread::spawn(move || {
            let mut sets = capabilities(None).unwrap();
            sets.effective = effective;
            set_capabilities(None, sets).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut tracer = Tracer::start(&TracerConfig::default())?;
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join(support::unique("arm-helper"));
                arm_binary(&path);
                assert_eq!(spawn_fails(&path), 8);
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, tracer.recv()).await {
                        Ok(Some(e)) if e.path == path => return Ok::<_, TracerError>(e),
                        Ok(Some(_)) => continue,
                        _ => panic!("no event with CAP_BPF and CAP_PERFMON only"),
                    }
                }
            })
        })
        .join()
        .unwrap()
    };
    let err = run(CapabilitySet::empty()).expect_err("no capability, no tracer");
    assert_eq!(err.kind(), "capabilities");
    assert!(err.is_unsupported());
    assert!(err.to_string().contains("CAP_BPF and CAP_PERFMON"), "{err}");
    let err = run(CapabilitySet::BPF).expect_err("CAP_BPF alone is not enough");
    assert!(
        matches!(err, TracerError::Capabilities { missing } if missing.starts_with("CAP_PERFMON")),
        "{err}"
    );
    let e = run(CapabilitySet::BPF | CapabilitySet::PERFMON)
        .expect("CAP_BPF and CAP_PERFMON, without CAP_SYS_ADMIN");
    assert_eq!(e.errno, ExecErrno::Enoexec);
}

/// An amd64 busybox image with a wrong-arch helper and a script whose interpreter is missing.
fn image(ctd: &mut Containerd) {
    let bb = support::busybox("amd64");
    let spec = ImageSpec::new(
        "amd64",
        &["/bin/sh"],
        vec![Layer(vec![
            Item::file("/bin/busybox", bb, 0o755),
            Item::symlink("/bin/sh", "busybox"),
            Item::symlink("/bin/sleep", "busybox"),
            Item::file("/arm-helper", support::busybox("arm64"), 0o755),
            Item::file("/app/run.sh", "#!/missing/interp\necho hi\n", 0o755),
        ])],
    );
    ctd.import_spec(NS, IMAGE, &spec);
}

fn run_detached(ctd: &Containerd, id: &str, script: &str) {
    let out = ctd.ctr_ns(NS, &["run", "-d", IMAGE, id, "/bin/sh", "-c", script]);
    assert!(
        out.status.success(),
        "ctr run {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The cgroup id (its cgroup v2 directory's inode) of a running container, from its task's
/// pid: how a test tells its own container's events from the other tests'.
fn cgroup_id_of(ctd: &Containerd, id: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid: u32 = loop {
        let ls = ctd.ctr_ns(NS, &["tasks", "ls"]);
        let found = String::from_utf8_lossy(&ls.stdout)
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .filter(|p| *p != 0);
        if let Some(p) = found {
            break p;
        }
        assert!(Instant::now() < deadline, "task {id} not running");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mount = cgroup::cgroup2_mount(&std::fs::read_to_string("/proc/self/mountinfo").unwrap())
        .expect("cgroup2");
    let path = cgroup::ProcCgroup::read(Path::new("/proc"), pid)
        .unwrap()
        .unified
        .expect("unified line");
    std::fs::metadata(mount.join(path.trim_start_matches('/')))
        .unwrap()
        .ino()
}

fn container_of(a: &mut Attributor, e: &ExecError) -> Option<(String, Option<String>, String)> {
    match a.attribute(e) {
        Attribution::Container { container, cgroup } => {
            Some((container.id, container.namespace, cgroup))
        }
        _ => None,
    }
}

#[test]
fn a_container_whose_init_runs_a_wrong_arch_helper_is_seen_and_named() {
    let mut t = Traced::start(TracerConfig::default());
    let mut ctd = Containerd::start();
    image(&mut ctd);
    let id = support::unique("helper-loop");
    run_detached(&ctd, &id, "while true; do /arm-helper; sleep 0.2; done");
    let cg = cgroup_id_of(&ctd, &id);
    let e = t.wait_for("the helper's ENOEXEC", Duration::from_secs(30), |e| {
        e.path == Path::new("/arm-helper") && e.cgroup_id == cg
    });
    assert_eq!(e.errno, ExecErrno::Enoexec);
    assert_eq!(e.comm, "sh", "the init's forked child");
    let mut a = Attributor::detect();
    let (cid, ns, cgroup) = container_of(&mut a, &e).expect("attributed to a container");
    assert_eq!(cid, id);
    assert_eq!(ns.as_deref(), Some(NS));
    // The kernel's cgroup id is that container's cgroup directory.
    assert_eq!(
        a.cgroup_path(e.cgroup_id, e.tgid).as_deref(),
        Some(cgroup.as_str())
    );
    assert!(!a.pids_in(&cgroup).is_empty(), "the init is still in it");
    // It keeps running, and keeps failing.
    let second = t.wait_for("another iteration", Duration::from_secs(10), |x| {
        x.path == Path::new("/arm-helper") && x.cgroup_id == cg && x.tgid != e.tgid
    });
    assert_eq!(second.cgroup_id, e.cgroup_id);
    let _ = ctd.ctr_ns(NS, &["tasks", "kill", "-s", "SIGKILL", &id]);
}

#[test]
fn an_exec_into_a_running_container_and_a_missing_interpreter_are_seen() {
    let mut t = Traced::start(TracerConfig::default());
    let mut ctd = Containerd::start();
    image(&mut ctd);
    let id = support::unique("exec-into");
    run_detached(&ctd, &id, "exec sleep 3600");
    let cg = cgroup_id_of(&ctd, &id);
    let mut a = Attributor::detect();

    // `ctr task exec` of a wrong-arch binary: runc's init execs it in the container.
    let out = ctd.ctr_ns(
        NS,
        &[
            "tasks",
            "exec",
            "--exec-id",
            "wrong-arch",
            &id,
            "/arm-helper",
        ],
    );
    assert!(!out.status.success(), "the exec fails");
    let e = t.wait_for("the task exec's ENOEXEC", Duration::from_secs(20), |e| {
        e.path == Path::new("/arm-helper") && e.cgroup_id == cg
    });
    assert_eq!(e.errno, ExecErrno::Enoexec);
    assert!(
        e.comm.starts_with("runc"),
        "runc's init execs it: {}",
        e.comm
    );
    let (cid, _, cgroup) = container_of(&mut a, &e).expect("attributed");
    assert_eq!(cid, id);

    // A shell in the container runs a script whose interpreter is missing (ENOENT for a
    // file that exists: worth it) and `env` (execvp) tries a command in each PATH directory
    // (noise; busybox sh itself searches PATH with stat, not exec).
    let out = ctd.ctr_ns(
        NS,
        &[
            "tasks",
            "exec",
            "--exec-id",
            "scripts",
            &id,
            "/bin/sh",
            "-c",
            "/app/run.sh; busybox env no-such-command; true",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = t.wait_for("the script's ENOENT", Duration::from_secs(20), |e| {
        e.path == Path::new("/app/run.sh") && e.cgroup_id == cg
    });
    assert_eq!(script.errno, ExecErrno::Enoent);
    let search = t.wait_for("the PATH search", Duration::from_secs(20), |e| {
        e.path.ends_with("no-such-command") && e.cgroup_id == cg
    });
    assert_eq!(search.errno, ExecErrno::Enoent);
    for e in [&script, &search] {
        assert_eq!(
            container_of(&mut a, e).map(|c| c.0).as_deref(),
            Some(id.as_str())
        );
    }
    // Both failing processes have exited: the container's other process stands in.
    assert_eq!(a.worth(&script, &cgroup), Worth::Report);
    assert_eq!(a.worth(&search, &cgroup), Worth::Noise);
    let _ = ctd.ctr_ns(NS, &["tasks", "kill", "-s", "SIGKILL", &id]);
}

#[test]
fn a_storm_from_one_container_is_rate_limited_in_the_kernel_and_another_is_still_seen() {
    let config = TracerConfig::default();
    let mut t = Traced::start(config.clone());
    let started = Instant::now();
    let mut ctd = Containerd::start();
    image(&mut ctd);
    let storm = support::unique("storm");
    let quiet = support::unique("quiet");
    const N: u32 = 1500;
    run_detached(
        &ctd,
        &storm,
        &format!("i=0; while [ $i -lt {N} ]; do /arm-helper; i=$((i+1)); done 2>/dev/null; echo done > /storm-done; exec sleep 3600"),
    );
    let storm_cgroup = cgroup_id_of(&ctd, &storm);
    let mut a = Attributor::detect();
    let first = t.wait_for("the storm", Duration::from_secs(30), |e| {
        e.path == Path::new("/arm-helper") && e.cgroup_id == storm_cgroup
    });
    // The burst is spent and the kernel drops the rest.
    let deadline = Instant::now() + Duration::from_secs(60);
    while t.tracer.stats().unwrap().rate_limited < 100 {
        assert!(Instant::now() < deadline, "the kernel never dropped");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Meanwhile another container fails once: seen.
    run_detached(&ctd, &quiet, "sleep 1; /arm-helper; exec sleep 3600");
    let quiet_cgroup = cgroup_id_of(&ctd, &quiet);
    let other = t.wait_for("the other container", Duration::from_secs(20), |e| {
        e.path == Path::new("/arm-helper") && e.cgroup_id == quiet_cgroup
    });
    assert_eq!(
        container_of(&mut a, &other).map(|c| c.0).as_deref(),
        Some(quiet.as_str())
    );
    // Wait for the storm to end (its init writes a file in its root).
    let storm_path = a
        .cgroup_path(storm_cgroup, first.tgid)
        .expect("storm cgroup");
    let pid = a
        .pids_in(&storm_path)
        .first()
        .copied()
        .expect("the storm's init");
    let done = PathBuf::from(format!("/proc/{pid}/root/storm-done"));
    let deadline = Instant::now() + Duration::from_secs(240);
    while !done.exists() {
        assert!(Instant::now() < deadline, "the storm did not end");
        std::thread::sleep(Duration::from_millis(200));
    }
    let elapsed = started.elapsed();
    t.drain(Duration::from_millis(500));
    let from_storm = t
        .seen
        .iter()
        .filter(|e| e.cgroup_id == storm_cgroup)
        .count() as f64;
    let stats = t.tracer.stats().unwrap();
    // At most the burst plus the rate over the storm's life (plus one per CPU for the
    // bucket's lock-free refill).
    let bound = f64::from(config.burst)
        + f64::from(config.rate_per_sec) * elapsed.as_secs_f64()
        + 2.0 * std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    assert!(
        from_storm <= bound,
        "{from_storm} events from the storm, at most {bound} expected in {elapsed:?}"
    );
    assert!(
        from_storm >= f64::from(config.burst),
        "the burst got through"
    );
    // Everything the storm did is either delivered or counted as dropped.
    assert!(
        stats.rate_limited as f64 + from_storm >= f64::from(N),
        "{stats:?}, {from_storm} delivered from {N} failures"
    );
    assert_eq!(stats.ring_full, 0, "{stats:?}");
    assert_eq!(stats.channel_full, 0, "{stats:?}");
    assert_eq!(stats.malformed, 0, "{stats:?}");
    for id in [&storm, &quiet] {
        let _ = ctd.ctr_ns(NS, &["tasks", "kill", "-s", "SIGKILL", id]);
    }
}

/// The agent with its exec tracer: a probe-like loop that runs a wrong-arch helper in a
/// running pod, `ctr task exec` of a script whose interpreter is missing, a shell's PATH
/// search, a host process and a container whose own entrypoint fails.
#[test]
fn the_agent_reports_every_failed_exec_in_a_running_pod_once_per_cause() {
    use crate::support::agent::Agent;
    let _fs = tracefs();
    let mut ctd = Containerd::start();
    image(&mut ctd);
    let (api, url) = crate::support::fake_api::FakeApi::start();
    let work = tempfile::tempdir().unwrap();
    let kubeconfig = work.path().join("kubeconfig");
    std::fs::write(&kubeconfig, crate::support::fake_api::kubeconfig(&url)).unwrap();
    let agent = Agent::start_with_env(
        &ctd.socket,
        &["--exec-tracer", "on", "--namespace", NS, "--kube", "auto"],
        &[("KUBECONFIG", &kubeconfig)],
    );
    agent.wait_ready();
    assert_eq!(agent.metric("archwatch_exec_tracer_up", &[]), 1.0);
    let id = support::unique("probe-pod");
    let labels = [
        format!("--label=io.kubernetes.pod.name={id}"),
        "--label=io.kubernetes.pod.namespace=shop".to_string(),
        "--label=io.kubernetes.pod.uid=uid-probe".to_string(),
        "--label=io.kubernetes.container.name=app".to_string(),
    ];
    let mut args: Vec<&str> = vec!["run", "-d"];
    args.extend(labels.iter().map(String::as_str));
    args.extend([
        IMAGE,
        &id,
        "/bin/sh",
        "-c",
        "while true; do /arm-helper; /bin/busybox env nosuch-command; sleep 0.3; done",
    ]);
    let out = ctd.ctr_ns(NS, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let errors = |a: &Agent| -> Vec<serde_json::Value> {
        a.lines()
            .into_iter()
            .filter(|l| l["kind"] == "exec_error" && l["container_id"] == id.as_str())
            .collect()
    };
    agent.wait_for("the helper's exec error", Duration::from_secs(30), || {
        errors(&agent).iter().any(|l| l["path"] == "/arm-helper")
    });
    let e = errors(&agent)
        .into_iter()
        .find(|l| l["path"] == "/arm-helper")
        .unwrap();
    assert_eq!(e["verdict"], "arch_mismatch", "{e}");
    assert_eq!(e["errno"], "ENOEXEC", "{e}");
    assert_eq!(e["signal"], "exec_error", "{e}");
    assert_eq!(e["binary_arch"], "arm64", "{e}");
    assert_eq!(
        e["pod"],
        id.as_str(),
        "the pod's identity from its record: {e}"
    );
    assert_eq!(e["pod_namespace"], "shop", "{e}");
    assert_eq!(e["comm"], "sh", "{e}");
    assert_eq!(e["fix_code"], "publish_multiarch", "{e}");

    // `kubectl exec` of a script whose interpreter is missing: ENOENT for a file that
    // exists, reported; the PATH search of `env nosuch-command` never is.
    let exec = ctd.ctr_ns(
        NS,
        &[
            "task",
            "exec",
            "--exec-id",
            "probe-exec",
            &id,
            "/app/run.sh",
        ],
    );
    assert!(!exec.status.success(), "the interpreter is missing");
    agent.wait_for("the missing interpreter", Duration::from_secs(20), || {
        errors(&agent).iter().any(|l| l["path"] == "/app/run.sh")
    });
    let m = errors(&agent)
        .into_iter()
        .find(|l| l["path"] == "/app/run.sh")
        .unwrap();
    assert_eq!(m["errno"], "ENOENT", "{m}");
    assert!(
        !m["verdict"].as_str().unwrap_or("").is_empty() && m["verdict"] != "ok",
        "{m}"
    );
    assert!(
        !errors(&agent)
            .iter()
            .any(|l| l["path"].as_str().unwrap_or("").contains("nosuch-command")),
        "a PATH search is noise"
    );
    assert!(
        agent.metric(
            "archwatch_exec_tracer_events_total",
            &[("outcome", "path_search")]
        ) >= 1.0
    );

    // A host process failing an exec: not reported.
    let dir = tempfile::tempdir().unwrap();
    let host_bin = dir.path().join("host-arm-helper");
    arm_binary(&host_bin);
    assert_eq!(spawn_fails(&host_bin), libc_enoexec());
    // A container whose own entrypoint cannot exec: an exec failure, not also an exec error.
    let own = support::unique("own-entry");
    let out = ctd.ctr_ns(NS, &["run", "-d", IMAGE, &own, "/arm-helper"]);
    let _ = out;
    std::thread::sleep(Duration::from_secs(3));
    let lines = agent.lines();
    assert!(
        !lines
            .iter()
            .any(|l| l["kind"] == "exec_error" && l["path"] == host_bin.to_string_lossy().as_ref()),
        "host processes are not reported"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l["kind"] == "exec_error" && l["container_id"] == own.as_str()),
        "a container's first exec is its exec failure, not an exec error"
    );
    assert!(agent.metric("archwatch_exec_tracer_events_total", &[("outcome", "host")]) >= 1.0);
    // The loop keeps failing every 0.3 s: the agent's per-container limit (2/s, burst 10)
    // holds what is reported, and the count says so.
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        agent.metric(
            "archwatch_exec_errors_total",
            &[("namespace", "shop"), ("reason", "arch_mismatch")]
        ) >= 2.0
    );
    // Kubernetes Events on the Pod: one series per pod, path and reason (the probe's repeats
    // are PATCHes of one Event, the missing interpreter another Event).
    let posts = |path_in_note: &str| {
        api.requests()
            .into_iter()
            .filter(|r| {
                r.method == "POST"
                    && r.body["regarding"]["name"] == id.as_str()
                    && r.body["note"].as_str().unwrap_or("").contains(path_in_note)
            })
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while (posts("/arm-helper") == 0 || posts("/app/run.sh") == 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(posts("/arm-helper"), 1, "one series for the probe");
    assert_eq!(posts("/app/run.sh"), 1, "one series for the script");
    let helper_event = api
        .requests()
        .into_iter()
        .find(|r| {
            r.method == "POST"
                && r.body["note"]
                    .as_str()
                    .unwrap_or("")
                    .contains("/arm-helper")
        })
        .unwrap();
    assert_eq!(helper_event.body["reason"], "ExecFormatError");
    assert_eq!(helper_event.body["regarding"]["kind"], "Pod");
    // `archwatch events` shows them beside the containers' own failures.
    let out = support::archwatch()
        .args(["events", "--json", "--replay", "100", "--api-socket"])
        .arg(&agent.api_socket)
        .output()
        .unwrap();
    let streamed: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        streamed.iter().any(|d| d["signal"] == "exec_error"
            && d["argv"][0] == "/arm-helper"
            && d["verdict"] == "arch_mismatch"
            && d["pod"] == id.as_str()),
        "{streamed:?}"
    );
    let _ = ctd.ctr_ns(NS, &["tasks", "kill", "-s", "SIGKILL", &id]);
}

/// ENOEXEC's value.
fn libc_enoexec() -> i32 {
    8
}

/// Without CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN, `--exec-tracer on` makes the agent exit
/// saying what is missing; `auto` says it once and goes on, the rest of the agent working.
#[test]
fn without_its_capabilities_on_fails_loudly_and_auto_goes_on() {
    let _fs = tracefs();
    let ctd = Containerd::start();
    let drop_bpf = [
        "setpriv",
        "--bounding-set",
        "-bpf,-perfmon,-sys_admin",
        "--inh-caps",
        "-all",
    ];
    let out = std::process::Command::new(drop_bpf[0])
        .args(&drop_bpf[1..])
        .arg(env!("CARGO_BIN_EXE_archwatch"))
        .args([
            "agent",
            "--exec-tracer",
            "on",
            "--kube",
            "off",
            "--listen",
            "off",
        ])
        .args(["--api-socket", "off", "--address"])
        .arg(&ctd.socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--exec-tracer on") && err.contains("CAP_BPF"),
        "the reason, naming what is missing: {err}"
    );
    assert_eq!(err.matches("lacks CAP_BPF").count(), 1, "said once: {err}");
    let agent = crate::support::agent::Agent::start_under(
        &drop_bpf,
        &ctd.socket,
        &["--exec-tracer", "auto"],
        &[],
    );
    agent.wait_ready();
    assert_eq!(agent.metric("archwatch_exec_tracer_up", &[]), 0.0);
    assert_eq!(agent.metric("archwatch_containerd_connected", &[]), 1.0);
    let log = agent.log_text();
    assert_eq!(
        log.matches("The exec tracer is off").count(),
        1,
        "said once: {log}"
    );
}
