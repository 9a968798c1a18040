//! preinit: probe -> plan -> apply, then exec the real init.
//!
//! Never panics and never gives up: any failure on the way to a persistent overlay ends in the
//! tmpfs fallback with the reason logged and published; if even that fails, init runs on the
//! ROM alone, loudly; and if no init can be executed, PID 1 reboots rather than hang.

use crate::apply::{self, Done};
use crate::board::{Board, Selector};
use crate::cmdline::Cmdline;
use crate::plan::{self, BootKind, Layout, Mode, Plan, PlanInput, Request};
use crate::probe::{self, Sources, Wanted};
use crate::state::{self, fit, State};
use crate::sys::Sys;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const DEFAULT_BOARD: &str = "etc/ovl/board.json";
pub const DEFAULT_INIT: &str = "/sbin/init";
pub const DEFAULT_MKFS: &str = "/usr/sbin/mkfs.ext4";
pub const DEFAULT_TIMEOUT_MS: u32 = 3000;
pub const DEFAULT_TMPFS_SIZE: &str = "50%";

/// Inputs that are fixed on a device and given as flags in tests.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The root preinit works in: `/` on a device.
    pub target: PathBuf,
    /// Kernel command line file; default `<target>/proc/cmdline`.
    pub cmdline_file: Option<PathBuf>,
    /// Board file; default `<target>/etc/ovl/board.json`, or `ovl.board=`.
    pub board_file: Option<PathBuf>,
    /// sysfs tree to probe block devices in; default `<target>/sys`.
    pub sysfs: Option<PathBuf>,
    /// Force the boot kind instead of telling it from the root's filesystem.
    pub boot: Option<BootKind>,
    /// Arguments for init (the kernel passes them to PID 1).
    pub init_args: Vec<String>,
    /// Log to `<target>/dev/kmsg` (set when running as PID 1).
    pub kmsg: bool,
}

struct Clock {
    start: Instant,
    last: Instant,
    state: State,
}

impl Clock {
    fn lap(&mut self, step: &str) {
        let now = Instant::now();
        self.state
            .add_step(step, now.duration_since(self.last).as_micros() as u64);
        self.last = now;
    }
}

fn boottime_us() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
        .unwrap_or(0)
}

fn detect_boot(target: &Path) -> BootKind {
    if crate::sys::is_ram_fs(target) {
        BootKind::Initramfs
    } else {
        BootKind::Rootfs
    }
}

/// A directory is a mount point when it sits on another device than its parent.
fn is_mountpoint(dir: &Path) -> bool {
    let (Ok(d), Some(parent)) = (std::fs::metadata(dir), dir.parent()) else {
        return false;
    };
    std::fs::metadata(parent)
        .map(|p| p.dev() != d.dev())
        .unwrap_or(false)
}

