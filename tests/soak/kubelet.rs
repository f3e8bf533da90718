//! The kubelet of the soak: pods in CrashLoopBackOff on the lab's CRI plugin
//! (tests/integration/support/cri.rs), on a clock that runs `scale` times faster than the
//! wall: the restart back-off (10 s doubling to 5 min) and container GC (every minute, the
//! newest dead attempt of each container kept) are divided by it. Pods are replaced after a
//! number of attempts, as rollouts replace them on a real node; the kubelet never waits for
//! the agent.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::support::cri::{Container, CriLab, Pod};

/// Wall time since the run started, and simulated time `scale` times faster.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub t0: Instant,
    pub scale: f64,
}

impl Clock {
    /// Wall seconds since the start.
    pub fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }
    /// Simulated seconds since the start.
    pub fn sim(&self) -> f64 {
        self.now() * self.scale
    }
    /// The wall time a simulated span takes.
    pub fn wall(&self, sim_secs: f64) -> f64 {
        sim_secs / self.scale
    }
}

/// What a pod's container does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// An arm64 entrypoint: every attempt dies with `exec format error`.
    WrongArch,
    /// A native program that exits 1: a crash loop that is no exec failure.
    Flaky,
}

/// One attempt, as the kubelet saw it.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub id: String,
    pub pod: String,
    pub role: Role,
    /// Non-zero exit, or refused at start.
    pub failed: bool,
    /// Wall seconds since the start: when the kubelet saw it dead, and when its container
    /// was removed (GC, or the pod deleted).
    pub died: f64,
    pub removed: Option<f64>,
}

struct Loop {
    pod: Pod,
    container: Container,
    role: Role,
    /// Attempts made, and the attempts this pod makes before it is replaced.
    n: u32,
    life: u32,
    next: f64,
    /// Dead attempts still in containerd (indexes into `Kubelet::attempts`), oldest first.
    dead: VecDeque<usize>,
    generation: u32,
    name: String,
}

pub struct Kubelet {
    pub lab: CriLab,
    pub clock: Clock,
    loops: Vec<Loop>,
    pub attempts: Vec<Attempt>,
    next_gc: f64,
    /// Pods replaced so far.
    pub replaced: u32,
    pub namespace: String,
}

/// The kubelet's restart back-off after attempt `n` (0-based) died, simulated seconds.
pub fn backoff(n: u32) -> f64 {
    (10.0 * f64::from(1u32 << n.min(5))).min(300.0)
}

impl Kubelet {
    pub fn new(lab: CriLab, clock: Clock, namespace: &str) -> Kubelet {
        Kubelet {
            lab,
            clock,
            loops: Vec::new(),
            attempts: Vec::new(),
            next_gc: clock.wall(60.0),
            replaced: 0,
            namespace: namespace.into(),
        }
    }

    /// A pod `name` whose container `container` crash-loops for `life` attempts, then is
    /// replaced by `name-2`, `name-3`, … with `replacement_life` attempts each.
    pub fn crash_loop(&mut self, name: &str, container: Container, role: Role, life: u32) {
        let pod = self.lab.run_pod(name, &self.namespace);
        self.loops.push(Loop {
            pod,
            container,
            role,
            n: 0,
            life,
            next: self.clock.now(),
            dead: VecDeque::new(),
            generation: 1,
            name: name.into(),
        });
    }

    /// Pods crash-looping now.
    pub fn pods(&self, role: Role) -> Vec<String> {
        self.loops
            .iter()
            .filter(|l| l.role == role)
            .map(|l| l.pod.name.clone())
            .collect()
    }

    /// Wall seconds until something is due.
    pub fn due_in(&self) -> f64 {
        let next = self
            .loops
            .iter()
            .map(|l| l.next)
            .fold(self.next_gc, f64::min);
        (next - self.clock.now()).max(0.0)
    }

    /// Runs what is due: at most one attempt, then GC if its minute has come. `true` when
    /// something ran.
    pub fn step(&mut self, replacement_life: u32) -> bool {
        let now = self.clock.now();
        let mut ran = false;
        if let Some(i) = (0..self.loops.len())
            .filter(|i| self.loops[*i].next <= now)
            .min_by(|a, b| self.loops[*a].next.total_cmp(&self.loops[*b].next))
        {
            self.attempt(i, replacement_life);
            ran = true;
        }
        if self.clock.now() >= self.next_gc {
            self.gc();
            self.next_gc = self.clock.now() + self.clock.wall(60.0);
            ran = true;
        }
        ran
    }

    fn attempt(&mut self, i: usize, replacement_life: u32) {
        let l = &self.loops[i];
        let (pod, c, n) = (l.pod.clone(), l.container.clone(), l.n);
        let a = self.lab.run_attempt(&pod, &c, n);
        let died = self.clock.now();
        let failed = a.start_error.is_some() || a.status.exit_code != 0;
        let role = self.loops[i].role;
        if role == Role::WrongArch {
            assert!(
                failed,
                "a wrong-arch attempt ran (did another process register an arm64 binfmt_misc handler on this machine?): {:?}",
                a.status
            );
        }
        self.attempts.push(Attempt {
            id: a.id,
            pod: pod.name.clone(),
            role,
            failed,
            died,
            removed: None,
        });
        let idx = self.attempts.len() - 1;
        let l = &mut self.loops[i];
        l.dead.push_back(idx);
        l.n += 1;
        l.next = died + self.clock.wall(backoff(n));
        if l.n >= l.life {
            self.replace(i, replacement_life);
        }
    }

    /// The kubelet's container GC: of each container's dead attempts, the newest stays.
    fn gc(&mut self) {
        for i in 0..self.loops.len() {
            while self.loops[i].dead.len() > 1 {
                let idx = self.loops[i].dead.pop_front().unwrap();
                let id = self.attempts[idx].id.clone();
                self.lab.remove_container(&id);
                self.attempts[idx].removed = Some(self.clock.now());
            }
        }
    }

    /// The pod is deleted (its containers with it) and a new one takes its place.
    fn replace(&mut self, i: usize, life: u32) {
        let old = self.loops[i].pod.clone();
        self.lab.remove_pod(&old);
        let now = self.clock.now();
        for idx in self.loops[i].dead.drain(..) {
            self.attempts[idx].removed = Some(now);
        }
        let l = &mut self.loops[i];
        l.generation += 1;
        let name = format!("{}-{}", l.name, l.generation);
        let ns = self.namespace.clone();
        let pod = self.lab.run_pod(&name, &ns);
        let l = &mut self.loops[i];
        l.pod = pod;
        l.n = 0;
        l.life = life;
        l.next = self.clock.now();
        self.replaced += 1;
    }

    /// SIGKILL containerd and start it again (the shims, and so the pods, live on); the
    /// kubelet reconnects. Nothing is attempted meanwhile: its calls would fail.
    pub fn restart_containerd(&mut self) -> Duration {
        let t = Instant::now();
        self.lab.restart_containerd();
        t.elapsed()
    }
}
