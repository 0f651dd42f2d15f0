//! Shell-style word expansion, following BuildKit's Dockerfile shell lexer
//! (`frontend/dockerfile/shell/lex.go`).
//!
//! This is deliberately *not* a POSIX shell. It implements exactly the subset
//! BuildKit implements, quirks included, because Dockerfiles in the wild rely on
//! that behaviour:
//!
//! * `$NAME`, `${NAME}` and the operators `:-`, `-`, `:+`, `+`, `:?`, `?`,
//!   `#`, `##`, `%`, `%%`, `/` and `//`, nestable in their words;
//! * single quotes (literal) and double quotes (only `$`, `"` and the escape
//!   character are special);
//! * an escape character that is `\` or, after ``# escape=` ``, a backtick;
//! * positional and special parameters (`$1`, `$@`, `$$`, ...) which are never
//!   set in a Dockerfile and so expand to nothing.
//!
//! Errors carry the message BuildKit gives, without its `failed to process
//! "<word>"` prefix: callers know which word they passed in and can add it.

mod pattern;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;

/// Where the lexer looks variables up.
///
/// A variable that is set to the empty string is different from one that is
/// unset (`${V-x}` vs `${V:-x}`), so `get` returns an `Option`.
pub trait Env {
    fn get(&self, name: &str) -> Option<&str>;
}

impl<S: BuildHasher> Env for HashMap<String, String, S> {
    fn get(&self, name: &str) -> Option<&str> {
        HashMap::get(self, name).map(String::as_str)
    }
}

impl Env for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<&str> {
        BTreeMap::get(self, name).map(String::as_str)
    }
}

/// A list of `(name, value)` pairs; a later entry overrides an earlier one,
/// as in a process environment built up by successive `ENV` instructions.
impl Env for [(String, String)] {
    fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

impl Env for Vec<(String, String)> {
    fn get(&self, name: &str) -> Option<&str> {
        Env::get(self.as_slice(), name)
    }
}

impl<E: Env + ?Sized> Env for &E {
    fn get(&self, name: &str) -> Option<&str> {
        (**self).get(name)
    }
}

/// An environment with nothing set.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmptyEnv;

impl Env for EmptyEnv {
    fn get(&self, _name: &str) -> Option<&str> {
        None
    }
}

/// Why a word could not be expanded. The messages are BuildKit's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShellError {
    #[error("unexpected end of statement while looking for matching single-quote")]
    UnterminatedSingleQuote,
    #[error("unexpected end of statement while looking for matching double-quote")]
    UnterminatedDoubleQuote,
    /// The word ended inside `${...}` before the given terminator.
    #[error("unexpected end of statement while looking for matching {0}")]
    Unterminated(char),
    #[error("syntax error: missing '}}'")]
    MissingBrace,
    #[error("syntax error: missing '/' in ${{}}")]
    MissingSlash,
    /// `${}`, `${{x}`, `${:x}` and the like.
    #[error("syntax error: bad substitution")]
    BadSubstitution,
    /// An operator BuildKit does not implement, such as `:=` or `:#`.
    #[error("unsupported modifier ({0}) in substitution")]
    UnsupportedModifier(String),
    /// `${V?message}` with `V` unset, or `${V:?message}` with `V` unset or empty.
    #[error("{name}: {message}")]
    Required { name: String, message: String },
    /// A `#`, `%` or `/` pattern with an escape that means nothing.
    #[error("invalid pattern ({pattern}) in substitution: {reason}")]
    InvalidPattern { pattern: String, reason: String },
    /// Substitutions nested so deep that expanding them could exhaust the stack.
    #[error("substitutions nested deeper than {0} levels")]
    TooDeep(usize),
}

/// How deeply `${...}` may nest inside the words of other `${...}`. BuildKit
/// has no limit, but no real Dockerfile comes anywhere near this one, and it
/// keeps hostile input from overflowing the stack.
const MAX_NESTING: usize = 128;

/// The result of [`Lexer::process_word_with_matches`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expansion {
    /// The expanded word, quotes removed.
    pub result: String,
    /// Variables the word referenced that were set (possibly to "").
    pub matched: BTreeSet<String>,
    /// Variables the word referenced that were not set.
    pub unmatched: BTreeSet<String>,
}

