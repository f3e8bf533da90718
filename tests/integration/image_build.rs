//! The project eats its own cooking: the binary built the way the Dockerfile builds it (static
//! musl, linked by rust-lld) passes `archwatch inspect` in a root laid out like the final image,
//! and the ordinary glibc build in the same root does not. That root, assembled from the
//! Dockerfile's own `COPY --from=build` lines, runs `archwatch verify` against a registry
//! serving HTTPS with a certificate from a private CA: it succeeds when the image's CA bundle
//! holds that CA, and fails with a certificate error when it does not or when there is no
//! bundle at all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use archwatch::oci::{ImageSpec, Item, Layer, Layout};

use crate::support;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn instructions() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(head) => {
                cur.push_str(head);
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                if !cur.trim().is_empty() {
                    out.push(cur.trim().to_string());
                }
                cur.clear();
            }
        }
    }
    out
}

/// The instructions of the stage that starts with `FROM <from>` (its first such stage), up to
/// the next FROM.
fn stage(all: &[String], from: impl Fn(&str) -> bool) -> Vec<String> {
    let start = all
        .iter()
        .position(|i| i.strip_prefix("FROM ").is_some_and(&from))
        .expect("the stage");
    all[start + 1..]
        .iter()
        .take_while(|i| !i.starts_with("FROM "))
        .cloned()
        .collect()
}

/// `key="value"` pairs of a LABEL or ENV instruction.
fn pairs(args: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = args.trim();
    while let Some((k, v)) = rest.split_once('=') {
        let (value, tail) = match v.strip_prefix('"') {
            Some(q) => {
                let end = q.find('"').expect("closing quote");
                (&q[..end], &q[end + 1..])
            }
            None => v.split_once(' ').unwrap_or((v, "")),
        };
        out.insert(k.trim().to_string(), value.to_string());
        rest = tail.trim();
    }
    out
}

/// The static musl binary, built as the Dockerfile builds it: same target, linker, C
/// compiler and features (debug profile: the linking is what is checked, and it is the
/// same).
fn musl_binary() -> PathBuf {
    let target_dir = repo().join("target/musl");
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "--locked",
            "--no-default-features",
            "--bin",
            "archwatch",
            "--target",
            "x86_64-unknown-linux-musl",
        ])
        .current_dir(repo())
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER", "rust-lld")
        .env("CC_x86_64_unknown_linux_musl", "musl-gcc")
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the musl build (scripts/install-deps adds the target and musl-tools)"
    );
    target_dir.join("x86_64-unknown-linux-musl/debug/archwatch")
}

fn inspect_scratch(binary: &Path) -> serde_json::Value {
    let root = tempfile::tempdir().unwrap();
    std::fs::copy(binary, root.path().join("archwatch")).unwrap();
    let out = support::archwatch()
        .args(["inspect", "--json", "--rootfs"])
        .arg(root.path())
        .args(["--", "/archwatch", "agent"])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn the_container_image_binary_runs_on_scratch() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("FROM --platform=$BUILDPLATFORM"),
        "cross-compiling builder"
    );
    assert!(dockerfile.contains("FROM scratch"));
    assert!(dockerfile.contains("ENTRYPOINT [\"/archwatch\"]"));
    assert!(
        dockerfile.contains("cargo build --release --locked --no-default-features"),
        "the shipped binary is built without the lab"
    );
    let built = musl_binary();
    // Without the lab: no private containerd or Docker to start, no demo, no replays in the
    // binary that runs as root on every node.
    let demo = Command::new(&built).arg("demo").output().unwrap();
    assert_eq!(demo.status.code(), Some(2), "{demo:?}");
    assert!(
        String::from_utf8_lossy(&demo.stderr).contains("unrecognized subcommand"),
        "{demo:?}"
    );
    let strings = std::fs::read(&built).unwrap();
    for lab_only in [
        &b"aw-dockerd-"[..],
        b"archwatch-containerd-",
        b"archwatch-demo-",
    ] {
        assert!(
            !strings.windows(lab_only.len()).any(|w| w == lab_only),
            "{} is in the shipped binary",
            String::from_utf8_lossy(lab_only)
        );
    }
    let v = inspect_scratch(&built);
    assert_eq!(v["verdict"], "ok", "{v:#}");
    assert_eq!(v["binary_arch"], "amd64");
    assert!(
        v["chain"][0]["elf"]["interp"].is_null(),
        "static: no loader needed on scratch: {v:#}"
    );
    // The glibc build of the tests would not run there.
    let v = inspect_scratch(Path::new(env!("CARGO_BIN_EXE_archwatch")));
    assert_eq!(v["verdict"], "missing_loader", "{v:#}");
}

