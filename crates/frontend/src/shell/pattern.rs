//! The shell patterns of `${V#p}`, `${V%p}` and `${V/p/r}`.
//!
//! BuildKit turns a pattern into a Go regular expression (`*` becomes `.*` or
//! `.*?`, `?` becomes `.`, everything else is literal) and lets Go's
//! leftmost-first engine find the match. We match the same tokens with a small
//! backtracking search that explores alternatives in the same order, so we
//! pick exactly the match Go would, without pulling in a regex engine.
//!
//! Like Go's `.`, wildcards never match a newline. Matching works on
//! characters, not bytes.

use std::collections::HashSet;

use super::ShellError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Literal(char),
    /// `?`: any one character except a newline.
    Any,
    /// `*`: any run of characters without a newline.
    Star,
}

#[derive(Debug)]
struct Pattern {
    tokens: Vec<Token>,
    /// `*` prefers the longest run (`##`, `%%` and `/`) or the shortest.
    greedy: bool,
    /// The match must start at the beginning of the text (`#` and `%`).
    anchored: bool,
}

impl Pattern {
    /// Compiles a pattern as BuildKit's `convertShellPatternToRegex` does.
    ///
    /// A backslash makes `*`, `?` or `\` literal. Before `}` or `/` it is
    /// dropped: those needed escaping only to get past the `${...}` syntax.
    /// Any other escape is an error.
    fn compile(pattern: &str, greedy: bool, anchored: bool) -> Result<Self, String> {
        let mut tokens = Vec::new();
        let mut chars = pattern.chars().peekable();
        while let Some(ch) = chars.next() {
            let token = match ch {
                '*' => Token::Star,
                '?' => Token::Any,
                '\\' => {
                    if matches!(chars.peek(), Some('}' | '/')) {
                        continue;
                    }
                    match chars.next() {
                        Some(escaped @ ('*' | '?' | '\\')) => Token::Literal(escaped),
                        Some(other) => return Err(format!("invalid escape '\\{other}'")),
                        None => return Err("invalid escape '\\' at end of pattern".to_owned()),
                    }
                }
                other => Token::Literal(other),
            };
            tokens.push(token);
        }
        Ok(Self {
            tokens,
            greedy,
            anchored,
        })
    }

    /// Finds the leftmost match starting at or after `from`, returning its
    /// character range.
    fn find(&self, text: &[char], from: usize) -> Option<(usize, usize)> {
        let last_start = if self.anchored { 0 } else { text.len() };
        if from > last_start {
            return None;
        }
        // Whether a (token, position) state can reach the end of the pattern
        // does not depend on how we got there, so a state seen once and not
        // already reported as a match has failed and need not be tried again.
        // That bounds the work by tokens × positions.
        let width = text.len() + 1;
        let mut seen = Visited::new((self.tokens.len() + 1).saturating_mul(width));
        let mut stack = Vec::new();

        for start in from..=last_start {
            stack.push((0, start));
            while let Some((token, pos)) = stack.pop() {
                if !seen.insert(token * width + pos) {
                    continue;
                }
                let Some(current) = self.tokens.get(token) else {
                    return Some((start, pos));
                };
                let next = text.get(pos).copied();
                match *current {
                    Token::Literal(ch) => {
                        if next == Some(ch) {
                            stack.push((token + 1, pos + 1));
                        }
                    }
                    Token::Any => {
                        if next.is_some_and(|ch| ch != '\n') {
                            stack.push((token + 1, pos + 1));
                        }
                    }
                    Token::Star => {
                        let can_extend = next.is_some_and(|ch| ch != '\n');
                        // The alternative pushed last is tried first.
                        if self.greedy {
                            stack.push((token + 1, pos));
                            if can_extend {
                                stack.push((token, pos + 1));
                            }
                        } else {
                            if can_extend {
                                stack.push((token, pos + 1));
                            }
                            stack.push((token + 1, pos));
                        }
                    }
                }
            }
        }
        None
    }
}

/// The set of search states already explored: a bitset, or a hash set when
/// a bitset for every state would be large (a long pattern against a long
/// value) and the search will likely touch only a few of them.
enum Visited {
    Dense(Vec<u64>),
    Sparse(HashSet<usize>),
}

impl Visited {
    /// Up to this many states (128 KiB of bits) get a bitset.
    const DENSE_LIMIT: usize = 1 << 20;

