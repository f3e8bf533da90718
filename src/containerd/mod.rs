//! containerd over gRPC: connect, subscribe, list, read blobs, and read-only views of image
//! snapshots. The only things archwatch ever writes to containerd are a lease that expires by
//! itself and a view snapshot under it, both removed after each inspection.

pub mod cri;
pub mod event;
pub mod mounts;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    MountsRequest, RemoveSnapshotRequest, StatSnapshotRequest, ViewSnapshotRequest,
};
use containerd_client::services::v1::{
    containers_client::ContainersClient, content_client::ContentClient,
    events_client::EventsClient, images_client::ImagesClient, leases_client::LeasesClient,
    namespaces_client::NamespacesClient, tasks_client::TasksClient, Container, GetContainerRequest,
    GetImageRequest, Image, ListContainersRequest, ListImagesRequest, ListNamespacesRequest,
    ListTasksRequest, ReadContentRequest, SubscribeRequest,
};
use containerd_client::services::v1::{CreateRequest as LeaseCreate, DeleteRequest as LeaseDelete};
use containerd_client::types::v1::Process;
use containerd_client::types::Mount;
use futures::StreamExt;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::Request;

use crate::image::{self, Doc, MAX_DOC_BYTES};
use crate::platform::Node;
use crate::variant::{self, Variant};

/// How long a view's lease lives if the agent dies before removing it (default).
pub const LEASE_TTL: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("cannot connect to containerd at {address}: {source}")]
    Connect {
        address: String,
        source: tonic::transport::Error,
    },
    #[error("containerd {call}: {status}")]
    Rpc {
        call: &'static str,
        status: Box<tonic::Status>,
    },
    #[error("containerd returned no {0}")]
    Missing(&'static str),
    #[error("blob {digest} is larger than {MAX_DOC_BYTES} bytes")]
    TooLarge { digest: String },
    #[error(transparent)]
    Image(#[from] image::ImageError),
    #[error(transparent)]
    Mount(#[from] mounts::MountError),
    #[error("image {image} has no manifest for {platform} (index lists {listed})")]
    NoPlatform {
        image: String,
        platform: String,
        listed: String,
    },
    #[error("container spec: {0}")]
    Spec(String),
}

impl ContainerdError {
    pub fn kind(&self) -> &'static str {
        match self {
            ContainerdError::Connect { .. } => "containerd_connect",
            ContainerdError::Rpc { status, .. } if status.code() == tonic::Code::NotFound => {
                "not_found"
            }
            ContainerdError::Rpc { .. } => "containerd_rpc",
            ContainerdError::Missing(_) => "containerd_missing",
            ContainerdError::TooLarge { .. } => "image_too_large",
            ContainerdError::Image(e) => e.kind(),
            ContainerdError::Mount(e) => e.kind(),
            ContainerdError::NoPlatform { .. } => "index_lacks_node_platform",
            ContainerdError::Spec(_) => "spec_malformed",
        }
    }
    /// The object is gone (deleted between event and lookup, or not unpacked yet).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ContainerdError::Rpc { status, .. } if status.code() == tonic::Code::NotFound)
    }
}

fn rpc(call: &'static str) -> impl FnOnce(tonic::Status) -> ContainerdError {
    move |status| ContainerdError::Rpc {
        call,
        status: Box::new(status),
    }
}

fn req<T>(msg: T, ns: &str) -> Request<T> {
    let mut r = Request::new(msg);
    if let Ok(v) = MetadataValue::try_from(ns) {
        r.metadata_mut().insert("containerd-namespace", v);
    }
    r
}

/// A connection to containerd. Cheap to clone (the channel multiplexes).
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    lease_ttl: Duration,
}

/// An image resolved for the node.
#[derive(Clone, Debug)]
pub struct ImageTarget {
    pub name: String,
    /// Digest of the image's target (index or manifest): what the node pulled.
    pub target_digest: String,
    pub manifest_digest: String,
    /// Platforms the index lists (empty for a single manifest).
    pub index_platforms: Vec<String>,
    pub config: image::Config,
}

