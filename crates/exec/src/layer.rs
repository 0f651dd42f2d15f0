//! Deterministic layer tarballs.
//!
//! Two writes of the same entries give the same bytes: entries are written
//! in the order given (callers sort them), owners are numeric with empty
//! names, only the modification time is kept (whole seconds), and names
//! that do not fit a ustar header get a PAX `path`/`linkpath` record. The
//! diff ID (sha256 of the uncompressed tar) is computed while writing.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use rbuild_oci::{Digest, HashingWriter};

use crate::patterns::PatternMatcher;

/// What one layer entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Directory,
    /// A regular file whose content is read from this host path.
    File {
        source: std::path::PathBuf,
        size: u64,
    },
    /// A regular file with inline content (heredocs, generated files).
    Bytes(Vec<u8>),
    Symlink {
        target: String,
    },
    /// A hard link to an earlier entry of the same layer.
    Hardlink {
        target: String,
    },
    /// A character device node.
    CharDevice {
        major: u32,
        minor: u32,
    },
    /// A block device node.
    BlockDevice {
        major: u32,
        minor: u32,
    },
    /// A named pipe.
    Fifo,
}

/// One entry of a layer: a path relative to the root, without a leading or
/// trailing slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits including setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Seconds since the epoch.
    pub mtime: u64,
    /// Extended attributes (name, value), written as PAX
    /// `SCHILY.xattr.<name>` records sorted by name.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// The bytes of the files a layer (plain, gzip or zstd tar) holds: its
/// regular files, and its symlinks by their target's length, as the Docker
/// daemon's directory walk counts a layer's size (what `docker history`
/// shows). Hard links add nothing: their file is counted once.
pub fn content_size(layer: impl io::Read) -> io::Result<u64> {
    let mut archive = tar::Archive::new(crate::compression::decompress(layer)?);
    let mut total = 0u64;
    for entry in archive.entries()? {
        let entry = entry?;
        total += match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => entry.size(),
            tar::EntryType::Symlink => entry.link_name_bytes().map_or(0, |t| t.len() as u64),
            _ => 0,
        };
    }
    Ok(total)
}

/// Writes a layer tar to `W`, hashing it on the way.
pub struct LayerWriter<W: Write> {
    builder: tar::Builder<HashingWriter<W>>,
    /// No entry's mtime is later than this (SOURCE_DATE_EPOCH).
    latest: Option<u64>,
}

impl<W: Write> LayerWriter<W> {
    pub fn new(out: W) -> LayerWriter<W> {
        LayerWriter {
            builder: tar::Builder::new(HashingWriter::new(out)),
            latest: None,
        }
    }

    /// Clamps modification times to `epoch` (seconds), as BuildKit's
    /// `rewrite-timestamp` does with SOURCE_DATE_EPOCH: files a build
    /// writes then have the same times on every machine, older files keep
    /// theirs.
    pub fn clamp_mtimes(mut self, epoch: Option<u64>) -> LayerWriter<W> {
        self.latest = epoch;
        self
    }

