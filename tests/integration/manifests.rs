//! The shipping artifacts as a cluster gets them (`kustomize build` of the base and of every
//! overlay, by a real kustomize): every object round-trips through the Kubernetes API types
//! (nothing lost, so no misspelt field), the DaemonSet is least privilege and points the agent
//! at the containerd of its distribution, the alert rules pass promtool (check and unit tests),
//! every metric the rules and the dashboard use is one a running agent exports, and a real
//! Prometheus configured the way prometheus-operator configures it from the shipped
//! ServiceMonitor fires the exec-format alert with the failing pod's namespace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use archwatch::oci::{ImageSpec, Item, Layer, Layout};
use serde_json::{json, Value};

use crate::support::manifests::{self as m, BASE, OVERLAYS};
use crate::support::{self, agent::Agent, containerd::Containerd};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn renderings() -> Vec<(&'static str, Vec<Value>)> {
    std::iter::once(BASE)
        .chain(OVERLAYS.iter().copied())
        .map(|o| (o, m::rendered(o)))
        .collect()
}

/// Every key of `a` is in `b` with the same value (b may add defaults).
fn contained(a: &Value, b: &Value, path: &str) -> Result<(), String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                let w = y
                    .get(k)
                    .ok_or_else(|| format!("{path}.{k} is not a field of the API type"))?;
                contained(v, w, &format!("{path}.{k}"))?;
            }
            Ok(())
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .try_for_each(|(i, (v, w))| contained(v, w, &format!("{path}[{i}]"))),
        (x, y) if x == y => Ok(()),
        (Value::Number(x), Value::String(y)) if x.to_string() == *y => Ok(()),
        (x, y) => Err(format!("{path}: {x} became {y}")),
    }
}

fn roundtrip<T: serde::de::DeserializeOwned + serde::Serialize>(v: &Value) -> Result<(), String> {
    let t: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    contained(v, &serde_json::to_value(&t).unwrap(), "")
}

