//! Splitting a logical line into keyword, flags and the rest
//! (BuildKit's `splitCommand` and `extractBuilderFlags`).

/// A logical line taken apart.
pub(super) struct Command<'a> {
    /// The keyword as written.
    pub keyword: &'a str,
    pub flags: Vec<String>,
    /// Everything after the flags, trimmed.
    pub rest: &'a str,
}

pub(super) fn split_command(line: &str) -> Command<'_> {
    let line = line.trim();
    let (keyword, after) = match find_blank_run(line) {
        Some((start, end)) => (&line[..start], Some(&line[end..])),
        None => (line, None),
    };
    let (rest, flags) = match after {
        Some(after) => extract_flags(after),
        None => ("", Vec::new()),
    };
    Command {
        keyword,
        flags,
        rest: rest.trim(),
    }
}

/// Reads the leading `--flag` words off `line`, returning the rest of the
/// line and the flags.
///
/// Flag words may quote and backslash-escape (always `\`, whatever the escape
/// directive says); quotes and escapes are removed from the flag. A bare
/// `--` ends the flags and is dropped. The first word that doesn't start
/// with `--` starts the rest.
fn extract_flags(line: &str) -> (&str, Vec<String>) {
    #[derive(PartialEq)]
    enum Phase {
        Blank,
        Word,
        Quoted(u8),
    }

    let bytes = line.as_bytes();
    let mut flags = Vec::new();
    let mut word: Vec<u8> = Vec::new();
    // A quoted empty string still makes a word: `--x=""`.
    let mut blank_ok = false;
    let mut phase = Phase::Blank;
    let mut pos = 0;

    // Go walks bytes here. Bytes of multibyte characters are never blanks,
    // quotes or backslashes, so they pass through unchanged.
    while pos < bytes.len() {
        let mut byte = bytes[pos];
        match phase {
            Phase::Blank => {
                if is_blank_byte(byte) {
                    pos += 1;
                    continue;
                }
                if !(byte == b'-' && bytes.get(pos + 1) == Some(&b'-')) {
                    return (line.get(pos..).unwrap_or_default(), flags);
                }
                phase = Phase::Word;
                // Fall through to handle this byte as part of the word.
                continue;
            }
            Phase::Word => {
                if is_blank_byte(byte) {
                    phase = Phase::Blank;
                    if word == b"--" {
                        return (line.get(pos..).unwrap_or_default(), flags);
                    }
                    if blank_ok || !word.is_empty() {
                        flags.push(into_string(std::mem::take(&mut word)));
                    }
                    blank_ok = false;
                    pos += 1;
                    continue;
                }
                if byte == b'\'' || byte == b'"' {
                    phase = Phase::Quoted(byte);
                    blank_ok = true;
                    pos += 1;
                    continue;
                }
                if byte == b'\\' {
                    match bytes.get(pos + 1) {
                        // A backslash at the very end is dropped.
                        None => {
                            pos += 1;
                            continue;
                        }
                        Some(&next) => {
                            pos += 1;
                            byte = next;
                        }
                    }
                }
                word.push(byte);
            }
            Phase::Quoted(quote) => {
                if byte == quote {
                    phase = Phase::Word;
                    pos += 1;
                    continue;
                }
                if byte == b'\\' {
                    match bytes.get(pos + 1) {
                        None => {
                            phase = Phase::Word;
                            pos += 1;
                            continue;
                        }
                        Some(&next) => {
                            pos += 1;
                            byte = next;
                        }
                    }
                }
                word.push(byte);
            }
        }
        pos += 1;
    }

    if phase != Phase::Blank && word != b"--" && (blank_ok || !word.is_empty()) {
        flags.push(into_string(word));
    }
    ("", flags)
}

fn into_string(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes)
        .unwrap_or_else(|err| String::from_utf8_lossy(err.as_bytes()).into_owned())
}

/// Go's `unicode.IsSpace` on a single byte of ASCII.
fn is_blank_byte(byte: u8) -> bool {
    matches!(byte, b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' ')
}

