//! The small MTD layer ovl needs, on nix's ioctl macros (include/uapi/mtd/mtd-abi.h):
//! MEMGETINFO to learn the size and erase block, MEMGETBADBLOCK to skip bad NAND blocks,
//! MEMERASE to erase. Partition names come from /proc/mtd (see `probe::mtd`).

use nix::errno::Errno;
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

/// Erases every good block of the partition. Returns (blocks erased, bad blocks skipped).
pub fn erase_all(dev: &Path) -> Result<(u32, u32), (String, Errno)> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(|e| {
            (
                "open".to_string(),
                Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            )
        })?;
    let fd = f.as_raw_fd();
    let mut info = MtdInfoUser::default();
    // SAFETY: as above.
    unsafe { mem_get_info(fd, &mut info) }.map_err(|e| ("MEMGETINFO".to_string(), e))?;
    if info.erasesize == 0 {
        return Err(("MEMGETINFO: erase size 0".to_string(), Errno::EINVAL));
    }
    let (mut erased, mut bad) = (0, 0);
    let mut off: u32 = 0;
    while off < info.size {
        if has_bad_blocks(&info) {
            let pos = off as i64;
            // SAFETY: MEMGETBADBLOCK reads one loff_t.
            match unsafe { mem_get_bad_block(fd, &pos) } {
                Ok(0) => {}
                Ok(_) => {
                    bad += 1;
                    off += info.erasesize;
                    continue;
                }
                Err(Errno::EOPNOTSUPP) => {}
                Err(e) => return Err((format!("MEMGETBADBLOCK at {off:#x}"), e)),
            }
        }
        let req = EraseInfoUser {
            start: off,
            length: info.erasesize,
        };
        // SAFETY: MEMERASE reads one struct erase_info_user.
        unsafe { mem_erase(fd, &req) }.map_err(|e| (format!("MEMERASE at {off:#x}"), e))?;
        erased += 1;
        off += info.erasesize;
    }
    Ok((erased, bad))
}

#[cfg(test)]
mod tests {
    #[test]
    fn struct_sizes_match_the_kernel_abi() {
        // The ioctl numbers encode these sizes; a mismatch would make every call fail.
        assert_eq!(std::mem::size_of::<super::MtdInfoUser>(), 32);
        assert_eq!(std::mem::size_of::<super::EraseInfoUser>(), 8);
    }
}
