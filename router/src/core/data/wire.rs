//! The data-plane datagram formats (UDP, `--dataplane-port`, default 6784).
//!
//! Every datagram starts with a 4-byte header: a type byte and three reserved
//! bytes that must be zero (a later version can use them; this one drops a
//! datagram that sets them). Integers are little-endian, as in WireGuard and
//! in Noise's nonce layout.
//!
//! ```text
//! initiation (148 B)  type=1 | sender u32 | noise msg 1 (108 B: e, s, timestamp) | mac1 16 | mac2 16
//! response    (92 B)  type=2 | sender u32 | receiver u32 | noise msg 2 (48 B: e, empty payload) | mac1 16 | mac2 16
//! cookie      (64 B)  type=3 | receiver u32 | nonce 12 | sealed cookie 16 + tag 16 | reserved 12
//! transport (>=32 B)  type=4 | receiver u32 | counter u64 | ciphertext (inner IP packet) + tag 16
//! stale       (16 B)  type=5 | receiver u32 | reserved 8
//! ```
//!
//! - `sender`/`receiver` are session indices: random numbers each side picks
//!   for its end of a session, so a datagram finds its keys in one lookup.
//! - `mac1` is a MAC of everything before it, keyed by the cluster secret and
//!   the receiver's public key (see [`super::cookie`]). Only routers holding
//!   the secret can make it, so the receiver drops anything else before doing
//!   any public-key work.
//! - `mac2` is zero, or a MAC keyed by a cookie the receiver handed out while
//!   under load: proof that the sender can receive at its address.
//! - A transport datagram with an empty payload is a keepalive.
//! - `stale` says "I have no session with index `receiver`" (the receiver
//!   restarted). It is not authenticated; the router that gets it only
//!   starts a new handshake sooner, which an attacker could cause anyway.
//!
//! Sizes are fixed, so an initiation, response or cookie of any other length
//! is malformed. [`parse`] checks everything that can be checked without
//! keys and never panics on any input (fuzzed: `fuzz/`).

/// Type byte of an [`Initiation`].
pub const TYPE_INITIATION: u8 = 1;
/// Type byte of a [`Response`].
pub const TYPE_RESPONSE: u8 = 2;
/// Type byte of a [`CookieReply`].
pub const TYPE_COOKIE: u8 = 3;
/// Type byte of a transport datagram.
pub const TYPE_TRANSPORT: u8 = 4;
/// Type byte of a stale-session notice.
pub const TYPE_STALE: u8 = 5;

/// Length of a MAC (mac1, mac2) and of an AEAD tag.
pub const MAC_LEN: usize = 16;
/// Length of the AEAD tag on transport and cookie datagrams.
pub const TAG_LEN: usize = 16;
/// Length of the Noise message in an initiation: `e` (32), encrypted `s`
/// (32 + 16), encrypted 12-byte timestamp (12 + 16).
pub const NOISE_INIT_LEN: usize = 32 + 48 + TIMESTAMP_LEN + TAG_LEN;
/// Length of the Noise message in a response: `e` (32) and an empty
/// encrypted payload (16).
pub const NOISE_RESPONSE_LEN: usize = 32 + TAG_LEN;
/// Length of the timestamp an initiation carries (TAI64N).
pub const TIMESTAMP_LEN: usize = 12;
/// Length of an initiation datagram.
pub const INITIATION_LEN: usize = 8 + NOISE_INIT_LEN + 2 * MAC_LEN;
/// Length of a response datagram.
pub const RESPONSE_LEN: usize = 12 + NOISE_RESPONSE_LEN + 2 * MAC_LEN;
/// Length of a cookie reply datagram.
pub const COOKIE_LEN: usize = 8 + COOKIE_NONCE_LEN + MAC_LEN + TAG_LEN + 12;
/// Length of the nonce in a cookie reply.
pub const COOKIE_NONCE_LEN: usize = 12;
/// Length of a stale-session notice.
pub const STALE_LEN: usize = 16;
/// Length of a transport header: type, receiver, counter.
pub const TRANSPORT_HEADER_LEN: usize = 16;
/// Bytes a transport datagram adds to the inner packet: header and tag.
pub const TRANSPORT_OVERHEAD: usize = TRANSPORT_HEADER_LEN + TAG_LEN;
/// The largest datagram the data plane sends or accepts.
pub const MAX_DATAGRAM: usize = 65_535 - 8 - 20;

