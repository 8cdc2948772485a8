//! The cluster secret: the password every router of one mesh shares.
//!
//! It never leaves the process and is never used directly as a key: each use
//! gets its own 32-byte key from [`ClusterSecret::derive`] with a fixed label
//! ([`CONTROL_PSK_LABEL`], [`DATA_PSK_LABEL`]), so a key leaked from one use
//! says nothing about another, or about the password.

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use blake2::digest::{KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac256, Digest};
use rand::RngExt;
use zeroize::{Zeroize, Zeroizing};

/// The shared cluster password, held in memory only as long as needed.
///
/// Guarantees: at least [`ClusterSecret::MIN_LEN`] and at most
/// [`ClusterSecret::MAX_LEN`] bytes; `Debug` and `Display` print
/// `<redacted>`; the bytes are overwritten when the value is dropped. It is
/// deliberately not `Clone`: share it by reference.
pub struct ClusterSecret(Zeroizing<Vec<u8>>);

/// Where [`ClusterSecret::load`] finds the secret; chosen by the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecretSource {
    /// `--password-file FILE`: the file's contents, trailing newlines removed.
    File(PathBuf),
    /// The environment variable [`PASSWORD_ENV`], taken as is.
    Env,
}

impl ClusterSecret {
    /// The shortest secret accepted, in bytes. Short passwords can be guessed
    /// offline by anyone who records one handshake.
    pub const MIN_LEN: usize = 8;

    /// The longest secret accepted, in bytes: a secret is one line, not a document.
    pub const MAX_LEN: usize = 4096;

    /// A secret from raw bytes, for callers that have it in hand (tests, the simulator).
    ///
    /// # Errors
    /// [`SecretError::Empty`], [`SecretError::TooShort`] or [`SecretError::TooLong`].
    pub fn new(bytes: Vec<u8>) -> Result<Self, SecretError> {
        Self::checked(Zeroizing::new(bytes), None)
    }

    /// Read the secret from where the command line says.
    ///
    /// # Errors
    /// [`SecretError::Missing`] when the source is [`SecretSource::Env`] and the
    /// variable is unset; [`SecretError::Read`] when the file cannot be read; and
    /// the length errors of [`ClusterSecret::new`].
    pub fn load(source: &SecretSource) -> Result<Self, SecretError> {
        match source {
            SecretSource::File(path) => Self::from_file(path.clone()),
            SecretSource::Env => Self::from_env_value(std::env::var_os(PASSWORD_ENV)),
        }
    }

    /// A 32-byte key for one purpose, derived from the secret.
    ///
    /// `BLAKE2s-256-MAC(key = BLAKE2s-256(secret), msg = "weft kdf v1" || 0x00 || label)`:
    /// the secret is hashed first because a BLAKE2s key is at most 32 bytes and
    /// the secret may be longer; the fixed prefix keeps these MACs apart from
    /// any other use of the same key. Labels in use: [`CONTROL_PSK_LABEL`] and
    /// [`DATA_PSK_LABEL`]. The same secret and label always give the same key.
    ///
    /// The caller should wipe the result when done with it.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        let mut key: Zeroizing<[u8; 32]> = Zeroizing::new(Blake2s256::digest(self.0.as_slice()).into());
        let mut mac = <Blake2sMac256 as KeyInit>::new(key.as_ref().into());
        key.zeroize();
        Mac::update(&mut mac, KDF_CONTEXT);
        Mac::update(&mut mac, &[0]);
        Mac::update(&mut mac, label.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// A new random secret for `weft secret`: 32 bytes from the OS RNG as 64
    /// lowercase hex characters, which is also a valid secret file.
    pub fn generate() -> String {
        let mut bytes: [u8; 32] = rand::rng().random();
        let mut hex = String::with_capacity(64);
        for b in bytes {
            hex.push(char::from(HEX[usize::from(b >> 4)]));
            hex.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        bytes.zeroize();
        hex
    }

    fn from_file(path: PathBuf) -> Result<Self, SecretError> {
        let mut bytes = Zeroizing::new(Vec::new());
        let read = File::open(&path).and_then(|f| {
            // One byte over the limit is enough to tell "too long"; a stray
            // trailing "\r\n" is allowed on top.
            f.take(Self::MAX_LEN as u64 + 3).read_to_end(&mut bytes)
        });
        if let Err(source) = read {
            return Err(SecretError::Read { path, source });
        }
        while matches!(bytes.last(), Some(b'\n' | b'\r')) {
            bytes.pop();
        }
        Self::checked(bytes, Some(SecretSource::File(path)))
    }

    fn from_env_value(value: Option<OsString>) -> Result<Self, SecretError> {
        let value = value.ok_or(SecretError::Missing)?;
        Self::checked(Zeroizing::new(value.into_vec()), Some(SecretSource::Env))
    }

    fn checked(bytes: Zeroizing<Vec<u8>>, from: Option<SecretSource>) -> Result<Self, SecretError> {
        match bytes.len() {
            0 => Err(SecretError::Empty { from }),
            len if len < Self::MIN_LEN => Err(SecretError::TooShort { from, len }),
            len if len > Self::MAX_LEN => Err(SecretError::TooLong { from }),
            _ => Ok(Self(bytes)),
        }
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

impl fmt::Display for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "--password-file {}", path.display()),
            Self::Env => f.write_str(PASSWORD_ENV),
        }
    }
}

