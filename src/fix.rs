//! The fix fits the cause: from a verdict and the findings beside it to one machine-readable
//! [`FixCode`] from a closed set, and the sentence that goes with it.
//!
//! The inspector writes a sentence where it decides a verdict (it knows the paths). This
//! module decides which cause the fix must address. Where a finding names a cause the
//! verdict alone does not — a platform forced on the node, a stale cached tag, a config that
//! lies about the binary — the sentence is written here, since the inspector's is about
//! another cause; otherwise the inspector's sentence stands. Pure: no I/O.
//!
//! Precedence, for verdicts that depend on the platform (`ok`, `arch_mismatch`, `emulated`,
//! `emulator_missing`, or a binary of another arch than the node's): `platform_forced` →
//! `remove_platform_override`, then `stale_image` → `deploy_by_digest`, then
//! `config_arch_mismatch` → `fix_build_stage`, then (in `verify`) `index_config_disagree` →
//! `publish_multiarch` (the index lists the manifest under the wrong platform); then the
//! verdict's own code.

use serde::Serialize;

use crate::inspect::elf::Libc;
use crate::inspect::{Inspection, Role, Step, Verdict};
use crate::variant::{self, Variant};

/// Finding codes that decide a fix, beside those of [`variant`].
pub const CONFIG_ARCH_MISMATCH: &str = "config_arch_mismatch";
/// `verify`: the index lists a manifest under another platform than its config's.
pub const INDEX_CONFIG_DISAGREE: &str = "index_config_disagree";

/// What to change, as a stable code (JSON, journal, the gRPC stream, verify's report).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FixCode {
    /// It runs natively; nothing to change.
    #[default]
    None,
    /// Publish a multi-arch index that includes the node's platform.
    PublishMultiarch,
    /// A build stage put another platform's artifact into the image.
    FixBuildStage,
    /// The node runs another variant of an index that holds its own: remove the override.
    RemovePlatformOverride,
    /// Deploy by the index digest (the node's tag is a stale single-arch copy).
    DeployByDigest,
    /// A glibc binary without its loader (an Alpine/musl base).
    UseGlibcBaseOrStatic,
    /// A musl binary without its loader (a glibc base).
    UseMuslBaseOrStatic,
    /// A dynamic binary in an image with no C library for it.
    AddLibcOrStatic,
    /// The loader is there but broken (truncated, not executable, not a file).
    RepairLoader,
    ConvertToLf,
    /// No `#!`, a byte order mark before it, an unusable `#!` line, too many rewrites.
    FixShebang,
    InstallInterpreter,
    AddExecuteBit,
    /// The entrypoint or command names a file the image does not have (or not a file).
    FixEntrypointPath,
    FixSymlink,
    /// Not a Linux executable (Mach-O, PE, empty, truncated).
    ShipLinuxBinary,
    /// Runs (or would) only under a QEMU binfmt_misc handler.
    NativeBuildInsteadOfEmulation,
    /// The image's own content is incomplete or unreadable.
    RepairImage,
}

