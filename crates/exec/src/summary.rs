//! What a layer does to the file view below it, without its contents.
//!
//! A [`LayerSummary`] is read once from a layer's tarball: every entry's
//! path, kind, mode, owner and link target, its whiteouts, and the bytes of
//! the few small files that [`BaseFs`](crate::basefs::BaseFs) keeps
//! (`/etc/passwd`, `/etc/group`). Building the file view of a base, or
//! asking which layers touch a path, then needs the summaries only. For a
//! compressed base-image layer that saves decompressing it on every build
//! (a 1 MB busybox layer costs 6 ms to gunzip); for an uncompressed layer
//! [`LayerSummary::read_blob`] seeks over the file contents instead of
//! reading them.
//!
//! Summaries serialize ([`LayerSummary::to_bytes`]) so that callers can
//! keep them; the encoding carries a version, and bytes of another version
//! or damaged bytes are refused, not misread.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};

use serde::{Deserialize, Serialize};

use crate::basefs::{KEPT_FILES, MAX_KEPT_SIZE, Node, NodeKind, remove_below};

/// Bumped whenever what a summary holds, or how, changes.
const FORMAT_VERSION: u32 = 1;

/// What one layer does to the filesystem below it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerSummary {
    version: u32,
    /// The layer's whiteouts, in archive order.
    pub(crate) removals: Vec<Removal>,
    /// The layer's other entries, in archive order.
    pub(crate) additions: Vec<Addition>,
}

/// A whiteout: `path` and everything below it is gone, or with `opaque`
/// only what is below it (the directory itself stays).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Removal {
    pub path: String,
    pub opaque: bool,
}

/// An entry the layer adds or replaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Addition {
    /// Clean, relative, never empty.
    pub path: String,
    pub node: Node,
    /// A hard link (its node says `File`, as the view treats it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hard_link: bool,
    /// The content of a file the view keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Vec<u8>>,
}

/// Whether a layer has entries related to some paths (see
/// [`LayerSummary::touches`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// No entry at, below or above any of the paths.
    No,
    /// Some entries at, below or above them, none a link.
    Yes,
    /// A symlink or a hard link among those entries: where the paths lead
    /// cannot be told from this layer alone.
    Links,
}

impl LayerSummary {
    /// Reads a layer stream, gzip, zstd or uncompressed.
    pub fn read(layer: impl Read) -> io::Result<LayerSummary> {
        let mut archive = tar::Archive::new(crate::compression::decompress(layer)?);
        summarize(archive.entries()?)
    }

    /// Reads a layer blob: an uncompressed one by seeking from header to
    /// header (its file contents are never read), a compressed one as
    /// [`LayerSummary::read`] does. Also says whether it was compressed
    /// (reading it again would cost decompressing it).
    pub fn read_blob(mut file: File) -> io::Result<(LayerSummary, bool)> {
        let mut magic = [0u8; 4];
        let n = crate::apply::read_prefix(&mut file, &mut magic)?;
        file.seek(SeekFrom::Start(0))?;
        let head = magic.get(..n).unwrap_or_default();
        if crate::compression::is_compressed(head) {
            return Ok((LayerSummary::read(file)?, true));
        }
        let mut archive = tar::Archive::new(Skipping::new(file));
        Ok((summarize(archive.entries_with_seek()?)?, false))
    }

    /// The summary as bytes, for keeping.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Plain data with string keys: serializing cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A summary kept with [`LayerSummary::to_bytes`]; None for bytes of
    /// another format version, or damaged ones.
    pub fn from_bytes(bytes: &[u8]) -> Option<LayerSummary> {
        serde_json::from_slice::<LayerSummary>(bytes)
            .ok()
            .filter(|s| s.version == FORMAT_VERSION)
    }

