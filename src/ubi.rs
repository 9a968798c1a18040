//! The small UBI layer ovl needs, on nix's ioctl macros (include/uapi/mtd/ubi-user.h): attach
//! an MTD partition (`UBI_IOCATT` on `/dev/ubi_ctrl`), make a volume (`UBI_IOCMKVOL`), update
//! one (`UBI_IOCVOLUP`), and put a ubiblock device on one (`UBI_IOCVOLCRBLK`) so that a
//! squashfs in a volume mounts. Devices and volumes are read from sysfs
//! (`/sys/class/ubi/ubiN/mtd_num`, `/sys/class/ubi/ubiN_M/name`). No mtd-utils on the device.

use nix::errno::Errno;
use std::os::fd::AsRawFd;
use std::path::Path;

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct AttachReq {
    pub ubi_num: i32,
    pub mtd_num: i32,
    pub vid_hdr_offset: i32,
    pub max_beb_per1024: i16,
    pub disable_fm: i8,
    pub need_resv_pool: i8,
    pub padding: [i8; 8],
}

pub const MAX_VOLUME_NAME: usize = 127;

#[repr(C, packed)]
#[derive(Clone, Copy)]
pub struct MkvolReq {
    pub vol_id: i32,
    pub alignment: i32,
    pub bytes: i64,
    pub vol_type: i8,
    pub flags: u8,
    pub name_len: i16,
    pub padding2: [i8; 4],
    pub name: [u8; MAX_VOLUME_NAME + 1],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlkcreateReq {
    pub padding: [i8; 128],
}

nix::ioctl_write_ptr!(ubi_attach, b'o', 64, AttachReq);
nix::ioctl_write_ptr!(ubi_mkvol, b'o', 0, MkvolReq);
nix::ioctl_write_ptr!(ubi_volup, b'O', 0, i64);
nix::ioctl_write_ptr!(ubi_blkcreate, b'O', 7, BlkcreateReq);
// ubi-user.h declares UBI_IOCEBCH with an __s32 for its size, though the kernel reads a
// whole struct ubi_leb_change_req from the pointer: the number is built by hand.
nix::ioctl_write_ptr_bad!(
    ubi_lebchange,
    nix::request_code_write!(b'O', 2, std::mem::size_of::<i32>()),
    LebChangeReq
);

#[repr(C, packed)]
#[derive(Clone, Copy)]
pub struct SetVolPropReq {
    pub property: u8,
    pub padding: [u8; 7],
    pub value: u64,
}

nix::ioctl_write_ptr!(ubi_setvolprop, b'O', 6, SetVolPropReq);
nix::ioctl_write_ptr!(ubi_lebunmap, b'O', 4, i32);
const PROP_DIRECT_WRITE: u8 = 1;

#[repr(C, packed)]
#[derive(Clone, Copy)]
pub struct LebChangeReq {
    pub lnum: i32,
    pub bytes: i32,
    pub dtype: u8,
    pub padding: [u8; 7],
}

const AUTO: i32 = -1;
const DYNAMIC_VOLUME: i8 = 3;

/// A UBI volume as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub ubi: u32,
    pub id: u32,
    pub name: String,
}

impl Volume {
    /// The character device, `ubiN_M`.
    pub fn dev_name(&self) -> String {
        format!("ubi{}_{}", self.ubi, self.id)
    }

    /// The block device `UBI_IOCVOLCRBLK` makes, `ubiblockN_M`.
    pub fn block_name(&self) -> String {
        format!("ubiblock{}_{}", self.ubi, self.id)
    }
}

fn read_num(p: &Path) -> Option<u32> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// Attached UBI devices: (ubi number, the MTD number it sits on).
pub fn devices(sys_dir: &Path) -> Vec<(u32, u32)> {
    let mut v = Vec::new();
    let Ok(it) = std::fs::read_dir(sys_dir.join("class/ubi")) else {
        return v;
    };
    for e in it.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(n) = name.strip_prefix("ubi").and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(mtd) = read_num(&e.path().join("mtd_num")) {
            v.push((n, mtd));
        }
    }
    v.sort_unstable();
    v
}

