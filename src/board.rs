//! Board files (`board/*.json`): what a board's flash looks like and what preinit loads.
//!
//! Parsed with serde-json-core into fixed-capacity types, so reading one needs no heap and an
//! oversized value is an error instead of an allocation. The visitor is written by hand so that
//! every error names the key it is about (the derived one would only say "invalid length").

use core::fmt;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// Largest board file accepted; real ones are well under 2 KiB.
pub const MAX_BOARD_BYTES: usize = 8192;
pub const MAX_MODULES: usize = 48;

pub type Text<const N: usize> = heapless::String<N>;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Module {
    pub name: Text<32>,
    /// Parameters passed to finit_module, before those from the kernel command line.
    pub params: Option<Text<200>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Board {
    pub name: Text<32>,
    /// Selector of the squashfs ROM (initramfs boots only): see [`Selector`].
    pub rom: Option<Text<64>>,
    /// Selector of the writable partition.
    pub data: Option<Text<64>>,
    /// `auto` (JFFS2 on MTD, ext4 on a block device), `jffs2` or `ext4`.
    pub fstype: Option<Text<8>>,
    /// Which blank contents may be formatted: comma list of `erased`, `zeroes`, `marker`.
    pub format: Option<Text<32>>,
    pub modules: heapless::Vec<Module, MAX_MODULES>,
    /// Where the modules are; default `/lib/modules/<kernel release>`.
    pub module_dir: Option<Text<64>>,
    /// How long to wait for the ROM and data devices to appear.
    pub device_timeout_ms: Option<u32>,
    /// Size of the tmpfs upper on fallback, as tmpfs takes it (`32m`, `50%`).
    pub tmpfs_size: Option<Text<16>>,
    pub init: Option<Text<64>>,
    /// mkfs.ext4 to format a blank block partition; looked up in the ROM, then in `/`.
    pub mkfs: Option<Text<64>>,
    /// Label given to a partition ovl formats.
    pub data_label: Option<Text<16>>,
    /// What to do with an overlay made for another ROM: `reset` (the default) or `keep`.
    pub stale_overlay: Option<Text<8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    #[error("board file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("board file {path} is {size} bytes, more than the {max} allowed")]
    TooLarge {
        path: String,
        size: usize,
        max: usize,
    },
    #[error("board file {path}: {message}")]
    Invalid { path: String, message: String },
}

impl Board {
    pub fn parse(path: &str, bytes: &[u8]) -> Result<Board, BoardError> {
        if bytes.len() > MAX_BOARD_BYTES {
            return Err(BoardError::TooLarge {
                path: path.into(),
                size: bytes.len(),
                max: MAX_BOARD_BYTES,
            });
        }
        let invalid = |message: String| BoardError::Invalid {
            path: path.into(),
            message,
        };
        WHY.with(|w| w.borrow_mut().clear());
        let (board, used): (Board, usize) =
            serde_json_core::from_slice(bytes).map_err(|e| invalid(take_why(&e)))?;
        if !bytes
            .get(used..)
            .unwrap_or_default()
            .iter()
            .all(u8::is_ascii_whitespace)
        {
            return Err(invalid(format!(
                "unexpected text after the object at byte {used}"
            )));
        }
        if board.name.is_empty() {
            return Err(invalid("name: missing or empty".into()));
        }
        for (field, sel) in [("rom", &board.rom), ("data", &board.data)] {
            if let Some(s) = sel {
                Selector::parse(s).map_err(|e| invalid(format!("{field}: {e}")))?;
            }
        }
        if let Some(f) = &board.fstype {
            FsChoice::parse(f).map_err(|e| invalid(format!("fstype: {e}")))?;
        }
        if let Some(f) = &board.format {
            FormatPolicy::parse(f).map_err(|e| invalid(format!("format: {e}")))?;
        }
        if let Some(p) = &board.stale_overlay {
            if !matches!(p.as_str(), "reset" | "keep") {
                return Err(invalid(format!(
                    "stale_overlay: `{p}` is not one of reset, keep"
                )));
            }
        }
        Ok(board)
    }

    pub fn load(path: &str) -> Result<Board, BoardError> {
        let bytes = read_capped(path, MAX_BOARD_BYTES).map_err(|source| BoardError::Read {
            path: path.into(),
            source,
        })?;
        Board::parse(path, &bytes)
    }

    pub fn fs_choice(&self) -> FsChoice {
        // Validated in parse; a board built in code falls back to auto.
        self.fstype
            .as_deref()
            .and_then(|f| FsChoice::parse(f).ok())
            .unwrap_or(FsChoice::Auto)
    }

    /// The board's choice, unless `ovl.fstype=` on the command line names a valid one.
    pub fn fs_choice_or(&self, cmdline: Option<&str>) -> FsChoice {
        cmdline
            .and_then(|s| FsChoice::parse(s).ok())
            .unwrap_or_else(|| self.fs_choice())
    }

    pub fn format_policy(&self) -> FormatPolicy {
        self.format
            .as_deref()
            .and_then(|f| FormatPolicy::parse(f).ok())
            .unwrap_or_default()
    }
}

/// Reads at most `max + 1` bytes, so that an oversized file is seen as such without reading
/// all of it.
pub fn read_capped(path: &str, max: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(path)?
        .take(max as u64 + 1)
        .read_to_end(&mut buf)?;
    Ok(buf)
}

/// How to find a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// A partition in /proc/mtd: `mtd:rootfs_data`.
    Mtd(String),
    /// A GPT partition name (PARTNAME in its uevent): `partname:rootfs_data`, `PARTLABEL=...`.
    PartName(String),
    /// An ext4 filesystem label: `label:rootfs_data`, `LABEL=...`.
    Label(String),
    /// A device node: `/dev/vda2`.
    Path(String),
    /// A partition's GPT unique GUID or MBR `SIGNATURE-NN`: `PARTUUID=...` (lowercase here).
    PartUuid(String),
    /// A file system UUID (ext4): `UUID=...` (lowercase here).
    Uuid(String),
    /// A UBI volume by name: `ubi:rootfs_data`, or `ubi:MTD/NAME` to attach the MTD partition
    /// named MTD first when the kernel has not.
    Ubi { mtd: Option<String>, volume: String },
    /// The OpenWrt x86 layout: the space after the squashfs in the ROM's own partition.
    AfterRom,
    /// The usual places in OpenWrt's order: GPT name, MTD name, then (for data) after the ROM.
    Auto,
}

