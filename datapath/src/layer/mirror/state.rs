//! A mirrored volume's persisted replica state: which mode this site was in (in sync,
//! survivor, fenced, resyncing), the witness epoch it holds, and its region bitmaps.
//!
//! Format (little-endian), one small file per volume, `<state_dir>/<volume>.mirror-state`:
//! `"TBMS"` | version u8 = 8 | mode u8 (0 in sync, 1 survivor, 2 fenced, 3 resyncing, 4 new
//! replica never in sync) |
//! clean u8 (1: written at a clean stop, the bitmaps are exact) | flags u8 (bit 0: this site
//! was the volume's leader (it may hold an activity log); bit 1: this site leads at `term`;
//! bit 2: the host restarted after this site stopped uncleanly while in sync or fenced, so its device
//! may have dropped writes it had not flushed, and it is not reconciled yet; bit 3 (mode 2
//! only): fenced for want of the witness's answer to a request for the grant, its replica
//! holding every acknowledged write (the witness may have granted that request: a restart
//! adopts such a grant as before it, [`Persisted::fenced_unanswered`], unless its host
//! restarted since an unclean stop); bit 4 (with bit 3
//! only): that request's grant is a takeover (an operator's, or a request asked again after
//! the holder's grant was given back); bit 5 (mode 2 only, never with bit 3): fenced because
//! the witness denied this site while its peer held the group, its replica holding every
//! acknowledged write (a restart asks the witness once more when that grant is given back,
//! [`Persisted::fenced_denied`], unless its host restarted since an unclean stop); other bits
//! 0) |
//! epoch u64 (a survivor: its grant's; fenced with bit 3 or bit 5: one more than the epoch at which this
//! replica was last complete, the site's known epoch when its session ended in sync, at which
//! a restart asks the witness again; 0: not known, or with bit 4 an operator's takeover, whose
//! grant is adopted whatever its epoch; else 0) | volume size u64 | granularity u64 | dirty words u32 | words u64 ... |
//! written words u32 | words u64 ... | suspect words u32 | words u64 ... | replica identity
//! u64 | leadership term u64 | boot id u128 | CRC32C u32 of everything before it. The dirty bitmap holds the regions written while the peer was away
//! (a survivor's, to send); the written bitmap every region ever written (a new, empty
//! replica is sent only those); the suspect bitmap the regions of updates this site applied
//! that the peer never confirmed (recorded when it fenced or stopped, sent as RESYNC_ALSO
//! when it is resynced, docs/mirror-protocol.md). Each bitmap may be empty (no words).
//!
//! The leadership term (docs/mirror-protocol.md, "Leadership") and flags bit 1 say which
//! site leads the volume: term 0 is the configuration, each planned switchover adds one.
//! The boot id is the kernel's (`/proc/sys/kernel/random/boot_id`, a UUID read as a 128-bit
//! number) of the process that wrote the file; 0: unknown. A site that did not stop cleanly
//! and finds another boot id at its start knows its host restarted since (a power loss may
//! have dropped its device's volatile cache), not only its process (docs/mirror-protocol.md,
//! "Power loss"). Version 6 (still read) is version 7 with a fence's epoch (bit 3) saved as
//! the epoch itself, so 0 there is either a file written before 1166a25 (no epoch saved) or a
//! fence at epoch 0 (the group's first failover): read as not known (and its lost grant then
//! adopted whatever its epoch); an epoch above 0 is read as known. Version 7 tells them
//! apart: a fence at epoch 0 restored from a version-6 file adopted a grant newer than its
//! replica (engine test
//! `restart_grant::a_site_restarted_fenced_at_epoch_0_never_adopts_a_grant_newer_than_its_replica`).
//! A version-6 build refuses a version-7 file. Version 7 (still read) is version 8 without
//! bit 5 ([`Persisted::fenced_denied`] false); a version-7 build refuses a version-8 file.
//! Version 5 (still read) is version 6 without bits 3 and 4
//! ([`Persisted::fenced_unanswered`] `None`); a version-5 build refuses a version-6 file.
//! Version 4 (still read) is version 5 without the boot id and bit 2
//! ([`Persisted::boot`] 0, [`Persisted::host_restarted`] false). A build older than version 5
//! refuses a version-5 file (the daemon does not start): a downgrade needs the file removed
//! (the replica then starts as new, and is given every region its peer ever wrote).
//!
//! Version 3 (still read) is version 4 without the term and bit 1 ([`Persisted::leads`]
//! `None`: the configuration decides).
//!
//! Version 2 (still read) is version 3 without the replica identity ([`Persisted::identity`]
//! 0: not recorded, not checked). Version 1 (still read) is version 2 without the suspect
//! bitmap and with byte 7 = 0: [`Persisted::suspect`] is then `None` (unknown) and the
//! engine assumes the worst.
//!
//! The replica identity ([`ReplicaData`], [`identity_of`]) says which data the state is
//! about: a state file is only true of the device it was written for. A RAM replica's data
//! never survives its process, so it always restarts as a new replica whatever the file
//! says; a file's identity is its device, inode and birth time (a new or replaced file at the
//! same path differs), a block device's its device number. Not detected: a block device
//! replaced by another at the same device number, and data rolled back in place (a file
//! overwritten from a backup, a snapshot restored onto the same volume): the state file then
//! claims more than the data holds (docs/architecture.md, "Replica state"). A CDP rollback in
//! place (`twinblk cdp rollback`) is the exception: it marks this file itself before it writes
//! (`rollback.rs`).
//!
//! Who writes it: [`save`] runs on the persister thread ([`super::persist`]), never on a
//! reactor; the engine hands it snapshots and learns from it when one is durable. What waits
//! for durability (a survivor's acknowledgements, giving a grant back) and the fail-stop when
//! a save fails are in the engine's `durable.rs`.
//!
//! Invariants: the file is replaced atomically (temporary file, fsync, rename, fsync of the
//! directory), so a crash leaves the old or the new state, never a torn one; a file that fails
//! its checks is an error (the daemon does not start), never silently ignored.

