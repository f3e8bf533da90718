//! Containers that run only under a binfmt_misc emulator: said once (log, Event, journal)
//! when the verdict and the start are both known, confirmed from `/proc/<pid>/exe`, and
//! counted in `containers_emulated` while their init process runs. The count lives in the
//! containers' records (`pipeline::store`), so a container that goes, however it goes,
//! leaves the gauge.

use chrono::Utc;
use tracing::info;

use crate::agent::pipeline::Pipeline;
use crate::agent::report::Record;
use crate::inspect::Inspection;
use crate::pipeline::Key;
use crate::sinks::{kube_events, metrics};

impl Pipeline {
    /// A container that will run only under emulation: said once, when its verdict lands
    /// and its init process started (or it was deleted); counted in `containers_emulated`
    /// while its init process is confirmed to run under the emulator.
    pub(crate) fn note_emulated(&mut self, key: &Key) {
        let Some(check) = self.tracker.emulation_check(key) else {
            return;
        };
        if check.init.is_none() && !check.deleted {
            // Not started yet: decide at /tasks/start.
            return;
        }
        let who = check.who.clone();
        let i = check.inspection;
        let pid = check
            .init
            .filter(|t| t.running && t.pid != 0)
            .map(|t| t.pid);
        let confirmed_by = pid.and_then(|p| self.confirm_emulation(p, &i));
        let counted = confirmed_by.is_some().then(|| emulated_label(&i));
        self.tracker.emulation_noted(key, counted);
        info!(
            namespace = who.namespace(),
            pod = who.pod.as_deref().unwrap_or(""),
            container = who.container.as_deref().unwrap_or(&who.container_id),
            handler = i.handler.as_deref().unwrap_or(""),
            "Container runs under emulation: {}",
            i.cause
        );
        if let Some(ev) = &self.sinks.events {
            if let Some(spec) =
                kube_events::for_pod(&who, i.verdict.event_reason(), &i.cause, &i.fix, Utc::now())
            {
                ev.push(spec);
            }
        }
        let node = self.cfg.node_name.clone();
        self.sinks.write(&Record::Emulated {
            diagnosed_at: Utc::now(),
            node: &node,
            identity: &who,
            argv: &i.argv,
            verdict: i.verdict,
            reason: i.verdict.event_reason(),
            handler: i.handler.as_deref(),
            confirmed_by,
            binary_arch: i.binary_arch.map(|a| a.to_string()),
            node_arch: i.node_arch.to_string(),
            cause: &i.cause,
            fix: &i.fix,
            fix_code: i.fix_code,
        });
    }

    /// Confirms from the running process: under binfmt_misc its exe is the emulator.
    /// Returns what shows it.
    fn confirm_emulation(&self, pid: u32, i: &Inspection) -> Option<String> {
        let interpreter = i.handler.as_deref().and_then(|h| {
            self.binfmt
                .borrow()
                .handlers
                .iter()
                .find(|x| x.name == h)
                .map(|x| x.interpreter.clone())
        });
        let exe = std::fs::read_link(self.cfg.proc_dir.join(pid.to_string()).join("exe")).ok()?;
        let exe = exe
            .to_string_lossy()
            .trim_end_matches(" (deleted)")
            .to_string();
        let base = |s: &str| s.rsplit('/').next().unwrap_or(s).to_string();
        let matches = interpreter
            .as_deref()
            .is_some_and(|int| base(int) == base(&exe))
            || base(&exe).contains("qemu");
        matches.then(|| format!("/proc/{pid}/exe -> {exe}"))
    }

    /// Periodic: a container reported before its process had exec'd (its exe was still the
    /// runtime's) is counted once the emulator shows.
    pub(crate) fn confirm_pending_emulation(&mut self) {
        for (key, pid, i) in self.tracker.unconfirmed_emulation() {
            if self.confirm_emulation(pid, &i).is_some() {
                self.tracker.emulation_confirmed(&key, emulated_label(&i));
            }
        }
    }

    /// `containers_emulated` from the records: a container that is gone counts no more,
    /// however it went.
    pub(crate) fn sync_emulated_gauge(&self) {
        for (label, n) in self.tracker.emulated() {
            self.sinks
                .metrics
                .containers_emulated
                .get_or_create(&metrics::ArchLabels {
                    binary_arch: label.into(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// The `binary_arch` label a container running under emulation is counted under.
fn emulated_label(i: &Inspection) -> &'static str {
    i.binary_arch.map(|a| a.label()).unwrap_or("unknown")
}
