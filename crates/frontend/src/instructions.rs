//! Typed instructions: the parser's generic nodes checked against what each
//! instruction accepts (its flags and argument shape).
//!
//! Word expansion is not done here; values stay as written so the compiler
//! can expand them with the environment in force at that point.

use crate::error::{CompileError, ErrorKind};
use crate::parser::Instruction;

/// An instruction's flags: `--name=value` or bare `--name`.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    values: Vec<(String, Option<String>)>,
}

impl Flags {
    fn parse(inst: &Instruction, allowed: &[&str]) -> Result<Flags, CompileError> {
        let mut values = Vec::new();
        for raw in &inst.flags {
            let body = raw.strip_prefix("--").unwrap_or(raw);
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            if !allowed.contains(&name) {
                return Err(CompileError::at(
                    inst,
                    ErrorKind::UnknownFlag {
                        flag: name.to_string(),
                        instruction: inst.keyword.to_uppercase(),
                    },
                ));
            }
            if values
                .iter()
                .any(|(n, _): &(String, Option<String>)| n == name)
                && name != "exclude"
                && name != "mount"
            {
                return Err(CompileError::at(
                    inst,
                    ErrorKind::Invalid(format!("duplicate flag specified: --{name}")),
                ));
            }
            values.push((name.to_string(), value));
        }
        Ok(Flags { values })
    }

    /// The value of a flag that takes one (`--name=value`).
    pub fn string(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }

    /// A boolean flag: `--link`, `--link=true`, `--link=false`.
    pub fn boolean(&self, name: &str) -> Result<bool, String> {
        match self.values.iter().find(|(n, _)| n == name) {
            None => Ok(false),
            Some((_, None)) => Ok(true),
            Some((_, Some(v))) => match v.to_ascii_lowercase().as_str() {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(format!(
                    "expecting boolean value for flag --{name}, not: {v}"
                )),
            },
        }
    }

    /// All values of a repeatable flag.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.values
            .iter()
            .filter(|(n, _)| n == name)
            .filter_map(|(_, v)| v.as_deref())
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// CMD, ENTRYPOINT and RUN's two forms.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandLine {
    /// `["exe", "arg"]`: run as is.
    Exec(Vec<String>),
    /// `exe arg`: run through the stage's SHELL.
    Shell(String),
}

#[derive(Debug, Clone)]
pub enum Command {
    From {
        image: String,
        alias: Option<String>,
        platform: Option<String>,
    },
    Arg(Vec<(String, Option<String>)>),
    Env(Vec<(String, String)>),
    Label(Vec<(String, String)>),
    Copy {
        sources: Vec<String>,
        dest: String,
        flags: Flags,
    },
    Cmd(CommandLine),
    Entrypoint(CommandLine),
    Shell(Vec<String>),
    Workdir(String),
    User(String),
    Expose(Vec<String>),
    Volume(Vec<String>),
    StopSignal(String),
    Maintainer(String),
    /// Recognized by the parser but not built by this version of rbuild.
    Unsupported(String),
}

const KNOWN: &[&str] = &[
    "add",
    "arg",
    "cmd",
    "copy",
    "entrypoint",
    "env",
    "expose",
    "from",
    "healthcheck",
    "label",
    "maintainer",
    "onbuild",
    "run",
    "shell",
    "stopsignal",
    "user",
    "volume",
    "workdir",
];

