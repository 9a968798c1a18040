//! [`Sys`] on the real kernel, through nix.

use super::{EraseReport, MountSpec, Sys, SysError, SysResult};
use nix::errno::Errno;
use nix::libc;
use nix::mount::{MntFlags, MsFlags};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// How long a program preinit runs (mkfs.ext4) may take: a lazily initialised ext4 on a large
/// eMMC formats in seconds; past this the program is hung, and the boot goes on without it.
pub const RUN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

pub struct Real {
    /// Open loop devices: auto-clear would detach them at our last close, so they stay open
    /// (close-on-exec) until init replaces us; by then the mount holds them.
    held: Vec<OwnedFd>,
    /// Where device nodes are (`<target>/dev`).
    pub dev_dir: PathBuf,
    /// How long `run` lets a program take.
    pub run_timeout: std::time::Duration,
}

impl Real {
    pub fn new(dev_dir: PathBuf) -> Real {
        Real {
            held: Vec::new(),
            dev_dir,
            run_timeout: RUN_TIMEOUT,
        }
    }
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

fn cstr(p: &Path) -> SysResult<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| {
        SysError::new(
            format!("path {} has a NUL byte", p.display()),
            Errno::EINVAL,
        )
    })
}

impl Sys for Real {
    fn mount(&mut self, m: &MountSpec) -> SysResult<()> {
        let data = (!m.data.is_empty()).then_some(m.data.as_str());
        nix::mount::mount(
            Some(m.source.as_str()),
            &m.target,
            Some(m.fstype.as_str()),
            m.flags,
            data,
        )
        .map_err(|e| SysError::new(m.to_string(), e).with_detail(kernel_says(m)))
    }

    fn umount(&mut self, target: &Path, detach: bool) -> SysResult<()> {
        let flags = if detach {
            MntFlags::MNT_DETACH
        } else {
            MntFlags::empty()
        };
        nix::mount::umount2(target, flags)
            .map_err(|e| SysError::new(format!("umount {}", target.display()), e))
    }

