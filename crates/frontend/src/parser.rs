//! The Dockerfile parser: source bytes to a list of instructions, following
//! BuildKit's `frontend/dockerfile/parser.Parse`.
//!
//! The parser only splits the file into instructions and their raw arguments.
//! It does not validate instructions (an unknown keyword still yields an
//! instruction) and it does not expand variables or remove quotes: that
//! happens later, with [`crate::shell`], once the build arguments are known.
//!
//! The pieces, each in its own submodule:
//!
//! * `directives`: `# syntax=`, `# escape=` and `# check=`
//!   in the leading comment block;
//! * the line loop in this file: physical lines, comments, line continuations,
//!   heredoc bodies and line numbers;
//! * `command`: a logical line to keyword, flags and the rest;
//! * `arguments`: the rest to arguments, per keyword;
//! * `json`: the JSON ("exec form") arrays;
//! * `heredoc`: finding `<<EOF` words;
//! * `dump`: BuildKit's S-expression dump, for conformance tests.
//!
//! BuildKit works on Go strings, which may hold any bytes. We work on Rust
//! strings: invalid UTF-8 in the input is replaced with U+FFFD first.

mod arguments;
mod command;
mod directives;
mod dump;
mod heredoc;
mod json;

#[cfg(test)]
mod tests;

use std::borrow::Cow;

pub use self::command::split_flags_value;
pub use self::dump::dump;

use self::directives::DirectiveParser;

/// The escape character when the file does not set one.
pub const DEFAULT_ESCAPE: char = '\\';

/// The longest physical line BuildKit reads, in bytes without the newline:
/// it scans with Go's `bufio.Scanner`, whose buffer tops out at 64 KiB.
pub const MAX_LINE_LEN: usize = 64 * 1024 - 1;

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq)]
pub struct Dockerfile {
    pub directives: Directives,
    pub instructions: Vec<Instruction>,
    pub warnings: Vec<Warning>,
}

/// The parser directives found in the file's leading comment block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directives {
    /// `\` or, with ``# escape=` ``, a backtick.
    pub escape: char,
    pub syntax: Option<Directive>,
    pub check: Option<Directive>,
}

impl Default for Directives {
    fn default() -> Self {
        Self {
            escape: DEFAULT_ESCAPE,
            syntax: None,
            check: None,
        }
    }
}

/// One parser directive's value, as written (surrounding spaces removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub value: String,
    /// 1-based line of the directive.
    pub line: usize,
}

/// Something BuildKit warns about while parsing; not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub message: String,
    /// 1-based line the warning is reported at (BuildKit's choice: the last
    /// line of the instruction).
    pub line: usize,
}

/// One instruction.
#[derive(Debug, Clone, PartialEq)]
pub struct Instruction {
    /// The keyword, lowercased: `"run"`. Unknown keywords are kept too.
    pub keyword: String,
    /// The leading `--name[=value]` words, quotes and backslashes processed.
    pub flags: Vec<String>,
    /// The arguments, raw (quotes kept, nothing expanded), shaped per keyword:
    ///
    /// * RUN, CMD, ENTRYPOINT, SHELL: the JSON array's strings, or the whole
    ///   rest of the line as one string;
    /// * ADD, COPY, VOLUME: the JSON array's strings, or whitespace-separated words;
    /// * FROM, EXPOSE: whitespace-separated words;
    /// * ENV, LABEL: triples `key, value, sep` where `sep` is `"="` for
    ///   `k=v` and `""` for the legacy `KEY value` form;
    /// * ARG: the words (`name` or `name=value`);
    /// * MAINTAINER, USER, WORKDIR, STOPSIGNAL: the rest of the line;
    /// * HEALTHCHECK: the type (`CMD`, `NONE`) then the command as for RUN;
    /// * ONBUILD: empty, see [`onbuild`](Self::onbuild);
    /// * unknown keywords: a single empty string.
    pub args: Vec<String>,
    /// ONBUILD's trigger instruction.
    pub onbuild: Option<Box<Instruction>>,
    /// Whether `args` came from a JSON array (exec form).
    pub json: bool,
    /// Here-documents of RUN, COPY and ADD (also under ONBUILD), in order.
    pub heredocs: Vec<Heredoc>,
    /// The logical line: continuations joined, comment lines removed.
    pub original: String,
    /// 1-based first line.
    pub start_line: usize,
    /// 1-based last line, including heredoc bodies.
    pub end_line: usize,
}

/// A here-document: `<<EOF`, `<<-EOF`, `<<"EOF"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter word with quotes removed.
    pub name: String,
    /// The body exactly as written, each line with its line ending, as
    /// BuildKit stores it. For `<<-`, leading tabs are still there: see
    /// [`Heredoc::body`].
    pub content: String,
    /// False when the delimiter was quoted: the body is not expanded.
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from every body line.
    pub chomp: bool,
}

