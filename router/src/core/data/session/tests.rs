//! Two (or three) routers' [`Sessions`] wired back to back, on virtual time.

use super::*;
use crate::core::data::keypair::OpenError;
use rand::SeedableRng as _;

const PSK: [u8; 32] = [42; 32];

struct Node {
    id: Identity,
    addr: SocketAddr,
    s: Sessions,
    /// Inner packets delivered to this node.
    got: Vec<Vec<u8>>,
    /// Transport datagrams refused, by reason.
    refused: Vec<OpenError>,
}

fn node(n: u8, psk: [u8; 32], now: Time) -> Node {
    let id = Identity::generate().unwrap();
    let s = Sessions::new(
        &id,
        psk,
        Duration::from_secs(1_700_000_000),
        ChaCha20Rng::seed_from_u64(u64::from(n)),
        now,
    );
    Node {
        id,
        addr: SocketAddr::from(([10, 0, 0, n], 6784)),
        s,
        got: Vec::new(),
        refused: Vec::new(),
    }
}

/// Both know each other from the topology.
fn introduce(a: &mut Node, b: &mut Node) -> (PeerId, PeerId) {
    let b_at_a =
        a.s.upsert_peer(t(0), b.id.name(), b.id.public_key(), &[b.addr])
            .unwrap();
    let a_at_b =
        b.s.upsert_peer(t(0), a.id.name(), a.id.public_key(), &[a.addr])
            .unwrap();
    (b_at_a, a_at_b)
}

/// Delivers one datagram to `to` as its I/O shell would.
fn deliver(to: &mut Node, now: Time, from: SocketAddr, mut bytes: Vec<u8>) {
    match wire::parse(&bytes) {
        Ok(Packet::Transport { receiver, counter }) => {
            let keys = to.s.recv_keys().find(|k| k.local_index == receiver).cloned();
            let Some(keys) = keys else {
                to.s.unknown_index(now, from, receiver);
                return;
            };
            match keys.open(now, counter, &mut bytes) {
                Ok(n) => {
                    to.s.authenticated(now, keys.peer, keys.local_index, from);
                    if n > 0 {
                        to.got
                            .push(bytes[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + n].to_vec());
                    }
                }
                Err(e) => to.refused.push(e),
            }
        }
        _ => to.s.handle_datagram(now, from, &bytes),
    }
}

/// Moves datagrams between the nodes until none is left; `lose` decides
/// which are lost. Returns how many were moved.
fn pump(nodes: &mut [&mut Node], now: Time, mut lose: impl FnMut(&[u8]) -> bool) -> usize {
    let mut moved = 0;
    loop {
        let mut any = false;
        for i in 0..nodes.len() {
            while let Some(t) = nodes[i].s.poll_transmit() {
                any = true;
                moved += 1;
                if lose(&t.bytes) {
                    continue;
                }
                let from = nodes[i].addr;
                if let Some(j) = nodes.iter().position(|n| n.addr == t.to) {
                    deliver(nodes[j], now, from, t.bytes);
                }
            }
        }
        if !any {
            return moved;
        }
    }
}

fn events(n: &mut Node) -> Vec<Event> {
    std::iter::from_fn(|| n.s.poll_event()).collect()
}

fn drops(n: &mut Node) -> Vec<HandshakeDrop> {
    events(n)
        .into_iter()
        .filter_map(|e| match e {
            Event::Dropped(d) => Some(d),
            _ => None,
        })
        .collect()
}

/// Sends `text` from `a` to peer `to` the way the packet path does.
fn send(a: &mut Node, to: PeerId, now: Time, text: &[u8]) {
    match a.s.send_keys(to, now).cloned() {
        Some(keys) => {
            let mut buf = staged_packet(text);
            let n = keys.seal(now, &mut buf, text.len()).unwrap();
            buf.truncate(n);
            let endpoint = a.s.peers().find(|p| p.0 == to).and_then(|p| p.2).unwrap();
            a.s.transmits.push_back(Transmit {
                to: endpoint,
                bytes: buf,
            });
        }
        None => a.s.need_session(now, to, Some(staged_packet(text))),
    }
}

