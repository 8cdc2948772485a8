//! A router's data-plane sessions fed arbitrary handshake-layer datagrams.
//!
//! The router under test has a fixed identity and knows one peer. The input
//! is a sequence of datagrams, each `[flags, len_lo, len_hi, bytes...]`:
//! flag bit 0 restamps `mac1` with the right key (as only a cluster member
//! could), so the fuzzer gets past the MAC into the Noise handshake, the
//! cookie and the stale-session paths; bit 1 says the datagram comes from
//! the peer's known endpoint rather than a stranger's; bits 2-7 advance the
//! clock by that many seconds first, so timers, rate limits and cookie
//! rotation run too. Bit 6 of the first byte runs the sessions in eager mode
//! (as the router does), so keepalives and candidate backoff run too.
//! Nothing may panic, and every datagram the sessions want to send must
//! itself parse.
#![no_main]

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng as _;
use weft_router::core::Time;
use weft_router::core::data::cookie::MacKeys;
use weft_router::core::data::session::{Mode, PERSISTENT_KEEPALIVE, Sessions};
use weft_router::core::data::wire;
use weft_router::identity::Identity;

const PSK: [u8; 32] = [7; 32];

// Made once: deriving a public key is a scalar multiplication per input otherwise.
static ME: LazyLock<Identity> = LazyLock::new(|| Identity::from_private_key([1; 32]).unwrap());
static PEER: LazyLock<Identity> = LazyLock::new(|| Identity::from_private_key([2; 32]).unwrap());

fuzz_target!(|input: &[u8]| {
    let (me, peer) = (&*ME, &*PEER);
    let peer_at: SocketAddr = ([10, 0, 0, 2], 6784).into();
    let stranger: SocketAddr = ([192, 0, 2, 9], 40000).into();
    let mut now = Time::from_millis(1_000);
    // The first byte's bit 6 picks the router's eager mode, else on demand.
    let mode = if input.first().is_some_and(|f| f & 0x40 != 0) {
        Mode::Eager {
            keepalive: PERSISTENT_KEEPALIVE,
        }
    } else {
        Mode::OnDemand
    };
    let mut sessions = Sessions::new(
        me,
        PSK,
        Duration::from_secs(1_700_000_000),
        ChaCha20Rng::seed_from_u64(1),
        now,
    )
    .with_mode(mode);
    let peer_id = sessions
        .upsert_peer(now, peer.name(), peer.public_key(), &[peer_at])
        .unwrap();
    // Half the runs start with a handshake of our own under way, so that
    // responses and cookies have something to answer.
    if input.first().is_some_and(|f| f & 0x80 != 0) {
        sessions.need_session(now, peer_id, None);
    }
    let to_me = MacKeys::new(&PSK, &me.public_key());

    let mut rest = input;
    while let [flags, lo, hi, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let (datagram, next) = tail.split_at(len);
        rest = next;
        let mut datagram = datagram.to_vec();
        if flags & 1 != 0 && datagram.len() >= 2 * wire::MAC_LEN {
            to_me.stamp(&mut datagram, None);
        }
        now = now + Duration::from_secs(u64::from(flags >> 2));
        let from = if flags & 2 != 0 { peer_at } else { stranger };
        sessions.handle_timeout(now);
        sessions.handle_datagram(now, from, &datagram);
        drain(&mut sessions);
    }
});

fn drain(sessions: &mut Sessions) {
    while let Some(t) = sessions.poll_transmit() {
        assert!(
            wire::parse(&t.bytes).is_ok(),
            "the sessions sent a datagram that does not parse: {:?}",
            t.bytes
        );
    }
    while sessions.poll_event().is_some() {}
    let _ = sessions.take_changed();
}
