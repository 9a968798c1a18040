//! `ovlctl firstboot`: the run-once scripts, then the end of the first-boot transaction.
//!
//! The scripts live in [`SCRIPT_DIR`] (OpenWrt's `/etc/uci-defaults`); images ship them in the
//! ROM from the repository's `firstboot/`. Each runs with `/bin/sh`, in name order (bytewise,
//! as `ls` in the C locale), its output logged line by line with its name. One that exits 0 is
//! removed (from the ROM's view: overlayfs keeps a whiteout in the upper); one that fails stays
//! and runs again on the next boot. When all have run, a pending overlay is set ready: from
//! then on boots use it as it is. A cut before that leaves it pending, and the next boot
//! empties the upper and runs every script again from a clean start, so a half-done first
//! boot never stays (OpenWrt re-extracts its backup over the scripts' work instead).
//!
//! A script that fails does not keep the overlay pending: pending means "empty it at the next
//! boot", and one broken script must not wipe the device at every boot.
//!
//! A script still running at the time limit is killed with everything it started (its
//! process group) and counts as failed: one that hangs must not hold the boot forever. One
//! that exits while a daemon it started keeps its output open is done when it exits. A
//! SIGINT, SIGTERM or SIGHUP to `ovlctl firstboot` (Ctrl-C; init's shutdown) kills the running
//! script the same way (it counts as failed), and no further script runs.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const SCRIPT_DIR: &str = "/etc/firstboot.d";
/// Set to `1` for the scripts when this boot restored a configuration kept by an upgrade,
/// so that they leave restored settings alone (OpenWrt's scripts overwrite them: PR #15341).
pub const RESTORED_ENV: &str = "OVL_RESTORED";

#[derive(Debug, Clone)]
pub struct Opts {
    pub dir: PathBuf,
    pub overlay: PathBuf,
    /// The state file; the overlay is set ready only on a persistent boot.
    pub state: Option<PathBuf>,
    /// How long one script may run; `None`: no limit.
    pub limit: Option<std::time::Duration>,
    /// Log to /dev/kmsg beside the console.
    pub kmsg: bool,
}

/// How much of a script's output is kept to be logged: the end of it.
const OUTPUT_KEPT: usize = 64 << 10;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub ran: Vec<String>,
    pub failed: Vec<String>,
    /// The overlay's record went from pending to ready.
    pub completed: bool,
}

/// Writes a line to the console (stdout) and to the kernel log.
fn say(kmsg: &mut Option<std::fs::File>, prio: u8, line: &str) {
    println!("{line}");
    if let Some(k) = kmsg {
        let _ = k.write_all(format!("<{prio}>ovlctl firstboot: {line}\n").as_bytes());
    }
}

pub fn scripts(dir: &Path) -> Result<Vec<PathBuf>> {
    use std::os::unix::ffi::OsStrExt;
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(it) => it
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()))
            .map(|e| e.path())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("read {}", dir.display())),
    };
    v.sort_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
    Ok(v)
}

/// Runs one script with its stdout and stderr on one pipe; returns its exit code, or `None`
/// when it was still running at `limit` and is killed.
fn run_script(
    path: &Path,
    name: &str,
    restored: bool,
    limit: Option<std::time::Duration>,
    kmsg: &mut Option<std::fs::File>,
) -> Result<Option<i32>> {
    let (r, w) = std::io::pipe().context("pipe")?;
    let argv = [String::from("/bin/sh"), path.display().to_string()];
    let env: &[(&str, &str)] = if restored {
        &[(RESTORED_ENV, "1")]
    } else {
        &[]
    };
    let pid = crate::spawn::spawn(crate::spawn::Spec {
        argv: &argv,
        env,
        inherit_env: true,
        path: "",
        root: None,
        stdout: crate::spawn::Output::Fd(w.try_clone().context("pipe")?.into()),
        stderr: crate::spawn::Output::Fd(w.into()),
        group: true,
    })
    .with_context(|| format!("run /bin/sh {}", path.display()))?;
    let (how, out) = crate::spawn::wait_reading(pid, r.into(), limit, OUTPUT_KEPT)
        .with_context(|| format!("wait for {name}"))?;
    for line in String::from_utf8_lossy(&out).lines() {
        say(kmsg, 6, &format!("{name}: {line}"));
    }
    Ok(match how {
        crate::spawn::Waited::Done(status) => Some(status.code()),
        crate::spawn::Waited::Killed => None,
    })
}

/// After a signal to stop ([`crate::spawn::stop_on_signals`]): no further script, and the
/// first boot stays pending.
fn stop_here() -> Result<()> {
    match crate::spawn::stopped() {
        Some(sig) => anyhow::bail!("stopped by signal {sig}: the first boot is not complete"),
        None => Ok(()),
    }
}

pub fn run(o: &Opts) -> Result<Summary> {
    let mut kmsg = o
        .kmsg
        .then(|| {
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/kmsg")
                .ok()
        })
        .flatten();
    let mut sum = Summary::default();
    let start = std::time::Instant::now();
    let state = crate::status::read_state(o.state.as_deref()).ok();
    let restored = state
        .as_ref()
        .is_some_and(|s| s.upgrade.as_deref() == Some("restored"));
    for path in scripts(&o.dir)? {
        stop_here()?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let failure = match run_script(&path, &name, restored, o.limit, &mut kmsg) {
            Ok(Some(0)) => None,
            Ok(Some(code)) => Some(format!("exited {code}")),
            Ok(None) => Some(match crate::spawn::stopped() {
                Some(sig) => format!("stopped by signal {sig}: killed"),
                None => format!(
                    "still running after {} s: killed",
                    o.limit.map_or(0, |l| l.as_secs())
                ),
            }),
            Err(e) => Some(format!("{e:#}")),
        };
        match failure {
            None => {
                std::fs::remove_file(&path)
                    .with_context(|| format!("remove {} after it ran", path.display()))?;
                say(&mut kmsg, 6, &format!("{name}: done, removed"));
                sum.ran.push(name);
            }
            Some(why) => {
                say(
                    &mut kmsg,
                    4,
                    &format!("{name}: {why}; kept, to run again on the next boot"),
                );
                sum.failed.push(name);
            }
        }
    }
    stop_here()?;
    let persistent = state.is_some_and(|s| s.mode.as_str() == "persistent");
    if persistent {
        if let Some(rec) = crate::overlay::read(&o.overlay)? {
            if rec.first_boot == crate::overlay::FirstBoot::Pending {
                // What the scripts wrote must be on the flash before the record says ready.
                nix::unistd::sync();
                crate::overlay::set_ready(&o.overlay)?;
                sum.completed = true;
                // Only now: until the first boot completed, a cut restores it again. A cut
                // before this removal leaves a leftover the next boot removes unused.
                if crate::upgrade::discard(&o.overlay)? {
                    say(
                        &mut kmsg,
                        6,
                        "the configuration kept by the upgrade is removed",
                    );
                }
                say(
                    &mut kmsg,
                    6,
                    &format!(
                        "first boot complete in {} s: the overlay is ready",
                        crate::decimal::secs(start.elapsed(), 2)
                    ),
                );
            }
        }
    }
    Ok(sum)
}
