//! `.dockerignore` pattern matching, with the semantics of moby's
//! `patternmatcher` package (what BuildKit uses to filter a build context).
//!
//! These are *not* gitignore rules:
//!
//! - A pattern is a path relative to the context root, cleaned like Go's
//!   `filepath.Clean` (`./a//b/` is `a/b`); a leading `/` is dropped, so
//!   `/abs/path` and `abs/path` are the same pattern.
//! - The glob syntax is Go's `filepath.Match`: `*` (any run of characters
//!   other than `/`), `?` (one character other than `/`), `[class]` with `^`
//!   negation and `a-z` ranges, and `\` escaping the next character. On top of
//!   that `**` matches any number of directories (including none).
//! - There is no implicit `**/`: `*.log` matches `a.log` at the root only.
//! - A pattern that matches a directory matches everything below it.
//! - `!pattern` is an exception that re-includes what it matches. Patterns
//!   are evaluated in order and the last one that matches a path decides.
//!
//! Matching is done by a small automaton built once per pattern and run over
//! the characters of a path; it never backtracks, so the cost is linear in
//! the path length whatever the pattern.

use std::borrow::Cow;

use rbuild_oci::path::go_clean as clean;

/// A compiled list of ignore patterns.
#[derive(Debug, Clone)]
pub struct PatternMatcher {
    patterns: Vec<Pattern>,
    has_exceptions: bool,
    /// `u64` words one state set of the largest pattern needs.
    max_words: usize,
}

/// A pattern that could not be compiled.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PatternError {
    #[error("invalid pattern {pattern:?}: {reason}")]
    Invalid { pattern: String, reason: String },
}

impl PatternMatcher {
    /// Compiles `patterns` (as read from a `.dockerignore`, one per entry).
    ///
    /// Entries are trimmed and empty ones skipped, as moby does. An entry
    /// starting with `!` is an exception; `!` on its own is an error, as is
    /// any entry that is not valid `filepath.Match` syntax (`[`, `[]`, `a\`,
    /// `[z-a]`, ...).
    pub fn new(patterns: &[String]) -> Result<PatternMatcher, PatternError> {
        let mut compiled = Vec::with_capacity(patterns.len());
        for raw in patterns {
            let trimmed = raw.trim();
            if trimmed.is_empty() {
                continue;
            }
            let invalid = |reason: &str| PatternError::Invalid {
                pattern: raw.clone(),
                reason: reason.to_string(),
            };
            // moby cleans the whole entry before looking at the `!`, so `!/`
            // (which cleans to `!`) is rejected like `!` itself.
            let cleaned = clean(trimmed);
            let (exception, body) = match cleaned.strip_prefix('!') {
                Some("") => {
                    return Err(invalid(
                        "\"!\" on its own is not a valid exception: it needs a path after it",
                    ));
                }
                Some(rest) => (true, normalize_pattern(rest.trim())),
                None => (false, normalize_pattern(&cleaned)),
            };
            let pattern = Pattern::compile(exception, &body).map_err(invalid)?;
            compiled.push(pattern);
        }
        let has_exceptions = compiled.iter().any(|p| p.exception);
        let max_words = compiled.iter().map(|p| p.words).max().unwrap_or(0);
        Ok(PatternMatcher {
            patterns: compiled,
            has_exceptions,
            max_words,
        })
    }

    /// Whether there are no patterns at all (nothing is ever excluded).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether `rel_path` (relative to the context root, `/`-separated, no
    /// leading slash) is excluded, taking parent directories into account
    /// like moby's `MatchesOrParentMatches`: a pattern matches a path if it
    /// matches the path itself or any of its parent directories, and the
    /// last pattern that matches decides. The context root itself (`""` or
    /// `"."`) is never excluded.
    pub fn excludes(&self, rel_path: &str) -> bool {
        if self.patterns.is_empty() {
            return false;
        }
        let Some(path) = normalize_query(rel_path) else {
            return false;
        };
        let mut scratch = Scratch::new(self.max_words);
        for pattern in self.patterns.iter().rev() {
            if pattern.matches_or_parent_matches(&path, scratch.get()) {
                return !pattern.exception;
            }
        }
        false
    }

    /// Whether any exception (`!` pattern) could re-include something below
    /// the directory `rel_dir`; callers walking a tree use this to decide
    /// whether they can skip an excluded directory entirely.
    ///
    /// The answer errs on the side of `true`: it is `true` when some
    /// exception can match a path under `rel_dir/` (or matches `rel_dir` or
    /// one of its parents, which re-includes what is below by parent
    /// matching), and `false` only when no exception can match anything in
    /// that subtree.
    pub fn may_include_below(&self, rel_dir: &str) -> bool {
        if !self.has_exceptions {
            return false;
        }
        let Some(dir) = normalize_query(rel_dir) else {
            // The context root: everything is below it.
            return true;
        };
        let mut scratch = Scratch::new(self.max_words);
        self.patterns
            .iter()
            .filter(|p| p.exception)
            .any(|p| p.scan(&dir, true, true, scratch.get()))
    }
}

