//! What the agent keeps of inspections, bounded in bytes: argv, symlink chains and causes
//! come from container specs and image files, so they can be any length.
//!
//! Invariants:
//! - a verdict cache key is 32 bytes whatever argv, PATH and cwd hold (a SHA-256 of them
//!   with the content they run in);
//! - a kept inspection is [`capped`]: no entry weighs more than [`ENTRY_MAX_BYTES`];
//! - the verdict cache holds at most [`CACHE_MAX_BYTES`] of entries, evicting the least
//!   useful first.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::inspect::{Finding, Inspection, Step};
use crate::rootfs::Hop;

/// Longest argv item, path or description kept.
const STR_MAX: usize = 256;
/// Longest cause, fix or finding detail kept.
const TEXT_MAX: usize = 1024;
/// argv items kept, the last of a longer argv saying how many more there were.
const ARGV_MAX: usize = 32;
/// Chain steps kept: argv[0], five interpreter rewrites, a loader and an emulator.
const STEPS_MAX: usize = 8;
/// Symlink hops kept per step (a loop has 41; its first hops show it).
const HOPS_MAX: usize = 4;
/// Findings kept.
const FINDINGS_MAX: usize = 8;
/// Suspects (programs that may explain an exit) kept.
const SUSPECTS_MAX: usize = 4;

/// The most a [`capped`] inspection weighs by [`weight`].
pub const ENTRY_MAX_BYTES: u64 = 64 * 1024;
/// What the verdict cache holds at most.
pub const CACHE_MAX_BYTES: u64 = 4 * 1024 * 1024;

/// Verdict cache key: same image content + same argv + same PATH/cwd = same answer.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    /// Every field length-prefixed, so that no two different inputs hash alike by moving
    /// bytes from one field to the next.
    pub fn new(content: &str, argv: &[String], path_env: Option<&str>, cwd: &str) -> CacheKey {
        let mut h = Sha256::new();
        let mut field = |b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        field(content.as_bytes());
        field(&(argv.len() as u64).to_le_bytes());
        for a in argv {
            field(a.as_bytes());
        }
        match path_env {
            Some(p) => {
                field(b"\x01");
                field(p.as_bytes());
            }
            None => field(b"\x00"),
        }
        field(cwd.as_bytes());
        CacheKey(h.finalize().into())
    }
}

