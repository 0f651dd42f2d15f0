//! Layer compression throughput and memory.
//!
//! `cargo bench -p rbuild-export --bench compress` compresses 256 MiB of
//! random bytes and 250 MB of generated text (written to a temporary
//! directory first, then read from the file as a layer would be) with each
//! kind and thread count, and prints the time, throughput (of uncompressed
//! input), CPU time, ratio and peak RSS (each run in a process of its own).
//!
//! Environment:
//! - `RBUILD_BENCH_INPUT=FILE[,FILE...]`: compress these files instead;
//! - `RBUILD_BENCH_DIR=DIR`: generate the inputs in DIR (if not there
//!   yet) and keep them, to compare with other tools;
//! - `RBUILD_BENCH_THREADS=1,2`: the thread counts to try (default 1,2);
//! - `RBUILD_BENCH_KINDS=gzip,gzip:1,zstd,zstd:19,uncompressed`: the
//!   compressions to try (default gzip, zstd, uncompressed).

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rbuild_export::compress::{Compression, compress};

const MIB: u64 = 1 << 20;

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn write_random(path: &Path, len: u64) -> io::Result<()> {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut out = BufWriter::new(File::create(path)?);
    let mut buf = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        for chunk in buf.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next().to_le_bytes()[..chunk.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    out.flush()
}

/// Text that compresses roughly like prose or source code (about 3:1 with
/// gzip -6): a vocabulary of a few thousand made-up words drawn with a
/// skewed (Zipf-like) frequency, with punctuation, numbers and line breaks.
fn write_text(path: &Path, len: u64) -> io::Result<()> {
    const SYLLABLES: &[&str] = &[
        "ka", "to", "ri", "ne", "so", "lu", "ma", "de", "in", "ex", "con", "pre", "str", "ing",
        "tion", "al", "er", "ou", "th", "qu", "ab", "ly", "ment", "ize", "ver", "ph", "sch", "y",
    ];
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let words: Vec<String> = (0..4000)
        .map(|_| {
            let n = 1 + rng.next() % 4;
            (0..n)
                .map(|_| SYLLABLES[(rng.next() % SYLLABLES.len() as u64) as usize])
                .collect()
        })
        .collect();
    let mut out = BufWriter::new(File::create(path)?);
    let mut written = 0u64;
    let mut line = String::new();
    while written < len {
        line.clear();
        let n = 3 + rng.next() % 12;
        for i in 0..n {
            // Zipf-ish: the cube of a uniform pick favours low indexes.
            let u = (rng.next() % 1_000_000) as f64 / 1_000_000.0;
            let word = &words[(u * u * u * words.len() as f64) as usize];
            if i > 0 {
                line.push(' ');
            }
            line.push_str(word);
            match rng.next() % 20 {
                0 => line.push(','),
                1 => line.push_str(&(rng.next() % 100_000).to_string()),
                2 => line.push_str("()"),
                _ => {}
            }
        }
        line.push_str(if rng.next().is_multiple_of(3) {
            ".\n"
        } else {
            "\n"
        });
        let bytes = &line.as_bytes()[..line.len().min((len - written) as usize)];
        out.write_all(bytes)?;
        written += bytes.len() as u64;
    }
    out.flush()
}

/// Peak resident memory of this process, in MiB.
fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// CPU time (user + system) of the whole process so far, in seconds
/// (`/proc/self/stat` counts in USER_HZ, 100 on Linux).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => f64::NAN,
    }
}

fn parse_kind(text: &str) -> Compression {
    let (name, level) = match text.split_once(':') {
        Some((name, level)) => (name, Some(level)),
        None => (text, None),
    };
    Compression::parse(name, level).unwrap_or_else(|e| panic!("{e}"))
}

/// Compresses one file and prints a row. Each run is a process of its own,
/// so that its peak RSS is its own (freed memory is not always returned).
fn run_one(input: &Path, kind: Compression, threads: usize) -> io::Result<()> {
    let name = input.file_name().unwrap_or_default().to_string_lossy();
    let mut file = File::open(input)?;
    let reader: &mut dyn Read = &mut file;
    let cpu = cpu_seconds();
    let start = Instant::now();
    let result = compress(reader, &mut io::sink(), kind, threads)?;
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    println!(
        "{:<16} {:<20} {:>7} {:>8.2} {:>8.2} {:>8.1} {:>7.3} {:>6} MiB",
        name,
        format!("{kind:?}"),
        threads,
        secs,
        cpu,
        result.uncompressed_size as f64 / secs / 1e6,
        result.size as f64 / result.uncompressed_size.max(1) as f64,
        peak_rss_mib().map_or("?".into(), |m| m.to_string()),
    );
    Ok(())
}

fn main() -> io::Result<()> {
    if let Ok(one) = std::env::var("RBUILD_BENCH_ONE") {
        let mut parts = one.splitn(3, '|');
        let (Some(threads), Some(kind), Some(input)) = (parts.next(), parts.next(), parts.next())
        else {
            panic!("RBUILD_BENCH_ONE={one:?}");
        };
        let threads = threads.parse().expect("RBUILD_BENCH_ONE threads");
        return run_one(Path::new(input), parse_kind(kind), threads);
    }
    // `cargo bench` passes `--bench`; there is nothing to filter.
    let threads: Vec<usize> = std::env::var("RBUILD_BENCH_THREADS")
        .unwrap_or_else(|_| "1,2".into())
        .split(',')
        .map(|t| t.trim().parse().expect("RBUILD_BENCH_THREADS"))
        .collect();
    let kinds: Vec<String> = std::env::var("RBUILD_BENCH_KINDS")
        .unwrap_or_else(|_| "gzip,zstd,uncompressed".into())
        .split(',')
        .map(|k| k.trim().to_owned())
        .collect();
    let dir = tempfile::tempdir()?;
    let inputs: Vec<PathBuf> = match std::env::var("RBUILD_BENCH_INPUT") {
        Ok(list) => list.split(',').map(PathBuf::from).collect(),
        Err(_) => {
            let dir = std::env::var_os("RBUILD_BENCH_DIR")
                .map_or_else(|| dir.path().to_owned(), PathBuf::from);
            std::fs::create_dir_all(&dir)?;
            let random = dir.join("random-256MiB");
            let text = dir.join("text-250MB");
            if !random.exists() {
                write_random(&random, 256 * MIB)?;
            }
            if !text.exists() {
                write_text(&text, 250_000_000)?;
            }
            vec![random, text]
        }
    };
    println!(
        "{:<16} {:<20} {:>7} {:>8} {:>8} {:>8} {:>7} {:>9}",
        "input", "compression", "threads", "seconds", "CPU s", "MB/s", "ratio", "peak RSS"
    );
    let exe = std::env::current_exe()?;
    for input in &inputs {
        for kind in &kinds {
            let counts: &[usize] = if parse_kind(kind) == Compression::Uncompressed {
                &threads[..1]
            } else {
                &threads
            };
            for &n in counts {
                let one = format!("{n}|{kind}|{}", input.display());
                let status = std::process::Command::new(&exe)
                    .env("RBUILD_BENCH_ONE", one)
                    .status()?;
                if !status.success() {
                    return Err(io::Error::other(format!("bench run failed: {status}")));
                }
            }
        }
    }
    Ok(())
}
