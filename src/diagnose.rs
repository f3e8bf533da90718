//! From an inspection and an exit to one `Diagnosis`: the single value that the log line,
//! the counter, the journal line, the Kubernetes Event and the stream message are all made
//! from, so they cannot disagree.
//!
//! Pure: no I/O, no clock reads (times come in with the inputs).

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::fix::FixCode;
use crate::inspect::{Finding, Inspection, Verdict};

/// Who failed: from the containerd container record and its CRI labels.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// containerd namespace (`k8s.io`, `moby`, `default`).
    pub containerd_namespace: String,
    pub container_id: String,
    /// `io.kubernetes.pod.name`
    pub pod: Option<String>,
    /// `io.kubernetes.pod.namespace`
    pub pod_namespace: Option<String>,
    /// `io.kubernetes.pod.uid`
    pub pod_uid: Option<String>,
    /// `io.kubernetes.container.name`
    pub container: Option<String>,
    /// Image reference as the container record names it.
    pub image: String,
    pub image_digest: Option<String>,
    /// Which list of the pod spec the container comes from, when the kubelet says (its
    /// `io.kubernetes.container.type` annotation); `None` when it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_type: Option<ContainerType>,
    /// The CRI attempt number: the kubelet's restart count of this container.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Which runtime runs the container.
    pub runtime: Runtime,
    /// Docker Compose's project and service labels (`com.docker.compose.project`,
    /// `com.docker.compose.service`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compose_project: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compose_service: Option<String>,
}

/// The container runtime a container was seen through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    #[default]
    Containerd,
    Docker,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::Docker => "docker",
        }
    }
}

/// A container's place in the pod spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerType {
    /// `spec.initContainers`
    Init,
    /// `spec.containers`
    Container,
    /// `spec.ephemeralContainers`
    Ephemeral,
}

impl ContainerType {
    /// From the kubelet's annotation value (`init`, `container`, `ephemeral`).
    pub fn from_annotation(v: &str) -> Option<ContainerType> {
        match v {
            "init" => Some(ContainerType::Init),
            "container" => Some(ContainerType::Container),
            "ephemeral" => Some(ContainerType::Ephemeral),
            _ => None,
        }
    }

    /// The Pod field that lists containers of this type.
    pub fn spec_field(self) -> &'static str {
        match self {
            ContainerType::Init => "spec.initContainers",
            ContainerType::Container => "spec.containers",
            ContainerType::Ephemeral => "spec.ephemeralContainers",
        }
    }
}

impl Identity {
    /// The namespace an SRE filters on: the pod's; on Docker the compose project, else
    /// `docker`; else containerd's.
    pub fn namespace(&self) -> &str {
        if let Some(ns) = self.pod_namespace.as_deref() {
            return ns;
        }
        match self.runtime {
            Runtime::Docker => self
                .compose_project
                .as_deref()
                .unwrap_or(crate::docker::DEFAULT_NAMESPACE),
            Runtime::Containerd => &self.containerd_namespace,
        }
    }
}

/// Which observation proved the failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// `/tasks/exit` of the init process with a non-zero status.
    TaskExit,
    /// The container was created but its task never was: runc refused it at create time
    /// (its PATH lookup or stat of argv[0] failed), so no exit will ever come.
    TaskNeverCreated,
    /// Found at reconcile: the task had already stopped with a non-zero status.
    StoppedBeforeWatch,
    /// A later exec in a running container failed (the exec tracer saw the kernel refuse
    /// it).
    ExecError,
}

/// The exit side of a failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Exit {
    pub signal: Signal,
    pub exit_code: Option<u32>,
    pub started_at: Option<DateTime<Utc>>,
    pub exited_at: Option<DateTime<Utc>>,
}

/// One diagnosed failure.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Diagnosis {
    pub node: String,
    #[serde(flatten)]
    pub identity: Identity,
    pub argv: Vec<String>,
    pub verdict: Verdict,
    /// Kubernetes Event reason for the verdict.
    pub reason: &'static str,
    pub symptom: &'static str,
    pub cause: String,
    pub fix: String,
    /// What to change, as a code from a closed set.
    pub fix_code: FixCode,
    pub binary_arch: Option<String>,
    /// Closed-set metric label for `binary_arch` (`unknown` when no ELF decided the verdict).
    #[serde(skip)]
    pub binary_arch_label: &'static str,
    pub node_arch: String,
    pub signal: Signal,
    pub exit_code: Option<u32>,
    pub started_at: Option<DateTime<Utc>>,
    pub exited_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Finding>,
}

/// A failed start is an exec failure only when the files say argv[0] will not exec; the exit
/// code alone proves nothing (runc 1.1 exits 1, runc 1.2 and later 255). An entrypoint that
/// runs and exits as a shell does when its own exec fails (126, 127, busybox's 2) is
/// diagnosed when a program it may exec cannot run ([`Inspection::attributed`]).
pub fn diagnose(node: &str, who: &Identity, i: &Inspection, exit: &Exit) -> Option<Diagnosis> {
    let attributed;
    let i = if i.verdict.will_exec() {
        attributed = i.attributed(exit.exit_code)?;
        &attributed
    } else {
        i
    };
    if exit.signal != Signal::TaskNeverCreated && exit.exit_code == Some(0) {
        return None;
    }
    Some(Diagnosis {
        node: node.to_string(),
        identity: who.clone(),
        argv: i.argv.clone(),
        verdict: i.verdict,
        reason: i.verdict.event_reason(),
        symptom: i.symptom,
        cause: i.cause.clone(),
        fix: i.fix.clone(),
        fix_code: i.fix_code,
        binary_arch: i.binary_arch.map(|a| a.to_string()),
        binary_arch_label: i.binary_arch.map(|a| a.label()).unwrap_or("unknown"),
        node_arch: i.node_arch.to_string(),
        signal: exit.signal,
        exit_code: exit.exit_code,
        started_at: exit.started_at,
        exited_at: exit.exited_at,
        findings: i.findings.clone(),
    })
}

