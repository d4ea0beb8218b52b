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

/// A drill configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DrillConfig {
    /// The mirrored volume the drill writes to.
    pub volume: String,
    /// The two sites.
    #[serde(rename = "site")]
    pub sites: Vec<SiteConfig>,
    /// The fault.
    pub fault: FaultConfig,
    /// The targets.
    pub targets: Targets,
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
        if !self.sites.iter().any(|s| s.name == self.fault.site) {
            return bad(format!(
                "fault.site = {:?} names neither site",
                self.fault.site
            ));
        }
        match self.fault.kind {
            FaultKind::Kill => {
                if self
                    .fault
                    .kill_command
                    .as_deref()
                    .unwrap_or("")
                    .trim()
                    .is_empty()
                    || self
                        .fault
                        .restart_command
                        .as_deref()
                        .unwrap_or("")
                        .trim()
                        .is_empty()
                {
                    return bad(
                        "fault kind kill needs kill_command and restart_command (the drill does not know how the site is run)"
                            .into(),
                    );
                }
            }
            FaultKind::CutSite | FaultKind::CutLink => {
                if self.fault.twinlink_control.is_none() || self.fault.links.is_empty() {
                    return bad(format!(
                        "fault kind {} needs twinlink_control and links (the twinlink links to cut)",
                        self.fault.kind.as_str()
                    ));
                }
            }
        }
        check_secs("fault.command_timeout_s", self.fault.command_timeout_s)?;
        check_secs("targets.max_rto_s", self.targets.max_rto_s)?;
        check_secs("targets.max_resync_s", self.targets.max_resync_s)?;
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

    /// The failing site's index in [`DrillConfig::sites`].
    pub fn victim_index(&self) -> usize {
        usize::from(self.sites[1].name == self.fault.site)
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
        assert_eq!(c.victim_index(), 1);
        assert_eq!(c.load.block_size, 4096);
        assert_eq!(
            c.sites[1].nbd_endpoint().unwrap(),
            ("127.0.0.1:10810".into(), "vol0".into())
        );
        assert_eq!(c.fault.kind, FaultKind::Kill);
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
        ] {
            let text = GOOD.replacen(from, to, 1);
            assert_ne!(text, GOOD, "{from}");
            assert!(DrillConfig::parse(p, &text).is_err(), "accepted: {to}");
        }
        for junk in ["", "\u{0}", "[[site]]", "volume = 3", "x = [1, {"] {
            assert!(DrillConfig::parse(p, junk).is_err());
        }
    }
}
