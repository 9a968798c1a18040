//! Keep lists: which paths a backup takes and a restore allows.
//!
//! The list is OpenWrt's: every non-comment line of `/etc/sysupgrade.conf` and of each file
//! in `/lib/upgrade/keep.d/`, one path or shell glob a line (`*`, `?`, `[...]`; a leading dot
//! is matched only literally, as the shell does). A directory recurses. Unlike OpenWrt
//! (`find -type f -o -type l`), the directories themselves are kept too, with their modes and
//! owners, empty ones included. On request the list grows by every path under `/etc` that
//! differs from the ROM (`-c`) or by everything in the upper (`-o`); `-u` then leaves out
//! files identical to their copy in the ROM.
//!
//! Paths here are relative to the root (`etc/config/network`), never absolute, never with
//! `..`. Walking never follows a symlink and never enters another mount: a keep-list line
//! reaching through a symlinked directory keeps the symlink, not what it points at.

use anyhow::{Context, Result};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

pub const SYSUPGRADE_CONF: &str = "etc/sysupgrade.conf";
pub const KEEP_D: &str = "lib/upgrade/keep.d";
/// Never kept, whatever a list says: ovl's own restore journal and the run-time trees.
const NEVER: [&str; 8] = [
    ".ovl-restore",
    "proc",
    "sys",
    "dev",
    "tmp",
    "run",
    "rom",
    "overlay",
];

/// The lines of a keep list, compiled.
#[derive(Debug, Clone, Default)]
pub struct KeepList {
    /// Each line, split into components, each a glob.
    rules: Vec<Vec<glob::Pattern>>,
    /// The lines as written (for messages).
    pub lines: Vec<String>,
    /// Lines that were refused, with why.
    pub refused: Vec<String>,
}

fn match_opts() -> glob::MatchOptions {
    glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: true,
    }
}

impl KeepList {
    /// Reads the keep list of the tree at `root`. Missing files are an empty list; an
    /// unreadable one is an error naming it (a backup that silently kept less would lose
    /// settings at the next upgrade).
    pub fn load(root: &Path) -> Result<KeepList> {
        let mut files = vec![root.join(SYSUPGRADE_CONF)];
        let keep_d = root.join(KEEP_D);
        match std::fs::read_dir(&keep_d) {
            Ok(rd) => {
                let mut more: Vec<PathBuf> = rd
                    .filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.is_file())
                    .collect();
                more.sort();
                files.extend(more);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("read {}", keep_d.display())),
        }
        let mut list = KeepList::default();
        for f in files {
            match std::fs::read(&f) {
                Ok(bytes) => {
                    for line in bytes.split(|b| *b == b'\n') {
                        list.add(&String::from_utf8_lossy(line));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("read {}", f.display())),
            }
        }
        Ok(list)
    }

    /// Adds one line of a keep-list file (comments and blank lines are ignored).
    pub fn add(&mut self, line: &str) {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return;
        }
        let mut rule = Vec::new();
        for comp in Path::new(line).components() {
            match comp {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(c) => match glob::Pattern::new(&c.to_string_lossy()) {
                    Ok(p) => rule.push(p),
                    Err(e) => {
                        self.refused.push(format!("{line}: {e}"));
                        return;
                    }
                },
                Component::ParentDir | Component::Prefix(_) => {
                    self.refused
                        .push(format!("{line}: `..` is not allowed in a keep list"));
                    return;
                }
            }
        }
        if rule.is_empty() {
            self.refused
                .push(format!("{line}: names the whole root; use -o for that"));
            return;
        }
        self.lines.push(line.to_string());
        self.rules.push(rule);
    }

    /// Whether `rel` (relative to the root) is kept: some line names it or a directory above
    /// it.
    pub fn allows(&self, rel: &Path) -> bool {
        let comps: Vec<&OsStr> = normal_components(rel);
        if comps.is_empty() || is_never(&comps) {
            return false;
        }
        self.rules.iter().any(|rule| {
            rule.len() <= comps.len()
                && rule
                    .iter()
                    .zip(&comps)
                    .all(|(p, c)| p.matches_with(&c.to_string_lossy(), match_opts()))
        })
    }

    /// Whether `rel` lies above some line: a directory restore may create, not change.
    pub fn is_ancestor(&self, rel: &Path) -> bool {
        let comps: Vec<&OsStr> = normal_components(rel);
        self.rules.iter().any(|rule| {
            rule.len() > comps.len()
                && rule
                    .iter()
                    .zip(&comps)
                    .all(|(p, c)| p.matches_with(&c.to_string_lossy(), match_opts()))
        })
    }

    /// The paths the lines name in the tree at `root`, each one that exists (globs expanded,
    /// without following symlinks).
    fn expand(&self, root: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for rule in &self.rules {
            let mut found = vec![PathBuf::new()];
            for (i, pat) in rule.iter().enumerate() {
                let last = i + 1 == rule.len();
                let mut next = Vec::new();
                for dir in &found {
                    let literal = glob::Pattern::escape(pat.as_str()) == pat.as_str();
                    if literal {
                        let p = dir.join(pat.as_str());
                        if exists_as(root, &p, last) {
                            next.push(p);
                        }
                        continue;
                    }
                    let Ok(rd) = std::fs::read_dir(root.join(dir)) else {
                        continue;
                    };
                    let mut names: Vec<_> =
                        rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
                    names.sort();
                    for n in names {
                        if pat.matches_with(&n.to_string_lossy(), match_opts()) {
                            let p = dir.join(&n);
                            if exists_as(root, &p, last) {
                                next.push(p);
                            }
                        }
                    }
                }
                found = next;
            }
            out.extend(found);
        }
        out
    }
}

