//! Verdict codes: the stable contract shared by JSON output, metric labels, the journal and
//! Kubernetes Event reasons.

use serde::Serialize;

/// Will argv[0] exec on this node, and if not, how does it fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Ok,
    Emulated,
    ArchMismatch,
    EmulatorMissing,
    MissingLoader,
    ScriptCrlf,
    ScriptInterpreterMissing,
    ScriptNoShebang,
    NotExecutable,
    NotFound,
    SymlinkLoop,
    NotARegularFile,
    UnknownFormat,
}

impl Verdict {
    pub const ALL: [Verdict; 13] = [
        Verdict::Ok,
        Verdict::Emulated,
        Verdict::ArchMismatch,
        Verdict::EmulatorMissing,
        Verdict::MissingLoader,
        Verdict::ScriptCrlf,
        Verdict::ScriptInterpreterMissing,
        Verdict::ScriptNoShebang,
        Verdict::NotExecutable,
        Verdict::NotFound,
        Verdict::SymlinkLoop,
        Verdict::NotARegularFile,
        Verdict::UnknownFormat,
    ];

    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Emulated => "emulated",
            Verdict::ArchMismatch => "arch_mismatch",
            Verdict::EmulatorMissing => "emulator_missing",
            Verdict::MissingLoader => "missing_loader",
            Verdict::ScriptCrlf => "script_crlf",
            Verdict::ScriptInterpreterMissing => "script_interpreter_missing",
            Verdict::ScriptNoShebang => "script_no_shebang",
            Verdict::NotExecutable => "not_executable",
            Verdict::NotFound => "not_found",
            Verdict::SymlinkLoop => "symlink_loop",
            Verdict::NotARegularFile => "not_a_regular_file",
            Verdict::UnknownFormat => "unknown_format",
        }
    }

    pub fn from_code(code: &str) -> Option<Verdict> {
        Verdict::ALL.into_iter().find(|v| v.code() == code)
    }

    /// Whether the process image will be replaced (natively or under emulation).
    pub fn will_exec(self) -> bool {
        matches!(self, Verdict::Ok | Verdict::Emulated)
    }

    /// What the kernel or runtime says when it fails (strerror of the errno).
    pub fn symptom(self) -> &'static str {
        match self {
            Verdict::Ok | Verdict::Emulated => "runs",
            Verdict::ArchMismatch | Verdict::ScriptNoShebang | Verdict::UnknownFormat => {
                "exec format error"
            }
            Verdict::EmulatorMissing
            | Verdict::MissingLoader
            | Verdict::ScriptCrlf
            | Verdict::ScriptInterpreterMissing
            | Verdict::NotFound => "no such file or directory",
            Verdict::NotExecutable | Verdict::NotARegularFile => "permission denied",
            Verdict::SymlinkLoop => "too many levels of symbolic links",
        }
    }

    /// Kubernetes Event reason (PascalCase).
    pub fn event_reason(self) -> &'static str {
        match self {
            Verdict::Ok => "Started",
            Verdict::Emulated => "RunningUnderEmulation",
            Verdict::ArchMismatch => "ExecFormatError",
            Verdict::EmulatorMissing => "EmulatorMissing",
            Verdict::MissingLoader => "MissingDynamicLoader",
            Verdict::ScriptCrlf => "ScriptCRLF",
            Verdict::ScriptInterpreterMissing => "ScriptInterpreterMissing",
            Verdict::ScriptNoShebang => "ScriptNoShebang",
            Verdict::NotExecutable => "NotExecutable",
            Verdict::NotFound => "EntrypointNotFound",
            Verdict::SymlinkLoop => "EntrypointSymlinkLoop",
            Verdict::NotARegularFile => "EntrypointNotRegularFile",
            Verdict::UnknownFormat => "UnknownExecutableFormat",
        }
    }

    /// `archwatch inspect` exit status: 0 ok, 3 emulated, 1 will not exec.
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Ok => 0,
            Verdict::Emulated => 3,
            _ => 1,
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_serialize_as_codes() {
        for v in Verdict::ALL {
            assert_eq!(Verdict::from_code(v.code()), Some(v));
            assert_eq!(
                serde_json::to_string(&v).unwrap(),
                format!("\"{}\"", v.code())
            );
            assert_eq!(v.will_exec(), v.exit_code() != 1);
        }
    }
}
