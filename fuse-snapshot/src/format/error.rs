//! [`FormatError`]: why a snapshot could not be written or read.
use std::fmt;

use fuse_session::StateError;

use super::envelope::{FORMAT_VERSION, HEADER_LEN};

/// Why a snapshot could not be encoded, decoded or restored.
///
/// Every malformed input gives one of these (never a panic). The `Display` text
/// says what happened and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatError {
    /// Fewer bytes than the fixed header.
    TooShort {
        /// Bytes present.
        len: usize,
    },
    /// The first eight bytes are not the snapshot magic.
    BadMagic,
    /// The format version is not one this library reads: newer than it (written by
    /// a newer fuse-snapshot) or zero (never written).
    UnsupportedVersion {
        /// The version in the header.
        found: u16,
        /// The newest version this library reads.
        newest: u16,
    },
    /// Header flags this library does not know (none are defined in version 1).
    UnknownFlags(u16),
    /// Fewer body bytes than the header announces.
    Truncated {
        /// Body length in the header.
        expected: u64,
        /// Body bytes present.
        found: u64,
    },
    /// More bytes than the header announces.
    TrailingBytes {
        /// Body length in the header.
        expected: u64,
        /// Body bytes present.
        found: u64,
    },
    /// The body's CRC-32 differs from the header's: the bytes were damaged.
    ChecksumMismatch {
        /// CRC-32 in the header.
        stored: u32,
        /// CRC-32 of the body as read.
        computed: u32,
    },
    /// The body's version tag differs from the header's version.
    VersionMismatch {
        /// Version in the header.
        header: u16,
        /// Version of the body.
        body: u16,
    },
    /// The body does not decode (it was checksummed, so it was written wrong, not
    /// damaged on the way).
    BadBody(String),
    /// A node value does not decode as the filesystem's node type.
    BadNode {
        /// Its nodeid.
        nodeid: u64,
        /// What the decoder said.
        detail: String,
    },
    /// A handle value does not decode as the filesystem's handle type.
    BadHandle {
        /// Its fh.
        fh: u64,
        /// What the decoder said.
        detail: String,
    },
    /// The filesystem's state does not decode as its state type.
    BadFsState(String),
    /// The session state decoded but is inconsistent.
    State(StateError),
    /// A value could not be encoded (e.g. a serde type postcard cannot represent).
    Encode(String),
    /// The session has no state yet (INIT has not happened).
    NotInitialized,
    /// The filesystem could not save its state.
    FsSave(String),
    /// The filesystem refused its saved state.
    FsRestore(String),
    /// A live handoff's pre-copy, or the changes that complete it, are malformed.
    BadPrecopy(String),
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::TooShort { len } => write!(
                f,
                "snapshot is {len} bytes, shorter than its {HEADER_LEN}-byte header: the file \
                 is truncated or not a snapshot"
            ),
            FormatError::BadMagic => write!(
                f,
                "not a fuse-live snapshot (wrong magic bytes): check the file name"
            ),
            FormatError::UnsupportedVersion { found, newest } if *found > *newest => write!(
                f,
                "snapshot format version {found} is newer than this program reads (up to \
                 {newest}): restore it with the newer program that wrote it, or upgrade this one"
            ),
            FormatError::UnsupportedVersion { found, newest } => write!(
                f,
                "snapshot format version {found} was never written (this program reads 1 to \
                 {newest}): the header is damaged"
            ),
            FormatError::UnknownFlags(flags) => write!(
                f,
                "snapshot header has unknown flags {flags:#06x}: written by a newer program; \
                 upgrade this one"
            ),
            FormatError::Truncated { expected, found } => write!(
                f,
                "snapshot is truncated: the header announces a {expected}-byte body, only \
                 {found} bytes follow; the write was interrupted or the copy is incomplete"
            ),
            FormatError::TrailingBytes { expected, found } => write!(
                f,
                "snapshot has extra bytes: the header announces a {expected}-byte body, \
                 {found} bytes follow; the file was appended to or concatenated"
            ),
            FormatError::ChecksumMismatch { stored, computed } => write!(
                f,
                "snapshot is damaged: body checksum {computed:#010x} differs from the stored \
                 {stored:#010x}; use another copy"
            ),
            FormatError::VersionMismatch { header, body } => write!(
                f,
                "snapshot header says format version {header} but the body is version {body}: \
                 the writer is broken; report it"
            ),
            FormatError::BadPrecopy(e) => write!(
                f,
                "{e}: the running daemon sent a malformed pre-copy (a bug in it, or not the \
                 program it claims to be)"
            ),
            FormatError::BadBody(e) => write!(
                f,
                "snapshot body does not decode ({e}) although its checksum is right: the \
                 writer is broken or the version is mislabelled; report it"
            ),
            FormatError::BadNode { nodeid, detail } => write!(
                f,
                "node value of nodeid {nodeid} does not decode as this filesystem's node type \
                 ({detail}): the snapshot was written by another filesystem or an \
                 incompatible version of it"
            ),
            FormatError::BadHandle { fh, detail } => write!(
                f,
                "handle value of fh {fh} does not decode as this filesystem's handle type \
                 ({detail}): the snapshot was written by another filesystem or an \
                 incompatible version of it"
            ),
            FormatError::BadFsState(e) => write!(
                f,
                "filesystem state does not decode as this filesystem's state type ({e}): the \
                 snapshot was written by another filesystem or an incompatible version of it"
            ),
            FormatError::State(e) => write!(f, "snapshot refused: {e}"),
            FormatError::Encode(e) => write!(
                f,
                "cannot encode the snapshot ({e}): a node, handle or state type uses a serde \
                 feature postcard does not support (e.g. a sequence of unknown length)"
            ),
            FormatError::NotInitialized => write!(
                f,
                "the session has nothing to snapshot before INIT; wait until it is serving"
            ),
            FormatError::FsSave(e) => write!(f, "the filesystem could not save its state: {e}"),
            FormatError::FsRestore(e) => {
                write!(f, "the filesystem refused its saved state: {e}")
            }
        }
    }
}

impl std::error::Error for FormatError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FormatError::State(e) => Some(e),
            _ => None,
        }
    }
}

impl From<StateError> for FormatError {
    fn from(e: StateError) -> Self {
        FormatError::State(e)
    }
}

/// Keeps the `newest` in messages honest.
const _: () = assert!(FORMAT_VERSION >= 1);
