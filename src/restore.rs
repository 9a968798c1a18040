//! `ovlctl restore`: a backup (ours, or OpenWrt's `tar czf` of `etc/...`) back into the tree,
//! only what the device's keep list allows, all of it or nothing.
//!
//! **Checked before anything is written.** The archive is read three times. First its raw
//! headers (extended headers bounded, so a hostile long name cannot fill memory); then every
//! member, refusing with the member's name: absolute paths, `..`, device nodes, fifos,
//! setuid/setgid modes, symlinks whose relative target climbs out of the root (an absolute
//! target is the device's own path), hard links to anything but an earlier regular member,
//! duplicates, a member below a member that is not a directory, anything below a symlink (in
//! the archive or in the tree), a file over a directory or a directory over a file, members
//! and archives over the limits, and a decompression bomb. The manifest, when present, must
//! list every member with the same size and CRC32. Members the keep list does not allow are
//! left out and named; a directory above a kept path is only created when missing.
//!
//! **Written as a transaction.** The third read stages every kept file and symlink, with its
//! mode, owner and mtime, under `<root>/.ovl-restore/data/` (same file system as the tree, so
//! a rename puts each in place) and writes the plan, syncs the file system once, and the
//! plan's rename into place is the commit. Then the directories are made, each staged file
//! renamed over its path, the directories' modes set, the file system synced, and the
//! journal removed. [`recover`] runs before every restore and at boot (before init starts):
//! with a plan it finishes the renames (each is idempotent), without one it deletes the
//! staging. So after a cut at any point the tree holds the old configuration or the new one,
//! never a mixture.
//!
//! Limits (documented in the README): archive 64 MiB compressed, 64 MiB expanded, a member
//! 16 MiB, 50 000 members, a path 4095 bytes (a name 255), an extended header 64 KiB, and past
//! the first 4 MiB no more than 200 bytes expanded per compressed byte.

use crate::backup::{self, Manifest, MANIFEST};
use crate::keep::KeepList;
use anyhow::{anyhow, bail, Context, Result};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::{self, BufRead, Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

pub const MAX_ARCHIVE: u64 = 64 << 20;
pub const MAX_EXPANDED: u64 = 64 << 20;
pub const MAX_MEMBER: u64 = 16 << 20;
pub const MAX_MEMBERS: usize = 50_000;
pub const MAX_PATH: usize = 4095;
pub const MAX_NAME: usize = 255;
pub const MAX_EXT_HEADER: u64 = 64 << 10;
pub const RATIO_FREE: u64 = 4 << 20;
pub const MAX_RATIO: u64 = 200;
/// The journal, at the top of the tree.
pub const JOURNAL: &str = ".ovl-restore";

#[derive(Debug, Clone, Default)]
pub struct Opts {
    pub root: PathBuf,
    /// A file, or `-` for standard input.
    pub archive: PathBuf,
    /// `-c`: also allow every path under /etc.
    pub all_etc: bool,
    /// `-o`: allow every path (except the run-time trees).
    pub everything: bool,
}

/// What a restore did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub restored: usize,
    /// Members the keep list does not allow.
    pub skipped: Vec<String>,
    pub manifest: bool,
    /// The board and ROM named by the manifest.
    pub from: Option<(String, String)>,
    /// A restore cut off earlier was finished (true) or rolled back (false) first.
    pub recovered: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File {
        size: u64,
        crc: u32,
    },
    Dir,
    Symlink,
    /// A hard link to the earlier member with this index.
    Link(usize),
}

#[derive(Debug, Clone)]
struct Member {
    path: Vec<u8>,
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
    target: Vec<u8>,
}

/// What to do with a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Restore,
    /// A directory above a kept path: created when missing, never changed.
    CreateOnly,
    Skip,
}

/// A member's name for a message: escaped, and cut when a hostile one is very long.
fn shown(p: &[u8]) -> String {
    let s = backup::escape(p);
    if s.len() > 160 {
        let cut = s.get(..120).unwrap_or_default();
        return format!("{cut}...({} bytes)", p.len());
    }
    s
}

/// An archive: `len` bytes of `file` from `base` (a keep container holds one after its header).
pub struct Source {
    pub file: std::fs::File,
    pub base: u64,
    pub len: u64,
}

