//! Test harness: an in-process daemon for protocol tests, and the real `twinblk` binary for
//! tests with clients nobody here wrote.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use twinblk::control::config::Config;

/// A daemon in this process on an ephemeral port, with `volumes` as TOML `[[volume]]` tables.
pub fn in_process(volumes_toml: &str) -> (twinblk::Daemon, SocketAddr) {
    in_process_with("cores=[0]\nwait='adaptive'", volumes_toml)
}

/// As [`in_process`], with the body of the `[reactor]` table given.
pub fn in_process_with(reactor_toml: &str, volumes_toml: &str) -> (twinblk::Daemon, SocketAddr) {
    let text = format!(
        "[reactor]\n{reactor_toml}\npin=false\n[nbd]\nlisten=['127.0.0.1:0']\n[nvmf]\nlisten=['127.0.0.1:0']\n[control]\nsocket=''\n{volumes_toml}"
    );
    let cfg = Config::from_toml(&text).expect("test config");
    let d = twinblk::Daemon::start(&cfg).expect("daemon starts");
    let addr = d.listeners()[0].1;
    (d, addr)
}

/// The NVMe/TCP listener of an in-process daemon.
pub fn nvmf_addr(d: &twinblk::Daemon) -> SocketAddr {
    d.listeners()
        .into_iter()
        .find(|(p, _)| *p == twinblk::daemon::Proto::Nvmf)
        .expect("an NVMe/TCP listener")
        .1
}

/// A `twinblk serve` process.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// The NVMe/TCP listener (from the `nvme+tcp://` line the daemon prints).
    pub nvmf_addr: SocketAddr,
    pub socket: PathBuf,
    pub config: PathBuf,
    /// The network namespace it runs in (tests with separate hosts).
    netns: Option<String>,
}

/// Fail clearly when a client tool is missing (the README's test command installs them).
pub fn need(tool: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success());
    assert!(
        ok.unwrap_or(false),
        "{tool} is not installed: run the README's test command, which installs it"
    );
}

impl Server {
    /// Start the binary with `body` (TOML without [nbd] and [control]) in `dir`.
    pub fn start(dir: &Path, body: &str) -> Server {
        Self::start_nvmf(dir, "", body)
    }

    /// As [`Server::start`], with `nvmf` (lines of TOML) added to the `[nvmf]` table.
    pub fn start_nvmf(dir: &Path, nvmf: &str, body: &str) -> Server {
        let socket = dir.join(format!("ctl-{}.sock", std::process::id()));
        let config = dir.join("twinblk.toml");
        let text = format!(
            "[nbd]\nlisten=['127.0.0.1:0']\n[nvmf]\nlisten=['127.0.0.1:0']\n{nvmf}\n[control]\nsocket='{}'\n{body}",
            socket.display()
        );
        std::fs::write(&config, text).unwrap();
        Self::start_with(config, socket, None)
    }

    /// Start the binary inside network namespace `netns`, its front ends on `ip` (port 0).
    pub fn start_in(netns: &str, dir: &Path, ip: &str, body: &str) -> Server {
        let socket = dir.join(format!("ctl-{}.sock", std::process::id()));
        let config = dir.join("twinblk.toml");
        let text = format!(
            "[nbd]\nlisten=['{ip}:0']\n[nvmf]\nlisten=['{ip}:0']\n[control]\nsocket='{}'\n{body}",
            socket.display()
        );
        std::fs::write(&config, text).unwrap();
        Self::start_with(config, socket, Some(netns.to_string()))
    }

