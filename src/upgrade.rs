//! `ovlctl sysupgrade` and `sysupgrade-keep`: a new ROM, and the configuration that survives it.
//!
//! # The keep container
//! The configuration to keep (a backup archive, [`crate::backup`]) is written before the ROM
//! is touched, to `/overlay/.ovl-keep`: on the writable partition, beside the upper, so that
//! neither the flash nor a power cut takes it (OpenWrt keeps it in RAM meanwhile). It starts
//! with a 64-byte header:
//!
//! ```text
//!  0  magic "OVLKEEP1"        8  flags (u32 le; 1: an archive follows, 0: keep nothing)
//! 12  CRC32 of the archive   16  archive length (u64 le)
//! 24  the ROM it is for (32 bytes of ASCII, zero padded; empty: whatever ROM boots next)
//! 56  reserved (0)           60  CRC32 of bytes 0..60
//! ```
//!
//! It is written under a temporary name, synced and renamed, so it is there whole or not at
//! all; a torn or damaged one fails a CRC and is set aside unused, with the reason published.
//!
//! # What the next boot does ([`decide`], then `restore_kept` in preinit)
//! With the writable partition mounted and before the overlay is stacked, a container that
//! checks out and is meant for the ROM that booted (or for any ROM) *applies* unless the
//! first-boot record says ready for this very ROM (then it is a leftover of a completed first
//! boot: removed). Applying means: the record goes pending, the upper is emptied (a fresh
//! overlay), and once the overlay is stacked the archive is restored into it through the
//! same checks as `ovlctl restore`. The container stays until `ovlctl firstboot` completes the
//! first boot: a cut during that first boot empties the upper and restores again, and a
//! completed first boot never gets the old backup over it (OpenWrt: PR #17240). A container
//! for another ROM means the flash never happened: it is discarded and the overlay is left
//! as it is. OpenWrt's `sysupgrade.tgz` at the top of the partition is honoured the same way
//! (for any ROM; gzip's own CRC and the restore's checks stand in for the header).

use crate::backup;
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub const CONTAINER: &str = ".ovl-keep";
const CONTAINER_NEW: &str = ".ovl-keep.new";
pub const MAGIC: &[u8; 8] = b"OVLKEEP1";
pub const HEADER_LEN: usize = 64;
const FLAG_ARCHIVE: u32 = 1;
/// Where the ROM says what it is: `version V` and `compat MAJOR.MINOR` lines.
pub const RELEASE: &str = "etc/ovl/release";

/// A container read back: whether it is for the ROM that booted, and where its archive is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// The file it came from (`.ovl-keep` or `sysupgrade.tgz`), in `/overlay`.
    pub file: &'static str,
    /// The ROM it is meant for; None: any.
    pub target: Option<String>,
    /// Offset and length of the archive in the file; None: keep nothing (`sysupgrade -n`).
    pub archive: Option<(u64, u64)>,
}

pub fn header(archive: Option<&[u8]>, target: Option<&str>) -> Result<[u8; HEADER_LEN]> {
    let mut h = [0u8; HEADER_LEN];
    let t = target.unwrap_or("");
    if t.len() > 32 || !t.is_ascii() {
        bail!("ROM identity `{t}` does not fit the container header");
    }
    let (flags, crc, len) = match archive {
        Some(a) => (FLAG_ARCHIVE, crate::crc32::hash(a), a.len() as u64),
        None => (0, 0, 0),
    };
    let mut put = |at: usize, b: &[u8]| {
        if let Some(dst) = h.get_mut(at..at + b.len()) {
            dst.copy_from_slice(b);
        }
    };
    put(0, MAGIC);
    put(8, &flags.to_le_bytes());
    put(12, &crc.to_le_bytes());
    put(16, &len.to_le_bytes());
    put(24, t.as_bytes());
    let hcrc = crate::crc32::hash(h.get(..60).unwrap_or_default());
    if let Some(dst) = h.get_mut(60..64) {
        dst.copy_from_slice(&hcrc.to_le_bytes());
    }
    Ok(h)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map_or(0, u32::from_le_bytes)
}

