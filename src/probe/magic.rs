//! What a partition holds, told by the magic numbers in its first bytes.
//!
//! The facts, as the kernel and OpenWrt's fstools read them:
//! - a big-endian `0xDEADC0DE` word at 0: "not formatted, erase me" (written by flashing tools
//!   and by a factory reset of an unmounted JFFS2);
//! - `hsqs` at 0: squashfs, whose `bytes_used` is a little-endian u64 at offset 40;
//! - a JFFS2 node header with a valid header CRC at 0, in either byte order (see `jffs2`): the
//!   bare magic 0x1985 is two bytes any data may hold. This only names the content; whether an
//!   MTD partition is JFFS2 that may be mounted is `jffs2::census`'s call (the CPU's byte order
//!   only, every erase block looked at);
//! - UBIFS node magic 0x06101831 (little-endian) at 0;
//! - gzip `1f 8b` at 0: a config backup written raw onto the partition by an upgrade;
//! - ext2/3/4 0xEF53 (LE16) at 0x438, its 16-byte volume label at 0x478;
//! - f2fs 0xF2F52010 (LE32) at 0x400;
//! - LUKS `LUKS\xba\xbe` and XFS `XFSB` at 0; swap `SWAPSPACE2` (or `SWAP-SPACE`) at 4086, the
//!   end of its first 4 KiB page; ISO9660 `CD001` at 0x8001; btrfs `_BHRfS_M` at 0x10040: the
//!   last two lie beyond 4 KiB, which is why blankness is judged over [`BLANK_WINDOW`];
//! - all 0xFF: erased flash (or a partition left blank by ovl's image builder); all 0: zeroed.

/// How many bytes [`identify`] wants: enough for the ext4 label and the swap signature.
pub const PROBE_BYTES: usize = 4096;
/// A block partition counts as blank (erased or zeroes, so ovl may format it) only when this
/// much of its start (or all of it, when smaller) is that one byte: 1 MiB is past every
/// common superblock (btrfs at 64 KiB, ISO9660 at 32 KiB, the LUKS2 secondary header at
/// 16 KiB and up, GPT's and MBR's tables) and is what partitioning tools leave free.
pub const BLANK_WINDOW: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Marker,
    /// ovl's own reset request: [`BLOCK_RESET_MARK`] at offset 0 of a block partition, or on
    /// MTD a JFFS2 whose first [`super::jffs2::WINDOW`] bytes ovl has programmed to zero.
    ResetMark,
    Squashfs {
        bytes_used: u64,
    },
    Jffs2,
    Ubifs,
    Gzip,
    Ext4 {
        label: String,
    },
    F2fs,
    Btrfs,
    Iso9660,
    Swap,
    Luks,
    Xfs,
    Erased,
    Zeroes,
    Unknown,
}

impl Content {
    /// The word used in logs and in the state file.
    pub fn name(&self) -> &'static str {
        match self {
            Content::Marker => "marker",
            Content::ResetMark => "reset-mark",
            Content::Squashfs { .. } => "squashfs",
            Content::Jffs2 => "jffs2",
            Content::Ubifs => "ubifs",
            Content::Gzip => "gzip",
            Content::Ext4 { .. } => "ext4",
            Content::F2fs => "f2fs",
            Content::Btrfs => "btrfs",
            Content::Iso9660 => "iso9660",
            Content::Swap => "swap",
            Content::Luks => "luks",
            Content::Xfs => "xfs",
            Content::Erased => "erased",
            Content::Zeroes => "zeroes",
            Content::Unknown => "unknown",
        }
    }
}

