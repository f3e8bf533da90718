//! Recorded containerd event streams: captured from a live containerd, scaled up by renaming
//! containers, and replayed through the whole agent with [`crate::agent::run_fed`].
//!
//! A capture holds the envelopes exactly as containerd sent them on `Events.Subscribe`, and
//! the container records the pipeline would have asked for. [`scale`] turns one captured
//! lifecycle into many: every container id (and the snapshot key and exec ids derived from
//! it) is renamed inside the protobuf payloads, and timestamps move with the copy, so a
//! replay exercises decode → identify → cache → diagnose with real payloads.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use containerd_client::events;
use containerd_client::services::v1::Container;
use containerd_client::types::Envelope;
use futures::StreamExt;
use prost::Message;

use crate::containerd::{Client, ContainerdError};

/// What the pipeline looks up during a replay instead of asking containerd.
#[derive(Clone, Debug, Default)]
pub struct Recording {
    /// Container records by (namespace, id).
    pub containers: HashMap<(String, String), Container>,
    /// Layer directories (top first) by snapshot key.
    pub snapshots: HashMap<String, Vec<PathBuf>>,
    /// Image target digests by (namespace, name).
    pub images: HashMap<(String, String), String>,
}

/// Envelopes and container records captured from a live containerd.
#[derive(Clone, Debug, Default)]
pub struct Capture {
    pub envelopes: Vec<Envelope>,
    pub containers: HashMap<(String, String), Container>,
}

