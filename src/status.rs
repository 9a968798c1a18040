//! `ovlctl status`: what preinit chose (from its state file) and what is mounted now (from the
//! live mount table), for a person or, with `--json`, for a script.

use crate::state::State;
use serde::Serialize;
use std::path::Path;

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub mount_point: String,
    pub fstype: String,
    pub source: String,
    pub options: String,
}

/// The kernel escapes space, tab, newline and backslash in paths as octal.
fn unescape(s: &str) -> String {
    let mut b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let octal = |c: u8| (b'0'..=b'7').contains(&c).then(|| c - b'0');
    while let Some((&c, rest)) = b.split_first() {
        match (c, rest) {
            (b'\\', [x, y, z, tail @ ..]) => {
                // \ooo of a byte (\000 to \377); anything above is no escape the kernel
                // writes, and stays as text rather than wrapping into a wrong byte.
                if let (Some(x @ 0..=3), Some(y), Some(z)) = (octal(*x), octal(*y), octal(*z)) {
                    out.push(x * 64 + y * 8 + z);
                    b = tail;
                    continue;
                }
                out.push(c);
            }
            _ => out.push(c),
        }
        b = rest;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            Some(MountInfo {
                mount_point: unescape(l.get(4)?),
                options: l.get(5)?.to_string(),
                fstype: r.first()?.to_string(),
                source: unescape(r.get(1)?),
            })
        })
        .collect()
}

/// The mount on top at `point` (the last one listed).
pub fn top<'a>(mounts: &'a [MountInfo], point: &str) -> Option<&'a MountInfo> {
    mounts.iter().rev().find(|m| m.mount_point == point)
}

#[derive(Debug, Serialize)]
struct DevJson<'a> {
    device: Option<&'a str>,
    fstype: Option<&'a str>,
    /// The ROM's identity, which the overlay's record is checked against.
    id: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct FirstBootJson<'a> {
    /// pending or ready, read from the overlay's record now; null off a persistent overlay.
    state: Option<&'a str>,
    /// Why preinit emptied the upper this boot: pending, reset, stale; null when it did not.
    cleared_at_boot: Option<&'a str>,
    /// The ROM the overlay had been made for, when another one booted over it.
    stale_from: Option<&'a str>,
    /// This boot applied a keep container: `restored`, `fresh` (nothing kept) or `refused`.
    upgrade: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct WaitingJson {
    /// The writable partition carries a reset mark: the next boot erases or formats it.
    reset: bool,
    /// An upgrade backup waits beside the upper.
    upgrade: bool,
    /// Blocks of old nodes, obsoleted by a reset, that JFFS2 has still to erase (it does
    /// so in the background); absent when the overlay is not JFFS2 on MTD.
    erase_blocks: Option<u32>,
}

#[derive(Debug, Serialize)]
struct DataJson<'a> {
    device: Option<&'a str>,
    fstype: Option<&'a str>,
    content: Option<&'a str>,
    action: Option<&'a str>,
}

/// The UBI device under the writable volume, as sysfs says now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UbiInfo {
    pub device: crate::board::Text<16>,
    pub volume: crate::board::Text<128>,
    pub mtd: Option<u64>,
    pub bad_pebs: Option<u64>,
    pub max_ec: Option<u64>,
    pub mean_ec: Option<u64>,
}

/// [`UbiInfo`] for a volume node `/dev/ubiN_M`.
pub fn ubi_info(sys_dir: &Path, dev: &str) -> Option<UbiInfo> {
    let v = crate::ubi::volume_of(sys_dir, dev)?;
    let num = |w: &str| crate::ubi::device_number(sys_dir, v.ubi, w);
    Some(UbiInfo {
        device: crate::state::fit(&format!("ubi{}", v.ubi)),
        volume: crate::state::fit(&v.name),
        mtd: num("mtd_num"),
        bad_pebs: num("bad_peb_count"),
        max_ec: num("max_ec"),
        mean_ec: num("mean_ec"),
    })
}

#[derive(Debug, Serialize)]
struct UpperJson<'a> {
    mounted: bool,
    fstype: Option<&'a str>,
    source: Option<&'a str>,
    total_bytes: u64,
    used_bytes: u64,
    free_bytes: u64,
    /// Free inodes; null where the file system does not count them (JFFS2).
    free_inodes: Option<u64>,
    /// Less than [`LOW_SPACE_PERCENT`] of the space or of the inodes is free.
    low_space: bool,
}

