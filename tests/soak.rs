//! Soak: the agent through simulated hours of a node that misbehaves, with the invariants an
//! SRE relies on checked at the end. Its own test binary (`cargo test --test soak`).
//!
//! Three parts, each a test:
//!
//! - **node** (`node_soak_through_faults`): real components. A lab containerd with its CRI
//!   plugin driven as the kubelet drives it (support/cri.rs), pods in CrashLoopBackOff on a
//!   clock `ARCHWATCH_SOAK_SCALE` times faster than the wall (back-off, container GC, pod
//!   replacement and the API server's `--event-ttl` follow it), the agent binary with its
//!   journal on one path across restarts, Kubernetes Events to the fake API server behind a
//!   switch that takes it down, and a `--binfmt-dir` that flaps. Every simulated hour:
//!   containerd SIGKILLed and restarted, the API server refusing connections, then hanging
//!   with every Event expired when it is back; the agent itself restarted (SIGTERM, then
//!   SIGKILL) in the first two hours and every twelfth after. The agent's own timers (Event
//!   rate limits, reconnect back-off, binfmt re-read) keep the wall's time.
//! - **load** (`load_fifty_failures_a_second_through_faults`): 50 failing containers a
//!   second, a recorded containerd stream replayed through the whole agent in this process
//!   (archwatch::replay), the agent restarted half-way on the same journal, the API server
//!   refusing or hanging 4 s at a time, the binfmt table flapping.
//! - **events** (`one_crashlooping_pod_event_writes_per_hour`): the agent's Events publisher
//!   for one pod crash-looping for 3 simulated hours, with the agent's rate limits and a 1 h
//!   `--event-ttl`, both scaled like the clock; once without faults and once with the API
//!   server down for longer than the TTL.
//!
//! CI runs the short version (under 3 minutes on 2 cores). For hours:
//! `ARCHWATCH_SOAK_SECS=14400 ARCHWATCH_SOAK_LOAD_SECS=600 cargo test --release --test soak -- --nocapture`
//! (`ARCHWATCH_SOAK_SECS`: wall seconds of the node part, default 75;
//! `ARCHWATCH_SOAK_SCALE`: simulated seconds per wall second, default 120;
//! `ARCHWATCH_SOAK_LOAD_SECS`: default 30; `ARCHWATCH_SOAK_EVENT_SCALE`: default 360;
//! `ARCHWATCH_SOAK_HUNG_FOR_GOOD`, default 1: the connections a hang held stay open and
//! silent after it, which only the agent's request timeout gets out of; 0 closes them).

#[path = "integration/support/mod.rs"]
mod support;

#[path = "soak/binfmt.rs"]
mod binfmt;
#[path = "soak/kubelet.rs"]
mod kubelet;
#[path = "soak/measure.rs"]
mod measure;
#[path = "soak/switch.rs"]
mod switch;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use archwatch::oci::{ImageSpec, Item, Layer};
use tokio_util::sync::CancellationToken;

use kubelet::{Clock, Kubelet, Role};
use measure::{JournalTail, Life};
use support::agent::Agent;
use support::cri::{Container, CriLab};
use support::fake_api::FakeApi;
use switch::{Mode, Switch};

/// `name` from the environment, else `default`.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The load part measures this process's memory: it does not run beside the node part,
/// whose harness lives in this process too.
fn order() -> &'static RwLock<()> {
    static LOCK: RwLock<()> = RwLock::new(());
    &LOCK
}

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").parse().unwrap()
}

fn write_kubeconfig(dir: &Path, url: &str) -> PathBuf {
    let p = dir.join(format!("{}.kubeconfig", support::unique("soak")));
    std::fs::write(&p, support::fake_api::kubeconfig(url)).unwrap();
    p
}

/// The handler of this machine's binfmt_misc that would run an arm64 binary, if another
/// process registered one: the wrong-arch containers would then not fail.
fn host_runs_arm64() -> Option<String> {
    let (t, _) = archwatch::binfmt::Table::read_dir(Path::new("/proc/sys/fs/binfmt_misc")).ok()?;
    let bin = support::busybox("arm64");
    t.matching(&bin[..archwatch::binfmt::BINPRM_BUF_SIZE], "/app")
        .map(|h| h.name.clone())
}

fn assert_host_fails_arm64() {
    if let Some(h) = host_runs_arm64() {
        panic!("this machine's binfmt_misc handler {h:?} runs arm64 binaries (another process registered it): the wrong-arch containers would not fail; run the soak once it is gone");
    }
}

fn mib(kib: f64) -> f64 {
    kib / 1024.0
}

/// An arm64 entrypoint: every container of it dies with `exec format error` here.
fn wrong_arch() -> ImageSpec {
    ImageSpec::new(
        "arm64",
        &["/app", "serve"],
        vec![Layer(vec![Item::file(
            "/app",
            support::busybox("arm64"),
            0o755,
        )])],
    )
}

fn native() -> ImageSpec {
    ImageSpec::new(
        "amd64",
        &["/bin/busybox", "true"],
        vec![Layer(vec![Item::file(
            "/bin/busybox",
            support::busybox("amd64"),
            0o755,
        )])],
    )
}

/// The Event objects the API server holds now.
fn live_events(api: &FakeApi) -> Vec<serde_json::Value> {
    api.store.lock().unwrap().events()
}

/// Every Event expires, as after an outage longer than `--event-ttl`.
fn expire_events(api: &FakeApi) -> usize {
    let mut s = api.store.lock().unwrap();
    let ttl = std::mem::replace(&mut s.ttl, Duration::ZERO);
    std::thread::sleep(Duration::from_millis(2));
    let before = s.objects.len();
    let _ = s.events();
    s.ttl = ttl;
    before - s.objects.len()
}

