//! Debian packages for the test guest, fetched with apt's own client and never installed.
//!
//! Model: a package is wanted as a *root* (the kernel, busybox-static, open-iscsi, ...); a
//! root's shared libraries come from the host when their package is installed there, and
//! otherwise from the archive: the root's `Depends`/`Pre-Depends` (the first alternative of a
//! group, none when any alternative is installed) whose package name starts with `lib` are
//! wanted too, recursively. Everything else a root depends on (daemons, configuration, udev)
//! is not needed by a program run from an initramfs and is left out; `ldd` checks the result
//! (see `initramfs.rs`). Files: `<cache>/debs/<name>_<version>_<arch>.deb`, as `apt-get
//! download` names them; a package with a file there is not downloaded again.
//!
//! Invariants: nothing here writes outside the cache directory or changes the host's package
//! state (`apt-get download`, `apt-cache` and `dpkg-query` only read it); every failure is an
//! `Err` with the command and its message, never a panic.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Run `cmd`, its stdout, or an error naming it with its stderr.
pub fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err: Vec<&str> = err
            .lines()
            .filter(|l| !l.contains("performed unsandboxed"))
            .collect();
        return Err(format!(
            "{:?} {:?} failed ({}): {}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            err.join(" / ")
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// True when `tool` is on PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// True when the host has package `name` installed.
pub fn installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}", name])
        .output()
        .map(|o| o.status.success() && o.stdout.starts_with(b"ii"))
        .unwrap_or(false)
}

/// One dependency group of `apt-cache depends`: its alternatives, each with the packages that
/// provide it when it is virtual (`<name>`).
#[derive(Debug, Default, PartialEq)]
pub struct Group {
    pub alternatives: Vec<(String, Vec<String>)>,
}

/// Parse `apt-cache depends PKG` output: the `Depends`/`PreDepends` groups (`|` joins a line
/// with the next into one group; indented lines under a `<virtual>` name are its providers).
pub fn parse_depends(text: &str) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    let mut open = false; // the last group continues (its last line had `|`)
    let mut in_dep = false; // the last name line was a Depends/PreDepends
    for line in text.lines().skip(1) {
        let indent = line.len() - line.trim_start().len();
        let t = line.trim();
        if indent >= 4 {
            // a provider of the virtual name above
            if in_dep && let Some(alt) = groups.last_mut().and_then(|g| g.alternatives.last_mut()) {
                alt.1.push(t.to_string());
            }
            continue;
        }
        let (bar, rest) = match t.strip_prefix('|') {
            Some(r) => (true, r),
            None => (false, t),
        };
        let Some((kind, name)) = rest.split_once(": ") else {
            in_dep = false;
            continue;
        };
        in_dep = kind == "Depends" || kind == "PreDepends";
        if !in_dep {
            open = false;
            continue;
        }
        if !open {
            groups.push(Group::default());
        }
        if let Some(g) = groups.last_mut() {
            g.alternatives.push((name.to_string(), Vec::new()));
        }
        open = bar;
    }
    groups
}

/// The real package a group resolves to, or `None` when the host already satisfies it.
fn choose(g: &Group) -> Option<String> {
    let real = |(name, providers): &(String, Vec<String>)| -> Vec<String> {
        match name.strip_prefix('<').and_then(|n| n.strip_suffix('>')) {
            Some(_) => providers.clone(),
            None => vec![name.clone()],
        }
    };
    if g.alternatives.iter().flat_map(real).any(|p| installed(&p)) {
        return None;
    }
    g.alternatives.iter().flat_map(real).next()
}

/// `roots` and the library packages they need that the host lacks (module docs).
pub fn closure(roots: &[&str]) -> Result<Vec<String>, String> {
    let mut want: BTreeSet<String> = roots.iter().map(|s| s.to_string()).collect();
    let mut todo: Vec<String> = want.iter().cloned().collect();
    while let Some(p) = todo.pop() {
        let text = output(Command::new("apt-cache").args(["depends", &p]))?;
        for g in parse_depends(&text) {
            if let Some(dep) = choose(&g)
                && dep.starts_with("lib")
                && want.insert(dep.clone())
            {
                todo.push(dep);
            }
        }
    }
    Ok(want.into_iter().collect())
}

