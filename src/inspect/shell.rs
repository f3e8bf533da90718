//! What an entrypoint shell script will exec, read without running it.
//!
//! The script is parsed (POSIX sh: quoting, `$@`, `${1#-}`, `set --`, `if`/`case`,
//! `&&`/`||`, functions, here-documents) and walked with what is known: its arguments, the
//! user's ids (`$(id -u)`), PATH and the variables it assigns itself. Tests (`[`, `test`,
//! `[[`) on those are evaluated; anything else (file tests, command output, variables from
//! outside) is unknown. An `exec` reached for sure ends the walk with its argv
//! ([`Plan::Exec`]); one reached only under a condition that could not be evaluated is a
//! candidate ([`Plan::Maybe`]), never a guess.
//!
//! Bounded: at most [`MAX_SCRIPT_BYTES`] of the script are read, function calls nest at
//! most [`MAX_CALL_DEPTH`] deep and at most [`MAX_STEPS`] commands are walked.

use std::collections::HashMap;

/// Bytes of a script read for its exec.
pub const MAX_SCRIPT_BYTES: usize = 64 * 1024;
const MAX_CALL_DEPTH: usize = 8;
const MAX_STEPS: usize = 20_000;
/// Candidates kept from one script.
const MAX_CANDIDATES: usize = 8;

/// What the script will exec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Reached for sure: the shell is replaced by this argv (`line` is 1-based).
    Exec {
        argv: Vec<String>,
        line: usize,
        /// PATH in effect at that point.
        path: Option<String>,
    },
    /// Execs that may happen, each under a condition archwatch cannot evaluate (or an
    /// exec whose words it cannot evaluate).
    Maybe {
        candidates: Vec<Candidate>,
        why: String,
    },
    /// The script execs nothing (it runs its commands and exits).
    Nothing,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub argv: Vec<String>,
    pub line: usize,
    pub path: Option<String>,
}

/// Whether `interpreter` (a `#!` path, possibly `env`'s argument) is a POSIX shell whose
/// scripts this module reads.
pub fn is_shell(interpreter: &str) -> bool {
    let base = interpreter.rsplit('/').next().unwrap_or(interpreter);
    matches!(
        base,
        "sh" | "bash" | "dash" | "ash" | "ksh" | "mksh" | "zsh"
    )
}

/// What is known when the script starts.
#[derive(Clone, Debug)]
pub struct Start<'a> {
    /// `$0`: the script's path as exec'd.
    pub dollar0: &'a str,
    /// `$1`...
    pub args: &'a [String],
    pub uid: u32,
    pub gid: u32,
    pub path: Option<&'a str>,
}

/// Reads `script` and tells what it will exec.
pub fn plan(script: &[u8], start: &Start) -> Plan {
    let text = String::from_utf8_lossy(&script[..script.len().min(MAX_SCRIPT_BYTES)]);
    let toks = match lex(&text) {
        Some(t) => t,
        None => {
            return Plan::Maybe {
                candidates: Vec::new(),
                why: "its syntax is beyond what archwatch reads".into(),
            }
        }
    };
    let mut p = Parser { toks, pos: 0 };
    let prog = p.list(&[]);
    if p.pos < p.toks.len() {
        return Plan::Maybe {
            candidates: Vec::new(),
            why: format!(
                "its syntax is beyond what archwatch reads (line {})",
                p.toks[p.pos].line
            ),
        };
    }
    let mut vars = HashMap::new();
    if let Some(path) = start.path {
        vars.insert("PATH".to_string(), Val::Known(path.to_string()));
    }
    let mut ev = Eval {
        dollar0: start.dollar0.to_string(),
        args: Some(start.args.to_vec()),
        vars,
        uid: start.uid,
        gid: start.gid,
        funcs: HashMap::new(),
        candidates: Vec::new(),
        unsure: None,
        steps: 0,
        depth: 0,
    };
    match ev.run_list(&prog, true) {
        Flow::Exec(argv, line) => Plan::Exec {
            argv,
            line,
            path: ev.path(),
        },
        Flow::Stop(why) if !why.is_empty() => Plan::Maybe {
            candidates: ev.candidates,
            why,
        },
        _ => match ev.unsure {
            Some(why) if !ev.candidates.is_empty() => Plan::Maybe {
                candidates: ev.candidates,
                why,
            },
            _ => Plan::Nothing,
        },
    }
}

// ---------------------------------------------------------------------------------------
// Words

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Lit(String),
    /// `$name`, `${name...}`: the parameter and its operator (`#`, `##`, `%`, `%%`, `:-`,
    /// `-`, `:` substring, `len`), with the operator's argument.
    Param {
        name: String,
        op: Option<(String, String)>,
        quoted: bool,
    },
    /// `$@` / `$*`.
    All {
        quoted: bool,
    },
    /// `$(...)` or backticks.
    Cmd(String),
}

type Word = Vec<Seg>;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Word(Word, String),
    Op(&'static str),
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    line: usize,
}

const OPS: [&str; 11] = ["&&", "||", ";;", "<<", ">>", ";", "&", "|", "(", ")", "\n"];

