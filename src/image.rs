//! Sysupgrade images: the squashfs ROM as mksquashfs wrote it, then a metadata trailer.
//!
//! ```text
//! [squashfs, padded to 4 KiB] [metadata: text lines] [footer: 16 bytes]
//! footer = "OVLIMG01" | text length (u32 little endian) | CRC32 of the text (u32 le)
//! ```
//!
//! The metadata is plain text, one `key value` a line:
//! `ovl-image 1`, `boards NAME...`, `version V`, `compat MAJOR.MINOR`, `size N` (the
//! payload's length in bytes: the squashfs with its padding), `crc32 HEX` (of the payload).
//! A tool reads the last 16 bytes, then the text before them; `unsquashfs` reads the image as
//! it is, since squashfs stops at the length its superblock gives. Nothing is gzip'd, so no
//! gzip tool meets a trailer it does not expect (OpenWrt's breaks `gzip -t`: #9619).

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::Path;

pub const FOOTER_MAGIC: &[u8; 8] = b"OVLIMG01";
pub const FOOTER_LEN: usize = 16;
const HEAD: &str = "ovl-image 1";
/// Larger than any ROM partition of the boards this runs on; a bound on what is read.
pub const MAX_IMAGE: u64 = 256 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Meta {
    pub boards: Vec<String>,
    pub version: String,
    pub compat: (u32, u32),
    pub size: u64,
    pub crc32: u32,
}

impl Meta {
    pub fn encode(&self) -> String {
        format!(
            "{HEAD}\nboards {}\nversion {}\ncompat {}.{}\nsize {}\ncrc32 {:08x}\n",
            self.boards.join(" "),
            self.version,
            self.compat.0,
            self.compat.1,
            self.size,
            self.crc32
        )
    }

    pub fn decode(text: &str) -> Result<Meta, String> {
        let mut lines = text.lines();
        if lines.next() != Some(HEAD) {
            return Err(format!("metadata does not start with `{HEAD}`"));
        }
        let mut m = Meta::default();
        let (mut size, mut crc, mut compat) = (None, None, None);
        for line in lines {
            let (k, v) = line.split_once(' ').unwrap_or((line, ""));
            match k {
                "boards" => m.boards = v.split_whitespace().map(str::to_string).collect(),
                "version" => m.version = v.to_string(),
                "compat" => compat = parse_compat(v),
                "size" => size = v.parse().ok(),
                "crc32" => crc = u32::from_str_radix(v, 16).ok(),
                // Keys a later format adds are not ours to refuse.
                _ => {}
            }
        }
        m.size = size.ok_or("metadata without a valid `size`")?;
        m.crc32 = crc.ok_or("metadata without a valid `crc32`")?;
        m.compat = compat.ok_or("metadata without a valid `compat MAJOR.MINOR`")?;
        if m.boards.is_empty() {
            return Err("metadata names no board".into());
        }
        Ok(m)
    }
}

pub fn parse_compat(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.split_once('.').unwrap_or((v, "0"));
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The image: its metadata and its payload (the squashfs).
#[derive(Debug)]
pub struct Image {
    pub meta: Meta,
    pub bytes: Vec<u8>,
}

impl Image {
    pub fn payload(&self) -> &[u8] {
        self.bytes
            .get(..usize::try_from(self.meta.size).unwrap_or(usize::MAX))
            .unwrap_or_default()
    }

    /// The identity the ROM will have once written (see `overlay::rom_identity`).
    pub fn rom_identity(&self) -> Option<String> {
        crate::overlay::rom_identity_of(self.payload()).ok()
    }
}

/// Builds an image from a squashfs file.
pub fn build(rom: &[u8], boards: &[String], version: &str, compat: (u32, u32)) -> Result<Vec<u8>> {
    if rom.get(..4) != Some(b"hsqs".as_slice()) {
        bail!("the ROM is not a squashfs image");
    }
    if boards.is_empty()
        || boards
            .iter()
            .any(|b| b.is_empty() || b.contains(char::is_whitespace))
    {
        bail!("give one or more board names, without spaces");
    }
    if version.is_empty() || version.contains('\n') {
        bail!("the version must be one non-empty line");
    }
    let mut out = rom.to_vec();
    // Whole 4 KiB units, so that the payload can be written to flash as it is.
    out.resize(rom.len().div_ceil(4096) * 4096, 0);
    let meta = Meta {
        boards: boards.to_vec(),
        version: version.to_string(),
        compat,
        size: out.len() as u64,
        crc32: crate::crc32::hash(&out),
    };
    let text = meta.encode();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(FOOTER_MAGIC);
    out.extend_from_slice(&u32::try_from(text.len())?.to_le_bytes());
    out.extend_from_slice(&crate::crc32::hash(text.as_bytes()).to_le_bytes());
    Ok(out)
}

/// Reads an image from a file or standard input (`-`), bounded, and parses its trailer.
pub fn read(path: &Path) -> Result<Image> {
    let mut bytes = Vec::new();
    if path == Path::new("-") {
        std::io::stdin()
            .lock()
            .take(MAX_IMAGE + 1)
            .read_to_end(&mut bytes)
            .context("read the image from standard input")?;
    } else {
        std::fs::File::open(path)
            .with_context(|| format!("open {}", path.display()))?
            .take(MAX_IMAGE + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("read {}", path.display()))?;
    }
    if bytes.len() as u64 > MAX_IMAGE {
        bail!("{}: larger than {} MiB", path.display(), MAX_IMAGE >> 20);
    }
    parse(bytes).with_context(|| format!("{}", path.display()))
}

/// Parses the trailer and checks the payload's CRC32 and that it is squashfs.
pub fn parse(bytes: Vec<u8>) -> Result<Image> {
    let n = bytes.len();
    let footer = n
        .checked_sub(FOOTER_LEN)
        .and_then(|at| bytes.get(at..))
        .context("too short to be a sysupgrade image")?;
    if footer.get(..8) != Some(FOOTER_MAGIC.as_slice()) {
        bail!("no ovl image trailer (the last 16 bytes do not start with OVLIMG01): not a sysupgrade image");
    }
    let word = |at: usize| {
        footer
            .get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes)
            .unwrap_or(0)
    };
    let (len, crc) = (word(8) as usize, word(12));
    let text_at = (n - FOOTER_LEN)
        .checked_sub(len)
        .context("the trailer's length runs past the start of the image")?;
    let text = bytes.get(text_at..n - FOOTER_LEN).unwrap_or_default();
    if crate::crc32::hash(text) != crc {
        bail!("the metadata's CRC32 does not match: a damaged image");
    }
    let text = std::str::from_utf8(text).context("the metadata is not UTF-8")?;
    let meta = Meta::decode(text).map_err(anyhow::Error::msg)?;
    if meta.size != text_at as u64 {
        bail!(
            "the metadata says the payload has {} bytes, the image holds {text_at}",
            meta.size
        );
    }
    let img = Image { meta, bytes };
    let got = crate::crc32::hash(img.payload());
    if got != img.meta.crc32 {
        bail!(
            "the payload's CRC32 is {got:08x}, the metadata says {:08x}: a damaged image \
             (never written, -F or not)",
            img.meta.crc32
        );
    }
    if img.payload().get(..4) != Some(b"hsqs".as_slice()) {
        bail!("the payload is not squashfs");
    }
    Ok(img)
}

