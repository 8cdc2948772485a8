//! Durable state files: atomic replacement and a checked, versioned framing.
//!
//! Two layers:
//!
//! - [`write_atomic`] and [`create_atomic`] put bytes on disk so that a reader
//!   sees either the old file or the whole new one, never a mix, even if the
//!   process or the machine dies half-way: write a temporary file in the same
//!   directory, fsync it, move it into place, fsync the directory.
//! - [`StateFile`] frames a payload so a reader can tell a complete, intact
//!   file of the expected [`Kind`] and format version from anything else.
//!   [`read_state`] and [`write_state`] combine the two.
//!
//! A file that exists but does not check out is an error, never "empty": the
//! caller decides whether to stop (the router does) or to start afresh, and
//! the operator learns which file and why.
//!
//! # Frame layout
//!
//! All integers are big-endian.
//!
//! | offset | size | field                                            |
//! |--------|------|--------------------------------------------------|
//! | 0      | 4    | magic `b"WEFT"`                                  |
//! | 4      | 2    | kind tag ([`Kind::tag`])                          |
//! | 6      | 2    | format version of the payload ([`Kind::version`]) |
//! | 8      | 4    | payload length `n`                               |
//! | 12     | n    | payload                                          |
//! | 12 + n | 32   | BLAKE2s-256 of bytes `0 .. 12 + n`               |
//!
//! The version numbers the *payload* format of one kind; the framing itself
//! is fixed, and a different framing would get a different magic.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use blake2::{Blake2s256, Digest};
use rand::RngExt;
use zeroize::Zeroizing;

/// What a state file holds. Each kind has its own tag in the header and its
/// own payload format version, so a file can never be read as another kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// The router's static key pair ([`crate::identity`]).
    Identity,
    /// The router's IPAM replica (`ipam_crdt::Replica::encode`).
    Ipam,
}

impl Kind {
    /// The tag written in the header. Tags are never reused.
    pub const fn tag(self) -> u16 {
        match self {
            Self::Identity => 1,
            Self::Ipam => 2,
        }
    }

    /// The payload format version this build writes, and the newest it reads.
    pub const fn version(self) -> u16 {
        match self {
            Self::Identity => 1,
            // 3: ring creation by ballots; 2: the IPAM agent's record (replica and
            // ring-creation state by acks); 1 was the bare replica.
            Self::Ipam => 3,
        }
    }

    /// The oldest payload format version this build still reads
    /// ([`read_state_versioned`]); the reader converts it.
    pub const fn oldest_version(self) -> u16 {
        match self {
            Self::Identity => 1,
            Self::Ipam => 2,
        }
    }

    /// The kind with this tag, if this build knows it.
    pub const fn from_tag(tag: u16) -> Option<Self> {
        match tag {
            1 => Some(Self::Identity),
            2 => Some(Self::Ipam),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Identity => "identity",
            Self::Ipam => "ipam",
        })
    }
}

/// A decoded frame: header fields and a payload borrowed from the input.
///
/// [`StateFile::decode`] only returns one whose magic, length and checksum are
/// right; whether the kind and version are the ones wanted is the caller's
/// question ([`read_state`] asks it).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct StateFile<'a> {
    /// The raw kind tag (see [`Kind::tag`]).
    pub tag: u16,
    /// The payload format version.
    pub version: u16,
    /// The payload.
    pub payload: &'a [u8],
}

impl<'a> StateFile<'a> {
    /// A frame of `kind`'s current version around `payload`.
    pub fn new(kind: Kind, payload: &'a [u8]) -> Self {
        Self {
            tag: kind.tag(),
            version: kind.version(),
            payload,
        }
    }

