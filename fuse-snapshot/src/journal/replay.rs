//! [`recover`]: reading a journal back after a crash.
use std::fmt;

use super::error::JournalError;
use super::layout::{
    le32, le64, record_len, Meta, RecordHeader, Slot, MAX_PAYLOAD, RECORD_HEADER_LEN, SLOTS,
    SLOT_LEN,
};
use super::record::{DecodeError, Record, KIND_SEAL};
use super::storage::Storage;
use crate::format::crc::crc32;

/// How the log ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogEnd {
    /// At zero bytes or the end of the file: the last record was whole.
    Clean {
        /// Offset after the last record.
        offset: u64,
    },
    /// At bytes that are not a whole record: cut there.
    Cut {
        /// Offset after the last whole record.
        offset: u64,
        /// What was found there.
        reason: String,
    },
}

impl fmt::Display for LogEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogEnd::Clean { offset } => write!(f, "log ends cleanly at offset {offset}"),
            LogEnd::Cut { offset, reason } => write!(
                f,
                "log cut at offset {offset}: {reason} (a record torn by the crash, or bytes \
                 left from an older epoch)"
            ),
        }
    }
}

/// A journal read back: the checkpoint, then the records after it, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// The epoch recovered.
    pub epoch: u64,
    /// The checkpoint's bytes (checksummed; decode them as the untrusted input
    /// they are, e.g. with [`decode_state`](crate::decode_state)).
    pub checkpoint: Vec<u8>,
    /// The sequence number of the first record after the checkpoint.
    pub first_seq: u64,
    /// The records, numbered from `first_seq` on.
    pub records: Vec<Record>,
    /// The sequence number the next record gets.
    pub next_seq: u64,
    /// How the log ended.
    pub end: LogEnd,
    pub(crate) area: u64,
    pub(crate) end_offset: u64,
    /// The header read (for [`Journal::continue_in_place`](super::Journal)).
    pub(crate) meta: Meta,
    /// Read by [`recover`], every record checked and the bytes past the end
    /// searched for intact records (not by [`scan`]): the log may be continued
    /// in place.
    pub(crate) checked: bool,
}

/// Reads a journal: picks the newest intact header, checks the checkpoint, and
/// reads the log up to its end, cutting a torn or damaged tail (reported in
/// [`Recovered::end`]).
///
/// Journal bytes are untrusted: every length is checked against the file before
/// anything is allocated, and each record is copied out before it is checked, so a
/// concurrent writer cannot change it between check and use.
///
/// # Errors
/// Everything else wrong, as a [`JournalError`]: not a journal, another version, no
/// intact header, a damaged checkpoint, a damaged record followed by intact ones,
/// a sequence gap, an unknown record kind, a malformed payload, a log superseded
/// by a newer epoch whose header is damaged.
pub fn recover<S: Storage + ?Sized>(storage: &S) -> Result<Recovered, JournalError> {
    read_journal(storage, true)
}

/// As [`recover`], but the records' payloads are neither read, checksummed,
/// decoded nor kept ([`Recovered::records`] is empty; headers, their epoch-salted
/// checksums, sequence numbers and the checkpoint are checked): where the log
/// ends, for continuing a journal whose state is known otherwise (a live handoff's
/// successor, [`JournalHook::take_over`](super::session::JournalHook::take_over)).
/// Nor does it look past the end for intact records (damage in the middle), which
/// costs a read of up to [`MAX_PAYLOAD`] bytes. Neither matters: the old epoch is
/// only read again if the new one's header never gets written, and then by
/// [`recover`], which checks all of it.
pub(crate) fn scan<S: Storage + ?Sized>(storage: &S) -> Result<Recovered, JournalError> {
    read_journal(storage, false)
}

fn read_journal<S: Storage + ?Sized>(storage: &S, keep: bool) -> Result<Recovered, JournalError> {
    let (meta, checkpoint) = read_head(storage)?;
    let log = read_log(storage, &meta, keep)?;
    Ok(assemble(meta, checkpoint, log, keep))
}