/// Why there is no usable cluster secret. No variant carries the secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// Neither `--password-file` nor [`PASSWORD_ENV`] was given.
    #[error("no cluster secret: pass --password-file FILE or set WEFT_PASSWORD; make one with `weft secret`")]
    Missing,
    /// The password file could not be read.
    #[error("cannot read --password-file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The secret is empty (after trimming a file's trailing newlines).
    #[error(
        "the cluster secret{} is empty; make one with `weft secret > /etc/weft/secret`",
        origin(from)
    )]
    Empty {
        /// Where it came from, if from the command line.
        from: Option<SecretSource>,
    },
    /// The secret is shorter than [`ClusterSecret::MIN_LEN`].
    #[error(
        "the cluster secret{} is only {len} bytes; use at least {} random bytes: \
         `weft secret > /etc/weft/secret` makes a good one",
        origin(from),
        ClusterSecret::MIN_LEN
    )]
    TooShort {
        /// Where it came from, if from the command line.
        from: Option<SecretSource>,
        /// Its length.
        len: usize,
    },
    /// The secret is longer than [`ClusterSecret::MAX_LEN`]: probably the wrong file.
    #[error(
        "the cluster secret{} is over {} bytes, which looks like the wrong file; \
         `weft secret > /etc/weft/secret` makes a good one",
        origin(from),
        ClusterSecret::MAX_LEN
    )]
    TooLong {
        /// Where it came from, if from the command line.
        from: Option<SecretSource>,
    },
}

fn origin(from: &Option<SecretSource>) -> String {
    from.as_ref().map(|s| format!(" from {s}")).unwrap_or_default()
}

/// The environment variable that may hold the secret.
pub const PASSWORD_ENV: &str = "WEFT_PASSWORD";

/// The [`ClusterSecret::derive`] label of the control plane's Noise PSK.
pub const CONTROL_PSK_LABEL: &str = "weft control psk v1";

/// The [`ClusterSecret::derive`] label of the data plane's Noise PSK.
pub const DATA_PSK_LABEL: &str = "weft data psk v1";

