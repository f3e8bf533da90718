//! The integration suite: real containerd, runc, binaries from Debian packages.

mod e2e;
mod support;