impl Selector {
    pub fn parse(s: &str) -> Result<Selector, String> {
        let nonempty = |v: &str, what: &str| {
            if v.is_empty() {
                Err(format!("`{s}` names no {what}"))
            } else {
                Ok(v.to_string())
            }
        };
        if let Some(v) = s.strip_prefix("mtd:") {
            Ok(Selector::Mtd(nonempty(v, "MTD partition")?))
        } else if let Some(v) = s.strip_prefix("ubi:") {
            let (mtd, vol) = match v.split_once('/') {
                Some((m, vol)) => (Some(nonempty(m, "MTD partition")?), vol),
                None => (None, v),
            };
            let volume = nonempty(vol, "UBI volume")?;
            if volume.len() > crate::ubi::MAX_VOLUME_NAME || volume.contains('/') {
                return Err(format!(
                    "`{s}`: a UBI volume name has at most 127 bytes and no `/`"
                ));
            }
            Ok(Selector::Ubi { mtd, volume })
        } else if let Some(v) = s
            .strip_prefix("partname:")
            .or_else(|| s.strip_prefix("PARTNAME="))
            .or_else(|| s.strip_prefix("PARTLABEL="))
        {
            Ok(Selector::PartName(nonempty(v, "partition name")?))
        } else if let Some(v) = s
            .strip_prefix("label:")
            .or_else(|| s.strip_prefix("LABEL="))
        {
            Ok(Selector::Label(nonempty(v, "label")?))
        } else if let Some(v) = s
            .strip_prefix("partuuid:")
            .or_else(|| s.strip_prefix("PARTUUID="))
        {
            let v = v.to_ascii_lowercase();
            // GPT: 8-4-4-4-12 hex digits; MBR: 8-2, the kernel's `%08x-%02x`.
            let groups: Vec<usize> = v.split('-').map(str::len).collect();
            let hex = v.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
            if hex && (groups == [8, 4, 4, 4, 12] || groups == [8, 2]) {
                Ok(Selector::PartUuid(v))
            } else {
                Err(format!(
                    "`{s}` is not a PARTUUID (GPT: 8-4-4-4-12 hex digits; MBR: SSSSSSSS-NN)"
                ))
            }
        } else if let Some(v) = s.strip_prefix("uuid:").or_else(|| s.strip_prefix("UUID=")) {
            let v = v.to_ascii_lowercase();
            let groups: Vec<usize> = v.split('-').map(str::len).collect();
            if v.chars().all(|c| c.is_ascii_hexdigit() || c == '-') && groups == [8, 4, 4, 4, 12] {
                Ok(Selector::Uuid(v))
            } else {
                Err(format!(
                    "`{s}` is not a file system UUID (8-4-4-4-12 hex digits)"
                ))
            }
        } else if s.starts_with("/dev/") && s.len() > 5 {
            Ok(Selector::Path(s.to_string()))
        } else if s == "after-rom" {
            Ok(Selector::AfterRom)
        } else if s == "auto" {
            Ok(Selector::Auto)
        } else {
            Err(format!(
                "`{s}` is not a selector (mtd:NAME, ubi:[MTD/]NAME, partname:NAME, label:NAME, PARTUUID=, UUID=, /dev/PATH, after-rom, auto)"
            ))
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Mtd(n) => write!(f, "mtd:{n}"),
            Selector::PartName(n) => write!(f, "partname:{n}"),
            Selector::Label(n) => write!(f, "label:{n}"),
            Selector::Path(p) => write!(f, "{p}"),
            Selector::PartUuid(u) => write!(f, "PARTUUID={u}"),
            Selector::Uuid(u) => write!(f, "UUID={u}"),
            Selector::Ubi {
                mtd: Some(m),
                volume,
            } => write!(f, "ubi:{m}/{volume}"),
            Selector::Ubi { mtd: None, volume } => write!(f, "ubi:{volume}"),
            Selector::AfterRom => write!(f, "after-rom"),
            Selector::Auto => write!(f, "auto"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsChoice {
    Auto,
    Jffs2,
    Ext4,
    Ubifs,
}

impl FsChoice {
    /// The word the board file and `ovl.fstype=` use for it.
    pub fn name(self) -> &'static str {
        match self {
            FsChoice::Auto => "auto",
            FsChoice::Jffs2 => "jffs2",
            FsChoice::Ext4 => "ext4",
            FsChoice::Ubifs => "ubifs",
        }
    }

    pub fn parse(s: &str) -> Result<FsChoice, String> {
        match s {
            "auto" => Ok(FsChoice::Auto),
            "jffs2" => Ok(FsChoice::Jffs2),
            "ext4" => Ok(FsChoice::Ext4),
            "ubifs" => Ok(FsChoice::Ubifs),
            _ => Err(format!("`{s}` is not one of auto, jffs2, ext4, ubifs")),
        }
    }
}

/// Which blank contents of a block partition ovl may format. Erased (all 0xFF) is what ovl's
/// image builder leaves in a new data partition; zeroes and the flash marker are not formatted
/// unless the board says so, because formatting them could hide a lost or foreign partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatPolicy {
    pub erased: bool,
    pub zeroes: bool,
    pub marker: bool,
}

impl Default for FormatPolicy {
    fn default() -> Self {
        FormatPolicy {
            erased: true,
            zeroes: false,
            marker: false,
        }
    }
}

impl FormatPolicy {
    pub fn parse(s: &str) -> Result<FormatPolicy, String> {
        let mut p = FormatPolicy {
            erased: false,
            zeroes: false,
            marker: false,
        };
        for word in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "erased" => p.erased = true,
                "zeroes" => p.zeroes = true,
                "marker" => p.marker = true,
                "never" => {}
                _ => {
                    return Err(format!(
                        "`{word}` is not one of erased, zeroes, marker, never"
                    ))
                }
            }
        }
        Ok(p)
    }
}

