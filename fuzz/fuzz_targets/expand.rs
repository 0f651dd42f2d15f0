//! Shell word expansion (BuildKit's lexer) on arbitrary words and
//! environments.
//!
//! Input layout (lossy UTF-8): the first line is the word; each following
//! line, up to 8, is an environment entry `NAME=VALUE` (a line without `=`
//! sets NAME to the empty string). The word is expanded with escape `\` and
//! with escape `` ` ``, through process_word, process_words and
//! process_word_with_matches, and once more with the lexer's option flags
//! taken from the word's length.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rbuild_frontend::shell::Lexer;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let word = lines.next().unwrap_or_default();
    let env: Vec<(String, String)> = lines
        .take(8)
        .map(|line| match line.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (line.to_string(), String::new()),
        })
        .collect();

    for escape in ['\\', '`'] {
        let lexer = Lexer::new(escape);
        let single = lexer.process_word(word, &env);
        let words = lexer.process_words(word, &env);
        let matches = lexer.process_word_with_matches(word, &env);
        // All three run the same expansion: they succeed or fail together,
        // and with the same error.
        match (&single, &words, &matches) {
            (Ok(s), Ok(_), Ok(m)) => {
                assert_eq!(s, &m.result, "process_word vs process_word_with_matches");
                assert!(
                    m.matched.is_disjoint(&m.unmatched),
                    "a variable both matched and unmatched: {m:?}"
                );
            }
            (Err(a), Err(b), Err(c)) => {
                assert_eq!(a, b);
                assert_eq!(a, c);
                // Error messages are formatted for users: must not panic.
                std::hint::black_box(a.to_string());
            }
            _ => panic!("expansions disagree: {single:?} / {words:?} / {matches:?}"),
        }

        let mut flagged = Lexer::new(escape);
        let bits = word.len();
        flagged.raw_quotes = bits & 1 != 0;
        flagged.raw_escapes = bits & 2 != 0;
        flagged.skip_unset_env = bits & 4 != 0;
        flagged.skip_process_quotes = bits & 8 != 0;
        let _ = flagged.process_words(word, &env);
        let _ = flagged.process_word_with_matches(word, &env);
    }
});
