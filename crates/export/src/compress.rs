//! Layer compression for exported images: gzip, zstd or none, in parallel,
//! with the layer's diff ID and blob digest computed in the same pass.
//!
//! The output depends only on the input bytes and the [`Compression`], never
//! on the number of threads, how the input happens to be chunked by `read`,
//! or the machine: an image's digest must not change because it was exported
//! on a bigger host.
//!
//! # gzip
//!
//! Compressed the way pigz does it: the input is cut into fixed 1 MiB
//! blocks, each compressed to raw deflate on a worker thread
//! and ended with a sync flush (an empty stored block, which leaves the
//! output byte aligned), so the blocks concatenate into one deflate stream.
//! Each block may refer back into the last 32 KiB of the previous block, as
//! if the stream had never been cut: the worker first feeds those 32 KiB to
//! its compressor and throws that output away (flate2's Rust backend has no
//! `set_dictionary`, and this primes the window the same way). The stream is
//! closed by an empty final block and wrapped in one gzip member with a fixed
//! header (mtime 0, no name, OS "unknown" as Go's gzip writes it). The CRC-32
//! and the input's sha256 are computed on the calling thread as it reads.
//!
//! Deflate spends most of its time looking for matches, as long on data
//! that has none as on text. So a block whose bytes are close to uniform
//! (already compressed files, random data, base64) is checked on a sample:
//! if matches would not help, it is Huffman coded without them (several
//! times faster, and as small), or stored if that would not help either.
//! Level 0 stores every block.
//!
//! The bytes produced are part of image digests: changing the block size,
//! those checks, the zstd parameters or flate2's backend changes them.
//!
//! # zstd
//!
//! libzstd's own multithreaded mode, with a fixed job size (4 MiB) and
//! overlap. Its output depends on the level and those parameters, not on the
//! number of worker threads, as long as there is at least one: one worker is
//! asked for even when `threads` is 1, since zstd's single-threaded mode
//! writes a different (equally valid) frame. A content checksum is
//! included, as the `zstd` tool and Go's zstd writer do.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Mutex, PoisonError};
use std::thread;

use flate2::{Compress, FlushCompress};
use rbuild_oci::{Digest, Hasher, HashingWriter};
use zstd::stream::raw::CParameter;

/// How much input one gzip block holds. 1 MiB (like Go's pgzip, which
/// skopeo and podman use) keeps the cost of priming each block with the
/// previous 32 KiB to about 3%, and the cost of a block boundary (a 5-byte
/// sync marker and new Huffman tables) to well under 0.1%, while a few
/// blocks per thread in flight are only a few MiB of memory.
const BLOCK_SIZE: usize = 1 << 20;

/// Deflate's window: how far back a block may refer into the previous one.
const WINDOW: usize = 32 * 1024;

/// zstd's unit of parallel work. libzstd's default at level 3 is 8 MiB; at
/// 4 MiB a compression with 2 threads peaks at ~35 MiB instead of ~65 MiB
/// (more on incompressible input), and with the overlap below the ratio is
/// about 1% better than the default's rather than worse.
const ZSTD_JOB_SIZE: u32 = 4 << 20;
/// How much of the previous job each job may refer to: 8 is half the window
/// (libzstd's default for fast levels is an eighth).
const ZSTD_OVERLAP_LOG: u32 = 8;

const GZIP_DEFAULT_LEVEL: u32 = 6;
const ZSTD_DEFAULT_LEVEL: i32 = 3;
const ZSTD_MAX_LEVEL: i32 = 22;

/// How a layer is stored in an exported image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// The layer tarball as it is.
    Uncompressed,
    /// gzip, level 0 (stored) to 9 (smallest).
    Gzip { level: u32 },
    /// zstd, level 1 to 22.
    Zstd { level: i32 },
}

impl Compression {
    /// gzip at BuildKit's default level (Go's `gzip.DefaultCompression`,
    /// which is level 6).
    pub fn gzip() -> Self {
        Compression::Gzip {
            level: GZIP_DEFAULT_LEVEL,
        }
    }

    /// zstd at BuildKit's default level (3, klauspost's `SpeedDefault`).
    pub fn zstd() -> Self {
        Compression::Zstd {
            level: ZSTD_DEFAULT_LEVEL,
        }
    }

    /// The OCI media type of a layer stored this way.
    pub fn oci_media_type(&self) -> &'static str {
        match self {
            Compression::Uncompressed => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip { .. } => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd { .. } => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// Parses an exporter's `compression=` value and its
    /// `compression-level=` (`None` when not given: the default level).
    ///
    /// Levels are those buildx documents: 0 to 9 for gzip (and -1, Go's
    /// "default", which BuildKit passes through), 0 to 22 for zstd, where 0
    /// means the fastest level as in BuildKit (its zstd encoder maps every
    /// level below 3 to "fastest"). A level given with `uncompressed` is
    /// ignored, as BuildKit ignores it. `estargz` and `zstd:chunked` are
    /// known but not supported.
    pub fn parse(name: &str, level: Option<&str>) -> Result<Compression, String> {
        let level = level
            .map(|text| {
                text.parse::<i64>()
                    .map_err(|_| format!("invalid compression-level {text:?}: expected an integer"))
            })
            .transpose()?;
        match name {
            "uncompressed" => Ok(Compression::Uncompressed),
            "gzip" => match level {
                None | Some(-1) => Ok(Compression::gzip()),
                Some(level @ 0..=9) => Ok(Compression::Gzip {
                    level: level as u32,
                }),
                Some(level) => Err(format!(
                    "compression-level {level} is out of range for gzip: expected 0 to 9"
                )),
            },
            "zstd" => match level {
                None => Ok(Compression::zstd()),
                Some(0) => Ok(Compression::Zstd { level: 1 }),
                Some(level @ 1..=22) => Ok(Compression::Zstd {
                    level: level as i32,
                }),
                Some(level) => Err(format!(
                    "compression-level {level} is out of range for zstd: expected 0 to 22"
                )),
            },
            "estargz" | "zstd:chunked" => Err(format!(
                "compression {name} is not supported: use gzip, zstd or uncompressed"
            )),
            _ => Err(format!(
                "unsupported compression type {name:?}: expected gzip, zstd or uncompressed"
            )),
        }
    }
}

/// What compressing a layer produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compressed {
    /// sha256 of the compressed bytes: the layer blob's digest.
    pub digest: Digest,
    /// Size of the compressed bytes.
    pub size: u64,
    /// sha256 of the uncompressed input: the layer's diff ID.
    pub diff_id: Digest,
    /// Size of the uncompressed input.
    pub uncompressed_size: u64,
}