/// A file in memory with no name (memfd): nothing is left behind if the process dies, and it
/// needs no writable /tmp.
fn unnamed_file() -> Result<std::fs::File> {
    nix::sys::memfd::memfd_create(c"ovl-restore", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .map(std::fs::File::from)
        .map_err(|e| crate::sys::errno_error(format_args!("memfd_create"), e))
}

/// Opens the archive as a seekable file (standard input is spooled to an unnamed temporary
/// file first, bounded).
fn open(archive: &Path) -> Result<Source> {
    if archive == Path::new("-") {
        let mut f = unnamed_file().context("spool standard input")?;
        let n = io::copy(&mut io::stdin().lock().take(MAX_ARCHIVE + 1), &mut f)
            .context("read the archive from standard input")?;
        if n > MAX_ARCHIVE {
            bail!("the archive is larger than {} MiB", MAX_ARCHIVE >> 20);
        }
        return Ok(Source {
            file: f,
            base: 0,
            len: n,
        });
    }
    let f = std::fs::File::open(archive).with_context(|| format!("open {}", archive.display()))?;
    let len = f
        .metadata()
        .with_context(|| format!("read {}", archive.display()))?
        .len();
    if len > MAX_ARCHIVE {
        bail!(
            "{}: {len} bytes, larger than the {} MiB a restore accepts",
            archive.display(),
            MAX_ARCHIVE >> 20
        );
    }
    Ok(Source {
        file: f,
        base: 0,
        len,
    })
}

/// Counts compressed bytes in.
struct CountIn<R> {
    inner: R,
    n: Rc<Cell<u64>>,
}

impl<R: Read> Read for CountIn<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n.set(self.n.get() + n as u64);
        Ok(n)
    }
}

/// The inflater takes its input through here: what it consumes is counted.
impl<R: BufRead> BufRead for CountIn<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        self.n.set(self.n.get() + n as u64);
        self.inner.consume(n);
    }
}

/// Counts expanded bytes out and stops a bomb.
struct Bounded<R> {
    inner: R,
    compressed: Rc<Cell<u64>>,
    n: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        let c = self.compressed.get().max(1);
        if self.n > MAX_EXPANDED {
            return Err(io::Error::other(format!(
                "expands to more than {} MiB",
                MAX_EXPANDED >> 20
            )));
        }
        if self.n > RATIO_FREE && self.n > c.saturating_mul(MAX_RATIO) {
            return Err(io::Error::other(format!(
                "expands more than {MAX_RATIO} times (a decompression bomb?)"
            )));
        }
        Ok(n)
    }
}

type Tar =
    tar::Archive<Bounded<crate::gzip::Decoder<CountIn<io::BufReader<io::Take<std::fs::File>>>>>>;

fn tar_of(src: &Source) -> Result<Tar> {
    let mut f = src.file.try_clone().context("reopen the archive")?;
    f.seek(io::SeekFrom::Start(src.base))
        .context("rewind the archive")?;
    let compressed = Rc::new(Cell::new(0));
    let gz = crate::gzip::Decoder::new(CountIn {
        inner: io::BufReader::new(f.take(src.len)),
        n: compressed.clone(),
    })
    .map_err(bad_archive)?;
    Ok(tar::Archive::new(Bounded {
        inner: gz,
        compressed,
        n: 0,
    }))
}

fn bad_archive(e: io::Error) -> anyhow::Error {
    anyhow!("not a valid gzip'd tar archive, or over the limits: {e}: refused, nothing was written")
}

/// Pass 0: the raw headers, before the tar reader collects any extended header in memory.
fn check_raw(f: &Source) -> Result<()> {
    let mut t = tar_of(f)?;
    let entries = t.entries().map_err(bad_archive)?.raw(true);
    for e in entries {
        let e = e.map_err(bad_archive)?;
        let ty = e.header().entry_type();
        let size = e.header().entry_size().map_err(bad_archive)?;
        if ty.is_pax_global_extensions() {
            bail!("a PAX global header: not supported (it would change every member after it)");
        }
        if (ty.is_file() || ty == tar::EntryType::Continuous) && size > MAX_MEMBER {
            bail!(
                "member `{}`: {size} bytes, more than the {} MiB a member may hold: refused, \
                 nothing was written",
                shown(&e.header().path_bytes()),
                MAX_MEMBER >> 20
            );
        }
        if (ty.is_gnu_longname() || ty.is_gnu_longlink() || ty.is_pax_local_extensions())
            && size > MAX_EXT_HEADER
        {
            bail!(
                "an extended header of {size} bytes (more than {} KiB) before member `{}`",
                MAX_EXT_HEADER >> 10,
                shown(&e.header().path_bytes())
            );
        }
    }
    Ok(())
}

