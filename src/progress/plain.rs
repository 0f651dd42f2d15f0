//! `--progress=plain`: BuildKit's line-by-line display, for CI logs.
//!
//! ```text
//! #6 [build 3/4] RUN make
//! #6 0.215 compiling...
//! #6 DONE 1.3s
//!
//! #7 [build 4/4] RUN strip app
//! #7 CACHED
//! ```
//!
//! Every line starts with its vertex's `#N`, and output comes in blocks
//! separated by a blank line, each opened by the vertex's `#N name`
//! header. When parallel stages interleave, each switch opens a new block
//! (the header repeated), and a block left while its vertex still runs
//! ends with `#N ...`, as BuildKit prints it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;
use std::time::{Duration, SystemTime};

use rbuild_solver::progress::{Event, MissReason, Vertex, VertexId};

use super::lines::{Line, LineBuffer};
use super::{Renderer, emit};

pub(super) struct Plain {
    out: Box<dyn Write + Send>,
    explain_cache: bool,
    vertices: HashMap<VertexId, PlainVertex>,
    /// The vertex whose block was printed last.
    current: Option<VertexId>,
    /// Whether anything was printed: blocks after the first start with a
    /// blank line.
    printed: bool,
}

#[derive(Default)]
struct PlainVertex {
    /// Empty until the vertex is announced.
    name: String,
    announced: bool,
    started: Option<SystemTime>,
    lines: LineBuffer,
    /// A cache miss reported before the vertex was announced, printed
    /// under its header once it is.
    pending_miss: Option<MissReason>,
    ended: bool,
}

impl Plain {
    pub fn new(out: Box<dyn Write + Send>, explain_cache: bool) -> Plain {
        Plain {
            out,
            explain_cache,
            vertices: HashMap::new(),
            current: None,
            printed: false,
        }
    }

    fn write(&mut self, text: &str) {
        if !text.is_empty() {
            self.printed = true;
            emit(&mut *self.out, text);
        }
    }

    /// Renders one event as text.
    fn render(&mut self, event: Event, text: &mut String) {
        match event {
            Event::Started { vertex, at } => self.started(vertex, at, text),
            Event::Cached { vertex } => self.cached(vertex, text),
            Event::Miss { vertex, reason } => self.miss(vertex, reason, text),
            Event::Log {
                vertex, data, at, ..
            } => self.log(vertex, &data, at, text),
            Event::Done { vertex, elapsed } => {
                self.end(vertex, &format!("DONE {}", seconds(elapsed)), text)
            }
            Event::Failed {
                vertex, message, ..
            } => self.end(vertex, &format!("ERROR: {message}"), text),
        }
    }

    fn started(&mut self, vertex: Vertex, at: SystemTime, text: &mut String) {
        let id = vertex.id;
        let v = self.announce(vertex);
        v.started.get_or_insert(at);
        let miss = v.pending_miss.take();
        self.enter(id, text);
        if let Some(reason) = miss {
            line(text, id, &format!("CACHE MISS: {reason}"));
        }
    }

    fn cached(&mut self, vertex: Vertex, text: &mut String) {
        let id = vertex.id;
        self.announce(vertex);
        self.end(id, "CACHED", text);
    }

    fn miss(&mut self, id: VertexId, reason: MissReason, text: &mut String) {
        if !self.explain_cache {
            return;
        }
        let v = self.vertices.entry(id).or_default();
        if !v.announced {
            // Nothing to print it under yet.
            v.pending_miss = Some(reason);
            return;
        }
        self.enter(id, text);
        line(text, id, &format!("CACHE MISS: {reason}"));
    }

    fn log(&mut self, id: VertexId, data: &[u8], at: SystemTime, text: &mut String) {
        let lines = self.vertices.entry(id).or_default().lines.push(data, at);
        self.print_lines(id, lines, text);
    }

    /// Ends a vertex's block with `status` (`DONE 1.3s`, `CACHED`, `ERROR: ..`),
    /// after the rest of its output.
    fn end(&mut self, id: VertexId, status: &str, text: &mut String) {
        let v = self.vertices.entry(id).or_default();
        v.ended = true;
        let rest: Vec<Line> = v.lines.flush().into_iter().collect();
        self.print_lines(id, rest, text);
        self.enter(id, text);
        line(text, id, status);
    }

