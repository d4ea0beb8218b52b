//! Bookmarks: named points in time of a volume's history ("before the upgrade"), kept past
//! retention until deleted (docs/cdp-format.md, "Bookmarks").
//!
//! Model: the file `bookmarks` in the CDP directory, one bookmark per line, `NAME TAB TIME`
//! (site time in ns, decimal), sorted by name, replaced atomically (a temporary file of the
//! writer's own, fsync, rename) by writers serialized with `flock` on `bookmarks.lock` (the
//! control socket serves each client on a thread of its own). Invariants: names are 1..=64
//! bytes of `[A-Za-z0-9._-]` and unique, and a set name is moved only when the caller asks
//! to replace it; parsing never
//! panics and refuses anything else (fuzzed with the segment decoders, target `cdp_segment`);
//! consolidation never moves the base point past the oldest bookmark ([`hold`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A history's bookmarks: name → site time (ns).
pub type Bookmarks = BTreeMap<String, u64>;

/// The file.
pub fn path(dir: &Path) -> PathBuf {
    dir.join("bookmarks")
}

/// A valid bookmark name.
pub fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parse the file's text.
pub fn parse(text: &str) -> Result<Bookmarks, String> {
    let mut m = Bookmarks::new();
    for (i, line) in text.lines().enumerate() {
        let (name, time) = line
            .split_once('\t')
            .ok_or_else(|| format!("line {}: not NAME<TAB>TIME", i + 1))?;
        if !valid_name(name) {
            return Err(format!("line {}: bad bookmark name {name:?}", i + 1));
        }
        let t: u64 = time
            .parse()
            .map_err(|_| format!("line {}: bad time {time:?}", i + 1))?;
        if m.insert(name.to_string(), t).is_some() {
            return Err(format!("line {}: bookmark {name:?} twice", i + 1));
        }
    }
    Ok(m)
}

/// The file's text.
pub fn encode(b: &Bookmarks) -> String {
    b.iter().map(|(n, t)| format!("{n}\t{t}\n")).collect()
}

/// Read a directory's bookmarks (none when the file is missing).
pub fn load(dir: &Path) -> Result<Bookmarks, String> {
    match std::fs::read_to_string(path(dir)) {
        Ok(t) => parse(&t).map_err(|e| format!("{}: {e}", path(dir).display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Bookmarks::new()),
        Err(e) => Err(format!("{}: {e}", path(dir).display())),
    }
}

/// The lock file writers hold (`flock`, exclusive) across their read-modify-write of the file:
/// one thread per control client, and any other process writing the directory's bookmarks.
pub fn lock_path(dir: &Path) -> PathBuf {
    dir.join("bookmarks.lock")
}

/// Hold the writers' lock of `dir` (released when dropped).
fn lock(dir: &Path) -> Result<std::fs::File, String> {
    use std::os::fd::AsRawFd;
    let p = lock_path(dir);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(|e| format!("{}: {e}", p.display()))?;
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(f);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("lock {}: {e}", p.display()));
        }
    }
}

/// Write the file (under the writers' lock): a temporary file of this writer's own, fsync,
/// rename, directory fsync.
fn save(dir: &Path, b: &Bookmarks) -> Result<(), String> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let p = path(dir);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!("bookmarks.tmp-{}-{n}", std::process::id()));
    let err = |e: std::io::Error| format!("{}: {e}", p.display());
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(encode(b).as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &p)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)
}

/// Set bookmark `name` at `time`. A name already set is refused unless `replace` (then it
/// moves to `time`). Writers are serialized ([`lock_path`]).
pub fn set(dir: &Path, name: &str, time: u64, replace: bool) -> Result<(), String> {
    if !valid_name(name) {
        return Err(format!(
            "bad bookmark name {name:?}: 1 to 64 of A-Z a-z 0-9 . _ -"
        ));
    }
    let _l = lock(dir)?;
    let mut b = load(dir)?;
    if let Some(t) = b.get(name).filter(|_| !replace) {
        return Err(format!(
            "bookmark {name:?} exists (time {t} ns): delete it first, or ask to replace it"
        ));
    }
    b.insert(name.to_string(), time);
    save(dir, &b)
}

