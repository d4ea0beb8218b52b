//! The event loop: one thread drives its connections with nonblocking sockets and `ppoll(2)`.
//!
//! Model, per round: every connection is filled up to `qd` requests (each encoded by its
//! [`Wire`] into the connection's send buffer, which is written with one `write` per
//! connection), then the thread waits in `ppoll` and reads each readable socket into a large
//! receive buffer, parsing every complete reply in place. A reply either carries read data
//! (checked in place when verifying, never copied), completes a request, or asks for more
//! outgoing bytes (NVMe R2T: the wire appends H2CData to the send buffer).
//!
//! Invariants:
//! - A request slot is busy from its request being encoded to its completion; a reply naming
//!   an idle or unknown slot is a protocol error, as is read data for a write, data beyond the
//!   request's length, or a successful read that did not receive all its bytes.
//! - A unit of the connection's slice has at most one request in flight.
//! - The send buffer holds at most `qd` requests plus R2T data, the receive buffer at least two
//!   of the largest replies; neither grows after start.
//! - With requests outstanding and no byte received for `timeout`, the run fails (a silent
//!   target never hangs twinperf).

use super::Opts;
use super::verify::{self, Mismatch, UNKNOWN};
use anyhow::{Context, Result, bail, ensure};
use hdrhistogram::Histogram;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Receive buffer at least this large (many replies per `read`).
pub const RECV_BUF: usize = 256 << 10;
/// Longest single wait in `ppoll`, so deadlines and the silence timeout are noticed.
const POLL_SLICE: Duration = Duration::from_millis(100);
/// Latencies above this (ns) are clamped into the top bucket.
const LAT_MAX_NS: u64 = 3_600_000_000_000;

/// One request to encode.
#[derive(Clone, Copy, Debug)]
pub struct Req {
    /// Slot (the protocol's request id, or part of it).
    pub slot: u16,
    /// Write (else read).
    pub write: bool,
    /// Device byte offset.
    pub offset: u64,
    /// Bytes.
    pub len: u32,
}

/// What one parsed reply means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// Bytes of the buffer this reply used.
    pub used: usize,
    /// The request it answers (None: a PDU about no request, e.g. an iSCSI NOP-In).
    pub slot: Option<u16>,
    /// Read data: (offset within the request, byte range within the parsed buffer).
    pub data: Option<(u32, Range<usize>)>,
    /// The request is complete with this status (0: success; else a protocol error code).
    pub done: Option<u32>,
}

/// A protocol codec for the data path of one connection.
pub trait Wire: Send {
    /// Append the encoding of `r` to `out`; `payload` is the write data (empty for reads).
    fn request(&mut self, r: &Req, payload: &[u8], out: &mut Vec<u8>);
    /// Parse the reply at the front of `inb`: `Ok(None)` when it is not complete yet.
    /// May append bytes to send to `out` (NVMe: data asked for by an R2T).
    fn parse(&mut self, inb: &[u8], slots: &Slots, out: &mut Vec<u8>) -> Result<Option<Parsed>>;
    /// Bytes to send before closing (NBD: a disconnect request).
    fn goodbye(&mut self, _out: &mut Vec<u8>) {}
    /// Largest reply this wire accepts, headers included.
    fn max_reply(&self) -> usize;
    /// Whether one more request may be sent now (iSCSI: its CmdSN is inside the command
    /// window the target last announced).
    fn may_send(&self) -> bool {
        true
    }
}

/// A connected socket and its codec, as the protocol modules hand them over.
pub struct Link {
    /// The connection (blocking or not: made nonblocking here).
    pub sock: TcpStream,
    /// Its codec.
    pub wire: Box<dyn Wire>,
}

#[derive(Clone, Copy)]
struct Slot {
    busy: bool,
    write: bool,
    bad: bool,
    unit: u32,
    generation: u32,
    got: u32,
    start: Instant,
}

/// The request slots of one connection, as codecs see them.
pub struct Slots {
    st: Vec<Slot>,
    bs: u32,
    verify: bool,
    /// Write data: one block per slot when verifying (stamped per write), else one shared block.
    payload: Vec<u8>,
}

impl Slots {
    /// If `slot` is in flight: (is a write, length).
    pub fn op(&self, slot: u16) -> Option<(bool, u32)> {
        self.st
            .get(usize::from(slot))
            .filter(|s| s.busy)
            .map(|s| (s.write, self.bs))
    }