/// A member path made relative and plain: `./` and trailing `/` dropped; absolute paths,
/// `..`, empty names and over-long ones refused.
fn clean(raw: &[u8]) -> Result<Vec<u8>, String> {
    if raw.first() == Some(&b'/') {
        return Err("an absolute path".into());
    }
    if raw.len() > MAX_PATH {
        return Err(format!("a path longer than {MAX_PATH} bytes"));
    }
    let mut out: Vec<u8> = Vec::with_capacity(raw.len());
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err("a `..` component".into()),
            c if c.len() > MAX_NAME => return Err(format!("a name longer than {MAX_NAME} bytes")),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    if out.is_empty() {
        return Err("an empty path (the root itself)".into());
    }
    Ok(out)
}

/// Whether a relative symlink target, seen from the member's directory, stays in the root.
fn stays_inside(member: &[u8], target: &[u8]) -> bool {
    if target.first() == Some(&b'/') {
        // Absolute: the device's own path, resolved inside its root.
        return true;
    }
    let mut depth: i64 = member.split(|b| *b == b'/').count() as i64 - 1;
    for comp in target.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

fn parents(p: &[u8]) -> impl Iterator<Item = &[u8]> {
    p.iter()
        .enumerate()
        .filter(|(_, b)| **b == b'/')
        .filter_map(move |(i, _)| p.get(..i))
}

struct Read1 {
    members: Vec<Member>,
    manifest: Option<Manifest>,
}

/// Pass 1: every member read and checked; nothing written.
fn read_members(f: &Source) -> Result<Read1> {
    let mut t = tar_of(f)?;
    let mut members: Vec<Member> = Vec::new();
    let mut index: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    let mut manifest = None;
    for e in t.entries().map_err(bad_archive)? {
        let mut e = e.map_err(bad_archive)?;
        let raw = e.path_bytes().into_owned();
        let name = shown(&raw);
        let refuse = |why: &str| anyhow!("member `{name}`: {why}: refused, nothing was written");
        let path = clean(&raw).map_err(|w| refuse(&w))?;
        let h = e.header().clone();
        let ty = h.entry_type();
        let mode = h.mode().map_err(|_| refuse("an unreadable mode"))?;
        let uid = h
            .uid()
            .ok()
            .and_then(|u| u32::try_from(u).ok())
            .ok_or_else(|| refuse("an unreadable or out-of-range owner"))?;
        let gid = h
            .gid()
            .ok()
            .and_then(|g| u32::try_from(g).ok())
            .ok_or_else(|| refuse("an unreadable or out-of-range group"))?;
        let mtime = h.mtime().unwrap_or(0);
        if path == MANIFEST.as_bytes() && ty.is_file() {
            let mut text = String::new();
            e.by_ref()
                .take(MAX_EXT_HEADER * 16)
                .read_to_string(&mut text)
                .map_err(|err| refuse(&format!("the manifest cannot be read: {err}")))?;
            manifest = Some(
                backup::parse_manifest(&text).map_err(|w| refuse(&format!("the manifest {w}")))?,
            );
            continue;
        }
        if members.len() >= MAX_MEMBERS {
            return Err(refuse(&format!("more than {MAX_MEMBERS} members")));
        }
        if index.contains_key(&path) {
            return Err(refuse("a duplicate of an earlier member"));
        }
        let target = e
            .link_name_bytes()
            .map(|c| c.into_owned())
            .unwrap_or_default();
        let kind = match ty {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = e.size();
                if size > MAX_MEMBER {
                    return Err(refuse(&format!(
                        "{size} bytes, more than the {} MiB a member may hold",
                        MAX_MEMBER >> 20
                    )));
                }
                let mut h = crate::crc32::Hasher::new();
                let mut buf = [0u8; 16384];
                let mut n = 0u64;
                loop {
                    let k = e.read(&mut buf).map_err(bad_archive)?;
                    if k == 0 {
                        break;
                    }
                    h.update(buf.get(..k).unwrap_or_default());
                    n += k as u64;
                }
                if n != size {
                    return Err(refuse("shorter than its header says"));
                }
                Kind::File {
                    size,
                    crc: h.finalize(),
                }
            }
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => {
                if target.is_empty() {
                    return Err(refuse("a symlink without a target"));
                }
                if !stays_inside(&path, &target) {
                    return Err(refuse(&format!(
                        "a symlink to `{}`, which leads outside the target",
                        shown(&target)
                    )));
                }
                Kind::Symlink
            }
            tar::EntryType::Link => {
                let to = clean(&target)
                    .map_err(|w| refuse(&format!("a hard link to `{}`: {w}", shown(&target))))?;
                match index
                    .get(&to)
                    .and_then(|&i| members.get(i).map(|m| (i, m.kind)))
                {
                    Some((i, Kind::File { .. })) => Kind::Link(i),
                    Some((_, Kind::Link(i))) => Kind::Link(i),
                    Some((_, Kind::Symlink)) => {
                        return Err(refuse(&format!(
                            "a hard link to the symlink `{}`",
                            shown(&to)
                        )))
                    }
                    Some((_, Kind::Dir)) => {
                        return Err(refuse(&format!(
                            "a hard link to the directory `{}`",
                            shown(&to)
                        )))
                    }
                    None => {
                        return Err(refuse(&format!(
                            "a hard link to `{}`, which is not an earlier member (outside the \
                             archive)",
                            shown(&to)
                        )))
                    }
                }
            }
            tar::EntryType::Char | tar::EntryType::Block => return Err(refuse("a device node")),
            tar::EntryType::Fifo => return Err(refuse("a fifo")),
            other => {
                return Err(refuse(&format!(
                    "a member of type '{}', which a configuration does not hold",
                    other.as_byte() as char
                )))
            }
        };
        if kind != Kind::Symlink && mode & 0o6000 != 0 {
            return Err(refuse("setuid or setgid"));
        }
        index.insert(path.clone(), members.len());
        members.push(Member {
            path,
            kind,
            mode: mode & 0o7777,
            uid,
            gid,
            mtime,
            target,
        });
    }
    // A member below another must be below a directory.
    for m in &members {
        for p in parents(&m.path) {
            match index.get(p).and_then(|&i| members.get(i)).map(|a| a.kind) {
                None | Some(Kind::Dir) => {}
                Some(Kind::Symlink) => bail!(
                    "member `{}`: below `{}`, a symlink in the archive: refused (it would \
                     write through the link), nothing was written",
                    shown(&m.path),
                    shown(p)
                ),
                Some(_) => bail!(
                    "member `{}`: below `{}`, a file in the archive: conflicting members, \
                     refused, nothing was written",
                    shown(&m.path),
                    shown(p)
                ),
            }
        }
    }
    if let Some(man) = &manifest {
        check_manifest(&members, man)?;
    }
    Ok(Read1 { members, manifest })
}

