//! `archwatch verify` over layouts and archives built here with several platforms, checked
//! against skopeo's own reading of the same layout.

use std::path::Path;
use std::process::Command;

use archwatch::oci::{ImageSpec, Item, Layer, Layout};

use crate::support;

fn bb(deb: &str) -> Item {
    Item::file("/bin/busybox", support::busybox(deb), 0o755)
}

fn spec(oci_arch: &str, variant: Option<&str>, layers: Vec<Layer>) -> ImageSpec {
    let mut s = ImageSpec::new(oci_arch, &["/bin/busybox", "true"], layers);
    s.variant = variant.map(str::to_string);
    s
}

/// Writes a multi-platform layout tagged `v1`; returns its directory.
fn layout(dir: &Path, platforms: Vec<ImageSpec>) -> std::path::PathBuf {
    let mut l = Layout::new();
    let ms = platforms.iter().map(|p| l.add_image(p).unwrap()).collect();
    let idx = l.add_index(ms).unwrap();
    l.tag("archwatch.test/app:v1", &idx);
    l.write_dir(dir).unwrap();
    let mut arch = dir.as_os_str().to_owned();
    arch.push(".tar");
    l.write_archive(Path::new(&arch)).unwrap();
    dir.to_path_buf()
}

fn verify(target: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let out = support::archwatch()
        .arg("verify")
        .arg(target)
        .arg("--json")
        .args(extra)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap(), v)
}

fn platform<'a>(v: &'a serde_json::Value, p: &str) -> &'a serde_json::Value {
    v["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["platform"] == p)
        .unwrap_or_else(|| panic!("no {p} in {v:#}"))
}

