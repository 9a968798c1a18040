//! Block devices from `/sys/class/block/*/uevent`: their node names and GPT partition names.
//!
//! ```text
//! MAJOR=254
//! MINOR=2
//! DEVNAME=vda2
//! DEVTYPE=partition
//! PARTN=2
//! PARTNAME=rootfs_data
//! ```

use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockDev {
    pub devname: String,
    pub partname: Option<String>,
    pub major: u32,
    pub minor: u32,
    pub is_partition: bool,
    /// The partition number (PARTN), from 1.
    pub partn: Option<u32>,
    /// The whole disk a partition is on (from sysfs), for reading its partition table.
    pub disk: Option<String>,
}

impl BlockDev {
    pub fn path(&self) -> String {
        format!("/dev/{}", self.devname)
    }
}

pub fn parse_uevent(text: &str) -> Option<BlockDev> {
    let mut dev = BlockDev::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        match k {
            "DEVNAME" => dev.devname = v.to_string(),
            "PARTNAME" if !v.is_empty() => dev.partname = Some(v.to_string()),
            "MAJOR" => dev.major = v.parse().ok()?,
            "MINOR" => dev.minor = v.parse().ok()?,
            "DEVTYPE" => dev.is_partition = v == "partition",
            "PARTN" => dev.partn = v.parse().ok(),
            _ => {}
        }
    }
    if dev.devname.is_empty() {
        None
    } else {
        Some(dev)
    }
}

/// Reads every `<sysfs>/class/block/*/uevent`. A device that vanishes while we read is skipped.
pub fn scan(sysfs: &Path) -> Vec<BlockDev> {
    let Ok(entries) = std::fs::read_dir(sysfs.join("class/block")) else {
        return Vec::new();
    };
    let mut devs: Vec<BlockDev> = entries
        .flatten()
        .filter_map(|e| {
            let mut d = parse_uevent(&std::fs::read_to_string(e.path().join("uevent")).ok()?)?;
            if d.is_partition {
                d.disk = disk_of(sysfs, &e.path(), &d.devname);
            }
            Some(d)
        })
        .collect();
    devs.sort_by(|a, b| a.devname.cmp(&b.devname));
    devs
}

/// The disk of a partition: the parent of its directory in sysfs (`.../block/vda/vda2`, what
/// the class link points to: reading the link is enough, no whole path resolution), or,
/// where that is not a block device (fixtures), its name without the partition suffix
/// (`vda2`, `mmcblk0p2`, `nvme0n1p2`).
fn disk_of(sysfs: &Path, entry: &Path, name: &str) -> Option<String> {
    let class = sysfs.join("class/block");
    let parent = std::fs::read_link(entry).ok().and_then(|p| {
        p.parent()
            .and_then(|d| d.file_name())
            .map(|n| n.to_string_lossy().into_owned())
    });
    if let Some(p) = parent.filter(|p| class.join(p).exists()) {
        return Some(p);
    }
    let stem = name.trim_end_matches(|c: char| c.is_ascii_digit());
    let stem = match stem.strip_suffix('p') {
        Some(s) if s.ends_with(|c: char| c.is_ascii_digit()) => s,
        _ => stem,
    };
    (stem != name && !stem.is_empty() && class.join(stem).exists()).then(|| stem.to_string())
}

pub fn find_partname<'a>(devs: &'a [BlockDev], name: &str) -> Option<&'a BlockDev> {
    devs.iter().find(|d| d.partname.as_deref() == Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt_partition() {
        let d = parse_uevent(
            "MAJOR=254\nMINOR=2\nDEVNAME=vda2\nDEVTYPE=partition\nDISKSEQ=9\nPARTN=2\nPARTNAME=rootfs_data\n",
        )
        .unwrap();
        assert_eq!(d.devname, "vda2");
        assert_eq!(d.partname.as_deref(), Some("rootfs_data"));
        assert_eq!((d.major, d.minor), (254, 2));
        assert!(d.is_partition);
        assert_eq!(d.path(), "/dev/vda2");
    }

    #[test]
    fn whole_disk_and_unnamed_partition() {
        let disk = parse_uevent("MAJOR=7\nMINOR=0\nDEVNAME=loop0\nDEVTYPE=disk\n").unwrap();
        assert!(!disk.is_partition && disk.partname.is_none());
        let mbr =
            parse_uevent("MAJOR=8\nMINOR=1\nDEVNAME=sda1\nDEVTYPE=partition\nPARTN=1\nPARTNAME=\n")
                .unwrap();
        assert!(mbr.partname.is_none());
    }

    #[test]
    fn rejects_broken_uevents() {
        assert!(parse_uevent("MAJOR=8\nMINOR=1\n").is_none());
        assert!(parse_uevent("MAJOR=x\nDEVNAME=sda\n").is_none());
        assert!(parse_uevent("").is_none());
    }

    #[test]
    fn scan_reads_a_sysfs_tree() {
        let dir = tempfile::tempdir().unwrap();
        for (n, ev) in [
            ("vda", "MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n"),
            (
                "vda1",
                "MAJOR=254\nMINOR=1\nDEVNAME=vda1\nDEVTYPE=partition\nPARTNAME=rootfs\n",
            ),
            (
                "vda2",
                "MAJOR=254\nMINOR=2\nDEVNAME=vda2\nDEVTYPE=partition\nPARTNAME=rootfs_data\n",
            ),
            ("broken", "nothing here\n"),
        ] {
            let d = dir.path().join("class/block").join(n);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("uevent"), ev).unwrap();
        }
        let devs = scan(dir.path());
        assert_eq!(devs.len(), 3);
        assert_eq!(find_partname(&devs, "rootfs_data").unwrap().devname, "vda2");
        assert_eq!(find_partname(&devs, "rootfs").unwrap().devname, "vda1");
        assert!(find_partname(&devs, "kernel").is_none());
        assert!(scan(&dir.path().join("nonexistent")).is_empty());
    }
}
