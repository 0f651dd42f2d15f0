//! What the TTY view knows about the build, and the frame drawn from it.
//!
//! ```text
//! [+] Building 3.4s (5/8)
//!  => CACHED [build 1/4] FROM docker.io/library/alpine        0.0s
//!  => [build 2/4] COPY src/ /src                              0.1s
//!  => [build 3/4] RUN make                                    1.2s
//!  => => # compiling main.c
//! ```
//!
//! Drawing is a pure function of the [`Board`], the time and the terminal's
//! size, so it can be tested without a terminal; [`super::tty`] puts the
//! frames on screen.

use std::collections::HashMap;
use std::time::Duration;

use rbuild_solver::progress::{Event, Vertex, VertexId};

use super::lines::{LineBuffer, Tail};

/// Log lines shown under a running (or failed) vertex.
pub(super) const LOG_LINES: usize = 6;

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Size {
    pub width: usize,
    pub height: usize,
}

/// Which frame to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Frame {
    /// While building: only what fits the screen, logs of running vertices.
    Live,
    /// The last one, left in the scrollback: every vertex, no logs except
    /// a failed vertex's.
    Final { failed: bool },
}

/// How a row is coloured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Style {
    Normal,
    Finished,
    Error,
    Log,
}

/// One line of a frame, uncoloured, at most the terminal's width.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Row {
    pub text: String,
    pub style: Style,
}

/// The vertices seen so far, in the order they were announced.
pub(super) struct Board {
    explain_cache: bool,
    order: Vec<VertexId>,
    vertices: HashMap<VertexId, Entry>,
}

struct Entry {
    /// `None` until the vertex is announced (its events may come first).
    name: Option<String>,
    state: State,
    miss: Option<String>,
    lines: LineBuffer,
    /// The last output lines, already made printable.
    tail: Tail<String>,
}

