//! Device errors and path states as NVMe statuses: the one table of the NVMe/TCP front end.
//!
//! Model: a block device completes with an [`Errno`] (plain data: one of the constants of
//! `crate::uring`, or a raw kernel error), or, for a reservation command on a mirrored volume,
//! with the status the leader site decided (`META_STATUS` set). [`status_of`] turns either into
//! the completion status of the command that failed; every place a device error becomes an NVMe
//! status (the queues in `conn`, the atomic sections' home in `atomic`) calls it. [`ana_state`]
//! and [`path_status`] turn a volume's published [`PathState`] into its ANA group's state and
//! into the status of I/O refused on that path.
//!
//! Invariants:
//! - [`ERRNO_TABLE`] lists every `Errno` constant exactly once (a unit test reads
//!   `uring/mod.rs` to check); an errno outside it is an Internal Error.
//! - A path that does not serve I/O never answers with a media error: I/O on an inaccessible or
//!   transitioning ANA group gets an ANA path status (SCT 3h), on which multipath hosts fail
//!   over or retry.

use super::cmd::{Status, ana, io};
use crate::bdev::volume::PathState;
use crate::uring::Errno;

/// What a device error becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// This status, whatever the command.
    Fixed(Status),
    /// A media error: Unrecovered Read Error for a read or compare, Write Fault for anything
    /// else, except a reservation command, for which it means the other site could not be
    /// reached and nothing was decided (Internal Error).
    Media,
}

/// Every device error a front end can be given (see [`Errno`]), and what it becomes.
pub const ERRNO_TABLE: [(Errno, &str, Outcome); 9] = [
    (Errno::INVAL, "INVAL", Outcome::Fixed(Status::INVALID_FIELD)),
    (Errno::IO, "IO", Outcome::Media),
    (
        Errno::MISCOMPARE,
        "MISCOMPARE",
        Outcome::Fixed(Status::COMPARE_FAILED),
    ),
    (Errno::NOSPC, "NOSPC", Outcome::Fixed(Status::LBA_RANGE)),
    (
        Errno::NOTSUP,
        "NOTSUP",
        Outcome::Fixed(Status::INVALID_OPCODE),
    ),
    (
        Errno::PERM,
        "PERM",
        Outcome::Fixed(Status::NS_WRITE_PROTECTED),
    ),
    (
        Errno::SHUTDOWN,
        "SHUTDOWN",
        Outcome::Fixed(Status::NS_NOT_READY),
    ),
    (
        Errno::UNAVAILABLE,
        "UNAVAILABLE",
        Outcome::Fixed(Status::ANA_INACCESSIBLE),
    ),
    (
        Errno::TRANSITION,
        "TRANSITION",
        Outcome::Fixed(Status::ANA_TRANSITION),
    ),
];

/// The NVMe status for a device error of command `op`.
pub fn status_of(e: Errno, op: u8) -> Status {
    use crate::layer::mirror::engine::META_STATUS;
    if e.0 & META_STATUS != 0 {
        // A reservation command's status, decided by the mirror's leader site.
        return Status((e.0 & 0xFFFF) as u16);
    }
    match ERRNO_TABLE.iter().find(|(x, _, _)| *x == e) {
        Some(&(_, _, Outcome::Fixed(s))) => s,
        Some((_, _, Outcome::Media)) => match op {
            io::RESV_REGISTER | io::RESV_ACQUIRE | io::RESV_RELEASE => Status::INTERNAL,
            io::READ | io::COMPARE => Status::READ_ERROR,
            _ => Status::WRITE_FAULT,
        },
        None => Status::INTERNAL,
    }
}

/// The ANA state (log page, ANA group descriptor byte 16) of a group whose volume publishes
/// `p`.
pub fn ana_state(p: PathState) -> u8 {
    match p {
        PathState::Optimized => ana::OPTIMIZED,
        PathState::NonOptimized => ana::NON_OPTIMIZED,
        PathState::Inaccessible => ana::INACCESSIBLE,
        PathState::Transitioning => ana::CHANGE,
    }
}

