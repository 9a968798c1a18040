//! `ovlctl backup`: a gzip'd tar of the kept paths ([`crate::keep`]), relative to `/`, that
//! GNU tar and busybox tar list and extract. Owners (numeric), modes, mtimes and symlinks are
//! kept; directories are members of their own, so their modes survive a restore.
//!
//! The last member is a manifest (`etc/backup/ovl-manifest.txt`, plain text): the board and
//! ROM the backup was made on, then one line per member with its type, size, CRC32 and path.
//! A restore checks every member against it; archives without one (OpenWrt's, `tar czf`) are
//! restored all the same. The archive is written to a temporary file beside the output,
//! mode 0600 (it holds /etc/shadow), synced and renamed: a failure or a full disk leaves
//! nothing behind.

use crate::keep::{self, Extra, KeepList, Tree};
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub const MANIFEST: &str = "etc/backup/ovl-manifest.txt";
const MANIFEST_HEAD: &str = "ovl-backup 1";

#[derive(Debug, Clone, Default)]
pub struct Opts {
    pub root: PathBuf,
    pub rom: Option<PathBuf>,
    pub extra: Extra,
    /// None or `-`: standard output.
    pub output: Option<PathBuf>,
    /// The state file, to refuse a backup of a tmpfs fallback (only when the root is `/`).
    pub state: Option<PathBuf>,
}

impl Opts {
    pub fn tree(&self) -> Tree {
        Tree {
            root: self.root.clone(),
            rom: self.rom.clone().unwrap_or_else(|| self.root.join("rom")),
        }
    }
}

/// What a backup wrote.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub members: usize,
    pub bytes: u64,
    /// Paths the list named that a tar member cannot carry safely, with why.
    pub left_out: Vec<String>,
}

/// The paths `backup` would write, after the same filtering (what `--list` prints).
pub fn list(o: &Opts) -> Result<(Vec<PathBuf>, Vec<String>)> {
    let tree = o.tree();
    let kl = KeepList::load(&tree.root)?;
    for r in &kl.refused {
        log::warn!("keep list: {r}: ignored");
    }
    let paths = keep::collect(&tree, &kl, &o.extra)?;
    let mut left_out = Vec::new();
    let mut keep = Vec::new();
    for p in paths {
        match unsafe_for_restore(&tree.root.join(&p)) {
            Some(why) => left_out.push(format!("{}: {why}", p.display())),
            None => keep.push(p),
        }
    }
    Ok((keep, left_out))
}

/// What restore would refuse, so that backup never writes an archive its own restore rejects.
fn unsafe_for_restore(path: &Path) -> Option<&'static str> {
    let m = std::fs::symlink_metadata(path).ok()?;
    if !m.file_type().is_symlink() && m.mode() & 0o6000 != 0 {
        return Some("setuid or setgid: restore refuses those, left out");
    }
    if m.is_file() && m.len() > crate::restore::MAX_MEMBER {
        return Some("larger than a restore accepts, left out");
    }
    None
}

fn refuse_fallback(o: &Opts) -> Result<()> {
    if o.root != Path::new("/") {
        return Ok(());
    }
    let state = crate::status::read_state(o.state.as_deref())?;
    if state.mode.as_str() != "persistent" {
        bail!(
            "this boot runs on a {} overlay ({}): its changes do not survive a reboot, and a \
             backup of it would not be the device's configuration",
            state.mode.as_str(),
            state.reason.as_deref().unwrap_or("no reason recorded")
        );
    }
    Ok(())
}

pub fn run(o: &Opts) -> Result<Summary> {
    refuse_fallback(o)?;
    let (paths, left_out) = list(o)?;
    let (board, rom) = identity(o);
    match o.output.as_deref() {
        None => write_to(std::io::stdout().lock(), &o.root, &paths, &board, &rom),
        Some(p) if p == Path::new("-") => {
            write_to(std::io::stdout().lock(), &o.root, &paths, &board, &rom)
        }
        Some(out) => write_file(out, &o.root, &paths, &board, &rom),
    }
    .map(|(members, bytes)| Summary {
        members,
        bytes,
        left_out,
    })
}

