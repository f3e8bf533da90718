//! What archwatch holds in containerd: a read-only view of each image it inspects, under a
//! lease that expires. SIGTERM leaves nothing; whatever a SIGKILL leaves, containerd's
//! garbage collector removes once the lease expires.

use std::time::{Duration, Instant};

use archwatch::containerd::Client;
use archwatch::oci::{ImageSpec, Item, Layer, Layout};

use crate::support::{self, agent::Agent, containerd::Containerd};

const NS: &str = "leases";

fn import_images(ctd: &mut Containerd, n: usize, dir: &std::path::Path) -> Vec<String> {
    let mut l = Layout::new();
    let mut tags = Vec::new();
    for i in 0..n {
        // Distinct content per image: distinct snapshots, one view each.
        let m = l
            .add_image(&ImageSpec::new(
                "amd64",
                &["/bin/busybox", "true"],
                vec![Layer(vec![
                    Item::file("/bin/busybox", support::busybox("amd64"), 0o755),
                    Item::file("/etc/n", i.to_string().into_bytes(), 0o644),
                ])],
            ))
            .unwrap();
        let tag = format!("archwatch.test/lease-{i}:v1");
        l.tag(&tag, &m);
        tags.push(tag);
    }
    let p = dir.join("images.tar");
    l.write_archive(&p).unwrap();
    ctd.import(NS, &p);
    tags
}

/// archwatch's leases and view snapshots still in containerd.
fn held(ctd: &Containerd) -> (Vec<String>, Vec<String>) {
    let leases = String::from_utf8_lossy(&ctd.ctr_ns(NS, &["leases", "ls"]).stdout)
        .lines()
        .filter(|l| l.starts_with("archwatch-"))
        .map(str::to_string)
        .collect();
    let views = String::from_utf8_lossy(&ctd.ctr_ns(NS, &["snapshots", "ls"]).stdout)
        .lines()
        .filter(|l| l.starts_with("archwatch-view-"))
        .map(str::to_string)
        .collect();
    (leases, views)
}

/// Triggers collection until nothing of the agent's is left, for up to 10 s.
fn collect_until_empty(ctd: &Containerd) {
    collect_garbage(ctd);
    let deadline = Instant::now() + Duration::from_secs(10);
    while held(ctd) != (Vec::new(), Vec::new()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        collect_garbage(ctd);
    }
}

/// Makes containerd collect garbage now: deleting a lease with `--sync` runs the collector.
fn collect_garbage(ctd: &Containerd) {
    let out = ctd.ctr_ns(
        NS,
        &["leases", "create", "--id", "archwatch-test-gc-trigger"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ctd.ctr_ns(
        NS,
        &["leases", "delete", "--sync", "archwatch-test-gc-trigger"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_view_left_by_a_killed_process_expires_and_is_collected() {
    let mut ctd = Containerd::start();
    let work = tempfile::tempdir().unwrap();
    let tags = import_images(&mut ctd, 1, work.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A view opened and never closed: what a process killed mid-inspection leaves.
    rt.block_on(async {
        let c = Client::connect(&ctd.socket, Duration::from_secs(5))
            .await
            .unwrap()
            .with_lease_ttl(Duration::from_secs(2));
        let node = archwatch::platform::Node::detect();
        let t = c.resolve_image(NS, &tags[0], &node).await.unwrap();
        let v = c
            .open_view(NS, "overlayfs", &t.config.chain_id().unwrap())
            .await
            .unwrap();
        assert!(!v.layers.is_empty());
        std::mem::forget(v);
    });
    let (leases, views) = held(&ctd);
    assert_eq!((leases.len(), views.len()), (1, 1), "{leases:?} {views:?}");
    // Before expiry the collector keeps it (the lease protects the view).
    collect_garbage(&ctd);
    assert_eq!(held(&ctd).1.len(), 1, "collected before its lease expired");
    std::thread::sleep(Duration::from_secs(3));
    collect_until_empty(&ctd);
    assert_eq!(
        held(&ctd),
        (Vec::new(), Vec::new()),
        "collected after expiry"
    );
}

#[test]
fn sigterm_leaves_nothing_and_sigkill_leaves_only_what_expires() {
    let mut ctd = Containerd::start();
    let work = tempfile::tempdir().unwrap();

    // SIGTERM while images are being inspected: in-flight views are removed on the way out.
    let mut agent = Agent::start_with_env(
        &ctd.socket,
        &[],
        &[("ARCHWATCH_VIEW_LEASE_SECS", std::path::Path::new("3"))],
    );
    agent.wait_ready();
    import_images(&mut ctd, 12, work.path());
    assert_eq!(agent.stop(), Some(0), "SIGTERM is a clean exit");
    assert_eq!(
        held(&ctd),
        (Vec::new(), Vec::new()),
        "a stopped agent holds nothing in containerd"
    );

    // SIGKILL while it re-inspects the node's images at start: whatever it held expires.
    let mut agent = Agent::start_with_env(
        &ctd.socket,
        &[],
        &[("ARCHWATCH_VIEW_LEASE_SECS", std::path::Path::new("3"))],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = false;
    while Instant::now() < deadline {
        if !held(&ctd).0.is_empty() {
            seen = true;
            break;
        }
    }
    agent.kill();
    let left = held(&ctd);
    std::thread::sleep(Duration::from_secs(4));
    collect_until_empty(&ctd);
    assert_eq!(
        held(&ctd),
        (Vec::new(), Vec::new()),
        "left at SIGKILL (lease seen in flight: {seen}): {left:?}"
    );
}
