//! Board files, and the selectors and policies inside them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ovl::board::{Board, FormatPolicy, FsChoice, Selector};

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = Board::parse("fuzz", data) {
        // What parse accepted, the accessors must take without falling back in surprise.
        let _ = b.fs_choice();
        let _ = b.format_policy();
    }
    let text = String::from_utf8_lossy(data);
    if let Ok(sel) = Selector::parse(&text) {
        // A selector prints as something that parses back to itself.
        assert_eq!(Selector::parse(&sel.to_string()), Ok(sel));
    }
    let _ = FsChoice::parse(&text);
    let _ = FormatPolicy::parse(&text);
});