    fn new(states: usize) -> Self {
        if states <= Self::DENSE_LIMIT {
            Self::Dense(vec![0; states.div_ceil(64)])
        } else {
            Self::Sparse(HashSet::new())
        }
    }

    /// Marks `state` as seen, returning whether it was new.
    fn insert(&mut self, state: usize) -> bool {
        match self {
            Self::Dense(bits) => {
                let Some(word) = bits.get_mut(state / 64) else {
                    return false;
                };
                let bit = 1 << (state % 64);
                let new = *word & bit == 0;
                *word |= bit;
                new
            }
            Self::Sparse(set) => set.insert(state),
        }
    }
}

fn invalid(pattern: &str, reason: String) -> ShellError {
    ShellError::InvalidPattern {
        pattern: pattern.to_owned(),
        reason,
    }
}

/// `${V#pattern}` / `${V##pattern}`: removes the shortest (longest) matching prefix.
pub(super) fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Result<String, ShellError> {
    let compiled = Pattern::compile(pattern, greedy, true).map_err(|err| invalid(pattern, err))?;
    let text: Vec<char> = value.chars().collect();
    Ok(match compiled.find(&text, 0) {
        Some((_, end)) => text.get(end..).unwrap_or_default().iter().collect(),
        None => value.to_owned(),
    })
}

/// `${V%pattern}` / `${V%%pattern}`: removes the shortest (longest) matching suffix.
///
/// A leftmost search can't find the shortest rightmost match, so, like
/// BuildKit, we reverse both the pattern and the value and trim a prefix.
pub(super) fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Result<String, ShellError> {
    let reversed_value: String = value.chars().rev().collect();
    let trimmed = trim_prefix(&reverse_pattern(pattern), &reversed_value, greedy)?;
    Ok(trimmed.chars().rev().collect())
}

/// Reverses a pattern but keeps each escape in front of what it escapes:
/// `a\*c` becomes `c\*a`.
fn reverse_pattern(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = Vec::with_capacity(chars.len());
    let mut i = chars.len();
    // Walk backwards, but first find where the escape pairs are by walking
    // forwards: a backslash pairs with the character after it, unless it is
    // the last character.
    let mut pairs = vec![false; chars.len()];
    let mut j = 0;
    while j < chars.len() {
        if chars[j] == '\\' && j + 1 < chars.len() {
            pairs[j] = true;
            j += 2;
        } else {
            j += 1;
        }
    }
    while i > 0 {
        i -= 1;
        if i > 0 && pairs[i - 1] {
            out.push(chars[i - 1]);
            out.push(chars[i]);
            i -= 1;
        } else {
            out.push(chars[i]);
        }
    }
    out.into_iter().collect()
}

/// `${V/pattern/replacement}` (first match) and `${V//pattern/replacement}`
/// (every match). `*` is greedy and the pattern may match anywhere.
pub(super) fn replace(
    value: &str,
    pattern: &str,
    replacement: &str,
    all: bool,
) -> Result<String, ShellError> {
    let compiled = Pattern::compile(pattern, true, false).map_err(|err| invalid(pattern, err))?;
    let text: Vec<char> = value.chars().collect();
    let slice = |from: usize, to: usize| -> String {
        text.get(from..to).unwrap_or_default().iter().collect()
    };

    if !all {
        // The single replacement is inserted literally...
        return Ok(match compiled.find(&text, 0) {
            Some((start, end)) => slice(0, start) + replacement + &slice(end, text.len()),
            None => value.to_owned(),
        });
    }

    // ...but replacing every match goes through Go's ReplaceAllString, which
    // expands `$0`/`${0}` (the match), `$$` and other `$name` references in
    // the replacement. This loop also follows Go on empty matches: never
    // replace an empty match right after a previous match, and always move on
    // by at least one character.
    let mut out = String::new();
    let mut last_end = 0;
    let mut search = 0;
    while search <= text.len() {
        let Some((start, end)) = compiled.find(&text, search) else {
            break;
        };
        out.push_str(&slice(last_end, start));
        if end > last_end || start == 0 {
            expand_template(&mut out, replacement, &slice(start, end));
        }
        last_end = end;
        let width = usize::from(search < text.len());
        if search + width > end {
            search += width;
        } else if search + 1 > end {
            search += 1;
        } else {
            search = end;
        }
    }
    out.push_str(&slice(last_end, text.len()));
    Ok(out)
}

