//! Resolving paths inside a root directory without ever leaving it.
//!
//! The walk goes one component at a time from a directory file descriptor,
//! opening each component with `O_NOFOLLOW`. Symlinks are read and their
//! text is resolved as if the root were `/` (like `filepath-securejoin`,
//! which runc uses): absolute targets restart at the root and `..` stops at
//! it. Magic links under `/proc` (`/proc/self/fd/N`, `/proc/self/root`) are
//! symlinks to `lstat`, so their text is treated the same way and never
//! followed by the kernel.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec};

/// What to create for a missing final component (missing intermediate
/// components are always created as directories).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Create {
    Dir,
    File,
}

/// Something the walk created, to be removed after the run.
#[derive(Debug, Clone)]
pub(super) struct Created {
    /// The path inside the root, with no symlinks, e.g. `/run/secrets`.
    pub path: Vec<u8>,
    /// For the first object created in a pre-existing directory: that
    /// directory's times before (access, modification) and its
    /// modification time right after the creation.
    pub parent_times: Option<ParentTimes>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct ParentTimes {
    pub atime: Timespec,
    pub mtime: Timespec,
    pub mtime_after: Timespec,
}

/// How symlinks are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Links {
    /// Follow them, inside the root.
    Follow,
    /// Fail with `ELOOP` on any symlink.
    Refuse,
}

const MAX_LINKS: usize = 40;

fn o_path() -> OFlags {
    OFlags::PATH | OFlags::CLOEXEC | OFlags::NOFOLLOW
}

/// Opens (`O_PATH`) what `path` names inside `root`, creating missing
/// components if `create` says what the last one is; appends what it
/// created to `created`.
pub(super) fn resolve(
    root: BorrowedFd<'_>,
    path: &[u8],
    create: Option<Create>,
    links: Links,
    created: &mut Vec<Created>,
) -> io::Result<OwnedFd> {
    let reopen_root = || rustix::fs::openat(root, ".", o_path() | OFlags::DIRECTORY, Mode::empty());
    // The directories entered so far, with their names (for `..` and for
    // the created paths).
    let mut stack: Vec<(OwnedFd, Vec<u8>)> = Vec::new();
    let mut cur = reopen_root()?;
    let mut queue: VecDeque<Vec<u8>> = components(path).collect();
    let mut followed = 0;
    let mut times_taken = false;
    while let Some(name) = queue.pop_front() {
        if name == b".." {
            if let Some((parent, _)) = stack.pop() {
                cur = parent;
            }
            continue;
        }
        match rustix::fs::statat(&cur, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                if links == Links::Refuse {
                    return Err(rustix::io::Errno::LOOP.into());
                }
                followed += 1;
                if followed > MAX_LINKS {
                    return Err(rustix::io::Errno::LOOP.into());
                }
                let target = rustix::fs::readlinkat(&cur, name.as_slice(), Vec::new())?;
                let target = target.as_bytes();
                if target.starts_with(b"/") {
                    stack.clear();
                    cur = reopen_root()?;
                }
                for c in components(target).rev() {
                    queue.push_front(c);
                }
            }
            Ok(_) => {
                let next = rustix::fs::openat(&cur, name.as_slice(), o_path(), Mode::empty())?;
                stack.push((std::mem::replace(&mut cur, next), name));
            }
            Err(rustix::io::Errno::NOENT) if create.is_some() => {
                let last = queue.is_empty();
                let before = if times_taken {
                    None
                } else {
                    Some(rustix::fs::fstat(&cur)?)
                };
                if last && create == Some(Create::File) {
                    rustix::fs::openat(
                        &cur,
                        name.as_slice(),
                        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o644),
                    )?;
                } else {
                    rustix::fs::mkdirat(&cur, name.as_slice(), Mode::from_raw_mode(0o755))?;
                }
                let parent_times = match before {
                    Some(st) => {
                        times_taken = true;
                        let after = rustix::fs::fstat(&cur)?;
                        Some(ParentTimes {
                            atime: ts(st.st_atime, st.st_atime_nsec),
                            mtime: ts(st.st_mtime, st.st_mtime_nsec),
                            mtime_after: ts(after.st_mtime, after.st_mtime_nsec),
                        })
                    }
                    None => None,
                };
                let mut path = Vec::new();
                for n in stack.iter().map(|(_, n)| n).chain([&name]) {
                    path.push(b'/');
                    path.extend_from_slice(n);
                }
                created.push(Created { path, parent_times });
                queue.push_front(name);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(cur)
}

fn ts(sec: i64, nsec: impl TryInto<i64>) -> Timespec {
    Timespec {
        tv_sec: sec,
        tv_nsec: nsec.try_into().unwrap_or(0),
    }
}

/// The meaningful components of a path: no empty ones, no `.`.
fn components(path: &[u8]) -> impl DoubleEndedIterator<Item = Vec<u8>> + '_ {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(<[u8]>::to_vec)
}

/// Removes what [`resolve`] created (newest first) if it is still an empty
/// directory or an empty regular file, restoring the times of the directory
/// it was created in when nothing else changed that directory meanwhile.
/// Objects that are no longer empty stay (they hold the command's output).
pub(super) fn remove_created(root: BorrowedFd<'_>, created: &[Created]) -> Result<(), String> {
    for c in created.iter().rev() {
        let path = String::from_utf8_lossy(&c.path).into_owned();
        let split = c.path.iter().rposition(|&b| b == b'/').unwrap_or(0);
        let (parent, name) = (&c.path[..split], &c.path[split + 1..]);
        let mut none = Vec::new();
        let dir = match resolve(root, parent, None, Links::Refuse, &mut none) {
            Ok(fd) => fd,
            // The command replaced a parent by something else: leave it.
            Err(_) => continue,
        };
        let st = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(format!("mount point stub {path}: {}", io::Error::from(e))),
        };
        let mtime_before = rustix::fs::fstat(&dir).map(|s| ts(s.st_mtime, s.st_mtime_nsec));
        let removed = match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR),
            FileType::RegularFile if st.st_size == 0 => {
                rustix::fs::unlinkat(&dir, name, AtFlags::empty())
            }
            _ => continue,
        };
        match removed {
            Ok(()) => {}
            Err(rustix::io::Errno::NOTEMPTY | rustix::io::Errno::EXIST) => continue,
            Err(e) => {
                return Err(format!(
                    "removing mount point stub {path}: {}",
                    io::Error::from(e)
                ));
            }
        }
        if let (Some(t), Ok(mtime_before)) = (c.parent_times, mtime_before)
            && mtime_before == t.mtime_after
        {
            // Only our creation (and now removal) touched the directory.
            let restore = rustix::fs::openat(
                &dir,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .and_then(|d| {
                rustix::fs::futimens(
                    d.as_fd(),
                    &rustix::fs::Timestamps {
                        last_access: t.atime,
                        last_modification: t.mtime,
                    },
                )
            });
            if let Err(e) = restore {
                return Err(format!(
                    "restoring the times of the directory of {path}: {}",
                    io::Error::from(e)
                ));
            }
        }
    }
    Ok(())
}
