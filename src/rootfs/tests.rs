//! Layer stacks with every whiteout and opaque form, symlinks that try to escape, loops and
//! special files. Runs as root (mknod, trusted.* xattrs).

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use rustix::fs::{FileType, Mode};

use super::*;

enum E<'a> {
    File(&'a str, u32),
    Dir(&'a str),
    Link(&'a str, &'a str),
    Whiteout(&'a str),
    WhFile(&'a str),
    OpaqueXattr(&'a str),
    OpaqueFile(&'a str),
    Fifo(&'a str),
    CharDev(&'a str, u32, u32),
}

fn parent(p: &Path) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
}

fn layer(root: &Path, entries: &[E]) {
    fs::create_dir_all(root).unwrap();
    for e in entries {
        let p = |r: &str| root.join(r.trim_start_matches('/'));
        match e {
            E::File(r, mode) => {
                let path = p(r);
                parent(&path);
                fs::write(&path, format!("content of {r} in {}", root.display())).unwrap();
                fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
            }
            E::Dir(r) => fs::create_dir_all(p(r)).unwrap(),
            E::Link(r, t) => {
                let path = p(r);
                parent(&path);
                symlink(t, &path).unwrap();
            }
            E::Whiteout(r) => {
                let path = p(r);
                parent(&path);
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &path,
                    FileType::CharacterDevice,
                    Mode::empty(),
                    0,
                )
                .unwrap();
            }
            E::WhFile(r) => {
                let path = p(r);
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                let wh = path.with_file_name(format!(".wh.{name}"));
                parent(&wh);
                fs::write(&wh, b"").unwrap();
            }
            E::OpaqueXattr(r) => {
                let path = p(r);
                fs::create_dir_all(&path).unwrap();
                rustix::fs::setxattr(
                    &path,
                    "trusted.overlay.opaque",
                    b"y",
                    rustix::fs::XattrFlags::empty(),
                )
                .unwrap();
            }
            E::OpaqueFile(r) => {
                let path = p(r);
                fs::create_dir_all(&path).unwrap();
                fs::write(path.join(".wh..wh..opq"), b"").unwrap();
            }
            E::Fifo(r) => {
                let path = p(r);
                parent(&path);
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &path,
                    FileType::Fifo,
                    Mode::from_raw_mode(0o755),
                    0,
                )
                .unwrap();
            }
            E::CharDev(r, maj, min) => {
                let path = p(r);
                parent(&path);
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &path,
                    FileType::CharacterDevice,
                    Mode::from_raw_mode(0o755),
                    rustix::fs::makedev(*maj, *min),
                )
                .unwrap();
            }
        }
    }
}

/// Builds layers (top first) in a temp dir.
fn stack(layers: &[&[E]]) -> (tempfile::TempDir, Rootfs) {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = (0..layers.len())
        .map(|i| dir.path().join(format!("l{i}")))
        .collect();
    for (p, l) in paths.iter().zip(layers) {
        layer(p, l);
    }
    let r = Rootfs::new(paths).unwrap();
    (dir, r)
}

type Found<'a> = Option<(&'a str, usize, FileKind)>;

fn found(r: &Resolved) -> Found<'_> {
    match r {
        Resolved::Found { entry, .. } => Some((entry.path.as_str(), entry.layer, entry.kind)),
        _ => None,
    }
}

#[test]
fn overlay_merge_rules() {
    let (_d, r) = stack(&[
        // top
        &[
            E::Whiteout("/gone-by-chardev"),
            E::WhFile("/gone-by-whfile"),
            E::OpaqueXattr("/opq-xattr"),
            E::OpaqueFile("/opq-file"),
            E::File("/dir-hidden-by-file", 0o755),
            E::Dir("/file-under-dir"),
            E::File("/merged/top", 0o755),
            E::Link("/lnk", "/lower-only/bin"),
        ],
        // middle
        &[
            E::File("/gone-by-chardev", 0o755),
            E::File("/gone-by-whfile", 0o755),
            E::File("/opq-xattr/lower", 0o755),
            E::File("/opq-file/lower", 0o755),
            E::File("/dir-hidden-by-file/inner", 0o755),
            E::File("/file-under-dir", 0o755),
            E::File("/merged/middle", 0o755),
        ],
        // bottom
        &[
            E::File("/merged/bottom", 0o755),
            E::File("/lower-only/bin", 0o700),
            E::File("/opq-xattr/bottom", 0o755),
        ],
    ]);
    let cases: &[(&str, Found)] = &[
        ("/gone-by-chardev", None),
        ("/gone-by-whfile", None),
        ("/.wh.gone-by-whfile", None),
        ("/opq-xattr/lower", None),
        ("/opq-xattr/bottom", None),
        ("/opq-file/lower", None),
        ("/opq-file/.wh..wh..opq", None),
        (
            "/dir-hidden-by-file",
            Some(("/dir-hidden-by-file", 0, FileKind::Regular)),
        ),
        (
            "/file-under-dir",
            Some(("/file-under-dir", 0, FileKind::Directory)),
        ),
        ("/merged/top", Some(("/merged/top", 0, FileKind::Regular))),
        (
            "/merged/middle",
            Some(("/merged/middle", 1, FileKind::Regular)),
        ),
        (
            "/merged/bottom",
            Some(("/merged/bottom", 2, FileKind::Regular)),
        ),
        ("/lnk", Some(("/lower-only/bin", 2, FileKind::Regular))),
        (
            "merged/../merged/./bottom",
            Some(("/merged/bottom", 2, FileKind::Regular)),
        ),
    ];
    for (path, want) in cases {
        let got = r.resolve(path, "/").unwrap();
        assert_eq!(found(&got), *want, "{path}: {got:?}");
    }
    assert!(matches!(
        r.resolve("/dir-hidden-by-file/inner", "/").unwrap(),
        Resolved::NotADirectory { .. }
    ));
    match r.resolve("/opq-xattr/lower", "/").unwrap() {
        Resolved::NotFound { missing, .. } => assert_eq!(missing, "/opq-xattr/lower"),
        other => panic!("{other:?}"),
    }
    // nofollow returns the link itself.
    assert_eq!(
        found(&r.resolve_nofollow("/lnk", "/").unwrap()),
        Some(("/lnk", 0, FileKind::Symlink))
    );
}

#[test]
fn symlinks_are_reanchored_and_never_escape() {
    let outside = tempfile::tempdir().unwrap();
    let canary = outside.path().join("canary");
    fs::write(&canary, b"HOST SECRET").unwrap();
    let abs_canary = canary.to_str().unwrap().to_string();
    let up = format!("{}{}", "../".repeat(30), abs_canary.trim_start_matches('/'));
    let (_d, r) = stack(&[&[
        E::File("/etc/passwd", 0o644),
        E::Link("/bin/sh", "busybox"),
        E::File("/bin/busybox", 0o755),
        E::Link("/climb", "../../../../../../etc/passwd"),
        E::Link("/abs-host", &abs_canary),
        E::Link("/rel-host", &up),
        E::Link("/usr/bin", "../bin"),
        E::Link("/loop-a", "/loop-b"),
        E::Link("/loop-b", "loop-a"),
        E::Link("/selfdir", "."),
    ]]);
    let ok: &[(&str, &str)] = &[
        ("/bin/sh", "/bin/busybox"),
        ("/climb", "/etc/passwd"),
        ("/usr/bin/sh", "/bin/busybox"),
        ("/selfdir/selfdir/bin/sh", "/bin/busybox"),
        ("../../../bin/sh", "/bin/busybox"),
    ];
    for (p, want) in ok {
        let got = r.resolve(p, "/usr").unwrap();
        assert_eq!(found(&got).map(|f| f.0), Some(*want), "{p}: {got:?}");
    }
    for p in ["/abs-host", "/rel-host"] {
        match r.resolve(p, "/").unwrap() {
            Resolved::NotFound { .. } => {}
            other => panic!("{p} must not reach the host file: {other:?}"),
        }
    }
    match r.resolve("/loop-a", "/").unwrap() {
        Resolved::Loop { hops } => assert_eq!(hops.len(), MAX_SYMLINK_HOPS),
        other => panic!("{other:?}"),
    }
}

#[test]
fn forty_hops_resolve_forty_one_loop() {
    for (n, resolves) in [(40usize, true), (41, false)] {
        let names: Vec<String> = (0..=n).map(|i| format!("/h{i}")).collect();
        let mut entries: Vec<E> = Vec::new();
        for i in 0..n {
            entries.push(E::Link(&names[i], &names[i + 1]));
        }
        entries.push(E::File(&names[n], 0o755));
        let (_d, r) = stack(&[&entries]);
        let got = r.resolve("/h0", "/").unwrap();
        assert_eq!(
            matches!(got, Resolved::Found { .. }),
            resolves,
            "{n} hops: {got:?}"
        );
    }
}

#[test]
fn special_files_are_typed_and_never_opened() {
    let (_d, r) = stack(&[&[
        E::Fifo("/fifo"),
        E::CharDev("/null", 1, 3),
        E::Dir("/dir"),
        E::File("/f", 0o644),
    ]]);
    let kinds = [
        ("/fifo", FileKind::Fifo),
        ("/null", FileKind::CharDevice),
        ("/dir", FileKind::Directory),
        ("/f", FileKind::Regular),
    ];
    for (p, k) in kinds {
        let got = r.resolve(p, "/").unwrap();
        let Resolved::Found { entry, .. } = got else {
            panic!("{p}")
        };
        assert_eq!(entry.kind, k, "{p}");
        let opened = r.open_regular(&entry);
        assert_eq!(opened.is_ok(), k == FileKind::Regular, "{p}");
    }
    // Forged entry: a FIFO claimed to be regular is refused by fstat, without blocking.
    let forged = Entry {
        path: "/fifo".into(),
        layer: 0,
        kind: FileKind::Regular,
        mode: 0o755,
        size: 0,
    };
    assert!(matches!(
        r.open_regular(&forged),
        Err(RootfsError::NotRegular { .. }) | Err(RootfsError::Io { .. })
    ));
}

#[test]
fn path_lookup_like_runc() {
    let (_d, r) = stack(&[
        &[
            E::File("/usr/bin/tool", 0o644),
            E::Dir("/bin/tool"),
            E::File("/work/local", 0o755),
        ],
        &[
            E::File("/sbin/tool", 0o755),
            E::File("/usr/local/bin/only-lower", 0o755),
        ],
    ]);
    let l = r.lookup_exec("tool", None, "/").unwrap();
    assert_eq!(
        found(&l.resolved),
        Some(("/sbin/tool", 1, FileKind::Regular))
    );
    assert!(!l.path_exhausted);
    assert_eq!(l.searched.last().map(String::as_str), Some("/sbin/tool"));
    let l = r.lookup_exec("tool", Some("/usr/bin:/bin"), "/").unwrap();
    assert!(l.path_exhausted, "non-executable and directory are skipped");
    assert_eq!(found(&l.resolved).map(|f| f.2), Some(FileKind::Regular));
    let l = r.lookup_exec("local", Some("/nope:"), "/work").unwrap();
    assert_eq!(
        found(&l.resolved).map(|f| f.0),
        Some("/work/local"),
        "empty element = cwd"
    );
    let l = r.lookup_exec("absent", None, "/").unwrap();
    assert!(l.path_exhausted);
    assert!(matches!(l.resolved, Resolved::NotFound { .. }));
    assert_eq!(l.searched.len(), DEFAULT_PATH.split(':').count());
    let l = r.lookup_exec("./local", Some(""), "/work").unwrap();
    assert!(l.searched.is_empty());
    assert_eq!(found(&l.resolved).map(|f| f.0), Some("/work/local"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn no_path_escapes_the_root(comps in proptest::collection::vec(prop_oneof![
        Just("..".to_string()), Just(".".to_string()), Just("up".to_string()), Just("abs".to_string()),
        Just("d".to_string()), Just("f".to_string()), Just("".to_string()), "[a-z]{1,3}",
    ], 0..12), absolute in any::<bool>()) {
        let outside = tempfile::tempdir().unwrap();
        let canary = outside.path().join("canary");
        fs::write(&canary, b"HOST").unwrap();
        let (d, r) = stack(&[&[
            E::Link("/up", "../../../../.."),
            E::Link("/abs", outside.path().to_str().unwrap()),
            E::File("/d/f", 0o755),
            E::Link("/d/up", "../../.."),
        ]]);
        let path = format!("{}{}", if absolute { "/" } else { "" }, comps.join("/"));
        let got = r.resolve(&path, "/d").unwrap();
        if let Resolved::Found { entry, .. } = &got {
            prop_assert!(entry.path.starts_with('/'));
            prop_assert!(!entry.path.contains(".."));
            if entry.kind == FileKind::Regular {
                let f = r.open_regular(entry).unwrap();
                let mut s = String::new();
                use std::io::Read;
                std::io::BufReader::new(f).read_to_string(&mut s).unwrap();
                prop_assert!(s.contains(d.path().to_str().unwrap()), "read {s:?}");
            }
        }
    }
}

#[test]
fn paths_longer_than_path_max_resolve_in_every_layer() {
    use rustix::fs::{mkdirat, openat, OFlags};
    let dir = tempfile::tempdir().unwrap();
    let (top, lower) = (dir.path().join("top"), dir.path().join("lower"));
    fs::create_dir_all(&top).unwrap();
    fs::create_dir_all(&lower).unwrap();
    // 3,000 levels in the lower layer (6,000 bytes of path), a file at the bottom; the top
    // layer marks a directory 2,500 deep opaque, hiding nothing on the way to the file.
    let depth = 3000;
    let mut fd = openat(rustix::fs::CWD, &lower, OFlags::DIRECTORY, Mode::empty()).unwrap();
    let mut tfd = openat(rustix::fs::CWD, &top, OFlags::DIRECTORY, Mode::empty()).unwrap();
    for i in 0..depth {
        mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).unwrap();
        fd = openat(&fd, "d", OFlags::DIRECTORY, Mode::empty()).unwrap();
        if i < 2500 {
            mkdirat(&tfd, "d", Mode::from_raw_mode(0o755)).unwrap();
            tfd = openat(&tfd, "d", OFlags::DIRECTORY, Mode::empty()).unwrap();
        }
    }
    let f = openat(
        &fd,
        "app",
        OFlags::CREATE | OFlags::WRONLY,
        Mode::from_raw_mode(0o755),
    )
    .unwrap();
    rustix::io::write(&f, b"\x7fELF").unwrap();
    let r = Rootfs::new(vec![top, lower]).unwrap();
    let path = format!("/{}app", "d/".repeat(depth));
    let got = r.resolve(&path, "/").unwrap();
    assert_eq!(
        found(&got).map(|(p, l, k)| (p.len(), l, k)),
        Some((path.len(), 1, FileKind::Regular))
    );
    let Resolved::Found { entry, .. } = got else {
        unreachable!()
    };
    let mut head = [0u8; 4];
    let n = std::os::unix::fs::FileExt::read_at(&r.open_regular(&entry).unwrap(), &mut head, 0)
        .unwrap();
    assert_eq!(&head[..n], b"\x7fELF");
    // Absent deep paths are absent, not errors.
    let missing = format!("/{}nope", "d/".repeat(depth));
    assert!(matches!(
        r.resolve(&missing, "/").unwrap(),
        Resolved::NotFound { .. }
    ));
}
