//! Shebang lines parsed exactly like `fs/binfmt_script.c`: only the first
//! BINPRM_BUF_SIZE (256) bytes are seen, the interpreter ends at a space, tab or NUL, one
//! optional argument follows, trailing spaces and tabs are trimmed — and a carriage return
//! is none of those, so a CRLF line keeps its `\r`.

use serde::Serialize;

use crate::binfmt::BINPRM_BUF_SIZE;

const UTF8_BOM: &[u8] = b"\xef\xbb\xbf";

/// What the kernel makes of a file starting with `#!`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Shebang {
    /// The kernel will exec `interpreter [arg] path`.
    Interpreter {
        interpreter: String,
        arg: Option<String>,
    },
    /// The kernel returns ENOEXEC: the line is only blanks, or the interpreter path does not
    /// end within the 256-byte buffer.
    Rejected { reason: String },
}

fn spacetab(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Parses `head` (the file's first bytes) if it starts with `#!`.
pub fn parse(head: &[u8]) -> Option<Shebang> {
    if !head.starts_with(b"#!") {
        return None;
    }
    // The kernel's buffer: 256 bytes, zero-filled past the end of the file; the last byte is
    // treated as the end of the buffer (buf_end = buf + sizeof(buf) - 1).
    let mut buf = [0u8; BINPRM_BUF_SIZE];
    let n = head.len().min(BINPRM_BUF_SIZE);
    buf[..n].copy_from_slice(&head[..n]);
    let buf_end = BINPRM_BUF_SIZE - 1;
    // The kernel's helpers scan `first..=last`: the buffer's last byte is looked at (a blank
    // or NUL there ends an interpreter path), though it never belongs to a string.
    let next_non_spacetab = |from: usize, to: usize| (from..=to).find(|&i| !spacetab(buf[i]));
    let next_terminator =
        |from: usize, to: usize| (from..=to).find(|&i| spacetab(buf[i]) || buf[i] == 0);

    let mut i_end = match buf.iter().position(|&b| b == b'\n') {
        Some(nl) => nl,
        None => {
            let Some(start) = next_non_spacetab(2, buf_end) else {
                return Some(Shebang::Rejected {
                    reason: "the #! line holds only blanks".into(),
                });
            };
            if next_terminator(start, buf_end).is_none() {
                return Some(Shebang::Rejected {
                    reason: format!(
                        "the interpreter path does not end within the kernel's {BINPRM_BUF_SIZE}-byte buffer"
                    ),
                });
            }
            buf_end
        }
    };
    while i_end > 2 && spacetab(buf[i_end - 1]) {
        i_end -= 1;
    }
    let i_name = match next_non_spacetab(2, i_end) {
        Some(i) if i != i_end => i,
        _ => {
            return Some(Shebang::Rejected {
                reason: "no interpreter after #!".into(),
            })
        }
    };
    // The strings are C strings in the buffer: each ends at the first NUL, and `*i_end`
    // becomes one.
    let cstr = |from: usize, to: usize| {
        let end = (from..to).find(|&i| buf[i] == 0).unwrap_or(to);
        String::from_utf8_lossy(&buf[from..end]).into_owned()
    };
    let i_sep = next_terminator(i_name, i_end);
    // An argument only after a blank (a NUL ends the line for the kernel); it may be
    // empty: "#!/bin/sh \0" passes "" before the script's path.
    let arg = match i_sep {
        Some(sep) if buf[sep] != 0 && sep < i_end => {
            next_non_spacetab(sep, i_end).map(|a| cstr(a.min(i_end), i_end))
        }
        _ => None,
    };
    let name_end = match (i_sep, &arg) {
        (Some(sep), Some(_)) => sep,
        _ => i_end,
    };
    Some(Shebang::Interpreter {
        interpreter: cstr(i_name, name_end),
        arg,
    })
}

/// A UTF-8 byte order mark in front of `#!` hides the shebang from the kernel.
pub fn bom_before_shebang(head: &[u8]) -> bool {
    head.strip_prefix(UTF8_BOM)
        .is_some_and(|rest| rest.starts_with(b"#!"))
}

/// Looks like text a person meant as a script: no NUL, valid UTF-8 (a cut-off final
/// character allowed), mostly printable.
pub fn looks_like_text(head: &[u8]) -> bool {
    if head.is_empty() || head.contains(&0) {
        return false;
    }
    let valid = match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    };
    let control = head
        .iter()
        .filter(|&&b| b < 0x20 && !matches!(b, b'\n' | b'\r' | b'\t' | 0x0c))
        .count();
    valid && control == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn interp(i: &str, a: Option<&str>) -> Option<Shebang> {
        Some(Shebang::Interpreter {
            interpreter: i.into(),
            arg: a.map(Into::into),
        })
    }

    #[test]
    fn shebangs_parse_like_the_kernel() {
        let long_arg = format!("#!/bin/sh {}", "x".repeat(300));
        let long_name = format!("#!/{}", "d".repeat(300));
        let cases: Vec<(&[u8], Option<Shebang>)> = vec![
            (b"#!/bin/sh\n", interp("/bin/sh", None)),
            (b"#! /bin/sh -e \n", interp("/bin/sh", Some("-e"))),
            (
                b"#!/usr/bin/env python3 -u\n",
                interp("/usr/bin/env", Some("python3 -u")),
            ),
            (b"#!/bin/sh\r\n", interp("/bin/sh\r", None)),
            (
                b"#!/usr/bin/env bash\r\n",
                interp("/usr/bin/env", Some("bash\r")),
            ),
            (b"#!/bin/sh", interp("/bin/sh", None)),
            (b"#!\t/bin/bash\t-x\n", interp("/bin/bash", Some("-x"))),
            (b"#!/bin/s\0h\n", interp("/bin/s", None)),
            (
                b"#!   \n",
                Some(Shebang::Rejected {
                    reason: "no interpreter after #!".into(),
                }),
            ),
            (
                b"#!\n",
                Some(Shebang::Rejected {
                    reason: "no interpreter after #!".into(),
                }),
            ),
            (b"echo hi\n", None),
            // Only "#!": the interpreter is "" (the kernel then opens the working directory
            // and fails with EACCES).
            (b"#!", interp("", None)),
            // A blank then a NUL: an empty argument.
            (b"#!/bin/sh \0\n", interp("/bin/sh", Some(""))),
            (b"#!/bin/sh\0 -x\n", interp("/bin/sh", None)),
            (b"#!/bin/sh -x\0y\n", interp("/bin/sh", Some("-x"))),
            (b"\xef\xbb\xbf#!/bin/sh\n", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), want, "{:?}", String::from_utf8_lossy(input));
        }
        // A long argument is cut at the buffer's end but the exec still happens.
        match parse(long_arg.as_bytes()) {
            Some(Shebang::Interpreter { interpreter, arg }) => {
                assert_eq!(interpreter, "/bin/sh");
                assert_eq!(arg.map(|a| a.len()), Some(255 - 10));
            }
            other => panic!("{other:?}"),
        }
        // A path that ends at the buffer's last byte, a blank: accepted (ENOENT when absent).
        let mut last_byte = b"#!/".to_vec();
        last_byte.extend(std::iter::repeat_n(b'a', 252));
        last_byte.push(b' ');
        match parse(&last_byte) {
            Some(Shebang::Interpreter { interpreter, arg }) => {
                assert_eq!(interpreter.len(), 253);
                assert_eq!(arg, None);
            }
            other => panic!("{other:?}"),
        }
        // The same path running into the last byte: ENOEXEC.
        last_byte.pop();
        last_byte.push(b'a');
        assert!(matches!(parse(&last_byte), Some(Shebang::Rejected { .. })));
        // A 300-byte interpreter path never ends inside the buffer: ENOEXEC.
        assert!(matches!(
            parse(long_name.as_bytes()),
            Some(Shebang::Rejected { .. })
        ));
    }

    #[test]
    fn text_and_bom_detection() {
        assert!(bom_before_shebang(b"\xef\xbb\xbf#!/bin/sh\n"));
        assert!(!bom_before_shebang(b"#!/bin/sh\n"));
        assert!(looks_like_text(b"echo hello\r\nexit 0\n"));
        assert!(!looks_like_text(b"\x7fELF\x02\x01"));
        assert!(!looks_like_text(b"MZ\x90\x00"));
        assert!(looks_like_text("caf\u{e9}".as_bytes()));
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_stays_in_the_buffer(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut b = b"#!".to_vec();
            b.extend_from_slice(&bytes);
            match parse(&b) {
                Some(Shebang::Interpreter { interpreter, arg }) => {
                    prop_assert!(!interpreter.contains([' ', '\t', '\0', '\n']));
                    let total = interpreter.len() + arg.map_or(0, |a| a.len());
                    // Lossy UTF-8 can grow bytes up to 3x; the raw span is < 256.
                    prop_assert!(total <= 3 * BINPRM_BUF_SIZE);
                }
                Some(Shebang::Rejected { .. }) => {}
                None => prop_assert!(false, "a #! file is always a shebang"),
            }
        }

        #[test]
        fn generated_lines_round_trip(name in "/[a-z]{1,20}(/[a-z0-9]{1,10}){0,3}", arg in proptest::option::of("[a-z-]{1,10}"), crlf in any::<bool>()) {
            let line = match &arg {
                Some(a) => format!("#!{name} {a}{}\n", if crlf { "\r" } else { "" }),
                None => format!("#!{name}{}\n", if crlf { "\r" } else { "" }),
            };
            let (want_name, want_arg) = match (&arg, crlf) {
                (Some(a), true) => (name.clone(), Some(format!("{a}\r"))),
                (Some(a), false) => (name.clone(), Some(a.clone())),
                (None, true) => (format!("{name}\r"), None),
                (None, false) => (name.clone(), None),
            };
            prop_assert_eq!(parse(line.as_bytes()), Some(Shebang::Interpreter { interpreter: want_name, arg: want_arg }));
        }
    }
}
