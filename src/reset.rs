//! `ovlctl reset` (and `factoryreset`, `jffs2reset`, `firstboot` as argv[0]): back to the
//! ROM's state.
//!
//! Overlay mounted (a persistent boot): the record is set pending first, then the upper is
//! emptied ([`crate::overlay::clear_dir`]). A cut at any point leaves the record pending, and
//! the next boot empties the upper again before stacking it: nothing of the old state comes
//! back. Overlay not mounted (tmpfs fallback, failsafe): this boot's tmpfs upper is emptied,
//! and the writable partition, re-identified now, is
//! - JFFS2 (or already marked): marked, then reset through the MTD layer ([`crate::mtd::reset`]):
//!   on NOR every old node is marked obsolete in place and JFFS2 erases those blocks itself
//!   after the next mount, in the background; elsewhere every block is erased. Block 0 goes
//!   last, blocks that hold nothing are skipped; a cut leaves the mark, and preinit finishes
//!   the reset before it mounts anything;
//! - ext4: given [`crate::probe::magic::BLOCK_RESET_MARK`]; the next boot formats it;
//! - anything else: left byte for byte as it is, and the reset says so.

use crate::overlay::{self, FirstBoot, Record};
use crate::probe::magic::{self, Content};
use crate::status::{self, MountInfo};
use anyhow::{bail, Context, Result};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone, Default)]
pub struct Opts {
    pub yes: bool,
    pub reboot: bool,
    pub keep: bool,
    /// Erase every block now rather than obsolete the old nodes (see [`crate::mtd::reset`]).
    pub full_erase: bool,
    pub state: Option<PathBuf>,
    pub overlay: PathBuf,
    pub data: Option<PathBuf>,
}

/// What will be done to the writable partition when it is not mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Partition {
    /// Mounted as the overlay: emptied through the file system.
    Mounted,
    EraseMtd {
        char_dev: PathBuf,
        content: Content,
    },
    MarkBlock {
        dev: PathBuf,
    },
    /// A UBI volume holding UBIFS (or a truncation cut short): emptied by a volume update of
    /// no bytes.
    TruncateUbi {
        dev: PathBuf,
    },
    /// Nothing to do, and why (already erased, already marked).
    Nothing(String),
    /// Cannot be reset, and why (not found, foreign, unreadable).
    CannotReach(String),
}

/// The MTD partition behind /dev/mtdblockN, from /proc/mtd.
pub fn mtd_part(dev: &Path) -> Option<crate::probe::mtd::MtdPart> {
    let index: u32 = dev.to_str()?.strip_prefix("/dev/mtdblock")?.parse().ok()?;
    let text = std::fs::read_to_string("/proc/mtd").ok()?;
    crate::probe::mtd::parse_proc_mtd(&text)
        .into_iter()
        .find(|p| p.index == index)
}

/// What an unmounted writable partition holds now, judged as preinit judges it: an MTD
/// partition (named by its /dev/mtdblockN) through its character device and every erase
/// block, a block device by its head.
pub fn partition_content(dev: &Path) -> Result<Content, String> {
    content_of(dev, mtd_part(dev).as_ref())
}

fn content_of(dev: &Path, part: Option<&crate::probe::mtd::MtdPart>) -> Result<Content, String> {
    let read_from = part.map_or_else(|| dev.to_path_buf(), |p| PathBuf::from(p.char_dev()));
    let head = crate::probe::read_head(&read_from, magic::PROBE_BYTES)
        .map_err(|e| format!("read {}: {e}", read_from.display()))?;
    match part {
        Some(p) => crate::probe::mtd_content(&read_from, &head, p),
        None => crate::probe::block_content(&read_from, &head),
    }
}

