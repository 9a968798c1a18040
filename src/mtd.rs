//! The small MTD layer ovl needs, on nix's ioctl macros (include/uapi/mtd/mtd-abi.h):
//! MEMGETINFO to learn the size and erase block, MEMGETBADBLOCK to skip bad NAND blocks,
//! MEMERASE to erase. Partition names come from /proc/mtd (see `probe::mtd`).
//!
//! # Resetting a JFFS2 partition without making anyone wait for a full erase
//!
//! Erasing NOR is slow on real flash (about 0.34 s/MiB: 17 s for 50 MiB), and a boot that
//! waits for it is a boot that users power-cycle. OpenWrt boots on tmpfs meanwhile and copies
//! the tmpfs upper over later, racing with the writes of the running system. ovl does not
//! erase the old nodes before the mount at all: it marks each of them obsolete in place, the
//! way JFFS2 itself retires a node on NOR, and lets JFFS2 erase the blocks after it mounts.
//!
//! - JFFS2's scan (fs/jffs2/scan.c) checks a header's CRC with the ACCURATE bit (0x2000) of
//!   the node type forced on, and skips a node whose stored type has that bit clear as dirty
//!   space. NOR programs by clearing bits, so clearing it is a write over any node (the
//!   header rewritten with that bit clear, as JFFS2's own `jffs2_mark_node_obsolete` does).
//! - A block with nothing but obsolete nodes (no clean marker either) is "all dirty": the scan
//!   puts it on the erase-pending list, and JFFS2's garbage collector thread erases it in the
//!   background after the mount, one block per pass; a write that needs space erases one at
//!   once. Files written meanwhile go to JFFS2 itself: there is no copy and no race.
//! - JFFS2 refuses to mount ("Cowardly refusing to erase blocks on filesystem with no valid
//!   JFFS2 nodes") when nothing is used and not every block is free. One block holding a
//!   clean marker alone keeps it mountable: one that holds nothing already is used, else one
//!   block is erased and given the marker.
//!
//! [`reset`] goes: ovl's reset mark on block 0 (the caller, before anything else) → every
//! block that holds anything, block 0 included, has every node header that JFFS2 could take
//! for live cleared of ACCURATE → the spare block with a clean marker → block 0 erased. Until
//! that last erase the mark is on the flash, and preinit runs the whole pass again (each step
//! is idempotent) before it mounts anything; after it, nothing old is live. The pass reads the
//! partition once and rewrites 12 bytes per old node: time grows with the partition's use, but
//! it is a read, not an erase, and preinit pays it only after a cut or for OpenWrt's marker,
//! because `ovlctl reset` does it before the reboot.
//!
//! Kernels with JFFS2 summaries (Debian's have them) read a block's summary node instead of
//! scanning it; the summary node is obsoleted like any other, its node CRC (which covers the
//! node type) no longer holds, and the kernel scans that block in full.
//!
//! The pass looks at every 4-byte offset, not only where JFFS2's own walk would land, so that
//! it clears a superset of what a scan could accept. Flash that cannot be programmed bit by
//! bit (NAND: pages are written once between erases) is erased whole instead ([`erase_blocks`]).
//! What remains: a cut during the final erase of block 0 on real NOR can leave that block
//! half-erased, and a partial erase sets bits, which could in theory turn an obsolete header
//! back into a live one; JFFS2 carries the same risk for every node it obsoletes.

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
    /// The erase block size in bytes.
    fn block_len(&self) -> u32;
    fn is_bad(&mut self, block: u32) -> Result<bool, (String, Errno)>;
    /// Whether the block holds nothing: all 0xFF, or only the clean marker JFFS2 writes into
    /// every erased block it finds (so a JFFS2 partition has no all-0xFF blocks left). Such a
    /// block holds no old node, so erasing it again would cost time and wear for nothing.
    fn is_erased(&mut self, block: u32) -> Result<bool, (String, Errno)>;
    fn erase(&mut self, block: u32) -> Result<(), (String, Errno)>;
    /// Reads the whole block into `buf` ([`Blocks::block_len`] bytes).
    fn read(&mut self, block: u32, buf: &mut [u8]) -> Result<(), (String, Errno)>;
    /// Programs `bytes` at `offset` in the block: on NOR, bits can only go from 1 to 0.
    fn program(&mut self, block: u32, offset: u32, bytes: &[u8]) -> Result<(), (String, Errno)>;
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
            Err((what, e)) => log::warn!("{what}: {}; erasing it", crate::sys::errno_text(e)),
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