/// Checks a container file: header CRC, length, archive CRC. Err says what is wrong.
pub fn check_container(path: &Path) -> Result<Kept, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let size = f
        .metadata()
        .map_err(|e| format!("read {}: {e}", path.display()))?
        .len();
    let mut h = [0u8; HEADER_LEN];
    f.read_exact_at(&mut h, 0)
        .map_err(|_| format!("{size} bytes: shorter than its header (a torn write)"))?;
    if h.get(..8) != Some(MAGIC.as_slice()) {
        return Err("no OVLKEEP1 magic: not a keep container".into());
    }
    if crate::crc32::hash(h.get(..60).unwrap_or_default()) != u32_at(&h, 60) {
        return Err("the header's CRC32 does not match (a torn or damaged write)".into());
    }
    let flags = u32_at(&h, 8);
    let crc = u32_at(&h, 12);
    let len = h
        .get(16..24)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map_or(0, u64::from_le_bytes);
    let target = h
        .get(24..56)
        .map(|t| {
            String::from_utf8_lossy(t)
                .trim_end_matches('\0')
                .to_string()
        })
        .filter(|t| !t.is_empty());
    if flags & FLAG_ARCHIVE == 0 {
        return Ok(Kept {
            file: CONTAINER,
            target,
            archive: None,
        });
    }
    if size != HEADER_LEN as u64 + len {
        return Err(format!(
            "{size} bytes, the header says {} (a torn write)",
            HEADER_LEN as u64 + len
        ));
    }
    if len > crate::restore::MAX_ARCHIVE {
        return Err(format!("an archive of {len} bytes: over the restore limit"));
    }
    let mut buf = vec![0u8; usize::try_from(len).map_err(|e| e.to_string())?];
    f.read_exact_at(&mut buf, HEADER_LEN as u64)
        .map_err(|e| format!("read {}: {e}", path.display()))?;
    if crate::crc32::hash(&buf) != crc {
        return Err(
            "the archive's CRC32 does not match the header (a torn or damaged write)".into(),
        );
    }
    Ok(Kept {
        file: CONTAINER,
        target,
        archive: Some((HEADER_LEN as u64, len)),
    })
}

/// What waits on the partition mounted at `overlay`: ours first, then OpenWrt's archive.
pub fn probe(overlay: &Path) -> Option<Result<Kept, (&'static str, String)>> {
    let ours = overlay.join(CONTAINER);
    if std::fs::symlink_metadata(&ours).is_ok() {
        return Some(check_container(&ours).map_err(|e| (CONTAINER, e)));
    }
    let theirs = overlay.join(crate::overlay::UPGRADE_BACKUP);
    match std::fs::symlink_metadata(&theirs) {
        Ok(m) if m.is_file() => Some(Ok(Kept {
            file: crate::overlay::UPGRADE_BACKUP,
            target: None,
            archive: Some((0, m.len())),
        })),
        Ok(_) => Some(Err((
            crate::overlay::UPGRADE_BACKUP,
            "not a regular file".into(),
        ))),
        Err(_) => None,
    }
}

/// The files a completed first boot (or a reset without -k) removes.
pub const WAITING: [&str; 2] = [CONTAINER, crate::overlay::UPGRADE_BACKUP];

/// Removes whatever waits; the directory is synced so that it stays removed.
pub fn discard(overlay: &Path) -> std::io::Result<bool> {
    let mut any = false;
    for name in WAITING {
        match std::fs::remove_file(overlay.join(name)) {
            Ok(()) => any = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("remove {}: {e}", overlay.join(name).display()),
                ))
            }
        }
    }
    if any {
        crate::overlay::sync_dir(overlay)?;
    }
    Ok(any)
}

/// Moves a container that must not apply out of the way, one copy kept for a person to read.
pub fn set_aside(overlay: &Path, file: &str) -> std::io::Result<PathBuf> {
    let to = overlay.join(format!("{file}.refused"));
    std::fs::rename(overlay.join(file), &to)?;
    crate::overlay::sync_dir(overlay)?;
    Ok(to)
}

/// Writes the container: temporary name, synced, renamed, directory synced.
pub fn write_container(overlay: &Path, archive: Option<&[u8]>, target: Option<&str>) -> Result<()> {
    let h = header(archive, target)?;
    let tmp = overlay.join(CONTAINER_NEW);
    let path = overlay.join(CONTAINER);
    let _ = std::fs::remove_file(&tmp);
    let r = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&h)?;
        if let Some(a) = archive {
            f.write_all(a)?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        crate::overlay::sync_dir(overlay)
    })();
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("write the keep container {}", path.display()));
    }
    Ok(())
}

