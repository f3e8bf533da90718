//! The shipping artifacts: manifests parse as the Kubernetes API types (nothing lost in a
//! round trip, so no misspelt field), the alert rules pass promtool (check + unit tests), every
//! metric the rules and the dashboard use is one a running agent exports, and a real Prometheus
//! scraping a live agent fires the exec-format alert when a wrong-arch container fails.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use archwatch::oci::{ImageSpec, Item, Layer, Layout};

use crate::support::{self, agent::Agent, containerd::Containerd};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn docs() -> Vec<serde_yaml::Value> {
    let mut out = Vec::new();
    for f in [
        "namespace.yaml",
        "serviceaccount.yaml",
        "rbac.yaml",
        "daemonset.yaml",
        "service.yaml",
        "servicemonitor.yaml",
        "prometheusrule.yaml",
    ] {
        let text = std::fs::read_to_string(root().join("manifests").join(f)).unwrap();
        for d in serde_yaml::Deserializer::from_str(&text) {
            out.push(serde_yaml::Value::deserialize(d).unwrap());
        }
    }
    out
}

use serde::Deserialize;

/// Every key of `a` is in `b` with the same value (b may add defaults).
fn contained(a: &serde_json::Value, b: &serde_json::Value, path: &str) -> Result<(), String> {
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            for (k, v) in x {
                let w = y
                    .get(k)
                    .ok_or_else(|| format!("{path}.{k} is not a field of the API type"))?;
                contained(v, w, &format!("{path}.{k}"))?;
            }
            Ok(())
        }
        (serde_json::Value::Array(x), serde_json::Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .try_for_each(|(i, (v, w))| contained(v, w, &format!("{path}[{i}]"))),
        (x, y) if x == y => Ok(()),
        (serde_json::Value::Number(x), serde_json::Value::String(y)) if x.to_string() == *y => {
            Ok(())
        }
        (x, y) => Err(format!("{path}: {x} became {y}")),
    }
}

fn roundtrip<T: serde::de::DeserializeOwned + serde::Serialize>(
    v: &serde_json::Value,
) -> Result<(), String> {
    let t: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    contained(v, &serde_json::to_value(&t).unwrap(), "")
}

#[test]
fn manifests_are_valid_api_objects_with_least_privilege() {
    use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::*, rbac::v1::*};
    let mut kinds = Vec::new();
    for d in docs() {
        let v: serde_json::Value = serde_json::to_value(&d).unwrap();
        let kind = v["kind"].as_str().unwrap().to_string();
        let r = match kind.as_str() {
            "Namespace" => roundtrip::<Namespace>(&v),
            "ServiceAccount" => roundtrip::<ServiceAccount>(&v),
            "ClusterRole" => roundtrip::<ClusterRole>(&v),
            "ClusterRoleBinding" => roundtrip::<ClusterRoleBinding>(&v),
            "DaemonSet" => roundtrip::<DaemonSet>(&v),
            "Service" => roundtrip::<Service>(&v),
            // CRDs of the Prometheus operator: checked by promtool and below.
            "ServiceMonitor" | "PrometheusRule" => Ok(()),
            other => Err(format!("unexpected kind {other}")),
        };
        r.unwrap_or_else(|e| panic!("{kind}: {e}"));
        if kind == "ClusterRole" {
            let role: ClusterRole = serde_json::from_value(v.clone()).unwrap();
            let rules = role.rules.unwrap();
            assert_eq!(rules.len(), 1);
            assert_eq!(
                rules[0].api_groups.as_deref(),
                Some(&["events.k8s.io".to_string()][..])
            );
            assert_eq!(
                rules[0].verbs,
                vec!["create".to_string(), "patch".to_string()],
                "Events only, nothing to read"
            );
        }
        if kind == "DaemonSet" {
            let ds: DaemonSet = serde_json::from_value(v.clone()).unwrap();
            let pod = ds.spec.template.spec.unwrap();
            assert_eq!(
                pod.priority_class_name.as_deref(),
                Some("system-node-critical")
            );
            assert!(
                pod.tolerations
                    .unwrap()
                    .iter()
                    .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
                "runs on tainted nodes"
            );
            let c = &pod.containers[0];
            let sc = c.security_context.clone().unwrap();
            assert_eq!(sc.read_only_root_filesystem, Some(true));
            assert_eq!(
                sc.capabilities.clone().unwrap().drop,
                Some(vec!["ALL".to_string()])
            );
            let mounts = c.volume_mounts.clone().unwrap();
            for m in &mounts {
                let writable = m.read_only != Some(true);
                assert!(
                    !writable
                        || [
                            "/var/log/archwatch",
                            "/run/archwatch",
                            "/run/containerd/containerd.sock"
                        ]
                        .contains(&m.mount_path.as_str()),
                    "{} must be read-only",
                    m.mount_path
                );
            }
            assert!(c.env.clone().unwrap().iter().any(|e| e.name == "NODE_NAME"));
            assert!(c.liveness_probe.is_some() && c.readiness_probe.is_some());
            // The args are the agent's own flags.
            let args: Vec<String> = c.args.clone().unwrap();
            let out = support::archwatch()
                .args(&args)
                .arg("--help")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "the DaemonSet's args parse: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        kinds.push(kind);
    }
    for k in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
        "Service",
        "ServiceMonitor",
        "PrometheusRule",
    ] {
        assert!(kinds.iter().any(|x| x == k), "missing {k}");
    }
}