/// A block that holds nothing: all 0xFF, or a clean marker and 0xFF.
fn holds_nothing(block: &[u8]) -> bool {
    let skip = if is_clean_marker(block) {
        crate::probe::jffs2::HEADER_LEN
    } else {
        0
    };
    block.iter().skip(skip).all(|&b| b == 0xff)
}

/// JFFS2's clean marker as the kernel writes it on NOR, in this CPU's byte order.
pub fn clean_marker() -> [u8; crate::probe::jffs2::HEADER_LEN] {
    use crate::probe::jffs2::{kernel_crc32, HEADER_LEN, MAGIC, NODETYPE_CLEANMARKER};
    let mut h = [0u8; HEADER_LEN];
    h[..2].copy_from_slice(&MAGIC.to_ne_bytes());
    h[2..4].copy_from_slice(&NODETYPE_CLEANMARKER.to_ne_bytes());
    h[4..8].copy_from_slice(&(HEADER_LEN as u32).to_ne_bytes());
    let crc = kernel_crc32(&h[..8]);
    h[8..].copy_from_slice(&crc.to_ne_bytes());
    h
}

/// Every offset in `block` (4-byte aligned, from `from` on) where a JFFS2 scan of this CPU's
/// byte order could find a live node: the magic, a header CRC that holds, a length that
/// fits in the rest of the block, and ACCURATE set. Each comes with the node type to program
/// there, ACCURATE cleared. Offsets inside other nodes are included on purpose (a superset
/// of the kernel's walk); a false hit clears one bit of old data that is being discarded.
pub fn live_headers(block: &[u8], from: usize) -> Vec<(usize, [u8; 2])> {
    use crate::probe::jffs2::{node_header, MAGIC, NODE_ACCURATE};
    let magic = MAGIC.to_ne_bytes();
    let mut hits = Vec::new();
    let mut off = from.next_multiple_of(4);
    while off + crate::probe::jffs2::HEADER_LEN <= block.len() {
        let rest = block.get(off..).unwrap_or_default();
        if rest.get(..2) == Some(magic.as_slice()) {
            if let Some(t) = node_header(rest, rest.len() as u64) {
                if t & NODE_ACCURATE != 0 {
                    hits.push((off, (t & !NODE_ACCURATE).to_ne_bytes()));
                }
            }
        }
        off += 4;
    }
    hits
}

