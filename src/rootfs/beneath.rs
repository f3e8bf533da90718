//! Opening a path beneath a layer directory: never above it, never through a symlink.
//!
//! Two resolvers give the same answers, errno for errno:
//! - [`Resolver::Openat2`]: one `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//!   RESOLVE_NO_MAGICLINKS)` per path (per 2 KiB of path for very deep ones); the kernel itself
//!   refuses to leave the directory or follow a link.
//! - [`Resolver::Openat`], for kernels before 5.6 (RHEL 8, older Ubuntu LTS) and for runtimes
//!   whose seccomp profile refuses `openat2` (`EPERM` or `ENOSYS`): one `openat` per component,
//!   each relative to the directory the previous one opened, every one `O_NOFOLLOW`, the
//!   intermediate ones `O_PATH | O_DIRECTORY`. `..` is never looked up and no symlink is ever
//!   followed, so the walk cannot leave the directory either. Where `openat2` answers `ELOOP`
//!   for a symlink met mid-path, this walk finds `ENOTDIR` and tells the two apart with an
//!   `fstatat(AT_SYMLINK_NOFOLLOW)` of that one name, so both resolvers fail the same way.
//!
//! The last component is opened with the caller's flags in both (always `O_NOFOLLOW`): a
//! trailing symlink is opened as itself with `O_PATH`, refused with `ELOOP` otherwise.
//!
//! Which one a process uses is decided once ([`choice`]): `openat2` when a probe succeeds, the
//! walk otherwise; the environment variable [`RESOLVER_ENV`] (`openat`, `openat2`, `auto`)
//! overrides it.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use serde::Serialize;

/// Environment variable that forces a resolver: `openat`, `openat2` or `auto` (the default).
pub const RESOLVER_ENV: &str = "ARCHWATCH_RESOLVER";

/// How paths beneath a layer directory are opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Resolver {
    /// One `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`.
    Openat2,
    /// One `openat(O_NOFOLLOW)` per component.
    Openat,
}

/// Which resolver this process uses, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub resolver: Resolver,
    /// Why this one: the probe's answer, or the override.
    pub reason: String,
    /// Something an operator should fix (a bad override value, a forced `openat2` that the
    /// kernel refuses).
    pub problem: Option<String>,
}

impl Resolver {
    /// Both, for tests that must hold under each.
    pub const ALL: [Resolver; 2] = [Resolver::Openat2, Resolver::Openat];

    pub fn name(self) -> &'static str {
        match self {
            Resolver::Openat2 => "openat2",
            Resolver::Openat => "openat",
        }
    }

    /// Opens `rel` (relative, `..`-free) beneath `base` with `flags` (which hold `O_NOFOLLOW`).
    pub fn open(self, base: BorrowedFd<'_>, rel: &str, flags: OFlags) -> Result<OwnedFd, Errno> {
        match self {
            Resolver::Openat2 => openat2_deep(base, rel, flags),
            Resolver::Openat => openat_walk(base, rel, flags),
        }
    }
}

fn resolve_flags() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

/// Flags of an intermediate directory.
fn dir_flags() -> OFlags {
    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Components per `openat2` call stay under this many bytes (PATH_MAX is 4096).
const OPEN_CHUNK: usize = 2048;

/// `openat2` beneath `base` (no symlinks, nothing above `base`) for a relative path of any
/// length: a path longer than PATH_MAX (an image can nest directories 10,000 deep) is walked
/// in chunks, each opened beneath the directory the previous one reached, with the same
/// confinement.
fn openat2_deep(base: BorrowedFd<'_>, rel: &str, flags: OFlags) -> Result<OwnedFd, Errno> {
    if rel.len() < OPEN_CHUNK {
        return rustix::fs::openat2(base, rel, flags, Mode::empty(), resolve_flags());
    }
    let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
    let mut dir: Option<OwnedFd> = None;
    let mut i = 0;
    while i < comps.len() {
        let (mut j, mut len) = (i, 0);
        while j < comps.len() && (j == i || len + comps[j].len() + 1 < OPEN_CHUNK) {
            len += comps[j].len() + 1;
            j += 1;
        }
        let chunk = comps[i..j].join("/");
        let f = if j == comps.len() { flags } else { dir_flags() };
        let at = dir.as_ref().map_or(base, |d| d.as_fd());
        dir = Some(rustix::fs::openat2(
            at,
            chunk.as_str(),
            f,
            Mode::empty(),
            resolve_flags(),
        )?);
        i = j;
    }
    dir.ok_or(Errno::NOENT)
}

/// The same lookup as [`openat2_deep`], one `openat` per component.
fn openat_walk(base: BorrowedFd<'_>, rel: &str, flags: OFlags) -> Result<OwnedFd, Errno> {
    // What openat2 answers for these before looking anything up.
    if rel.is_empty() {
        return Err(Errno::NOENT);
    }
    if rel.starts_with('/') {
        return Err(Errno::XDEV);
    }
    let comps: Vec<&str> = rel
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let Some((last, inner)) = comps.split_last() else {
        return rustix::fs::openat(base, ".", flags, Mode::empty());
    };
    let mut dir: Option<OwnedFd> = None;
    for name in inner {
        let at = dir.as_ref().map_or(base, |d| d.as_fd());
        dir = Some(step(at, name)?);
    }
    let at = dir.as_ref().map_or(base, |d| d.as_fd());
    if rel.ends_with('/') || rel.ends_with("/.") {
        // `name/` and `name/.` must be a directory, reached without following a link.
        let d = step(at, last)?;
        return rustix::fs::openat(&d, ".", flags, Mode::empty());
    }
    if *last == ".." {
        return Err(Errno::XDEV);
    }
    rustix::fs::openat(at, *last, flags, Mode::empty())
}

/// One intermediate component: a directory, opened without following anything.
fn step(at: BorrowedFd<'_>, name: &str) -> Result<OwnedFd, Errno> {
    if name == ".." {
        // Never climbed: the resolver applies `..` in the merged view before asking.
        return Err(Errno::XDEV);
    }
    match rustix::fs::openat(at, name, dir_flags(), Mode::empty()) {
        Err(Errno::NOTDIR) => {
            // A symlink is not a directory to an O_NOFOLLOW open; openat2 calls it a link.
            match rustix::fs::statat(at, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                    Err(Errno::LOOP)
                }
                _ => Err(Errno::NOTDIR),
            }
        }
        other => other,
    }
}

