//! The control endpoint: one QUIC endpoint per router that dials and accepts
//! control connections and authenticates them.
//!
//! A control connection is a QUIC connection (TLS 1.3, ALPN [`ALPN`]) with
//! one bidirectional stream, opened by the dialer. On that stream:
//!
//! 1. The four messages of the Noise handshake ([`crate::core::handshake`]),
//!    each preceded by its length as a big-endian `u16`. The prologue binds
//!    the handshake to this TLS session through 32 bytes of exported keying
//!    material ([`BINDING_LABEL`]).
//! 2. Once authenticated, control frames ([`crate::core::wire`]).
//!
//! **Why TLS accepts any certificate.** Each endpoint presents a fresh
//! self-signed certificate that nobody can check, and the dialer accepts any
//! server certificate (`DangerousAcceptAnyServerCert`). TLS here only
//! provides the transport: encryption, integrity and a per-session exporter.
//! Authentication is the Noise handshake, which requires the cluster secret
//! and proves each side's static key, and whose channel binding ties the TLS
//! session to those keys: a man in the middle who terminates TLS on both
//! sides holds two sessions with two different exporters, so the Noise
//! handshake fails. No frame is read or sent before the handshake succeeds.
//!
//! Failures close the QUIC connection with one application error code per
//! reason (`CLOSE_*`), so the other side learns why, and are counted in
//! [`ControlStats`]. Keys and the secret are never logged.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ipam_crdt::PeerName;
use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, IdleTimeout, ReadError, ReadExactError, RecvStream, SendStream, VarInt, WriteError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::sync::{Mutex, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{Instrument, debug, debug_span, info, trace};
use zeroize::Zeroizing;

use crate::core::handshake::{
    BINDING_LABEL, BINDING_LEN, Handshake, HandshakeCounts, HandshakeError, HandshakeStats, MAX_MESSAGE_LEN, Step,
};
use crate::core::mesh::{ConnId, Failure};
use crate::core::wire::{self, ControlMsg, Decoded, FrameReader, WireError};
use crate::identity::Identity;
use crate::secret::{CONTROL_PSK_LABEL, ClusterSecret};

/// A router's control endpoint: dials and accepts authenticated control connections.
///
/// Inbound connections are authenticated concurrently by a background task
/// (at most [`MAX_PENDING_HANDSHAKES`] at a time; more are refused), and
/// [`ControlEndpoint::accept`] hands out the results in order of completion.
/// Dropping the endpoint stops that task and abandons handshakes in progress.
pub struct ControlEndpoint {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    accepted: Mutex<mpsc::Receiver<Result<Authenticated, ControlError>>>,
    acceptor: JoinHandle<()>,
}

/// An authenticated control connection: the peer holds the cluster secret
/// and the static key behind [`Authenticated::peer_name`].
///
/// Frames go over the handshake's stream with [`Authenticated::send_msg`] and
/// [`Authenticated::recv_msg`]; to send and receive from different tasks,
/// split it with [`Authenticated::into_split`]. The connection closes when
/// every handle to it is dropped, or with [`Authenticated::close`].
#[derive(Debug)]
pub struct Authenticated {
    peer_name: PeerName,
    peer_public_key: [u8; 32],
    sender: ControlSender,
    receiver: ControlReceiver,
}

/// The sending half of an [`Authenticated`] connection.
#[derive(Debug)]
pub struct ControlSender {
    connection: quinn::Connection,
    send: SendStream,
}

/// The receiving half of an [`Authenticated`] connection.
#[derive(Debug)]
pub struct ControlReceiver {
    connection: quinn::Connection,
    recv: RecvStream,
    reader: FrameReader,
    stats: Arc<ControlStats>,
    /// Bytes read from the stream, for the traffic counters.
    received: u64,
}

/// Why a control connection was not established. No variant holds key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The handshake failed, detected here or reported by the peer's close
    /// code (authentication failure, self-connection).
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The connection and handshake did not finish within [`HANDSHAKE_TIMEOUT`].
    #[error("no authenticated control connection within {HANDSHAKE_TIMEOUT:?}")]
    TimedOut,
    /// The dial could not start (e.g. an unusable address, or the endpoint is closing).
    #[error("cannot dial {addr}: {source}")]
    Dial {
        /// Where.
        addr: SocketAddr,
        /// quinn's reason.
        source: quinn::ConnectError,
    },
    /// The QUIC connection failed or was closed before authentication
    /// (unreachable, TLS refused, closed by the peer for another reason).
    #[error("control connection failed: {0}")]
    Connection(ConnectionError),
    /// Reading the handshake stream failed: the peer ended or reset it.
    #[error("cannot read the control stream during the handshake: {0}")]
    Read(ReadExactError),
    /// Writing the handshake stream failed: the peer stopped it.
    #[error("cannot write the control stream during the handshake: {0}")]
    Write(WriteError),
    /// TLS would not export the channel binding (not expected with TLS 1.3).
    #[error("cannot export the TLS channel binding")]
    Binding,
}

