//! The test guest's initramfs: a newc cpio archive (uncompressed: the kernel unpacks it as it
//! is) written here, so neither `cpio` nor `depmod` is needed on the host.
//!
//! Model: an [`Archive`] maps guest paths to directories, files and symlinks; parents are
//! added with their children and written first. Kernel modules are resolved by name from the
//! extracted kernel package's tree (Debian's package has no `modules.dep`): each module's
//! `.modinfo` section names its dependencies (`depends=a,b`), visited first, so the list the
//! guest's `/init` loads with `insmod` is in dependency order. Programs get every shared
//! library `ldd` finds for them, all placed in `/usr/lib/x86_64-linux-gnu` (`/lib` and `/lib64`
//! are symlinks into `/usr`, as on merged-`/usr` Debian).
//!
//! Invariants: entry names are relative, without `.` or `..` components; the archive ends with
//! the `TRAILER!!!` record; every header and payload is padded to 4 bytes (newc).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Clone, PartialEq)]
enum Entry {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    Symlink(String),
}

/// Guest paths to entries.
#[derive(Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

/// A guest path as a cpio name: relative, no empty, `.` or `..` parts.
fn name(path: &str) -> String {
    path.split('/')
        .filter(|p| !p.is_empty() && *p != "." && *p != "..")
        .collect::<Vec<_>>()
        .join("/")
}

impl Archive {
    /// A directory and its parents.
    pub fn dir(&mut self, path: &str) {
        let n = name(path);
        let mut at = String::new();
        for part in n.split('/').filter(|p| !p.is_empty()) {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            self.entries.entry(at.clone()).or_insert(Entry::Dir);
        }
    }

    fn parent(&mut self, n: &str) {
        if let Some((p, _)) = n.rsplit_once('/') {
            self.dir(p);
        }
    }

    /// A regular file with permission bits `mode` (replaces an entry of that name).
    pub fn file(&mut self, path: &str, data: Vec<u8>, mode: u32) {
        let n = name(path);
        self.parent(&n);
        self.entries.insert(n, Entry::File { data, mode });
    }

    /// A symlink (kept if something of that name exists).
    pub fn symlink(&mut self, path: &str, target: &str) {
        let n = name(path);
        self.parent(&n);
        self.entries
            .entry(n)
            .or_insert_with(|| Entry::Symlink(target.to_string()));
    }

    /// Copy host file `from` to guest path `to`, keeping its execute bit.
    pub fn copy(&mut self, to: &str, from: &Path) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        let data = std::fs::read(from).map_err(|e| format!("{}: {e}", from.display()))?;
        let exec = std::fs::metadata(from)
            .map(|m| m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false);
        self.file(to, data, if exec { 0o755 } else { 0o644 });
        Ok(())
    }

    /// The newc archive: directories before what they hold (sorted names do that), then the
    /// trailer.
    pub fn to_newc(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut ino = 1u32;
        let mut rec = |out: &mut Vec<u8>, n: &str, mode: u32, data: &[u8]| {
            let header = format!(
                "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
                ino,
                mode,
                0,
                0,
                1,
                0,
                data.len(),
                0,
                0,
                0,
                0,
                n.len() + 1,
                0
            );
            ino += 1;
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(n.as_bytes());
            out.push(0);
            while !out.len().is_multiple_of(4) {
                out.push(0);
            }
            out.extend_from_slice(data);
            while !out.len().is_multiple_of(4) {
                out.push(0);
            }
        };
        for (n, e) in &self.entries {
            match e {
                Entry::Dir => rec(&mut out, n, 0o040755, &[]),
                Entry::File { data, mode } => rec(&mut out, n, 0o100000 | mode, data),
                Entry::Symlink(t) => rec(&mut out, n, 0o120777, t.as_bytes()),
            }
        }
        rec(&mut out, "TRAILER!!!", 0, &[]);
        out
    }
}

/// The `depends=` list of a module file's `.modinfo` (NUL-separated `key=value` strings).
pub fn modinfo_depends(ko: &[u8]) -> Vec<String> {
    ko.split(|b| *b == 0)
        .filter_map(|s| s.strip_prefix(b"depends="))
        .flat_map(|v| v.split(|b| *b == b','))
        .filter(|d| !d.is_empty())
        .map(|d| String::from_utf8_lossy(d).replace('-', "_"))
        .take(64)
        .collect()
}

/// The modules of a kernel tree (`lib/modules/<version>`): canonical name (`-` as `_`) to
/// file, and the names of modules built into the kernel (`modules.builtin`).
pub struct Modules {
    files: BTreeMap<String, PathBuf>,
    builtin: BTreeSet<String>,
    root: PathBuf,
}