/// Converts one parsed instruction.
pub fn parse(inst: &Instruction) -> Result<Command, CompileError> {
    let kw = inst.keyword.as_str();
    let no_flags = |inst: &Instruction| Flags::parse(inst, &[]).map(|_| ());
    let cmd = match kw {
        "from" => {
            let flags = Flags::parse(inst, &["platform"])?;
            let (image, alias) = match inst.args.as_slice() {
                [image] => (image.clone(), None),
                [image, as_kw, alias] if as_kw.eq_ignore_ascii_case("as") => {
                    (image.clone(), Some(alias.clone()))
                }
                _ => {
                    return Err(CompileError::at(
                        inst,
                        ErrorKind::Invalid("FROM requires either one or three arguments".into()),
                    ));
                }
            };
            Command::From {
                image,
                alias,
                platform: flags.string("platform").map(str::to_string),
            }
        }
        "arg" => {
            no_flags(inst)?;
            if inst.args.is_empty() {
                return Err(CompileError::at(
                    inst,
                    ErrorKind::Invalid("ARG requires at least one argument".into()),
                ));
            }
            let mut args = Vec::new();
            for word in &inst.args {
                let (name, value) = match word.split_once('=') {
                    Some((n, v)) => (n.to_string(), Some(v.to_string())),
                    None => (word.clone(), None),
                };
                if name.is_empty() {
                    return Err(CompileError::at(
                        inst,
                        ErrorKind::Invalid(format!("invalid ARG {word:?}: empty name")),
                    ));
                }
                args.push((name, value));
            }
            Command::Arg(args)
        }
        "env" | "label" => {
            no_flags(inst)?;
            let pairs = triples(inst)?;
            if kw == "env" {
                Command::Env(pairs)
            } else {
                Command::Label(pairs)
            }
        }
        "copy" => {
            let flags = Flags::parse(
                inst,
                &["from", "chown", "chmod", "link", "exclude", "parents"],
            )?;
            if !inst.heredocs.is_empty() {
                return Ok(Command::Unsupported("COPY with a heredoc".into()));
            }
            if inst.args.len() < 2 {
                return Err(CompileError::at(inst, ErrorKind::Invalid("COPY requires at least two arguments, but only one was provided. Destination could not be determined".into())));
            }
            let (dest, sources) = inst
                .args
                .split_last()
                .map(|(d, s)| (d.clone(), s.to_vec()))
                .unwrap_or_default();
            Command::Copy {
                sources,
                dest,
                flags,
            }
        }
        "cmd" | "entrypoint" => {
            no_flags(inst)?;
            let line = command_line(inst);
            if kw == "cmd" {
                Command::Cmd(line)
            } else {
                Command::Entrypoint(line)
            }
        }
        "shell" => {
            no_flags(inst)?;
            if !inst.json || inst.args.is_empty() {
                return Err(CompileError::at(
                    inst,
                    ErrorKind::Invalid("SHELL requires the arguments to be in JSON form".into()),
                ));
            }
            Command::Shell(inst.args.clone())
        }
        "workdir" | "user" | "stopsignal" | "maintainer" => {
            no_flags(inst)?;
            let value = match inst.args.as_slice() {
                [v] if !v.is_empty() => v.clone(),
                _ => {
                    return Err(CompileError::at(
                        inst,
                        ErrorKind::Invalid(format!(
                            "{} requires exactly one argument",
                            kw.to_uppercase()
                        )),
                    ));
                }
            };
            match kw {
                "workdir" => Command::Workdir(value),
                "user" => Command::User(value),
                "stopsignal" => Command::StopSignal(value),
                _ => Command::Maintainer(value),
            }
        }
        "expose" | "volume" => {
            no_flags(inst)?;
            if inst.args.is_empty() || inst.args.iter().all(|a| a.is_empty()) {
                return Err(CompileError::at(
                    inst,
                    ErrorKind::Invalid(format!(
                        "{} requires at least one argument",
                        kw.to_uppercase()
                    )),
                ));
            }
            if kw == "expose" {
                Command::Expose(inst.args.clone())
            } else {
                Command::Volume(inst.args.clone())
            }
        }
        "run" | "add" | "healthcheck" | "onbuild" => Command::Unsupported(kw.to_uppercase()),
        _ => {
            return Err(CompileError::at(
                inst,
                ErrorKind::UnknownInstruction {
                    word: inst.keyword.to_uppercase(),
                    suggestion: suggest(kw),
                },
            ));
        }
    };
    Ok(cmd)
}

/// ENV and LABEL arguments come as (key, value, separator) triples.
fn triples(inst: &Instruction) -> Result<Vec<(String, String)>, CompileError> {
    if inst.args.is_empty() || !inst.args.len().is_multiple_of(3) {
        return Err(CompileError::at(
            inst,
            ErrorKind::Invalid(format!(
                "{} requires at least one argument",
                inst.keyword.to_uppercase()
            )),
        ));
    }
    Ok(inst
        .args
        .chunks(3)
        .map(|c| (c[0].clone(), c[1].clone()))
        .collect())
}

fn command_line(inst: &Instruction) -> CommandLine {
    if inst.json {
        CommandLine::Exec(inst.args.clone())
    } else {
        CommandLine::Shell(inst.args.first().cloned().unwrap_or_default())
    }
}

/// The closest known instruction, for "did you mean" hints.
fn suggest(word: &str) -> Option<String> {
    KNOWN
        .iter()
        .map(|k| (edit_distance(word, k), k))
        .filter(|(d, k)| *d <= 2 && *d < k.len())
        .min()
        .map(|(_, k)| k.to_uppercase())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(suggest("form"), Some("FROM".into()));
        assert_eq!(suggest("cpy"), Some("COPY".into()));
        assert_eq!(suggest("xyzzy"), None);
    }
}