/// Splits shell text into words and operators; here-document bodies are skipped.
fn lex(text: &str) -> Option<Vec<Token>> {
    let b: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1;
    let mut heredocs: Vec<(String, bool)> = Vec::new();
    while i < b.len() {
        let c = b[i];
        if c == '\\' && b.get(i + 1) == Some(&'\n') {
            i += 2;
            line += 1;
            continue;
        }
        if c == ' ' || c == '\t' || c == '\r' {
            i += 1;
            continue;
        }
        if c == '#' {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '\n' {
            out.push(Token {
                tok: Tok::Op("\n"),
                line,
            });
            i += 1;
            line += 1;
            // Here-document bodies follow the line that opened them.
            for (delim, strip) in std::mem::take(&mut heredocs) {
                loop {
                    if i >= b.len() {
                        break;
                    }
                    let end = b[i..]
                        .iter()
                        .position(|&x| x == '\n')
                        .map_or(b.len(), |p| i + p);
                    let l: String = b[i..end].iter().collect();
                    i = (end + 1).min(b.len());
                    line += 1;
                    let l = if strip {
                        l.trim_start_matches('\t')
                    } else {
                        &l
                    };
                    if l.trim_end_matches('\r') == delim {
                        break;
                    }
                }
            }
            continue;
        }
        // Redirections with a file descriptor number: 2>&1, 1>/dev/null.
        if c.is_ascii_digit() && matches!(b.get(i + 1), Some('>') | Some('<')) {
            i += 1;
            continue;
        }
        if c == '>' || c == '<' {
            let two: String = b[i..(i + 2).min(b.len())].iter().collect();
            if two == "<<" {
                i += 2;
                let strip = b.get(i) == Some(&'-');
                if strip {
                    i += 1;
                }
                while i < b.len() && (b[i] == ' ' || b[i] == '\t') {
                    i += 1;
                }
                let (w, raw, n) = word(&b, i)?;
                i = n;
                let _ = w;
                let delim: String = raw.chars().filter(|c| *c != '\'' && *c != '"').collect();
                heredocs.push((delim, strip));
                continue;
            }
            // >, >>, <, >&, <&, >|, <>: the target word is dropped.
            i += 1;
            while i < b.len() && matches!(b[i], '>' | '&' | '|') {
                i += 1;
            }
            while i < b.len() && (b[i] == ' ' || b[i] == '\t') {
                i += 1;
            }
            if i < b.len() && !matches!(b[i], '\n' | ';' | '&' | '|' | ')') {
                let (_, _, n) = word(&b, i)?;
                i = n;
            }
            continue;
        }
        if let Some(op) = OPS.iter().find(|op| {
            let s: String = b[i..(i + op.len()).min(b.len())].iter().collect();
            s == **op
        }) {
            out.push(Token {
                tok: Tok::Op(op),
                line,
            });
            i += op.len();
            continue;
        }
        let start_line = line;
        let (w, raw, n) = word(&b, i)?;
        line += raw.matches('\n').count();
        i = n;
        out.push(Token {
            tok: Tok::Word(w, raw),
            line: start_line,
        });
    }
    Some(out)
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// One word from `i`: its segments, its raw text and where it ends.
fn word(b: &[char], mut i: usize) -> Option<(Word, String, usize)> {
    let start = i;
    let mut segs: Word = Vec::new();
    let mut lit = String::new();
    let flush = |lit: &mut String, segs: &mut Word| {
        if !lit.is_empty() {
            segs.push(Seg::Lit(std::mem::take(lit)));
        }
    };
    let mut dquote = false;
    while i < b.len() {
        let c = b[i];
        if !dquote
            && matches!(
                c,
                ' ' | '\t' | '\n' | ';' | '&' | '|' | '(' | ')' | '<' | '>'
            )
        {
            break;
        }
        match c {
            '\'' if !dquote => {
                let end = b[i + 1..].iter().position(|&x| x == '\'')? + i + 1;
                lit.extend(&b[i + 1..end]);
                // An empty '' still makes a word.
                if end == i + 1 {
                    segs.push(Seg::Lit(String::new()));
                }
                i = end + 1;
            }
            '"' => {
                dquote = !dquote;
                if !dquote && segs.is_empty() && lit.is_empty() {
                    segs.push(Seg::Lit(String::new()));
                }
                i += 1;
            }
            '\\' => {
                if let Some(&n) = b.get(i + 1) {
                    if n == '\n' {
                    } else if !dquote || matches!(n, '$' | '`' | '"' | '\\') {
                        lit.push(n);
                    } else {
                        lit.push('\\');
                        lit.push(n);
                    }
                }
                i = (i + 2).min(b.len());
            }
            '`' => {
                let end = b[i + 1..].iter().position(|&x| x == '`')? + i + 1;
                flush(&mut lit, &mut segs);
                segs.push(Seg::Cmd(b[i + 1..end].iter().collect()));
                i = end + 1;
            }
            '$' => {
                let (seg, n) = dollar(b, i, dquote)?;
                match seg {
                    Some(s) => {
                        flush(&mut lit, &mut segs);
                        segs.push(s);
                    }
                    None => lit.push('$'),
                }
                i = n;
            }
            _ => {
                lit.push(c);
                i += 1;
            }
        }
    }
    if dquote {
        return None;
    }
    flush(&mut lit, &mut segs);
    Some((segs, b[start..i].iter().collect(), i))
}

/// A `$` expansion at `i`.
fn dollar(b: &[char], i: usize, quoted: bool) -> Option<(Option<Seg>, usize)> {
    let n = b.get(i + 1).copied();
    match n {
        Some('@') | Some('*') => Some((Some(Seg::All { quoted }), i + 2)),
        Some(c) if c.is_ascii_digit() || c == '#' || c == '?' || c == '$' || c == '!' => Some((
            Some(Seg::Param {
                name: c.to_string(),
                op: None,
                quoted,
            }),
            i + 2,
        )),
        Some(c) if is_name_char(c) => {
            let mut j = i + 1;
            while j < b.len() && is_name_char(b[j]) {
                j += 1;
            }
            Some((
                Some(Seg::Param {
                    name: b[i + 1..j].iter().collect(),
                    op: None,
                    quoted,
                }),
                j,
            ))
        }
        Some('{') => {
            let end = matching(b, i + 1, '{', '}')?;
            let inner: String = b[i + 2..end].iter().collect();
            Some((Some(brace(&inner, quoted)), end + 1))
        }
        Some('(') => {
            let end = matching(b, i + 1, '(', ')')?;
            Some((Some(Seg::Cmd(b[i + 2..end].iter().collect())), end + 1))
        }
        _ => Some((None, i + 1)),
    }
}

/// Index of the bracket closing the one at `open`.
fn matching(b: &[char], open: usize, o: char, c: char) -> Option<usize> {
    let mut depth = 0usize;
    let mut j = open;
    let mut squote = false;
    while j < b.len() {
        let x = b[j];
        if squote {
            if x == '\'' {
                squote = false;
            }
        } else if x == '\'' && o == '(' {
            squote = true;
        } else if x == '\\' {
            j += 1;
        } else if x == o {
            depth += 1;
        } else if x == c {
            depth -= 1;
            if depth == 0 {
                return Some(j);
            }
        }
        j += 1;
    }
    None
}

/// `${...}` contents.
fn brace(inner: &str, quoted: bool) -> Seg {
    if let Some(name) = inner.strip_prefix('#') {
        if !name.is_empty() && name.chars().all(is_name_char) {
            return Seg::Param {
                name: name.into(),
                op: Some(("len".into(), String::new())),
                quoted,
            };
        }
    }
    let name_end =
        if inner.starts_with(|c: char| c.is_ascii_digit() || c == '@' || c == '*' || c == '#') {
            inner
                .char_indices()
                .find(|(_, c)| !c.is_ascii_digit())
                .map_or(inner.len(), |(k, _)| if k == 0 { 1 } else { k })
        } else {
            inner
                .char_indices()
                .find(|(_, c)| !is_name_char(*c))
                .map_or(inner.len(), |(k, _)| k)
        };
    let (name, rest) = inner.split_at(name_end);
    if name == "@" || name == "*" {
        return Seg::All { quoted };
    }
    if rest.is_empty() {
        return Seg::Param {
            name: name.into(),
            op: None,
            quoted,
        };
    }
    for op in ["##", "%%", ":-", ":=", ":+", "#", "%", "-", "=", "+", ":"] {
        if let Some(arg) = rest.strip_prefix(op) {
            return Seg::Param {
                name: name.into(),
                op: Some((op.into(), arg.into())),
                quoted,
            };
        }
    }
    Seg::Cmd(inner.into())
}

// ---------------------------------------------------------------------------------------
// Syntax

#[derive(Clone, Debug)]
enum Node {
    Simple {
        words: Vec<Word>,
        line: usize,
    },
    If {
        arms: Vec<(Vec<AndOr>, Vec<AndOr>)>,
        els: Option<Vec<AndOr>>,
    },
    Case {
        word: Word,
        arms: Vec<(Vec<Word>, Vec<AndOr>)>,
    },
    /// for / while / until: the body may run any number of times.
    Loop(Vec<AndOr>),
    Group(Vec<AndOr>),
    Subshell(Vec<AndOr>),
    Func {
        name: String,
        body: Box<Node>,
    },
}

#[derive(Clone, Debug)]
struct Pipeline {
    bang: bool,
    cmds: Vec<Node>,
}

#[derive(Clone, Debug)]
struct AndOr {
    first: Pipeline,
    /// `true` for `&&`, `false` for `||`.
    rest: Vec<(bool, Pipeline)>,
    background: bool,
}

struct Parser {
    toks: Vec<Token>,
    pos: usize,
}

fn raw_of(t: &Tok) -> Option<&str> {
    match t {
        Tok::Word(_, raw) => Some(raw),
        Tok::Op(_) => None,
    }
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.tok)
    }
    fn peek_raw(&self) -> Option<&str> {
        self.peek().and_then(raw_of)
    }
    fn line(&self) -> usize {
        self.toks
            .get(self.pos)
            .or(self.toks.last())
            .map_or(1, |t| t.line)
    }
    fn skip_newlines(&mut self) {
        while matches!(self.peek(), Some(Tok::Op("\n")) | Some(Tok::Op(";"))) {
            self.pos += 1;
        }
    }
    fn eat_word(&mut self, w: &str) -> bool {
        if self.peek_raw() == Some(w) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// A list of and-or lists until one of `stop` (reserved words) in command position.
    fn list(&mut self, stop: &[&str]) -> Vec<AndOr> {
        let mut out = Vec::new();
        loop {
            self.skip_newlines();
            match self.peek() {
                None => break,
                Some(Tok::Op(")")) | Some(Tok::Op(";;")) => break,
                Some(Tok::Word(_, raw)) if stop.contains(&raw.as_str()) => break,
                _ => {}
            }
            let before = self.pos;
            match self.and_or(stop) {
                Some(a) => out.push(a),
                None => {
                    if self.pos == before {
                        break;
                    }
                }
            }
        }
        out
    }

    fn and_or(&mut self, stop: &[&str]) -> Option<AndOr> {
        let first = self.pipeline(stop)?;
        let mut rest = Vec::new();
        while let Some(Tok::Op(op @ ("&&" | "||"))) = self.peek() {
            let and = *op == "&&";
            self.pos += 1;
            while self.peek() == Some(&Tok::Op("\n")) {
                self.pos += 1;
            }
            rest.push((and, self.pipeline(stop)?));
        }
        let background = self.peek() == Some(&Tok::Op("&"));
        if matches!(
            self.peek(),
            Some(Tok::Op(";")) | Some(Tok::Op("&")) | Some(Tok::Op("\n"))
        ) {
            self.pos += 1;
        }
        Some(AndOr {
            first,
            rest,
            background,
        })
    }

    fn pipeline(&mut self, stop: &[&str]) -> Option<Pipeline> {
        let bang = self.eat_word("!");
        let mut cmds = vec![self.command(stop)?];
        while self.peek() == Some(&Tok::Op("|")) {
            self.pos += 1;
            while self.peek() == Some(&Tok::Op("\n")) {
                self.pos += 1;
            }
            cmds.push(self.command(stop)?);
        }
        Some(Pipeline { bang, cmds })
    }

    fn expect(&mut self, w: &str) -> Option<()> {
        self.skip_newlines();
        self.eat_word(w).then_some(())
    }

    fn command(&mut self, stop: &[&str]) -> Option<Node> {
        let raw = self.peek_raw().map(str::to_string);
        match raw.as_deref() {
            Some("if") => {
                self.pos += 1;
                let mut arms = Vec::new();
                let mut els = None;
                loop {
                    let cond = self.list(&["then"]);
                    self.expect("then")?;
                    let body = self.list(&["elif", "else", "fi"]);
                    arms.push((cond, body));
                    if self.eat_word("elif") {
                        continue;
                    }
                    if self.eat_word("else") {
                        els = Some(self.list(&["fi"]));
                    }
                    self.expect("fi")?;
                    break;
                }
                Some(Node::If { arms, els })
            }
            Some("while") | Some("until") => {
                self.pos += 1;
                let mut body = self.list(&["do"]);
                self.expect("do")?;
                body.extend(self.list(&["done"]));
                self.expect("done")?;
                Some(Node::Loop(body))
            }
            Some("for") => {
                self.pos += 1;
                // for NAME [in WORDS]; do ... done
                while !matches!(self.peek_raw(), Some("do")) {
                    self.peek()?;
                    self.pos += 1;
                }
                self.expect("do")?;
                let body = self.list(&["done"]);
                self.expect("done")?;
                Some(Node::Loop(body))
            }
            Some("case") => {
                self.pos += 1;
                let word = match self.peek()? {
                    Tok::Word(w, _) => w.clone(),
                    Tok::Op(_) => return None,
                };
                self.pos += 1;
                self.expect("in")?;
                let mut arms = Vec::new();
                loop {
                    self.skip_newlines();
                    if self.eat_word("esac") {
                        break;
                    }
                    if self.peek() == Some(&Tok::Op("(")) {
                        self.pos += 1;
                    }
                    let mut pats = Vec::new();
                    loop {
                        match self.peek()? {
                            Tok::Word(w, _) => pats.push(w.clone()),
                            Tok::Op(_) => return None,
                        }
                        self.pos += 1;
                        if self.peek() == Some(&Tok::Op("|")) {
                            self.pos += 1;
                            continue;
                        }
                        break;
                    }
                    if self.peek() != Some(&Tok::Op(")")) {
                        return None;
                    }
                    self.pos += 1;
                    let body = self.list(&["esac"]);
                    arms.push((pats, body));
                    if self.peek() == Some(&Tok::Op(";;")) {
                        self.pos += 1;
                    }
                }
                Some(Node::Case { word, arms })
            }
            Some("{") => {
                self.pos += 1;
                let body = self.list(&["}"]);
                self.expect("}")?;
                Some(Node::Group(body))
            }
            Some("function") => {
                self.pos += 1;
                let name = self.peek_raw()?.trim_end_matches("()").to_string();
                self.pos += 1;
                if self.peek() == Some(&Tok::Op("(")) {
                    self.pos += 2;
                }
                self.skip_newlines();
                let body = self.command(stop)?;
                Some(Node::Func {
                    name,
                    body: Box::new(body),
                })
            }
            _ if self.peek() == Some(&Tok::Op("(")) => {
                self.pos += 1;
                let body = self.list(&[]);
                if self.peek() != Some(&Tok::Op(")")) {
                    return None;
                }
                self.pos += 1;
                Some(Node::Subshell(body))
            }
            _ => {
                let line = self.line();
                let mut words = Vec::new();
                while let Some(Tok::Word(w, raw)) = self.peek() {
                    if words.is_empty() && stop.contains(&raw.as_str()) {
                        break;
                    }
                    words.push(w.clone());
                    self.pos += 1;
                }
                // NAME() { ... }
                if words.len() == 1
                    && self.peek() == Some(&Tok::Op("("))
                    && self.toks.get(self.pos + 1).map(|t| &t.tok) == Some(&Tok::Op(")"))
                {
                    let name = lit_of(&words[0])?;
                    self.pos += 2;
                    self.skip_newlines();
                    let body = self.command(stop)?;
                    return Some(Node::Func {
                        name,
                        body: Box::new(body),
                    });
                }
                if words.is_empty() {
                    return None;
                }
                Some(Node::Simple { words, line })
            }
        }
    }
}

fn lit_of(w: &Word) -> Option<String> {
    let mut s = String::new();
    for seg in w {
        match seg {
            Seg::Lit(l) => s.push_str(l),
            _ => return None,
        }
    }
    Some(s)
}

// ---------------------------------------------------------------------------------------
// Evaluation

#[derive(Clone, Debug, PartialEq, Eq)]
enum Val {
    Known(String),
    Unknown,
}

enum Flow {
    Next,
    /// `exec` reached for sure.
    Exec(Vec<String>, usize),
    /// The shell exits here for sure.
    Exit,
    /// The function returns here for sure.
    Return,
    /// The walk cannot go on with certainty (why).
    Stop(String),
}

struct Eval {
    dollar0: String,
    /// Positional parameters, `None` once unknown.
    args: Option<Vec<String>>,
    vars: HashMap<String, Val>,
    uid: u32,
    gid: u32,
    funcs: HashMap<String, Node>,
    candidates: Vec<Candidate>,
    /// Why some exec may happen that is not certain.
    unsure: Option<String>,
    steps: usize,
    depth: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Truth {
    True,
    False,
    Unknown,
}

impl Eval {
    fn path(&self) -> Option<String> {
        match self.vars.get("PATH") {
            Some(Val::Known(p)) => Some(p.clone()),
            _ => None,
        }
    }

    fn note(&mut self, why: String) {
        if self.unsure.is_none() {
            self.unsure = Some(why);
        }
    }

    fn param(&self, name: &str) -> Val {
        match name {
            "0" => Val::Known(self.dollar0.clone()),
            "#" => match &self.args {
                Some(a) => Val::Known(a.len().to_string()),
                None => Val::Unknown,
            },
            n if n.chars().all(|c| c.is_ascii_digit()) => {
                let Ok(k) = n.parse::<usize>() else {
                    return Val::Unknown;
                };
                match (k.checked_sub(1), &self.args) {
                    // ${00} is $0.
                    (None, _) => Val::Known(self.dollar0.clone()),
                    (Some(i), Some(a)) => Val::Known(a.get(i).cloned().unwrap_or_default()),
                    (Some(_), None) => Val::Unknown,
                }
            }
            n => self.vars.get(n).cloned().unwrap_or(Val::Unknown),
        }
    }

    fn cmd_output(&self, cmd: &str) -> Val {
        match cmd.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["id", "-u"] | ["id", "-ru"] | ["id", "-ur"] => Val::Known(self.uid.to_string()),
            ["id", "-g"] | ["id", "-rg"] | ["id", "-gr"] => Val::Known(self.gid.to_string()),
            _ => Val::Unknown,
        }
    }

    fn seg_value(&self, seg: &Seg) -> Val {
        match seg {
            Seg::Lit(s) => Val::Known(s.clone()),
            Seg::Cmd(c) => self.cmd_output(c),
            Seg::All { .. } => match &self.args {
                Some(a) => Val::Known(a.join(" ")),
                None => Val::Unknown,
            },
            Seg::Param { name, op, .. } => {
                let v = self.param(name);
                let Some((op, arg)) = op else { return v };
                let arg_val = |s: &str| -> Val {
                    match word_of(s) {
                        Some(w) => self.string(&w),
                        None => Val::Unknown,
                    }
                };
                match (op.as_str(), v) {
                    ("len", Val::Known(s)) => Val::Known(s.chars().count().to_string()),
                    (":-" | ":=", Val::Known(s)) if s.is_empty() => arg_val(arg),
                    (":-" | ":=" | "-" | "=", Val::Known(s)) => Val::Known(s),
                    (":+", Val::Known(s)) => {
                        if s.is_empty() {
                            Val::Known(String::new())
                        } else {
                            arg_val(arg)
                        }
                    }
                    ("#" | "##" | "%" | "%%", Val::Known(s)) => match arg_val(arg) {
                        Val::Known(p) => Val::Known(trim_pattern(&s, &p, op)),
                        Val::Unknown => Val::Unknown,
                    },
                    (":", Val::Known(s)) => {
                        // ${x:off:len} (bash)
                        let mut it = arg.splitn(2, ':');
                        let off = it.next().and_then(|o| o.trim().parse::<usize>().ok());
                        let len = it.next().map(|l| l.trim().parse::<usize>().ok());
                        match (off, len) {
                            (Some(o), None) => Val::Known(s.chars().skip(o).collect()),
                            (Some(o), Some(Some(l))) => {
                                Val::Known(s.chars().skip(o).take(l).collect())
                            }
                            _ => Val::Unknown,
                        }
                    }
                    _ => Val::Unknown,
                }
            }
        }
    }

    /// A word as one string (no field splitting), as in `[ "$1" = x ]` or an assignment.
    fn string(&self, w: &Word) -> Val {
        let mut s = String::new();
        for seg in w {
            match self.seg_value(seg) {
                Val::Known(v) => s.push_str(&v),
                Val::Unknown => return Val::Unknown,
            }
        }
        Val::Known(s)
    }

    /// A word as command arguments: `"$@"` gives one field per argument, unquoted
    /// expansions split on blanks, an empty unquoted expansion gives no field.
    fn fields(&self, w: &Word) -> Option<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        let mut cur = String::new();
        // Whether `cur` is a field even when empty (a quoted part was seen).
        let mut have = false;
        for seg in w {
            match seg {
                Seg::All { quoted: true } => {
                    let args = self.args.as_ref()?;
                    for (k, a) in args.iter().enumerate() {
                        cur.push_str(a);
                        if k + 1 < args.len() {
                            out.push(std::mem::take(&mut cur));
                        }
                        have = true;
                    }
                    if args.is_empty() && cur.is_empty() {
                        have = false;
                    }
                }
                Seg::Lit(l) => {
                    cur.push_str(l);
                    have = true;
                }
                Seg::Param { quoted: true, .. } => {
                    let Val::Known(v) = self.seg_value(seg) else {
                        return None;
                    };
                    cur.push_str(&v);
                    have = true;
                }
                _ => {
                    let Val::Known(v) = self.seg_value(seg) else {
                        return None;
                    };
                    let parts: Vec<&str> = v.split_whitespace().collect();
                    for (k, p) in parts.iter().enumerate() {
                        if k > 0 && (have || !cur.is_empty()) {
                            out.push(std::mem::take(&mut cur));
                        }
                        cur.push_str(p);
                        have = true;
                    }
                }
            }
        }
        if have || !cur.is_empty() {
            out.push(cur);
        }
        Some(out)
    }

    fn run_list(&mut self, list: &[AndOr], sure: bool) -> Flow {
        for a in list {
            match self.run_and_or(a, sure) {
                Flow::Next => {}
                f => return f,
            }
        }
        Flow::Next
    }

    fn run_and_or(&mut self, a: &AndOr, sure: bool) -> Flow {
        if a.background {
            return Flow::Next;
        }
        // The first pipeline runs; each next one runs when the previous status allows.
        let mut status = self.status_of(&a.first);
        let mut sure_here = sure;
        let f = self.run_pipeline(&a.first, sure_here);
        if !matches!(f, Flow::Next) {
            return f;
        }
        for (and, p) in &a.rest {
            let runs = match (status, and) {
                (Truth::True, true) | (Truth::False, false) => Truth::True,
                (Truth::False, true) | (Truth::True, false) => Truth::False,
                (Truth::Unknown, _) => Truth::Unknown,
            };
            match runs {
                Truth::False => continue,
                Truth::True => {}
                Truth::Unknown => {
                    sure_here = false;
                    self.note(format!(
                        "it runs {} only if an earlier command {}",
                        describe(p),
                        if *and { "succeeds" } else { "fails" }
                    ));
                }
            }
            let f = self.run_pipeline(p, sure_here);
            if !matches!(f, Flow::Next) {
                return f;
            }
            status = if runs == Truth::True {
                self.status_of(p)
            } else {
                Truth::Unknown
            };
        }
        Flow::Next
    }

    /// Whether a pipeline succeeds, when it is a test archwatch can evaluate.
    fn status_of(&self, p: &Pipeline) -> Truth {
        let t = match p.cmds.as_slice() {
            [Node::Simple { words, .. }] => self.test(words),
            _ => Truth::Unknown,
        };
        if p.bang {
            match t {
                Truth::True => Truth::False,
                Truth::False => Truth::True,
                Truth::Unknown => Truth::Unknown,
            }
        } else {
            t
        }
    }

    fn run_pipeline(&mut self, p: &Pipeline, sure: bool) -> Flow {
        if p.cmds.len() > 1 {
            // Each command of a pipeline runs in a subshell: none replaces this shell.
            return Flow::Next;
        }
        match p.cmds.first() {
            Some(n) => self.run_node(n, sure),
            None => Flow::Next,
        }
    }

    fn run_node(&mut self, n: &Node, sure: bool) -> Flow {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return Flow::Stop("it is longer than archwatch follows".into());
        }
        match n {
            Node::Simple { words, line } => self.simple(words, *line, sure),
            Node::Func { name, body } => {
                self.funcs.insert(name.clone(), (**body).clone());
                Flow::Next
            }
            Node::Group(l) => self.run_list(l, sure),
            Node::Subshell(l) => {
                // An exec in a subshell replaces the subshell, not the script.
                let saved = (self.args.clone(), self.vars.clone());
                let _ = self.run_list(l, false);
                (self.args, self.vars) = saved;
                Flow::Next
            }
            Node::Loop(body) => {
                self.note("it execs inside a loop".into());
                let f = self.branch(body);
                self.args = None;
                f
            }
            Node::If { arms, els } => {
                let mut unknown = false;
                for (cond, body) in arms {
                    let t = self.list_status(cond);
                    match (t, unknown) {
                        (Truth::True, false) => return self.run_list(body, sure),
                        (Truth::False, _) => continue,
                        _ => {
                            unknown = true;
                            self.note(format!(
                                "it execs under a condition archwatch cannot evaluate ({})",
                                describe_list(cond)
                            ));
                            let f = self.branch(body);
                            if !matches!(f, Flow::Next) {
                                return f;
                            }
                        }
                    }
                }
                match els {
                    Some(e) if unknown => self.branch(e),
                    Some(e) => self.run_list(e, sure),
                    None => Flow::Next,
                }
            }
            Node::Case { word, arms } => {
                let v = self.string(word);
                let mut unknown = matches!(v, Val::Unknown);
                for (pats, body) in arms {
                    let m = match &v {
                        Val::Known(s) => {
                            let mut any = Truth::False;
                            for p in pats {
                                match self.string(p) {
                                    Val::Known(pat) if glob(&pat, s) => any = Truth::True,
                                    Val::Known(_) => {}
                                    Val::Unknown => {
                                        if any == Truth::False {
                                            any = Truth::Unknown
                                        }
                                    }
                                }
                            }
                            any
                        }
                        Val::Unknown => Truth::Unknown,
                    };
                    match (m, unknown) {
                        (Truth::True, false) => return self.run_list(body, sure),
                        (Truth::False, _) => continue,
                        _ => {
                            unknown = true;
                            self.note("it execs in a case archwatch cannot evaluate".into());
                            let f = self.branch(body);
                            if !matches!(f, Flow::Next) {
                                return f;
                            }
                        }
                    }
                }
                Flow::Next
            }
        }
    }

    /// Runs a body that may or may not run: its execs are candidates, and what it changes
    /// becomes unknown.
    fn branch(&mut self, body: &[AndOr]) -> Flow {
        let before = (self.args.clone(), self.vars.clone());
        let f = self.run_list(body, false);
        if self.args != before.0 {
            self.args = None;
        }
        let changed: Vec<String> = self
            .vars
            .iter()
            .filter(|(k, v)| before.1.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect();
        for k in changed {
            self.vars.insert(k, Val::Unknown);
        }
        match f {
            Flow::Stop(why) => Flow::Stop(why),
            // An exit or exec in a branch that may not run: the walk goes on after it.
            _ => Flow::Next,
        }
    }

    fn list_status(&mut self, l: &[AndOr]) -> Truth {
        match l {
            [a] if !a.background => {
                let mut t = self.status_of(&a.first);
                for (and, p) in &a.rest {
                    let next = self.status_of(p);
                    t = match (and, t, next) {
                        (true, Truth::False, _) => Truth::False,
                        (true, Truth::True, n) => n,
                        (true, Truth::Unknown, Truth::False) => Truth::False,
                        (false, Truth::True, _) => Truth::True,
                        (false, Truth::False, n) => n,
                        (false, Truth::Unknown, Truth::True) => Truth::True,
                        _ => Truth::Unknown,
                    };
                }
                t
            }
            _ => Truth::Unknown,
        }
    }

    fn simple(&mut self, words: &[Word], line: usize, sure: bool) -> Flow {
        // Leading assignments.
        let mut k = 0;
        let mut assigns = Vec::new();
        while let Some(w) = words.get(k) {
            match assignment(w) {
                Some((name, value)) => {
                    assigns.push((name, self.string(&value)));
                    k += 1;
                }
                None => break,
            }
        }
        let words = &words[k..];
        if words.is_empty() {
            for (n, v) in assigns {
                self.vars.insert(n, if sure { v } else { Val::Unknown });
            }
            return Flow::Next;
        }
        let name = self.string(&words[0]);
        let Val::Known(name) = name else {
            return Flow::Next;
        };
        match name.as_str() {
            "exec" => {
                let rest = &words[1..];
                let mut argv = Vec::new();
                for w in rest {
                    match self.fields(w) {
                        Some(f) => argv.extend(f),
                        None => {
                            let why = format!(
                                "it execs words archwatch cannot evaluate (line {line}: exec {})",
                                rest.iter().map(raw_word).collect::<Vec<_>>().join(" ")
                            );
                            if sure {
                                return Flow::Stop(why);
                            }
                            self.note(why);
                            return Flow::Next;
                        }
                    }
                }
                // `exec` alone (redirections only) changes nothing; `exec -a NAME` (bash).
                while argv
                    .first()
                    .is_some_and(|a| a.starts_with('-') && a != "--")
                {
                    if argv.first().is_some_and(|a| a == "-a") && argv.len() > 1 {
                        argv.drain(..2);
                    } else {
                        argv.remove(0);
                    }
                }
                if argv.first().is_some_and(|a| a == "--") {
                    argv.remove(0);
                }
                if argv.is_empty() {
                    return Flow::Next;
                }
                if sure {
                    Flow::Exec(argv, line)
                } else {
                    if self.candidates.len() < MAX_CANDIDATES
                        && !self.candidates.iter().any(|c| c.argv == argv)
                    {
                        self.candidates.push(Candidate {
                            argv,
                            line,
                            path: self.path(),
                        });
                    }
                    Flow::Next
                }
            }
            "set" => {
                let rest = &words[1..];
                let dashdash = rest.iter().position(|w| lit_of(w).as_deref() == Some("--"));
                match dashdash {
                    Some(p) => {
                        let mut new = Vec::new();
                        for w in &rest[p + 1..] {
                            match self.fields(w) {
                                Some(f) => new.extend(f),
                                None => {
                                    self.args = None;
                                    return Flow::Next;
                                }
                            }
                        }
                        self.args = if sure { Some(new) } else { None };
                    }
                    None => {
                        // `set -e`, `set -x`: options only. `set foo`: new arguments.
                        if rest.iter().any(|w| {
                            !lit_of(w).is_some_and(|l| l.starts_with('-') || l.starts_with('+'))
                        }) {
                            self.args = None;
                        }
                    }
                }
                Flow::Next
            }
            "shift" => {
                let n = words
                    .get(1)
                    .and_then(|w| match self.string(w) {
                        Val::Known(s) => s.parse::<usize>().ok(),
                        Val::Unknown => None,
                    })
                    .unwrap_or(1);
                if let Some(a) = &mut self.args {
                    if sure && n <= a.len() {
                        a.drain(..n);
                    } else {
                        self.args = None;
                    }
                }
                Flow::Next
            }
            "exit" if sure => Flow::Exit,
            "return" if sure && self.depth > 0 => Flow::Return,
            "export" | "readonly" | "local" | "declare" | "typeset" => {
                for w in &words[1..] {
                    if let Some((n, v)) = assignment(w) {
                        let v = self.string(&v);
                        self.vars.insert(n, if sure { v } else { Val::Unknown });
                    }
                }
                Flow::Next
            }
            "unset" => {
                for w in &words[1..] {
                    if let Some(n) = lit_of(w) {
                        self.vars.insert(n, Val::Unknown);
                    }
                }
                Flow::Next
            }
            "." | "source" | "eval" => {
                // What they run is not read: variables may change.
                for v in self.vars.values_mut() {
                    *v = Val::Unknown;
                }
                Flow::Next
            }
            f if self.funcs.contains_key(f) => {
                if self.depth >= MAX_CALL_DEPTH {
                    return Flow::Stop("its functions nest deeper than archwatch follows".into());
                }
                let Some(body) = self.funcs.get(f).cloned() else {
                    return Flow::Next;
                };
                let mut args = Vec::new();
                let mut known = true;
                for w in &words[1..] {
                    match self.fields(w) {
                        Some(x) => args.extend(x),
                        None => known = false,
                    }
                }
                let saved = std::mem::replace(&mut self.args, known.then_some(args));
                self.depth += 1;
                let flow = self.run_node(&body, sure);
                self.depth -= 1;
                self.args = saved;
                match flow {
                    // A return ends the function, not the script.
                    Flow::Return => Flow::Next,
                    other => other,
                }
            }
            _ => Flow::Next,
        }
    }

    /// `[ ... ]`, `test ...`, `[[ ... ]]`, `true`, `false`.
    fn test(&self, words: &[Word]) -> Truth {
        let Some(Val::Known(cmd)) = words.first().map(|w| self.string(w)) else {
            return Truth::Unknown;
        };
        let args: Vec<&Word> = match cmd.as_str() {
            "true" | ":" => return Truth::True,
            "false" => return Truth::False,
            "[" => match words.last().map(lit_of) {
                Some(Some(l)) if l == "]" => words[1..words.len() - 1].iter().collect(),
                _ => return Truth::Unknown,
            },
            "[[" => match words.last().map(lit_of) {
                Some(Some(l)) if l == "]]" => words[1..words.len() - 1].iter().collect(),
                _ => return Truth::Unknown,
            },
            "test" => words[1..].iter().collect(),
            _ => return Truth::Unknown,
        };
        let vals: Vec<(Option<String>, Val)> =
            args.iter().map(|w| (lit_of(w), self.string(w))).collect();
        eval_test(&vals)
    }
}

