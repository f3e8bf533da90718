//! What Docker Engine 20.10 (Debian's docker.io, with Debian's containerd 1.6 and runc 1.1)
//! really says for each seed incident, on a private dockerd (support/docker.rs). These are
//! the facts the Docker side of the agent joins its verdicts to:
//!
//! - an exec that fails in runc's final execve (wrong architecture, a CRLF shebang, a
//!   missing dynamic loader) happens after the container started: `docker run` exits 1,
//!   `.State.ExitCode` is 1, `.State.Error` is empty, and the only trace of the cause is the
//!   container's own stderr, one line `exec <argv0>: <strerror>`;
//! - an entrypoint that does not exist is refused at create: `docker run` exits 127,
//!   `.State.ExitCode` is 127, the container stays `created`, never started, and
//!   `.State.Error` holds runc's sentence;
//! - the image config's architecture changes nothing but a warning: Docker runs an arm64
//!   binary that an amd64 config hides exactly as it runs an honest arm64 image.
//!
//! They also pin what the agent reads from Docker: the API version, the overlay2
//! `GraphDriver` paths, and dockerd's own containerd (socket under the exec root, namespace
//! `moby`).

use std::path::Path;

use archwatch::oci::{ImageSpec, Item, Layer};
use goblin::elf::header::{EM_AARCH64, EM_X86_64};

use crate::support::docker::{self, Dockerd, RunOutcome};
use crate::support::{self};

/// runc 1.1's words for an execve that failed after the container started.
fn exec_line(argv0: &str, strerror: &str) -> String {
    format!("exec {argv0}: {strerror}\n")
}

fn e_machine(bytes: &[u8]) -> u16 {
    goblin::elf::Elf::parse(bytes)
        .expect("ELF")
        .header
        .e_machine
}

fn state(d: &Dockerd, name: &str) -> serde_json::Value {
    d.inspect(name)["State"].clone()
}

/// Started, then exited 1 with `line` as its whole stderr: how Docker 20.10 reports an
/// execve that the kernel refused.
fn assert_exec_failed_after_start(d: &Dockerd, name: &str, run: &RunOutcome, line: &str) {
    assert_eq!(run.exit_code, Some(1), "{run:?}");
    assert_eq!(run.stdout, "", "{run:?}");
    assert!(
        run.stderr.ends_with(line),
        "docker run's stderr ends with the container's own line {line:?}: {run:?}"
    );
    let s = state(d, name);
    assert_eq!(s["Status"], "exited", "{s}");
    assert_eq!(s["ExitCode"], 1, "{s}");
    assert_eq!(s["Error"], "", "{s}");
    assert_eq!(s["OOMKilled"], false, "{s}");
    assert_ne!(
        s["StartedAt"], "0001-01-01T00:00:00Z",
        "the container started: {s}"
    );
    assert_eq!(
        d.logs(name),
        (String::new(), line.to_string()),
        "the log is the one stderr line"
    );
}

#[test]
fn wrong_arch_entrypoint_exits_1_with_exec_format_error_in_the_log() {
    let _binfmt = support::binfmt_shared();
    let d = Dockerd::start();
    // An honest arm64 image: `docker build` on amd64 cannot make one, `docker load` can.
    let spec = ImageSpec::new(
        "arm64",
        &["/bin/app"],
        vec![Layer(vec![Item::file(
            "/bin/app",
            support::busybox("arm64"),
            0o755,
        )])],
    );
    d.load("aw/wrong-arch:1", &spec);
    let img = d.inspect("aw/wrong-arch:1");
    assert_eq!(
        (&img["Architecture"], &img["Os"]),
        (&"arm64".into(), &"linux".into())
    );

    let run = d.run("wrong-arch", "aw/wrong-arch:1", &[]);
    assert_exec_failed_after_start(
        &d,
        "wrong-arch",
        &run,
        &exec_line("/bin/app", "exec format error"),
    );
    // The one extra word Docker has for it: the daemon's create warning, printed by the CLI.
    assert!(
        run.stderr.starts_with(
            "WARNING: The requested image's platform (linux/arm64) does not match the detected \
             host platform (linux/amd64) and no specific platform was requested\n"
        ),
        "{run:?}"
    );
}

