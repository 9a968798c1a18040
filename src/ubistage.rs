//! A new ROM for a UBI `rootfs` volume, written so that a power cut at any point boots the old
//! ROM or the new one.
//!
//! The running system cannot update the volume it booted from: ubiblock holds it open, and a
//! volume update needs it alone (and would wipe the old ROM before the new one is whole). The
//! volume is larger than its squashfs, though, so `sysupgrade` **stages** the new ROM in the
//! volume's unused tail, one atomic LEB change (`UBI_IOCEBCH`) at a time, while the old ROM
//! keeps running from the head, and writes a header into the last LEB once the copy is read
//! back whole:
//!
//! ```text
//! last LEB: "OVLSTAGE" | LEBs (u32) | bytes (u64) | CRC32 of the image (u32) | first LEB (u32)
//!           | CRC32 of the header so far (u32)        (little endian)
//! ```
//!
//! The next preinit, before it makes the ubiblock device and mounts anything ([`finish`]),
//! finds the header, checks the staged copy's CRC, copies it over the head LEB by LEB (each
//! change atomic), reads the head back, and only then replaces the header with an empty LEB.
//! A cut while staging leaves no valid header: the old ROM boots. A cut while copying leaves
//! the header and the staged copy (the head and the tail do not overlap): the next preinit
//! copies again from the start. The head is never mounted half copied, because preinit
//! finishes before it mounts.

use anyhow::{bail, Context, Result};
use std::os::unix::fs::FileExt;
use std::path::Path;

const MAGIC: &[u8; 8] = b"OVLSTAGE";
const HEADER_LEN: usize = 32;

/// The geometry of a volume: its LEB size and how many LEBs it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub leb: u64,
    pub lebs: u32,
}

impl Geometry {
    pub fn of(sys_dir: &Path, v: &crate::ubi::Volume) -> Option<Geometry> {
        let leb = crate::ubi::volume_number(sys_dir, v, "usable_eb_size")?;
        let lebs = crate::ubi::volume_number(sys_dir, v, "reserved_ebs")?;
        Some(Geometry {
            leb,
            lebs: u32::try_from(lebs).ok()?,
        })
    }

    fn lebs_for(&self, bytes: u64) -> u32 {
        u32::try_from(bytes.div_ceil(self.leb.max(1))).unwrap_or(u32::MAX)
    }

    /// The largest ROM that can be staged beside a running one of `old` bytes.
    pub fn room(&self, old: u64) -> u64 {
        let free = self.lebs.saturating_sub(1);
        let n = (free / 2).min(free.saturating_sub(self.lebs_for(old)));
        u64::from(n) * self.leb
    }

    /// Where a staged copy of `new` bytes goes, when the running ROM of `old` bytes leaves
    /// room for it: the LEBs just below the header's.
    pub fn stage_at(&self, old: u64, new: u64) -> Option<u32> {
        let n = self.lebs_for(new);
        let start = self.lebs.checked_sub(1)?.checked_sub(n)?;
        (start >= n.max(self.lebs_for(old))).then_some(start)
    }
}

fn header(lebs: u32, len: u64, crc: u32, start: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    let mut at = 0;
    for part in [
        &MAGIC[..],
        &lebs.to_le_bytes(),
        &len.to_le_bytes(),
        &crc.to_le_bytes(),
        &start.to_le_bytes(),
    ] {
        if let Some(dst) = h.get_mut(at..at + part.len()) {
            dst.copy_from_slice(part);
        }
        at += part.len();
    }
    let hcrc = crate::crc32::hash(h.get(..28).unwrap_or_default());
    if let Some(dst) = h.get_mut(28..32) {
        dst.copy_from_slice(&hcrc.to_le_bytes());
    }
    h
}

/// (LEBs, bytes, CRC32, first LEB) of a valid header.
fn parse_header(h: &[u8]) -> Option<(u32, u64, u32, u32)> {
    let word = |at: usize| {
        h.get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes)
    };
    if h.get(..8) != Some(MAGIC.as_slice()) {
        return None;
    }
    if crate::crc32::hash(h.get(..28)?) != word(28)? {
        return None;
    }
    let len = h
        .get(12..20)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)?;
    Some((word(8)?, len, word(20)?, word(24)?))
}

