//! OCI and Docker image documents: index → manifest for the node's platform → config, argv,
//! and the chain ID that names the image's top snapshot. Pure functions over bytes, shared by
//! the agent (blobs from containerd's content store) and `verify` (blobs from a layout, an
//! archive or a registry).

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::platform::{Arch, Node};

/// Largest JSON document accepted (manifests and configs are a few KiB).
pub const MAX_DOC_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{what} is not valid JSON: {source}")]
    Json {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("{what} does not parse as an OCI/Docker document: {reason}")]
    Doc { what: &'static str, reason: String },
    #[error("{0} is larger than {MAX_DOC_BYTES} bytes")]
    TooLarge(&'static str),
}

impl ImageError {
    pub fn kind(&self) -> &'static str {
        match self {
            ImageError::Json { .. } | ImageError::Doc { .. } => "image_malformed",
            ImageError::TooLarge(_) => "image_too_large",
        }
    }
}

/// A content descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Desc {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

/// One platform entry of an index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub desc: Desc,
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Entry {
    /// `linux/arm/v7`
    pub fn platform(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{v}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }
    pub fn arch(&self) -> Option<Arch> {
        Arch::from_oci(&self.architecture, self.variant.as_deref())
    }
}

/// A manifest or an index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Doc {
    Index(Vec<Entry>),
    Manifest { config: Desc, layers: Vec<Desc> },
}

fn desc(d: &oci_spec::image::Descriptor) -> Desc {
    Desc {
        media_type: d.media_type().to_string(),
        digest: d.digest().to_string(),
        size: d.size(),
    }
}

/// Parses a manifest or an index (OCI or Docker schema 2).
pub fn parse_doc(bytes: &[u8]) -> Result<Doc, ImageError> {
    if bytes.len() > MAX_DOC_BYTES {
        return Err(ImageError::TooLarge("manifest"));
    }
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|source| ImageError::Json {
            what: "manifest",
            source,
        })?;
    let doc_err = |reason: String| ImageError::Doc {
        what: "manifest",
        reason,
    };
    if v.get("manifests").is_some() {
        let idx = ImageIndex::from_reader(bytes).map_err(|e| doc_err(e.to_string()))?;
        let entries = idx
            .manifests()
            .iter()
            .map(|m| {
                let p = m.platform().as_ref();
                Entry {
                    desc: desc(m),
                    os: p.map(|p| p.os().to_string()).unwrap_or_default(),
                    architecture: p.map(|p| p.architecture().to_string()).unwrap_or_default(),
                    variant: p
                        .and_then(|p| p.variant().clone())
                        .filter(|v| !v.is_empty()),
                }
            })
            .collect();
        return Ok(Doc::Index(entries));
    }
    let m = ImageManifest::from_reader(bytes).map_err(|e| doc_err(e.to_string()))?;
    Ok(Doc::Manifest {
        config: desc(m.config()),
        layers: m.layers().iter().map(desc).collect(),
    })
}

/// The entry the node would pull, like containerd's default platform matcher: the node's own
/// arch (for arm, the highest variant the node runs), else — when the kernel has 32-bit
/// compat — the companion 32-bit arch. Attestation entries (`unknown/unknown`) never match.
pub fn pick<'a>(entries: &'a [Entry], node: &Node) -> Option<&'a Entry> {
    let linux = || {
        entries
            .iter()
            .filter(|e| e.os == "linux" || e.os.is_empty())
    };
    let exact = |want: Arch| {
        linux()
            .filter(|e| match (e.arch(), want) {
                (Some(Arch::Arm(ev)), Arch::Arm(nv)) => match (ev, nv) {
                    (Some(ev), Some(nv)) => ev <= nv,
                    _ => true,
                },
                (Some(Arch::Arm64), Arch::Arm64) => true,
                (Some(a), w) => a == w,
                (None, _) => false,
            })
            // For arm, the highest variant the node runs.
            .max_by_key(|e| e.variant.clone())
    };
    if let Some(e) = exact(node.arch) {
        return Some(e);
    }
    if node.compat32 {
        let companion = match node.arch {
            Arch::Amd64 => Some(Arch::I386),
            Arch::Arm64 => Some(Arch::Arm(Some(crate::platform::ArmVariant::V8))),
            _ => None,
        };
        if let Some(c) = companion {
            return exact(c);
        }
    }
    None
}

/// What the config says about the process and the platform.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Config {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub diff_ids: Vec<String>,
}

