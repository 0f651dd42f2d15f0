//! The suite's stopwatch: runs one command and writes its wall time and
//! peak resident set to a file, then exits as the command did.
//!
//!     timed RESULT_FILE COMMAND [ARG...]
//!
//! RESULT_FILE gets one line, `SECONDS MAXRSS_KB`: the time from just
//! before the command is spawned to just after it is reaped, and the
//! largest resident set of the command or of any descendant it waited for
//! (wait4's ru_maxrss, what GNU time's %M reports).
//!
//! Why not GNU time behind the Python harness: its own exec, dynamic
//! loading and fork (about a millisecond here) fell inside every timed
//! command, which is a tenth of a no-op rebuild. Here the clock starts
//! after this program is loaded. It is small, so the resident set the
//! command inherits before its exec (Linux carries the parent's peak over
//! a vfork and exec) is this program's, not the harness's.
//!
//! Built by scripts/bench with `rustc -O`; only std, so no Cargo project.

use std::fs::File;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode, ExitStatus};
use std::time::Instant;

/// `struct rusage` on 64-bit Linux: two `struct timeval`s, then fourteen
/// longs, the first of which is ru_maxrss (in KiB).
#[repr(C)]
struct Rusage {
    utime: [i64; 2],
    stime: [i64; 2],
    maxrss: i64,
    rest: [i64; 13],
}

unsafe extern "C" {
    fn wait4(pid: i32, status: *mut i32, options: i32, rusage: *mut Rusage) -> i32;
}

/// Reaps `pid`, retrying when a signal interrupts the wait.
fn reap(pid: i32) -> std::io::Result<(ExitStatus, i64)> {
    let mut status = 0;
    let mut usage = Rusage {
        utime: [0; 2],
        stime: [0; 2],
        maxrss: 0,
        rest: [0; 13],
    };
    loop {
        // SAFETY: both pointers are to live locals of the types wait4
        // writes; the child is ours and is reaped exactly once, here.
        let r = unsafe { wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            return Ok((ExitStatus::from_raw(status), usage.maxrss));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let [result, program, rest @ ..] = args.as_slice() else {
        eprintln!("usage: timed RESULT_FILE COMMAND [ARG...]");
        return ExitCode::from(2);
    };
    // Opened first: a bad path is reported before anything runs.
    let mut out = match File::create(result) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("timed: {}: {e}", result.to_string_lossy());
            return ExitCode::from(2);
        }
    };
    let start = Instant::now();
    let child = match Command::new(program).args(rest).spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("timed: {}: {e}", program.to_string_lossy());
            return ExitCode::from(127);
        }
    };
    // Reaped here, not by Child::wait: wait4 also gives the resource use.
    let (status, maxrss) = match reap(child.id() as i32) {
        Ok(reaped) => reaped,
        Err(e) => {
            eprintln!("timed: waiting for {}: {e}", program.to_string_lossy());
            return ExitCode::from(2);
        }
    };
    let seconds = start.elapsed().as_secs_f64();
    if let Err(e) = writeln!(out, "{seconds:.9} {maxrss}") {
        eprintln!("timed: {}: {e}", result.to_string_lossy());
        return ExitCode::from(2);
    }
    // The shell's convention for a command killed by a signal.
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
