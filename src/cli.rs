//! The `ovlctl` command line. One binary: called `preinit` or `init` it boots (see main.rs).
//!
//! The build without the `help` feature (the device build) compiles a copy of this file with
//! its doc comments taken out (build.rs): it prints help rendered at build time
//! (src/help.rs), so the texts in clap's definitions would be 17 KB it never shows. Help text
//! goes in `///` comments (or in attributes under `cfg_attr(feature = "help", ...)`).

use crate::plan::BootKind;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// What a reset does, for `ovlctl reset` and its OpenWrt names alike (a macro: `concat!`
/// takes literals only).
#[cfg(feature = "help")]
macro_rules! reset_help {
    () => {
        "It says what it will do and asks (type `yes`); -y does not ask, and without a terminal \
         and without -y it refuses. On a persistent overlay everything in the upper is deleted, \
         the first-boot record set pending first, so that after a power cut midway the next boot \
         empties the upper again. On a tmpfs or failsafe boot, where the partition is not \
         mounted, the writable partition is reset where it lies: JFFS2 through the MTD layer \
         (on NOR the old nodes are marked obsolete for JFFS2 to erase in the background; \
         --full-erase erases them now), ext4 marked to be formatted at the next boot, a UBI \
         volume emptied; anything ovl does not recognise is left as it is, and it says why. The \
         next boot runs the first boot again; reboot (-r) so that every program sees the ROM's \
         state."
    };
}

/// Every parser the binary has (ovlctl and the alias names): what `xtask help-blob` renders.
pub fn parsers() -> Vec<clap::Command> {
    use clap::CommandFactory;
    vec![
        Cli::command(),
        SysupgradeAlias::command(),
        ResetAlias::command(),
    ]
}

