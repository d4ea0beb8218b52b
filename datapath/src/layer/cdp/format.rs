//! The CDP journal's on-disk format (docs/cdp-format.md): pure encoders and checking decoders
//! for `cdp.meta`, segment headers, records and index files.
//!
//! Invariants: decoding never panics on any input (fuzzed: `datapath/fuzz`, target
//! `cdp_segment`); a decoded record's header CRC, magic, op, volume id and lengths are checked;
//! [`scan`] stops at the first byte range that is not a valid record continuing the sequence.

use thiserror::Error;

/// The mark in a segment header.
pub const MARK: &[u8; 8] = b"TBCDPKP1";
/// Where it lies.
pub const MARK_AT: usize = 64;

/// Bytes of a segment header (records start here).
pub const SEG_HEADER: usize = 4096;
/// Bytes of a record header.
pub const REC_HEADER: usize = 64;
/// Most payload bytes of one record (longer writes become several records).
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Alignment of every journal append.
pub const ALIGN: usize = 4096;
/// Bytes of `cdp.meta`.
pub const META_LEN: usize = 64;
/// Bytes of an index header and of an index entry.
pub const IDX_HEADER: usize = 64;
/// Bytes of one index entry.
pub const IDX_ENTRY: usize = 48;

const META_MAGIC: &[u8; 8] = b"TBCDPMT1";
const MOVING_MAGIC: &[u8; 8] = b"TBCDPCN1";
const SEG_MAGIC: &[u8; 8] = b"TBCDPSG1";
const IDX_MAGIC: &[u8; 8] = b"TBCDPIX1";
const REC_MAGIC: &[u8; 4] = b"CDPR";
const VERSION: u32 = 1;

/// What a record does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// Data written (the payload).
    Write = 1,
    /// Zeroes written (no payload).
    Zeroes = 2,
    /// Deallocated: reads return zeroes (no payload).
    Unmap = 3,
    /// Padding to the end of a batch (skipped).
    Pad = 4,
    /// A time mark: nothing changed up to its time (no range, no payload).
    Mark = 5,
    /// The end of a gap: the journal stopped after the record whose sequence number is the
    /// offset field; the records between are the changed regions journaled again at the next
    /// start, and the points between are not restorable (no range, no payload).
    Gap = 6,
}

impl Op {
    fn from_u8(v: u8) -> Option<Op> {
        Some(match v {
            1 => Op::Write,
            2 => Op::Zeroes,
            3 => Op::Unmap,
            4 => Op::Pad,
            5 => Op::Mark,
            6 => Op::Gap,
            _ => return None,
        })
    }
}

/// Why bytes are not a valid structure.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FormatError {
    /// Too few bytes.
    #[error("truncated")]
    Short,
    /// Wrong magic number.
    #[error("bad magic")]
    Magic,
    /// Unknown version.
    #[error("unsupported version {0}")]
    Version(u32),
    /// A checksum does not match.
    #[error("checksum mismatch")]
    Crc,
    /// A field is out of its range.
    #[error("bad field: {0}")]
    Field(&'static str),
}

pub(super) fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
pub(super) fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn seal(b: &mut [u8], n: usize) {
    let c = crate::checksum::crc32c(&b[..n]);
    put32(b, n, c);
}
fn sealed(b: &[u8], n: usize) -> bool {
    crate::checksum::crc32c(&b[..n]) == le32(b, n)
}

/// `cdp.meta`: the identity of a volume's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Block size of the volume.
    pub block_size: u32,
    /// Random id of this history.
    pub vol_id: u64,
    /// Volume size in bytes.
    pub size: u64,
    /// Creation time (site time, ns).
    pub created: u64,
    /// The base copy holds every record up to this sequence number (consolidated; 0: none).
    pub base_seq: u64,
    /// Time of that record (0 with `base_seq` 0).
    pub base_time: u64,
}

/// The checks every 64-byte file of the directory shares (`cdp.meta`, `consolidating`): long
/// enough, its magic, its CRC32C over bytes 0..60 at 60, the format's version at 8.
fn check_block(b: &[u8], magic: &[u8; 8]) -> Result<(), FormatError> {
    if b.len() < META_LEN {
        return Err(FormatError::Short);
    }
    if &b[..8] != magic {
        return Err(FormatError::Magic);
    }
    if !sealed(b, 60) {
        return Err(FormatError::Crc);
    }
    match le32(b, 8) {
        VERSION => Ok(()),
        v => Err(FormatError::Version(v)),
    }
}

