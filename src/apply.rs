//! Apply: carries out a plan's steps through [`Sys`], remembering the mounts it made so that a
//! failed persistent attempt can be taken down before the tmpfs fallback is built.

use crate::plan::Step;
use crate::sys::{MountSpec, Sys, SysError};
use nix::mount::MsFlags;
use std::path::{Path, PathBuf};

/// What a step did that can be taken back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undo {
    Unmount(PathBuf),
    /// A mount moved from `from` to `to`: moved back on undo.
    Move {
        from: PathBuf,
        to: PathBuf,
    },
}

/// What was done so far, in order; [`undo`] takes it back in reverse.
#[derive(Debug, Default)]
pub struct Done {
    pub undo: Vec<Undo>,
    /// What the first-boot record said and what was done about it.
    pub prepared: Option<crate::overlay::Prepared>,
    /// What a person should know about this boot (published as the state's notes).
    pub notes: Vec<String>,
}

impl Done {
    /// Whether anything was mounted (the ROM step, say).
    pub fn mounted_any(&self) -> bool {
        self.undo.iter().any(|u| matches!(u, Undo::Unmount(_)))
    }
}

pub fn run(sys: &mut dyn Sys, steps: &[Step], done: &mut Done) -> Result<(), SysError> {
    for s in steps {
        crate::timed!(label(s), step(sys, s, done))?;
    }
    Ok(())
}

/// A step's name in the sub-step timings (src/timing.rs): the same on every boot.
#[cfg(feature = "timing")]
fn label(s: &Step) -> String {
    match s {
        Step::Mkdir(p) => format!("mkdir {}", p.display()),
        Step::Mount(m) => format!("mount {} {}", m.fstype, m.target.display()),
        Step::Move { to, .. } => format!("move {}", to.display()),
        Step::CheckWritable { .. } => "write probe".into(),
        Step::FinishRestore { .. } => "finish restore".into(),
        Step::RestoreKept { .. } => "restore kept".into(),
        Step::Prepare { .. } => "first-boot record".into(),
        Step::Format { .. } => "mkfs".into(),
        Step::Truncate { .. } => "truncate".into(),
        Step::Erase { .. } => "erase".into(),
        Step::SwitchRoot { .. } => "switch_root".into(),
        Step::PivotRoot { .. } => "pivot_root".into(),
    }
}

fn step(sys: &mut dyn Sys, s: &Step, done: &mut Done) -> Result<(), SysError> {
    match s {
        Step::Mkdir(p) => sys.mkdir_p(p),
        Step::Mount(m) => {
            sys.mount(m)?;
            done.undo.push(Undo::Unmount(m.target.clone()));
            Ok(())
        }
        Step::Move { from, to } => {
            sys.move_mount(from, to)?;
            done.undo.push(Undo::Move {
                from: from.clone(),
                to: to.clone(),
            });
            Ok(())
        }
        Step::CheckWritable { root, upper } => sys.check_writable(root, upper),
        Step::FinishRestore { root } => {
            let note = match sys.finish_restore(root) {
                Ok(None) => return Ok(()),
                Ok(Some(true)) => "a restore cut off by the last shutdown was finished".into(),
                Ok(Some(false)) => "a restore cut off by the last shutdown was rolled back".into(),
                Err(e) => format!(
                    "a restore cut off by the last shutdown could not be finished ({e}); the next \
                     boot tries again"
                ),
            };
            log::warn!("{note}");
            done.notes.push(note);
            Ok(())
        }
        Step::RestoreKept { root, overlay } => {
            let Some(p) = done.prepared.as_mut() else {
                return Ok(());
            };
            let Some(kept) = p.upgrade.clone() else {
                return Ok(());
            };
            let note = match (&kept.archive, sys.restore_kept(root, overlay, &kept)) {
                (None, _) => {
                    p.upgrade_result = Some("fresh");
                    "upgrade: a fresh overlay, nothing kept (sysupgrade -n)".to_string()
                }
                (Some(_), Ok(n)) => {
                    p.upgrade_result = Some("restored");
                    format!(
                        "upgrade: the kept configuration restored from {} ({n} files and symlinks)",
                        kept.file
                    )
                }
                (Some(_), Err(e)) => {
                    p.upgrade_result = Some("refused");
                    format!(
                        "upgrade: the kept configuration was not restored ({e}); the ROM's \
                         defaults are used"
                    )
                }
            };
            log::warn!("{note}");
            done.notes.push(note);
            Ok(())
        }
        Step::Prepare { overlay, want } => {
            let p = sys.prepare_overlay(overlay, want)?;
            if let Some(why) = p.cleared {
                log::info!("overlay emptied ({why}): {} entries removed", p.removed);
            }
            done.prepared = Some(p);
            Ok(())
        }
        Step::Format {
            device,
            mkfs,
            rom,
            root,
            label,
        } => {
            format(sys, device, mkfs, rom, root, label)?;
            // After mkfs, never before: a cut between the two formats again, while a mark
            // cleared first would leave the old file system to be mounted.
            sys.clear_reset_mark(Path::new(device))
        }
        Step::Truncate { vol_dev } => {
            log::info!("emptying {vol_dev} (a reset was cut short)");
            sys.ubi_truncate(Path::new(vol_dev))
        }
        Step::Erase { char_dev } => {
            log::info!("erasing {char_dev} (reset marker found)");
            let r = sys.mtd_erase(Path::new(char_dev))?;
            log::info!("{}", r.summary(char_dev));
            Ok(())
        }
        Step::SwitchRoot { new_root, old_root } => {
            sys.chdir(new_root)?;
            // Frees the initramfs's memory; a failure costs RAM, not the boot.
            if let Err(e) = crate::timed!("- free initramfs", sys.free_tree(old_root)) {
                log::warn!("{e}");
            }
            sys.move_mount(Path::new("."), old_root)?;
            sys.chroot(Path::new("."))?;
            sys.chdir(Path::new("/"))
        }
        Step::PivotRoot { new_root, put_old } => {
            let rel = put_old.strip_prefix(new_root).unwrap_or(put_old);
            sys.chdir(new_root)?;
            sys.pivot_root(Path::new("."), rel)?;
            sys.chroot(Path::new("."))?;
            sys.chdir(Path::new("/"))
        }
    }
}

