//! `archwatch verify`: proves that every platform of a (multi-arch) image runs its own
//! entrypoint — the binary inside each platform's layers is inspected, not the metadata.
//!
//! Targets: an OCI image layout directory, an OCI or `docker save` tar archive. For each
//! platform: the platform the index claims and the one the config claims (disagreement is
//! reported), argv from Entrypoint + Cmd, argv[0] found by reading layers top-down (whiteouts,
//! opaque directories and symlinks across layers honoured), then the same inspection and
//! verdict as `archwatch inspect` with that platform as the node.

pub mod layers;
pub mod registry;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::binfmt::Table;
use crate::fix::{self, FixCode};
use crate::image::{self, Doc, MAX_DOC_BYTES};
use crate::inspect::{self, Finding, Request, Verdict};
use crate::platform::{Arch, Compat32, Node};
use crate::rootfs::Stack;
use layers::{Opener, TarLayers};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{0} is neither an OCI image layout directory nor an OCI or docker-save tar archive")]
    NotAnImage(String),
    #[error("blob {0} is not in the image")]
    MissingBlob(String),
    #[error(transparent)]
    Image(#[from] image::ImageError),
    #[error("docker-save manifest.json: {0}")]
    DockerManifest(String),
    #[error("registry: {0}")]
    Registry(String),
}

impl VerifyError {
    pub fn kind(&self) -> &'static str {
        match self {
            VerifyError::Io { .. } => "io",
            VerifyError::NotAnImage(_) => "not_an_image",
            VerifyError::MissingBlob(_) => "missing_blob",
            VerifyError::Image(e) => e.kind(),
            VerifyError::DockerManifest(_) => "docker_manifest",
            VerifyError::Registry(_) => "registry",
        }
    }
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> VerifyError + '_ {
    move |source| VerifyError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Where blobs come from.
#[derive(Clone)]
enum Blobs {
    Dir(PathBuf),
    /// Archive path and, per member name, (offset, size).
    Archive(PathBuf, Arc<HashMap<String, (u64, u64)>>),
}

impl Blobs {
    fn member_for_digest(digest: &str) -> String {
        let (alg, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
        format!("blobs/{alg}/{hex}")
    }

    fn opener(&self, member: &str) -> Result<Opener, VerifyError> {
        match self {
            Blobs::Dir(d) => {
                let p = d.join(member);
                if !p.is_file() {
                    return Err(VerifyError::MissingBlob(member.into()));
                }
                Ok(Arc::new(move || {
                    Ok(Box::new(File::open(&p)?) as Box<dyn Read>)
                }))
            }
            Blobs::Archive(path, members) => {
                let &(off, size) = members
                    .get(member)
                    .ok_or_else(|| VerifyError::MissingBlob(member.into()))?;
                let path = path.clone();
                Ok(Arc::new(move || {
                    let mut f = File::open(&path)?;
                    f.seek(SeekFrom::Start(off))?;
                    Ok(Box::new(f.take(size)) as Box<dyn Read>)
                }))
            }
        }
    }

    fn read(&self, member: &str) -> Result<Vec<u8>, VerifyError> {
        let mut r = (self.opener(member)?)().map_err(|source| VerifyError::Io {
            path: member.into(),
            source,
        })?;
        let mut out = Vec::new();
        r.by_ref()
            .take(MAX_DOC_BYTES as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|source| VerifyError::Io {
                path: member.into(),
                source,
            })?;
        if out.len() > MAX_DOC_BYTES {
            return Err(image::ImageError::TooLarge("document").into());
        }
        Ok(out)
    }
}

/// One platform's result.
#[derive(Clone, Debug, Serialize)]
pub struct PlatformReport {
    /// `linux/arm64`, as the index (else the config) names it.
    pub platform: String,
    pub manifest_digest: String,
    /// What the config says, when it differs from the index.
    pub config_platform: String,
    pub argv: Vec<String>,
    pub verdict: Verdict,
    pub binary_arch: Option<String>,
    pub cause: String,
    pub fix: String,
    /// What to change, from the closed set of [`FixCode`] (`none` when it runs).
    pub fix_code: FixCode,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Finding>,
    /// Layers decompressed to decide (of `layers`).
    pub layers_read: usize,
    pub layers: usize,
    /// Bytes read from the layer blobs (compressed; a layer read twice counts twice).
    pub blob_bytes_read: u64,
}

/// The whole answer.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub target: String,
    /// The index (manifest list) digest to deploy by, when the image has one.
    pub deploy_digest: Option<String>,
    pub platforms: Vec<PlatformReport>,
    pub missing_platforms: Vec<String>,
    pub ok: bool,
    /// What to change for the whole image: the first failing platform's code, else
    /// `publish_multiarch` (a platform missing, or no index), else `deploy_by_digest`.
    pub fix_code: FixCode,
    pub fix: String,
}