/// Flash overlay manager: a squashfs ROM, a writable overlay on flash, tmpfs when that fails
///
/// A device boots from a read-only squashfs ROM and keeps its changes on a writable partition
/// (JFFS2 on MTD flash, UBIFS on a UBI volume, ext4 on a block device) stacked over it with
/// overlayfs. When that partition is missing, holds something ovl must not touch, is corrupt,
/// or failsafe was asked for, the device boots on a tmpfs overlay instead and `ovlctl status`
/// says which case it chose and why.
///
/// One binary, several names: called `preinit` or `init` as PID 1 it boots (preinit(8));
/// called `sysupgrade` it is `ovlctl sysupgrade` with OpenWrt's -b, -r and -l (sysupgrade(8));
/// called `firstboot`, `factoryreset` or `jffs2reset` it is `ovlctl reset` (firstboot(8)). Any
/// other name is ovlctl.
///
/// Files: /etc/ovl/board.json, the board file; /run/ovl/state.json, what preinit chose at boot;
/// /overlay, the writable partition (upper/, work/ and ovl's records beside them).
#[derive(Parser, Debug)]
#[command(name = "ovlctl", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show which overlay the system runs on and why
    ///
    /// What preinit chose at boot (its state file) and what is mounted now: the mode
    /// (persistent, tmpfs, failsafe, rom) and why when it is not persistent, the ROM and the
    /// writable partition, the space left on /overlay, the first-boot state, what waits for the
    /// next boot, and preinit's time per step.
    ///
    /// Exit status: 0 persistent, 1 running on tmpfs, failsafe or the bare ROM, 2 unknown (no
    /// state file: not booted by ovl).
    Status {
        /// Print JSON with stable keys instead of text.
        #[arg(long)]
        json: bool,
        /// Read this state file instead of /run/ovl/state.json.
        #[arg(long, value_name = "FILE")]
        state: Option<PathBuf>,
    },
    /// Boot: mount the ROM and the writable partition, stack the overlay, exec init
    ///
    /// The binary boots when it is PID 1 and called `preinit` or `init`: as /init of an
    /// initramfs, or with init=/sbin/preinit on the kernel command line. It reads the kernel
    /// command line (ovl.failsafe, ovl.data=, ovl.fstype=, ...) and /etc/ovl/board.json, loads
    /// the board's modules, finds the ROM and the writable partition, mounts them and stacks the
    /// overlay, or a tmpfs overlay with the reason when the partition cannot be used, switches
    /// into it and executes init with its own arguments. What it chose is written to
    /// /run/ovl/state.json (ovlctl status). Called so but not PID 1, it refuses.
    ///
    /// `ovlctl preinit` refuses as well unless it is PID 1 or given --target: on a running
    /// system it would replace the live root. Its flags run the same boot below a directory,
    /// against a command line file and a fixture sysfs (tests).
    Preinit(PreinitArgs),
    /// Factory reset: back to the ROM's state
    #[cfg_attr(feature = "help", command(long_about = concat!(
        "Factory reset: back to the ROM's state\n\n",
        reset_help!(),
        "\n\nCalled `firstboot`, `factoryreset` or `jffs2reset` (OpenWrt's names; a reset button \
         runs `firstboot -y -r`), the binary is this command with the same flags."
    )))]
    Reset(ResetArgs),
    /// Run the run-once scripts and complete the first boot
    ///
    /// Runs each script in /etc/firstboot.d (OpenWrt's /etc/uci-defaults) with /bin/sh, in name
    /// order, logs its output with its name, and removes each that exits 0; the others run
    /// again at the next boot. When all have run, a pending overlay becomes ready: later boots
    /// keep the upper as it is. The ROM's init calls this late in every boot, as OpenWrt's
    /// `done` does. After an upgrade that kept the configuration the scripts run after its
    /// restore, with OVL_RESTORED=1 in their environment.
    ///
    /// Not a reset: called `firstboot` as argv[0] the binary resets, as OpenWrt's firstboot does
    /// (firstboot(8)).
    ///
    /// A SIGINT, SIGTERM or SIGHUP (Ctrl-C; init's shutdown) kills the running script with what
    /// it started, as --timeout does; no further script runs and the first boot stays pending.
    ///
    /// Exit status: 0 all scripts ran, 1 one failed or was killed at --timeout (it runs again at
    /// the next boot), 2 an error or a signal.
    Firstboot {
        /// The scripts' directory.
        #[arg(long, value_name = "DIR", default_value = crate::firstboot::SCRIPT_DIR)]
        dir: PathBuf,
        /// Where the writable partition is mounted.
        #[arg(long, value_name = "DIR", default_value = "/overlay")]
        overlay: PathBuf,
        /// Read this state file instead of /run/ovl/state.json.
        #[arg(long, value_name = "FILE")]
        state: Option<PathBuf>,
        /// Kill a script still running after SECS seconds, with what it started; it counts as
        /// failed. 0: no limit. At most 3600.
        #[arg(long, value_name = "SECS", default_value = "300")]
        timeout: String,
    },
    /// Write a backup of the configuration the keep list names
    ///
    /// The keep list is every line of /etc/sysupgrade.conf and of the files in
    /// /lib/upgrade/keep.d/: paths, with shell globs per component; a directory recurses. The
    /// backup is a gzip'd tar of those paths relative to / that GNU tar and busybox tar read,
    /// its last member a manifest (etc/backup/ovl-manifest.txt). It is written beside the
    /// output with mode 0600, synced and renamed, so an error leaves nothing behind. It refuses
    /// on a tmpfs or failsafe boot, where nothing would survive.
    Backup(BackupArgs),
    /// Restore a backup: only what the keep list allows, all of it or nothing
    ///
    /// Reads ovl's backups and OpenWrt's (sysupgrade -b, or any `tar czf` of etc/...). Every
    /// member is checked before anything is written: one bad member (an absolute path, `..`, a
    /// device node, a setuid file, a symlink leading out of the root, a member over the limits,
    /// ...) refuses the whole archive. Members the keep list does not allow are left out and
    /// named. The files are staged on the same file system and committed with one rename, so a
    /// power cut leaves the old configuration or the new one; the next preinit finishes or
    /// rolls back a restore that was cut off.
    Restore(RestoreArgs),
    /// Write a new ROM image and keep the configuration: OpenWrt's sysupgrade
    ///
    /// The image (made by `ovlctl mkimage`) is checked first: its CRC, that it is squashfs and
    /// fits the ROM partition, that it is for this board and, when the configuration is kept,
    /// of the running ROM's compat major (-F overrides those two). The configuration is written
    /// to /overlay/.ovl-keep before the ROM is touched; then the ROM is written, read back and
    /// compared, and the device reboots. The next boot restores the configuration into a fresh
    /// overlay. A ROM in a UBI volume is staged beside the running one and put in place by the
    /// next preinit.
    ///
    /// Called `sysupgrade` (argv[0]) the binary takes the same flags, and -b FILE, -r FILE and
    /// -l are backup, restore and backup --list (sysupgrade(8)).
    Sysupgrade(SysupgradeArgs),
    /// Keep the configuration for the next boot, without writing a ROM
    ///
    /// Only the keeping part of sysupgrade, for a flash step that something else performs: the
    /// configuration is kept on the writable partition (/overlay/.ovl-keep) and the overlay set
    /// pending, so the next boot starts a fresh overlay with it restored.
    SysupgradeKeep(KeepArgs),
    /// Make a sysupgrade image from a squashfs ROM (for image builders)
    ///
    /// The image is the ROM as mksquashfs wrote it, padded to 4 KiB, then a text of `key value`
    /// lines (ovl-image, boards, version, compat, size, crc32) and a 16-byte footer: OVLIMG01,
    /// the text's length and its CRC32. `unsquashfs -l IMAGE` lists it as it is.
    Mkimage {
        /// The squashfs ROM.
        rom: PathBuf,
        /// The image to write.
        output: PathBuf,
        /// A board the image is for (repeat for several).
        #[arg(short = 'b', long = "board", value_name = "NAME", required = true)]
        boards: Vec<String>,
        /// The image's version (one line of text).
        #[arg(long = "release", value_name = "VERSION")]
        release: String,
        /// The compatibility version, MAJOR.MINOR: another major refuses a kept configuration.
        #[arg(long, value_name = "MAJOR.MINOR", default_value = "1.0")]
        compat: String,
    },
    /// Check a board file and say what it sets up
    ///
    /// Prints the board's name, where the ROM and the writable partition are, the file system
    /// and which blank contents may be formatted, the modules in load order with their
    /// parameters, the device timeout and the paths, each with its default where the file sets
    /// none. On an error it prints the first one, naming the key it is about (exit status 1).
    CheckBoard {
        /// Print the same as one JSON object.
        #[arg(long)]
        json: bool,
        /// The board file.
        file: PathBuf,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct ResetArgs {
    /// Do not ask for confirmation (without a terminal, reset refuses unless given this).
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// Sync and reboot when done.
    #[arg(short = 'r', long)]
    pub reboot: bool,
    /// Keep a configuration waiting for an upgrade's first boot (/overlay/.ovl-keep, or
    /// OpenWrt's /overlay/sysupgrade.tgz).
    #[arg(short = 'k', long)]
    pub keep: bool,
    /// Unmounted JFFS2 on NOR: erase every block now instead of marking the old nodes
    /// obsolete for JFFS2 to erase after the next mount. Slower (about 0.34 s/MiB on real
    /// NOR), but the old data is physically gone when the command returns.
    #[arg(long)]
    pub full_erase: bool,
    /// Where the writable partition (or the tmpfs upper) is mounted.
    #[arg(long, value_name = "DIR", default_value = "/overlay")]
    pub overlay: PathBuf,
    /// Read this state file instead of /run/ovl/state.json.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// The writable partition, when the overlay is not on it (failsafe, tmpfs); by default
    /// the one preinit found, or in failsafe the one the command line and board name.
    #[arg(long, value_name = "DEV")]
    pub data: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct TreeArgs {
    /// The tree to work on (a device's root, or an image being prepared).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BackupArgs {
    /// Print what would be kept, one path a line, and write nothing.
    #[arg(short = 'l', long)]
    pub list: bool,
    /// Write the archive here (`-`: standard output, the default).
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Also keep every path under /etc that differs from the ROM.
    #[arg(short = 'c', long)]
    pub changed_etc: bool,
    /// Also keep everything in the upper that is not the ROM's unchanged.
    #[arg(long)]
    pub all: bool,
    /// The upper read by --all.
    #[arg(long, value_name = "DIR", default_value = "/overlay/upper")]
    pub upper: PathBuf,
    /// Leave out files identical to their copy in the ROM.
    #[arg(short = 'u', long)]
    pub skip_unchanged: bool,
    #[command(flatten)]
    pub tree: TreeArgs,
    /// The ROM to compare with (default: <root>/rom).
    #[arg(long, value_name = "DIR")]
    pub rom: Option<PathBuf>,
    /// Read this state file instead of /run/ovl/state.json.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct RestoreArgs {
    /// The archive (`-`: standard input).
    #[arg(required_unless_present = "recover")]
    pub archive: Option<PathBuf>,
    /// Only finish (or roll back) a restore that was cut off; preinit does this at boot.
    #[arg(long, conflicts_with = "archive")]
    pub recover: bool,
    /// Also allow every path under /etc (for a backup made with -c).
    #[arg(short = 'c', long)]
    pub changed_etc: bool,
    /// Allow every path but the run-time trees (for a backup made with --all).
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub tree: TreeArgs,
}

#[derive(clap::Args, Debug, Clone)]
pub struct KeepArgs {
    /// Keep nothing: the next boot starts from the new ROM's defaults, on a fresh overlay.
    #[arg(short = 'n')]
    pub nothing: bool,
    /// Also keep every path under /etc that differs from the ROM.
    #[arg(short = 'c')]
    pub changed_etc: bool,
    /// Also keep everything in the upper that is not the ROM's unchanged.
    #[arg(short = 'o')]
    pub all: bool,
    /// Leave out files identical to their copy in the ROM.
    #[arg(short = 'u')]
    pub skip_unchanged: bool,
    /// Keep this archive (a backup) instead of making one from the keep list.
    #[arg(short = 'f', value_name = "TGZ", conflicts_with = "nothing")]
    pub archive: Option<PathBuf>,
    /// The running system's root.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Where the writable partition is mounted.
    #[arg(long, value_name = "DIR", default_value = "/overlay")]
    pub overlay: PathBuf,
    /// Read this state file instead of /run/ovl/state.json.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct SysupgradeArgs {
    #[command(flatten)]
    pub keep: KeepArgs,
    /// OpenWrt's "keep the installed package list": ovl images have no package manager, so
    /// there is no list; accepted for OpenWrt's scripts and adds nothing.
    #[arg(short = 'k')]
    pub packages: bool,
    /// Check the image against this device and stop: nothing is written.
    #[arg(short = 'T')]
    pub test: bool,
    /// Write an image for another board, or of another compat major with -n. Never a
    /// damaged image (bad CRC) nor one larger than the ROM partition.
    #[arg(short = 'F')]
    pub force: bool,
    /// The ROM partition to write; by default the one preinit booted from.
    #[arg(long, value_name = "DEV")]
    pub rom_dev: Option<PathBuf>,
    /// Do not reboot after writing.
    #[arg(long)]
    pub no_reboot: bool,
    /// The sysupgrade image (`-`: standard input).
    pub image: Option<PathBuf>,
}

/// Write a new ROM and keep the configuration; -b, -r, -l: backup, restore, list
///
/// OpenWrt's sysupgrade, as ovl does it. With an IMAGE it is `ovlctl sysupgrade`
/// (ovlctl-sysupgrade(8)): the image is checked, the configuration kept on the writable
/// partition, the ROM written and read back, and the device rebooted; the next boot restores
/// the configuration into a fresh overlay. -b FILE writes a backup of the configuration the
/// keep list names (ovlctl backup -o FILE), -r FILE restores one (ovlctl restore FILE) and -l
/// lists what would be kept (ovlctl backup --list); -c, -o and -u choose what they take.
#[derive(Parser, Debug)]
#[command(name = "sysupgrade")]
pub struct SysupgradeAlias {
    /// Write a backup of the kept configuration to FILE (`-`: standard output).
    #[arg(short = 'b', value_name = "FILE", conflicts_with_all = ["restore", "list"])]
    pub backup: Option<PathBuf>,
    /// Restore a backup from FILE (`-`: standard input).
    #[arg(short = 'r', value_name = "FILE", conflicts_with = "list")]
    pub restore: Option<PathBuf>,
    /// List what would be kept.
    #[arg(short = 'l')]
    pub list: bool,
    #[command(flatten)]
    pub args: SysupgradeArgs,
}

/// Factory reset: back to the ROM's state (ovlctl reset)
#[derive(Parser, Debug)]
#[command(name = "firstboot")]
#[cfg_attr(feature = "help", command(long_about = concat!(
    "Factory reset: back to the ROM's state (ovlctl reset)\n\n",
    "OpenWrt's names for `ovlctl reset`, with its flags: firstboot, factoryreset and jffs2reset \
     (a reset button runs `firstboot -y -r`). ",
    reset_help!(),
    "\n\n`ovlctl firstboot`, the subcommand, is not a reset: it runs the run-once scripts and \
     completes the first boot (ovlctl-firstboot(8))."
)))]
pub struct ResetAlias {
    #[command(flatten)]
    pub args: ResetArgs,
}

