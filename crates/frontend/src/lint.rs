//! Build checks: BuildKit's lint rules that need only the Dockerfile's
//! text (the ones that need expansion, like UndefinedVar, are reported by
//! the compiler). Each finding names its rule, as `docker build --check`
//! does, so users can look the rule up.

use crate::parser::{Dockerfile, Instruction};

/// One finding of a build check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lint {
    /// BuildKit's rule name, e.g. `JSONArgsRecommended`.
    pub rule: &'static str,
    pub message: String,
    /// 1-based Dockerfile line.
    pub line: usize,
}

impl Lint {
    pub fn new(rule: &'static str, line: usize, message: impl Into<String>) -> Lint {
        Lint {
            rule,
            message: message.into(),
            line,
        }
    }
}

/// Words in ARG and ENV names that suggest a secret.
const SECRET_WORDS: [&str; 6] = ["apikey", "auth", "credential", "key", "password", "secret"];
const SECRET_ALLOWED: [&str; 2] = ["public", "file"];

/// Runs the text-only checks on a parsed Dockerfile.
pub fn check(file: &Dockerfile) -> Vec<Lint> {
    let mut out: Vec<Lint> = Vec::new();
    for warning in &file.warnings {
        out.push(Lint::new(
            "NoEmptyContinuation",
            warning.line,
            warning.message.clone(),
        ));
    }
    casing(file, &mut out);
    let mut stage_names: Vec<String> = Vec::new();
    // Per stage: how many CMD / ENTRYPOINT / HEALTHCHECK, and where.
    let mut singles: Vec<(&'static str, Vec<usize>)> = Vec::new();
    let flush = |singles: &mut Vec<(&'static str, Vec<usize>)>, out: &mut Vec<Lint>| {
        for (name, lines) in singles.drain(..) {
            for line in &lines[..lines.len().saturating_sub(1)] {
                out.push(Lint::new(
                    "MultipleInstructionsDisallowed",
                    *line,
                    format!(
                        "Multiple {name} instructions should not be used in the same stage because only the last one will be used"
                    ),
                ));
            }
        }
    };
    for inst in &file.instructions {
        let line = inst.start_line;
        match inst.keyword.as_str() {
            "from" => {
                flush(&mut singles, &mut out);
                from(inst, &mut stage_names, &mut out);
            }
            "cmd" | "entrypoint" | "healthcheck" => {
                let name = match inst.keyword.as_str() {
                    "cmd" => "CMD",
                    "entrypoint" => "ENTRYPOINT",
                    _ => "HEALTHCHECK",
                };
                match singles.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, lines)) => lines.push(line),
                    None => singles.push((name, vec![line])),
                }
                if name != "HEALTHCHECK" && !inst.json {
                    out.push(Lint::new(
                        "JSONArgsRecommended",
                        line,
                        format!("JSON arguments recommended for {name} to prevent unintended behavior related to OS signals"),
                    ));
                }
            }
            "maintainer" => out.push(Lint::new(
                "MaintainerDeprecated",
                line,
                "Maintainer instruction is deprecated in favor of using label",
            )),
            "env" | "label" => {
                // Triples of (key, value, separator); an empty separator is
                // the legacy `KEY value` form.
                for triple in inst.args.chunks(3) {
                    if triple.len() == 3 && triple[2].is_empty() {
                        let kw = inst.keyword.to_uppercase();
                        out.push(Lint::new(
                            "LegacyKeyValueFormat",
                            line,
                            format!("\"{kw} key=value\" should be used instead of legacy \"{kw} key value\" format"),
                        ));
                    }
                    if inst.keyword == "env" {
                        secret_name("ENV", &triple[0], line, &mut out);
                    }
                }
            }
            "arg" => {
                for word in &inst.args {
                    let name = word.split_once('=').map_or(word.as_str(), |(n, _)| n);
                    secret_name("ARG", name, line, &mut out);
                }
            }
            "workdir" => {
                if let Some(dir) = inst.args.first()
                    && !dir.starts_with('/')
                    && !dir.starts_with('$')
                {
                    out.push(Lint::new(
                            "WorkdirRelativePath",
                            line,
                            format!("Relative workdir \"{dir}\" can have unexpected results if the base image changes"),
                        ));
                }
            }
            "expose" => {
                for port in &inst.args {
                    if let Some((_, proto)) = port.split_once('/')
                        && proto != proto.to_ascii_lowercase()
                    {
                        out.push(Lint::new(
                                "ExposeProtoCasing",
                                line,
                                format!("Defined protocol '{port}' in EXPOSE instruction should be lowercase"),
                            ));
                    }
                }
            }
            _ => {}
        }
    }
    flush(&mut singles, &mut out);
    out.sort_by_key(|l| l.line);
    out
}

