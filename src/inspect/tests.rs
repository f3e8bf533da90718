//! Table tests of the whole walk over crafted roots (real binaries are covered by the
//! integration suite, which also proves each verdict against a real runtime).

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use super::elf::tests::craft;
use super::*;
use crate::binfmt::{Handler, Rule};
use crate::platform::Node;
use crate::rootfs::{under_both_resolvers, Access, Resolver, Rootfs};

const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;
const EM_386: u16 = 3;

fn amd64(interp: Option<&str>) -> Vec<u8> {
    craft(EM_X86_64, true, true, interp)
}
fn arm64(interp: Option<&str>) -> Vec<u8> {
    craft(EM_AARCH64, true, true, interp)
}

enum F<'a> {
    File(&'a str, Vec<u8>, u32),
    Link(&'a str, &'a str),
    Dir(&'a str),
    Fifo(&'a str),
}

fn build(root: &Path, files: &[F]) {
    for f in files {
        let p = |rel: &str| root.join(rel.trim_start_matches('/'));
        match f {
            F::File(rel, bytes, mode) => {
                let path = p(rel);
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(&path, bytes).unwrap();
                fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
            }
            F::Link(rel, target) => {
                let path = p(rel);
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                symlink(target, &path).unwrap();
            }
            F::Dir(rel) => fs::create_dir_all(p(rel)).unwrap(),
            F::Fifo(rel) => {
                let path = p(rel);
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &path,
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(0o755),
                    0,
                )
                .unwrap();
            }
        }
    }
}

fn aarch64_handler(flags: &str) -> Handler {
    Handler {
        name: "qemu-aarch64".into(),
        enabled: true,
        interpreter: "/usr/libexec/qemu-binfmt/aarch64-binfmt-P".into(),
        flags: flags.into(),
        rule: Rule::Magic {
            offset: 0,
            magic: hex::decode("7f454c460201010000000000000000000200b700").unwrap(),
            mask: hex::decode("ffffffffffffff00fffffffffffffffffeffffff").unwrap(),
        },
        arch: Some(Arch::Arm64),
    }
}

struct Case<'a> {
    name: &'a str,
    files: Vec<F<'a>>,
    argv: &'a [&'a str],
    path_env: Option<&'a str>,
    node: Node,
    binfmt: Table,
    want: Verdict,
    /// Words the cause must contain.
    cause_has: &'a [&'a str],
    binary_arch: Option<Arch>,
}

/// Layers (top first) read with `resolver` by a process that can read trusted.* attributes.
fn rootfs(resolver: Resolver, layers: Vec<std::path::PathBuf>) -> Rootfs {
    let access = Access {
        resolver,
        overlay_xattrs_readable: true,
    };
    Rootfs::with_access(layers, access).unwrap()
}

fn run(c: &Case, res: Resolver) -> Inspection {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), &c.files);
    let root = rootfs(res, vec![dir.path().to_path_buf()]);
    let argv: Vec<String> = c.argv.iter().map(|s| s.to_string()).collect();
    let req = Request {
        argv: &argv,
        path_env: c.path_env,
        cwd: "/",
        claimed_arch: None,
        user: None,
    };
    inspect(
        &root,
        &req,
        Context {
            node: &c.node,
            binfmt: &c.binfmt,
        },
    )
    .unwrap()
}

fn node() -> Node {
    Node::with_arch(Arch::Amd64)
}

/// `argv0` alone in an existing root, on an amd64 node with no binfmt handlers.
fn inspect_argv0(root: &Rootfs, argv0: &str) -> Result<Inspection, InspectError> {
    let argv = vec![argv0.to_string()];
    let req = Request {
        argv: &argv,
        path_env: None,
        cwd: "/",
        claimed_arch: None,
        user: None,
    };
    inspect(
        root,
        &req,
        Context {
            node: &node(),
            binfmt: &Table::empty(),
        },
    )
}