/// What the boot does about a waiting container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing waits.
    None,
    /// Fresh overlay, then restore this (the record goes pending).
    Apply(Kept),
    /// Damaged: set aside, published; the overlay is left to the other rules.
    Damaged { file: &'static str, why: String },
    /// Prepared for another ROM: the flash did not happen. Discarded.
    OtherRom { target: String },
    /// The first boot after it completed already: discarded.
    Leftover,
}

/// See the module documentation. `ready_for` is the ROM the record says ready for, if any.
pub fn decide(overlay: &Path, booted: Option<&str>, ready_for: Option<&str>) -> Decision {
    match probe(overlay) {
        None => Decision::None,
        Some(Err((file, why))) => Decision::Damaged { file, why },
        Some(Ok(k)) => {
            if let (Some(t), Some(b)) = (&k.target, booted) {
                if t != b {
                    return Decision::OtherRom { target: t.clone() };
                }
            }
            if ready_for.is_some() && ready_for == booted {
                return Decision::Leftover;
            }
            Decision::Apply(k)
        }
    }
}

/// Restores a container that applies into the new root (preinit, once the overlay is
/// stacked): all of it through `ovlctl restore`'s checks, any path but the run-time trees
/// (the archive was chosen by the device's keep list when it was made, and its CRC holds).
/// A refused archive is set aside (`FILE.refused`, for a person to look at) so that it is
/// not tried at every boot.
pub fn restore_kept(root: &Path, overlay: &Path, kept: &Kept) -> Result<usize> {
    let Some((base, len)) = kept.archive else {
        return Ok(0);
    };
    let path = overlay.join(kept.file);
    let r = std::fs::File::open(&path)
        .with_context(|| format!("open {}", path.display()))
        .and_then(|file| {
            let o = crate::restore::Opts {
                root: root.to_path_buf(),
                archive: path.clone(),
                all_etc: false,
                everything: true,
            };
            crate::restore::run_source(&o, &crate::restore::Source { file, base, len })
        });
    match r {
        Ok(s) => Ok(s.restored),
        Err(e) => {
            let aside = set_aside(overlay, kept.file).map_or_else(
                |e| format!("could not be set aside: {e}"),
                |t| format!("set aside as {}", t.display()),
            );
            Err(e.context(aside))
        }
    }
}

/// The version and compat version a ROM tree says it has (`etc/ovl/release`).
pub fn release(root: &Path) -> Option<(String, (u32, u32))> {
    let text = std::fs::read_to_string(root.join(RELEASE)).ok()?;
    let mut version = String::new();
    let mut compat = None;
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("version", v)) => version = v.to_string(),
            Some(("compat", v)) => compat = crate::image::parse_compat(v),
            _ => {}
        }
    }
    Some((version, compat?))
}

/// What to keep, as the flags of `sysupgrade` say.
#[derive(Debug, Clone, Default)]
pub struct KeepOpts {
    /// `-n`: keep nothing (the next boot starts from the new ROM's defaults).
    pub nothing: bool,
    pub changed_etc: bool,
    pub all: bool,
    pub skip_unchanged: bool,
    /// `-f TGZ`: keep this archive instead of making one.
    pub archive: Option<PathBuf>,
    pub root: PathBuf,
    pub overlay: PathBuf,
    pub state: Option<PathBuf>,
}

/// The archive to keep, checked as a restore would check it (so that what is kept restores).
fn keep_archive(o: &KeepOpts) -> Result<Option<Vec<u8>>> {
    if o.nothing {
        return Ok(None);
    }
    let bytes = match &o.archive {
        Some(p) => {
            let mut v = Vec::new();
            std::fs::File::open(p)
                .with_context(|| format!("open {}", p.display()))?
                .take(crate::restore::MAX_ARCHIVE + 1)
                .read_to_end(&mut v)
                .with_context(|| format!("read {}", p.display()))?;
            v
        }
        None => {
            let bo = backup::Opts {
                root: o.root.clone(),
                rom: None,
                extra: crate::keep::Extra {
                    changed_etc: o.changed_etc,
                    upper: o.all.then(|| o.overlay.join("upper")),
                    skip_unchanged: o.skip_unchanged,
                },
                output: None,
                state: o.state.clone(),
            };
            let (paths, left_out) = backup::list(&bo)?;
            for l in left_out {
                eprintln!("ovlctl: sysupgrade: /{l}");
            }
            let (board, rom) = backup::identity(&bo);
            let mut v = Vec::new();
            backup::write_to(&mut v, &bo.root, &paths, &board, &rom)?;
            eprintln!(
                "ovlctl: sysupgrade: keeping {} paths ({} bytes compressed)",
                paths.len(),
                v.len()
            );
            v
        }
    };
    let what = o
        .archive
        .as_ref()
        .map_or("the backup".to_string(), |p| p.display().to_string());
    crate::restore::check_bytes(&bytes).with_context(|| format!("{what}: not kept"))?;
    Ok(Some(bytes))
}

