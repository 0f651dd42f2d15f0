//! Runs BuildKit's own parser and shell-lexer test data against our parser
//! and lexer. The data lives in `shared/conformance/buildkit/` (see its
//! README for what each file means and how BuildKit's Go tests read it).
//!
//! Every case is run and every failure is listed, so one run shows the whole
//! picture rather than the first mismatch.

use std::fs;
use std::path::{Path, PathBuf};

use rbuild_frontend::parser::{self, Dockerfile};
use rbuild_frontend::shell::Lexer;

/// The conformance data directory, or `None` (after saying why) when it is
/// missing outside CI. In CI a missing directory fails the test: a green run
/// that checked nothing would be worse than a red one.
fn data_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("RBUILD_CONFORMANCE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance/buildkit"),
    };
    if dir.is_dir() {
        return Some(dir);
    }
    let message = format!(
        "BuildKit conformance data not found at {} (set RBUILD_CONFORMANCE_DIR)",
        dir.display()
    );
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!("{message}");
    }
    eprintln!("skipping: {message}");
    None
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
}

fn read_text(path: &Path) -> String {
    String::from_utf8(read(path))
        .unwrap_or_else(|err| panic!("{} is not UTF-8: {err}", path.display()))
}

/// The case directories under `dir`, sorted by name.
fn case_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|err| panic!("listing {}: {err}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Fails with every failure listed, or prints what passed.
fn report(what: &str, passed: usize, failures: &[String]) {
    if failures.is_empty() {
        println!("{what}: {passed} passed");
        return;
    }
    panic!(
        "{what}: {} of {} failed:\n\n{}",
        failures.len(),
        passed + failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn parser_positive_cases_dump_as_buildkit() {
    let Some(dir) = data_dir() else { return };
    let cases = case_dirs(&dir.join("parser/testfiles"));
    assert!(!cases.is_empty(), "no parser cases found");

    let mut passed = 0;
    let mut failures = Vec::new();
    for case in &cases {
        let name = name_of(case);
        let expected = read_text(&case.join("result"));
        match parser::parse(&read(&case.join("Dockerfile"))) {
            Ok(file) => {
                let actual = parser::dump(&file) + "\n";
                if actual == expected {
                    passed += 1;
                } else {
                    failures.push(format!(
                        "{name}: dump differs\n--- expected\n{expected}--- actual\n{actual}"
                    ));
                }
            }
            Err(err) => failures.push(format!("{name}: unexpected error: {err}")),
        }
    }
    report("parser cases", passed, &failures);
}

#[test]
fn parser_negative_cases_fail() {
    let Some(dir) = data_dir() else { return };
    let cases = case_dirs(&dir.join("parser/testfiles-negative"));
    assert!(!cases.is_empty(), "no negative parser cases found");

    let mut passed = 0;
    let mut failures = Vec::new();
    for case in &cases {
        match parser::parse(&read(&case.join("Dockerfile"))) {
            Err(err) => {
                println!("{}: {err}", name_of(case));
                passed += 1;
            }
            Ok(file) => failures.push(format!(
                "{}: parsed, but should fail:\n{}",
                name_of(case),
                parser::dump(&file)
            )),
        }
    }
    report("negative parser cases", passed, &failures);
}

#[test]
fn parser_line_numbers() {
    let Some(dir) = data_dir() else { return };
    let file: Dockerfile = parser::parse(&read(&dir.join("parser/testfile-line/Dockerfile")))
        .expect("testfile-line parses");

    let ranges: Vec<(usize, usize)> = file
        .instructions
        .iter()
        .map(|instruction| (instruction.start_line, instruction.end_line))
        .collect();
    assert_eq!(ranges, [(5, 5), (11, 12), (17, 31)]);

    let first = file.instructions.first().map(|i| i.start_line);
    let last = file.instructions.last().map(|i| i.end_line);
    assert_eq!((first, last), (Some(5), Some(31)), "the root's span");
    assert_eq!(file.directives.escape, '\\');
    // Blank lines inside the RUN continuation.
    assert_eq!(file.warnings.len(), 1);
    assert_eq!(file.warnings[0].line, 31);
}

/// The lines of a vector file, as Go's `bufio.Scanner` gives them.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
}

#[test]
fn shell_env_var_vectors() {
    let Some(dir) = data_dir() else { return };
    let text = read_text(&dir.join("shell/envVarTest"));
    let env: Vec<(String, String)> = [
        ("PWD", "/home"),
        ("SHELL", "bash"),
        ("KOREAN", "한국어"),
        ("NULL", ""),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .collect();
    let lexer = Lexer::new('\\');

    let mut passed = 0;
    let mut skipped = 0;
    let mut failures = Vec::new();
    for (index, line) in lines(&text).enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.trim().split('|').map(str::trim).collect();
        let [platform, input, expected] = fields.as_slice() else {
            panic!("envVarTest line {}: expected 3 fields: {line:?}", index + 1);
        };
        match *platform {
            "A" | "U" => {}
            "W" => {
                skipped += 1;
                continue;
            }
            other => panic!("envVarTest line {}: unknown platform {other:?}", index + 1),
        }

        let result = lexer.process_word(input, &env);
        let ok = match (*expected, &result) {
            ("error", result) => result.is_err(),
            (expected, Ok(actual)) => actual == expected,
            (_, Err(_)) => false,
        };
        if ok {
            passed += 1;
        } else {
            failures.push(format!(
                "line {}: {input:?}: expected {expected:?}, got {result:?}",
                index + 1
            ));
        }
    }
    println!("envVarTest: {skipped} Windows-only vectors skipped");
    assert!(passed + failures.len() > 0, "no envVarTest vectors found");
    report("envVarTest vectors", passed, &failures);
}

#[test]
fn shell_words_vectors() {
    let Some(dir) = data_dir() else { return };
    let text = read_text(&dir.join("shell/wordsTest"));
    let lexer = Lexer::new('\\');
    let mut env: Vec<(String, String)> = Vec::new();

    let mut passed = 0;
    let mut failures = Vec::new();
    for (index, line) in lines(&text).enumerate() {
        if line.starts_with('#') {
            continue;
        }
        if let Some(entry) = line.strip_prefix("ENV ") {
            let entry = entry.trim_start_matches(' ');
            let (name, value) = entry.split_once('=').unwrap_or((entry, ""));
            env.push((name.to_owned(), value.to_owned()));
            continue;
        }
        let Some((input, expected)) = line
            .split_once('|')
            .filter(|(_, right)| !right.contains('|'))
        else {
            panic!(
                "wordsTest line {}: expected exactly one '|': {line:?}",
                index + 1
            );
        };
        let input = input.trim();
        let expected: Vec<&str> = expected.trim_start_matches(' ').split(',').collect();

        let actual = lexer
            .process_words(input, &env)
            .unwrap_or_else(|_| vec!["error".to_owned()]);
        if actual == expected {
            passed += 1;
        } else {
            failures.push(format!(
                "line {}: {input:?}: expected {expected:?}, got {actual:?}",
                index + 1
            ));
        }
    }
    assert!(passed + failures.len() > 0, "no wordsTest vectors found");
    report("wordsTest vectors", passed, &failures);
}

/// Guards against data the tests above would silently ignore: every file in
/// the directory must be one they read (or the README and licence).
#[test]
fn every_data_file_is_used() {
    let Some(dir) = data_dir() else { return };
    let mut unused = Vec::new();
    let mut pending = vec![dir.clone()];
    while let Some(current) = pending.pop() {
        for entry in fs::read_dir(&current).expect("listing conformance data") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let relative = path
                .strip_prefix(&dir)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace('\\', "/");
            let parts: Vec<&str> = relative.split('/').collect();
            let used = matches!(
                parts.as_slice(),
                ["README.md" | "LICENSE"]
                    | ["parser", "testfiles", _, "Dockerfile" | "result"]
                    | ["parser", "testfiles-negative", _, "Dockerfile"]
                    | ["parser", "testfile-line", "Dockerfile"]
                    | ["shell", "envVarTest" | "wordsTest"]
            );
            if !used {
                unused.push(relative);
            }
        }
    }
    unused.sort();
    assert!(
        unused.is_empty(),
        "conformance files no test reads: {unused:?}"
    );
}
