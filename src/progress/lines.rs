//! Turning a process's output chunks into whole lines.

use std::collections::VecDeque;
use std::time::SystemTime;

/// A line longer than this is cut where the chunk that crossed it ends, so
/// a step that writes without newlines (a binary dump) cannot make the
/// builder hold its whole output.
const MAX_LINE: usize = 64 * 1024;

/// One whole line of a vertex's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Line {
    /// When the line's first byte arrived.
    pub at: SystemTime,
    pub text: String,
}

/// Joins the chunks of a vertex's output into lines.
///
/// Chunks arrive as the process writes them, so a line, or even one UTF-8
/// character, may be split across chunks: bytes wait here until their
/// line ends, and only whole lines are decoded.
#[derive(Debug, Default)]
pub(super) struct LineBuffer {
    partial: Vec<u8>,
    partial_at: Option<SystemTime>,
}

impl LineBuffer {
    /// Adds a chunk that arrived at `at` and returns the lines it ended.
    pub fn push(&mut self, data: &[u8], at: SystemTime) -> Vec<Line> {
        let mut lines = Vec::new();
        for piece in data.split_inclusive(|&b| b == b'\n') {
            self.partial_at.get_or_insert(at);
            let (body, ended) = match piece.strip_suffix(b"\n") {
                Some(body) => (body, true),
                None => (piece, false),
            };
            self.partial.extend_from_slice(body);
            if ended || self.partial.len() >= MAX_LINE {
                lines.push(self.take(at));
            }
        }
        lines
    }

    /// The unfinished last line, if any: the vertex ended without a
    /// final newline.
    pub fn flush(&mut self) -> Option<Line> {
        if self.partial.is_empty() {
            self.partial_at = None;
            return None;
        }
        let at = self.partial_at.unwrap_or(SystemTime::UNIX_EPOCH);
        Some(self.take(at))
    }

    fn take(&mut self, fallback_at: SystemTime) -> Line {
        let bytes = std::mem::take(&mut self.partial);
        Line {
            at: self.partial_at.take().unwrap_or(fallback_at),
            text: decode_line(&bytes),
        }
    }
}

/// Decodes a line as a terminal would show it. A trailing `\r` is the rest
/// of a CRLF; an earlier `\r` returns to the line's start, so what came
/// before it was overwritten (progress bars) and is dropped. Invalid UTF-8
/// becomes U+FFFD.
fn decode_line(bytes: &[u8]) -> String {
    let mut bytes = bytes;
    while let Some(rest) = bytes.strip_suffix(b"\r") {
        bytes = rest;
    }
    let shown = match bytes.iter().rposition(|&b| b == b'\r') {
        Some(i) => &bytes[i + 1..],
        None => bytes,
    };
    String::from_utf8_lossy(shown).into_owned()
}

/// The last `cap` items pushed.
#[derive(Debug)]
pub(super) struct Tail<T> {
    cap: usize,
    items: VecDeque<T>,
}

impl<T> Tail<T> {
    pub fn new(cap: usize) -> Tail<T> {
        Tail {
            cap,
            items: VecDeque::with_capacity(cap),
        }
    }

    pub fn push(&mut self, item: T) {
        if self.items.len() == self.cap {
            self.items.pop_front();
        }
        if self.cap > 0 {
            self.items.push_back(item);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn texts(lines: Vec<Line>) -> Vec<String> {
        lines.into_iter().map(|l| l.text).collect()
    }

    #[test]
    fn joins_lines_split_across_chunks() {
        let mut buf = LineBuffer::default();
        assert!(buf.push(b"comp", at(1)).is_empty());
        assert!(buf.push(b"il", at(2)).is_empty());
        let lines = buf.push(b"ing\nlink", at(3));
        assert_eq!(
            lines,
            [Line {
                at: at(1),
                text: "compiling".into()
            }]
        );
        assert_eq!(texts(buf.push(b"ing\n\n", at(4))), ["linking", ""]);
        assert_eq!(buf.flush(), None);
    }

    #[test]
    fn handles_crlf_and_carriage_return_overwrites() {
        let mut buf = LineBuffer::default();
        let lines = buf.push(b"a\r\nb\r", at(0));
        assert_eq!(texts(lines), ["a"]);
        assert_eq!(
            texts(buf.push(b"\n10%\r50%\r100%\r\n", at(0))),
            ["b", "100%"]
        );
    }

    #[test]
    fn utf8_split_across_chunks_survives_and_invalid_bytes_do_not_panic() {
        let mut buf = LineBuffer::default();
        let snow = "☃".as_bytes();
        assert!(buf.push(&snow[..1], at(0)).is_empty());
        assert_eq!(texts(buf.push(&snow[1..], at(0))), Vec::<String>::new());
        assert_eq!(
            texts(buf.push(b"\n\xff\xfe\n", at(0))),
            ["☃", "\u{fffd}\u{fffd}"]
        );
    }

    #[test]
    fn flush_returns_the_unfinished_line_once() {
        let mut buf = LineBuffer::default();
        buf.push(b"no newline", at(5));
        assert_eq!(
            buf.flush(),
            Some(Line {
                at: at(5),
                text: "no newline".into()
            })
        );
        assert_eq!(buf.flush(), None);
    }

    #[test]
    fn very_long_lines_are_cut() {
        let mut buf = LineBuffer::default();
        let chunk = vec![b'x'; MAX_LINE / 2];
        assert!(buf.push(&chunk, at(0)).is_empty());
        let lines = buf.push(&chunk, at(0));
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].text.len(), MAX_LINE);
    }

    #[test]
    fn tail_keeps_the_newest() {
        let mut tail = Tail::new(2);
        for i in 0..5 {
            tail.push(i);
        }
        assert_eq!(tail.iter().copied().collect::<Vec<_>>(), [3, 4]);
        let mut none = Tail::new(0);
        none.push(1);
        assert_eq!(none.iter().count(), 0);
    }
}
