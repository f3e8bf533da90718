//! Will argv[0] exec on this node? Inspection of the files alone.
//!
//! The walk mirrors the kernel's `execve` path: runc's PATH lookup, then binfmt_misc
//! (registered ahead of the ELF and script loaders, so it is asked first), then `#!`
//! scripts (recursing into the interpreter, at most five rewrites), then ELF (machine,
//! class, PT_INTERP resolved in the same root). Every file is found through
//! [`crate::rootfs::Rootfs`], so nothing outside the container root is ever read.
//!
//! Then what the program execs in turn (role `exec`): an entrypoint shell script's `exec`
//! (see [`shell`]), or the command a wrapper runs (tini, dumb-init, gosu, su-exec, env,
//! s6-overlay's `/init`). A program that will exec something that cannot run is not `ok`: the
//! verdict is that program's. What cannot be told for sure is a finding, never a guess.
//!
//! Every check is made as the container's user ([`Creds`]): the owner/group/other bits of
//! each file exec'd and of each directory searched on the way, with the capabilities the
//! process has at that exec.
//!
//! "Cannot run" is a [`Verdict`], not an error: `Err` means the files could not be read.

pub mod census;
pub mod elf;
pub mod script;
pub mod shell;
pub mod verdict;

#[cfg(test)]
mod tests;

use serde::Serialize;

use crate::binfmt::{self, Table};
use crate::platform::{Arch, Nativity, Node};
use crate::rootfs::{
    self, Creds, Entry, FileKind, Hop, Layers, LookupStyle, Resolved, RootfsError, Stack, Want,
};
use crate::source::{read_vec, Source};
use elf::{ElfInfo, Libc, Parsed};
use script::Shebang;
pub use verdict::Verdict;

/// The kernel fails an exec after this many interpreter rewrites (fs/exec.c, exec_binprm).
const MAX_REWRITES: usize = 5;
/// Programs followed through what they exec (script → wrapper → script → ...).
const MAX_EXECS: usize = 8;
/// Wrappers whose target is judged when argv is this long at most.
const MAX_WRAPPER_ARGS: usize = 256;

/// What to inspect.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    pub argv: &'a [String],
    /// `PATH` from the process environment; `None` means runc's default.
    pub path_env: Option<&'a str>,
    /// Working directory inside the container.
    pub cwd: &'a str,
    /// Architecture the image metadata claims, to catch metadata that lies.
    pub claimed_arch: Option<Arch>,
    /// The container's user (`process.user`); `None`: root with a container's default
    /// capabilities.
    pub user: Option<&'a Creds>,
}

/// The node's side of the question.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    pub node: &'a Node,
    pub binfmt: &'a Table,
}

/// The answer.
#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    pub verdict: Verdict,
    /// One sentence: why.
    pub cause: String,
    /// One sentence: what to change.
    pub fix: String,
    /// What to change, as a code from a closed set ([`crate::fix`] chooses it).
    pub fix_code: crate::fix::FixCode,
    /// What the kernel or runtime will say.
    pub symptom: &'static str,
    pub argv: Vec<String>,
    pub node_arch: Arch,
    /// Architecture of the ELF file that decided the verdict, when there is one.
    pub binary_arch: Option<Arch>,
    /// binfmt_misc handler that takes the binary, when one does.
    pub handler: Option<String>,
    /// Files followed, in order: argv[0], interpreters, loader, emulator.
    pub chain: Vec<Step>,
    /// Facts beside the verdict (`config_arch_mismatch`, `compat_32bit`, ...).
    pub findings: Vec<Finding>,
    pub bytes_read: u64,
    /// Programs that cannot run and that the process may exec (an exec archwatch cannot be
    /// sure of, another executable of the image): when the container exits 126 or 127
    /// although its entrypoint runs, they explain it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suspects: Vec<Suspect>,
}

/// A program that will not run, which the container may exec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Suspect {
    /// Its path (as found in the image).
    pub program: String,
    pub verdict: Verdict,
    pub cause: String,
    pub fix: String,
    pub symptom: &'static str,
    pub binary_arch: Option<Arch>,
}

/// Exit statuses of a shell (or a wrapper) whose exec failed: 126 (found, cannot exec),
/// 127 (not found; glibc's execvp falling back to a missing /bin/sh), and 2 (busybox's
/// `exec` runs a file the kernel refused with ENOEXEC as a shell script, which a binary
/// fails as a syntax error).
pub const EXEC_FAILURE_EXITS: [u32; 3] = [2, 126, 127];

impl Inspection {
    /// For a container whose entrypoint runs but that exited with `exit_code`: the
    /// inspection that names the program that explains the exit, when one does.
    pub fn attributed(&self, exit_code: Option<u32>) -> Option<Inspection> {
        if !self.verdict.will_exec() {
            return None;
        }
        let code = exit_code?;
        if !EXEC_FAILURE_EXITS.contains(&code) {
            return None;
        }
        let s = self.suspects.first()?;
        let mut i = self.clone();
        i.verdict = s.verdict;
        i.symptom = s.symptom;
        i.binary_arch = s.binary_arch;
        i.cause = format!(
            "{} runs, but the container exited {code}, as a shell or wrapper does when its exec fails: {}",
            self.argv.first().map(String::as_str).unwrap_or("the entrypoint"),
            s.cause
        );
        i.fix.clone_from(&s.fix);
        i.findings.push(Finding {
            code: "exit_attributed",
            detail: format!(
                "exit {code} within the start window attributed to {} ({})",
                s.program, s.verdict
            ),
        });
        Some(i)
    }
}

/// One file on the way from argv[0] to the code that runs.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub role: Role,
    /// The path as written (argv[0], `#!` line, PT_INTERP, handler interpreter).
    pub requested: String,
    /// Canonical path inside the root, when it exists.
    pub resolved: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hops: Vec<Hop>,
    /// Short description: `ELF 64-bit LSB arm64, static`, `script (#!/bin/sh)`, `directory`.
    pub what: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elf: Option<ElfInfo>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Argv0,
    Interpreter,
    EnvTarget,
    Loader,
    Emulator,
    /// A program the previous one execs: an entrypoint script's `exec`, a wrapper's command.
    Exec,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub code: &'static str,
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("no command: argv is empty (give one after --, or an image with an entrypoint)")]
    EmptyArgv,
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error("layer {layer} was removed during the inspection (snapshot deleted): what it held is unknown")]
    Vanished { layer: String },
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

impl InspectError {
    pub fn kind(&self) -> &'static str {
        match self {
            InspectError::EmptyArgv => "empty_argv",
            InspectError::Rootfs(e) => e.kind(),
            InspectError::Vanished { .. } => "snapshot_vanished",
            InspectError::Read { .. } => "read",
        }
    }
}

