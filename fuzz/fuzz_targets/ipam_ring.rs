//! Whole IPAM rings in their wire form (`Ring::decode`: inside IPAM
//! messages, and in the state file), decoded and merged.
//!
//! Decoding must never panic; a decoded ring is valid, so it encodes and
//! decodes back to itself; and replicas of the same origin merge it, or
//! refuse it with an error, without panicking or breaking their invariants.
#![no_main]

use ipam_crdt::{PeerName, Replica, Ring};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(ring) = Ring::decode(bytes) else { return };
    assert!(
        Ring::decode(&ring.encode()).unwrap() == ring,
        "a ring changed across encode and decode"
    );

    let origin = ring.origin();
    // A replica of every seed, and one of a router the ring does not name.
    let outsider = PeerName::from_u64(u64::MAX - 1);
    for me in origin.seeds.iter().copied().take(4).chain([outsider]) {
        let Ok(mut replica) = Replica::create(me, origin.pool, &origin.seeds) else {
            return;
        };
        if replica.merge(&ring).is_ok() {
            replica.verify().expect("a merge keeps the replica consistent");
        }
    }
    let mut genesis = Ring::new(origin.pool, &origin.seeds).unwrap();
    let _ = genesis.merge(&ring);
    let _ = ring.owners();
    let _ = ring.reclaims();
});
