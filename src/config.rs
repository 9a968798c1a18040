//! The boot's configuration, resolved once: every `ovl.*` switch, board key and built-in
//! default in one place, each value with where it came from. Pure, so every precedence rule
//! is a unit test.
//!
//! Precedence is always: kernel command line, then the board file, then the built-in default.
//! A value that cannot even be parsed is refused here (with a note saying what was used
//! instead); a value the kernel or a program refuses later is retried with the default by the
//! fallback ladder in `preinit`, which needs [`Value::from`] to know whether a default exists
//! that differs from what failed.

use crate::board::{Board, FormatPolicy, FsChoice, Selector};
use crate::cmdline::Cmdline;
use crate::plan::{BootKind, Request};
use std::fmt;
use std::time::Duration;

pub const DEFAULT_INIT: &str = "/sbin/init";
pub const DEFAULT_MKFS: &str = "/usr/sbin/mkfs.ext4";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(3000);
/// No device wait may exceed this, whatever the command line or the board says: a typo such
/// as `ovl.timeout=3000` (meant as ms) must not stall a boot for an hour.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_TMPFS_SIZE: &str = "50%";
pub const DEFAULT_DATA_LABEL: &str = "rootfs_data";

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// The kernel command line switch of this name.
    Cmdline(&'static str),
    /// The board file key of this name.
    Board(&'static str),
    Default,
}

impl fmt::Display for From {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            From::Cmdline(k) => write!(f, "{k}= on the command line"),
            From::Board(k) => write!(f, "the board's {k}"),
            From::Default => write!(f, "the default"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value<T> {
    pub value: T,
    pub from: From,
}

impl<T> Value<T> {
    fn new(value: T, from: From) -> Value<T> {
        Value { value, from }
    }
    pub fn is_default(&self) -> bool {
        self.from == From::Default
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub request: Request,
    /// Where to look for the ROM, best first: the command line's choice, then the board's,
    /// then `auto`. Each later one is tried only when the earlier found nothing.
    pub rom: Vec<Value<Selector>>,
    /// The same for the writable partition.
    pub data: Vec<Value<Selector>>,
    pub fs: Value<FsChoice>,
    pub format: FormatPolicy,
    pub timeout: Value<Duration>,
    pub tmpfs_size: Value<String>,
    pub init: Value<String>,
    pub mkfs: Value<String>,
    pub data_label: Value<String>,
    /// `ovl.reset[=WORD]` (or dracut's `rd.overlay.reset`): empty the overlay once; the word
    /// (`1` when bare) is recorded so the same request is not done again on the next boot.
    pub reset: Option<String>,
    /// Board `stale_overlay: keep`: an overlay made for another ROM is kept.
    pub keep_stale: bool,
    /// Values refused while resolving, and what was used instead: published with the state.
    pub notes: Vec<String>,
}

/// Seconds, decimals allowed; None for anything else.
pub fn parse_seconds(s: &str) -> Option<Duration> {
    crate::decimal::parse_seconds(s)
}

fn capped(d: Duration, from: From, notes: &mut Vec<String>) -> Duration {
    if d > MAX_TIMEOUT {
        notes.push(format!(
            "{from} asks to wait {} ms for devices; capped at {} ms",
            crate::decimal::millis(d),
            crate::decimal::millis(MAX_TIMEOUT)
        ));
        MAX_TIMEOUT
    } else {
        d
    }
}

/// The candidates for one partition, deduplicated, ending in `auto`.
fn selectors(
    cmd: Option<(&'static str, &str)>,
    board: Option<(&'static str, &str)>,
    notes: &mut Vec<String>,
) -> Vec<Value<Selector>> {
    let mut out: Vec<Value<Selector>> = Vec::new();
    let given = [
        cmd.map(|(k, v)| (From::Cmdline(k), v)),
        board.map(|(k, v)| (From::Board(k), v)),
    ];
    for (from, text) in given.into_iter().flatten() {
        match Selector::parse(text) {
            Ok(sel) if !out.iter().any(|v| v.value == sel) => out.push(Value::new(sel, from)),
            Ok(_) => {}
            Err(e) => notes.push(format!("{from} refused: {e}")),
        }
    }
    if !out.iter().any(|v| v.value == Selector::Auto) {
        out.push(Value::new(Selector::Auto, From::Default));
    }
    out
}

fn text(
    cmd: Option<(&'static str, Option<&str>)>,
    board: (&'static str, Option<&str>),
    default: &str,
) -> Value<String> {
    let pick = |k: &'static str, v: Option<&str>, from: fn(&'static str) -> From| {
        v.filter(|s| !s.is_empty())
            .map(|s| Value::new(s.to_string(), from(k)))
    };
    cmd.and_then(|(k, v)| pick(k, v, From::Cmdline))
        .or_else(|| pick(board.0, board.1, From::Board))
        .unwrap_or_else(|| Value::new(default.to_string(), From::Default))
}

impl Config {
    pub fn resolve(cmdline: &Cmdline, board: &Board, boot: BootKind) -> Config {
        let mut notes = Vec::new();
        let request = if cmdline.flag("ovl.failsafe") || cmdline.flag("failsafe") {
            Request::Failsafe
        } else if cmdline.flag("ovl.volatile") {
            Request::Volatile
        } else {
            Request::Normal
        };
        // root= is the kernel's own way to name the ROM; it may use the PARTLABEL=/LABEL= forms.
        let rom_cmd = cmdline
            .get("ovl.rom")
            .map(|v| ("ovl.rom", v))
            .or_else(|| cmdline.get("root").map(|v| ("root", v)));
        let rom = selectors(
            rom_cmd,
            board.rom.as_deref().map(|v| ("rom", v)),
            &mut notes,
        );
        let data = selectors(
            cmdline.get("ovl.data").map(|v| ("ovl.data", v)),
            board.data.as_deref().map(|v| ("data", v)),
            &mut notes,
        );

        let board_fs = Value::new(board.fs_choice(), From::Board("fstype"));
        let fs = match cmdline.get("ovl.fstype").map(FsChoice::parse) {
            Some(Ok(f)) => Value::new(f, From::Cmdline("ovl.fstype")),
            Some(Err(e)) => {
                notes.push(format!("ovl.fstype= refused: {e}; used the board's"));
                board_fs
            }
            None if board.fstype.is_some() => board_fs,
            None => Value::new(FsChoice::Auto, From::Default),
        };

        let board_timeout = board.device_timeout_ms.map(|ms| {
            let from = From::Board("device_timeout_ms");
            Value::new(
                capped(Duration::from_millis(ms.into()), from, &mut notes),
                from,
            )
        });
        let timeout = match cmdline.get("ovl.timeout").map(|s| (s, parse_seconds(s))) {
            Some((_, Some(d))) => {
                let from = From::Cmdline("ovl.timeout");
                Value::new(capped(d, from, &mut notes), from)
            }
            Some((s, None)) => {
                notes.push(format!(
                    "ovl.timeout={s} refused: not a number of seconds; used {}",
                    if board_timeout.is_some() {
                        "the board's"
                    } else {
                        "the default"
                    }
                ));
                board_timeout.unwrap_or_else(|| Value::new(DEFAULT_TIMEOUT, From::Default))
            }
            None => board_timeout.unwrap_or_else(|| Value::new(DEFAULT_TIMEOUT, From::Default)),
        };

        // With an initramfs the kernel ignores init= and leaves it to us; booted from the ROM,
        // init= is preinit itself.
        let kernel_init = match boot {
            BootKind::Initramfs => cmdline.get("init").map(|v| ("init", v)),
            BootKind::Rootfs => None,
        };
        let init_cmd = cmdline
            .get("ovl.init")
            .filter(|v| !v.is_empty())
            .map(|v| ("ovl.init", v))
            .or(kernel_init);
        Config {
            request,
            rom,
            data,
            fs,
            format: board.format_policy(),
            timeout,
            tmpfs_size: text(
                Some(("ovl.tmpfs_size", cmdline.get("ovl.tmpfs_size"))),
                ("tmpfs_size", board.tmpfs_size.as_deref()),
                DEFAULT_TMPFS_SIZE,
            ),
            init: text(
                init_cmd.map(|(k, v)| (k, Some(v))),
                ("init", board.init.as_deref()),
                DEFAULT_INIT,
            ),
            mkfs: text(None, ("mkfs", board.mkfs.as_deref()), DEFAULT_MKFS),
            data_label: text(
                None,
                ("data_label", board.data_label.as_deref()),
                DEFAULT_DATA_LABEL,
            ),
            reset: reset_word(cmdline, &mut notes),
            keep_stale: board.stale_overlay.as_deref() == Some("keep"),
            notes,
        }
    }
}

/// The reset request's word: letters, digits, `.`, `_`, `-`, at most 32 of them.
fn reset_word(cmdline: &Cmdline, notes: &mut Vec<String>) -> Option<String> {
    let (key, v) = ["ovl.reset", "rd.overlay.reset"]
        .into_iter()
        .find_map(|k| cmdline.get(k).map(|v| (k, v)))?;
    if !cmdline.flag(key) {
        return None;
    }
    let word = if v.is_empty() { "1" } else { v };
    let ok = word.len() <= 32
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Some(word.to_string())
    } else {
        notes.push(format!(
            "{key}={v} refused: the word may hold only letters, digits, . _ - (32 at most); no reset"
        ));
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board(json: &str) -> Board {
        Board::parse("t", json.as_bytes()).unwrap()
    }

    fn resolve(cmd: &str, b: &Board) -> Config {
        Config::resolve(&Cmdline::parse(cmd), b, BootKind::Initramfs)
    }

    #[test]
    fn reset_switch_words() {
        let b = Board::default();
        assert_eq!(resolve("", &b).reset, None);
        assert_eq!(resolve("ovl.reset", &b).reset.as_deref(), Some("1"));
        assert_eq!(resolve("ovl.reset=0", &b).reset, None);
        assert_eq!(
            resolve("rd.overlay.reset=1", &b).reset.as_deref(),
            Some("1")
        );
        assert_eq!(
            resolve("ovl.reset=2026-12", &b).reset.as_deref(),
            Some("2026-12")
        );
        let c = resolve("ovl.reset=a/b", &b);
        assert_eq!(c.reset, None);
        assert!(c.notes[0].contains("refused"), "{:?}", c.notes);
        assert!(!c.keep_stale);
        assert!(resolve("", &board(r#"{"name":"x","stale_overlay":"keep"}"#)).keep_stale);
        assert!(Board::parse("t", br#"{"name":"x","stale_overlay":"wipe"}"#).is_err());
    }

    #[test]
    fn defaults_without_board_or_switches() {
        let c = resolve("", &Board::default());
        assert_eq!(c.request, Request::Normal);
        assert_eq!(c.rom, [Value::new(Selector::Auto, From::Default)]);
        assert_eq!(c.data, [Value::new(Selector::Auto, From::Default)]);
        assert_eq!(c.fs, Value::new(FsChoice::Auto, From::Default));
        assert_eq!(c.timeout, Value::new(DEFAULT_TIMEOUT, From::Default));
        assert_eq!(c.tmpfs_size.value, DEFAULT_TMPFS_SIZE);
        assert_eq!(c.init.value, DEFAULT_INIT);
        assert_eq!(c.mkfs.value, DEFAULT_MKFS);
        assert_eq!(c.data_label.value, DEFAULT_DATA_LABEL);
        assert!(c.notes.is_empty());
    }

    #[test]
    fn command_line_beats_board_beats_default() {
        let b = board(
            r#"{"name":"b","rom":"mtd:rootfs","data":"mtd:rootfs_data","fstype":"jffs2",
                "device_timeout_ms":2000,"tmpfs_size":"16m","init":"/sbin/procd",
                "mkfs":"/sbin/mke2fs","data_label":"data"}"#,
        );
        let c = resolve("", &b);
        assert_eq!(
            c.rom,
            [
                Value::new(Selector::Mtd("rootfs".into()), From::Board("rom")),
                Value::new(Selector::Auto, From::Default)
            ]
        );
        assert_eq!(c.fs, Value::new(FsChoice::Jffs2, From::Board("fstype")));
        assert_eq!(c.timeout.value, Duration::from_secs(2));
        assert_eq!(
            c.tmpfs_size,
            Value::new("16m".into(), From::Board("tmpfs_size"))
        );
        assert_eq!(c.init.value, "/sbin/procd");
        assert_eq!(
            c.mkfs,
            Value::new("/sbin/mke2fs".into(), From::Board("mkfs"))
        );
        assert_eq!(c.data_label.value, "data");

        let c = resolve(
            "ovl.rom=/dev/vda1 ovl.data=label:x ovl.fstype=ext4 ovl.timeout=0.5 \
             ovl.tmpfs_size=8m init=/bin/sh",
            &b,
        );
        assert_eq!(c.rom[0].from, From::Cmdline("ovl.rom"));
        assert_eq!(c.rom.len(), 3, "then the board's, then auto");
        assert_eq!(
            c.data[0],
            Value::new(Selector::Label("x".into()), From::Cmdline("ovl.data"))
        );
        assert_eq!(
            c.fs,
            Value::new(FsChoice::Ext4, From::Cmdline("ovl.fstype"))
        );
        assert_eq!(c.timeout.value, Duration::from_millis(500));
        assert_eq!(c.tmpfs_size.from, From::Cmdline("ovl.tmpfs_size"));
        assert_eq!(c.init, Value::new("/bin/sh".into(), From::Cmdline("init")));
    }

    #[test]
    fn root_names_the_rom_unless_ovl_rom_does() {
        let c = resolve("root=PARTLABEL=rootfs", &Board::default());
        assert_eq!(c.rom[0].from, From::Cmdline("root"));
        let c = resolve("root=/dev/vda1 ovl.rom=mtd:rootfs", &Board::default());
        assert_eq!(c.rom[0].value, Selector::Mtd("rootfs".into()));
    }

    #[test]
    fn typos_are_refused_with_a_note_and_the_next_value_is_used() {
        let b = board(r#"{"name":"b","data":"mtd:rootfs_data","device_timeout_ms":1000}"#);
        let c = resolve(
            "ovl.data=mdt:rootfs_data ovl.rom= ovl.fstype=ext5 ovl.timeout=soon",
            &b,
        );
        assert_eq!(c.data[0].value, Selector::Mtd("rootfs_data".into()));
        assert_eq!(c.rom, [Value::new(Selector::Auto, From::Default)]);
        assert_eq!(c.fs.value, FsChoice::Auto);
        assert_eq!(c.timeout.value, Duration::from_secs(1));
        assert_eq!(c.notes.len(), 4, "{:#?}", c.notes);
        assert!(c.notes.iter().any(|n| n.contains("mdt:rootfs_data")));
        assert!(c.notes.iter().any(|n| n.contains("ovl.timeout=soon")));
    }

    #[test]
    fn timeouts_are_capped() {
        let c = resolve("ovl.timeout=3000", &Board::default());
        assert_eq!(c.timeout.value, MAX_TIMEOUT);
        assert!(c.notes[0].contains("capped"), "{:?}", c.notes);
        let b = board(r#"{"name":"b","device_timeout_ms":4000000000}"#);
        assert_eq!(resolve("", &b).timeout.value, MAX_TIMEOUT);
        assert_eq!(parse_seconds("0.25"), Some(Duration::from_millis(250)));
        assert_eq!(parse_seconds("-1"), None);
        assert_eq!(parse_seconds("NaN"), None);
        assert_eq!(parse_seconds("inf"), None);
    }

    #[test]
    fn requests_and_init_by_boot_kind() {
        assert_eq!(
            resolve("failsafe", &Board::default()).request,
            Request::Failsafe
        );
        assert_eq!(
            resolve("ovl.failsafe=0 ovl.volatile", &Board::default()).request,
            Request::Volatile
        );
        let cmd = Cmdline::parse("init=/bin/x");
        let b = Board::default();
        assert_eq!(
            Config::resolve(&cmd, &b, BootKind::Initramfs).init.value,
            "/bin/x"
        );
        assert_eq!(
            Config::resolve(&cmd, &b, BootKind::Rootfs).init.value,
            DEFAULT_INIT
        );
        let cmd = Cmdline::parse("init=/bin/x ovl.init=/bin/y");
        assert_eq!(
            Config::resolve(&cmd, &b, BootKind::Rootfs).init.value,
            "/bin/y"
        );
    }
}
