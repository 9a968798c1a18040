//! ovl: a flash overlay manager for embedded Linux.
//!
//! The boot pipeline is probe -> plan -> apply (see `preinit`); `ovlctl` is in `cli` and the
//! commands' modules.

// Boot code must not panic: no unwrap, expect, panic or unchecked indexing outside tests.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod apply;
pub mod backup;
pub mod board;
pub mod check_board;
#[cfg(feature = "help")]
pub mod cli;
/// The same definitions without their help texts (see the top of src/cli.rs).
#[cfg(not(feature = "help"))]
pub mod cli {
    include!(concat!(env!("OUT_DIR"), "/cli.rs"));
}
pub mod cmdline;
pub mod config;
pub mod crash;
pub mod crc32;
pub mod decimal;
pub mod firstboot;
pub mod flash;
pub mod gzip;
pub mod help;
pub mod image;
pub mod keep;
pub mod klog;
pub mod loopdev;
pub mod mtd;
pub mod overlay;
pub mod plan;
pub mod preinit;
pub mod probe;
pub mod reset;
pub mod restore;
pub mod spawn;
pub mod state;
pub mod status;
pub mod sys;
pub mod timing;
pub mod ubi;
pub mod ubistage;
pub mod upgrade;