fn require_persistent(o: &KeepOpts) -> Result<crate::state::State> {
    let state = crate::status::read_state(o.state.as_deref())?;
    if state.mode.as_str() != "persistent" {
        bail!(
            "this boot runs on a {} overlay ({}): there is no writable partition mounted to \
             keep the configuration on. Upgrade with -n (nothing kept), or reboot into the \
             persistent overlay first",
            state.mode.as_str(),
            state.reason.as_deref().unwrap_or("no reason recorded")
        );
    }
    Ok(state)
}

/// `sysupgrade-keep`: the container for whatever ROM boots next, and the record pending.
pub fn keep_only(o: &KeepOpts) -> Result<()> {
    require_persistent(o)?;
    let archive = keep_archive(o)?;
    write_container(&o.overlay, archive.as_deref(), None)?;
    pending(&o.overlay, None)?;
    eprintln!(
        "ovlctl: sysupgrade-keep: {} in {}; the next boot starts a fresh overlay{}",
        if archive.is_some() {
            "the configuration is kept"
        } else {
            "nothing is kept (-n)"
        },
        o.overlay.join(CONTAINER).display(),
        if archive.is_some() {
            " and restores it"
        } else {
            ""
        }
    );
    Ok(())
}

/// Sets the record pending (for `rom`, when known), so that the next boot applies the container
/// even when the ROM it boots is the same build.
fn pending(overlay: &Path, rom: Option<&str>) -> Result<()> {
    let mut rec =
        crate::overlay::read(overlay)?.unwrap_or_else(|| crate::overlay::Record::pending(None));
    rec.first_boot = crate::overlay::FirstBoot::Pending;
    if let Some(r) = rom {
        rec.rom = Some(r.to_string());
    }
    crate::overlay::write(overlay, &rec)?;
    Ok(())
}

#[derive(Debug, Clone, Default)]
pub struct Opts {
    pub image: PathBuf,
    pub keep: KeepOpts,
    /// `-T`: check the image and stop.
    pub test_only: bool,
    /// `-F`: write an image for another board or compat major (never a damaged one).
    pub force: bool,
    /// The ROM partition; by default the one preinit booted from.
    pub rom_dev: Option<PathBuf>,
    pub no_reboot: bool,
}

/// Where a new ROM goes: written to its partition, or staged in its UBI volume.
enum Writer {
    Flash(crate::flash::Target),
    /// The ROM is a UBI volume read through ubiblock: staged beside the running ROM
    /// ([`crate::ubistage`]).
    UbiStage {
        vol_dev: PathBuf,
        geometry: crate::ubistage::Geometry,
        /// The running ROM's size.
        old: u64,
        /// The device's minimal write unit.
        min_io: usize,
    },
}

impl Writer {
    fn of(dev: &Path) -> Result<Writer> {
        let name = dev.file_name().map(|n| n.to_string_lossy().into_owned());
        let Some(num) = name.as_deref().and_then(|n| n.strip_prefix("ubiblock")) else {
            return Ok(Writer::Flash(crate::flash::Target::of(dev)));
        };
        let sys = Path::new("/sys");
        let v = crate::ubi::volume_of(sys, &format!("ubi{num}"))
            .with_context(|| format!("{}: no UBI volume ubi{num} in sysfs", dev.display()))?;
        let geometry = crate::ubistage::Geometry::of(sys, &v)
            .with_context(|| format!("the geometry of UBI volume {}", v.dev_name()))?;
        let head = crate::probe::read_head(dev, crate::probe::magic::PROBE_BYTES)
            .with_context(|| format!("read {}", dev.display()))?;
        let crate::probe::magic::Content::Squashfs { bytes_used } =
            crate::probe::magic::identify(&head)
        else {
            bail!("{}: the running ROM is not squashfs", dev.display());
        };
        let min_io = crate::ubi::device_number(sys, v.ubi, "min_io_size").unwrap_or(1);
        Ok(Writer::UbiStage {
            vol_dev: dev.with_file_name(v.dev_name()),
            geometry,
            old: bytes_used,
            min_io: usize::try_from(min_io).unwrap_or(1),
        })
    }

