//! The handshake that authenticates a control connection, as a sans-IO
//! state machine.
//!
//! Protocol: [`PROTOCOL`] (`Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s`). XX,
//! because a dialer knows only an address, not the key of the router there;
//! each side learns the other's static key during the handshake and derives
//! its peer name from it ([`Identity::name_of`]). The PSK is the cluster
//! secret's [`CONTROL_PSK_LABEL`] key, so only routers holding the secret
//! complete it.
//!
//! ```text
//! initiator                                  responder
//!   -> e                                    (message 1)
//!   <- e, ee, s, es                         (message 2)
//!   -> s, se, psk                           (message 3)
//!   <- transport("weft-ok")                 (message 4, the confirmation)
//! ```
//!
//! The responder has authenticated the initiator once message 3 decrypts.
//! Message 4 is the first transport message, sealed with keys that depend on
//! the PSK, so the initiator learns that the responder holds the secret too.
//!
//! **Channel binding.** The prologue is [`PROLOGUE_PREFIX`] followed by 32
//! bytes of keying material exported from the TLS session the handshake runs
//! in. A man in the middle terminates two TLS sessions, so the two ends hash
//! different prologues and message 1 already fails to decrypt (in a PSK
//! handshake the `e` token keys the cipher, so its empty payload carries a
//! tag over the prologue); a recorded handshake
//! replayed into a new session meets a different binding and a fresh
//! ephemeral key. After the handshake, the control stream is protected by
//! that TLS session, which this handshake has bound to the peer's static key.
//!
//! Every message is at most [`MAX_MESSAGE_LEN`] bytes, and handshake payloads
//! are empty in this version. Nothing here logs or shows key material.
//!
//! [`CONTROL_PSK_LABEL`]: crate::secret::CONTROL_PSK_LABEL

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use ipam_crdt::PeerName;
use tracing::trace;

use crate::identity::Identity;

/// One side of one control handshake.
///
/// Make it with [`Handshake::initiator`] (which also returns message 1 to
/// send) or [`Handshake::responder`], then pass every message from the peer
/// to [`Handshake::handle`] and send what it returns, until it returns
/// [`Step::Done`] (send its `reply`, if any) or an error (close the
/// connection). Any message after that is an error.
pub struct Handshake {
    state: State,
    local_public: [u8; 32],
}

/// What to do after [`Handshake::handle`].
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub enum Step {
    /// Send this message to the peer and wait for its next one.
    Send(Vec<u8>),
    /// The peer is authenticated. Send `reply` if there is one; the
    /// handshake is over.
    Done {
        /// The peer's static X25519 public key.
        peer_public_key: [u8; 32],
        /// The peer's name, derived from its key.
        peer_name: PeerName,
        /// The last handshake message, for the responder to send.
        reply: Option<Vec<u8>>,
    },
}

/// Why a handshake failed, named after whose fault it is. Holds no key material.
#[derive(Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// A message did not decrypt: the peer does not hold our cluster secret
    /// (or we not theirs), a message was altered or replayed, or someone is in
    /// the middle (the channel bindings differ).
    #[error("authentication failed: the peer does not share the cluster secret, or the connection was tampered with")]
    AuthenticationFailed,
    /// A message cannot be a handshake message (too long or too short).
    #[error("malformed handshake message of {len} bytes")]
    Malformed {
        /// Its length.
        len: usize,
    },
    /// The peer's static key is ours: this router dialed itself.
    #[error("connected to itself")]
    SelfConnection,
    /// The peer broke the protocol.
    #[error("peer misbehaved: {0}")]
    PeerMisbehaved(Misbehaviour),
    /// This side failed, e.g. snow lacks a primitive. A bug, not the peer's fault.
    #[error("local handshake failure: {0}")]
    Local(snow::Error),
}