#[test]
fn the_image_declares_its_oci_labels() {
    let all = instructions();
    let last = stage(&all, |f| f == "scratch");
    let mut labels = BTreeMap::new();
    let mut args = BTreeMap::new();
    for i in &last {
        if let Some(l) = i.strip_prefix("LABEL ") {
            labels.extend(pairs(l));
        }
        if let Some(a) = i.strip_prefix("ARG ") {
            args.extend(pairs(a));
        }
    }
    let cargo = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let license = cargo
        .lines()
        .find_map(|l| l.strip_prefix("license = "))
        .unwrap()
        .trim_matches('"');
    assert_eq!(
        labels
            .get("org.opencontainers.image.licenses")
            .map(String::as_str),
        Some(license)
    );
    // Source, revision and version come from build args (set by the release build).
    for (label, arg) in [
        ("source", "SOURCE"),
        ("revision", "REVISION"),
        ("version", "VERSION"),
    ] {
        let key = format!("org.opencontainers.image.{label}");
        assert_eq!(
            labels.get(&key).map(String::as_str),
            Some(format!("${arg}").as_str()),
            "{key}"
        );
        assert!(args.contains_key(arg), "ARG {arg} in the final stage");
    }
    assert!(args["SOURCE"].starts_with("https://"), "{args:?}");
}

/// A private CA and a server certificate for 127.0.0.1 signed by it, made by openssl.
struct TestCa {
    dir: tempfile::TempDir,
}

impl TestCa {
    fn new() -> TestCa {
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .current_dir(dir.path())
                .args(args)
                .output()
                .expect("openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=archwatch test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(
            dir.path().join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.crt",
        ]);
        TestCa { dir }
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }
}

