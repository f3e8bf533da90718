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