use std::io::Write;
use std::path::Path;

/// What is persisted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Persisted {
    /// 0 in sync, 1 survivor, 2 fenced, 3 resyncing, 4 new (never in sync yet).
    pub mode: u8,
    /// Written at a clean stop: the bitmap is exact.
    pub clean: bool,
    /// The witness epoch held as survivor; fenced for want of an answer
    /// ([`Persisted::fenced_unanswered`]) or denied ([`Persisted::fenced_denied`]), one more than the epoch at which the replica was last
    /// complete, 0 when that is not known (a version-6 file's 0); otherwise 0.
    pub epoch: u64,
    /// Volume size (a file for another size is refused).
    pub size: u64,
    /// Bytes per bitmap bit.
    pub granularity: u64,
    /// Dirty bitmap.
    pub bitmap: Vec<u64>,
    /// Regions ever written.
    pub written: Vec<u64>,
    /// This site was the volume's leader.
    pub led: bool,
    /// Regions of updates applied here and never confirmed by the peer; `None`: a version-1
    /// file, which did not record them.
    pub suspect: Option<Vec<u64>>,
    /// The identity of the replica's data the state is about ([`identity_of`]); 0: not
    /// recorded (a version 1 or 2 file, or unknown).
    pub identity: u64,
    /// The leadership term and whether this site leads at it; `None`: not recorded (a
    /// version 1 to 3 file: the configured leader, term 0).
    pub leads: Option<(u64, bool)>,
    /// The boot id of the host when the file was written; 0: unknown (a version 1 to 4
    /// file, or a host whose boot id could not be read).
    pub boot: u128,
    /// The host restarted after an unclean stop in sync and the site is not reconciled yet
    /// (flags bit 2): its device may have dropped writes it had not flushed.
    pub host_restarted: bool,
    /// Fenced for want of the witness's answer to a request for the grant (flags bit 3, mode 2
    /// only), the replica then holding every acknowledged write: `Some(takeover)`, whether
    /// that request's grant is a takeover (bit 4: an operator's, or asked again after the
    /// holder's grant was given back). The witness may hold the grant for
    /// this site: restarted, the site adopts it from the witness's word as it would have
    /// without the restart (engine `adopt_lost_grant`), unless its device may have dropped
    /// unflushed writes since (an unclean stop, and another or an unknown boot id). `None`: not so fenced, or a file of
    /// version 5 or older.
    pub fenced_unanswered: Option<bool>,
    /// Fenced because the witness denied this site while its peer held the group (flags bit
    /// 5, mode 2 only, never with bit 3), the replica then holding every acknowledged write
    /// (the epoch field: one more than the epoch it was complete at). Restarted with its
    /// device kept, the site asks the witness once more when a word shows that grant given
    /// back, as it would have without the restart (engine `ask_again_if_released`). false: not
    /// so fenced, or a file of version 7 or older.
    pub fenced_denied: bool,
}