/// Expands words the way BuildKit's `shell.Lex` does.
#[derive(Debug, Clone)]
pub struct Lexer {
    /// The escape character: `\` by default, or `` ` `` after ``# escape=` ``.
    pub escape: char,
    /// Keep quote characters in the result (their content is still processed).
    pub raw_quotes: bool,
    /// Keep escape characters in the result (what they escape is still literal).
    pub raw_escapes: bool,
    /// Leave references to unset variables as written instead of expanding them.
    pub skip_unset_env: bool,
    /// Treat quotes as ordinary characters.
    pub skip_process_quotes: bool,
}

impl Default for Lexer {
    fn default() -> Self {
        Self::new('\\')
    }
}

impl Lexer {
    pub fn new(escape: char) -> Self {
        Self {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_unset_env: false,
            skip_process_quotes: false,
        }
    }

    /// Expands `word` into a single string. Whitespace is kept, quotes are
    /// removed (unless `raw_quotes`).
    pub fn process_word(&self, word: &str, env: &dyn Env) -> Result<String, ShellError> {
        self.run(word, env).map(|done| done.result)
    }

    /// Expands `word` and splits the result into words on unquoted
    /// whitespace, including whitespace that came from unquoted variables.
    pub fn process_words(&self, word: &str, env: &dyn Env) -> Result<Vec<String>, ShellError> {
        self.run(word, env).map(|done| done.words)
    }

    /// Like [`process_word`](Self::process_word), also reporting which
    /// variables the word referenced, split by whether they were set.
    pub fn process_word_with_matches(
        &self,
        word: &str,
        env: &dyn Env,
    ) -> Result<Expansion, ShellError> {
        self.run(word, env).map(|done| Expansion {
            result: done.result,
            matched: done.matched,
            unmatched: done.unmatched,
        })
    }

    fn run(&self, word: &str, env: &dyn Env) -> Result<Processed, ShellError> {
        let mut state = ShellWord {
            lexer: self,
            env,
            chars: word.chars().collect(),
            pos: 0,
            raw_escapes: self.raw_escapes,
            depth: 0,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
        };
        let (result, words) = state.process_until(None, self.raw_escapes)?;
        Ok(Processed {
            result,
            words,
            matched: state.matched,
            unmatched: state.unmatched,
        })
    }
}

struct Processed {
    result: String,
    words: Vec<String>,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

/// Splits expanded text into words while it is being built.
///
/// Quoted text and escaped characters are added "raw" and never split; text
/// that came from outside quotes, including the values of unquoted variables,
/// is split on whitespace.
#[derive(Default)]
struct WordSplitter {
    current: String,
    words: Vec<String>,
    in_word: bool,
}

impl WordSplitter {
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() {
            // Whitespace ends a word only once the word has content: a word
            // that so far is only `""` stays open.
            if self.in_word && !self.current.is_empty() {
                self.words.push(std::mem::take(&mut self.current));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(ch);
        }
    }

    fn add_raw_char(&mut self, ch: char) {
        self.current.push(ch);
        self.in_word = true;
    }

    fn add_str(&mut self, text: &str) {
        text.chars().for_each(|ch| self.add_char(ch));
    }

    fn add_raw_str(&mut self, text: &str) {
        self.current.push_str(text);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        // An empty quoted word (`""`) does not make a word, as in BuildKit.
        if !self.current.is_empty() {
            self.words.push(self.current);
        }
        self.words
    }
}

/// The state of expanding one word.
struct ShellWord<'a> {
    lexer: &'a Lexer,
    env: &'a dyn Env,
    chars: Vec<char>,
    pos: usize,
    /// Whether escapes are currently kept; `#`, `%` and `/` patterns turn this
    /// on for their own words so that `\*` reaches the pattern compiler.
    raw_escapes: bool,
    depth: usize,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

impl ShellWord<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next_char(&mut self) -> Option<char> {
        let ch = self.peek();
        if ch.is_some() {
            self.pos += 1;
        }
        ch
    }

    /// Processes characters up to `stop` (consumed) or, without one, to the end.
    fn process_until(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Vec<String>), ShellError> {
        let saved = std::mem::replace(&mut self.raw_escapes, raw_escapes);
        let outcome = self.process_until_inner(stop);
        self.raw_escapes = saved;
        outcome
    }

