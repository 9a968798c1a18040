//! Every system call preinit makes that changes something goes through [`Sys`]: the real
//! implementation on nix ([`real::Real`]) and a double that records the calls
//! ([`record::Recorder`]), so the boot logic can be unit-tested without root.

pub mod free;
pub mod real;
pub mod record;

use nix::errno::Errno;
use nix::mount::MsFlags;
use std::fmt;
use std::path::{Path, PathBuf};

/// A failed system call: what was asked, of what, and what the kernel said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysError {
    /// The call and its arguments, e.g. `mount /dev/loop3 on /overlay (ext4)`.
    pub what: String,
    pub errno: Option<Errno>,
    /// Text the kernel or a program gave beside the errno (overlayfs's reason, mkfs's stderr).
    pub detail: Option<String>,
}

impl SysError {
    pub fn new(what: impl Into<String>, errno: Errno) -> SysError {
        SysError {
            what: what.into(),
            errno: Some(errno),
            detail: None,
        }
    }
    pub fn msg(what: impl Into<String>, detail: impl Into<String>) -> SysError {
        SysError {
            what: what.into(),
            errno: None,
            detail: Some(detail.into()),
        }
    }
    pub fn with_detail(mut self, detail: Option<String>) -> SysError {
        if detail.is_some() {
            self.detail = detail;
        }
        self
    }
}

impl fmt::Display for SysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.what)?;
        if let Some(e) = self.errno {
            write!(f, ": {} ({}", errno_text(e), errno_name(e))?;
            // File systems reuse these two errnos with their own meaning; say it plainly.
            match e {
                Errno::EBADMSG => write!(f, ": a metadata checksum is wrong")?,
                Errno::EUCLEAN => write!(f, ": the file system is corrupted")?,
                _ => {}
            }
            write!(f, ")")?;
        }
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SysError {}

pub type SysResult<T> = Result<T, SysError>;

/// The C library's text for an errno ("No space left on device"), through std, which carries
/// it anyway: nix's own tables of every errno's text and name are 12 KiB of the device binary.
pub fn errno_text(e: Errno) -> String {
    let s = std::io::Error::from_raw_os_error(e as i32).to_string();
    // std says "TEXT (os error N)"; the name that follows in SysError says more than N.
    match s.rsplit_once(" (os error ") {
        Some((text, _)) => text.to_string(),
        None => s,
    }
}

/// The commands' error for a failed system call: `WHAT: TEXT` ("open /dev/ubi0_1: No such
/// device"). One function, so that each caller builds only its WHAT.
pub fn errno_error(what: std::fmt::Arguments<'_>, e: Errno) -> anyhow::Error {
    anyhow::anyhow!("{what}: {}", errno_text(e))
}

/// The symbol of the errnos that mounts, flash and files meet; others by number.
pub fn errno_name(e: Errno) -> std::borrow::Cow<'static, str> {
    use Errno::*;
    let name = match e {
        EPERM => "EPERM",
        ENOENT => "ENOENT",
        EINTR => "EINTR",
        EIO => "EIO",
        ENXIO => "ENXIO",
        E2BIG => "E2BIG",
        ENOEXEC => "ENOEXEC",
        EBADF => "EBADF",
        ECHILD => "ECHILD",
        EAGAIN => "EAGAIN",
        ENOMEM => "ENOMEM",
        EACCES => "EACCES",
        EFAULT => "EFAULT",
        ENOTBLK => "ENOTBLK",
        EBUSY => "EBUSY",
        EEXIST => "EEXIST",
        EXDEV => "EXDEV",
        ENODEV => "ENODEV",
        ENOTDIR => "ENOTDIR",
        EISDIR => "EISDIR",
        EINVAL => "EINVAL",
        ENFILE => "ENFILE",
        EMFILE => "EMFILE",
        ENOTTY => "ENOTTY",
        ETXTBSY => "ETXTBSY",
        EFBIG => "EFBIG",
        ENOSPC => "ENOSPC",
        ESPIPE => "ESPIPE",
        EROFS => "EROFS",
        EMLINK => "EMLINK",
        EPIPE => "EPIPE",
        ERANGE => "ERANGE",
        ENAMETOOLONG => "ENAMETOOLONG",
        ENOSYS => "ENOSYS",
        ENOTEMPTY => "ENOTEMPTY",
        ELOOP => "ELOOP",
        ENODATA => "ENODATA",
        ETIMEDOUT => "ETIMEDOUT",
        EOVERFLOW => "EOVERFLOW",
        EBADMSG => "EBADMSG",
        EOPNOTSUPP => "EOPNOTSUPP",
        EUCLEAN => "EUCLEAN",
        ENOMEDIUM => "ENOMEDIUM",
        EMEDIUMTYPE => "EMEDIUMTYPE",
        EDQUOT => "EDQUOT",
        _ => return format!("errno {}", e as i32).into(),
    };
    name.into()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub source: String,
    pub target: PathBuf,
    pub fstype: String,
    pub flags: MsFlags,
    pub data: String,
}

