//! Errors that point into the Dockerfile: `FILE:LINE:COLUMN: message`, the
//! offending line, and a caret under the part that is wrong.

use std::fmt;

/// An error already rendered for the user; printed as it is.
#[derive(Debug)]
pub struct Diagnostic(pub String);

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Diagnostic {}

/// Renders `message` at `line` of `source`. `needle`, when found in that
/// line (ignoring case), is what the caret underlines; otherwise the
/// line's first word is.
pub fn render(
    file: &str,
    source: &[u8],
    line: usize,
    needle: Option<&str>,
    message: &str,
) -> Diagnostic {
    let text = String::from_utf8_lossy(source);
    let Some(source_line) = line.checked_sub(1).and_then(|i| text.lines().nth(i)) else {
        return Diagnostic(format!("{file}:{line}: {message}"));
    };
    let lowered = source_line.to_lowercase();
    let (start, len) =
        match needle.and_then(|n| lowered.find(&n.to_lowercase()).map(|at| (at, n.len()))) {
            Some(found) => found,
            None => {
                let start = source_line.len() - source_line.trim_start().len();
                let len = source_line[start..]
                    .split_whitespace()
                    .next()
                    .map_or(1, str::len);
                (start, len)
            }
        };
    // Columns count characters, as editors do.
    let column = source_line[..start].chars().count() + 1;
    let width = line.to_string().len();
    let pad = " ".repeat(source_line[..start].chars().count());
    let carets = "^".repeat(
        source_line
            .get(start..start + len)
            .map_or(1, |s| s.chars().count().max(1)),
    );
    Diagnostic(format!(
        "{file}:{line}:{column}: {message}\n {line:>width$} | {source_line}\n {blank:>width$} | {pad}{carets}",
        blank = ""
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_at_the_word() {
        let src = b"FROM scratch\n  FORM x\nCOPY --bogus a b\n";
        let d = render(
            "Dockerfile",
            src,
            2,
            Some("FORM"),
            "unknown instruction: FORM",
        );
        assert_eq!(
            d.0,
            "Dockerfile:2:3: unknown instruction: FORM\n 2 |   FORM x\n   |   ^^^^"
        );
        let d = render("Dockerfile", src, 3, Some("--bogus"), "unknown flag");
        assert_eq!(
            d.0,
            "Dockerfile:3:6: unknown flag\n 3 | COPY --bogus a b\n   |      ^^^^^^^"
        );
        let d = render("Dockerfile", src, 9, None, "past the end");
        assert_eq!(d.0, "Dockerfile:9: past the end");
    }
}