/// Why a frame could not be sent or received on an authenticated connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// Reading the stream failed (connection lost, stream reset).
    #[error("cannot read the control stream: {0}")]
    Read(#[from] ReadError),
    /// Writing the stream failed (connection lost, stream stopped).
    #[error("cannot write the control stream: {0}")]
    Write(#[from] WriteError),
    /// The peer sent an invalid frame; the connection has been closed with
    /// [`CLOSE_PROTOCOL_VIOLATION`]. When sending: the message is too big.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The peer finished the stream in the middle of a frame.
    #[error("control stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the incomplete frame.
        buffered: usize,
    },
}

/// Why [`ControlEndpoint::bind`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// Not called inside a tokio runtime.
    #[error("the control endpoint must be bound inside a tokio runtime")]
    NoRuntime,
    /// rcgen could not make the TLS key or certificate.
    #[error("cannot make the TLS certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("cannot configure TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The TLS configuration lacks the cipher suite QUIC's Initial packets need.
    #[error("TLS configuration unusable for QUIC: {0}")]
    Quic(#[from] NoInitialCipherSuite),
    /// The UDP socket could not be bound.
    #[error("cannot bind the control endpoint to {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
}

/// Control connection counters, shared by the dialer and the acceptor, for metrics.
#[derive(Debug, Default)]
pub struct ControlStats {
    handshake: HandshakeStats,
    established: AtomicU64,
    timed_out: AtomicU64,
    connection_failed: AtomicU64,
    refused: AtomicU64,
    unknown_frames: AtomicU64,
    invalid_frames: AtomicU64,
}

/// A copy of [`ControlStats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ControlCounts {
    /// Failed handshakes by reason, whether detected here or reported by the peer.
    pub handshake: HandshakeCounts,
    /// Connections authenticated (both directions).
    pub established: u64,
    /// Connections not authenticated within [`HANDSHAKE_TIMEOUT`].
    pub timed_out: u64,
    /// Dials and inbound connections that failed below the handshake (QUIC, TLS, stream).
    pub connection_failed: u64,
    /// Inbound connections refused because [`MAX_PENDING_HANDSHAKES`] were in progress.
    pub refused: u64,
    /// Frames of unknown kinds skipped.
    pub unknown_frames: u64,
    /// Invalid frames (each closed its connection).
    pub invalid_frames: u64,
}

