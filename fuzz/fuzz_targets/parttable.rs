//! Partition tables: the GPT header and entry array, the MBR signature.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ovl::probe::parttable::{gpt_entries_at, parse_gpt, parse_mbr, Table};

fuzz_target!(|data: &[u8]| {
    let (header, entries) = data.split_at(data.len().min(512));
    for sector in [512, 4096] {
        if let Ok((at, len)) = gpt_entries_at(header, sector) {
            assert!(len <= ovl::probe::parttable::MAX_ENTRIES_BYTES);
            assert_eq!(at % sector, 0);
        }
    }
    if let Ok(parts) = parse_gpt(header, entries) {
        for (n, guid) in &parts {
            assert!(*n >= 1 && guid.len() == 36);
        }
        let _ = Table::Gpt(parts).partuuid(1);
    }
    if let Some(sig) = parse_mbr(data) {
        assert_eq!(Table::Mbr(sig).partuuid(2).map(|s| s.len()), Some(11));
    }
});
