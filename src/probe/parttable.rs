//! Partition identities sysfs does not publish: the GPT partition GUIDs and the MBR disk
//! signature that `PARTUUID=` names, read from the disk's own partition table.
//!
//! The facts, from the UEFI specification and the kernel's block/partitions/{efi,msdos}.c:
//! - the GPT header is at LBA 1 (byte 512, or 4096 on 4 KiB-sector disks): `EFI PART`, then
//!   revision u32, header size u32 at 12, header CRC32 at 16 (computed with that field zero),
//!   the partition entry array's LBA u64 at 72, entry count u32 at 80, entry size u32 at 84 and
//!   the array's CRC32 at 88, all little-endian;
//! - an entry holds its type GUID at 0 (all zero: unused) and its unique GUID at 16; entry N
//!   (from 0) is partition N+1. A GUID prints as `%08x-%04x-%04x-` of its first three fields,
//!   little-endian, then its last 8 bytes as they are: the kernel's `%pUl`;
//! - an MBR disk has `55 aa` at 510 and its 32-bit signature (little-endian) at 440; the
//!   kernel names its partition N `%08x-%02x` of the signature and N.
//!
//! Everything here is a pure function of bytes, so that hostile tables can be fuzzed: every
//! count and offset read from the disk is checked before use.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// No real table has more: 128 entries of 128 bytes is 16 KiB.
pub const MAX_ENTRIES_BYTES: u64 = 1 << 20;

/// What a disk's table says about partition identities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Table {
    /// Unique GUIDs of the used entries, with their partition numbers.
    Gpt(Vec<(u32, String)>),
    /// The MBR disk signature.
    Mbr(u32),
}