    fn start_with(config: PathBuf, socket: PathBuf, netns: Option<String>) -> Server {
        let mut cmd = match &netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_twinblk")]);
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_twinblk")),
        };
        let mut child = cmd
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn twinblk");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                for (scheme, nvmf) in [("nbd://", false), ("nvme+tcp://", true)] {
                    if let Some(rest) = line.trim().strip_prefix(scheme) {
                        let hostport = rest.split('/').next().unwrap().to_string();
                        let _ = tx.send((nvmf, hostport));
                    }
                }
            }
        });
        let (mut nbd, mut nvmf) = (None, None);
        while nbd.is_none() || nvmf.is_none() {
            let (is_nvmf, hp) = rx
                .recv_timeout(PATIENCE)
                .expect("twinblk printed no endpoint");
            let a: SocketAddr = hp.parse().unwrap();
            if is_nvmf {
                nvmf = Some(a);
            } else {
                nbd = Some(a);
            }
        }
        Server {
            child,
            addr: nbd.unwrap(),
            nvmf_addr: nvmf.unwrap(),
            socket,
            config,
            netns,
        }
    }

    pub fn uri(&self, export: &str) -> String {
        format!("nbd://{}/{export}", self.addr)
    }

    /// SIGTERM and wait; true if it exited 0 within the deadline ([`PATIENCE`]: the daemon's
    /// own stop deadline is 10 s, and a loaded machine may take longer to exit after it).
    pub fn stop(&mut self) -> bool {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < PATIENCE {
            if let Some(st) = self.child.try_wait().unwrap() {
                if !st.success() {
                    eprintln!("twinblk ({}) exited with {st}", self.config.display());
                }
                return st.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "twinblk ({}) did not exit within {PATIENCE:?} of SIGTERM; killed",
            self.config.display()
        );
        let _ = self.child.kill();
        false
    }

    /// Send signal `sig` (e.g. `libc::SIGSTOP` to freeze the site, `SIGCONT` to resume it).
    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start again with the same config file (after `kill`).
    pub fn respawn(mut self) -> Server {
        self.respawn_in_place();
        self
    }

    /// Start again in place with the same config file (after `kill`).
    pub fn respawn_in_place(&mut self) {
        self.kill();
        let (config, socket, netns) =
            (self.config.clone(), self.socket.clone(), self.netns.clone());
        *self = Self::start_with(config, socket, netns);
    }

    /// Rewrite the config file so that a respawn listens for NVMe/TCP on the address it
    /// listens on now (hosts reconnect to the address they knew).
    pub fn keep_nvmf_addr(&self) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let kept = text.replacen(
            "[nvmf]\nlisten=['127.0.0.1:0']",
            &format!("[nvmf]\nlisten=['{}']", self.nvmf_addr),
            1,
        );
        assert_ne!(
            kept,
            text,
            "{}: no NVMe/TCP listener on port 0",
            self.config.display()
        );
        std::fs::write(&self.config, kept).unwrap();
    }

    /// Stop, then start again with the same config file.
    pub fn restart(mut self) -> Server {
        assert!(self.stop(), "clean stop failed");
        let (config, socket, netns) =
            (self.config.clone(), self.socket.clone(), self.netns.clone());
        Self::start_with(config, socket, netns)
    }

    /// One control-socket call, via the ctl logic (a line of JSON-RPC).
    pub fn rpc(&self, method: &str) -> serde_json::Value {
        self.rpc_with(method, serde_json::Value::Null)["result"].clone()
    }

    /// One control-socket call with parameters; the whole reply (result or error).
    pub fn rpc_with(&self, method: &str, params: serde_json::Value) -> serde_json::Value {
        rpc_at(&self.socket, method, params)
    }
}

/// One call to the control socket at `socket` (from a thread of its own while a test goes on).
pub fn rpc_at(socket: &Path, method: &str, params: serde_json::Value) -> serde_json::Value {
    let req = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    raw_at(socket, &req.to_string())
}

/// One call to the control socket at `socket` that must succeed: its result.
pub fn rpc_ok(socket: &Path, method: &str, params: serde_json::Value) -> serde_json::Value {
    let r = rpc_at(socket, method, params.clone());
    assert!(r.get("error").is_none(), "{method} {params}: {r}");
    r["result"].clone()
}

/// One raw request line to the control socket at `socket`; its answer, which must come within
/// [`PATIENCE`] and be JSON. (A daemon with no room answers "busy" at once and closes, maybe
/// before the request is written: EPIPE, seen once in CI; the answer is read either way.)
pub fn raw_at(socket: &Path, line: &str) -> serde_json::Value {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("control socket");
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let _ = writeln!(s, "{line}");
    let mut answer = String::new();
    BufReader::new(s)
        .read_line(&mut answer)
        .unwrap_or_else(|e| panic!("no answer within {PATIENCE:?} ({e}) to {}", short(line)));
    serde_json::from_str(&answer)
        .unwrap_or_else(|e| panic!("not an answer ({e}): {answer:?} to {}", short(line)))
}