/// docker-registry serving HTTPS with the test CA's server certificate.
struct TlsRegistry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for TlsRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TlsRegistry {
    fn start(ca: &TestCa) -> TlsRegistry {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = serde_json::json!({
            "version": 0.1,
            "log": {"level": "error"},
            "storage": {"filesystem": {"rootdirectory": dir.path().join("data")}},
            "http": {
                "addr": addr,
                "tls": {"certificate": ca.path("server.crt"), "key": ca.path("server.key")},
            },
        });
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, serde_yaml::to_string(&config).unwrap()).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (scripts/install-deps installs it)");
        let r = TlsRegistry {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(&r.addr).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    /// `skopeo copy` an OCI archive's `tag` to `repo:tag`, trusting the test CA.
    fn push(&self, ca: &TestCa, archive: &Path, tag: &str, repo: &str) -> String {
        let certs = tempfile::tempdir().unwrap();
        std::fs::copy(ca.path("ca.crt"), certs.path().join("ca.crt")).unwrap();
        let reference = format!("{}/{repo}:{tag}", self.addr);
        let out = Command::new("skopeo")
            .args(["copy", "--dest-cert-dir"])
            .arg(certs.path())
            .arg(format!("oci-archive:{}:{tag}", archive.display()))
            .arg(format!("docker://{reference}"))
            .output()
            .expect("skopeo");
        assert!(
            out.status.success(),
            "skopeo copy over TLS: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        reference
    }
}

/// The final image's root, built from the Dockerfile's `COPY --from=build SRC DST` lines with
/// what the builder would hold at SRC: the musl binary at the path the build copies it to, a
/// CA bundle (`bundle`) at the bundle's path, and directories the build stage makes with
/// `mkdir -m MODE`. Returns the root and the final stage's ENV.
fn image_root(binary: &Path, bundle: &[u8]) -> (tempfile::TempDir, BTreeMap<String, String>) {
    use std::os::unix::fs::PermissionsExt;
    let all = instructions();
    let build = stage(&all, |f| f.ends_with(" AS build"));
    let last = stage(&all, |f| f == "scratch");
    let binary_at = build
        .iter()
        .filter(|i| i.starts_with("RUN "))
        .find_map(|i| {
            i.rsplit_once("release/archwatch\" ")
                .map(|(_, to)| to.trim().to_string())
        })
        .expect("the build copies the binary out of target/");
    let mkdirs: BTreeMap<String, u32> = build
        .iter()
        .filter_map(|i| i.strip_prefix("RUN mkdir -m "))
        .map(|r| {
            let (mode, path) = r.split_once(' ').unwrap();
            (
                path.trim().to_string(),
                u32::from_str_radix(mode, 8).unwrap(),
            )
        })
        .collect();
    let root = tempfile::tempdir().unwrap();
    let mut env = BTreeMap::new();
    let mut copied = Vec::new();
    for i in &last {
        if let Some(e) = i.strip_prefix("ENV ") {
            env.extend(pairs(e));
        }
        let Some(c) = i.strip_prefix("COPY --from=build ") else {
            assert!(
                !i.starts_with("COPY") && !i.starts_with("ADD"),
                "{i}: not modelled here"
            );
            continue;
        };
        let (src, dst) = c.split_once(' ').unwrap();
        let at = root.path().join(dst.trim().trim_start_matches('/'));
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        if src == binary_at {
            std::fs::copy(binary, &at).unwrap();
        } else if src.ends_with(".crt") || src.ends_with(".pem") {
            std::fs::write(&at, bundle).unwrap();
        } else if let Some(mode) = mkdirs.get(src) {
            std::fs::create_dir(&at).unwrap();
            std::fs::set_permissions(&at, std::fs::Permissions::from_mode(*mode)).unwrap();
        } else {
            panic!("the builder's {src} is not modelled here");
        }
        copied.push(dst.trim().to_string());
    }
    assert!(copied.contains(&"/archwatch".to_string()), "{copied:?}");
    (root, env)
}

/// `archwatch verify REF --json` run inside `root` as its entrypoint, with only the image's
/// environment.
fn verify_in(
    root: &Path,
    env: &BTreeMap<String, String>,
    reference: &str,
) -> (i32, String, String) {
    // Found on this process's PATH: the child's environment is the image's alone.
    let chroot = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("chroot"))
        .find(|p| p.exists())
        .expect("chroot (coreutils)");
    let out = Command::new(chroot)
        .arg(root)
        .args(["/archwatch", "verify", "--json", reference])
        .env_clear()
        .envs(env)
        .output()
        .expect("chroot");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn verify_inside_the_image_trusts_its_ca_bundle() {
    let binary = musl_binary();
    let ca = TestCa::new();
    let reg = TlsRegistry::start(&ca);
    let work = tempfile::tempdir().unwrap();
    let mut l = Layout::new();
    let img = l
        .add_image(&ImageSpec::new(
            "amd64",
            &["/bin/busybox", "true"],
            vec![Layer(vec![Item::file(
                "/bin/busybox",
                support::busybox("amd64"),
                0o755,
            )])],
        ))
        .unwrap();
    l.tag("archwatch.test/app:v1", &img);
    let archive = work.path().join("app.tar");
    l.write_archive(&archive).unwrap();
    let reference = reg.push(&ca, &archive, "v1", "shop/app");

    // The builder's bundle (Debian's, as on this machine) with the private CA appended, as an
    // organisation adds its own CA to the image's bundle.
    let system = std::fs::read("/etc/ssl/certs/ca-certificates.crt")
        .expect("ca-certificates (scripts/install-deps installs it)");
    let mut bundle = system.clone();
    bundle.extend(std::fs::read(ca.path("ca.crt")).unwrap());
    let (root, env) = image_root(&binary, &bundle);
    let (code, out, err) = verify_in(root.path(), &env, &reference);
    assert_eq!(code, 0, "verify over HTTPS inside the image: {out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["platforms"][0]["verdict"], "ok", "{v:#}");

    // The image's /tmp is what verify fetches into: scratch has none.
    std::fs::remove_dir(root.path().join("tmp")).unwrap();
    let (code, out, err) = verify_in(root.path(), &env, &reference);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("temp dir"), "{err}");

    // Debian's bundle alone does not know the private CA: a certificate error, not a verdict.
    let (root, env) = image_root(&binary, &system);
    let (code, out, err) = verify_in(root.path(), &env, &reference);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("invalid peer certificate: UnknownIssuer"),
        "a certificate error: {err}"
    );

    // Without any bundle (scratch as it comes) nothing can be trusted.
    let (root, env) = image_root(&binary, &bundle);
    let bundle_at = instructions()
        .iter()
        .filter_map(|i| i.strip_prefix("COPY --from=build "))
        .filter_map(|c| c.split_once(' '))
        .find(|(s, _)| s.ends_with(".crt"))
        .map(|(_, d)| d.trim().trim_start_matches('/').to_string())
        .unwrap();
    std::fs::remove_file(root.path().join(&bundle_at)).unwrap();
    let (code, out, err) = verify_in(root.path(), &env, &reference);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("No CA certificates were loaded"),
        "a TLS error that says there are no CA certificates: {err}"
    );
}