/// A handshake initiation, as bytes of a known length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Initiation<'a> {
    /// The initiator's index for this session.
    pub sender: u32,
    /// The Noise message.
    pub noise: &'a [u8],
    /// The whole datagram (for the MACs).
    pub bytes: &'a [u8],
}

/// A handshake response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response<'a> {
    /// The responder's index for this session.
    pub sender: u32,
    /// The initiator's index, from its initiation.
    pub receiver: u32,
    /// The Noise message.
    pub noise: &'a [u8],
    /// The whole datagram (for the MACs).
    pub bytes: &'a [u8],
}

/// A cookie reply: the sender is under load and wants `mac2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CookieReply<'a> {
    /// The index of the handshake message it answers.
    pub receiver: u32,
    /// The nonce the cookie was sealed with.
    pub nonce: &'a [u8; COOKIE_NONCE_LEN],
    /// The sealed cookie and its tag.
    pub sealed: &'a [u8; MAC_LEN + TAG_LEN],
}

/// One datagram, parsed without keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Type 1.
    Initiation(Initiation<'a>),
    /// Type 2.
    Response(Response<'a>),
    /// Type 3.
    Cookie(CookieReply<'a>),
    /// Type 4.
    Transport {
        /// The receiver's index: which session's keys open it.
        receiver: u32,
        /// The sender's packet counter (the AEAD nonce).
        counter: u64,
    },
    /// Type 5.
    Stale {
        /// The index the sender has no session for.
        receiver: u32,
    },
}

/// Why a datagram is not one of ours. Each reason is its own drop counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum Malformed {
    /// Shorter than a header.
    #[error("too short")]
    Truncated,
    /// Longer than [`MAX_DATAGRAM`].
    #[error("too long")]
    Oversized,
    /// An unknown type byte, or reserved bytes not zero.
    #[error("unknown type")]
    UnknownType,
    /// A fixed-size message of the wrong size.
    #[error("wrong length for its type")]
    BadLength,
}

/// Parses a datagram's header. Transport payloads stay where they are:
/// the ciphertext is `bytes[TRANSPORT_HEADER_LEN..]`.
///
/// # Errors
/// [`Malformed`] if it cannot be one of our datagrams.
pub fn parse(bytes: &[u8]) -> Result<Packet<'_>, Malformed> {
    let Some((header, rest)) = bytes.split_first_chunk::<4>() else {
        return Err(Malformed::Truncated);
    };
    if bytes.len() > MAX_DATAGRAM {
        return Err(Malformed::Oversized);
    }
    if header[1..] != [0, 0, 0] {
        return Err(Malformed::UnknownType);
    }
    let fixed = |len: usize| {
        if bytes.len() == len {
            Ok(())
        } else {
            Err(Malformed::BadLength)
        }
    };
    match header[0] {
        TYPE_INITIATION => {
            fixed(INITIATION_LEN)?;
            Ok(Packet::Initiation(Initiation {
                sender: u32_at(rest, 0),
                noise: &rest[4..4 + NOISE_INIT_LEN],
                bytes,
            }))
        }
        TYPE_RESPONSE => {
            fixed(RESPONSE_LEN)?;
            Ok(Packet::Response(Response {
                sender: u32_at(rest, 0),
                receiver: u32_at(rest, 4),
                noise: &rest[8..8 + NOISE_RESPONSE_LEN],
                bytes,
            }))
        }
        TYPE_COOKIE => {
            fixed(COOKIE_LEN)?;
            let (nonce, sealed) = rest[4..]
                .split_first_chunk::<COOKIE_NONCE_LEN>()
                .ok_or(Malformed::BadLength)?;
            let sealed = sealed
                .first_chunk::<{ MAC_LEN + TAG_LEN }>()
                .ok_or(Malformed::BadLength)?;
            Ok(Packet::Cookie(CookieReply {
                receiver: u32_at(rest, 0),
                nonce,
                sealed,
            }))
        }
        TYPE_TRANSPORT => {
            if bytes.len() < TRANSPORT_OVERHEAD {
                return Err(Malformed::Truncated);
            }
            Ok(Packet::Transport {
                receiver: u32_at(rest, 0),
                counter: u64::from_le_bytes(rest[4..12].try_into().map_err(|_| Malformed::Truncated)?),
            })
        }
        TYPE_STALE => {
            fixed(STALE_LEN)?;
            Ok(Packet::Stale {
                receiver: u32_at(rest, 0),
            })
        }
        _ => Err(Malformed::UnknownType),
    }
}

