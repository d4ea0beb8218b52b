//! twinlink's control socket: JSON lines over a unix socket (docs/twinlink.md).
//!
//! Model: one accept thread, one thread per client (at most [`MAX_CLIENTS`]); each request
//! line gets one answer line, `{"ok": true, ...}` or `{"ok": false, "error": "..."}`. Bad input
//! never panics the proxy: every field is checked, unknown fields are refused (a typo must
//! not silently do nothing), and a line longer than [`MAX_LINE`] closes the client.

use super::{Dir, Proxy, Shape, ShapePatch};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::thread::JoinHandle;

/// Longest request line.
pub const MAX_LINE: usize = 16 * 1024;
/// Clients served at once.
pub const MAX_CLIENTS: usize = 8;

/// Answer one request line.
pub fn handle_line(proxy: &Proxy, line: &str) -> Value {
    match handle(proxy, line) {
        Ok(v) => v,
        Err(e) => json!({"ok": false, "error": e}),
    }
}

fn handle(proxy: &Proxy, line: &str) -> Result<Value, String> {
    let req: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(mut req) = req else {
        return Err("a request is a JSON object".into());
    };
    let cmd = match req.remove("cmd") {
        Some(Value::String(c)) => c,
        _ => return Err("missing \"cmd\" (status, set, cut, restore, reset)".into()),
    };
    let link = match req.remove("link") {
        None | Some(Value::Null) => None,
        Some(Value::String(l)) => Some(l),
        Some(_) => return Err("\"link\" must be a link's name".into()),
    };
    let dir: Dir = match req.remove("dir") {
        None | Some(Value::Null) => Dir::Both,
        Some(Value::String(d)) => d.parse()?,
        Some(_) => return Err("\"dir\" must be both, fwd or rev".into()),
    };
    let no_more = |req: &serde_json::Map<String, Value>| {
        if let Some(k) = req.keys().next() {
            return Err(format!("unknown field {k:?} for {cmd:?}"));
        }
        Ok(())
    };
    let patch = match cmd.as_str() {
        "status" => {
            no_more(&req)?;
            if let Some(l) = &link
                && proxy.addr(l).is_none()
            {
                return Err(format!("no link named {l:?}"));
            }
            let links: Vec<_> = proxy
                .status()
                .into_iter()
                .filter(|s| link.as_ref().is_none_or(|l| *l == s.name))
                .collect();
            return Ok(json!({"ok": true, "links": links}));
        }
        "set" => serde_json::from_value::<ShapePatch>(Value::Object(req))
            .map_err(|e| format!("set: {e}"))?,
        "cut" | "restore" => {
            no_more(&req)?;
            ShapePatch {
                cut: Some(cmd == "cut"),
                ..Default::default()
            }
        }
        "reset" => {
            no_more(&req)?;
            let d = Shape::default();
            ShapePatch {
                delay_ms: Some(d.delay_ms),
                jitter_ms: Some(d.jitter_ms),
                rate_bytes_per_s: Some(d.rate_bytes_per_s),
                loss: Some(d.loss),
                loss_delay_ms: Some(d.loss_delay_ms),
                cut: Some(d.cut),
            }
        }
        other => {
            return Err(format!(
                "unknown cmd {other:?} (status, set, cut, restore, reset)"
            ));
        }
    };
    proxy.set(link.as_deref(), dir, &patch)?;
    Ok(json!({"ok": true}))
}

