//! The journal writer's tests: appends, syncs, mappings, the segment helper.
use super::*;

/// Complete every block-device operation the ring has: the journal's appends.
fn complete_all(io: &mut IoCx, j: &mut Journal) {
    io.ring.submit_and_wait(1).expect("submit");
    let cqes: Vec<_> = io
        .ring
        .completion()
        .map(|c| (c.user_data(), c.result()))
        .collect();
    for (ud, res) in cqes {
        let key = crate::uring::UserData(ud).index() as usize;
        if let Some(f) = io.finish_bdev(key, res) {
            io.release(key);
            j.finished(io, f.tag.slot & (SYNC_ID | ID_MASK), f.result);
        }
    }
}

/// A writer with `sync = "flush"` on a disk journal in a new directory under /var/tmp,
/// its segments not mapped (None when /var/tmp is in memory here).
fn flush_writer(io: &mut IoCx) -> Option<(tempfile::TempDir, Journal, Arc<CdpStats>)> {
    let w = disk_writer(io, 4 << 20, false)?;
    Some((w.d, w.j, w.stats))
}

/// A clean stop syncs a lone time mark rewritten in place after the last sync (its
/// sequence number was synced, its newer time was not).
#[test]
fn a_clean_stop_syncs_a_mark_rewritten_after_the_last_sync() {
    let mut io = IoCx::new(64, 16, 128 * 1024, 8).expect("ring");
    let Some((_d, mut j, _)) = flush_writer(&mut io) else {
        return;
    };
    j.mark(&mut io);
    j.issue(&mut io, &|s| s);
    assert!(j.sync_now().unwrap(), "the mark's record");
    assert!(!j.sync_now().unwrap(), "nothing new");
    let seq = j.durable();
    j.mark(&mut io);
    j.issue(&mut io, &|s| s);
    assert_eq!(j.durable(), seq, "rewritten in place, same sequence number");
    assert!(j.sync_now().unwrap(), "the rewritten mark");
    assert!(!j.sync_now().unwrap());
}

/// With `sync = "flush"` on a disk a large batch is an O_DIRECT append and a small one goes
/// through the page cache, but never while an O_DIRECT append is in flight (the kernel
/// could not drop a folio of its range dirtied meanwhile): the small batch waits for the
/// completion, and the watermark keeps log order.
#[test]
fn a_small_batch_waits_while_an_o_direct_append_is_in_flight() {
    let mut io = IoCx::new(64, 16, 128 * 1024, 8).expect("ring");
    let Some((_d, mut j, stats)) = flush_writer(&mut io) else {
        return;
    };
    let cached = || stats.cached_appends.load(Relaxed);
    let big = vec![1u8; DIRECT_MIN];
    let s1 = j.record(&mut io, Op::Write, 0, big.len() as u64, Some(&big));
    assert!(j.issue(&mut io, &|s| s));
    assert_eq!(cached(), 0, "the large batch is an O_DIRECT append");
    let small = vec![2u8; 4096];
    let s2 = j.record(&mut io, Op::Write, 1 << 20, 4096, Some(&small));
    j.issue(&mut io, &|s| s);
    assert_eq!(cached(), 0, "nothing through the page cache meanwhile");
    assert!(j.durable < s1);
    complete_all(&mut io, &mut j);
    assert_eq!(j.durable, s1);
    j.issue(&mut io, &|s| s);
    assert_eq!(cached(), 1, "the small batch, after the completion");
    assert_eq!(j.durable, s2);
    // And the other way: a large batch after small ones starts on a block boundary.
    let s3 = j.record(&mut io, Op::Write, 2 << 20, big.len() as u64, Some(&big));
    assert!(j.issue(&mut io, &|s| s));
    assert!(j.pos.is_multiple_of(format::ALIGN as u64));
    complete_all(&mut io, &mut j);
    assert_eq!(j.durable, s3);
    assert!(!j.stopped());
}

/// On tmpfs the writer appends through the segments' mappings (mapped.rs): the first
/// segment's is made at the start, each spare's by the helper thread; every record written
/// that way reads back from the files, across the segment switches.
#[test]
fn on_tmpfs_appends_go_through_the_segments_mappings_and_read_back_from_the_files() {
    let Ok(d) = tempfile::tempdir_in("/dev/shm") else {
        eprintln!("skipped: no /dev/shm here");
        return;
    };
    if fs_type(d.path()) != Some(TMPFS_MAGIC) {
        eprintln!("skipped: /dev/shm is not a tmpfs here");
        return;
    }
    appends_through_mappings(d.path(), SyncPolicy::default());
}