/// Domain separation for [`ClusterSecret::derive`].
const KDF_CONTEXT: &[u8] = b"weft kdf v1";

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> ClusterSecret {
        ClusterSecret::new(s.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn derive_matches_known_answer() {
        // python3: k = blake2s(b"correct horse battery staple").digest();
        //          blake2s(b"weft kdf v1\0weft control psk v1", key=k).hexdigest()
        let key = secret("correct horse battery staple").derive(CONTROL_PSK_LABEL);
        assert_eq!(
            hex(&key),
            "d4b94b25cb616f01218f81b505a6a7f4010f6d9a6d83497fa9f88c7bb7900382"
        );
    }

    #[test]
    fn derive_is_deterministic_and_separates_labels_and_secrets() {
        let a = secret("correct horse battery staple");
        let b = secret("correct horse battery stapler");
        assert_eq!(a.derive(CONTROL_PSK_LABEL), a.derive(CONTROL_PSK_LABEL));
        assert_ne!(a.derive(CONTROL_PSK_LABEL), a.derive(DATA_PSK_LABEL));
        assert_ne!(a.derive(CONTROL_PSK_LABEL), b.derive(CONTROL_PSK_LABEL));
        assert_ne!(a.derive(DATA_PSK_LABEL), b.derive(DATA_PSK_LABEL));
    }

    #[test]
    fn debug_and_display_never_show_the_secret() {
        let s = secret("hunter22-hunter22");
        for shown in [format!("{s:?}"), format!("{s}"), format!("{s:#?}")] {
            assert!(!shown.contains("hunter"), "{shown}");
            assert!(shown.contains("redacted"), "{shown}");
        }
    }

    #[test]
    fn length_limits() {
        assert!(matches!(ClusterSecret::new(Vec::new()), Err(SecretError::Empty { .. })));
        let err = ClusterSecret::new(b"1234567".to_vec()).unwrap_err();
        assert!(matches!(err, SecretError::TooShort { len: 7, .. }));
        assert_eq!(
            err.to_string(),
            "the cluster secret is only 7 bytes; use at least 8 random bytes: \
             `weft secret > /etc/weft/secret` makes a good one"
        );
        assert!(ClusterSecret::new(b"12345678".to_vec()).is_ok());
        assert!(ClusterSecret::new(vec![b'x'; ClusterSecret::MAX_LEN]).is_ok());
        assert!(matches!(
            ClusterSecret::new(vec![b'x'; ClusterSecret::MAX_LEN + 1]),
            Err(SecretError::TooLong { .. })
        ));
    }

    #[test]
    fn file_trailing_newlines_are_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "correct horse battery staple\n").unwrap();
        let from_file = ClusterSecret::load(&SecretSource::File(path.clone())).unwrap();
        assert_eq!(
            from_file.derive("x"),
            secret("correct horse battery staple").derive("x")
        );
        std::fs::write(&path, "correct horse battery staple\r\n\n").unwrap();
        let from_file = ClusterSecret::load(&SecretSource::File(path)).unwrap();
        assert_eq!(
            from_file.derive("x"),
            secret("correct horse battery staple").derive("x")
        );
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "\n").unwrap();
        let err = ClusterSecret::load(&SecretSource::File(path.clone())).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the cluster secret from --password-file {} is empty; make one with `weft secret > /etc/weft/secret`",
                path.display()
            )
        );
        std::fs::write(&path, "short\n").unwrap();
        let err = ClusterSecret::load(&SecretSource::File(path.clone())).unwrap_err();
        assert!(err.to_string().contains("weft secret > /etc/weft/secret"), "{err}");
        assert!(!err.to_string().contains("short"), "{err}");
        std::fs::write(&path, vec![b'x'; 10_000]).unwrap();
        let err = ClusterSecret::load(&SecretSource::File(path)).unwrap_err();
        assert!(matches!(err, SecretError::TooLong { .. }), "{err:?}");
        let missing = dir.path().join("nope");
        let err = ClusterSecret::load(&SecretSource::File(missing.clone())).unwrap_err();
        assert!(matches!(err, SecretError::Read { .. }));
        assert!(err.to_string().contains(&missing.display().to_string()), "{err}");
    }

    #[test]
    fn env_value_is_taken_as_is() {
        let err = ClusterSecret::from_env_value(None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no cluster secret: pass --password-file FILE or set WEFT_PASSWORD; make one with `weft secret`"
        );
        let err = ClusterSecret::from_env_value(Some("".into())).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("the cluster secret from WEFT_PASSWORD is empty"),
            "{err}"
        );
        let s = ClusterSecret::from_env_value(Some("correct horse battery staple".into())).unwrap();
        assert_eq!(s.derive("x"), secret("correct horse battery staple").derive("x"));
    }

    #[test]
    fn generated_secrets_are_random_hex_and_valid() {
        let a = ClusterSecret::generate();
        let b = ClusterSecret::generate();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(
            a.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
            "{a}"
        );
        assert!(ClusterSecret::new(a.into_bytes()).is_ok());
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
