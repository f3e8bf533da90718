//! Who execs: the container's user (`process.user`: uid, gid, additional gids) and the two
//! capabilities that override file permissions, judged the way `generic_permission()` in
//! fs/namei.c does.
//!
//! The owner's bits apply when the uid owns the file (even if the group or other bits would
//! allow more), else the group's when the gid or an additional gid owns it, else the
//! others'. CAP_DAC_OVERRIDE then lets any search through a directory and the exec of a
//! regular file that has at least one execute bit; CAP_DAC_READ_SEARCH lets any search.
//! A regular file without any execute bit is never executable, not even by root.

use serde::Serialize;

/// The capabilities that decide file permission checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Caps {
    pub dac_override: bool,
    pub dac_read_search: bool,
}

impl Caps {
    /// Both, as root has them in a container's default capability set.
    pub const ALL: Caps = Caps {
        dac_override: true,
        dac_read_search: true,
    };
    pub const NONE: Caps = Caps {
        dac_override: false,
        dac_read_search: false,
    };

    /// From capability names as an OCI spec lists them (`CAP_DAC_OVERRIDE`, ...).
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Caps {
        let mut c = Caps::NONE;
        for n in names {
            match n.trim_start_matches("CAP_").to_ascii_uppercase().as_str() {
                "DAC_OVERRIDE" => c.dac_override = true,
                "DAC_READ_SEARCH" => c.dac_read_search = true,
                _ => {}
            }
        }
        c
    }
}

/// The credentials an exec is checked with.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
    /// Additional (supplementary) group ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<u32>,
    /// Effective capabilities when the container's first program is exec'd (runc applies
    /// the spec's effective set after it changes user).
    pub caps: Caps,
    /// What the programs that process execs keep: everything of the bounding set for uid 0,
    /// only the ambient set for any other uid (capabilities(7), "Transformation of
    /// capabilities during execve()").
    pub caps_after_exec: Caps,
}

/// What a process wants of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Search a directory (MAY_EXEC on a directory).
    Search,
    /// Exec a regular file (MAY_EXEC on a file).
    Exec,
    /// Read a file (an interpreter reading its script).
    Read,
}

impl Creds {
    /// root with the capabilities a container's root has by default.
    pub fn root() -> Creds {
        Creds {
            uid: 0,
            gid: 0,
            groups: Vec::new(),
            caps: Caps::ALL,
            caps_after_exec: Caps::ALL,
        }
    }

    /// `uid[:gid]` as a user gives it on the command line: uid 0 keeps root's default
    /// capabilities, any other uid has none (as Docker and CRI-O start non-root users, and
    /// as any uid but 0 is left after an exec).
    pub fn with_ids(uid: u32, gid: u32, groups: Vec<u32>) -> Creds {
        let caps = if uid == 0 { Caps::ALL } else { Caps::NONE };
        Creds {
            uid,
            gid,
            groups,
            caps,
            caps_after_exec: caps,
        }
    }

    /// Parses `UID[:GID]` (numbers only: names need the image's /etc/passwd).
    pub fn parse(s: &str) -> Option<Creds> {
        let (u, g) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        let uid: u32 = u.trim().parse().ok()?;
        let gid: u32 = match g {
            Some(g) => g.trim().parse().ok()?,
            None => uid,
        };
        Some(Creds::with_ids(uid, gid, Vec::new()))
    }

    /// The same user after an exec: the capabilities it keeps.
    pub fn after_exec(&self) -> Creds {
        Creds {
            caps: self.caps_after_exec,
            ..self.clone()
        }
    }

