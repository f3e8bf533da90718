//! The jobs the pipeline runs off its loop, and what bounds them: reading a container's
//! record, inspecting a container's files, resolving, viewing and inspecting an image.
//!
//! Bounded: at most [`INSPECTIONS`] inspections hold views and open files at once (images
//! at most [`IMAGE_INSPECTIONS`] of them), at most [`LOOKUPS`] containerd lookups run at
//! once, and each inspection has a time budget. One bad image never stalls the rest.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use super::Lookup;
use crate::binfmt::Table;
use crate::containerd::{self, Client, ContainerdError};
use crate::diagnose::Identity;
use crate::inspect::{self, Finding, Inspection, Request, Verdict};
use crate::pipeline::{CacheKey, History, Key, Process};
use crate::platform::Node;
use crate::rootfs::Rootfs;
use crate::sinks::metrics::{self, Metrics};

/// What a job reports back.
pub(super) enum Done {
    Identified {
        key: Key,
        who: Box<Identity>,
        process: Process,
        cache_key: Option<CacheKey>,
        layers: Vec<PathBuf>,
        /// Asked at reconcile for a container without a task: what the runtime remembers.
        history: Option<History>,
        from: FromImage,
    },
    Sandbox(Key),
    ContainerInspected {
        key: Key,
        cache_key: Option<CacheKey>,
        result: Result<Arc<Inspection>, InspectFailure>,
    },
    /// A container's job ended without an answer (it panicked).
    Lost(Key),
    /// What the runtime's state says of a container that never got a task (`None`: it
    /// could not be read).
    Asked {
        key: Key,
        history: Option<History>,
    },
    /// An image name resolved to its target digest (`None`: gone or unreadable).
    ImageNamed {
        ns: String,
        name: String,
        digest: Option<String>,
        /// The target is an index (a multi-arch image).
        index: bool,
    },
    /// The inspection of `expected` (through `name`) ended.
    Image {
        ns: String,
        name: String,
        expected: String,
        outcome: ImageOutcome,
    },
}

/// Where a container's files come from: its image's name and the layers its snapshot was
/// made on (which variant of a multi-platform image it runs).
#[derive(Clone, Debug, Default)]
pub(super) struct FromImage {
    pub(super) image: String,
    /// The parent of the container's snapshot: the chain ID of the image layers.
    pub(super) parent: Option<String>,
    /// The architecture the image's config claims, when the runtime's record says it (a
    /// containerd container's is read from the variant it runs).
    pub(super) claimed: Option<crate::platform::Arch>,
}

/// Why a container or image could not be inspected.
#[derive(Debug)]
pub(super) struct InspectFailure {
    /// A code of `archwatch_inspection_errors_total{kind}`.
    pub(super) kind: &'static str,
    pub(super) detail: String,
    /// containerd could not say (record, spec or snapshot unreadable), as opposed to files
    /// that could not be read: the next reconcile judges the container again.
    pub(super) retry: bool,
}

impl InspectFailure {
    fn lookup(e: &ContainerdError) -> InspectFailure {
        InspectFailure {
            kind: e.kind(),
            detail: e.to_string(),
            retry: true,
        }
    }
}

/// How many inspections (a container's files, or an image: its view and files) run at
/// once: each holds open files (layer directories, the file it reads) and a blocking
/// thread, so a reconcile of a thousand images or a binfmt change that judges them all
/// again stays within a fixed number of open files. Images take at most
/// [`IMAGE_INSPECTIONS`] of them, so a failing container is never queued behind every
/// image on the node.
pub(super) const INSPECTIONS: usize = 4;
pub(super) const IMAGE_INSPECTIONS: usize = 3;
/// How many containerd lookups for containers (record, snapshot mounts, image) and image
/// names run at once.
pub(super) const LOOKUPS: usize = 16;

/// The semaphores that bound the jobs.
#[derive(Clone)]
pub(super) struct Bounds {
    inspections: Arc<Semaphore>,
    images: Arc<Semaphore>,
    lookups: Arc<Semaphore>,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            inspections: Arc::new(Semaphore::new(INSPECTIONS)),
            images: Arc::new(Semaphore::new(IMAGE_INSPECTIONS)),
            lookups: Arc::new(Semaphore::new(LOOKUPS)),
        }
    }
}

/// Held while a job works; dropping it lets the next one start. (The semaphores are never
/// closed, so acquiring cannot fail.)
pub(super) struct Permit {
    _held: Vec<OwnedSemaphorePermit>,
}

impl Bounds {
    pub(super) async fn container(&self) -> Permit {
        let any = self.inspections.clone().acquire_owned().await.ok();
        Permit {
            _held: any.into_iter().collect(),
        }
    }

