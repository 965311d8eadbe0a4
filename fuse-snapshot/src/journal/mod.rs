//! The crash-recovery journal: a checkpoint and an append-only log of checksummed,
//! numbered records in a memory-mapped file that outlives the daemon's process.
//!
//! A daemon writes its session's changes ahead (a lookup is recorded before the
//! reply that makes the kernel count it), the filesystem's own changes, the
//! requests it accepted and the replies of non-idempotent ones before they are
//! sent. When the process dies, the file — a memfd kept in the fd store, or a path —
//! still holds every record that was complete; the next process [`recover`]s the
//! checkpoint and the records, rebuilds the state, and goes on: in the same log
//! ([`Journal::continue_in_place`], the torn tail cut) or in a new epoch whose
//! checkpoint is the rebuilt state ([`Journal::resume`]).
//!
//! # Durability
//! The journal protects against the *process* dying (`kill -9`, a panic, an abort),
//! not the machine: a memfd's pages, and those of a `MAP_SHARED` file mapping, are
//! the page cache's, so whatever the process stored before it died is in the file.
//! No record is flushed (`msync`/`fsync`): a record costs a copy, two CRC-32s and a
//! mutex. Surviving a power loss would need a flush per record and is not a goal.
//!
//! # Layout (format version 1, all integers little-endian)
//! ```text
//! 0     header slot 0 (64 bytes)   the header of even epochs
//! 64    header slot 1 (64 bytes)   the header of odd epochs
//! 4096… areas: an area is a checkpoint, padded to 8, then the log's records
//! ```
//! A header slot (magic `FLJOURNL`, version, epoch, area offset, checkpoint length
//! and CRC-32, the first record's sequence number, CRC-32 of the slot) names the
//! live area. Recovery takes the intact slot with the highest epoch. A record is a
//! 24-byte header (payload length, kind, sequence number, CRC-32 of the payload,
//! CRC-32 of the header salted with the epoch), its payload ([`Record`]) and padding
//! to 8 bytes. `layout.rs` has the byte tables.
//!
//! # Ordering: the commit word
//! A record is written in two steps: the header's first 16 bytes and the payload,
//! then — after a release fence — the header's last 8 bytes (the two CRCs) as one
//! aligned atomic store: the *commit word*. A header slot likewise ends in its
//! commit word. A process that dies mid-record leaves a header whose commit word is
//! not there (zero, or bytes of an older epoch, which the epoch salt rejects), so
//! a reader never takes a half-written record for a whole one, whatever order the
//! copy's stores landed in; the CRCs then also catch damage, which a commit flag
//! alone would not. Records are written in sequence order under one lock, and
//! [`Journal::append`] returns only once its record is committed, so after a crash
//! the log is a whole prefix followed by at most one torn record.
//!
//! # Reading: cut the tail, refuse the rest
//! [`recover`] cuts the log at the first position that is not an intact record of
//! the expected number (reported in [`LogEnd`]) — but only if no intact record of
//! the epoch follows within the reach of a record: a damaged record followed by
//! intact ones is damage in the middle, refused ([`JournalError::CorruptRecord`]).
//! An intact record with the wrong number, of an unknown kind, or malformed, a
//! damaged checkpoint, an unknown version: each a clear [`JournalError`]. Lengths
//! are checked against the file and [`MAX_PAYLOAD`] before anything is allocated.
//!
//! # Compaction
//! [`Journal::compact`] writes a fresh checkpoint into a free area while appends
//! continue, then, under the lock, copies the records appended meanwhile into the
//! new area's log and writes the new epoch's header into the other slot (as LMDB's
//! two meta pages). Until that header's commit word is stored, recovery reads the
//! old epoch, untouched; from then on the new one. The old log is then *sealed*
//! with a record naming the new epoch, so that if the new header were later damaged,
//! recovery refuses the old epoch ([`JournalError::Superseded`]) instead of
//! silently losing what came after.
//!
//! # Growth
//! The file grows (`ftruncate`) as the log fills, up to the storage's maximum
//! ([`JournalError::Full`] past it). A [`JournalMap`](fuse_session::dev::JournalMap)
//! reserves its maximum's address space once, so growing never remaps and no
//! writer ever waits for a remap.
//!
//! # Using it from a session
//! See [`Journal`]: `append` the record before the step that depends on it,
//! `compact` when [`Appended::compact`] says so, [`recover`] +
//! [`Journal::continue_in_place`] (or [`Journal::resume`]) at start-up with an
//! inherited journal.
mod compact;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod layout;
mod record;
mod replay;
mod storage;
#[cfg(test)]
mod tests;
mod writer;

pub mod session;

pub use error::JournalError;
pub use layout::{JOURNAL_VERSION, MAGIC, MAX_PAYLOAD};
pub use record::{Record, RecordRef};
pub use replay::{recover, LogEnd, Recovered};
pub use storage::{MemStorage, Storage};
pub use writer::{Appended, Journal, JournalOptions, Mark};
