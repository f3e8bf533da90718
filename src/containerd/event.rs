//! containerd event envelopes decoded into the few facts the pipeline needs.
//!
//! containerd sends `type_url` without the leading `/` (`containerd.events.TaskExit`), so the
//! payload is chosen by topic and decoded with prost directly rather than through `Any`'s
//! type registry.

use chrono::{DateTime, Utc};
use containerd_client::events;
use containerd_client::services::v1 as images;
use containerd_client::types::Mount;
use prost::Message;

/// A decoded event. Only what the pipeline acts on is kept.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    ImageCreate {
        name: String,
    },
    ImageUpdate {
        name: String,
    },
    ImageDelete {
        name: String,
    },
    ContainerCreate {
        id: String,
        image: String,
    },
    ContainerDelete {
        id: String,
    },
    TaskCreate {
        container_id: String,
        pid: u32,
        rootfs: Vec<Mount>,
    },
    TaskStart {
        container_id: String,
        pid: u32,
    },
    TaskExit {
        container_id: String,
        id: String,
        pid: u32,
        exit_status: u32,
        exited_at: Option<DateTime<Utc>>,
    },
    TaskDelete {
        container_id: String,
        id: String,
        exit_status: u32,
        exited_at: Option<DateTime<Utc>>,
    },
    /// Any other topic: counted, not acted on.
    Other,
}

/// One envelope: where and when, and what.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    pub namespace: String,
    pub topic: String,
    pub timestamp: Option<DateTime<Utc>>,
    pub event: Event,
}

#[derive(Debug, thiserror::Error)]
#[error("event {topic}: payload does not decode: {source}")]
pub struct DecodeError {
    pub topic: String,
    pub source: prost::DecodeError,
}

pub fn timestamp(t: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    let t = t?;
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
}

/// Decodes an envelope as containerd sends it on `Events.Subscribe`.
pub fn decode(env: &containerd_client::types::Envelope) -> Result<Envelope, DecodeError> {
    let value: &[u8] = env
        .event
        .as_ref()
        .map(|a| a.value.as_slice())
        .unwrap_or(&[]);
    let err = |source| DecodeError {
        topic: env.topic.clone(),
        source,
    };
    let event = match env.topic.as_str() {
        "/images/create" => Event::ImageCreate {
            name: images::ImageCreate::decode(value).map_err(err)?.name,
        },
        "/images/update" => Event::ImageUpdate {
            name: images::ImageUpdate::decode(value).map_err(err)?.name,
        },
        "/images/delete" => Event::ImageDelete {
            name: images::ImageDelete::decode(value).map_err(err)?.name,
        },
        "/containers/create" => {
            let e = events::ContainerCreate::decode(value).map_err(err)?;
            Event::ContainerCreate {
                id: e.id,
                image: e.image,
            }
        }
        "/containers/delete" => Event::ContainerDelete {
            id: events::ContainerDelete::decode(value).map_err(err)?.id,
        },
        "/tasks/create" => {
            let e = events::TaskCreate::decode(value).map_err(err)?;
            Event::TaskCreate {
                container_id: e.container_id,
                pid: e.pid,
                rootfs: e.rootfs,
            }
        }
        "/tasks/start" => {
            let e = events::TaskStart::decode(value).map_err(err)?;
            Event::TaskStart {
                container_id: e.container_id,
                pid: e.pid,
            }
        }
        "/tasks/exit" => {
            let e = events::TaskExit::decode(value).map_err(err)?;
            Event::TaskExit {
                exited_at: timestamp(e.exited_at.as_ref()),
                container_id: e.container_id,
                id: e.id,
                pid: e.pid,
                exit_status: e.exit_status,
            }
        }
        "/tasks/delete" => {
            let e = events::TaskDelete::decode(value).map_err(err)?;
            Event::TaskDelete {
                exited_at: timestamp(e.exited_at.as_ref()),
                container_id: e.container_id,
                id: e.id,
                exit_status: e.exit_status,
            }
        }
        _ => Event::Other,
    };
    Ok(Envelope {
        namespace: env.namespace.clone(),
        topic: env.topic.clone(),
        timestamp: timestamp(env.timestamp.as_ref()),
        event,
    })
}