    fn move_mount(&mut self, from: &Path, to: &Path) -> SysResult<()> {
        nix::mount::mount(Some(from), to, None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(
            |e| {
                SysError::new(
                    format!("move mount {} to {}", from.display(), to.display()),
                    e,
                )
            },
        )
    }

    fn mkdir_p(&mut self, path: &Path) -> SysResult<()> {
        // At boot the directory is there nearly always (in the initramfs, the ROM or the
        // upper): one stat, where create_dir_all would mkdir (EEXIST) and then stat.
        if path.is_dir() {
            return Ok(());
        }
        std::fs::create_dir_all(path)
            .map_err(|e| SysError::new(format!("mkdir {}", path.display()), io_errno(&e)))
    }

    fn mknod(
        &mut self,
        path: &Path,
        block: bool,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> SysResult<()> {
        use nix::sys::stat::{makedev, Mode, SFlag};
        let kind = if block {
            SFlag::S_IFBLK
        } else {
            SFlag::S_IFCHR
        };
        let perm = Mode::from_bits_truncate(mode as nix::libc::mode_t);
        nix::sys::stat::mknod(path, kind, perm, makedev(major.into(), minor.into()))
            .map_err(|e| SysError::new(format!("mknod {} {major}:{minor}", path.display()), e))
    }

    fn chdir(&mut self, path: &Path) -> SysResult<()> {
        nix::unistd::chdir(path).map_err(|e| SysError::new(format!("chdir {}", path.display()), e))
    }

    fn chroot(&mut self, path: &Path) -> SysResult<()> {
        nix::unistd::chroot(path)
            .map_err(|e| SysError::new(format!("chroot {}", path.display()), e))
    }

    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> SysResult<()> {
        nix::unistd::pivot_root(new_root, put_old).map_err(|e| {
            SysError::new(
                format!("pivot_root {} {}", new_root.display(), put_old.display()),
                e,
            )
        })
    }

    fn free_tree(&mut self, root: &Path) -> SysResult<()> {
        // Only ever on the initramfs: a ramfs or tmpfs. Anything else is a bug we refuse.
        if !super::is_ram_fs(root) {
            return Err(SysError::msg(
                format!("free {}", root.display()),
                "not a ramfs or tmpfs, refusing to delete it",
            ));
        }
        let freed = super::free::below(root)
            .map_err(|e| SysError::new(format!("free {}", root.display()), e))?;
        if freed.failed > 0 {
            log::warn!(
                "free {}: {} names not removed",
                root.display(),
                freed.failed
            );
        }
        Ok(())
    }

    fn finit_module(&mut self, path: &Path, params: &str) -> SysResult<()> {
        let what = || format!("finit_module {} \"{params}\"", path.display());
        let file = std::fs::File::open(path).map_err(|e| SysError::new(what(), io_errno(&e)))?;
        let p = CString::new(params).map_err(|_| SysError::new(what(), Errno::EINVAL))?;
        nix::kmod::finit_module(&file, &p, nix::kmod::ModuleInitFlags::empty())
            .map_err(|e| SysError::new(what(), e))
    }

    fn run(&mut self, root: Option<&Path>, argv: &[String]) -> SysResult<()> {
        use crate::spawn::{Output, Spec, Waited};
        let what = format!("run {}", argv.join(" "));
        if argv.is_empty() {
            return Err(SysError::msg(what, "empty command"));
        }
        let (r, w) = std::io::pipe().map_err(|e| SysError::new(what.clone(), io_errno(&e)))?;
        let pid = crate::spawn::spawn(Spec {
            argv,
            env: &[],
            inherit_env: false,
            path: "/usr/sbin:/usr/bin:/sbin:/bin",
            root,
            stdout: Output::Null,
            stderr: Output::Fd(w.into()),
            group: false,
        })
        .map_err(|e| SysError::new(what.clone(), io_errno(&e)))?;
        // stderr is read beside the wait, so a chatty program cannot fill the pipe and stall.
        let (how, stderr) =
            crate::spawn::wait_reading(pid, r.into(), Some(self.run_timeout), 64 << 10)
                .map_err(|e| SysError::new(what.clone(), io_errno(&e)))?;
        let status = match how {
            Waited::Done(s) if s.success() => return Ok(()),
            Waited::Done(s) => s,
            Waited::Killed => {
                return Err(SysError::msg(
                    what,
                    format!(
                        "still running after {} s, killed",
                        crate::decimal::secs(self.run_timeout, 1)
                    ),
                ))
            }
        };
        let stderr = String::from_utf8_lossy(&stderr);
        let tail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = tail
            .get(tail.len().saturating_sub(2)..)
            .unwrap_or_default()
            .join(" / ");
        Err(SysError::msg(what, format!("{status}: {tail}")))
    }

    fn prepare_overlay(
        &mut self,
        overlay: &Path,
        want: &crate::overlay::Prepare,
    ) -> SysResult<crate::overlay::Prepared> {
        crate::overlay::prepare(overlay, want).map_err(|e| {
            SysError::msg(
                format!("first-boot record in {}", overlay.display()),
                e.to_string(),
            )
        })
    }

    fn clear_reset_mark(&mut self, device: &Path) -> SysResult<()> {
        crate::reset::clear_block_mark(device)
            .map(|_| ())
            .map_err(|e| {
                SysError::msg(
                    format!("clear the reset mark on {}", device.display()),
                    e.to_string(),
                )
            })
    }

    fn mtd_erase(&mut self, dev: &Path) -> SysResult<EraseReport> {
        crate::mtd::reset(dev, false, false, &mut || {})
            .map_err(|(what, e)| SysError::new(format!("erase {}: {what}", dev.display()), e))
    }

    fn loop_attach(&mut self, backing: &Path, offset: u64) -> SysResult<PathBuf> {
        let (path, fd) =
            crate::loopdev::attach(&self.dev_dir, backing, offset).map_err(|(w, e)| {
                SysError::new(format!("loop {} at {offset}: {w}", backing.display()), e)
            })?;
        self.held.push(fd);
        Ok(path)
    }

    fn ubi_attach(&mut self, ctrl: &Path, mtd: u32) -> SysResult<u32> {
        crate::ubi::attach(ctrl, mtd)
            .map_err(|e| SysError::new(format!("UBI_IOCATT mtd{mtd} on {}", ctrl.display()), e))
    }

    fn ubi_block(&mut self, vol: &Path) -> SysResult<()> {
        crate::ubi::create_block(vol)
            .map_err(|e| SysError::new(format!("UBI_IOCVOLCRBLK on {}", vol.display()), e))
    }

    fn ubi_mkvol(&mut self, dev: &Path, name: &str, bytes: u64) -> SysResult<()> {
        crate::ubi::mkvol(dev, name, bytes).map_err(|e| {
            SysError::new(
                format!("UBI_IOCMKVOL {name} ({bytes} bytes) on {}", dev.display()),
                e,
            )
        })
    }

    fn ubi_finish_stage(
        &mut self,
        vol: &Path,
        g: crate::ubistage::Geometry,
    ) -> SysResult<Option<String>> {
        crate::ubistage::finish(vol, g).map_err(|e| {
            SysError::msg(
                format!("finish the ROM staged in {}", vol.display()),
                format!("{e:#}"),
            )
        })
    }

    fn ubi_truncate(&mut self, vol: &Path) -> SysResult<()> {
        crate::ubi::update(vol, &[], &mut |_, _| {})
            .map_err(|e| SysError::new(format!("UBI_IOCVOLUP 0 on {}", vol.display()), e))
    }

    fn write_file(&mut self, path: &Path, bytes: &[u8]) -> SysResult<()> {
        // Written beside and renamed, so a reader never sees half a file.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes)
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|e| SysError::new(format!("write {}", path.display()), io_errno(&e)))
    }

    fn exists(&mut self, path: &Path) -> bool {
        // lstat: an absolute symlink inside the ROM points into the ROM once chrooted there,
        // not into the initramfs we look from.
        std::fs::symlink_metadata(path).is_ok()
    }

    fn random(&mut self, buf: &mut [u8]) {
        use std::io::Read;
        // urandom never blocks, even before the kernel's pool is ready (early boot).
        for p in [self.dev_dir.join("urandom"), PathBuf::from("/dev/urandom")] {
            if let Ok(mut f) = std::fs::File::open(&p) {
                if f.read_exact(buf).is_ok() {
                    return;
                }
            }
        }
        // No urandom at all: the clock is a poor but non-repeating stand-in.
        let mut x = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15)
            ^ u64::from(std::process::id());
        for b in buf.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }

    fn exec(&mut self, path: &Path, argv: &[String]) -> SysResult<()> {
        let what = || format!("exec {}", path.display());
        let prog = cstr(path)?;
        let args: Vec<CString> = argv
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|_| SysError::new(what(), Errno::EINVAL))?;
        match nix::unistd::execv(&prog, &args) {
            Err(e) => Err(SysError::new(what(), e)),
            Ok(never) => match never {},
        }
    }

    fn sleep(&mut self, d: std::time::Duration) {
        std::thread::sleep(d);
    }

    fn finish_restore(&mut self, root: &Path) -> SysResult<Option<bool>> {
        crate::restore::recover(root).map_err(|e| {
            SysError::msg(
                format!("finish the restore in {}", root.display()),
                format!("{e:#}"),
            )
        })
    }

    fn restore_kept(
        &mut self,
        root: &Path,
        overlay: &Path,
        kept: &crate::upgrade::Kept,
    ) -> SysResult<usize> {
        crate::upgrade::restore_kept(root, overlay, kept).map_err(|e| {
            SysError::msg(
                format!("restore {}", overlay.join(kept.file).display()),
                format!("{e:#}"),
            )
        })
    }

    fn check_writable(&mut self, dir: &Path, upper: &Path) -> SysResult<()> {
        use nix::sys::statvfs::{statvfs, FsFlags};
        let what = format!("check that {} is writable", dir.display());
        let st = statvfs(dir).map_err(|e| SysError::new(what.clone(), e))?;
        let probe = dir.join(super::WRITE_PROBE);
        let r = if st.flags().contains(FsFlags::ST_RDONLY) {
            Err(SysError::msg(what.clone(), "it is mounted read-only"))
        } else if on_jffs2(upper) {
            // overlayfs has just removed and made its work directory there, and mounts
            // read-only when it cannot: JFFS2 took a new entry, and it has no inode table to
            // run out of. A probe file would cost three more node writes (about 10 ms of NOR
            // programming under emulation).
            Ok(())
        } else {
            // An empty file: a full partition that still takes new files stays persistent
            // (the user can free space there); one that takes none does not.
            let create = || {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&probe)
            };
            create()
                .or_else(|e| {
                    // A leftover from a cut boot is ours: removed, and made again.
                    if e.kind() != std::io::ErrorKind::AlreadyExists {
                        return Err(e);
                    }
                    std::fs::remove_file(&probe)?;
                    create()
                })
                .map_err(|e| {
                    SysError::new(format!("{what}: create {}", probe.display()), io_errno(&e))
                })
                .and_then(|_| {
                    std::fs::remove_file(&probe).map_err(|e| {
                        SysError::new(format!("{what}: remove {}", probe.display()), io_errno(&e))
                    })
                })
        };
        // overlayfs goes read-only when it cannot make its work directory on a full upper:
        // then the upper's own numbers say why.
        r.map_err(|e| match upper_full(upper) {
            Some(why) => SysError {
                errno: Some(Errno::ENOSPC),
                detail: Some(why),
                ..e
            },
            None => e,
        })
    }

    fn reboot(&mut self) -> SysResult<()> {
        nix::unistd::sync();
        match nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT) {
            Err(e) => Err(SysError::new("reboot", e)),
            Ok(never) => match never {},
        }
    }
}

