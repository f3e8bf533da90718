//! The agent on the flow the kubelet really drives: containerd's CRI plugin, images pulled
//! from a registry, pod sandboxes, containers created and started with the kubelet's labels
//! and annotations, CrashLoopBackOff restarts with back-off, container and image GC
//! (support/cri.rs). What this flow does that `ctr run` does not, and the agent must get
//! right:
//!
//! - a pull makes three image records (tag, digest, id): judged, warned and counted once;
//! - a dead container stays (the kubelet keeps it for its restart count) while its task is
//!   deleted at once: an agent restarted in the middle must not report it again, nor take
//!   it for one that never started;
//! - every attempt of a CrashLoopBackOff is a new container: N attempts are N journal lines,
//!   one Event series, N counts;
//! - pod sandboxes (pause containers) are never judged;
//! - init containers are `spec.initContainers{NAME}` in the Event.
//!
//! Runs on Debian's containerd by default; `ARCHWATCH_CONTAINERD_DIR` picks 1.7 or 2.x.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use archwatch::oci::{ImageSpec, Item, Layer};

use crate::support::agent::Agent;
use crate::support::cri::{Attempt, BackOff, Container, CriLab};
use crate::support::fake_api::{self, FakeApi, Req};
use crate::support::{self};

fn bb(arch: &str) -> Item {
    Item::file("/bin/busybox", support::busybox(arch), 0o755)
}

fn wrong_arch() -> ImageSpec {
    ImageSpec::new(
        "arm64",
        &["/app", "sh", "-c", "serve"],
        vec![Layer(vec![Item::file(
            "/app",
            support::busybox("arm64"),
            0o755,
        )])],
    )
}

fn busybox_image() -> ImageSpec {
    ImageSpec::new(
        "amd64",
        &["/bin/busybox", "true"],
        vec![Layer(vec![bb("amd64")])],
    )
}

/// An agent on the lab with Events going to `api_url`, its journal at `journal` if given.
fn agent(lab: &CriLab, api_url: &str, journal: Option<&Path>, dir: &Path) -> Agent {
    let kubeconfig = dir.join(format!("{}.kubeconfig", support::unique("kc")));
    std::fs::write(&kubeconfig, fake_api::kubeconfig(api_url)).unwrap();
    let kc = kubeconfig.display().to_string();
    let a = Agent::start_with_journal(
        &lab.socket,
        journal,
        &["--kube", "auto", "--kubeconfig", &kc],
        &[],
    );
    a.wait_ready();
    a
}

fn failure_of(a: &Agent, id: &str) -> Vec<serde_json::Value> {
    a.failures()
        .into_iter()
        .filter(|l| l["container_id"] == id)
        .collect()
}