/// A consolidation pass under way (the file `consolidating`, docs/cdp-format.md, "Point-in-time
/// content"): the base copy is being moved from base point `from` to `to`, so until the meta
/// names `to`, `base.img` is the content of no point and the points before `to` are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Moving {
    /// The history's volume id.
    pub vol_id: u64,
    /// The meta's base point when the pass began.
    pub from: u64,
    /// The base point the pass moves to (the segment's last record).
    pub to: u64,
    /// That record's time.
    pub to_time: u64,
}

impl Moving {
    /// The 64 bytes.
    pub fn encode(&self) -> [u8; META_LEN] {
        let mut b = [0u8; META_LEN];
        b[..8].copy_from_slice(MOVING_MAGIC);
        put32(&mut b, 8, VERSION);
        put64(&mut b, 16, self.vol_id);
        put64(&mut b, 24, self.from);
        put64(&mut b, 32, self.to);
        put64(&mut b, 40, self.to_time);
        seal(&mut b, 60);
        b
    }

    /// Check and decode.
    pub fn decode(b: &[u8]) -> Result<Moving, FormatError> {
        check_block(b, MOVING_MAGIC)?;
        if b[12..16].iter().chain(&b[48..60]).any(|&x| x != 0) {
            return Err(FormatError::Field("reserved"));
        }
        Ok(Moving {
            vol_id: le64(b, 16),
            from: le64(b, 24),
            to: le64(b, 32),
            to_time: le64(b, 40),
        })
    }
}

impl Meta {
    /// Where the restorable window starts (site time, ns).
    pub fn window_start(&self) -> u64 {
        if self.base_seq == 0 {
            self.created
        } else {
            self.base_time
        }
    }

    /// The 64 bytes.
    pub fn encode(&self) -> [u8; META_LEN] {
        let mut b = [0u8; META_LEN];
        b[..8].copy_from_slice(META_MAGIC);
        put32(&mut b, 8, VERSION);
        put32(&mut b, 12, self.block_size);
        put64(&mut b, 16, self.vol_id);
        put64(&mut b, 24, self.size);
        put64(&mut b, 32, self.created);
        put64(&mut b, 40, self.base_seq);
        put64(&mut b, 48, self.base_time);
        seal(&mut b, 60);
        b
    }

    /// Check and decode.
    pub fn decode(b: &[u8]) -> Result<Meta, FormatError> {
        check_block(b, META_MAGIC)?;
        if b[56..60].iter().any(|&x| x != 0) {
            return Err(FormatError::Field("reserved"));
        }
        Ok(Meta {
            block_size: le32(b, 12),
            vol_id: le64(b, 16),
            size: le64(b, 24),
            created: le64(b, 32),
            base_seq: le64(b, 40),
            base_time: le64(b, 48),
        })
    }
}

/// A segment's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegHeader {
    /// The history's id.
    pub vol_id: u64,
    /// Segment number (from 1).
    pub segno: u64,
    /// First sequence number this segment may hold.
    pub first_seq: u64,
    /// Creation time (site time, ns).
    pub created: u64,
    /// Segment size in bytes.
    pub size: u64,
    /// The first record whose update may not have been in the base when the segment began
    /// (its base operation not done, or not covered by a completed flush of the base; at most
    /// `first_seq`; 0: any, from the history's start): after a crash the newest segment's says
    /// from where records are compared with the base (tail.rs).
    /// `None`: not recorded (a segment written before the field existed).
    pub low: Option<u64>,
}

/// [`SegHeader::low`] is kept at byte 56 as how far it lies before `first_seq`, plus one, in
/// 32 bits: 0 none, this value "further back than can be said" (compare from the start).
const LOW_UNBOUNDED: u32 = u32::MAX;

impl SegHeader {
    fn encode_low(&self) -> u32 {
        match self.low {
            None => 0,
            Some(l) => {
                let behind = self.first_seq.saturating_sub(l);
                if behind >= u64::from(LOW_UNBOUNDED - 1) {
                    LOW_UNBOUNDED
                } else {
                    behind as u32 + 1
                }
            }
        }
    }

