//! [`Journal`]: creating a journal and appending records from many threads.
use std::sync::{Condvar, Mutex, MutexGuard};

use super::error::JournalError;
use super::layout::{
    align8, align_area, record_len, Meta, RecordHeader, AREA_ALIGN, MAX_PAYLOAD, RECORD_HEADER_LEN,
    SEAL_ROOM, SLOTS,
};
use super::record::{Record, KIND_SEAL};
use super::replay::Recovered;
use super::storage::Storage;
use crate::format::crc::{crc32, crc32_combine, crc32_update};

/// Tuning of a [`Journal`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalOptions {
    /// Once the log holds this many bytes, and at least as many as the current
    /// checkpoint, [`Appended::compact`] says it is time for a fresh checkpoint.
    ///
    /// The second condition keeps compaction's cost proportional to what is
    /// appended: a checkpoint of C bytes is written at most once per C bytes of log,
    /// so each appended byte costs at most one more byte of checkpoint. With a fixed
    /// threshold alone, a large state (memfs holding 500 MB of file data) was
    /// encoded and written again every 16 MiB of writes: 1 MiB writes ran at 7 MiB/s.
    pub compact_after: u64,
    /// The largest record payload accepted (at most [`MAX_PAYLOAD`]).
    pub max_record: u64,
    /// When a compaction puts the new area after the live log, the live log may
    /// still grow by at least this much (or half the checkpoint, if more) while the
    /// checkpoint is written, before appends wait for the compaction's end. It
    /// costs only file length and address space: a memfd is sparse, and pages are
    /// allocated when written.
    pub compact_headroom: u64,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            compact_after: 16 << 20,
            max_record: MAX_PAYLOAD,
            compact_headroom: 32 << 20,
        }
    }
}

/// What [`Journal::append`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The record's sequence number.
    pub seq: u64,
    /// The log has passed [`JournalOptions::compact_after`] and the checkpoint's
    /// size, and no compaction is
    /// running: take a checkpoint and call [`Journal::compact`] (from a thread of
    /// your own, not the request's).
    pub compact: bool,
}

/// A point in the log: everything before it is in a checkpoint taken now
/// ([`Journal::mark`], [`Journal::compact`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    /// The first sequence number *not* covered.
    pub seq: u64,
    pub(crate) epoch: u64,
    pub(crate) offset: u64,
}

/// A checkpoint given in pieces (written one after the other, read back as one
/// byte string) with its CRC-32 and length: what the session writes, so that the
/// state it encoded is not copied into one buffer first (a memfs holding 512 MiB
/// of file data copied all of it once more, each compaction, into fresh pages).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pieces<'a> {
    pub parts: &'a [&'a [u8]],
    /// The CRC-32 of the parts one after the other.
    pub crc: u32,
    /// Their length.
    pub len: u64,
}

impl<'a> Pieces<'a> {
    /// One byte string, checksummed here.
    pub fn whole(parts: &'a [&'a [u8]; 1]) -> Pieces<'a> {
        Pieces {
            parts,
            crc: crc32(parts[0]),
            len: parts[0].len() as u64,
        }
    }
}

/// The journal's in-memory state, under the mutex.
#[derive(Debug)]
pub(crate) struct Tail {
    pub meta: Meta,
    /// Offset of the next record.
    pub end: u64,
    pub next_seq: u64,
    /// Records may not reach past this (less [`SEAL_ROOM`]).
    pub limit: u64,
    /// A compaction is running.
    pub compacting: bool,
    /// A store failed: the journal's bytes may be half-written; refuse everything.
    pub failed: Option<String>,
    /// The storage's pages up to here were prefaulted ([`Storage::prefault`]).
    pub prefaulted: u64,
}

/// Small records' pages are prefaulted this far ahead of the log's end.
const PREFAULT_AHEAD: u64 = 256 << 10;
/// ... once fewer bytes than this are left prefaulted ahead of the end.
const PREFAULT_LOW: u64 = 64 << 10;
/// Records at least this large are not followed by a prefault: the storage
/// writes them without faulting (`pwrite`), and prefaulting pages a large record
/// then overwrites whole would clear them for nothing.
const PREFAULT_UNDER: u64 = 16 << 10;