/// With `sync = "flush"` on a disk the writer appends through the segments' mappings too,
/// large batches included (no O_DIRECT write); each segment is synced (its written part)
/// before the next starts, and every record reads back from the files.
#[test]
fn on_a_disk_with_sync_on_flush_appends_go_through_mappings_and_read_back() {
    let d = tempfile::tempdir_in("/var/tmp").unwrap();
    if in_memory(d.path()) {
        eprintln!("skipped: /var/tmp is in memory here");
        return;
    }
    if !super::super::mapped::populate_write_supported() {
        eprintln!("skipped: no MADV_POPULATE_WRITE (Linux before 5.14): nothing mapped");
        return;
    }
    let sync = SyncPolicy {
        on_flush: true,
        fail: false,
        fail_map_writes: 0,
        unmapped: false,
    };
    appends_through_mappings(d.path(), sync);
}

fn appends_through_mappings(root: &std::path::Path, sync: SyncPolicy) {
    if std::fs::metadata(root).and_then(|m| m.created()).is_err() {
        eprintln!("skipped: no birth times here (tmpfs before Linux 5.18 maps nothing)");
        return;
    }
    let dir = root.join("j");
    const SEG: u64 = 1 << 20;
    let meta = store::open_or_create(&dir, 1 << 20, 4096, None).unwrap();
    let log = super::super::startlog::StartLog::new(&dir, meta, SEG, 1, (0, 0), 1).unwrap();
    let spare = Arc::new(Spare::default());
    spare.map_disk.store(sync.on_flush, Relaxed);
    spare.want.store(2, Ordering::Release);
    let start = log.into_start(Arc::clone(&spare));
    assert_eq!(spare.maps.kept().0, 1, "the start maps the first segment");
    let mut io = IoCx::new(64, 16, 128 * 1024, 8).expect("ring");
    let stats = Arc::new(CdpStats::default());
    let mut j = Journal::new(&mut io, 0, start, Arc::clone(&stats), sync).unwrap();
    let list = Arc::new(std::sync::Mutex::new(vec![SpareOf {
        dir: dir.clone(),
        size: SEG,
        spare: Arc::clone(&spare),
    }]));
    let stop = Arc::new(AtomicBool::new(false));
    let t = spare_thread(list, Arc::clone(&stop)).unwrap();
    let st = |a: &AtomicU64| a.load(Ordering::Acquire);
    let mut written = Vec::new();
    // About four segments of 4 KiB writes, each issued at once (a lone write per batch),
    // but every 25th round a batch of 20 (over 64 KiB: O_DIRECT without a mapping; under
    // half of each segment's bytes, so every spare stays mapped).
    for i in 0..600u64 {
        // The next spare is ready (mapped) before the writer could need it.
        let until = Instant::now() + Duration::from_secs(10);
        while spare.ready.load(Ordering::Acquire) != j.segno() + 1 {
            assert!(
                Instant::now() < until,
                "the helper prepares segment {}",
                j.segno() + 1
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let n = if i % 25 == 24 { 20 } else { 1 };
        let mut last = 0;
        for k in 0..n {
            let off = ((i * 20 + k) % 256) * 4096;
            let data: Vec<u8> = (0..4096u64).map(|b| (b * 31 + i * 7 + k) as u8).collect();
            last = j.record(&mut io, Op::Write, off, 4096, Some(&data));
            written.push((last, off, data));
        }
        let mut tries = 0;
        while j.has_queued() {
            j.issue(&mut io, &|s| s);
            if j.sync_inflight.is_some() {
                // The sync before a switch: on a disk it starts only once the helper has
                // unmapped the full segment (or the bounded wait for it ended).
                let (t, u) = (st(&spare.tickets), st(&spare.unmapped));
                assert!(
                    in_memory(&dir) || u == t || st(&stats.unmap_waits_expired) > 0,
                    "sync started with ticket {t} not unmapped ({u})"
                );
                complete_all(&mut io, &mut j); // the sync before a switch
            } else if j.await_unmap.is_some() {
                // The helper unmaps the full disk segment before its sync.
                std::thread::sleep(Duration::from_micros(200));
            }
            tries += 1;
            assert!(tries < 1000, "the appends of round {i} never went");
        }
        assert!(!j.stopped());
        assert_eq!(j.durable(), last);
    }
    stop.store(true, Ordering::SeqCst);
    t.join().unwrap();
    assert!(st(&stats.switches_prepared) >= 3, "{stats:?}");
    assert_eq!(st(&stats.switches_created), 0, "{stats:?}");
    assert_eq!(
        st(&stats.mapped_appends),
        st(&stats.batches),
        "every append (headers included) through a mapping: {stats:?}"
    );
    if !in_memory(&dir) {
        // Each full disk segment's mapping was unmapped by the helper before its sync (the
        // writer never unmaps), and no mapping of a full one is kept.
        let switches = st(&stats.switches_prepared);
        assert_eq!(st(&spare.tickets), switches, "{stats:?}");
        assert_eq!(st(&spare.unmapped), switches, "{stats:?}");
        assert!(spare.retired.lock().unwrap().is_none());
        assert!(spare.maps.kept().0 <= 2, "{:?}", spare.maps);
    }
    if sync.on_flush {
        assert!(
            st(&stats.syncs) >= 3,
            "a sync before each switch: {stats:?}"
        );
        assert!(j.sync_now().unwrap());
    }
    j.seal().unwrap();
    let h = store::load(&dir, store::Load::ReadOnly).unwrap();
    assert!(h.cut.is_none() && h.damaged.is_empty(), "{:?}", h.cut);
    assert_eq!(h.last_seq, written.last().unwrap().0);
    for (seq, off, data) in written.iter().step_by(37) {
        let got = super::super::pit::read_at(&h, super::super::pit::Point::Seq(*seq), *off, 4096)
            .unwrap();
        assert!(got == *data, "the write of sequence {seq}");
    }
}

/// Which of `len` bytes from `from` of `f` lie in extents still unwritten (FIEMAP; None
/// where the filesystem does not answer it).
fn unwritten_bytes(f: &File, from: u64, len: u64) -> Option<u64> {
    #[repr(C)]
    struct Extent {
        logical: u64,
        physical: u64,
        length: u64,
        reserved64: [u64; 2],
        flags: u32,
        reserved: [u32; 3],
    }
    #[repr(C)]
    struct Fiemap {
        start: u64,
        length: u64,
        flags: u32,
        mapped: u32,
        count: u32,
        reserved: u32,
        extents: [Extent; 64],
    }
    const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
    const UNWRITTEN: u32 = 0x800;
    // SAFETY: all-zero is a valid Fiemap (plain integers).
    let mut m: Fiemap = unsafe { std::mem::zeroed() };
    m.start = from;
    m.length = len;
    m.count = 64;
    // SAFETY: FS_IOC_FIEMAP fills the struct it is given (room for `count` extents).
    if unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FIEMAP, &mut m) } != 0 {
        return None;
    }
    let end = from + len;
    Some(
        m.extents[..m.mapped as usize]
            .iter()
            .filter(|e| e.flags & UNWRITTEN != 0)
            .map(|e| {
                (e.logical + e.length)
                    .min(end)
                    .saturating_sub(e.logical.max(from))
            })
            .sum(),
    )
}

