//! Typed instructions: the parser's generic nodes checked against what each
//! instruction accepts (its flags and argument shape).
//!
//! Word expansion is not done here; values stay as written so the compiler
//! can expand them with the environment in force at that point.

use crate::error::{CompileError, ErrorKind};
use crate::parser::{Heredoc, Instruction};

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

/// A COPY or ADD source: a path (or pattern), or an inline heredoc file.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Path(String),
    Heredoc(Heredoc),
}

/// `HEALTHCHECK [OPTIONS] CMD ...`.
#[derive(Debug, Clone)]
pub struct Health {
    pub test: CommandLine,
    pub flags: Flags,
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
    /// COPY, or ADD when `add` is set.
    Copy {
        sources: Vec<Source>,
        dest: String,
        flags: Flags,
        add: bool,
    },
    Run {
        line: CommandLine,
        flags: Flags,
        heredocs: Vec<Heredoc>,
    },
    /// `HEALTHCHECK NONE` is `None`.
    Healthcheck(Option<Health>),
    /// The trigger as written after `ONBUILD`.
    Onbuild(String),
    Cmd(CommandLine),
    Entrypoint(CommandLine),
    Shell(Vec<String>),
    Workdir(String),
    User(String),
    Expose(Vec<String>),
    Volume(Vec<String>),
    StopSignal(String),
    Maintainer(String),
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
        "copy" | "add" => {
            let add = kw == "add";
            let allowed: &[&str] = if add {
                &[
                    "chown",
                    "chmod",
                    "link",
                    "checksum",
                    "keep-git-dir",
                    "exclude",
                    "parents",
                    "unpack",
                ]
            } else {
                &["from", "chown", "chmod", "link", "exclude", "parents"]
            };
            let flags = Flags::parse(inst, allowed)?;
            if inst.args.len() < 2 {
                return Err(CompileError::at(
                    inst,
                    ErrorKind::Invalid(format!(
                        "{} requires at least two arguments, but only one was provided. Destination could not be determined",
                        kw.to_uppercase()
                    )),
                ));
            }
            let Some((dest, sources)) = inst.args.split_last() else {
                return Err(CompileError::at(
                    inst,
                    ErrorKind::Invalid(format!("{} requires arguments", kw.to_uppercase())),
                ));
            };
            let sources = sources
                .iter()
                .map(|s| source(inst, s))
                .collect::<Result<_, _>>()?;
            Command::Copy {
                sources,
                dest: dest.clone(),
                flags,
                add,
            }
        }
        "run" => {
            let flags = Flags::parse(inst, &["mount", "network", "security"])?;
            if inst.args.is_empty()
                || (inst.args.len() == 1 && inst.args[0].trim().is_empty() && !inst.json)
            {
                return Err(CompileError::at(
                    inst,
                    ErrorKind::Invalid("RUN requires at least one argument".into()),
                ));
            }
            Command::Run {
                line: command_line(inst),
                flags,
                heredocs: inst.heredocs.clone(),
            }
        }
        "healthcheck" => {
            let flags = Flags::parse(
                inst,
                &[
                    "interval",
                    "timeout",
                    "start-period",
                    "start-interval",
                    "retries",
                ],
            )?;
            match inst.args.first().map(|a| a.to_ascii_uppercase()).as_deref() {
                Some("NONE") => {
                    if inst.args.len() > 1 {
                        return Err(CompileError::at(
                            inst,
                            ErrorKind::Invalid("HEALTHCHECK NONE takes no arguments".into()),
                        ));
                    }
                    if !flags.is_empty() {
                        return Err(CompileError::at(
                            inst,
                            ErrorKind::Invalid("HEALTHCHECK NONE takes no options".into()),
                        ));
                    }
                    Command::Healthcheck(None)
                }
                Some("CMD") if inst.args.len() > 1 => {
                    let rest = Instruction {
                        args: inst.args[1..].to_vec(),
                        ..inst.clone()
                    };
                    Command::Healthcheck(Some(Health {
                        test: command_line(&rest),
                        flags,
                    }))
                }
                Some("CMD") => {
                    return Err(CompileError::at(
                        inst,
                        ErrorKind::Invalid("HEALTHCHECK CMD requires a command".into()),
                    ));
                }
                _ => {
                    return Err(CompileError::at(
                        inst,
                        ErrorKind::Invalid(
                            "HEALTHCHECK expects CMD or NONE as its first argument".into(),
                        ),
                    ));
                }
            }
        }
        "onbuild" => {
            no_flags(inst)?;
            let Some(trigger) = &inst.onbuild else {
                return Err(CompileError::at(
                    inst,
                    ErrorKind::Invalid("ONBUILD requires at least one argument".into()),
                ));
            };
            match trigger.keyword.as_str() {
                "onbuild" => {
                    return Err(CompileError::at(
                        inst,
                        ErrorKind::Invalid(
                            "chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".into(),
                        ),
                    ));
                }
                "from" | "maintainer" => {
                    return Err(CompileError::at(
                        inst,
                        ErrorKind::Invalid(format!(
                            "{} isn't allowed as an ONBUILD trigger",
                            trigger.keyword.to_uppercase()
                        )),
                    ));
                }
                _ => {}
            }
            // The trigger must itself be a valid instruction.
            parse(trigger)?;
            Command::Onbuild(trigger.original.clone())
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
            // `VOLUME [""]` has an (empty) argument: dispatch rejects it
            // with BuildKit's message.
            let none =
                inst.args.is_empty() || (!inst.json && inst.args.iter().all(|a| a.is_empty()));
            if none {
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

/// A source word: `<<name` names one of the instruction's heredocs.
fn source(inst: &Instruction, word: &str) -> Result<Source, CompileError> {
    if let Some(name) = word.strip_prefix("<<") {
        let name = name
            .trim_start_matches('-')
            .trim_matches(|c| c == '"' || c == '\'');
        if let Some(doc) = inst.heredocs.iter().find(|h| h.name == name) {
            return Ok(Source::Heredoc(doc.clone()));
        }
    }
    Ok(Source::Path(word.to_string()))
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
