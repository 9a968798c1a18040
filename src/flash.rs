//! Writing a ROM image: MTD (erase, program, read back and compare, bad blocks skipped) or a
//! block device (write, sync, drop the cache, read back and compare).

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

nix::ioctl_read!(blk_get_size64, 0x12, 114, u64);
nix::ioctl_none!(blk_flush_buf, 0x12, 97);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An MTD character device (`/dev/mtdN`), also when named by its mtdblock.
    Mtd(PathBuf),
    /// A block device or, in tests, a regular file.
    Block(PathBuf),
}

impl Target {
    /// `/dev/mtdblockN` is written through `/dev/mtdN`: mtdblock would erase and rewrite a
    /// whole block for each sector, and cannot tell a bad block.
    pub fn of(dev: &Path) -> Target {
        let name = dev.file_name().map(|n| n.to_string_lossy().into_owned());
        match name.as_deref().and_then(|n| n.strip_prefix("mtdblock")) {
            Some(n) if n.parse::<u32>().is_ok() => {
                Target::Mtd(dev.with_file_name(format!("mtd{n}")))
            }
            _ if name.as_deref().is_some_and(|n| {
                n.strip_prefix("mtd")
                    .is_some_and(|d| d.parse::<u32>().is_ok())
            }) =>
            {
                Target::Mtd(dev.to_path_buf())
            }
            _ => Target::Block(dev.to_path_buf()),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Target::Mtd(p) | Target::Block(p) => p.display().to_string(),
        }
    }

    /// How many bytes the partition holds (good blocks only, on MTD).
    pub fn room(&self) -> Result<u64> {
        match self {
            Target::Mtd(p) => {
                let mut d = crate::mtd::Writer::open(p)?;
                d.good_bytes()
            }
            Target::Block(p) => {
                let f = std::fs::File::open(p).with_context(|| format!("open {}", p.display()))?;
                let m = f
                    .metadata()
                    .with_context(|| format!("read {}", p.display()))?;
                if m.is_file() {
                    return Ok(m.len());
                }
                let mut n: u64 = 0;
                // SAFETY: BLKGETSIZE64 writes one u64.
                unsafe { blk_get_size64(f.as_raw_fd(), &mut n) }.map_err(|e| {
                    crate::sys::errno_error(format_args!("BLKGETSIZE64 on {}", p.display()), e)
                })?;
                Ok(n)
            }
        }
    }

    pub fn write_verify(&self, data: &[u8], progress: &mut dyn FnMut(u64, u64)) -> Result<()> {
        match self {
            Target::Mtd(p) => crate::mtd::Writer::open(p)?.write_verify(data, progress),
            Target::Block(p) => block_write_verify(p, data, progress),
        }
    }
}

const CHUNK: usize = 64 * 1024;

fn block_write_verify(p: &Path, data: &[u8], progress: &mut dyn FnMut(u64, u64)) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .with_context(|| format!("open {}", p.display()))?;
    let total = data.len() as u64;
    let mut at = 0u64;
    for chunk in data.chunks(CHUNK) {
        f.write_all_at(chunk, at)
            .with_context(|| format!("write {} at {at:#x}", p.display()))?;
        at += chunk.len() as u64;
        progress(at, total);
    }
    f.sync_all()
        .with_context(|| format!("sync {}", p.display()))?;
    // Read back from the device, not from the cache the writes filled.
    let is_file = f.metadata().is_ok_and(|m| m.is_file());
    if !is_file {
        // SAFETY: BLKFLSBUF takes no argument.
        if let Err(e) = unsafe { blk_flush_buf(f.as_raw_fd()) } {
            log::warn!(
                "BLKFLSBUF on {}: {}",
                p.display(),
                crate::sys::errno_text(e)
            );
        }
    }
    let _ = nix::fcntl::posix_fadvise(
        &f,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    for chunk in data.chunks(CHUNK) {
        let b = buf.get_mut(..chunk.len()).unwrap_or_default();
        f.read_exact_at(b, at)
            .with_context(|| format!("read back {} at {at:#x}", p.display()))?;
        if b != chunk {
            bail!(
                "{}: what was read back at {at:#x} differs from what was written",
                p.display()
            );
        }
        at += chunk.len() as u64;
    }
    Ok(())
}

/// Progress on standard error: a line redrawn on a terminal, every 25 % otherwise.
pub fn progress() -> impl FnMut(u64, u64) {
    let tty = nix::unistd::isatty(std::io::stderr()).unwrap_or(false);
    let mut last = 0u64;
    move |done, total| {
        let pct = done.saturating_mul(100) / total.max(1);
        let mut e = std::io::stderr().lock();
        if tty {
            let _ = write!(
                e,
                "\rwriting: {} of {} KiB ({pct}%){}",
                done >> 10,
                total >> 10,
                if done == total { "\n" } else { "" }
            );
        } else if pct >= last + 25 || done == total {
            last = pct - pct % 25;
            let _ = writeln!(e, "writing: {} of {} KiB ({pct}%)", done >> 10, total >> 10);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            Target::of(Path::new("/dev/mtdblock3")),
            Target::Mtd("/dev/mtd3".into())
        );
        assert_eq!(
            Target::of(Path::new("/dev/mtd1")),
            Target::Mtd("/dev/mtd1".into())
        );
        assert_eq!(
            Target::of(Path::new("/dev/vda1")),
            Target::Block("/dev/vda1".into())
        );
        assert_eq!(
            Target::of(Path::new("/dev/mtdblockX")),
            Target::Block("/dev/mtdblockX".into())
        );
    }

    #[test]
    fn writes_a_file_and_reads_it_back() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("rom");
        std::fs::write(&p, vec![0u8; 300_000]).unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut seen = Vec::new();
        Target::of(&p)
            .write_verify(&data, &mut |a, b| seen.push((a, b)))
            .unwrap();
        assert_eq!(&std::fs::read(&p).unwrap()[..200_000], &data[..]);
        assert_eq!(seen.last(), Some(&(200_000, 200_000)));
        assert_eq!(Target::of(&p).room().unwrap(), 300_000);
    }
}