fn t(ms: u64) -> Time {
    Time::from_millis(ms)
}

#[test]
fn first_packet_starts_a_handshake_and_arrives() {
    let now = t(1000);
    let (mut a, mut b) = (node(1, PSK, now), node(2, PSK, now));
    let (b_at_a, a_at_b) = introduce(&mut a, &mut b);
    send(&mut a, b_at_a, now, b"ping 1");
    assert!(a.s.send_keys(b_at_a, now).is_none());
    pump(&mut [&mut a, &mut b], now, |_| false);
    assert_eq!(
        b.got,
        vec![b"ping 1".to_vec()],
        "the staged packet went once the keys existed"
    );
    assert!(a.s.send_keys(b_at_a, now).is_some());
    assert!(
        b.s.send_keys(a_at_b, now).is_some(),
        "the responder's keys were confirmed by the packet"
    );
    send(&mut b, a_at_b, now, b"pong 1");
    pump(&mut [&mut a, &mut b], now, |_| false);
    assert_eq!(a.got, vec![b"pong 1".to_vec()]);
    let ev = events(&mut a);
    assert!(
        ev.contains(&Event::Established {
            peer: b.id.name(),
            initiator: true
        }),
        "{ev:?}"
    );
}

#[test]
fn the_responder_waits_for_confirmation_before_sending() {
    let now = t(0);
    let (mut a, mut b) = (node(1, PSK, now), node(2, PSK, now));
    let (b_at_a, a_at_b) = introduce(&mut a, &mut b);
    a.s.need_session(now, b_at_a, None);
    // Deliver the initiation only.
    let init = a.s.poll_transmit().unwrap();
    deliver(&mut b, now, a.addr, init.bytes);
    assert!(
        b.s.send_keys(a_at_b, now).is_none(),
        "unconfirmed keys are not for sending"
    );
    // Its own data waits, and does not start a second handshake.
    b.s.need_session(now, a_at_b, Some(staged_packet(b"early")));
    let out: Vec<_> = std::iter::from_fn(|| b.s.poll_transmit()).collect();
    assert_eq!(out.len(), 1, "only the response: {out:?}");
    deliver(&mut a, now, b.addr, out[0].bytes.clone());
    // a sends a keepalive to confirm; then b's staged packet goes.
    pump(&mut [&mut a, &mut b], now, |_| false);
    assert_eq!(a.got, vec![b"early".to_vec()]);
}

#[test]
fn another_cluster_is_dropped_at_mac1() {
    let now = t(0);
    let (mut a, mut b) = (node(1, [1; 32], now), node(2, PSK, now));
    let (b_at_a, _) = introduce(&mut a, &mut b);
    send(&mut a, b_at_a, now, b"hello");
    pump(&mut [&mut a, &mut b], now, |_| false);
    assert!(b.got.is_empty());
    assert_eq!(drops(&mut b), vec![HandshakeDrop::BadMac]);
    assert!(b.s.recv_keys().next().is_none());
}

#[test]
fn an_unknown_key_in_the_cluster_gets_no_session() {
    let now = t(0);
    let (mut a, mut b) = (node(1, PSK, now), node(2, PSK, now));
    // a knows b, b does not know a (and never learns of it).
    let b_at_a =
        a.s.upsert_peer(t(0), b.id.name(), b.id.public_key(), &[b.addr])
            .unwrap();
    send(&mut a, b_at_a, now, b"hello");
    pump(&mut [&mut a, &mut b], now, |_| false);
    assert!(
        drops(&mut b).is_empty(),
        "held for a while: its entry may be on its way"
    );
    assert!(b.s.recv_keys().next().is_none());
    let later = now + PARK_TIME;
    b.s.handle_timeout(later);
    assert_eq!(drops(&mut b), vec![HandshakeDrop::UnknownPeer]);
    assert!(b.got.is_empty());
    assert!(
        b.s.recv_keys().next().is_none(),
        "no session for a key the topology never showed"
    );
}

