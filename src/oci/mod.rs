//! A small OCI image writer: layers described in memory become gzip tar blobs, configs,
//! manifests and indexes (oci-spec types), written as an OCI image layout directory or the
//! same as a tar archive (what `ctr images import` and `skopeo` read). Used by `demo` and by
//! the tests to reproduce incidents with real images.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use flate2::write::GzEncoder;
use oci_spec::image::{
    Arch as OciArch, ConfigBuilder, Descriptor, DescriptorBuilder, Digest,
    ImageConfigurationBuilder, ImageIndexBuilder, ImageManifestBuilder, MediaType, Os,
    PlatformBuilder, RootFsBuilder,
};
use sha2::{Digest as _, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("writing {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("building OCI document: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
    #[error("encoding JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("layer entry {0}: {1}")]
    Entry(String, std::io::Error),
}

impl OciError {
    pub fn kind(&self) -> &'static str {
        match self {
            OciError::Io { .. } => "io",
            OciError::Spec(_) | OciError::Json(_) => "oci_encode",
            OciError::Entry(..) => "oci_layer",
        }
    }
}

/// One entry of a layer.
#[derive(Clone, Debug)]
pub enum Item {
    File {
        path: String,
        data: Vec<u8>,
        mode: u32,
    },
    Dir {
        path: String,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
    Fifo {
        path: String,
        mode: u32,
    },
    CharDevice {
        path: String,
        major: u32,
        minor: u32,
        mode: u32,
    },
    /// `.wh.NAME` beside NAME: hides NAME of lower layers.
    Whiteout {
        path: String,
    },
    /// `DIR/.wh..wh..opq`: hides what lower layers have in DIR.
    Opaque {
        dir: String,
    },
}

impl Item {
    pub fn file(path: &str, data: impl Into<Vec<u8>>, mode: u32) -> Item {
        Item::File {
            path: path.into(),
            data: data.into(),
            mode,
        }
    }
    pub fn symlink(path: &str, target: &str) -> Item {
        Item::Symlink {
            path: path.into(),
            target: target.into(),
        }
    }
    pub fn dir(path: &str) -> Item {
        Item::Dir {
            path: path.into(),
            mode: 0o755,
        }
    }
}

/// A layer: its entries in order.
#[derive(Clone, Debug, Default)]
pub struct Layer(pub Vec<Item>);

fn rel(p: &str) -> String {
    p.trim_start_matches('/').to_string()
}

impl Layer {
    /// The uncompressed tar (deterministic: mtime 0, uid/gid 0).
    pub fn tar(&self) -> Result<Vec<u8>, OciError> {
        let mut b = tar::Builder::new(Vec::new());
        let mut dirs_done: std::collections::HashSet<String> = Default::default();
        for item in &self.0 {
            let path = match item {
                Item::File { path, .. }
                | Item::Dir { path, .. }
                | Item::Symlink { path, .. }
                | Item::Fifo { path, .. }
                | Item::CharDevice { path, .. } => rel(path),
                Item::Whiteout { path } => {
                    let p = rel(path);
                    match p.rsplit_once('/') {
                        Some((d, n)) => format!("{d}/.wh.{n}"),
                        None => format!(".wh.{p}"),
                    }
                }
                Item::Opaque { dir } => format!("{}/.wh..wh..opq", rel(dir).trim_end_matches('/')),
            };
            // Parent directories first, as image builders write them.
            let mut acc = String::new();
            let parts: Vec<&str> = path.split('/').collect();
            for part in &parts[..parts.len().saturating_sub(1)] {
                acc = if acc.is_empty() {
                    (*part).to_string()
                } else {
                    format!("{acc}/{part}")
                };
                if dirs_done.insert(acc.clone()) {
                    let mut h = header(tar::EntryType::Directory, 0o755, 0);
                    b.append_data(&mut h, format!("{acc}/"), std::io::empty())
                        .map_err(|e| OciError::Entry(acc.clone(), e))?;
                }
            }
            let err = |e| OciError::Entry(path.clone(), e);
            match item {
                Item::File { data, mode, .. } => {
                    let mut h = header(tar::EntryType::Regular, *mode, data.len() as u64);
                    b.append_data(&mut h, &path, data.as_slice()).map_err(err)?;
                }
                Item::Dir { mode, .. } => {
                    if dirs_done.insert(path.clone()) {
                        let mut h = header(tar::EntryType::Directory, *mode, 0);
                        b.append_data(&mut h, format!("{path}/"), std::io::empty())
                            .map_err(err)?;
                    }
                }
                Item::Symlink { target, .. } => {
                    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                    b.append_link(&mut h, &path, target).map_err(err)?;
                }
                Item::Fifo { mode, .. } => {
                    let mut h = header(tar::EntryType::Fifo, *mode, 0);
                    b.append_data(&mut h, &path, std::io::empty())
                        .map_err(err)?;
                }
                Item::CharDevice {
                    major, minor, mode, ..
                } => {
                    let mut h = header(tar::EntryType::Char, *mode, 0);
                    h.set_device_major(*major).map_err(err)?;
                    h.set_device_minor(*minor).map_err(err)?;
                    h.set_cksum();
                    b.append_data(&mut h, &path, std::io::empty())
                        .map_err(err)?;
                }
                Item::Whiteout { .. } | Item::Opaque { .. } => {
                    let mut h = header(tar::EntryType::Regular, 0o644, 0);
                    b.append_data(&mut h, &path, std::io::empty())
                        .map_err(err)?;
                }
            }
        }
        b.into_inner().map_err(|e| OciError::Entry("tar".into(), e))
    }
}

fn header(t: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(t);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn digest(s: &str) -> Result<Digest, OciError> {
    Ok(s.parse::<Digest>()?)
}

/// What an image runs and claims.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    /// OCI architecture the config claims (`amd64`, `arm64`, `arm`).
    pub architecture: String,
    pub variant: Option<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    /// Bottom layer first, as in a manifest.
    pub layers: Vec<Layer>,
}

impl ImageSpec {
    pub fn new(architecture: &str, entrypoint: &[&str], layers: Vec<Layer>) -> ImageSpec {
        ImageSpec {
            architecture: architecture.into(),
            variant: None,
            entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
            cmd: Vec::new(),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            working_dir: None,
            layers,
        }
    }
}

/// Blobs plus the refs of an OCI layout.
#[derive(Default)]
pub struct Layout {
    blobs: BTreeMap<String, Vec<u8>>,
    refs: Vec<Descriptor>,
}

impl Layout {
    pub fn new() -> Layout {
        Layout::default()
    }

