//! Finding here-document words (`<<EOF`, `<<-EOF`, `<<"EOF"`) in RUN, COPY
//! and ADD lines (BuildKit's `heredocsFromLine` and `ParseHeredoc`).
//!
//! The line is split into words with the shell lexer, so a `<<EOF` inside
//! quotes is not a heredoc. Each word of the form `[digits]<<[-]delimiter` is
//! one. The delimiter is lexed twice, with quotes removed and kept: if the
//! two differ in quote count, part of it was quoted and the body is not
//! expanded.

use super::{Heredoc, Instruction, InstructionError};
use crate::shell::{EmptyEnv, Lexer};

/// Whether `instruction` may carry heredocs: RUN, COPY and ADD (directly or
/// as an ONBUILD trigger) in shell form.
pub(super) fn can_contain_heredoc(instruction: &Instruction) -> bool {
    let target = match instruction.onbuild.as_deref() {
        Some(trigger) if instruction.keyword == "onbuild" => trigger,
        _ => instruction,
    };
    matches!(target.keyword.as_str(), "run" | "copy" | "add") && !target.json
}

/// The heredocs a logical line opens, in order.
pub(super) fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>, InstructionError> {
    let lexer = Lexer {
        raw_quotes: true,
        raw_escapes: true,
        skip_unset_env: true,
        ..Lexer::new('\\')
    };
    // A line the lexer can't split (an unclosed quote, say) has no heredocs;
    // it is not an error.
    let words = lexer.process_words(line, &EmptyEnv).unwrap_or_default();
    let mut docs = Vec::new();
    for word in words {
        if let Some(doc) = parse_heredoc(&word)? {
            docs.push(doc);
        }
    }
    Ok(docs)
}

/// Parses one word as a heredoc opener, returning `None` if it isn't one.
pub(super) fn parse_heredoc(word: &str) -> Result<Option<Heredoc>, InstructionError> {
    // BuildKit's regex: ^(\d*)<<(-?)([^<]*)$. The digits are a file
    // descriptor, which nothing uses.
    let after_fd = word.trim_start_matches(|ch: char| ch.is_ascii_digit());
    let Some(rest) = after_fd.strip_prefix("<<") else {
        return Ok(None);
    };
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, rest),
    };
    if rest.is_empty() || rest.contains('<') {
        return Ok(None);
    }

    let mut lexer = Lexer {
        skip_unset_env: true,
        ..Lexer::new('\\')
    };
    let words = lexer.process_words(rest, &EmptyEnv)?;
    let [name] = words.as_slice() else {
        return Ok(None);
    };
    lexer.raw_quotes = true;
    let raw_words = lexer.process_words(rest, &EmptyEnv)?;
    let [raw_name] = raw_words.as_slice() else {
        return Err(InstructionError::HeredocInconsistent(rest.to_owned()));
    };

    let quotes = |text: &str| text.chars().filter(|&ch| ch == '\'' || ch == '"').count();
    Ok(Some(Heredoc {
        name: name.clone(),
        content: String::new(),
        expand: quotes(name) == quotes(raw_name),
        chomp,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(line: &str) -> Vec<String> {
        heredocs_from_line(line)
            .unwrap()
            .into_iter()
            .map(|doc| doc.name)
            .collect()
    }

    #[test]
    fn heredoc_words() {
        for word in [
            "<<EOF",
            "<<'EOF'",
            "<<\"EOF\"",
            "<<-EOF",
            "<<-'EOF'",
            "<<-\"EOF\"",
            "<<EO\"F\"",
        ] {
            let doc = parse_heredoc(word).unwrap().unwrap();
            assert_eq!(doc.name, "EOF", "{word}");
        }
        for word in ["", "EOF", "<<", "<<-", "<EOF", "<<<EOF", "x<<EOF"] {
            assert_eq!(parse_heredoc(word).unwrap(), None, "{word}");
        }
        for word in ["<<'EOF", "<<\"EOF", "<<EOF'", "<<EOF\""] {
            assert!(parse_heredoc(word).is_err(), "{word}");
        }
    }

    #[test]
    fn quoting_any_part_disables_expansion() {
        let expand = |word: &str| parse_heredoc(word).unwrap().unwrap().expand;
        assert!(expand("<<EOF"));
        assert!(expand("3<<EOF"));
        assert!(!expand("<<'EOF'"));
        assert!(!expand("<<\"EOF\""));
        assert!(!expand("<<E'O'F"));
        assert!(parse_heredoc("<<-EOF").unwrap().unwrap().chomp);
    }

    #[test]
    fn heredocs_in_lines() {
        assert_eq!(names("RUN <<EOF"), ["EOF"]);
        assert_eq!(names("RUN 4<<EOF"), ["EOF"]);
        assert_eq!(names("RUN <<EOF <<EOF2"), ["EOF", "EOF2"]);
        assert_eq!(names("COPY <<a.txt <<b.txt /dir/"), ["a.txt", "b.txt"]);
        assert!(names("RUN '<<EOF'").is_empty());
        assert!(names("RUN \"<<EOF\"").is_empty());
        assert!(names("RUN \"unterminated <<EOF").is_empty());
    }
}
