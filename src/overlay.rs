//! The overlay's own record on the writable partition, and the emptying of an upper.
//!
//! # The first-boot record
//! `/overlay/.ovl-state` (beside `upper/` and `work/`, so nothing in `/` shows it) is a
//! symlink whose target is the record, e.g. `ovl1 ready rom=sqfs-1c3000-8e2f01a4`:
//! - `pending`: a fresh or reset overlay whose first boot has not completed. Every boot that
//!   finds it pending empties the upper again before stacking it, so a first boot cut short
//!   (a power cut while the run-once scripts ran) is redone from a clean start;
//! - `ready`: `ovlctl firstboot` completed; the upper is used as it is.
//! - `rom=`: the ROM the overlay belongs to (see [`rom_identity`]); `reset=`: the word of the
//!   last reset asked for on the kernel command line (so that it is done once).
//!
//! Why a symlink: its target is written whole or not at all. On JFFS2 the target is the data
//! of one inode node with its own CRC (a torn node fails the CRC and is ignored), and the name
//! is a separate dirent node; on ext4 the journal makes the creation one transaction. A new
//! record is made under a temporary name and renamed over the old one: a cut leaves the old
//! record or the new one (on JFFS2 perhaps both names, pointing at the new inode). A regular
//! file could be left half written; xattrs are an option in the JFFS2 build (OpenWrt moved
//! from xattrs to this symlink for that reason). Anything that does not read back as exactly
//! `ovl1 ready ...` counts as pending: a damaged record can cost a first boot, never data.
//!
//! # Emptying an upper ([`clear_dir`])
//! Everything below the directory goes, dot files, whiteouts and opaque directories included,
//! walked with `openat`/`unlinkat` relative to open directories: a symlink is removed, never
//! followed, and a directory on another mount (a bind mount, even of the same file system)
//! is left alone and counted.

use crate::state::fit;
use nix::dir::{Dir, Type};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, Mode, SFlag};
use nix::unistd::UnlinkatFlags;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub const RECORD: &str = ".ovl-state";
const RECORD_NEW: &str = ".ovl-state.new";
/// The ready record made ahead at boot, so that completing a first boot is one rename and
/// needs no new inode or block: a first boot that filled the partition can still complete.
const RECORD_READY: &str = ".ovl-state.ready";
/// OpenWrt's upgrade backup, kept beside the upper until the first boot completes.
pub const UPGRADE_BACKUP: &str = "sysupgrade.tgz";
const VERSION: &str = "ovl1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstBoot {
    Pending,
    Ready,
}

impl FirstBoot {
    pub fn name(self) -> &'static str {
        match self {
            FirstBoot::Pending => "pending",
            FirstBoot::Ready => "ready",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub first_boot: FirstBoot,
    pub rom: Option<String>,
    pub reset: Option<String>,
}

impl Record {
    pub fn pending(rom: Option<String>) -> Record {
        Record {
            first_boot: FirstBoot::Pending,
            rom,
            reset: None,
        }
    }

    pub fn encode(&self) -> String {
        let mut s = format!("{VERSION} {}", self.first_boot.name());
        for (k, v) in [("rom", &self.rom), ("reset", &self.reset)] {
            if let Some(v) = v {
                s.push_str(&format!(" {k}={v}"));
            }
        }
        s
    }

