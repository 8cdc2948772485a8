//! The router's long-term identity: a static X25519 key pair and the peer
//! name derived from its public half.
//!
//! The key pair is made on first launch and kept in the data directory as
//! [`FILE_NAME`], a [`crate::store`] state file of kind
//! [`Kind::Identity`] (mode 0600, written atomically). The payload is the
//! 32-byte private key followed by the 32-byte public key. The file is never
//! replaced once it exists: losing it changes the router's peer name, so a
//! damaged file stops the router with an error naming it.

use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use blake2::{Blake2s256, Digest};
use ipam_crdt::PeerName;
use snow::error::InitStage;
use snow::params::DHChoice;
use snow::resolvers::{CryptoResolver, DefaultResolver};
use tracing::{debug, warn};
use zeroize::{Zeroize, Zeroizing};

use crate::store::{self, Kind, StoreError};

/// A router's static key pair and the [`PeerName`] it implies.
///
/// Guarantees: the public key is the X25519 public key of the private key
/// (checked on load); the name is [`Identity::name_of`] the public key;
/// `Debug` shows the public key and name but never the private key; the
/// private key is overwritten when the value is dropped. Not `Clone`: share
/// it behind a reference or an `Arc`.
pub struct Identity {
    private: Zeroizing<[u8; 32]>,
    public: [u8; 32],
    name: PeerName,
}

/// What [`Identity::load_or_create`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Created {
    /// No identity file existed; a new key pair was generated and saved.
    Generated,
    /// The identity file existed and was loaded.
    Loaded,
}