fn verdicts_over_crafted_roots(res: Resolver) {
    let sh = || F::File("/bin/sh", amd64(None), 0o755);
    let mut one_handler = Table::empty();
    one_handler.handlers.push(aarch64_handler("OCF"));
    let mut no_f = Table::empty();
    no_f.handlers.push(aarch64_handler("OC"));
    let no_compat = Node {
        arch: Arch::Amd64,
        compat32: false,
    };
    let cases = vec![
        Case {
            name: "static native",
            files: vec![F::File("/app", amd64(None), 0o755)],
            argv: &["/app"],
            path_env: None,
            node: node(),
            binfmt: Table::empty(),
            want: Verdict::Ok,
            cause_has: &["natively"],
            binary_arch: Some(Arch::Amd64),
        },
        Case {
            name: "arm64 on amd64",
            files: vec![F::File("/app", arm64(None), 0o755)],
            argv: &["/app"],
            path_env: None,
            node: node(),
            binfmt: Table::empty(),
            want: Verdict::ArchMismatch,
            cause_has: &["arm64", "amd64"],
            binary_arch: Some(Arch::Arm64),
        },
        Case {
            name: "386 through compat",
            files: vec![F::File("/app", craft(EM_386, false, true, None), 0o755)],
            argv: &["/app"],
            path_env: None,
            node: node(),
            binfmt: Table::empty(),
            want: Verdict::Ok,
            cause_has: &[],
            binary_arch: Some(Arch::I386),
        },
        Case {
            name: "386 without compat",
            files: vec![F::File("/app", craft(EM_386, false, true, None), 0o755)],
            argv: &["/app"],
            path_env: None,
            node: no_compat,
            binfmt: Table::empty(),
            want: Verdict::ArchMismatch,
            cause_has: &["32-bit"],
            binary_arch: Some(Arch::I386),
        },
        Case {
            name: "glibc binary on musl image",
            files: vec![
                F::File("/app", amd64(Some("/lib64/ld-linux-x86-64.so.2")), 0o755),
                F::File("/lib/ld-musl-x86_64.so.1", amd64(None), 0o755),
            ],
            argv: &["/app"],
            path_env: None,
            node: node(),
            binfmt: Table::empty(),
            want: Verdict::MissingLoader,
            cause_has: &["glibc", "musl"],
            binary_arch: Some(Arch::Amd64),
        },
        Case {
            name: "musl binary on glibc image",
            files: vec![
                F::File("/app", amd64(Some("/lib/ld-musl-x86_64.so.1")), 0o755),
                F::File("/lib64/ld-linux-x86-64.so.2", amd64(None), 0o755),
            ],
            argv: &["/app"],
            path_env: None,
            node: node(),
            binfmt: Table::empty(),
            want: Verdict::MissingLoader,
            cause_has: &["musl", "glibc"],
            binary_arch: Some(Arch::Amd64),
        },
        Case {
            name: "loader absent, no libc at all",
            files: vec![F::File(
                "/app",
                amd64(Some("/lib64/ld-linux-x86-64.so.2")),
                0o755,
            )],
            argv: &["/app"],
            path_env: None,
            node: node(),
            binfmt: Table::empty(),
            want: Verdict::MissingLoader,
            cause_has: &["/lib64/ld-linux-x86-64.so.2"],
            binary_arch: Some(Arch::Amd64),
        },
        Case {
            name: "loader present through symlink",
            files: vec![
                F::File("/app", amd64(Some("/lib64/ld-linux-x86-64.so.2")), 0o755),
                F::File(
                    "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
                    amd64(None),
                    0o755,
                ),
                F::Link(
                    "/lib64/ld-linux-x86-64.so.2",
                    "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
                ),
            ],
            argv: &["/app"],
            path_env: None,
            node: node(),
            binfmt: Table::empty(),
            want: Verdict::Ok,
            cause_has: &[],
            binary_arch: Some(Arch::Amd64),
        },
        Case {
            name: "loader of another arch",
            files: vec![
                F::File("/app", amd64(Some("/lib64/ld-linux-x86-64.so.2")), 0o755),
                F::File("/lib64/ld-linux-x86-64.so.2", arm64(None), 0o755),
            ],
            argv: &["/app"],
            path_env: None,
            node: node(),
            binfmt: Table::empty(),
            want: Verdict::ArchMismatch,
            cause_has: &["mixes"],
            binary_arch: Some(Arch::Amd64),
        },
        Case {
            name: "crlf shebang",
            files: vec![
                sh(),
                F::File("/run.sh", b"#!/bin/sh\r\necho hi\r\n".to_vec(), 0o755),
            ],
            argv: &["/run.sh"],
            path_env: None,
            node: node(),
            binfmt: Table::empty(),
            want: Verdict::ScriptCrlf,
            cause_has: &["CRLF"],
            binary_arch: None,
        },
        Case {
            name: "crlf in env argument",
            files: vec![
                sh(),
                F::File("/usr/bin/env", amd64(None), 0o755),
                F::File("/run.sh", b"#!/usr/bin/env sh\r\n".to_vec(), 0o755),
            ],
            argv: &["/run.sh"],
            path_env: None,
            node: node(),
            binfmt: Table::empty(),
            want: Verdict::ScriptCrlf,
            cause_has: &["CRLF"],
            binary_arch: Some(Arch::Amd64),
        },
        Case {
            name: "interpreter missing",
            files: vec![F::File(
                "/run.py",
                b"#!/usr/bin/python3\nprint(1)\n".to_vec(),
                0o755,
            )],
            argv: &["/run.py"],
            path_env: None,
            node: node(),
            binfmt: Table::empty(),
            want: Verdict::ScriptInterpreterMissing,
            cause_has: &["/usr/bin/python3"],
            binary_arch: None,
        },
        Case {
            name: "env target missing",
            files: vec![
                F::File("/usr/bin/env", amd64(None), 0o755),
                F::File("/run.py", b"#!/usr/bin/env python3\n".to_vec(), 0o755),
            ],
            argv: &["/run.py"],
            path_env: None,
            node: node(),
            binfmt: Table::empty(),
            want: Verdict::ScriptInterpreterMissing,
            cause_has: &["python3"],
            binary_arch: None,
        },
        Case {
            name: "env target present",
            files: vec![
                F::File("/usr/bin/env", amd64(None), 0o755),
                F::File("/usr/local/bin/python3", amd64(None), 0o755),
                F::File("/run.py", b"#!/usr/bin/env python3\n".to_vec(), 0o755),
            ],
            argv: &["/run.py"],
            path_env: None,
            node: node(),
            binfmt: Table::empty(),
            want: Verdict::Ok,
            cause_has: &[],
            binary_arch: Some(Arch::Amd64),
        },
        Case {
            name: "env with two words",
            files: vec![
                F::File("/usr/bin/env", amd64(None), 0o755),
                F::File("/usr/bin/python3", amd64(None), 0o755),
                F::File("/run.py", b"#!/usr/bin/env python3 -u\n".to_vec(), 0o755),
            ],
            argv: &["/run.py"],
            path_env: None,
            node: node(),
            binfmt: Table::empty(),
            want: Verdict::ScriptInterpreterMissing,
            cause_has: &["one word"],
            binary_arch: None,
        },
        Case {
            name: "script on foreign interpreter",
            files: vec![
                F::File("/bin/sh", arm64(None), 0o755),
                F::File("/run.sh", b"#!/bin/sh\n".to_vec(), 0o755),
            ],
            argv: &["/run.sh"],
            path_env: None,
            node: node(),
            binfmt: Table::empty(),
            want: Verdict::ArchMismatch,
            cause_has: &["arm64"],
            binary_arch: Some(Arch::Arm64),
        },
        Case {
            name: "text without shebang",
            files: vec![F::File("/run.sh", b"echo hello\n".to_vec(), 0o755)],
            argv: &["/run.sh"],
            path_env: None,
            node: node(),
            binfmt: Table::empty(),
            want: Verdict::ScriptNoShebang,
            cause_has: &["#!"],
            binary_arch: None,
        },
        Case {
            name: "bom before shebang",
            files: vec![
                sh(),
                F::File("/run.sh", b"\xef\xbb\xbf#!/bin/sh\necho\n".to_vec(), 0o755),
            ],
            argv: &["/run.sh"],
            path_env: None,
            node: node(),
            binfmt: Table::empty(),
            want: Verdict::ScriptNoShebang,
            cause_has: &["byte order mark"],
            binary_arch: None,
        },
        Case {
            name: "over-long shebang",
            files: vec![F::File(
                "/run.sh",
                format!("#!/{}\n", "x".repeat(297)).into_bytes(),
                0o755,
            )],
            argv: &["/run.sh"],
            path_env: None,
            node: node(),
            binfmt: Table::empty(),
            want: Verdict::ScriptNoShebang,
            cause_has: &["256"],
            binary_arch: None,
        },
        Case {
            name: "no execute bit",
            files: vec![F::File("/app", amd64(None), 0o644)],
            argv: &["/app"],
            path_env: None,
            node: node(),
            binfmt: Table::empty(),
            want: Verdict::NotExecutable,
            cause_has: &["0644"],
            binary_arch: None,
        },
        Case {
            name: "absolute path missing",
            files: vec![sh()],
            argv: &["/nope"],
            path_env: None,
            node: node(),
            binfmt: Table::empty(),
            want: Verdict::NotFound,
            cause_has: &["/nope"],
            binary_arch: None,
        },
        Case {
            name: "bare name not in PATH",
            files: vec![sh()],
            argv: &["app"],
            path_env: None,
            node: node(),
            binfmt: Table::empty(),
            want: Verdict::NotFound,
            cause_has: &["PATH"],
            binary_arch: None,
        },
        Case {
            name: "bare name found in PATH",
            files: vec![F::File("/opt/bin/app", amd64(None), 0o755)],
            argv: &["app"],
            path_env: Some("/usr/bin:/opt/bin"),
            node: node(),
            binfmt: Table::empty(),
            want: Verdict::Ok,
            cause_has: &[],
            binary_arch: Some(Arch::Amd64),
        },
        Case {
            name: "bare name only non-executable",
            files: vec![F::File("/usr/bin/app", amd64(None), 0o644)],
            argv: &["app"],
            path_env: None,
            node: node(),
            binfmt: Table::empty(),
            want: Verdict::NotFound,
            cause_has: &["not executable"],
            binary_arch: None,
        },
        Case {
            name: "symlink loop",
            files: vec![F::Link("/a", "/b"), F::Link("/b", "/a")],
            argv: &["/a"],
            path_env: None,
            node: node(),
            binfmt: Table::empty(),
            want: Verdict::SymlinkLoop,
            cause_has: &["symlinks"],
            binary_arch: None,
        },
        Case {
            name: "directory",
            files: vec![F::Dir("/app")],
            argv: &["/app"],
            path_env: None,
            node: node(),
            binfmt: Table::empty(),
            want: Verdict::NotARegularFile,
            cause_has: &["directory"],
            binary_arch: None,
        },
        Case {
            name: "fifo",
            files: vec![F::Fifo("/app")],
            argv: &["/app"],
            path_env: None,
            node: node(),
            binfmt: Table::empty(),
            want: Verdict::NotARegularFile,
            cause_has: &["FIFO"],
            binary_arch: None,
        },
        Case {
            name: "mach-o",
            files: vec![F::File(
                "/app",
                b"\xcf\xfa\xed\xfe\x0c\x00\x00\x01".to_vec(),
                0o755,
            )],
            argv: &["/app"],
            path_env: None,
            node: node(),
            binfmt: Table::empty(),
            want: Verdict::UnknownFormat,
            cause_has: &["Mach-O"],
            binary_arch: None,
        },
        Case {
            name: "windows pe",
            files: vec![F::File(
                "/app.exe",
                b"MZ\x90\x00\x03\x00\x00\x00".to_vec(),
                0o755,
            )],
            argv: &["/app.exe"],
            path_env: None,
            node: node(),
            binfmt: Table::empty(),
            want: Verdict::UnknownFormat,
            cause_has: &["Windows"],
            binary_arch: None,
        },
        Case {
            name: "empty file",
            files: vec![F::File("/app", Vec::new(), 0o755)],
            argv: &["/app"],
            path_env: None,
            node: node(),
            binfmt: Table::empty(),
            want: Verdict::UnknownFormat,
            cause_has: &["empty"],
            binary_arch: None,
        },
        Case {
            name: "truncated elf",
            files: vec![F::File("/app", amd64(None)[..20].to_vec(), 0o755)],
            argv: &["/app"],
            path_env: None,
            node: node(),
            binfmt: Table::empty(),
            want: Verdict::UnknownFormat,
            cause_has: &["truncated"],
            binary_arch: None,
        },
        Case {
            name: "emulated with F",
            files: vec![F::File("/app", arm64(None), 0o755)],
            argv: &["/app"],
            path_env: None,
            node: node(),
            binfmt: one_handler.clone(),
            want: Verdict::Emulated,
            cause_has: &["qemu-aarch64"],
            binary_arch: Some(Arch::Arm64),
        },
        Case {
            name: "emulator missing without F",
            files: vec![F::File("/app", arm64(None), 0o755)],
            argv: &["/app"],
            path_env: None,
            node: node(),
            binfmt: no_f.clone(),
            want: Verdict::EmulatorMissing,
            cause_has: &["F flag"],
            binary_arch: Some(Arch::Arm64),
        },
        Case {
            name: "emulator inside the container",
            files: vec![
                F::File("/app", arm64(None), 0o755),
                F::File(
                    "/usr/libexec/qemu-binfmt/aarch64-binfmt-P",
                    amd64(None),
                    0o755,
                ),
            ],
            argv: &["/app"],
            path_env: None,
            node: node(),
            binfmt: no_f,
            want: Verdict::Emulated,
            cause_has: &[],
            binary_arch: Some(Arch::Arm64),
        },
        Case {
            name: "emulated but loader missing",
            files: vec![F::File(
                "/app",
                arm64(Some("/lib/ld-linux-aarch64.so.1")),
                0o755,
            )],
            argv: &["/app"],
            path_env: None,
            node: node(),
            binfmt: one_handler,
            want: Verdict::MissingLoader,
            cause_has: &["/lib/ld-linux-aarch64.so.1"],
            binary_arch: Some(Arch::Arm64),
        },
    ];
    for c in &cases {
        let got = run(c, res);
        assert_eq!(got.verdict, c.want, "{}: {:#?}", c.name, got);
        for w in c.cause_has {
            assert!(
                got.cause.contains(w),
                "{}: cause {:?} lacks {w:?}",
                c.name,
                got.cause
            );
        }
        assert_eq!(got.binary_arch, c.binary_arch, "{}", c.name);
        assert!(!got.fix.is_empty(), "{}", c.name);
        assert!(!got.chain.is_empty(), "{}", c.name);
        assert!(
            got.bytes_read <= 16 * 1024,
            "{}: read {} bytes",
            c.name,
            got.bytes_read
        );
    }
}

