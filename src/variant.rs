//! Which variant of a multi-platform image a container runs, and whether the node's copy of
//! a tag is older than an index the node also holds. Pure: `containerd` reads the documents
//! (index, manifests, configs, the container snapshot's parent), this module decides.
//!
//! What can be seen on the node, without a registry:
//! - **A forced platform.** A container's snapshot is made on top of the image's top layer,
//!   named by the chain ID of its layers, so the snapshot's parent says which manifest of
//!   the index the files come from. When the index holds the platform the node pulls by
//!   default and the container runs another, the platform was forced (`--platform` on a
//!   pull or a run, a runtime default): `platform_forced`. Manifests whose layers are the
//!   node variant's too (one build published twice) are not forced.
//! - **A stale tag.** A tag the node resolved long ago to a single-arch image, while the
//!   registry's tag is now a multi-arch index, cannot be seen offline: the agent never asks
//!   a registry. It is seen when the node also holds that index (pulled by digest or under
//!   another tag of the same repository) and the index lists the very manifest the tag
//!   points to, beside a variant for the node: `stale_image`.

use crate::image::{self, Entry};
use crate::inspect::Finding;
use crate::platform::Node;

/// Finding codes this module makes.
pub const PLATFORM_FORCED: &str = "platform_forced";
pub const STALE_IMAGE: &str = "stale_image";

/// At most this many manifests of one index are read (attestations aside).
pub const MANIFESTS_MAX: usize = 32;
/// At most this many indexes of the same repository are read for a stale tag.
pub const INDEXES_MAX: usize = 16;

/// One entry of an index, with the chain ID of its layers when its manifest and config are
/// on the node (`None`: that platform was never pulled here).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub entry: Entry,
    pub chain_id: Option<String>,
}

/// An index the node holds under `name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    pub name: String,
    pub digest: String,
    pub entries: Vec<Entry>,
}

/// What the node's content says about the variant a container (or an image) runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Variant {
    /// The files come from the `running` manifest of the index `index_digest` (named
    /// `image`), which also holds `node_platform`: the variant this node pulls by default.
    Forced {
        image: String,
        index_digest: String,
        running: String,
        running_manifest: String,
        node_platform: String,
        node_manifest: String,
    },
    /// `image` resolves on the node to the single-arch manifest `manifest` (`platform`),
    /// which is one variant of the index `index_digest` the node also holds as
    /// `index_name`; that index holds `node_platform`.
    Stale {
        image: String,
        manifest: String,
        platform: String,
        index_digest: String,
        index_name: String,
        node_platform: String,
    },
}

impl Variant {
    /// The finding reported beside the verdict.
    pub fn finding(&self) -> Finding {
        match self {
            Variant::Forced {
                image,
                index_digest,
                running,
                running_manifest,
                node_platform,
                node_manifest,
            } => Finding {
                code: PLATFORM_FORCED,
                detail: format!(
                    "the container runs the {running} variant (manifest {}) of {image}, whose index {} also holds {node_platform} (manifest {}), the variant this node pulls by default: the platform was forced",
                    short(running_manifest),
                    short(index_digest),
                    short(node_manifest)
                ),
            },
            Variant::Stale {
                image,
                manifest,
                platform,
                index_digest,
                index_name,
                node_platform,
            } => Finding {
                code: STALE_IMAGE,
                detail: format!(
                    "{image} resolves on this node to the single-arch {platform} manifest {}, which is one variant of the multi-arch index {} this node also holds as {index_name}; that index holds {node_platform}: the node's copy of {image} is older than the index",
                    short(manifest),
                    short(index_digest)
                ),
            },
        }
    }
}

/// The variant a container runs, from the index `entries` of `image` (with their chain IDs)
/// and the parent of the container's snapshot; `Some` only when it is not the one the node
/// pulls by default.
pub fn forced(
    image: &str,
    index_digest: &str,
    manifests: &[Manifest],
    parent: &str,
    node: &Node,
) -> Option<Variant> {
    let entries: Vec<Entry> = manifests.iter().map(|m| m.entry.clone()).collect();
    let own = image::pick(&entries, node)?;
    let running: Vec<&Manifest> = manifests
        .iter()
        .filter(|m| m.chain_id.as_deref() == Some(parent))
        .collect();
    // The node's own variant's layers, under whatever entry: nothing was forced.
    if running
        .iter()
        .any(|m| m.entry.desc.digest == own.desc.digest)
    {
        return None;
    }
    let r = running.first()?;
    Some(Variant::Forced {
        image: image.to_string(),
        index_digest: index_digest.to_string(),
        running: r.entry.platform(),
        running_manifest: r.entry.desc.digest.clone(),
        node_platform: own.platform(),
        node_manifest: own.desc.digest.clone(),
    })
}

