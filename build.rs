//! Generates the agent's gRPC API from proto/ (needs protoc) and compiles the exec tracer's
//! eBPF program from C (needs clang); both are installed by scripts/install-deps.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    grpc();
    exec_tracer();
}

fn grpc() {
    println!("cargo:rerun-if-changed=proto/archwatch/v1/archwatch.proto");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_arg("--experimental_allow_proto3_optional");
    if let Err(e) = tonic_prost_build::configure().compile_with_config(
        config,
        &["proto/archwatch/v1/archwatch.proto"],
        &["proto"],
    ) {
        panic!(
            "generating the archwatch.v1 gRPC API (is protoc installed? scripts/install-deps): {e}"
        );
    }
}

/// `src/tracer/bpf/exec.bpf.c` → `$OUT_DIR/exec.bpf.o`, embedded by `src/tracer/load.rs`.
/// The object is the same for every target of one byte order (the program reads no kernel
/// structure), so a cross-build for arm64 compiles it exactly as a native one does.
fn exec_tracer() {
    let src = "src/tracer/bpf/exec.bpf.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("exec.bpf.o");
    let target = match std::env::var("CARGO_CFG_TARGET_ENDIAN").as_deref() {
        Ok("big") => "bpfeb",
        _ => "bpfel",
    };
    let clang = std::env::var_os("CLANG").unwrap_or_else(|| "clang".into());
    let status = Command::new(&clang)
        .args([
            "-target", target, "-O2", "-g", "-Wall", "-Werror", "-c", src, "-o",
        ])
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("compiling {src} with clang failed ({s})"),
        Err(e) => panic!(
            "compiling {src}: cannot run {} ({e}); install clang (scripts/install-deps)",
            PathBuf::from(clang).display()
        ),
    }
}
