//! Where the configuration's names and paths become files: the checks that two of them never
//! name one file ([`Config::validate`](super::Config::validate) and the run-time changes).

use std::path::{Path, PathBuf};

/// Whether `a` and `b` name one file: the same path once `.` and repeated separators are
/// dropped, or, where both exist, the same file after symbolic links are followed.
pub fn same_file(a: &Path, b: &Path) -> bool {
    a == b
        || matches!(
            (a.canonicalize(), b.canonicalize()),
            (Ok(x), Ok(y)) if x == y
        )
}

/// Whether `p` lies in directory `dir` (or below it): by its path, or, where `dir` exists, by
/// the real directory `p`'s parent is.
pub fn inside(p: &Path, dir: &Path) -> bool {
    crate::layer::cdp::pit::in_dir(p, dir)
}

impl super::Config {
    /// The files the daemon keeps in its state directories, and their temporary names: per
    /// mirrored volume `<volume>.mirror-state` and `.mirror-al` in `[mirror] state_dir`, per
    /// subsystem `resv-<crc>.json` in `[nvmf] state_dir`, per iSCSI LUN `<IQN>-lun<N>.pr`
    /// in `[iscsi] state_dir`.
    pub fn state_files(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
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
