//! Writing the replica state off the reactor: one persister thread per daemon (or, for an
//! engine built without one, per engine) that saves each volume's newest state with the
//! atomic [`state::save`] (and its activity log with [`alfile::save`], through a handle of its
//! own) and reports back through atomics.
//!
//! Model: an engine registers its state file once and gets a [`PersistHandle`]. At a mode
//! change it hands the handle a snapshot ([`Persisted`]) with the next *generation* of that
//! volume (1, 2, ...) and goes on at once; the reactor never waits for a disk. The persister
//! keeps at most one pending snapshot per volume (a newer one replaces an older one not yet
//! written: only the newest state matters), so its queue is bounded by the number of
//! volumes. It saves one volume at a time, outside its lock, and then publishes the
//! generation saved (`persisted`) or the generation whose save failed (`failed`, with the
//! error). The engine reads those two atomics when it polls; the I/O path takes no lock (the
//! queue's mutex is taken only at a mode change, and never held while writing).
//!
//! Invariants:
//! - `persisted() >= g` means a state at least as new as generation `g` is on disk (fsynced,
//!   renamed, directory fsynced); snapshots of one volume are written in generation order,
//!   never an older one after a newer one.
//! - `failed() != 0` is final for the handle: the state on disk is the last one persisted,
//!   and the engine stops serving the volume (fail-stop, see the engine's `durable.rs`).
//! - [`Persister::shutdown`] writes everything pending before the thread exits; after it,
//!   [`PersistHandle::submit`] saves inline (the daemon is stopping; nothing to stall).
//!
//! Test hooks ([`Persister::hold`], [`Persister::fail_saves`]) stand in for a slow or broken
//! disk.

use super::alfile::{self, AlSnapshot};
use super::state::{self, Persisted};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One volume's state file, as the engine sees it.
pub struct PersistHandle {
    name: String,
    path: PathBuf,
    /// Newest generation durable.
    persisted: AtomicU64,
    /// Generation whose save failed (0: none).
    failed: AtomicU64,
    /// Last generation given to [`PersistHandle::submit`].
    submitted: AtomicU64,
    /// The failure, once `failed` is set.
    error: Mutex<String>,
    shared: Arc<Shared>,
}

/// What a handle saves: a replica state file, or an activity log file.
#[derive(Clone, Debug)]
pub enum Snapshot {
    /// The replica state ([`state::save`]).
    State(Persisted),
    /// The activity log ([`alfile::save`]).
    ActLog(AlSnapshot),
    /// No state at all: the file removed ([`state::remove`]), after a fail-stop (durable.rs).
    Removed,
}

impl From<Persisted> for Snapshot {
    fn from(p: Persisted) -> Self {
        Snapshot::State(p)
    }
}

impl From<AlSnapshot> for Snapshot {
    fn from(s: AlSnapshot) -> Self {
        Snapshot::ActLog(s)
    }
}

struct Job {
    vol: Arc<PersistHandle>,
    generation: u64,
    state: Snapshot,
}

#[derive(Default)]
struct Queue {
    /// At most one job per volume.
    jobs: std::collections::VecDeque<Job>,
    /// Jobs taken by the thread and not finished yet.
    busy: usize,
    stop: bool,
    /// The thread has exited (saves are then inline).
    gone: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the thread (new work, stop, hold released).
    work: Condvar,
    /// Wakes waiters (a save finished).
    done: Condvar,
    hold: AtomicBool,
    fail: AtomicBool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The persister thread.
pub struct Persister {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Persister {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Persister")
    }
}

impl Persister {
    /// Place the thread, while it runs, with `place` (off the reactors' cores), under the lock
    /// [`Persister::shutdown`] takes to join it, so the handle is never one already joined.
    pub fn place<E>(&self, place: impl FnOnce(libc::pthread_t) -> Result<(), E>) -> Result<(), E> {
        use std::os::unix::thread::JoinHandleExt;
        match self
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            Some(t) => place(t.as_pthread_t()),
            None => Ok(()),
        }
    }

