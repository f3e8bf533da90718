//! The manifests as a cluster receives them: `kustomize build` (a real kustomize) of the base or
//! an overlay, as JSON objects and as the k8s-openapi types. Tests derive the agent's
//! constraints (args, capabilities, hostPath mounts) from what is shipped, never from a copy.

use std::path::{Component, Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Container;

/// The example overlays under manifests/overlays, each the base plus one component.
pub const OVERLAYS: &[&str] = &[
    "k3s",
    "rke2",
    "kube-prometheus-stack",
    "docker",
    "exec-tracer",
];

/// The name of the base rendering (`kubectl apply -k manifests/`).
pub const BASE: &str = "base";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The kustomize binary unpacked by scripts/containerd-releases (run when it is missing).
pub fn kustomize() -> PathBuf {
    let cache = std::env::var_os("ARCHWATCH_RELEASES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/archwatch-releases"));
    let bin = cache.join("sid-kustomize/usr/bin/kustomize");
    if !bin.exists() {
        let out = Command::new(repo().join("scripts/containerd-releases"))
            .output()
            .expect("scripts/containerd-releases");
        assert!(
            out.status.success(),
            "scripts/containerd-releases: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        bin.exists(),
        "{} after scripts/containerd-releases",
        bin.display()
    );
    bin
}

/// The directory kustomize builds for `overlay` (`base` is manifests/ itself).
pub fn overlay_dir(overlay: &str) -> PathBuf {
    if overlay == BASE {
        repo().join("manifests")
    } else {
        repo().join("manifests/overlays").join(overlay)
    }
}

/// Every object `kustomize build` renders for `overlay`, in its output order.
pub fn rendered(overlay: &str) -> Vec<serde_json::Value> {
    let out = Command::new(kustomize())
        .arg("build")
        .arg(overlay_dir(overlay))
        .output()
        .expect("kustomize build");
    assert!(
        out.status.success(),
        "kustomize build {overlay}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8 YAML");
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            let v = <serde_yaml::Value as serde::Deserialize>::deserialize(d).expect("YAML");
            serde_json::to_value(v).expect("JSON-compatible YAML")
        })
        .collect()
}

/// The one object of `kind` in a rendering.
pub fn only<'a>(docs: &'a [serde_json::Value], kind: &str) -> &'a serde_json::Value {
    let found: Vec<_> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "exactly one {kind}");
    found[0]
}

/// The DaemonSet of `overlay`'s rendering.
pub fn daemonset(overlay: &str) -> DaemonSet {
    serde_json::from_value(only(&rendered(overlay), "DaemonSet").clone()).expect("a DaemonSet")
}

/// The agent's container in the DaemonSet.
pub fn agent_container(ds: &DaemonSet) -> Container {
    let c = ds
        .spec
        .template
        .spec
        .as_ref()
        .map(|p| &p.containers)
        .and_then(|c| c.iter().find(|c| c.name == "archwatch"))
        .expect("the archwatch container");
    c.clone()
}

/// The value of `--flag=VALUE` (or `--flag VALUE`) in the agent's args.
pub fn flag(ds: &DaemonSet, name: &str) -> Option<String> {
    let args = agent_container(ds).args.unwrap_or_default();
    let prefix = format!("{name}=");
    args.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix(&prefix)
            .map(str::to_string)
            .or_else(|| (a == name).then(|| args.get(i + 1).cloned()).flatten())
    })
}

/// The capabilities the agent's container drops and adds.
pub fn capabilities(ds: &DaemonSet) -> (Vec<String>, Vec<String>) {
    let caps = agent_container(ds)
        .security_context
        .and_then(|s| s.capabilities)
        .unwrap_or_default();
    (caps.drop.unwrap_or_default(), caps.add.unwrap_or_default())
}

/// A hostPath volume as the agent's container sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct HostMount {
    pub volume: String,
    pub host_path: PathBuf,
    /// The hostPath `type` (Directory, DirectoryOrCreate, Socket, ...).
    pub host_type: Option<String>,
    pub mount_path: PathBuf,
    pub read_only: bool,
    pub propagation: Option<String>,
}