    /// The frame as bytes.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] when the payload is over [`MAX_PAYLOAD_LEN`].
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let len = u32::try_from(self.payload.len())
            .ok()
            .filter(|&n| n as usize <= MAX_PAYLOAD_LEN)
            .ok_or(FrameError::TooLarge {
                len: self.payload.len() as u64,
            })?;
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len() + CHECKSUM_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.tag.to_be_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(self.payload);
        let sum = Blake2s256::digest(&out);
        out.extend_from_slice(&sum);
        Ok(out)
    }

    /// Parse a whole file's bytes.
    ///
    /// # Errors
    /// [`FrameError`] when the bytes are not exactly one intact frame: too
    /// short, wrong magic, a length that disagrees with the size, or a
    /// checksum mismatch. Trailing bytes are an error too.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, FrameError> {
        if bytes.len() < 4 {
            return Err(FrameError::Truncated {
                len: bytes.len(),
                need: HEADER_LEN + CHECKSUM_LEN,
            });
        }
        if &bytes[..4] != MAGIC {
            return Err(FrameError::BadMagic);
        }
        let Some(header) = bytes.get(..HEADER_LEN) else {
            return Err(FrameError::Truncated {
                len: bytes.len(),
                need: HEADER_LEN + CHECKSUM_LEN,
            });
        };
        let tag = u16::from_be_bytes([header[4], header[5]]);
        let version = u16::from_be_bytes([header[6], header[7]]);
        let declared = u32::from_be_bytes([header[8], header[9], header[10], header[11]]) as usize;
        let need = HEADER_LEN.saturating_add(declared).saturating_add(CHECKSUM_LEN);
        if bytes.len() < need {
            return Err(FrameError::Truncated { len: bytes.len(), need });
        }
        if bytes.len() > need {
            return Err(FrameError::TrailingBytes {
                extra: bytes.len() - need,
            });
        }
        let (body, sum) = bytes.split_at(HEADER_LEN + declared);
        if Blake2s256::digest(body).as_slice() != sum {
            return Err(FrameError::BadChecksum);
        }
        Ok(Self {
            tag,
            version,
            payload: &body[HEADER_LEN..],
        })
    }
}

impl fmt::Debug for StateFile<'_> {
    /// Shows the header and the payload length, never the payload: it may be key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateFile")
            .field("tag", &self.tag)
            .field("version", &self.version)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Why bytes are not an intact frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Shorter than its header and checksum say it must be: a write that
    /// never finished, or a file cut short.
    #[error("truncated: {len} bytes, expected {need}")]
    Truncated {
        /// Bytes present.
        len: usize,
        /// Bytes the header asks for (or the minimum frame, if the header is cut).
        need: usize,
    },
    /// Does not start with `WEFT`: not a weft state file at all.
    #[error("not a weft state file (bad magic)")]
    BadMagic,
    /// Longer than the header says.
    #[error("{extra} unexpected bytes after the checksum")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// The checksum does not match: the file was damaged after it was written.
    #[error("checksum mismatch (the file is damaged)")]
    BadChecksum,
    /// The payload is over [`MAX_PAYLOAD_LEN`] (only when encoding).
    #[error("payload of {len} bytes is over the {MAX_PAYLOAD_LEN}-byte limit")]
    TooLarge {
        /// The payload's length.
        len: u64,
    },
}

