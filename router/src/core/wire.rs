//! The codec of control messages: how a [`ControlMsg`] becomes bytes on an
//! authenticated control stream, and back.
//!
//! Once the handshake ([`super::handshake`]) has authenticated a control
//! connection, its stream carries a sequence of frames:
//!
//! ```text
//! +----------------+--------------+-------------------------+
//! | len: u32 (BE)  | kind: u16 BE | payload: `len` bytes    |
//! +----------------+--------------+-------------------------+
//! ```
//!
//! `len` counts the payload only, and is at most [`MAX_FRAME_LEN`]. `kind`
//! says how to read the payload; the kinds are fixed numbers, listed on
//! [`ControlMsg`]. A frame of a kind this router does not know decodes to
//! [`Decoded::Unknown`] so that a newer peer can add kinds without cutting
//! older ones off: the caller skips it (and counts it).
//!
//! This module does no I/O. [`encode`] turns a message into one frame;
//! [`FrameReader`] takes bytes as they arrive and hands out whole frames,
//! telling "not all here yet" (`Ok(None)`) apart from "invalid" (`Err`).

use bytes::{Buf, BytesMut};

use super::mesh;

/// A message on an authenticated control connection.
///
/// Each variant has a fixed frame kind that never changes meaning: gossip is
/// kind 1; kinds 2 to 9 belong to IPAM; kind 10 is the gossip message
/// [`mesh::Message::Seen`], which came later and has a kind of its own so
/// that routers from before it skip it rather than close the connection.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum ControlMsg {
    /// Kind 1: mesh membership gossip, `postcard`-encoded.
    Gossip(mesh::Message),
    /// Kind 2: an IPAM message. The payload is carried as opaque bytes until
    /// the IPAM protocol defines its own message type.
    Ipam(Vec<u8>),
}

/// One frame taken off the stream.
#[derive(Clone, PartialEq, Eq, Debug)]
#[must_use]
pub enum Decoded {
    /// A frame of a known kind.
    Msg(ControlMsg),
    /// A well-formed frame of a kind this router does not know; skip it.
    Unknown {
        /// Its kind.
        kind: u16,
    },
}

/// Why bytes cannot be decoded to frames, or a message cannot be encoded.
///
/// After a decoding error the stream is out of step: close the connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The length field is over [`MAX_FRAME_LEN`] (when decoding, the peer
    /// sent it; when encoding, the message is too big to send).
    #[error("frame payload of {len} bytes is over the limit of {MAX_FRAME_LEN}")]
    TooLong {
        /// The payload length.
        len: u64,
    },
    /// The payload of a known kind is not a valid message of that kind.
    #[error("frame of kind {kind} has an invalid payload: {source}")]
    Payload {
        /// The frame's kind.
        kind: u16,
        /// What postcard found wrong.
        source: postcard::Error,
    },
    /// The payload of a known kind holds a valid message followed by extra bytes.
    #[error("frame of kind {kind} has {extra} bytes after its message")]
    TrailingBytes {
        /// The frame's kind.
        kind: u16,
        /// How many bytes were left over.
        extra: usize,
    },
}

/// One frame holding `msg`.
///
/// # Errors
/// [`WireError::TooLong`] if the encoded message is over [`MAX_FRAME_LEN`]
/// (the peer would refuse it), and [`WireError::Payload`] if postcard cannot
/// encode it (not expected for these types).
pub fn encode(msg: &ControlMsg) -> Result<Vec<u8>, WireError> {
    let mut frame = vec![0u8; HEADER_LEN];
    let kind = match msg {
        ControlMsg::Gossip(mesh::Message::Seen(addr)) => {
            frame = postcard::to_extend(addr, frame).map_err(|source| WireError::Payload {
                kind: KIND_SEEN,
                source,
            })?;
            KIND_SEEN
        }
        ControlMsg::Gossip(m) => {
            frame = postcard::to_extend(m, frame).map_err(|source| WireError::Payload {
                kind: KIND_GOSSIP,
                source,
            })?;
            KIND_GOSSIP
        }
        ControlMsg::Ipam(bytes) => {
            frame.extend_from_slice(bytes);
            KIND_IPAM
        }
    };
    let len = frame.len() - HEADER_LEN;
    let len32 = u32::try_from(len)
        .ok()
        .filter(|l| *l <= MAX_FRAME_LEN)
        .ok_or(WireError::TooLong { len: len as u64 })?;
    frame[..4].copy_from_slice(&len32.to_be_bytes());
    frame[4..HEADER_LEN].copy_from_slice(&kind.to_be_bytes());
    Ok(frame)
}

