//! `twinblk-ctl verify`: an online comparison of a mirrored volume's two replicas, and
//! `twinblk-ctl hosts`: the hosts connected to each site.
//!
//! Model of `verify`: both sites are asked (`volume_checksums`, docs/control.md) for the
//! CRC32C of the same regions of their own replica, chunk by chunk, at the same time (one
//! thread per site), throttled to a rate the operator sets; regions whose checksums differ
//! are asked again a few times after a short wait ([`RECHECKS`], [`RECHECK_WAIT`]), and only
//! a region that differs in the first pass and in every re-check is reported. Writes keep
//! flowing meanwhile: the two sites read a region at slightly different moments, so a region
//! being written may differ for one pass; a region written without pause during every
//! re-check is reported too (run again in a quieter moment).
//!
//! Invariants: nothing is written anywhere; the comparison starts only when both sites
//! report the volume `up` with nothing dirty and no resync running, and it is void (exit
//! [`super::exit::NOT_IN_SYNC`]) when either site's session number changes before it ends
//! (a failover or resync in between makes differences expected, not a finding).

use super::{CallError, SiteArg, call_timeout, exit, site_report};
use serde::Serialize;
use serde_json::{Value, json};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Times a differing region is read again before it is reported.
pub const RECHECKS: u32 = 3;

/// Wait before each re-check: long enough for a write in flight at one site to land at both
/// (a mirrored write is acknowledged only once both replicas have it).
pub const RECHECK_WAIT: Duration = Duration::from_millis(250);

/// Bytes per call when no rate limit makes them fewer.
pub const CHUNK_BYTES: u64 = 32 << 20;

/// Regions per call at most (the daemon's own limit, `verify::MAX_CALL_REGIONS`).
const MAX_REGIONS_PER_CALL: u64 = 1 << 16;

/// How long one `volume_checksums` call may take (the daemon gives up at 60 s).
const CALL_TIMEOUT: Duration = Duration::from_secs(90);

/// What `verify` compares.
#[derive(Debug, Clone)]
pub struct VerifyOpts {
    /// The volume.
    pub volume: String,
    /// Region size in bytes.
    pub region: u64,
    /// Bytes per second read at each site (0: no limit).
    pub rate: u64,
    /// Print progress on stderr.
    pub progress: bool,
}

/// A region whose checksums differ.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Differ {
    /// First byte.
    pub offset: u64,
    /// Bytes.
    pub length: u64,
}

/// `verify`'s outcome.
#[derive(Serialize, Debug, Clone)]
pub struct VerifyReport {
    /// The volume.
    pub volume: String,
    /// The two sites compared (their `mirror.site` names).
    pub sites: Vec<String>,
    /// Volume size in bytes.
    pub size: u64,
    /// Region size in bytes.
    pub region: u64,
    /// The rate limit, bytes per second per site (0: none).
    pub rate_limit_bytes_per_s: u64,
    /// Regions compared.
    pub regions_compared: u64,
    /// Regions that differed in the first pass but matched on a re-check (writes in flight).
    pub settled_on_recheck: u64,
    /// Regions that differed in the first pass and in every re-check.
    pub differing: Vec<Differ>,
    /// No region differs.
    pub identical: bool,
    /// Seconds taken.
    pub elapsed_s: f64,
}

impl VerifyReport {
    /// `verify`'s exit code.
    pub fn exit_code(&self) -> i32 {
        if self.identical {
            exit::OK
        } else {
            exit::REPLICAS_DIFFER
        }
    }
}

/// Why `verify` did not compare, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A call failed (unreachable: exit 4; refused: exit 1).
    #[error(transparent)]
    Call(#[from] CallError),
    /// The command line cannot work (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The sites are not in a state where their replicas can be compared, or it changed
    /// during the comparison (exit 3).
    #[error("{0}")]
    NotInSync(String),
    /// Something else the sites answered makes the comparison impossible (exit 1).
    #[error("{0}")]
    Refused(String),
}