impl ControlEndpoint {
    /// Binds the control endpoint to `addr` (port 0 picks one), as both
    /// server and client, with a fresh self-signed TLS certificate.
    ///
    /// # Errors
    /// [`BindError`] if not inside a tokio runtime, if TLS cannot be set up,
    /// or if the socket cannot be bound.
    pub fn bind(addr: SocketAddr, identity: Arc<Identity>, secret: &ClusterSecret) -> Result<Self, BindError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BindError::NoRuntime)?;
        let (server, client) = quic_configs()?;
        let mut endpoint = quinn::Endpoint::server(server, addr).map_err(|source| BindError::Bind { addr, source })?;
        endpoint.set_default_client_config(client);
        let shared = Arc::new(Shared {
            name: identity.name(),
            identity,
            psk: Zeroizing::new(secret.derive(CONTROL_PSK_LABEL)),
            stats: Arc::default(),
        });
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        let acceptor = runtime.spawn(accept_loop(endpoint.clone(), Arc::clone(&shared), tx));
        debug!(peer = %shared.name, addr = ?endpoint.local_addr().ok(), "control endpoint bound");
        Ok(Self {
            endpoint,
            shared,
            accepted: Mutex::new(rx),
            acceptor,
        })
    }

    /// The address the endpoint is bound to.
    ///
    /// # Errors
    /// The OS error if the socket cannot tell.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// This router's name.
    pub fn name(&self) -> PeerName {
        self.shared.name
    }

    /// This router's static public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.shared.identity.public_key()
    }

    /// The counters, shared with the endpoint's tasks.
    pub fn stats(&self) -> Arc<ControlStats> {
        Arc::clone(&self.shared.stats)
    }

    /// Dials `addr` and authenticates the router there, within [`HANDSHAKE_TIMEOUT`].
    ///
    /// # Errors
    /// [`ControlError`]; the connection, if any, has been closed with the
    /// reason's code and the failure counted.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Authenticated, ControlError> {
        let shared = &self.shared;
        let mut connection = None;
        let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            let connecting = self
                .endpoint
                .connect(addr, SERVER_NAME)
                .map_err(|source| ControlError::Dial { addr, source })?;
            let conn = connecting.await.map_err(ControlError::from_connection)?;
            connection = Some(conn.clone());
            let binding = export_binding(&conn)?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(ControlError::from_connection)?;
            let (hs, first) = Handshake::initiator(&shared.identity, &shared.psk, &binding, rand::random())?;
            write_handshake(&mut send, &first).await?;
            let (peer_name, peer_public_key) = drive(hs, &mut send, &mut recv).await?;
            Ok(Authenticated::new(conn, peer_name, peer_public_key, send, recv, shared))
        })
        .instrument(debug_span!("control dial", %addr))
        .await;
        let result = outcome.unwrap_or(Err(ControlError::TimedOut));
        shared.finish(&result, connection.as_ref(), addr, "dialed");
        result
    }

    /// The next inbound connection, authenticated or failed; `None` once the
    /// endpoint is closed. Failures have already been counted and their
    /// connections closed; callers usually log and go on accepting.
    pub async fn accept(&self) -> Option<Result<Authenticated, ControlError>> {
        self.accepted.lock().await.recv().await
    }

    /// Closes every connection and stops accepting.
    pub fn close(&self) {
        self.endpoint.close(VarInt::from_u32(CLOSE_NORMAL), b"shutting down");
    }

    /// Closes every connection and waits until the peers have been told, so
    /// the socket can be reused.
    pub async fn shutdown(self) {
        self.close();
        self.endpoint.wait_idle().await;
    }
}

