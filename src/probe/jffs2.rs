//! Whether an MTD partition really holds JFFS2, decided before anything mounts it.
//!
//! Mounting is not a harmless look: the kernel's JFFS2 scan (fs/jffs2/scan.c) counts whatever
//! it cannot parse as dirty space and erases it, and queues every block whose first 1 KiB reads
//! 0xFF for erasing. One JFFS2 node among foreign data is enough for it to go ahead (it refuses
//! only when it finds no valid node at all). So a stray 0x1985 must not make a partition JFFS2.
//!
//! The facts used here, from include/uapi/linux/jffs2.h and fs/jffs2/scan.c:
//! - every node starts with `magic u16 = 0x1985, nodetype u16, totlen u32, hdr_crc u32`, all in
//!   the flash's byte order (little- or big-endian);
//! - `hdr_crc = crc32(0, header, 8)` with the kernel's `crc32_le`: the reflected 0xEDB88320 CRC
//!   with seed 0 and no final inversion, computed with the `JFFS2_NODE_ACCURATE` (0x2000) bit
//!   of nodetype set, since NOR marks a node obsolete by clearing that bit in place;
//! - nodes never cross an erase block, and JFFS2 fills a block from its start: a used block
//!   begins with a node, often the clean marker (nodetype 0x2003, 12 bytes) written after erase;
//! - the kernel calls a block empty when its first `EMPTY_SCAN_SIZE` (1 KiB) bytes are 0xFF.

use crate::probe::magic::Content;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub const MAGIC: u16 = 0x1985;
pub const NODE_ACCURATE: u16 = 0x2000;
pub const NODETYPE_CLEANMARKER: u16 = 0x2003;
/// magic, nodetype, totlen, hdr_crc.
pub const HEADER_LEN: usize = 12;
/// How much of each block is read: the kernel's empty-scan size. A block that is 0xFF here is
/// one the kernel itself takes as erased, so reading further would not change what a mount does.
pub const WINDOW: usize = 1024;
/// Blocks that are neither erased nor JFFS2 that a real JFFS2 may hold: a power cut during the
/// kernel's erase leaves one block half-erased, one during a write may leave a block whose
/// first node is torn (when it had no clean marker). Two covers both at once.
pub const MAX_FOREIGN: u32 = 2;

/// `crc32(0, buf, len)` as the kernel computes it for JFFS2: no inversion before or after.
/// crc32fast inverts on entry and exit, so it is seeded with !0 and its result inverted.
pub fn kernel_crc32(buf: &[u8]) -> u32 {
    let mut h = crate::crc32::Hasher::new_with_initial(!0);
    h.update(buf);
    !h.finalize()
}

/// A node header with a valid hdr_crc at the start of `buf`, in either byte order, whose
/// length fits in an erase block of `block_len` bytes. Returns its nodetype.
pub fn node_header(buf: &[u8], block_len: u64) -> Option<u16> {
    let h: [u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
    let le = h.get(..2) == Some(MAGIC.to_le_bytes().as_slice());
    let be = h.get(..2) == Some(MAGIC.to_be_bytes().as_slice());
    if !le && !be {
        return None;
    }
    let order = |b: [u8; 2]| {
        if le {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        }
    };
    let [m0, m1, t0, t1, l0, l1, l2, l3, c0, c1, c2, c3] = h;
    let nodetype = order([t0, t1]);
    let (totlen, crc) = if le {
        (
            u32::from_le_bytes([l0, l1, l2, l3]),
            u32::from_le_bytes([c0, c1, c2, c3]),
        )
    } else {
        (
            u32::from_be_bytes([l0, l1, l2, l3]),
            u32::from_be_bytes([c0, c1, c2, c3]),
        )
    };
    let accurate = nodetype | NODE_ACCURATE;
    let [a0, a1] = if le {
        accurate.to_le_bytes()
    } else {
        accurate.to_be_bytes()
    };
    let crc_in = [m0, m1, a0, a1, l0, l1, l2, l3];
    let fits = (HEADER_LEN as u64..=block_len).contains(&u64::from(totlen));
    (kernel_crc32(&crc_in) == crc && fits).then_some(nodetype)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    /// The whole probed window is 0xFF.
    Erased,
    /// Starts with a JFFS2 node (clean marker included) whose header CRC is valid.
    Jffs2,
    /// Anything else: foreign data, or a block damaged by a cut.
    Other,
}

/// Classifies one erase block from the first bytes of it (ideally [`WINDOW`]). Only nodes in
/// this CPU's byte order count: the kernel's JFFS2 reads its own order only and takes nodes
/// of the other as dirty space, which it erases, so a JFFS2 of the other order is not ours
/// to mount.
pub fn classify(window: &[u8], block_len: u64) -> Block {
    let native = window.get(..2) == Some(MAGIC.to_ne_bytes().as_slice());
    if native && node_header(window, block_len).is_some() {
        Block::Jffs2
    } else if !window.is_empty() && window.iter().all(|&b| b == 0xff) {
        Block::Erased
    } else {
        Block::Other
    }
}

/// How many blocks of each kind a partition holds, and the first foreign one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    pub erased: u32,
    pub jffs2: u32,
    pub other: u32,
    pub first_other: Option<u32>,
}