impl fmt::Display for MountSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mount {} on {} ({}",
            self.source,
            self.target.display(),
            self.fstype
        )?;
        if self.flags.contains(MsFlags::MS_RDONLY) {
            write!(f, ", ro")?;
        }
        if !self.data.is_empty() {
            write!(f, ", {}", self.data)?;
        }
        write!(f, ")")
    }
}

/// Whether `path` is on a ramfs or tmpfs: the kinds an initramfs root is.
pub fn is_ram_fs(path: &Path) -> bool {
    // RAMFS_MAGIC from include/uapi/linux/magic.h; nix names only TMPFS_MAGIC. FsType is an
    // i32 on 32-bit glibc, so the magic is written as the u32 it is and cast to fit.
    #[allow(clippy::unnecessary_cast)]
    const RAMFS_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::FsType(0x8584_58f6_u32 as _);
    nix::sys::statfs::statfs(path).is_ok_and(|s| {
        s.filesystem_type() == RAMFS_MAGIC || s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_what_failed_and_why() {
        let e = SysError::new("mount /dev/vda2 on /overlay (ext4)", Errno::EBADMSG);
        assert_eq!(
            e.to_string(),
            "mount /dev/vda2 on /overlay (ext4): Bad message (EBADMSG: a metadata checksum is wrong)"
        );
        let e = SysError::new("mount x", Errno::EINVAL)
            .with_detail(Some("overlayfs: bad upper".into()));
        assert_eq!(
            e.to_string(),
            "mount x: Invalid argument (EINVAL): overlayfs: bad upper"
        );
        assert_eq!(
            SysError::msg("run mkfs", "exit status: 1").to_string(),
            "run mkfs: exit status: 1"
        );
    }
}

/// What a reset of an MTD partition did (see [`crate::mtd::reset`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EraseReport {
    /// Blocks erased now.
    pub erased: u32,
    /// Blocks that read all 0xFF and were left alone (a cut erase resumed, or never written).
    pub already_erased: u32,
    /// Bad blocks skipped.
    pub bad_blocks: u32,
    /// Nodes marked obsolete in place (NOR): JFFS2 will not read them again.
    pub obsoleted: u32,
    /// Blocks left holding obsolete nodes only: JFFS2 erases them itself after it mounts,
    /// in the background or when it needs the space.
    pub pending: u32,
}

impl EraseReport {
    /// The blocks the erase did not touch, as the logs and `ovlctl reset` say it.
    pub fn left_alone(&self) -> String {
        format!(
            "{} held nothing (erased, or a clean marker alone), {} bad skipped",
            self.already_erased, self.bad_blocks
        )
    }

    /// One line for the log and for `ovlctl reset`.
    pub fn summary(&self, dev: &str) -> String {
        if self.obsoleted > 0 || self.pending > 0 {
            format!(
                "{dev}: {} old nodes marked obsolete in {} blocks (JFFS2 erases those blocks after it mounts), {} blocks erased (block 0 last), {}",
                self.obsoleted,
                self.pending,
                self.erased,
                self.left_alone()
            )
        } else {
            format!(
                "erased {} blocks of {dev} (block 0 last), {}",
                self.erased,
                self.left_alone()
            )
        }
    }
}

pub trait Sys {
    fn mount(&mut self, m: &MountSpec) -> SysResult<()>;
    fn umount(&mut self, target: &Path, detach: bool) -> SysResult<()>;
    /// `mount --move`.
    fn move_mount(&mut self, from: &Path, to: &Path) -> SysResult<()>;
    fn mkdir_p(&mut self, path: &Path) -> SysResult<()>;
    /// A device node: block or character, with its mode and numbers.
    fn mknod(
        &mut self,
        path: &Path,
        block: bool,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> SysResult<()>;
    fn chdir(&mut self, path: &Path) -> SysResult<()>;
    fn chroot(&mut self, path: &Path) -> SysResult<()>;
    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> SysResult<()>;
    /// Deletes what lies below `root` on root's own filesystem (the initramfs being left).
    fn free_tree(&mut self, root: &Path) -> SysResult<()>;
    fn finit_module(&mut self, path: &Path, params: &str) -> SysResult<()>;
    /// Runs a program to completion (mkfs.ext4), chrooted into `root` when given.
    fn run(&mut self, root: Option<&Path>, argv: &[String]) -> SysResult<()>;
    /// Resets a marked MTD partition through its character device ([`crate::mtd::reset`]):
    /// every old node obsoleted on NOR, every block erased elsewhere; block 0 last.
    fn mtd_erase(&mut self, dev: &Path) -> SysResult<EraseReport>;
    /// Attaches `backing` from `offset` to a free loop device (auto-clearing) and names it.
    fn loop_attach(&mut self, backing: &Path, offset: u64) -> SysResult<PathBuf>;
    /// Attaches MTD number `mtd` to UBI through the control node `ctrl`; the UBI number.
    fn ubi_attach(&mut self, ctrl: &Path, mtd: u32) -> SysResult<u32>;
    /// Puts a ubiblock device on the UBI volume node `vol`.
    fn ubi_block(&mut self, vol: &Path) -> SysResult<()>;
    /// Makes the dynamic volume `name` of `bytes` on the UBI device node `dev` (`/dev/ubiN`).
    fn ubi_mkvol(&mut self, dev: &Path, name: &str, bytes: u64) -> SysResult<()>;
    /// Finishes a ROM staged in the UBI volume node `vol` ([`crate::ubistage::finish`]):
    /// what it did, or None when nothing was staged.
    fn ubi_finish_stage(
        &mut self,
        vol: &Path,
        g: crate::ubistage::Geometry,
    ) -> SysResult<Option<String>>;
    /// Empties the UBI volume node `vol` (a volume update of no bytes).
    fn ubi_truncate(&mut self, vol: &Path) -> SysResult<()>;
    fn write_file(&mut self, path: &Path, bytes: &[u8]) -> SysResult<()>;
    fn exists(&mut self, path: &Path) -> bool;
    /// Random bytes that never wait for the kernel's entropy (identifiers, not keys).
    fn random(&mut self, buf: &mut [u8]);
    /// Replaces this process with `path`. The real one returns only on failure; the double
    /// returns Ok to say "exec happened".
    fn exec(&mut self, path: &Path, argv: &[String]) -> SysResult<()>;
    fn reboot(&mut self) -> SysResult<()>;
    /// Waits (before a reboot, so a person can read the console); the double only records it.
    fn sleep(&mut self, d: std::time::Duration);
    /// Ok when `dir` is on a file system mounted read-write and a file can really be created
    /// in it (and is removed again). The error says read-only or full (ENOSPC, EDQUOT).
    /// `upper` is the upper directory, whose file system says whether a failure means full.
    fn check_writable(&mut self, dir: &Path, upper: &Path) -> SysResult<()>;
    /// Finishes or rolls back a restore cut off in the tree at `root`: Some(true) finished,
    /// Some(false) rolled back, None when none was.
    fn finish_restore(&mut self, root: &Path) -> SysResult<Option<bool>>;
    /// Restores the keep container `kept` (on the partition mounted at `overlay`) into the
    /// tree at `root` (see [`crate::upgrade`]); returns how many paths were restored.
    fn restore_kept(
        &mut self,
        root: &Path,
        overlay: &Path,
        kept: &crate::upgrade::Kept,
    ) -> SysResult<usize>;
    /// The boot-time first-boot transaction on the writable partition mounted at `overlay`
    /// (see [`crate::overlay::prepare`]).
    fn prepare_overlay(
        &mut self,
        overlay: &Path,
        want: &crate::overlay::Prepare,
    ) -> SysResult<crate::overlay::Prepared>;
    /// Removes ovl's block reset mark from a partition just formatted, when mkfs left it
    /// (mke2fs zeroes the boot sector, a board's mkfs may not): else every boot would format.
    fn clear_reset_mark(&mut self, device: &Path) -> SysResult<()>;
}

/// The name of the file [`Sys::check_writable`] creates and removes.
pub const WRITE_PROBE: &str = ".ovl-write-probe";