fn from(inst: &Instruction, stage_names: &mut Vec<String>, out: &mut Vec<Lint>) {
    let line = inst.start_line;
    let [_, as_kw, name] = inst.args.as_slice() else {
        return;
    };
    let from_kw = inst.original.split_whitespace().next().unwrap_or("");
    let upper = |s: &str| s.chars().all(|c| !c.is_lowercase());
    let lower = |s: &str| s.chars().all(|c| !c.is_uppercase());
    if (upper(from_kw) && !upper(as_kw)) || (lower(from_kw) && !lower(as_kw)) {
        out.push(Lint::new(
            "FromAsCasing",
            line,
            format!("'{as_kw}' and '{from_kw}' keywords' casing do not match"),
        ));
    }
    if name.to_lowercase() != *name {
        out.push(Lint::new(
            "StageNameCasing",
            line,
            format!("Stage name '{name}' should be lowercase"),
        ));
    }
    let lowered = name.to_lowercase();
    if matches!(lowered.as_str(), "scratch" | "context") {
        out.push(Lint::new(
            "ReservedStageName",
            line,
            format!("'{lowered}' is reserved and should not be used as a stage name"),
        ));
    }
    if stage_names.contains(&lowered) {
        out.push(Lint::new(
            "DuplicateStageName",
            line,
            format!("Duplicate stage name '{lowered}', stage names should be unique"),
        ));
    }
    stage_names.push(lowered);
}

/// ConsistentInstructionCasing: each keyword should be cased like the
/// majority of the file's keywords.
fn casing(file: &Dockerfile, out: &mut Vec<Lint>) {
    let keyword = |inst: &Instruction| {
        inst.original
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string()
    };
    let (mut upper, mut lower) = (0, 0);
    for inst in &file.instructions {
        let k = keyword(inst);
        if k.chars().all(|c| !c.is_lowercase()) {
            upper += 1;
        } else if k.chars().all(|c| !c.is_uppercase()) {
            lower += 1;
        }
    }
    let majority_upper = upper >= lower;
    for inst in &file.instructions {
        let k = keyword(inst);
        let ok = if majority_upper {
            k.chars().all(|c| !c.is_lowercase())
        } else {
            k.chars().all(|c| !c.is_uppercase())
        };
        if !ok {
            let case = if majority_upper {
                "uppercase"
            } else {
                "lowercase"
            };
            out.push(Lint::new(
                "ConsistentInstructionCasing",
                inst.start_line,
                format!("Command '{k}' should match the case of the command majority ({case})"),
            ));
        }
    }
}

/// SecretsUsedInArgOrEnv.
fn secret_name(kind: &str, name: &str, line: usize, out: &mut Vec<Lint>) {
    let lowered = name.to_ascii_lowercase();
    let parts: Vec<&str> = lowered
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|p| !p.is_empty())
        .collect();
    let secret = parts.iter().any(|p| SECRET_WORDS.contains(p))
        && !parts.iter().any(|p| SECRET_ALLOWED.contains(p));
    if secret {
        out.push(Lint::new(
            "SecretsUsedInArgOrEnv",
            line,
            format!("Do not use ARG or ENV instructions for sensitive data ({kind} \"{name}\")"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::parse;

    fn rules(src: &str) -> Vec<(&'static str, usize)> {
        check(&parse(src.as_bytes()).unwrap())
            .into_iter()
            .map(|l| (l.rule, l.line))
            .collect()
    }

    #[test]
    fn reports_buildkit_rules_with_lines() {
        let src = "FROM scratch as Build\nMAINTAINER me\nENV A b\nARG DB_PASSWORD\nCMD echo hi\nCMD [\"x\"]\nWORKDIR rel\nEXPOSE 80/TCP\nfrom scratch AS build\n";
        let found = rules(src);
        for expected in [
            ("FromAsCasing", 1),
            ("StageNameCasing", 1),
            ("MaintainerDeprecated", 2),
            ("LegacyKeyValueFormat", 3),
            ("SecretsUsedInArgOrEnv", 4),
            ("JSONArgsRecommended", 5),
            ("MultipleInstructionsDisallowed", 5),
            ("WorkdirRelativePath", 7),
            ("ExposeProtoCasing", 8),
            ("ConsistentInstructionCasing", 9),
            ("DuplicateStageName", 9),
        ] {
            assert!(
                found.contains(&expected),
                "{expected:?} missing from {found:?}"
            );
        }
        assert!(
            !found.contains(&("MultipleInstructionsDisallowed", 6)),
            "the last CMD is fine"
        );
    }

    #[test]
    fn clean_file_has_no_findings() {
        let src = "FROM scratch AS base\nENV A=b\nARG PUBLIC_KEY_FILE\nCMD [\"x\"]\nFROM base\nCMD [\"y\"]\n";
        assert_eq!(rules(src), []);
    }
}