pub const DEADCODE: [u8; 4] = [0xde, 0xad, 0xc0, 0xde];
/// What `ovlctl reset` writes at offset 0 of an unmounted ext4 partition: the flash marker
/// followed by ovl's name, so that no other tool's marker is taken for a reset request. The
/// superblock at 1 KiB stays until the next boot formats the partition.
pub const BLOCK_RESET_MARK: [u8; 16] = *b"\xde\xad\xc0\xdeovl-reset\0\0\0";
const SQUASHFS: [u8; 4] = *b"hsqs";
const UBIFS: [u8; 4] = 0x0610_1831u32.to_le_bytes();
const GZIP: [u8; 2] = [0x1f, 0x8b];
const EXT4_MAGIC_AT: usize = 0x438;
const EXT4_LABEL_AT: usize = 0x478;
const F2FS_MAGIC_AT: usize = 0x400;
const F2FS: [u8; 4] = 0xF2F5_2010u32.to_le_bytes();
const EXT4_UUID_AT: usize = 0x468;
const LUKS: [u8; 6] = *b"LUKS\xba\xbe";
const XFS: [u8; 4] = *b"XFSB";
const SWAP_AT: usize = 4086;
const ISO9660_AT: usize = 0x8001;
const BTRFS_AT: usize = 0x10040;

fn at<const N: usize>(buf: &[u8], off: usize) -> Option<[u8; N]> {
    buf.get(off..off + N)?.try_into().ok()
}

/// Tells what `buf` (the first bytes of a partition, ideally [`PROBE_BYTES`]) holds.
pub fn identify(buf: &[u8]) -> Content {
    if buf.is_empty() {
        return Content::Unknown;
    }
    if at::<16>(buf, 0) == Some(BLOCK_RESET_MARK) {
        return Content::ResetMark;
    }
    if at::<4>(buf, 0) == Some(DEADCODE) {
        return Content::Marker;
    }
    if at::<4>(buf, 0) == Some(SQUASHFS) {
        if let Some(b) = at::<8>(buf, 40) {
            return Content::Squashfs {
                bytes_used: u64::from_le_bytes(b),
            };
        }
    }
    if super::jffs2::node_header(buf, u64::from(u32::MAX)).is_some() {
        return Content::Jffs2;
    }
    if at::<4>(buf, 0) == Some(UBIFS) {
        return Content::Ubifs;
    }
    if at::<2>(buf, 0) == Some(GZIP) {
        return Content::Gzip;
    }
    if at::<2>(buf, EXT4_MAGIC_AT) == Some(0xEF53u16.to_le_bytes()) {
        let label = at::<16>(buf, EXT4_LABEL_AT).unwrap_or([0; 16]);
        let end = label.iter().position(|&b| b == 0).unwrap_or(16);
        return Content::Ext4 {
            label: String::from_utf8_lossy(label.get(..end).unwrap_or_default()).into_owned(),
        };
    }
    if at::<4>(buf, F2FS_MAGIC_AT) == Some(F2FS) {
        return Content::F2fs;
    }
    if at::<6>(buf, 0) == Some(LUKS) {
        return Content::Luks;
    }
    if at::<4>(buf, 0) == Some(XFS) {
        return Content::Xfs;
    }
    if matches!(at::<10>(buf, SWAP_AT), Some(s) if &s == b"SWAPSPACE2" || &s == b"SWAP-SPACE") {
        return Content::Swap;
    }
    if at::<5>(buf, ISO9660_AT) == Some(*b"CD001") {
        return Content::Iso9660;
    }
    if at::<8>(buf, BTRFS_AT) == Some(*b"_BHRfS_M") {
        return Content::Btrfs;
    }
    if buf.iter().all(|&b| b == 0xff) {
        return Content::Erased;
    }
    if buf.iter().all(|&b| b == 0) {
        return Content::Zeroes;
    }
    Content::Unknown
}

/// The ext4 file system UUID (`s_uuid`), for `UUID=` selectors.
pub fn ext4_uuid(buf: &[u8]) -> Option<[u8; 16]> {
    matches!(identify(buf), Content::Ext4 { .. })
        .then(|| at::<16>(buf, EXT4_UUID_AT))
        .flatten()
}

