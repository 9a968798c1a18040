//! The state file preinit publishes and ovlctl status reads.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ovl::state::State;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = State::from_json(data) {
        // Whatever was read is written back, and reads back the same.
        let json = s.to_json().expect("a state read must be writable");
        assert_eq!(State::from_json(&json).as_ref(), Ok(&s));
    }
});