/// `[`'s expression: `-o` binds looser than `-a`, `!` negates, binary and unary operators.
fn eval_test(v: &[(Option<String>, Val)]) -> Truth {
    let is_op = |i: usize, op: &str| v.get(i).and_then(|x| x.0.as_deref()) == Some(op);
    // Split on -o / || then -a / &&.
    for ops in [["-o", "||"], ["-a", "&&"]] {
        if let Some(i) = (1..v.len().saturating_sub(1)).find(|&i| ops.iter().any(|o| is_op(i, o))) {
            let (l, r) = (eval_test(&v[..i]), eval_test(&v[i + 1..]));
            let or = ops[0] == "-o";
            return match (or, l, r) {
                (true, Truth::True, _) | (true, _, Truth::True) => Truth::True,
                (true, Truth::False, Truth::False) => Truth::False,
                (false, Truth::False, _) | (false, _, Truth::False) => Truth::False,
                (false, Truth::True, Truth::True) => Truth::True,
                _ => Truth::Unknown,
            };
        }
    }
    if is_op(0, "!") && v.len() > 1 {
        return match eval_test(&v[1..]) {
            Truth::True => Truth::False,
            Truth::False => Truth::True,
            Truth::Unknown => Truth::Unknown,
        };
    }
    let known = |i: usize| match v.get(i).map(|x| &x.1) {
        Some(Val::Known(s)) => Some(s.as_str()),
        _ => None,
    };
    match v.len() {
        0 => Truth::False,
        1 => match known(0) {
            Some(s) => truth(!s.is_empty()),
            None => Truth::Unknown,
        },
        2 => match (v[0].0.as_deref(), known(1)) {
            (Some("-z"), Some(s)) => truth(s.is_empty()),
            (Some("-n"), Some(s)) => truth(!s.is_empty()),
            _ => Truth::Unknown,
        },
        3 => {
            let op = v[1].0.as_deref().unwrap_or("");
            let (Some(a), Some(b)) = (known(0), known(2)) else {
                return Truth::Unknown;
            };
            let num = |s: &str| s.trim().parse::<i64>().ok();
            match op {
                "=" | "==" => {
                    if b.contains(['*', '?', '[']) && op == "==" {
                        Truth::Unknown
                    } else {
                        truth(a == b)
                    }
                }
                "!=" => truth(a != b),
                "-eq" | "-ne" | "-gt" | "-ge" | "-lt" | "-le" => match (num(a), num(b)) {
                    (Some(x), Some(y)) => truth(match op {
                        "-eq" => x == y,
                        "-ne" => x != y,
                        "-gt" => x > y,
                        "-ge" => x >= y,
                        "-lt" => x < y,
                        _ => x <= y,
                    }),
                    _ => Truth::Unknown,
                },
                _ => Truth::Unknown,
            }
        }
        _ => Truth::Unknown,
    }
}