    /// Never fails: what is not a well-formed ready record is pending.
    pub fn decode(s: &str) -> Record {
        let mut words = s.split(' ');
        let ready = words.next() == Some(VERSION) && words.next() == Some("ready");
        let mut r = Record::pending(None);
        if ready {
            r.first_boot = FirstBoot::Ready;
        }
        for w in s.split(' ').skip(2) {
            match w.split_once('=') {
                Some(("rom", v)) if !v.is_empty() => r.rom = Some(v.to_string()),
                Some(("reset", v)) if !v.is_empty() => r.reset = Some(v.to_string()),
                _ => {}
            }
        }
        r
    }
}

fn ctx(what: String) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// The record in `overlay`, or None when there is none.
pub fn read(overlay: &Path) -> io::Result<Option<Record>> {
    let path = overlay.join(RECORD);
    match std::fs::read_link(&path) {
        Ok(t) => Ok(Some(Record::decode(&t.to_string_lossy()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        // A regular file or directory of that name: not ours to trust as ready.
        Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => Ok(Some(Record::pending(None))),
        Err(e) => Err(ctx(format!("read {}", path.display()))(e)),
    }
}

/// Replaces the record: symlink under a temporary name, rename over, sync the directory.
pub fn write(overlay: &Path, rec: &Record) -> io::Result<()> {
    let tmp = overlay.join(RECORD_NEW);
    let path = overlay.join(RECORD);
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(ctx(format!("remove {}", tmp.display()))(e))
        }
        _ => {}
    }
    std::os::unix::fs::symlink(rec.encode(), &tmp)
        .map_err(ctx(format!("create {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(ctx(format!("rename to {}", path.display())))?;
    sync_dir(overlay)
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(ctx(format!("sync {}", dir.display())))
}

/// How much of a ROM's start [`rom_identity`] reads: a caller that read this much already
/// hands it over, and nothing is read twice.
pub const IDENTITY_SPAN: usize = 64 * 1024;

/// The identity of a squashfs ROM, cheap enough for every boot: its size and a CRC32 of its
/// superblock (which holds the build time and every table's offset), its first 64 KiB and
/// the 64 KiB before its end. Two builds of different content differ in all of these.
/// `head` is what was read of `f` from offset 0 (up to [`IDENTITY_SPAN`]); only the rest is
/// read, from `f`, which `name` names in errors.
pub fn rom_identity(name: &str, f: &std::fs::File, head: &[u8]) -> io::Result<String> {
    use std::os::unix::fs::FileExt;
    identity_with(name, |buf, at| match slice_at(head, at, buf.len()) {
        Some(src) => {
            buf.copy_from_slice(src);
            Ok(())
        }
        None => f.read_exact_at(buf, at),
    })
}

/// [`rom_identity`] of a squashfs image in memory: what a ROM will be called once written.
pub fn rom_identity_of(img: &[u8]) -> io::Result<String> {
    identity_with("the image", |buf, at| {
        let src = slice_at(img, at, buf.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    })
}

fn slice_at(bytes: &[u8], at: u64, len: usize) -> Option<&[u8]> {
    let start = usize::try_from(at).ok()?;
    bytes.get(start..start.checked_add(len)?)
}

fn identity_with(
    name: &str,
    read_at: impl Fn(&mut [u8], u64) -> io::Result<()>,
) -> io::Result<String> {
    const SPAN: u64 = IDENTITY_SPAN as u64;
    let mut sb = [0u8; 96];
    read_at(&mut sb, 0).map_err(ctx(format!("read the superblock of {name}")))?;
    if sb.get(..4) != Some(b"hsqs".as_slice()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{name} is not squashfs"),
        ));
    }
    let used = sb
        .get(40..48)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0);
    let mut h = crate::crc32::Hasher::new();
    h.update(&sb);
    let head = SPAN.min(used);
    let tail_at = used.saturating_sub(SPAN).max(head);
    for (at, len) in [(0, head), (tail_at, used - tail_at)] {
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
        read_at(&mut buf, at).map_err(ctx(format!("read {name} at {at:#x}")))?;
        h.update(&buf);
    }
    Ok(format!("sqfs-{used:x}-{:08x}", h.finalize()))
}

/// What emptying a directory did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cleared {
    pub removed: u64,
    /// Directories left because another file system is mounted on them.
    pub mounts_skipped: u64,
}

/// Deletes everything below `dir` (not `dir` itself), never following a symlink and never
/// entering another mount. See the module documentation.
pub fn clear_dir(dir: &Path) -> io::Result<Cleared> {
    let mounts = mounts_below(dir);
    let d = Dir::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io::Error::from_raw_os_error(e as i32))
    .map_err(ctx(format!("open {}", dir.display())))?;
    let dev = fstat(&d)
        .map_err(|e| io::Error::from_raw_os_error(e as i32))?
        .st_dev;
    let mut out = Cleared::default();
    clear_at(d, dir.to_path_buf(), dev, &mounts, &mut out)?;
    Ok(out)
}

/// Mount points strictly below `dir`, from /proc/self/mountinfo (a bind mount of a directory
/// of the same file system has the same st_dev, so st_dev alone would not see it).
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    // The kernel's name for `dir`, as mountinfo spells mount points (without realpath(3):
    // the link of an open descriptor in /proc, which mountinfo needs anyway).
    let Some(real) = std::fs::File::open(dir).ok().and_then(|f| {
        std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&f)
        ))
        .ok()
    }) else {
        return Vec::new();
    };
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    crate::status::parse_mountinfo(&text)
        .into_iter()
        .map(|m| PathBuf::from(m.mount_point))
        .filter(|p| p != &real && p.starts_with(&real))
        .map(|p| dir.join(p.strip_prefix(&real).unwrap_or(&p)))
        .collect()
}

