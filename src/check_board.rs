//! `ovlctl check-board FILE`: what a valid board file sets up, told to a board builder (text)
//! or a script (`--json`). Every key is shown with the value preinit will use, resolved as
//! preinit resolves it (`config::Config`, with an empty kernel command line), and the keys the
//! file leaves to their defaults are marked.

use crate::board::{Board, FsChoice};
use crate::cmdline::Cmdline;
use crate::config::Config;
use crate::plan::BootKind;
use serde::Serialize;

/// What preinit uses when a board sets no `module_dir`.
const DEFAULT_MODULE_DIR: &str = "/lib/modules/<kernel release>";

/// A board and what preinit makes of it.
pub struct Summary<'a> {
    board: &'a Board,
    config: Config,
}

#[derive(Serialize)]
struct ModuleJson<'a> {
    name: &'a str,
    params: Option<&'a str>,
}

#[derive(Serialize)]
struct FormatJson {
    erased: bool,
    zeroes: bool,
    marker: bool,
}

#[derive(Serialize)]
struct SummaryJson<'a> {
    name: &'a str,
    /// Selectors in the order preinit tries them (the board's, then `auto`).
    rom: &'a [&'a str],
    data: &'a [&'a str],
    fstype: &'a str,
    format: FormatJson,
    modules: &'a [ModuleJson<'a>],
    /// Null: `/lib/modules/<kernel release>`, known only on the device.
    module_dir: Option<&'a str>,
    device_timeout_ms: u64,
    tmpfs_size: &'a str,
    init: &'a str,
    mkfs: &'a str,
    data_label: &'a str,
    stale_overlay: &'a str,
    /// The keys the file does not set, whose values above are the defaults.
    defaults: &'a [&'a str],
    /// Values changed while resolving (a timeout over the cap), as preinit would note them.
    notes: &'a [&'a str],
}

/// Selectors in the order preinit tries them, as the board file writes them.
fn words(v: &[crate::config::Value<crate::board::Selector>]) -> Vec<String> {
    v.iter().map(|v| v.value.to_string()).collect()
}

impl<'a> Summary<'a> {
    pub fn new(board: &'a Board) -> Summary<'a> {
        // An initramfs boot: the one where the board's rom selector is used.
        let config = Config::resolve(&Cmdline::default(), board, BootKind::Initramfs);
        Summary { board, config }
    }

    fn rom(&self) -> Vec<String> {
        words(&self.config.rom)
    }

    fn data(&self) -> Vec<String> {
        words(&self.config.data)
    }

    fn format_words(&self) -> String {
        let f = self.config.format;
        let words: Vec<&str> = [
            (f.erased, "erased"),
            (f.zeroes, "zeroes"),
            (f.marker, "marker"),
        ]
        .into_iter()
        .filter_map(|(on, w)| on.then_some(w))
        .collect();
        if words.is_empty() {
            "never".into()
        } else {
            words.join(",")
        }
    }

    fn stale_overlay(&self) -> &str {
        if self.config.keep_stale {
            "keep"
        } else {
            "reset"
        }
    }

    fn timeout_ms(&self) -> u64 {
        crate::decimal::millis(self.config.timeout.value)
    }

    /// The board file's keys left to their defaults, in the order of the README's table.
    fn defaults(&self) -> Vec<&'static str> {
        let b = self.board;
        let c = &self.config;
        [
            ("rom", b.rom.is_none()),
            ("data", b.data.is_none()),
            ("fstype", c.fs.is_default()),
            ("format", b.format.is_none()),
            ("module_dir", b.module_dir.is_none()),
            ("device_timeout_ms", c.timeout.is_default()),
            ("tmpfs_size", c.tmpfs_size.is_default()),
            ("init", c.init.is_default()),
            ("mkfs", c.mkfs.is_default()),
            ("data_label", c.data_label.is_default()),
            ("stale_overlay", b.stale_overlay.is_none()),
        ]
        .into_iter()
        .filter_map(|(k, d)| d.then_some(k))
        .collect()
    }