    fn blob(&mut self, media: MediaType, bytes: Vec<u8>) -> Result<Descriptor, OciError> {
        let d = sha256(&bytes);
        let desc = DescriptorBuilder::default()
            .media_type(media)
            .digest(digest(&d)?)
            .size(bytes.len() as u64)
            .build()?;
        self.blobs.insert(d, bytes);
        Ok(desc)
    }

    /// Adds one platform's image; returns its manifest descriptor (with platform set).
    pub fn add_image(&mut self, spec: &ImageSpec) -> Result<Descriptor, OciError> {
        let mut layer_descs = Vec::new();
        let mut diff_ids = Vec::new();
        for l in &spec.layers {
            let raw = l.tar()?;
            diff_ids.push(sha256(&raw));
            let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&raw)
                .map_err(|e| OciError::Entry("gzip".into(), e))?;
            let compressed = gz.finish().map_err(|e| OciError::Entry("gzip".into(), e))?;
            layer_descs.push(self.blob(MediaType::ImageLayerGzip, compressed)?);
        }
        let mut cb = ConfigBuilder::default()
            .entrypoint(spec.entrypoint.clone())
            .env(spec.env.clone());
        if !spec.cmd.is_empty() {
            cb = cb.cmd(spec.cmd.clone());
        }
        if let Some(w) = &spec.working_dir {
            cb = cb.working_dir(w.clone());
        }
        let arch = OciArch::from(spec.architecture.as_str());
        let mut icb = ImageConfigurationBuilder::default()
            .architecture(arch.clone())
            .os(Os::Linux)
            .config(cb.build()?)
            .rootfs(
                RootFsBuilder::default()
                    .typ("layers")
                    .diff_ids(diff_ids)
                    .build()?,
            );
        if let Some(v) = &spec.variant {
            icb = icb.variant(v.clone());
        }
        let config = serde_json::to_vec(&icb.build()?)?;
        let config_desc = self.blob(MediaType::ImageConfig, config)?;
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(config_desc)
            .layers(layer_descs)
            .build()?;
        let mut desc = self.blob(MediaType::ImageManifest, serde_json::to_vec(&manifest)?)?;
        let mut pb = PlatformBuilder::default().architecture(arch).os(Os::Linux);
        if let Some(v) = &spec.variant {
            pb = pb.variant(v.clone());
        }
        desc.set_platform(Some(pb.build()?));
        Ok(desc)
    }

