//! A binfmt_misc table that flaps, in a directory of the kernel's format the agent reads
//! with `--binfmt-dir` (never the machine's binfmt_misc).
//!
//! The handlers are the ones Debian's qemu-user-static registers, without the `F` flag: an
//! arm64 handler makes the wrong-arch containers `emulator_missing` (the interpreter is not
//! inside them) instead of `arch_mismatch`, both of which fail to exec, so every failing
//! attempt stays a failure while the verdict cache is dropped and every image judged again
//! on each change. The kernel itself never sees these handlers: the containers really fail
//! with `exec format error` throughout.

use std::path::{Path, PathBuf};

use archwatch::binfmt::{Handler, Rule, Table};

const AARCH64: (&str, &str, &str) = (
    "qemu-aarch64",
    "7f454c460201010000000000000000000200b700",
    "ffffffffffffff00fffffffffffffffffeffffff",
);
const S390X: (&str, &str, &str) = (
    "qemu-s390x",
    "7f454c4602020100000000000000000000020016",
    "ffffffffffffff00fffffffffffffffffffeffff",
);

pub struct Flapper {
    dir: tempfile::TempDir,
    step: u64,
    /// Whether the arm64 handler flaps too (the wrong-arch verdicts with it).
    arm64: bool,
}

fn handler((name, magic, mask): (&str, &str, &str)) -> Handler {
    Handler {
        name: name.into(),
        enabled: true,
        interpreter: format!("/usr/bin/{name}-static"),
        flags: String::new(),
        rule: Rule::Magic {
            offset: 0,
            magic: hex::decode(magic).unwrap(),
            mask: hex::decode(mask).unwrap(),
        },
        arch: None,
    }
}

/// Writes `text` to `path` in one rename: the agent never reads half an entry.
fn put(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

impl Flapper {
    /// An enabled table without handlers; with `arm64`, the arm64 handler flaps too.
    pub fn new(arm64: bool) -> Flapper {
        let dir = tempfile::Builder::new()
            .prefix("archwatch-soak-binfmt-")
            .tempdir()
            .unwrap();
        put(&dir.path().join("status"), "enabled\n");
        Flapper {
            dir,
            step: 0,
            arm64,
        }
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Changes the table: the arm64 handler (when it flaps) comes or goes every step, the
    /// s390x one every other step (every step without arm64), and every fifth step
    /// binfmt_misc as a whole is disabled. Returns whether the arm64 handler now applies.
    pub fn flap(&mut self) -> bool {
        self.step += 1;
        let s = self.step;
        let aarch64 = self.arm64 && s % 2 == 1;
        let s390x = if self.arm64 {
            (s / 2) % 2 == 1
        } else {
            s % 2 == 1
        };
        let disabled = s % 5 == 4;
        for (on, h) in [(aarch64, AARCH64), (s390x, S390X)] {
            let path = self.dir.path().join(h.0);
            if on {
                put(&path, &handler(h).render());
            } else {
                let _ = std::fs::remove_file(&path);
            }
        }
        put(
            &self.dir.path().join("status"),
            if disabled { "disabled\n" } else { "enabled\n" },
        );
        // What the agent will read is what was meant.
        let (t, errors) = Table::read_dir(self.dir.path()).expect("the flapping table");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(t.enabled, !disabled);
        assert_eq!(t.handlers.len(), usize::from(aarch64) + usize::from(s390x));
        aarch64 && !disabled
    }

    /// Changes made so far.
    pub fn changes(&self) -> u64 {
        self.step
    }
}
