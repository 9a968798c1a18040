//! Probe: reads what the kernel shows (/proc/mtd, /sys/class/block uevents, superblocks) into
//! plain data, and finds the ROM and the writable partition, waiting for late devices.

pub mod block;
pub mod jffs2;
pub mod magic;
pub mod mtd;
pub mod parttable;
pub mod watch;

use crate::board::Selector;
use crate::plan::{DataFound, DataKind, RomFound};
use crate::sys::Sys;
use magic::{identify, Content, PROBE_BYTES};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where probe reads: `<target>/proc`, `<target>/sys` (or a fixture tree), `<target>/dev`.
#[derive(Debug, Clone)]
pub struct Sources {
    pub proc_dir: PathBuf,
    pub sys_dir: PathBuf,
    pub dev_dir: PathBuf,
    /// /dev is a plain tmpfs (the kernel has no devtmpfs): make the nodes of the devices that
    /// appear, from the numbers sysfs gives.
    pub make_nodes: bool,
}

/// One look at the devices.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub mtd: Vec<mtd::MtdPart>,
    pub blocks: Vec<block::BlockDev>,
    /// Attached UBI devices: (ubi number, MTD number).
    pub ubi_devs: Vec<(u32, u32)>,
    pub ubi: Vec<crate::ubi::Volume>,
}

/// Makes the missing nodes of block devices (from their uevents) and MTD character devices
/// (from /sys/class/mtd/*/dev). Only used when /dev is not a devtmpfs.
pub fn make_nodes(snap: &Snapshot, src: &Sources, sys: &mut dyn Sys) {
    let mut want: Vec<(String, bool, u32, u32)> = snap
        .blocks
        .iter()
        .map(|b| (b.devname.clone(), true, b.major, b.minor))
        .collect();
    if let Ok(entries) = std::fs::read_dir(src.sys_dir.join("class/mtd")) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(text) = std::fs::read_to_string(e.path().join("dev")) else {
                continue;
            };
            if let Some((ma, mi)) = text.trim().split_once(':') {
                if let (Ok(ma), Ok(mi)) = (ma.parse(), mi.parse()) {
                    want.push((name, false, ma, mi));
                }
            }
        }
    }
    for (name, block, major, minor) in want {
        let node = src.dev_dir.join(&name);
        if !node.exists() {
            if let Err(e) = sys.mknod(&node, block, 0o600, major, minor) {
                log::warn!("{e}");
            }
        }
    }
}

pub fn snapshot(src: &Sources) -> Snapshot {
    snapshot_of(src, Need::ALL)
}

/// What a scan reads: each part costs system calls (a uevent read per block device), slow
/// early in a boot and under emulation, so find reads only what its selectors look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub mtd: bool,
    pub blocks: bool,
    pub ubi: bool,
}

impl Need {
    pub const ALL: Need = Need {
        mtd: true,
        blocks: true,
        ubi: true,
    };
    const NONE: Need = Need {
        mtd: false,
        blocks: false,
        ubi: false,
    };

    /// What resolving `sel` looks at.
    pub fn of(sel: &Selector) -> Need {
        match sel {
            Selector::Mtd(_) => Need {
                mtd: true,
                ..Need::NONE
            },
            Selector::PartName(_)
            | Selector::Label(_)
            | Selector::PartUuid(_)
            | Selector::Uuid(_) => Need {
                blocks: true,
                ..Need::NONE
            },
            // UBI attaches an MTD partition named by its MTD name.
            Selector::Ubi { .. } => Need {
                mtd: true,
                ubi: true,
                ..Need::NONE
            },
            Selector::Path(_) | Selector::AfterRom => Need::NONE,
            Selector::Auto => Need::ALL,
        }
    }

    pub fn or(self, o: Need) -> Need {
        Need {
            mtd: self.mtd || o.mtd,
            blocks: self.blocks || o.blocks,
            ubi: self.ubi || o.ubi,
        }
    }
}

/// A [`Snapshot`] of the parts `need` names; the others are left empty.
pub fn snapshot_of(src: &Sources, need: Need) -> Snapshot {
    Snapshot {
        mtd: if need.mtd {
            std::fs::read_to_string(src.proc_dir.join("mtd"))
                .map(|t| mtd::parse_proc_mtd(&t))
                .unwrap_or_default()
        } else {
            Vec::new()
        },
        blocks: if need.blocks {
            block::scan(&src.sys_dir)
        } else {
            Vec::new()
        },
        ubi_devs: if need.ubi {
            crate::ubi::devices(&src.sys_dir)
        } else {
            Vec::new()
        },
        ubi: if need.ubi {
            crate::ubi::volumes(&src.sys_dir)
        } else {
            Vec::new()
        },
    }
}

/// A partition a selector named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hit {
    Block(PathBuf),
    Mtd(mtd::MtdPart),
    /// A UBI volume: mounted through its character device (UBIFS), or as a ROM through the
    /// ubiblock device on it.
    Ubi(crate::ubi::Volume),
}

impl Hit {
    /// The node that is mounted.
    pub fn mount_dev(&self, src: &Sources) -> PathBuf {
        match self {
            Hit::Block(p) => p.clone(),
            Hit::Mtd(m) => src.dev_dir.join(format!("mtdblock{}", m.index)),
            Hit::Ubi(v) => src.dev_dir.join(v.dev_name()),
        }
    }
}

/// Makes the writable volume when the UBI device it belongs on is attached and lacks it, once
/// per find: a dynamic volume of all the space UBI has left (the other volumes and their data
/// are not touched). Returns whether it was made.
fn ubi_mkvol(
    sel: &Selector,
    snap: &Snapshot,
    src: &Sources,
    sys: &mut dyn Sys,
    tried: &mut bool,
) -> bool {
    let Selector::Ubi { mtd, volume } = sel else {
        return false;
    };
    if *tried {
        return false;
    }
    let Some(part) = ubi_mtd(mtd, snap) else {
        return false;
    };
    let Some(&(ubi, _)) = snap.ubi_devs.iter().find(|(_, m)| *m == part.index) else {
        return false;
    };
    if snap.ubi.iter().any(|v| v.ubi == ubi && &v.name == volume) {
        return false;
    }
    *tried = true;
    let avail = crate::ubi::device_number(&src.sys_dir, ubi, "avail_eraseblocks").unwrap_or(0);
    let leb = crate::ubi::device_number(&src.sys_dir, ubi, "eraseblock_size").unwrap_or(0);
    if avail == 0 || leb == 0 {
        log::warn!("ubi{ubi} has no volume {volume} and no free space to make it");
        return false;
    }
    let dev = src.dev_dir.join(format!("ubi{ubi}"));
    match sys.ubi_mkvol(&dev, volume, avail * leb) {
        Ok(()) => {
            log::info!("made UBI volume {volume} on ubi{ubi}: {} LEBs", avail);
            true
        }
        Err(e) => {
            log::warn!("{e}");
            false
        }
    }
}

