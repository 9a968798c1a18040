//! Starting a program: fork and exec by hand. `std::process::Command` brings an environment
//! map, a thread for the output and `posix_spawn` plumbing (about 20 KiB of the device
//! binary) for the three programs ovl runs (mkfs, the run-once scripts, tests' helpers).
//!
//! Everything the child needs is built before the fork, so between fork and exec the child
//! makes only async-signal-safe system calls (no allocation): safe in a threaded test harness.

use std::ffi::{CString, OsStr};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use nix::libc;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// The signal that asked the waits to stop (0: none), stored by the handler that
/// [`stop_on_signals`] installs.
static STOP: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop(sig: libc::c_int) {
    STOP.store(sig, Ordering::Relaxed);
}

/// From now on SIGINT, SIGTERM and SIGHUP do not end this process: [`wait_reading`] kills
/// the child it waits for, with its group, and returns, and [`stopped`] names the signal. A
/// child in a group of its own gets neither the terminal's Ctrl-C nor a kill of our group:
/// without this it would run on, unwatched, after we are gone.
pub fn stop_on_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a plain sigaction with a handler of the right signature that only stores
        // to an atomic.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_stop as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// The signal that asked to stop, once one came (see [`stop_on_signals`]).
pub fn stopped() -> Option<i32> {
    Some(STOP.load(Ordering::Relaxed)).filter(|s| *s != 0)
}

/// Where a child's output goes.
pub enum Output {
    /// /dev/null.
    Null,
    /// This file descriptor (a pipe's write end, say).
    Fd(OwnedFd),
}

/// What to run.
pub struct Spec<'a> {
    pub argv: &'a [String],
    /// Extra variables on top of the inherited environment (or of an empty one).
    pub env: &'a [(&'a str, &'a str)],
    /// Inherit this process's environment.
    pub inherit_env: bool,
    /// Programs named without a slash are looked up here (after the chroot).
    pub path: &'a str,
    /// chroot here (and cd /) before the exec.
    pub root: Option<&'a Path>,
    pub stdout: Output,
    pub stderr: Output,
    /// A process group of its own, so that a kill at a deadline takes what it started too.
    pub group: bool,
}

/// How a child ended, worded as `std::process::ExitStatus` words it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Exited(i32),
    Signaled(i32),
}

impl Status {
    pub fn success(self) -> bool {
        self == Status::Exited(0)
    }
    /// The exit code, or 128 + the signal, as a shell reports it.
    pub fn code(self) -> i32 {
        match self {
            Status::Exited(c) => c,
            Status::Signaled(s) => 128 + s,
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::Exited(c) => write!(f, "exit status: {c}"),
            Status::Signaled(s) => write!(f, "signal: {s}"),
        }
    }
}