#[test]
fn an_initiation_that_beats_the_gossip_is_answered_when_the_entry_arrives() {
    let now = t(0);
    let (mut a, mut b) = (node(1, PSK, now), node(2, PSK, now));
    let b_at_a = a.s.upsert_peer(now, b.id.name(), b.id.public_key(), &[b.addr]).unwrap();
    send(&mut a, b_at_a, now, b"early");
    pump(&mut [&mut a, &mut b], now, |_| false);
    assert!(b.got.is_empty());
    // a's entry reaches b 300 ms later: the held initiation is answered at
    // once, before a's first retransmission (1 s), and the packet arrives.
    let soon = now + Duration::from_millis(300);
    b.s.upsert_peer(soon, a.id.name(), a.id.public_key(), &[a.addr])
        .unwrap();
    pump(&mut [&mut a, &mut b], soon, |_| false);
    assert_eq!(b.got, vec![b"early".to_vec()]);
    assert!(drops(&mut b).is_empty());
    assert!(drops(&mut a).is_empty());
}

#[test]
fn a_key_that_does_not_match_its_name_is_refused() {
    let now = t(0);
    let (mut a, b) = (node(1, PSK, now), node(2, PSK, now));
    let other = Identity::generate().unwrap();
    assert_eq!(
        a.s.upsert_peer(t(0), b.id.name(), other.public_key(), &[b.addr]),
        Err(PeerError::KeyMismatch)
    );
    assert_eq!(
        a.s.upsert_peer(t(0), a.id.name(), a.id.public_key(), &[]),
        Err(PeerError::Itself)
    );
}

#[test]
fn a_replayed_initiation_changes_nothing() {
    let now = t(0);
    let (mut a, mut b) = (node(1, PSK, now), node(2, PSK, now));
    let (b_at_a, _) = introduce(&mut a, &mut b);
    a.s.need_session(now, b_at_a, None);
    let init = a.s.poll_transmit().unwrap();
    deliver(&mut b, now, a.addr, init.bytes.clone());
    let _ = b.s.poll_transmit();
    let keys_before: Vec<u32> = b.s.recv_keys().map(|k| k.local_index).collect();
    deliver(
        &mut b,
        now + Duration::from_secs(1),
        SocketAddr::from(([6, 6, 6, 6], 1)),
        init.bytes,
    );
    assert_eq!(drops(&mut b), vec![HandshakeDrop::ReplayedInitiation]);
    assert!(b.s.poll_transmit().is_none());
    assert_eq!(b.s.recv_keys().map(|k| k.local_index).collect::<Vec<_>>(), keys_before);
    assert_eq!(
        b.s.peers().next().and_then(|p| p.2),
        Some(a.addr),
        "a replay from elsewhere does not move the endpoint"
    );
}