fn read_lebs(f: &std::fs::File, g: Geometry, first: u32, len: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
    f.read_exact_at(&mut buf, u64::from(first) * g.leb)?;
    Ok(buf)
}

fn write_lebs(
    f: &mut std::fs::File,
    g: Geometry,
    first: u32,
    data: &[u8],
    what: &str,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let mut done = 0u64;
    let leb = usize::try_from(g.leb).context("LEB size")?;
    for (i, chunk) in data.chunks(leb).enumerate() {
        let lnum = first + u32::try_from(i).context("LEB number")?;
        crate::ubi::leb_change(f, lnum, chunk).map_err(|e| {
            crate::sys::errno_error(format_args!("{what}: UBI_IOCEBCH of LEB {lnum}"), e)
        })?;
        done += chunk.len() as u64;
        progress(done, data.len() as u64);
    }
    Ok(())
}

/// Writes `data` from LEB `first` of the open volume by direct writes: each LEB unmapped,
/// then written, the last one padded with 0xFF to whole `min_io` units. Not atomic per LEB;
/// the header's CRC is what says a copy is whole.
fn direct_write_lebs(
    f: &std::fs::File,
    g: Geometry,
    first: u32,
    data: &[u8],
    min_io: usize,
    what: &str,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let leb = usize::try_from(g.leb).context("LEB size")?;
    let mut done = 0u64;
    for (i, chunk) in data.chunks(leb).enumerate() {
        let lnum = first + u32::try_from(i).context("LEB number")?;
        crate::ubi::leb_unmap(f, lnum).map_err(|e| {
            crate::sys::errno_error(format_args!("{what}: UBI_IOCEBUNMAP of LEB {lnum}"), e)
        })?;
        let mut buf = chunk.to_vec();
        buf.resize(chunk.len().div_ceil(min_io.max(1)) * min_io.max(1), 0xff);
        f.write_all_at(&buf, u64::from(lnum) * g.leb)
            .with_context(|| format!("{what}: write LEB {lnum}"))?;
        done += chunk.len() as u64;
        progress(done, data.len() as u64);
    }
    Ok(())
}

/// `sysupgrade` on a UBI ROM: stages `image` (the squashfs) in the tail of the volume node
/// `vol_dev` while the old ROM (`old` bytes) runs from its head. Nothing of the head changes.
/// `min_io` is the device's minimal write unit (`/sys/class/ubi/ubiN/min_io_size`).
pub fn stage(
    vol_dev: &Path,
    g: Geometry,
    old: u64,
    min_io: usize,
    image: &[u8],
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let name = vol_dev.display().to_string();
    let Some(start) = g.stage_at(old, image.len() as u64) else {
        bail!(
            "{name}: {} LEBs of {} bytes hold the running ROM ({old} bytes) but not a second copy of \
             the new one ({} bytes) beside it: nothing was written",
            g.lebs,
            g.leb,
            image.len()
        );
    };
    let f = crate::ubi::open_volume(vol_dev)
        .map_err(|e| crate::sys::errno_error(format_args!("open {name}"), e))?;
    crate::ubi::direct_writes(&f).map_err(|e| {
        crate::sys::errno_error(format_args!("{name}: UBI_IOCSETVOLPROP (direct writes)"), e)
    })?;
    direct_write_lebs(&f, g, start, image, min_io, &name, progress)?;
    let back =
        read_lebs(&f, g, start, image.len() as u64).with_context(|| format!("read back {name}"))?;
    if back != image {
        bail!("{name}: the staged copy reads back different from what was written");
    }
    let crc = crate::crc32::hash(image);
    let h = header(
        g.lebs_for(image.len() as u64),
        image.len() as u64,
        crc,
        start,
    );
    // Last: until the header is whole (its CRC), nothing is staged.
    direct_write_lebs(&f, g, g.lebs - 1, &h, min_io, &name, &mut |_, _| {})?;
    Ok(())
}