fn event_of<'a>(
    events: &'a [serde_json::Value],
    pod: &str,
    reason: &str,
) -> Option<&'a serde_json::Value> {
    events
        .iter()
        .find(|e| e["regarding"]["name"] == pod && e["reason"] == reason)
}

/// When the Event last saw an occurrence: its series', else its own time.
fn last_observed(e: &serde_json::Value) -> Option<chrono::DateTime<chrono::Utc>> {
    e["series"]["lastObservedTime"]
        .as_str()
        .or(e["eventTime"].as_str())
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
}

// ---------------------------------------------------------------------------------------
// node

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    ContainerdRestart,
    ApiRefuses,
    AgentRestart,
    ApiHangsEventsExpire,
}

/// When each fault comes in every simulated hour (minutes past the hour).
const HOURLY: [(f64, Fault); 4] = [
    (5.0, Fault::ContainerdRestart),
    (15.0, Fault::ApiRefuses),
    (25.0, Fault::AgentRestart),
    (35.0, Fault::ApiHangsEventsExpire),
];
/// An API server outage, and the agent's downtime at a restart (simulated minutes).
const OUTAGE_MIN: f64 = 6.0;
const AGENT_DOWN_MIN: f64 = 2.0;
/// No fault starts in the last minutes: every pod crashes again after the last one.
const QUIET_MIN: f64 = 20.0;
/// An agent killed within this long after an exit may not have journaled it yet.
const JOURNAL_GRACE: f64 = 1.0;

enum AgentState {
    Up(Agent),
    Starting(Agent, f64),
    Down { restart_at: f64 },
}

/// The agents of the run: one at a time, on one journal; when each was watching.
struct Agents {
    journal: PathBuf,
    extra: Vec<String>,
    state: AgentState,
    /// Wall intervals in which an agent was connected and reconciled.
    watched: Vec<(f64, f64)>,
    watching_since: Option<f64>,
    lives: Vec<Life>,
    restarts: u32,
    /// After a containerd restart: the reconnect count that says the agent is back.
    awaiting_reconnect: Option<(f64, f64)>,
    reconnects: Vec<f64>,
    exit_codes: Vec<Option<i32>>,
}

impl Agents {
    fn spawn(&mut self, socket: &Path, now: f64) -> Agent {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let a = Agent::start_with_journal(socket, Some(&self.journal), &extra, &[]);
        self.lives.push(Life::new(a.pid()));
        let _ = now;
        a
    }

    fn agent(&self) -> Option<&Agent> {
        match &self.state {
            AgentState::Up(a) | AgentState::Starting(a, _) => Some(a),
            AgentState::Down { .. } => None,
        }
    }

    fn stop_watching(&mut self, now: f64) {
        if let Some(s) = self.watching_since.take() {
            self.watched.push((s, now));
        }
    }

    /// Advances restarts and reconnects; never blocks for long.
    fn poll(&mut self, socket: &Path, now: f64) {
        match std::mem::replace(&mut self.state, AgentState::Down { restart_at: 0.0 }) {
            AgentState::Down { restart_at } if now >= restart_at => {
                let a = self.spawn(socket, now);
                self.state = AgentState::Starting(a, now + 30.0);
            }
            AgentState::Starting(a, deadline) => {
                if a.get("/readyz").is_some_and(|(c, _)| c == 200) {
                    self.watching_since = Some(now);
                    self.state = AgentState::Up(a);
                } else {
                    assert!(
                        now < deadline,
                        "the restarted agent was not ready within 30 s; its log:\n{}",
                        a.log_text()
                    );
                    self.state = AgentState::Starting(a, deadline);
                }
            }
            other => self.state = other,
        }
        if let (Some((target, deadline)), AgentState::Up(a)) =
            (self.awaiting_reconnect, &self.state)
        {
            if a.metric("archwatch_containerd_reconnects_total", &[]) >= target {
                self.awaiting_reconnect = None;
                self.watching_since = Some(now);
                self.reconnects.push(now);
            } else {
                assert!(
                    now < deadline,
                    "the agent did not reconnect to containerd within 30 s; its log:\n{}",
                    a.log_text()
                );
            }
        }
    }

    /// SIGTERM (drains, exits 0) or SIGKILL; the next agent starts after `down` seconds.
    fn restart(&mut self, now: f64, down: f64) {
        let AgentState::Up(mut a) = std::mem::replace(
            &mut self.state,
            AgentState::Down {
                restart_at: now + down,
            },
        ) else {
            panic!("an agent restart while no agent was up");
        };
        self.stop_watching(now);
        if self.restarts % 2 == 0 {
            self.exit_codes.push(a.stop());
        } else {
            a.kill();
        }
        self.restarts += 1;
    }

    fn sample(&mut self, t0: Instant) {
        if matches!(self.state, AgentState::Up(_)) {
            if let Some(l) = self.lives.last_mut() {
                l.sample(t0);
            }
        }
    }

    /// A failure the agents could have seen: some agent was watching when it died (and
    /// long enough after to journal it), or became ready while its container still existed.
    fn saw(&self, a: &kubelet::Attempt) -> bool {
        let removed = a.removed.unwrap_or(f64::INFINITY);
        let mut intervals = self.watched.clone();
        if let Some(s) = self.watching_since {
            intervals.push((s, f64::INFINITY));
        }
        intervals.iter().any(|(from, to)| {
            (*from > a.died && *from < removed)
                || (*from <= a.died && *to >= a.died + JOURNAL_GRACE)
        })
    }
}