fn check_manifest(members: &[Member], man: &Manifest) -> Result<()> {
    let corrupt = |p: &[u8], why: &str| {
        anyhow!(
            "member `{}`: {why} (the archive is corrupt or was altered): refused, nothing was \
             written",
            shown(p)
        )
    };
    for m in members {
        let Some(l) = man.members.get(&m.path) else {
            return Err(corrupt(&m.path, "not in the manifest"));
        };
        let ok = match (m.kind, l.kind) {
            (Kind::File { size, crc }, 'f') => l.sum == Some((size, crc)),
            (Kind::Link(i), 'f') => members.get(i).is_some_and(
                |t| matches!(t.kind, Kind::File { size, crc } if l.sum == Some((size, crc))),
            ),
            (Kind::Dir, 'd') | (Kind::Symlink, 'l') => true,
            _ => false,
        };
        if !ok {
            return Err(corrupt(
                &m.path,
                "its type, size or CRC32 differs from the manifest",
            ));
        }
    }
    if members.len() != man.members.len() {
        let have: BTreeSet<&[u8]> = members.iter().map(|m| m.path.as_slice()).collect();
        if let Some(p) = man.members.keys().find(|p| !have.contains(p.as_slice())) {
            return Err(corrupt(p, "listed in the manifest but missing"));
        }
    }
    Ok(())
}

fn os(p: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(p))
}

