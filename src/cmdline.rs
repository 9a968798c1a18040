//! The kernel command line: parsing it the way the kernel does, and the `ovl.*` switches.
//!
//! The kernel splits on spaces, lets double quotes protect spaces anywhere in a word (and
//! drops them), and hands everything after a lone `--` to init. We follow the same rules so
//! that `ovl.rom="/dev/disk with space"` and `mod.param="a b"` mean what they mean to it.

/// One `key` or `key=value` word of the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub key: String,
    pub value: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cmdline {
    pub params: Vec<Param>,
    /// Words after a lone `--`: the kernel passes them to init.
    pub init_args: Vec<String>,
}

impl Cmdline {
    pub fn parse(text: &str) -> Cmdline {
        let mut out = Cmdline::default();
        let mut words = split_words(text).into_iter();
        for word in words.by_ref() {
            if word == "--" {
                break;
            }
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (word, None),
            };
            out.params.push(Param { key, value });
        }
        out.init_args = words.collect();
        out
    }

    /// The value of the last `key=value` (the kernel lets a later word override an earlier one).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|p| p.key == key)
            .map(|p| p.value.as_deref().unwrap_or(""))
    }

    /// A switch: `key` alone or `key=1|y|yes|on|true`; `key=0|n|no|off|false` turns it off.
    pub fn flag(&self, key: &str) -> bool {
        match self.get(key) {
            None => false,
            Some(v) => !matches!(
                v.to_ascii_lowercase().as_str(),
                "0" | "n" | "no" | "off" | "false"
            ),
        }
    }

    /// `module.param=value` words for one module, joined as finit_module wants them.
    /// The kernel treats `-` and `_` in module names as the same character.
    pub fn module_params(&self, module: &str) -> String {
        let want = normalize_module(module);
        let mut out = String::new();
        for p in &self.params {
            let Some((m, param)) = p.key.split_once('.') else {
                continue;
            };
            if normalize_module(m) != want || param.is_empty() {
                continue;
            }
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(param);
            if let Some(v) = &p.value {
                out.push('=');
                if v.contains(' ') {
                    // finit_module parses its parameter string with the kernel's own
                    // rules, so a value with spaces must be quoted again.
                    out.push('"');
                    out.push_str(v);
                    out.push('"');
                } else {
                    out.push_str(v);
                }
            }
        }
        out
    }
}

pub fn normalize_module(name: &str) -> String {
    name.replace('-', "_")
}

fn split_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_quote = false;
    let mut in_word = false;
    for c in text.chars() {
        match c {
            '"' => {
                in_quote = !in_quote;
                in_word = true;
            }
            c if c.is_whitespace() && !in_quote => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_words_and_values() {
        let c = Cmdline::parse("console=ttyAMA0 panic=-1 ro ovl.failsafe\n");
        assert_eq!(c.get("console"), Some("ttyAMA0"));
        assert_eq!(c.get("ro"), Some(""));
        assert!(c.flag("ovl.failsafe"));
        assert!(!c.flag("ovl.volatile"));
        assert!(c.init_args.is_empty());
    }

    #[test]
    fn quotes_protect_spaces_and_are_dropped() {
        let c = Cmdline::parse(r#"a="x y" b=c"d e"f "g h=i""#);
        assert_eq!(c.get("a"), Some("x y"));
        assert_eq!(c.get("b"), Some("cd ef"));
        assert_eq!(c.get("g h"), Some("i"));
    }

    #[test]
    fn last_value_wins_and_flags_can_be_turned_off() {
        let c = Cmdline::parse("ovl.init=/a ovl.init=/b ovl.failsafe=0 ovl.volatile=yes");
        assert_eq!(c.get("ovl.init"), Some("/b"));
        assert!(!c.flag("ovl.failsafe"));
        assert!(c.flag("ovl.volatile"));
    }

    #[test]
    fn words_after_double_dash_go_to_init() {
        let c = Cmdline::parse("quiet -- single  --foo=bar");
        assert_eq!(c.params.len(), 1);
        assert_eq!(c.init_args, vec!["single", "--foo=bar"]);
    }

    #[test]
    fn empty_and_whitespace_only() {
        assert_eq!(Cmdline::parse(""), Cmdline::default());
        assert_eq!(Cmdline::parse(" \t\n "), Cmdline::default());
    }

    #[test]
    fn module_params_collects_dash_and_underscore_forms() {
        let c = Cmdline::parse(
            r#"cmdlinepart.mtdparts=0.flash:16m(rootfs) block2mtd.block2mtd=/dev/vda,128KiB jffs2.x foo_bar.a=1 foo-bar.b="p q" other.c=2"#,
        );
        assert_eq!(
            c.module_params("cmdlinepart"),
            "mtdparts=0.flash:16m(rootfs)"
        );
        assert_eq!(c.module_params("foo-bar"), r#"a=1 b="p q""#);
        assert_eq!(c.module_params("jffs2"), "x");
        assert_eq!(c.module_params("absent"), "");
    }
}
