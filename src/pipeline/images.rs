//! The images on the node, judged once per content.
//!
//! One pull makes several image records: the CRI plugin names a pulled image by its tag
//! (`repo:tag`), its digest (`repo@sha256:…`) and its id (`sha256:<config>`), and a re-tag
//! adds more. They all point at one target, so the verdict belongs to the target digest:
//! it is inspected once, warned about once, counted once in `images_inspected`, and listed
//! once by the API (under its most readable name). It goes when its last name goes.
//!
//! Pure: the async shell resolves names to digests and runs inspections; this decides
//! which inspections to run and what the node holds.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::inspect::Inspection;

/// A containerd namespace and an image name in it.
pub type Name = (String, String);

/// What to do with a name once its digest is known.
#[derive(Debug)]
pub enum Named {
    /// The content was judged already: the verdict to show under this name too.
    Known(Arc<Inspection>),
    /// Inspect it (through this name).
    Inspect,
    /// Another name of the same content is being inspected: nothing to do.
    Wait,
}

/// What a name's removal left.
#[derive(Debug, PartialEq, Eq)]
pub struct Removed {
    pub digest: String,
    /// The content still has a name in the namespace.
    pub in_namespace: bool,
}

/// The verdicts of the images on the node, by target digest (each [capped]).
///
/// [capped]: super::cache::capped
#[derive(Default)]
pub struct Images {
    names: HashMap<Name, String>,
    verdicts: HashMap<String, Arc<Inspection>>,
    /// Digests under inspection.
    in_flight: HashSet<String>,
    /// Names whose digest is being looked up.
    naming: HashSet<Name>,
    /// `digest\0verdict` already journaled and warned about (this run or an earlier one).
    warned: HashSet<String>,
}

fn warn_key(digest: &str, verdict: &str) -> String {
    format!("{digest}\0{verdict}")
}

impl Images {
    /// Starts looking `name` up unless that is under way; `false` when nothing is to do.
    pub fn want(&mut self, name: Name) -> bool {
        self.naming.insert(name)
    }

    /// The lookup of `name` failed (gone, or unreadable).
    pub fn unnamed(&mut self, name: &Name) {
        self.naming.remove(name);
    }

    /// The digest `name` points at, as last seen.
    pub fn digest_of(&self, name: &Name) -> Option<&str> {
        self.names.get(name).map(String::as_str)
    }

    /// `name` points at `digest`.
    pub fn named(&mut self, name: Name, digest: &str) -> Named {
        self.naming.remove(&name);
        self.names.insert(name, digest.to_string());
        if let Some(i) = self.verdicts.get(digest) {
            return Named::Known(i.clone());
        }
        if self.in_flight.insert(digest.to_string()) {
            Named::Inspect
        } else {
            Named::Wait
        }
    }

    /// The inspection started for `expected` ended; `judged` is the digest it really read
    /// (a re-tag in between can move a name) and its verdict, if it got one. Returns the
    /// namespaces that now hold the verdict.
    pub fn judged(
        &mut self,
        expected: &str,
        judged: Option<(&str, Arc<Inspection>)>,
    ) -> BTreeSet<String> {
        self.in_flight.remove(expected);
        let Some((digest, i)) = judged else {
            return BTreeSet::new();
        };
        self.in_flight.remove(digest);
        self.verdicts
            .insert(digest.to_string(), super::cache::capped(i));
        self.namespaces_of(digest)
    }

    /// Namespaces with a name for `digest`.
    pub fn namespaces_of(&self, digest: &str) -> BTreeSet<String> {
        self.names
            .iter()
            .filter(|(_, d)| *d == digest)
            .map(|((ns, _), _)| ns.clone())
            .collect()
    }

    /// A name is gone. Returns its digest and whether that content still has a name in
    /// this namespace (its API entry stays, maybe under another name); content with no
    /// name left anywhere leaves the node with its verdict and warnings.
    pub fn removed(&mut self, name: &Name) -> Option<Removed> {
        self.naming.remove(name);
        let digest = self.names.remove(name)?;
        let in_namespace = self
            .names
            .iter()
            .any(|((ns, _), d)| *d == digest && *ns == name.0);
        let anywhere = in_namespace || self.names.values().any(|d| *d == digest);
        if !anywhere {
            self.drop_digest(&digest);
        }
        Some(Removed {
            digest,
            in_namespace,
        })
    }