    pub(super) async fn image(&self) -> Permit {
        let image = self.images.clone().acquire_owned().await.ok();
        let any = self.inspections.clone().acquire_owned().await.ok();
        Permit {
            _held: image.into_iter().chain(any).collect(),
        }
    }

    pub(super) async fn lookup(&self) -> Permit {
        let one = self.lookups.clone().acquire_owned().await.ok();
        Permit {
            _held: one.into_iter().collect(),
        }
    }
}

pub(super) enum ImageOutcome {
    Verdict {
        digest: String,
        inspection: Arc<Inspection>,
    },
    Failed,
}

/// Reads a container's record (unless given), its spec, its layers and who it is.
pub(super) async fn identify_job(
    client: &Lookup,
    key: Key,
    record: Option<containerd_client::services::v1::Container>,
    rootfs: Option<Vec<containerd_client::types::Mount>>,
    ask_history: bool,
    errors: &Family<metrics::KindLabels, Counter>,
) -> Done {
    let count = |e: &ContainerdError| {
        errors
            .get_or_create(&metrics::KindLabels {
                kind: e.kind().into(),
            })
            .inc();
    };
    let c = match record {
        Some(c) => c,
        None => match client.container(&key.namespace, &key.id).await {
            Ok(c) => c,
            Err(e) => {
                count(&e);
                debug!(container = %key.id, error = %e, "Container record unreadable.");
                return Done::ContainerInspected {
                    key,
                    cache_key: None,
                    result: Err(InspectFailure::lookup(&e)),
                };
            }
        },
    };
    if containerd::is_sandbox(&c) {
        return Done::Sandbox(key);
    }
    let fail = |e: ContainerdError| {
        count(&e);
        warn!(container = %c.id, error = %e, "Container cannot be inspected.");
        Err(InspectFailure::lookup(&e))
    };
    let spec = match containerd::spec_process(&c) {
        Ok(s) => s,
        Err(e) => {
            return Done::ContainerInspected {
                key,
                cache_key: None,
                result: fail(e),
            };
        }
    };
    let layers = match rootfs.filter(|m| !m.is_empty()) {
        Some(m) => containerd::mounts_layers(&m),
        None => {
            client
                .snapshot_layers(&key.namespace, &c.snapshotter, &c.snapshot_key)
                .await
        }
    };
    let layers = match layers {
        Ok(l) => l,
        Err(e) => {
            return Done::ContainerInspected {
                key,
                cache_key: None,
                result: fail(e),
            };
        }
    };
    let digest = client.image_digest(&key.namespace, &c.image).await;
    let parent = client
        .snapshot_parent(&key.namespace, &c.snapshotter, &c.snapshot_key)
        .await;
    let history = if ask_history && containerd::cri::is_cri_container(&c) {
        client.cri_history(&key.namespace, &key.id).await
    } else {
        None
    };
    let meta = containerd::cri::metadata(&c);
    let label = |k: &str| c.labels.get(k).cloned();
    let who = Identity {
        containerd_namespace: key.namespace.clone(),
        container_id: key.id.clone(),
        pod: label("io.kubernetes.pod.name"),
        pod_namespace: label("io.kubernetes.pod.namespace"),
        pod_uid: label("io.kubernetes.pod.uid"),
        container: label("io.kubernetes.container.name"),
        image: c.image.clone(),
        image_digest: digest.clone(),
        container_type: meta.container_type,
        attempt: meta.attempt,
        ..Identity::default()
    };
    let process = Process {
        argv: spec.args,
        path_env: spec.path_env,
        cwd: spec.cwd,
        user: Some(spec.user),
    };
    // Same image content + same layers + same process = same verdict. The layers matter: the
    // containers of one multi-platform image may run different variants of it (a forced
    // platform). Without a digest, the snapshot key names the content.
    let content = match (digest, &parent) {
        (Some(d), Some(p)) => format!("{d}/{p}"),
        (Some(d), None) => d,
        (None, _) => format!("{}/{}", c.snapshotter, c.snapshot_key),
    };
    let cache_key = Some(process.cache_key(&content));
    Done::Identified {
        key,
        who: Box::new(who),
        process,
        cache_key,
        layers,
        history,
        from: FromImage {
            image: c.image.clone(),
            parent,
            claimed: None,
        },
    }
}

/// What an image inspection needs besides the client and the name.
pub(super) struct ImageJob {
    pub(super) node: Node,
    /// Read when the inspection starts, not when it was queued.
    pub(super) binfmt: watch::Receiver<Arc<Table>>,
    pub(super) timeout: Duration,
    pub(super) snapshotter: String,
    pub(super) metrics: Metrics,
    pub(super) bounds: Bounds,
}

