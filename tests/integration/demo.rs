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
    for (title, verdict, symptom) in [
        (
            "an arm64 binary built on an Apple Silicon laptop",
            "arch_mismatch",
            "exec format error",
        ),
        ("config says amd64", "arch_mismatch", "exec format error"),
        (
            "an entrypoint script saved with Windows line endings",
            "script_crlf",
            "no such file or directory",
        ),
        (
            "a glibc binary shipped in a musl",
            "missing_loader",
            "no such file or directory",
        ),
        (
            "a tag that points to a single-arch image",
            "arch_mismatch",
            "exec format error",
        ),
    ] {
        let b = block(title);
        assert!(
            b.contains(&format!("archwatch:     {verdict} ")),
            "{title}: {b}"
        );
        assert!(b.contains(symptom), "{title}: {b}");
        assert!(b.contains("fix:"), "{title}: {b}");
    }
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
        text.contains("archwatch_exec_failures_total{namespace=\"shop\",reason=\"arch_mismatch\""),
        "{text}"
    );
    assert!(text.contains("\"reportingController\": \"archwatch.io/agent\""));
    assert!(text.contains("5 failures diagnosed"), "{text}");
    // The demo names its containerd dir and its binfmt handler; nothing may refer to them now.
    let mut markers: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        if let Some(i) = word.find("/archwatch-containerd-") {
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