/// Below this share of free space (or free inodes) on /overlay, status warns: JFFS2 needs a
/// few free erase blocks for garbage collection, and a full upper stops every write.
pub const LOW_SPACE_PERCENT: u64 = 10;

/// Space on /overlay as statvfs gives it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Space {
    pub total: u64,
    pub free: u64,
    pub inodes: u64,
    pub free_inodes: u64,
}

impl Space {
    fn low(&self) -> bool {
        let low = |free: u64, total: u64| {
            total > 0 && free.saturating_mul(100) < total.saturating_mul(LOW_SPACE_PERCENT)
        };
        low(self.free, self.total) || low(self.free_inodes, self.inodes)
    }
}

#[derive(Debug, Serialize)]
struct RootJson<'a> {
    fstype: Option<&'a str>,
    source: Option<&'a str>,
    read_only: bool,
}

#[derive(Debug, Serialize)]
struct TimesJson {
    kernel_to_preinit_us: u64,
    preinit_us: u64,
    preinit_peak_rss_kib: u64,
}

#[derive(Debug, Serialize)]
struct StatusJson<'a> {
    mode: &'a str,
    persistent: bool,
    reason: Option<&'a str>,
    boot: &'a str,
    board: Option<&'a str>,
    rom: DevJson<'a>,
    data: DataJson<'a>,
    upper: UpperJson<'a>,
    root: RootJson<'a>,
    first_boot: FirstBootJson<'a>,
    waiting: WaitingJson,
    init: &'a str,
    modules_loaded: u32,
    modules_failed: &'a [crate::board::Text<32>],
    times: TimesJson,
    steps: &'a [crate::state::Timing],
    notes: &'a [crate::board::Text<200>],
    /// `{device, volume, mtd, bad_pebs, max_ec, mean_ec}` when the writable partition is a UBI
    /// volume; null otherwise.
    ubi: Option<&'a UbiInfo>,
}

pub struct Status {
    pub state: State,
    pub mounts: Vec<MountInfo>,
    /// statvfs of /overlay.
    pub overlay_space: Option<Space>,
    /// The first-boot record in /overlay, read now (persistent overlays only).
    pub first_boot: Option<crate::overlay::FirstBoot>,
    /// The writable partition, not mounted, carries a reset mark.
    pub reset_waiting: bool,
    /// An upgrade backup waits in /overlay.
    pub upgrade_waiting: bool,
    /// The mounted JFFS2's blocks of obsolete old nodes not erased yet.
    pub erase_waiting: Option<u32>,
    /// The writable partition is a UBI volume: its device's figures.
    pub ubi: Option<UbiInfo>,
}

impl Status {
    pub fn persistent(&self) -> bool {
        self.state.mode.as_str() == "persistent"
    }

    /// 0: persistent; 1: running, but on tmpfs, failsafe or the bare ROM.
    pub fn exit_code(&self) -> i32 {
        if self.persistent() {
            0
        } else {
            1
        }
    }