impl FixCode {
    pub const ALL: [FixCode; 18] = [
        FixCode::None,
        FixCode::PublishMultiarch,
        FixCode::FixBuildStage,
        FixCode::RemovePlatformOverride,
        FixCode::DeployByDigest,
        FixCode::UseGlibcBaseOrStatic,
        FixCode::UseMuslBaseOrStatic,
        FixCode::AddLibcOrStatic,
        FixCode::RepairLoader,
        FixCode::ConvertToLf,
        FixCode::FixShebang,
        FixCode::InstallInterpreter,
        FixCode::AddExecuteBit,
        FixCode::FixEntrypointPath,
        FixCode::FixSymlink,
        FixCode::ShipLinuxBinary,
        FixCode::NativeBuildInsteadOfEmulation,
        FixCode::RepairImage,
    ];

    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            FixCode::None => "none",
            FixCode::PublishMultiarch => "publish_multiarch",
            FixCode::FixBuildStage => "fix_build_stage",
            FixCode::RemovePlatformOverride => "remove_platform_override",
            FixCode::DeployByDigest => "deploy_by_digest",
            FixCode::UseGlibcBaseOrStatic => "use_glibc_base_or_static",
            FixCode::UseMuslBaseOrStatic => "use_musl_base_or_static",
            FixCode::AddLibcOrStatic => "add_libc_or_static",
            FixCode::RepairLoader => "repair_loader",
            FixCode::ConvertToLf => "convert_to_lf",
            FixCode::FixShebang => "fix_shebang",
            FixCode::InstallInterpreter => "install_interpreter",
            FixCode::AddExecuteBit => "add_execute_bit",
            FixCode::FixEntrypointPath => "fix_entrypoint_path",
            FixCode::FixSymlink => "fix_symlink",
            FixCode::ShipLinuxBinary => "ship_linux_binary",
            FixCode::NativeBuildInsteadOfEmulation => "native_build_instead_of_emulation",
            FixCode::RepairImage => "repair_image",
        }
    }

    pub fn from_code(code: &str) -> Option<FixCode> {
        FixCode::ALL.into_iter().find(|c| c.code() == code)
    }
}

impl std::fmt::Display for FixCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// The fix chosen for an inspection: a code, and the sentence when the inspector's is about
/// another cause (`None`: the inspector's sentence stands).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fix {
    pub code: FixCode,
    pub sentence: Option<String>,
}

/// Sets `fix_code` (and the sentence, where a finding changes the cause) from the verdict and
/// the findings. Idempotent; call again after adding findings.
pub fn settle(i: &mut Inspection) {
    apply(i, None);
}

/// Adds what the node's content says about the variant (`platform_forced`, `stale_image`)
/// and settles the fix with its facts (names and digests in the sentence).
pub fn note_variant(i: &mut Inspection, v: &Variant) {
    let f = v.finding();
    if !i.findings.iter().any(|x| x.code == f.code) {
        // First: what the agent keeps of a long list is its head.
        i.findings.insert(0, f);
    }
    apply(i, Some(v));
}

fn apply(i: &mut Inspection, v: Option<&Variant>) {
    let fix = choose(i, v);
    // A sentence written from facts replaces any; a generic one only a sentence written for
    // another code (settling again keeps the sentence a variant's facts wrote).
    if let Some(s) = fix.sentence {
        if v.is_some() || fix.code != i.fix_code {
            i.fix = s;
        }
    }
    i.fix_code = fix.code;
}

/// Whether the verdict depends on which platform's files the node has: what the variant and
/// the config's claim can explain.
pub fn depends_on_platform(i: &Inspection) -> bool {
    matches!(
        i.verdict,
        Verdict::Ok | Verdict::ArchMismatch | Verdict::Emulated | Verdict::EmulatorMissing
    ) || i.binary_arch.is_some_and(|a| a != i.node_arch)
}

/// Whether the variant of the image is worth reading for `i`: the verdict is about a binary
/// of another arch than the node's (a healthy native container needs no lookup).
pub fn variant_matters(i: &Inspection) -> bool {
    matches!(
        i.verdict,
        Verdict::ArchMismatch | Verdict::Emulated | Verdict::EmulatorMissing
    ) || i.binary_arch.is_some_and(|a| a != i.node_arch)
}

