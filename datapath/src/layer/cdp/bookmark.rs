//! Bookmarks: named points in time of a volume's history ("before the upgrade"), kept past
//! retention until deleted (docs/cdp-format.md, "Bookmarks").
//!
//! Model: the file `bookmarks` in the CDP directory, one bookmark per line, `NAME TAB TIME`
//! (site time in ns, decimal), sorted by name, replaced atomically (temporary file, fsync,
//! rename). Invariants: names are 1..=64 bytes of `[A-Za-z0-9._-]` and unique; parsing never
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

fn save(dir: &Path, b: &Bookmarks) -> Result<(), String> {
    let p = path(dir);
    let tmp = p.with_extension("tmp");
    let err = |e: std::io::Error| format!("{}: {e}", p.display());
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(encode(b).as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, &p).map_err(err)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)
}

/// Set bookmark `name` at `time` (replacing one of that name).
pub fn set(dir: &Path, name: &str, time: u64) -> Result<(), String> {
    if !valid_name(name) {
        return Err(format!(
            "bad bookmark name {name:?}: 1 to 64 of A-Z a-z 0-9 . _ -"
        ));
    }
    let mut b = load(dir)?;
    b.insert(name.to_string(), time);
    save(dir, &b)
}

/// Delete bookmark `name`; false when there was none.
pub fn delete(dir: &Path, name: &str) -> Result<bool, String> {
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
        set(d.path(), "b", 20).unwrap();
        set(d.path(), "a", 10).unwrap();
        assert_eq!(hold(d.path()), Some(10));
        assert!(set(d.path(), "no/slash", 1).is_err());
        assert!(delete(d.path(), "a").unwrap());
        assert!(!delete(d.path(), "a").unwrap());
        assert_eq!(hold(d.path()), Some(20));
        std::fs::write(path(d.path()), "garbage").unwrap();
        assert_eq!(hold(d.path()), Some(0), "a damaged file holds everything");
    }
}
