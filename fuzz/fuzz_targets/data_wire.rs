//! The data-plane datagram parser: any bytes from UDP port 6784.
//!
//! `parse` must never panic, and what it accepts must be what its format
//! says: a fixed length for each handshake type, at least a header and a
//! tag for transport datagrams, and fields read from where they lie.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_router::core::data::wire::{self, Packet};

fuzz_target!(|bytes: &[u8]| {
    let Ok(packet) = wire::parse(bytes) else { return };
    assert!(bytes.len() <= wire::MAX_DATAGRAM);
    assert_eq!(bytes[1..4], [0, 0, 0], "reserved bytes must be zero");
    let le32 = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    match packet {
        Packet::Initiation(init) => {
            assert_eq!(bytes.len(), wire::INITIATION_LEN);
            assert_eq!(init.sender, le32(4));
            assert_eq!(init.noise.len(), wire::NOISE_INIT_LEN);
            assert_eq!(init.bytes, bytes);
        }
        Packet::Response(resp) => {
            assert_eq!(bytes.len(), wire::RESPONSE_LEN);
            assert_eq!((resp.sender, resp.receiver), (le32(4), le32(8)));
            assert_eq!(resp.noise.len(), wire::NOISE_RESPONSE_LEN);
        }
        Packet::Cookie(cookie) => {
            assert_eq!(bytes.len(), wire::COOKIE_LEN);
            assert_eq!(cookie.receiver, le32(4));
        }
        Packet::Transport { receiver, counter } => {
            assert!(bytes.len() >= wire::TRANSPORT_OVERHEAD);
            assert_eq!(receiver, le32(4));
            assert_eq!(counter, u64::from_le_bytes(bytes[8..16].try_into().unwrap()));
            // The header writer and the parser agree.
            let mut header = [0u8; wire::TRANSPORT_HEADER_LEN];
            wire::write_transport_header(&mut header, receiver, counter);
            assert_eq!(header, bytes[..wire::TRANSPORT_HEADER_LEN]);
        }
        Packet::Stale { receiver } => {
            assert_eq!(bytes.len(), wire::STALE_LEN);
            assert_eq!(receiver, le32(4));
            assert_eq!(wire::parse(&wire::stale(receiver)), Ok(packet));
        }
    }
});
