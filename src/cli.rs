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
    /// Check a board file and print what it says, or the first error with the key it is about.
    CheckBoard {
        /// The board file.
        file: PathBuf,
    },
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
