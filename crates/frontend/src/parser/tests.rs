use super::*;

fn parse_ok(source: &str) -> Dockerfile {
    parse(source.as_bytes()).unwrap_or_else(|err| panic!("{source:?} failed: {err}"))
}

fn parse_err(source: &str) -> ParseError {
    match parse(source.as_bytes()) {
        Ok(file) => panic!("{source:?} parsed: {}", dump(&file)),
        Err(err) => err,
    }
}

fn heredoc(name: &str, content: &str, expand: bool, chomp: bool) -> Heredoc {
    Heredoc {
        name: name.to_owned(),
        content: content.to_owned(),
        expand,
        chomp,
    }
}

// Directives

#[test]
fn directives_are_read_from_the_leading_block() {
    let file = parse_ok("# syntax=docker/dockerfile:1\n# CHECK = skip=all\n#Escape=`\nFROM a\n");
    let directives = &file.directives;
    assert_eq!(directives.escape, '`');
    assert_eq!(
        directives.syntax,
        Some(Directive {
            value: "docker/dockerfile:1".into(),
            line: 1
        })
    );
    assert_eq!(
        directives.check,
        Some(Directive {
            value: "skip=all".into(),
            line: 2
        })
    );
    assert_eq!(file.instructions[0].start_line, 4);
}

#[test]
fn backtick_escape_continues_lines() {
    let file = parse_ok("# escape=`\nFROM image\nRUN dir c:\\ `\n  && echo done\n");
    assert_eq!(
        dump(&file),
        "(from \"image\")\n(run \"dir c:\\\\   && echo done\")"
    );
    assert_eq!(
        (
            file.instructions[1].start_line,
            file.instructions[1].end_line
        ),
        (3, 4)
    );
}

#[test]
fn duplicate_directive_is_an_error() {
    assert_eq!(
        parse_err("# syntax=a\n# syntax=b\nFROM x\n"),
        ParseError::DuplicateDirective {
            name: "syntax".into(),
            line: 2
        }
    );
    let err = parse_err("# escape=\\\n# ESCAPE=`\nFROM x\n");
    assert_eq!(err.line(), 2);
    assert_eq!(
        err.to_string(),
        "line 2: only one escape parser directive can be used"
    );
}

#[test]
fn escape_must_be_backslash_or_backtick() {
    assert_eq!(
        parse_err("# escape=x\nFROM a\n"),
        ParseError::InvalidEscapeToken {
            token: "x".into(),
            line: 1
        }
    );
    assert!(matches!(
        parse_err("#escape=\\\\\nFROM a\n"),
        ParseError::InvalidEscapeToken { .. }
    ));
}

#[test]
fn directives_after_the_leading_block_are_comments() {
    // After an ordinary comment.
    let file = parse_ok("# a comment\n# escape=`\nFROM a\nENV X `\nb\n");
    assert_eq!(file.directives, Directives::default());
    assert_eq!(
        dump(&file),
        "(from \"a\")\n(env \"X\" \"`\" \"\")\n(b \"\")"
    );
    // After a blank line, an unknown directive, or an instruction.
    for source in [
        "\n# escape=`\nFROM a\n",
        "# foo=bar\n# escape=`\nFROM a\n",
        "FROM a\n# escape=`\n",
        "FROM a\n# syntax=x\n# syntax=y\n",
    ] {
        assert_eq!(
            parse_ok(source).directives,
            Directives::default(),
            "{source:?}"
        );
    }
}

// Lines, continuations and comments

#[test]
fn continuations_join_lines() {
    let file = parse_ok("FROM a\nRUN echo a \\\n    b \\\n# comment\n  c\n");
    let run = &file.instructions[1];
    assert_eq!(run.args, ["echo a     b   c"]);
    assert_eq!(run.original, "RUN echo a     b   c");
    assert_eq!((run.start_line, run.end_line), (2, 5));
    assert!(file.warnings.is_empty());
}

#[test]
fn escape_at_end_of_file() {
    let file = parse_ok("FROM a\nRUN x \\");
    assert_eq!(file.instructions[1].args, ["x"]);
    assert_eq!(file.instructions[1].end_line, 2);
}