impl Identity {
    /// Load the identity from `dir`, or make and save one if there is none.
    ///
    /// `dir` is created (mode 0700) if missing. If another process creates the
    /// file at the same moment, its identity is loaded rather than overwritten.
    ///
    /// # Errors
    /// [`IdentityError`] when the file cannot be read or written, or exists
    /// but is damaged, of another kind or format, or holds inconsistent keys.
    pub fn load_or_create(dir: &Path) -> Result<(Self, Created), IdentityError> {
        let path = dir.join(FILE_NAME);
        if let Some(identity) = Self::load(&path)? {
            return Ok((identity, Created::Loaded));
        }
        let identity = Self::generate()?;
        let mut payload = Zeroizing::new(Vec::with_capacity(PAYLOAD_LEN));
        payload.extend_from_slice(identity.private.as_ref());
        payload.extend_from_slice(&identity.public);
        match store::create_state(&path, Kind::Identity, &payload) {
            Ok(()) => {
                debug!(path = %path.display(), peer = %identity.name, "saved new identity");
                Ok((identity, Created::Generated))
            }
            // Someone else won the race; theirs is the identity.
            Err(StoreError::AlreadyExists { .. }) => match Self::load(&path)? {
                Some(theirs) => Ok((theirs, Created::Loaded)),
                None => Err(IdentityError::Vanished { path }),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// A new random identity, not saved anywhere.
    ///
    /// # Errors
    /// [`IdentityError::Generate`] if snow cannot find an RNG or X25519.
    pub fn generate() -> Result<Self, IdentityError> {
        let params = NOISE_PARAMS.parse().map_err(IdentityError::Generate)?;
        let mut pair = snow::Builder::new(params)
            .generate_keypair()
            .map_err(IdentityError::Generate)?;
        // X25519 keys are 32 bytes (DHLEN, Noise spec section 12.1), so the
        // copies cannot panic.
        let mut private = Zeroizing::new([0u8; 32]);
        private.copy_from_slice(&pair.private);
        pair.private.zeroize();
        let mut public = [0u8; 32];
        public.copy_from_slice(&pair.public);
        Ok(Self::from_parts(private, public))
    }

    /// The identity with this private key, e.g. a fixed one in a test or simulation.
    ///
    /// # Errors
    /// [`IdentityError::Generate`] if snow has no X25519.
    pub fn from_private_key(private: [u8; 32]) -> Result<Self, IdentityError> {
        let private = Zeroizing::new(private);
        let public = public_key_of(&private)?;
        Ok(Self::from_parts(private, public))
    }

    /// The X25519 public key, which peers use to authenticate this router.
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// The private key, for the Noise handshake. Never log or copy it.
    pub(crate) fn private_key(&self) -> &[u8; 32] {
        &self.private
    }

    /// The peer name: a stable, short handle for this router in gossip and IPAM.
    pub fn name(&self) -> PeerName {
        self.name
    }

    /// The peer name belonging to `public_key`: the first 8 bytes, big-endian,
    /// of `BLAKE2s-256("weft peer name v1" || public_key)`.
    pub fn name_of(public_key: &[u8; 32]) -> PeerName {
        let digest = Blake2s256::new()
            .chain_update(NAME_CONTEXT)
            .chain_update(public_key)
            .finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        PeerName::from_u64(u64::from_be_bytes(first))
    }

    fn from_parts(private: Zeroizing<[u8; 32]>, public: [u8; 32]) -> Self {
        Self {
            private,
            public,
            name: Self::name_of(&public),
        }
    }

    /// The identity stored at `path`, or `None` if there is no file.
    fn load(path: &Path) -> Result<Option<Self>, IdentityError> {
        let Some(payload) = store::read_state(path, Kind::Identity)? else {
            return Ok(None);
        };
        let payload = Zeroizing::new(payload);
        if payload.len() != PAYLOAD_LEN {
            return Err(IdentityError::BadLength {
                path: path.to_owned(),
                len: payload.len(),
            });
        }
        let (private_bytes, public_bytes) = payload.split_at(32);
        let mut private = Zeroizing::new([0u8; 32]);
        private.copy_from_slice(private_bytes);
        let mut public = [0u8; 32];
        public.copy_from_slice(public_bytes);
        if public_key_of(&private)? != public {
            return Err(IdentityError::KeyMismatch { path: path.to_owned() });
        }
        warn_if_exposed(path);
        Ok(Some(Self::from_parts(private, public)))
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field("public", &Hex(&self.public))
            .field("private", &format_args!("<redacted>"))
            .finish()
    }
}

/// Why the identity could not be loaded or made. No variant carries key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Reading or writing the identity file failed, or it is damaged.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The file is intact but its payload is not a 64-byte key pair.
    #[error(
        "identity file {} holds {len} bytes of keys, not {PAYLOAD_LEN}; refusing to use it. Restore it \
         from a backup, or delete it to make a new identity (this router's peer name will change)",
        path.display()
    )]
    BadLength {
        /// The file.
        path: PathBuf,
        /// The payload length found.
        len: usize,
    },
    /// The stored public key is not that of the stored private key.
    #[error(
        "identity file {} holds a public key that does not match its private key; refusing to use it. \
         Restore it from a backup, or delete it to make a new identity (this router's peer name will change)",
        path.display()
    )]
    KeyMismatch {
        /// The file.
        path: PathBuf,
    },
    /// The identity file disappeared between failing to create it and reading it.
    #[error("identity file {} was created and removed by another process while starting; retry", path.display())]
    Vanished {
        /// The file.
        path: PathBuf,
    },
    /// snow could not generate a key pair or derive a public key.
    #[error("cannot generate an X25519 key pair: {0}")]
    Generate(snow::Error),
}

/// The public key of `private`, computed by snow's X25519.
fn public_key_of(private: &[u8; 32]) -> Result<[u8; 32], IdentityError> {
    let mut dh = DefaultResolver
        .resolve_dh(&DHChoice::Curve25519)
        .ok_or(IdentityError::Generate(snow::Error::Init(InitStage::GetDhImpl)))?;
    dh.set(private);
    // 32 bytes: DHLEN for X25519, as above.
    let mut public = [0u8; 32];
    public.copy_from_slice(dh.pubkey());
    // snow's key holder does not wipe itself; overwrite its copy of the key.
    dh.set(&[0u8; 32]);
    Ok(public)
}

