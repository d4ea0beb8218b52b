//! Replicated volume metadata (NVMe reservations): opaque commands and states carried between
//! the sites, decided by the leader (or a survivor alone).
//!
//! Model: the follower sends META and waits for the leader's META_STATE; the leader executes,
//! sends META_STATE to the follower and completes once its META_ACK comes. Entries wait in
//! `metas` (a slab) until answered or the session ends.
//!
//! Invariants: an entry stays until its answer even when its initiator was failed on the
//! timeout, so a late answer never completes a newer request; an unchanged answer decided on
//! state the follower may not have yet waits for every earlier change's META_ACK.

use super::*;

/// Decides and installs a volume's replicated metadata (NVMe reservations). The engine only
/// carries its opaque commands and states between the sites (docs/mirror-protocol.md).
pub trait MetaHandler: Send + Sync + std::fmt::Debug {
    /// Decide `cmd` at this site (the leader, or a survivor): its status (0: success) and,
    /// when the state changed, the new state to copy to the peer.
    fn execute(&self, vol: usize, cmd: &[u8]) -> (u16, Option<Vec<u8>>);
    /// Install a state the peer decided.
    fn install(&self, vol: usize, state: &[u8]) -> Install;
    /// This site's whole state of the volume, one META_STATE payload each.
    fn full_state(&self, vol: usize) -> Vec<Vec<u8>>;
}

/// What installing a peer's metadata state did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Install {
    /// Installed (and persisted).
    Done,
    /// Not a valid state: the message is refused and the link dropped.
    Malformed,
    /// Valid but not installed here (not configured here, or not persisted): logged, and
    /// reported to the peer in META_ACK; the link stays up.
    Failed,
}

/// Status 0x006, Internal Error.
pub(super) const META_INTERNAL: u16 = 6;

/// A metadata command's non-zero status travels to the initiator as `Errno(META_STATUS |
/// status)`.
pub const META_STATUS: i32 = 0x4000_0000;

/// The completion of a metadata command with `status`.
pub fn meta_result(status: u16) -> Result<(), Errno> {
    if status == 0 {
        Ok(())
    } else {
        Err(Errno(META_STATUS | i32::from(status)))
    }
}

impl Engine {
    /// A metadata command from this site's initiator.
    pub(super) fn submit_meta(&mut self, from: u32, tag: IoTag, cmd: &[u8]) -> Start {
        let Some(h) = self.cfg.meta.clone() else {
            return Start::Done(Err(Errno::NOTSUP));
        };
        let deadline = Instant::now() + self.cfg.peer_timeout;
        match (self.mode, self.cfg.role, self.sess.up) {
            (Mode::Survivor, _, _) => {
                // Alone; a peer being resynced meanwhile gets the change too.
                let (status, state) = h.execute(self.vol, cmd);
                if self.sess.up
                    && let Some(state) = state
                {
                    self.send_meta_state(wire::META_NO_ID, 0, &state);
                }
                Start::Done(meta_result(status))
            }
            (Mode::Mirroring, Role::Leader, true) => match h.execute(self.vol, cmd) {
                // Unchanged, but decided on state the follower may not have yet: answered
                // only once every earlier change is acknowledged.
                (status, None) if self.metas.iter().any(|(_, m)| m.token != 0) => {
                    self.metas.insert(MetaWait {
                        initiator: Some((from, tag)),
                        token: self.next_token - 1,
                        status,
                        deadline,
                    });
                    Start::Pending
                }
                (status, None) => Start::Done(meta_result(status)),
                (status, Some(state)) => {
                    let token = self.send_meta_state(wire::META_NO_ID, status, &state);
                    self.metas.insert(MetaWait {
                        initiator: Some((from, tag)),
                        token,
                        status,
                        deadline,
                    });
                    Start::Pending
                }
            },
            (Mode::Mirroring, Role::Follower, true) if cmd.len() <= wire::MAX_META as usize => {
                let k = self.metas.insert(MetaWait {
                    initiator: Some((from, tag)),
                    token: 0,
                    status: 0,
                    deadline,
                });
                let h = Header {
                    id: k as u32,
                    ..Header::new(Type::Meta)
                };
                self.sess.send(&h, cmd);
                Start::Pending
            }
            // No session and no grant: deciding alone could split the state.
            _ => Start::Done(Err(Errno::IO)),
        }
    }

    /// Send a metadata state (answering META `id`, or none); returns its token.
    pub(super) fn send_meta_state(&mut self, id: u32, status: u16, state: &[u8]) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        let h = Header {
            id,
            seq: token,
            count: u32::from(status),
            ..Header::new(Type::MetaState)
        };
        self.sess.send(&h, state);
        token
    }

    /// At a session start, the site whose replica wins sends its whole metadata state.
    pub(super) fn push_meta(&mut self) {
        if let Some(h) = self.cfg.meta.clone() {
            for state in h.full_state(self.vol) {
                self.send_meta_state(wire::META_NO_ID, 0, &state);
            }
        }
    }

    /// Fail every metadata command waiting for the peer (its effect is settled by the next
    /// session's full state).
    pub(super) fn fail_metas(&mut self) {
        for m in self.metas.drain() {
            if let Some((from, tag)) = m.initiator {
                self.done.push((from, tag, Err(Errno::IO)));
            }
        }
    }
}