#[test]
fn empty_continuation_lines_warn() {
    let file = parse_ok("FROM a\nRUN a \\\n\n  b \\\n   \n  c\nRUN d\n");
    assert_eq!(file.instructions[1].args, ["a   b   c"]);
    assert_eq!(
        file.warnings,
        [Warning {
            message: "Empty continuation line found in: RUN a   b   c".into(),
            line: 6
        }]
    );
    assert_eq!(file.instructions[2].start_line, 7);
}

#[test]
fn crlf_and_byte_order_mark() {
    let file = parse(b"\xEF\xBB\xBF# escape=`\r\nFROM a\r\nRUN x `\r\n  y\r\n").unwrap();
    assert_eq!(file.directives.escape, '`');
    assert_eq!(dump(&file), "(from \"a\")\n(run \"x   y\")");
}

#[test]
fn keywords_are_case_insensitive_and_indented() {
    let file = parse_ok("  from a\n\tRuN   echo hi\nCopy --FROM=x a b\n");
    assert_eq!(
        dump(&file),
        "(from \"a\")\n(run \"echo hi\")\n(copy [\"--FROM=x\"] \"a\" \"b\")"
    );
    assert_eq!(file.instructions[1].keyword, "run");
    assert_eq!(file.instructions[1].original, "RuN   echo hi");
}

#[test]
fn unknown_keywords_keep_an_empty_argument() {
    let file = parse_ok("FROM a\nFOO bar baz\n");
    let unknown = &file.instructions[1];
    assert_eq!(unknown.keyword, "foo");
    assert_eq!(unknown.args, [""]);
    assert_eq!(dump(&file), "(from \"a\")\n(foo \"\")");
}

#[test]
fn invalid_utf8_is_replaced() {
    let file = parse(b"FROM a\nRUN echo \xFF\n").unwrap();
    assert_eq!(file.instructions[1].args, ["echo \u{FFFD}"]);
}

// Argument shapes

#[test]
fn argument_shapes_per_keyword() {
    let file = parse_ok(concat!(
        "FROM --platform=$P img AS build\n",
        "ARG a b=\"c d\"\n",
        "ENV k v w\n",
        "LABEL a=1 \"b c\"=2\n",
        "USER  me:you \n",
        "EXPOSE 80/tcp  443\n",
        "VOLUME [\"/a\", \"/b\"]\n",
        "VOLUME /c /d\n",
        "SHELL [\"sh\", \"-c\"]\n",
        "CMD [\"a\"] trailing\n",
        "ENTRYPOINT run it\n",
        "HEALTHCHECK NONE\n",
        "ONBUILD\n",
        "STOPSIGNAL SIGKILL\n",
    ));
    let shapes: Vec<(&str, Vec<&str>, bool)> = file
        .instructions
        .iter()
        .map(|i| {
            (
                i.keyword.as_str(),
                i.args.iter().map(String::as_str).collect(),
                i.json,
            )
        })
        .collect();
    assert_eq!(
        shapes,
        [
            ("from", vec!["img", "AS", "build"], false),
            ("arg", vec!["a", "b=\"c d\""], false),
            ("env", vec!["k", "v w", ""], false),
            ("label", vec!["a", "1", "=", "\"b c\"", "2", "="], false),
            ("user", vec!["me:you"], false),
            ("expose", vec!["80/tcp", "443"], false),
            ("volume", vec!["/a", "/b"], true),
            ("volume", vec!["/c", "/d"], false),
            ("shell", vec!["sh", "-c"], true),
            ("cmd", vec!["a"], true),
            ("entrypoint", vec!["run it"], false),
            ("healthcheck", vec!["NONE"], false),
            ("onbuild", vec![], false),
            ("stopsignal", vec!["SIGKILL"], false),
        ]
    );
    assert_eq!(file.instructions[0].flags, ["--platform=$P"]);
}

