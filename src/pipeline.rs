//! The pipeline's state machine: joins what containerd says about containers and tasks
//! with the verdicts of their files, and decides when a failure is diagnosed.
//!
//! Pure and synchronous (times come in with the calls) so it can be table-tested and
//! replayed at full speed; the async shell in `agent` feeds it and runs inspections.
//!
//! Rules:
//! - a `/tasks/exit` of the init process (exec id == container id) with a non-zero status
//!   within `exit_window` of `/tasks/start`, for a container whose verdict will not exec, is
//!   diagnosed once;
//! - runc refuses some failures at create time (argv[0] missing, a directory, no execute bit):
//!   no task is ever created. A container whose verdict will not exec and that gets no task
//!   within `create_window`, or is deleted without one, is diagnosed from that silence;
//! - an exit that arrives before the inspection finishes waits for it;
//! - a failure is diagnosed once, across agent restarts: the containers the journal already
//!   holds as `exec_failure` are handed in at start ([`Tracker::already_reported`]) and are
//!   never diagnosed again;
//! - a dead container first seen at reconcile has no task left to list (the CRI plugin
//!   deletes a task right after it exits and keeps the container), so what the runtime
//!   remembers of it ([`History`]) decides: one that started is judged from its exit, never
//!   as `task_never_created`; one whose start failed is `task_never_created` at once.

pub mod images;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

use crate::diagnose::{self, Diagnosis, Exit, Identity, Signal};
use crate::inspect::Inspection;

/// A container, by containerd namespace and id.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub namespace: String,
    pub id: String,
}

/// What the container record says about the process to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    pub argv: Vec<String>,
    pub path_env: Option<String>,
    pub cwd: String,
}

impl Process {
    /// Cache key for a verdict: same image content + same argv + same PATH/cwd = same answer.
    pub fn cache_key(&self, content: &str) -> String {
        format!(
            "{content}\0{}\0{}\0{}",
            self.argv.join("\u{1}"),
            self.path_env.as_deref().unwrap_or(""),
            self.cwd
        )
    }
}

#[derive(Clone, Debug)]
enum Verdict {
    Pending,
    Known(Arc<Inspection>),
    /// Could not inspect: never diagnosed (we do not guess).
    Failed,
}

#[derive(Clone, Debug)]
struct Container {
    who: Identity,
    created_at: DateTime<Utc>,
    verdict: Verdict,
    task_created: bool,
    started_at: Option<DateTime<Utc>>,
    pending: Option<Exit>,
    diagnosed: bool,
    /// Deleted before its verdict arrived: kept until then so the failure is not lost.
    deleted: bool,
}

/// Timing rules.
#[derive(Clone, Copy, Debug)]
pub struct Windows {
    /// An exit later than this after start is a crash, not an exec failure.
    pub exit_window: Duration,
    /// A failing container with no task after this long was refused at create time.
    pub create_window: Duration,
}

impl Default for Windows {
    fn default() -> Self {
        Windows {
            exit_window: Duration::seconds(10),
            create_window: Duration::seconds(5),
        }
    }
}

/// What the runtime remembers of a container that has no task: asked at reconcile, for a
/// container the agent has never seen (the CRI plugin's status of it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum History {
    /// Created, never asked to start.
    Created,
    /// Its process ran (and may still run).
    Running { started_at: Option<DateTime<Utc>> },
    /// Its process started and exited.
    Exited {
        started_at: Option<DateTime<Utc>>,
        finished_at: Option<DateTime<Utc>>,
        exit_code: u32,
    },
    /// The start was refused before any process existed (runc create failed).
    StartFailed { at: Option<DateTime<Utc>> },
}

/// Bounded verdict cache size.
const CACHE_MAX: usize = 4096;

pub struct Tracker {
    node: String,
    windows: Windows,
    containers: HashMap<Key, Container>,
    cache: HashMap<String, Arc<Inspection>>,
    /// Containers already diagnosed by an earlier run of the agent (from its journal);
    /// pruned as containers go.
    reported: HashSet<Key>,
}