#[test]
fn every_platform_must_carry_its_own_binary() {
    let work = tempfile::tempdir().unwrap();
    // Good: each platform its own busybox.
    let good = layout(
        &work.path().join("good"),
        vec![
            spec("amd64", None, vec![Layer(vec![bb("amd64")])]),
            spec("arm64", None, vec![Layer(vec![bb("arm64")])]),
            spec("arm", Some("v7"), vec![Layer(vec![bb("armhf")])]),
        ],
    );
    let (code, v) = verify(&good, &["--require-platforms", "linux/amd64,linux/arm64"]);
    assert_eq!(code, 0, "{v:#}");
    for p in ["linux/amd64", "linux/arm64", "linux/arm/v7"] {
        assert_eq!(platform(&v, p)["verdict"], "ok", "{p}: {v:#}");
    }
    assert_eq!(platform(&v, "linux/arm/v7")["binary_arch"], "arm/v7");
    // skopeo reads the same index: same platforms, same manifest digests.
    let raw = Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci:{}:v1", good.display()))
        .output()
        .unwrap();
    assert!(
        raw.status.success(),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    let idx: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    for m in idx["manifests"].as_array().unwrap() {
        let p = &m["platform"];
        let name = match p["variant"].as_str() {
            Some(var) => format!(
                "{}/{}/{var}",
                p["os"].as_str().unwrap(),
                p["architecture"].as_str().unwrap()
            ),
            None => format!(
                "{}/{}",
                p["os"].as_str().unwrap(),
                p["architecture"].as_str().unwrap()
            ),
        };
        assert_eq!(
            platform(&v, &name)["manifest_digest"],
            m["digest"],
            "{name}"
        );
    }
    let digest = v["deploy_digest"].as_str().unwrap().to_string();
    let index_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(good.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index_json["manifests"][0]["digest"],
        digest.as_str(),
        "deploy by the manifest list's digest"
    );
    // The archive form gives the same answer.
    let (code, va) = verify(&work.path().join("good.tar"), &[]);
    assert_eq!(code, 0);
    assert_eq!(va["platforms"].as_array().unwrap().len(), 3);

    // The multi-stage build copied the amd64 artifact into the arm64 image.
    let wrong = layout(
        &work.path().join("wrong"),
        vec![
            spec("amd64", None, vec![Layer(vec![bb("amd64")])]),
            spec("arm64", None, vec![Layer(vec![bb("amd64")])]),
        ],
    );
    let (code, v) = verify(&wrong, &[]);
    assert_eq!(code, 1);
    assert_eq!(platform(&v, "linux/amd64")["verdict"], "ok");
    let arm = platform(&v, "linux/arm64");
    assert_eq!(arm["verdict"], "arch_mismatch", "{arm:#}");
    assert_eq!(arm["binary_arch"], "amd64");
    assert!(
        arm["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["code"] == "config_arch_mismatch"),
        "{arm:#}"
    );
    // The build stage copied the wrong artifact: fix that stage, do not move the pod.
    assert_eq!(arm["fix_code"], "fix_build_stage", "{arm:#}");
    assert_eq!(v["fix_code"], "fix_build_stage");
    assert_eq!(platform(&v, "linux/amd64")["fix_code"], "none");
    let human = support::archwatch()
        .arg("verify")
        .arg(&wrong)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("linux/arm64")
            && text.contains("arch_mismatch")
            && text.contains("fix:")
            && text.contains("FAIL"),
        "{text}"
    );

    // A required platform is missing.
    let (code, v) = verify(&good, &["--require-platforms", "linux/amd64,linux/s390x"]);
    assert_eq!(code, 1);
    assert_eq!(v["missing_platforms"], serde_json::json!(["linux/s390x"]));

    // arm/v7 vs arm64: a 32-bit ARM binary does not pass for arm64, nor arm64 for arm/v7.
    let mixed = layout(
        &work.path().join("mixed"),
        vec![
            spec("arm64", None, vec![Layer(vec![bb("armhf")])]),
            spec("arm", Some("v7"), vec![Layer(vec![bb("arm64")])]),
        ],
    );
    let (code, v) = verify(&mixed, &[]);
    assert_eq!(code, 1);
    assert_eq!(platform(&v, "linux/arm64")["verdict"], "arch_mismatch");
    assert_eq!(platform(&v, "linux/arm64")["binary_arch"], "arm/v7");
    assert_eq!(platform(&v, "linux/arm/v7")["verdict"], "arch_mismatch");
}

#[test]
fn layers_are_read_top_down_with_symlinks_and_whiteouts() {
    let work = tempfile::tempdir().unwrap();
    // The entrypoint is a symlink in the top layer to a binary in the bottom one.
    let mut linked = ImageSpec::new(
        "amd64",
        &["/entry", "true"],
        vec![
            Layer(vec![bb("amd64")]),
            Layer(vec![Item::file("/etc/motd", b"hi".to_vec(), 0o644)]),
            Layer(vec![Item::symlink("/entry", "/bin/busybox")]),
        ],
    );
    linked.cmd = Vec::new();
    // A later layer deletes the entrypoint.
    let whiteout = ImageSpec::new(
        "amd64",
        &["/app", "true"],
        vec![
            Layer(vec![Item::file("/app", support::busybox("amd64"), 0o755)]),
            Layer(vec![Item::Whiteout {
                path: "/app".into(),
            }]),
        ],
    );
    // An opaque directory hides the lower layer's binary.
    let opaque = ImageSpec::new(
        "amd64",
        &["/opt/bin/app"],
        vec![
            Layer(vec![Item::file(
                "/opt/bin/app",
                support::busybox("amd64"),
                0o755,
            )]),
            Layer(vec![Item::Opaque {
                dir: "/opt/bin".into(),
            }]),
        ],
    );
    for (name, s, want) in [
        ("linked", linked, "ok"),
        ("whiteout", whiteout, "not_found"),
        ("opaque", opaque, "not_found"),
    ] {
        let mut l = Layout::new();
        let m = l.add_image(&s).unwrap();
        l.tag("archwatch.test/x:v1", &m);
        let dir = work.path().join(name);
        l.write_dir(&dir).unwrap();
        let (code, v) = verify(&dir, &[]);
        assert_eq!(v["platforms"][0]["verdict"], want, "{name}: {v:#}");
        assert_eq!(code, i32::from(want != "ok"), "{name}");
        assert!(
            v["deploy_digest"].is_null(),
            "a single manifest has no index digest"
        );
    }
    // A docker-save archive of the linked image, made by skopeo.
    let src = work.path().join("linked");
    let tar = work.path().join("docker.tar");
    let out = Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:v1", src.display()))
        .arg(format!(
            "docker-archive:{}:archwatch.test/x:v1",
            tar.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, v) = verify(&tar, &[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["platforms"][0]["platform"], "linux/amd64");
}

#[test]
fn unreadable_input_is_exit_two_with_a_clear_error() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("junk.tar"), b"not a tar").unwrap();
    for target in [
        work.path().join("junk.tar"),
        work.path().to_path_buf(),
        work.path().join("absent"),
    ] {
        let out = support::archwatch()
            .arg("verify")
            .arg(&target)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", target.display());
        assert!(!out.stderr.is_empty());
    }
}

#[test]
fn a_real_registry_over_plain_http() {
    let work = tempfile::tempdir().unwrap();
    let reg = archwatch::lab::Registry::start()
        .expect("docker-registry (scripts/install-deps installs it)");
    layout(
        &work.path().join("good"),
        vec![
            spec("amd64", None, vec![Layer(vec![bb("amd64")])]),
            spec("arm64", None, vec![Layer(vec![bb("arm64")])]),
        ],
    );
    layout(
        &work.path().join("wrong"),
        vec![
            spec("amd64", None, vec![Layer(vec![bb("amd64")])]),
            spec("arm64", None, vec![Layer(vec![bb("amd64")])]),
        ],
    );
    let good = reg
        .push(&work.path().join("good.tar"), "v1", "shop/good")
        .unwrap();
    let wrong = reg
        .push(&work.path().join("wrong.tar"), "v1", "shop/wrong")
        .unwrap();
    let (code, v) = verify(
        Path::new(&good),
        &[
            "--plain-http",
            "--require-platforms",
            "linux/amd64,linux/arm64",
        ],
    );
    assert_eq!(code, 0, "{v:#}");
    let digest = v["deploy_digest"].as_str().unwrap().to_string();
    // By digest, as one should deploy.
    let by_digest = format!("{}@{digest}", good.rsplit_once(':').unwrap().0);
    let (code, v2) = verify(Path::new(&by_digest), &["--plain-http"]);
    assert_eq!(code, 0, "{v2:#}");
    assert_eq!(v2["deploy_digest"], digest.as_str());
    let (code, v) = verify(Path::new(&wrong), &["--plain-http"]);
    assert_eq!(code, 1);
    assert_eq!(platform(&v, "linux/arm64")["verdict"], "arch_mismatch");
    // An unreachable registry is an input error (exit 2), not a verdict.
    let out = support::archwatch()
        .args(["verify", "--plain-http", "127.0.0.1:1/shop/none:v1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// A single-manifest layout (and archive) of `spec`, tagged `v1`.
fn single(dir: &Path, spec: &ImageSpec) -> std::path::PathBuf {
    let mut l = Layout::new();
    let m = l.add_image(spec).unwrap();
    l.tag("archwatch.test/app:v1", &m);
    l.write_dir(dir).unwrap();
    let mut arch = dir.as_os_str().to_owned();
    arch.push(".tar");
    l.write_archive(Path::new(&arch)).unwrap();
    dir.to_path_buf()
}

/// The six seed scenes as `verify` sees them, asserted by code: each platform's fix code and
/// the whole image's. A forced platform (scene 6) is done on a node, not in the image: verify
/// passes the image and says to deploy it by its index digest.
#[test]
fn the_fix_code_of_each_seed_scene() {
    let work = tempfile::tempdir().unwrap();
    let both = ["--require-platforms", "linux/amd64,linux/arm64"];
    let host_true = std::fs::read("/usr/bin/true").unwrap();
    let app = |arch: &str, deb: &str| {
        ImageSpec::new(
            arch,
            &["/app", "true"],
            vec![Layer(vec![Item::file(
                "/app",
                support::busybox(deb),
                0o755,
            )])],
        )
    };

    // 1. An arm64 binary built on an Apple Silicon laptop, pushed as the only platform.
    let laptop = single(&work.path().join("laptop"), &app("arm64", "arm64"));
    let (code, v) = verify(&laptop, &both);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(platform(&v, "linux/arm64")["fix_code"], "none");
    assert_eq!(v["missing_platforms"], serde_json::json!(["linux/amd64"]));
    assert_eq!(v["fix_code"], "publish_multiarch", "{v:#}");

    // 2. The config says amd64 over an arm64 binary.
    let lies = single(&work.path().join("lies"), &app("amd64", "arm64"));
    let (code, v) = verify(&lies, &[]);
    assert_eq!(code, 1);
    let p = platform(&v, "linux/amd64");
    assert_eq!(p["verdict"], "arch_mismatch");
    assert_eq!(p["fix_code"], "fix_build_stage", "{p:#}");
    assert_eq!(v["fix_code"], "fix_build_stage");

    // 3. A CRLF entrypoint script.
    let crlf = single(
        &work.path().join("crlf"),
        &ImageSpec::new(
            "amd64",
            &["/entrypoint.sh"],
            vec![Layer(vec![
                bb("amd64"),
                Item::symlink("/bin/sh", "/bin/busybox"),
                Item::file(
                    "/entrypoint.sh",
                    b"#!/bin/sh\r\nexec /bin/busybox true\r\n".to_vec(),
                    0o755,
                ),
            ])],
        ),
    );
    let (code, v) = verify(&crlf, &[]);
    assert_eq!(code, 1);
    assert_eq!(platform(&v, "linux/amd64")["verdict"], "script_crlf");
    assert_eq!(platform(&v, "linux/amd64")["fix_code"], "convert_to_lf");
    assert_eq!(v["fix_code"], "convert_to_lf");

    // 4. A glibc binary in a musl image.
    let musl = single(
        &work.path().join("musl"),
        &ImageSpec::new(
            "amd64",
            &["/app"],
            vec![Layer(vec![
                Item::file("/app", host_true, 0o755),
                Item::file(
                    "/lib/x86_64-linux-musl/libc.so",
                    support::musl_loader(),
                    0o755,
                ),
                Item::symlink("/lib/ld-musl-x86_64.so.1", "/lib/x86_64-linux-musl/libc.so"),
            ])],
        ),
    );
    let (code, v) = verify(&musl, &[]);
    assert_eq!(code, 1);
    assert_eq!(platform(&v, "linux/amd64")["verdict"], "missing_loader");
    assert_eq!(
        platform(&v, "linux/amd64")["fix_code"],
        "use_glibc_base_or_static"
    );
    assert_eq!(v["fix_code"], "use_glibc_base_or_static");

    // 5. A tag that points to a single-arch image, in a registry.
    let reg = archwatch::lab::Registry::start()
        .expect("docker-registry (scripts/install-deps installs it)");
    let mut tar = laptop.as_os_str().to_owned();
    tar.push(".tar");
    let reference = reg.push(Path::new(&tar), "v1", "shop/api").unwrap();
    let mut args = vec!["--plain-http"];
    args.extend(both);
    let (code, v) = verify(Path::new(&reference), &args);
    assert_eq!(code, 1, "{v:#}");
    assert!(v["deploy_digest"].is_null(), "{v:#}");
    assert_eq!(v["fix_code"], "publish_multiarch", "{v:#}");

    // 6. The index holds both platforms, each with its own binary: the image is right (a
    // node that runs the wrong variant had it forced); deploy it by the index digest.
    let good = layout(
        &work.path().join("orders"),
        vec![app("amd64", "amd64"), app("arm64", "arm64")],
    );
    let (code, v) = verify(&good, &both);
    assert_eq!(code, 0, "{v:#}");
    for p in ["linux/amd64", "linux/arm64"] {
        assert_eq!(platform(&v, p)["fix_code"], "none", "{p}");
    }
    assert_eq!(v["fix_code"], "deploy_by_digest", "{v:#}");
    let digest = v["deploy_digest"].as_str().unwrap();
    assert!(v["fix"].as_str().unwrap().contains("index digest"), "{v:#}");
    assert!(digest.starts_with("sha256:"));
}

/// A 386 binary in an amd64 image: it runs only where the kernel has IA32 emulation, which
/// `verify` does not assume unless told (`--compat32 yes`); `inspect` asks this machine's
/// kernel, which runs it (runc runs the same file in e2e's ok-i386-compat).
#[test]
fn compat32_is_asked_not_assumed() {
    let work = tempfile::tempdir().unwrap();
    let dir = layout(
        &work.path().join("i386-in-amd64"),
        vec![spec("amd64", None, vec![Layer(vec![bb("i386")])])],
    );
    let (code, v) = verify(&dir, &[]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(platform(&v, "linux/amd64")["verdict"], "arch_mismatch");
    let (code, v) = verify(&dir, &["--compat32", "yes"]);
    assert_eq!(code, 0, "{v:#}");
    let p = platform(&v, "linux/amd64");
    assert_eq!(p["verdict"], "ok");
    assert!(
        p["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["code"] == "compat_32bit"),
        "{p:#}"
    );

    let root = work.path().join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::write(root.join("bin/busybox"), support::busybox("i386")).unwrap();
    rustix::fs::chmod(
        root.join("bin/busybox"),
        rustix::fs::Mode::from_raw_mode(0o755),
    )
    .unwrap();
    let inspect = |compat: &str| {
        let out = support::archwatch()
            .args(["inspect", "--json", "--compat32", compat, "--rootfs"])
            .arg(&root)
            .args(["--", "/bin/busybox", "true"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["verdict"].as_str().unwrap().to_string()
    };
    // This machine runs 386 binaries (the real kernel, not an assumption).
    let ran = std::process::Command::new(root.join("bin/busybox"))
        .arg("true")
        .status()
        .unwrap();
    assert!(ran.success());
    assert_eq!(inspect("auto"), "ok");
    assert_eq!(inspect("no"), "arch_mismatch");
    assert_eq!(inspect("yes"), "ok");
}

/// A wrong-arch tool elsewhere in PATH (a build step that downloaded the build machine's
/// binary): the entrypoint runs, and the census names the tool.
#[test]
fn the_census_names_foreign_executables_in_path() {
    let work = tempfile::tempdir().unwrap();
    let dir = layout(
        &work.path().join("tool"),
        vec![spec(
            "amd64",
            None,
            vec![
                Layer(vec![bb("amd64")]),
                Layer(vec![Item::file(
                    "/usr/local/bin/kubectl",
                    support::busybox("arm64"),
                    0o755,
                )]),
            ],
        )],
    );
    let (code, v) = verify(&dir, &[]);
    assert_eq!(code, 0, "{v:#}");
    let p = platform(&v, "linux/amd64");
    let f = p["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "foreign_executables")
        .unwrap_or_else(|| panic!("{p:#}"));
    assert!(
        f["detail"]
            .as_str()
            .unwrap()
            .contains("/usr/local/bin/kubectl (linux/arm64)"),
        "{f}"
    );
    let (_, v) = verify(&dir, &["--no-census"]);
    assert!(platform(&v, "linux/amd64")["findings"]
        .as_array()
        .is_none_or(|a| a.iter().all(|f| f["code"] != "foreign_executables")));
}

/// The entrypoint lives in the top layer: the layers below are never decompressed (without
/// the census, which needs every PATH directory); a bare name found only below reads them.
#[test]
fn lower_layers_are_read_only_when_a_path_needs_them() {
    let work = tempfile::tempdir().unwrap();
    // Incompressible, so the blob is as large as the file.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..(4 << 20) / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    let lower = Layer(vec![
        Item::file("/opt/data.bin", noise, 0o644),
        Item::symlink("/usr/bin/true", "/bin/busybox"),
    ]);
    let mut top_entry = spec("amd64", None, vec![lower.clone(), Layer(vec![bb("amd64")])]);
    top_entry.entrypoint = vec!["/bin/busybox".into(), "true".into()];
    let mut bare = spec("amd64", None, vec![lower, Layer(vec![bb("amd64")])]);
    bare.entrypoint = vec!["true".into()];
    for (name, s, layers_read) in [("top", top_entry, 1), ("bare", bare, 2)] {
        let dir = layout(&work.path().join(name), vec![s]);
        let (code, v) = verify(&dir, &["--no-census"]);
        assert_eq!(code, 0, "{name}: {v:#}");
        let p = platform(&v, "linux/amd64");
        assert_eq!(p["verdict"], "ok", "{name}: {p:#}");
        assert_eq!(p["layers_read"], layers_read, "{name}: {p:#}");
        if layers_read == 1 {
            // The busybox layer, read twice (index, then the file's head): not the 4 MiB.
            assert!(
                p["blob_bytes_read"].as_u64().unwrap() < 4 << 20,
                "{name}: {p:#}"
            );
        } else {
            assert!(
                p["blob_bytes_read"].as_u64().unwrap() > 4 << 20,
                "{name}: {p:#}"
            );
        }
    }
}