impl Drop for ControlEndpoint {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl fmt::Debug for ControlEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlEndpoint")
            .field("name", &self.shared.name)
            .field("local_addr", &self.endpoint.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Authenticated {
    fn new(
        connection: quinn::Connection,
        peer_name: PeerName,
        peer_public_key: [u8; 32],
        send: SendStream,
        recv: RecvStream,
        shared: &Shared,
    ) -> Self {
        Self {
            peer_name,
            peer_public_key,
            sender: ControlSender {
                connection: connection.clone(),
                send,
            },
            receiver: ControlReceiver {
                connection,
                recv,
                reader: FrameReader::new(),
                stats: Arc::clone(&shared.stats),
                received: 0,
            },
        }
    }

    /// The peer's name, derived from its authenticated static key.
    pub fn peer_name(&self) -> PeerName {
        self.peer_name
    }

    /// The peer's static X25519 public key.
    pub fn peer_public_key(&self) -> [u8; 32] {
        self.peer_public_key
    }

    /// The QUIC connection.
    pub fn connection(&self) -> &quinn::Connection {
        &self.receiver.connection
    }

    /// The handle the mesh core knows this connection by.
    pub fn conn_id(&self) -> ConnId {
        ConnId(self.receiver.connection.stable_id() as u64)
    }

    /// Sends one message; returns the frame's length. See [`ControlSender::send_msg`].
    ///
    /// # Errors
    /// [`StreamError`].
    pub async fn send_msg(&mut self, msg: &ControlMsg) -> Result<usize, StreamError> {
        self.sender.send_msg(msg).await
    }

    /// The next message. See [`ControlReceiver::recv_msg`].
    ///
    /// # Errors
    /// [`StreamError`].
    pub async fn recv_msg(&mut self) -> Result<Option<ControlMsg>, StreamError> {
        self.receiver.recv_msg().await
    }

    /// Closes the connection normally.
    pub fn close(&self) {
        close(&self.receiver.connection, CLOSE_NORMAL, "closed");
    }

    /// The two halves, for a sending task and a receiving task.
    pub fn into_split(self) -> (ControlSender, ControlReceiver) {
        (self.sender, self.receiver)
    }
}

impl ControlSender {
    /// Sends one message as a frame; returns the frame's length in bytes.
    ///
    /// Not cancel-safe: if the future is dropped part way, the stream may hold
    /// half a frame; close the connection then.
    ///
    /// # Errors
    /// [`StreamError::Wire`] if the message is too big for a frame (nothing
    /// is sent), [`StreamError::Write`] if the stream or connection failed.
    pub async fn send_msg(&mut self, msg: &ControlMsg) -> Result<usize, StreamError> {
        let frame = wire::encode(msg)?;
        self.send.write_all(&frame).await?;
        Ok(frame.len())
    }

    /// The QUIC connection.
    pub fn connection(&self) -> &quinn::Connection {
        &self.connection
    }
}

impl ControlReceiver {
    /// The next message; `Ok(None)` when the peer finished the stream
    /// cleanly. Frames of unknown kinds are skipped and counted.
    ///
    /// Cancel-safe: bytes read are kept in the frame buffer, so it can be
    /// used in a `select!` loop.
    ///
    /// # Errors
    /// [`StreamError::Read`] if the stream or connection failed;
    /// [`StreamError::Wire`] on an invalid frame, after which the connection
    /// is closed with [`CLOSE_PROTOCOL_VIOLATION`]; [`StreamError::Truncated`]
    /// if the stream ended inside a frame.
    pub async fn recv_msg(&mut self) -> Result<Option<ControlMsg>, StreamError> {
        loop {
            match self.reader.poll_frame() {
                Ok(Some(Decoded::Msg(msg))) => return Ok(Some(msg)),
                Ok(Some(Decoded::Unknown { kind })) => {
                    self.stats.unknown_frames.fetch_add(1, Ordering::Relaxed);
                    trace!(kind, "skipped control frame of unknown kind");
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    self.stats.invalid_frames.fetch_add(1, Ordering::Relaxed);
                    debug!(error = %e, "invalid control frame; closing the connection");
                    close(&self.connection, CLOSE_PROTOCOL_VIOLATION, "invalid frame");
                    return Err(e.into());
                }
            }
            match self.recv.read_chunk(READ_CHUNK, true).await? {
                Some(chunk) => {
                    self.received += chunk.bytes.len() as u64;
                    self.reader.push(&chunk.bytes);
                }
                None if self.reader.buffered() == 0 => return Ok(None),
                None => {
                    return Err(StreamError::Truncated {
                        buffered: self.reader.buffered(),
                    });
                }
            }
        }
    }

    /// Bytes read from the stream so far (whole frames and any partial one).
    pub fn received_bytes(&self) -> u64 {
        self.received
    }

    /// The QUIC connection.
    pub fn connection(&self) -> &quinn::Connection {
        &self.connection
    }
}

impl ControlError {
    /// How the mesh core should see this failure (`weft status`, backoff).
    pub fn failure(&self) -> Failure {
        match self {
            Self::Handshake(HandshakeError::AuthenticationFailed) => Failure::AuthenticationFailed,
            Self::Handshake(e) => Failure::Lost(e.to_string()),
            Self::Read(_) | Self::Write(_) | Self::Binding => Failure::Lost(self.to_string()),
            Self::TimedOut | Self::Dial { .. } | Self::Connection(_) => Failure::Unreachable,
        }
    }

    /// A lost connection, read as the reason the peer gave if it closed with
    /// one of our handshake codes.
    fn from_connection(err: ConnectionError) -> Self {
        if let ConnectionError::ApplicationClosed(close) = &err {
            let code = close.error_code.into_inner();
            if code == u64::from(CLOSE_AUTHENTICATION_FAILED) {
                return Self::Handshake(HandshakeError::AuthenticationFailed);
            }
            if code == u64::from(CLOSE_SELF_CONNECTION) {
                return Self::Handshake(HandshakeError::SelfConnection);
            }
        }
        Self::Connection(err)
    }

    fn from_read(err: ReadExactError) -> Self {
        match err {
            ReadExactError::ReadError(ReadError::ConnectionLost(e)) => Self::from_connection(e),
            other => Self::Read(other),
        }
    }

    fn from_write(err: WriteError) -> Self {
        match err {
            WriteError::ConnectionLost(e) => Self::from_connection(e),
            other => Self::Write(other),
        }
    }

    /// The application error code to close the connection with: the one
    /// place errors become wire replies.
    fn close_code(&self) -> u32 {
        match self {
            Self::Handshake(HandshakeError::AuthenticationFailed) => CLOSE_AUTHENTICATION_FAILED,
            Self::Handshake(HandshakeError::SelfConnection) => CLOSE_SELF_CONNECTION,
            Self::Handshake(HandshakeError::Malformed { .. }) => CLOSE_MALFORMED,
            Self::Handshake(HandshakeError::PeerMisbehaved(_)) => CLOSE_PEER_MISBEHAVED,
            Self::TimedOut => CLOSE_TIMED_OUT,
            _ => CLOSE_INTERNAL,
        }
    }
}

impl ControlStats {
    /// The counters now.
    pub fn snapshot(&self) -> ControlCounts {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ControlCounts {
            handshake: self.handshake.snapshot(),
            established: load(&self.established),
            timed_out: load(&self.timed_out),
            connection_failed: load(&self.connection_failed),
            refused: load(&self.refused),
            unknown_frames: load(&self.unknown_frames),
            invalid_frames: load(&self.invalid_frames),
        }
    }

    fn record_failure(&self, err: &ControlError) {
        let counter = match err {
            ControlError::Handshake(e) => return self.handshake.record(e),
            ControlError::TimedOut => &self.timed_out,
            ControlError::Dial { .. }
            | ControlError::Connection(_)
            | ControlError::Read(_)
            | ControlError::Write(_)
            | ControlError::Binding => &self.connection_failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the endpoint's tasks share. Deliberately not `Debug`: it holds the PSK.
struct Shared {
    name: PeerName,
    identity: Arc<Identity>,
    psk: Zeroizing<[u8; 32]>,
    stats: Arc<ControlStats>,
}

impl Shared {
    /// Closes a failed connection with its reason's code, counts and logs the outcome.
    fn finish(
        &self,
        result: &Result<Authenticated, ControlError>,
        connection: Option<&quinn::Connection>,
        addr: SocketAddr,
        direction: &'static str,
    ) {
        match result {
            Ok(auth) => {
                self.stats.established.fetch_add(1, Ordering::Relaxed);
                info!(peer = %auth.peer_name, %addr, direction, "control connection authenticated");
            }
            Err(err) => {
                if let Some(conn) = connection {
                    close(conn, err.close_code(), "control handshake failed");
                }
                self.stats.record_failure(err);
                debug!(%addr, direction, error = %err, "control connection not established");
            }
        }
    }
}

/// Accepts inbound connections and authenticates each in its own task.
async fn accept_loop(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Result<Authenticated, ControlError>>,
) {
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let addr = incoming.remote_address();
                if handshakes.len() >= MAX_PENDING_HANDSHAKES {
                    shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                    debug!(%addr, "refused control connection: too many handshakes in progress");
                    incoming.refuse();
                    continue;
                }
                let (shared, tx) = (Arc::clone(&shared), tx.clone());
                handshakes.spawn(
                    async move {
                        let result = respond(incoming, &shared, addr).await;
                        if tx.send(result).await.is_err() {
                            trace!("control endpoint dropped; discarding an inbound connection");
                        }
                    }
                    .instrument(debug_span!("control accept", %addr)),
                );
            }
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
        }
    }
}

/// Accepts one inbound connection and runs the responder's handshake.
async fn respond(incoming: quinn::Incoming, shared: &Shared, addr: SocketAddr) -> Result<Authenticated, ControlError> {
    let mut connection = None;
    let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let conn = incoming
            .accept()
            .map_err(ControlError::from_connection)?
            .await
            .map_err(ControlError::from_connection)?;
        connection = Some(conn.clone());
        let binding = export_binding(&conn)?;
        let (mut send, mut recv) = conn.accept_bi().await.map_err(ControlError::from_connection)?;
        let hs = Handshake::responder(&shared.identity, &shared.psk, &binding, rand::random())?;
        let (peer_name, peer_public_key) = drive(hs, &mut send, &mut recv).await?;
        Ok(Authenticated::new(conn, peer_name, peer_public_key, send, recv, shared))
    })
    .await;
    let result = outcome.unwrap_or(Err(ControlError::TimedOut));
    shared.finish(&result, connection.as_ref(), addr, "accepted");
    result
}