/// Where a container's layers come from, as the node's content store has it.
#[derive(Clone, Debug, Default)]
pub struct Origin {
    /// The image's target: an index, or a single manifest.
    pub target_digest: String,
    /// The index's manifests (attestations aside) with their chain IDs; empty for a single
    /// manifest.
    pub manifests: Vec<variant::Manifest>,
    /// The config of the manifest whose layers the container runs on.
    pub config: Option<image::Config>,
}

impl Origin {
    /// What the node's content says about the variant the layers `parent` of image `name`
    /// are: `Forced` when they are another platform than the node's own of an index that
    /// holds it. (A single manifest is asked about with [`Client::stale`].)
    pub fn forced(&self, name: &str, parent: &str, node: &Node) -> Option<Variant> {
        variant::forced(name, &self.target_digest, &self.manifests, parent, node)
    }
}

/// A read-only view of an image's top snapshot, under its own expiring lease.
pub struct View {
    pub layers: Vec<PathBuf>,
    key: String,
    lease: String,
    snapshotter: String,
    namespace: String,
}

impl Client {
    pub async fn connect(address: &Path, timeout: Duration) -> Result<Client, ContainerdError> {
        let connect = containerd_client::connect(address);
        let channel = match tokio::time::timeout(timeout, connect).await {
            Ok(r) => r.map_err(|source| ContainerdError::Connect {
                address: address.display().to_string(),
                source,
            })?,
            Err(_) => {
                return Err(ContainerdError::Rpc {
                    call: "connect",
                    status: Box::new(tonic::Status::deadline_exceeded("connect timed out")),
                })
            }
        };
        Ok(Client {
            channel,
            lease_ttl: LEASE_TTL,
        })
    }

    /// Views taken from now on expire this long after they are opened, should the process
    /// die before removing them.
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Client {
        self.lease_ttl = ttl;
        self
    }

    /// Subscribes to every event of every namespace.
    pub async fn subscribe(
        &self,
    ) -> Result<tonic::Streaming<containerd_client::types::Envelope>, ContainerdError> {
        let mut c = EventsClient::new(self.channel.clone());
        let r = c
            .subscribe(SubscribeRequest {
                filters: Vec::new(),
            })
            .await
            .map_err(rpc("Events.Subscribe"))?;
        Ok(r.into_inner())
    }

    pub async fn namespaces(&self) -> Result<Vec<String>, ContainerdError> {
        let mut c = NamespacesClient::new(self.channel.clone());
        let r = c
            .list(ListNamespacesRequest {
                filter: String::new(),
            })
            .await
            .map_err(rpc("Namespaces.List"))?;
        Ok(r.into_inner()
            .namespaces
            .into_iter()
            .map(|n| n.name)
            .collect())
    }

    pub async fn images(&self, ns: &str) -> Result<Vec<Image>, ContainerdError> {
        let mut c = ImagesClient::new(self.channel.clone());
        let r = c
            .list(req(
                ListImagesRequest {
                    filters: Vec::new(),
                },
                ns,
            ))
            .await
            .map_err(rpc("Images.List"))?;
        Ok(r.into_inner().images)
    }

    pub async fn image(&self, ns: &str, name: &str) -> Result<Image, ContainerdError> {
        let mut c = ImagesClient::new(self.channel.clone());
        let r = c
            .get(req(GetImageRequest { name: name.into() }, ns))
            .await
            .map_err(rpc("Images.Get"))?;
        r.into_inner()
            .image
            .ok_or(ContainerdError::Missing("image"))
    }

    pub async fn containers(&self, ns: &str) -> Result<Vec<Container>, ContainerdError> {
        let mut c = ContainersClient::new(self.channel.clone());
        let r = c
            .list(req(
                ListContainersRequest {
                    filters: Vec::new(),
                },
                ns,
            ))
            .await
            .map_err(rpc("Containers.List"))?;
        Ok(r.into_inner().containers)
    }

    pub async fn container(&self, ns: &str, id: &str) -> Result<Container, ContainerdError> {
        let mut c = ContainersClient::new(self.channel.clone());
        let r = c
            .get(req(GetContainerRequest { id: id.into() }, ns))
            .await
            .map_err(rpc("Containers.Get"))?;
        r.into_inner()
            .container
            .ok_or(ContainerdError::Missing("container"))
    }