    pub fn to_text(&self) -> String {
        let c = &self.config;
        let defaults = self.defaults();
        let mut out = String::new();
        // `key: value (default): what it is for`, the key as the board file names it.
        let mut line = |key: &str, value: &str, why: &str| {
            let mark = if defaults.contains(&key) {
                " (default)"
            } else {
                ""
            };
            let label = if key.is_empty() {
                String::new()
            } else {
                format!("{key}:")
            };
            out.push_str(&format!("{label:<19}{value}{mark}{why}\n"));
        };
        line("name", &self.board.name, "");
        // Each later selector is tried only when the earlier ones found nothing.
        line("rom", &self.rom().join(", else "), "");
        line("data", &self.data().join(", else "), "");
        line(
            "fstype",
            c.fs.value.name(),
            match c.fs.value {
                FsChoice::Auto => ": JFFS2 on MTD, UBIFS on a UBI volume, ext4 on a block device",
                _ => "",
            },
        );
        line(
            "format",
            &self.format_words(),
            ": the blank contents of a block partition ovl may format",
        );
        let modules = &self.board.modules;
        line(
            "modules",
            &match modules.len() {
                0 => "none".to_string(),
                n => format!("{n}, loaded in this order"),
            },
            "",
        );
        for (i, m) in modules.iter().enumerate() {
            let params = m.params.as_deref().map(|p| format!(": {p}"));
            line(
                "",
                &format!("{:>2}. {}{}", i + 1, m.name, params.unwrap_or_default()),
                "",
            );
        }
        line(
            "module_dir",
            self.board
                .module_dir
                .as_deref()
                .unwrap_or(DEFAULT_MODULE_DIR),
            "",
        );
        line(
            "device_timeout_ms",
            &self.timeout_ms().to_string(),
            ": how long to wait for the ROM and data devices",
        );
        line(
            "tmpfs_size",
            &c.tmpfs_size.value,
            ": the tmpfs upper of a fallback",
        );
        line("init", &c.init.value, "");
        line("mkfs", &c.mkfs.value, "");
        line(
            "data_label",
            &c.data_label.value,
            ": the label of a partition ovl formats",
        );
        line(
            "stale_overlay",
            self.stale_overlay(),
            if c.keep_stale {
                ": an overlay made for another ROM is kept, and noted"
            } else {
                ": an overlay made for another ROM is emptied"
            },
        );
        for n in &c.notes {
            line("note", n, "");
        }
        out
    }

    pub fn to_json(&self) -> Result<String, String> {
        let c = &self.config;
        let (rom, data) = (self.rom(), self.data());
        let rom: Vec<&str> = rom.iter().map(String::as_str).collect();
        let data: Vec<&str> = data.iter().map(String::as_str).collect();
        let modules: Vec<ModuleJson> = self
            .board
            .modules
            .iter()
            .map(|m| ModuleJson {
                name: &m.name,
                params: m.params.as_deref(),
            })
            .collect();
        let defaults = self.defaults();
        let notes: Vec<&str> = c.notes.iter().map(String::as_str).collect();
        let view = SummaryJson {
            name: &self.board.name,
            rom: &rom,
            data: &data,
            fstype: c.fs.value.name(),
            format: FormatJson {
                erased: c.format.erased,
                zeroes: c.format.zeroes,
                marker: c.format.marker,
            },
            modules: &modules,
            module_dir: self.board.module_dir.as_deref(),
            device_timeout_ms: self.timeout_ms(),
            tmpfs_size: &c.tmpfs_size.value,
            init: &c.init.value,
            mkfs: &c.mkfs.value,
            data_label: &c.data_label.value,
            stale_overlay: self.stale_overlay(),
            defaults: &defaults,
            notes: &notes,
        };
        // The board file is at most MAX_BOARD_BYTES and holds no escapes, so its values fit
        // twice over; the rest is keys, nulls and the defaults list.
        let mut buf = vec![0u8; 2 * crate::board::MAX_BOARD_BYTES + 4096];
        let n = serde_json_core::to_slice(&view, &mut buf).map_err(|e| e.to_string())?;
        buf.truncate(n);
        String::from_utf8(buf).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"{
      "name": "qemu-aarch64-nor",
      "rom": "mtd:rootfs",
      "data": "mtd:rootfs_data",
      "fstype": "jffs2",
      "format": "erased,marker",
      "modules": [
        {"name": "mtd"},
        {"name": "cmdlinepart", "params": "mtdparts=0.flash:16m(rootfs),-(rootfs_data)"},
        {"name": "jffs2"}
      ],
      "module_dir": "/lib/modules",
      "device_timeout_ms": 90000,
      "tmpfs_size": "32m",
      "init": "/sbin/init",
      "mkfs": "/usr/sbin/mkfs.ext4",
      "data_label": "data",
      "stale_overlay": "keep"
    }"#;

    fn board(json: &str) -> Board {
        Board::parse("b.json", json.as_bytes()).unwrap()
    }

