//! Plan: a pure function from what was asked (board, command line) and what was found (probe)
//! to the steps that build the root, with the decision between a persistent and a tmpfs upper
//! and the reason for it. Nothing here touches the system, so every case is a unit test.

use crate::board::{FormatPolicy, FsChoice};
use crate::probe::magic::Content;
use crate::sys::MountSpec;
use nix::mount::MsFlags;
use std::path::{Path, PathBuf};

/// How preinit was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootKind {
    /// As `/init` of an initramfs: the ROM must be found and mounted, and the switch into the
    /// new root is the switch_root way (the initramfs root cannot be pivoted away).
    Initramfs,
    /// From the ROM itself as `/` (`init=/sbin/preinit`): the ROM is the current root and the
    /// switch is pivot_root, which puts the old root at `/rom`.
    Rootfs,
}

impl BootKind {
    pub fn name(self) -> &'static str {
        match self {
            BootKind::Initramfs => "initramfs",
            BootKind::Rootfs => "rootfs",
        }
    }
}

/// What the user asked for on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Normal,
    /// `ovl.failsafe`: tmpfs upper; the writable partition is neither mounted nor written.
    Failsafe,
    /// `ovl.volatile`: tmpfs upper for this boot only.
    Volatile,
    /// The first attempt of this boot crashed (crate::crash): tmpfs upper, and the writable
    /// partition is neither mounted nor written, as in failsafe.
    Recovery,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Persistent,
    Tmpfs,
    Failsafe,
    /// Last resort: the ROM alone, read-only.
    Rom,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Persistent => "persistent",
            Mode::Tmpfs => "tmpfs",
            Mode::Failsafe => "failsafe",
            Mode::Rom => "rom",
        }
    }
}

/// Where things are mounted while preinit works. `target` is `/` on a device and a scratch
/// directory in tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub target: PathBuf,
    pub boot: BootKind,
    /// The run-time tmpfs (`/run`, or `/tmp` on a ROM without `/run`), relative to target.
    pub run_name: &'static str,
}