/// An address that never answered: each retransmission waits for its own
/// backoff (1, 2, 4, 8, 16 s, then 30 s), so an advertised address that is
/// not the peer's costs little; after 90 s the handshake is abandoned with
/// the packets it held.
#[test]
fn a_lost_initiation_is_retried_with_backoff_then_abandoned() {
    let t0 = t(0);
    let (mut a, mut b) = (node(1, PSK, t0), node(2, PSK, t0));
    let (b_at_a, _) = introduce(&mut a, &mut b);
    send(&mut a, b_at_a, t0, b"lost");
    let mut sends = vec![0u64];
    let _ = a.s.poll_transmit();
    let mut now = t0;
    while now < t(100_000) {
        now = now + Duration::from_millis(50);
        a.s.handle_timeout(now);
        while let Some(tx) = a.s.poll_transmit() {
            assert_eq!(tx.bytes[0], TYPE_INITIATION);
            sends.push(now.as_millis());
        }
    }
    let gaps: Vec<u64> = sends.windows(2).map(|w| w[1] - w[0]).collect();
    assert!((1000..1700).contains(&gaps[0]), "{gaps:?}");
    assert!((2000..2700).contains(&gaps[1]), "{gaps:?}");
    assert!((4000..4700).contains(&gaps[2]), "{gaps:?}");
    assert!((8000..8700).contains(&gaps[3]), "{gaps:?}");
    assert!((16_000..16_700).contains(&gaps[4]), "{gaps:?}");
    assert!(gaps[5..].iter().all(|g| (30_000..30_700).contains(g)), "{gaps:?}");
    let last = *sends.last().unwrap();
    assert!(last < 90_000, "abandoned after about 90 s: {sends:?}");
    assert_eq!(sends.len(), 7, "{sends:?}");
    let ev = events(&mut a);
    assert!(
        ev.contains(&Event::GaveUp {
            peer: b.id.name(),
            dropped: 1
        }),
        "{ev:?}"
    );
    // Nothing is pending: new traffic starts over.
    send(&mut a, b_at_a, now, b"again");
    pump(&mut [&mut a, &mut b], now, |_| false);
    assert_eq!(b.got, vec![b"again".to_vec()]);
}

#[test]
fn a_restarted_peer_gets_a_new_handshake_at_once() {
    let now = t(1000);
    let (mut a, mut b) = (node(1, PSK, now), node(2, PSK, now));
    let (b_at_a, _) = introduce(&mut a, &mut b);
    send(&mut a, b_at_a, now, b"before");
    pump(&mut [&mut a, &mut b], now, |_| false);
    assert_eq!(b.got.len(), 1);
    // b restarts: same identity, no sessions.
    let later = now + Duration::from_secs(30);
    let mut b2 = Node {
        s: Sessions::new(
            &b.id,
            PSK,
            Duration::from_secs(1_700_000_100),
            ChaCha20Rng::seed_from_u64(99),
            later,
        ),
        id: Identity::from_private_key(*b.id.private_key()).unwrap(),
        addr: b.addr,
        got: Vec::new(),
        refused: Vec::new(),
    };
    b2.s.upsert_peer(t(0), a.id.name(), a.id.public_key(), &[a.addr])
        .unwrap();
    send(&mut a, b_at_a, later, b"after restart");
    pump(&mut [&mut a, &mut b2], later, |_| false);
    // The first datagram met no session; the stale notice made a handshake
    // with no timer; the next packet goes through.
    send(&mut a, b_at_a, later, b"resumed");
    pump(&mut [&mut a, &mut b2], later, |_| false);
    assert_eq!(b2.got, vec![b"resumed".to_vec()]);
}

#[test]
fn keys_are_renewed_while_traffic_flows() {
    let t0 = t(0);
    let (mut a, mut b) = (node(1, PSK, t0), node(2, PSK, t0));
    let (b_at_a, a_at_b) = introduce(&mut a, &mut b);
    let mut now = t0;
    let mut indices = std::collections::BTreeSet::new();
    for i in 0..4000u64 {
        now = t(i * 100);
        send(&mut a, b_at_a, now, b"a->b");
        send(&mut b, a_at_b, now, b"b->a");
        a.s.handle_timeout(now);
        b.s.handle_timeout(now);
        pump(&mut [&mut a, &mut b], now, |_| false);
        indices.insert(a.s.send_keys(b_at_a, now).unwrap().local_index);
    }
    assert_eq!(b.got.len(), 4000, "nothing lost across rekeys");
    assert_eq!(a.got.len(), 4000);
    // 400 s of traffic: renewed about every two minutes.
    assert!((3..=5).contains(&indices.len()), "{} key sets", indices.len());
    assert!(
        a.refused.is_empty() && b.refused.is_empty(),
        "{:?} {:?}",
        a.refused,
        b.refused
    );
    let _ = now;
}