/// The MTD partition a UBI selector attaches: the one it names, else OpenWrt's `ubi`.
fn ubi_mtd<'a>(mtd: &Option<String>, snap: &'a Snapshot) -> Option<&'a mtd::MtdPart> {
    mtd::find(&snap.mtd, mtd.as_deref().unwrap_or("ubi"))
}

/// The MTD partition a selector has UBI attach: `ubi:MTD/..` names it, `ubi:..` and `auto`
/// use OpenWrt's `ubi` partition.
fn ubi_part<'a>(sel: &Selector, snap: &'a Snapshot) -> Option<&'a mtd::MtdPart> {
    match sel {
        Selector::Ubi { mtd, .. } => ubi_mtd(mtd, snap),
        Selector::Auto => ubi_mtd(&None, snap),
        _ => None,
    }
}

/// Attaches the MTD partition a UBI selector needs when the kernel has not, once per find.
/// A refusal (the kernel's answer) is kept in `refused` by MTD number: it is the reason a
/// boot goes to tmpfs, since an image that does not attach is left as it is.
fn ubi_attach(
    sel: &Selector,
    snap: &Snapshot,
    src: &Sources,
    sys: &mut dyn Sys,
    tried: &mut Vec<u32>,
    refused: &mut Vec<(u32, String)>,
) {
    let Some(part) = ubi_part(sel, snap) else {
        return;
    };
    if snap.ubi_devs.iter().any(|(_, m)| *m == part.index) || tried.contains(&part.index) {
        return;
    }
    let ctrl = src.dev_dir.join("ubi_ctrl");
    if !ctrl.exists() {
        // The ubi module is not loaded yet, or devtmpfs has not made the node: next round.
        return;
    }
    tried.push(part.index);
    match sys.ubi_attach(&ctrl, part.index) {
        Ok(n) => log::info!("attached mtd{} ({}) as ubi{n}", part.index, part.name),
        Err(e) => {
            let why = format!(
                "UBI refused to attach mtd{} ({}): {e}; left untouched",
                part.index, part.name
            );
            log::warn!("{why}");
            refused.push((part.index, why));
        }
    }
}

/// The refusal that stands in a selector's way, if any.
fn ubi_refusal<'a>(
    sel: Option<&Selector>,
    snap: &Snapshot,
    refused: &'a [(u32, String)],
) -> Option<&'a String> {
    let part = ubi_part(sel?, snap)?;
    refused
        .iter()
        .find(|(m, _)| *m == part.index)
        .map(|(_, why)| why)
}

/// `/dev/x` on the command line means `<target>/dev/x` while preinit works below a target.
pub fn dev_path(src: &Sources, p: &str) -> PathBuf {
    match p.strip_prefix("/dev/") {
        Some(rest) => src.dev_dir.join(rest),
        None => PathBuf::from(p),
    }
}

/// Where to read a partition mounted through `path`: an mtdblock node's own MTD character
/// device when there is one. A read through mtdblock goes in 512-byte requests through a
/// block queue and its worker, and the first one on a device costs about 10 ms under TCG;
/// the character device reads the flash in one call. The bytes are the same.
pub fn raw_device(path: &Path) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    match (name.strip_prefix("mtdblock"), path.parent()) {
        (Some(n), Some(dir)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            let raw = dir.join(format!("mtd{n}"));
            if raw.exists() {
                raw
            } else {
                path.to_path_buf()
            }
        }
        _ => path.to_path_buf(),
    }
}

pub fn read_head(path: &Path, len: usize) -> std::io::Result<Vec<u8>> {
    read_head_of(&no_readahead(std::fs::File::open(path)?), len)
}

