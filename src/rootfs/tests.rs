//! Layer stacks with every whiteout and opaque form, symlinks that try to escape, loops and
//! special files, each under both resolvers (`openat2` and the `openat` walk). Runs as root
//! (mknod, trusted.* xattrs).

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
    OpaqueUserXattr(&'a str),
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
            E::OpaqueUserXattr(r) => {
                let path = p(r);
                fs::create_dir_all(&path).unwrap();
                rustix::fs::setxattr(
                    &path,
                    "user.overlay.opaque",
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

/// Builds layers (top first) in a temp dir, read with `resolver` by a process that can read
/// trusted.* attributes.
fn stack(resolver: Resolver, layers: &[&[E]]) -> (tempfile::TempDir, Rootfs) {
    stack_with(
        Access {
            resolver,
            overlay_xattrs_readable: true,
        },
        layers,
    )
}

fn stack_with(access: Access, layers: &[&[E]]) -> (tempfile::TempDir, Rootfs) {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = (0..layers.len())
        .map(|i| dir.path().join(format!("l{i}")))
        .collect();
    for (p, l) in paths.iter().zip(layers) {
        layer(p, l);
    }
    let r = Rootfs::with_access(paths, access).unwrap();
    (dir, r)
}

type Found<'a> = Option<(&'a str, usize, FileKind)>;

fn found(r: &Resolved) -> Found<'_> {
    match r {
        Resolved::Found { entry, .. } => Some((entry.path.as_str(), entry.layer, entry.kind)),
        _ => None,
    }
}

fn overlay_merge_rules(res: Resolver) {
    let (_d, r) = stack(
        res,
        &[
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
        ],
    );
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

fn symlinks_are_reanchored_and_never_escape(res: Resolver) {
    let outside = tempfile::tempdir().unwrap();
    let canary = outside.path().join("canary");
    fs::write(&canary, b"HOST SECRET").unwrap();
    let abs_canary = canary.to_str().unwrap().to_string();
    let up = format!("{}{}", "../".repeat(30), abs_canary.trim_start_matches('/'));
    let (_d, r) = stack(
        res,
        &[&[
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
        ]],
    );
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

fn forty_hops_resolve_forty_one_loop(res: Resolver) {
    for (n, resolves) in [(40usize, true), (41, false)] {
        let names: Vec<String> = (0..=n).map(|i| format!("/h{i}")).collect();
        let mut entries: Vec<E> = Vec::new();
        for i in 0..n {
            entries.push(E::Link(&names[i], &names[i + 1]));
        }
        entries.push(E::File(&names[n], 0o755));
        let (_d, r) = stack(res, &[&entries]);
        let got = r.resolve("/h0", "/").unwrap();
        assert_eq!(
            matches!(got, Resolved::Found { .. }),
            resolves,
            "{n} hops: {got:?}"
        );
    }
}

fn special_files_are_typed_and_never_opened(res: Resolver) {
    let (_d, r) = stack(
        res,
        &[&[
            E::Fifo("/fifo"),
            E::CharDev("/null", 1, 3),
            E::Dir("/dir"),
            E::File("/f", 0o644),
        ]],
    );
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
        uid: 0,
        gid: 0,
    };
    assert!(matches!(
        r.open_regular(&forged),
        Err(RootfsError::NotRegular { .. }) | Err(RootfsError::Io { .. })
    ));
}

fn path_lookup_like_runc(res: Resolver) {
    let (_d, r) = stack(
        res,
        &[
            &[
                E::File("/usr/bin/tool", 0o644),
                E::Dir("/bin/tool"),
                E::File("/work/local", 0o755),
            ],
            &[
                E::File("/sbin/tool", 0o755),
                E::File("/usr/local/bin/only-lower", 0o755),
            ],
        ],
    );
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

fn paths_longer_than_path_max_resolve_in_every_layer(res: Resolver) {
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
    let r = Rootfs::with_access(
        vec![top, lower],
        Access {
            resolver: res,
            overlay_xattrs_readable: true,
        },
    )
    .unwrap();
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// Whatever the path, no resolver leaves the root, and both give the same answer.
    #[test]
    fn no_path_escapes_the_root(comps in proptest::collection::vec(prop_oneof![
        Just("..".to_string()), Just(".".to_string()), Just("up".to_string()), Just("abs".to_string()),
        Just("d".to_string()), Just("f".to_string()), Just("".to_string()), "[a-z]{1,3}",
    ], 0..12), absolute in any::<bool>()) {
        let outside = tempfile::tempdir().unwrap();
        let canary = outside.path().join("canary");
        fs::write(&canary, b"HOST").unwrap();
        let (d, r) = stack(Resolver::Openat2, &[&[
            E::Link("/up", "../../../../.."),
            E::Link("/abs", outside.path().to_str().unwrap()),
            E::File("/d/f", 0o755),
            E::Link("/d/up", "../../.."),
        ]]);
        let walk = Rootfs::with_access(
            r.layers().to_vec(),
            Access { resolver: Resolver::Openat, overlay_xattrs_readable: true },
        )
        .unwrap();
        let path = format!("{}{}", if absolute { "/" } else { "" }, comps.join("/"));
        let got = r.resolve(&path, "/d").unwrap();
        prop_assert_eq!(&walk.resolve(&path, "/d").unwrap(), &got);
        if let Resolved::Found { entry, .. } = &got {
            prop_assert!(entry.path.starts_with('/'));
            prop_assert!(!entry.path.contains(".."));
            if entry.kind == FileKind::Regular {
                for root in [&r, &walk] {
                    let f = root.open_regular(entry).unwrap();
                    let mut s = String::new();
                    use std::io::Read;
                    std::io::BufReader::new(f).read_to_string(&mut s).unwrap();
                    prop_assert!(s.contains(d.path().to_str().unwrap()), "read {s:?}");
                }
            }
        }
    }
}

/// The two resolvers answer every lookup alike: the same file, or the same errno (ENOENT,
/// ENOTDIR, ELOOP for a symlink met anywhere but at the end, EXDEV for an absolute path),
/// for every open the resolver makes.
#[test]
fn both_resolvers_open_the_same_file_or_fail_with_the_same_errno() {
    use rustix::fs::OFlags;
    use std::os::fd::AsFd;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    layer(
        &root,
        &[
            E::File("/f", 0o644),
            E::File("/d/f", 0o755),
            E::Dir("/d/sub"),
            E::Link("/link-dir", "d"),
            E::Link("/link-file", "d/f"),
            E::Link("/link-abs", "/etc"),
            E::Link("/d/up", "../f"),
            E::Link("/dangling", "nope"),
            E::Fifo("/fifo"),
            E::CharDev("/null", 1, 3),
        ],
    );
    // Deeper than one openat2 call takes (2 KiB per call).
    let deep = "dd/".repeat(1100);
    fs::create_dir_all(root.join(&deep)).unwrap();
    fs::write(root.join(format!("{deep}x")), b"deep").unwrap();
    symlink("x", root.join(format!("{deep}lnk"))).unwrap();
    let base = rustix::fs::open(
        &root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    let rels = [
        "f".to_string(),
        "d".into(),
        "d/f".into(),
        "d/sub".into(),
        "d/sub/".into(),
        "d/f/".into(),
        "d/f/x".into(),
        "f/x".into(),
        "missing".into(),
        "missing/x".into(),
        "d/missing/x".into(),
        "link-dir".into(),
        "link-dir/f".into(),
        "link-dir/".into(),
        "link-file".into(),
        "link-file/".into(),
        "link-abs/passwd".into(),
        "d/up".into(),
        "d/up/x".into(),
        "dangling".into(),
        "dangling/x".into(),
        "fifo".into(),
        "fifo/x".into(),
        "null".into(),
        ".".into(),
        "d/.".into(),
        "f/.".into(),
        "link-dir/.".into(),
        "./d//f".into(),
        "d/./sub".into(),
        "".into(),
        "/etc".into(),
        "/".into(),
        format!("{deep}x"),
        format!("{deep}lnk"),
        format!("{deep}lnk/y"),
        format!("{deep}x/y"),
        format!("{deep}nope/y"),
        deep.clone(),
    ];
    let flag_sets = [
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
    ];
    let what = |r: Result<std::os::fd::OwnedFd, rustix::io::Errno>| {
        r.map(|fd| {
            let st = rustix::fs::fstat(&fd).unwrap();
            (st.st_dev, st.st_ino)
        })
    };
    let mut errnos = std::collections::BTreeSet::new();
    for rel in &rels {
        for flags in flag_sets {
            let a = what(Resolver::Openat2.open(base.as_fd(), rel, flags));
            let b = what(Resolver::Openat.open(base.as_fd(), rel, flags));
            assert_eq!(a, b, "{:.40} with {flags:?}", rel);
            if let Err(e) = a {
                errnos.insert(e.raw_os_error());
            }
        }
    }
    // The table reaches every failure the resolver maps.
    for e in [
        rustix::io::Errno::NOENT,
        rustix::io::Errno::NOTDIR,
        rustix::io::Errno::LOOP,
        rustix::io::Errno::XDEV,
    ] {
        assert!(errnos.contains(&e.raw_os_error()), "{e} never seen");
    }
}

/// Without CAP_SYS_ADMIN `trusted.overlay.opaque` reads as absent: an answer found below
/// a directory an upper layer also has is kept and noted, never silently merged; where
/// the answer is the same either way (found on top, absent everywhere, whited out) there
/// is no note, and markers everyone can read still decide.
fn unreadable_opacity_is_noted_where_it_changes_the_answer(res: Resolver) {
    let layers: &[&[E]] = &[
        // top
        &[
            E::OpaqueXattr("/app"),
            E::Dir("/usr/bin"),
            E::File("/top-only/x", 0o755),
            E::Dir("/w"),
            E::OpaqueFile("/opq-file"),
            E::OpaqueUserXattr("/opq-user"),
            E::Dir("/a/b"),
        ],
        // middle
        &[E::WhFile("/w/f"), E::Dir("/a")],
        // bottom
        &[
            E::File("/app/server", 0o755),
            E::File("/usr/bin/tool", 0o755),
            E::File("/w/f", 0o755),
            E::File("/opq-file/x", 0o755),
            E::File("/opq-user/x", 0o755),
            E::File("/a/b/c", 0o755),
        ],
    ];
    let access = |readable| Access {
        resolver: res,
        overlay_xattrs_readable: readable,
    };
    let (_d, sees) = stack_with(access(true), layers);
    let blind = Rootfs::with_access(sees.layers().to_vec(), access(false)).unwrap();
    let layer = |i: usize| format!("layer {i} ({})", sees.layers()[i].display());
    // (path, found by a process that reads trusted.*, found without, the note: the
    // directory and its layer)
    type Case<'a> = (&'a str, Found<'a>, Found<'a>, Option<(&'a str, usize)>);
    let cases: &[Case] = &[
        (
            "/app/server",
            None,
            Some(("/app/server", 2, FileKind::Regular)),
            Some(("/app", 0)),
        ),
        (
            "/usr/bin/tool",
            Some(("/usr/bin/tool", 2, FileKind::Regular)),
            Some(("/usr/bin/tool", 2, FileKind::Regular)),
            Some(("/usr/bin", 0)),
        ),
        // The innermost directory on the way that may hide it is named.
        (
            "/a/b/c",
            Some(("/a/b/c", 2, FileKind::Regular)),
            Some(("/a/b/c", 2, FileKind::Regular)),
            Some(("/a/b", 0)),
        ),
        (
            "/top-only/x",
            Some(("/top-only/x", 0, FileKind::Regular)),
            Some(("/top-only/x", 0, FileKind::Regular)),
            None,
        ),
        ("/app/absent", None, None, None),
        ("/w/f", None, None, None),
        ("/opq-file/x", None, None, None),
        ("/opq-user/x", None, None, None),
        (
            "/usr",
            Some(("/usr", 0, FileKind::Directory)),
            Some(("/usr", 0, FileKind::Directory)),
            None,
        ),
    ];
    for (path, seen, unseen, note) in cases {
        let got = sees.resolve(path, "/").unwrap();
        assert_eq!(found(&got), *seen, "{path} with trusted.*: {got:?}");
        assert_eq!(sees.take_unsure(), vec![], "{path} with trusted.*");
        let got = blind.resolve(path, "/").unwrap();
        assert_eq!(found(&got), *unseen, "{path} without trusted.*: {got:?}");
        let want: Vec<Unsure> = note
            .iter()
            .map(|(dir, l)| Unsure {
                dir: dir.to_string(),
                dir_layer: layer(*l),
                path: path.to_string(),
                from_layer: layer(2),
            })
            .collect();
        assert_eq!(blind.take_unsure(), want, "{path} without trusted.*");
    }
    // A note is said once, however often the lookup is made.
    for _ in 0..3 {
        blind.resolve("/app/server", "/").unwrap();
    }
    assert_eq!(blind.take_unsure().len(), 1);
}

/// A FIFO or a device claimed to be a regular file is never opened for reading.
fn a_forged_entry_never_opens_a_fifo_or_device(res: Resolver) {
    use rustix::fs::inotify;
    let (d, r) = stack(res, &[&[E::Fifo("/fifo"), E::CharDev("/null", 1, 3)]]);
    for name in ["/fifo", "/null"] {
        let node = d.path().join("l0").join(&name[1..]);
        let ino =
            inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC).unwrap();
        inotify::add_watch(
            &ino,
            &node,
            inotify::WatchFlags::OPEN | inotify::WatchFlags::ACCESS,
        )
        .unwrap();
        let forged = Entry {
            path: name.into(),
            layer: 0,
            kind: FileKind::Regular,
            mode: 0o755,
            size: 0,
            uid: 0,
            gid: 0,
        };
        assert!(
            matches!(r.open_regular(&forged), Err(RootfsError::NotRegular { .. })),
            "{name}"
        );
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1024];
        let mut events = inotify::Reader::new(&ino, &mut buf);
        assert!(
            matches!(events.next(), Err(rustix::io::Errno::WOULDBLOCK)),
            "{name} was opened"
        );
        // Positive control: an open for reading is seen.
        drop(
            rustix::fs::open(
                &node,
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NONBLOCK,
                Mode::empty(),
            )
            .unwrap(),
        );
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1024];
        let mut events = inotify::Reader::new(&ino, &mut buf);
        assert!(events.next().is_ok(), "{name}: the watch sees opens");
    }
}

under_both_resolvers!(
    overlay_merge_rules,
    symlinks_are_reanchored_and_never_escape,
    forty_hops_resolve_forty_one_loop,
    special_files_are_typed_and_never_opened,
    path_lookup_like_runc,
    paths_longer_than_path_max_resolve_in_every_layer,
    unreadable_opacity_is_noted_where_it_changes_the_answer,
    a_forged_entry_never_opens_a_fifo_or_device,
);