    /// The 4096 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; SEG_HEADER];
        b[..8].copy_from_slice(SEG_MAGIC);
        put32(&mut b, 8, VERSION);
        put32(&mut b, 12, SEG_HEADER as u32);
        put64(&mut b, 16, self.vol_id);
        put64(&mut b, 24, self.segno);
        put64(&mut b, 32, self.first_seq);
        put64(&mut b, 40, self.created);
        put64(&mut b, 48, self.size);
        put32(&mut b, 56, self.encode_low());
        seal(&mut b, 60);
        // (Outside the CRC: readers of earlier versions ignore these bytes.)
        b[MARK_AT..][..MARK.len()].copy_from_slice(MARK);
        b
    }

    /// Check and decode.
    pub fn decode(b: &[u8]) -> Result<SegHeader, FormatError> {
        if b.len() < SEG_HEADER {
            return Err(FormatError::Short);
        }
        if &b[..8] != SEG_MAGIC {
            return Err(FormatError::Magic);
        }
        if !sealed(b, 60) {
            return Err(FormatError::Crc);
        }
        let v = le32(b, 8);
        if v != VERSION {
            return Err(FormatError::Version(v));
        }
        if le32(b, 12) as usize != SEG_HEADER {
            return Err(FormatError::Field("header size"));
        }
        let first_seq = le64(b, 32);
        Ok(SegHeader {
            vol_id: le64(b, 16),
            segno: le64(b, 24),
            first_seq,
            created: le64(b, 40),
            size: le64(b, 48),
            low: match le32(b, 56) {
                0 => None,
                LOW_UNBOUNDED => Some(0),
                n => Some(first_seq.saturating_sub(u64::from(n - 1))),
            },
        })
    }
}

/// A record's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecHeader {
    /// What it does.
    pub op: Op,
    /// Sequence number (0 for padding).
    pub seq: u64,
    /// Site time, ns (0 for padding).
    pub time: u64,
    /// Byte offset on the volume.
    pub offset: u64,
    /// Bytes on the volume (padding: bytes of payload).
    pub len: u64,
    /// Payload bytes that follow the header.
    pub payload_len: u32,
    /// CRC32C of the payload (0 when empty, and for padding).
    pub payload_crc: u32,
    /// The history's id.
    pub vol_id: u64,
}

impl RecHeader {
    /// Write the 64 header bytes into `out[..64]`.
    pub fn encode(&self, out: &mut [u8]) {
        let b = &mut out[..REC_HEADER];
        b.fill(0);
        b[..4].copy_from_slice(REC_MAGIC);
        b[4] = self.op as u8;
        put64(b, 8, self.seq);
        put64(b, 16, self.time);
        put64(b, 24, self.offset);
        put64(b, 32, self.len);
        put32(b, 40, self.payload_len);
        put32(b, 44, self.payload_crc);
        put64(b, 48, self.vol_id);
        seal(b, 60);
    }

    /// Check and decode a header of history `vol_id` (the payload is not checked here).
    pub fn decode(b: &[u8], vol_id: u64) -> Result<RecHeader, FormatError> {
        if b.len() < REC_HEADER {
            return Err(FormatError::Short);
        }
        if &b[..4] != REC_MAGIC {
            return Err(FormatError::Magic);
        }
        if !sealed(b, 60) {
            return Err(FormatError::Crc);
        }
        let op = Op::from_u8(b[4]).ok_or(FormatError::Field("op"))?;
        let h = RecHeader {
            op,
            seq: le64(b, 8),
            time: le64(b, 16),
            offset: le64(b, 24),
            len: le64(b, 32),
            payload_len: le32(b, 40),
            payload_crc: le32(b, 44),
            vol_id: le64(b, 48),
        };
        if h.vol_id != vol_id {
            return Err(FormatError::Field("volume id"));
        }
        let ok = match op {
            Op::Write => {
                h.payload_len as u64 == h.len && h.len > 0 && h.len as usize <= MAX_PAYLOAD
            }
            Op::Zeroes | Op::Unmap => h.payload_len == 0 && h.len > 0,
            Op::Pad => h.payload_len as u64 == h.len && h.seq == 0 && (h.len as usize) < 2 * ALIGN,
            Op::Mark => h.payload_len == 0 && h.len == 0 && h.offset == 0,
            Op::Gap => h.payload_len == 0 && h.len == 0 && h.offset < h.seq,
        };
        if !ok {
            return Err(FormatError::Field("lengths"));
        }
        Ok(h)
    }

    /// A record of `payload` (empty for no payload) with its CRC: the header, then the payload,
    /// written into `out[..REC_HEADER + payload.len()]`.
    #[allow(clippy::too_many_arguments)]
    pub fn write_record(
        out: &mut [u8],
        op: Op,
        seq: u64,
        time: u64,
        offset: u64,
        len: u64,
        payload: &[u8],
        vol_id: u64,
    ) {
        RecHeader {
            op,
            seq,
            time,
            offset,
            len,
            payload_len: payload.len() as u32,
            payload_crc: if payload.is_empty() {
                0
            } else {
                crate::checksum::crc32c(payload)
            },
            vol_id,
        }
        .encode(out);
        out[REC_HEADER..REC_HEADER + payload.len()].copy_from_slice(payload);
    }

