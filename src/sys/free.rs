//! Freeing the initramfs on the way out, as switch_root does: everything below the old root
//! that is on its own file system goes; mount points (the new root) are left alone.
//!
//! Walked relative to open directories with the types readdir gives (a ramfs and a tmpfs
//! always give them): a file costs one `unlinkat` and no path lookup from `/`, an empty
//! directory one `unlinkat` (a mount point refuses it with EBUSY), any other directory an
//! `fstatat` (is it another mount?), an open and a second `unlinkat`. Best effort: it only
//! frees memory, so a name that will not go is counted and the walk goes on.

use nix::dir::{Dir, Type};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, Mode};
use nix::unistd::UnlinkatFlags;
use std::ffi::CString;
use std::path::Path;

/// What a free did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Freed {
    pub removed: u64,
    /// Names that could not be removed (or directories not read).
    pub failed: u64,
    /// Directories on another file system, left as they are.
    pub mounts: u64,
}

/// Removes everything below `root` on root's file system. Errors only when `root` itself
/// cannot be opened.
pub fn below(root: &Path) -> nix::Result<Freed> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let d = Dir::open(root, flags, Mode::empty())?;
    let dev = fstat(&d)?.st_dev;
    let mut out = Freed::default();
    walk(d, dev, &mut out);
    Ok(out)
}

fn walk(mut d: Dir, dev: u64, out: &mut Freed) {
    // Names first: unlinking while iterating may make readdir skip entries.
    let mut names: Vec<(CString, Option<Type>)> = Vec::new();
    for entry in d.iter() {
        let Ok(entry) = entry else {
            out.failed += 1;
            break;
        };
        let name = entry.file_name();
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            names.push((name.to_owned(), entry.file_type()));
        }
    }
    for (name, kind) in names {
        let is_dir = match kind {
            Some(Type::Directory) => true,
            Some(_) => false,
            // No type from readdir: ask.
            None => fstatat(&d, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                .is_ok_and(|st| st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR),
        };
        if !is_dir {
            match nix::unistd::unlinkat(&d, name.as_c_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) => out.removed += 1,
                Err(_) => out.failed += 1,
            }
            continue;
        }
        // An empty directory (the mount points moved away, /proc, /sys) goes at once; a mount
        // point answers EBUSY before any look at its content.
        match nix::unistd::unlinkat(&d, name.as_c_str(), UnlinkatFlags::RemoveDir) {
            Ok(()) => {
                out.removed += 1;
                continue;
            }
            Err(nix::errno::Errno::EBUSY) => {
                out.mounts += 1;
                continue;
            }
            Err(nix::errno::Errno::ENOTEMPTY | nix::errno::Errno::EEXIST) => {}
            Err(_) => {
                out.failed += 1;
                continue;
            }
        }
        match fstatat(&d, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if st.st_dev != dev => {
                out.mounts += 1;
                continue;
            }
            Ok(_) => {}
            Err(_) => {
                out.failed += 1;
                continue;
            }
        }
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match Dir::openat(&d, name.as_c_str(), flags, Mode::empty()) {
            Ok(sub) => walk(sub, dev, out),
            Err(_) => {
                out.failed += 1;
                continue;
            }
        }
        match nix::unistd::unlinkat(&d, name.as_c_str(), UnlinkatFlags::RemoveDir) {
            Ok(()) => out.removed += 1,
            Err(_) => out.failed += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_below_goes_and_the_root_stays() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("lib/modules/6.1/kernel")).unwrap();
        std::fs::write(p.join("init"), b"x").unwrap();
        std::fs::create_dir(p.join("proc")).unwrap();
        std::fs::write(p.join("lib/modules/6.1/kernel/mtd.ko"), b"x").unwrap();
        std::fs::write(p.join(".hidden"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", p.join("link")).unwrap();
        // A symlink to a directory is removed, never followed.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), p.join("dirlink")).unwrap();
        let f = below(p).unwrap();
        assert_eq!(std::fs::read_dir(p).unwrap().count(), 0);
        assert!(p.is_dir());
        assert!(outside.path().join("keep").exists());
        assert_eq!(
            f,
            Freed {
                removed: 10,
                failed: 0,
                mounts: 0
            }
        );
    }

    #[test]
    fn a_root_that_cannot_be_opened_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(below(&dir.path().join("none")).is_err());
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        assert!(below(&dir.path().join("file")).is_err());
    }
}
