//! `--progress=quiet`: nothing while the build runs. Each vertex's last
//! output is held, so that when the build fails a CI log still shows why:
//! the failed step's last lines, or the build's last lines when no step
//! failed (an export error, say).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;
use std::time::SystemTime;

use rbuild_solver::progress::{Event, VertexId};

use super::lines::{Line, LineBuffer, Tail};
use super::{Renderer, emit};

/// Lines held per vertex, and overall.
const HELD_LINES: usize = 20;

pub(super) struct Quiet {
    out: Box<dyn Write + Send>,
    vertices: HashMap<VertexId, QuietVertex>,
    /// The build's last lines, whichever vertex wrote them, as `#N text`.
    recent: Tail<String>,
    /// Failed vertices, in the order they failed.
    failed: Vec<VertexId>,
}

struct QuietVertex {
    name: Option<String>,
    lines: LineBuffer,
    held: Tail<String>,
}

impl Default for QuietVertex {
    fn default() -> QuietVertex {
        QuietVertex {
            name: None,
            lines: LineBuffer::default(),
            held: Tail::new(HELD_LINES),
        }
    }
}

impl Quiet {
    pub fn new(out: Box<dyn Write + Send>) -> Quiet {
        Quiet {
            out,
            vertices: HashMap::new(),
            recent: Tail::new(HELD_LINES),
            failed: Vec::new(),
        }
    }

    fn log(&mut self, id: VertexId, data: &[u8], at: SystemTime) {
        let lines = self.vertices.entry(id).or_default().lines.push(data, at);
        self.hold(id, lines);
    }

    /// Holds the vertex's unfinished last line too, as it ended.
    fn end(&mut self, id: VertexId) {
        let rest = self.vertices.entry(id).or_default().lines.flush();
        self.hold(id, rest.into_iter().collect());
    }

    fn hold(&mut self, id: VertexId, lines: Vec<Line>) {
        let v = self.vertices.entry(id).or_default();
        for line in lines {
            let text = format!("#{id} {}", line.text);
            v.held.push(text.clone());
            self.recent.push(text);
        }
    }

    /// What to print for a failed build.
    fn report(&self) -> String {
        let mut text = String::new();
        if self.failed.is_empty() {
            for line in self.recent.iter() {
                let _ = writeln!(text, "{line}");
            }
            return text;
        }
        for id in &self.failed {
            let Some(v) = self.vertices.get(id) else {
                continue;
            };
            match &v.name {
                Some(name) => {
                    let _ = writeln!(text, "#{id} {name}");
                }
                None => {
                    let _ = writeln!(text, "#{id}");
                }
            }
            for line in v.held.iter() {
                let _ = writeln!(text, "{line}");
            }
        }
        text
    }
}

impl Renderer for Quiet {
    fn event(&mut self, event: Event) {
        match event {
            Event::Started { vertex, .. } | Event::Cached { vertex } => {
                self.vertices.entry(vertex.id).or_default().name = Some(vertex.name);
            }
            Event::Log {
                vertex, data, at, ..
            } => self.log(vertex, &data, at),
            Event::Done { vertex, .. } => self.end(vertex),
            Event::Failed { vertex, .. } => {
                self.end(vertex);
                if !self.failed.contains(&vertex) {
                    self.failed.push(vertex);
                }
            }
            Event::Miss { .. } => {}
        }
    }

    fn message(&mut self, _text: &str) {}

    fn finish(&mut self, failed: bool) {
        if !failed {
            return;
        }
        let mut ids: Vec<VertexId> = self.vertices.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.end(id);
        }
        let text = self.report();
        emit(&mut *self.out, &text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::testing::*;

    fn run(events: Vec<Event>, failed: bool) -> String {
        let capture = Capture::default();
        let mut quiet = Quiet::new(capture.writer());
        for event in events {
            quiet.event(event);
            assert_eq!(capture.text(), "", "quiet prints nothing while building");
        }
        quiet.message("naming to docker.io/library/app:v1 done");
        quiet.finish(failed);
        capture.text()
    }

    fn build_with_failure() -> Vec<Event> {
        let mut events = vec![
            cached(1, "[build 1/3] FROM base"),
            started(2, "[build 2/3] RUN ok"),
            log(2, 0, b"fine\n"),
            done(2, 10),
            started(3, "[build 3/3] RUN make"),
        ];
        for i in 0..25 {
            events.push(log(3, i, format!("line {i}\r\n").as_bytes()));
        }
        events.push(log(3, 30, b"Error 1"));
        events.push(failed(3, 40, "exit code 2"));
        events
    }

    #[test]
    fn success_prints_nothing() {
        assert_eq!(run(build_with_failure(), false), "");
    }

    #[test]
    fn failure_prints_the_failed_vertex_last_twenty_lines() {
        let out = run(build_with_failure(), true);
        let mut want = String::from("#3 [build 3/3] RUN make\n");
        for i in 6..25 {
            want.push_str(&format!("#3 line {i}\n"));
        }
        want.push_str("#3 Error 1\n");
        assert_eq!(out, want);
    }

    #[test]
    fn failure_without_a_failed_vertex_prints_the_last_lines_overall() {
        let mut events = vec![started(1, "[a 1/1] RUN x"), started(2, "[b 1/1] RUN y")];
        for i in 0..15 {
            events.push(log(1, i, format!("a{i}\n").as_bytes()));
            events.push(log(2, i, format!("b{i}\n").as_bytes()));
        }
        events.push(done(1, 0));
        events.push(done(2, 0));
        let out = run(events, true);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), HELD_LINES);
        assert_eq!(lines.first(), Some(&"#1 a5"));
        assert_eq!(lines.last(), Some(&"#2 b14"));
    }
}
