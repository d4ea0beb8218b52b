//! The drill's configuration: a TOML file (docs/drill.md, "Configuration").
//!
//! Model: everything the drill needs to know about a cluster it does not run itself: each
//! site's control socket and NBD endpoint (for the load), the fault to inject and how to undo
//! it (shell commands for `kill`, twinlink links for `cut-site`/`cut-link`), the targets the
//! report is judged against, and where the key, the report and the history live.
//!
//! Invariants: [`DrillConfig::parse`] never panics on any input; a config it returns has
//! exactly two sites with distinct names, a fault naming one of them, a block size that is a
//! positive multiple of 512, and positive durations. The config hash is SHA-256 of the file's
//! bytes as read (so a comment change is a config change: the report names exactly what ran).

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML, or not the expected fields.
    #[error("{path}: {source}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// Why.
        source: toml::de::Error,
    },
    /// Parsed, but inconsistent.
    #[error("{0}")]
    Invalid(String),
}

/// One site as the drill sees it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// Its name (its `mirror.site`).
    pub name: String,
    /// Its control socket.
    pub socket: PathBuf,
    /// Its NBD endpoint for the load: `HOST:PORT/EXPORT`.
    pub nbd: String,
}

impl SiteConfig {
    /// `(HOST:PORT, EXPORT)` from [`SiteConfig::nbd`].
    pub fn nbd_endpoint(&self) -> Result<(String, String), ConfigError> {
        let s = self.nbd.strip_prefix("nbd://").unwrap_or(&self.nbd);
        match s.split_once('/') {
            Some((addr, export)) if !addr.is_empty() && !export.is_empty() => {
                Ok((addr.to_string(), export.to_string()))
            }
            _ => Err(ConfigError::Invalid(format!(
                "site {}: nbd = {:?}: expected HOST:PORT/EXPORT",
                self.name, self.nbd
            ))),
        }
    }
}

/// What kind of fault the drill injects.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// The site's process dies (`kill_command`), and is started again (`restart_command`).
    Kill,
    /// The site is cut off from everything (its twinlink links: host-facing, inter-site,
    /// witness), then restored.
    CutSite,
    /// Only the inter-site link is cut (both sites live and see the witness), then restored.
    CutLink,
}

impl FaultKind {
    /// The name used in the config and the report.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::CutSite => "cut-site",
            FaultKind::CutLink => "cut-link",
        }
    }
}

/// The fault and how to undo it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    /// The kind.
    pub kind: FaultKind,
    /// The site that fails (for `cut-link`: the site expected to lose; the witness decides).
    pub site: String,
    /// `kill`: a shell command (`sh -c`) that kills the site.
    pub kill_command: Option<String>,
    /// `kill`: a shell command that starts the site again and returns (it must not wait for
    /// the daemon to exit).
    pub restart_command: Option<String>,
    /// `cut-*`: twinlink's control socket.
    pub twinlink_control: Option<PathBuf>,
    /// `cut-*`: the twinlink links to cut (both directions) and later restore.
    #[serde(default)]
    pub links: Vec<String>,
    /// Most seconds an inject or restore command may take.
    #[serde(default = "default_command_timeout")]
    pub command_timeout_s: f64,
}

/// The targets the drill is judged against.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    /// Most seconds from the fault to the first write acknowledged at the survivor.
    pub max_rto_s: f64,
    /// Most acknowledged writes lost (0 for a synchronous mirror).
    #[serde(default)]
    pub max_rpo_writes: u64,
    /// Most seconds from the restore to both sites in sync again.
    pub max_resync_s: f64,
}

/// Where the outputs go.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// Directory for `drill-<ID>.json` and `drill-<ID>.html` (created if missing).
    pub dir: PathBuf,
    /// File holding the HMAC key (its bytes as they are; at least 16).
    pub key_file: PathBuf,
    /// The drill history (JSON lines), appended to.
    pub history: PathBuf,
    /// Earlier drills shown in the trend.
    #[serde(default = "default_trend")]
    pub trend: usize,
}