#[test]
fn manifests_are_valid_api_objects_with_least_privilege() {
    use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::*, rbac::v1::*};
    // The args check below is the agent's own parser: a flag it does not know fails it.
    let out = support::archwatch()
        .args(["agent", "--no-such-flag=1", "--help"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "unknown flags are refused");
    for (overlay, docs) in renderings() {
        let mut kinds = Vec::new();
        for v in &docs {
            let kind = v["kind"].as_str().unwrap().to_string();
            let r = match kind.as_str() {
                "Namespace" => roundtrip::<Namespace>(v),
                "ResourceQuota" => roundtrip::<ResourceQuota>(v),
                "ServiceAccount" => roundtrip::<ServiceAccount>(v),
                "ClusterRole" => roundtrip::<ClusterRole>(v),
                "ClusterRoleBinding" => roundtrip::<ClusterRoleBinding>(v),
                "DaemonSet" => roundtrip::<DaemonSet>(v),
                "Service" => roundtrip::<Service>(v),
                // CRDs of the Prometheus operator: checked by promtool and Prometheus below.
                "ServiceMonitor" | "PrometheusRule" => Ok(()),
                other => Err(format!("unexpected kind {other}")),
            };
            r.unwrap_or_else(|e| panic!("{overlay}: {kind}: {e}"));
            kinds.push(kind);
        }
        for k in [
            "Namespace",
            "ResourceQuota",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "DaemonSet",
            "Service",
            "ServiceMonitor",
            "PrometheusRule",
        ] {
            assert!(kinds.iter().any(|x| x == k), "{overlay}: missing {k}");
        }

        let role: ClusterRole =
            serde_json::from_value(m::only(&docs, "ClusterRole").clone()).unwrap();
        let rules = role.rules.unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].api_groups.as_deref(),
            Some(&["events.k8s.io".to_string()][..])
        );
        assert_eq!(
            rules[0].verbs,
            vec!["create".to_string(), "get".to_string(), "patch".to_string()],
            "Events only: written, and read back to extend a series"
        );

        // Everything namespaced lives in the Namespace, which admits privileged pods.
        let ns: Namespace = serde_json::from_value(m::only(&docs, "Namespace").clone()).unwrap();
        let ns_name = ns.metadata.name.clone().unwrap();
        let labels = ns.metadata.labels.clone().unwrap_or_default();
        for mode in ["enforce", "audit", "warn"] {
            assert_eq!(
                labels
                    .get(&format!("pod-security.kubernetes.io/{mode}"))
                    .map(String::as_str),
                Some("privileged"),
                "{overlay}: Pod Security {mode}"
            );
        }
        for d in &docs {
            if !["Namespace", "ClusterRole", "ClusterRoleBinding"]
                .contains(&d["kind"].as_str().unwrap())
            {
                assert_eq!(
                    d["metadata"]["namespace"],
                    ns_name.as_str(),
                    "{overlay}: {}",
                    d["kind"]
                );
            }
        }

        let ds: DaemonSet = serde_json::from_value(m::only(&docs, "DaemonSet").clone()).unwrap();
        let pod = ds.spec.template.spec.clone().unwrap();
        let priority = pod.priority_class_name.clone();
        assert_eq!(priority.as_deref(), Some("system-node-critical"));
        // GKE admits that class outside kube-system only under a quota whose PriorityClass
        // scope covers it.
        let quota: ResourceQuota =
            serde_json::from_value(m::only(&docs, "ResourceQuota").clone()).unwrap();
        let qspec = quota.spec.unwrap();
        let scope = qspec
            .scope_selector
            .and_then(|s| s.match_expressions)
            .unwrap_or_default();
        assert!(
            scope.iter().any(|e| e.scope_name == "PriorityClass"
                && e.operator == "In"
                && e.values
                    .clone()
                    .unwrap_or_default()
                    .contains(priority.as_ref().unwrap())),
            "{overlay}: the ResourceQuota's scope covers the DaemonSet's priority class"
        );
        let pods = qspec.hard.unwrap()["pods"].0.parse::<u64>().unwrap();
        assert!(
            pods >= 5000,
            "{overlay}: one agent per node on large clusters: {pods}"
        );

        assert!(
            pod.tolerations
                .clone()
                .unwrap()
                .iter()
                .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
            "runs on tainted nodes"
        );
        assert_eq!(
            pod.node_selector
                .clone()
                .unwrap_or_default()
                .get("kubernetes.io/os")
                .map(String::as_str),
            Some("linux")
        );
        assert_ne!(pod.host_pid, Some(true));
        assert_ne!(pod.host_network, Some(true));
        let c = m::agent_container(&ds);
        let sc = c.security_context.clone().unwrap();
        let seccomp = sc
            .seccomp_profile
            .clone()
            .or_else(|| pod.security_context.clone().and_then(|p| p.seccomp_profile));
        assert_eq!(seccomp.map(|s| s.type_).as_deref(), Some("RuntimeDefault"));
        assert_eq!(sc.run_as_user, Some(0));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_ne!(sc.privileged, Some(true));
        let (drop, mut add) = m::capabilities(&ds);
        add.sort();
        assert_eq!(drop, vec!["ALL".to_string()]);
        // The exec tracer's component adds what loading eBPF programs takes, nothing else.
        let want: &[&str] = if overlay == "exec-tracer" {
            &[
                "BPF",
                "DAC_READ_SEARCH",
                "PERFMON",
                "SYS_ADMIN",
                "SYS_PTRACE",
            ]
        } else {
            &["DAC_READ_SEARCH", "SYS_ADMIN", "SYS_PTRACE"]
        };
        assert_eq!(add, want, "{overlay}");

        // Writable: only the journal's and the API socket's directories.
        let writable: Vec<PathBuf> = ["--journal", "--api-socket"]
            .iter()
            .map(|f| {
                let p = m::flag(&ds, f).unwrap_or_else(|| panic!("{f}"));
                let (mount, _) =
                    m::on_host(&ds, Path::new(&p)).unwrap_or_else(|| panic!("{p} is mounted"));
                mount.mount_path
            })
            .collect();
        let mounts = c.volume_mounts.clone().unwrap();
        for mnt in &mounts {
            assert!(
                mnt.read_only == Some(true) || writable.contains(&PathBuf::from(&mnt.mount_path)),
                "{overlay}: {} must be read-only",
                mnt.mount_path
            );
        }
        // containerd's socket through its directory (re-created on every restart), mounts made
        // after the pod started visible (HostToContainer).
        let address = m::flag(&ds, "--address").unwrap();
        let (sock_mount, _) = m::on_host(&ds, Path::new(&address)).expect("--address is mounted");
        assert_ne!(
            sock_mount.mount_path,
            Path::new(&address),
            "the directory, not the socket"
        );
        assert_eq!(sock_mount.host_type.as_deref(), Some("Directory"));
        assert!(sock_mount.read_only);
        assert_eq!(sock_mount.propagation.as_deref(), Some("HostToContainer"));
        let croot = m::host_mounts(&ds)
            .into_iter()
            .find(|h| h.volume == "containerd-root")
            .expect("containerd's root");
        assert_eq!(
            croot.mount_path, croot.host_path,
            "snapshots are read at containerd's paths"
        );
        assert!(croot.read_only);
        assert_eq!(croot.propagation.as_deref(), Some("HostToContainer"));
        let binfmt = m::flag(&ds, "--binfmt-dir").unwrap();
        let (bm, bhost) = m::on_host(&ds, Path::new(&binfmt)).expect("binfmt_misc is mounted");
        assert_eq!(bhost, Path::new("/proc/sys/fs/binfmt_misc"));
        assert!(bm.read_only);
        assert_eq!(bm.propagation.as_deref(), Some("HostToContainer"));
        let proc_dir = m::flag(&ds, "--proc-dir").unwrap();
        let (pm, phost) = m::on_host(&ds, Path::new(&proc_dir)).expect("/proc is mounted");
        assert_eq!(phost, Path::new("/proc"));
        assert!(pm.read_only);

        assert!(c.env.clone().unwrap().iter().any(|e| e.name == "NODE_NAME"
            && e.value_from
                .as_ref()
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.as_str())
                == Some("spec.nodeName")));
        let live = c.liveness_probe.clone().unwrap();
        assert_eq!(live.http_get.unwrap().path.as_deref(), Some("/healthz"));
        assert_eq!(
            (live.period_seconds, live.failure_threshold),
            (Some(20), Some(3))
        );
        let ready = c.readiness_probe.clone().unwrap();
        assert_eq!(ready.http_get.unwrap().path.as_deref(), Some("/readyz"));
        assert_eq!(
            c.image.as_deref(),
            Some("ghcr.io/archwatch/archwatch:0.1.0")
        );
        // The args are the agent's own flags.
        let args: Vec<String> = c.args.clone().unwrap();
        let out = support::archwatch()
            .args(&args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{overlay}: the DaemonSet's args parse: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Copies a directory tree (regular files and directories).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), t).unwrap();
        }
    }
}

