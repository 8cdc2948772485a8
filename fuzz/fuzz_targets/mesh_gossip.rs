//! Mesh gossip messages (the payload of control frames of kind 1), decoded
//! and handed to a mesh core that holds a connection to the sender.
//!
//! Decoding must never panic; a decoded message must survive an encode and
//! decode unchanged; and the mesh must take any decodable message from a
//! neighbour (entries of any name, version, endpoint list and IPAM state)
//! without panicking, and still answer with messages that encode.
#![no_main]

use std::time::Duration;

use ipam_crdt::PeerName;
use libfuzzer_sys::fuzz_target;
use weft_router::core::Time;
use weft_router::core::endpoints::Policy;
use weft_router::core::mesh::{self, ConnId, Mesh, Message};

fuzz_target!(|bytes: &[u8]| {
    let Ok(msg) = postcard::from_bytes::<Message>(bytes) else {
        return;
    };
    let again: Message = postcard::from_bytes(&postcard::to_allocvec(&msg).unwrap()).unwrap();
    assert_eq!(again, msg);

    let me = PeerName::from_u64(1);
    let neighbour = PeerName::from_u64(2);
    let mut now = Time::from_millis(1_000);
    let listen = std::net::SocketAddr::from(([0, 0, 0, 0], 6783));
    let mut mesh = Mesh::new(
        mesh::Config::default(),
        me,
        "fuzz".to_owned(),
        Policy::new(listen, Vec::new(), Vec::new()),
        now,
        1,
    );
    mesh.handle_connected(now, neighbour, ConnId(1), None, ([192, 0, 2, 2], 6783).into())
        .unwrap();
    drain(&mut mesh);
    mesh.handle_message(now, neighbour, msg);
    drain(&mut mesh);
    now = now + Duration::from_secs(30);
    mesh.handle_timeout(now);
    drain(&mut mesh);
});

fn drain(mesh: &mut Mesh) {
    while let Some((_, out)) = mesh.poll_transmit() {
        postcard::to_allocvec(&out).expect("an outgoing message encodes");
    }
    while mesh.poll_dial().is_some() {}
    while mesh.poll_event().is_some() {}
}