/// Closed set of topic labels for metrics (anything else is `other`).
/// The topics counted by name in `archwatch_containerd_events_total{topic}`; any other is
/// `other`.
pub const TOPICS: &[&str] = &[
    "/images/create",
    "/images/update",
    "/images/delete",
    "/containers/create",
    "/containers/update",
    "/containers/delete",
    "/tasks/create",
    "/tasks/start",
    "/tasks/exit",
    "/tasks/delete",
    "/tasks/oom",
    "/tasks/exec-added",
    "/tasks/exec-started",
    "/tasks/paused",
    "/tasks/resumed",
    "/snapshot/prepare",
    "/snapshot/commit",
    "/snapshot/remove",
    "/content/delete",
    "/namespaces/create",
    "/namespaces/delete",
];

pub fn topic_label(topic: &str) -> &'static str {
    TOPICS
        .iter()
        .copied()
        .find(|k| *k == topic)
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::{Any, Timestamp};

    fn env<M: Message>(topic: &str, type_url: &str, m: &M) -> containerd_client::types::Envelope {
        containerd_client::types::Envelope {
            timestamp: Some(Timestamp {
                seconds: 1_800_000_000,
                nanos: 5,
            }),
            namespace: "k8s.io".into(),
            topic: topic.into(),
            event: Some(Any {
                type_url: type_url.into(),
                value: m.encode_to_vec(),
            }),
        }
    }

    #[test]
    fn envelopes_decode_by_topic_whatever_the_type_url() {
        let exit = events::TaskExit {
            container_id: "c1".into(),
            id: "c1".into(),
            pid: 42,
            exit_status: 255,
            exited_at: Some(Timestamp {
                seconds: 1_800_000_001,
                nanos: 0,
            }),
        };
        let d = decode(&env("/tasks/exit", "containerd.events.TaskExit", &exit)).unwrap();
        assert_eq!(d.namespace, "k8s.io");
        assert_eq!(d.timestamp.unwrap().timestamp(), 1_800_000_000);
        match d.event {
            Event::TaskExit {
                container_id,
                id,
                exit_status,
                exited_at,
                ..
            } => {
                assert_eq!(
                    (container_id.as_str(), id.as_str(), exit_status),
                    ("c1", "c1", 255)
                );
                assert_eq!(exited_at.unwrap().timestamp(), 1_800_000_001);
            }
            other => panic!("{other:?}"),
        }
        let create = events::ContainerCreate {
            id: "c2".into(),
            image: "docker.io/library/x:1".into(),
            runtime: None,
        };
        let d = decode(&env(
            "/containers/create",
            "/containerd.events.ContainerCreate",
            &create,
        ))
        .unwrap();
        assert_eq!(
            d.event,
            Event::ContainerCreate {
                id: "c2".into(),
                image: "docker.io/library/x:1".into()
            }
        );
        let img = images::ImageCreate {
            name: "x:1".into(),
            labels: Default::default(),
        };
        assert_eq!(
            decode(&env(
                "/images/create",
                "containerd.services.images.v1.ImageCreate",
                &img
            ))
            .unwrap()
            .event,
            Event::ImageCreate { name: "x:1".into() }
        );
        assert_eq!(
            decode(&env("/snapshot/commit", "x", &img)).unwrap().event,
            Event::Other
        );
        assert_eq!(topic_label("/tasks/exit"), "/tasks/exit");
        assert_eq!(topic_label("/made/up"), "other");
    }

    #[test]
    fn garbage_payload_is_an_error_not_a_panic() {
        let mut e = env(
            "/tasks/exit",
            "containerd.events.TaskExit",
            &events::TaskStart::default(),
        );
        e.event = Some(Any {
            type_url: "x".into(),
            value: vec![0xff, 0xff, 0xff],
        });
        assert!(decode(&e).is_err());
    }
}
