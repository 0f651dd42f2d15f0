//! Reading a build's ignore file, as BuildKit's Dockerfile frontend does.
//!
//! - [`parse`] turns the file's bytes into patterns the way moby's
//!   `ignorefile.ReadAll` does.
//! - [`load`] finds the file for a build: `<Dockerfile>.dockerignore` next to
//!   the Dockerfile wins over `<context>/.dockerignore`.
//!
//! The patterns are returned as strings; matching them (and rejecting
//! invalid ones) is up to the pattern matcher in `rbuild-exec`.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use rbuild_oci::path::go_clean as clean;

/// The longest line moby's reader accepts: Go's `bufio.Scanner` gives up
/// ("token too long") on a line that, with its newline, does not fit in 64 KiB.
pub const MAX_LINE_BYTES: usize = 64 * 1024 - 1;

/// The name of the context's ignore file.
pub const DEFAULT_NAME: &str = ".dockerignore";

/// Why an ignore file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DockerIgnoreError {
    #[error("reading {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{}: line {line} is {len} bytes long; ignore files are limited to {MAX_LINE_BYTES} bytes a line",
        Location(.path.as_deref())
    )]
    LineTooLong {
        /// The file, when known (`parse` alone does not know it).
        path: Option<PathBuf>,
        /// 1-based.
        line: usize,
        len: usize,
    },
}

/// Displays an optional path for an error message.
struct Location<'a>(Option<&'a Path>);

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(path) => write!(f, "{}", path.display()),
            None => f.write_str("ignore file"),
        }
    }
}

/// Reads ignore patterns as moby's ignorefile.ReadAll does: one pattern per line, `#` comment lines skipped,
/// whitespace trimmed, empty lines skipped, `!` prefix kept (with the rest cleaned), paths cleaned (filepath.Clean semantics, leading `/` removed).
///
/// In detail: lines end at `\n` (a `\r` before it is dropped); a UTF-8 byte
/// order mark at the start of the file is skipped; a line is a comment only
/// if `#` is its very first byte (`  # x` is the pattern `# x`); whitespace
/// after a leading `!` is trimmed too; and `!` alone stays `!`, which the
/// matcher rejects. Bytes that are not UTF-8 become U+FFFD.
pub fn parse(content: &[u8]) -> Result<Vec<String>, DockerIgnoreError> {
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    let mut patterns = Vec::new();
    let mut lines = content.split(|&b| b == b'\n').enumerate().peekable();
    while let Some((index, raw)) = lines.next() {
        // Bytes after the last newline form a line only if there are some.
        if lines.peek().is_none() && raw.is_empty() {
            break;
        }
        // Go's scanner measures the line before the byte order mark and the
        // carriage return come off.
        if raw.len() > MAX_LINE_BYTES {
            return Err(DockerIgnoreError::LineTooLong {
                path: None,
                line: index + 1,
                len: raw.len(),
            });
        }
        let raw = if index == 0 {
            raw.strip_prefix(BOM).unwrap_or(raw)
        } else {
            raw
        };
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if let Some(pattern) = parse_line(raw) {
            patterns.push(pattern);
        }
    }
    Ok(patterns)
}

/// One line (without its line ending) as a pattern, or `None` if it has none.
fn parse_line(raw: &[u8]) -> Option<String> {
    if raw.first() == Some(&b'#') {
        return None;
    }
    let text = String::from_utf8_lossy(raw);
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let (exception, body) = match text.strip_prefix('!') {
        Some(rest) => (true, rest.trim()),
        None => (false, text),
    };
    let mut pattern = String::with_capacity(body.len() + 1);
    if exception {
        pattern.push('!');
    }
    if !body.is_empty() {
        let cleaned = clean(body);
        match cleaned.strip_prefix('/') {
            Some(rest) if !rest.is_empty() => pattern.push_str(rest),
            _ => pattern.push_str(&cleaned),
        }
    }
    Some(pattern)
}