/// Zeroes the header by an atomic LEB change (an unmap could bring the old header back after
/// an unclean shutdown; it would only copy the same ROM again, but zeroes say it plainly).
fn retire(f: &mut std::fs::File, g: Geometry, name: &str) -> Result<()> {
    crate::ubi::leb_change(f, g.lebs - 1, &[0u8; HEADER_LEN])
        .map_err(|e| crate::sys::errno_error(format_args!("{name}: retire the stage header"), e))
}

/// preinit, before the ROM volume is opened: finishes a staged ROM (see the module notes).
/// Returns what it did, or None when nothing was staged.
pub fn finish(vol_dev: &Path, g: Geometry) -> Result<Option<String>> {
    let name = vol_dev.display().to_string();
    let f = std::fs::File::open(vol_dev).with_context(|| format!("open {name}"))?;
    let mut h = [0u8; HEADER_LEN];
    if f.read_exact_at(&mut h, u64::from(g.lebs.saturating_sub(1)) * g.leb)
        .is_err()
    {
        return Ok(None);
    }
    let Some((lebs, len, crc, start)) = parse_header(&h) else {
        return Ok(None);
    };
    // A header that places the copy outside the volume (or over the head) is not one
    // stage() wrote: nothing is read on its word, so no length it names is allocated.
    let fits = lebs == g.lebs_for(len)
        && start >= lebs
        && start.checked_add(lebs).is_some_and(|end| end < g.lebs);
    let staged = if fits {
        read_lebs(&f, g, start, len).with_context(|| format!("read {name}"))?
    } else {
        Vec::new()
    };
    drop(f);
    let mut f = crate::ubi::open_volume(vol_dev)
        .map_err(|e| crate::sys::errno_error(format_args!("open {name}"), e))?;
    if !fits || crate::crc32::hash(&staged) != crc {
        // Not a copy this code wrote whole: retire the header, keep the running ROM.
        retire(&mut f, g, &name)?;
        return Ok(Some(format!(
            "a staged ROM in {name} did not check out (its place or its CRC); the ROM is left as it was"
        )));
    }
    let head = read_lebs(&f, g, 0, len).with_context(|| format!("read {name}"))?;
    let copied = head != staged;
    if copied {
        write_lebs(&mut f, g, 0, &staged, &name, &mut |_, _| {})?;
        let back = read_lebs(&f, g, 0, len).with_context(|| format!("read back {name}"))?;
        if back != staged {
            bail!("{name}: the new ROM reads back different from its staged copy");
        }
    }
    // Last: from here on the head is the ROM.
    retire(&mut f, g, &name)?;
    Ok(Some(format!(
        "the new ROM staged in {name} ({len} bytes) {}",
        if copied {
            "was copied into place"
        } else {
            "was in place already"
        }
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_damage() {
        let h = header(6, 1_343_488, 0xdead_beef, 57);
        assert_eq!(parse_header(&h), Some((6, 1_343_488, 0xdead_beef, 57)));
        let mut bad = h;
        bad[13] ^= 1;
        assert_eq!(parse_header(&bad), None);
        assert_eq!(parse_header(&[0xff; 32]), None);
    }

    #[test]
    fn the_staged_copy_goes_beside_the_running_rom_or_not_at_all() {
        let g = Geometry {
            leb: 262_016,
            lebs: 64,
        };
        let mib = 1 << 20;
        // 2 MiB each: 9 LEBs; the copy ends just below the header LEB.
        assert_eq!(g.stage_at(2 * mib, 2 * mib), Some(54));
        // No room for both, or the copy would run over the running ROM.
        assert_eq!(g.stage_at(15 * mib, 2 * mib), None);
        assert_eq!(g.stage_at(2 * mib, 9 * mib), None);
        // room() is the largest size stage_at() takes.
        let r = g.room(2 * mib);
        assert!(g.stage_at(2 * mib, r).is_some() && g.stage_at(2 * mib, r + 1).is_none());
    }
}