fn interpreter_chains_stop_where_the_kernel_does(res: Resolver) {
    // Five rewrites are allowed; a sixth fails with ELOOP.
    for (scripts, want) in [(5, Verdict::Ok), (6, Verdict::SymlinkLoop)] {
        let mut files = vec![F::File("/bin/real", amd64(None), 0o755)];
        let names: Vec<String> = (0..scripts).map(|i| format!("/s{i}")).collect();
        for i in 0..scripts {
            let next = if i + 1 < scripts {
                names[i + 1].clone()
            } else {
                "/bin/real".into()
            };
            files.push(F::File(
                &names[i],
                format!("#!{next}\n").into_bytes(),
                0o755,
            ));
        }
        let c = Case {
            name: "chain",
            files,
            argv: &["/s0"],
            path_env: None,
            node: node(),
            binfmt: Table::empty(),
            want,
            cause_has: &[],
            binary_arch: None,
        };
        assert_eq!(run(&c, res).verdict, want, "{scripts} scripts");
    }
}

fn config_that_lies_is_a_finding_beside_the_verdict(res: Resolver) {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), &[F::File("/app", arm64(None), 0o755)]);
    let root = rootfs(res, vec![dir.path().to_path_buf()]);
    let argv = vec!["/app".to_string()];
    let req = Request {
        argv: &argv,
        path_env: None,
        cwd: "/",
        claimed_arch: Some(Arch::Amd64),
        user: None,
    };
    let n = node();
    let t = Table::empty();
    let got = inspect(
        &root,
        &req,
        Context {
            node: &n,
            binfmt: &t,
        },
    )
    .unwrap();
    assert_eq!(got.verdict, Verdict::ArchMismatch);
    assert_eq!(
        got.findings.iter().map(|f| f.code).collect::<Vec<_>>(),
        vec!["config_arch_mismatch"]
    );
}