/// The ignore file for a build: `<dockerfile name>.dockerignore` next to the Dockerfile takes precedence, else `<context>/.dockerignore`; Ok(None) when neither exists. Returns the path it read and the patterns.
///
/// `dockerfile` is the Dockerfile's path as the user gave it (`None` means
/// `<context>/Dockerfile`; `-`, a Dockerfile read from standard input, has
/// no Dockerfile-specific ignore file). As in BuildKit, the name is the one
/// asked for: with the default name, `Dockerfile.dockerignore` is looked for
/// even when the file found is the lower-case `dockerfile`.
///
/// A candidate that exists is used even if it is empty. One that is a
/// directory counts as missing (BuildKit cannot read it and moves on); any
/// other error reading an existing file is an error, rather than a build
/// that silently ignores nothing.
pub fn load(
    context_dir: &Path,
    dockerfile: Option<&Path>,
) -> Result<Option<(PathBuf, Vec<String>)>, DockerIgnoreError> {
    let specific = match dockerfile {
        None => Some(context_dir.join("Dockerfile.dockerignore")),
        Some(path) if path.as_os_str() == "-" => None,
        Some(path) => path.file_name().map(|name| {
            let mut name = name.to_os_string();
            name.push(".dockerignore");
            path.with_file_name(name)
        }),
    };
    let candidates = specific
        .into_iter()
        .chain(std::iter::once(context_dir.join(DEFAULT_NAME)));
    for candidate in candidates {
        let Some(content) = read_if_file(&candidate)? else {
            continue;
        };
        let patterns = parse(&content).map_err(|e| with_path(e, &candidate))?;
        return Ok(Some((candidate, patterns)));
    }
    Ok(None)
}