/// One pattern, compiled.
#[derive(Debug, Clone)]
struct Pattern {
    exception: bool,
    /// A shortcut for the common pattern shapes; the tokens are still used
    /// for [`PatternMatcher::may_include_below`].
    shortcut: Shortcut,
    tokens: Vec<Token>,
    /// Indices of the tokens that can match the empty string, ascending.
    nullable: Vec<usize>,
    /// `u64` words a set of this pattern's states takes (`tokens.len() + 1`
    /// bits: one per token plus the accepting state).
    words: usize,
}

#[derive(Debug, Clone)]
enum Shortcut {
    /// Only literal characters: the path must equal the string.
    Exact(String),
    /// Literal characters then a trailing `**`: the path must start with it.
    Prefix(String),
    /// Anything else runs the automaton, unless the literal text the
    /// pattern must start (`head`) or end (`tail`) with rules a path out.
    Scan { head: String, tail: String },
}

#[derive(Debug, Clone)]
enum Token {
    /// One given character.
    Literal(char),
    /// `?`: one character other than `/`.
    AnyChar,
    /// `[...]`: one character in (or, negated, not in) the class. As in
    /// moby, whose matcher is a regular expression, a class can match `/`.
    Class(Class),
    /// `*`: any run of characters other than `/`.
    Star,
    /// `**` at the end of a pattern (or `**` alone): any run of characters
    /// including `/` (moby's `.*`).
    AnySeq,
    /// `**` elsewhere: nothing, or any run of characters ending in `/`
    /// (moby's `(.*/)?`); a `/` right after the `**` belongs to it.
    DirSeq,
}

#[derive(Debug, Clone)]
struct Class {
    negated: bool,
    ranges: Vec<(char, char)>,
}

impl Class {
    fn matches(&self, c: char) -> bool {
        let inside = self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
        inside != self.negated
    }
}

impl Token {
    fn nullable(&self) -> bool {
        matches!(self, Token::Star | Token::AnySeq | Token::DirSeq)
    }
}

impl Pattern {
    /// Compiles a cleaned pattern (without its `!`). The error is the reason.
    fn compile(exception: bool, pattern: &str) -> Result<Pattern, &'static str> {
        let mut tokens = tokenize(pattern)?;

        // moby treats a pattern that starts with `**` and is otherwise plain
        // text as "the path ends with the rest", so `**foo` matches `xfoo`
        // and `dir/xfoo` (while `**/foo` needs `foo` to be a whole name).
        if let Some(rest) = pattern.strip_prefix("**")
            && !rest.is_empty()
            && !rest.starts_with('/')
            && !rest.contains(['*', '?', '[', ']', '\\'])
            && let Some(first) = tokens.first_mut()
        {
            *first = Token::AnySeq;
        }

        let literal = |toks: &[Token]| -> Option<String> {
            toks.iter()
                .map(|t| match t {
                    Token::Literal(c) => Some(*c),
                    _ => None,
                })
                .collect()
        };
        let shortcut = if let Some(text) = literal(&tokens) {
            Shortcut::Exact(text)
        } else if let Some((Token::AnySeq, head)) = tokens.split_last()
            && let Some(text) = literal(head)
        {
            Shortcut::Prefix(text)
        } else {
            let head: String = tokens
                .iter()
                .map_while(|t| match t {
                    Token::Literal(c) => Some(*c),
                    _ => None,
                })
                .collect();
            let mut tail: Vec<char> = tokens
                .iter()
                .rev()
                .map_while(|t| match t {
                    Token::Literal(c) => Some(*c),
                    _ => None,
                })
                .collect();
            tail.reverse();
            Shortcut::Scan {
                head,
                tail: tail.into_iter().collect(),
            }
        };