/// How a verification judges.
#[derive(Clone, Debug)]
pub struct Options {
    /// Platforms that must be present, like `linux/amd64`, `linux/arm/v7`.
    pub required: Vec<String>,
    /// Whether a 32-bit binary passes in its 64-bit companion's image (386 in amd64, arm
    /// in arm64) with a `compat_32bit` finding. `Auto` and `No`: it must not (nodes without
    /// 32-bit support exist for both).
    pub compat32: Compat32,
    /// Also read the header of every executable in the PATH directories
    /// (`foreign_executables`): every layer that holds one of them is then read.
    pub census: bool,
}

impl Options {
    pub fn new(required: &[String]) -> Options {
        Options {
            required: required.to_vec(),
            compat32: Compat32::Auto,
            census: true,
        }
    }
}

/// Verifies a registry reference (`registry/repo:tag` or `...@sha256:...`).
pub fn verify_reference(
    reference: &str,
    plain_http: bool,
    required: &[String],
) -> Result<Report, VerifyError> {
    verify_reference_with(reference, plain_http, &Options::new(required))
}

/// [`verify_reference`] with options.
pub fn verify_reference_with(
    reference: &str,
    plain_http: bool,
    opts: &Options,
) -> Result<Report, VerifyError> {
    let dir = tempfile::tempdir().map_err(|source| VerifyError::Io {
        path: "temp dir".into(),
        source,
    })?;
    registry::fetch(reference, plain_http, dir.path())?;
    let mut r = verify_with(dir.path(), opts)?;
    r.target = reference.to_string();
    Ok(r)
}

/// Reads `target` and verifies every platform; `required` like `linux/amd64`, `linux/arm/v7`.
pub fn verify(target: &Path, required: &[String]) -> Result<Report, VerifyError> {
    verify_with(target, &Options::new(required))
}

/// [`verify`] with options.
pub fn verify_with(target: &Path, opts: &Options) -> Result<Report, VerifyError> {
    let required = &opts.required;
    let blobs = open(target)?;
    let mut platforms = Vec::new();
    let mut deploy_digest = None;
    match &blobs {
        Blobs::Archive(_, members)
            if !members.contains_key("index.json") && members.contains_key("manifest.json") =>
        {
            docker_save(&blobs, &mut platforms, opts)?;
        }
        _ => {
            let top = blobs.read("index.json")?;
            let Doc::Index(refs) = image::parse_doc(&top)? else {
                return Err(VerifyError::NotAnImage(target.display().to_string()));
            };
            for r in refs {
                let bytes = blobs.read(&Blobs::member_for_digest(&r.desc.digest))?;
                match image::parse_doc(&bytes)? {
                    Doc::Index(children) => {
                        deploy_digest.get_or_insert_with(|| r.desc.digest.clone());
                        for c in children {
                            if c.os == "unknown" {
                                continue; // attestations
                            }
                            let m = blobs.read(&Blobs::member_for_digest(&c.desc.digest))?;
                            platforms.push(one(&blobs, &c.desc.digest, &m, Some(&c), opts)?);
                        }
                    }
                    Doc::Manifest { .. } => platforms.push(one(
                        &blobs,
                        &r.desc.digest,
                        &bytes,
                        r.arch().is_some().then_some(&r),
                        opts,
                    )?),
                }
            }
        }
    }
    let missing_platforms: Vec<String> = required
        .iter()
        .filter(|want| !platforms.iter().any(|p| same_platform(&p.platform, want)))
        .cloned()
        .collect();
    let ok = !platforms.is_empty()
        && missing_platforms.is_empty()
        && platforms.iter().all(|p| p.verdict == Verdict::Ok);
    let codes: Vec<FixCode> = platforms.iter().map(|p| p.fix_code).collect();
    let whole = fix::for_image(&codes, &missing_platforms, deploy_digest.is_some());
    let fix = match whole.sentence {
        Some(s) => s,
        None => platforms
            .iter()
            .find(|p| p.fix_code == whole.code)
            .map(|p| format!("{}: {}", p.platform, p.fix))
            .unwrap_or_default(),
    };
    Ok(Report {
        target: target.display().to_string(),
        deploy_digest,
        platforms,
        missing_platforms,
        ok,
        fix_code: whole.code,
        fix,
    })
}

