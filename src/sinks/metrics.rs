//! Prometheus metrics (OpenMetrics text). Names and labels are the contract in
//! ARCHITECTURE.md: every label value comes from a closed set — no pod names, container ids
//! or digests (those go to the journal and Events).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::diagnose::Diagnosis;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub namespace: String,
    pub reason: String,
    pub binary_arch: String,
    pub node_arch: String,
}

/// What became of one failed exec the tracer saw.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

/// Every `outcome` of `archwatch_exec_tracer_events_total`.
pub const EXEC_EVENT_OUTCOMES: &[&str] = &[
    "reported",
    "container_start",
    "host",
    "unattributed",
    "rate_limited",
    "path_search",
    "unjudgeable",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ImageLabels {
    pub verdict: String,
    pub binary_arch: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ArchLabels {
    pub binary_arch: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandlerLabels {
    pub name: String,
    pub arch: String,
    pub flags: String,
    pub enabled: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub arch: String,
    pub kernel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    pub topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KubeLabels {
    pub reason: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub version: String,
}

/// Every `kind` of `archwatch_inspection_errors_total`: the `kind()` codes of the errors an
/// inspection, a containerd lookup or the journal can meet, and the agent's own.
pub const INSPECTION_ERROR_KINDS: &[&str] = &[
    // containerd lookups (ContainerdError)
    "containerd_connect",
    "containerd_rpc",
    "containerd_missing",
    "not_found",
    "image_too_large",
    "index_lacks_node_platform",
    "spec_malformed",
    "image_malformed",
    "snapshotter_unsupported",
    // Docker Engine lookups (DockerError)
    "docker_unreachable",
    "docker_api",
    "docker_not_found",
    "docker_timeout",
    // reading the files (RootfsError, InspectError)
    "layer_unreadable",
    "io",
    "not_regular",
    "empty_argv",
    "snapshot_vanished",
    "read",
    // the agent itself
    "event_decode",
    "inspection_timeout",
    "inspection_panicked",
    "journal_io",
    "journal_encode",
];

/// Every `reason` of `archwatch_kube_events_total`: one per verdict that is reported, and the
/// Node's warning for a pulled image.
pub const KUBE_EVENT_REASONS: &[&str] = &[
    "RunningUnderEmulation",
    "ExecFormatError",
    "EmulatorMissing",
    "MissingDynamicLoader",
    "ScriptCRLF",
    "ScriptInterpreterMissing",
    "ScriptNoShebang",
    "NotExecutable",
    "EntrypointNotFound",
    "EntrypointSymlinkLoop",
    "EntrypointNotRegularFile",
    "UnknownExecutableFormat",
    "IncompatibleImagePulled",
];

/// Every `result` of `archwatch_kube_events_total`.
pub const KUBE_EVENT_RESULTS: &[&str] = &[
    "created",
    "series_updated",
    "rate_limited",
    "dropped",
    "failed",
];

#[derive(Clone)]
pub struct DurationBuckets;

impl MetricConstructor<Histogram> for DurationBuckets {
    fn new_metric(&self) -> Histogram {
        // 100 µs .. ~3.3 s
        Histogram::new(exponential_buckets(0.0001, 2.0, 16))
    }
}

/// Every family the agent exports.
#[derive(Clone)]
pub struct Metrics {
    pub exec_failures: Family<FailureLabels, Counter>,
    /// Failed execs in running containers (the exec tracer), judged.
    pub exec_errors: Family<FailureLabels, Counter>,
    /// 1 while the exec tracer runs.
    pub exec_tracer_up: Gauge,
    pub exec_events: Family<OutcomeLabels, Counter>,
    pub images_inspected: Family<ImageLabels, Gauge>,
    pub containers_emulated: Family<ArchLabels, Gauge>,
    pub binfmt_handler_info: Family<HandlerLabels, Gauge>,
    pub node_info: Family<NodeLabels, Gauge>,
    pub containerd_connected: Gauge,
    pub containerd_reconnects: Counter,
    pub containerd_events: Family<TopicLabels, Counter>,
    pub docker_connected: Gauge,
    pub docker_reconnects: Counter,
    pub inspection_duration: Family<TargetLabels, Histogram, DurationBuckets>,
    pub inspection_errors: Family<KindLabels, Counter>,
    pub kube_events: Family<KubeLabels, Counter>,
    pub build_info: Family<VersionLabels, Gauge>,
    /// 1 when `trusted.overlay.opaque` is readable (CAP_SYS_ADMIN), set at start.
    pub overlay_xattrs_readable: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            exec_failures: Family::default(),
            exec_errors: Family::default(),
            exec_tracer_up: Gauge::default(),
            exec_events: Family::default(),
            images_inspected: Family::default(),
            containers_emulated: Family::default(),
            binfmt_handler_info: Family::default(),
            node_info: Family::default(),
            containerd_connected: Gauge::default(),
            containerd_reconnects: Counter::default(),
            containerd_events: Family::default(),
            docker_connected: Gauge::default(),
            docker_reconnects: Counter::default(),
            inspection_duration: Family::new_with_constructor(DurationBuckets),
            inspection_errors: Family::default(),
            kube_events: Family::default(),
            build_info: Family::default(),
            overlay_xattrs_readable: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Registers every family under the `archwatch_` prefix (counters get `_total` from the
    /// crate).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("archwatch");
        r.register(
            "exec_failures",
            "Containers whose start failed because argv[0] cannot exec on this node",
            self.exec_failures.clone(),
        );
        r.register(
            "exec_errors",
            "Failed execs in running containers (probes, kubectl exec, helpers), by the verdict for the failed path",
            self.exec_errors.clone(),
        );
        r.register(
            "exec_tracer_up",
            "1 while the eBPF exec tracer runs (--exec-tracer), 0 when it is off or the node cannot run it",
            self.exec_tracer_up.clone(),
        );
        r.register(
            "exec_tracer_events",
            "Failed execs the exec tracer saw, by what became of them",
            self.exec_events.clone(),
        );
        r.register(
            "images_inspected",
            "Images on this node by the verdict for their entrypoint",
            self.images_inspected.clone(),
        );
        r.register(
            "containers_emulated",
            "Running containers whose init process runs under a binfmt_misc emulator",
            self.containers_emulated.clone(),
        );
        r.register(
            "binfmt_handler_info",
            "binfmt_misc handlers registered on this node",
            self.binfmt_handler_info.clone(),
        );
        r.register(
            "node_info",
            "This node's architecture and kernel",
            self.node_info.clone(),
        );
        r.register(
            "containerd_connected",
            "1 while the agent is subscribed to containerd events",
            self.containerd_connected.clone(),
        );
        r.register(
            "containerd_reconnects",
            "Times the agent re-established its containerd event stream",
            self.containerd_reconnects.clone(),
        );
        r.register(
            "containerd_events",
            "containerd events received, by topic",
            self.containerd_events.clone(),
        );
        r.register(
            "docker_connected",
            "1 while the agent follows Docker Engine's event stream",
            self.docker_connected.clone(),
        );
        r.register(
            "docker_reconnects",
            "Times the agent re-established its Docker Engine event stream",
            self.docker_reconnects.clone(),
        );
        r.register(
            "inspection_duration_seconds",
            "Time to inspect the files of an image or container",
            self.inspection_duration.clone(),
        );
        r.register(
            "inspection_errors",
            "Inspections that could not read their input, by kind",
            self.inspection_errors.clone(),
        );
        r.register(
            "kube_events",
            "Kubernetes Events by reason and result",
            self.kube_events.clone(),
        );
        r.register("build_info", "archwatch version", self.build_info.clone());
        r.register(
            "overlay_xattrs_readable",
            "1 when the agent can read trusted.overlay.opaque (CAP_SYS_ADMIN), 0 when opaque directories of overlay layers are unseen and merges through them are reported as uncertain",
            self.overlay_xattrs_readable.clone(),
        );
    }

    /// Creates, at 0, every series of the families whose label sets are closed, so that a
    /// freshly started agent exposes them all: `increase()` then sees a first failure, and an
    /// alert on a counter never waits for its series to exist. (`exec_failures_total` has
    /// the open `namespace` label: its rules handle first appearances.)
    pub fn start_at_zero(&self) {
        for kind in INSPECTION_ERROR_KINDS {
            drop(self.inspection_errors.get_or_create(&KindLabels {
                kind: (*kind).into(),
            }));
        }
        for reason in KUBE_EVENT_REASONS {
            for result in KUBE_EVENT_RESULTS {
                drop(self.kube_events.get_or_create(&KubeLabels {
                    reason: (*reason).into(),
                    result: (*result).into(),
                }));
            }
        }
        for topic in crate::containerd::event::TOPICS
            .iter()
            .chain(std::iter::once(&"other"))
        {
            drop(self.containerd_events.get_or_create(&TopicLabels {
                topic: (*topic).into(),
            }));
        }
        for outcome in EXEC_EVENT_OUTCOMES {
            drop(self.exec_events.get_or_create(&OutcomeLabels {
                outcome: (*outcome).into(),
            }));
        }
        for target in ["image", "container", "exec"] {
            drop(self.inspection_duration.get_or_create(&TargetLabels {
                target: target.into(),
            }));
        }
    }

    /// Counts one inspection error by its kind (a code from [`INSPECTION_ERROR_KINDS`]).
    pub fn inspection_error(&self, kind: &str) {
        self.inspection_errors
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    /// Counts one diagnosis.
    pub fn record(&self, d: &Diagnosis) {
        self.exec_failures
            .get_or_create(&FailureLabels {
                namespace: d.identity.namespace().to_string(),
                reason: d.verdict.code().to_string(),
                binary_arch: d.binary_arch_label.to_string(),
                node_arch: d.node_arch.clone(),
            })
            .inc();
    }
}

/// Encodes the registry as OpenMetrics text.
pub fn encode(registry: &Registry) -> String {
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut s, registry);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The closed sets are really closed: every code the error types, the verdicts and the
    /// Events publisher can produce is in them, so no series appears later than the start.
    #[test]
    fn closed_label_sets_hold_every_code_the_agent_emits() {
        use crate::containerd::ContainerdError;
        use crate::inspect::{InspectError, Verdict};
        use crate::rootfs::RootfsError;
        let io = || std::io::Error::from(std::io::ErrorKind::Other);
        let kinds = [
            ContainerdError::Missing("x").kind(),
            ContainerdError::Spec("x".into()).kind(),
            RootfsError::Layer {
                path: "/".into(),
                source: io(),
            }
            .kind(),
            RootfsError::Io {
                path: "/".into(),
                layer: 0,
                source: io(),
            }
            .kind(),
            RootfsError::NotRegular { path: "/".into() }.kind(),
            InspectError::EmptyArgv.kind(),
            InspectError::Vanished { layer: "x".into() }.kind(),
            InspectError::Read {
                path: "/".into(),
                source: io(),
            }
            .kind(),
            crate::sinks::journal::JournalError::Io {
                path: "/".into(),
                source: io(),
            }
            .kind(),
            crate::containerd::mounts::MountError::Unsupported("x".into()).kind(),
        ];
        for k in kinds {
            assert!(INSPECTION_ERROR_KINDS.contains(&k), "{k}");
        }
        for v in Verdict::ALL {
            if v != Verdict::Ok {
                assert!(KUBE_EVENT_REASONS.contains(&v.event_reason()), "{v}");
            }
        }
    }

    #[test]
    fn a_fresh_agent_exports_closed_families_at_zero() {
        let m = Metrics::default();
        let mut r = Registry::default();
        m.register(&mut r);
        m.start_at_zero();
        let text = encode(&r);
        for kind in INSPECTION_ERROR_KINDS {
            assert!(
                text.contains(&format!(
                    "archwatch_inspection_errors_total{{kind=\"{kind}\"}} 0\n"
                )),
                "{kind}"
            );
        }
        assert!(text.contains(
            "archwatch_kube_events_total{reason=\"ExecFormatError\",result=\"dropped\"} 0\n"
        ));
        assert!(text.contains("archwatch_containerd_events_total{topic=\"/tasks/exit\"} 0\n"));
        assert!(text.contains("archwatch_containerd_events_total{topic=\"other\"} 0\n"));
        assert!(
            text.contains("archwatch_inspection_duration_seconds_count{target=\"container\"} 0\n")
        );
        let series = |prefix: &str| text.lines().filter(|l| l.starts_with(prefix)).count();
        assert_eq!(
            series("archwatch_kube_events_total{"),
            KUBE_EVENT_REASONS.len() * KUBE_EVENT_RESULTS.len()
        );
        // The open family is not invented.
        assert_eq!(series("archwatch_exec_failures_total"), 0);
    }

    /// The exposition is the contract for alert rules and dashboards: one sample of every
    /// family, exactly.
    #[test]
    fn exposition_of_every_family_is_exact() {
        let m = Metrics::default();
        let mut r = Registry::default();
        m.register(&mut r);
        m.exec_failures
            .get_or_create(&FailureLabels {
                namespace: "shop".into(),
                reason: "arch_mismatch".into(),
                binary_arch: "arm64".into(),
                node_arch: "amd64".into(),
            })
            .inc();
        m.exec_errors
            .get_or_create(&FailureLabels {
                namespace: "shop".into(),
                reason: "arch_mismatch".into(),
                binary_arch: "arm64".into(),
                node_arch: "amd64".into(),
            })
            .inc();
        m.exec_tracer_up.set(1);
        m.exec_events
            .get_or_create(&OutcomeLabels {
                outcome: "reported".into(),
            })
            .inc();
        m.images_inspected
            .get_or_create(&ImageLabels {
                verdict: "ok".into(),
                binary_arch: "amd64".into(),
            })
            .set(3);
        m.containers_emulated
            .get_or_create(&ArchLabels {
                binary_arch: "arm64".into(),
            })
            .set(1);
        m.binfmt_handler_info
            .get_or_create(&HandlerLabels {
                name: "qemu-aarch64".into(),
                arch: "arm64".into(),
                flags: "POCF".into(),
                enabled: "true".into(),
            })
            .set(1);
        m.node_info
            .get_or_create(&NodeLabels {
                arch: "amd64".into(),
                kernel: "6.1.0".into(),
            })
            .set(1);
        m.containerd_connected.set(1);
        m.containerd_reconnects.inc();
        m.docker_connected.set(1);
        m.docker_reconnects.inc();
        m.containerd_events
            .get_or_create(&TopicLabels {
                topic: "/tasks/exit".into(),
            })
            .inc();
        m.inspection_duration
            .get_or_create(&TargetLabels {
                target: "image".into(),
            })
            .observe(0.0003);
        m.inspection_errors
            .get_or_create(&KindLabels {
                kind: "not_found".into(),
            })
            .inc();
        m.kube_events
            .get_or_create(&KubeLabels {
                reason: "ExecFormatError".into(),
                result: "created".into(),
            })
            .inc();
        m.build_info
            .get_or_create(&VersionLabels {
                version: "0.1.0".into(),
            })
            .set(1);
        m.overlay_xattrs_readable.set(1);
        let text = encode(&r);
        let buckets: String = (0..16)
            .map(|i| {
                let le = 0.0001 * 2f64.powi(i);
                let count = u32::from(le >= 0.0003);
                format!("archwatch_inspection_duration_seconds_bucket{{le=\"{le}\",target=\"image\"}} {count}\n")
            })
            .collect();
        let want = format!(
            "# HELP archwatch_exec_failures Containers whose start failed because argv[0] cannot exec on this node.\n\
# TYPE archwatch_exec_failures counter\n\
archwatch_exec_failures_total{{namespace=\"shop\",reason=\"arch_mismatch\",binary_arch=\"arm64\",node_arch=\"amd64\"}} 1\n\
# HELP archwatch_exec_errors Failed execs in running containers (probes, kubectl exec, helpers), by the verdict for the failed path.\n\
# TYPE archwatch_exec_errors counter\n\
archwatch_exec_errors_total{{namespace=\"shop\",reason=\"arch_mismatch\",binary_arch=\"arm64\",node_arch=\"amd64\"}} 1\n\
# HELP archwatch_exec_tracer_up 1 while the eBPF exec tracer runs (--exec-tracer), 0 when it is off or the node cannot run it.\n\
# TYPE archwatch_exec_tracer_up gauge\n\
archwatch_exec_tracer_up 1\n\
# HELP archwatch_exec_tracer_events Failed execs the exec tracer saw, by what became of them.\n\
# TYPE archwatch_exec_tracer_events counter\n\
archwatch_exec_tracer_events_total{{outcome=\"reported\"}} 1\n\
# HELP archwatch_images_inspected Images on this node by the verdict for their entrypoint.\n\
# TYPE archwatch_images_inspected gauge\n\
archwatch_images_inspected{{verdict=\"ok\",binary_arch=\"amd64\"}} 3\n\
# HELP archwatch_containers_emulated Running containers whose init process runs under a binfmt_misc emulator.\n\
# TYPE archwatch_containers_emulated gauge\n\
archwatch_containers_emulated{{binary_arch=\"arm64\"}} 1\n\
# HELP archwatch_binfmt_handler_info binfmt_misc handlers registered on this node.\n\
# TYPE archwatch_binfmt_handler_info gauge\n\
archwatch_binfmt_handler_info{{name=\"qemu-aarch64\",arch=\"arm64\",flags=\"POCF\",enabled=\"true\"}} 1\n\
# HELP archwatch_node_info This node's architecture and kernel.\n\
# TYPE archwatch_node_info gauge\n\
archwatch_node_info{{arch=\"amd64\",kernel=\"6.1.0\"}} 1\n\
# HELP archwatch_containerd_connected 1 while the agent is subscribed to containerd events.\n\
# TYPE archwatch_containerd_connected gauge\n\
archwatch_containerd_connected 1\n\
# HELP archwatch_containerd_reconnects Times the agent re-established its containerd event stream.\n\
# TYPE archwatch_containerd_reconnects counter\n\
archwatch_containerd_reconnects_total 1\n\
# HELP archwatch_containerd_events containerd events received, by topic.\n\
# TYPE archwatch_containerd_events counter\n\
archwatch_containerd_events_total{{topic=\"/tasks/exit\"}} 1\n\
# HELP archwatch_docker_connected 1 while the agent follows Docker Engine's event stream.\n\
# TYPE archwatch_docker_connected gauge\n\
archwatch_docker_connected 1\n\
# HELP archwatch_docker_reconnects Times the agent re-established its Docker Engine event stream.\n\
# TYPE archwatch_docker_reconnects counter\n\
archwatch_docker_reconnects_total 1\n\
# HELP archwatch_inspection_duration_seconds Time to inspect the files of an image or container.\n\
# TYPE archwatch_inspection_duration_seconds histogram\n\
archwatch_inspection_duration_seconds_sum{{target=\"image\"}} 0.0003\n\
archwatch_inspection_duration_seconds_count{{target=\"image\"}} 1\n\
{buckets}archwatch_inspection_duration_seconds_bucket{{le=\"+Inf\",target=\"image\"}} 1\n\
# HELP archwatch_inspection_errors Inspections that could not read their input, by kind.\n\
# TYPE archwatch_inspection_errors counter\n\
archwatch_inspection_errors_total{{kind=\"not_found\"}} 1\n\
# HELP archwatch_kube_events Kubernetes Events by reason and result.\n\
# TYPE archwatch_kube_events counter\n\
archwatch_kube_events_total{{reason=\"ExecFormatError\",result=\"created\"}} 1\n\
# HELP archwatch_build_info archwatch version.\n\
# TYPE archwatch_build_info gauge\n\
archwatch_build_info{{version=\"0.1.0\"}} 1\n\
# HELP archwatch_overlay_xattrs_readable 1 when the agent can read trusted.overlay.opaque (CAP_SYS_ADMIN), 0 when opaque directories of overlay layers are unseen and merges through them are reported as uncertain.\n\
# TYPE archwatch_overlay_xattrs_readable gauge\n\
archwatch_overlay_xattrs_readable 1\n\
# EOF\n"
        );
        assert_eq!(text, want);
    }
}
