//! `archwatch demo` end to end, non-interactive: every scenario diagnosed with its verdict,
//! the healthy one silent, and nothing left running or mounted afterwards.

use crate::support;

/// Everything that still refers to the demo's own temp dirs or binfmt handler.
fn leftovers(markers: &[String]) -> Vec<String> {
    let hit = |s: &str| markers.iter().any(|m| s.contains(m.as_str()));
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut out: Vec<String> = mounts
        .lines()
        .filter(|l| hit(l))
        .map(str::to_string)
        .collect();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read_to_string(entry.path().join("cmdline")) {
            if hit(&cmd) {
                out.push(cmd.replace('\0', " "));
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/proc/sys/fs/binfmt_misc") {
        out.extend(
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| hit(n)),
        );
    }
    out
}

#[test]
fn demo_diagnoses_every_scenario_and_cleans_up() {
    let _binfmt = support::binfmt_exclusive();
    let out = support::archwatch().arg("demo").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "demo failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each scenario block: its title line, what the runtime said, what archwatch said.
    let block = |title: &str| -> String {
        let start = text
            .find(&format!("● {title}"))
            .unwrap_or_else(|| panic!("no scenario {title:?} in:\n{text}"));
        text[start..].split("\n\n").next().unwrap().to_string()
    };
    // The six seed scenes: the runtime's symptom, archwatch's verdict and the fix code that
    // names the cause.
    for (title, verdict, symptom, fix_code) in [
        (
            "an arm64 binary built on an Apple Silicon laptop",
            "arch_mismatch",
            "exec format error",
            "publish_multiarch",
        ),
        (
            "config says amd64",
            "arch_mismatch",
            "exec format error",
            "fix_build_stage",
        ),
        (
            "an entrypoint script saved with Windows line endings",
            "script_crlf",
            "no such file or directory",
            "convert_to_lf",
        ),
        (
            "a glibc binary shipped in a musl",
            "missing_loader",
            "no such file or directory",
            "use_glibc_base_or_static",
        ),
        (
            "a tag that points to a single-arch image",
            "arch_mismatch",
            "exec format error",
            "publish_multiarch",
        ),
        (
            "a multi-arch tag, and the node runs the wrong variant",
            "arch_mismatch",
            "exec format error",
            "remove_platform_override",
        ),
    ] {
        let b = block(title);
        assert!(
            b.contains(&format!("archwatch:     {verdict} ")),
            "{title}: {b}"
        );
        assert!(b.contains(symptom), "{title}: {b}");
        assert!(
            b.contains(&format!("fix_code:      {fix_code}\n")),
            "{title}: {b}"
        );
        assert!(b.contains("fix:"), "{title}: {b}");
    }
    // Scene 6: the other variant forced, found from the container's layers; the fix names
    // the override and the digest to pull by, not a multi-arch image it already is.
    let forced = block("a multi-arch tag, and the node runs the wrong variant");
    assert!(
        forced.contains("ctr run --platform linux/arm64"),
        "{forced}"
    );
    assert!(
        forced.contains("finding:       platform_forced"),
        "{forced}"
    );
    assert!(
        forced.contains("--platform") && forced.contains("registry.example/shop/orders@sha256:"),
        "{forced}"
    );
    assert!(!forced.contains("Publish"), "{forced}");
    assert!(
        block("config says amd64").contains("$TARGETARCH"),
        "the build stage, not the nodes"
    );
    let healthy = block("a healthy image");
    assert!(healthy.contains("silent"), "{healthy}");
    assert!(
        text.contains("config_arch_mismatch"),
        "the lying config is called out at pull time"
    );
    assert!(
        text.contains("single_arch_image"),
        "the single-arch tag is called out at pull time"
    );
    let emu = block("the same linux/arm64 image, with a temporary QEMU binfmt_misc handler");
    assert!(
        emu.contains("archwatch:     emulated") || emu.contains("skipped"),
        "{emu}"
    );
    assert!(
        emu.contains("fix_code:      native_build_instead_of_emulation") || emu.contains("skipped"),
        "{emu}"
    );
    assert!(
        text.contains("archwatch_exec_failures_total{namespace=\"shop\",reason=\"arch_mismatch\""),
        "{text}"
    );
    // The same failures on a Docker host: what `docker run` said, and the agent following
    // Docker Engine through its API (scripts/install-deps installs docker.io).
    for (title, symptom, verdict, fix_code) in [
        (
            "docker build copied an arm64 artifact",
            "exec /bin/app: exec format error (exit 1)",
            "arch_mismatch",
            "fix_build_stage",
        ),
        (
            "a compose service whose entrypoint script has Windows line endings",
            "exec /entrypoint.sh: no such file or directory (exit 1)",
            "script_crlf",
            "convert_to_lf",
        ),
    ] {
        let b = block(title);
        assert!(b.contains(&format!("docker said:   {symptom}")), "{b}");
        assert!(b.contains(&format!("archwatch:     {verdict} ")), "{b}");
        assert!(b.contains("runtime docker, compose project ci"), "{b}");
        assert!(b.contains(&format!("fix_code:      {fix_code}")), "{b}");
    }
    assert!(text.contains("\"reportingController\": \"archwatch.io/agent\""));
    assert!(text.contains("6 failures diagnosed"), "{text}");
    // The demo names its containerd dir and its binfmt handler; nothing may refer to them now.
    let mut markers: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        if let Some(i) = word.find("/archwatch-containerd-") {
            markers.push(word[i..].split('/').nth(1).unwrap_or("").to_string());
        }
        if let Some(i) = word.find("/aw-dockerd-") {
            markers.push(word[i..].split('/').nth(1).unwrap_or("").to_string());
        }
        if word.starts_with("archwatch-demo-") {
            markers.push(word.trim_end_matches([')', ',', '.']).to_string());
        }
    }
    markers.retain(|m| m.len() > "archwatch-demo-".len());
    assert!(
        !markers.is_empty(),
        "the demo names its containerd dir: {text}"
    );
    assert_eq!(
        leftovers(&markers),
        Vec::<String>::new(),
        "the demo left something running or mounted"
    );
}