    /// Slots of `bs` bytes with `busy` (slot, is a write) in flight, for codec unit tests.
    #[cfg(test)]
    pub(crate) fn with_busy(bs: u32, busy: &[(u16, bool)]) -> Slots {
        let n = busy
            .iter()
            .map(|&(s, _)| usize::from(s) + 1)
            .max()
            .unwrap_or(0);
        let mut st = vec![
            Slot {
                busy: false,
                write: false,
                bad: false,
                unit: 0,
                generation: 0,
                got: 0,
                start: Instant::now(),
            };
            n
        ];
        for &(s, w) in busy {
            st[usize::from(s)].busy = true;
            st[usize::from(s)].write = w;
        }
        Slots {
            st,
            bs,
            verify: false,
            payload: (0..bs).map(|i| i as u8).collect(),
        }
    }

    /// The write data of `slot`.
    pub fn payload(&self, slot: u16) -> &[u8] {
        let bs = self.bs as usize;
        if self.verify {
            let at = usize::from(slot) * bs;
            &self.payload[at..at + bs]
        } else {
            &self.payload[..bs]
        }
    }
}

/// A connection's share of the workload.
pub struct Work {
    /// Connection number (its slice).
    pub index: u32,
    /// First unit of its slice (in units of `bs` from the region's start).
    pub first_unit: u64,
    /// Units in the slice.
    pub units: u32,
    /// Generator state (xorshift64, never 0).
    pub rng: u64,
    /// I/Os to issue (None: until the deadline).
    pub quota: Option<u64>,
    /// Expected generation per unit (see [`verify`]).
    pub expected: Vec<u32>,
}

/// One second of the run.
pub struct Second {
    /// I/Os completed in it.
    pub ios: u64,
    /// Their latencies (ns).
    pub hist: Histogram<u64>,
}

/// What one thread measured.
pub struct Stats {
    /// All latencies (ns).
    pub all: Histogram<u64>,
    /// Read latencies (ns).
    pub read: Histogram<u64>,
    /// Write latencies (ns).
    pub write: Histogram<u64>,
    /// Per second since the start.
    pub seconds: Vec<Second>,
    /// I/Os completed.
    pub ios: u64,
    /// Reads completed.
    pub reads: u64,
    /// Writes completed.
    pub writes: u64,
    /// Bytes moved by successful I/Os.
    pub bytes: u64,
    /// I/Os the target failed.
    pub errors: u64,
    /// Reads whose data was checked.
    pub checked: u64,
    /// Reads whose data did not match.
    pub mismatches: u64,
    /// The first mismatches in detail.
    pub mismatch_list: Vec<Mismatch>,
    /// When the last I/O completed.
    pub end: Instant,
}

fn hist(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, LAT_MAX_NS, sigfig).expect("constant bounds are valid")
}

impl Stats {
    fn new(start: Instant) -> Stats {
        Stats {
            all: hist(3),
            read: hist(3),
            write: hist(3),
            seconds: Vec::new(),
            ios: 0,
            reads: 0,
            writes: 0,
            bytes: 0,
            errors: 0,
            checked: 0,
            mismatches: 0,
            mismatch_list: Vec::new(),
            end: start,
        }
    }
}

/// A thread's results.
pub struct ThreadOut {
    /// Measurements.
    pub stats: Stats,
    /// Expected generations per connection (by connection number), for the state file.
    pub expected: Vec<(u32, Vec<u32>)>,
}

/// One connection in the event loop.
pub struct Conn {
    sock: TcpStream,
    wire: Box<dyn Wire>,
    slots: Slots,
    free: Vec<u16>,
    out: Vec<u8>,
    sent: usize,
    inb: Vec<u8>,
    have: usize,
    work: Work,
    unit_busy: Vec<bool>,
    inflight: u32,
    issued: u64,
    seq_next: u32,
    generation: u32,
    run: u64,
    read_pct: u64,
    random: bool,
    qd: u32,
    bs: u32,
    region_offset: u64,
}