/// Does `openat2` work here? `Err` with the kernel's (or the seccomp filter's) answer.
fn probe_openat2() -> Result<(), Errno> {
    let root = rustix::fs::open("/", dir_flags(), Mode::empty())?;
    rustix::fs::openat2(
        &root,
        ".",
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        resolve_flags(),
    )
    .map(drop)
}

/// Decides from the override (`setting`, the value of [`RESOLVER_ENV`]) and the probe.
pub fn decide(setting: Option<&str>, probe: impl FnOnce() -> Result<(), Errno>) -> Choice {
    let why_not = |e: Errno| match e {
        Errno::NOSYS => {
            "openat2 answers ENOSYS (a kernel before 5.6, or a seccomp profile that hides it)"
                .to_string()
        }
        Errno::PERM => "openat2 answers EPERM (a seccomp profile refuses it)".to_string(),
        e => format!("openat2 fails: {e}"),
    };
    let setting = setting.map(str::trim);
    let forced = match setting {
        Some("openat") => {
            return Choice {
                resolver: Resolver::Openat,
                reason: format!("{RESOLVER_ENV}=openat"),
                problem: None,
            }
        }
        Some("openat2") => true,
        _ => false,
    };
    let probed = probe();
    if forced {
        return Choice {
            resolver: Resolver::Openat2,
            reason: format!("{RESOLVER_ENV}=openat2"),
            problem: probed.err().map(|e| {
                format!(
                    "{RESOLVER_ENV}=openat2 but {}: every inspection will fail; unset it or set openat",
                    why_not(e)
                )
            }),
        };
    }
    let problem = match setting {
        None | Some("") | Some("auto") => None,
        Some(other) => Some(format!(
            "{RESOLVER_ENV}={other:?} is not openat, openat2 or auto: ignored"
        )),
    };
    match probed {
        Ok(()) => Choice {
            resolver: Resolver::Openat2,
            reason: "openat2 is available".into(),
            problem,
        },
        Err(e) => Choice {
            resolver: Resolver::Openat,
            reason: format!("{}: resolving one component at a time", why_not(e)),
            problem,
        },
    }
}

/// This process's resolver: decided on first use, from [`RESOLVER_ENV`] and a probe.
pub fn choice() -> &'static Choice {
    static CHOICE: OnceLock<Choice> = OnceLock::new();
    CHOICE.get_or_init(|| decide(std::env::var(RESOLVER_ENV).ok().as_deref(), probe_openat2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_is_chosen_when_openat2_is_missing_or_refused_or_forced() {
        let ok = || Ok(());
        let nosys = || Err(Errno::NOSYS);
        let perm = || Err(Errno::PERM);
        type Probe = fn() -> Result<(), Errno>;
        /// (setting, probe, resolver, reason has, problem has)
        type Case<'a> = (Option<&'a str>, Probe, Resolver, &'a str, Option<&'a str>);
        let cases: &[Case] = &[
            (None, ok, Resolver::Openat2, "available", None),
            (Some("auto"), ok, Resolver::Openat2, "available", None),
            (None, nosys, Resolver::Openat, "ENOSYS", None),
            (None, perm, Resolver::Openat, "EPERM", None),
            (Some(""), perm, Resolver::Openat, "EPERM", None),
            (
                Some("openat"),
                ok,
                Resolver::Openat,
                "ARCHWATCH_RESOLVER=openat",
                None,
            ),
            (
                Some(" openat "),
                ok,
                Resolver::Openat,
                "ARCHWATCH_RESOLVER=openat",
                None,
            ),
            (
                Some("openat2"),
                ok,
                Resolver::Openat2,
                "ARCHWATCH_RESOLVER=openat2",
                None,
            ),
            (
                Some("openat2"),
                perm,
                Resolver::Openat2,
                "ARCHWATCH_RESOLVER=openat2",
                Some("every inspection will fail"),
            ),
            (
                Some("fast"),
                nosys,
                Resolver::Openat,
                "ENOSYS",
                Some("\"fast\""),
            ),
            (
                Some("fast"),
                ok,
                Resolver::Openat2,
                "available",
                Some("ignored"),
            ),
        ];
        for (setting, probe, resolver, reason, problem) in cases {
            let c = decide(*setting, probe);
            assert_eq!(c.resolver, *resolver, "{setting:?}: {c:?}");
            assert!(c.reason.contains(reason), "{setting:?}: {c:?}");
            match problem {
                None => assert_eq!(c.problem, None, "{setting:?}"),
                Some(p) => assert!(
                    c.problem.as_deref().is_some_and(|s| s.contains(p)),
                    "{setting:?}: {c:?}"
                ),
            }
        }
        // Forcing the walk does not even probe.
        let c = decide(Some("openat"), || panic!("probed"));
        assert_eq!(c.resolver, Resolver::Openat);
    }

    /// This kernel (6.x) has openat2 and the tests run without a seccomp filter: the probe
    /// succeeds, so the walk is only ever the fallback or forced.
    #[test]
    fn the_probe_finds_openat2_on_this_kernel() {
        assert_eq!(probe_openat2(), Ok(()));
    }
}