/// Runs a handshake to the end over the stream: reads the peer's messages,
/// sends ours, and returns the peer's name and key.
async fn drive(
    mut hs: Handshake,
    send: &mut SendStream,
    recv: &mut RecvStream,
) -> Result<(PeerName, [u8; 32]), ControlError> {
    loop {
        let msg = read_handshake(recv).await?;
        match hs.handle(&msg)? {
            Step::Send(reply) => write_handshake(send, &reply).await?,
            Step::Done {
                peer_public_key,
                peer_name,
                reply,
            } => {
                if let Some(reply) = reply {
                    write_handshake(send, &reply).await?;
                }
                return Ok((peer_name, peer_public_key));
            }
        }
    }
}

/// One handshake message: a big-endian `u16` length, then the message.
async fn read_handshake(recv: &mut RecvStream) -> Result<Vec<u8>, ControlError> {
    let mut len = [0u8; 2];
    recv.read_exact(&mut len).await.map_err(ControlError::from_read)?;
    let len = usize::from(u16::from_be_bytes(len));
    if len > MAX_MESSAGE_LEN {
        return Err(HandshakeError::Malformed { len }.into());
    }
    let mut msg = vec![0u8; len];
    recv.read_exact(&mut msg).await.map_err(ControlError::from_read)?;
    Ok(msg)
}

