//! JFFS2 node headers and the classification of an erase block's start.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ovl::probe::jffs2::{classify, node_header, Census};

fuzz_target!(|data: &[u8]| {
    let (len, rest) = match data.split_first() {
        Some((&b, rest)) => (u64::from(b) << 12, rest),
        None => return,
    };
    let _ = node_header(rest, len);
    let mut c = Census::default();
    for (i, chunk) in rest.chunks(16).enumerate() {
        c.add(u32::try_from(i).unwrap_or(u32::MAX), classify(chunk, len));
    }
    let _ = c.verdict();
});
