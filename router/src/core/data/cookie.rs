//! What keeps handshakes cheap to refuse: `mac1`, cookies (`mac2`) and a
//! per-source rate limit. The design is WireGuard's (§5.4 of its paper),
//! with one change: `mac1` is keyed by the cluster secret as well as the
//! receiver's public key, so a router outside the cluster cannot make one
//! and its handshakes are dropped after one hash, before any public-key
//! work.
//!
//! - `mac1 = MAC(H("weft mac1 v1" ‖ data_psk ‖ receiver_public), msg‥mac1)`
//! - `cookie = MAC(secret, source ip ‖ port)`, where `secret` is random and
//!   replaced every [`COOKIE_SECRET_LIFETIME`]; a cookie is good for as long.
//! - `mac2 = MAC(cookie, msg‥mac2)`, or zero when the sender has no cookie.
//! - A cookie reply seals the cookie with ChaCha20-Poly1305 under
//!   `H("weft cookie v1" ‖ data_psk ‖ responder_public)`, a random nonce,
//!   and the `mac1` of the message it answers as associated data, so only
//!   the sender of that message can use it.
//!
//! `MAC` is keyed BLAKE2s with a 16-byte output, `H` is BLAKE2s-256.
//!
//! A responder *under load* (more than [`LOAD_THRESHOLD`] handshake
//! messages in the last second) answers a message without a valid `mac2`
//! with a cookie reply instead of doing the handshake. Whether under load
//! or not, each source address gets at most [`PER_SOURCE_RATE`] handshake
//! messages a second (bursts of [`PER_SOURCE_BURST`]); with `mac2` checked,
//! a flood from forged addresses can only spend the sender's own bucket.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use blake2::digest::Mac as _;
use blake2::digest::consts::U16;
use blake2::{Blake2s256, Blake2sMac, Digest as _};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, Tag, UnboundKey};
use zeroize::Zeroizing;

use super::wire::{COOKIE_NONCE_LEN, MAC_LEN, TAG_LEN};
use crate::core::Time;

/// How long a cookie secret (and so a cookie) lives.
pub const COOKIE_SECRET_LIFETIME: Duration = Duration::from_secs(120);
/// Handshake messages per second above which a responder asks for cookies.
pub const LOAD_THRESHOLD: u32 = 200;
/// Handshake messages per second one source address may send.
pub const PER_SOURCE_RATE: u32 = 20;
/// The burst one source address may send at once.
pub const PER_SOURCE_BURST: u32 = 10;
/// Sources the limiter tracks; beyond this it forgets the idlest half.
const MAX_SOURCES: usize = 4096;

type Mac16 = Blake2sMac<U16>;

/// A 16-byte keyed BLAKE2s MAC over `parts`.
fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; MAC_LEN] {
    // Keys here are 16 or 32 bytes, which BLAKE2s always accepts.
    let mut m = <Mac16 as blake2::digest::KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// BLAKE2s-256 of `parts`.
fn hash(parts: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    let mut h = Blake2s256::new();
    for p in parts {
        h.update(p);
    }
    Zeroizing::new(h.finalize().into())
}

/// The keys that make and check `mac1` and seal cookies for one router's
/// public key.
#[derive(Clone)]
pub struct MacKeys {
    mac1: Zeroizing<[u8; 32]>,
    cookie: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for MacKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacKeys(..)")
    }
}

impl MacKeys {
    /// The keys for messages *to* the router with `public`.
    pub fn new(data_psk: &[u8; 32], public: &[u8; 32]) -> Self {
        Self {
            mac1: hash(&[b"weft mac1 v1", data_psk, public]),
            cookie: hash(&[b"weft cookie v1", data_psk, public]),
        }
    }

    /// `mac1` of a message whose MACs start at `macs_at`.
    pub fn mac1(&self, msg: &[u8], macs_at: usize) -> [u8; MAC_LEN] {
        mac(self.mac1.as_ref(), &[&msg[..macs_at.min(msg.len())]])
    }

    /// Fills in `mac1` (and `mac2` if a cookie is given) of a handshake
    /// message whose last 32 bytes are the MACs. Returns `mac1`.
    pub fn stamp(&self, msg: &mut [u8], cookie: Option<&[u8; MAC_LEN]>) -> [u8; MAC_LEN] {
        let at = msg.len() - 2 * MAC_LEN;
        let m1 = self.mac1(msg, at);
        msg[at..at + MAC_LEN].copy_from_slice(&m1);
        let m2 = cookie.map_or([0; MAC_LEN], |c| mac(c, &[&msg[..at + MAC_LEN]]));
        msg[at + MAC_LEN..].copy_from_slice(&m2);
        m1
    }