/// Splits a byte stream into frames as the bytes arrive.
///
/// Call [`FrameReader::push`] with each chunk read from the stream, then
/// [`FrameReader::poll_frame`] until it returns `Ok(None)` (the rest of the
/// next frame has not arrived). The length of a frame is checked as soon as
/// its first four bytes are in, before any of its payload is waited for; the
/// buffer holds at most one partial frame plus the last chunk pushed.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: BytesMut,
}

impl FrameReader {
    /// An empty reader.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that are not yet part of a whole frame (or not yet polled).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame, `Ok(None)` if it has not fully arrived.
    ///
    /// # Errors
    /// [`WireError`] if the next frame is invalid. The stream cannot be
    /// resynchronised after that; close it.
    pub fn poll_frame(&mut self) -> Result<Option<Decoded>, WireError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        if len > MAX_FRAME_LEN {
            return Err(WireError::TooLong { len: u64::from(len) });
        }
        // `len` is at most MAX_FRAME_LEN, so it fits any usize we run on.
        let total = HEADER_LEN + len as usize;
        if self.buf.len() < total {
            // Nothing is reserved for the claimed length: the buffer grows
            // only with bytes that actually arrive.
            return Ok(None);
        }
        let kind = u16::from_be_bytes([self.buf[4], self.buf[5]]);
        self.buf.advance(HEADER_LEN);
        let payload = self.buf.split_to(total - HEADER_LEN);
        decode_payload(kind, &payload).map(Some)
    }
}

/// The message of kind `kind` in `payload`.
fn decode_payload(kind: u16, payload: &[u8]) -> Result<Decoded, WireError> {
    match kind {
        KIND_GOSSIP => match whole::<mesh::Message>(kind, payload)? {
            // Kind 10's message, where older routers would not skip it.
            mesh::Message::Seen(_) => Err(WireError::Payload {
                kind,
                source: postcard::Error::DeserializeBadEncoding,
            }),
            msg => Ok(Decoded::Msg(ControlMsg::Gossip(msg))),
        },
        KIND_IPAM => Ok(Decoded::Msg(ControlMsg::Ipam(payload.to_vec()))),
        KIND_SEEN => Ok(Decoded::Msg(ControlMsg::Gossip(mesh::Message::Seen(whole(
            kind, payload,
        )?)))),
        _ => Ok(Decoded::Unknown { kind }),
    }
}

/// One postcard value of type `T` filling `payload` exactly.
fn whole<T: serde::de::DeserializeOwned>(kind: u16, payload: &[u8]) -> Result<T, WireError> {
    let (value, rest) =
        postcard::take_from_bytes::<T>(payload).map_err(|source| WireError::Payload { kind, source })?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes {
            kind,
            extra: rest.len(),
        });
    }
    Ok(value)
}

/// The largest frame payload accepted or sent, in bytes: 1 MiB. A full
/// topology update of a few thousand routers fits; a peer cannot make us
/// buffer more than this for one frame.
pub const MAX_FRAME_LEN: u32 = 1 << 20;

/// Length (4 bytes) and kind (2 bytes).
pub const HEADER_LEN: usize = 6;

/// The frame kind of [`ControlMsg::Gossip`].
pub const KIND_GOSSIP: u16 = 1;

/// The frame kind of [`ControlMsg::Ipam`]. Kinds 3 to 9 are reserved for IPAM too.
pub const KIND_IPAM: u16 = 2;

/// The frame kind of [`mesh::Message::Seen`] (a gossip message in its own kind).
pub const KIND_SEEN: u16 = 10;

#[cfg(test)]
mod tests {
    use ipam_crdt::PeerName;
    use proptest::prelude::*;

    use super::*;

    /// `Gossip(Summary(0x0102))`: length 3, kind 1, postcard variant index 2
    /// (`Summary`) and the varint of 0x0102.
    const SUMMARY_FRAME: [u8; 9] = [0, 0, 0, 3, 0, 1, 0x02, 0x82, 0x02];

