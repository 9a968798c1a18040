//! Host-side tasks for image builders; nothing here goes into the device binary.
//!
//! `xtask docs OUTDIR` writes man pages and shell completions made from ovl's clap definitions
//! (`ovl::cli`), laid out as under `/usr/share`, so an image builder copies OUTDIR's tree in:
//! `man/man8/*.8`, `bash-completion/completions/NAME`, `zsh/site-functions/_NAME`,
//! `fish/vendor_completions.d/NAME.fish`.
//!
//! `xtask help-blob FILE` writes the help texts the device build carries (ovl's src/help.rs).

use anyhow::Context;
use clap::{Command, CommandFactory, Parser};
use clap_complete::Shell;
use clap_mangen::roff::{bold, roman, Roff};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(name = "xtask", about = "Host-side tasks for ovl's image builders")]
enum Task {
    /// Write man pages (OUTDIR/man/man8) and bash, zsh and fish completions (OUTDIR/
    /// bash-completion, zsh, fish), laid out as under /usr/share.
    Docs {
        /// Where to write them (made if missing).
        outdir: PathBuf,
    },
    /// Write the long help of every command, rendered and deflated, for the device build (its
    /// clap has no help renderer; ovl's src/help.rs).
    HelpBlob {
        /// The file to write.
        file: PathBuf,
    },
}

/// System administration: every name this binary has manages the device's flash.
const SECTION: &str = "8";

/// The reset's OpenWrt names (argv[0]), parsed as `ovl::cli::ResetAlias`.
const RESET_NAMES: [&str; 3] = ["firstboot", "factoryreset", "jffs2reset"];

fn version() -> String {
    ovl::cli::Cli::command()
        .get_version()
        .unwrap_or_default()
        .to_string()
}

/// `ovlctl` as its man page and completions show it: the `help` subcommand only repeats
/// `--help`, and a page listing it would point at `ovlctl-help(8)`, which does not exist.
fn ovlctl() -> Command {
    let mut cmd = ovl::cli::Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// An alias parser under the name it is called by. The version is the package's (for the
/// page's footer and VERSION section) without adding a `--version` the binary does not take.
fn alias(cmd: Command, name: &'static str) -> Command {
    cmd.name(name)
        .bin_name(name)
        .display_name(name)
        .version(version())
        .disable_version_flag(true)
}

/// Every man page: file stem (what `man NAME` finds) and the command it documents.
fn pages() -> Vec<(String, Command)> {
    let top = ovlctl();
    let mut pages = vec![("ovlctl".to_string(), top.clone())];
    for sub in top.get_subcommands().filter(|s| !s.is_hide_set()) {
        // `build` gave each subcommand its page name, ovlctl-NAME, as the SUBCOMMANDS list
        // of ovlctl(8) cites it. Clap adds flags only when it builds, so the version given to
        // a built command brings no `--version` that `ovlctl NAME` would not take.
        let name = sub.get_display_name().unwrap_or(sub.get_name()).to_string();
        pages.push((name, sub.clone().version(version())));
    }
    // `preinit` as argv[0] is the boot (PID 1 only; its arguments go to init); the flags are
    // those of `ovlctl preinit`, for tests. Its page shows both ways it is run.
    if let Some(p) = top.find_subcommand("preinit") {
        pages.push((
            "preinit".to_string(),
            p.clone()
                .display_name("preinit")
                .bin_name("preinit")
                .version(version())
                .override_usage(
                    "preinit [INIT_ARGS]...   (as PID 1: /init, init=/sbin/preinit)\n\
                     ovlctl preinit [OPTIONS] [-- INIT_ARGS...]",
                ),
        ));
    }
    for name in RESET_NAMES {
        pages.push((
            name.to_string(),
            alias(ovl::cli::ResetAlias::command(), name),
        ));
    }
    pages.push((
        "sysupgrade".to_string(),
        alias(ovl::cli::SysupgradeAlias::command(), "sysupgrade"),
    ));
    pages
}

/// The names completions are written for: `preinit` takes no options as argv[0] (its
/// arguments are init's), so it has none.
fn completed() -> Vec<(&'static str, Command)> {
    let mut v = vec![
        ("ovlctl", ovl::cli::Cli::command()),
        ("sysupgrade", ovl::cli::SysupgradeAlias::command()),
    ];
    v.extend(
        RESET_NAMES
            .iter()
            .map(|&n| (n, ovl::cli::ResetAlias::command())),
    );
    v
}

/// The pages a reader of one page goes to next: the other names of the same work.
fn see_also(page: &str) -> &'static [&'static str] {
    match page {
        "ovlctl" => &[
            "preinit",
            "sysupgrade",
            "firstboot",
            "factoryreset",
            "jffs2reset",
        ],
        "preinit" => &["ovlctl-preinit", "ovlctl-status", "ovlctl"],
        "firstboot" | "factoryreset" | "jffs2reset" => {
            &["ovlctl-reset", "ovlctl-firstboot", "ovlctl"]
        }
        "sysupgrade" => &[
            "ovlctl-sysupgrade",
            "ovlctl-backup",
            "ovlctl-restore",
            "ovlctl-mkimage",
            "ovlctl",
        ],
        "ovlctl-preinit" => &["preinit", "ovlctl-status", "ovlctl"],
        "ovlctl-status" => &["preinit", "ovlctl"],
        "ovlctl-reset" => &["firstboot", "factoryreset", "jffs2reset", "ovlctl"],
        // `firstboot` as argv[0] is the reset, not this.
        "ovlctl-firstboot" => &["firstboot", "ovlctl-reset", "ovlctl"],
        "ovlctl-backup" => &["ovlctl-restore", "sysupgrade", "ovlctl"],
        "ovlctl-restore" => &["ovlctl-backup", "sysupgrade", "ovlctl"],
        "ovlctl-sysupgrade" => &[
            "sysupgrade",
            "ovlctl-sysupgrade-keep",
            "ovlctl-mkimage",
            "ovlctl",
        ],
        "ovlctl-sysupgrade-keep" => &["ovlctl-sysupgrade", "ovlctl"],
        "ovlctl-mkimage" => &["ovlctl-sysupgrade", "ovlctl"],
        _ => &["ovlctl"],
    }
}