    fn drop_digest(&mut self, digest: &str) {
        self.verdicts.remove(digest);
        let prefix = format!("{digest}\0");
        self.warned.retain(|w| !w.starts_with(&prefix));
    }

    /// After a full listing: names that are gone are dropped (with the verdicts and
    /// warnings of content no name points at any more). Returns the names to look up: new
    /// ones, and those of content not judged yet (an inspection that failed is tried again).
    pub fn reconciled(&mut self, listed: &[Name]) -> Vec<Name> {
        self.reconciled_in(listed, |_| true)
    }

    /// [`Images::reconciled`] for one runtime: only names in namespaces `scope` accepts
    /// are its to prune.
    pub fn reconciled_in(&mut self, listed: &[Name], scope: impl Fn(&str) -> bool) -> Vec<Name> {
        let keep: HashSet<&Name> = listed.iter().collect();
        self.names.retain(|n, _| !scope(&n.0) || keep.contains(n));
        let live: HashSet<String> = self.names.values().cloned().collect();
        let gone: Vec<String> = self
            .verdicts
            .keys()
            .filter(|d| !live.contains(*d))
            .cloned()
            .collect();
        for d in gone {
            self.drop_digest(&d);
        }
        listed
            .iter()
            .filter(|n| match self.names.get(*n) {
                None => true,
                Some(d) => !self.verdicts.contains_key(d) && !self.in_flight.contains(d),
            })
            .cloned()
            .collect()
    }

    /// The binfmt_misc table changed: one name per judged digest, to inspect again. The
    /// old verdicts stay until the new ones land.
    pub fn rejudge(&mut self) -> Vec<(Name, String)> {
        let mut out: HashMap<String, Name> = HashMap::new();
        for (n, d) in &self.names {
            if self.verdicts.contains_key(d) && !self.in_flight.contains(d) {
                let e = out.entry(d.clone()).or_insert_with(|| n.clone());
                if display_rank(&n.1) < display_rank(&e.1) {
                    *e = n.clone();
                }
            }
        }
        let mut v: Vec<(Name, String)> = out.into_iter().map(|(d, n)| (n, d)).collect();
        v.sort();
        for (_, d) in &v {
            self.in_flight.insert(d.clone());
        }
        v
    }

    /// Whether `digest` was already warned about with this verdict; marks it.
    pub fn warn_once(&mut self, digest: &str, verdict: &str) -> bool {
        self.warned.insert(warn_key(digest, verdict))
    }

    /// Warnings journaled by an earlier run of the agent.
    pub fn already_warned(&mut self, items: impl IntoIterator<Item = (String, String)>) {
        for (d, v) in items {
            self.warned.insert(warn_key(&d, &v));
        }
    }

    /// The name to show for `digest` in `ns`: a tag before a digest reference before the
    /// bare id, then the shortest, then alphabetical.
    pub fn display_name(&self, ns: &str, digest: &str) -> Option<String> {
        self.names
            .iter()
            .filter(|((n, _), d)| n == ns && *d == digest)
            .map(|((_, name), _)| name)
            .min_by_key(|name| (display_rank(name), name.len(), (*name).clone()))
            .cloned()
    }

    /// The verdict of `digest`, when judged.
    pub fn verdict(&self, digest: &str) -> Option<Arc<Inspection>> {
        self.verdicts.get(digest).cloned()
    }

    /// Every judged image once.
    pub fn verdicts(&self) -> impl Iterator<Item = &Arc<Inspection>> {
        self.verdicts.values()
    }

    /// Names known (with a digest).
    pub fn names(&self) -> usize {
        self.names.len()
    }
}