impl VerifyError {
    /// The exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            VerifyError::Call(e) => e.exit_code(),
            VerifyError::Usage(_) => exit::USAGE,
            VerifyError::NotInSync(_) => exit::NOT_IN_SYNC,
            VerifyError::Refused(_) => exit::ERROR,
        }
    }
}

/// One site's facts about the volume before the comparison.
struct Side {
    name: String,
    socket: std::path::PathBuf,
    session: u64,
}

/// The volume's size at `s`, and the site checked ready to compare.
fn prepare(s: &SiteArg, volume: &str) -> Result<(Side, u64), VerifyError> {
    let r = site_report(s);
    if !r.reachable {
        // The report keeps only text: ask again for the call's own error and exit code.
        call_timeout(&s.socket, "daemon_info", Value::Null, CALL_TIMEOUT)?;
        return Err(VerifyError::Refused(r.error.unwrap_or_default()));
    }
    let v = r
        .volumes
        .iter()
        .find(|v| v["name"] == volume)
        .ok_or_else(|| {
            VerifyError::Refused(format!("site {}: no volume named {volume:?}", r.name))
        })?;
    let size = v["size"].as_u64().unwrap_or(0);
    let m = r
        .mirrors
        .iter()
        .find(|m| m["volume"] == volume)
        .ok_or_else(|| {
            VerifyError::Refused(format!(
                "site {}: volume {volume:?} is not mirrored: there is no second replica to compare",
                r.name
            ))
        })?;
    let state = m["state"].as_str().unwrap_or("?");
    let mut why = Vec::new();
    if state != "up" {
        let detail = match state {
            "resyncing" => ": its replica is being resynced (incomplete until the resync ends)",
            "failed" => ": the volume is stopped there (see status)",
            "waiting" => ": it waits for its peer to decide which replica is current",
            "survivor" | "down" | "fenced" => {
                ": the sites are not mirroring, so the replicas are expected to differ"
            }
            _ => "",
        };
        why.push(format!("state {state}{detail}"));
    }
    if let Some(d) = m["dirty_bytes"].as_u64().filter(|d| *d > 0) {
        why.push(format!("{d} dirty bytes not yet copied to the peer"));
    }
    if m["resync_running"] == true {
        why.push("a resync is running".into());
    }
    if !why.is_empty() {
        return Err(VerifyError::NotInSync(format!(
            "{volume} at site {}: {}; verify compares replicas only while both sites are up and in sync (see `twinblk-ctl status`)",
            r.name,
            why.join(", ")
        )));
    }
    Ok((
        Side {
            name: r.name,
            socket: s.socket.clone(),
            session: m["session"].as_u64().unwrap_or(0),
        },
        size,
    ))
}

/// Both sites' checksums of `[offset, offset + length)` in regions of `region`, asked at
/// the same time; each answer checked to be of the session seen at the start.
fn both(
    sides: &[Side; 2],
    volume: &str,
    offset: u64,
    length: u64,
    region: u64,
) -> Result<[Vec<u32>; 2], VerifyError> {
    let ask = |s: &Side| -> Result<Vec<u32>, VerifyError> {
        let v = call_timeout(
            &s.socket,
            "volume_checksums",
            json!({"volume": volume, "offset": offset, "length": length, "region": region}),
            CALL_TIMEOUT,
        )?;
        let session = v["session"].as_u64().unwrap_or(0);
        if session != s.session || v["state"] != "up" {
            return Err(VerifyError::NotInSync(format!(
                "{volume} at site {}: the mirror changed during the comparison (state {}, session {} then {session}); the result would not be meaningful: run verify again once `twinblk-ctl status` is in sync",
                s.name, v["state"], s.session
            )));
        }
        let crcs: Vec<u32> = v["crc32c"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_u64().and_then(|c| u32::try_from(c).ok()))
                    .collect()
            })
            .unwrap_or_default();
        if crcs.len() as u64 != length.div_ceil(region) {
            return Err(VerifyError::Refused(format!(
                "site {}: {} checksums for {} regions",
                s.name,
                crcs.len(),
                length.div_ceil(region)
            )));
        }
        Ok(crcs)
    };
    let (a, b) = std::thread::scope(|t| {
        let a = t.spawn(|| ask(&sides[0]));
        let b = ask(&sides[1]);
        (a.join(), b)
    });
    let a = a.map_err(|_| VerifyError::Refused("a site's thread panicked".into()))?;
    Ok([a?, b?])
}