/// A write-ahead journal: a checkpoint and a log of records, in a [`Storage`]. See
/// the [module docs](super).
///
/// Many threads may [`append`](Journal::append) at once; each record is complete in
/// the storage when `append` returns (so what depends on it — a reply — may
/// happen), and records are in sequence order.
#[derive(Debug)]
pub struct Journal<S: Storage> {
    pub(crate) storage: S,
    pub(crate) tail: Mutex<Tail>,
    /// Appenders waiting for a compaction to end.
    pub(crate) room: Condvar,
    pub(crate) options: JournalOptions,
}

impl<S: Storage> Journal<S> {
    /// Starts a journal in empty storage with `checkpoint` (a snapshot in the
    /// existing format, or any bytes the caller reads back) and an empty log whose
    /// first record will be number 1.
    ///
    /// # Errors
    /// [`JournalError::NotEmpty`] if the storage holds anything; storage errors.
    pub fn create(
        storage: S,
        checkpoint: &[u8],
        options: JournalOptions,
    ) -> Result<Journal<S>, JournalError> {
        Self::create_pieces(storage, Pieces::whole(&[checkpoint]), options)
    }

    /// [`Journal::create`] with the checkpoint in pieces.
    pub(crate) fn create_pieces(
        storage: S,
        checkpoint: Pieces<'_>,
        options: JournalOptions,
    ) -> Result<Journal<S>, JournalError> {
        if !storage.is_empty() {
            return Err(JournalError::NotEmpty { len: storage.len() });
        }
        let meta = Meta {
            epoch: 1,
            area: AREA_ALIGN,
            checkpoint_len: checkpoint.len,
            first_seq: 1,
            checkpoint_crc: checkpoint.crc,
        };
        Self::start(storage, meta, checkpoint, options, "mid-header")
    }

    /// Continues a recovered journal in a new epoch: writes `checkpoint` (the state
    /// recovered and rebuilt, as of every record replayed) and an empty log whose
    /// first record will be `recovered.next_seq`, without touching what recovery
    /// read until the new header is written, so a crash meanwhile recovers the same
    /// state again. The old log is then sealed.
    ///
    /// # Errors
    /// [`JournalError::Full`] if the storage cannot hold both; storage errors.
    pub fn resume(
        storage: S,
        recovered: &Recovered,
        checkpoint: &[u8],
        options: JournalOptions,
    ) -> Result<Journal<S>, JournalError> {
        Self::resume_pieces(storage, recovered, Pieces::whole(&[checkpoint]), options)
    }

    /// [`Journal::resume`] with the checkpoint in pieces.
    pub(crate) fn resume_pieces(
        storage: S,
        recovered: &Recovered,
        checkpoint: Pieces<'_>,
        options: JournalOptions,
    ) -> Result<Journal<S>, JournalError> {
        let need = align8(checkpoint.len) + SEAL_ROOM;
        let before = recovered.area.saturating_sub(AREA_ALIGN);
        let area = if need <= before {
            AREA_ALIGN
        } else {
            align_area(recovered.end_offset.saturating_add(SEAL_ROOM))
        };
        let meta = Meta {
            epoch: recovered.epoch + 1,
            area,
            checkpoint_len: checkpoint.len,
            first_seq: recovered.next_seq,
            checkpoint_crc: checkpoint.crc,
        };
        let journal = Self::start(storage, meta, checkpoint, options, "resume-mid-header")?;
        // Seal the old log where recovery cut it, so that a damaged new header can
        // never make a later recovery take the old epoch for the newest.
        let seal = RecordHeader {
            len: 8,
            kind: KIND_SEAL,
            seq: recovered.next_seq,
            payload_crc: crc32(&meta.epoch.to_le_bytes()),
        };
        let mut t = journal.lock();
        let seal_end = recovered.end_offset.saturating_add(SEAL_ROOM);
        if seal_end > journal.storage.len() {
            if let Err(e) = journal.storage.grow(seal_end) {
                t.failed = Some(e.to_string());
                return Err(e.into());
            }
        }
        let r = write_record(
            &journal.storage,
            recovered.end_offset,
            recovered.epoch,
            &seal,
            &[&meta.epoch.to_le_bytes()],
        );
        if let Err(e) = r {
            t.failed = Some(e.to_string());
            return Err(e);
        }
        drop(t);
        Ok(journal)
    }