/// Inspects `req.argv[0]` in `root` for the node in `ctx`.
pub fn inspect<L: Layers>(
    root: &Stack<L>,
    req: &Request,
    ctx: Context,
) -> Result<Inspection, InspectError> {
    let argv0 = req.argv.first().ok_or(InspectError::EmptyArgv)?;
    // Only this inspection's lookups count.
    root.take_unsure();
    let who = req.user.cloned().unwrap_or_else(Creds::root);
    let mut w = Walk {
        root,
        req,
        ctx,
        chain: Vec::new(),
        findings: Vec::new(),
        suspects: Vec::new(),
        bytes: 0,
        handler: None,
        who,
        execs: 0,
    };
    let d = w.argv0(argv0);
    // Checked after the walk: a layer removed while it ran makes any answer, an error
    // included, one about files that are no longer the image's.
    if let Some(layer) = root.backend().vanished() {
        return Err(InspectError::Vanished { layer });
    }
    let d = d?;
    // An answer that an opaque directory nobody could read may hide: the verdict stands on
    // files the kernel may not show (`trusted.overlay.opaque` needs CAP_SYS_ADMIN).
    for u in root.take_unsure() {
        w.findings.push(Finding {
            code: "overlay_opaque_unknown",
            detail: u.to_string(),
        });
    }
    if let (Some(claimed), Some(real)) = (req.claimed_arch, d.binary_arch) {
        if !same_arch(claimed, real) {
            w.findings.push(Finding {
                code: "config_arch_mismatch",
                detail: format!(
                    "the image config says {claimed} but {} is a linux/{real} binary: the metadata lies, the kernel tells the truth",
                    d.file
                ),
            });
        }
    }
    let mut inspection = Inspection {
        verdict: d.verdict,
        cause: d.cause,
        fix: d.fix,
        fix_code: crate::fix::FixCode::None,
        symptom: d.symptom,
        argv: req.argv.to_vec(),
        node_arch: ctx.node.arch,
        binary_arch: d.binary_arch,
        handler: w.handler,
        chain: w.chain,
        findings: w.findings,
        bytes_read: w.bytes,
        suspects: w.suspects,
    };
    crate::fix::settle(&mut inspection);
    Ok(inspection)
}

fn same_arch(a: Arch, b: Arch) -> bool {
    match (a, b) {
        (Arch::Arm(x), Arch::Arm(y)) => x.is_none() || y.is_none() || x == y,
        _ => a == b,
    }
}

/// ELIBBAD: what execve says when the loader (PT_INTERP) is not an ELF file of the binary's
/// machine (fs/binfmt_elf.c, load_elf_binary: the interpreter's e_ident and
/// elf_check_arch()).
const ELIBBAD: &str = "accessing a corrupted shared library";
/// EIO: the loader is shorter than an ELF header (binfmt_elf.c, elf_read()).
const EIO: &str = "input/output error";

/// A decided verdict with its sentences.
struct Decision {
    verdict: Verdict,
    cause: String,
    fix: String,
    binary_arch: Option<Arch>,
    /// What the kernel says (the verdict's usual symptom unless the kernel says otherwise).
    symptom: &'static str,
    /// The file the verdict is about (for findings).
    file: String,
}

impl Decision {
    fn new(verdict: Verdict, file: &str, cause: String, fix: String) -> Decision {
        Decision {
            verdict,
            cause,
            fix,
            binary_arch: None,
            symptom: verdict.symptom(),
            file: file.to_string(),
        }
    }
    fn arch(mut self, arch: Option<Arch>) -> Decision {
        self.binary_arch = arch;
        self
    }
    fn symptom(mut self, symptom: &'static str) -> Decision {
        self.symptom = symptom;
        self
    }
}

struct Walk<'a, L: Layers> {
    root: &'a Stack<L>,
    req: &'a Request<'a>,
    ctx: Context<'a>,
    chain: Vec<Step>,
    findings: Vec<Finding>,
    suspects: Vec<Suspect>,
    bytes: u64,
    handler: Option<String>,
    /// Whose exec is being judged now: the container's user, then what it is after an exec
    /// (capabilities dropped) or after gosu / su-exec.
    who: Creds,
    /// Programs followed through their exec so far.
    execs: usize,
}

fn kind_name(k: FileKind) -> &'static str {
    match k {
        FileKind::Regular => "regular file",
        FileKind::Directory => "directory",
        FileKind::Symlink => "symlink",
        FileKind::Fifo => "FIFO",
        FileKind::Socket => "socket",
        FileKind::CharDevice => "character device",
        FileKind::BlockDevice => "block device",
    }
}

/// What a program execs next, and how.
struct Next {
    argv: Vec<String>,
    path: Option<String>,
    /// Who runs it (gosu / su-exec change the user).
    who: Creds,
    /// `docker-entrypoint.sh execs` / `tini runs`: how the cause names the step.
    via: String,
}