impl Tracker {
    pub fn new(node: &str, windows: Windows) -> Tracker {
        Tracker {
            node: node.to_string(),
            windows,
            containers: HashMap::new(),
            cache: HashMap::new(),
            reported: HashSet::new(),
        }
    }

    /// Containers an earlier run already diagnosed: never diagnosed again.
    pub fn already_reported(&mut self, keys: impl IntoIterator<Item = Key>) {
        for k in keys {
            if let Some(c) = self.containers.get_mut(&k) {
                c.diagnosed = true;
            }
            self.reported.insert(k);
        }
    }

    /// How many containers an earlier run diagnosed that are still remembered.
    pub fn reported_len(&self) -> usize {
        self.reported.len()
    }

    /// Containers currently tracked.
    pub fn len(&self) -> usize {
        self.containers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.containers.is_empty()
    }

    pub fn knows(&self, key: &Key) -> bool {
        self.containers.contains_key(key)
    }

    /// A verdict already computed for this content + process.
    pub fn cached(&self, cache_key: &str) -> Option<Arc<Inspection>> {
        self.cache.get(cache_key).cloned()
    }

    /// Starts tracking a container as soon as containerd announces it, so that task events
    /// arriving before its files are read are kept. Returns `false` when already tracked.
    pub fn container_created(&mut self, key: Key, now: DateTime<Utc>) -> bool {
        if self.containers.contains_key(&key) {
            return false;
        }
        let diagnosed = self.reported.contains(&key);
        self.containers.insert(
            key,
            Container {
                who: Identity::default(),
                created_at: now,
                verdict: Verdict::Pending,
                task_created: false,
                started_at: None,
                pending: None,
                diagnosed,
                deleted: false,
            },
        );
        true
    }

    /// What the runtime remembers of a container first seen at reconcile with no task.
    /// Returns any diagnosis it settles (when the verdict is already known).
    pub fn history(&mut self, key: &Key, h: History) -> Vec<Diagnosis> {
        let window = self.windows.exit_window;
        let node = self.node.clone();
        let Some(c) = self.containers.get_mut(key) else {
            return Vec::new();
        };
        match h {
            History::Created => Vec::new(),
            History::Running { started_at } => {
                c.task_created = true;
                c.started_at = started_at;
                Vec::new()
            }
            History::Exited {
                started_at,
                finished_at,
                exit_code,
            } => {
                c.task_created = true;
                c.started_at = started_at;
                if let (Some(s), Some(f)) = (started_at, finished_at) {
                    if f - s > window {
                        // Ran for a while: a crash, not an exec failure.
                        return Vec::new();
                    }
                }
                let exit = Exit {
                    signal: Signal::StoppedBeforeWatch,
                    exit_code: Some(exit_code),
                    started_at,
                    exited_at: finished_at,
                };
                Self::decide_or_wait(&node, c, exit)
            }
            History::StartFailed { at } => {
                let exit = Exit {
                    signal: Signal::TaskNeverCreated,
                    exit_code: None,
                    started_at: None,
                    exited_at: at,
                };
                Self::decide_or_wait(&node, c, exit)
            }
        }
    }

    /// The container's record was read: who it is and what it will run. Returns whether its
    /// files must be inspected (no cached verdict), and any diagnosis a cached verdict settles.
    pub fn identified(
        &mut self,
        key: &Key,
        who: Identity,
        cache_key: Option<&str>,
    ) -> (bool, Vec<Diagnosis>) {
        let cached = cache_key.and_then(|k| self.cache.get(k).cloned());
        let node = self.node.clone();
        let Some(c) = self.containers.get_mut(key) else {
            return (false, Vec::new());
        };
        c.who = who;
        match cached {
            Some(i) => {
                c.verdict = Verdict::Known(i);
                let d = match c.pending.take() {
                    Some(exit) => Self::decide(&node, c, &exit).into_iter().collect(),
                    None => Vec::new(),
                };
                (false, d)
            }
            None => (true, Vec::new()),
        }
    }