    /// Whether this is root with the default overrides: every check but "some execute bit"
    /// passes, so there is nothing to say about owners.
    pub fn is_privileged(&self) -> bool {
        self.caps.dac_override
    }

    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }

    /// generic_permission(): may a process with these credentials do `want` to a file of
    /// `mode` (permission bits) owned by `uid:gid`?
    pub fn may(&self, want: Want, mode: u32, uid: u32, gid: u32) -> bool {
        let bit = match want {
            Want::Search | Want::Exec => 0o1,
            Want::Read => 0o4,
        };
        let class = if self.uid == uid {
            mode >> 6
        } else if self.in_group(gid) {
            mode >> 3
        } else {
            mode
        };
        if class & bit != 0 {
            // A regular file to exec still needs an execute bit somewhere (it has one here).
            return true;
        }
        match want {
            Want::Search => self.caps.dac_read_search || self.caps.dac_override,
            Want::Read => self.caps.dac_read_search || self.caps.dac_override,
            Want::Exec => self.caps.dac_override && mode & 0o111 != 0,
        }
    }

    /// `uid 1000 (gid 1000, groups 10, 20)`, for causes.
    pub fn describe(&self) -> String {
        let mut s = format!("uid {} (gid {}", self.uid, self.gid);
        if !self.groups.is_empty() {
            let g: Vec<String> = self.groups.iter().map(u32::to_string).collect();
            s.push_str(&format!(", groups {}", g.join(", ")));
        }
        s.push(')');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_classes_like_generic_permission() {
        let user = Creds::with_ids(1000, 1000, vec![50]);
        let root = Creds::root();
        let cases = [
            // (who, want, mode, owner, group, allowed)
            (&user, Want::Exec, 0o700, 0, 0, false),
            (&user, Want::Exec, 0o700, 1000, 0, true),
            (&user, Want::Exec, 0o070, 0, 50, true),
            (&user, Want::Exec, 0o070, 0, 51, false),
            (&user, Want::Exec, 0o001, 0, 0, true),
            // The owner's bits apply to the owner even when "other" would allow.
            (&user, Want::Exec, 0o601, 1000, 0, false),
            // The group's bits apply to a member even when "other" would allow.
            (&user, Want::Exec, 0o701, 0, 50, false),
            (&user, Want::Search, 0o700, 0, 0, false),
            (&user, Want::Search, 0o711, 0, 0, true),
            (&user, Want::Read, 0o711, 0, 0, false),
            (&user, Want::Read, 0o744, 0, 0, true),
            (&root, Want::Exec, 0o700, 1000, 1000, true),
            (&root, Want::Exec, 0o100, 1000, 1000, true),
            (&root, Want::Exec, 0o644, 0, 0, false),
            (&root, Want::Search, 0o000, 1000, 1000, true),
            (&root, Want::Read, 0o000, 1000, 1000, true),
        ];
        for (who, want, mode, o, g, allowed) in cases {
            assert_eq!(
                who.may(want, mode, o, g),
                allowed,
                "{} {want:?} {mode:o} {o}:{g}",
                who.describe()
            );
        }
        // uid 0 without capabilities is held to the bits like anyone.
        let bare_root = Creds {
            caps: Caps::NONE,
            ..Creds::root()
        };
        assert!(!bare_root.may(Want::Exec, 0o700, 1000, 1000));
        assert!(bare_root.may(Want::Exec, 0o700, 0, 0));
    }

    #[test]
    fn users_parse_and_lose_capabilities_on_exec() {
        assert_eq!(
            Creds::parse("1000").map(|c| (c.uid, c.gid)),
            Some((1000, 1000))
        );
        assert_eq!(
            Creds::parse("1000:5").map(|c| (c.uid, c.gid)),
            Some((1000, 5))
        );
        assert_eq!(Creds::parse("0").map(|c| c.caps), Some(Caps::ALL));
        assert_eq!(Creds::parse("app"), None);
        assert_eq!(Creds::parse("1:x"), None);
        let spec_like = Creds {
            caps: Caps::from_names(["CAP_CHOWN", "CAP_DAC_OVERRIDE"]),
            caps_after_exec: Caps::NONE,
            ..Creds::with_ids(1000, 1000, Vec::new())
        };
        assert!(spec_like.may(Want::Exec, 0o700, 0, 0));
        assert!(!spec_like.after_exec().may(Want::Exec, 0o700, 0, 0));
    }
}