/// As [`recover`], with `decode` run on the checkpoint's bytes (checked) on a
/// second thread while this one reads and checks the log: after a crash the two
/// are independent, and a large checkpoint takes longer to decode than the log
/// to read. `decode` runs only if the checkpoint is intact; its result is
/// returned only if the log is too (an error reading the log comes first, as
/// with [`recover`] and then a decode). If no thread can be started, `decode`
/// runs here after the log.
///
/// # Errors
/// Those of [`recover`].
pub(crate) fn recover_decoding<S, T, D>(
    storage: &S,
    decode: D,
) -> Result<(Recovered, T), JournalError>
where
    S: Storage + ?Sized,
    D: FnOnce(&[u8]) -> T + Send,
    T: Send,
{
    let (meta, checkpoint) = read_head(storage)?;
    // Taken by the thread, or (if none could be started) here after the log.
    let decode = std::sync::Mutex::new(Some(decode));
    let run = |checkpoint: &[u8]| {
        let d = decode.lock().unwrap_or_else(|e| e.into_inner()).take();
        d.map(|d| d(checkpoint))
    };
    let (log, decoded) = std::thread::scope(|s| {
        let spawned = std::thread::Builder::new()
            .name("journal-decode".into())
            .spawn_scoped(s, || run(&checkpoint));
        let log = read_log(storage, &meta, true);
        let decoded = match spawned {
            Ok(h) => h
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(_) => None,
        };
        (log, decoded)
    });
    let log = log?;
    // `decode` is taken once: by the thread, or here if there was none.
    match decoded.or_else(|| run(&checkpoint)) {
        Some(t) => Ok((assemble(meta, checkpoint, log, true), t)),
        None => Err(JournalError::Io(
            "the checkpoint's decode did not run".into(),
        )),
    }
}

/// The newest intact header and its checkpoint, checked.
fn read_head<S: Storage + ?Sized>(storage: &S) -> Result<(Meta, Vec<u8>), JournalError> {
    let file_len = storage.len();
    if file_len < 2 * SLOT_LEN {
        return Err(JournalError::TooShort { len: file_len });
    }
    let mut raw = [[0u8; 64]; 2];
    let mut slots = Vec::with_capacity(2);
    for (i, off) in SLOTS.iter().enumerate() {
        storage.read(*off, &mut raw[i])?;
        slots.push(Meta::decode(&raw[i]));
    }
    if let Some(v) = slots.iter().find_map(|s| match s {
        Slot::Version(v) => Some(*v),
        _ => None,
    }) {
        return Err(JournalError::UnsupportedVersion { found: v });
    }
    if slots.iter().all(|s| *s == Slot::Empty) {
        return Err(JournalError::Empty);
    }
    if slots
        .iter()
        .all(|s| matches!(s, Slot::NoMagic | Slot::Empty))
    {
        return Err(JournalError::BadMagic);
    }
    let mut best: Option<Meta> = None;
    for (i, s) in slots.iter().enumerate() {
        if let Slot::Valid(m) = s {
            m.check(&raw[i], i, file_len)
                .map_err(JournalError::BadHeader)?;
            if best.map_or(true, |b| m.epoch > b.epoch) {
                best = Some(*m);
            }
        }
    }
    let Some(meta) = best else {
        let describe = |s: &Slot| match s {
            Slot::Empty => "empty",
            Slot::NoMagic => "no magic",
            _ => "checksum mismatch",
        };
        return Err(JournalError::NoValidHeader {
            detail: format!(
                "slot 0: {}, slot 1: {}",
                describe(&slots[0]),
                describe(&slots[1])
            ),
        });
    };
    // The checkpoint: its length was checked against the file by `Meta::check`.
    let mut checkpoint = vec![0u8; meta.checkpoint_len as usize];
    storage.read(meta.area, &mut checkpoint)?;
    let computed = crc32(&checkpoint);
    if computed != meta.checkpoint_crc {
        return Err(JournalError::CheckpointDamaged {
            stored: meta.checkpoint_crc,
            computed,
        });
    }
    Ok((meta, checkpoint))
}

/// The log after checkpoint `meta`: its records (their payloads only if `keep`),
/// the next sequence number and how it ended.
type Log = (Vec<Record>, u64, LogEnd);

