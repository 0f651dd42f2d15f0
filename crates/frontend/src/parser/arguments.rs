//! Turning a logical line into an [`Instruction`]: the per-keyword argument
//! rules of BuildKit's dispatch table (`line_parsers.go`).

use super::command::{split_command, split_separators};
use super::json::{self, JsonError};
use super::{Instruction, InstructionError};

/// How many ONBUILDs may nest (`ONBUILD ONBUILD RUN x`). BuildKit rejects
/// any nesting later, when it builds; the parser only has to stay off the
/// stack's edge.
const MAX_ONBUILD_DEPTH: usize = 32;

/// The arguments of one instruction.
#[derive(Default)]
struct Arguments {
    args: Vec<String>,
    json: bool,
    onbuild: Option<Box<Instruction>>,
}

impl Arguments {
    fn words(args: Vec<String>) -> Self {
        Self {
            args,
            ..Self::default()
        }
    }
}

/// Parses one logical line. Line numbers are left at 0 for the caller.
pub(super) fn instruction_from_line(
    line: &str,
    escape: char,
) -> Result<Instruction, InstructionError> {
    // ONBUILD nests by re-parsing its rest as a line of its own. Do that in
    // a loop, innermost last, then wrap the results back up from the inside.
    let mut pending = Vec::new();
    let mut line = line;
    loop {
        let command = split_command(line);
        let keyword = command.keyword.to_lowercase();
        if keyword == "onbuild" && !command.rest.is_empty() {
            if pending.len() == MAX_ONBUILD_DEPTH {
                return Err(InstructionError::NestingTooDeep(MAX_ONBUILD_DEPTH));
            }
            let rest = command.rest;
            pending.push(new_instruction(
                line,
                keyword,
                command.flags,
                Arguments::default(),
            ));
            line = rest;
            continue;
        }
        let arguments = parse_arguments(&keyword, command.rest, escape)?;
        let mut instruction = new_instruction(line, keyword, command.flags, arguments);
        while let Some(mut outer) = pending.pop() {
            outer.onbuild = Some(Box::new(instruction));
            instruction = outer;
        }
        return Ok(instruction);
    }
}

fn new_instruction(
    line: &str,
    keyword: String,
    flags: Vec<String>,
    arguments: Arguments,
) -> Instruction {
    Instruction {
        keyword,
        flags,
        args: arguments.args,
        onbuild: arguments.onbuild,
        json: arguments.json,
        heredocs: Vec::new(),
        original: line.to_owned(),
        start_line: 0,
        end_line: 0,
    }
}

fn parse_arguments(keyword: &str, rest: &str, escape: char) -> Result<Arguments, InstructionError> {
    Ok(match keyword {
        "run" | "cmd" | "entrypoint" | "shell" => maybe_json(rest)?,
        "add" | "copy" | "volume" => maybe_json_to_list(rest)?,
        "from" | "expose" => Arguments::words(whitespace_delimited(rest)),
        "env" => Arguments::words(name_value_pairs(rest, "ENV", escape)?),
        "label" => Arguments::words(name_value_pairs(rest, "LABEL", escape)?),
        "arg" => Arguments::words(words(rest, escape)),
        "maintainer" | "user" | "workdir" | "stopsignal" => Arguments::words(single_string(rest)),
        "healthcheck" => health_check(rest)?,
        // An ONBUILD with nothing after it.
        "onbuild" => Arguments::default(),
        // BuildKit keeps unknown instructions with their arguments thrown
        // away; deciding that they are an error is left to the caller.
        _ => Arguments::words(vec![String::new()]),
    })
}

/// The whole rest as one argument.
fn single_string(rest: &str) -> Vec<String> {
    if rest.is_empty() {
        Vec::new()
    } else {
        vec![rest.to_owned()]
    }
}

fn whitespace_delimited(rest: &str) -> Vec<String> {
    if rest.is_empty() {
        return Vec::new();
    }
    split_separators(rest, None)
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// A JSON array of strings (exec form), or else the whole rest as one string
/// (shell form). Invalid JSON falls back to the shell form; valid JSON that
/// isn't an array of strings is an error.
fn maybe_json(rest: &str) -> Result<Arguments, InstructionError> {
    if rest.is_empty() {
        return Ok(Arguments::default());
    }
    json_or_else(rest, |rest| vec![rest.to_owned()])
}

/// A JSON array of strings, or else whitespace-separated words.
fn maybe_json_to_list(rest: &str) -> Result<Arguments, InstructionError> {
    json_or_else(rest, whitespace_delimited)
}

/// A JSON string array, or `fallback(rest)` when `rest` is not JSON.
fn json_or_else(
    rest: &str,
    fallback: impl FnOnce(&str) -> Vec<String>,
) -> Result<Arguments, InstructionError> {
    match json::parse_string_array(rest) {
        Ok(args) => Ok(Arguments {
            args,
            json: true,
            onbuild: None,
        }),
        Err(JsonError::NotStrings) => Err(InstructionError::NotStringArray),
        Err(JsonError::NotArray | JsonError::Invalid) => Ok(Arguments::words(fallback(rest))),
    }
}

/// HEALTHCHECK: the first word (`CMD`, `NONE`, ...), then the rest parsed
/// like RUN.
fn health_check(rest: &str) -> Result<Arguments, InstructionError> {
    let is_blank = |ch: char| matches!(ch, '\t' | '\n' | '\x0B' | '\x0C' | '\r' | ' ');
    let type_end = rest.find(is_blank).unwrap_or(rest.len());
    if type_end == 0 {
        return Ok(Arguments::default());
    }
    let (kind, command) = rest.split_at(type_end);
    let mut arguments = maybe_json(command.trim_start_matches(is_blank))?;
    arguments.args.insert(0, kind.to_owned());
    Ok(arguments)
}

/// ENV and LABEL: `key value` (legacy, one pair, the value is the whole
/// rest) or `k=v k2=v2 ...`. Returns flattened `key, value, sep` triples;
/// values stay raw.
fn name_value_pairs(
    rest: &str,
    keyword: &str,
    escape: char,
) -> Result<Vec<String>, InstructionError> {
    let words = words(rest, escape);
    let Some(first) = words.first() else {
        return Ok(Vec::new());
    };

    if !first.contains('=') {
        let parts = split_separators(rest, Some(2));
        let [key, value] = parts.as_slice() else {
            return Err(InstructionError::MissingValue {
                keyword: keyword.to_owned(),
            });
        };
        return Ok(vec![(*key).to_owned(), (*value).to_owned(), String::new()]);
    }

    let mut triples = Vec::with_capacity(words.len() * 3);
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            return Err(InstructionError::MissingEquals { word });
        };
        triples.extend([key.to_owned(), value.to_owned(), "=".to_owned()]);
    }
    Ok(triples)
}

