//! The transport keys of one session, used by the packet path on any thread.
//!
//! A [`Keypair`] is made by a finished handshake ([`super::session`]) and
//! then only read: sealing takes the next counter from an atomic, opening
//! checks the [`ReplayWindow`] under a mutex that the one thread receiving
//! from that peer holds for a few nanoseconds. Neither allocates. Both
//! refuse once the keys are too old or have sealed too much, so an old key
//! can never be used, whatever the timers do.
//!
//! Packets are sealed in place: the caller leaves [`TRANSPORT_HEADER_LEN`]
//! bytes in front of the inner packet and [`TAG_LEN`] behind it, and the
//! datagram is the whole buffer. The nonce is Noise's layout for
//! ChaCha20-Poly1305 (four zero bytes, the counter little-endian), so these
//! are ordinary Noise transport messages with an explicit counter.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, Tag, UnboundKey};

use super::replay::ReplayWindow;
use super::wire::{TAG_LEN, TRANSPORT_HEADER_LEN, write_transport_header};
use crate::core::Time;

/// Keys older than this are never used (WireGuard's `Reject-After-Time`).
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// Keys that sealed this many packets are never used again.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);
/// After this many packets the initiator starts a new handshake.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;

/// A small number for a peer, stable while the router runs: the index of
/// its slot in the data plane's tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u32);

/// When a peer last sent and received, shared by all its keypairs and the
/// packet path. Times are [`Time`] milliseconds; 0 means never.
#[derive(Debug, Default)]
pub struct Activity {
    /// Last datagram sealed to it (data or keepalive).
    pub last_sent: AtomicU64,
    /// Last data packet (not keepalive) sealed to it.
    pub last_sent_data: AtomicU64,
    /// Last authenticated datagram from it.
    pub last_recv: AtomicU64,
    /// Last authenticated data packet (not keepalive) from it.
    pub last_recv_data: AtomicU64,
    /// When the oldest data packet sent since the last authenticated
    /// datagram from it was sent (0: none unanswered).
    pub unanswered_since: AtomicU64,
    /// When the packet path last asked for a handshake (to ask once).
    pub last_asked: AtomicU64,
    /// When the packet path last told the driver of keys in use or an
    /// address moved (to tell once).
    pub last_noticed: AtomicU64,
    /// Bytes of inner packets sent to it.
    pub tx_bytes: AtomicU64,
    /// Bytes of inner packets received from it.
    pub rx_bytes: AtomicU64,
}

impl Activity {
    fn note_sent(&self, now: Time, data: bool, len: usize) {
        let ms = now.as_millis().max(1);
        self.last_sent.store(ms, Ordering::Relaxed);
        if data {
            self.last_sent_data.store(ms, Ordering::Relaxed);
            self.tx_bytes.fetch_add(len as u64, Ordering::Relaxed);
            if self.unanswered_since.load(Ordering::Relaxed) == 0 {
                self.unanswered_since.store(ms, Ordering::Relaxed);
            }
        }
    }

    fn note_received(&self, now: Time, len: usize) {
        let ms = now.as_millis().max(1);
        self.last_recv.store(ms, Ordering::Relaxed);
        self.unanswered_since.store(0, Ordering::Relaxed);
        if len > 0 {
            self.last_recv_data.store(ms, Ordering::Relaxed);
            self.rx_bytes.fetch_add(len as u64, Ordering::Relaxed);
        }
    }

    /// `field` as a time, if ever set.
    pub fn time(field: &AtomicU64) -> Option<Time> {
        match field.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Time::from_millis(ms)),
        }
    }
}

/// Why a packet could not be sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The keys are too old or used up: a new handshake is needed.
    #[error("keys expired")]
    Expired,
    /// The buffer has no room for the header and tag.
    #[error("no room for the header and tag")]
    NoRoom,
}

/// Why a transport datagram was dropped. Each is a drop counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// It did not authenticate: altered, forged, or for other keys.
    #[error("authentication failed")]
    Auth,
    /// Its counter was seen before, or is too far behind.
    #[error("replayed")]
    Replayed,
    /// The keys are too old.
    #[error("keys expired")]
    Expired,
}

/// The transport keys of one session.
pub struct Keypair {
    /// Our index: peers put it in `receiver` of what they send us.
    pub local_index: u32,
    /// The peer's index: we put it in `receiver` of what we send.
    pub remote_index: u32,
    /// Whose keys these are.
    pub peer: PeerId,
    /// Whether this side initiated the handshake (only the initiator rekeys
    /// on time).
    pub initiator: bool,
    /// When the handshake finished.
    pub created: Time,
    send: LessSafeKey,
    recv: LessSafeKey,
    next_counter: AtomicU64,
    replay: Mutex<ReplayWindow>,
    /// The responder may send only once the initiator has used the keys.
    confirmed: AtomicBool,
    activity: std::sync::Arc<Activity>,
}

