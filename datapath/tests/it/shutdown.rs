//! Clean shutdown: every write acknowledged before (or during) a stop is on the device after a
//! restart; exports are isolated and read-only exports refuse writes.

use crate::harness::{in_process, pattern};
use crate::rawnbd::*;
use std::io::Read;
use twinblk::frontend::nbd::proto::{self, cmd, err};

#[test]
fn every_write_acknowledged_across_a_stop_is_on_disk_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let vol = format!(
        "[[volume]]\nname='disk'\nbackend='uring'\nsize='64MiB'\npath='{}'\n",
        dir.path().join("disk.img").display()
    );
    for round in 0..3u64 {
        let (mut d, addr) = in_process(&vol);
        let mut c = Client::connect(addr, "disk", false);
        const N: u64 = 2000;
        let writer = {
            let mut s = c.s.try_clone().unwrap();
            std::thread::spawn(move || {
                use std::io::Write;
                for i in 0..N {
                    let mut b = Vec::with_capacity(28 + 4096);
                    b.extend_from_slice(&proto::REQUEST_MAGIC.to_be_bytes());
                    b.extend_from_slice(&0u16.to_be_bytes());
                    b.extend_from_slice(&cmd::WRITE.to_be_bytes());
                    b.extend_from_slice(&i.to_be_bytes());
                    b.extend_from_slice(&(i * 4096).to_be_bytes());
                    b.extend_from_slice(&4096u32.to_be_bytes());
                    b.extend_from_slice(&pattern(round * N + i + 1, 4096));
                    if s.write_all(&b).is_err() {
                        return;
                    }
                }
            })
        };
        // One write acknowledged first (on a loaded machine the writer may not have sent a
        // thing within the sleep below), then the stop, while the writer goes on.
        let mut acked = Vec::new();
        let mut shut = 0;
        let reply = |c: &mut Client, acked: &mut Vec<u64>, shut: &mut usize| {
            let mut h = [0u8; 16];
            if c.s.read_exact(&mut h).is_err() {
                return false;
            }
            assert_eq!(&h[0..4], &proto::SIMPLE_REPLY_MAGIC.to_be_bytes());
            let e = u32::from_be_bytes(h[4..8].try_into().unwrap());
            let cookie = u64::from_be_bytes(h[8..16].try_into().unwrap());
            match e {
                0 => acked.push(cookie),
                err::ESHUTDOWN => *shut += 1,
                other => panic!("unexpected error {other} for write {cookie}"),
            }
            true
        };
        assert!(
            reply(&mut c, &mut acked, &mut shut),
            "round {round}: no first reply"
        );
        std::thread::sleep(std::time::Duration::from_millis(5 + round * 10));
        let stopper = std::thread::spawn(move || {
            d.stop();
            d
        });
        // Collect replies until the server closes the connection.
        while reply(&mut c, &mut acked, &mut shut) {}
        let _ = writer.join();
        drop(stopper.join().unwrap());
        // Restart on the same file and check every acknowledged write.
        let (_d2, addr2) = in_process(&vol);
        let mut r = Client::connect(addr2, "disk", true);
        for &i in &acked {
            let got = r.read(i * 4096, 4096).unwrap();
            assert!(
                got == pattern(round * N + i + 1, 4096),
                "round {round}: acknowledged write {i} lost"
            );
        }
        r.disconnect();
        eprintln!(
            "round {round}: {} acknowledged, {shut} refused with ESHUTDOWN",
            acked.len()
        );
    }
}

#[test]
fn several_exports_are_isolated_and_read_only_is_enforced() {
    let (_d, addr) = in_process(
        "[[volume]]\nname='a'\nbackend='malloc'\nsize='1MiB'\n\
         [[volume]]\nname='b'\nbackend='malloc'\nsize='2MiB'\n\
         [[nbd.export]]\nname='a'\nvolume='a'\n\
         [[nbd.export]]\nname='b'\nvolume='b'\n\
         [[nbd.export]]\nname='b-ro'\nvolume='b'\nread_only=true\n",
    );
    let mut a = Client::connect(addr, "a", false);
    let mut b = Client::connect(addr, "b", true);
    let mut ro = Client::connect(addr, "b-ro", true);
    assert_eq!((a.size, b.size, ro.size), (1 << 20, 2 << 20, 2 << 20));
    assert_eq!(a.write(0, &[0xaa; 4096]), 0);
    assert_eq!(b.read(0, 4096).unwrap(), vec![0u8; 4096]);
    assert_eq!(b.write(0, &[0xbb; 4096]), 0);
    assert_eq!(ro.read(0, 4096).unwrap(), vec![0xbb; 4096]);
    assert_eq!(ro.write(0, &[1; 4096]), err::EPERM);
    ro.send_request(cmd::TRIM, 0, 9, 0, 4096, &[]);
    assert_eq!(ro.read_reply(0).1, err::EPERM);
    assert_eq!(a.read(0, 4096).unwrap(), vec![0xaa; 4096]);
    // Trim and write-zeroes read back as zeroes.
    b.send_request(cmd::WRITE_ZEROES, 0, 10, 0, 2048, &[]);
    assert_eq!(b.read_reply(0).1, 0);
    let got = b.read(0, 4096).unwrap();
    assert!(got[..2048].iter().all(|&x| x == 0) && got[2048..].iter().all(|&x| x == 0xbb));
    b.send_request(cmd::TRIM, 0, 11, 0, 4096, &[]);
    assert_eq!(b.read_reply(0).1, 0);
    assert_eq!(b.read(0, 4096).unwrap(), vec![0u8; 4096]);
    for c in [a, b, ro] {
        c.disconnect();
    }
}

