//! One static binary: `preinit` or `init` (as /init of an initramfs, or init= on the kernel
//! command line) boots; any other name is `ovlctl`.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use ovl::cli::{Cli, Command};
use ovl::preinit::{self, Options};
use ovl::sys::real::Real;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The device build's help texts (src/help.rs).
#[cfg(not(feature = "help"))]
const HELP: &[u8] = include_bytes!(env!(
    "OVL_HELP_BLOB",
    "a build without the `help` feature needs OVL_HELP_BLOB, the file `xtask help-blob FILE` \
     writes (scripts/device.sh does both)"
));

/// Parses argv with `P`; on a help request the device build prints its pre-rendered text.
fn parse<P: clap::Parser>(name: &str) -> P {
    let mut cmd = P::command();
    #[cfg(not(feature = "help"))]
    ovl::help::attach(&mut cmd);
    let r = cmd
        .try_get_matches_from_mut(std::env::args_os())
        .and_then(|mut m| P::from_arg_matches_mut(&mut m));
    match r.map_err(|e| e.format(&mut cmd)) {
        Ok(p) => p,
        #[cfg(not(feature = "help"))]
        Err(e) => ovl::help::exit(e, HELP, name),
        #[cfg(feature = "help")]
        Err(e) => {
            let _ = name;
            e.exit()
        }
    }
}

fn boot(opts: Options) -> ExitCode {
    let mut sys = Real::new(opts.target.join("dev"));
    let code = preinit::run(&opts, &mut sys);
    ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(255))
}

/// A panic in PID 1 would panic the kernel, and a kernel panic on a router is a boot loop with
/// no word of why. The boot code is written not to panic; should it all the same, say what in
/// kmsg and start preinit again on tmpfs (ovl::crash). The device build aborts at once on a
/// panic instead of running this hook; the crash handler takes it from there.
fn last_words(info: &std::panic::PanicHookInfo) {
    let line = format!("preinit: BUG: {info}\n");
    for dev in ["/dev/kmsg", "/dev/console"] {
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(dev) {
            let _ = std::io::Write::write_all(&mut f, line.as_bytes());
        }
    }
    ovl::crash::crashed(0)
}

fn reset(a: ovl::cli::ResetArgs) -> ExitCode {
    let o = ovl::reset::Opts {
        yes: a.yes,
        reboot: a.reboot,
        keep: a.keep,
        full_erase: a.full_erase,
        state: a.state,
        overlay: a.overlay,
        data: a.data,
    };
    match ovl::reset::run(&o) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failed("reset", &e),
    }
}