impl<L: Layers> Walk<'_, L> {
    fn node(&self) -> String {
        format!("linux/{}", self.ctx.node.arch)
    }

    fn push(
        &mut self,
        role: Role,
        requested: &str,
        resolved: Option<String>,
        hops: Vec<Hop>,
        what: String,
    ) -> usize {
        self.chain.push(Step {
            role,
            requested: requested.to_string(),
            resolved,
            hops,
            what,
            elf: None,
        });
        self.chain.len() - 1
    }

    /// Whose permissions are named in causes (nothing when root with its overrides).
    fn as_who(&self) -> String {
        if self.who.is_privileged() {
            String::new()
        } else {
            format!(" for {}", self.who.describe())
        }
    }

    /// A directory on the way that the user may not search (EACCES): the step is recorded as
    /// unreachable and the decision names the directory. `r` is a `Resolved::Denied`.
    fn unreachable(&mut self, role: Role, requested: &str, r: Resolved) -> Decision {
        let (at, mode, uid, gid) = match &r {
            Resolved::Denied {
                at, mode, uid, gid, ..
            } => (at.clone(), *mode, *uid, *gid),
            _ => (String::new(), 0, 0, 0),
        };
        self.push(role, requested, None, r.into_hops(), "unreachable".into());
        Decision::new(
            Verdict::NotExecutable,
            requested,
            format!(
                "{} {requested} cannot be reached{}: the directory {at} (mode {mode:04o}, owner {uid}:{gid}) may not be searched",
                role_name(role),
                self.as_who()
            ),
            format!("Let the container's user search {at} (chmod o+x, or a group it is in), or run the container as a user that may."),
        )
    }

    fn argv0(&mut self, argv0: &str) -> Result<Decision, InspectError> {
        let who = self.who.clone();
        let lookup = self.root.lookup_exec_as(
            argv0,
            self.req.path_env,
            self.req.cwd,
            Some(&who),
            LookupStyle::Runc,
        )?;
        let path_list = self.req.path_env.unwrap_or(rootfs::DEFAULT_PATH);
        let args: Vec<String> = self.req.argv.iter().skip(1).cloned().collect();
        match lookup.resolved {
            Resolved::Found { entry, hops } => {
                if lookup.path_exhausted {
                    let why = if entry.kind == FileKind::Directory {
                        "a directory".to_string()
                    } else {
                        "not executable".to_string()
                    };
                    self.push(
                        Role::Argv0,
                        argv0,
                        Some(entry.path.clone()),
                        hops,
                        kind_name(entry.kind).into(),
                    );
                    return Ok(Decision::new(
                        Verdict::NotFound,
                        argv0,
                        format!(
                            "runc's PATH lookup skips {} because it is {why}, and no other directory of PATH={path_list} has an executable {argv0}",
                            entry.path
                        ),
                        format!("Make {} executable (chmod +x, or COPY --chmod=755) or call the right file by its full path.", entry.path),
                    ));
                }
                self.exec(Role::Argv0, argv0, entry, hops, 0, Some(&args))
            }
            d @ Resolved::Denied { .. } => Ok(self.unreachable(Role::Argv0, argv0, d)),
            Resolved::NotFound { missing, hops } => {
                self.push(Role::Argv0, argv0, None, hops, "missing".into());
                let cause = if !argv0.contains('/') {
                    format!(
                        "{argv0} is in none of the directories of PATH={path_list} inside the image"
                    )
                } else if missing.trim_end_matches('/')
                    == absolute(argv0, self.req.cwd).trim_end_matches('/')
                {
                    format!("{argv0} does not exist in the image")
                } else {
                    format!("{argv0} does not exist in the image: {missing} is missing")
                };
                Ok(Decision::new(
                    Verdict::NotFound,
                    argv0,
                    cause,
                    format!("Point the entrypoint or command at a file the image has, or add {argv0} to the image (check the build stage that should COPY it)."),
                ))
            }
            Resolved::NotADirectory { at, hops } => {
                self.push(Role::Argv0, argv0, None, hops, "missing".into());
                Ok(Decision::new(
                    Verdict::NotFound,
                    argv0,
                    format!("{argv0} cannot exist: {at} is a file, not a directory"),
                    format!("Point the entrypoint or command at a file the image has (the path through {at} is wrong)."),
                ))
            }
            Resolved::Loop { hops } => {
                let at = hops.last().map(|h| h.link.clone()).unwrap_or_default();
                self.push(Role::Argv0, argv0, None, hops, "symlink loop".into());
                Ok(Decision::new(
                    Verdict::SymlinkLoop,
                    argv0,
                    format!(
                        "resolving {argv0} follows more than {} symlinks (a loop through {at})",
                        rootfs::MAX_SYMLINK_HOPS
                    ),
                    format!("Fix the symlink {at} in the image so the chain ends at a real file."),
                ))
            }
        }
    }

    /// The kernel's part: exec `entry` (found as `requested`), `rewrites` interpreters deep.
    /// `args` (the program's arguments after argv[0]) when what it execs in turn is to be
    /// followed; `None` for interpreters, loaders and emulators.
    fn exec(
        &mut self,
        role: Role,
        requested: &str,
        entry: Entry,
        hops: Vec<Hop>,
        rewrites: usize,
        args: Option<&[String]>,
    ) -> Result<Decision, InspectError> {
        let path = entry.path.clone();
        if entry.kind != FileKind::Regular {
            self.push(
                role,
                requested,
                Some(path.clone()),
                hops,
                kind_name(entry.kind).into(),
            );
            return Ok(Decision::new(
                Verdict::NotARegularFile,
                &path,
                format!(
                    "{} {path} is a {}, which the kernel refuses to exec",
                    role_name(role),
                    kind_name(entry.kind)
                ),
                format!(
                    "Point the {} at a regular file, not a {}.",
                    role_target(role),
                    kind_name(entry.kind)
                ),
            ));
        }
        if entry.mode & 0o111 == 0 {
            self.push(
                role,
                requested,
                Some(path.clone()),
                hops,
                format!("regular file, mode {:04o}", entry.mode),
            );
            return Ok(Decision::new(
                Verdict::NotExecutable,
                &path,
                format!("{} {path} has mode {:04o}: no execute bit", role_name(role), entry.mode),
                format!("Set the execute bit on {path} in the image (RUN chmod +x, or COPY --chmod=755)."),
            ));
        }
        if !self.who.may(Want::Exec, entry.mode, entry.uid, entry.gid) {
            self.push(
                role,
                requested,
                Some(path.clone()),
                hops,
                format!(
                    "regular file, mode {:04o}, owner {}:{}",
                    entry.mode, entry.uid, entry.gid
                ),
            );
            return Ok(Decision::new(
                Verdict::NotExecutable,
                &path,
                format!(
                    "{} {path} has mode {:04o} and owner {}:{}: {} may not execute it",
                    role_name(role),
                    entry.mode,
                    entry.uid,
                    entry.gid,
                    self.who.describe()
                ),
                format!("Make {path} executable by the container's user (COPY --chmod=755, or --chown to that user), or run the container as its owner."),
            ));
        }
        let src = self.root.open_file(&entry)?;
        let result = self.exec_file(role, requested, &entry, hops, &src, rewrites, args);
        self.bytes += src.bytes_read();
        let d = result?;
        // What a binary wrapper runs (a script's exec was followed in `script`).
        match (args, &d.binary_arch) {
            (Some(args), Some(_)) if d.verdict.will_exec() => {
                match self.wrapper_target(requested, &entry, args)? {
                    Some(next) => self.follow(d, next),
                    None => Ok(d),
                }
            }
            _ => Ok(d),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn exec_file(
        &mut self,
        role: Role,
        requested: &str,
        entry: &Entry,
        hops: Vec<Hop>,
        src: &L::File,
        rewrites: usize,
        args: Option<&[String]>,
    ) -> Result<Decision, InspectError> {
        let path = entry.path.clone();
        let read_err = |source| InspectError::Read {
            path: path.clone(),
            source,
        };
        let head = read_vec(src, 0, binfmt::BINPRM_BUF_SIZE).map_err(read_err)?;

        // binfmt_misc is registered ahead of the ELF and script loaders.
        if let Some(h) = self.ctx.binfmt.matching(&head, &path) {
            let h = h.clone();
            return self.emulate(role, requested, entry, hops, src, &h);
        }

        if head.starts_with(b"#!") {
            let idx = self.push(role, requested, Some(path.clone()), hops, "script".into());
            return self.script(idx, requested, entry, src, &head, rewrites, args);
        }
        if head.starts_with(b"\x7fELF") {
            return self.elf(role, requested, &path, hops, src);
        }
        let (verdict, what, cause, fix) = if head.is_empty() {
            (
                Verdict::UnknownFormat,
                "empty file".to_string(),
                format!("{path} is an empty file"),
                format!("Rebuild the image so {path} holds the program (a failed build step or COPY left it empty)."),
            )
        } else if script::bom_before_shebang(&head) {
            (
                Verdict::ScriptNoShebang,
                "script with a byte order mark".to_string(),
                format!("{path} starts with a UTF-8 byte order mark before #!, so the kernel does not see a shebang"),
                format!("Save {path} as UTF-8 without BOM (e.g. sed -i '1s/^\\xEF\\xBB\\xBF//') and rebuild."),
            )
        } else if script::looks_like_text(&head) {
            (
                Verdict::ScriptNoShebang,
                "text without #!".to_string(),
                format!("{path} is text without a #! line; the kernel does not run scripts without one (only a shell does)"),
                format!("Add a #! line such as #!/bin/sh as the very first bytes of {path}, or run it as sh {path}."),
            )
        } else {
            let name = format_name(&head);
            (
                Verdict::UnknownFormat,
                name.clone(),
                format!("{path} is {name}, which Linux cannot exec"),
                format!("Ship a Linux ELF binary for {} in the image.", self.node()),
            )
        };
        self.push(role, requested, Some(path.clone()), hops, what);
        Ok(Decision::new(verdict, &path, cause, fix))
    }

    fn emulate(
        &mut self,
        role: Role,
        requested: &str,
        entry: &Entry,
        hops: Vec<Hop>,
        src: &L::File,
        h: &binfmt::Handler,
    ) -> Result<Decision, InspectError> {
        let path = entry.path.clone();
        let elf = match elf::parse(src).map_err(|source| InspectError::Read {
            path: path.clone(),
            source,
        })? {
            Parsed::Elf(i) => Some(*i),
            Parsed::Truncated(_) => None,
        };
        let arch = elf.as_ref().map(|e| e.arch);
        let what = elf
            .as_ref()
            .map(|e| e.describe())
            .unwrap_or_else(|| "file".into());
        let idx = self.push(role, requested, Some(path.clone()), hops, what);
        self.chain[idx].elf = elf.clone();
        self.handler = Some(h.name.clone());
        let arch_s = arch
            .map(|a| a.to_string())
            .unwrap_or_else(|| "foreign".into());
        if !h.fix_binary() {
            let who = self.who.clone();
            match self.root.resolve_as(&h.interpreter, "/", Some(&who))? {
                Resolved::Found { entry: e, hops }
                    if e.kind == FileKind::Regular
                        && e.mode & 0o111 != 0
                        && who.may(Want::Exec, e.mode, e.uid, e.gid) =>
                {
                    self.push(
                        Role::Emulator,
                        &h.interpreter,
                        Some(e.path),
                        hops,
                        format!("binfmt_misc interpreter of {}", h.name),
                    );
                }
                Resolved::Found { entry: e, hops } if e.kind == FileKind::Regular => {
                    self.push(
                        Role::Emulator,
                        &h.interpreter,
                        Some(e.path.clone()),
                        hops,
                        format!(
                            "regular file, mode {:04o}, owner {}:{}",
                            e.mode, e.uid, e.gid
                        ),
                    );
                    return Ok(Decision::new(
                        Verdict::NotExecutable,
                        &path,
                        format!(
                            "{path} is a linux/{arch_s} binary that binfmt_misc handler {} runs with {}, which has mode {:04o} and owner {}:{}: {} may not execute it",
                            h.name, h.interpreter, e.mode, e.uid, e.gid, who.describe()
                        ),
                        format!("Register the {} handler with the F (fix-binary) flag, or better publish a {} image.", h.name, self.node()),
                    )
                    .arch(arch));
                }
                other => {
                    let hops = other.into_hops();
                    self.push(Role::Emulator, &h.interpreter, None, hops, "missing".into());
                    return Ok(Decision::new(
                        Verdict::EmulatorMissing,
                        &path,
                        format!(
                            "{path} is a linux/{arch_s} binary; binfmt_misc handler {} takes it but was registered without the F flag, so the kernel looks for {} inside the container, where it does not exist",
                            h.name, h.interpreter
                        ),
                        format!("Register the {} handler with the F (fix-binary) flag, or better publish a {} image.", h.name, self.node()),
                    )
                    .arch(arch));
                }
            }
        }
        // The emulator loads the binary's own loader from the container root.
        if let Some(d) = self.loader(&path, elf.as_ref())? {
            return Ok(d.arch(arch));
        }
        Ok(Decision::new(
            Verdict::Emulated,
            &path,
            format!("{path} is a linux/{arch_s} binary on a {} node; it runs only because binfmt_misc handler {} emulates it with {}", self.node(), h.name, h.interpreter),
            format!("Publish a multi-arch image that includes {}: emulation is slow and fails on any node without the {} handler.", self.node(), h.name),
        )
        .arch(arch))
    }

    #[allow(clippy::too_many_arguments)]
    fn script(
        &mut self,
        idx: usize,
        requested: &str,
        entry: &Entry,
        src: &L::File,
        head: &[u8],
        rewrites: usize,
        args: Option<&[String]>,
    ) -> Result<Decision, InspectError> {
        let path = entry.path.as_str();
        let (interp, arg) = match script::parse(head) {
            Some(Shebang::Interpreter { interpreter, arg }) => (interpreter, arg),
            Some(Shebang::Rejected { reason }) => {
                self.chain[idx].what = "script with an unusable #! line".into();
                return Ok(Decision::new(
                    Verdict::ScriptNoShebang,
                    path,
                    format!("the #! line of {path} gives the kernel no interpreter: {reason}"),
                    format!("Fix the first line of {path} to name an interpreter, e.g. #!/bin/sh."),
                ));
            }
            None => unreachable_shebang(),
        };
        self.chain[idx].what = match &arg {
            Some(a) => format!("script (#!{interp} {a})"),
            None => format!("script (#!{interp})"),
        };
        if rewrites >= MAX_REWRITES {
            return Ok(Decision::new(
                Verdict::SymlinkLoop,
                path,
                format!("{path} is interpreter number {} in a chain of scripts; the kernel gives up after {MAX_REWRITES}", rewrites + 1),
                "Shorten the chain of #! interpreters (point the #! line at a binary).".into(),
            ));
        }
        let crlf_fix = format!("Convert {path} to LF line endings (dos2unix, or .gitattributes '*.sh text eol=lf') and rebuild the image.");
        let who = self.who.clone();
        let resolved = self.root.resolve_as(&interp, self.req.cwd, Some(&who))?;
        let (ientry, hops) = match resolved {
            Resolved::Found { entry, hops } => (entry, hops),
            d @ Resolved::Denied { .. } => {
                return Ok(self.unreachable(Role::Interpreter, &interp, d));
            }
            other => {
                let hops = other.into_hops();
                self.push(Role::Interpreter, &interp, None, hops, "missing".into());
                if let Some(stripped) = interp.strip_suffix('\r') {
                    return Ok(Decision::new(
                        Verdict::ScriptCrlf,
                        path,
                        format!("{path} has Windows (CRLF) line endings: the kernel looks for the interpreter \"{stripped}\\r\", which does not exist"),
                        crlf_fix,
                    ));
                }
                return Ok(Decision::new(
                    Verdict::ScriptInterpreterMissing,
                    path,
                    format!("{path} starts with #!{interp}, and {interp} does not exist in the image"),
                    format!("Install {interp} in the image, or change the #! line of {path} to an interpreter the image has (e.g. #!/bin/sh)."),
                ));
            }
        };
        let d = self.exec(Role::Interpreter, &interp, ientry, hops, rewrites + 1, None)?;
        if !d.verdict.will_exec() {
            return Ok(d);
        }
        let mut shell = shell::is_shell(&interp);
        if let Some(a) = &arg {
            if a.ends_with('\r') {
                return Ok(Decision {
                    verdict: Verdict::ScriptCrlf,
                    cause: format!("{path} has Windows (CRLF) line endings: {interp} receives the argument \"{}\\r\" and fails", a.trim_end_matches('\r')),
                    fix: crlf_fix,
                    symptom: Verdict::ScriptCrlf.symptom(),
                    ..d
                });
            }
            if a.is_empty() {
                // "#!/bin/sh \0": the kernel passes an empty argument before the script's
                // path (fs/binfmt_script.c: i_arg points at the NUL), and the interpreter
                // takes it for its script.
                let finding = Finding {
                    code: "shebang_empty_argument",
                    detail: format!(
                        "the #! line of {path} ends in a NUL after a blank: the kernel passes {interp} an empty argument before {path}, and a shell then fails to open '' (exit 2)"
                    ),
                };
                self.findings.push(finding);
                self.suspects.push(Suspect {
                    program: path.to_string(),
                    verdict: Verdict::ScriptNoShebang,
                    cause: format!("the #! line of {path} makes the kernel pass {interp} an empty argument, which it takes for its script"),
                    fix: format!("Remove the NUL byte from the first line of {path}."),
                    symptom: "no such file or directory",
                    binary_arch: d.binary_arch,
                });
                return Ok(d);
            }
            if interp.rsplit('/').next() == Some("env") {
                if let Some(d2) = self.env_target(path, a, rewrites)? {
                    if !d2.verdict.will_exec() {
                        return Ok(d2);
                    }
                    shell = shell::is_shell(a.trim_start_matches("-S").trim());
                }
            } else if !a.starts_with('-') {
                // `#!/bin/sh script-of-its-own`: not the file's own commands.
                shell = false;
            }
        }
        // What the script execs, when the shell runs it with known arguments.
        let Some(args) = args else { return Ok(d) };
        if !shell || self.execs >= MAX_EXECS {
            return Ok(d);
        }
        if !self.who.may(Want::Read, entry.mode, entry.uid, entry.gid) {
            self.findings.push(Finding {
                code: "script_unreadable",
                detail: format!(
                    "{path} has mode {:04o} and owner {}:{}: {} may exec it, but {interp} may not read it",
                    entry.mode,
                    entry.uid,
                    entry.gid,
                    self.who.describe()
                ),
            });
            return Ok(d);
        }
        let body =
            read_vec(src, 0, shell::MAX_SCRIPT_BYTES).map_err(|source| InspectError::Read {
                path: path.to_string(),
                source,
            })?;
        let path_now = self.req.path_env.map(str::to_string);
        let plan = shell::plan(
            &body,
            &shell::Start {
                // The kernel passes the script as runc found it (its PATH lookup result).
                dollar0: if requested.contains('/') {
                    requested
                } else {
                    path
                },
                args,
                uid: self.who.uid,
                gid: self.who.gid,
                path: path_now.as_deref().or(Some(rootfs::DEFAULT_PATH)),
            },
        );
        let name = path.rsplit('/').next().unwrap_or(path).to_string();
        let after = self.who.after_exec();
        match plan {
            shell::Plan::Exec { argv, line, path } => self.follow(
                d,
                Next {
                    via: format!("{name} execs {} (line {line})", argv.join(" ")),
                    argv,
                    path,
                    who: after,
                },
            ),
            shell::Plan::Maybe { candidates, why } => {
                self.maybe(&name, candidates, &why, &after)?;
                Ok(d)
            }
            shell::Plan::Nothing => Ok(d),
        }
    }

    /// Execs that may happen: each is judged aside (its steps and findings are not the
    /// chain's); those that cannot run are suspects, and the doubt is a finding.
    fn maybe(
        &mut self,
        script: &str,
        candidates: Vec<shell::Candidate>,
        why: &str,
        who: &Creds,
    ) -> Result<(), InspectError> {
        let mut named = Vec::new();
        for c in candidates {
            let Some(program) = c.argv.first().cloned() else {
                continue;
            };
            let (chain, findings, handler) =
                (self.chain.len(), self.findings.len(), self.handler.clone());
            let saved = std::mem::replace(&mut self.who, who.clone());
            self.execs += 1;
            let r = self.target(&program, &c.argv[1..], c.path.as_deref());
            self.execs -= 1;
            self.who = saved;
            self.chain.truncate(chain);
            self.findings.truncate(findings);
            self.handler = handler;
            let d = r?;
            named.push(format!("{program} (line {}: {})", c.line, d.verdict));
            if !d.verdict.will_exec() {
                self.suspects.push(Suspect {
                    program: d.file.clone(),
                    verdict: d.verdict,
                    cause: format!(
                        "{script} may exec {program} (line {}), and {}",
                        c.line, d.cause
                    ),
                    fix: d.fix,
                    symptom: d.symptom,
                    binary_arch: d.binary_arch,
                });
            }
        }
        let detail = if named.is_empty() {
            format!("archwatch cannot tell what {script} execs: {why}")
        } else {
            format!(
                "{script} may exec {}, but archwatch cannot be sure: {why}",
                named.join(", ")
            )
        };
        self.findings.push(Finding {
            code: "exec_uncertain",
            detail,
        });
        Ok(())
    }

    /// Judges what a program execs next (role `exec`): its verdict becomes the program's
    /// when it will not run (or runs only under emulation).
    fn follow(&mut self, d: Decision, next: Next) -> Result<Decision, InspectError> {
        let Some(program) = next.argv.first().cloned() else {
            return Ok(d);
        };
        if self.execs >= MAX_EXECS {
            self.findings.push(Finding {
                code: "exec_uncertain",
                detail: format!(
                    "{}: more than {MAX_EXECS} programs exec one another, archwatch stops following",
                    next.via
                ),
            });
            return Ok(d);
        }
        let saved = std::mem::replace(&mut self.who, next.who);
        self.execs += 1;
        let r = self.target(&program, &next.argv[1..], next.path.as_deref());
        self.execs -= 1;
        self.who = saved;
        let t = r?;
        if t.verdict == Verdict::Ok
            || (t.verdict == Verdict::Emulated && d.verdict == Verdict::Emulated)
        {
            return Ok(d);
        }
        Ok(Decision {
            cause: format!("{}, and {}", next.via, t.cause),
            ..t
        })
    }

    /// Looks `program` up (as a shell's or libc's execvp does) and judges it.
    fn target(
        &mut self,
        program: &str,
        args: &[String],
        path: Option<&str>,
    ) -> Result<Decision, InspectError> {
        let who = self.who.clone();
        let path_list = path.unwrap_or(rootfs::DEFAULT_PATH);
        let lookup = self.root.lookup_exec_as(
            program,
            Some(path_list),
            self.req.cwd,
            Some(&who),
            LookupStyle::Execvp,
        )?;
        match lookup.resolved {
            Resolved::Found { entry, hops } if !lookup.path_exhausted => {
                self.exec(Role::Exec, program, entry, hops, 0, Some(args))
            }
            Resolved::Found { entry, hops } if lookup.denied => {
                // Found, but every candidate was refused with EACCES: judge the first one
                // (its cause says why).
                self.exec(Role::Exec, program, entry, hops, 0, None)
            }
            d @ Resolved::Denied { .. } => Ok(self.unreachable(Role::Exec, program, d)),
            other => {
                let hops = other.into_hops();
                self.push(Role::Exec, program, None, hops, "missing".into());
                let cause = if program.contains('/') {
                    format!("{program} does not exist in the image")
                } else {
                    format!("{program} is in none of the directories of PATH={path_list} inside the image")
                };
                Ok(Decision::new(
                    Verdict::NotFound,
                    program,
                    cause,
                    format!("Install {program} in the image, or change what the entrypoint execs."),
                ))
            }
        }
    }

    /// The command a wrapper binary runs: tini, dumb-init, gosu, su-exec, env, s6-overlay's
    /// `/init`. `None` when `entry` is no wrapper or runs nothing.
    fn wrapper_target(
        &mut self,
        requested: &str,
        entry: &Entry,
        args: &[String],
    ) -> Result<Option<Next>, InspectError> {
        if args.len() > MAX_WRAPPER_ARGS || self.execs >= MAX_EXECS {
            return Ok(None);
        }
        let base = |p: &str| p.rsplit('/').next().unwrap_or(p).to_string();
        let names = [base(requested), base(&entry.path)];
        let is = |f: &dyn Fn(&str) -> bool| names.iter().any(|n| f(n));
        let after = self.who.after_exec();
        let path = self.req.path_env.map(str::to_string);
        let next = |argv: Vec<String>, who: Creds, path: Option<String>, name: &str| {
            (!argv.is_empty()).then(|| Next {
                via: format!("{name} runs {}", argv.join(" ")),
                argv,
                path,
                who,
            })
        };
        if is(&|n| n.starts_with("tini") || n == "docker-init" || n == "catatonit") {
            let argv = skip_options(args, &["-e", "-p"]);
            return Ok(next(argv, after, path, &names[0]));
        }
        if is(&|n| n == "dumb-init") {
            let argv = skip_options(args, &["-r", "--rewrite"]);
            return Ok(next(argv, after, path, &names[0]));
        }
        if is(&|n| n == "gosu" || n == "su-exec") {
            let Some((spec, rest)) = args.split_first() else {
                return Ok(None);
            };
            let who = match self.user_by_spec(spec)? {
                Some(c) => c,
                None => {
                    self.findings.push(Finding {
                        code: "exec_uncertain",
                        detail: format!(
                            "{} switches to user {spec}, which the image's /etc/passwd does not name: what it runs is judged as {}",
                            names[0],
                            after.describe()
                        ),
                    });
                    after
                }
            };
            return Ok(next(rest.to_vec(), who, path, &names[0]));
        }
        if is(&|n| n == "env") {
            let mut path = path;
            let mut i = 0;
            while let Some(a) = args.get(i) {
                if a == "--" {
                    i += 1;
                    break;
                }
                if a == "-i" || a == "--ignore-environment" || a == "-" {
                    path = None;
                    i += 1;
                } else if a == "-u" || a == "-C" || a == "--unset" || a == "--chdir" {
                    i += 2;
                } else if a == "-S" || a.starts_with("-S") {
                    // A split string holds the command: not followed.
                    return Ok(None);
                } else if a.starts_with('-') {
                    i += 1;
                } else if let Some(v) = a.strip_prefix("PATH=") {
                    path = Some(v.to_string());
                    i += 1;
                } else if a.contains('=') {
                    i += 1;
                } else {
                    break;
                }
            }
            let argv = args.get(i..).map(<[String]>::to_vec).unwrap_or_default();
            return Ok(next(argv, after, path, "env"));
        }
        if entry.path == "/init" && self.is_s6_overlay()? {
            // s6-overlay starts its services, then runs the container's command.
            return Ok(next(args.to_vec(), after, path, "s6-overlay's /init"));
        }
        Ok(None)
    }

    fn is_s6_overlay(&self) -> Result<bool, InspectError> {
        for p in [
            "/package/admin/s6-overlay",
            "/etc/s6-overlay",
            "/command/s6-svscan",
        ] {
            if let Resolved::Found { .. } = self.root.resolve(p, "/")? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// gosu / su-exec user specs: `uid[:gid]` or names from the image's /etc/passwd and
    /// /etc/group. Without capabilities after the switch (a non-root uid keeps none).
    fn user_by_spec(&mut self, spec: &str) -> Result<Option<Creds>, InspectError> {
        let passwd = self.small_file("/etc/passwd")?;
        let group = self.small_file("/etc/group")?;
        Ok(user_from_files(spec, &passwd, &group))
    }

    /// A small file of the image (at most 64 KiB), empty when absent.
    fn small_file(&mut self, path: &str) -> Result<String, InspectError> {
        let Resolved::Found { entry, .. } = self.root.resolve(path, "/")? else {
            return Ok(String::new());
        };
        if entry.kind != FileKind::Regular {
            return Ok(String::new());
        }
        let src = self.root.open_file(&entry)?;
        let bytes = read_vec(&src, 0, 64 * 1024).map_err(|source| InspectError::Read {
            path: path.into(),
            source,
        })?;
        self.bytes += src.bytes_read();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// `#!/usr/bin/env NAME`: env looks NAME up in PATH and execs it.
    fn env_target(
        &mut self,
        path: &str,
        arg: &str,
        rewrites: usize,
    ) -> Result<Option<Decision>, InspectError> {
        let name = if let Some(rest) = arg.strip_prefix("-S") {
            match rest.split_whitespace().next() {
                Some(n) => n.to_string(),
                None => return Ok(None),
            }
        } else if arg.starts_with('-') {
            return Ok(None);
        } else if arg.contains([' ', '\t']) {
            self.push(Role::EnvTarget, arg, None, Vec::new(), "missing".into());
            return Ok(Some(Decision::new(
                Verdict::ScriptInterpreterMissing,
                path,
                format!("the kernel passes \"{arg}\" to env as one word, so env looks for a program with that whole name"),
                format!("Use '#!/usr/bin/env -S {arg}' or call the interpreter by its full path in {path}."),
            )));
        } else {
            arg.to_string()
        };
        let who = self.who.clone();
        let lookup = self.root.lookup_exec_as(
            &name,
            self.req.path_env,
            self.req.cwd,
            Some(&who),
            LookupStyle::Execvp,
        )?;
        match lookup.resolved {
            Resolved::Found { entry, hops } if !lookup.path_exhausted || lookup.denied => self
                .exec(Role::EnvTarget, &name, entry, hops, rewrites + 1, None)
                .map(Some),
            d @ Resolved::Denied { .. } => Ok(Some(self.unreachable(Role::EnvTarget, &name, d))),
            other => {
                let hops = other.into_hops();
                self.push(Role::EnvTarget, &name, None, hops, "missing".into());
                let path_list = self.req.path_env.unwrap_or(rootfs::DEFAULT_PATH);
                Ok(Some(Decision::new(
                    Verdict::ScriptInterpreterMissing,
                    path,
                    format!("{path} runs '#!/usr/bin/env {name}', and no executable {name} is in PATH={path_list} in the image"),
                    format!("Install {name} in the image or change the #! line of {path}."),
                )))
            }
        }
    }

    fn elf(
        &mut self,
        role: Role,
        requested: &str,
        path: &str,
        hops: Vec<Hop>,
        src: &L::File,
    ) -> Result<Decision, InspectError> {
        let parsed = elf::parse(src).map_err(|source| InspectError::Read {
            path: path.to_string(),
            source,
        })?;
        let info = match parsed {
            Parsed::Truncated(why) => {
                self.push(role, requested, Some(path.to_string()), hops, why.clone());
                return Ok(Decision::new(
                    Verdict::UnknownFormat,
                    path,
                    format!("{path} starts like an ELF binary but is not one the kernel can load: {why}"),
                    format!("Rebuild {path}: the file is damaged or cut short (an interrupted download or COPY?)."),
                ));
            }
            Parsed::Elf(i) => *i,
        };
        let idx = self.push(
            role,
            requested,
            Some(path.to_string()),
            hops,
            info.describe(),
        );
        self.chain[idx].elf = Some(info.clone());
        let arch = Some(info.arch);
        if info.osabi != 0 && info.osabi != 3 {
            self.findings.push(Finding {
                code: "foreign_osabi",
                detail: format!("{path} is marked for OS ABI {} (not Linux/System V); it may load and then crash", info.osabi),
            });
        }
        let node = self.ctx.node.arch;
        match self.ctx.node.nativity(info.arch) {
            Nativity::Foreign => {
                let cause = if matches!(
                    (node, info.arch),
                    (Arch::Amd64, Arch::I386) | (Arch::Arm64, Arch::Arm(_))
                ) {
                    format!("{path} is a 32-bit {} binary and this node's kernel cannot run 32-bit binaries", info.arch)
                } else {
                    format!(
                        "{path} is a linux/{} binary and this node is {}; no binfmt_misc handler takes it",
                        info.arch,
                        self.node()
                    )
                };
                return Ok(Decision::new(
                    Verdict::ArchMismatch,
                    path,
                    cause,
                    format!(
                        "Publish a multi-arch image that includes {} (docker buildx build --platform linux/amd64,linux/arm64 ...), or schedule the pod on {} nodes (nodeSelector kubernetes.io/arch: {}).",
                        self.node(),
                        info.arch.uname(),
                        info.arch.oci_architecture()
                    ),
                )
                .arch(arch));
            }
            Nativity::Compat32 => {
                // arch/arm64/include/asm/elf.h, compat_elf_check_arch(): a 32-bit ARM
                // binary needs a non-zero EABI version in e_flags (old-ABI binaries are
                // refused with ENOEXEC).
                if matches!(info.arch, Arch::Arm(_)) && info.e_flags & elf::EF_ARM_EABIMASK == 0 {
                    return Ok(Decision::new(
                        Verdict::ArchMismatch,
                        path,
                        format!("{path} is a 32-bit ARM binary of the old ABI (no EABI version in its ELF flags), which a {node} kernel refuses"),
                        format!("Rebuild {path} for the ARM EABI (arm-linux-gnueabihf), or better for {}.", self.node()),
                    )
                    .arch(arch));
                }
                self.findings.push(Finding {
                    code: "compat_32bit",
                    detail: format!(
                        "{path} is a 32-bit {} binary running through the {node} kernel's compat layer",
                        info.arch
                    ),
                });
            }
            Nativity::Native => {
                if let (Arch::Arm(Some(cpu)), Arch::Arm(Some(bin))) = (node, info.arch) {
                    if bin > cpu {
                        // The kernel checks the machine, not the ISA level: it execs, and
                        // the first instruction the CPU lacks raises SIGILL.
                        self.findings.push(Finding {
                            code: "cpu_variant_too_old",
                            detail: format!(
                                "{path} is built for {} and this node's CPU is {}: it will exec and then die of SIGILL (illegal instruction)",
                                info.arch, node
                            ),
                        });
                    }
                }
            }
        }
        if let Some(why) = &info.malformed {
            return Ok(Decision::new(
                Verdict::UnknownFormat,
                path,
                format!(
                    "{path} is a linux/{} ELF file the kernel refuses to load: {why}",
                    info.arch
                ),
                format!("Rebuild {path} as a Linux executable for {}.", self.node()),
            )
            .arch(arch));
        }
        if let Some(d) = self.loader(path, Some(&info))? {
            return Ok(d.arch(arch));
        }
        Ok(Decision::new(
            Verdict::Ok,
            path,
            format!(
                "{path} is a {} that runs natively on this {} node",
                info.describe(),
                self.node()
            ),
            "Nothing to fix.".into(),
        )
        .arch(arch))
    }

    /// Checks PT_INTERP in the same root; `None` when the loader is fine or not needed.
    fn loader(
        &mut self,
        path: &str,
        info: Option<&ElfInfo>,
    ) -> Result<Option<Decision>, InspectError> {
        let Some(info) = info else { return Ok(None) };
        let Some(interp) = info.interp.clone() else {
            return Ok(None);
        };
        let libc = info.libc.unwrap_or(Libc::Other);
        let who = self.who.clone();
        match self.root.resolve_as(&interp, self.req.cwd, Some(&who))? {
            Resolved::Found { entry, hops } => {
                let may = who.may(Want::Exec, entry.mode, entry.uid, entry.gid);
                if entry.kind != FileKind::Regular || entry.mode & 0o111 == 0 || !may {
                    let what = if entry.kind != FileKind::Regular {
                        format!("a {}", kind_name(entry.kind))
                    } else if entry.mode & 0o111 == 0 {
                        "a file without the execute bit".to_string()
                    } else {
                        format!(
                            "mode {:04o}, owner {}:{}, which {} may not execute",
                            entry.mode,
                            entry.uid,
                            entry.gid,
                            who.describe()
                        )
                    };
                    self.push(
                        Role::Loader,
                        &interp,
                        Some(entry.path.clone()),
                        hops,
                        what.clone(),
                    );
                    let v = if entry.kind == FileKind::Regular {
                        Verdict::NotExecutable
                    } else {
                        Verdict::NotARegularFile
                    };
                    return Ok(Some(Decision::new(
                        v,
                        path,
                        format!("the dynamic loader {interp} of {path} is {what}"),
                        format!(
                            "Repair {interp} in the image (reinstall the {} package).",
                            libc.name()
                        ),
                    )));
                }
                let src = self.root.open_file(&entry)?;
                let head = read_vec(&src, 0, 64);
                let parsed = elf::parse(&src);
                self.bytes += src.bytes_read();
                let read_err = |source| InspectError::Read {
                    path: entry.path.clone(),
                    source,
                };
                let head = head.map_err(read_err)?;
                let parsed = parsed.map_err(read_err)?;
                let header_len = if info.bits == 64 { 64 } else { 52 };
                if head.len() < header_len {
                    self.push(
                        Role::Loader,
                        &interp,
                        Some(entry.path),
                        hops,
                        format!("{} bytes", head.len()),
                    );
                    return Ok(Some(
                        Decision::new(
                            Verdict::UnknownFormat,
                            path,
                            format!("the dynamic loader {interp} of {path} is {} bytes long, shorter than an ELF header: the kernel cannot read it", head.len()),
                            format!("Repair {interp} in the image (reinstall the {} package).", libc.name()),
                        )
                        .symptom(EIO),
                    ));
                }
                match parsed {
                    Parsed::Elf(l) if same_arch(l.arch, info.arch) => {
                        self.push(Role::Loader, &interp, Some(entry.path), hops, l.describe());
                        Ok(None)
                    }
                    Parsed::Elf(l) => {
                        self.push(Role::Loader, &interp, Some(entry.path), hops, l.describe());
                        Ok(Some(
                            Decision::new(
                                Verdict::ArchMismatch,
                                path,
                                format!("{path} is {} but its loader {interp} in the image is {}: the image mixes architectures", info.arch, l.arch),
                                format!("Rebuild the image from one platform's base and binaries ({}).", self.node()),
                            )
                            .symptom(ELIBBAD),
                        ))
                    }
                    Parsed::Truncated(why) => {
                        self.push(Role::Loader, &interp, Some(entry.path), hops, why.clone());
                        Ok(Some(
                            Decision::new(
                                Verdict::UnknownFormat,
                                path,
                                format!("the dynamic loader {interp} of {path} is not an ELF file the kernel can load ({why})"),
                                format!("Repair {interp} in the image (reinstall the {} package).", libc.name()),
                            )
                            .symptom(ELIBBAD),
                        ))
                    }
                }
            }
            d @ Resolved::Denied { .. } => Ok(Some(self.unreachable(Role::Loader, &interp, d))),
            other => {
                let hops = other.into_hops();
                self.push(Role::Loader, &interp, None, hops, "missing".into());
                let other_libc = self.other_libc(info)?;
                let cause = match (libc, &other_libc) {
                    (Libc::Glibc | Libc::Musl, Some((other, loader))) => format!(
                        "{path} is a linux/{} binary linked against {} (loader {interp}), but the image ships {} (loader {loader}) instead",
                        info.arch, libc.name(), other.name()
                    ),
                    _ => format!("{path} is a dynamically linked linux/{} binary and its loader {interp} does not exist in the image", info.arch),
                };
                let fix = match (libc, other_libc) {
                    (Libc::Glibc, Some(_)) => "Build the binary for musl or statically (CGO_ENABLED=0 for Go, target *-linux-musl for Rust), or use a glibc base image (Debian, Ubuntu, distroless) instead of Alpine.".to_string(),
                    (Libc::Musl, Some(_)) => "Build the binary for glibc or statically, or use a musl base image (Alpine) for it.".to_string(),
                    _ => format!("Add the {} runtime (which provides {interp}) to the image, or link the binary statically.", libc.name()),
                };
                Ok(Some(Decision::new(
                    Verdict::MissingLoader,
                    path,
                    cause,
                    fix,
                )))
            }
        }
    }

    /// When the loader is missing: is the *other* libc's loader for this arch there?
    fn other_libc(&self, info: &ElfInfo) -> Result<Option<(Libc, String)>, InspectError> {
        let candidates: Vec<(Libc, String)> = match info.libc {
            Some(Libc::Glibc) => musl_loader(info.arch)
                .map(|l| (Libc::Musl, l))
                .into_iter()
                .collect(),
            Some(Libc::Musl) => glibc_loaders(info.arch)
                .iter()
                .map(|l| (Libc::Glibc, (*l).to_string()))
                .collect(),
            _ => Vec::new(),
        };
        for (libc, loader) in candidates {
            if let Resolved::Found { entry, .. } = self.root.resolve(&loader, "/")? {
                if entry.kind == FileKind::Regular {
                    return Ok(Some((libc, loader)));
                }
            }
        }
        Ok(None)
    }
}

/// A wrapper's arguments past its options: up to `--` or the first non-option word;
/// `with_value` options take the next word.
fn skip_options(args: &[String], with_value: &[&str]) -> Vec<String> {
    let mut i = 0;
    while let Some(a) = args.get(i) {
        if a == "--" {
            i += 1;
            break;
        }
        if !a.starts_with('-') || a == "-" {
            break;
        }
        i += if with_value.contains(&a.as_str()) {
            2
        } else {
            1
        };
    }
    args.get(i..).map(<[String]>::to_vec).unwrap_or_default()
}

/// A user spec (`name|uid[:group|gid]`) resolved with an image's /etc/passwd and
/// /etc/group: `None` when a name is not there. Without capabilities for a non-root uid.
pub fn user_from_files(spec: &str, passwd: &str, group: &str) -> Option<Creds> {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let (uid, mut gid, name) = match u.parse::<u32>() {
        Ok(uid) => (uid, passwd_gid(passwd, |f| f[2] == u).unwrap_or(uid), None),
        Err(_) => passwd_entry(passwd, u)?,
    };
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(x) => x,
            Err(_) => group_gid(group, g)?,
        };
    }
    let groups = name.map(|n| member_of(group, &n)).unwrap_or_default();
    Some(Creds::with_ids(uid, gid, groups))
}

/// [`user_from_files`] with the files of `root` (at most 64 KiB of each, read confined).
pub fn user_in_image<L: Layers>(
    root: &Stack<L>,
    spec: &str,
) -> Result<Option<Creds>, InspectError> {
    let read = |path: &str| -> Result<String, InspectError> {
        let Resolved::Found { entry, .. } = root.resolve(path, "/")? else {
            return Ok(String::new());
        };
        if entry.kind != FileKind::Regular {
            return Ok(String::new());
        }
        let src = root.open_file(&entry)?;
        let bytes = read_vec(&src, 0, 64 * 1024).map_err(|source| InspectError::Read {
            path: path.into(),
            source,
        })?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    Ok(user_from_files(
        spec,
        &read("/etc/passwd")?,
        &read("/etc/group")?,
    ))
}

/// `(uid, gid, name)` of a /etc/passwd user by name.
fn passwd_entry(passwd: &str, name: &str) -> Option<(u32, u32, Option<String>)> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[0] == name)
            .then(|| {
                Some((
                    f[2].parse().ok()?,
                    f[3].parse().ok()?,
                    Some(name.to_string()),
                ))
            })
            .flatten()
    })
}

