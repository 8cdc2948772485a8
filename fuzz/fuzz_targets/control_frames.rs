//! The control-stream frame reader: bytes from an authenticated QUIC stream,
//! arriving in chunks of any size.
//!
//! The first input byte sets the chunk size (1 to 256 bytes). The reader must
//! never panic, never buffer more than one frame plus a chunk, and every
//! frame it hands out must encode back to a frame that decodes to the same
//! message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_router::core::wire::{self, ControlMsg, Decoded, FrameReader, HEADER_LEN, MAX_FRAME_LEN};

fuzz_target!(|input: &[u8]| {
    let Some((&chunk, stream)) = input.split_first() else {
        return;
    };
    let chunk = usize::from(chunk) + 1;
    let mut reader = FrameReader::new();
    for piece in stream.chunks(chunk) {
        reader.push(piece);
        assert!(reader.buffered() <= HEADER_LEN + MAX_FRAME_LEN as usize + chunk);
        loop {
            match reader.poll_frame() {
                Ok(None) => break,
                // The stream is out of step: the connection would be closed.
                Err(_) => return,
                Ok(Some(Decoded::Unknown { .. })) => {}
                Ok(Some(Decoded::Msg(msg))) => round_trip(&msg),
            }
        }
    }
});

fn round_trip(msg: &ControlMsg) {
    let frame = wire::encode(msg).expect("a decoded message encodes");
    let mut again = FrameReader::new();
    again.push(&frame);
    match again.poll_frame() {
        Ok(Some(Decoded::Msg(back))) => assert_eq!(&back, msg),
        other => panic!("re-encoded frame decodes to {other:?}"),
    }
    assert_eq!(again.buffered(), 0);
}