/// 0 for `repo:tag`, 1 for `repo@sha256:…`, 2 for the bare `sha256:<id>`.
fn display_rank(name: &str) -> u8 {
    if name.starts_with("sha256:") {
        2
    } else if name.contains('@') {
        1
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::Verdict;

    fn insp(v: Verdict) -> Arc<Inspection> {
        Arc::new(Inspection {
            binary_arch: None,
            ..Inspection::sample(v)
        })
    }

    fn n(name: &str) -> Name {
        ("k8s.io".into(), name.into())
    }

    #[test]
    fn one_pull_three_names_one_inspection() {
        let mut b = Images::default();
        let names = [
            "127.0.0.1:5000/shop/app:v1",
            "127.0.0.1:5000/shop/app@sha256:aa",
            "sha256:cc",
        ];
        for name in names {
            assert!(b.want(n(name)));
            assert!(!b.want(n(name)), "one lookup per name at a time");
        }
        assert!(matches!(b.named(n(names[2]), "sha256:aa"), Named::Inspect));
        assert!(matches!(b.named(n(names[0]), "sha256:aa"), Named::Wait));
        let ns = b.judged(
            "sha256:aa",
            Some(("sha256:aa", insp(Verdict::ArchMismatch))),
        );
        assert_eq!(ns.into_iter().collect::<Vec<_>>(), vec!["k8s.io"]);
        assert!(matches!(b.named(n(names[1]), "sha256:aa"), Named::Known(_)));
        assert_eq!(b.verdicts().count(), 1, "counted once");
        assert_eq!(
            b.display_name("k8s.io", "sha256:aa").as_deref(),
            Some(names[0])
        );
        assert!(b.warn_once("sha256:aa", "arch_mismatch"));
        assert!(!b.warn_once("sha256:aa", "arch_mismatch"), "warned once");
        // Image GC removes every name; the verdict and the warning go with the last.
        assert_eq!(b.removed(&n(names[0])).map(|r| r.in_namespace), Some(true));
        assert_eq!(
            b.display_name("k8s.io", "sha256:aa").as_deref(),
            Some(names[1]),
            "the next most readable name"
        );
        assert_eq!(b.removed(&n(names[2])).map(|r| r.in_namespace), Some(true));
        assert_eq!(
            b.removed(&n(names[1])),
            Some(Removed {
                digest: "sha256:aa".into(),
                in_namespace: false
            })
        );
        assert_eq!(b.removed(&n(names[1])), None, "already gone");
        assert_eq!(b.verdicts().count(), 0);
        assert_eq!(b.names(), 0);
        assert!(b.warn_once("sha256:aa", "arch_mismatch"), "a new pull");
    }

    #[test]
    fn reconcile_drops_what_is_gone_and_returns_what_is_new() {
        let mut b = Images::default();
        b.want(n("a:1"));
        b.named(n("a:1"), "sha256:a");
        b.judged("sha256:a", Some(("sha256:a", insp(Verdict::Ok))));
        b.already_warned([("sha256:a".to_string(), "ok".to_string())]);
        let todo = b.reconciled(&[n("b:1")]);
        assert_eq!(todo, vec![n("b:1")]);
        assert_eq!(b.verdicts().count(), 0);
        assert!(b.warn_once("sha256:a", "ok"));
    }

    #[test]
    fn rejudge_once_per_digest_keeping_the_old_verdict() {
        let mut b = Images::default();
        for name in ["x:1", "sha256:x"] {
            b.want(n(name));
            b.named(n(name), "sha256:x");
        }
        b.judged("sha256:x", Some(("sha256:x", insp(Verdict::Emulated))));
        let again = b.rejudge();
        assert_eq!(again, vec![(n("x:1"), "sha256:x".to_string())]);
        assert!(b.verdict("sha256:x").is_some());
        assert!(b.rejudge().is_empty(), "already under way");
        b.judged("sha256:x", Some(("sha256:x", insp(Verdict::ArchMismatch))));
        assert_eq!(
            b.verdict("sha256:x").map(|i| i.verdict),
            Some(Verdict::ArchMismatch)
        );
    }

    #[test]
    fn a_failed_inspection_is_tried_again() {
        let mut b = Images::default();
        b.want(n("a:1"));
        assert!(matches!(b.named(n("a:1"), "sha256:a"), Named::Inspect));
        assert!(matches!(b.named(n("sha256:a"), "sha256:a"), Named::Wait));
        assert!(b.judged("sha256:a", None).is_empty());
        // At the next reconcile (a reconnect), or through another name.
        assert_eq!(
            b.reconciled(&[n("a:1"), n("sha256:a"), n("b:1")]),
            vec![n("a:1"), n("sha256:a"), n("b:1")]
        );
        b.want(n("a:2"));
        assert!(matches!(b.named(n("a:2"), "sha256:a"), Named::Inspect));
        assert!(b.reconciled(&[n("a:1"), n("a:2")]).is_empty(), "under way");
    }
}
