//! Images: judged once per content as soon as a name points at it, warned about when they
//! cannot run here, listed in the API and counted by verdict.

use crate::inspect::Inspection;
use crate::sinks::kube_events;
use crate::sinks::metrics::{self};
use chrono::Utc;
use futures::FutureExt;
use std::panic::AssertUnwindSafe;
use tracing::{info, warn};

use crate::agent::jobs::*;
use crate::agent::pipeline::*;
use crate::agent::runtime::{ImageParams, Which};

impl Pipeline {
    /// A runtime's image names now: new ones are judged, gone ones forgotten.
    pub(crate) fn images_listed(&mut self, which: Which, names: &[(String, String)]) {
        let scope = self.runtimes.scope(which);
        for (ns, name) in self.images.reconciled_in(names, scope) {
            self.inspect_image(ns, name);
        }
        let images = &self.images;
        self.sinks
            .api
            .retain_images(|ns, digest| images.display_name(ns, digest).is_some());
        self.update_image_gauge();
    }

    /// Lists `digest`'s verdict in the API under its most readable name in `ns`.
    pub(crate) fn show_image(&mut self, ns: &str, digest: &str, i: &Inspection) {
        if let Some(name) = self.images.display_name(ns, digest) {
            self.sinks.api.set_image(ns, &name, digest, i);
        }
    }
    /// An image name went (deleted, or re-pointed): the verdict goes with its last name.
    pub(crate) fn image_name_gone(&mut self, ns: &str, name: &str) {
        let Some(r) = self.images.removed(&(ns.to_string(), name.to_string())) else {
            return;
        };
        if r.in_namespace {
            // Listed under the name that remains.
            if let Some(i) = self.images.verdict(&r.digest) {
                self.show_image(ns, &r.digest, &i);
            }
        } else {
            self.sinks
                .api
                .retain_images(|n, d| !(n == ns && d == r.digest));
        }
        self.update_image_gauge();
    }
    /// A handler came or went: cached verdicts may be wrong, and every image on the node is
    /// judged again (a removed handler turns `emulated` into `arch_mismatch` before any pod
    /// restarts).
    pub(crate) fn binfmt_changed(&mut self) {
        self.tracker.clear_cache();
        for ((ns, name), digest) in self.images.rejudge() {
            self.spawn_image_job(ns, name, digest);
        }
    }
    pub(crate) fn image_warning(&mut self, ns: &str, name: &str, digest: &str, i: &Inspection) {
        if !self.images.warn_once(digest, i.verdict.code()) {
            return;
        }
        if !i.verdict.will_exec() {
            warn!(namespace = ns, image = name, digest, verdict = %i.verdict, "Pulled image cannot run on this node: {}", i.cause);
        } else {
            info!(namespace = ns, image = name, digest, verdict = %i.verdict, "Pulled image: {}", i.cause);
        }
        let node = self.cfg.node_name.clone();
        if !i.verdict.will_exec() {
            if let Some(ev) = &self.sinks.events {
                let cause = format!("Image {name} ({digest}): {}", i.cause);
                ev.push(kube_events::for_node(
                    &node,
                    Some(digest),
                    "IncompatibleImagePulled",
                    &cause,
                    &i.fix,
                ));
            }
        }
        let runtime = self.runtimes.runtime(ns);
        self.sinks.write(&Record::Image {
            diagnosed_at: Utc::now(),
            node: &node,
            runtime,
            namespace: ns,
            image: name,
            digest,
            verdict: i.verdict,
            reason: if i.verdict.will_exec() {
                i.verdict.event_reason()
            } else {
                "IncompatibleImagePulled"
            },
            cause: &i.cause,
            fix: &i.fix,
            fix_code: i.fix_code,
            binary_arch: i.binary_arch.map(|a| a.to_string()),
            node_arch: i.node_arch.to_string(),
            findings: &i.findings,
        });
    }
    /// One count per judged content, however many names it has.
    pub(crate) fn update_image_gauge(&mut self) {
        let g = &self.sinks.metrics.images_inspected;
        g.clear();
        for i in self.images.verdicts() {
            g.get_or_create(&metrics::ImageLabels {
                verdict: i.verdict.code().into(),
                binary_arch: i.binary_arch.map(|a| a.label()).unwrap_or("unknown").into(),
            })
            .inc();
        }
    }
    /// Resolves an image name to its target digest; the content is judged once per digest.
    pub(crate) fn inspect_image(&mut self, ns: String, name: String) {
        if !self.images.want((ns.clone(), name.clone())) {
            return;
        }
        let Some(job) = self.runtimes.image_named(ns.clone(), name.clone()) else {
            // Its runtime is away (or a recording, which carries no image content).
            self.images.unnamed(&(ns, name));
            return;
        };
        let bounds = self.bounds.clone();
        self.jobs.spawn(async move {
            let _permit = bounds.lookup().await;
            Some(job.await)
        });
    }

    /// Inspects the content `digest` through one of its names.
    pub(crate) fn spawn_image_job(&mut self, ns: String, name: String, expected: String) {
        let params = ImageParams {
            node: self.cfg.node.clone(),
            binfmt: self.binfmt.clone(),
            timeout: self.cfg.inspect_timeout,
            snapshotter: self.cfg.snapshotter.clone(),
            metrics: self.sinks.metrics.clone(),
            bounds: self.bounds.clone(),
        };
        let Some(job) = self.runtimes.image_job(ns.clone(), name.clone(), params) else {
            self.images.judged(&expected, None);
            return;
        };
        self.jobs.spawn(async move {
            // A job that panics leaves the content unjudged (tried again at a reconcile),
            // never marked as under way for ever.
            let outcome = AssertUnwindSafe(job)
                .catch_unwind()
                .await
                .unwrap_or(ImageOutcome::Failed);
            Some(Done::Image {
                ns,
                name,
                expected,
                outcome,
            })
        });
    }
}