    pub async fn tasks(&self, ns: &str) -> Result<Vec<Process>, ContainerdError> {
        let mut c = TasksClient::new(self.channel.clone());
        let r = c
            .list(req(
                ListTasksRequest {
                    filter: String::new(),
                },
                ns,
            ))
            .await
            .map_err(rpc("Tasks.List"))?;
        Ok(r.into_inner().tasks)
    }

    /// Reads a whole blob of at most [`MAX_DOC_BYTES`].
    pub async fn blob(&self, ns: &str, digest: &str) -> Result<Vec<u8>, ContainerdError> {
        let mut c = ContentClient::new(self.channel.clone());
        let mut s = c
            .read(req(
                ReadContentRequest {
                    digest: digest.into(),
                    offset: 0,
                    size: 0,
                },
                ns,
            ))
            .await
            .map_err(rpc("Content.Read"))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = s.next().await {
            let chunk = chunk.map_err(rpc("Content.Read"))?;
            out.extend_from_slice(&chunk.data);
            if out.len() > MAX_DOC_BYTES {
                return Err(ContainerdError::TooLarge {
                    digest: digest.into(),
                });
            }
        }
        Ok(out)
    }

    /// index → manifest for `node` → config.
    pub async fn resolve_image(
        &self,
        ns: &str,
        name: &str,
        node: &Node,
    ) -> Result<ImageTarget, ContainerdError> {
        let img = self.image(ns, name).await?;
        let target = img.target.ok_or(ContainerdError::Missing("image target"))?;
        let mut digest = target.digest.clone();
        let mut index_platforms = Vec::new();
        // At most two levels (index → manifest); nested indexes are followed once more.
        for _ in 0..3 {
            let bytes = self.blob(ns, &digest).await?;
            match image::parse_doc(&bytes)? {
                Doc::Index(entries) => {
                    index_platforms = entries.iter().map(|e| e.platform()).collect();
                    let chosen =
                        image::pick(&entries, node).ok_or_else(|| ContainerdError::NoPlatform {
                            image: name.into(),
                            platform: format!("linux/{}", node.arch),
                            listed: index_platforms.join(", "),
                        })?;
                    digest = chosen.desc.digest.clone();
                }
                Doc::Manifest { config, .. } => {
                    let cfg = image::parse_config(&self.blob(ns, &config.digest).await?)?;
                    return Ok(ImageTarget {
                        name: name.into(),
                        target_digest: target.digest,
                        manifest_digest: digest,
                        index_platforms,
                        config: cfg,
                    });
                }
            }
        }
        Err(ContainerdError::Missing(
            "manifest (indexes nested too deep)",
        ))
    }

    /// Takes a read-only view of snapshot `parent` (an image's chain ID) under a lease that
    /// expires by itself. Never mounts: the caller reads the returned layer directories.
    pub async fn open_view(
        &self,
        ns: &str,
        snapshotter: &str,
        parent: &str,
    ) -> Result<View, ContainerdError> {
        let suffix: u64 = rand::random();
        let lease_id = format!("archwatch-{suffix:016x}");
        let ttl =
            chrono::Duration::from_std(self.lease_ttl).unwrap_or(chrono::Duration::minutes(10));
        let expire = (Utc::now() + ttl).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut leases = LeasesClient::new(self.channel.clone());
        let labels = HashMap::from([("containerd.io/gc.expire".to_string(), expire)]);
        leases
            .create(req(
                LeaseCreate {
                    id: lease_id.clone(),
                    labels,
                },
                ns,
            ))
            .await
            .map_err(rpc("Leases.Create"))?;
        let mut view = View {
            layers: Vec::new(),
            key: format!("archwatch-view-{suffix:016x}"),
            lease: lease_id.clone(),
            snapshotter: snapshotter.into(),
            namespace: ns.into(),
        };
        let mut snaps = SnapshotsClient::new(self.channel.clone());
        let mut r = req(
            ViewSnapshotRequest {
                snapshotter: snapshotter.into(),
                key: view.key.clone(),
                parent: parent.into(),
                labels: HashMap::new(),
            },
            ns,
        );
        if let Ok(v) = MetadataValue::try_from(lease_id.as_str()) {
            r.metadata_mut().insert("containerd-lease", v);
        }
        let mounts = match snaps.view(r).await {
            Ok(m) => m.into_inner().mounts,
            Err(status) => {
                self.close_view(view).await;
                return Err(ContainerdError::Rpc {
                    call: "Snapshots.View",
                    status: Box::new(status),
                });
            }
        };
        match mounts::layers(&mounts) {
            Ok(l) => {
                view.layers = l;
                Ok(view)
            }
            Err(e) => {
                self.close_view(view).await;
                Err(e.into())
            }
        }
    }