#[test]
fn a_keepalive_answers_one_way_traffic() {
    let t0 = t(0);
    let (mut a, mut b) = (node(1, PSK, t0), node(2, PSK, t0));
    let (b_at_a, _) = introduce(&mut a, &mut b);
    send(&mut a, b_at_a, t0, b"one way");
    pump(&mut [&mut a, &mut b], t0, |_| false);
    let before = a.s.peers().next().map(|p| Activity::time(&p.3.last_recv)).unwrap();
    let mut now = t0;
    while now < t(11_000) {
        now = now + TICK;
        a.s.handle_timeout(now);
        b.s.handle_timeout(now);
        pump(&mut [&mut a, &mut b], now, |_| false);
    }
    let after = a.s.peers().next().map(|p| Activity::time(&p.3.last_recv)).unwrap();
    assert!(
        after > before,
        "b sent a keepalive within 10 s: {before:?} -> {after:?}"
    );
}

#[test]
fn unanswered_data_leads_to_a_new_handshake() {
    let t0 = t(0);
    let (mut a, mut b) = (node(1, PSK, t0), node(2, PSK, t0));
    let (b_at_a, _) = introduce(&mut a, &mut b);
    send(&mut a, b_at_a, t0, b"x");
    pump(&mut [&mut a, &mut b], t0, |_| false);
    // From now on everything b sends is lost.
    let b_addr = b.addr;
    let mut inits = 0;
    let mut now = t0;
    while now < t(20_000) {
        now = now + TICK;
        send(&mut a, b_at_a, now, b"data");
        a.s.handle_timeout(now);
        b.s.handle_timeout(now);
        while let Some(tx) = a.s.poll_transmit() {
            if tx.bytes[0] == TYPE_INITIATION {
                inits += 1;
            }
            deliver(&mut b, now, a.addr, tx.bytes);
        }
        while b.s.poll_transmit().is_some() {}
    }
    let _ = b_addr;
    assert!(inits >= 1, "a new handshake after 15 s without an answer");
}

#[test]
fn under_load_a_cookie_is_required_and_then_accepted() {
    let now = t(0);
    let (mut a, mut b) = (node(1, PSK, now), node(2, PSK, now));
    let (b_at_a, _) = introduce(&mut a, &mut b);
    // Load b up with (valid-mac) initiations from a's key at other addresses.
    for i in 0..super::super::cookie::LOAD_THRESHOLD {
        a.s.need_session(now, b_at_a, None);
        let init = a.s.poll_transmit().unwrap();
        let from = SocketAddr::from(([10, 1, (i / 250) as u8, (i % 250) as u8 + 1], 9));
        // Clear a's pending state and the address's backoff, so it builds
        // and sends a fresh one next time.
        if let Some(p) = a.s.peers[b_at_a.0 as usize].as_mut() {
            p.pending = None;
            for c in &mut p.candidates {
                c.next_at = now;
                c.delay = FIRST_RETRY;
            }
        }
        b.s.handle_datagram(now, from, &init.bytes);
        while b.s.poll_transmit().is_some() {}
    }
    let _ = events(&mut b);
    // Now a's own initiation gets a cookie reply, not a response.
    a.s.need_session(now, b_at_a, Some(staged_packet(b"via cookie")));
    let init = a.s.poll_transmit().unwrap();
    deliver(&mut b, now, a.addr, init.bytes);
    let reply = b.s.poll_transmit().unwrap();
    assert_eq!(reply.bytes[0], wire::TYPE_COOKIE);
    deliver(&mut a, now, b.addr, reply.bytes);
    assert!(drops(&mut a).is_empty(), "the cookie opened");
    // The retransmission carries mac2 and gets through.
    let retry = now + Duration::from_millis(1400);
    a.s.handle_timeout(retry);
    pump(&mut [&mut a, &mut b], retry, |_| false);
    assert_eq!(b.got, vec![b"via cookie".to_vec()]);
}

