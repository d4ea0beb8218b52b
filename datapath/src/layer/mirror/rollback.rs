//! A mirrored volume's replica state around a CDP rollback in place (docs/cdp-rollback.md,
//! "Mirrored volume"): run off any daemon, on the persisted files alone
//! (`state.rs`, `alfile.rs`), while the site's daemon is stopped.
//!
//! Model: the rolled-back site records every region it may change **before** it changes one:
//! in sync (mode 0), as suspect regions with the clean flag cleared and its activity log
//! marked not clean with the regions' extents, so it restarts in replica state 5 and its next
//! session reconciles them; survivor (mode 1), as dirty regions its resync sends. Any other
//! state is refused ([`check`]): the peer's copy would win, or the replica restart as new.
//! The peer may yield ([`yield_to_peer`]): in sync becomes fenced, so the session with the
//! rolled-back site (state 5) reconciles with the rolled-back site as the source.
//!
//! Invariants: a site marked by [`mark`] never announces "in sync, clean" (0) again before a
//! session has reconciled or resynced every marked region, whatever its peer's state; both
//! functions replace files atomically (the state file with `state::save`, the activity log
//! with a new generation in the other slot), so a crash leaves the old or the new state.

use super::alfile::{self, AlLoad, AlSnapshot};
use super::engine::RegionMap;
use super::state::{self, Persisted};
use std::path::{Path, PathBuf};

/// The replica state file of `volume` in `state_dir`.
pub fn state_path(state_dir: &Path, volume: &str) -> PathBuf {
    state_dir.join(format!("{volume}.mirror-state"))
}

fn load(path: &Path) -> Result<Persisted, String> {
    match state::load(path)? {
        Some(p) => Ok(p),
        None => Err(format!(
            "{} does not exist: the replica would restart as a new one and its peer would \
             overwrite the rollback; roll back at the peer instead",
            path.display()
        )),
    }
}

/// Whether a rollback may mark this replica (nothing is changed).
pub fn check(path: &Path) -> Result<Persisted, String> {
    let p = load(path)?;
    match p.mode {
        0 | 1 => Ok(p),
        m => Err(format!(
            "the mirror replica state is {} ({}): its peer's copy wins at the next session; \
             roll back at the peer instead",
            super::engine::state_name(m as u32),
            path.display()
        )),
    }
}

/// A map of `p`'s geometry with `ranges` set.
fn regions(p: &Persisted, ranges: &[(u64, u64)]) -> RegionMap {
    let mut m = RegionMap::new(p.size, p.granularity);
    for &(s, e) in ranges {
        if s < e && s < p.size {
            m.set_range(s, e.min(p.size) - s);
        }
    }
    m
}

/// Record `ranges` (byte ranges of the volume) as changed by a rollback (see the module doc).
pub fn mark(path: &Path, ranges: &[(u64, u64)]) -> Result<(), String> {
    let mut p = check(path)?;
    let r = regions(&p, ranges);
    let io = |e: std::io::Error| format!("{}: {e}", path.display());
    match p.mode {
        1 => {
            let mut d = RegionMap::from_words(p.size, p.granularity, std::mem::take(&mut p.bitmap));
            d.or_with(&r);
            p.bitmap = d.words().to_vec();
            state::save(path, &p).map_err(io)?;
        }
        _ => {
            // Unknown suspect set (a version-1 file): every region ever written, as the
            // engine assumes.
            let old = p.suspect.take().unwrap_or_else(|| p.written.clone());
            let mut s = RegionMap::from_words(p.size, p.granularity, old);
            s.or_with(&r);
            p.suspect = Some(s.words().to_vec());
            p.clean = false;
            state::save(path, &p).map_err(io)?;
            mark_actlog(&super::engine::actlog_path(path), ranges)?;
        }
    }
    Ok(())
}

/// Add the extents of `ranges` to a valid activity log as a new, not clean generation (at
/// least one extent, as many as fit). A missing log leaves the state file's clean flag to
/// say "unclean"; a log without a valid slot already does.
fn mark_actlog(path: &Path, ranges: &[(u64, u64)]) -> Result<(), String> {
    let AlLoad::Valid(s) = alfile::load(path) else {
        return Ok(());
    };
    let cap = ((s.slot_bytes.saturating_sub(40)) / 8).max(1) as usize;
    let mut ext = s.extents.clone();
    let last = s.size.div_ceil(s.extent.max(1));
    'outer: for &(a, b) in ranges {
        if a >= b {
            continue;
        }
        for e in a / s.extent..(b - 1) / s.extent + 1 {
            if e >= last || ext.len() >= cap {
                break 'outer;
            }
            if !ext.contains(&e) {
                ext.push(e);
            }
        }
    }
    if ext.is_empty() {
        ext.push(0);
    }
    ext.truncate(cap);
    alfile::save(
        path,
        &AlSnapshot {
            generation: s.generation + 1,
            clean: false,
            extents: ext,
            ..s
        },
    )
    .map_err(|e| format!("{}: {e}", path.display()))
}