/// The load the drill runs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoadConfig {
    /// Bytes per write (a multiple of 512; at least 512, at most 1 MiB).
    #[serde(default = "default_block")]
    pub block_size: u32,
    /// Blocks each writer cycles over (writer i owns blocks `[first_block + i*n, first_block + (i+1)*n)`).
    #[serde(default = "default_blocks")]
    pub blocks_per_writer: u64,
    /// First block the drill writes (the drill overwrites its range: use a scratch volume or
    /// a range no one else uses).
    #[serde(default)]
    pub first_block: u64,
    /// Seconds a write (or a connect) may take before the writer gives up on that site.
    #[serde(default = "default_write_timeout")]
    pub write_timeout_s: f64,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            block_size: default_block(),
            blocks_per_writer: default_blocks(),
            first_block: 0,
            write_timeout_s: default_write_timeout(),
        }
    }
}

/// Durations of the drill's phases.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TimingConfig {
    /// Seconds of load before the fault (the latency baseline).
    #[serde(default = "default_baseline")]
    pub baseline_s: f64,
    /// Seconds of load after the survivor acknowledged again, before the restore.
    #[serde(default = "default_observe")]
    pub observe_s: f64,
    /// Seconds of load after both sites are in sync again.
    #[serde(default = "default_after")]
    pub after_s: f64,
    /// Milliseconds between two `mirror_status` polls of each site.
    #[serde(default = "default_poll")]
    pub poll_ms: u64,
    /// Most seconds to wait for the failover (the survivor acknowledging) before giving up.
    #[serde(default = "default_failover_wait")]
    pub failover_wait_s: f64,
    /// Most seconds to wait for the resync after the restore before giving up.
    #[serde(default = "default_resync_wait")]
    pub resync_wait_s: f64,
}

impl Default for TimingConfig {
    fn default() -> Self {
        TimingConfig {
            baseline_s: default_baseline(),
            observe_s: default_observe(),
            after_s: default_after(),
            poll_ms: default_poll(),
            failover_wait_s: default_failover_wait(),
            resync_wait_s: default_resync_wait(),
        }
    }
}

/// Which point of the history the sandbox view opens.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ViewPoint {
    /// The bookmark set while the load runs (the drill's point `T`).
    #[default]
    MidLoad,
    /// A bookmark set before the load started: a self-test of the check (the view then lacks
    /// every write acknowledged before `T`, and the drill must fail).
    BeforeLoad,
}

impl ViewPoint {
    /// The name used in the config and the report.
    pub fn as_str(self) -> &'static str {
        match self {
            ViewPoint::MidLoad => "mid-load",
            ViewPoint::BeforeLoad => "before-load",
        }
    }
}

/// The non-disruptive drill: a CDP sandbox view at one site, checked against the load.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    /// The site whose CDP history is viewed (its volume has `[volume.cdp]`).
    pub site: String,
    /// The `twinblk` binary that serves the view (default: `twinblk` next to `twinblk-ctl`).
    pub twinblk: Option<PathBuf>,
    /// The volume's CDP directory as seen from the drill's host (default: `cdp_status`'s
    /// `dir`; the view process runs on the drill's host and reads the directory directly).
    pub dir: Option<PathBuf>,
    /// The view's NBD listen address (`127.0.0.1:0`: any free port on loopback).
    #[serde(default = "default_view_nbd")]
    pub view_nbd: String,
    /// The point the view opens (`mid-load`; `before-load` only to prove the check fails).
    #[serde(default)]
    pub point: ViewPoint,
    /// Seconds of load before the bookmark (the latency baseline).
    #[serde(default = "default_baseline")]
    pub before_s: f64,
    /// Seconds of load after the bookmark before the view is opened.
    #[serde(default = "default_after")]
    pub after_s: f64,
    /// Most seconds to wait for the view to serve (then it is stopped and the drill fails).
    #[serde(default = "default_view_wait")]
    pub view_wait_s: f64,
    /// Blocks of the drill's range written and read back in the sandbox.
    #[serde(default = "default_sandbox_blocks")]
    pub sandbox_blocks: u64,
    /// Target: most seconds from starting the view process to its endpoints printed.
    pub max_view_open_s: f64,
    /// Target, optional: most ratio of production's median write latency while the view is
    /// open to its baseline median (unset: reported, not judged).
    pub max_latency_factor: Option<f64>,
}

