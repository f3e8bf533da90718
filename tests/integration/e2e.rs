//! Verdict vs reality: the same images are inspected by `archwatch inspect` (files only) and
//! run for real by containerd + runc. Every verdict that says "will not exec" must fail with
//! the symptom ARCHITECTURE.md lists for it; every `ok` must run.

use std::time::Duration;

use archwatch::oci::{ImageSpec, Item, Layer, Layout};

use crate::support::{self, containerd::Containerd};

const NS: &str = "archwatch-test";

pub struct Case {
    pub name: &'static str,
    pub spec: ImageSpec,
    /// Verdict on a node with no binfmt_misc handler for the binary.
    pub want: &'static str,
    /// The fix code that goes with it (the cause, not the symptom).
    pub fix: &'static str,
}

fn bb(arch: &str) -> Item {
    Item::file("/bin/busybox", support::busybox(arch), 0o755)
}

fn image(arch: &str, argv: &[&str], items: Vec<Item>) -> ImageSpec {
    ImageSpec::new(arch, argv, vec![Layer(items)])
}

/// The incident fixtures. Real binaries from Debian packages.
pub fn cases() -> Vec<Case> {
    let host_true = std::fs::read("/usr/bin/true").expect("/usr/bin/true");
    let sh = || Item::symlink("/bin/sh", "/bin/busybox");
    let foreign = |deb: &'static str, oci: &str, name: &'static str| Case {
        name,
        spec: image(
            oci,
            &["/app", "true"],
            vec![Item::file("/app", support::busybox(deb), 0o755)],
        ),
        want: "arch_mismatch",
        fix: "publish_multiarch",
    };
    vec![
        Case {
            name: "ok-amd64",
            spec: image("amd64", &["/bin/busybox", "true"], vec![bb("amd64")]),
            want: "ok",
            fix: "none",
        },
        Case {
            name: "ok-i386-compat",
            spec: image("386", &["/bin/busybox", "true"], vec![bb("i386")]),
            want: "ok",
            fix: "none",
        },
        Case {
            name: "ok-bare-name-in-path",
            spec: image(
                "amd64",
                &["true"],
                vec![bb("amd64"), Item::symlink("/usr/bin/true", "/bin/busybox")],
            ),
            want: "ok",
            fix: "none",
        },
        foreign("arm64", "arm64", "arm64-on-amd64"),
        foreign("armhf", "arm", "armhf-on-amd64"),
        foreign("s390x", "s390x", "s390x-on-amd64"),
        foreign("ppc64el", "ppc64le", "ppc64el-on-amd64"),
        foreign("mips64el", "mips64le", "mips64el-on-amd64"),
        Case {
            name: "config-says-amd64-binary-is-arm64",
            spec: image(
                "amd64",
                &["/app", "true"],
                vec![Item::file("/app", support::busybox("arm64"), 0o755)],
            ),
            want: "arch_mismatch",
            fix: "fix_build_stage",
        },
        Case {
            name: "glibc-binary-on-musl-image",
            spec: image(
                "amd64",
                &["/app"],
                vec![
                    Item::file("/app", host_true.clone(), 0o755),
                    Item::file(
                        "/lib/x86_64-linux-musl/libc.so",
                        support::musl_loader(),
                        0o755,
                    ),
                    Item::symlink("/lib/ld-musl-x86_64.so.1", "/lib/x86_64-linux-musl/libc.so"),
                ],
            ),
            want: "missing_loader",
            fix: "use_glibc_base_or_static",
        },
        Case {
            name: "dynamic-binary-no-libc",
            spec: image(
                "amd64",
                &["/app"],
                vec![Item::file("/app", host_true, 0o755)],
            ),
            want: "missing_loader",
            fix: "use_glibc_base_or_static",
        },
        Case {
            name: "crlf-entrypoint-script",
            spec: image(
                "amd64",
                &["/entrypoint.sh"],
                vec![
                    bb("amd64"),
                    sh(),
                    Item::file(
                        "/entrypoint.sh",
                        b"#!/bin/sh\r\necho hi\r\n".to_vec(),
                        0o755,
                    ),
                ],
            ),
            want: "script_crlf",
            fix: "convert_to_lf",
        },
        Case {
            name: "python-script-without-python",
            spec: image(
                "amd64",
                &["/run.py"],
                vec![
                    bb("amd64"),
                    Item::file("/run.py", b"#!/usr/bin/python3\nprint(1)\n".to_vec(), 0o755),
                ],
            ),
            want: "script_interpreter_missing",
            fix: "install_interpreter",
        },
        Case {
            name: "script-without-shebang",
            spec: image(
                "amd64",
                &["/run.sh"],
                vec![
                    bb("amd64"),
                    Item::file("/run.sh", b"echo hi\n".to_vec(), 0o755),
                ],
            ),
            want: "script_no_shebang",
            fix: "fix_shebang",
        },
        Case {
            name: "bom-before-shebang",
            spec: image(
                "amd64",
                &["/run.sh"],
                vec![
                    bb("amd64"),
                    sh(),
                    Item::file(
                        "/run.sh",
                        b"\xef\xbb\xbf#!/bin/sh\necho hi\n".to_vec(),
                        0o755,
                    ),
                ],
            ),
            want: "script_no_shebang",
            fix: "fix_shebang",
        },
        Case {
            name: "script-on-arm64-shell",
            spec: image(
                "amd64",
                &["/run.sh"],
                vec![
                    Item::file("/bin/sh", support::busybox("arm64"), 0o755),
                    Item::file("/run.sh", b"#!/bin/sh\necho hi\n".to_vec(), 0o755),
                ],
            ),
            want: "arch_mismatch",
            fix: "fix_build_stage",
        },
        Case {
            name: "no-execute-bit",
            spec: image(
                "amd64",
                &["/app", "true"],
                vec![Item::file("/app", support::busybox("amd64"), 0o644)],
            ),
            want: "not_executable",
            fix: "add_execute_bit",
        },
        Case {
            name: "entrypoint-missing",
            spec: image("amd64", &["/nope"], vec![bb("amd64")]),
            want: "not_found",
            fix: "fix_entrypoint_path",
        },
        Case {
            name: "symlink-loop",
            spec: image(
                "amd64",
                &["/a"],
                vec![
                    bb("amd64"),
                    Item::symlink("/a", "/b"),
                    Item::symlink("/b", "/a"),
                ],
            ),
            want: "symlink_loop",
            fix: "fix_symlink",
        },
        Case {
            name: "entrypoint-is-a-directory",
            spec: image("amd64", &["/app"], vec![bb("amd64"), Item::dir("/app")]),
            want: "not_a_regular_file",
            fix: "fix_entrypoint_path",
        },
        Case {
            name: "entrypoint-is-a-fifo",
            spec: image(
                "amd64",
                &["/app"],
                vec![
                    bb("amd64"),
                    Item::Fifo {
                        path: "/app".into(),
                        mode: 0o755,
                    },
                ],
            ),
            want: "not_a_regular_file",
            fix: "fix_entrypoint_path",
        },
        Case {
            name: "macos-binary",
            spec: image(
                "amd64",
                &["/app"],
                vec![
                    bb("amd64"),
                    Item::file(
                        "/app",
                        b"\xcf\xfa\xed\xfe\x07\x00\x00\x01\x03\x00\x00\x00".to_vec(),
                        0o755,
                    ),
                ],
            ),
            want: "unknown_format",
            fix: "ship_linux_binary",
        },
        Case {
            name: "truncated-elf",
            spec: image(
                "amd64",
                &["/app"],
                vec![
                    bb("amd64"),
                    Item::file("/app", support::busybox("amd64")[..20].to_vec(), 0o755),
                ],
            ),
            want: "unknown_format",
            fix: "ship_linux_binary",
        },
        Case {
            name: "whiteout-hides-entrypoint",
            spec: ImageSpec::new(
                "amd64",
                &["/app", "true"],
                vec![
                    Layer(vec![
                        bb("amd64"),
                        Item::file("/app", support::busybox("amd64"), 0o755),
                    ]),
                    Layer(vec![Item::Whiteout {
                        path: "/app".into(),
                    }]),
                ],
            ),
            want: "not_found",
            fix: "fix_entrypoint_path",
        },
        Case {
            name: "opaque-dir-hides-entrypoint",
            spec: ImageSpec::new(
                "amd64",
                &["/opt/app/run", "true"],
                vec![
                    Layer(vec![
                        bb("amd64"),
                        Item::file("/opt/app/run", support::busybox("amd64"), 0o755),
                    ]),
                    Layer(vec![
                        Item::Opaque {
                            dir: "/opt/app".into(),
                        },
                        Item::file("/opt/app/README", b"moved".to_vec(), 0o644),
                    ]),
                ],
            ),
            want: "not_found",
            fix: "fix_entrypoint_path",
        },
    ]
}

