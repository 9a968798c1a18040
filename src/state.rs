//! The state file preinit publishes under the run-time tmpfs (`/run/ovl/state.json`): which
//! case it chose and why, on which devices, and how long each step took. `ovlctl status`
//! reads it. Fixed-capacity types, written with serde-json-core: no heap needed to read it.

use crate::board::Text;
use serde::{Deserialize, Serialize};

pub const STATE_DIR: &str = "ovl";
pub const STATE_FILE: &str = "state.json";
/// Where ovlctl looks, in order (the ROM may lack /run, then preinit uses /tmp).
pub const STATE_PATHS: [&str; 2] = ["/run/ovl/state.json", "/tmp/ovl/state.json"];
pub const VERSION: u32 = 1;
const MAX_BYTES: usize = 8192;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    pub step: Text<12>,
    pub us: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// persistent, tmpfs, failsafe or rom.
    pub mode: Text<12>,
    pub reason: Option<Text<512>>,
    /// initramfs or rootfs.
    pub boot: Text<12>,
    pub board: Option<Text<32>>,
    pub rom: Option<Text<128>>,
    pub data: Option<Text<128>>,
    /// What the data partition held when probed (erased, marker, ext4, ...).
    pub data_content: Option<Text<12>>,
    pub data_fstype: Option<Text<8>>,
    /// mount, format or erase.
    pub data_action: Option<Text<8>>,
    pub init: Text<128>,
    pub modules_loaded: u32,
    pub modules_failed: heapless::Vec<Text<32>, 8>,
    /// CLOCK_BOOTTIME when preinit started: the kernel's share of the boot.
    pub started_us: u64,
    /// From preinit's start to just before exec of init.
    pub total_us: u64,
    /// preinit's own peak resident set (children such as mkfs not counted).
    pub peak_rss_kib: u64,
    pub steps: heapless::Vec<Timing, 10>,
    /// The ROM's identity (`overlay::rom_identity`).
    pub rom_id: Option<Text<48>>,
    /// pending or ready: the persistent overlay's first-boot record after preinit.
    pub first_boot: Option<Text<8>>,
    /// Why preinit emptied the upper this boot: pending, reset or stale.
    pub cleared: Option<Text<8>>,
    /// The ROM the overlay had been made for, when another one booted.
    pub stale_from: Option<Text<48>>,
    /// An upgrade backup waits beside the upper.
    pub upgrade_waiting: bool,
    /// A keep container applied this boot: restored, fresh or refused.
    pub upgrade: Option<Text<8>>,
    /// Values that were refused (by the parser, the kernel or a program) and what was used
    /// instead; what else a person should know about this boot.
    pub notes: heapless::Vec<Text<200>, 6>,
}

/// Cuts `s` to fit, at a character boundary, marking the cut.
pub fn fit<const N: usize>(s: &str) -> Text<N> {
    if s.len() <= N {
        return Text::try_from(s).unwrap_or_default();
    }
    let mut end = N.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut t = Text::try_from(&s[..end]).unwrap_or_default();
    let _ = t.push_str("...");
    t
}

impl State {
    pub fn to_json(&self) -> Result<Vec<u8>, String> {
        let mut buf = vec![0u8; MAX_BYTES];
        let n = serde_json_core::to_slice(self, &mut buf).map_err(|e| e.to_string())?;
        buf.truncate(n);
        buf.push(b'\n');
        Ok(buf)
    }

    pub fn from_json(bytes: &[u8]) -> Result<State, String> {
        let mut scratch = [0u8; 1024];
        serde_json_core::from_slice_escaped(bytes, &mut scratch)
            .map(|(s, _)| s)
            .map_err(|e| e.to_string())
    }

    /// Keeps the first notes when there are too many: the earliest refusal explains the rest.
    pub fn add_note(&mut self, note: &str) {
        let _ = self.notes.push(fit(note));
    }

    pub fn add_step(&mut self, step: &str, us: u64) {
        let _ = self.steps.push(Timing {
            step: fit(step),
            us,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_quotes_and_nulls() {
        let mut s = State {
            version: VERSION,
            mode: fit("tmpfs"),
            reason: Some(fit(
                r#"mount /dev/vda2 on /overlay (ext4): "bad" \ superblock"#,
            )),
            boot: fit("initramfs"),
            init: fit("/sbin/init"),
            ..State::default()
        };
        s.add_step("find", 1234);
        let _ = s.modules_failed.push(fit("mtdblock"));
        let json = s.to_json().unwrap();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains(r#""data":null"#), "{text}");
        assert_eq!(State::from_json(&json).unwrap(), s);
    }

    #[test]
    fn fuzz_crash_long_error_messages_are_errors_not_panics() {
        // serde-json-core 0.7 with custom-error-messages panicked on messages over 64 bytes.
        let crash = include_bytes!("../fuzz/regressions/state-long-error-message");
        assert!(State::from_json(crash).is_err());
        let s = State {
            reason: Some(fit("mount /dév/vda2: ünknown")),
            ..State::default()
        };
        assert_eq!(State::from_json(&s.to_json().unwrap()).unwrap(), s);
    }

    #[test]
    fn long_text_is_cut_not_refused() {
        let long = "é".repeat(400);
        let t: Text<512> = fit(&long);
        assert!(t.len() <= 512 && t.ends_with("..."));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(State::from_json(b"{").is_err());
        assert!(State::from_json(b"").is_err());
    }
}
