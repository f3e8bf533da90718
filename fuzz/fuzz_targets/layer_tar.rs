//! A layer blob (tar, gzip or zstd) as `verify` reads it: indexing its headers and resolving
//! and inspecting an entrypoint through it never panic, loop or read unboundedly.
#![no_main]

use std::sync::Arc;

use archwatch::rootfs::Stack;
use archwatch::verify::layers::TarLayers;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let bytes = Arc::new(data.to_vec());
    let open: archwatch::verify::layers::Opener = Arc::new(move || Ok(Box::new(std::io::Cursor::new(bytes.to_vec())) as Box<dyn std::io::Read>));
    let root = Stack::from_layers(TarLayers::new(vec![open]));
    let node = archwatch::platform::Node::with_arch(archwatch::platform::Arch::Amd64);
    let table = archwatch::binfmt::Table::empty();
    let argv = vec!["sh".to_string()];
    let req = archwatch::inspect::Request { argv: &argv, path_env: None, cwd: "/", claimed_arch: None, user: None };
    let _ = archwatch::inspect::inspect(&root, &req, archwatch::inspect::Context { node: &node, binfmt: &table });
});