    /// Whether the message's `mac1` is right.
    pub fn check_mac1(&self, msg: &[u8]) -> bool {
        let Some(at) = msg.len().checked_sub(2 * MAC_LEN) else {
            return false;
        };
        let want = self.mac1(msg, at);
        constant_eq(&want, &msg[at..at + MAC_LEN])
    }

    /// Seals `cookie` for the sender of the message whose `mac1` is given.
    pub fn seal_cookie(
        &self,
        cookie: &[u8; MAC_LEN],
        mac1: &[u8],
        nonce: [u8; COOKIE_NONCE_LEN],
    ) -> [u8; MAC_LEN + TAG_LEN] {
        let key = self.aead();
        let mut out = [0u8; MAC_LEN + TAG_LEN];
        out[..MAC_LEN].copy_from_slice(cookie);
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(mac1),
                &mut out[..MAC_LEN],
            )
            .unwrap_or_else(|_| unreachable!("16 bytes are within ChaCha20-Poly1305's limit"));
        out[MAC_LEN..].copy_from_slice(tag.as_ref());
        out
    }

    /// Opens a cookie sealed by the router these keys belong to, for the
    /// message we sent with `mac1`.
    pub fn open_cookie(
        &self,
        sealed: &[u8; MAC_LEN + TAG_LEN],
        mac1: &[u8; MAC_LEN],
        nonce: &[u8; COOKIE_NONCE_LEN],
    ) -> Option<[u8; MAC_LEN]> {
        let key = self.aead();
        let mut cookie: [u8; MAC_LEN] = sealed[..MAC_LEN].try_into().ok()?;
        let tag: [u8; TAG_LEN] = sealed[MAC_LEN..].try_into().ok()?;
        key.open_in_place_separate_tag(
            Nonce::assume_unique_for_key(*nonce),
            Aad::from(mac1),
            Tag::from(tag),
            &mut cookie,
            0..,
        )
        .ok()?;
        Some(cookie)
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, self.cookie.as_ref())
                .unwrap_or_else(|_| unreachable!("a 32-byte key is a ChaCha20-Poly1305 key")),
        )
    }
}

/// Compares without an early exit.
fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A responder's cookie secret and its load and per-source rate limits.
#[derive(Debug)]
pub struct Gate {
    secret: Zeroizing<[u8; 32]>,
    secret_born: Time,
    window_start: Time,
    in_window: u32,
    sources: HashMap<IpAddr, Bucket>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: u32,
    refilled: Time,
}

/// What to do with a handshake message that passed `mac1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Do the handshake.
    Yes,
    /// Under load and no valid `mac2`: send a cookie reply instead.
    SendCookie,
    /// The source is over its rate: drop it.
    RateLimited,
}

impl Gate {
    /// A gate with a fresh secret from `secret`.
    pub fn new(now: Time, secret: [u8; 32]) -> Self {
        Self {
            secret: Zeroizing::new(secret),
            secret_born: now,
            window_start: now,
            in_window: 0,
            sources: HashMap::new(),
        }
    }

    /// Whether the secret is due for replacement; the caller then calls
    /// [`Gate::rotate`] with fresh random bytes.
    pub fn needs_rotation(&self, now: Time) -> bool {
        now.since(self.secret_born) >= COOKIE_SECRET_LIFETIME
    }

    /// Replaces the cookie secret.
    pub fn rotate(&mut self, now: Time, secret: [u8; 32]) {
        *self.secret = secret;
        self.secret_born = now;
    }

    /// The cookie for `source` under the current secret.
    pub fn cookie(&self, source: SocketAddr) -> [u8; MAC_LEN] {
        let (ip, port) = addr_bytes(source);
        mac(self.secret.as_ref(), &[&ip[..], &port])
    }

    /// Decides about a handshake message `msg` (its `mac1` already checked)
    /// from `source`.
    pub fn admit(&mut self, now: Time, source: SocketAddr, msg: &[u8]) -> Admit {
        if now.since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.in_window = 0;
        }
        self.in_window = self.in_window.saturating_add(1);
        if self.in_window > LOAD_THRESHOLD {
            let at = msg.len().saturating_sub(MAC_LEN);
            let want = mac(&self.cookie(source), &[&msg[..at]]);
            if !constant_eq(&want, &msg[at..]) {
                return Admit::SendCookie;
            }
        }
        if self.take_token(now, source.ip()) {
            Admit::Yes
        } else {
            Admit::RateLimited
        }
    }

    fn take_token(&mut self, now: Time, ip: IpAddr) -> bool {
        if self.sources.len() >= MAX_SOURCES && !self.sources.contains_key(&ip) {
            // Forget sources whose bucket is full again: they are idle.
            let full = Duration::from_millis(1000 * u64::from(PER_SOURCE_BURST) / u64::from(PER_SOURCE_RATE));
            self.sources.retain(|_, b| now.since(b.refilled) < full);
            if self.sources.len() >= MAX_SOURCES {
                return false;
            }
        }
        let b = self.sources.entry(ip).or_insert(Bucket {
            tokens: PER_SOURCE_BURST,
            refilled: now,
        });
        let per_token = 1000 / u64::from(PER_SOURCE_RATE);
        let earned = now.since(b.refilled).as_millis() as u64 / per_token;
        if earned > 0 {
            b.tokens = (b.tokens as u64 + earned).min(u64::from(PER_SOURCE_BURST)) as u32;
            b.refilled = b.refilled + Duration::from_millis(earned * per_token);
        }
        if b.tokens == 0 {
            return false;
        }
        b.tokens -= 1;
        true
    }
}