fn same_platform(a: &str, b: &str) -> bool {
    let parse = |s: &str| Arch::parse(s).map(|x| x.name());
    match (parse(a), parse(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn open(target: &Path) -> Result<Blobs, VerifyError> {
    if target.is_dir() {
        if !target.join("index.json").is_file() {
            return Err(VerifyError::NotAnImage(target.display().to_string()));
        }
        return Ok(Blobs::Dir(target.to_path_buf()));
    }
    let f = File::open(target).map_err(io_err(target))?;
    let mut a = tar::Archive::new(f);
    let mut members = HashMap::new();
    for e in a.entries().map_err(io_err(target))? {
        let e = e.map_err(io_err(target))?;
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = e
            .path()
            .map_err(io_err(target))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        members.insert(
            name,
            (
                e.raw_file_position(),
                e.header().size().map_err(io_err(target))?,
            ),
        );
    }
    if !members.contains_key("index.json") && !members.contains_key("manifest.json") {
        return Err(VerifyError::NotAnImage(target.display().to_string()));
    }
    Ok(Blobs::Archive(target.to_path_buf(), Arc::new(members)))
}

/// `docker save` (legacy layout): manifest.json lists config and layer tars per image.
fn docker_save(
    blobs: &Blobs,
    out: &mut Vec<PlatformReport>,
    opts: &Options,
) -> Result<(), VerifyError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Item {
        config: String,
        layers: Vec<String>,
    }
    let items: Vec<Item> = serde_json::from_slice(&blobs.read("manifest.json")?)
        .map_err(|e| VerifyError::DockerManifest(e.to_string()))?;
    for it in items {
        let config = image::parse_config(&blobs.read(&it.config)?)?;
        let openers = it
            .layers
            .iter()
            .rev()
            .map(|l| blobs.opener(l))
            .collect::<Result<Vec<_>, _>>()?;
        out.push(check(&it.config, None, config, openers, opts));
    }
    Ok(())
}

fn one(
    blobs: &Blobs,
    digest: &str,
    manifest: &[u8],
    entry: Option<&image::Entry>,
    opts: &Options,
) -> Result<PlatformReport, VerifyError> {
    let Doc::Manifest { config, layers } = image::parse_doc(manifest)? else {
        return Err(VerifyError::NotAnImage(format!("{digest} (nested index)")));
    };
    let cfg = image::parse_config(&blobs.read(&Blobs::member_for_digest(&config.digest))?)?;
    let openers = layers
        .iter()
        .rev()
        .map(|l| blobs.opener(&Blobs::member_for_digest(&l.digest)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(check(digest, entry, cfg, openers, opts))
}

fn check(
    digest: &str,
    entry: Option<&image::Entry>,
    cfg: image::Config,
    layers: Vec<Opener>,
    opts: &Options,
) -> PlatformReport {
    let config_platform = match &cfg.variant {
        Some(v) => format!("{}/{}/{v}", cfg.os, cfg.architecture),
        None => format!("{}/{}", cfg.os, cfg.architecture),
    };
    let platform = entry
        .map(|e| e.platform())
        .unwrap_or_else(|| config_platform.clone());
    let arch = entry.and_then(|e| e.arch()).or_else(|| cfg.arch());
    let argv = cfg.argv();
    let n_layers = layers.len();
    let mut report = PlatformReport {
        platform: platform.clone(),
        manifest_digest: digest.to_string(),
        config_platform: config_platform.clone(),
        argv: argv.clone(),
        verdict: Verdict::UnknownFormat,
        binary_arch: None,
        cause: String::new(),
        fix: String::new(),
        fix_code: FixCode::None,
        findings: Vec::new(),
        layers_read: 0,
        layers: n_layers,
        blob_bytes_read: 0,
    };
    let Some(arch) = arch else {
        report.cause = format!("platform {platform} names no architecture archwatch knows");
        report.fix =
            "Publish the image with a standard OCI platform (linux/amd64, linux/arm64, ...)."
                .into();
        report.fix_code = FixCode::PublishMultiarch;
        return report;
    };
    if !same_platform(&platform, &config_platform) {
        report.findings.push(Finding {
            code: "index_config_disagree",
            detail: format!(
                "the index lists this manifest as {platform} but its config says {config_platform}"
            ),
        });
    }
    let root = Stack::from_layers(TarLayers::new(layers));
    // Strict unless asked: each platform must carry its own architecture.
    let node = Node {
        arch,
        compat32: false,
    }
    .with_compat32(match opts.compat32 {
        Compat32::Yes => Compat32::Yes,
        Compat32::Auto | Compat32::No => Compat32::No,
    });
    let table = Table::empty();
    let (path_env, cwd) = (cfg.path_env(), cfg.cwd());
    let req = Request {
        argv: &argv,
        path_env: path_env.as_deref(),
        cwd: &cwd,
        claimed_arch: cfg.arch(),
        user: None,
    };
    match inspect::inspect(
        &root,
        &req,
        inspect::Context {
            node: &node,
            binfmt: &table,
        },
    ) {
        Ok(mut i) => {
            if opts.census {
                let named: Vec<String> =
                    i.chain.iter().filter_map(|s| s.resolved.clone()).collect();
                match inspect::census::census(&root, req.path_env, &named, &node) {
                    Ok(c) => i.add_census(&c),
                    Err(e) => report.findings.push(Finding {
                        code: "census_incomplete",
                        detail: format!("the executables of the image could not all be read: {e}"),
                    }),
                }
            }
            report.verdict = i.verdict;
            report.binary_arch = i.binary_arch.map(|a| a.to_string());
            report.cause = i.cause;
            report.fix = i.fix;
            report.fix_code = i.fix_code;
            report.findings.extend(i.findings);
        }
        Err(e) => {
            report.cause = format!("the image cannot be inspected: {e}");
            report.fix = "Check that the image's layers are complete and readable.".into();
            report.fix_code = FixCode::RepairImage;
        }
    }
    report.layers_read = root.backend().layers_indexed();
    report.blob_bytes_read = root.backend().blob_bytes_read();
    report
}

/// The human report.
pub fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "archwatch verify {}", r.target);
    for p in &r.platforms {
        let short = p.manifest_digest.get(..19).unwrap_or(&p.manifest_digest);
        let bin = p
            .binary_arch
            .as_deref()
            .map(|a| format!("binary linux/{a}"))
            .unwrap_or_else(|| "no binary".into());
        let _ = writeln!(
            s,
            "  {:<16} {short}…  {:<26} {bin}",
            p.platform,
            p.verdict.code()
        );
        if p.verdict != Verdict::Ok {
            let _ = writeln!(s, "      cause: {}", p.cause);
            let _ = writeln!(s, "      fix:   {} ({})", p.fix, p.fix_code);
        }
        for f in &p.findings {
            let _ = writeln!(s, "      {}: {}", f.code, f.detail);
        }
    }
    for m in &r.missing_platforms {
        let _ = writeln!(s, "  {m:<16} MISSING: required but not in the image");
    }
    match &r.deploy_digest {
        Some(d) => {
            let _ = writeln!(s, "deploy by digest: {d}");
        }
        None => {
            let _ = writeln!(s, "no manifest list: this is a single-platform image (publish an index to deploy multi-arch by digest)");
        }
    }
    let _ = writeln!(s, "fix ({}): {}", r.fix_code, r.fix);
    let _ = writeln!(
        s,
        "{}",
        if r.ok {
            "PASS: every platform runs its own entrypoint"
        } else {
            "FAIL"
        }
    );
    s
}