/// A running control socket.
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Listen on `path` (a stale socket file there is replaced; a live one refused). The
    /// socket is 0600: only this user may reshape the links.
    pub fn start(path: &Path, proxy: Arc<Proxy>) -> std::io::Result<ControlServer> {
        use std::os::unix::fs::PermissionsExt;
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("{}: another twinlink listens there", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let clients = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::Builder::new()
            .name("twinlink-control".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop2.load(SeqCst) {
                        break;
                    }
                    let Ok(mut conn) = conn else { continue };
                    if clients.fetch_add(1, SeqCst) >= MAX_CLIENTS {
                        clients.fetch_sub(1, SeqCst);
                        let _ = writeln!(
                            conn,
                            "{}",
                            json!({"ok": false, "error": "too many control clients"})
                        );
                        continue;
                    }
                    let (proxy, clients) = (Arc::clone(&proxy), Arc::clone(&clients));
                    let spawned = std::thread::Builder::new()
                        .name("twinlink-ctl-conn".into())
                        .spawn({
                            let clients = Arc::clone(&clients);
                            move || {
                                serve(conn, &proxy);
                                clients.fetch_sub(1, SeqCst);
                            }
                        });
                    if spawned.is_err() {
                        clients.fetch_sub(1, SeqCst);
                    }
                }
            })?;
        Ok(ControlServer {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }

    /// Stop listening and remove the socket file.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, SeqCst);
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve(conn: UnixStream, proxy: &Proxy) {
    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(300)));
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        // Read at most MAX_LINE + 1 bytes of one line.
        match (&mut r).take(MAX_LINE as u64 + 1).read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.len() > MAX_LINE && !line.ends_with('\n') {
            let _ = writeln!(
                out,
                "{}",
                json!({"ok": false, "error": "request line too long"})
            );
            return;
        }
        if line.trim().is_empty() {
            continue;
        }
        let answer = handle_line(proxy, line.trim());
        if writeln!(out, "{answer}").is_err() {
            return;
        }
    }
}

/// Send one request line to the control socket at `path` and return the answer.
pub fn request(path: &Path, req: &Value) -> std::io::Result<Value> {
    let mut s = UnixStream::connect(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    writeln!(s, "{req}")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_requests_get_errors_not_panics() {
        let proxy = Proxy::start(
            &[(
                "l,127.0.0.1:0,127.0.0.1:9".parse().unwrap(),
                [Shape::default(); 2],
            )],
            1 << 20,
        )
        .unwrap();
        for bad in [
            "",
            "nope",
            "[]",
            "{}",
            r#"{"cmd": 3}"#,
            r#"{"cmd": "fly"}"#,
            r#"{"cmd": "set", "delay": 5}"#,
            r#"{"cmd": "set", "delay_ms": -5}"#,
            r#"{"cmd": "set", "delay_ms": "5"}"#,
            r#"{"cmd": "set", "loss": 2}"#,
            r#"{"cmd": "cut", "dir": "up"}"#,
            r#"{"cmd": "cut", "link": "zz"}"#,
            r#"{"cmd": "cut", "link": 7}"#,
            r#"{"cmd": "status", "extra": 1}"#,
            r#"{"cmd": "status", "link": "zz"}"#,
        ] {
            let a = handle_line(&proxy, bad);
            assert_eq!(a["ok"], false, "{bad}: {a}");
            assert!(a["error"].as_str().is_some_and(|e| !e.is_empty()), "{bad}");
        }
        // Nothing changed.
        assert_eq!(proxy.status()[0].fwd, Shape::default());
        let a = handle_line(
            &proxy,
            r#"{"cmd":"set","link":"l","dir":"rev","delay_ms":2.5}"#,
        );
        assert_eq!(a["ok"], true, "{a}");
        let st = proxy.status();
        assert_eq!(st[0].rev.delay_ms, 2.5);
        assert_eq!(st[0].fwd.delay_ms, 0.0);
        assert_eq!(
            handle_line(&proxy, r#"{"cmd":"cut","dir":"fwd"}"#)["ok"],
            true
        );
        assert!(proxy.status()[0].fwd.cut && !proxy.status()[0].rev.cut);
        assert_eq!(handle_line(&proxy, r#"{"cmd":"reset"}"#)["ok"], true);
        assert_eq!(proxy.status()[0].fwd, Shape::default());
        assert_eq!(proxy.status()[0].rev, Shape::default());
    }
}
