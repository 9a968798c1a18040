//! For a build without the `help` feature (the device build): a copy of src/cli.rs without
//! its doc comments, which that build compiles instead (see the top of src/cli.rs).

use std::path::PathBuf;

fn main() {
    println!("cargo::rerun-if-changed=src/cli.rs");
    if std::env::var_os("CARGO_FEATURE_HELP").is_some() {
        return;
    }
    let text = match std::fs::read_to_string("src/cli.rs") {
        Ok(t) => t,
        Err(e) => panic!("read src/cli.rs: {e}"),
    };
    let bare: String = text
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            !t.starts_with("///") && !t.starts_with("//!")
        })
        .flat_map(|l| [l, "\n"])
        .collect();
    let Some(out) = std::env::var_os("OUT_DIR") else {
        panic!("cargo sets OUT_DIR for build scripts");
    };
    let out = PathBuf::from(out).join("cli.rs");
    if let Err(e) = std::fs::write(&out, bare) {
        panic!("write {}: {e}", out.display());
    }
}