/// The fix for `i`, with the facts of its variant when known.
pub fn choose(i: &Inspection, v: Option<&Variant>) -> Fix {
    let has = |code: &str| i.findings.iter().any(|f| f.code == code);
    if depends_on_platform(i) {
        if has(variant::PLATFORM_FORCED) {
            return Fix {
                code: FixCode::RemovePlatformOverride,
                sentence: Some(remove_override(i, v)),
            };
        }
        if has(variant::STALE_IMAGE) {
            return Fix {
                code: FixCode::DeployByDigest,
                sentence: Some(deploy_by_digest(i, v)),
            };
        }
        if has(CONFIG_ARCH_MISMATCH) {
            return Fix {
                code: FixCode::FixBuildStage,
                sentence: Some(fix_build_stage(i)),
            };
        }
        if has(INDEX_CONFIG_DISAGREE) && i.verdict != Verdict::Ok {
            return Fix {
                code: FixCode::PublishMultiarch,
                sentence: Some(format!(
                    "Publish the index again with each manifest under its own platform: it lists this one, whose config and binary are {}, for linux/{} (docker buildx imagetools create, or docker manifest annotate --arch).",
                    i.binary_arch
                        .map(|a| format!("linux/{a}"))
                        .unwrap_or_else(|| "another platform".into()),
                    i.node_arch
                )),
            };
        }
    }
    let last = i.chain.last();
    let role = last.map(|s| s.role);
    let code = match i.verdict {
        Verdict::Ok => FixCode::None,
        Verdict::Emulated | Verdict::EmulatorMissing => FixCode::NativeBuildInsteadOfEmulation,
        // The binary is right and its loader in the image is another arch's: the image was
        // assembled from two platforms.
        Verdict::ArchMismatch if role == Some(Role::Loader) => FixCode::FixBuildStage,
        Verdict::ArchMismatch => FixCode::PublishMultiarch,
        Verdict::MissingLoader => match last {
            Some(s) if s.role == Role::Loader && s.resolved.is_some() => FixCode::RepairLoader,
            Some(s) if s.role == Role::Loader => match Libc::from_loader(&s.requested) {
                Libc::Glibc => FixCode::UseGlibcBaseOrStatic,
                Libc::Musl => FixCode::UseMuslBaseOrStatic,
                Libc::Bionic | Libc::Other => FixCode::AddLibcOrStatic,
            },
            _ => FixCode::AddLibcOrStatic,
        },
        Verdict::ScriptCrlf => FixCode::ConvertToLf,
        Verdict::ScriptInterpreterMissing => FixCode::InstallInterpreter,
        Verdict::ScriptNoShebang => FixCode::FixShebang,
        Verdict::NotExecutable if role == Some(Role::Loader) => FixCode::RepairLoader,
        Verdict::NotExecutable => FixCode::AddExecuteBit,
        // runc's PATH lookup found argv[0] but skipped it: not executable.
        Verdict::NotFound if last.is_some_and(|s| s.resolved.is_some()) => FixCode::AddExecuteBit,
        Verdict::NotFound => FixCode::FixEntrypointPath,
        // More than the kernel's five `#!` rewrites, else a symlink loop.
        Verdict::SymlinkLoop if interpreters(&i.chain) >= 5 => FixCode::FixShebang,
        Verdict::SymlinkLoop => FixCode::FixSymlink,
        Verdict::NotARegularFile if role == Some(Role::Loader) => FixCode::RepairLoader,
        Verdict::NotARegularFile => FixCode::FixEntrypointPath,
        Verdict::UnknownFormat => FixCode::ShipLinuxBinary,
    };
    Fix {
        code,
        sentence: None,
    }
}

fn interpreters(chain: &[Step]) -> usize {
    chain.iter().filter(|s| s.role == Role::Interpreter).count()
}

/// The file whose ELF decided the verdict, else argv[0].
fn decisive_file(i: &Inspection) -> String {
    i.chain
        .iter()
        .rev()
        .find(|s| {
            s.elf
                .as_ref()
                .is_some_and(|e| Some(e.arch) == i.binary_arch)
        })
        .map(|s| s.resolved.clone().unwrap_or_else(|| s.requested.clone()))
        .or_else(|| i.argv.first().cloned())
        .unwrap_or_default()
}

fn fix_build_stage(i: &Inspection) -> String {
    let file = decisive_file(i);
    let arch = i
        .binary_arch
        .map(|a| format!("a linux/{a} binary"))
        .unwrap_or_else(|| "a binary".into());
    format!(
        "Fix the build stage that produced {file}: it is {arch} in an image whose config says another platform, the mark of a multi-stage build that copied an artifact built for $BUILDPLATFORM instead of $TARGETARCH (COPY --from=build). Build it for $TARGETOS/$TARGETARCH in that stage (e.g. GOARCH=$TARGETARCH, or a cross-compiler for $TARGETPLATFORM), rebuild, and check every platform with archwatch verify."
    )
}