#[test]
fn overlays_point_the_agent_at_their_distributions_containerd() {
    let cases = [
        (
            BASE,
            "/run/containerd/containerd.sock",
            "/var/lib/containerd",
        ),
        (
            "k3s",
            "/run/k3s/containerd/containerd.sock",
            "/var/lib/rancher/k3s/agent/containerd",
        ),
        (
            "rke2",
            "/run/k3s/containerd/containerd.sock",
            "/var/lib/rancher/rke2/agent/containerd",
        ),
        (
            "kube-prometheus-stack",
            "/run/containerd/containerd.sock",
            "/var/lib/containerd",
        ),
        (
            "docker",
            "/run/containerd/containerd.sock",
            "/var/lib/containerd",
        ),
        (
            "exec-tracer",
            "/run/containerd/containerd.sock",
            "/var/lib/containerd",
        ),
    ];
    assert_eq!(cases.len(), OVERLAYS.len() + 1, "every overlay has a case");
    for (overlay, socket, croot) in cases {
        let ds = m::daemonset(overlay);
        // The exec tracer, where it is on: what the kernel asks of it (CAP_BPF and
        // CAP_PERFMON, tracefs) and the host's cgroup hierarchy to attribute its events.
        let caps = m::agent_container(&ds)
            .security_context
            .and_then(|s| s.capabilities)
            .and_then(|c| c.add)
            .unwrap_or_default();
        match m::flag(&ds, "--exec-tracer").as_deref() {
            Some("on") => {
                assert_eq!(overlay, "exec-tracer");
                assert!(
                    caps.iter().any(|c| c == "BPF") && caps.iter().any(|c| c == "PERFMON"),
                    "{overlay}: {caps:?}"
                );
                let cg = m::flag(&ds, "--cgroup-dir").expect("--cgroup-dir");
                let (mount, on_host) = m::on_host(&ds, Path::new(&cg)).expect("mounted");
                assert_eq!(on_host, Path::new("/sys/fs/cgroup"), "{overlay}");
                assert!(mount.read_only, "{overlay}");
                assert!(
                    m::host_mounts(&ds)
                        .iter()
                        .any(|h| h.host_path == Path::new("/sys/kernel/tracing")
                            && h.mount_path == Path::new("/sys/kernel/tracing")),
                    "{overlay}: tracefs"
                );
            }
            other => {
                assert_ne!(overlay, "exec-tracer", "{other:?}");
                assert!(
                    !caps.iter().any(|c| c == "BPF" || c == "PERFMON"),
                    "{overlay}: no eBPF capabilities without the tracer: {caps:?}"
                );
            }
        }
        // Docker Engine, where followed: its socket's directory from the host, and its data
        // root at the host path (layer directories are read where Docker says they are).
        match m::flag(&ds, "--docker-host") {
            None => assert_ne!(overlay, "docker", "the docker overlay follows Docker"),
            Some(host) => {
                assert_eq!(overlay, "docker", "{overlay} follows Docker");
                let path = host.strip_prefix("unix://").expect("a unix socket");
                let (mount, on_host) = m::on_host(&ds, Path::new(path))
                    .unwrap_or_else(|| panic!("{overlay}: {path} is not in a mounted directory"));
                assert_eq!(on_host, Path::new("/run/docker.sock"), "{overlay}");
                assert_eq!(mount.host_path, Path::new("/run"), "{overlay}");
                assert!(
                    m::host_mounts(&ds)
                        .iter()
                        .any(|h| h.host_path == Path::new("/var/lib/docker")
                            && h.mount_path == Path::new("/var/lib/docker")),
                    "{overlay}: Docker's data root at its host path"
                );
            }
        }
        // The agent's --address lies inside a hostPath directory whose host path holds the
        // distribution's socket.
        let address = m::flag(&ds, "--address").unwrap();
        let (mount, host) = m::on_host(&ds, Path::new(&address))
            .unwrap_or_else(|| panic!("{overlay}: {address} is not in a mounted directory"));
        assert_eq!(host, Path::new(socket), "{overlay}");
        assert_eq!(
            Some(mount.host_path.as_path()),
            Path::new(socket).parent(),
            "{overlay}"
        );
        // containerd's root at its host path.
        let roots: Vec<_> = m::host_mounts(&ds)
            .into_iter()
            .filter(|h| h.host_path.ends_with("containerd") && h.host_path.starts_with("/var"))
            .collect();
        assert_eq!(roots.len(), 1, "{overlay}: one containerd root: {roots:?}");
        assert_eq!(roots[0].host_path, Path::new(croot), "{overlay}");
        assert_eq!(roots[0].mount_path, Path::new(croot), "{overlay}");
        // Nothing of another distribution's layout is left behind.
        for h in m::host_mounts(&ds) {
            for (_, s, r) in cases {
                let other = [Path::new(s).parent().unwrap(), Path::new(r)];
                if other.contains(&h.host_path.as_path()) {
                    assert!(
                        h.host_path == Path::new(socket).parent().unwrap()
                            || h.host_path == Path::new(croot),
                        "{overlay}: stray mount {h:?}"
                    );
                }
            }
        }
    }

    // Each component changes only what it is for.
    let base = m::rendered(BASE);
    for overlay in OVERLAYS {
        let r = m::rendered(overlay);
        assert_eq!(r.len(), base.len(), "{overlay}");
        for (a, b) in base.iter().zip(&r) {
            if a == b {
                continue;
            }
            let kind = a["kind"].as_str().unwrap();
            match *overlay {
                "k3s" | "rke2" | "docker" | "exec-tracer" => {
                    assert_eq!(kind, "DaemonSet", "{overlay} changes {kind}")
                }
                "kube-prometheus-stack" => {
                    assert!(
                        ["ServiceMonitor", "PrometheusRule"].contains(&kind),
                        "{overlay} changes {kind}"
                    );
                    assert_eq!(b["metadata"]["labels"]["release"], "kube-prometheus-stack");
                    let mut b = b.clone();
                    b["metadata"]["labels"]
                        .as_object_mut()
                        .unwrap()
                        .remove("release");
                    assert_eq!(a, &b, "{overlay} adds the release label only");
                }
                other => panic!("no expectation for {other}"),
            }
        }
    }

    // The release name is one value in one file.
    let work = tempfile::tempdir().unwrap();
    copy_tree(&root().join("manifests"), work.path());
    let label = work
        .path()
        .join("components/kube-prometheus-stack/release-label.yaml");
    let text = std::fs::read_to_string(&label).unwrap();
    assert_eq!(text.matches("release: kube-prometheus-stack").count(), 1);
    std::fs::write(
        &label,
        text.replace("release: kube-prometheus-stack", "release: monitoring"),
    )
    .unwrap();
    let out = Command::new(m::kustomize())
        .arg("build")
        .arg(work.path().join("overlays/kube-prometheus-stack"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    for kind in ["ServiceMonitor", "PrometheusRule"] {
        let d = docs.iter().find(|d| d["kind"] == kind).unwrap();
        assert_eq!(d["metadata"]["labels"]["release"], "monitoring", "{kind}");
    }
}

/// The rule groups of the rendered PrometheusRule as a plain rules file.
fn rules_file(dir: &Path) -> PathBuf {
    let docs = m::rendered(BASE);
    let rule = m::only(&docs, "PrometheusRule");
    let p = dir.join("rules.yml");
    std::fs::write(
        &p,
        serde_yaml::to_string(&json!({"groups": rule["spec"]["groups"]})).unwrap(),
    )
    .unwrap();
    p
}

fn promtool(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("promtool (scripts/install-deps installs prometheus)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let dir = tempfile::tempdir().unwrap();
    let rules = rules_file(dir.path());
    let (ok, out) = promtool(dir.path(), &["check", "rules", "rules.yml"]);
    assert!(ok, "{out}");
    std::fs::copy(
        root().join("tests/promtool/alerts_test.yml"),
        dir.path().join("alerts_test.yml"),
    )
    .unwrap();
    let (ok, out) = promtool(dir.path(), &["test", "rules", "alerts_test.yml"]);
    assert!(ok, "{out}");
    // Every alert has a test and a runbook section in the README.
    let tests = std::fs::read_to_string(root().join("tests/promtool/alerts_test.yml")).unwrap();
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let text = std::fs::read_to_string(&rules).unwrap();
    let alerts: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("- alert: ")
                .or_else(|| l.trim().strip_prefix("alert: "))
        })
        .collect();
    assert!(alerts.len() >= 7, "{alerts:?}");
    for alert in alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} has no promtool test"
        );
        assert!(
            readme.contains(&format!("### {alert}")),
            "{alert} has no runbook section in the README"
        );
    }
}