    /// Appends one entry.
    pub fn add(&mut self, entry: &Entry) -> io::Result<()> {
        let mut header = tar::Header::new_ustar();
        header.set_mode(entry.mode & 0o7777);
        header.set_uid(entry.uid);
        header.set_gid(entry.gid);
        header.set_mtime(self.latest.map_or(entry.mtime, |e| entry.mtime.min(e)));
        header.set_size(0);
        let mut pax: Vec<(String, &[u8])> = Vec::new();
        let name = match entry.kind {
            EntryKind::Directory => format!("{}/", entry.path),
            _ => entry.path.clone(),
        };
        if header.set_path(&name).is_err() || !name.is_ascii() {
            pax.push(("path".into(), name.as_bytes()));
            set_truncated_name(&mut header, &name);
        }
        let link = match &entry.kind {
            EntryKind::Symlink { target } | EntryKind::Hardlink { target } => Some(target.as_str()),
            _ => None,
        };
        if let Some(target) = link
            && (header.set_link_name(target).is_err() || !target.is_ascii())
        {
            pax.push(("linkpath".into(), target.as_bytes()));
            // The ustar field is ignored when a PAX record is present.
            let _ = header.set_link_name("");
        }
        pax.extend(xattr_records(entry)?);
        if !pax.is_empty() {
            self.builder
                .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), *v)))?;
        }
        match &entry.kind {
            EntryKind::Directory => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_cksum();
                self.builder.append(&header, io::empty())
            }
            EntryKind::Symlink { .. } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_cksum();
                self.builder.append(&header, io::empty())
            }
            EntryKind::Hardlink { .. } => {
                header.set_entry_type(tar::EntryType::Link);
                header.set_cksum();
                self.builder.append(&header, io::empty())
            }
            EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } => {
                header.set_entry_type(if matches!(entry.kind, EntryKind::CharDevice { .. }) {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                });
                header.set_device_major(*major)?;
                header.set_device_minor(*minor)?;
                header.set_cksum();
                self.builder.append(&header, io::empty())
            }
            EntryKind::Fifo => {
                header.set_entry_type(tar::EntryType::Fifo);
                header.set_cksum();
                self.builder.append(&header, io::empty())
            }
            EntryKind::Bytes(bytes) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(bytes.len() as u64);
                header.set_cksum();
                self.builder.append(&header, bytes.as_slice())
            }
            EntryKind::File { source, size } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(*size);
                header.set_cksum();
                let file = File::open(source)?;
                // A file that changed size since it was listed would make
                // a corrupt tar; refuse instead.
                let reader = ExactSize {
                    inner: file,
                    remaining: *size,
                    path: source,
                };
                self.builder.append(&header, reader)
            }
        }
    }

    /// Writes the end-of-archive marker and returns the diff ID, the
    /// uncompressed size and the underlying writer.
    pub fn finish(self) -> io::Result<(Digest, u64, W)> {
        let mut out = self.builder.into_inner()?;
        out.flush()?;
        Ok(out.finish())
    }
}

/// The PAX `SCHILY.xattr.<name>` records of an entry, sorted by name so
/// the output does not depend on the order the caller listed them in.
/// Values are raw bytes. A name that PAX cannot carry (empty, with `=` or
/// NUL) or that appears twice is refused.
fn xattr_records(entry: &Entry) -> io::Result<Vec<(String, &[u8])>> {
    let mut attrs: Vec<&(String, Vec<u8>)> = entry.xattrs.iter().collect();
    attrs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: Vec<(String, &[u8])> = Vec::with_capacity(attrs.len());
    for (i, (name, value)) in attrs.iter().enumerate() {
        let invalid = |why: &str| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: extended attribute {name:?} {why}", entry.path),
            )
        };
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(invalid("cannot be stored in a tar PAX record"));
        }
        if i > 0 && attrs[i - 1].0 == *name {
            return Err(invalid("is listed twice"));
        }
        out.push((format!("SCHILY.xattr.{name}"), value.as_slice()));
    }
    Ok(out)
}

/// A ustar name field for a name that needs a PAX record: the last 100
/// bytes, cut at a character boundary, so old readers still see something.
fn set_truncated_name(header: &mut tar::Header, name: &str) {
    let bytes = name.as_bytes();
    let mut start = bytes.len().saturating_sub(99);
    while !name.is_char_boundary(start) {
        start += 1;
    }
    let tail: String = name[start..]
        .chars()
        .map(|c| if c.is_ascii() { c } else { '_' })
        .collect();
    if let Some(ustar) = header.as_ustar_mut() {
        ustar.name = [0; 100];
        ustar.prefix = [0; 155];
        ustar.name[..tail.len()].copy_from_slice(tail.as_bytes());
    }
}

struct ExactSize<'a, R> {
    inner: R,
    remaining: u64,
    path: &'a Path,
}

impl<R: Read> Read for ExactSize<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let max = buf
            .len()
            .min(self.remaining.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} shrank while it was being copied", self.path.display()),
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Lists a directory tree as layer entries, sorted, with `prefix` prepended
/// to every path. Symlinks are kept as symlinks; owners and modes are the
/// files' own.
pub fn entries_of_tree(dir: &Path, prefix: &str) -> io::Result<Vec<Entry>> {
    entries_of_tree_filtered(dir, prefix, &[])
}

/// Which files of a tree to skip: `excludes` is matched against paths
/// relative to its own root, `dir` being at `dir_rel` below that root.
#[derive(Clone, Copy)]
pub struct Exclude<'a> {
    pub excludes: &'a PatternMatcher,
    pub dir_rel: &'a str,
}