#[test]
fn json_fallbacks_and_errors() {
    let file = parse_ok("CMD ['a']\nRUN [\"a\"\nCMD []\n");
    assert_eq!(file.instructions[0].args, ["['a']"]);
    assert!(!file.instructions[0].json);
    assert_eq!(file.instructions[1].args, ["[\"a\""]);
    assert!(file.instructions[2].args.is_empty());
    assert!(file.instructions[2].json);

    let err = parse_err("FROM a\nRUN [\"a\", 1]\n");
    assert_eq!(
        err,
        ParseError::Instruction {
            error: InstructionError::NotStringArray,
            start_line: 2,
            end_line: 2
        }
    );
}

#[test]
fn onbuild_nests_its_trigger() {
    let file = parse_ok("ONBUILD RUN [\"echo\", \"x\"]\nONBUILD --f COPY --from=a . /\n");
    let first = file.instructions[0].onbuild.as_deref().unwrap();
    assert_eq!((first.keyword.as_str(), first.json), ("run", true));
    assert_eq!((first.start_line, first.end_line), (1, 1));
    assert!(file.instructions[0].args.is_empty());
    assert_eq!(
        dump(&file),
        "(onbuild (run \"echo\" \"x\"))\n(onbuild [\"--f\"] (copy [\"--from=a\"] \".\" \"/\"))"
    );
}

// Heredocs

#[test]
fn several_heredocs_in_one_run() {
    let file = parse_ok("FROM a\nRUN <<A cat - <<'B'\nfirst $X\nA\nsecond $X\nB\nRUN next\n");
    let run = &file.instructions[1];
    assert_eq!(
        run.heredocs,
        [
            heredoc("A", "first $X\n", true, false),
            heredoc("B", "second $X\n", false, false)
        ]
    );
    assert_eq!(run.args, ["<<A cat - <<'B'"]);
    assert_eq!((run.start_line, run.end_line), (2, 6));
    assert_eq!(file.instructions[2].start_line, 7);
}

#[test]
fn chomped_heredoc_strips_leading_tabs() {
    let file = parse_ok("FROM a\nRUN <<-EOT\n\techo a\n\t\t  echo b\n\tEOT\n");
    let doc = &file.instructions[1].heredocs[0];
    // The content is kept as written, as BuildKit does; `body` strips it.
    assert_eq!(doc, &heredoc("EOT", "\techo a\n\t\t  echo b\n", true, true));
    assert_eq!(doc.body(), "echo a\n  echo b\n");
    assert_eq!(
        chomp_heredoc_content("\thello\n\tworld\n"),
        "hello\nworld\n"
    );
}

#[test]
fn quoted_delimiter_disables_expansion() {
    for (source, name) in [
        ("RUN <<\"EOF\"\n$X\nEOF\n", "EOF"),
        ("RUN <<'EOF'\n$X\nEOF\n", "EOF"),
        ("RUN <<-'EOF'\n$X\nEOF\n", "EOF"),
        ("RUN <<E\"O\"F\n$X\nEOF\n", "EOF"),
    ] {
        let doc = &parse_ok(source).instructions[0].heredocs[0];
        assert_eq!(doc.name, name, "{source:?}");
        assert!(!doc.expand, "{source:?}");
    }
}

#[test]
fn copy_with_two_file_heredocs() {
    let file = parse_ok("FROM a\nCOPY <<a.txt <<b.txt /dir/\nA\na.txt\nB\nb.txt\n");
    let copy = &file.instructions[1];
    assert_eq!(copy.args, ["<<a.txt", "<<b.txt", "/dir/"]);
    assert_eq!(
        copy.heredocs,
        [
            heredoc("a.txt", "A\n", true, false),
            heredoc("b.txt", "B\n", true, false)
        ]
    );
}

#[test]
fn heredoc_as_program_input() {
    let file = parse_ok("FROM python\nRUN python3 <<EOF\nprint('hi')\n\nEOF\nCMD x\n");
    let run = &file.instructions[1];
    assert_eq!(run.args, ["python3 <<EOF"]);
    assert_eq!(
        run.heredocs,
        [heredoc("EOF", "print('hi')\n\n", true, false)]
    );
    assert_eq!((run.start_line, run.end_line), (2, 5));
}