// ---- deserialisation with field names in every error ----
//
// serde-json-core's "custom-error-messages" feature panics on any message over 64 bytes (it
// writes it into a heapless::String<64> and unwraps; found by fuzzing), and serde's own
// messages quote the input. So the feature is off, and the key path of an error travels
// beside the error instead, in WHY.

std::thread_local! {
    static WHY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Records `field: e` (prefixed to what an inner value recorded) and returns a bare error.
fn wrap<E: de::Error>(field: &str, e: impl fmt::Display) -> E {
    WHY.with(|w| {
        let mut w = w.borrow_mut();
        let inner = if w.is_empty() {
            e.to_string()
        } else {
            std::mem::take(&mut *w)
        };
        *w = format!("{field}: {inner}");
    });
    E::custom("")
}

/// A message for an error of the document itself (no key to name).
fn fail<E: de::Error>(msg: impl fmt::Display) -> E {
    WHY.with(|w| *w.borrow_mut() = msg.to_string());
    E::custom("")
}

/// The message of the last failed parse: the key path, or serde-json-core's own words.
fn take_why(e: &serde_json_core::de::Error) -> String {
    let why = WHY.with(|w| std::mem::take(&mut *w.borrow_mut()));
    if why.is_empty() {
        e.to_string()
    } else {
        why
    }
}

fn text<'de, A: MapAccess<'de>, const N: usize>(
    map: &mut A,
    field: &str,
) -> Result<Text<N>, A::Error> {
    let s: &str = map.next_value().map_err(|e| wrap(field, e))?;
    Text::try_from(s).map_err(|_| wrap(field, format_args!("longer than {N} bytes")))
}

impl<'de> Deserialize<'de> for Board {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Board;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a board object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Board, A::Error> {
                let mut b = Board::default();
                while let Some(key) = map.next_key::<&str>()? {
                    match key {
                        "name" => b.name = text(&mut map, key)?,
                        "rom" => b.rom = Some(text(&mut map, key)?),
                        "data" => b.data = Some(text(&mut map, key)?),
                        "fstype" => b.fstype = Some(text(&mut map, key)?),
                        "format" => b.format = Some(text(&mut map, key)?),
                        "module_dir" => b.module_dir = Some(text(&mut map, key)?),
                        "tmpfs_size" => b.tmpfs_size = Some(text(&mut map, key)?),
                        "init" => b.init = Some(text(&mut map, key)?),
                        "mkfs" => b.mkfs = Some(text(&mut map, key)?),
                        "data_label" => b.data_label = Some(text(&mut map, key)?),
                        "stale_overlay" => b.stale_overlay = Some(text(&mut map, key)?),
                        "device_timeout_ms" => {
                            b.device_timeout_ms = Some(map.next_value().map_err(|e| wrap(key, e))?)
                        }
                        "modules" => b.modules = map.next_value::<Modules>()?.0,
                        other => return Err(fail(format_args!("unknown key `{other}`"))),
                    }
                }
                Ok(b)
            }
        }
        d.deserialize_map(V)
    }
}