/// Compresses `input` into `output` using up to `threads` threads (0 counts
/// as 1), hashing the input (diff ID) and the output (blob digest) in the
/// same streaming pass.
///
/// Reading, hashing and writing happen on the calling thread; gzip blocks
/// are compressed on `threads` scoped worker threads (on the calling thread
/// when `threads` is 1), zstd jobs on libzstd's. Memory stays bounded (a few
/// 1 MiB blocks per thread for gzip, a few zstd jobs per thread for zstd)
/// whatever the input size. The output is the same for any `threads`.
///
/// The first read or write error is returned (and every thread is stopped);
/// `output` then holds a partial blob. `output` is flushed at the end.
pub fn compress(
    input: &mut dyn Read,
    output: &mut dyn Write,
    compression: Compression,
    threads: usize,
) -> io::Result<Compressed> {
    let threads = threads.max(1);
    let mut sink = HashingWriter::new(output);
    let mut source = Source {
        hasher: Hasher::new(),
        crc: None,
    };
    match compression {
        Compression::Uncompressed => copy(input, &mut source, &mut sink)?,
        Compression::Gzip { level } => {
            if level > 9 {
                return Err(invalid_level(compression));
            }
            source.crc = Some(crc32fast::Hasher::new());
            gzip(input, &mut source, &mut sink, level, threads)?
        }
        Compression::Zstd { level } => {
            if !(1..=ZSTD_MAX_LEVEL).contains(&level) {
                return Err(invalid_level(compression));
            }
            zstd(input, &mut source, &mut sink, level, threads)?
        }
    }
    sink.flush()?;
    let (digest, size, _) = sink.finish();
    let uncompressed_size = source.hasher.len();
    Ok(Compressed {
        digest,
        size,
        diff_id: source.hasher.finish(),
        uncompressed_size,
    })
}

fn invalid_level(compression: Compression) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("invalid compression level: {compression:?}"),
    )
}

type Sink<'a> = HashingWriter<&'a mut dyn Write>;

/// What has been read of the input: its sha256 (and length) and, for gzip,
/// its CRC-32.
struct Source {
    hasher: Hasher,
    crc: Option<crc32fast::Hasher>,
}

impl Source {
    /// Reads the next block of `input` into `buf`: exactly `BLOCK_SIZE`
    /// bytes unless the input ends first, so block boundaries do not depend
    /// on how `read` chunks the input. Returns false at the end of input.
    fn next_block(&mut self, input: &mut dyn Read, buf: &mut Vec<u8>) -> io::Result<bool> {
        buf.clear();
        buf.reserve_exact(BLOCK_SIZE);
        (&mut *input).take(BLOCK_SIZE as u64).read_to_end(buf)?;
        self.hasher.update(buf);
        if let Some(crc) = &mut self.crc {
            crc.update(buf);
        }
        Ok(!buf.is_empty())
    }
}

fn copy(input: &mut dyn Read, source: &mut Source, sink: &mut Sink) -> io::Result<()> {
    let mut buf = Vec::new();
    while source.next_block(input, &mut buf)? {
        sink.write_all(&buf)?;
        if buf.len() < BLOCK_SIZE {
            break;
        }
    }
    Ok(())
}

fn zstd(
    input: &mut dyn Read,
    source: &mut Source,
    sink: &mut Sink,
    level: i32,
    threads: usize,
) -> io::Result<()> {
    let mut encoder = zstd::stream::write::Encoder::new(sink, level)?;
    encoder.include_checksum(true)?;
    encoder.multithread(u32::try_from(threads).unwrap_or(u32::MAX))?;
    encoder.set_parameter(CParameter::JobSize(ZSTD_JOB_SIZE))?;
    encoder.set_parameter(CParameter::OverlapSizeLog(ZSTD_OVERLAP_LOG))?;
    let mut buf = Vec::new();
    while source.next_block(input, &mut buf)? {
        encoder.write_all(&buf)?;
        if buf.len() < BLOCK_SIZE {
            break;
        }
    }
    encoder.finish()?;
    Ok(())
}

/// One gzip block on its way through the workers; the buffers are reused.
struct Block {
    seq: u64,
    /// The last `WINDOW` bytes of the previous block (empty for the first).
    dict: Vec<u8>,
    input: Vec<u8>,
    output: Vec<u8>,
}

impl Block {
    fn new() -> Block {
        Block {
            seq: 0,
            dict: Vec::with_capacity(WINDOW),
            input: Vec::new(),
            output: Vec::new(),
        }
    }
}

/// Reads the next gzip block into `block`, handing it the previous block's
/// tail as its dictionary and keeping its own tail in `window`.
fn next_gzip_block(
    input: &mut dyn Read,
    source: &mut Source,
    block: &mut Block,
    window: &mut Vec<u8>,
) -> io::Result<bool> {
    if !source.next_block(input, &mut block.input)? {
        return Ok(false);
    }
    block.dict.clear();
    block.dict.extend_from_slice(window);
    window.clear();
    window.extend_from_slice(&block.input[block.input.len().saturating_sub(WINDOW)..]);
    Ok(true)
}