impl CacheKey {
    /// The same key for a process run as `user` (its ids and the capabilities that decide
    /// permissions): another user may get another verdict.
    pub fn with_user(self, user: Option<&crate::rootfs::Creds>) -> CacheKey {
        let Some(u) = user else { return self };
        let mut h = Sha256::new();
        h.update(self.0);
        h.update(b"user");
        h.update(u.uid.to_le_bytes());
        h.update(u.gid.to_le_bytes());
        h.update((u.groups.len() as u64).to_le_bytes());
        for g in &u.groups {
            h.update(g.to_le_bytes());
        }
        for c in [u.caps, u.caps_after_exec] {
            h.update([u8::from(c.dac_override), u8::from(c.dac_read_search)]);
        }
        CacheKey(h.finalize().into())
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut with `…`.
fn cut(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push('…');
}

fn cut_opt(s: &mut Option<String>, max: usize) {
    if let Some(s) = s {
        cut(s, max);
    }
}

fn fits(s: &str, max: usize) -> bool {
    s.len() <= max
}

/// Whether `i` is within every cap already (the common case: nothing to copy).
fn within_caps(i: &Inspection) -> bool {
    i.argv.len() <= ARGV_MAX
        && i.argv.iter().all(|a| fits(a, STR_MAX))
        && fits(&i.cause, TEXT_MAX)
        && fits(&i.fix, TEXT_MAX)
        && i.handler.as_deref().is_none_or(|h| fits(h, STR_MAX))
        && i.chain.len() <= STEPS_MAX
        && i.chain.iter().all(|s| {
            fits(&s.requested, STR_MAX)
                && s.resolved.as_deref().is_none_or(|r| fits(r, STR_MAX))
                && fits(&s.what, STR_MAX)
                && s.hops.len() <= HOPS_MAX
                && s.hops
                    .iter()
                    .all(|h| fits(&h.link, STR_MAX) && fits(&h.target, STR_MAX))
                && s.elf.as_ref().is_none_or(|e| {
                    e.interp.as_deref().is_none_or(|p| fits(p, STR_MAX))
                        && e.malformed.as_deref().is_none_or(|m| fits(m, STR_MAX))
                })
        })
        && i.findings.len() <= FINDINGS_MAX
        && i.findings.iter().all(|f| fits(&f.detail, TEXT_MAX))
        && i.suspects.len() <= SUSPECTS_MAX
        && i.suspects.iter().all(|s| {
            fits(&s.program, STR_MAX) && fits(&s.cause, TEXT_MAX) && fits(&s.fix, TEXT_MAX)
        })
}

fn cap_step(s: &mut Step) {
    cut(&mut s.requested, STR_MAX);
    cut_opt(&mut s.resolved, STR_MAX);
    cut(&mut s.what, STR_MAX);
    s.hops.truncate(HOPS_MAX);
    for Hop { link, target } in &mut s.hops {
        cut(link, STR_MAX);
        cut(target, STR_MAX);
    }
    if let Some(e) = &mut s.elf {
        cut_opt(&mut e.interp, STR_MAX);
        cut_opt(&mut e.malformed, STR_MAX);
    }
}

/// `i` with every string and list cut to the caps: what the agent keeps of it (in the
/// cache, a container's record, an image's verdict) and reports. The verdict, arches and
/// handler are untouched; what is cut ends in `…`.
pub fn capped(i: Arc<Inspection>) -> Arc<Inspection> {
    if within_caps(&i) {
        return i;
    }
    let mut c = (*i).clone();
    if c.argv.len() > ARGV_MAX {
        let more = c.argv.len() - (ARGV_MAX - 1);
        c.argv.truncate(ARGV_MAX - 1);
        c.argv.push(format!("… ({more} more)"));
    }
    for a in &mut c.argv {
        cut(a, STR_MAX);
    }
    cut(&mut c.cause, TEXT_MAX);
    cut(&mut c.fix, TEXT_MAX);
    cut_opt(&mut c.handler, STR_MAX);
    c.chain.truncate(STEPS_MAX);
    c.chain.iter_mut().for_each(cap_step);
    c.findings.truncate(FINDINGS_MAX);
    for Finding { detail, .. } in &mut c.findings {
        cut(detail, TEXT_MAX);
    }
    c.suspects.truncate(SUSPECTS_MAX);
    for s in &mut c.suspects {
        cut(&mut s.program, STR_MAX);
        cut(&mut s.cause, TEXT_MAX);
        cut(&mut s.fix, TEXT_MAX);
    }
    Arc::new(c)
}

/// Bytes `i` holds: its struct and every string it owns.
pub fn weight(i: &Inspection) -> u64 {
    use std::mem::size_of;
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    let steps: usize = i
        .chain
        .iter()
        .map(|s| {
            size_of::<Step>()
                + s.requested.len()
                + opt(&s.resolved)
                + s.what.len()
                + s.hops
                    .iter()
                    .map(|h| size_of::<Hop>() + h.link.len() + h.target.len())
                    .sum::<usize>()
                + s.elf
                    .as_ref()
                    .map_or(0, |e| opt(&e.interp) + opt(&e.malformed))
        })
        .sum();
    let bytes = size_of::<Inspection>()
        + i.argv
            .iter()
            .map(|a| size_of::<String>() + a.len())
            .sum::<usize>()
        + i.cause.len()
        + i.fix.len()
        + opt(&i.handler)
        + steps
        + i.findings
            .iter()
            .map(|f| size_of::<Finding>() + f.detail.len())
            .sum::<usize>()
        + i.suspects
            .iter()
            .map(|s| {
                size_of::<crate::inspect::Suspect>() + s.program.len() + s.cause.len() + s.fix.len()
            })
            .sum::<usize>();
    bytes as u64
}

#[derive(Clone)]
struct Entry {
    inspection: Arc<Inspection>,
    bytes: u64,
}

#[derive(Clone)]
struct ByBytes;

impl quick_cache::Weighter<CacheKey, Entry> for ByBytes {
    fn weight(&self, _key: &CacheKey, e: &Entry) -> u64 {
        e.bytes
    }
}

/// Verdicts by [`CacheKey`], bounded by the bytes their entries hold.
pub struct VerdictCache {
    inner: quick_cache::unsync::Cache<CacheKey, Entry, ByBytes>,
}

impl Default for VerdictCache {
    fn default() -> Self {
        VerdictCache::with_capacity(CACHE_MAX_BYTES)
    }
}

impl VerdictCache {
    pub fn with_capacity(bytes: u64) -> VerdictCache {
        // A typical entry is a kilobyte or two.
        let items = usize::try_from(bytes / 1024).unwrap_or(4096).max(16);
        VerdictCache {
            inner: quick_cache::unsync::Cache::with_weighter(items, bytes, ByBytes),
        }
    }

    pub fn get(&self, key: &CacheKey) -> Option<Arc<Inspection>> {
        self.inner.get(key).map(|e| e.inspection.clone())
    }

    /// Keeps `i` (capped) under `key`; returns what is kept, for the caller to hold too.
    pub fn insert(&mut self, key: CacheKey, i: Arc<Inspection>) -> Arc<Inspection> {
        let inspection = capped(i);
        let bytes = size_of_key() + weight(&inspection);
        self.inner.insert(
            key,
            Entry {
                inspection: inspection.clone(),
                bytes,
            },
        );
        inspection
    }

    pub fn clear(&mut self) {
        self.inner.clear();
    }

    /// Bytes held by the entries.
    pub fn bytes(&self) -> u64 {
        self.inner.weight()
    }

    pub fn len(&self) -> usize {
        self.inner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

fn size_of_key() -> u64 {
    std::mem::size_of::<CacheKey>() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::elf::ElfInfo;
    use crate::inspect::{Role, Verdict};
    use crate::platform::Arch;

    fn insp(argv: Vec<String>) -> Inspection {
        Inspection {
            argv,
            ..Inspection::sample(Verdict::ArchMismatch)
        }
    }

    /// Every string and list far past its cap.
    fn absurd() -> Inspection {
        let big = |n: usize| "x".repeat(n);
        let mib = 1 << 20;
        let step = Step {
            role: Role::Argv0,
            requested: big(mib),
            resolved: Some(big(mib)),
            hops: (0..100)
                .map(|_| Hop {
                    link: big(4096),
                    target: big(4096),
                })
                .collect(),
            what: big(mib),
            elf: Some(ElfInfo {
                arch: Arch::Arm64,
                bits: 64,
                endian: "little",
                machine: 183,
                e_type: 2,
                osabi: 0,
                e_flags: 0,
                interp: Some(big(mib)),
                libc: None,
                malformed: Some(big(mib)),
            }),
        };
        let mut i = insp((0..10_000).map(|_| big(100)).collect());
        i.cause = big(mib);
        i.fix = big(mib);
        i.handler = Some(big(mib));
        i.chain = vec![step; 20];
        i.findings = (0..100)
            .map(|_| Finding {
                code: "foreign_executables",
                detail: big(mib),
            })
            .collect();
        i
    }

    #[test]
    fn the_key_is_a_hash_of_every_field_whatever_their_length() {
        let argv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let k = CacheKey::new("sha256:a", &argv(&["/app", "x"]), None, "/");
        assert_eq!(
            k,
            CacheKey::new("sha256:a", &argv(&["/app", "x"]), None, "/")
        );
        // Bytes moved between fields, or an empty PATH against none: other keys.
        let others = [
            CacheKey::new("sha256:a", &argv(&["/appx"]), None, "/"),
            CacheKey::new("sha256:a", &argv(&["/app", "x"]), Some(""), "/"),
            CacheKey::new("sha256:a", &argv(&["/app", "x"]), None, "/tmp"),
            CacheKey::new("sha256:b", &argv(&["/app", "x"]), None, "/"),
            CacheKey::new("sha256:a/app", &argv(&["x"]), None, "/"),
            k.with_user(Some(&crate::rootfs::Creds::with_ids(
                1000,
                1000,
                Vec::new(),
            ))),
            k.with_user(Some(&crate::rootfs::Creds::with_ids(1000, 1000, vec![5]))),
            k.with_user(Some(&crate::rootfs::Creds::root())),
        ];
        for o in others {
            assert_ne!(k, o);
        }
        let huge = CacheKey::new("sha256:a", &["a".repeat(1 << 20)], None, "/");
        assert_eq!(std::mem::size_of_val(&huge), 32);
    }

    #[test]
    fn an_absurd_argv_costs_a_bounded_amount_in_the_cache() {
        let mut cache = VerdictCache::default();
        let one_mib_argv = insp(vec!["/app".into(), "a".repeat(1 << 20)]);
        assert!(weight(&one_mib_argv) > 1 << 20);
        let key = CacheKey::new("sha256:a", &one_mib_argv.argv, None, "/");
        let kept = cache.insert(key, Arc::new(one_mib_argv));
        assert!(
            cache.bytes() <= 1024,
            "{} bytes for one verdict",
            cache.bytes()
        );
        assert_eq!(kept.argv[0], "/app");
        assert!(kept.argv[1].len() <= STR_MAX && kept.argv[1].ends_with('…'));
        assert_eq!(
            kept.verdict,
            Verdict::ArchMismatch,
            "the verdict is untouched"
        );
        assert_eq!(kept.binary_arch, Some(Arch::Arm64));
        assert!(
            Arc::ptr_eq(&cache.get(&key).unwrap(), &kept),
            "the record and the cache share it"
        );

        // Every field absurd at once: still within one entry's cap.
        let kept = capped(Arc::new(absurd()));
        assert!(weight(&kept) <= ENTRY_MAX_BYTES, "{}", weight(&kept));
        assert_eq!(kept.argv.len(), ARGV_MAX);
        assert_eq!(
            kept.argv[ARGV_MAX - 1],
            format!("… ({} more)", 10_000 - (ARGV_MAX - 1))
        );
        assert!(within_caps(&kept), "capping is idempotent");
    }

    #[test]
    fn the_cache_holds_at_most_its_bytes() {
        let mut cache = VerdictCache::with_capacity(256 * 1024);
        let heaviest = capped(Arc::new(absurd()));
        for n in 0..200 {
            let key = CacheKey::new(&format!("sha256:{n}"), &heaviest.argv, None, "/");
            cache.insert(key, heaviest.clone());
            assert!(cache.bytes() <= 256 * 1024, "{} after {n}", cache.bytes());
        }
        assert!(cache.len() >= 4, "still caches: {}", cache.len());
    }

    #[test]
    fn a_small_inspection_is_kept_as_it_is() {
        let i = Arc::new(insp(vec!["/app".into()]));
        assert!(Arc::ptr_eq(&capped(i.clone()), &i));
        // Cuts land on character boundaries.
        let mut s = "é".repeat(200);
        cut(&mut s, STR_MAX);
        assert!(s.len() <= STR_MAX && s.ends_with('…'));
    }
}
