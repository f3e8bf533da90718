//! The integration suite: real containerd, runc, binaries from Debian packages.

mod agent;
mod e2e;
mod support;