#[test]
fn the_endpoint_moves_only_with_authenticated_datagrams() {
    let now = t(0);
    let (mut a, mut b) = (node(1, PSK, now), node(2, PSK, now));
    let (b_at_a, a_at_b) = introduce(&mut a, &mut b);
    send(&mut a, b_at_a, now, b"x");
    pump(&mut [&mut a, &mut b], now, |_| false);
    // A forged datagram from elsewhere: fails to open, endpoint stays.
    let mut forged = staged_packet(b"forged");
    wire::write_transport_header(
        (&mut forged[..16]).try_into().unwrap(),
        b.s.recv_keys().next().unwrap().local_index,
        77,
    );
    deliver(&mut b, now, SocketAddr::from(([6, 6, 6, 6], 1)), forged);
    assert_eq!(b.refused, vec![OpenError::Auth]);
    assert_eq!(b.s.peers().find(|p| p.0 == a_at_b).unwrap().2, Some(a.addr));
    // a moves: its next datagram comes from a new address.
    a.addr = SocketAddr::from(([10, 0, 0, 11], 40000));
    send(&mut a, b_at_a, now, b"moved");
    pump(&mut [&mut a, &mut b], now, |_| false);
    assert_eq!(b.s.peers().find(|p| p.0 == a_at_b).unwrap().2, Some(a.addr));
    assert!(events(&mut b).iter().any(|e| matches!(e, Event::Roamed { .. })));
}

#[test]
fn garbage_is_ignored_without_panicking() {
    let now = t(0);
    let mut b = node(2, PSK, now);
    let from = SocketAddr::from(([1, 2, 3, 4], 5));
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    for len in [0usize, 1, 4, 16, 92, 148, 64, 200] {
        for kind in 0..7u8 {
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if len >= 4 {
                bytes[0] = kind;
                bytes[1..4].fill(0);
            }
            b.s.handle_datagram(now, from, &bytes);
        }
    }
    assert!(b.s.poll_transmit().is_none());
    assert!(b.s.recv_keys().next().is_none());
}

// ---- eager sessions, endpoints and liveness (Mode::Eager, as the router runs) ----

fn eager(n: u8, now: Time) -> Node {
    let mut node = node(n, PSK, now);
    node.s = Sessions::new(
        &node.id,
        PSK,
        Duration::from_secs(1_700_000_000),
        ChaCha20Rng::seed_from_u64(u64::from(n)),
        now,
    )
    .with_mode(Mode::Eager {
        keepalive: PERSISTENT_KEEPALIVE,
    });
    node
}

/// One datagram sent, as [`run`] records it.
#[derive(Clone, Copy, Debug)]
struct Sent {
    at: Time,
    from: SocketAddr,
    to: SocketAddr,
    kind: u8,
}

/// Runs every node's timers every [`TICK`] from `from` to `until`,
/// delivering datagrams at once to whichever node has the address they
/// are sent to (others vanish: a dead address); returns what was sent.
fn run(nodes: &mut [&mut Node], from: Time, until: Time) -> Vec<Sent> {
    let mut log = Vec::new();
    let mut now = from;
    while now <= until {
        for n in nodes.iter_mut() {
            n.s.handle_timeout(now);
        }
        loop {
            let mut any = false;
            for i in 0..nodes.len() {
                while let Some(t) = nodes[i].s.poll_transmit() {
                    any = true;
                    let from = nodes[i].addr;
                    log.push(Sent {
                        at: now,
                        from,
                        to: t.to,
                        kind: t.bytes[0],
                    });
                    if let Some(j) = nodes.iter().position(|n| n.addr == t.to) {
                        deliver(nodes[j], now, from, t.bytes);
                    }
                }
            }
            if !any {
                break;
            }
        }
        now = now + TICK;
    }
    log
}