/// Warn the operator if the identity file can be read by other users.
fn warn_if_exposed(path: &Path) {
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            warn!(
                path = %path.display(),
                mode = %format_args!("{mode:o}"),
                "identity file is readable by other users; run chmod 600 on it"
            );
        }
    }
}

/// Lowercase hex of a public key, for `Debug`.
struct Hex<'a>(&'a [u8]);

impl fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// The identity file's name inside the data directory.
pub const FILE_NAME: &str = "identity";

/// The Noise protocol the key pair is for.
pub const NOISE_PARAMS: &str = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";

/// Private key then public key.
const PAYLOAD_LEN: usize = 64;

/// Domain separation for [`Identity::name_of`].
const NAME_CONTEXT: &[u8] = b"weft peer name v1";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_matches_known_answer() {
        // python3: blake2s(b"weft peer name v1" + bytes(32)).hexdigest()[:16]
        assert_eq!(Identity::name_of(&[0; 32]).to_string(), "0b:2f:36:df:bc:8b:de:b5");
        let mut counting = [0u8; 32];
        for (i, b) in counting.iter_mut().enumerate() {
            *b = i as u8;
        }
        assert_eq!(Identity::name_of(&counting).to_u64(), 0x8ef6_fc00_2595_11e8);
    }

    #[test]
    fn created_once_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (first, created) = Identity::load_or_create(&data).unwrap();
        assert_eq!(created, Created::Generated);
        let path = data.join(FILE_NAME);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o700);

        let (second, created) = Identity::load_or_create(&data).unwrap();
        assert_eq!(created, Created::Loaded);
        assert_eq!(second.public_key(), first.public_key());
        assert_eq!(second.private_key(), first.private_key());
        assert_eq!(second.name(), first.name());
        assert_eq!(first.name(), Identity::name_of(&first.public_key()));
    }

    #[test]
    fn public_key_is_derived_from_private() {
        let made = Identity::generate().unwrap();
        let again = Identity::from_private_key(*made.private_key()).unwrap();
        assert_eq!(again.public_key(), made.public_key());
        assert_ne!(Identity::generate().unwrap().public_key(), made.public_key());
    }

    #[test]
    fn damaged_file_is_an_error_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        Identity::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(FILE_NAME);
        let mut bytes = fs::read(&path).unwrap();
        bytes[20] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        let err = Identity::load_or_create(dir.path()).unwrap_err();
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
        assert!(
            matches!(err, IdentityError::Store(StoreError::Corrupt { .. })),
            "{err:?}"
        );
        assert_eq!(fs::read(&path).unwrap(), bytes, "the damaged file was replaced");

        fs::write(&path, b"").unwrap();
        assert!(Identity::load_or_create(dir.path()).is_err());
        assert_eq!(fs::read(&path).unwrap(), b"");
    }

    #[test]
    fn wrong_length_or_mismatched_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        store::write_state(&path, Kind::Identity, &[7; 32]).unwrap();
        let err = Identity::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::BadLength { len: 32, .. }), "{err:?}");
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");

        let mut payload = [7u8; 64];
        payload[32..].copy_from_slice(&Identity::generate().unwrap().public_key());
        store::write_state(&path, Kind::Identity, &payload).unwrap();
        let err = Identity::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::KeyMismatch { .. }), "{err:?}");
    }

    #[test]
    fn other_state_kinds_are_not_identities() {
        let dir = tempfile::tempdir().unwrap();
        store::write_state(&dir.path().join(FILE_NAME), Kind::Ipam, &[0; 64]).unwrap();
        let err = Identity::load_or_create(dir.path()).unwrap_err();
        assert!(
            matches!(err, IdentityError::Store(StoreError::WrongKind { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn debug_redacts_the_private_key() {
        let id = Identity::from_private_key([0xab; 32]).unwrap();
        let shown = format!("{id:?}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(!shown.contains("abab"), "{shown}");
        assert!(!shown.contains("171, 171"), "{shown}");
        assert!(shown.contains(&id.name().to_string()), "{shown}");
    }
}
