//! Generates the agent's gRPC API from proto/ (needs protoc, installed by scripts/install-deps).
fn main() {
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
