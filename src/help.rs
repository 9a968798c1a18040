//! Help text rendered at build time, for the device build.
//!
//! clap's help and usage renderers (its `help` and `usage` features) are about 36 KB of the
//! device binary, the largest part of clap in it. The device build (`scripts/device.sh`) turns
//! ovl's `help` feature off and carries instead the long help of every command, rendered by
//! the host's clap (`xtask help-blob FILE`, which calls [`render`]) and deflated: about 5 KB.
//! Each command then gets an `override_help` that holds only its key; when clap answers
//! `--help` (or `-h`, or `help CMD`) with that key, [`exit`] prints the text it names.
//! The host build keeps clap's own renderer, so tests and `--help` there are clap's.

use clap::Command;
use std::io::Read;

/// Stands for the binary's name (argv[0]) in the rendered texts, and starts every key.
const NAME: char = '\u{1}';

/// Calls `f` on every command under `cmd` (itself first, then its subcommands depth first,
/// clap's own `help` subcommand left out) with its path of names: the key of its text.
fn walk(cmd: &mut Command, path: &str, f: &mut dyn FnMut(&str, &mut Command)) {
    let path = if path.is_empty() {
        cmd.get_name().to_string()
    } else {
        format!("{path} {}", cmd.get_name())
    };
    f(&path, cmd);
    for s in cmd.get_subcommands_mut() {
        if s.get_name() != "help" {
            walk(s, &path, f);
        }
    }
}

/// The deflated texts: `key NUL text NUL`, for every command of every parser in `roots`.
#[cfg(feature = "help")]
pub fn render(roots: Vec<Command>) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    for root in roots {
        let mut root = root.bin_name(NAME.to_string());
        root.build();
        let mut texts = Vec::new();
        walk(&mut root, "", &mut |key, cmd| {
            texts.push((key.to_string(), cmd.render_long_help().to_string()))
        });
        for (key, text) in texts {
            for part in [key.as_bytes(), b"\0", text.as_bytes(), b"\0"] {
                enc.write_all(part)?;
            }
        }
    }
    enc.finish()
}

/// Gives every command under `root` its key as `override_help`, so that clap's answer to a
/// help request says which text to print.
pub fn attach(root: &mut Command) {
    walk(root, "", &mut |key, cmd| {
        *cmd = std::mem::take(cmd).override_help(format!("{NAME}{key}"));
    });
}

/// The text of `key` in `blob`, with `name` for the binary's name; None when the blob is
/// damaged or does not hold the key.
pub fn lookup(blob: &[u8], key: &str, name: &str) -> Option<String> {
    let mut texts = Vec::new();
    flate2::read::DeflateDecoder::new(blob)
        .read_to_end(&mut texts)
        .ok()?;
    let mut parts = texts.split(|&b| b == 0);
    while let (Some(k), Some(text)) = (parts.next(), parts.next()) {
        if k == key.as_bytes() {
            let text = String::from_utf8_lossy(text);
            return Some(text.replace(NAME, name));
        }
    }
    None
}

/// The key clap answered a help request with, when `e` is one whose text [`attach`] replaced.
pub fn key_of(e: &clap::Error) -> Option<String> {
    use clap::error::ErrorKind;
    if !matches!(
        e.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        return None;
    }
    let shown = e.render().to_string();
    let key = shown.trim().strip_prefix(NAME)?;
    Some(key.to_string())
}

/// Ends the process for a clap error: a help request's text from `blob` (status 0, or 2 when
/// a subcommand was missing), anything else as clap prints it.
pub fn exit(e: clap::Error, blob: &[u8], name: &str) -> ! {
    if let Some(key) = key_of(&e) {
        let missing = e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand;
        match lookup(blob, &key, name) {
            Some(text) if !missing => {
                print!("{text}");
                std::process::exit(0)
            }
            Some(text) => eprint!("{text}"),
            None => eprintln!("{name}: no help text for `{key}` in this build"),
        }
        std::process::exit(2);
    }
    e.exit()
}

// They render the texts, which needs clap's renderer.
#[cfg(all(test, feature = "help"))]
mod tests {
    use super::*;
    use crate::cli::{parsers as roots, Cli};
    use clap::CommandFactory;

    /// What clap itself prints for `argv`'s help request (the host build's renderer).
    fn clap_says(root: Command, argv: &[&str]) -> String {
        let e = root.try_get_matches_from(argv).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp, "{argv:?}");
        e.render().to_string()
    }

    #[test]
    fn baked_help_is_clap_help() {
        let blob = render(roots()).unwrap();
        let cases: [(usize, &[&str], &str); 6] = [
            (0, &["ovlctl", "--help"], "ovlctl"),
            (0, &["ovlctl", "reset", "--help"], "ovlctl reset"),
            (0, &["ovlctl", "help", "backup"], "ovlctl backup"),
            (
                0,
                &["ovlctl", "sysupgrade-keep", "-h"],
                "ovlctl sysupgrade-keep",
            ),
            (1, &["sysupgrade", "--help"], "sysupgrade"),
            (2, &["jffs2reset", "--help"], "firstboot"),
        ];
        for (i, argv, key) in cases {
            let mut root = roots().swap_remove(i);
            attach(&mut root);
            let e = root.try_get_matches_from(argv).unwrap_err();
            assert_eq!(key_of(&e).as_deref(), Some(key), "{argv:?}");
            let name = argv[0];
            let baked = lookup(&blob, key, name).unwrap();
            // clap's own text, -h aside, is the long one; -h shows the same in the device build.
            let long: Vec<&str> = argv
                .iter()
                .map(|a| if *a == "-h" { "--help" } else { a })
                .collect();
            assert_eq!(baked, clap_says(roots().swap_remove(i), &long), "{argv:?}");
        }
    }

    #[test]
    fn every_command_has_a_text() {
        let blob = render(roots()).unwrap();
        for mut root in roots() {
            let mut keys = Vec::new();
            walk(&mut root, "", &mut |key, _| keys.push(key.to_string()));
            for key in keys {
                let t = lookup(&blob, &key, "ovlctl").unwrap();
                assert!(t.contains("Usage: "), "{key}: {t}");
            }
        }
        assert_eq!(lookup(&blob, "ovlctl nothing", "x"), None);
        assert_eq!(lookup(b"not deflate", "ovlctl", "x"), None);
    }

    #[test]
    fn other_errors_are_left_to_clap() {
        let mut root = Cli::command();
        attach(&mut root);
        let e = root
            .try_get_matches_from(["ovlctl", "reset", "--nope"])
            .unwrap_err();
        assert_eq!(key_of(&e), None);
        let mut root = Cli::command();
        attach(&mut root);
        let e = root
            .try_get_matches_from(["ovlctl", "--version"])
            .unwrap_err();
        assert_eq!(key_of(&e), None);
    }
}