        let nullable = tokens
            .iter()
            .enumerate()
            .filter(|(_, t)| t.nullable())
            .map(|(i, _)| i)
            .collect();
        let words = (tokens.len() + 1).div_ceil(64);
        Ok(Pattern {
            exception,
            shortcut,
            tokens,
            nullable,
            words,
        })
    }

    /// Whether the pattern matches `path` or one of its parent directories.
    fn matches_or_parent_matches(&self, path: &str, scratch: &mut [u64]) -> bool {
        match &self.shortcut {
            Shortcut::Exact(text) => {
                path == text
                    || (path.len() > text.len()
                        && path.starts_with(text.as_str())
                        && path.as_bytes().get(text.len()) == Some(&b'/'))
            }
            // If a parent starts with the prefix, so does the path.
            Shortcut::Prefix(text) => path.starts_with(text.as_str()),
            Shortcut::Scan { head, tail } => {
                // Every candidate (the path and its parents) starts like the
                // path, and a match must end with `tail`.
                path.starts_with(head.as_str())
                    && (path.ends_with(tail.as_str())
                        || path
                            .match_indices('/')
                            .any(|(i, _)| path[..i].ends_with(tail.as_str())))
                    && self.scan(path, true, false, scratch)
            }
        }
    }

    /// Runs the automaton over the characters of `path`.
    ///
    /// With `parents`, returns `true` as soon as the text read so far is a
    /// match and the next character is a `/` (a parent directory matches).
    /// With `below`, a `/` is read after `path`, and the result is whether
    /// the automaton is still alive then: whether some path under `path/`
    /// could match. Otherwise the result is whether `path` matches.
    fn scan(&self, path: &str, parents: bool, below: bool, scratch: &mut [u64]) -> bool {
        let n = self.tokens.len();
        let w = self.words;
        if scratch.len() < 4 * w {
            // Callers size the scratch space for their largest pattern; this
            // only keeps a mistake from panicking.
            return self.scan(path, parents, below, &mut vec![0; 4 * w]);
        }
        let (cur_at, rest) = scratch.split_at_mut(w);
        let (cur_mid, rest) = rest.split_at_mut(w);
        let (next_at, rest) = rest.split_at_mut(w);
        let next_mid = &mut rest[..w];
        let (mut cur_at, mut cur_mid, mut next_at, mut next_mid) =
            (cur_at, cur_mid, next_at, next_mid);

        cur_at.fill(0);
        cur_mid.fill(0);
        set_bit(cur_at, 0);
        self.close(cur_at);

        let trailing = if below { Some('/') } else { None };
        for c in path.chars().chain(trailing) {
            if c == '/' && parents && bit(cur_at, n) {
                return true;
            }
            self.step(c, cur_at, cur_mid, next_at, next_mid);
            std::mem::swap(&mut cur_at, &mut next_at);
            std::mem::swap(&mut cur_mid, &mut next_mid);
            if cur_at.iter().chain(cur_mid.iter()).all(|&word| word == 0) {
                return false;
            }
        }
        below || bit(cur_at, n)
    }

    /// Reads one character: the states in `at`/`mid` become those in
    /// `next_at`/`next_mid`.
    ///
    /// State `i` of `at` means "token `i` is next" (`n` is "matched"). A
    /// `mid` state `i` belongs to a `DirSeq` token `i` that has read some
    /// characters but not yet the `/` that must end them.
    fn step(&self, c: char, at: &[u64], mid: &[u64], next_at: &mut [u64], next_mid: &mut [u64]) {
        next_at.fill(0);
        next_mid.fill(0);
        for (wi, &word) in at.iter().enumerate() {
            let mut rest = word;
            while rest != 0 {
                let i = wi * 64 + rest.trailing_zeros() as usize;
                rest &= rest - 1;
                self.read(c, i, next_at, next_mid);
            }
        }
        for (wi, &word) in mid.iter().enumerate() {
            let mut rest = word;
            while rest != 0 {
                let i = wi * 64 + rest.trailing_zeros() as usize;
                rest &= rest - 1;
                if c == '/' {
                    set_bit(next_at, i);
                } else {
                    set_bit(next_mid, i);
                }
            }
        }
        self.close(next_at);
    }

    /// State `i` of `at` reads `c`.
    fn read(&self, c: char, i: usize, next_at: &mut [u64], next_mid: &mut [u64]) {
        let Some(token) = self.tokens.get(i) else {
            return; // the accepting state reads nothing
        };
        match token {
            Token::Literal(l) => {
                if c == *l {
                    set_bit(next_at, i + 1);
                }
            }
            Token::AnyChar => {
                if c != '/' {
                    set_bit(next_at, i + 1);
                }
            }
            Token::Class(class) => {
                if class.matches(c) {
                    set_bit(next_at, i + 1);
                }
            }
            Token::Star => {
                if c != '/' {
                    set_bit(next_at, i);
                }
            }
            Token::AnySeq => set_bit(next_at, i),
            Token::DirSeq => {
                if c == '/' {
                    set_bit(next_at, i);
                } else {
                    set_bit(next_mid, i);
                }
            }
        }
    }

    /// Adds the states reachable without reading anything: past each token
    /// that can match the empty string. Ascending order follows chains.
    fn close(&self, at: &mut [u64]) {
        for &i in &self.nullable {
            if bit(at, i) {
                set_bit(at, i + 1);
            }
        }
    }

    /// Whether the pattern matches exactly `path`, with no parent matching
    /// and no cleaning (moby's `MatchesExact`).
    #[cfg(test)]
    fn matches_exact(&self, path: &str) -> bool {
        let mut scratch = vec![0; 4 * self.words];
        self.scan(path, false, false, &mut scratch)
    }
}