/// A failure to read or write a state file. Every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The directory for the file could not be created.
    #[error("cannot create directory {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Writing failed. Before [`WriteStep::SyncDir`] the previous contents of
    /// `path`, if any, are unchanged; at that step the new contents are in
    /// place but might not survive a crash.
    #[error(
        "cannot write {} ({step}): {source}{}",
        path.display(),
        if *step == WriteStep::SyncDir { "" } else { "; its previous contents are unchanged" }
    )]
    Write {
        /// The file being written.
        path: PathBuf,
        /// What was being done.
        step: WriteStep,
        /// The OS error.
        source: io::Error,
    },
    /// [`create_atomic`] found the file already there; nothing was written.
    #[error("{} already exists", path.display())]
    AlreadyExists {
        /// The file.
        path: PathBuf,
    },
    /// Reading failed.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file is bigger than any state file may be; nothing was read into memory.
    #[error("{} is {len} bytes, more than a weft state file can be; it is not one, or it is damaged", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// The file is damaged or not a state file.
    #[error(
        "{} is unusable: {reason}; refusing to start from it (restore it from a backup, or move it aside \
         to start afresh, which loses what it held)",
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: FrameError,
    },
    /// An intact state file, but of another kind: probably the wrong path.
    #[error("{} holds weft state of kind {found}, not {expected} (kind {})", path.display(), expected.tag())]
    WrongKind {
        /// The file.
        path: PathBuf,
        /// The tag found.
        found: u16,
        /// The kind wanted.
        expected: Kind,
    },
    /// Written by a newer weft in a format this build cannot read.
    #[error(
        "{} holds {kind} state in format version {found}, newer than the {supported} this weft reads; \
         upgrade weft",
        path.display()
    )]
    NewerVersion {
        /// The file.
        path: PathBuf,
        /// Its kind.
        kind: Kind,
        /// The version found.
        found: u16,
        /// The newest version this build reads.
        supported: u16,
    },
    /// A format version older than any this build can read.
    #[error(
        "{} holds {kind} state in format version {found}, which this weft cannot read (it reads {supported})",
        path.display()
    )]
    OldVersion {
        /// The file.
        path: PathBuf,
        /// Its kind.
        kind: Kind,
        /// The version found.
        found: u16,
        /// The version this build reads.
        supported: u16,
    },
    /// The payload was too large to frame; nothing was written.
    #[error("cannot write {}: {reason}", path.display())]
    Encode {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: FrameError,
    },
}

/// The step of an atomic write that failed, for [`StoreError::Write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteStep {
    /// Creating the temporary file next to the target.
    CreateTemp,
    /// Writing the bytes.
    WriteData,
    /// Setting the file mode.
    SetMode,
    /// Flushing the temporary file to disk.
    SyncFile,
    /// Moving the temporary file over (or linking it to) the target.
    Replace,
    /// Flushing the directory entry to disk.
    SyncDir,
}

impl fmt::Display for WriteStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::CreateTemp => "creating a temporary file",
            Self::WriteData => "writing",
            Self::SetMode => "setting the file mode",
            Self::SyncFile => "flushing the file",
            Self::Replace => "moving it into place",
            Self::SyncDir => "flushing the directory",
        })
    }
}

/// Replace `path` with `bytes`, atomically and durably, with permission bits `mode`.
///
/// Writes a temporary file in the same directory (created with mode 0700 if
/// missing), sets `mode` on it regardless of the umask, fsyncs it, renames it
/// over `path` and fsyncs the directory. A reader (or the next start after a
/// crash) sees the old file or the new one, never a partial write.
///
/// A crash between creating and renaming the temporary file leaves it behind
/// as `.NAME.*.tmp`; it is never read and may be deleted.
///
/// # Errors
/// [`StoreError::CreateDir`] or [`StoreError::Write`]; `path` is unchanged
/// unless the failure was the final directory fsync.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    write_with(path, mode, Place::Replace, |f| f.write_all(bytes))
}

/// Like [`write_atomic`], but only if `path` does not exist yet.
///
/// The new file appears with all its contents at once (it is hard-linked into
/// place), so of two processes racing to create the same file exactly one
/// wins and the other gets [`StoreError::AlreadyExists`].
///
/// # Errors
/// [`StoreError::AlreadyExists`], [`StoreError::CreateDir`] or [`StoreError::Write`].
pub fn create_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    write_with(path, mode, Place::CreateNew, |f| f.write_all(bytes))
}

/// Frame `payload` as the current version of `kind` and [`write_atomic`] it with mode 0600.
///
/// # Errors
/// As [`write_atomic`], plus [`StoreError::Encode`] for an oversized payload.
pub fn write_state(path: &Path, kind: Kind, payload: &[u8]) -> Result<(), StoreError> {
    let framed = encode_state(path, kind, payload)?;
    write_atomic(path, &framed, STATE_MODE)
}

