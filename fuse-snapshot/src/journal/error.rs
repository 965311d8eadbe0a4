//! [`JournalError`]: why a journal could not be written or read.
use std::fmt;

use super::layout::JOURNAL_VERSION;

/// Why a journal could not be created, appended to, compacted or recovered.
///
/// Journal bytes are untrusted input: every malformed journal gives one of these
/// (never a panic), except a torn or damaged *tail*, which recovery cuts and reports
/// in [`LogEnd`](super::LogEnd). The `Display` text says what happened and what to
/// do.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum JournalError {
    /// The storage failed (a read, a write, growing the file); after a failed write
    /// the journal refuses further appends.
    Io(String),
    /// The file is shorter than the two header slots.
    TooShort {
        /// Bytes present.
        len: u64,
    },
    /// Both header slots are zero: nothing was ever written.
    Empty,
    /// Neither header slot starts with the journal magic.
    BadMagic,
    /// A header slot names a format version this library does not read.
    UnsupportedVersion {
        /// The version found.
        found: u16,
    },
    /// Neither header slot is intact.
    NoValidHeader {
        /// What is wrong with each slot.
        detail: String,
    },
    /// A header slot is checksummed correctly but its fields are impossible (no
    /// crash writes that): the writer is broken or the file was forged.
    BadHeader(String),
    /// The checkpoint's bytes do not match the checksum in the header.
    CheckpointDamaged {
        /// CRC-32 in the header.
        stored: u32,
        /// CRC-32 of the bytes present.
        computed: u32,
    },
    /// The log being replayed was superseded by a newer epoch whose header is
    /// damaged: replaying the older one would lose what came after.
    Superseded {
        /// The newer epoch the log names.
        epoch: u64,
    },
    /// An intact record has the wrong sequence number.
    SequenceGap {
        /// Byte offset of the record.
        offset: u64,
        /// The sequence number expected there.
        expected: u64,
        /// The sequence number found.
        found: u64,
    },
    /// A damaged record is followed by intact ones: not a torn tail but damage in
    /// the middle of the log.
    CorruptRecord {
        /// Byte offset of the damaged record.
        offset: u64,
        /// Byte offset of an intact record after it.
        next_valid: u64,
        /// What is wrong with the damaged one.
        detail: String,
    },
    /// An intact record of a kind this library does not know (written by a newer
    /// one).
    UnknownKind {
        /// Byte offset of the record.
        offset: u64,
        /// Its kind.
        kind: u16,
    },
    /// An intact record whose payload does not fit its kind.
    BadRecord {
        /// Byte offset of the record.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// A record larger than the journal takes.
    RecordTooLarge {
        /// Its payload length.
        len: u64,
        /// The most allowed.
        max: u64,
    },
    /// The journal reached its maximum size.
    Full {
        /// Bytes it would need.
        needed: u64,
        /// Its maximum size.
        max: u64,
    },
    /// A compaction could not run (another one is running, a stale mark, no room
    /// before the live log); the journal goes on unchanged.
    Compaction(String),
    /// The file is not empty, so it cannot be created afresh.
    NotEmpty {
        /// Its length.
        len: u64,
    },
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JournalError::Io(e) => write!(f, "journal storage failed: {e}"),
            JournalError::TooShort { len } => write!(
                f,
                "journal is {len} bytes, shorter than its header slots: truncated or not a \
                 journal"
            ),
            JournalError::Empty => write!(
                f,
                "journal is empty (never written): there is nothing to recover; start afresh"
            ),
            JournalError::BadMagic => write!(
                f,
                "not a fuse-live journal (wrong magic bytes in both header slots): check which \
                 file or descriptor was passed"
            ),
            JournalError::UnsupportedVersion { found } => write!(
                f,
                "journal format version {found} is not one this program reads (it reads \
                 {JOURNAL_VERSION}): recover with the program that wrote it"
            ),
            JournalError::NoValidHeader { detail } => write!(
                f,
                "journal has no intact header ({detail}): it is damaged; the mount cannot be \
                 recovered from it"
            ),
            JournalError::BadHeader(e) => write!(
                f,
                "journal header is impossible ({e}): the writer is broken or the file forged"
            ),
            JournalError::CheckpointDamaged { stored, computed } => write!(
                f,
                "journal checkpoint is damaged: checksum {computed:#010x} differs from the \
                 stored {stored:#010x}"
            ),
            JournalError::Superseded { epoch } => write!(
                f,
                "journal log was superseded by epoch {epoch}, whose header is damaged: \
                 recovering the older log would lose changes"
            ),
            JournalError::SequenceGap {
                offset,
                expected,
                found,
            } => write!(
                f,
                "journal record at offset {offset} has sequence number {found}, expected \
                 {expected}: the writer is broken or the file forged"
            ),
            JournalError::CorruptRecord {
                offset,
                next_valid,
                detail,
            } => write!(
                f,
                "journal record at offset {offset} is damaged ({detail}) but an intact record \
                 follows at {next_valid}: damage in the middle of the log, not a torn tail"
            ),
            JournalError::UnknownKind { offset, kind } => write!(
                f,
                "journal record at offset {offset} has unknown kind {kind}: written by a newer \
                 program; recover with it"
            ),
            JournalError::BadRecord { offset, detail } => write!(
                f,
                "journal record at offset {offset} is malformed ({detail}) although its \
                 checksum is right: the writer is broken"
            ),
            JournalError::RecordTooLarge { len, max } => write!(
                f,
                "journal record of {len} bytes exceeds the limit of {max}"
            ),
            JournalError::Full { needed, max } => write!(
                f,
                "journal is full: it needs {needed} bytes, its maximum is {max}; compact it \
                 or raise the maximum"
            ),
            JournalError::Compaction(e) => {
                write!(f, "journal compaction did not run ({e}); the log goes on")
            }
            JournalError::NotEmpty { len } => write!(
                f,
                "journal file is not empty ({len} bytes): recover it, or remove it to start \
                 afresh"
            ),
        }
    }
}

impl std::error::Error for JournalError {}

impl From<std::io::Error> for JournalError {
    fn from(e: std::io::Error) -> Self {
        JournalError::Io(e.to_string())
    }
}