/// How a peer broke the handshake protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Misbehaviour {
    /// A message arrived after the handshake had finished or failed.
    #[error("message after the handshake ended")]
    UnexpectedMessage,
    /// A handshake message carried a payload; they are empty in this version.
    #[error("non-empty handshake payload")]
    UnexpectedPayload,
    /// The confirmation decrypted, but is not the agreed text.
    #[error("wrong confirmation")]
    BadConfirmation,
}

/// Handshake failures, one counter per reason. The shell calls
/// [`HandshakeStats::record`] for each failure; metrics read
/// [`HandshakeStats::snapshot`]. Shared between tasks as is (atomics).
#[derive(Debug, Default)]
pub struct HandshakeStats {
    authentication_failed: AtomicU64,
    malformed: AtomicU64,
    self_connection: AtomicU64,
    peer_misbehaved: AtomicU64,
    local: AtomicU64,
}

/// A copy of [`HandshakeStats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandshakeCounts {
    /// [`HandshakeError::AuthenticationFailed`].
    pub authentication_failed: u64,
    /// [`HandshakeError::Malformed`].
    pub malformed: u64,
    /// [`HandshakeError::SelfConnection`].
    pub self_connection: u64,
    /// [`HandshakeError::PeerMisbehaved`].
    pub peer_misbehaved: u64,
    /// [`HandshakeError::Local`].
    pub local: u64,
}

enum State {
    /// Initiator: sent `-> e`, waiting for `<- e, ee, s, es`.
    AwaitResponse(Box<snow::HandshakeState>),
    /// Initiator: sent `-> s, se, psk`, waiting for the confirmation.
    AwaitConfirmation {
        transport: Box<snow::TransportState>,
        peer_public_key: [u8; 32],
    },
    /// Responder: waiting for `-> e`.
    AwaitEphemeral(Box<snow::HandshakeState>),
    /// Responder: sent `<- e, ee, s, es`, waiting for `-> s, se, psk`.
    AwaitStatic(Box<snow::HandshakeState>),
    /// Over, successfully or not.
    Finished,
}

impl Handshake {
    /// The dialing side, and message 1 to send.
    ///
    /// `psk` is `secret.derive(CONTROL_PSK_LABEL)`; `binding` is the keying
    /// material exported from the TLS session this handshake runs in;
    /// `seed` makes the ephemeral key: 32 bytes from a CSPRNG, never reused
    /// ([`super::noise`]).
    ///
    /// # Errors
    /// [`HandshakeError::Local`] if snow cannot be set up.
    pub fn initiator(
        identity: &Identity,
        psk: &[u8; 32],
        binding: &[u8; BINDING_LEN],
        seed: [u8; 32],
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let mut hs = build(identity, psk, binding, Role::Initiator, seed)?;
        let first = write(&mut hs)?;
        let me = Self::new(identity, State::AwaitResponse(Box::new(hs)));
        Ok((me, first))
    }

    /// The accepting side. It waits for message 1. `seed` as for
    /// [`Handshake::initiator`].
    ///
    /// # Errors
    /// [`HandshakeError::Local`] if snow cannot be set up.
    pub fn responder(
        identity: &Identity,
        psk: &[u8; 32],
        binding: &[u8; BINDING_LEN],
        seed: [u8; 32],
    ) -> Result<Self, HandshakeError> {
        let hs = build(identity, psk, binding, Role::Responder, seed)?;
        Ok(Self::new(identity, State::AwaitEphemeral(Box::new(hs))))
    }