/// Checks the kept members against the tree as it is: nothing through a symlink, no file over
/// a directory or directory over a file.
fn check_tree(root: &Path, members: &[Member], fates: &[Fate]) -> Result<()> {
    for (m, fate) in members.iter().zip(fates) {
        if *fate == Fate::Skip {
            continue;
        }
        let refuse = |why: String| {
            anyhow!(
                "member `{}`: {why}: refused, nothing was written",
                shown(&m.path)
            )
        };
        for p in parents(&m.path) {
            match std::fs::symlink_metadata(root.join(os(p))) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => return Err(refuse(format!("cannot read `{}`: {e}", shown(p)))),
                Ok(md) if md.file_type().is_symlink() => {
                    return Err(refuse(format!(
                        "`{}` is a symlink in the target: a restore does not write through a \
                         symlinked parent directory",
                        shown(p)
                    )))
                }
                Ok(md) if !md.is_dir() => {
                    return Err(refuse(format!(
                        "`{}` is a file in the target, where the member needs a directory",
                        shown(p)
                    )))
                }
                Ok(_) => {}
            }
        }
        match std::fs::symlink_metadata(root.join(os(&m.path))) {
            Ok(md) if md.is_dir() && m.kind != Kind::Dir => {
                return Err(refuse(
                    "would replace a directory of the target with a file".into(),
                ))
            }
            Ok(md) if !md.is_dir() && m.kind == Kind::Dir => {
                return Err(refuse(
                    "would replace a file of the target with a directory".into(),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Test hook: `OVL_TEST_CUT_AT=N` ends the process at the Nth step of a restore, the way a
/// cut would stop it there (the page cache survives an exit, so this checks the order of the
/// steps; the emulated boards check durability).
fn step() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static AT: OnceLock<Option<u64>> = OnceLock::new();
    static N: AtomicU64 = AtomicU64::new(0);
    let at = AT.get_or_init(|| std::env::var("OVL_TEST_CUT_AT").ok()?.parse().ok());
    if let Some(at) = *at {
        if N.fetch_add(1, Ordering::Relaxed) + 1 == at {
            std::process::exit(99);
        }
    }
}

fn journal(root: &Path) -> PathBuf {
    root.join(JOURNAL)
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Restores `o.archive` into `o.root`. See the module documentation.
pub fn run(o: &Opts) -> Result<Summary> {
    if !o.root.is_dir() {
        bail!("{}: not a directory", o.root.display());
    }
    let f = open(&o.archive)?;
    run_source(o, &f)
}

/// Checks an archive in memory as a restore would, without a tree: what `sysupgrade` keeps
/// must restore.
pub fn check_bytes(bytes: &[u8]) -> Result<()> {
    if bytes.len() as u64 > MAX_ARCHIVE {
        bail!(
            "{} bytes, larger than the {} MiB a restore accepts",
            bytes.len(),
            MAX_ARCHIVE >> 20
        );
    }
    let mut f = unnamed_file()?;
    f.write_all(bytes).context("write a temporary file")?;
    let src = Source {
        file: f,
        base: 0,
        len: bytes.len() as u64,
    };
    check_raw(&src)?;
    read_members(&src)?;
    Ok(())
}

/// [`run`] on an archive already open (`o.archive` names it in messages).
pub fn run_source(o: &Opts, f: &Source) -> Result<Summary> {
    let root = &o.root;
    if !root.is_dir() {
        bail!("{}: not a directory", root.display());
    }
    let recovered = recover(root)?;
    let kl = KeepList::load(root)?;
    let what = o.archive.display().to_string();
    check_raw(f).with_context(|| what.clone())?;
    let r1 = read_members(f).with_context(|| what.clone())?;
    let fates: Vec<Fate> = r1
        .members
        .iter()
        .map(|m| {
            let p = os(&m.path);
            let allowed = kl.allows(p)
                || (o.all_etc && m.path.starts_with(b"etc/") && crate::keep::may_keep(p))
                || (o.everything && crate::keep::may_keep(p));
            match (allowed, m.kind) {
                (true, _) => Fate::Restore,
                (false, Kind::Dir) if kl.is_ancestor(p) => Fate::CreateOnly,
                _ => Fate::Skip,
            }
        })
        .collect();
    check_tree(root, &r1.members, &fates).with_context(|| what.clone())?;
    let mut summary = Summary {
        skipped: r1
            .members
            .iter()
            .zip(&fates)
            .filter(|(_, f)| **f == Fate::Skip)
            .map(|(m, _)| shown(&m.path))
            .collect(),
        manifest: r1.manifest.is_some(),
        from: r1
            .manifest
            .as_ref()
            .map(|m| (m.board.clone(), m.rom.clone())),
        recovered,
        ..Summary::default()
    };
    let plan = stage(root, f, &r1.members, &fates).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(journal(root));
    })?;
    summary.restored = plan
        .iter()
        .filter(|op| matches!(op, Op::Put { .. }))
        .count();
    finish(root, &plan)?;
    Ok(summary)
}

/// One line of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    /// Make this directory when missing.
    Mkdir { path: Vec<u8>, mode: u32 },
    /// Set a directory's mode, owner and mtime.
    Attr {
        path: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
        mtime: u64,
    },
    /// Rename staged `data/<n>` over the path.
    Put { n: usize, path: Vec<u8> },
}

impl Op {
    fn encode(&self) -> String {
        match self {
            Op::Mkdir { path, mode } => format!("mkdir {mode:o} {}\n", backup::escape(path)),
            Op::Attr {
                path,
                mode,
                uid,
                gid,
                mtime,
            } => format!(
                "attr {mode:o} {uid} {gid} {mtime} {}\n",
                backup::escape(path)
            ),
            Op::Put { n, path } => format!("put {n} {}\n", backup::escape(path)),
        }
    }

    fn decode(line: &str) -> Option<Op> {
        let f: Vec<&str> = line.split(' ').collect();
        let path = |s: &str| backup::unescape(s).filter(|p| clean(p).as_ref() == Ok(p));
        match f.as_slice() {
            ["mkdir", mode, p] => Some(Op::Mkdir {
                mode: u32::from_str_radix(mode, 8).ok()?,
                path: path(p)?,
            }),
            ["attr", mode, uid, gid, mtime, p] => Some(Op::Attr {
                mode: u32::from_str_radix(mode, 8).ok()?,
                uid: uid.parse().ok()?,
                gid: gid.parse().ok()?,
                mtime: mtime.parse().ok()?,
                path: path(p)?,
            }),
            ["put", n, p] => Some(Op::Put {
                n: n.parse().ok()?,
                path: path(p)?,
            }),
            _ => None,
        }
    }
}

fn io_ctx<T>(r: io::Result<T>, what: impl FnOnce() -> String) -> Result<T> {
    r.map_err(|e| anyhow!("{}: {e}", what()))
}

/// Pass 2: stage the kept files and write the plan; its rename is the commit.
fn stage(root: &Path, f: &Source, members: &[Member], fates: &[Fate]) -> Result<Vec<Op>> {
    let j = journal(root);
    let data = j.join("data");
    let mut b = std::fs::DirBuilder::new();
    b.mode(0o700);
    io_ctx(b.create(&j), || format!("create {}", j.display()))?;
    io_ctx(b.create(&data), || format!("create {}", data.display()))?;
    step();
    // Hard links need their target staged even when it is not kept itself.
    let mut needed: Vec<bool> = fates.iter().map(|f| *f == Fate::Restore).collect();
    for (m, fate) in members.iter().zip(fates) {
        if let (Kind::Link(i), Fate::Restore) = (m.kind, fate) {
            if let Some(n) = needed.get_mut(i) {
                *n = true;
            }
        }
    }
    let mut t = tar_of(f)?;
    let mut i = 0usize;
    for e in t.entries().map_err(bad_archive)? {
        let mut e = e.map_err(bad_archive)?;
        let path = clean(&e.path_bytes()).map_err(|w| anyhow!("changed between reads: {w}"))?;
        if path == MANIFEST.as_bytes() && e.header().entry_type().is_file() {
            continue;
        }
        let Some(m) = members.get(i) else {
            bail!("the archive changed between reads");
        };
        if m.path != path {
            bail!(
                "the archive changed between reads (member `{}`)",
                shown(&path)
            );
        }
        let n = i;
        i += 1;
        if !needed.get(n).copied().unwrap_or(false) {
            continue;
        }
        let at = data.join(n.to_string());
        match m.kind {
            Kind::File { size, crc } => {
                let mut out = io_ctx(
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&at),
                    || format!("create {}", at.display()),
                )?;
                let mut h = crate::crc32::Hasher::new();
                let mut buf = [0u8; 16384];
                let mut got = 0u64;
                loop {
                    let k = e.read(&mut buf).map_err(bad_archive)?;
                    if k == 0 {
                        break;
                    }
                    let chunk = buf.get(..k).unwrap_or_default();
                    h.update(chunk);
                    io_ctx(out.write_all(chunk), || format!("write {}", at.display()))?;
                    got += k as u64;
                }
                if got != size || h.finalize() != crc {
                    bail!("member `{}`: changed between reads", shown(&m.path));
                }
                if is_root() {
                    io_ctx(
                        std::os::unix::fs::fchown(&out, Some(m.uid), Some(m.gid)),
                        || format!("chown {}", at.display()),
                    )?;
                }
                io_ctx(
                    out.set_permissions(std::fs::Permissions::from_mode(m.mode)),
                    || format!("chmod {}", at.display()),
                )?;
                set_mtime(&at, m.mtime)?;
            }
            Kind::Symlink => {
                io_ctx(
                    std::os::unix::fs::symlink(OsStr::from_bytes(&m.target), &at),
                    || format!("create {}", at.display()),
                )?;
                if is_root() {
                    io_ctx(
                        std::os::unix::fs::lchown(&at, Some(m.uid), Some(m.gid)),
                        || format!("chown {}", at.display()),
                    )?;
                }
                set_mtime(&at, m.mtime)?;
            }
            Kind::Link(t) => {
                let from = data.join(t.to_string());
                io_ctx(std::fs::hard_link(&from, &at), || {
                    format!("link {} to {}", at.display(), from.display())
                })?;
            }
            Kind::Dir => {}
        }
        step();
    }
    if i != members.len() {
        bail!("the archive changed between reads");
    }
    let plan = make_plan(root, members, fates);
    let text: String = plan.iter().map(Op::encode).collect();
    let tmp = j.join("plan.tmp");
    io_ctx(std::fs::write(&tmp, text), || {
        format!("write {}", tmp.display())
    })?;
    // One syncfs makes every staged file, its directory entry and the plan durable before
    // the commit (an fsync per file cost most of a large restore's time).
    sync_fs(root)?;
    step();
    io_ctx(std::fs::rename(&tmp, j.join("plan")), || {
        format!("commit {}", j.join("plan").display())
    })?;
    crate::overlay::sync_dir(&j)?;
    step();
    Ok(plan)
}

fn set_mtime(at: &Path, mtime: u64) -> Result<()> {
    // time_t is 32 bits on armv7 glibc: clamp rather than wrap.
    let max = if cfg!(target_pointer_width = "32") {
        i32::MAX as u64
    } else {
        i64::MAX as u64
    };
    let t = nix::sys::time::TimeSpec::from_duration(std::time::Duration::from_secs(mtime.min(max)));
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        at,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| crate::sys::errno_error(format_args!("set the mtime of {}", at.display()), e))
}