    /// Whether this layer has an entry (or a whiteout) at, below or above
    /// (an ancestor of) one of `prefixes` (clean relative paths), and
    /// whether one of those is a link.
    pub fn touches(&self, prefixes: &[String]) -> Touch {
        let related = |target: &str| {
            prefixes.iter().any(|p| {
                target == p
                    || target
                        .strip_prefix(p.as_str())
                        .is_some_and(|r| r.starts_with('/'))
                    || p.strip_prefix(target).is_some_and(|r| r.starts_with('/'))
            })
        };
        let mut touch = Touch::No;
        for addition in &self.additions {
            if related(&addition.path) {
                if addition.hard_link || matches!(addition.node.kind, NodeKind::Symlink(_)) {
                    return Touch::Links;
                }
                touch = Touch::Yes;
            }
        }
        // A whiteout names the path it removes (an opaque one, the
        // directory it empties); the root's own is related to everything.
        if touch == Touch::No
            && self
                .removals
                .iter()
                .any(|r| r.path.is_empty() || related(&r.path))
        {
            touch = Touch::Yes;
        }
        touch
    }
}

/// Which layer each regular file of a stack of layers comes from: the
/// topmost layer that wrote it, as long as no layer above removed or
/// replaced it. Hard links are left out (their content is another
/// entry's). `K` names a layer.
#[derive(Debug, Clone)]
pub struct FileOrigins<K> {
    files: BTreeMap<String, K>,
}

impl<K> Default for FileOrigins<K> {
    fn default() -> Self {
        FileOrigins {
            files: BTreeMap::new(),
        }
    }
}

impl<K: Clone> FileOrigins<K> {
    /// Adds the next layer up, `layer`, named `key`.
    pub fn apply(&mut self, layer: &LayerSummary, key: &K) {
        for removal in &layer.removals {
            remove_below(&mut self.files, &removal.path);
            if !removal.opaque {
                self.files.remove(&removal.path);
            }
        }
        for addition in &layer.additions {
            if addition.node.kind == NodeKind::Directory {
                self.files.remove(&addition.path);
                continue;
            }
            remove_below(&mut self.files, &addition.path);
            if addition.node.kind == NodeKind::File && !addition.hard_link {
                self.files.insert(addition.path.clone(), key.clone());
            } else {
                self.files.remove(&addition.path);
            }
        }
    }

    /// The layer a regular file (a clean relative path) comes from.
    pub fn get(&self, path: &str) -> Option<&K> {
        self.files.get(path)
    }

    /// Every regular file and its layer, by path.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &K)> {
        self.files.iter().map(|(p, k)| (p.as_str(), k))
    }
}

fn summarize<R: Read>(entries: tar::Entries<'_, R>) -> io::Result<LayerSummary> {
    let mut summary = LayerSummary {
        version: FORMAT_VERSION,
        removals: Vec::new(),
        additions: Vec::new(),
    };
    for entry in entries {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            continue;
        }
        let path = rbuild_oci::path::clean(&String::from_utf8_lossy(&entry.path_bytes()));
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (d, n),
            None => ("", path.as_str()),
        };
        if name == ".wh..wh..opq" {
            summary.removals.push(Removal {
                path: dir.to_string(),
                opaque: true,
            });
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            summary.removals.push(Removal {
                path: if dir.is_empty() {
                    hidden.to_string()
                } else {
                    format!("{dir}/{hidden}")
                },
                opaque: false,
            });
            continue;
        }
        if path.is_empty() {
            continue; // the root directory's own entry
        }
        let node_kind = match kind {
            tar::EntryType::Directory => NodeKind::Directory,
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Link => {
                NodeKind::File
            }
            tar::EntryType::Symlink => NodeKind::Symlink(
                entry
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
                    .unwrap_or_default(),
            ),
            _ => NodeKind::Other,
        };
        let header = entry.header();
        let node = Node {
            kind: node_kind,
            mode: header.mode()? & 0o7777,
            uid: header.uid()?,
            gid: header.gid()?,
            mtime: header.mtime()?,
        };
        let content = if KEPT_FILES.contains(&path.as_str())
            && kind.is_file()
            && entry.size() <= MAX_KEPT_SIZE
        {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            Some(bytes)
        } else {
            None
        };
        summary.additions.push(Addition {
            path,
            node,
            hard_link: kind.is_hard_link(),
            content,
        });
    }
    Ok(summary)
}

/// A buffered file whose forward seeks within the buffer cost no system
/// call: tar skips each entry's contents with a relative seek, and most
/// entries of a layer are small files.
struct Skipping {
    inner: BufReader<File>,
    /// The position in the file (known here without asking the kernel).
    pos: u64,
}

