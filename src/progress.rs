//! The build's progress display on standard error.
//!
//! The solver reports what it does as [`Event`]s through a [`Sink`], from
//! several worker threads at once. [`Progress`] turns them into one of
//! BuildKit's displays (`--progress=plain|tty|rawjson|quiet`):
//!
//! - [`plain`]: line by line, for CI logs (`#5 [build 2/4] COPY ...`).
//! - [`tty`]: a live view redrawn in place, drawn from a [`board`].
//! - [`rawjson`]: BuildKit's `SolveStatus` JSON, one object per line.
//! - [`quiet`]: nothing, unless the build fails.
//!
//! Every display sees the events one at a time, behind a mutex, so each can
//! keep plain mutable state. Standard output is never written: it carries
//! `-q`'s image ID and `-o -` tarballs.

mod board;
mod lines;
mod plain;
mod quiet;
mod rawjson;
mod tty;

use std::io::{self, IsTerminal, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use rbuild_solver::progress::{Event, Sink};

/// How often the TTY view is redrawn, so running timers move.
const TICK: Duration = Duration::from_millis(100);

/// Which display to use (`--progress`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// `tty` when standard error is a terminal, else `plain`.
    #[default]
    Auto,
    /// Line by line, for logs.
    Plain,
    /// A live view, redrawn in place.
    Tty,
    /// BuildKit's `SolveStatus` JSON, one object per line.
    #[value(name = "rawjson")]
    RawJson,
    /// Nothing, except a failed step's last output.
    Quiet,
}

impl Mode {
    /// Settles `Auto` for this process's standard error.
    fn resolve(self) -> Mode {
        match self {
            Mode::Auto if stderr_is_live_terminal() => Mode::Tty,
            Mode::Auto => Mode::Plain,
            other => other,
        }
    }
}

/// Whether standard error can show a redrawn view: a terminal that
/// understands cursor movement (`TERM=dumb` ones, like some editors'
/// shells, do not).
fn stderr_is_live_terminal() -> bool {
    io::stderr().is_terminal() && std::env::var_os("TERM").is_none_or(|term| term != "dumb")
}

/// One way of showing progress. [`Progress`] calls it with its lock held,
/// so calls never overlap.
trait Renderer: Send {
    fn event(&mut self, event: Event);
    /// A line that belongs to no vertex.
    fn message(&mut self, text: &str);
    /// Called every [`TICK`] when the renderer asked for a redraw thread.
    fn tick(&mut self) {}
    /// Ends the display; nothing is called after this.
    fn finish(&mut self, failed: bool);
}

/// The build's progress display. Cheap to share: [`Progress::sink`] hands
/// the solver a callback that may be called from any thread.
pub struct Progress {
    shared: Arc<Shared>,
    /// The TTY view's redraw thread.
    ticker: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the redraw thread early when the display finishes.
    wake: Condvar,
}

struct State {
    renderer: Box<dyn Renderer>,
    /// Set by `finish`; later events (from a sink that outlived the build)
    /// are dropped instead of drawing over the final frame.
    finished: bool,
}

impl Shared {
    /// Locks the state. A panic elsewhere while it was held must not take
    /// the display down with it, so a poisoned lock is used as it is.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn event(&self, event: Event) {
        let mut state = self.lock();
        if !state.finished {
            state.renderer.event(event);
        }
    }
}

impl Progress {
    /// A display of `mode` on standard error. `explain_cache` shows why
    /// steps missed the cache (plain and tty; rawjson always carries it).
    pub fn new(mode: Mode, explain_cache: bool) -> Progress {
        let mode = mode.resolve();
        let out: Box<dyn Write + Send> = Box::new(io::stderr());
        let renderer: Box<dyn Renderer> = match mode {
            Mode::Tty => Box::new(tty::Tty::new(
                out,
                explain_cache,
                Box::new(tty::terminal_size),
                tty::color_wanted(),
            )),
            Mode::RawJson => Box::new(rawjson::RawJson::new(out)),
            Mode::Quiet => Box::new(quiet::Quiet::new(out)),
            Mode::Plain | Mode::Auto => Box::new(plain::Plain::new(out, explain_cache)),
        };
        Progress::start(renderer, mode == Mode::Tty)
    }