/// The agent container's hostPath mounts.
pub fn host_mounts(ds: &DaemonSet) -> Vec<HostMount> {
    let pod = ds.spec.template.spec.clone().expect("pod spec");
    let volumes = pod.volumes.unwrap_or_default();
    agent_container(ds)
        .volume_mounts
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| {
            let v = volumes.iter().find(|v| v.name == m.name)?;
            let hp = v.host_path.as_ref()?;
            Some(HostMount {
                volume: m.name.clone(),
                host_path: PathBuf::from(&hp.path),
                host_type: hp.type_.clone(),
                mount_path: PathBuf::from(&m.mount_path),
                read_only: m.read_only == Some(true),
                propagation: m.mount_propagation.clone(),
            })
        })
        .collect()
}

/// The mount a path inside the container lies in (the deepest one), and the host path it
/// resolves to. Paths with `..` are not resolved.
pub fn on_host(ds: &DaemonSet, inside: &Path) -> Option<(HostMount, PathBuf)> {
    if inside.components().any(|c| c == Component::ParentDir) {
        return None;
    }
    host_mounts(ds)
        .into_iter()
        .filter(|m| inside.starts_with(&m.mount_path))
        .max_by_key(|m| m.mount_path.components().count())
        .map(|m| {
            let rest = inside.strip_prefix(&m.mount_path).unwrap_or(Path::new(""));
            let host = m.host_path.join(rest);
            (m, host)
        })
}

/// Prometheus's label-name sanitising (`strutil.SanitizeLabelName`), as the operator applies
/// it to Kubernetes label keys.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn labels_of(v: &serde_json::Value) -> Vec<(String, String)> {
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect()
}

/// A ServiceMonitor relabeling in Prometheus's own spelling (the operator's
/// `generateRelabelConfig`). A field it does not know fails the test instead of being dropped.
fn relabel_config(r: &serde_json::Value) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (k, v) in r.as_object().expect("a relabeling is an object") {
        let key = match k.as_str() {
            "sourceLabels" => "source_labels",
            "separator" => "separator",
            "targetLabel" => "target_label",
            "regex" => "regex",
            "modulus" => "modulus",
            "replacement" => "replacement",
            "action" => {
                let a = v.as_str().expect("action").to_ascii_lowercase();
                out.insert("action".into(), a.into());
                continue;
            }
            other => panic!("relabeling field {other} is not modelled here: add it"),
        };
        out.insert(key.into(), v.clone());
    }
    out.into()
}