fn cstr(s: &[u8]) -> std::io::Result<CString> {
    CString::new(s).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Starts the program; returns its pid once the exec succeeded (an exec that failed, a
/// missing program say, is this call's error).
pub fn spawn(spec: Spec<'_>) -> std::io::Result<Pid> {
    let (prog, _) = spec
        .argv
        .split_first()
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // Candidates in PATH order, as execvp would try them; resolved after the chroot.
    let candidates: Vec<CString> = if prog.contains('/') {
        vec![cstr(prog.as_bytes())?]
    } else {
        spec.path
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| cstr(format!("{d}/{prog}").as_bytes()))
            .collect::<Result<_, _>>()?
    };
    let args: Vec<CString> = spec
        .argv
        .iter()
        .map(|a| cstr(a.as_bytes()))
        .collect::<Result<_, _>>()?;
    let mut env: Vec<CString> = Vec::new();
    if spec.inherit_env {
        for (k, v) in std::env::vars_os() {
            if spec.env.iter().any(|(ek, _)| OsStr::new(ek) == k) {
                continue;
            }
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            if let Ok(c) = CString::new(kv) {
                env.push(c);
            }
        }
    }
    for (k, v) in spec.env {
        env.push(cstr(format!("{k}={v}").as_bytes())?);
    }
    let argp: Vec<*const libc::c_char> = args
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = env
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let root = spec
        .root
        .map(|r| cstr(r.as_os_str().as_bytes()))
        .transpose()?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let out_fd = match &spec.stdout {
        Output::Null => null.as_raw_fd(),
        Output::Fd(f) => f.as_raw_fd(),
    };
    let err_fd = match &spec.stderr {
        Output::Null => null.as_raw_fd(),
        Output::Fd(f) => f.as_raw_fd(),
    };
    // The child reports a failed exec's errno here; a successful exec closes it (CLOEXEC).
    let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let report_w_fd = report_w.as_raw_fd();

    // SAFETY: the child only calls async-signal-safe functions on data prepared above, and
    // leaves by exec or _exit.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => unsafe {
            let fail = |e: i32| -> ! {
                let b = e.to_ne_bytes();
                libc::write(report_w_fd, b.as_ptr().cast(), b.len());
                libc::_exit(127)
            };
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            // Rust ignores SIGPIPE; the programs it starts expect the default.
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            if spec.group {
                libc::setpgid(0, 0);
            }
            if libc::dup2(null.as_raw_fd(), 0) < 0
                || libc::dup2(out_fd, 1) < 0
                || libc::dup2(err_fd, 2) < 0
            {
                fail(errno());
            }
            if let Some(root) = &root {
                if libc::chroot(root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                    fail(errno());
                }
            }
            let mut last = libc::ENOENT;
            for c in &candidates {
                libc::execve(c.as_ptr(), argp.as_ptr(), envp.as_ptr());
                let e = errno();
                // As execvp: a missing or unreachable candidate sends it to the next one.
                if !matches!(e, libc::ENOENT | libc::ENOTDIR | libc::EACCES) {
                    fail(e);
                }
                if e == libc::EACCES || last == libc::ENOENT {
                    last = e;
                }
            }
            fail(last)
        },
        nix::unistd::ForkResult::Parent { child } => {
            drop(report_w);
            drop(spec.stdout);
            drop(spec.stderr);
            let mut buf = [0u8; 4];
            let mut f = std::fs::File::from(report_r);
            let mut got = 0;
            while got < 4 {
                match f.read(buf.get_mut(got..).unwrap_or_default()) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            if got == 4 {
                let _ = waitpid(child, None);
                return Err(std::io::Error::from_raw_os_error(i32::from_ne_bytes(buf)));
            }
            Ok(child)
        }
    }
}

fn status_of(ws: WaitStatus) -> Option<Status> {
    match ws {
        WaitStatus::Exited(_, c) => Some(Status::Exited(c)),
        WaitStatus::Signaled(_, s, _) => Some(Status::Signaled(s as i32)),
        _ => None,
    }
}

