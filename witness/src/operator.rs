//! Operator actions on a stopped witness's state file.
//!
//! Model: the witness holds an exclusive lock on `<state>.lock` while it runs ([`lock`]); an
//! action here takes the same lock, so it refuses while a witness serves the file, loads the
//! table (refusing a missing or damaged file, as a start does), changes it and saves it
//! durably. The witness reads the change at its next start.
//!
//! [`release_lost_holder`]: a group's survivor that is lost for good (its site destroyed) holds
//! the grant for ever, so the witness denies the other site every request, an operator's
//! takeover included. Releasing it gives up the writes that site acknowledged alone; the
//! other site's `twinblk-ctl takeover --accept-data-loss` is then granted. If the released
//! site comes back with its state ("survivor"), the witness's answer tells it the grant is
//! gone and it fences (docs/witness-protocol.md, "Operator: a survivor lost for good").
//!
//! Invariants: nothing is written unless the group has a holder; the group's epoch is kept
//! (epochs never go down), so a site that held it can never be granted on it again.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::proto::{Epoch, GroupId, SiteId};
use crate::state::{StateError, Table};

/// The lock file of the state file at `state`.
pub fn lock_path(state: &Path) -> PathBuf {
    let mut s = state.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// Take the exclusive lock of the state file at `state` (held while the returned file is
/// open); an error when another process holds it.
pub fn lock(state: &Path) -> Result<File, OperatorError> {
    let path = lock_path(state);
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| OperatorError::Lock {
            path: path.clone(),
            source,
        })?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(OperatorError::Running(path)),
        Err(std::fs::TryLockError::Error(source)) => Err(OperatorError::Lock { path, source }),
    }
}

/// Why an operator action was refused.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("{0} is locked: a witness is running on this state file; stop it first")]
    Running(PathBuf),
    #[error("locking {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(
        "group {0} has no holder: nothing to release (the witness already grants it to whichever site asks first)"
    )]
    NoHolder(String),
}

/// What [`release_lost_holder`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Released {
    /// The site that held the group.
    pub holder: SiteId,
    /// The group's epoch (unchanged).
    pub epoch: Epoch,
}

/// The table as text, a line per group (its id; with `name`, only that group) and per site:
/// what an operator reads before a release. Read-only: a running witness's file may be read
/// (it is replaced whole, never written in place).
pub fn show(state: &Path, name: Option<&str>) -> Result<String, OperatorError> {
    let table = Table::load(state, false)?;
    let only = name.map(GroupId::from_name);
    let mut out = String::new();
    for (g, r) in &table.groups {
        if only.is_some_and(|o| o != *g) {
            continue;
        }
        let site = |s: Option<SiteId>| s.map_or("none".to_string(), |s| s.get().to_string());
        // (An unused release: the other site may be granted once at the epoch before it.)
        let unused = table.unused.get(g).map_or(String::new(), |(s, _)| {
            format!(", released unused by site {}", s.get())
        });
        out.push_str(&format!(
            "group {g}: epoch {}, holder {}, preferred {}{unused}\n",
            r.epoch.0,
            site(r.holder),
            site(r.preferred)
        ));
    }
    if let (Some(n), true) = (name, out.is_empty()) {
        out.push_str(&format!(
            "group {} ({n}): never seen (epoch 0, no holder)\n",
            GroupId::from_name(n)
        ));
    }
    if name.is_none() {
        for (s, c) in &table.counters {
            out.push_str(&format!("site {}: highest request counter {c}\n", s.get()));
        }
        if out.is_empty() {
            out.push_str("no group or site recorded yet\n");
        }
    }
    Ok(out)
}

/// Clear the holder of group `name` in the table (pure).
pub fn release_in(table: &mut Table, name: &str) -> Result<Released, OperatorError> {
    let g = GroupId::from_name(name);
    let Some(rec) = table.groups.get_mut(&g) else {
        return Err(OperatorError::NoHolder(name.to_string()));
    };
    let Some(holder) = rec.holder.take() else {
        return Err(OperatorError::NoHolder(name.to_string()));
    };
    Ok(Released {
        holder,
        epoch: rec.epoch,
    })
}

/// Clear the holder of group `name` in the stopped witness's state file at `state`.
pub fn release_lost_holder(state: &Path, name: &str) -> Result<Released, OperatorError> {
    let _lock = lock(state)?;
    let mut table = Table::load(state, false)?;
    let r = release_in(&mut table, name)?;
    table.save(state)?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::GroupRec;

    fn held(dir: &Path) -> PathBuf {
        let path = dir.join("w.state");
        let mut t = Table::default();
        t.groups.insert(
            GroupId::from_name("vol0"),
            GroupRec {
                epoch: Epoch(7),
                holder: SiteId::new(2),
                preferred: SiteId::new(1),
            },
        );
        t.save(&path).unwrap();
        path
    }

    #[test]
    fn a_lost_holder_is_released_and_the_epoch_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = held(dir.path());
        let r = release_lost_holder(&path, "vol0").unwrap();
        assert_eq!((r.holder.get(), r.epoch), (2, Epoch(7)));
        let t = Table::load(&path, false).unwrap();
        let rec = t.groups[&GroupId::from_name("vol0")];
        assert_eq!(
            (rec.epoch, rec.holder, rec.preferred),
            (Epoch(7), None, SiteId::new(1))
        );
        // Nothing held any more: refused, nothing written.
        let before = std::fs::read(&path).unwrap();
        assert!(matches!(
            release_lost_holder(&path, "vol0"),
            Err(OperatorError::NoHolder(_))
        ));
        assert!(matches!(
            release_lost_holder(&path, "other"),
            Err(OperatorError::NoHolder(_))
        ));
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn the_table_is_shown_whole_or_for_one_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = held(dir.path());
        let g = GroupId::from_name("vol0");
        let all = show(&path, None).unwrap();
        assert_eq!(all, format!("group {g}: epoch 7, holder 2, preferred 1\n"));
        assert_eq!(show(&path, Some("vol0")).unwrap(), all);
        assert!(
            show(&path, Some("other"))
                .unwrap()
                .contains("(other): never seen")
        );
        // Readable while a witness holds the lock.
        let _held = lock(&path).unwrap();
        assert_eq!(show(&path, None).unwrap(), all);
        // A group released unused says so.
        let mut t = Table::load(&path, false).unwrap();
        t.groups.get_mut(&g).unwrap().holder = None;
        t.unused.insert(g, (SiteId::new(2).unwrap(), Epoch(7)));
        t.save(&path).unwrap();
        assert_eq!(
            show(&path, Some("vol0")).unwrap(),
            format!("group {g}: epoch 7, holder none, preferred 1, released unused by site 2\n")
        );
    }

    #[test]
    fn a_running_witness_or_a_missing_or_damaged_file_refuses_the_release() {
        let dir = tempfile::tempdir().unwrap();
        let path = held(dir.path());
        let held_lock = lock(&path).unwrap();
        assert!(matches!(
            release_lost_holder(&path, "vol0"),
            Err(OperatorError::Running(_))
        ));
        drop(held_lock);
        assert!(matches!(
            release_lost_holder(&dir.path().join("missing"), "vol0"),
            Err(OperatorError::State(StateError::Missing(_)))
        ));
        let mut b = std::fs::read(&path).unwrap();
        let n = b.len();
        b[n - 1] ^= 1;
        std::fs::write(&path, &b).unwrap();
        assert!(matches!(
            release_lost_holder(&path, "vol0"),
            Err(OperatorError::State(StateError::Corrupt { .. }))
        ));
    }
}
