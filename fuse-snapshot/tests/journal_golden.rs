//! The golden journal of format version 1: read back record by record, and
//! written again byte for byte. See `tests/golden/README.md`.
//!
//! If this fails after a change, the change altered journal format version 1,
//! which journals kept in fd stores across an upgrade depend on. Undo it, or add a
//! new journal format version and a new golden file.
use std::path::PathBuf;

use fuse_snapshot::journal::{
    recover, Journal, JournalOptions, LogEnd, MemStorage, Record, JOURNAL_VERSION,
};

const FIRST_CHECKPOINT: &[u8] = b"golden checkpoint, epoch 1";
const SECOND_CHECKPOINT: &[u8] = b"golden checkpoint, epoch 2 (covers records 1 to 10)";

/// One record of every kind, written out literally.
fn records() -> Vec<Record> {
    vec![
        Record::Init(b"init: 7.45".to_vec()),
        Record::Lookup {
            nodeid: 2,
            generation: 1,
            delta: 1,
            node: b"node two".to_vec(),
        },
        Record::Forget {
            nodeid: 2,
            count: 1,
        },
        Record::Open {
            fh: 7,
            handle: b"handle seven".to_vec(),
        },
        Record::Release { fh: 7 },
        Record::Counters(b"counters".to_vec()),
        Record::FsChange(b"a change of the filesystem".to_vec()),
        Record::Accepted {
            unique: 0x8000_0000_0000_0010,
            nodeid: 1,
            opcode: 35,
            request: b"a CREATE request".to_vec(),
        },
        Record::Replied {
            unique: 0x8000_0000_0000_0010,
            reply: b"its reply".to_vec(),
        },
        Record::Done {
            unique: 0x8000_0000_0000_0010,
        },
        // After the mark: copied into the second epoch's log.
        Record::Lookup {
            nodeid: 3,
            generation: 2,
            delta: 5,
            node: Vec::new(),
        },
        Record::Done { unique: 17 },
        // After the compaction.
        Record::FsChange(vec![0xff; 13]),
    ]
}

const OPTIONS: JournalOptions = JournalOptions {
    compact_after: 1 << 20,
    max_record: 1 << 16,
    compact_headroom: 4096,
};

/// The golden journal: ten records, a mark, two records, a compaction, one
/// record.
fn write() -> Vec<u8> {
    let s = MemStorage::new(1 << 20);
    let j = Journal::create(s.clone(), FIRST_CHECKPOINT, OPTIONS).unwrap();
    let recs = records();
    for r in &recs[..10] {
        j.append(r).unwrap();
    }
    let mark = j.mark();
    for r in &recs[10..12] {
        j.append(r).unwrap();
    }
    j.compact(mark, SECOND_CHECKPOINT).unwrap();
    j.append(&recs[12]).unwrap();
    s.bytes()
}

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/journal-v1.bin")
}

#[test]
fn journal_v1_golden() {
    assert_eq!(JOURNAL_VERSION, 1);
    let path = golden_path();
    if !path.exists() && std::env::var_os("FUSE_SNAPSHOT_BLESS").is_some() {
        std::fs::write(&path, write()).unwrap();
    }
    let golden = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (FUSE_SNAPSHOT_BLESS=1 writes a missing file)",
            path.display()
        )
    });
    let r = recover(&MemStorage::from_bytes(golden.clone(), 0)).unwrap();
    assert_eq!(r.epoch, 2);
    assert_eq!(r.checkpoint, SECOND_CHECKPOINT);
    assert_eq!(r.first_seq, 11);
    assert_eq!(r.next_seq, 14);
    assert_eq!(r.records, records()[10..]);
    assert!(matches!(r.end, LogEnd::Clean { .. }), "{}", r.end);
    // Written the same way today, the bytes are the same (up to trailing zeros:
    // how far the file grows ahead of the log is policy, not format).
    fn trim(b: &[u8]) -> &[u8] {
        let n = b.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1);
        &b[..n]
    }
    assert!(
        trim(&write()) == trim(&golden),
        "journal format version 1 changed"
    );
}

/// The records of `journal-v1-kind11.bin`: what a build that writes kind 11
/// ([`Record::Delta`]) leaves after continuing an older build's log in place,
/// kind 7 records (`FsChange`) followed by kind 11 ones.
fn mixed_records() -> Vec<Record> {
    vec![
        Record::FsChange(b"an older build's whole round".to_vec()),
        Record::FsChange(Vec::new()),
        Record::Delta(b"a round, the unchanged parts left out".to_vec()),
        Record::Delta(Vec::new()),
        Record::Delta(vec![0x5a; 21]),
    ]
}

fn write_mixed() -> Vec<u8> {
    let s = MemStorage::new(1 << 20);
    let j = Journal::create(s.clone(), FIRST_CHECKPOINT, OPTIONS).unwrap();
    for r in &mixed_records() {
        j.append(r).unwrap();
    }
    s.bytes()
}

/// Kind 11 within format version 1: read back record by record, and written
/// again byte for byte.
#[test]
fn journal_v1_kind11_golden() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/journal-v1-kind11.bin");
    if !path.exists() && std::env::var_os("FUSE_SNAPSHOT_BLESS").is_some() {
        std::fs::write(&path, write_mixed()).unwrap();
    }
    let golden = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (FUSE_SNAPSHOT_BLESS=1 writes a missing file)",
            path.display()
        )
    });
    let r = recover(&MemStorage::from_bytes(golden.clone(), 0)).unwrap();
    assert_eq!(r.epoch, 1);
    assert_eq!(r.checkpoint, FIRST_CHECKPOINT);
    assert_eq!(r.first_seq, 1);
    assert_eq!(r.records, mixed_records());
    assert_eq!(
        r.records.iter().map(|r| r.kind()).collect::<Vec<_>>(),
        [7, 7, 11, 11, 11]
    );
    assert!(matches!(r.end, LogEnd::Clean { .. }), "{}", r.end);
    fn trim(b: &[u8]) -> &[u8] {
        let n = b.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1);
        &b[..n]
    }
    assert!(
        trim(&write_mixed()) == trim(&golden),
        "journal format version 1 (kind 11) changed"
    );
}
