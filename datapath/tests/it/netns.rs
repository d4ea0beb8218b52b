//! The fault tests' hosts: site A, site B and the witness each in their own network
//! namespace, joined by veth links (A–B for replication, A–W and B–W to the witness), and the
//! test (the client) in the root namespace with a link to each site; partitions and slowed
//! links. Used by `netfault.rs`. Needs root (`ip netns`, `tc`).

use crate::harness::Server;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub(crate) fn sh(args: &[&str]) {
    let st = Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        st.success(),
        "{args:?} failed (these tests need root for ip netns)"
    );
}

/// Three namespaces and five links; removed on drop.
pub(crate) struct Hosts {
    pub(crate) ns: [String; 3],
    k: u32,
    dir: tempfile::TempDir,
    witness: Option<Child>,
}

pub(crate) const A: usize = 0;
pub(crate) const B: usize = 1;
pub(crate) const W: usize = 2;

impl Hosts {
    pub(crate) fn new() -> Hosts {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let k = 1 + (std::process::id() * 7 + n) % 250;
        let tag = format!("{}{}", std::process::id() % 10000, n);
        let ns = [
            format!("tb{tag}a"),
            format!("tb{tag}b"),
            format!("tb{tag}w"),
        ];
        // Leftovers of an earlier run with the same names (namespace removal is asynchronous).
        for l in 1..=2 {
            let _ = Command::new("ip")
                .args(["link", "del", &format!("tbv{k}l{l}e1")])
                .stderr(Stdio::null())
                .status();
        }
        for n in &ns {
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(Stdio::null())
                .status();
            sh(&["ip", "netns", "add", n]);
            sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
        }
        let h = Hosts {
            ns,
            k,
            dir: tempfile::tempdir().unwrap(),
            witness: None,
        };
        // (link, end 1 namespace or root, end 2 namespace)
        let links: [(u32, Option<usize>, usize); 5] = [
            (1, None, A),
            (2, None, B),
            (3, Some(A), B),
            (4, Some(A), W),
            (5, Some(B), W),
        ];
        for (l, one, two) in links {
            let (i1, i2) = (h.ifname(l, 1), h.ifname(l, 2));
            sh(&[
                "ip", "link", "add", &i1, "type", "veth", "peer", "name", &i2,
            ]);
            if let Some(one) = one {
                sh(&["ip", "link", "set", &i1, "netns", &h.ns[one]]);
            }
            sh(&["ip", "link", "set", &i2, "netns", &h.ns[two]]);
            let a1 = format!("{}/24", h.ip(l, 1));
            let a2 = format!("{}/24", h.ip(l, 2));
            match one {
                Some(one) => {
                    sh(&["ip", "-n", &h.ns[one], "addr", "add", &a1, "dev", &i1]);
                    sh(&["ip", "-n", &h.ns[one], "link", "set", &i1, "up"]);
                }
                None => {
                    sh(&["ip", "addr", "add", &a1, "dev", &i1]);
                    sh(&["ip", "link", "set", &i1, "up"]);
                }
            }
            sh(&["ip", "-n", &h.ns[two], "addr", "add", &a2, "dev", &i2]);
            sh(&["ip", "-n", &h.ns[two], "link", "set", &i2, "up"]);
        }
        h
    }

    pub(crate) fn ifname(&self, link: u32, end: u32) -> String {
        format!("tbv{}l{link}e{end}", self.k)
    }

    pub(crate) fn ip(&self, link: u32, end: u32) -> String {
        format!("10.{}.{link}.{end}", self.k)
    }

    pub(crate) fn key(&self) -> PathBuf {
        let p = self.dir.path().join("witness.key");
        if !p.exists() {
            std::fs::write(&p, b"netfault-test-key-0123456789abcdef").unwrap();
        }
        p
    }

