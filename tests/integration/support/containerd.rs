//! The private containerd comes from the library (`archwatch::lab`, also used by `demo`);
//! this wrapper panics with context instead of returning errors.

use std::path::Path;
use std::time::Duration;

pub use archwatch::lab::RunOutcome;

pub struct Containerd {
    inner: archwatch::lab::Containerd,
    pub socket: std::path::PathBuf,
}

impl Containerd {
    pub fn start() -> Containerd {
        let inner = archwatch::lab::Containerd::start().expect("private containerd");
        let socket = inner.socket.clone();
        Containerd { inner, socket }
    }
    pub fn ctr_ns(&self, ns: &str, args: &[&str]) -> std::process::Output {
        self.inner.ctr_ns(ns, args).expect("ctr")
    }
    pub fn import(&mut self, ns: &str, archive: &Path) {
        self.inner.import(ns, archive).expect("import")
    }
    /// Builds the image `spec` as an OCI archive tagged `tag` and imports it into `ns`.
    pub fn import_spec(&mut self, ns: &str, tag: &str, spec: &archwatch::oci::ImageSpec) {
        let mut l = archwatch::oci::Layout::new();
        let m = l.add_image(spec).expect("image");
        l.tag(tag, &m);
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("image.tar");
        l.write_archive(&p).expect("archive");
        self.import(ns, &p);
    }
    pub fn run(
        &mut self,
        ns: &str,
        image: &str,
        id: &str,
        labels: &[(&str, &str)],
        timeout: Duration,
    ) -> RunOutcome {
        self.inner
            .run(ns, image, id, labels, timeout)
            .expect("ctr run")
    }
    /// `ctr run --platform`: a variant of a multi-platform image forced on this node.
    pub fn run_platform(
        &mut self,
        ns: &str,
        image: &str,
        id: &str,
        labels: &[(&str, &str)],
        platform: &str,
        timeout: Duration,
    ) -> RunOutcome {
        self.inner
            .run_platform(ns, image, id, labels, Some(platform), timeout)
            .expect("ctr run --platform")
    }
    /// containerd's root directory (snapshots live under it).
    pub fn root(&self) -> std::path::PathBuf {
        self.inner.root()
    }
    pub fn restart(&mut self) {
        self.inner.restart().expect("containerd restart")
    }
    /// SIGTERM, as `systemctl restart containerd` does, then start again.
    pub fn restart_graceful(&mut self) {
        self.inner
            .restart_graceful()
            .expect("containerd graceful restart")
    }
}
