//! IPAM ring deltas in their wire form (`Delta::decode`, inside IPAM
//! messages), decoded and merged into a replica.
//!
//! The replica is the first of two seeds of a ring over 10.32.0.0/22.
//! Decoding must never panic; a decoded delta encodes and decodes back to
//! itself; merging it either succeeds, leaving a consistent replica, or is
//! refused with the replica unchanged.
#![no_main]

use ipam_crdt::{Delta, PeerName, Pool, Replica};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(delta) = Delta::decode(bytes) else { return };
    assert_eq!(Delta::decode(&delta.encode()).unwrap(), delta);

    let pool = Pool::new("10.32.0.0/22".parse().unwrap()).unwrap();
    let seeds = [PeerName::from_u64(1), PeerName::from_u64(2)];
    for me in [seeds[0], PeerName::from_u64(3)] {
        let mut replica = Replica::create(me, pool, &seeds).unwrap();
        let before = replica.clone();
        match replica.merge_delta(&delta) {
            Ok(_) => replica.verify().expect("a merge keeps the replica consistent"),
            Err(_) => assert!(replica == before, "a refused delta changed the replica"),
        }
    }
});