pub(crate) fn referenced_metrics() -> Vec<String> {
    let docs = m::rendered(BASE);
    let mut text = serde_json::to_string(m::only(&docs, "PrometheusRule")).unwrap();
    text.push_str(&std::fs::read_to_string(root().join("dashboards/archwatch.json")).unwrap());
    let mut names: Vec<String> = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("archwatch_") {
        let start = i + pos;
        let end = start
            + text[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(text.len() - start);
        // Skip runbook anchors and words inside other identifiers.
        if start == 0
            || !(bytes[start - 1].is_ascii_alphanumeric()
                || bytes[start - 1] == b'#'
                || bytes[start - 1] == b'/')
        {
            names.push(text[start..end].to_string());
        }
        i = end;
    }
    names.sort();
    names.dedup();
    names
}

/// Every metric the rules and the dashboard use is in `exposition` (a live agent's /metrics).
/// The agent exports a family once it has a sample, so callers scrape an agent that has seen
/// failures, images, handlers, emulation, Events and an inspection error.
pub(crate) fn assert_exported(exposition: &str) {
    let families: Vec<&str> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    for name in referenced_metrics() {
        let base = ["_total", "_bucket", "_count", "_sum"]
            .iter()
            .fold(name.clone(), |n, s| {
                n.strip_suffix(s).map(str::to_string).unwrap_or(n)
            });
        // Exec errors come only from the exec tracer, which this agent does not run:
        // `tracer::the_agent_reports_every_failed_exec_in_a_running_pod_once_per_cause`
        // reads that family from a live agent that does.
        if base == "archwatch_exec_errors" {
            continue;
        }
        assert!(
            families.contains(&base.as_str()),
            "{name} is used by a rule or the dashboard but not exported ({families:?})"
        );
    }
    assert!(
        referenced_metrics().len() >= 10,
        "{:?}",
        referenced_metrics()
    );
}

struct Prometheus {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(scrape: Value) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        rules_file(dir.path());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = json!({
            "global": {"evaluation_interval": "1s"},
            "rule_files": ["rules.yml"],
            "scrape_configs": [scrape],
        });
        std::fs::write(
            dir.path().join("prometheus.yml"),
            serde_yaml::to_string(&cfg).unwrap(),
        )
        .unwrap();
        let (ok, out) = promtool(dir.path(), &["check", "config", "prometheus.yml"]);
        assert!(ok, "the generated configuration: {out}");
        let child = Command::new("prometheus")
            .current_dir(dir.path())
            .arg("--config.file=prometheus.yml")
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (scripts/install-deps installs it)");
        Prometheus {
            child,
            addr: format!("127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// GET an API path; `params` are URL-encoded.
    fn api(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let q: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        let path = if q.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{}", q.join("&"))
        };
        http_get(&self.addr, &path)
            .and_then(|b| serde_json::from_str(&b).ok())
            .unwrap_or_default()
    }

    fn alerts(&self, name: &str) -> Vec<Value> {
        self.api("/api/v1/alerts", &[])["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["labels"]["alertname"] == name && a["state"] == "firing")
            .cloned()
            .collect()
    }

    fn series(&self, selector: &str) -> Vec<BTreeMap<String, String>> {
        self.api("/api/v1/series", &[("match[]", selector)])["data"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| serde_json::from_value(s.clone()).unwrap())
            .collect()
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    // HTTP/1.0: the whole body, never chunked.
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    Some(buf.split_once("\r\n\r\n")?.1.to_string())
}

fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `label_values(METRIC, LABEL)` of a Grafana template variable.
fn label_values_query(q: &str) -> (String, String) {
    let inner = q
        .trim()
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not label_values(metric, label): {q}"));
    let (metric, label) = inner.rsplit_once(',').unwrap();
    (metric.trim().to_string(), label.trim().to_string())
}

/// What Grafana's Prometheus data source asks for `label_values(METRIC, LABEL)`.
fn dashboard_variable(prom: &Prometheus, name: &str) -> Vec<String> {
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("dashboards/archwatch.json")).unwrap(),
    )
    .unwrap();
    let var = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("dashboard variable {name}"));
    let q = var["query"]["query"]
        .as_str()
        .or(var["query"].as_str())
        .unwrap();
    assert_eq!(
        var["definition"].as_str(),
        Some(q),
        "{name}: definition and query agree"
    );
    let (metric, label) = label_values_query(q);
    prom.api(
        &format!("/api/v1/label/{label}/values"),
        &[("match[]", &metric)],
    )["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// A promtool series selector for a label set (with `__name__`).
fn series_selector(labels: &BTreeMap<String, String>) -> String {
    let name = &labels["__name__"];
    let rest: Vec<String> = labels
        .iter()
        .filter(|(k, _)| *k != "__name__")
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    format!("{name}{{{}}}", rest.join(","))
}

/// promtool's value notation from runs of (token, count): token `_` is no sample, `stale` a
/// staleness marker, anything else a value.
fn samples(runs: &[(&str, usize)]) -> String {
    runs.iter()
        .flat_map(|(t, n)| std::iter::repeat_n(*t, *n))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The expected ALERTS series of a firing alert.
fn alerts_sample(alert: &str, labels: &BTreeMap<String, String>) -> Value {
    let mut l = labels.clone();
    l.insert("__name__".into(), "ALERTS".into());
    l.insert("alertname".into(), alert.into());
    l.insert("alertstate".into(), "firing".into());
    json!({"labels": series_selector(&l), "value": 1})
}

fn alert_at(alert: &str, minute: usize, firing: Option<&BTreeMap<String, String>>) -> Value {
    json!({
        "expr": format!("ALERTS{{alertname=\"{alert}\"}}"),
        "eval_time": format!("{minute}m"),
        "exp_samples": firing.map(|l| vec![alerts_sample(alert, l)]).unwrap_or_default(),
    })
}

fn keep(labels: &BTreeMap<String, String>, keys: &[&str]) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter(|(k, _)| keys.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// promtool unit tests whose series are the label sets a real Prometheus stored from a live
/// agent through the operator's scrape config (`exec`: an exec-failure series, `up`: the
/// target's labels), in the shapes the exporter produces: a series that first appears at 1, an
/// agent restart (stale, then back at 1 and growing), a replaced agent pod (a new `pod`
/// label), growth of a long-lived series, and healthy silence.
fn generated_alert_tests(exec: &BTreeMap<String, String>, up: &BTreeMap<String, String>) -> Value {
    const EXEC: &str = "ArchwatchExecFormatError";
    const DROPS: &str = "ArchwatchKubeEventsDropped";
    let mut severity = BTreeMap::new();
    severity.insert("severity".to_string(), "warning".to_string());
    let mut exec_alert = keep(exec, &["node", "namespace", "binary_arch", "node_arch"]);
    exec_alert.extend(severity.clone());
    let sel = series_selector(exec);
    let mut moved = exec.clone();
    moved.insert("pod".into(), format!("{}-replaced", exec["pod"]));
    moved.insert("instance".into(), "192.0.2.7:9808".into());
    let mut dropped = up.clone();
    dropped.insert("__name__".into(), "archwatch_kube_events_total".into());
    dropped.insert("reason".into(), "ExecFormatError".into());
    dropped.insert("result".into(), "dropped".into());
    let mut drop_alert = keep(&dropped, &["node", "result"]);
    drop_alert.insert("severity".into(), "info".into());
    let up_sel = series_selector(up);
    let case = |series: Vec<(String, String)>, checks: Vec<Value>| {
        let mut input: Vec<Value> = series
            .into_iter()
            .map(|(s, v)| json!({"series": s, "values": v}))
            .collect();
        input.push(json!({"series": up_sel, "values": samples(&[("1", 61)])}));
        json!({"interval": "1m", "input_series": input, "promql_expr_test": checks})
    };
    let tests = vec![
        // First failure of its kind since the agent started: the series appears at 1.
        case(
            vec![(sel.clone(), samples(&[("_", 3), ("1", 30)]))],
            vec![
                alert_at(EXEC, 2, None),
                alert_at(EXEC, 4, Some(&exec_alert)),
                alert_at(EXEC, 12, Some(&exec_alert)),
                alert_at(EXEC, 14, None),
            ],
        ),
        // The agent restarts: the series goes stale, comes back at 1 and grows.
        case(
            vec![(
                sel.clone(),
                samples(&[("3", 16), ("stale", 2), ("1", 1), ("2", 30)]),
            )],
            vec![
                alert_at(EXEC, 14, None),
                alert_at(EXEC, 17, None),
                alert_at(EXEC, 19, Some(&exec_alert)),
                alert_at(EXEC, 27, Some(&exec_alert)),
                alert_at(EXEC, 30, None),
            ],
        ),
        // The agent's pod is replaced: a new `pod` label, a new series at 1.
        case(
            vec![
                (sel.clone(), samples(&[("1", 16), ("stale", 1)])),
                (series_selector(&moved), samples(&[("_", 20), ("1", 30)])),
            ],
            vec![
                alert_at(EXEC, 14, None),
                alert_at(EXEC, 21, Some(&exec_alert)),
                alert_at(EXEC, 35, None),
            ],
        ),
        // A long-lived series grows.
        case(
            vec![(sel.clone(), samples(&[("1", 20), ("2", 30)]))],
            vec![
                alert_at(EXEC, 15, None),
                alert_at(EXEC, 21, Some(&exec_alert)),
                alert_at(EXEC, 35, None),
            ],
        ),
        // Healthy: failures long ago, nothing new.
        case(
            vec![(sel, samples(&[("4", 61)]))],
            vec![
                alert_at(EXEC, 15, None),
                alert_at(EXEC, 40, None),
                alert_at(EXEC, 60, None),
            ],
        ),
        // Events dropped before the first scrape: the series' first sample is above 0.
        case(
            vec![(series_selector(&dropped), samples(&[("_", 5), ("4", 40)]))],
            vec![
                alert_at(DROPS, 4, None),
                alert_at(DROPS, 6, Some(&drop_alert)),
                alert_at(DROPS, 25, None),
            ],
        ),
        // Drops, an agent restart, drops again.
        case(
            vec![(
                series_selector(&dropped),
                samples(&[("0", 5), ("2", 20), ("stale", 2), ("0", 1), ("3", 30)]),
            )],
            vec![
                alert_at(DROPS, 6, Some(&drop_alert)),
                alert_at(DROPS, 24, None),
                alert_at(DROPS, 29, Some(&drop_alert)),
                alert_at(DROPS, 50, None),
            ],
        ),
        // Healthy: the closed label set at 0.
        case(
            vec![(series_selector(&dropped), samples(&[("0", 61)]))],
            vec![
                alert_at(DROPS, 5, None),
                alert_at(DROPS, 20, None),
                alert_at(DROPS, 60, None),
            ],
        ),
    ];
    json!({"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests})
}

#[test]
fn prometheus_scraping_a_live_agent_fires_the_exec_format_alert() {
    let _binfmt = support::binfmt_shared();
    let mut ctd = Containerd::start();
    let agent = Agent::start(&ctd.socket, &[]);
    agent.wait_ready();
    // Two Prometheus servers scrape the agent the way prometheus-operator configures them from
    // the shipped ServiceMonitor: as shipped, and with honorLabels off (the defect it avoids).
    let docs = m::rendered(BASE);
    let (pod, node) = ("archwatch-x7k2p", "kind-worker");
    let shipped = m::operator_scrape_config(&docs, 0, &agent.listen, pod, node);
    let sm_honor =
        m::only(&docs, "ServiceMonitor")["spec"]["endpoints"][0]["honorLabels"].as_bool();
    assert_eq!(
        shipped["honor_labels"].as_bool(),
        sm_honor,
        "as the ServiceMonitor declares"
    );
    let mut dishonoured = shipped.clone();
    dishonoured["honor_labels"] = false.into();
    let proms: Vec<Prometheus> = [shipped, dishonoured]
        .into_iter()
        .map(|mut cfg| {
            // The only change: scrape every second instead of every 30 s, for the test's time.
            cfg["scrape_interval"] = "1s".into();
            Prometheus::start(cfg)
        })
        .collect();
    let (prom, dis) = (&proms[0], &proms[1]);

    // The target carries the labels the operator gives it.
    for p in &proms {
        let target = wait_until("an up target", Duration::from_secs(30), || {
            p.api("/api/v1/targets", &[])["data"]["activeTargets"]
                .as_array()
                .and_then(|t| t.first().cloned())
                .filter(|t| t["health"] == "up")
        });
        let labels: BTreeMap<String, String> =
            serde_json::from_value(target["labels"].clone()).unwrap();
        let want: BTreeMap<String, String> = [
            ("container", "archwatch"),
            ("endpoint", "metrics"),
            ("instance", agent.listen.as_str()),
            ("job", "archwatch"),
            ("namespace", "archwatch"),
            ("node", node),
            ("pod", pod),
            ("service", "archwatch"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(labels, want);
    }

    let work = tempfile::tempdir().unwrap();
    let mut l = Layout::new();
    let img = l
        .add_image(&ImageSpec::new(
            "arm64",
            &["/app", "true"],
            vec![Layer(vec![Item::file(
                "/app",
                support::busybox("arm64"),
                0o755,
            )])],
        ))
        .unwrap();
    l.tag("archwatch.test/alert:v1", &img);
    let p = work.path().join("a.tar");
    l.write_archive(&p).unwrap();
    ctd.import("k8s.io", &p);
    let r = ctd.run(
        "k8s.io",
        "archwatch.test/alert:v1",
        "alert-1",
        &[
            ("io.kubernetes.pod.name", "alert-pod"),
            ("io.kubernetes.pod.namespace", "shop"),
        ],
        Duration::from_secs(30),
    );
    assert_ne!(r.code, Some(0));

    // As shipped: the alert names the failing pod's namespace and the node.
    let fired = wait_until("the alert as shipped", Duration::from_secs(60), || {
        prom.alerts("ArchwatchExecFormatError").into_iter().next()
    });
    assert_eq!(fired["labels"]["namespace"], "shop", "{fired:#}");
    assert_eq!(fired["labels"]["node"], node, "{fired:#}");
    assert_eq!(fired["labels"]["binary_arch"], "arm64", "{fired:#}");
    assert!(
        fired["annotations"]["description"]
            .as_str()
            .unwrap()
            .starts_with("1 container start(s) in namespace shop on node kind-worker"),
        "{fired:#}"
    );
    // Without honorLabels the target's namespace wins: the alert names archwatch.
    let wrong = wait_until(
        "the alert without honorLabels",
        Duration::from_secs(60),
        || dis.alerts("ArchwatchExecFormatError").into_iter().next(),
    );
    assert_eq!(wrong["labels"]["namespace"], "archwatch", "{wrong:#}");
    assert!(dis
        .alerts("ArchwatchExecFormatError")
        .iter()
        .all(|a| a["labels"]["namespace"] != "shop"));
    assert!(dis
        .series("archwatch_exec_failures_total")
        .iter()
        .any(|s| s.get("exported_namespace").map(String::as_str) == Some("shop")));

    // The dashboard's namespace variable offers the failing pods' namespaces.
    let namespaces = dashboard_variable(prom, "namespace");
    assert!(namespaces.contains(&"shop".to_string()), "{namespaces:?}");
    assert!(
        !namespaces.contains(&"archwatch".to_string()),
        "{namespaces:?}"
    );
    assert_eq!(
        dashboard_variable(dis, "namespace"),
        vec!["archwatch".to_string()]
    );
    let nodes = dashboard_variable(prom, "node");
    assert_eq!(nodes, vec![node.to_string()]);

    // promtool cases built from the series this Prometheus stored: the exporter's names and
    // label sets, after the operator's relabeling, cannot drift from the tests.
    let exec = prom
        .series("archwatch_exec_failures_total{reason=\"arch_mismatch\"}")
        .into_iter()
        .next()
        .expect("the exec failure series");
    let up = prom.series("up").into_iter().next().expect("up");
    let dir = tempfile::tempdir().unwrap();
    let rules = rules_file(dir.path());
    std::fs::write(
        dir.path().join("generated_test.yml"),
        serde_yaml::to_string(&generated_alert_tests(&exec, &up)).unwrap(),
    )
    .unwrap();
    let (ok, out) = promtool(dir.path(), &["test", "rules", "generated_test.yml"]);
    assert!(ok, "{out}");
    // The same cases catch the expression this rule replaced, which missed failures after an
    // agent restart (the counter starts again below its old value).
    let text = std::fs::read_to_string(&rules).unwrap();
    let mut v: Value = serde_yaml::from_str(&text).unwrap();
    let rule = v["groups"][0]["rules"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|r| r["alert"] == "ArchwatchExecFormatError")
        .unwrap();
    let x = "archwatch_exec_failures_total{reason=\"arch_mismatch\"}";
    rule["expr"] = format!(
        "sum by (node, namespace, binary_arch, node_arch) (({x} - {x} offset 10m) > 0 or ({x} unless {x} offset 10m)) > 0"
    )
    .into();
    std::fs::write(&rules, serde_yaml::to_string(&v).unwrap()).unwrap();
    let (ok, out) = promtool(dir.path(), &["test", "rules", "generated_test.yml"]);
    assert!(!ok, "the old expression passes the generated cases: {out}");
    assert!(
        out.contains("time: 19m"),
        "the restart case is the one missed: {out}"
    );
}