struct Modules(heapless::Vec<Module, MAX_MODULES>);

impl<'de> Deserialize<'de> for Modules {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Modules;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("modules: a list of {\"name\": ..., \"params\": ...}")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Modules, A::Error> {
                let mut v = heapless::Vec::new();
                let mut i = 0;
                while let Some(m) = seq
                    .next_element::<Module>()
                    .map_err(|e| wrap(&format!("modules[{i}]"), e))?
                {
                    v.push(m).map_err(|_| {
                        wrap("modules", format_args!("more than {MAX_MODULES} entries"))
                    })?;
                    i += 1;
                }
                Ok(Modules(v))
            }
        }
        d.deserialize_seq(V)
    }
}

impl<'de> Deserialize<'de> for Module {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Module;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a module object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Module, A::Error> {
                let mut m = Module::default();
                while let Some(key) = map.next_key::<&str>()? {
                    match key {
                        "name" => m.name = text(&mut map, key)?,
                        "params" => m.params = Some(text(&mut map, key)?),
                        other => return Err(fail(format_args!("unknown key `{other}`"))),
                    }
                }
                if m.name.is_empty() {
                    return Err(fail("name: missing or empty"));
                }
                Ok(m)
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn uuid_selectors() {
        assert_eq!(
            Selector::parse("PARTUUID=5452574F-2211-4433-5566-778899AABB02"),
            Ok(Selector::PartUuid(
                "5452574f-2211-4433-5566-778899aabb02".into()
            ))
        );
        assert_eq!(
            Selector::parse("partuuid:deadbeef-02"),
            Ok(Selector::PartUuid("deadbeef-02".into()))
        );
        assert!(Selector::parse("PARTUUID=deadbeef-2").is_err());
        assert!(Selector::parse("PARTUUID=xyz").is_err());
        assert!(Selector::parse("UUID=deadbeef-02").is_err());
        assert!(Selector::parse("UUID=0123456789abcdef0123456789abcdef").is_err());
        let u = Selector::parse("UUID=01234567-89AB-cdef-0123-456789abcdef").unwrap();
        assert_eq!(u.to_string(), "UUID=01234567-89ab-cdef-0123-456789abcdef");
    }

