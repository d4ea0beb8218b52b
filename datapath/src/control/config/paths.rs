//! Where the configuration's names and paths become files: the checks that two of them never
//! name one file ([`Config::validate`](super::Config::validate) and the run-time changes).

use std::path::{Path, PathBuf};

/// Whether `a` and `b` name one file: where both exist, one file (one device and inode,
/// whatever links or `..` lead to it; for block devices one device number, whatever node);
/// else the same path once `.`, `..` and repeated separators are resolved by its text.
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    if a == b {
        return true;
    }
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) if x.file_type().is_block_device() && y.file_type().is_block_device() => {
            x.rdev() == y.rdev()
        }
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => lexical(a) == lexical(b),
    }
}

/// `p` with `.` and `..` resolved by its text alone (for paths that do not exist yet).
pub fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// Whether `p` lies in directory `dir` (or below it): by its path, or, where `dir` exists, by
/// the real directory `p`'s parent is.
pub fn inside(p: &Path, dir: &Path) -> bool {
    crate::layer::cdp::pit::in_dir(p, dir) || lexical(p).starts_with(lexical(dir))
}

impl super::Config {
    /// The names that become names of files or of iSCSI targets ([`super::Config::validate`]):
    /// volume and target names unique ignoring case, and no two state files that are one.
    pub(super) fn check_names_to_files(&self) -> Result<(), String> {
        check_case_unique("volume names", self.volumes.iter().map(|v| v.name.as_str()))?;
        let targets = self.effective_iscsi_targets();
        check_case_unique("iSCSI target names", targets.iter().map(|t| t.iqn.as_str()))?;
        if self.nvmf.state_dir.is_some() {
            let subs = self.effective_subsystems();
            check_nvmf_resv_files(subs.iter().map(|s| s.nqn.as_str()))?;
        }
        if self.iscsi.state_dir.is_some() {
            check_iscsi_pr_files(targets.iter().map(|t| t.iqn.as_str()))?;
        }
        Ok(())
    }

    /// The files the daemon keeps in its state directories, and their temporary names: per
    /// mirrored volume `<volume>.mirror-state` and `.mirror-al` in `[mirror] state_dir`, per
    /// subsystem `resv-<crc>.json` in `[nvmf] state_dir`, per iSCSI LUN `<IQN>-lun<N>.pr`
    /// in `[iscsi] state_dir`, and in each the daemon's lock `twinblk.lock`
    /// (`daemon/state_lock.rs`).
    pub fn state_files(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        let dirs = [
            self.mirror.as_ref().and_then(|m| m.state_dir.as_ref()),
            self.nvmf.state_dir.as_ref(),
            self.iscsi.state_dir.as_ref(),
        ];
        for d in dirs.into_iter().flatten() {
            v.push(d.join(STATE_LOCK_FILE));
        }
        if let Some(d) = self.mirror.as_ref().and_then(|m| m.state_dir.as_ref()) {
            for vol in self.volumes.iter().filter(|v| v.mirror) {
                let state = d.join(format!("{}.mirror-state", vol.name));
                for ext in ["tmp", "mirror-al", "al-tmp"] {
                    v.push(state.with_extension(ext));
                }
                v.push(state);
            }
        }
        if let Some(d) = &self.nvmf.state_dir {
            for s in self.effective_subsystems() {
                let f = crate::frontend::nvmf::resv::state_path(d, &s.nqn);
                v.push(f.with_extension("json.tmp"));
                v.push(f);
            }
        }
        if let Some(d) = &self.iscsi.state_dir {
            for t in self.effective_iscsi_targets() {
                for lun in 0..t.luns.len() as u16 {
                    let f = iscsi_pr_path(d, &t.iqn, lun);
                    v.push(f.with_extension("tmp"));
                    v.push(f);
                }
            }
        }
        v
    }
}

/// The lock file a daemon holds in each of its state directories (its name is the daemon's,
/// `daemon/state_lock.rs`, which takes it; named here, below the daemon, for the path checks).
pub const STATE_LOCK_FILE: &str = "twinblk.lock";

/// Whether `a` and `b` are one place: one path, or one name in one directory (the
/// directories compared as [`same_file`] does; the files need not exist).
pub fn same_place(a: &Path, b: &Path) -> bool {
    same_file(a, b)
        || (a.file_name() == b.file_name()
            && matches!((a.parent(), b.parent()), (Some(x), Some(y)) if same_file(x, y)))
}

/// Refuse `path` when it is one of the daemon's state files `files` ([`super::Config::state_files`]):
/// the daemon's state would be replaced, or would replace what is written there.
pub fn check_not_a_state_file(path: &Path, files: &[PathBuf]) -> Result<(), String> {
    match files.iter().find(|f| same_place(path, f)) {
        Some(f) => Err(format!(
            "{} is a state file of the daemon ({}): give another path",
            path.display(),
            f.display()
        )),
        None => Ok(()),
    }
}

/// The backing files of `vols` (name, path) and the CDP directories (name, dir): no two
/// volumes on one file, and no backing file in a CDP directory.
pub fn check_volume_paths<'a>(
    files: &[(&'a str, &'a Path)],
    cdp_dirs: &[(&'a str, &'a Path)],
) -> Result<(), String> {
    for (i, (a, pa)) in files.iter().enumerate() {
        if let Some((b, _)) = files[..i].iter().find(|(_, pb)| same_file(pa, pb)) {
            return Err(format!(
                "volumes {b} and {a} have the same backing file {}: each volume needs its own",
                pa.display()
            ));
        }
        if let Some((c, d)) = cdp_dirs.iter().find(|(_, d)| inside(pa, d)) {
            return Err(format!(
                "volume {a}: its path {} is in the cdp.dir of volume {c} ({}): the history's files would overwrite it",
                pa.display(),
                d.display()
            ));
        }
    }
    Ok(())
}