fn gzip(
    input: &mut dyn Read,
    source: &mut Source,
    sink: &mut Sink,
    level: u32,
    threads: usize,
) -> io::Result<()> {
    // RFC 1952 header: deflate, no flags, mtime 0, extra flags as Go sets
    // them (2 = best compression, 4 = fastest), OS 255 (unknown) as Go.
    let xfl = match level {
        9 => 2,
        1 => 4,
        _ => 0,
    };
    sink.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 255])?;
    if threads == 1 {
        let mut deflater = Deflater::new(level);
        let mut block = Block::new();
        let mut window = Vec::with_capacity(WINDOW);
        while next_gzip_block(input, source, &mut block, &mut window)? {
            deflater.compress(&mut block)?;
            sink.write_all(&block.output)?;
            if block.input.len() < BLOCK_SIZE {
                break;
            }
        }
    } else {
        gzip_parallel(input, source, sink, level, threads)?;
    }
    // Every block ended with a sync flush; close the stream with an empty
    // final block (fixed Huffman codes: BFINAL=1, BTYPE=01, end of block).
    sink.write_all(&[0x03, 0x00])?;
    let crc = source.crc.take().map_or(0, |crc| crc.finalize());
    sink.write_all(&crc.to_le_bytes())?;
    // ISIZE is the input size modulo 2^32.
    sink.write_all(&(source.hasher.len() as u32).to_le_bytes())?;
    Ok(())
}

type Done = (Block, io::Result<()>);

fn gzip_parallel(
    input: &mut dyn Read,
    source: &mut Source,
    sink: &mut Sink,
    level: u32,
    workers: usize,
) -> io::Result<()> {
    let (job_tx, job_rx) = mpsc::channel::<Block>();
    let job_rx = Mutex::new(job_rx);
    let (done_tx, done_rx) = mpsc::channel::<Done>();
    let abort = AtomicBool::new(false);
    thread::scope(|scope| {
        for _ in 0..workers {
            let done_tx = done_tx.clone();
            let (job_rx, abort) = (&job_rx, &abort);
            scope.spawn(move || gzip_worker(level, job_rx, done_tx, abort));
        }
        drop(done_tx);
        // Two blocks per worker (one being compressed, one waiting) and one
        // being read: enough to keep the workers busy, and the bound on
        // memory (the channels themselves are unbounded).
        let result = gzip_drive(
            input,
            source,
            sink,
            job_tx,
            &done_rx,
            2 * workers as u64 + 1,
        );
        if result.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        // `job_tx` is gone: the workers stop once the queue is empty, and
        // the scope waits for them.
        result
    })
}

/// The calling thread's side of parallel gzip: reads and hashes blocks,
/// hands them to the workers, and writes their output in order.
fn gzip_drive(
    input: &mut dyn Read,
    source: &mut Source,
    sink: &mut Sink,
    jobs: Sender<Block>,
    done: &Receiver<Done>,
    max_in_flight: u64,
) -> io::Result<()> {
    let workers_gone = || io::Error::other("gzip worker threads stopped unexpectedly");
    let mut free: Vec<Block> = Vec::new();
    let mut finished: BTreeMap<u64, Block> = BTreeMap::new();
    let mut window = Vec::with_capacity(WINDOW);
    let (mut next_read, mut next_write) = (0u64, 0u64);
    let mut eof = false;
    loop {
        while let Some(block) = finished.remove(&next_write) {
            sink.write_all(&block.output)?;
            next_write += 1;
            free.push(block);
        }
        let in_flight = next_read - next_write;
        if !eof && in_flight < max_in_flight {
            let mut block = free.pop().unwrap_or_else(Block::new);
            if !next_gzip_block(input, source, &mut block, &mut window)? {
                eof = true;
                free.push(block);
                continue;
            }
            eof = block.input.len() < BLOCK_SIZE;
            block.seq = next_read;
            jobs.send(block).map_err(|_| workers_gone())?;
            next_read += 1;
            while let Ok((block, result)) = done.try_recv() {
                result?;
                finished.insert(block.seq, block);
            }
        } else if in_flight > 0 {
            let (block, result) = done.recv().map_err(|_| workers_gone())?;
            result?;
            finished.insert(block.seq, block);
        } else {
            return Ok(());
        }
    }
}

fn gzip_worker(level: u32, jobs: &Mutex<Receiver<Block>>, done: Sender<Done>, abort: &AtomicBool) {
    let mut deflater = Deflater::new(level);
    loop {
        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(mut block) = job else { return };
        if abort.load(Ordering::Relaxed) {
            return;
        }
        let result = panic::catch_unwind(AssertUnwindSafe(|| deflater.compress(&mut block)))
            .unwrap_or_else(|_| {
                deflater = Deflater::new(level);
                Err(io::Error::other("gzip worker panicked"))
            });
        if done.send((block, result)).is_err() {
            return;
        }
    }
}

/// Raw deflate of one block, as a piece of a longer deflate stream.
struct Deflater {
    level: u32,
    compress: Compress,
    /// A level 1 compressor, to see whether a sample has matches at all.
    probe: Compress,
    /// Where the output of priming the window goes (thrown away).
    scratch: Vec<u8>,
    /// The slices of a block that `choose` looks at.
    sample: Vec<u8>,
}

/// How a block is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    /// LZ77 and Huffman codes at the chosen level.
    Deflate,
    /// Huffman codes for the bytes, no matches (zlib's `Z_HUFFMAN_ONLY`).
    Huffman,
    /// As it is.
    Store,
}

/// `choose` looks at this many slices of a block...
const PROBE_SLICES: usize = 16;
/// ...of this many bytes each, spread evenly over the block.
const PROBE_SLICE: usize = 4096;

impl Deflater {
    fn new(level: u32) -> Deflater {
        Deflater {
            level,
            compress: Compress::new(flate2::Compression::new(level), false),
            probe: Compress::new(flate2::Compression::new(1), false),
            scratch: Vec::new(),
            sample: Vec::with_capacity(PROBE_SLICES * PROBE_SLICE),
        }
    }

