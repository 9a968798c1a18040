//! Logging with the program's name in front: to /dev/kmsg while booting as PID 1 (the console
//! may not be ours and kmsg survives the switch), to stderr otherwise. The kernel rate-limits
//! user writes to kmsg, so preinit logs one line per decision.

use std::io::Write;
use std::sync::Mutex;

pub struct Logger {
    prefix: &'static str,
    kmsg: Mutex<Option<std::fs::File>>,
}

static LOGGER: std::sync::OnceLock<Logger> = std::sync::OnceLock::new();

/// Installs the logger; safe to call more than once (the first call wins).
pub fn init(prefix: &'static str) {
    let logger = LOGGER.get_or_init(|| Logger {
        prefix,
        kmsg: Mutex::new(None),
    });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

/// Sends further lines to the given kmsg device.
pub fn to_kmsg(path: &std::path::Path) {
    if let Some(l) = LOGGER.get() {
        if let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) {
            if let Ok(mut k) = l.kmsg.lock() {
                *k = Some(f);
            }
        }
    }
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Info
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        // syslog priorities: err 3, warning 4, info 6.
        let prio = match r.level() {
            log::Level::Error => 3,
            log::Level::Warn => 4,
            _ => 6,
        };
        if let Ok(mut k) = self.kmsg.lock() {
            if let Some(f) = k.as_mut() {
                let line = format!("<{prio}>{}: {}\n", self.prefix, r.args());
                if f.write_all(line.as_bytes()).is_ok() {
                    return;
                }
            }
        }
        let _ = writeln!(std::io::stderr(), "{}: {}", self.prefix, r.args());
    }

    fn flush(&self) {}
}