pub(crate) fn human_bytes(b: f64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}", U[i])
}

/// Compare the replicas of `o.volume` at the two sites given.
pub fn verify(sites: &[SiteArg], o: &VerifyOpts) -> Result<VerifyReport, VerifyError> {
    let [sa, sb] = sites else {
        return Err(VerifyError::Usage(format!(
            "verify compares two sites: give --socket twice (got {})",
            sites.len()
        )));
    };
    if o.region == 0 {
        return Err(VerifyError::Usage(
            "--region must be at least one block".into(),
        ));
    }
    // A site that does not answer is reported as such (exit 4) before any state is judged.
    for s in [sa, sb] {
        call_timeout(&s.socket, "daemon_info", Value::Null, CALL_TIMEOUT)?;
    }
    let (a, size_a) = prepare(sa, &o.volume)?;
    let (b, size_b) = prepare(sb, &o.volume)?;
    if a.name == b.name {
        // A replica compared with itself would always be "identical".
        return Err(VerifyError::Usage(format!(
            "{} and {} reach the same site {}: give each site's socket once",
            sa.socket.display(),
            sb.socket.display(),
            a.name
        )));
    }
    if size_a != size_b {
        return Err(VerifyError::Refused(format!(
            "{}: {size_a} bytes at site {}, {size_b} at site {}",
            o.volume, a.name, b.name
        )));
    }
    let sides = [a, b];
    let size = size_a;
    let region = o.region;
    // Chunks of whole regions: at most CHUNK_BYTES, about a quarter second of reading at
    // the rate limit, and never more regions than one call answers.
    let mut chunk = CHUNK_BYTES;
    if o.rate > 0 {
        chunk = chunk.min(o.rate / 4);
    }
    chunk = (chunk / region).clamp(1, MAX_REGIONS_PER_CALL) * region;
    let start = Instant::now();
    let mut last_print: Option<Instant> = None;
    let tty = std::io::stderr().is_terminal();
    let mut differ: Vec<u64> = Vec::new(); // region indexes
    let mut off = 0u64;
    while off < size {
        let len = chunk.min(size - off);
        let [ca, cb] = both(&sides, &o.volume, off, len, region)?;
        let first = off / region;
        differ.extend(
            ca.iter()
                .zip(&cb)
                .enumerate()
                .filter(|(_, (x, y))| x != y)
                .map(|(i, _)| first + i as u64),
        );
        off += len;
        if o.rate > 0 {
            // Each site read `off` bytes: keep the average at or under the rate.
            let due = Duration::from_secs_f64(off as f64 / o.rate as f64);
            if let Some(rest) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        if o.progress
            && (off == size || last_print.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)))
        {
            last_print = Some(Instant::now());
            let secs = start.elapsed().as_secs_f64().max(1e-3);
            let rate = off as f64 / secs;
            let left = (size - off) as f64 / rate.max(1.0);
            let line = format!(
                "verify {}: {:5.1}% of {}, {}/s, {:.0} s left, {} region(s) differ so far",
                o.volume,
                off as f64 * 100.0 / size as f64,
                human_bytes(size as f64),
                human_bytes(rate),
                left,
                differ.len()
            );
            let mut e = std::io::stderr();
            let _ = if tty {
                write!(e, "\r{line}\x1b[K{}", if off == size { "\n" } else { "" })
            } else {
                writeln!(e, "{line}")
            };
        }
    }
    let first_pass = differ.len() as u64;
    let regions = size.div_ceil(region);
    for _ in 0..RECHECKS {
        if differ.is_empty() {
            break;
        }
        std::thread::sleep(RECHECK_WAIT);
        let mut still = Vec::new();
        // Runs of adjacent differing regions, at most a chunk each.
        let mut i = 0;
        while i < differ.len() {
            let mut j = i + 1;
            while j < differ.len()
                && differ[j] == differ[j - 1] + 1
                && (differ[j] - differ[i] + 1) * region <= chunk
            {
                j += 1;
            }
            let from = differ[i] * region;
            let to = ((differ[j - 1] + 1) * region).min(size);
            let [ca, cb] = both(&sides, &o.volume, from, to - from, region)?;
            still.extend(
                ca.iter()
                    .zip(&cb)
                    .enumerate()
                    .filter(|(_, (x, y))| x != y)
                    .map(|(k, _)| differ[i] + k as u64),
            );
            i = j;
        }
        differ = still;
    }
    // The sessions must not have changed since the start (a resync between two chunks
    // would make the comparison meaningless): ask once more.
    for s in &sides {
        let st = call_timeout(&s.socket, "mirror_status", Value::Null, CALL_TIMEOUT)?;
        let m = st
            .as_array()
            .and_then(|a| a.iter().find(|m| m["volume"] == o.volume.as_str()))
            .cloned()
            .unwrap_or(Value::Null);
        if m["session"].as_u64() != Some(s.session) || m["state"] != "up" {
            return Err(VerifyError::NotInSync(format!(
                "{} at site {}: the mirror changed during the comparison (now state {}, session {}); run verify again once `twinblk-ctl status` is in sync",
                o.volume, s.name, m["state"], m["session"]
            )));
        }
    }
    Ok(VerifyReport {
        volume: o.volume.clone(),
        sites: sides.iter().map(|s| s.name.clone()).collect(),
        size,
        region,
        rate_limit_bytes_per_s: o.rate,
        regions_compared: regions,
        settled_on_recheck: first_pass - differ.len() as u64,
        identical: differ.is_empty(),
        differing: differ
            .iter()
            .map(|&k| Differ {
                offset: k * region,
                length: region.min(size - k * region),
            })
            .collect(),
        elapsed_s: start.elapsed().as_secs_f64(),
    })
}

