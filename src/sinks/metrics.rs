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
    pub images_inspected: Family<ImageLabels, Gauge>,
    pub containers_emulated: Family<ArchLabels, Gauge>,
    pub binfmt_handler_info: Family<HandlerLabels, Gauge>,
    pub node_info: Family<NodeLabels, Gauge>,
    pub containerd_connected: Gauge,
    pub containerd_reconnects: Counter,
    pub containerd_events: Family<TopicLabels, Counter>,
    pub inspection_duration: Family<TargetLabels, Histogram, DurationBuckets>,
    pub inspection_errors: Family<KindLabels, Counter>,
    pub kube_events: Family<KubeLabels, Counter>,
    pub build_info: Family<VersionLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            exec_failures: Family::default(),
            images_inspected: Family::default(),
            containers_emulated: Family::default(),
            binfmt_handler_info: Family::default(),
            node_info: Family::default(),
            containerd_connected: Gauge::default(),
            containerd_reconnects: Counter::default(),
            containerd_events: Family::default(),
            inspection_duration: Family::new_with_constructor(DurationBuckets),
            inspection_errors: Family::default(),
            kube_events: Family::default(),
            build_info: Family::default(),
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