impl Skipping {
    fn new(file: File) -> Skipping {
        Skipping {
            inner: BufReader::with_capacity(64 << 10, file),
            pos: 0,
        }
    }
}

impl Read for Skipping {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Skipping {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.pos = match pos {
            SeekFrom::Current(n) => {
                self.inner.seek_relative(n)?;
                self.pos
                    .checked_add_signed(n)
                    .ok_or_else(|| io::Error::other("seek before the start of the layer"))?
            }
            other => self.inner.seek(other)?,
        };
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{Entry, EntryKind, LayerWriter};
    use std::io::Write;

    fn entry(path: &str, kind: EntryKind) -> Entry {
        let mode = if kind == EntryKind::Directory {
            0o755
        } else {
            0o644
        };
        Entry {
            path: path.into(),
            kind,
            mode,
            uid: 1,
            gid: 2,
            mtime: 3,
            xattrs: Vec::new(),
        }
    }

    fn layer(entries: &[Entry]) -> Vec<u8> {
        let mut w = LayerWriter::new(Vec::new());
        for e in entries {
            w.add(e).unwrap();
        }
        w.finish().unwrap().2
    }

    fn sample() -> Vec<u8> {
        layer(&[
            entry("etc", EntryKind::Directory),
            entry(
                "etc/passwd",
                EntryKind::Bytes(b"root:x:0:0::/root:/bin/sh\n".to_vec()),
            ),
            // Big enough that skipping it takes a seek past the buffer.
            entry("big", EntryKind::Bytes(vec![7; 200 << 10])),
            entry("small", EntryKind::Bytes(b"x".to_vec())),
            entry(
                "link",
                EntryKind::Symlink {
                    target: "/etc".into(),
                },
            ),
            entry(
                "hard",
                EntryKind::Hardlink {
                    target: "small".into(),
                },
            ),
            entry(".wh.gone", EntryKind::Bytes(Vec::new())),
            entry("opq", EntryKind::Directory),
            entry("opq/.wh..wh..opq", EntryKind::Bytes(Vec::new())),
        ])
    }

    fn blob(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f
    }

    #[test]
    fn a_blob_read_by_seeking_or_decompressed_gives_the_stream_summary() {
        let tar = sample();
        let streamed = LayerSummary::read(&tar[..]).unwrap();
        let paths: Vec<&str> = streamed.additions.iter().map(|a| a.path.as_str()).collect();
        assert_eq!(
            paths,
            ["etc", "etc/passwd", "big", "small", "link", "hard", "opq"]
        );
        assert_eq!(
            streamed.removals,
            [
                Removal {
                    path: "gone".into(),
                    opaque: false
                },
                Removal {
                    path: "opq".into(),
                    opaque: true
                }
            ]
        );
        let passwd = &streamed.additions[1];
        assert_eq!(
            passwd.content.as_deref(),
            Some(&b"root:x:0:0::/root:/bin/sh\n"[..])
        );
        assert_eq!(
            (
                passwd.node.mode,
                passwd.node.uid,
                passwd.node.gid,
                passwd.node.mtime
            ),
            (0o644, 1, 2, 3)
        );
        assert!(streamed.additions[2].content.is_none(), "only kept files");
        assert!(streamed.additions[5].hard_link);
        assert_eq!(
            streamed.additions[4].node.kind,
            NodeKind::Symlink("/etc".into())
        );

        let (seeked, compressed) = LayerSummary::read_blob(blob(&tar)).unwrap();
        assert!(!compressed);
        assert_eq!(seeked, streamed);

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let (unzipped, compressed) = LayerSummary::read_blob(blob(&gz.finish().unwrap())).unwrap();
        assert!(compressed);
        assert_eq!(unzipped, streamed);
    }

    #[test]
    fn kept_bytes_round_trip_and_other_versions_are_refused() {
        let summary = LayerSummary::read(&sample()[..]).unwrap();
        assert_eq!(
            LayerSummary::from_bytes(&summary.to_bytes()),
            Some(summary.clone())
        );
        let mut other = summary.clone();
        other.version = FORMAT_VERSION + 1;
        assert_eq!(LayerSummary::from_bytes(&other.to_bytes()), None);
        let bytes = summary.to_bytes();
        assert_eq!(LayerSummary::from_bytes(&bytes[..bytes.len() / 2]), None);
        assert_eq!(LayerSummary::from_bytes(b""), None);
    }

