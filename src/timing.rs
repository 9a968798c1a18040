//! Sub-step timings of preinit, for `bench/boards.sh --steps`: compiled only with the cargo
//! feature `timing`, never into a shipped build (the labels and their formatting are code the
//! device does not need). [`timed!`](crate::timed) costs nothing without the feature: neither
//! the clock nor the label is evaluated. With it, the spans are kept in memory and logged as
//! one line at the end ([`take`]), so that timing adds no kmsg write on the way. A label that
//! starts with `- ` names a part of the next span to end (the census inside the writable
//! partition's identification), so that a reader does not count it twice.

#[cfg(feature = "timing")]
static SPANS: std::sync::Mutex<Vec<(String, u64)>> = std::sync::Mutex::new(Vec::new());

/// Times `$e` under `$label` (anything that derefs to `str`) and gives `$e`'s value.
#[macro_export]
macro_rules! timed {
    ($label:expr, $e:expr) => {{
        #[cfg(feature = "timing")]
        let t0 = std::time::Instant::now();
        let r = $e;
        #[cfg(feature = "timing")]
        $crate::timing::record(&$label, t0);
        r
    }};
}

/// Keeps one span; a label seen again gets `#2`, `#3`... so that every boot names its spans
/// alike.
#[cfg(feature = "timing")]
pub fn record(label: &str, since: std::time::Instant) {
    push(label, crate::decimal::micros(since.elapsed()));
}

/// Keeps a span measured elsewhere: a step of the boot's own timings (`preinit::Clock`) as
/// `[step]`, after the spans it contains.
#[cfg(feature = "timing")]
pub fn push(label: &str, us: u64) {
    if let Ok(mut v) = SPANS.lock() {
        let seen = v
            .iter()
            .filter(|(l, _)| l.split('#').next() == Some(label))
            .count();
        let label = if seen == 0 {
            label.to_owned()
        } else {
            format!("{label}#{}", seen + 1)
        };
        v.push((label, us));
    }
}

/// The spans so far as lines of `label=µs; label=µs`, in the order they ended, each short
/// enough for one kmsg record (the kernel cuts a record at about 1 KiB); then none are kept.
#[cfg(feature = "timing")]
pub fn take() -> Vec<String> {
    let spans = SPANS
        .lock()
        .map(|mut v| std::mem::take(&mut *v))
        .unwrap_or_default();
    let mut lines: Vec<String> = Vec::new();
    for (l, us) in spans {
        let part = format!("{l}={us}");
        match lines.last_mut() {
            Some(line) if line.len() + part.len() < 700 => {
                line.push_str("; ");
                line.push_str(&part);
            }
            _ => lines.push(part),
        }
    }
    lines
}

#[cfg(all(test, feature = "timing"))]
mod tests {
    #[test]
    fn spans_are_kept_in_order_and_repeated_labels_numbered() {
        let a: u32 = crate::timed!("mount /rom", 1 + 1);
        crate::timed!(format!("mount {}", "/rom"), ());
        crate::timed!("free", ());
        super::push("[find]", 7);
        assert_eq!(a, 2);
        let lines = super::take();
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        let labels: Vec<&str> = line
            .split("; ")
            .map(|p| p.split('=').next().unwrap_or(""))
            .collect();
        assert_eq!(labels, ["mount /rom", "mount /rom#2", "free", "[find]"]);
        assert!(line.ends_with("[find]=7"));
        assert!(line.split("; ").all(|p| p
            .split('=')
            .nth(1)
            .is_some_and(|us| us.parse::<u64>().is_ok())));
        assert!(super::take().is_empty());
        for i in 0..100 {
            super::push(&format!("mount overlay /newroot{i}"), 123_456);
        }
        let lines = super::take();
        assert!(lines.len() > 1 && lines.iter().all(|l| l.len() < 720));
        assert_eq!(
            lines.iter().map(|l| l.split("; ").count()).sum::<usize>(),
            100
        );
    }
}