/// The rule groups of the PrometheusRule as a plain rules file.
fn rules_file(dir: &Path) -> std::path::PathBuf {
    let rule = docs()
        .into_iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .unwrap();
    let mut groups = serde_yaml::Mapping::new();
    groups.insert("groups".into(), rule["spec"]["groups"].clone());
    let p = dir.join("rules.yml");
    std::fs::write(&p, serde_yaml::to_string(&groups).unwrap()).unwrap();
    p
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let dir = tempfile::tempdir().unwrap();
    let rules = rules_file(dir.path());
    let out = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .expect("promtool (scripts/install-deps installs prometheus)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::copy(
        root().join("tests/promtool/alerts_test.yml"),
        dir.path().join("alerts_test.yml"),
    )
    .unwrap();
    let out = Command::new("promtool")
        .current_dir(dir.path())
        .args(["test", "rules", "alerts_test.yml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every alert has a test and a runbook section in the README.
    let tests = std::fs::read_to_string(root().join("tests/promtool/alerts_test.yml")).unwrap();
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let text = std::fs::read_to_string(&rules).unwrap();
    for alert in text.lines().filter_map(|l| {
        l.trim()
            .strip_prefix("- alert: ")
            .or_else(|| l.trim().strip_prefix("alert: "))
    }) {
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
    let mut text = std::fs::read_to_string(root().join("manifests/prometheusrule.yaml")).unwrap();
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

fn prometheus(target: &str) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    rules_file(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [rules.yml]\nscrape_configs:\n  - job_name: archwatch\n    static_configs:\n      - targets: ['{target}']\n        labels:\n          node: test-node\n"
    );
    std::fs::write(dir.path().join("prometheus.yml"), cfg).unwrap();
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

fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    Some(buf.split_once("\r\n\r\n")?.1.to_string())
}

#[test]
fn prometheus_scraping_a_live_agent_fires_the_exec_format_alert() {
    let _binfmt = support::binfmt_shared();
    let mut ctd = Containerd::start();
    let agent = Agent::start(&ctd.socket, &[]);
    agent.wait_ready();
    let prom = prometheus(&agent.listen);
    let work = tempfile::tempdir().unwrap();
    let mut l = Layout::new();
    let m = l
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
    l.tag("archwatch.test/alert:v1", &m);
    let p = work.path().join("a.tar");
    l.write_archive(&p).unwrap();
    ctd.import("k8s.io", &p);
    // Let Prometheus scrape the agent before the failure, then fail.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if http_get(
            &prom.addr,
            "/api/v1/query?query=up%7Bjob%3D%22archwatch%22%7D",
        )
        .is_some_and(|b| b.contains("\"1\""))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
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
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        last = http_get(&prom.addr, "/api/v1/alerts").unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&last).unwrap_or_default();
        let firing = v["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| {
                a["labels"]["alertname"] == "ArchwatchExecFormatError"
                    && a["state"] == "firing"
                    && a["labels"]["namespace"] == "shop"
                    && a["labels"]["node"] == "test-node"
            });
        if firing {
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("the alert never fired; /api/v1/alerts: {last}");
}