    /// Compresses `block.input` into `block.output`, ended byte aligned
    /// (by a sync flush, or a stored block). The result depends only on the
    /// block's input and dictionary: the compressor starts from a reset
    /// state every time.
    fn compress(&mut self, block: &mut Block) -> io::Result<()> {
        match self.choose(&block.input)? {
            Method::Store => store(&block.input, &mut block.output),
            Method::Huffman => huffman_only(&block.input, &mut block.output),
            Method::Deflate => {
                self.compress.reset();
                if !block.dict.is_empty() {
                    // Compressing the dictionary puts it in the compressor's
                    // window, so the block's matches can reach back into it;
                    // the decoder has the same bytes in its window (they end
                    // the previous block).
                    self.scratch.clear();
                    deflate(&mut self.compress, &block.dict, &mut self.scratch)?;
                }
                block.output.clear();
                deflate(&mut self.compress, &block.input, &mut block.output)?;
            }
        }
        Ok(())
    }

    /// How to encode `data`. Deflate spends as much time on data it cannot
    /// shrink (already compressed files, random bytes) as on text, and most
    /// of it looking for matches, which data such as base64 does not have;
    /// such blocks are stored, or Huffman coded without matches, which is
    /// many times faster and as small.
    ///
    /// Cheap for ordinary data: the byte histogram of a 64 KiB sample is far
    /// from uniform for text and machine code (Rényi entropy under 5.3 bits
    /// per byte). A sample that is close to uniform is compressed at level 1
    /// and its Huffman-only size computed: if matches save less than 2% over
    /// Huffman codes alone, there are no matches worth finding; if neither
    /// saves 2%, the block is stored. Integers only, so the choice is the
    /// same on every machine.
    fn choose(&mut self, data: &[u8]) -> io::Result<Method> {
        if self.level == 0 {
            return Ok(Method::Store);
        }
        if data.len() < PROBE_SLICES * PROBE_SLICE {
            return Ok(Method::Deflate);
        }
        let step = data.len() / PROBE_SLICES;
        self.sample.clear();
        for i in 0..PROBE_SLICES {
            self.sample
                .extend_from_slice(&data[i * step..i * step + PROBE_SLICE]);
        }
        let counts = histogram(&self.sample);
        let n = self.sample.len() as u64;
        // The chance that two bytes are equal, sum(count²)/n², is 1/256 for
        // uniform bytes, 1/64 for base64, and well above 1/40 for text and
        // code.
        let collisions: u64 = counts.iter().map(|&count| count * count).sum();
        if collisions * 40 > n * n {
            return Ok(Method::Deflate);
        }
        self.probe.reset();
        self.scratch.clear();
        deflate(&mut self.probe, &self.sample, &mut self.scratch)?;
        let lz = self.scratch.len() as u64;
        let huffman = huffman_size(&counts);
        Ok(if lz * 100 >= n * 98 && huffman * 100 >= n * 98 {
            Method::Store
        } else if lz * 100 >= huffman * 98 {
            Method::Huffman
        } else {
            Method::Deflate
        })
    }
}

fn histogram(data: &[u8]) -> [u64; 256] {
    // Four tables, so that runs of one byte value do not serialize on one
    // counter.
    let mut counts = [[0u64; 256]; 4];
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        for (table, &byte) in counts.iter_mut().zip(chunk) {
            table[byte as usize] += 1;
        }
    }
    for &byte in chunks.remainder() {
        counts[0][byte as usize] += 1;
    }
    let mut total = [0u64; 256];
    for table in &counts {
        for (sum, count) in total.iter_mut().zip(table) {
            *sum += count;
        }
    }
    total
}

/// `data` as stored deflate blocks (the output is byte aligned before and
/// after them).
fn store(data: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(data.len() + data.len() / 65535 * 5 + 5);
    for chunk in data.chunks(65535) {
        // BFINAL=0, BTYPE=00 (stored), padded to the byte; LEN and NLEN.
        let len = chunk.len() as u16;
        out.push(0);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
}

/// Deflate's longest code, and the code length code's.
const MAX_BITS: u8 = 15;
const MAX_CL_BITS: u8 = 7;
/// The order in which the code length code's lengths are sent.
const CL_ORDER: [usize; 19] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

/// Deflate output, least significant bit first.
struct Bits<'a> {
    out: &'a mut Vec<u8>,
    acc: u64,
    len: u32,
}

impl Bits<'_> {
    /// Appends the `len` (at most 32) low bits of `value`.
    #[inline]
    fn put(&mut self, value: u32, len: u32) {
        self.acc |= u64::from(value) << self.len;
        self.len += len;
        if self.len >= 32 {
            self.out.extend_from_slice(&(self.acc as u32).to_le_bytes());
            self.acc >>= 32;
            self.len -= 32;
        }
    }

    /// Pads with zero bits to the next byte.
    fn align(&mut self) {
        let bytes = self.len.div_ceil(8) as usize;
        self.out.extend_from_slice(&self.acc.to_le_bytes()[..bytes]);
        self.acc = 0;
        self.len = 0;
    }
}

/// Huffman code lengths for symbols with these counts, none longer than
/// `max_bits`. Symbols that do not occur get none (length 0), except that
/// there are always at least two codes, as decoders want a complete code.
fn code_lengths(counts: &[u64], max_bits: u8) -> Vec<u8> {
    let mut counts = counts.to_vec();
    let mut used: Vec<usize> = (0..counts.len()).filter(|&s| counts[s] > 0).collect();
    // Unused codes complete a code of fewer than two symbols.
    let mut symbol = 0;
    while used.len() < 2 {
        if counts[symbol] == 0 {
            counts[symbol] = 1;
            used.push(symbol);
        }
        symbol += 1;
    }
    used.sort_unstable();
    loop {
        let lengths = unlimited_code_lengths(&counts, &used);
        if lengths.iter().all(|&len| len <= max_bits) {
            return lengths;
        }
        // Flatten the distribution until the tree is shallow enough (at
        // worst every count is 1 and the tree balanced).
        for &s in &used {
            counts[s] = counts[s].div_ceil(2);
        }
    }
}