fn addr_bytes(a: SocketAddr) -> ([u8; 16], [u8; 2]) {
    let ip = match a.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    (ip, a.port().to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PSK: [u8; 32] = [7; 32];

    #[test]
    fn mac1_needs_the_cluster_secret_and_the_right_receiver() {
        let keys = MacKeys::new(&PSK, &[1; 32]);
        let mut msg = vec![9u8; 100];
        keys.stamp(&mut msg, None);
        assert!(keys.check_mac1(&msg));
        assert!(!MacKeys::new(&[8; 32], &[1; 32]).check_mac1(&msg), "other cluster");
        assert!(!MacKeys::new(&PSK, &[2; 32]).check_mac1(&msg), "other receiver");
        msg[3] ^= 1;
        assert!(!keys.check_mac1(&msg), "altered");
        assert!(!keys.check_mac1(&[0; 10]));
    }

    #[test]
    fn a_cookie_opens_only_for_the_message_it_answers() {
        let responder = MacKeys::new(&PSK, &[1; 32]);
        let cookie = [5u8; 16];
        let m1 = [3u8; 16];
        let sealed = responder.seal_cookie(&cookie, &m1, [4; 12]);
        assert_eq!(responder.open_cookie(&sealed, &m1, &[4; 12]), Some(cookie));
        assert_eq!(responder.open_cookie(&sealed, &[0; 16], &[4; 12]), None);
        assert_eq!(MacKeys::new(&PSK, &[2; 32]).open_cookie(&sealed, &m1, &[4; 12]), None);
    }

    #[test]
    fn under_load_only_messages_with_the_cookie_pass() {
        let now = Time::from_millis(1000);
        let mut gate = Gate::new(now, [1; 32]);
        let keys = MacKeys::new(&PSK, &[1; 32]);
        let mut outcomes = Vec::new();
        for i in 0..=LOAD_THRESHOLD {
            let src: SocketAddr = format!("10.0.{}.{}:6784", i / 200, i % 200 + 1).parse().unwrap();
            let mut msg = vec![0u8; 148];
            keys.stamp(&mut msg, None);
            outcomes.push(gate.admit(now, src, &msg));
        }
        assert!(outcomes[..LOAD_THRESHOLD as usize].iter().all(|a| *a == Admit::Yes));
        assert_eq!(outcomes.last(), Some(&Admit::SendCookie));
        // With the cookie for its address, a sender gets through.
        let src: SocketAddr = "10.9.9.9:1".parse().unwrap();
        let mut msg = vec![0u8; 148];
        keys.stamp(&mut msg, Some(&gate.cookie(src)));
        assert_eq!(gate.admit(now, src, &msg), Admit::Yes);
        // The same cookie from another address does not.
        assert_eq!(gate.admit(now, "10.9.9.8:1".parse().unwrap(), &msg), Admit::SendCookie);
        // A second later the load has passed.
        let later = now + Duration::from_secs(1);
        let mut plain = vec![0u8; 148];
        keys.stamp(&mut plain, None);
        assert_eq!(gate.admit(later, "10.9.9.8:1".parse().unwrap(), &plain), Admit::Yes);
    }

    #[test]
    fn one_source_gets_its_burst_then_its_rate() {
        let t0 = Time::from_millis(0);
        let mut gate = Gate::new(t0, [1; 32]);
        let src: SocketAddr = "10.0.0.1:6784".parse().unwrap();
        let msg = [0u8; 148];
        let passed = (0..50).filter(|_| gate.admit(t0, src, &msg) == Admit::Yes).count();
        assert_eq!(passed, PER_SOURCE_BURST as usize);
        let t1 = t0 + Duration::from_millis(1000);
        let passed = (0..50).filter(|_| gate.admit(t1, src, &msg) == Admit::Yes).count();
        assert_eq!(passed, PER_SOURCE_BURST.min(PER_SOURCE_RATE) as usize);
        assert_eq!(gate.admit(t1, "10.0.0.2:6784".parse().unwrap(), &msg), Admit::Yes);
    }
}
