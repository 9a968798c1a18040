//! Emulated boards: real kernels, real MTD flash and JFFS2, real GPT disks, booted under QEMU
//! (qemu-arm/boot.sh) and driven over the serial console with bounded waits. A guest that
//! hangs is killed and the test fails with the tail of its console log.
//!
//! The images must be built first (`qemu-arm/build.sh`, which `./test.sh` runs); without them
//! these tests fail and say so.

use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NOR: &str = "qemu-aarch64-nor";
const ARMV7_NOR: &str = "qemu-armv7-nor";
const DISK: &str = "qemu-x86_64-disk";
const COMBINED: &str = "qemu-x86_64-combined";
const MIB: u64 = 1 << 20;
/// Where rootfs_data starts in the NOR bank (both NOR boards) and on the GPT disk (see
/// qemu-arm/boards.sh).
const NOR_DATA: u64 = 16 * MIB;
const NOR_DATA_LEN: u64 = 48 * MIB;
const NOR_BLOCK: u64 = 256 * 1024;
const MARKER: [u8; 4] = [0xde, 0xad, 0xc0, 0xde];
const DISK_DATA: u64 = 33 * MIB;
const DISK_DATA_LEN: u64 = 64 * MIB;

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const CMD_TIMEOUT: Duration = Duration::from_secs(120);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cache() -> PathBuf {
    std::env::var_os("OVL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".cache"))
}

fn pristine(board: &str) -> PathBuf {
    let p = cache().join("images").join(board).join("storage.img");
    assert!(
        p.exists() && nix::unistd::geteuid().is_root(),
        "board {board} is not built ({} missing) or not root: run qemu-arm/build.sh {board} as root (./test.sh does)",
        p.display()
    );
    p
}

/// A scenario's own copy of a board's storage, with helpers to look at it from the host.
struct Storage {
    _dir: tempfile::TempDir,
    path: PathBuf,
    board: &'static str,
    log_dir: PathBuf,
}

impl Storage {
    fn new(board: &'static str, name: &str) -> Storage {
        let src = pristine(board);
        let dir = tempfile::Builder::new()
            .prefix("ovl-board")
            .tempdir()
            .unwrap();
        let path = dir.path().join("storage.img");
        std::fs::copy(&src, &path).unwrap();
        let log_dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("boards")
            .join(name);
        std::fs::create_dir_all(&log_dir).unwrap();
        Storage {
            _dir: dir,
            path,
            board,
            log_dir,
        }
    }

    fn read(&self, off: u64, len: u64) -> Vec<u8> {
        let mut f = std::fs::File::open(&self.path).unwrap();
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(off)).unwrap();
        let mut buf = vec![0; len as usize];
        f.read_exact(&mut buf).unwrap();
        buf
    }

    fn write(&self, off: u64, bytes: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .unwrap();
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(off)).unwrap();
        f.write_all(bytes).unwrap();
        f.sync_all().unwrap();
    }

    fn boot(&self, n: u32, args: &[&str]) -> Guest {
        Guest::boot(self, n, args)
    }

    /// The whole rootfs_data region of a NOR board.
    fn nor_data(&self) -> Vec<u8> {
        self.read(NOR_DATA, NOR_DATA_LEN)
    }
}

fn random(len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut v)
        .unwrap();
    v
}

/// A running board, its console captured to memory and to a log file.
struct Guest {
    child: Child,
    stdin: ChildStdin,
    out: Arc<Mutex<Vec<u8>>>,
    /// Where the next wait starts looking.
    cursor: usize,
    seq: u32,
    log: PathBuf,
}

impl Guest {
    fn boot(st: &Storage, n: u32, args: &[&str]) -> Guest {
        let mut g = Guest::start(st, n, args);
        g.wait_for("ovl-rom: shell on the console", BOOT_TIMEOUT);
        // The prompt, then quiet the kernel's console messages so they do not cut our output.
        g.wait_for("ovl:", CMD_TIMEOUT);
        g.run("dmesg -n 1");
        g
    }

