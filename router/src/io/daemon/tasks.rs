//! The daemon's helper tasks: they accept, resolve, read and write, and
//! report to the driver; none decides anything.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ipam_crdt::PeerName;
use quinn::VarInt;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::core::mesh::{ConnId, Failure};
use crate::core::names::{Host, PeerAddr};
use crate::core::wire::ControlMsg;
use crate::io::control::{self, ControlEndpoint, ControlError, ControlReceiver, ControlSender};
use crate::metrics::{Direction, Metrics};

/// What the helper tasks tell the driver.
#[derive(Debug)]
pub(super) enum Input {
    /// The accept loop: an inbound connection, authenticated or not.
    Accepted(Result<control::Authenticated, ControlError>),
    /// A dial finished.
    Dialed(SocketAddr, Result<control::Authenticated, ControlError>),
    /// A hostname PEER resolved (`Ok`), or failed to and will be retried (`Err`).
    Resolved(PeerAddr, Result<SocketAddr, String>),
    /// A message from a connection's reader.
    Message(ConnId, ControlMsg),
    /// A connection's reader or writer ended.
    Closed(ConnId, Failure),
    /// A write of the IPAM record finished.
    Persisted(u64, Result<(), String>),
    /// The host's pod routes were listed (only while addresses allocated
    /// again after lost state are held).
    Pods(Result<Vec<(std::net::IpAddr, String)>, String>),
}

/// One authenticated control connection.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) peer: PeerName,
    pub(super) connection: quinn::Connection,
    pub(super) outbox: mpsc::Sender<ControlMsg>,
    pub(super) reader: AbortHandle,
    pub(super) writer: AbortHandle,
}

/// Closes a connection normally and stops its tasks.
pub(super) fn close_conn(conn: &Conn, why: &str) {
    conn.connection
        .close(VarInt::from_u32(control::CLOSE_NORMAL), why.as_bytes());
    conn.reader.abort();
    conn.writer.abort();
}

/// Hands every inbound connection to the driver until the endpoint closes.
pub(super) async fn accept_loop(endpoint: Arc<ControlEndpoint>, tx: mpsc::Sender<Input>) {
    while let Some(result) = endpoint.accept().await {
        if tx.send(Input::Accepted(result)).await.is_err() {
            break;
        }
    }
}

/// Resolves a hostname PEER, retrying with backoff until it resolves.
pub(super) async fn resolve(peer: PeerAddr, tx: mpsc::Sender<Input>) {
    let Host::Name(host) = peer.host() else { return };
    let mut delay = RESOLVE_BACKOFF_MIN;
    loop {
        let result = match tokio::net::lookup_host((host.as_str(), peer.port())).await {
            Ok(mut addrs) => addrs
                .next()
                .ok_or_else(|| format!("cannot resolve {host}: no addresses")),
            Err(e) => Err(format!("cannot resolve {host}: {e}")),
        };
        let done = result.is_ok();
        if tx.send(Input::Resolved(peer.clone(), result)).await.is_err() || done {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RESOLVE_BACKOFF_MAX);
    }
}

/// Forwards a connection's messages to the driver, then reports why it ended.
pub(super) async fn read_loop(
    id: ConnId,
    mut receiver: ControlReceiver,
    tx: mpsc::Sender<Input>,
    metrics: Arc<Metrics>,
) {
    let mut counted = 0;
    let reason = loop {
        match receiver.recv_msg().await {
            Ok(Some(msg)) => {
                // Bytes read since the last message: this frame (and any part of the next).
                let len = usize::try_from(receiver.received_bytes() - counted).unwrap_or(usize::MAX);
                counted = receiver.received_bytes();
                metrics.gossip(Direction::In, len);
                if tx.send(Input::Message(id, msg)).await.is_err() {
                    return;
                }
            }
            Ok(None) => break Failure::Lost("the other router closed the connection".to_owned()),
            Err(e) => break Failure::Lost(e.to_string()),
        }
    };
    let _ = tx.send(Input::Closed(id, reason)).await;
}

/// Sends what the driver queues for a connection; reports a failed write.
pub(super) async fn write_loop(
    id: ConnId,
    mut sender: ControlSender,
    mut queue: mpsc::Receiver<ControlMsg>,
    tx: mpsc::Sender<Input>,
    metrics: Arc<Metrics>,
) {
    while let Some(msg) = queue.recv().await {
        match sender.send_msg(&msg).await {
            Ok(len) => metrics.gossip(Direction::Out, len),
            Err(e) => {
                let _ = tx.send(Input::Closed(id, Failure::Lost(e.to_string()))).await;
                return;
            }
        }
    }
}

/// First retry delay of a hostname PEER that does not resolve; doubles up to [`RESOLVE_BACKOFF_MAX`].
const RESOLVE_BACKOFF_MIN: Duration = Duration::from_secs(1);

/// Longest retry delay of a hostname PEER that does not resolve.
const RESOLVE_BACKOFF_MAX: Duration = Duration::from_secs(60);