impl Conn {
    /// Prepare a connection for the loop.
    pub fn new(link: Link, work: Work, o: &Opts, run: u64) -> Result<Conn> {
        link.sock
            .set_nonblocking(true)
            .context("making the socket nonblocking")?;
        let _ = link.sock.set_nodelay(true);
        let bs = o.bs as usize;
        let payload_len = if o.verify { bs * o.qd as usize } else { bs };
        let mut payload = vec![0u8; payload_len];
        // A fixed pseudo-random pattern, so the data is not trivially compressible.
        let mut x = 0x243F_6A88_85A3_08D3u64;
        for w in payload.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = x.to_le_bytes();
            w.copy_from_slice(&b[..w.len()]);
        }
        let inb_len = RECV_BUF.max(2 * link.wire.max_reply());
        let generation = work
            .expected
            .iter()
            .copied()
            .filter(|&g| g != UNKNOWN)
            .max()
            .unwrap_or(0);
        let units = work.units as usize;
        ensure!(work.expected.len() == units, "verify map size");
        let now = Instant::now();
        Ok(Conn {
            sock: link.sock,
            wire: link.wire,
            slots: Slots {
                st: vec![
                    Slot {
                        busy: false,
                        write: false,
                        bad: false,
                        unit: 0,
                        generation: 0,
                        got: 0,
                        start: now,
                    };
                    o.qd as usize
                ],
                bs: o.bs,
                verify: o.verify,
                payload,
            },
            free: (0..o.qd as u16).rev().collect(),
            out: Vec::with_capacity((bs + 128) * o.qd as usize),
            sent: 0,
            inb: vec![0; inb_len],
            have: 0,
            work,
            unit_busy: vec![false; units],
            inflight: 0,
            issued: 0,
            seq_next: 0,
            generation,
            run,
            read_pct: u64::from(o.rw.read_percent(o.rwmix)),
            random: o.rw.random(),
            qd: o.qd,
            bs: o.bs,
            region_offset: o.offset,
        })
    }

    fn rand(&mut self) -> u64 {
        let mut x = self.work.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.work.rng = x;
        x
    }

    fn pick(&mut self) -> Option<u32> {
        let n = self.work.units;
        if self.random {
            for _ in 0..32 {
                let u = (self.rand() % u64::from(n)) as u32;
                if !self.unit_busy[u as usize] {
                    return Some(u);
                }
            }
            None
        } else {
            for _ in 0..n {
                let u = self.seq_next;
                self.seq_next = if u + 1 == n { 0 } else { u + 1 };
                if !self.unit_busy[u as usize] {
                    return Some(u);
                }
            }
            None
        }
    }

    fn done_issuing(&self, stopping: bool) -> bool {
        stopping || self.work.quota.is_some_and(|q| self.issued >= q)
    }

    fn block_offset(&self, unit: u32) -> u64 {
        self.region_offset + (self.work.first_unit + u64::from(unit)) * u64::from(self.bs)
    }

    /// Issue requests up to the queue depth (and `budget`, decremented per request).
    fn fill(&mut self, now: Instant, budget: &mut u64, stopping: bool) {
        while self.inflight < self.qd
            && *budget > 0
            && !self.done_issuing(stopping)
            && self.wire.may_send()
        {
            let Some(unit) = self.pick() else { break };
            let Some(slot) = self.free.pop() else { break };
            let write = match self.read_pct {
                100 => false,
                0 => true,
                p => self.rand() % 100 >= p,
            };
            let offset = self.block_offset(unit);
            let mut generation = 0;
            if write {
                self.generation = self.generation.wrapping_add(1);
                if self.generation == UNKNOWN || self.generation == 0 {
                    self.generation = 1;
                }
                generation = self.generation;
                if self.slots.verify {
                    let bs = self.bs as usize;
                    let at = usize::from(slot) * bs;
                    verify::stamp(
                        &mut self.slots.payload[at..at + bs],
                        offset,
                        self.run,
                        generation,
                    );
                }
            }
            self.slots.st[usize::from(slot)] = Slot {
                busy: true,
                write,
                bad: false,
                unit,
                generation,
                got: 0,
                start: now,
            };
            let req = Req {
                slot,
                write,
                offset,
                len: self.bs,
            };
            let payload = if write { self.slots.payload(slot) } else { &[] };
            self.wire.request(&req, payload, &mut self.out);
            self.unit_busy[unit as usize] = true;
            self.inflight += 1;
            self.issued += 1;
            *budget -= 1;
        }
    }

    /// Write what is queued; returns when it is all sent or the socket is full.
    fn flush(&mut self) -> Result<()> {
        while self.sent < self.out.len() {
            match self.sock.write(&self.out[self.sent..]) {
                Ok(0) => bail!("the target stopped accepting data"),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("sending requests"),
            }
        }
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
        }
        Ok(())
    }

    /// Read and handle every reply available; true if any byte came.
    fn receive(&mut self, now: Instant, start: Instant, stats: &mut Stats) -> Result<bool> {
        let mut progress = false;
        loop {
            let space = self.inb.len() - self.have;
            if space == 0 {
                bail!(
                    "a reply larger than the receive buffer ({} bytes)",
                    self.inb.len()
                );
            }
            let n = match self.sock.read(&mut self.inb[self.have..]) {
                Ok(0) => bail!(
                    "the target closed the connection with {} request(s) outstanding",
                    self.inflight
                ),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("receiving replies"),
            };
            progress = true;
            self.have += n;
            let mut pos = 0;
            while pos < self.have {
                let buf = &self.inb[pos..self.have];
                let Some(p) = self.wire.parse(buf, &self.slots, &mut self.out)? else {
                    break;
                };
                ensure!(
                    p.used > 0 && p.used <= buf.len(),
                    "codec used {} of {} bytes",
                    p.used,
                    buf.len()
                );
                let data = match &p.data {
                    Some((at, r)) => {
                        ensure!(
                            r.end <= p.used && r.start <= r.end,
                            "data outside its reply"
                        );
                        Some((*at, &buf[r.clone()]))
                    }
                    None => None,
                };
                let Some(slot) = p.slot else {
                    ensure!(
                        p.data.is_none() && p.done.is_none(),
                        "data or status without a request"
                    );
                    pos += p.used;
                    continue;
                };
                handle(
                    &mut self.slots,
                    &mut self.work,
                    &mut self.unit_busy,
                    &mut self.free,
                    &mut self.inflight,
                    self.run,
                    self.region_offset,
                    self.bs,
                    stats,
                    slot,
                    data,
                    p.done,
                    now,
                    start,
                )?;
                pos += p.used;
            }
            self.inb.copy_within(pos..self.have, 0);
            self.have -= pos;
            if n < space {
                break;
            }
        }
        Ok(progress)
    }
}

