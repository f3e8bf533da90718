//! The jobs the pipeline runs off its loop, and what bounds them: reading a container's
//! record, inspecting a container's files, resolving, viewing and inspecting an image.
//!
//! Bounded: at most [`INSPECTIONS`] inspections hold views and open files at once (images
//! at most [`IMAGE_INSPECTIONS`] of them), at most [`LOOKUPS`] containerd lookups run at
//! once, and each inspection has a time budget. One bad image never stalls the rest.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::binfmt::Table;
use crate::containerd::ContainerdError;
use crate::diagnose::Identity;
use crate::inspect::{self, Inspection, Request};
use crate::pipeline::{CacheKey, History, Key, Process};
use crate::platform::Node;
use crate::rootfs::Rootfs;
use crate::sinks::metrics::{self, Metrics};

/// What a job reports back.
pub(crate) enum Done {
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
pub(crate) struct FromImage {
    pub(crate) image: String,
    /// The parent of the container's snapshot: the chain ID of the image layers.
    pub(crate) parent: Option<String>,
    /// The architecture the image's config claims, when the runtime's record says it (a
    /// containerd container's is read from the variant it runs).
    pub(crate) claimed: Option<crate::platform::Arch>,
}

/// Why a container or image could not be inspected.
#[derive(Debug)]
pub(crate) struct InspectFailure {
    /// A code of `archwatch_inspection_errors_total{kind}`.
    pub(crate) kind: &'static str,
    pub(crate) detail: String,
    /// containerd could not say (record, spec or snapshot unreadable), as opposed to files
    /// that could not be read: the next reconcile judges the container again.
    pub(crate) retry: bool,
}

impl InspectFailure {
    pub(crate) fn lookup(e: &ContainerdError) -> InspectFailure {
        InspectFailure {
            kind: e.kind(),
            detail: e.to_string(),
            // A record containerd no longer has is gone for good: said now, not retried.
            retry: !e.is_not_found(),
        }
    }
}

/// How many inspections (a container's files, or an image: its view and files) run at
/// once: each holds open files (layer directories, the file it reads) and a blocking
/// thread, so a reconcile of a thousand images or a binfmt change that judges them all
/// again stays within a fixed number of open files. Images take at most
/// [`IMAGE_INSPECTIONS`] of them, so a failing container is never queued behind every
/// image on the node.
pub(crate) const INSPECTIONS: usize = 4;
pub(crate) const IMAGE_INSPECTIONS: usize = 3;
/// How many containerd lookups for containers (record, snapshot mounts, image) and image
/// names run at once.
pub(crate) const LOOKUPS: usize = 16;

/// The semaphores that bound the jobs.
#[derive(Clone)]
pub(crate) struct Bounds {
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
pub(crate) struct Permit {
    _held: Vec<OwnedSemaphorePermit>,
}

impl Bounds {
    pub(crate) async fn container(&self) -> Permit {
        let any = self.inspections.clone().acquire_owned().await.ok();
        Permit {
            _held: any.into_iter().collect(),
        }
    }

    pub(crate) async fn image(&self) -> Permit {
        let image = self.images.clone().acquire_owned().await.ok();
        let any = self.inspections.clone().acquire_owned().await.ok();
        Permit {
            _held: image.into_iter().chain(any).collect(),
        }
    }

    pub(crate) async fn lookup(&self) -> Permit {
        let one = self.lookups.clone().acquire_owned().await.ok();
        Permit {
            _held: one.into_iter().collect(),
        }
    }
}

pub(crate) enum ImageOutcome {
    Verdict {
        digest: String,
        inspection: Arc<Inspection>,
    },
    Failed,
}

/// Runs one inspection on the blocking pool within `timeout`; errors are counted by kind.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn inspect_off_runtime(
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