fn reach(n: &Node, peer: &Node, now: Time) -> (Reach, Option<SocketAddr>) {
    let s =
        n.s.peer_status(now)
            .find(|s| s.name == peer.id.name())
            .expect("a known peer");
    (s.reach, s.endpoint)
}

#[test]
fn eager_sessions_start_at_once_and_stay_up_without_traffic() {
    let t0 = t(0);
    let (mut a, mut b) = (eager(1, t0), eager(2, t0));
    introduce(&mut a, &mut b);
    // The introduction alone started the handshakes: no packet was sent.
    let log = run(&mut [&mut a, &mut b], t0, t(500));
    assert!(log.iter().any(|s| s.kind == TYPE_INITIATION && s.at == t0), "{log:?}");
    assert_eq!(reach(&a, &b, t(500)), (Reach::Up, Some(b.addr)));
    assert_eq!(reach(&b, &a, t(500)), (Reach::Up, Some(a.addr)));
    // Ten idle minutes: still up every second of them, each side sending at
    // least every 25 s (keepalives) and the keys renewed on time.
    let end = t(600_000);
    let mut log = Vec::new();
    let mut now = t(500);
    while now < end {
        let next = now + Duration::from_secs(1);
        log.extend(run(&mut [&mut a, &mut b], now, next));
        now = next + TICK;
        assert_eq!(reach(&a, &b, now).0, Reach::Up, "at {now:?}");
        assert_eq!(reach(&b, &a, now).0, Reach::Up, "at {now:?}");
    }
    for who in [a.addr, b.addr] {
        let times: Vec<u64> = log.iter().filter(|s| s.from == who).map(|s| s.at.as_millis()).collect();
        let gap = times.windows(2).map(|w| w[1] - w[0]).max().unwrap();
        assert!(gap <= 25_500, "{who} went quiet for {gap} ms");
        // Not chattier than a keepalive per 25 s and a rekey per 2 min, roughly.
        assert!(
            times.len() < 600 / 25 + 600 / 120 * 2 + 10,
            "{who} sent {}",
            times.len()
        );
    }
    let rekeys = log.iter().filter(|s| s.kind == TYPE_INITIATION).count();
    assert!(rekeys >= 4, "keys are renewed about every two minutes: {rekeys}");
    assert!(
        a.s.recv_keys().all(|k| end.since(k.created) < REJECT_AFTER_TIME),
        "no keys outlive REJECT_AFTER_TIME"
    );
    assert!(drops(&mut a).is_empty() && drops(&mut b).is_empty());
}

#[test]
fn the_address_that_answers_is_kept_and_the_others_back_off() {
    let t0 = t(0);
    let (mut a, mut b) = (eager(1, t0), eager(2, t0));
    let dead: SocketAddr = ([192, 0, 2, 99], 6784).into();
    // a learns two addresses for b, the dead one first; b knows a's.
    a.s.upsert_peer(t0, b.id.name(), b.id.public_key(), &[dead, b.addr])
        .unwrap();
    b.s.upsert_peer(t0, a.id.name(), a.id.public_key(), &[a.addr]).unwrap();
    let log = run(&mut [&mut a, &mut b], t0, t(600_000));
    assert_eq!(reach(&a, &b, t(600_000)), (Reach::Up, Some(b.addr)));
    let to_dead: Vec<u64> = log.iter().filter(|s| s.to == dead).map(|s| s.at.as_millis()).collect();
    // Tried with the first initiation, and never again once b answered at
    // the other address: rekeys go to the endpoint alone.
    assert_eq!(to_dead, vec![0], "{to_dead:?}");
    let to_b = log.iter().filter(|s| s.from == a.addr && s.to == b.addr).count();
    assert!(to_b > 20, "{to_b}");
}

