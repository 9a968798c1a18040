//! /proc/mtd.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parts = ovl::probe::mtd::parse_proc_mtd(&String::from_utf8_lossy(data));
    let _ = ovl::probe::mtd::find(&parts, "rootfs_data");
});
