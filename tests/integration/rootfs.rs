//! Layer directories read the ways a node may force on the agent: without `openat2` (kernels
//! before 5.6, seccomp profiles that refuse it), through the `openat` walk; and without
//! CAP_SYS_ADMIN, where `trusted.overlay.opaque` cannot be read. The real binary, real
//! seccomp filters, real capability sets (setpriv), a real containerd's overlay snapshots.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use archwatch::oci::{ImageSpec, Item, Layer, Layout};
use rustix::fs::inotify;

use crate::support::{self, agent::Agent, containerd::Containerd};

/// Root without CAP_SYS_ADMIN once the next program is exec'd.
const NO_SYS_ADMIN: &[&str] = &[
    "setpriv",
    "--bounding-set",
    "-sys_admin",
    "--inh-caps",
    "-all",
];

/// `archwatch inspect --layers TOP:...:BOTTOM --json -- ARGV`, run by `wrapper` (may be empty)
/// with `env`.
fn inspect(wrapper: &[&str], env: &[(&str, &str)], layers: &[PathBuf], argv: &[&str]) -> Output {
    let joined = layers
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = std::process::Command::new(program);
            c.args(args).arg(env!("CARGO_BIN_EXE_archwatch"));
            c
        }
        None => support::archwatch(),
    };
    cmd.args([
        "inspect",
        "--json",
        "--node-arch",
        "amd64",
        "--layers",
        &joined,
    ]);
    // No binfmt_misc handlers: the verdicts do not depend on the machine's table.
    let no_binfmt = tempfile::tempdir().unwrap();
    std::fs::write(no_binfmt.path().join("status"), "enabled\n").unwrap();
    cmd.arg("--binfmt-dir").arg(no_binfmt.path());
    cmd.arg("--").args(argv);
    cmd.env_remove("ARCHWATCH_RESOLVER");
    cmd.envs(env.iter().copied());
    cmd.output().expect("archwatch inspect")
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON ({e}), exit {:?}, stderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn codes(v: &serde_json::Value) -> Vec<String> {
    v["findings"]
        .as_array()
        .map(|fs| {
            fs.iter()
                .map(|f| f["code"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// A host file that, were it ever read, would be an amd64 ELF that runs (verdict `ok`), with
/// an inotify watch on it.
struct Canary {
    dir: tempfile::TempDir,
    watch: rustix::fd::OwnedFd,
}

impl Canary {
    fn new() -> Canary {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("canary");
        std::fs::write(&file, support::busybox("amd64")).unwrap();
        rustix::fs::chmod(&file, rustix::fs::Mode::from_raw_mode(0o755)).unwrap();
        let watch =
            inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC).unwrap();
        inotify::add_watch(
            &watch,
            &file,
            inotify::WatchFlags::OPEN | inotify::WatchFlags::ACCESS,
        )
        .unwrap();
        Canary { dir, watch }
    }
    fn dir(&self) -> String {
        self.dir.path().display().to_string()
    }
    fn file(&self) -> String {
        format!("{}/canary", self.dir())
    }
    /// Whether anything opened or read it since the last call.
    fn touched(&self) -> bool {
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        let mut events = inotify::Reader::new(&self.watch, &mut buf);
        let mut any = false;
        while events.next().is_ok() {
            any = true;
        }
        any
    }
}

/// Overlay stacks, each with the verdict the kernel gives it: every whiteout and opaque form,
/// symlinks met at the end and mid-path, escapes toward the host canary.
fn cases(canary: &Canary) -> Vec<(&'static str, Vec<Layer>, Vec<&'static str>, &'static str)> {
    let bb = || Item::file("/bin/busybox", support::busybox("amd64"), 0o755);
    let up = format!(
        "{}{}",
        "../".repeat(30),
        canary.file().trim_start_matches('/')
    );
    let up_dir = format!(
        "{}{}",
        "../".repeat(30),
        canary.dir().trim_start_matches('/')
    );
    vec![
        (
            "path-lookup",
            vec![Layer(vec![bb(), Item::symlink("/bin/sh", "busybox")])],
            vec!["sh"],
            "ok",
        ),
        (
            "arm64",
            vec![Layer(vec![Item::file(
                "/app",
                support::busybox("arm64"),
                0o755,
            )])],
            vec!["/app"],
            "arch_mismatch",
        ),
        (
            "whiteout",
            vec![
                Layer(vec![
                    bb(),
                    Item::file("/app", support::busybox("amd64"), 0o755),
                ]),
                Layer(vec![Item::Whiteout {
                    path: "/app".into(),
                }]),
            ],
            vec!["/app"],
            "not_found",
        ),
        (
            "opaque-file",
            vec![
                Layer(vec![
                    bb(),
                    Item::file("/app/server", support::busybox("amd64"), 0o755),
                ]),
                Layer(vec![Item::dir("/app"), Item::Opaque { dir: "/app".into() }]),
            ],
            vec!["/app/server"],
            "not_found",
        ),
        (
            "opaque-file-own-content",
            vec![
                Layer(vec![
                    bb(),
                    Item::file("/app/server", support::busybox("amd64"), 0o755),
                ]),
                Layer(vec![
                    Item::dir("/app"),
                    Item::Opaque { dir: "/app".into() },
                    Item::file("/app/server", support::busybox("arm64"), 0o755),
                ]),
            ],
            vec!["/app/server"],
            "arch_mismatch",
        ),
        (
            "merged",
            vec![
                Layer(vec![bb(), Item::symlink("/usr/bin/sh", "/bin/busybox")]),
                Layer(vec![Item::file("/usr/bin/other", b"x".to_vec(), 0o644)]),
            ],
            vec!["/usr/bin/sh"],
            "ok",
        ),
        (
            "loop",
            vec![Layer(vec![
                bb(),
                Item::symlink("/a", "/b"),
                Item::symlink("/b", "/a"),
            ])],
            vec!["/a"],
            "symlink_loop",
        ),
        (
            "fifo",
            vec![Layer(vec![
                bb(),
                Item::Fifo {
                    path: "/app".into(),
                    mode: 0o755,
                },
            ])],
            vec!["/app"],
            "not_a_regular_file",
        ),
        (
            "not-executable",
            vec![Layer(vec![Item::file(
                "/app",
                support::busybox("amd64"),
                0o644,
            )])],
            vec!["/app"],
            "not_executable",
        ),
        (
            "file-as-directory",
            vec![Layer(vec![bb()])],
            vec!["/bin/busybox/app"],
            "not_found",
        ),
        (
            "escape-abs",
            vec![Layer(vec![bb(), Item::symlink("/app", &canary.file())])],
            vec!["/app"],
            "not_found",
        ),
        (
            "escape-rel",
            vec![Layer(vec![bb(), Item::symlink("/app", &up)])],
            vec!["/app"],
            "not_found",
        ),
        (
            "escape-mid-path",
            vec![Layer(vec![bb(), Item::symlink("/opt", &up_dir)])],
            vec!["/opt/canary"],
            "not_found",
        ),
        (
            "escape-abs-dir",
            vec![Layer(vec![bb(), Item::symlink("/opt", &canary.dir())])],
            vec!["/opt/canary"],
            "not_found",
        ),
        (
            "escape-shebang",
            vec![Layer(vec![
                bb(),
                Item::symlink("/bin/sh", &canary.file()),
                Item::file("/run.sh", b"#!/bin/sh\n".to_vec(), 0o755),
            ])],
            vec!["/run.sh"],
            "script_interpreter_missing",
        ),
    ]
}

/// Every case gives the same verdict with `openat2` and with the `openat` walk forced, and
/// neither ever opens the host canary.
#[test]
fn inspect_gives_the_same_verdicts_with_the_openat_walk_forced() {
    let canary = Canary::new();
    let work = tempfile::tempdir().unwrap();
    // Positive control: the watch sees a read.
    let _ = std::fs::read(canary.file()).unwrap();
    assert!(canary.touched(), "inotify reports a read of the canary");
    for (name, layers, argv, want) in cases(&canary) {
        let dirs = support::materialize(&layers, &work.path().join(name));
        for (env, resolver) in [
            (&[][..], "openat2"),
            (&[("ARCHWATCH_RESOLVER", "auto")][..], "openat2"),
            (&[("ARCHWATCH_RESOLVER", "openat")][..], "openat"),
        ] {
            let out = inspect(&[], env, &dirs, &argv);
            let v = json(&out);
            assert_eq!(v["verdict"], want, "{name} with {env:?}: {v}");
            assert_eq!(v["resolver"], resolver, "{name} with {env:?}");
            assert!(
                codes(&v).iter().all(|c| c != "overlay_opaque_unknown"),
                "{name}: {v}"
            );
        }
    }
    assert!(!canary.touched(), "the host canary was opened");
}

/// Answers `openat2` with `errno` in this thread and in the processes it starts (a seccomp
/// filter as an old runtime profile installs it), while `f` runs.
fn refusing_openat2<T: Send>(errno: rustix::io::Errno, f: impl FnOnce() -> T + Send) -> T {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};
    /// openat2's number, the same on every architecture (the unified table, Linux 5.6).
    const SYS_OPENAT2: i64 = 437;
    let filter = SeccompFilter::new(
        [(SYS_OPENAT2, vec![])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(errno.raw_os_error() as u32),
        std::env::consts::ARCH
            .try_into()
            .expect("a seccomp architecture"),
    )
    .expect("filter");
    let program: BpfProgram = filter.try_into().expect("BPF");
    std::thread::scope(|s| {
        s.spawn(|| {
            seccompiler::apply_filter(&program).expect("seccomp");
            // The filter is in place: this thread's own openat2 is refused.
            let probe = rustix::fs::openat2(
                rustix::fs::CWD,
                ".",
                rustix::fs::OFlags::PATH,
                rustix::fs::Mode::empty(),
                rustix::fs::ResolveFlags::BENEATH,
            );
            assert_eq!(probe.err(), Some(errno));
            f()
        })
        .join()
        .expect("the filtered thread")
    })
}

/// Under a seccomp profile that refuses openat2 (EPERM, as old default profiles do, or
/// ENOSYS, as newer ones answer unknown calls), the probe picks the walk by itself, and the
/// verdicts are the same; forcing openat2 there fails loudly instead of guessing.
#[test]
fn a_seccomp_profile_that_refuses_openat2_gets_the_walk() {
    let canary = Canary::new();
    let work = tempfile::tempdir().unwrap();
    let all = cases(&canary);
    for errno in [rustix::io::Errno::PERM, rustix::io::Errno::NOSYS] {
        for (name, layers, argv, want) in &all {
            let dirs = support::materialize(
                layers,
                &work.path().join(format!("{}-{name}", errno.raw_os_error())),
            );
            let v = refusing_openat2(errno, || json(&inspect(&[], &[], &dirs, argv)));
            assert_eq!(v["verdict"], *want, "{name} under {errno}: {v}");
            assert_eq!(v["resolver"], "openat", "{name} under {errno}");
        }
        // Positive control: openat2 forced under the same filter cannot read anything.
        let (name, layers, argv, _) = &all[0];
        let dirs = support::materialize(
            layers,
            &work
                .path()
                .join(format!("{}-forced-{name}", errno.raw_os_error())),
        );
        let out = refusing_openat2(errno, || {
            inspect(&[], &[("ARCHWATCH_RESOLVER", "openat2")], &dirs, argv)
        });
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("ARCHWATCH_RESOLVER=openat2 but"),
            "{stderr}"
        );
    }
    assert!(!canary.touched(), "the host canary was opened");
}

/// The upper layer marks /app opaque with a real `trusted.overlay.opaque=y` (as containerd's
/// overlayfs snapshotter writes it); the lower layer has /app/server, an arm64 binary.
fn opaque_by_xattr(dir: &Path) -> Vec<PathBuf> {
    let (top, lower) = (dir.join("top"), dir.join("lower"));
    std::fs::create_dir_all(top.join("app")).unwrap();
    std::fs::create_dir_all(lower.join("app")).unwrap();
    std::fs::write(lower.join("app/server"), support::busybox("arm64")).unwrap();
    rustix::fs::chmod(
        lower.join("app/server"),
        rustix::fs::Mode::from_raw_mode(0o755),
    )
    .unwrap();
    rustix::fs::setxattr(
        top.join("app"),
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    vec![top, lower]
}

/// With CAP_SYS_ADMIN the opaque /app hides /app/server: `not_found`, as the kernel says.
/// Without it (setpriv drops it from the bounding set), the attribute reads as absent: the
/// verdict is about a file the container does not see, and the report says so, with either
/// resolver. A `.wh..wh..opq` marker needs no capability and still hides it.
#[test]
fn without_sys_admin_a_merge_through_an_opaque_dir_is_reported_uncertain() {
    let work = tempfile::tempdir().unwrap();
    let layers = opaque_by_xattr(work.path());
    let v = json(&inspect(&[], &[], &layers, &["/app/server"]));
    assert_eq!(v["verdict"], "not_found", "{v}");
    assert_eq!(v["overlay_xattrs_readable"], true);
    assert!(
        codes(&v).iter().all(|c| c != "overlay_opaque_unknown"),
        "{v}"
    );

    for resolver in ["openat2", "openat"] {
        let out = inspect(
            NO_SYS_ADMIN,
            &[("ARCHWATCH_RESOLVER", resolver)],
            &layers,
            &["/app/server"],
        );
        let v = json(&out);
        assert_eq!(v["overlay_xattrs_readable"], false, "{v}");
        assert_eq!(v["resolver"], resolver);
        let finding = v["findings"]
            .as_array()
            .and_then(|fs| fs.iter().find(|f| f["code"] == "overlay_opaque_unknown"))
            .unwrap_or_else(|| panic!("no overlay_opaque_unknown finding: {v}"));
        let detail = finding["detail"].as_str().unwrap();
        assert!(
            detail.contains("/app/server") && detail.contains("directory /app of layer 0"),
            "{detail}"
        );
        assert!(
            detail.contains(&layers[0].display().to_string()),
            "{detail}"
        );
        // The verdict is the one the visible files give; the finding is what qualifies it.
        assert_eq!(v["verdict"], "arch_mismatch", "{v}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("trusted.overlay.opaque") && stderr.contains("CAP_SYS_ADMIN"),
            "{stderr}"
        );
    }

    // The same stack marked with `.wh..wh..opq` instead: readable without the capability.
    let marked = work.path().join("marked");
    let layers = support::materialize(
        &[
            Layer(vec![Item::file(
                "/app/server",
                support::busybox("arm64"),
                0o755,
            )]),
            Layer(vec![Item::dir("/app"), Item::Opaque { dir: "/app".into() }]),
        ],
        &marked,
    );
    for resolver in ["openat2", "openat"] {
        let v = json(&inspect(
            NO_SYS_ADMIN,
            &[("ARCHWATCH_RESOLVER", resolver)],
            &layers,
            &["/app/server"],
        ));
        assert_eq!(v["verdict"], "not_found", "{resolver}: {v}");
        assert!(
            codes(&v).iter().all(|c| c != "overlay_opaque_unknown"),
            "{v}"
        );
    }
}

/// The agent says at start what it can see: `archwatch_overlay_xattrs_readable` 1 with
/// CAP_SYS_ADMIN, 0 and a warning naming the capability without it, and the resolver in use.
/// Over a real containerd snapshot whose opaque directory containerd marked with
/// `trusted.overlay.opaque`, the first judges the image as the kernel would (`not_found`),
/// the second reports the merge it cannot see through as uncertain.
#[test]
fn the_agent_reports_whether_it_can_see_opaque_overlay_directories() {
    let _binfmt = support::binfmt_shared();
    let mut ctd = Containerd::start();
    let work = tempfile::tempdir().unwrap();
    let image = "archwatch.test/opaque-app:v1";
    let mut l = Layout::new();
    let m = l
        .add_image(&ImageSpec::new(
            "amd64",
            &["/app/server"],
            vec![
                Layer(vec![Item::file(
                    "/app/server",
                    support::busybox("arm64"),
                    0o755,
                )]),
                Layer(vec![
                    Item::dir("/app"),
                    Item::Opaque { dir: "/app".into() },
                    Item::file("/marker-opaque-app", b"".to_vec(), 0o644),
                ]),
            ],
        ))
        .unwrap();
    l.tag(image, &m);
    let p = work.path().join("opaque.tar");
    l.write_archive(&p).unwrap();
    ctd.import("k8s.io", &p);
    // containerd's overlay applier turned the `.wh..wh..opq` entry into the attribute.
    let snapshots = ctd
        .root()
        .join("io.containerd.snapshotter.v1.overlayfs/snapshots");
    let top = std::fs::read_dir(&snapshots)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("fs"))
        .find(|fs| fs.join("marker-opaque-app").exists())
        .expect("the top layer's snapshot");
    let mut buf = [0u8; 8];
    let n = rustix::fs::getxattr(top.join("app"), "trusted.overlay.opaque", &mut buf)
        .expect("containerd marked /app opaque");
    assert_eq!(&buf[..n], b"y");
    assert!(!top.join("app/.wh..wh..opq").exists());

    let openat = Path::new("openat");
    let sees = Agent::start(&ctd.socket, &[]);
    let blind = Agent::start_under(
        NO_SYS_ADMIN,
        &ctd.socket,
        &[],
        &[("ARCHWATCH_RESOLVER", openat)],
    );
    sees.wait_ready();
    blind.wait_ready();
    assert_eq!(sees.metric("archwatch_overlay_xattrs_readable", &[]), 1.0);
    assert_eq!(blind.metric("archwatch_overlay_xattrs_readable", &[]), 0.0);
    // The only image in this containerd (newer releases also list it by its digest, and the
    // agent records one image digest once).
    let image_record = |a: &Agent| {
        a.wait_for("the image's record", Duration::from_secs(30), || {
            a.lines().iter().any(|l| l["kind"] == "image")
        });
        a.lines()
            .into_iter()
            .find(|l| l["kind"] == "image")
            .unwrap()
    };
    let r = image_record(&sees);
    assert_eq!(r["verdict"], "not_found", "{r}");
    assert!(!r.to_string().contains("overlay_opaque_unknown"), "{r}");
    let r = image_record(&blind);
    let finding = r["findings"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["code"] == "overlay_opaque_unknown"))
        .unwrap_or_else(|| panic!("no overlay_opaque_unknown finding: {r}"));
    assert!(
        finding["detail"]
            .as_str()
            .is_some_and(|d| d.contains("/app/server") && d.contains("directory /app of layer 0")),
        "{finding}"
    );

    let warned = |a: &Agent| {
        plain(&a.log_text()).lines().any(|l| {
            l.contains("WARN")
                && l.contains("overlay_xattrs_readable=false")
                && l.contains("CAP_SYS_ADMIN")
        })
    };
    let resolver_line = |a: &Agent, name: &str| {
        plain(&a.log_text()).lines().any(|l| {
            l.contains("Resolving paths in image layers")
                && l.contains(&format!("resolver=\"{name}\""))
        })
    };
    assert!(warned(&blind), "{}", blind.log_text());
    assert!(!warned(&sees), "{}", sees.log_text());
    assert!(resolver_line(&sees, "openat2"), "{}", sees.log_text());
    assert!(resolver_line(&blind, "openat"), "{}", blind.log_text());
}

/// The log without its terminal colours.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