fn parse_timeout(s: &str) -> Option<Duration> {
    let secs: f64 = s.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

/// Runs preinit to the exec of init. Returns only when nothing could be executed and the
/// caller is not PID 1 (the exit code), or in tests with a double that "execs".
pub fn run(opts: &Options, sys: &mut dyn Sys) -> i32 {
    let started_us = boottime_us();
    let now = Instant::now();
    let mut clock = Clock {
        start: now,
        last: now,
        state: State {
            version: state::VERSION,
            started_us,
            ..State::default()
        },
    };
    let target = opts.target.clone();
    let boot = opts.boot.unwrap_or_else(|| detect_boot(&target));
    let run_name = if boot == BootKind::Rootfs && !target.join("run").is_dir() {
        "tmp"
    } else {
        "run"
    };
    let layout = Layout {
        target: target.clone(),
        boot,
        run_name,
    };

    // 1. The API file systems.
    let early = plan::early_mounts(&layout, |d| is_mountpoint(&target.join(d)));
    let mut ignored = Done::default();
    let mut static_dev = false;
    for step in &early {
        if let Err(e) = apply::run(sys, std::slice::from_ref(step), &mut ignored) {
            log::error!("{e}");
            if matches!(step, plan::Step::Mount(m) if m.fstype == "devtmpfs") {
                static_dev = static_dev_fallback(sys, &target.join("dev"));
            }
        }
    }
    if opts.kmsg {
        crate::klog::to_kmsg(&target.join("dev/kmsg"));
    }
    log::info!("starting ({} boot)", boot.name());
    clock.lap("setup");

    // 2. Command line and board.
    let cmdline_path = opts
        .cmdline_file
        .clone()
        .unwrap_or_else(|| target.join("proc/cmdline"));
    let cmdline = match std::fs::read_to_string(&cmdline_path) {
        Ok(t) => Cmdline::parse(&t),
        Err(e) => {
            log::error!("read {}: {e}; using defaults", cmdline_path.display());
            Cmdline::default()
        }
    };
    let board_path = match (cmdline.get("ovl.board"), &opts.board_file) {
        (Some(p), _) if !p.is_empty() => target.join(p.trim_start_matches('/')),
        (_, Some(p)) => p.clone(),
        _ => target.join(DEFAULT_BOARD),
    };
    let board_path_s = board_path.display().to_string();
    let (board, board_error) = if board_path.exists() {
        match Board::load(&board_path_s) {
            Ok(b) => (b, None),
            Err(e) => {
                log::error!("{e}");
                (Board::default(), Some(e.to_string()))
            }
        }
    } else {
        log::info!("no board file at {board_path_s}; using defaults");
        (Board::default(), None)
    };
    if !board.name.is_empty() {
        clock.state.board = Some(fit(&board.name));
    }

    // 3. Modules.
    let module_dir = board
        .module_dir
        .as_deref()
        .map(|d| target.join(d.trim_start_matches('/')))
        .unwrap_or_else(|| {
            let release = nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default();
            target.join("lib/modules").join(release)
        });
    load_modules(
        &board,
        &cmdline,
        &module_dir,
        &target,
        sys,
        &mut clock.state,
    );
    clock.lap("modules");

    // 4. Find the ROM and the writable partition.
    let request = if cmdline.flag("ovl.failsafe") || cmdline.flag("failsafe") {
        Request::Failsafe
    } else if cmdline.flag("ovl.volatile") {
        Request::Volatile
    } else {
        Request::Normal
    };
    let mut selector_errors = Vec::new();
    let mut selector = |cmd: Option<&str>, board: Option<&str>, what: &str| -> Selector {
        let text = cmd.or(board).unwrap_or("auto");
        Selector::parse(text).unwrap_or_else(|e| {
            selector_errors.push(format!("{what}: {e}"));
            Selector::Auto
        })
    };
    // root= is the kernel's own way to name the ROM; it may use the PARTLABEL=/LABEL= forms.
    let rom_sel = selector(
        cmdline.get("ovl.rom").or_else(|| cmdline.get("root")),
        board.rom.as_deref(),
        "ovl.rom",
    );
    let data_sel = selector(cmdline.get("ovl.data"), board.data.as_deref(), "ovl.data");
    let timeout = cmdline
        .get("ovl.timeout")
        .and_then(parse_timeout)
        .unwrap_or_else(|| {
            Duration::from_millis(board.device_timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS) as u64)
        });
    let src = Sources {
        proc_dir: target.join("proc"),
        sys_dir: opts.sysfs.clone().unwrap_or_else(|| target.join("sys")),
        dev_dir: target.join("dev"),
        make_nodes: static_dev,
    };
    let wanted = Wanted {
        rom: (boot == BootKind::Initramfs).then_some(rom_sel),
        data: (request != Request::Failsafe).then_some(data_sel),
        timeout,
    };
    let found = probe::find(&wanted, &src, sys);
    let mut data = found.data;
    if let Some(e) = board_error.or_else(|| selector_errors.first().cloned()) {
        data = Err(e);
    }
    match &data {
        Ok(d) => log::info!("writable partition {} holds {}", d.device, d.content.name()),
        Err(e) if request == Request::Normal => log::warn!("{e}"),
        Err(_) => {}
    }
    if let Ok(r) = &found.rom {
        clock.state.rom = Some(fit(&r.device));
    } else if boot == BootKind::Rootfs {
        clock.state.rom = Some(fit("/"));
    }
    if let Ok(d) = &data {
        clock.state.data = Some(fit(&d.device));
        clock.state.data_content = Some(fit(d.content.name()));
    }
    clock.lap("find");

    // 5. Plan and apply.
    let input = PlanInput {
        layout: layout.clone(),
        request,
        rom: found.rom.clone(),
        data,
        fs: board.fs_choice_or(cmdline.get("ovl.fstype")),
        format: board.format_policy(),
        mkfs: board.mkfs.as_deref().unwrap_or(DEFAULT_MKFS).to_string(),
        data_label: board
            .data_label
            .as_deref()
            .unwrap_or("rootfs_data")
            .to_string(),
        tmpfs_size: cmdline
            .get("ovl.tmpfs_size")
            .or(board.tmpfs_size.as_deref())
            .unwrap_or(DEFAULT_TMPFS_SIZE)
            .to_string(),
    };
    let init = choose_init(&cmdline, &board, boot);
    clock.state.init = fit(&init);

    if let (BootKind::Initramfs, Err(why)) = (boot, &found.rom) {
        return last_resort(sys, &layout, &mut clock, false, why, &init, opts);
    }
    let mut plan = plan::build(&input);
    let mut done = Done::default();
    if let Err(e) = apply::run(sys, &plan.rom, &mut done) {
        return last_resort(sys, &layout, &mut clock, false, &e.to_string(), &init, opts);
    }
    clock.lap("rom");
    let rom_mounts = std::mem::take(&mut done.mounts);

    let upper_and_root = |plan: &Plan, sys: &mut dyn Sys, clock: &mut Clock| {
        let mut done = Done::default();
        let r = apply::run(sys, &plan.upper, &mut done)
            .map(|_| clock.lap("upper"))
            .and_then(|_| apply::run(sys, &plan.root, &mut done));
        if r.is_err() {
            apply::undo(sys, &mut done);
        }
        r
    };
    if let Err(e) = upper_and_root(&plan, sys, &mut clock) {
        if plan.mode != Mode::Persistent {
            return last_resort(
                sys,
                &layout,
                &mut clock,
                !rom_mounts.is_empty(),
                &e.to_string(),
                &init,
                opts,
            );
        }
        log::error!("{e}");
        plan = plan::with_tmpfs(plan, &input, Mode::Tmpfs, e.to_string());
        if let Err(e2) = upper_and_root(&plan, sys, &mut clock) {
            let why = format!("{e}; then the tmpfs overlay failed too: {e2}");
            return last_resort(
                sys,
                &layout,
                &mut clock,
                !rom_mounts.is_empty(),
                &why,
                &init,
                opts,
            );
        }
    }
    clock.lap("root");
    match (&plan.mode, &plan.reason) {
        (Mode::Persistent, _) => log::info!(
            "persistent overlay on {} ({}, {})",
            clock.state.data.as_deref().unwrap_or("?"),
            plan.data_fstype.unwrap_or("?"),
            plan.data_action.unwrap_or("?")
        ),
        (m, Some(why)) => log::warn!("{} overlay: {why}", m.name()),
        (m, None) => log::warn!("{} overlay", m.name()),
    }
    clock.state.mode = fit(plan.mode.name());
    clock.state.reason = plan.reason.as_deref().map(fit);
    clock.state.data_fstype = plan.data_fstype.map(fit);
    clock.state.data_action = plan.data_action.map(fit);
    clock.state.boot = fit(boot.name());

    // 6. Switch into the new root.
    if let Err(e) = apply::run(sys, &plan.switch, &mut Done::default()) {
        // Part of the switch may have happened; init in whatever root we have beats none.
        let why = format!("switching into the overlay failed: {e}");
        log::error!("{why}");
        clock.state.mode = fit(Mode::Rom.name());
        clock.state.reason = Some(fit(&why));
        return exec_init(sys, &layout, &mut clock, &init, opts);
    }
    clock.lap("switch");
    exec_init(sys, &layout, &mut clock, &init, opts)
}