    /// Whether the handshake is over (done or failed).
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Finished)
    }

    /// Takes the peer's next message.
    ///
    /// # Errors
    /// [`HandshakeError`]; the handshake is then over and the connection
    /// should be closed.
    pub fn handle(&mut self, msg: &[u8]) -> Result<Step, HandshakeError> {
        let state = std::mem::replace(&mut self.state, State::Finished);
        let from = state.name();
        match self.advance(state, msg) {
            Ok((next, step)) => {
                trace!(from, to = next.name(), "control handshake");
                self.state = next;
                Ok(step)
            }
            Err(error) => {
                trace!(from, to = "finished", %error, "control handshake");
                Err(error)
            }
        }
    }

    /// The next state and what to do, for `msg` arriving in `state`.
    fn advance(&self, state: State, msg: &[u8]) -> Result<(State, Step), HandshakeError> {
        if msg.len() > MAX_MESSAGE_LEN {
            return Err(HandshakeError::Malformed { len: msg.len() });
        }
        match state {
            State::AwaitResponse(mut hs) => {
                read(&mut hs, msg)?;
                let peer_public_key = self.peer_key(&hs)?;
                let third = write(&mut hs)?;
                let transport = hs.into_transport_mode().map_err(HandshakeError::Local)?;
                let next = State::AwaitConfirmation {
                    transport: Box::new(transport),
                    peer_public_key,
                };
                Ok((next, Step::Send(third)))
            }
            State::AwaitConfirmation {
                mut transport,
                peer_public_key,
            } => {
                let mut plain = [0u8; MAX_MESSAGE_LEN];
                let n = transport
                    .read_message(msg, &mut plain)
                    .map_err(|e| read_error(e, msg))?;
                if plain.get(..n) != Some(CONFIRMATION) {
                    return Err(HandshakeError::PeerMisbehaved(Misbehaviour::BadConfirmation));
                }
                let done = Step::Done {
                    peer_public_key,
                    peer_name: Identity::name_of(&peer_public_key),
                    reply: None,
                };
                Ok((State::Finished, done))
            }
            State::AwaitEphemeral(mut hs) => {
                read(&mut hs, msg)?;
                let second = write(&mut hs)?;
                Ok((State::AwaitStatic(hs), Step::Send(second)))
            }
            State::AwaitStatic(mut hs) => {
                read(&mut hs, msg)?;
                let peer_public_key = self.peer_key(&hs)?;
                let mut transport = hs.into_transport_mode().map_err(HandshakeError::Local)?;
                let mut confirmation = vec![0u8; MAX_MESSAGE_LEN];
                let n = transport
                    .write_message(CONFIRMATION, &mut confirmation)
                    .map_err(HandshakeError::Local)?;
                confirmation.truncate(n);
                let done = Step::Done {
                    peer_public_key,
                    peer_name: Identity::name_of(&peer_public_key),
                    reply: Some(confirmation),
                };
                Ok((State::Finished, done))
            }
            State::Finished => Err(HandshakeError::PeerMisbehaved(Misbehaviour::UnexpectedMessage)),
        }
    }

    fn new(identity: &Identity, state: State) -> Self {
        trace!(to = state.name(), "control handshake");
        Self {
            state,
            local_public: identity.public_key(),
        }
    }

    /// The peer's static key, once the handshake has revealed it; refuses our own.
    fn peer_key(&self, hs: &snow::HandshakeState) -> Result<[u8; 32], HandshakeError> {
        let key: [u8; 32] = hs
            .get_remote_static()
            .and_then(|k| k.try_into().ok())
            .ok_or(HandshakeError::Local(snow::Error::State(
                snow::error::StateProblem::MissingKeyMaterial,
            )))?;
        if key == self.local_public {
            return Err(HandshakeError::SelfConnection);
        }
        Ok(key)
    }
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake").field("state", &self.state.name()).finish()
    }
}

impl HandshakeStats {
    /// Counts one failure under its reason.
    pub fn record(&self, err: &HandshakeError) {
        let counter = match err {
            HandshakeError::AuthenticationFailed => &self.authentication_failed,
            HandshakeError::Malformed { .. } => &self.malformed,
            HandshakeError::SelfConnection => &self.self_connection,
            HandshakeError::PeerMisbehaved(_) => &self.peer_misbehaved,
            HandshakeError::Local(_) => &self.local,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> HandshakeCounts {
        HandshakeCounts {
            authentication_failed: self.authentication_failed.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            self_connection: self.self_connection.load(Ordering::Relaxed),
            peer_misbehaved: self.peer_misbehaved.load(Ordering::Relaxed),
            local: self.local.load(Ordering::Relaxed),
        }
    }
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            Self::AwaitResponse(_) => "await-response",
            Self::AwaitConfirmation { .. } => "await-confirmation",
            Self::AwaitEphemeral(_) => "await-ephemeral",
            Self::AwaitStatic(_) => "await-static",
            Self::Finished => "finished",
        }
    }
}

