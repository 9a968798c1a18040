//! preinit: the boot, as one story.
//!
//! 1. setup: the API file systems, logging;
//! 2. inputs: the command line and the board file, resolved once into a [`Config`];
//! 3. modules; 4. find the ROM and the writable partition; 5. plan (pure);
//! 6. the fallback ladder ([`ladder`]): persistent, then tmpfs, then the ROM alone, then a
//!    reboot, each rung undone completely before the next is tried;
//! 7. publish the state once and exec init.
//!
//! Never panics and never gives up: every failure on the way to a persistent overlay ends in
//! the tmpfs fallback with the reason logged and published.

use crate::apply::{self, Done};
use crate::board::{Board, Selector};
use crate::cmdline::Cmdline;
use crate::config::{self, Config, Value};
use crate::plan::{self, BootKind, Layout, Mode, Plan, PlanInput, Request, Step};
use crate::probe::{self, Sources, Wanted};
use crate::state::{self, fit, State};
use crate::sys::{Sys, SysError};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const DEFAULT_BOARD: &str = "etc/ovl/board.json";
/// How long the console shows why a boot cannot go on before PID 1 reboots.
pub const REBOOT_DELAY: Duration = Duration::from_secs(10);
/// Inits tried after the configured one, in order.
const FALLBACK_INITS: [&str; 4] = [config::DEFAULT_INIT, "/etc/init", "/bin/init", "/bin/sh"];

/// Inputs that are fixed on a device and given as flags in tests.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The root preinit works in: `/` on a device. Nothing outside it is written or executed.
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
    /// PID 1: a dead end reboots instead of returning.
    pub pid1: bool,
    /// The previous attempt of this boot crashed (`OVL_CRASHED`, see crate::crash): boot on
    /// tmpfs and leave the writable partition alone.
    pub crashed: Option<String>,
}

/// Step timings and the state being published.
struct Clock {
    start: Instant,
    last: Instant,
    state: State,
    /// `ovl.test.crash=STEP`: crash after this step (tests of crate::crash).
    crash_at: Option<String>,
}

impl Clock {
    fn lap(&mut self, step: &str) {
        let now = Instant::now();
        let us = crate::decimal::micros(now.duration_since(self.last));
        self.state.add_step(step, us);
        #[cfg(feature = "timing")]
        crate::timing::push(&format!("[{step}]"), us);
        self.last = now;
        crate::crash::step_done(step);
        if self.crash_at.as_deref() == Some(step) {
            crash_for_test(step);
        }
    }
}

/// A real panic, for the tests that show a crashing preinit still boots (crate::crash).
#[allow(clippy::panic)]
fn crash_for_test(step: &str) {
    panic!("ovl.test.crash={step}");
}

fn boottime_us() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| {
            let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
            let us = u64::try_from(t.tv_nsec()).unwrap_or(0) / 1000;
            secs.saturating_mul(1_000_000).saturating_add(us)
        })
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