    /// Bytes of the whole record (header and payload).
    pub fn total(&self) -> usize {
        REC_HEADER + self.payload_len as usize
    }
}

/// Bytes of the padding record that makes `used` bytes a multiple of [`ALIGN`] (0: none).
pub fn pad_len(used: usize) -> usize {
    let gap = (ALIGN - used % ALIGN) % ALIGN;
    match gap {
        0 => 0,
        g if g < REC_HEADER => g + ALIGN,
        g => g,
    }
}

/// Write a padding record of `total` bytes (from [`pad_len`]) into `out[..total]`.
pub fn encode_pad(out: &mut [u8], total: usize, vol_id: u64) {
    let payload = total - REC_HEADER;
    RecHeader {
        op: Op::Pad,
        seq: 0,
        time: 0,
        offset: 0,
        len: payload as u64,
        payload_len: payload as u32,
        payload_crc: 0,
        vol_id,
    }
    .encode(out);
    out[REC_HEADER..total].fill(0);
}

/// One data record of a segment: where it is and what it covers (an index entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Sequence number.
    pub seq: u64,
    /// Site time, ns.
    pub time: u64,
    /// Byte offset on the volume.
    pub offset: u64,
    /// Bytes on the volume.
    pub len: u64,
    /// Position of the record's header in its segment.
    pub pos: u64,
    /// Write, zeroes, unmap or mark.
    pub op: Op,
}

/// What a scan of one segment found.
#[derive(Debug, Default)]
pub struct Scanned {
    /// Data records in order.
    pub entries: Vec<Entry>,
    /// Byte offset just after the last valid record (where the log of this segment ends).
    pub end: u64,
    /// Last sequence number seen (the `prev_seq` given when none).
    pub last_seq: u64,
    /// Last time seen (the `prev_time` given when none).
    pub last_time: u64,
    /// The scan stopped before the end of `seg` at bytes that are not a valid record
    /// continuing the log (a torn tail, zeroes after the end, or corruption).
    pub stopped: Option<FormatError>,
}

/// Scan the records of a segment image `seg` (whole file, header included) of history
/// `vol_id` on a volume of `vol_size` bytes, continuing a log whose last record had
/// `prev_seq` and `prev_time`.
pub fn scan(seg: &[u8], vol_id: u64, vol_size: u64, prev_seq: u64, prev_time: u64) -> Scanned {
    let mut s = Scanned {
        end: SEG_HEADER.min(seg.len()) as u64,
        last_seq: prev_seq,
        last_time: prev_time,
        ..Default::default()
    };
    let mut pos = SEG_HEADER;
    while pos + REC_HEADER <= seg.len() {
        let h = match RecHeader::decode(&seg[pos..], vol_id) {
            Ok(h) => h,
            Err(e) => {
                s.stopped = Some(e);
                return s;
            }
        };
        let end = pos + h.total();
        if end > seg.len() {
            s.stopped = Some(FormatError::Short);
            return s;
        }
        if h.op != Op::Pad {
            if s.last_seq.checked_add(1) != Some(h.seq) {
                s.stopped = Some(FormatError::Field("sequence"));
                return s;
            }
            if h.time < s.last_time {
                s.stopped = Some(FormatError::Field("time"));
                return s;
            }
            // (A gap's offset field is a sequence number, a mark's range is empty: only an
            // update's range lies on the volume.)
            if matches!(h.op, Op::Write | Op::Zeroes | Op::Unmap)
                && !crate::bdev::in_range(h.offset, h.len, vol_size)
            {
                s.stopped = Some(FormatError::Field("range"));
                return s;
            }
            let payload = &seg[pos + REC_HEADER..end];
            let crc = if payload.is_empty() {
                0
            } else {
                crate::checksum::crc32c(payload)
            };
            if crc != h.payload_crc {
                s.stopped = Some(FormatError::Crc);
                return s;
            }
            s.entries.push(Entry {
                seq: h.seq,
                time: h.time,
                offset: h.offset,
                len: h.len,
                pos: pos as u64,
                op: h.op,
            });
            s.last_seq = h.seq;
            s.last_time = h.time;
        }
        pos = end;
        s.end = pos as u64;
    }
    if pos < seg.len() {
        s.stopped = Some(FormatError::Short);
    }
    s
}

