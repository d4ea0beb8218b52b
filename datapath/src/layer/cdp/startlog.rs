//! Records the layer appends synchronously at its start, before the reactors run: a RAM
//! base's reset, and after a stopped journal the changed regions and the gap record
//! (docs/cdp-format.md, "Degraded mode").
//!
//! Model: [`StartLog`] owns the active segment until the writer takes it over
//! ([`StartLog::into_start`]); each append is whole records plus padding (a multiple of 4096
//! bytes), written and synced before the next, so a crash leaves a valid prefix. A record that
//! does not fit the segment starts the next one.

use super::degraded::{self, Prior};
use super::format::{self, MAX_PAYLOAD, Meta, Op, REC_HEADER, RecHeader};
use super::store::{self, CdpError};
use super::{clock, journal};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The active segment while the layer starts.
pub struct StartLog {
    dir: PathBuf,
    meta: Meta,
    seg_size: u64,
    segno: u64,
    file: File,
    pos: u64,
    /// Next sequence number.
    pub next_seq: u64,
    /// Last record's time.
    pub last_time: u64,
    /// The first sequence whose base operation may not be done, for the headers of the
    /// segments it creates ([`format::SegHeader::low`]).
    low: u64,
}

impl StartLog {
    /// A new segment `segno` after a history ending at `last_seq` (time `last_time`). `low`:
    /// the first sequence whose base operation may not be done (after a crash, until the
    /// start has compared the tail with the base: the crashed run's, tail.rs; else
    /// `last_seq + 1`), kept in the header of every segment it creates.
    pub fn new(
        dir: &Path,
        meta: Meta,
        seg_size: u64,
        segno: u64,
        (last_seq, last_time): (u64, u64),
        low: u64,
    ) -> Result<Self, CdpError> {
        let file = store::create_segment(dir, &meta, segno, last_seq + 1, low, seg_size)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            meta,
            seg_size,
            segno,
            file,
            pos: format::SEG_HEADER as u64,
            next_seq: last_seq + 1,
            last_time,
            low,
        })
    }

    /// Append one record (`payload`: a write's data, at most 1 MiB) and sync it.
    pub fn append(
        &mut self,
        op: Op,
        offset: u64,
        len: u64,
        payload: &[u8],
    ) -> Result<u64, CdpError> {
        let used = REC_HEADER + payload.len();
        let total = used + format::pad_len(used);
        if self.pos + total as u64 > self.seg_size {
            self.segno += 1;
            self.file = store::create_segment(
                &self.dir,
                &self.meta,
                self.segno,
                self.next_seq,
                self.low,
                self.seg_size,
            )?;
            self.pos = format::SEG_HEADER as u64;
        }
        let mut b = vec![0u8; total];
        self.last_time = clock::now().max(self.last_time);
        let seq = self.next_seq;
        RecHeader::write_record(
            &mut b,
            op,
            seq,
            self.last_time,
            offset,
            len,
            payload,
            self.meta.vol_id,
        );
        if total > used {
            format::encode_pad(&mut b[used..], total - used, self.meta.vol_id);
        }
        store::append_sync(&self.dir, self.segno, self.pos, &b)?;
        self.pos += total as u64;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Journal the regions changed while the journal was stopped (`prior`), read from the
    /// base file `base` (`None`: a RAM base, whose reset record the caller wrote already),
    /// then the gap record, after sequence `after` (where the recovered history is whole:
    /// [`Prior::whole_until`], never past a cut). Returns the regions journaled.
    pub fn catch_up(
        &mut self,
        prior: &Prior,
        after: u64,
        base: Option<&Path>,
        size: u64,
    ) -> Result<u64, CdpError> {
        let Prior::Stopped { regions, .. } = prior else {
            return Ok(0);
        };
        let total = degraded::regions_of(size);
        let mut done = 0u64;
        if let Some(path) = base {
            let f = File::open(path).map_err(|source| CdpError::Io {
                what: "open the base",
                path: path.to_path_buf(),
                source,
            })?;
            let todo: Vec<u64> = (0..total)
                .filter(|&i| regions.as_ref().is_none_or(|b| degraded::is_set(b, i)))
                .collect();
            let mut buf = vec![0u8; MAX_PAYLOAD];
            let mut next_report = 0;
            for (k, &i) in todo.iter().enumerate() {
                let off = i << degraded::REGION_SHIFT;
                let len = (size - off).min(1 << degraded::REGION_SHIFT) as usize;
                let d = &mut buf[..len];
                f.read_exact_at(d, off).map_err(|source| CdpError::Io {
                    what: "read the base",
                    path: path.to_path_buf(),
                    source,
                })?;
                if d.iter().all(|&x| x == 0) {
                    self.append(Op::Zeroes, off, len as u64, &[])?;
                } else {
                    self.append(Op::Write, off, len as u64, d)?;
                }
                done += 1;
                if k * 10 >= next_report * todo.len() {
                    tracing::info!(dir = %self.dir.display(), done = k + 1, of = todo.len(),
                        "cdp: journaling the regions changed while the journal was stopped");
                    next_report += 1;
                }
            }
        }
        let gap = self.append(Op::Gap, after, 0, &[])?;
        tracing::warn!(dir = %self.dir.display(), after, resumed = gap, regions = done,
            "cdp: the journal is whole again; points between the two sequence numbers are not restorable");
        Ok(done)
    }

    /// The active segment's number.
    pub fn segno(&self) -> u64 {
        self.segno
    }

    /// Hand the segment to the journal writer.
    pub fn into_start(self, spare: Arc<journal::Spare>) -> journal::Start {
        // On tmpfs (and on a disk with `sync = "flush"`) the writer appends through the
        // segment's mapping (mapped.rs), made here, off the reactor; one that cannot be made
        // (a sparse segment) leaves `pwrite`.
        if journal::mappable(&self.dir, &spare)
            && let Err(e) = spare.maps.map(&self.file)
        {
            tracing::debug!(dir = %self.dir.display(), error = %e, "cdp: active segment not mapped; appended with pwrite");
        }
        journal::Start {
            dir: self.dir,
            meta: self.meta,
            segno: self.segno,
            file: self.file,
            pos: self.pos,
            next_seq: self.next_seq,
            last_time: self.last_time,
            seg_size: self.seg_size,
            spare,
        }
    }
}