fn backup(a: ovl::cli::BackupArgs) -> ExitCode {
    let upper = if a.tree.root == Path::new("/") {
        a.upper
    } else {
        a.tree
            .root
            .join(a.upper.strip_prefix("/").unwrap_or(&a.upper))
    };
    let o = ovl::backup::Opts {
        root: a.tree.root,
        rom: a.rom,
        extra: ovl::keep::Extra {
            changed_etc: a.changed_etc,
            upper: a.all.then_some(upper),
            skip_unchanged: a.skip_unchanged,
        },
        output: a.output,
        state: a.state,
    };
    if a.list {
        return match ovl::backup::list(&o) {
            Ok((paths, left_out)) => {
                let mut out = std::io::stdout().lock();
                for p in paths {
                    let mut line = std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()).to_vec();
                    line.insert(0, b'/');
                    line.push(b'\n');
                    if std::io::Write::write_all(&mut out, &line).is_err() {
                        return ExitCode::from(2);
                    }
                }
                for l in left_out {
                    eprintln!("ovlctl: backup: /{l}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => failed("backup", &e),
        };
    }
    match ovl::backup::run(&o) {
        Ok(s) => {
            for l in &s.left_out {
                eprintln!("ovlctl: backup: /{l}");
            }
            eprintln!(
                "ovlctl: backup: {} members, {} bytes{}",
                s.members,
                s.bytes,
                o.output
                    .as_ref()
                    .filter(|p| p.as_os_str() != "-")
                    .map_or(String::new(), |p| format!(" in {}", p.display()))
            );
            ExitCode::SUCCESS
        }
        Err(e) => failed("backup", &e),
    }
}

fn restore(a: ovl::cli::RestoreArgs) -> ExitCode {
    let Some(archive) = a.archive.filter(|_| !a.recover) else {
        return match ovl::restore::recover(&a.tree.root) {
            Ok(r) => {
                eprintln!(
                    "ovlctl: restore: {}",
                    match r {
                        Some(true) => "finished a restore that was cut off",
                        Some(false) => "rolled back a restore that was cut off",
                        None => "no restore was cut off",
                    }
                );
                ExitCode::SUCCESS
            }
            Err(e) => failed("restore", &e),
        };
    };
    let o = ovl::restore::Opts {
        root: a.tree.root,
        archive,
        all_etc: a.changed_etc,
        everything: a.all,
    };
    match ovl::restore::run(&o) {
        Ok(s) => {
            match s.recovered {
                Some(true) => eprintln!("ovlctl: restore: finished a restore that was cut off"),
                Some(false) => {
                    eprintln!("ovlctl: restore: rolled back a restore that was cut off")
                }
                None => {}
            }
            if !s.skipped.is_empty() {
                eprintln!(
                    "ovlctl: restore: left out {} members the keep list does not allow: {}",
                    s.skipped.len(),
                    s.skipped.join(", ")
                );
            }
            eprintln!(
                "ovlctl: restore: {} paths restored into {}{}",
                s.restored,
                o.root.display(),
                s.from.map_or(" (no manifest)".into(), |(b, r)| format!(
                    " (backup of board {b}, ROM {r})"
                ))
            );
            ExitCode::SUCCESS
        }
        Err(e) => failed("restore", &e),
    }
}

fn keep_opts(k: ovl::cli::KeepArgs) -> ovl::upgrade::KeepOpts {
    ovl::upgrade::KeepOpts {
        nothing: k.nothing,
        changed_etc: k.changed_etc,
        all: k.all,
        skip_unchanged: k.skip_unchanged,
        archive: k.archive,
        root: k.root,
        overlay: k.overlay,
        state: k.state,
    }
}

fn sysupgrade(a: ovl::cli::SysupgradeArgs) -> ExitCode {
    let Some(image) = a.image else {
        eprintln!("ovlctl: sysupgrade: no image given (try --help)");
        return ExitCode::from(2);
    };
    if a.packages {
        eprintln!("ovlctl: sysupgrade: -k: this image has no package list to keep; ignored");
    }
    let o = ovl::upgrade::Opts {
        image,
        keep: keep_opts(a.keep),
        test_only: a.test,
        force: a.force,
        rom_dev: a.rom_dev,
        no_reboot: a.no_reboot,
    };
    match ovl::upgrade::run(&o) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failed("sysupgrade", &e),
    }
}

/// `sysupgrade` as argv[0]: OpenWrt's -b/-r/-l go to backup, restore and backup --list.
fn sysupgrade_alias(a: ovl::cli::SysupgradeAlias) -> ExitCode {
    let k = &a.args.keep;
    if a.list || a.backup.is_some() {
        return backup(ovl::cli::BackupArgs {
            list: a.list,
            output: a.backup.clone(),
            changed_etc: k.changed_etc,
            all: k.all,
            upper: k.overlay.join("upper"),
            skip_unchanged: k.skip_unchanged,
            tree: ovl::cli::TreeArgs {
                root: k.root.clone(),
            },
            rom: None,
            state: k.state.clone(),
        });
    }
    if let Some(archive) = a.restore {
        return restore(ovl::cli::RestoreArgs {
            archive: Some(archive),
            recover: false,
            changed_etc: k.changed_etc,
            all: k.all,
            tree: ovl::cli::TreeArgs {
                root: k.root.clone(),
            },
        });
    }
    sysupgrade(a.args)
}

fn mkimage(rom: &Path, out: &Path, boards: &[String], release: &str, compat: &str) -> ExitCode {
    let r = (|| -> anyhow::Result<usize> {
        use anyhow::Context;
        let Some(compat) = ovl::image::parse_compat(compat) else {
            anyhow::bail!("--compat {compat}: not MAJOR.MINOR");
        };
        let bytes = std::fs::read(rom).with_context(|| format!("read {}", rom.display()))?;
        let img = ovl::image::build(&bytes, boards, release, compat)?;
        std::fs::write(out, &img).with_context(|| format!("write {}", out.display()))?;
        Ok(img.len())
    })();
    match r {
        Ok(n) => {
            eprintln!("ovlctl: mkimage: {} ({n} bytes)", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => failed("mkimage", &e),
    }
}

/// Says why a command failed, as every command does: "ovlctl: CMD: reason: cause", status 2.
fn failed(cmd: &str, e: &anyhow::Error) -> ExitCode {
    eprintln!("ovlctl: {cmd}: {e:#}");
    ExitCode::from(2)
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
        if !pid1 {
            eprintln!(
                "{name}: refusing to run: not PID 1. As {name} this binary boots the device \
                 (it would replace the live root); use `ovlctl preinit --target DIR` to try it."
            );
            return ExitCode::from(2);
        }
        std::panic::set_hook(Box::new(last_words));
        ovl::crash::install(&argv0.to_string_lossy());
        return boot(Options {
            target: PathBuf::from("/"),
            // The kernel hands init whatever bytes the command line had: no UTF-8 promised.
            init_args: std::env::args_os()
                .skip(1)
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            kmsg: pid1,
            pid1,
            crashed: ovl::crash::previous(),
            ..Options::default()
        });
    }
    if matches!(name.as_str(), "factoryreset" | "jffs2reset" | "firstboot") {
        ovl::klog::init("ovlctl");
        let a = parse::<ovl::cli::ResetAlias>(&name);
        return reset(a.args);
    }
    if name == "sysupgrade" {
        ovl::klog::init("ovlctl");
        return sysupgrade_alias(parse(&name));
    }
    let cli: Cli = parse(&name);
    match cli.command {
        Command::Preinit(a) => {
            ovl::klog::init("preinit");
            let pid1 = nix::unistd::getpid().as_raw() == 1;
            // By hand on a running system, preinit would switch (and free) the live root.
            let Some(target) = a.target.or_else(|| pid1.then(|| PathBuf::from("/"))) else {
                eprintln!(
                    "ovlctl: preinit: refusing to run: not PID 1 and no --target given. It \
                     mounts, switches the root and execs init; on a running system that would \
                     replace the live root. Give --target DIR to boot below DIR (tests)."
                );
                return ExitCode::from(2);
            };
            if pid1 {
                std::panic::set_hook(Box::new(last_words));
                ovl::crash::install(&argv0.to_string_lossy());
            }
            boot(Options {
                target,
                cmdline_file: a.cmdline_file,
                board_file: a.board,
                sysfs: a.sysfs,
                boot: a.boot.map(Into::into),
                init_args: a.init_args,
                kmsg: a.kmsg || pid1,
                pid1,
                crashed: ovl::crash::previous(),
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
                Err(e) => failed("status", &e),
            }
        }
        Command::Reset(a) => {
            ovl::klog::init("ovlctl");
            reset(a)
        }
        Command::Firstboot {
            dir,
            overlay,
            state,
            timeout,
        } => {
            let Some(timeout) = ovl::decimal::parse_seconds(&timeout) else {
                eprintln!("ovlctl: firstboot: --timeout {timeout:?}: not a number of seconds");
                return ExitCode::from(2);
            };
            ovl::klog::init("ovlctl");
            // The scripts run in groups of their own: a Ctrl-C must reach them through us.
            ovl::spawn::stop_on_signals();
            let o = ovl::firstboot::Opts {
                dir,
                overlay,
                state,
                limit: Some(timeout).filter(|t| !t.is_zero()),
                kmsg: true,
            };
            match ovl::firstboot::run(&o) {
                Ok(s) if s.failed.is_empty() => ExitCode::SUCCESS,
                Ok(_) => ExitCode::from(1),
                Err(e) => failed("firstboot", &e),
            }
        }
        Command::Backup(a) => {
            ovl::klog::init("ovlctl");
            backup(a)
        }
        Command::Restore(a) => {
            ovl::klog::init("ovlctl");
            restore(a)
        }
        Command::Sysupgrade(a) => {
            ovl::klog::init("ovlctl");
            sysupgrade(a)
        }
        Command::SysupgradeKeep(k) => {
            ovl::klog::init("ovlctl");
            match ovl::upgrade::keep_only(&keep_opts(k)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => failed("sysupgrade-keep", &e),
            }
        }
        Command::Mkimage {
            rom,
            output,
            boards,
            release,
            compat,
        } => mkimage(&rom, &output, &boards, &release, &compat),
        Command::CheckBoard { json, file } => {
            match ovl::board::Board::load(&file.display().to_string()) {
                Ok(b) => {
                    let s = ovl::check_board::Summary::new(&b);
                    if json {
                        match s.to_json() {
                            Ok(j) => println!("{j}"),
                            Err(e) => {
                                eprintln!("ovlctl: check-board: {e}");
                                return ExitCode::from(2);
                            }
                        }
                    } else {
                        print!("{}", s.to_text());
                    }
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
