//! What PID 1 does when the boot code crashes after all: a panic (the device build aborts at
//! once, with an illegal instruction), a segfault, an abort. The kernel would panic on the
//! death of init, and on a router that is a boot loop with no word of why.
//!
//! Instead the handler writes one line to kmsg and executes preinit again, as PID 1, with
//! `OVL_CRASHED=<signal>:<last step>` in its environment. That run boots on tmpfs without
//! touching the writable partition (whatever made the first attempt crash is likely there)
//! and publishes why. A crash in that second run cannot be helped this way: it says so, waits
//! and reboots, as a boot with nothing to run does.
//!
//! Everything the handler needs is prepared by `install`; in the handler only
//! async-signal-safe calls are made (open, write, execve, nanosleep, reboot), on stack buffers.

use std::ffi::CString;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use nix::libc;

/// The environment variable that tells preinit the attempt before it crashed.
pub const ENV: &str = "OVL_CRASHED";

/// The steps `Clock::lap` records, in order; the handler names the last one completed.
pub const STEPS: [&str; 8] = [
    "start", "setup", "modules", "find", "rom", "upper", "root", "switch",
];
static LAST_STEP: AtomicUsize = AtomicUsize::new(0);

/// argv and envp for the second run, prepared by `install` (leaked: PID 1 lives forever).
/// The envp array has a free slot before its final null for the OVL_CRASHED entry.
struct Again {
    /// The path the kernel ran us by, tried after /proc/self/exe (which works even when the
    /// initramfs that held the file is freed, but needs /proc).
    path: CString,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    /// Set when this run is already the second one.
    second: bool,
}
static AGAIN: AtomicPtr<Again> = AtomicPtr::new(std::ptr::null_mut());

/// Records that `step` is done (for the crash line).
pub fn step_done(step: &str) {
    if let Some(i) = STEPS.iter().position(|s| *s == step) {
        LAST_STEP.store(i, Ordering::Relaxed);
    }
}

/// The crash that the previous attempt of this boot reported, if any (`OVL_CRASHED`).
pub fn previous() -> Option<String> {
    std::env::var(ENV).ok().filter(|v| !v.is_empty())
}

/// Installs the handlers (PID 1 only). `exe` is the path the kernel ran us by.
pub fn install(exe: &str) {
    let mk = |s: &[u8]| CString::new(s).ok();
    let Some(path) = mk(exe.as_bytes()) else {
        return;
    };
    let mut keep: Vec<CString> = Vec::new();
    for a in std::env::args_os() {
        if let Some(c) = mk(std::os::unix::ffi::OsStrExt::as_bytes(a.as_os_str())) {
            keep.push(c);
        }
    }
    let argc = keep.len();
    for (k, v) in std::env::vars_os() {
        if k == ENV {
            continue;
        }
        let mut kv = std::os::unix::ffi::OsStrExt::as_bytes(k.as_os_str()).to_vec();
        kv.push(b'=');
        kv.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()));
        if let Some(c) = mk(&kv) {
            keep.push(c);
        }
    }
    let keep: &'static [CString] = Vec::leak(keep);
    let (args, envs) = keep.split_at(argc);
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = envs.iter().map(|c| c.as_ptr()).collect();
    envp.push(std::ptr::null()); // the OVL_CRASHED slot
    envp.push(std::ptr::null());
    let again = Box::leak(Box::new(Again {
        path,
        argv,
        envp,
        second: previous().is_some(),
    }));
    AGAIN.store(again, Ordering::SeqCst);
    // SAFETY: plain sigaction and sigprocmask calls with a handler of the right signature.
    unsafe {
        // A handler that ran execve leaves its signal blocked in the new image: unblock.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in [
            libc::SIGILL,
            libc::SIGTRAP,
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGABRT,
            libc::SIGFPE,
        ] {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESETHAND;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    crashed(u32::try_from(sig).unwrap_or(0));
}

/// A fixed buffer written without allocating.
struct Line {
    buf: [u8; 192],
    len: usize,
}