fn make_plan(root: &Path, members: &[Member], fates: &[Fate]) -> Vec<Op> {
    let mut dirs: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
    let mut attrs = Vec::new();
    let mut puts = Vec::new();
    for (n, (m, fate)) in members.iter().zip(fates).enumerate() {
        if *fate == Fate::Skip {
            continue;
        }
        // Every missing directory on the way is made, 0755 unless the archive says.
        for p in parents(&m.path) {
            if !root.join(os(p)).exists() {
                dirs.entry(p.to_vec()).or_insert(0o755);
            }
        }
        match (m.kind, fate) {
            (Kind::Dir, Fate::CreateOnly) => {
                if !root.join(os(&m.path)).exists() {
                    dirs.insert(m.path.clone(), m.mode);
                }
            }
            (Kind::Dir, _) => {
                dirs.insert(m.path.clone(), m.mode | 0o700);
                attrs.push(Op::Attr {
                    path: m.path.clone(),
                    mode: m.mode,
                    uid: m.uid,
                    gid: m.gid,
                    mtime: m.mtime,
                });
            }
            _ => puts.push(Op::Put {
                n,
                path: m.path.clone(),
            }),
        }
    }
    // A directory's own entry mode wins over the default of a child's parent.
    let mut plan: Vec<Op> = dirs
        .into_iter()
        .map(|(path, mode)| Op::Mkdir { path, mode })
        .collect();
    plan.extend(puts);
    // Deepest first, so a directory's mtime is set after its children's renames.
    attrs.reverse();
    plan.extend(attrs);
    plan
}