/// Every volume of every attached device, in device and volume order.
pub fn volumes(sys_dir: &Path) -> Vec<Volume> {
    let mut v = Vec::new();
    let Ok(it) = std::fs::read_dir(sys_dir.join("class/ubi")) else {
        return v;
    };
    for e in it.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((dev, id)) = name.strip_prefix("ubi").and_then(|r| r.split_once('_')) else {
            continue;
        };
        let (Ok(ubi), Ok(id)) = (dev.parse(), id.parse()) else {
            continue;
        };
        if let Ok(n) = std::fs::read_to_string(e.path().join("name")) {
            v.push(Volume {
                ubi,
                id,
                name: n.trim_end_matches('\n').to_string(),
            });
        }
    }
    v.sort_by_key(|x| (x.ubi, x.id));
    v
}

/// The volume whose character device is `node` (`ubiN_M`, or its `/dev/` path).
pub fn volume_of(sys_dir: &Path, node: &str) -> Option<Volume> {
    let name = node.strip_prefix("/dev/").unwrap_or(node);
    volumes(sys_dir).into_iter().find(|v| v.dev_name() == name)
}

/// A number sysfs publishes for a device (`avail_eraseblocks`, `eraseblock_size`,
/// `bad_peb_count`, `max_ec`, ...).
pub fn device_number(sys_dir: &Path, ubi: u32, what: &str) -> Option<u64> {
    std::fs::read_to_string(sys_dir.join(format!("class/ubi/ubi{ubi}/{what}")))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A number sysfs publishes for a volume (`upd_marker`, `corrupted`, `reserved_ebs`, ...).
pub fn volume_number(sys_dir: &Path, v: &Volume, what: &str) -> Option<u64> {
    std::fs::read_to_string(sys_dir.join(format!("class/ubi/{}/{what}", v.dev_name())))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn open_rw(p: &Path) -> Result<std::fs::File, Errno> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO)))
}

/// Attaches MTD `mtd` through the control device; returns the new UBI device's number. The
/// kernel formats an erased MTD as it attaches it, and refuses one holding something else.
pub fn attach(ctrl: &Path, mtd: u32) -> Result<u32, Errno> {
    let f = open_rw(ctrl)?;
    let req = AttachReq {
        ubi_num: AUTO,
        mtd_num: i32::try_from(mtd).map_err(|_| Errno::EINVAL)?,
        ..AttachReq::default()
    };
    // SAFETY: UBI_IOCATT reads one struct ubi_attach_req, which AttachReq mirrors; it returns
    // the UBI number.
    let n = unsafe { ubi_attach(f.as_raw_fd(), &req) }?;
    u32::try_from(n).map_err(|_| Errno::EINVAL)
}

/// Makes a dynamic volume of `bytes` on the UBI device node `ubi_dev` (`/dev/ubiN`).
pub fn mkvol(ubi_dev: &Path, name: &str, bytes: u64) -> Result<(), Errno> {
    if name.is_empty() || name.len() > MAX_VOLUME_NAME {
        return Err(Errno::EINVAL);
    }
    let mut req = MkvolReq {
        vol_id: AUTO,
        alignment: 1,
        bytes: i64::try_from(bytes).map_err(|_| Errno::EINVAL)?,
        vol_type: DYNAMIC_VOLUME,
        flags: 0,
        name_len: i16::try_from(name.len()).map_err(|_| Errno::EINVAL)?,
        padding2: [0; 4],
        name: [0; MAX_VOLUME_NAME + 1],
    };
    if let Some(dst) = req.name.get_mut(..name.len()) {
        dst.copy_from_slice(name.as_bytes());
    }
    let f = open_rw(ubi_dev)?;
    // SAFETY: UBI_IOCMKVOL reads one packed struct ubi_mkvol_req, which MkvolReq mirrors.
    unsafe { ubi_mkvol(f.as_raw_fd(), &req) }.map(|_| ())
}

/// Puts a ubiblock device on the volume node `vol_dev` (`/dev/ubiN_M`); one already there is
/// fine.
pub fn create_block(vol_dev: &Path) -> Result<(), Errno> {
    let f = std::fs::File::open(vol_dev)
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO)))?;
    let req = BlkcreateReq { padding: [0; 128] };
    // SAFETY: UBI_IOCVOLCRBLK reads one struct ubi_blkcreate_req (padding only).
    match unsafe { ubi_blkcreate(f.as_raw_fd(), &req) } {
        Ok(_) | Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Replaces LEB `lnum` of the volume open in `f` (read-write) with `data`, atomically: a cut
/// leaves the old content or the new one (UBI writes the new copy to another PEB first).
pub fn leb_change(f: &mut std::fs::File, lnum: u32, data: &[u8]) -> Result<(), Errno> {
    use std::io::Write;
    let req = LebChangeReq {
        lnum: i32::try_from(lnum).map_err(|_| Errno::EINVAL)?,
        bytes: i32::try_from(data.len()).map_err(|_| Errno::EINVAL)?,
        dtype: 0,
        padding: [0; 7],
    };
    // SAFETY: UBI_IOCEBCH reads one packed struct ubi_leb_change_req, which LebChangeReq
    // mirrors; the data follows by write().
    unsafe { ubi_lebchange(f.as_raw_fd(), &req) }?;
    f.write_all(data)
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO)))
}

