//! Human-readable reports: short, pasteable into an incident channel.

use std::fmt::Write;

use crate::binfmt::Table;
use crate::inspect::{Inspection, Role};
use crate::platform::Node;

/// The `archwatch inspect` report.
pub fn inspection(i: &Inspection, node: &Node) -> String {
    let mut s = String::new();
    let argv0 = i.argv.first().map(String::as_str).unwrap_or("");
    let headline = if i.verdict.will_exec() {
        if i.verdict == crate::inspect::Verdict::Ok {
            format!("{argv0} will exec on this node")
        } else {
            format!("{argv0} will exec on this node, under emulation")
        }
    } else {
        format!(
            "{argv0} will NOT exec on this node: {}",
            i.verdict.symptom()
        )
    };
    let _ = writeln!(s, "verdict: {} — {headline}", i.verdict.code());
    let _ = writeln!(s, "node:    linux/{} ({})", node.arch, node.arch.uname());
    if let Some(a) = i.binary_arch {
        let _ = writeln!(s, "binary:  linux/{a} ({})", a.uname());
    }
    let _ = writeln!(s, "cause:   {}", i.cause);
    let _ = writeln!(s, "fix:     {} ({})", i.fix, i.fix_code);
    for f in &i.findings {
        let _ = writeln!(s, "note:    {}: {}", f.code, f.detail);
    }
    let _ = writeln!(s, "chain:");
    for step in &i.chain {
        let role = match step.role {
            Role::Argv0 => "argv[0]",
            Role::Interpreter => "#!",
            Role::EnvTarget => "env runs",
            Role::Loader => "loader",
            Role::Emulator => "emulator",
            Role::Exec => "exec",
        };
        let mut line = format!("  {role:<9}{}", step.requested);
        for h in &step.hops {
            let _ = write!(line, " -> {} ({})", h.target, h.link);
        }
        match &step.resolved {
            Some(r) if r != &step.requested => {
                let _ = write!(line, " = {r}");
            }
            _ => {}
        }
        let _ = write!(line, ": {}", step.what);
        let _ = writeln!(s, "{line}");
    }
    s
}

/// The `archwatch binfmt` table.
pub fn binfmt(t: &Table, dir: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "binfmt_misc at {dir}: {} ({} handlers)",
        if t.enabled {
            "enabled"
        } else {
            "DISABLED (no handler runs)"
        },
        t.handlers.len()
    );
    if t.handlers.is_empty() {
        let _ = writeln!(
            s,
            "no handlers: foreign-architecture binaries fail with exec format error"
        );
        return s;
    }
    let _ = writeln!(
        s,
        "{:<24} {:<9} {:<10} {:<6} {:<22} interpreter",
        "NAME", "STATE", "ARCH", "FLAGS", "IN CONTAINERS"
    );
    for h in &t.handlers {
        let arch = h.arch.map(|a| a.to_string()).unwrap_or_else(|| "-".into());
        let containers = if h.fix_binary() {
            "yes (F: fixed binary)"
        } else {
            "only if present inside"
        };
        let _ = writeln!(
            s,
            "{:<24} {:<9} {:<10} {:<6} {:<22} {}",
            h.name,
            if h.enabled { "enabled" } else { "disabled" },
            arch,
            if h.flags.is_empty() {
                "-"
            } else {
                h.flags.as_str()
            },
            containers,
            h.interpreter
        );
    }
    s
}