/// The versioned kernel package `linux-image-amd64` depends on (this release's kernel).
pub fn kernel_package() -> Result<String, String> {
    let text = output(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))
        .map_err(|e| format!("{e} (is this Debian, and has `apt-get update` run?)"))?;
    parse_depends(&text)
        .into_iter()
        .flat_map(|g| g.alternatives)
        .map(|(n, _)| n)
        .find(|n| n.starts_with("linux-image-") && n.ends_with("-amd64"))
        .ok_or_else(|| "apt knows no linux-image-amd64 kernel: run `apt-get update`".to_string())
}

/// The cached `.deb` of package `name`, if any.
pub fn deb(debs: &Path, name: &str) -> Option<PathBuf> {
    let prefix = format!("{name}_");
    let mut found: Vec<PathBuf> = std::fs::read_dir(debs)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .collect();
    found.sort();
    found.pop()
}

/// Download every package of `names` not yet in `debs` (one `apt-get download`).
pub fn download(debs: &Path, names: &[String]) -> Result<(), String> {
    std::fs::create_dir_all(debs).map_err(|e| format!("{}: {e}", debs.display()))?;
    let missing: Vec<&String> = names.iter().filter(|n| deb(debs, n).is_none()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "linux guest: apt-get download {missing:?} into {}",
        debs.display()
    );
    output(
        Command::new("apt-get")
            .arg("download")
            .args(&missing)
            .current_dir(debs),
    )?;
    match missing.iter().find(|n| deb(debs, n).is_none()) {
        Some(n) => Err(format!("apt-get download left no .deb for {n}")),
        None => Ok(()),
    }
}

/// Unpack the cached `.deb` of each of `names` into `root` (once: a stamp file per package
/// file records it).
pub fn extract(debs: &Path, names: &[String], root: &Path) -> Result<(), String> {
    let stamps = root.join(".twinblk-extracted");
    std::fs::create_dir_all(&stamps).map_err(|e| format!("{}: {e}", stamps.display()))?;
    for n in names {
        let file = deb(debs, n).ok_or_else(|| format!("no .deb for {n}"))?;
        let stamp = stamps.join(file.file_name().unwrap_or_default());
        if stamp.exists() {
            continue;
        }
        output(Command::new("dpkg-deb").arg("-x").arg(&file).arg(root))?;
        std::fs::write(&stamp, b"").map_err(|e| format!("{}: {e}", stamp.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_groups_alternatives_and_virtual_providers() {
        let text = "open-iscsi\n |PreDepends: debconf\n  PreDepends: <debconf-2.0>\n    cdebconf\n    debconf\n  Depends: libc6\n  Depends: libisns0\n |Recommends: busybox\n    busybox-static\n  Recommends: busybox-static\n  Breaks: <qemu-kvm>\n  Depends: udev\n";
        let g = parse_depends(text);
        assert_eq!(g.len(), 4, "{g:?}");
        assert_eq!(g[0].alternatives.len(), 2);
        assert_eq!(g[0].alternatives[0], ("debconf".to_string(), vec![]));
        assert_eq!(
            g[0].alternatives[1],
            (
                "<debconf-2.0>".to_string(),
                vec!["cdebconf".to_string(), "debconf".to_string()]
            )
        );
        assert_eq!(g[1].alternatives[0].0, "libc6");
        assert_eq!(g[2].alternatives[0].0, "libisns0");
        assert_eq!(g[3].alternatives, vec![("udev".to_string(), vec![])]);
        assert!(parse_depends("").is_empty());
        assert!(parse_depends("x\n garbage\n|\n  : \n").is_empty());
    }
}
