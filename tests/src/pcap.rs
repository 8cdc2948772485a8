//! A small reader of what `tcpdump -w` writes: the classic pcap format, Ethernet (or raw IP) frames, IPv4 and
//! UDP headers. Enough to check every datagram a capture holds, and nothing more.
//!
//! ```text
//! global header (24 B): magic a1b2c3d4 (µs) or a1b23c4d (ns), in the writer's byte order | version | ... |
//!                       snaplen u32 | link type u32
//! record (16 B + data): seconds u32 | fraction u32 | captured length u32 | original length u32 | data
//! ```
//!
//! A capture still being written may end in the middle of a record; [`read`] returns the whole records before
//! it, so a test can poll a running capture.

use std::net::Ipv4Addr;

/// One captured frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The bytes captured (at most the snapshot length).
    pub data: Vec<u8>,
    /// The frame's length on the wire.
    pub original_len: u32,
    /// The capture's link type: [`LINKTYPE_ETHERNET`] or [`LINKTYPE_RAW`] are understood.
    pub link_type: u32,
}

/// Why a capture cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PcapError {
    /// Shorter than the global header.
    #[error("shorter than a pcap header ({0} bytes)")]
    Truncated(usize),
    /// Not a pcap file (pcapng, or something else).
    #[error("not a pcap file: magic {0:08x}")]
    BadMagic(u32),
}

/// The frames of a pcap file, in capture order; a partial record at the end is left out.
///
/// # Errors
/// [`PcapError`] if the global header is missing or not pcap's.
pub fn read(bytes: &[u8]) -> Result<Vec<Frame>, PcapError> {
    let Some((header, mut rest)) = bytes.split_first_chunk::<GLOBAL_HEADER_LEN>() else {
        return Err(PcapError::Truncated(bytes.len()));
    };
    let magic = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let little_endian = match magic {
        MAGIC_MICROS | MAGIC_NANOS => true,
        _ if magic.swap_bytes() == MAGIC_MICROS || magic.swap_bytes() == MAGIC_NANOS => false,
        _ => return Err(PcapError::BadMagic(magic)),
    };
    let word = |b: &[u8], at: usize| {
        let w = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if little_endian {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        }
    };
    let link_type = word(header, 20);
    let mut frames = Vec::new();
    while let Some((record, after)) = rest.split_first_chunk::<RECORD_HEADER_LEN>() {
        let captured = usize::try_from(word(record, 8)).unwrap_or(usize::MAX);
        let Some(data) = after.get(..captured) else {
            break;
        };
        frames.push(Frame {
            data: data.to_vec(),
            original_len: word(record, 12),
            link_type,
        });
        rest = &after[captured..];
    }
    Ok(frames)
}

impl Frame {
    /// Its IPv4 packet, if it carries one whole (its header at least) and the link type is understood.
    pub fn ipv4(&self) -> Option<Ipv4<'_>> {
        let packet = match self.link_type {
            LINKTYPE_ETHERNET => {
                let (mut ethertype, mut at) = (u16_at(&self.data, 12)?, 14);
                if ethertype == ETHERTYPE_VLAN {
                    ethertype = u16_at(&self.data, 16)?;
                    at = 18;
                }
                if ethertype != ETHERTYPE_IPV4 {
                    return None;
                }
                self.data.get(at..)?
            }
            LINKTYPE_RAW => &self.data,
            _ => return None,
        };
        Ipv4::parse(packet)
    }
}

/// An IPv4 header and what follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4<'a> {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// The protocol number (17 for UDP).
    pub protocol: u8,
    /// The total length field: header and payload.
    pub total_len: u16,
    /// The Don't Fragment flag.
    pub dont_fragment: bool,
    /// The More Fragments flag.
    pub more_fragments: bool,
    /// The fragment offset, in 8-byte units.
    pub fragment_offset: u16,
    /// The payload, cut to the total length (and to what was captured).
    pub payload: &'a [u8],
}

impl<'a> Ipv4<'a> {
    /// Parses an IPv4 header; `None` if it is not one.
    pub fn parse(packet: &'a [u8]) -> Option<Self> {
        let first = *packet.first()?;
        if first >> 4 != 4 {
            return None;
        }
        let header_len = usize::from(first & 0x0f) * 4;
        let total_len = u16_at(packet, 2)?;
        if header_len < 20 || usize::from(total_len) < header_len || packet.len() < header_len {
            return None;
        }
        let flags = u16_at(packet, 6)?;
        let end = usize::from(total_len).min(packet.len());
        Some(Self {
            src: Ipv4Addr::from(<[u8; 4]>::try_from(packet.get(12..16)?).ok()?),
            dst: Ipv4Addr::from(<[u8; 4]>::try_from(packet.get(16..20)?).ok()?),
            protocol: packet[9],
            total_len,
            dont_fragment: flags & 0x4000 != 0,
            more_fragments: flags & 0x2000 != 0,
            fragment_offset: flags & 0x1fff,
            payload: &packet[header_len..end],
        })
    }