impl Default for Entry {
    fn default() -> Entry {
        Entry {
            name: None,
            state: State::Waiting,
            miss: None,
            lines: LineBuffer::default(),
            tail: Tail::new(LOG_LINES),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    /// Started `since` into the build.
    Running {
        since: Duration,
    },
    Cached,
    Done(Duration),
    Failed(Duration),
}

impl State {
    fn is_finished(self) -> bool {
        matches!(self, State::Cached | State::Done(_) | State::Failed(_))
    }
}

/// A vertex's rows: its own line, then its log lines.
struct Block {
    running: bool,
    rows: Vec<Row>,
}

impl Block {
    /// Keeps the vertex's line and its newest log lines, `n` rows in all.
    fn shrink(mut self, n: usize) -> Block {
        if n < self.rows.len() {
            let drop = self.rows.len() - n;
            self.rows.drain(1..=drop);
        }
        self
    }
}

impl Board {
    pub fn new(explain_cache: bool) -> Board {
        Board {
            explain_cache,
            order: Vec::new(),
            vertices: HashMap::new(),
        }
    }

    /// Records an event that arrived `now` into the build.
    pub fn apply(&mut self, event: Event, now: Duration) {
        match event {
            Event::Started { vertex, .. } => {
                let entry = self.announce(vertex);
                if entry.state == State::Waiting {
                    entry.state = State::Running { since: now };
                }
            }
            Event::Cached { vertex } => self.announce(vertex).state = State::Cached,
            Event::Miss { vertex, reason } => {
                self.entry(vertex).miss = Some(printable(&reason.to_string()));
            }
            Event::Log {
                vertex, data, at, ..
            } => {
                let entry = self.entry(vertex);
                for line in entry.lines.push(&data, at) {
                    entry.tail.push(printable(&line.text));
                }
            }
            Event::Done { vertex, elapsed } => self.end(vertex, State::Done(elapsed)),
            Event::Failed {
                vertex, elapsed, ..
            } => self.end(vertex, State::Failed(elapsed)),
        }
    }

    fn entry(&mut self, id: VertexId) -> &mut Entry {
        self.vertices.entry(id).or_default()
    }

    fn announce(&mut self, vertex: Vertex) -> &mut Entry {
        let entry = self.vertices.entry(vertex.id).or_default();
        if entry.name.is_none() {
            entry.name = Some(printable(&vertex.name));
            self.order.push(vertex.id);
        }
        entry
    }

    fn end(&mut self, id: VertexId, state: State) {
        let entry = self.entry(id);
        if let Some(line) = entry.lines.flush() {
            entry.tail.push(printable(&line.text));
        }
        entry.state = state;
    }

    /// The frame to show `now` into the build on a terminal of `size`.
    pub fn frame(&self, now: Duration, size: Size, frame: Frame) -> Vec<Row> {
        let header = Row {
            text: truncate(&self.header(now, frame), size.width),
            style: Style::Normal,
        };
        let blocks: Vec<Block> = self
            .order
            .iter()
            .filter_map(|id| self.vertices.get(id))
            .map(|entry| self.block(entry, now, size.width, frame))
            .collect();
        let blocks = match frame {
            // One row for the header, one for the cursor below the frame:
            // a frame taller than the screen cannot be redrawn in place.
            Frame::Live => fit_height(blocks, size.height.saturating_sub(2)),
            Frame::Final { .. } => blocks,
        };
        std::iter::once(header)
            .chain(blocks.into_iter().flat_map(|b| b.rows))
            .collect()
    }

    /// `[+] Building 3.4s (5/8)`, with ` FINISHED` at the end of a build
    /// that succeeded.
    fn header(&self, now: Duration, frame: Frame) -> String {
        let finished = self
            .order
            .iter()
            .filter_map(|id| self.vertices.get(id))
            .filter(|entry| entry.state.is_finished())
            .count();
        let mut text = format!(
            "[+] Building {:.1}s ({finished}/{})",
            now.as_secs_f64(),
            self.order.len()
        );
        if frame == (Frame::Final { failed: false }) {
            text.push_str(" FINISHED");
        }
        text
    }

    fn block(&self, entry: &Entry, now: Duration, width: usize, frame: Frame) -> Block {
        let running = matches!(entry.state, State::Running { .. });
        let mut rows = vec![self.vertex_row(entry, now, width)];
        // Finished vertices collapse to their line; a failure keeps its
        // last lines, which say why.
        let show_logs = match entry.state {
            State::Failed(_) => true,
            _ => running && frame == Frame::Live,
        };
        if show_logs {
            rows.extend(entry.tail.iter().map(|line| Row {
                text: truncate(&format!(" => => # {line}"), width),
                style: Style::Log,
            }));
        }
        Block { running, rows }
    }

    /// ` => [build 3/4] RUN make        1.2s`, the timer at the right edge.
    fn vertex_row(&self, entry: &Entry, now: Duration, width: usize) -> Row {
        let (tag, time, style) = match entry.state {
            State::Waiting => ("", Duration::ZERO, Style::Normal),
            State::Running { since } => ("", now.saturating_sub(since), Style::Normal),
            State::Cached => ("CACHED ", Duration::ZERO, Style::Finished),
            State::Done(elapsed) => ("", elapsed, Style::Finished),
            State::Failed(elapsed) => ("ERROR ", elapsed, Style::Error),
        };
        let name = entry.name.as_deref().unwrap_or_default();
        let mut left = format!(" => {tag}{name}");
        if let Some(miss) = entry.miss.as_ref().filter(|_| self.explain_cache) {
            left.push_str(&format!(" (miss: {miss})"));
        }
        let timer = format!("{:.1}s", time.as_secs_f64());
        Row {
            text: align(&left, &timer, width),
            style,
        }
    }
}

/// Picks what fits in `budget` rows when not everything does. The newest
/// vertices win, except that running vertices stay in view before any
/// finished one (as in BuildKit), giving up their oldest log lines first.
fn fit_height(blocks: Vec<Block>, budget: usize) -> Vec<Block> {
    let total: usize = blocks.iter().map(|b| b.rows.len()).sum();
    if total <= budget {
        return blocks;
    }
    let mut keep = vec![0; blocks.len()];
    let mut room = budget;
    for running_first in [true, false] {
        for (i, block) in blocks.iter().enumerate().rev() {
            if block.running == running_first {
                keep[i] = block.rows.len().min(room);
                room -= keep[i];
            }
        }
    }
    blocks
        .into_iter()
        .zip(keep)
        .filter(|&(_, n)| n > 0)
        .map(|(block, n)| block.shrink(n))
        .collect()
}

/// `left` and `right` on one row of exactly `width` columns, `left` cut
/// short when both do not fit. Too narrow for the timer, only `left` shows.
fn align(left: &str, right: &str, width: usize) -> String {
    let right_len = right.chars().count();
    let Some(room) = width.checked_sub(right_len + 1).filter(|&room| room > 0) else {
        return truncate(left, width);
    };
    let left = truncate(left, room);
    let pad = room - left.chars().count();
    format!("{left}{:pad$} {right}", "")
}

/// The first `width` characters of `text`.
fn truncate(text: &str, width: usize) -> String {
    text.chars().take(width).collect()
}

/// `text` without anything that would move the cursor or change colours,
/// so each row takes one column per character: escape sequences (colours
/// from the step's tools) are dropped, tabs and other control characters
/// become spaces.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => skip_escape(&mut chars),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Skips the rest of an escape sequence after its `ESC`: a CSI
/// (`[`, parameters, a final byte), an OSC (`]` up to BEL or `ESC \`), or
/// a single character.
fn skip_escape(chars: &mut std::str::Chars<'_>) {
    match chars.next() {
        Some('[') => {
            for c in chars.by_ref() {
                if ('\u{40}'..='\u{7e}').contains(&c) {
                    break;
                }
            }
        }
        Some(']') => {
            while let Some(c) = chars.next() {
                if c == '\u{7}' {
                    break;
                }
                if c == '\u{1b}' {
                    chars.next();
                    break;
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::testing::*;
    use rbuild_solver::progress::MissReason;

    const SIZE: Size = Size {
        width: 50,
        height: 30,
    };

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn board(explain: bool, events: Vec<(f64, Event)>) -> Board {
        let mut board = Board::new(explain);
        for (at, event) in events {
            board.apply(event, secs(at));
        }
        board
    }

    fn texts(rows: &[Row]) -> Vec<&str> {
        rows.iter().map(|r| r.text.as_str()).collect()
    }

    #[test]
    fn live_frame_shows_timers_and_logs_of_running_vertices() {
        let b = board(
            false,
            vec![
                (0.0, cached(1, "[build 1/3] FROM alpine")),
                (0.1, started(2, "[build 2/3] COPY . /src")),
                (0.2, done(2, 100)),
                (0.3, started(3, "[build 3/3] RUN make")),
                (0.4, log(3, 0, b"cc -c a.c\r\ncc -c b")),
                (0.5, log(3, 0, b".c\n")),
            ],
        );
        let rows = b.frame(secs(1.5), SIZE, Frame::Live);
        assert_eq!(
            texts(&rows),
            [
                "[+] Building 1.5s (2/3)",
                " => CACHED [build 1/3] FROM alpine            0.0s",
                " => [build 2/3] COPY . /src                   0.1s",
                " => [build 3/3] RUN make                      1.2s",
                " => => # cc -c a.c",
                " => => # cc -c b.c",
            ]
        );
        assert!(rows.iter().all(|r| r.text.chars().count() <= SIZE.width));
        assert_eq!(rows[1].style, Style::Finished);
        assert_eq!(rows[3].style, Style::Normal);
        assert_eq!(rows[4].style, Style::Log);
    }

    #[test]
    fn only_the_last_six_log_lines_show_and_they_collapse_when_done() {
        let mut b = board(false, vec![(0.0, started(1, "[a 1/1] RUN x"))]);
        for i in 0..10 {
            b.apply(log(1, 0, format!("line {i}\n").as_bytes()), secs(0.1));
        }
        let live = b.frame(secs(1.0), SIZE, Frame::Live);
        assert_eq!(live.len(), 1 + 1 + LOG_LINES);
        assert_eq!(live[2].text, " => => # line 4");
        assert_eq!(live[7].text, " => => # line 9");

        b.apply(done(1, 1000), secs(1.0));
        let after = b.frame(secs(1.1), SIZE, Frame::Live);
        assert_eq!(
            texts(&after),
            [
                "[+] Building 1.1s (1/1)",
                " => [a 1/1] RUN x                             1.0s"
            ]
        );
    }

    #[test]
    fn long_names_are_cut_to_keep_the_timer() {
        let b = board(
            false,
            vec![(
                0.0,
                started(
                    1,
                    "[build 2/2] RUN apt-get update && apt-get install -y build-essential",
                ),
            )],
        );
        let rows = b.frame(secs(12.34), SIZE, Frame::Live);
        assert_eq!(
            rows[1].text,
            " => [build 2/2] RUN apt-get update && apt-ge 12.3s"
        );
        assert_eq!(rows[1].text.chars().count(), SIZE.width);
        // Too narrow for a timer: the name alone, cut.
        let tiny = b.frame(
            secs(1.0),
            Size {
                width: 5,
                height: 10,
            },
            Frame::Live,
        );
        assert_eq!(texts(&tiny), ["[+] B", " => ["]);
    }

    #[test]
    fn failed_vertex_keeps_its_logs_in_the_final_frame() {
        let b = board(
            false,
            vec![
                (0.0, started(1, "[a 1/2] RUN ok")),
                (0.0, log(1, 0, b"fine\n")),
                (0.5, done(1, 500)),
                (0.5, started(2, "[a 2/2] RUN make")),
                (0.6, log(2, 0, b"\x1b[31mError\x1b[0m\tbad")),
                (0.9, failed(2, 400, "exit 2")),
                (0.9, started(3, "[b 1/1] RUN still")),
                (0.9, log(3, 0, b"running\n")),
            ],
        );
        let rows = b.frame(secs(1.0), SIZE, Frame::Final { failed: true });
        assert_eq!(
            texts(&rows),
            [
                "[+] Building 1.0s (2/3)",
                " => [a 1/2] RUN ok                            0.5s",
                " => ERROR [a 2/2] RUN make                    0.4s",
                " => => # Error bad",
                " => [b 1/1] RUN still                         0.1s",
            ]
        );
        assert_eq!(rows[2].style, Style::Error);
        let ok = board(false, vec![(0.0, cached(1, "[a 1/1] RUN x"))]);
        let rows = ok.frame(secs(0.2), SIZE, Frame::Final { failed: false });
        assert_eq!(rows[0].text, "[+] Building 0.2s (1/1) FINISHED");
    }

    #[test]
    fn old_vertices_scroll_off_but_running_ones_stay() {
        let mut events = vec![(0.0, started(1, "[a 1/9] RUN long"))];
        events.push((0.0, log(1, 0, b"l1\nl2\nl3\n")));
        for id in 2..=9 {
            events.push((0.0, started(id, &format!("[a {id}/9] RUN s{id}"))));
            events.push((0.0, done(id, 0)));
        }
        let b = board(false, events);
        let size = Size {
            width: 50,
            height: 7,
        };
        let rows = b.frame(secs(2.0), size, Frame::Live);
        assert_eq!(rows.len(), size.height - 1);
        assert_eq!(
            texts(&rows),
            [
                "[+] Building 2.0s (8/9)",
                " => [a 1/9] RUN long                          2.0s",
                " => => # l1",
                " => => # l2",
                " => => # l3",
                " => [a 9/9] RUN s9                            0.0s",
            ]
        );
        let tighter = b.frame(
            secs(2.0),
            Size {
                width: 50,
                height: 5,
            },
            Frame::Live,
        );
        assert_eq!(
            texts(&tighter)[1..],
            [
                " => [a 1/9] RUN long                          2.0s",
                " => => # l2",
                " => => # l3",
            ]
        );
        // The final frame lists everything, for the scrollback.
        let last = b.frame(secs(2.0), size, Frame::Final { failed: false });
        assert_eq!(last.len(), 1 + 9);
    }

    #[test]
    fn explain_cache_appends_the_miss_reason() {
        let events = || {
            vec![
                (
                    0.0,
                    Event::Miss {
                        vertex: 1,
                        reason: MissReason::Parent,
                    },
                ),
                (0.0, started(1, "[a 1/1] RUN x")),
            ]
        };
        let wide = Size {
            width: 80,
            height: 10,
        };
        let on = board(true, events()).frame(secs(0.0), wide, Frame::Live);
        assert!(
            on[1]
                .text
                .starts_with(" => [a 1/1] RUN x (miss: the previous step changed) "),
            "{:?}",
            on[1].text
        );
        let off = board(false, events()).frame(secs(0.0), wide, Frame::Live);
        assert!(!off[1].text.contains("miss"));
    }

    #[test]
    fn unknown_vertices_are_not_shown() {
        let b = board(false, vec![(0.0, log(5, 0, b"x\n")), (0.0, done(6, 0))]);
        assert_eq!(
            texts(&b.frame(secs(0.0), SIZE, Frame::Live)),
            ["[+] Building 0.0s (0/0)"]
        );
    }

    #[test]
    fn printable_strips_escapes_and_controls() {
        assert_eq!(printable("\x1b[1;31mred\x1b[0m\tx\x07"), "red x ");
        assert_eq!(printable("\x1b]0;title\x07ok\x1b]8;;u\x1b\\ln"), "okln");
        assert_eq!(printable("trailing \x1b"), "trailing ");
    }
}