const OVERRIDES: &str = "--platform on ctr, nerdctl, docker or podman pull/run, DOCKER_DEFAULT_PLATFORM, or a pre-pull script that pins a platform";

fn remove_override(i: &Inspection, v: Option<&Variant>) -> String {
    match v {
        Some(Variant::Forced {
            image,
            index_digest,
            running,
            node_platform,
            ..
        }) => format!(
            "Remove the platform override that made this node run the {running} variant of {image} ({OVERRIDES}): its index holds {node_platform}, which the node pulls by default. Then pull by digest ({}@{index_digest}) and, with imagePullPolicy: IfNotPresent, check the node's cached copy (crictl images; crictl rmi {image} to pull it again).",
            variant::repository(image)
        ),
        _ => format!(
            "Remove the platform override that made this node run another variant than linux/{} of a multi-arch image that holds it ({OVERRIDES}). Then pull by the index digest and, with imagePullPolicy: IfNotPresent, check the node's cached copy (crictl images; crictl rmi to pull it again).",
            i.node_arch
        ),
    }
}

fn deploy_by_digest(i: &Inspection, v: Option<&Variant>) -> String {
    match v {
        Some(Variant::Stale {
            image,
            platform,
            index_digest,
            index_name,
            node_platform,
            ..
        }) => format!(
            "Deploy by the index digest ({}@{index_digest}), which holds {node_platform}: {image} resolves on this node to a single-arch {platform} image, one variant of that index (held here as {index_name}). A tag cached from before it became multi-arch is pulled again with imagePullPolicy: Always, or after crictl rmi {image} on the node.",
            variant::repository(image)
        ),
        _ => format!(
            "Deploy by the digest of the multi-arch index, which holds linux/{}: the node's copy of the tag is a single-arch image from before the tag became multi-arch. Pull it again with imagePullPolicy: Always, or after crictl rmi on the node.",
            i.node_arch
        ),
    }
}