fn errno(what: &Path) -> impl Fn(nix::errno::Errno) -> io::Error + '_ {
    move |e| {
        io::Error::new(
            io::Error::from_raw_os_error(e as i32).kind(),
            format!("{}: {}", what.display(), crate::sys::errno_text(e)),
        )
    }
}

fn clear_at(
    mut d: Dir,
    path: PathBuf,
    dev: u64,
    mounts: &[PathBuf],
    out: &mut Cleared,
) -> io::Result<()> {
    // Names first: unlinking while iterating may make readdir skip entries.
    let mut names: Vec<(std::ffi::CString, Option<Type>)> = Vec::new();
    for entry in d.iter() {
        let entry = entry.map_err(errno(&path))?;
        let name = entry.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        names.push((name.to_owned(), entry.file_type()));
    }
    for (name, kind) in names {
        let child = path.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
        let is_dir = match kind {
            Some(Type::Directory) => true,
            Some(_) => false,
            None => {
                let st = fstatat(&d, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(errno(&child))?;
                SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
            }
        };
        if !is_dir {
            nix::unistd::unlinkat(&d, name.as_c_str(), UnlinkatFlags::NoRemoveDir)
                .map_err(errno(&child))?;
            out.removed += 1;
            continue;
        }
        let st =
            fstatat(&d, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW).map_err(errno(&child))?;
        if st.st_dev != dev || mounts.iter().any(|m| m == &child) {
            log::warn!("{}: a mount point; left as it is", child.display());
            out.mounts_skipped += 1;
            continue;
        }
        let sub = Dir::openat(
            &d,
            name.as_c_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno(&child))?;
        let before = out.mounts_skipped;
        clear_at(sub, child.clone(), dev, mounts, out)?;
        if out.mounts_skipped > before {
            // A mount below keeps its parents.
            continue;
        }
        nix::unistd::unlinkat(&d, name.as_c_str(), UnlinkatFlags::RemoveDir)
            .map_err(errno(&child))?;
        out.removed += 1;
    }
    Ok(())
}

/// Whether an upgrade backup waits beside the upper (to be restored by the first boot).
pub fn upgrade_waiting(overlay: &Path) -> bool {
    crate::upgrade::WAITING
        .iter()
        .any(|n| overlay.join(n).exists())
}

/// What preinit asks of a mounted writable partition before the overlay is stacked on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prepare {
    /// The ROM booting now; None when it cannot be told (a rootfs boot).
    pub rom_id: Option<String>,
    /// `ovl.reset[=WORD]` on the command line: the word (`1` when bare).
    pub reset: Option<String>,
    /// Keep an overlay made for another ROM (board `stale_overlay: "keep"`).
    pub keep_stale: bool,
}

/// What preinit found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prepared {
    pub first_boot: Option<FirstBoot>,
    /// Why the upper was emptied this boot: `pending`, `reset`, `stale`.
    pub cleared: Option<&'static str>,
    pub removed: u64,
    /// The ROM the overlay was made for, when it is another one.
    pub stale_from: Option<String>,
    pub upgrade_waiting: bool,
    /// A note for the state (an adopted overlay, a kept stale one).
    pub note: Option<String>,
    /// A keep container applies: restore it once the overlay is stacked.
    pub upgrade: Option<crate::upgrade::Kept>,
    /// What became of a container that does not apply (for the state's notes).
    pub upgrade_note: Option<String>,
    /// After the restore: `restored`, `fresh` (nothing was kept) or `refused`.
    pub upgrade_result: Option<&'static str>,
}

