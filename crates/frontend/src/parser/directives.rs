//! Parser directives: `# syntax=...`, `# escape=...` and `# check=...`.
//!
//! BuildKit only looks for them in the block of lines at the very top of the
//! file that are all known directives. The first line that is anything else (a
//! blank line, an ordinary comment, an unknown `# key=value`, an instruction)
//! ends the block for good, so a directive after it is just a comment.
//! Directive names are case-insensitive; each may appear once.

use super::{Directive, Directives, ParseError};

#[derive(Default)]
pub(super) struct DirectiveParser {
    done: bool,
    directives: Directives,
    seen_escape: bool,
}

impl DirectiveParser {
    /// Looks at one line (line ending and leading whitespace removed).
    pub(super) fn observe(&mut self, line: &str, number: usize) -> Result<(), ParseError> {
        if self.done {
            return Ok(());
        }
        let Some((name, value)) = split_directive(line) else {
            self.done = true;
            return Ok(());
        };
        let name = name.to_ascii_lowercase();
        let duplicate = match name.as_str() {
            "escape" => std::mem::replace(&mut self.seen_escape, true),
            "syntax" => self.directives.syntax.is_some(),
            "check" => self.directives.check.is_some(),
            _ => {
                self.done = true;
                return Ok(());
            }
        };
        if duplicate {
            return Err(ParseError::DuplicateDirective { name, line: number });
        }

        let directive = Directive {
            value: value.to_owned(),
            line: number,
        };
        match name.as_str() {
            "escape" => {
                self.directives.escape = match value {
                    "\\" => '\\',
                    "`" => '`',
                    _ => {
                        return Err(ParseError::InvalidEscapeToken {
                            token: value.to_owned(),
                            line: number,
                        });
                    }
                };
            }
            "syntax" => self.directives.syntax = Some(directive),
            _ => self.directives.check = Some(directive),
        }
        Ok(())
    }

    pub(super) fn escape(&self) -> char {
        self.directives.escape
    }

    pub(super) fn finish(self) -> Directives {
        self.directives
    }
}

/// Matches BuildKit's `^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$`,
/// returning the name and the value.
fn split_directive(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix('#')?.trim_start_matches(is_regex_space);
    let name_len = rest
        .find(|ch: char| !ch.is_ascii_alphanumeric())
        .unwrap_or(rest.len());
    let name = &rest[..name_len];
    if !name.starts_with(|ch: char| ch.is_ascii_alphabetic()) {
        return None;
    }
    let rest = rest[name_len..]
        .trim_start_matches(is_regex_space)
        .strip_prefix('=')?;
    // `.` does not match a newline.
    if rest.is_empty() || rest.contains('\n') {
        return None;
    }
    let value = rest.trim_matches(is_regex_space);
    if !value.is_empty() {
        return Some((name, value));
    }
    // Only blanks after `=`: the lazy `(.+?)` still needs one character, so
    // backtracking hands it the last blank.
    let last = rest.char_indices().last().map_or(0, |(index, _)| index);
    Some((name, &rest[last..]))
}

/// Go's regexp `\s`: `[\t\n\f\r ]` (no vertical tab, no Unicode spaces).
fn is_regex_space(ch: char) -> bool {
    matches!(ch, '\t' | '\n' | '\x0C' | '\r' | ' ')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_directive_follows_buildkits_regex() {
        assert_eq!(split_directive("# escape=`"), Some(("escape", "`")));
        assert_eq!(split_directive("#escape = \\"), Some(("escape", "\\")));
        assert_eq!(
            split_directive("#  Syntax=  a/b:1  "),
            Some(("Syntax", "a/b:1"))
        );
        assert_eq!(
            split_directive("# check=skip=all"),
            Some(("check", "skip=all"))
        );
        assert_eq!(split_directive("# escape= "), Some(("escape", " ")));
        assert_eq!(split_directive("# escape="), None);
        assert_eq!(split_directive("# 1x=y"), None);
        assert_eq!(split_directive("# a-b=y"), None);
        assert_eq!(split_directive("# just a comment"), None);
        assert_eq!(split_directive("FROM x"), None);
        assert_eq!(split_directive(""), None);
    }
}