    /// Continues a recovered journal *in place*: the same epoch, checkpoint and
    /// log, the next record written where recovery found the log's end. No
    /// checkpoint is written, so resuming costs no more than the cut: for a caller
    /// whose rebuilt state is exactly the checkpoint and the records recovered,
    /// and which records its changes from that state on.
    ///
    /// The cut zeroes where the next record's header goes (a record torn by the
    /// crash, or zeros already): from then on the log ends there cleanly. Safe
    /// because [`recover`](super::recover) found no intact record of this epoch
    /// numbered `next_seq` or later anywhere a record past the cut could reach
    /// (else it refuses the journal), and every later record is appended at the
    /// log's end with the place after it zeroed first; the torn record's other
    /// bytes are never read as a record. A crash after the cut recovers the same
    /// state again.
    ///
    /// # Errors
    /// [`JournalError::Compaction`] if `recovered` was not read by
    /// [`recover`](super::recover) (every record checked);
    /// [`JournalError::Full`] at the storage's maximum; storage errors.
    pub fn continue_in_place(
        storage: S,
        recovered: &Recovered,
        options: JournalOptions,
    ) -> Result<Journal<S>, JournalError> {
        if !recovered.checked {
            return Err(JournalError::Compaction(
                "a journal read without checking its records cannot be continued in place".into(),
            ));
        }
        let end = recovered.end_offset;
        let need = end
            .checked_add(SEAL_ROOM)
            .filter(|&n| n <= storage.max_len())
            .ok_or(JournalError::Full {
                needed: end.saturating_add(SEAL_ROOM),
                max: storage.max_len(),
            })?;
        if need > storage.len() {
            storage.grow(need)?;
        }
        storage.write(end, &[0u8; RECORD_HEADER_LEN as usize])?;
        // A crash here recovers the same records, the log ending at the cut.
        fuse_session::fault::point("resume-cut");
        Ok(Journal {
            tail: Mutex::new(Tail {
                meta: recovered.meta,
                end,
                next_seq: recovered.next_seq,
                limit: storage.max_len(),
                compacting: false,
                failed: None,
                prefaulted: 0,
            }),
            storage,
            room: Condvar::new(),
            options: JournalOptions {
                max_record: options.max_record.min(MAX_PAYLOAD),
                ..options
            },
        })
    }

