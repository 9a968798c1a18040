//! /proc/self/mountinfo, as ovlctl status reads it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let m = ovl::status::parse_mountinfo(&String::from_utf8_lossy(data));
    let _ = ovl::status::top(&m, "/overlay");
});