/// The persistent reservation state file of LUN `lun` of iSCSI target `iqn` in `[iscsi]
/// state_dir` `dir`: `<IQN, characters other than A-Z a-z 0-9 . - as _>-lun<N>.pr`
/// (docs/iscsi.md).
pub fn iscsi_pr_path(dir: &Path, iqn: &str, lun: u16) -> std::path::PathBuf {
    dir.join(format!("{}-lun{lun}.pr", iscsi_pr_stem(iqn)))
}

fn iscsi_pr_stem(iqn: &str) -> String {
    iqn.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// No two iSCSI targets whose LUNs' reservation state files would be one file (their names
/// differ only where [`iscsi_pr_path`] writes `_`).
pub fn check_iscsi_pr_files<'a>(iqns: impl IntoIterator<Item = &'a str>) -> Result<(), String> {
    let mut seen = std::collections::HashMap::new();
    for iqn in iqns {
        if let Some(other) = seen.insert(iscsi_pr_stem(iqn), iqn)
            && other != iqn
        {
            return Err(format!(
                "iSCSI targets {other:?} and {iqn:?} would share one reservation state file in iscsi.state_dir ({}-lunN.pr: characters other than A-Z a-z 0-9 . - become _): rename one",
                iscsi_pr_stem(iqn)
            ));
        }
    }
    Ok(())
}

/// No two NVMe subsystems whose reservation state files would be one file (`resv-<crc32c of
/// the NQN>.json`, [`crate::frontend::nvmf::resv::state_path`]: two NQNs of one CRC).
pub fn check_nvmf_resv_files<'a>(nqns: impl IntoIterator<Item = &'a str>) -> Result<(), String> {
    let mut seen = std::collections::HashMap::new();
    for nqn in nqns {
        let file = crate::frontend::nvmf::resv::state_path(Path::new(""), nqn);
        if let Some(other) = seen.insert(file.clone(), nqn)
            && other != nqn
        {
            return Err(format!(
                "NVMe subsystems {other:?} and {nqn:?} would share one reservation state file in nvmf.state_dir ({}: the CRC32C of the NQN): rename one",
                file.display()
            ));
        }
    }
    Ok(())
}

/// Longest first line [`first_line`] reads.
const MAX_LINE: u64 = 64 << 10;

/// The first line of file `path` (a secret named by the config, `chap_secret_file`), read
/// up to its newline only, and at most 64 KiB: what follows is never read (a FIFO whose
/// writer stays, /dev/zero, a volume's image named by mistake).
pub fn first_line(path: &Path) -> std::io::Result<String> {
    use std::io::{BufRead, Read};
    let mut r = std::io::BufReader::new(std::fs::File::open(path)?.take(MAX_LINE + 1));
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if line.len() as u64 > MAX_LINE {
        return Err(std::io::Error::other(format!(
            "its first line is longer than {MAX_LINE} bytes"
        )));
    }
    while line.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| std::io::Error::other("its first line is not UTF-8"))
}

/// Make `dir` (mode 0700) or check the one there: a directory, not a link, of this process's
/// user, closed to others. For directories under a name anyone can foresee in the shared
/// temporary directory (the CDP jobs' logs, the demo's files), written by a process that
/// often runs as root; `what` names what goes there.
pub fn private_dir(dir: &Path, what: &str) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let m = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // SAFETY: geteuid has no memory effects.
    let me = unsafe { libc::geteuid() };
    if !m.is_dir() || m.uid() != me || m.mode() & 0o022 != 0 {
        return Err(format!(
            "{} is not a directory of this daemon's user closed to others (a link, another user's, or writable by others): refusing to write {what} there",
            dir.display()
        ));
    }
    Ok(())
}

/// No two of `names` (`what`: volume names, iSCSI target names) that differ only in ASCII
/// case: iSCSI names are case-insensitive (RFC 3720 3.2.6.1), a volume's name is its default
/// target's and part of its state files' names (one file on a case-insensitive filesystem).
pub fn check_case_unique<'a>(
    what: &str,
    names: impl IntoIterator<Item = &'a str>,
) -> Result<(), String> {
    let mut seen = std::collections::HashMap::new();
    for n in names {
        if let Some(o) = seen.insert(n.to_ascii_lowercase(), n)
            && o != n
        {
            return Err(format!(
                "{what} {o:?} and {n:?} differ only in case: iSCSI names are case-insensitive, and some filesystems' names too; rename one"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the first line is read: a file that goes on (a FIFO whose writer stays, a device
    /// such as /dev/zero, a volume's image named by mistake) is not read to its end.
    #[test]
    fn a_secret_files_first_line_is_read_without_reading_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("secret");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let f2 = fifo.clone();
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let mut w = std::fs::OpenOptions::new().write(true).open(&f2).unwrap();
            w.write_all(b"0123456789abcdef\nmore").unwrap();
            // The writer stays a while before it closes: its end is not the line's.
            std::thread::sleep(std::time::Duration::from_secs(3));
        });
        let t = std::time::Instant::now();
        assert_eq!(first_line(&fifo).unwrap(), "0123456789abcdef");
        assert!(
            t.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            t.elapsed()
        );
        writer.join().unwrap();
        // A file without a newline: at most 64 KiB of it is read.
        let big = d.path().join("big");
        std::fs::write(&big, vec![b'x'; 1 << 20]).unwrap();
        assert!(first_line(&big).is_err());
    }
}