/// Formats `device` with mkfs.ext4: chrooted in the ROM when it ships mkfs (the initramfs
/// then needs none), with the live /dev bound over the ROM's empty one; else chrooted in
/// `root` (the target: `/` on a device), so that nothing outside the target is executed.
fn format(
    sys: &mut dyn Sys,
    device: &str,
    mkfs: &str,
    rom: &Path,
    root: &Path,
    label: &str,
) -> Result<(), SysError> {
    let dev_dir = root.join("dev");
    let dev_dir = dev_dir.as_path();
    let in_rom = rom.join(mkfs.trim_start_matches('/'));
    let in_root = root.join(mkfs.trim_start_matches('/'));
    // -F: never ask (a prompt once hung boots); -q: keep the console clean. -U and hash_seed:
    // left to itself mke2fs waits for the kernel's entropy pool, seconds early in a boot.
    let (uuid, seed) = (uuid(sys), uuid(sys));
    let seed = format!("hash_seed={seed}");
    let argv = |dev: &str| {
        [mkfs, "-F", "-q", "-L", label, "-U", &uuid, "-E", &seed, dev].map(String::from)
    };
    // Inside the chroot the device is /dev/NAME whatever the target is.
    let inner = match Path::new(device).strip_prefix(dev_dir) {
        Ok(rel) => Path::new("/dev").join(rel).display().to_string(),
        Err(_) => device.to_string(),
    };
    if sys.exists(&in_rom) {
        let rom_dev = rom.join("dev");
        log::info!("formatting {device} with {mkfs} from the ROM");
        sys.mount(&MountSpec {
            source: dev_dir.display().to_string(),
            target: rom_dev.clone(),
            fstype: String::new(),
            flags: MsFlags::MS_BIND,
            data: String::new(),
        })?;
        let r = sys.run(Some(rom), &argv(&inner));
        if let Err(e) = sys.umount(&rom_dev, false) {
            // Left bound, it would hide nothing that matters; say so and go on.
            log::warn!("{e}");
        }
        r
    } else if sys.exists(&in_root) {
        log::info!("formatting {device} with {mkfs}");
        sys.run(Some(root), &argv(&inner))
    } else {
        Err(SysError::msg(
            format!("format {device}"),
            format!(
                "{mkfs} is neither in the ROM ({}) nor in {}",
                in_rom.display(),
                root.display()
            ),
        ))
    }
}