fn read_log<S: Storage + ?Sized>(
    storage: &S,
    meta: &Meta,
    keep: bool,
) -> Result<Log, JournalError> {
    let file_len = storage.len();
    let mut records = Vec::new();
    let mut seq = meta.first_seq;
    let mut off = meta.log_start();
    let mut log = LogReader {
        storage,
        file_len,
        start: 0,
        buf: Vec::new(),
    };
    let end = loop {
        match read_record(&mut log, off, meta.epoch, keep)? {
            // A scan does not look past the end for damage in the middle (a read of
            // up to MAX_PAYLOAD bytes): its caller writes a new epoch, and `recover`
            // still refuses such an old log if that never happens.
            Step::End if !keep => break LogEnd::Clean { offset: off },
            Step::End => {
                // Zero bytes where a record would be: the end, unless intact
                // records follow (a zeroed stretch in the middle).
                if let Some(next) = find_later_record(storage, off, meta.epoch, seq, file_len)? {
                    return Err(JournalError::CorruptRecord {
                        offset: off,
                        next_valid: next,
                        detail: "zero bytes where a record should be".into(),
                    });
                }
                break LogEnd::Clean { offset: off };
            }
            Step::Bad(reason) => {
                if let Some(next) = find_later_record(storage, off, meta.epoch, seq, file_len)? {
                    return Err(JournalError::CorruptRecord {
                        offset: off,
                        next_valid: next,
                        detail: reason,
                    });
                }
                break LogEnd::Cut {
                    offset: off,
                    reason,
                };
            }
            Step::Record(h, payload) => {
                let payload = log.slice(payload);
                if h.seq != seq {
                    return Err(JournalError::SequenceGap {
                        offset: off,
                        expected: seq,
                        found: h.seq,
                    });
                }
                if h.kind == KIND_SEAL {
                    let epoch = if payload.len() == 8 { le64(payload) } else { 0 };
                    return Err(JournalError::Superseded { epoch });
                }
                if !keep {
                    seq += 1;
                    off += record_len(u64::from(h.len));
                    continue;
                }
                let rec = Record::decode(h.kind, payload).map_err(|e| match e {
                    DecodeError::UnknownKind(kind) => {
                        JournalError::UnknownKind { offset: off, kind }
                    }
                    DecodeError::Malformed(detail) => JournalError::BadRecord {
                        offset: off,
                        detail,
                    },
                })?;
                records.push(rec);
                seq += 1;
                off += record_len(u64::from(h.len));
            }
        }
    };
    Ok((records, seq, end))
}

fn assemble(meta: Meta, checkpoint: Vec<u8>, (records, seq, end): Log, keep: bool) -> Recovered {
    let end_offset = match &end {
        LogEnd::Clean { offset } | LogEnd::Cut { offset, .. } => *offset,
    };
    Recovered {
        epoch: meta.epoch,
        checkpoint,
        first_seq: meta.first_seq,
        records,
        next_seq: seq,
        end,
        area: meta.area,
        end_offset,
        meta,
        checked: keep,
    }
}

enum Step {
    /// Zero bytes, or too few bytes left for a header.
    End,
    /// Not a whole record: why.
    Bad(String),
    /// An intact record (checksums right), payload copied out: where it is in
    /// the [`LogReader`]'s window ([`LogReader::slice`]).
    Record(RecordHeader, std::ops::Range<usize>),
}

/// Bytes of the log read ahead at once.
const LOG_WINDOW: u64 = 1 << 20;

/// The log read in windows of [`LOG_WINDOW`] bytes (a `pread` each, for a
/// [`JournalMap`](fuse_session::dev::JournalMap)) instead of two small reads per
/// record through the mapping (a page fault per 4 KiB in a process that just
/// mapped the journal). A window is a copy: what is checked is what is used.
struct LogReader<'s, S: ?Sized> {
    storage: &'s S,
    file_len: u64,
    /// File offset of `buf[0]`.
    start: u64,
    buf: Vec<u8>,
}

impl<S: Storage + ?Sized> LogReader<'_, S> {
    /// Where the bytes `[off, off + len)` are in the window, read first if they
    /// are not all in it. The caller checked that the file holds them.
    fn window(&mut self, off: u64, len: u64) -> Result<std::ops::Range<usize>, JournalError> {
        let have = self.start..self.start + self.buf.len() as u64;
        if off < have.start || off + len > have.end {
            // At least `len` (checked against the file and MAX_PAYLOAD by the
            // caller), at most the rest of the file.
            let want = len.max(LOG_WINDOW).min(self.file_len - off).max(len);
            self.buf.resize(want as usize, 0);
            self.storage.read(off, &mut self.buf)?;
            self.start = off;
        }
        let i = (off - self.start) as usize;
        Ok(i..i + len as usize)
    }

    fn slice(&self, r: std::ops::Range<usize>) -> &[u8] {
        &self.buf[r]
    }
}