/// The primary gid of the first /etc/passwd line that `pick` selects.
fn passwd_gid(passwd: &str, pick: impl Fn(&[&str]) -> bool) -> Option<u32> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && pick(&f))
            .then(|| f[3].parse().ok())
            .flatten()
    })
}

fn group_gid(group: &str, name: &str) -> Option<u32> {
    group.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[0] == name)
            .then(|| f[2].parse().ok())
            .flatten()
    })
}

/// The gids of the groups that list `user` as a member.
fn member_of(group: &str, user: &str) -> Vec<u32> {
    group
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[3].split(',').any(|m| m == user))
                .then(|| f[2].parse().ok())
                .flatten()
        })
        .collect()
}

fn unreachable_shebang() -> (String, Option<String>) {
    // script() is only called on heads that start with "#!", for which parse() is Some.
    (String::new(), None)
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Argv0 => "the entrypoint",
        Role::Interpreter => "the #! interpreter",
        Role::EnvTarget => "the program env runs",
        Role::Loader => "the dynamic loader",
        Role::Emulator => "the emulator",
        Role::Exec => "the program exec'd",
    }
}

fn role_target(role: Role) -> &'static str {
    match role {
        Role::Argv0 | Role::EnvTarget | Role::Exec => "entrypoint or command",
        Role::Interpreter => "#! line",
        Role::Loader => "binary's loader",
        Role::Emulator => "binfmt_misc handler",
    }
}