    /// Removes the view and its lease. Best effort: the lease expires anyway.
    pub async fn close_view(&self, view: View) {
        let mut snaps = SnapshotsClient::new(self.channel.clone());
        let r = snaps
            .remove(req(
                RemoveSnapshotRequest {
                    snapshotter: view.snapshotter.clone(),
                    key: view.key.clone(),
                },
                &view.namespace,
            ))
            .await;
        if let Err(e) = r {
            if e.code() != tonic::Code::NotFound {
                tracing::debug!(key = %view.key, error = %e, "View removal failed; its lease expires it.");
            }
        }
        let mut leases = LeasesClient::new(self.channel.clone());
        if let Err(e) = leases
            .delete(req(
                LeaseDelete {
                    id: view.lease.clone(),
                    sync: false,
                },
                &view.namespace,
            ))
            .await
        {
            tracing::debug!(lease = %view.lease, error = %e, "Lease removal failed; it expires by itself.");
        }
    }

    /// The parent of a snapshot: for a container's rootfs, the chain ID of the image layers
    /// it was made from (`None` for a snapshot without a parent).
    pub async fn snapshot_parent(
        &self,
        ns: &str,
        snapshotter: &str,
        key: &str,
    ) -> Result<Option<String>, ContainerdError> {
        let mut snaps = SnapshotsClient::new(self.channel.clone());
        let r = snaps
            .stat(req(
                StatSnapshotRequest {
                    snapshotter: snapshotter.into(),
                    key: key.into(),
                },
                ns,
            ))
            .await
            .map_err(rpc("Snapshots.Stat"))?;
        Ok(r.into_inner()
            .info
            .map(|i| i.parent)
            .filter(|p| !p.is_empty()))
    }

    /// A manifest's config, when the manifest and its config are here.
    async fn manifest_config(&self, ns: &str, digest: &str) -> Option<image::Config> {
        let Doc::Manifest { config, .. } =
            image::parse_doc(&self.blob(ns, digest).await.ok()?).ok()?
        else {
            return None;
        };
        image::parse_config(&self.blob(ns, &config.digest).await.ok()?).ok()
    }

    /// Where the layers `parent` (a container snapshot's parent) of image `name` come from:
    /// the image's target, the manifests of its index with their chain IDs, and the config
    /// of the manifest whose layers they are (what that variant claims to be).
    pub async fn origin(
        &self,
        ns: &str,
        name: &str,
        parent: &str,
    ) -> Result<Origin, ContainerdError> {
        let img = self.image(ns, name).await?;
        let target = img.target.ok_or(ContainerdError::Missing("image target"))?;
        let mut origin = Origin {
            target_digest: target.digest.clone(),
            manifests: Vec::new(),
            config: None,
        };
        match image::parse_doc(&self.blob(ns, &target.digest).await?)? {
            Doc::Index(entries) => {
                for entry in entries
                    .into_iter()
                    .filter(|e| e.os != "unknown")
                    .take(variant::MANIFESTS_MAX)
                {
                    let config = self.manifest_config(ns, &entry.desc.digest).await;
                    let chain_id = config.as_ref().and_then(|c| c.chain_id());
                    if origin.config.is_none() && chain_id.as_deref() == Some(parent) {
                        origin.config = config;
                    }
                    origin.manifests.push(variant::Manifest { entry, chain_id });
                }
            }
            Doc::Manifest { config, .. } => {
                let config = image::parse_config(&self.blob(ns, &config.digest).await?)?;
                // The name may point elsewhere now than when the container was made.
                if config.chain_id().as_deref() == Some(parent) {
                    origin.config = Some(config);
                }
            }
        }
        Ok(origin)
    }

