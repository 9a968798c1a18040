//! The small MTD layer ovl needs, on nix's ioctl macros (include/uapi/mtd/mtd-abi.h):
//! MEMGETINFO to learn the size and erase block, MEMGETBADBLOCK to skip bad NAND blocks,
//! MEMERASE to erase (block 0, which holds the reset marker, last). Partition names come from /proc/mtd (see `probe::mtd`).

use crate::sys::EraseReport;
use nix::errno::Errno;
use nix::libc;
use std::os::fd::AsRawFd;
use std::path::Path;

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct MtdInfoUser {
    pub kind: u8,
    pub flags: u32,
    pub size: u32,
    pub erasesize: u32,
    pub writesize: u32,
    pub oobsize: u32,
    pub padding: u64,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct EraseInfoUser {
    pub start: u32,
    pub length: u32,
}

nix::ioctl_read!(mem_get_info, b'M', 1, MtdInfoUser);
nix::ioctl_write_ptr!(mem_erase, b'M', 2, EraseInfoUser);
nix::ioctl_write_ptr!(mem_get_bad_block, b'M', 11, i64);

/// MTD type MTD_NANDFLASH / MTD_MLCNANDFLASH: the only ones with bad blocks.
fn has_bad_blocks(info: &MtdInfoUser) -> bool {
    matches!(info.kind, 4 | 8)
}

pub fn info(dev: &Path) -> Result<MtdInfoUser, Errno> {
    let f = std::fs::File::open(dev).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
    let mut info = MtdInfoUser::default();
    // SAFETY: MEMGETINFO fills a struct mtd_info_user, which MtdInfoUser mirrors.
    unsafe { mem_get_info(f.as_raw_fd(), &mut info) }?;
    Ok(info)
}

/// The order an erase goes in: block 0 last. Block 0 holds the reset marker, so a power cut
/// at any point leaves either the marker (the next boot erases again, skipping what is done)
/// or every block erased (the next boot finds erased flash); never old nodes without the
/// marker in front of them, which JFFS2 would mount as the old file system.
pub fn erase_order(blocks: u32) -> impl Iterator<Item = u32> {
    (1..blocks).chain((blocks > 0).then_some(0))
}

/// What an erase needs of the flash, so that its order can be tested without a device.
pub trait Blocks {
    fn count(&self) -> u32;
    fn is_bad(&mut self, block: u32) -> Result<bool, (String, Errno)>;
    /// Whether the block holds nothing: all 0xFF, or only the clean marker JFFS2 writes into
    /// every erased block it finds (so a JFFS2 partition has no all-0xFF blocks left). Such a
    /// block holds no old node, so erasing it again would cost time and wear for nothing.
    fn is_erased(&mut self, block: u32) -> Result<bool, (String, Errno)>;
    fn erase(&mut self, block: u32) -> Result<(), (String, Errno)>;
}

/// Erases every good block that is not erased already, in [`erase_order`]. A block that cannot
/// be read is erased: reading first only saves time and wear.
pub fn erase_blocks(b: &mut dyn Blocks) -> Result<EraseReport, (String, Errno)> {
    let mut r = EraseReport::default();
    for i in erase_order(b.count()) {
        if b.is_bad(i)? {
            r.bad_blocks += 1;
            continue;
        }
        match b.is_erased(i) {
            Ok(true) => {
                r.already_erased += 1;
                continue;
            }
            Ok(false) => {}
            Err((what, e)) => log::warn!("{what}: {}; erasing it", e.desc()),
        }
        b.erase(i)?;
        r.erased += 1;
    }
    Ok(r)
}

/// JFFS2's clean marker in this CPU's byte order: a 12-byte node of type 0x2003.
fn is_clean_marker(buf: &[u8]) -> bool {
    use crate::probe::jffs2;
    buf.get(..2) == Some(jffs2::MAGIC.to_ne_bytes().as_slice())
        && jffs2::node_header(buf, u64::MAX) == Some(jffs2::NODETYPE_CLEANMARKER)
        && buf.get(4..8) == Some((jffs2::HEADER_LEN as u32).to_ne_bytes().as_slice())
}

/// An MTD character device, opened for erasing.
struct Device {
    file: std::fs::File,
    info: MtdInfoUser,
}

impl Device {
    fn offset(&self, block: u32) -> Result<u32, (String, Errno)> {
        block
            .checked_mul(self.info.erasesize)
            .ok_or_else(|| (format!("block {block} is past 4 GiB"), Errno::EINVAL))
    }
}

impl Blocks for Device {
    fn count(&self) -> u32 {
        self.info.size / self.info.erasesize
    }

    fn is_bad(&mut self, block: u32) -> Result<bool, (String, Errno)> {
        if !has_bad_blocks(&self.info) {
            return Ok(false);
        }
        let off = self.offset(block)?;
        let pos = i64::from(off);
        // SAFETY: MEMGETBADBLOCK reads one loff_t.
        match unsafe { mem_get_bad_block(self.file.as_raw_fd(), &pos) } {
            Ok(0) | Err(Errno::EOPNOTSUPP) => Ok(false),
            Ok(_) => Ok(true),
            Err(e) => Err((format!("MEMGETBADBLOCK at {off:#x}"), e)),
        }
    }

    fn is_erased(&mut self, block: u32) -> Result<bool, (String, Errno)> {
        use std::os::unix::fs::FileExt;
        let off = self.offset(block)?;
        let mut buf = vec![0u8; (64 * 1024).min(self.info.erasesize as usize)];
        let mut done: u32 = 0;
        while done < self.info.erasesize {
            let len = buf.len().min((self.info.erasesize - done) as usize);
            let chunk = buf.get_mut(..len).unwrap_or_default();
            let at = u64::from(off) + u64::from(done);
            self.file.read_exact_at(chunk, at).map_err(|e| {
                (
                    format!("read at {at:#x}"),
                    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                )
            })?;
            // A clean marker at the start of the block is the one thing allowed besides 0xFF.
            let skip = if done == 0 && is_clean_marker(chunk) {
                crate::probe::jffs2::HEADER_LEN
            } else {
                0
            };
            // Most used blocks differ in their first bytes: stop there.
            if chunk.iter().skip(skip).any(|&b| b != 0xff) {
                return Ok(false);
            }
            done += len as u32;
        }
        Ok(true)
    }

    fn erase(&mut self, block: u32) -> Result<(), (String, Errno)> {
        let off = self.offset(block)?;
        let req = EraseInfoUser {
            start: off,
            length: self.info.erasesize,
        };
        // SAFETY: MEMERASE reads one struct erase_info_user.
        unsafe { mem_erase(self.file.as_raw_fd(), &req) }
            .map(|_| ())
            .map_err(|e| (format!("MEMERASE at {off:#x}"), e))
    }
}

/// Erases the partition: every good block not already erased, block 0 (the marker) last.
pub fn erase_all(dev: &Path) -> Result<EraseReport, (String, Errno)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(|e| {
            (
                "open".to_string(),
                Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            )
        })?;
    let mut info = MtdInfoUser::default();
    // SAFETY: MEMGETINFO fills a struct mtd_info_user, which MtdInfoUser mirrors.
    unsafe { mem_get_info(file.as_raw_fd(), &mut info) }
        .map_err(|e| ("MEMGETINFO".to_string(), e))?;
    if info.erasesize == 0 {
        return Err(("MEMGETINFO: erase size 0".to_string(), Errno::EINVAL));
    }
    erase_blocks(&mut Device { file, info })
}

