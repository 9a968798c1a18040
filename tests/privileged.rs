//! Privileged integration tests: preinit on real mounts (loop devices, squashfs from mksquashfs,
//! ext4 from mkfs.ext4, overlayfs, tmpfs), each boot in its own private mount namespace
//! (`unshare --mount --propagation private`), with a stand-in init that records what it sees.
//!
//! They need root and the tools named in `require`; without them they fail and say what is
//! missing (never skip silently). CI runs them as root.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const OVL: &str = env!("CARGO_BIN_EXE_ovl");

fn sh(cmd: &str) -> String {
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
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn require() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the privileged tests need root (loop devices, mounts, mount namespaces): run them as root"
    );
    for tool in [
        "mksquashfs",
        "mkfs.ext4",
        "losetup",
        "unshare",
        "sgdisk",
        "busybox",
    ] {
        assert!(
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false),
            "`{tool}` is missing: install squashfs-tools, e2fsprogs, util-linux, gdisk and busybox-static"
        );
    }
}

/// A static build of ovl for the ROM: the stand-in init runs `ovlctl status` in the new root,
/// which has no C library.
fn static_ovl() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("OVL_STATIC_BIN") {
            return PathBuf::from(p);
        }
        let target = format!("{}-unknown-linux-musl", std::env::consts::ARCH);
        let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("static");
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "--bin",
                "ovl",
                "--target",
                &target,
                "--target-dir",
            ])
            .arg(&target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo");
        assert!(
            status.success(),
            "static build for {target} failed: `rustup target add {target}` is needed"
        );
        target_dir.join(&target).join("debug/ovl")
    })
    .clone()
}

/// The ROM every scenario boots: busybox, the stand-in init, a static ovlctl, one file to
/// delete, and the mount points a rootfs boot needs.
fn rom_image() -> PathBuf {
    static ROM: OnceLock<PathBuf> = OnceLock::new();
    ROM.get_or_init(|| {
        require();
        let base =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("rom-{}", std::process::id()));
        let tree = base.join("tree");
        let _ = std::fs::remove_dir_all(&base);
        for d in [
            "bin", "sbin", "etc", "proc", "sys", "dev", "run", "tmp", "rom", "overlay", "mnt",
        ] {
            std::fs::create_dir_all(tree.join(d)).unwrap();
        }
        let busybox = sh("command -v busybox");
        std::fs::copy(&busybox, tree.join("bin/busybox")).unwrap();
        for applet in [
            "sh", "cat", "echo", "ls", "rm", "mkdir", "sync", "touch", "test", "grep", "mv",
            "sleep", "rmdir", "dd", "df", "ln", "mount", "umount", "printf", "readlink",
        ] {
            std::os::unix::fs::symlink("busybox", tree.join("bin").join(applet)).unwrap();
        }
        std::fs::copy(static_ovl(), tree.join("sbin/ovlctl")).unwrap();
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/init.sh"),
            tree.join("sbin/init"),
        )
        .unwrap();
        sh(&format!(
            "chmod 755 {}/sbin/init {}/sbin/ovlctl",
            tree.display(),
            tree.display()
        ));
        copy_with_libs("/usr/sbin/mkfs.ext4", &tree);
        std::fs::write(tree.join("etc/rom-file"), "from the rom\n").unwrap();
        std::fs::create_dir_all(tree.join("etc/rom-dir")).unwrap();
        std::fs::write(tree.join("etc/rom-dir/inner"), "inner\n").unwrap();
        // Empty file a rootfs-boot test binds the command line onto (the ROM is read-only).
        std::fs::write(tree.join("etc/test-cmdline"), "").unwrap();
        let img = base.join("rom.sqfs");
        sh(&format!(
            "mksquashfs {} {} -noappend -quiet -comp gzip -all-root >/dev/null",
            tree.display(),
            img.display()
        ));
        img
    })
    .clone()
}

/// Copies a dynamic program and the libraries `ldd` names into the ROM tree, at their paths,
/// so that preinit can run it chrooted in the ROM as it does on a device.
fn copy_with_libs(prog: &str, tree: &Path) {
    let mut files = vec![prog.to_string()];
    for line in sh(&format!("ldd {prog}")).lines() {
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(str::to_string);
        files.extend(path);
    }
    for f in files {
        let dst = tree.join(f.trim_start_matches('/'));
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(&f, &dst).unwrap_or_else(|e| panic!("copy {f}: {e}"));
    }
}

/// A loop device set up by the test, detached when dropped.
struct Loop(String);

