//! NVMe ANA with several mirrored volumes: each volume is its own ANA group, so one volume's
//! path state never shows on another's namespaces. Two sites mirror two volumes, `va` led by
//! site a and `vb` led by site b, both in one NVMe subsystem; the replication link is then cut
//! (a TCP proxy between the sites closes), each site keeps the volume it leads (the witness
//! grants each volume to its leader) and fences the other. Over NVMe/TCP with the project's
//! initiator, each site's ANA log shows each group in its own state, and I/O to the fenced
//! namespace answers ANA Inaccessible (SCT 3h, SC 02h), never a media error. The same pair
//! with the link cut under the Linux kernel's initiator is the last test (a guest).

use crate::failover::{KEY, WitnessProc};
use crate::harness::{Server, free_port, pattern};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use twinblk_tools::nvmf::{Controller, Opts, Queue, Sqe};

pub(crate) const NQN: &str = "nqn.2026-11.test:two-volumes";
const ANA_INACCESSIBLE: u16 = 0x302;

/// A TCP proxy to `127.0.0.1:to` that can be cut: open connections are shut down and new
/// ones refused (its listener closes); or paused and resumed: open connections are shut
/// down and new ones closed at once while paused, the listener kept (its port stays this
/// proxy's, so the sites' dials reach the peer again on `resume`).
pub(crate) struct Proxy {
    pub(crate) port: u16,
    cut: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub(crate) fn new(to: u16) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (c, p, k) = (Arc::clone(&cut), Arc::clone(&paused), Arc::clone(&conns));
        std::thread::spawn(move || {
            while !c.load(Ordering::SeqCst) {
                let Ok((down, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                if p.load(Ordering::SeqCst) {
                    // Paused: closed at once (dropped).
                    continue;
                }
                down.set_nonblocking(false).unwrap();
                let Ok(up) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                let _ = (down.set_nodelay(true), up.set_nodelay(true));
                let mut list = k.lock().unwrap();
                if c.load(Ordering::SeqCst) || p.load(Ordering::SeqCst) {
                    let _ = (down.shutdown(Shutdown::Both), up.shutdown(Shutdown::Both));
                    if c.load(Ordering::SeqCst) {
                        break;
                    }
                    continue;
                }
                for (mut from, mut into) in [
                    (down.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up.try_clone().unwrap(), down.try_clone().unwrap()),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut into);
                        let _ = into.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
                list.push(down);
                list.push(up);
            }
            // The listener closes here: the sites' dials are refused from now on.
        });
        Proxy {
            port,
            cut,
            paused,
            conns,
        }
    }

    pub(crate) fn cut(&self) {
        let list = self.conns.lock().unwrap();
        self.cut.store(true, Ordering::SeqCst);
        for s in list.iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Shut down the open connections and close new ones until [`Proxy::resume`].
    pub(crate) fn pause(&self) {
        let mut list = self.conns.lock().unwrap();
        self.paused.store(true, Ordering::SeqCst);
        for s in list.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Forward new connections again.
    pub(crate) fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }
}

fn site(
    root: &Path,
    me: &str,
    peer: &str,
    listen: u16,
    peer_port: u16,
    witness: &WitnessProc,
) -> Server {
    site_with(root, me, peer, listen, peer_port, witness, "", "")
}

/// A site of the two-volume pair (`va` led by a, `vb` by b, one NVMe subsystem [`NQN`] with
/// both), with `front` (TOML lines, e.g. an `[iscsi]` table) after the subsystem and `tail`
/// (TOML tables, e.g. `[[host]]`) after the volumes.
#[allow(clippy::too_many_arguments)]
pub(crate) fn site_with(
    root: &Path,
    me: &str,
    peer: &str,
    listen: u16,
    peer_port: u16,
    witness: &WitnessProc,
    front: &str,
    tail: &str,
) -> Server {
    site_sized(
        root, me, peer, listen, peer_port, witness, front, tail, "4MiB",
    )
}

/// As [`site_with`], with volumes of `size` (a TOML size string).
#[allow(clippy::too_many_arguments)]
pub(crate) fn site_sized(
    root: &Path,
    me: &str,
    peer: &str,
    listen: u16,
    peer_port: u16,
    witness: &WitnessProc,
    front: &str,
    tail: &str,
    size: &str,
) -> Server {
    let d = root.join(me);
    std::fs::create_dir_all(&d).unwrap();
    let key = root.join("witness.key");
    std::fs::write(&key, KEY).unwrap();
    let mut body = format!(
        "[reactor]\ncores=[0]\npin=false\n\
         [mirror]\nsite='{me}'\npeer_site='{peer}'\nlisten=['127.0.0.1:{listen}']\n\
         peer='127.0.0.1:{peer_port}'\npeer_timeout_ms=10000\npeer_dead_ms=400\n\
         witness='{}'\nwitness_key_file='{}'\nwitness_timeout_ms=1500\n",
        witness.addr,
        key.display()
    );
    for (v, leader) in [("va", "a"), ("vb", "b")] {
        body += &format!(
            "[[volume]]\nname='{v}'\nbackend='uring'\nsize='{size}'\npath='{}'\nmirror=true\nleader='{leader}'\n",
            root.join(format!("{me}-{v}.img")).display()
        );
    }
    body += tail;
    Server::start_nvmf(
        &d,
        &format!("[[nvmf.subsystem]]\nnqn='{NQN}'\nnamespaces=['va','vb']\n{front}"),
        &body,
    )
}

/// Each mirrored volume's state (`mirror_status`), by volume name.
fn states(s: &Server) -> Vec<(String, String)> {
    let st = s.rpc("mirror_status");
    st.as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
            (s("volume"), s("state"))
        })
        .collect()
}