/// Splits on whitespace outside quotes, keeping quotes and escapes in the
/// words (they are removed later, during expansion). A quoted empty string
/// is a word.
fn words(rest: &str, escape: char) -> Vec<String> {
    #[derive(PartialEq)]
    enum Phase {
        Blank,
        Word,
        Quoted(char),
    }

    let mut words = Vec::new();
    let mut word = String::new();
    let mut blank_ok = false;
    let mut phase = Phase::Blank;
    let mut chars = rest.chars();

    while let Some(mut ch) = chars.next() {
        match phase {
            Phase::Blank if ch.is_whitespace() => continue,
            Phase::Blank | Phase::Word => {
                if ch.is_whitespace() {
                    phase = Phase::Blank;
                    if blank_ok || !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                    blank_ok = false;
                    continue;
                }
                phase = Phase::Word;
                if ch == '\'' || ch == '"' {
                    phase = Phase::Quoted(ch);
                    blank_ok = true;
                }
                if ch == escape {
                    // Outside quotes the escape and what it escapes are both
                    // kept, even a quote; a trailing escape is dropped.
                    let Some(next) = chars.next() else {
                        continue;
                    };
                    word.push(ch);
                    ch = next;
                }
                word.push(ch);
            }
            Phase::Quoted(quote) => {
                if ch == quote {
                    phase = Phase::Word;
                }
                // Single quotes escape nothing.
                if ch == escape && quote != '\'' {
                    let Some(next) = chars.next() else {
                        phase = Phase::Word;
                        continue;
                    };
                    word.push(ch);
                    ch = next;
                }
                word.push(ch);
            }
        }
    }

    if phase != Phase::Blank && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_keep_quotes_and_escapes() {
        assert_eq!(words("foo bar=baz", '\\'), ["foo", "bar=baz"]);
        assert_eq!(
            words("abc=\"123 456\" def", '\\'),
            ["abc=\"123 456\"", "def"]
        );
        assert_eq!(words("a\\ b c", '\\'), ["a\\ b", "c"]);
        // The second `'` opens a quote that never closes.
        assert_eq!(words("a='x\\'y' z", '\\'), ["a='x\\'y' z"]);
        assert_eq!(words("\"\"", '\\'), ["\"\""]);
        assert_eq!(words("x\\", '\\'), ["x"]);
        assert_eq!(words("a`\"b c", '`'), ["a`\"b", "c"]);
        assert!(words("   ", '\\').is_empty());
    }

    #[test]
    fn env_forms() {
        assert_eq!(
            name_value_pairs("name value", "ENV", '\\').unwrap(),
            ["name", "value", ""]
        );
        assert_eq!(
            name_value_pairs("a=1 b=\"2 3\"", "ENV", '\\').unwrap(),
            ["a", "1", "=", "b", "\"2 3\"", "="]
        );
        assert_eq!(
            name_value_pairs("PATH", "ENV", '\\'),
            Err(InstructionError::MissingValue {
                keyword: "ENV".into()
            })
        );
        assert_eq!(
            name_value_pairs("a=1 b", "LABEL", '\\'),
            Err(InstructionError::MissingEquals { word: "b".into() })
        );
        assert!(name_value_pairs("", "ENV", '\\').unwrap().is_empty());
    }

    #[test]
    fn onbuild_nests_and_is_capped() {
        let instruction = instruction_from_line("ONBUILD ONBUILD RUN x", '\\').unwrap();
        let inner = instruction
            .onbuild
            .as_deref()
            .and_then(|i| i.onbuild.as_deref())
            .unwrap();
        assert_eq!(inner.keyword, "run");
        assert_eq!(inner.args, ["x"]);
        assert_eq!(inner.original, "RUN x");

        let deep = "ONBUILD ".repeat(1000) + "RUN x";
        assert_eq!(
            instruction_from_line(&deep, '\\'),
            Err(InstructionError::NestingTooDeep(MAX_ONBUILD_DEPTH))
        );
    }
}