/// A kernel without devtmpfs: a tmpfs on /dev with the nodes preinit and init need first;
/// the storage devices' nodes are made by probe as they appear. Returns whether it worked.
fn static_dev_fallback(sys: &mut dyn Sys, dev: &Path) -> bool {
    use crate::sys::MountSpec;
    use nix::mount::MsFlags;
    let tmpfs = MountSpec {
        source: "dev".into(),
        target: dev.to_path_buf(),
        fstype: "tmpfs".into(),
        flags: MsFlags::MS_NOSUID,
        data: "mode=0755".into(),
    };
    if let Err(e) = sys.mount(&tmpfs) {
        log::error!("{e}");
        return false;
    }
    // The numbers are fixed by the kernel (Documentation/admin-guide/devices.txt).
    for (name, mode, major, minor) in [
        ("console", 0o600, 5, 1),
        ("null", 0o666, 1, 3),
        ("zero", 0o666, 1, 5),
        ("urandom", 0o666, 1, 9),
        ("kmsg", 0o644, 1, 11),
        ("loop-control", 0o660, 10, 237),
    ] {
        if let Err(e) = sys.mknod(&dev.join(name), false, mode, major, minor) {
            log::warn!("{e}");
        }
    }
    log::warn!("no devtmpfs: /dev is a tmpfs with nodes made from sysfs");
    true
}