/// One record at `off`. Without `payload`, only the header is read and checked
/// (its checksum is salted with the epoch), the payload neither copied nor
/// checksummed (a seal's is): for [`scan`], which uses no payload.
fn read_record<S: Storage + ?Sized>(
    log: &mut LogReader<'_, S>,
    off: u64,
    epoch: u64,
    payload: bool,
) -> Result<Step, JournalError> {
    let file_len = log.file_len;
    if off.saturating_add(RECORD_HEADER_LEN) > file_len {
        return Ok(Step::End);
    }
    let at = log.window(off, RECORD_HEADER_LEN)?;
    let hb: [u8; 24] = log.slice(at).try_into().unwrap_or([0xff; 24]);
    let Some(h) = RecordHeader::decode(&hb, epoch) else {
        if hb.iter().all(|&b| b == 0) {
            return Ok(Step::End);
        }
        return Ok(Step::Bad("record header checksum mismatch".into()));
    };
    let len = u64::from(h.len);
    if len > MAX_PAYLOAD {
        return Ok(Step::Bad(format!(
            "record length {len} exceeds the maximum {MAX_PAYLOAD}"
        )));
    }
    if off + RECORD_HEADER_LEN + len > file_len {
        return Ok(Step::Bad(format!(
            "record of {len} bytes runs past the end of the file"
        )));
    }
    if !payload && h.kind != KIND_SEAL {
        return Ok(Step::Record(h, 0..0));
    }
    // Checked against the file and MAX_PAYLOAD: safe to read (allocate).
    let at = log.window(off + RECORD_HEADER_LEN, len)?;
    let payload = log.slice(at.clone());
    let computed = crc32(payload);
    if computed != h.payload_crc {
        return Ok(Step::Bad(format!(
            "payload checksum {computed:#010x} differs from the stored {:#010x}",
            h.payload_crc
        )));
    }
    Ok(Step::Record(h, at))
}

/// Looks for an intact record of this epoch numbered `seq` or later after a bad
/// one at `off`, as far as a record could reach. Finding one means the damage is
/// not a torn tail.
fn find_later_record<S: Storage + ?Sized>(
    storage: &S,
    off: u64,
    epoch: u64,
    seq: u64,
    file_len: u64,
) -> Result<Option<u64>, JournalError> {
    let start = off + 8;
    let stop = off
        .saturating_add(record_len(MAX_PAYLOAD) + RECORD_HEADER_LEN)
        .min(file_len);
    // Read in windows, skipping the holes of a sparse file (past the end of a log
    // the file is mostly never written: a hole reads as zeros, and zeros hold no
    // record), so a clean end costs an lseek, not a read of MAX_PAYLOAD bytes.
    const WINDOW: u64 = 1 << 20;
    let mut window = Vec::new();
    let mut pos = start;
    while pos + 24 <= stop {
        let data = storage.next_data(pos)?;
        if data >= stop {
            break;
        }
        // Stay on the 8-byte grid of record positions.
        if data > pos {
            pos += (data - pos) & !7;
        }
        // A window, plus 16 bytes so that a header that starts in its last 8 is read.
        let end = pos.saturating_add(WINDOW + 16).min(stop);
        if end < pos + 24 {
            break;
        }
        // Bounded by WINDOW and by the file.
        window.resize((end - pos) as usize, 0);
        storage.read(pos, &mut window)?;
        let mut i = 0usize;
        while i + 24 <= window.len() {
            let hb: &[u8; 24] = window[i..i + 24].try_into().unwrap_or(&[0; 24]);
            // Cheap filters first: a header's checksum word is never zero in
            // practice, and most of the window is zero; then what the header
            // must say to count (zero flags, a number at least `seq`, a length
            // within bounds), before its checksum: past a log's end the file
            // often holds an older log's bytes, nonzero everywhere.
            if le32(&hb[20..24]) != 0
                && hb[6..8] == [0, 0]
                && le64(&hb[8..16]) >= seq
                && u64::from(le32(&hb[0..4])) <= MAX_PAYLOAD
            {
                if let Some(h) = RecordHeader::decode(hb, epoch) {
                    if h.seq >= seq && u64::from(h.len) <= MAX_PAYLOAD {
                        return Ok(Some(pos + i as u64));
                    }
                }
            }
            i += 8;
        }
        pos += i as u64;
    }
    Ok(None)
}