fn bit(set: &[u64], i: usize) -> bool {
    set.get(i / 64)
        .is_some_and(|word| word & (1 << (i % 64)) != 0)
}

fn set_bit(set: &mut [u64], i: usize) {
    if let Some(word) = set.get_mut(i / 64) {
        *word |= 1 << (i % 64);
    }
}

/// Room for four state sets, on the stack for patterns of up to 511 tokens.
struct Scratch {
    stack: [u64; 32],
    heap: Vec<u64>,
    len: usize,
}

impl Scratch {
    fn new(words: usize) -> Scratch {
        let len = 4 * words;
        let heap = if len > 32 { vec![0; len] } else { Vec::new() };
        Scratch {
            stack: [0; 32],
            heap,
            len,
        }
    }

    fn get(&mut self) -> &mut [u64] {
        if self.len > self.stack.len() {
            &mut self.heap
        } else {
            &mut self.stack[..self.len]
        }
    }
}

/// Turns a pattern into tokens, checking `filepath.Match` syntax.
fn tokenize(pattern: &str) -> Result<Vec<Token>, &'static str> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::with_capacity(chars.len());
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        i += 1;
        match c {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                tokens.push(if i == chars.len() {
                    Token::AnySeq
                } else {
                    Token::DirSeq
                });
            }
            '*' => tokens.push(Token::Star),
            '?' => tokens.push(Token::AnyChar),
            '\\' => {
                let Some(&escaped) = chars.get(i) else {
                    return Err("a trailing \\ escapes nothing");
                };
                i += 1;
                tokens.push(Token::Literal(escaped));
            }
            '[' => tokens.push(Token::Class(parse_class(&chars, &mut i)?)),
            other => tokens.push(Token::Literal(other)),
        }
    }
    Ok(tokens)
}

/// Parses a character class; `i` is just past the `[`. The rules are Go's:
/// `]` closes the class only after at least one range, and `-` or `]` where a
/// range should start must be escaped.
fn parse_class(chars: &[char], i: &mut usize) -> Result<Class, &'static str> {
    let negated = chars.get(*i) == Some(&'^');
    if negated {
        *i += 1;
    }
    let mut ranges = Vec::new();
    loop {
        if chars.get(*i) == Some(&']') && !ranges.is_empty() {
            *i += 1;
            return Ok(Class { negated, ranges });
        }
        let lo = class_char(chars, i)?;
        let mut hi = lo;
        if chars.get(*i) == Some(&'-') {
            *i += 1;
            hi = class_char(chars, i)?;
        }
        if lo > hi {
            // filepath.Match accepts this, but moby's regular expression
            // does not compile, so every match fails with an error.
            return Err("character range is out of order");
        }
        ranges.push((lo, hi));
    }
}

/// One (possibly escaped) character of a class, which must be followed by
/// more of the class.
fn class_char(chars: &[char], i: &mut usize) -> Result<char, &'static str> {
    let c = match chars.get(*i) {
        None => return Err("unterminated character class"),
        Some('-') => {
            return Err("a '-' in a character class must be escaped or follow a character");
        }
        Some(']') => return Err("empty character class (a leading ']' must be escaped)"),
        Some('\\') => {
            *i += 1;
            match chars.get(*i) {
                Some(&c) => c,
                None => return Err("unterminated character class"),
            }
        }
        Some(&c) => c,
    };
    *i += 1;
    if *i >= chars.len() {
        return Err("unterminated character class");
    }
    Ok(c)
}

/// A pattern body (after any `!`) made relative to the context root: cleaned
/// and without a leading `/`, except that `/` itself stays (and matches
/// nothing), as moby's ignore-file reader leaves it.
fn normalize_pattern(body: &str) -> String {
    let cleaned = clean(body);
    match cleaned.strip_prefix('/') {
        Some(rest) if !rest.is_empty() => rest.to_string(),
        _ => cleaned,
    }
}