    /// Records a vertex's name, returning its state.
    fn announce(&mut self, vertex: Vertex) -> &mut PlainVertex {
        let v = self.vertices.entry(vertex.id).or_default();
        if !v.announced {
            v.announced = true;
            v.name = vertex.name;
        }
        v
    }

    /// Prints output lines as `#N 0.215 text`, timed from the vertex's start.
    fn print_lines(&mut self, id: VertexId, lines: Vec<Line>, text: &mut String) {
        if lines.is_empty() {
            return;
        }
        self.enter(id, text);
        let started = self.vertices.get(&id).and_then(|v| v.started);
        for l in lines {
            let offset = started
                .and_then(|s| l.at.duration_since(s).ok())
                .unwrap_or_default();
            let _ = writeln!(text, "#{id} {:.3} {}", offset.as_secs_f64(), l.text);
        }
    }

    /// Makes `id` the vertex being printed, opening its block if another
    /// vertex's (or nothing) was printed last.
    fn enter(&mut self, id: VertexId, text: &mut String) {
        if self.current == Some(id) {
            return;
        }
        self.leave(text);
        if self.printed {
            text.push('\n');
        }
        match self.vertices.get(&id).map(|v| v.name.as_str()) {
            Some(name) if !name.is_empty() => line(text, id, name),
            _ => {
                let _ = writeln!(text, "#{id}");
            }
        }
        self.current = Some(id);
    }

    /// Closes the current block; `#N ...` tells the reader that vertex is
    /// not finished and continues further down.
    fn leave(&mut self, text: &mut String) {
        let Some(old) = self.current.take() else {
            return;
        };
        if self.vertices.get(&old).is_some_and(|v| !v.ended) {
            line(text, old, "...");
        }
    }
}

impl Renderer for Plain {
    fn event(&mut self, event: Event) {
        let mut text = String::new();
        self.render(event, &mut text);
        self.write(&text);
    }

    fn message(&mut self, message: &str) {
        let mut text = String::new();
        self.leave(&mut text);
        if self.printed {
            text.push('\n');
        }
        text.push_str(message);
        text.push('\n');
        self.write(&text);
    }

    /// Prints what vertices still running left without a final newline.
    fn finish(&mut self, _failed: bool) {
        let mut ids: Vec<VertexId> = self.vertices.keys().copied().collect();
        ids.sort_unstable();
        let mut text = String::new();
        for id in ids {
            let rest: Vec<Line> = self
                .vertices
                .get_mut(&id)
                .and_then(|v| v.lines.flush())
                .into_iter()
                .collect();
            self.print_lines(id, rest, &mut text);
        }
        self.write(&text);
    }
}

/// Appends `#N text`.
fn line(text: &mut String, id: VertexId, body: &str) {
    let _ = writeln!(text, "#{id} {body}");
}

