//! The project eats its own cooking: the binary built the way the Dockerfile builds it (static
//! musl, linked by rust-lld) passes `archwatch inspect` in a root laid out like the final image
//! (the binary alone on scratch), and the ordinary glibc build in the same root does not.

use std::path::Path;
use std::process::Command;

use crate::support;

fn inspect_scratch(binary: &Path) -> serde_json::Value {
    let root = tempfile::tempdir().unwrap();
    std::fs::copy(binary, root.path().join("archwatch")).unwrap();
    let out = support::archwatch()
        .args(["inspect", "--json", "--rootfs"])
        .arg(root.path())
        .args(["--", "/archwatch", "agent"])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn the_container_image_binary_runs_on_scratch() {
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("FROM --platform=$BUILDPLATFORM"),
        "cross-compiling builder"
    );
    assert!(dockerfile.contains("FROM scratch"));
    assert!(dockerfile.contains("ENTRYPOINT [\"/archwatch\"]"));
    // Same target, linker and C compiler as the Dockerfile (debug profile: the linking is what
    // is being checked, and it is the same).
    let target_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/musl");
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "--locked",
            "--bin",
            "archwatch",
            "--target",
            "x86_64-unknown-linux-musl",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER", "rust-lld")
        .env("CC_x86_64_unknown_linux_musl", "musl-gcc")
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the musl build (scripts/install-deps adds the target and musl-tools)"
    );
    let built = target_dir.join("x86_64-unknown-linux-musl/debug/archwatch");
    let v = inspect_scratch(&built);
    assert_eq!(v["verdict"], "ok", "{v:#}");
    assert_eq!(v["binary_arch"], "amd64");
    assert!(
        v["chain"][0]["elf"]["interp"].is_null(),
        "static: no loader needed on scratch: {v:#}"
    );
    // The glibc build of the tests would not run there.
    let v = inspect_scratch(Path::new(env!("CARGO_BIN_EXE_archwatch")));
    assert_eq!(v["verdict"], "missing_loader", "{v:#}");
}