/// Go's `Regexp.Expand` for a pattern whose only group is the whole match.
fn expand_template(out: &mut String, template: &str, matched: &str) {
    let mut rest = template;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        rest = &rest[dollar + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        }
        match template_reference(rest) {
            Some((name, after)) => {
                if name == "0" {
                    out.push_str(matched);
                }
                // Any other group or name does not exist and expands to "".
                rest = after;
            }
            None => out.push('$'),
        }
    }
    out.push_str(rest);
}

/// Parses `name` or `{name}` at the start of `text` (after a `$`), returning
/// the name and the text after the reference.
fn template_reference(text: &str) -> Option<(&str, &str)> {
    let (braced, body) = match text.strip_prefix('{') {
        Some(body) => (true, body),
        None => (false, text),
    };
    let len = body
        .char_indices()
        .find(|&(_, ch)| !(ch.is_alphanumeric() || ch == '_'))
        .map_or(body.len(), |(index, _)| index);
    if len == 0 {
        return None;
    }
    let (name, after) = body.split_at(len);
    if braced {
        let after = after.strip_prefix('}')?;
        return Some((name, after));
    }
    Some((name, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compile_accepts_the_escapes_buildkit_accepts() {
        for pattern in ["*", "?", "\\*", "(()[]{\\}^$.\\*\\?|\\\\", "a\\/b"] {
            assert!(Pattern::compile(pattern, true, true).is_ok(), "{pattern}");
        }
        for pattern in ["\\", "\\x", "\\\\\\"] {
            assert!(Pattern::compile(pattern, true, true).is_err(), "{pattern}");
        }
    }

    #[test]
    fn reverse_pattern_keeps_escapes_in_front() {
        let cases = [
            ("a\\*c", "c\\*a"),
            ("\\\\\\ab", "b\\a\\\\"),
            ("ab\\", "\\ba"),
            ("👽\\🚀🖖", "🖖\\🚀👽"),
            ("\\\\b", "b\\\\"),
            ("", ""),
        ];
        for (pattern, expected) in cases {
            assert_eq!(reverse_pattern(pattern), expected, "{pattern}");
        }
    }

    #[test]
    fn lazy_and_greedy_stars_pick_go_matches() {
        let text: Vec<char> = "xxyy".chars().collect();
        let lazy = Pattern::compile("*x*y", false, true).unwrap();
        assert_eq!(lazy.find(&text, 0), Some((0, 3)));
        let greedy = Pattern::compile("*x*y", true, true).unwrap();
        assert_eq!(greedy.find(&text, 0), Some((0, 4)));
        let anywhere = Pattern::compile("y", true, false).unwrap();
        assert_eq!(anywhere.find(&text, 0), Some((2, 3)));
    }

    #[test]
    fn long_patterns_on_long_values() {
        // Enough states for the sparse visited set.
        let value = "a".repeat(3000) + "b";
        let pattern = "a".repeat(2000) + "*b";
        assert_eq!(trim_prefix(&pattern, &value, false).unwrap(), "");
        assert_eq!(trim_suffix("b", &value, false).unwrap(), "a".repeat(3000));
        let no_match = "a".repeat(2000) + "c";
        assert_eq!(trim_prefix(&no_match, &value, true).unwrap(), value);
    }

    #[test]
    fn wildcards_do_not_cross_newlines() {
        let text: Vec<char> = "ab\ncd".chars().collect();
        let star = Pattern::compile("*", true, true).unwrap();
        assert_eq!(star.find(&text, 0), Some((0, 2)));
    }

    #[test]
    fn replace_all_follows_go_on_empty_matches_and_templates() {
        assert_eq!(replace("ab", "", "-", true).unwrap(), "-a-b-");
        assert_eq!(replace("abc", "b", "[$0]", true).unwrap(), "a[b]c");
        assert_eq!(replace("abc", "b", "$$", true).unwrap(), "a$c");
        assert_eq!(replace("abc", "b", "$x", true).unwrap(), "ac");
        assert_eq!(replace("abc", "b", "$", true).unwrap(), "a$c");
        assert_eq!(replace("abc", "b", "$0", false).unwrap(), "a$0c");
        assert_eq!(replace("", "*", "y", true).unwrap(), "y");
    }
}
