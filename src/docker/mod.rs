//! Docker Engine through its API (bollard): events, container and image records, and the
//! layer directories behind them.
//!
//! Docker keeps its own record of every container and image. With the overlay2 graph
//! driver, `GraphDriver.Data` names the layer directories (`UpperDir`, then `LowerDir`'s
//! entries, top first), which the agent reads as it reads a containerd snapshot. With
//! Docker's containerd image store, the container is a containerd snapshot in the `moby`
//! namespace instead: [`Layers::Snapshot`] says which, and the containerd side reads it.
//!
//! Docker's containers are keyed in the pipeline under the `moby` namespace, the one Docker
//! gives them in its containerd: when the agent follows both, a container is one record.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bollard::models::{ContainerInspectResponse, EventMessage, EventMessageTypeEnum};
use bollard::query_parameters::{ListContainersOptions, ListImagesOptions};
use chrono::{DateTime, Utc};
use futures::Stream;

use crate::containerd::event::{Envelope, Event};
use crate::pipeline::{History, Process};
use crate::rootfs::{Caps, Creds};

/// The pipeline namespace of Docker's containers and images (Docker's containerd namespace).
pub const NAMESPACE: &str = "moby";

/// The `namespace` of a Docker container that no compose project names.
pub const DEFAULT_NAMESPACE: &str = "docker";

/// Compose's labels: the project and service a container belongs to.
pub const COMPOSE_PROJECT: &str = "com.docker.compose.project";
pub const COMPOSE_SERVICE: &str = "com.docker.compose.service";

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    // The client's error is said in the message (not as a source, which would say it
    // twice in a chain).
    #[error("cannot reach Docker at {host}: {error}")]
    Connect {
        host: String,
        error: bollard::errors::Error,
    },
    #[error("Docker {call}: {error}")]
    Api {
        call: &'static str,
        error: bollard::errors::Error,
    },
    #[error("Docker {call}: no answer within {} ms", .after.as_millis())]
    Timeout { call: &'static str, after: Duration },
    #[error("Docker {call}: the answer lacks {what}")]
    Missing {
        call: &'static str,
        what: &'static str,
    },
    #[error("graph driver {driver:?} is not a directory stack the agent reads (overlay2, or a containerd snapshotter)")]
    Driver { driver: String },
}

impl DockerError {
    /// A code of `archwatch_inspection_errors_total{kind}`.
    pub fn kind(&self) -> &'static str {
        match self {
            DockerError::Connect { error, .. } | DockerError::Api { error, .. }
                if matches!(error, bollard::errors::Error::RequestTimeoutError) =>
            {
                "docker_timeout"
            }
            DockerError::Connect { .. } => "docker_unreachable",
            DockerError::Api { error, .. } if not_found(error) => "docker_not_found",
            DockerError::Api { .. } => "docker_api",
            DockerError::Timeout { .. } => "docker_timeout",
            DockerError::Missing { .. } => "docker_api",
            DockerError::Driver { .. } => "snapshotter_unsupported",
        }
    }

    /// Docker says the object does not exist (removed before it could be read).
    pub fn is_not_found(&self) -> bool {
        matches!(self, DockerError::Api { error, .. } if not_found(error))
    }
}

fn not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Where a container's or image's files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layers {
    /// overlay2: layer directories, top first.
    Dirs(Vec<PathBuf>),
    /// Docker's containerd image store: the snapshot `key` of `snapshotter`, in containerd's
    /// `moby` namespace.
    Snapshot { snapshotter: String, key: String },
}

/// What the agent needs of a container record.
#[derive(Clone, Debug)]
pub struct Container {
    pub id: String,
    /// Without Docker's leading `/`.
    pub name: String,
    /// The image as the container was created from it (`Config.Image`).
    pub image: String,
    /// The image ID (`sha256:…`).
    pub image_id: String,
    pub labels: HashMap<String, String>,
    pub process: Process,
    /// `Config.User` when it names a user rather than numbers: resolved in the image's
    /// /etc/passwd and /etc/group by the caller.
    pub user_name: Option<String>,
    /// Effective capabilities of the first process (Docker's default set, `CapAdd`,
    /// `CapDrop`, `Privileged`).
    pub caps: Caps,
    pub layers: Result<Layers, String>,
    pub history: History,
    /// The init process while it runs.
    pub pid: Option<u32>,
    /// `State.Error`: runc's create-time message when the start was refused.
    pub error: Option<String>,
}

