//! Exclusive ownership of an outbox directory.
//!
//! Two processes (or two `Outbox` values) on one directory would both deliver
//! every entry and race on renames, so `open` takes a non-blocking `flock(2)`
//! on `<dir>/LOCK`. The kernel drops the lock when the process dies, so a
//! `kill -9` never leaves a stale lock behind (unlike a pid file).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

pub(crate) struct DirLock {
    // Held only to keep the lock: closing the descriptor releases it.
    _file: File,
}

impl DirLock {
    /// `Ok(None)` when another holder has the lock.
    pub(crate) fn try_acquire(root: &Path) -> io::Result<Option<DirLock>> {
        let file = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(root.join("LOCK"))?;
        if try_flock(&file)? {
            Ok(Some(DirLock { _file: file }))
        } else {
            Ok(None)
        }
    }
}

#[cfg(unix)]
#[allow(unsafe_code)]
fn try_flock(file: &File) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock only reads the descriptor number, which stays valid for
    // the duration of the call because `file` is borrowed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

#[cfg(not(unix))]
fn try_flock(_file: &File) -> io::Result<bool> {
    // No advisory locking off Unix; the worker only ships on Linux.
    Ok(true)
}