    /// Whether a tracked container was deleted (kept only until its verdict is used).
    pub fn is_deleted(&self, key: &Key) -> bool {
        self.containers.get(key).is_some_and(|c| c.deleted)
    }

    /// Drops a container that was deleted while its verdict was pending, once the verdict
    /// has been used.
    pub fn reap_deleted(&mut self, key: &Key) {
        if self
            .containers
            .get(key)
            .is_some_and(|c| c.deleted && !matches!(c.verdict, Verdict::Pending))
        {
            self.containers.remove(key);
        }
    }

    /// Forgets every cached verdict (the binfmt_misc table changed, so they may be wrong).
    pub fn clear_cache(&mut self) {
        self.cache.clear();
    }

    /// Stops tracking without diagnosing (a sandbox, or gone while the agent was away).
    pub fn forget(&mut self, key: &Key) {
        self.containers.remove(key);
        self.reported.remove(key);
    }

    /// Who a tracked container is and its verdict, when known.
    pub fn verdict(&self, key: &Key) -> Option<(&Identity, Arc<Inspection>)> {
        let c = self.containers.get(key)?;
        match &c.verdict {
            Verdict::Known(i) => Some((&c.who, i.clone())),
            _ => None,
        }
    }

    /// Who a tracked container is.
    pub fn identity(&self, key: &Key) -> Option<&Identity> {
        self.containers.get(key).map(|c| &c.who)
    }

    /// After a full listing: what containerd no longer holds is forgotten (it went while
    /// the agent was away or disconnected), diagnosed or not.
    pub fn reconciled(&mut self, listed: &HashSet<Key>) {
        self.containers.retain(|k, _| listed.contains(k));
        self.reported.retain(|k| listed.contains(k));
    }

    /// The verdict for a container arrived (or could not be had).
    pub fn inspected(
        &mut self,
        key: &Key,
        cache_key: Option<&str>,
        result: Option<Arc<Inspection>>,
    ) -> Vec<Diagnosis> {
        if let (Some(k), Some(i)) = (cache_key, &result) {
            if self.cache.len() >= CACHE_MAX {
                self.cache.clear();
            }
            self.cache.insert(k.to_string(), i.clone());
        }
        let node = self.node.clone();
        let Some(c) = self.containers.get_mut(key) else {
            return Vec::new();
        };
        c.verdict = match result {
            Some(i) => Verdict::Known(i),
            None => Verdict::Failed,
        };
        match c.pending.take() {
            Some(exit) => Self::decide(&node, c, &exit).into_iter().collect(),
            None => Vec::new(),
        }
    }

    pub fn task_created(&mut self, key: &Key) {
        if let Some(c) = self.containers.get_mut(key) {
            c.task_created = true;
        }
    }

    pub fn task_started(&mut self, key: &Key, at: DateTime<Utc>) {
        if let Some(c) = self.containers.get_mut(key) {
            c.task_created = true;
            c.started_at = Some(at);
        }
    }

    /// `/tasks/exit`; only the init process (exec id == container id) counts.
    pub fn task_exited(
        &mut self,
        key: &Key,
        exec_id: &str,
        status: u32,
        at: DateTime<Utc>,
    ) -> Vec<Diagnosis> {
        if exec_id != key.id {
            return Vec::new();
        }
        let window = self.windows.exit_window;
        let node = self.node.clone();
        let Some(c) = self.containers.get_mut(key) else {
            return Vec::new();
        };
        c.task_created = true;
        if let Some(start) = c.started_at {
            if at - start > window {
                return Vec::new();
            }
        }
        let exit = Exit {
            signal: Signal::TaskExit,
            exit_code: Some(status),
            started_at: c.started_at,
            exited_at: Some(at),
        };
        Self::decide_or_wait(&node, c, exit)
    }