/// A drill configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DrillConfig {
    /// The mirrored volume the drill writes to.
    pub volume: String,
    /// The two sites.
    #[serde(rename = "site")]
    pub sites: Vec<SiteConfig>,
    /// The fault (the disruptive drill; absent: only the sandbox drill runs).
    pub fault: Option<FaultConfig>,
    /// The disruptive drill's targets (with `[fault]` only).
    pub targets: Option<Targets>,
    /// The non-disruptive drill (after the disruptive one when both are given).
    pub sandbox: Option<SandboxConfig>,
    /// The outputs.
    pub report: ReportConfig,
    /// The load.
    #[serde(default)]
    pub load: LoadConfig,
    /// The phases' durations.
    #[serde(default)]
    pub timing: TimingConfig,
}

fn default_command_timeout() -> f64 {
    30.0
}
fn default_trend() -> usize {
    10
}
fn default_block() -> u32 {
    4096
}
fn default_blocks() -> u64 {
    256
}
fn default_write_timeout() -> f64 {
    5.0
}
fn default_baseline() -> f64 {
    2.0
}
fn default_observe() -> f64 {
    2.0
}
fn default_after() -> f64 {
    1.0
}
fn default_poll() -> u64 {
    10
}
fn default_failover_wait() -> f64 {
    30.0
}
fn default_resync_wait() -> f64 {
    300.0
}
fn default_view_nbd() -> String {
    "127.0.0.1:0".into()
}
fn default_view_wait() -> f64 {
    60.0
}
fn default_sandbox_blocks() -> u64 {
    64
}

/// Durations the config may give, in seconds: finite, positive, at most a day.
fn check_secs(what: &str, v: f64) -> Result<(), ConfigError> {
    if v.is_finite() && v > 0.0 && v <= 86_400.0 {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "{what} = {v}: expected seconds in (0, 86400]"
        )))
    }
}

