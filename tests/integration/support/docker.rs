//! The private Docker Engine of [`archwatch::lab::docker`] (Debian's docker.io in a temp dir,
//! never the system one), with the test suite's manners: a step that fails panics with what
//! Docker said.

use std::process::Output;

#[allow(unused_imports)]
pub use archwatch::lab::docker::{alive, mounts_under, RunOutcome, DOCKER};

use archwatch::lab::docker as lab;

pub struct Dockerd(lab::Dockerd);

impl std::ops::Deref for Dockerd {
    type Target = lab::Dockerd;
    fn deref(&self) -> &lab::Dockerd {
        &self.0
    }
}

impl std::ops::DerefMut for Dockerd {
    fn deref_mut(&mut self) -> &mut lab::Dockerd {
        &mut self.0
    }
}

impl Dockerd {
    /// Starts dockerd and waits until `docker version` answers (60 s).
    pub fn start() -> Dockerd {
        Dockerd(lab::Dockerd::start().unwrap_or_else(|e| panic!("private dockerd: {e}")))
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        self.0
            .docker(args)
            .unwrap_or_else(|e| panic!("docker {args:?}: {e}"))
    }

    pub fn docker_ok(&self, args: &[&str]) -> String {
        self.0.docker_ok(args).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn api_version(&self) -> String {
        self.0.api_version().unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn build(
        &self,
        tag: &str,
        files: &[(&str, &[u8], u32)],
        dockerfile_lines: &[&str],
    ) -> String {
        self.0
            .build(tag, files, dockerfile_lines)
            .unwrap_or_else(|e| panic!("docker build {tag}: {e}"))
    }

    pub fn load(&self, tag: &str, spec: &archwatch::oci::ImageSpec) -> String {
        self.0
            .load(tag, spec)
            .unwrap_or_else(|e| panic!("docker load {tag}: {e}"))
    }

    pub fn run(&self, name: &str, image: &str, options: &[&str]) -> RunOutcome {
        self.0
            .run(name, image, options)
            .unwrap_or_else(|e| panic!("docker run {name}: {e}"))
    }

    pub fn run_cmd(&self, name: &str, image: &str, options: &[&str], args: &[&str]) -> RunOutcome {
        self.0
            .run_cmd(name, image, options, args)
            .unwrap_or_else(|e| panic!("docker run {name}: {e}"))
    }

    pub fn inspect(&self, what: &str) -> serde_json::Value {
        self.0.inspect(what).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn logs(&self, name: &str) -> (String, String) {
        self.0.logs(name).unwrap_or_else(|e| panic!("{e}"))
    }
}