/// Lets `write()` on the open volume reach its LEBs directly (`UBI_VOL_PROP_DIRECT_WRITE`):
/// the one way to write a volume that ubiblock also has open (a LEB change or a volume update
/// wants it alone). A LEB is written once after an unmap, in whole min. I/O units.
pub fn direct_writes(f: &std::fs::File) -> Result<(), Errno> {
    let req = SetVolPropReq {
        property: PROP_DIRECT_WRITE,
        padding: [0; 7],
        value: 1,
    };
    // SAFETY: UBI_IOCSETVOLPROP reads one packed struct ubi_set_vol_prop_req.
    unsafe { ubi_setvolprop(f.as_raw_fd(), &req) }.map(|_| ())
}

/// Unmaps LEB `lnum` of the open volume: it reads as 0xFF and may be written again.
pub fn leb_unmap(f: &std::fs::File, lnum: u32) -> Result<(), Errno> {
    let n = i32::try_from(lnum).map_err(|_| Errno::EINVAL)?;
    // SAFETY: UBI_IOCEBUNMAP reads one int32 (the LEB number).
    unsafe { ubi_lebunmap(f.as_raw_fd(), &n) }.map(|_| ())
}

/// Opens a volume node for reading and writing (UBI lets one writer in beside readers).
pub fn open_volume(p: &Path) -> Result<std::fs::File, Errno> {
    open_rw(p)
}

/// Replaces a volume's content with `data` (`UBI_IOCVOLUP`, then the bytes): UBI keeps the
/// volume marked as being updated until the last byte is in, and a cut before that leaves it
/// "corrupted", never half old. An empty `data` truncates the volume: every LEB is unmapped.
pub fn update(
    vol_dev: &Path,
    data: &[u8],
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), Errno> {
    use std::io::Write;
    let mut f = open_rw(vol_dev)?;
    let n = i64::try_from(data.len()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: UBI_IOCVOLUP reads one int64 (the new content's length).
    unsafe { ubi_volup(f.as_raw_fd(), &n) }?;
    let total = data.len() as u64;
    let mut done = 0u64;
    for chunk in data.chunks(128 * 1024) {
        f.write_all(chunk)
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO)))?;
        done += chunk.len() as u64;
        progress(done, total);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layouts_match_the_kernel() {
        assert_eq!(std::mem::size_of::<AttachReq>(), 24);
        assert_eq!(std::mem::size_of::<MkvolReq>(), 152);
        assert_eq!(std::mem::size_of::<BlkcreateReq>(), 128);
        assert_eq!(std::mem::size_of::<LebChangeReq>(), 16);
        assert_eq!(std::mem::size_of::<SetVolPropReq>(), 16);
    }

    #[test]
    fn sysfs_devices_and_volumes() {
        let d = tempfile::tempdir().unwrap();
        let c = d.path().join("class/ubi");
        for (dir, files) in [
            (
                "ubi0",
                vec![("mtd_num", "2\n"), ("avail_eraseblocks", "17\n")],
            ),
            ("ubi0_0", vec![("name", "rootfs\n")]),
            ("ubi0_1", vec![("name", "rootfs_data\n")]),
            ("ubi1", vec![("mtd_num", "5\n")]),
            ("ubi_ctrl", vec![]),
        ] {
            std::fs::create_dir_all(c.join(dir)).unwrap();
            for (f, t) in files {
                std::fs::write(c.join(dir).join(f), t).unwrap();
            }
        }
        assert_eq!(devices(d.path()), vec![(0, 2), (1, 5)]);
        let v = volumes(d.path());
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].name, "rootfs_data");
        assert_eq!(v[1].dev_name(), "ubi0_1");
        assert_eq!(v[0].block_name(), "ubiblock0_0");
        assert_eq!(device_number(d.path(), 0, "avail_eraseblocks"), Some(17));
    }
}