/// What becomes of a replica's data when its process restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaData {
    /// RAM: gone with the process; a restarted replica is always a new one.
    Volatile,
    /// A file or block device: kept. `identity` ([`identity_of`]) is compared with the state
    /// file's; a mismatch makes the replica new (0: unknown, not compared).
    Kept {
        /// The data's identity.
        identity: u64,
    },
}

impl Default for ReplicaData {
    fn default() -> Self {
        ReplicaData::Kept { identity: 0 }
    }
}

/// The identity of the data at `path` (never 0): for a regular file its filesystem, inode
/// and birth time (a file created anew at the same path differs, even with a reused inode
/// number, where the filesystem records birth times); for a block device its device number.
pub fn identity_of(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::metadata(path)?;
    let born = m
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    let fields = if m.file_type().is_block_device() {
        [1, m.rdev(), 0, 0]
    } else {
        [2, m.dev(), m.ino(), born]
    };
    // FNV-1a over the fields.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in fields.iter().flat_map(|f| f.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    Ok(h.max(1))
}

/// Where the kernel gives its boot id (a UUID, new at every boot).
pub const DEFAULT_BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// The boot id in the file at `path` (`[mirror] boot_id_file`, normally
/// [`DEFAULT_BOOT_ID`]) as a 128-bit number; 0 when it cannot be read or is not 32 hex digits
/// (with dashes ignored).
pub fn boot_id(path: &Path) -> u128 {
    // Its first line, up to the 37 bytes of a UUID and its newline: nothing after it is read
    // (a FIFO whose writer stays, /dev/zero, a big file named by mistake).
    use std::io::{BufRead, Read};
    let Ok(f) = std::fs::File::open(path) else {
        return 0;
    };
    let mut line = Vec::new();
    if std::io::BufReader::new(f.take(64))
        .read_until(b'\n', &mut line)
        .is_err()
    {
        return 0;
    }
    let Ok(text) = String::from_utf8(line) else {
        return 0;
    };
    let hex: String = text.trim().chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return 0;
    }
    u128::from_str_radix(&hex, 16).unwrap_or(0)
}

const MAGIC: &[u8; 4] = b"TBMS";
/// The version written.
const VERSION: u8 = 8;

/// Write `p` to `path` atomically.
pub fn save(path: &Path, p: &Persisted) -> std::io::Result<()> {
    let suspect = p.suspect.as_deref().unwrap_or(&[]);
    let mut b = Vec::with_capacity(48 + (p.bitmap.len() + p.written.len() + suspect.len()) * 8);
    b.extend_from_slice(MAGIC);
    let (term, leads) = p.leads.unwrap_or((0, false));
    // (Only a fenced state says it is fenced for want of an answer.)
    let unanswered = p.fenced_unanswered.filter(|_| p.mode == 2);
    let denied = p.fenced_denied && p.mode == 2 && unanswered.is_none();
    let flags = p.led as u8
        | (u8::from(leads) << 1)
        | (u8::from(p.host_restarted) << 2)
        | (u8::from(unanswered.is_some()) << 3)
        | (u8::from(unanswered == Some(true)) << 4)
        | (u8::from(denied) << 5);
    b.extend_from_slice(&[VERSION, p.mode, p.clean as u8, flags]);
    b.extend_from_slice(&p.epoch.to_le_bytes());
    b.extend_from_slice(&p.size.to_le_bytes());
    b.extend_from_slice(&p.granularity.to_le_bytes());
    b.extend_from_slice(&(p.bitmap.len() as u32).to_le_bytes());
    for w in &p.bitmap {
        b.extend_from_slice(&w.to_le_bytes());
    }
    b.extend_from_slice(&(p.written.len() as u32).to_le_bytes());
    for w in &p.written {
        b.extend_from_slice(&w.to_le_bytes());
    }
    b.extend_from_slice(&(suspect.len() as u32).to_le_bytes());
    for w in suspect {
        b.extend_from_slice(&w.to_le_bytes());
    }
    b.extend_from_slice(&p.identity.to_le_bytes());
    b.extend_from_slice(&term.to_le_bytes());
    b.extend_from_slice(&p.boot.to_le_bytes());
    let crc = crate::checksum::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&b)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Remove the state at `path` durably (the directory synced), so that a start reads no state