/// What a block partition holds, judged over its first [`BLANK_WINDOW`] bytes (`window`, or
/// less when the partition is smaller): blank only when all of it is the one byte, else what
/// a superblock in it says, else unknown.
pub fn identify_block(window: &[u8]) -> Content {
    let head = window.get(..PROBE_BYTES).unwrap_or(window);
    match identify(head) {
        blank @ (Content::Erased | Content::Zeroes) => {
            let byte = if blank == Content::Erased { 0xff } else { 0 };
            if window.iter().all(|&b| b == byte) {
                blank
            } else {
                match identify(window) {
                    // The head was blank, so only a superblock further in can name it.
                    Content::Erased | Content::Zeroes => Content::Unknown,
                    other => other,
                }
            }
        }
        other => other,
    }
}

/// Where the writable area starts after a squashfs in the same partition (OpenWrt x86): the
/// end of the squashfs rounded up to 64 KiB. None when a hostile `bytes_used` would overflow.
pub fn after_squashfs_offset(bytes_used: u64) -> Option<u64> {
    const ALIGN: u64 = 64 * 1024;
    bytes_used.div_ceil(ALIGN).checked_mul(ALIGN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf_with(off: usize, bytes: &[u8]) -> Vec<u8> {
        let mut b = vec![0x5a; PROBE_BYTES];
        b[off..off + bytes.len()].copy_from_slice(bytes);
        b
    }

    #[test]
    fn every_magic() {
        assert_eq!(identify(&buf_with(0, &DEADCODE)), Content::Marker);
        assert_eq!(
            identify(&buf_with(0, &BLOCK_RESET_MARK)),
            Content::ResetMark
        );
        assert_eq!(
            identify(&buf_with(0, &BLOCK_RESET_MARK[..12])),
            Content::Marker
        );
        let mut sq = buf_with(0, b"hsqs");
        sq[40..48].copy_from_slice(&123_456u64.to_le_bytes());
        assert_eq!(
            identify(&sq),
            Content::Squashfs {
                bytes_used: 123_456
            }
        );
        let le = crate::probe::jffs2::tests::header(true, 0x2003, 12);
        let be = crate::probe::jffs2::tests::header(false, 0xe001, 0x2b);
        assert_eq!(identify(&buf_with(0, &le)), Content::Jffs2);
        assert_eq!(identify(&buf_with(0, &be)), Content::Jffs2);
        // The magic alone, without a valid header CRC, is not JFFS2.
        assert_eq!(
            identify(&buf_with(0, &[0x85, 0x19, 0x03, 0x20])),
            Content::Unknown
        );
        assert_eq!(
            identify(&buf_with(0, &[0x19, 0x85, 0x20, 0x03])),
            Content::Unknown
        );
        assert_eq!(
            identify(&buf_with(0, &[0x31, 0x18, 0x10, 0x06])),
            Content::Ubifs
        );
        assert_eq!(
            identify(&buf_with(0, &[0x1f, 0x8b, 0x08, 0x00])),
            Content::Gzip
        );
        assert_eq!(
            identify(&buf_with(0x400, &[0x10, 0x20, 0xf5, 0xf2])),
            Content::F2fs
        );
        assert_eq!(identify(&vec![0xff; PROBE_BYTES]), Content::Erased);
        assert_eq!(identify(&vec![0; PROBE_BYTES]), Content::Zeroes);
        assert_eq!(identify(&vec![0x5a; PROBE_BYTES]), Content::Unknown);
    }

    #[test]
    fn ext4_with_and_without_label() {
        let mut b = vec![0u8; PROBE_BYTES];
        b[0x438..0x43a].copy_from_slice(&[0x53, 0xef]);
        assert_eq!(
            identify(&b),
            Content::Ext4 {
                label: String::new()
            }
        );
        b[0x478..0x478 + 11].copy_from_slice(b"rootfs_data");
        assert_eq!(
            identify(&b),
            Content::Ext4 {
                label: "rootfs_data".into()
            }
        );
        b[0x478..0x488].copy_from_slice(b"sixteen-chars-lb");
        assert_eq!(
            identify(&b),
            Content::Ext4 {
                label: "sixteen-chars-lb".into()
            }
        );
    }

    #[test]
    fn marker_wins_over_what_follows() {
        // A reset marker written over the first word of an ext4 partition still means "reset".
        let mut b = vec![0u8; PROBE_BYTES];
        b[0x438..0x43a].copy_from_slice(&[0x53, 0xef]);
        b[..4].copy_from_slice(&DEADCODE);
        assert_eq!(identify(&b), Content::Marker);
    }

    #[test]
    fn the_marker_is_the_big_endian_word_at_0_only() {
        let mut b = vec![0xffu8; PROBE_BYTES];
        b[..4].copy_from_slice(&[0xde, 0xc0, 0xad, 0xde]);
        assert_eq!(identify(&b), Content::Unknown);
        let mut b = vec![0xffu8; PROBE_BYTES];
        b[4..8].copy_from_slice(&DEADCODE);
        assert_eq!(identify(&b), Content::Unknown);
        b[..4].copy_from_slice(&DEADCODE);
        assert_eq!(identify(&b), Content::Marker);
    }

    #[test]
    fn blank_means_blank_over_the_whole_window() {
        let mut w = vec![0xffu8; BLANK_WINDOW];
        assert_eq!(identify_block(&w), Content::Erased);
        assert_eq!(
            identify_block(&w[..8192]),
            Content::Erased,
            "a small partition"
        );
        w[BLANK_WINDOW - 1] = 0;
        assert_eq!(
            identify_block(&w),
            Content::Unknown,
            "0xFF for 4 KiB is not blank"
        );
        let mut btrfs = vec![0xffu8; BLANK_WINDOW];
        btrfs[BTRFS_AT..BTRFS_AT + 8].copy_from_slice(b"_BHRfS_M");
        assert_eq!(identify_block(&btrfs), Content::Btrfs);
        let mut iso = vec![0u8; BLANK_WINDOW];
        iso[ISO9660_AT..ISO9660_AT + 5].copy_from_slice(b"CD001");
        assert_eq!(identify_block(&iso), Content::Iso9660);
        assert_eq!(identify_block(&vec![0u8; BLANK_WINDOW]), Content::Zeroes);
        let mut swap = vec![0u8; PROBE_BYTES];
        swap[SWAP_AT..SWAP_AT + 10].copy_from_slice(b"SWAPSPACE2");
        assert_eq!(identify(&swap), Content::Swap);
        assert_eq!(identify(&buf_with(0, b"LUKS\xba\xbe")), Content::Luks);
        assert_eq!(identify(&buf_with(0, b"XFSB")), Content::Xfs);
        // Not blank, not anything known: what the head says.
        assert_eq!(identify_block(&buf_with(0, b"x")), Content::Unknown);
        assert_eq!(identify_block(&[]), Content::Unknown);
    }

    #[test]
    fn ext4_uuid_is_read_from_the_superblock() {
        let mut b = vec![0u8; PROBE_BYTES];
        assert_eq!(ext4_uuid(&b), None);
        b[0x438..0x43a].copy_from_slice(&[0x53, 0xef]);
        b[0x468..0x478].copy_from_slice(&[7; 16]);
        assert_eq!(ext4_uuid(&b), Some([7; 16]));
    }

    #[test]
    fn short_buffers_do_not_panic() {
        assert_eq!(identify(&[]), Content::Unknown);
        assert_eq!(identify(b"hsq"), Content::Unknown);
        assert_eq!(identify(b"hsqs"), Content::Unknown);
        assert_eq!(identify(&[0xff; 3]), Content::Erased);
        assert_eq!(identify(&[0x85]), Content::Unknown);
    }

    #[test]
    fn offset_after_squashfs() {
        assert_eq!(after_squashfs_offset(0), Some(0));
        assert_eq!(after_squashfs_offset(1), Some(65536));
        assert_eq!(after_squashfs_offset(65536), Some(65536));
        assert_eq!(after_squashfs_offset(65537), Some(131072));
        assert_eq!(after_squashfs_offset(u64::MAX), None);
    }
}