    /// Whether it is a fragment (first or later) of a larger packet.
    pub fn is_fragment(&self) -> bool {
        self.more_fragments || self.fragment_offset != 0
    }

    /// Its UDP datagram, if it is a whole one (not a fragment).
    pub fn udp(&self) -> Option<Udp<'a>> {
        if self.protocol != PROTO_UDP || self.is_fragment() {
            return None;
        }
        let len = usize::from(u16_at(self.payload, 4)?);
        if len < 8 {
            return None;
        }
        Some(Udp {
            src_port: u16_at(self.payload, 0)?,
            dst_port: u16_at(self.payload, 2)?,
            length: len,
            payload: self.payload.get(8..len.min(self.payload.len()))?,
        })
    }
}

/// A UDP header and its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Udp<'a> {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// The length field: header and payload.
    pub length: usize,
    /// The payload, as far as it was captured.
    pub payload: &'a [u8],
}

impl Udp<'_> {
    /// Whether the whole payload was captured (the length field agrees with the bytes there).
    pub fn is_whole(&self) -> bool {
        self.payload.len() + 8 == self.length
    }
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

/// Link type of Ethernet captures (`tcpdump -i br0`, a veth).
pub const LINKTYPE_ETHERNET: u32 = 1;
/// Link type of raw IP captures (a TUN device).
pub const LINKTYPE_RAW: u32 = 101;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_VLAN: u16 = 0x8100;
const MAGIC_MICROS: u32 = 0xa1b2_c3d4;
const MAGIC_NANOS: u32 = 0xa1b2_3c4d;
const GLOBAL_HEADER_LEN: usize = 24;
const RECORD_HEADER_LEN: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet frame with an IPv4/UDP datagram 10.99.0.1:40000 -> 10.99.0.3:6784 carrying `payload`.
    fn frame(payload: &[u8], flags: u16) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let total = u16::try_from(20 + 8 + payload.len()).unwrap();
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&flags.to_be_bytes());
        f.extend_from_slice(&[64, PROTO_UDP, 0, 0, 10, 99, 0, 1, 10, 99, 0, 3]);
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&6784u16.to_be_bytes());
        f.extend_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f
    }

    fn file(frames: &[Vec<u8>], big_endian: bool) -> Vec<u8> {
        let w = |v: u32| if big_endian { v.to_be_bytes() } else { v.to_le_bytes() };
        let mut out = Vec::new();
        out.extend_from_slice(&w(MAGIC_MICROS));
        out.extend_from_slice(&[0; 16]);
        out.extend_from_slice(&w(LINKTYPE_ETHERNET));
        for f in frames {
            let len = u32::try_from(f.len()).unwrap();
            out.extend_from_slice(&w(1));
            out.extend_from_slice(&w(2));
            out.extend_from_slice(&w(len));
            out.extend_from_slice(&w(len));
            out.extend_from_slice(f);
        }
        out
    }

    #[test]
    fn reads_udp_in_both_byte_orders() {
        for big_endian in [false, true] {
            let bytes = file(&[frame(b"hello", 0x4000), frame(b"", 0)], big_endian);
            let frames = read(&bytes).unwrap();
            assert_eq!(frames.len(), 2);
            let ip = frames[0].ipv4().unwrap();
            assert_eq!(
                (ip.src, ip.dst),
                (Ipv4Addr::new(10, 99, 0, 1), Ipv4Addr::new(10, 99, 0, 3))
            );
            assert!(ip.dont_fragment && !ip.is_fragment());
            let udp = ip.udp().unwrap();
            assert_eq!((udp.src_port, udp.dst_port, udp.payload), (40000, 6784, &b"hello"[..]));
            assert!(udp.is_whole());
            assert_eq!(frames[1].ipv4().unwrap().udp().unwrap().payload, b"");
        }
    }

    #[test]
    fn a_partial_last_record_is_left_out() {
        let bytes = file(&[frame(b"one", 0), frame(b"two", 0)], false);
        let frames = read(&bytes[..bytes.len() - 3]).unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(read(&bytes[..GLOBAL_HEADER_LEN]).unwrap(), []);
        assert_eq!(read(&bytes[..10]), Err(PcapError::Truncated(10)));
        assert!(matches!(read(&[0u8; 24]), Err(PcapError::BadMagic(0))));
    }

    #[test]
    fn fragments_have_no_udp_header() {
        let later = frame(b"rest of it", 0x0010);
        let first = frame(b"start", 0x2000);
        let frames = read(&file(&[later, first], false)).unwrap();
        for f in &frames {
            let ip = f.ipv4().unwrap();
            assert!(ip.is_fragment());
            assert_eq!(ip.udp(), None);
        }
    }

    #[test]
    fn non_ip_frames_are_skipped() {
        let mut arp = vec![0u8; 12];
        arp.extend_from_slice(&0x0806u16.to_be_bytes());
        arp.extend_from_slice(&[0; 28]);
        let frames = read(&file(&[arp], false)).unwrap();
        assert_eq!(frames[0].ipv4(), None);
    }
}