    fn process_until_inner(
        &mut self,
        stop: Option<char>,
    ) -> Result<(String, Vec<String>), ShellError> {
        let mut result = String::new();
        let mut words = WordSplitter::default();
        let quotes = !self.lexer.skip_process_quotes;

        while let Some(ch) = self.peek() {
            if stop == Some(ch) {
                self.pos += 1;
                return Ok((result, words.finish()));
            }
            match ch {
                '$' => {
                    let value = self.process_dollar()?;
                    result.push_str(&value);
                    words.add_str(&value);
                }
                '\'' if quotes => {
                    let text = self.process_single_quote()?;
                    result.push_str(&text);
                    words.add_raw_str(&text);
                }
                '"' if quotes => {
                    let text = self.process_double_quote()?;
                    result.push_str(&text);
                    words.add_raw_str(&text);
                }
                _ => {
                    self.pos += 1;
                    if ch == self.lexer.escape {
                        if self.raw_escapes {
                            words.add_raw_char(ch);
                            result.push(ch);
                        }
                        // An escape at the very end is dropped.
                        let Some(escaped) = self.next_char() else {
                            break;
                        };
                        words.add_raw_char(escaped);
                        result.push(escaped);
                    } else {
                        words.add_char(ch);
                        result.push(ch);
                    }
                }
            }
        }

        match stop {
            Some(stop) => Err(ShellError::Unterminated(stop)),
            None => Ok((result, words.finish())),
        }
    }

    fn process_single_quote(&mut self) -> Result<String, ShellError> {
        // Everything up to the next `'` is literal; `'` cannot be escaped.
        let mut result = String::new();
        let opening = self.next_char();
        if self.lexer.raw_quotes {
            result.extend(opening);
        }
        loop {
            match self.next_char() {
                None => return Err(ShellError::UnterminatedSingleQuote),
                Some('\'') => {
                    if self.lexer.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(ch) => result.push(ch),
            }
        }
    }

    fn process_double_quote(&mut self) -> Result<String, ShellError> {
        // Literal except for `$` and the escape character, which escapes only
        // `"`, `$` and itself; before anything else it stays as written.
        let mut result = String::new();
        let opening = self.next_char();
        if self.lexer.raw_quotes {
            result.extend(opening);
        }
        loop {
            match self.peek() {
                None => return Err(ShellError::UnterminatedDoubleQuote),
                Some('"') => {
                    self.pos += 1;
                    if self.lexer.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let value = self.process_dollar()?;
                    result.push_str(&value);
                }
                Some(mut ch) => {
                    self.pos += 1;
                    if ch == self.lexer.escape {
                        if self.raw_escapes {
                            result.push(ch);
                        }
                        match self.peek() {
                            // A trailing escape is dropped; the loop then
                            // reports the missing closing quote.
                            None => continue,
                            Some(next)
                                if next == '"' || next == '$' || next == self.lexer.escape =>
                            {
                                ch = next;
                                self.pos += 1;
                            }
                            // BuildKit writes the escape a second time here
                            // when escapes are raw; kept for compatibility.
                            Some(_) => {}
                        }
                    }
                    result.push(ch);
                }
            }
        }
    }

    fn process_dollar(&mut self) -> Result<String, ShellError> {
        if self.depth >= MAX_NESTING {
            return Err(ShellError::TooDeep(MAX_NESTING));
        }
        self.depth += 1;
        let outcome = self.process_dollar_inner();
        self.depth -= 1;
        outcome
    }

    fn process_dollar_inner(&mut self) -> Result<String, ShellError> {
        self.pos += 1; // the `$`

        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                // `$` before something that can't start a name stays a `$`.
                return Ok("$".to_owned());
            }
            return Ok(match self.lookup(&name) {
                Some(value) => value,
                None if self.lexer.skip_unset_env => format!("${name}"),
                None => String::new(),
            });
        }