#[test]
fn node_soak_through_faults() {
    let _order = order().read().unwrap_or_else(|e| e.into_inner());
    let _binfmt = support::binfmt_shared();
    let secs: f64 = env_or("ARCHWATCH_SOAK_SECS", 75.0);
    let scale: f64 = env_or("ARCHWATCH_SOAK_SCALE", 120.0);
    assert_host_fails_arm64();
    let work = tempfile::tempdir().unwrap();

    let mut lab = CriLab::start();
    let wrong = lab.push("soak/wrong-arch", &wrong_arch());
    let native = lab.push("soak/native", &native());
    lab.pull(&wrong);
    lab.pull(&native);

    // The API server keeps Events `--event-ttl` (1 h) after their last write, on the clock.
    let ttl = Duration::from_secs_f64(3600.0 / scale);
    let (api, api_url) = FakeApi::start_stateful(ttl);
    let switch = Switch::start(addr_of(&api_url));
    // Connections a hang held stay silent for good (a half-open connection): only the
    // agent's request timeout gets it out of that. On by default; 0 lets them close.
    let hung_for_good = env_or("ARCHWATCH_SOAK_HUNG_FOR_GOOD", 1u8) == 1;
    switch.keep_hung(hung_for_good);
    let kubeconfig = write_kubeconfig(work.path(), &switch.url());
    let mut flapper = binfmt::Flapper::new(true);
    let journal = work.path().join("journal.jsonl");
    let mut agents = Agents {
        journal: journal.clone(),
        extra: vec![
            "--kube".into(),
            "auto".into(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--binfmt-dir".into(),
            flapper.dir().display().to_string(),
            // The 30 s default, on the clock (at least the flag's 1 s).
            format!(
                "--kube-request-timeout-secs={}",
                (30.0 / scale).ceil().max(1.0)
            ),
        ],
        state: AgentState::Down { restart_at: 0.0 },
        watched: Vec::new(),
        watching_since: None,
        lives: Vec::new(),
        restarts: 0,
        awaiting_reconnect: None,
        reconnects: Vec::new(),
        exit_codes: Vec::new(),
    };
    let socket = lab.socket.clone();
    let clock = Clock {
        t0: Instant::now(),
        scale,
    };
    let first = agents.spawn(&socket, 0.0);
    first.wait_ready();
    agents.watching_since = Some(clock.now());
    agents.state = AgentState::Up(first);

    let mut kubelet = Kubelet::new(lab, clock, "soak");
    // A healthy pod all along, a native crash loop that is no exec failure, and three
    // wrong-arch pods replaced after 21 attempts (their first ones after 8, 14 and 20, so
    // the replacements are spread out).
    let healthy = kubelet.lab.run_pod("web", "soak");
    kubelet.lab.run_until_running(
        &healthy,
        &Container::new("web", &native).command(&["/bin/busybox", "sleep", "86400"]),
    );
    kubelet.crash_loop(
        "batch",
        Container::new("job", &native).command(&["/bin/busybox", "false"]),
        Role::Flaky,
        u32::MAX,
    );
    for (name, life) in [("checkout", 8), ("billing", 14), ("search", 20)] {
        kubelet.crash_loop(name, Container::new("app", &wrong), Role::WrongArch, life);
    }
    const LIFE: u32 = 21;

    let end_sim = secs * scale;
    let mut next_fault = (0u32, 0usize);
    let mut api_back: Option<(f64, bool)> = None;
    let mut faults: BTreeMap<&'static str, u32> = BTreeMap::new();
    let mut expired = 0usize;
    let mut containerd_restart_wall = Vec::new();
    let mut next_flap = 2.5;
    let mut next_sample = 0.0;
    let mut tail = JournalTail::new(&journal);
    let mut next_tail = 2.0;
    while clock.now() < secs {
        let now = clock.now();
        // Faults, on the simulated clock.
        let (hour, i) = next_fault;
        let (minute, fault) = HOURLY[i];
        let at = (f64::from(hour) * 60.0 + minute) * 60.0;
        if clock.sim() >= at {
            next_fault = if i + 1 == HOURLY.len() {
                (hour + 1, 0)
            } else {
                (hour, i + 1)
            };
            let quiet = at + QUIET_MIN * 60.0 > end_sim;
            let agent_up =
                matches!(agents.state, AgentState::Up(_)) && agents.awaiting_reconnect.is_none();
            let restart_hour = hour < 2 || hour % 12 == 0;
            if !quiet && agent_up && api_back.is_none() {
                let name = match fault {
                    Fault::ContainerdRestart => {
                        agents.stop_watching(now);
                        let target = agents
                            .agent()
                            .map(|a| a.metric("archwatch_containerd_reconnects_total", &[]))
                            .unwrap_or(0.0)
                            + 1.0;
                        containerd_restart_wall.push(kubelet.restart_containerd());
                        agents.awaiting_reconnect = Some((target, clock.now() + 30.0));
                        "containerd SIGKILLed and restarted"
                    }
                    Fault::ApiRefuses => {
                        switch.set(Mode::Refuse);
                        api_back = Some((now + clock.wall(OUTAGE_MIN * 60.0), false));
                        "API server refusing connections"
                    }
                    Fault::ApiHangsEventsExpire => {
                        switch.set(Mode::Silent);
                        api_back = Some((now + clock.wall(OUTAGE_MIN * 60.0), true));
                        "API server hanging, Events expired"
                    }
                    Fault::AgentRestart if restart_hour => {
                        let how = if agents.restarts % 2 == 0 {
                            "agent restarted (SIGTERM)"
                        } else {
                            "agent restarted (SIGKILL)"
                        };
                        agents.restart(now, clock.wall(AGENT_DOWN_MIN * 60.0));
                        how
                    }
                    Fault::AgentRestart => "",
                };
                if !name.is_empty() {
                    *faults.entry(name).or_default() += 1;
                }
            }
        }
        if let Some((back, expire)) = api_back {
            if now >= back {
                if expire {
                    expired += expire_events(&api);
                }
                switch.set(Mode::Up);
                api_back = None;
            }
        }
        if now >= next_flap {
            flapper.flap();
            next_flap = now + 2.5;
        }
        agents.poll(&socket, clock.now());
        if now >= next_sample {
            agents.sample(clock.t0);
            next_sample = now + 0.5;
        }
        if now >= next_tail {
            tail.poll();
            next_tail = now + 2.0;
        }
        if !kubelet.step(LIFE) {
            std::thread::sleep(Duration::from_secs_f64(kubelet.due_in().min(0.02)));
        }
    }
    let ran = clock.now();
    assert!(
        matches!(agents.state, AgentState::Up(_)) && agents.awaiting_reconnect.is_none(),
        "the run ended with the agent not back"
    );
    switch.set(Mode::Up);

    // Settle: every failure a watching agent could see is journaled, and every pod still
    // crash-looping has the Event of its last failure's reason.
    // The pods crash-looping now (a pod replaced at the very end has not failed yet).
    let wrong_pods: Vec<String> = kubelet
        .pods(Role::WrongArch)
        .into_iter()
        .filter(|p| kubelet.attempts.iter().any(|a| a.pod == *p))
        .collect();
    let expected: Vec<&kubelet::Attempt> = kubelet
        .attempts
        .iter()
        .filter(|a| a.role == Role::WrongArch)
        .collect();
    let seen: Vec<&kubelet::Attempt> = expected.iter().copied().filter(|a| agents.saw(a)).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        tail.poll();
        let by = tail.by_container();
        if seen.iter().all(|a| by.contains_key(a.id.as_str())) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let latest = |tail: &JournalTail, pod: &str| {
        tail.lines
            .iter()
            .filter(|l| l.kind == "exec_failure" && l.pod == pod)
            .max_by_key(|l| l.exited_at)
            .cloned()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut missing_events: Vec<String>;
    loop {
        let events = live_events(&api);
        missing_events = wrong_pods
            .iter()
            .filter(|p| latest(&tail, p).is_none_or(|l| event_of(&events, p, &l.reason).is_none()))
            .cloned()
            .collect();
        if missing_events.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        tail.poll();
    }
    std::thread::sleep(Duration::from_millis(500));
    tail.poll();
    agents.sample(clock.t0);
    let events = live_events(&api);
    let AgentState::Up(mut last) = std::mem::replace(
        &mut agents.state,
        AgentState::Down {
            restart_at: f64::INFINITY,
        },
    ) else {
        unreachable!()
    };
    let metrics = last.metrics();
    let kube = |r: &str| {
        support::agent::metric_value(&metrics, "archwatch_kube_events_total", &[("result", r)])
    };
    let up_to_date = wrong_pods
        .iter()
        .filter(|p| {
            latest(&tail, p).is_some_and(|l| {
                event_of(&events, p, &l.reason)
                    .and_then(last_observed)
                    .map(|t| t.timestamp_micros())
                    == l.exited_at.map(|t| t.timestamp_micros())
            })
        })
        .count();
    agents.exit_codes.push(last.stop());

    // The figures.
    let by = tail.by_container();
    let failures_in = expected.len();
    let journaled = expected
        .iter()
        .filter(|a| by.contains_key(a.id.as_str()))
        .count();
    let duplicates: Vec<(&str, usize)> = by
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(k, v)| (*k, v.len()))
        .collect();
    let expected_ids: HashSet<&str> = expected.iter().map(|a| a.id.as_str()).collect();
    let extras: Vec<&str> = by
        .keys()
        .copied()
        .filter(|id| !expected_ids.contains(id))
        .collect();
    let missed: Vec<&kubelet::Attempt> = seen
        .iter()
        .copied()
        .filter(|a| !by.contains_key(a.id.as_str()))
        .collect();
    let unwatched: Vec<&kubelet::Attempt> = expected
        .iter()
        .copied()
        .filter(|a| !agents.saw(a))
        .collect();
    let unwatched_journaled = unwatched
        .iter()
        .filter(|a| by.contains_key(a.id.as_str()))
        .count();
    let inspection_failed = tail
        .lines
        .iter()
        .filter(|l| l.kind == "inspection_failed")
        .count();
    let mut verdicts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut signals: BTreeMap<&str, usize> = BTreeMap::new();
    for l in tail.lines.iter().filter(|l| l.kind == "exec_failure") {
        *verdicts.entry(l.verdict.as_str()).or_default() += 1;
        *signals.entry(l.signal.as_str()).or_default() += 1;
    }
    let mut image_lines: HashMap<(&str, &str), usize> = HashMap::new();
    for l in tail.lines.iter().filter(|l| l.kind == "image") {
        *image_lines
            .entry((l.digest.as_str(), l.verdict.as_str()))
            .or_default() += 1;
    }
    let flaky = kubelet
        .attempts
        .iter()
        .filter(|a| a.role == Role::Flaky && a.failed)
        .count();
    let sim_hours = ran * scale / 3600.0;
    println!(
        "node: {ran:.0} s wall x {scale} = {sim_hours:.2} simulated hours; containerd {}; {} pods replaced",
        kubelet.lab.version(),
        kubelet.replaced
    );
    println!(
        "node: faults {faults:?}; {expired} Events expired; binfmt table changed {} times",
        flapper.changes()
    );
    println!(
        "node: failures in {failures_in} (+{flaky} native crashes that are no exec failure); journaled {journaled}; duplicates {}; extra lines {}; inspection_failed {inspection_failed}; watched but not journaled {}",
        duplicates.len(),
        extras.len(),
        missed.len(),
    );
    println!(
        "node: at risk {} (died while no agent watched, or within {JOURNAL_GRACE} s before one was killed), of which journaled {unwatched_journaled}; not journaled (pod, died at s, collected at s): {:?}; agents watched {:?}",
        unwatched.len(),
        unwatched
            .iter()
            .filter(|a| !by.contains_key(a.id.as_str()))
            .map(|a| (&a.pod, a.died, a.removed))
            .collect::<Vec<_>>(),
        agents
            .watched
            .iter()
            .map(|(a, b)| format!("{a:.1}-{b:.1}"))
            .chain(agents.watching_since.map(|s| format!("{s:.1}-")))
            .collect::<Vec<_>>()
    );
    println!(
        "node: verdicts {verdicts:?}; signals {signals:?}; image lines {}",
        image_lines.len()
    );
    println!(
        "node: Events live at the end {} ({} of {} crash-looping pods have the Event of their last failure's reason, {up_to_date} carry that very failure); last agent: created {}, series updated {}, rate limited {}, dropped {}, failed {}",
        events.len(),
        wrong_pods.len() - missing_events.len(),
        wrong_pods.len(),
        kube("created"),
        kube("series_updated"),
        kube("rate_limited"),
        kube("dropped"),
        kube("failed"),
    );
    for (i, l) in agents.lives.iter().enumerate() {
        let (lo, hi) = l.rss_range();
        println!(
            "node: agent {i}: {:.0} s wall ({:.2} simulated h), RSS {:.1}..{:.1} MiB, slope {:+.3} MiB per simulated hour, peak fds {}",
            l.span(),
            l.span() * scale / 3600.0,
            mib(lo as f64),
            mib(hi as f64),
            mib(l.rss_slope(0.2)) * 3600.0 / scale,
            l.peak_fds()
        );
    }
    println!(
        "node: containerd restarts took {:?}; agent exit codes {:?}",
        containerd_restart_wall, agents.exit_codes
    );

    // The invariants.
    assert!(
        duplicates.is_empty(),
        "journaled more than once: {duplicates:?}"
    );
    assert!(
        extras.is_empty(),
        "journaled but no exec failure: {extras:?}"
    );
    assert!(
        missed.is_empty(),
        "failures an agent watched but never journaled (pod, container, died at s): {:?}",
        missed
            .iter()
            .map(|a| (&a.pod, &a.id, a.died))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        inspection_failed, 0,
        "a failing container could not be judged"
    );
    assert!(
        verdicts
            .keys()
            .all(|v| ["arch_mismatch", "emulator_missing"].contains(v)),
        "{verdicts:?}"
    );
    assert!(
        image_lines.values().all(|n| *n == 1),
        "an image warned about twice with one verdict: {image_lines:?}"
    );
    assert!(
        missing_events.is_empty(),
        "crash-looping pods without the Event of their last failure: {missing_events:?}"
    );
    assert_eq!(kube("dropped"), 0.0);
    assert!(
        agents.exit_codes.iter().all(|c| *c == Some(0)),
        "an agent did not drain and exit 0 on SIGTERM: {:?}",
        agents.exit_codes
    );
    assert!(
        faults.len() >= 3 && failures_in >= 30,
        "too short to soak anything: {faults:?}, {failures_in} failures"
    );
    let last = agents.lives.last().unwrap();
    let (early, late) = (last.rss_max_in(0.2, 0.5), last.rss_max_in(0.5, 1.0));
    assert!(
        late <= early + 3 * 1024,
        "the agent's memory grew: {early} KiB then {late} KiB"
    );
    let peak_fds = agents.lives.iter().map(Life::peak_fds).max().unwrap_or(0);
    assert!(peak_fds <= 64, "the agent held {peak_fds} descriptors");
    for (i, l) in agents.lives.iter().enumerate() {
        let (first, second) = (l.fds_max_in(0.0, 0.5), l.fds_max_in(0.5, 1.0));
        assert!(
            second <= first + 4,
            "agent {i} leaks descriptors: at most {first} in the first half of its life, {second} in the second"
        );
    }
}

// ---------------------------------------------------------------------------------------
// events

/// The agent's Event limits, on a clock `scale` times faster.
fn scaled(
    l: archwatch::sinks::kube_events::Limits,
    scale: f64,
) -> archwatch::sinks::kube_events::Limits {
    archwatch::sinks::kube_events::Limits {
        object_refill: l.object_refill.div_f64(scale),
        node_refill: l.node_refill.div_f64(scale),
        backoff: l.backoff.div_f64(scale),
        forbidden_backoff: l.forbidden_backoff.div_f64(scale),
        forbidden_max: l.forbidden_max.div_f64(scale),
        ..l
    }
}

/// What one pod's crash loop made of the Events path.
#[derive(Debug)]
struct OnePod {
    attempts: [u32; 3],
    /// Writes (POST, PATCH) the API server received, per simulated hour.
    writes: [u32; 3],
    posts: usize,
    patches: usize,
    gets: usize,
    /// The Event at the end: its series count, and whether it is still there.
    count_at_end: Option<i64>,
    results: BTreeMap<String, u64>,
}

/// One pod crash-looping for 3 simulated hours (an attempt runs 1 s, then the kubelet's
/// back-off), each failure handed to the agent's Events publisher with the agent's rate
/// limits; the API server expires Events 1 h after their last write and, with `outage`,
/// refuses connections between those simulated seconds.
fn one_pod(scale: f64, outage: Option<(f64, f64)>) -> OnePod {
    use archwatch::sinks::kube_events;
    let work = tempfile::tempdir().unwrap();
    let (api, url) = FakeApi::start_stateful(Duration::from_secs_f64(3600.0 / scale));
    let switch = Switch::start(addr_of(&url));
    let kubeconfig = write_kubeconfig(work.path(), &switch.url());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let metrics = archwatch::sinks::metrics::Metrics::default();
    let who = archwatch::diagnose::Identity {
        containerd_namespace: "k8s.io".into(),
        pod: Some("checkout-7d9f".into()),
        pod_namespace: Some("shop".into()),
        pod_uid: Some("1f0e9a52-0000-4000-8000-000000000001".into()),
        container: Some("app".into()),
        container_type: Some(archwatch::diagnose::ContainerType::Container),
        ..Default::default()
    };
    let end = 3.0 * 3600.0;
    let (t0, attempts) = rt.block_on(async {
        let client = kube_events::client(
            "auto",
            Some(&kubeconfig),
            kube_events::REQUEST_TIMEOUT.div_f64(scale),
        )
        .await
        .expect("a client for the fake API server");
        let handle = kube_events::EventsHandle::new(1024, metrics.clone());
        let stop = CancellationToken::new();
        let publisher = tokio::spawn(kube_events::publish(
            client,
            handle.clone(),
            "soak-node".into(),
            scaled(kube_events::Limits::default(), scale),
            stop.clone(),
        ));
        let t0 = tokio::time::Instant::now();
        let at = |sim: f64| t0 + Duration::from_secs_f64(sim / scale);
        let mut attempts = Vec::new();
        let (mut t, mut n) = (0.0, 0u32);
        while t < end {
            tokio::time::sleep_until(at(t)).await;
            if let Some((down, up)) = outage {
                switch.set(if (down..up).contains(&t) {
                    Mode::Refuse
                } else {
                    Mode::Up
                });
            }
            handle.push(
                kube_events::for_pod(
                    &who,
                    "ExecFormatError",
                    "The entrypoint /app is an arm64 ELF; this node is amd64.",
                    "Publish an image for linux/amd64.",
                    chrono::Utc::now(),
                )
                .unwrap(),
            );
            attempts.push(t);
            t += 1.0 + kubelet::backoff(n);
            n += 1;
        }
        // Every failure accounted for by the publisher.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while (metrics.kube_events_sum() as usize) < attempts.len()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
        let _ = publisher.await;
        (t0.into_std(), attempts)
    });
    let hour = |at: Instant| {
        ((at.saturating_duration_since(t0).as_secs_f64() * scale / 3600.0) as usize).min(2)
    };
    let mut f = OnePod {
        attempts: [0; 3],
        writes: [0; 3],
        posts: 0,
        patches: 0,
        gets: 0,
        count_at_end: None,
        results: BTreeMap::new(),
    };
    for t in &attempts {
        f.attempts[((t / 3600.0) as usize).min(2)] += 1;
    }
    for r in api.requests() {
        match r.method.as_str() {
            "POST" => f.posts += 1,
            "PATCH" => f.patches += 1,
            _ => f.gets += 1,
        }
        if r.method != "GET" {
            f.writes[hour(r.at)] += 1;
        }
    }
    f.count_at_end = live_events(&api)
        .iter()
        .find(|e| e["regarding"]["name"] == "checkout-7d9f")
        .map(|e| e["series"]["count"].as_i64().unwrap_or(1));
    for r in archwatch::sinks::metrics::KUBE_EVENT_RESULTS {
        f.results.insert(r.to_string(), metrics.kube_events_of(r));
    }
    f
}

trait KubeCounts {
    fn kube_events_of(&self, result: &str) -> u64;
    fn kube_events_sum(&self) -> u64;
}

impl KubeCounts for archwatch::sinks::metrics::Metrics {
    fn kube_events_of(&self, result: &str) -> u64 {
        self.kube_events
            .get_or_create(&archwatch::sinks::metrics::KubeLabels {
                reason: "ExecFormatError".into(),
                result: result.into(),
            })
            .get()
    }
    fn kube_events_sum(&self) -> u64 {
        archwatch::sinks::metrics::KUBE_EVENT_RESULTS
            .iter()
            .map(|r| self.kube_events_of(r))
            .sum()
    }
}

#[test]
fn one_crashlooping_pod_event_writes_per_hour() {
    let scale: f64 = env_or("ARCHWATCH_SOAK_EVENT_SCALE", 360.0);
    // Down from 1:00 to 2:15: the Event, last written at 0:55, expires at 1:55.
    let outage = (3600.0, 8100.0);
    let steady = std::thread::spawn(move || one_pod(scale, None));
    let down = std::thread::spawn(move || one_pod(scale, Some(outage)));
    let (steady, down) = (steady.join().unwrap(), down.join().unwrap());
    for (what, f) in [("steady", &steady), ("API down 1:00-2:15", &down)] {
        println!(
            "events, one pod crash-looping 3 simulated hours ({what}, x{scale}): attempts per hour {:?}, API writes per hour {:?} (POST {}, PATCH {}, GET {}); publisher {:?}; Event at the end: series count {:?}",
            f.attempts, f.writes, f.posts, f.patches, f.gets, f.results, f.count_at_end
        );
    }
    let total = |a: [u32; 3]| a.iter().sum::<u32>();
    // The back-off: ~12 attempts an hour once it reached 5 minutes.
    assert_eq!(steady.attempts[1], 12);
    assert_eq!(steady.attempts[2], 12);
    // Every failure written: one Event, then its series, never rate limited at this pace.
    assert_eq!(steady.writes, steady.attempts, "{steady:?}");
    assert_eq!((steady.posts, steady.gets), (1, 0));
    assert_eq!(steady.results["rate_limited"], 0);
    assert_eq!(steady.count_at_end, Some(i64::from(total(steady.attempts))));
    // Down past the TTL: nothing written meanwhile, the Event expired, and the first write
    // after it created the Event again carrying every occurrence, those of the outage too.
    assert_eq!(down.writes[0], down.attempts[0]);
    assert!(down.writes[1] <= 1, "{down:?}");
    assert_eq!(
        down.posts, 2,
        "created, then created again after it expired: {down:?}"
    );
    assert!(down.results["failed"] >= 10, "{down:?}");
    assert_eq!(down.count_at_end, Some(i64::from(total(down.attempts))));
}

// ---------------------------------------------------------------------------------------
// load

const RATE: f64 = 50.0;
const CRASH_PODS: usize = 110;
const PROBE_PODS: usize = 30;

fn get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("metrics listener");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// 50 failing containers a second (110 pods in CrashLoopBackOff, 30 exec-probed pods)
/// replayed through the agent, which is restarted half-way on the same journal; meanwhile
/// the API server refuses connections, later hangs, and the binfmt table flaps (handlers
/// the wrong-arch binary does not match: the verdict cache is dropped and every image
/// judged again, the verdict stays).
#[test]
fn load_fifty_failures_a_second_through_faults() {
    let _alone = order().write().unwrap_or_else(|e| e.into_inner());
    let secs: f64 = env_or("ARCHWATCH_SOAK_LOAD_SECS", 30.0);
    assert_host_fails_arm64();
    let _ = tracing_subscriber::fmt()
        .with_env_filter("archwatch=info")
        .with_writer(|| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open("/tmp/soak-load.log")
                .unwrap()
        })
        .try_init(); // DEBUG-TMP
    let mut ctd = archwatch::lab::Containerd::start().expect("containerd");
    let t = archwatch::replay::NodeTemplates::record(
        &mut ctd,
        support::busybox("arm64"),
        support::busybox("amd64"),
    )
    .expect("record a crash, a healthy start and a probe");
    drop(ctd);

    let host = PROBE_PODS * t.host.envelopes.len();
    let per_round = CRASH_PODS * t.crash.envelopes.len() + PROBE_PODS * t.probe.envelopes.len();
    let rounds = ((RATE * secs / CRASH_PODS as f64).ceil() as usize).max(4);
    let round = Duration::from_secs_f64(CRASH_PODS as f64 / RATE);
    let s = t
        .stream(
            CRASH_PODS,
            PROBE_PODS,
            host + rounds * per_round,
            chrono::Duration::from_std(round).unwrap(),
        )
        .expect("stream");
    assert_eq!(s.failures, rounds * CRASH_PODS);
    let per_second = per_round as f64 / round.as_secs_f64();
    // The first agent gets the first half; the second the healthy pods again (as its
    // reconcile would list them), then the rest.
    let half = rounds / 2;
    let first: Vec<_> = s.envelopes[..host + half * per_round].to_vec();
    let second: Vec<_> = s.envelopes[..host]
        .iter()
        .chain(&s.envelopes[host + half * per_round..])
        .cloned()
        .collect();
    let recording = Arc::new(s.recording);
    let failures = s.failures;
    drop(s.envelopes);

    let (api, api_url) = FakeApi::start_lean();
    let switch = Arc::new(Switch::start(addr_of(&api_url)));
    let work = tempfile::tempdir().unwrap();
    let kubeconfig = write_kubeconfig(work.path(), &switch.url());
    let flapper = Arc::new(Mutex::new(binfmt::Flapper::new(false)));
    let journal = work.path().join("journal.jsonl");
    let cfg = archwatch::agent::Config {
        address: Some(work.path().join("no-containerd.sock")),
        docker_host: None,
        docker_timeout: std::time::Duration::from_secs(10),
        namespaces: Vec::new(),
        listen: Some(([127, 0, 0, 1], 0).into()),
        node_name: "soak-node".into(),
        journal: Some(journal.clone()),
        journal_max_bytes: 64 << 20,
        binfmt_dir: flapper.lock().unwrap().dir(),
        node: archwatch::platform::Node::detect(),
        snapshotter: "overlayfs".into(),
        inspect_timeout: Duration::from_secs(5),
        windows: archwatch::pipeline::Windows::default(),
        kube: "auto".into(),
        kube_queue: 1024,
        kubeconfig: Some(kubeconfig),
        view_lease_ttl: archwatch::containerd::LEASE_TTL,
        api_socket: None,
        proc_dir: work.path().join("no-proc"),
        unhealthy_after: Duration::from_secs(120),
        kube_request_timeout: Duration::from_secs(1),
        exec_tracer: archwatch::tracer::TracerMode::Off,
        cgroup_dir: None,
    };

    // The faults and the samples, on their own thread.
    let planned = (first.len() + second.len()) as f64 / per_second;
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    // This process's memory, one life per agent.
    let lives = Arc::new(Mutex::new(vec![Life::new("self")]));
    let driver = {
        let (switch, flapper, running) = (switch.clone(), flapper.clone(), running.clone());
        let lives = lives.clone();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            // An outage of 4 s every half of the run, at most every minute: refusing, then
            // hanging, in turn; none in the last 5 s.
            let period = (planned * 0.5).min(60.0);
            let mut next_outage = planned * 0.2;
            let mut outages = 0u32;
            let mut next_flap = 2.5;
            let mut outage: Option<f64> = None;
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                let now = t0.elapsed().as_secs_f64();
                if let Some(l) = lives.lock().unwrap().last_mut() {
                    l.sample(t0);
                }
                if now >= next_flap {
                    flapper.lock().unwrap().flap();
                    next_flap = now + 2.5;
                }
                if let Some(back) = outage {
                    if now >= back {
                        switch.set(Mode::Up);
                        outage = None;
                    }
                } else if now >= next_outage && now < planned - 5.0 {
                    switch.set(if outages % 2 == 0 {
                        Mode::Refuse
                    } else {
                        Mode::Silent
                    });
                    outage = Some(now + 4.0);
                    outages += 1;
                    next_outage += period;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            switch.set(Mode::Up);
            outages
        })
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let t0 = Instant::now();
    let (elapsed, metrics) = rt.block_on(async {
        let mut elapsed = Duration::ZERO;
        let mut metrics = String::new();
        for (i, envelopes) in [first, second].into_iter().enumerate() {
            let (done, finished) = tokio::sync::oneshot::channel();
            let (bound_tx, bound) = tokio::sync::oneshot::channel();
            let stop = CancellationToken::new();
            let replay = archwatch::agent::Replay {
                recording: recording.clone(),
                envelopes,
                per_second: Some(per_second),
                done,
            };
            let agent = tokio::spawn(archwatch::agent::run_fed(
                cfg.clone(),
                archwatch::agent::Feed::Replay(replay),
                stop.clone(),
                Some(bound_tx),
            ));
            let addr = bound.await.expect("metrics address");
            elapsed += finished.await.expect("replay finished").elapsed;
            if i == 1 {
                // Let the Events publisher take what is queued.
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let m = tokio::task::spawn_blocking(move || get(addr, "/metrics"))
                        .await
                        .unwrap();
                    let v = |n: &str| support::agent::metric_value(&m, n, &[]);
                    if v("archwatch_kube_events_total") >= v("archwatch_exec_failures_total")
                        || Instant::now() > deadline
                    {
                        metrics = m;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            stop.cancel();
            agent.await.unwrap().expect("agent ran");
            if i == 0 {
                lives.lock().unwrap().push(Life::new("self"));
            }
        }
        (elapsed, metrics)
    });
    let wall = t0.elapsed().as_secs_f64();
    running.store(false, std::sync::atomic::Ordering::Relaxed);
    let outages = driver.join().unwrap();
    let lives = std::mem::take(&mut *lives.lock().unwrap());

    let mut tail = JournalTail::new(&journal);
    tail.poll();
    let by = tail.by_container();
    let journaled = tail
        .lines
        .iter()
        .filter(|l| l.kind == "exec_failure")
        .count();
    let duplicates = by.values().filter(|v| v.len() > 1).count();
    let mut verdicts: BTreeMap<&str, usize> = BTreeMap::new();
    for l in tail.lines.iter().filter(|l| l.kind == "exec_failure") {
        *verdicts.entry(l.verdict.as_str()).or_default() += 1;
    }
    let v = |n: &str, labels: &[(&str, &str)]| support::agent::metric_value(&metrics, n, labels);
    let second_failures = v("archwatch_exec_failures_total", &[]) as usize;
    let kube = |r: &str| v("archwatch_kube_events_total", &[("result", r)]);
    let events = live_events(&api);
    let pods_with_event: HashSet<&str> = events
        .iter()
        .filter_map(|e| e["regarding"]["name"].as_str())
        .collect();
    let without: Vec<String> = (0..CRASH_PODS)
        .map(|p| format!("crashloop-{p}"))
        .filter(|p| !pods_with_event.contains(p.as_str()))
        .collect();
    println!(
        "load: {failures} failing containers in {:.1} s of replay ({:.1}/s), {wall:.1} s wall, agent restarted after {half} of {rounds} rounds",
        elapsed.as_secs_f64(),
        failures as f64 / elapsed.as_secs_f64()
    );
    println!(
        "load: journaled {journaled} (the second agent {second_failures}), duplicates {duplicates}; verdicts {verdicts:?}; binfmt table changed {} times; {outages} API server outages of 4 s (refusing, hanging in turn)",
        flapper.lock().unwrap().changes()
    );
    println!(
        "load: Events live {} ({} of {CRASH_PODS} crash-looping pods have one); second agent: created {}, series updated {}, rate limited {}, dropped {}, failed {}; API writes {}",
        events.len(),
        CRASH_PODS - without.len(),
        kube("created"),
        kube("series_updated"),
        kube("rate_limited"),
        kube("dropped"),
        kube("failed"),
        api.requests().len()
    );
    // The gRPC API's ring of the last 4096 diagnoses fills in 82 s at this rate: the slope
    // is taken after it, and memory judged flat once an agent has lived well past that.
    const RING_FULL: f64 = 82.0;
    for (i, l) in lives.iter().enumerate() {
        let (lo, hi) = l.rss_range();
        let warm = (RING_FULL / l.span().max(1.0)).clamp(0.2, 0.9);
        println!(
            "load: agent {i}: {:.0} s; RSS of the process (agent, API server, the stream in memory) {:.1}..{:.1} MiB, slope after {:.0} s {:+.2} MiB per hour; max per tenth (MiB): {}; peak fds {}",
            l.span(),
            mib(lo as f64),
            mib(hi as f64),
            warm * l.span(),
            mib(l.rss_slope(warm)) * 3600.0,
            (1..=10)
                .map(|d| format!("{:.1}", mib(l.rss_max_in(f64::from(d - 1) / 10.0, f64::from(d) / 10.0) as f64)))
                .collect::<Vec<_>>()
                .join(" "),
            l.peak_fds()
        );
    }

    assert!(elapsed.as_secs_f64() >= planned * 0.9, "paced as planned");
    assert!(outages >= 2, "{outages} outages");
    assert_eq!(journaled, failures, "one journal line per failure");
    assert_eq!(duplicates, 0, "no container journaled twice");
    assert_eq!(
        second_failures,
        (rounds - half) * CRASH_PODS,
        "the restarted agent reported only what the first had not"
    );
    assert_eq!(
        verdicts.keys().copied().collect::<Vec<_>>(),
        ["arch_mismatch"]
    );
    assert!(
        without.is_empty(),
        "crash-looping pods without an Event: {without:?}"
    );
    let accounted: f64 = [
        "created",
        "series_updated",
        "rate_limited",
        "dropped",
        "failed",
    ]
    .iter()
    .map(|r| kube(r))
    .sum();
    assert_eq!(
        accounted as usize, second_failures,
        "every Event accounted for"
    );
    assert_eq!(kube("dropped"), 0.0, "the queue never overflowed");
    for (i, l) in lives.iter().enumerate() {
        if l.span() >= 3.0 * RING_FULL {
            let (settled, last) = (l.rss_max_in(0.4, 0.7), l.rss_max_in(0.7, 1.0));
            assert!(
                last <= settled + 4 * 1024,
                "agent {i}: memory grew from {settled} KiB to {last} KiB"
            );
        } else {
            println!("load: agent {i}: (memory is judged flat when an agent lives 3 times the {RING_FULL} s its API ring takes to fill: ARCHWATCH_SOAK_LOAD_SECS=500)");
        }
        assert!(
            l.peak_fds() <= 64,
            "agent {i}: {} descriptors",
            l.peak_fds()
        );
    }
}