/// A writer with `sync = "flush"` on a disk journal and what goes with it.
struct DiskWriter {
    d: tempfile::TempDir,
    dir: PathBuf,
    j: Journal,
    stats: Arc<CdpStats>,
    spare: Arc<Spare>,
}

/// A writer with `sync = "flush"` on a disk journal in a new directory under /var/tmp, its
/// segments of `seg_size` bytes, mapped where `mapped`; None (skipped) where /var/tmp is in
/// memory, or, for `mapped`, gives no birth times or the kernel has no
/// `MADV_POPULATE_WRITE`.
fn disk_writer(io: &mut IoCx, seg_size: u64, mapped: bool) -> Option<DiskWriter> {
    let d = tempfile::tempdir_in("/var/tmp").unwrap();
    if in_memory(d.path())
        || mapped
            && (std::fs::metadata(d.path())
                .and_then(|m| m.created())
                .is_err()
                || !super::super::mapped::populate_write_supported())
    {
        eprintln!(
            "skipped: /var/tmp is in memory or has no birth times here, or no MADV_POPULATE_WRITE"
        );
        return None;
    }
    let dir = d.path().join("j");
    let meta = store::open_or_create(&dir, 64 << 20, 4096, None).unwrap();
    let log = super::super::startlog::StartLog::new(&dir, meta, seg_size, 1, (0, 0), 1).unwrap();
    let spare = Arc::new(Spare::default());
    spare.map_disk.store(mapped, Relaxed);
    let start = log.into_start(Arc::clone(&spare));
    let stats = Arc::new(CdpStats::default());
    let sync = SyncPolicy {
        on_flush: true,
        fail: false,
        fail_map_writes: 0,
        unmapped: !mapped,
    };
    let j = Journal::new(io, 0, start, Arc::clone(&stats), sync).unwrap();
    Some(DiskWriter {
        d,
        dir,
        j,
        stats,
        spare,
    })
}

/// A flush's sync covers the segment's written part, every record in it, and not the
/// pages the mapping made present ahead past it: on a disk, the records' range is written
/// (its extents no longer unwritten) and the rest of the fallocated segment still is. Only on
/// ext4 and XFS (btrfs syncs a whole file whatever the range); tried twice, as the kernel's
/// own writeback may write the pages ahead between the populate and the check on a busy host
/// (a wrong range fails both times).
#[test]
fn a_sync_writes_the_segments_written_part_and_not_the_pages_mapped_ahead() {
    let mut last = Ok(());
    for _ in 0..2 {
        match sync_writes_only_the_written_part() {
            None => return,
            Some(r) => last = r,
        }
        if last.is_ok() {
            return;
        }
    }
    panic!("{}", last.unwrap_err());
}