/// BuildKit's TestParseExtractsHeredoc, as our own table.
#[test]
fn heredoc_extraction_matches_buildkit() {
    let source = "\nFROM alpine:3.6\n\nENV NAME=me\n\nRUN ls\n\nUSER <<INVALID\nINVALID\n\nRUN <<EMPTY\nEMPTY\n\n\
RUN 3<<EMPTY2\nEMPTY2\n\nRUN \"<<NOHEREDOC\"\n\nRUN <<INDENT\n\tfoo\n\tbar\nINDENT\n\n\
RUN <<-UNINDENT\n\tbaz\n\tquux\nUNINDENT\n\nRUN <<-UNINDENT2\n\tbaz\n\tquux\n\tUNINDENT2\n\n\
RUN <<-EXPAND\n\texpand $NAME\nEXPAND\n\nRUN <<-'NOEXPAND'\n\tdon't expand $NAME\nNOEXPAND\n\n\
RUN <<COPY\necho hello world\necho foo bar\nCOPY\n\n\
RUN <<COMMENT\n# internal comment\necho hello world\necho foo bar # trailing comment\nCOMMENT\n\n\
RUN --mount=type=cache,target=/foo <<MOUNT\necho hello\nMOUNT\n\n\
COPY <<FILE1 <<FILE2 /dest\ncontent 1\nFILE1\ncontent 2\nFILE2\n\n\
COPY <<X <<Y /dest\nY\nX\nX\nY\n\t";
    let expected: Vec<Vec<Heredoc>> = vec![
        vec![],                                   // ENV
        vec![],                                   // RUN ls
        vec![],                                   // USER <<INVALID
        vec![],                                   // INVALID (an unknown instruction)
        vec![heredoc("EMPTY", "", true, false)],  // RUN <<EMPTY
        vec![heredoc("EMPTY2", "", true, false)], // RUN 3<<EMPTY2
        vec![],                                   // RUN "<<NOHEREDOC"
        vec![heredoc("INDENT", "\tfoo\n\tbar\n", true, false)],
        vec![heredoc("UNINDENT", "\tbaz\n\tquux\n", true, true)],
        vec![heredoc("UNINDENT2", "\tbaz\n\tquux\n", true, true)],
        vec![heredoc("EXPAND", "\texpand $NAME\n", true, true)],
        vec![heredoc("NOEXPAND", "\tdon't expand $NAME\n", false, true)],
        vec![heredoc(
            "COPY",
            "echo hello world\necho foo bar\n",
            true,
            false,
        )],
        vec![heredoc(
            "COMMENT",
            "# internal comment\necho hello world\necho foo bar # trailing comment\n",
            true,
            false,
        )],
        vec![heredoc("MOUNT", "echo hello\n", true, false)],
        vec![
            heredoc("FILE1", "content 1\n", true, false),
            heredoc("FILE2", "content 2\n", true, false),
        ],
        vec![
            heredoc("X", "Y\n", true, false),
            heredoc("Y", "X\n", true, false),
        ],
    ];
    let file = parse_ok(source);
    let actual: Vec<Vec<Heredoc>> = file
        .instructions
        .iter()
        .skip(1)
        .map(|i| i.heredocs.clone())
        .collect();
    assert_eq!(actual, expected);
}

#[test]
fn heredocs_only_in_shell_form_run_copy_add() {
    let file = parse_ok("FROM a\nRUN [\"<<EOF\"]\nRUN [\"<<'EOF'\"]\nUSER <<EOF\nEOF\n");
    assert!(file.instructions.iter().all(|i| i.heredocs.is_empty()));
    // EOF was parsed as an (unknown) instruction of its own.
    assert_eq!(file.instructions.len(), 5);
}

#[test]
fn onbuild_heredoc_belongs_to_the_onbuild() {
    let file = parse_ok("FROM a\nONBUILD RUN <<EOF\necho\nEOF\n");
    let onbuild = &file.instructions[1];
    assert_eq!(onbuild.heredocs, [heredoc("EOF", "echo\n", true, false)]);
    assert_eq!(onbuild.end_line, 4);
}