/// `archwatch status --json` against the agent's API socket.
fn status(a: &Agent) -> serde_json::Value {
    let out = support::archwatch()
        .args(["status", "--json", "--api-socket"])
        .arg(&a.api_socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The Event objects created for `pod` with `reason`, and the series counts PATCHed onto
/// each, in order.
fn series(api: &FakeApi, pod: &str, reason: &str) -> Vec<(Req, Vec<i64>)> {
    let reqs = api.requests();
    reqs.iter()
        .filter(|r| {
            r.method == "POST" && r.body["regarding"]["name"] == pod && r.body["reason"] == reason
        })
        .map(|post| {
            let name = post.body["metadata"]["name"].as_str().unwrap().to_string();
            let counts = reqs
                .iter()
                .filter(|r| {
                    r.method == "PATCH"
                        && r.path
                            .split('?')
                            .next()
                            .unwrap()
                            .ends_with(&format!("/{name}"))
                })
                .map(|r| r.body["series"]["count"].as_i64().unwrap())
                .collect();
            (post.clone(), counts)
        })
        .collect()
}

fn tasks(lab: &CriLab) -> String {
    String::from_utf8_lossy(
        &lab.ctd
            .ctr_ns(crate::support::cri::NS, &["tasks", "ls", "-q"])
            .unwrap()
            .stdout,
    )
    .into_owned()
}

/// The runtime's own words for an attempt: StartContainer's error, else the container log.
fn runtime_words(a: &Attempt) -> String {
    match &a.start_error {
        Some(e) => e.clone(),
        None => std::fs::read_to_string(&a.status.log_path).unwrap_or_default(),
    }
}

#[test]
fn cri_incidents_crash_loops_and_init_containers() {
    let _binfmt = support::binfmt_shared();
    let started = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let mut lab = CriLab::start();
    let (api, url) = FakeApi::start();
    let agent = agent(&lab, &url, None, work.path());

    // Every e2e incident, pulled by the CRI plugin from a registry.
    let cases = crate::e2e::cases();
    let mut refs = BTreeMap::new();
    for c in &cases {
        let r = lab.push(&format!("e2e/{}", c.name), &c.spec);
        refs.insert(c.name, r);
    }
    let loop_ref = lab.push("shop/crashloop", &wrong_arch());
    let healthy_ref = lab.push("shop/healthy", &busybox_image());
    let mut pulled = BTreeMap::new();
    for (name, r) in refs
        .iter()
        .chain([(&"crashloop", &loop_ref), (&"healthy", &healthy_ref)])
    {
        pulled.insert(*name, lab.pull(r));
    }
    // Three names per pull in containerd (tag, repo@digest, sha256:id).
    let names = String::from_utf8_lossy(
        &lab.ctd
            .ctr_ns(crate::support::cri::NS, &["images", "ls", "-q"])
            .unwrap()
            .stdout,
    )
    .lines()
    .count();
    // Distinct content (`shop/healthy` and `e2e/ok-amd64` share theirs), and the pause image.
    let images = pulled.values().collect::<BTreeSet<_>>().len() + 1;
    assert!(
        names >= 3 * (images - 1),
        "{names} names for {images} images"
    );
    agent.wait_for("every image judged", Duration::from_secs(60), || {
        agent.metric("archwatch_images_inspected", &[]) as usize >= images
    });
    // One pull is judged once: counted once, listed once, warned about once.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        agent.metric("archwatch_images_inspected", &[]) as usize,
        images,
        "one count per image, not per name"
    );
    assert_eq!(
        agent.metric(
            "archwatch_inspection_duration_seconds_count",
            &[("target", "image")]
        ) as usize,
        images,
        "one inspection per image, not per name"
    );
    let st = status(&agent);
    let listed = st["images"].as_array().unwrap();
    assert_eq!(listed.len(), images, "{st:#}");
    let digests: BTreeSet<&str> = listed
        .iter()
        .map(|i| i["digest"].as_str().unwrap())
        .collect();
    assert_eq!(digests.len(), images);
    let crashloop_listed = listed
        .iter()
        .find(|i| i["image"] == loop_ref.as_str())
        .unwrap_or_else(|| panic!("listed by its tag: {st:#}"));
    assert_eq!(crashloop_listed["verdict"], "arch_mismatch");
    assert_eq!(crashloop_listed["fix_code"], "publish_multiarch");
    let image_lines: Vec<serde_json::Value> = agent
        .lines()
        .into_iter()
        .filter(|l| l["kind"] == "image")
        .collect();
    let mut warned: Vec<&str> = image_lines
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    let n = warned.len();
    warned.sort();
    warned.dedup();
    assert_eq!(warned.len(), n, "one image line per digest");
    let incompatible: BTreeSet<&str> = listed
        .iter()
        .filter(|i| !["ok", "emulated"].contains(&i["verdict"].as_str().unwrap()))
        .map(|i| i["digest"].as_str().unwrap())
        .collect();
    assert!(incompatible.len() >= 15, "{incompatible:?}");
    let warned_incompatible: BTreeSet<&str> = image_lines
        .iter()
        .filter(|l| l["reason"] == "IncompatibleImagePulled")
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    assert_eq!(warned_incompatible, incompatible);
    agent.wait_for("a Node Event per image", Duration::from_secs(20), || {
        series(&api, "test-node", "IncompatibleImagePulled").len() == incompatible.len()
    });
    assert!(
        series(&api, "test-node", "IncompatibleImagePulled")
            .iter()
            .all(|(_, patches)| patches.is_empty()),
        "no repeats of one pull"
    );

    // Each incident as a pod of its own, as the kubelet runs it.
    let mut sandboxes = Vec::new();
    let mut report = Vec::new();
    let mut ran: Vec<(&'static str, &'static str, Attempt)> = Vec::new();
    let fixes: BTreeMap<&str, &str> = cases.iter().map(|c| (c.name, c.fix)).collect();
    for c in &cases {
        let pod = lab.run_pod(c.name, "e2e");
        sandboxes.push(pod.sandbox.clone());
        let a = lab.run_attempt(&pod, &Container::new("app", &refs[c.name]), 0);
        ran.push((c.name, c.want, a));
    }
    let handlers = archwatch::binfmt::Table::read_dir(Path::new("/proc/sys/fs/binfmt_misc"))
        .map(|(t, _)| t.enabled && t.handlers.iter().any(|h| h.enabled))
        .unwrap_or(false);
    for (name, want, a) in &ran {
        let words = runtime_words(a).to_lowercase();
        if *want == "ok" {
            assert_eq!(a.status.exit_code, 0, "{name} should run: {words}");
            continue;
        }
        if handlers && *want == "arch_mismatch" {
            continue;
        }
        assert_ne!(a.status.exit_code, 0, "{name} should fail");
        assert!(
            words.contains(crate::e2e::symptom(want)),
            "{name} ({want}): the runtime said {words:?}"
        );
        agent.wait_for(
            &format!("the diagnosis of {name}"),
            Duration::from_secs(20),
            || !failure_of(&agent, &a.id).is_empty(),
        );
        let lines = failure_of(&agent, &a.id);
        assert_eq!(lines.len(), 1, "{name}: {lines:?}");
        let d = &lines[0];
        assert_eq!(d["verdict"], *want, "{name}: {d}");
        // The fix fits the cause: the kubelet's flow gives the same code as the files alone.
        assert_eq!(d["fix_code"], fixes[name], "{name}: {d}");
        assert_eq!(d["pod"], *name);
        assert_eq!(d["pod_namespace"], "e2e");
        assert_eq!(d["container"], "app");
        assert_eq!(d["container_type"], "container");
        assert_eq!(d["attempt"], 0);
        // Refused at create: StartContainer failed and there is no task; else it exited.
        let refused = a.start_error.is_some();
        assert_eq!(
            d["signal"],
            if refused {
                "task_never_created"
            } else {
                "task_exit"
            },
            "{name}: {d}"
        );
        if refused {
            assert_eq!(a.status.started_at, 0);
            assert!(!tasks(&lab).contains(&a.id));
        }
        report.push(format!("{name:<36} {want:<28} {}", d["signal"]));
    }
    // The create-time refusals the kubelet meets: argv[0] missing, a directory, no x bit.
    for name in [
        "entrypoint-missing",
        "entrypoint-is-a-directory",
        "no-execute-bit",
    ] {
        let (_, _, a) = ran.iter().find(|(n, _, _)| *n == name).unwrap();
        assert!(
            a.start_error.is_some(),
            "{name}: StartContainer should fail"
        );
    }
    // Healthy containers are silent.
    for (name, _, a) in ran.iter().filter(|(_, w, _)| *w == "ok") {
        assert!(failure_of(&agent, &a.id).is_empty(), "{name}");
    }
    let healthy = lab.run_pod("healthy", "shop");
    sandboxes.push(healthy.sandbox.clone());
    let sleeper = lab.run_until_running(
        &healthy,
        &Container::new("web", &healthy_ref).command(&["/bin/busybox", "sleep", "3600"]),
    );
    let crasher = lab.run_attempt(
        &healthy,
        &Container::new("flaky", &healthy_ref).command(&["/bin/busybox", "false"]),
        0,
    );
    assert_eq!(crasher.status.exit_code, 1);

    // CrashLoopBackOff: 3 attempts, back-off 10 s then 20 s, compressed 20x (the kubelet's
    // minute of container GC does not come round within them).
    let pod = lab.run_pod("checkout", "loop");
    sandboxes.push(pod.sandbox.clone());
    let attempts = lab.crash_loop(
        &pod,
        &Container::new("app", &loop_ref),
        3,
        BackOff {
            compression: 20,
            keep_dead: 1,
        },
        |_, _| {},
    );
    let gaps: Vec<f64> = attempts
        .windows(2)
        .map(|w| (w[1].status.created_at - w[0].status.finished_at) as f64 / 1e9)
        .collect();
    assert!(
        gaps[0] >= 0.5 && gaps[1] >= 1.0,
        "back-off between attempts: {gaps:?}"
    );
    // An init container, and a container from a kubelet that does not say its type.
    let init_pod = lab.run_pod("migrations", "boot");
    sandboxes.push(init_pod.sandbox.clone());
    let init = lab.run_attempt(&init_pod, &Container::new("migrate", &loop_ref).init(), 0);
    let legacy_pod = lab.run_pod("legacy", "boot");
    sandboxes.push(legacy_pod.sandbox.clone());
    let mut legacy_c = Container::new("old", &loop_ref);
    legacy_c.type_annotation = false;
    let legacy = lab.run_attempt(&legacy_pod, &legacy_c, 0);

    agent.wait_for("every attempt diagnosed", Duration::from_secs(20), || {
        attempts
            .iter()
            .chain([&init, &legacy])
            .all(|a| !failure_of(&agent, &a.id).is_empty())
    });
    for a in &attempts {
        let lines = failure_of(&agent, &a.id);
        assert_eq!(lines.len(), 1, "attempt {}: {lines:?}", a.attempt);
        assert_eq!(lines[0]["attempt"], a.attempt);
        assert_eq!(lines[0]["signal"], "task_exit");
        assert_eq!(lines[0]["verdict"], "arch_mismatch");
        // A tag that points to a single-arch image, pulled from a registry: publish an index.
        assert_eq!(lines[0]["fix_code"], "publish_multiarch", "{}", lines[0]);
    }
    assert_eq!(
        agent.metric(
            "archwatch_exec_failures_total",
            &[("namespace", "loop"), ("reason", "arch_mismatch")]
        ),
        3.0,
        "one count per attempt"
    );
    agent.wait_for("the Event series", Duration::from_secs(20), || {
        series(&api, "checkout", "ExecFormatError")
            .first()
            .is_some_and(|(_, p)| p.len() == 2)
    });
    let s = series(&api, "checkout", "ExecFormatError");
    // The record of the loop, as the journal and the API server got it.
    for a in &attempts {
        eprintln!("journal: {}", failure_of(&agent, &a.id)[0]);
    }
    for r in api.requests().iter().filter(|r| {
        r.path.contains("/namespaces/loop/events")
            && (r.body["regarding"]["name"] == "checkout" || r.method == "PATCH")
    }) {
        eprintln!("{} {}: {}", r.method, r.path, r.body);
    }
    assert_eq!(s.len(), 1, "one Event object for the whole loop");
    let (post, counts) = &s[0];
    assert_eq!(counts, &vec![2, 3]);
    assert_eq!(post.body["regarding"]["fieldPath"], "spec.containers{app}");
    assert_eq!(post.body["regarding"]["uid"], pod.uid.as_str());
    let s = series(&api, "migrations", "ExecFormatError");
    assert_eq!(s.len(), 1);
    assert_eq!(
        s[0].0.body["regarding"]["fieldPath"],
        "spec.initContainers{migrate}"
    );
    let s = series(&api, "legacy", "ExecFormatError");
    assert_eq!(s.len(), 1);
    assert!(
        s[0].0.body["regarding"].get("fieldPath").is_none(),
        "not guessed: {}",
        s[0].0.body
    );
    assert!(s[0].0.body["note"]
        .as_str()
        .unwrap()
        .starts_with("Container old: "));
    let init_line = &failure_of(&agent, &init.id)[0];
    assert_eq!(init_line["container_type"], "init");
    assert!(failure_of(&agent, &legacy.id)[0]
        .get("container_type")
        .is_none());

    // Sandboxes are never judged; healthy ones never reported.
    std::thread::sleep(Duration::from_secs(1));
    for l in agent.lines() {
        let id = l["container_id"].as_str().unwrap_or("");
        assert!(
            !sandboxes.iter().any(|s| s == id),
            "a sandbox was judged: {l}"
        );
    }
    for id in [&sleeper, &crasher.id] {
        assert!(failure_of(&agent, id).is_empty());
    }
    let live: Vec<String> = lab.containerd_containers();
    let st = status(&agent);
    assert_eq!(
        st["tracked_containers"].as_u64().unwrap() as usize,
        live.len() - sandboxes.len(),
        "every container but the sandboxes: {st}"
    );
    // Every failure exactly once.
    let mut ids: Vec<String> = agent
        .failures()
        .iter()
        .map(|l| l["container_id"].as_str().unwrap().to_string())
        .collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(n, ids.len(), "a failure was journaled twice");
    eprintln!(
        "containerd {}: {} incidents through CRI in {:.1} s\n{}",
        lab.version(),
        report.len(),
        started.elapsed().as_secs_f64(),
        report.join("\n")
    );
}

#[test]
fn cri_agent_restart_reports_nothing_twice() {
    let _binfmt = support::binfmt_shared();
    let work = tempfile::tempdir().unwrap();
    let journal = work.path().join("journal.jsonl");
    let mut lab = CriLab::start();
    let (api, url) = FakeApi::start();
    let image = lab.push("shop/wrong", &wrong_arch());
    let ok_image = lab.push("shop/ok", &busybox_image());
    lab.pull(&image);
    lab.pull(&ok_image);
    let pod = lab.run_pod("checkout", "shop");
    let other = lab.run_pod("batch", "shop");

    let mut first = Some(agent(&lab, &url, Some(&journal), work.path()));
    let mut second: Option<Agent> = None;
    let mut while_away: Vec<Attempt> = Vec::new();
    // GC keeps the last two dead attempts (it runs while the agent is away).
    let attempts = lab.crash_loop(
        &pod,
        &Container::new("app", &image),
        5,
        BackOff {
            compression: 100,
            keep_dead: 2,
        },
        |lab, n| match n {
            1 => {
                // Both attempts diagnosed, then the agent is killed (OOM, node drain).
                let a = first.as_ref().unwrap();
                a.wait_for("two attempts", Duration::from_secs(20), || {
                    a.failures().len() == 2
                });
                first.take().unwrap().kill();
                // While it is away: a refusal at create and a clean run.
                while_away.push(lab.run_attempt(
                    &other,
                    &Container::new("setup", &ok_image).command(&["/nope"]),
                    0,
                ));
                while_away.push(lab.run_attempt(&other, &Container::new("ok", &ok_image), 0));
            }
            2 => {
                // Attempt 2 failed while nobody watched; the agent comes back.
                second = Some(agent(lab, &url, Some(&journal), work.path()));
            }
            _ => {}
        },
    );
    let agent = second.unwrap();
    assert!(
        !lab.containerd_containers().contains(&attempts[0].id),
        "container GC removed the first attempt"
    );
    agent.wait_for("all five attempts", Duration::from_secs(20), || {
        attempts
            .iter()
            .all(|a| !failure_of(&agent, &a.id).is_empty())
    });
    let refused = &while_away[0];
    assert!(refused.start_error.is_some());
    agent.wait_for("the refusal while away", Duration::from_secs(20), || {
        !failure_of(&agent, &refused.id).is_empty()
    });
    // Let a wrong re-report (reconcile, then the create window) show up if it were to.
    std::thread::sleep(Duration::from_secs(6));
    let signals: Vec<String> = attempts
        .iter()
        .map(|a| {
            let l = failure_of(&agent, &a.id);
            assert_eq!(l.len(), 1, "attempt {} journaled once: {l:?}", a.attempt);
            l[0]["signal"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        signals,
        [
            "task_exit",
            "task_exit",
            "stopped_before_watch",
            "task_exit",
            "task_exit"
        ],
        "the attempt that failed while the agent was away is an exit, not task_never_created"
    );
    let away = &failure_of(&agent, &attempts[2].id)[0];
    assert_eq!(away["exit_code"], 1);
    assert!(away["exited_at"].is_string());
    let r = failure_of(&agent, &refused.id);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["signal"], "task_never_created");
    assert_eq!(r[0]["verdict"], "not_found");
    assert!(failure_of(&agent, &while_away[1].id).is_empty());
    // The restarted agent counted only what it reported.
    assert_eq!(
        agent.metric(
            "archwatch_exec_failures_total",
            &[("reason", "arch_mismatch")]
        ),
        3.0
    );
    assert_eq!(
        agent.metric("archwatch_exec_failures_total", &[("reason", "not_found")]),
        1.0
    );
    // Nor are the image warnings repeated.
    let image_lines = agent
        .lines()
        .iter()
        .filter(|l| l["kind"] == "image")
        .count();
    assert_eq!(
        image_lines, 1,
        "the wrong-arch image, once across both runs"
    );
    // One Event series across both runs: the restarted agent extends it.
    // One Event series across both runs: the restarted agent's create meets 409 on the same
    // name, and it counts on from what the object holds.
    agent.wait_for("the series of five", Duration::from_secs(20), || {
        series(&api, "checkout", "ExecFormatError")
            .first()
            .is_some_and(|(_, p)| p.len() == 4)
    });
    let s = series(&api, "checkout", "ExecFormatError");
    let objects: BTreeSet<&str> = s
        .iter()
        .map(|(p, _)| p.body["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(objects.len(), 1, "{objects:?}");
    assert_eq!(s[0].1, vec![2, 3, 4, 5]);
    let name = objects.iter().next().unwrap();
    let stored = api.object("shop", name).expect("the Event is stored");
    assert_eq!(stored["series"]["count"], 5);
    assert_eq!(agent.failures().len(), 6);
}

#[test]
fn cri_containerd_restart_then_gc_leaves_nothing_behind() {
    let _binfmt = support::binfmt_shared();
    let work = tempfile::tempdir().unwrap();
    let mut lab = CriLab::start();
    let (_api, url) = FakeApi::start();
    let image = lab.push("shop/wrong", &wrong_arch());
    let ok_image = lab.push("shop/ok", &busybox_image());
    lab.pull(&image);
    lab.pull(&ok_image);
    let agent = agent(&lab, &url, None, work.path());
    let pod = lab.run_pod("checkout", "shop");
    let web = lab.run_pod("web", "shop");
    let web_id = lab.run_until_running(
        &web,
        &Container::new("web", &ok_image).command(&["/bin/busybox", "sleep", "3600"]),
    );
    let before = lab.crash_loop(
        &pod,
        &Container::new("app", &image),
        2,
        BackOff::default(),
        |_, _| {},
    );
    agent.wait_for("two attempts", Duration::from_secs(20), || {
        agent.failures().len() == 2
    });

    // containerd dies hard and comes back; the agent reconnects and goes on diagnosing.
    lab.restart_containerd();
    agent.wait_for("reconnect", Duration::from_secs(40), || {
        agent.metric("archwatch_containerd_reconnects_total", &[]) >= 1.0
            && agent.metric("archwatch_containerd_connected", &[]) == 1.0
    });
    let after = lab.run_attempt(&pod, &Container::new("app", &image), 2);
    agent.wait_for(
        "the attempt after the restart",
        Duration::from_secs(20),
        || !failure_of(&agent, &after.id).is_empty(),
    );
    std::thread::sleep(Duration::from_secs(6));
    for a in before.iter().chain([&after]) {
        assert_eq!(failure_of(&agent, &a.id).len(), 1, "attempt {}", a.attempt);
    }
    assert_eq!(agent.failures().len(), 3);

    // Container GC, pod removal and image GC: nothing of them stays in the agent.
    let st = status(&agent);
    assert_eq!(
        st["tracked_containers"], 4,
        "three attempts and the web server: {st}"
    );
    lab.stop_container(&web_id);
    lab.remove_container(&web_id);
    for a in before.iter().chain([&after]) {
        if lab.containerd_containers().contains(&a.id) {
            lab.remove_container(&a.id);
        }
    }
    lab.remove_pod(&pod);
    lab.remove_pod(&web);
    for i in lab.list_images() {
        lab.remove_image(&i.id);
    }
    assert!(lab.list_images().is_empty());
    agent.wait_for("no state left", Duration::from_secs(20), || {
        let st = status(&agent);
        st["tracked_containers"] == 0
            && st["images"].as_array().is_some_and(|i| i.is_empty())
            && agent.metric("archwatch_images_inspected", &[]) == 0.0
    });
    assert_eq!(lab.containerd_containers().len(), 0);
    assert_eq!(agent.metric("archwatch_containers_emulated", &[]), 0.0);
}

/// A container created, failed and removed while the agent was starved: its record is gone
/// before it could be read, so nothing says what it ran. It is named in the journal as
/// `inspection_failed` (with its id), never guessed into an exec failure; the next attempt,
/// read in time, is diagnosed.
#[test]
fn cri_a_container_removed_before_it_is_read_is_named_not_guessed() {
    let _binfmt = support::binfmt_shared();
    let work = tempfile::tempdir().unwrap();
    let mut lab = CriLab::start();
    let (_api, url) = FakeApi::start();
    let image = lab.push("shop/wrong", &wrong_arch());
    lab.pull(&image);
    let agent = agent(&lab, &url, None, work.path());
    let pod = lab.run_pod("checkout", "shop");
    agent.freeze();
    let gone = lab.run_attempt(&pod, &Container::new("app", &image), 0);
    lab.remove_container(&gone.id);
    agent.thaw();
    let next = lab.run_attempt(&pod, &Container::new("app", &image), 1);
    agent.wait_for("the next attempt", Duration::from_secs(20), || {
        !failure_of(&agent, &next.id).is_empty()
    });
    let unjudged: Vec<serde_json::Value> = agent
        .lines()
        .into_iter()
        .filter(|l| l["kind"] == "inspection_failed")
        .collect();
    assert_eq!(unjudged.len(), 1, "{unjudged:?}");
    assert_eq!(unjudged[0]["container_id"], gone.id.as_str());
    assert_eq!(unjudged[0]["containerd_namespace"], "k8s.io");
    assert_eq!(unjudged[0]["error_kind"], "not_found");
    assert!(failure_of(&agent, &gone.id).is_empty());
    assert_eq!(agent.failures().len(), 1);
    assert_eq!(status(&agent)["tracked_containers"], 1);
}

/// The harness itself: the kubelet's back-off and GC.
#[test]
fn cri_kubelet_backoff_doubles_to_five_minutes() {
    let b = BackOff {
        compression: 1,
        keep_dead: 1,
    };
    let d: Vec<u64> = (0..8).map(|n| b.delay(n).as_secs()).collect();
    assert_eq!(d, vec![10, 20, 40, 80, 160, 300, 300, 300]);
    assert_eq!(b.gc_period(), Duration::from_secs(60));
    assert_eq!(BackOff::default().delay(0), Duration::from_millis(100));
    assert_eq!(BackOff::default().gc_period(), Duration::from_millis(600));
}

/// `runAsUser: 1000` over a root-owned 0700 binary and over one its user owns: whatever
/// capabilities this containerd's CRI plugin gives a non-root container, the agent judges
/// with the spec's, and agrees with the kernel: a container is diagnosed exactly when its
/// start failed.
#[test]
fn cri_run_as_user_is_judged_with_the_specs_user_and_capabilities() {
    let _binfmt = support::binfmt_shared();
    let work = tempfile::tempdir().unwrap();
    let mut lab = CriLab::start();
    let (_api, url) = FakeApi::start();
    let image = |mode: u32| {
        ImageSpec::new(
            "amd64",
            &["/bin/true"],
            vec![Layer(vec![Item::file(
                "/bin/true",
                support::busybox("amd64"),
                mode,
            )])],
        )
    };
    let private = lab.push("shop/private", &image(0o700));
    lab.pull(&private);
    // A script anyone may run that execs root's 0700 binary: whatever the first exec had,
    // the shell a non-root user runs has no capabilities left (only the ambient set
    // survives an exec).
    let via_script = lab.push(
        "shop/via-script",
        &ImageSpec::new(
            "amd64",
            &["/ep.sh"],
            vec![Layer(vec![
                Item::file("/bin/busybox", support::busybox("amd64"), 0o755),
                Item::symlink("/bin/sh", "/bin/busybox"),
                Item::file("/bin/true", support::busybox("amd64"), 0o700),
                Item::file("/ep.sh", b"#!/bin/sh\nexec /bin/true\n".to_vec(), 0o755),
            ])],
        ),
    );
    lab.pull(&via_script);
    let agent = agent(&lab, &url, None, work.path());
    let pod = lab.run_pod("users", "shop");
    let as_root = lab.run_attempt(&pod, &Container::new("root", &private), 0);
    let as_user = lab.run_attempt(&pod, &Container::new("user", &private).run_as_user(1000), 0);
    assert!(as_root.start_error.is_none(), "{:?}", as_root.start_error);
    // The kernel's answer for uid 1000 depends on the effective capabilities this
    // containerd gives a non-root container (CAP_DAC_OVERRIDE lets it exec root's 0700).
    let user_failed = as_user.start_error.is_some() || as_user.status.exit_code != 0;
    if user_failed {
        agent.wait_for("the user's failure", Duration::from_secs(20), || {
            !failure_of(&agent, &as_user.id).is_empty()
        });
        let d = &failure_of(&agent, &as_user.id)[0];
        assert_eq!(d["verdict"], "not_executable", "{d}");
        assert!(d["cause"].as_str().unwrap().contains("uid 1000"), "{d}");
    } else {
        std::thread::sleep(Duration::from_secs(3));
        assert!(failure_of(&agent, &as_user.id).is_empty());
    }
    eprintln!(
        "runAsUser 1000 over root's 0700 /bin/true on this containerd: {}",
        if user_failed {
            "permission denied"
        } else {
            "runs (CAP_DAC_OVERRIDE in the effective set)"
        }
    );
    let script_user = lab.run_attempt(
        &pod,
        &Container::new("script", &via_script).run_as_user(1000),
        0,
    );
    assert!(
        script_user.start_error.is_none(),
        "{:?}",
        script_user.start_error
    );
    assert_eq!(
        script_user.status.exit_code, 126,
        "{:?}",
        script_user.status
    );
    agent.wait_for("the script's failure", Duration::from_secs(20), || {
        !failure_of(&agent, &script_user.id).is_empty()
    });
    let d = &failure_of(&agent, &script_user.id)[0];
    assert_eq!(d["verdict"], "not_executable", "{d}");
    assert!(d["cause"].as_str().unwrap().contains("/bin/true"), "{d}");
    assert!(failure_of(&agent, &as_root.id).is_empty());
}