    fn json_view(&self) -> StatusJson<'_> {
        let s = &self.state;
        let overlay = top(&self.mounts, "/overlay");
        let root = top(&self.mounts, "/");
        let rom = top(&self.mounts, "/rom");
        let space = self.overlay_space.unwrap_or_default();
        let (total, free) = (space.total, space.free);
        StatusJson {
            mode: &s.mode,
            persistent: self.persistent(),
            reason: s.reason.as_deref(),
            boot: &s.boot,
            board: s.board.as_deref(),
            rom: DevJson {
                device: s.rom.as_deref(),
                fstype: rom.map(|m| m.fstype.as_str()).or(Some("squashfs")),
                id: s.rom_id.as_deref(),
            },
            data: DataJson {
                device: s.data.as_deref(),
                fstype: s.data_fstype.as_deref(),
                content: s.data_content.as_deref(),
                action: s.data_action.as_deref(),
            },
            upper: UpperJson {
                mounted: overlay.is_some(),
                fstype: overlay.map(|m| m.fstype.as_str()),
                source: overlay.map(|m| m.source.as_str()),
                total_bytes: total,
                used_bytes: total.saturating_sub(free),
                free_bytes: free,
                free_inodes: (space.inodes > 0).then_some(space.free_inodes),
                low_space: space.low(),
            },
            root: RootJson {
                fstype: root.map(|m| m.fstype.as_str()),
                source: root.map(|m| m.source.as_str()),
                read_only: root.is_some_and(|m| m.options.split(',').any(|o| o == "ro")),
            },
            first_boot: FirstBootJson {
                state: self.first_boot.map(|f| f.name()),
                cleared_at_boot: s.cleared.as_deref(),
                stale_from: s.stale_from.as_deref(),
                upgrade: s.upgrade.as_deref(),
            },
            waiting: WaitingJson {
                reset: self.reset_waiting,
                upgrade: self.upgrade_waiting,
                erase_blocks: self.erase_waiting,
            },
            init: &s.init,
            modules_loaded: s.modules_loaded,
            modules_failed: &s.modules_failed,
            times: TimesJson {
                kernel_to_preinit_us: s.started_us,
                preinit_us: s.total_us,
                preinit_peak_rss_kib: s.peak_rss_kib,
            },
            steps: &s.steps,
            notes: &s.notes,
            ubi: self.ubi.as_ref(),
        }
    }

    pub fn to_json(&self) -> Result<String, String> {
        let mut buf = vec![0u8; 8192];
        let n =
            serde_json_core::to_slice(&self.json_view(), &mut buf).map_err(|e| e.to_string())?;
        buf.truncate(n);
        String::from_utf8(buf).map_err(|e| e.to_string())
    }

    pub fn to_text(&self) -> String {
        let v = self.json_view();
        let mut out = String::new();
        let mut line = |k: &str, v: String| out.push_str(&format!("{k:<9}{v}\n"));
        line("mode:", v.mode.to_string());
        if let Some(r) = v.reason {
            line("reason:", r.to_string());
        }
        line(
            "boot:",
            format!(
                "{}{}",
                v.boot,
                v.board.map(|b| format!(" (board {b})")).unwrap_or_default()
            ),
        );
        line(
            "rom:",
            format!(
                "{} (squashfs) at /rom{}",
                v.rom.device.unwrap_or("?"),
                v.rom.id.map(|i| format!(", id {i}")).unwrap_or_default()
            ),
        );
        if let Some(d) = v.data.device {
            line(
                "data:",
                format!(
                    "{d}: found {}, {}",
                    v.data.content.unwrap_or("?"),
                    match (v.data.action, v.data.fstype) {
                        (Some(a), Some(f)) => format!("{a} as {f}"),
                        _ => "not used".to_string(),
                    }
                ),
            );
        }
        if let Some(u) = v.ubi {
            let n = |x: Option<u64>| x.map_or("?".to_string(), |v| v.to_string());
            line(
                "ubi:",
                format!(
                    "{} volume {} on mtd{}: {} bad PEBs, erase counter max {} mean {}",
                    u.device,
                    u.volume,
                    n(u.mtd),
                    n(u.bad_pebs),
                    n(u.max_ec),
                    n(u.mean_ec)
                ),
            );
        }
        line(
            "root:",
            format!(
                "{} {}{}",
                v.root.fstype.unwrap_or("?"),
                v.root.source.unwrap_or("?"),
                if v.root.read_only { " (READ-ONLY)" } else { "" }
            ),
        );
        if v.upper.mounted {
            let pct = (v.upper.used_bytes * 100)
                .checked_div(v.upper.total_bytes)
                .unwrap_or(0);
            line(
                "upper:",
                format!(
                    "/overlay {} {}, {} used of {} ({pct}%)",
                    v.upper.fstype.unwrap_or("?"),
                    v.upper.source.unwrap_or("?"),
                    human(v.upper.used_bytes),
                    human(v.upper.total_bytes)
                ),
            );
            if v.upper.low_space {
                line(
                    "WARNING:",
                    format!(
                        "/overlay is nearly full ({} free{}): free space or the device may stop \
                         writing",
                        human(v.upper.free_bytes),
                        v.upper
                            .free_inodes
                            .map(|i| format!(", {i} free inodes"))
                            .unwrap_or_default()
                    ),
                );
            }
        } else {
            line("upper:", "/overlay is not mounted".to_string());
        }
        if let Some(f) = v.first_boot.state {
            let mut t = match f {
                "pending" => "pending: `ovlctl firstboot` has not completed; the next boot \
                              empties the overlay again"
                    .to_string(),
                _ => "ready".to_string(),
            };
            if let Some(c) = v.first_boot.cleared_at_boot {
                t.push_str(&format!(" (emptied at boot: {c})"));
            }
            line("first:", t);
        }
        if let Some(w) = v.first_boot.stale_from {
            line("stale:", format!("the overlay had been made for ROM {w}"));
        }
        if let Some(u) = v.first_boot.upgrade {
            line(
                "upgrade:",
                match u {
                    "restored" => "this boot upgraded: the kept configuration was restored",
                    "fresh" => "this boot upgraded: nothing was kept (-n), a fresh overlay",
                    _ => "this boot upgraded: the kept configuration was refused (see notes)",
                }
                .into(),
            );
        }
        if v.waiting.reset {
            line(
                "waiting:",
                "a reset: the next boot erases or formats the writable partition".into(),
            );
        }
        if let Some(n @ 1..) = v.waiting.erase_blocks {
            line(
                "waiting:",
                format!("{n} blocks of old nodes for JFFS2 to erase (in the background)"),
            );
        }
        if v.waiting.upgrade {
            line(
                "waiting:",
                "a kept configuration in /overlay (removed when the first boot completes)".into(),
            );
        }
        for n in v.notes {
            line("note:", n.to_string());
        }
        let steps: Vec<String> = v
            .steps
            .iter()
            .map(|t| format!("{} {}", t.step, crate::decimal::ms(t.us)))
            .collect();
        line(
            "preinit:",
            format!(
                "{} ms ({})",
                crate::decimal::ms(v.times.preinit_us),
                steps.join(", ")
            ),
        );
        out
    }
}

