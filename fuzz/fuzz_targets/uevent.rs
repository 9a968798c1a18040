//! uevent files of /sys/class/block.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(d) = ovl::probe::block::parse_uevent(&String::from_utf8_lossy(data)) {
        let _ = d.path();
        let _ = ovl::probe::block::find_partname(std::slice::from_ref(&d), "rootfs_data");
    }
});