fn classify_ubi(dev: &Path, v: &crate::ubi::Volume, mounts: &[MountInfo]) -> Partition {
    let name = dev.display();
    let ubi_name = format!("ubi{}:{}", v.ubi, v.name);
    if let Some(m) = mounts
        .iter()
        .find(|m| Path::new(&m.source) == dev || m.source == ubi_name)
    {
        return Partition::CannotReach(format!(
            "{name} is mounted on {}: unmount it first",
            m.mount_point
        ));
    }
    // Judged as preinit judges it; a truncation a cut left (the reset mark) is done again.
    match crate::probe::ubi_content(Path::new("/sys"), v, dev) {
        Ok(Content::Ubifs | Content::ResetMark) => Partition::TruncateUbi {
            dev: dev.to_path_buf(),
        },
        Ok(Content::Erased) => {
            Partition::Nothing(format!("{name} (UBI volume {}) is empty", v.name))
        }
        Ok(c) => Partition::CannotReach(format!(
            "{name} holds {}, which ovl did not write: left untouched",
            c.name()
        )),
        Err(e) => Partition::CannotReach(e),
    }
}

fn classify(dev: &Path, mounts: &[MountInfo]) -> Partition {
    let name = dev.display();
    if let Some(v) = dev
        .to_str()
        .and_then(|d| crate::ubi::volume_of(Path::new("/sys"), d))
    {
        return classify_ubi(dev, &v, mounts);
    }
    if let Some(part) = mtd_part(dev) {
        let char_dev = PathBuf::from(part.char_dev());
        return match content_of(dev, Some(&part)) {
            Ok(c @ (Content::Jffs2 | Content::Marker | Content::ResetMark)) => {
                Partition::EraseMtd {
                    char_dev,
                    content: c,
                }
            }
            Ok(Content::Erased) => Partition::Nothing(format!("{name} is erased already")),
            Ok(c) => Partition::CannotReach(format!(
                "{name} holds {}, which ovl did not write: left untouched",
                c.name()
            )),
            Err(e) => Partition::CannotReach(e),
        };
    }
    if let Some(m) = mounts.iter().find(|m| Path::new(&m.source) == dev) {
        return Partition::CannotReach(format!(
            "{name} is mounted on {}: unmount it first",
            m.mount_point
        ));
    }
    match content_of(dev, None) {
        Ok(Content::Ext4 { .. }) => Partition::MarkBlock {
            dev: dev.to_path_buf(),
        },
        Ok(Content::ResetMark) => Partition::Nothing(format!(
            "{name} is marked for reset already: the next boot formats it"
        )),
        Ok(c @ (Content::Erased | Content::Zeroes | Content::Marker)) => {
            Partition::Nothing(format!(
                "{name} is blank ({}): nothing of the old state is on it",
                c.name()
            ))
        }
        Ok(c) => Partition::CannotReach(format!(
            "{name} holds {}, which ovl did not write: left untouched",
            c.name()
        )),
        Err(e) => Partition::CannotReach(e),
    }
}