/// A path named by a line exists; one on the way to a deeper component must be a real
/// directory (not a symlink to one).
fn exists_as(root: &Path, rel: &Path, last: bool) -> bool {
    match std::fs::symlink_metadata(root.join(rel)) {
        Ok(m) => last || m.is_dir(),
        Err(_) => false,
    }
}

fn normal_components(rel: &Path) -> Vec<&OsStr> {
    rel.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect()
}

/// Whether a path may be kept at all (not the root, not a run-time tree, not the journal).
pub fn may_keep(rel: &Path) -> bool {
    let comps = normal_components(rel);
    !comps.is_empty() && !is_never(&comps)
}

fn is_never(comps: &[&OsStr]) -> bool {
    comps
        .first()
        .is_some_and(|c| NEVER.iter().any(|n| c.as_bytes() == n.as_bytes()))
}

/// What to keep besides the list.
#[derive(Debug, Clone, Default)]
pub struct Extra {
    /// `-c`: every path under /etc that differs from the ROM.
    pub changed_etc: bool,
    /// `-o`: everything in this upper directory that is not the ROM's unchanged.
    pub upper: Option<PathBuf>,
    /// `-u`: leave out files identical to their copy in the ROM.
    pub skip_unchanged: bool,
}

/// The tree a backup reads: the live root (the merged overlay) and the ROM beside it.
#[derive(Debug, Clone)]
pub struct Tree {
    pub root: PathBuf,
    pub rom: PathBuf,
}

/// Every path to keep, sorted, parents before children, directories included.
pub fn collect(tree: &Tree, list: &KeepList, extra: &Extra) -> Result<Vec<PathBuf>> {
    let mut named = list.expand(&tree.root);
    if extra.changed_etc {
        walk(&tree.root, Path::new("etc"), &mut |rel, _| {
            if differs(tree, rel) {
                named.push(rel.to_path_buf());
            }
        })?;
    }
    if let Some(upper) = &extra.upper {
        walk(upper, Path::new(""), &mut |rel, m| {
            // Whiteouts (0/0 character devices) are deletions, not content.
            if !is_whiteout(m) && differs(tree, rel) {
                named.push(rel.to_path_buf());
            }
        })?;
    }
    let mut all = Vec::new();
    for rel in named {
        let comps = normal_components(&rel);
        if comps.is_empty() || is_never(&comps) {
            continue;
        }
        let Ok(m) = std::fs::symlink_metadata(tree.root.join(&rel)) else {
            continue;
        };
        all.push(rel.clone());
        if m.is_dir() {
            walk(&tree.root, &rel, &mut |p, _| all.push(p.to_path_buf()))?;
        }
    }
    all.sort_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
    all.dedup();
    if extra.skip_unchanged {
        all.retain(|rel| differs(tree, rel));
    }
    // Only what a tar member can hold: files, symlinks, directories.
    all.retain(|rel| {
        std::fs::symlink_metadata(tree.root.join(rel)).is_ok_and(|m| {
            let t = m.file_type();
            t.is_file() || t.is_dir() || t.is_symlink()
        })
    });
    Ok(all)
}

fn is_whiteout(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    m.file_type().is_char_device() && m.rdev() == 0
}

/// Calls `f` for everything below `base/rel` (not `rel` itself), depth first, without
/// following symlinks or entering another file system.
fn walk(base: &Path, rel: &Path, f: &mut dyn FnMut(&Path, &std::fs::Metadata)) -> Result<()> {
    let dir = base.join(rel);
    let top = match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() => m,
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("read {}", dir.display())),
    };
    let rd = std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))?;
    let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    entries.sort();
    for name in entries {
        let child = rel.join(&name);
        let Ok(m) = std::fs::symlink_metadata(base.join(&child)) else {
            continue;
        };
        f(&child, &m);
        if m.is_dir() && m.dev() == top.dev() {
            walk(base, &child, f)?;
        }
    }
    Ok(())
}

/// Whether `rel` in the root differs from the ROM's: missing there, another type, mode or
/// owner, other content or symlink target.
pub fn differs(tree: &Tree, rel: &Path) -> bool {
    let (Ok(a), Ok(b)) = (
        std::fs::symlink_metadata(tree.root.join(rel)),
        std::fs::symlink_metadata(tree.rom.join(rel)),
    ) else {
        return true;
    };
    if a.file_type() != b.file_type()
        || a.mode() != b.mode()
        || a.uid() != b.uid()
        || a.gid() != b.gid()
    {
        return true;
    }
    if a.file_type().is_symlink() {
        return std::fs::read_link(tree.root.join(rel)).ok()
            != std::fs::read_link(tree.rom.join(rel)).ok();
    }
    if a.is_file() {
        return a.len() != b.len() || !same_content(&tree.root.join(rel), &tree.rom.join(rel));
    }
    false
}

