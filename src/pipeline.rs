//! The pipeline's state machine: joins what containerd says about containers and tasks
//! with the verdicts of their files, and decides when a failure is diagnosed.
//!
//! Pure and synchronous (times come in with the calls) so it can be table-tested and
//! replayed at full speed; the async shell in `agent` feeds it and runs inspections.
//!
//! Everything known of a container is one [`store::Record`] in one [`store::Store`], by
//! [`Key`]: a container gone from containerd is gone from every bit of state and from
//! every count at once.
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
//!   as `task_never_created`; one whose start failed is `task_never_created` at once;
//! - a reconcile prunes what containerd no longer lists, and judges again, once, what a
//!   dropped connection left unjudged: a container whose record or snapshot could not be
//!   read, or whose job was lost ([`Tracker::reconciled`]). An exit seen meanwhile waits
//!   for that verdict.

pub mod cache;
pub mod images;
pub mod store;

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

use crate::diagnose::{self, Diagnosis, Exit, Identity, Signal};
use crate::inspect::Inspection;
pub use cache::CacheKey;
use cache::VerdictCache;
use store::{Init, Judgement, Record, Store};

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
    /// The user it runs as (`process.user`); `None`: root.
    pub user: Option<crate::rootfs::Creds>,
}

impl Process {
    /// Cache key for a verdict: same image content + same argv + same PATH/cwd = same
    /// answer. A hash: 32 bytes however long argv is.
    pub fn cache_key(&self, content: &str) -> CacheKey {
        CacheKey::new(content, &self.argv, self.path_env.as_deref(), &self.cwd)
            .with_user(self.user.as_ref())
    }
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
    /// The start was refused before any process existed (runc create failed), with the
    /// exit code the runtime gives it (Docker: 127 or 126).
    StartFailed {
        at: Option<DateTime<Utc>>,
        exit_code: Option<u32>,
    },
}

/// A container whose verdict is `emulated` and that was not reported as such yet.
#[derive(Debug)]
pub struct EmulationCheck<'a> {
    pub who: &'a Identity,
    pub inspection: Arc<Inspection>,
    /// Its init process, when seen.
    pub init: Option<Init>,
    /// Deleted, kept only until its verdict was used.
    pub deleted: bool,
}

pub struct Tracker {
    node: String,
    windows: Windows,
    store: Store,
    cache: VerdictCache,
    /// Containers an earlier run already diagnosed (from its journal) that have no record
    /// yet: each goes into its record when that is created, and a reconcile drops those
    /// containerd does not list (every container the journal can name existed before this
    /// run, so after the first listing none is left here).
    reported: HashSet<Key>,
    /// Containers whose deferred failure was not retried because they went first.
    gone_unjudged: Vec<(Key, Identity, store::Deferred)>,
    /// Containers whose runtime's state is to be asked whether their start was refused.
    to_ask: Vec<Key>,
}

impl Tracker {
    /// Whether a failed judgement of `key` will be tried again at the next reconcile: the
    /// container is known, not deleted, and was not retried yet.
    pub fn will_retry(&self, key: &Key) -> bool {
        self.store
            .get(key)
            .is_some_and(|c| !c.retried && !c.deleted)
    }

    /// A failure (the runtime could not say) held back until the retry: said only if the
    /// container goes before it is judged again ([`Tracker::take_gone_unjudged`]).
    pub fn defer_failure(&mut self, key: &Key, kind: &'static str, detail: String) {
        if let Some(c) = self.store.get_mut(key) {
            c.deferred = Some(store::Deferred { kind, detail });
        }
    }

    /// The containers a reconcile found gone with a deferred failure: their failure is
    /// journaled now, so nothing is lost.
    pub fn take_gone_unjudged(&mut self) -> Vec<(Key, Identity, store::Deferred)> {
        std::mem::take(&mut self.gone_unjudged)
    }

    pub fn new(node: &str, windows: Windows) -> Tracker {
        Tracker {
            node: node.to_string(),
            windows,
            store: Store::default(),
            cache: VerdictCache::default(),
            reported: HashSet::new(),
            gone_unjudged: Vec::new(),
            to_ask: Vec::new(),
        }
    }