/// The board and ROM of the running system, from the state file ("-" when not known).
pub fn identity(o: &Opts) -> (String, String) {
    if o.root != Path::new("/") {
        return ("-".into(), "-".into());
    }
    match crate::status::read_state(o.state.as_deref()) {
        Ok(s) => (
            s.board.map_or("-".into(), |b| b.as_str().to_string()),
            s.rom_id.map_or("-".into(), |r| r.as_str().to_string()),
        ),
        Err(_) => ("-".into(), "-".into()),
    }
}

fn write_file(
    out: &Path,
    root: &Path,
    paths: &[PathBuf],
    board: &str,
    rom: &str,
) -> Result<(usize, u64)> {
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out
        .file_name()
        .with_context(|| format!("{}: not a file name", out.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    let done = write_to(&f, root, paths, board, rom)
        .and_then(|r| {
            f.sync_all()
                .with_context(|| format!("sync {}", tmp.display()))?;
            std::fs::rename(&tmp, out)
                .with_context(|| format!("rename {} to {}", tmp.display(), out.display()))?;
            Ok(r)
        })
        .with_context(|| format!("write {}", out.display()));
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    } else {
        let _ = crate::overlay::sync_dir(&dir);
    }
    done
}

/// Counts what passes through, to report the archive's size.
struct Counting<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the archive; returns the member count (manifest included) and compressed bytes.
pub fn write_to<W: Write>(
    w: W,
    root: &Path,
    paths: &[PathBuf],
    board: &str,
    rom: &str,
) -> Result<(usize, u64)> {
    let gz =
        crate::gzip::Encoder::new(Counting { inner: w, n: 0 }).context("write the gzip header")?;
    let mut tar = tar::Builder::new(gz);
    let mut manifest = format!(
        "{MANIFEST_HEAD}\nboard {}\nrom {}\n# type size crc32 path\n",
        escape(board.as_bytes()),
        escape(rom.as_bytes())
    );
    // Hard-linked files travel once, then as links to the first path (as tar does).
    // BTreeMap, not HashMap: no hasher and table code in the device binary for a few links.
    let mut first: std::collections::BTreeMap<(u64, u64), (&PathBuf, u64, u32)> =
        std::collections::BTreeMap::new();
    for rel in paths {
        let path = root.join(rel);
        let m =
            std::fs::symlink_metadata(&path).with_context(|| format!("read {}", path.display()))?;
        let mut h = tar::Header::new_gnu();
        h.set_mode(m.mode() & 0o7777);
        h.set_uid(u64::from(m.uid()));
        h.set_gid(u64::from(m.gid()));
        h.set_mtime(u64::try_from(m.mtime()).unwrap_or(0));
        let t = m.file_type();
        let esc = escape(rel.as_os_str().as_bytes());
        if t.is_symlink() {
            let target =
                std::fs::read_link(&path).with_context(|| format!("read {}", path.display()))?;
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            tar.append_link(&mut h, rel, &target)
                .with_context(|| format!("add {}", rel.display()))?;
            manifest.push_str(&format!("l - - {esc}\n"));
        } else if t.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            tar.append_data(&mut h, rel, std::io::empty())
                .with_context(|| format!("add {}", rel.display()))?;
            manifest.push_str(&format!("d - - {esc}\n"));
        } else if let Some((to, size, crc)) = first.get(&(m.dev(), m.ino())).copied() {
            h.set_entry_type(tar::EntryType::Link);
            h.set_size(0);
            tar.append_link(&mut h, rel, to)
                .with_context(|| format!("add {}", rel.display()))?;
            manifest.push_str(&format!("f {size} {crc:08x} {esc}\n"));
        } else {
            let f =
                std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(m.len());
            let mut crc = crate::crc32::Reader::new(f.take(m.len()));
            tar.append_data(&mut h, rel, &mut crc)
                .with_context(|| format!("add {}", rel.display()))?;
            if crc.n != m.len() {
                bail!("{}: changed size while it was read", path.display());
            }
            let sum = crc.h.finalize();
            if m.nlink() > 1 {
                first.insert((m.dev(), m.ino()), (rel, m.len(), sum));
            }
            manifest.push_str(&format!("f {} {sum:08x} {esc}\n", m.len()));
        }
    }
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o600);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(manifest.len() as u64);
    h.set_mtime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    tar.append_data(&mut h, MANIFEST, manifest.as_bytes())
        .context("add the manifest")?;
    let gz = tar.into_inner().context("finish the tar stream")?;
    let mut counting = gz.finish().context("finish the gzip stream")?;
    counting.flush().context("flush")?;
    Ok((paths.len() + 1, counting.n))
}