impl Heredoc {
    /// The body as the instruction sees it: with `<<-`, each line's leading
    /// tabs removed.
    pub fn body(&self) -> Cow<'_, str> {
        if self.chomp {
            Cow::Owned(chomp_heredoc_content(&self.content))
        } else {
            Cow::Borrowed(&self.content)
        }
    }
}

/// Removes the leading tabs of every line (BuildKit's `ChompHeredocContent`).
pub fn chomp_heredoc_content(content: &str) -> String {
    content
        .split_inclusive('\n')
        .map(|line| line.trim_start_matches('\t'))
        .collect()
}

/// Why an instruction's line could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstructionError {
    /// `ENV PATH` or `LABEL foo`: the legacy form needs a value.
    #[error("{keyword} must have two arguments")]
    MissingValue { keyword: String },
    /// `ENV a=1 b`: in the `k=v` form every word needs an `=`.
    #[error("Syntax error - can't find = in {word:?}. Must be of the form: name=value")]
    MissingEquals { word: String },
    /// Valid JSON that is not an array of strings, such as `[["a"]]`.
    #[error("when using JSON array syntax, arrays must be comprised of strings only")]
    NotStringArray,
    /// `ONBUILD ONBUILD ...` nested absurdly deep.
    #[error("ONBUILD nested more than {0} levels deep")]
    NestingTooDeep(usize),
    /// A heredoc delimiter word that the shell lexer rejects.
    #[error("invalid heredoc: {0}")]
    Heredoc(#[from] crate::shell::ShellError),
    #[error("internal lexing of heredoc produced inconsistent results: {0}")]
    HeredocInconsistent(String),
}

/// A Dockerfile that cannot be parsed. Lines are 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("line {line}: only one {name} parser directive can be used")]
    DuplicateDirective { name: String, line: usize },
    #[error("line {line}: invalid escape token '{token}' does not match ` or \\")]
    InvalidEscapeToken { token: String, line: usize },
    #[error("line {line}: dockerfile line greater than max allowed size of {MAX_LINE_LEN}")]
    LineTooLong { line: usize },
    /// Empty, or only comments and blank lines. `line` is the last line.
    #[error("line {line}: file with no instructions")]
    NoInstructions { line: usize },
    #[error("{}: {error}", describe_lines(*start_line, *end_line))]
    Instruction {
        error: InstructionError,
        start_line: usize,
        end_line: usize,
    },
    #[error("{}: unterminated heredoc {name:?}", describe_lines(*start_line, *end_line))]
    UnterminatedHeredoc {
        name: String,
        start_line: usize,
        end_line: usize,
    },
}

impl ParseError {
    /// The (first) line the error is about.
    pub fn line(&self) -> usize {
        match self {
            Self::DuplicateDirective { line, .. }
            | Self::InvalidEscapeToken { line, .. }
            | Self::LineTooLong { line }
            | Self::NoInstructions { line } => *line,
            Self::Instruction { start_line, .. } | Self::UnterminatedHeredoc { start_line, .. } => {
                *start_line
            }
        }
    }

    /// The last line the error is about.
    pub fn end_line(&self) -> usize {
        match self {
            Self::Instruction { end_line, .. } | Self::UnterminatedHeredoc { end_line, .. } => {
                *end_line
            }
            _ => self.line(),
        }
    }
}

fn describe_lines(start: usize, end: usize) -> String {
    if end > start {
        format!("lines {start}-{end}")
    } else {
        format!("line {start}")
    }
}

