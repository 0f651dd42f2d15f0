//! Each rbuild process's own scratch directory, `ROOT/tmp/<pid>-<nonce>/`.
//!
//! It is created when first needed ([`ProcessScratch::ensure`]): a build
//! whose every step is cached writes nothing, and creating and removing a
//! directory and its lock file cost it most of a millisecond.
//!
//! The process holds an exclusive lock on the directory's `lock` file for
//! its lifetime. When it ends normally the directory is removed; when it
//! is killed, the lock is released by the kernel and the next rbuild on
//! the root removes the directory. So a crash or Ctrl-C leaves nothing
//! that outlives the next build, and a live process's files are never
//! touched.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

const LOCK: &str = "lock";

#[derive(Debug)]
pub struct ProcessScratch {
    dir: PathBuf,
    /// The directory's lock, once the directory exists. Held, not read:
    /// the lock lives as long as this open file.
    lock: Mutex<Option<File>>,
}

impl ProcessScratch {
    /// Removes what dead processes left under `parent` and names this
    /// process's directory there (created by [`ProcessScratch::ensure`]).
    pub fn create(parent: &Path) -> io::Result<ProcessScratch> {
        fs::create_dir_all(parent)?;
        sweep(parent)?;
        let nonce = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = parent.join(format!("{}-{nonce}", std::process::id()));
        Ok(ProcessScratch {
            dir,
            lock: Mutex::new(None),
        })
    }

    /// The directory, which may not exist yet.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The directory, created (with its lock) if it does not exist yet.
    pub fn ensure(&self) -> io::Result<&Path> {
        let mut lock = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if lock.is_none() {
            // Until the lock file exists, a sweeper keeps the directory
            // because its owner (this pid) is alive. Something of this
            // process may have made the directory already.
            fs::create_dir_all(&self.dir)?;
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(self.dir.join(LOCK))?;
            file.lock()?;
            *lock = Some(file);
        }
        Ok(&self.dir)
    }
}

impl Drop for ProcessScratch {
    fn drop(&mut self) {
        // Whoever made it: a directory that was never made costs one
        // failed system call here.
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Removes the directories under `parent` whose owner is gone (their lock
/// can be taken), and loose files older rbuild versions left there.
fn sweep(parent: &Path) -> io::Result<()> {
    for entry in fs::read_dir(parent)? {
        let entry = entry?;
        let path = entry.path();
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let Ok(lock) = File::open(path.join(LOCK)) else {
            // No lock yet: either being created right now or abandoned
            // mid-creation; only the owner's pid can tell.
            if rbuild_exec::snapshot::owner_is_gone(&entry.file_name()) {
                let _ = fs::remove_dir_all(&path);
            }
            continue;
        };
        if lock.try_lock().is_ok() {
            let _ = fs::remove_dir_all(&path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_on_drop_and_swept_when_abandoned() {
        let parent = tempfile::tempdir().unwrap();
        let live = ProcessScratch::create(parent.path()).unwrap();
        assert!(!live.path().exists(), "created when first needed");
        std::fs::write(live.ensure().unwrap().join("f"), "x").unwrap();
        // A directory whose owner died: its lock is free.
        let dead = parent.path().join("999999999-1");
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join(LOCK), "").unwrap();
        // Another process's live directory: a second handle holds its lock.
        let other = ProcessScratch::create(parent.path()).unwrap();
        other.ensure().unwrap();
        assert!(!dead.exists(), "an abandoned directory is swept");
        assert!(live.path().join("f").exists(), "a live one is not");
        let live_path = live.path().to_path_buf();
        drop(live);
        assert!(!live_path.exists());
        drop(other);
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_directory_made_before_ensure_is_locked_and_removed() {
        let parent = tempfile::tempdir().unwrap();
        let scratch = ProcessScratch::create(parent.path()).unwrap();
        // Something of this process made it without the lock.
        std::fs::create_dir_all(scratch.path().join("early")).unwrap();
        let dir = scratch.ensure().unwrap().to_path_buf();
        assert!(dir.join(LOCK).exists());
        drop(scratch);
        assert!(!dir.exists());
        // One never made leaves nothing either.
        drop(ProcessScratch::create(parent.path()).unwrap());
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
    }
}