/// The scrape config prometheus-operator generates for endpoint `i` of the rendering's
/// ServiceMonitor (its `generateServiceMonitorConfig`: endpoints role, one shard, no scrape
/// class), with Kubernetes service discovery replaced by static targets at `address`, one per
/// port of the rendering's Service, carrying the `__meta_kubernetes_*` labels the endpoints
/// role gives for pod `pod` of the rendering's DaemonSet on node `node`. The operator's keep
/// rules (Service labels, port name) then decide, as in a cluster, whether anything is scraped.
pub fn operator_scrape_config(
    docs: &[serde_json::Value],
    i: usize,
    address: &str,
    pod: &str,
    node: &str,
) -> serde_json::Value {
    use serde_json::json;
    let sm = only(docs, "ServiceMonitor");
    let svc = only(docs, "Service");
    let ds = only(docs, "DaemonSet");
    let spec = &sm["spec"];
    for k in spec.as_object().expect("spec").keys() {
        assert!(
            [
                "jobLabel",
                "selector",
                "endpoints",
                "targetLabels",
                "podTargetLabels"
            ]
            .contains(&k.as_str()),
            "ServiceMonitor spec.{k} is not modelled here: add it"
        );
    }
    let ep = &spec["endpoints"][i];
    for k in ep.as_object().expect("endpoint").keys() {
        assert!(
            [
                "port",
                "interval",
                "scrapeTimeout",
                "path",
                "honorLabels",
                "relabelings",
                "metricRelabelings"
            ]
            .contains(&k.as_str()),
            "ServiceMonitor endpoint field {k} is not modelled here: add it"
        );
    }
    assert!(
        spec["selector"].get("matchExpressions").is_none(),
        "matchExpressions are not modelled here: add them"
    );
    let sm_ns = sm["metadata"]["namespace"].as_str().expect("namespace");
    let ns = svc["metadata"]["namespace"].as_str().expect("namespace");
    // Without a namespaceSelector the operator discovers the ServiceMonitor's own namespace.
    let discovered = ns == sm_ns;

    let template = &ds["spec"]["template"];
    let containers = template["spec"]["containers"]
        .as_array()
        .expect("containers");
    let mut targets = Vec::new();
    for port in svc["spec"]["ports"].as_array().into_iter().flatten() {
        let target_port = port.get("targetPort").unwrap_or(&port["port"]);
        let (container, cport) = containers
            .iter()
            .find_map(|c| {
                c["ports"].as_array().into_iter().flatten().find_map(|p| {
                    let hit = match target_port {
                        serde_json::Value::String(name) => p["name"] == *name,
                        n => p["containerPort"] == *n,
                    };
                    hit.then(|| (c.clone(), p.clone()))
                })
            })
            .expect("the Service's targetPort is a container port of the DaemonSet");
        let host = address.rsplit_once(':').map(|(h, _)| h).unwrap_or(address);
        let mut l = serde_json::Map::new();
        let mut put = |k: &str, v: &str| {
            l.insert(k.to_string(), v.into());
        };
        put("__meta_kubernetes_namespace", ns);
        put(
            "__meta_kubernetes_service_name",
            svc["metadata"]["name"].as_str().unwrap_or_default(),
        );
        put(
            "__meta_kubernetes_endpoints_name",
            svc["metadata"]["name"].as_str().unwrap_or_default(),
        );
        for (k, v) in labels_of(&svc["metadata"]["labels"]) {
            put(
                &format!("__meta_kubernetes_service_label_{}", sanitize(&k)),
                &v,
            );
            put(
                &format!("__meta_kubernetes_service_labelpresent_{}", sanitize(&k)),
                "true",
            );
        }
        put(
            "__meta_kubernetes_endpoint_port_name",
            port["name"].as_str().unwrap_or_default(),
        );
        put(
            "__meta_kubernetes_endpoint_port_protocol",
            port["protocol"].as_str().unwrap_or("TCP"),
        );
        put("__meta_kubernetes_endpoint_ready", "true");
        put("__meta_kubernetes_endpoint_address_target_kind", "Pod");
        put("__meta_kubernetes_endpoint_address_target_name", pod);
        put("__meta_kubernetes_endpoint_node_name", node);
        put("__meta_kubernetes_pod_name", pod);
        put("__meta_kubernetes_pod_ip", host);
        put("__meta_kubernetes_pod_host_ip", host);
        put("__meta_kubernetes_pod_node_name", node);
        put("__meta_kubernetes_pod_phase", "Running");
        put("__meta_kubernetes_pod_ready", "true");
        put("__meta_kubernetes_pod_controller_kind", "DaemonSet");
        put(
            "__meta_kubernetes_pod_controller_name",
            ds["metadata"]["name"].as_str().unwrap_or_default(),
        );
        put(
            "__meta_kubernetes_pod_container_name",
            container["name"].as_str().unwrap_or_default(),
        );
        put(
            "__meta_kubernetes_pod_container_port_name",
            cport["name"].as_str().unwrap_or_default(),
        );
        put(
            "__meta_kubernetes_pod_container_port_number",
            &cport["containerPort"].to_string(),
        );
        put(
            "__meta_kubernetes_pod_container_port_protocol",
            cport["protocol"].as_str().unwrap_or("TCP"),
        );
        for (k, v) in labels_of(&template["metadata"]["labels"]) {
            put(&format!("__meta_kubernetes_pod_label_{}", sanitize(&k)), &v);
            put(
                &format!("__meta_kubernetes_pod_labelpresent_{}", sanitize(&k)),
                "true",
            );
        }
        if discovered {
            targets.push(json!({"targets": [address], "labels": l}));
        }
    }

    let mut relabel =
        vec![json!({"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"})];
    let mut keys: Vec<(String, String)> = labels_of(&spec["selector"]["matchLabels"]);
    keys.sort();
    for (k, v) in keys {
        relabel.push(json!({
            "action": "keep",
            "source_labels": [
                format!("__meta_kubernetes_service_label_{}", sanitize(&k)),
                format!("__meta_kubernetes_service_labelpresent_{}", sanitize(&k)),
            ],
            "regex": format!("({v});true"),
        }));
    }
    let ep_port = ep["port"].as_str().expect("endpoint port (by name)");
    relabel.push(json!({"action": "keep", "source_labels": ["__meta_kubernetes_endpoint_port_name"], "regex": ep_port}));
    let kind_name = [
        "__meta_kubernetes_endpoint_address_target_kind",
        "__meta_kubernetes_endpoint_address_target_name",
    ];
    relabel.extend([
        json!({"source_labels": kind_name, "separator": ";", "regex": "Node;(.*)", "replacement": "${1}", "target_label": "node"}),
        json!({"source_labels": kind_name, "separator": ";", "regex": "Pod;(.*)", "replacement": "${1}", "target_label": "pod"}),
        json!({"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"}),
        json!({"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"}),
        json!({"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"}),
        json!({"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"}),
        json!({"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)"}),
    ]);
    for l in spec["targetLabels"].as_array().into_iter().flatten() {
        let l = sanitize(l.as_str().unwrap_or_default());
        relabel.push(json!({"source_labels": [format!("__meta_kubernetes_service_label_{l}")], "target_label": l, "regex": "(.+)", "replacement": "${1}"}));
    }
    for l in spec["podTargetLabels"].as_array().into_iter().flatten() {
        let l = sanitize(l.as_str().unwrap_or_default());
        relabel.push(json!({"source_labels": [format!("__meta_kubernetes_pod_label_{l}")], "target_label": l, "regex": "(.+)", "replacement": "${1}"}));
    }
    relabel.push(json!({"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job", "replacement": "${1}"}));
    if let Some(job) = spec["jobLabel"].as_str() {
        relabel.push(json!({"source_labels": [format!("__meta_kubernetes_service_label_{}", sanitize(job))], "target_label": "job", "regex": "(.+)", "replacement": "${1}"}));
    }
    relabel.push(json!({"target_label": "endpoint", "replacement": ep_port}));
    relabel.extend(
        ep["relabelings"]
            .as_array()
            .into_iter()
            .flatten()
            .map(relabel_config),
    );
    // One shard: the config reloader substitutes $(SHARD) with 0.
    relabel.extend([
        json!({"source_labels": ["__address__", "__tmp_hash"], "target_label": "__tmp_hash", "regex": "(.+);", "replacement": "$1", "action": "replace"}),
        json!({"source_labels": ["__tmp_hash"], "target_label": "__tmp_hash", "modulus": 1, "action": "hashmod"}),
        json!({"source_labels": ["__tmp_hash", "__tmp_disable_sharding"], "regex": "0;|.+;.+", "action": "keep"}),
    ]);

    let mut cfg = serde_json::Map::new();
    cfg.insert(
        "job_name".into(),
        format!(
            "serviceMonitor/{sm_ns}/{}/{i}",
            sm["metadata"]["name"].as_str().unwrap_or_default()
        )
        .into(),
    );
    cfg.insert(
        "honor_labels".into(),
        ep["honorLabels"].as_bool().unwrap_or(false).into(),
    );
    for (from, to) in [
        ("interval", "scrape_interval"),
        ("scrapeTimeout", "scrape_timeout"),
        ("path", "metrics_path"),
    ] {
        if let Some(v) = ep.get(from) {
            cfg.insert(to.into(), v.clone());
        }
    }
    cfg.insert("static_configs".into(), targets.into());
    cfg.insert("relabel_configs".into(), relabel.into());
    if let Some(m) = ep["metricRelabelings"].as_array() {
        cfg.insert(
            "metric_relabel_configs".into(),
            m.iter().map(relabel_config).collect::<Vec<_>>().into(),
        );
    }
    cfg.into()
}