fn same_content(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (Ok(mut fa), Ok(mut fb)) = (std::fs::File::open(a), std::fs::File::open(b)) else {
        return false;
    };
    let mut ba = [0u8; 8192];
    let mut bb = [0u8; 8192];
    loop {
        let Ok(n) = fa.read(&mut ba) else {
            return false;
        };
        if n == 0 {
            return fb.read(&mut bb).is_ok_and(|m| m == 0);
        }
        if fb.read_exact(bb.get_mut(..n).unwrap_or_default()).is_err() {
            return false;
        }
        if ba.get(..n) != bb.get(..n) {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn list(lines: &[&str]) -> KeepList {
        let mut l = KeepList::default();
        for line in lines {
            l.add(line);
        }
        l
    }

    #[test]
    fn lines_allow_what_they_name_and_below_with_shell_globs() {
        let l = list(&[
            "# comment",
            "",
            "  /etc/config/  ",
            "/etc/dropbear/*key*",
            "/root/.ssh",
        ]);
        assert_eq!(l.lines.len(), 3);
        assert!(l.allows(Path::new("etc/config")));
        assert!(l.allows(Path::new("etc/config/network")));
        assert!(l.allows(Path::new("etc/dropbear/dropbear_rsa_host_key")));
        assert!(!l.allows(Path::new("etc/dropbear/authorized")));
        assert!(l.allows(Path::new("root/.ssh/authorized_keys")));
        assert!(!l.allows(Path::new("etc")));
        assert!(l.is_ancestor(Path::new("etc")));
        assert!(!l.allows(Path::new("etc/passwd")));
        // A glob does not match a leading dot, as in the shell.
        let l = list(&["/etc/*"]);
        assert!(!l.allows(Path::new("etc/.hidden")));
        assert!(l.allows(Path::new("etc/shadow")));
    }

    #[test]
    fn dotdot_and_the_whole_root_are_refused_and_run_time_trees_never_kept() {
        let l = list(&["/etc/../root", "/", "/tmp", "/etc/x["]);
        assert_eq!(l.refused.len(), 3, "{:?}", l.refused);
        assert!(!l.allows(Path::new("tmp/x")));
    }

    #[test]
    fn collect_keeps_dirs_and_empty_dirs_but_never_follows_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let rom = t.path().join("rom");
        fs::create_dir_all(root.join("etc/config/empty")).unwrap();
        fs::create_dir_all(root.join("etc/away")).unwrap();
        fs::create_dir_all(&rom).unwrap();
        fs::write(root.join("etc/config/network"), "x").unwrap();
        fs::write(root.join("etc/away/secret"), "x").unwrap();
        std::os::unix::fs::symlink("../away", root.join("etc/config/link")).unwrap();
        fs::write(
            root.join(SYSUPGRADE_CONF),
            "/etc/config\n/etc/config/link/secret\n/etc/missing\n",
        )
        .unwrap();
        let l = KeepList::load(&root).unwrap();
        let tree = Tree { root, rom };
        let got = collect(&tree, &l, &Extra::default()).unwrap();
        let got: Vec<_> = got.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            got,
            [
                "etc/config",
                "etc/config/empty",
                "etc/config/link",
                "etc/config/network"
            ]
        );
    }

    #[test]
    fn changed_etc_and_skip_unchanged_compare_with_the_rom() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let rom = t.path().join("rom");
        for d in [&root, &rom] {
            fs::create_dir_all(d.join("etc")).unwrap();
            fs::write(d.join("etc/same"), "a").unwrap();
            fs::write(d.join("etc/changed"), "a").unwrap();
        }
        fs::write(root.join("etc/changed"), "b").unwrap();
        fs::write(root.join("etc/new"), "n").unwrap();
        fs::write(root.join(SYSUPGRADE_CONF), "/etc/same\n").unwrap();
        let tree = Tree {
            root: root.clone(),
            rom,
        };
        let l = KeepList::load(&root).unwrap();
        let names = |e: &Extra| -> Vec<String> {
            collect(&tree, &l, e)
                .unwrap()
                .iter()
                .map(|p| p.display().to_string())
                .collect()
        };
        assert_eq!(names(&Extra::default()), ["etc/same"]);
        let c = Extra {
            changed_etc: true,
            ..Extra::default()
        };
        assert_eq!(
            names(&c),
            ["etc/changed", "etc/new", "etc/same", "etc/sysupgrade.conf"]
        );
        let cu = Extra {
            skip_unchanged: true,
            ..c
        };
        assert_eq!(
            names(&cu),
            ["etc/changed", "etc/new", "etc/sysupgrade.conf"]
        );
    }
}