/// Says what the reset will do, asks unless `-y`, and does it.
pub fn run(o: &Opts) -> Result<()> {
    let state = &status::read_state(o.state.as_deref())?;
    let mounts = status::live_mounts();
    let ovl_dir = &o.overlay;
    let upper = ovl_dir.join("upper");
    let ovl_name = ovl_dir.display().to_string();
    let persistent = state.mode.as_str() == "persistent";
    // On the bare ROM (mode rom) there is no upper; the partition can still be reset.
    let has_upper = status::top(&mounts, &ovl_name).is_some() && upper.is_dir();
    if persistent && !has_upper {
        bail!(
            "{} is not mounted or has no upper directory, though the state says persistent",
            ovl_dir.display()
        );
    }
    // Failsafe did not look for the partition at boot: look now, as preinit would. The
    // system double stays alive so that a loop device it attached stays attached.
    let mut sys = crate::sys::real::Real::new(PathBuf::from("/dev"));
    let found = match (&o.data, &state.data) {
        (Some(d), _) => Ok(Some(d.clone())),
        (None, Some(d)) => Ok(Some(PathBuf::from(d.as_str()))),
        (None, None) if !persistent => find_data(&mut sys),
        (None, None) => Ok(None),
    };
    let data = found.as_ref().ok().cloned().flatten();
    let partition = match (&data, persistent) {
        (_, true) => Partition::Mounted,
        (Some(d), false) => classify(d, &mounts),
        (None, false) => Partition::CannotReach(match found {
            Err(e) => format!("none found now: {e}"),
            Ok(_) => "no writable partition was found at boot: there is none to reset".into(),
        }),
    };

    let mut lines = Vec::new();
    if persistent {
        lines.push(format!(
            "Deletes every change in the overlay on {} ({}): all settings and files written since \
             the ROM was installed.",
            data.as_deref()
                .map_or("?".into(), |d| d.display().to_string()),
            state.data_fstype.as_deref().unwrap_or("?"),
        ));
        if overlay::upgrade_waiting(ovl_dir) {
            lines.push(if o.keep {
                "The waiting upgrade backup is kept (-k).".into()
            } else {
                "The waiting upgrade backup is deleted too (-k keeps it).".into()
            });
        }
    } else {
        lines.push(format!(
            "This boot runs on a {} overlay ({}).{}",
            state.mode.as_str(),
            state.reason.as_deref().unwrap_or("no reason recorded"),
            if has_upper {
                " Its changes are deleted."
            } else {
                " It has no upper to empty."
            }
        ));
        lines.push(match &partition {
            Partition::EraseMtd { char_dev, content } => format!(
                "The writable partition {} ({}, not mounted) is reset now through {}: {}",
                data.as_deref()
                    .map_or("?".into(), |d| d.display().to_string()),
                content.name(),
                char_dev.display(),
                if o.full_erase {
                    "every block that is not erased already is erased (--full-erase)."
                } else {
                    "on NOR every old node is marked obsolete (JFFS2 erases those blocks after \
                     the next mount, in the background) and block 0 is erased; other flash is \
                     erased, every block that is not erased already."
                }
            ),
            Partition::MarkBlock { dev } => format!(
                "The writable partition {} (ext4, not mounted) is marked for reset: the next boot \
                 formats it.",
                dev.display()
            ),
            Partition::TruncateUbi { dev } => format!(
                "The writable UBI volume {} (UBIFS, not mounted) is emptied now (a volume update \
                 of no bytes: UBI unmaps every block, and a cut leaves the volume unreadable \
                 until the next boot finishes it); the next boot formats it.",
                dev.display()
            ),
            Partition::Nothing(why) => format!("The writable partition: {why}."),
            Partition::CannotReach(why) => {
                format!("The writable partition cannot be reset: {why}.")
            }
            Partition::Mounted => String::new(),
        });
        if o.keep {
            lines.push("-k: an upgrade backup lives on the writable partition only when it is mounted; there is none to keep here.".into());
        }
    }
    for l in &lines {
        println!("{l}");
    }
    confirm(o.yes)?;

    let t = Instant::now();
    if persistent {
        // Pending first: from here on a cut is finished by the next boot.
        let mut rec = overlay::read(ovl_dir)?.unwrap_or_else(|| Record::pending(None));
        rec.first_boot = FirstBoot::Pending;
        overlay::write(ovl_dir, &rec)?;
    }
    let c = if has_upper {
        overlay::clear_dir(&upper)?
    } else {
        overlay::Cleared::default()
    };
    if persistent && !o.keep {
        crate::upgrade::discard(ovl_dir)?;
    }
    if has_upper {
        overlay::sync_dir(&upper)?;
        println!(
            "removed {} entries from {} in {} s{}",
            c.removed,
            upper.display(),
            crate::decimal::secs(t.elapsed(), 2),
            if c.mounts_skipped > 0 {
                format!("; {} mount points inside were left alone", c.mounts_skipped)
            } else {
                String::new()
            }
        );
    }
    // Unused dentries go, so files deleted from the ROM show again where nothing holds them.
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "2");

    match &partition {
        Partition::EraseMtd { char_dev, content } => {
            let t = Instant::now();
            // The mark goes first unless one is there; "erasing" is said once it is on the
            // flash, when a cut from then on is finished by preinit.
            let r = crate::mtd::reset(
                char_dev,
                *content == Content::Jffs2,
                o.full_erase,
                &mut || println!("erasing {}", char_dev.display()),
            )
            .map_err(|(w, e)| {
                crate::sys::errno_error(format_args!("reset {}: {w}", char_dev.display()), e)
            })?;
            println!(
                "{} in {} s",
                r.summary(&char_dev.display().to_string()),
                crate::decimal::secs(t.elapsed(), 2)
            );
        }
        Partition::MarkBlock { dev } => {
            mark_block(dev)?;
            println!("marked {}: the next boot formats it", dev.display());
        }
        Partition::TruncateUbi { dev } => {
            crate::ubi::update(dev, &[], &mut |_, _| {}).map_err(|e| {
                crate::sys::errno_error(format_args!("empty {}: UBI_IOCVOLUP", dev.display()), e)
            })?;
            println!(
                "emptied the UBI volume {} in {} s: the next boot formats it as UBIFS",
                dev.display(),
                crate::decimal::secs(t.elapsed(), 2)
            );
        }
        Partition::CannotReach(why) => println!("not reset: {why}"),
        Partition::Nothing(_) | Partition::Mounted => {}
    }
    nix::unistd::sync();
    if persistent {
        println!("reset done; the next boot starts from the ROM's state (first boot pending)");
    }
    if o.reboot {
        println!("rebooting");
        std::thread::sleep(std::time::Duration::from_secs(1));
        nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT)
            .map_err(|e| crate::sys::errno_error(format_args!("reboot"), e))?;
    }
    Ok(())
}

