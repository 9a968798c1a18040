//! The run-once scripts: a hanging one killed at the limit with what it started, one done
//! when it exits though a daemon holds its output, and what a signal to `ovlctl firstboot`
//! does to the script it runs. The scripts run in process groups of their own (so that a kill
//! at --timeout takes what they started), which a terminal's Ctrl-C or init's SIGTERM to
//! ovlctl's group does not reach.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use ovl::firstboot::{run, Opts};

const OVL: &str = env!("CARGO_BIN_EXE_ovl");

fn opts(dir: &Path, limit: Option<Duration>) -> Opts {
    Opts {
        dir: dir.to_path_buf(),
        overlay: dir.join("no-overlay"),
        state: Some(dir.join("no-state")),
        limit,
        kmsg: false,
    }
}

/// A temporary directory with an empty scripts' directory in it.
fn scripts_dir() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let fb = t.path().join("firstboot.d");
    std::fs::create_dir(&fb).unwrap();
    (t, fb)
}

fn script(dir: &Path, name: &str, body: &str) {
    std::fs::write(dir.join(name), body).unwrap();
}

fn pid_in(file: &Path) -> Pid {
    let text = std::fs::read_to_string(file).unwrap();
    Pid::from_raw(text.trim().parse().unwrap())
}

/// Alive and not a zombie waiting for its reaper.
fn running(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// Gone within 5 s (its reaper, init, may take a moment).
fn gone_soon(pid: Pid) -> bool {
    (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        !running(pid)
    })
}

fn wait_for(file: &Path) -> bool {
    (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        file.exists()
    })
}

#[test]
fn a_signal_kills_the_running_script_with_what_it_started_and_stops() {
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        let (t, fb) = scripts_dir();
        let d = t.path();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let child = d.join("child");
        let later = d.join("later");
        script(
            &fb,
            "10-waits",
            &format!("sleep 100 & echo $! > {}; wait", child.display()),
        );
        script(&fb, "20-later", &format!("echo ran > {}", later.display()));
        let mut cmd = Command::new(OVL);
        cmd.arg("firstboot")
            .arg("--dir")
            .arg(&fb)
            .arg("--overlay")
            .arg(d.join("no-overlay"))
            .arg("--state")
            .arg(d.join("no-state"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if nix::unistd::geteuid().is_root() {
            // As nobody: ovlctl logs to /dev/kmsg when it may, and this is the host's.
            cmd.uid(65534).gid(65534);
        }
        let proc = cmd.spawn().expect("run ovl firstboot");
        let pid = Pid::from_raw(i32::try_from(proc.id()).unwrap());
        assert!(wait_for(&child), "10-waits did not start its child");
        kill(pid, sig).unwrap();
        let out = proc.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let n = sig as i32;
        assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
        assert!(
            stdout.contains(&format!(
                "10-waits: stopped by signal {n}: killed; kept, to run again on the next boot"
            )),
            "{stdout}"
        );
        assert!(
            stderr.contains(&format!(
                "stopped by signal {n}: the first boot is not complete"
            )),
            "{stderr}"
        );
        // Both kept for the next boot; the second never ran.
        assert!(fb.join("10-waits").exists() && fb.join("20-later").exists());
        assert!(!later.exists(), "20-later ran after the signal");
        let sleeper = pid_in(&child);
        let gone = gone_soon(sleeper);
        if !gone {
            let _ = kill(sleeper, Signal::SIGKILL);
        }
        assert!(
            gone,
            "the script's child {sleeper} outlived the signal to ovlctl"
        );
    }
}

#[test]
fn a_hanging_script_is_killed_with_what_it_started_and_kept() {
    let (t, fb) = scripts_dir();
    let child = t.path().join("child");
    script(
        &fb,
        "10-hangs",
        &format!("sleep 100 & echo $! > {}; wait", child.display()),
    );
    script(&fb, "20-ok", "echo fine");
    let sum = run(&opts(&fb, Some(Duration::from_millis(1500)))).unwrap();
    assert_eq!(sum.failed, ["10-hangs"]);
    assert_eq!(sum.ran, ["20-ok"]);
    assert!(fb.join("10-hangs").exists());
    assert!(!fb.join("20-ok").exists());
    // The group went with it: what the script started does not outlive the kill.
    let pid = pid_in(&child);
    assert!(gone_soon(pid), "the script's child {pid} survived the kill");
}

#[test]
fn a_script_is_done_when_it_exits_even_if_a_daemon_holds_its_output() {
    let (t, fb) = scripts_dir();
    let daemon = t.path().join("daemon");
    // The daemon keeps the script's stdout (the pipe) open, in the script's group.
    script(
        &fb,
        "10-starts-daemon",
        &format!("sleep 100 & echo $! > {}; exit 0", daemon.display()),
    );
    let sum = run(&opts(&fb, None)).unwrap();
    let pid = pid_in(&daemon);
    let alive = running(pid);
    let _ = kill(pid, Signal::SIGKILL);
    assert_eq!(sum.ran, ["10-starts-daemon"]);
    assert!(sum.failed.is_empty());
    assert!(alive, "run waited for the daemon {pid} to end");
}