fn absolute(path: &str, cwd: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!(
            "{}/{}",
            cwd.trim_end_matches('/'),
            path.trim_start_matches("./")
        )
    }
}

/// musl's loader name for an arch (`/lib/ld-musl-<arch>.so.1`).
fn musl_loader(arch: Arch) -> Option<String> {
    let a = match arch {
        Arch::Amd64 => "x86_64",
        Arch::I386 => "i386",
        Arch::Arm64 => "aarch64",
        Arch::Arm(_) => "armhf",
        Arch::Ppc64le => "powerpc64le",
        Arch::Ppc64 => "powerpc64",
        Arch::S390x => "s390x",
        Arch::Riscv64 => "riscv64",
        Arch::Mips64le => "mips64el",
        Arch::Mips64 => "mips64",
        Arch::Loong64 => "loongarch64",
        _ => return None,
    };
    Some(format!("/lib/ld-musl-{a}.so.1"))
}

/// glibc's loader names for an arch.
fn glibc_loaders(arch: Arch) -> &'static [&'static str] {
    match arch {
        Arch::Amd64 => &[
            "/lib64/ld-linux-x86-64.so.2",
            "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        ],
        Arch::I386 => &["/lib/ld-linux.so.2"],
        Arch::Arm64 => &["/lib/ld-linux-aarch64.so.1"],
        Arch::Arm(_) => &["/lib/ld-linux-armhf.so.3", "/lib/ld-linux.so.3"],
        Arch::Ppc64le | Arch::Ppc64 => &["/lib64/ld64.so.2", "/lib64/ld64.so.1"],
        Arch::S390x => &["/lib/ld64.so.1"],
        Arch::Riscv64 => &["/lib/ld-linux-riscv64-lp64d.so.1"],
        Arch::Mips64le | Arch::Mips64 => &["/lib64/ld.so.1"],
        Arch::Loong64 => &["/lib64/ld-linux-loongarch-lp64d.so.1"],
        _ => &[],
    }
}

/// Names formats Linux cannot exec, from their magic.
pub fn format_name(head: &[u8]) -> String {
    let m4 = |m: &[u8]| head.starts_with(m);
    if m4(b"\xfe\xed\xfa\xce") || m4(b"\xce\xfa\xed\xfe") {
        "a 32-bit Mach-O (macOS) binary".into()
    } else if m4(b"\xfe\xed\xfa\xcf") || m4(b"\xcf\xfa\xed\xfe") {
        "a 64-bit Mach-O (macOS) binary".into()
    } else if m4(b"\xca\xfe\xba\xbe") {
        "a universal Mach-O (macOS) binary or a Java class file".into()
    } else if m4(b"MZ") {
        "a Windows PE executable".into()
    } else if m4(b"\0asm") {
        "a WebAssembly module".into()
    } else if m4(b"\x1f\x8b") {
        "gzip-compressed data".into()
    } else if m4(b"PK\x03\x04") {
        "a zip archive (a .jar?)".into()
    } else if m4(b"!<arch>\n") {
        "a static library archive".into()
    } else if m4(b"\x7fELF") {
        "a truncated ELF file".into()
    } else {
        let hex: Vec<String> = head.iter().take(4).map(|b| format!("{b:02x}")).collect();
        format!(
            "data of no known executable format (starts {})",
            hex.join(" ")
        )
    }
}

/// Runs every parser of image bytes over `data` as if it were argv[0]'s content: for fuzzing
/// and for the byte-count benchmark. Returns the number of bytes the parsers asked for.
pub fn inspect_bytes(data: &[u8]) -> u64 {
    struct Counting<'a> {
        data: &'a [u8],
        read: std::cell::Cell<u64>,
    }
    impl Source for Counting<'_> {
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.data.read_at(offset, buf)?;
            self.read.set(self.read.get() + n as u64);
            Ok(n)
        }
        fn len(&self) -> u64 {
            self.data.len() as u64
        }
    }
    let src = Counting {
        data,
        read: std::cell::Cell::new(0),
    };
    let head = &data[..data.len().min(binfmt::BINPRM_BUF_SIZE)];
    let _ = script::parse(head);
    let _ = script::bom_before_shebang(head);
    let _ = script::looks_like_text(head);
    let _ = format_name(head);
    // As an entrypoint script's body: what it execs.
    let args = ["-x".to_string(), "app".to_string()];
    let _ = shell::plan(
        data,
        &shell::Start {
            dollar0: "/docker-entrypoint.sh",
            args: &args,
            uid: 1000,
            gid: 1000,
            path: Some(rootfs::DEFAULT_PATH),
        },
    );
    if let Ok(Parsed::Elf(info)) = elf::parse(&src) {
        let _ = info.describe();
    }
    src.read.get()
}

#[cfg(test)]
impl Inspection {
    /// An inspection of `/app` with verdict `v` (binary arm64 on an amd64 node), for the
    /// unit tests of what consumes inspections.
    pub(crate) fn sample(v: Verdict) -> Inspection {
        Inspection {
            verdict: v,
            cause: "c".into(),
            fix: "f".into(),
            fix_code: crate::fix::FixCode::PublishMultiarch,
            symptom: v.symptom(),
            argv: vec!["/app".into()],
            node_arch: crate::platform::Arch::Amd64,
            binary_arch: Some(crate::platform::Arch::Arm64),
            handler: None,
            chain: Vec::new(),
            findings: Vec::new(),
            bytes_read: 0,
            suspects: Vec::new(),
        }
    }
}
