//! What containerd's CRI plugin knows about a Kubernetes container beyond its record: the
//! kubelet's annotations (kept in the record's CRI metadata extension) and, for a container
//! without a task, whether its process ever started (its CRI status, asked over the same
//! socket). Read-only, and only for containers the CRI plugin made (`k8s.io` namespace,
//! `io.cri-containerd.kind=container`).
//!
//! Why the CRI status: the plugin deletes a task as soon as it exits and keeps the dead
//! container, so at startup a container that ran and one whose start was refused look alike
//! to containerd's own API — the record does not change when a task comes or goes (its
//! `UpdatedAt` stays its `CreatedAt`, 1.6 to 2.x). The plugin's status files say it, but they
//! live under containerd's root, which the agent does not mount; `ContainerStatus` on the
//! socket the agent already uses gives the same (started_at 0 and reason `StartError` for a
//! refused start; started_at, finished_at and the exit code for a process that ran). What the
//! agent itself already reported survives in its journal (see `sinks::journal::reported`).

use chrono::{DateTime, Utc};
use containerd_client::services::v1::Container;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;

use super::{Client, ContainerdError};
use crate::diagnose::ContainerType;
use crate::pipeline::History;

/// The record extension where the CRI plugin keeps its metadata (JSON: the container's
/// CRI config, with the kubelet's labels and annotations), in 1.6 through 2.x.
pub const METADATA_EXTENSION: &str = "io.cri-containerd.container.metadata";
/// The kubelet's annotation naming the pod spec list a container comes from (recent
/// kubelets; pkg/kubelet/kuberuntime/labels.go `containerTypeLabel`).
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.container.type";
/// The CRI plugin's namespace.
pub const NAMESPACE: &str = "k8s.io";

/// What the kubelet put on a container, from the CRI metadata in its record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    pub container_type: Option<ContainerType>,
    /// CRI `metadata.attempt` (the kubelet's restart count).
    pub attempt: Option<u32>,
}

/// Whether the CRI plugin made this container (and not a pod sandbox).
pub fn is_cri_container(c: &Container) -> bool {
    c.labels.get("io.cri-containerd.kind").map(String::as_str) == Some("container")
}

/// Reads the CRI metadata extension of a record; empty when there is none or it does not
/// parse (a container made by something else).
pub fn metadata(c: &Container) -> Metadata {
    let Some(any) = c.extensions.get(METADATA_EXTENSION) else {
        return Metadata::default();
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&any.value) else {
        return Metadata::default();
    };
    // {"Version":"v1","Metadata":{"Config":{"metadata":{"name":..,"attempt":N},"annotations":{..}}}}
    let config = &v["Metadata"]["Config"];
    if !config.is_object() {
        return Metadata::default();
    }
    Metadata {
        container_type: config["annotations"][CONTAINER_TYPE_ANNOTATION]
            .as_str()
            .and_then(ContainerType::from_annotation),
        // Go leaves a zero attempt out of the JSON.
        attempt: Some(
            config["metadata"]["attempt"]
                .as_u64()
                .and_then(|a| u32::try_from(a).ok())
                .unwrap_or(0),
        ),
    }
}

fn nanos(t: i64) -> Option<DateTime<Utc>> {
    (t > 0).then(|| DateTime::from_timestamp_nanos(t))
}

/// Reads a CRI container status into what the pipeline needs.
pub fn history(s: &cri::ContainerStatus) -> History {
    match cri::ContainerState::try_from(s.state) {
        Ok(cri::ContainerState::ContainerRunning) => History::Running {
            started_at: nanos(s.started_at),
        },
        Ok(cri::ContainerState::ContainerExited) if s.started_at > 0 => History::Exited {
            started_at: nanos(s.started_at),
            finished_at: nanos(s.finished_at),
            exit_code: u32::from_ne_bytes(s.exit_code.to_ne_bytes()),
        },
        // Exited without ever starting: StartContainer failed (the plugin's `StartError`).
        Ok(cri::ContainerState::ContainerExited) => History::StartFailed {
            at: nanos(s.finished_at),
            exit_code: None,
        },
        _ => History::Created,
    }
}

impl Client {
    /// The CRI plugin's status of a container it made, as [`History`]; `None` when the
    /// plugin does not know it (not a CRI container, or the plugin is off).
    pub async fn cri_history(&self, id: &str) -> Result<Option<History>, ContainerdError> {
        let mut c = RuntimeServiceClient::new(self.channel.clone());
        let r = c
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await;
        match r {
            Ok(r) => Ok(r.into_inner().status.as_ref().map(history)),
            Err(s) if matches!(s.code(), tonic::Code::NotFound | tonic::Code::Unimplemented) => {
                Ok(None)
            }
            Err(s) => Err(ContainerdError::Rpc {
                call: "RuntimeService.ContainerStatus",
                status: Box::new(s),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(meta: &str) -> Container {
        Container {
            extensions: [(
                METADATA_EXTENSION.to_string(),
                prost_types::Any {
                    type_url: "github.com/containerd/cri/pkg/store/container/Metadata".into(),
                    value: meta.as_bytes().to_vec(),
                },
            )]
            .into(),
            ..Default::default()
        }
    }

    #[test]
    fn metadata_as_the_cri_plugin_writes_it() {
        let init = record(
            r#"{"Version":"v1","Metadata":{"ID":"x","Config":{"metadata":{"name":"migrate","attempt":3},"annotations":{"io.kubernetes.container.type":"init","io.kubernetes.container.restartCount":"3"}}}}"#,
        );
        assert_eq!(
            metadata(&init),
            Metadata {
                container_type: Some(ContainerType::Init),
                attempt: Some(3)
            }
        );
        // An older kubelet: no type; attempt 0 is left out by Go.
        let old = record(
            r#"{"Version":"v1","Metadata":{"Config":{"metadata":{"name":"app"},"annotations":{"io.kubernetes.container.restartCount":"0"}}}}"#,
        );
        assert_eq!(
            metadata(&old),
            Metadata {
                container_type: None,
                attempt: Some(0)
            }
        );
        assert_eq!(metadata(&record("not json")), Metadata::default());
        assert_eq!(metadata(&Container::default()), Metadata::default());
    }

    #[test]
    fn status_to_history() {
        let s = |state: cri::ContainerState, started: i64, code: i32| cri::ContainerStatus {
            state: state as i32,
            started_at: started,
            finished_at: 2_000_000_000,
            exit_code: code,
            ..Default::default()
        };
        assert!(matches!(
            history(&s(cri::ContainerState::ContainerExited, 1_000_000_000, 1)),
            History::Exited {
                exit_code: 1,
                started_at: Some(_),
                ..
            }
        ));
        assert!(matches!(
            history(&s(cri::ContainerState::ContainerExited, 0, 128)),
            History::StartFailed { at: Some(_), .. }
        ));
        assert!(matches!(
            history(&s(cri::ContainerState::ContainerExited, 1, -1)),
            History::Exited {
                exit_code: u32::MAX,
                ..
            }
        ));
        assert_eq!(
            history(&s(cri::ContainerState::ContainerCreated, 0, 0)),
            History::Created
        );
    }
}
