//! One record per container, under one key: everything the agent knows of a container
//! (who it is, its verdict, its task, whether it runs under emulation) lives in its
//! [`Record`], and goes with it.
//!
//! Invariant: a record leaves only through [`Store::remove`] or [`Store::retain`], which
//! also take it out of the counts the gauges are set from ([`Store::emulated`]); nothing
//! outside this module can count a container, so a gauge cannot keep a container that is
//! gone.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::Key;
use crate::diagnose::{Exit, Identity};
use crate::inspect::Inspection;

/// What is known of a container's files.
#[derive(Clone, Debug)]
pub enum Judgement {
    /// Its record or files are being read (or were never asked for: see
    /// [`Record::in_flight`]).
    Pending,
    Known(Arc<Inspection>),
    /// Could not be inspected: never diagnosed (we do not guess). `retry`: the failure came
    /// from containerd (record, spec or snapshot unreadable), not from the files, so a later
    /// reconcile may do better.
    Failed {
        retry: bool,
    },
}

/// The init process, once seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Init {
    pub pid: u32,
    /// Still running (no `/tasks/exit` for it yet).
    pub running: bool,
}

/// Why a container could not be judged, held back while a retry is due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deferred {
    /// A code of `archwatch_inspection_errors_total{kind}`.
    pub kind: &'static str,
    pub detail: String,
}

/// Everything known of one container.
#[derive(Clone, Debug)]
pub struct Record {
    pub who: Identity,
    pub created_at: DateTime<Utc>,
    pub judgement: Judgement,
    pub task_created: bool,
    pub started_at: Option<DateTime<Utc>>,
    /// An exit that waits for the verdict.
    pub pending: Option<Exit>,
    pub diagnosed: bool,
    /// Deleted before its verdict arrived: kept until then so the failure is not lost.
    pub deleted: bool,
    pub init: Option<Init>,
    /// Reported as running under emulation (journal line, Event): said once.
    pub emulation_noted: bool,
    /// A job (record read or inspection) for it is under way.
    pub in_flight: bool,
    /// Judged again at a reconcile already (a retry is made once).
    pub retried: bool,
    /// A lookup failure held back until the retry at the next reconcile.
    pub deferred: Option<Deferred>,
    /// Its runtime records a refused start in the container's state (Docker): a missing
    /// task proves nothing until that state is asked.
    pub refusal_recorded: bool,
    /// That state was asked for.
    pub asked: bool,
    /// Counted in `containers_emulated` under this label; only the store sets it.
    emulated: Option<&'static str>,
}

impl Record {
    pub fn new(created_at: DateTime<Utc>, diagnosed: bool) -> Record {
        Record {
            who: Identity::default(),
            created_at,
            judgement: Judgement::Pending,
            task_created: false,
            started_at: None,
            pending: None,
            diagnosed,
            deleted: false,
            init: None,
            emulation_noted: false,
            in_flight: false,
            retried: false,
            deferred: None,
            refusal_recorded: false,
            asked: false,
            emulated: None,
        }
    }

    /// The label it is counted under in `containers_emulated`, if it is.
    pub fn emulated(&self) -> Option<&'static str> {
        self.emulated
    }
}

/// The records, by key, and the counts derived from them.
#[derive(Default)]
pub struct Store {
    records: HashMap<Key, Record>,
    /// Containers counted as running under emulation, by arch label. A label once counted
    /// stays (at 0), so its gauge series goes to 0 rather than vanishing.
    emulated: BTreeMap<&'static str, usize>,
}

impl Store {
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn contains(&self, key: &Key) -> bool {
        self.records.contains_key(key)
    }

    pub fn get(&self, key: &Key) -> Option<&Record> {
        self.records.get(key)
    }

    pub fn get_mut(&mut self, key: &Key) -> Option<&mut Record> {
        self.records.get_mut(key)
    }

    /// Adds a record unless the key has one; `false` when it had.
    pub fn insert(&mut self, key: Key, r: Record) -> bool {
        if self.records.contains_key(&key) {
            return false;
        }
        debug_assert!(r.emulated.is_none());
        self.records.insert(key, r);
        true
    }

    pub fn remove(&mut self, key: &Key) -> Option<Record> {
        let r = self.records.remove(key)?;
        self.uncount(r.emulated);
        Some(r)
    }

    /// Keeps the records for which `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&Key, &Record) -> bool) {
        let mut gone = Vec::new();
        self.records.retain(|k, r| {
            let k = keep(k, r);
            if !k {
                gone.push(r.emulated);
            }
            k
        });
        for label in gone {
            self.uncount(label);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Record)> {
        self.records.iter()
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Record> {
        self.records.values_mut()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&Key, &mut Record)> {
        self.records.iter_mut()
    }

    /// Counts `key` as running under emulation under `label` (once).
    pub fn count_emulated(&mut self, key: &Key, label: &'static str) {
        let Some(r) = self.records.get_mut(key) else {
            return;
        };
        if r.emulated.is_some() {
            return;
        }
        r.emulated = Some(label);
        *self.emulated.entry(label).or_default() += 1;
    }

    /// `key` no longer runs under emulation (its init process is gone).
    pub fn uncount_emulated(&mut self, key: &Key) {
        let label = self.records.get_mut(key).and_then(|r| r.emulated.take());
        self.uncount(label);
    }

    fn uncount(&mut self, label: Option<&'static str>) {
        if let Some(n) = label.and_then(|l| self.emulated.get_mut(l)) {
            *n = n.saturating_sub(1);
        }
    }

    /// Containers running under emulation, by arch label (labels once counted stay, at 0).
    pub fn emulated(&self) -> impl Iterator<Item = (&'static str, usize)> + '_ {
        self.emulated.iter().map(|(l, n)| (*l, *n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> Key {
        Key {
            namespace: "k8s.io".into(),
            id: id.into(),
        }
    }

    fn counts(s: &Store) -> Vec<(&'static str, usize)> {
        s.emulated().collect()
    }

    /// The counts always equal what the records say.
    fn consistent(s: &Store) {
        for (label, n) in s.emulated() {
            let held = s
                .iter()
                .filter(|(_, r)| r.emulated() == Some(label))
                .count();
            assert_eq!(held, n, "{label}");
        }
    }

    #[test]
    fn every_way_out_of_the_store_takes_the_container_out_of_the_counts() {
        let mut s = Store::default();
        for id in ["a", "b", "c", "d"] {
            assert!(s.insert(key(id), Record::new(Utc::now(), false)));
            s.count_emulated(&key(id), "arm64");
        }
        assert!(
            !s.insert(key("a"), Record::new(Utc::now(), false)),
            "one key, one record"
        );
        s.count_emulated(&key("a"), "arm64");
        s.count_emulated(&key("unknown"), "arm64");
        assert_eq!(counts(&s), vec![("arm64", 4)], "once each, known keys only");
        consistent(&s);

        s.uncount_emulated(&key("a"));
        s.uncount_emulated(&key("a"));
        assert_eq!(counts(&s), vec![("arm64", 3)]);
        assert!(s.remove(&key("b")).is_some());
        assert_eq!(counts(&s), vec![("arm64", 2)]);
        // A reconcile: containerd lists only "a".
        s.retain(|k, _| k.id == "a");
        assert_eq!(counts(&s), vec![("arm64", 0)], "the label stays, at 0");
        assert_eq!(s.len(), 1);
        consistent(&s);
    }
}
