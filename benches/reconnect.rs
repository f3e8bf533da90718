//! How quickly the agent is back after containerd restarts, running as the shipped DaemonSet
//! runs it (its capabilities and hostPath mounts, tests/integration/support/pod.rs): the
//! lab containerd is restarted gracefully (SIGTERM, as `systemctl restart containerd`) and
//! hard (SIGKILL), ARCHWATCH_BENCH_RUNS times each (default 10). For each restart: the time
//! from the new containerd answering to the agent having resubscribed, listed and reconciled
//! (`archwatch_containerd_reconnects_total` counts it), polled every 5 ms.
//!
//! Run: `cargo bench --bench reconnect` (as root, after scripts/fixtures).

mod support;

#[path = "../tests/integration/support/manifests.rs"]
#[allow(dead_code)]
mod manifests;
#[path = "../tests/integration/support/pod.rs"]
mod pod;

use std::time::{Duration, Instant};

use archwatch::lab::Containerd;

fn summary(mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "median {:.0} ms, worst {:.0} ms (n={})",
        v[v.len() / 2].as_secs_f64() * 1000.0,
        v[v.len() - 1].as_secs_f64() * 1000.0,
        v.len()
    )
}

fn main() {
    let runs: usize = support::env_or("ARCHWATCH_BENCH_RUNS", 10);
    let mut ctd = Containerd::start().expect("containerd");
    let scratch = tempfile::tempdir().expect("tempdir");
    let run_dir = ctd.socket.parent().expect("socket dir").to_path_buf();
    let node = pod::NodePaths::lab(&run_dir, &ctd.root(), scratch.path());
    let spec = pod::ContainerSpec::from_daemonset(&manifests::daemonset(manifests::BASE));
    let mut agent = pod::PodAgent::start(&spec, &node, &[]);
    agent.wait_ready();
    println!(
        "containerd {} ({}), the agent with the DaemonSet's capabilities {:?}",
        ctd.binaries().version_string(),
        ctd.binaries()
            .dir
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| "Debian's".into()),
        spec.caps
    );

    let mut reconnects = 0.0;
    for graceful in [true, false] {
        let (mut after_up, mut after_stop) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let t_stop = Instant::now();
            if graceful {
                ctd.restart_graceful().expect("restart");
            } else {
                ctd.restart().expect("restart");
            }
            let t_up = Instant::now();
            reconnects += 1.0;
            while agent.metric("archwatch_containerd_reconnects_total", &[]) < reconnects {
                assert!(
                    t_up.elapsed() < Duration::from_secs(60),
                    "the agent did not reconnect; its log:\n{}",
                    agent.log_text()
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            after_up.push(t_up.elapsed());
            after_stop.push(t_stop.elapsed());
        }
        let how = if graceful { "SIGTERM" } else { "SIGKILL" };
        println!(
            "{how} restart, containerd answering -> agent reconciled: {}",
            summary(after_up)
        );
        println!(
            "{how} restart, containerd stopped -> agent reconciled:  {}",
            summary(after_stop)
        );
    }
    agent.stop();
}