    /// Found at reconcile: a task that had already stopped.
    pub fn task_stopped_before_watch(
        &mut self,
        key: &Key,
        status: u32,
        at: Option<DateTime<Utc>>,
    ) -> Vec<Diagnosis> {
        let node = self.node.clone();
        let Some(c) = self.containers.get_mut(key) else {
            return Vec::new();
        };
        c.task_created = true;
        let exit = Exit {
            signal: Signal::StoppedBeforeWatch,
            exit_code: Some(status),
            started_at: None,
            exited_at: at,
        };
        Self::decide_or_wait(&node, c, exit)
    }

    /// `/containers/delete`: forget it; a failing container that never got a task was
    /// refused at create time.
    pub fn container_deleted(&mut self, key: &Key, now: DateTime<Utc>) -> Vec<Diagnosis> {
        let node = self.node.clone();
        self.reported.remove(key);
        let Some(mut c) = self.containers.remove(key) else {
            return Vec::new();
        };
        if matches!(c.verdict, Verdict::Pending) {
            // Its files are still being read (a fast `--rm` run): keep it until they are.
            if !c.task_created && c.pending.is_none() {
                c.pending = Some(never_created(now));
            }
            c.deleted = true;
            self.containers.insert(key.clone(), c);
            return Vec::new();
        }
        if c.task_created || c.diagnosed {
            return Vec::new();
        }
        let exit = never_created(now);
        Self::decide(&node, &mut c, &exit).into_iter().collect()
    }

    /// Periodic: failing containers that never got a task within the create window.
    pub fn tick(&mut self, now: DateTime<Utc>) -> Vec<Diagnosis> {
        let window = self.windows.create_window;
        let node = self.node.clone();
        let mut out = Vec::new();
        for c in self.containers.values_mut() {
            let known = matches!(c.verdict, Verdict::Known(_));
            if known && !c.task_created && !c.diagnosed && now - c.created_at >= window {
                let exit = never_created(now);
                out.extend(Self::decide(&node, c, &exit));
            }
        }
        out
    }

    fn decide_or_wait(node: &str, c: &mut Container, exit: Exit) -> Vec<Diagnosis> {
        if matches!(c.verdict, Verdict::Pending) {
            c.pending = Some(exit);
            return Vec::new();
        }
        Self::decide(node, c, &exit).into_iter().collect()
    }

    fn decide(node: &str, c: &mut Container, exit: &Exit) -> Option<Diagnosis> {
        if c.diagnosed {
            return None;
        }
        let Verdict::Known(i) = &c.verdict else {
            if matches!(c.verdict, Verdict::Pending) {
                c.pending = Some(exit.clone());
            }
            return None;
        };
        let d = diagnose::diagnose(node, &c.who, i, exit)?;
        c.diagnosed = true;
        Some(d)
    }
}