/// `Err(status)` for I/O to a namespace whose volume publishes `p` and is not served here.
pub fn path_status(p: PathState) -> Result<(), Status> {
    match p {
        PathState::Optimized | PathState::NonOptimized => Ok(()),
        PathState::Inaccessible => Err(Status::ANA_INACCESSIBLE),
        PathState::Transitioning => Err(Status::ANA_TRANSITION),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `pub const NAME: Errno` in `uring/mod.rs`.
    fn declared_errnos() -> Vec<String> {
        include_str!("../../uring/mod.rs")
            .lines()
            .filter_map(|l| {
                let rest = l.trim().strip_prefix("pub const ")?;
                let (name, ty) = rest.split_once(':')?;
                ty.trim_start()
                    .starts_with("Errno =")
                    .then(|| name.trim().to_string())
            })
            .collect()
    }

    #[test]
    fn the_table_covers_every_errno_constant_once() {
        let declared = declared_errnos();
        assert!(declared.len() >= 7, "{declared:?}");
        let mut listed: Vec<String> = ERRNO_TABLE.iter().map(|(_, n, _)| n.to_string()).collect();
        listed.sort();
        let mut want = declared.clone();
        want.sort();
        assert_eq!(
            listed, want,
            "ERRNO_TABLE must name each Errno constant once"
        );
        let mut values: Vec<i32> = ERRNO_TABLE.iter().map(|(e, _, _)| e.0).collect();
        values.sort();
        values.dedup();
        assert_eq!(values.len(), ERRNO_TABLE.len(), "two entries for one errno");
    }

    #[test]
    fn every_errno_constant_maps_to_its_status() {
        // (errno, status of a read, of a write, of a reservation Register).
        let cases = [
            (
                Errno::INVAL,
                Status::INVALID_FIELD,
                Status::INVALID_FIELD,
                Status::INVALID_FIELD,
            ),
            (
                Errno::IO,
                Status::READ_ERROR,
                Status::WRITE_FAULT,
                Status::INTERNAL,
            ),
            (
                Errno::MISCOMPARE,
                Status::COMPARE_FAILED,
                Status::COMPARE_FAILED,
                Status::COMPARE_FAILED,
            ),
            (
                Errno::NOSPC,
                Status::LBA_RANGE,
                Status::LBA_RANGE,
                Status::LBA_RANGE,
            ),
            (
                Errno::NOTSUP,
                Status::INVALID_OPCODE,
                Status::INVALID_OPCODE,
                Status::INVALID_OPCODE,
            ),
            (
                Errno::PERM,
                Status::NS_WRITE_PROTECTED,
                Status::NS_WRITE_PROTECTED,
                Status::NS_WRITE_PROTECTED,
            ),
            (
                Errno::SHUTDOWN,
                Status::NS_NOT_READY,
                Status::NS_NOT_READY,
                Status::NS_NOT_READY,
            ),
            (
                Errno::UNAVAILABLE,
                Status::ANA_INACCESSIBLE,
                Status::ANA_INACCESSIBLE,
                Status::ANA_INACCESSIBLE,
            ),
            (
                Errno::TRANSITION,
                Status::ANA_TRANSITION,
                Status::ANA_TRANSITION,
                Status::ANA_TRANSITION,
            ),
        ];
        assert_eq!(
            cases.len(),
            declared_errnos().len(),
            "a case per Errno constant"
        );
        for (e, read, write, resv) in cases {
            assert_eq!(status_of(e, io::READ), read, "{e:?} read");
            assert_eq!(status_of(e, io::WRITE), write, "{e:?} write");
            assert_eq!(status_of(e, io::RESV_REGISTER), resv, "{e:?} register");
            // A path status only for UNAVAILABLE (this site cannot serve it, another may) and
            // TRANSITION (the leadership moved: not decided, to be sent again).
            assert_eq!(
                status_of(e, io::WRITE).0 >> 8 == 3,
                e == Errno::UNAVAILABLE || e == Errno::TRANSITION,
                "{e:?}"
            );
        }
        assert_eq!(status_of(Errno::IO, io::FLUSH), Status::WRITE_FAULT);
        // A Compare reads the medium: its media error is a read error, as when the Compare is
        // diverted to the volume's home (which reads it as a Read).
        assert_eq!(status_of(Errno::IO, io::COMPARE), Status::READ_ERROR);
        assert_eq!(status_of(Errno::IO, io::RESV_RELEASE), Status::INTERNAL);
        assert_eq!(status_of(Errno(libc::EBADF), io::WRITE), Status::INTERNAL);
        let meta = crate::layer::mirror::engine::META_STATUS;
        assert_eq!(
            status_of(Errno(meta | 0x083), io::RESV_ACQUIRE),
            Status::RESERVATION_CONFLICT
        );
    }

    #[test]
    fn path_states_map_to_ana_states_and_path_statuses() {
        assert_eq!(ana_state(PathState::Optimized), 0x01);
        assert_eq!(ana_state(PathState::NonOptimized), 0x02);
        assert_eq!(ana_state(PathState::Inaccessible), 0x03);
        assert_eq!(ana_state(PathState::Transitioning), 0x0F);
        assert_eq!(path_status(PathState::Optimized), Ok(()));
        assert_eq!(path_status(PathState::NonOptimized), Ok(()));
        assert_eq!(path_status(PathState::Inaccessible), Err(Status(0x302)));
        assert_eq!(path_status(PathState::Transitioning), Err(Status(0x303)));
    }
}
