//! The control-connection Noise handshake, fed arbitrary messages.
//!
//! After a first byte that picks the role (even: the side that accepts a
//! dial; odd: the side that dials, its first message already sent), the
//! input is a sequence of peer messages, each `[len_lo, len_hi, bytes...]`.
//! Nothing may panic, and a handshake that is over takes no more messages.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use weft_router::core::handshake::{BINDING_LEN, Handshake};
use weft_router::identity::Identity;

const PSK: [u8; 32] = [9; 32];

// Made once: deriving a public key is a scalar multiplication per input otherwise.
static ME: LazyLock<Identity> = LazyLock::new(|| Identity::from_private_key([3; 32]).unwrap());

fuzz_target!(|input: &[u8]| {
    let Some((&role, mut rest)) = input.split_first() else {
        return;
    };
    let me = &*ME;
    let binding = [5u8; BINDING_LEN];
    // A fixed ephemeral seed keeps a crashing input reproducible.
    let seed = [7u8; 32];
    let mut hs = if role & 1 == 0 {
        Handshake::responder(me, &PSK, &binding, seed).unwrap()
    } else {
        Handshake::initiator(me, &PSK, &binding, seed).unwrap().0
    };
    while let [lo, hi, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let (msg, next) = tail.split_at(len);
        rest = next;
        let was_finished = hs.is_finished();
        let result = hs.handle(msg);
        if was_finished {
            assert!(result.is_err(), "a finished handshake took another message");
        }
    }
});