impl Modules {
    pub fn index(root: &Path) -> Result<Modules, String> {
        let mut files = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            let rd = std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))?;
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Some(n) = p.file_name().and_then(|n| n.to_str())
                    && let Some(m) = n.strip_suffix(".ko")
                {
                    files.insert(m.replace('-', "_"), p.clone());
                }
            }
        }
        let builtin = std::fs::read_to_string(root.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.rsplit('/').next())
            .filter_map(|n| n.strip_suffix(".ko"))
            .map(|n| n.replace('-', "_"))
            .collect();
        Ok(Modules {
            files,
            builtin,
            root: root.to_path_buf(),
        })
    }

    /// `wanted` and their dependencies, dependencies first. A wanted module neither present
    /// nor built in is an error when `required`, skipped otherwise.
    pub fn resolve(&self, wanted: &[(&str, bool)]) -> Result<Vec<PathBuf>, String> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for (m, required) in wanted {
            let n = m.replace('-', "_");
            if !self.files.contains_key(&n) {
                if self.builtin.contains(&n) || !required {
                    continue;
                }
                return Err(format!(
                    "the guest kernel ({}) has no module {m}",
                    self.root.display()
                ));
            }
            self.visit(&n, &mut seen, &mut order, 0)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        n: &str,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<PathBuf>,
        depth: usize,
    ) -> Result<(), String> {
        if !seen.insert(n.to_string()) {
            return Ok(());
        }
        let Some(file) = self.files.get(n) else {
            // a dependency built into the kernel
            return Ok(());
        };
        if depth > 32 {
            return Err(format!("module dependencies too deep at {n}"));
        }
        let data = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
        for d in modinfo_depends(&data) {
            self.visit(&d, seen, order, depth + 1)?;
        }
        order.push(file.clone());
        Ok(())
    }
}

/// The shared libraries of host program `prog` (`ldd`, with `lib_path` as LD_LIBRARY_PATH):
/// (soname, host file). The dynamic loader is listed under its own file name.
pub fn libraries(prog: &Path, lib_path: &str) -> Result<Vec<(String, PathBuf)>, String> {
    let out = Command::new("ldd")
        .arg(prog)
        .env("LD_LIBRARY_PATH", lib_path)
        .output()
        .map_err(|e| format!("cannot run ldd: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.contains("not found") {
            return Err(format!("{}: {line}", prog.display()));
        }
        let (soname, file) = match line.split_once(" => ") {
            Some((so, rest)) => (so.to_string(), rest.split(" (").next().unwrap_or("")),
            None => {
                let f = line.split(" (").next().unwrap_or("");
                let so = f.rsplit('/').next().unwrap_or("").to_string();
                (so, f)
            }
        };
        if file.starts_with('/') {
            libs.push((soname, PathBuf::from(file)));
        }
    }
    if libs.is_empty() && !out.status.success() {
        return Err(format!(
            "ldd {}: {}",
            prog.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_records_are_padded_and_parents_come_first() {
        let mut a = Archive::default();
        a.file("/etc/twinblk/x.sh", b"abc".to_vec(), 0o755);
        a.symlink("bin/sh", "busybox");
        a.symlink("bin/sh", "other"); // kept: the first wins
        a.file("../../init", b"#!".to_vec(), 0o755);
        let out = a.to_newc();
        assert_eq!(out.len() % 4, 0);
        // walk the records back
        let mut at = 0;
        let mut names = Vec::new();
        loop {
            let h = std::str::from_utf8(&out[at..at + 110]).unwrap();
            assert_eq!(&h[..6], "070701");
            let field = |i: usize| u32::from_str_radix(&h[6 + 8 * i..14 + 8 * i], 16).unwrap();
            let (mode, size, nlen) = (field(1), field(6) as usize, field(11) as usize);
            let n = std::str::from_utf8(&out[at + 110..at + 110 + nlen - 1]).unwrap();
            at = (at + 110 + nlen).div_ceil(4) * 4;
            let data = &out[at..at + size];
            at = (at + size).div_ceil(4) * 4;
            names.push((n.to_string(), mode, data.to_vec()));
            if n == "TRAILER!!!" {
                break;
            }
        }
        assert_eq!(at, out.len());
        let find = |n: &str| names.iter().position(|(x, _, _)| x == n).unwrap();
        assert!(find("etc") < find("etc/twinblk"));
        assert!(find("etc/twinblk") < find("etc/twinblk/x.sh"));
        assert_eq!(names[find("bin/sh")].2, b"busybox");
        assert_eq!(names[find("bin/sh")].1, 0o120777);
        assert_eq!(names[find("init")].1, 0o100755);
        assert_eq!(names[find("etc/twinblk/x.sh")].2, b"abc");
    }

    #[test]
    fn modinfo_depends_reads_the_list() {
        let ko = b"\x7fELF junk\0license=GPL\0depends=libiscsi,scsi_transport-iscsi\0intree=Y\0";
        assert_eq!(
            modinfo_depends(ko),
            vec!["libiscsi".to_string(), "scsi_transport_iscsi".to_string()]
        );
        assert!(modinfo_depends(b"depends=\0").is_empty());
        assert!(modinfo_depends(b"").is_empty());
    }
}