/// The obsoleting pass of [`reset`] over any flash: every old node made obsolete, a block
/// with a clean marker alone kept or made, block 0 (the reset mark) erased last. The mark
/// must be on block 0 before this starts.
pub fn obsolete_blocks(b: &mut dyn Blocks) -> Result<EraseReport, (String, Errno)> {
    let mut r = EraseReport::default();
    let mut buf = vec![0u8; b.block_len() as usize];
    // The first good block other than 0 that holds nothing; true when it has the marker.
    let mut spare: Option<(u32, bool)> = None;
    let mut first_good: Option<u32> = None;
    for i in 0..b.count() {
        if b.is_bad(i)? {
            r.bad_blocks += 1;
            continue;
        }
        b.read(i, &mut buf)?;
        if i != 0 {
            first_good.get_or_insert(i);
            if holds_nothing(&buf) {
                r.already_erased += 1;
                let marked = is_clean_marker(&buf);
                match spare {
                    Some((_, true)) => {}
                    Some((_, false)) if !marked => {}
                    _ => spare = Some((i, marked)),
                }
                continue;
            }
        }
        for (off, t) in live_headers(&buf, 0) {
            // The whole header as read, the type changed: what JFFS2 itself writes to retire a
            // node. The same bytes again change nothing on NOR, and flash (or an emulator)
            // that pads a short write of a wider word is not given bytes it would not keep.
            let mut h = [0u8; crate::probe::jffs2::HEADER_LEN];
            if let Some(old) = buf.get(off..off + h.len()) {
                h.copy_from_slice(old);
            }
            h[2..4].copy_from_slice(&t);
            b.program(i, off as u32, &h)?;
            r.obsoleted += 1;
        }
        if i != 0 {
            r.pending += 1;
        }
    }
    match (spare, first_good) {
        (Some((_, true)), _) => {}
        (Some((i, false)), _) => b.program(i, 0, &clean_marker())?,
        (None, Some(i)) => {
            // Every block held old nodes: one is erased now so that JFFS2 has a used block.
            b.erase(i)?;
            b.program(i, 0, &clean_marker())?;
            r.erased += 1;
            r.pending = r.pending.saturating_sub(1);
        }
        // Block 0 alone: erasing it is all there is to do.
        (None, None) => {}
    }
    if b.count() > 0 && !b.is_bad(0)? {
        b.erase(0)?;
        r.erased += 1;
    }
    Ok(r)
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

    fn block_len(&self) -> u32 {
        self.info.erasesize
    }

    fn read(&mut self, block: u32, buf: &mut [u8]) -> Result<(), (String, Errno)> {
        use std::os::unix::fs::FileExt;
        let off = u64::from(self.offset(block)?);
        self.file
            .read_exact_at(buf, off)
            .map_err(|e| (format!("read at {off:#x}"), io_errno(&e)))
    }

    fn program(&mut self, block: u32, offset: u32, bytes: &[u8]) -> Result<(), (String, Errno)> {
        use std::os::unix::fs::FileExt;
        let at = u64::from(self.offset(block)?) + u64::from(offset);
        // mtdchar writes reach the flash before write() returns (and it has no fsync).
        self.file
            .write_all_at(bytes, at)
            .map_err(|e| (format!("write at {at:#x}"), io_errno(&e)))
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
            self.file
                .read_exact_at(chunk, at)
                .map_err(|e| (format!("read at {at:#x}"), io_errno(&e)))?;
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

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

fn open(dev: &Path) -> Result<Device, (String, Errno)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(|e| ("open".to_string(), io_errno(&e)))?;
    let mut info = MtdInfoUser::default();
    // SAFETY: MEMGETINFO fills a struct mtd_info_user, which MtdInfoUser mirrors.
    unsafe { mem_get_info(file.as_raw_fd(), &mut info) }
        .map_err(|e| ("MEMGETINFO".to_string(), e))?;
    if info.erasesize == 0 {
        return Err(("MEMGETINFO: erase size 0".to_string(), Errno::EINVAL));
    }
    Ok(Device { file, info })
}

/// Writes a ROM image to an MTD partition: each good block erased, programmed, read back
/// and compared; bad blocks skipped (the image goes on in the next good block, as OpenWrt's
/// `mtd write` does).
pub struct Writer {
    dev: Device,
    path: std::path::PathBuf,
}

impl Writer {
    pub fn open(path: &Path) -> anyhow::Result<Writer> {
        let dev = open(path).map_err(|(what, e)| {
            crate::sys::errno_error(format_args!("{}: {what}", path.display()), e)
        })?;
        Ok(Writer {
            dev,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, (what, e): (String, Errno)) -> anyhow::Error {
        crate::sys::errno_error(format_args!("{}: {what}", self.path.display()), e)
    }

    pub fn good_bytes(&mut self) -> anyhow::Result<u64> {
        let mut n = 0u64;
        for b in 0..self.dev.count() {
            if !self.dev.is_bad(b).map_err(|e| self.err(e))? {
                n += u64::from(self.dev.block_len());
            }
        }
        Ok(n)
    }

    pub fn write_verify(
        &mut self,
        data: &[u8],
        progress: &mut dyn FnMut(u64, u64),
    ) -> anyhow::Result<()> {
        let len = self.dev.block_len() as usize;
        let total = data.len() as u64;
        let mut chunks = data.chunks(len).peekable();
        let mut done = 0u64;
        let mut back = vec![0u8; len];
        for b in 0..self.dev.count() {
            let Some(chunk) = chunks.peek().copied() else {
                break;
            };
            if self.dev.is_bad(b).map_err(|e| self.err(e))? {
                log::warn!("{}: block {b} is bad; skipped", self.path.display());
                continue;
            }
            self.dev.erase(b).map_err(|e| self.err(e))?;
            self.dev.program(b, 0, chunk).map_err(|e| self.err(e))?;
            self.dev.read(b, &mut back).map_err(|e| self.err(e))?;
            if back.get(..chunk.len()) != Some(chunk) {
                anyhow::bail!(
                    "{}: block {b} reads back different from what was written",
                    self.path.display()
                );
            }
            chunks.next();
            done += chunk.len() as u64;
            progress(done, total);
        }
        if chunks.peek().is_some() {
            anyhow::bail!(
                "{}: {} of {total} bytes written, no good block left for the rest",
                self.path.display(),
                done
            );
        }
        Ok(())
    }
}

/// MTD_NORFLASH that programs single bits (MTD_BIT_WRITEABLE) a byte at a time: where a node
/// type can be rewritten in place. NAND, and NOR with ECC write units, cannot.
fn can_obsolete(info: &MtdInfoUser) -> bool {
    const MTD_NORFLASH: u8 = 3;
    const MTD_BIT_WRITEABLE: u32 = 0x800;
    info.kind == MTD_NORFLASH && info.flags & MTD_BIT_WRITEABLE != 0 && info.writesize == 1
}

/// Resets a JFFS2 partition (or one with a reset marker) so that nothing old is mounted
/// again, without waiting for a full erase where the flash allows (see the module notes).
/// `mark` writes ovl's reset mark first; preinit passes false, since it acts on a mark.
/// `full` erases every block now, wherever the flash could do without. `started` runs once
/// the reset is committed (the mark on the flash): from then on a cut is finished by preinit.
pub fn reset(
    dev: &Path,
    mark: bool,
    full: bool,
    started: &mut dyn FnMut(),
) -> Result<EraseReport, (String, Errno)> {
    let mut d = open(dev)?;
    if mark {
        write_reset_mark(&d.file)?;
    }
    started();
    if can_obsolete(&d.info) && !full {
        obsolete_blocks(&mut d)
    } else {
        erase_blocks(&mut d)
    }
}

/// Writes ovl's reset mark: the first [`crate::probe::jffs2::WINDOW`] bytes of the partition
/// programmed to zero. This is the first step of a reset of an unmounted JFFS2 and the only
/// one that must come first: from the moment it is on the flash, preinit finishes the reset
/// before it mounts anything, so a cut during what follows ([`reset`], block 0 last) is
/// finished by the next boot and no old node is mounted again. NOR programs by clearing
/// bits, so zero is the one value that can be written over any content.
fn write_reset_mark(file: &std::fs::File) -> Result<(), (String, Errno)> {
    use std::os::unix::fs::FileExt;
    let zeros = [0u8; crate::probe::jffs2::WINDOW];
    // mtdchar writes reach the flash before write() returns (and it has no fsync).
    file.write_all_at(&zeros, 0)
        .map_err(|e| ("write the reset mark at 0".to_string(), io_errno(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flash in memory that loses power after `budget` erases and writes.
    struct Fake {
        blocks: Vec<Vec<u8>>,
        bad: Vec<u32>,
        budget: usize,
        erased: Vec<u32>,
    }

    impl Fake {
        fn spend(&mut self) -> Result<(), (String, Errno)> {
            if self.budget == 0 {
                return Err(("power cut".into(), Errno::EIO));
            }
            self.budget -= 1;
            Ok(())
        }
    }

    impl Blocks for Fake {
        fn count(&self) -> u32 {
            self.blocks.len() as u32
        }
        fn block_len(&self) -> u32 {
            self.blocks[0].len() as u32
        }
        fn read(&mut self, block: u32, buf: &mut [u8]) -> Result<(), (String, Errno)> {
            buf.copy_from_slice(&self.blocks[block as usize]);
            Ok(())
        }
        fn program(&mut self, block: u32, off: u32, bytes: &[u8]) -> Result<(), (String, Errno)> {
            self.spend()?;
            let b = &mut self.blocks[block as usize][off as usize..off as usize + bytes.len()];
            // NOR: programming only clears bits.
            for (old, new) in b.iter_mut().zip(bytes) {
                *old &= new;
            }
            Ok(())
        }
        fn is_bad(&mut self, block: u32) -> Result<bool, (String, Errno)> {
            Ok(self.bad.contains(&block))
        }
        fn is_erased(&mut self, block: u32) -> Result<bool, (String, Errno)> {
            Ok(self.blocks[block as usize].iter().all(|&b| b == 0xff))
        }
        fn erase(&mut self, block: u32) -> Result<(), (String, Errno)> {
            self.spend()?;
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
                bad_blocks: 1,
                ..EraseReport::default()
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

    const LEN: usize = 16 * 1024;

    fn node(nodetype: u16, payload: usize, fill: u8) -> Vec<u8> {
        let totlen = (crate::probe::jffs2::HEADER_LEN + payload) as u32;
        let mut n =
            crate::probe::jffs2::tests::header(cfg!(target_endian = "little"), nodetype, totlen)
                .to_vec();
        n.resize(totlen as usize, fill);
        // Nodes start 4-byte aligned.
        n.resize(totlen.next_multiple_of(4) as usize, 0xff);
        n
    }

    /// What JFFS2's scan would take as live in each block: (block, offset, node type). It
    /// walks as fs/jffs2/scan.c does: an empty first 1 KiB is an empty block; 0xFF words are
    /// free; a header whose CRC holds and whose node fits is skipped by its length, obsolete
    /// or not; anything else is dirt, skipped 4 bytes at a time.
    fn kernel_view(blocks: &[Vec<u8>]) -> Vec<(usize, usize, u16)> {
        use crate::probe::jffs2::{node_header, MAGIC, NODE_ACCURATE};
        let mut live = Vec::new();
        for (i, b) in blocks.iter().enumerate() {
            if b[..1024].iter().all(|&x| x == 0xff) {
                continue;
            }
            let mut ofs = 0;
            while ofs + 12 <= b.len() {
                let rest = &b[ofs..];
                match node_header(rest, rest.len() as u64) {
                    Some(t) if rest[..2] == MAGIC.to_ne_bytes() => {
                        if t & NODE_ACCURATE != 0 {
                            live.push((i, ofs, t));
                        }
                        let totlen = u32::from_ne_bytes(rest[4..8].try_into().unwrap()) as usize;
                        ofs += totlen.next_multiple_of(4);
                    }
                    _ => ofs += 4,
                }
            }
        }
        live
    }

    /// A used JFFS2 of eight blocks: clean markers, inodes and dirents, some obsolete already;
    /// block 5 holds a clean marker alone, block 6 is all 0xFF, block 3 is bad.
    fn used_jffs2(budget: usize) -> Fake {
        let mut blocks = Vec::new();
        for i in 0..8u8 {
            let mut b = Vec::new();
            if i != 6 {
                b.extend(node(0x2003, 0, 0));
            }
            if i != 5 && i != 6 {
                for k in 0..20u8 {
                    b.extend(node(0xe002, 68 + usize::from(k) * 13, i ^ k));
                    b.extend(node(0xe001, 40, 0x5a));
                }
                // One retired by JFFS2 before: ACCURATE already clear.
                let mut old = node(0xe002, 100, 0x11);
                old[3] &= !0x20;
                b.extend(old);
            }
            b.resize(LEN, 0xff);
            blocks.push(b);
        }
        // Data that looks like a header inside a node is cleared too (superset of the walk).
        let inner = node(0xe001, 8, 0x33);
        blocks[2][100..100 + inner.len()].copy_from_slice(&inner);
        Fake {
            blocks,
            bad: vec![3],
            budget,
            erased: Vec::new(),
        }
    }

    fn mark(f: &mut Fake) {
        f.blocks[0][..crate::probe::jffs2::WINDOW].fill(0);
    }

    fn marked(f: &Fake) -> bool {
        f.blocks[0][..crate::probe::jffs2::WINDOW]
            .iter()
            .all(|&b| b == 0)
    }

    /// Live nodes JFFS2 would still see (bad block 3 aside), and whether it would mount: a
    /// clean marker alone counts as used.
    fn after_reset(f: &Fake) -> (Vec<(usize, usize, u16)>, bool) {
        let good: Vec<Vec<u8>> = f
            .blocks
            .iter()
            .enumerate()
            .map(|(i, b)| if i == 3 { vec![0xff; LEN] } else { b.clone() })
            .collect();
        let live = kernel_view(&good);
        let old: Vec<_> = live
            .iter()
            .copied()
            .filter(|&(_, ofs, t)| !(t == 0x2003 && ofs == 0))
            .collect();
        let used = live.len() > old.len();
        (old, used)
    }

    #[test]
    fn every_old_node_is_obsoleted_and_jffs2_keeps_a_used_block() {
        let mut f = used_jffs2(usize::MAX);
        assert!(kernel_view(&f.blocks).len() > 200);
        mark(&mut f);
        let r = obsolete_blocks(&mut f).unwrap();
        let (old, mountable) = after_reset(&f);
        assert!(old.is_empty(), "{old:?}");
        assert!(mountable);
        assert!(f.blocks[0].iter().all(|&b| b == 0xff), "block 0 is erased");
        // Only block 0 was erased: the others wait for JFFS2. Block 5 kept its clean marker,
        // block 6 (all 0xFF) was left as it was.
        assert_eq!(f.erased, [0]);
        assert_eq!(r.erased, 1);
        assert_eq!(r.bad_blocks, 1);
        assert_eq!(r.already_erased, 2);
        assert_eq!(r.pending, 4);
        assert!(is_clean_marker(&f.blocks[5]) && holds_nothing(&f.blocks[5]));
        assert!(f.blocks[6].iter().all(|&b| b == 0xff));
        // 5 used blocks of 20 inodes, 20 dirents and a clean marker, block 0 with its first
        // nodes under the mark; and the header inside a node.
        assert!(r.obsoleted > 150, "{r:?}");
        // Done again (preinit after a cut), nothing is left to clear.
        mark(&mut f);
        f.erased.clear();
        let again = obsolete_blocks(&mut f).unwrap();
        assert_eq!(again.obsoleted, 0);
    }

    #[test]
    fn with_no_empty_block_one_is_erased_for_the_clean_marker() {
        let mut f = used_jffs2(usize::MAX);
        let full = f.blocks[1].clone();
        f.blocks[5] = full.clone();
        f.blocks[6] = full;
        mark(&mut f);
        let r = obsolete_blocks(&mut f).unwrap();
        assert_eq!(f.erased, [1, 0]);
        assert_eq!(r.erased, 2);
        let (old, mountable) = after_reset(&f);
        assert!(old.is_empty() && mountable, "{old:?}");
    }

    #[test]
    fn a_cut_anywhere_in_the_pass_leaves_the_mark_or_nothing_old() {
        let mut f = used_jffs2(usize::MAX);
        mark(&mut f);
        let total = {
            let mut probe = Fake {
                blocks: f.blocks.clone(),
                bad: vec![3],
                budget: usize::MAX,
                erased: vec![],
            };
            obsolete_blocks(&mut probe).unwrap();
            usize::MAX - probe.budget
        };
        for cut in 0..=total {
            let mut g = Fake {
                blocks: f.blocks.clone(),
                bad: vec![3],
                budget: cut,
                erased: vec![],
            };
            let done = obsolete_blocks(&mut g).is_ok();
            assert_eq!(done, cut == total, "cut after {cut} writes");
            if marked(&g) {
                // preinit sees the mark and runs the pass again, to the end.
                g.budget = usize::MAX;
                obsolete_blocks(&mut g).unwrap();
            }
            assert!(!marked(&g));
            let (old, mountable) = after_reset(&g);
            assert!(
                old.is_empty(),
                "cut after {cut}: old nodes live without the mark: {old:?}"
            );
            assert!(mountable, "cut after {cut}: JFFS2 would refuse to mount");
        }
    }

    #[test]
    fn live_headers_are_native_crc_checked_and_fit() {
        let mut b = node(0xe001, 40, 0);
        b.extend(node(0x2003, 0, 0));
        let mut obsolete = node(0xe002, 20, 0);
        obsolete[3] &= !0x20;
        b.extend(obsolete);
        let other_order =
            crate::probe::jffs2::tests::header(cfg!(target_endian = "big"), 0xe001, 12);
        b.extend(other_order);
        let mut bad_crc = node(0xe001, 8, 0);
        bad_crc[8] ^= 1;
        b.extend(bad_crc);
        // A header whose node would run past the end of the block.
        let long = crate::probe::jffs2::tests::header(cfg!(target_endian = "little"), 0xe001, 4096);
        b.extend(long);
        let hits = live_headers(&b, 0);
        let offs: Vec<usize> = hits.iter().map(|h| h.0).collect();
        assert_eq!(offs, [0, 52]);
        assert_eq!(hits[0].1, 0xc001u16.to_ne_bytes());
        assert_eq!(hits[1].1, 0x0003u16.to_ne_bytes());
        assert_eq!(live_headers(&b, 4), [hits[1]]);
        let m = clean_marker();
        assert!(is_clean_marker(&m));
    }

    #[test]
    fn struct_sizes_match_the_kernel_abi() {
        // The ioctl numbers encode these sizes; a mismatch would make every call fail.
        assert_eq!(std::mem::size_of::<MtdInfoUser>(), 32);
        assert_eq!(std::mem::size_of::<EraseInfoUser>(), 8);
    }
}
