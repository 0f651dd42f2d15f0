//! The image store: which manifest each image name points to.
//!
//! One JSON file, `ROOT/images.json`, replaced atomically under an exclusive
//! lock on `ROOT/lock`, so concurrent rbuild processes on one root never
//! lose each other's tags. Blobs are not touched here: they live in the
//! content store and are reclaimed by garbage collection.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rbuild_oci::{Descriptor, Digest, Reference};
use serde::{Deserialize, Serialize};
use tempfile::NamedTempFile;

#[derive(Debug, thiserror::Error)]
pub enum ImageStoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{name}: image name in {path} is invalid: {source}")]
    BadName {
        name: String,
        path: PathBuf,
        source: rbuild_oci::ReferenceError,
    },
}

/// One named image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    pub name: Reference,
    pub manifest: Descriptor,
    /// The image ID: the config digest, as docker shows it.
    pub config: Digest,
    /// When the image was created (from its config), RFC 3339.
    pub created: Option<String>,
    /// Sum of the layers' stored sizes.
    pub size: u64,
}

#[derive(Serialize, Deserialize, Default)]
struct File_ {
    images: Vec<RecordJson>,
}

#[derive(Serialize, Deserialize)]
struct RecordJson {
    name: String,
    manifest: Descriptor,
    config: Digest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created: Option<String>,
    #[serde(default)]
    size: u64,
}

#[derive(Debug, Clone)]
pub struct ImageStore {
    file: PathBuf,
    lock: PathBuf,
}

impl ImageStore {
    pub fn open(root: &Path) -> Result<ImageStore, ImageStoreError> {
        let store = ImageStore {
            file: root.join("images.json"),
            lock: root.join("lock"),
        };
        fs::create_dir_all(root).map_err(|source| store.io(root, source))?;
        Ok(store)
    }

    /// All named images, sorted by name.
    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageStoreError> {
        let _lock = self.lock(false)?;
        self.read()
    }

    pub fn get(&self, name: &Reference) -> Result<Option<ImageRecord>, ImageStoreError> {
        Ok(self.list()?.into_iter().find(|r| r.name == *name))
    }

    /// Points `name` at an image, replacing what it named before.
    pub fn put(&self, record: ImageRecord) -> Result<(), ImageStoreError> {
        self.update(|records| {
            records.retain(|r| r.name != record.name);
            records.push(record);
        })
    }

    /// Removes a name; returns the record it had.
    pub fn remove(&self, name: &Reference) -> Result<Option<ImageRecord>, ImageStoreError> {
        let mut removed = None;
        self.update(|records| {
            if let Some(i) = records.iter().position(|r| r.name == *name) {
                removed = Some(records.remove(i));
            }
        })?;
        Ok(removed)
    }

    fn update(&self, change: impl FnOnce(&mut Vec<ImageRecord>)) -> Result<(), ImageStoreError> {
        let _lock = self.lock(true)?;
        let mut records = self.read()?;
        let before = records.clone();
        change(&mut records);
        records.sort_by(|a, b| a.name.cmp(&b.name));
        if records == before {
            // Naming an image what it is already called: nothing to write.
            return Ok(());
        }
        self.write(&records)
    }

    fn lock(&self, exclusive: bool) -> Result<File, ImageStoreError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)
            .map_err(|source| self.io(&self.lock, source))?;
        let locked = if exclusive {
            file.lock()
        } else {
            file.lock_shared()
        };
        locked.map_err(|source| self.io(&self.lock, source))?;
        // Unlocked when the file is closed.
        Ok(file)
    }

    fn read(&self) -> Result<Vec<ImageRecord>, ImageStoreError> {
        let bytes = match fs::read(&self.file) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(self.io(&self.file, source)),
        };
        let parsed: File_ =
            serde_json::from_slice(&bytes).map_err(|source| ImageStoreError::Corrupt {
                path: self.file.clone(),
                source,
            })?;
        parsed
            .images
            .into_iter()
            .map(|r| {
                let name =
                    Reference::parse(&r.name).map_err(|source| ImageStoreError::BadName {
                        name: r.name.clone(),
                        path: self.file.clone(),
                        source,
                    })?;
                Ok(ImageRecord {
                    name,
                    manifest: r.manifest,
                    config: r.config,
                    created: r.created,
                    size: r.size,
                })
            })
            .collect()
    }

    fn write(&self, records: &[ImageRecord]) -> Result<(), ImageStoreError> {
        let file = File_ {
            images: records
                .iter()
                .map(|r| RecordJson {
                    name: r.name.to_string(),
                    manifest: r.manifest.clone(),
                    config: r.config,
                    created: r.created.clone(),
                    size: r.size,
                })
                .collect(),
        };
        let dir = self.file.parent().unwrap_or(Path::new("."));
        let write = || -> io::Result<()> {
            // The blobs named here must outlive a system crash as the
            // names do (the content store leaves that to us); that sync
            // and the new file's go on side by side.
            let tmp = std::thread::scope(|scope| -> io::Result<NamedTempFile> {
                let names = scope.spawn(|| match crate::content::sync_names(dir) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                });
                let mut tmp = NamedTempFile::new_in(dir)?;
                serde_json::to_writer_pretty(&mut tmp, &file)?;
                tmp.write_all(b"\n")?;
                tmp.as_file().sync_all()?;
                names
                    .join()
                    .map_err(|_| io::Error::other("syncing the blob names panicked"))??;
                Ok(tmp)
            })?;
            tmp.persist(&self.file).map_err(|e| e.error)?;
            File::open(dir)?.sync_all()
        };
        write().map_err(|source| self.io(&self.file, source))
    }

    fn io(&self, path: &Path, source: io::Error) -> ImageStoreError {
        ImageStoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbuild_oci::media_type;

    fn record(name: &str, n: u8) -> ImageRecord {
        ImageRecord {
            name: Reference::parse(name).unwrap(),
            manifest: Descriptor::new(media_type::OCI_MANIFEST, Digest::of(&[n]), 1),
            config: Digest::of(&[n, n]),
            created: None,
            size: 0,
        }
    }

    #[test]
    fn put_get_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        store.put(record("b:1", 1)).unwrap();
        store.put(record("a:1", 2)).unwrap();
        store.put(record("b:1", 3)).unwrap();
        let names: Vec<String> = store
            .list()
            .unwrap()
            .iter()
            .map(|r| r.name.familiar())
            .collect();
        assert_eq!(names, ["a:1", "b:1"]);
        let b = store
            .get(&Reference::parse("b:1").unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(b.config, Digest::of(&[3, 3]));
        assert!(
            store
                .remove(&Reference::parse("a:1").unwrap())
                .unwrap()
                .is_some()
        );
        assert!(
            store
                .remove(&Reference::parse("a:1").unwrap())
                .unwrap()
                .is_none()
        );
        assert_eq!(store.list().unwrap().len(), 1);
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let root = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    let store = ImageStore::open(&root).unwrap();
                    for i in 0..20u8 {
                        store.put(record(&format!("img{t}:v{i}"), i)).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let store = ImageStore::open(dir.path()).unwrap();
        assert_eq!(store.list().unwrap().len(), 160);
    }
}
