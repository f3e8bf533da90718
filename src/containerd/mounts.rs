//! Layer directories from snapshot mounts, without mounting anything.
//!
//! overlay: `upperdir` (if any) then `lowerdir`'s entries, already top first; bind: its
//! source. Anything else (remote or lazy snapshotters, block devices) is not a plain
//! directory stack and is reported as not inspectable rather than guessed.

use std::path::PathBuf;

use containerd_client::types::Mount;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MountError {
    #[error("no mounts returned for the snapshot")]
    Empty,
    #[error(
        "snapshot mount of type {0:?} is not a plain directory stack (remote or lazy snapshotter?)"
    )]
    Unsupported(String),
    #[error("overlay mount without lowerdir")]
    NoLowerdir,
}

impl MountError {
    pub fn kind(&self) -> &'static str {
        "snapshotter_unsupported"
    }
}

/// Layer directories, top first.
pub fn layers(mounts: &[Mount]) -> Result<Vec<PathBuf>, MountError> {
    let m = match mounts {
        [] => return Err(MountError::Empty),
        [m] => m,
        _ => return Err(MountError::Unsupported(format!("{} mounts", mounts.len()))),
    };
    match m.r#type.as_str() {
        "bind" | "rbind" => Ok(vec![PathBuf::from(&m.source)]),
        "overlay" => {
            let mut upper = None;
            let mut lower = None;
            for o in &m.options {
                if let Some(v) = o.strip_prefix("upperdir=") {
                    upper = Some(PathBuf::from(v));
                } else if let Some(v) = o.strip_prefix("lowerdir=") {
                    lower = Some(
                        v.split(':')
                            .filter(|s| !s.is_empty())
                            .map(PathBuf::from)
                            .collect::<Vec<_>>(),
                    );
                }
            }
            let mut out: Vec<PathBuf> = upper.into_iter().collect();
            match lower {
                Some(l) if !l.is_empty() => out.extend(l),
                _ if !out.is_empty() => {}
                _ => return Err(MountError::NoLowerdir),
            }
            Ok(out)
        }
        other => Err(MountError::Unsupported(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(t: &str, source: &str, opts: &[&str]) -> Mount {
        Mount {
            r#type: t.into(),
            source: source.into(),
            target: String::new(),
            options: opts.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn mounts_to_layers() {
        assert_eq!(
            layers(&[m("bind", "/s/1/fs", &["ro", "rbind"])]).unwrap(),
            vec![PathBuf::from("/s/1/fs")]
        );
        assert_eq!(
            layers(&[m(
                "overlay",
                "overlay",
                &["index=off", "lowerdir=/s/3/fs:/s/2/fs:/s/1/fs"]
            )])
            .unwrap(),
            vec![
                PathBuf::from("/s/3/fs"),
                PathBuf::from("/s/2/fs"),
                PathBuf::from("/s/1/fs")
            ]
        );
        assert_eq!(
            layers(&[m(
                "overlay",
                "overlay",
                &["workdir=/s/9/work", "upperdir=/s/9/fs", "lowerdir=/s/1/fs"]
            )])
            .unwrap(),
            vec![PathBuf::from("/s/9/fs"), PathBuf::from("/s/1/fs")]
        );
        assert_eq!(
            layers(&[m("fuse.stargz", "x", &[])]).unwrap_err().kind(),
            "snapshotter_unsupported"
        );
        assert_eq!(layers(&[]).unwrap_err(), MountError::Empty);
        assert_eq!(
            layers(&[m("overlay", "overlay", &["index=off"])]).unwrap_err(),
            MountError::NoLowerdir
        );
    }
}