#[allow(clippy::too_many_arguments)]
fn handle(
    slots: &mut Slots,
    work: &mut Work,
    unit_busy: &mut [bool],
    free: &mut Vec<u16>,
    inflight: &mut u32,
    run: u64,
    region_offset: u64,
    bs: u32,
    stats: &mut Stats,
    slot: u16,
    data: Option<(u32, &[u8])>,
    done: Option<u32>,
    now: Instant,
    start: Instant,
) -> Result<()> {
    let verify = slots.verify;
    let Some(s) = slots.st.get_mut(usize::from(slot)).filter(|s| s.busy) else {
        bail!("a reply for request {slot}, which is not outstanding");
    };
    let expected = work.expected[s.unit as usize];
    let known = expected != 0 && expected != UNKNOWN;
    if let Some((at, d)) = data {
        ensure!(!s.write, "read data in reply to write request {slot}");
        ensure!(
            u64::from(at) + d.len() as u64 <= u64::from(bs),
            "read data at {at}+{} beyond the request's {bs} bytes",
            d.len()
        );
        s.got = s.got.saturating_add(d.len() as u32);
        ensure!(
            s.got <= bs,
            "more read data for request {slot} than its {bs} bytes"
        );
        if verify && known && !s.bad {
            let block = region_offset + (work.first_unit + u64::from(s.unit)) * u64::from(bs);
            if let Some(m) = verify::check(d, at, block, run, expected) {
                s.bad = true;
                stats.mismatches += 1;
                if stats.mismatch_list.len() < verify::MAX_REPORTED {
                    stats.mismatch_list.push(m);
                }
            }
        }
    }
    let Some(status) = done else {
        return Ok(());
    };
    let measured = now >= start;
    if measured {
        let lat = now.saturating_duration_since(s.start).as_nanos() as u64;
        let lat = lat.clamp(1, LAT_MAX_NS);
        stats.all.saturating_record(lat);
        let sec = now.saturating_duration_since(start).as_secs() as usize;
        while stats.seconds.len() <= sec {
            stats.seconds.push(Second {
                ios: 0,
                hist: hist(2),
            });
        }
        stats.seconds[sec].ios += 1;
        stats.seconds[sec].hist.saturating_record(lat);
        stats.ios += 1;
        stats.end = now;
        if s.write {
            stats.writes += 1;
            stats.write.saturating_record(lat);
        } else {
            stats.reads += 1;
            stats.read.saturating_record(lat);
        }
    }
    if status != 0 {
        stats.errors += 1;
        if s.write {
            work.expected[s.unit as usize] = UNKNOWN;
        }
    } else {
        if measured {
            stats.bytes += u64::from(bs);
        }
        if s.write {
            work.expected[s.unit as usize] = s.generation;
        } else {
            ensure!(
                s.got == bs,
                "read request {slot} completed with {} of its {bs} bytes",
                s.got
            );
            if verify && known {
                stats.checked += 1;
            }
        }
    }
    s.busy = false;
    unit_busy[s.unit as usize] = false;
    free.push(slot);
    *inflight -= 1;
    Ok(())
}