/// BuildKit's duration form: `1.3s`.
fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::testing::*;

    fn render(explain: bool, events: Vec<Event>) -> String {
        let capture = Capture::default();
        let mut plain = Plain::new(capture.writer(), explain);
        for event in events {
            plain.event(event);
        }
        plain.finish(false);
        capture.text()
    }

    #[test]
    fn cached_vertex() {
        let out = render(false, vec![cached(7, "[build 4/4] RUN strip app")]);
        assert_eq!(out, "#7 [build 4/4] RUN strip app\n#7 CACHED\n");
    }

    #[test]
    fn cached_after_started_prints_the_header_once() {
        let out = render(
            false,
            vec![
                started(3, "[build 1/4] FROM x"),
                cached(3, "[build 1/4] FROM x"),
            ],
        );
        assert_eq!(out, "#3 [build 1/4] FROM x\n#3 CACHED\n");
    }

    #[test]
    fn run_vertex_with_split_log_chunks() {
        let out = render(
            false,
            vec![
                started(5, "[build 2/4] COPY src/ /src"),
                done(5, 20),
                started(6, "[build 3/4] RUN make"),
                log(6, 215, b"compi"),
                log(6, 300, b"ling...\r\nlinking"),
                log(6, 1200, b" app\r\nstripping"),
                done(6, 1300),
            ],
        );
        let want = "\
#5 [build 2/4] COPY src/ /src
#5 DONE 0.0s

#6 [build 3/4] RUN make
#6 0.215 compiling...
#6 0.300 linking app
#6 1.200 stripping
#6 DONE 1.3s
";
        assert_eq!(out, want);
    }

    #[test]
    fn interleaved_vertices_repeat_their_headers() {
        let out = render(
            false,
            vec![
                started(1, "[a 1/1] RUN one"),
                started(2, "[b 1/1] RUN two"),
                log(1, 100, b"from a\n"),
                log(2, 200, b"from b\n"),
                log(2, 250, b"more b\n"),
                done(1, 300),
                done(2, 400),
            ],
        );
        let want = "\
#1 [a 1/1] RUN one
#1 ...

#2 [b 1/1] RUN two
#2 ...

#1 [a 1/1] RUN one
#1 0.100 from a
#1 ...

#2 [b 1/1] RUN two
#2 0.200 from b
#2 0.250 more b
#2 ...

#1 [a 1/1] RUN one
#1 DONE 0.3s

#2 [b 1/1] RUN two
#2 DONE 0.4s
";
        assert_eq!(out, want);
    }

    #[test]
    fn failure_prints_the_rest_of_the_output_then_the_error() {
        let out = render(
            false,
            vec![
                started(4, "[build 3/4] RUN make"),
                log(4, 10, b"make: *** [all] Error 1"),
                failed(4, 500, "process \"make\" exited with code 2"),
            ],
        );
        let want = "\
#4 [build 3/4] RUN make
#4 0.010 make: *** [all] Error 1
#4 ERROR: process \"make\" exited with code 2
";
        assert_eq!(out, want);
    }

    fn miss_events() -> Vec<Event> {
        vec![
            // Before the vertex is announced: held for its header.
            Event::Miss {
                vertex: 2,
                reason: MissReason::File {
                    path: "src/main.c".into(),
                },
            },
            started(2, "[build 2/2] COPY src/ /src"),
            started(3, "[build 3/3] RUN make"),
            Event::Miss {
                vertex: 3,
                reason: MissReason::Parent,
            },
            done(2, 100),
            done(3, 100),
        ]
    }

    #[test]
    fn explain_cache_prints_miss_reasons() {
        let out = render(true, miss_events());
        assert!(
            out.starts_with(
                "#2 [build 2/2] COPY src/ /src\n#2 CACHE MISS: file src/main.c changed\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("#3 [build 3/3] RUN make\n#3 CACHE MISS: the previous step changed\n"),
            "{out}"
        );
    }

    #[test]
    fn without_explain_cache_misses_print_nothing() {
        let out = render(false, miss_events());
        assert!(!out.contains("MISS"), "{out}");
    }

    #[test]
    fn unfinished_output_is_flushed_at_finish() {
        let out = render(false, vec![started(1, "[a 1/1] RUN x"), log(1, 5, b"half")]);
        assert_eq!(out, "#1 [a 1/1] RUN x\n#1 0.005 half\n");
    }

    #[test]
    fn messages_get_their_own_block() {
        let capture = Capture::default();
        let mut plain = Plain::new(capture.writer(), false);
        plain.event(started(1, "[a 1/1] RUN x"));
        plain.event(done(1, 0));
        plain.message("naming to docker.io/library/app:v1 done");
        plain.event(cached(2, "[b 1/1] RUN y"));
        assert_eq!(
            capture.text(),
            "#1 [a 1/1] RUN x\n#1 DONE 0.0s\n\nnaming to docker.io/library/app:v1 done\n\n\
             #2 [b 1/1] RUN y\n#2 CACHED\n"
        );
    }

    #[test]
    fn events_of_unknown_vertices_do_not_panic() {
        let out = render(
            true,
            vec![
                log(42, 0, b"\xff\xfeorphan\n"),
                done(43, 0),
                Event::Miss {
                    vertex: 44,
                    reason: MissReason::NeverBuilt,
                },
            ],
        );
        assert_eq!(
            out,
            "#42\n#42 0.000 \u{fffd}\u{fffd}orphan\n#42 ...\n\n#43\n#43 DONE 0.0s\n"
        );
    }
}