fn a_layer_removed_mid_inspection_is_an_error_not_a_verdict(res: Resolver) {
    let dir = tempfile::tempdir().unwrap();
    let (top, bottom) = (dir.path().join("top"), dir.path().join("bottom"));
    build(&top, &[F::File("/etc/marker", b"x".to_vec(), 0o644)]);
    build(&bottom, &[F::File("/app", arm64(None), 0o755)]);
    let root = rootfs(res, vec![top.clone(), bottom.clone()]);
    assert_eq!(
        inspect_argv0(&root, "/app").unwrap().verdict,
        Verdict::ArchMismatch
    );
    // containerd removes the snapshot while the stack is open: /app is now absent, and
    // that absence must not become `not_found`.
    fs::remove_dir_all(&bottom).unwrap();
    let e = inspect_argv0(&root, "/app").unwrap_err();
    assert_eq!(e.kind(), "snapshot_vanished", "{e}");
    assert!(e.to_string().contains("bottom"), "{e}");

    // The way containerd removes a snapshot: renamed away first, files deleted after. Caught
    // while the files are all still there.
    build(&bottom, &[F::File("/app", arm64(None), 0o755)]);
    let root = rootfs(res, vec![top.clone(), bottom.clone()]);
    fs::rename(&bottom, dir.path().join("rm-bottom")).unwrap();
    let e = inspect_argv0(&root, "/app").unwrap_err();
    assert_eq!(e.kind(), "snapshot_vanished", "{e}");
}