    #[test]
    fn fuzz_crash_long_error_messages_are_errors_not_panics() {
        // With its custom-error-messages feature, serde-json-core 0.7 panics on messages
        // over 64 bytes.
        let crash = include_bytes!("../fuzz/regressions/board-long-error-message");
        assert!(Board::parse("b", crash).is_err());
        // A long message quoting non-ASCII input: an error naming the key, not a panic.
        let long = "é".repeat(40);
        let e = Board::parse(
            "b",
            format!("{{\"name\":\"b\",\"device_timeout_ms\":\"{long}\"}}").as_bytes(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("device_timeout_ms: "), "{e}");
        assert!(Board::parse("b", "{\"name\":\"é\"}".as_bytes()).is_ok());
    }

    use super::*;

    fn err(json: &str) -> String {
        Board::parse("b.json", json.as_bytes())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn full_board_parses() {
        let b = Board::parse(
            "b.json",
            br#"{
              "name": "qemu-aarch64-nor",
              "rom": "mtd:rootfs",
              "data": "mtd:rootfs_data",
              "fstype": "jffs2",
              "format": "erased,marker",
              "modules": [
                {"name": "mtd"},
                {"name": "cmdlinepart", "params": "mtdparts=0.flash:64m(bank0)ro,16m(rootfs)ro,-(rootfs_data)"}
              ],
              "module_dir": "/lib/modules",
              "device_timeout_ms": 3000,
              "tmpfs_size": "32m",
              "init": "/sbin/init",
              "mkfs": "/usr/sbin/mkfs.ext4",
              "data_label": "rootfs_data"
            }
            "#,
        )
        .unwrap();
        assert_eq!(b.name.as_str(), "qemu-aarch64-nor");
        assert_eq!(b.modules.len(), 2);
        assert_eq!(b.modules[1].name.as_str(), "cmdlinepart");
        assert!(b.modules[1]
            .params
            .as_deref()
            .unwrap()
            .starts_with("mtdparts="));
        assert_eq!(b.device_timeout_ms, Some(3000));
        assert_eq!(b.fs_choice(), FsChoice::Jffs2);
        assert_eq!(
            b.format_policy(),
            FormatPolicy {
                erased: true,
                zeroes: false,
                marker: true
            }
        );
    }

    #[test]
    fn minimal_board_takes_defaults() {
        let b = Board::parse("b.json", br#"{"name":"x"}"#).unwrap();
        assert!(b.rom.is_none() && b.data.is_none() && b.modules.is_empty());
        assert_eq!(b.fs_choice(), FsChoice::Auto);
        assert_eq!(b.format_policy(), FormatPolicy::default());
    }

    #[test]
    fn errors_name_the_field() {
        assert!(err(r#"{"name":"x","colour":"red"}"#).contains("unknown key `colour`"));
        let long = "a".repeat(40);
        assert!(err(&format!(r#"{{"name":"{long}"}}"#)).contains("name: longer than 32 bytes"));
        assert!(err(r#"{"name":"x","device_timeout_ms":"soon"}"#).contains("device_timeout_ms"));
        assert!(err(r#"{"name":"x","modules":[{"name":"a"},{"nme":"b"}]}"#)
            .contains("modules[1]: unknown key `nme`"));
        assert!(err(r#"{"name":"x","modules":[{"params":"a=1"}]}"#).contains("modules[0]"));
        assert!(err(r#"{"name":"x","rom":"sda1"}"#).contains("rom: `sda1` is not a selector"));
        assert!(err(r#"{"name":"x","fstype":"xfs"}"#).contains("fstype:"));
        assert!(err(r#"{"name":"x","format":"always"}"#).contains("format:"));
        assert!(err(r#"{"rom":"auto"}"#).contains("name: missing"));
    }

    #[test]
    fn malformed_json_is_an_error_not_a_panic() {
        for bad in [
            "",
            "{",
            "[]",
            r#"{"name":}"#,
            r#"{"name":"x"} trailing"#,
            "\u{0}",
        ] {
            assert!(Board::parse("b.json", bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn too_many_modules_and_oversized_files() {
        let mods: Vec<String> = (0..MAX_MODULES + 1)
            .map(|i| format!(r#"{{"name":"m{i}"}}"#))
            .collect();
        let e = err(&format!(r#"{{"name":"x","modules":[{}]}}"#, mods.join(",")));
        assert!(e.contains("modules"), "{e}");
        let big = format!(r#"{{"name":"x"{}}}"#, " ".repeat(MAX_BOARD_BYTES));
        assert!(matches!(
            Board::parse("b.json", big.as_bytes()),
            Err(BoardError::TooLarge { .. })
        ));
    }

    #[test]
    fn command_line_fstype_overrides_the_board_when_valid() {
        let b = Board::parse("b.json", br#"{"name":"x","fstype":"jffs2"}"#).unwrap();
        assert_eq!(b.fs_choice_or(None), FsChoice::Jffs2);
        assert_eq!(b.fs_choice_or(Some("ext4")), FsChoice::Ext4);
        assert_eq!(b.fs_choice_or(Some("xfs")), FsChoice::Jffs2);
    }

    #[test]
    fn every_shipped_board_file_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("board");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "json") {
                let b = Board::load(&p.display().to_string()).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(
                    Some(b.name.as_str()),
                    p.file_stem().and_then(|s| s.to_str())
                );
                n += 1;
            }
        }
        assert!(n >= 3, "board/ should hold the emulated boards");
    }

    #[test]
    fn selectors() {
        assert_eq!(
            Selector::parse("mtd:rootfs"),
            Ok(Selector::Mtd("rootfs".into()))
        );
        assert_eq!(
            Selector::parse("PARTLABEL=rootfs_data"),
            Ok(Selector::PartName("rootfs_data".into()))
        );
        assert_eq!(
            Selector::parse("LABEL=data"),
            Ok(Selector::Label("data".into()))
        );
        assert_eq!(
            Selector::parse("/dev/vda2"),
            Ok(Selector::Path("/dev/vda2".into()))
        );
        assert_eq!(Selector::parse("after-rom"), Ok(Selector::AfterRom));
        assert_eq!(
            Selector::parse("ubi:ubi/rootfs_data"),
            Ok(Selector::Ubi {
                mtd: Some("ubi".into()),
                volume: "rootfs_data".into()
            })
        );
        assert_eq!(
            Selector::parse("ubi:rootfs").map(|s| s.to_string()),
            Ok("ubi:rootfs".to_string())
        );
        assert!(Selector::parse("ubi:").is_err());
        assert!(Selector::parse("ubi:ubi/").is_err());
        assert!(Selector::parse("ubi:/x").is_err());
        assert!(Selector::parse("mtd:").is_err());
        assert!(Selector::parse("/dev/").is_err());
        assert!(Selector::parse("vda2").is_err());
        assert_eq!(Selector::Mtd("a".into()).to_string(), "mtd:a");
    }
}