impl Layout {
    pub fn rom_dir(&self) -> PathBuf {
        match self.boot {
            BootKind::Initramfs => self.target.join("rom"),
            BootKind::Rootfs => self.target.clone(),
        }
    }
    pub fn overlay_dir(&self) -> PathBuf {
        self.target.join("overlay")
    }
    pub fn new_root(&self) -> PathBuf {
        match self.boot {
            BootKind::Initramfs => self.target.join("newroot"),
            // A ROM has no room for new directories: use the /mnt it ships.
            BootKind::Rootfs => self.target.join("mnt"),
        }
    }
    pub fn run_dir(&self) -> PathBuf {
        self.target.join(self.run_name)
    }
    /// The API file systems carried into the new root, relative to target.
    pub fn carried(&self) -> [&'static str; 4] {
        ["dev", "proc", "sys", self.run_name]
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RomFound {
    pub device: String,
    /// Its identity (`overlay::rom_identity`), read with it; none when that failed (logged):
    /// then no overlay is called stale.
    pub id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataKind {
    Block,
    Mtd {
        char_dev: String,
        erasesize: u32,
    },
    /// The area after the squashfs in the ROM partition, through a loop device.
    AfterRom {
        backing: String,
        offset: u64,
    },
    /// A UBI volume (`/dev/ubiN_M`), mounted as UBIFS.
    Ubi,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFound {
    /// What is mounted: /dev/mtdblockN, /dev/vda2, /dev/loopN.
    pub device: String,
    pub kind: DataKind,
    pub content: Content,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanInput {
    pub layout: Layout,
    pub request: Request,
    pub rom: Result<RomFound, String>,
    pub data: Result<DataFound, String>,
    pub fs: FsChoice,
    pub format: FormatPolicy,
    /// mkfs.ext4's path; apply looks for it in the ROM first, then in `/`.
    pub mkfs: String,
    pub data_label: String,
    pub tmpfs_size: String,
    /// What the persistent overlay is checked against (ROM identity, reset request).
    pub prepare: crate::overlay::Prepare,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Mkdir(PathBuf),
    Mount(MountSpec),
    Move {
        from: PathBuf,
        to: PathBuf,
    },
    /// Runs mkfs.ext4 chrooted in the ROM when the ROM has it at `mkfs`, else chrooted in
    /// `root` (the target). `root`/dev is bound over the ROM's empty /dev for the run.
    Format {
        device: String,
        mkfs: String,
        rom: PathBuf,
        root: PathBuf,
        label: String,
    },
    /// The new root must really be writable: overlayfs mounts read-only without failing when
    /// it cannot use its upper (a full partition, a work directory it cannot create).
    CheckWritable {
        root: PathBuf,
        upper: PathBuf,
    },
    Erase {
        char_dev: String,
    },
    /// Empties a UBI volume (a volume update of no bytes: every LEB unmapped), finishing a
    /// reset that a cut left with UBI's update marker set.
    Truncate {
        vol_dev: String,
    },
    /// Finishes or rolls back a restore that a cut stopped (see [`crate::restore::recover`]),
    /// before init reads any of it. Never fails the rung: the outcome is a note.
    FinishRestore {
        root: PathBuf,
    },
    /// When the first-boot record step found a keep container that applies (an upgrade),
    /// restores it into the new root through `ovlctl restore`'s checks. Never fails the
    /// rung: a refused archive is set aside and the ROM's defaults are used.
    RestoreKept {
        root: PathBuf,
        overlay: PathBuf,
    },
    /// The first-boot record on the mounted writable partition: empties the upper when the
    /// overlay is pending, a reset was asked for, or it was made for another ROM.
    Prepare {
        overlay: PathBuf,
        want: crate::overlay::Prepare,
    },
    /// chdir into new_root, free the initramfs, move new_root onto old_root, chroot into it.
    SwitchRoot {
        new_root: PathBuf,
        old_root: PathBuf,
    },
    /// chdir into new_root, pivot_root(".", put_old), chroot(".").
    PivotRoot {
        new_root: PathBuf,
        put_old: PathBuf,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub mode: Mode,
    pub reason: Option<String>,
    /// What happens to the data partition: mount, format, erase (None on tmpfs).
    pub data_action: Option<&'static str>,
    pub data_fstype: Option<&'static str>,
    pub rom: Vec<Step>,
    pub upper: Vec<Step>,
    pub root: Vec<Step>,
    pub switch: Vec<Step>,
}

fn mount(source: &str, target: PathBuf, fstype: &str, flags: MsFlags, data: &str) -> Step {
    Step::Mount(MountSpec {
        source: source.into(),
        target,
        fstype: fstype.into(),
        flags,
        data: data.into(),
    })
}

/// The API file systems preinit mounts first, skipping those already mounted (a kernel with
/// DEVTMPFS_MOUNT, or a test that prepared them).
pub fn early_mounts(layout: &Layout, mounted: impl Fn(&str) -> bool) -> Vec<Step> {
    let t = &layout.target;
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let all = [
        ("proc", "proc", "proc", nosuid, ""),
        ("sys", "sysfs", "sysfs", nosuid, ""),
        (
            "dev",
            "devtmpfs",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            "mode=0755",
        ),
        (
            layout.run_name,
            "tmpfs",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            "mode=0755",
        ),
    ];
    let mut steps = Vec::new();
    for (dir, source, fstype, flags, data) in all {
        if mounted(dir) {
            continue;
        }
        if layout.boot == BootKind::Initramfs {
            steps.push(Step::Mkdir(t.join(dir)));
        }
        steps.push(mount(source, t.join(dir), fstype, flags, data));
    }
    steps
}

/// Builds the plan: persistent when the data partition can carry the upper, tmpfs otherwise.
pub fn build(input: &PlanInput) -> Plan {
    let l = &input.layout;
    let rom = match l.boot {
        BootKind::Initramfs => match &input.rom {
            Ok(r) => vec![
                Step::Mkdir(l.rom_dir()),
                mount(&r.device, l.rom_dir(), "squashfs", MsFlags::MS_RDONLY, ""),
            ],
            // Nothing to stack on: the caller goes to the last resort with this reason.
            Err(_) => Vec::new(),
        },
        BootKind::Rootfs => Vec::new(),
    };
    let mut plan = Plan {
        mode: Mode::Persistent,
        reason: None,
        data_action: None,
        data_fstype: None,
        rom,
        upper: Vec::new(),
        root: root_steps(l),
        switch: switch_steps(l),
    };
    let decided = match input.request {
        Request::Failsafe => Err((Mode::Failsafe, "failsafe requested".to_string())),
        Request::Volatile => Err((Mode::Tmpfs, "volatile overlay requested".to_string())),
        Request::Recovery => Err((
            Mode::Tmpfs,
            "preinit crashed in its first attempt of this boot".to_string(),
        )),
        Request::Normal => match &input.data {
            Err(why) => Err((Mode::Tmpfs, why.clone())),
            Ok(data) => persistent_upper(input, data).map_err(|why| (Mode::Tmpfs, why)),
        },
    };
    match decided {
        Ok((steps, action, fstype)) => {
            plan.upper = steps;
            plan.data_action = Some(action);
            plan.data_fstype = Some(fstype);
            plan
        }
        Err((mode, why)) => with_tmpfs(plan, input, mode, why),
    }
}

/// The same plan with a tmpfs upper, for a fallback decided before or during apply.
pub fn with_tmpfs(plan: Plan, input: &PlanInput, mode: Mode, reason: String) -> Plan {
    with_tmpfs_sized(plan, input, &input.tmpfs_size, mode, reason)
}

/// [`with_tmpfs`] with another size than the input's (the default, once the kernel refused
/// the configured one).
pub fn with_tmpfs_sized(
    mut plan: Plan,
    input: &PlanInput,
    size: &str,
    mode: Mode,
    reason: String,
) -> Plan {
    let o = input.layout.overlay_dir();
    let mut data = "mode=0755".to_string();
    if !size.is_empty() {
        data.push_str(",size=");
        data.push_str(size);
    }
    plan.upper = vec![
        Step::Mkdir(o.clone()),
        mount(
            "ovl-tmpfs",
            o.clone(),
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            &data,
        ),
        Step::Mkdir(o.join("upper")),
        Step::Mkdir(o.join("work")),
    ];
    plan.mode = mode;
    plan.reason = Some(reason);
    plan.data_action = None;
    plan.data_fstype = None;
    set_overlay_source(&mut plan.root, mode);
    plan
}

fn set_overlay_source(root: &mut [Step], mode: Mode) {
    for step in root {
        if let Step::Mount(m) = step {
            if m.fstype == "overlay" {
                // `mount` shows this name, so a person can tell which case the device is in.
                m.source = format!("ovl:{}", mode.name());
            }
        }
    }
}

type Upper = (Vec<Step>, &'static str, &'static str);

fn persistent_upper(input: &PlanInput, data: &DataFound) -> Result<Upper, String> {
    let o = input.layout.overlay_dir();
    let dev = &data.device;
    let fstype = match (input.fs, &data.kind) {
        (FsChoice::Auto | FsChoice::Ubifs, DataKind::Ubi) => "ubifs",
        (_, DataKind::Ubi) => {
            return Err(format!(
                "{dev} is a UBI volume: it takes ubifs, not {}",
                input.fs.name()
            ))
        }
        (FsChoice::Auto | FsChoice::Jffs2, DataKind::Mtd { .. }) => "jffs2",
        (FsChoice::Auto | FsChoice::Ext4, _) if !matches!(data.kind, DataKind::Mtd { .. }) => {
            "ext4"
        }
        (FsChoice::Jffs2, _) => {
            return Err(format!(
                "jffs2 needs an MTD partition; {dev} is a block device"
            ))
        }
        (FsChoice::Ubifs, _) => {
            return Err(format!(
                "ubifs needs a UBI volume (ubi:NAME); {dev} is not one"
            ))
        }
        (_, _) => {
            return Err(format!(
                "ext4 needs a block device; {dev} is an MTD partition"
            ))
        }
    };
    let mut steps = Vec::new();
    let content = &data.content;
    let action = match (fstype, content) {
        ("jffs2", Content::Jffs2) | ("ext4", Content::Ext4 { .. }) | ("ubifs", Content::Ubifs) => {
            "mount"
        }
        // UBIFS formats an empty volume (every LEB unmapped reads as 0xFF) as it mounts it.
        ("ubifs", Content::Erased) => "mount",
        // A reset's truncation cut short: UBI refuses to read the volume until it is updated.
        ("ubifs", Content::ResetMark) => {
            steps.push(Step::Truncate {
                vol_dev: dev.clone(),
            });
            "erase"
        }
        // JFFS2 formats erased flash itself as it writes.
        ("jffs2", Content::Erased) => "mount",
        ("jffs2", Content::Marker | Content::ResetMark) => {
            let DataKind::Mtd { char_dev, .. } = &data.kind else {
                return Err(format!("{dev} holds the reset marker but is not MTD flash"));
            };
            // Stock JFFS2 does not treat the marker as "erase the rest": old nodes after it
            // would come back. Erasing is ours to do.
            steps.push(Step::Erase {
                char_dev: char_dev.clone(),
            });
            "erase"
        }
        ("ext4", c) if *c == Content::ResetMark || blank_allowed(c, input.format) => {
            steps.push(Step::Format {
                device: dev.clone(),
                mkfs: input.mkfs.clone(),
                rom: input.layout.rom_dir(),
                root: input.layout.target.clone(),
                label: input.data_label.clone(),
            });
            "format"
        }
        (_, c) => {
            return Err(format!(
                "{dev} holds {}, not {fstype}{}; left untouched",
                c.name(),
                if fstype == "ext4" && is_blank(c) {
                    " (this blank kind is not in the board's format list)"
                } else {
                    ""
                }
            ))
        }
    };
    steps.push(Step::Mkdir(o.clone()));
    steps.push(mount(dev, o.clone(), fstype, MsFlags::MS_NOATIME, ""));
    steps.push(Step::Prepare {
        overlay: o.clone(),
        want: input.prepare.clone(),
    });
    steps.push(Step::Mkdir(o.join("upper")));
    steps.push(Step::Mkdir(o.join("work")));
    Ok((steps, action, fstype))
}

fn is_blank(c: &Content) -> bool {
    matches!(c, Content::Erased | Content::Zeroes | Content::Marker)
}

fn blank_allowed(c: &Content, p: FormatPolicy) -> bool {
    match c {
        Content::Erased => p.erased,
        Content::Zeroes => p.zeroes,
        Content::Marker => p.marker,
        _ => false,
    }
}

fn root_steps(l: &Layout) -> Vec<Step> {
    let o = l.overlay_dir();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        l.rom_dir().display(),
        o.join("upper").display(),
        o.join("work").display()
    );
    let nr = l.new_root();
    let mut steps = vec![
        Step::Mkdir(nr.clone()),
        mount(
            "ovl:persistent",
            nr.clone(),
            "overlay",
            MsFlags::MS_NOATIME,
            &data,
        ),
        Step::CheckWritable {
            root: nr.clone(),
            upper: o.join("upper"),
        },
        Step::FinishRestore { root: nr.clone() },
        Step::RestoreKept {
            root: nr.clone(),
            overlay: o.clone(),
        },
    ];
    // Mount points missing from the ROM are made in the new root now, while a failure (a full
    // upper) can still be undone and fall back to tmpfs.
    for name in moved(l) {
        steps.push(Step::Mkdir(nr.join(name)));
    }
    if l.boot == BootKind::Rootfs {
        steps.push(Step::Mkdir(nr.join("rom")));
    }
    steps
}

/// The mounts carried into the new root, relative to target.
fn moved(l: &Layout) -> Vec<&'static str> {
    let mut moved: Vec<&str> = Vec::new();
    if l.boot == BootKind::Initramfs {
        moved.push("rom");
    }
    moved.push("overlay");
    moved.extend(l.carried());
    moved
}

fn switch_steps(l: &Layout) -> Vec<Step> {
    let nr = l.new_root();
    let t = &l.target;
    let mut steps = Vec::new();
    for name in moved(l) {
        steps.push(Step::Move {
            from: t.join(name),
            to: nr.join(name),
        });
    }
    steps.push(match l.boot {
        BootKind::Initramfs => Step::SwitchRoot {
            new_root: nr,
            old_root: t.clone(),
        },
        BootKind::Rootfs => Step::PivotRoot {
            put_old: nr.join("rom"),
            new_root: nr,
        },
    });
    steps
}

/// The last resort: switch into the ROM alone, read-only, when no overlay could be built.
/// Returns no steps where the ROM is already the root or was never mounted.
pub fn rom_only(l: &Layout, rom_mounted: bool) -> Vec<Step> {
    if l.boot == BootKind::Rootfs || !rom_mounted {
        return Vec::new();
    }
    let rom = l.rom_dir();
    let mut steps = Vec::new();
    for name in l.carried() {
        steps.push(Step::Move {
            from: l.target.join(name),
            to: rom.join(name),
        });
    }
    steps.push(Step::SwitchRoot {
        new_root: rom,
        old_root: l.target.clone(),
    });
    steps
}

/// Paths as they will be after the switch: `<target>/run` becomes `/run`.
pub fn after_switch(l: &Layout, p: &Path) -> PathBuf {
    match p.strip_prefix(&l.target) {
        Ok(rel) => Path::new("/").join(rel),
        Err(_) => p.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(boot: BootKind) -> Layout {
        Layout {
            target: PathBuf::from("/t"),
            boot,
            run_name: "run",
        }
    }

    fn input(boot: BootKind, data: Result<DataFound, String>) -> PlanInput {
        PlanInput {
            layout: layout(boot),
            request: Request::Normal,
            rom: Ok(RomFound {
                device: "/dev/mtdblock1".into(),
                id: None,
            }),
            data,
            fs: FsChoice::Auto,
            format: FormatPolicy::default(),
            mkfs: "/usr/sbin/mkfs.ext4".into(),
            data_label: "rootfs_data".into(),
            tmpfs_size: "32m".into(),
            prepare: Default::default(),
        }
    }

    fn mtd(content: Content) -> Result<DataFound, String> {
        Ok(DataFound {
            device: "/dev/mtdblock2".into(),
            kind: DataKind::Mtd {
                char_dev: "/dev/mtd2".into(),
                erasesize: 0x40000,
            },
            content,
        })
    }

    fn block(content: Content) -> Result<DataFound, String> {
        Ok(DataFound {
            device: "/dev/vda2".into(),
            kind: DataKind::Block,
            content,
        })
    }

    fn mounts(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Mount(m) => Some(m.to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn jffs2_on_erased_flash_mounts_persistent() {
        let p = build(&input(BootKind::Initramfs, mtd(Content::Erased)));
        assert_eq!(p.mode, Mode::Persistent);
        assert_eq!(p.reason, None);
        assert_eq!(p.data_action, Some("mount"));
        assert_eq!(
            mounts(&p.rom),
            ["mount /dev/mtdblock1 on /t/rom (squashfs, ro)"]
        );
        assert_eq!(
            mounts(&p.upper),
            ["mount /dev/mtdblock2 on /t/overlay (jffs2)"]
        );
        assert_eq!(
            mounts(&p.root),
            ["mount ovl:persistent on /t/newroot (overlay, lowerdir=/t/rom,upperdir=/t/overlay/upper,workdir=/t/overlay/work)"]
        );
        assert!(p.upper.contains(&Step::Mkdir("/t/overlay/upper".into())));
        assert!(p.upper.contains(&Step::Mkdir("/t/overlay/work".into())));
    }

    fn ubi(content: Content) -> Result<DataFound, String> {
        Ok(DataFound {
            device: "/dev/ubi0_1".into(),
            kind: DataKind::Ubi,
            content,
        })
    }

    #[test]
    fn ubifs_mounts_empty_or_own_volumes_and_nothing_else() {
        for (c, action) in [(Content::Ubifs, "mount"), (Content::Erased, "mount")] {
            let p = build(&input(BootKind::Initramfs, ubi(c)));
            assert_eq!((p.mode, p.data_action), (Mode::Persistent, Some(action)));
            assert_eq!(
                mounts(&p.upper),
                ["mount /dev/ubi0_1 on /t/overlay (ubifs)"]
            );
        }
        let p = build(&input(BootKind::Initramfs, ubi(Content::ResetMark)));
        assert_eq!(p.data_action, Some("erase"));
        assert_eq!(
            p.upper[0],
            Step::Truncate {
                vol_dev: "/dev/ubi0_1".into()
            }
        );
        for c in [
            Content::Jffs2,
            Content::Unknown,
            Content::Gzip,
            Content::Zeroes,
        ] {
            let p = build(&input(BootKind::Initramfs, ubi(c.clone())));
            assert_eq!(p.mode, Mode::Tmpfs, "{c:?}");
            assert!(p.reason.unwrap().contains("left untouched"));
        }
        let mut i = input(BootKind::Initramfs, ubi(Content::Ubifs));
        i.fs = FsChoice::Jffs2;
        assert!(build(&i).reason.unwrap().contains("takes ubifs"));
        let mut i = input(BootKind::Initramfs, mtd(Content::Erased));
        i.fs = FsChoice::Ubifs;
        assert!(build(&i).reason.unwrap().contains("needs a UBI volume"));
    }

    #[test]
    fn marked_flash_is_erased_first() {
        let p = build(&input(BootKind::Initramfs, mtd(Content::Marker)));
        assert_eq!(p.mode, Mode::Persistent);
        assert_eq!(p.data_action, Some("erase"));
        assert_eq!(
            p.upper[0],
            Step::Erase {
                char_dev: "/dev/mtd2".into()
            }
        );
    }

    #[test]
    fn foreign_content_on_flash_is_not_erased() {
        for c in [
            Content::Zeroes,
            Content::Unknown,
            Content::Ubifs,
            Content::Gzip,
        ] {
            let p = build(&input(BootKind::Initramfs, mtd(c.clone())));
            assert_eq!(p.mode, Mode::Tmpfs, "{c:?}");
            let why = p.reason.unwrap();
            assert!(
                why.contains(c.name()) && why.contains("left untouched"),
                "{why}"
            );
            assert!(!p.upper.iter().any(|s| matches!(s, Step::Erase { .. })));
        }
    }

    #[test]
    fn ext4_existing_mounts_and_blank_is_formatted() {
        let p = build(&input(
            BootKind::Initramfs,
            block(Content::Ext4 { label: "x".into() }),
        ));
        assert_eq!((p.mode, p.data_action), (Mode::Persistent, Some("mount")));
        assert_eq!(mounts(&p.upper), ["mount /dev/vda2 on /t/overlay (ext4)"]);

        let p = build(&input(BootKind::Initramfs, block(Content::Erased)));
        assert_eq!((p.mode, p.data_action), (Mode::Persistent, Some("format")));
        assert_eq!(
            p.upper[0],
            Step::Format {
                device: "/dev/vda2".into(),
                mkfs: "/usr/sbin/mkfs.ext4".into(),
                rom: "/t/rom".into(),
                root: "/t".into(),
                label: "rootfs_data".into()
            }
        );
    }

    #[test]
    fn zeroed_marked_and_corrupt_block_partitions_fall_back() {
        for (c, word) in [
            (Content::Zeroes, "zeroes"),
            (Content::Marker, "marker"),
            (Content::Unknown, "unknown"),
            (Content::Jffs2, "jffs2"),
        ] {
            let p = build(&input(BootKind::Initramfs, block(c)));
            assert_eq!(p.mode, Mode::Tmpfs);
            let why = p.reason.unwrap();
            assert!(
                why.contains(&format!("/dev/vda2 holds {word}, not ext4")),
                "{why}"
            );
            assert_eq!(
                mounts(&p.upper),
                ["mount ovl-tmpfs on /t/overlay (tmpfs, mode=0755,size=32m)"]
            );
            assert!(mounts(&p.root)[0].starts_with("mount ovl:tmpfs on /t/newroot (overlay"));
        }
    }

    #[test]
    fn board_may_allow_formatting_zeroes() {
        let mut i = input(BootKind::Initramfs, block(Content::Zeroes));
        i.format = FormatPolicy::parse("erased,zeroes").unwrap();
        assert_eq!(build(&i).data_action, Some("format"));
    }

    #[test]
    fn missing_partition_falls_back_with_its_reason() {
        let p = build(&input(
            BootKind::Initramfs,
            Err("no writable partition (auto) after 5000 ms".into()),
        ));
        assert_eq!(p.mode, Mode::Tmpfs);
        assert_eq!(
            p.reason.as_deref(),
            Some("no writable partition (auto) after 5000 ms")
        );
    }

    #[test]
    fn failsafe_and_volatile_never_touch_the_partition() {
        for (req, mode) in [
            (Request::Failsafe, Mode::Failsafe),
            (Request::Volatile, Mode::Tmpfs),
        ] {
            let mut i = input(BootKind::Initramfs, mtd(Content::Marker));
            i.request = req;
            let p = build(&i);
            assert_eq!(p.mode, mode);
            assert!(p.upper.iter().all(|s| match s {
                Step::Mount(m) => m.fstype == "tmpfs",
                Step::Mkdir(_) => true,
                _ => false,
            }));
        }
    }

    #[test]
    fn filesystem_kind_must_fit_the_device() {
        let mut i = input(BootKind::Initramfs, block(Content::Jffs2));
        i.fs = FsChoice::Jffs2;
        assert!(build(&i)
            .reason
            .unwrap()
            .contains("jffs2 needs an MTD partition"));
        let mut i = input(
            BootKind::Initramfs,
            mtd(Content::Ext4 {
                label: String::new(),
            }),
        );
        i.fs = FsChoice::Ext4;
        assert!(build(&i)
            .reason
            .unwrap()
            .contains("ext4 needs a block device"));
    }

    #[test]
    fn initramfs_switch_moves_everything_then_switches_root() {
        let p = build(&input(BootKind::Initramfs, mtd(Content::Jffs2)));
        let moves: Vec<(String, String)> = p
            .switch
            .iter()
            .filter_map(|s| match s {
                Step::Move { from, to } => {
                    Some((from.display().to_string(), to.display().to_string()))
                }
                _ => None,
            })
            .collect();
        let names = ["rom", "overlay", "dev", "proc", "sys", "run"];
        assert_eq!(moves.len(), names.len());
        for (i, n) in names.iter().enumerate() {
            assert_eq!(moves[i], (format!("/t/{n}"), format!("/t/newroot/{n}")));
        }
        assert_eq!(
            p.switch.last(),
            Some(&Step::SwitchRoot {
                new_root: "/t/newroot".into(),
                old_root: "/t".into()
            })
        );
    }

    #[test]
    fn rootfs_boot_uses_the_current_root_as_rom_and_pivots() {
        let mut i = input(
            BootKind::Rootfs,
            block(Content::Ext4 {
                label: String::new(),
            }),
        );
        i.rom = Err("unused".into());
        let p = build(&i);
        assert!(p.rom.is_empty());
        assert_eq!(
            mounts(&p.root),
            ["mount ovl:persistent on /t/mnt (overlay, lowerdir=/t,upperdir=/t/overlay/upper,workdir=/t/overlay/work)"]
        );
        assert!(!p
            .switch
            .iter()
            .any(|s| matches!(s, Step::Move { from, .. } if from.ends_with("rom"))));
        assert_eq!(
            p.switch.last(),
            Some(&Step::PivotRoot {
                new_root: "/t/mnt".into(),
                put_old: "/t/mnt/rom".into()
            })
        );
    }

    #[test]
    fn early_mounts_skip_what_is_mounted() {
        let l = layout(BootKind::Initramfs);
        let all = mounts(&early_mounts(&l, |_| false));
        assert_eq!(all.len(), 4);
        assert!(all[2].starts_with("mount devtmpfs on /t/dev (devtmpfs"));
        let some = mounts(&early_mounts(&l, |d| d == "dev"));
        assert_eq!(some.len(), 3);
        assert!(!some.iter().any(|m| m.contains("devtmpfs")));
    }

    #[test]
    fn rom_only_moves_api_filesystems_into_the_rom() {
        let l = layout(BootKind::Initramfs);
        let s = rom_only(&l, true);
        assert_eq!(s.len(), 5);
        assert!(
            matches!(&s[4], Step::SwitchRoot { new_root, .. } if new_root == Path::new("/t/rom"))
        );
        assert!(rom_only(&l, false).is_empty());
        assert!(rom_only(&layout(BootKind::Rootfs), true).is_empty());
    }

    #[test]
    fn paths_after_switch() {
        let l = layout(BootKind::Initramfs);
        assert_eq!(
            after_switch(&l, Path::new("/t/run/ovl")),
            PathBuf::from("/run/ovl")
        );
        let mut root = layout(BootKind::Rootfs);
        root.target = "/".into();
        assert_eq!(
            after_switch(&root, Path::new("/run/ovl")),
            PathBuf::from("/run/ovl")
        );
    }
}
