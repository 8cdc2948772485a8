//! The IPAM state file: `Agent::decode_saved` (the agent's record) and
//! `Replica::decode` (the replica inside it). A corrupt or hostile file must
//! be refused with an error, never a panic, and whatever is accepted must be
//! a consistent replica that an agent can start from.
#![no_main]

use ipam_crdt::{Pool, Replica, Ring};
use libfuzzer_sys::fuzz_target;
use weft_router::core::Time;
use weft_router::core::ipam_agent::{Agent, Init};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(replica) = Replica::decode(bytes) {
        replica.verify().expect("a decoded replica is consistent");
        assert!(Replica::decode(&replica.encode()).unwrap() == replica);
    }
    if let Ok(saved) = Agent::decode_saved(bytes) {
        let replica = saved.replica().clone();
        replica.verify().expect("a decoded replica is consistent");
        let pool = replica.ring().map_or_else(Pool::default_v4, Ring::pool);
        // Started with the pool it was saved with, the agent accepts its own state.
        Agent::new(replica.name(), pool, Init::Adopt, Some(saved), Time::ZERO)
            .expect("an agent starts from a state file of its own pool");
    }
});
