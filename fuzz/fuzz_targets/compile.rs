//! Parse + compile with build args and a target derived from the input.
//!
//! Input layout: the Dockerfile, optionally followed by a NUL byte and an
//! options section of lines `NAME=VALUE` (build args), `@TARGET` (the
//! target stage) and `-PATTERN` (a `.dockerignore` pattern). Without an
//! options section, options come from the file itself so that plain
//! Dockerfiles in the corpus exercise them too: every
//! ARG name declared gets a value picked from a small set (some with
//! variable references), and the target is one of the stage names (or the
//! last stage), chosen by a checksum of the input.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use rbuild_frontend::{compile, parser};

#[path = "common.rs"]
mod common;

const VALUES: &[&str] = &[
    "",
    "1",
    "x y",
    "${HOME}",
    "$OTHER:-z",
    "/a/b/",
    "'q'",
    "0755",
];

fuzz_target!(|data: &[u8]| {
    let (source, extra) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let Ok(file) = parser::parse(source) else {
        return;
    };
    let checksum = data.iter().fold(0usize, |acc, &b| {
        acc.wrapping_mul(31).wrapping_add(b as usize)
    });

    let mut build_args = BTreeMap::new();
    let mut target = None;
    let mut context_excludes = Vec::new();
    match extra {
        Some(extra) => {
            for line in String::from_utf8_lossy(extra).lines() {
                if let Some(t) = line.strip_prefix('@') {
                    target = Some(t.to_string());
                } else if let Some(p) = line.strip_prefix('-') {
                    context_excludes.push(p.to_string());
                } else if let Some((k, v)) = line.split_once('=') {
                    build_args.insert(k.to_string(), v.to_string());
                } else if !line.is_empty() {
                    build_args.insert(line.to_string(), String::new());
                }
            }
        }
        None => {
            let mut stage_names = Vec::new();
            for (i, inst) in file.instructions.iter().enumerate() {
                match inst.keyword.as_str() {
                    "arg" => {
                        for word in &inst.args {
                            let name = word.split('=').next().unwrap_or_default();
                            let value = VALUES[(checksum.wrapping_add(i)) % VALUES.len()];
                            build_args.insert(name.to_string(), value.to_string());
                        }
                    }
                    "from" if inst.args.len() == 3 && inst.args[1].eq_ignore_ascii_case("as") => {
                        stage_names.push(inst.args[2].clone());
                    }
                    _ => {}
                }
            }
            // An unused build arg: reported, never an error.
            build_args.insert("FUZZ_UNUSED".to_string(), "1".to_string());
            if !stage_names.is_empty() {
                let pick = checksum % (stage_names.len() + 1);
                target = stage_names.get(pick).cloned();
            }
        }
    }

    let options = common::options(build_args, target, context_excludes);
    let first = compile(&file, &options, &common::NoImages);
    // Compilation is a pure function of its inputs: the same outcome and,
    // on failure, the same error. (Plans are not compared: they may hold
    // hash maps whose Debug order varies.)
    let second = compile(&file, &options, &common::NoImages);
    match (&first, &second) {
        (Ok(_), Ok(_)) => {}
        (Err(a), Err(b)) => {
            let message = a.to_string();
            assert_eq!(message, b.to_string(), "compile errors differ between runs");
        }
        _ => panic!(
            "compile is not deterministic: {:?} vs {:?}",
            first.is_ok(),
            second.is_ok()
        ),
    }
});