    /// Start the thread.
    pub fn spawn() -> std::io::Result<Arc<Persister>> {
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        let t = std::thread::Builder::new()
            .name("mirror-persist".into())
            .spawn(move || run(&s))?;
        Ok(Arc::new(Persister {
            shared,
            thread: Mutex::new(Some(t)),
        }))
    }

    /// A handle for the state file `path` of volume `name`.
    pub fn register(&self, name: &str, path: PathBuf) -> Arc<PersistHandle> {
        Arc::new(PersistHandle {
            name: name.to_string(),
            path,
            persisted: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            submitted: AtomicU64::new(0),
            error: Mutex::new(String::new()),
            shared: Arc::clone(&self.shared),
        })
    }

    /// Write everything pending, then stop the thread (the daemon's stop; idempotent).
    pub fn shutdown(&self) {
        self.shared.lock().stop = true;
        self.shared.work.notify_all();
        let t = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }

    /// Test hook: while held, nothing is written (a disk that takes its time).
    pub fn hold(&self, on: bool) {
        self.shared.hold.store(on, SeqCst);
        // Take the lock so a thread between its check and its wait sees the change.
        drop(self.shared.lock());
        self.shared.work.notify_all();
    }

    /// Test hook: every save fails (a state directory that takes no more writes, as a full
    /// file system: a removal still succeeds).
    pub fn fail_saves(&self, on: bool) {
        self.shared.fail.store(on, SeqCst);
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn save(shared: &Shared, job: &Job) -> std::io::Result<()> {
    if shared.fail.load(SeqCst) && !matches!(job.state, Snapshot::Removed) {
        return Err(std::io::Error::other("injected failure (test hook)"));
    }
    match &job.state {
        Snapshot::State(p) => state::save(&job.vol.path, p),
        Snapshot::ActLog(s) => alfile::save(&job.vol.path, s),
        Snapshot::Removed => state::remove(&job.vol.path),
    }
}

fn finish(job: &Job, r: std::io::Result<()>) {
    match r {
        Ok(()) => {
            job.vol.persisted.fetch_max(job.generation, SeqCst);
        }
        Err(e) => {
            *job.vol.error.lock().unwrap_or_else(|e| e.into_inner()) =
                format!("{}: {e}", job.vol.path.display());
            tracing::error!(volume = %job.vol.name, path = %job.vol.path.display(), error = %e,
                generation = job.generation, "mirror: cannot persist the replica state");
            // Never reset: the last state on disk stays the last one persisted.
            let _ = job
                .vol
                .failed
                .compare_exchange(0, job.generation, SeqCst, SeqCst);
        }
    }
}

fn run(shared: &Shared) {
    loop {
        let job = {
            let mut q = shared.lock();
            loop {
                if !shared.hold.load(SeqCst)
                    && let Some(j) = q.jobs.pop_front()
                {
                    q.busy += 1;
                    break j;
                }
                if q.stop && (q.jobs.is_empty() || shared.hold.load(SeqCst)) {
                    if q.jobs.is_empty() {
                        q.gone = true;
                        drop(q);
                        shared.done.notify_all();
                        return;
                    }
                    // Stopping while held: the hold is lifted for the drain.
                    shared.hold.store(false, SeqCst);
                    continue;
                }
                q = shared.work.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        let r = save(shared, &job);
        finish(&job, r);
        shared.lock().busy -= 1;
        shared.done.notify_all();
    }
}

impl PersistHandle {
    /// Queue `state` as the volume's next generation (replacing one not written yet) and
    /// return that generation. Never waits for the disk.
    pub fn submit(self: &Arc<Self>, state: impl Into<Snapshot>) -> u64 {
        let generation = self.submitted.fetch_add(1, SeqCst) + 1;
        let job = Job {
            vol: Arc::clone(self),
            generation,
            state: state.into(),
        };
        let mut q = self.shared.lock();
        if q.gone {
            drop(q);
            let r = save(&self.shared, &job);
            finish(&job, r);
            return generation;
        }
        match q.jobs.iter_mut().find(|j| Arc::ptr_eq(&j.vol, self)) {
            Some(j) => *j = job,
            None => q.jobs.push_back(job),
        }
        drop(q);
        self.shared.work.notify_one();
        generation
    }

    /// The last generation submitted (0: none yet).
    pub fn submitted(&self) -> u64 {
        self.submitted.load(SeqCst)
    }

    /// The newest generation durable (0: none yet).
    pub fn persisted(&self) -> u64 {
        self.persisted.load(SeqCst)
    }

    /// The generation whose save failed (0: none).
    pub fn failed(&self) -> u64 {
        self.failed.load(SeqCst)
    }

    /// Why the save failed (empty while none did).
    pub fn error(&self) -> String {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Block until generation `g` is durable or a save failed, at most `within`; true when
    /// durable. For a clean stop and tests, never on a reactor that serves I/O.
    pub fn wait(&self, g: u64, within: Duration) -> bool {
        let end = Instant::now() + within;
        let mut q = self.shared.lock();
        loop {
            if self.persisted() >= g {
                return true;
            }
            if self.failed() != 0 {
                return false;
            }
            let now = Instant::now();
            if now >= end {
                return false;
            }
            q = self
                .shared
                .done
                .wait_timeout(q, end - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(mode: u8, epoch: u64) -> Persisted {
        Persisted {
            mode,
            clean: false,
            epoch,
            size: 1 << 20,
            granularity: 65536,
            bitmap: vec![],
            written: vec![],
            led: true,
            suspect: Some(vec![]),
            identity: 0,
            leads: Some((0, false)),
            boot: 0,
            host_restarted: false,
            fenced_unanswered: None,
            fenced_denied: false,
        }
    }

    #[test]
    fn saves_run_on_the_thread_coalesce_and_report_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = Persister::spawn().unwrap();
        let path = dir.path().join("v.mirror-state");
        let h = p.register("v", path.clone());
        p.hold(true);
        // Held: submitting returns at once and nothing is on disk.
        let t = Instant::now();
        assert_eq!(h.submit(state(1, 7)), 1);
        assert_eq!(h.submit(state(2, 8)), 2);
        assert_eq!(h.submit(state(1, 9)), 3);
        assert!(t.elapsed() < Duration::from_millis(100));
        assert!(!h.wait(1, Duration::from_millis(50)));
        assert_eq!((h.persisted(), state::load(&path).unwrap()), (0, None));
        p.hold(false);
        assert!(h.wait(3, Duration::from_secs(10)));
        // Only the newest was written (the older ones were replaced while queued).
        assert_eq!(state::load(&path).unwrap(), Some(state(1, 9)));
        assert_eq!(h.failed(), 0);
    }

    #[test]
    fn a_failed_save_is_reported_and_final() {
        let dir = tempfile::tempdir().unwrap();
        let p = Persister::spawn().unwrap();
        // The directory does not exist: the temporary file cannot be created.
        let h = p.register("v", dir.path().join("gone").join("v.mirror-state"));
        let g = h.submit(state(1, 7));
        assert!(!h.wait(g, Duration::from_secs(10)));
        assert_eq!(h.failed(), g);
        assert!(h.error().contains("gone"), "{}", h.error());
        let h2 = p.register("w", dir.path().join("w.mirror-state"));
        p.fail_saves(true);
        assert!(!h2.wait(h2.submit(state(0, 0)), Duration::from_secs(10)));
        assert!(h2.error().contains("injected"));
    }

    #[test]
    fn shutdown_writes_what_is_pending() {
        let dir = tempfile::tempdir().unwrap();
        let p = Persister::spawn().unwrap();
        let path = dir.path().join("v.mirror-state");
        let h = p.register("v", path.clone());
        p.hold(true);
        h.submit(state(1, 3));
        p.shutdown();
        assert_eq!(h.persisted(), 1);
        assert_eq!(state::load(&path).unwrap(), Some(state(1, 3)));
        // After the thread is gone a save is inline.
        h.submit(state(2, 4));
        assert_eq!(h.persisted(), 2);
    }
}