/// One try of the test above: None when skipped.
fn sync_writes_only_the_written_part() -> Option<Result<(), String>> {
    const EXT4: i64 = 0xEF53;
    const XFS: i64 = 0x5846_5342;
    if !matches!(fs_type(std::path::Path::new("/var/tmp")), Some(EXT4 | XFS)) {
        eprintln!("skipped: /var/tmp is not ext4 or XFS here");
        return None;
    }
    let mut io = IoCx::new(64, 16, 128 * 1024, 8).expect("ring");
    let DiskWriter {
        d: _d,
        mut j,
        stats,
        ..
    } = disk_writer(&mut io, 4 << 20, true)?;
    let Some(before) = unwritten_bytes(&j.file, 1 << 20, 3 << 20) else {
        eprintln!("skipped: no FIEMAP here");
        return None;
    };
    if before != 3 << 20 {
        eprintln!("skipped: the segment's blocks are not unwritten extents here");
        return None;
    }
    let mut last = 0;
    for i in 0..64u64 {
        last = j.record(
            &mut io,
            Op::Write,
            i * 4096,
            4096,
            Some(&vec![i as u8; 4096]),
        );
    }
    j.issue(&mut io, &|s| s);
    assert_eq!(j.durable(), last);
    assert_eq!(
        stats.mapped_appends.load(Relaxed),
        stats.batches.load(Relaxed)
    );
    let pos = j.pos;
    assert!(pos < 1 << 20, "{pos}");
    j.want_sync(last);
    assert!(j.issue(&mut io, &|s| s) || j.sync_inflight.is_some());
    complete_all(&mut io, &mut j);
    assert_eq!(j.synced(), last, "the sync covered every record");
    assert_eq!(
        unwritten_bytes(&j.file, 0, pos),
        Some(0),
        "every byte of the records is written by the sync"
    );
    let ahead = unwritten_bytes(&j.file, 1 << 20, 3 << 20);
    Some(if ahead == Some(3 << 20) {
        Ok(())
    } else {
        Err(format!(
            "the pages mapped ahead past the records were written: {ahead:?} of {} bytes still unwritten",
            3 << 20
        ))
    })
}

/// A page of the active segment's mapping that cannot be written (here: the file shrunk
/// under it, a failing disk's stand-in) stops the journal, as a failed `pwrite` would,
/// and the process goes on; the history ends at the last written record.
#[test]
fn a_faulting_page_of_a_mapped_segment_stops_the_journal_not_the_process() {
    let mut io = IoCx::new(64, 16, 128 * 1024, 8).expect("ring");
    let Some(DiskWriter {
        d: _d,
        dir,
        mut j,
        stats,
        spare,
    }) = disk_writer(&mut io, 1 << 20, true)
    else {
        return;
    };
    let data = vec![0x42u8; 4096];
    let first = j.record(&mut io, Op::Write, 0, 4096, Some(&data));
    j.issue(&mut io, &|s| s);
    assert_eq!(j.durable(), first);
    assert_eq!(stats.mapped_appends.load(Relaxed), 1, "{stats:?}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(store::seg_path(&dir, j.segno()))
        .unwrap()
        .set_len(16 * 1024)
        .unwrap();
    for i in 1..8u64 {
        j.record(&mut io, Op::Write, i * 4096, 4096, Some(&data));
        j.issue(&mut io, &|s| s);
        if j.stopped() {
            break;
        }
    }
    assert!(
        j.stopped(),
        "an append past the shrunk file's end stops the journal"
    );
    // (Stopped with `sync = "flush"`, the history is whole up to the last sync: none here.)
    assert!(j.durable() < first + 7, "{}", j.durable());
    // The file at its mapped length again, every byte allocated: still not handed the
    // broken mapping.
    // SAFETY: fallocate on the segment's open descriptor.
    let r = unsafe { libc::fallocate(j.file.as_raw_fd(), 0, 0, 1 << 20) };
    assert_eq!(r, 0);
    assert!(
        spare.maps.cached(&j.file).is_none(),
        "the broken mapping is not handed out"
    );
}

/// One failure to prepare a spare (here a directory squatting on its temporary name) is
/// not for the life of the process: once the cause is gone, the helper prepares it again.
#[test]
fn the_segment_helper_tries_again_after_a_failure() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_path_buf();
    let spare = Arc::new(Spare::default());
    let squatter = store::staged_path(&dir);
    std::fs::create_dir(&squatter).unwrap();
    std::fs::write(squatter.join("x"), b"x").unwrap();
    spare.want.store(2, Ordering::Release);
    let list = Arc::new(std::sync::Mutex::new(vec![SpareOf {
        dir: dir.clone(),
        size: 1 << 20,
        spare: Arc::clone(&spare),
    }]));
    let stop = Arc::new(AtomicBool::new(false));
    let t = spare_thread(list, Arc::clone(&stop)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        spare.ready.load(Ordering::Acquire),
        0,
        "it cannot while the name is taken"
    );
    std::fs::remove_dir_all(&squatter).unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while spare.ready.load(Ordering::Acquire) != 2 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::SeqCst);
    t.join().unwrap();
    assert_eq!(
        spare.ready.load(Ordering::Acquire),
        2,
        "prepared once it could"
    );
    assert!(store::seg_path(&dir, 2).exists());
}

