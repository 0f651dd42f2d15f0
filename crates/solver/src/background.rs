//! Work a build does beside its steps, off their critical path: syncing
//! the blobs it wrote and then storing the records that name them,
//! removing the scratch directories of finished steps. Each job runs on a
//! thread of its own (they mostly wait for the disk); the build waits for
//! all of them ([`Background::finish`]) before it returns.

use std::sync::Mutex;
use std::thread::JoinHandle;

use crate::build::BuildError;

#[derive(Default)]
pub(crate) struct Background {
    jobs: Mutex<Vec<Job>>,
}

enum Job {
    Running(JoinHandle<Result<(), BuildError>>),
    /// No thread could be started for it.
    Failed(BuildError),
}

impl Background {
    /// Runs `job` on a thread named `name`.
    pub(crate) fn spawn(
        &self,
        name: &str,
        job: impl FnOnce() -> Result<(), BuildError> + Send + 'static,
    ) {
        let job = match std::thread::Builder::new().name(name.into()).spawn(job) {
            Ok(handle) => Job::Running(handle),
            Err(e) => Job::Failed(BuildError::Internal(format!(
                "starting a thread for {name}: {e}"
            ))),
        };
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(job);
    }

    /// Removes a finished step's scratch (drops `scratch`) beside the
    /// build.
    pub(crate) fn discard<T: Send + 'static>(&self, scratch: T) {
        self.spawn("rbuild-cleanup", move || {
            drop(scratch);
            Ok(())
        });
    }

    /// Waits for every job started so far; returns the first failure.
    pub(crate) fn finish(&self) -> Result<(), BuildError> {
        let jobs = std::mem::take(&mut *self.jobs.lock().unwrap_or_else(|p| p.into_inner()));
        let mut first = None;
        for job in jobs {
            let result = match job {
                Job::Running(handle) => handle.join().unwrap_or_else(|_| {
                    Err(BuildError::Internal("a background job panicked".into()))
                }),
                Job::Failed(e) => Err(e),
            };
            if let Err(e) = result {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn finish_waits_for_every_job_and_returns_the_first_failure() {
        let background = Background::default();
        let done = Arc::new(AtomicUsize::new(0));
        for i in 0..4 {
            let done = Arc::clone(&done);
            background.spawn("test", move || {
                std::thread::sleep(std::time::Duration::from_millis(10));
                done.fetch_add(1, Ordering::SeqCst);
                match i {
                    2 => Err(BuildError::Internal("job 2".into())),
                    _ => Ok(()),
                }
            });
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        background.discard(dir);
        let err = background.finish().unwrap_err();
        assert_eq!(done.load(Ordering::SeqCst), 4);
        assert!(err.to_string().contains("job 2"), "{err}");
        assert!(!path.exists(), "discarded scratch is removed");
        assert!(background.finish().is_ok(), "nothing left to wait for");
    }
}
