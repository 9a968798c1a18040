//! Waiting for device nodes by event: an inotify watch on `/dev`, where devtmpfs makes the
//! node of every device the kernel adds (an MTD partition, a disk's partitions, a UBI volume)
//! once its sysfs entry is complete. [`find`](super::find) scans again when a name is made
//! there instead of sleeping between scans; a timeout still bounds every wait.
//!
//! Without devtmpfs, preinit makes the nodes itself from sysfs, so nothing happens in `/dev`
//! until it scans: there (and where inotify is missing) the wait is a short sleep, as before.

use nix::libc;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

/// How long to sleep between scans when no event can be had.
pub const POLL: Duration = Duration::from_millis(25);
/// The longest a wait trusts the watch alone: a safety net for a change that makes no node in
/// `/dev` (a partition table read late, a sysfs attribute filled in after the node).
pub const RESCAN: Duration = Duration::from_millis(200);

/// What a wait was told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    /// A name was made or moved in, in the watched directory.
    Event,
    /// Nothing happened in the time (or there is no watch and it slept).
    Timeout,
}

/// An inotify watch on one directory, or nothing (then [`DevWatch::wait`] sleeps).
pub struct DevWatch {
    fd: Option<OwnedFd>,
}

impl DevWatch {
    /// Watches `dir` for names made in it. A scan follows the set-up before the first wait, so
    /// that a node made between a scan and the wait is not missed. `poll_only` (no devtmpfs) or an inotify the
    /// kernel refuses give a watch that sleeps.
    pub fn new(dir: &Path, poll_only: bool) -> DevWatch {
        if poll_only {
            return DevWatch { fd: None };
        }
        DevWatch {
            fd: watch(dir)
                .map_err(|e| log::debug!("inotify on {}: {e}", dir.display()))
                .ok(),
        }
    }

    /// Whether waits are by event.
    pub fn by_event(&self) -> bool {
        self.fd.is_some()
    }

    /// Waits up to `limit` for something to be made in the directory; the events that came are
    /// read and dropped (the caller scans everything again anyway). Without a watch: sleeps
    /// [`POLL`] (or `limit` when shorter).
    pub fn wait(&self, limit: Duration) -> Woke {
        let Some(fd) = &self.fd else {
            std::thread::sleep(limit.min(POLL));
            return Woke::Timeout;
        };
        let ms = libc::c_int::try_from(limit.min(RESCAN).as_millis()).unwrap_or(libc::c_int::MAX);
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n <= 0 {
            if n < 0 {
                // EINTR or worse: do not spin on it.
                std::thread::sleep(limit.min(POLL));
            }
            return Woke::Timeout;
        }
        let mut buf = [0u8; 4096];
        // Non-blocking: reads what is queued, then EAGAIN.
        // SAFETY: the buffer is valid for its length.
        while unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
        Woke::Event
    }
}

fn watch(dir: &Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: plain system calls; the fd is owned from here on.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mask = libc::IN_CREATE | libc::IN_MOVED_TO;
    // SAFETY: a valid fd and NUL-terminated path.
    if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_name_made_in_the_directory_ends_the_wait_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let w = DevWatch::new(dir.path(), false);
        assert!(w.by_event());
        let p = dir.path().join("mtdblock2");
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            std::fs::write(p, b"").unwrap();
        });
        let start = Instant::now();
        let mut woke = Woke::Timeout;
        while woke == Woke::Timeout && start.elapsed() < Duration::from_secs(5) {
            woke = w.wait(Duration::from_secs(5));
        }
        t.join().unwrap();
        assert_eq!(woke, Woke::Event);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn a_quiet_directory_times_out_and_events_before_the_wait_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let w = DevWatch::new(dir.path(), false);
        let start = Instant::now();
        assert_eq!(w.wait(Duration::from_millis(30)), Woke::Timeout);
        assert!(start.elapsed() >= Duration::from_millis(25));
        // Made between a scan and the wait: the wait returns at once.
        std::fs::create_dir(dir.path().join("vda2")).unwrap();
        assert_eq!(w.wait(Duration::from_secs(5)), Woke::Event);
        // Drained: the next wait is quiet again.
        assert_eq!(w.wait(Duration::from_millis(10)), Woke::Timeout);
    }

    #[test]
    fn without_devtmpfs_it_sleeps_a_short_poll() {
        let dir = tempfile::tempdir().unwrap();
        let w = DevWatch::new(dir.path(), true);
        assert!(!w.by_event());
        let start = Instant::now();
        assert_eq!(w.wait(Duration::from_secs(5)), Woke::Timeout);
        let took = start.elapsed();
        assert!(took >= POLL && took < Duration::from_secs(1), "{took:?}");
        // A missing directory gives no watch either: it sleeps.
        assert!(!DevWatch::new(&dir.path().join("none"), false).by_event());
    }
}