/// The symptom ARCHITECTURE.md lists for each verdict.
pub fn symptom(verdict: &str) -> &'static str {
    match verdict {
        "arch_mismatch" | "script_no_shebang" | "unknown_format" => "exec format error",
        "not_executable" | "not_a_regular_file" => "permission denied",
        "symlink_loop" => "too many levels of symbolic links",
        _ => "no such file or directory",
    }
}

/// True when the live binfmt_misc table has an enabled handler (the expectation for a
/// foreign binary then becomes `emulated`).
fn live_binfmt_handlers() -> bool {
    archwatch::binfmt::Table::read_dir(std::path::Path::new("/proc/sys/fs/binfmt_misc"))
        .map(|(t, _)| t.enabled && t.handlers.iter().any(|h| h.enabled))
        .unwrap_or(false)
}

#[test]
fn verdicts_match_what_the_kernel_does() {
    let _binfmt = support::binfmt_shared();
    let mut ctd = Containerd::start();
    let work = tempfile::tempdir().unwrap();
    let handlers = live_binfmt_handlers();
    let mut report = Vec::new();
    for (i, c) in cases().into_iter().enumerate() {
        let tag = format!("archwatch.test/e2e/{}:v1", c.name);
        let mut layout = Layout::new();
        let m = layout.add_image(&c.spec).unwrap();
        layout.tag(&tag, &m);
        let archive = work.path().join(format!("{i}.tar"));
        layout.write_archive(&archive).unwrap();
        ctd.import(NS, &archive);

        // Files only.
        let layers = support::materialize(&c.spec.layers, &work.path().join(format!("rootfs{i}")));
        let joined = layers
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let mut argv: Vec<String> = c.spec.entrypoint.clone();
        argv.extend(c.spec.cmd.clone());
        let out = support::archwatch()
            .args([
                "inspect",
                "--json",
                "--layers",
                &joined,
                "--env",
                &c.spec.env[0],
                "--claimed-arch",
                &c.spec.architecture,
                "--",
            ])
            .args(&argv)
            .output()
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("{}: {e}: {}", c.name, String::from_utf8_lossy(&out.stderr))
        });
        let verdict = json["verdict"].as_str().unwrap().to_string();
        if !handlers {
            assert_eq!(verdict, c.want, "{}: {json:#}", c.name);
            assert_eq!(json["fix_code"], c.fix, "{}: {json:#}", c.name);
        }
        let expected_exit = match verdict.as_str() {
            "ok" => 0,
            "emulated" => 3,
            _ => 1,
        };
        assert_eq!(out.status.code(), Some(expected_exit), "{}", c.name);

        // Reality.
        // `ctr run --rm` can lose a fast-exiting task's output under load: run again (same
        // image, same outcome) until the runtime's words are there.
        let mut run = ctd.run(NS, &tag, &format!("e2e-{i}"), &[], Duration::from_secs(30));
        for attempt in 1..4 {
            if run.code == Some(0) || !run.output.trim().is_empty() {
                break;
            }
            run = ctd.run(
                NS,
                &tag,
                &format!("e2e-{i}-{attempt}"),
                &[],
                Duration::from_secs(30),
            );
        }
        if verdict == "ok" || verdict == "emulated" {
            assert_eq!(
                run.code,
                Some(0),
                "{} ({verdict}) should run: {}",
                c.name,
                run.output
            );
        } else {
            assert_ne!(
                run.code,
                Some(0),
                "{} ({verdict}) should fail: {}",
                c.name,
                run.output
            );
            assert!(
                run.output.to_lowercase().contains(symptom(&verdict)),
                "{} ({verdict}): runtime said {:?}, expected {:?}",
                c.name,
                run.output.trim(),
                symptom(&verdict)
            );
        }
        report.push(format!(
            "{:<36} {:<28} exit {:?}: {}",
            c.name,
            verdict,
            run.code,
            run.output.trim().lines().last().unwrap_or("")
        ));
    }
    eprintln!("{}", report.join("\n"));
}

