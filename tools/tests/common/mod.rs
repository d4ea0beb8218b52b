//! What the tools crate's tests against running sites share: an in-process witness, free
//! loopback ports, and running `twinblk-ctl` as an operator would. Each test file is its own crate and includes this with `mod common;`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

/// The sites' and the witness's shared key in these tests.
pub const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

/// A witness serving on 127.0.0.1 (a free port) in a thread of the test process, stopped when
/// dropped.
pub struct Witness {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its state file.
    pub state: PathBuf,
}

impl Witness {
    /// Start one with its state file in `dir`.
    pub fn start(dir: &Path) -> Witness {
        let state = dir.join("witness.state");
        let mut w = twinblk_witness::Witness::open(twinblk_witness::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            state: state.clone(),
            key: twinblk_witness::Key::new(KEY).unwrap(),
            tie_grace: Duration::from_millis(500),
            start_grace: Duration::ZERO,
            init: true,
        })
        .expect("witness");
        let addr = w.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = Some(std::thread::spawn(move || {
            let _ = w.serve(&s);
        }));
        Witness {
            stop,
            thread,
            addr,
            state,
        }
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP port free on 127.0.0.1 (probed by binding it), below the ephemeral range (as the
/// datapath's harness does). `salt` spreads different test binaries' sequences apart.
pub fn free_port(salt: u32) -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(salt) % 12_000,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..12_000 {
        let port = (20_000 + NEXT.fetch_add(1, Ordering::SeqCst) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port");
}

/// Run the `twinblk-ctl` binary with `args` (its output kept).
pub fn ctl(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_twinblk-ctl"))
        .args(args)
        .output()
        .unwrap()
}

/// Run `twinblk-ctl --socket SOCKET` with `args`.
pub fn ctl_at(socket: impl AsRef<Path>, args: &[&str]) -> std::process::Output {
    let s = socket.as_ref().display().to_string();
    let mut a = vec!["--socket", s.as_str()];
    a.extend_from_slice(args);
    ctl(&a)
}

/// A command's standard output followed by its standard error.
pub fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