/// "N bytes and M inodes free" when the file system holding `dir` has no room left.
#[allow(clippy::unnecessary_cast)] // the field types are narrower on 32-bit targets
fn on_jffs2(dir: &Path) -> bool {
    const JFFS2_SUPER_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::FsType(0x72b6);
    nix::sys::statfs::statfs(dir).is_ok_and(|s| s.filesystem_type() == JFFS2_SUPER_MAGIC)
}

fn upper_full(dir: &Path) -> Option<String> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    let free = (st.blocks_free() as u64).saturating_mul(st.fragment_size() as u64);
    let (inodes, free_inodes) = (st.files() as u64, st.files_free() as u64);
    // A few blocks are what a file system keeps for itself; count those as full too.
    let full = (st.blocks_free() as u64) < 4 || (inodes > 0 && free_inodes == 0);
    full.then(|| format!("the upper has {free} bytes and {free_inodes} inodes free"))
}

// ---- the kernel's own words for a failed mount ----

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;

/// After mount(2) failed, tries the same mount through fsopen/fsconfig (Linux 5.2+), which
/// hands back the kernel's explanation ("overlayfs: upper fs does not support RENAME_WHITEOUT",
/// "jffs2: Too few erase blocks"), where mount(2) gives only an errno. Only run on failure.
fn kernel_says(m: &MountSpec) -> Option<String> {
    let fstype = CString::new(m.fstype.as_str()).ok()?;
    // SAFETY: fsopen takes a NUL-terminated name and flags; it returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fsopen returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let set = |key: &str, value: Option<&str>| -> bool {
        let (Ok(k), v) = (CString::new(key), value.map(CString::new)) else {
            return false;
        };
        let (cmd, vptr) = match &v {
            Some(Ok(v)) => (FSCONFIG_SET_STRING, v.as_ptr()),
            Some(Err(_)) => return false,
            None => (FSCONFIG_SET_FLAG, std::ptr::null()),
        };
        // SAFETY: fsconfig reads the two strings, which live until it returns.
        unsafe { libc::syscall(libc::SYS_fsconfig, fd.as_raw_fd(), cmd, k.as_ptr(), vptr, 0) == 0 }
    };
    let mut ok = set("source", Some(&m.source));
    if m.flags.contains(MsFlags::MS_RDONLY) {
        ok = ok && set("ro", None);
    }
    for opt in m.data.split(',').filter(|o| !o.is_empty()) {
        if !ok {
            break;
        }
        ok = match opt.split_once('=') {
            Some((k, v)) => set(k, Some(v)),
            None => set(opt, None),
        };
    }
    if ok {
        // SAFETY: as above, no strings.
        unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fd.as_raw_fd(),
                FSCONFIG_CMD_CREATE,
                std::ptr::null::<libc::c_char>(),
                std::ptr::null::<libc::c_char>(),
                0,
            )
        };
    }
    // Each read returns one message: "e overlayfs: ...", "w ...", "i ...".
    let mut msgs = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        // SAFETY: reads into our buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 || msgs.len() >= 4 {
            break;
        }
        let text = String::from_utf8_lossy(buf.get(..n.unsigned_abs()).unwrap_or_default());
        if let Some(rest) = text.strip_prefix("e ").or_else(|| text.strip_prefix("w ")) {
            msgs.push(rest.trim().to_string());
        }
    }
    (!msgs.is_empty()).then(|| msgs.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn the_write_probe_is_made_and_removed_also_over_a_leftover() {
        let dir = tempfile::tempdir().unwrap();
        let probe = dir.path().join(super::super::WRITE_PROBE);
        let mut r = Real::new("/dev".into());
        r.check_writable(dir.path(), dir.path()).unwrap();
        assert!(!probe.exists());
        // A cut boot's leftover.
        std::fs::write(&probe, b"").unwrap();
        r.check_writable(dir.path(), dir.path()).unwrap();
        assert!(!probe.exists());
        // A directory by that name is not ours to remove: the check fails, naming it.
        std::fs::create_dir(&probe).unwrap();
        let e = r.check_writable(dir.path(), dir.path()).unwrap_err();
        assert!(e.to_string().contains(".ovl-write-probe"), "{e}");
        assert!(probe.is_dir());
    }

    #[test]
    fn a_directory_that_is_there_is_not_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Real::new("/dev".into());
        r.mkdir_p(&dir.path().join("a/b")).unwrap();
        r.mkdir_p(&dir.path().join("a/b")).unwrap();
        assert!(dir.path().join("a/b").is_dir());
        std::fs::write(dir.path().join("f"), b"").unwrap();
        assert!(r.mkdir_p(&dir.path().join("f")).is_err());
    }

    #[test]
    fn run_reports_the_exit_status_and_the_last_lines_of_stderr() {
        let mut r = Real::new("/dev".into());
        assert!(r.run(None, &argv(&["true"])).is_ok());
        let e = r
            .run(
                None,
                &argv(&["sh", "-c", "echo one >&2; echo two >&2; exit 3"]),
            )
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("exit status: 3") && text.contains("one / two"),
            "{text}"
        );
        assert!(r.run(None, &argv(&["/nonexistent/mkfs"])).is_err());
    }

    #[test]
    fn a_hung_program_is_killed_at_the_time_limit() {
        let mut r = Real::new("/dev".into());
        r.run_timeout = std::time::Duration::from_millis(200);
        let start = std::time::Instant::now();
        let e = r.run(None, &argv(&["sleep", "30"])).unwrap_err();
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        assert!(e.to_string().contains("killed"), "{e}");
    }

    #[test]
    fn random_bytes_differ_between_calls() {
        let mut r = Real::new("/nonexistent".into());
        let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
        r.random(&mut a);
        r.random(&mut b);
        assert_ne!(a, b);
    }
}