/// A full disk segment's mapping goes to the helper to unmap before its last sync; a helper
/// that never takes it holds the switch for at most UNMAP_WAIT, and without a helper the
/// writer does not wait at all (its mapping stays, as before).
#[test]
fn a_full_disk_segment_waits_for_its_unmapping_at_most_a_bounded_time() {
    let mut io = IoCx::new(64, 16, 128 * 1024, 8).expect("ring");
    for helper in [false, true] {
        let Some(mut w) = disk_writer(&mut io, 4 << 20, true) else {
            return;
        };
        if helper {
            // A "helper" that never looks at the slot.
            let idle = std::thread::spawn(|| std::thread::park_timeout(Duration::from_secs(5)));
            w.spare.helper.set(idle.thread().clone()).unwrap();
        }
        let data = vec![0x5Au8; 60 << 10];
        let mut last = 0;
        let mut waited: Option<Instant> = None;
        let mut held = None;
        // 80 records of 60 KiB: past the first 4 MiB segment.
        for i in 0..80u64 {
            last =
                w.j.record(&mut io, Op::Write, i * (64 << 10), 60 << 10, Some(&data));
            let mut tries = 0;
            while w.j.has_queued() {
                // (Read before the call that may start the wait: the journal's own clock for
                // it starts after this, so the bound below holds however late this thread
                // runs.)
                let before = Instant::now();
                w.j.issue(&mut io, &|s| s);
                if w.j.sync_inflight.is_some() {
                    if let Some(since) = waited.filter(|_| held.is_none()) {
                        held = Some(since.elapsed());
                    }
                    complete_all(&mut io, &mut w.j);
                } else if w.j.await_unmap.is_some() {
                    waited.get_or_insert(before);
                    std::thread::sleep(Duration::from_millis(1));
                }
                tries += 1;
                assert!(tries < 1000, "record {i} never went");
            }
        }
        assert_eq!(w.j.durable(), last);
        assert!(w.j.segno() >= 2, "a switch happened");
        assert_eq!(waited.is_some(), helper, "waited for an unmapping");
        if helper {
            // From the first wait to the sync's start: the whole bound, and no more.
            let held = held.expect("a sync after the wait");
            assert!(
                held >= UNMAP_WAIT && held < Duration::from_secs(1),
                "held {held:?}"
            );
            assert_eq!(w.stats.unmap_waits_expired.load(Relaxed), 1);
            let kept = w.spare.retired.lock().unwrap().take();
            assert!(kept.is_some(), "the mapping waits in the slot");
        }
        assert_eq!(w.spare.unmapped.load(Relaxed), 0);
        w.j.sync_now().unwrap();
        w.j.seal().unwrap();
        let h = store::load(&w.dir, store::Load::ReadOnly).unwrap();
        assert!(h.cut.is_none() && h.damaged.is_empty(), "{:?}", h.cut);
        assert_eq!(h.last_seq, last);
        drop(w.d);
    }
}

/// A batch larger than a pool buffer (the record of a 128 KiB write) written as a copy into
/// a mapping reuses the previous such batch's allocation: one allocation for twenty writes.
#[test]
fn large_batches_written_as_copies_reuse_one_allocation() {
    let mut io = IoCx::new(64, 16, 128 * 1024, 8).expect("ring");
    let Some(mut w) = disk_writer(&mut io, 64 << 20, true) else {
        return;
    };
    let data = vec![0x3Cu8; 128 << 10];
    let before = io.counters.bounces;
    let mut last = 0;
    for i in 0..20u64 {
        last =
            w.j.record(&mut io, Op::Write, i * (128 << 10), 128 << 10, Some(&data));
        w.j.issue(&mut io, &|s| s);
        assert!(
            !w.j.has_queued() && w.j.durable() == last,
            "written as a copy"
        );
    }
    assert_eq!(io.counters.bounces - before, 1, "one allocation");
    w.j.sync_now().unwrap();
    w.j.seal().unwrap();
    let h = store::load(&w.dir, store::Load::ReadOnly).unwrap();
    assert_eq!(h.last_seq, last);
    let got = super::super::pit::read_at(&h, super::super::pit::Point::Seq(last), 19 << 17, 4096)
        .unwrap();
    assert!(got.iter().all(|&b| b == 0x3C));
}

