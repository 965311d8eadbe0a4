//! Fuzz logic for the journal, kept in the library so that the `journal` target in
//! `fuzz/` is a one-line wrapper and its corpus replays under plain `cargo test`
//! (`fuse-snapshot/tests/journal_fuzz_corpus.rs`).
//!
//! [`journal`] never panics on malformed input (the library must not either); it
//! panics only when an invariant is violated. The first byte selects a mode:
//!
//! - `0`: the rest is a journal image. [`recover`] must not panic; if it succeeds,
//!   the records must be numbered without gaps and re-encode to themselves, and
//!   [`Journal::resume`] on the image, an append and a second recovery must give
//!   back exactly the resumed state.
//! - `1`: a crash. Bytes 1..3 are a crash point (bytes stored before the process
//!   "dies", `u16` LE; 0 = none), the rest a script of appends, marks and
//!   compactions run on a [`MemStorage`] (see [`run_script`]). Recovery must give a
//!   committed checkpoint and, after it, every record whose append returned, in
//!   order, and at most the one in progress.
//! - `2`: damage. The script (from byte 3 on, up to a zero byte) runs without a
//!   crash; then each following 4-byte group `pos u16 LE, pos_hi, xor` flips bits at
//!   `pos` of the image. Recovery must refuse the image or give a committed
//!   checkpoint and a prefix of the records after it: never a record that was not
//!   written.
use super::{recover, Journal, JournalError, JournalOptions, MemStorage, Record, Recovered};

/// Scripts longer than this are cut (each run stays fast enough to fuzz).
pub const MAX_SCRIPT: usize = 1024;

/// The storage size the scripts run in: small, so that growth, placement of new
/// areas and the maximum are all exercised.
pub const SCRIPT_MAX_LEN: u64 = 256 << 10;

/// Options for scripted journals: compaction headroom small enough for
/// [`SCRIPT_MAX_LEN`].
pub const SCRIPT_OPTIONS: JournalOptions = JournalOptions {
    compact_after: 16 << 10,
    max_record: 64 << 10,
    compact_headroom: 4 << 10,
};

/// The fuzz target: see the [module docs](self).
pub fn journal(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => image(rest),
        1 => crash(rest),
        _ => damage(rest),
    }
}

/// A deterministic record for sequence number `seq`: kind from `sel` (`sel % 10`
/// for the first ten kinds; 30 and above: [`Record::Delta`], added later, so
/// that what a saved script writes changed only for those), `len` bytes of
/// content.
pub fn record_for(seq: u64, sel: u8, len: usize) -> Record {
    let bytes: Vec<u8> = (0..len)
        .map(|i| (seq as usize).wrapping_mul(31).wrapping_add(i * 7) as u8)
        .collect();
    let a = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    if sel >= 30 {
        return Record::Delta(bytes);
    }
    match sel % 10 {
        0 => Record::Init(bytes),
        1 => Record::Lookup {
            nodeid: a,
            generation: seq,
            delta: 1 + u64::from(sel),
            node: bytes,
        },
        2 => Record::Forget {
            nodeid: a,
            count: seq,
        },
        3 => Record::Open {
            fh: a,
            handle: bytes,
        },
        4 => Record::Release { fh: a },
        5 => Record::Counters(bytes),
        6 => Record::FsChange(bytes),
        7 => Record::Accepted {
            unique: a,
            nodeid: seq,
            opcode: u32::from(sel),
            request: bytes,
        },
        8 => Record::Replied {
            unique: a,
            reply: bytes,
        },
        _ => Record::Done { unique: a },
    }
}

/// A checkpoint's bytes for epoch `epoch` (its content names the epoch).
pub fn checkpoint_for(epoch: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (epoch as usize).wrapping_mul(131).wrapping_add(i) as u8)
        .collect()
}

/// What a scripted run wrote, to check a recovery against.
#[derive(Debug, Default)]
pub struct Model {
    /// Every committed epoch's checkpoint and first sequence number (epoch `i + 1`
    /// at index `i`).
    pub epochs: Vec<(Vec<u8>, u64)>,
    /// The epoch of a compaction that failed (it may have committed).
    pub maybe_epoch: Option<(Vec<u8>, u64)>,
    /// Every record appended, numbered from 1: those whose append returned `Ok`,
    /// then, if the last failed, that one.
    pub records: Vec<Record>,
    /// How many of `records` were acknowledged.
    pub acked: usize,
}

impl Model {
    /// Panics unless `r` is a state the run could leave: a committed (or
    /// possibly committed) epoch's checkpoint, and after it the records in order,
    /// every acknowledged one if `complete`, at most one more.
    pub fn check(&self, r: &Recovered, complete: bool) {
        let idx = usize::try_from(r.epoch - 1).unwrap_or(usize::MAX);
        let expected = if idx < self.epochs.len() {
            &self.epochs[idx]
        } else if idx == self.epochs.len() && self.maybe_epoch.is_some() {
            self.maybe_epoch.as_ref().unwrap_or(&self.epochs[0])
        } else {
            panic!(
                "recovered epoch {} but {} were committed",
                r.epoch,
                self.epochs.len()
            );
        };
        assert_eq!(r.checkpoint, expected.0, "checkpoint of epoch {}", r.epoch);
        assert_eq!(r.first_seq, expected.1, "first record of epoch {}", r.epoch);
        if complete {
            assert!(
                r.epoch as usize >= self.epochs.len(),
                "recovered epoch {} of {}",
                r.epoch,
                self.epochs.len()
            );
        }
        let start = (r.first_seq - 1) as usize;
        let n = r.records.len();
        assert!(
            start + n <= self.records.len(),
            "{n} records from {} but only {} were written",
            r.first_seq,
            self.records.len()
        );
        assert_eq!(
            r.records[..],
            self.records[start..start + n],
            "records from {}",
            r.first_seq
        );
        assert_eq!(r.next_seq, r.first_seq + n as u64);
        if complete {
            assert!(
                start + n >= self.acked,
                "only {} records recovered, {} were acknowledged",
                start + n,
                self.acked
            );
        }
    }
}