/// A request line as a message shows it: its first 200 characters.
fn short(line: &str) -> String {
    line.chars().take(200).collect()
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Run a command, panic with its output unless it succeeds; return stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A free TCP port on loopback (bound and released; the caller binds it again at once).
/// A TCP port free on 127.0.0.1 for a server a test starts next.
///
/// Taken below the kernel's ephemeral range (`ip_local_port_range` starts at 32768 here), so
/// no outgoing connection of a parallel test can grab it between this check and the server's
/// bind; each call in this process gets a different port (a counter from a start that depends
/// on the process id), probed by binding it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000; // 20000..32000
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free TCP port in {LOW}..{}", LOW + SPAN);
}

/// Assert that two files (two sites' replicas) are byte-identical, by SHA-256.
#[track_caller]
pub fn same_files(a: &Path, b: &Path, what: &str) {
    assert_eq!(sha(a), sha(b), "{what}");
}

/// SHA-256 of a file, with the system's `sha256sum`.
pub fn sha(path: &Path) -> String {
    run(Command::new("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The first mirrored volume's state (`mirror_status`).
pub fn mirror_state(s: &Server) -> String {
    s.rpc("mirror_status")[0]["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// Wait until the first mirrored volume's state is `want`.
pub fn wait_mirror_state(s: &Server, want: &str, within: Duration) {
    let t = Instant::now();
    while mirror_state(s) != want {
        assert!(
            t.elapsed() < within,
            "state {} never became {want}",
            mirror_state(s)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How long a test waits for a condition that needs only the machine to make progress (a
/// state reached, a load's writes done): generous, since CI runs many daemons at once on two
/// cores; a wait that ends sooner costs nothing.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Wait until `cond` holds, polling every 5 ms; panic with `what()` after `within`.
#[track_caller]
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool, what: impl Fn() -> String) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < within, "not within {within:?}: {}", what());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A count of operations a load thread completed, shared with the test, so that the test
/// waits for the load's progress instead of sleeping for it (a loaded machine makes the load
/// slow: it is counted, not timed).
#[derive(Clone, Default)]
pub struct Progress(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Progress {
    /// One more operation done.
    pub fn tick(&self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Operations done so far.
    pub fn get(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Run `round` (a load of a fixed time) again until `enough` holds after it, at most
/// [`PATIENCE`] (then the caller's assertion reports it): a loaded machine does less in a
/// round's time, so a test that needs an amount of load counts it instead of timing it. A
/// fast machine runs one round.
pub fn rounds_until(mut round: impl FnMut(), mut enough: impl FnMut() -> bool) {
    let t = Instant::now();
    loop {
        round();
        if enough() || t.elapsed() > PATIENCE {
            return;
        }
        eprintln!("not enough load after a round: again");
    }
}

/// The counts of `all` now.
pub fn counts(all: &[Progress]) -> Vec<usize> {
    all.iter().map(Progress::get).collect()
}

/// Wait until each of `all` did `more` operations beyond `from` (its count then; at most
/// [`PATIENCE`]: a load that cannot go on for that long is a failure); `when` names the
/// moment in the failure.
#[track_caller]
pub fn wait_progress(all: &[Progress], from: &[usize], more: usize, when: &str) {
    wait_until(
        PATIENCE,
        || counts(all).iter().zip(from).all(|(d, f)| *d >= f + more),
        || {
            format!(
                "{when}: the load did not go on ({from:?} then {:?})",
                counts(all)
            )
        },
    );
}

/// When a test's association last heard from it (the Connect or a Keep Alive sent), for
/// [`retry_if_silent`]; `None` once its Keep Alive timer no longer runs.
pub type Alive = std::cell::Cell<Option<Instant>>;

/// Run `attempt` until it passes, at most 5 times, for a test whose NVMe/TCP association is
/// torn down `kato` after the last Connect or Keep Alive: `attempt` sets `alive` as it sends
/// them (and `None` once the timer is stopped). A loaded machine may leave a test silent that
/// long between two commands, and then the target rightly ends the association: a failure
/// after `kato` or more without one proves nothing and the attempt is made again; a failure
/// sooner, or with the timer stopped, is reported at once.
pub fn retry_if_silent(kato: Duration, attempt: impl Fn(&Alive)) {
    use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
    for n in 1.. {
        let alive: Alive = std::cell::Cell::new(Some(Instant::now()));
        let Err(e) = catch_unwind(AssertUnwindSafe(|| attempt(&alive))) else {
            return;
        };
        match alive.get().map(|t| t.elapsed()) {
            Some(silent) if silent >= kato && n < 5 => {
                eprintln!("attempt {n} failed after {silent:?} without a Keep Alive: again");
            }
            _ => resume_unwind(e),
        }
    }
}
