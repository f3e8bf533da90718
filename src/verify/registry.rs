//! Registry targets: the image (its index, every platform's manifest, config and layers) is
//! fetched with the distribution API v2 client into a private OCI layout, content-addressed,
//! then verified like any layout. Credentials come from the docker config (`$DOCKER_CONFIG` or
//! `~/.docker/config.json`); `--plain-http` for registries without TLS.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::VerifyError;
use crate::image::{self, Doc};

const ACCEPT: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// The error with its chain of causes: an HTTP client's own message ("error sending request")
/// hides the one that says what went wrong (a certificate from an unknown issuer, no CA
/// certificates at all, a refused connection).
fn err(what: &str, e: impl std::error::Error) -> VerifyError {
    let mut msg = format!("{what}: {e}");
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !msg.ends_with(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        cause = c.source();
    }
    VerifyError::Registry(msg)
}

/// Basic credentials for `registry` from the docker config, if any.
fn docker_auth(registry: &str) -> RegistryAuth {
    let path = std::env::var_os("DOCKER_CONFIG")
        .map(|d| PathBuf::from(d).join("config.json"))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json")));
    let Some(text) = path.and_then(|p| std::fs::read_to_string(p).ok()) else {
        return RegistryAuth::Anonymous;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return RegistryAuth::Anonymous;
    };
    let auths = &v["auths"];
    let entry = auths
        .get(registry)
        .or_else(|| auths.get(format!("https://{registry}")));
    let decoded = entry
        .and_then(|e| e["auth"].as_str())
        .and_then(|a| base64::engine::general_purpose::STANDARD.decode(a).ok())
        .and_then(|b| String::from_utf8(b).ok());
    match decoded.as_deref().and_then(|s| s.split_once(':')) {
        Some((u, p)) => RegistryAuth::Basic(u.to_string(), p.to_string()),
        None => RegistryAuth::Anonymous,
    }
}

fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
    dir.join("blobs").join(alg).join(hex)
}

/// Fetches `reference` into an OCI layout at `dir`; returns the digest it resolved to.
pub fn fetch(reference: &str, plain_http: bool, dir: &Path) -> Result<String, VerifyError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| err("runtime", e))?;
    rt.block_on(fetch_async(reference, plain_http, dir))
}

async fn fetch_async(reference: &str, plain_http: bool, dir: &Path) -> Result<String, VerifyError> {
    let r: Reference = reference
        .parse()
        .map_err(|e| err(&format!("reference {reference}"), e))?;
    crate::tls::install_crypto_provider();
    // Client::new falls back to a default client when this fails, and that one panics (no CA
    // certificates on the machine, as in a bare scratch image): report it instead.
    let client = Client::try_from(ClientConfig {
        protocol: if plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        ..Default::default()
    })
    .map_err(|e| err("HTTP client", e))?;
    let auth = docker_auth(r.resolve_registry());
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |source| VerifyError::Io {
            path: p.clone(),
            source,
        }
    };
    std::fs::create_dir_all(dir.join("blobs/sha256")).map_err(io(dir))?;
    let (top, top_digest) = client
        .pull_manifest_raw(&r, &auth, ACCEPT)
        .await
        .map_err(|e| err(&format!("manifest of {reference}"), e))?;
    let top_type = serde_json::from_slice::<serde_json::Value>(&top)
        .ok()
        .and_then(|v| v["mediaType"].as_str().map(str::to_string))
        .unwrap_or_default();
    std::fs::write(blob_path(dir, &top_digest), &top).map_err(io(dir))?;
    let mut manifests = Vec::new();
    match image::parse_doc(&top)? {
        Doc::Index(children) => {
            for c in children.iter().filter(|c| c.os != "unknown") {
                let child = r.clone_with_digest(c.desc.digest.clone());
                let (m, d) = client
                    .pull_manifest_raw(&child, &auth, ACCEPT)
                    .await
                    .map_err(|e| err(&format!("manifest {}", c.desc.digest), e))?;
                std::fs::write(blob_path(dir, &d), &m).map_err(io(dir))?;
                manifests.push(m.to_vec());
            }
        }
        Doc::Manifest { .. } => manifests.push(top.to_vec()),
    }
    for m in manifests {
        let Doc::Manifest { config, layers } = image::parse_doc(&m)? else {
            continue;
        };
        for d in std::iter::once(&config).chain(layers.iter()) {
            let path = blob_path(dir, &d.digest);
            if path.exists() {
                continue;
            }
            let mut out = tokio::fs::File::create(&path).await.map_err(io(&path))?;
            client
                .pull_blob(&r, d.digest.as_str(), &mut out)
                .await
                .map_err(|e| err(&format!("blob {}", d.digest), e))?;
        }
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": top_type, "digest": top_digest, "size": top.len(), "annotations": {"org.opencontainers.image.ref.name": reference}}],
    });
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).map_err(|e| err("index.json", e))?,
    )
    .map_err(io(dir))?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(io(dir))?;
    Ok(top_digest)
}