    /// Whether image `name`, which resolves to the single manifest `manifest`, is a stale
    /// copy: an index of the same repository on the node lists that manifest beside another
    /// variant for the node. See [`crate::variant`].
    pub async fn stale(
        &self,
        ns: &str,
        name: &str,
        manifest: &str,
        node: &Node,
    ) -> Result<Option<Variant>, ContainerdError> {
        let repo = variant::repository(name);
        let mut indexes: Vec<variant::Index> = Vec::new();
        for other in self.images(ns).await? {
            if indexes.len() >= variant::INDEXES_MAX {
                break;
            }
            let Some(t) = other.target.filter(|t| variant::is_index(&t.media_type)) else {
                continue;
            };
            if other.name == name
                || variant::repository(&other.name) != repo
                || indexes.iter().any(|i| i.digest == t.digest)
            {
                continue;
            }
            let Ok(bytes) = self.blob(ns, &t.digest).await else {
                continue;
            };
            if let Ok(Doc::Index(entries)) = image::parse_doc(&bytes) {
                indexes.push(variant::Index {
                    name: other.name,
                    digest: t.digest,
                    entries,
                });
            }
        }
        Ok(variant::stale(name, manifest, &indexes, node))
    }

    /// Layer directories of an existing snapshot (a container's rootfs).
    pub async fn snapshot_layers(
        &self,
        ns: &str,
        snapshotter: &str,
        key: &str,
    ) -> Result<Vec<PathBuf>, ContainerdError> {
        let mut snaps = SnapshotsClient::new(self.channel.clone());
        let r = snaps
            .mounts(req(
                MountsRequest {
                    snapshotter: snapshotter.into(),
                    key: key.into(),
                },
                ns,
            ))
            .await
            .map_err(rpc("Snapshots.Mounts"))?;
        Ok(mounts::layers(&r.into_inner().mounts)?)
    }
}

/// The process a container will start, from its OCI runtime spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecProcess {
    pub args: Vec<String>,
    pub path_env: Option<String>,
    pub cwd: String,
    /// `process.user` with the capabilities that decide file permissions.
    pub user: crate::rootfs::Creds,
}

/// The few fields of an OCI runtime spec the agent reads. Only these are parsed: a field the
/// agent does not need (a seccomp action or architecture newer than any crate knows, a
/// runtime's own extension) never makes a container unjudgeable.
#[derive(serde::Deserialize)]
struct SpecDoc {
    process: Option<ProcessDoc>,
}

#[derive(serde::Deserialize)]
struct ProcessDoc {
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    cwd: String,
    #[serde(default)]
    user: UserDoc,
    #[serde(default)]
    capabilities: Option<CapsDoc>,
}

#[derive(Default, serde::Deserialize)]
struct UserDoc {
    #[serde(default)]
    uid: u32,
    #[serde(default)]
    gid: u32,
    #[serde(default, rename = "additionalGids")]
    additional_gids: Vec<u32>,
}

#[derive(Default, serde::Deserialize)]
struct CapsDoc {
    #[serde(default)]
    effective: Vec<String>,
    #[serde(default)]
    bounding: Vec<String>,
    #[serde(default)]
    ambient: Vec<String>,
}

/// Reads `process.args`, PATH (the last `PATH=` of `process.env`, which is the one the
/// process sees), cwd, user and capabilities from the container's runtime spec (JSON in an
/// Any).
pub fn spec_process(c: &Container) -> Result<SpecProcess, ContainerdError> {
    let any = c
        .spec
        .as_ref()
        .ok_or(ContainerdError::Missing("container spec"))?;
    parse_spec_process(&any.value)
}

