//! Arbitrary bytes as the first file an inspection reads: ELF parsing, shebang parsing, text
//! and format detection and binfmt matching must never panic, loop or read unboundedly.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    archwatch::inspect::inspect_bytes(data);
});
