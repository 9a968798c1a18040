//! The `ovlctl` command line. One binary: called `preinit` or `init` it boots (see main.rs).

use crate::plan::BootKind;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "ovlctl",
    version,
    about = "Flash overlay manager: a squashfs ROM with a JFFS2 or ext4 overlay, and a tmpfs when that fails",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show which overlay the system runs on and why. Exit status: 0 persistent, 1 tmpfs,
    /// failsafe or bare ROM, 2 unknown (no state file).
    Status {
        /// Print JSON with stable keys instead of text.
        #[arg(long)]
        json: bool,
        /// Read this state file instead of /run/ovl/state.json.
        #[arg(long, value_name = "FILE")]
        state: Option<PathBuf>,
    },
    /// Boot: mount the ROM and the writable partition, stack the overlay, switch into it and
    /// exec init. This is what runs as /init or PID 1; the flags let it run in a test.
    Preinit(PreinitArgs),
    /// Factory reset: back to the ROM's state. Also what the binary does when called
    /// `factoryreset`, `jffs2reset` or `firstboot` (OpenWrt's names for it).
    Reset(ResetArgs),
    /// Run the run-once scripts in /etc/firstboot.d and complete the first boot (what the
    /// ROM's init calls late in every boot). Not a reset: called `firstboot` as argv[0] the
    /// binary resets, as OpenWrt's firstboot does.
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
    },
    /// Write a backup of the configuration the keep list names (/etc/sysupgrade.conf,
    /// /lib/upgrade/keep.d/*): a gzip'd tar that GNU tar and busybox tar read.
    Backup(BackupArgs),
    /// Restore a backup (ours or a `tar czf` of etc/...): only what the keep list allows, all
    /// of it or nothing; a hostile archive is refused before anything is written.
    Restore(RestoreArgs),
    /// Write a new ROM image (checked first), keeping the configuration for the next boot:
    /// OpenWrt's sysupgrade. Reboots when done. Also what the binary does when called
    /// `sysupgrade` (then -b FILE, -r FILE and -l are backup, restore and backup --list).
    Sysupgrade(SysupgradeArgs),
    /// Only the keeping part of sysupgrade: the configuration is kept on the writable
    /// partition and the next boot starts a fresh overlay with it restored (for a flash step
    /// that something else performs).
    SysupgradeKeep(KeepArgs),
    /// Make a sysupgrade image from a squashfs ROM (for image builders; see README).
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

/// sysupgrade under its OpenWrt name: -b, -r and -l as well as the upgrade itself.
#[derive(Parser, Debug)]
#[command(
    name = "sysupgrade",
    about = "Write a new ROM and keep the configuration (ovlctl sysupgrade); -b/-r/-l: backup, restore, list"
)]
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

/// The reset under OpenWrt's names (`firstboot -y -r`, `factoryreset`, `jffs2reset`).
#[derive(Parser, Debug)]
#[command(about = "Factory reset: back to the ROM's state (ovlctl reset)")]
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
    Initramfs,
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