#[test]
fn config_that_says_amd64_for_an_arm64_binary_fails_the_same_without_a_warning() {
    let _binfmt = support::binfmt_shared();
    let d = Dockerd::start();
    let arm = support::busybox("arm64");
    d.build(
        "aw/config-lies:1",
        &[("bin/app", &arm, 0o755)],
        &["COPY bin/app /bin/app", r#"ENTRYPOINT ["/bin/app"]"#],
    );
    let img = d.inspect("aw/config-lies:1");
    assert_eq!(
        (&img["Architecture"], &img["Os"]),
        (&"amd64".into(), &"linux".into()),
        "the legacy builder writes the daemon's platform into the config"
    );
    // The bytes in the image are the arm64 ELF: read them where overlay2 keeps the layer.
    let top = img["GraphDriver"]["Data"]["UpperDir"]
        .as_str()
        .expect("UpperDir");
    let app = std::fs::read(Path::new(top).join("bin/app")).expect("layer file");
    assert_eq!(e_machine(&app), EM_AARCH64);

    let run = d.run("config-lies", "aw/config-lies:1", &[]);
    assert_exec_failed_after_start(
        &d,
        "config-lies",
        &run,
        &exec_line("/bin/app", "exec format error"),
    );
    assert_eq!(
        run.stderr,
        exec_line("/bin/app", "exec format error"),
        "no platform warning: the config claims the node's own platform"
    );
}

#[test]
fn crlf_shebang_exits_1_with_no_such_file_or_directory_in_the_log() {
    let d = Dockerd::start();
    let sh = support::busybox("amd64");
    let script: &[u8] = b"#!/bin/sh\r\necho started\r\n";
    d.build(
        "aw/crlf:1",
        &[("bin/sh", &sh, 0o755), ("app.sh", script, 0o755)],
        &[
            "COPY bin/sh /bin/sh",
            "COPY app.sh /app.sh",
            r#"ENTRYPOINT ["/app.sh"]"#,
        ],
    );
    let run = d.run("crlf", "aw/crlf:1", &[]);
    assert_exec_failed_after_start(
        &d,
        "crlf",
        &run,
        &exec_line("/app.sh", "no such file or directory"),
    );
    assert_eq!(
        run.stderr,
        exec_line("/app.sh", "no such file or directory")
    );

    // /bin/sh itself works: the kernel looked for "/bin/sh\r".
    let sh_run = d.run_cmd(
        "crlf-via-sh",
        "aw/crlf:1",
        &["--entrypoint", "/bin/sh"],
        &["/app.sh"],
    );
    assert_eq!(sh_run.exit_code, Some(0), "{sh_run:?}");
    assert_eq!(sh_run.stdout, "started\r\n", "{sh_run:?}");
}

#[test]
fn glibc_binary_on_a_musl_image_exits_1_with_no_such_file_or_directory_in_the_log() {
    let d = Dockerd::start();
    let glibc_true = std::fs::read("/bin/true").expect("/bin/true");
    let elf = goblin::elf::Elf::parse(&glibc_true).expect("ELF");
    assert_eq!(elf.header.e_machine, EM_X86_64);
    assert_eq!(elf.interpreter, Some("/lib64/ld-linux-x86-64.so.2"));
    let musl = support::musl_loader();
    d.build(
        "aw/glibc-on-musl:1",
        &[
            ("bin/true", &glibc_true, 0o755),
            ("lib/ld-musl-x86_64.so.1", &musl, 0o755),
        ],
        &[
            "COPY bin/ /bin/",
            "COPY lib/ /lib/",
            r#"ENTRYPOINT ["/bin/true"]"#,
        ],
    );
    let run = d.run("glibc-on-musl", "aw/glibc-on-musl:1", &[]);
    assert_exec_failed_after_start(
        &d,
        "glibc-on-musl",
        &run,
        &exec_line("/bin/true", "no such file or directory"),
    );
    assert_eq!(
        run.stderr,
        exec_line("/bin/true", "no such file or directory")
    );
}

#[test]
fn missing_entrypoint_is_refused_at_create_with_127() {
    let d = Dockerd::start();
    let bb = support::busybox("amd64");
    d.build(
        "aw/missing:1",
        &[("bin/busybox", &bb, 0o755)],
        &["COPY bin/busybox /bin/busybox", r#"ENTRYPOINT ["/nope"]"#],
    );
    let run = d.run("missing", "aw/missing:1", &[]);
    let runc = "failed to create shim task: OCI runtime create failed: runc create failed: \
                unable to start container process: exec: \"/nope\": stat /nope: no such file \
                or directory: unknown";
    assert_eq!(run.exit_code, Some(127), "{run:?}");
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr
            .starts_with(&format!("docker: Error response from daemon: {runc}.\n")),
        "{run:?}"
    );
    let s = state(&d, "missing");
    assert_eq!(s["Status"], "created", "never started: {s}");
    assert_eq!(s["ExitCode"], 127, "{s}");
    assert_eq!(s["Error"], runc, "{s}");
    assert_eq!(s["StartedAt"], "0001-01-01T00:00:00Z", "{s}");
    assert_eq!(s["Pid"], 0, "{s}");
    assert_eq!(d.logs("missing"), (String::new(), String::new()));
}

#[test]
fn healthy_busybox_true_exits_0() {
    let d = Dockerd::start();
    let bb = support::busybox("amd64");
    d.build(
        "aw/healthy:1",
        &[("bin/busybox", &bb, 0o755)],
        &[
            "COPY bin/busybox /bin/busybox",
            r#"ENTRYPOINT ["/bin/busybox", "true"]"#,
        ],
    );
    let run = d.run("healthy", "aw/healthy:1", &[]);
    assert_eq!(run.exit_code, Some(0), "{run:?}");
    assert_eq!((run.stdout.as_str(), run.stderr.as_str()), ("", ""));
    let s = state(&d, "healthy");
    assert_eq!(s["Status"], "exited", "{s}");
    assert_eq!(s["ExitCode"], 0, "{s}");
    assert_eq!(s["Error"], "", "{s}");
    assert_ne!(s["StartedAt"], "0001-01-01T00:00:00Z", "{s}");
    // What the container prints is what run() returns.
    let echo = d.run_cmd(
        "healthy-echo",
        "aw/healthy:1",
        &["--entrypoint", "/bin/busybox"],
        &["echo", "hello"],
    );
    assert_eq!(echo.exit_code, Some(0), "{echo:?}");
    assert_eq!(echo.stdout, "hello\n");
}

/// A busybox image of two layers whose default command sleeps.
fn sleeper(d: &Dockerd, tag: &str) {
    let bb = support::busybox("amd64");
    d.build(
        tag,
        &[
            ("bin/busybox", &bb, 0o755),
            ("app/marker", b"top layer\n", 0o644),
        ],
        &[
            "COPY bin/busybox /bin/busybox",
            "COPY app/marker /app/marker",
            r#"ENTRYPOINT ["/bin/busybox", "sleep", "60"]"#,
        ],
    );
}

#[test]
fn dockerd_speaks_api_1_41_and_keeps_overlay2_layers_under_its_data_root() {
    let d = Dockerd::start();
    assert_eq!(d.api_version(), "1.41");
    assert!(
        d.docker_ok(&["version", "--format", "{{.Server.Version}}"])
            .starts_with("20.10."),
        "Debian's Engine 20.10"
    );
    assert_eq!(
        d.docker_ok(&["info", "--format", "{{.Driver}}"]),
        "overlay2"
    );
    sleeper(&d, "aw/sleeper:1");
    let id = d.docker_ok(&[
        "run",
        "-d",
        "--name",
        "sleeper",
        "--network",
        "none",
        "aw/sleeper:1",
    ]);
    let c = d.inspect("sleeper");
    assert_eq!(c["Id"], id.as_str());
    assert_eq!(c["GraphDriver"]["Name"], "overlay2");
    let g = &c["GraphDriver"]["Data"];
    let overlay2 = d.data_root().join("overlay2").display().to_string();
    let merged = g["MergedDir"].as_str().expect("MergedDir");
    let upper = g["UpperDir"].as_str().expect("UpperDir");
    let work = g["WorkDir"].as_str().expect("WorkDir");
    // <data-root>/overlay2/<layer>/{merged,diff,work}
    let layer_dir = merged.strip_suffix("/merged").expect("…/merged");
    assert_eq!(Path::new(layer_dir).parent(), Some(Path::new(&overlay2)));
    assert_eq!(upper, format!("{layer_dir}/diff"));
    assert_eq!(work, format!("{layer_dir}/work"));
    assert!(
        docker::mounts_under(&d.data_root()).contains(&merged.to_string()),
        "MergedDir is an overlay mount while the container runs"
    );
    // LowerDir: the container's init layer, then the image's layers top first.
    let lower: Vec<&str> = g["LowerDir"]
        .as_str()
        .expect("LowerDir")
        .split(':')
        .collect();
    assert_eq!(lower[0], format!("{layer_dir}-init/diff"));
    assert!(Path::new(lower[0]).join(".dockerenv").is_file());
    let img = d.inspect("aw/sleeper:1");
    let ig = &img["GraphDriver"]["Data"];
    let mut image_layers = vec![ig["UpperDir"].as_str().expect("image UpperDir")];
    image_layers.extend(ig["LowerDir"].as_str().expect("image LowerDir").split(':'));
    assert_eq!(lower[1..], image_layers[..]);
    assert_eq!(
        img["RootFS"]["Layers"].as_array().map(Vec::len),
        Some(2),
        "one layer per COPY"
    );
    for l in &lower[1..] {
        let p = Path::new(l);
        assert_eq!(p.file_name().and_then(|n| n.to_str()), Some("diff"));
        assert_eq!(
            p.parent().and_then(Path::parent),
            Some(Path::new(&overlay2))
        );
    }
    assert_eq!(
        std::fs::read(Path::new(lower[1]).join("app/marker")).expect("top image layer"),
        b"top layer\n"
    );
    assert!(Path::new(lower[2]).join("bin/busybox").is_file());
}

#[test]
fn dockerd_runs_its_own_containerd_under_its_exec_root_beside_a_lab_containerd() {
    let lab = support::containerd::Containerd::start();
    let d = Dockerd::start();
    assert!(
        d.log()
            .contains("libcontainerd: started new containerd process"),
        "dockerd manages its containerd"
    );
    let sock = d.containerd_socket();
    assert!(sock.starts_with(d.exec_root()));
    assert_ne!(sock, lab.socket);
    {
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::metadata(&sock)
            .expect("containerd socket")
            .file_type()
            .is_socket());
    }
    let toml = std::fs::read_to_string(d.exec_root().join("containerd/containerd.toml"))
        .expect("managed containerd config");
    assert!(
        toml.contains(&format!("address = \"{}\"", sock.display())),
        "{toml}"
    );
    assert!(
        toml.contains(&format!(
            "root = \"{}\"",
            d.data_root().join("containerd/daemon").display()
        )),
        "{toml}"
    );

    sleeper(&d, "aw/sleeper:1");
    let id = d.docker_ok(&[
        "run",
        "-d",
        "--name",
        "sleeper",
        "--network",
        "none",
        "aw/sleeper:1",
    ]);
    let ctr = |args: &[&str]| {
        let o = std::process::Command::new("/usr/bin/ctr")
            .arg("--address")
            .arg(&sock)
            .args(args)
            .output()
            .expect("ctr");
        assert!(o.status.success(), "ctr {args:?}: {o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(ctr(&["namespaces", "ls", "-q"]).trim(), "moby");
    assert_eq!(ctr(&["-n", "moby", "containers", "ls", "-q"]).trim(), id);
    let lab_ns = lab.ctr_ns("default", &["namespaces", "ls", "-q"]);
    assert!(
        !String::from_utf8_lossy(&lab_ns.stdout).contains("moby"),
        "the lab containerd never sees Docker's containers"
    );
    // The shim names dockerd's containerd and the moby namespace.
    let shim = d
        .leftover_processes()
        .into_iter()
        .map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
        .map(|c| {
            c.split(|b| *b == 0)
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
        })
        .find(|argv| argv.iter().any(|a| a == &id))
        .expect("the container's shim");
    assert!(shim[0].ends_with("containerd-shim-runc-v2"), "{shim:?}");
    let arg = |flag: &str| {
        shim.iter()
            .position(|a| a == flag)
            .and_then(|i| shim.get(i + 1))
            .cloned()
    };
    assert_eq!(arg("-namespace").as_deref(), Some("moby"));
    assert_eq!(arg("-address"), Some(sock.display().to_string()));
}

/// Everything a Dockerd made, to check after it is dropped.
struct Traces {
    dir: std::path::PathBuf,
    pids: Vec<u32>,
    cgroups: Vec<std::path::PathBuf>,
}

fn traces_with_a_running_container(d: &Dockerd) -> Traces {
    sleeper(d, "aw/sleeper:1");
    d.docker_ok(&[
        "run",
        "-d",
        "--name",
        "sleeper",
        "--network",
        "none",
        "aw/sleeper:1",
    ]);
    let container_pid = state(d, "sleeper")["Pid"].as_u64().expect("Pid") as u32;
    assert!(container_pid > 0);
    let containerd_pid: u32 =
        std::fs::read_to_string(d.exec_root().join("containerd/containerd.pid"))
            .expect("containerd.pid")
            .trim()
            .parse()
            .expect("pid");
    let mut pids = d.leftover_processes();
    assert!(
        pids.contains(&container_pid) && pids.contains(&containerd_pid),
        "{pids:?}"
    );
    pids.push(d.pid().expect("dockerd runs"));
    let cgroups = d.cgroup_dirs();
    assert!(
        !cgroups.is_empty(),
        "containers live under the private cgroup parent"
    );
    let mounts = d.mounts();
    assert!(
        mounts.iter().any(|m| m.ends_with("/merged"))
            && mounts.iter().any(|m| m.contains("/netns/")),
        "an overlay and a network namespace are mounted: {mounts:?}"
    );
    Traces {
        dir: d.dir().to_path_buf(),
        pids,
        cgroups,
    }
}

fn assert_nothing_left(t: &Traces) {
    assert!(
        docker::mounts_under(&t.dir).is_empty(),
        "{:?}",
        docker::mounts_under(&t.dir)
    );
    assert!(!t.dir.exists(), "{} removed", t.dir.display());
    for pid in &t.pids {
        assert!(
            !docker::alive(*pid),
            "pid {pid} still runs: {:?}",
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
        );
    }
    for c in &t.cgroups {
        assert!(!c.exists(), "{} removed", c.display());
    }
}

#[test]
fn dockerd_leaves_no_mount_process_or_cgroup_behind() {
    let d = Dockerd::start();
    let t = traces_with_a_running_container(&d);
    // dockerd writes one libtrust key: here, not /etc/docker/key.json.
    assert!(
        d.dir().join("key.json").is_file(),
        "the trust key is private"
    );
    drop(d);
    assert_nothing_left(&t);
}

#[test]
fn dockerd_killed_hard_still_leaves_nothing_behind() {
    let mut d = Dockerd::start();
    let t = traces_with_a_running_container(&d);
    d.kill_hard();
    drop(d);
    assert_nothing_left(&t);
}

#[test]
fn engine_20_10_docker_load_refuses_an_oci_archive() {
    // Why Dockerd::load converts with skopeo: this Engine reads only Docker's own archive
    // format (manifest.json); an OCI layout's index.json is not looked at.
    let d = Dockerd::start();
    let spec = ImageSpec::new(
        "amd64",
        &["/bin/busybox", "true"],
        vec![Layer(vec![Item::file(
            "/bin/busybox",
            support::busybox("amd64"),
            0o755,
        )])],
    );
    let mut l = archwatch::oci::Layout::new();
    let m = l.add_image(&spec).expect("image");
    l.tag("aw/oci:1", &m);
    let archive = d.dir().join("oci.tar");
    l.write_archive(&archive).expect("archive");
    let o = d.docker(&["load", "-i", &archive.display().to_string()]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("open ")
            && err
                .trim_end()
                .ends_with("/blobs/json: no such file or directory"),
        "{err}"
    );
    assert_eq!(d.docker_ok(&["images", "-q"]), "", "nothing was loaded");
    // The same layout, converted to Docker's archive format by Dockerd::load, runs.
    d.load("aw/oci:1", &spec);
    let run = d.run("oci", "aw/oci:1", &[]);
    assert_eq!(run.exit_code, Some(0), "{run:?}");
}