/// Records every event until `scenario` finishes (plus `settle` for the stragglers). Each
/// created container's record is read as its `/containers/create` arrives.
pub async fn capture<F: Future<Output = ()>>(
    client: &Client,
    scenario: F,
    settle: Duration,
) -> Result<Capture, ContainerdError> {
    // containerd answers `Subscribe` with its first event: the call is in flight while the
    // scenario runs, and registered before it starts.
    let sub_client = client.clone();
    let mut subscribe = tokio::spawn(async move { sub_client.subscribe().await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut out = Capture::default();
    tokio::pin!(scenario);
    let mut finished = false;
    let subscribed = loop {
        tokio::select! {
            () = &mut scenario, if !finished => finished = true,
            r = &mut subscribe => break r,
            () = tokio::time::sleep(settle), if finished => return Ok(out),
        }
    };
    let mut stream = match subscribed {
        Ok(r) => r?,
        Err(_) => return Err(ContainerdError::Missing("subscription task")),
    };
    loop {
        let next = async {
            if finished {
                tokio::time::timeout(settle, stream.next())
                    .await
                    .ok()
                    .flatten()
            } else {
                stream.next().await
            }
        };
        tokio::select! {
            () = &mut scenario, if !finished => finished = true,
            item = next => match item {
                Some(Ok(env)) => {
                    if env.topic == "/containers/create" {
                        if let Some(a) = &env.event {
                            if let Ok(e) = events::ContainerCreate::decode(a.value.as_slice()) {
                                if let Ok(c) = client.container(&env.namespace, &e.id).await {
                                    out.containers.insert((env.namespace.clone(), e.id), c);
                                }
                            }
                        }
                    }
                    out.envelopes.push(env);
                }
                Some(Err(status)) => {
                    return Err(ContainerdError::Rpc {
                        call: "Events.Subscribe",
                        status: Box::new(status),
                    })
                }
                None => break,
            },
        }
    }
    subscribe.abort();
    Ok(out)
}

fn shift(t: &mut Option<prost_types::Timestamp>, by: chrono::Duration) {
    let Some(ts) = t.as_mut() else { return };
    let Some(at) =
        DateTime::<Utc>::from_timestamp(ts.seconds, u32::try_from(ts.nanos).unwrap_or(0))
    else {
        return;
    };
    let moved = at + by;
    ts.seconds = moved.timestamp();
    ts.nanos = i32::try_from(moved.timestamp_subsec_nanos()).unwrap_or(0);
}

fn reencode<M: Message + Default>(
    env: &mut Envelope,
    edit: impl FnOnce(&mut M),
) -> Result<(), prost::DecodeError> {
    let Some(any) = env.event.as_mut() else {
        return Ok(());
    };
    let mut m = M::decode(any.value.as_slice())?;
    edit(&mut m);
    any.value = m.encode_to_vec();
    Ok(())
}

/// A copy of `env` with every container id, exec id and snapshot key passed through
/// `rename`, and every timestamp moved by `by`.
pub fn rewrite(
    env: &Envelope,
    rename: &dyn Fn(&str) -> String,
    by: chrono::Duration,
) -> Result<Envelope, prost::DecodeError> {
    let mut e = env.clone();
    shift(&mut e.timestamp, by);
    match e.topic.as_str() {
        "/containers/create" => reencode(&mut e, |m: &mut events::ContainerCreate| {
            m.id = rename(&m.id)
        })?,
        "/containers/update" => reencode(&mut e, |m: &mut events::ContainerUpdate| {
            m.id = rename(&m.id);
            m.snapshot_key = rename(&m.snapshot_key);
        })?,
        "/containers/delete" => reencode(&mut e, |m: &mut events::ContainerDelete| {
            m.id = rename(&m.id)
        })?,
        "/tasks/create" => reencode(&mut e, |m: &mut events::TaskCreate| {
            m.container_id = rename(&m.container_id)
        })?,
        "/tasks/start" => reencode(&mut e, |m: &mut events::TaskStart| {
            m.container_id = rename(&m.container_id)
        })?,
        "/tasks/exit" => reencode(&mut e, |m: &mut events::TaskExit| {
            m.container_id = rename(&m.container_id);
            m.id = rename(&m.id);
            shift(&mut m.exited_at, by);
        })?,
        "/tasks/delete" => reencode(&mut e, |m: &mut events::TaskDelete| {
            m.container_id = rename(&m.container_id);
            m.id = rename(&m.id);
            shift(&mut m.exited_at, by);
        })?,
        "/tasks/exec-added" => reencode(&mut e, |m: &mut events::TaskExecAdded| {
            m.container_id = rename(&m.container_id);
            m.exec_id = rename(&m.exec_id);
        })?,
        "/tasks/exec-started" => reencode(&mut e, |m: &mut events::TaskExecStarted| {
            m.container_id = rename(&m.container_id);
            m.exec_id = rename(&m.exec_id);
        })?,
        "/snapshot/prepare" => reencode(&mut e, |m: &mut events::SnapshotPrepare| {
            m.key = rename(&m.key)
        })?,
        "/snapshot/remove" => reencode(&mut e, |m: &mut events::SnapshotRemove| {
            m.key = rename(&m.key)
        })?,
        _ => {}
    }
    Ok(e)
}

/// The first timestamp of a capture, for placing copies of it.
pub fn first_timestamp(envs: &[Envelope]) -> Option<DateTime<Utc>> {
    envs.iter()
        .filter_map(|e| crate::containerd::event::timestamp(e.timestamp.as_ref()))
        .min()
}

/// Copy number `n` of a captured lifecycle: ids that start with one of `ids` get
/// `-{n}` appended (so `app` → `app-7`, exec `app-probe` → `app-probe-7` when listed),
/// starting `offset` after `base`. Records of renamed containers are added to `rec`,
/// with their labels passed through `relabel`.
#[allow(clippy::too_many_arguments)]
pub fn copy_into(
    cap: &Capture,
    ids: &[&str],
    n: usize,
    base: DateTime<Utc>,
    offset: chrono::Duration,
    relabel: &dyn Fn(&mut HashMap<String, String>, usize),
    rec: &mut Recording,
    out: &mut Vec<Envelope>,
) -> Result<(), prost::DecodeError> {
    let first = first_timestamp(&cap.envelopes).unwrap_or(base);
    let by = (base + offset) - first;
    let rename = |id: &str| {
        if ids.contains(&id) {
            format!("{id}-{n}")
        } else {
            id.to_string()
        }
    };
    for env in &cap.envelopes {
        out.push(rewrite(env, &rename, by)?);
    }
    for ((ns, id), c) in &cap.containers {
        if !ids.contains(&id.as_str()) {
            continue;
        }
        let mut c = c.clone();
        c.id = rename(&c.id);
        if ids.contains(&c.snapshot_key.as_str()) {
            c.snapshot_key = rename(&c.snapshot_key);
        }
        relabel(&mut c.labels, n);
        rec.containers.insert((ns.clone(), c.id.clone()), c);
    }
    Ok(())
}

/// Captured lifecycles of the containers a busy node is made of, on a private containerd:
/// a container that dies with `exec format error`, a healthy one starting, and one exec probe
/// in it. [`NodeTemplates::stream`] scales them to a node of crashlooping pods.
pub struct NodeTemplates {
    pub namespace: String,
    pub crash: Capture,
    pub host: Capture,
    pub probe: Capture,
    /// The files of the two images, for the pipeline's first inspection of each.
    pub crash_rootfs: PathBuf,
    pub host_rootfs: PathBuf,
    pub images: HashMap<(String, String), String>,
    _dir: tempfile::TempDir,
}

/// A scaled stream and what the pipeline needs to replay it.
pub struct Stream {
    pub envelopes: Vec<Envelope>,
    pub recording: Recording,
    /// Crashing containers whose whole lifecycle is in the stream: one diagnosis each.
    pub failures: usize,
    pub probes: usize,
}

const CRASH_IMAGE: &str = "replay.example/crash:arm64";
const HOST_IMAGE: &str = "replay.example/host:native";

fn ctr(socket: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(args)
        .output()
        .unwrap_or_else(|e| std::process::Output {
            status: std::process::ExitStatus::default(),
            stdout: Vec::new(),
            stderr: e.to_string().into_bytes(),
        })
}

impl NodeTemplates {
    /// Builds two images (an arm64 busybox, and the node's own busybox that sleeps), runs
    /// one of each on `ctd`, execs one probe, and records every event.
    pub fn record(
        ctd: &mut crate::lab::Containerd,
        foreign: Vec<u8>,
        native: Vec<u8>,
    ) -> anyhow::Result<NodeTemplates> {
        use crate::oci::{ImageSpec, Item, Layer, Layout};
        let ns = "replay";
        let dir = tempfile::tempdir()?;
        let mut l = Layout::new();
        let crash = l.add_image(&ImageSpec::new(
            "arm64",
            &["/bin/busybox", "true"],
            vec![Layer(vec![Item::file(
                "/bin/busybox",
                foreign.clone(),
                0o755,
            )])],
        ))?;
        l.tag(CRASH_IMAGE, &crash);
        let host = l.add_image(&ImageSpec::new(
            crate::platform::Node::detect().arch.oci_architecture(),
            &["/bin/busybox", "sleep", "3600"],
            vec![Layer(vec![Item::file(
                "/bin/busybox",
                native.clone(),
                0o755,
            )])],
        ))?;
        l.tag(HOST_IMAGE, &host);
        let archive = dir.path().join("images.tar");
        l.write_archive(&archive)?;
        ctd.import(ns, &archive)?;
        for (name, data) in [("crash", &foreign), ("host", &native)] {
            let bin = dir.path().join(name).join("bin");
            std::fs::create_dir_all(&bin)?;
            std::fs::write(bin.join("busybox"), data)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(bin.join("busybox"), std::fs::Permissions::from_mode(0o755))?;
        }
        let socket = ctd.socket.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (crash, host, probe, images) = rt.block_on(async {
            let client = Client::connect(&socket, Duration::from_secs(5)).await?;
            let settle = Duration::from_millis(500);
            let labels = |pod: &str, c: &str| {
                [
                    format!("io.kubernetes.pod.name={pod}"),
                    format!("io.kubernetes.pod.namespace={ns}"),
                    format!("io.kubernetes.pod.uid={pod}-uid"),
                    format!("io.kubernetes.container.name={c}"),
                ]
            };
            let run = |args: Vec<String>| {
                let socket = socket.clone();
                async move {
                    tokio::task::spawn_blocking(move || {
                        let a: Vec<&str> = args.iter().map(String::as_str).collect();
                        ctr(&socket, &a).status.success()
                    })
                    .await
                    .unwrap_or(false)
                }
            };
            let mut crash_args = vec!["-n".to_string(), ns.into(), "run".into(), "--rm".into()];
            for l in labels("crash", "app") {
                crash_args.extend(["--label".to_string(), l]);
            }
            crash_args.extend([CRASH_IMAGE.to_string(), "crash".into()]);
            let crash = capture(
                &client,
                async {
                    run(crash_args).await;
                },
                settle,
            )
            .await?;
            let mut host_args = vec!["-n".to_string(), ns.into(), "run".into(), "-d".into()];
            for l in labels("healthy", "server") {
                host_args.extend(["--label".to_string(), l]);
            }
            host_args.extend([HOST_IMAGE.to_string(), "host".into()]);
            let host = capture(
                &client,
                async {
                    run(host_args).await;
                },
                settle,
            )
            .await?;
            let probe_args: Vec<String> = [
                "-n",
                ns,
                "task",
                "exec",
                "--exec-id",
                "probe",
                "host",
                "/bin/busybox",
                "true",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let probe = capture(
                &client,
                async {
                    run(probe_args).await;
                },
                settle,
            )
            .await?;
            let mut images = HashMap::new();
            for name in [CRASH_IMAGE, HOST_IMAGE] {
                if let Some(t) = client.image(ns, name).await?.target {
                    images.insert((ns.to_string(), name.to_string()), t.digest);
                }
            }
            anyhow::Ok((crash, host, probe, images))
        })?;
        let _ = ctr(&socket, &["-n", ns, "task", "kill", "-s", "KILL", "host"]);
        std::thread::sleep(Duration::from_millis(200));
        let _ = ctr(&socket, &["-n", ns, "task", "delete", "host"]);
        let _ = ctr(&socket, &["-n", ns, "containers", "delete", "host"]);
        let exits = |c: &Capture| {
            c.envelopes
                .iter()
                .filter(|e| e.topic == "/tasks/exit")
                .count()
        };
        anyhow::ensure!(
            crash.containers.len() == 1 && exits(&crash) == 1,
            "the crashing container was not recorded ({} records, {} exits)",
            crash.containers.len(),
            exits(&crash)
        );
        anyhow::ensure!(
            host.containers.len() == 1,
            "the healthy container was not recorded"
        );
        anyhow::ensure!(exits(&probe) == 1, "the exec probe was not recorded");
        Ok(NodeTemplates {
            namespace: ns.into(),
            crash,
            host,
            probe,
            crash_rootfs: dir.path().join("crash"),
            host_rootfs: dir.path().join("host"),
            images,
            _dir: dir,
        })
    }

    /// `crash_pods` pods in CrashLoopBackOff (a new container per restart, as the kubelet
    /// does) and `probe_pods` healthy pods exec-probed once per round, until `total`
    /// envelopes. Restart rounds are `round` apart.
    pub fn stream(
        &self,
        crash_pods: usize,
        probe_pods: usize,
        total: usize,
        round: chrono::Duration,
    ) -> Result<Stream, prost::DecodeError> {
        let base = Utc::now();
        let mut s = Stream {
            envelopes: Vec::with_capacity(total + 64),
            recording: Recording {
                images: self.images.clone(),
                ..Default::default()
            },
            failures: 0,
            probes: 0,
        };
        let crash_len = self.crash.envelopes.len();
        for q in 0..probe_pods {
            copy_into(
                &self.host,
                &["host"],
                q,
                base,
                chrono::Duration::milliseconds(q as i64),
                &|l, n| {
                    l.insert("io.kubernetes.pod.name".into(), format!("healthy-{n}"));
                    l.insert("io.kubernetes.pod.uid".into(), format!("healthy-{n}-uid"));
                },
                &mut s.recording,
                &mut s.envelopes,
            )?;
        }
        let mut r = 0usize;
        'rounds: loop {
            let at = round * (r as i32 + 1);
            for p in 0..crash_pods {
                if s.envelopes.len() >= total {
                    break 'rounds;
                }
                let before = s.envelopes.len();
                copy_into(
                    &self.crash,
                    &["crash"],
                    r * crash_pods + p,
                    base,
                    at + chrono::Duration::milliseconds(p as i64),
                    &|l, _| {
                        l.insert("io.kubernetes.pod.name".into(), format!("crashloop-{p}"));
                        l.insert("io.kubernetes.pod.uid".into(), format!("crashloop-{p}-uid"));
                    },
                    &mut s.recording,
                    &mut s.envelopes,
                )?;
                if before + crash_len <= total {
                    s.failures += 1;
                }
            }
            for q in 0..probe_pods {
                if s.envelopes.len() >= total {
                    break 'rounds;
                }
                copy_into(
                    &self.probe,
                    &["host", "probe"],
                    q,
                    base,
                    at + chrono::Duration::milliseconds(500 + q as i64),
                    &|_, _| {},
                    &mut s.recording,
                    &mut s.envelopes,
                )?;
                s.probes += 1;
            }
            r += 1;
        }
        s.envelopes.truncate(total);
        for c in s.recording.containers.values() {
            let root = if c.image == CRASH_IMAGE {
                &self.crash_rootfs
            } else {
                &self.host_rootfs
            };
            s.recording
                .snapshots
                .insert(c.snapshot_key.clone(), vec![root.clone()]);
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(topic: &str, msg: impl Message) -> Envelope {
        Envelope {
            timestamp: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5,
            }),
            namespace: "k8s.io".into(),
            topic: topic.into(),
            event: Some(prost_types::Any {
                type_url: "containerd.events.X".into(),
                value: msg.encode_to_vec(),
            }),
        }
    }

    #[test]
    fn rewrite_renames_inside_the_payload_and_moves_time() {
        let exit = env(
            "/tasks/exit",
            events::TaskExit {
                container_id: "app".into(),
                id: "app".into(),
                pid: 7,
                exit_status: 1,
                exited_at: Some(prost_types::Timestamp {
                    seconds: 1_700_000_001,
                    nanos: 0,
                }),
            },
        );
        let r = rewrite(
            &exit,
            &|id: &str| format!("{id}-3"),
            chrono::Duration::seconds(60),
        )
        .unwrap();
        assert_eq!(r.timestamp.as_ref().unwrap().seconds, 1_700_000_060);
        let m = events::TaskExit::decode(r.event.unwrap().value.as_slice()).unwrap();
        assert_eq!((m.container_id.as_str(), m.id.as_str()), ("app-3", "app-3"));
        assert_eq!(m.exited_at.unwrap().seconds, 1_700_000_061);
        assert_eq!((m.pid, m.exit_status), (7, 1));
        // The agent decodes the copy like the original.
        let d = crate::containerd::event::decode(
            &rewrite(&exit, &|id: &str| id.to_string(), chrono::Duration::zero()).unwrap(),
        )
        .unwrap();
        assert_eq!(d.topic, "/tasks/exit");
    }

    #[test]
    fn a_corrupt_payload_is_an_error_not_a_silent_copy() {
        let mut bad = env("/tasks/exit", events::TaskExit::default());
        bad.event.as_mut().unwrap().value = vec![0xff, 0xff, 0xff];
        assert!(rewrite(&bad, &|i: &str| i.into(), chrono::Duration::zero()).is_err());
    }

    #[test]
    fn copies_rename_only_the_listed_ids_and_their_records() {
        let cap = Capture {
            envelopes: vec![
                env(
                    "/containers/create",
                    events::ContainerCreate {
                        id: "app".into(),
                        image: "img".into(),
                        runtime: None,
                    },
                ),
                env(
                    "/containers/create",
                    events::ContainerCreate {
                        id: "other".into(),
                        image: "img".into(),
                        runtime: None,
                    },
                ),
            ],
            containers: HashMap::from([(
                ("k8s.io".to_string(), "app".to_string()),
                Container {
                    id: "app".into(),
                    snapshot_key: "app".into(),
                    labels: HashMap::from([("io.kubernetes.pod.name".into(), "p".into())]),
                    ..Default::default()
                },
            )]),
        };
        let mut rec = Recording::default();
        let mut out = Vec::new();
        let base = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap();
        for n in 0..3 {
            copy_into(
                &cap,
                &["app"],
                n,
                base,
                chrono::Duration::seconds(n as i64),
                &|l, n| {
                    l.insert("io.kubernetes.pod.name".into(), format!("p-{n}"));
                },
                &mut rec,
                &mut out,
            )
            .unwrap();
        }
        assert_eq!(out.len(), 6);
        let ids: Vec<String> = out
            .iter()
            .map(|e| {
                events::ContainerCreate::decode(e.event.as_ref().unwrap().value.as_slice())
                    .unwrap()
                    .id
            })
            .collect();
        assert_eq!(ids, ["app-0", "other", "app-1", "other", "app-2", "other"]);
        assert_eq!(out[2].timestamp.as_ref().unwrap().seconds, 1_800_000_001);
        let c = &rec.containers[&("k8s.io".to_string(), "app-2".to_string())];
        assert_eq!(c.snapshot_key, "app-2");
        assert_eq!(c.labels["io.kubernetes.pod.name"], "p-2");
        assert_eq!(rec.containers.len(), 3);
    }
}