fn truth(b: bool) -> Truth {
    if b {
        Truth::True
    } else {
        Truth::False
    }
}

/// `NAME=value` as a word.
fn assignment(w: &Word) -> Option<(String, Word)> {
    let Some(Seg::Lit(first)) = w.first() else {
        return None;
    };
    let eq = first.find('=')?;
    let name = &first[..eq];
    if name.is_empty()
        || !name.chars().all(is_name_char)
        || name.starts_with(|c: char| c.is_ascii_digit())
    {
        return None;
    }
    let mut value: Word = Vec::new();
    let rest = &first[eq + 1..];
    if !rest.is_empty() {
        value.push(Seg::Lit(rest.into()));
    }
    value.extend(w[1..].iter().cloned());
    Some((name.into(), value))
}

/// Parses an operator argument (`${1#-}`'s `-`) as a word.
fn word_of(s: &str) -> Option<Word> {
    let b: Vec<char> = s.chars().collect();
    if b.is_empty() {
        return Some(vec![Seg::Lit(String::new())]);
    }
    let (w, _, n) = word(&b, 0)?;
    (n == b.len()).then_some(w)
}

/// `${s#p}`, `${s##p}`, `${s%p}`, `${s%%p}` with glob patterns.
fn trim_pattern(s: &str, pat: &str, op: &str) -> String {
    let idx: Vec<usize> = s
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(s.len()))
        .collect();
    match op {
        "#" => idx
            .iter()
            .find(|&&i| glob(pat, &s[..i]))
            .map_or(s.into(), |&i| s[i..].into()),
        "##" => idx
            .iter()
            .rev()
            .find(|&&i| glob(pat, &s[..i]))
            .map_or(s.into(), |&i| s[i..].into()),
        "%" => idx
            .iter()
            .rev()
            .find(|&&i| glob(pat, &s[i..]))
            .map_or(s.into(), |&i| s[..i].into()),
        _ => idx
            .iter()
            .find(|&&i| glob(pat, &s[i..]))
            .map_or(s.into(), |&i| s[..i].into()),
    }
}