    pub(crate) fn start_witness(&mut self) {
        let key = self.key();
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns[W],
                env!("CARGO_BIN_EXE_twinblk"),
                "witness",
            ])
            .args([
                "--listen",
                "0.0.0.0:7790",
                "--tie-grace-ms",
                "500",
                "--key-file",
            ])
            .arg(&key)
            .arg("--state")
            .arg(self.dir.path().join("witness.state"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("witness");
        let mut out = child.stdout.take().unwrap();
        let mut buf = [0u8; 64];
        let n = out.read(&mut buf).unwrap_or(0);
        assert!(n > 0, "the witness did not start");
        self.witness = Some(child);
    }

    pub(crate) fn kill_witness(&mut self) {
        if let Some(mut c) = self.witness.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start site `who` (A or B; A is the preferred site and leader) with extra `[mirror]`
    /// lines.
    pub(crate) fn site_with(&self, who: usize, extra: &str) -> Server {
        self.site_vol(who, extra, "backend='uring'\nsize='32MiB'")
    }

    /// As [`Hosts::site_with`], with the volume's backend and size lines given (`vol`, TOML;
    /// a `uring` volume gets its image path added).
    pub(crate) fn site_vol(&self, who: usize, extra: &str, vol: &str) -> Server {
        self.site_tail(who, extra, vol, "")
    }

    /// As [`Hosts::site_vol`], with TOML after the volume's lines (`tail`: its tables, such
    /// as `[volume.cdp]`).
    pub(crate) fn site_tail(&self, who: usize, extra: &str, vol: &str, tail: &str) -> Server {
        let (me, peer, front, repl_me, repl_peer, witness) = if who == A {
            (
                "a",
                "b",
                self.ip(1, 2),
                self.ip(3, 1),
                self.ip(3, 2),
                self.ip(4, 2),
            )
        } else {
            (
                "b",
                "a",
                self.ip(2, 2),
                self.ip(3, 2),
                self.ip(3, 1),
                self.ip(5, 2),
            )
        };
        let d = self.dir.path().join(me);
        std::fs::create_dir_all(&d).unwrap();
        let body = format!(
            "[reactor]\ncores=[0]\npin=false\n\
             [mirror]\nsite='{me}'\npeer_site='{peer}'\nlisten=['{repl_me}:7789']\n\
             peer='{repl_peer}:7789'\npeer_timeout_ms=10000\npeer_dead_ms=400\n\
             witness='{witness}:7790'\nwitness_key_file='{}'\nwitness_timeout_ms=1500\n{extra}\n\
             [[volume]]\nname='vol0'\n{vol}\n{}mirror=true\nleader='a'\n{tail}",
            self.key().display(),
            if vol.contains("'uring'") {
                format!(
                    "path='{}'\n",
                    self.dir.path().join(format!("{me}.img")).display()
                )
            } else {
                String::new()
            }
        );
        Server::start_in(&self.ns[who], &d, &front, &body)
    }

    /// Cut (or restore) the A–B link.
    /// Slow what A sends B down to a trickle (a token bucket of 1 Mbit/s on A's end of the
    /// A–B link: `tc`, iproute2, as `ip`; netem is not always available), or stop. False when
    /// the kernel has no `tbf` qdisc (the fault then runs unslowed).
    pub(crate) fn slow_ab(&self, slow: bool) -> bool {
        let dev = self.ifname(3, 1);
        let mut args = vec!["netns", "exec", &self.ns[A], "tc", "qdisc"];
        if slow {
            args.extend(["add", "dev", &dev, "root", "tbf", "rate", "1mbit"]);
            args.extend(["burst", "16kbit", "latency", "5s"]);
        } else {
            args.extend(["del", "dev", &dev, "root"]);
        }
        Command::new("ip")
            .args(&args)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    pub(crate) fn link_ab(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        sh(&[
            "ip",
            "-n",
            &self.ns[A],
            "link",
            "set",
            &self.ifname(3, 1),
            state,
        ]);
        sh(&[
            "ip",
            "-n",
            &self.ns[B],
            "link",
            "set",
            &self.ifname(3, 2),
            state,
        ]);
    }

    pub(crate) fn root(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.kill_witness();
        for n in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
        // The root ends of the links to A and B go with their peers.
    }
}
