//! A [`Sys`] that records every call as a line of text and fails the calls it is told to, so
//! tests can assert what preinit would do to the kernel, and what it does when a call fails.

use super::{EraseReport, MountSpec, Sys, SysError, SysResult};
use nix::errno::Errno;
use std::path::{Path, PathBuf};

#[derive(Default, Debug)]
pub struct Recorder {
    pub calls: Vec<String>,
    /// A call whose recorded line contains the text fails with the errno.
    pub fail: Vec<(String, Errno)>,
    /// Paths `exists` says are there.
    pub existing: Vec<PathBuf>,
    /// Each failure pattern fails only its first matching call.
    pub fail_once: bool,
    /// What `write_file` was given, so tests can read a state file back.
    pub written: Vec<(PathBuf, Vec<u8>)>,
    loops: u32,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder::default()
    }

    pub fn failing(mut self, pattern: &str, errno: Errno) -> Recorder {
        self.fail.push((pattern.to_string(), errno));
        self
    }

    fn call(&mut self, line: String) -> SysResult<()> {
        let hit = self
            .fail
            .iter()
            .position(|(pat, _)| line.contains(pat.as_str()));
        let failed = hit.and_then(|i| self.fail.get(i)).map(|(_, e)| *e);
        if let (Some(i), true) = (hit, self.fail_once) {
            self.fail.remove(i);
        }
        self.calls.push(line.clone());
        match failed {
            Some(e) => Err(SysError::new(line, e)),
            None => Ok(()),
        }
    }

    /// The index of the first recorded call containing `text`.
    pub fn position(&self, text: &str) -> Option<usize> {
        self.calls.iter().position(|c| c.contains(text))
    }
}

impl Sys for Recorder {
    fn mount(&mut self, m: &MountSpec) -> SysResult<()> {
        self.call(m.to_string())
    }
    fn umount(&mut self, target: &Path, detach: bool) -> SysResult<()> {
        let d = if detach { " (detach)" } else { "" };
        self.call(format!("umount {}{d}", target.display()))
    }
    fn move_mount(&mut self, from: &Path, to: &Path) -> SysResult<()> {
        self.call(format!("move {} {}", from.display(), to.display()))
    }
    fn mkdir_p(&mut self, path: &Path) -> SysResult<()> {
        self.call(format!("mkdir {}", path.display()))
    }
    fn mknod(
        &mut self,
        path: &Path,
        block: bool,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> SysResult<()> {
        let kind = if block { 'b' } else { 'c' };
        self.call(format!(
            "mknod {} {kind} {mode:o} {major}:{minor}",
            path.display()
        ))
    }
    fn chdir(&mut self, path: &Path) -> SysResult<()> {
        self.call(format!("chdir {}", path.display()))
    }
    fn chroot(&mut self, path: &Path) -> SysResult<()> {
        self.call(format!("chroot {}", path.display()))
    }
    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> SysResult<()> {
        self.call(format!(
            "pivot_root {} {}",
            new_root.display(),
            put_old.display()
        ))
    }
    fn free_tree(&mut self, root: &Path) -> SysResult<()> {
        self.call(format!("free {}", root.display()))
    }
    fn finit_module(&mut self, path: &Path, params: &str) -> SysResult<()> {
        self.call(format!("finit_module {} \"{params}\"", path.display()))
    }
    fn run(&mut self, root: Option<&Path>, argv: &[String]) -> SysResult<()> {
        let r = root
            .map(|r| format!(" (in {})", r.display()))
            .unwrap_or_default();
        self.call(format!("run {}{r}", argv.join(" ")))
    }
    fn prepare_overlay(
        &mut self,
        overlay: &Path,
        _want: &crate::overlay::Prepare,
    ) -> SysResult<crate::overlay::Prepared> {
        self.call(format!("prepare {}", overlay.display()))?;
        Ok(crate::overlay::Prepared {
            first_boot: Some(crate::overlay::FirstBoot::Ready),
            ..Default::default()
        })
    }
    fn clear_reset_mark(&mut self, device: &Path) -> SysResult<()> {
        self.call(format!("clear reset mark {}", device.display()))
    }
    fn mtd_erase(&mut self, dev: &Path) -> SysResult<EraseReport> {
        self.call(format!("erase {}", dev.display()))?;
        Ok(EraseReport {
            erased: 4,
            ..EraseReport::default()
        })
    }
    fn loop_attach(&mut self, backing: &Path, offset: u64) -> SysResult<PathBuf> {
        self.call(format!("loop {} offset {offset}", backing.display()))?;
        self.loops += 1;
        Ok(PathBuf::from(format!("/dev/loop{}", 90 + self.loops)))
    }
    fn ubi_attach(&mut self, ctrl: &Path, mtd: u32) -> SysResult<u32> {
        self.call(format!("ubi attach mtd{mtd} via {}", ctrl.display()))
            .map(|()| 0)
    }
    fn ubi_block(&mut self, vol: &Path) -> SysResult<()> {
        self.call(format!("ubiblock {}", vol.display()))
    }
    fn ubi_mkvol(&mut self, dev: &Path, name: &str, bytes: u64) -> SysResult<()> {
        self.call(format!("ubi mkvol {name} {bytes} on {}", dev.display()))
    }
    fn ubi_finish_stage(
        &mut self,
        vol: &Path,
        _g: crate::ubistage::Geometry,
    ) -> SysResult<Option<String>> {
        self.call(format!("ubi finish stage {}", vol.display()))
            .map(|()| None)
    }
    fn ubi_truncate(&mut self, vol: &Path) -> SysResult<()> {
        self.call(format!("ubi truncate {}", vol.display()))
    }
    fn write_file(&mut self, path: &Path, bytes: &[u8]) -> SysResult<()> {
        self.call(format!("write {} ({} bytes)", path.display(), bytes.len()))?;
        self.written.push((path.to_path_buf(), bytes.to_vec()));
        Ok(())
    }
    fn exists(&mut self, path: &Path) -> bool {
        self.existing.iter().any(|p| p == path)
    }
    fn random(&mut self, buf: &mut [u8]) {
        buf.fill(0x5a);
    }
    fn exec(&mut self, path: &Path, argv: &[String]) -> SysResult<()> {
        self.call(format!("exec {} {:?}", path.display(), argv))
    }
    fn reboot(&mut self) -> SysResult<()> {
        self.call("reboot".to_string())
    }
    fn sleep(&mut self, d: std::time::Duration) {
        let _ = self.call(format!("sleep {}ms", d.as_millis()));
    }
    fn finish_restore(&mut self, root: &Path) -> SysResult<Option<bool>> {
        self.call(format!("finish restore {}", root.display()))
            .map(|()| None)
    }

    fn restore_kept(
        &mut self,
        root: &Path,
        _overlay: &Path,
        kept: &crate::upgrade::Kept,
    ) -> SysResult<usize> {
        self.call(format!("restore {} into {}", kept.file, root.display()))
            .map(|()| 0)
    }

    fn check_writable(&mut self, dir: &Path, _upper: &Path) -> SysResult<()> {
        self.call(format!("check writable {}", dir.display()))
    }
}
