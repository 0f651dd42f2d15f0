//! Where an export's files go: a directory, or a tar stream written to a
//! file or to standard output. File outputs are written to a temporary file
//! beside the destination and renamed into place when complete, so a failed
//! export never leaves a truncated tarball under the requested name.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use rbuild_oci::{BlobStore, Digest};

use crate::ExportError;

/// Where an export is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Files in a directory (created if missing).
    Directory(PathBuf),
    /// A tarball at this path.
    Tar(PathBuf),
    /// A tarball on standard output.
    Stdout,
}

/// Receives the files of an export, in order.
pub(crate) enum Sink {
    Dir {
        root: PathBuf,
    },
    Tar {
        builder: tar::Builder<TarOut>,
        file: Option<(tempfile_like::Temp, PathBuf)>,
        dirs: HashSet<String>,
    },
}

/// A minimal temp-file-then-rename helper, so this crate needs no extra
/// dependency for it.
pub(crate) mod tempfile_like {
    use std::fs::{self, File, OpenOptions};
    use std::io;
    use std::path::{Path, PathBuf};

    pub struct Temp {
        pub path: PathBuf,
        done: bool,
    }

    impl Temp {
        pub fn create_beside(dest: &Path) -> io::Result<(Temp, File)> {
            let dir = match dest.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let name = dest
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            for attempt in 0..100u32 {
                let path = dir.join(format!(
                    ".{name}.rbuild-{}-{attempt}.tmp",
                    std::process::id()
                ));
                match OpenOptions::new().write(true).create_new(true).open(&path) {
                    Ok(file) => return Ok((Temp { path, done: false }, file)),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "no free temporary file name",
            ))
        }

        pub fn persist(mut self, dest: &Path) -> io::Result<()> {
            fs::rename(&self.path, dest)?;
            self.done = true;
            Ok(())
        }
    }

    impl Drop for Temp {
        fn drop(&mut self) {
            if !self.done {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

impl Sink {
    pub(crate) fn open(target: &Target) -> Result<Sink, ExportError> {
        match target {
            Target::Directory(root) => {
                fs::create_dir_all(root)
                    .map_err(ExportError::io(format!("creating {}", root.display())))?;
                Ok(Sink::Dir { root: root.clone() })
            }
            Target::Tar(path) => {
                let (temp, file) = tempfile_like::Temp::create_beside(path)
                    .map_err(ExportError::io(format!("creating {}", path.display())))?;
                let out = TarOut::File(BufWriter::with_capacity(1 << 20, file));
                Ok(Sink::Tar {
                    builder: tar::Builder::new(out),
                    file: Some((temp, path.clone())),
                    dirs: HashSet::new(),
                })
            }
            Target::Stdout => {
                let out = TarOut::Stdout(BufWriter::with_capacity(1 << 20, io::stdout()));
                Ok(Sink::Tar {
                    builder: tar::Builder::new(out),
                    file: None,
                    dirs: HashSet::new(),
                })
            }
        }
    }

    /// Adds a small file (index.json, manifest.json, ...).
    pub(crate) fn file(&mut self, name: &str, bytes: &[u8]) -> Result<(), ExportError> {
        match self {
            Sink::Dir { root } => {
                let path = root.join(name);
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent)
                        .map_err(ExportError::io(format!("creating {}", parent.display())))?;
                }
                fs::write(&path, bytes)
                    .map_err(ExportError::io(format!("writing {}", path.display())))
            }
            Sink::Tar { builder, dirs, .. } => {
                add_parent_dirs(builder, dirs, name)?;
                let mut header = file_header(bytes.len() as u64);
                builder
                    .append_data(&mut header, name, bytes)
                    .map_err(ExportError::io(format!("writing {name} to the archive")))
            }
        }
    }

    /// Adds a blob from the store as `blobs/sha256/<hex>`.
    pub(crate) fn blob(
        &mut self,
        store: &dyn BlobStore,
        digest: &Digest,
    ) -> Result<(), ExportError> {
        let name = format!("blobs/sha256/{}", digest.hex());
        match self {
            Sink::Dir { root } => {
                let path = root.join(&name);
                if path.is_file() {
                    return Ok(());
                }
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent)
                        .map_err(ExportError::io(format!("creating {}", parent.display())))?;
                }
                let mut src = store.open(digest).map_err(ExportError::blob(digest))?;
                let (temp, mut file) = tempfile_like::Temp::create_beside(&path)
                    .map_err(ExportError::io(format!("creating {}", path.display())))?;
                io::copy(&mut src, &mut file)
                    .map_err(ExportError::io(format!("writing {}", path.display())))?;
                temp.persist(&path)
                    .map_err(ExportError::io(format!("writing {}", path.display())))
            }
            Sink::Tar { builder, dirs, .. } => {
                add_parent_dirs(builder, dirs, &name)?;
                let src = store.open(digest).map_err(ExportError::blob(digest))?;
                let size = src.metadata().map_err(ExportError::blob(digest))?.len();
                let mut header = file_header(size);
                if header.set_path(&name).is_err() {
                    // Not a ustar name: let the tar crate write its GNU
                    // long-name entry (digests' names always fit).
                    return builder
                        .append_data(&mut header, &name, src)
                        .map_err(ExportError::blob(digest));
                }
                header.set_cksum();
                // The same bytes `append_data` writes, but the content is
                // copied by the kernel (copy_file_range into a file, splice
                // into a pipe) instead of through 8 KiB buffers. The blob is
                // not hashed again: the store verified it when it was
                // written, and its name is its digest.
                let out = builder.get_mut();
                out.write_all(header.as_bytes())
                    .and_then(|()| out.append_exact(src, size))
                    .map_err(ExportError::blob(digest))
            }
        }
    }