/// Runs a script on a journal in `storage`: each byte is an operation —
/// `b % 8 < 6` appends a [`record_for`] of kind `b / 8` and length `next byte *
/// 3`; `6` takes a mark; `7` compacts with the last mark and a checkpoint of
/// length `next byte * 5`. Stops at the first error the journal returns (after a
/// simulated crash every store fails).
pub fn run_script(storage: &MemStorage, script: &[u8]) -> Model {
    let script = &script[..script.len().min(MAX_SCRIPT)];
    let mut model = Model::default();
    let ck = checkpoint_for(1, 40);
    let journal = match Journal::create(storage.clone(), &ck, SCRIPT_OPTIONS) {
        Ok(j) => j,
        Err(_) => {
            model.maybe_epoch = Some((ck, 1));
            return model;
        }
    };
    model.epochs.push((ck, 1));
    let mut mark = None;
    let mut ops = script.iter();
    while let Some(&op) = ops.next() {
        match op % 8 {
            6 => mark = Some(journal.mark()),
            7 => {
                let Some(m) = mark.take() else { continue };
                let len = usize::from(*ops.next().unwrap_or(&0)) * 5;
                let epoch = journal.epoch() + 1;
                let ck = checkpoint_for(epoch, len);
                match journal.compact(m, &ck) {
                    Ok(()) => model.epochs.push((ck, m.seq)),
                    Err(JournalError::Compaction(_) | JournalError::Full { .. }) => {}
                    Err(_) => {
                        model.maybe_epoch = Some((ck, m.seq));
                        break;
                    }
                }
            }
            _ => {
                let len = usize::from(*ops.next().unwrap_or(&0)) * 3;
                let seq = journal.next_seq();
                let rec = record_for(seq, op / 8, len);
                match journal.append(&rec) {
                    Ok(a) => {
                        assert_eq!(a.seq, seq);
                        model.records.push(rec);
                        model.acked += 1;
                    }
                    Err(JournalError::Full { .. }) => {}
                    Err(_) => {
                        model.records.push(rec);
                        break;
                    }
                }
            }
        }
    }
    model
}

fn image(bytes: &[u8]) {
    let storage = MemStorage::from_bytes(bytes.to_vec(), bytes.len() as u64 + (64 << 10));
    let Ok(r) = recover(&storage) else {
        return;
    };
    assert_eq!(r.next_seq, r.first_seq + r.records.len() as u64);
    for rec in &r.records {
        let back = Record::decode(rec.kind(), &rec.payload()).expect("re-decodes");
        assert_eq!(&back, rec);
    }
    // Continue the journal found there.
    let ck = checkpoint_for(r.epoch + 1, 9);
    let Ok(j) = Journal::resume(storage.clone(), &r, &ck, SCRIPT_OPTIONS) else {
        return;
    };
    let rec = record_for(r.next_seq, 3, 5);
    let appended = j.append(&rec);
    let again = match recover(&storage) {
        Ok(r) => r,
        // Only bytes forged for the new epoch, left in the image past the new
        // log, can do that (a real journal's older areas hold older epochs).
        Err(JournalError::CorruptRecord { .. }) => return,
        Err(e) => panic!("a resumed journal does not recover: {e}"),
    };
    assert_eq!(again.epoch, r.epoch + 1);
    assert_eq!(again.checkpoint, ck);
    assert_eq!(again.first_seq, r.next_seq);
    match appended {
        Ok(_) => assert_eq!(again.records, vec![rec]),
        Err(_) => assert!(again.records.is_empty()),
    }
}

fn crash(rest: &[u8]) {
    let (point, script) = match rest {
        [a, b, script @ ..] => (u64::from(u16::from_le_bytes([*a, *b])), script),
        _ => (0, &[][..]),
    };
    let storage = MemStorage::new(SCRIPT_MAX_LEN);
    if point != 0 {
        storage.crash_after(point);
    }
    let model = run_script(&storage, script);
    match recover(&storage) {
        Ok(r) => model.check(&r, true),
        // Nothing committed yet: the crash came before the first header.
        Err(
            JournalError::Empty
            | JournalError::TooShort { .. }
            | JournalError::BadMagic
            | JournalError::NoValidHeader { .. },
        ) if model.epochs.is_empty() => {}
        Err(e) => panic!("a crash at byte {point} left an unrecoverable journal: {e}"),
    }
}

fn damage(rest: &[u8]) {
    let script_end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    let (script, flips) = rest.split_at(script_end);
    let storage = MemStorage::new(SCRIPT_MAX_LEN);
    let model = run_script(&storage, script);
    let mut bytes = storage.bytes();
    for f in flips.chunks_exact(4) {
        let pos = usize::from(u16::from_le_bytes([f[0], f[1]])) | (usize::from(f[2]) << 16);
        if pos < bytes.len() {
            bytes[pos] ^= f[3];
        }
    }
    let damaged = MemStorage::from_bytes(bytes, SCRIPT_MAX_LEN);
    if let Ok(r) = recover(&damaged) {
        model.check(&r, false);
    }
}