/// Wait until one of `fds` is ready or `wait` passes; returns how many are ready.
fn wait(fds: &mut [libc::pollfd], wait: Duration) -> Result<usize> {
    let ts = libc::timespec {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_nsec: wait.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfd structs for
    // the duration of the call; `ts` lives on the stack across it; a null sigmask keeps the
    // thread's signal mask.
    let n = unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e).context("ppoll");
    }
    Ok(n as usize)
}

/// Drive `conns` until they are done; the body of each event-loop thread. Completions before
/// `measure_from` (the end of the warm-up; `start` for none) are not measured.
pub fn run_thread(
    mut conns: Vec<Conn>,
    start: Instant,
    measure_from: Instant,
    deadline: Option<Instant>,
    rate: Option<f64>,
    timeout: Duration,
) -> Result<ThreadOut> {
    let mut stats = Stats::new(measure_from);
    let mut issued = 0u64;
    let mut quiet_since = Instant::now();
    let mut fds: Vec<libc::pollfd> = conns
        .iter()
        .map(|c| libc::pollfd {
            fd: c.sock.as_raw_fd(),
            events: 0,
            revents: 0,
        })
        .collect();
    loop {
        let now = Instant::now();
        let stopping = deadline.is_some_and(|d| now >= d);
        let mut budget = match rate {
            Some(r) => ((r * (now - start).as_secs_f64()) as u64 + 1).saturating_sub(issued),
            None => u64::MAX,
        };
        let before = budget;
        // Nothing outstanding and every window open: nothing is owed by the target.
        if conns.iter().all(|c| c.inflight == 0 && c.wire.may_send()) {
            quiet_since = now;
        }
        for c in &mut conns {
            c.fill(now, &mut budget, stopping);
            c.flush()?;
        }
        issued += before - budget;
        if conns
            .iter()
            .all(|c| c.done_issuing(stopping) && c.inflight == 0 && c.out.is_empty())
        {
            break;
        }
        let mut slice = POLL_SLICE;
        if let Some(d) = deadline.filter(|_| !stopping) {
            slice = slice.min(d.saturating_duration_since(now));
        }
        if let Some(r) = rate {
            let idle = conns
                .iter()
                .any(|c| c.inflight < c.qd && !c.done_issuing(stopping));
            if idle && budget == 0 {
                let next = start + Duration::from_secs_f64((issued + 1) as f64 / r);
                slice = slice.min(next.saturating_duration_since(now));
            }
        }
        for (f, c) in fds.iter_mut().zip(&conns) {
            f.events = libc::POLLIN;
            if !c.out.is_empty() {
                f.events |= libc::POLLOUT;
            }
            f.revents = 0;
        }
        let ready = wait(&mut fds, slice)?;
        let now = Instant::now();
        if ready > 0 {
            for (f, c) in fds.iter().zip(conns.iter_mut()) {
                if f.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0
                    && c.receive(now, measure_from, &mut stats)?
                {
                    quiet_since = now;
                }
                if f.revents & libc::POLLOUT != 0 {
                    c.flush()?;
                }
            }
        }
        let outstanding: u32 = conns.iter().map(|c| c.inflight).sum();
        let shut = conns.iter().any(|c| c.inflight == 0 && !c.wire.may_send());
        if shut && outstanding == 0 && now.saturating_duration_since(quiet_since) > timeout {
            bail!(
                "the target kept its command window closed for {:.1} s with nothing outstanding",
                timeout.as_secs_f64()
            );
        }
        if outstanding > 0 && now.saturating_duration_since(quiet_since) > timeout {
            bail!(
                "no reply from the target for {:.1} s with {outstanding} request(s) outstanding",
                timeout.as_secs_f64()
            );
        }
    }
    // Say goodbye where the protocol has a way to (best effort: the run is over).
    for c in &mut conns {
        c.wire.goodbye(&mut c.out);
        let _ = c.sock.set_nonblocking(false);
        let _ = c.sock.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = c.sock.write_all(&c.out[c.sent..]);
    }
    let expected = conns
        .into_iter()
        .map(|c| (c.work.index, c.work.expected))
        .collect();
    Ok(ThreadOut { stats, expected })
}