impl Census {
    pub fn add(&mut self, index: u32, b: Block) {
        match b {
            Block::Erased => self.erased += 1,
            Block::Jffs2 => self.jffs2 += 1,
            Block::Other => {
                self.other += 1;
                self.first_other.get_or_insert(index);
            }
        }
    }

    /// The rule: erased when every block is; JFFS2 when at least one block starts with a valid
    /// node and the foreign blocks are few enough to be the damage of a power cut (at most
    /// [`MAX_FOREIGN`], and fewer than the JFFS2 blocks); anything else is unknown, and left
    /// untouched. An erased partition with a damaged block or two is unknown too: without a
    /// single valid node the kernel refuses to mount it anyway.
    pub fn verdict(&self) -> Content {
        if self.jffs2 == 0 && self.other == 0 {
            Content::Erased
        } else if self.jffs2 > 0 && self.other <= MAX_FOREIGN && self.other < self.jffs2 {
            Content::Jffs2
        } else {
            Content::Unknown
        }
    }
}

/// ovl's reset mark on MTD: the first [`WINDOW`] bytes of block 0 programmed to zero (the one
/// value NOR can be given over any content without an erase), the other blocks JFFS2 or
/// erased with no more damage than a cut leaves. JFFS2 never begins a block with zeroes: a
/// block starts with a node or the clean marker, or is erased. A block of zeroes is not a
/// mark: past the zeroed 1 KiB a marked block still holds its old nodes, or 0xFF.
pub fn is_reset_mark(head: &[u8], c: &Census) -> bool {
    let zeroed = head.len() > WINDOW
        && head.iter().take(WINDOW).all(|&b| b == 0)
        && head.iter().skip(WINDOW).any(|&b| b != 0);
    let others = c.other.saturating_sub(1);
    zeroed && c.first_other == Some(0) && others <= MAX_FOREIGN && c.jffs2 + c.erased > others
}

/// Reads the first [`WINDOW`] bytes of every erase block of `dev` (`size` bytes, blocks of
/// `erasesize`) and counts them. 48 MiB of 256 KiB blocks is 191 reads of 1 KiB: block 0 is
/// judged from `head`, the start of the partition already read (up to 4 KiB: what is foreign
/// there is foreign even if its first 1 KiB is blank).
pub fn census(dev: &Path, size: u64, erasesize: u32, head: &[u8]) -> Result<Census, String> {
    let name = dev.display();
    let step = u64::from(erasesize);
    if step == 0 || size == 0 {
        return Err(format!(
            "{name}: erase size {erasesize} or size {size} is not usable"
        ));
    }
    let f = std::fs::File::open(dev).map_err(|e| format!("open {name}: {e}"))?;
    let blocks = u32::try_from(size / step)
        .map_err(|_| format!("{name}: {size} bytes is too many blocks"))?;
    let mut c = Census::default();
    let mut buf = vec![0u8; WINDOW.min(erasesize as usize)];
    if blocks == 0 {
        return Err(format!(
            "{name}: {size} bytes is less than one erase block of {erasesize}"
        ));
    }
    let head = head
        .get(..head.len().min(erasesize as usize))
        .unwrap_or(head);
    c.add(0, classify(head, step));
    for i in 1..blocks {
        let off = u64::from(i) * step;
        // One pread per block, no seek: each system call counts under emulation.
        f.read_exact_at(&mut buf, off)
            .map_err(|e| format!("read {name} at {off:#x}: {e}"))?;
        c.add(i, classify(&buf, step));
    }
    Ok(c)
}