fn choose_init(cmdline: &Cmdline, board: &Board, boot: BootKind) -> String {
    // With an initramfs the kernel ignores init= and leaves it to us; booted from the ROM,
    // init= is preinit itself.
    let kernel_init = match boot {
        BootKind::Initramfs => cmdline.get("init"),
        BootKind::Rootfs => None,
    };
    cmdline
        .get("ovl.init")
        .or(kernel_init)
        .filter(|s| !s.is_empty())
        .or(board.init.as_deref())
        .unwrap_or(DEFAULT_INIT)
        .to_string()
}

fn load_modules(
    board: &Board,
    cmdline: &Cmdline,
    dir: &Path,
    target: &Path,
    sys: &mut dyn Sys,
    state: &mut State,
) {
    for m in &board.modules {
        let name = crate::cmdline::normalize_module(&m.name);
        // Built in, or loaded already (by the kernel or an earlier entry).
        if target.join("sys/module").join(&name).exists() {
            continue;
        }
        let file = [format!("{}.ko", m.name), format!("{name}.ko")]
            .into_iter()
            .map(|f| dir.join(f))
            .find(|p| p.exists());
        let Some(file) = file else {
            log::warn!("module {} not found in {}", m.name, dir.display());
            let _ = state.modules_failed.push(fit(&m.name));
            continue;
        };
        // The kernel passes module.param= only to modules it loads itself: pass them here.
        let mut params = m.params.as_deref().unwrap_or("").to_string();
        let extra = cmdline.module_params(&m.name);
        if !extra.is_empty() {
            if !params.is_empty() {
                params.push(' ');
            }
            params.push_str(&extra);
        }
        match sys.finit_module(&file, &params) {
            Ok(()) => state.modules_loaded += 1,
            Err(e) if e.errno == Some(nix::errno::Errno::EEXIST) => {}
            Err(e) => {
                log::warn!("{e}");
                let _ = state.modules_failed.push(fit(&m.name));
            }
        }
    }
    if state.modules_loaded > 0 {
        log::info!("loaded {} modules", state.modules_loaded);
    }
}

/// No overlay could be built: run init on the ROM alone, read-only, and say so loudly.
fn last_resort(
    sys: &mut dyn Sys,
    layout: &Layout,
    clock: &mut Clock,
    rom_mounted: bool,
    why: &str,
    init: &str,
    opts: &Options,
) -> i32 {
    log::error!("NO OVERLAY: {why}");
    log::error!("running init on the read-only ROM as a last resort");
    clock.state.mode = fit(Mode::Rom.name());
    clock.state.reason = Some(fit(why));
    clock.state.boot = fit(layout.boot.name());
    let steps = plan::rom_only(layout, rom_mounted);
    if let Err(e) = apply::run(sys, &steps, &mut Done::default()) {
        log::error!("{e}");
    }
    exec_init(sys, layout, clock, init, opts)
}

fn write_state(sys: &mut dyn Sys, layout: &Layout, state: &State) {
    let json = match state.to_json() {
        Ok(j) => j,
        Err(e) => {
            log::error!("state: {e}");
            return;
        }
    };
    // After the switch the run-time tmpfs is at /run; if the switch did not happen it is
    // still below the target.
    let after = plan::after_switch(layout, &layout.run_dir());
    for dir in [after, layout.run_dir()] {
        let dir = dir.join(state::STATE_DIR);
        if sys.mkdir_p(&dir).is_ok() && sys.write_file(&dir.join(state::STATE_FILE), &json).is_ok()
        {
            return;
        }
    }
    log::error!("could not write the state file");
}