/// Where the first record written in this use of a segment file lies at or after byte `from`
/// of `seg`: a record header of history `vol_id`, not padding, whose sequence number is at
/// least `first_seq` (the segment's first) and whose time is at least `not_before` (the last
/// time the log found). Bytes after a log's end are zeroes, an earlier use's records
/// (sequence numbers below `first_seq` and older times: a file is reused only once every
/// record in it was consolidated) or, only when the log was cut, records of this use; this
/// tells the last from the others (docs/cdp-format.md, "Torn tail").
pub fn later_record(
    seg: &[u8],
    from: usize,
    vol_id: u64,
    first_seq: u64,
    not_before: u64,
) -> Option<usize> {
    // (A SIMD search: the rest of a segment file is mostly zeroes, up to its whole size.)
    let magic = memchr::memmem::Finder::new(&REC_MAGIC);
    let mut pos = from;
    while pos + REC_HEADER <= seg.len() {
        let at = magic.find(&seg[pos..seg.len() - REC_HEADER + 4])?;
        pos += at;
        if let Ok(h) = RecHeader::decode(&seg[pos..], vol_id)
            && h.op != Op::Pad
            && h.seq >= first_seq
            && h.time >= not_before
        {
            return Some(pos);
        }
        pos += 1;
    }
    None
}

/// An index file's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    /// Segment number.
    pub segno: u64,
    /// Where the segment's log ends.
    pub end: u64,
    /// Its data records.
    pub entries: Vec<Entry>,
    /// Written by a clean stop with no update's base operation left to do (the writer's
    /// seal): the next start need not compare the tail with the base (tail.rs). Any other
    /// writer of an index (a reader's cache, recovery) leaves it false.
    pub clean: bool,
}

impl Index {
    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; IDX_HEADER + IDX_ENTRY * self.entries.len()];
        b[..8].copy_from_slice(IDX_MAGIC);
        put32(&mut b, 8, VERSION);
        put32(&mut b, 12, self.entries.len() as u32);
        put64(&mut b, 16, self.segno);
        put64(&mut b, 24, self.entries.first().map_or(0, |e| e.seq));
        put64(&mut b, 32, self.entries.last().map_or(0, |e| e.seq));
        put64(&mut b, 40, self.end);
        b[48] = u8::from(self.clean);
        seal(&mut b, 60);
        for (i, e) in self.entries.iter().enumerate() {
            let o = &mut b[IDX_HEADER + i * IDX_ENTRY..][..IDX_ENTRY];
            put64(o, 0, e.seq);
            put64(o, 8, e.time);
            put64(o, 16, e.offset);
            put64(o, 24, e.len);
            put64(o, 32, e.pos);
            o[40] = e.op as u8;
            seal(o, 44);
        }
        b
    }

    /// Check and decode.
    pub fn decode(b: &[u8]) -> Result<Index, FormatError> {
        if b.len() < IDX_HEADER {
            return Err(FormatError::Short);
        }
        if &b[..8] != IDX_MAGIC {
            return Err(FormatError::Magic);
        }
        if !sealed(b, 60) {
            return Err(FormatError::Crc);
        }
        let v = le32(b, 8);
        if v != VERSION {
            return Err(FormatError::Version(v));
        }
        if b[48] > 1 || b[49..60].iter().any(|&x| x != 0) {
            return Err(FormatError::Field("reserved"));
        }
        let n = le32(b, 12) as usize;
        if b.len() != IDX_HEADER + n * IDX_ENTRY {
            return Err(FormatError::Short);
        }
        let mut entries = Vec::with_capacity(n);
        for i in 0..n {
            let o = &b[IDX_HEADER + i * IDX_ENTRY..][..IDX_ENTRY];
            if !sealed(o, 44) {
                return Err(FormatError::Crc);
            }
            if o[41..44].iter().any(|&x| x != 0) {
                return Err(FormatError::Field("reserved"));
            }
            let op = match Op::from_u8(o[40]) {
                Some(Op::Pad) | None => return Err(FormatError::Field("op")),
                Some(op) => op,
            };
            entries.push(Entry {
                seq: le64(o, 0),
                time: le64(o, 8),
                offset: le64(o, 16),
                len: le64(o, 24),
                pos: le64(o, 32),
                op,
            });
        }
        let (first, last) = (le64(b, 24), le64(b, 32));
        if entries.first().map_or(0, |e| e.seq) != first
            || entries.last().map_or(0, |e| e.seq) != last
            || entries.windows(2).any(|w| w[1].seq != w[0].seq + 1)
        {
            return Err(FormatError::Field("sequence"));
        }
        Ok(Index {
            segno: le64(b, 16),
            end: le64(b, 40),
            entries,
            clean: b[48] == 1,
        })
    }
}