impl Config {
    /// argv = Entrypoint + Cmd, as runtimes build it.
    pub fn argv(&self) -> Vec<String> {
        self.entrypoint
            .iter()
            .chain(self.cmd.iter())
            .cloned()
            .collect()
    }
    pub fn path_env(&self) -> Option<String> {
        self.env
            .iter()
            .find_map(|e| e.strip_prefix("PATH=").map(str::to_string))
    }
    pub fn cwd(&self) -> String {
        if self.working_dir.is_empty() {
            "/".into()
        } else {
            self.working_dir.clone()
        }
    }
    pub fn arch(&self) -> Option<Arch> {
        Arch::from_oci(&self.architecture, self.variant.as_deref())
    }
    /// The image's top snapshot name in containerd (the chain ID of its layers).
    pub fn chain_id(&self) -> Option<String> {
        chain_id(&self.diff_ids)
    }
}

pub fn parse_config(bytes: &[u8]) -> Result<Config, ImageError> {
    if bytes.len() > MAX_DOC_BYTES {
        return Err(ImageError::TooLarge("config"));
    }
    let c = ImageConfiguration::from_reader(bytes).map_err(|e| ImageError::Doc {
        what: "config",
        reason: e.to_string(),
    })?;
    let pc = c.config().as_ref();
    Ok(Config {
        os: c.os().to_string(),
        architecture: c.architecture().to_string(),
        variant: c.variant().clone().filter(|v| !v.is_empty()),
        entrypoint: pc.and_then(|p| p.entrypoint().clone()).unwrap_or_default(),
        cmd: pc.and_then(|p| p.cmd().clone()).unwrap_or_default(),
        env: pc.and_then(|p| p.env().clone()).unwrap_or_default(),
        working_dir: pc.and_then(|p| p.working_dir().clone()).unwrap_or_default(),
        diff_ids: c.rootfs().diff_ids().clone(),
    })
}

/// chainID(L0) = diffID(L0); chainID(Ln) = sha256(chainID(Ln-1) + " " + diffID(Ln)).
pub fn chain_id(diff_ids: &[String]) -> Option<String> {
    let mut it = diff_ids.iter();
    let mut chain = it.next()?.clone();
    for d in it {
        let h = Sha256::digest(format!("{chain} {d}").as_bytes());
        chain = format!("sha256:{}", hex::encode(h));
    }
    Some(chain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::ArmVariant;

    const INDEX: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
      {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","size":1,"platform":{"os":"linux","architecture":"arm","variant":"v6"}},
      {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","size":1,"platform":{"os":"linux","architecture":"arm","variant":"v7"}},
      {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc","size":1,"platform":{"os":"linux","architecture":"arm64","variant":"v8"}},
      {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd","size":1,"platform":{"os":"unknown","architecture":"unknown"}}]}"#;

    #[test]
    fn platform_picking_like_containerd() {
        let Doc::Index(entries) = parse_doc(INDEX.as_bytes()).unwrap() else {
            panic!()
        };
        let pick_for = |a: Arch| pick(&entries, &Node::with_arch(a)).map(|e| e.platform());
        assert_eq!(pick_for(Arch::Arm64).as_deref(), Some("linux/arm64/v8"));
        assert_eq!(
            pick_for(Arch::Arm(Some(ArmVariant::V7))).as_deref(),
            Some("linux/arm/v7")
        );
        assert_eq!(
            pick_for(Arch::Arm(Some(ArmVariant::V6))).as_deref(),
            Some("linux/arm/v6")
        );
        assert_eq!(pick_for(Arch::Amd64), None, "no amd64 and no 386 entry");
        assert_eq!(pick_for(Arch::S390x), None);
    }

    #[test]
    fn docker_schema2_and_config() {
        let m = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
          "config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":7,"digest":"sha256:eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"},
          "layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":9,"digest":"sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"}]}"#;
        let Doc::Manifest { config, layers } = parse_doc(m.as_bytes()).unwrap() else {
            panic!()
        };
        assert!(config.digest.ends_with("eeee"));
        assert_eq!(layers.len(), 1);
        let c = r#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/app"],"Cmd":["--serve"],"Env":["PATH=/usr/bin:/bin"],"WorkingDir":"/srv"},
          "rootfs":{"type":"layers","diff_ids":["sha256:1111111111111111111111111111111111111111111111111111111111111111","sha256:2222222222222222222222222222222222222222222222222222222222222222"]}}"#;
        let c = parse_config(c.as_bytes()).unwrap();
        assert_eq!(c.argv(), vec!["/app", "--serve"]);
        assert_eq!(c.path_env().as_deref(), Some("/usr/bin:/bin"));
        assert_eq!(c.cwd(), "/srv");
        assert_eq!(c.arch(), Some(Arch::Amd64));
        // sha256("sha256:111… sha256:222…")
        let want = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(
                format!("{} {}", c.diff_ids[0], c.diff_ids[1]).as_bytes()
            ))
        );
        assert_eq!(c.chain_id(), Some(want));
        assert_eq!(chain_id(&c.diff_ids[..1]), Some(c.diff_ids[0].clone()));
        assert!(parse_doc(b"{not json").is_err());
        assert!(parse_config(b"{}").is_err());
    }
}
