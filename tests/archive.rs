//! Backup and restore on plain directory trees (`--root`): round trips, interop with GNU tar
//! and busybox tar, a suite of hostile archives each refused with nothing written anywhere,
//! and a restore cut at every step. Needs GNU tar and busybox (test.sh installs them); fails
//! saying so when they are missing.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const OVL: &str = env!("CARGO_BIN_EXE_ovl");

fn run(args: &[&str]) -> Output {
    Command::new(OVL).args(args).output().expect("run ovl")
}

fn sh(cmd: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn need(tool: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "`{tool}` is missing: install it (test.sh does)");
}

/// Everything about a tree a restore could change: type, mode, owner, size, mtime, content
/// CRC or link target, per path.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(base: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let p = base.join(rel);
        let m = std::fs::symlink_metadata(&p).unwrap();
        let what = if m.file_type().is_symlink() {
            format!("l {:?}", std::fs::read_link(&p).unwrap())
        } else if m.is_file() {
            format!("f {:08x}", crc32fast::hash(&std::fs::read(&p).unwrap()))
        } else {
            "d".to_string()
        };
        out.insert(
            rel.to_path_buf(),
            format!(
                "{what} {:o} {}:{} {} {}.{}",
                m.mode(),
                m.uid(),
                m.gid(),
                m.len(),
                m.mtime(),
                m.mtime_nsec()
            ),
        );
        if m.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            for n in names {
                walk(base, &rel.join(n), out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, Path::new(""), &mut out);
    out
}

/// A raw tar writer, for archives no well-behaved tool would make.
#[derive(Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn header(&mut self, name: &[u8], kind: u8, mode: u32, size: u64, link: &[u8]) -> &mut Self {
        let mut h = [0u8; 512];
        let put = |h: &mut [u8; 512], at: usize, len: usize, v: &[u8]| {
            let n = v.len().min(len);
            h[at..at + n].copy_from_slice(&v[..n]);
        };
        put(&mut h, 0, 100, name);
        put(&mut h, 100, 8, format!("{mode:07o}\0").as_bytes());
        put(&mut h, 108, 8, b"0000000\0");
        put(&mut h, 116, 8, b"0000000\0");
        put(&mut h, 124, 12, format!("{size:011o}\0").as_bytes());
        put(&mut h, 136, 12, b"15000000000\0");
        h[156] = kind;
        put(&mut h, 157, 100, link);
        put(&mut h, 257, 8, b"ustar\x0000");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        put(&mut h, 148, 8, format!("{sum:06o}\0 ").as_bytes());
        self.0.extend_from_slice(&h);
        self
    }
    fn data(&mut self, d: &[u8]) -> &mut Self {
        self.0.extend_from_slice(d);
        let pad = (512 - d.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0u8, pad));
        self
    }
    fn file(&mut self, name: &[u8], mode: u32, d: &[u8]) -> &mut Self {
        self.header(name, b'0', mode, d.len() as u64, b"").data(d)
    }
    fn dir(&mut self, name: &[u8]) -> &mut Self {
        self.header(name, b'5', 0o755, 0, b"")
    }
    fn symlink(&mut self, name: &[u8], to: &[u8]) -> &mut Self {
        self.header(name, b'2', 0o777, 0, to)
    }
    fn hardlink(&mut self, name: &[u8], to: &[u8]) -> &mut Self {
        self.header(name, b'1', 0o644, 0, to)
    }
    fn gnu_long(&mut self, kind: u8, long: &[u8]) -> &mut Self {
        let mut v = long.to_vec();
        v.push(0);
        self.header(b"././@LongLink", kind, 0o644, v.len() as u64, b"")
            .data(&v)
    }
    fn pax(&mut self, kind: u8, records: &[(&str, &[u8])]) -> &mut Self {
        let mut body = Vec::new();
        for (k, v) in records {
            let rest = k.len() + v.len() + 3;
            let mut len = rest + 1;
            while len != rest + len.to_string().len() {
                len = rest + len.to_string().len();
            }
            body.extend_from_slice(format!("{len} {k}=").as_bytes());
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        self.header(b"PaxHeader", kind, 0o644, body.len() as u64, b"")
            .data(&body)
    }
    fn gz(&self) -> Vec<u8> {
        let mut v = self.0.clone();
        v.extend(std::iter::repeat_n(0u8, 1024));
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&v).unwrap();
        e.finish().unwrap()
    }
}

