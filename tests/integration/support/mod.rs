//! Real components for the integration suite: fixtures from Debian packages, a private
//! containerd + runc and a private Docker Engine, each in a temp dir (never the system one).

#![allow(dead_code)]

pub mod agent;
pub mod containerd;
pub mod cri;
pub mod docker;
pub mod fake_api;
pub mod manifests;
pub mod pod;
pub mod runc;

use std::path::PathBuf;

/// Where scripts/fixtures put Debian's binaries.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("ARCHWATCH_FIXTURES")
            .unwrap_or_else(|_| "/var/cache/archwatch-fixtures".into()),
    )
}

/// busybox-static for a Debian architecture (amd64, arm64, armhf, armel, s390x, ppc64el,
/// mips64el, i386). Panics with the fix when missing: the suite needs real binaries.
pub fn busybox(debarch: &str) -> Vec<u8> {
    let p = fixtures_dir().join(format!("busybox-{debarch}"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}; run scripts/fixtures first", p.display()))
}

/// The musl loader from Debian's musl package.
pub fn musl_loader() -> Vec<u8> {
    let p = fixtures_dir().join("musl-amd64/lib/x86_64-linux-musl/libc.so");
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}; run scripts/fixtures first", p.display()))
}

/// A unique name for this test run.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// The archwatch binary built for these tests.
pub fn archwatch() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_archwatch"))
}

/// Writes OCI layer items as overlay layer directories (top first), the way a snapshotter
/// would unpack them: whiteouts stay `.wh.` files, which archwatch honours like char 0/0.
pub fn materialize(layers: &[archwatch::oci::Layer], dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let ldir = dir.join(format!("layer{i}"));
        std::fs::create_dir_all(&ldir).expect("mkdir");
        let tar = l.tar().expect("tar");
        let mut a = tar::Archive::new(tar.as_slice());
        a.set_preserve_permissions(true);
        a.set_unpack_xattrs(true);
        a.unpack(&ldir).expect("unpack layer");
        // tar-rs writes FIFOs and devices as regular files: make the real nodes.
        for item in &l.0 {
            let (path, ft, dev) = match item {
                archwatch::oci::Item::Fifo { path, .. } => (path, rustix::fs::FileType::Fifo, 0),
                archwatch::oci::Item::CharDevice {
                    path, major, minor, ..
                } => (
                    path,
                    rustix::fs::FileType::CharacterDevice,
                    rustix::fs::makedev(*major, *minor),
                ),
                _ => continue,
            };
            let p = ldir.join(path.trim_start_matches('/'));
            let _ = std::fs::remove_file(&p);
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &p,
                ft,
                rustix::fs::Mode::from_raw_mode(0o755),
                dev,
            )
            .expect("mknod");
        }
        out.push(ldir);
    }
    out.reverse();
    out
}

/// binfmt_misc is machine-wide: tests that register handlers hold this for writing, tests
/// whose expectations assume the handler table does not change under them hold it for
/// reading.
pub fn binfmt_lock() -> &'static std::sync::RwLock<()> {
    static LOCK: std::sync::RwLock<()> = std::sync::RwLock::new(());
    &LOCK
}

pub fn binfmt_shared() -> std::sync::RwLockReadGuard<'static, ()> {
    binfmt_lock().read().unwrap_or_else(|e| e.into_inner())
}

pub fn binfmt_exclusive() -> std::sync::RwLockWriteGuard<'static, ()> {
    binfmt_lock().write().unwrap_or_else(|e| e.into_inner())
}