/// Like [`entries_of_tree`], leaving out what any of `excludes` excludes.
/// An excluded directory is still entered when every matcher excluding it
/// may re-include something below it, and then appears only if something
/// in it does.
pub fn entries_of_tree_filtered(
    dir: &Path,
    prefix: &str,
    excludes: &[Exclude<'_>],
) -> io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    let bases: Vec<(&PatternMatcher, String)> = excludes
        .iter()
        .map(|e| (e.excludes, e.dir_rel.to_string()))
        .collect();
    walk(dir, prefix, &bases, &mut out)?;
    Ok(out)
}

fn walk(
    dir: &Path,
    prefix: &str,
    excludes: &[(&PatternMatcher, String)],
    out: &mut Vec<Entry>,
) -> io::Result<()> {
    let mut names: Vec<_> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    names.sort();
    for name in names {
        let Some(name_str) = name.to_str() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: file name is not UTF-8", dir.join(&name).display()),
            ));
        };
        let path = dir.join(&name);
        let rel = if prefix.is_empty() {
            name_str.to_string()
        } else {
            format!("{prefix}/{name_str}")
        };
        let meta = fs::symlink_metadata(&path)?;
        let child: Vec<(&PatternMatcher, String)> = excludes
            .iter()
            .map(|(m, base)| {
                (
                    *m,
                    if base.is_empty() {
                        name_str.to_string()
                    } else {
                        format!("{base}/{name_str}")
                    },
                )
            })
            .collect();
        let mut excluding = child.iter().filter(|(m, r)| m.excludes(r)).peekable();
        if excluding.peek().is_none() {
            out.push(entry_from_metadata(&path, rel.clone(), &meta)?);
            if meta.is_dir() {
                walk(&path, &rel, &child, out)?;
            }
        } else if meta.is_dir() && excluding.all(|(m, r)| m.may_include_below(r)) {
            let mut inner = Vec::new();
            walk(&path, &rel, &child, &mut inner)?;
            if !inner.is_empty() {
                out.push(entry_from_metadata(&path, rel.clone(), &meta)?);
                out.append(&mut inner);
            }
        }
    }
    Ok(())
}