fn a_symlink_aimed_at_a_host_file_never_reads_it(res: Resolver) {
    let outside = tempfile::tempdir().unwrap();
    let canary = outside.path().join("canary");
    fs::write(&canary, b"#!/bin/sh\n").unwrap();
    fs::set_permissions(&canary, fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let up = "../".repeat(20);
    let target = format!(
        "{up}{}",
        canary.display().to_string().trim_start_matches('/')
    );
    build(
        dir.path(),
        &[
            F::Link("/app", &target),
            F::Link("/abs", canary.to_str().unwrap()),
        ],
    );
    let root = rootfs(res, vec![dir.path().to_path_buf()]);
    for argv0 in ["/app", "/abs"] {
        let got = inspect_argv0(&root, argv0).unwrap();
        assert_eq!(got.verdict, Verdict::NotFound, "{argv0}: {got:#?}");
        assert_eq!(got.bytes_read, 0);
    }
}

fn empty_argv_is_an_error_not_a_verdict(res: Resolver) {
    let dir = tempfile::tempdir().unwrap();
    let root = rootfs(res, vec![dir.path().to_path_buf()]);
    let req = Request {
        argv: &[],
        path_env: None,
        cwd: "/",
        claimed_arch: None,
        user: None,
    };
    let n = node();
    let t = Table::empty();
    let err = inspect(
        &root,
        &req,
        Context {
            node: &n,
            binfmt: &t,
        },
    )
    .unwrap_err();
    assert_eq!(err.kind(), "empty_argv");
}

/// The top layer marks /app opaque with `trusted.overlay.opaque=y`; the lower one has
/// /app/server. Read with trusted.* the server does not exist; read without, the verdict
/// is about a file the kernel hides, and says so.
fn a_verdict_through_an_opaque_dir_that_cannot_be_read_carries_a_finding(res: Resolver) {
    let dir = tempfile::tempdir().unwrap();
    let (top, lower) = (dir.path().join("top"), dir.path().join("lower"));
    build(
        &top,
        &[F::Dir("/app"), F::File("/bin/sh", amd64(None), 0o755)],
    );
    rustix::fs::setxattr(
        top.join("app"),
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    build(&lower, &[F::File("/app/server", arm64(None), 0o755)]);
    let layers = vec![top.clone(), lower.clone()];
    let sees = rootfs(res, layers.clone());
    let got = inspect_argv0(&sees, "/app/server").unwrap();
    assert_eq!(got.verdict, Verdict::NotFound, "{got:#?}");
    assert!(got.findings.is_empty(), "{:?}", got.findings);
    let blind = Rootfs::with_access(
        layers,
        Access {
            resolver: res,
            overlay_xattrs_readable: false,
        },
    )
    .unwrap();
    // Twice: each inspection reports its own lookups, once.
    for _ in 0..2 {
        let got = inspect_argv0(&blind, "/app/server").unwrap();
        assert_eq!(got.verdict, Verdict::ArchMismatch, "{got:#?}");
        let notes: Vec<&Finding> = got
            .findings
            .iter()
            .filter(|f| f.code == "overlay_opaque_unknown")
            .collect();
        assert_eq!(notes.len(), 1, "{:?}", got.findings);
        let d = &notes[0].detail;
        assert!(
            d.contains("/app/server") && d.contains("directory /app of layer 0"),
            "{d}"
        );
        assert!(d.contains(&top.display().to_string()), "{d}");
        assert!(d.contains(&format!("layer 1 ({})", lower.display())), "{d}");
    }
    // What is found on top is certain: no finding.
    let got = inspect_argv0(&blind, "/bin/sh").unwrap();
    assert_eq!(got.verdict, Verdict::Ok);
    assert!(got.findings.is_empty(), "{:?}", got.findings);
}

under_both_resolvers!(
    verdicts_over_crafted_roots,
    interpreter_chains_stop_where_the_kernel_does,
    config_that_lies_is_a_finding_beside_the_verdict,
    a_layer_removed_mid_inspection_is_an_error_not_a_verdict,
    a_symlink_aimed_at_a_host_file_never_reads_it,
    empty_argv_is_an_error_not_a_verdict,
    a_verdict_through_an_opaque_dir_that_cannot_be_read_carries_a_finding,
);

/// A crafted 32-bit ARM header with `e_flags` (EABI version in the top byte).
fn arm32(e_flags: u32) -> Vec<u8> {
    let mut b = craft(40, false, true, None);
    // e_flags sits at offset 36 of an ELF32 header.
    b[36..40].copy_from_slice(&e_flags.to_le_bytes());
    b
}

/// What wrappers and entrypoint scripts exec, as which user: each case's expectation is
/// the kernel's (the integration suite runs the busybox ones for real; gosu, tini and the
/// others follow the same lookups and user switches).
#[test]
fn wrappers_scripts_and_users_are_followed_to_what_runs() {
    use std::os::unix::fs::chown;
    let sh = || F::File("/bin/sh", amd64(None), 0o755);
    let bin = |p: &'static str| F::File(p, amd64(None), 0o755);
    let passwd = || {
        F::File(
            "/etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nredis:x:999:999::/data:/bin/sh\napp:x:1000:1000::/app:/bin/sh\n".to_vec(),
            0o644,
        )
    };
    let group = || {
        F::File(
            "/etc/group",
            b"root:x:0:\nredis:x:999:\napp:x:1000:\nshared:x:2000:app\n".to_vec(),
            0o644,
        )
    };
    let redis_entry = b"#!/bin/sh\nset -e\nif [ \"${1#-}\" != \"$1\" ] || [ \"${1%.conf}\" != \"$1\" ]; then\n\tset -- redis-server \"$@\"\nfi\nif [ \"$1\" = 'redis-server' -a \"$(id -u)\" = '0' ]; then\n\tfind . \\! -user redis -exec chown redis '{}' +\n\texec gosu redis \"$0\" \"$@\"\nfi\nexec \"$@\"\n".to_vec();
    struct C<'a> {
        name: &'a str,
        files: Vec<F<'a>>,
        /// (path, uid, gid) to chown after building.
        owners: Vec<(&'a str, u32, u32)>,
        argv: &'a [&'a str],
        user: Option<Creds>,
        node: Node,
        want: Verdict,
        finding: Option<&'a str>,
        exec_step: bool,
    }
    let amd = node();
    let cri_user = Creds {
        caps: crate::rootfs::Caps::from_names(["CAP_DAC_OVERRIDE"]),
        caps_after_exec: crate::rootfs::Caps::NONE,
        ..Creds::with_ids(1000, 1000, Vec::new())
    };
    let cases = vec![
        C {
            name: "tini runs an arm64 program",
            files: vec![bin("/sbin/tini"), F::File("/app", arm64(None), 0o755)],
            owners: vec![],
            argv: &["/sbin/tini", "-s", "-e", "143", "--", "/app", "serve"],
            user: None,
            node: amd.clone(),
            want: Verdict::ArchMismatch,
            finding: None,
            exec_step: true,
        },
        C {
            name: "docker-init (tini) runs a native program",
            files: vec![bin("/sbin/docker-init"), bin("/app")],
            owners: vec![],
            argv: &["/sbin/docker-init", "--", "/app"],
            user: None,
            node: amd.clone(),
            want: Verdict::Ok,
            finding: None,
            exec_step: true,
        },
        C {
            name: "dumb-init with a rewrite option",
            files: vec![
                bin("/usr/bin/dumb-init"),
                F::File("/usr/local/bin/app", arm64(None), 0o755),
            ],
            owners: vec![],
            argv: &["/usr/bin/dumb-init", "--rewrite", "15:2", "app"],
            user: None,
            node: amd.clone(),
            want: Verdict::ArchMismatch,
            finding: None,
            exec_step: true,
        },
        C {
            name: "gosu switches to a user that may not exec",
            files: vec![bin("/usr/local/bin/gosu"), passwd(), group(), bin("/app")],
            owners: vec![],
            argv: &["/usr/local/bin/gosu", "app", "/app"],
            user: None,
            node: amd.clone(),
            want: Verdict::Ok,
            finding: None,
            exec_step: true,
        },
        C {
            name: "gosu to app, whose program is root's 0700",
            files: vec![
                bin("/usr/local/bin/gosu"),
                passwd(),
                group(),
                F::File("/app", amd64(None), 0o700),
            ],
            owners: vec![],
            argv: &["/usr/local/bin/gosu", "app", "/app"],
            user: None,
            node: amd.clone(),
            want: Verdict::NotExecutable,
            finding: None,
            exec_step: true,
        },
        C {
            name: "su-exec to a group member",
            files: vec![
                bin("/sbin/su-exec"),
                passwd(),
                group(),
                F::File("/app", amd64(None), 0o750),
            ],
            owners: vec![("/app", 0, 2000)],
            argv: &["/sbin/su-exec", "app", "/app"],
            user: None,
            node: amd.clone(),
            want: Verdict::Ok,
            finding: None,
            exec_step: true,
        },
        C {
            name: "su-exec to a numeric user",
            files: vec![bin("/sbin/su-exec"), F::File("/app", amd64(None), 0o700)],
            owners: vec![],
            argv: &["/sbin/su-exec", "1000:1000", "/app"],
            user: None,
            node: amd.clone(),
            want: Verdict::NotExecutable,
            finding: None,
            exec_step: true,
        },
        C {
            name: "gosu to a user the image does not name",
            files: vec![bin("/usr/local/bin/gosu"), passwd(), bin("/app")],
            owners: vec![],
            argv: &["/usr/local/bin/gosu", "nobody-here", "/app"],
            user: None,
            node: amd.clone(),
            want: Verdict::Ok,
            finding: Some("exec_uncertain"),
            exec_step: true,
        },
        C {
            name: "env with its own PATH",
            files: vec![
                bin("/usr/bin/env"),
                F::File("/opt/bin/app", arm64(None), 0o755),
            ],
            owners: vec![],
            argv: &["/usr/bin/env", "PATH=/opt/bin", "app"],
            user: None,
            node: amd.clone(),
            want: Verdict::ArchMismatch,
            finding: None,
            exec_step: true,
        },
        C {
            name: "s6-overlay's /init runs the command",
            files: vec![
                bin("/init"),
                F::Dir("/package/admin/s6-overlay"),
                F::File("/app", arm64(None), 0o755),
            ],
            owners: vec![],
            argv: &["/init", "/app"],
            user: None,
            node: amd.clone(),
            want: Verdict::ArchMismatch,
            finding: None,
            exec_step: true,
        },
        C {
            name: "an /init that is not s6-overlay's",
            files: vec![bin("/init"), F::File("/app", arm64(None), 0o755)],
            owners: vec![],
            argv: &["/init", "/app"],
            user: None,
            node: amd.clone(),
            want: Verdict::Ok,
            finding: None,
            exec_step: false,
        },
        C {
            name: "script execs tini which runs an arm64 program",
            files: vec![
                sh(),
                bin("/sbin/tini"),
                F::File(
                    "/ep.sh",
                    b"#!/bin/sh\nexec tini -- \"$@\"\n".to_vec(),
                    0o755,
                ),
                F::File("/app", arm64(None), 0o755),
            ],
            owners: vec![],
            argv: &["/ep.sh", "/app"],
            user: None,
            node: amd.clone(),
            want: Verdict::ArchMismatch,
            finding: None,
            exec_step: true,
        },
        C {
            name: "redis-style re-exec through gosu, then an arm64 server",
            files: vec![
                sh(),
                bin("/usr/local/bin/gosu"),
                passwd(),
                group(),
                F::File(
                    "/usr/local/bin/docker-entrypoint.sh",
                    redis_entry.clone(),
                    0o755,
                ),
                F::File("/usr/local/bin/redis-server", arm64(None), 0o755),
            ],
            owners: vec![],
            argv: &["docker-entrypoint.sh", "redis-server"],
            user: None,
            node: amd.clone(),
            want: Verdict::ArchMismatch,
            finding: None,
            exec_step: true,
        },
        C {
            name: "capabilities are lost at the exec a script makes",
            files: vec![
                sh(),
                F::File("/ep.sh", b"#!/bin/sh\nexec /app\n".to_vec(), 0o700),
                F::File("/app", amd64(None), 0o700),
            ],
            owners: vec![],
            argv: &["/ep.sh"],
            user: Some(cri_user.clone()),
            node: amd.clone(),
            want: Verdict::NotExecutable,
            finding: None,
            exec_step: true,
        },
        C {
            name: "a script its user may exec but not read",
            files: vec![
                sh(),
                F::File("/ep.sh", b"#!/bin/sh\nexec /app\n".to_vec(), 0o711),
            ],
            owners: vec![],
            argv: &["/ep.sh"],
            user: Some(Creds::with_ids(1000, 1000, Vec::new())),
            node: amd.clone(),
            want: Verdict::Ok,
            finding: Some("script_unreadable"),
            exec_step: false,
        },
        C {
            name: "arm/v7 on an arm/v6 CPU execs, then SIGILL",
            files: vec![F::File("/app", arm32_cpu(0x0500_0000, 10), 0o755)],
            owners: vec![],
            argv: &["/app"],
            user: None,
            node: Node::with_arch(Arch::Arm(Some(crate::platform::ArmVariant::V6))),
            want: Verdict::Ok,
            finding: Some("cpu_variant_too_old"),
            exec_step: false,
        },
        C {
            // arch/arm64/include/asm/elf.h: compat_elf_check_arch() wants a non-zero EABI
            // version in e_flags.
            name: "old-ABI ARM binary on arm64",
            files: vec![F::File("/app", arm32(0), 0o755)],
            owners: vec![],
            argv: &["/app"],
            user: None,
            node: Node::with_arch(Arch::Arm64),
            want: Verdict::ArchMismatch,
            finding: None,
            exec_step: false,
        },
        C {
            name: "EABI5 ARM binary on arm64",
            files: vec![F::File("/app", arm32(0x0500_0400), 0o755)],
            owners: vec![],
            argv: &["/app"],
            user: None,
            node: Node::with_arch(Arch::Arm64),
            want: Verdict::Ok,
            finding: Some("compat_32bit"),
            exec_step: false,
        },
    ];
    for c in cases {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path(), &c.files);
        for (p, u, g) in &c.owners {
            chown(
                dir.path().join(p.trim_start_matches('/')),
                Some(*u),
                Some(*g),
            )
            .unwrap();
        }
        let root = rootfs(Resolver::Openat2, vec![dir.path().to_path_buf()]);
        let argv: Vec<String> = c.argv.iter().map(|s| s.to_string()).collect();
        let req = Request {
            argv: &argv,
            path_env: Some("/usr/local/bin:/usr/bin:/bin:/sbin"),
            cwd: "/",
            claimed_arch: None,
            user: c.user.as_ref(),
        };
        let i = inspect(
            &root,
            &req,
            Context {
                node: &c.node,
                binfmt: &Table::empty(),
            },
        )
        .unwrap();
        assert_eq!(i.verdict, c.want, "{}: {}", c.name, i.cause);
        if let Some(f) = c.finding {
            assert!(
                i.findings.iter().any(|x| x.code == f),
                "{}: {f} not in {:?}",
                c.name,
                i.findings
            );
        }
        assert_eq!(
            i.chain.iter().any(|s| s.role == Role::Exec),
            c.exec_step,
            "{}: {:?}",
            c.name,
            i.chain
        );
    }
}