/// The writable partition as preinit would find it (command line, board, auto), without
/// waiting: the devices had the whole boot to appear.
fn find_data(sys: &mut dyn crate::sys::Sys) -> Result<Option<PathBuf>, String> {
    use crate::board::Board;
    let cmdline = crate::cmdline::Cmdline::parse(
        &std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
    );
    let board_path = format!("/{}", crate::preinit::DEFAULT_BOARD);
    let board = if Path::new(&board_path).exists() {
        Board::load(&board_path).map_err(|e| e.to_string())?
    } else {
        Board::default()
    };
    let cfg = crate::config::Config::resolve(&cmdline, &board, crate::plan::BootKind::Initramfs);
    let src = crate::probe::Sources {
        proc_dir: "/proc".into(),
        sys_dir: "/sys".into(),
        dev_dir: "/dev".into(),
        make_nodes: false,
    };
    let mut last = Err("no selector".to_string());
    for data in &cfg.data {
        let found = crate::probe::find(
            &crate::probe::Wanted {
                rom: cfg.rom.first().map(|r| r.value.clone()),
                data: Some(data.value.clone()),
                timeout: std::time::Duration::ZERO,
            },
            &src,
            sys,
        );
        match found.data {
            Ok(d) => return Ok(Some(PathBuf::from(d.device))),
            Err(e) => last = Err(e),
        }
    }
    last
}

pub fn mark_block(dev: &Path) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dev)
        .with_context(|| format!("open {}", dev.display()))?;
    f.write_all_at(&magic::BLOCK_RESET_MARK, 0)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("write the reset mark on {}", dev.display()))
}

/// Zeroes ovl's block reset mark at offset 0 of `dev` if it is there; returns whether it was.
/// The 16 bytes lie in the boot block, which ext4 does not use.
pub fn clear_block_mark(dev: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)?;
    let mut head = [0u8; 16];
    f.read_exact_at(&mut head, 0)?;
    if head != magic::BLOCK_RESET_MARK {
        return Ok(false);
    }
    f.write_all_at(&[0u8; 16], 0)?;
    f.sync_all()?;
    Ok(true)
}

fn confirm(yes: bool) -> Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!("not a terminal and no -y: refusing to guess; run `ovlctl reset -y` to reset");
    }
    eprint!("Type 'yes' to reset: ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("read the answer")?;
    if answer.trim() != "yes" {
        bail!("not confirmed: nothing was changed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_mark_is_cleared_only_where_it_is() {
        let d = tempfile::tempdir().unwrap();
        let dev = d.path().join("part");
        let mut ext4 = vec![0u8; 4096];
        ext4[0x438..0x43a].copy_from_slice(&[0x53, 0xef]);
        std::fs::write(&dev, &ext4).unwrap();
        mark_block(&dev).unwrap();
        let head = std::fs::read(&dev).unwrap();
        assert_eq!(magic::identify(&head), Content::ResetMark);
        assert!(clear_block_mark(&dev).unwrap());
        assert_eq!(std::fs::read(&dev).unwrap(), ext4);
        // Not ours: left as it is.
        let mut other = ext4.clone();
        other[..4].copy_from_slice(&magic::DEADCODE);
        std::fs::write(&dev, &other).unwrap();
        assert!(!clear_block_mark(&dev).unwrap());
        assert_eq!(std::fs::read(&dev).unwrap(), other);
    }
}