/// A queried path, cleaned if it needs it and without leading slashes;
/// `None` for the context root.
fn normalize_query(path: &str) -> Option<Cow<'_, str>> {
    let unclean = path
        .split('/')
        .enumerate()
        .any(|(i, part)| (part.is_empty() && i > 0) || part == "." || part == "..");
    let path = if unclean {
        Cow::Owned(clean(path))
    } else {
        Cow::Borrowed(path)
    };
    let trimmed = path.trim_start_matches('/');
    if trimmed.is_empty() || trimmed == "." {
        return None;
    }
    Some(match path {
        Cow::Borrowed(p) => Cow::Borrowed(p.trim_start_matches('/')),
        Cow::Owned(ref p) => Cow::Owned(p.trim_start_matches('/').to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(patterns: &[&str]) -> PatternMatcher {
        let owned: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        match PatternMatcher::new(&owned) {
            Ok(m) => m,
            Err(e) => panic!("{patterns:?}: {e}"),
        }
    }

    fn compile_one(pattern: &str) -> Pattern {
        let m = matcher(&[pattern]);
        assert_eq!(m.patterns.len(), 1, "{pattern:?}");
        m.patterns[0].clone()
    }

    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Expect {
        /// No match, not even through a parent.
        Fail,
        /// The pattern matches the text itself.
        Exact,
        /// Only a parent directory of the text matches.
        Inexact,
    }
    use Expect::*;

    /// moby/patternmatcher's TestMatches table (Unix cases).
    const MOBY_MATCHES: &[(&str, &str, Expect)] = &[
        ("**", "file", Exact),
        ("**", "file/", Exact),
        ("**/", "file", Exact),
        ("**/", "file/", Exact),
        ("**", "/", Exact),
        ("**/", "/", Exact),
        ("**", "dir/file", Exact),
        ("**/", "dir/file", Exact),
        ("**", "dir/file/", Exact),
        ("**/", "dir/file/", Exact),
        ("**/**", "dir/file", Exact),
        ("**/**", "dir/file/", Exact),
        ("dir/**", "dir/file", Exact),
        ("dir/**", "dir/file/", Exact),
        ("dir/**", "dir/dir2/file", Exact),
        ("dir/**", "dir/dir2/file/", Exact),
        ("**/dir", "dir", Exact),
        ("**/dir", "dir/file", Inexact),
        ("**/dir2/*", "dir/dir2/file", Exact),
        ("**/dir2/*", "dir/dir2/file/", Inexact),
        ("**/dir2/**", "dir/dir2/dir3/file", Exact),
        ("**/dir2/**", "dir/dir2/dir3/file/", Exact),
        ("**file", "file", Exact),
        ("**file", "dir/file", Exact),
        ("**/file", "dir/file", Exact),
        ("**file", "dir/dir/file", Exact),
        ("**/file", "dir/dir/file", Exact),
        ("**/file*", "dir/dir/file", Exact),
        ("**/file*", "dir/dir/file.txt", Exact),
        ("**/file*txt", "dir/dir/file.txt", Exact),
        ("**/file*.txt", "dir/dir/file.txt", Exact),
        ("**/file*.txt*", "dir/dir/file.txt", Exact),
        ("**/**/*.txt", "dir/dir/file.txt", Exact),
        ("**/**/*.txt2", "dir/dir/file.txt", Fail),
        ("**/*.txt", "file.txt", Exact),
        ("**/**/*.txt", "file.txt", Exact),
        ("a**/*.txt", "a/file.txt", Exact),
        ("a**/*.txt", "a/dir/file.txt", Exact),
        ("a**/*.txt", "a/dir/dir/file.txt", Exact),
        ("a/*.txt", "a/dir/file.txt", Fail),
        ("a/*.txt", "a/file.txt", Exact),
        ("a/*.txt**", "a/file.txt", Exact),
        ("a[b-d]e", "ae", Fail),
        ("a[b-d]e", "ace", Exact),
        ("a[b-d]e", "aae", Fail),
        ("a[^b-d]e", "aze", Exact),
        (".*", ".foo", Exact),
        (".*", "foo", Fail),
        ("abc.def", "abcdef", Fail),
        ("abc.def", "abc.def", Exact),
        ("abc.def", "abcZdef", Fail),
        ("abc?def", "abcZdef", Exact),
        ("abc?def", "abcdef", Fail),
        ("**/foo/bar", "foo/bar", Exact),
        ("**/foo/bar", "dir/foo/bar", Exact),
        ("**/foo/bar", "dir/dir2/foo/bar", Exact),
        ("abc/**", "abc", Fail),
        ("abc/**", "abc/def", Exact),
        ("abc/**", "abc/def/ghi", Exact),
        ("**/.foo", ".foo", Exact),
        ("**/.foo", "bar.foo", Fail),
        ("a(b)c/def", "a(b)c/def", Exact),
        ("a(b)c/def", "a(b)c/xyz", Fail),
        ("a.|)$(}+{bc", "a.|)$(}+{bc", Exact),
        (
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            Exact,
        ),
        (
            "dist/*.whl",
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            Exact,
        ),
        ("a\\\\", "a\\", Exact),
        ("a\\*b", "a*b", Exact),
    ];

    #[test]
    fn patterns_moby_matches_exact() {
        for &(pattern, text, expect) in MOBY_MATCHES {
            let p = compile_one(pattern);
            assert_eq!(
                p.matches_exact(text),
                expect == Exact,
                "MatchesExact pattern={pattern:?} text={text:?}"
            );
        }
    }

    #[test]
    fn patterns_moby_matches_or_parent_matches() {
        for &(pattern, text, expect) in MOBY_MATCHES {
            if text == "/" {
                // The context root, which `excludes` never excludes.
                continue;
            }
            let m = matcher(&[pattern]);
            assert_eq!(
                m.excludes(text),
                expect != Fail,
                "MatchesOrParentMatches pattern={pattern:?} text={text:?}"
            );
        }
    }

    #[test]
    fn patterns_moby_multi_pattern() {
        let whl = "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl";
        let cases: &[(&[&str], &str, bool)] = &[
            (&["**", "!util/docker/web"], "util/docker/web/foo", false),
            (
                &["**", "!util/docker/web", "util/docker/web/foo"],
                "util/docker/web/foo",
                true,
            ),
            (&["**", &format!("!{whl}")], whl, false),
            (&["**", "!dist/*.whl"], whl, false),
        ];
        for (patterns, text, want) in cases {
            assert_eq!(
                matcher(patterns).excludes(text),
                *want,
                "{patterns:?} {text:?}"
            );
        }
    }

    /// The filepath.Match table moby runs through its matcher.
    #[test]
    fn patterns_filepath_match_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("abc", "abc", true),
            ("*", "abc", true),
            ("*c", "abc", true),
            ("a*", "a", true),
            ("a*", "abc", true),
            ("a*", "ab/c", true),
            ("a*/b", "abc/b", true),
            ("a*/b", "a/c/b", false),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false),
            ("a*b?c*x", "abxbbxdbxebxczzx", true),
            ("a*b?c*x", "abxbbxdbxebxczzy", false),
            ("ab[c]", "abc", true),
            ("ab[b-d]", "abc", true),
            ("ab[e-g]", "abc", false),
            ("ab[^c]", "abc", false),
            ("ab[^b-d]", "abc", false),
            ("ab[^e-g]", "abc", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "ab", false),
            ("a?b", "a☺b", true),
            ("a[^a]b", "a☺b", true),
            ("a???b", "a☺b", false),
            ("a[^a][^a][^a]b", "a☺b", false),
            ("[a-ζ]*", "α", true),
            ("*[a-ζ]", "A", false),
            ("a?b", "a/b", false),
            ("a*b", "a/b", false),
            ("[\\]a]", "]", true),
            ("[\\-]", "-", true),
            ("[x\\-]", "x", true),
            ("[x\\-]", "-", true),
            ("[x\\-]", "z", false),
            ("[\\-x]", "x", true),
            ("[\\-x]", "-", true),
            ("[\\-x]", "a", false),
            ("*x", "xxx", true),
        ];
        for &(pattern, text, want) in cases {
            assert_eq!(
                matcher(&[pattern]).excludes(text),
                want,
                "{pattern:?} {text:?}"
            );
        }
    }

    #[test]
    fn patterns_invalid() {
        for pattern in [
            "[",
            "[^",
            "[^bc",
            "a[",
            "[]a]",
            "[-]",
            "[x-]",
            "[-x]",
            "\\",
            "a\\",
            "[a-b-c]",
            "[z-a]",
            "[Local-Only]/",
            "!",
            "  !  ",
            "!/",
            "*.go[",
        ] {
            let err = PatternMatcher::new(&[pattern.to_string()]);
            match err {
                Err(PatternError::Invalid { pattern: p, .. }) => assert_eq!(p, pattern),
                Ok(_) => panic!("{pattern:?} should be rejected"),
            }
        }
        // The error names the offending entry and says why.
        let err = PatternMatcher::new(&["ok".to_string(), "a[".to_string()])
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("invalid pattern \"a[\": unterminated character class")
        );
    }

    #[test]
    fn patterns_moby_single_patterns() {
        // TestWildcardMatches, TestPatternMatches and friends.
        assert!(matcher(&["*"]).excludes("fileutils.go"));
        assert!(matcher(&["*.go"]).excludes("fileutils.go"));
        assert!(matcher(&["!fileutils.go", "*.go"]).excludes("fileutils.go"));
        assert!(!matcher(&["*.go", "!fileutils.go"]).excludes("fileutils.go"));
        assert!(!matcher(&["docs", "!docs/README.md"]).excludes("docs/README.md"));
        assert!(!matcher(&["docs/", "!docs/README.md"]).excludes("docs/README.md"));
        assert!(!matcher(&["docs/*", "!docs/README.md"]).excludes("docs/README.md"));
        assert!(!matcher(&["*.go"]).excludes("."));
        assert!(!matcher(&[]).excludes("any/path/there"));
        assert!(matcher(&[]).is_empty());
        // Empty entries are skipped; whitespace around `!` is trimmed.
        assert!(matcher(&["", "  "]).is_empty());
        let m = matcher(&["docs", "  !docs/README.md  "]);
        assert_eq!(m.patterns.len(), 2);
        assert!(m.has_exceptions);
        assert!(!m.excludes("docs/README.md"));
    }

    #[test]
    fn patterns_shortcuts() {
        assert!(
            matches!(compile_one("abc.def").shortcut, Shortcut::Exact(ref s) if s == "abc.def")
        );
        assert!(matches!(
            compile_one("a(b)c/def").shortcut,
            Shortcut::Exact(_)
        ));
        assert!(matches!(compile_one("dir/**").shortcut, Shortcut::Prefix(ref s) if s == "dir/"));
        assert!(matches!(compile_one("**").shortcut, Shortcut::Prefix(ref s) if s.is_empty()));
        assert!(matches!(
            compile_one("**/dir").shortcut,
            Shortcut::Scan { ref head, ref tail } if head.is_empty() && tail == "dir"
        ));
        assert!(matches!(
            compile_one("dist/*.whl").shortcut,
            Shortcut::Scan { ref head, ref tail } if head == "dist/" && tail == ".whl"
        ));
        assert!(matches!(compile_one("a\\*b").shortcut, Shortcut::Exact(ref s) if s == "a*b"));
    }

    #[test]
    fn patterns_root_only_without_double_star() {
        let m = matcher(&["*.log"]);
        assert!(m.excludes("a.log"));
        assert!(!m.excludes("dir/a.log"));
        let m = matcher(&["**/*.log"]);
        assert!(m.excludes("a.log"));
        assert!(m.excludes("dir/a.log"));
        assert!(m.excludes("dir/sub/a.log"));
        assert!(!m.excludes("dir/a.txt"));
    }

    #[test]
    fn patterns_directory_excludes_everything_below() {
        let m = matcher(&["dir"]);
        assert!(m.excludes("dir"));
        assert!(m.excludes("dir/x"));
        assert!(m.excludes("dir/x/y"));
        assert!(!m.excludes("dir2/x"));
        assert!(!m.excludes("di"));
        assert!(!m.excludes("other/dir"));
        assert!(!m.may_include_below("dir"));
    }

    #[test]
    fn patterns_exception_below_excluded_directory() {
        let m = matcher(&["dir", "!dir/keep"]);
        assert!(m.excludes("dir"));
        assert!(!m.excludes("dir/keep"));
        assert!(!m.excludes("dir/keep/inner/file"));
        assert!(m.excludes("dir/other"));
        assert!(m.excludes("dir/keeper"));
        assert!(m.may_include_below("dir"));
        assert!(!m.may_include_below("other"));
        assert!(!m.may_include_below("dir/other"));
        assert!(m.may_include_below("dir/keep"));
    }

    #[test]
    fn patterns_everything_but_dockerfile() {
        let m = matcher(&["*", "!Dockerfile"]);
        assert!(!m.excludes("Dockerfile"));
        assert!(m.excludes("README.md"));
        assert!(m.excludes("src"));
        assert!(m.excludes("src/main.rs"));
        assert!(!m.may_include_below("src"));
        // A root-level pattern does not reach into directories.
        assert!(m.excludes("sub/Dockerfile"));
    }

    #[test]
    fn patterns_leading_slash_and_dot_are_dropped() {
        for pattern in [
            "/abs/path",
            "abs/path",
            "./abs/path",
            "abs//path/",
            "abs/x/../path",
        ] {
            let m = matcher(&[pattern]);
            assert!(m.excludes("abs/path"), "{pattern:?}");
            assert!(m.excludes("abs/path/below"), "{pattern:?}");
            assert!(!m.excludes("abs"), "{pattern:?}");
        }
        let m = matcher(&["*", "!/keep", "!./also"]);
        assert!(!m.excludes("keep"));
        assert!(!m.excludes("also"));
        // `/` on its own matches nothing relative.
        let m = matcher(&["/"]);
        assert!(!m.excludes("a"));
    }

    #[test]
    fn patterns_double_star_in_the_middle() {
        let m = matcher(&["a/**/b"]);
        assert!(m.excludes("a/b"));
        assert!(m.excludes("a/x/b"));
        assert!(m.excludes("a/x/y/b"));
        assert!(m.excludes("a/x/y/b/c"));
        assert!(!m.excludes("a/xb"));
        assert!(!m.excludes("b"));
        assert!(!m.excludes("x/a/b"));
    }

    #[test]
    fn patterns_double_star_alone_excludes_everything() {
        let m = matcher(&["**"]);
        for path in ["a", ".dockerignore", "a/b/c", "Dockerfile"] {
            assert!(m.excludes(path), "{path:?}");
        }
        // ... but not the context root.
        assert!(!m.excludes(""));
        assert!(!m.excludes("."));
    }

    #[test]
    fn patterns_moby_quirks() {
        // `**` followed by plain text (no `/`) matches any path ending in it.
        let m = matcher(&["**file"]);
        assert!(m.excludes("file"));
        assert!(m.excludes("xfile"));
        assert!(m.excludes("dir/xfile"));
        // A `**` glued to text elsewhere still stands for `(.*/)?`.
        let m = matcher(&["a**b"]);
        assert!(m.excludes("ab"));
        assert!(m.excludes("ax/b"));
        assert!(!m.excludes("axb"));
        // Classes, unlike `?` and `*`, can match `/`.
        let m = matcher(&["a[^x]b"]);
        assert!(m.matches_exact_any("a/b"));
        // `]` outside a class is an ordinary character.
        assert!(matcher(&["a]b"]).excludes("a]b"));
        // `[!x]` is a class of `!` and `x` (no `!` negation in Go).
        let m = matcher(&["[!x]"]);
        assert!(m.excludes("!"));
        assert!(!m.excludes("y"));
    }

    #[test]
    fn patterns_last_match_wins() {
        let m = matcher(&["*.md", "!README*.md", "README-secret.md"]);
        assert!(m.excludes("CHANGELOG.md"));
        assert!(!m.excludes("README.md"));
        assert!(m.excludes("README-secret.md"));
        // An exception re-includes a directory and what is below it.
        let m = matcher(&["**", "!src", "src/**/*.tmp"]);
        assert!(!m.excludes("src"));
        assert!(!m.excludes("src/lib/a.rs"));
        assert!(m.excludes("src/lib/a.tmp"));
        assert!(m.excludes("target/debug"));
    }

    #[test]
    fn patterns_may_include_below() {
        // No exceptions: nothing below an excluded directory comes back.
        assert!(!matcher(&["node_modules"]).may_include_below("node_modules"));
        // Wildcard exceptions.
        let m = matcher(&["**", "!**/*.go"]);
        assert!(m.may_include_below("any/dir"));
        let m = matcher(&["vendor", "!vendor/*/LICENSE"]);
        assert!(m.may_include_below("vendor"));
        assert!(m.may_include_below("vendor/pkg"));
        assert!(!m.may_include_below("vendor/pkg/sub"));
        assert!(!m.may_include_below("other"));
        // An exception matching the directory or a parent re-includes below.
        let m = matcher(&["a", "!a", "a/b"]);
        assert!(m.may_include_below("a/b"));
        let m = matcher(&["x", "!x?y"]);
        assert!(!m.may_include_below("x"));
        assert!(m.may_include_below(""));
        let m = matcher(&["*", "!d*/keep"]);
        assert!(m.may_include_below("dist"));
        assert!(!m.may_include_below("build"));
    }

    #[test]
    fn patterns_query_paths_are_normalized() {
        let m = matcher(&["dir/file"]);
        assert!(m.excludes("/dir/file"));
        assert!(m.excludes("./dir/file"));
        assert!(m.excludes("dir//file/"));
        assert!(m.excludes("dir/x/../file"));
        assert!(!m.excludes("dir/fil"));
    }

    #[test]
    fn patterns_long_inputs_stay_linear() {
        // A pattern that would make a backtracking matcher exponential.
        let pattern = "*a".repeat(30) + "b";
        let m = matcher(&[&pattern]);
        let text = "a".repeat(5000);
        assert!(!m.excludes(&text));
        // Patterns too long for the stack scratch space still work.
        let long = "x".repeat(600) + "*";
        let m = matcher(&["nothing", &long]);
        assert!(m.excludes(&("x".repeat(600) + "yz")));
        assert!(!m.excludes(&"x".repeat(599)));
        let long_exception = format!("!{}?", "y".repeat(700));
        let m = matcher(&["**", &long_exception]);
        assert!(!m.excludes(&("y".repeat(700) + "z")));
        assert!(m.may_include_below(""));
        assert!(!m.may_include_below("z"));
    }

    #[test]
    fn patterns_clean() {
        for (input, want) in [
            ("", "."),
            (".", "."),
            ("./", "."),
            ("a/./b", "a/b"),
            ("a//b/", "a/b"),
            ("a/../b", "b"),
            ("../a", "../a"),
            ("a/../..", ".."),
            ("/..", "/"),
            ("/a/../../b", "/b"),
            ("!./x", "!./x"),
        ] {
            assert_eq!(clean(input), want, "{input:?}");
        }
    }

    impl PatternMatcher {
        /// Whether any pattern matches `path` exactly (tests only).
        fn matches_exact_any(&self, path: &str) -> bool {
            self.patterns.iter().any(|p| p.matches_exact(path))
        }
    }
}