#[derive(Clone, Copy)]
enum Role {
    Initiator,
    Responder,
}

fn build(
    identity: &Identity,
    psk: &[u8; 32],
    binding: &[u8; BINDING_LEN],
    role: Role,
    seed: [u8; 32],
) -> Result<snow::HandshakeState, HandshakeError> {
    let mut prologue = [0u8; PROLOGUE_PREFIX.len() + BINDING_LEN];
    prologue[..PROLOGUE_PREFIX.len()].copy_from_slice(PROLOGUE_PREFIX);
    prologue[PROLOGUE_PREFIX.len()..].copy_from_slice(binding);
    let params = PROTOCOL.parse().map_err(HandshakeError::Local)?;
    let builder = super::noise::builder(params, seed)
        .local_private_key(identity.private_key())
        .and_then(|b| b.psk(PSK_LOCATION, psk))
        .and_then(|b| b.prologue(&prologue))
        .map_err(HandshakeError::Local)?;
    match role {
        Role::Initiator => builder.build_initiator(),
        Role::Responder => builder.build_responder(),
    }
    .map_err(HandshakeError::Local)
}

/// Reads one handshake message, whose payload must be empty.
fn read(hs: &mut snow::HandshakeState, msg: &[u8]) -> Result<(), HandshakeError> {
    let mut payload = [0u8; MAX_MESSAGE_LEN];
    let n = hs.read_message(msg, &mut payload).map_err(|e| read_error(e, msg))?;
    if n != 0 {
        return Err(HandshakeError::PeerMisbehaved(Misbehaviour::UnexpectedPayload));
    }
    Ok(())
}

/// Writes our next handshake message, with an empty payload.
fn write(hs: &mut snow::HandshakeState) -> Result<Vec<u8>, HandshakeError> {
    let mut out = vec![0u8; MAX_MESSAGE_LEN];
    let n = hs.write_message(&[], &mut out).map_err(HandshakeError::Local)?;
    out.truncate(n);
    Ok(out)
}

/// Whose fault a failed read is.
fn read_error(err: snow::Error, msg: &[u8]) -> HandshakeError {
    match err {
        snow::Error::Decrypt => HandshakeError::AuthenticationFailed,
        snow::Error::Input => HandshakeError::Malformed { len: msg.len() },
        other => HandshakeError::Local(other),
    }
}

/// The Noise protocol of control handshakes.
pub const PROTOCOL: &str = "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s";

/// The prologue starts with this; the channel binding follows.
pub const PROLOGUE_PREFIX: &[u8] = b"weft control v1";

/// Length of the channel binding: TLS keying material exported with
/// [`BINDING_LABEL`] and an empty context.
pub const BINDING_LEN: usize = 32;

/// The TLS exporter label (RFC 5705 / RFC 8446 section 7.5) of the channel binding.
pub const BINDING_LABEL: &[u8] = b"EXPORTER-weft-control-v1";

/// The longest handshake message accepted. The real ones are 48, 96, 64 and 23 bytes.
pub const MAX_MESSAGE_LEN: usize = 1024;

/// The plaintext of message 4.
pub const CONFIRMATION: &[u8] = b"weft-ok";

/// `psk3`: the PSK is mixed in at the end of message 3.
const PSK_LOCATION: u8 = 3;

#[cfg(test)]
mod tests {
    use super::*;

    const PSK: [u8; 32] = [0x5a; 32];
    const OTHER_PSK: [u8; 32] = [0xa5; 32];
    const BINDING: [u8; 32] = [0x11; 32];