/// The file's bytes, or `None` if there is no file there.
fn read_if_file(path: &Path) -> Result<Option<Vec<u8>>, DockerIgnoreError> {
    let read_error = |source| DockerIgnoreError::Read {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read(path) {
        Ok(content) => Ok(Some(content)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => Ok(None),
            _ => Err(read_error(e)),
        },
    }
}

fn with_path(error: DockerIgnoreError, path: &Path) -> DockerIgnoreError {
    match error {
        DockerIgnoreError::LineTooLong { line, len, .. } => DockerIgnoreError::LineTooLong {
            path: Some(path.to_path_buf()),
            line,
            len,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory, removed on drop (std only: no tempfile here).
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir()
                .join(format!("rbuild-dockerignore-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create scratch dir");
            Scratch(dir)
        }

        fn write(&self, rel: &str, content: &str) -> PathBuf {
            let path = self.0.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("create parent");
            }
            std::fs::write(&path, content).expect("write file");
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn parsed(content: &str) -> Vec<String> {
        parse(content.as_bytes()).expect("parse")
    }

    #[test]
    fn dockerignore_moby_read_all() {
        // moby/patternmatcher ignorefile TestReadAll.
        let content = "test1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n! /inverted/abs/path\n!\n! ";
        assert_eq!(
            parsed(content),
            [
                "test1",
                "test2",
                "a/file/here",
                "lastfile",
                "!inverted/abs/path",
                "!",
                "!"
            ]
        );
        assert!(parsed("").is_empty());
        assert!(parsed("\n\n  \n\t\n").is_empty());
    }

    #[test]
    fn dockerignore_comments_and_whitespace() {
        // Only a `#` in the very first column starts a comment.
        assert_eq!(parsed("#c\n  # not a comment\n"), ["# not a comment"]);
        assert_eq!(parsed("\t a \t\r\n b\r\n"), ["a", "b"]);
        // Go's TrimSpace also trims Unicode spaces such as U+00A0.
        assert_eq!(parsed("\u{a0}x\u{a0}\n"), ["x"]);
        // A `#` after a `!` is a pattern.
        assert_eq!(parsed("!#x"), ["!#x"]);
    }

    #[test]
    fn dockerignore_cleaning() {
        assert_eq!(
            parsed("./a/../b/\na//b\n/\n!/\n!./x/\n!  /y\n..\n/../z\n**/*.log\n"),
            ["b", "a/b", "/", "!/", "!x", "!y", "..", "z", "**/*.log"]
        );
        // Backslashes are not separators.
        assert_eq!(parsed("a\\*b\n"), ["a\\*b"]);
    }

    #[test]
    fn dockerignore_byte_order_mark() {
        assert_eq!(
            parse(b"\xEF\xBB\xBF*.tmp\n\xEF\xBB\xBFx\n").expect("parse"),
            ["*.tmp", "\u{feff}x"]
        );
        // With the mark gone, a first-line `#` is a comment.
        assert!(parse(b"\xEF\xBB\xBF# comment").expect("parse").is_empty());
    }

    #[test]
    fn dockerignore_invalid_utf8_is_replaced() {
        assert_eq!(
            parse(b"caf\xE9\nok\n").expect("parse"),
            ["caf\u{fffd}", "ok"]
        );
    }

    #[test]
    fn dockerignore_line_length_limit() {
        let longest = "a".repeat(MAX_LINE_BYTES);
        assert_eq!(parsed(&format!("x\n{longest}\n")).len(), 2);
        assert_eq!(parsed(&longest).len(), 1);

        let too_long = "a".repeat(MAX_LINE_BYTES + 1);
        match parse(format!("x\n{too_long}\ny").as_bytes()) {
            Err(DockerIgnoreError::LineTooLong {
                path: None,
                line: 2,
                len,
            }) => assert_eq!(len, MAX_LINE_BYTES + 1),
            other => panic!("unexpected {other:?}"),
        }
        // The byte order mark counts, as does a carriage return.
        let mut with_bom = b"\xEF\xBB\xBF".to_vec();
        with_bom.extend(std::iter::repeat_n(b'a', MAX_LINE_BYTES - 3));
        assert!(parse(&with_bom).is_ok());
        with_bom.push(b'a');
        assert!(parse(&with_bom).is_err());
        let with_cr = format!("{longest}\r\n");
        assert!(parse(with_cr.as_bytes()).is_err());
    }

    #[test]
    fn dockerignore_load_none() {
        let dir = Scratch::new("none");
        assert!(load(&dir.0, None).expect("load").is_none());
        assert!(
            load(&dir.0, Some(&dir.0.join("Dockerfile")))
                .expect("load")
                .is_none()
        );
    }

    #[test]
    fn dockerignore_load_context_file() {
        let dir = Scratch::new("context");
        let ignore = dir.write(".dockerignore", "# c\nnode_modules\n!keep\n");
        let (path, patterns) = load(&dir.0, None).expect("load").expect("found");
        assert_eq!(path, ignore);
        assert_eq!(patterns, ["node_modules", "!keep"]);
        // A Dockerfile with no ignore file of its own falls back to it.
        let dockerfile = dir.write("build/app.Dockerfile", "FROM scratch\n");
        let (path, _) = load(&dir.0, Some(&dockerfile))
            .expect("load")
            .expect("found");
        assert_eq!(path, ignore);
        // So does a Dockerfile from standard input.
        let (path, _) = load(&dir.0, Some(Path::new("-")))
            .expect("load")
            .expect("found");
        assert_eq!(path, ignore);
    }

    #[test]
    fn dockerignore_load_dockerfile_specific_wins() {
        let dir = Scratch::new("specific");
        dir.write(".dockerignore", "context-wide\n");
        let default_specific = dir.write("Dockerfile.dockerignore", "for-default\n");
        let (path, patterns) = load(&dir.0, None).expect("load").expect("found");
        assert_eq!(path, default_specific);
        assert_eq!(patterns, ["for-default"]);

        let dockerfile = dir.write("build/app.Dockerfile", "FROM scratch\n");
        let specific = dir.write("build/app.Dockerfile.dockerignore", "/secret\n");
        let (path, patterns) = load(&dir.0, Some(&dockerfile))
            .expect("load")
            .expect("found");
        assert_eq!(path, specific);
        assert_eq!(patterns, ["secret"]);

        // An empty Dockerfile-specific file still takes precedence.
        std::fs::write(&specific, "").expect("truncate");
        let (path, patterns) = load(&dir.0, Some(&dockerfile))
            .expect("load")
            .expect("found");
        assert_eq!(path, specific);
        assert!(patterns.is_empty());
    }

    #[test]
    fn dockerignore_load_directory_counts_as_missing() {
        let dir = Scratch::new("directory");
        std::fs::create_dir_all(dir.0.join("Dockerfile.dockerignore")).expect("mkdir");
        let ignore = dir.write(".dockerignore", "x\n");
        let (path, _) = load(&dir.0, None).expect("load").expect("found");
        assert_eq!(path, ignore);
        std::fs::remove_file(&ignore).expect("rm");
        std::fs::create_dir_all(&ignore).expect("mkdir");
        assert!(load(&dir.0, None).expect("load").is_none());
    }

    #[test]
    fn dockerignore_load_error_names_file_and_line() {
        let dir = Scratch::new("error");
        let content = format!("ok\n{}\n", "a".repeat(MAX_LINE_BYTES + 1));
        let ignore = dir.write(".dockerignore", &content);
        let err = load(&dir.0, None).expect_err("too long");
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("{}: line 2 is", ignore.display())),
            "{message}"
        );
        let bare = parse(content.as_bytes()).expect_err("too long").to_string();
        assert!(bare.starts_with("ignore file: line 2 is"), "{bare}");
    }
}
