//! Starting and stopping in-process witnesses; small helpers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use twinblk_witness::{Config, Key, SiteId, Witness, WitnessClient};

pub const KEY: &[u8] = b"integration-test-key-0123456789";

pub fn key() -> Key {
    Key::new(KEY).expect("key")
}

pub fn site(n: u32) -> SiteId {
    SiteId::new(n).expect("nonzero site")
}

/// A witness serving on its own thread.
pub struct Running {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Witness>,
}

pub fn config(state: &Path, listen: SocketAddr, grace_ms: u64) -> Config {
    Config {
        listen,
        state: state.to_owned(),
        key: key(),
        tie_grace: Duration::from_millis(grace_ms),
        // (No start grace: these tests ask at once after a start; the start grace's own tests
        // are `state::tests` and the failover thread's.)
        start_grace: Duration::ZERO,
        init: true,
    }
}

/// Opens a witness on `listen` (port 0: any) with state file `state` and serves it.
pub fn start(state: &Path, listen: SocketAddr, grace_ms: u64) -> Running {
    let mut w = Witness::open(config(state, listen, grace_ms)).expect("witness opens");
    let addr = w.local_addr().expect("local addr");
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    let thread = std::thread::spawn(move || {
        w.serve(&s).expect("witness serves");
        w
    });
    Running { addr, stop, thread }
}

pub fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

impl Running {
    /// Stops the loop and drops nothing yet: returns the witness (its socket still bound).
    pub fn stop(self) -> Witness {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("witness thread")
    }
}

pub fn client(addr: SocketAddr, s: u32) -> WitnessClient {
    WitnessClient::new(addr, site(s), key()).expect("client")
}

pub fn state_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("witness.state")
}