impl DrillConfig {
    /// Parse and check `text` (read from `path`, named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<DrillConfig, ConfigError> {
        let c: DrillConfig = toml::from_str(text).map_err(|source| ConfigError::Toml {
            path: path.to_path_buf(),
            source,
        })?;
        c.validate()?;
        Ok(c)
    }

    /// Read, parse and check the file at `path`; the config and the SHA-256 (hex) of its bytes.
    pub fn load(path: &Path) -> Result<(DrillConfig, String), ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let text = String::from_utf8(bytes.clone())
            .map_err(|_| ConfigError::Invalid(format!("{}: not UTF-8 text", path.display())))?;
        let c = DrillConfig::parse(path, &text)?;
        Ok((c, hex(&Sha256::digest(&bytes))))
    }

    /// The consistency checks (see the module's invariants).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |s: String| Err(ConfigError::Invalid(s));
        if self.volume.is_empty() {
            return bad("volume: empty".into());
        }
        if self.sites.len() != 2 {
            return bad(format!(
                "expected exactly two [[site]] tables, found {}",
                self.sites.len()
            ));
        }
        if self.sites[0].name == self.sites[1].name || self.sites.iter().any(|s| s.name.is_empty())
        {
            return bad("the two sites need distinct, non-empty names".into());
        }
        for s in &self.sites {
            s.nbd_endpoint()?;
        }
        match (&self.fault, &self.targets) {
            (Some(f), Some(t)) => self.validate_fault(f, t)?,
            (None, None) => {}
            (Some(_), None) => return bad("[fault] needs [targets]".into()),
            (None, Some(_)) => {
                return bad("[targets] are the disruptive drill's: give [fault] too".into());
            }
        }
        match &self.sandbox {
            Some(sb) => self.validate_sandbox(sb)?,
            None if self.fault.is_none() => {
                return bad(
                    "nothing to drill: give [fault] (disruptive) and/or [sandbox] (non-disruptive)"
                        .into(),
                );
            }
            None => {}
        }
        let l = &self.load;
        if l.block_size < 512 || !l.block_size.is_multiple_of(512) || l.block_size > (1 << 20) {
            return bad(format!(
                "load.block_size = {}: expected a multiple of 512 up to 1 MiB",
                l.block_size
            ));
        }
        if l.blocks_per_writer == 0 || l.blocks_per_writer > (1 << 20) {
            return bad(format!(
                "load.blocks_per_writer = {}: expected 1 to 1048576",
                l.blocks_per_writer
            ));
        }
        let end = l
            .first_block
            .checked_add(l.blocks_per_writer * 2)
            .and_then(|b| b.checked_mul(u64::from(l.block_size)));
        if end.is_none() {
            return bad("load.first_block: the drill's range overflows".into());
        }
        check_secs("load.write_timeout_s", l.write_timeout_s)?;
        let t = &self.timing;
        check_secs("timing.baseline_s", t.baseline_s)?;
        check_secs("timing.observe_s", t.observe_s)?;
        check_secs("timing.after_s", t.after_s)?;
        check_secs("timing.failover_wait_s", t.failover_wait_s)?;
        check_secs("timing.resync_wait_s", t.resync_wait_s)?;
        if t.poll_ms == 0 || t.poll_ms > 10_000 {
            return bad(format!(
                "timing.poll_ms = {}: expected 1 to 10000",
                t.poll_ms
            ));
        }
        Ok(())
    }

    fn validate_fault(&self, f: &FaultConfig, t: &Targets) -> Result<(), ConfigError> {
        let bad = |s: String| Err(ConfigError::Invalid(s));
        if !self.sites.iter().any(|s| s.name == f.site) {
            return bad(format!("fault.site = {:?} names neither site", f.site));
        }
        match f.kind {
            FaultKind::Kill => {
                let empty = |c: &Option<String>| c.as_deref().unwrap_or("").trim().is_empty();
                if empty(&f.kill_command) || empty(&f.restart_command) {
                    return bad(
                        "fault kind kill needs kill_command and restart_command (the drill does not know how the site is run)"
                            .into(),
                    );
                }
            }
            FaultKind::CutSite | FaultKind::CutLink => {
                if f.twinlink_control.is_none() || f.links.is_empty() {
                    return bad(format!(
                        "fault kind {} needs twinlink_control and links (the twinlink links to cut)",
                        f.kind.as_str()
                    ));
                }
            }
        }
        if self.load.blocks_per_writer < 2 {
            // The fault's writes go to the range's second half (load.rs, "Regions").
            return bad(format!(
                "load.blocks_per_writer = {}: a drill with [fault] needs at least 2 (half for the writes before the fault, half for those after it)",
                self.load.blocks_per_writer
            ));
        }
        check_secs("fault.command_timeout_s", f.command_timeout_s)?;
        check_secs("targets.max_rto_s", t.max_rto_s)?;
        check_secs("targets.max_resync_s", t.max_resync_s)?;
        Ok(())
    }

    fn validate_sandbox(&self, sb: &SandboxConfig) -> Result<(), ConfigError> {
        let bad = |s: String| Err(ConfigError::Invalid(s));
        if !self.sites.iter().any(|s| s.name == sb.site) {
            return bad(format!("sandbox.site = {:?} names neither site", sb.site));
        }
        match sb.view_nbd.parse::<std::net::SocketAddr>() {
            Ok(a) if a.ip().is_loopback() => {}
            _ => {
                return bad(format!(
                    "sandbox.view_nbd = {:?}: expected a loopback IP:PORT (the view serves the drill only)",
                    sb.view_nbd
                ));
            }
        }
        check_secs("sandbox.before_s", sb.before_s)?;
        check_secs("sandbox.after_s", sb.after_s)?;
        check_secs("sandbox.view_wait_s", sb.view_wait_s)?;
        check_secs("sandbox.max_view_open_s", sb.max_view_open_s)?;
        if let Some(f) = sb.max_latency_factor
            && !(f.is_finite() && (1.0..=1e6).contains(&f))
        {
            return bad(format!(
                "sandbox.max_latency_factor = {f}: expected a ratio of at least 1"
            ));
        }
        if sb.sandbox_blocks == 0
            || sb.sandbox_blocks > self.load.blocks_per_writer.saturating_mul(2)
        {
            return bad(format!(
                "sandbox.sandbox_blocks = {}: expected 1 to the drill's {} blocks",
                sb.sandbox_blocks,
                self.load.blocks_per_writer.saturating_mul(2)
            ));
        }
        Ok(())
    }

    /// The index in [`DrillConfig::sites`] of the site named `name` (0 when none is: the
    /// validated config's names always match one).
    pub fn site_index(&self, name: &str) -> usize {
        usize::from(self.sites.len() > 1 && self.sites[1].name == name)
    }
}