/// A path or word for one manifest field: printable ASCII but `\` as is, the rest `\xHH`.
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_graphic() && b != b'\\' {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

pub fn unescape(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'\\' {
            if b.get(i + 1) != Some(&b'x') {
                return None;
            }
            let hex = std::str::from_utf8(b.get(i + 2..i + 4)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 4;
        } else {
            out.push(c);
            i += 1;
        }
    }
    Some(out)
}

/// One manifest line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub kind: char,
    /// Size and CRC32 of a regular file.
    pub sum: Option<(u64, u32)>,
}

/// A parsed manifest: board, ROM, and each member.
#[derive(Debug, Clone, Default)]
pub struct Manifest {
    pub board: String,
    pub rom: String,
    pub members: std::collections::BTreeMap<Vec<u8>, Listed>,
}

pub fn parse_manifest(text: &str) -> Result<Manifest, String> {
    let mut lines = text.lines();
    if lines.next() != Some(MANIFEST_HEAD) {
        return Err(format!("does not start with `{MANIFEST_HEAD}`"));
    }
    let mut m = Manifest::default();
    for (n, line) in lines.enumerate() {
        let bad = || format!("line {}: `{line}` is not understood", n + 2);
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(b) = line.strip_prefix("board ") {
            m.board = String::from_utf8_lossy(&unescape(b).ok_or_else(bad)?).into_owned();
            continue;
        }
        if let Some(r) = line.strip_prefix("rom ") {
            m.rom = String::from_utf8_lossy(&unescape(r).ok_or_else(bad)?).into_owned();
            continue;
        }
        let f: Vec<&str> = line.split(' ').collect();
        let [kind, size, crc, path] = f.as_slice() else {
            return Err(bad());
        };
        let kind = match *kind {
            "f" | "d" | "l" => kind.chars().next().unwrap_or('?'),
            _ => return Err(bad()),
        };
        let sum = if kind == 'f' {
            Some((
                size.parse().map_err(|_| bad())?,
                u32::from_str_radix(crc, 16).map_err(|_| bad())?,
            ))
        } else {
            None
        };
        let path = unescape(path).ok_or_else(bad)?;
        if m.members.insert(path, Listed { kind, sum }).is_some() {
            return Err(format!("line {}: a path listed twice", n + 2));
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_round_trips_odd_names() {
        for name in [
            &b"etc/a b"[..],
            b"etc/new\nline",
            b"etc/\\x",
            b"etc/\xff\x01",
            b"-x",
        ] {
            assert_eq!(unescape(&escape(name)).unwrap(), name);
            assert!(!escape(name).contains([' ', '\n']));
        }
        assert_eq!(unescape("\\q"), None);
    }

    #[test]
    fn manifest_parses_what_backup_writes() {
        let text =
            "ovl-backup 1\nboard qemu\nrom sqfs-1-2\n# c\nf 3 0000abcd etc/a\\x20b\nd - - etc\n";
        let m = parse_manifest(text).unwrap();
        assert_eq!(m.board, "qemu");
        assert_eq!(
            m.members.get(&b"etc/a b"[..]).unwrap().sum,
            Some((3, 0xabcd))
        );
        assert!(parse_manifest("other\n").is_err());
        assert!(parse_manifest("ovl-backup 1\nf x y z\n").is_err());
        assert!(parse_manifest("ovl-backup 1\nd - - a\nd - - a\n").is_err());
    }
}
