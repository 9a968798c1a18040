//! Loop devices (include/uapi/linux/loop.h): attach a file or device from an offset, with
//! auto-clear so the device goes away when its last user (the mount) does.

use nix::errno::Errno;
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

const LO_FLAGS_AUTOCLEAR: u32 = 4;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct LoopInfo64 {
    pub lo_device: u64,
    pub lo_inode: u64,
    pub lo_rdevice: u64,
    pub lo_offset: u64,
    pub lo_sizelimit: u64,
    pub lo_number: u32,
    pub lo_encrypt_type: u32,
    pub lo_encrypt_key_size: u32,
    pub lo_flags: u32,
    pub lo_file_name: [u8; 64],
    pub lo_crypt_name: [u8; 64],
    pub lo_encrypt_key: [u8; 32],
    pub lo_init: [u64; 2],
}

nix::ioctl_write_int_bad!(loop_set_fd, 0x4C00);
nix::ioctl_none_bad!(loop_clr_fd, 0x4C01);
nix::ioctl_write_ptr_bad!(loop_set_status64, 0x4C04, LoopInfo64);
nix::ioctl_none_bad!(loop_ctl_get_free, 0x4C82);

fn errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(0))
}

/// Attaches `backing` from `offset`. Returns the device path and an open handle: with
/// auto-clear the device detaches at its last close, so the caller keeps the handle until
/// the device is mounted.
pub fn attach(
    dev_dir: &Path,
    backing: &Path,
    offset: u64,
) -> Result<(PathBuf, OwnedFd), (String, Errno)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(backing)
        .map_err(|e| (format!("open {}", backing.display()), errno(e)))?;
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev_dir.join("loop-control"))
        .map_err(|e| ("open loop-control".to_string(), errno(e)))?;
    // Another process may take the free device between our two calls: try a few times.
    for _ in 0..8 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { loop_ctl_get_free(ctl.as_raw_fd()) }
            .map_err(|e| ("LOOP_CTL_GET_FREE".to_string(), e))?;
        let path = dev_dir.join(format!("loop{n}"));
        let dev = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(d) => d,
            // devtmpfs may not show the node yet.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::thread::sleep(std::time::Duration::from_millis(20));
                continue;
            }
            Err(e) => return Err((format!("open {}", path.display()), errno(e))),
        };
        // SAFETY: LOOP_SET_FD takes a file descriptor as its integer argument.
        match unsafe { loop_set_fd(dev.as_raw_fd(), file.as_raw_fd()) } {
            Ok(_) => {}
            Err(Errno::EBUSY) => continue,
            Err(e) => return Err((format!("LOOP_SET_FD {}", path.display()), e)),
        }
        let mut info = LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: offset,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: LO_FLAGS_AUTOCLEAR,
            lo_file_name: [0; 64],
            lo_crypt_name: [0; 64],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        };
        let name = backing.as_os_str().as_encoded_bytes();
        // The kernel keeps the name for show only; 63 bytes and a NUL fit its field.
        for (dst, src) in info.lo_file_name.iter_mut().zip(name.iter().take(63)) {
            *dst = *src;
        }
        // SAFETY: LOOP_SET_STATUS64 reads one struct loop_info64.
        if let Err(e) = unsafe { loop_set_status64(dev.as_raw_fd(), &info) } {
            // SAFETY: LOOP_CLR_FD takes no argument.
            let _ = unsafe { loop_clr_fd(dev.as_raw_fd()) };
            return Err((
                format!("LOOP_SET_STATUS64 {} offset {offset}", path.display()),
                e,
            ));
        }
        return Ok((path, dev.into()));
    }
    Err((
        "no free loop device after 8 tries".to_string(),
        Errno::EBUSY,
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn loop_info64_matches_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<super::LoopInfo64>(), 232);
    }
}