#[derive(clap::Args, Debug)]
pub struct PreinitArgs {
    /// Work below this directory instead of / (tests): nothing outside it is written or
    /// executed. Required unless preinit runs as PID 1.
    #[arg(long, value_name = "DIR")]
    pub target: Option<PathBuf>,
    /// Read the kernel command line from this file instead of <target>/proc/cmdline.
    #[arg(long, value_name = "FILE")]
    pub cmdline_file: Option<PathBuf>,
    /// Board file instead of <target>/etc/ovl/board.json.
    #[arg(long, value_name = "FILE")]
    pub board: Option<PathBuf>,
    /// Probe block devices in this sysfs tree instead of <target>/sys (fixtures).
    #[arg(long, value_name = "DIR")]
    pub sysfs: Option<PathBuf>,
    /// Boot kind; by default told from the root: initramfs on ramfs/tmpfs, rootfs otherwise.
    #[arg(long, value_enum)]
    pub boot: Option<Boot>,
    /// Log to <target>/dev/kmsg instead of stderr.
    #[arg(long)]
    pub kmsg: bool,
    /// Arguments passed to init.
    #[arg(last = true)]
    pub init_args: Vec<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Boot {
    /// The root is an initramfs: find and mount the ROM, then switch into the overlay.
    Initramfs,
    /// The kernel mounted the ROM as / (init=/sbin/preinit): stack the overlay over it.
    Rootfs,
}

impl From<Boot> for BootKind {
    fn from(b: Boot) -> BootKind {
        match b {
            Boot::Initramfs => BootKind::Initramfs,
            Boot::Rootfs => BootKind::Rootfs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definitions_pass_clap_checks() {
        // Conflicting names, bad defaults and the like only show when a command is built.
        Cli::command().debug_assert();
        ResetAlias::command().debug_assert();
        SysupgradeAlias::command().debug_assert();
    }
}