/// (a new replica): a fail-stopped site whose file would claim more than it may (durable.rs).
/// A file already gone is removed.
pub fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Read the state at `path`; `Ok(None)` when there is no file yet.
pub fn load(path: &Path) -> Result<Option<Persisted>, String> {
    let b = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    decode(&b)
        .map(Some)
        .map_err(|why| format!("{} is not a valid mirror state file: {why}", path.display()))
}

/// Decode a state file's bytes (any version still read); the error says what is wrong.
pub fn decode(b: &[u8]) -> Result<Persisted, &'static str> {
    let bad = Err;
    if b.len() < 40 || &b[..4] != MAGIC {
        return bad("bad magic or too short");
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if crate::checksum::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return bad("checksum mismatch");
    }
    let version = body[4];
    let flags_ok = match version {
        1 => body[7] == 0,
        2 | 3 => body[7] & !1 == 0,
        4 => body[7] & !3 == 0,
        5 => body[7] & !7 == 0,
        // Bit 4 only with bit 3, and both only for a fenced state.
        6 | 7 => body[7] & !31 == 0 && (body[7] & 0x18 == 0 || (body[7] & 8 != 0 && body[5] == 2)),
        // Bit 5 only for a fenced state, never with bit 3.
        8 => {
            body[7] & !63 == 0
                && (body[7] & 0x18 == 0 || (body[7] & 8 != 0 && body[5] == 2))
                && (body[7] & 0x20 == 0 || (body[7] & 8 == 0 && body[5] == 2))
        }
        _ => false,
    };
    if !flags_ok || body[5] > 4 || body[6] > 1 {
        return bad("unknown version or field value");
    }
    let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
    // A bitmap at `at`: its word count, then the words; returns them and where the next
    // field starts.
    let bitmap = |at: usize| -> Option<(Vec<u64>, usize)> {
        let n = u32::from_le_bytes(body.get(at..at.checked_add(4)?)?.try_into().ok()?) as usize;
        let end = (at + 4).checked_add(n.checked_mul(8)?)?;
        (end <= body.len()).then(|| ((0..n).map(|i| u64_at(at + 4 + i * 8)).collect(), end))
    };
    let Some((dirty, at)) = bitmap(32) else {
        return bad("bitmap length");
    };
    let Some((written, at)) = bitmap(at) else {
        return bad("bitmap length");
    };
    let (suspect, at) = if version >= 2 {
        let Some((s, at)) = bitmap(at) else {
            return bad("bitmap length");
        };
        (Some(s), at)
    } else {
        (None, at)
    };
    let (identity, at) = if version >= 3 {
        if body.len() < at + 8 {
            return bad("bitmap length");
        }
        (u64_at(at), at + 8)
    } else {
        (0, at)
    };
    let (leads, at) = if version >= 4 {
        if body.len() < at + 8 {
            return bad("bitmap length");
        }
        (Some((u64_at(at), body[7] & 2 != 0)), at + 8)
    } else {
        (None, at)
    };
    let (boot, at) = if version >= 5 {
        let Some(b) = body.get(at..at + 16) else {
            return bad("bitmap length");
        };
        (
            u128::from_le_bytes(b.try_into().expect("16 bytes")),
            at + 16,
        )
    } else {
        (0, at)
    };
    if at != body.len() {
        return bad("bitmap length");
    }
    let epoch = match u64_at(8) {
        // A version-6 fence's epoch, saved as is: 0 not known, else one more (version 7).
        e if version == 6 && body[7] & 8 != 0 && e != 0 => e.saturating_add(1),
        e => e,
    };
    Ok(Persisted {
        mode: body[5],
        clean: body[6] == 1,
        epoch,
        size: u64_at(16),
        granularity: u64_at(24),
        bitmap: dirty,
        written,
        led: body[7] & 1 != 0,
        suspect,
        identity,
        leads,
        boot,
        host_restarted: body[7] & 4 != 0,
        fenced_unanswered: (body[7] & 8 != 0).then_some(body[7] & 16 != 0),
        fenced_denied: body[7] & 32 != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The boot id file (`[mirror] boot_id_file`) is read up to what a boot id can be, never
    /// to its end: a FIFO whose writer stays, /dev/zero, a big file named by mistake.
    #[test]
    fn the_boot_id_file_is_read_no_further_than_a_boot_id() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("boot_id");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let f2 = fifo.clone();
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let mut w = std::fs::OpenOptions::new().write(true).open(&f2).unwrap();
            w.write_all(b"0f0e0d0c-0b0a-0908-0706-050403020100\n")
                .unwrap();
            // (A reader done with the line may have closed its end already: the write then
            // fails with EPIPE, which is what this test wants of the reader.)
            let _ = w.write_all(&[b'x'; 4096]);
            std::thread::sleep(std::time::Duration::from_secs(3));
        });
        let t = std::time::Instant::now();
        assert_eq!(boot_id(&fifo), 0x0f0e0d0c_0b0a_0908_0706_050403020100);
        assert!(
            t.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            t.elapsed()
        );
        writer.join().unwrap();
    }

    /// A leader's state in sync, written at a clean stop (the older-version tests' base).
    fn in_sync() -> Persisted {
        Persisted {
            mode: 0,
            clean: true,
            epoch: 0,
            size: 1 << 20,
            granularity: 65536,
            bitmap: vec![],
            written: vec![1],
            led: true,
            suspect: Some(vec![]),
            identity: 9,
            leads: Some((0, false)),
            boot: 0,
            host_restarted: false,
            fenced_unanswered: None,
            fenced_denied: false,
        }
    }

    /// Rewrite the file at `path` as version `v` wrote it: the last `cut` bytes before the
    /// checksum (fields `v` did not have) dropped, the checksum made again.
    fn as_version(path: &Path, v: u8, cut: usize) -> Vec<u8> {
        let mut b = std::fs::read(path).unwrap();
        b.truncate(b.len() - 4 - cut);
        b[4] = v;
        let crc = crate::checksum::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        std::fs::write(path, &b).unwrap();
        b
    }

    #[test]
    fn round_trip_and_every_corruption_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.mirror-state");
        assert_eq!(load(&path), Ok(None));
        let p = Persisted {
            mode: 1,
            clean: true,
            epoch: 7,
            size: 1 << 20,
            granularity: 65536,
            bitmap: vec![0b1011],
            written: vec![0b1111, 1],
            led: true,
            suspect: Some(vec![0, 0b100]),
            identity: 0x1234_5678_9abc_def0,
            leads: Some((3, true)),
            boot: 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
            host_restarted: true,
            fenced_unanswered: None,
            fenced_denied: false,
        };
        save(&path, &p).unwrap();
        assert_eq!(load(&path), Ok(Some(p)));
        let good = std::fs::read(&path).unwrap();
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0x10;
            std::fs::write(&path, &b).unwrap();
            assert!(load(&path).is_err(), "corruption at byte {i} accepted");
        }
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(load(&path).is_err());
    }

    /// A fence for want of the witness's answer (flags bits 3 and 4) is kept only for a fenced
    /// state; bit 4 without bit 3, or either bit in another mode, is refused; a version-5 file
    /// (without them) still loads.
    #[test]
    fn a_fence_for_want_of_an_answer_round_trips_only_for_a_fenced_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.mirror-state");
        for takeover in [false, true] {
            let p = Persisted {
                mode: 2,
                fenced_unanswered: Some(takeover),
                ..in_sync()
            };
            save(&path, &p).unwrap();
            assert_eq!(load(&path), Ok(Some(p)));
        }
        // (Not written for another mode.)
        let p = Persisted {
            fenced_unanswered: Some(true),
            ..in_sync()
        };
        save(&path, &p).unwrap();
        assert_eq!(load(&path).unwrap().unwrap().fenced_unanswered, None);
        let flags = |mode: u8, f: u8| {
            let mut b = std::fs::read(&path).unwrap();
            b.truncate(b.len() - 4);
            b[5] = mode;
            b[7] = f;
            let crc = crate::checksum::crc32c(&b);
            b.extend_from_slice(&crc.to_le_bytes());
            decode(&b)
        };
        assert!(flags(2, 0x08 | 0x10).is_ok());
        assert!(flags(2, 0x10).is_err(), "bit 4 without bit 3");
        assert!(flags(0, 0x08).is_err(), "bit 3 in sync");
        assert!(flags(3, 0x08).is_err(), "bit 3 resyncing");
        assert!(flags(2, 0x40).is_err(), "an unknown bit");
        let p = Persisted {
            mode: 2,
            ..in_sync()
        };
        save(&path, &p).unwrap();
        as_version(&path, 5, 0);
        assert_eq!(load(&path), Ok(Some(p)));
    }

    /// A fence's epoch (bit 3) is saved one more than the epoch its replica was complete at,
    /// 0 for not known (version 7). A version-6 file saved the epoch itself: 0 there is read
    /// as not known, another value as known (one more); the fence at epoch 0 that version 6
    /// could not tell from an earlier file's is saved as 1 now.
    #[test]
    fn a_fences_epoch_is_saved_one_more_and_a_version_6_zero_is_not_known() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.mirror-state");
        for (saved, v6_reads) in [(0, 0), (1, 2), (5, 6), (u64::MAX, u64::MAX)] {
            let p = Persisted {
                mode: 2,
                epoch: saved,
                fenced_unanswered: Some(false),
                ..in_sync()
            };
            save(&path, &p).unwrap();
            assert_eq!(std::fs::read(&path).unwrap()[4], 8);
            assert_eq!(load(&path), Ok(Some(p.clone())));
            as_version(&path, 6, 0);
            assert_eq!(
                load(&path),
                Ok(Some(Persisted {
                    epoch: v6_reads,
                    ..p
                }))
            );
        }
        // Without bit 3 a version-6 epoch is read as is (a survivor's grant).
        let p = Persisted {
            mode: 1,
            epoch: 4,
            ..in_sync()
        };
        save(&path, &p).unwrap();
        as_version(&path, 6, 0);
        assert_eq!(load(&path), Ok(Some(p)));
    }

    /// A fence denied while the peer held the group (flags bit 5, version 8) round-trips for a
    /// fenced state with its epoch; it is refused in another mode, beside bit 3, and in a
    /// version-7 file (which never wrote it); a version-7 file without it still loads.
    #[test]
    fn a_denied_fence_round_trips_only_for_a_fenced_state_and_version_8() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.mirror-state");
        let p = Persisted {
            mode: 2,
            epoch: 4,
            fenced_denied: true,
            ..in_sync()
        };
        save(&path, &p).unwrap();
        assert_eq!(std::fs::read(&path).unwrap()[7] & 0x20, 0x20);
        assert_eq!(load(&path), Ok(Some(p.clone())));
        // (Not written for another mode, nor beside a fence for want of an answer.)
        for q in [
            Persisted {
                mode: 0,
                ..p.clone()
            },
            Persisted {
                fenced_unanswered: Some(false),
                ..p.clone()
            },
        ] {
            save(&path, &q).unwrap();
            assert!(!load(&path).unwrap().unwrap().fenced_denied);
        }
        let with = |v: u8, mode: u8, f: u8| {
            save(&path, &p).unwrap();
            let mut b = std::fs::read(&path).unwrap();
            b.truncate(b.len() - 4);
            b[4] = v;
            b[5] = mode;
            b[7] = f;
            let crc = crate::checksum::crc32c(&b);
            b.extend_from_slice(&crc.to_le_bytes());
            decode(&b)
        };
        assert!(with(8, 2, 0x20).is_ok());
        assert!(with(8, 0, 0x20).is_err(), "bit 5 in sync");
        assert!(with(8, 3, 0x20).is_err(), "bit 5 resyncing");
        assert!(with(8, 2, 0x28).is_err(), "bit 5 with bit 3");
        assert!(with(7, 2, 0x20).is_err(), "bit 5 in a version-7 file");
        let q = Persisted {
            fenced_denied: false,
            ..p
        };
        save(&path, &q).unwrap();
        as_version(&path, 7, 0);
        assert_eq!(load(&path), Ok(Some(q)));
    }

    #[test]
    fn a_version_1_file_still_loads_without_suspect_regions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.mirror-state");
        // Built by hand as version 1 wrote it: no flags, no suspect bitmap.
        let mut b = b"TBMS".to_vec();
        b.extend_from_slice(&[1, 2, 0, 0]);
        for v in [3u64, 1 << 20, 65536] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&5u64.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&7u64.to_le_bytes());
        let crc = crate::checksum::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, &b).unwrap();
        let p = load(&path).unwrap().unwrap();
        assert_eq!(
            p,
            Persisted {
                mode: 2,
                clean: false,
                epoch: 3,
                size: 1 << 20,
                granularity: 65536,
                bitmap: vec![5],
                written: vec![7],
                led: false,
                suspect: None,
                identity: 0,
                leads: None,
                boot: 0,
                host_restarted: false,
                fenced_unanswered: None,
                fenced_denied: false,
            }
        );
        // Version 1 had no flags: a set bit 0 there is refused.
        b[7] = 1;
        let n = b.len() - 4;
        let crc = crate::checksum::crc32c(&b[..n]);
        b[n..].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, &b).unwrap();
        assert!(load(&path).is_err());
    }

    #[test]
    fn a_version_2_file_loads_without_a_replica_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.mirror-state");
        let p = Persisted {
            led: false,
            leads: None,
            ..in_sync()
        };
        save(&path, &p).unwrap();
        // Version 2 as it was written: no identity (and no term) before the checksum.
        as_version(&path, 2, 32);
        assert_eq!(load(&path), Ok(Some(Persisted { identity: 0, ..p })));
    }

    #[test]
    fn a_version_3_file_loads_without_a_leadership_term() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.mirror-state");
        let p = in_sync();
        save(&path, &p).unwrap();
        as_version(&path, 3, 24);
        assert_eq!(load(&path), Ok(Some(Persisted { leads: None, ..p })));
    }

    #[test]
    fn a_version_4_file_loads_without_a_boot_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.mirror-state");
        let p = Persisted {
            clean: false,
            suspect: Some(vec![2]),
            leads: Some((2, true)),
            boot: 77,
            ..in_sync()
        };
        save(&path, &p).unwrap();
        let mut b = as_version(&path, 4, 16);
        assert_eq!(
            load(&path),
            Ok(Some(Persisted {
                boot: 0,
                ..p.clone()
            }))
        );
        // Version 4 had no bit 2: set, it is refused.
        b[7] |= 4;
        let n = b.len() - 4;
        let crc = crate::checksum::crc32c(&b[..n]);
        b[n..].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, &b).unwrap();
        assert!(load(&path).is_err());
    }

    #[test]
    fn a_boot_id_is_read_as_its_128_bits_and_anything_else_is_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("boot_id");
        std::fs::write(&path, "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0\n").unwrap();
        assert_eq!(boot_id(&path), 0x0f1e_2d3c_4b5a_6978_8796_a5b4_c3d2_e1f0);
        for bad in [
            "",
            "xyz",
            "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1",
            "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0ff",
        ] {
            std::fs::write(&path, bad).unwrap();
            assert_eq!(boot_id(&path), 0, "{bad:?}");
        }
        assert_eq!(boot_id(&dir.path().join("missing")), 0);
        // This host's, when it has one: never 0.
        let host = Path::new(DEFAULT_BOOT_ID);
        if host.exists() {
            assert_ne!(boot_id(host), 0);
        }
    }

    #[test]
    fn a_file_created_anew_at_the_same_path_has_another_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.img");
        std::fs::write(&path, [1u8; 4096]).unwrap();
        let first = identity_of(&path).unwrap();
        assert_ne!(first, 0);
        // Rewritten in place: the same data object.
        std::fs::write(&path, [2u8; 4096]).unwrap();
        assert_eq!(identity_of(&path).unwrap(), first);
        // Replaced by a new file (even one that reuses the inode number).
        std::fs::remove_file(&path).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&path, [1u8; 4096]).unwrap();
        assert_ne!(identity_of(&path).unwrap(), first);
    }
}