/// Huffman's construction over the `used` symbols, with ties broken by
/// symbol so that the result is deterministic.
fn unlimited_code_lengths(counts: &[u64], used: &[usize]) -> Vec<u8> {
    let mut leaves = used.to_vec();
    leaves.sort_by_key(|&s| (counts[s], s));
    let n = leaves.len();
    // Nodes 0..n are the leaves in order, then the merged nodes, which are
    // made in order of weight: the two-queue construction.
    let mut weight: Vec<u64> = leaves.iter().map(|&s| counts[s]).collect();
    let mut parent = vec![0usize; 2 * n - 1];
    let (mut next_leaf, mut next_node) = (0, n);
    for _ in 0..n - 1 {
        let mut pick = || {
            let leaf_first = next_leaf < n
                && (next_node == weight.len() || weight[next_leaf] <= weight[next_node]);
            if leaf_first {
                next_leaf += 1;
                next_leaf - 1
            } else {
                next_node += 1;
                next_node - 1
            }
        };
        let (a, b) = (pick(), pick());
        parent[a] = weight.len();
        parent[b] = weight.len();
        weight.push(weight[a] + weight[b]);
    }
    // A parent comes after its children; the root is last.
    let mut depth = vec![0u8; 2 * n - 1];
    for node in (0..2 * n - 2).rev() {
        depth[node] = depth[parent[node]].saturating_add(1);
    }
    let mut lengths = vec![0u8; counts.len()];
    for (leaf, &symbol) in leaves.iter().enumerate() {
        lengths[symbol] = depth[leaf];
    }
    lengths
}

/// The canonical codes for these lengths (RFC 1951, 3.2.2), bit-reversed
/// for least-significant-bit-first output.
fn canonical_codes(lengths: &[u8]) -> Vec<u32> {
    let mut count = [0u32; 16];
    for &len in lengths {
        count[len as usize] += 1;
    }
    count[0] = 0;
    let mut next = [0u32; 16];
    let mut code = 0;
    for bits in 1..16 {
        code = (code + count[bits - 1]) << 1;
        next[bits] = code;
    }
    lengths
        .iter()
        .map(|&len| {
            if len == 0 {
                return 0;
            }
            let code = next[len as usize];
            next[len as usize] += 1;
            code.reverse_bits() >> (32 - u32::from(len))
        })
        .collect()
}

/// The literal/length code lengths of a Huffman-only block with these byte
/// counts (symbol 256 ends the block).
fn literal_lengths(counts: &[u64; 256]) -> Vec<u8> {
    let mut with_end = counts.to_vec();
    with_end.push(1);
    code_lengths(&with_end, MAX_BITS)
}

/// About how many bytes a Huffman-only block with these byte counts takes
/// (the code lengths' header is a few dozen bytes more).
fn huffman_size(counts: &[u64; 256]) -> u64 {
    let lengths = literal_lengths(counts);
    let bits: u64 = counts
        .iter()
        .zip(&lengths)
        .map(|(&count, &len)| count * u64::from(len))
        .sum();
    bits / 8 + 64
}

/// `data` as one dynamic Huffman block of literals only, then a sync flush.
fn huffman_only(data: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(data.len() + 512);
    let lengths = literal_lengths(&histogram(data));
    let codes = canonical_codes(&lengths);

    // The lengths of the 257 literal/length codes and of the one distance
    // code (length 0: none), run-length coded (RFC 1951, 3.2.7): 16 repeats
    // the previous length 3-6 times, 17 and 18 give 3-10 and 11-138 zeros.
    let mut all = lengths.clone();
    all.push(0);
    let mut tokens: Vec<(u8, u32, u32)> = Vec::new(); // symbol, extra bits
    let mut i = 0;
    while i < all.len() {
        let len = all[i];
        let run = all[i..].iter().take_while(|&&l| l == len).count();
        if len == 0 && run >= 11 {
            let run = run.min(138);
            tokens.push((18, run as u32 - 11, 7));
            i += run;
        } else if len == 0 && run >= 3 {
            let run = run.min(10);
            tokens.push((17, run as u32 - 3, 3));
            i += run;
        } else {
            tokens.push((len, 0, 0));
            i += 1;
            let mut repeats = run - 1;
            while len != 0 && repeats >= 3 {
                let n = repeats.min(6);
                tokens.push((16, n as u32 - 3, 2));
                i += n;
                repeats -= n;
            }
        }
    }
    let mut cl_counts = [0u64; 19];
    for &(symbol, _, _) in &tokens {
        cl_counts[symbol as usize] += 1;
    }
    let cl_lengths = code_lengths(&cl_counts, MAX_CL_BITS);
    let cl_codes = canonical_codes(&cl_lengths);
    let hclen = CL_ORDER
        .iter()
        .rposition(|&s| cl_lengths[s] != 0)
        .map_or(4, |last| (last + 1).max(4));

    let mut bits = Bits {
        out,
        acc: 0,
        len: 0,
    };
    bits.put(0, 1); // not the last block
    bits.put(2, 2); // dynamic Huffman codes
    bits.put(0, 5); // HLIT: 257 literal/length codes
    bits.put(0, 5); // HDIST: 1 distance code
    bits.put(hclen as u32 - 4, 4);
    for &symbol in &CL_ORDER[..hclen] {
        bits.put(u32::from(cl_lengths[symbol]), 3);
    }
    for &(symbol, extra, extra_bits) in &tokens {
        let symbol = symbol as usize;
        bits.put(cl_codes[symbol], u32::from(cl_lengths[symbol]));
        bits.put(extra, extra_bits);
    }
    for &byte in data {
        bits.put(codes[byte as usize], u32::from(lengths[byte as usize]));
    }
    bits.put(codes[256], u32::from(lengths[256]));
    // Sync flush: an empty stored block, byte aligned.
    bits.put(0, 3);
    bits.align();
    out.extend_from_slice(&[0, 0, 0xff, 0xff]);
}