/// Hand-made segment images for the tests of the modules that read segments.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Write records `seqs` (4 KiB writes, time = sequence number, block `seq % 64`, bytes
    /// `seq as u8`) of history `vol_id` into `img` from byte 4096 on; where they end.
    pub(crate) fn put_records(
        img: &mut [u8],
        vol_id: u64,
        seqs: std::ops::RangeInclusive<u64>,
    ) -> usize {
        let mut at = SEG_HEADER;
        for q in seqs {
            let r = &mut img[at..at + REC_HEADER + 4096];
            RecHeader::write_record(
                r,
                Op::Write,
                q,
                q,
                (q % 64) * 4096,
                4096,
                &[q as u8; 4096],
                vol_id,
            );
            at += REC_HEADER + 4096;
        }
        at
    }

    /// A 1 MiB image of segment `segno` of history `vol_id` holding records `seqs`
    /// ([`put_records`]) after its header.
    pub(crate) fn segment_image(
        vol_id: u64,
        segno: u64,
        seqs: std::ops::RangeInclusive<u64>,
    ) -> Vec<u8> {
        let mut img = vec![0u8; 1 << 20];
        put_header(&mut img, vol_id, segno, *seqs.start());
        put_records(&mut img, vol_id, seqs);
        img
    }

    /// Write the header of segment `segno` (first sequence `first_seq`) into `img`.
    pub(crate) fn put_header(img: &mut [u8], vol_id: u64, segno: u64, first_seq: u64) {
        let h = SegHeader {
            vol_id,
            segno,
            first_seq,
            created: 1,
            size: img.len() as u64,
            low: Some(first_seq),
        };
        img[..SEG_HEADER].copy_from_slice(&h.encode());
        // A segment of an earlier version (not kept, docs/cdp-integrity.md): the fixtures'
        // histories have no `degraded.map` nor base copy identity.
        img[super::MARK_AT..][..8].fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consolidation_marker_round_trips_and_refuses_damage() {
        let m = Moving {
            vol_id: u64::MAX,
            from: u64::MAX - 1,
            to: u64::MAX,
            to_time: u64::MAX,
        };
        let b = m.encode();
        assert_eq!(Moving::decode(&b), Ok(m));
        assert_eq!(Moving::decode(&b[..63]), Err(FormatError::Short));
        for at in [0, 9, 20, 33, 47, 61] {
            let mut bad = b;
            bad[at] ^= 1;
            assert!(Moving::decode(&bad).is_err(), "byte {at} flipped");
        }
        // A meta is not a marker.
        let meta = Meta {
            block_size: 4096,
            vol_id: 1,
            size: 4096,
            created: 1,
            base_seq: 0,
            base_time: 0,
        };
        assert_eq!(Moving::decode(&meta.encode()), Err(FormatError::Magic));
    }

    fn rec(op: Op, seq: u64, off: u64, data: &[u8], len: u64) -> Vec<u8> {
        let mut b = vec![0u8; REC_HEADER + data.len()];
        RecHeader {
            op,
            seq,
            time: seq * 10,
            offset: off,
            len,
            payload_len: data.len() as u32,
            payload_crc: if data.is_empty() {
                0
            } else {
                crate::checksum::crc32c(data)
            },
            vol_id: 7,
        }
        .encode(&mut b);
        b[REC_HEADER..].copy_from_slice(data);
        b
    }

    fn segment(records: &[Vec<u8>]) -> Vec<u8> {
        let mut s = SegHeader {
            vol_id: 7,
            segno: 1,
            first_seq: 1,
            created: 1,
            size: 1 << 20,
            low: Some(1),
        }
        .encode();
        for r in records {
            s.extend_from_slice(r);
        }
        let p = pad_len(s.len());
        let at = s.len();
        s.resize(at + p, 0);
        if p > 0 {
            encode_pad(&mut s[at..], p, 7);
        }
        s.resize(s.len() + 8192, 0);
        s
    }

    /// A segment file reused after consolidation keeps its earlier use's records behind the
    /// new header: the scan of the new use ends at its own last record (an earlier record can
    /// never continue the chain), `later_record` finds no record of this use after that end,
    /// and finds one when a record of this use was dropped (a cut).
    #[test]
    fn an_earlier_use_of_a_segment_file_never_continues_its_log() {
        // The file's earlier use: records 10..=40 of 512 bytes each, with padding.
        let old: Vec<Vec<u8>> = (10..=40u64)
            .map(|q| rec(Op::Write, q, q * 512, &[q as u8; 512], 512))
            .collect();
        let mut file = segment(&old);
        // The new use: header (first sequence 100), records 100..=102, written over the start.
        let mut header = SegHeader::decode(&file).unwrap();
        header.first_seq = 100;
        header.segno = 9;
        file[..SEG_HEADER].copy_from_slice(&header.encode());
        let new: Vec<u8> = (100..=102u64)
            .flat_map(|q| rec(Op::Write, q, 0, &[q as u8; 1024], 1024))
            .collect();
        file[SEG_HEADER..SEG_HEADER + new.len()].copy_from_slice(&new);
        let end = SEG_HEADER + new.len();
        let s = scan(&file, 7, 1 << 30, 99, 0);
        assert_eq!(
            s.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [100, 101, 102]
        );
        assert_eq!(s.end, end as u64);
        assert!(s.stopped.is_some(), "stopped at the earlier use's bytes");
        assert!(
            later_record(&file, end, 7, 1, 0).is_some(),
            "the earlier use's records follow the end"
        );
        assert_eq!(
            later_record(&file, end, 7, 100, 1020),
            None,
            "none of this use"
        );
        assert_eq!(
            later_record(&file, end, 7, 1, 1020),
            None,
            "none as recent as the log's last"
        );
        // Record 101's payload damaged: the scan ends after 100, and 101's header is a record
        // of this use after that end; with 101's header damaged too, 102's is.
        let second = SEG_HEADER + REC_HEADER + 1024;
        let mut cut = file.clone();
        cut[second + REC_HEADER + 5] ^= 1;
        let s = scan(&cut, 7, 1 << 30, 99, 0);
        assert_eq!(s.entries.len(), 1);
        assert_eq!(s.end, second as u64);
        assert_eq!(later_record(&cut, second, 7, 100, 1000), Some(second));
        cut[second + 9] ^= 1;
        let third = second + REC_HEADER + 1024;
        assert_eq!(later_record(&cut, second, 7, 100, 1000), Some(third));
        // Another history's records and padding of this one do not count.
        assert_eq!(later_record(&cut, s.end as usize, 8, 100, 0), None);
        let mut pad = vec![0u8; 4096];
        encode_pad(&mut pad, 4096, 7);
        assert_eq!(later_record(&pad, 0, 7, 0, 0), None);
    }

    /// A gap record's offset field holds a sequence number, not a byte offset: a history of
    /// more records than its volume has bytes (a 1 GiB volume after about 1.07e9 records)
    /// still scans past its gap records, and a write's range is still checked.
    #[test]
    fn a_gap_after_more_records_than_the_volume_has_bytes_still_scans() {
        let size = 1 << 20;
        let big = size + 5;
        let mut gap = rec(Op::Gap, big + 2, 0, &[], 0);
        // The gap's offset is the last sequence number before it.
        let mut h = RecHeader::decode(&gap, 7).unwrap();
        h.offset = big;
        h.encode(&mut gap);
        let seg = segment(&[
            rec(Op::Write, big + 1, 0, &[1; 512], 512),
            gap,
            rec(Op::Write, big + 3, 512, &[2; 512], 512),
        ]);
        let s = scan(&seg, 7, size, big, 0);
        assert_eq!(
            s.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [big + 1, big + 2, big + 3]
        );
        let outside = segment(&[rec(Op::Write, 1, size, &[1; 512], 512)]);
        let s = scan(&outside, 7, size, 0, 0);
        assert!(s.entries.is_empty() && s.stopped == Some(FormatError::Field("range")));
    }

    #[test]
    fn headers_round_trip_and_reject_damage() {
        let m = Meta {
            block_size: 512,
            vol_id: 9,
            size: 1 << 20,
            created: 5,
            base_seq: 3,
            base_time: 9,
        };
        assert_eq!(Meta::decode(&m.encode()), Ok(m));
        let mut bad = m.encode();
        bad[20] ^= 1;
        assert_eq!(Meta::decode(&bad), Err(FormatError::Crc));
        let h = SegHeader {
            vol_id: 1,
            segno: 2,
            first_seq: 3,
            created: 4,
            size: 5,
            low: Some(2),
        };
        assert_eq!(SegHeader::decode(&h.encode()), Ok(h));
        // The low-water mark: none (an older segment), at, before and far before the first
        // sequence (saturated to "from the start", never to a later sequence).
        for (first, low, back) in [
            (3, None, None),
            (3, Some(3), Some(3)),
            (3, Some(9), Some(3)),
            (1 << 40, Some((1 << 40) - 12345), Some((1 << 40) - 12345)),
            (1 << 40, Some(1), Some(0)),
            (
                u64::MAX,
                Some(u64::MAX - u64::from(u32::MAX - 2)),
                Some(u64::MAX - u64::from(u32::MAX - 2)),
            ),
            (u64::MAX, Some(u64::MAX - u64::from(u32::MAX - 1)), Some(0)),
            (5, Some(0), Some(0)),
        ] {
            let h = SegHeader {
                first_seq: first,
                low,
                ..h
            };
            assert_eq!(
                SegHeader::decode(&h.encode()).unwrap().low,
                back,
                "{first} {low:?}"
            );
        }
        assert_eq!(
            SegHeader::decode(&h.encode()[..100]),
            Err(FormatError::Short)
        );
        let r = rec(Op::Write, 1, 0, &[1; 512], 512);
        assert!(RecHeader::decode(&r, 7).is_ok());
        assert_eq!(
            RecHeader::decode(&r, 8),
            Err(FormatError::Field("volume id"))
        );
    }

    #[test]
    fn padding_always_fits_a_header() {
        for used in 0..3 * ALIGN {
            let p = pad_len(used);
            assert_eq!((used + p) % ALIGN, 0);
            assert!(p == 0 || p >= REC_HEADER, "used {used} pad {p}");
        }
    }

    #[test]
    fn a_scan_reads_records_skips_padding_and_stops_at_a_torn_record() {
        let seg = segment(&[
            rec(Op::Write, 1, 0, &[1; 512], 512),
            rec(Op::Unmap, 2, 4096, &[], 8192),
            rec(Op::Write, 3, 512, &[3; 1024], 1024),
        ]);
        let s = scan(&seg, 7, 1 << 20, 0, 0);
        assert_eq!(s.entries.len(), 3);
        assert_eq!(s.last_seq, 3);
        assert_eq!(s.end as usize % ALIGN, 0);
        assert_eq!(s.stopped, Some(FormatError::Magic), "zeroes after the log");
        // A flipped payload byte of the last record: the log ends before it.
        let mut torn = seg.clone();
        let third = s.entries[2].pos as usize;
        torn[third + REC_HEADER + 7] ^= 0xff;
        let t = scan(&torn, 7, 1 << 20, 0, 0);
        assert_eq!(t.entries.len(), 2);
        assert_eq!(t.end, s.entries[2].pos);
        assert_eq!(t.stopped, Some(FormatError::Crc));
        // A record out of sequence ends it too.
        let gap = segment(&[
            rec(Op::Write, 1, 0, &[1; 512], 512),
            rec(Op::Write, 3, 0, &[1; 512], 512),
        ]);
        assert_eq!(scan(&gap, 7, 1 << 20, 0, 0).entries.len(), 1);
        // A range outside the volume ends it.
        let out = segment(&[rec(Op::Write, 1, 1 << 20, &[1; 512], 512)]);
        assert!(scan(&out, 7, 1 << 20, 0, 0).entries.is_empty());
    }

    #[test]
    fn garbage_never_panics_a_scan() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for n in 0..200usize {
            let mut seg = vec![0u8; SEG_HEADER + n * 37];
            for b in &mut seg {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            // A valid first record followed by garbage.
            if n > 40 {
                let r = rec(Op::Write, 1, 0, &[2; 512], 512);
                seg[SEG_HEADER..SEG_HEADER + r.len()].copy_from_slice(&r);
            }
            let s = scan(&seg, 7, 1 << 20, 0, 0);
            let _ = later_record(&seg, s.end as usize, 7, 1, 0);
            let _ = later_record(&seg, seg.len(), 7, 1, 0);
            let _ = Index::decode(&seg);
            let _ = SegHeader::decode(&seg);
        }
    }

    #[test]
    fn an_index_round_trips_and_rejects_damage() {
        let seg = segment(&[
            rec(Op::Write, 5, 0, &[1; 512], 512),
            rec(Op::Zeroes, 6, 0, &[], 4096),
        ]);
        let s = scan(&seg, 7, 1 << 20, 4, 0);
        let mut i = Index {
            segno: 1,
            end: s.end,
            entries: s.entries,
            clean: false,
        };
        assert_eq!(Index::decode(&i.encode()), Ok(i.clone()));
        i.clean = true;
        let b = i.encode();
        assert_eq!(Index::decode(&b), Ok(i));
        let mut flag = b.clone();
        flag[48] = 2;
        seal(&mut flag, 60);
        assert!(Index::decode(&flag).is_err(), "an unknown flag");
        for at in [3, 20, IDX_HEADER + 5, b.len() - 1] {
            let mut d = b.clone();
            d[at] ^= 0x10;
            assert!(Index::decode(&d).is_err(), "damage at {at}");
        }
        assert!(Index::decode(&b[..b.len() - 1]).is_err());
    }
}