/// Frame `payload` as the current version of `kind` and [`create_atomic`] it with mode 0600.
///
/// # Errors
/// As [`create_atomic`], plus [`StoreError::Encode`] for an oversized payload.
pub fn create_state(path: &Path, kind: Kind, payload: &[u8]) -> Result<(), StoreError> {
    let framed = encode_state(path, kind, payload)?;
    create_atomic(path, &framed, STATE_MODE)
}

/// Read the payload of a state file of `kind`, in its current format.
///
/// Returns `Ok(None)` only when the file does not exist. Anything else that
/// is not an intact file of `kind` in its current format is an error.
///
/// # Errors
/// [`StoreError::Read`], [`StoreError::TooLarge`], [`StoreError::Corrupt`],
/// [`StoreError::WrongKind`], [`StoreError::NewerVersion`] or [`StoreError::OldVersion`].
pub fn read_state(path: &Path, kind: Kind) -> Result<Option<Vec<u8>>, StoreError> {
    match read_state_versioned(path, kind)? {
        None => Ok(None),
        Some((version, payload)) if version == kind.version() => Ok(Some(payload)),
        Some((found, _)) => Err(StoreError::OldVersion {
            path: path.to_owned(),
            kind,
            found,
            supported: kind.version(),
        }),
    }
}

/// Read the payload of a state file of `kind` and its format version, which
/// is between [`Kind::oldest_version`] and [`Kind::version`]: the caller
/// converts an older one.
///
/// # Errors
/// As [`read_state`], with [`StoreError::OldVersion`] only below
/// [`Kind::oldest_version`].
pub fn read_state_versioned(path: &Path, kind: Kind) -> Result<Option<(u16, Vec<u8>)>, StoreError> {
    let Some(bytes) = read_bounded(path)? else {
        return Ok(None);
    };
    let frame = StateFile::decode(&bytes).map_err(|reason| StoreError::Corrupt {
        path: path.to_owned(),
        reason,
    })?;
    if frame.tag != kind.tag() {
        return Err(StoreError::WrongKind {
            path: path.to_owned(),
            found: frame.tag,
            expected: kind,
        });
    }
    let supported = kind.version();
    if frame.version > supported {
        return Err(StoreError::NewerVersion {
            path: path.to_owned(),
            kind,
            found: frame.version,
            supported,
        });
    }
    if frame.version < kind.oldest_version() {
        return Err(StoreError::OldVersion {
            path: path.to_owned(),
            kind,
            found: frame.version,
            supported,
        });
    }
    Ok(Some((frame.version, frame.payload.to_vec())))
}

/// Where the temporary file goes once written.
#[derive(Clone, Copy)]
enum Place {
    /// Rename over the target.
    Replace,
    /// Link to the target, failing if it exists.
    CreateNew,
}

fn encode_state(path: &Path, kind: Kind, payload: &[u8]) -> Result<Zeroizing<Vec<u8>>, StoreError> {
    StateFile::new(kind, payload)
        .encode()
        .map(Zeroizing::new)
        .map_err(|reason| StoreError::Encode {
            path: path.to_owned(),
            reason,
        })
}

