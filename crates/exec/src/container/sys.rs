//! The few system calls that rustix does not offer (or offers only for
//! language runtimes): fork, execve, signal dispositions, close_range,
//! mount_setattr and bringing up an interface. Each unsafe block is small
//! and says why it is sound.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `fork()`: `Ok(None)` in the child, `Ok(Some(pid))` in the parent.
///
/// Only called by the container init, which is single-threaded (it is a
/// freshly executed process that starts no threads), so the child may do
/// anything the parent could, including allocate.
pub(super) fn fork() -> io::Result<Option<i32>> {
    // SAFETY: the calling process has a single thread (see above), so no
    // lock can be held by a thread that does not exist in the child.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        pid => Ok(Some(pid)),
    }
}

/// `_exit(code)`: ends the process without running exit handlers or
/// flushing anything (the forked child must not flush buffers it shares
/// with its parent).
pub(super) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Puts every signal back to its default disposition and unblocks all of
/// them, so the command starts like any process. Rust's runtime ignores
/// SIGPIPE, and glibc's posix_spawn (which std uses to start the init)
/// leaves glibc's internal signals 32 and 33 ignored; ignored signals stay
/// ignored across execve. The raw system call is used because glibc's
/// wrappers refuse to touch its internal signals.
pub(super) fn reset_signals() {
    // A kernel `struct sigaction` of all zeroes is SIG_DFL with no flags
    // and an empty mask, whatever the architecture's field order.
    let default = [0u64; 4];
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: `default` is a valid, large enough kernel sigaction that
        // outlives the call; the old action is not requested; numbers the
        // kernel does not have fail with EINVAL, which is fine to ignore.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                default.as_ptr(),
                std::ptr::null_mut::<u64>(),
                8usize,
            )
        };
    }
    // SAFETY: `set` is a valid, initialised sigset_t for the duration of the
    // calls; the old mask is not requested.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// The pid of the container's pid 1, for [`kill_child_on_termination`].
static CHILD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn kill_child_and_exit(sig: libc::c_int) {
    let pid = CHILD.load(std::sync::atomic::Ordering::SeqCst);
    // SAFETY: kill and _exit are async-signal-safe and have no
    // preconditions.
    unsafe {
        if pid > 0 {
            libc::kill(pid, libc::SIGKILL);
        }
        libc::_exit(128 + sig)
    }
}

/// Makes SIGTERM, SIGINT and SIGHUP kill `child` (with SIGKILL, which pid
/// 1 of a namespace cannot refuse from its parent namespace) before this
/// process exits.
pub(super) fn kill_child_on_termination(child: i32) -> io::Result<()> {
    CHILD.store(child, std::sync::atomic::Ordering::SeqCst);
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: the handler only calls async-signal-safe functions; `act`
        // is a valid, initialised sigaction for the duration of the call.
        let r = unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = kill_child_and_exit as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut())
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Marks every file descriptor from 3 up close-on-exec (they stay usable
/// until the execve, so an exec error can still be reported).
pub(super) fn cloexec_from_3() -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes fd flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if !matches!(err.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL)) {
        return Err(err);
    }
    // Before Linux 5.11: mark them one by one.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: fcntl(F_SETFD) on a number that may or may not be open
        // only changes its flags or fails with EBADF.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;

/// Makes the mount `fd` is the root of, and every mount below it,
/// read-only (`mount_setattr(fd, "", AT_EMPTY_PATH|AT_RECURSIVE)`).
pub(super) fn make_readonly_recursive(fd: BorrowedFd<'_>) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: the path is a valid C string and `attr` a valid mount_attr of
    // the size passed, both alive for the duration of the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Brings the loopback interface of the current network namespace up.
pub(super) fn loopback_up() -> io::Result<()> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: plain socket(2); the result is checked and owned below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data for which all zeroes is valid; the name
    // fits (with its NUL) and the ioctls read and write only the ifreq.
    unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (dst, &src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = src as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            return Err(io::Error::last_os_error());
        }
        ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `execve(path, argv, envp)`; returns only on failure.
pub(super) fn execve(path: &CStr, argv: &[CString], envp: &[CString]) -> io::Error {
    let argv_ptrs: Vec<*const libc::c_char> = argv
        .iter()
        .map(|a| a.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    let envp_ptrs: Vec<*const libc::c_char> = envp
        .iter()
        .map(|e| e.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    // SAFETY: all pointers point into CStrings that outlive the call, and
    // both arrays end with a null pointer.
    unsafe { libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr()) };
    io::Error::last_os_error()
}