/// The boot-time part of the first-boot transaction, on the writable partition mounted at
/// `overlay`. Order matters for power cuts: the record says pending before anything is
/// deleted, so a cut part way through is finished by the next boot.
pub fn prepare(overlay: &Path, p: &Prepare) -> io::Result<Prepared> {
    let upper = overlay.join("upper");
    // upgrade_waiting is read once the keep container has been dealt with, below.
    let mut out = Prepared::default();
    let mut on_disk = read(overlay)?;
    let rec = match &on_disk {
        Some(r) => r.clone(),
        None if !dir_is_empty(&upper)? => {
            // An upper with no record: made before ovl kept one. Adopted, never emptied.
            let rec = Record {
                first_boot: FirstBoot::Ready,
                rom: p.rom_id.clone(),
                reset: None,
            };
            write(overlay, &rec)?;
            on_disk = Some(rec.clone());
            out.note = Some("an overlay without a first-boot record was adopted as ready".into());
            rec
        }
        None => Record::pending(p.rom_id.clone()),
    };
    let mut next = rec.clone();
    let reset_asked = p.reset.is_some() && p.reset != rec.reset;
    let ready_for = (rec.first_boot == FirstBoot::Ready && on_disk.is_some())
        .then_some(rec.rom.as_deref())
        .flatten();
    match crate::upgrade::decide(overlay, p.rom_id.as_deref(), ready_for) {
        crate::upgrade::Decision::None => {}
        crate::upgrade::Decision::Apply(k) => out.upgrade = Some(k),
        crate::upgrade::Decision::Damaged { file, why } => {
            let to = crate::upgrade::set_aside(overlay, file).map_or_else(
                |e| format!("could not be set aside: {e}"),
                |t| format!("set aside as {}", t.display()),
            );
            out.upgrade_note = Some(format!(
                "the kept configuration {file} is damaged ({why}): not restored, {to}; the \
                 ROM's defaults are used"
            ));
        }
        crate::upgrade::Decision::OtherRom { target } => {
            crate::upgrade::discard(overlay)?;
            out.upgrade_note = Some(format!(
                "a configuration was kept for ROM {target}, but this ROM is another: the \
                 upgrade did not happen; discarded, the overlay is used as it is"
            ));
        }
        crate::upgrade::Decision::Leftover => {
            crate::upgrade::discard(overlay)?;
        }
    }
    out.upgrade_waiting = upgrade_waiting(overlay);
    let stale = match (&rec.rom, &p.rom_id) {
        (Some(was), Some(now)) if was != now && out.upgrade.is_none() => Some(was.clone()),
        _ => None,
    };
    out.stale_from = stale.clone();
    let why = if out.upgrade.is_some() {
        Some("upgrade")
    } else if reset_asked {
        Some("reset")
    } else if stale.is_some() && !p.keep_stale {
        Some("stale")
    } else if rec.first_boot == FirstBoot::Pending {
        Some("pending")
    } else {
        None
    };
    if let Some(w) = stale.as_ref().filter(|_| p.keep_stale) {
        out.note = Some(
            fit::<200>(&format!(
                "the overlay was made for ROM {w}; kept (board stale_overlay: keep)"
            ))
            .to_string(),
        );
    }
    next.rom = p.rom_id.clone().or(rec.rom.clone());
    // A switch that is gone clears its word, so that the next one is done again.
    next.reset = p.reset.clone();
    if why.is_some() {
        next.first_boot = FirstBoot::Pending;
    }
    if on_disk.as_ref() != Some(&next) {
        write(overlay, &next)?;
    }
    if let Some(w) = why {
        for d in [&upper, &overlay.join("work")] {
            if d.is_dir() {
                out.removed += clear_dir(d)?.removed;
            }
        }
        out.cleared = Some(w);
    }
    if next.first_boot == FirstBoot::Pending {
        // After the emptying, which made room. Best effort: without it set_ready writes.
        let ready = Record {
            first_boot: FirstBoot::Ready,
            ..next.clone()
        };
        let spare = overlay.join(RECORD_READY);
        let _ = std::fs::remove_file(&spare);
        if let Err(e) = std::os::unix::fs::symlink(ready.encode(), &spare) {
            log::warn!("create {}: {e}", spare.display());
        }
    }
    out.first_boot = Some(next.first_boot);
    Ok(out)
}

fn dir_is_empty(dir: &Path) -> io::Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut it) => Ok(it.next().is_none()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(ctx(format!("read {}", dir.display()))(e)),
    }
}