/// Runs preinit to the exec of init. Returns only when nothing could be executed and the
/// caller is not PID 1 (the exit code), or in tests with a double that "execs".
pub fn run(opts: &Options, sys: &mut dyn Sys) -> i32 {
    let now = Instant::now();
    let mut clock = Clock {
        start: now,
        last: now,
        state: State {
            version: state::VERSION,
            started_us: boottime_us(),
            ..State::default()
        },
        crash_at: None,
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
    clock.state.boot = fit(boot.name());

    // 1. The API file systems.
    let static_dev = setup(sys, &layout);
    if opts.kmsg {
        crate::klog::to_kmsg(&target.join("dev/kmsg"));
    }
    log::info!("starting ({} boot)", boot.name());
    if opts.crashed.is_some() {
        undo_previous_attempt(sys, &layout);
    }
    clock.lap("setup");

    // 2. Command line and board, resolved once.
    let (cmdline, board, board_error) =
        crate::timed!("command line and board file", read_inputs(opts, &target));
    if !board.name.is_empty() {
        clock.state.board = Some(fit(&board.name));
    }
    let mut cfg = Config::resolve(&cmdline, &board, boot);
    for note in &cfg.notes {
        log::warn!("{note}");
        clock.state.add_note(note);
    }
    if let Some(crash) = &opts.crashed {
        // Whatever crashed the first attempt may be on the writable partition: not again.
        let note = format!(
            "preinit crashed ({crash}) and started again: booting on tmpfs, the writable \
             partition left alone"
        );
        log::error!("{note}");
        clock.state.add_note(&note);
        cfg.request = Request::Recovery;
    } else {
        clock.crash_at = cmdline.get("ovl.test.crash").map(str::to_string);
    }
    clock.state.init = fit(&cfg.init.value);

    // 3. Modules.
    load_modules(&board, &cmdline, &target, sys, &mut clock.state);
    clock.lap("modules");

    // 4. Find the ROM and the writable partition.
    let src = Sources {
        proc_dir: target.join("proc"),
        sys_dir: opts.sysfs.clone().unwrap_or_else(|| target.join("sys")),
        dev_dir: target.join("dev"),
        make_nodes: static_dev,
    };
    let (rom, data) = find(&cfg, boot, &src, sys, &mut clock.state);
    // Without a valid board file the layout is unknown: nothing of the flash is touched.
    let data = match board_error {
        Some(e) => Err(e),
        None => data,
    };
    match &data {
        Ok(d) => log::info!("writable partition {} holds {}", d.device, d.content.name()),
        Err(e) if cfg.request == Request::Normal => log::warn!("{e}"),
        Err(_) => {}
    }
    let mut rom_id = None;
    if let Ok(r) = &rom {
        // As the device will be named after the switch, where ovlctl reads it.
        clock.state.rom = Some(fit(&shown(&layout, &r.device)));
        // The identity the overlay is checked against; without it no overlay is called stale.
        if let Some(id) = &r.id {
            clock.state.rom_id = Some(fit(id));
            rom_id = Some(id.clone());
        }
    } else if boot == BootKind::Rootfs {
        clock.state.rom = Some(fit("/"));
    }
    if let Ok(d) = &data {
        clock.state.data = Some(fit(&shown(&layout, &d.device)));
        clock.state.data_content = Some(fit(d.content.name()));
    }
    clock.lap("find");

    // 5. Plan.
    let input = PlanInput {
        layout: layout.clone(),
        request: cfg.request,
        rom,
        data,
        fs: cfg.fs.value,
        format: cfg.format,
        mkfs: cfg.mkfs.value.clone(),
        data_label: cfg.data_label.value.clone(),
        tmpfs_size: cfg.tmpfs_size.value.clone(),
        prepare: crate::overlay::Prepare {
            rom_id,
            reset: cfg.reset.clone(),
            keep_stale: cfg.keep_stale,
        },
    };

    // 6. The fallback ladder, then 7. publish and exec.
    let outcome = ladder(sys, &input, &cfg, &mut clock);
    finish(sys, &layout, &mut clock, outcome, &cfg.init.value, opts)
}

/// After a crash (crate::crash) the first attempt's mounts are still there: the ROM on /rom,
/// the writable partition on /overlay, the new root. Mounting over them again fails (EBUSY)
/// or hides what the attempt left; detach every mount below the target but the API file
/// systems, deepest first.
fn undo_previous_attempt(sys: &mut dyn Sys, layout: &Layout) {
    let keep: Vec<PathBuf> = ["proc", "sys", "dev", layout.run_name]
        .iter()
        .map(|d| layout.target.join(d))
        .collect();
    let Ok(info) = std::fs::read_to_string(layout.target.join("proc/self/mountinfo")) else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| {
            p.starts_with(&layout.target)
                && *p != layout.target
                && !keep.iter().any(|k| p.starts_with(k))
        })
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for p in points {
        match sys.umount(&p, true) {
            Ok(()) => log::info!(
                "detached {} (left by the attempt that crashed)",
                p.display()
            ),
            Err(e) => log::warn!("{e}"),
        }
    }
}

