//! `/proc/mtd`: the MTD partitions the kernel knows, by name.
//!
//! ```text
//! dev:    size   erasesize  name
//! mtd0: 04000000 00040000 "bank0"
//! mtd1: 01000000 00040000 "rootfs"
//! ```

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtdPart {
    pub index: u32,
    pub size: u64,
    pub erasesize: u32,
    pub name: String,
}

impl MtdPart {
    /// The character device: erase and raw reads go through it.
    pub fn char_dev(&self) -> String {
        format!("/dev/mtd{}", self.index)
    }
    /// The block device JFFS2 is mounted from.
    pub fn block_dev(&self) -> String {
        format!("/dev/mtdblock{}", self.index)
    }
}

/// Parses the text of /proc/mtd. Lines that do not have the expected shape are skipped: a
/// kernel that adds a column must not stop a boot.
pub fn parse_proc_mtd(text: &str) -> Vec<MtdPart> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MtdPart> {
    let (dev, rest) = line.split_once(':')?;
    let index = dev.strip_prefix("mtd")?.parse().ok()?;
    let mut fields = rest.split_whitespace();
    let size = u64::from_str_radix(fields.next()?, 16).ok()?;
    let erasesize = u32::from_str_radix(fields.next()?, 16).ok()?;
    // The name is quoted and may contain spaces.
    let start = rest.find('"')?;
    let end = rest.rfind('"')?;
    if end <= start {
        return None;
    }
    Some(MtdPart {
        index,
        size,
        erasesize,
        name: rest[start + 1..end].to_string(),
    })
}

pub fn find<'a>(parts: &'a [MtdPart], name: &str) -> Option<&'a MtdPart> {
    parts.iter().find(|p| p.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTER: &str = "dev:    size   erasesize  name\n\
        mtd0: 04000000 00040000 \"bank0\"\n\
        mtd1: 01000000 00040000 \"rootfs\"\n\
        mtd2: 02c00000 00040000 \"rootfs_data\"\n";

    #[test]
    fn router_layout() {
        let parts = parse_proc_mtd(ROUTER);
        assert_eq!(parts.len(), 3);
        let data = find(&parts, "rootfs_data").unwrap();
        assert_eq!(data.index, 2);
        assert_eq!(data.size, 0x02c0_0000);
        assert_eq!(data.erasesize, 0x40000);
        assert_eq!(data.block_dev(), "/dev/mtdblock2");
        assert_eq!(data.char_dev(), "/dev/mtd2");
        assert!(find(&parts, "rootfs_dat").is_none());
    }

    #[test]
    fn names_with_spaces_and_odd_lines() {
        let parts = parse_proc_mtd(
            "dev:    size   erasesize  name\n\
             mtd10: 00010000 00010000 \"u-boot env\"\n\
             garbage line\n\
             mtdX: 1 1 \"bad index\"\n\
             mtd3: zz 00010000 \"bad size\"\n\
             mtd4: 00010000 00010000 unquoted\n\
             \n",
        );
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].name, "u-boot env");
        assert_eq!(parts[0].index, 10);
    }

    #[test]
    fn empty_when_no_mtd() {
        assert!(parse_proc_mtd("dev:    size   erasesize  name\n").is_empty());
        assert!(parse_proc_mtd("").is_empty());
    }
}