/// `archwatch verify`'s answer for the whole image, from each platform's code.
pub fn for_image(platform_codes: &[FixCode], missing_platforms: &[String], has_index: bool) -> Fix {
    if let Some(c) = platform_codes.iter().find(|c| **c != FixCode::None) {
        return Fix {
            code: *c,
            sentence: None,
        };
    }
    if !missing_platforms.is_empty() {
        return Fix {
            code: FixCode::PublishMultiarch,
            sentence: Some(format!(
                "Publish a multi-arch index that includes {} (docker buildx build --platform ...), then deploy by its digest.",
                missing_platforms.join(", ")
            )),
        };
    }
    if !has_index {
        return Fix {
            code: FixCode::PublishMultiarch,
            sentence: Some(
                "Publish a multi-arch index (docker buildx build --platform linux/amd64,linux/arm64 ...): a single-platform image runs on nodes of its platform only.".into(),
            ),
        };
    }
    Fix {
        code: FixCode::DeployByDigest,
        sentence: Some(
            "Deploy by the index digest: every node pulls its own platform's variant, and no node keeps a stale copy of a tag.".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::elf::ElfInfo;
    use crate::inspect::Finding;
    use crate::platform::Arch;

    fn step(role: Role, path: &str, resolved: bool, elf: Option<Arch>) -> Step {
        Step {
            role,
            requested: path.into(),
            resolved: resolved.then(|| path.to_string()),
            hops: Vec::new(),
            what: String::new(),
            elf: elf.map(|arch| ElfInfo {
                arch,
                bits: 64,
                endian: "little",
                machine: 0,
                e_type: 2,
                osabi: 0,
                e_flags: 0,
                interp: None,
                libc: None,
                malformed: None,
            }),
        }
    }

    fn insp(
        verdict: Verdict,
        binary: Option<Arch>,
        chain: Vec<Step>,
        findings: &[&'static str],
    ) -> Inspection {
        Inspection {
            verdict,
            cause: "cause".into(),
            fix: "the inspector's sentence".into(),
            fix_code: FixCode::None,
            symptom: verdict.symptom(),
            argv: vec!["/app".into()],
            node_arch: Arch::Amd64,
            binary_arch: binary,
            handler: None,
            chain,
            findings: findings
                .iter()
                .map(|c| Finding {
                    code: c,
                    detail: String::new(),
                })
                .collect(),
            bytes_read: 0,
            suspects: Vec::new(),
        }
    }

    #[test]
    fn one_code_per_verdict_and_findings() {
        use Verdict as V;
        let arm = Some(Arch::Arm64);
        let amd = Some(Arch::Amd64);
        let elf = |a| vec![step(Role::Argv0, "/app", true, a)];
        let loader = |path: &str, found: bool| {
            vec![
                step(Role::Argv0, "/app", true, amd),
                step(Role::Loader, path, found, None),
            ]
        };
        let script = |n: usize| {
            let mut c = vec![step(Role::Argv0, "/s", true, None)];
            c.extend((0..n).map(|_| step(Role::Interpreter, "/s", true, None)));
            c
        };
        #[rustfmt::skip]
        let cases: Vec<(&str, Inspection, FixCode)> = vec![
            // The six seed scenes.
            ("arm64 binary from a laptop", insp(V::ArchMismatch, arm, elf(arm), &[]), FixCode::PublishMultiarch),
            ("config says amd64", insp(V::ArchMismatch, arm, elf(arm), &["config_arch_mismatch"]), FixCode::FixBuildStage),
            ("crlf", insp(V::ScriptCrlf, None, script(1), &[]), FixCode::ConvertToLf),
            ("glibc on musl", insp(V::MissingLoader, amd, loader("/lib64/ld-linux-x86-64.so.2", false), &[]), FixCode::UseGlibcBaseOrStatic),
            ("single-arch tag", insp(V::ArchMismatch, arm, elf(arm), &["single_arch_image"]), FixCode::PublishMultiarch),
            ("forced platform", insp(V::ArchMismatch, arm, elf(arm), &["platform_forced"]), FixCode::RemovePlatformOverride),
            // Precedence among the platform findings.
            ("forced, config lies too", insp(V::ArchMismatch, arm, elf(arm), &["config_arch_mismatch", "platform_forced"]), FixCode::RemovePlatformOverride),
            ("stale tag", insp(V::ArchMismatch, arm, elf(arm), &["single_arch_image", "stale_image"]), FixCode::DeployByDigest),
            ("stale, config lies", insp(V::ArchMismatch, arm, elf(arm), &["config_arch_mismatch", "stale_image"]), FixCode::DeployByDigest),
            ("index without the node", insp(V::ArchMismatch, None, vec![], &["index_lacks_node_platform"]), FixCode::PublishMultiarch),
            ("index lists it wrong", insp(V::ArchMismatch, arm, elf(arm), &["index_config_disagree"]), FixCode::PublishMultiarch),
            ("index lists it wrong, config lies", insp(V::ArchMismatch, arm, elf(arm), &["index_config_disagree", "config_arch_mismatch"]), FixCode::FixBuildStage),
            // Emulation.
            ("emulated", insp(V::Emulated, arm, elf(arm), &[]), FixCode::NativeBuildInsteadOfEmulation),
            ("emulator missing", insp(V::EmulatorMissing, arm, elf(arm), &[]), FixCode::NativeBuildInsteadOfEmulation),
            ("emulated, forced", insp(V::Emulated, arm, elf(arm), &["platform_forced"]), FixCode::RemovePlatformOverride),
            ("emulated, config lies", insp(V::Emulated, arm, elf(arm), &["config_arch_mismatch"]), FixCode::FixBuildStage),
            // Loaders.
            ("mixed loader", insp(V::ArchMismatch, amd, vec![step(Role::Argv0, "/app", true, amd), step(Role::Loader, "/lib/ld-linux-aarch64.so.1", true, None)], &[]), FixCode::FixBuildStage),
            ("musl on glibc", insp(V::MissingLoader, amd, loader("/lib/ld-musl-x86_64.so.1", false), &[]), FixCode::UseMuslBaseOrStatic),
            ("unknown loader", insp(V::MissingLoader, amd, loader("/opt/ld.so", false), &[]), FixCode::AddLibcOrStatic),
            ("truncated loader", insp(V::MissingLoader, amd, loader("/lib64/ld-linux-x86-64.so.2", true), &[]), FixCode::RepairLoader),
            ("loader not executable", insp(V::NotExecutable, amd, loader("/lib64/ld-linux-x86-64.so.2", true), &[]), FixCode::RepairLoader),
            ("loader a directory", insp(V::NotARegularFile, amd, loader("/lib64/ld-linux-x86-64.so.2", true), &[]), FixCode::RepairLoader),
            // Scripts and paths.
            ("interpreter missing", insp(V::ScriptInterpreterMissing, None, script(1), &[]), FixCode::InstallInterpreter),
            ("no shebang", insp(V::ScriptNoShebang, None, script(0), &[]), FixCode::FixShebang),
            ("six rewrites", insp(V::SymlinkLoop, None, script(5), &[]), FixCode::FixShebang),
            ("symlink loop", insp(V::SymlinkLoop, None, vec![step(Role::Argv0, "/a", false, None)], &[]), FixCode::FixSymlink),
            ("no x bit", insp(V::NotExecutable, None, vec![step(Role::Argv0, "/app", true, None)], &[]), FixCode::AddExecuteBit),
            ("PATH skips it", insp(V::NotFound, None, vec![step(Role::Argv0, "app", true, None)], &[]), FixCode::AddExecuteBit),
            ("missing", insp(V::NotFound, None, vec![step(Role::Argv0, "/nope", false, None)], &[]), FixCode::FixEntrypointPath),
            ("a directory", insp(V::NotARegularFile, None, vec![step(Role::Argv0, "/app", true, None)], &[]), FixCode::FixEntrypointPath),
            ("mach-o", insp(V::UnknownFormat, None, vec![step(Role::Argv0, "/app", true, None)], &[]), FixCode::ShipLinuxBinary),
            // Runs: nothing to fix, unless its metadata lies.
            ("ok", insp(V::Ok, amd, elf(amd), &[]), FixCode::None),
            ("ok, compat", insp(V::Ok, Some(Arch::I386), elf(Some(Arch::I386)), &["compat_32bit"]), FixCode::None),
            ("ok, config lies", insp(V::Ok, amd, elf(amd), &["config_arch_mismatch"]), FixCode::FixBuildStage),
            // A platform finding does not hide a cause of another kind.
            ("crlf, forced", insp(V::ScriptCrlf, None, script(1), &["platform_forced"]), FixCode::ConvertToLf),
            ("glibc on musl, stale", insp(V::MissingLoader, amd, loader("/lib64/ld-linux-x86-64.so.2", false), &["stale_image"]), FixCode::UseGlibcBaseOrStatic),
        ];
        for (name, mut i, want) in cases {
            assert_eq!(choose(&i, None).code, want, "{name}");
            settle(&mut i);
            assert_eq!(i.fix_code, want, "{name}");
            // The inspector's sentence stands unless a finding names another cause.
            let rewritten = matches!(
                want,
                FixCode::RemovePlatformOverride | FixCode::DeployByDigest
            ) || [CONFIG_ARCH_MISMATCH, INDEX_CONFIG_DISAGREE]
                .iter()
                .any(|c| i.findings.iter().any(|f| f.code == *c));
            assert_eq!(
                i.fix != "the inspector's sentence",
                rewritten,
                "{name}: {}",
                i.fix
            );
        }
    }

    #[test]
    fn the_sentence_fits_the_cause() {
        let arm = Some(Arch::Arm64);
        let elf = vec![step(Role::Argv0, "/app", true, arm)];
        // The config lies: the build stage, never "schedule the pod on aarch64 nodes".
        let mut lies = insp(
            Verdict::ArchMismatch,
            arm,
            elf.clone(),
            &["config_arch_mismatch"],
        );
        settle(&mut lies);
        assert!(
            lies.fix.contains("$TARGETARCH") && lies.fix.contains("/app"),
            "{}",
            lies.fix
        );
        assert!(!lies.fix.contains("nodeSelector") && !lies.fix.contains("Publish"));
        // Forced: names the override, the index digest to pull by and the cached copy.
        let forced = Variant::Forced {
            image: "registry.example/shop/orders:3.0".into(),
            index_digest: "sha256:1111".into(),
            running: "linux/arm64".into(),
            running_manifest: "sha256:2222".into(),
            node_platform: "linux/amd64".into(),
            node_manifest: "sha256:3333".into(),
        };
        let mut i = insp(Verdict::ArchMismatch, arm, elf.clone(), &[]);
        settle(&mut i);
        assert_eq!(i.fix_code, FixCode::PublishMultiarch);
        note_variant(&mut i, &forced);
        assert_eq!(i.fix_code, FixCode::RemovePlatformOverride);
        assert_eq!(i.findings[0].code, variant::PLATFORM_FORCED);
        for part in [
            "--platform",
            "linux/arm64 variant of registry.example/shop/orders:3.0",
            "registry.example/shop/orders@sha256:1111",
            "imagePullPolicy",
            "crictl rmi registry.example/shop/orders:3.0",
        ] {
            assert!(i.fix.contains(part), "{part}: {}", i.fix);
        }
        assert!(!i.fix.contains("Publish"), "{}", i.fix);
        // Settling again (more findings) keeps the sentence the facts wrote.
        let written = i.fix.clone();
        i.findings.push(Finding {
            code: "single_arch_image",
            detail: String::new(),
        });
        settle(&mut i);
        assert_eq!(i.fix, written);
        assert_eq!(
            i.findings
                .iter()
                .filter(|f| f.code == variant::PLATFORM_FORCED)
                .count(),
            1
        );
        note_variant(&mut i, &forced);
        assert_eq!(
            i.findings
                .iter()
                .filter(|f| f.code == variant::PLATFORM_FORCED)
                .count(),
            1,
            "noted once"
        );
        // Stale: the index digest to deploy by, and how the node pulls the tag again.
        let stale = Variant::Stale {
            image: "registry.example/shop/api:1.0".into(),
            manifest: "sha256:4444".into(),
            platform: "linux/arm64".into(),
            index_digest: "sha256:5555".into(),
            index_name: "registry.example/shop/api@sha256:5555".into(),
            node_platform: "linux/amd64".into(),
        };
        let mut i = insp(Verdict::ArchMismatch, arm, elf, &["single_arch_image"]);
        note_variant(&mut i, &stale);
        assert_eq!(i.fix_code, FixCode::DeployByDigest);
        for part in [
            "registry.example/shop/api@sha256:5555",
            "imagePullPolicy: Always",
            "crictl rmi registry.example/shop/api:1.0",
        ] {
            assert!(i.fix.contains(part), "{part}: {}", i.fix);
        }
    }

    #[test]
    fn verify_answers_for_the_whole_image() {
        let none = [FixCode::None, FixCode::None];
        assert_eq!(for_image(&none, &[], true).code, FixCode::DeployByDigest);
        assert_eq!(for_image(&none, &[], false).code, FixCode::PublishMultiarch);
        let missing = for_image(&none, &["linux/amd64".into()], true);
        assert_eq!(missing.code, FixCode::PublishMultiarch);
        assert!(missing.sentence.unwrap().contains("linux/amd64"));
        let failing = [FixCode::None, FixCode::FixBuildStage];
        assert_eq!(
            for_image(&failing, &["linux/s390x".into()], true),
            Fix {
                code: FixCode::FixBuildStage,
                sentence: None
            }
        );
    }

    #[test]
    fn codes_round_trip_and_serialize_as_codes() {
        for c in FixCode::ALL {
            assert_eq!(FixCode::from_code(c.code()), Some(c));
            assert_eq!(
                serde_json::to_string(&c).unwrap(),
                format!("\"{}\"", c.code())
            );
        }
        let mut codes: Vec<&str> = FixCode::ALL.iter().map(|c| c.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), FixCode::ALL.len());
    }
}