    /// Writes an area (checkpoint, no records) and then its header (with the
    /// fault point `header_point` between its fields and its commit word).
    fn start(
        storage: S,
        meta: Meta,
        checkpoint: Pieces<'_>,
        options: JournalOptions,
        header_point: &'static str,
    ) -> Result<Journal<S>, JournalError> {
        let log_start = meta.log_start();
        let need = log_start
            .checked_add(SEAL_ROOM)
            .filter(|&n| n <= storage.max_len())
            .ok_or(JournalError::Full {
                needed: log_start.saturating_add(SEAL_ROOM),
                max: storage.max_len(),
            })?;
        storage.grow(need.max(storage.len()))?;
        write_pieces(&storage, meta.area, checkpoint.parts)?;
        storage.write(log_start, &[0u8; RECORD_HEADER_LEN as usize])?;
        write_meta_at(&storage, &meta, header_point)?;
        Ok(Journal {
            tail: Mutex::new(Tail {
                meta,
                end: log_start,
                next_seq: meta.first_seq,
                limit: storage.max_len(),
                compacting: false,
                failed: None,
                prefaulted: 0,
            }),
            storage,
            room: Condvar::new(),
            options: JournalOptions {
                max_record: options.max_record.min(MAX_PAYLOAD),
                ..options
            },
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The storage (e.g. the [`JournalMap`](fuse_session::dev::JournalMap) whose
    /// descriptor goes to the fd store).
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.lock().next_seq
    }

    /// The current epoch (1 at creation, one more per compaction or resume).
    pub fn epoch(&self) -> u64 {
        self.lock().meta.epoch
    }

    /// Bytes in the current log.
    pub fn log_len(&self) -> u64 {
        let t = self.lock();
        t.end - t.meta.log_start()
    }

    /// The current point in the log, for [`Journal::compact`]: take it at the
    /// instant the checkpoint's state is taken, so that the state holds exactly the
    /// records before it (e.g. while holding the locks under which records and the
    /// changes they describe are made).
    pub fn mark(&self) -> Mark {
        let t = self.lock();
        Mark {
            seq: t.next_seq,
            epoch: t.meta.epoch,
            offset: t.end,
        }
    }

    /// Appends a record; when it returns `Ok`, the record is whole in the storage
    /// and anything that depends on it may happen. Safe to call from many threads.
    ///
    /// The payload's checksum is computed before taking the journal's lock; the
    /// copy is made under it. If a compaction has frozen the current log and it is
    /// full, waits for the compaction to end.
    ///
    /// # Errors
    /// [`JournalError::RecordTooLarge`]; [`JournalError::Full`] at the storage's
    /// maximum; [`JournalError::Io`] if the storage fails (after which the journal
    /// refuses every call: its tail may be half-written).
    pub fn append<B: AsRef<[u8]>>(&self, record: &Record<B>) -> Result<Appended, JournalError> {
        self.append_inner(record, None)
    }

    /// [`Journal::append`], the CRC-32 of the record's bytes (its payload after
    /// the kind's fixed part) given: `bytes_crc` from [`crc32_combine`] of a body
    /// the caller checksummed already, so that a large record is read once for
    /// its checksums, not twice. A wrong `bytes_crc` makes a record recovery cuts
    /// the log at: the session's callers compute it, tests hold it to `append`.
    pub(crate) fn append_with_crc<B: AsRef<[u8]>>(
        &self,
        record: &Record<B>,
        bytes_crc: u32,
    ) -> Result<Appended, JournalError> {
        self.append_inner(record, Some(bytes_crc))
    }

    fn append_inner<B: AsRef<[u8]>>(
        &self,
        record: &Record<B>,
        bytes_crc: Option<u32>,
    ) -> Result<Appended, JournalError> {
        let (fixed, n, bytes) = record.parts();
        let fixed = &fixed[..n];
        let len = (fixed.len() + bytes.len()) as u64;
        if len > self.options.max_record {
            return Err(JournalError::RecordTooLarge {
                len,
                max: self.options.max_record,
            });
        }
        let payload_crc = match bytes_crc {
            None => crc32_update(crc32(fixed), bytes),
            Some(c) if fixed.is_empty() => c,
            Some(c) => crc32_combine(crc32(fixed), c, bytes.len() as u64),
        };
        let size = record_len(len);
        let mut t = self.lock();
        loop {
            if let Some(e) = &t.failed {
                return Err(JournalError::Io(format!("an earlier store failed: {e}")));
            }
            let need = t.end + size + SEAL_ROOM;
            if need <= t.limit {
                if need > self.storage.len() {
                    self.grow_for(&mut t, need)?;
                }
                break;
            }
            if t.compacting && t.limit < self.storage.max_len() {
                t = self.room.wait(t).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            return Err(JournalError::Full {
                needed: need,
                max: t.limit,
            });
        }
        let header = RecordHeader {
            len: len as u32,
            kind: record.kind(),
            seq: t.next_seq,
            payload_crc,
        };
        if let Err(e) =
            write_record_then_end(&self.storage, t.end, t.meta.epoch, &header, &[fixed, bytes])
        {
            t.failed = Some(e.to_string());
            return Err(e);
        }
        t.end += size;
        t.next_seq += 1;
        let appended = Appended {
            seq: header.seq,
            compact: !t.compacting && {
                let log = t.end - t.meta.log_start();
                log >= self.options.compact_after && log >= t.meta.checkpoint_len
            },
        };
        let prefault = (size < PREFAULT_UNDER)
            .then(|| self.prefault_window(&mut t))
            .flatten();
        drop(t);
        if let Some((from, len)) = prefault {
            self.storage.prefault(from, len);
        }
        Ok(appended)
    }

    /// The range to prefault ahead of the log's end, if the prefaulted part ahead
    /// of it runs low (noted as prefaulted; the caller prefaults it without the
    /// lock). Small records then never take a page fault: a fault per 4 KiB of
    /// records (~60 records of a `stat` loop) cost more than the prefault of a
    /// window at once.
    fn prefault_window(&self, t: &mut Tail) -> Option<(u64, u64)> {
        let ahead = t.prefaulted.saturating_sub(t.end);
        // Behind the end (a large record jumped past), or far ahead of it (the
        // log restarted in an area before, after a compaction): from the end.
        let from = if t.prefaulted < t.end || ahead > 2 * PREFAULT_AHEAD {
            t.end
        } else if ahead < PREFAULT_LOW {
            t.prefaulted
        } else {
            return None;
        };
        let to = (t.end + PREFAULT_AHEAD).min(self.storage.len());
        t.prefaulted = to;
        (to > from).then(|| (from, to - from))
    }

    /// Grows the storage to hold `need` bytes, by at least half again (fewer
    /// `ftruncate`s), never past the limit.
    pub(crate) fn grow_for(&self, t: &mut Tail, need: u64) -> Result<(), JournalError> {
        let cur = self.storage.len();
        let target = need
            .max(cur.saturating_add(cur / 2))
            .max(need.saturating_add(4096))
            .min(t.limit)
            .min(self.storage.max_len());
        match self.storage.grow(target.max(need)) {
            Ok(()) => Ok(()),
            Err(e) => {
                // Growth failing leaves the bytes as they were: not fatal.
                if need > self.storage.max_len() {
                    Err(JournalError::Full {
                        needed: need,
                        max: self.storage.max_len(),
                    })
                } else {
                    Err(e.into())
                }
            }
        }
    }
}

/// Writes a record at `off`: header fields and payload, then the commit word.
pub(crate) fn write_record<S: Storage + ?Sized>(
    storage: &S,
    off: u64,
    epoch: u64,
    header: &RecordHeader,
    payload: &[&[u8]],
) -> Result<(), JournalError> {
    let h = header.encode(epoch);
    storage.write(off, &h[..16])?;
    let mut pos = off + 24;
    for part in payload {
        storage.write(pos, part)?;
        pos += part.len() as u64;
    }
    // A crash here leaves a torn record: recovery must cut the log before it.
    fuse_session::fault::point("mid-record");
    let mut word = [0u8; 8];
    word.copy_from_slice(&h[16..24]);
    storage.commit(off + 16, word)?;
    Ok(())
}

/// [`write_record`], zeroing where the next record's header goes first (before
/// the commit word), so that the log ends at zero bytes rather than at whatever
/// an older epoch left there. The storage must hold those 24 bytes.
pub(crate) fn write_record_then_end<S: Storage + ?Sized>(
    storage: &S,
    off: u64,
    epoch: u64,
    header: &RecordHeader,
    payload: &[&[u8]],
) -> Result<(), JournalError> {
    let next = off + record_len(u64::from(header.len));
    storage.write(next, &[0u8; RECORD_HEADER_LEN as usize])?;
    write_record(storage, off, epoch, header, payload)
}

/// Writes a header slot: fields, then the commit word.
pub(crate) fn write_meta<S: Storage + ?Sized>(
    storage: &S,
    meta: &Meta,
) -> Result<(), JournalError> {
    write_meta_at(storage, meta, "mid-header")
}

/// [`write_meta`] with the fault point `point` (`fuse_session::fault`) between
/// the fields and the commit word: `mid-header`, or `resume-mid-header` for the
/// first header of a resumed journal.
fn write_meta_at<S: Storage + ?Sized>(
    storage: &S,
    meta: &Meta,
    point: &'static str,
) -> Result<(), JournalError> {
    let b = meta.encode();
    let off = SLOTS[(meta.epoch % 2) as usize];
    storage.write(off, &b[..56])?;
    // A crash here leaves a torn header: recovery must take the other slot.
    fuse_session::fault::point(point);
    let mut word = [0u8; 8];
    word.copy_from_slice(&b[56..64]);
    storage.commit(off + 56, word)?;
    Ok(())
}

/// Writes `parts` one after the other from `off`, each as [`write_chunked`].
pub(crate) fn write_pieces<S: Storage + ?Sized>(
    storage: &S,
    mut off: u64,
    parts: &[&[u8]],
) -> Result<(), JournalError> {
    for part in parts {
        write_chunked(storage, off, part)?;
        off += part.len() as u64;
    }
    Ok(())
}

/// Writes `data` at `off` in pieces of 1 MiB (no lock held: others append
/// meanwhile).
pub(crate) fn write_chunked<S: Storage + ?Sized>(
    storage: &S,
    off: u64,
    data: &[u8],
) -> Result<(), JournalError> {
    for (i, c) in data.chunks(1 << 20).enumerate() {
        storage.write(off + (i as u64) * (1 << 20), c)?;
    }
    Ok(())
}