/// Writes ovl's reset mark: the first [`crate::probe::jffs2::WINDOW`] bytes of the partition
/// programmed to zero. This is the first step of a reset of an unmounted JFFS2 and the only
/// one that must come first: from the moment it is on the flash, preinit erases the partition
/// before it mounts anything, so a cut during the erase that follows ([`erase_all`], block 0
/// last) is finished by the next boot and no old node is mounted again. NOR programs by
/// clearing bits, so zero is the one value that can be written over any content.
pub fn write_reset_mark(dev: &Path) -> Result<(), (String, Errno)> {
    use std::os::unix::fs::FileExt;
    let errno = |e: std::io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dev)
        .map_err(|e| ("open".to_string(), errno(e)))?;
    let zeros = [0u8; crate::probe::jffs2::WINDOW];
    // mtdchar writes reach the flash before write() returns (and it has no fsync).
    file.write_all_at(&zeros, 0)
        .map_err(|e| ("write the reset mark at 0".to_string(), errno(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flash in memory that loses power after `budget` erases.
    struct Fake {
        blocks: Vec<Vec<u8>>,
        bad: Vec<u32>,
        budget: usize,
        erased: Vec<u32>,
    }

    impl Blocks for Fake {
        fn count(&self) -> u32 {
            self.blocks.len() as u32
        }
        fn is_bad(&mut self, block: u32) -> Result<bool, (String, Errno)> {
            Ok(self.bad.contains(&block))
        }
        fn is_erased(&mut self, block: u32) -> Result<bool, (String, Errno)> {
            Ok(self.blocks[block as usize].iter().all(|&b| b == 0xff))
        }
        fn erase(&mut self, block: u32) -> Result<(), (String, Errno)> {
            if self.budget == 0 {
                return Err(("power cut".into(), Errno::EIO));
            }
            self.budget -= 1;
            self.blocks[block as usize].fill(0xff);
            self.erased.push(block);
            Ok(())
        }
    }

    /// Eight blocks of an old JFFS2 behind the marker; block 5 never written, block 3 bad.
    fn old_flash(budget: usize) -> Fake {
        let mut blocks = vec![vec![0x85u8, 0x19, 0x03, 0x20, 0x42, 0x42]; 8];
        blocks[0][..4].copy_from_slice(&[0xde, 0xad, 0xc0, 0xde]);
        blocks[5].fill(0xff);
        Fake {
            blocks,
            bad: vec![3],
            budget,
            erased: Vec::new(),
        }
    }

    #[test]
    fn block_0_is_erased_last() {
        assert_eq!(erase_order(4).collect::<Vec<_>>(), [1, 2, 3, 0]);
        assert_eq!(erase_order(1).collect::<Vec<_>>(), [0]);
        assert_eq!(erase_order(0).count(), 0);
        let mut f = old_flash(usize::MAX);
        let r = erase_blocks(&mut f).unwrap();
        assert_eq!(f.erased, [1, 2, 4, 6, 7, 0]);
        assert_eq!(
            r,
            EraseReport {
                erased: 6,
                already_erased: 1,
                bad_blocks: 1
            }
        );
    }

    #[test]
    fn a_cut_anywhere_leaves_the_marker_or_everything_erased_and_resumes() {
        for cut_after in 0..=6 {
            let mut f = old_flash(cut_after);
            let first = erase_blocks(&mut f);
            let good: Vec<usize> = (0..8).filter(|&i| i != 3).collect();
            let all_erased = good.iter().all(|&i| f.blocks[i].iter().all(|&b| b == 0xff));
            let marker = f.blocks[0].starts_with(&[0xde, 0xad, 0xc0, 0xde]);
            assert!(marker || all_erased, "cut after {cut_after} erases");
            assert_eq!(first.is_ok(), cut_after == 6);
            // The next boot sees the marker and erases again: only what is left.
            if marker {
                f.budget = usize::MAX;
                let r = erase_blocks(&mut f).unwrap();
                assert_eq!(r.erased as usize, 6 - cut_after, "cut after {cut_after}");
                assert_eq!(r.already_erased as usize, 1 + cut_after);
                assert!(good.iter().all(|&i| f.blocks[i].iter().all(|&b| b == 0xff)));
            }
        }
    }

    #[test]
    fn a_clean_marker_alone_is_an_empty_block() {
        let h = crate::probe::jffs2::tests::header(cfg!(target_endian = "little"), 0x2003, 12);
        let mut block = vec![0xffu8; 4096];
        block[..12].copy_from_slice(&h);
        assert!(is_clean_marker(&block));
        let other = crate::probe::jffs2::tests::header(cfg!(target_endian = "little"), 0xe001, 68);
        assert!(!is_clean_marker(&other));
        // A marker of another length is a node like any other.
        let long = crate::probe::jffs2::tests::header(cfg!(target_endian = "little"), 0x2003, 16);
        assert!(!is_clean_marker(&long));
    }

    #[test]
    fn struct_sizes_match_the_kernel_abi() {
        // The ioctl numbers encode these sizes; a mismatch would make every call fail.
        assert_eq!(std::mem::size_of::<MtdInfoUser>(), 32);
        assert_eq!(std::mem::size_of::<EraseInfoUser>(), 8);
    }
}