/// Carries out a committed plan (again, after a cut: every step is idempotent), syncs, and
/// removes the journal.
fn finish(root: &Path, plan: &[Op]) -> Result<()> {
    let j = journal(root);
    let data = j.join("data");
    for op in plan {
        step();
        match op {
            Op::Mkdir { path, mode } => {
                let at = root.join(os(path));
                match std::fs::symlink_metadata(&at) {
                    Ok(_) => {}
                    Err(_) => {
                        let mut b = std::fs::DirBuilder::new();
                        b.mode(*mode & 0o7777);
                        match b.create(&at) {
                            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                                return Err(anyhow!("create {}: {e}", at.display()))
                            }
                            _ => {}
                        }
                    }
                }
            }
            Op::Put { n, path } => {
                let from = data.join(n.to_string());
                let to = root.join(os(path));
                if std::fs::symlink_metadata(&from).is_ok() {
                    io_ctx(std::fs::rename(&from, &to), || {
                        format!("rename {} to {}", from.display(), to.display())
                    })?;
                }
            }
            Op::Attr {
                path,
                mode,
                uid,
                gid,
                mtime,
            } => {
                let at = root.join(os(path));
                // Only a real directory: the tree may have changed since the plan was made.
                let md = io_ctx(std::fs::symlink_metadata(&at), || {
                    format!("read {}", at.display())
                })?;
                if !md.is_dir() {
                    continue;
                }
                if is_root() {
                    io_ctx(
                        std::os::unix::fs::lchown(&at, Some(*uid), Some(*gid)),
                        || format!("chown {}", at.display()),
                    )?;
                }
                io_ctx(
                    std::fs::set_permissions(&at, std::fs::Permissions::from_mode(*mode)),
                    || format!("chmod {}", at.display()),
                )?;
                set_mtime(&at, *mtime)?;
            }
        }
    }
    sync_fs(root)?;
    step();
    let plan_file = j.join("plan");
    io_ctx(std::fs::remove_file(&plan_file), || {
        format!("remove {}", plan_file.display())
    })?;
    crate::overlay::sync_dir(&j)?;
    step();
    io_ctx(std::fs::remove_dir_all(&j), || {
        format!("remove {}", j.display())
    })?;
    Ok(())
}

