//! Can this process see the `trusted.*` extended attributes overlay layers carry?
//!
//! containerd's overlayfs snapshotter marks an opaque directory with
//! `trusted.overlay.opaque=y`. The kernel shows `trusted.*` attributes only to a process with
//! CAP_SYS_ADMIN in the initial user namespace; to anyone else `getxattr` answers ENODATA, the
//! same answer as for a directory that is not opaque. Without it a merge through an opaque
//! directory would silently show what the kernel hides, so the resolver is told, and reports
//! such merges as uncertain instead (see [`super::Unsure`]). `.wh..wh..opq` files and
//! `user.overlay.opaque` stay readable to everyone and are always honoured.

use std::sync::OnceLock;

use rustix::thread::CapabilitySet;

/// Whether `trusted.*` attributes are readable, and why (or why not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Visibility {
    pub readable: bool,
    pub reason: String,
}

impl Visibility {
    /// What is lost and what to grant, when something is; `None` when nothing is.
    pub fn warning(&self) -> Option<String> {
        (!self.readable).then(|| {
            format!(
                "Opaque directories of overlay layers (trusted.overlay.opaque) cannot be seen: {}; a file found in a lower layer below a directory an upper layer also has may be one the container does not see, and its verdict carries the finding overlay_opaque_unknown; grant CAP_SYS_ADMIN (securityContext.capabilities.add: [SYS_ADMIN]) to read them.",
                self.reason
            )
        })
    }
}

/// Decides from the effective capability set and whether this is the initial user
/// namespace (`None`: cannot tell, assumed).
pub fn decide(effective: Option<CapabilitySet>, init_userns: Option<bool>) -> Visibility {
    match (effective, init_userns) {
        (None, _) => Visibility {
            readable: false,
            reason: "this process's capabilities cannot be read".into(),
        },
        (Some(caps), _) if !caps.contains(CapabilitySet::SYS_ADMIN) => Visibility {
            readable: false,
            reason: "this process lacks CAP_SYS_ADMIN".into(),
        },
        (Some(_), Some(false)) => Visibility {
            readable: false,
            reason: "this process holds CAP_SYS_ADMIN only inside a user namespace".into(),
        },
        (Some(_), _) => Visibility {
            readable: true,
            reason: "this process holds CAP_SYS_ADMIN".into(),
        },
    }
}

/// The initial user namespace maps every id to itself (`0 0 4294967295`).
fn in_init_userns() -> Option<bool> {
    let map = std::fs::read_to_string("/proc/self/uid_map").ok()?;
    let fields: Vec<&str> = map.split_whitespace().collect();
    Some(fields == ["0", "0", "4294967295"])
}

/// This process's visibility, checked once.
pub fn visibility() -> &'static Visibility {
    static VIS: OnceLock<Visibility> = OnceLock::new();
    VIS.get_or_init(|| {
        let effective = rustix::thread::capabilities(None).ok().map(|s| s.effective);
        decide(effective, in_init_userns())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sys_admin_in_the_initial_user_namespace_sees_trusted_attributes() {
        let all = CapabilitySet::all();
        let without = all - CapabilitySet::SYS_ADMIN;
        let cases = [
            (Some(all), Some(true), true, "holds CAP_SYS_ADMIN"),
            (Some(all), None, true, "holds CAP_SYS_ADMIN"),
            (Some(CapabilitySet::SYS_ADMIN), Some(true), true, "holds"),
            (Some(without), Some(true), false, "lacks CAP_SYS_ADMIN"),
            (Some(CapabilitySet::empty()), None, false, "lacks"),
            (Some(all), Some(false), false, "user namespace"),
            (None, Some(true), false, "cannot be read"),
        ];
        for (caps, init, readable, why) in cases {
            let v = decide(caps, init);
            assert_eq!(v.readable, readable, "{caps:?} {init:?}");
            assert!(v.reason.contains(why), "{v:?}");
            match v.warning() {
                Some(w) => {
                    assert!(!readable);
                    assert!(w.contains("overlay_opaque_unknown") && w.contains("SYS_ADMIN"));
                }
                None => assert!(readable),
            }
        }
    }

    /// The tests run as root with every capability.
    #[test]
    fn this_process_sees_them() {
        assert!(visibility().readable, "{:?}", visibility());
    }
}
