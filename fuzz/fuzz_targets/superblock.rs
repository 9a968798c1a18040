//! Superblock identification of a partition's first bytes, and the squashfs end it reads.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ovl::probe::magic::{after_squashfs_offset, identify, Content};

fuzz_target!(|data: &[u8]| {
    let c = identify(data);
    let _ = c.name();
    if let Content::Squashfs { bytes_used } = c {
        if let Some(off) = after_squashfs_offset(bytes_used) {
            assert!(off >= bytes_used && off % 65536 == 0);
        }
    }
});
