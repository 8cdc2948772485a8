//! Control connections over loopback: authentication, frames, refusals.
//!
//! Every await is bounded by [`within`], so a bug fails the test instead of
//! hanging it; nothing sleeps to wait for state.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ipam_crdt::PeerName;
use weft_router::core::handshake::HandshakeError;
use weft_router::core::mesh::{Failure, Message};
use weft_router::core::wire::ControlMsg;
use weft_router::identity::Identity;
use weft_router::io::control::{Authenticated, ControlEndpoint, ControlError};
use weft_router::secret::ClusterSecret;

const SECRET: &str = "correct horse battery staple";

/// Per-test log output, shown only when the test fails.
fn subscribe() -> tracing::subscriber::DefaultGuard {
    let sub = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::new("weft_router=trace,quinn=info"))
        .finish();
    tracing::subscriber::set_default(sub)
}

/// Awaits `f`, failing the test after 20 s (longer than the 10 s handshake
/// timeout, so a stuck handshake shows as its own error first).
async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(20), f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

fn endpoint(secret: &str) -> ControlEndpoint {
    let identity = Arc::new(Identity::generate().unwrap());
    let secret = ClusterSecret::new(secret.as_bytes().to_vec()).unwrap();
    ControlEndpoint::bind("127.0.0.1:0".parse().unwrap(), identity, &secret).unwrap()
}

fn addr(e: &ControlEndpoint) -> SocketAddr {
    e.local_addr().unwrap()
}

/// `dialer` connects to `acceptor`; returns both ends.
async fn pair(dialer: &ControlEndpoint, acceptor: &ControlEndpoint) -> (Authenticated, Authenticated) {
    let (dialed, accepted) = within("connect and accept", async {
        tokio::join!(dialer.connect(addr(acceptor)), acceptor.accept())
    })
    .await;
    (dialed.unwrap(), accepted.expect("endpoint open").unwrap())
}

fn summary(n: u64) -> ControlMsg {
    ControlMsg::Gossip(Message::Summary(n))
}

#[tokio::test]
async fn same_secret_authenticates_and_exchanges_gossip() {
    let _log = subscribe();
    let (a, b) = (endpoint(SECRET), endpoint(SECRET));
    let (mut at_a, mut at_b) = pair(&a, &b).await;
    assert_eq!(at_a.peer_name(), b.name());
    assert_eq!(at_b.peer_name(), a.name());
    assert_eq!(at_b.peer_name(), Identity::name_of(&at_b.peer_public_key()));

    within("a to b", at_a.send_msg(&summary(1))).await.unwrap();
    assert_eq!(within("b receives", at_b.recv_msg()).await.unwrap(), Some(summary(1)));
    let request = ControlMsg::Gossip(Message::Request(vec![PeerName::from_u64(5)]));
    within("b to a", at_b.send_msg(&request)).await.unwrap();
    within("b to a", at_b.send_msg(&summary(2))).await.unwrap();
    assert_eq!(within("a receives", at_a.recv_msg()).await.unwrap(), Some(request));
    assert_eq!(within("a receives", at_a.recv_msg()).await.unwrap(), Some(summary(2)));

    for e in [&a, &b] {
        let counts = e.stats().snapshot();
        assert_eq!(counts.established, 1, "{counts:?}");
        assert_eq!(counts.handshake, Default::default(), "{counts:?}");
        assert_eq!(counts.connection_failed + counts.timed_out, 0, "{counts:?}");
    }
}

#[tokio::test]
async fn wrong_secret_never_authenticates_in_either_direction() {
    let _log = subscribe();
    let good = endpoint(SECRET);
    let bad = endpoint("not the cluster secret");

    // The outsider dials: the good side (responder) detects it; the outsider
    // learns why from the close code.
    let (dialed, accepted) = within("bad dials good", async {
        tokio::join!(bad.connect(addr(&good)), good.accept())
    })
    .await;
    assert_auth_failed(dialed.err());
    assert_auth_failed(accepted.expect("endpoint open").err());

    // The good side dials the outsider: the outsider detects it this time.
    let (dialed, accepted) = within("good dials bad", async {
        tokio::join!(good.connect(addr(&bad)), bad.accept())
    })
    .await;
    assert_auth_failed(dialed.err());
    assert_auth_failed(accepted.expect("endpoint open").err());

    for e in [&good, &bad] {
        let counts = e.stats().snapshot();
        assert_eq!(counts.handshake.authentication_failed, 2, "{counts:?}");
        assert_eq!(counts.established, 0, "{counts:?}");
    }

    // Nothing from the outsider reached the good side: the next connection it
    // hands out is a member's, and the first frame on it is that member's.
    let member = endpoint(SECRET);
    let (mut at_member, mut at_good) = pair(&member, &good).await;
    assert_eq!(at_good.peer_name(), member.name());
    assert_ne!(at_good.peer_name(), bad.name());
    within("member to good", at_member.send_msg(&summary(7))).await.unwrap();
    assert_eq!(
        within("good receives", at_good.recv_msg()).await.unwrap(),
        Some(summary(7))
    );
    assert_eq!(good.stats().snapshot().established, 1);
}

#[tokio::test]
async fn self_dial_is_refused() {
    let _log = subscribe();
    let a = endpoint(SECRET);
    let (dialed, accepted) = within("self dial", async { tokio::join!(a.connect(addr(&a)), a.accept()) }).await;
    let dialed = dialed.expect_err("self dial refused");
    assert!(
        matches!(dialed, ControlError::Handshake(HandshakeError::SelfConnection)),
        "{dialed:?}"
    );
    let accepted = accepted.expect("endpoint open").expect_err("self dial refused");
    assert!(
        matches!(accepted, ControlError::Handshake(HandshakeError::SelfConnection)),
        "{accepted:?}"
    );
    let counts = a.stats().snapshot();
    // Counted once by the dialing side and once by the accepting side.
    assert_eq!(counts.handshake.self_connection, 2, "{counts:?}");
    assert_eq!(counts.established, 0, "{counts:?}");
}

#[tokio::test]
async fn closed_endpoint_stops_accepting() {
    let _log = subscribe();
    let a = endpoint(SECRET);
    a.close();
    assert!(within("accept after close", a.accept()).await.is_none());
}

fn assert_auth_failed(err: Option<ControlError>) {
    let err = err.expect("authentication must fail");
    assert!(
        matches!(err, ControlError::Handshake(HandshakeError::AuthenticationFailed)),
        "{err:?}"
    );
    assert_eq!(err.failure(), Failure::AuthenticationFailed);
}