/// The little-endian u32 at `at`; the caller has checked the length.
fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(s) = bytes.get(at..at + 4) {
        b.copy_from_slice(s);
    }
    u32::from_le_bytes(b)
}

/// Writes a transport header for `receiver` and `counter` into `out[..16]`.
pub fn write_transport_header(out: &mut [u8; TRANSPORT_HEADER_LEN], receiver: u32, counter: u64) {
    out[0] = TYPE_TRANSPORT;
    out[1..4].fill(0);
    out[4..8].copy_from_slice(&receiver.to_le_bytes());
    out[8..16].copy_from_slice(&counter.to_le_bytes());
}

/// Builds a stale-session notice for `receiver`.
pub fn stale(receiver: u32) -> [u8; STALE_LEN] {
    let mut out = [0u8; STALE_LEN];
    out[0] = TYPE_STALE;
    out[4..8].copy_from_slice(&receiver.to_le_bytes());
    out
}

/// The header of an initiation or response: type, reserved, and the given
/// indices (little-endian).
pub(super) fn handshake_header(kind: u8, indices: &[u32], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&[kind, 0, 0, 0]);
    for i in indices {
        out.extend_from_slice(&i.to_le_bytes());
    }
}

/// Builds a cookie reply.
pub(super) fn cookie_reply(receiver: u32, nonce: &[u8; COOKIE_NONCE_LEN], sealed: &[u8; MAC_LEN + TAG_LEN]) -> Vec<u8> {
    let mut out = Vec::with_capacity(COOKIE_LEN);
    out.extend_from_slice(&[TYPE_COOKIE, 0, 0, 0]);
    out.extend_from_slice(&receiver.to_le_bytes());
    out.extend_from_slice(nonce);
    out.extend_from_slice(sealed);
    out.resize(COOKIE_LEN, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_as_documented() {
        assert_eq!(INITIATION_LEN, 148);
        assert_eq!(RESPONSE_LEN, 92);
        assert_eq!(COOKIE_LEN, 64);
        assert_eq!(TRANSPORT_OVERHEAD, 32);
    }

    #[test]
    fn transport_header_round_trips() {
        let mut d = vec![0u8; TRANSPORT_OVERHEAD + 5];
        let h: &mut [u8; 16] = (&mut d[..16]).try_into().unwrap();
        write_transport_header(h, 0xdead_beef, 1 << 40);
        assert_eq!(
            parse(&d),
            Ok(Packet::Transport {
                receiver: 0xdead_beef,
                counter: 1 << 40
            })
        );
    }

    #[test]
    fn every_wrong_shape_is_named() {
        assert_eq!(parse(&[]), Err(Malformed::Truncated));
        assert_eq!(parse(&[4, 0, 0]), Err(Malformed::Truncated));
        assert_eq!(parse(&[4, 0, 0, 0, 1, 2]), Err(Malformed::Truncated));
        assert_eq!(parse(&[9, 0, 0, 0]), Err(Malformed::UnknownType));
        assert_eq!(
            parse(&[4, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(Malformed::UnknownType)
        );
        assert_eq!(parse(&[1; INITIATION_LEN - 1]), Err(Malformed::UnknownType));
        let mut init = vec![0u8; INITIATION_LEN + 1];
        init[0] = TYPE_INITIATION;
        assert_eq!(parse(&init), Err(Malformed::BadLength));
        assert_eq!(parse(&vec![0u8; MAX_DATAGRAM + 1]), Err(Malformed::Oversized));
        assert_eq!(parse(&stale(7)), Ok(Packet::Stale { receiver: 7 }));
    }

    #[test]
    fn fixed_messages_parse_at_their_size() {
        let mut init = vec![0u8; INITIATION_LEN];
        handshake_header(TYPE_INITIATION, &[42], &mut Vec::new());
        init[0] = TYPE_INITIATION;
        init[4..8].copy_from_slice(&42u32.to_le_bytes());
        match parse(&init) {
            Ok(Packet::Initiation(i)) => {
                assert_eq!(i.sender, 42);
                assert_eq!(i.noise.len(), NOISE_INIT_LEN);
            }
            other => panic!("{other:?}"),
        }
        let c = cookie_reply(3, &[1; 12], &[2; 32]);
        match parse(&c) {
            Ok(Packet::Cookie(c)) => {
                assert_eq!(c.receiver, 3);
                assert_eq!(c.nonce, &[1; 12]);
                assert_eq!(c.sealed, &[2; 32]);
            }
            other => panic!("{other:?}"),
        }
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
        }
    }
}