    /// Wraps `renderer`, with a redraw thread if it is a live view.
    fn start(renderer: Box<dyn Renderer>, live: bool) -> Progress {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                renderer,
                finished: false,
            }),
            wake: Condvar::new(),
        });
        let ticker = live.then(|| {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || redraw_loop(&shared))
        });
        Progress { shared, ticker }
    }

    /// The callback the solver reports events to.
    pub fn sink(&self) -> Sink {
        let shared = Arc::clone(&self.shared);
        Arc::new(move |event| shared.event(event))
    }

    /// Prints a line that is about no vertex (`naming to ... done`) without
    /// breaking the live view. Quiet and rawjson displays drop it.
    pub fn message(&self, text: &str) {
        let mut state = self.shared.lock();
        if !state.finished {
            state.renderer.message(text);
        }
    }

    /// Ends the display: stops redrawing and draws the final state. With
    /// `failed`, a quiet display prints the failed step's last output.
    pub fn finish(mut self, failed: bool) {
        self.shut_down(failed);
    }

    /// Ends the display once; later calls do nothing.
    fn shut_down(&mut self, failed: bool) {
        {
            let mut state = self.shared.lock();
            if state.finished {
                return;
            }
            state.finished = true;
        }
        self.shared.wake.notify_all();
        if let Some(ticker) = self.ticker.take() {
            // The thread only draws; if it panicked there is nothing to recover.
            let _ = ticker.join();
        }
        self.shared.lock().renderer.finish(failed);
    }
}

impl Drop for Progress {
    /// A display dropped without `finish` (an early return, a panic) still
    /// stops its thread and leaves the terminal below its last frame.
    fn drop(&mut self) {
        self.shut_down(false);
    }
}

/// Redraws the live view every [`TICK`] until the display finishes.
fn redraw_loop(shared: &Shared) {
    let mut state = shared.lock();
    while !state.finished {
        state.renderer.tick();
        state = match shared.wake.wait_timeout(state, TICK) {
            Ok((state, _)) => state,
            Err(poisoned) => poisoned.into_inner().0,
        };
    }
}

