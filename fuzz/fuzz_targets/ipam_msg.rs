//! IPAM messages between routers (the payload of control frames of kind 2),
//! decoded and handed to an agent that shares a ring with the sender.
//!
//! The agent is one of two seeds of a ring over 10.32.0.0/22; the message
//! comes from the other seed, a neighbour. Decoding must never panic, a
//! decoded message survives an encode and decode unchanged, and the agent
//! takes any message (rings and deltas of any shape inside, asks, gifts,
//! digests) without panicking and keeps a consistent replica.
#![no_main]

use std::time::Duration;

use ipam_crdt::{PeerName, Pool};
use libfuzzer_sys::fuzz_target;
use weft_router::config::PeerRef;
use weft_router::core::Time;
use weft_router::core::ipam_agent::{Agent, Init, IpamMsg};
use weft_router::core::topology::Topology;

fuzz_target!(|bytes: &[u8]| {
    let Ok(msg) = IpamMsg::decode(bytes) else { return };
    assert_eq!(IpamMsg::decode(&msg.encode()).unwrap(), msg);

    let me = PeerName::from_u64(1);
    let other = PeerName::from_u64(2);
    let pool = Pool::new("10.32.0.0/22".parse().unwrap()).unwrap();
    let seeds = Init::Seeds(vec![PeerRef::Name(me), PeerRef::Name(other)]);
    let mut now = Time::from_millis(1_000);
    let mut agent = Agent::new(me, pool, seeds, None, now).unwrap();
    agent.handle_topology(now, &Topology::new(me, "h1".to_owned(), Vec::new()));
    agent.neighbour_up(other);
    drain(&mut agent);

    agent.handle_message(now, other, msg);
    drain(&mut agent);
    now = now + Duration::from_secs(60);
    agent.handle_timeout(now);
    drain(&mut agent);
    agent.replica().verify().expect("the replica stays consistent");
});

fn drain(agent: &mut Agent) {
    if let Some(saved) = agent.take_persist() {
        Agent::decode_saved(&saved).expect("what the agent saves, it can read back");
    }
    let _ = agent.take_announcement();
    while agent.poll_transmit().is_some() {}
    while agent.poll_event().is_some() {}
}