#[test]
fn every_wait_policy_serves_pipelined_io_over_two_reactors() {
    use crate::harness::in_process_with;
    for wait in ["poll", "interrupt", "adaptive"] {
        let (mut d, addr) = in_process_with(
            &format!("cores=[0,1]\nwait='{wait}'\nspin_us=20"),
            "[[volume]]\nname='v'\nbackend='malloc'\nsize='8MiB'\n",
        );
        // Two connections: they land on different reactors (round-robin hand-off).
        let mut cs: Vec<Client> = (0..2).map(|_| Client::connect(addr, "v", true)).collect();
        for (n, c) in cs.iter_mut().enumerate() {
            for i in 0..64u64 {
                let off = (n as u64 * 64 + i) * 4096;
                c.send_request(cmd::WRITE, 0, i, off, 4096, &pattern(off + 1, 4096));
            }
            for _ in 0..64 {
                assert_eq!(c.read_reply(0).1, 0, "{wait}");
            }
        }
        for (n, c) in cs.iter_mut().enumerate() {
            for i in 0..64u64 {
                let off = (n as u64 * 64 + i) * 4096;
                assert!(
                    c.read(off, 4096).unwrap() == pattern(off + 1, 4096),
                    "{wait}: block {off}"
                );
            }
        }
        for c in cs {
            c.disconnect();
        }
        let per: Vec<u64> = d.shared().stats.iter().map(|s| s.snapshot().ios).collect();
        assert!(
            per.iter().all(|&n| n >= 64),
            "{wait}: I/O did not run on both reactors: {per:?}"
        );
        let msgs = d.shared().stats[1].snapshot().msgs;
        assert!(msgs >= 1, "{wait}: reactor 1 got its connection by message");
        d.stop();
    }
}

/// The control socket serves at most `MAX_CLIENTS` clients at a time (a thread each): one
/// more is told so and closed, and a slot frees when a client leaves.
#[test]
fn the_control_socket_serves_a_bounded_number_of_clients() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;
    use twinblk::control::MAX_CLIENTS;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("c.sock");
    let text = format!(
        "[reactor]\ncores=[0]\npin=false\n[nbd]\nlisten=['127.0.0.1:0']\n[nvmf]\nlisten=[]\n\
         [control]\nsocket='{}'\n[[volume]]\nname='vol0'\nbackend='malloc'\nsize=1048576\n",
        sock.display()
    );
    let cfg = twinblk::control::config::Config::from_toml(&text).unwrap();
    let mut d = twinblk::Daemon::start(&cfg).unwrap();
    // A refused client is told so and closed at once, so its request may meet a closed
    // socket (EPIPE): the answer to read is the refusal line either way.
    let ask = |s: &mut UnixStream| -> String {
        let _ = writeln!(s, r#"{{"jsonrpc":"2.0","id":1,"method":"volume_list"}}"#);
        let mut line = String::new();
        let _ = BufReader::new(s.try_clone().unwrap()).read_line(&mut line);
        line
    };
    let mut held: Vec<UnixStream> = (0..MAX_CLIENTS)
        .map(|_| {
            let mut s = UnixStream::connect(&sock).unwrap();
            assert!(ask(&mut s).contains("vol0"), "served");
            s
        })
        .collect();
    let mut extra = UnixStream::connect(&sock).unwrap();
    let mut line = String::new();
    BufReader::new(extra.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("too many control clients"), "{line}");
    let _ = writeln!(extra, "{{}}");
    drop(held.pop());
    // The freed slot is given to the next client (the server notices the close first).
    let t = std::time::Instant::now();
    loop {
        let mut s = UnixStream::connect(&sock).unwrap();
        let l = ask(&mut s);
        if l.contains("vol0") {
            break;
        }
        assert!(t.elapsed() < crate::harness::PATIENCE, "no slot freed: {l}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(held);
    d.stop();
}