/// `verify`'s text report.
pub fn render(r: &VerifyReport) -> String {
    let mut s = format!(
        "verify {}: {} region(s) of {} compared between site {} and site {} ({} in {:.1} s{})\n",
        r.volume,
        r.regions_compared,
        human_bytes(r.region as f64),
        r.sites.first().map_or("?", String::as_str),
        r.sites.get(1).map_or("?", String::as_str),
        human_bytes(r.size as f64),
        r.elapsed_s,
        if r.rate_limit_bytes_per_s > 0 {
            format!(
                ", at most {}/s",
                human_bytes(r.rate_limit_bytes_per_s as f64)
            )
        } else {
            String::new()
        }
    );
    if r.settled_on_recheck > 0 {
        s += &format!(
            "{} region(s) differed once and matched on a re-check (writes in flight)\n",
            r.settled_on_recheck
        );
    }
    if r.identical {
        s += "replicas identical\n";
    } else {
        s += &format!(
            "REPLICAS DIFFER: {} region(s) differ in every re-check:\n",
            r.differing.len()
        );
        for d in &r.differing {
            s += &format!("  offset {:>14}  length {:>10}\n", d.offset, d.length);
        }
    }
    s
}

/// One site's connected hosts (`host_list`).
#[derive(Serialize, Debug, Clone)]
pub struct SiteHosts {
    /// The site's name (its `mirror.site`; else the label or socket given).
    pub site: String,
    /// Its control socket.
    pub socket: std::path::PathBuf,
    /// Why it did not answer.
    pub error: Option<String>,
    /// Its connections (`host_list` records).
    pub hosts: Vec<Value>,
}