/// Whether `image`, which resolves on the node to the single manifest `manifest`, is a stale
/// copy: an index of `indexes` lists that manifest beside another variant for the node.
pub fn stale(image: &str, manifest: &str, indexes: &[Index], node: &Node) -> Option<Variant> {
    indexes.iter().find_map(|idx| {
        let listed = idx.entries.iter().find(|e| e.desc.digest == manifest)?;
        let own = image::pick(&idx.entries, node)?;
        if own.desc.digest == manifest {
            // The tag's image is the node's own variant of the index: not stale here.
            return None;
        }
        Some(Variant::Stale {
            image: image.to_string(),
            manifest: manifest.to_string(),
            platform: listed.platform(),
            index_digest: idx.digest.clone(),
            index_name: idx.name.clone(),
            node_platform: own.platform(),
        })
    })
}

/// `registry/repo` of `registry/repo:tag` or `registry/repo@sha256:…` (a port is not a
/// tag).
pub fn repository(name: &str) -> &str {
    let name = name.split_once('@').map_or(name, |(n, _)| n);
    match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => &name[..i],
        _ => name,
    }
}

/// Whether a descriptor's media type is an index (OCI) or a manifest list (Docker).
pub fn is_index(media_type: &str) -> bool {
    matches!(
        media_type,
        "application/vnd.oci.image.index.v1+json"
            | "application/vnd.docker.distribution.manifest.list.v2+json"
    )
}

