//! One static binary: `preinit` or `init` (as /init of an initramfs, or init= on the kernel
//! command line) boots; any other name is `ovlctl`.

use clap::Parser;
use ovl::cli::{Cli, Command};
use ovl::preinit::{self, Options};
use ovl::sys::real::Real;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn boot(opts: Options) -> ExitCode {
    let mut sys = Real::new(opts.target.join("dev"));
    let code = preinit::run(&opts, &mut sys);
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// A panic in PID 1 would panic the kernel. The boot code is written not to panic; should it
/// all the same, say so and still try to run an init rather than take the device down.
fn last_words(info: &std::panic::PanicHookInfo) {
    log::error!("BUG: {info}; trying to start init anyway");
    for init in ["/sbin/init", "/etc/init", "/bin/init", "/bin/sh"] {
        if let Ok(p) = std::ffi::CString::new(init) {
            let _ = nix::unistd::execv(&p, &[&p]);
        }
    }
}

fn main() -> ExitCode {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let name = Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name == "preinit" || name == "init" {
        ovl::klog::init("preinit");
        let pid1 = nix::unistd::getpid().as_raw() == 1;
        if pid1 {
            std::panic::set_hook(Box::new(last_words));
        }
        return boot(Options {
            target: PathBuf::from("/"),
            // The kernel hands init whatever bytes the command line had: no UTF-8 promised.
            init_args: std::env::args_os()
                .skip(1)
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            kmsg: pid1,
            ..Options::default()
        });
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Preinit(a) => {
            ovl::klog::init("preinit");
            boot(Options {
                target: a.target,
                cmdline_file: a.cmdline_file,
                board_file: a.board,
                sysfs: a.sysfs,
                boot: a.boot.map(Into::into),
                init_args: a.init_args,
                kmsg: a.kmsg || nix::unistd::getpid().as_raw() == 1,
            })
        }
        Command::Status { json, state } => {
            ovl::klog::init("ovlctl");
            match ovl::status::gather(state.as_deref()) {
                Ok(s) => {
                    if json {
                        match s.to_json() {
                            Ok(j) => println!("{j}"),
                            Err(e) => {
                                eprintln!("ovlctl: status: {e}");
                                return ExitCode::from(2);
                            }
                        }
                    } else {
                        print!("{}", s.to_text());
                    }
                    ExitCode::from(s.exit_code() as u8)
                }
                Err(e) => {
                    eprintln!("ovlctl: status: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::CheckBoard { file } => {
            match ovl::board::Board::load(&file.display().to_string()) {
                Ok(b) => {
                    println!("{b:#?}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ovlctl: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