    fn summary() -> ControlMsg {
        ControlMsg::Gossip(mesh::Message::Summary(0x0102))
    }

    /// Everything the reader yields for `bytes`, stopping at the first error.
    fn read_all(bytes: &[u8]) -> (Vec<Decoded>, Option<WireError>) {
        let mut r = FrameReader::new();
        r.push(bytes);
        let mut out = Vec::new();
        loop {
            match r.poll_frame() {
                Ok(Some(d)) => out.push(d),
                Ok(None) => return (out, None),
                Err(e) => return (out, Some(e)),
            }
        }
    }

    #[test]
    fn encodes_exact_bytes() {
        assert_eq!(encode(&summary()).unwrap(), SUMMARY_FRAME);
        assert_eq!(
            encode(&ControlMsg::Ipam(vec![0xaa, 0xbb])).unwrap(),
            [0, 0, 0, 2, 0, 2, 0xaa, 0xbb]
        );
    }

    #[test]
    fn decodes_exact_bytes() {
        let (frames, err) = read_all(&SUMMARY_FRAME);
        assert!(err.is_none());
        assert_eq!(frames, vec![Decoded::Msg(summary())]);
        let (frames, _) = read_all(&[0, 0, 0, 0, 0, 2]);
        assert_eq!(frames, vec![Decoded::Msg(ControlMsg::Ipam(Vec::new()))]);
    }

    #[test]
    fn every_truncation_is_incomplete_then_completes() {
        let msg = ControlMsg::Gossip(mesh::Message::Request(vec![
            PeerName::from_u64(7),
            PeerName::from_u64(9),
        ]));
        let frame = encode(&msg).unwrap();
        for cut in 0..frame.len() {
            let mut r = FrameReader::new();
            r.push(&frame[..cut]);
            assert!(matches!(r.poll_frame(), Ok(None)), "cut at {cut}");
            assert!(matches!(r.poll_frame(), Ok(None)), "cut at {cut}, polled again");
            r.push(&frame[cut..]);
            assert_eq!(r.poll_frame().unwrap(), Some(Decoded::Msg(msg.clone())), "cut at {cut}");
            assert_eq!(r.buffered(), 0);
        }
    }

    #[test]
    fn byte_at_a_time_yields_each_frame_once() {
        let msgs = [summary(), ControlMsg::Ipam(vec![1, 2, 3]), summary()];
        let stream: Vec<u8> = msgs.iter().flat_map(|m| encode(m).unwrap()).collect();
        let mut r = FrameReader::new();
        let mut got = Vec::new();
        for b in stream {
            r.push(&[b]);
            while let Some(d) = r.poll_frame().unwrap() {
                got.push(d);
            }
        }
        assert_eq!(got, msgs.map(Decoded::Msg));
    }

    #[test]
    fn oversize_length_is_rejected_before_the_payload_arrives() {
        let mut r = FrameReader::new();
        r.push(&(MAX_FRAME_LEN + 1).to_be_bytes());
        let err = r.poll_frame().unwrap_err();
        assert!(matches!(err, WireError::TooLong { len } if len == u64::from(MAX_FRAME_LEN) + 1));
        // Nothing was reserved for the claimed payload.
        assert!(r.buf.capacity() < 1024, "{}", r.buf.capacity());

        let (_, err) = read_all(&[0xff, 0xff, 0xff, 0xff, 0, 1]);
        assert!(matches!(err, Some(WireError::TooLong { len: 0xffff_ffff })));

        // Exactly the limit is fine (and merely incomplete here).
        let mut r = FrameReader::new();
        r.push(&MAX_FRAME_LEN.to_be_bytes());
        assert!(matches!(r.poll_frame(), Ok(None)));
    }

    #[test]
    fn oversize_message_is_not_encoded() {
        let big = ControlMsg::Ipam(vec![0; MAX_FRAME_LEN as usize + 1]);
        assert!(matches!(encode(&big), Err(WireError::TooLong { .. })));
        let limit = ControlMsg::Ipam(vec![0; MAX_FRAME_LEN as usize]);
        assert_eq!(encode(&limit).unwrap().len(), HEADER_LEN + MAX_FRAME_LEN as usize);
    }

