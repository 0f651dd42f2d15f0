//! A blob file's writer that hands a large stream to a thread of its own:
//! the producer (a layer's tar being built and hashed, the expensive part)
//! and the write system calls then run side by side, on two cores. Small
//! streams, most layers, are written where they are produced, with no
//! thread to start.

use std::io::{self, BufWriter, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use tempfile::NamedTempFile;

/// Bytes written in the producer's thread before the rest goes to a
/// writer thread.
const HAND_OVER_AFTER: u64 = 1 << 20;
/// What one hand-over carries.
const CHUNK: usize = 256 << 10;
/// Chunks in flight at most (the producer waits beyond that).
const IN_FLIGHT: usize = 4;

pub(crate) struct WriteBehind {
    state: State,
}

enum State {
    /// Written here, `written` bytes so far.
    Here {
        out: BufWriter<NamedTempFile>,
        written: u64,
    },
    /// Handed over: full chunks go to the writer thread, which returns
    /// each emptied one for reuse.
    Behind {
        chunk: Vec<u8>,
        to_writer: SyncSender<Vec<u8>>,
        spare: Receiver<Vec<u8>>,
        writer: JoinHandle<io::Result<NamedTempFile>>,
    },
    /// Finished, or failed: nothing more can be written.
    Closed,
}

impl WriteBehind {
    pub(crate) fn new(file: NamedTempFile) -> WriteBehind {
        WriteBehind {
            state: State::Here {
                out: BufWriter::with_capacity(CHUNK, file),
                written: 0,
            },
        }
    }

    /// Writes out everything; returns the file, all its bytes written.
    pub(crate) fn finish(mut self) -> io::Result<NamedTempFile> {
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Here { out, .. } => out.into_inner().map_err(|e| e.into_error()),
            State::Behind {
                chunk,
                to_writer,
                writer,
                ..
            } => {
                // A failed writer thread has gone: its error is in the join.
                let _ = to_writer.send(chunk);
                drop(to_writer);
                join(writer)
            }
            State::Closed => Err(io::Error::other("the blob writer failed earlier")),
        }
    }

    /// Starts the writer thread with what is written so far flushed. If no
    /// thread can be started, writing goes on here.
    fn hand_over(&mut self) -> io::Result<()> {
        let State::Here { out, written } = std::mem::replace(&mut self.state, State::Closed) else {
            return Ok(());
        };
        let file = out.into_inner().map_err(|e| e.into_error())?;
        let (to_writer, chunks) = sync_channel::<Vec<u8>>(IN_FLIGHT);
        let (give_back, spare) = sync_channel::<Vec<u8>>(IN_FLIGHT + 1);
        let (file_back, file_here) = sync_channel::<NamedTempFile>(1);
        let started = std::thread::Builder::new()
            .name("rbuild-write".into())
            .spawn(move || -> io::Result<NamedTempFile> {
                // The file comes over only once the thread runs: a thread
                // that fails to start leaves it with the producer.
                let Ok(mut file) = file_here.recv() else {
                    return Err(io::Error::other("no file to write"));
                };
                for mut chunk in chunks {
                    file.write_all(&chunk)?;
                    chunk.clear();
                    let _ = give_back.try_send(chunk);
                }
                Ok(file)
            });
        match started {
            Ok(writer) => {
                if file_back.send(file).is_err() {
                    return Err(join(writer).err().unwrap_or_else(|| {
                        io::Error::other("the blob writer thread stopped early")
                    }));
                }
                self.state = State::Behind {
                    chunk: Vec::with_capacity(CHUNK),
                    to_writer,
                    spare,
                    writer,
                };
            }
            Err(_) => {
                // The file never left.
                self.state = State::Here {
                    out: BufWriter::with_capacity(CHUNK, file),
                    written,
                };
            }
        }
        Ok(())
    }
}

/// The writer thread's outcome.
fn join(writer: JoinHandle<io::Result<NamedTempFile>>) -> io::Result<NamedTempFile> {
    writer
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the blob writer thread panicked")))
}

impl Write for WriteBehind {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match &mut self.state {
            State::Here { out, written } => {
                let n = out.write(data)?;
                *written += n as u64;
                if *written >= HAND_OVER_AFTER {
                    self.hand_over()?;
                }
                Ok(n)
            }
            State::Behind {
                chunk,
                to_writer,
                spare,
                ..
            } => {
                chunk.extend_from_slice(data);
                if chunk.len() >= CHUNK {
                    let next = spare
                        .try_recv()
                        .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
                    let full = std::mem::replace(chunk, next);
                    if to_writer.send(full).is_err() {
                        // The writer stopped on an error: that error.
                        let State::Behind { writer, .. } =
                            std::mem::replace(&mut self.state, State::Closed)
                        else {
                            unreachable!("matched above");
                        };
                        return Err(join(writer).err().unwrap_or_else(|| {
                            io::Error::other("the blob writer thread stopped early")
                        }));
                    }
                }
                Ok(data.len())
            }
            State::Closed => Err(io::Error::other("the blob writer failed earlier")),
        }
    }

    /// Writes out what is buffered here; handed-over bytes are written by
    /// [`WriteBehind::finish`] at the latest.
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.state {
            State::Here { out, .. } => out.flush(),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek};

    fn written(data: &[u8], piece: usize) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WriteBehind::new(NamedTempFile::new_in(dir.path()).unwrap());
        for part in data.chunks(piece) {
            w.write_all(part).unwrap();
        }
        let mut file = w.finish().unwrap();
        file.rewind().unwrap();
        let mut back = Vec::new();
        file.read_to_end(&mut back).unwrap();
        back
    }

    #[test]
    fn small_and_large_streams_arrive_whole_and_in_order() {
        let small: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(written(&small, 1000), small);
        // Past the hand-over, in pieces that do not line up with chunks.
        let large: Vec<u8> = (0..(5 << 20) + 12_345u32)
            .map(|i| (i % 253) as u8)
            .collect();
        assert_eq!(written(&large, 70_001), large);
        assert_eq!(written(&large, 3 << 20), large);
    }

    #[test]
    fn a_failing_write_is_reported_before_and_after_the_hand_over() {
        for readable in [0usize, 3 << 19] {
            // A pipe whose reader takes `readable` bytes, then goes: later
            // writes fail (EPIPE).
            let (mut reader, pipe) = std::io::pipe().unwrap();
            let draining = std::thread::spawn(move || {
                let mut buf = vec![0u8; readable];
                let _ = reader.read_exact(&mut buf);
            });
            let dir = tempfile::tempdir().unwrap();
            let (_, path) = NamedTempFile::new_in(dir.path()).unwrap().into_parts();
            let file = std::fs::File::from(std::os::fd::OwnedFd::from(pipe));
            let mut w = WriteBehind::new(NamedTempFile::from_parts(file, path));
            let big = vec![7u8; 4 << 20];
            let wrote = big.chunks(64 << 10).try_for_each(|part| w.write_all(part));
            let finished = w.finish();
            assert!(
                wrote.is_err() || finished.is_err(),
                "no error with {readable} bytes readable"
            );
            draining.join().unwrap();
        }
    }
}