fn sync_fs(root: &Path) -> Result<()> {
    let f = io_ctx(std::fs::File::open(root), || {
        format!("open {}", root.display())
    })?;
    nix::unistd::syncfs(&f)
        .map_err(|e| crate::sys::errno_error(format_args!("sync {}", root.display()), e))
}

/// Finishes or rolls back a restore that was cut off: Some(true) finished, Some(false) rolled
/// back, None when there was none.
pub fn recover(root: &Path) -> Result<Option<bool>> {
    let j = journal(root);
    match std::fs::symlink_metadata(&j) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow!("read {}: {e}", j.display())),
        Ok(m) if !m.is_dir() => bail!(
            "{} is not a directory: not ovl's restore journal, left as it is",
            j.display()
        ),
        Ok(_) => {}
    }
    let plan_file = j.join("plan");
    match std::fs::read(&plan_file) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let mut plan = Vec::new();
            for line in text.lines() {
                plan.push(Op::decode(line).ok_or_else(|| {
                    anyhow!(
                        "{}: `{}` is not understood; left as it is",
                        plan_file.display(),
                        shown(line.as_bytes())
                    )
                })?);
            }
            finish(root, &plan)?;
            Ok(Some(true))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            io_ctx(std::fs::remove_dir_all(&j), || {
                format!("remove {}", j.display())
            })?;
            sync_fs(root)?;
            Ok(Some(false))
        }
        Err(e) => Err(anyhow!("read {}: {e}", plan_file.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_makes_paths_plain_and_refuses_escapes() {
        assert_eq!(clean(b"./etc//config/").unwrap(), b"etc/config");
        assert!(clean(b"/etc/passwd").is_err());
        assert!(clean(b"etc/../../x").is_err());
        assert!(clean(b"./").is_err());
        assert!(clean(&[b'a'; 256]).is_err());
    }

    #[test]
    fn symlinks_may_not_climb_out() {
        assert!(stays_inside(b"etc/localtime", b"/usr/share/zoneinfo/UTC"));
        assert!(stays_inside(b"etc/a", b"../usr/x"));
        assert!(!stays_inside(b"etc/a", b"../../x"));
        assert!(!stays_inside(b"a", b"../x"));
        assert!(stays_inside(b"etc/a/b", b"../../etc/./x"));
    }

    #[test]
    fn plan_lines_round_trip() {
        for op in [
            Op::Mkdir {
                path: b"etc/a b".to_vec(),
                mode: 0o750,
            },
            Op::Attr {
                path: b"etc/x".to_vec(),
                mode: 0o700,
                uid: 1,
                gid: 2,
                mtime: 3,
            },
            Op::Put {
                n: 7,
                path: b"etc/new\nline".to_vec(),
            },
            Op::Put {
                n: 8,
                path: format!("etc/{}", "n".repeat(255)).into_bytes(),
            },
        ] {
            let line = op.encode();
            assert_eq!(Op::decode(line.trim_end()), Some(op));
        }
        assert_eq!(Op::decode("put 1 ../x"), None);
    }
}