const KEEP: &str = "/etc/config\n/etc/dropbear\n/etc/passwd\n/etc/shadow\n/root/.ssh\n";

/// A device tree beside a directory it must never touch.
fn target(t: &Path) -> PathBuf {
    let root = t.join("root");
    for d in ["etc/config/sub", "root", "outside"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::create_dir_all(t.join("outside")).unwrap();
    std::fs::write(t.join("outside/precious"), "precious").unwrap();
    std::fs::write(root.join("etc/sysupgrade.conf"), KEEP).unwrap();
    std::fs::write(root.join("etc/config/network"), "old network").unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    // A keep-list path that is a symlink out of the tree.
    std::os::unix::fs::symlink("../../outside", root.join("etc/dropbear")).unwrap();
    root
}

/// Each hostile archive, what its refusal must say, and the member it must name.
fn hostile() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let big = 17u64 << 20;
    let mut v: Vec<(&str, Raw, &str)> = Vec::new();
    let mut r = |name: &'static str, why: &'static str, f: &dyn Fn(&mut Raw)| {
        let mut raw = Raw::default();
        f(&mut raw);
        v.push((name, raw, why));
    };
    r("absolute path", "absolute path", &|a| {
        a.file(b"/etc/passwd", 0o644, b"evil");
    });
    r("dotdot", "`..`", &|a| {
        a.file(b"../outside/precious", 0o644, b"evil");
    });
    r("dotdot inside", "`..`", &|a| {
        a.file(b"etc/config/../../../outside/x", 0o644, b"evil");
    });
    r("symlink out", "leads outside", &|a| {
        a.symlink(b"etc/config/out", b"../../../outside");
    });
    r("symlink chain out", "leads outside", &|a| {
        a.symlink(b"etc/config/a", b"b")
            .symlink(b"etc/config/b", b"../../..");
    });
    r(
        "write through archive symlink",
        "a symlink in the archive",
        &|a| {
            a.symlink(b"etc/config/l", b"../dropbear")
                .file(b"etc/config/l/key", 0o600, b"evil");
        },
    );
    r(
        "through symlinked parent in target",
        "symlinked parent",
        &|a| {
            a.file(b"etc/dropbear/dropbear_rsa_host_key", 0o600, b"evil");
        },
    );
    r("hard link outside", "not an earlier member", &|a| {
        a.hardlink(b"etc/config/h", b"etc/shadow");
    });
    r("hard link absolute", "absolute path", &|a| {
        a.hardlink(b"etc/config/h", b"/etc/shadow");
    });
    r("hard link to symlink", "hard link to the symlink", &|a| {
        a.symlink(b"etc/config/s", b"network")
            .hardlink(b"etc/config/h", b"etc/config/s");
    });
    r(
        "hard link to directory",
        "hard link to the directory",
        &|a| {
            a.dir(b"etc/config/d")
                .hardlink(b"etc/config/h", b"etc/config/d");
        },
    );
    r("char device", "device node", &|a| {
        a.header(b"etc/config/null", b'3', 0o666, 0, b"");
    });
    r("block device", "device node", &|a| {
        a.header(b"etc/config/sda", b'4', 0o660, 0, b"");
    });
    r("fifo", "a fifo", &|a| {
        a.header(b"etc/config/pipe", b'6', 0o644, 0, b"");
    });
    r("setuid file", "setuid", &|a| {
        a.file(b"etc/config/sh", 0o4755, b"#!/bin/sh");
    });
    r("setgid directory", "setuid or setgid", &|a| {
        a.header(b"etc/config/g", b'5', 0o2755, 0, b"");
    });
    r("setuid outside the keep list", "setuid", &|a| {
        a.file(b"usr/bin/su", 0o4755, b"x");
    });
    r("oversized member", "a member may hold", &move |a| {
        a.header(b"etc/config/huge", b'0', 0o644, big, b"");
    });
    r("duplicate", "duplicate", &|a| {
        a.file(b"etc/config/x", 0o644, b"1")
            .file(b"etc/config/x", 0o644, b"2");
    });
    r("duplicate of another type", "duplicate", &|a| {
        a.file(b"etc/config/x", 0o644, b"1").dir(b"etc/config/x/");
    });
    r("file then below it", "a file in the archive", &|a| {
        a.file(b"etc/config/f", 0o644, b"1")
            .file(b"etc/config/f/g", 0o644, b"2");
    });
    r("file over a directory", "replace a directory", &|a| {
        a.file(b"etc/config/sub", 0o644, b"1");
    });
    r("directory over a file", "replace a file", &|a| {
        a.dir(b"etc/config/network/");
    });
    r(
        "below a file of the target",
        "is a file in the target",
        &|a| {
            a.file(b"etc/config/network/x", 0o644, b"1");
        },
    );
    r("GNU long name too long", "longer than 4095", &|a| {
        let long = format!("etc/config/{}", "d/".repeat(2100));
        a.gnu_long(b'L', long.as_bytes())
            .file(b"etc/config/short", 0o644, b"1");
    });
    r("GNU long name absolute", "absolute path", &|a| {
        let long = format!("/etc/config/{}", "x".repeat(120));
        a.gnu_long(b'L', long.as_bytes())
            .file(b"etc/config/short", 0o644, b"1");
    });
    r("GNU long link escaping", "leads outside", &|a| {
        let long = format!("{}outside", "../".repeat(40));
        a.gnu_long(b'K', long.as_bytes())
            .symlink(b"etc/config/ll", b"x");
    });
    r("PAX path with dotdot", "`..`", &|a| {
        a.pax(b'x', &[("path", b"../../outside/pax")])
            .file(b"etc/config/innocent", 0o644, b"1");
    });
    r("PAX name too long", "longer than 255", &|a| {
        let name = format!("etc/config/{}", "n".repeat(300));
        a.pax(b'x', &[("path", name.as_bytes())])
            .file(b"etc/config/innocent", 0o644, b"1");
    });
    r("PAX header oversized", "extended header", &|a| {
        let pad = vec![b'a'; 70_000];
        a.pax(b'x', &[("comment", &pad)])
            .file(b"etc/config/innocent", 0o644, b"1");
    });
    r("PAX global header", "global header", &|a| {
        a.pax(b'g', &[("path", b"/etc/shadow")])
            .file(b"etc/config/innocent", 0o644, b"1");
    });
    r("symlink without target", "without a target", &|a| {
        a.symlink(b"etc/config/empty", b"");
    });
    r(
        "hard link to a symlink named like a keep path",
        "hard link to the symlink",
        &|a| {
            a.symlink(b"etc/config/shadow", b"/etc/shadow")
                .hardlink(b"etc/shadow", b"etc/config/shadow");
        },
    );
    r("manifest CRC differs", "differs from the manifest", &|a| {
        let m = "ovl-backup 1\nboard b\nrom r\nf 3 00000000 etc/config/network\n";
        a.file(b"etc/config/network", 0o644, b"new").file(
            b"etc/backup/ovl-manifest.txt",
            0o600,
            m.as_bytes(),
        );
    });
    r("member not in the manifest", "not in the manifest", &|a| {
        let m = "ovl-backup 1\nboard b\nrom r\n";
        a.file(b"etc/config/network", 0o644, b"new").file(
            b"etc/backup/ovl-manifest.txt",
            0o600,
            m.as_bytes(),
        );
    });
    r("decompression bomb", "bomb", &|a| {
        a.file(b"etc/config/zeros", 0o644, &vec![0u8; 12 << 20]);
    });
    let mut out: Vec<(&str, Vec<u8>, &str)> = v
        .into_iter()
        .map(|(n, raw, why)| (n, raw.gz(), why))
        .collect();
    // A gzip cut short and a file that is no gzip at all.
    let mut good = Raw::default();
    good.file(b"etc/config/network", 0o644, &[7u8; 30_000]);
    let gz = good.gz();
    out.push(("truncated gzip", gz[..gz.len() / 2].to_vec(), "not a valid"));
    out.push(("not gzip", b"PK\x03\x04 a zip file".to_vec(), "not a valid"));
    out
}