    /// Starts QEMU and returns at once, before the guest has printed anything.
    fn start(st: &Storage, n: u32, args: &[&str]) -> Guest {
        let log = st.log_dir.join(format!("boot{n}.log"));
        let mut child = Command::new(repo().join("qemu-arm/boot.sh"))
            .arg(st.board)
            .arg("--storage")
            .arg(&st.path)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start qemu-arm/boot.sh");
        // One log per boot: an earlier run's log of the same name is replaced.
        let _ = std::fs::File::create(&log);
        let out = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = out.clone();
            let mut logf = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap();
            std::thread::spawn(move || {
                let mut pipe = pipe;
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let _ = logf.write_all(&buf[..n]);
                    out.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
        let stdin = child.stdin.take().unwrap();
        Guest {
            child,
            stdin,
            out,
            cursor: 0,
            seq: 0,
            log,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    fn fail(&mut self, why: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let text = self.text();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "{why}\n--- last console lines ({}):\n{}",
            self.log.display(),
            tail.join("\n")
        );
    }

    /// Waits for `pat` after the cursor; returns the text up to and including it.
    fn wait_for(&mut self, pat: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            {
                let text = self.text();
                if let Some(i) = text.get(self.cursor..).and_then(|t| t.find(pat)) {
                    let end = self.cursor + i + pat.len();
                    let got = text[self.cursor..end].to_string();
                    self.cursor = end;
                    return got;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.fail(&format!("QEMU exited ({status}) while waiting for `{pat}`"));
            }
            if start.elapsed() > timeout {
                self.fail(&format!("no `{pat}` within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Like [`Guest::wait_for`], polling every millisecond: for cuts timed from a message.
    fn wait_for_soon(&mut self, pat: &str, timeout: Duration) {
        let start = Instant::now();
        while !self
            .text()
            .get(self.cursor..)
            .is_some_and(|t| t.contains(pat))
        {
            if start.elapsed() > timeout {
                self.fail(&format!("no `{pat}` within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn send(&mut self, line: &str) {
        if self
            .stdin
            .write_all(format!("{line}\n").as_bytes())
            .is_err()
        {
            self.fail(&format!("console closed while sending `{line}`"));
        }
    }

    /// Runs a shell command; returns (exit status, output). The marker is typed with quotes so
    /// that the console's echo of the command does not look like the marker itself.
    fn sh(&mut self, cmd: &str) -> (i32, String) {
        self.seq += 1;
        let n = self.seq;
        self.send(&format!("{cmd}; echo DO''NE{n}=$?=E"));
        let got = self.wait_for(&format!("DONE{n}="), CMD_TIMEOUT);
        let code_text = self.wait_for("=E", CMD_TIMEOUT);
        let code = code_text
            .trim_end_matches("=E")
            .trim()
            .parse()
            .unwrap_or(-1);
        (code, got)
    }

    /// Runs a command that must succeed.
    fn run(&mut self, cmd: &str) -> String {
        let (code, out) = self.sh(cmd);
        if code != 0 {
            self.fail(&format!("`{cmd}` exited {code}:\n{out}"));
        }
        out
    }

    fn status(&mut self) -> Value {
        let out = self.sh("ovlctl status --json").1;
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with("{\"mode\""))
            .map(str::to_string);
        match line.and_then(|l| serde_json::from_str(l.trim()).ok()) {
            Some(v) => v,
            None => self.fail(&format!("no status JSON in:\n{out}")),
        }
    }

    /// A clean power-off: sync, then `poweroff -f`; QEMU exits (-no-reboot).
    fn poweroff(mut self) {
        self.send("sync; poweroff -f");
        self.wait_exit();
    }

    /// Pulls the plug: QEMU is killed with no warning to the guest.
    fn power_cut(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn wait_exit(&mut self) {
        let start = Instant::now();
        while start.elapsed() < CMD_TIMEOUT {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.fail("the board did not power off");
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn assert_persistent(st: &Value, fstype: &str, action: &str) {
    assert_eq!(st["mode"], "persistent", "{st}");
    assert_eq!(st["data"]["fstype"], fstype, "{st}");
    assert_eq!(st["data"]["action"], action, "{st}");
    assert_eq!(st["upper"]["fstype"], fstype, "{st}");
    assert_eq!(st["root"]["source"], "ovl:persistent", "{st}");
}

fn assert_tmpfs(g: &mut Guest, mode: &str, why: &str) -> Value {
    let st = g.status();
    assert_eq!(st["mode"], mode, "{st}");
    let reason = st["reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains(why), "reason `{reason}` lacks `{why}`");
    assert_eq!(st["upper"]["fstype"], "tmpfs", "{st}");
    assert_eq!(st["root"]["read_only"], false);
    // Writable all the same.
    g.run("echo scratch > /etc/scratch && cat /etc/scratch");
    st
}

// ---- the NOR router: JFFS2 on CFI flash (aarch64, and the same layout on armv7) ----

#[test]
fn nor_first_boot_persists_and_whiteouts_survive() {
    nor_persists_and_whiteouts_survive(NOR);
}

#[test]
fn nor_corrupt_data_boots_on_tmpfs_and_the_rom_is_intact() {
    nor_corrupt_data_boots_on_tmpfs(NOR);
}

#[test]
fn nor_missing_data_partition_boots_on_tmpfs() {
    nor_missing_data_partition(NOR);
}

#[test]
fn nor_failsafe_leaves_the_flash_byte_identical() {
    nor_failsafe_leaves_the_flash_alone(NOR);
}

#[test]
fn nor_marker_is_erased_through_the_mtd_layer() {
    nor_marker_is_erased(NOR);
}

#[test]
fn nor_foreign_blocks_among_jffs2_are_left_untouched() {
    let s = Storage::new(NOR, "nor-foreign");
    let mut g = s.boot(1, &[]);
    g.run("echo mine > /etc/mine && sync");
    g.poweroff();
    // Four blocks in the middle of a JFFS2 that has been mounted (so every block holds at
    // least a clean marker) overwritten by someone else: mounting would erase them.
    for b in 90..94 {
        s.write(NOR_DATA + b * NOR_BLOCK, &random(NOR_BLOCK as usize));
    }
    let before = s.nor_data();
    let mut g = s.boot(2, &[]);
    assert_tmpfs(&mut g, "tmpfs", "holds unknown, not jffs2; left untouched");
    let (code, _) = g.sh("test -e /etc/mine");
    assert_ne!(code, 0, "a tmpfs boot showed the partition's files");
    g.poweroff();
    assert!(s.nor_data() == before, "rootfs_data changed");
}

#[test]
fn nor_power_cut_during_the_marker_erase_never_brings_back_old_files() {
    nor_erase_cut(NOR);
}

#[test]
fn nor_power_cut_during_heavy_writes_and_gc_stays_persistent() {
    nor_gc_cut(NOR);
}

#[test]
fn nor_power_cut_after_sync_keeps_the_data() {
    power_cut_after_sync(NOR, "jffs2", &log_name(NOR, "cut"));
}

#[test]
fn nor_power_cut_during_writes_keeps_what_was_synced() {
    power_cut_during_writes(NOR, "jffs2", &log_name(NOR, "cut-stream"));
}

#[test]
fn nor_jffs2_upper_what_works_and_what_does_not() {
    nor_jffs2_upper_semantics(NOR);
}

#[test]
fn armv7_first_boot_persists_and_whiteouts_survive() {
    nor_persists_and_whiteouts_survive(ARMV7_NOR);
}

#[test]
fn armv7_corrupt_data_boots_on_tmpfs_and_the_rom_is_intact() {
    nor_corrupt_data_boots_on_tmpfs(ARMV7_NOR);
}

#[test]
fn armv7_missing_data_partition_boots_on_tmpfs() {
    nor_missing_data_partition(ARMV7_NOR);
}

#[test]
fn armv7_failsafe_leaves_the_flash_byte_identical() {
    nor_failsafe_leaves_the_flash_alone(ARMV7_NOR);
}

#[test]
fn armv7_marker_is_erased_through_the_mtd_layer() {
    nor_marker_is_erased(ARMV7_NOR);
}

#[test]
fn armv7_power_cut_after_sync_keeps_the_data() {
    power_cut_after_sync(ARMV7_NOR, "jffs2", &log_name(ARMV7_NOR, "cut"));
}

#[test]
fn armv7_power_cut_during_writes_keeps_what_was_synced() {
    power_cut_during_writes(ARMV7_NOR, "jffs2", &log_name(ARMV7_NOR, "cut-stream"));
}

#[test]
fn armv7_jffs2_upper_what_works_and_what_does_not() {
    nor_jffs2_upper_semantics(ARMV7_NOR);
}

/// A scenario's log directory: `nor-...` for the aarch64 router, `armv7-...` for the armv7 one.
fn log_name(board: &str, what: &str) -> String {
    let tag = match board {
        NOR => "nor",
        ARMV7_NOR => "armv7",
        other => other,
    };
    format!("{tag}-{what}")
}

fn nor_persists_and_whiteouts_survive(board: &'static str) {
    let s = Storage::new(board, &log_name(board, "persist"));
    let mut g = s.boot(1, &[]);
    let st = g.status();
    assert_persistent(&st, "jffs2", "mount");
    assert_eq!(st["data"]["content"], "erased");
    assert!(st["data"]["device"]
        .as_str()
        .unwrap()
        .starts_with("/dev/mtdblock"));
    assert!(g.run("cat /proc/mtd").contains("\"rootfs_data\""));
    g.run("echo first-boot > /etc/hello && rm /etc/banner && mkdir -p /root/dir && echo x > /root/dir/f");
    g.poweroff();

    let mut g = s.boot(2, &[]);
    let st = g.status();
    assert_persistent(&st, "jffs2", "mount");
    assert_eq!(st["data"]["content"], "jffs2");
    assert!(g.run("cat /etc/hello").contains("first-boot"));
    assert!(g.run("cat /root/dir/f").contains('x'));
    let (code, _) = g.sh("test -e /etc/banner");
    assert_ne!(code, 0, "the ROM file deleted in the first boot came back");
    assert!(
        g.run("cat /rom/etc/banner").contains("ovl"),
        "the ROM lost its copy"
    );
    g.poweroff();
}

fn nor_corrupt_data_boots_on_tmpfs(board: &'static str) {
    let s = Storage::new(board, &log_name(board, "corrupt"));
    let rom_before = s.read(0, NOR_DATA);
    s.write(NOR_DATA, &random(512 * 1024));
    let data_before = s.nor_data();
    let mut g = s.boot(1, &[]);
    assert_tmpfs(&mut g, "tmpfs", "holds unknown, not jffs2; left untouched");
    g.poweroff();
    assert_eq!(s.read(0, NOR_DATA), rom_before, "the ROM region changed");
    assert!(s.nor_data() == data_before, "rootfs_data changed");
}

fn nor_missing_data_partition(board: &'static str) {
    let s = Storage::new(board, &log_name(board, "missing"));
    let mut g = s.boot(1, &["--no-data"]);
    assert_tmpfs(&mut g, "tmpfs", "no writable partition (mtd:rootfs_data)");
    g.poweroff();
}

/// The boot code must not crash, but should it (ovl.test.crash=STEP makes a real panic after
/// that step: the device build aborts on an illegal instruction), PID 1 starts preinit again,
/// which boots on tmpfs, says why, and leaves the writable partition alone.
fn crashing_preinit_boots_on_tmpfs(board: &'static str, nor: bool) {
    let s = Storage::new(board, &log_name(board, "crash"));
    let mut g = s.boot(1, &[]);
    g.run("echo before > /etc/before && sync");
    g.poweroff();
    let before = nor.then(|| s.nor_data());
    let mut g = s.boot(2, &["--append", "ovl.test.crash=find"]);
    let st = assert_tmpfs(&mut g, "tmpfs", "preinit crashed in its first attempt");
    let notes = st["notes"].to_string();
    assert!(notes.contains("after step find"), "{st}");
    let (code, _) = g.sh("test -e /etc/before");
    assert_ne!(
        code, 0,
        "the crashed boot showed the writable partition's files"
    );
    let (_, log) = g.sh("dmesg | grep 'preinit: BUG'");
    assert!(log.contains("starting again on tmpfs"), "{log}");
    g.poweroff();
    if let Some(before) = before {
        assert!(
            s.nor_data() == before,
            "the crashed boot changed rootfs_data"
        );
    }
    // A crash later, with the writable partition already mounted: still a writable root.
    let mut g = s.boot(3, &["--append", "ovl.test.crash=upper"]);
    assert_tmpfs(&mut g, "tmpfs", "preinit crashed in its first attempt");
    g.poweroff();
    // With the overlay built, not yet switched into: its files do not show either.
    let mut g = s.boot(4, &["--append", "ovl.test.crash=root"]);
    assert_tmpfs(&mut g, "tmpfs", "preinit crashed in its first attempt");
    let (code, _) = g.sh("test -e /etc/before");
    assert_ne!(
        code, 0,
        "the crash after root showed the writable partition's files"
    );
    g.poweroff();
    // After the switch the tmpfs overlay stacks on the root already built (README, "When
    // preinit itself crashes"): the weaker case, but a writable root all the same.
    let mut g = s.boot(5, &["--append", "ovl.test.crash=switch"]);
    assert_tmpfs(&mut g, "tmpfs", "preinit crashed in its first attempt");
    g.poweroff();
    // And the next normal boot is persistent again, with the files of before.
    let mut g = s.boot(6, &[]);
    assert_eq!(g.status()["mode"], "persistent");
    g.run("grep -q before /etc/before");
    g.poweroff();
}

#[test]
fn nor_a_crashing_preinit_boots_on_tmpfs_and_leaves_the_flash_alone() {
    crashing_preinit_boots_on_tmpfs(NOR, true);
}

#[test]
fn armv7_a_crashing_preinit_boots_on_tmpfs_and_leaves_the_flash_alone() {
    crashing_preinit_boots_on_tmpfs(ARMV7_NOR, true);
}

#[test]
fn disk_a_crashing_preinit_boots_on_tmpfs() {
    crashing_preinit_boots_on_tmpfs(DISK, false);
}

fn nor_failsafe_leaves_the_flash_alone(board: &'static str) {
    let s = Storage::new(board, &log_name(board, "failsafe"));
    let mut g = s.boot(1, &[]);
    g.run("echo before > /etc/before");
    g.poweroff();
    let data_before = s.nor_data();
    let mut g = s.boot(2, &["--append", "ovl.failsafe"]);
    assert_tmpfs(&mut g, "failsafe", "failsafe requested");
    let (code, _) = g.sh("test -e /etc/before");
    assert_ne!(code, 0, "failsafe showed the writable partition's files");
    g.run("echo during-failsafe > /etc/during");
    g.poweroff();
    assert!(s.nor_data() == data_before, "failsafe changed rootfs_data");
}

fn nor_marker_is_erased(board: &'static str) {
    let s = Storage::new(board, &log_name(board, "marker"));
    let mut g = s.boot(1, &[]);
    g.run("echo old > /etc/old");
    g.poweroff();
    // A factory reset of an unmounted JFFS2 writes the marker; old nodes follow it.
    s.write(NOR_DATA, &[0xde, 0xad, 0xc0, 0xde]);
    let mut g = s.boot(2, &[]);
    let st = g.status();
    assert_persistent(&st, "jffs2", "erase");
    assert_eq!(st["data"]["content"], "marker");
    let (code, _) = g.sh("test -e /etc/old");
    assert_ne!(code, 0, "files from before the marker survived the erase");
    g.run("echo new > /etc/new");
    g.poweroff();
    let mut g = s.boot(3, &[]);
    assert_persistent(&g.status(), "jffs2", "mount");
    assert!(g.run("cat /etc/new").contains("new"));
    g.poweroff();
}

/// xorshift64: seeded, so a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Seeds from `OVL_SEED` (to repeat a run), else from the clock; printed either way.
fn seed() -> u64 {
    std::env::var("OVL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

/// The marker's erase cut by a power cut at random points: the erase goes block 0 (the marker)
/// last, so the next boot finds the marker and erases again, or finds everything erased.
/// Either way the files from before the marker never come back and the boot is persistent.
fn nor_erase_cut(board: &'static str) {
    let s = Storage::new(board, &log_name(board, "erase-cut"));
    let mut g = s.boot(1, &[]);
    g.run("echo old > /etc/old && rm /etc/banner && mkdir -p /root/old && echo x > /root/old/f");
    g.run("dd if=/dev/urandom of=/root/old/big bs=64k count=64 2>/dev/null && sync");
    g.poweroff();
    s.write(NOR_DATA, &MARKER);
    let marked = std::fs::read(&s.path).unwrap();
    let base = seed();
    // The erase takes about 0.6 s on this board under TCG ("erasing" to "erased" on the
    // console); the cuts are spread over 0-800 ms after "erasing" shows.
    for (n, seed) in (base..base + 3).enumerate() {
        let mut rng = Rng(seed);
        let delay = Duration::from_millis(rng.next() % 800);
        println!("erase cut: seed {seed}, cut {delay:?} after `erasing`");
        std::fs::write(&s.path, &marked).unwrap();
        let boot = 2 + 2 * n as u32;
        let mut g = Guest::start(&s, boot, &[]);
        g.wait_for_soon("preinit: erasing", BOOT_TIMEOUT);
        std::thread::sleep(delay);
        let finished = g.text().contains("(block 0 last)");
        g.power_cut();
        let data = s.nor_data();
        let blank = data
            .chunks(NOR_BLOCK as usize)
            .filter(|b| b.iter().all(|&x| x == 0xff))
            .count();
        let marker = data.starts_with(&MARKER);
        println!(
            "  seed {seed}: erase finished before the cut: {finished}; marker kept: {marker}; {blank} of 192 blocks blank"
        );
        assert!(
            marker || finished,
            "seed {seed}: the marker went before the erase finished"
        );
        let mut g = s.boot(boot + 1, &[]);
        let st = g.status();
        assert_eq!(st["mode"], "persistent", "seed {seed}: {st}");
        let content = st["data"]["content"].as_str().unwrap_or_default();
        assert!(
            ["marker", "erased", "jffs2"].contains(&content),
            "seed {seed}: {st}"
        );
        for f in ["/etc/old", "/root/old/f", "/root/old/big"] {
            let (code, _) = g.sh(&format!("test -e {f}"));
            assert_ne!(code, 0, "seed {seed}: {f} from before the marker came back");
        }
        // The whiteout went with the old upper: the ROM's file shows again.
        assert!(g.run("cat /etc/banner").contains("ovl"), "seed {seed}");
        g.poweroff();
    }
}

/// A power cut while JFFS2 is busy: many writes, overwrites and deletes over a partition more
/// than half full, so the garbage collector runs. The next boot must still find JFFS2 (a cut
/// leaves at most a damaged block or two) and mount it.
fn nor_gc_cut(board: &'static str) {
    let s = Storage::new(board, &log_name(board, "gc-cut"));
    let mut g = s.boot(1, &[]);
    g.run("dd if=/dev/urandom of=/root/ballast bs=64k count=320 2>/dev/null && sync");
    // 20 MiB kept, then 1 MiB files rewritten and deleted in turn: past ~28 rounds the
    // 48 MiB have been written over and JFFS2 must collect garbage to go on.
    g.send(
        "i=0; while :; do i=$((i+1)); dd if=/dev/urandom of=/root/f$((i%8)) bs=64k count=16 2>/dev/null; rm -f /root/f$(((i+3)%8)); echo RO''UND-$i; done",
    );
    let seed = seed();
    let mut rng = Rng(seed);
    let rounds = 30 + rng.next() % 10;
    println!("gc cut: seed {seed}, after round {rounds}");
    g.wait_for(&format!("ROUND-{rounds}"), CMD_TIMEOUT);
    std::thread::sleep(Duration::from_millis(rng.next() % 500));
    g.power_cut();
    let mut g = s.boot(2, &[]);
    let st = g.status();
    assert_persistent(&st, "jffs2", "mount");
    assert_eq!(st["data"]["content"], "jffs2", "{st}");
    assert!(g.run("ls -l /root/ballast").contains("20971520"));
    g.run("echo after-the-cut > /root/after && sync");
    g.poweroff();
}

/// JFFS2 as an overlayfs upper on a stock kernel: what works and what does not. Stock JFFS2
/// has no RENAME_WHITEOUT, so overlayfs cannot rename a lower file or remove a lower directory
/// (EINVAL, or EXDEV that mv turns into copy+unlink). README.md documents the same list.
fn nor_jffs2_upper_semantics(board: &'static str) {
    let s = Storage::new(board, &log_name(board, "semantics"));
    let mut g = s.boot(1, &[]);
    assert_persistent(&g.status(), "jffs2", "mount");
    for (what, cmd) in [
        ("create", "echo new > /etc/new"),
        ("copy-up by append", "echo '# appended' >> /etc/profile"),
        ("chmod of a lower file", "chmod 600 /etc/banner"),
        ("delete a lower file", "rm /etc/passwd"),
        ("symlink", "ln -s /etc/new /etc/new-link"),
        ("hardlink", "ln /etc/new /etc/new-hard"),
        ("fifo", "mkfifo /etc/fifo"),
        ("rename within the upper", "mv /etc/new /etc/renamed"),
        (
            "mkdir and rmdir in the upper",
            "mkdir /etc/d && rmdir /etc/d",
        ),
        (
            "rm -rf of an upper directory",
            "mkdir -p /root/a/b && rm -rf /root/a",
        ),
    ] {
        let (code, out) = g.sh(cmd);
        assert_eq!(code, 0, "{what} (`{cmd}`) failed on JFFS2:\n{out}");
    }
    for (what, cmd) in [
        ("rename of a lower file", "mv /etc/group /etc/group2"),
        ("rm -rf of a lower directory", "rm -rf /etc/ovl"),
    ] {
        let (code, out) = g.sh(cmd);
        assert_ne!(
            code, 0,
            "{what} (`{cmd}`) now works on JFFS2: update README.md\n{out}"
        );
    }
    g.poweroff();
    let mut g = s.boot(2, &[]);
    assert!(g.run("cat /etc/renamed").contains("new"));
    assert!(g.run("readlink /etc/new-link").contains("/etc/new"));
    let (code, _) = g.sh("test -e /etc/passwd");
    assert_ne!(code, 0);
    g.poweroff();
}

/// JFFS2 filled to ENOSPC: the next boot still has a writable root. Persistent when the
/// overlay mounts read-write and takes a file (status then warns), else tmpfs saying "full".
#[test]
fn nor_full_jffs2_still_gives_a_writable_root() {
    let s = Storage::new(NOR, "nor-full");
    let mut g = s.boot(1, &[]);
    assert_persistent(&g.status(), "jffs2", "mount");
    // Random data: JFFS2 compresses, zeroes would never fill it.
    g.run(
        "mkdir -p /root && (dd if=/dev/urandom of=/root/fill bs=64k 2>/dev/null; \
         i=0; while head -c 4096 /dev/urandom > /root/s$i 2>/dev/null; do i=$((i+1)); done; \
         sync; df /overlay)",
    );
    g.poweroff();
    let mut g = s.boot(2, &[]);
    let st = g.status();
    eprintln!(
        "full JFFS2: mode {} reason {} upper {}",
        st["mode"], st["reason"], st["upper"]
    );
    match st["mode"].as_str() {
        Some("persistent") => {
            assert_eq!(st["upper"]["low_space"], true, "no warning: {st}");
            // A person can make room on the full partition and go on.
            g.run("rm -f /root/fill && echo after-full > /root/t && cat /root/t");
        }
        Some("tmpfs") => {
            let reason = st["reason"].as_str().unwrap_or_default();
            assert!(
                reason.contains("full"),
                "reason `{reason}` does not say full"
            );
            g.run("echo after-full > /etc/t && cat /etc/t");
        }
        _ => panic!("neither persistent nor tmpfs: {st}"),
    }
    assert_eq!(st["root"]["read_only"], false, "{st}");
    g.poweroff();
}

/// A marker anywhere but big-endian at offset 0 is no marker: on erased flash, the word at
/// offset 4 and one at the start of the second erase block make the partition unknown, and
/// the whole data region stays as it was (no erase, no mount).
#[test]
fn nor_marker_in_the_wrong_place_is_left_untouched() {
    let s = Storage::new(NOR, "nor-marker-wrong-place");
    s.write(NOR_DATA + 4, &[0xde, 0xad, 0xc0, 0xde]);
    s.write(NOR_DATA + 256 * 1024, &[0xde, 0xc0, 0xad, 0xde]);
    let before = s.read(NOR_DATA, 48 * MIB);
    let mut g = s.boot(1, &[]);
    assert_tmpfs(&mut g, "tmpfs", "left untouched");
    g.poweroff();
    assert!(
        s.read(NOR_DATA, 48 * MIB) == before,
        "a misplaced marker changed rootfs_data"
    );
}

/// No ROM to mount: preinit says so in one line, waits and reboots (QEMU runs with
/// -no-reboot, so it exits); no kernel panic, and the flash is left as it was.
#[test]
fn nor_without_a_rom_says_so_and_reboots() {
    let s = Storage::new(NOR, "nor-no-rom");
    s.write(0, &random(64 * 1024));
    let before = s.read(0, 64 * MIB);
    let mut g = Guest::start(&s, 1, &[]);
    let line = g.wait_for("rebooting in 10 s", BOOT_TIMEOUT);
    assert!(
        line.contains("FATAL: no ROM could be mounted") && line.contains("not squashfs"),
        "{line}"
    );
    g.wait_exit();
    let text = g.text();
    assert!(!text.contains("Kernel panic"), "the kernel panicked");
    assert!(
        !text.contains("ovl-rom: shell"),
        "something ran without a ROM"
    );
    drop(g);
    assert!(s.read(0, 64 * MIB) == before, "the flash changed");
}

// ---- the x86_64 disk: ext4 on a GPT partition found by name ----

#[test]
fn disk_first_boot_formats_and_persists() {
    let s = Storage::new(DISK, "disk-persist");
    let mut g = s.boot(1, &[]);
    let st = g.status();
    assert_persistent(&st, "ext4", "format");
    assert_eq!(st["data"]["content"], "erased");
    assert_eq!(st["data"]["device"], "/dev/vda2");
    g.run("echo disk > /etc/hello && rm /etc/banner");
    g.poweroff();
    let mut g = s.boot(2, &[]);
    let st = g.status();
    assert_persistent(&st, "ext4", "mount");
    assert_eq!(st["data"]["content"], "ext4");
    assert!(g.run("cat /etc/hello").contains("disk"));
    let (code, _) = g.sh("test -e /etc/banner");
    assert_ne!(code, 0, "whiteout lost");
    g.poweroff();
}

#[test]
fn disk_corrupt_data_boots_on_tmpfs_and_the_rom_is_intact() {
    let s = Storage::new(DISK, "disk-corrupt");
    let g = s.boot(1, &[]);
    g.poweroff();
    let rom_before = s.read(MIB, 32 * MIB);
    s.write(DISK_DATA, &random(MIB as usize));
    let data_before = s.read(DISK_DATA, DISK_DATA_LEN);
    let mut g = s.boot(2, &[]);
    assert_tmpfs(&mut g, "tmpfs", "holds unknown, not ext4");
    g.poweroff();
    assert_eq!(
        s.read(MIB, 32 * MIB),
        rom_before,
        "the ROM partition changed"
    );
    assert!(
        s.read(DISK_DATA, DISK_DATA_LEN) == data_before,
        "the corrupt data partition changed"
    );
}

#[test]
fn disk_missing_data_partition_boots_on_tmpfs() {
    let s = Storage::new(DISK, "disk-missing");
    let out = Command::new("sgdisk")
        .args(["-d", "2"])
        .arg(&s.path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut g = s.boot(1, &[]);
    assert_tmpfs(
        &mut g,
        "tmpfs",
        "no writable partition (partname:rootfs_data)",
    );
    g.poweroff();
}

#[test]
fn disk_failsafe_leaves_the_partition_byte_identical() {
    let s = Storage::new(DISK, "disk-failsafe");
    let g = s.boot(1, &[]);
    g.poweroff();
    let before = s.read(DISK_DATA, DISK_DATA_LEN);
    let mut g = s.boot(2, &["--append", "ovl.failsafe"]);
    assert_tmpfs(&mut g, "failsafe", "failsafe requested");
    g.poweroff();
    assert!(
        s.read(DISK_DATA, DISK_DATA_LEN) == before,
        "failsafe changed rootfs_data"
    );
}

#[test]
fn disk_power_cut_after_sync_keeps_the_data() {
    power_cut_after_sync(DISK, "ext4", "disk-cut");
}

#[test]
fn disk_power_cut_during_writes_keeps_what_was_synced() {
    power_cut_during_writes(DISK, "ext4", "disk-cut-stream");
}

/// The partition's unique GUID, as `sgdisk -i` prints it (upper case).
fn gpt_guid(img: &Path, n: u32) -> String {
    let out = Command::new("sgdisk")
        .args(["-i", &n.to_string()])
        .arg(img)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("Partition unique GUID: "))
        .map(|g| g.trim().to_string())
        .unwrap_or_else(|| panic!("no unique GUID for partition {n}:\n{text}"))
}

/// `root=PARTUUID=` (as OpenWrt x86 passes it) and `ovl.data=PARTUUID=`: the GPT's own GUIDs,
/// read from the partition table by ovl, since sysfs does not publish them.
#[test]
fn disk_partuuid_names_the_rom_and_the_data_partition() {
    let s = Storage::new(DISK, "disk-partuuid");
    let (rom, data) = (gpt_guid(&s.path, 1), gpt_guid(&s.path, 2));
    let append = format!(
        "root=PARTUUID={rom} ovl.data=PARTUUID={}",
        data.to_lowercase()
    );
    let mut g = s.boot(1, &["--append", &append]);
    let st = g.status();
    assert_persistent(&st, "ext4", "format");
    assert_eq!(st["rom"]["device"], "/dev/vda1", "{st}");
    assert_eq!(st["data"]["device"], "/dev/vda2", "{st}");
    assert_eq!(st["notes"], serde_json::json!([]), "{st}");
    g.poweroff();
    // A PARTUUID that names nothing: the board's selector finds the partition, and says so.
    let wrong = "PARTUUID=00000000-0000-0000-0000-000000000000";
    let mut g = s.boot(2, &["--append", &format!("ovl.data={wrong}")]);
    let st = g.status();
    assert_persistent(&st, "ext4", "mount");
    let note = st["notes"][0].as_str().unwrap_or_default();
    assert!(
        note.contains("no writable partition (PARTUUID=00000000")
            && note.contains("partname:rootfs_data"),
        "{st}"
    );
    g.poweroff();
}

// ---- OpenWrt x86 combined: the writable area after the squashfs in one partition ----

#[test]
fn combined_partition_formats_after_the_rom_and_persists() {
    let s = Storage::new(COMBINED, "combined");
    let rom_len = s.read(MIB, 48)[40..48]
        .try_into()
        .map(u64::from_le_bytes)
        .unwrap();
    let rom_before = s.read(MIB, rom_len);
    let mut g = s.boot(1, &[]);
    let st = g.status();
    assert_persistent(&st, "ext4", "format");
    assert!(
        st["data"]["device"]
            .as_str()
            .unwrap()
            .starts_with("/dev/loop"),
        "{st}"
    );
    g.run("echo combined > /etc/c");
    g.poweroff();
    let mut g = s.boot(2, &[]);
    assert_persistent(&g.status(), "ext4", "mount");
    assert!(g.run("cat /etc/c").contains("combined"));
    g.poweroff();
    assert_eq!(
        s.read(MIB, rom_len),
        rom_before,
        "the squashfs in front changed"
    );
}

#[test]
fn combined_failsafe_and_corruption() {
    let s = Storage::new(COMBINED, "combined-fail");
    let g = s.boot(1, &[]);
    g.poweroff();
    let whole = s.read(0, 98 * MIB);
    let mut g = s.boot(2, &["--append", "ovl.failsafe"]);
    assert_tmpfs(&mut g, "failsafe", "failsafe requested");
    g.poweroff();
    assert!(s.read(0, 98 * MIB) == whole, "failsafe changed the disk");
    let rom_len = s.read(MIB, 48)[40..48]
        .try_into()
        .map(u64::from_le_bytes)
        .unwrap();
    let data_at = MIB + rom_len.div_ceil(65536) * 65536;
    s.write(data_at, &random(MIB as usize));
    let whole = s.read(0, 98 * MIB);
    let mut g = s.boot(3, &[]);
    assert_tmpfs(&mut g, "tmpfs", "holds unknown, not ext4");
    g.poweroff();
    assert!(s.read(0, 98 * MIB) == whole, "the corrupt area changed");
}

// ---- shared scenarios ----

fn power_cut_after_sync(board: &'static str, fstype: &str, name: &str) {
    let s = Storage::new(board, name);
    let mut g = s.boot(1, &[]);
    g.run("echo synced-before-the-cut > /root/kept && sync");
    g.power_cut();
    let mut g = s.boot(2, &[]);
    assert_persistent(&g.status(), fstype, "mount");
    assert!(g.run("cat /root/kept").contains("synced-before-the-cut"));
    g.poweroff();
}

fn power_cut_during_writes(board: &'static str, fstype: &str, name: &str) {
    let s = Storage::new(board, name);
    let mut g = s.boot(1, &[]);
    // A stream of writes, each file synced and then announced; the cut lands mid-stream.
    g.send(
        "i=0; while :; do i=$((i+1)); echo \"payload $i\" > /root/f$i; sync; echo SYN''CED-$i; done",
    );
    g.wait_for("SYNCED-12", CMD_TIMEOUT);
    let text = g.text();
    g.power_cut();
    let last: u32 = text
        .rsplit("SYNCED-")
        .next()
        .and_then(|t| t.lines().next())
        .and_then(|n| n.trim().parse().ok())
        .expect("a synced count");
    let mut g = s.boot(2, &[]);
    assert_persistent(&g.status(), fstype, "mount");
    for i in 1..=last {
        let out = g.run(&format!("cat /root/f{i}"));
        assert!(
            out.contains(&format!("payload {i}")),
            "file {i} of {last} synced files lost:\n{out}"
        );
    }
    g.poweroff();
}

// ---- factory reset and first boot ----

/// What a factory reset must remove, and what it must not touch (in /tmp, a tmpfs).
const PLANT: &str =
    "mkdir -p /root/.ssh && echo key > /root/.ssh/authorized_keys && echo p > /root/.profile \
    && printf x > '/root/with space' && printf x > /root/-rf && rm /etc/banner \
    && mkdir -p /tmp/outside && echo keep > /tmp/outside/keep && ln -s /tmp/outside /root/link-out \
    && mkdir -p /tmp/bsrc /root/bindmnt && echo bound > /tmp/bsrc/f \
    && mount --bind /tmp/bsrc /overlay/upper/root/bindmnt";

fn machine_id(g: &mut Guest) -> String {
    let out = g.run("cat /etc/machine-id");
    let id = out
        .lines()
        .map(str::trim)
        .find(|l| l.len() == 32 && l.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string);
    id.unwrap_or_else(|| g.fail(&format!("no machine id in:\n{out}")))
}

#[test]
fn nor_reset_of_the_mounted_overlay_brings_back_the_rom_and_reruns_first_boot() {
    mounted_reset(NOR);
}

#[test]
fn armv7_reset_of_the_mounted_overlay_brings_back_the_rom_and_reruns_first_boot() {
    mounted_reset(ARMV7_NOR);
}

fn mounted_reset(board: &'static str) {
    let s = Storage::new(board, &log_name(board, "reset"));
    let mut g = s.boot(1, &[]);
    let st = g.status();
    assert_eq!(st["first_boot"]["state"], "ready", "{st}");
    assert_eq!(st["first_boot"]["cleared_at_boot"], "pending", "{st}");
    assert!(
        st["rom"]["id"].as_str().unwrap().starts_with("sqfs-"),
        "{st}"
    );
    let id1 = machine_id(&mut g);
    g.run(PLANT);
    let out = g.run("ovlctl reset -y");
    assert!(out.contains("mount points inside were left alone"), "{out}");
    // Without a reboot: the ROM's file is back, nothing outside the upper was touched.
    assert!(g.run("cat /etc/banner").contains("ovl"));
    assert!(g.run("cat /tmp/outside/keep /tmp/bsrc/f").contains("keep"));
    g.run("test ! -e /root/.ssh && test ! -e /root/.profile && test ! -e '/root/with space'");
    assert_eq!(g.status()["first_boot"]["state"], "pending");
    g.run("umount /overlay/upper/root/bindmnt");
    g.poweroff();

    let mut g = s.boot(2, &[]);
    let st = g.status();
    assert_eq!(st["first_boot"]["cleared_at_boot"], "pending", "{st}");
    assert_eq!(st["first_boot"]["state"], "ready", "{st}");
    let id2 = machine_id(&mut g);
    assert_ne!(
        id1, id2,
        "the run-once script did not run again after the reset"
    );
    g.run("test ! -e /root/.ssh && test ! -e /root/link-out");
    // OpenWrt's reset button runs `firstboot -y -r`: argv[0] makes it the reset.
    g.run("echo after > /etc/after && ln -s /sbin/ovlctl /tmp/firstboot");
    g.send("/tmp/firstboot -y -r");
    g.wait_exit();
    let mut g = s.boot(3, &[]);
    assert_eq!(g.status()["first_boot"]["cleared_at_boot"], "pending");
    g.run("test ! -e /etc/after");
    g.poweroff();
}

#[test]
fn nor_reset_from_failsafe_erases_through_the_mtd_layer() {
    failsafe_reset_erases(NOR);
}

#[test]
fn armv7_reset_from_failsafe_erases_through_the_mtd_layer() {
    failsafe_reset_erases(ARMV7_NOR);
}

fn failsafe_reset_erases(board: &'static str) {
    let s = Storage::new(board, &log_name(board, "reset-failsafe"));
    let mut g = s.boot(1, &[]);
    g.run("echo old > /etc/old && rm /etc/banner && sync");
    g.poweroff();
    let mut g = s.boot(2, &["--append", "ovl.failsafe"]);
    let out = g.run("ovlctl reset -y");
    assert!(out.contains("is reset now through /dev/mtd"), "{out}");
    assert!(
        out.contains("old nodes marked obsolete in")
            && out.contains("blocks erased (block 0 last)"),
        "{out}"
    );
    g.poweroff();
    assert_no_live_node(&s.nor_data());
    let mut g = s.boot(3, &[]);
    let st = g.status();
    assert_persistent(&st, "jffs2", "mount");
    g.run("test ! -e /etc/old && test -e /etc/banner");
    g.poweroff();
}

/// After a reset of an unmounted JFFS2: no header anywhere in rootfs_data that JFFS2 could
/// take for a live node (ovl's own superset of the kernel's scan), except the clean marker at
/// the start of a block; block 0 erased; every block still JFFS2 or erased to preinit's
/// probe; and at least one clean marker, without which JFFS2 would refuse to mount.
fn assert_no_live_node(data: &[u8]) {
    let mut markers = 0;
    for (i, b) in data.chunks(NOR_BLOCK as usize).enumerate() {
        for (off, _) in ovl::mtd::live_headers(b, 0) {
            let marker = off == 0 && b[..12] == ovl::mtd::clean_marker();
            assert!(marker, "block {i} of rootfs_data: a live node at {off:#x}");
            markers += 1;
        }
        // And preinit still takes every block for JFFS2 (or erased), obsolete nodes and all.
        let kind = ovl::probe::jffs2::classify(&b[..1024], NOR_BLOCK);
        assert_ne!(
            kind,
            ovl::probe::jffs2::Block::Other,
            "block {i}: {:02x?}",
            &b[..16]
        );
    }
    assert!(
        data[..NOR_BLOCK as usize].iter().all(|&b| b == 0xff),
        "block 0 (the reset mark) was not erased"
    );
    assert!(
        markers > 0,
        "no clean marker left: JFFS2 would not mount this"
    );
}

/// The old state of the deferred-preparation scenarios: a partition nearly full of old nodes.
fn nor_nearly_full(s: &Storage) {
    let mut g = s.boot(1, &[]);
    g.run(
        "mkdir -p /root/old && echo old > /root/old/f && rm /etc/banner && \
         dd if=/dev/urandom of=/root/old/big bs=64k count=600 2>/dev/null; sync",
    );
    g.poweroff();
}

#[test]
fn nor_reset_does_not_wait_for_the_erase_and_loses_no_file_written_meanwhile() {
    deferred_reset(NOR);
}

#[test]
fn armv7_reset_does_not_wait_for_the_erase_and_loses_no_file_written_meanwhile() {
    deferred_reset(ARMV7_NOR);
}

/// Power cuts at random points while JFFS2 erases the old blocks after a reset and the
/// writer writes: the next boot is persistent, nothing old is back, and every file whose
/// checksum line reached the flash is whole.
#[test]
fn nor_power_cuts_during_the_background_erase_lose_nothing_written() {
    let s = Storage::new(NOR, "nor-deferred-cut");
    nor_nearly_full(&s);
    let mut g = s.boot(2, &["--append", "ovl.failsafe"]);
    g.run("ovlctl reset -y");
    g.poweroff();
    let reset = std::fs::read(&s.path).unwrap();
    let base = seed();
    let (mut healthy, mut mixed): (u64, Vec<String>) = (0, Vec::new());
    for (n, seed) in (base..base + cuts()).enumerate() {
        std::fs::write(&s.path, &reset).unwrap();
        let mut rng = Rng(seed);
        let boot = 3 + 2 * n as u32;
        // JFFS2 is done with the old blocks about 3 s after init starts here.
        let delay = Duration::from_millis(rng.next() % 3000);
        let mut g = Guest::start(&s, boot, &["--append", "ovl-rom.writer"]);
        g.wait_for_soon("ovl-rom: init running", BOOT_TIMEOUT);
        std::thread::sleep(delay);
        g.power_cut();
        let what = format!("seed {seed}, cut {delay:?} after init started");
        let mut g = s.boot(boot + 1, &[]);
        let st = g.status();
        let (_, sums) = g.sh(
            "if [ -e /root/writer/sums ]; then md5sum -c /root/writer/sums >/tmp/c; \
             grep -c ': OK$' /tmp/c; wc -l < /root/writer/sums; else echo 0; echo 0; fi",
        );
        let counts: Vec<u64> = sums.lines().filter_map(|l| l.trim().parse().ok()).collect();
        let old = g.sh("test -e /root/old").0 == 0 || g.sh("test -e /etc/banner").0 != 0;
        println!("background erase cut: {what}: files checked/listed {counts:?}, old back: {old}");
        if st["mode"] != "persistent" {
            mixed.push(format!("{what}: not persistent: {st}"));
        } else if old {
            mixed.push(format!("{what}: the old state came back"));
        } else if counts.len() == 2 && counts[0] == counts[1] {
            healthy += 1;
        } else {
            mixed.push(format!(
                "{what}: a file the writer finished is not whole: {counts:?}"
            ));
        }
        g.poweroff();
    }
    report("background erase after a reset", healthy, &mixed);
}

/// A factory reset of a nearly full JFFS2 from failsafe, then a boot that writes files from
/// the start of init (qemu-arm/rom/writer) while JFFS2 erases the old blocks, in the
/// background and when a write needs the room, until none is left. Every file the writer
/// finished is there after the reboot, and nothing old is.
fn deferred_reset(board: &'static str) {
    let s = Storage::new(board, &log_name(board, "deferred"));
    nor_nearly_full(&s);
    let mut g = s.boot(2, &["--append", "ovl.failsafe"]);
    println!("{}", g.run("ovlctl reset -y"));
    g.poweroff();
    assert_no_live_node(&s.nor_data());
    let mut g = s.boot(3, &["--append", "ovl-rom.writer"]);
    let st = g.status();
    assert_persistent(&st, "jffs2", "mount");
    let pending_at_shell = st["waiting"]["erase_blocks"].as_u64().unwrap_or(u64::MAX);
    let written_at_shell = g.run("wc -l < /root/writer/sums");
    println!(
        "at the shell: {pending_at_shell} blocks still to erase, files written: {written_at_shell}"
    );
    let start = Instant::now();
    loop {
        let st = g.status();
        let pending = st["waiting"]["erase_blocks"].as_u64();
        match pending {
            Some(0) => break,
            Some(_) => {}
            None => g.fail(&format!("status does not count the blocks to erase: {st}")),
        }
        if start.elapsed() > CMD_TIMEOUT {
            g.fail(&format!("JFFS2 still has {pending:?} blocks to erase"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!(
        "all old blocks erased {:?} after the shell",
        start.elapsed()
    );
    g.run(
        "touch /tmp/writer.stop; until dmesg | grep -q 'ovl-writer: stopped'; do sleep 0.2; done",
    );
    let written = g.run("dmesg | grep 'ovl-writer: stopped'");
    println!("{written}");
    let n: u64 = g
        .run("wc -l < /root/writer/sums")
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .next_back()
        .unwrap_or(0);
    assert!(n > 10, "the writer wrote only {n} files");
    g.poweroff();
    let mut g = s.boot(4, &[]);
    assert_persistent(&g.status(), "jffs2", "mount");
    let out = g.run("cd /root/writer && md5sum -c sums | grep -c ': OK$'");
    assert!(
        out.contains(&format!("\n{n}")),
        "not every file the writer wrote is whole: {out}"
    );
    g.run("test ! -e /root/old && test -e /etc/banner");
    g.poweroff();
}

/// How many cuts per scenario: 3, or `OVL_CUTS` (bench/powercut.sh soaks with more).
fn cuts() -> u64 {
    std::env::var("OVL_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// Prints the soak line bench/powercut.sh reads, then fails on any mixture.
fn report(scenario: &str, healthy: u64, mixed: &[String]) {
    println!(
        "POWERCUT {scenario}: {} cuts, {healthy} healthy, {} mixed",
        healthy + mixed.len() as u64,
        mixed.len()
    );
    assert!(mixed.is_empty(), "{scenario}: {mixed:#?}");
}

const OLD_FILES: u32 = 200;

/// The old state every cut scenario starts from: 200 files, a deleted ROM file, a big file.
fn planted_nor(s: &Storage) -> Vec<u8> {
    let mut g = s.boot(1, &[]);
    g.run(&format!(
        "mkdir -p /root/old && i=0; while [ $i -lt {OLD_FILES} ]; do echo $i > /root/old/f$i; i=$((i+1)); done; \
         rm /etc/banner && dd if=/dev/urandom of=/root/big bs=64k count=32 2>/dev/null && sync"
    ));
    g.poweroff();
    std::fs::read(&s.path).unwrap()
}

/// After a cut: the old state whole (every file, the ROM file deleted) or the new one whole
/// (none of them, the ROM file back). Returns a description of a mixture.
fn old_or_new(g: &mut Guest, what: &str) -> Option<String> {
    let n: u32 = g
        .run("ls /root/old 2>/dev/null | wc -l")
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .next_back()
        .unwrap_or(u32::MAX);
    let banner = g.sh("test -e /etc/banner").0 == 0;
    let big = g.sh("test -e /root/big").0 == 0;
    let old = n == OLD_FILES && !banner && big;
    let new = n == 0 && banner && !big;
    (!old && !new)
        .then(|| format!("{what}: {n} of {OLD_FILES} old files, banner {banner}, big {big}"))
}

#[test]
fn nor_power_cuts_during_a_mounted_reset_leave_old_or_new() {
    let s = Storage::new(NOR, "nor-reset-cut");
    let planted = planted_nor(&s);
    let base = seed();
    let (mut healthy, mut mixed): (u64, Vec<String>) = (0, Vec::new());
    for (n, seed) in (base..base + cuts()).enumerate() {
        std::fs::write(&s.path, &planted).unwrap();
        let mut rng = Rng(seed);
        let boot = 2 + 2 * n as u32;
        let mut g = s.boot(boot, &[]);
        // The reset of 200 files takes about 0.3 s here: cuts spread over 0-500 ms.
        let delay = Duration::from_millis(rng.next() % 500);
        g.send("ovlctl reset -y");
        std::thread::sleep(delay);
        let finished = g.text().contains("reset done");
        g.power_cut();
        let mut g = s.boot(boot + 1, &[]);
        let st = g.status();
        let what = format!("seed {seed}, cut {delay:?} after the command (finished: {finished})");
        println!(
            "mounted reset cut: {what}: cleared_at_boot {}",
            st["first_boot"]["cleared_at_boot"]
        );
        match (st["mode"] == "persistent", old_or_new(&mut g, &what)) {
            (true, None) => healthy += 1,
            (false, _) => mixed.push(format!("{what}: not persistent: {st}")),
            (true, Some(m)) => mixed.push(m),
        }
        g.poweroff();
    }
    report("mounted reset", healthy, &mixed);
}

#[test]
fn nor_power_cuts_during_a_failsafe_reset_erase_never_bring_back_old_files() {
    let s = Storage::new(NOR, "nor-reset-erase-cut");
    let planted = planted_nor(&s);
    let base = seed();
    let (mut healthy, mut mixed): (u64, Vec<String>) = (0, Vec::new());
    for (n, seed) in (base..base + cuts()).enumerate() {
        std::fs::write(&s.path, &planted).unwrap();
        let mut rng = Rng(seed);
        let boot = 2 + 2 * n as u32;
        let mut g = s.boot(boot, &["--append", "ovl.failsafe"]);
        let delay = Duration::from_millis(rng.next() % 800);
        g.send("ovlctl reset -y");
        g.wait_for_soon("erasing /dev/mtd", CMD_TIMEOUT);
        std::thread::sleep(delay);
        g.power_cut();
        let mut g = s.boot(boot + 1, &[]);
        let st = g.status();
        let what = format!("seed {seed}, cut {delay:?} after `erasing`");
        println!("erase cut: {what}: data {}", st["data"]);
        match (st["mode"] == "persistent", old_or_new(&mut g, &what)) {
            // The mark was written before `erasing` showed: only the new state may be seen.
            (true, None) if g.sh("test -e /etc/banner").0 == 0 => healthy += 1,
            (true, None) => mixed.push(format!("{what}: the old state came back")),
            (false, _) => mixed.push(format!("{what}: not persistent: {st}")),
            (true, Some(m)) => mixed.push(m),
        }
        g.poweroff();
    }
    report("failsafe reset erase", healthy, &mixed);
}

#[test]
fn nor_power_cuts_during_first_boot_redo_it_from_empty() {
    let s = Storage::new(NOR, "nor-firstboot-cut");
    let mut g = s.boot(1, &[]);
    g.run("echo user > /root/user && ovlctl reset -y");
    g.poweroff();
    let pending = std::fs::read(&s.path).unwrap();
    let base = seed();
    let (mut healthy, mut mixed): (u64, Vec<String>) = (0, Vec::new());
    for (n, seed) in (base..base + cuts()).enumerate() {
        std::fs::write(&s.path, &pending).unwrap();
        let mut rng = Rng(seed);
        let boot = 2 + 2 * n as u32;
        let mut g = Guest::start(&s, boot, &[]);
        g.wait_for_soon("ovl-rom: init running", BOOT_TIMEOUT);
        // `ovlctl status` then `ovlctl firstboot` complete within about 0.6 s.
        let delay = Duration::from_millis(rng.next() % 800);
        std::thread::sleep(delay);
        let completed = g.text().contains("first boot complete");
        g.power_cut();
        let mut g = s.boot(boot + 1, &[]);
        let st = g.status();
        let what =
            format!("seed {seed}, cut {delay:?} after init started (completed: {completed})");
        println!(
            "first boot cut: {what}: cleared_at_boot {}",
            st["first_boot"]["cleared_at_boot"]
        );
        // Either outcome is whole: redone from empty (cleared `pending`), or complete before
        // the cut (the console may not have shown it yet). In both the script ran and went.
        let ok = st["mode"] == "persistent"
            && st["first_boot"]["state"] == "ready"
            && g.sh("test ! -e /root/user && test ! -e /etc/firstboot.d/10-machine-id")
                .0
                == 0;
        // Torn output of the script would show as a malformed id.
        machine_id(&mut g);
        if ok {
            healthy += 1;
        } else {
            mixed.push(format!("{what}: {st}"));
        }
        g.poweroff();
    }
    report("first boot", healthy, &mixed);
}

#[test]
fn combined_reset_mounted_then_from_failsafe_marks_the_area_after_the_rom() {
    ext4_resets(COMBINED, "combined-reset", None);
}

#[test]
fn disk_reset_mounted_then_from_failsafe_formats_on_the_next_boot() {
    ext4_resets(DISK, "disk-reset", Some(DISK_DATA));
}

/// Both kinds of reset on an ext4 board: mounted (the ROM's files back at once, the first
/// boot again at the next boot), then from failsafe (marked; the next boot formats).
/// `mark_at`: where the data partition starts in the image, to look for the mark.
fn ext4_resets(board: &'static str, name: &str, mark_at: Option<u64>) {
    let s = Storage::new(board, name);
    let mut g = s.boot(1, &[]);
    assert_eq!(g.status()["first_boot"]["state"], "ready");
    g.run("echo old > /etc/old && rm /etc/banner && mkdir -p /root/.ssh && echo k > /root/.ssh/k");
    g.run("ovlctl reset -y");
    assert!(g.run("cat /etc/banner").contains("ovl"));
    g.run("test ! -e /root/.ssh && test ! -e /etc/old");
    g.poweroff();
    let mut g = s.boot(2, &[]);
    assert_eq!(g.status()["first_boot"]["cleared_at_boot"], "pending");
    g.run("echo again > /etc/again && sync");
    g.poweroff();
    let mut g = s.boot(3, &["--append", "ovl.failsafe"]);
    let out = g.run("ovlctl reset -y");
    assert!(out.contains("the next boot formats it"), "{out}");
    g.poweroff();
    if let Some(at) = mark_at {
        assert_eq!(
            &s.read(at, 16),
            b"\xde\xad\xc0\xdeovl-reset\0\0\0",
            "no reset mark on the data partition"
        );
    }
    let mut g = s.boot(4, &[]);
    let st = g.status();
    assert_persistent(&st, "ext4", "format");
    assert_eq!(st["data"]["content"], "reset-mark", "{st}");
    g.run("test ! -e /etc/again && echo kept > /etc/kept && sync");
    g.poweroff();
    // Formatted once: the mark went with the format.
    let mut g = s.boot(5, &[]);
    assert_persistent(&g.status(), "ext4", "mount");
    assert!(g.run("cat /etc/kept").contains("kept"));
    g.poweroff();
}

/// Another ROM over an old overlay (a new image flashed without an upgrade backup): the
/// overlay was made for the old one, so it is reset and the event is published.
#[test]
fn nor_another_rom_over_an_old_overlay_resets_it() {
    let s = Storage::new(NOR, "nor-stale");
    let mut g = s.boot(1, &[]);
    let old_id = g.status()["rom"]["id"].as_str().unwrap().to_string();
    g.run("echo mine > /etc/mine && sync");
    g.poweroff();
    // The same ROM with one more file, written where the ROM lives.
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    let rom = cache().join("images").join(NOR).join("rom.sqfs");
    let new = work.path().join("rom2.sqfs");
    let run = |cmd: &mut Command| assert!(cmd.status().unwrap().success(), "{cmd:?}");
    run(Command::new("unsquashfs")
        .args(["-q", "-d"])
        .arg(&tree)
        .arg(&rom));
    std::fs::write(tree.join("etc/version"), "2\n").unwrap();
    run(Command::new("mksquashfs").arg(&tree).arg(&new).args([
        "-noappend",
        "-quiet",
        "-all-root",
        "-comp",
        "xz",
        "-b",
        "256K",
    ]));
    let bytes = std::fs::read(&new).unwrap();
    assert!(bytes.len() as u64 <= NOR_DATA);
    s.write(0, &bytes);
    let mut g = s.boot(2, &[]);
    let st = g.status();
    assert_eq!(st["first_boot"]["cleared_at_boot"], "stale", "{st}");
    assert_eq!(st["first_boot"]["stale_from"], old_id.as_str(), "{st}");
    assert_ne!(st["rom"]["id"], old_id.as_str(), "{st}");
    assert!(
        st["notes"].to_string().contains("made for another ROM"),
        "{st}"
    );
    g.run("test ! -e /etc/mine && cat /etc/version");
    g.poweroff();
    // Once: the overlay belongs to the new ROM now.
    let mut g = s.boot(3, &[]);
    assert_eq!(g.status()["first_boot"]["cleared_at_boot"], Value::Null);
    g.poweroff();
}

// ---- sysupgrade: a new ROM, the configuration kept ----

/// A v2 of a board's ROM, made on the host from the built v1: a marker file, another release
/// line, and a run-once script that records whether the first boot saw a restore. Returns a
/// disk image holding the sysupgrade image at offset 0, and the image's length.
fn v2_image(board: &str, dir: &Path, boards: &str) -> (PathBuf, u64) {
    let rom = cache().join("images").join(board).join("rom.sqfs");
    let tree = dir.join("v2");
    let ok = |c: &mut Command| {
        let out = c.output().unwrap();
        assert!(out.status.success(), "{c:?}: {out:?}");
    };
    ok(Command::new("unsquashfs")
        .args(["-q", "-n", "-d"])
        .arg(&tree)
        .arg(&rom));
    std::fs::write(tree.join("etc/ovl-v2"), "v2\n").unwrap();
    std::fs::write(
        tree.join("etc/ovl/release"),
        "version v2-test\ncompat 1.0\n",
    )
    .unwrap();
    std::fs::write(
        tree.join("etc/firstboot.d/50-saw-restore"),
        "echo \"restored=${OVL_RESTORED:-0}\" > /etc/saw-restore\n",
    )
    .unwrap();
    let sqfs = dir.join("v2.sqfs");
    ok(Command::new("mksquashfs").arg(&tree).arg(&sqfs).args([
        "-noappend",
        "-quiet",
        "-all-root",
        "-comp",
        "xz",
        "-b",
        "256K",
    ]));
    let img = dir.join("v2.img");
    ok(Command::new(env!("CARGO_BIN_EXE_ovl"))
        .args(["mkimage", "-b", boards, "--release", "v2-test"])
        .arg(&sqfs)
        .arg(&img));
    let disk = dir.join("v2.disk");
    let len = as_disk(&img, &disk);
    (disk, len)
}

/// Copies an image to `disk` padded to whole sectors (a disk is whole sectors; the guest
/// reads back exactly the image's length); returns that length.
fn as_disk(img: &Path, disk: &Path) -> u64 {
    let len = std::fs::metadata(img).unwrap().len();
    std::fs::copy(img, disk).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    f.set_len(len.div_ceil(65536) * 65536).unwrap();
    len
}

/// Copies the image (`len` bytes) from the upgrade disk to `to` in the guest, first making
/// the disk readable there (the NOR boards' ROMs carry the virtio modules for it).
fn image_into_guest(g: &mut Guest, board: &str, len: u64, to: &str) {
    let dev = if board == DISK {
        "/dev/vdb"
    } else {
        g.run("for m in virtio_mmio virtio_blk; do insmod /lib/modules/$(uname -r)/$m.ko || exit 1; done; for i in $(seq 50); do [ -b /dev/vda ] && break; sleep 0.1; done; test -b /dev/vda");
        "/dev/vda"
    };
    g.run(&format!("head -c {len} {dev} > {to}"));
}

const KEEP_CONFIG: &str = "mkdir -p /etc/config /etc/keepdir /etc/emptydir && chmod 750 /etc/keepdir && \
    chmod 700 /etc/emptydir && echo 'lan 192.168.7.1' > /etc/config/network && \
    chmod 640 /etc/config/network && chown 123:45 /etc/config/network && \
    echo secret > /etc/keepdir/token && ln -s network /etc/config/net-link && \
    printf '/etc/config/\\n/etc/keepdir\\n/etc/emptydir\\n/etc/sysupgrade.conf\\n' > /etc/sysupgrade.conf && \
    echo stray > /etc/stray.conf && echo stray > /root/stray && sync";

fn check_kept_config(g: &mut Guest) {
    let out = g.run(
        "cat /etc/config/network; stat -c 'M %a %u %g' /etc/config/network; \
         stat -c 'D %a' /etc/keepdir; stat -c 'E %a' /etc/emptydir; cat /etc/keepdir/token; \
         readlink /etc/config/net-link",
    );
    for want in [
        "lan 192.168.7.1",
        "M 640 123 45",
        "D 750",
        "E 700",
        "secret",
        "network",
    ] {
        assert!(out.contains(want), "`{want}` missing from:\n{out}");
    }
    g.run("test ! -e /etc/stray.conf && test ! -e /root/stray");
}

#[test]
fn nor_sysupgrade_keeps_the_configuration_and_nothing_else() {
    sysupgrade_keeps_config(NOR);
}

#[test]
fn disk_sysupgrade_keeps_the_configuration_and_nothing_else() {
    sysupgrade_keeps_config(DISK);
}

fn sysupgrade_keeps_config(board: &'static str) {
    let s = Storage::new(board, &log_name(board, "sysupgrade"));
    let (disk, len) = v2_image(board, s._dir.path(), board);
    let args = ["--disk", disk.to_str().unwrap()];
    let mut g = s.boot(1, &args);
    let id = machine_id(&mut g);
    g.run(KEEP_CONFIG);
    let list = g.run("ovlctl backup --list");
    assert!(
        list.contains("/etc/config/network") && list.contains("/etc/emptydir"),
        "{list}"
    );
    assert!(!list.contains("stray"), "{list}");
    image_into_guest(&mut g, board, len, "/tmp/v2.img");
    // A damaged image is refused before anything is written, -F or not.
    g.run("cp /tmp/v2.img /tmp/bad.img && printf 'x' | dd of=/tmp/bad.img bs=1 seek=5000 conv=notrunc 2>/dev/null");
    let rom_dev = g.status()["rom"]["device"].as_str().unwrap().to_string();
    let before = g.run(&format!("md5sum {rom_dev}"));
    let (code, out) = g.sh("ovlctl sysupgrade -F /tmp/bad.img");
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("CRC32"), "{out}");
    // -T checks and writes nothing.
    let out = g.run("ovlctl sysupgrade -T /tmp/v2.img");
    assert!(out.contains("image OK"), "{out}");
    g.run("test ! -e /overlay/.ovl-keep");
    let after = g.run(&format!("md5sum {rom_dev}"));
    let sum = |out: &str| {
        out.lines()
            .filter_map(|l| l.split_whitespace().next())
            .find(|w| w.len() == 32 && w.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_string)
    };
    assert!(sum(&before).is_some(), "{before}");
    assert_eq!(sum(&before), sum(&after), "a refused image changed the ROM");
    g.send("ovlctl sysupgrade /tmp/v2.img");
    g.wait_for("written and verified", CMD_TIMEOUT);
    g.wait_exit();

    let mut g = s.boot(2, &args);
    let st = g.status();
    assert_persistent(&st, st["data"]["fstype"].as_str().unwrap(), "mount");
    assert_eq!(st["first_boot"]["upgrade"], "restored", "{st}");
    assert_eq!(st["first_boot"]["cleared_at_boot"], "upgrade", "{st}");
    assert_eq!(st["first_boot"]["state"], "ready", "{st}");
    assert!(
        st["notes"]
            .to_string()
            .contains("kept configuration restored"),
        "{st}"
    );
    assert!(g
        .run("cat /etc/ovl-v2 /etc/ovl/release")
        .contains("v2-test"));
    check_kept_config(&mut g);
    // The new ROM's run-once scripts ran after the restore and could tell.
    assert!(g.run("cat /etc/saw-restore").contains("restored=1"));
    // The machine id was not kept (not in the list): the first boot made a new one.
    assert_ne!(machine_id(&mut g), id);
    // The first boot completed: the container is gone, and the next boot keeps everything.
    g.run("test ! -e /overlay/.ovl-keep");
    g.run("echo later > /etc/config/later && sync");
    g.poweroff();
    let mut g = s.boot(3, &args);
    let st = g.status();
    assert_eq!(st["first_boot"]["cleared_at_boot"], Value::Null, "{st}");
    assert_eq!(st["first_boot"]["upgrade"], Value::Null, "{st}");
    check_kept_config(&mut g);
    assert!(g.run("cat /etc/config/later").contains("later"));
    g.poweroff();
}

/// Whether the guest's tree holds the configuration of [`KEEP_CONFIG`] whole, and whether the
/// stray files (outside the keep list) are still there: (config whole, strays there).
fn config_state(g: &mut Guest) -> (bool, bool) {
    let (code, _) = g.sh(
        "grep -q 'lan 192.168.7.1' /etc/config/network && [ \"$(stat -c '%a %u %g' /etc/config/network)\" = '640 123 45' ] && \
         [ \"$(stat -c %a /etc/keepdir)\" = 750 ] && grep -q secret /etc/keepdir/token && \
         [ \"$(readlink /etc/config/net-link)\" = network ] && [ \"$(stat -c %a /etc/emptydir)\" = 700 ]",
    );
    let (stray, _) = g.sh("test -e /etc/stray.conf && test -e /root/stray");
    (code == 0, stray == 0)
}

/// Power cuts at random points (seeded, three cuts each) during `sysupgrade-keep`, during the
/// restore at the next boot, and during the ROM write of `sysupgrade`. Every boot after a
/// cut is persistent and has the configuration whole: the old one (strays there) or the kept
/// one (strays gone), never a mixture. A cut in the middle of the ROM write leaves a ROM that
/// is neither (the single-ROM limit the README states); the test says when it hit that.
#[test]
fn nor_power_cuts_during_an_upgrade_leave_the_old_or_the_new_configuration() {
    let board = NOR;
    let s = Storage::new(board, &log_name(board, "sysupgrade-cut"));
    let (disk, len) = v2_image(board, s._dir.path(), board);
    let args = ["--disk", disk.to_str().unwrap()];
    let mut g = s.boot(1, &args);
    g.run(KEEP_CONFIG);
    g.poweroff();
    let configured = std::fs::read(&s.path).unwrap();
    let mut n = 1;
    let base = seed();
    let (mut healthy, mut mixed): (u64, Vec<String>) = (0, Vec::new());

    // 1. During sysupgrade-keep (about 0.3 s under TCG): cuts spread over 0-600 ms.
    for seed in base..base + cuts() {
        let delay = Duration::from_millis(Rng(seed).next() % 600);
        std::fs::write(&s.path, &configured).unwrap();
        n += 1;
        let mut g = s.boot(n, &args);
        g.send("ovlctl sysupgrade-keep");
        std::thread::sleep(delay);
        g.power_cut();
        n += 1;
        let mut g = s.boot(n, &args);
        let st = g.status();
        assert_eq!(st["mode"], "persistent", "seed {seed}: {st}");
        let (whole, strays) = config_state(&mut g);
        println!(
            "keep cut: seed {seed}, {delay:?}: config whole {whole}, strays there {strays} ({})",
            if strays { "old" } else { "kept" }
        );
        if whole {
            healthy += 1;
        } else {
            mixed.push(format!("seed {seed}: the configuration is not whole after a cut {delay:?} into sysupgrade-keep: {st}"));
        }
        g.poweroff();
    }
    report("sysupgrade-keep cut", healthy, &mixed);
    let (mut healthy, mut mixed): (u64, Vec<String>) = (0, Vec::new());

    // 2. During the restore at the next boot: the configuration is kept, then each boot is
    //    cut 0-600 ms after preinit emptied the upper for it (the restore takes about 0.1 s,
    //    the first boot after it about 1 s); the boot after it has the kept configuration.
    std::fs::write(&s.path, &configured).unwrap();
    n += 1;
    let mut g = s.boot(n, &args);
    g.run("ovlctl sysupgrade-keep");
    g.poweroff();
    let kept = std::fs::read(&s.path).unwrap();
    for seed in base..base + cuts() {
        let delay = Duration::from_millis(Rng(seed ^ 0x5eed).next() % 600);
        std::fs::write(&s.path, &kept).unwrap();
        n += 1;
        let mut g = Guest::start(&s, n, &args);
        g.wait_for_soon("overlay emptied (upgrade)", BOOT_TIMEOUT);
        std::thread::sleep(delay);
        let restored = g.text().contains("kept configuration restored");
        let completed = g.text().contains("first boot complete");
        g.power_cut();
        n += 1;
        let mut g = s.boot(n, &args);
        let st = g.status();
        assert_eq!(st["mode"], "persistent", "seed {seed}: {st}");
        let (whole, strays) = config_state(&mut g);
        println!("restore cut: seed {seed}, {delay:?}: restored before the cut {restored}, first boot completed {completed}; now whole {whole}, strays {strays}");
        if whole && !strays && st["first_boot"]["state"] == "ready" {
            healthy += 1;
        } else {
            mixed.push(format!("seed {seed}: not the kept configuration after a cut {delay:?} into the restoring boot: {st}"));
        }
        g.poweroff();
    }
    report("restore-at-boot cut", healthy, &mixed);
    let (mut healthy, mut mixed): (u64, Vec<String>) = (0, Vec::new());

    // 3. During the ROM write: cuts 0-150 ms after the backup is made.
    let old_rom = std::fs::read(cache().join("images").join(board).join("rom.sqfs")).unwrap();
    let img = std::fs::read(&disk).unwrap();
    let img = &img[..len as usize];
    // The payload: the image without its metadata text and 16-byte footer.
    let text = u32::from_le_bytes(img[img.len() - 8..img.len() - 4].try_into().unwrap());
    let new_rom = &img[..img.len() - 16 - text as usize];
    for seed in base..base + cuts() {
        // The write takes about 0.1 s here, after the backup (about 0.1 s).
        let delay = Duration::from_millis(Rng(seed ^ 0xf1a5).next() % 150);
        std::fs::write(&s.path, &configured).unwrap();
        n += 1;
        let mut g = s.boot(n, &args);
        image_into_guest(&mut g, board, len, "/tmp/v2.img");
        g.send("ovlctl sysupgrade /tmp/v2.img");
        g.wait_for_soon("keeping", CMD_TIMEOUT);
        std::thread::sleep(delay);
        g.power_cut();
        let rom = s.read(0, 16 * MIB);
        let is_old = rom.starts_with(&old_rom);
        let mut is_new = rom.starts_with(new_rom);
        println!(
            "flash cut: seed {seed}, {delay:?} after `keeping`: ROM old {is_old}, new {is_new}"
        );
        if !is_old && !is_new {
            // Nothing boots from this ROM (README). The configuration is on the writable
            // partition all the same: written again the way a recovery would, the same
            // image boots with it.
            println!("  the cut hit the ROM write itself; the image written again from outside");
            s.write(0, new_rom);
            is_new = true;
        }
        n += 1;
        let mut g = s.boot(n, &args);
        let st = g.status();
        assert_eq!(st["mode"], "persistent", "seed {seed}: {st}");
        let (whole, strays) = config_state(&mut g);
        let (v2, _) = g.sh("test -e /etc/ovl-v2");
        // New ROM: the kept configuration, strays gone; old ROM: the old overlay as it was.
        if whole && (v2 == 0) == is_new && strays != is_new {
            healthy += 1;
        } else {
            mixed.push(format!(
                "seed {seed}: ROM new {is_new}, v2 marker {}, config whole {whole}, strays {strays}: {st}",
                v2 == 0
            ));
        }
        g.poweroff();
    }
    report("sysupgrade flash cut", healthy, &mixed);
}

/// OpenWrt's `sysupgrade.tgz` (a busybox `tar czf` at the top of the writable partition) is
/// restored through the same checks when the overlay starts afresh (here: `reset -k`, which
/// keeps it); a damaged keep container is set aside with the reason published.
#[test]
fn nor_an_openwrt_sysupgrade_tgz_is_restored_and_a_damaged_container_set_aside() {
    let s = Storage::new(NOR, &log_name(NOR, "sysupgrade-tgz"));
    let mut g = s.boot(1, &[]);
    g.run(KEEP_CONFIG);
    g.run("tar czf /overlay/sysupgrade.tgz -C / etc/config etc/keepdir etc/emptydir etc/sysupgrade.conf && sync");
    g.send("ovlctl reset -y -k -r");
    g.wait_exit();
    let mut g = s.boot(2, &[]);
    let st = g.status();
    assert_eq!(st["first_boot"]["upgrade"], "restored", "{st}");
    assert!(st["notes"].to_string().contains("sysupgrade.tgz"), "{st}");
    check_kept_config(&mut g);
    g.run("test ! -e /overlay/sysupgrade.tgz");
    g.run("printf 'OVLKEEP1 torn' > /overlay/.ovl-keep && sync");
    g.send("ovlctl reset -y -k -r");
    g.wait_exit();
    let mut g = s.boot(3, &[]);
    let st = g.status();
    assert_eq!(st["mode"], "persistent", "{st}");
    assert!(st["notes"].to_string().contains("damaged"), "{st}");
    assert_eq!(st["first_boot"]["upgrade"], Value::Null, "{st}");
    g.run("test -e /overlay/.ovl-keep.refused && test ! -e /overlay/.ovl-keep");
    g.run("test ! -e /etc/config/network");
    g.poweroff();
}

// ---- UBI on NOR: squashfs through ubiblock, UBIFS as the upper ----

const NOR_UBI: &str = "qemu-aarch64-nor-ubi";
const UBI_PEB: u64 = 256 * 1024;

/// The offset in the bank of the PEB holding LEB `lnum` of volume `vol`, from the VID headers
/// (at 64 in each PEB on this NOR: "UBI!", then vol_id and lnum big endian at 8 and 12).
fn ubi_peb_of(s: &Storage, vol: u32, lnum: u32) -> Option<u64> {
    let bank = s.read(0, 64 * MIB);
    bank.chunks(UBI_PEB as usize)
        .enumerate()
        .find_map(|(i, peb)| {
            let vid = &peb[64..64 + 16];
            let ok = &vid[..4] == b"UBI!"
                && u32::from_be_bytes(vid[8..12].try_into().unwrap()) == vol
                && u32::from_be_bytes(vid[12..16].try_into().unwrap()) == lnum;
            ok.then_some(i as u64 * UBI_PEB)
        })
}

#[test]
fn ubi_first_boot_persists_and_rom_files_can_be_renamed_and_removed() {
    let s = Storage::new(NOR_UBI, &log_name(NOR_UBI, "persist"));
    let mut g = s.boot(1, &[]);
    let st = g.status();
    assert_persistent(&st, "ubifs", "mount");
    assert_eq!(st["data"]["content"], "erased", "{st}");
    assert_eq!(st["data"]["device"], "/dev/ubi0_1", "{st}");
    assert_eq!(st["rom"]["device"], "/dev/ubiblock0_0", "{st}");
    assert_eq!(st["ubi"]["device"], "ubi0", "{st}");
    assert_eq!(st["ubi"]["volume"], "rootfs_data", "{st}");
    assert_eq!(st["ubi"]["bad_pebs"], 0, "{st}");
    assert!(g
        .run("ovlctl status")
        .contains("ubi0 volume rootfs_data on mtd"));
    g.run("echo first-boot > /etc/hello && rm /etc/banner && mkdir -p /root/dir && echo x > /root/dir/f");
    // What JFFS2 cannot do as the upper on a stock kernel: UBIFS has RENAME_WHITEOUT.
    for (what, cmd) in [
        ("rename of a lower file", "mv /etc/group /etc/group2"),
        ("rm -rf of a lower directory", "rm -rf /etc/ovl"),
        ("rename of a lower directory", "mv /etc/firstboot.d /etc/fb"),
        ("hardlink", "ln /etc/hello /etc/hello-hard"),
        ("fifo", "mkfifo /etc/fifo"),
    ] {
        let (code, out) = g.sh(cmd);
        assert_eq!(code, 0, "{what} (`{cmd}`) failed on UBIFS:\n{out}");
    }
    g.poweroff();

    let mut g = s.boot(2, &[]);
    let st = g.status();
    assert_persistent(&st, "ubifs", "mount");
    assert_eq!(st["data"]["content"], "ubifs", "{st}");
    assert!(g.run("cat /etc/hello /root/dir/f").contains("first-boot"));
    assert!(g.run("cat /etc/group2").contains("root"));
    g.run("test ! -e /etc/banner && test ! -e /etc/group && test ! -e /etc/ovl && test -d /etc/fb");
    assert!(
        g.run("cat /rom/etc/banner").contains("ovl"),
        "the ROM lost its copy"
    );
    g.poweroff();
}

#[test]
fn ubi_corrupt_data_volume_boots_on_tmpfs_and_the_flash_is_untouched() {
    let s = Storage::new(NOR_UBI, &log_name(NOR_UBI, "corrupt"));
    let g = s.boot(1, &[]);
    g.poweroff();
    let peb = ubi_peb_of(&s, 1, 0).expect("UBIFS wrote LEB 0 of rootfs_data");
    // The UBIFS superblock node (LEB 0, after UBI's two headers) becomes noise.
    s.write(peb + 128, &random(4096));
    let before = s.read(0, 64 * MIB);
    let mut g = s.boot(2, &[]);
    assert_tmpfs(&mut g, "tmpfs", "holds unknown, not ubifs; left untouched");
    g.poweroff();
    assert!(s.read(0, 64 * MIB) == before, "the flash changed");
}

#[test]
fn ubi_failsafe_leaves_the_flash_byte_identical() {
    let s = Storage::new(NOR_UBI, &log_name(NOR_UBI, "failsafe"));
    let mut g = s.boot(1, &[]);
    g.run("echo before > /etc/before && sync");
    g.poweroff();
    let before = s.read(0, 64 * MIB);
    let mut g = s.boot(2, &["--append", "ovl.failsafe"]);
    assert_tmpfs(&mut g, "failsafe", "failsafe requested");
    g.run("test ! -e /etc/before");
    g.poweroff();
    assert!(s.read(0, 64 * MIB) == before, "failsafe changed the flash");
}

/// A UBI image with the ROM volume only: preinit makes rootfs_data in the space left.
#[test]
fn ubi_missing_data_volume_is_made_from_the_free_space() {
    let s = Storage::new(NOR_UBI, &log_name(NOR_UBI, "missing"));
    let dir = s._dir.path();
    let rom = cache().join("images").join(NOR_UBI).join("rom.sqfs");
    std::fs::write(
        dir.join("ubinize.ini"),
        format!(
            "[rootfs]\nmode=ubi\nimage={}\nvol_id=0\nvol_type=dynamic\nvol_name=rootfs\nvol_size=16MiB\n",
            rom.display()
        ),
    )
    .unwrap();
    let out = Command::new("ubinize")
        .arg("-o")
        .arg(dir.join("ubi.img"))
        .args(["-p", "256KiB", "-m", "1"])
        .arg(dir.join("ubinize.ini"))
        .output()
        .unwrap();
    assert!(out.status.success(), "ubinize: {out:?}");
    let img = std::fs::read(dir.join("ubi.img")).unwrap();
    s.write(0, &vec![0xff; 64 * MIB as usize]);
    s.write(0, &img);
    let mut g = s.boot(1, &[]);
    let st = g.status();
    assert_persistent(&st, "ubifs", "mount");
    assert!(g.text().contains("made UBI volume rootfs_data"), "{st}");
    g.run("echo kept > /etc/kept");
    g.poweroff();
    let mut g = s.boot(2, &[]);
    assert!(g.run("cat /etc/kept").contains("kept"));
    g.poweroff();
}

/// From failsafe the writable volume is not mounted: reset empties it through UBI (a volume
/// update of no bytes), and the next boot formats it and starts from the ROM's state.
#[test]
fn ubi_reset_from_failsafe_empties_the_volume() {
    let s = Storage::new(NOR_UBI, &log_name(NOR_UBI, "reset"));
    let mut g = s.boot(1, &[]);
    g.run("echo old > /etc/old && rm /etc/banner && sync");
    g.poweroff();
    let mut g = s.boot(2, &["--append", "ovl.failsafe"]);
    let out = g.run("ovlctl reset -y");
    assert!(out.contains("emptied the UBI volume /dev/ubi0_1"), "{out}");
    g.poweroff();
    let mut g = s.boot(3, &[]);
    let st = g.status();
    assert_persistent(&st, "ubifs", "mount");
    assert_eq!(st["data"]["content"], "erased", "{st}");
    g.run("test ! -e /etc/old && test -e /etc/banner");
    g.poweroff();
}

#[test]
fn ubi_power_cut_after_sync_keeps_the_data() {
    power_cut_after_sync(NOR_UBI, "ubifs", "ubi-cut-after-sync");
}

#[test]
fn ubi_power_cut_during_writes_keeps_what_was_synced() {
    power_cut_during_writes(NOR_UBI, "ubifs", "ubi-cut-during-writes");
}

/// Without a board's selectors, `auto` finds the UBI volumes where OpenWrt has them: the
/// `ubi` MTD partition attached, `rootfs` and `rootfs_data` in it.
#[test]
fn ubi_auto_finds_rootfs_and_rootfs_data_in_the_ubi_partition() {
    let s = Storage::new(NOR_UBI, &log_name(NOR_UBI, "auto"));
    let mut g = s.boot(
        1,
        &["--append", "ovl.rom=auto ovl.data=auto ovl.fstype=auto"],
    );
    let st = g.status();
    assert_persistent(&st, "ubifs", "mount");
    assert_eq!(st["rom"]["device"], "/dev/ubiblock0_0", "{st}");
    g.poweroff();
}

/// A partition UBI refuses to attach (here bank 0: no UBI headers anywhere) is left as it
/// is; the boot goes to tmpfs and says what the kernel answered.
#[test]
fn ubi_a_partition_that_does_not_attach_boots_on_tmpfs_with_the_kernels_answer() {
    let s = Storage::new(NOR_UBI, &log_name(NOR_UBI, "no-attach"));
    let mut g = s.boot(1, &["--append", "ovl.data=ubi:bank0/rootfs_data"]);
    let st = assert_tmpfs(&mut g, "tmpfs", "UBI refused to attach mtd0 (bank0)");
    assert!(
        st["reason"].as_str().unwrap().contains("left untouched"),
        "{st}"
    );
    g.poweroff();
}

// ---- NAND: UBI on nandsim (its NAND lives in RAM: empty at every boot) ----

const NAND: &str = "qemu-armv7-nand";

/// nandsim's chip with three bad blocks (5 and 17 in the UBI partition, 540 in the second
/// one): UBI attaches the empty NAND around its bad blocks, preinit makes rootfs_data and
/// UBIFS formats it; then an image written to the second partition goes around block 540
/// (its block 28, 448 KiB in: inside even a small ROM) and reads back whole.
#[test]
fn nand_attaches_around_bad_blocks_and_a_flash_write_skips_them() {
    let s = Storage::new(NAND, &log_name(NAND, "bad-blocks"));
    let disk = s._dir.path().join("img.disk");
    let len = as_disk(
        &cache().join("images").join(NAND).join("sysupgrade.img"),
        &disk,
    );
    let mut g = s.boot(1, &["--disk", disk.to_str().unwrap()]);
    let st = g.status();
    assert_persistent(&st, "ubifs", "mount");
    assert_eq!(st["ubi"]["bad_pebs"], 2, "{st}");
    assert_eq!(st["ubi"]["volume"], "rootfs_data", "{st}");
    g.run("echo on-nand > /etc/nand && sync && cat /etc/nand");
    // nandsim flips a bit in about one page read in 1024 (bitflips=1): ECC corrects them and
    // what UBIFS gives back is what was written. The whole chip is read 16 times (about 45 flips
    // corrected in a run here; `noerror` reads on should a bad block answer with an error).
    g.run("dd if=/dev/urandom of=/root/big bs=64k count=16 2>/dev/null && md5sum /root/big > /tmp/sum && sync && echo 3 > /proc/sys/vm/drop_caches && md5sum -c /tmp/sum");
    let out = g.run(
        "for i in $(seq 16); do dd if=/dev/mtd2 of=/dev/null bs=16k conv=noerror 2>/dev/null; done; cat /sys/class/mtd/mtd2/corrected_bits",
    );
    let corrected: u64 = out
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .next_back()
        .unwrap_or(0);
    assert!(
        corrected > 0,
        "no bit flip corrected in 32 MiB of reads:\n{out}"
    );
    g.run("md5sum -c /tmp/sum");
    assert!(g
        .run("cat /proc/mtd")
        .contains("NAND simulator partition 1"));
    image_into_guest(&mut g, NAND, len, "/tmp/up.img");
    let out = g.run("ovlctl sysupgrade -n --no-reboot --rom-dev /dev/mtd3 /tmp/up.img 2>&1");
    assert!(out.contains("block 28 is bad; skipped"), "{out}");
    assert!(out.contains("written and verified"), "{out}");
    g.poweroff();
}

/// The keep container on UBIFS: `sysupgrade-keep`, then the next boot starts a fresh overlay
/// with the kept configuration restored and nothing else.
#[test]
fn ubi_sysupgrade_keep_restores_the_configuration_into_a_fresh_overlay() {
    let s = Storage::new(NOR_UBI, &log_name(NOR_UBI, "keep"));
    let mut g = s.boot(1, &[]);
    g.run(KEEP_CONFIG);
    g.run("ovlctl sysupgrade-keep");
    g.poweroff();
    let mut g = s.boot(2, &[]);
    let st = g.status();
    assert_persistent(&st, "ubifs", "mount");
    assert_eq!(st["first_boot"]["upgrade"], "restored", "{st}");
    check_kept_config(&mut g);
    g.run("test ! -e /overlay/.ovl-keep");
    g.poweroff();
}

/// On UBI the new ROM is staged beside the running one and put in place by the next preinit
/// before it mounts the ROM; the kept configuration comes back as on the other boards.
#[test]
fn ubi_sysupgrade_keeps_the_configuration_and_nothing_else() {
    sysupgrade_keeps_config(NOR_UBI);
}

/// Power cuts during a UBI upgrade (seeded, `OVL_CUTS` each): while `sysupgrade` stages the
/// new ROM beside the running one, and while the next preinit copies it into place. Every
/// boot after a cut has a ROM that is wholly old with the old configuration, or wholly new
/// with the kept one.
#[test]
fn ubi_power_cuts_during_an_upgrade_leave_the_old_or_the_new_rom_and_configuration() {
    let s = Storage::new(NOR_UBI, &log_name(NOR_UBI, "sysupgrade-cut"));
    let (disk, len) = v2_image(NOR_UBI, s._dir.path(), NOR_UBI);
    let args = ["--disk", disk.to_str().unwrap()];
    let mut g = s.boot(1, &args);
    g.run(KEEP_CONFIG);
    g.poweroff();
    let configured = std::fs::read(&s.path).unwrap();
    let base = seed();
    let mut n = 1;
    let check = |g: &mut Guest, seed: u64, what: &str, mixed: &mut Vec<String>| {
        let st = g.status();
        let (whole, strays) = config_state(g);
        let (v2, _) = g.sh("test -e /etc/ovl-v2");
        let new = v2 == 0;
        println!("{what}: seed {seed}: ROM new {new}, config whole {whole}, strays {strays}");
        let ok = st["mode"] == "persistent" && whole && strays != new;
        if !ok {
            mixed.push(format!(
                "{what}: seed {seed}: ROM new {new}, strays {strays}: {st}"
            ));
        }
        ok
    };

    // 1. While staging (about 0.3 s after the backup under TCG).
    let (mut healthy, mut mixed) = (0, Vec::new());
    for seed in base..base + cuts() {
        let delay = Duration::from_millis(Rng(seed ^ 0x57a9).next() % 500);
        std::fs::write(&s.path, &configured).unwrap();
        n += 1;
        let mut g = s.boot(n, &args);
        image_into_guest(&mut g, NOR_UBI, len, "/tmp/v2.img");
        g.send("ovlctl sysupgrade /tmp/v2.img");
        g.wait_for_soon("keeping", CMD_TIMEOUT);
        std::thread::sleep(delay);
        g.power_cut();
        n += 1;
        let mut g = s.boot(n, &args);
        healthy += u64::from(check(
            &mut g,
            seed,
            &format!("stage cut {delay:?}"),
            &mut mixed,
        ));
        g.poweroff();
    }
    report("ubi stage cut", healthy, &mixed);

    // 2. While the next preinit copies it into place.
    std::fs::write(&s.path, &configured).unwrap();
    n += 1;
    let mut g = s.boot(n, &args);
    image_into_guest(&mut g, NOR_UBI, len, "/tmp/v2.img");
    g.send("ovlctl sysupgrade /tmp/v2.img");
    g.wait_for("written and verified", CMD_TIMEOUT);
    g.wait_exit();
    let staged = std::fs::read(&s.path).unwrap();
    let (mut healthy, mut mixed) = (0, Vec::new());
    for seed in base..base + cuts() {
        let delay = Duration::from_millis(Rng(seed ^ 0xc09e).next() % 400);
        std::fs::write(&s.path, &staged).unwrap();
        n += 1;
        let mut g = Guest::start(&s, n, &args);
        g.wait_for_soon("preinit: attached", BOOT_TIMEOUT);
        std::thread::sleep(delay);
        let copied = g.text().contains("copied into place");
        g.power_cut();
        n += 1;
        let mut g = s.boot(n, &args);
        let what = format!("copy cut {delay:?} (copied before the cut: {copied})");
        let ok = check(&mut g, seed, &what, &mut mixed);
        // The copy was staged whole: the boot after any cut has the new ROM.
        let (v2, _) = g.sh("test -e /etc/ovl-v2");
        if ok && v2 == 0 {
            healthy += 1;
        } else if ok {
            mixed.push(format!("{what}: seed {seed}: the staged ROM was lost"));
        }
        g.poweroff();
    }
    report("ubi copy cut", healthy, &mixed);
}

/// A reset of the unmounted UBIFS volume on NAND (bad blocks and all), within one failsafe
/// boot since the NAND lives in RAM: files written to the volume are gone after the reset,
/// and the volume mounts again as an empty UBIFS.
#[test]
fn nand_reset_of_the_unmounted_volume_empties_it() {
    let s = Storage::new(NAND, &log_name(NAND, "reset"));
    let mut g = s.boot(1, &["--append", "ovl.failsafe"]);
    assert_eq!(g.status()["mode"], "failsafe");
    // The first look attaches the NAND and makes the volume; it is empty.
    let out = g.run("ovlctl reset -y");
    assert!(out.contains("is empty"), "{out}");
    g.run("mkdir -p /tmp/v && mount -t ubifs /dev/ubi0_0 /tmp/v && echo old > /tmp/v/old && sync && umount /tmp/v");
    let out = g.run("ovlctl reset -y");
    assert!(out.contains("emptied the UBI volume /dev/ubi0_0"), "{out}");
    g.run("mount -t ubifs /dev/ubi0_0 /tmp/v && test ! -e /tmp/v/old && umount /tmp/v");
    assert!(g.run("cat /sys/class/ubi/ubi0/bad_peb_count").contains('2'));
    g.poweroff();
}

/// Power cuts at seeded random points of a reset from failsafe on the UBI board: the next
/// boot is persistent and nothing from before the reset is back, or (a cut before the reset
/// began) everything is as it was.
#[test]
fn ubi_power_cuts_during_a_reset_never_bring_back_part_of_the_old_state() {
    let s = Storage::new(NOR_UBI, &log_name(NOR_UBI, "reset-cut"));
    let mut g = s.boot(1, &[]);
    g.run("echo old > /etc/old && mkdir -p /root/old && echo x > /root/old/f && rm /etc/banner && sync");
    g.poweroff();
    let before = std::fs::read(&s.path).unwrap();
    let base = seed();
    let (mut healthy, mut mixed) = (0, Vec::new());
    let mut n = 1;
    for seed in base..base + cuts() {
        let delay = Duration::from_millis(Rng(seed ^ 0x7e5e).next() % 600);
        std::fs::write(&s.path, &before).unwrap();
        n += 1;
        let mut g = s.boot(n, &["--append", "ovl.failsafe"]);
        g.send("ovlctl reset -y");
        std::thread::sleep(delay);
        g.power_cut();
        n += 1;
        let mut g = s.boot(n, &[]);
        let st = g.status();
        let present: Vec<bool> = ["/etc/old", "/root/old/f"]
            .iter()
            .map(|f| g.sh(&format!("test -e {f}")).0 == 0)
            .collect();
        let (banner, _) = g.sh("test -e /etc/banner");
        let old = present.iter().all(|&p| p) && banner != 0;
        let reset = present.iter().all(|&p| !p) && banner == 0;
        println!("ubi reset cut: seed {seed}, {delay:?}: old state {old}, reset {reset}");
        if st["mode"] == "persistent" && (old || reset) {
            healthy += 1;
        } else {
            mixed.push(format!("seed {seed}, {delay:?}: {st}"));
        }
        g.poweroff();
    }
    report("ubi reset cut", healthy, &mixed);
}

#[test]
fn ubi_reset_of_the_mounted_overlay_brings_back_the_rom_and_reruns_first_boot() {
    mounted_reset(NOR_UBI);
}