/// Lower-case hex of `b`.
pub fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
volume = "vol0"
[[site]]
name = "a"
socket = "/tmp/a.sock"
nbd = "127.0.0.1:10809/vol0"
[[site]]
name = "b"
socket = "/tmp/b.sock"
nbd = "nbd://127.0.0.1:10810/vol0"
[fault]
kind = "kill"
site = "b"
kill_command = "kill -9 1234"
restart_command = "true"
[targets]
max_rto_s = 2
max_resync_s = 60
[report]
dir = "/tmp/r"
key_file = "/tmp/k"
history = "/tmp/h"
"#;

    #[test]
    fn a_good_config_parses_with_defaults() {
        let c = DrillConfig::parse(Path::new("x"), GOOD).unwrap();
        assert_eq!(c.site_index(&c.fault.as_ref().unwrap().site), 1);
        assert_eq!(c.load.block_size, 4096);
        assert_eq!(
            c.sites[1].nbd_endpoint().unwrap(),
            ("127.0.0.1:10810".into(), "vol0".into())
        );
        assert_eq!(c.fault.as_ref().unwrap().kind, FaultKind::Kill);
    }

    #[test]
    fn bad_configs_are_refused_not_panics() {
        let p = Path::new("x");
        for (from, to) in [
            ("kind = \"kill\"", "kind = \"explode\""),
            ("site = \"b\"", "site = \"c\""),
            ("kill_command = \"kill -9 1234\"", ""),
            ("max_rto_s = 2", "max_rto_s = -1"),
            ("max_rto_s = 2", "max_rto_s = nan"),
            (
                "nbd = \"127.0.0.1:10809/vol0\"",
                "nbd = \"127.0.0.1:10809\"",
            ),
            ("name = \"b\"", "name = \"a\""),
            ("volume = \"vol0\"", "volume = \"vol0\"\nbogus = 1"),
            ("[targets]", "[load]\nblock_size = 1000\n[targets]"),
            (
                "[targets]",
                "[load]\nfirst_block = 18446744073709551615\n[targets]",
            ),
            ("[targets]", "[timing]\npoll_ms = 0\n[targets]"),
            ("[targets]", "[load]\nblocks_per_writer = 1\n[targets]"),
        ] {
            let text = GOOD.replacen(from, to, 1);
            assert_ne!(text, GOOD, "{from}");
            assert!(DrillConfig::parse(p, &text).is_err(), "accepted: {to}");
        }
        // The sandbox drill alone: no [fault], no [targets].
        let head = &GOOD[..GOOD.find("[fault]").unwrap()];
        let report = &GOOD[GOOD.find("[report]").unwrap()..];
        let sb = format!("{head}{report}[sandbox]\nsite = \"b\"\nmax_view_open_s = 5\n");
        let c = DrillConfig::parse(p, &sb).unwrap();
        let s = c.sandbox.as_ref().unwrap();
        assert_eq!((c.site_index(&s.site), s.point), (1, ViewPoint::MidLoad));
        assert_eq!(s.view_nbd, "127.0.0.1:0");
        assert!(c.fault.is_none() && c.targets.is_none());
        for (from, to) in [
            ("site = \"b\"\nmax", "site = \"c\"\nmax"),
            ("max_view_open_s = 5", "max_view_open_s = 0"),
            ("max_view_open_s = 5", ""),
            (
                "max_view_open_s = 5",
                "max_view_open_s = 5\nview_nbd = \"10.0.0.1:1\"",
            ),
            (
                "max_view_open_s = 5",
                "max_view_open_s = 5\nview_nbd = \"x\"",
            ),
            (
                "max_view_open_s = 5",
                "max_view_open_s = 5\npoint = \"later\"",
            ),
            (
                "max_view_open_s = 5",
                "max_view_open_s = 5\nsandbox_blocks = 0",
            ),
            (
                "max_view_open_s = 5",
                "max_view_open_s = 5\nmax_latency_factor = 0.5",
            ),
            (
                "[sandbox]",
                "[targets]\nmax_rto_s = 2\nmax_resync_s = 1\n[sandbox]",
            ),
        ] {
            let text = sb.replacen(from, to, 1);
            assert_ne!(text, sb, "{from}");
            assert!(DrillConfig::parse(p, &text).is_err(), "accepted: {to}");
        }
        assert!(
            DrillConfig::parse(p, &format!("{head}{report}")).is_err(),
            "nothing to drill"
        );
        for junk in ["", "\u{0}", "[[site]]", "volume = 3", "x = [1, {"] {
            assert!(DrillConfig::parse(p, junk).is_err());
        }
    }
}