    #[test]
    fn unknown_kind_is_skipped_and_the_next_frame_decodes() {
        let mut stream = vec![0, 0, 0, 3, 0x12, 0x34, 9, 9, 9];
        stream.extend_from_slice(&SUMMARY_FRAME);
        let (frames, err) = read_all(&stream);
        assert!(err.is_none());
        assert_eq!(frames, vec![Decoded::Unknown { kind: 0x1234 }, Decoded::Msg(summary())]);
    }

    #[test]
    fn invalid_payloads_are_errors() {
        // Gossip variant index 9 does not exist.
        let (_, err) = read_all(&[0, 0, 0, 1, 0, 1, 9]);
        assert!(matches!(err, Some(WireError::Payload { kind: 1, .. })), "{err:?}");
        // A valid Summary followed by a stray byte.
        let (_, err) = read_all(&[0, 0, 0, 4, 0, 1, 0x02, 0x82, 0x02, 0]);
        assert!(
            matches!(err, Some(WireError::TrailingBytes { kind: 1, extra: 1 })),
            "{err:?}"
        );
        // An empty gossip payload.
        let (_, err) = read_all(&[0, 0, 0, 0, 0, 1]);
        assert!(matches!(err, Some(WireError::Payload { kind: 1, .. })), "{err:?}");
    }

    #[test]
    fn seen_has_a_kind_of_its_own_with_exact_bytes() {
        let seen = ControlMsg::Gossip(mesh::Message::Seen("192.0.2.7:6783".parse().unwrap()));
        // Length 7, kind 10; postcard: variant 0 (V4), four octets, varint port 6783.
        let frame = [0, 0, 0, 7, 0, 10, 0, 192, 0, 2, 7, 0xff, 0x34];
        assert_eq!(encode(&seen).unwrap(), frame);
        let (frames, err) = read_all(&frame);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(frames, vec![Decoded::Msg(seen)]);
        // The same message inside kind 1, where older routers would choke on it, is refused.
        let mut as_gossip = postcard::to_stdvec(&mesh::Message::Seen("192.0.2.7:6783".parse().unwrap())).unwrap();
        let mut stream = vec![0, 0, 0, u8::try_from(as_gossip.len()).unwrap(), 0, 1];
        stream.append(&mut as_gossip);
        let (_, err) = read_all(&stream);
        assert!(matches!(err, Some(WireError::Payload { kind: 1, .. })), "{err:?}");
        // A stray byte after the address is refused, as in every kind.
        let (_, err) = read_all(&[0, 0, 0, 8, 0, 10, 0, 192, 0, 2, 7, 0xff, 0x34, 0]);
        assert!(
            matches!(err, Some(WireError::TrailingBytes { kind: 10, extra: 1 })),
            "{err:?}"
        );
    }

    fn gossip() -> impl Strategy<Value = mesh::Message> {
        prop_oneof![
            any::<u64>().prop_map(mesh::Message::Summary),
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| mesh::Message::Seen((ip, port).into())),
            prop::collection::vec(any::<u64>().prop_map(PeerName::from_u64), 0..20).prop_map(mesh::Message::Request),
            prop::collection::vec((any::<u64>().prop_map(PeerName::from_u64), any::<u64>()), 0..20)
                .prop_map(mesh::Message::Announce),
        ]
    }

    fn control_msg() -> impl Strategy<Value = ControlMsg> {
        prop_oneof![
            gossip().prop_map(ControlMsg::Gossip),
            prop::collection::vec(any::<u8>(), 0..64).prop_map(ControlMsg::Ipam),
        ]
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..16)) {
            let mut r = FrameReader::new();
            'outer: for c in &chunks {
                r.push(c);
                loop {
                    match r.poll_frame() {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => break 'outer,
                    }
                }
            }
        }

        #[test]
        fn round_trips_in_any_chunking(msgs in prop::collection::vec(control_msg(), 0..8), split in any::<prop::sample::Index>()) {
            let stream: Vec<u8> = msgs.iter().flat_map(|m| encode(m).unwrap()).collect();
            let cut = if stream.is_empty() { 0 } else { split.index(stream.len()) };
            let mut r = FrameReader::new();
            let mut got = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                r.push(part);
                while let Some(Decoded::Msg(m)) = r.poll_frame().unwrap() {
                    got.push(m);
                }
            }
            prop_assert_eq!(got, msgs);
            prop_assert_eq!(r.buffered(), 0);
        }
    }
}