/// Waits for the child.
pub fn wait(pid: Pid) -> std::io::Result<Status> {
    loop {
        match waitpid(pid, None) {
            Ok(ws) => {
                if let Some(s) = status_of(ws) {
                    return Ok(s);
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// How `wait_reading` ended.
pub enum Waited {
    Done(Status),
    /// Still running at the deadline or when asked to stop: killed (with its process group)
    /// and reaped.
    Killed,
}

/// Waits up to `limit` (`None`: no limit) for the child while reading `pipe` (its output), so a
/// chatty program cannot fill the pipe and stall; keeps the last `keep` bytes of what it read.
/// It returns when the child exits, even while something the child started holds the pipe,
/// and kills it at the limit or when a signal asked to stop ([`stop_on_signals`]).
pub fn wait_reading(
    pid: Pid,
    pipe: OwnedFd,
    limit: Option<Duration>,
    keep: usize,
) -> std::io::Result<(Waited, Vec<u8>)> {
    let deadline = limit.and_then(|l| Instant::now().checked_add(l));
    let mut out: Vec<u8> = Vec::new();
    let mut open = true;
    let mut f = std::fs::File::from(pipe);
    loop {
        if open {
            open =
                read_some(&mut f, &mut out, keep, nix::poll::PollTimeout::from(20u8)) != Got::End;
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(ws) => {
                if let Some(s) = status_of(ws) {
                    // Exited, maybe with something it started (a daemon) still holding the
                    // pipe open: take what is already written and go.
                    if open {
                        while read_some(&mut f, &mut out, keep, nix::poll::PollTimeout::ZERO)
                            == Got::Data
                        {}
                    }
                    return Ok((Waited::Done(s), out));
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) if !open => return Err(e.into()),
            Err(_) => {}
        }
        if stopped().is_some() || deadline.is_some_and(|d| Instant::now() >= d) {
            // The group exists when the child made one (Spec::group); else this finds none.
            let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
            let _ = kill(pid, Signal::SIGKILL);
            let _ = wait(pid);
            return Ok((Waited::Killed, out));
        }
    }
}

#[derive(PartialEq, Eq)]
enum Got {
    /// Bytes were read.
    Data,
    /// Nothing within the timeout (or interrupted).
    Nothing,
    /// End of file, or the pipe failed.
    End,
}

/// One poll of the pipe and at most one read, keeping the last `keep` bytes in `out`.
fn read_some(
    f: &mut std::fs::File,
    out: &mut Vec<u8>,
    keep: usize,
    timeout: nix::poll::PollTimeout,
) -> Got {
    let mut fds = [nix::poll::PollFd::new(
        f.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    match nix::poll::poll(&mut fds, timeout) {
        Ok(n) if n > 0 => {
            let mut chunk = [0u8; 4096];
            match f.read(&mut chunk) {
                Ok(0) => Got::End,
                Ok(n) => {
                    out.extend_from_slice(chunk.get(..n).unwrap_or_default());
                    if out.len() > keep {
                        out.drain(..out.len() - keep);
                    }
                    Got::Data
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Got::Nothing,
                Err(_) => Got::End,
            }
        }
        Ok(_) | Err(nix::errno::Errno::EINTR) => Got::Nothing,
        Err(_) => Got::End,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    fn spec<'a>(argv: &'a [String], stderr: Output) -> Spec<'a> {
        Spec {
            argv,
            env: &[],
            inherit_env: false,
            path: "/usr/bin:/bin",
            root: None,
            stdout: Output::Null,
            stderr,
            group: false,
        }
    }

    #[test]
    fn runs_reads_and_reports_the_status() {
        let a = argv(&["sh", "-c", "echo hello >&2; exit 7"]);
        let (r, w) = std::io::pipe().unwrap();
        let pid = spawn(spec(&a, Output::Fd(w.into()))).unwrap();
        let (how, out) = wait_reading(pid, r.into(), Some(Duration::from_secs(20)), 100).unwrap();
        assert!(matches!(how, Waited::Done(Status::Exited(7))));
        assert_eq!(out, b"hello\n");
        assert_eq!(Status::Exited(7).to_string(), "exit status: 7");
        assert_eq!(Status::Signaled(9).code(), 137);
    }

    #[test]
    fn a_missing_program_is_the_spawn_error() {
        let a = argv(&["no-such-program-here"]);
        let e = spawn(spec(&a, Output::Null)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        let a = argv(&["/nonexistent/mkfs"]);
        assert!(spawn(spec(&a, Output::Null)).is_err());
        assert!(spawn(spec(&[], Output::Null)).is_err());
    }

    #[test]
    fn the_environment_is_what_was_asked() {
        let a = argv(&["sh", "-c", "echo \"$OVL_X-$HOME\" >&2"]);
        let (r, w) = std::io::pipe().unwrap();
        let mut s = spec(&a, Output::Fd(w.into()));
        s.env = &[("OVL_X", "1")];
        let pid = spawn(s).unwrap();
        let (_, out) = wait_reading(pid, r.into(), Some(Duration::from_secs(20)), 100).unwrap();
        assert_eq!(out, b"1-\n");
    }

    #[test]
    fn keeps_the_tail_and_kills_at_the_limit() {
        let a = argv(&[
            "sh",
            "-c",
            "i=0; while [ $i -lt 500 ]; do echo line$i >&2; i=$((i+1)); done; exec sleep 30",
        ]);
        let (r, w) = std::io::pipe().unwrap();
        let pid = spawn(spec(&a, Output::Fd(w.into()))).unwrap();
        let t = Instant::now();
        let (how, out) = wait_reading(pid, r.into(), Some(Duration::from_millis(1500)), 8).unwrap();
        assert!(matches!(how, Waited::Killed));
        assert!(t.elapsed() < Duration::from_secs(10));
        assert_eq!(out, b"line499\n");
    }
}