/// What the agent needs of an image record.
#[derive(Clone, Debug)]
pub struct Image {
    /// The image ID (`sha256:…`): the content, however many names it has.
    pub id: String,
    pub architecture: Option<String>,
    pub variant: Option<String>,
    pub process: Process,
    pub layers: Result<Layers, String>,
}

/// A Docker Engine API client.
#[derive(Clone)]
pub struct Client {
    api: bollard::Docker,
    host: String,
    timeout: Duration,
}

impl Client {
    /// Connects to `host` (`unix://…`, `tcp://…`), agrees on an API version and checks the
    /// daemon answers, all within `timeout`. Every later request has the same limit for its
    /// answer to start (an event stream runs for as long as the connection lives).
    pub async fn connect(host: &str, timeout: Duration) -> Result<Client, DockerError> {
        let connect = |error| DockerError::Connect {
            host: host.to_string(),
            error,
        };
        let secs = timeout.as_secs().max(1);
        let api = if let Some(path) = host.strip_prefix("unix://") {
            bollard::Docker::connect_with_unix(path, secs, bollard::API_DEFAULT_VERSION)
        } else {
            bollard::Docker::connect_with_host(host).map(|d| d.with_timeout(timeout))
        }
        .map_err(connect)?;
        let api = bounded("version negotiation", timeout, api.negotiate_version())
            .await?
            .map_err(connect)?;
        bounded("ping", timeout, api.ping())
            .await?
            .map_err(connect)?;
        Ok(Client {
            api,
            host: host.to_string(),
            timeout,
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// The API version agreed on.
    pub fn api_version(&self) -> String {
        self.api.client_version().to_string()
    }

    /// Every container, running or not.
    pub async fn container_ids(&self) -> Result<Vec<String>, DockerError> {
        let opts = ListContainersOptions {
            all: true,
            ..Default::default()
        };
        let list = bounded(
            "list containers",
            self.timeout,
            self.api.list_containers(Some(opts)),
        )
        .await?
        .map_err(api("list containers"))?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }

    /// Every image name (`repo:tag`; the image ID for an image without one).
    pub async fn image_names(&self) -> Result<Vec<String>, DockerError> {
        let list = bounded(
            "list images",
            self.timeout,
            self.api.list_images(Some(ListImagesOptions::default())),
        )
        .await?
        .map_err(api("list images"))?;
        let mut names = Vec::new();
        for i in list {
            let tags: Vec<String> = i
                .repo_tags
                .into_iter()
                .filter(|t| t != "<none>:<none>")
                .collect();
            if tags.is_empty() {
                names.push(i.id);
            } else {
                names.extend(tags);
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Docker's event stream from now on. The answer's headers come at once (Docker
    /// flushes them), so a connection that cannot subscribe fails within the timeout.
    pub fn events(
        &self,
    ) -> impl Stream<Item = Result<EventMessage, bollard::errors::Error>> + Send + 'static {
        self.api.events(None)
    }

    pub async fn container(&self, id: &str) -> Result<Container, DockerError> {
        let c = bounded(
            "inspect container",
            self.timeout,
            self.api.inspect_container(id, None),
        )
        .await?
        .map_err(api("inspect container"))?;
        container_from(c)
    }

    pub async fn image(&self, name: &str) -> Result<Image, DockerError> {
        let i = bounded("inspect image", self.timeout, self.api.inspect_image(name))
            .await?
            .map_err(api("inspect image"))?;
        let id = i.id.ok_or(DockerError::Missing {
            call: "inspect image",
            what: "Id",
        })?;
        let config = i.config.unwrap_or_default();
        let mut argv = config.entrypoint.unwrap_or_default();
        argv.extend(config.cmd.unwrap_or_default());
        let env = config.env.unwrap_or_default();
        Ok(Image {
            id,
            architecture: i.architecture.filter(|a| !a.is_empty()),
            variant: i.variant.filter(|v| !v.is_empty()),
            process: Process {
                argv,
                path_env: path_of(&env),
                cwd: cwd_of(config.working_dir.as_deref()),
                // Images are judged as root: the user an image names is resolved for its
                // containers.
                user: None,
            },
            layers: i
                .graph_driver
                .map(|g| layers_of(&g.name, &g.data, None))
                .unwrap_or(Err(DockerError::Missing {
                    call: "inspect image",
                    what: "GraphDriver",
                }))
                .map_err(|e| e.to_string()),
        })
    }
}

async fn bounded<T>(
    call: &'static str,
    after: Duration,
    f: impl std::future::Future<Output = T>,
) -> Result<T, DockerError> {
    tokio::time::timeout(after, f)
        .await
        .map_err(|_| DockerError::Timeout { call, after })
}

fn api(call: &'static str) -> impl Fn(bollard::errors::Error) -> DockerError {
    move |error| DockerError::Api { call, error }
}

/// The last `PATH=` of an environment: the one the process sees.
fn path_of(env: &[String]) -> Option<String> {
    env.iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH=").map(str::to_string))
}

fn cwd_of(dir: Option<&str>) -> String {
    match dir {
        Some(d) if !d.is_empty() => d.to_string(),
        _ => "/".into(),
    }
}

/// Layer directories from a graph driver's data; `container_id` names the snapshot when the
/// driver is a containerd snapshotter.
fn layers_of(
    driver: &str,
    data: &HashMap<String, String>,
    container_id: Option<&str>,
) -> Result<Layers, DockerError> {
    match driver {
        "overlay2" | "overlay" => {
            let mut dirs: Vec<PathBuf> = Vec::new();
            if let Some(u) = data.get("UpperDir").filter(|u| !u.is_empty()) {
                dirs.push(PathBuf::from(u));
            }
            if let Some(l) = data.get("LowerDir") {
                dirs.extend(l.split(':').filter(|s| !s.is_empty()).map(PathBuf::from));
            }
            if dirs.is_empty() {
                return Err(DockerError::Missing {
                    call: "inspect",
                    what: "GraphDriver.Data.UpperDir/LowerDir",
                });
            }
            Ok(Layers::Dirs(dirs))
        }
        // The containerd image store names the snapshotter; the container's snapshot key
        // is its id.
        "overlayfs" | "native" | "stargz" | "fuse-overlayfs" => match container_id {
            Some(id) => Ok(Layers::Snapshot {
                snapshotter: driver.to_string(),
                key: id.to_string(),
            }),
            None => Err(DockerError::Driver {
                driver: driver.to_string(),
            }),
        },
        other => Err(DockerError::Driver {
            driver: other.to_string(),
        }),
    }
}

/// The file-permission capabilities of a container's root: Docker's default set holds
/// CAP_DAC_OVERRIDE, not CAP_DAC_READ_SEARCH; `--cap-add`, `--cap-drop` and `--privileged`
/// change that.
fn caps_of(host: Option<&bollard::models::HostConfig>) -> Caps {
    let Some(h) = host else {
        return Caps::ALL;
    };
    if h.privileged == Some(true) {
        return Caps::ALL;
    }
    let norm = |s: &str| s.trim_start_matches("CAP_").to_ascii_uppercase();
    let dropped: Vec<String> = h
        .cap_drop
        .iter()
        .flatten()
        .map(|s| norm(s.as_str()))
        .collect();
    let all_dropped = dropped.iter().any(|d| d == "ALL");
    let added: Vec<String> = h
        .cap_add
        .iter()
        .flatten()
        .map(|s| norm(s.as_str()))
        .collect();
    let has = |name: &str, default: bool| {
        added.iter().any(|a| a == name || a == "ALL")
            || (default && !all_dropped && !dropped.iter().any(|d| d == name))
    };
    Caps {
        dac_override: has("DAC_OVERRIDE", true),
        dac_read_search: has("DAC_READ_SEARCH", false),
    }
}

/// Docker's zero time (`0001-01-01T00:00:00Z`) means "never".
fn when(s: Option<&str>) -> Option<DateTime<Utc>> {
    let t = DateTime::parse_from_rfc3339(s?).ok()?.with_timezone(&Utc);
    (t.timestamp() > 0).then_some(t)
}

fn container_from(c: ContainerInspectResponse) -> Result<Container, DockerError> {
    let missing = |what| DockerError::Missing {
        call: "inspect container",
        what,
    };
    let id = c.id.ok_or_else(|| missing("Id"))?;
    let config = c.config.unwrap_or_default();
    let mut argv: Vec<String> = c.path.into_iter().filter(|p| !p.is_empty()).collect();
    argv.extend(c.args.unwrap_or_default());
    let env = config.env.unwrap_or_default();
    let user_spec = config.user.unwrap_or_default();
    let caps = caps_of(c.host_config.as_ref());
    let (user, user_name) = match user_spec.as_str() {
        "" => (None, None),
        s => match Creds::parse(s) {
            Some(ids) => (Some(docker_creds(ids, caps)), None),
            None => (None, Some(s.to_string())),
        },
    };
    let state = c.state.unwrap_or_default();
    let started = when(state.started_at.as_deref());
    let finished = when(state.finished_at.as_deref());
    let error = state.error.filter(|e| !e.is_empty());
    let running = state.running == Some(true);
    let exit_code = u32::try_from(state.exit_code.unwrap_or(0)).unwrap_or(u32::MAX);
    let history = if running {
        History::Running {
            started_at: started,
        }
    } else if error.is_some() && started.is_none() {
        History::StartFailed {
            at: finished,
            exit_code: Some(exit_code),
        }
    } else if started.is_some() {
        History::Exited {
            started_at: started,
            finished_at: finished,
            exit_code,
        }
    } else {
        History::Created
    };
    let layers = c
        .graph_driver
        .map(|g| layers_of(&g.name, &g.data, Some(&id)))
        .unwrap_or_else(|| Err(missing("GraphDriver")))
        .map_err(|e| e.to_string());
    Ok(Container {
        name: c
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        image: config.image.unwrap_or_default(),
        image_id: c.image.unwrap_or_default(),
        labels: config.labels.unwrap_or_default(),
        process: Process {
            argv,
            path_env: path_of(&env),
            cwd: cwd_of(config.working_dir.as_deref()),
            user,
        },
        user_name,
        caps,
        layers,
        history,
        pid: state
            .pid
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| running && *p != 0),
        error,
        id,
    })
}

/// A Docker user's credentials: the ids, and the capabilities Docker leaves it. Root keeps
/// the container's set; any other uid has none, for its first exec as for later ones
/// (Docker sets no ambient capabilities: a non-root user's `permission denied` on a root-only
/// binary is what Engine 20.10 really gives, exit code 126).
pub fn docker_creds(ids: Creds, caps: Caps) -> Creds {
    let caps = if ids.uid == 0 { caps } else { Caps::NONE };
    Creds {
        caps,
        caps_after_exec: caps,
        ..ids
    }
}

/// What one Docker event means to the pipeline, if anything.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// Container events, as containerd's would say them.
    Container(Envelope),
    /// A container started: its init pid is read from the record.
    Started {
        id: String,
        at: Option<DateTime<Utc>>,
    },
    /// An image was pulled, loaded, built, tagged, untagged or removed: the names are
    /// listed again.
    Images,
    /// Not acted on.
    Other,
}

/// Reads one event.
pub fn decode(e: &EventMessage) -> Change {
    let at = e
        .time_nano
        .filter(|n| *n > 0)
        .map(DateTime::from_timestamp_nanos)
        .or_else(|| e.time.and_then(|s| DateTime::from_timestamp(s, 0)));
    let actor = e.actor.clone().unwrap_or_default();
    let id = actor.id.unwrap_or_default();
    let attrs = actor.attributes.unwrap_or_default();
    let action = e.action.as_deref().unwrap_or("");
    let env = |event| {
        Change::Container(Envelope {
            namespace: NAMESPACE.to_string(),
            topic: format!("docker/container/{action}"),
            timestamp: at,
            event,
        })
    };
    match e.typ {
        Some(EventMessageTypeEnum::CONTAINER) if !id.is_empty() => match action {
            "create" => env(Event::ContainerCreate {
                id,
                image: attrs.get("image").cloned().unwrap_or_default(),
            }),
            "start" => Change::Started { id, at },
            "die" => env(Event::TaskExit {
                container_id: id.clone(),
                id,
                pid: 0,
                exit_status: attrs
                    .get("exitCode")
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0),
                exited_at: at,
            }),
            "destroy" => env(Event::ContainerDelete { id }),
            _ => Change::Other,
        },
        Some(EventMessageTypeEnum::IMAGE) => match action {
            "pull" | "load" | "import" | "tag" | "untag" | "delete" | "build" | "create" => {
                Change::Images
            }
            _ => Change::Other,
        },
        _ => Change::Other,
    }
}

/// The `archwatch_containerd_events_total{topic}`-style label of a Docker event.
pub fn topic_label(e: &EventMessage) -> String {
    let typ = match e.typ {
        Some(EventMessageTypeEnum::CONTAINER) => "container",
        Some(EventMessageTypeEnum::IMAGE) => "image",
        Some(_) => "other",
        None => "unknown",
    };
    match (typ, e.action.as_deref()) {
        ("container" | "image", Some(a)) => {
            // `exec_start: sh -c …` and `health_status: healthy` carry details.
            let a = a.split(':').next().unwrap_or(a);
            format!("docker/{typ}/{a}")
        }
        _ => format!("docker/{typ}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::EventActor;

    fn event(
        typ: EventMessageTypeEnum,
        action: &str,
        id: &str,
        attrs: &[(&str, &str)],
    ) -> EventMessage {
        EventMessage {
            typ: Some(typ),
            action: Some(action.into()),
            actor: Some(EventActor {
                id: Some(id.into()),
                attributes: Some(
                    attrs
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
            }),
            scope: None,
            time: Some(1_700_000_000),
            time_nano: Some(1_700_000_000_123_456_789),
        }
    }

    #[test]
    fn container_events_read_as_the_pipeline_knows_them() {
        use EventMessageTypeEnum::CONTAINER;
        let die = decode(&event(
            CONTAINER,
            "die",
            "c1",
            &[("exitCode", "127"), ("name", "web")],
        ));
        let Change::Container(env) = die else {
            panic!("die is a container change: {die:?}")
        };
        assert_eq!(env.namespace, NAMESPACE);
        assert_eq!(
            env.event,
            Event::TaskExit {
                container_id: "c1".into(),
                id: "c1".into(),
                pid: 0,
                exit_status: 127,
                exited_at: env.timestamp,
            }
        );
        assert_eq!(
            env.timestamp.map(|t| t.timestamp_subsec_nanos()),
            Some(123_456_789)
        );
        assert!(matches!(
            decode(&event(CONTAINER, "create", "c1", &[("image", "app:1")])),
            Change::Container(Envelope { event: Event::ContainerCreate { ref id, ref image }, .. }) if id == "c1" && image == "app:1"
        ));
        assert!(matches!(
            decode(&event(CONTAINER, "start", "c1", &[])),
            Change::Started { ref id, at: Some(_) } if id == "c1"
        ));
        assert!(matches!(
            decode(&event(CONTAINER, "destroy", "c1", &[])),
            Change::Container(Envelope { event: Event::ContainerDelete { ref id }, .. }) if id == "c1"
        ));
        assert_eq!(
            decode(&event(CONTAINER, "exec_start: sh -c true", "c1", &[])),
            Change::Other
        );
        assert_eq!(decode(&event(CONTAINER, "die", "", &[])), Change::Other);
        assert_eq!(
            topic_label(&event(CONTAINER, "exec_start: sh -c true", "c1", &[])),
            "docker/container/exec_start"
        );
    }

    #[test]
    fn image_events_relist_names() {
        use EventMessageTypeEnum::IMAGE;
        for a in ["pull", "load", "tag", "untag", "delete", "import"] {
            assert_eq!(
                decode(&event(IMAGE, a, "sha256:ab", &[])),
                Change::Images,
                "{a}"
            );
        }
        assert_eq!(
            decode(&event(IMAGE, "save", "sha256:ab", &[])),
            Change::Other
        );
        assert_eq!(
            decode(&event(EventMessageTypeEnum::NETWORK, "connect", "n", &[])),
            Change::Other
        );
    }

    #[test]
    fn overlay2_layers_are_upper_then_lower_top_first() {
        let data: HashMap<String, String> = [
            ("UpperDir", "/d/overlay2/c/diff"),
            (
                "LowerDir",
                "/d/overlay2/c-init/diff:/d/overlay2/b/diff:/d/overlay2/a/diff",
            ),
            ("MergedDir", "/d/overlay2/c/merged"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            layers_of("overlay2", &data, Some("c")).ok(),
            Some(Layers::Dirs(
                [
                    "/d/overlay2/c/diff",
                    "/d/overlay2/c-init/diff",
                    "/d/overlay2/b/diff",
                    "/d/overlay2/a/diff"
                ]
                .iter()
                .map(PathBuf::from)
                .collect()
            ))
        );
        // A one-layer image has no LowerDir.
        let one: HashMap<String, String> =
            [("UpperDir".to_string(), "/d/a/diff".to_string())].into();
        assert_eq!(
            layers_of("overlay2", &one, None).ok(),
            Some(Layers::Dirs(vec![PathBuf::from("/d/a/diff")]))
        );
        assert_eq!(
            layers_of("overlayfs", &HashMap::new(), Some("c1")).ok(),
            Some(Layers::Snapshot {
                snapshotter: "overlayfs".into(),
                key: "c1".into()
            })
        );
        let vfs = layers_of("vfs", &HashMap::new(), Some("c1")).unwrap_err();
        assert_eq!(vfs.kind(), "snapshotter_unsupported");
        assert!(layers_of("overlay2", &HashMap::new(), None).is_err());
    }

    #[test]
    fn capabilities_follow_docker_defaults_and_host_config() {
        use bollard::models::HostConfig;
        assert_eq!(caps_of(None), Caps::ALL);
        let h = |add: &[&str], drop: &[&str], privileged: bool| HostConfig {
            cap_add: Some(add.iter().map(|s| s.to_string()).collect()),
            cap_drop: Some(drop.iter().map(|s| s.to_string()).collect()),
            privileged: Some(privileged),
            ..Default::default()
        };
        let default = caps_of(Some(&h(&[], &[], false)));
        assert!(default.dac_override && !default.dac_read_search);
        assert_eq!(caps_of(Some(&h(&[], &["ALL"], false))), Caps::NONE);
        assert_eq!(
            caps_of(Some(&h(&["CAP_DAC_READ_SEARCH"], &["DAC_OVERRIDE"], false))),
            Caps {
                dac_override: false,
                dac_read_search: true
            }
        );
        assert_eq!(caps_of(Some(&h(&[], &["ALL"], true))), Caps::ALL);
        let user = docker_creds(Creds::with_ids(1000, 1000, Vec::new()), default);
        assert_eq!((user.caps, user.caps_after_exec), (Caps::NONE, Caps::NONE));
        let root = docker_creds(Creds::root(), default);
        assert!(root.caps.dac_override && root.caps_after_exec.dac_override);
    }

    #[test]
    fn state_reads_as_history() {
        use bollard::models::ContainerState;
        let rec = |state: ContainerState| ContainerInspectResponse {
            id: Some("c1".into()),
            path: Some("/app".into()),
            args: Some(vec!["serve".into()]),
            name: Some("/web".into()),
            state: Some(state),
            ..Default::default()
        };
        let refused = container_from(rec(ContainerState {
            error: Some(
                "OCI runtime create failed: exec: \"/nope\": stat /nope: no such file or directory"
                    .into(),
            ),
            exit_code: Some(127),
            started_at: Some("0001-01-01T00:00:00Z".into()),
            finished_at: Some("2026-11-25T10:00:00.5Z".into()),
            ..Default::default()
        }))
        .unwrap();
        assert!(matches!(
            refused.history,
            History::StartFailed {
                exit_code: Some(127),
                ..
            }
        ));
        assert_eq!(refused.name, "web");
        assert_eq!(refused.process.argv, ["/app", "serve"]);
        assert!(refused.error.is_some());
        let exited = container_from(rec(ContainerState {
            exit_code: Some(1),
            started_at: Some("2026-11-25T10:00:00Z".into()),
            finished_at: Some("2026-11-25T10:00:00.2Z".into()),
            ..Default::default()
        }))
        .unwrap();
        assert!(matches!(
            exited.history,
            History::Exited {
                exit_code: 1,
                started_at: Some(_),
                finished_at: Some(_)
            }
        ));
        let running = container_from(rec(ContainerState {
            running: Some(true),
            pid: Some(4242),
            started_at: Some("2026-11-25T10:00:00Z".into()),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(running.pid, Some(4242));
        assert!(matches!(running.history, History::Running { .. }));
        assert!(matches!(
            container_from(rec(ContainerState::default()))
                .unwrap()
                .history,
            History::Created
        ));
    }
}