impl Line {
    fn new() -> Line {
        Line {
            buf: [0; 192],
            len: 0,
        }
    }
    fn push(&mut self, s: &[u8]) -> &mut Line {
        for &b in s {
            // Keep room for a final newline or NUL.
            if self.len + 1 < self.buf.len() {
                if let Some(slot) = self.buf.get_mut(self.len) {
                    *slot = b;
                }
                self.len += 1;
            }
        }
        self
    }
    fn num(&mut self, mut n: u32) -> &mut Line {
        let mut digits = [0u8; 10];
        let mut i = digits.len();
        loop {
            i -= 1;
            if let Some(d) = digits.get_mut(i) {
                *d = b'0' + (n % 10) as u8;
            }
            n /= 10;
            if n == 0 || i == 0 {
                break;
            }
        }
        self.push(digits.get(i..).unwrap_or_default())
    }
    fn bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }
}

fn say(line: &[u8]) {
    for dev in [c"/dev/kmsg", c"/dev/console"] {
        // SAFETY: open/write/close of a path and our own buffer.
        unsafe {
            let fd = libc::open(
                dev.as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOCTTY,
            );
            if fd >= 0 {
                libc::write(fd, line.as_ptr().cast(), line.len());
                libc::close(fd);
            }
        }
    }
}

/// The crash path: from the signal handler, or from the panic hook (stable builds; `sig` 0).
pub fn crashed(sig: u32) -> ! {
    let step = STEPS
        .get(LAST_STEP.load(Ordering::Relaxed))
        .copied()
        .unwrap_or("start");
    let again = AGAIN.load(Ordering::SeqCst);
    // "panic" or "signal 4": in the line and, for the second run, in OVL_CRASHED.
    let mut cause = Line::new();
    if sig == 0 {
        cause.push(b"panic");
    } else {
        cause.push(b"signal ").num(sig);
    }
    let mut line = Line::new();
    line.push(b"preinit: BUG: crashed (")
        .push(cause.bytes())
        .push(b") after step ")
        .push(step.as_bytes());
    // SAFETY: `again` was leaked by install and is never freed or written after.
    let again = unsafe { again.as_mut() };
    match again {
        Some(a) if !a.second => {
            line.push(b"; starting again on tmpfs\n");
            say(line.bytes());
            let mut env = Line::new();
            env.push(ENV.as_bytes())
                .push(b"=")
                .push(cause.bytes())
                .push(b" after step ")
                .push(step.as_bytes())
                .push(b"\0");
            let slot = a.envp.len().saturating_sub(2);
            if let Some(p) = a.envp.get_mut(slot) {
                *p = env.buf.as_ptr().cast();
            }
            // SAFETY: NUL-terminated strings and null-terminated arrays prepared above.
            unsafe {
                libc::execve(c"/proc/self/exe".as_ptr(), a.argv.as_ptr(), a.envp.as_ptr());
                libc::execve(a.path.as_ptr(), a.argv.as_ptr(), a.envp.as_ptr());
            }
            say(b"preinit: BUG: could not start preinit again\n");
        }
        _ => {
            line.push(b" in the second attempt too; rebooting in 10 s\n");
            say(line.bytes());
        }
    }
    // SAFETY: nanosleep and reboot take plain values.
    unsafe {
        let t = libc::timespec {
            tv_sec: 10,
            tv_nsec: 0,
        };
        libc::nanosleep(&t, std::ptr::null_mut());
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
        loop {
            libc::pause();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_is_built_without_allocating_and_stays_in_bounds() {
        let mut l = Line::new();
        l.push(b"signal ")
            .num(11)
            .push(b" after ")
            .num(0)
            .push(b" ")
            .num(4294967295);
        assert_eq!(l.bytes(), b"signal 11 after 0 4294967295");
        let long = [b'x'; 500];
        let mut l = Line::new();
        l.push(&long);
        assert_eq!(l.bytes().len(), 191);
    }

    #[test]
    fn steps_are_recorded_by_name() {
        step_done("find");
        assert_eq!(STEPS.get(LAST_STEP.load(Ordering::Relaxed)), Some(&"find"));
        step_done("no-such-step");
        assert_eq!(STEPS.get(LAST_STEP.load(Ordering::Relaxed)), Some(&"find"));
    }
}