/// Shell pattern matching: `*`, `?`, `[...]` (with `!`/`^`), `\x`.
pub fn glob(pat: &str, s: &str) -> bool {
    fn m(p: &[char], s: &[char]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some('*') => (0..=s.len()).any(|k| m(&p[1..], &s[k..])),
            Some('?') => !s.is_empty() && m(&p[1..], &s[1..]),
            Some('[') => {
                let Some(end) = p.iter().skip(1).position(|&c| c == ']').map(|e| e + 1) else {
                    return s.first() == Some(&'[') && m(&p[1..], &s[1..]);
                };
                let Some(&c) = s.first() else { return false };
                let mut set = &p[1..end];
                let neg = matches!(set.first(), Some('!') | Some('^'));
                if neg {
                    set = &set[1..];
                }
                let mut hit = false;
                let mut i = 0;
                while i < set.len() {
                    if i + 2 < set.len() && set[i + 1] == '-' {
                        hit |= set[i] <= c && c <= set[i + 2];
                        i += 3;
                    } else {
                        hit |= set[i] == c;
                        i += 1;
                    }
                }
                hit != neg && m(&p[end + 1..], &s[1..])
            }
            Some('\\') if p.len() > 1 => s.first() == Some(&p[1]) && m(&p[2..], &s[1..]),
            Some(c) => s.first() == Some(c) && m(&p[1..], &s[1..]),
        }
    }
    let p: Vec<char> = pat.chars().collect();
    let s: Vec<char> = s.chars().collect();
    m(&p, &s)
}

