//! CHAP authentication (RFC 7143 §12.1.3, RFC 1994), MD5 only (CHAP_A=5), one-way and
//! mutual, as a pure state machine the login drives (`docs/iscsi.md`).
//!
//! Model: in the security stage of a login to a target that has a CHAP secret, the target
//! answers `AuthMethod=CHAP`, then `CHAP_A=5` with `CHAP_I` (an identifier) and `CHAP_C` (a
//! 16-byte random challenge); the initiator answers `CHAP_N` (its user name) and `CHAP_R` =
//! MD5(I ‖ secret ‖ C). For mutual CHAP it also sends its own `CHAP_I` and `CHAP_C`, which the
//! target answers with its user name and response.
//!
//! Invariants: a login passes the security stage only after a response that matches; a wrong
//! name, response, algorithm or a repeated challenge fails it (0201); the initiator's challenge
//! must differ from the target's (a reflected challenge is refused); nothing here panics on any
//! key value.

use super::login::{LoginStatus, put_key};
use md5::{Digest, Md5};

/// A target's CHAP credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chap {
    /// The user name the initiator must give (CHAP_N).
    pub user: String,
    /// The secret the initiator proves it knows.
    pub secret: Vec<u8>,
    /// Mutual CHAP: the target's own user name and secret.
    pub mutual: Option<(String, Vec<u8>)>,
}

/// Where a CHAP exchange is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Stage {
    /// AuthMethod=CHAP agreed; waiting for CHAP_A.
    #[default]
    WaitAlgorithm,
    /// Challenge sent; waiting for CHAP_N and CHAP_R.
    WaitResponse {
        /// CHAP_I sent.
        id: u8,
        /// CHAP_C sent.
        challenge: Vec<u8>,
    },
    /// The initiator is authenticated.
    Done,
}

/// MD5(id ‖ secret ‖ challenge).
pub fn response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

/// Hex with a `0x` prefix.
pub fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 + 2 * b.len());
    s.push_str("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// Parse a CHAP binary value (`0x` hex; `0b` base64 is not accepted). At most 1024 bytes.
pub fn unhex(v: &str) -> Option<Vec<u8>> {
    let h = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X"))?;
    if h.is_empty() || h.len() % 2 != 0 || h.len() > 2048 {
        return None;
    }
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Random bytes for a challenge (from the kernel).
fn random(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    // SAFETY: `b` is a valid, writable buffer of `n` bytes for the call.
    let got = unsafe { libc::getrandom(b.as_mut_ptr().cast(), n, 0) };
    if got != n as isize {
        // getrandom does not fail for small requests on Linux ≥ 3.17; never hand out a
        // predictable challenge if it somehow did.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        for (i, x) in b.iter_mut().enumerate() {
            *x = (crate::checksum::crc32c(&(t + i as u128).to_le_bytes()) >> 8) as u8;
        }
    }
    b
}

/// Is `k` a CHAP key?
pub fn is_chap_key(k: &str) -> bool {
    k.starts_with("CHAP_")
}

/// One step of the exchange with the CHAP keys of a request; answers go to `out`.
pub fn step(
    stage: &mut Stage,
    chap: &Chap,
    keys: &[(&str, &str)],
    out: &mut Vec<u8>,
) -> Result<(), LoginStatus> {
    let fail = LoginStatus::AUTH_FAILED;
    let get = |k: &str| keys.iter().find(|(a, _)| *a == k).map(|(_, v)| *v);
    match stage {
        Stage::WaitAlgorithm => {
            let Some(a) = get("CHAP_A") else {
                return if keys.is_empty() { Ok(()) } else { Err(fail) };
            };
            if !a.split(',').any(|x| x == "5") {
                put_key(out, "CHAP_A", "Reject");
                return Err(fail);
            }
            let id = random(1)[0];
            let challenge = random(16);
            put_key(out, "CHAP_A", "5");
            put_key(out, "CHAP_I", &id.to_string());
            put_key(out, "CHAP_C", &hex(&challenge));
            *stage = Stage::WaitResponse { id, challenge };
            Ok(())
        }
        Stage::WaitResponse { id, challenge } => {
            let (Some(n), Some(r)) = (get("CHAP_N"), get("CHAP_R")) else {
                return Err(fail);
            };
            let r = unhex(r).ok_or(fail)?;
            if n != chap.user || r != response(*id, &chap.secret, challenge) {
                return Err(fail);
            }
            match (&chap.mutual, get("CHAP_I"), get("CHAP_C")) {
                (_, None, None) if chap.mutual.is_none() => {}
                (Some((user, secret)), Some(i), Some(c)) => {
                    let i: u8 = i.parse().map_err(|_| fail)?;
                    let c = unhex(c).ok_or(fail)?;
                    if c == *challenge || c.len() < 8 {
                        return Err(fail);
                    }
                    put_key(out, "CHAP_N", user);
                    put_key(out, "CHAP_R", &hex(&response(i, secret, &c)));
                }
                // Mutual CHAP configured but not asked for, or asked for but not configured.
                _ => return Err(fail),
            }
            *stage = Stage::Done;
            Ok(())
        }
        Stage::Done => {
            if keys.is_empty() {
                Ok(())
            } else {
                Err(fail)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::iscsi::login::parse_keys;

    #[test]
    fn rfc1994_md5_and_a_full_mutual_exchange() {
        // MD5 of the empty string, as a sanity check of the digest wiring.
        let h: [u8; 16] = Md5::new().finalize().into();
        assert_eq!(hex(&h), "0xd41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(unhex("0x0aff"), Some(vec![0x0a, 0xff]));
        assert_eq!(unhex("0x0af"), None);
        assert_eq!(unhex("ab"), None);
        let chap = Chap {
            user: "u".into(),
            secret: b"secretsecret".to_vec(),
            mutual: Some(("t".into(), b"targetsecret".to_vec())),
        };
        let mut st = Stage::default();
        let mut out = Vec::new();
        step(&mut st, &chap, &[("CHAP_A", "7,5")], &mut out).unwrap();
        let Stage::WaitResponse { id, challenge } = st.clone() else {
            panic!("no challenge")
        };
        let ans = parse_keys(&out).unwrap();
        assert!(ans.contains(&("CHAP_A", "5")));
        let r = hex(&response(id, b"secretsecret", &challenge));
        let mut out = Vec::new();
        let my_c = hex(&[7u8; 16]);
        step(
            &mut st,
            &chap,
            &[
                ("CHAP_N", "u"),
                ("CHAP_R", &r),
                ("CHAP_I", "9"),
                ("CHAP_C", &my_c),
            ],
            &mut out,
        )
        .unwrap();
        assert_eq!(st, Stage::Done);
        let ans = parse_keys(&out).unwrap();
        let want = hex(&response(9, b"targetsecret", &[7u8; 16]));
        assert!(ans.contains(&("CHAP_R", want.as_str())), "{ans:?}");
        // A wrong response fails.
        let mut st = Stage::WaitResponse {
            id: 1,
            challenge: vec![1; 16],
        };
        assert!(
            step(
                &mut st,
                &chap,
                &[("CHAP_N", "u"), ("CHAP_R", "0x00")],
                &mut out
            )
            .is_err()
        );
    }
}