fn never_created(now: DateTime<Utc>) -> Exit {
    Exit {
        signal: Signal::TaskNeverCreated,
        exit_code: None,
        started_at: None,
        exited_at: Some(now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::Verdict as V;
    use crate::platform::Arch;

    fn insp(v: V) -> Arc<Inspection> {
        Arc::new(Inspection {
            verdict: v,
            cause: "c".into(),
            fix: "f".into(),
            symptom: v.symptom(),
            argv: vec!["/app".into()],
            node_arch: Arch::Amd64,
            binary_arch: None,
            handler: None,
            chain: Vec::new(),
            findings: Vec::new(),
            bytes_read: 0,
        })
    }

    fn key(id: &str) -> Key {
        Key {
            namespace: "k8s.io".into(),
            id: id.into(),
        }
    }

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn exit_after_start_is_diagnosed_once() {
        let mut tr = Tracker::new("n", Windows::default());
        assert!(tr.container_created(key("a"), t(0)));
        assert!(!tr.container_created(key("a"), t(0)));
        assert!(tr.identified(&key("a"), Identity::default(), Some("k")).0);
        assert!(tr
            .inspected(&key("a"), Some("k"), Some(insp(V::ArchMismatch)))
            .is_empty());
        tr.task_created(&key("a"));
        tr.task_started(&key("a"), t(1));
        assert!(
            tr.task_exited(&key("a"), "probe", 1, t(1)).is_empty(),
            "exec process exits do not count"
        );
        let d = tr.task_exited(&key("a"), "a", 255, t(1));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].exit_code, Some(255));
        assert!(tr.task_exited(&key("a"), "a", 255, t(2)).is_empty(), "once");
        assert!(tr.container_deleted(&key("a"), t(3)).is_empty());
    }

    #[test]
    fn healthy_and_late_exits_are_not_exec_failures() {
        let mut tr = Tracker::new("n", Windows::default());
        tr.container_created(key("ok"), t(0));
        tr.inspected(&key("ok"), None, Some(insp(V::Ok)));
        tr.task_started(&key("ok"), t(0));
        assert!(tr.task_exited(&key("ok"), "ok", 1, t(1)).is_empty());
        tr.container_created(key("late"), t(0));
        tr.inspected(&key("late"), None, Some(insp(V::ArchMismatch)));
        tr.task_started(&key("late"), t(0));
        assert!(tr.task_exited(&key("late"), "late", 1, t(3600)).is_empty());
    }

    #[test]
    fn exit_before_verdict_waits_for_it() {
        let mut tr = Tracker::new("n", Windows::default());
        tr.container_created(key("a"), t(0));
        tr.task_started(&key("a"), t(0));
        assert!(tr.task_exited(&key("a"), "a", 1, t(0)).is_empty());
        assert!(tr.identified(&key("a"), Identity::default(), Some("k")).0);
        let d = tr.inspected(&key("a"), Some("k"), Some(insp(V::ScriptCrlf)));
        assert_eq!(d.len(), 1);
        // The next container of the same image + argv hits the cache, even when its exit
        // arrives before its record is read.
        tr.container_created(key("b"), t(5));
        tr.task_started(&key("b"), t(5));
        assert!(tr.task_exited(&key("b"), "b", 1, t(5)).is_empty());
        let (need, d) = tr.identified(&key("b"), Identity::default(), Some("k"));
        assert!(!need);
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn refused_at_create_is_diagnosed_from_silence_or_delete() {
        let mut tr = Tracker::new("n", Windows::default());
        tr.container_created(key("gone"), t(0));
        tr.inspected(&key("gone"), None, Some(insp(V::NotFound)));
        let d = tr.container_deleted(&key("gone"), t(1));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].signal, Signal::TaskNeverCreated);

        tr.container_created(key("stuck"), t(0));
        tr.inspected(&key("stuck"), None, Some(insp(V::NotExecutable)));
        assert!(tr.tick(t(2)).is_empty(), "inside the window");
        assert_eq!(tr.tick(t(6)).len(), 1);
        assert!(tr.tick(t(7)).is_empty(), "once");

        tr.container_created(key("fine"), t(0));
        tr.inspected(&key("fine"), None, Some(insp(V::Ok)));
        assert!(tr.tick(t(60)).is_empty());
    }

    #[test]
    fn a_container_deleted_before_its_verdict_is_still_diagnosed() {
        let mut tr = Tracker::new("n", Windows::default());
        // Ran, failed and was removed (ctr run --rm) before its files were read.
        tr.container_created(key("fast"), t(0));
        tr.task_started(&key("fast"), t(0));
        assert!(tr.task_exited(&key("fast"), "fast", 1, t(0)).is_empty());
        assert!(tr.container_deleted(&key("fast"), t(0)).is_empty());
        tr.identified(&key("fast"), Identity::default(), None);
        let d = tr.inspected(&key("fast"), None, Some(insp(V::ArchMismatch)));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].signal, Signal::TaskExit);
        tr.reap_deleted(&key("fast"));
        assert!(tr.is_empty());
        // Refused at create and removed before its files were read.
        tr.container_created(key("refused"), t(0));
        assert!(tr.container_deleted(&key("refused"), t(1)).is_empty());
        let d = tr.inspected(&key("refused"), None, Some(insp(V::NotFound)));
        assert_eq!(d[0].signal, Signal::TaskNeverCreated);
    }

    #[test]
    fn uninspectable_containers_are_never_guessed() {
        let mut tr = Tracker::new("n", Windows::default());
        tr.container_created(key("x"), t(0));
        tr.task_started(&key("x"), t(0));
        tr.task_exited(&key("x"), "x", 1, t(0));
        assert!(tr.inspected(&key("x"), None, None).is_empty());
    }

    #[test]
    fn stopped_before_watch_is_diagnosed_once() {
        let mut tr = Tracker::new("n", Windows::default());
        tr.container_created(key("a"), t(0));
        tr.inspected(&key("a"), None, Some(insp(V::MissingLoader)));
        let d = tr.task_stopped_before_watch(&key("a"), 1, Some(t(0)));
        assert_eq!(d[0].signal, Signal::StoppedBeforeWatch);
        assert!(tr
            .task_stopped_before_watch(&key("a"), 1, Some(t(0)))
            .is_empty());
    }

    #[test]
    fn a_failure_journaled_by_an_earlier_run_is_not_reported_again() {
        let mut tr = Tracker::new("n", Windows::default());
        tr.already_reported([key("old")]);
        // Seen at reconcile, dead, no task left (the CRI plugin deleted it).
        tr.container_created(key("old"), t(100));
        tr.inspected(&key("old"), None, Some(insp(V::ArchMismatch)));
        let h = History::Exited {
            started_at: Some(t(0)),
            finished_at: Some(t(0)),
            exit_code: 1,
        };
        assert!(tr.history(&key("old"), h).is_empty());
        assert!(tr.tick(t(200)).is_empty(), "nor as task_never_created");
        // Pruned with the container.
        tr.reconciled(&HashSet::new());
        assert_eq!((tr.len(), tr.reported_len()), (0, 0));
    }

    #[test]
    fn a_dead_container_first_seen_at_reconcile_is_judged_from_its_history() {
        let mut tr = Tracker::new("n", Windows::default());
        // It ran and exited while the agent was away: an exit, never task_never_created.
        tr.container_created(key("ran"), t(100));
        let h = History::Exited {
            started_at: Some(t(1)),
            finished_at: Some(t(1)),
            exit_code: 1,
        };
        assert!(
            tr.history(&key("ran"), h).is_empty(),
            "waits for its verdict"
        );
        let d = tr.inspected(&key("ran"), None, Some(insp(V::ArchMismatch)));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].signal, Signal::StoppedBeforeWatch);
        assert_eq!(d[0].exit_code, Some(1));
        assert_eq!(d[0].exited_at, Some(t(1)));
        assert!(tr.tick(t(200)).is_empty());

        // Ran for an hour, then crashed: not an exec failure.
        tr.container_created(key("long"), t(100));
        tr.inspected(&key("long"), None, Some(insp(V::ArchMismatch)));
        let h = History::Exited {
            started_at: Some(t(0)),
            finished_at: Some(t(3600)),
            exit_code: 1,
        };
        assert!(tr.history(&key("long"), h).is_empty());
        assert!(tr.tick(t(4000)).is_empty());

        // Its start was refused: task_never_created at once, no window to wait.
        tr.container_created(key("refused"), t(100));
        tr.inspected(&key("refused"), None, Some(insp(V::NotFound)));
        let d = tr.history(&key("refused"), History::StartFailed { at: Some(t(2)) });
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].signal, Signal::TaskNeverCreated);
        assert!(tr.tick(t(200)).is_empty(), "once");
    }
}