    #[test]
    fn text_names_every_key_in_order_with_its_value() {
        let b = board(FULL);
        assert_eq!(
            Summary::new(&b).to_text(),
            "\
name:              qemu-aarch64-nor
rom:               mtd:rootfs, else auto
data:              mtd:rootfs_data, else auto
fstype:            jffs2
format:            erased,marker: the blank contents of a block partition ovl may format
modules:           3, loaded in this order
                    1. mtd
                    2. cmdlinepart: mtdparts=0.flash:16m(rootfs),-(rootfs_data)
                    3. jffs2
module_dir:        /lib/modules
device_timeout_ms: 60000: how long to wait for the ROM and data devices
tmpfs_size:        32m: the tmpfs upper of a fallback
init:              /sbin/init
mkfs:              /usr/sbin/mkfs.ext4
data_label:        data: the label of a partition ovl formats
stale_overlay:     keep: an overlay made for another ROM is kept, and noted
note:              the board's device_timeout_ms asks to wait 90000 ms for devices; capped at 60000 ms
"
        );
    }

    #[test]
    fn text_marks_the_defaults_of_a_minimal_board() {
        let b = board(r#"{"name":"x","format":"never"}"#);
        assert_eq!(
            Summary::new(&b).to_text(),
            "\
name:              x
rom:               auto (default)
data:              auto (default)
fstype:            auto (default): JFFS2 on MTD, UBIFS on a UBI volume, ext4 on a block device
format:            never: the blank contents of a block partition ovl may format
modules:           none
module_dir:        /lib/modules/<kernel release> (default)
device_timeout_ms: 3000 (default): how long to wait for the ROM and data devices
tmpfs_size:        50% (default): the tmpfs upper of a fallback
init:              /sbin/init (default)
mkfs:              /usr/sbin/mkfs.ext4 (default)
data_label:        rootfs_data (default): the label of a partition ovl formats
stale_overlay:     reset (default): an overlay made for another ROM is emptied
"
        );
    }

    #[test]
    fn json_says_the_same_with_stable_keys() {
        let b = board(FULL);
        let j: serde_json::Value =
            serde_json::from_str(&Summary::new(&b).to_json().unwrap()).unwrap();
        assert_eq!(
            j,
            serde_json::json!({
                "name": "qemu-aarch64-nor",
                "rom": ["mtd:rootfs", "auto"],
                "data": ["mtd:rootfs_data", "auto"],
                "fstype": "jffs2",
                "format": {"erased": true, "zeroes": false, "marker": true},
                "modules": [
                    {"name": "mtd", "params": null},
                    {"name": "cmdlinepart", "params": "mtdparts=0.flash:16m(rootfs),-(rootfs_data)"},
                    {"name": "jffs2", "params": null}
                ],
                "module_dir": "/lib/modules",
                "device_timeout_ms": 60000,
                "tmpfs_size": "32m",
                "init": "/sbin/init",
                "mkfs": "/usr/sbin/mkfs.ext4",
                "data_label": "data",
                "stale_overlay": "keep",
                "defaults": [],
                "notes": ["the board's device_timeout_ms asks to wait 90000 ms for devices; capped at 60000 ms"]
            })
        );
        let b = board(r#"{"name":"x","data":"ubi:ubi/rootfs_data"}"#);
        let j: serde_json::Value =
            serde_json::from_str(&Summary::new(&b).to_json().unwrap()).unwrap();
        assert_eq!(
            j["data"],
            serde_json::json!(["ubi:ubi/rootfs_data", "auto"])
        );
        assert_eq!(j["module_dir"], serde_json::Value::Null);
        assert_eq!(j["format"]["erased"], true);
        assert_eq!(
            j["defaults"],
            serde_json::json!([
                "rom",
                "fstype",
                "format",
                "module_dir",
                "device_timeout_ms",
                "tmpfs_size",
                "init",
                "mkfs",
                "data_label",
                "stale_overlay"
            ])
        );
    }

    #[test]
    fn the_largest_board_the_types_hold_fits_the_json_buffer() {
        // Larger than a board file can be (8 KiB): every module name and parameter full.
        let mut b = board(r#"{"name":"x"}"#);
        b.name = crate::board::Text::try_from("n".repeat(32).as_str()).unwrap();
        let params = crate::board::Text::try_from("p".repeat(200).as_str()).unwrap();
        for i in 0..crate::board::MAX_MODULES {
            let name = crate::board::Text::try_from(format!("{i:032}").as_str()).unwrap();
            b.modules
                .push(crate::board::Module {
                    name,
                    params: Some(params.clone()),
                })
                .unwrap();
        }
        let j = Summary::new(&b).to_json().unwrap();
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(
            v["modules"].as_array().unwrap().len(),
            crate::board::MAX_MODULES
        );
    }
}