/// How many blocks begin with an obsolete node: after ovl's reset, the blocks of old nodes
/// JFFS2 has not erased yet (JFFS2 itself begins every block it erases with a live clean
/// marker). One 12-byte read per block.
pub fn obsolete_first(dev: &Path, size: u64, erasesize: u32) -> Result<u32, String> {
    let name = dev.display();
    let step = u64::from(erasesize);
    if step == 0 {
        return Err(format!("{name}: erase size 0"));
    }
    let f = std::fs::File::open(dev).map_err(|e| format!("open {name}: {e}"))?;
    let mut n = 0;
    let mut h = [0u8; HEADER_LEN];
    for i in 0..size / step {
        let off = i * step;
        f.read_exact_at(&mut h, off)
            .map_err(|e| format!("read {name} at {off:#x}: {e}"))?;
        let native = h.get(..2) == Some(MAGIC.to_ne_bytes().as_slice());
        if native && node_header(&h, step).is_some_and(|t| t & NODE_ACCURATE == 0) {
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
pub mod tests {
    use super::*;

    #[test]
    fn the_reset_mark_is_a_zeroed_start_before_jffs2_or_erased_blocks() {
        let mut head = vec![0xffu8; 4096];
        head[..WINDOW].fill(0);
        let census = |jffs2, erased, other| Census {
            jffs2,
            erased,
            other,
            first_other: Some(0),
        };
        assert!(is_reset_mark(&head, &census(10, 5, 1)));
        // The last step of the erase: block 0 is all that is left.
        assert!(is_reset_mark(&head, &census(0, 15, 1)));
        // A cut during an erase leaves a damaged block or two more.
        assert!(is_reset_mark(&head, &census(3, 10, 3)));
        assert!(!is_reset_mark(&head, &census(3, 10, 4)));
        assert!(!is_reset_mark(&head, &census(0, 0, 16)));
        let zeroes = vec![0u8; 4096];
        assert!(!is_reset_mark(&zeroes, &census(0, 15, 1)));
        let mut late = head.clone();
        late[3] = 1;
        assert!(!is_reset_mark(&late, &census(10, 5, 1)));
    }

    const BLOCK: u64 = 0x40000;

    /// A node header as the kernel writes it, in the given byte order.
    pub fn header(le: bool, nodetype: u16, totlen: u32) -> [u8; HEADER_LEN] {
        let w16 = |v: u16| if le { v.to_le_bytes() } else { v.to_be_bytes() };
        let w32 = |v: u32| if le { v.to_le_bytes() } else { v.to_be_bytes() };
        let mut h = [0u8; HEADER_LEN];
        h[..2].copy_from_slice(&w16(MAGIC));
        h[2..4].copy_from_slice(&w16(nodetype | NODE_ACCURATE));
        h[4..8].copy_from_slice(&w32(totlen));
        let crc = kernel_crc32(&h[..8]);
        h[2..4].copy_from_slice(&w16(nodetype));
        h[8..].copy_from_slice(&w32(crc));
        h
    }

    #[test]
    fn crc_matches_what_mkfs_jffs2_writes() {
        // The first two nodes of `mkfs.jffs2 -l` and `-b` images (256 KiB blocks), as written:
        // a clean marker and a directory entry.
        let le: [&[u8]; 2] = [
            &[
                0x85, 0x19, 0x03, 0x20, 0x0c, 0, 0, 0, 0xb1, 0xb0, 0x1e, 0xe4,
            ],
            &[
                0x85, 0x19, 0x01, 0xe0, 0x2b, 0, 0, 0, 0xe6, 0x6e, 0x26, 0x7d,
            ],
        ];
        let be: [&[u8]; 2] = [
            &[
                0x19, 0x85, 0x20, 0x03, 0, 0, 0, 0x0c, 0xf0, 0x60, 0xdc, 0x98,
            ],
            &[
                0x19, 0x85, 0xe0, 0x01, 0, 0, 0, 0x2b, 0x3e, 0x42, 0x24, 0x27,
            ],
        ];
        assert_eq!(node_header(le[0], BLOCK), Some(NODETYPE_CLEANMARKER));
        assert_eq!(node_header(le[1], BLOCK), Some(0xe001));
        assert_eq!(node_header(be[0], BLOCK), Some(NODETYPE_CLEANMARKER));
        assert_eq!(node_header(be[1], BLOCK), Some(0xe001));
        assert_eq!(header(true, 0x2003, 12), le[0]);
        assert_eq!(header(false, 0xe001, 0x2b), be[1]);
    }

    #[test]
    fn obsolete_nodes_still_count() {
        // NOR clears the ACCURATE bit of a node it obsoletes; the CRC was over it set.
        let mut h = header(true, 0xe002, 0x44);
        h[3] &= !0x20;
        assert_eq!(node_header(&h, BLOCK), Some(0xc002));
    }

    #[test]
    fn a_bare_magic_or_a_bad_crc_is_not_a_node() {
        let mut h = header(true, 0x2003, 12);
        assert!(node_header(&h, BLOCK).is_some());
        h[8] ^= 1;
        assert_eq!(node_header(&h, BLOCK), None);
        let mut bare = vec![0x5a; 64];
        bare[..2].copy_from_slice(&[0x85, 0x19]);
        assert_eq!(node_header(&bare, BLOCK), None);
        // A header whose node would not fit in the block, or is shorter than a header.
        assert_eq!(node_header(&header(true, 0xe002, 0x40001), BLOCK), None);
        assert_eq!(node_header(&header(false, 0x2003, 4), BLOCK), None);
        assert_eq!(node_header(&h[..11], BLOCK), None);
    }

    #[test]
    fn blocks_are_classified_by_their_start() {
        let mut w = vec![0xffu8; WINDOW];
        assert_eq!(classify(&w, BLOCK), Block::Erased);
        w[1000] = 0;
        assert_eq!(classify(&w, BLOCK), Block::Other);
        w[..12].copy_from_slice(&header(true, 0x2003, 12));
        assert_eq!(classify(&w, BLOCK), Block::Jffs2);
        assert_eq!(classify(&[], BLOCK), Block::Other);
        // A valid node of the other byte order: the kernel would erase it, so it is foreign.
        w[..12].copy_from_slice(&header(cfg!(target_endian = "big"), 0x2003, 12));
        assert_eq!(classify(&w, BLOCK), Block::Other);
    }

    fn census_of(erased: u32, jffs2: u32, other: u32) -> Content {
        let mut c = Census::default();
        let mut i = 0;
        for (n, b) in [
            (erased, Block::Erased),
            (jffs2, Block::Jffs2),
            (other, Block::Other),
        ] {
            for _ in 0..n {
                c.add(i, b);
                i += 1;
            }
        }
        c.verdict()
    }

    #[test]
    fn the_rule() {
        assert_eq!(census_of(192, 0, 0), Content::Erased);
        assert_eq!(census_of(0, 192, 0), Content::Jffs2);
        assert_eq!(census_of(191, 1, 0), Content::Jffs2);
        // A cut during an erase or a write: a damaged block or two among JFFS2 ones.
        assert_eq!(census_of(100, 90, 2), Content::Jffs2);
        assert_eq!(census_of(185, 5, 2), Content::Jffs2);
        // Foreign data mixed in: more than two blocks, or as many as the JFFS2 ones.
        assert_eq!(census_of(100, 89, 3), Content::Unknown);
        assert_eq!(census_of(0, 188, 4), Content::Unknown);
        assert_eq!(census_of(190, 1, 1), Content::Unknown);
        assert_eq!(census_of(189, 2, 1), Content::Jffs2);
        // No valid node at all.
        assert_eq!(census_of(191, 0, 1), Content::Unknown);
        assert_eq!(census_of(0, 0, 192), Content::Unknown);
    }

    #[test]
    fn census_reads_every_block_and_names_the_device_on_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mtd2");
        let mut img = vec![0xffu8; 4 * 0x1000];
        img[0x1000..0x100c].copy_from_slice(&header(cfg!(target_endian = "little"), 0x2003, 12));
        img[0x3000] = 0x42;
        std::fs::write(&p, &img).unwrap();
        let c = census(&p, img.len() as u64, 0x1000, &img[..0x1000]).unwrap();
        assert_eq!(
            c,
            Census {
                erased: 2,
                jffs2: 1,
                other: 1,
                first_other: Some(3)
            }
        );
        // Block 0 is judged from the head given, here one with data past the first 1 KiB.
        let mut head = vec![0xffu8; 0x1000];
        head[0x800] = 0;
        let c = census(&p, img.len() as u64, 0x1000, &head).unwrap();
        assert_eq!((c.erased, c.other, c.first_other), (1, 2, Some(0)));
        // /proc/mtd says more than the device gives: an error, not "erased".
        let e = census(&p, 8 * 0x1000, 0x1000, &img).unwrap_err();
        assert!(e.contains("mtd2") && e.contains("0x4000"), "{e}");
        let e = census(&dir.path().join("nope"), 0x2000, 0x1000, &img).unwrap_err();
        assert!(e.starts_with("open ") && e.contains("nope"), "{e}");
        assert!(census(&p, 0x1000, 0, &img).is_err());
        assert!(census(&p, 0x800, 0x1000, &img).is_err());
    }
}