/// Parses a Dockerfile.
pub fn parse(source: &[u8]) -> Result<Dockerfile, ParseError> {
    let mut lines = Lines::new(source);
    let mut directives = DirectiveParser::default();
    let mut instructions = Vec::new();
    let mut warnings = Vec::new();

    while let Some(raw) = lines.next_line()? {
        let start_line = lines.number;
        // The first line of an instruction loses its leading whitespace
        // before anything else looks at it, directives included.
        let token = trim_newline(&raw).trim_start();
        directives.observe(token, start_line)?;
        let escape = directives.escape();
        if is_comment(token) {
            continue;
        }

        let (first, mut complete) = trim_continuation(token, escape);
        if complete && first.is_empty() {
            continue;
        }
        let mut logical = first.to_owned();

        // Continuation lines keep their leading whitespace. Comment lines
        // inside a continuation are dropped; blank ones too, with a warning.
        let mut saw_empty_line = false;
        while !complete {
            let Some(raw) = lines.next_line()? else {
                break;
            };
            if is_comment(&raw) {
                continue;
            }
            let token = trim_newline(&raw);
            if token.trim_start().is_empty() {
                saw_empty_line = true;
                continue;
            }
            let (part, done) = trim_continuation(token, escape);
            logical.push_str(part);
            complete = done;
        }

        if saw_empty_line {
            warnings.push(Warning {
                message: format!("Empty continuation line found in: {logical}"),
                line: lines.number,
            });
        }

        let mut instruction =
            arguments::instruction_from_line(&logical, escape).map_err(|error| {
                ParseError::Instruction {
                    error,
                    start_line,
                    end_line: lines.number,
                }
            })?;

        if heredoc::can_contain_heredoc(&instruction) && logical.contains("<<") {
            let heredocs =
                heredoc::heredocs_from_line(&logical).map_err(|error| ParseError::Instruction {
                    error,
                    start_line,
                    end_line: lines.number,
                })?;
            for mut doc in heredocs {
                read_heredoc_body(&mut lines, &mut doc).map_err(|err| match err {
                    BodyError::Unterminated => ParseError::UnterminatedHeredoc {
                        name: doc.name.clone(),
                        start_line,
                        end_line: lines.number,
                    },
                    BodyError::Parse(err) => err,
                })?;
                instruction.heredocs.push(doc);
            }
        }

        instruction.start_line = start_line;
        instruction.end_line = lines.number;
        if let Some(trigger) = instruction.onbuild.as_deref_mut() {
            set_lines(trigger, start_line, lines.number);
        }
        instructions.push(instruction);
    }

    if instructions.is_empty() {
        return Err(ParseError::NoInstructions {
            line: lines.number.max(1),
        });
    }

    Ok(Dockerfile {
        directives: directives.finish(),
        instructions,
        warnings,
    })
}

/// Nested ONBUILD triggers have no lines of their own in BuildKit; we give
/// them their parent's, which is where they are written.
fn set_lines(instruction: &mut Instruction, start: usize, end: usize) {
    let mut current = Some(instruction);
    while let Some(instruction) = current {
        instruction.start_line = start;
        instruction.end_line = end;
        current = instruction.onbuild.as_deref_mut();
    }
}

enum BodyError {
    Unterminated,
    Parse(ParseError),
}

/// Reads a heredoc body up to its delimiter line. The delimiter must match
/// the whole line (after removing leading tabs, for `<<-`).
fn read_heredoc_body(lines: &mut Lines<'_>, doc: &mut Heredoc) -> Result<(), BodyError> {
    while let Some(raw) = lines.next_line().map_err(BodyError::Parse)? {
        let mut candidate = trim_newline(&raw);
        if doc.chomp {
            candidate = candidate.trim_start_matches('\t');
        }
        if candidate == doc.name {
            return Ok(());
        }
        doc.content.push_str(&raw);
    }
    Err(BodyError::Unterminated)
}

/// Physical lines, each with its line ending, counted from 1.
struct Lines<'a> {
    rest: &'a [u8],
    /// The number of the line last returned.
    number: usize,
}

impl<'a> Lines<'a> {
    fn new(source: &'a [u8]) -> Self {
        // A UTF-8 byte order mark at the very start is not content.
        let source = source.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(source);
        Self {
            rest: source,
            number: 0,
        }
    }

    fn next_line(&mut self) -> Result<Option<Cow<'a, str>>, ParseError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let len = self
            .rest
            .iter()
            .position(|&byte| byte == b'\n')
            .map_or(self.rest.len(), |newline| newline + 1);
        let (line, rest) = self.rest.split_at(len);
        self.rest = rest;
        self.number += 1;
        if line.strip_suffix(b"\n").unwrap_or(line).len() > MAX_LINE_LEN {
            return Err(ParseError::LineTooLong { line: self.number });
        }
        Ok(Some(String::from_utf8_lossy(line)))
    }
}

/// Removes the line ending, tolerating `\r\n` (and stray `\r`s before it).
fn trim_newline(line: &str) -> &str {
    line.trim_end_matches(['\r', '\n'])
}

/// A comment line: `#` is its first non-blank character. A `#` anywhere else
/// is just part of an argument.
fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// Removes a line-continuation escape (plus trailing blanks) from the end of
/// `line`, returning the rest and whether the logical line is complete.
///
/// An escape preceded by another escape is an escaped escape, not a
/// continuation (BuildKit's regex only looks one character back, so `\\\` is
/// not a continuation either).
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    if let Some(before) = trimmed.strip_suffix(escape)
        && !before.ends_with(escape)
    {
        return (before, false);
    }
    (line, true)
}
