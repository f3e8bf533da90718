//! The integration suite: real containerd, runc, Docker Engine, binaries from Debian packages.

mod agent;
mod api;
mod binfmt;
mod cri;
mod daemonset;
mod demo;
mod docker_agent;
mod dockerd;
mod e2e;
mod hostile;
mod image_build;
mod kube;
mod leases;
mod manifests;
mod rootfs;
mod state;
mod support;
mod tracer;
mod verify;