/// One file of a root directory for the exec-chain cases: path, content, mode, owner.
enum F {
    File(&'static str, Vec<u8>, u32, (u32, u32)),
    Dir(&'static str, u32, (u32, u32)),
    Link(&'static str, &'static str),
}

fn build_root(dir: &std::path::Path, files: &[F]) {
    use std::os::unix::fs::PermissionsExt;
    for f in files {
        let p = |rel: &str| dir.join(rel.trim_start_matches('/'));
        match f {
            F::File(rel, bytes, mode, (u, g)) => {
                let path = p(rel);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, bytes).unwrap();
                std::os::unix::fs::chown(&path, Some(*u), Some(*g)).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).unwrap();
            }
            F::Dir(rel, mode, (u, g)) => {
                let path = p(rel);
                std::fs::create_dir_all(&path).unwrap();
                std::os::unix::fs::chown(&path, Some(*u), Some(*g)).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).unwrap();
            }
            F::Link(rel, target) => {
                let path = p(rel);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::os::unix::fs::symlink(target, &path).unwrap();
            }
        }
    }
}

/// What the run must show.
enum Reality {
    /// The process runs and exits 0.
    Runs,
    /// It fails with this exit status and these words in runc's or the process's output.
    Fails(i32, &'static str),
}

struct ChainCase {
    name: &'static str,
    files: Vec<F>,
    argv: &'static [&'static str],
    user: Option<(u32, u32, &'static [u32])>,
    verdict: &'static str,
    /// The symptom archwatch gives (`symptom` in its JSON).
    symptom: &'static str,
    /// A finding archwatch must report.
    finding: Option<&'static str>,
    reality: Reality,
}

const ROOT: (u32, u32) = (0, 0);

/// Entrypoint scripts and wrappers, users and permissions, loaders and `#!` lines: each
/// case is run by runc on this kernel, and inspected by archwatch, and both must agree.
///
/// What a failed exec inside the container looks like is the shell's or wrapper's own: on
/// ENOEXEC busybox's `exec` runs the file as a shell script (exit 2, "syntax error"), and
/// busybox's `env` (static glibc `execvp`) falls back to `/bin/sh FILE` and, without one,
/// says "No such file or directory" (exit 127).
fn chain_cases() -> Vec<ChainCase> {
    let bb = || F::File("/bin/busybox", support::busybox("amd64"), 0o755, ROOT);
    let sh = || F::Link("/bin/sh", "busybox");
    let arm64 = || support::busybox("arm64");
    let amd64 = || support::busybox("amd64");
    let host_true = std::fs::read("/usr/bin/true").expect("/usr/bin/true");
    let docker_library = b"#!/bin/sh\nset -e\n\n# first arg is `-f` or `--some-option`\nif [ \"${1#-}\" != \"$1\" ]; then\n\tset -- app \"$@\"\nfi\n\nexec \"$@\"\n".to_vec();
    vec![
        ChainCase {
            name: "entrypoint-execs-arm64-cmd",
            files: vec![
                bb(),
                sh(),
                F::File("/docker-entrypoint.sh", docker_library.clone(), 0o755, ROOT),
                F::File("/usr/local/bin/app", arm64(), 0o755, ROOT),
            ],
            argv: &["/docker-entrypoint.sh", "app"],
            user: None,
            verdict: "arch_mismatch",
            symptom: "exec format error",
            finding: None,
            reality: Reality::Fails(2, "/usr/local/bin/app: line 1: syntax error"),
        },
        ChainCase {
            name: "entrypoint-option-becomes-arm64-app",
            files: vec![
                bb(),
                sh(),
                F::File("/docker-entrypoint.sh", docker_library.clone(), 0o755, ROOT),
                F::File("/usr/local/bin/app", arm64(), 0o755, ROOT),
            ],
            argv: &["/docker-entrypoint.sh", "--port", "80"],
            user: None,
            verdict: "arch_mismatch",
            symptom: "exec format error",
            finding: None,
            reality: Reality::Fails(2, "/usr/local/bin/app: line 1: syntax error"),
        },
        ChainCase {
            name: "entrypoint-execs-native-cmd",
            files: vec![
                bb(),
                sh(),
                F::File("/docker-entrypoint.sh", docker_library.clone(), 0o755, ROOT),
                F::Link("/usr/local/bin/true", "/bin/busybox"),
            ],
            argv: &["/docker-entrypoint.sh", "true"],
            user: None,
            verdict: "ok",
            symptom: "runs",
            finding: None,
            reality: Reality::Runs,
        },
        ChainCase {
            name: "entrypoint-execs-missing-cmd",
            files: vec![
                bb(),
                sh(),
                F::File("/docker-entrypoint.sh", docker_library, 0o755, ROOT),
            ],
            argv: &["/docker-entrypoint.sh", "nope"],
            user: None,
            verdict: "not_found",
            symptom: "no such file or directory",
            finding: None,
            reality: Reality::Fails(127, "nope: not found"),
        },
        ChainCase {
            name: "script-execs-explicit-arm64-path",
            files: vec![
                bb(),
                sh(),
                F::File(
                    "/start.sh",
                    b"#!/bin/sh\nexec /usr/local/bin/server --port 8080\n".to_vec(),
                    0o755,
                    ROOT,
                ),
                F::File("/usr/local/bin/server", arm64(), 0o755, ROOT),
            ],
            argv: &["/start.sh"],
            user: None,
            verdict: "arch_mismatch",
            symptom: "exec format error",
            finding: None,
            reality: Reality::Fails(2, "/usr/local/bin/server: line 1: syntax error"),
        },
        ChainCase {
            name: "script-exec-under-unknown-condition",
            files: vec![
                bb(),
                sh(),
                F::File(
                    "/start.sh",
                    b"#!/bin/sh\nif [ -f /etc/app.conf ]; then\n  exec /usr/local/bin/server\nfi\n"
                        .to_vec(),
                    0o755,
                    ROOT,
                ),
                F::File("/etc/app.conf", b"x=1\n".to_vec(), 0o644, ROOT),
                F::File("/usr/local/bin/server", arm64(), 0o755, ROOT),
            ],
            argv: &["/start.sh"],
            user: None,
            verdict: "ok",
            symptom: "runs",
            finding: Some("exec_uncertain"),
            reality: Reality::Fails(2, "/usr/local/bin/server: line 1: syntax error"),
        },
        ChainCase {
            name: "env-wrapper-runs-arm64",
            files: vec![
                bb(),
                F::Link("/usr/bin/env", "/bin/busybox"),
                F::File("/app", arm64(), 0o755, ROOT),
            ],
            argv: &["/usr/bin/env", "/app"],
            user: None,
            verdict: "arch_mismatch",
            symptom: "exec format error",
            finding: None,
            reality: Reality::Fails(127, "env: can't execute '/app'"),
        },
        ChainCase {
            name: "user-0700-root-binary",
            files: vec![F::File("/bin/true", amd64(), 0o700, ROOT)],
            argv: &["/bin/true"],
            user: Some((1000, 1000, &[])),
            verdict: "not_executable",
            symptom: "permission denied",
            finding: None,
            reality: Reality::Fails(1, "permission denied"),
        },
        ChainCase {
            name: "user-0700-directory",
            files: vec![
                F::Dir("/secret", 0o700, ROOT),
                F::File("/secret/true", amd64(), 0o755, ROOT),
            ],
            argv: &["/secret/true"],
            user: Some((1000, 1000, &[])),
            verdict: "not_executable",
            symptom: "permission denied",
            finding: None,
            reality: Reality::Fails(1, "permission denied"),
        },
        ChainCase {
            name: "user-owns-its-0700-binary",
            files: vec![F::File("/bin/true", amd64(), 0o700, (1000, 1000))],
            argv: &["/bin/true"],
            user: Some((1000, 1000, &[])),
            verdict: "ok",
            symptom: "runs",
            finding: None,
            reality: Reality::Runs,
        },
        ChainCase {
            name: "user-in-additional-group",
            files: vec![F::File("/bin/true", amd64(), 0o750, (0, 2000))],
            argv: &["/bin/true"],
            user: Some((1000, 1000, &[2000])),
            verdict: "ok",
            symptom: "runs",
            finding: None,
            reality: Reality::Runs,
        },
        ChainCase {
            name: "owner-bits-win-over-other",
            files: vec![F::File("/bin/true", amd64(), 0o601, (1000, 1000))],
            argv: &["/bin/true"],
            user: Some((1000, 1000, &[])),
            verdict: "not_executable",
            symptom: "permission denied",
            finding: None,
            reality: Reality::Fails(1, "permission denied"),
        },
        ChainCase {
            name: "root-runs-another-users-0700-binary",
            files: vec![F::File("/bin/true", amd64(), 0o700, (1000, 1000))],
            argv: &["/bin/true"],
            user: None,
            verdict: "ok",
            symptom: "runs",
            finding: None,
            reality: Reality::Runs,
        },
        ChainCase {
            name: "user-interpreter-0700",
            files: vec![
                F::File("/bin/busybox", amd64(), 0o700, ROOT),
                sh(),
                F::File("/run.sh", b"#!/bin/sh\ntrue\n".to_vec(), 0o755, ROOT),
            ],
            argv: &["/run.sh"],
            user: Some((1000, 1000, &[])),
            verdict: "not_executable",
            symptom: "permission denied",
            finding: None,
            reality: Reality::Fails(1, "permission denied"),
        },
        ChainCase {
            name: "loader-is-arm64",
            files: vec![
                F::File("/app", host_true.clone(), 0o755, ROOT),
                F::File("/lib64/ld-linux-x86-64.so.2", arm64(), 0o755, ROOT),
            ],
            argv: &["/app"],
            user: None,
            verdict: "arch_mismatch",
            symptom: "accessing a corrupted shared library",
            finding: None,
            reality: Reality::Fails(1, "accessing a corrupted shared library"),
        },
        ChainCase {
            name: "loader-is-text",
            files: vec![
                F::File("/app", host_true.clone(), 0o755, ROOT),
                F::File(
                    "/lib64/ld-linux-x86-64.so.2",
                    b"this is not a loader, it is a note left by a broken build step\n".repeat(2),
                    0o755,
                    ROOT,
                ),
            ],
            argv: &["/app"],
            user: None,
            verdict: "unknown_format",
            symptom: "accessing a corrupted shared library",
            finding: None,
            reality: Reality::Fails(1, "accessing a corrupted shared library"),
        },
        ChainCase {
            name: "loader-shorter-than-a-header",
            files: vec![
                F::File("/app", host_true, 0o755, ROOT),
                F::File(
                    "/lib64/ld-linux-x86-64.so.2",
                    b"\x7fELF\x02\x01".to_vec(),
                    0o755,
                    ROOT,
                ),
            ],
            argv: &["/app"],
            user: None,
            verdict: "unknown_format",
            symptom: "input/output error",
            finding: None,
            reality: Reality::Fails(1, "input/output error"),
        },
        ChainCase {
            name: "shebang-empty-argument",
            files: vec![
                bb(),
                sh(),
                F::File("/run.sh", b"#!/bin/sh \0\ntrue\n".to_vec(), 0o755, ROOT),
            ],
            argv: &["/run.sh"],
            user: None,
            verdict: "ok",
            symptom: "runs",
            finding: Some("shebang_empty_argument"),
            reality: Reality::Fails(2, "can't open ''"),
        },
        ChainCase {
            name: "shebang-without-interpreter",
            files: vec![bb(), F::File("/run.sh", b"#!".to_vec(), 0o755, ROOT)],
            argv: &["/run.sh"],
            user: None,
            verdict: "not_a_regular_file",
            symptom: "permission denied",
            finding: None,
            reality: Reality::Fails(1, "permission denied"),
        },
        ChainCase {
            name: "shebang-path-ends-at-the-buffers-last-byte",
            files: vec![
                bb(),
                F::File(
                    "/run.sh",
                    {
                        let mut b = b"#!/".to_vec();
                        b.extend(std::iter::repeat_n(b'a', 252));
                        b.push(b' ');
                        b
                    },
                    0o755,
                    ROOT,
                ),
            ],
            argv: &["/run.sh"],
            user: None,
            verdict: "script_interpreter_missing",
            symptom: "no such file or directory",
            finding: None,
            reality: Reality::Fails(1, "no such file or directory"),
        },
    ]
}

#[test]
fn exec_chains_users_and_loaders_match_the_kernel() {
    let _binfmt = support::binfmt_shared();
    let handlers = live_binfmt_handlers();
    let no_binfmt = tempfile::tempdir().unwrap();
    std::fs::write(no_binfmt.path().join("status"), "enabled\n").unwrap();
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for c in chain_cases() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        std::fs::create_dir(&root).unwrap();
        build_root(&root, &c.files);
        let env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"];
        // Files only.
        let mut cmd = support::archwatch();
        cmd.args(["inspect", "--json", "--node-arch", "amd64", "--rootfs"])
            .arg(&root)
            .arg("--binfmt-dir")
            .arg(no_binfmt.path())
            .args(["--env", env[0]]);
        if let Some((u, g, groups)) = c.user {
            cmd.args(["--user", &format!("{u}:{g}")]);
            for gid in groups {
                cmd.args(["--group", &gid.to_string()]);
            }
        }
        let out = cmd.arg("--").args(c.argv).output().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("{}: {e}: {}", c.name, String::from_utf8_lossy(&out.stderr))
        });
        let findings: Vec<&str> = json["findings"]
            .as_array()
            .map(|f| f.iter().filter_map(|x| x["code"].as_str()).collect())
            .unwrap_or_default();
        // Reality.
        let user = match c.user {
            Some((u, g, groups)) => support::runc::User::plain(u, g, groups),
            None => support::runc::User::root(),
        };
        let run = support::runc::run(&root, c.argv, &env, &user);
        report.push(format!(
            "{:<44} archwatch {:<28} {:<38} | kernel: exit {:?}: {}",
            c.name,
            json["verdict"].as_str().unwrap_or("?"),
            json["symptom"].as_str().unwrap_or("?"),
            run.code,
            run.output.trim().lines().last().unwrap_or("")
        ));
        if handlers {
            continue;
        }
        let mut wrong = Vec::new();
        if json["verdict"] != c.verdict || json["symptom"] != c.symptom {
            wrong.push(format!(
                "archwatch says {} / {}, expected {} / {}",
                json["verdict"], json["symptom"], c.verdict, c.symptom
            ));
        }
        if let Some(f) = c.finding {
            if !findings.contains(&f) {
                wrong.push(format!("finding {f} not in {findings:?}"));
            }
        }
        match c.reality {
            Reality::Runs if run.code != Some(0) => wrong.push(format!(
                "the kernel did not run it: {:?}",
                run.output.trim()
            )),
            Reality::Fails(code, words)
                if run.code != Some(code) || !run.output.contains(words) =>
            {
                wrong.push(format!(
                    "the kernel said exit {:?} {:?}, expected exit {code} with {words:?}",
                    run.code,
                    run.output.trim()
                ))
            }
            _ => {}
        }
        if !wrong.is_empty() {
            failures.push(format!("{}: {}", c.name, wrong.join("; ")));
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
