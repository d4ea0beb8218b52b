//! One daemon per state directory: the daemon holds an exclusive `flock` on `twinblk.lock` in
//! each of its state directories (`[mirror]`, `[nvmf]` and `[iscsi] state_dir`) from its start
//! to its stop, with its pid written in the file. A second daemon (or a `twinblk cdp rollback`,
//! which writes replica states too) started on one of them is refused at once, naming the
//! directory and the holder's pid, before it reads or writes any state file there: without
//! the lock two daemons on one directory would both write its state files, and the mirror
//! would catch it only later, by the replica identity.
//!
//! The kernel releases a `flock` when the holder's last descriptor of the file closes, so a
//! daemon killed with SIGKILL leaves no stale lock: only its pid, which the next holder
//! replaces. The files are opened close-on-exec (the daemon's children, CDP views and
//! restores, never inherit the lock).

use crate::control::config::{Config, same_file};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The lock file's name in each state directory (the config's path checks refuse it as a
/// volume's file: [`crate::control::config::Config::state_files`]).
pub const LOCK_FILE: &str = crate::control::config::STATE_LOCK_FILE;

/// How long a lock whose recorded holder is no longer running is waited for (the kernel closes
/// a killed process's files as it tears the process down).
const DEAD_HOLDER_WAIT: Duration = Duration::from_secs(3);

/// The state directories' locks, held while this value lives.
#[derive(Debug)]
pub struct StateLocks {
    _held: Vec<File>,
}

/// The state directories of `cfg`, each once (one directory named by several sections is
/// locked once), with the sections that name it.
pub fn state_dirs(cfg: &Config) -> Vec<(PathBuf, Vec<&'static str>)> {
    let named = [
        (
            "[mirror] state_dir",
            cfg.mirror.as_ref().and_then(|m| m.state_dir.clone()),
        ),
        ("[nvmf] state_dir", cfg.nvmf.state_dir.clone()),
        ("[iscsi] state_dir", cfg.iscsi.state_dir.clone()),
    ];
    let mut out: Vec<(PathBuf, Vec<&'static str>)> = Vec::new();
    for (section, dir) in named {
        let Some(dir) = dir else { continue };
        match out.iter_mut().find(|(d, _)| same_file(d, &dir)) {
            Some((_, s)) => s.push(section),
            None => out.push((dir, vec![section])),
        }
    }
    out
}

/// Lock every state directory of `cfg` (made when missing), or say why not: held by another
/// process (its pid named when the file says it), or the lock file cannot be made.
pub fn lock_state_dirs(cfg: &Config) -> Result<StateLocks, String> {
    let mut held = Vec::new();
    for (dir, sections) in state_dirs(cfg) {
        held.push(lock_dir(&dir, &sections.join(" and "))?);
    }
    Ok(StateLocks { _held: held })
}

/// The lock of directory `dir` (`what`: the sections naming it, for the messages).
pub fn lock_dir(dir: &Path, what: &str) -> Result<File, String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("{what} {}: cannot create it: {e}", dir.display()))?;
    let p = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&p)
        .map_err(|e| format!("{what} {}: cannot open {}: {e}", dir.display(), p.display()))?;
    let t = Instant::now();
    loop {
        // SAFETY: plain syscall on a descriptor `f` owns.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(format!(
                "{what} {}: cannot lock {}: {e}",
                dir.display(),
                p.display()
            ));
        }
        let pid = holder(&f);
        if pid.is_some_and(running) || t.elapsed() >= DEAD_HOLDER_WAIT {
            return Err(format!(
                "{what} {} is in use: process {} holds its lock {} (another twinblk daemon, or a twinblk cdp rollback); each daemon needs state directories of its own: stop that one, or give this one another directory",
                dir.display(),
                pid.map_or_else(|| "unknown".to_string(), |p| p.to_string()),
                p.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let write = || -> std::io::Result<()> {
        f.set_len(0)?;
        f.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0)?;
        (&f).flush()
    };
    write().map_err(|e| {
        format!(
            "{what} {}: cannot write {}: {e}",
            dir.display(),
            p.display()
        )
    })?;
    Ok(f)
}

/// The pid the lock file names, if it names one.
fn holder(f: &File) -> Option<i32> {
    let mut b = [0u8; 32];
    let n = f.read_at(&mut b, 0).ok()?;
    std::str::from_utf8(&b[..n])
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|&p: &i32| p > 0)
}

/// Whether process `pid` runs (or may: one this process may not signal).
fn running(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second lock of one directory, in this process too, is refused naming the holder's
    /// pid; released, it is taken again.
    #[test]
    fn a_held_directory_is_refused_naming_the_holder() {
        let d = tempfile::tempdir().unwrap();
        let first = lock_dir(d.path(), "[mirror] state_dir").unwrap();
        let e = lock_dir(d.path(), "[mirror] state_dir").unwrap_err();
        assert!(
            e.contains(&format!("process {} holds", std::process::id()))
                && e.contains(&d.path().display().to_string()),
            "{e}"
        );
        drop(first);
        lock_dir(d.path(), "[mirror] state_dir").unwrap();
    }

    /// A lock file naming a process that is gone, unlocked, is simply taken.
    #[test]
    fn a_stale_pid_without_a_lock_is_taken_over() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(LOCK_FILE), "999999999\n").unwrap();
        let _f = lock_dir(d.path(), "x").unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join(LOCK_FILE)).unwrap(),
            format!("{}\n", std::process::id())
        );
    }
}