/// mountinfo writes space, tab, newline and backslash in paths as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| c == b'\\' && d.iter().all(|x| (b'0'..=b'7').contains(x)));
        match oct {
            Some(d) => {
                let v = d.iter().fold(0u32, |a, x| a * 8 + u32::from(x - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A device path as the system will see it after the switch (`<target>/dev/x` is `/dev/x`).
fn shown(layout: &Layout, dev: &str) -> String {
    plan::after_switch(layout, Path::new(dev))
        .display()
        .to_string()
}

/// How the ladder ended.
enum Outcome {
    /// Switched into an overlay (or, as a last resort, into the ROM alone).
    Switched {
        mode: Mode,
        reason: Option<String>,
        /// What was done to the writable partition and what it was mounted as (persistent).
        data: Option<(&'static str, &'static str)>,
    },
    /// A rootfs boot left on its own read-only ROM: init runs there.
    RomInPlace { reason: String },
    /// Nothing to run: no ROM could be mounted in an initramfs boot.
    NoRom { reason: String },
}

/// The fallback ladder. Each rung is tried only when the one before failed, and each failed
/// rung is undone completely (moved mounts back, mounts unmounted) first:
///
/// 1. the plan: persistent, or tmpfs/failsafe when plan decided so (failsafe, volatile, no
///    usable partition); a persistent rung that failed with a board value that is not the
///    default (mkfs, label) is tried once more with the defaults;
/// 2. a tmpfs upper of the configured size; 3. a tmpfs upper of the default size, when the
///    kernel refused the configured one;
/// 4. the ROM alone, read-only: the switch into the ROM (initramfs) or init in place (rootfs);
/// 5. nothing at all: an initramfs boot without a ROM has nothing to run.
fn ladder(sys: &mut dyn Sys, input: &PlanInput, cfg: &Config, clock: &mut Clock) -> Outcome {
    let layout = &input.layout;
    if let (BootKind::Initramfs, Err(why)) = (layout.boot, &input.rom) {
        return Outcome::NoRom {
            reason: why.clone(),
        };
    }
    let plan = plan::build(input);
    let mut rom_done = Done::default();
    if let Err(e) = apply::run(sys, &plan.rom, &mut rom_done) {
        apply::undo(sys, &mut rom_done);
        return Outcome::NoRom {
            reason: e.to_string(),
        };
    }
    clock.lap("rom");

    // Rung 1: the plan.
    let mut failures: Vec<String> = Vec::new();
    match attempt(sys, &plan, clock) {
        Ok(()) => return switched(&plan),
        Err(e) => {
            log::error!("{e}");
            failures.push(e.to_string());
        }
    }
    if plan.mode == Mode::Persistent {
        if let Some(retry) = with_default_format(&plan, input, cfg) {
            let again = plan::build(&retry);
            match attempt(sys, &again, clock) {
                Ok(()) => {
                    clock.state.add_note(&format!(
                        "the board's mkfs or label failed; the defaults {} -L {} worked: {}",
                        config::DEFAULT_MKFS,
                        config::DEFAULT_DATA_LABEL,
                        failures.join("; "),
                    ));
                    return switched(&again);
                }
                Err(e) => {
                    log::error!("{e}");
                    failures.push(format!("with the default mkfs and label: {e}"));
                }
            }
        }
    }

    // Rungs 2 and 3: tmpfs, of the configured size and then of the default one.
    let mode = match plan.mode {
        Mode::Persistent => Mode::Tmpfs,
        m => m,
    };
    // Why the boot is not persistent: the plan's own reason, then what failed on the way.
    let why = |failures: &[String]| {
        let mut parts: Vec<String> = Vec::new();
        if plan.mode != Mode::Persistent {
            parts.extend(plan.reason.clone());
        }
        parts.extend(failures.iter().cloned());
        parts.join("; ")
    };
    let mut sizes = vec![cfg.tmpfs_size.clone()];
    if !cfg.tmpfs_size.is_default() {
        sizes.push(Value {
            value: config::DEFAULT_TMPFS_SIZE.to_string(),
            from: config::From::Default,
        });
    }
    let mut tmpfs_failures = Vec::new();
    let mut skip = 0;
    if plan.mode != Mode::Persistent {
        // Rung 1 was this tmpfs of the configured size already.
        tmpfs_failures.append(&mut failures);
        skip = 1;
    }
    for size in sizes.iter().skip(skip) {
        let reason = why(&failures);
        let tmpfs = plan::with_tmpfs_sized(plan.clone(), input, &size.value, mode, reason);
        match attempt(sys, &tmpfs, clock) {
            Ok(()) => {
                if let Some(refused) = tmpfs_failures.first() {
                    clock.state.add_note(&format!(
                        "tmpfs size {} from {} refused; used the default {}: {refused}",
                        cfg.tmpfs_size.value, cfg.tmpfs_size.from, size.value
                    ));
                }
                return switched(&tmpfs);
            }
            Err(e) => {
                log::error!("{e}");
                tmpfs_failures.push(e.to_string());
            }
        }
    }
    failures.push(format!(
        "then the tmpfs overlay failed too: {}",
        tmpfs_failures.join("; ")
    ));

    // Rung 4: the ROM alone.
    let reason = why(&failures);
    log::error!("NO OVERLAY: {reason}");
    log::error!("running init on the read-only ROM as a last resort");
    let steps = plan::rom_only(layout, rom_done.mounted_any());
    if steps.is_empty() {
        return Outcome::RomInPlace { reason };
    }
    let mut done = Done::default();
    match apply::run(sys, &steps, &mut done) {
        Ok(()) => Outcome::Switched {
            mode: Mode::Rom,
            reason: Some(reason),
            data: None,
        },
        Err(e) => {
            apply::undo(sys, &mut done);
            // Rung 5: not even the ROM can be switched into.
            Outcome::NoRom {
                reason: format!("{reason}; then switching into the ROM failed: {e}"),
            }
        }
    }
}

fn switched(plan: &Plan) -> Outcome {
    Outcome::Switched {
        mode: plan.mode,
        reason: plan.reason.clone(),
        data: plan.data_action.zip(plan.data_fstype),
    }
}

/// The persistent plan once more with the built-in mkfs and label, when the board's differ
/// and the plan formats (a program may refuse a label or be missing where the board says).
fn with_default_format(plan: &Plan, input: &PlanInput, cfg: &Config) -> Option<PlanInput> {
    let formats = plan.upper.iter().any(|s| matches!(s, Step::Format { .. }));
    if !formats || (cfg.mkfs.is_default() && cfg.data_label.is_default()) {
        return None;
    }
    let mut retry = input.clone();
    retry.mkfs = config::DEFAULT_MKFS.to_string();
    retry.data_label = config::DEFAULT_DATA_LABEL.to_string();
    Some(retry)
}

/// One rung: the upper, the overlay (checked writable, mount points made) and the switch.
/// On failure everything it did is undone.
fn attempt(sys: &mut dyn Sys, plan: &Plan, clock: &mut Clock) -> Result<(), SysError> {
    let mut done = Done::default();
    let r = apply::run(sys, &plan.upper, &mut done)
        .map(|()| clock.lap("upper"))
        .and_then(|()| apply::run(sys, &plan.root, &mut done))
        .map(|()| clock.lap("root"))
        .and_then(|()| apply::run(sys, &plan.switch, &mut done))
        .map(|()| clock.lap("switch"));
    if r.is_err() {
        apply::undo(sys, &mut done);
    } else {
        if let Some(p) = done.prepared.take() {
            record_prepared(&mut clock.state, &p);
        }
        for n in &done.notes {
            clock.state.add_note(n);
        }
    }
    r.map_err(explain)
}

/// Publishes what the first-boot record said and what preinit did about it.
fn record_prepared(state: &mut State, p: &crate::overlay::Prepared) {
    state.first_boot = p.first_boot.map(|f| fit(f.name()));
    state.cleared = p.cleared.map(fit);
    state.stale_from = p.stale_from.as_deref().map(fit);
    state.upgrade_waiting = p.upgrade_waiting;
    state.upgrade = p.upgrade_result.map(fit);
    for n in [&p.note, &p.upgrade_note].into_iter().flatten() {
        log::warn!("{n}");
        state.add_note(n);
    }
    match (p.cleared, &p.stale_from) {
        (Some("stale"), Some(was)) => {
            let n = format!(
                "the overlay was made for another ROM ({was}); reset (board stale_overlay: reset)"
            );
            log::warn!("{n}");
            state.add_note(&n);
        }
        (Some("reset"), _) => {
            state.add_note("the overlay was reset as the kernel command line asked (ovl.reset)")
        }
        _ => {}
    }
}

/// Says plainly what a full partition or a failed write probe means: the kernel's words for
/// it (ENOSPC from an overlay mount, a read-only overlay) do not say "full".
fn explain(e: SysError) -> SysError {
    use nix::errno::Errno;
    let plain = match e.errno {
        Some(Errno::ENOSPC | Errno::EDQUOT) => "the writable partition is full",
        _ if !e.what.starts_with("check that") => return e,
        Some(Errno::EROFS) => "the overlay is read-only",
        None => "the overlay is read-only (overlayfs could not use the upper)",
        _ => "the overlay is not writable",
    };
    let mut e = e;
    e.what = format!("{plain}: {}", e.what);
    e
}

/// Mounts /proc, /sys, /dev and the run-time tmpfs unless mounted. Returns whether /dev had to
/// be a plain tmpfs (no devtmpfs): then probe makes the device nodes.
fn setup(sys: &mut dyn Sys, layout: &Layout) -> bool {
    let target = &layout.target;
    let early = plan::early_mounts(layout, |d| is_mountpoint(&target.join(d)));
    let mut ignored = Done::default();
    let mut static_dev = false;
    for step in &early {
        if let Err(e) = apply::run(sys, std::slice::from_ref(step), &mut ignored) {
            log::error!("{e}");
            if matches!(step, Step::Mount(m) if m.fstype == "devtmpfs") {
                static_dev = static_dev_fallback(sys, &target.join("dev"));
            }
        }
    }
    static_dev
}

/// The command line and the board file. A board file that cannot be read or parsed gives
/// the defaults and its error, which sends the boot to tmpfs.
fn read_inputs(opts: &Options, target: &Path) -> (Cmdline, Board, Option<String>) {
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
    if !board_path.exists() {
        log::info!("no board file at {board_path_s}; using defaults");
        return (cmdline, Board::default(), None);
    }
    match Board::load(&board_path_s) {
        Ok(b) => (cmdline, b, None),
        Err(e) => {
            log::error!("{e}");
            (cmdline, Board::default(), Some(e.to_string()))
        }
    }
}

/// Finds the ROM and the writable partition with the first selector of each; a selector that
/// finds nothing (a typo on the command line, a board file for another layout) is followed by
/// the next one (the board's, then auto), with a note. Later candidates do not wait again:
/// the devices had their time.
fn find(
    cfg: &Config,
    boot: BootKind,
    src: &Sources,
    sys: &mut dyn Sys,
    state: &mut State,
) -> (
    Result<plan::RomFound, String>,
    Result<plan::DataFound, String>,
) {
    let want_rom = boot == BootKind::Initramfs;
    let want_data = !matches!(cfg.request, Request::Failsafe | Request::Recovery);
    let first = |v: &[Value<Selector>]| v.first().map(|s| s.value.clone());
    let found = probe::find(
        &Wanted {
            rom: if want_rom { first(&cfg.rom) } else { None },
            data: if want_data { first(&cfg.data) } else { None },
            timeout: cfg.timeout.value,
        },
        src,
        sys,
    );
    for n in &found.notes {
        state.add_note(n);
    }
    let (mut rom, mut data) = (found.rom, found.data);
    let mut rom_sel = first(&cfg.rom);
    if want_rom {
        let (r, sel) = retry(rom, &cfg.rom, "ROM", state, |sel| {
            probe::find(
                &Wanted {
                    rom: Some(sel),
                    data: None,
                    timeout: Duration::ZERO,
                },
                src,
                &mut *sys,
            )
            .rom
        });
        rom = r;
        rom_sel = sel.cloned();
    }
    // A data selector that names nothing is retried only in normal boots: failsafe looks at
    // nothing, volatile keeps nothing.
    if want_data && cfg.request == Request::Normal && data.is_err() {
        // The ROM as it was found (after-rom and auto look beside it), by the selector that
        // found it.
        let rom_sel = if want_rom && rom.is_ok() {
            rom_sel
        } else {
            None
        };
        data = retry(data, &cfg.data, "writable partition", state, |sel| {
            probe::find(
                &Wanted {
                    rom: rom_sel.clone(),
                    data: Some(sel),
                    timeout: Duration::ZERO,
                },
                src,
                &mut *sys,
            )
            .data
        })
        .0;
    }
    (rom, data)
}

/// Tries the candidates after the first while `found` names no device. Only "not found" is
/// retried: a device that was found but holds something else is a decision, not a typo.
/// Returns the result and the selector that gave it (the first one unless a later one found
/// the device).
fn retry<'c, T>(
    found: Result<T, String>,
    candidates: &'c [Value<Selector>],
    what: &str,
    state: &mut State,
    mut look: impl FnMut(Selector) -> Result<T, String>,
) -> (Result<T, String>, Option<&'c Selector>) {
    let first = candidates.first().map(|c| &c.value);
    let Err(first_err) = &found else {
        return (found, first);
    };
    if !first_err.starts_with("no ") {
        return (found, first);
    }
    for cand in candidates.iter().skip(1) {
        if let Ok(hit) = look(cand.value.clone()) {
            let note = format!(
                "{what}: {first_err}; found it with {} ({})",
                cand.value, cand.from
            );
            log::warn!("{note}");
            state.add_note(&note);
            return (Ok(hit), Some(&cand.value));
        }
    }
    (found, first)
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

fn load_modules(
    board: &Board,
    cmdline: &Cmdline,
    target: &Path,
    sys: &mut dyn Sys,
    state: &mut State,
) {
    let dir = board
        .module_dir
        .as_deref()
        .map(|d| target.join(d.trim_start_matches('/')))
        .unwrap_or_else(|| {
            let release = nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default();
            target.join("lib/modules").join(release)
        });
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
            Ok(()) => state.modules_loaded = state.modules_loaded.saturating_add(1),
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

/// Publishes the outcome once and execs init; or, with nothing to run, says so and reboots.
fn finish(
    sys: &mut dyn Sys,
    layout: &Layout,
    clock: &mut Clock,
    outcome: Outcome,
    init: &str,
    opts: &Options,
) -> i32 {
    let (switched, mode, reason) = match outcome {
        Outcome::Switched { mode, reason, data } => {
            if let Some((action, fstype)) = data {
                clock.state.data_action = Some(fit(action));
                clock.state.data_fstype = Some(fit(fstype));
            }
            (true, mode, reason)
        }
        Outcome::RomInPlace { reason } => (false, Mode::Rom, Some(reason)),
        Outcome::NoRom { reason } => {
            return no_rom(sys, layout, clock, &reason, opts);
        }
    };
    match (mode, &reason) {
        (Mode::Persistent, _) => log::info!(
            "persistent overlay on {} ({}, {})",
            clock.state.data.as_deref().unwrap_or("?"),
            clock.state.data_fstype.as_deref().unwrap_or("?"),
            clock.state.data_action.as_deref().unwrap_or("?"),
        ),
        (m, Some(why)) => log::warn!("{} overlay: {why}", m.name()),
        (m, None) => log::warn!("{} overlay", m.name()),
    }
    clock.state.mode = fit(mode.name());
    clock.state.reason = reason.as_deref().map(fit);
    exec_init(sys, layout, clock, init, opts, switched)
}

/// An initramfs boot where no ROM could be mounted: there is nothing to run. One clear line on
/// the console and in kmsg, the state (mode `none`, never `rom`), a pause, a reboot.
fn no_rom(sys: &mut dyn Sys, layout: &Layout, clock: &mut Clock, why: &str, opts: &Options) -> i32 {
    let line = format!(
        "FATAL: no ROM could be mounted ({why}): nothing to run; rebooting in {} s",
        REBOOT_DELAY.as_secs()
    );
    log::error!("{line}");
    if opts.kmsg {
        // The console may not be where kmsg goes: say it there too.
        let _ = std::fs::write(
            layout.target.join("dev/console"),
            format!("preinit: {line}\n"),
        );
    }
    clock.state.mode = fit("none");
    clock.state.reason = Some(fit(why));
    write_state(sys, layout, clock, false);
    dead_end(sys, opts, 3)
}

/// PID 1 must not exit (the kernel would panic): wait so a person can read why, then reboot.
/// Anything else returns `code`.
fn dead_end(sys: &mut dyn Sys, opts: &Options, code: i32) -> i32 {
    if !opts.pid1 {
        return code;
    }
    sys.sleep(REBOOT_DELAY);
    loop {
        match sys.reboot() {
            // Only the test double comes back from a reboot.
            Ok(()) => return code,
            Err(e) => log::error!("{e}"),
        }
        sys.sleep(Duration::from_secs(3600));
    }
}

/// Writes the state file into the run-time tmpfs: `/run` after the switch, else under the
/// target, so that nothing outside the target is ever written.
fn write_state(sys: &mut dyn Sys, layout: &Layout, clock: &mut Clock, switched: bool) {
    clock.state.total_us = crate::decimal::micros(clock.start.elapsed());
    clock.state.peak_rss_kib =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
            .map(|u| u64::try_from(u.max_rss()).unwrap_or(0))
            .unwrap_or(0);
    let json = match clock.state.to_json() {
        Ok(j) => j,
        Err(e) => {
            log::error!("state: {e}");
            return;
        }
    };
    let run = if switched {
        plan::after_switch(layout, &layout.run_dir())
    } else {
        layout.run_dir()
    };
    let dir = run.join(state::STATE_DIR);
    let r = crate::timed!(
        "state written",
        sys.mkdir_p(&dir)
            .and_then(|()| sys.write_file(&dir.join(state::STATE_FILE), &json))
    );
    if let Err(e) = r {
        log::error!("could not write the state file: {e}");
    }
    // After the state, so that bench/boards.sh --steps finds every span in one line.
    #[cfg(feature = "timing")]
    for line in crate::timing::take() {
        log::info!("timing: {line}");
    }
}

/// Execs init, then the usual others. Before a switch, init is looked up below the target.
fn exec_init(
    sys: &mut dyn Sys,
    layout: &Layout,
    clock: &mut Clock,
    init: &str,
    opts: &Options,
    switched: bool,
) -> i32 {
    write_state(sys, layout, clock, switched);
    let mut tried: Vec<&str> = Vec::new();
    for cand in std::iter::once(init).chain(FALLBACK_INITS) {
        if tried.contains(&cand) {
            continue;
        }
        tried.push(cand);
        let path = if switched {
            PathBuf::from(cand)
        } else {
            layout.target.join(cand.trim_start_matches('/'))
        };
        let mut argv = vec![cand.to_string()];
        argv.extend(opts.init_args.iter().cloned());
        match sys.exec(&path, &argv) {
            Ok(()) => return 0,
            Err(e) => log::error!("{e}"),
        }
    }
    log::error!(
        "FATAL: no init could be executed (tried {}); rebooting in {} s",
        tried.join(", "),
        REBOOT_DELAY.as_secs()
    );
    dead_end(sys, opts, 1)
}

#[cfg(test)]
mod tests {
    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mountinfo("/mnt/a\\040b\\134c"), "/mnt/a b\\c");
        assert_eq!(unescape_mountinfo("/x\\04"), "/x\\04");
        assert_eq!(unescape_mountinfo("/rom"), "/rom");
    }

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
    fn a_rom_selector_that_finds_nothing_is_followed_by_auto_with_a_note() {
        let t = T::new("ovl.rom=/dev/none ovl.timeout=0.05", None, &ext4());
        let mut r = Recorder::new();
        assert_eq!(run(&t.opts(), &mut r), 0);
        assert!(
            r.position("mount ovl:persistent").is_some(),
            "{:#?}",
            r.calls
        );
        let state = state_of(&r);
        assert!(
            state.notes[0].contains("found it with auto"),
            "{:?}",
            state.notes
        );
    }

    /// The state preinit wrote last, read back from the recorded write.
    fn state_of(r: &Recorder) -> State {
        let (_, bytes) = r
            .written
            .iter()
            .rev()
            .find(|(p, _)| p.ends_with("ovl/state.json"))
            .expect("a state file was written");
        State::from_json(bytes).unwrap()
    }

    #[test]
    fn without_a_rom_nothing_runs_and_pid1_reboots() {
        let t = T::new("ovl.timeout=0.05", None, &ext4());
        std::fs::remove_file(t.dir.path().join("dev/vda1")).unwrap();
        let mut r = Recorder::new();
        assert_eq!(run(&t.opts(), &mut r), 3);
        assert!(r.position("exec").is_none(), "{:#?}", r.calls);
        assert!(r.position("reboot").is_none());
        let st = r.position(&format!("write {}", t.p("run/ovl/state.json")));
        assert!(st.is_some(), "state under the target: {:#?}", r.calls);

        let mut opts = t.opts();
        opts.pid1 = true;
        let mut r = Recorder::new();
        run(&opts, &mut r);
        let sleep = r
            .position("sleep 10000ms")
            .expect("a pause to read the console");
        assert!(sleep < r.position("reboot").unwrap(), "{:#?}", r.calls);
        assert!(r.position("exec").is_none());
    }

    #[test]
    fn a_read_only_overlay_falls_back_to_tmpfs() {
        let t = T::new("", None, &ext4());
        let newroot = t.p("newroot");
        let mut r = Recorder::new().failing(&format!("check writable {newroot}"), Errno::EROFS);
        // Only the first check fails: the tmpfs overlay's passes.
        r.fail_once = true;
        assert_eq!(run(&t.opts(), &mut r), 0);
        let check = r.position("check writable").unwrap();
        let undo = r.position(&format!("umount {newroot}")).unwrap();
        let tmpfs = r.position("mount ovl:tmpfs").unwrap();
        assert!(check < undo && undo < tmpfs, "{:#?}", r.calls);
        assert!(r.position("exec /sbin/init").is_some());
    }

    #[test]
    fn mount_points_that_cannot_be_made_in_a_full_upper_fall_back_to_tmpfs() {
        let t = T::new("", None, &ext4());
        let mut r =
            Recorder::new().failing(&format!("mkdir {}", t.p("newroot/run")), Errno::ENOSPC);
        r.fail_once = true;
        assert_eq!(run(&t.opts(), &mut r), 0);
        let failed = r
            .position("mkdir ")
            .map(|_| ())
            .and(r.position(&format!("mkdir {}", t.p("newroot/run"))))
            .unwrap();
        let tmpfs = r.position("mount ovl:tmpfs").unwrap();
        assert!(failed < tmpfs, "{:#?}", r.calls);
        // Nothing was moved into the persistent root before the failure.
        assert!(
            r.calls[..tmpfs].iter().all(|c| !c.starts_with("move ")),
            "{:#?}",
            r.calls
        );
    }

    #[test]
    fn a_move_that_fails_is_undone_before_the_fallback() {
        let t = T::new("", None, &ext4());
        let mut r = Recorder::new().failing(&format!("move {} ", t.p("proc")), Errno::EINVAL);
        r.fail_once = true;
        assert_eq!(run(&t.opts(), &mut r), 0);
        let back = r
            .position(&format!(
                "move {} {}",
                t.p("newroot/overlay"),
                t.p("overlay")
            ))
            .expect("the overlay moved back");
        assert!(
            back < r.position("mount ovl:tmpfs").unwrap(),
            "{:#?}",
            r.calls
        );
    }

    #[test]
    fn a_refused_tmpfs_size_is_retried_with_the_default_and_published() {
        let t = T::new("ovl.failsafe ovl.tmpfs_size=12q", None, &ext4());
        let mut r = Recorder::new().failing("size=12q", Errno::EINVAL);
        assert_eq!(run(&t.opts(), &mut r), 0);
        assert!(r.position("size=50%").is_some(), "{:#?}", r.calls);
        let st = state_of(&r);
        assert_eq!(st.mode.as_str(), "failsafe");
        assert!(
            st.notes
                .iter()
                .any(|n| n.contains("12q") && n.contains("50%")),
            "{:?}",
            st.notes
        );
    }

    #[test]
    fn a_board_mkfs_that_fails_is_retried_with_the_default() {
        let board = r#"{"name":"b","mkfs":"/sbin/mke2fs","data_label":"x"}"#;
        let t = T::new("", Some(board), &[0xff; 4096]);
        let mut r = Recorder::new().failing("run /sbin/mke2fs", Errno::ENOENT);
        r.existing = vec![
            t.dir.path().join("sbin/mke2fs"),
            t.dir.path().join("usr/sbin/mkfs.ext4"),
        ];
        assert_eq!(run(&t.opts(), &mut r), 0);
        assert!(
            r.position("run /usr/sbin/mkfs.ext4 -F -q -L rootfs_data")
                .is_some(),
            "{:#?}",
            r.calls
        );
        assert!(r.position("mount ovl:persistent").is_some());
        assert!(state_of(&r).notes.iter().any(|n| n.contains("defaults")));
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
}
