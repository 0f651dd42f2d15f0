//! Root filesystem outputs: the image's layers applied onto a directory
//! (`type=local`), or that tree as one tarball (`type=tar`).

use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;

use rbuild_exec::apply::apply_layer;
use rbuild_exec::layer::{LayerWriter, entries_of_tree};
use rbuild_oci::BlobStore;

use crate::archive::{Target, tempfile_like::Temp};
use crate::{ExportError, ImageRef};

/// Applies the image's layers, in order, onto `dest` (created if missing).
pub fn write_rootfs_dir(
    store: &dyn BlobStore,
    image: &ImageRef,
    dest: &Path,
) -> Result<(), ExportError> {
    fs::create_dir_all(dest).map_err(ExportError::io(format!("creating {}", dest.display())))?;
    for layer in &image.manifest.layers {
        let file = store
            .open(&layer.digest)
            .map_err(ExportError::blob(&layer.digest))?;
        apply_layer(dest, file).map_err(|source| ExportError::Apply {
            path: dest.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// Writes the image's merged filesystem as one tarball. The layers are
/// applied in `scratch` (a directory on the same machine, removed after).
pub fn write_rootfs_tar(
    store: &dyn BlobStore,
    image: &ImageRef,
    target: &Target,
    scratch: &Path,
) -> Result<(), ExportError> {
    let tree = TempDir::new(scratch)?;
    write_rootfs_dir(store, image, &tree.path)?;
    let entries = entries_of_tree(&tree.path, "")
        .map_err(ExportError::io(format!("reading {}", tree.path.display())))?;
    let write = |out: &mut dyn Write| -> std::io::Result<()> {
        let mut writer = LayerWriter::new(out);
        for entry in &entries {
            writer.add(entry)?;
        }
        writer.finish()?;
        Ok(())
    };
    match target {
        Target::Stdout => {
            let mut out = BufWriter::new(std::io::stdout());
            write(&mut out).map_err(ExportError::io("writing the rootfs tarball"))?;
            out.flush()
                .map_err(ExportError::io("writing the rootfs tarball"))
        }
        Target::Tar(path) => {
            let (temp, file) = Temp::create_beside(path)
                .map_err(ExportError::io(format!("creating {}", path.display())))?;
            let mut out = BufWriter::new(file);
            write(&mut out).map_err(ExportError::io(format!("writing {}", path.display())))?;
            out.flush()
                .map_err(ExportError::io(format!("writing {}", path.display())))?;
            drop(out);
            temp.persist(path)
                .map_err(ExportError::io(format!("writing {}", path.display())))
        }
        Target::Directory(_) => Err(ExportError::Invalid(
            "a rootfs tarball needs a file destination".into(),
        )),
    }
}

/// A directory removed when dropped, whatever happened.
struct TempDir {
    path: std::path::PathBuf,
}

impl TempDir {
    fn new(parent: &Path) -> Result<TempDir, ExportError> {
        fs::create_dir_all(parent)
            .map_err(ExportError::io(format!("creating {}", parent.display())))?;
        for attempt in 0..100u32 {
            let path = parent.join(format!("rootfs-{}-{attempt}", std::process::id()));
            match fs::create_dir(&path) {
                Ok(()) => return Ok(TempDir { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(ExportError::Io {
                        context: format!("creating {}", path.display()),
                        source: e,
                    });
                }
            }
        }
        Err(ExportError::Invalid(
            "no free temporary directory name".into(),
        ))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}