/// Ask every site for its connected hosts (of `volume` only, when given). The exit code is
/// [`exit::UNREACHABLE`] when a site did not answer, [`exit::ERROR`] when one refused.
pub fn hosts(sites: &[SiteArg], volume: Option<&str>) -> (Vec<SiteHosts>, i32) {
    let mut code = exit::OK;
    let params = volume.map_or(Value::Null, |v| json!({"volume": v}));
    let out = sites
        .iter()
        .map(|s| {
            let label = s
                .label
                .clone()
                .unwrap_or_else(|| s.socket.display().to_string());
            let name = call_timeout(
                &s.socket,
                "daemon_info",
                Value::Null,
                Duration::from_secs(10),
            )
            .ok()
            .and_then(|i| i["mirror"]["site"].as_str().map(str::to_string))
            .unwrap_or(label);
            match call_timeout(
                &s.socket,
                "host_list",
                params.clone(),
                Duration::from_secs(10),
            ) {
                Ok(v) => SiteHosts {
                    site: name,
                    socket: s.socket.clone(),
                    error: None,
                    hosts: v.as_array().cloned().unwrap_or_default(),
                },
                Err(e) => {
                    code = code.max(e.exit_code());
                    SiteHosts {
                        site: name,
                        socket: s.socket.clone(),
                        error: Some(e.to_string()),
                        hosts: Vec::new(),
                    }
                }
            }
        })
        .collect();
    (out, code)
}

/// `hosts`' text: per site, per volume, one line per connection.
pub fn render_hosts(sites: &[SiteHosts]) -> String {
    let mut s = String::new();
    for site in sites {
        if let Some(e) = &site.error {
            s += &format!(
                "site {}  {}  NOT ANSWERING: {e}\n\n",
                site.site,
                site.socket.display()
            );
            continue;
        }
        s += &format!(
            "site {}  {}  {} connection(s)\n",
            site.site,
            site.socket.display(),
            site.hosts.len()
        );
        // Volumes in the order first seen; a connection without a volume (NVMe discovery)
        // under "(none)".
        let mut vols: Vec<String> = Vec::new();
        for h in &site.hosts {
            let vs: Vec<String> = h["volumes"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            if vs.is_empty() && !vols.iter().any(|v| v == "(none)") {
                vols.push("(none)".into());
            }
            for v in vs {
                if !vols.contains(&v) {
                    vols.push(v);
                }
            }
        }
        for v in &vols {
            s += &format!("  volume {v}\n");
            s += &format!(
                "    {:<6} {:>3} {:<22} {:<12} {:>8} {:<40} {}\n",
                "proto", "rx", "peer", "queue", "inflight", "host", "target"
            );
            for h in &site.hosts {
                let on = h["volumes"].as_array().is_some_and(|a| {
                    if v == "(none)" {
                        a.is_empty()
                    } else {
                        a.iter().any(|x| x == v.as_str())
                    }
                });
                if !on {
                    continue;
                }
                let queue = match (h["queue"].as_u64(), h["controller"].as_u64()) {
                    (Some(q), Some(c)) => format!("q{q} ctrl {c}"),
                    _ => format!("conn {}", h["conn"]),
                };
                s += &format!(
                    "    {:<6} {:>3} {:<22} {:<12} {:>8} {:<40} {}\n",
                    h["proto"].as_str().unwrap_or("?"),
                    h["reactor"],
                    h["peer"].as_str().unwrap_or("-"),
                    queue,
                    h["inflight"],
                    h["host"].as_str().unwrap_or("-"),
                    h["target"].as_str().unwrap_or("-"),
                );
            }
        }
        s += "\n";
    }
    s
}
