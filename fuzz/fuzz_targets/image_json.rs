//! OCI/Docker index, manifest and config JSON from an image: parsing never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(archwatch::image::Doc::Index(entries)) = archwatch::image::parse_doc(data) {
        let _ = archwatch::image::pick(&entries, &archwatch::platform::Node::detect());
    }
    if let Ok(c) = archwatch::image::parse_config(data) {
        let _ = (c.argv(), c.chain_id(), c.arch());
    }
});