/// A 32-bit ARM binary whose `.ARM.attributes` section names Tag_CPU_arch `tag` (10 is
/// ARMv7): the header, its program header, the attributes, then a section header table
/// (a null entry and the attributes' entry).
fn arm32_cpu(e_flags: u32, tag: u8) -> Vec<u8> {
    let mut b = arm32(e_flags);
    // 'A', length, "aeabi\0", Tag_File (1), its size, Tag_CPU_arch (6) = tag.
    let attrs_body = [6u8, tag];
    let mut sub = b"aeabi\0".to_vec();
    sub.push(1);
    sub.extend_from_slice(&((attrs_body.len() + 5) as u32).to_le_bytes());
    sub.extend_from_slice(&attrs_body);
    let mut attrs = vec![b'A'];
    attrs.extend_from_slice(&((sub.len() + 4) as u32).to_le_bytes());
    attrs.extend_from_slice(&sub);
    let attrs_off = b.len() as u32;
    b.extend_from_slice(&attrs);
    while b.len() % 4 != 0 {
        b.push(0);
    }
    let shoff = b.len() as u32;
    b.extend_from_slice(&[0u8; 40]);
    let mut sh = Vec::new();
    for v in [
        0u32,
        0x7000_0003,
        0,
        0,
        attrs_off,
        attrs.len() as u32,
        0,
        0,
        1,
        0,
    ] {
        sh.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&sh);
    // e_shoff (32), e_shentsize (46), e_shnum (48).
    b[32..36].copy_from_slice(&shoff.to_le_bytes());
    b[46..48].copy_from_slice(&40u16.to_le_bytes());
    b[48..50].copy_from_slice(&2u16.to_le_bytes());
    b
}