/// Wait until the witness (started in `root`) records each volume's leader as its group's
/// preferred site (a for va, b for vb): a site tells it when its replica comes in sync, a
/// moment after both sites show "up", and until then a cut is granted to whichever site asks
/// first.
pub(crate) fn wait_claims(root: &Path) {
    let claims = || {
        let p = |v| crate::failover::witness_preferred(root, v);
        (p("va"), p("vb"))
    };
    crate::harness::wait_until(
        Duration::from_secs(10),
        || matches!(claims(), (Some(x), Some(y)) if x != y),
        || format!("the witness's preferred sites (va, vb): {:?}", claims()),
    );
}

pub(crate) fn wait_states(s: &Server, want: &[(&str, &str)]) {
    let t = Instant::now();
    loop {
        let got = states(s);
        let ok = want
            .iter()
            .all(|(v, st)| got.iter().any(|(gv, gs)| gv == v && gs == st));
        if ok {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "states {got:?}, wanted {want:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The ANA log page as (group id, state, nsids) per descriptor, checking its layout.
pub(crate) fn ana_log(c: &mut Controller) -> (u64, Vec<(u32, u8, Vec<u32>)>) {
    let b = c.log(0x0C, 0, 0, 4096).unwrap();
    let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let chgcnt = u64::from_le_bytes(b[0..8].try_into().unwrap());
    let ngrps = u16::from_le_bytes([b[8], b[9]]);
    let mut at = 16;
    let mut groups = Vec::new();
    for _ in 0..ngrps {
        let (id, n) = (u32_at(at), u32_at(at + 4));
        let state = b[at + 16] & 0x0F;
        let nsids = (0..n as usize).map(|i| u32_at(at + 32 + 4 * i)).collect();
        groups.push((id, state, nsids));
        at += 32 + 4 * n as usize;
    }
    (chgcnt, groups)
}

/// Wait until the site's ANA log shows `want` (group 1 = va = nsid 1, group 2 = vb = nsid 2).
fn wait_ana(c: &mut Controller, want: [u8; 2], what: &str) -> u64 {
    let t = Instant::now();
    loop {
        let (chg, groups) = ana_log(c);
        if groups == vec![(1, want[0], vec![1]), (2, want[1], vec![2])] {
            return chg;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{what}: ANA log {groups:?}, wanted states {want:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A one-block read and write on `nsid`: their statuses.
fn read_write(q: &mut Queue, nsid: u32) -> (u16, u16) {
    let r = q
        .cmd(Sqe::new(0x02).nsid(nsid).lba(0, 1), &[], 512)
        .unwrap();
    let w = q
        .cmd(Sqe::new(0x01).nsid(nsid).lba(8, 1), &pattern(5, 512), 0)
        .unwrap();
    (r.status, w.status)
}

#[test]
fn each_volume_is_its_own_ana_group_and_a_fenced_one_answers_ana_inaccessible() {
    let root = tempfile::tempdir().unwrap();
    let w = WitnessProc::start_with_grace(root.path(), KEY, None, crate::harness::PATIENCE);
    let (pa, pb) = (free_port(), free_port());
    // Each site reaches the other only through a proxy, so the link can be cut.
    let (to_a, to_b) = (Proxy::new(pa), Proxy::new(pb));
    let a = site(root.path(), "a", "b", pa, to_b.port, &w);
    let b = site(root.path(), "b", "a", pb, to_a.port, &w);
    for s in [&a, &b] {
        wait_states(s, &[("va", "up"), ("vb", "up")]);
    }
    wait_claims(root.path());
    let mut ca = Controller::connect(a.nvmf_addr, NQN, &Opts::default()).unwrap();
    let mut cb = Controller::connect(b.nvmf_addr, NQN, &Opts::default()).unwrap();
    for c in [&mut ca, &mut cb] {
        let id = c.identify(0x01, 0).unwrap();
        let u32_at = |at: usize| u32::from_le_bytes(id[at..at + 4].try_into().unwrap());
        assert_eq!((u32_at(344), u32_at(348)), (2, 2), "ANAGRPMAX, NANAGRPID");
        assert_eq!(c.ns_info(1).unwrap().anagrpid, 1, "va's group");
        assert_eq!(c.ns_info(2).unwrap().anagrpid, 2, "vb's group");
    }
    // Mirroring: each volume optimised at its leader, non-optimised at its follower.
    wait_ana(&mut ca, [0x01, 0x02], "site a, mirroring");
    let chg_b = wait_ana(&mut cb, [0x02, 0x01], "site b, mirroring");
    // Site b's controller asks for ANA change notices and holds an event request.
    let aen = Sqe::new(0x09).cdw(10, 0x0B).cdw(11, 1 << 11);
    assert_eq!(cb.admin.cmd(aen, &[], 0).unwrap().status, 0);
    let aer = cb.admin.submit(Sqe::new(0x0C), &[], 0).unwrap();

    to_a.cut();
    to_b.cut();
    // Each site keeps the volume it leads and fences the other.
    wait_states(&a, &[("va", "survivor"), ("vb", "fenced")]);
    wait_states(&b, &[("va", "fenced"), ("vb", "survivor")]);
    wait_ana(&mut ca, [0x01, 0x03], "site a, link cut");
    // The event request completes: notice, ANA change, log page 0Ch.
    let ka = cb.admin.submit(Sqe::new(0x18), &[], 0).unwrap();
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|x: &twinblk_tools::nvmf::Completion| x.cid == ka)
    {
        seen.push(cb.admin.complete().unwrap());
    }
    if !seen.iter().any(|x| x.cid == aer) {
        seen.push(cb.admin.complete().unwrap());
    }
    let ev = seen.iter().find(|x| x.cid == aer).expect("AER completed");
    assert_eq!(
        ev.result & 0xFF_FFFF,
        0x0C_03_02,
        "notice, ANA change, log 0Ch"
    );
    let chg_b2 = wait_ana(&mut cb, [0x03, 0x01], "site b, link cut");
    assert!(chg_b2 > chg_b, "change count {chg_b} -> {chg_b2}");

    // The fenced namespace answers ANA Inaccessible to a read and a write, never a media
    // error; the volume each site kept serves both.
    let mut qa = ca.io_queue(1, 8).unwrap();
    let mut qb = cb.io_queue(1, 8).unwrap();
    assert_eq!(
        read_write(&mut qa, 2),
        (ANA_INACCESSIBLE, ANA_INACCESSIBLE),
        "site a, vb"
    );
    assert_eq!(
        read_write(&mut qb, 1),
        (ANA_INACCESSIBLE, ANA_INACCESSIBLE),
        "site b, va"
    );
    assert_eq!(read_write(&mut qa, 1), (0, 0), "site a, va");
    assert_eq!(read_write(&mut qb, 2), (0, 0), "site b, vb");
    // The control socket agrees, per namespace.
    for (s, want) in [(&a, [1, 3]), (&b, [3, 1])] {
        let sub = s.rpc("nvmf_subsystems");
        let ns = &sub["subsystems"][0]["namespaces"];
        assert_eq!(
            (ns[0]["ana_group"].as_u64(), ns[1]["ana_group"].as_u64()),
            (Some(1), Some(2))
        );
        assert_eq!(
            (ns[0]["ana_state"].as_u64(), ns[1]["ana_state"].as_u64()),
            (Some(want[0]), Some(want[1])),
            "{sub}"
        );
    }
}

/// A host that sends nothing hears of a failover: site b's admin queue holds an Asynchronous
/// Event Request with ANA change notices on and sends no other command (KATO 0: no keep-alive
/// either); site a is killed. Each change of va's path state at b (va is led by a: fenced
/// while b asks the witness, then b's as the survivor) completes the held request by
/// itself (before, it waited for the host's next command: seconds with a real host's
/// keep-alive, for which Linux's I/O waited on a failover), and once the host has read each
/// event's log page and asked again, the log ends with both volumes optimised at b.
#[test]
fn an_idle_admin_queue_hears_of_a_failover_without_sending_anything() {
    let root = tempfile::tempdir().unwrap();
    let w = WitnessProc::start(root.path(), KEY, None);
    let (pa, pb) = (free_port(), free_port());
    let mut a = site(root.path(), "a", "b", pa, pb, &w);
    let b = site(root.path(), "b", "a", pb, pa, &w);
    for s in [&a, &b] {
        wait_states(s, &[("va", "up"), ("vb", "up")]);
    }
    let mut cb = Controller::connect(b.nvmf_addr, NQN, &Opts::default()).unwrap();
    wait_ana(&mut cb, [0x02, 0x01], "site b, mirroring");
    let aen = Sqe::new(0x09).cdw(10, 0x0B).cdw(11, 1 << 11);
    assert_eq!(cb.admin.cmd(aen, &[], 0).unwrap().status, 0);
    let mut aer = cb.admin.submit(Sqe::new(0x0C), &[], 0).unwrap();
    a.kill();
    let mut events = 0;
    loop {
        // Nothing else is sent: the completion must come by itself (the queue's read
        // timeout, 10 s, is the bound).
        let ev = cb
            .admin
            .complete()
            .unwrap_or_else(|e| panic!("event {events}: no completion came by itself: {e}"));
        assert_eq!(ev.cid, aer, "only the event request was outstanding");
        assert_eq!(
            ev.result & 0xFF_FFFF,
            0x0C_03_02,
            "notice, ANA change, log 0Ch"
        );
        events += 1;
        // Read the log (RAE clear: events again) and ask again, until b serves va.
        let (_, groups) = ana_log(&mut cb);
        if groups == vec![(1, 0x01, vec![1]), (2, 0x01, vec![2])] {
            break;
        }
        assert!(events < 10, "ANA log {groups:?} after {events} events");
        aer = cb.admin.submit(Sqe::new(0x0C), &[], 0).unwrap();
    }
    wait_states(&b, &[("va", "survivor"), ("vb", "survivor")]);
    eprintln!("site b's idle admin queue: {events} ANA change event(s) by itself");
}

/// A site dies under the kernel's NVMe/TCP initiator: two sites of a mirrored volume with a
/// witness and a `state_dir` each, the guest connected to both (native multipath; site a, the
/// leader, optimized). The guest writes a pattern through the namespace head a MiB at a time,
/// flushing each; at MiB 4 it asks for site a's SIGKILL and rewrites that MiB until it sees
/// site a's controller down, then writes the rest. Linux must carry the writes over to site b,
/// which serves once the witness grants it survivor: no write fails, the pattern reads back
/// whole through the head, site b's path turns ANA optimized, and the kernel log shows no I/O
/// error. Site a is then started again with its state: Linux reconnects to it by itself, its
/// path turns usable once site b resynced what it missed, and through site a alone (site b's
/// controller disconnected) the pattern reads back whole. Both replicas then hold the pattern
/// and mirror again. (The longest MiB write, what the failover cost the guest, is printed;
/// under TCG it is not a measure of the RTO.)
/// (The guest runs in `crate::linux_guest`; the test sits in this module, apart from the other
/// guest tests in name order, so that the two test threads seldom both wait for one guest.)
#[test]
fn linux_nvme_multipath_carries_on_at_site_b_when_site_a_is_killed() {
    crate::linux_guest::failover_guest(
        "linux_nvme_multipath_carries_on_at_site_b_when_site_a_is_killed",
        false,
    );
}

/// A planned switchover, then a cut of the link between the sites, under the kernel's NVMe/TCP
/// initiator, both sites up (`tools/guest/linux/nvme-split.sh`): the two volumes of this
/// module (`va` led by site a, `vb` by site b) with the guest placed at site b by the host
/// list, so Linux sends both volumes' I/O to site b. While the guest rewrites `vb` through
/// site b for 3 s, its leadership moves to site a (`mirror_switchover`, asked at b): no write
/// fails, the paths stay as they were, and the switchover answers done within the guest's
/// writes. The link is then cut among the guest's writes to both volumes; the witness grants each volume
/// to its leader (site a), site b fences both and Linux must move their writes to site a, live
/// paths it was not using, because site b answers new commands ANA Transition while it waits
/// for the witness and the writes it held ANA Inaccessible when it fences (a media error would
/// fail the guest's write). No write fails, both
/// patterns read back, the paths show both volumes at site a and, once the link is restored
/// and site b caught up, the mirroring states again; both patterns then read back through
/// site b alone. Last, site b is stopped cleanly (SIGTERM) among writes in flight there: none
/// fails and both patterns read back through site a; site b, started again, is caught up, and
/// all four replica files hold the final patterns (the guest's background rewrites alternate
/// two patterns, so a lost or reordered rewrite shows).
/// (The guest runs in `crate::linux_guest`.)
#[test]
fn linux_nvme_multipath_moves_a_fenced_volume_to_its_leaders_site_when_the_link_is_cut() {
    crate::linux_guest::split_guest(
        "linux_nvme_multipath_moves_a_fenced_volume_to_its_leaders_site_when_the_link_is_cut",
    );
}