impl ImageJob {
    /// Resolves `name` for the node, views its snapshot and inspects it.
    pub(super) async fn run(self, client: &Client, ns: &str, name: &str) -> ImageOutcome {
        let node = &self.node;
        let m = &self.metrics;
        let count = |kind: &str| {
            m.inspection_errors
                .get_or_create(&metrics::KindLabels { kind: kind.into() })
                .inc()
        };
        let resolved = {
            let _lookup = self.bounds.lookup().await;
            client.resolve_image(ns, name, node).await
        };
        let target = match resolved {
            Ok(t) => t,
            Err(e @ ContainerdError::NoPlatform { .. }) => {
                let mut inspection = Inspection {
                verdict: Verdict::ArchMismatch,
                cause: format!("{e}: this node cannot pull or run it"),
                fix: format!("Publish the image as a multi-arch index that includes linux/{} (docker buildx build --platform ...).", node.arch),
                fix_code: crate::fix::FixCode::None,
                symptom: Verdict::ArchMismatch.symptom(),
                argv: Vec::new(),
                node_arch: node.arch,
                binary_arch: None,
                handler: None,
                chain: Vec::new(),
                findings: vec![Finding { code: "index_lacks_node_platform", detail: e.to_string() }],
                bytes_read: 0,
                suspects: Vec::new(),
            };
                crate::fix::settle(&mut inspection);
                let digest = client
                    .image(ns, name)
                    .await
                    .ok()
                    .and_then(|i| i.target)
                    .map(|t| t.digest)
                    .unwrap_or_default();
                return ImageOutcome::Verdict {
                    digest,
                    inspection: Arc::new(inspection),
                };
            }
            Err(e) => {
                count(e.kind());
                debug!(image = name, error = %e, "Image cannot be resolved.");
                return ImageOutcome::Failed;
            }
        };
        let Some(chain) = target.config.chain_id() else {
            count("image_no_layers");
            return ImageOutcome::Failed;
        };
        // From the view to its removal, the job holds a view in containerd and open files: at
        // most a few such jobs run at once.
        let mut permit = self.bounds.image().await;
        // /images/create comes before the unpack: wait for the snapshot to exist.
        let mut delay = Duration::from_millis(200);
        let view = loop {
            match client.open_view(ns, &self.snapshotter, &chain).await {
                Ok(v) => break v,
                Err(e) if e.is_not_found() && delay < Duration::from_secs(30) => {
                    // Waiting holds no permit: another inspection goes meanwhile.
                    drop(permit);
                    tokio::time::sleep(delay).await;
                    permit = self.bounds.image().await;
                    delay *= 2;
                }
                Err(e) => {
                    count(e.kind());
                    debug!(image = name, error = %e, "Image snapshot cannot be viewed.");
                    return ImageOutcome::Failed;
                }
            }
        };
        let process = Process {
            argv: target.config.argv(),
            path_env: target.config.path_env(),
            cwd: target.config.cwd(),
            user: None,
        };
        let mut findings = Vec::new();
        let config_arch = target.config.arch();
        if target.index_platforms.is_empty()
            && config_arch.is_some_and(|a| node.nativity(a) != crate::platform::Nativity::Native)
        {
            findings.push(Finding {
            code: "single_arch_image",
            detail: format!(
                "{name} points to a single linux/{} image, not a multi-arch index; deploy by the digest of an index that includes linux/{}",
                config_arch.map(|a| a.to_string()).unwrap_or_default(),
                node.arch
            ),
        });
        }
        let claimed = target.config.arch();
        // The table as it is when the inspection starts, not when it was queued.
        let table = self.binfmt.borrow().clone();
        let result = inspect_off_runtime(
            view.layers.clone(),
            process,
            claimed,
            node.clone(),
            table,
            self.timeout,
            m,
            "image",
        )
        .await;
        client.close_view(view).await;
        drop(permit);
        match result {
            Ok(mut i) => {
                i.findings.append(&mut findings);
                crate::fix::settle(&mut i);
                // A single-arch image that an index on the node lists beside a variant for
                // the node: a stale copy of the tag.
                if target.index_platforms.is_empty() && crate::fix::variant_matters(&i) {
                    let _lookup = self.bounds.lookup().await;
                    let manifest = &target.manifest_digest;
                    if let Some(v) = stale_of(client, ns, name, manifest, node, self.timeout).await
                    {
                        crate::fix::note_variant(&mut i, &v);
                    }
                }
                ImageOutcome::Verdict {
                    digest: target.target_digest,
                    inspection: Arc::new(i),
                }
            }
            Err(f) => {
                warn!(
                    namespace = ns,
                    image = name,
                    error_kind = f.kind,
                    "Pulled image could not be inspected: {}",
                    f.detail
                );
                ImageOutcome::Failed
            }
        }
    }
}