    fn id(n: u8) -> Identity {
        Identity::from_private_key([n; 32]).unwrap()
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Side {
        Initiator,
        Responder,
    }

    /// What each side learned: (initiator's view of the peer, responder's view).
    type Learned = ((PeerName, [u8; 32]), (PeerName, [u8; 32]));

    /// A handshake between two configured sides, with hooks into delivery.
    /// Every handshake gets ephemeral keys of its own, as the router's
    /// randomness gives them (a seed that repeated would let a replayed
    /// message through, which `replayed_messages_fail` checks).
    struct Run<'a> {
        initiator: (&'a Identity, [u8; 32], [u8; 32]),
        responder: (&'a Identity, [u8; 32], [u8; 32]),
        seeds: std::cell::Cell<u64>,
    }

    impl<'a> Run<'a> {
        fn new(i: &'a Identity, r: &'a Identity) -> Self {
            Self {
                initiator: (i, PSK, BINDING),
                responder: (r, PSK, BINDING),
                seeds: std::cell::Cell::new(0),
            }
        }

        /// A seed no other handshake of this run had.
        fn seed(&self) -> [u8; 32] {
            self.seeds.set(self.seeds.get() + 1);
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&self.seeds.get().to_le_bytes());
            seed
        }

        /// Pumps messages between the sides until both are done or one fails;
        /// `tamper(n, msg)` may change message `n` (0-based) in flight. Every
        /// message delivered is appended to `log`. Failures are recorded in `stats`.
        fn drive(
            &self,
            stats: &HandshakeStats,
            log: &mut Vec<Vec<u8>>,
            mut tamper: impl FnMut(usize, &mut Vec<u8>),
        ) -> Result<Learned, (Side, HandshakeError)> {
            let (ii, ipsk, ibind) = self.initiator;
            let (ri, rpsk, rbind) = self.responder;
            let (mut i, first) = Handshake::initiator(ii, &ipsk, &ibind, self.seed()).unwrap();
            let mut r = Handshake::responder(ri, &rpsk, &rbind, self.seed()).unwrap();
            let (mut msg, mut to) = (first, Side::Responder);
            let (mut i_done, mut r_done) = (None, None);
            for n in 0.. {
                tamper(n, &mut msg);
                log.push(msg.clone());
                let hs = match to {
                    Side::Initiator => &mut i,
                    Side::Responder => &mut r,
                };
                let step = hs.handle(&msg).map_err(|e| {
                    stats.record(&e);
                    (to, e)
                })?;
                let reply = match step {
                    Step::Send(m) => Some(m),
                    Step::Done {
                        peer_public_key,
                        peer_name,
                        reply,
                    } => {
                        let done = match to {
                            Side::Initiator => &mut i_done,
                            Side::Responder => &mut r_done,
                        };
                        *done = Some((peer_name, peer_public_key));
                        reply
                    }
                };
                match reply {
                    Some(m) => {
                        msg = m;
                        to = match to {
                            Side::Initiator => Side::Responder,
                            Side::Responder => Side::Initiator,
                        };
                    }
                    None => break,
                }
            }
            assert!(i.is_finished() && r.is_finished());
            Ok((i_done.expect("initiator done"), r_done.expect("responder done")))
        }

        fn run(&self) -> Result<Learned, (Side, HandshakeError)> {
            self.drive(&HandshakeStats::default(), &mut Vec::new(), |_, _| {})
        }
    }

    #[test]
    fn good_secrets_complete_with_each_others_names() {
        let (a, b) = (id(1), id(2));
        let mut log = Vec::new();
        let stats = HandshakeStats::default();
        let (i_learned, r_learned) = Run::new(&a, &b).drive(&stats, &mut log, |_, _| {}).unwrap();
        assert_eq!(i_learned, (b.name(), b.public_key()));
        assert_eq!(r_learned, (a.name(), a.public_key()));
        let lens: Vec<usize> = log.iter().map(Vec::len).collect();
        assert_eq!(lens, [48, 96, 64, 23]);
        assert!(lens.iter().all(|l| *l <= MAX_MESSAGE_LEN));
        assert_eq!(stats.snapshot(), HandshakeCounts::default());
    }

    #[test]
    fn wrong_secret_on_either_side_fails_authentication_at_the_responder() {
        let (a, b) = (id(1), id(2));
        for wrong in [Side::Initiator, Side::Responder] {
            let mut run = Run::new(&a, &b);
            match wrong {
                Side::Initiator => run.initiator.1 = OTHER_PSK,
                Side::Responder => run.responder.1 = OTHER_PSK,
            }
            let stats = HandshakeStats::default();
            let mut log = Vec::new();
            let err = run.drive(&stats, &mut log, |_, _| {}).unwrap_err();
            // The PSK enters at the end of message 3, which the responder reads.
            assert_eq!(
                err,
                (Side::Responder, HandshakeError::AuthenticationFailed),
                "wrong {wrong:?}"
            );
            assert_eq!(log.len(), 3, "no confirmation was sent");
            assert_eq!(
                stats.snapshot(),
                HandshakeCounts {
                    authentication_failed: 1,
                    ..HandshakeCounts::default()
                }
            );
        }
    }

    #[test]
    fn different_channel_bindings_fail() {
        let (a, b) = (id(1), id(2));
        let mut run = Run::new(&a, &b);
        run.responder.2 = [0x22; 32];
        // The prologues differ, and even message 1 ends in a tag over the
        // prologue (in PSK handshakes `e` keys the cipher), so the responder
        // notices at once.
        assert_eq!(
            run.run().unwrap_err(),
            (Side::Responder, HandshakeError::AuthenticationFailed)
        );
        run.responder.2 = BINDING;
        run.initiator.2 = [0x33; 32];
        assert_eq!(
            run.run().unwrap_err(),
            (Side::Responder, HandshakeError::AuthenticationFailed)
        );
    }

    #[test]
    fn any_flipped_bit_fails_authentication_and_is_counted() {
        let (a, b) = (id(1), id(2));
        let run = Run::new(&a, &b);
        let mut clean = Vec::new();
        run.drive(&HandshakeStats::default(), &mut clean, |_, _| {}).unwrap();
        let stats = HandshakeStats::default();
        let mut flips = 0;
        for (m, msg) in clean.iter().enumerate() {
            // Each message ends in a tag over the whole transcript, so its
            // reader notices: the responder reads 1 and 3, the initiator 2 and 4.
            let detector = if m % 2 == 0 { Side::Responder } else { Side::Initiator };
            for bit in 0..msg.len() * 8 {
                let err = run
                    .drive(&stats, &mut Vec::new(), |n, msg| {
                        if n == m {
                            msg[bit / 8] ^= 1 << (bit % 8);
                        }
                    })
                    .unwrap_err();
                assert_eq!(
                    err,
                    (detector, HandshakeError::AuthenticationFailed),
                    "message {m} bit {bit}"
                );
                flips += 1;
                assert_eq!(stats.snapshot().authentication_failed, flips);
            }
        }
        assert_eq!(flips, (48 + 96 + 64 + 23) * 8);
        assert_eq!(
            stats.snapshot(),
            HandshakeCounts {
                authentication_failed: flips,
                ..HandshakeCounts::default()
            }
        );
    }

    #[test]
    fn replayed_messages_fail() {
        let (a, b) = (id(1), id(2));
        let run = Run::new(&a, &b);
        let mut old = Vec::new();
        run.drive(&HandshakeStats::default(), &mut old, |_, _| {}).unwrap();

        // Message 1 replayed to a new responder: it answers with a fresh
        // ephemeral, and the replayed message 3 then fails.
        let mut r = Handshake::responder(&b, &PSK, &BINDING, [0xee; 32]).unwrap();
        assert!(matches!(r.handle(&old[0]), Ok(Step::Send(_))));
        assert_eq!(r.handle(&old[2]), Err(HandshakeError::AuthenticationFailed));

        // Message 3 replayed into a new handshake between the same routers.
        let stats = HandshakeStats::default();
        let err = run
            .drive(&stats, &mut Vec::new(), |n, msg| {
                if n == 2 {
                    msg.clone_from(&old[2]);
                }
            })
            .unwrap_err();
        assert_eq!(err, (Side::Responder, HandshakeError::AuthenticationFailed));
        assert_eq!(stats.snapshot().authentication_failed, 1);
    }

    #[test]
    fn self_connection_is_refused() {
        let a = id(1);
        let twin = id(1);
        let stats = HandshakeStats::default();
        let err = Run::new(&a, &twin)
            .drive(&stats, &mut Vec::new(), |_, _| {})
            .unwrap_err();
        // The initiator sees the responder's static key in message 2.
        assert_eq!(err, (Side::Initiator, HandshakeError::SelfConnection));
        assert_eq!(stats.snapshot().self_connection, 1);
    }

    #[test]
    fn malformed_and_unexpected_messages() {
        let b = id(2);
        let mut r = Handshake::responder(&b, &PSK, &BINDING, [2; 32]).unwrap();
        assert_eq!(r.handle(&[0; 10]), Err(HandshakeError::Malformed { len: 10 }));
        assert!(r.is_finished());
        assert_eq!(
            r.handle(&[0; 48]),
            Err(HandshakeError::PeerMisbehaved(Misbehaviour::UnexpectedMessage))
        );

        let mut r = Handshake::responder(&b, &PSK, &BINDING, [2; 32]).unwrap();
        let long = vec![0; MAX_MESSAGE_LEN + 1];
        assert_eq!(
            r.handle(&long),
            Err(HandshakeError::Malformed {
                len: MAX_MESSAGE_LEN + 1
            })
        );

        // A message after success is the peer's fault too.
        let (a, c) = (id(1), id(3));
        let (mut i, first) = Handshake::initiator(&a, &PSK, &BINDING, [1; 32]).unwrap();
        let mut r = Handshake::responder(&c, &PSK, &BINDING, [3; 32]).unwrap();
        let Ok(Step::Send(second)) = r.handle(&first) else {
            panic!("message 2")
        };
        let Ok(Step::Send(third)) = i.handle(&second) else {
            panic!("message 3")
        };
        let Ok(Step::Done {
            reply: Some(fourth), ..
        }) = r.handle(&third)
        else {
            panic!("done")
        };
        assert!(matches!(i.handle(&fourth), Ok(Step::Done { reply: None, .. })));
        assert_eq!(
            i.handle(&fourth),
            Err(HandshakeError::PeerMisbehaved(Misbehaviour::UnexpectedMessage))
        );
    }

    #[test]
    fn stats_count_each_reason_separately() {
        let stats = HandshakeStats::default();
        stats.record(&HandshakeError::AuthenticationFailed);
        stats.record(&HandshakeError::AuthenticationFailed);
        stats.record(&HandshakeError::Malformed { len: 3 });
        stats.record(&HandshakeError::SelfConnection);
        stats.record(&HandshakeError::PeerMisbehaved(Misbehaviour::BadConfirmation));
        stats.record(&HandshakeError::Local(snow::Error::Dh));
        assert_eq!(
            stats.snapshot(),
            HandshakeCounts {
                authentication_failed: 2,
                malformed: 1,
                self_connection: 1,
                peer_misbehaved: 1,
                local: 1,
            }
        );
    }

    #[test]
    fn debug_shows_no_key_material() {
        let a = Identity::from_private_key([0xab; 32]).unwrap();
        let (i, first) = Handshake::initiator(&a, &[0xcd; 32], &BINDING, [1; 32]).unwrap();
        let shown = format!("{i:?}");
        assert_eq!(shown, r#"Handshake { state: "await-response" }"#);
        assert!(!first.is_empty());
    }
}