/// Set bookmark `name` at `time` in every history of `dirs` (a group's), or in none: every
/// directory's writers' lock is taken first (in path order, so two such calls cannot
/// deadlock), then every file is checked, then written. A name already set in any of them is
/// refused unless `replace`, with nothing set: a name set by another writer between a
/// caller's own check and its writes is seen here.
pub fn set_all(dirs: &[&Path], name: &str, time: u64, replace: bool) -> Result<(), String> {
    if !valid_name(name) {
        return Err(format!(
            "bad bookmark name {name:?}: 1 to 64 of A-Z a-z 0-9 . _ -"
        ));
    }
    let mut order: Vec<&Path> = dirs.to_vec();
    order.sort();
    order.dedup();
    let _locks = order
        .iter()
        .map(|d| lock(d))
        .collect::<Result<Vec<_>, _>>()?;
    let mut all = Vec::with_capacity(order.len());
    for d in &order {
        let mut b = load(d)?;
        if let Some(t) = b.get(name).filter(|_| !replace) {
            return Err(format!(
                "bookmark {name:?} exists in {} (time {t} ns): delete it first, or ask to replace it; nothing was set",
                d.display()
            ));
        }
        b.insert(name.to_string(), time);
        all.push((d, b));
    }
    for (d, b) in &all {
        save(d, b)?;
    }
    Ok(())
}

/// Delete bookmark `name`; false when there was none.
pub fn delete(dir: &Path, name: &str) -> Result<bool, String> {
    let _l = lock(dir)?;
    let mut b = load(dir)?;
    let had = b.remove(name).is_some();
    if had {
        save(dir, &b)?;
    }
    Ok(had)
}

/// The time consolidation must not pass (the oldest bookmark), if any. An unreadable file
/// holds everything (`Some(0)`): a bookmark is never lost to a damaged file.
pub fn hold(dir: &Path) -> Option<u64> {
    match load(dir) {
        Ok(b) => b.values().min().copied(),
        Err(e) => {
            tracing::warn!(error = %e, "cdp: bookmarks unreadable; consolidation held");
            Some(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bookmarks_round_trip_and_bad_files_are_refused() {
        let mut b = Bookmarks::new();
        b.insert("before-upgrade".into(), 5);
        b.insert("x.1_y".into(), 7);
        assert_eq!(parse(&encode(&b)), Ok(b));
        for bad in [
            "a",
            "a\tb\n",
            "a b\t1\n",
            "\t1\n",
            "a\t1\na\t2\n",
            "a\t-1\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(!valid_name(&"a".repeat(65)));
        assert!(valid_name(&"a".repeat(64)));
    }

    #[test]
    fn set_delete_and_hold() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(hold(d.path()), None);
        set(d.path(), "b", 20, false).unwrap();
        set(d.path(), "a", 10, false).unwrap();
        assert_eq!(hold(d.path()), Some(10));
        assert!(set(d.path(), "no/slash", 1, false).is_err());
        assert!(delete(d.path(), "a").unwrap());
        assert!(!delete(d.path(), "a").unwrap());
        assert_eq!(hold(d.path()), Some(20));
        std::fs::write(path(d.path()), "garbage").unwrap();
        assert_eq!(hold(d.path()), Some(0), "a damaged file holds everything");
    }

    /// Two writers at once (the control socket runs a thread per client) lose nothing and
    /// leave a file that parses; a name already set is not moved silently.
    #[test]
    fn concurrent_writers_lose_nothing_and_a_name_is_not_moved_silently() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_path_buf();
        let ts: Vec<_> = (0..2)
            .map(|w| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    for i in 0..100u64 {
                        set(&dir, &format!("w{w}-{i}"), i, false).unwrap();
                    }
                })
            })
            .collect();
        for t in ts {
            t.join().unwrap();
        }
        let b = load(&dir).unwrap();
        assert_eq!(b.len(), 200, "bookmarks lost");
        set(&dir, "x", 5, false).unwrap();
        let e = set(&dir, "x", 9, false).unwrap_err();
        assert!(e.contains("exists"), "{e}");
        assert_eq!(load(&dir).unwrap()["x"], 5);
        set(&dir, "x", 9, true).unwrap();
        assert_eq!(load(&dir).unwrap()["x"], 9, "replaced when asked");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("bookmarks.tmp"))
            .collect();
        assert!(names.is_empty(), "temporaries left: {names:?}");
    }
}