/// The whole file, or `None` if it does not exist. Refuses files over the
/// frame limit before reading them. The buffer is wiped when dropped, since
/// some state files hold keys.
fn read_bounded(path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
    let read_err = |source| StoreError::Read {
        path: path.to_owned(),
        source,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let len = file.metadata().map_err(read_err)?.len();
    if len > MAX_FILE_LEN {
        return Err(StoreError::TooLarge {
            path: path.to_owned(),
            len,
        });
    }
    // Bound the read too, in case the file grows under us.
    let mut bytes = Zeroizing::new(Vec::with_capacity(len as usize));
    file.take(MAX_FILE_LEN + 1).read_to_end(&mut bytes).map_err(read_err)?;
    if bytes.len() as u64 > MAX_FILE_LEN {
        return Err(StoreError::TooLarge {
            path: path.to_owned(),
            len: bytes.len() as u64,
        });
    }
    Ok(Some(bytes))
}

/// The atomic write, with the data written by `fill` so tests can make it fail half-way.
fn write_with(
    path: &Path,
    mode: u32,
    place: Place,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), StoreError> {
    let dir = parent_dir(path);
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|source| StoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
    let fail = |step| {
        move |source| StoreError::Write {
            path: path.to_owned(),
            step,
            source,
        }
    };

    let (tmp_path, mut tmp) = create_temp(dir, path, mode).map_err(fail(WriteStep::CreateTemp))?;
    let written = (|| {
        fill(&mut tmp).map_err(fail(WriteStep::WriteData))?;
        // The mode given to open() is filtered by the umask; set it exactly.
        tmp.set_permissions(Permissions::from_mode(mode))
            .map_err(fail(WriteStep::SetMode))?;
        tmp.sync_all().map_err(fail(WriteStep::SyncFile))?;
        drop(tmp);
        match place {
            Place::Replace => fs::rename(&tmp_path, path).map_err(fail(WriteStep::Replace)),
            Place::CreateNew => {
                let linked = fs::hard_link(&tmp_path, path);
                // The temporary name is no longer needed either way.
                let _ = fs::remove_file(&tmp_path);
                match linked {
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        Err(StoreError::AlreadyExists { path: path.to_owned() })
                    }
                    other => other.map_err(fail(WriteStep::Replace)),
                }
            }
        }
    })();
    if let Err(e) = written {
        // Best effort: the error that matters is the one being returned, and a
        // leftover temporary file is harmless.
        let _ = fs::remove_file(&tmp_path);
        return Err(e);
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail(WriteStep::SyncDir))
}

