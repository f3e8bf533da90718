//! binfmt_misc entry text, as read from /proc/sys/fs/binfmt_misc: parsing and matching never
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(h) = archwatch::binfmt::Table::parse_entry("fuzz", &text) {
        let t = archwatch::binfmt::Table { enabled: true, handlers: vec![h] };
        let _ = t.matching(data, "/app.exe");
    }
});