#[test]
fn every_hostile_archive_is_refused_naming_why_and_nothing_is_written() {
    let cases = hostile();
    assert!(cases.len() >= 25, "{} cases", cases.len());
    let mut failures = Vec::new();
    for (name, bytes, why) in cases {
        let t = tempfile::tempdir().unwrap();
        let root = target(t.path());
        let archive = t.path().join("a.tgz");
        std::fs::write(&archive, &bytes).unwrap();
        let before = snapshot(t.path());
        let out = run(&[
            "restore",
            "--root",
            root.to_str().unwrap(),
            archive.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        let after = snapshot(t.path());
        eprintln!("{name}: {}", err.trim());
        if out.status.code() != Some(2) || !err.contains(why) {
            failures.push(format!("{name}: exit {:?}, said: {err}", out.status.code()));
        }
        if before != after {
            failures.push(format!("{name}: the tree changed"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn an_archive_over_the_size_limit_is_refused_before_it_is_read() {
    let t = tempfile::tempdir().unwrap();
    let root = target(t.path());
    let archive = t.path().join("big.tgz");
    let f = std::fs::File::create(&archive).unwrap();
    f.set_len(65 << 20).unwrap();
    let before = snapshot(&root);
    let out = run(&[
        "restore",
        "--root",
        root.to_str().unwrap(),
        archive.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("larger than"));
    assert_eq!(before, snapshot(&root));
}

/// A configuration with everything a backup must carry.
fn config(root: &Path) {
    std::fs::create_dir_all(root.join("etc/config/empty")).unwrap();
    std::fs::create_dir_all(root.join("root/.ssh")).unwrap();
    std::fs::write(root.join("etc/sysupgrade.conf"), KEEP).unwrap();
    std::fs::write(root.join("etc/config/network"), "config interface lan\n").unwrap();
    std::fs::write(root.join("etc/config/a b"), "space").unwrap();
    std::fs::write(root.join("etc/config/new\nline"), "newline").unwrap();
    std::fs::write(root.join("etc/config/-dash"), "dash").unwrap();
    std::fs::write(
        root.join("etc/config/".to_owned() + &"n".repeat(255)),
        "long",
    )
    .unwrap();
    std::fs::write(root.join("etc/shadow"), "root:$1$x:1::::::\n").unwrap();
    std::fs::set_permissions(root.join("etc/shadow"), PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::write(root.join("root/.ssh/authorized_keys"), "ssh-ed25519 AAAA").unwrap();
    std::fs::set_permissions(root.join("root/.ssh"), PermissionsExt::from_mode(0o700)).unwrap();
    std::fs::set_permissions(
        root.join("etc/config/empty"),
        PermissionsExt::from_mode(0o750),
    )
    .unwrap();
    std::os::unix::fs::symlink("/usr/share/zoneinfo/UTC", root.join("etc/config/tz")).unwrap();
    std::fs::hard_link(root.join("etc/config/network"), root.join("etc/config/hl")).unwrap();
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::chown(root.join("etc/config/network"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(root.join("etc/config/empty"), Some(42), Some(43)).unwrap();
    }
    // Not in the keep list: must not travel.
    std::fs::write(root.join("etc/stray"), "stray").unwrap();
}

fn kept(snap: &BTreeMap<PathBuf, String>) -> BTreeMap<PathBuf, String> {
    snap.iter()
        .filter(|(p, _)| {
            let s = p.to_string_lossy();
            s.starts_with("etc/config") || s.starts_with("etc/shadow") || s.starts_with("root/.ssh")
        })
        .map(|(p, v)| (p.clone(), v.clone()))
        .collect()
}

#[test]
fn a_backup_restores_byte_for_byte_with_modes_owners_mtimes_and_empty_dirs() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    config(&src);
    let archive = t.path().join("backup.tgz");
    let out = run(&[
        "backup",
        "--root",
        src.to_str().unwrap(),
        "-o",
        archive.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::metadata(&archive).unwrap().mode() & 0o777,
        0o600,
        "the backup holds /etc/shadow"
    );
    // A fresh device with the same keep list.
    let dst = t.path().join("dst");
    std::fs::create_dir_all(dst.join("etc")).unwrap();
    std::fs::write(dst.join("etc/sysupgrade.conf"), KEEP).unwrap();
    let out = run(&[
        "restore",
        "--root",
        dst.to_str().unwrap(),
        archive.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // tar keeps whole seconds.
    let whole_seconds = |m: BTreeMap<PathBuf, String>| -> BTreeMap<PathBuf, String> {
        m.into_iter()
            .map(|(p, v)| (p, v.rsplit_once('.').unwrap().0.to_string()))
            .collect()
    };
    let (s, d) = (snapshot(&src), snapshot(&dst));
    // The kept paths' directory etc/ itself is created, not copied.
    assert_eq!(whole_seconds(kept(&s)), whole_seconds(kept(&d)));
    assert!(!dst.join("etc/stray").exists());
    assert!(!dst.join(".ovl-restore").exists());
    assert!(!dst.join("etc/backup/ovl-manifest.txt").exists());
    let a = std::fs::metadata(dst.join("etc/config/network")).unwrap();
    let b = std::fs::metadata(dst.join("etc/config/hl")).unwrap();
    assert_eq!(a.ino(), b.ino(), "a hard link stays one");
    // --list names the same paths.
    let out = run(&["backup", "--root", src.to_str().unwrap(), "--list"]);
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(list.contains("/etc/config/empty\n") && list.contains("/root/.ssh\n"));
    assert!(!list.contains("stray"));
}

#[test]
fn restore_leaves_out_what_the_device_keep_list_does_not_name() {
    let t = tempfile::tempdir().unwrap();
    let root = target(t.path());
    let mut a = Raw::default();
    a.dir(b"etc/")
        .file(b"etc/config/network", 0o644, b"new network")
        .file(b"etc/init.d/evil", 0o755, b"#!/bin/sh\nrm -rf /\n")
        .file(b"usr/bin/tool", 0o755, b"x");
    let archive = t.path().join("a.tgz");
    std::fs::write(&archive, a.gz()).unwrap();
    let etc_mode = std::fs::metadata(root.join("etc")).unwrap().mode();
    let out = run(&[
        "restore",
        "--root",
        root.to_str().unwrap(),
        archive.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("left out 2 members") && err.contains("etc/init.d/evil"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/config/network")).unwrap(),
        "new network"
    );
    assert!(!root.join("etc/init.d").exists() && !root.join("usr").exists());
    assert_eq!(
        std::fs::metadata(root.join("etc")).unwrap().mode(),
        etc_mode
    );
}

#[test]
fn gnu_tar_and_busybox_tar_read_our_backup_and_we_read_theirs() {
    need("tar");
    need("busybox");
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    config(&src);
    let archive = t.path().join("b.tgz");
    let out = run(&[
        "backup",
        "--root",
        src.to_str().unwrap(),
        "-o",
        archive.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let a = archive.display();
    for (tool, x) in [
        ("gnu", "tar --numeric-owner -xpzf"),
        ("bb", "busybox tar -xzf"),
    ] {
        let dir = t.path().join(tool);
        std::fs::create_dir(&dir).unwrap();
        sh(&format!("cd {} && {x} {a}", dir.display()));
        let got = snapshot(&dir);
        let want = snapshot(&src);
        for p in [
            "etc/config/network",
            "etc/config/tz",
            "root/.ssh/authorized_keys",
        ] {
            let (g, w) = (&got[Path::new(p)], &want[Path::new(p)]);
            // Type, content and mode agree (owners and mtimes are up to the tool's flags).
            assert_eq!(
                g.split(' ').take(3).collect::<Vec<_>>(),
                w.split(' ').take(3).collect::<Vec<_>>(),
                "{tool} {p}"
            );
        }
        assert!(dir.join("etc/config/empty").is_dir(), "{tool}");
        assert!(
            dir.join("etc/config/".to_owned() + &"n".repeat(255))
                .is_file(),
            "{tool}"
        );
    }
    // Archives made by GNU tar and by busybox tar, as OpenWrt users make them.
    for (tool, c) in [("gnu", "tar -czf"), ("bb", "busybox tar -czf")] {
        let made = t.path().join(format!("{tool}.tgz"));
        sh(&format!(
            "cd {} && {c} {} etc/config etc/shadow etc/stray",
            src.display(),
            made.display()
        ));
        let dst = t.path().join(format!("{tool}-dst"));
        std::fs::create_dir_all(dst.join("etc")).unwrap();
        std::fs::write(dst.join("etc/sysupgrade.conf"), KEEP).unwrap();
        let out = run(&[
            "restore",
            "--root",
            dst.to_str().unwrap(),
            made.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{tool}: {err}");
        assert!(
            err.contains("no manifest") && err.contains("etc/stray"),
            "{tool}: {err}"
        );
        assert_eq!(
            std::fs::read(dst.join("etc/config/a b")).unwrap(),
            b"space",
            "{tool}"
        );
        assert_eq!(
            std::fs::metadata(dst.join("etc/shadow")).unwrap().mode() & 0o777,
            0o600
        );
        assert!(!dst.join("etc/stray").exists(), "{tool}");
    }
}

#[test]
fn a_restore_cut_at_any_step_recovers_to_the_old_or_the_new_tree() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    config(&src);
    std::fs::write(src.join("etc/config/network"), "new network").unwrap();
    let archive = t.path().join("b.tgz");
    assert!(run(&[
        "backup",
        "--root",
        src.to_str().unwrap(),
        "-o",
        archive.to_str().unwrap()
    ])
    .status
    .success());
    let make_old = |dir: &Path| {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir.join("etc/config")).unwrap();
        std::fs::write(dir.join("etc/sysupgrade.conf"), KEEP).unwrap();
        std::fs::write(dir.join("etc/config/network"), "old network").unwrap();
        std::fs::write(dir.join("etc/config/only-old"), "old").unwrap();
    };
    // The tree a whole restore makes, to compare with.
    let whole = t.path().join("whole");
    make_old(&whole);
    assert!(run(&[
        "restore",
        "--root",
        whole.to_str().unwrap(),
        archive.to_str().unwrap()
    ])
    .status
    .success());
    let old = t.path().join("old");
    make_old(&old);
    let (old_snap, new_snap) = (snapshot(&old), snapshot(&whole));
    let dir = t.path().join("cut");
    let mut seen_old = 0;
    let mut seen_new = 0;
    for at in 1.. {
        make_old(&dir);
        let out = Command::new(OVL)
            .args([
                "restore",
                "--root",
                dir.to_str().unwrap(),
                archive.to_str().unwrap(),
            ])
            .env("OVL_TEST_CUT_AT", at.to_string())
            .output()
            .unwrap();
        let cut = out.status.code() == Some(99);
        let out = run(&["restore", "--recover", "--root", dir.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let snap = snapshot(&dir);
        // Each old tree is made anew (new mtimes), and a rename moves a directory's mtime:
        // compare the rest.
        let strip = |s: &BTreeMap<PathBuf, String>| -> BTreeMap<PathBuf, String> {
            s.iter()
                .filter(|(p, _)| !p.as_os_str().is_empty())
                .map(|(p, v)| (p.clone(), v.rsplit_once(' ').unwrap().0.to_string()))
                .collect()
        };
        if strip(&snap) == strip(&old_snap) {
            seen_old += 1;
        } else if strip(&snap) == strip(&new_snap) {
            seen_new += 1;
        } else {
            panic!(
                "cut at step {at}: a mixture:\n{:#?}\nold:\n{:#?}",
                strip(&snap),
                strip(&old_snap)
            );
        }
        if !cut {
            break;
        }
    }
    assert!(
        seen_old > 3 && seen_new > 3,
        "old {seen_old}, new {seen_new}"
    );
}

/// A sysupgrade image (board `b`, release 2) of a squashfs made from `tree`, in `dir`.
fn image_of(tree: &Path, dir: &Path) -> PathBuf {
    let sq = dir.join("rom.sqfs");
    sh(&format!(
        "mksquashfs {} {} -quiet -noappend -all-root >/dev/null",
        tree.display(),
        sq.display()
    ));
    let img = dir.join("up.img");
    let o = run(&[
        "mkimage",
        "-b",
        "b",
        "--release",
        "2",
        sq.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{o:?}");
    img
}

/// A state file saying how this boot went, for the commands that refuse a fallback.
fn state_file(dir: &Path, mode: &str) -> PathBuf {
    let p = dir.join(format!("state-{mode}.json"));
    std::fs::write(
        &p,
        format!(
            r#"{{"version":1,"mode":"{mode}","reason":{},"boot":"initramfs","board":"b","rom":"/dev/null","data":null,"data_content":null,"data_fstype":null,"data_action":null,"init":"/sbin/init","modules_loaded":0,"modules_failed":[],"started_us":0,"total_us":0,"peak_rss_kib":0,"steps":[],"rom_id":null,"first_boot":null,"cleared":null,"stale_from":null,"upgrade_waiting":false,"upgrade":null,"notes":[]}}"#,
            if mode == "persistent" { "null" } else { r#""the data partition is corrupt""# }
        ),
    )
    .unwrap();
    p
}

#[test]
fn a_backup_that_runs_out_of_space_or_on_a_tmpfs_fallback_leaves_nothing_behind() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root (a small tmpfs in a private mount namespace): ./test.sh runs it as root"
    );
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    config(&root);
    // Incompressible: the archive cannot fit in 64 KiB.
    std::fs::write(root.join("etc/config/random"), {
        let mut v = vec![0u8; 512 * 1024];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut v))
            .unwrap();
        v
    })
    .unwrap();
    let small = d.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs -o size=64k small {s} && {OVL} backup --root {r} -o {s}/b.tgz; echo rc=$?; ls -A {s}",
            s = small.display(),
            r = root.display()
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("rc=2"), "{text}{err}");
    assert!(
        text.trim_end().ends_with("rc=2"),
        "files left on the full file system: {text}"
    );
    assert!(err.contains("No space left"), "{err}");

    // On a tmpfs fallback nothing would survive: refused before anything is read or written.
    let state = state_file(d.path(), "tmpfs");
    let out_file = d.path().join("b.tgz");
    let o = run(&[
        "backup",
        "--state",
        state.to_str().unwrap(),
        "-o",
        out_file.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("tmpfs overlay"), "{err}");
    assert!(!out_file.exists());
    // And sysupgrade, keeping the configuration, refuses there too before it writes a ROM.
    let rom = d.path().join("romdev");
    std::fs::write(&rom, vec![0u8; 1 << 20]).unwrap();
    let img = image_of(&root.join("etc/config"), d.path());
    let o = run(&[
        "sysupgrade",
        "--state",
        state.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
        "--overlay",
        d.path().to_str().unwrap(),
        "--rom-dev",
        rom.to_str().unwrap(),
        "--no-reboot",
        img.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("-n"), "{err}");
    assert!(std::fs::read(&rom).unwrap().iter().all(|&b| b == 0));
    assert!(!d.path().join(".ovl-keep").exists());
}

#[test]
fn called_sysupgrade_the_binary_takes_openwrts_backup_flags_and_images_stay_squashfs() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    config(&root);
    let alias = d.path().join("sysupgrade");
    std::os::unix::fs::symlink(OVL, &alias).unwrap();
    let call = |args: &[&str]| {
        let o = Command::new(&alias).args(args).output().unwrap();
        assert!(o.status.success(), "sysupgrade {args:?}: {o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let r = root.to_str().unwrap();
    let list = call(&["-l", "--root", r]);
    assert!(list.lines().any(|l| l == "/etc/config/network"), "{list}");
    assert!(!list.contains("stray"), "{list}");
    let b = d.path().join("b.tgz");
    call(&["-b", b.to_str().unwrap(), "--root", r]);
    let fresh = d.path().join("fresh");
    std::fs::create_dir_all(fresh.join("etc")).unwrap();
    std::fs::write(fresh.join("etc/sysupgrade.conf"), KEEP).unwrap();
    call(&["-r", b.to_str().unwrap(), "--root", fresh.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(fresh.join("etc/config/network")).unwrap(),
        "config interface lan\n"
    );
    // A sysupgrade image is the squashfs with a trailer that unsquashfs does not mind.
    need("unsquashfs");
    let img = image_of(&root, d.path());
    let o = Command::new("unsquashfs")
        .args(["-l"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("etc/config/network"));
    // The trailer as the README says to read it: the last 16 bytes, then the text.
    let bytes = std::fs::read(&img).unwrap();
    let n = bytes.len();
    assert_eq!(&bytes[n - 16..n - 8], b"OVLIMG01");
    let len = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().unwrap()) as usize;
    let text = String::from_utf8_lossy(&bytes[n - 16 - len..n - 16]).into_owned();
    assert!(
        text.starts_with("ovl-image 1\nboards b\nversion 2\n"),
        "{text}"
    );
}