    /// Containers an earlier run already diagnosed: never diagnosed again.
    pub fn already_reported(&mut self, keys: impl IntoIterator<Item = Key>) {
        for k in keys {
            match self.store.get_mut(&k) {
                Some(c) => c.diagnosed = true,
                None => {
                    self.reported.insert(k);
                }
            }
        }
    }

    /// How many containers an earlier run diagnosed are remembered apart from the records
    /// (none after the first reconcile).
    pub fn reported_len(&self) -> usize {
        self.reported.len()
    }

    /// Containers currently tracked.
    pub fn len(&self) -> usize {
        self.store.len()
    }

    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }

    pub fn knows(&self, key: &Key) -> bool {
        self.store.contains(key)
    }

    /// A verdict already computed for this content + process.
    pub fn cached(&self, cache_key: &CacheKey) -> Option<Arc<Inspection>> {
        self.cache.get(cache_key)
    }

    /// Bytes the verdict cache holds.
    pub fn cache_bytes(&self) -> u64 {
        self.cache.bytes()
    }

    /// Containers running under emulation, by arch label: what `containers_emulated` shows.
    pub fn emulated(&self) -> impl Iterator<Item = (&'static str, usize)> + '_ {
        self.store.emulated()
    }

    /// Starts tracking a container as soon as containerd announces it, so that task events
    /// arriving before its files are read are kept. Returns `false` when already tracked.
    pub fn container_created(&mut self, key: Key, now: DateTime<Utc>) -> bool {
        if self.store.contains(&key) {
            return false;
        }
        let diagnosed = self.reported.remove(&key);
        self.store.insert(key, Record::new(now, diagnosed))
    }

    /// [`Tracker::container_created`] for a runtime that records a refused start in the
    /// container's own state (Docker): no task is no evidence there (`docker create`, an
    /// image builder's containers), so the state is asked instead ([`Tracker::take_to_ask`]).
    pub fn container_created_recording_refusals(&mut self, key: Key, now: DateTime<Utc>) -> bool {
        let new = self.container_created(key.clone(), now);
        if let Some(c) = self.store.get_mut(&key) {
            c.refusal_recorded = true;
        }
        new
    }

    /// Containers of a runtime that records refusals whose create window passed without a
    /// task while their verdict says they cannot run: their state says whether the start
    /// was refused (answered with [`Tracker::history`]). Each is asked once.
    pub fn take_to_ask(&mut self) -> Vec<Key> {
        std::mem::take(&mut self.to_ask)
    }

    /// A job (record read or inspection) for `key` started.
    pub fn job_started(&mut self, key: &Key) {
        if let Some(c) = self.store.get_mut(key) {
            c.in_flight = true;
        }
    }

    /// The job for `key` ended without an answer (it panicked): the container waits for the
    /// next reconcile.
    pub fn job_lost(&mut self, key: &Key) {
        if let Some(c) = self.store.get_mut(key) {
            c.in_flight = false;
        }
    }

    /// What the runtime remembers of a container first seen at reconcile with no task.
    /// Returns any diagnosis it settles (when the verdict is already known).
    pub fn history(&mut self, key: &Key, h: History) -> Vec<Diagnosis> {
        let window = self.windows.exit_window;
        let node = self.node.clone();
        let Some(c) = self.store.get_mut(key) else {
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
            History::StartFailed { at, exit_code } => {
                let exit = Exit {
                    signal: Signal::TaskNeverCreated,
                    exit_code,
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
        cache_key: Option<&CacheKey>,
    ) -> (bool, Vec<Diagnosis>) {
        let cached = cache_key.and_then(|k| self.cache.get(k));
        let node = self.node.clone();
        let Some(c) = self.store.get_mut(key) else {
            return (false, Vec::new());
        };
        c.who = who;
        c.in_flight = false;
        match cached {
            Some(i) => {
                c.judgement = Judgement::Known(i);
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
        self.store.get(key).is_some_and(|c| c.deleted)
    }

    /// Drops a container that was deleted while its verdict was pending, once the verdict
    /// has been used.
    pub fn reap_deleted(&mut self, key: &Key) {
        if self
            .store
            .get(key)
            .is_some_and(|c| c.deleted && !matches!(c.judgement, Judgement::Pending))
        {
            self.store.remove(key);
        }
    }

    /// Forgets every cached verdict (the binfmt_misc table changed, so they may be wrong).
    pub fn clear_cache(&mut self) {
        self.cache.clear();
    }

    /// Stops tracking without diagnosing (a sandbox, or gone while the agent was away).
    pub fn forget(&mut self, key: &Key) {
        self.store.remove(key);
        self.reported.remove(key);
    }

    /// Who a tracked container is and its verdict, when known.
    pub fn verdict(&self, key: &Key) -> Option<(&Identity, Arc<Inspection>)> {
        let c = self.store.get(key)?;
        match &c.judgement {
            Judgement::Known(i) => Some((&c.who, i.clone())),
            _ => None,
        }
    }

    /// Who a tracked container is.
    pub fn identity(&self, key: &Key) -> Option<&Identity> {
        self.store.get(key).map(|c| &c.who)
    }

    /// Whether an exec by runc's init in container `id`, from process `tgid`, is the
    /// container's first process starting (not a later `runc exec`): the container is not
    /// known, or has no running init, or that init is `tgid`.
    pub fn is_start_exec(&self, id: &str, tgid: u32) -> bool {
        match self.store.iter().find(|(k, _)| k.id == id) {
            None => true,
            Some((_, c)) => match c.init {
                Some(i) if i.running && i.pid != 0 => i.pid == tgid,
                _ => true,
            },
        }
    }

    /// Who a container is, by its id alone (in whichever namespace it is tracked): what a
    /// process's cgroup names.
    pub fn identity_by_id(&self, id: &str) -> Option<&Identity> {
        self.store
            .iter()
            .find(|(k, c)| k.id == id && !c.who.container_id.is_empty())
            .map(|(_, c)| &c.who)
    }

    /// After a full listing: what containerd no longer holds is forgotten (it went while
    /// the agent was away or disconnected), diagnosed or not, with every count it was in.
    /// Returns the listed containers to judge again: those whose record or snapshot could
    /// not be read, or whose job was lost; each is judged again once (it waits as pending,
    /// so that an exit listed now waits for that verdict).
    pub fn reconciled(&mut self, listed: &HashSet<Key>) -> Vec<Key> {
        self.reconciled_in(listed, |_| true)
    }

    /// [`Tracker::reconciled`] for one runtime: only keys `scope` accepts are its to prune
    /// and judge again (another runtime's containers are listed by that runtime).
    pub fn reconciled_in(
        &mut self,
        listed: &HashSet<Key>,
        scope: impl Fn(&Key) -> bool,
    ) -> Vec<Key> {
        // A container gone before its deferred retry: its failure is said now.
        for (k, c) in self.store.iter() {
            if scope(k) && !listed.contains(k) {
                if let Some(d) = &c.deferred {
                    self.gone_unjudged
                        .push((k.clone(), c.who.clone(), d.clone()));
                }
            }
        }
        self.store.retain(|k, _| !scope(k) || listed.contains(k));
        self.reported.retain(|k| !scope(k) || listed.contains(k));
        let mut again = Vec::new();
        for (k, c) in self.store.iter().filter(|(k, _)| scope(k)) {
            let unjudged = match c.judgement {
                Judgement::Pending => !c.in_flight,
                Judgement::Failed { retry } => retry,
                Judgement::Known(_) => false,
            };
            if unjudged && !c.retried && !c.deleted {
                again.push(k.clone());
            }
        }
        again.sort();
        for k in &again {
            if let Some(c) = self.store.get_mut(k) {
                c.retried = true;
                c.deferred = None;
                c.judgement = Judgement::Pending;
            }
        }
        again
    }

    /// The verdict for a container arrived (or could not be had: `Err(retry)`, where
    /// `retry` says the failure came from containerd rather than from the files).
    pub fn inspected(
        &mut self,
        key: &Key,
        cache_key: Option<&CacheKey>,
        result: Result<Arc<Inspection>, bool>,
    ) -> Vec<Diagnosis> {
        let result = match (cache_key, result) {
            (Some(k), Ok(i)) => Ok(self.cache.insert(*k, i)),
            (None, Ok(i)) => Ok(cache::capped(i)),
            (_, Err(retry)) => Err(retry),
        };
        let node = self.node.clone();
        let Some(c) = self.store.get_mut(key) else {
            return Vec::new();
        };
        c.in_flight = false;
        c.judgement = match result {
            Ok(i) => Judgement::Known(i),
            Err(retry) => Judgement::Failed { retry },
        };
        if !matches!(c.judgement, Judgement::Known(_)) {
            // An exit stays pending: a retry at the next reconcile may judge it.
            return Vec::new();
        }
        match c.pending.take() {
            Some(exit) => Self::decide(&node, c, &exit).into_iter().collect(),
            None => Vec::new(),
        }
    }

    pub fn task_created(&mut self, key: &Key) {
        if let Some(c) = self.store.get_mut(key) {
            c.task_created = true;
        }
    }

    /// Found running at reconcile: its init process `pid`.
    pub fn task_running(&mut self, key: &Key, pid: u32) {
        if let Some(c) = self.store.get_mut(key) {
            c.task_created = true;
            if pid != 0 {
                c.init = Some(Init { pid, running: true });
            }
        }
    }

    pub fn task_started(&mut self, key: &Key, at: DateTime<Utc>, pid: u32) {
        if let Some(c) = self.store.get_mut(key) {
            c.task_created = true;
            c.started_at = Some(at);
            c.init = Some(Init { pid, running: true });
        }
    }

    /// The pid of an init process that was started without one known: set while it runs
    /// (a pid learnt after its exit is not a running process).
    pub fn init_pid(&mut self, key: &Key, pid: u32) {
        if let Some(init) = self.store.get_mut(key).and_then(|c| c.init.as_mut()) {
            if init.running && init.pid == 0 {
                init.pid = pid;
            }
        }
    }

    /// The init process is gone: it no longer runs, nor counts as running under emulation.
    pub fn init_gone(&mut self, key: &Key) {
        if let Some(init) = self.store.get_mut(key).and_then(|c| c.init.as_mut()) {
            init.running = false;
        }
        self.store.uncount_emulated(key);
    }

    /// A container whose verdict is `emulated` that was not reported as such yet.
    pub fn emulation_check(&self, key: &Key) -> Option<EmulationCheck<'_>> {
        let c = self.store.get(key)?;
        let Judgement::Known(i) = &c.judgement else {
            return None;
        };
        if i.verdict != crate::inspect::Verdict::Emulated || c.emulation_noted {
            return None;
        }
        Some(EmulationCheck {
            who: &c.who,
            inspection: i.clone(),
            init: c.init,
            deleted: c.deleted,
        })
    }

    /// Containers reported as running under emulation whose init process runs but was not
    /// confirmed to run under the emulator (its exec may not have happened when its start
    /// was seen): each with the pid and verdict to confirm it by.
    pub fn unconfirmed_emulation(&self) -> Vec<(Key, u32, Arc<Inspection>)> {
        self.store
            .iter()
            .filter(|(_, c)| c.emulation_noted && c.emulated().is_none())
            .filter_map(|(k, c)| {
                let init = c.init.filter(|i| i.running && i.pid != 0)?;
                match &c.judgement {
                    Judgement::Known(i) if i.verdict == crate::inspect::Verdict::Emulated => {
                        Some((k.clone(), init.pid, i.clone()))
                    }
                    _ => None,
                }
            })
            .collect()
    }

    /// `key` was confirmed to run under the emulator: counted under `label`.
    pub fn emulation_confirmed(&mut self, key: &Key, label: &'static str) {
        self.store.count_emulated(key, label);
    }

    /// `key` was reported as running under emulation; counted under `label` when its init
    /// process was confirmed to run under the emulator.
    pub fn emulation_noted(&mut self, key: &Key, counted: Option<&'static str>) {
        if let Some(c) = self.store.get_mut(key) {
            c.emulation_noted = true;
        }
        if let Some(label) = counted {
            self.store.count_emulated(key, label);
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
        let Some(c) = self.store.get_mut(key) else {
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
        let Some(c) = self.store.get_mut(key) else {
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
        self.store.uncount_emulated(key);
        let Some(c) = self.store.get_mut(key) else {
            return Vec::new();
        };
        // A failure held back for a retry that will not come now: said
        // ([`Tracker::take_gone_unjudged`]).
        if let Some(d) = c.deferred.take() {
            self.gone_unjudged.push((key.clone(), c.who.clone(), d));
        }
        if c.refusal_recorded && !c.task_created {
            // Removed without ever running, on a runtime that would have recorded a refused
            // start: `docker create` + `rm`, or a builder's container. Nothing failed.
            self.store.remove(key);
            return Vec::new();
        }
        if matches!(c.judgement, Judgement::Pending) {
            // Its files are still being read (a fast `--rm` run): keep it until they are.
            if !c.task_created && c.pending.is_none() {
                c.pending = Some(never_created(now));
            }
            c.deleted = true;
            return Vec::new();
        }
        let d = if c.task_created || c.diagnosed {
            Vec::new()
        } else {
            Self::decide(&node, c, &never_created(now))
                .into_iter()
                .collect()
        };
        self.store.remove(key);
        d
    }

    /// Periodic: failing containers that never got a task within the create window.
    pub fn tick(&mut self, now: DateTime<Utc>) -> Vec<Diagnosis> {
        let window = self.windows.create_window;
        let node = self.node.clone();
        let mut out = Vec::new();
        let mut ask = Vec::new();
        for (k, c) in self.store.iter_mut() {
            let known = matches!(c.judgement, Judgement::Known(_));
            if known && !c.task_created && !c.diagnosed && now - c.created_at >= window {
                if c.refusal_recorded {
                    let fails =
                        matches!(&c.judgement, Judgement::Known(i) if !i.verdict.will_exec());
                    if fails && !c.asked {
                        c.asked = true;
                        ask.push(k.clone());
                    }
                    continue;
                }
                let exit = never_created(now);
                out.extend(Self::decide(&node, c, &exit));
            }
        }
        ask.sort();
        self.to_ask.extend(ask);
        out
    }

    /// Decides now if the verdict is known; otherwise the exit waits for it (the first
    /// exit seen is kept: an event's exit says more than a listing's).
    fn decide_or_wait(node: &str, c: &mut Record, exit: Exit) -> Vec<Diagnosis> {
        if !matches!(c.judgement, Judgement::Known(_)) {
            if c.pending.is_none() {
                c.pending = Some(exit);
            }
            return Vec::new();
        }
        Self::decide(node, c, &exit).into_iter().collect()
    }

    fn decide(node: &str, c: &mut Record, exit: &Exit) -> Option<Diagnosis> {
        if c.diagnosed {
            return None;
        }
        let Judgement::Known(i) = &c.judgement else {
            if c.pending.is_none() {
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
            binary_arch: None,
            ..Inspection::sample(v)
        })
    }

    fn key(id: &str) -> Key {
        Key {
            namespace: "k8s.io".into(),
            id: id.into(),
        }
    }

    fn ck(s: &str) -> CacheKey {
        CacheKey::new(s, &[], None, "/")
    }

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn exit_after_start_is_diagnosed_once() {
        let mut tr = Tracker::new("n", Windows::default());
        assert!(tr.container_created(key("a"), t(0)));
        assert!(!tr.container_created(key("a"), t(0)));
        assert!(
            tr.identified(&key("a"), Identity::default(), Some(&ck("k")))
                .0
        );
        assert!(tr
            .inspected(&key("a"), Some(&ck("k")), Ok(insp(V::ArchMismatch)))
            .is_empty());
        tr.task_created(&key("a"));
        tr.task_started(&key("a"), t(1), 1);
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
        tr.inspected(&key("ok"), None, Ok(insp(V::Ok)));
        tr.task_started(&key("ok"), t(0), 1);
        assert!(tr.task_exited(&key("ok"), "ok", 1, t(1)).is_empty());
        tr.container_created(key("late"), t(0));
        tr.inspected(&key("late"), None, Ok(insp(V::ArchMismatch)));
        tr.task_started(&key("late"), t(0), 1);
        assert!(tr.task_exited(&key("late"), "late", 1, t(3600)).is_empty());
    }

    #[test]
    fn exit_before_verdict_waits_for_it() {
        let mut tr = Tracker::new("n", Windows::default());
        tr.container_created(key("a"), t(0));
        tr.task_started(&key("a"), t(0), 1);
        assert!(tr.task_exited(&key("a"), "a", 1, t(0)).is_empty());
        assert!(
            tr.identified(&key("a"), Identity::default(), Some(&ck("k")))
                .0
        );
        let d = tr.inspected(&key("a"), Some(&ck("k")), Ok(insp(V::ScriptCrlf)));
        assert_eq!(d.len(), 1);
        // The next container of the same image + argv hits the cache, even when its exit
        // arrives before its record is read.
        tr.container_created(key("b"), t(5));
        tr.task_started(&key("b"), t(5), 1);
        assert!(tr.task_exited(&key("b"), "b", 1, t(5)).is_empty());
        let (need, d) = tr.identified(&key("b"), Identity::default(), Some(&ck("k")));
        assert!(!need);
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn refused_at_create_is_diagnosed_from_silence_or_delete() {
        let mut tr = Tracker::new("n", Windows::default());
        tr.container_created(key("gone"), t(0));
        tr.inspected(&key("gone"), None, Ok(insp(V::NotFound)));
        let d = tr.container_deleted(&key("gone"), t(1));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].signal, Signal::TaskNeverCreated);

        tr.container_created(key("stuck"), t(0));
        tr.inspected(&key("stuck"), None, Ok(insp(V::NotExecutable)));
        assert!(tr.tick(t(2)).is_empty(), "inside the window");
        assert_eq!(tr.tick(t(6)).len(), 1);
        assert!(tr.tick(t(7)).is_empty(), "once");

        tr.container_created(key("fine"), t(0));
        tr.inspected(&key("fine"), None, Ok(insp(V::Ok)));
        assert!(tr.tick(t(60)).is_empty());
    }

    #[test]
    fn a_container_deleted_before_its_verdict_is_still_diagnosed() {
        let mut tr = Tracker::new("n", Windows::default());
        // Ran, failed and was removed (ctr run --rm) before its files were read.
        tr.container_created(key("fast"), t(0));
        tr.task_started(&key("fast"), t(0), 1);
        assert!(tr.task_exited(&key("fast"), "fast", 1, t(0)).is_empty());
        assert!(tr.container_deleted(&key("fast"), t(0)).is_empty());
        tr.identified(&key("fast"), Identity::default(), None);
        let d = tr.inspected(&key("fast"), None, Ok(insp(V::ArchMismatch)));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].signal, Signal::TaskExit);
        tr.reap_deleted(&key("fast"));
        assert!(tr.is_empty());
        // Refused at create and removed before its files were read.
        tr.container_created(key("refused"), t(0));
        assert!(tr.container_deleted(&key("refused"), t(1)).is_empty());
        let d = tr.inspected(&key("refused"), None, Ok(insp(V::NotFound)));
        assert_eq!(d[0].signal, Signal::TaskNeverCreated);
    }

    #[test]
    fn uninspectable_containers_are_never_guessed() {
        let mut tr = Tracker::new("n", Windows::default());
        tr.container_created(key("x"), t(0));
        tr.task_started(&key("x"), t(0), 1);
        tr.task_exited(&key("x"), "x", 1, t(0));
        assert!(tr.inspected(&key("x"), None, Err(false)).is_empty());
    }

    #[test]
    fn stopped_before_watch_is_diagnosed_once() {
        let mut tr = Tracker::new("n", Windows::default());
        tr.container_created(key("a"), t(0));
        tr.inspected(&key("a"), None, Ok(insp(V::MissingLoader)));
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
        tr.inspected(&key("old"), None, Ok(insp(V::ArchMismatch)));
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
        let d = tr.inspected(&key("ran"), None, Ok(insp(V::ArchMismatch)));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].signal, Signal::StoppedBeforeWatch);
        assert_eq!(d[0].exit_code, Some(1));
        assert_eq!(d[0].exited_at, Some(t(1)));
        assert!(tr.tick(t(200)).is_empty());

        // Ran for an hour, then crashed: not an exec failure.
        tr.container_created(key("long"), t(100));
        tr.inspected(&key("long"), None, Ok(insp(V::ArchMismatch)));
        let h = History::Exited {
            started_at: Some(t(0)),
            finished_at: Some(t(3600)),
            exit_code: 1,
        };
        assert!(tr.history(&key("long"), h).is_empty());
        assert!(tr.tick(t(4000)).is_empty());

        // Its start was refused: task_never_created at once, no window to wait.
        tr.container_created(key("refused"), t(100));
        tr.inspected(&key("refused"), None, Ok(insp(V::NotFound)));
        let d = tr.history(
            &key("refused"),
            History::StartFailed {
                at: Some(t(2)),
                exit_code: None,
            },
        );
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].signal, Signal::TaskNeverCreated);
        assert!(tr.tick(t(200)).is_empty(), "once");
    }

    #[test]
    fn reconcile_prunes_every_bit_of_state_and_every_count() {
        let mut tr = Tracker::new("n", Windows::default());
        let mut emu = (*insp(V::Emulated)).clone();
        emu.binary_arch = Some(Arch::Arm64);
        for id in ["gone", "stays"] {
            tr.container_created(key(id), t(0));
            tr.inspected(&key(id), None, Ok(Arc::new(emu.clone())));
            tr.task_started(&key(id), t(1), 42);
            let check = tr
                .emulation_check(&key(id))
                .expect("emulated, not noted yet");
            assert_eq!(check.init.map(|i| i.pid), Some(42));
            tr.emulation_noted(&key(id), Some("arm64"));
            assert!(tr.emulation_check(&key(id)).is_none(), "noted once");
        }
        assert_eq!(tr.emulated().collect::<Vec<_>>(), vec![("arm64", 2)]);
        assert!(tr.unconfirmed_emulation().is_empty());
        // Noted before its process exec'd: confirmed later, counted then.
        tr.container_created(key("late"), t(0));
        tr.inspected(&key("late"), None, Ok(Arc::new(emu.clone())));
        tr.task_started(&key("late"), t(1), 43);
        tr.emulation_noted(&key("late"), None);
        let late = tr.unconfirmed_emulation();
        assert_eq!((late.len(), late[0].1), (1, 43));
        tr.emulation_confirmed(&key("late"), "arm64");
        assert!(tr.unconfirmed_emulation().is_empty());
        assert_eq!(tr.emulated().collect::<Vec<_>>(), vec![("arm64", 3)]);
        // "gone" and "late" were deleted while the agent was disconnected: no event ever comes for it.
        let again = tr.reconciled(&HashSet::from([key("stays")]));
        assert!(again.is_empty());
        assert_eq!(tr.len(), 1);
        assert!(!tr.knows(&key("gone")) && !tr.knows(&key("late")));
        assert_eq!(tr.emulated().collect::<Vec<_>>(), vec![("arm64", 1)]);
        // Its init exits: counted no more, though still tracked.
        tr.init_gone(&key("stays"));
        assert_eq!(tr.emulated().collect::<Vec<_>>(), vec![("arm64", 0)]);
        tr.reconciled(&HashSet::new());
        assert!(tr.is_empty());
    }

    #[test]
    fn what_a_dropped_connection_left_unjudged_is_judged_again_once() {
        let mut tr = Tracker::new("n", Windows::default());
        let all: HashSet<Key> = ["unread", "lost", "files", "busy", "fine"]
            .into_iter()
            .map(key)
            .collect();
        for k in &all {
            tr.container_created(k.clone(), t(0));
            tr.job_started(k);
        }
        // Its record could not be read (the connection dropped); its exit was seen.
        tr.task_started(&key("unread"), t(1), 7);
        assert!(tr.task_exited(&key("unread"), "unread", 1, t(1)).is_empty());
        assert!(tr.inspected(&key("unread"), None, Err(true)).is_empty());
        // Its job was lost.
        tr.job_lost(&key("lost"));
        // Its files could not be read: the same files would fail the same way.
        tr.inspected(&key("files"), None, Err(false));
        // Still being read; and one judged.
        tr.inspected(&key("fine"), None, Ok(insp(V::Ok)));

        let again = tr.reconciled(&all);
        assert_eq!(again, vec![key("lost"), key("unread")]);
        // The listing's stopped task does not replace the exit the event gave.
        assert!(tr
            .task_stopped_before_watch(&key("unread"), 1, Some(t(2)))
            .is_empty());
        for k in &again {
            tr.job_started(k);
        }
        assert!(tr.reconciled(&all).is_empty(), "under way: not twice");
        let d = tr.inspected(&key("unread"), None, Ok(insp(V::ArchMismatch)));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].signal, Signal::TaskExit);
        assert_eq!(d[0].exited_at, Some(t(1)));
        // The retry of "lost" fails too: once is all.
        tr.inspected(&key("lost"), None, Err(true));
        assert!(tr.reconciled(&all).is_empty(), "judged again once");
        assert!(tr.task_exited(&key("unread"), "unread", 1, t(3)).is_empty());
    }

    #[test]
    fn a_deferred_failure_is_said_once_only_if_the_retry_never_comes() {
        let mut tr = Tracker::new("n", Windows::default());
        let both: HashSet<Key> = [key("retried"), key("goes")].into_iter().collect();
        for k in &both {
            tr.container_created(k.clone(), t(0));
            tr.job_started(k);
            assert!(tr.will_retry(k));
            tr.inspected(k, None, Err(true));
            tr.defer_failure(k, "containerd_rpc", format!("{}: unavailable", k.id));
        }
        // "goes" is not listed any more: its failure is said now, once.
        let again = tr.reconciled(&HashSet::from([key("retried")]));
        assert_eq!(again, vec![key("retried")]);
        let gone = tr.take_gone_unjudged();
        assert_eq!(gone.len(), 1);
        assert_eq!(
            (gone[0].0.id.as_str(), gone[0].2.kind),
            ("goes", "containerd_rpc")
        );
        assert!(tr.take_gone_unjudged().is_empty());
        // A container deleted while its failure waits for the retry: said at once.
        tr.container_created(key("deleted"), t(0));
        tr.job_started(&key("deleted"));
        tr.inspected(&key("deleted"), None, Err(true));
        tr.defer_failure(&key("deleted"), "containerd_rpc", "unavailable".into());
        tr.container_deleted(&key("deleted"), t(1));
        let gone = tr.take_gone_unjudged();
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].0.id, "deleted");
        // "retried" is being judged again: a failure now is final (no second deferral),
        // and going away later says nothing more.
        assert!(!tr.will_retry(&key("retried")));
        tr.reconciled(&HashSet::new());
        assert!(tr.take_gone_unjudged().is_empty());
    }

    #[test]
    fn an_absurd_argv_costs_a_bounded_amount_in_the_tracker() {
        let mut tr = Tracker::new("n", Windows::default());
        let p = Process {
            argv: vec!["/app".into(), "a".repeat(1 << 20)],
            path_env: Some("p".repeat(1 << 20)),
            cwd: "/".into(),
            user: None,
        };
        let k = p.cache_key(&"sha256:".repeat(1000));
        assert_eq!(std::mem::size_of_val(&k), 32);
        let mut i = (*insp(V::ArchMismatch)).clone();
        i.argv = p.argv.clone();
        tr.container_created(key("a"), t(0));
        tr.inspected(&key("a"), Some(&k), Ok(Arc::new(i)));
        assert!(tr.cache_bytes() <= 2048, "{}", tr.cache_bytes());
        let (_, kept) = tr.verdict(&key("a")).unwrap();
        assert!(kept.argv.iter().map(String::len).sum::<usize>() <= 1024);
        assert!(Arc::ptr_eq(&kept, &tr.cached(&k).unwrap()), "one copy");
    }

    #[test]
    fn what_an_earlier_run_reported_survives_the_prune_before_the_records_are_made() {
        // The agent prunes first and creates the records of the listing after.
        let mut tr = Tracker::new("n", Windows::default());
        tr.already_reported([key("old"), key("gone")]);
        assert!(tr
            .reconciled(&HashSet::from([key("old"), key("new")]))
            .is_empty());
        assert_eq!(tr.reported_len(), 1, "only what is listed is kept");
        tr.container_created(key("old"), t(100));
        assert_eq!(tr.reported_len(), 0, "it went into the record");
        tr.inspected(&key("old"), None, Ok(insp(V::ArchMismatch)));
        assert!(tr
            .task_stopped_before_watch(&key("old"), 1, Some(t(0)))
            .is_empty());
    }
}