/// `sha256:0123456789ab` — enough to tell digests apart in a sentence.
pub fn short(digest: &str) -> &str {
    let end = digest
        .find(':')
        .map_or(digest.len(), |i| i + 13)
        .min(digest.len());
    digest.get(..end).unwrap_or(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Desc;
    use crate::platform::Arch;

    fn entry(platform: &str, digest: &str) -> Entry {
        let mut parts = platform.split('/');
        Entry {
            desc: Desc {
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                digest: digest.into(),
                size: 1,
            },
            os: parts.next().unwrap_or_default().into(),
            architecture: parts.next().unwrap_or_default().into(),
            variant: parts.next().map(str::to_string),
        }
    }

    fn m(platform: &str, digest: &str, chain: Option<&str>) -> Manifest {
        Manifest {
            entry: entry(platform, digest),
            chain_id: chain.map(str::to_string),
        }
    }

    #[test]
    fn the_snapshot_parent_names_the_variant() {
        let amd64 = Node::with_arch(Arch::Amd64);
        let arm64 = Node::with_arch(Arch::Arm64);
        let both = [
            m("linux/amd64", "sha256:a", Some("chain-a")),
            m("linux/arm64", "sha256:b", Some("chain-b")),
            m("unknown/unknown", "sha256:att", None),
        ];
        // (manifests, parent, node, forced variant expected)
        let cases: Vec<(&[Manifest], &str, &Node, Option<&str>)> = vec![
            (&both, "chain-b", &amd64, Some("linux/arm64")),
            (&both, "chain-a", &amd64, None),
            (&both, "chain-a", &arm64, Some("linux/amd64")),
            (&both, "chain-b", &arm64, None),
            // Layers of no manifest of the index: nothing can be said.
            (&both, "chain-x", &amd64, None),
        ];
        for (ms, parent, node, want) in cases {
            let got = forced("r/app:v1", "sha256:idx", ms, parent, node);
            match (want, &got) {
                (None, None) => {}
                (
                    Some(p),
                    Some(Variant::Forced {
                        running,
                        node_platform,
                        ..
                    }),
                ) => {
                    assert_eq!(running, p);
                    assert_eq!(*node_platform, format!("linux/{}", node.arch));
                }
                _ => panic!("{parent} on {}: {got:?}", node.arch),
            }
        }
        // The node's platform was never pulled here (a forced pull): still forced.
        let forced_pull = [
            m("linux/amd64", "sha256:a", None),
            m("linux/arm64", "sha256:b", Some("chain-b")),
        ];
        assert!(matches!(
            forced("r/app:v1", "sha256:idx", &forced_pull, "chain-b", &amd64),
            Some(Variant::Forced { ref node_manifest, .. }) if node_manifest == "sha256:a"
        ));
        // One build published under both platforms: the node's own layers, not forced.
        let same = [
            m("linux/amd64", "sha256:a", Some("chain-same")),
            m("linux/arm64", "sha256:b", Some("chain-same")),
        ];
        assert_eq!(
            forced("r/app:v1", "sha256:idx", &same, "chain-same", &amd64),
            None
        );
        // An index without the node's platform: `index_lacks_node_platform`, not forced.
        let arm_only = [m("linux/arm64", "sha256:b", Some("chain-b"))];
        assert_eq!(
            forced("r/app:v1", "sha256:idx", &arm_only, "chain-b", &amd64),
            None
        );
        // arm/v6 running on an arm/v7 node, whose index has v7: forced.
        let arm = [
            m("linux/arm/v6", "sha256:6", Some("c6")),
            m("linux/arm/v7", "sha256:7", Some("c7")),
        ];
        let v7 = Node::with_arch(Arch::parse("arm/v7").unwrap());
        assert!(forced("r/app:v1", "sha256:idx", &arm, "c6", &v7).is_some());
        assert!(forced("r/app:v1", "sha256:idx", &arm, "c7", &v7).is_none());
    }

    #[test]
    fn a_stale_tag_is_seen_only_through_an_index_that_lists_it() {
        let amd64 = Node::with_arch(Arch::Amd64);
        let index = |name: &str, entries: Vec<Entry>| Index {
            name: name.into(),
            digest: "sha256:idx".into(),
            entries,
        };
        let lists_it = index(
            "r/app@sha256:idx",
            vec![
                entry("linux/amd64", "sha256:a"),
                entry("linux/arm64", "sha256:m"),
            ],
        );
        let other_build = index(
            "r/app:v2",
            vec![
                entry("linux/amd64", "sha256:a2"),
                entry("linux/arm64", "sha256:b2"),
            ],
        );
        let no_node_platform = index("r/app:arm", vec![entry("linux/arm64", "sha256:m")]);
        let got = stale(
            "r/app:v1",
            "sha256:m",
            &[other_build.clone(), lists_it],
            &amd64,
        );
        match got {
            Some(Variant::Stale {
                platform,
                index_name,
                node_platform,
                ..
            }) => {
                assert_eq!(platform, "linux/arm64");
                assert_eq!(index_name, "r/app@sha256:idx");
                assert_eq!(node_platform, "linux/amd64");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(stale("r/app:v1", "sha256:m", &[other_build], &amd64), None);
        assert_eq!(
            stale("r/app:v1", "sha256:m", &[no_node_platform], &amd64),
            None
        );
        // The tag is the node's own variant of the index: nothing stale on this node.
        let own = index(
            "r/app@sha256:idx",
            vec![
                entry("linux/amd64", "sha256:m"),
                entry("linux/arm64", "sha256:b"),
            ],
        );
        assert_eq!(stale("r/app:v1", "sha256:m", &[own], &amd64), None);
    }

    #[test]
    fn repositories_digests_and_media_types() {
        for (name, repo) in [
            ("registry.example/shop/app:1.2", "registry.example/shop/app"),
            ("127.0.0.1:5000/shop/app:v1", "127.0.0.1:5000/shop/app"),
            ("127.0.0.1:5000/shop/app", "127.0.0.1:5000/shop/app"),
            (
                "127.0.0.1:5000/shop/app@sha256:ab",
                "127.0.0.1:5000/shop/app",
            ),
            (
                "docker.io/library/busybox:1@sha256:ab",
                "docker.io/library/busybox",
            ),
            ("sha256:0123", "sha256"),
        ] {
            assert_eq!(repository(name), repo, "{name}");
        }
        assert!(is_index("application/vnd.oci.image.index.v1+json"));
        assert!(is_index(
            "application/vnd.docker.distribution.manifest.list.v2+json"
        ));
        assert!(!is_index("application/vnd.oci.image.manifest.v1+json"));
        assert_eq!(
            short("sha256:0123456789abcdef0123456789abcdef"),
            "sha256:0123456789ab"
        );
        assert_eq!(short("sha256:01"), "sha256:01");
        assert_eq!(short("plain"), "plain");
    }
}
