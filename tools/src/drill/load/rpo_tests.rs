//! The drill's RPO check against sites that lose acknowledged writes: two fake NBD "sites"
//! over one shared store (a mirror in sync), the first of which, at the fault, acknowledges
//! a few writes without storing them and then fails every request (as a leader that dies
//! with writes its peer never got). Every such write must be counted lost at the survivor,
//! however long the load runs on before the read-back.

use super::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::AtomicU32;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// One fake site: what it does with a write.
struct Site {
    /// Writes still to acknowledge without storing (after `dying` is set).
    lose_left: AtomicU32,
    /// Set: lose `lose_left` writes, then fail every request.
    dying: AtomicBool,
    /// Writes acknowledged but not stored: (offset).
    lost_offsets: Mutex<Vec<u64>>,
}

type Store = Arc<Mutex<HashMap<u64, Vec<u8>>>>;

fn serve(mut s: TcpStream, site: &Site, store: &Store, size: u64) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut g = NBDMAGIC.to_be_bytes().to_vec();
    g.extend_from_slice(&IHAVEOPT.to_be_bytes());
    g.extend_from_slice(&3u16.to_be_bytes());
    s.write_all(&g)?;
    let mut b4 = [0u8; 4];
    s.read_exact(&mut b4)?; // client flags
    // One NBD_OPT_GO.
    let mut h = [0u8; 16];
    s.read_exact(&mut h)?;
    let len = u32::from_be_bytes(h[12..16].try_into().unwrap()) as usize;
    let mut data = vec![0u8; len];
    s.read_exact(&mut data)?;
    let mut info = 0u16.to_be_bytes().to_vec();
    info.extend_from_slice(&size.to_be_bytes());
    info.extend_from_slice(&1u16.to_be_bytes());
    for (typ, d) in [(3u32, info), (1u32, Vec::new())] {
        let mut r = REPLY_MAGIC.to_be_bytes().to_vec();
        r.extend_from_slice(&7u32.to_be_bytes());
        r.extend_from_slice(&typ.to_be_bytes());
        r.extend_from_slice(&(d.len() as u32).to_be_bytes());
        r.extend_from_slice(&d);
        s.write_all(&r)?;
    }
    loop {
        let mut q = [0u8; 28];
        s.read_exact(&mut q)?;
        let cmd = u16::from_be_bytes([q[6], q[7]]);
        let cookie = &q[8..16];
        let offset = u64::from_be_bytes(q[16..24].try_into().unwrap());
        let len = u32::from_be_bytes(q[24..28].try_into().unwrap()) as usize;
        let reply = |err: u32, body: &[u8]| {
            let mut r = SIMPLE_REPLY_MAGIC.to_be_bytes().to_vec();
            r.extend_from_slice(&err.to_be_bytes());
            r.extend_from_slice(cookie);
            r.extend_from_slice(body);
            r
        };
        match cmd {
            1 => {
                let mut d = vec![0u8; len];
                s.read_exact(&mut d)?;
                let err = if site.dying.load(Ordering::SeqCst) {
                    let lose = site
                        .lose_left
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    if lose {
                        site.lost_offsets.lock().unwrap().push(offset);
                        0
                    } else {
                        5
                    }
                } else {
                    store.lock().unwrap().insert(offset, d);
                    0
                };
                s.write_all(&reply(err, &[]))?;
            }
            0 => {
                let d = store
                    .lock()
                    .unwrap()
                    .get(&offset)
                    .cloned()
                    .unwrap_or_else(|| vec![0u8; len]);
                s.write_all(&reply(0, &d))?;
            }
            _ => return Ok(()),
        }
    }
}

fn start_site(site: Arc<Site>, store: Store) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let (site, store) = (Arc::clone(&site), Arc::clone(&store));
            std::thread::spawn(move || {
                let _ = serve(s, &site, &store, 1 << 20);
            });
        }
    });
    addr
}

fn acked_at(w: &Writer, site: usize, after_us: u64) -> usize {
    let l = w.log.lock().unwrap();
    l.writes
        .iter()
        .filter(|x| x.ok && x.site == site && x.issued_us >= after_us)
        .count()
}

#[test]
fn writes_a_dying_site_acknowledged_are_counted_lost_at_the_survivor_however_long_the_load_runs_on()
{
    let store: Store = Arc::default();
    let sites: Vec<Arc<Site>> = (0..2)
        .map(|_| {
            Arc::new(Site {
                lose_left: AtomicU32::new(3),
                dying: AtomicBool::new(false),
                lost_offsets: Mutex::new(Vec::new()),
            })
        })
        .collect();
    let addrs: Vec<String> = sites
        .iter()
        .map(|s| start_site(Arc::clone(s), Arc::clone(&store)))
        .collect();
    let spec = WriterSpec {
        id: 0,
        targets: addrs.iter().map(|a| (a.clone(), "v".to_string())).collect(),
        block_size: 512,
        first_block: 0,
        blocks: 16,
        run: 42,
        timeout: Duration::from_secs(2),
    };
    let t0 = Instant::now();
    let ctl = Arc::new(LoadControl::default());
    ctl.drill_begins();
    let mut w = Writer::start(spec, t0, Arc::clone(&ctl)).unwrap();
    // Baseline: the writer goes round its blocks a few times.
    let deadline = Instant::now() + Duration::from_secs(10);
    while acked_at(&w, 0, 0) < 100 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(acked_at(&w, 0, 0) >= 100, "premise: the baseline load ran");
    // The fault: site 0 acknowledges 3 writes it never stores, then fails every request.
    let fault_us = u64::try_from(t0.elapsed().as_micros()).unwrap();
    ctl.fault_begins();
    sites[0].dying.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    while acked_at(&w, 1, fault_us) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        acked_at(&w, 1, fault_us) > 0,
        "premise: the survivor serves"
    );
    // The drill notices a poll later and reads back while the load runs on meanwhile.
    std::thread::sleep(Duration::from_millis(300));
    let ws = std::slice::from_ref(&w);
    let rb = paused(&ctl, ws, Duration::from_secs(2), || {
        check("b", &addrs[1], "v", ws, Duration::from_secs(2))
    });
    let lost_offsets = sites[0].lost_offsets.lock().unwrap().clone();
    assert_eq!(
        lost_offsets.len(),
        3,
        "premise: site 0 lost 3 acknowledged writes"
    );
    assert!(rb.complete, "{rb:?}");
    let mut found: Vec<u64> = rb.lost.iter().map(|l| l.block * 512).collect();
    found.sort_unstable();
    let mut want = lost_offsets.clone();
    want.sort_unstable();
    assert_eq!(
        found, want,
        "the read-back at the survivor must count exactly the writes the dying site acknowledged and lost"
    );
    // The load goes on afterwards, over the whole range.
    let n = acked_at(&w, 1, fault_us);
    let deadline = Instant::now() + Duration::from_secs(10);
    while acked_at(&w, 1, fault_us) < n + 50 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        acked_at(&w, 1, fault_us) >= n + 50,
        "the load resumes after the read-back"
    );
    ctl.stop.store(true, Ordering::SeqCst);
    w.join();
}