/// Writes one rendered piece. Progress is best effort: a closed or full
/// standard error must not fail the build, so errors are dropped.
fn emit(out: &mut dyn Write, text: &str) {
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

#[cfg(test)]
pub(crate) mod testing {
    //! Helpers shared by the displays' tests.

    use std::io::{self, Write};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, SystemTime};

    use rbuild_oci::Digest;
    use rbuild_solver::progress::{Event, Vertex, VertexId};

    /// An in-memory standard error that the test can read while the
    /// display still owns a handle to it.
    #[derive(Clone, Default)]
    pub struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Capture {
        pub fn text(&self) -> String {
            let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
            String::from_utf8_lossy(&bytes).into_owned()
        }

        pub fn writer(&self) -> Box<dyn Write + Send> {
            Box::new(self.clone())
        }
    }

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A fixed point in time, so printed times are predictable.
    pub fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    pub fn at_ms(ms: u64) -> SystemTime {
        t0() + Duration::from_millis(ms)
    }

    pub fn vertex(id: VertexId, name: &str) -> Vertex {
        Vertex {
            id,
            digest: Digest::of(name.as_bytes()),
            name: name.to_string(),
            line: None,
        }
    }

    pub fn digest_of(id: VertexId, name: &str) -> Digest {
        vertex(id, name).digest
    }

    pub fn started(id: VertexId, name: &str) -> Event {
        Event::Started {
            vertex: vertex(id, name),
            at: t0(),
        }
    }

    pub fn cached(id: VertexId, name: &str) -> Event {
        Event::Cached {
            vertex: vertex(id, name),
        }
    }

    pub fn log(id: VertexId, ms: u64, data: &[u8]) -> Event {
        Event::Log {
            vertex: id,
            stream: 1,
            data: data.to_vec(),
            at: at_ms(ms),
        }
    }

    pub fn done(id: VertexId, ms: u64) -> Event {
        Event::Done {
            vertex: id,
            elapsed: Duration::from_millis(ms),
        }
    }

    pub fn failed(id: VertexId, ms: u64, message: &str) -> Event {
        Event::Failed {
            vertex: id,
            elapsed: Duration::from_millis(ms),
            message: message.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn progress_is_shareable_across_threads() {
        assert_send_sync::<Progress>();
    }

    #[test]
    fn mode_names_match_buildkit() {
        use clap::ValueEnum;
        let names: Vec<String> = Mode::value_variants()
            .iter()
            .filter_map(|m| m.to_possible_value())
            .map(|v| v.get_name().to_string())
            .collect();
        assert_eq!(names, ["auto", "plain", "tty", "rawjson", "quiet"]);
    }

    #[test]
    fn events_from_many_threads_and_after_finish_are_safe() {
        let capture = Capture::default();
        let progress = Progress::start(Box::new(plain::Plain::new(capture.writer(), false)), false);
        let sink = progress.sink();
        let threads: Vec<_> = (1..=4)
            .map(|id| {
                let sink = Arc::clone(&sink);
                std::thread::spawn(move || {
                    sink(started(id, &format!("[s{id} 1/1] RUN x")));
                    for i in 0..50 {
                        sink(log(id, i, format!("line {i}\n").as_bytes()));
                    }
                    sink(done(id, 10));
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("worker thread");
        }
        progress.finish(false);
        let before = capture.text();
        // The sink outlives the display: later events must change nothing.
        sink(started(9, "[late] RUN y"));
        sink(log(9, 0, b"late\n"));
        assert_eq!(capture.text(), before);
        for id in 1..=4 {
            assert_eq!(before.matches(&format!("#{id} DONE 0.0s\n")).count(), 1);
            assert_eq!(
                before
                    .lines()
                    .filter(|l| l.starts_with(&format!("#{id} 0.")))
                    .count(),
                50
            );
        }
    }

    #[test]
    fn messages_reach_the_display_until_finish() {
        let capture = Capture::default();
        let progress = Progress::start(Box::new(plain::Plain::new(capture.writer(), false)), false);
        progress.sink()(cached(1, "[a 1/1] RUN x"));
        progress.message("naming to docker.io/library/app:v1 done");
        progress.finish(false);
        assert_eq!(
            capture.text(),
            "#1 [a 1/1] RUN x\n#1 CACHED\n\nnaming to docker.io/library/app:v1 done\n"
        );

        let capture = Capture::default();
        let progress = Progress::start(Box::new(quiet::Quiet::new(capture.writer())), false);
        progress.message("naming to docker.io/library/app:v1 done");
        progress.finish(false);
        assert_eq!(capture.text(), "", "quiet prints no messages");
    }

    #[test]
    fn live_view_redraws_on_its_own_and_stops_on_finish() {
        let capture = Capture::default();
        let size = || tty::Size {
            width: 60,
            height: 20,
        };
        let renderer = tty::Tty::new(capture.writer(), false, Box::new(size), false);
        let progress = Progress::start(Box::new(renderer), true);
        let sink = progress.sink();
        sink(started(1, "[a 1/1] RUN sleep 1"));
        std::thread::sleep(TICK * 3);
        assert!(capture.text().contains("[a 1/1] RUN sleep 1"));
        progress.finish(false);
        let after_finish = capture.text();
        assert!(after_finish.contains("FINISHED"));
        std::thread::sleep(TICK * 2);
        assert_eq!(capture.text(), after_finish, "the redraw thread stopped");
    }
}