/// With `sync = "flush"` on a disk, a segment that took most of its bytes in large batches
/// makes the spare after the next one unmapped (its large batches O_DIRECT writes, no copy);
/// small batches in a row have the active unmapped segment mapped part way, and the spares
/// mapped again. Every record reads back either way.
#[test]
fn large_batches_make_the_next_disk_segments_unmapped_and_small_ones_mapped_again() {
    let mut io = IoCx::new(64, 16, 128 * 1024, 8).expect("ring");
    let Some(mut w) = disk_writer(&mut io, 1 << 20, true) else {
        return;
    };
    let list = Arc::new(std::sync::Mutex::new(vec![SpareOf {
        dir: w.dir.clone(),
        size: 1 << 20,
        spare: Arc::clone(&w.spare),
    }]));
    let stop = Arc::new(AtomicBool::new(false));
    let t = spare_thread(list, Arc::clone(&stop)).unwrap();
    let st = |a: &AtomicU64| a.load(Ordering::Acquire);
    let direct = |s: &CdpStats| st(&s.batches) - st(&s.mapped_appends) - st(&s.cached_appends);
    w.spare.want.store(2, Ordering::Release);
    let mut written = Vec::new();
    // One record of `len` bytes, alone in its batch, once the next spare is ready (so which
    // segment is mapped does not depend on the helper's timing).
    let mut write = |io: &mut IoCx, w: &mut DiskWriter, i: u64, len: u64| {
        let until = Instant::now() + Duration::from_secs(10);
        while w.spare.ready.load(Ordering::Acquire) != w.j.segno() + 1 {
            assert!(
                Instant::now() < until,
                "the helper prepares the next segment"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let off = (i % 200) * (64 << 10);
        let data: Vec<u8> = (0..len).map(|b| (b * 13 + i * 7) as u8).collect();
        let seq = w.j.record(io, Op::Write, off, len, Some(&data));
        written.push((seq, off, data));
        let mut tries = 0;
        while w.j.has_queued() || w.j.in_flight() > 0 || w.j.sync_inflight.is_some() {
            w.j.issue(io, &|s| s);
            if w.j.in_flight() > 0 || w.j.sync_inflight.is_some() {
                complete_all(io, &mut w.j);
            } else if w.j.await_unmap.is_some() {
                std::thread::sleep(Duration::from_micros(200));
            }
            tries += 1;
            assert!(tries < 1000, "record {i} never went");
        }
        assert!(!w.j.stopped());
        assert_eq!(w.j.durable(), seq);
    };
    // Five segments of 64 KiB records (65,600-byte batches: large).
    for i in 0..75 {
        write(&mut io, &mut w, i, 64 << 10);
    }
    let seg_large_end = w.j.segno();
    assert!(seg_large_end >= 5, "segment {seg_large_end}");
    assert!(st(&w.stats.switches_unmapped) >= 2, "{:?}", w.stats);
    assert!(
        direct(&w.stats) >= 15,
        "a segment's large batches O_DIRECT: {:?}",
        w.stats
    );
    assert!(w.j.map.is_none(), "the active segment is not mapped");
    // Then six segments of 4 KiB records (lone, small): the writer asks the helper to map
    // the first unmapped segment with room part way, takes the mapping in that segment, and
    // the spares are mapped again two switches later.
    let (mapped0, direct0) = (st(&w.stats.mapped_appends), direct(&w.stats));
    let (mut asked_in, mut mapped_in) = (None, None);
    for i in 0..1500 {
        write(&mut io, &mut w, 1000 + i, 4096);
        if w.j.map_ask == MapAsk::Asked && asked_in.is_none() {
            asked_in = Some(w.j.segno());
            let until = Instant::now() + Duration::from_secs(10);
            while w.spare.active_mapped.load(Ordering::Acquire) != w.j.segno() {
                assert!(Instant::now() < until, "the helper maps the active segment");
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        if mapped_in.is_none() && w.j.map.is_some() {
            mapped_in = Some(w.j.segno());
        }
    }
    let asked_in = asked_in.expect("the writer asked for a mapping part way");
    assert!(asked_in <= seg_large_end + 1, "asked in segment {asked_in}");
    assert_eq!(
        mapped_in,
        Some(asked_in),
        "taken in the segment it was asked for"
    );
    assert!(st(&w.stats.mapped_late) >= 1, "{:?}", w.stats);
    assert!(w.j.segno() >= seg_large_end + 5, "segment {}", w.j.segno());
    assert!(w.j.map.is_some(), "the active segment is mapped again");
    assert!(
        st(&w.stats.mapped_appends) - mapped0 >= 500,
        "small batches copied into mappings again: {:?}",
        w.stats
    );
    assert_eq!(
        direct(&w.stats),
        direct0,
        "no small batch O_DIRECT: {:?}",
        w.stats
    );
    stop.store(true, Ordering::SeqCst);
    t.join().unwrap();
    assert!(w.j.sync_now().unwrap());
    w.j.seal().unwrap();
    reads_back(&w.dir, &written, 7);
}

/// The sealed history in `dir` is whole, ends at the last of `written` (sequence, offset,
/// bytes) and reads every `step`th of them back at its own point.
fn reads_back(dir: &std::path::Path, written: &[(u64, u64, Vec<u8>)], step: usize) {
    let h = store::load(dir, store::Load::ReadOnly).unwrap();
    assert!(h.cut.is_none() && h.damaged.is_empty(), "{:?}", h.cut);
    assert_eq!(h.last_seq, written.last().unwrap().0);
    for (seq, off, data) in written.iter().step_by(step) {
        let got = super::super::pit::read_at(
            &h,
            super::super::pit::Point::Seq(*seq),
            *off,
            data.len() as u64,
        )
        .unwrap();
        assert!(got == *data, "the write of sequence {seq}");
    }
}

/// A request to map the active disk segment part way: a large batch withdraws it while the
/// helper has not taken it (and is then an O_DIRECT write); once the helper has it, large
/// batches are page-cache writes, never O_DIRECT, until the helper is done with it (here: it
/// failed, and O_DIRECT is allowed again). Every record reads back.
#[test]
fn a_request_to_map_part_way_keeps_o_direct_out_while_the_helper_has_it() {
    let mut io = IoCx::new(64, 16, 128 * 1024, 8).expect("ring");
    let Some(mut w) = disk_writer(&mut io, 4 << 20, false) else {
        return;
    };
    if !super::super::mapped::populate_write_supported() {
        eprintln!("skipped: no MADV_POPULATE_WRITE: no request is made");
        return;
    }
    // The first segment is not mapped; mappings are on from now, and a "helper" that never
    // looks at the requests stands in for the segment thread.
    w.spare.map_disk.store(true, Relaxed);
    let idle = std::thread::spawn(|| std::thread::park_timeout(Duration::from_secs(5)));
    w.spare.helper.set(idle.thread().clone()).unwrap();
    let st = |a: &AtomicU64| a.load(Ordering::Acquire);
    let direct = |s: &CdpStats| st(&s.batches) - st(&s.mapped_appends) - st(&s.cached_appends);
    let mut written = Vec::new();
    let mut n = 0u64;
    let mut write = |io: &mut IoCx, w: &mut DiskWriter, len: u64| {
        n += 1;
        let off = (n % 100) * (64 << 10);
        let data: Vec<u8> = (0..len).map(|b| (b * 11 + n * 5) as u8).collect();
        let seq = w.j.record(io, Op::Write, off, len, Some(&data));
        written.push((seq, off, data));
        let mut tries = 0;
        while w.j.has_queued() || w.j.in_flight() > 0 {
            w.j.issue(io, &|s| s);
            if w.j.in_flight() > 0 {
                complete_all(io, &mut w.j);
            }
            tries += 1;
            assert!(tries < 100, "record {n} never went");
        }
        assert_eq!(w.j.durable(), seq);
    };
    // Small batches in a row (an eighth of the 4 MiB segment): asked.
    let small_until_asked =
        |w: &mut DiskWriter,
         io: &mut IoCx,
         write: &mut dyn FnMut(&mut IoCx, &mut DiskWriter, u64)| {
            for _ in 0..200 {
                if w.j.map_ask == MapAsk::Asked {
                    return;
                }
                write(io, w, 4096);
            }
            panic!("no request after 200 small batches: {:?}", w.stats);
        };
    small_until_asked(&mut w, &mut io, &mut write);
    assert_eq!(st(&w.spare.map_active), 1);
    // A large batch before the helper took it: withdrawn, and O_DIRECT.
    let d0 = direct(&w.stats);
    write(&mut io, &mut w, 64 << 10);
    assert_eq!(w.j.map_ask, MapAsk::No);
    assert_eq!(st(&w.spare.map_active), 0, "withdrawn");
    assert_eq!(direct(&w.stats), d0 + 1, "{:?}", w.stats);
    // Asked again, and taken by the helper (it swaps the request out): large batches are
    // page-cache writes.
    small_until_asked(&mut w, &mut io, &mut write);
    assert_eq!(w.spare.map_active.swap(0, Ordering::AcqRel), 1);
    let (d1, c1) = (direct(&w.stats), st(&w.stats.cached_appends));
    for _ in 0..3 {
        write(&mut io, &mut w, 128 << 10);
    }
    assert_eq!(w.j.map_ask, MapAsk::Asked);
    assert_eq!(
        direct(&w.stats),
        d1,
        "no O_DIRECT while the helper has it: {:?}",
        w.stats
    );
    assert_eq!(st(&w.stats.cached_appends), c1 + 3);
    // The helper could not map it: done with it, O_DIRECT again.
    w.spare.active_failed.store(1, Ordering::Release);
    write(&mut io, &mut w, 128 << 10);
    assert_eq!(w.j.map_ask, MapAsk::Done);
    assert!(w.j.map.is_none());
    assert_eq!(direct(&w.stats), d1 + 1, "{:?}", w.stats);
    assert_eq!(w.j.segno(), 1, "all in the first segment");
    w.j.sync_now().unwrap();
    w.j.seal().unwrap();
    reads_back(&w.dir, &written, 3);
    idle.thread().unpark();
}

/// The helper prepares the next segment holding no lock the writer takes: a writer that
/// needs the segment while the helper is still preparing it waits at most SPARE_WAIT, then
/// creates it itself on the reactor, and the helper's file, once ready, becomes the segment
/// after that one (never written over the writer's own). Until session 29 the helper held the
/// switch's lock through its whole preparation, and a helper starved of CPU held the writer,
/// and so the production writes, for as long (10 s in a mirrored benchmark).
#[test]
fn a_writer_waits_for_a_slow_helper_at_most_a_bounded_time_then_creates_the_segment_itself() {
    let mut io = IoCx::new(64, 16, 128 * 1024, 8).expect("ring");
    let Some(w) = disk_writer(&mut io, 1 << 20, false) else {
        return;
    };
    let DiskWriter {
        d: _d,
        dir,
        mut j,
        stats,
        spare,
    } = w;
    let st = |a: &AtomicU64| a.load(Ordering::Acquire);
    // The helper has started preparing segment 2 and not finished (as when it gets no CPU).
    spare.want.store(2, Ordering::Release);
    spare.staging.store(true, Ordering::Release);
    let data = vec![7u8; 4096];
    let mut last = 0;
    let mut off = 0u64;
    let began = Instant::now();
    while j.segno() == 1 {
        if !j.has_queued() {
            last = j.record(&mut io, Op::Write, off % (32 << 20), 4096, Some(&data));
            off += 4096;
        }
        j.issue(&mut io, &|s| s);
        if j.sync_inflight.is_some() {
            complete_all(&mut io, &mut j);
        }
        assert!(
            began.elapsed() < harness_patience(),
            "the writer never left segment 1 ({stats:?})"
        );
    }
    assert!(
        began.elapsed() >= SPARE_WAIT,
        "it waited for the helper first"
    );
    assert_eq!(st(&stats.switches_created), 1, "{stats:?}");
    assert_eq!(st(&stats.switches_prepared), 0, "{stats:?}");
    while j.has_queued() {
        j.issue(&mut io, &|s| s);
        if j.sync_inflight.is_some() {
            complete_all(&mut io, &mut j);
        }
    }
    assert!(j.durable() >= last && !j.stopped(), "{stats:?}");
    let header2 = std::fs::read(store::seg_path(&dir, 2)).unwrap()[..format::SEG_HEADER].to_vec();
    assert!(header2.iter().any(|&b| b != 0), "segment 2 has its header");
    // The helper finishes: its file becomes segment 3, the one the writer wants now.
    spare.staging.store(false, Ordering::Release);
    let v = SpareOf {
        dir: dir.clone(),
        size: 1 << 20,
        spare: Arc::clone(&spare),
    };
    prepare(&v, std::slice::from_ref(&v)).unwrap();
    assert_eq!(st(&spare.ready), 3);
    assert!(!store::staged_path(&dir).exists());
    assert_eq!(
        std::fs::read(store::seg_path(&dir, 2)).unwrap()[..format::SEG_HEADER],
        header2[..],
        "the writer's segment is untouched"
    );
    assert!(
        std::fs::read(store::seg_path(&dir, 3)).unwrap()[..format::SEG_HEADER]
            .iter()
            .all(|&b| b == 0),
        "segment 3 is the helper's spare (header all zeroes)"
    );
    // And the next switch takes it at once.
    while j.segno() == 2 {
        if !j.has_queued() {
            j.record(&mut io, Op::Write, off % (32 << 20), 4096, Some(&data));
            off += 4096;
        }
        j.issue(&mut io, &|s| s);
        if j.sync_inflight.is_some() {
            complete_all(&mut io, &mut j);
        }
    }
    assert_eq!(st(&stats.switches_prepared), 1, "{stats:?}");
    assert_eq!(st(&stats.switches_created), 1, "{stats:?}");
}

/// While the helper prepares a spare (staging it), it holds none of the writer's locks: the
/// writer's switch lock is free for the whole preparation.
#[test]
fn the_helper_holds_no_lock_of_the_writer_while_it_prepares_a_spare() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_path_buf();
    let spare = Arc::new(Spare::default());
    spare.want.store(2, Ordering::Release);
    let v = SpareOf {
        dir: dir.clone(),
        size: 64 << 20,
        spare: Arc::clone(&spare),
    };
    spare.zero.store(true, Relaxed); // a long preparation: 64 MiB written
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (spare, stop) = (Arc::clone(&spare), Arc::clone(&stop));
        std::thread::spawn(move || {
            // Looks at the lock while the helper stages, as a writer's switch would.
            let (mut looks, mut free) = (0u64, 0u64);
            while !stop.load(Ordering::SeqCst) {
                if spare.staging.load(Ordering::Acquire) {
                    looks += 1;
                    if spare.lock.try_lock().is_ok() {
                        free += 1;
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
                std::hint::spin_loop();
            }
            (looks, free)
        })
    };
    prepare(&v, std::slice::from_ref(&v)).unwrap();
    stop.store(true, Ordering::SeqCst);
    let (looks, free) = watcher.join().unwrap();
    assert_eq!(spare.ready.load(Ordering::Acquire), 2);
    assert!(store::seg_path(&dir, 2).exists());
    assert!(
        free > 0,
        "a writer found the lock free during the preparation ({free} of {looks} looks)"
    );
}

fn harness_patience() -> Duration {
    Duration::from_secs(60)
}