/// Where the layers `parent` of image `name` come from, within `timeout` (the answer only
/// adds to a verdict: a lookup that fails or takes too long says nothing).
pub(super) async fn origin_of(
    client: &Client,
    ns: &str,
    name: &str,
    parent: &str,
    timeout: Duration,
) -> Option<containerd::Origin> {
    match tokio::time::timeout(timeout, client.origin(ns, name, parent)).await {
        Ok(Ok(o)) => Some(o),
        Ok(Err(e)) => {
            debug!(image = name, error = %e, "Image of the container unreadable.");
            None
        }
        Err(_) => {
            debug!(image = name, "Image of the container: no answer in time.");
            None
        }
    }
}

/// Whether the single-arch image `name` (manifest `manifest`) is a stale copy of a tag,
/// within `timeout`.
pub(super) async fn stale_of(
    client: &Client,
    ns: &str,
    name: &str,
    manifest: &str,
    node: &Node,
    timeout: Duration,
) -> Option<crate::variant::Variant> {
    match tokio::time::timeout(timeout, client.stale(ns, name, manifest, node)).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            debug!(image = name, error = %e, "Indexes of the repository unreadable.");
            None
        }
        Err(_) => {
            debug!(
                image = name,
                "Indexes of the repository: no answer in time."
            );
            None
        }
    }
}

/// Runs one inspection on the blocking pool within `timeout`; errors are counted by kind.
#[allow(clippy::too_many_arguments)]
pub(super) async fn inspect_off_runtime(
    layers: Vec<PathBuf>,
    process: Process,
    claimed: Option<crate::platform::Arch>,
    node: Node,
    table: Arc<Table>,
    timeout: Duration,
    m: &Metrics,
    target: &'static str,
) -> Result<Inspection, InspectFailure> {
    if process.argv.is_empty() {
        m.inspection_errors
            .get_or_create(&metrics::KindLabels {
                kind: "empty_argv".into(),
            })
            .inc();
        return Err(InspectFailure {
            kind: "empty_argv",
            detail: "the process has no argv".into(),
            retry: false,
        });
    }
    let started = Instant::now();
    // The walk itself stops at the deadline (and drops what it holds); waiting gives up a
    // little later only if it is stuck in one system call.
    let deadline = started + timeout;
    let job = tokio::task::spawn_blocking(move || -> Result<Inspection, inspect::InspectError> {
        let root = Rootfs::new(layers)?.with_deadline(deadline);
        let req = Request {
            argv: &process.argv,
            path_env: process.path_env.as_deref(),
            cwd: &process.cwd,
            claimed_arch: claimed,
            user: process.user.as_ref(),
        };
        let mut i = inspect::inspect(
            &root,
            &req,
            inspect::Context {
                node: &node,
                binfmt: &table,
            },
        )?;
        // Every executable of the image too, headers only (at pull, and for a container:
        // its exit may come from one of them). A census the budget or the files cut short
        // leaves the verdict as it is.
        let named: Vec<String> = i.chain.iter().filter_map(|s| s.resolved.clone()).collect();
        if let Ok(c) = inspect::census::census(&root, req.path_env, &named, &node) {
            i.add_census(&c);
        }
        Ok(i)
    });
    let r = tokio::time::timeout(timeout + Duration::from_millis(500), job).await;
    m.inspection_duration
        .get_or_create(&metrics::TargetLabels {
            target: target.into(),
        })
        .observe(started.elapsed().as_secs_f64());
    let over_budget = || InspectFailure {
        kind: "inspection_timeout",
        detail: format!(
            "the inspection took longer than {} ms (--inspect-timeout-ms)",
            timeout.as_millis()
        ),
        retry: false,
    };
    let failure = match r {
        Ok(Ok(Ok(i))) => return Ok(i),
        Ok(Ok(Err(inspect::InspectError::Rootfs(crate::rootfs::RootfsError::Deadline)))) => {
            over_budget()
        }
        Ok(Ok(Err(e))) => InspectFailure {
            kind: e.kind(),
            detail: e.to_string(),
            retry: false,
        },
        Ok(Err(_)) => InspectFailure {
            kind: "inspection_panicked",
            detail: "the inspection panicked".into(),
            retry: false,
        },
        Err(_) => over_budget(),
    };
    m.inspection_errors
        .get_or_create(&metrics::KindLabels {
            kind: failure.kind.into(),
        })
        .inc();
    Err(failure)
}