/// The first `len` bytes of an open device, fewer when it is shorter.
fn read_head_of(f: &std::fs::File, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len);
    f.take(len as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// A device opened to read a few KiB: without this, the kernel reads ahead 128 KiB (through
/// mtdblock, 256 reads of 512 bytes from the flash) that nothing uses; squashfs and JFFS2
/// read the device themselves. Only advice: a file that refuses it is read as it is.
pub fn no_readahead(f: std::fs::File) -> std::fs::File {
    let _ = nix::fcntl::posix_fadvise(&f, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_RANDOM);
    f
}

fn device_size(path: &Path) -> std::io::Result<u64> {
    std::fs::File::open(path)?.seek(SeekFrom::End(0))
}

/// Resolves a selector in one snapshot. `role` is the partition name `auto` looks for.
/// A device counts only once its node exists.
pub fn resolve(sel: &Selector, role: &str, snap: &Snapshot, src: &Sources) -> Option<Hit> {
    let node = |name: &str| {
        let p = src.dev_dir.join(name);
        p.exists().then_some(p)
    };
    match sel {
        Selector::Mtd(name) => {
            let part = mtd::find(&snap.mtd, name)?;
            node(&format!("mtdblock{}", part.index))?;
            Some(Hit::Mtd(part.clone()))
        }
        Selector::PartName(name) => {
            let d = block::find_partname(&snap.blocks, name)?;
            node(&d.devname).map(Hit::Block)
        }
        Selector::Label(label) => snap.blocks.iter().find_map(|d| {
            let p = node(&d.devname)?;
            match identify(&read_head(&p, PROBE_BYTES).ok()?) {
                Content::Ext4 { label: l } if &l == label => Some(Hit::Block(p)),
                _ => None,
            }
        }),
        Selector::PartUuid(want) => snap.blocks.iter().find_map(|d| {
            let (Some(n), Some(disk)) = (d.partn, d.disk.as_deref()) else {
                return None;
            };
            let table = match parttable::read(&src.dev_dir.join(disk)) {
                Ok(t) => t,
                Err(e) => {
                    log::debug!("PARTUUID: {e}");
                    return None;
                }
            };
            (table.partuuid(n).as_deref() == Some(want.as_str()))
                .then(|| node(&d.devname).map(Hit::Block))
                .flatten()
        }),
        Selector::Uuid(want) => snap.blocks.iter().find_map(|d| {
            let p = node(&d.devname)?;
            let uuid = magic::ext4_uuid(&read_head(&p, PROBE_BYTES).ok()?)?;
            (&uuid_text(&uuid) == want).then_some(Hit::Block(p))
        }),
        Selector::Path(p) => {
            let p = dev_path(src, p);
            p.exists().then_some(Hit::Block(p))
        }
        Selector::Auto => resolve(&Selector::PartName(role.into()), role, snap, src)
            .or_else(|| resolve(&Selector::Mtd(role.into()), role, snap, src))
            .or_else(|| {
                let ubi = Selector::Ubi {
                    mtd: None,
                    volume: role.into(),
                };
                resolve(&ubi, role, snap, src)
            }),
        Selector::Ubi { mtd, volume } => {
            let on = mtd.as_ref().map(|_| ubi_mtd(mtd, snap));
            snap.ubi.iter().find_map(|v| {
                if &v.name != volume {
                    return None;
                }
                if let Some(part) = on {
                    let part = part?;
                    if !snap.ubi_devs.contains(&(v.ubi, part.index)) {
                        return None;
                    }
                }
                node(&v.dev_name())?;
                Some(Hit::Ubi(v.clone()))
            })
        }
        // Needs the ROM: see find.
        Selector::AfterRom => None,
    }
}

/// A file system UUID as blkid prints it: the 16 bytes in order, 8-4-4-4-12.
fn uuid_text(u: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// What find was asked for.
#[derive(Debug, Clone)]
pub struct Wanted {
    /// None: the ROM is the current root (rootfs boot).
    pub rom: Option<Selector>,
    /// None: failsafe, the writable partition is not looked at.
    pub data: Option<Selector>,
    pub timeout: Duration,
}

pub struct Found {
    pub rom: Result<RomFound, String>,
    pub data: Result<DataFound, String>,
    /// What a person should know (a staged ROM put in place).
    pub notes: Vec<String>,
}

/// Waits up to the timeout for the ROM and the writable partition, then identifies them.
/// Partitions of one flash chip or one disk appear together, so when the ROM was found by
/// name and the data partition, named the same way, is not beside it, waiting longer is
/// pointless and we stop.
pub fn find(w: &Wanted, src: &Sources, sys: &mut dyn Sys) -> Found {
    let start = Instant::now();
    let (mut rom_hit, mut data_hit);
    let (mut attach_tried, mut refusals) = (Vec::new(), Vec::new());
    let (mut block_tried, mut mkvol_tried) = (false, false);
    let mut notes = Vec::new();
    let mut stage_err: Option<String> = None;
    let mut snap;
    // Without devtmpfs the nodes are made from the block devices and MTD partitions seen.
    let need = [&w.rom, &w.data]
        .into_iter()
        .flatten()
        .fold(Need::NONE, |n, s| n.or(Need::of(s)))
        .or(if src.make_nodes {
            Need::ALL
        } else {
            Need::NONE
        });
    // Made when the first look finds nothing (where everything is there at once, as after
    // built-in or loaded drivers, it costs nothing), and followed by a look before the first
    // wait: a node made between a look and the wait still ends the wait.
    let mut devs: Option<watch::DevWatch> = None;
    let snapshot = |src: &Sources| snapshot_of(src, need);
    loop {
        snap = crate::timed!("find: devices seen", snapshot(src));
        if src.make_nodes {
            make_nodes(&snap, src, sys);
        }
        let before = attach_tried.len();
        for sel in [&w.rom, &w.data].into_iter().flatten() {
            ubi_attach(sel, &snap, src, sys, &mut attach_tried, &mut refusals);
        }
        let attached = attach_tried.len() > before;
        if attached {
            snap = snapshot(src);
        }
        if let Some(sel) = &w.data {
            if ubi_mkvol(sel, &snap, src, sys, &mut mkvol_tried) {
                snap = snapshot(src);
            }
        }
        rom_hit = w
            .rom
            .as_ref()
            .and_then(|s| resolve(s, "rootfs", &snap, src));
        // A squashfs in a UBI volume mounts through a ubiblock device, made once here.
        if let Some(Hit::Ubi(v)) = &rom_hit {
            if !src.dev_dir.join(v.block_name()).exists() {
                if !block_tried {
                    block_tried = true;
                    // Before anything reads the ROM through ubiblock (and caches it): a new
                    // ROM that sysupgrade staged goes into place first.
                    let vol = src.dev_dir.join(v.dev_name());
                    match crate::ubistage::Geometry::of(&src.sys_dir, v)
                        .map(|g| sys.ubi_finish_stage(&vol, g))
                    {
                        Some(Ok(Some(what))) => {
                            log::warn!("{what}");
                            notes.push(what);
                        }
                        Some(Err(e)) => {
                            // A copy that failed part way may have left the head mixed: not
                            // mounted; the next boot copies again.
                            log::warn!("{e}");
                            stage_err = Some(e.to_string());
                        }
                        _ => {}
                    }
                    if let Err(e) = sys.ubi_block(&vol) {
                        log::warn!("ubiblock on {}: {e}", v.dev_name());
                    }
                }
                rom_hit = None;
            }
        }
        if stage_err.is_some() {
            rom_hit = None;
        }
        data_hit = match &w.data {
            Some(Selector::AfterRom) => None,
            Some(Selector::Auto) => resolve(&Selector::Auto, "rootfs_data", &snap, src),
            Some(s) => resolve(s, "rootfs_data", &snap, src),
            None => None,
        };
        // Refused: waiting longer changes nothing.
        let refused = [&w.rom, &w.data].map(|s| ubi_refusal(s.as_ref(), &snap, &refusals));
        let rom_ok =
            w.rom.is_none() || rom_hit.is_some() || refused[0].is_some() || stage_err.is_some();
        let after_rom_possible =
            matches!(w.data, Some(Selector::AfterRom | Selector::Auto)) && rom_hit.is_some();
        let data_ok =
            w.data.is_none() || data_hit.is_some() || after_rom_possible || refused[1].is_some();
        let siblings_complete = matches!(
            (&w.rom, &w.data, &rom_hit),
            (
                Some(Selector::Mtd(_)),
                Some(Selector::Mtd(_)),
                Some(Hit::Mtd(_))
            ) | (
                Some(Selector::PartName(_)),
                Some(Selector::PartName(_)),
                Some(Hit::Block(_))
            )
        );
        let elapsed = start.elapsed();
        if (rom_ok && (data_ok || siblings_complete)) || elapsed >= w.timeout {
            break;
        }
        match &devs {
            Some(d) => {
                crate::timed!("find: wait", d.wait(w.timeout.saturating_sub(elapsed)));
            }
            None => devs = Some(watch::DevWatch::new(&src.dev_dir, src.make_nodes)),
        }
    }
    let waited = crate::decimal::millis(start.elapsed());
    let rom = match (&w.rom, &rom_hit) {
        (None, _) => Err("the ROM is the current root".to_string()),
        (Some(sel), None) => Err(
            match (ubi_refusal(Some(sel), &snap, &refusals), &stage_err) {
                (Some(e), _) => format!("ROM {sel}: {e}"),
                (None, Some(e)) => format!("ROM {sel}: {e}; not mounted half copied"),
                (None, None) => format!("no ROM partition ({sel}) after {waited} ms"),
            },
        ),
        (Some(_), Some(hit)) => crate::timed!("find: ROM check and identity", check_rom(hit, src)),
    };
    let data = match (&w.data, data_hit) {
        (None, _) => Err("failsafe: the writable partition is not used".to_string()),
        (Some(_), Some(hit)) => crate::timed!("find: writable partition", identify_data(&hit, src)),
        (Some(sel @ (Selector::AfterRom | Selector::Auto)), None) => match &rom_hit {
            Some(Hit::Block(rom_dev)) => after_rom(rom_dev, sys),
            Some(Hit::Mtd(_)) if matches!(sel, Selector::Auto) => Err(format!(
                "no writable partition (auto: partname:rootfs_data, mtd:rootfs_data, ubi:rootfs_data) after {waited} ms"
            )),
            _ if matches!(sel, Selector::AfterRom) => {
                Err("after-rom needs a ROM on a block device".to_string())
            }
            _ => Err(format!(
                "no writable partition (auto: partname:rootfs_data, mtd:rootfs_data, ubi:rootfs_data, after-rom) after {waited} ms"
            )),
        },
        (Some(sel @ Selector::Ubi { .. }), None) => {
            Err(match ubi_refusal(Some(sel), &snap, &refusals) {
                Some(e) => format!("writable partition {sel}: {e}"),
                None => format!("no writable partition ({sel}) after {waited} ms"),
            })
        }
        (Some(sel), None) => Err(format!("no writable partition ({sel}) after {waited} ms")),
    };
    Found { rom, data, notes }
}

/// The ROM is squashfs, and its identity, from one open of the device and one read of its
/// start: each system call counts under emulation.
fn check_rom(hit: &Hit, src: &Sources) -> Result<RomFound, String> {
    let dev = match hit {
        Hit::Ubi(v) => src.dev_dir.join(v.block_name()),
        _ => hit.mount_dev(src),
    };
    let raw = raw_device(&dev);
    let name = raw.display().to_string();
    let f = std::fs::File::open(&raw)
        .map(no_readahead)
        .map_err(|e| format!("read ROM {name}: {e}"))?;
    let head = read_head_of(&f, crate::overlay::IDENTITY_SPAN)
        .map_err(|e| format!("read ROM {name}: {e}"))?;
    match identify(head.get(..PROBE_BYTES).unwrap_or(&head)) {
        Content::Squashfs { .. } => Ok(RomFound {
            device: dev.display().to_string(),
            id: crate::overlay::rom_identity(&name, &f, &head)
                .map_err(|e| log::warn!("ROM identity: {e}"))
                .ok(),
        }),
        c => Err(format!(
            "ROM {} holds {}, not squashfs",
            dev.display(),
            c.name()
        )),
    }
}

fn identify_data(hit: &Hit, src: &Sources) -> Result<DataFound, String> {
    let dev = hit.mount_dev(src);
    let (read_from, kind) = match hit {
        Hit::Block(_) => (dev.clone(), DataKind::Block),
        Hit::Ubi(_) => (dev.clone(), DataKind::Ubi),
        Hit::Mtd(m) => {
            let char_dev = src.dev_dir.join(format!("mtd{}", m.index));
            let kind = DataKind::Mtd {
                char_dev: char_dev.display().to_string(),
                erasesize: m.erasesize,
            };
            // The character device reads raw flash; mtdblock would do too, but caches.
            (
                if char_dev.exists() {
                    char_dev
                } else {
                    dev.clone()
                },
                kind,
            )
        }
    };
    let content = match hit {
        Hit::Ubi(v) => ubi_content(&src.sys_dir, v, &read_from)?,
        _ => {
            let head = read_head(&read_from, PROBE_BYTES)
                .map_err(|e| format!("read {}: {e}", read_from.display()))?;
            match hit {
                Hit::Mtd(m) => mtd_content(&read_from, &head, m)?,
                _ => block_content(&read_from, &head)?,
            }
        }
    };
    Ok(DataFound {
        device: dev.display().to_string(),
        kind,
        content,
    })
}

/// What an MTD partition holds. The reset marker counts only where OpenWrt writes it: the
/// big-endian word 0xDEADC0DE at offset 0 of the partition ([`identify`]); anywhere else it is
/// data like any other. Otherwise every erase block is looked at ([`jffs2::census`]): JFFS2
/// may have begun in any block, and foreign blocks among its own must stop a mount, which
/// would erase them. A foreign first block keeps its name (ubifs, gzip, zeroes) when the
/// partition is not JFFS2.
pub fn mtd_content(dev: &Path, head: &[u8], m: &mtd::MtdPart) -> Result<Content, String> {
    let first = identify(head);
    if matches!(first, Content::Marker | Content::ResetMark) {
        return Ok(first);
    }
    let c = crate::timed!(
        "- JFFS2 census",
        jffs2::census(dev, m.size, m.erasesize, head)
    )?;
    if jffs2::is_reset_mark(head, &c) {
        return Ok(Content::ResetMark);
    }
    let verdict = c.verdict();
    if verdict == Content::Unknown {
        log::info!(
            "{}: {} JFFS2, {} erased and {} other blocks (first other: block {}): not JFFS2",
            dev.display(),
            c.jffs2,
            c.erased,
            c.other,
            c.first_other.map_or("none".to_string(), |i| i.to_string())
        );
        return Ok(match first {
            Content::Jffs2 | Content::Erased => Content::Unknown,
            named => named,
        });
    }
    Ok(verdict)
}

/// What a UBI volume holds, read through its node `dev`. UBI's update marker means an
/// update (ovl's reset truncates a volume this way) was cut: UBI will not read the volume
/// then, and it counts as the reset mark. An empty volume reads as 0xFF (unmapped LEBs), or
/// as nothing when it has no size.
pub fn ubi_content(sys_dir: &Path, v: &crate::ubi::Volume, dev: &Path) -> Result<Content, String> {
    if crate::ubi::volume_number(sys_dir, v, "upd_marker") == Some(1) {
        return Ok(Content::ResetMark);
    }
    let head = read_head(dev, PROBE_BYTES).map_err(|e| format!("read {}: {e}", dev.display()))?;
    Ok(if head.is_empty() {
        Content::Erased
    } else {
        identify(&head)
    })
}

/// What a block partition holds: a blank-looking head is read on to [`magic::BLANK_WINDOW`],
/// since other file systems keep their superblocks beyond 4 KiB (btrfs, ISO9660).
pub fn block_content(dev: &Path, head: &[u8]) -> Result<Content, String> {
    match identify(head) {
        Content::Erased | Content::Zeroes => {
            let window = read_head(dev, magic::BLANK_WINDOW)
                .map_err(|e| format!("read {}: {e}", dev.display()))?;
            Ok(magic::identify_block(&window))
        }
        other => Ok(other),
    }
}

/// The OpenWrt x86 layout: the writable area starts after the squashfs, rounded up to 64 KiB,
/// in the ROM's own partition; a loop device at that offset makes it a block device.
fn after_rom(rom_dev: &Path, sys: &mut dyn Sys) -> Result<DataFound, String> {
    let head = read_head(rom_dev, PROBE_BYTES)
        .map_err(|e| format!("read ROM {}: {e}", rom_dev.display()))?;
    let Content::Squashfs { bytes_used } = identify(&head) else {
        return Err(format!(
            "after-rom: {} holds no squashfs",
            rom_dev.display()
        ));
    };
    let size = device_size(rom_dev).map_err(|e| format!("size of {}: {e}", rom_dev.display()))?;
    let offset = magic::after_squashfs_offset(bytes_used).unwrap_or(u64::MAX);
    // Less than one 64 KiB block after the ROM is no writable area (a squashfs claiming to be
    // larger than its partition is that too).
    if offset.checked_add(64 * 1024).is_none_or(|end| size < end) {
        return Err(format!(
            "after-rom: no space after the squashfs in {} (squashfs ends at {offset}, partition is {size} bytes)",
            rom_dev.display()
        ));
    }
    let dev = sys
        .loop_attach(rom_dev, offset)
        .map_err(|e| format!("after-rom: {e}"))?;
    let head = read_head(&dev, PROBE_BYTES).map_err(|e| format!("read {}: {e}", dev.display()))?;
    Ok(DataFound {
        device: dev.display().to_string(),
        kind: DataKind::AfterRom {
            backing: rom_dev.display().to_string(),
            offset,
        },
        content: block_content(&dev, &head)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::record::Recorder;

    /// A fake /proc, /sys and /dev with regular files standing in for device nodes.
    struct Fixture {
        dir: tempfile::TempDir,
        src: Sources,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let src = Sources {
                proc_dir: dir.path().join("proc"),
                sys_dir: dir.path().join("sys"),
                dev_dir: dir.path().join("dev"),
                make_nodes: false,
            };
            for d in [&src.proc_dir, &src.sys_dir, &src.dev_dir] {
                std::fs::create_dir_all(d).unwrap();
            }
            Fixture { dir, src }
        }
        fn part(&self, devname: &str, partname: &str, content: &[u8]) {
            let d = self.src.sys_dir.join("class/block").join(devname);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join("uevent"),
                format!("MAJOR=254\nMINOR=1\nDEVNAME={devname}\nDEVTYPE=partition\nPARTNAME={partname}\n"),
            )
            .unwrap();
            std::fs::write(self.src.dev_dir.join(devname), content).unwrap();
        }
        fn mtd(&self, parts: &[(&str, &[u8])]) {
            self.mtd_blocks(parts, 0x40000);
        }
        /// Whole erase blocks of `es` bytes, the tail erased, and /proc/mtd saying so.
        fn mtd_blocks(&self, parts: &[(&str, &[u8])], es: usize) {
            let mut text = String::from("dev:    size   erasesize  name\n");
            for (i, (name, content)) in parts.iter().enumerate() {
                let mut content = content.to_vec();
                content.resize(content.len().div_ceil(es).max(1) * es, 0xff);
                let size = content.len();
                text.push_str(&format!("mtd{i}: {size:08x} {es:08x} \"{name}\"\n"));
                std::fs::write(self.src.dev_dir.join(format!("mtd{i}")), &content).unwrap();
                std::fs::write(self.src.dev_dir.join(format!("mtdblock{i}")), &content).unwrap();
            }
            std::fs::write(self.src.proc_dir.join("mtd"), text).unwrap();
        }
    }

    /// A UBI device on mtd `mtd` with volumes (name, content); the nodes are plain files.
    fn ubi(f: &Fixture, mtd: u32, vols: &[(&str, &[u8])]) {
        let c = f.src.sys_dir.join("class/ubi");
        std::fs::create_dir_all(c.join("ubi0")).unwrap();
        std::fs::write(c.join("ubi0/mtd_num"), format!("{mtd}\n")).unwrap();
        for (i, (name, content)) in vols.iter().enumerate() {
            std::fs::create_dir_all(c.join(format!("ubi0_{i}"))).unwrap();
            std::fs::write(c.join(format!("ubi0_{i}/name")), format!("{name}\n")).unwrap();
            std::fs::write(f.src.dev_dir.join(format!("ubi0_{i}")), content).unwrap();
        }
    }

    #[test]
    fn ubi_volumes_are_found_by_name_on_the_named_mtd() {
        let f = Fixture::new();
        f.mtd(&[("bank0", b""), ("ubi", b"UBI#")]);
        ubi(
            &f,
            1,
            &[
                ("rootfs", &squashfs(4096, 8192)),
                ("rootfs_data", &[0xff; 4096]),
            ],
        );
        std::fs::write(f.src.dev_dir.join("ubiblock0_0"), squashfs(4096, 8192)).unwrap();
        let snap = snapshot(&f.src);
        let sel = |s: &str| Selector::parse(s).unwrap();
        let hit = resolve(&sel("ubi:ubi/rootfs_data"), "rootfs_data", &snap, &f.src);
        assert!(
            matches!(&hit, Some(Hit::Ubi(v)) if v.dev_name() == "ubi0_1"),
            "{hit:?}"
        );
        assert!(resolve(&sel("ubi:rootfs_data"), "rootfs_data", &snap, &f.src).is_some());
        assert_eq!(
            resolve(&sel("ubi:bank0/rootfs_data"), "x", &snap, &f.src),
            None
        );
        assert_eq!(
            resolve(&sel("ubi:nope/rootfs_data"), "x", &snap, &f.src),
            None
        );
        assert_eq!(resolve(&sel("ubi:other"), "x", &snap, &f.src), None);
        let mut sys = Recorder::default();
        let found = find(
            &wanted(Some("ubi:ubi/rootfs"), Some("ubi:ubi/rootfs_data"), 0),
            &f.src,
            &mut sys,
        );
        assert!(found.rom.unwrap().device.ends_with("ubiblock0_0"));
        let d = found.data.unwrap();
        assert_eq!((d.kind, d.content), (DataKind::Ubi, Content::Erased));
        // Attached already: nothing attached, nothing made.
        assert!(
            !sys.calls
                .iter()
                .any(|c| c.contains("ubi attach") || c.contains("mkvol")),
            "{:?}",
            sys.calls
        );
    }

    fn squashfs(bytes_used: u64, total: usize) -> Vec<u8> {
        let mut v = vec![0u8; total];
        v[..4].copy_from_slice(b"hsqs");
        v[40..48].copy_from_slice(&bytes_used.to_le_bytes());
        v
    }

    fn wanted(rom: Option<&str>, data: Option<&str>, ms: u64) -> Wanted {
        Wanted {
            rom: rom.map(|s| Selector::parse(s).unwrap()),
            data: data.map(|s| Selector::parse(s).unwrap()),
            timeout: Duration::from_millis(ms),
        }
    }

    #[test]
    fn partuuid_and_uuid_selectors_read_the_table_and_the_superblock() {
        let f = Fixture::new();
        // A whole disk with a GPT (by sgdisk), and its second partition, as sysfs shows them.
        let disk = f.src.dev_dir.join("vda");
        std::fs::write(&disk, vec![0u8; 4 << 20]).unwrap();
        let out = std::process::Command::new("sgdisk")
            .args(["-n", "1:2048:4095", "-n", "2:4096:6143"])
            .args(["-u", "2:5452574F-2211-4433-5566-778899AABB02"])
            .arg(&disk)
            .output()
            .expect("sgdisk is needed (package gdisk)");
        assert!(out.status.success());
        let d = f.src.sys_dir.join("class/block/vda");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("uevent"),
            "MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n",
        )
        .unwrap();
        let mut ext4 = vec![0u8; PROBE_BYTES];
        ext4[0x438..0x43a].copy_from_slice(&[0x53, 0xef]);
        ext4[0x468..0x478].copy_from_slice(&[0xab; 16]);
        f.part("vda2", "data", &ext4);
        let uevent = f.src.sys_dir.join("class/block/vda2/uevent");
        let text = std::fs::read_to_string(&uevent).unwrap() + "PARTN=2\n";
        std::fs::write(&uevent, text).unwrap();
        let snap = snapshot(&f.src);
        let hit = |s: &str| resolve(&Selector::parse(s).unwrap(), "rootfs_data", &snap, &f.src);
        let vda2 = Some(Hit::Block(f.src.dev_dir.join("vda2")));
        assert_eq!(hit("PARTUUID=5452574f-2211-4433-5566-778899AABB02"), vda2);
        assert_eq!(hit("PARTUUID=5452574f-2211-4433-5566-778899aabb03"), None);
        assert_eq!(hit("UUID=abababab-abab-abab-abab-abababababab"), vda2);
        assert_eq!(hit("UUID=abababab-abab-abab-abab-abababababac"), None);
        // The same disk with an MBR instead: SIGNATURE-NN.
        let mut mbr = vec![0u8; 1 << 20];
        mbr[440..444].copy_from_slice(&0x1234abcdu32.to_le_bytes());
        mbr[510..512].copy_from_slice(&[0x55, 0xaa]);
        std::fs::write(&disk, mbr).unwrap();
        assert_eq!(hit("PARTUUID=1234ABCD-02"), vda2);
        assert_eq!(hit("PARTUUID=1234abcd-01"), None);
    }

    #[test]
    fn a_look_reads_only_what_the_selectors_need() {
        let f = Fixture::new();
        f.mtd(&[("rootfs", &squashfs(100, 4096))]);
        f.part("vda2", "rootfs_data", &[0xff; 4096]);
        let sel = |s: &str| Selector::parse(s).unwrap();
        let mtd_only = snapshot_of(&f.src, Need::of(&sel("mtd:rootfs")));
        assert_eq!(mtd_only.mtd.len(), 1);
        assert!(mtd_only.blocks.is_empty());
        let blocks_only = snapshot_of(&f.src, Need::of(&sel("partname:rootfs_data")));
        assert!(blocks_only.mtd.is_empty());
        assert_eq!(blocks_only.blocks.len(), 1);
        // auto may find either; UBI attaches an MTD partition, so it reads /proc/mtd too.
        assert_eq!(Need::of(&Selector::Auto), Need::ALL);
        let ubi = Need::of(&sel("ubi:rootfs_data"));
        assert!(ubi.mtd && ubi.ubi && !ubi.blocks);
        assert_eq!(Need::of(&sel("/dev/vda2")).or(ubi), ubi);
        // And find still finds both with the union.
        let found = find(
            &wanted(Some("mtd:rootfs"), Some("partname:rootfs_data"), 0),
            &f.src,
            &mut Recorder::new(),
        );
        assert!(found.rom.is_ok() && found.data.is_ok());
    }

    #[test]
    fn an_mtdblock_is_read_through_its_character_device_when_there_is_one() {
        let f = Fixture::new();
        f.mtd(&[("rootfs", &squashfs(100, 4096))]);
        let d = &f.src.dev_dir;
        assert_eq!(raw_device(&d.join("mtdblock0")), d.join("mtd0"));
        // No character device, or not an mtdblock: read as named.
        assert_eq!(raw_device(&d.join("mtdblock7")), d.join("mtdblock7"));
        assert_eq!(raw_device(&d.join("vda1")), d.join("vda1"));
        assert_eq!(raw_device(&d.join("mtdblock")), d.join("mtdblock"));
        assert_eq!(raw_device(&d.join("mtdblock0x")), d.join("mtdblock0x"));
    }

    #[test]
    fn router_flash_by_mtd_name() {
        let f = Fixture::new();
        f.mtd(&[
            ("rootfs", &squashfs(100, 4096)),
            ("rootfs_data", &[0xff; 4096]),
        ]);
        let found = find(
            &wanted(Some("mtd:rootfs"), Some("mtd:rootfs_data"), 1000),
            &f.src,
            &mut Recorder::new(),
        );
        assert!(found.rom.unwrap().device.ends_with("dev/mtdblock0"));
        let data = found.data.unwrap();
        assert!(data.device.ends_with("dev/mtdblock1"));
        assert_eq!(data.content, Content::Erased);
        assert!(matches!(
            data.kind,
            DataKind::Mtd {
                erasesize: 0x40000,
                ..
            }
        ));
    }

    #[test]
    fn gpt_names_and_auto() {
        let f = Fixture::new();
        let mut ext4 = vec![0u8; 4096];
        ext4[0x438..0x43a].copy_from_slice(&[0x53, 0xef]);
        f.part("vda1", "rootfs", &squashfs(100, 4096));
        f.part("vda2", "rootfs_data", &ext4);
        let found = find(
            &wanted(Some("auto"), Some("auto"), 1000),
            &f.src,
            &mut Recorder::new(),
        );
        assert!(found.rom.unwrap().device.ends_with("dev/vda1"));
        let d = found.data.unwrap();
        assert!(d.device.ends_with("dev/vda2"));
        assert_eq!(d.kind, DataKind::Block);
    }

    #[test]
    fn label_selector_reads_ext4_labels() {
        let f = Fixture::new();
        let mut ext4 = vec![0u8; 4096];
        ext4[0x438..0x43a].copy_from_slice(&[0x53, 0xef]);
        ext4[0x478..0x47c].copy_from_slice(b"keep");
        f.part("sdb1", "", &ext4);
        f.part("sdb2", "", &[0u8; 4096]);
        let found = find(
            &wanted(None, Some("label:keep"), 200),
            &f.src,
            &mut Recorder::new(),
        );
        assert!(found.data.unwrap().device.ends_with("dev/sdb1"));
    }

    fn data_content(f: &Fixture, data: &[u8], es: usize) -> Result<Content, String> {
        f.mtd_blocks(
            &[("rootfs", &squashfs(100, 4096)), ("rootfs_data", data)],
            es,
        );
        let w = wanted(Some("mtd:rootfs"), Some("mtd:rootfs_data"), 100);
        find(&w, &f.src, &mut Recorder::new())
            .data
            .map(|d| d.content)
    }

    const CLEAN: fn() -> [u8; 12] = || jffs2::tests::header(true, 0x2003, 12);

    #[test]
    fn jffs2_past_an_erased_first_block_is_jffs2() {
        let f = Fixture::new();
        let mut data = vec![0xffu8; 3 * 0x40000];
        data[2 * 0x40000..2 * 0x40000 + 12].copy_from_slice(&CLEAN());
        assert_eq!(data_content(&f, &data, 0x40000), Ok(Content::Jffs2));
        // The bare magic, as the old probe took it: not a node.
        let mut bare = vec![0xffu8; 3 * 0x40000];
        bare[2 * 0x40000..2 * 0x40000 + 2].copy_from_slice(&[0x85, 0x19]);
        assert_eq!(data_content(&f, &bare, 0x40000), Ok(Content::Unknown));
        let all = vec![0xff; 3 * 0x40000];
        assert_eq!(data_content(&f, &all, 0x40000), Ok(Content::Erased));
    }

    /// Images made by `mkfs.jffs2 -l` / `-b -e 0x2000` of a directory with a 20 KB random file:
    /// three 8 KiB blocks, each starting with a clean marker.
    const MKFS_LE: &[u8] = include_bytes!("testdata/jffs2-le-8k.img");
    const MKFS_BE: &[u8] = include_bytes!("testdata/jffs2-be-8k.img");

    #[test]
    fn real_jffs2_images_and_foreign_blocks_among_them() {
        let f = Fixture::new();
        // The other byte order than this CPU's is foreign: the kernel would erase it.
        let (native, other) = if cfg!(target_endian = "little") {
            (MKFS_LE, MKFS_BE)
        } else {
            (MKFS_BE, MKFS_LE)
        };
        let mut wrong = other.to_vec();
        wrong.resize(48 * 0x2000, 0xff);
        assert_eq!(data_content(&f, &wrong, 0x2000), Ok(Content::Unknown));
        {
            let img = native;
            let mut data = img.to_vec();
            data.resize(48 * 0x2000, 0xff);
            assert_eq!(data_content(&f, &data, 0x2000), Ok(Content::Jffs2));
            // Two damaged blocks, fewer than the JFFS2 ones: what a power cut leaves.
            let mut cut = data.clone();
            cut[10 * 0x2000..12 * 0x2000].fill(0x5a);
            assert_eq!(data_content(&f, &cut, 0x2000), Ok(Content::Jffs2));
            // Three foreign blocks: not ours to mount, whatever JFFS2 is beside them.
            let mut foreign = cut.clone();
            foreign[20 * 0x2000 + 100] = 0;
            assert_eq!(data_content(&f, &foreign, 0x2000), Ok(Content::Unknown));
            // Foreign data in block 0 after a blank first 1 KiB counts as foreign too: two
            // foreign blocks (0 and 10) against two JFFS2 ones.
            let mut late = data.clone();
            late[10 * 0x2000..11 * 0x2000].fill(0x5a);
            late[..0x2000].fill(0xff);
            late[3000] = 0x42;
            assert_eq!(data_content(&f, &late, 0x2000), Ok(Content::Unknown));
        }
    }

    #[test]
    fn the_marker_counts_only_big_endian_at_offset_0() {
        let f = Fixture::new();
        let es = 0x40000;
        // Old JFFS2 after the marker: a marker (the erase step follows).
        let mut jffs2 = vec![0xffu8; 8 * es];
        for b in 0..8 {
            jffs2[b * es..b * es + 12].copy_from_slice(&CLEAN());
        }
        let mut m = jffs2.clone();
        m[..4].copy_from_slice(&magic::DEADCODE);
        assert_eq!(data_content(&f, &m, es), Ok(Content::Marker));
        let mut m = vec![0xffu8; 8 * es];
        m[..4].copy_from_slice(&magic::DEADCODE);
        assert_eq!(data_content(&f, &m, es), Ok(Content::Marker));
        // Near misses are data, judged like any other block.
        let erased = vec![0xffu8; 8 * es];
        let near: [(usize, [u8; 4]); 3] = [
            (0, [0xde, 0xc0, 0xad, 0xde]), // little-endian
            (4, magic::DEADCODE),          // offset 4
            (es, magic::DEADCODE),         // the second block
        ];
        for (at, word) in near {
            let mut d = erased.clone();
            d[at..at + 4].copy_from_slice(&word);
            assert_eq!(
                data_content(&f, &d, es),
                Ok(Content::Unknown),
                "{at} {word:x?}"
            );
        }
        // A marker word at the start of block 1 of a JFFS2: one foreign block among seven.
        let mut d = jffs2.clone();
        d[es..es + 4].copy_from_slice(&magic::DEADCODE);
        assert_eq!(data_content(&f, &d, es), Ok(Content::Jffs2));
        // A little-endian marker over JFFS2's first block: the same.
        let mut d = jffs2.clone();
        d[..4].copy_from_slice(&[0xde, 0xc0, 0xad, 0xde]);
        assert_eq!(data_content(&f, &d, es), Ok(Content::Jffs2));
    }

    #[test]
    fn a_foreign_first_block_keeps_its_name() {
        let f = Fixture::new();
        let mut d = vec![0u8; 0x40000];
        d.resize(4 * 0x40000, 0xff);
        assert_eq!(data_content(&f, &d, 0x40000), Ok(Content::Zeroes));
    }

    #[test]
    fn a_partition_that_cannot_be_read_is_an_error_not_erased() {
        let f = Fixture::new();
        f.mtd(&[("rootfs", &squashfs(100, 4096)), ("rootfs_data", &[0xff])]);
        // /proc/mtd says 1 MiB; the device gives 256 KiB.
        let text = std::fs::read_to_string(f.src.proc_dir.join("mtd")).unwrap();
        std::fs::write(
            f.src.proc_dir.join("mtd"),
            text.replace(
                "00040000 00040000 \"rootfs_data\"",
                "00100000 00040000 \"rootfs_data\"",
            ),
        )
        .unwrap();
        let w = wanted(Some("mtd:rootfs"), Some("mtd:rootfs_data"), 100);
        let e = find(&w, &f.src, &mut Recorder::new()).data.unwrap_err();
        assert!(
            e.starts_with("read ") && e.contains("mtd1 at 0x40000"),
            "{e}"
        );
    }

    #[test]
    fn missing_data_partition_beside_the_rom_does_not_wait() {
        let f = Fixture::new();
        f.mtd(&[("rootfs", &squashfs(100, 4096))]);
        let t = Instant::now();
        let found = find(
            &wanted(Some("mtd:rootfs"), Some("mtd:rootfs_data"), 5000),
            &f.src,
            &mut Recorder::new(),
        );
        assert!(t.elapsed() < Duration::from_millis(2000));
        let why = found.data.unwrap_err();
        assert!(
            why.starts_with("no writable partition (mtd:rootfs_data)"),
            "{why}"
        );
    }

    #[test]
    fn a_device_that_appears_late_is_waited_for() {
        let f = Fixture::new();
        f.mtd(&[("rootfs", &squashfs(100, 4096))]);
        let src = f.src.clone();
        // The flash driver registers the data partition 300 ms into the wait.
        let later = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let mut ev = String::from("MAJOR=254\nMINOR=2\nDEVNAME=vdb1\nDEVTYPE=partition\n");
            ev.push_str("PARTNAME=rootfs_data\n");
            let d = src.sys_dir.join("class/block/vdb1");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(src.dev_dir.join("vdb1"), [0xffu8; 4096]).unwrap();
            std::fs::write(d.join("uevent"), ev).unwrap();
        });
        let t = Instant::now();
        let found = find(
            &wanted(Some("mtd:rootfs"), Some("partname:rootfs_data"), 5000),
            &f.src,
            &mut Recorder::new(),
        );
        later.join().unwrap();
        assert!(found.data.unwrap().device.ends_with("dev/vdb1"));
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_millis(4000),
            "{waited:?}"
        );
    }

    #[test]
    fn missing_devices_time_out_with_the_selector_in_the_reason() {
        let f = Fixture::new();
        let found = find(
            &wanted(Some("/dev/nope"), Some("label:x"), 100),
            &f.src,
            &mut Recorder::new(),
        );
        let rom = found.rom.unwrap_err();
        assert!(
            rom.starts_with("no ROM partition (/dev/nope) after"),
            "{rom}"
        );
        assert!(found
            .data
            .unwrap_err()
            .starts_with("no writable partition (label:x) after"));
    }

    #[test]
    fn rom_that_is_not_squashfs_is_refused() {
        let f = Fixture::new();
        f.part("vda1", "rootfs", &[0u8; 4096]);
        let found = find(
            &wanted(Some("partname:rootfs"), None, 100),
            &f.src,
            &mut Recorder::new(),
        );
        assert!(found
            .rom
            .unwrap_err()
            .ends_with("holds zeroes, not squashfs"));
        assert_eq!(
            found.data.unwrap_err(),
            "failsafe: the writable partition is not used"
        );
    }

    #[test]
    fn after_rom_attaches_a_loop_at_the_rounded_offset() {
        let f = Fixture::new();
        f.part("vda2", "", &squashfs(70_000, 3 * 65536));
        let mut r = Recorder::new();
        let found = find(
            &wanted(Some("/dev/vda2"), Some("after-rom"), 100),
            &f.src,
            &mut r,
        );
        assert!(found.rom.is_ok());
        // The recorder hands out a name that does not exist here, so reading it fails, but the
        // offset is what matters: 70000 rounded up to 64 KiB.
        assert_eq!(r.calls.len(), 1);
        assert!(
            r.calls[0].ends_with("dev/vda2 offset 131072"),
            "{}",
            r.calls[0]
        );
        assert!(found.data.is_err());
    }

    #[test]
    fn after_rom_without_space_is_a_reason() {
        let f = Fixture::new();
        f.part("vda2", "", &squashfs(70_000, 2 * 65536));
        let mut r = Recorder::new();
        let found = find(
            &wanted(Some("/dev/vda2"), Some("after-rom"), 100),
            &f.src,
            &mut r,
        );
        assert!(found
            .data
            .unwrap_err()
            .contains("no space after the squashfs"));
        assert!(r.calls.is_empty());
    }

    #[test]
    fn nodes_are_made_from_sysfs_numbers_when_dev_is_static() {
        let mut f = Fixture::new();
        let d = f.src.sys_dir.join("class/block/vdb1");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("uevent"),
            "MAJOR=254\nMINOR=17\nDEVNAME=vdb1\nDEVTYPE=partition\n",
        )
        .unwrap();
        let m = f.src.sys_dir.join("class/mtd/mtd3");
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(m.join("dev"), "90:6\n").unwrap();
        std::fs::write(f.src.dev_dir.join("present"), b"").unwrap();
        f.src.make_nodes = true;
        let mut r = Recorder::new();
        find(&wanted(None, Some("/dev/vdb1"), 50), &f.src, &mut r);
        let dev = f.src.dev_dir.display().to_string();
        assert!(
            r.calls.contains(&format!("mknod {dev}/vdb1 b 600 254:17")),
            "{:?}",
            r.calls
        );
        assert!(
            r.calls.contains(&format!("mknod {dev}/mtd3 c 600 90:6")),
            "{:?}",
            r.calls
        );
    }

    #[test]
    fn dev_paths_are_rebased_onto_the_target() {
        let f = Fixture::new();
        assert_eq!(dev_path(&f.src, "/dev/vda"), f.dir.path().join("dev/vda"));
        assert_eq!(dev_path(&f.src, "/tmp/x"), PathBuf::from("/tmp/x"));
    }
}