#[test]
fn heredoc_keeps_crlf_and_matches_delimiter_without_it() {
    let file = parse(b"RUN <<EOF\r\na\r\nEOF\r\n").unwrap();
    assert_eq!(
        file.instructions[0].heredocs,
        [heredoc("EOF", "a\r\n", true, false)]
    );
}

#[test]
fn unterminated_heredoc_is_an_error() {
    let err = parse_err("FROM a\nRUN <<EOF\nline\nEO\n");
    assert_eq!(
        err,
        ParseError::UnterminatedHeredoc {
            name: "EOF".into(),
            start_line: 2,
            end_line: 4
        }
    );
    assert_eq!(err.to_string(), "lines 2-4: unterminated heredoc \"EOF\"");
}

// Errors

#[test]
fn errors_carry_line_numbers() {
    let cases: [(&str, usize, usize); 6] = [
        ("FROM busybox\n\nENV PATH\n", 3, 3),
        ("FROM a\nLABEL foo\n", 2, 2),
        ("FROM a\nENV a=1 \\\n  b\n", 2, 3),
        ("FROM a\nCMD [ \"echo\", [ \"nested json\" ] ]\n", 2, 2),
        ("\n\n# only comments\n", 3, 3),
        ("", 1, 1),
    ];
    for (source, line, end_line) in cases {
        let err = parse_err(source);
        assert_eq!(
            (err.line(), err.end_line()),
            (line, end_line),
            "{source:?}: {err}"
        );
    }
    assert_eq!(
        parse_err("FROM a\nENV PATH\n").to_string(),
        "line 2: ENV must have two arguments"
    );
    assert_eq!(
        parse_err("# hi\n").to_string(),
        "line 1: file with no instructions"
    );
    assert_eq!(
        parse_err("FROM a\nENV a=1 \\\n  b\n").to_string(),
        "lines 2-3: Syntax error - can't find = in \"b\". Must be of the form: name=value"
    );
}

#[test]
fn overlong_lines_are_rejected_like_buildkit() {
    let long = "x".repeat(MAX_LINE_LEN);
    assert!(parse(format!("FROM a\nRUN {}\n", &long[4..]).as_bytes()).is_ok());
    let err = parse_err(&format!("FROM a\nRUN {long}\n"));
    assert_eq!(err, ParseError::LineTooLong { line: 2 });
}

// Robustness

/// A deterministic xorshift generator, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: usize) -> usize {
        usize::try_from(self.next() % bound as u64).unwrap_or(0)
    }
}

#[test]
fn never_panics_on_garbage() {
    // Mostly fragments that mean something to the parser, plus raw bytes.
    const FRAGMENTS: &[&[u8]] = &[
        b"RUN ",
        b"COPY ",
        b"ONBUILD ",
        b"ENV ",
        b"LABEL ",
        b"HEALTHCHECK ",
        b"FROM ",
        b"ARG ",
        b"x",
        b"=",
        b" ",
        b"\t",
        b"\n",
        b"\r\n",
        b"\\",
        b"`",
        b"\\\n",
        b"# escape=`\n",
        b"# syntax=a\n",
        b"#",
        b"[",
        b"]",
        b"\"",
        b"'",
        b",",
        b"<<",
        b"<<-",
        b"EOF",
        b"\nEOF\n",
        b"--",
        b"--f=",
        b"$",
        b"${",
        b"}",
        b"\\u",
        b"\xEF\xBB\xBF",
        b"\xFF",
        b"\xC3",
        b"\xA0",
        b"\x85",
        b"\0",
        b"\xE2\x80\xA8",
    ];
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for _ in 0..600 {
        let mut source = Vec::new();
        for _ in 0..rng.below(40) {
            if rng.below(8) == 0 {
                source.push(u8::try_from(rng.below(256)).unwrap_or(0));
            } else {
                source.extend_from_slice(FRAGMENTS[rng.below(FRAGMENTS.len())]);
            }
        }
        // Only the absence of a panic matters here.
        if let Ok(file) = parse(&source) {
            let _ = dump(&file);
        }
    }
}