/// A new, exclusively created temporary file in `dir`, named after `target`.
fn create_temp(dir: &Path, target: &Path, mode: u32) -> io::Result<(PathBuf, File)> {
    let name = target.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let mut rng = rand::rng();
    loop {
        let tmp = dir.join(format!(
            ".{name}.{}.{:016x}.tmp",
            std::process::id(),
            rng.random::<u64>()
        ));
        match OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The directory `path` lives in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The largest payload a state file may carry: twice the largest encoded IPAM replica.
pub const MAX_PAYLOAD_LEN: usize = 2 * ipam_crdt::MAX_ENCODED_LEN;

/// Permission bits of state files: they may hold keys.
pub const STATE_MODE: u32 = 0o600;

/// Permission bits of directories [`write_atomic`] creates.
pub const DIR_MODE: u32 = 0o700;

const MAGIC: &[u8; 4] = b"WEFT";
const HEADER_LEN: usize = 12;
const CHECKSUM_LEN: usize = 32;
const MAX_FILE_LEN: u64 = (HEADER_LEN + MAX_PAYLOAD_LEN + CHECKSUM_LEN) as u64;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        StateFile::new(Kind::Ipam, payload).encode().unwrap()
    }

    #[test]
    fn frame_layout_is_exact() {
        let bytes = frame(b"hi");
        let mut want = Vec::new();
        want.extend_from_slice(b"WEFT");
        want.extend_from_slice(&[0, 2, 0, 3, 0, 0, 0, 2]);
        want.extend_from_slice(b"hi");
        let sum = Blake2s256::digest(&want);
        want.extend_from_slice(&sum);
        assert_eq!(bytes, want);
        assert_eq!(
            StateFile::decode(&bytes).unwrap(),
            StateFile {
                tag: 2,
                version: 3,
                payload: b"hi"
            }
        );
    }

    #[test]
    fn every_single_byte_corruption_is_detected() {
        let bytes = frame(b"some payload");
        for i in 0..bytes.len() {
            for x in 1..=255u8 {
                let mut bad = bytes.clone();
                bad[i] ^= x;
                assert!(StateFile::decode(&bad).is_err(), "byte {i} ^ {x:#04x} went unnoticed");
            }
        }
    }

    #[test]
    fn every_truncation_and_extension_is_detected() {
        let bytes = frame(b"some payload");
        for len in 0..bytes.len() {
            let err = StateFile::decode(&bytes[..len]).unwrap_err();
            assert!(
                matches!(err, FrameError::Truncated { .. } | FrameError::BadMagic),
                "cut to {len}: {err:?}"
            );
        }
        let mut longer = bytes;
        longer.push(0);
        assert_eq!(StateFile::decode(&longer), Err(FrameError::TrailingBytes { extra: 1 }));
    }

    #[test]
    fn huge_declared_length_is_truncation_not_allocation() {
        let mut bytes = frame(b"");
        bytes[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(StateFile::decode(&bytes), Err(FrameError::Truncated { .. })));
    }

    #[test]
    fn read_state_round_trips_and_missing_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/ipam");
        assert!(read_state(&path, Kind::Ipam).unwrap().is_none());
        write_state(&path, Kind::Ipam, b"first").unwrap();
        assert_eq!(read_state(&path, Kind::Ipam).unwrap().unwrap(), b"first");
        write_state(&path, Kind::Ipam, b"second, longer").unwrap();
        assert_eq!(read_state(&path, Kind::Ipam).unwrap().unwrap(), b"second, longer");
        let nested = fs::metadata(dir.path().join("nested")).unwrap();
        assert_eq!(nested.permissions().mode() & 0o777, DIR_MODE);
        assert_eq!(leftovers(&dir.path().join("nested")), vec!["ipam".to_owned()]);
    }

    #[test]
    fn read_state_rejects_damage_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam");
        write_state(&path, Kind::Ipam, b"payload").unwrap();
        let good = fs::read(&path).unwrap();

        fs::write(&path, &good[..good.len() - 1]).unwrap();
        let err = read_state(&path, Kind::Ipam).unwrap_err();
        assert!(matches!(
            err,
            StoreError::Corrupt {
                reason: FrameError::Truncated { .. },
                ..
            }
        ));
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");

        fs::write(&path, b"").unwrap();
        assert!(matches!(read_state(&path, Kind::Ipam), Err(StoreError::Corrupt { .. })));

        let mut bad = good;
        bad[13] ^= 1;
        fs::write(&path, &bad).unwrap();
        assert!(matches!(
            read_state(&path, Kind::Ipam),
            Err(StoreError::Corrupt {
                reason: FrameError::BadChecksum,
                ..
            })
        ));
    }

    #[test]
    fn read_state_rejects_other_kinds_and_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_state(&path, Kind::Identity, b"x").unwrap();
        let err = read_state(&path, Kind::Ipam).unwrap_err();
        assert!(matches!(
            err,
            StoreError::WrongKind {
                found: 1,
                expected: Kind::Ipam,
                ..
            }
        ));

        let newer = StateFile {
            tag: Kind::Ipam.tag(),
            version: Kind::Ipam.version() + 1,
            payload: b"x",
        };
        fs::write(&path, newer.encode().unwrap()).unwrap();
        let err = read_state(&path, Kind::Ipam).unwrap_err();
        assert!(matches!(
            err,
            StoreError::NewerVersion {
                found: 4,
                supported: 3,
                ..
            }
        ));
        assert!(err.to_string().contains("upgrade weft"), "{err}");

        // Version 1 held the bare replica, before the agent's record.
        let older = StateFile { version: 1, ..newer };
        fs::write(&path, older.encode().unwrap()).unwrap();
        assert!(matches!(
            read_state(&path, Kind::Ipam),
            Err(StoreError::OldVersion { found: 1, .. })
        ));
        assert!(matches!(
            read_state_versioned(&path, Kind::Ipam),
            Err(StoreError::OldVersion { found: 1, .. })
        ));
        // Version 2 (ring creation by acks) is read, with its version, for
        // the caller to convert; the strict reader refuses it.
        let previous = StateFile { version: 2, ..newer };
        fs::write(&path, previous.encode().unwrap()).unwrap();
        assert_eq!(
            read_state_versioned(&path, Kind::Ipam).unwrap(),
            Some((2, b"x".to_vec()))
        );
        assert!(matches!(
            read_state(&path, Kind::Ipam),
            Err(StoreError::OldVersion { found: 2, .. })
        ));
    }

    #[test]
    fn mode_is_honoured_despite_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        write_atomic(&path, b"x", 0o600).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        // A replace sets the new file's mode, not the old one's.
        write_atomic(&path, b"y", 0o640).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
        write_state(&path, Kind::Ipam, b"z").unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, STATE_MODE);
    }

    #[test]
    fn a_write_failing_half_way_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        write_state(&path, Kind::Ipam, b"old").unwrap();
        let err = write_with(&path, STATE_MODE, Place::Replace, |f| {
            f.write_all(b"WEFT\0\x02")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(matches!(
            err,
            StoreError::Write {
                step: WriteStep::WriteData,
                ..
            }
        ));
        assert_eq!(read_state(&path, Kind::Ipam).unwrap().unwrap(), b"old");
        assert_eq!(leftovers(dir.path()), vec!["state".to_owned()]);
    }

    #[test]
    fn a_write_that_cannot_start_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        write_state(&path, Kind::Ipam, b"old").unwrap();
        // Root ignores permission bits, so take the directory away another
        // way: make the target's parent a path through a regular file.
        let blocked = path.join("inner");
        let err = write_state(&blocked, Kind::Ipam, b"new").unwrap_err();
        assert!(matches!(err, StoreError::CreateDir { .. }), "{err:?}");
        // And, when not root, a read-only directory.
        fs::set_permissions(dir.path(), Permissions::from_mode(0o500)).unwrap();
        let denied = write_state(&path, Kind::Ipam, b"new");
        fs::set_permissions(dir.path(), Permissions::from_mode(0o700)).unwrap();
        if let Err(err) = denied {
            assert!(
                matches!(
                    err,
                    StoreError::Write {
                        step: WriteStep::CreateTemp,
                        ..
                    }
                ),
                "{err:?}"
            );
            assert_eq!(read_state(&path, Kind::Ipam).unwrap().unwrap(), b"old");
        }
        assert_eq!(leftovers(dir.path()), vec!["state".to_owned()]);
    }

    #[test]
    fn write_errors_say_whether_the_old_file_survives() {
        let err = |step| StoreError::Write {
            path: "/d/f".into(),
            step,
            source: io::Error::other("boom"),
        };
        assert_eq!(
            err(WriteStep::WriteData).to_string(),
            "cannot write /d/f (writing): boom; its previous contents are unchanged"
        );
        assert_eq!(
            err(WriteStep::SyncDir).to_string(),
            "cannot write /d/f (flushing the directory): boom"
        );
    }

    #[test]
    fn create_atomic_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity");
        create_state(&path, Kind::Identity, b"first").unwrap();
        let err = create_state(&path, Kind::Identity, b"second").unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err:?}");
        assert_eq!(read_state(&path, Kind::Identity).unwrap().unwrap(), b"first");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, STATE_MODE);
        assert_eq!(leftovers(dir.path()), vec!["identity".to_owned()]);
    }

    #[test]
    fn oversized_files_are_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let f = File::create(&path).unwrap();
        f.set_len(MAX_FILE_LEN + 1).unwrap();
        assert!(matches!(
            read_state(&path, Kind::Ipam),
            Err(StoreError::TooLarge { .. })
        ));
    }

    #[test]
    fn debug_hides_the_payload() {
        let shown = format!("{:?}", StateFile::new(Kind::Identity, b"sekrit"));
        assert!(!shown.contains("115"), "{shown}"); // b's' as a number
        assert!(shown.contains("payload_len: 6"), "{shown}");
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    proptest! {
        #[test]
        fn any_payload_round_trips(tag: u16, version: u16, payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let f = StateFile { tag, version, payload: &payload };
            let bytes = f.encode().unwrap();
            prop_assert_eq!(StateFile::decode(&bytes).unwrap(), f);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = StateFile::decode(&bytes);
        }
    }
}