impl std::fmt::Debug for Keypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keypair")
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("peer", &self.peer)
            .field("initiator", &self.initiator)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

impl Keypair {
    /// Keys from a finished handshake. `send` and `recv` are this side's
    /// directions.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        peer: PeerId,
        local_index: u32,
        remote_index: u32,
        initiator: bool,
        created: Time,
        send: &[u8; 32],
        recv: &[u8; 32],
        activity: std::sync::Arc<Activity>,
    ) -> Self {
        let key = |k: &[u8; 32]| {
            LessSafeKey::new(
                UnboundKey::new(&CHACHA20_POLY1305, k)
                    .unwrap_or_else(|_| unreachable!("a 32-byte key is a ChaCha20-Poly1305 key")),
            )
        };
        Self {
            local_index,
            remote_index,
            peer,
            initiator,
            created,
            send: key(send),
            recv: key(recv),
            next_counter: AtomicU64::new(0),
            replay: Mutex::new(ReplayWindow::new()),
            confirmed: AtomicBool::new(initiator),
            activity,
        }
    }

    /// Whether these keys may still be used at `now`.
    pub fn usable(&self, now: Time) -> bool {
        now.since(self.created) < REJECT_AFTER_TIME && self.next_counter.load(Ordering::Relaxed) < REJECT_AFTER_MESSAGES
    }

    /// Whether this side may send with them (the responder waits for the
    /// initiator's first packet).
    pub fn confirmed(&self) -> bool {
        self.confirmed.load(Ordering::Relaxed)
    }

    /// Whether the initiator should start a new handshake before these keys
    /// run out.
    pub fn wants_rekey(&self, now: Time, rekey_after: Duration) -> bool {
        self.initiator && now.since(self.created) >= rekey_after
            || self.next_counter.load(Ordering::Relaxed) >= REKEY_AFTER_MESSAGES
    }

    /// Seals `buf[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + len]` in
    /// place: writes the header in front and the tag behind. Returns the
    /// datagram's length (`len + 32`). `len == 0` makes a keepalive.
    ///
    /// # Errors
    /// [`SealError`]; nothing is written then.
    pub fn seal(&self, now: Time, buf: &mut [u8], len: usize) -> Result<usize, SealError> {
        let total = TRANSPORT_HEADER_LEN + len + TAG_LEN;
        if buf.len() < total {
            return Err(SealError::NoRoom);
        }
        if now.since(self.created) >= REJECT_AFTER_TIME {
            return Err(SealError::Expired);
        }
        let counter = self.next_counter.fetch_add(1, Ordering::Relaxed);
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(SealError::Expired);
        }
        let (header, rest) = buf.split_at_mut(TRANSPORT_HEADER_LEN);
        let header: &mut [u8; TRANSPORT_HEADER_LEN] = header
            .try_into()
            .unwrap_or_else(|_| unreachable!("split at the header length"));
        write_transport_header(header, self.remote_index, counter);
        let (payload, tail) = rest.split_at_mut(len);
        let tag = self
            .send
            .seal_in_place_separate_tag(nonce(counter), Aad::empty(), payload)
            .map_err(|_| SealError::NoRoom)?;
        tail[..TAG_LEN].copy_from_slice(tag.as_ref());
        self.activity.note_sent(now, len > 0, len);
        Ok(total)
    }

    /// Opens the transport datagram `datagram` (whole, header included; its
    /// `counter` already parsed) in place. The inner packet is then
    /// `datagram[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + n]` for the
    /// returned `n`; 0 is a keepalive.
    ///
    /// # Errors
    /// [`OpenError`]; the datagram must be dropped then.
    pub fn open(&self, now: Time, counter: u64, datagram: &mut [u8]) -> Result<usize, OpenError> {
        if now.since(self.created) >= REJECT_AFTER_TIME {
            return Err(OpenError::Expired);
        }
        let Some(body) = datagram.get_mut(TRANSPORT_HEADER_LEN..) else {
            return Err(OpenError::Auth);
        };
        let Some(len) = body.len().checked_sub(TAG_LEN) else {
            return Err(OpenError::Auth);
        };
        let (payload, tag) = body.split_at_mut(len);
        let tag: [u8; TAG_LEN] = (&*tag).try_into().map_err(|_| OpenError::Auth)?;
        self.recv
            .open_in_place_separate_tag(nonce(counter), Aad::empty(), Tag::from(tag), payload, 0..)
            .map_err(|_| OpenError::Auth)?;
        let fresh = self.replay.lock().map(|mut w| w.accept(counter)).unwrap_or(false);
        if !fresh {
            return Err(OpenError::Replayed);
        }
        self.confirmed.store(true, Ordering::Relaxed);
        self.activity.note_received(now, len);
        Ok(len)
    }

    /// How many packets these keys have sealed.
    pub fn sealed(&self) -> u64 {
        self.next_counter.load(Ordering::Relaxed)
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::core::data::wire::{Packet, parse};

    fn pair(now: Time) -> (Keypair, Keypair) {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let act = || Arc::new(Activity::default());
        (
            Keypair::new(PeerId(1), 10, 20, true, now, &a, &b, act()),
            Keypair::new(PeerId(0), 20, 10, false, now, &b, &a, act()),
        )
    }

    fn datagram(k: &Keypair, now: Time, msg: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; msg.len() + 32];
        buf[16..16 + msg.len()].copy_from_slice(msg);
        let n = k.seal(now, &mut buf, msg.len()).unwrap();
        buf.truncate(n);
        buf
    }

    fn open(k: &Keypair, now: Time, mut d: Vec<u8>) -> Result<Vec<u8>, OpenError> {
        let Ok(Packet::Transport { receiver, counter }) = parse(&d) else {
            panic!("not transport")
        };
        assert_eq!(receiver, k.local_index);
        let n = k.open(now, counter, &mut d)?;
        Ok(d[16..16 + n].to_vec())
    }

    #[test]
    fn seals_and_opens_in_place_and_never_twice() {
        let now = Time::from_millis(5);
        let (a, b) = pair(now);
        assert!(!b.confirmed());
        let d = datagram(&a, now, b"hello pod");
        assert!(!d.windows(5).any(|w| w == b"hello"), "ciphertext hides the text");
        assert_eq!(open(&b, now, d.clone()).unwrap(), b"hello pod");
        assert!(b.confirmed(), "the responder may send once the initiator did");
        assert_eq!(open(&b, now, d), Err(OpenError::Replayed));
        let back = datagram(&b, now, b"");
        assert_eq!(open(&a, now, back).unwrap(), b"", "keepalive");
    }

    #[test]
    fn altered_or_misdirected_datagrams_fail() {
        let now = Time::from_millis(5);
        let (a, b) = pair(now);
        let mut d = datagram(&a, now, b"payload");
        d[20] ^= 0x80;
        assert_eq!(open(&b, now, d), Err(OpenError::Auth));
        let mut d = datagram(&a, now, b"payload");
        d[8] ^= 1; // the counter is the nonce
        let Ok(Packet::Transport { counter, .. }) = parse(&d) else {
            panic!()
        };
        assert_eq!(b.open(now, counter, &mut d), Err(OpenError::Auth));
        // Keys in the other direction do not open it.
        let d = datagram(&a, now, b"payload");
        let mut d2 = d.clone();
        assert_eq!(a.open(now, 0, &mut d2), Err(OpenError::Auth));
        // Even a failed open does not spend the counter.
        assert!(open(&b, now, d).is_ok());
    }

    #[test]
    fn old_keys_are_refused_both_ways() {
        let t0 = Time::from_millis(1);
        let (a, b) = pair(t0);
        let d = datagram(&a, t0, b"x");
        let late = t0 + REJECT_AFTER_TIME;
        assert!(!a.usable(late));
        assert_eq!(a.seal(late, &mut [0u8; 64], 1), Err(SealError::Expired));
        assert_eq!(open(&b, late, d), Err(OpenError::Expired));
    }

    #[test]
    fn seal_needs_room() {
        let now = Time::from_millis(1);
        let (a, _) = pair(now);
        assert_eq!(a.seal(now, &mut [0u8; 40], 9), Err(SealError::NoRoom));
        assert_eq!(a.sealed(), 0);
    }

    #[test]
    fn activity_tracks_unanswered_data() {
        let now = Time::from_millis(100);
        let (a, b) = pair(now);
        let d = datagram(&a, now, b"data");
        assert_eq!(Activity::time(&a.activity.unanswered_since), Some(now));
        open(&b, now, d).unwrap();
        let back = datagram(&b, now + Duration::from_millis(5), b"");
        open(&a, now + Duration::from_millis(6), back).unwrap();
        assert_eq!(Activity::time(&a.activity.unanswered_since), None);
        assert_eq!(
            Activity::time(&a.activity.last_recv),
            Some(now + Duration::from_millis(6))
        );
        assert_eq!(
            Activity::time(&a.activity.last_recv_data),
            None,
            "a keepalive is not data"
        );
    }
}
