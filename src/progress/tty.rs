//! `--progress=tty`: BuildKit's live view, redrawn in place.
//!
//! Each redraw moves the cursor back to the top of the previous frame and
//! writes the new one over it, erasing every row first and whatever is
//! left below last. Frames never grow taller than the screen (see
//! [`Board::frame`]), or the cursor could not get back to their top.

use std::io::Write;
use std::time::{Duration, Instant};

use rbuild_solver::progress::Event;

use super::board::{Board, Frame, Row, Style};
use super::{Renderer, emit};

pub(super) use super::board::Size;

const HIDE_CURSOR: &str = "\x1b[?25l";
const SHOW_CURSOR: &str = "\x1b[?25h";
const ERASE_ROW: &str = "\x1b[2K";
const ERASE_BELOW: &str = "\x1b[J";

pub(super) struct Tty {
    out: Box<dyn Write + Send>,
    board: Board,
    start: Instant,
    /// Asked on every redraw, so a resized terminal is followed.
    size: Box<dyn Fn() -> Size + Send>,
    color: bool,
    /// Rows of the frame on screen, which the next redraw overwrites.
    drawn: usize,
}

impl Tty {
    pub fn new(
        out: Box<dyn Write + Send>,
        explain_cache: bool,
        size: Box<dyn Fn() -> Size + Send>,
        color: bool,
    ) -> Tty {
        Tty {
            out,
            board: Board::new(explain_cache),
            start: Instant::now(),
            size,
            color,
            drawn: 0,
        }
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Replaces the frame on screen with a new one.
    fn draw(&mut self, frame: Frame) {
        let rows = self.board.frame(self.now(), (self.size)(), frame);
        let mut text = String::from(HIDE_CURSOR);
        text.push_str(&self.back_to_top());
        for row in &rows {
            // Erasing before writing: a row as wide as the screen leaves the
            // cursor on its last cell, where erasing after would eat it.
            text.push_str(ERASE_ROW);
            text.push_str(&paint(row, self.color));
            text.push('\n');
        }
        text.push_str(ERASE_BELOW);
        text.push_str(SHOW_CURSOR);
        self.drawn = rows.len();
        emit(&mut *self.out, &text);
    }

    /// Moves the cursor to the first column of the frame on screen.
    fn back_to_top(&self) -> String {
        match self.drawn {
            0 => String::new(),
            n => format!("\x1b[{n}A\r"),
        }
    }
}

impl Renderer for Tty {
    fn event(&mut self, event: Event) {
        // Drawn on the next tick: events come far more often than redraws.
        let now = self.now();
        self.board.apply(event, now);
    }

    /// Prints the message where the frame was and draws the frame again
    /// below it, so messages pile up above the live view.
    fn message(&mut self, message: &str) {
        let mut text = self.back_to_top();
        text.push_str(ERASE_BELOW);
        text.push_str(message);
        text.push('\n');
        self.drawn = 0;
        emit(&mut *self.out, &text);
        self.draw(Frame::Live);
    }

    fn tick(&mut self) {
        self.draw(Frame::Live);
    }

    fn finish(&mut self, failed: bool) {
        self.draw(Frame::Final { failed });
    }
}

/// The row with its colour, BuildKit's: finished blue, errors red, logs dim.
fn paint(row: &Row, color: bool) -> String {
    let code = match row.style {
        _ if !color => return row.text.clone(),
        Style::Normal => return row.text.clone(),
        Style::Finished => "34",
        Style::Error => "31",
        Style::Log => "2",
    };
    format!("\x1b[{code}m{}\x1b[0m", row.text)
}

/// Colours unless `NO_COLOR` is set (<https://no-color.org>).
pub(super) fn color_wanted() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Standard error's terminal size; 80 columns and 24 rows when it cannot
/// be read.
pub(super) fn terminal_size() -> Size {
    let size = rustix::termios::tcgetwinsize(std::io::stderr()).ok();
    let cells = |n: Option<u16>, default: usize| match n {
        Some(n) if n > 0 => usize::from(n),
        _ => default,
    };
    Size {
        width: cells(size.map(|s| s.ws_col), 80),
        height: cells(size.map(|s| s.ws_row), 24),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::testing::*;

    fn tty(capture: &Capture, color: bool) -> Tty {
        let size = || Size {
            width: 40,
            height: 10,
        };
        Tty::new(capture.writer(), false, Box::new(size), color)
    }

    #[test]
    fn redraws_overwrite_the_previous_frame() {
        let capture = Capture::default();
        let mut t = tty(&capture, false);
        t.event(started(1, "[a 1/1] RUN x"));
        t.tick();
        let first = capture.text();
        assert!(first.starts_with(HIDE_CURSOR));
        assert!(!first.contains("\x1b[2A"), "nothing to move over yet");
        assert!(first.contains(&format!("{ERASE_ROW} => [a 1/1] RUN x")));
        t.tick();
        let second = &capture.text()[first.len()..];
        assert!(
            second.starts_with(&format!("{HIDE_CURSOR}\x1b[2A\r")),
            "{second:?}"
        );
        assert!(second.ends_with(&format!("\n{ERASE_BELOW}{SHOW_CURSOR}")));
    }

    #[test]
    fn messages_go_above_the_view() {
        let capture = Capture::default();
        let mut t = tty(&capture, false);
        t.event(cached(1, "[a 1/1] RUN x"));
        t.tick();
        let before = capture.text().len();
        t.message("naming to docker.io/library/app:v1 done");
        let after = &capture.text()[before..];
        assert!(after.starts_with(&format!(
            "\x1b[2A\r{ERASE_BELOW}naming to docker.io/library/app:v1 done\n{HIDE_CURSOR}{ERASE_ROW}[+] Building"
        )), "{after:?}");
    }

    #[test]
    fn final_frame_and_colours() {
        let capture = Capture::default();
        let mut t = tty(&capture, true);
        t.event(started(1, "[a 1/1] RUN x"));
        t.event(log(1, 0, b"oops\n"));
        t.event(failed(1, 100, "exit 1"));
        t.finish(true);
        let out = capture.text();
        assert!(out.contains("\x1b[31m => ERROR [a 1/1] RUN x"), "{out:?}");
        assert!(out.contains("\x1b[2m => => # oops\x1b[0m"), "{out:?}");
        assert!(!out.contains("FINISHED"));
    }
}