/// The peer's side of a rollback: an in-sync replica becomes fenced (its suspect regions
/// kept, plus its activity log's extents if it stopped uncleanly), so its next session
/// receives from the rolled-back site. Fenced, resyncing or new: nothing to do. A survivor is
/// refused (it acknowledged writes alone). Returns the mode found.
pub fn yield_to_peer(path: &Path) -> Result<u8, String> {
    let Some(mut p) = state::load(path)? else {
        // A new replica: it receives everything from its peer anyway.
        return Ok(4);
    };
    match p.mode {
        0 => {}
        1 => {
            return Err(format!(
                "this site is the survivor ({}): it acknowledged writes alone that its peer's \
                 journal lacks; roll back here instead, or let it resync its peer",
                path.display()
            ));
        }
        m => return Ok(m),
    }
    let all = RegionMap::all(p.size, p.granularity);
    let mut s = match p.suspect.take() {
        Some(w) => RegionMap::from_words(p.size, p.granularity, w),
        None => all.clone(),
    };
    match alfile::load(&super::engine::actlog_path(path)) {
        AlLoad::Valid(a) if a.extents.is_empty() => {}
        AlLoad::Valid(a) => {
            for e in &a.extents {
                let off = e.saturating_mul(a.extent);
                if off < p.size {
                    s.set_range(off, a.extent.min(p.size - off));
                }
            }
        }
        AlLoad::Missing if p.clean => {}
        // It did not stop cleanly and nothing says where it wrote last.
        _ => s.or_with(&all),
    }
    p.suspect = Some(s.words().to_vec());
    p.mode = 2;
    state::save(path, &p).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn persisted(mode: u8) -> Persisted {
        Persisted {
            mode,
            clean: true,
            epoch: 3,
            size: 1 << 20,
            granularity: 65536,
            bitmap: vec![],
            written: vec![],
            led: true,
            suspect: Some(vec![]),
            identity: 9,
            leads: None,
            boot: 0,
            host_restarted: false,
            fenced_unanswered: None,
            fenced_denied: false,
        }
    }

    #[test]
    fn a_marked_replica_in_sync_is_unclean_with_the_regions_suspect() {
        let d = tempfile::tempdir().unwrap();
        let path = state_path(d.path(), "v");
        state::save(&path, &persisted(0)).unwrap();
        let al = super::super::engine::actlog_path(&path);
        let slot = alfile::slot_bytes(16);
        alfile::save(
            &al,
            &AlSnapshot {
                generation: 4,
                clean: true,
                extent: 1 << 18,
                size: 1 << 20,
                extents: vec![],
                slot_bytes: slot,
            },
        )
        .unwrap();
        mark(&path, &[(65536, 65536 + 4096), (600_000, 700_000)]).unwrap();
        let p = state::load(&path).unwrap().unwrap();
        assert!(!p.clean);
        let s = RegionMap::from_words(p.size, p.granularity, p.suspect.unwrap());
        assert!(s.test(1) && s.test(9) && s.test(10) && !s.test(0) && !s.test(2));
        match alfile::load(&al) {
            AlLoad::Valid(a) => {
                assert_eq!(a.generation, 5);
                assert!(!a.clean);
                assert_eq!(a.extents, vec![0, 2]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_survivor_gets_dirty_regions_and_other_states_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let path = state_path(d.path(), "v");
        state::save(&path, &persisted(1)).unwrap();
        mark(&path, &[(0, 4096)]).unwrap();
        let p = state::load(&path).unwrap().unwrap();
        assert_eq!((p.mode, p.clean), (1, true));
        assert!(RegionMap::from_words(p.size, p.granularity, p.bitmap).test(0));
        for m in [2, 3, 4] {
            state::save(&path, &persisted(m)).unwrap();
            let before = std::fs::read(&path).unwrap();
            assert!(mark(&path, &[(0, 4096)]).is_err(), "mode {m}");
            assert_eq!(std::fs::read(&path).unwrap(), before, "mode {m} changed");
        }
        assert!(check(&d.path().join("none.mirror-state")).is_err());
    }

    #[test]
    fn the_peer_yields_from_in_sync_to_fenced_but_never_as_survivor() {
        let d = tempfile::tempdir().unwrap();
        let path = state_path(d.path(), "v");
        state::save(&path, &persisted(0)).unwrap();
        assert_eq!(yield_to_peer(&path), Ok(0));
        assert_eq!(state::load(&path).unwrap().unwrap().mode, 2);
        assert_eq!(yield_to_peer(&path), Ok(2));
        state::save(&path, &persisted(1)).unwrap();
        assert!(yield_to_peer(&path).is_err());
        assert_eq!(state::load(&path).unwrap().unwrap().mode, 1);
    }
}