impl Table {
    /// The PARTUUID of partition `n` (from 1), as the kernel prints it.
    pub fn partuuid(&self, n: u32) -> Option<String> {
        match self {
            Table::Gpt(parts) => parts.iter().find(|(i, _)| *i == n).map(|(_, g)| g.clone()),
            Table::Mbr(sig) => Some(format!("{sig:08x}-{n:02x}")),
        }
    }
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// The GUID text form the kernel uses for PARTUUID (lowercase, mixed endian).
pub fn guid_text(g: &[u8; 16]) -> String {
    let [a0, a1, a2, a3, b0, b1, c0, c1, rest @ ..] = *g;
    let mut s = format!(
        "{:08x}-{:04x}-{:04x}-",
        u32::from_le_bytes([a0, a1, a2, a3]),
        u16::from_le_bytes([b0, b1]),
        u16::from_le_bytes([c0, c1])
    );
    for (i, x) in rest.iter().enumerate() {
        if i == 2 {
            s.push('-');
        }
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// Where a GPT header says its entry array is: (byte offset, length), checked.
pub fn gpt_entries_at(header: &[u8], sector: u64) -> Result<(u64, u64), String> {
    if header.get(..8) != Some(b"EFI PART".as_slice()) {
        return Err("no GPT header".into());
    }
    let size = u32_at(header, 12).ok_or("GPT header cut short")?;
    let hsize = usize::try_from(size).map_err(|_| "GPT header size")?;
    if !(92..=header.len()).contains(&hsize) {
        return Err(format!("GPT header size {size} is out of range"));
    }
    let mut copy = header.get(..hsize).ok_or("GPT header cut short")?.to_vec();
    let want = u32_at(&copy, 16).ok_or("GPT header cut short")?;
    copy.get_mut(16..20).ok_or("GPT header cut short")?.fill(0);
    if crate::crc32::hash(&copy) != want {
        return Err("GPT header CRC is wrong".into());
    }
    let lba = u64_at(header, 72).ok_or("GPT header cut short")?;
    let count = u64::from(u32_at(header, 80).ok_or("GPT header cut short")?);
    let esize = u64::from(u32_at(header, 84).ok_or("GPT header cut short")?);
    if esize < 128 || esize % 8 != 0 {
        return Err(format!("GPT entry size {esize} is not valid"));
    }
    let len = count
        .checked_mul(esize)
        .filter(|&l| l <= MAX_ENTRIES_BYTES)
        .ok_or_else(|| format!("GPT says {count} entries of {esize} bytes: too many"))?;
    let at = lba
        .checked_mul(sector)
        .ok_or_else(|| format!("GPT entry array LBA {lba} is out of range"))?;
    Ok((at, len))
}

/// The used entries of a GPT entry array whose header is `header`.
pub fn parse_gpt(header: &[u8], entries: &[u8]) -> Result<Vec<(u32, String)>, String> {
    let want = u32_at(header, 88).ok_or("GPT header cut short")?;
    let esize = usize::try_from(u32_at(header, 84).ok_or("GPT header cut short")?)
        .map_err(|_| "GPT entry size")?;
    if esize < 128 {
        return Err(format!("GPT entry size {esize} is not valid"));
    }
    if crate::crc32::hash(entries) != want {
        return Err("GPT partition entries CRC is wrong".into());
    }
    let mut out = Vec::new();
    for (i, e) in entries.chunks_exact(esize).enumerate() {
        let (Some(kind), Some(uniq)) = (e.get(..16), e.get(16..32)) else {
            continue;
        };
        if kind.iter().all(|&b| b == 0) {
            continue;
        }
        let Ok(g) = <[u8; 16]>::try_from(uniq) else {
            continue;
        };
        let n = u32::try_from(i).ok().and_then(|i| i.checked_add(1));
        if let Some(n) = n {
            out.push((n, guid_text(&g)));
        }
    }
    Ok(out)
}

/// The MBR disk signature of a disk's first sector, when it has an MBR.
pub fn parse_mbr(sector0: &[u8]) -> Option<u32> {
    (sector0.get(510..512) == Some([0x55, 0xaa].as_slice()))
        .then(|| u32_at(sector0, 440))
        .flatten()
}

/// Reads the partition table of the whole disk `disk`: GPT when a valid one is there (512- or
/// 4096-byte sectors), else MBR.
pub fn read(disk: &Path) -> Result<Table, String> {
    let what = |e: std::io::Error| format!("read {}: {e}", disk.display());
    let mut f = std::fs::File::open(disk).map_err(what)?;
    let mut head = Vec::new();
    (&mut f).take(8192).read_to_end(&mut head).map_err(what)?;
    let mut gpt_err = None;
    for sector in [512u64, 4096] {
        // LBA 1: the second sector.
        let header = head
            .get(512 * (sector as usize / 512)..)
            .unwrap_or_default();
        let header = header.get(..sector as usize).unwrap_or(header);
        match gpt_entries_at(header, sector) {
            Ok((at, len)) => {
                let mut entries = vec![0u8; usize::try_from(len).unwrap_or(0)];
                f.seek(SeekFrom::Start(at)).map_err(what)?;
                f.read_exact(&mut entries).map_err(what)?;
                return parse_gpt(header, &entries)
                    .map(Table::Gpt)
                    .map_err(|e| format!("{}: {e}", disk.display()));
            }
            Err(e) if header.get(..8) == Some(b"EFI PART".as_slice()) => gpt_err = Some(e),
            Err(_) => {}
        }
    }
    if let Some(e) = gpt_err {
        // A GPT that fails its checks names no partition: no guessing from the MBR.
        return Err(format!("{}: {e}", disk.display()));
    }
    parse_mbr(&head)
        .map(Table::Mbr)
        .ok_or_else(|| format!("{}: no GPT and no MBR", disk.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn guid_text_is_mixed_endian() {
        let g = [
            0x4f, 0x57, 0x52, 0x54, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa,
            0xbb, 0x02,
        ];
        assert_eq!(guid_text(&g), "5452574f-2211-4433-5566-778899aabb02");
    }

    #[test]
    fn mbr_signature_names_partitions_as_the_kernel_does() {
        let mut s = vec![0u8; 512];
        assert_eq!(parse_mbr(&s), None);
        s[440..444].copy_from_slice(&0x5452574fu32.to_le_bytes());
        s[510] = 0x55;
        s[511] = 0xaa;
        let t = Table::Mbr(parse_mbr(&s).unwrap());
        assert_eq!(t.partuuid(2).as_deref(), Some("5452574f-02"));
        assert_eq!(parse_mbr(&s[..100]), None);
    }

    #[test]
    fn a_real_gpt_from_sgdisk_and_its_corruptions() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        std::fs::write(&img, vec![0u8; 4 << 20]).unwrap();
        let ok = Command::new("sgdisk")
            .args([
                "-n",
                "1:2048:4095",
                "-u",
                "1:11111111-2222-3333-4444-555555555555",
            ])
            .args([
                "-n",
                "2:4096:6143",
                "-u",
                "2:5452574F-2211-4433-5566-778899AABB02",
            ])
            .arg(&img)
            .output()
            .expect("sgdisk is needed (package gdisk)");
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        let t = read(&img).unwrap();
        assert_eq!(
            t.partuuid(2).as_deref(),
            Some("5452574f-2211-4433-5566-778899aabb02")
        );
        assert_eq!(
            t.partuuid(1).as_deref(),
            Some("11111111-2222-3333-4444-555555555555")
        );
        assert_eq!(t.partuuid(3), None);
        // A flipped bit in the header or in the entries: an error, not a guess.
        let mut bytes = std::fs::read(&img).unwrap();
        bytes[512 + 40] ^= 1;
        std::fs::write(&img, &bytes).unwrap();
        assert!(read(&img).unwrap_err().contains("header CRC"));
        bytes[512 + 40] ^= 1;
        bytes[1024 + 20] ^= 1;
        std::fs::write(&img, &bytes).unwrap();
        assert!(read(&img).unwrap_err().contains("entries CRC"));
    }

    #[test]
    fn hostile_headers_are_errors() {
        let mut h = vec![0u8; 512];
        h[..8].copy_from_slice(b"EFI PART");
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[72..80].copy_from_slice(&u64::MAX.to_le_bytes());
        h[80..84].copy_from_slice(&u32::MAX.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        let crc = crate::crc32::hash(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        assert!(gpt_entries_at(&h, 512).unwrap_err().contains("too many"));
        h[80..84].copy_from_slice(&4u32.to_le_bytes());
        h[16..20].fill(0);
        let crc = crate::crc32::hash(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        assert!(gpt_entries_at(&h, 512).unwrap_err().contains("LBA"));
        h[12..16].copy_from_slice(&9999u32.to_le_bytes());
        assert!(gpt_entries_at(&h, 512).unwrap_err().contains("size"));
        assert!(gpt_entries_at(&h[..20], 512).is_err());
        assert!(parse_gpt(&h[..10], &[]).is_err());
    }
}