    /// Adds an index of manifests (a multi-arch image); returns its descriptor.
    pub fn add_index(&mut self, manifests: Vec<Descriptor>) -> Result<Descriptor, OciError> {
        let idx = ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageIndex)
            .manifests(manifests)
            .build()?;
        self.blob(MediaType::ImageIndex, serde_json::to_vec(&idx)?)
    }

    /// Names a manifest or index in `index.json` (`name` like `docker.io/library/app:tag`).
    pub fn tag(&mut self, name: &str, desc: &Descriptor) {
        let mut d = desc.clone();
        d.set_platform(None);
        let tag = name
            .rsplit_once(':')
            .map(|(_, t)| t)
            .filter(|t| !t.contains('/'))
            .unwrap_or("latest");
        d.set_annotations(Some(HashMap::from([
            ("io.containerd.image.name".to_string(), name.to_string()),
            (
                "org.opencontainers.image.ref.name".to_string(),
                tag.to_string(),
            ),
        ])));
        self.refs.push(d);
    }

    fn index_json(&self) -> Result<Vec<u8>, OciError> {
        let idx = ImageIndexBuilder::default()
            .schema_version(2u32)
            .manifests(self.refs.clone())
            .build()?;
        Ok(serde_json::to_vec(&idx)?)
    }

    /// Files of the layout: (path, bytes).
    fn files(&self) -> Result<Vec<(String, Vec<u8>)>, OciError> {
        let mut out = vec![
            (
                "oci-layout".to_string(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
            ("index.json".to_string(), self.index_json()?),
        ];
        for (d, b) in &self.blobs {
            out.push((
                format!("blobs/sha256/{}", d.trim_start_matches("sha256:")),
                b.clone(),
            ));
        }
        Ok(out)
    }

    /// Writes an OCI image layout directory.
    pub fn write_dir(&self, dir: &Path) -> Result<(), OciError> {
        for (p, b) in self.files()? {
            let path = dir.join(&p);
            let io = |source| OciError::Io {
                path: path.display().to_string(),
                source,
            };
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io)?;
            }
            std::fs::write(&path, b).map_err(io)?;
        }
        Ok(())
    }

    /// Writes the layout as one tar archive.
    pub fn write_archive(&self, path: &Path) -> Result<(), OciError> {
        let io = |source| OciError::Io {
            path: path.display().to_string(),
            source,
        };
        let f = std::fs::File::create(path).map_err(io)?;
        let mut b = tar::Builder::new(f);
        for (p, bytes) in self.files()? {
            let mut h = header(tar::EntryType::Regular, 0o644, bytes.len() as u64);
            b.append_data(&mut h, &p, bytes.as_slice()).map_err(io)?;
        }
        b.into_inner().map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_blobs_match_their_digests_and_index_names_the_tag() {
        let mut l = Layout::new();
        let img = ImageSpec::new(
            "arm64",
            &["/app"],
            vec![
                Layer(vec![
                    Item::file("/app", b"\x7fELF".to_vec(), 0o755),
                    Item::symlink("/bin/sh", "/app"),
                ]),
                Layer(vec![
                    Item::Whiteout {
                        path: "/bin/sh".into(),
                    },
                    Item::Opaque { dir: "/etc".into() },
                ]),
            ],
        );
        let m = l.add_image(&img).unwrap();
        assert_eq!(
            m.platform().as_ref().unwrap().architecture().to_string(),
            "arm64"
        );
        let idx = l.add_index(vec![m]).unwrap();
        l.tag("example.test/app:v1", &idx);
        let dir = tempfile::tempdir().unwrap();
        l.write_dir(dir.path()).unwrap();
        for e in std::fs::read_dir(dir.path().join("blobs/sha256")).unwrap() {
            let e = e.unwrap();
            let bytes = std::fs::read(e.path()).unwrap();
            assert_eq!(
                hex::encode(Sha256::digest(&bytes)),
                e.file_name().to_string_lossy()
            );
        }
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(
            index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
            "v1"
        );
        // The whiteout and opaque markers are in the second layer's tar.
        let tar = img.layers[1].tar().unwrap();
        let names: Vec<String> = tar::Archive::new(tar.as_slice())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert!(names.contains(&"bin/.wh.sh".to_string()), "{names:?}");
        assert!(names.contains(&"etc/.wh..wh..opq".to_string()), "{names:?}");
        let arch = dir.path().join("img.tar");
        l.write_archive(&arch).unwrap();
        assert!(std::fs::metadata(&arch).unwrap().len() > 1024);
    }
}