/// The characters of BuildKit's `[\t\v\f\r ]+`, which separates words in
/// several places. Note: no newline and no Unicode spaces.
fn is_separator(ch: char) -> bool {
    matches!(ch, '\t' | '\x0B' | '\x0C' | '\r' | ' ')
}

/// The first run of separators in `text`, as a byte range.
fn find_blank_run(text: &str) -> Option<(usize, usize)> {
    let start = text.find(is_separator)?;
    let end = text[start..]
        .find(|ch: char| !is_separator(ch))
        .map_or(text.len(), |offset| start + offset);
    Some((start, end))
}

/// Go's `regexp.MustCompile("[\t\v\f\r ]+").Split(text, limit)`; a `limit`
/// of `None` means no limit.
pub(super) fn split_separators(text: &str, limit: Option<usize>) -> Vec<&str> {
    if limit == Some(0) {
        return Vec::new();
    }
    if text.is_empty() {
        return vec![""];
    }
    let mut parts = Vec::new();
    let mut rest_start = 0;
    while let Some((start, end)) = find_blank_run(&text[rest_start..]) {
        if limit.is_some_and(|limit| parts.len() + 1 == limit) {
            break;
        }
        parts.push(&text[rest_start..rest_start + start]);
        rest_start += end;
    }
    parts.push(&text[rest_start..]);
    parts
}

/// Splits a raw flag such as `--from=build` into its name without the
/// dashes and its value: `("from", Some("build"))`; `--no-cache` gives
/// `("no-cache", None)`.
pub fn split_flags_value(flag: &str) -> (&str, Option<&str>) {
    let flag = flag.strip_prefix("--").unwrap_or(flag);
    match flag.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (flag, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(line: &str) -> (&str, Vec<String>, &str) {
        let command = split_command(line);
        (command.keyword, command.flags, command.rest)
    }

    #[test]
    fn flags_are_the_leading_double_dash_words() {
        assert_eq!(split("COPY foo /tmp/"), ("COPY", vec![], "foo /tmp/"));
        assert_eq!(
            split("COPY --user=me --doit=true foo /tmp/"),
            (
                "COPY",
                vec!["--user=me".into(), "--doit=true".into()],
                "foo /tmp/"
            )
        );
        assert_eq!(
            split("COPY --doit=true -- foo"),
            ("COPY", vec!["--doit=true".into()], "foo")
        );
        assert_eq!(split("COPY -- --foo"), ("COPY", vec![], "--foo"));
        assert_eq!(
            split("CMD --doit -- [ ]"),
            ("CMD", vec!["--doit".into()], "[ ]")
        );
        assert_eq!(
            split("RUN --x=\"a b\" --y='' c"),
            ("RUN", vec!["--x=a b".into(), "--y=".into()], "c")
        );
        assert_eq!(
            split("RUN --x=a\\ b c"),
            ("RUN", vec!["--x=a b".into()], "c")
        );
        assert_eq!(split("RUN --x=é c"), ("RUN", vec!["--x=é".into()], "c"));
        assert_eq!(split("RUN --only"), ("RUN", vec!["--only".into()], ""));
        assert_eq!(split("RUN --"), ("RUN", vec![], ""));
        assert_eq!(split("  RUN  "), ("RUN", vec![], ""));
        assert_eq!(split(""), ("", vec![], ""));
    }

    #[test]
    fn split_separators_matches_go_regexp_split() {
        assert_eq!(split_separators("a b\t\tc", None), ["a", "b", "c"]);
        assert_eq!(split_separators("a  b c", Some(2)), ["a", "b c"]);
        assert_eq!(split_separators("a", Some(2)), ["a"]);
        assert_eq!(split_separators(" a ", None), ["", "a", ""]);
        assert_eq!(split_separators("", None), [""]);
        assert_eq!(split_separators("a\nb", None), ["a\nb"]);
    }

    #[test]
    fn split_flags_value_separates_name_and_value() {
        assert_eq!(split_flags_value("--from=build"), ("from", Some("build")));
        assert_eq!(
            split_flags_value("--mount=type=cache"),
            ("mount", Some("type=cache"))
        );
        assert_eq!(split_flags_value("--no-cache"), ("no-cache", None));
        assert_eq!(split_flags_value("--x="), ("x", Some("")));
    }
}