/// Marks the overlay's first boot complete: renames the ready record made at boot over the
/// record when it says the same apart from the state, else writes a new one.
pub fn set_ready(overlay: &Path) -> io::Result<Record> {
    let mut rec = read(overlay)?.unwrap_or_else(|| Record::pending(None));
    rec.first_boot = FirstBoot::Ready;
    let spare = overlay.join(RECORD_READY);
    let ahead = std::fs::read_link(&spare)
        .ok()
        .map(|t| Record::decode(&t.to_string_lossy()));
    if ahead.as_ref() == Some(&rec) {
        std::fs::rename(&spare, overlay.join(RECORD))
            .map_err(ctx(format!("rename {}", spare.display())))?;
        sync_dir(overlay)?;
    } else {
        write(overlay, &rec)?;
    }
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_well_formed_ready_record_is_ready() {
        let r = Record {
            first_boot: FirstBoot::Ready,
            rom: Some("sqfs-10-abc".into()),
            reset: Some("1".into()),
        };
        assert_eq!(r.encode(), "ovl1 ready rom=sqfs-10-abc reset=1");
        assert_eq!(Record::decode(&r.encode()), r);
        for bad in [
            "",
            "ovl1",
            "ovl1 read",
            "ovl2 ready",
            "ready",
            "ovl1  ready",
            "x",
        ] {
            assert_eq!(
                Record::decode(bad).first_boot,
                FirstBoot::Pending,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn write_replaces_and_read_gives_it_back() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read(d.path()).unwrap(), None);
        let mut r = Record::pending(Some("a".into()));
        write(d.path(), &r).unwrap();
        assert_eq!(read(d.path()).unwrap(), Some(r.clone()));
        r.first_boot = FirstBoot::Ready;
        write(d.path(), &r).unwrap();
        assert_eq!(read(d.path()).unwrap(), Some(r));
        assert!(!d.path().join(RECORD_NEW).exists());
        // A stale temporary name from a cut write does not stop the next one.
        std::os::unix::fs::symlink("junk", d.path().join(RECORD_NEW)).unwrap();
        set_ready(d.path()).unwrap();
        // The ready record made ahead by prepare is what set_ready renames.
        let p = Prepare::default();
        std::fs::remove_file(d.path().join(RECORD)).unwrap();
        prepare(d.path(), &p).unwrap();
        let spare = || std::fs::symlink_metadata(d.path().join(RECORD_READY)).is_ok();
        assert!(spare());
        set_ready(d.path()).unwrap();
        assert!(!spare());
        assert_eq!(
            read(d.path()).unwrap().unwrap().first_boot,
            FirstBoot::Ready
        );
        // A regular file in its place is not a ready record.
        std::fs::remove_file(d.path().join(RECORD)).unwrap();
        std::fs::write(d.path().join(RECORD), "ovl1 ready").unwrap();
        assert_eq!(
            read(d.path()).unwrap().unwrap().first_boot,
            FirstBoot::Pending
        );
    }

    fn tree(root: &Path) {
        let u = root.join("upper");
        for d in ["root/.ssh", "etc/deep/a/b/c", "-dash"] {
            std::fs::create_dir_all(u.join(d)).unwrap();
        }
        std::fs::write(u.join("root/.ssh/authorized_keys"), "k").unwrap();
        std::fs::write(u.join("etc/with space"), "").unwrap();
        std::fs::write(u.join("etc/new\nline"), "").unwrap();
        std::fs::write(u.join("-dash/-rf"), "").unwrap();
        std::fs::write(u.join("x".repeat(255)), "").unwrap();
        let mut p = u.join("etc/deep");
        for i in 0..100 {
            p = p.join(format!("{i}"));
        }
        std::fs::create_dir_all(&p).unwrap();
    }

    #[test]
    fn clear_dir_removes_everything_and_follows_no_symlink() {
        let d = tempfile::tempdir().unwrap();
        tree(d.path());
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "keep").unwrap();
        std::os::unix::fs::symlink(&outside, d.path().join("upper/etc/link")).unwrap();
        std::os::unix::fs::symlink(outside.join("keep"), d.path().join("upper/f")).unwrap();
        let c = clear_dir(&d.path().join("upper")).unwrap();
        assert!(c.removed > 100, "{c:?}");
        assert_eq!(
            std::fs::read_dir(d.path().join("upper")).unwrap().count(),
            0
        );
        assert_eq!(
            std::fs::read_to_string(outside.join("keep")).unwrap(),
            "keep"
        );
    }

    #[test]
    fn prepare_walks_pending_reset_stale_and_ready() {
        let d = tempfile::tempdir().unwrap();
        let o = d.path();
        let p = |rom: &str, reset: Option<&str>| Prepare {
            rom_id: Some(rom.into()),
            reset: reset.map(String::from),
            keep_stale: false,
        };
        // Fresh: pending, nothing to remove.
        let r = prepare(o, &p("A", None)).unwrap();
        assert_eq!(r.first_boot, Some(FirstBoot::Pending));
        assert_eq!(r.cleared, Some("pending"));
        std::fs::create_dir_all(o.join("upper/etc")).unwrap();
        std::fs::write(o.join("upper/etc/a"), "").unwrap();
        // Still pending (first boot did not complete): emptied again.
        let r = prepare(o, &p("A", None)).unwrap();
        assert_eq!((r.cleared, r.removed), (Some("pending"), 2));
        set_ready(o).unwrap();
        std::fs::create_dir_all(o.join("upper/etc")).unwrap();
        let r = prepare(o, &p("A", None)).unwrap();
        assert_eq!((r.first_boot, r.cleared), (Some(FirstBoot::Ready), None));
        // A reset word: once, however many boots keep it on the command line.
        let r = prepare(o, &p("A", Some("1"))).unwrap();
        assert_eq!(r.cleared, Some("reset"));
        set_ready(o).unwrap();
        assert_eq!(prepare(o, &p("A", Some("1"))).unwrap().cleared, None);
        // Gone from the command line, then back: done again.
        assert_eq!(prepare(o, &p("A", None)).unwrap().cleared, None);
        assert_eq!(
            prepare(o, &p("A", Some("1"))).unwrap().cleared,
            Some("reset")
        );
        set_ready(o).unwrap();
        // Another ROM: reset by default, kept when the board says so.
        let r = prepare(o, &p("B", Some("1"))).unwrap();
        assert_eq!(
            (r.cleared, r.stale_from.as_deref()),
            (Some("stale"), Some("A"))
        );
        set_ready(o).unwrap();
        let keep = Prepare {
            keep_stale: true,
            ..p("C", Some("1"))
        };
        let r = prepare(o, &keep).unwrap();
        assert_eq!((r.cleared, r.stale_from.as_deref()), (None, Some("B")));
        assert!(r.note.unwrap().contains("kept"));
        assert_eq!(read(o).unwrap().unwrap().rom.as_deref(), Some("C"));
        // An upgrade backup waiting: the new ROM is expected, not stale; the upper is
        // emptied for the restore, and the backup stays until the first boot completes.
        std::fs::write(o.join("upper/old"), "x").unwrap();
        std::fs::write(o.join(UPGRADE_BACKUP), "").unwrap();
        let r = prepare(o, &p("D", Some("1"))).unwrap();
        assert_eq!((r.cleared, r.stale_from), (Some("upgrade"), None));
        assert!(r.upgrade.is_some() && r.upgrade_waiting);
        assert!(!o.join("upper/old").exists());
        assert_eq!(read(o).unwrap().unwrap().first_boot, FirstBoot::Pending);
        // Still pending at the next boot (a cut during the first boot): applied again.
        let r = prepare(o, &p("D", Some("1"))).unwrap();
        assert_eq!(r.cleared, Some("upgrade"));
        // Once ready for this ROM, a backup left behind is a leftover: removed, unused.
        set_ready(o).unwrap();
        let r = prepare(o, &p("D", Some("1"))).unwrap();
        assert_eq!((r.cleared, r.upgrade.is_some()), (None, false));
        assert!(!o.join(UPGRADE_BACKUP).exists() && !r.upgrade_waiting);
    }

    #[test]
    fn an_upper_without_a_record_is_adopted_not_emptied() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("upper/etc")).unwrap();
        let r = prepare(d.path(), &Prepare::default()).unwrap();
        assert_eq!((r.first_boot, r.cleared), (Some(FirstBoot::Ready), None));
        assert!(d.path().join("upper/etc").exists());
    }
}