impl Loop {
    fn new(file: &Path, offset: u64, size: Option<u64>) -> Loop {
        let limit = size.map(|s| format!("--sizelimit {s}")).unwrap_or_default();
        Loop(sh(&format!(
            "losetup --find --show --offset {offset} {limit} {}",
            file.display()
        )))
    }
    fn name(&self) -> &str {
        self.0.trim_start_matches("/dev/")
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

fn mountinfo() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap()
}

fn sha(path: &Path) -> String {
    sh(&format!("sha256sum {} | cut -d' ' -f1", path.display()))
}

/// What the stand-in init printed.
struct Run {
    stdout: String,
    stderr: String,
}

impl Run {
    fn section(&self, name: &str) -> &str {
        let start = format!("---{name}\n");
        let s = self
            .stdout
            .find(&start)
            .map(|i| i + start.len())
            .unwrap_or(self.stdout.len());
        let rest = &self.stdout[s..];
        &rest[..rest
            .find("\n---")
            .or_else(|| rest.find("STATUS-EXIT"))
            .unwrap_or(rest.len())]
    }
    fn status(&self) -> Value {
        let text = self.section("status");
        let json = text.lines().next().unwrap_or("");
        serde_json::from_str(json).unwrap_or_else(|e| {
            panic!(
                "status --json gave no JSON ({e}):\nstdout:\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
    fn status_exit(&self) -> i32 {
        let at = self
            .stdout
            .find("STATUS-EXIT:")
            .expect("status exit printed")
            + 12;
        self.stdout[at..]
            .lines()
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
    fn action(&self) -> &str {
        self.section("action")
    }
    /// The mount on top at `point` in the new root: (fstype, source).
    fn mount(&self, point: &str) -> Option<(String, String)> {
        self.section("mountinfo").lines().rev().find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mp = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            (mp == point).then(|| (r.next().unwrap().to_string(), r.next().unwrap().to_string()))
        })
    }
    fn assert_ran_init(&self) {
        assert!(
            self.stdout.contains("---end"),
            "init did not finish:\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
    }
}

/// One scenario: its own directory, ROM and data images, and loop devices.
struct Scenario {
    dir: tempfile::TempDir,
    mounts_before: String,
}

/// Where a preinit that escaped its --target would write or what it would run: the state
/// files and the programs of the host. None of them may change during a scenario.
const OUTSIDE: [&str; 7] = [
    "/run",
    "/tmp/ovl",
    "/etc",
    "/sbin",
    "/usr/sbin",
    "/bin",
    "/init",
];

/// Files below the OUTSIDE places changed after `stamp` was made.
fn changed_outside(stamp: &Path) -> String {
    let mut cmd = String::from("find");
    for p in OUTSIDE {
        if Path::new(p).exists() {
            cmd.push(' ');
            cmd.push_str(p);
        }
    }
    sh(&format!(
        "{cmd} -xdev -newer {} -print 2>/dev/null || true",
        stamp.display()
    ))
}

/// `sh -c script` in a private mount namespace of its own: nothing it mounts reaches the host.
fn in_namespace(script: &str) -> Command {
    let mut c = Command::new("unshare");
    c.args([
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        script,
    ]);
    c
}

/// mkfs.ext4 with its libraries, for scenarios whose initramfs ships it.
fn initramfs_mkfs() -> PathBuf {
    static TREE: OnceLock<PathBuf> = OnceLock::new();
    TREE.get_or_init(|| {
        let tree =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("mkfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tree);
        copy_with_libs("/sbin/mkfs.ext4", &tree);
        tree
    })
    .clone()
}

#[derive(Default)]
struct Boot<'a> {
    cmdline: String,
    board: Option<&'a str>,
    action: &'a str,
    sysfs: Option<PathBuf>,
    /// Boot from the ROM as root (chroot into it, pivot_root) instead of an initramfs.
    rootfs_dev: Option<String>,
    /// The initramfs carries mkfs.ext4 at /sbin.
    initramfs_mkfs: bool,
}

impl Scenario {
    fn new() -> Scenario {
        require();
        rom_image();
        let dir = tempfile::Builder::new()
            .prefix("ovl-test")
            .tempdir()
            .unwrap();
        // util-linux's mount(8), which the scenarios' scripts run, makes /run/mount (its utab
        // lock) on first use, and /run is the host's in every namespace: made before the
        // stamp, so that the first scenario of a fresh machine does not count it as ovl's.
        std::fs::create_dir_all("/run/mount").unwrap();
        let stamp = dir.path().join("stamp");
        std::fs::write(&stamp, "").unwrap();
        // find -newer compares modification times: make the stamp's a second old, so a file
        // written within the same clock tick still counts as newer.
        sh(&format!("touch -d '1 second ago' {}", stamp.display()));
        Scenario {
            dir,
            mounts_before: mountinfo(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A data image of `mib` MiB filled with `byte`.
    fn data(&self, name: &str, mib: usize, byte: u8) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, vec![byte; mib << 20]).unwrap();
        p
    }

    fn ext4(&self, name: &str, mib: usize) -> PathBuf {
        let p = self.data(name, mib, 0);
        sh(&format!("mkfs.ext4 -F -q -L rootfs_data {}", p.display()));
        p
    }

    fn boot(&self, b: Boot) -> Run {
        let cmdline = self.path("cmdline");
        std::fs::write(&cmdline, &b.cmdline).unwrap();
        let target = self.path("target");
        std::fs::create_dir_all(&target).unwrap();
        let script = match &b.rootfs_dev {
            None => {
                let mut args = format!(
                    "preinit --target {} --cmdline-file {}",
                    target.display(),
                    cmdline.display()
                );
                if let Some(board) = b.board {
                    let bp = self.path("board.json");
                    std::fs::write(&bp, board).unwrap();
                    args.push_str(&format!(" --board {}", bp.display()));
                }
                if let Some(s) = &b.sysfs {
                    args.push_str(&format!(" --sysfs {}", s.display()));
                }
                let extra = if b.initramfs_mkfs {
                    format!(" && cp -a {}/. {}/", initramfs_mkfs().display(), target.display())
                } else {
                    String::new()
                };
                // The target plays the initramfs: a tmpfs.
                format!(
                    "mount -t tmpfs -o size=64m test-initramfs {t}{extra} && exec {OVL} {args} -- single",
                    t = target.display()
                )
            }
            Some(dev) => format!(
                "mount -t squashfs -o ro {dev} {t} && mount --bind {c} {t}/etc/test-cmdline && \
                 exec chroot {t} /sbin/ovlctl preinit --target / --cmdline-file /etc/test-cmdline -- single",
                t = target.display(),
                c = cmdline.display()
            ),
        };
        let out = in_namespace(&script)
            .env("OVL_TEST_ACTION", b.action)
            .output()
            .expect("run unshare");
        let run = Run {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        run.assert_ran_init();
        run
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        // --target confines preinit: nothing outside the scenario was written.
        let changed = changed_outside(&self.dir.path().join("stamp"));
        assert!(
            changed.is_empty(),
            "files outside the scenario changed:\n{changed}"
        );
        // Every mount was made in the scenario's own namespace: the host's table is as it was.
        assert_eq!(
            mountinfo(),
            self.mounts_before,
            "the host's mount table changed"
        );
        // Loop devices preinit attached auto-clear once their namespace is gone.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = sh(&format!(
                "losetup -a | grep -F {} || true",
                self.dir.path().display()
            ));
            if left.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "loop devices left behind: {left}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn rom_loop() -> Loop {
    Loop::new(&rom_image(), 0, None)
}

#[test]
fn privileged_first_boot_formats_and_later_boots_persist() {
    let s = Scenario::new();
    let data = s.data("data.img", 32, 0xff);
    let (rom, d) = (rom_loop(), Loop::new(&data, 0, None));
    let cmdline = format!("ovl.rom={} ovl.data={}", rom.0, d.0);

    let first = s.boot(Boot {
        cmdline: cmdline.clone(),
        action: "echo kept > /etc/written; rm /etc/rom-file; mkdir /etc/newdir; ls /etc",
        ..Boot::default()
    });
    let st = first.status();
    assert_eq!(st["mode"], "persistent", "{st}");
    assert!(
        first
            .stderr
            .contains("with /usr/sbin/mkfs.ext4 from the ROM"),
        "{}",
        first.stderr
    );
    assert_eq!(st["data"]["content"], "erased");
    assert_eq!(st["data"]["action"], "format");
    assert_eq!(st["data"]["fstype"], "ext4");
    assert_eq!(st["root"]["source"], "ovl:persistent");
    assert_eq!(st["root"]["read_only"], false);
    assert_eq!(first.status_exit(), 0);
    assert!(first.stdout.contains("INIT-ARGS:single"));
    assert_eq!(first.mount("/").unwrap().0, "overlay");
    assert_eq!(first.mount("/rom").unwrap().0, "squashfs");
    assert_eq!(first.mount("/overlay").unwrap().0, "ext4");
    for api in ["/proc", "/sys", "/dev", "/run"] {
        assert!(
            first.mount(api).is_some(),
            "{api} not carried into the new root"
        );
    }
    assert!(!first.action().contains("rom-file"));

    let second = s.boot(Boot {
        cmdline,
        action: "cat /etc/written; echo ETC:; ls /etc; echo ROMETC:; ls /rom/etc",
        ..Boot::default()
    });
    let st = second.status();
    assert_eq!(st["mode"], "persistent");
    assert_eq!(st["data"]["action"], "mount");
    assert_eq!(st["data"]["content"], "ext4");
    let seen = second.action();
    assert!(seen.contains("kept"), "file of the first boot lost: {seen}");
    assert!(seen.contains("newdir"));
    // Deleted from the ROM in the first boot: gone from /etc, still in /rom/etc.
    let (etc, rom_etc) = seen.split_once("ROMETC:").unwrap();
    assert!(!etc.contains("rom-file"), "whiteout lost: {seen}");
    assert!(rom_etc.contains("rom-file"), "{seen}");
}

#[test]
fn privileged_gpt_partition_names_are_found() {
    let s = Scenario::new();
    // A GPT disk: rootfs (the squashfs) and rootfs_data (blank), 16 MiB each.
    let disk = s.data("disk.img", 40, 0);
    sh(&format!(
        "sgdisk -n 1:2048:34815 -c 1:rootfs -n 2:34816:67583 -c 2:rootfs_data {}",
        disk.display()
    ));
    let table = sh(&format!("sgdisk -p {}", disk.display()));
    assert!(
        table.contains("rootfs_data") && table.contains(" rootfs\n"),
        "{table}"
    );
    let (p1, p2) = (2048u64 * 512, 34816u64 * 512);
    let size = 32768u64 * 512;
    sh(&format!(
        "dd if={} of={} bs=512 seek=2048 conv=notrunc status=none",
        rom_image().display(),
        disk.display()
    ));
    sh(&format!(
        "head -c {size} /dev/zero | tr '\\0' '\\377' | dd of={} bs=512 seek=34816 conv=notrunc status=none",
        disk.display()
    ));
    // The host kernel parses no partition tables: loop devices at the partitions' offsets
    // stand in for vda1 and vda2, and a sysfs fixture carries their uevents.
    let (rom, data) = (
        Loop::new(&disk, p1, Some(size)),
        Loop::new(&disk, p2, Some(size)),
    );
    let sysfs = s.path("sysfs");
    for (dev, name) in [(rom.name(), "rootfs"), (data.name(), "rootfs_data")] {
        let d = sysfs.join("class/block").join(dev);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("uevent"),
            format!(
                "MAJOR=7\nMINOR=0\nDEVNAME={dev}\nDEVTYPE=partition\nPARTN=1\nPARTNAME={name}\n"
            ),
        )
        .unwrap();
    }
    // The ROM ships /usr/sbin/mkfs.ext4 only: this one comes from the initramfs's own /.
    let board = r#"{"name":"gpt","mkfs":"/sbin/mkfs.ext4"}"#;
    let run = s.boot(Boot {
        cmdline: "ovl.timeout=2".into(),
        board: Some(board),
        sysfs: Some(sysfs.clone()),
        initramfs_mkfs: true,
        action: "echo gpt > /etc/gpt",
        ..Boot::default()
    });
    assert!(
        run.stderr.contains("with /sbin/mkfs.ext4\n"),
        "{}",
        run.stderr
    );
    let st = run.status();
    assert_eq!(st["mode"], "persistent", "{st}");
    assert!(st["rom"]["device"].as_str().unwrap().ends_with(rom.name()));
    assert!(st["data"]["device"]
        .as_str()
        .unwrap()
        .ends_with(data.name()));
    assert_eq!(st["data"]["action"], "format");
    let again = s.boot(Boot {
        cmdline: "ovl.timeout=2".into(),
        sysfs: Some(sysfs),
        action: "cat /etc/gpt",
        ..Boot::default()
    });
    assert!(again.action().contains("gpt"));
}

#[test]
fn privileged_openwrt_x86_combined_partition() {
    let s = Scenario::new();
    // squashfs, then the writable area from the next 64 KiB boundary: one partition.
    let img = s.path("combined.img");
    let rom = std::fs::read(rom_image()).unwrap();
    let start = rom.len().div_ceil(65536) * 65536;
    let mut bytes = rom.clone();
    bytes.resize(start, 0);
    bytes.resize(start + (16 << 20), 0xff);
    std::fs::write(&img, &bytes).unwrap();
    let part = Loop::new(&img, 0, None);
    let board = r#"{"name":"x86-combined","data":"after-rom","fstype":"ext4"}"#;
    let cmdline = format!("root={}", part.0);
    let first = s.boot(Boot {
        cmdline: cmdline.clone(),
        board: Some(board),
        action: "echo combined > /etc/c",
        ..Boot::default()
    });
    let st = first.status();
    assert_eq!(st["mode"], "persistent", "{st}");
    assert_eq!(st["data"]["action"], "format");
    assert_eq!(st["board"], "x86-combined");
    let second = s.boot(Boot {
        cmdline,
        board: Some(board),
        action: "cat /etc/c",
        ..Boot::default()
    });
    assert_eq!(second.status()["data"]["action"], "mount");
    assert!(second.action().contains("combined"));
    drop(part);
    // The squashfs in front of the writable area is untouched.
    assert_eq!(&std::fs::read(&img).unwrap()[..rom.len()], &rom[..]);
}

/// Boots on a data image and expects the tmpfs fallback with a reason containing `why`.
fn expect_fallback(
    s: &Scenario,
    data: &Path,
    extra: &str,
    board: Option<&str>,
    why: &str,
) -> Value {
    let before = sha(data);
    let (rom, d) = (rom_loop(), Loop::new(data, 0, None));
    let run = s.boot(Boot {
        cmdline: format!("ovl.rom={} ovl.data={} ovl.timeout=0.3 {extra}", rom.0, d.0),
        board,
        action: "echo volatile > /etc/v && cat /etc/v",
        ..Boot::default()
    });
    let st = run.status();
    assert_eq!(st["mode"], "tmpfs", "{st}");
    let reason = st["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(why), "reason `{reason}` lacks `{why}`");
    assert_eq!(st["upper"]["fstype"], "tmpfs");
    assert_eq!(st["root"]["source"], "ovl:tmpfs");
    assert_eq!(st["root"]["read_only"], false);
    assert_eq!(run.status_exit(), 1);
    // Never a read-only root: the fallback is writable.
    assert!(run.action().contains("volatile"));
    drop(d);
    // What was not ours is left byte for byte as it was.
    assert_eq!(sha(data), before, "the data partition changed");
    st
}

#[test]
fn privileged_corrupt_partition_falls_back() {
    let s = Scenario::new();
    let data = s.ext4("data.img", 16);
    sh(&format!(
        "head -c 262144 /dev/urandom | dd of={} conv=notrunc status=none",
        data.display()
    ));
    expect_fallback(&s, &data, "", None, "holds unknown, not ext4");
}

#[test]
fn privileged_ext4_that_will_not_mount_falls_back_with_the_kernel_error() {
    let s = Scenario::new();
    let data = s.ext4("data.img", 16);
    // Keep the magic, break the superblock's block count and group descriptors.
    sh(&format!(
        "printf '\\377\\377\\377\\377' | dd of={d} bs=1 seek=1028 conv=notrunc status=none && \
         head -c 8192 /dev/urandom | dd of={d} bs=1 seek=4096 conv=notrunc status=none",
        d = data.display()
    ));
    // The reason is the failed mount with the kernel's errno (EBADMSG: checksum, EUCLEAN:
    // corruption, EINVAL: nonsense geometry, depending on what the damage hit first).
    expect_fallback(&s, &data, "", None, "/overlay (ext4): ");
}

#[test]
fn privileged_missing_partition_falls_back() {
    let s = Scenario::new();
    let rom = rom_loop();
    let run = s.boot(Boot {
        cmdline: format!(
            "ovl.rom={} ovl.data=/dev/ovl-no-such-disk ovl.timeout=0.3",
            rom.0
        ),
        action: "touch /etc/x && echo writable",
        ..Boot::default()
    });
    let st = run.status();
    assert_eq!(st["mode"], "tmpfs");
    assert!(st["reason"]
        .as_str()
        .unwrap()
        .starts_with("no writable partition (/dev/ovl-no-such-disk)"));
    assert!(run.action().contains("writable"));
}

#[test]
fn privileged_zeroed_partition_falls_back() {
    let s = Scenario::new();
    let data = s.data("data.img", 8, 0);
    let before = sha(&data);
    expect_fallback(&s, &data, "", None, "holds zeroes, not ext4");
    assert_eq!(
        sha(&data),
        before,
        "a zeroed partition must not be formatted unasked"
    );
}

#[test]
fn privileged_marked_partition_falls_back() {
    let s = Scenario::new();
    let data = s.data("data.img", 8, 0xff);
    sh(&format!(
        "printf '\\336\\255\\300\\336' | dd of={} conv=notrunc status=none",
        data.display()
    ));
    expect_fallback(&s, &data, "", None, "holds marker, not ext4");
}

/// A board whose mkfs is not there: the boot retries with the built-in mkfs and says so.
#[test]
fn privileged_missing_board_mkfs_is_retried_with_the_default() {
    let s = Scenario::new();
    let data = s.data("data.img", 8, 0xff);
    let (rom, d) = (rom_loop(), Loop::new(&data, 0, None));
    let run = s.boot(Boot {
        cmdline: format!("ovl.rom={} ovl.data={} ovl.timeout=0.3", rom.0, d.0),
        board: Some(r#"{"name":"nomkfs","mkfs":"/nonexistent/mkfs.ext4","data_label":"mine"}"#),
        action: "echo kept > /etc/k",
        ..Boot::default()
    });
    let st = run.status();
    assert_eq!(st["mode"], "persistent", "{st}");
    assert_eq!(st["data"]["action"], "format");
    let note = st["notes"][0].as_str().unwrap_or_default();
    assert!(
        note.contains("defaults /usr/sbin/mkfs.ext4") && note.contains("/nonexistent/mkfs.ext4"),
        "{note}"
    );
}

#[test]
fn privileged_malformed_board_falls_back_naming_the_field() {
    let s = Scenario::new();
    let data = s.ext4("data.img", 8);
    expect_fallback(
        &s,
        &data,
        "",
        Some(r#"{"name":"b","modules":[{"name":"a","param":"x"}]}"#),
        "modules[0]: unknown key `param`",
    );
}

#[test]
fn privileged_failsafe_leaves_the_data_untouched() {
    let s = Scenario::new();
    let data = s.ext4("data.img", 16);
    let before = sha(&data);
    let (rom, d) = (rom_loop(), Loop::new(&data, 0, None));
    let run = s.boot(Boot {
        cmdline: format!("ovl.rom={} ovl.data={} ovl.failsafe", rom.0, d.0),
        action: "echo failsafe-write > /etc/f && cat /etc/f",
        ..Boot::default()
    });
    let st = run.status();
    assert_eq!(st["mode"], "failsafe");
    assert_eq!(st["reason"], "failsafe requested");
    assert_eq!(st["data"]["device"], Value::Null);
    assert!(run.action().contains("failsafe-write"));
    drop(d);
    assert_eq!(sha(&data), before, "failsafe changed the data partition");
}

#[test]
fn privileged_volatile_boot_keeps_nothing() {
    let s = Scenario::new();
    let data = s.ext4("data.img", 16);
    let (rom, d) = (rom_loop(), Loop::new(&data, 0, None));
    let cmdline = format!("ovl.rom={} ovl.data={}", rom.0, d.0);
    let run = s.boot(Boot {
        cmdline: format!("{cmdline} ovl.volatile"),
        action: "echo gone > /etc/volatile",
        ..Boot::default()
    });
    assert_eq!(run.status()["mode"], "tmpfs");
    assert_eq!(run.status()["reason"], "volatile overlay requested");
    let next = s.boot(Boot {
        cmdline,
        action: "ls /etc",
        ..Boot::default()
    });
    assert_eq!(next.status()["mode"], "persistent");
    assert!(!next.action().contains("volatile"));
}

#[test]
fn privileged_rootfs_boot_pivots_and_keeps_the_rom_at_rom() {
    let s = Scenario::new();
    let data = s.ext4("data.img", 16);
    let (rom, d) = (rom_loop(), Loop::new(&data, 0, None));
    let first = s.boot(Boot {
        cmdline: format!("root={} ovl.data={}", rom.0, d.0),
        rootfs_dev: Some(rom.0.clone()),
        action: "echo pivoted > /etc/p; ls /rom/etc",
        ..Boot::default()
    });
    let st = first.status();
    assert_eq!(st["mode"], "persistent", "{st}\n{}", first.stderr);
    assert_eq!(st["boot"], "rootfs");
    assert_eq!(
        first.mount("/").unwrap(),
        ("overlay".to_string(), "ovl:persistent".to_string())
    );
    assert_eq!(first.mount("/rom").unwrap().0, "squashfs");
    assert!(first.action().contains("rom-file"));
    let second = s.boot(Boot {
        cmdline: format!("root={} ovl.data={}", rom.0, d.0),
        rootfs_dev: Some(rom.0.clone()),
        action: "cat /etc/p",
        ..Boot::default()
    });
    assert!(second.action().contains("pivoted"));
}

/// A full upper: persistent when the overlay still mounts read-write and takes a new file
/// (status then warns, and deleting a file makes room), otherwise tmpfs with "full" in the
/// reason. Either way the root can be written.
fn full_upper_still_boots_writable(s: &Scenario, data: &Path, fill: &str) {
    let (rom, d) = (rom_loop(), Loop::new(data, 0, None));
    let cmdline = format!("ovl.rom={} ovl.data={} ovl.timeout=0.3", rom.0, d.0);
    // The fill runs before the first boot completes: completing it must need no new inode.
    let first = s.boot(Boot {
        cmdline: cmdline.clone(),
        action: fill,
        ..Boot::default()
    });
    assert_eq!(first.status()["mode"], "persistent");
    let full = s.boot(Boot {
        cmdline,
        action: "rm -f /root/fill /root/small1 /root/f1; mkdir -p /root; echo after-full > /root/t && cat /root/t; ls /",
        ..Boot::default()
    });
    let st = full.status();
    eprintln!(
        "full upper: mode {} reason {} upper {}",
        st["mode"], st["reason"], st["upper"]
    );
    match st["mode"].as_str() {
        Some("persistent") => assert_eq!(st["upper"]["low_space"], true, "no warning: {st}"),
        Some("tmpfs") => {
            let reason = st["reason"].as_str().unwrap_or_default();
            assert!(
                reason.contains("full"),
                "reason `{reason}` does not say full"
            );
        }
        _ => panic!("neither persistent nor tmpfs: {st}\n{}", full.stderr),
    }
    assert_eq!(st["root"]["read_only"], false, "{st}");
    assert!(
        full.action().contains("after-full"),
        "the root is not writable on a full upper: {st}\n{}",
        full.stdout
    );
    assert!(
        !full.action().contains(".ovl-write-probe"),
        "the probe file stayed"
    );
}

#[test]
fn privileged_ext4_full_to_the_last_block_still_gives_a_writable_root() {
    let s = Scenario::new();
    let data = s.ext4("data.img", 16);
    full_upper_still_boots_writable(
        &s,
        &data,
        "mkdir -p /root; dd if=/dev/zero of=/root/fill bs=64k 2>/dev/null; i=0; \
         while echo x > /root/small$i 2>/dev/null; do i=$((i+1)); done; sync; df /overlay",
    );
}

#[test]
fn privileged_ext4_without_free_inodes_still_gives_a_writable_root() {
    let s = Scenario::new();
    let data = s.data("data.img", 16, 0);
    sh(&format!(
        "mkfs.ext4 -F -q -N 64 -L rootfs_data {}",
        data.display()
    ));
    full_upper_still_boots_writable(
        &s,
        &data,
        "mkdir -p /root; i=0; while touch /root/f$i 2>/dev/null; do i=$((i+1)); done; \
         while mkdir /root/d$i 2>/dev/null; do i=$((i+1)); done; sync; df -i /overlay",
    );
}

#[test]
fn privileged_no_rom_says_so_and_stays_inside_the_target() {
    let s = Scenario::new();
    let target = s.path("target");
    std::fs::create_dir_all(&target).unwrap();
    let cmdline = s.path("cmdline");
    std::fs::write(&cmdline, "ovl.rom=/dev/ovl-no-rom ovl.timeout=0.1").unwrap();
    let script = format!(
        "mount -t tmpfs -o size=16m test-initramfs {t} && \
         {OVL} preinit --target {t} --cmdline-file {c}; echo EXIT=$?; cat {t}/run/ovl/state.json",
        t = target.display(),
        c = cmdline.display()
    );
    let out = in_namespace(&script).output().expect("run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("EXIT=3"), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("FATAL: no ROM could be mounted"),
        "one clear line: {stderr}"
    );
    let json = stdout.lines().find(|l| l.starts_with('{')).unwrap_or("{}");
    let st: Value = serde_json::from_str(json).unwrap();
    assert_eq!(st["mode"], "none", "the state must not claim a ROM: {st}");
    // Scenario's drop checks that nothing outside the target changed.
}

#[test]
fn privileged_preinit_by_hand_without_a_target_refuses() {
    let s = Scenario::new();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", OVL, "preinit"])
        .output()
        .expect("run unshare");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("refusing to run: not PID 1"), "{stderr}");
    drop(s);
}

/// Blank means blank over the first MiB: 0xFF for 4 KiB and another file system's superblock
/// further in (btrfs keeps its at 64 KiB) is not formatted, and neither is a stray byte.
#[test]
fn privileged_blank_head_with_a_superblock_further_in_is_left_untouched() {
    let s = Scenario::new();
    let data = s.data("data.img", 8, 0xff);
    sh(&format!(
        "printf '_BHRfS_M' | dd of={} bs=1 seek={} conv=notrunc status=none",
        data.display(),
        0x10040
    ));
    expect_fallback(&s, &data, "", None, "holds btrfs, not ext4; left untouched");
    let stray = s.data("stray.img", 8, 0xff);
    sh(&format!(
        "printf 'x' | dd of={} bs=1 seek={} conv=notrunc status=none",
        stray.display(),
        (1 << 20) - 1
    ));
    expect_fallback(
        &s,
        &stray,
        "",
        None,
        "holds unknown, not ext4; left untouched",
    );
}

/// Plants what a factory reset must get rid of, and what it must not touch.
const PLANT: &str = r#"
mkdir -p /root/.ssh && echo key > /root/.ssh/authorized_keys
echo dot > /root/.profile
printf x > "/root/with space"; printf x > "/root/new
line"; printf x > /root/-rf; mkdir /root/--dir
printf x > /root/$(printf '%0255d' 0)
d=/root/deep; i=0; while [ $i -lt 60 ]; do d=$d/$i; i=$((i+1)); done; mkdir -p $d && echo bottom > $d/f
rm /etc/rom-file; rm -r /etc/rom-dir; mkdir /etc/rom-dir; echo opaque > /etc/rom-dir/new
mkdir -p /run/outside && echo keep > /run/outside/keep && ln -s /run/outside /root/link-out
ln -s /run/outside/keep /root/file-link-out
mkdir -p /run/bindsrc && echo bound > /run/bindsrc/f && mkdir /root/bindmnt
mount --bind /run/bindsrc /overlay/upper/root/bindmnt
"#;

#[test]
fn privileged_reset_of_a_mounted_overlay_empties_the_upper_and_nothing_else() {
    let s = Scenario::new();
    let data = s.ext4("data.img", 32);
    let (rom, d) = (rom_loop(), Loop::new(&data, 0, None));
    let cmdline = format!("ovl.rom={} ovl.data={}", rom.0, d.0);
    // The first boot: pending until `ovlctl firstboot` completes it. A failing script stays.
    let first = s.boot(Boot {
        cmdline: cmdline.clone(),
        action: "mkdir -p /etc/firstboot.d && echo 'echo ran-ok; exit 0' > /etc/firstboot.d/10-ok \
                 && echo 'echo broken >&2; exit 3' > /etc/firstboot.d/20-fails \
                 && ovlctl firstboot; echo FB-EXIT:$?; ls /etc/firstboot.d; ovlctl status --json",
        ..Boot::default()
    });
    assert_eq!(first.status()["first_boot"]["state"], "pending");
    assert_eq!(first.status()["first_boot"]["cleared_at_boot"], "pending");
    let a = first.action();
    assert!(
        a.contains("10-ok: ran-ok") && a.contains("20-fails: broken"),
        "{a}"
    );
    assert!(
        a.contains("FB-EXIT:1") && a.contains("20-fails") && !a.contains("\n10-ok\n"),
        "{a}"
    );
    assert!(a.contains(r#""first_boot":{"state":"ready""#), "{a}");

    let second = s.boot(Boot {
        cmdline: cmdline.clone(),
        action: &format!(
            "{PLANT}\nls -A /overlay/upper/root | wc -l; ovlctl reset 2>&1 </dev/null; echo NOTTY-EXIT:$?; \
             ovlctl reset -y; echo RESET-EXIT:$?; echo UPPER:; ls -A /overlay/upper; ls -A /overlay/upper/root; \
             echo KEEP:; cat /run/outside/keep /run/bindsrc/f; echo ROMFILE:; cat /etc/rom-file; ls /etc/rom-dir; \
             umount /overlay/upper/root/bindmnt; ovlctl status --json; touch /run/no-firstboot"
        ),
        ..Boot::default()
    });
    let st = second.status();
    assert_eq!(st["first_boot"]["state"], "ready", "{st}");
    assert_eq!(st["first_boot"]["cleared_at_boot"], Value::Null, "{st}");
    let a = second.action();
    assert!(a.contains("refusing to guess"), "{a}\n{}", second.stderr);
    assert!(
        a.contains("NOTTY-EXIT:2") && a.contains("RESET-EXIT:0"),
        "{a}"
    );
    let upper = a
        .split("UPPER:")
        .nth(1)
        .unwrap()
        .split("KEEP:")
        .next()
        .unwrap();
    // Only the mount point is left (and the directory that holds it).
    assert_eq!(
        upper.split_whitespace().collect::<Vec<_>>(),
        ["root", "bindmnt"],
        "{a}"
    );
    assert!(
        a.contains("keep\nbound"),
        "something outside the upper was touched: {a}"
    );
    // Deleted from the ROM before the reset: back at once, the opaque directory too.
    let rom = a.split("ROMFILE:").nth(1).unwrap();
    assert!(
        rom.contains("from the rom") && rom.contains("inner") && !rom.contains("new"),
        "{a}"
    );
    assert!(a.contains("mount points inside were left alone"), "{a}");
    assert!(a.contains(r#""first_boot":{"state":"pending""#), "{a}");

    let third = s.boot(Boot {
        cmdline,
        action: "ls -A /root; cat /etc/rom-file; ls /etc/firstboot.d 2>&1",
        ..Boot::default()
    });
    let st = third.status();
    assert_eq!(st["first_boot"]["cleared_at_boot"], "pending", "{st}");
    let a = third.action();
    assert!(!a.contains(".ssh") && !a.contains(".profile"), "{a}");
    assert!(a.contains("from the rom"), "{a}");
}

#[test]
fn privileged_reset_from_failsafe_marks_ext4_and_the_next_boot_formats_it() {
    let s = Scenario::new();
    let data = s.ext4("data.img", 32);
    let (rom, d) = (rom_loop(), Loop::new(&data, 0, None));
    let cmdline = format!("ovl.rom={} ovl.data={}", rom.0, d.0);
    s.boot(Boot {
        cmdline: cmdline.clone(),
        action: "echo old > /etc/old; ovlctl firstboot",
        ..Boot::default()
    });
    let fs = s.boot(Boot {
        cmdline: format!("{cmdline} ovl.failsafe"),
        action: &format!(
            "echo tmp > /etc/tmp-file; ovlctl reset -y --data {}; echo RESET-EXIT:$?; ls /etc; ovlctl status",
            d.0
        ),
        ..Boot::default()
    });
    let a = fs.action();
    assert!(a.contains("RESET-EXIT:0"), "{a}\n{}", fs.stderr);
    assert!(
        a.contains("is marked for reset: the next boot formats it"),
        "{a}"
    );
    assert!(
        !a.contains("tmp-file"),
        "the tmpfs upper was not emptied: {a}"
    );
    let head = std::fs::read(&data).unwrap();
    assert_eq!(&head[..16], b"\xde\xad\xc0\xdeovl-reset\0\0\0");
    let next = s.boot(Boot {
        cmdline: cmdline.clone(),
        action: "cat /etc/old 2>&1",
        ..Boot::default()
    });
    let st = next.status();
    assert_eq!(st["mode"], "persistent", "{st}");
    assert_eq!(st["data"]["content"], "reset-mark", "{st}");
    assert_eq!(st["data"]["action"], "format", "{st}");
    assert!(!next.action().contains("old\n"), "{}", next.action());
    // Formatted once: the mark is gone and later boots mount and keep what they wrote.
    assert_ne!(
        &std::fs::read(&data).unwrap()[..16],
        b"\xde\xad\xc0\xdeovl-reset\0\0\0"
    );
    let after = s.boot(Boot {
        cmdline: cmdline.clone(),
        action: "echo kept > /etc/kept",
        ..Boot::default()
    });
    assert_eq!(
        after.status()["data"]["action"],
        "mount",
        "{}",
        after.stdout
    );
    let last = s.boot(Boot {
        cmdline,
        action: "cat /etc/kept",
        ..Boot::default()
    });
    assert_eq!(last.status()["data"]["action"], "mount", "{}", last.stdout);
    assert!(last.action().contains("kept"), "{}", last.action());
}

#[test]
fn privileged_reset_refuses_a_partition_ovl_did_not_write() {
    let s = Scenario::new();
    let mut junk = vec![0x5au8; 8 << 20];
    junk[..4].copy_from_slice(b"JUNK");
    let data = s.path("junk.img");
    std::fs::write(&data, &junk).unwrap();
    let (rom, d) = (rom_loop(), Loop::new(&data, 0, None));
    let run = s.boot(Boot {
        cmdline: format!("ovl.rom={} ovl.data={}", rom.0, d.0),
        action: "ovlctl reset -y; echo RESET-EXIT:$?",
        ..Boot::default()
    });
    let a = run.action();
    assert!(
        a.contains("cannot be reset") && a.contains("which ovl did not write"),
        "{a}"
    );
    assert!(
        std::fs::read(&data).unwrap() == junk,
        "a foreign partition was written"
    );
}

#[test]
fn privileged_command_line_reset_is_done_once() {
    let s = Scenario::new();
    let data = s.ext4("data.img", 32);
    let (rom, d) = (rom_loop(), Loop::new(&data, 0, None));
    let base = format!("ovl.rom={} ovl.data={}", rom.0, d.0);
    s.boot(Boot {
        cmdline: base.clone(),
        action: "echo before > /etc/before; ovlctl firstboot",
        ..Boot::default()
    });
    let r = s.boot(Boot {
        cmdline: format!("{base} rd.overlay.reset"),
        action: "cat /etc/before 2>&1; echo after > /etc/after; ovlctl firstboot",
        ..Boot::default()
    });
    assert_eq!(r.status()["first_boot"]["cleared_at_boot"], "reset");
    assert!(!r.action().contains("before\n"), "{}", r.action());
    // The switch is still there: nothing more is reset.
    let again = s.boot(Boot {
        cmdline: format!("{base} rd.overlay.reset"),
        action: "cat /etc/after",
        ..Boot::default()
    });
    assert_eq!(again.status()["first_boot"]["cleared_at_boot"], Value::Null);
    assert!(again.action().contains("after"), "{}", again.action());
}

#[test]
fn privileged_an_overlay_made_for_another_rom_is_reset_or_kept() {
    let s = Scenario::new();
    let data = s.ext4("data.img", 32);
    // Another ROM: the same tree with one more file.
    let tree = s.path("rom2");
    sh(&format!(
        "unsquashfs -q -d {} {} >/dev/null",
        tree.display(),
        rom_image().display()
    ));
    std::fs::write(tree.join("etc/version"), "2\n").unwrap();
    let rom2_img = s.path("rom2.sqfs");
    sh(&format!(
        "mksquashfs {} {} -noappend -quiet -comp gzip -all-root >/dev/null",
        tree.display(),
        rom2_img.display()
    ));
    let d = Loop::new(&data, 0, None);
    let (rom1, rom2) = (rom_loop(), Loop::new(&rom2_img, 0, None));
    let boot = |rom: &Loop, board: Option<&'static str>, action: &'static str| {
        s.boot(Boot {
            cmdline: format!("ovl.rom={} ovl.data={}", rom.0, d.0),
            board,
            action,
            ..Boot::default()
        })
    };
    boot(&rom1, None, "echo one > /etc/mine; ovlctl firstboot");
    let keep = Some(r#"{"name":"t","stale_overlay":"keep"}"#);
    let kept = boot(&rom2, keep, "cat /etc/mine; ovlctl firstboot");
    let st = kept.status();
    assert_eq!(st["first_boot"]["cleared_at_boot"], Value::Null, "{st}");
    assert!(
        st["first_boot"]["stale_from"]
            .as_str()
            .unwrap()
            .starts_with("sqfs-"),
        "{st}"
    );
    assert!(kept.action().contains("one"));
    let reset = boot(&rom1, None, "cat /etc/mine 2>&1; cat /etc/version 2>&1");
    let st = reset.status();
    assert_eq!(st["first_boot"]["cleared_at_boot"], "stale", "{st}");
    assert_ne!(st["first_boot"]["stale_from"], st["rom"]["id"], "{st}");
    assert!(
        st["notes"].to_string().contains("made for another ROM"),
        "{st}"
    );
    assert!(!reset.action().contains("one"), "{}", reset.action());
}

/// A restore cut on the device (here: stopped at a chosen step) is finished or rolled back by
/// the next preinit before init runs, and the boot says which.
#[test]
fn privileged_a_cut_restore_is_finished_or_rolled_back_by_the_next_boot() {
    let s = Scenario::new();
    let data = s.ext4("data.img", 32);
    let (rom, d) = (rom_loop(), Loop::new(&data, 0, None));
    let cmdline = format!("ovl.rom={} ovl.data={}", rom.0, d.0);
    // Steps: 1 journal made, 2-3 the two members staged, 4 before and 5 after the commit,
    // 6 the first rename.
    for (cut_at, want, note) in [("2", "old", "rolled back"), ("6", "new", "finished")] {
        let action = format!(
            "mkdir -p /etc/config; echo new > /etc/config/net; \
             echo /etc/config > /etc/sysupgrade.conf; ovlctl backup -o /etc/b.tgz 2>&1; \
             echo old > /etc/config/net; OVL_TEST_CUT_AT={cut_at} ovlctl restore /etc/b.tgz 2>&1; \
             echo restore-exit=$?; ls -a /; ovlctl firstboot"
        );
        let cut = s.boot(Boot {
            cmdline: cmdline.clone(),
            action: &action,
            ..Boot::default()
        });
        assert!(cut.action().contains("restore-exit=99"), "{}", cut.action());
        assert!(cut.action().contains(".ovl-restore"), "{}", cut.action());
        let next = s.boot(Boot {
            cmdline: cmdline.clone(),
            action: "cat /etc/config/net; ls -a /",
            ..Boot::default()
        });
        let st = next.status();
        assert!(st["notes"].to_string().contains(note), "{st}");
        assert!(next.action().starts_with(want), "{}", next.action());
        assert!(!next.action().contains(".ovl-restore"), "{}", next.action());
    }
}