impl Diagnosis {
    /// One sentence for logs and the CLI timeline.
    pub fn headline(&self) -> String {
        let who = match (
            &self.identity.pod_namespace,
            &self.identity.pod,
            &self.identity.container,
        ) {
            (Some(ns), Some(p), Some(c)) => format!("{ns}/{p} container {c}"),
            _ => format!("container {}", self.identity.container_id),
        };
        format!(
            "{who} ({}): {} — {}",
            self.identity.image, self.verdict, self.cause
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inspection(v: Verdict) -> Inspection {
        Inspection::sample(v)
    }

    fn exit(signal: Signal, code: Option<u32>) -> Exit {
        Exit {
            signal,
            exit_code: code,
            started_at: None,
            exited_at: None,
        }
    }

    #[test]
    fn only_failures_the_files_explain_are_diagnosed() {
        let who = Identity {
            pod: Some("p".into()),
            pod_namespace: Some("team".into()),
            container: Some("c".into()),
            ..Default::default()
        };
        let cases = [
            (Verdict::ArchMismatch, exit(Signal::TaskExit, Some(1)), true),
            (
                Verdict::ArchMismatch,
                exit(Signal::TaskExit, Some(255)),
                true,
            ),
            (
                Verdict::ArchMismatch,
                exit(Signal::TaskExit, Some(0)),
                false,
            ),
            (Verdict::Ok, exit(Signal::TaskExit, Some(1)), false),
            (Verdict::Emulated, exit(Signal::TaskExit, Some(139)), false),
            (
                Verdict::NotFound,
                exit(Signal::TaskNeverCreated, None),
                true,
            ),
            (
                Verdict::ScriptCrlf,
                exit(Signal::StoppedBeforeWatch, Some(127)),
                true,
            ),
        ];
        for (v, e, want) in cases {
            let d = diagnose("node-1", &who, &inspection(v), &e);
            assert_eq!(d.is_some(), want, "{v:?} {e:?}");
            if let Some(d) = d {
                assert_eq!(d.reason, v.event_reason());
                assert_eq!(d.identity.namespace(), "team");
                assert_eq!(d.binary_arch.as_deref(), Some("arm64"));
                assert_eq!(d.fix_code, FixCode::PublishMultiarch);
            }
        }
    }
}

#[cfg(test)]
mod attribution_tests {
    use super::*;
    use crate::inspect::Suspect;
    use crate::platform::Arch;

    /// An entrypoint that runs, and may exec an arm64 program it cannot be sure of.
    fn runs_with_suspect(suspects: Vec<Suspect>) -> Inspection {
        Inspection {
            verdict: Verdict::Ok,
            cause: "runs".into(),
            fix: "Nothing to fix.".into(),
            fix_code: crate::fix::FixCode::None,
            symptom: Verdict::Ok.symptom(),
            argv: vec!["/start.sh".into()],
            node_arch: Arch::Amd64,
            binary_arch: Some(Arch::Amd64),
            handler: None,
            chain: Vec::new(),
            findings: Vec::new(),
            bytes_read: 0,
            suspects,
        }
    }

    #[test]
    fn shell_exits_are_attributed_to_the_program_that_cannot_run() {
        let arm = Suspect {
            program: "/usr/local/bin/server".into(),
            verdict: Verdict::ArchMismatch,
            cause: "start.sh may exec /usr/local/bin/server (line 3), and it is linux/arm64".into(),
            fix: "Publish a multi-arch image.".into(),
            symptom: "exec format error",
            binary_arch: Some(Arch::Arm64),
        };
        let who = Identity::default();
        let exit = |code| Exit {
            signal: Signal::TaskExit,
            exit_code: Some(code),
            started_at: None,
            exited_at: None,
        };
        let cases = [
            (vec![arm.clone()], 127, Some(Verdict::ArchMismatch)),
            (vec![arm.clone()], 126, Some(Verdict::ArchMismatch)),
            (vec![arm.clone()], 2, Some(Verdict::ArchMismatch)),
            (vec![arm.clone()], 1, None),
            (vec![arm.clone()], 0, None),
            (Vec::new(), 127, None),
        ];
        for (suspects, code, want) in cases {
            let d = diagnose("n", &who, &runs_with_suspect(suspects), &exit(code));
            assert_eq!(d.as_ref().map(|d| d.verdict), want, "exit {code}");
            if let Some(d) = d {
                assert_eq!(d.binary_arch.as_deref(), Some("arm64"));
                assert_eq!(d.symptom, "exec format error");
                assert!(d.cause.contains("/usr/local/bin/server"), "{}", d.cause);
                assert!(d.findings.iter().any(|f| f.code == "exit_attributed"));
            }
        }
    }
}