/// [`spec_process`] over the spec's JSON.
pub fn parse_spec_process(json: &[u8]) -> Result<SpecProcess, ContainerdError> {
    let spec: SpecDoc =
        serde_json::from_slice(json).map_err(|e| ContainerdError::Spec(e.to_string()))?;
    let p = spec
        .process
        .ok_or(ContainerdError::Spec("no process".into()))?;
    let caps = p.capabilities.unwrap_or_default();
    let names = |v: &[String]| crate::rootfs::Caps::from_names(v.iter().map(String::as_str));
    let effective = names(&caps.effective);
    // After the container's first exec: uid 0 keeps its bounding set, any other uid only its
    // ambient set (capabilities(7)).
    let after_exec = if p.user.uid == 0 {
        names(&caps.bounding)
    } else {
        names(&caps.ambient)
    };
    Ok(SpecProcess {
        args: p.args,
        path_env: p
            .env
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix("PATH=").map(str::to_string)),
        cwd: if p.cwd.is_empty() { "/".into() } else { p.cwd },
        user: crate::rootfs::Creds {
            uid: p.user.uid,
            gid: p.user.gid,
            groups: p.user.additional_gids,
            caps: effective,
            caps_after_exec: after_exec,
        },
    })
}

/// Whether a CRI container is a pod sandbox (the pause container), which is never diagnosed.
pub fn is_sandbox(c: &Container) -> bool {
    c.labels.get("io.cri-containerd.kind").map(String::as_str) == Some("sandbox")
}

/// Layer directories for a container: the mounts in its `/tasks/create` payload when given,
/// else its snapshot's.
pub fn mounts_layers(m: &[Mount]) -> Result<Vec<PathBuf>, ContainerdError> {
    Ok(mounts::layers(m)?)
}

#[cfg(test)]
mod spec_tests {
    use super::*;

    #[test]
    fn only_the_fields_the_agent_needs_are_read() {
        // A spec from a newer runtime: a seccomp action and architecture no crate knows, a
        // field from the future. The process is still read.
        let spec = br#"{
            "ociVersion": "1.2.1",
            "process": {
                "user": {"uid": 1000, "gid": 3000, "additionalGids": [2000, 4000], "umask": 18},
                "args": ["/docker-entrypoint.sh", "app"],
                "env": ["PATH=/first", "HOME=/", "PATH=/usr/local/bin:/usr/bin"],
                "cwd": "/srv",
                "capabilities": {
                    "bounding": ["CAP_CHOWN", "CAP_DAC_OVERRIDE"],
                    "effective": ["CAP_DAC_OVERRIDE"],
                    "ambient": []
                },
                "ioPriority": {"class": "IOPRIO_CLASS_FUTURE", "priority": 4}
            },
            "linux": {
                "seccomp": {
                    "defaultAction": "SCMP_ACT_KILL_THREAD_SOMEDAY",
                    "architectures": ["SCMP_ARCH_RISCV128"],
                    "syscalls": [{"names": ["personality"], "action": "SCMP_ACT_NOTIFY_LATER"}]
                },
                "netDevices": {"eth9": {}}
            }
        }"#;
        let p = parse_spec_process(spec).expect("judgeable");
        assert_eq!(p.args, vec!["/docker-entrypoint.sh", "app"]);
        // runc (and every libc) give the process the last PATH=.
        assert_eq!(p.path_env.as_deref(), Some("/usr/local/bin:/usr/bin"));
        assert_eq!(p.cwd, "/srv");
        assert_eq!((p.user.uid, p.user.gid), (1000, 3000));
        assert_eq!(p.user.groups, vec![2000, 4000]);
        assert!(p.user.caps.dac_override);
        // A non-root uid keeps only its ambient set across an exec.
        assert!(!p.user.caps_after_exec.dac_override);
        // The crate's full parse refuses this spec: the reason to read only what is needed.
        assert!(serde_json::from_slice::<oci_spec::runtime::Spec>(spec).is_err());

        let root = parse_spec_process(
            br#"{"process": {"args": ["/app"], "cwd": "/",
            "capabilities": {"bounding": ["CAP_DAC_OVERRIDE"], "effective": []}}}"#,
        )
        .expect("root");
        assert_eq!(root.user.uid, 0);
        assert!(root.user.caps_after_exec.dac_override);
        assert!(parse_spec_process(br#"{"ociVersion": "1.0.0"}"#).is_err());
    }
}