fn exec_init(
    sys: &mut dyn Sys,
    layout: &Layout,
    clock: &mut Clock,
    init: &str,
    opts: &Options,
) -> i32 {
    clock.state.total_us = clock.start.elapsed().as_micros() as u64;
    clock.state.peak_rss_kib =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
            .map(|u| u.max_rss().max(0) as u64)
            .unwrap_or(0);
    write_state(sys, layout, &clock.state);
    let mut tried = Vec::new();
    for cand in [init, DEFAULT_INIT, "/etc/init", "/bin/init", "/bin/sh"] {
        if tried.contains(&cand) {
            continue;
        }
        tried.push(cand);
        let mut argv = vec![cand.to_string()];
        argv.extend(opts.init_args.iter().cloned());
        match sys.exec(Path::new(cand), &argv) {
            Ok(()) => return 0,
            Err(e) => log::error!("{e}"),
        }
    }
    log::error!("no init could be executed (tried {})", tried.join(", "));
    if nix::unistd::getpid().as_raw() == 1 {
        // PID 1 must not exit (the kernel would panic); a reboot may bring a working boot.
        std::thread::sleep(Duration::from_secs(5));
        if let Err(e) = sys.reboot() {
            log::error!("{e}");
        }
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::record::Recorder;
    use nix::errno::Errno;

    /// A scratch target with a ROM and data partition as regular files, and a fake sysfs.
    struct T {
        dir: tempfile::TempDir,
    }

    impl T {
        fn new(cmdline: &str, board: Option<&str>, data: &[u8]) -> T {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path();
            for d in [
                "proc",
                "sys/class/block/vda1",
                "sys/class/block/vda2",
                "dev",
                "run",
                "etc/ovl",
            ] {
                std::fs::create_dir_all(p.join(d)).unwrap();
            }
            std::fs::write(p.join("cmdline"), cmdline).unwrap();
            if let Some(b) = board {
                std::fs::write(p.join("etc/ovl/board.json"), b).unwrap();
            }
            let mut rom = vec![0u8; 4096];
            rom[..4].copy_from_slice(b"hsqs");
            std::fs::write(p.join("dev/vda1"), rom).unwrap();
            std::fs::write(p.join("dev/vda2"), data).unwrap();
            for (n, name) in [("vda1", "rootfs"), ("vda2", "rootfs_data")] {
                std::fs::write(
                    p.join("sys/class/block").join(n).join("uevent"),
                    format!("DEVNAME={n}\nDEVTYPE=partition\nPARTNAME={name}\n"),
                )
                .unwrap();
            }
            T { dir }
        }

        fn opts(&self) -> Options {
            Options {
                target: self.dir.path().to_path_buf(),
                cmdline_file: Some(self.dir.path().join("cmdline")),
                boot: Some(BootKind::Initramfs),
                init_args: vec!["single".into()],
                ..Options::default()
            }
        }

        fn p(&self, rel: &str) -> String {
            self.dir.path().join(rel).display().to_string()
        }
    }

    fn ext4() -> Vec<u8> {
        let mut v = vec![0u8; 4096];
        v[0x438..0x43a].copy_from_slice(&[0x53, 0xef]);
        v
    }

    #[test]
    fn persistent_boot_mounts_in_order_then_execs_init() {
        let t = T::new("ovl.timeout=0.2", None, &ext4());
        let mut r = Recorder::new();
        assert_eq!(run(&t.opts(), &mut r), 0);
        let rom = r
            .position(&format!(
                "mount {} on {} (squashfs, ro)",
                t.p("dev/vda1"),
                t.p("rom")
            ))
            .unwrap();
        let data = r
            .position(&format!(
                "mount {} on {} (ext4)",
                t.p("dev/vda2"),
                t.p("overlay")
            ))
            .unwrap();
        let ovl = r.position("mount ovl:persistent").unwrap();
        let switch = r.position("move . ").unwrap();
        let state = r.position("run/ovl/state.json").unwrap();
        let exec = r
            .position("exec /sbin/init [\"/sbin/init\", \"single\"]")
            .unwrap();
        assert!(
            rom < data && data < ovl && ovl < switch && switch < state && state < exec,
            "{:#?}",
            r.calls
        );
    }

    #[test]
    fn overlay_refusing_the_upper_falls_back_to_tmpfs() {
        let t = T::new("", None, &ext4());
        let mut r = Recorder::new().failing("mount ovl:persistent", Errno::EINVAL);
        assert_eq!(run(&t.opts(), &mut r), 0);
        let failed = r.position("mount ovl:persistent").unwrap();
        let undo = r.position(&format!("umount {}", t.p("overlay"))).unwrap();
        let tmpfs = r.position("mount ovl-tmpfs").unwrap();
        let ovl = r.position("mount ovl:tmpfs").unwrap();
        assert!(
            failed < undo && undo < tmpfs && tmpfs < ovl,
            "{:#?}",
            r.calls
        );
        assert!(r.position("exec /sbin/init").is_some());
    }

    #[test]
    fn data_mount_error_falls_back_to_tmpfs() {
        let t = T::new("", None, &ext4());
        let mut r = Recorder::new().failing("(ext4)", Errno::EUCLEAN);
        assert_eq!(run(&t.opts(), &mut r), 0);
        assert!(r.position("mount ovl:tmpfs").is_some(), "{:#?}", r.calls);
    }

    #[test]
    fn missing_rom_runs_init_in_place_as_last_resort() {
        let t = T::new("ovl.rom=/dev/none ovl.timeout=0.05", None, &ext4());
        let mut r = Recorder::new();
        assert_eq!(run(&t.opts(), &mut r), 0);
        assert!(
            !r.calls.iter().any(|c| c.contains("overlay")),
            "{:#?}",
            r.calls
        );
        assert!(r.position("exec /sbin/init").is_some());
    }

    #[test]
    fn tmpfs_failing_too_ends_on_the_rom_read_only() {
        let t = T::new("", None, &ext4());
        let mut r = Recorder::new().failing("(overlay", Errno::EINVAL);
        assert_eq!(run(&t.opts(), &mut r), 0);
        let switch = r
            .position(&format!("chdir {}", t.p("rom")))
            .expect("switches into the ROM");
        assert!(
            switch < r.position("exec /sbin/init").unwrap(),
            "{:#?}",
            r.calls
        );
    }

    #[test]
    fn malformed_board_falls_back_and_init_failures_try_the_next() {
        let t = T::new("", Some(r#"{"name": 3}"#), &ext4());
        let mut r = Recorder::new().failing("exec /sbin/init", Errno::ENOENT);
        assert_eq!(run(&t.opts(), &mut r), 0);
        assert!(r.position("mount ovl:tmpfs").is_some());
        assert!(r.position("exec /etc/init").is_some(), "{:#?}", r.calls);
    }

    #[test]
    fn nothing_to_exec_returns_an_error_code_when_not_pid1() {
        let t = T::new("", None, &ext4());
        let mut r = Recorder::new().failing("exec ", Errno::ENOENT);
        assert_eq!(run(&t.opts(), &mut r), 1);
    }

    #[test]
    fn modules_get_board_and_command_line_params() {
        let t = T::new(
            "foo.b=2 ovl.timeout=0.05",
            Some(
                r#"{"name":"b","module_dir":"/mods","modules":[{"name":"foo","params":"a=1"},{"name":"missing"}]}"#,
            ),
            &ext4(),
        );
        std::fs::create_dir_all(t.dir.path().join("mods")).unwrap();
        std::fs::write(t.dir.path().join("mods/foo.ko"), b"").unwrap();
        let mut r = Recorder::new();
        run(&t.opts(), &mut r);
        assert!(
            r.position(&format!("finit_module {} \"a=1 b=2\"", t.p("mods/foo.ko")))
                .is_some(),
            "{:#?}",
            r.calls
        );
    }

    #[test]
    fn without_devtmpfs_dev_is_a_tmpfs_with_the_basic_nodes() {
        let t = T::new("ovl.timeout=0.05", None, &ext4());
        let mut r = Recorder::new().failing("(devtmpfs", Errno::ENODEV);
        assert_eq!(run(&t.opts(), &mut r), 0);
        let dev = t.p("dev");
        let tmpfs = r
            .position(&format!("mount dev on {dev} (tmpfs"))
            .expect("tmpfs on /dev");
        let console = r
            .position(&format!("mknod {dev}/console c 600 5:1"))
            .unwrap();
        assert!(tmpfs < console, "{:#?}", r.calls);
        assert!(r.position("exec /sbin/init").is_some());
    }

    #[test]
    fn init_choice() {
        let b = Board::default();
        let c = Cmdline::parse("init=/bin/x");
        assert_eq!(choose_init(&c, &b, BootKind::Initramfs), "/bin/x");
        assert_eq!(choose_init(&c, &b, BootKind::Rootfs), DEFAULT_INIT);
        let c = Cmdline::parse("init=/bin/x ovl.init=/bin/y");
        assert_eq!(choose_init(&c, &b, BootKind::Rootfs), "/bin/y");
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_timeout("-1"), None);
        assert_eq!(parse_timeout("soon"), None);
    }
}