        self.pos += 1; // the `{`
        match self.peek() {
            None => return Err(ShellError::MissingBrace),
            Some('{' | '}' | ':') => return Err(ShellError::BadSubstitution),
            Some(_) => {}
        }
        let name = self.process_name();
        let Some(op) = self.next_char() else {
            return Err(ShellError::MissingBrace);
        };
        match op {
            '}' => Ok(match self.lookup(&name) {
                Some(value) => value,
                None if self.lexer.skip_unset_env => format!("${{{name}}}"),
                None => String::new(),
            }),
            ':' | '+' | '-' | '?' | '#' | '%' => self.process_modifier(name, op),
            '/' => self.process_replace(&name),
            other => Err(ShellError::UnsupportedModifier(other.to_string())),
        }
    }

    /// `${name:-word}`, `${name#pattern}` and the rest of that family; `first`
    /// is the character after the name, already consumed.
    fn process_modifier(&mut self, name: String, first: char) -> Result<String, ShellError> {
        let mut spelled = first.to_string();
        // With `:` an empty value counts as unset.
        let (null_is_unset, op) = if first == ':' {
            let op = self.next_char();
            // At the end of input BuildKit's scanner yields U+FFFD here.
            spelled.push(op.unwrap_or(char::REPLACEMENT_CHARACTER));
            (true, op)
        } else {
            (false, Some(first))
        };

        // Patterns keep their escapes so that `\*` reaches the pattern compiler.
        let is_pattern = matches!(op, Some('#' | '%'));
        if null_is_unset && is_pattern {
            return Err(ShellError::UnsupportedModifier(spelled));
        }

        let mut word = self.process_word_until('}', is_pattern, ShellError::MissingBrace)?;

        let value = self.lookup(&name);
        if value.is_none() && self.lexer.skip_unset_env {
            return Ok(format!("${{{name}{spelled}{word}}}"));
        }
        let set = value.is_some();
        let value = value.unwrap_or_default();
        let missing = !set || (null_is_unset && value.is_empty());
        match op {
            Some('-') => Ok(if missing { word } else { value }),
            Some('+') => Ok(if missing { String::new() } else { word }),
            Some('?') if !set => Err(required(name, word, "is not allowed to be unset")),
            Some('?') if missing => Err(required(name, word, "is not allowed to be empty")),
            Some('?') => Ok(value),
            Some(op @ ('#' | '%')) => {
                // `#`/`%` remove the shortest match, `##`/`%%` the longest.
                let greedy = word.starts_with(op);
                if greedy {
                    word.remove(0);
                }
                if op == '#' {
                    pattern::trim_prefix(&word, &value, greedy)
                } else {
                    pattern::trim_suffix(&word, &value, greedy)
                }
            }
            _ => Err(ShellError::UnsupportedModifier(spelled)),
        }
    }

    /// `${name/pattern/replacement}` and `${name//pattern/replacement}`; the
    /// first `/` is already consumed.
    fn process_replace(&mut self, name: &str) -> Result<String, ShellError> {
        let replace_all = self.peek() == Some('/');
        if replace_all {
            self.pos += 1;
        }
        let pattern = self.process_word_until('/', true, ShellError::MissingSlash)?;
        let replacement = self.process_word_until('}', true, ShellError::MissingBrace)?;

        let value = self.lookup(name);
        if value.is_none() && self.lexer.skip_unset_env {
            // BuildKit writes a single `/` back even for `//`.
            return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
        }
        // An unset variable is replaced in as "", where a pattern that
        // matches the empty string still inserts the replacement.
        let value = value.unwrap_or_default();
        pattern::replace(&value, &pattern, &replacement, replace_all)
    }

    /// Processes the word of an operator up to `stop`. Running out of input
    /// is reported as `at_end`, other errors as they are.
    fn process_word_until(
        &mut self,
        stop: char,
        raw_escapes: bool,
        at_end: ShellError,
    ) -> Result<String, ShellError> {
        match self.process_until(Some(stop), raw_escapes) {
            Ok((word, _)) => Ok(word),
            Err(_) if self.peek().is_none() => Err(at_end),
            Err(err) => Err(err),
        }
    }

    /// Reads a variable name: letters, digits and `_`; or a run of digits (a
    /// positional parameter); or one special-parameter character.
    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && is_digit(ch) {
                while let Some(digit) = self.peek().filter(|&c| is_digit(c)) {
                    name.push(digit);
                    self.pos += 1;
                }
                return name;
            }
            if name.is_empty() && is_special_param(ch) {
                self.pos += 1;
                return ch.to_string();
            }
            if !ch.is_alphabetic() && !is_digit(ch) && ch != '_' {
                break;
            }
            name.push(ch);
            self.pos += 1;
        }
        name
    }

    fn lookup(&mut self, name: &str) -> Option<String> {
        match self.env.get(name) {
            Some(value) => {
                self.matched.insert(name.to_owned());
                Some(value.to_owned())
            }
            None => {
                self.unmatched.insert(name.to_owned());
                None
            }
        }
    }
}

fn required(name: String, word: String, default_message: &str) -> ShellError {
    let message = if word.is_empty() {
        default_message.to_owned()
    } else {
        word
    };
    ShellError::Required { name, message }
}

/// Go's `unicode.IsDigit`: decimal digits of any script.
fn is_digit(ch: char) -> bool {
    ch.is_ascii_digit() || (!ch.is_ascii() && ch.is_numeric() && !ch.is_alphabetic())
}

/// The POSIX special parameters; never set in a Dockerfile.
fn is_special_param(ch: char) -> bool {
    matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0')
}
