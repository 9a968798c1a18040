//! The kernel command line, and the configuration resolved from it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ovl::board::Board;
use ovl::cmdline::Cmdline;
use ovl::config::{Config, MAX_TIMEOUT};
use ovl::plan::BootKind;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let c = Cmdline::parse(&text);
    for key in ["ovl.rom", "root", "ovl.data", "ovl.failsafe", "init"] {
        let _ = c.get(key);
        let _ = c.flag(key);
    }
    let _ = c.module_params("cmdlinepart");
    for boot in [BootKind::Initramfs, BootKind::Rootfs] {
        let cfg = Config::resolve(&c, &Board::default(), boot);
        assert!(cfg.timeout.value <= MAX_TIMEOUT, "timeout not capped");
        assert!(
            !cfg.rom.is_empty() && !cfg.data.is_empty(),
            "no selector left"
        );
    }
});