/// An entry for a host file, keeping its type, mode, owner and mtime.
pub fn entry_from_metadata(path: &Path, rel: String, meta: &fs::Metadata) -> io::Result<Entry> {
    let kind = if meta.is_dir() {
        EntryKind::Directory
    } else if meta.file_type().is_symlink() {
        let target = fs::read_link(path)?;
        let target = target.to_str().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: link target is not UTF-8", path.display()),
            )
        })?;
        EntryKind::Symlink {
            target: target.to_string(),
        }
    } else if meta.is_file() {
        EntryKind::File {
            source: path.to_path_buf(),
            size: meta.len(),
        }
    } else {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "{}: sockets, fifos and devices cannot be copied",
                path.display()
            ),
        ));
    };
    Ok(Entry {
        path: rel,
        kind,
        mode: meta.permissions().mode() & 0o7777,
        uid: u64::from(meta.uid()),
        gid: u64::from(meta.gid()),
        mtime: u64::try_from(meta.mtime()).unwrap_or(0),
        xattrs: Vec::new(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A layer tarball of `entries` and its diff ID, for tests.
    pub(crate) fn layer_bytes(entries: &[Entry]) -> (Digest, Vec<u8>) {
        let mut w = LayerWriter::new(Vec::new());
        for e in entries {
            w.add(e).unwrap();
        }
        let (d, _, bytes) = w.finish().unwrap();
        (d, bytes)
    }

    fn entry(path: &str, kind: EntryKind) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1,
            xattrs: Vec::new(),
        }
    }

    #[test]
    fn deterministic_with_long_and_unicode_names() {
        let long = format!("d/{}", "x".repeat(200));
        let entries = vec![
            Entry {
                mode: 0o755,
                ..entry("d", EntryKind::Directory)
            },
            entry(&long, EntryKind::Bytes(b"hi".to_vec())),
            entry(
                "d/ünï",
                EntryKind::Symlink {
                    target: format!("/{}/t", "y".repeat(150)),
                },
            ),
            entry(
                "d/h",
                EntryKind::Hardlink {
                    target: long.clone(),
                },
            ),
        ];
        let write = || {
            let mut w = LayerWriter::new(Vec::new());
            for e in &entries {
                w.add(e).unwrap();
            }
            w.finish().unwrap()
        };
        let (d1, size, bytes) = write();
        let (d2, _, _) = write();
        assert_eq!(d1, d2);
        assert_eq!(d1, Digest::of(&bytes));
        assert_eq!(size, bytes.len() as u64);

        let mut archive = tar::Archive::new(bytes.as_slice());
        let names: Vec<(String, Option<String>)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let link = e
                    .link_name()
                    .unwrap()
                    .map(|l| l.to_string_lossy().into_owned());
                (e.path().unwrap().to_string_lossy().into_owned(), link)
            })
            .collect();
        assert_eq!(names[0].0, "d/");
        assert_eq!(names[1].0, long);
        assert_eq!(
            names[2],
            ("d/ünï".to_string(), Some(format!("/{}/t", "y".repeat(150))))
        );
        assert_eq!(names[3], ("d/h".to_string(), Some(long)));
    }

    /// PAX records ("LEN key=value\n", LEN counting the whole record) as
    /// (key, value), by their lengths.
    fn parse_pax(mut data: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let sp = data.iter().position(|&b| b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&data[..sp]).unwrap().parse().unwrap();
            let (record, rest) = data.split_at(len);
            assert_eq!(record.last(), Some(&b'\n'));
            let kv = &record[sp + 1..len - 1];
            let eq = kv.iter().position(|&b| b == b'=').unwrap();
            out.push((
                String::from_utf8(kv[..eq].to_vec()).unwrap(),
                kv[eq + 1..].to_vec(),
            ));
            data = rest;
        }
        out
    }

    #[test]
    fn devices_fifos_and_xattrs() {
        let entries = vec![
            entry("dev/null", EntryKind::CharDevice { major: 1, minor: 3 }),
            entry("dev/sda", EntryKind::BlockDevice { major: 8, minor: 0 }),
            entry("p", EntryKind::Fifo),
            Entry {
                // Listed out of order; written sorted.
                xattrs: vec![
                    ("user.z".into(), b"\0bin\xffary\n".to_vec()),
                    ("security.capability".into(), vec![1, 0, 0, 2, 0, 0x20]),
                ],
                ..entry("ping", EntryKind::Bytes(b"x".to_vec()))
            },
        ];
        let write = |entries: &[Entry]| {
            let mut w = LayerWriter::new(Vec::new());
            for e in entries {
                w.add(e).unwrap();
            }
            w.finish().unwrap().2
        };
        let bytes = write(&entries);
        let mut reordered = entries.clone();
        reordered[3].xattrs.reverse();
        assert_eq!(write(&reordered), bytes);

        // Raw members, PAX headers included: the tar crate's own PAX
        // parser splits records at newlines, which binary values contain.
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut seen = Vec::new();
        let mut pax = Vec::new();
        for e in archive.entries().unwrap().raw(true) {
            let mut e = e.unwrap();
            let h = e.header().clone();
            if h.entry_type() == tar::EntryType::XHeader {
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                pax = parse_pax(&data);
                continue;
            }
            seen.push((
                e.path().unwrap().display().to_string(),
                h.entry_type(),
                // Blank (not a number) except for devices.
                h.device_major().ok().flatten(),
                h.device_minor().ok().flatten(),
                std::mem::take(&mut pax),
            ));
        }
        use tar::EntryType as T;
        assert_eq!(seen[0].0, "dev/null");
        assert_eq!(
            (seen[0].1, seen[0].2, seen[0].3),
            (T::Char, Some(1), Some(3))
        );
        assert_eq!(
            (seen[1].1, seen[1].2, seen[1].3),
            (T::Block, Some(8), Some(0))
        );
        assert_eq!(seen[2].1, T::Fifo);
        assert_eq!(seen[3].1, T::Regular);
        assert_eq!(
            seen[3].4,
            vec![
                (
                    "SCHILY.xattr.security.capability".to_string(),
                    vec![1, 0, 0, 2, 0, 0x20]
                ),
                (
                    "SCHILY.xattr.user.z".to_string(),
                    b"\0bin\xffary\n".to_vec()
                ),
            ]
        );

        // Names PAX cannot carry, and duplicates, are refused.
        for bad in [
            vec![("a=b".to_string(), vec![])],
            vec![("u.a".into(), vec![]), ("u.a".into(), vec![1])],
        ] {
            let e = Entry {
                xattrs: bad,
                ..entry("f", EntryKind::Fifo)
            };
            let err = LayerWriter::new(Vec::new()).add(&e).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
    }
}