    #[test]
    fn touches_tells_related_entries_and_links() {
        let plain = LayerSummary::read(
            &layer(&[
                entry("out", EntryKind::Directory),
                entry("out/app", EntryKind::Bytes(b"x".to_vec())),
                entry("src/.wh.old", EntryKind::Bytes(Vec::new())),
            ])[..],
        )
        .unwrap();
        let t = |s: &LayerSummary, p: &[&str]| {
            s.touches(&p.iter().map(|p| p.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(t(&plain, &["out"]), Touch::Yes, "the path itself");
        assert_eq!(t(&plain, &["out/app/x"]), Touch::Yes, "an ancestor");
        assert_eq!(t(&plain, &["src/old"]), Touch::Yes, "a whiteout");
        assert_eq!(t(&plain, &["outer", "sr"]), Touch::No, "prefixes of names");
        let links = LayerSummary::read(&sample()[..]).unwrap();
        assert_eq!(t(&links, &["link"]), Touch::Links);
        assert_eq!(t(&links, &["hard"]), Touch::Links);
        assert_eq!(t(&links, &["small"]), Touch::Yes);
        let root_opaque =
            LayerSummary::read(&layer(&[entry(".wh..wh..opq", EntryKind::Bytes(Vec::new()))])[..])
                .unwrap();
        assert_eq!(t(&root_opaque, &["anything"]), Touch::Yes);
    }

    #[test]
    fn global_pax_headers_are_not_entries() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::XGlobalHeader);
        header.set_size(0);
        header.set_cksum();
        builder
            .append_data(&mut header, "pax_global_header", &[][..])
            .unwrap();
        let mut file = tar::Header::new_gnu();
        file.set_size(1);
        file.set_mode(0o644);
        file.set_uid(0);
        file.set_gid(0);
        file.set_mtime(0);
        file.set_cksum();
        builder.append_data(&mut file, "f", &b"x"[..]).unwrap();
        let summary = LayerSummary::read(&builder.into_inner().unwrap()[..]).unwrap();
        let paths: Vec<&str> = summary.additions.iter().map(|a| a.path.as_str()).collect();
        assert_eq!(paths, ["f"]);
    }

    #[test]
    fn file_origins_follow_the_topmost_writer() {
        let file = |p: &str| entry(p, EntryKind::Bytes(b"x".to_vec()));
        let lower = LayerSummary::read(
            &layer(&[
                entry("out", EntryKind::Directory),
                file("out/a"),
                file("out/b"),
                file("out/c"),
                entry("opq", EntryKind::Directory),
                file("opq/old"),
                file("gone"),
                file("becomes-dir"),
            ])[..],
        )
        .unwrap();
        let upper = LayerSummary::read(
            &layer(&[
                file("out/a"),
                entry("out/b", EntryKind::Symlink { target: "a".into() }),
                entry(
                    "out/c",
                    EntryKind::Hardlink {
                        target: "out/a".into(),
                    },
                ),
                entry("opq", EntryKind::Directory),
                entry("opq/.wh..wh..opq", EntryKind::Bytes(Vec::new())),
                entry(".wh.gone", EntryKind::Bytes(Vec::new())),
                entry("becomes-dir", EntryKind::Directory),
            ])[..],
        )
        .unwrap();
        let mut origins = FileOrigins::default();
        origins.apply(&lower, &"lower");
        assert_eq!(origins.get("out/b"), Some(&"lower"));
        origins.apply(&upper, &"upper");
        assert_eq!(origins.get("out/a"), Some(&"upper"), "rewritten above");
        assert_eq!(origins.get("out/b"), None, "now a symlink");
        assert_eq!(origins.get("out/c"), None, "now a hard link");
        assert_eq!(
            origins.get("opq/old"),
            None,
            "hidden by an opaque directory"
        );
        assert_eq!(origins.get("gone"), None, "whited out");
        assert_eq!(origins.get("becomes-dir"), None, "now a directory");
        assert_eq!(origins.iter().count(), 1);
    }
}