fn raw_word(w: &Word) -> String {
    w.iter()
        .map(|s| match s {
            Seg::Lit(l) => l.clone(),
            Seg::Param { name, .. } => format!("${name}"),
            Seg::All { .. } => "\"$@\"".into(),
            Seg::Cmd(c) => format!("$({c})"),
        })
        .collect()
}

fn describe(p: &Pipeline) -> String {
    match p.cmds.first() {
        Some(Node::Simple { words, line }) => format!(
            "line {line} ({})",
            words
                .iter()
                .take(4)
                .map(raw_word)
                .collect::<Vec<_>>()
                .join(" ")
        ),
        _ => "a compound command".into(),
    }
}

fn describe_list(l: &[AndOr]) -> String {
    match l.first() {
        Some(a) => {
            let mut s = describe(&a.first);
            if !a.rest.is_empty() {
                s.push_str(" …");
            }
            s
        }
        None => "an empty condition".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_of(script: &str, args: &[&str], uid: u32) -> Plan {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        plan(
            script.as_bytes(),
            &Start {
                dollar0: "/docker-entrypoint.sh",
                args: &args,
                uid,
                gid: uid,
                path: Some("/usr/local/bin:/usr/bin:/bin"),
            },
        )
    }

    fn exec_of(script: &str, args: &[&str], uid: u32) -> Option<Vec<String>> {
        match plan_of(script, args, uid) {
            Plan::Exec { argv, .. } => Some(argv),
            _ => None,
        }
    }

    const REDIS: &str = r#"#!/bin/sh
set -e

# first arg is `-f` or `--some-option`
# or first arg is `something.conf`
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
	set -- redis-server "$@"
fi

# allow the container to be started with `--user`
if [ "$1" = 'redis-server' -a "$(id -u)" = '0' ]; then
	find . \! -user redis -exec chown redis '{}' +
	exec gosu redis "$0" "$@"
fi

# set an appropriate umask (if one isn't set already)
um="$(umask)"
if [ "$um" = '0022' ]; then
	umask 0077
fi

exec "$@"
"#;

    #[test]
    fn docker_library_entrypoints_exec_their_arguments() {
        type Case<'a> = (&'a str, &'a [&'a str], u32, Option<&'a [&'a str]>);
        let cases: &[Case] = &[
            ("#!/bin/sh\nexec \"$@\"\n", &["app", "--port", "80"], 0, Some(&["app", "--port", "80"])),
            ("#!/bin/sh\nset -e\nexec /usr/local/bin/server --port 8080\n", &[], 0, Some(&["/usr/local/bin/server", "--port", "8080"])),
            (REDIS, &["redis-server"], 0, Some(&["gosu", "redis", "/docker-entrypoint.sh", "redis-server"])),
            (REDIS, &["redis-server"], 999, Some(&["redis-server"])),
            (REDIS, &["--appendonly", "yes"], 999, Some(&["redis-server", "--appendonly", "yes"])),
            (REDIS, &["/etc/redis.conf"], 999, Some(&["redis-server", "/etc/redis.conf"])),
            (REDIS, &["sh"], 0, Some(&["sh"])),
            // case on the first argument
            ("#!/bin/sh\ncase \"$1\" in\n  -*) set -- app \"$@\" ;;\nesac\nexec \"$@\"\n", &["-v"], 0, Some(&["app", "-v"])),
            ("#!/bin/sh\ncase \"$1\" in\n  -*) set -- app \"$@\" ;;\nesac\nexec \"$@\"\n", &["x"], 0, Some(&["x"])),
            // variables assigned in the script
            ("#!/bin/sh\nBIN=/opt/app/bin\nexec \"$BIN/app\" serve\n", &[], 0, Some(&["/opt/app/bin/app", "serve"])),
            // a function called at the end (postgres, mysql)
            ("#!/bin/bash\n_main() {\n  if [ \"${1:0:1}\" = '-' ]; then\n    set -- postgres \"$@\"\n  fi\n  exec \"$@\"\n}\n_main \"$@\"\n", &["-c", "x=1"], 0, Some(&["postgres", "-c", "x=1"])),
            // here-documents are skipped
            ("#!/bin/sh\ncat > /tmp/x <<EOF\nexec nope\nEOF\nexec \"$@\"\n", &["app"], 0, Some(&["app"])),
            // exit before any exec
            ("#!/bin/sh\necho hi\nexit 0\nexec app\n", &[], 0, None),
            // exec with only a redirection
            ("#!/bin/sh\nexec 2>&1\nexec \"$@\"\n", &["app"], 0, Some(&["app"])),
            ("#!/bin/sh\nexec tini -- \"$@\"", &["app"], 0, Some(&["tini", "--", "app"])),
            ("#!/bin/sh\nshift\nexec \"$@\"\n", &["drop", "app"], 0, Some(&["app"])),
            // Found by fuzzing: ${00} is $0.
            ("#!/bin/sh\nexec \"${00}\" x\n", &[], 0, Some(&["/docker-entrypoint.sh", "x"])),
        ];
        for (script, args, uid, want) in cases {
            let got = exec_of(script, args, *uid);
            let want = want.map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert_eq!(got, want, "{script}\nargs {args:?} uid {uid}");
        }
    }

    #[test]
    fn unknown_conditions_give_candidates_not_guesses() {
        let s = "#!/bin/sh\nif [ -f /etc/app.conf ]; then\n  exec /usr/bin/app-with-conf\nfi\nexec \"$@\"\n";
        // The sure exec still comes last: the candidate is kept beside it.
        let p = plan_of(s, &["app"], 0);
        assert!(
            matches!(p, Plan::Exec { ref argv, .. } if argv == &["app"]),
            "{p:?}"
        );
        let s = "#!/bin/sh\nif [ -f /etc/app.conf ]; then\n  exec /usr/bin/app-with-conf\nfi\necho done\n";
        match plan_of(s, &[], 0) {
            Plan::Maybe { candidates, why } => {
                assert_eq!(candidates[0].argv, vec!["/usr/bin/app-with-conf"]);
                assert!(why.contains("condition"), "{why}");
            }
            p => panic!("{p:?}"),
        }
        match plan_of("#!/bin/sh\nexec \"$APP\" run\n", &[], 0) {
            Plan::Maybe { why, .. } => assert!(why.contains("cannot evaluate"), "{why}"),
            p => panic!("{p:?}"),
        }
        assert_eq!(plan_of("#!/bin/sh\necho hello\n", &[], 0), Plan::Nothing);
        // A pipeline's exec replaces a subshell only.
        assert_eq!(
            plan_of("#!/bin/sh\nexec app | cat\n", &[], 0),
            Plan::Nothing
        );
        // Unbalanced quotes: said, not guessed.
        assert!(matches!(
            plan_of("#!/bin/sh\necho \"x\nexec app\n", &[], 0),
            Plan::Maybe { .. }
        ));
    }

    #[test]
    fn patterns_and_expansions() {
        assert!(glob("-*", "-v"));
        assert!(!glob("-*", "v"));
        assert!(glob("*.conf", "a.conf"));
        assert!(glob("[!a]x", "bx"));
        assert_eq!(trim_pattern("-v", "-", "#"), "v");
        assert_eq!(trim_pattern("a.conf", ".conf", "%"), "a");
        assert_eq!(trim_pattern("a/b/c", "*/", "##"), "c");
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_planned_without_panic(s in "\\PC{0,400}") {
            let _ = plan_of(&s, &["a", "b"], 0);
        }
        #[test]
        fn shellish_text_is_planned_without_panic(s in "[a-z\"'$@{}()#%:;|&<>\\\\\n -]{0,300}") {
            let _ = plan_of(&s, &["-x"], 1000);
        }
    }
}