fn human(b: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut div = 1u64;
    let mut u = 0;
    while b / div >= 1024 && u < UNITS.len() - 1 {
        div *= 1024;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        let v = crate::decimal::Fixed::ratio(b, div, 1);
        format!("{v} {}", UNITS.get(u).unwrap_or(&"GiB"))
    }
}

/// Reads the state file: the given one, or the first of the usual places.
pub fn read_state(state_path: Option<&Path>) -> anyhow::Result<State> {
    use anyhow::Context;
    let path = match state_path {
        Some(p) => p.to_path_buf(),
        None => crate::state::STATE_PATHS
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
            .map(Path::to_path_buf)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no state file at {}: this system was not booted by ovl preinit",
                    crate::state::STATE_PATHS.join(" or ")
                )
            })?,
    };
    let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    State::from_json(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The live mount table.
pub fn live_mounts() -> Vec<MountInfo> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse_mountinfo(&t))
        .unwrap_or_default()
}

/// Reads the state file and the live table, and what the overlay and the partition say now.
pub fn gather(state_path: Option<&Path>) -> anyhow::Result<Status> {
    let state = read_state(state_path)?;
    let mounts = live_mounts();
    // The field types are narrower on 32-bit targets, so the casts are not no-ops there.
    #[allow(clippy::unnecessary_cast)]
    let overlay_space = nix::sys::statvfs::statvfs("/overlay").ok().map(|s| {
        let f = s.fragment_size() as u64;
        Space {
            total: (s.blocks() as u64).saturating_mul(f),
            free: (s.blocks_available() as u64).saturating_mul(f),
            inodes: s.files() as u64,
            free_inodes: s.files_available() as u64,
        }
    });
    let overlay_space = top(&mounts, "/overlay").and(overlay_space);
    let overlay = Path::new("/overlay");
    let first_boot = if state.mode.as_str() == "persistent" {
        crate::overlay::read(overlay)
            .ok()
            .flatten()
            .map(|r| r.first_boot)
    } else {
        None
    };
    let reset_waiting = state.mode.as_str() != "persistent"
        && state.data.as_deref().is_some_and(|d| {
            matches!(
                crate::reset::partition_content(Path::new(d)),
                Ok(crate::probe::magic::Content::ResetMark | crate::probe::magic::Content::Marker)
            )
        });
    let erase_waiting = if state.mode.as_str() == "persistent"
        && state.data_fstype.as_deref() == Some("jffs2")
    {
        state
            .data
            .as_deref()
            .and_then(|d| crate::reset::mtd_part(Path::new(d)))
            .and_then(|p| {
                crate::probe::jffs2::obsolete_first(Path::new(&p.char_dev()), p.size, p.erasesize)
                    .ok()
            })
    } else {
        None
    };
    let ubi = state
        .data
        .as_deref()
        .and_then(|d| ubi_info(Path::new("/sys"), d));
    Ok(Status {
        state,
        mounts,
        overlay_space,
        first_boot,
        reset_waiting,
        erase_waiting,
        upgrade_waiting: crate::overlay::upgrade_waiting(overlay),
        ubi,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::fit;

    const MOUNTINFO: &str = "\
22 1 0:20 / / rw,noatime - overlay ovl:persistent rw,lowerdir=/rom,upperdir=/overlay/upper,workdir=/overlay/work
23 22 31:1 / /rom ro,relatime - squashfs /dev/mtdblock1 ro
24 22 31:2 / /overlay rw,noatime - jffs2 /dev/mtdblock2 rw
25 22 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw,mode=755
26 22 0:30 / /with\\040space rw - tmpfs tmpfs rw
";

    fn status(mode: &str) -> Status {
        let mut state = State {
            version: 1,
            mode: fit(mode),
            boot: fit("initramfs"),
            rom: Some(fit("/dev/mtdblock1")),
            data: Some(fit("/dev/mtdblock2")),
            data_content: Some(fit("erased")),
            data_fstype: Some(fit("jffs2")),
            data_action: Some(fit("mount")),
            init: fit("/sbin/init"),
            total_us: 12_345,
            ..State::default()
        };
        state.add_step("find", 1000);
        Status {
            state,
            mounts: parse_mountinfo(MOUNTINFO),
            overlay_space: Some(Space {
                total: 4 << 20,
                free: 3 << 20,
                inodes: 0,
                free_inodes: 0,
            }),
            first_boot: Some(crate::overlay::FirstBoot::Ready),
            reset_waiting: false,
            upgrade_waiting: false,
            erase_waiting: None,
            ubi: None,
        }
    }

    #[test]
    fn octal_escapes_over_a_byte_are_kept_as_text() {
        // Found by fuzzing (a helper's run): \777 used to wrap into a wrong byte.
        assert_eq!(unescape("a\\777b"), "a\\777b");
        assert_eq!(unescape("a\\377"), String::from_utf8_lossy(b"a\xff"));
        assert_eq!(unescape("x\\040y\\1"), "x y\\1");
    }

    #[test]
    fn mountinfo_parsing() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 5);
        assert_eq!(top(&m, "/").unwrap().source, "ovl:persistent");
        assert_eq!(top(&m, "/overlay").unwrap().fstype, "jffs2");
        assert_eq!(m[4].mount_point, "/with space");
        assert!(parse_mountinfo("garbage\n").is_empty());
    }

    #[test]
    fn json_has_stable_keys_and_exit_code_follows_mode() {
        let s = status("persistent");
        let j = s.to_json().unwrap();
        for key in [
            r#""mode":"persistent""#,
            r#""persistent":true"#,
            r#""reason":null"#,
            r#""data":{"device":"/dev/mtdblock2","fstype":"jffs2","content":"erased","action":"mount"}"#,
            r#""upper":{"mounted":true,"fstype":"jffs2","source":"/dev/mtdblock2","total_bytes":4194304,"used_bytes":1048576,"free_bytes":3145728,"free_inodes":null,"low_space":false}"#,
            r#""root":{"fstype":"overlay","source":"ovl:persistent","read_only":false}"#,
            r#""times":{"kernel_to_preinit_us":0,"preinit_us":12345,"preinit_peak_rss_kib":0}"#,
        ] {
            assert!(j.contains(key), "{key} not in {j}");
        }
        assert_eq!(s.exit_code(), 0);
        assert_eq!(status("tmpfs").exit_code(), 1);
        assert_eq!(status("failsafe").exit_code(), 1);
    }

    #[test]
    fn text_says_what_and_why() {
        let mut s = status("tmpfs");
        s.state.reason = Some(fit("/dev/vda2 holds zeroes, not ext4; left untouched"));
        let t = s.to_text();
        assert!(t.contains("mode:    tmpfs"), "{t}");
        assert!(t.contains("reason:  /dev/vda2 holds zeroes"), "{t}");
        assert!(t.contains("1.0 MiB used of 4.0 MiB (25%)"), "{t}");
        assert!(!t.contains("WARNING"), "{t}");
    }

    #[test]
    fn nearly_full_overlays_are_warned_about() {
        let mut s = status("persistent");
        s.state.add_note("ovl.timeout=soon refused");
        s.overlay_space = Some(Space {
            total: 100 << 20,
            free: 9 << 20,
            inodes: 1000,
            free_inodes: 500,
        });
        let t = s.to_text();
        assert!(
            t.contains("WARNING: /overlay is nearly full (9.0 MiB free, 500 free inodes)"),
            "{t}"
        );
        assert!(t.contains("note:    ovl.timeout=soon refused"), "{t}");
        assert!(s.to_json().unwrap().contains(r#""low_space":true"#));
        // Space left, inodes gone: just as full.
        s.overlay_space = Some(Space {
            total: 100 << 20,
            free: 90 << 20,
            inodes: 1000,
            free_inodes: 3,
        });
        assert!(s.to_text().contains("WARNING"));
    }
}
