use std::collections::{BTreeMap, HashMap};

use super::*;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| (*name).to_owned()).collect()
}

/// One expectation of `process_word_with_matches`.
struct Case {
    input: &'static str,
    env: &'static [(&'static str, &'static str)],
    /// `None`: the word must not expand.
    expected: Option<&'static str>,
    matched: &'static [&'static str],
    unmatched: &'static [&'static str],
}

const fn ok(
    input: &'static str,
    env: &'static [(&'static str, &'static str)],
    expected: &'static str,
    matched: &'static [&'static str],
    unmatched: &'static [&'static str],
) -> Case {
    Case {
        input,
        env,
        expected: Some(expected),
        matched,
        unmatched,
    }
}

const fn fails(input: &'static str, env: &'static [(&'static str, &'static str)]) -> Case {
    Case {
        input,
        env,
        expected: None,
        matched: &[],
        unmatched: &[],
    }
}

const FOO_BAR: &[(&str, &str)] = &[("FOO", "xxx"), ("BAR", "")];
const XXYY: &[(&str, &str)] = &[("FOO", "xxyy")];

/// The expectations of BuildKit's `TestProcessWithMatches`, plus a few more
/// for the pattern operators.
const CASES: &[Case] = &[
    ok("x", &[("DUMMY", "dummy")], "x", &[], &[]),
    ok("x ${UNUSED}", &[("DUMMY", "dummy")], "x ", &[], &["UNUSED"]),
    ok("x ${FOO}", &[("FOO", "y")], "x y", &["FOO"], &[]),
    // `-` and `:-`
    ok(
        "${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}",
        FOO_BAR,
        "xxx  ccc",
        &["FOO", "BAR"],
        &["BAZ"],
    ),
    ok(
        "${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}",
        FOO_BAR,
        "xxx bbb ccc",
        &["FOO", "BAR"],
        &["BAZ"],
    ),
    ok("${FOO:-}", FOO_BAR, "xxx", &["FOO"], &[]),
    ok("${FOO:-}", &[], "", &[], &["FOO"]),
    // `+` and `:+`
    ok(
        "${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}",
        FOO_BAR,
        "aaa bbb ",
        &["FOO", "BAR"],
        &["BAZ"],
    ),
    ok(
        "${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}",
        FOO_BAR,
        "aaa  ",
        &["FOO", "BAR"],
        &["BAZ"],
    ),
    // `?` and `:?`
    ok("${FOO?aaa}", FOO_BAR, "xxx", &["FOO"], &[]),
    ok("${BAR?bbb}", FOO_BAR, "", &["BAR"], &[]),
    fails("${BAZ?ccc}", FOO_BAR),
    ok("${FOO:?aaa}", FOO_BAR, "xxx", &["FOO"], &[]),
    fails("${BAR:?bbb}", FOO_BAR),
    fails("${BAZ:?ccc}", FOO_BAR),
    fails("${BAZ:?}", FOO_BAR),
    // `=` is not supported.
    fails("${FOO=aaa}", FOO_BAR),
    fails("${FOO=:aaa}", FOO_BAR),
    fails("${FOO=}", &[]),
    fails("${FOO:=x}", &[]),
    // `#` and `##`: regex metacharacters are literal; `}` needs escaping.
    ok(
        "${FOO#()[]{\\}^$.\\*\\?|\\\\}",
        &[("FOO", "()[]{}^$.*?|\\x")],
        "x",
        &["FOO"],
        &[],
    ),
    ok("${FOO#*x*y}", XXYY, "y", &["FOO"], &[]),
    ok("${FOO#*}", XXYY, "xxyy", &["FOO"], &[]),
    ok(
        "${FOO#$BAR}",
        &[("FOO", "xxyy"), ("BAR", "x")],
        "xyy",
        &["FOO", "BAR"],
        &[],
    ),
    ok(
        "${FOO#$BAR}",
        &[("FOO", "xxyy"), ("BAR", "")],
        "xxyy",
        &["FOO", "BAR"],
        &[],
    ),
    ok("${FOO#}", XXYY, "xxyy", &["FOO"], &[]),
    ok("${FOO##*x}", XXYY, "yy", &["FOO"], &[]),
    ok("${FOO##}", XXYY, "xxyy", &["FOO"], &[]),
    ok("${FOO#?\\?}", &[("FOO", "???y")], "?y", &["FOO"], &[]),
    ok("${FOO#x}", XXYY, "xyy", &["FOO"], &[]),
    ok("${FOO##x*}", XXYY, "", &["FOO"], &[]),
    ok("${FOO#y}", XXYY, "xxyy", &["FOO"], &[]),
    ok("${FOO#*}", &[], "", &[], &["FOO"]),
    // `%` and `%%`
    ok("${FOO%%\\**}", &[("FOO", "xx**")], "xx", &["FOO"], &[]),
    ok(
        "${ABC:-.}${FOO%x}${ABC:-.}",
        XXYY,
        ".xxyy.",
        &["FOO"],
        &["ABC"],
    ),
    ok("${FOO%%\\**\\*}", &[("FOO", "a***yy*")], "a", &["FOO"], &[]),
    ok("${FOO%}", XXYY, "xxyy", &["FOO"], &[]),
    ok(
        "${FOO%%$BAR}",
        &[("FOO", "xxyy"), ("BAR", "")],
        "xxyy",
        &["FOO", "BAR"],
        &[],
    ),
    ok("${FOO%y}", XXYY, "xxy", &["FOO"], &[]),
    ok("${FOO%y*}", XXYY, "xxy", &["FOO"], &[]),
    ok("${FOO%%y*}", XXYY, "xx", &["FOO"], &[]),
    ok(
        "${FOO%.*}",
        &[("FOO", "file.tar.gz")],
        "file.tar",
        &["FOO"],
        &[],
    ),
    ok(
        "${FOO%%.*}",
        &[("FOO", "file.tar.gz")],
        "file",
        &["FOO"],
        &[],
    ),
    ok(
        "${FOO##*/}",
        &[("FOO", "/usr/local/bin")],
        "bin",
        &["FOO"],
        &[],
    ),
    ok(
        "${FOO%/*}",
        &[("FOO", "/usr/local/bin")],
        "/usr/local",
        &["FOO"],
        &[],
    ),
    ok("${FOO#한}", &[("FOO", "한국어")], "국어", &["FOO"], &[]),
    ok("${FOO%?}", &[("FOO", "한국어")], "한국", &["FOO"], &[]),
    // `:` does not combine with the pattern operators.
    fails("${FOO:#}", &[]),
    fails("${FOO:##}", &[]),
    fails("${FOO:%}", &[]),
    fails("${FOO:%%}", &[]),
    // An escape that means nothing in a pattern.
    fails("${FOO#\\x}", XXYY),
    // `/` and `//`
    ok(
        "${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}",
        &[("FOO", "/foo*/*/*.txt"), ("NEEDLE", "\\*/")],
        "/foo.*/*.txt - /foo..*.txt",
        &["FOO", "NEEDLE"],
        &[],
    ),
    ok(
        "${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}",
        &[("FOO", "/tmp/tmp/bar.txt"), ("NEEDLE", "/tmp")],
        "/tmp/bar.txt - /bar.txt",
        &["FOO", "NEEDLE"],
        &[],
    ),
    ok(
        "${FOO/$NEEDLE/$REPLACEMENT} - ${FOO//$NEEDLE/$REPLACEMENT}",
        &[
            ("FOO", "/a/foo/b/c.txt"),
            ("NEEDLE", "/?/"),
            ("REPLACEMENT", "/"),
        ],
        "/foo/b/c.txt - /foo/c.txt",
        &["FOO", "NEEDLE", "REPLACEMENT"],
        &[],
    ),
    ok(
        "${FOO/$NEEDLE/$REPLACEMENT}",
        &[
            ("FOO", "http://google.de"),
            ("NEEDLE", "http://"),
            ("REPLACEMENT", "https://"),
        ],
        "https://google.de",
        &["FOO", "NEEDLE", "REPLACEMENT"],
        &[],
    ),
    // Escaped separators; the replacement keeps its escape.
    ok(
        "${FOO//\\//\\/}",
        &[("FOO", "/tmp/foo.txt")],
        "\\/tmp\\/foo.txt",
        &["FOO"],
        &[],
    ),
    ok("${FOO/x*/z}", XXYY, "z", &["FOO"], &[]),
    ok("${FOO//y/}", XXYY, "xx", &["FOO"], &[]),
    // Partial or empty patterns: must not misbehave.
    ok(
        "${FOO/$BAR/ww}",
        &[("FOO", "xxyy"), ("BAR", "")],
        "wwxxyy",
        &["FOO", "BAR"],
        &[],
    ),
    fails("${FOO//ww}", XXYY),
    fails("${FOO//}", XXYY),
    ok("${FOO///}", XXYY, "xxyy", &["FOO"], &[]),
    ok("${FOO///}", &[], "", &[], &["FOO"]),
    // The platform-dependent release file name of TestProcessWithMatchesPlatform.
    ok(
        "something-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz",
        &[
            ("VERSION", "v1.2.3"),
            ("TARGETOS", "linux"),
            ("TARGETARCH", "arm"),
            ("TARGETVARIANT", "v7"),
        ],
        "something-v1.2.3.linux-arm-v7.tar.gz",
        &["VERSION", "TARGETOS", "TARGETARCH", "TARGETVARIANT"],
        &[],
    ),
    ok(
        "something-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz",
        &[
            ("VERSION", "v1.2.3"),
            ("TARGETOS", "linux"),
            ("TARGETARCH", "arm64"),
            ("TARGETVARIANT", ""),
        ],
        "something-v1.2.3.linux-arm64.tar.gz",
        &["VERSION", "TARGETOS", "TARGETARCH", "TARGETVARIANT"],
        &[],
    ),
    ok(
        "something-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz",
        &[
            ("VERSION", "v1.2.3"),
            ("TARGETOS", "linux"),
            ("TARGETARCH", "arm64"),
        ],
        "something-v1.2.3.linux-arm64.tar.gz",
        &["VERSION", "TARGETOS", "TARGETARCH"],
        &["TARGETVARIANT"],
    ),
];