    fn name(&self) -> String {
        match self {
            Writer::Flash(t) => t.name(),
            Writer::UbiStage { vol_dev, .. } => format!("UBI volume {}", vol_dev.display()),
        }
    }

    /// How many bytes a ROM may have: the partition, or the room beside the running ROM.
    fn room(&self) -> Result<u64> {
        match self {
            Writer::Flash(t) => t.room(),
            Writer::UbiStage { geometry, old, .. } => Ok(geometry.room(*old)),
        }
    }

    fn write(&self, data: &[u8], progress: &mut dyn FnMut(u64, u64)) -> Result<()> {
        match self {
            Writer::Flash(t) => t.write_verify(data, progress),
            Writer::UbiStage {
                vol_dev,
                geometry,
                old,
                min_io,
            } => crate::ubistage::stage(vol_dev, *geometry, *old, *min_io, data, progress),
        }
    }
}

/// `sysupgrade`: check the image, keep the configuration, write and verify the ROM, reboot.
pub fn run(o: &Opts) -> Result<()> {
    let img = crate::image::read(&o.image)?;
    let m = &img.meta;
    println!(
        "image: version {} (compat {}.{}) for {}; ROM {} bytes, CRC32 {:08x}",
        m.version,
        m.compat.0,
        m.compat.1,
        m.boards.join(", "),
        m.size,
        m.crc32
    );
    let state = crate::status::read_state(o.keep.state.as_deref()).ok();
    let board = state
        .as_ref()
        .and_then(|s| s.board.as_ref())
        .map(|b| b.as_str().to_string());
    let dev = match (&o.rom_dev, state.as_ref().and_then(|s| s.rom.as_ref())) {
        (Some(d), _) => d.clone(),
        (None, Some(r)) if r.as_str().starts_with("/dev/") => PathBuf::from(r.as_str()),
        _ => bail!(
            "no ROM partition known: this boot has no ROM device in its state (a rootfs boot, \
             or not booted by ovl); give --rom-dev DEV"
        ),
    };
    let board_file = o.keep.root.join("etc/ovl/board.json");
    if let Ok(b) = crate::board::Board::load(&board_file.display().to_string()) {
        if b.data.as_deref() == Some("after-rom") {
            bail!(
                "this board keeps its writable data right after the ROM in the same partition \
                 (data: after-rom): a new ROM of another size would move it and overwrite what \
                 it holds. sysupgrade does not write such a layout; write the whole partition \
                 with a new disk image instead"
            );
        }
    }
    let writer = Writer::of(&dev)?;
    // Unknown room is refused before writing: a write that runs out of flash half way
    // would leave neither ROM.
    let room = match writer.room() {
        Ok(r) => Some(r),
        Err(e) if o.test_only => {
            println!("note: the ROM partition's size is not known ({e:#})");
            None
        }
        Err(e) => return Err(e.context("the ROM partition's size: nothing was written")),
    };
    let current = release(&o.keep.root).map(|(_, c)| c);
    let v = crate::image::check(&img, board.as_deref(), current, !o.keep.nothing, room);
    for w in &v.warnings {
        println!("note: {w}");
    }
    if !v.fatal.is_empty() {
        bail!("image refused: {}", v.fatal.join("; "));
    }
    if !v.forceable.is_empty() {
        if !o.force {
            bail!(
                "image refused: {} (-F writes it all the same)",
                v.forceable.join("; ")
            );
        }
        println!("forced (-F): {}", v.forceable.join("; "));
    }
    let new_rom = img
        .rom_identity()
        .context("the image's ROM identity cannot be read")?;
    println!(
        "target: {} ({} bytes{})",
        writer.name(),
        room.map_or("?".into(), |r| r.to_string()),
        if o.test_only {
            "; -T: nothing written"
        } else {
            ""
        }
    );
    if o.test_only {
        println!("image OK");
        return Ok(());
    }
    // Kept first: until the container is complete the ROM is untouched.
    // Keeping needs the writable partition mounted; -n does without (on a tmpfs fallback
    // there is nothing mounted to mark, and the new ROM is stale to the old overlay).
    let persistent = match (o.keep.nothing, require_persistent(&o.keep)) {
        (false, Err(e)) => return Err(e),
        (_, r) => r.is_ok(),
    };
    if o.keep.nothing {
        // A fresh overlay is wanted all the same (OpenWrt leaves the old one: #13980).
        if persistent {
            write_container(&o.keep.overlay, None, Some(&new_rom))?;
        }
    } else {
        let archive = keep_archive(&o.keep)?;
        write_container(&o.keep.overlay, archive.as_deref(), Some(&new_rom))?;
    }
    // The running ROM's pages may be read again from the flash being written: keep ours.
    if let Err(e) = nix::sys::mman::mlockall(
        nix::sys::mman::MlockAllFlags::MCL_CURRENT | nix::sys::mman::MlockAllFlags::MCL_FUTURE,
    ) {
        log::warn!("mlockall: {}", crate::sys::errno_text(e));
    }
    let t = std::time::Instant::now();
    writer.write(img.payload(), &mut crate::flash::progress())?;
    println!(
        "written and verified {} bytes to {} in {} s{}",
        img.payload().len(),
        writer.name(),
        crate::decimal::secs(t.elapsed(), 1),
        if matches!(writer, Writer::UbiStage { .. }) {
            " (staged: the next boot puts it in place before it mounts the ROM)"
        } else {
            ""
        }
    );
    if persistent {
        pending(&o.keep.overlay, Some(&new_rom))?;
    }
    nix::unistd::sync();
    if o.no_reboot {
        println!("not rebooting (--no-reboot): the new ROM boots at the next start");
        return Ok(());
    }
    println!("rebooting");
    nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT)
        .map_err(|e| crate::sys::errno_error(format_args!("reboot"), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_round_trip_and_damage() {
        let d = tempfile::tempdir().unwrap();
        write_container(d.path(), Some(b"archive bytes"), Some("sqfs-1-2")).unwrap();
        let k = check_container(&d.path().join(CONTAINER)).unwrap();
        assert_eq!(k.target.as_deref(), Some("sqfs-1-2"));
        assert_eq!(k.archive, Some((64, 13)));
        // Torn: a byte short.
        let p = d.path().join(CONTAINER);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
        assert!(check_container(&p).unwrap_err().contains("torn"));
        // A flipped bit in the archive, then in the header.
        let mut b = bytes.clone();
        b[70] ^= 1;
        std::fs::write(&p, &b).unwrap();
        assert!(check_container(&p).unwrap_err().contains("CRC32"));
        let mut b = bytes.clone();
        b[30] ^= 1;
        std::fs::write(&p, &b).unwrap();
        assert!(check_container(&p).unwrap_err().contains("header"));
        std::fs::write(&p, &bytes[..10]).unwrap();
        assert!(check_container(&p).is_err());
    }

    #[test]
    fn decisions() {
        let d = tempfile::tempdir().unwrap();
        let o = d.path();
        assert_eq!(decide(o, Some("new"), None), Decision::None);
        write_container(o, None, Some("new")).unwrap();
        assert!(matches!(
            decide(o, Some("new"), Some("old")),
            Decision::Apply(_)
        ));
        assert!(matches!(decide(o, Some("new"), None), Decision::Apply(_)));
        assert_eq!(decide(o, Some("new"), Some("new")), Decision::Leftover);
        assert_eq!(
            decide(o, Some("old"), Some("old")),
            Decision::OtherRom {
                target: "new".into()
            }
        );
        discard(o).unwrap();
        std::fs::write(o.join(crate::overlay::UPGRADE_BACKUP), b"x").unwrap();
        assert!(matches!(
            decide(o, Some("any"), Some("old")),
            Decision::Apply(_)
        ));
        std::fs::write(o.join(CONTAINER), b"OVLKEEP1 torn").unwrap();
        assert!(matches!(
            decide(o, Some("any"), None),
            Decision::Damaged { .. }
        ));
    }
}