/// Feeds all of `data` to `compress` and sync-flushes, appending to `out`.
fn deflate(compress: &mut Compress, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    // Room for stored blocks' worst case (5 bytes per 64 KiB) and the flush,
    // so this normally takes a single call.
    out.reserve(data.len() + data.len() / 1024 + 256);
    let start = compress.total_in();
    loop {
        let (before_in, before_out) = (compress.total_in(), out.len());
        let taken = (before_in - start) as usize;
        compress
            .compress_vec(&data[taken..], out, FlushCompress::Sync)
            .map_err(io::Error::other)?;
        let taken = (compress.total_in() - start) as usize;
        // The flush is complete once all input is taken and the output did
        // not fill the buffer (zlib's rule).
        if taken == data.len() && out.len() < out.capacity() {
            return Ok(());
        }
        if compress.total_in() == before_in && out.len() == before_out && out.len() < out.capacity()
        {
            return Err(io::Error::other("deflate made no progress"));
        }
        out.reserve(64 * 1024);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::process::{Command, Stdio};

    /// Deterministic pseudo-random bytes (xorshift64*).
    fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// Compressible pseudo-text: words drawn from a small vocabulary.
    fn text(len: usize, seed: u64) -> Vec<u8> {
        let words: Vec<&str> = "the layer image build run copy from stage cache digest \
            manifest config export gzip zstd block thread of and to \
            /usr/lib/x86_64-linux-gnu/ libc.so.6 #include <stdio.h>\n \n"
            .split(' ')
            .collect();
        let mut out = Vec::with_capacity(len + 64);
        let picks = random(len / 2 + 16, seed);
        let mut i = 0;
        while out.len() < len {
            out.extend_from_slice(words[picks[i] as usize % words.len()].as_bytes());
            out.push(b' ');
            i = (i + 1) % picks.len();
        }
        out.truncate(len);
        out
    }

    fn run(data: &[u8], compression: Compression, threads: usize) -> (Vec<u8>, Compressed) {
        let mut out = Vec::new();
        let result = compress(&mut Cursor::new(data), &mut out, compression, threads).unwrap();
        (out, result)
    }

    fn decompress(bytes: &[u8], compression: Compression) -> Vec<u8> {
        let mut out = Vec::new();
        match compression {
            Compression::Uncompressed => out.extend_from_slice(bytes),
            Compression::Gzip { .. } => {
                flate2::read::GzDecoder::new(bytes)
                    .read_to_end(&mut out)
                    .unwrap();
                let mut multi = Vec::new();
                flate2::read::MultiGzDecoder::new(bytes)
                    .read_to_end(&mut multi)
                    .unwrap();
                assert_eq!(multi, out);
            }
            Compression::Zstd { .. } => {
                zstd::stream::read::Decoder::new(bytes)
                    .unwrap()
                    .read_to_end(&mut out)
                    .unwrap();
            }
        }
        out
    }

    fn inputs() -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("empty", Vec::new()),
            ("tiny", b"hello\n".to_vec()),
            ("one block", text(BLOCK_SIZE, 1)),
            ("block + 1", text(BLOCK_SIZE + 1, 2)),
            ("random", random(3 * BLOCK_SIZE + 12345, 3)),
            ("text", text(4 * BLOCK_SIZE - 7, 4)),
            ("base64", base64(2 * BLOCK_SIZE + 99, 5)),
        ]
    }

    const KINDS: [Compression; 5] = [
        Compression::Uncompressed,
        Compression::Gzip { level: 6 },
        Compression::Gzip { level: 1 },
        Compression::Gzip { level: 0 },
        Compression::Zstd { level: 3 },
    ];

    #[test]
    fn round_trips_and_digests() {
        for (name, data) in inputs() {
            for compression in KINDS {
                let (out, result) = run(&data, compression, 2);
                assert!(
                    decompress(&out, compression) == data,
                    "{name} {compression:?}"
                );
                assert_eq!(result.diff_id, Digest::of(&data), "{name} {compression:?}");
                assert_eq!(result.uncompressed_size, data.len() as u64);
                assert_eq!(result.digest, Digest::of(&out), "{name} {compression:?}");
                assert_eq!(result.size, out.len() as u64);
                if compression == Compression::Uncompressed {
                    assert_eq!(result.digest, result.diff_id);
                }
            }
        }
    }

    #[test]
    fn gzip_every_level_round_trips() {
        let data = [text(2 * BLOCK_SIZE + 999, 5), random(BLOCK_SIZE / 2, 6)].concat();
        for level in 0..=9 {
            let compression = Compression::Gzip { level };
            let (out, _) = run(&data, compression, 3);
            assert!(decompress(&out, compression) == data, "level {level}");
        }
    }

    #[test]
    fn zstd_levels_round_trip() {
        let data = text(BLOCK_SIZE + 3, 7);
        for level in [1, 3, 9, 19] {
            let compression = Compression::Zstd { level };
            let (out, _) = run(&data, compression, 2);
            assert!(decompress(&out, compression) == data, "level {level}");
        }
    }

    /// A reader that returns short reads of varying size.
    struct Choppy<'a> {
        data: &'a [u8],
        n: usize,
    }

    impl Read for Choppy<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.n = self.n * 7 % 100_003 + 1;
            if self.n.is_multiple_of(5) {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let len = self.n.min(buf.len()).min(self.data.len());
            buf[..len].copy_from_slice(&self.data[..len]);
            self.data = &self.data[len..];
            Ok(len)
        }
    }

    #[test]
    fn output_does_not_depend_on_threads_or_reads() {
        // Enough blocks that the workers get different sets of blocks, and
        // zstd several jobs.
        let data = [
            text(3 * BLOCK_SIZE, 8),
            random(BLOCK_SIZE, 9),
            text(3 * BLOCK_SIZE + 5, 10),
            random(BLOCK_SIZE / 2, 11),
            text(2 * BLOCK_SIZE, 12),
        ]
        .concat();
        assert!(data.len() > 2 * ZSTD_JOB_SIZE as usize);
        for (compression, data) in [
            (Compression::Gzip { level: 6 }, &data[..]),
            (Compression::Gzip { level: 9 }, &data[..4 * BLOCK_SIZE + 3]),
            (Compression::Zstd { level: 1 }, &data),
            (Compression::Zstd { level: 3 }, &data),
        ] {
            let (reference, _) = run(data, compression, 1);
            assert!(decompress(&reference, compression) == *data);
            for threads in [2, 4] {
                let (out, _) = run(data, compression, threads);
                assert!(
                    out == reference,
                    "{compression:?} with {threads} threads differs"
                );
            }
            let mut out = Vec::new();
            let mut choppy = Choppy { data, n: 1 };
            compress(&mut choppy, &mut out, compression, 2).unwrap();
            assert!(out == reference, "{compression:?} with short reads differs");
        }
    }

    #[test]
    fn gzip_header_and_trailer_are_fixed() {
        let (out, _) = run(b"", Compression::gzip(), 0);
        assert_eq!(
            out,
            [
                0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255, // header
                3, 0, // empty final block
                0, 0, 0, 0, 0, 0, 0, 0 // crc, isize
            ]
        );
        let (out, _) = run(b"abc", Compression::Gzip { level: 9 }, 1);
        assert_eq!(out[8], 2);
        assert_eq!(
            out[out.len() - 8..out.len() - 4],
            0x352441c2u32.to_le_bytes()
        );
        assert_eq!(out[out.len() - 4..], 3u32.to_le_bytes());
    }

    /// base64 of random bytes, in 76-column lines as `base64` writes it.
    fn base64(len: usize, seed: u64) -> Vec<u8> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out: Vec<u8> = random(len, seed)
            .iter()
            .map(|&b| ALPHABET[b as usize % 64])
            .collect();
        for i in (76..len).step_by(77) {
            out[i] = b'\n';
        }
        out
    }

    #[test]
    fn blocks_are_stored_or_huffman_coded_when_deflate_gains_nothing() {
        let mut deflater = Deflater::new(6);
        let mut choose = |data: &[u8]| deflater.choose(data).unwrap();
        assert_eq!(choose(&random(BLOCK_SIZE, 13)), Method::Store);
        assert_eq!(choose(&base64(BLOCK_SIZE, 14)), Method::Huffman);
        assert_eq!(choose(&text(BLOCK_SIZE, 15)), Method::Deflate);
        // A block that is half text, random data that repeats within the
        // sample, base64 that repeats.
        let half = [text(BLOCK_SIZE / 2, 16), random(BLOCK_SIZE / 2, 17)].concat();
        assert_eq!(choose(&half), Method::Deflate);
        let unit = random(3000, 18);
        let repeats: Vec<u8> = unit.iter().copied().cycle().take(BLOCK_SIZE).collect();
        assert_eq!(choose(&repeats), Method::Deflate);
        let unit = base64(3000, 19);
        let repeats: Vec<u8> = unit.iter().copied().cycle().take(BLOCK_SIZE).collect();
        assert_eq!(choose(&repeats), Method::Deflate);
        // Small blocks are always deflated, level 0 always stored.
        assert_eq!(choose(&random(60_000, 20)), Method::Deflate);
        assert_eq!(
            Deflater::new(0).choose(&text(100, 21)).unwrap(),
            Method::Store
        );

        // Stored blocks cost 5 bytes per 64 KiB.
        let data = random(3 * BLOCK_SIZE + 5, 22);
        let (out, _) = run(&data, Compression::gzip(), 2);
        assert!(decompress(&out, Compression::gzip()) == data);
        assert!(out.len() < data.len() + 300, "{}", out.len());
        // Huffman codes get base64 to 6 bits a byte or so.
        let data = base64(3 * BLOCK_SIZE + 5, 23);
        let (out, _) = run(&data, Compression::gzip(), 2);
        assert!(decompress(&out, Compression::gzip()) == data);
        assert!(out.len() < data.len() * 77 / 100, "{}", out.len());
    }

    /// A raw deflate stream of one Huffman-only block.
    fn inflate_huffman_only(data: &[u8]) -> Vec<u8> {
        let mut stream = Vec::new();
        huffman_only(data, &mut stream);
        stream.extend_from_slice(&[0x03, 0x00]);
        let mut out = Vec::new();
        flate2::read::DeflateDecoder::new(&stream[..])
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn huffman_only_blocks_decode() {
        let mut cases = vec![
            Vec::new(),
            vec![7],
            vec![0; 1000],
            vec![255; 100_000],
            b"abababababbbbbbbbbbbbbbbba".to_vec(),
            (0..=255u8).collect(),
            random(100_000, 24),
            base64(300_000, 25),
            text(200_000, 26),
        ];
        // Fibonacci counts make the deepest possible tree: 30 symbols would
        // need codes of up to 29 bits, more than deflate's 15.
        let mut skewed = Vec::new();
        let (mut a, mut b) = (1usize, 1usize);
        for symbol in 0..30u8 {
            skewed.extend(std::iter::repeat_n(symbol * 7, a));
            (a, b) = (b, a + b);
        }
        let counts = histogram(&skewed);
        assert!(literal_lengths(&counts).iter().all(|&len| len <= 15));
        let mut with_end = counts.to_vec();
        with_end.push(1);
        let used: Vec<usize> = (0..257).filter(|&s| with_end[s] > 0).collect();
        assert!(
            *unlimited_code_lengths(&with_end, &used)
                .iter()
                .max()
                .unwrap()
                > 15
        );
        cases.push(skewed);
        for data in cases {
            assert!(inflate_huffman_only(&data) == data, "{} bytes", data.len());
        }
    }

    #[test]
    fn dictionary_helps() {
        // The same 100 KiB of random data repeated: only back-references
        // across block boundaries (into the 32 KiB window) can shrink it
        // right after a boundary, so compare with an unprimed compressor.
        let unit = random(20_000, 11);
        let data: Vec<u8> = unit.iter().copied().cycle().take(4 * BLOCK_SIZE).collect();
        let (out, _) = run(&data, Compression::gzip(), 2);
        assert!(decompress(&out, Compression::gzip()) == data);
        let mut without = 0;
        for chunk in data.chunks(BLOCK_SIZE) {
            let mut block = Block::new();
            block.input.extend_from_slice(chunk);
            Deflater::new(6).compress(&mut block).unwrap();
            without += block.output.len();
        }
        assert!(out.len() + 15_000 < without, "{} vs {without}", out.len());
    }

    fn external_tool_accepts(tool: &str, args: &[&str], compressed: &[u8], data: &[u8]) {
        if !std::path::Path::new(tool).exists() {
            eprintln!("{tool} not installed, skipped");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, compressed).unwrap();
        let test = Command::new(tool)
            .args(args)
            .arg("-t")
            .arg(&path)
            .status()
            .unwrap();
        assert!(test.success(), "{tool} -t rejected the output");
        let out = Command::new(tool)
            .args(args)
            .arg("-dc")
            .arg(&path)
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(out.stdout == data, "{tool} -dc gave different bytes");
    }

    #[test]
    fn external_tools_accept_the_output() {
        for (name, data) in inputs() {
            for level in [0, 6, 9] {
                let (out, _) = run(&data, Compression::Gzip { level }, 2);
                eprintln!("gzip {name} level {level}");
                external_tool_accepts("/bin/gzip", &[], &out, &data);
            }
            let (out, _) = run(&data, Compression::zstd(), 2);
            eprintln!("zstd {name}");
            external_tool_accepts("/usr/bin/zstd", &["-q"], &out, &data);
        }
    }

    /// Yields `ok` bytes of data, then fails.
    struct FailingReader {
        data: Vec<u8>,
        pos: usize,
        ok: usize,
    }

    impl Read for FailingReader {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.pos >= self.ok {
                return Err(io::Error::other("disk on fire"));
            }
            let len = buf.len().min(self.ok - self.pos).min(64 * 1024);
            buf[..len].copy_from_slice(&self.data[self.pos..self.pos + len]);
            self.pos += len;
            Ok(len)
        }
    }

    /// Accepts `ok` bytes, then fails.
    struct FailingWriter {
        written: usize,
        ok: usize,
    }

    impl Write for FailingWriter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.written >= self.ok {
                return Err(io::Error::other("pipe burst"));
            }
            let len = buf.len().min(self.ok - self.written);
            self.written += len;
            Ok(len)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn errors_propagate() {
        let data = text(5 * BLOCK_SIZE, 12);
        for compression in [
            Compression::Uncompressed,
            Compression::Gzip { level: 1 },
            Compression::Zstd { level: 1 },
        ] {
            let size = run(&data, compression, 2).0.len();
            for threads in [1, 2, 4] {
                for ok in [0, 100, 2 * BLOCK_SIZE + 17, 4 * BLOCK_SIZE] {
                    let mut reader = FailingReader {
                        data: data.clone(),
                        pos: 0,
                        ok,
                    };
                    let err =
                        compress(&mut reader, &mut io::sink(), compression, threads).unwrap_err();
                    assert_eq!(err.to_string(), "disk on fire", "{compression:?}");
                }
                for ok in [0, 5, size / 3, size - 1] {
                    let mut writer = FailingWriter { written: 0, ok };
                    let err = compress(&mut Cursor::new(&data), &mut writer, compression, threads)
                        .unwrap_err();
                    assert_eq!(err.to_string(), "pipe burst", "{compression:?} {ok}");
                }
            }
        }
    }

    #[test]
    fn bad_levels_are_refused() {
        for compression in [
            Compression::Gzip { level: 10 },
            Compression::Zstd { level: 0 },
            Compression::Zstd { level: 23 },
        ] {
            let err =
                compress(&mut Cursor::new(b"x"), &mut Vec::new(), compression, 1).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn parses_exporter_options() {
        use Compression::*;
        let ok = |name, level| Compression::parse(name, level).unwrap();
        assert_eq!(ok("gzip", None), Gzip { level: 6 });
        assert_eq!(ok("gzip", Some("0")), Gzip { level: 0 });
        assert_eq!(ok("gzip", Some("9")), Gzip { level: 9 });
        assert_eq!(ok("gzip", Some("-1")), Gzip { level: 6 });
        assert_eq!(ok("zstd", None), Zstd { level: 3 });
        assert_eq!(ok("zstd", Some("0")), Zstd { level: 1 });
        assert_eq!(ok("zstd", Some("19")), Zstd { level: 19 });
        assert_eq!(ok("zstd", Some("22")), Zstd { level: 22 });
        assert_eq!(ok("uncompressed", None), Uncompressed);
        assert_eq!(ok("uncompressed", Some("5")), Uncompressed);

        let err = |name, level| Compression::parse(name, level).unwrap_err();
        assert!(err("gzip", Some("10")).contains("out of range for gzip"));
        assert!(err("gzip", Some("-2")).contains("expected 0 to 9"));
        assert!(err("zstd", Some("23")).contains("out of range for zstd"));
        assert!(err("zstd", Some("-1")).contains("expected 0 to 22"));
        assert!(err("gzip", Some("fast")).contains("expected an integer"));
        assert!(err("gzip", Some("")).contains("expected an integer"));
        assert!(err("estargz", None).contains("not supported"));
        assert!(err("zstd:chunked", None).contains("not supported"));
        assert!(err("lz4", None).contains("unsupported compression type \"lz4\""));
        assert!(err("GZIP", None).contains("unsupported"));

        assert_eq!(
            Uncompressed.oci_media_type(),
            "application/vnd.oci.image.layer.v1.tar"
        );
        assert_eq!(
            Compression::gzip().oci_media_type(),
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        assert_eq!(
            Compression::zstd().oci_media_type(),
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
    }
}