#[test]
fn process_with_matches() {
    let lexer = Lexer::new('\\');
    let mut failures = Vec::new();
    for case in CASES {
        let result = lexer.process_word_with_matches(case.input, &env(case.env));
        match (case.expected, result) {
            (None, Err(_)) => {}
            (Some(expected), Ok(expansion)) => {
                let wanted = Expansion {
                    result: expected.to_owned(),
                    matched: set(case.matched),
                    unmatched: set(case.unmatched),
                };
                if expansion != wanted {
                    failures.push(format!(
                        "{:?}: expected {wanted:?}, got {expansion:?}",
                        case.input
                    ));
                }
            }
            (expected, result) => {
                failures.push(format!(
                    "{:?}: expected {expected:?}, got {result:?}",
                    case.input
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn required_variables_report_the_message() {
    let lexer = Lexer::new('\\');
    let no_empty = "${VAR:?message here$ARG}";
    let no_unset = "${VAR?message here$ARG}";
    let set_env = env(&[("VAR", "plain"), ("ARG", "x")]);
    let empty_env = env(&[("VAR", ""), ("ARG", "x")]);
    let unset_env = env(&[("ARG", "x")]);

    assert_eq!(lexer.process_word(no_empty, &set_env).unwrap(), "plain");
    let message = |word, env| lexer.process_word(word, env).unwrap_err().to_string();
    assert_eq!(message(no_empty, &empty_env), "VAR: message herex");
    assert_eq!(message(no_empty, &unset_env), "VAR: message herex");

    assert_eq!(lexer.process_word(no_unset, &set_env).unwrap(), "plain");
    assert_eq!(lexer.process_word(no_unset, &empty_env).unwrap(), "");
    assert_eq!(message(no_unset, &unset_env), "VAR: message herex");

    assert_eq!(
        message("${VAR?}", &unset_env),
        "VAR: is not allowed to be unset"
    );
    assert_eq!(
        message("${VAR:?}", &empty_env),
        "VAR: is not allowed to be empty"
    );
}

#[test]
fn errors_say_what_is_wrong() {
    let lexer = Lexer::new('\\');
    let error = |word| lexer.process_word(word, &EmptyEnv).unwrap_err();
    assert_eq!(error("'abc"), ShellError::UnterminatedSingleQuote);
    assert_eq!(error("\"abc"), ShellError::UnterminatedDoubleQuote);
    assert_eq!(error("${abc"), ShellError::MissingBrace);
    assert_eq!(error("${abc:-x"), ShellError::MissingBrace);
    assert_eq!(error("${}"), ShellError::BadSubstitution);
    assert_eq!(error("${:-x}"), ShellError::BadSubstitution);
    assert_eq!(error("${{x}"), ShellError::BadSubstitution);
    assert_eq!(
        error("${x:=y}"),
        ShellError::UnsupportedModifier(":=".into())
    );
    assert_eq!(error("${x.y}"), ShellError::UnsupportedModifier(".".into()));
    assert_eq!(error("${x/a"), ShellError::MissingSlash);
    assert_eq!(error("${x/a/b"), ShellError::MissingBrace);
    // Running out of input inside `${...}` is always reported as a missing
    // brace; other errors in the word pass through.
    assert_eq!(error("${x:-'a}"), ShellError::MissingBrace);
    assert_eq!(error("${x:-${}}"), ShellError::BadSubstitution);
    assert!(matches!(
        error("${x#\\a}"),
        ShellError::InvalidPattern { .. }
    ));
    assert_eq!(
        ShellError::MissingBrace.to_string(),
        "syntax error: missing '}'"
    );
    assert_eq!(
        ShellError::UnsupportedModifier(":=".into()).to_string(),
        "unsupported modifier (:=) in substitution"
    );
}

#[test]
fn quotes_and_escapes() {
    let lexer = Lexer::new('\\');
    let vars = env(&[("A", "a b")]);
    let word = |input| lexer.process_word(input, &vars).unwrap();
    assert_eq!(word(r#"'$A'"#), "$A");
    assert_eq!(word(r#""$A""#), "a b");
    assert_eq!(word(r#""\$A \"q\" \\ \x""#), r#"$A "q" \ \x"#);
    assert_eq!(word(r"\$A\ \'"), "$A '");
    assert_eq!(word("$"), "$");
    assert_eq!(word("$.x"), "$.x");
    assert_eq!(word("a\\"), "a");
    assert_eq!(word("$1$@$#$$"), "");
}

#[test]
fn backtick_escape() {
    let lexer = Lexer::new('`');
    let vars = env(&[("A", "x")]);
    let word = |input| lexer.process_word(input, &vars).unwrap();
    assert_eq!(word("`$A"), "$A");
    assert_eq!(word("C:\\dir\\$A"), "C:\\dir\\x");
    assert_eq!(word("\"`\"`$A\""), "\"$A");
    assert_eq!(word("a` b"), "a b");
}

#[test]
fn word_splitting() {
    let lexer = Lexer::new('\\');
    let vars = env(&[("SPACED", " a  b "), ("EMPTY", "")]);
    let words = |input| lexer.process_words(input, &vars).unwrap();
    assert_eq!(words("x${SPACED}y"), ["x", "a", "b", "y"]);
    assert_eq!(words("x\"${SPACED}\"y"), ["x a  b y"]);
    assert_eq!(words("  one   two  "), ["one", "two"]);
    assert_eq!(words("a\\ b 'c d'"), ["a b", "c d"]);
    assert_eq!(words("${EMPTY} \"\" x"), ["x"]);
    assert_eq!(words("${SPACED:-z}${MISSING:-q r}"), ["a", "b", "q", "r"]);
    assert_eq!(words("x${EMPTY:-q r}y"), ["xq", "ry"]);
    assert!(words("").is_empty());
}

#[test]
fn lexer_options() {
    let vars = env(&[("SET", "v")]);

    let raw_quotes = Lexer {
        raw_quotes: true,
        ..Lexer::new('\\')
    };
    assert_eq!(
        raw_quotes.process_word("'a'\"$SET\"", &vars).unwrap(),
        "'a'\"v\""
    );

    let raw_escapes = Lexer {
        raw_escapes: true,
        ..Lexer::new('\\')
    };
    assert_eq!(
        raw_escapes.process_word("a\\ b\\$SET", &vars).unwrap(),
        "a\\ b\\$SET"
    );

    let skip_unset = Lexer {
        skip_unset_env: true,
        ..Lexer::new('\\')
    };
    let kept = |word| skip_unset.process_word(word, &vars).unwrap();
    assert_eq!(kept("$SET $UNSET ${UNSET}"), "v $UNSET ${UNSET}");
    assert_eq!(
        kept("${UNSET:-x} ${UNSET#p} ${UNSET//a/b}"),
        "${UNSET:-x} ${UNSET#p} ${UNSET/a/b}"
    );
    assert_eq!(kept("${SET:-x}"), "v");

    let no_quotes = Lexer {
        skip_process_quotes: true,
        ..Lexer::new('\\')
    };
    assert_eq!(
        no_quotes.process_word("'$SET' \"a\"", &vars).unwrap(),
        "'v' \"a\""
    );
    assert_eq!(
        no_quotes.process_words("'a b'", &vars).unwrap(),
        ["'a", "b'"]
    );
}

#[test]
fn env_implementations_agree() {
    let lexer = Lexer::new('\\');
    let hash: HashMap<String, String> = [("A".to_owned(), "1".to_owned())].into();
    let tree = env(&[("A", "1")]);
    // In a list the last entry wins, as with successive ENV instructions.
    let list = vec![
        ("A".to_owned(), "0".to_owned()),
        ("A".to_owned(), "1".to_owned()),
    ];
    for env in [&hash as &dyn Env, &tree, &list, &list.as_slice()] {
        assert_eq!(lexer.process_word("$A${B:-2}", env).unwrap(), "12");
    }
}

#[test]
fn multibyte_text() {
    let lexer = Lexer::new('\\');
    let vars = env(&[("KOREAN", "한국어")]);
    assert_eq!(
        lexer.process_word("안'녕'$KOREAN\\하", &vars).unwrap(),
        "안녕한국어하"
    );
    assert_eq!(
        lexer.process_word("${KOREAN/국/-}", &vars).unwrap(),
        "한-어"
    );
    assert_eq!(lexer.process_word("$변수x", &EmptyEnv).unwrap(), "");
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let lexer = Lexer::new('\\');
    let deep = "${a:-".repeat(10_000) + &"}".repeat(10_000);
    assert_eq!(
        lexer.process_word(&deep, &EmptyEnv),
        Err(ShellError::TooDeep(MAX_NESTING))
    );
    let fine = "${a:-".repeat(50) + "x" + &"}".repeat(50);
    assert_eq!(lexer.process_word(&fine, &EmptyEnv).unwrap(), "x");
}

/// A deterministic xorshift generator, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        let index = usize::try_from(self.next() % items.len() as u64).unwrap_or(0);
        items[index]
    }
}

#[test]
fn never_panics_on_garbage() {
    const PIECES: &[&str] = &[
        "$", "{", "}", ":", "-", "+", "?", "#", "%", "/", "\\", "`", "'", "\"", " ", "\n", "*",
        "a", "B", "_", "1", "@", "한", "${", "${a", ":-", "//", "##", "%%", "\\}", "\\*", "$0",
    ];
    let vars = env(&[("a", "xay*b"), ("B", ""), ("1", "one")]);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for round in 0..500 {
        let len = rng.next() % 24;
        let word: String = (0..len).map(|_| rng.pick(PIECES)).collect();
        let lexer = Lexer {
            escape: if round % 2 == 0 { '\\' } else { '`' },
            raw_quotes: round % 3 == 0,
            raw_escapes: round % 5 == 0,
            skip_unset_env: round % 7 == 0,
            skip_process_quotes: round % 11 == 0,
        };
        // Only the absence of a panic matters here.
        let _ = lexer.process_word_with_matches(&word, &vars);
        let _ = lexer.process_words(&word, &vars);
    }
}