/// clap_mangen 0.3 writes a short-only flag in the synopsis with a space inside its brackets
/// (`[-b ]`); the synopsis is the only place where `\fR]` follows a space.
fn tidy_synopsis(page: String) -> String {
    page.replace(" \\fR]", "\\fR]")
}

/// A SEE ALSO section (clap_mangen has none), put before VERSION as man-pages(7) orders them.
fn with_see_also(page: String, name: &str) -> String {
    let mut refs = Vec::new();
    for (i, r) in see_also(name).iter().enumerate() {
        if i > 0 {
            refs.push(roman(", "));
        }
        refs.push(bold(*r));
        refs.push(roman(format!("({SECTION})")));
    }
    let mut roff = Roff::new();
    roff.control("SH", ["SEE ALSO"]).text(refs);
    // No apostrophes in page names: the preamble render() repeats is not needed.
    let section = roff.to_roff();
    match page.find(".SH VERSION\n") {
        Some(at) => format!("{}{section}{}", &page[..at], &page[at..]),
        None => page + &section,
    }
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("write {}", path.display()))
}

fn docs(out: &Path) -> anyhow::Result<()> {
    let man = out.join("man").join(format!("man{SECTION}"));
    let bash = out.join("bash-completion/completions");
    let zsh = out.join("zsh/site-functions");
    let fish = out.join("fish/vendor_completions.d");
    for d in [&man, &bash, &zsh, &fish] {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    let source = format!("ovl {}", version());
    for (name, cmd) in pages() {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd)
            .title(name.to_uppercase())
            .section(SECTION)
            .source(&source)
            .render(&mut page)
            .with_context(|| format!("render {name}.{SECTION}"))?;
        let page = String::from_utf8(page).with_context(|| format!("{name}.{SECTION}"))?;
        write(
            &man.join(format!("{name}.{SECTION}")),
            with_see_also(tidy_synopsis(page), &name).as_bytes(),
        )?;
    }
    for (name, mut cmd) in completed() {
        for (shell, path) in [
            // bash-completion loads completions/NAME when NAME is first completed.
            (Shell::Bash, bash.join(name)),
            (Shell::Zsh, zsh.join(format!("_{name}"))),
            (Shell::Fish, fish.join(format!("{name}.fish"))),
        ] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, name, &mut script);
            write(&path, &script)?;
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Task::parse() {
        Task::Docs { outdir } => docs(&outdir),
        Task::HelpBlob { file } => {
            let blob = ovl::help::render(ovl::cli::parsers()).context("render the help texts")?;
            std::fs::write(&file, blob).with_context(|| format!("write {}", file.display()))
        }
    }
}