#[test]
fn an_address_that_never_answers_is_backed_off_and_the_peer_is_down() {
    let t0 = t(0);
    let mut a = eager(1, t0);
    let b = eager(2, t0);
    let dead: SocketAddr = ([192, 0, 2, 99], 6784).into();
    a.s.upsert_peer(t0, b.id.name(), b.id.public_key(), &[dead]).unwrap();
    let early = run(&mut [&mut a], t0, t(10_000));
    assert_eq!(reach(&a, &b, t(10_000)), (Reach::Connecting, None));
    let log = run(&mut [&mut a], t(10_250), t(600_000));
    assert_eq!(reach(&a, &b, t(600_000)), (Reach::Down, None));
    let sends: Vec<u64> = early.iter().chain(&log).map(|s| s.at.as_millis()).collect();
    let gaps: Vec<u64> = sends.windows(2).map(|w| w[1] - w[0]).collect();
    // 1, 2, 4, 8, 16 s, then every 30 s: about 25 in ten minutes, where a
    // handshake every 5 s would be 120.
    assert!(gaps.windows(2).all(|w| w[1] + 500 >= w[0]), "never faster: {gaps:?}");
    assert!(
        gaps.iter().rev().take(10).all(|g| (30_000..31_000).contains(g)),
        "{gaps:?}"
    );
    assert!(sends.len() <= 26, "{} initiations: {sends:?}", sends.len());
    let gave_up = events(&mut a)
        .iter()
        .filter(|e| matches!(e, Event::GaveUp { .. }))
        .count();
    assert_eq!(gave_up, 1, "reported once, not every round");
}

#[test]
fn a_peer_that_comes_back_is_up_again_and_a_dead_one_goes_down() {
    let t0 = t(0);
    let (mut a, mut b) = (eager(1, t0), eager(2, t0));
    introduce(&mut a, &mut b);
    run(&mut [&mut a, &mut b], t0, t(1_000));
    assert_eq!(reach(&a, &b, t(1_000)).0, Reach::Up);
    // b goes silent (its host is cut off): stale after 30 s, down after 90 s more.
    run(&mut [&mut a], t(1_250), t(40_000));
    assert_eq!(reach(&a, &b, t(40_000)).0, Reach::Connecting);
    run(&mut [&mut a], t(40_250), t(140_000));
    assert_eq!(reach(&a, &b, t(140_000)).0, Reach::Down);
    // b is back: up again within its own retry (it keeps trying too) or ours.
    let log = run(&mut [&mut a, &mut b], t(140_250), t(180_000));
    assert_eq!(reach(&a, &b, t(180_000)).0, Reach::Up, "{log:?}");
    assert_eq!(reach(&b, &a, t(180_000)).0, Reach::Up);
}

#[test]
fn new_addresses_from_the_topology_do_not_move_the_endpoint() {
    let t0 = t(0);
    let (mut a, mut b) = (eager(1, t0), eager(2, t0));
    let (b_at_a, _) = introduce(&mut a, &mut b);
    run(&mut [&mut a, &mut b], t0, t(1_000));
    assert_eq!(reach(&a, &b, t(1_000)), (Reach::Up, Some(b.addr)));
    // Someone's gossip claims b moved to a third party's address: a keeps
    // sending where b's authenticated datagrams come from.
    let victim: SocketAddr = ([203, 0, 113, 1], 6784).into();
    a.s.upsert_peer(t(1_000), b.id.name(), b.id.public_key(), &[victim])
        .unwrap();
    let log = run(&mut [&mut a, &mut b], t(1_250), t(300_000));
    assert_eq!(reach(&a, &b, t(300_000)), (Reach::Up, Some(b.addr)));
    assert!(
        log.iter().all(|s| s.to != victim),
        "{:?}",
        log.iter().find(|s| s.to == victim)
    );
    send(&mut a, b_at_a, t(300_000), b"still direct");
    pump(&mut [&mut a, &mut b], t(300_000), |_| false);
    assert_eq!(b.got, vec![b"still direct".to_vec()]);
}
