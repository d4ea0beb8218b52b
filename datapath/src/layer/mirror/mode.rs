//! A mirrored volume's mode at this site: what its engine does with updates. Defined apart
//! from the engine so that what publishes it (statistics, path state) does not depend on the
//! engine; its one numeric encoding is the discriminant.

/// What the engine does with updates. Its one encoding as a number is the discriminant
/// (`mode as u8`, [`Mode::from_u8`]), used where a mode is published in an atomic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Both sites (or holding updates while the link is down).
    Mirroring = 0,
    /// This site holds the witness's grant: it acknowledges updates alone and records the
    /// regions they touch for the peer's resync.
    Survivor = 1,
    /// The witness gave the volume to the peer, or neither peer nor witness answered: no I/O.
    Fenced = 2,
    /// Receiving the survivor's changes: no I/O until the resync is done.
    Resyncing = 3,
    /// Just started from a persisted "in sync" state: no I/O until the first session shows
    /// whether the peer moved on meanwhile.
    Waiting = 4,
}

impl Mode {
    /// The mode whose discriminant is `v` (`None` for any other value).
    pub fn from_u8(v: u8) -> Option<Mode> {
        Some(match v {
            0 => Mode::Mirroring,
            1 => Mode::Survivor,
            2 => Mode::Fenced,
            3 => Mode::Resyncing,
            4 => Mode::Waiting,
            _ => return None,
        })
    }

    /// This site serves no I/O for the volume in this mode.
    pub fn serves_nothing(self) -> bool {
        matches!(self, Mode::Fenced | Mode::Resyncing | Mode::Waiting)
    }
}