/// What stands between an image and the device.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Overridable with -F.
    pub forceable: Vec<String>,
    /// Never overridden.
    pub fatal: Vec<String>,
    pub warnings: Vec<String>,
}

/// Checks an image against the device: its board, the compat version of the running ROM
/// (`current`, when known), whether the configuration is kept, the ROM partition's size.
pub fn check(
    img: &Image,
    board: Option<&str>,
    current: Option<(u32, u32)>,
    keep: bool,
    room: Option<u64>,
) -> Verdict {
    let mut v = Verdict::default();
    match board {
        Some(b) if img.meta.boards.iter().any(|x| x == b) => {}
        Some(b) => v.forceable.push(format!(
            "the image is for {}, this device is {b}",
            img.meta.boards.join(", ")
        )),
        None => v.forceable.push("this device's board is not known".into()),
    }
    if let Some((major, minor)) = current {
        if major != img.meta.compat.0 {
            let msg = format!(
                "the image's compat version {}.{} has another major than this ROM's {major}.{minor}: \
                 the kept configuration would not fit it",
                img.meta.compat.0, img.meta.compat.1
            );
            if keep {
                v.fatal
                    .push(format!("{msg}; upgrade without keeping it (-n)"));
            } else {
                v.forceable.push(msg);
            }
        } else if minor != img.meta.compat.1 {
            v.warnings.push(format!(
                "compat version {major}.{minor} -> {}.{}",
                img.meta.compat.0, img.meta.compat.1
            ));
        }
    }
    if let Some(room) = room {
        if img.meta.size > room {
            v.fatal.push(format!(
                "the ROM is {} bytes, the ROM partition holds {room}",
                img.meta.size
            ));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rom() -> Vec<u8> {
        let mut r = b"hsqs".to_vec();
        r.resize(5000, 7);
        r
    }

    #[test]
    fn build_then_parse() {
        let b = vec!["qemu-a".to_string(), "qemu-b".to_string()];
        let bytes = build(&rom(), &b, "2.0", (1, 2)).unwrap();
        let img = parse(bytes).unwrap();
        assert_eq!(img.meta.boards, b);
        assert_eq!(img.meta.version, "2.0");
        assert_eq!(img.meta.compat, (1, 2));
        assert_eq!(img.meta.size, 8192);
        assert_eq!(img.payload().get(..5000), Some(rom().as_slice()));
    }

    #[test]
    fn damage_is_refused() {
        let good = build(&rom(), &["b".into()], "1", (1, 0)).unwrap();
        let mut bad = good.clone();
        bad[100] ^= 1;
        assert!(format!("{:#}", parse(bad).unwrap_err()).contains("CRC32"));
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 20] ^= 1;
        assert!(parse(bad).is_err());
        assert!(parse(good[..good.len() - 1].to_vec()).is_err());
        assert!(parse(rom()).is_err());
    }

    #[test]
    fn checks() {
        let img = parse(build(&rom(), &["a".into()], "1", (2, 1)).unwrap()).unwrap();
        assert_eq!(
            check(&img, Some("a"), Some((2, 0)), true, None).fatal.len(),
            0
        );
        assert_eq!(
            check(&img, Some("b"), Some((2, 1)), true, None)
                .forceable
                .len(),
            1
        );
        assert_eq!(
            check(&img, Some("a"), Some((1, 0)), true, None).fatal.len(),
            1
        );
        assert_eq!(
            check(&img, Some("a"), Some((1, 0)), false, None)
                .forceable
                .len(),
            1
        );
        assert_eq!(
            check(&img, Some("a"), None, true, Some(4096)).fatal.len(),
            1
        );
    }
}