    /// Completes the export: the tarball is flushed and moved into place.
    pub(crate) fn finish(self) -> Result<(), ExportError> {
        match self {
            Sink::Dir { .. } => Ok(()),
            Sink::Tar { builder, file, .. } => {
                let mut out = builder
                    .into_inner()
                    .map_err(ExportError::io("finishing the archive"))?;
                out.flush()
                    .map_err(ExportError::io("finishing the archive"))?;
                drop(out);
                if let Some((temp, dest)) = file {
                    temp.persist(&dest)
                        .map_err(ExportError::io(format!("writing {}", dest.display())))?;
                }
                Ok(())
            }
        }
    }
}

fn file_header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header
}

/// The tar stream of an export: a file, or standard output.
pub(crate) enum TarOut {
    File(BufWriter<File>),
    Stdout(BufWriter<io::Stdout>),
}

impl TarOut {
    /// Appends exactly `len` bytes of `src` (from its start), padded to a
    /// tar block. `io::copy` between these concrete types lets the kernel
    /// move the bytes (copy_file_range, sendfile or splice, after flushing
    /// the buffer), and falls back to reading and writing where it cannot.
    fn append_exact(&mut self, src: File, len: u64) -> io::Result<()> {
        let mut src = src.take(len);
        let copied = match self {
            TarOut::File(out) => io::copy(&mut src, out)?,
            TarOut::Stdout(out) => io::copy(&mut src, out)?,
        };
        if copied != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the blob has {copied} bytes, not {len}"),
            ));
        }
        let partial = (len % 512) as usize;
        if partial != 0 {
            self.write_all(&[0; 512][partial..])?;
        }
        Ok(())
    }
}

impl Write for TarOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            TarOut::File(out) => out.write(buf),
            TarOut::Stdout(out) => out.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            TarOut::File(out) => out.write_all(buf),
            TarOut::Stdout(out) => out.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            TarOut::File(out) => out.flush(),
            TarOut::Stdout(out) => out.flush(),
        }
    }
}

fn add_parent_dirs(
    builder: &mut tar::Builder<TarOut>,
    dirs: &mut HashSet<String>,
    name: &str,
) -> Result<(), ExportError> {
    let mut prefix = String::new();
    let parts: Vec<&str> = name.split('/').collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        prefix.push_str(part);
        prefix.push('/');
        if dirs.insert(prefix.clone()) {
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            header.set_mode(0o755);
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            builder
                .append_data(&mut header, &prefix, io::empty())
                .map_err(ExportError::io(format!("writing {prefix} to the archive")))?;
        }
    }
    Ok(())
}

/// Whether `path` names an existing directory (for choosing how to read
/// an import source).
pub(crate) fn is_dir(path: &Path) -> bool {
    fs::metadata(path).map(|m| m.is_dir()).unwrap_or(false)
}

pub(crate) fn open_file(path: &Path) -> Result<File, ExportError> {
    File::open(path).map_err(ExportError::io(format!("opening {}", path.display())))
}