async fn write_handshake(send: &mut SendStream, msg: &[u8]) -> Result<(), ControlError> {
    // Handshake messages are at most MAX_MESSAGE_LEN (1 KiB), well within a u16.
    let len = u16::try_from(msg.len()).map_err(|_| HandshakeError::Malformed { len: msg.len() })?;
    let mut framed = Vec::with_capacity(2 + msg.len());
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(msg);
    send.write_all(&framed).await.map_err(ControlError::from_write)
}

/// The channel binding: keying material exported from this connection's TLS session.
fn export_binding(conn: &quinn::Connection) -> Result<[u8; BINDING_LEN], ControlError> {
    let mut binding = [0u8; BINDING_LEN];
    conn.export_keying_material(&mut binding, BINDING_LABEL, b"")
        .map_err(|_| ControlError::Binding)?;
    Ok(binding)
}

fn close(conn: &quinn::Connection, code: u32, reason: &str) {
    conn.close(VarInt::from_u32(code), reason.as_bytes());
}

/// Server and client configuration: TLS 1.3 only, ring only, ALPN [`ALPN`],
/// a fresh self-signed Ed25519 certificate, no client certificates.
fn quic_configs() -> Result<(quinn::ServerConfig, quinn::ClientConfig), BindError> {
    // Always an explicit provider: the process-default builder panics when two
    // providers are compiled in (CRATES.md section 4).
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
    let cert = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()])?.self_signed(&key)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));

    let mut server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)?;
    server.alpn_protocols = vec![ALPN.to_vec()];

    let mut client = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(DangerousAcceptAnyServerCert { provider }))
        .with_no_client_auth();
    client.alpn_protocols = vec![ALPN.to_vec()];

    let transport = Arc::new(transport_config());
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server)?));
    server.transport_config(Arc::clone(&transport));
    let mut client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client)?));
    client.transport_config(transport);
    Ok((server, client))
}

fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE));
    // 15 s fits in a VarInt of milliseconds, so the conversion cannot fail.
    t.max_idle_timeout(IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    // One bidirectional stream per connection, opened by the dialer; nothing else.
    t.max_concurrent_bidi_streams(VarInt::from_u32(1));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t
}

/// Accepts any server certificate, but still checks the TLS handshake
/// signature against it.
///
/// Dangerous in general, safe here: TLS only carries the control stream.
/// Who the peer is, and whether it belongs to the cluster, is decided by the
/// Noise handshake that follows, whose prologue includes keying material
/// exported from this very TLS session. A man in the middle with his own
/// certificate ends up with two TLS sessions whose exports differ, and the
/// Noise handshake between the real routers fails.
#[derive(Debug)]
struct DangerousAcceptAnyServerCert {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for DangerousAcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS ALPN protocol of control connections. The number changes with
/// any change of the messages' encoding, so that routers of two formats
/// refuse each other at the TLS handshake instead of misreading each
/// other's gossip. 2: ring creation by ballots (`IpamInit`).
pub const ALPN: &[u8] = b"weft-control/2";

/// How long a dial or an inbound connection may take from the first packet
/// to an authenticated handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// QUIC keep-alive interval: keeps NAT bindings open and notices dead peers.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// QUIC idle timeout: three missed keep-alives and the connection is gone.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Inbound handshakes in progress at once; more connections are refused.
pub const MAX_PENDING_HANDSHAKES: usize = 64;

/// Close code: normal close or shutdown.
pub const CLOSE_NORMAL: u32 = 0x00;
/// Close code: the handshake failed to authenticate (wrong secret, tampering, man in the middle).
pub const CLOSE_AUTHENTICATION_FAILED: u32 = 0x10;
/// Close code: the router dialed itself.
pub const CLOSE_SELF_CONNECTION: u32 = 0x11;
/// Close code: a handshake message was malformed.
pub const CLOSE_MALFORMED: u32 = 0x12;
/// Close code: the peer broke the handshake protocol.
pub const CLOSE_PEER_MISBEHAVED: u32 = 0x13;
/// Close code: the handshake did not finish within [`HANDSHAKE_TIMEOUT`].
pub const CLOSE_TIMED_OUT: u32 = 0x14;
/// Close code: this side failed (stream error, local bug).
pub const CLOSE_INTERNAL: u32 = 0x15;
/// Close code: an invalid frame after authentication.
pub const CLOSE_PROTOCOL_VIOLATION: u32 = 0x20;

/// The name the dialer puts in its TLS ClientHello; any valid DNS name would
/// do, since the certificate is not checked against it.
const SERVER_NAME: &str = "weft-control.invalid";

/// Authenticated connections waiting for [`ControlEndpoint::accept`].
const ACCEPT_QUEUE: usize = 16;

/// Most bytes taken from the stream at once into the frame buffer.
const READ_CHUNK: usize = 64 * 1024;