/// A random (version 4) UUID in its text form.
fn uuid(sys: &mut dyn Sys) -> String {
    let mut b = [0u8; 16];
    sys.random(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Takes back what `done` records, newest first: moved mounts go back where they were, and
/// mounts are unmounted. A mount that will not go is detached, so the fallback can mount over
/// its mount point.
pub fn undo(sys: &mut dyn Sys, done: &mut Done) {
    while let Some(u) = done.undo.pop() {
        match u {
            Undo::Move { from, to } => {
                if let Err(e) = sys.move_mount(&to, &from) {
                    log::warn!("{e}");
                }
            }
            Undo::Unmount(target) => {
                if sys.umount(&target, false).is_err() {
                    if let Err(e) = sys.umount(&target, true) {
                        log::warn!("{e}");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::record::Recorder;
    use crate::sys::MountSpec;
    use nix::errno::Errno;
    use nix::mount::MsFlags;

    fn m(target: &str) -> Step {
        Step::Mount(MountSpec {
            source: "src".into(),
            target: target.into(),
            fstype: "ext4".into(),
            flags: MsFlags::empty(),
            data: String::new(),
        })
    }

    #[test]
    fn runs_in_order_and_stops_at_the_first_failure() {
        let mut r = Recorder::new().failing("on /b", Errno::EINVAL);
        let mut done = Done::default();
        let e = run(&mut r, &[m("/a"), m("/b"), m("/c")], &mut done).unwrap_err();
        assert_eq!(e.errno, Some(Errno::EINVAL));
        assert_eq!(r.calls.len(), 2);
        assert_eq!(done.undo, vec![Undo::Unmount("/a".into())]);
    }

    #[test]
    fn undo_unmounts_newest_first_and_detaches_stuck_mounts() {
        let mut r = Recorder::new().failing("umount /b", Errno::EBUSY);
        let mut done = Done {
            undo: vec![
                Undo::Unmount("/a".into()),
                Undo::Unmount("/b".into()),
                Undo::Move {
                    from: "/dev".into(),
                    to: "/newroot/dev".into(),
                },
            ],
            ..Done::default()
        };
        undo(&mut r, &mut done);
        assert_eq!(
            r.calls,
            [
                "move /newroot/dev /dev",
                "umount /b",
                "umount /b (detach)",
                "umount /a"
            ]
        );
        assert!(done.undo.is_empty());
    }

    fn format(mkfs: &str) -> Step {
        Step::Format {
            device: "/t/dev/vda2".into(),
            mkfs: mkfs.into(),
            rom: "/rom".into(),
            root: "/t".into(),
            label: "rootfs_data".into(),
        }
    }

    #[test]
    fn format_runs_mkfs_forced_and_quiet_from_the_rom_first() {
        let mut r = Recorder::new();
        r.existing = vec!["/rom/sbin/mkfs.ext4".into(), "/sbin/mkfs.ext4".into()];
        run(&mut r, &[format("/sbin/mkfs.ext4")], &mut Done::default()).unwrap();
        assert_eq!(
            r.calls,
            [
                "mount /t/dev on /rom/dev ()",
                "run /sbin/mkfs.ext4 -F -q -L rootfs_data -U 5a5a5a5a-5a5a-4a5a-9a5a-5a5a5a5a5a5a -E hash_seed=5a5a5a5a-5a5a-4a5a-9a5a-5a5a5a5a5a5a /dev/vda2 (in /rom)",
                "umount /rom/dev",
                // After mkfs: a cut before it formats again, the old file system never shows.
                "clear reset mark /t/dev/vda2"
            ]
        );
    }

    #[test]
    fn format_uses_the_current_root_when_the_rom_lacks_mkfs() {
        let mut r = Recorder::new();
        r.existing = vec!["/t/usr/sbin/mkfs.ext4".into(), "/usr/sbin/mkfs.ext4".into()];
        run(
            &mut r,
            &[format("/usr/sbin/mkfs.ext4")],
            &mut Done::default(),
        )
        .unwrap();
        // Chrooted in the target: a host's own mkfs is never what runs.
        assert_eq!(
            r.calls,
            [
                "run /usr/sbin/mkfs.ext4 -F -q -L rootfs_data -U 5a5a5a5a-5a5a-4a5a-9a5a-5a5a5a5a5a5a -E hash_seed=5a5a5a5a-5a5a-4a5a-9a5a-5a5a5a5a5a5a /dev/vda2 (in /t)",
                "clear reset mark /t/dev/vda2"
            ]
        );
    }

    #[test]
    fn format_without_mkfs_is_an_error_naming_both_places() {
        let mut r = Recorder::new();
        let e = run(&mut r, &[format("/sbin/mkfs.ext4")], &mut Done::default()).unwrap_err();
        assert!(r.calls.is_empty());
        let text = e.to_string();
        assert!(
            text.contains("/rom/sbin/mkfs.ext4") && text.contains("format /t/dev/vda2"),
            "{text}"
        );
    }

    #[test]
    fn switch_root_frees_moves_and_chroots() {
        let mut r = Recorder::new().failing("free", Errno::EPERM);
        let s = Step::SwitchRoot {
            new_root: "/newroot".into(),
            old_root: "/".into(),
        };
        run(&mut r, &[s], &mut Done::default()).unwrap();
        assert_eq!(
            r.calls,
            [
                "chdir /newroot",
                "free /",
                "move . /",
                "chroot .",
                "chdir /"
            ]
        );
    }

    #[test]
    fn pivot_root_puts_the_old_root_under_the_new() {
        let mut r = Recorder::new();
        let s = Step::PivotRoot {
            new_root: "/mnt".into(),
            put_old: "/mnt/rom".into(),
        };
        run(&mut r, &[s], &mut Done::default()).unwrap();
        assert_eq!(
            r.calls,
            ["chdir /mnt", "pivot_root . rom", "chroot .", "chdir /"]
        );
    }
}
