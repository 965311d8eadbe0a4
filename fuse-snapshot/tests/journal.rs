//! The crash-recovery journal: round trips, torn tails at every byte, bit flips
//! everywhere, forged headers and lengths, concurrent appenders, compaction under
//! load, crashes at every byte of appends and compactions, and a real `kill -9` of
//! a process writing to a memfd.
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use fuse_session::dev::JournalMap;
use fuse_snapshot::format::crc32;
use fuse_snapshot::journal::fuzzing::{
    checkpoint_for, record_for, run_script, Model, SCRIPT_MAX_LEN, SCRIPT_OPTIONS,
};
use fuse_snapshot::journal::{
    recover, Journal, JournalError, JournalOptions, LogEnd, MemStorage, Record, Storage,
};
use proptest::prelude::*;

const CK: &[u8] = b"checkpoint: a snapshot in the existing format goes here";

fn mem() -> MemStorage {
    MemStorage::new(SCRIPT_MAX_LEN)
}

/// A journal with `n` records; returns the storage and the records.
fn journal_with(n: u64) -> (MemStorage, Vec<Record>) {
    let s = mem();
    let j = Journal::create(s.clone(), CK, SCRIPT_OPTIONS).unwrap();
    let recs: Vec<Record> = (1..=n)
        .map(|seq| record_for(seq, seq as u8, (seq * 5 % 40) as usize))
        .collect();
    for r in &recs {
        j.append(r).unwrap();
    }
    (s, recs)
}

#[test]
fn create_append_recover() {
    let (s, recs) = journal_with(25);
    let r = recover(&s).unwrap();
    assert_eq!(r.epoch, 1);
    assert_eq!(r.checkpoint, CK);
    assert_eq!(r.first_seq, 1);
    assert_eq!(r.next_seq, 26);
    assert_eq!(r.records, recs);
    assert!(matches!(r.end, LogEnd::Clean { .. }), "{}", r.end);
}

#[test]
fn appending_borrowed_records_needs_no_copy() {
    let s = mem();
    let j = Journal::create(s.clone(), CK, SCRIPT_OPTIONS).unwrap();
    let request = vec![7u8; 300];
    let a = j
        .append(&Record::Accepted {
            unique: 1 << 63 | 5,
            nodeid: 1,
            opcode: 35,
            request: &request[..],
        })
        .unwrap();
    assert_eq!(a.seq, 1);
    assert!(!a.compact);
    let r = recover(&s).unwrap();
    assert_eq!(
        r.records,
        vec![Record::Accepted {
            unique: 1 << 63 | 5,
            nodeid: 1,
            opcode: 35,
            request
        }]
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any sequence of records, with compactions anywhere, recovers as written.
    #[test]
    fn any_records_round_trip(
        ops in proptest::collection::vec((0u8..12, 0usize..200), 0..80),
    ) {
        let s = mem();
        let j = Journal::create(s.clone(), CK, SCRIPT_OPTIONS).unwrap();
        let mut written = Vec::new();
        let mut ck = (CK.to_vec(), 1u64);
        for (sel, len) in ops {
            if sel >= 10 {
                let mark = j.mark();
                let c = checkpoint_for(mark.seq, len);
                j.compact(mark, &c).unwrap();
                ck = (c, mark.seq);
            } else {
                let rec = record_for(j.next_seq(), sel, len);
                j.append(&rec).unwrap();
                written.push(rec);
            }
        }
        let r = recover(&s).unwrap();
        prop_assert_eq!(&r.checkpoint, &ck.0);
        prop_assert_eq!(r.first_seq, ck.1);
        prop_assert_eq!(&r.records[..], &written[(ck.1 - 1) as usize..]);
        let clean = matches!(r.end, LogEnd::Clean { .. });
        prop_assert!(clean);
    }
}

#[test]
fn torn_last_record_at_every_byte_is_cut() {
    let (full, recs) = journal_with(12);
    let before = {
        let (s, _) = journal_with(11);
        s
    };
    // The 12th record's bytes in the full image: where the 11-record log ends.
    let r11 = recover(&before).unwrap();
    let LogEnd::Clean { offset: start } = r11.end else {
        panic!("{}", r11.end)
    };
    let r12 = recover(&full).unwrap();
    let LogEnd::Clean { offset: end } = r12.end else {
        panic!("{}", r12.end)
    };
    let image = full.bytes();
    let old = before.bytes();
    // A crash mid-record leaves any subset of the record's bytes except its commit
    // word (stored last): try every prefix of the record, in both store orders,
    // with the commit word missing, and the whole record.
    for cut in start..=end {
        for reverse in [false, true] {
            let mut b = old.clone();
            b.resize(image.len(), 0);
            let range: Vec<u64> = if reverse {
                (start..end).rev().take((cut - start) as usize).collect()
            } else {
                (start..cut).collect()
            };
            for i in range {
                // The commit word (bytes 16..24 of the header) only when whole.
                if (start + 16..start + 24).contains(&i) && cut != end {
                    continue;
                }
                b[i as usize] = image[i as usize];
            }
            let r = recover(&MemStorage::from_bytes(b, SCRIPT_MAX_LEN))
                .unwrap_or_else(|e| panic!("cut at {cut} reverse {reverse}: {e}"));
            if cut == end {
                assert_eq!(r.records, recs);
            } else {
                assert_eq!(r.records, recs[..11], "cut at {cut}");
                assert_eq!(r.next_seq, 12);
            }
        }
    }
}

/// Runs `script` with a crash after every possible number of stored bytes, and
/// checks that each recovery is a committed state with every acknowledged record.
fn crash_everywhere(script: &[u8]) -> u64 {
    let mut point = 1;
    loop {
        let s = mem();
        s.crash_after(point);
        let model = run_script(&s, script);
        match recover(&s) {
            Ok(r) => model.check(&r, true),
            // Crashed before the first header was whole: nothing to recover.
            Err(_) if model.epochs.is_empty() => {}
            Err(e) => panic!("crash at byte {point}: {e}"),
        }
        if !s.has_crashed() {
            return point;
        }
        point += 1;
    }
}

#[test]
fn crash_at_every_byte_of_appends() {
    // Appends of several sizes, no compaction.
    let script = [8, 3, 16, 0, 24, 40, 32, 1, 56, 100, 0, 9];
    let n = crash_everywhere(&script);
    assert!(n > 900, "the script stores {n} bytes");
}

#[test]
fn crash_at_every_byte_of_a_compaction() {
    // Appends, a mark, appends after it (copied into the new log), compaction
    // with the new area after the live log; more appends, a second compaction
    // (the new area before the live one), appends.
    let mut script = vec![8, 10, 16, 20, 6, 24, 30, 32, 5, 7, 40];
    script.extend_from_slice(&[40, 7, 48, 2, 6, 8, 1, 7, 30, 56, 4, 8, 2]);
    let whole = run_script(&mem(), &script);
    assert_eq!(whole.epochs.len(), 3, "the script compacts twice");
    let n = crash_everywhere(&script);
    assert!(n > 1500, "the script stores {n} bytes");
}

#[test]
fn compaction_places_new_areas_after_then_before() {
    let s = mem();
    let j = Journal::create(s.clone(), CK, SCRIPT_OPTIONS).unwrap();
    for seq in 1..=20 {
        j.append(&record_for(seq, 1, 100)).unwrap();
    }
    let m = j.mark();
    j.append(&record_for(21, 2, 0)).unwrap();
    j.compact(m, b"second").unwrap();
    assert_eq!(j.epoch(), 2);
    let r = recover(&s).unwrap();
    assert_eq!((r.checkpoint.as_slice(), r.first_seq), (&b"second"[..], 21));
    assert_eq!(r.records, vec![record_for(21, 2, 0)]);
    // The first area was big enough to take the next one.
    let m = j.mark();
    j.compact(m, b"third").unwrap();
    j.append(&record_for(22, 3, 10)).unwrap();
    let r = recover(&s).unwrap();
    assert_eq!(r.epoch, 3);
    assert_eq!((r.checkpoint.as_slice(), r.first_seq), (&b"third"[..], 22));
    assert_eq!(r.records, vec![record_for(22, 3, 10)]);
    // A stale mark is refused and changes nothing.
    assert!(matches!(
        j.compact(m, b"stale"),
        Err(JournalError::Compaction(_))
    ));
    assert_eq!(recover(&s).unwrap().epoch, 3);
}

#[test]
fn compaction_is_suggested_after_the_threshold() {
    let s = mem();
    let opts = JournalOptions {
        compact_after: 1000,
        ..SCRIPT_OPTIONS
    };
    let j = Journal::create(s, CK, opts).unwrap();
    let mut first = None;
    for seq in 1..100 {
        if j.append(&record_for(seq, 6, 40)).unwrap().compact {
            first = Some(seq);
            break;
        }
    }
    let seq = first.expect("a compaction is suggested");
    assert!(j.log_len() >= 1000);
    assert!(seq * 64 >= 1000, "suggested after {seq} records");
    let m = j.mark();
    j.compact(m, CK).unwrap();
    assert!(!j.append(&record_for(seq + 1, 6, 40)).unwrap().compact);
}

fn flip(bytes: &[u8], pos: usize, mask: u8) -> MemStorage {
    let mut b = bytes.to_vec();
    b[pos] ^= mask;
    MemStorage::from_bytes(b, SCRIPT_MAX_LEN)
}

#[test]
fn bit_flips_anywhere_are_refused_or_cut() {
    // A journal after two compactions: both slots, a checkpoint, a sealed old
    // log, a live log.
    let s = mem();
    let mut script = vec![8, 10, 16, 20, 6, 24, 30, 32, 5, 7, 40];
    script.extend_from_slice(&[40, 7, 48, 2, 6, 8, 1, 7, 30, 56, 4, 8, 2]);
    let model: Model = run_script(&s, &script);
    assert_eq!(model.epochs.len(), 3);
    let image = s.bytes();
    let (mut refused, mut cut, mut unchanged) = (0, 0, 0);
    for pos in 0..image.len() {
        for mask in [0x01, 0x80, 0xff] {
            match recover(&flip(&image, pos, mask)) {
                Ok(r) => {
                    model.check(&r, false);
                    if r.records.len() + r.first_seq as usize - 1 == model.records.len()
                        && r.epoch == 3
                    {
                        unchanged += 1;
                    } else {
                        cut += 1;
                    }
                }
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    refused += 1;
                }
            }
        }
    }
    // Flips in padding, dead areas and the unused tail change nothing; flips in
    // the live header, checkpoint or records are refused, or cut the tail.
    assert!(
        refused > 0 && cut > 0 && unchanged > 0,
        "{refused} {cut} {unchanged}"
    );
}

#[test]
fn wrong_magic_version_empty_short() {
    let (s, _) = journal_with(3);
    let image = s.bytes();
    assert_eq!(
        recover(&MemStorage::from_bytes(image[..100].to_vec(), 0)).unwrap_err(),
        JournalError::TooShort { len: 100 }
    );
    assert_eq!(
        recover(&MemStorage::from_bytes(vec![0; 8192], 0)).unwrap_err(),
        JournalError::Empty
    );
    // Epoch 1 lives in slot 1 (offset 64).
    let mut b = image.clone();
    b[64] = b'X';
    assert_eq!(
        recover(&MemStorage::from_bytes(b, 0)).unwrap_err(),
        JournalError::BadMagic
    );
    let mut b = image.clone();
    b[64 + 8] = 2;
    let e = recover(&MemStorage::from_bytes(b, 0)).unwrap_err();
    assert_eq!(e, JournalError::UnsupportedVersion { found: 2 });
    assert!(e.to_string().contains("version 2"));
    let mut b = image.clone();
    b[64 + 30] ^= 4;
    assert!(matches!(
        recover(&MemStorage::from_bytes(b, 0)).unwrap_err(),
        JournalError::NoValidHeader { .. }
    ));
}

/// Re-checksums header slot `slot` after its fields were edited.
fn reseal_slot(b: &mut [u8], slot: usize) {
    let o = slot * 64;
    let crc = crc32(&b[o..o + 60]);
    b[o + 60..o + 64].copy_from_slice(&crc.to_le_bytes());
}

/// Re-checksums the record header at `off` (epoch `epoch`) after its fields were
/// edited.
fn reseal_record(b: &mut [u8], off: usize, epoch: u64) {
    let mut h = b[off..off + 20].to_vec();
    h.extend_from_slice(&epoch.to_le_bytes());
    let crc = crc32(&h);
    b[off + 20..off + 24].copy_from_slice(&crc.to_le_bytes());
}

/// The log of a fresh `journal_with` journal starts here (checkpoint padded).
fn log_start() -> usize {
    4096 + CK.len().div_ceil(8) * 8
}

#[test]
fn hostile_lengths_and_forged_fields() {
    let (s, recs) = journal_with(3);
    let image = s.bytes();
    // A checkpoint length past the file, correctly checksummed: refused, and
    // nothing allocated from it.
    for len in [u64::MAX, u64::MAX / 2, image.len() as u64] {
        let mut b = image.clone();
        b[64 + 32..64 + 40].copy_from_slice(&len.to_le_bytes());
        reseal_slot(&mut b, 1);
        let e = recover(&MemStorage::from_bytes(b, 0)).unwrap_err();
        assert!(matches!(e, JournalError::BadHeader(_)), "{len}: {e}");
    }
    // An area offset that is not an area; an epoch in the wrong slot.
    for (field, value) in [(24, 5u64), (24, 0), (16, 2), (16, u64::MAX), (40, 0)] {
        let mut b = image.clone();
        b[64 + field..64 + field + 8].copy_from_slice(&value.to_le_bytes());
        reseal_slot(&mut b, 1);
        let e = recover(&MemStorage::from_bytes(b, 0)).unwrap_err();
        assert!(matches!(e, JournalError::BadHeader(_)), "{field}: {e}");
    }
    // A record length of u32::MAX (and past the file), correctly checksummed, on
    // the last record: cut, with the reason.
    let LogEnd::Clean { offset: last } = recover(&journal_with(2).0).unwrap().end else {
        panic!()
    };
    let last = last as usize;
    for len in [u32::MAX, 9 << 20, 1 << 20] {
        let mut b = image.clone();
        b[last..last + 4].copy_from_slice(&len.to_le_bytes());
        reseal_record(&mut b, last, 1);
        let r = recover(&MemStorage::from_bytes(b, 0)).unwrap();
        assert_eq!(r.records, recs[..2]);
        assert!(matches!(r.end, LogEnd::Cut { .. }), "{}", r.end);
    }
    // The same on the first record: intact records follow, so it is refused.
    let mut b = image.clone();
    let first = log_start();
    b[first..first + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    reseal_record(&mut b, first, 1);
    let e = recover(&MemStorage::from_bytes(b, 0)).unwrap_err();
    assert!(matches!(e, JournalError::CorruptRecord { .. }), "{e}");
}

#[test]
fn damage_in_the_middle_gaps_and_unknown_kinds_are_refused() {
    let (s, _) = journal_with(3);
    let image = s.bytes();
    let first = log_start();
    // A payload byte of the first record.
    let e = recover(&flip(&image, first + 24, 1)).unwrap_err();
    assert!(
        matches!(e, JournalError::CorruptRecord { offset, .. } if offset == first as u64),
        "{e}"
    );
    // The first record's header zeroed.
    let mut b = image.clone();
    b[first..first + 24].fill(0);
    let e = recover(&MemStorage::from_bytes(b, 0)).unwrap_err();
    assert!(matches!(e, JournalError::CorruptRecord { .. }), "{e}");
    // A wrong sequence number, correctly checksummed.
    let mut b = image.clone();
    b[first + 8..first + 16].copy_from_slice(&7u64.to_le_bytes());
    reseal_record(&mut b, first, 1);
    assert_eq!(
        recover(&MemStorage::from_bytes(b, 0)).unwrap_err(),
        JournalError::SequenceGap {
            offset: first as u64,
            expected: 1,
            found: 7
        }
    );
    // An unknown kind.
    let mut b = image.clone();
    b[first + 4..first + 6].copy_from_slice(&99u16.to_le_bytes());
    reseal_record(&mut b, first, 1);
    assert_eq!(
        recover(&MemStorage::from_bytes(b, 0)).unwrap_err(),
        JournalError::UnknownKind {
            offset: first as u64,
            kind: 99
        }
    );
    // A Forget (kind 3) with a short payload.
    let mut b = image.clone();
    b[first + 4..first + 6].copy_from_slice(&3u16.to_le_bytes());
    reseal_record(&mut b, first, 1);
    assert!(matches!(
        recover(&MemStorage::from_bytes(b, 0)).unwrap_err(),
        JournalError::BadRecord { .. }
    ));
}

#[test]
fn a_damaged_newer_header_does_not_revive_the_sealed_log() {
    let s = mem();
    let j = Journal::create(s.clone(), CK, SCRIPT_OPTIONS).unwrap();
    j.append(&record_for(1, 1, 10)).unwrap();
    let m = j.mark();
    j.compact(m, b"new").unwrap();
    j.append(&record_for(2, 1, 10)).unwrap();
    // Epoch 2 is in slot 0.
    let e = recover(&flip(&s.bytes(), 20, 1)).unwrap_err();
    assert_eq!(e, JournalError::Superseded { epoch: 2 });
}

#[test]
fn full_is_a_clear_error_and_changes_nothing() {
    let s = MemStorage::new(8192);
    let j = Journal::create(s.clone(), CK, SCRIPT_OPTIONS).unwrap();
    let mut n = 0;
    let e = loop {
        match j.append(&record_for(n + 1, 6, 100)) {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(e, JournalError::Full { max: 8192, .. }), "{e}");
    assert!(e.to_string().contains("full"));
    let r = recover(&s).unwrap();
    assert_eq!(r.records.len() as u64, n);
    let e = j.append(&record_for(1, 6, 10 << 20)).unwrap_err();
    assert!(matches!(e, JournalError::RecordTooLarge { .. }), "{e}");
}

#[test]
fn resume_continues_after_a_cut_tail() {
    let (s, recs) = journal_with(5);
    // Tear the last record: drop its commit word.
    let r = recover(&s).unwrap();
    let LogEnd::Clean { offset } = r.end else {
        panic!()
    };
    let mut b = s.bytes();
    let last = offset as usize - (24 + 32);
    b[last + 16..last + 24].fill(0);
    let torn = MemStorage::from_bytes(b, SCRIPT_MAX_LEN);
    let r = recover(&torn).unwrap();
    assert_eq!(r.records, recs[..4]);
    assert!(matches!(r.end, LogEnd::Cut { .. }));
    let j = Journal::resume(torn.clone(), &r, b"rebuilt", SCRIPT_OPTIONS).unwrap();
    assert_eq!(j.next_seq(), 5);
    j.append(&record_for(5, 9, 0)).unwrap();
    let again = recover(&torn).unwrap();
    assert_eq!(again.epoch, 2);
    assert_eq!(again.checkpoint, b"rebuilt");
    assert_eq!(again.records, vec![record_for(5, 9, 0)]);
    // A second resume of the same (now older) recovery would not be allowed to
    // look current: the old log is sealed.
    let mut b = torn.bytes();
    b[20] ^= 1;
    assert_eq!(
        recover(&MemStorage::from_bytes(b, 0)).unwrap_err(),
        JournalError::Superseded { epoch: 2 }
    );
}

#[test]
fn continue_in_place_cuts_the_torn_tail_and_goes_on_in_the_same_epoch() {
    let (s, recs) = journal_with(5);
    let r = recover(&s).unwrap();
    let LogEnd::Clean { offset } = r.end else {
        panic!()
    };
    // Tear the last record: drop its commit word.
    let mut b = s.bytes();
    let last = offset as usize - (24 + 32);
    b[last + 16..last + 24].fill(0);
    let torn = MemStorage::from_bytes(b, SCRIPT_MAX_LEN);
    let r = recover(&torn).unwrap();
    assert_eq!(r.records, recs[..4]);
    assert!(matches!(r.end, LogEnd::Cut { .. }));
    let j = Journal::continue_in_place(torn.clone(), &r, SCRIPT_OPTIONS).unwrap();
    assert_eq!((j.epoch(), j.next_seq()), (1, 5));
    // Cut: the torn header is gone, so a crash now ends the log cleanly there.
    let cut = recover(&torn).unwrap();
    assert_eq!(cut.records, recs[..4]);
    assert_eq!(
        cut.end,
        LogEnd::Clean {
            offset: last as u64
        }
    );
    // A shorter record where the torn one was, then more: the same epoch, the
    // same checkpoint, every record in order, the torn bytes never read.
    let more: Vec<Record> = (5..=8)
        .map(|seq| record_for(seq, 40 + seq as u8, 3))
        .collect();
    for rec in &more {
        j.append(rec).unwrap();
    }
    let again = recover(&torn).unwrap();
    assert_eq!((again.epoch, again.checkpoint.as_slice()), (1, CK));
    let mut want = recs[..4].to_vec();
    want.extend(more.iter().cloned());
    assert_eq!(again.records, want);
    assert!(matches!(again.end, LogEnd::Clean { .. }));
    // And again after a second crash: continued in place, compacted later.
    let j = Journal::continue_in_place(torn.clone(), &again, SCRIPT_OPTIONS).unwrap();
    j.append(&record_for(9, 1, 0)).unwrap();
    let m = j.mark();
    j.compact(m, b"compacted").unwrap();
    j.append(&record_for(10, 2, 0)).unwrap();
    let last = recover(&torn).unwrap();
    assert_eq!(
        (last.epoch, last.checkpoint.as_slice()),
        (2, &b"compacted"[..])
    );
    assert_eq!(last.records, vec![record_for(10, 2, 0)]);
}

#[test]
fn continue_in_place_of_a_clean_end_at_the_end_of_the_file_grows_it() {
    let (s, recs) = journal_with(3);
    let r = recover(&s).unwrap();
    let LogEnd::Clean { offset } = r.end else {
        panic!()
    };
    // The file ends right after the last record: no room for the cut's zeros.
    let short = MemStorage::from_bytes(s.bytes()[..offset as usize].to_vec(), SCRIPT_MAX_LEN);
    let r = recover(&short).unwrap();
    assert_eq!(r.records, recs);
    let j = Journal::continue_in_place(short.clone(), &r, SCRIPT_OPTIONS).unwrap();
    j.append(&record_for(4, 4, 4)).unwrap();
    assert_eq!(recover(&short).unwrap().records.len(), 4);
}

#[test]
fn create_refuses_a_non_empty_storage() {
    let (s, _) = journal_with(1);
    assert!(matches!(
        Journal::create(s, CK, SCRIPT_OPTIONS),
        Err(JournalError::NotEmpty { .. })
    ));
}

/// Records appended by `threads` threads, `per` each: thread `t`'s `i`-th record
/// is a Lookup with nodeid `t` and generation `i`.
fn hammer<S: Storage>(j: &Journal<S>, threads: u64, per: u64) {
    thread::scope(|sc| {
        for t in 0..threads {
            sc.spawn(move || {
                for i in 0..per {
                    let node = vec![t as u8; (i % 50) as usize];
                    j.append(&Record::Lookup {
                        nodeid: t,
                        generation: i,
                        delta: 1,
                        node: &node[..],
                    })
                    .unwrap();
                }
            });
        }
    });
}

/// Each thread's records appear in its order, all of them.
fn check_hammered(records: &[Record], threads: u64, per: u64, from: &[u64]) {
    let mut next = from.to_vec();
    for r in records {
        let Record::Lookup {
            nodeid, generation, ..
        } = r
        else {
            panic!("{r:?}")
        };
        assert_eq!(*generation, next[*nodeid as usize], "thread {nodeid}");
        next[*nodeid as usize] += 1;
    }
    assert!(next.iter().all(|&n| n == per), "{next:?}");
    assert_eq!(next.len() as u64, threads);
}

#[test]
fn concurrent_appenders_on_a_memfd() {
    let map = JournalMap::memfd("journal-test", 64 << 20).unwrap();
    let j = Journal::create(map, CK, JournalOptions::default()).unwrap();
    hammer(&j, 4, 3000);
    let r = recover(j.storage()).unwrap();
    assert_eq!(r.next_seq, 12_001);
    check_hammered(&r.records, 4, 3000, &[0; 4]);
    // Another mapping of the same descriptor, as the next process would open it.
    let fd = j.storage().fd().try_clone_to_owned().unwrap();
    drop(j);
    let again = JournalMap::from_fd(fd, 64 << 20).unwrap();
    assert_eq!(recover(&again).unwrap(), r);
}

#[test]
fn compaction_under_concurrent_appends() {
    let map = JournalMap::memfd("journal-test", 64 << 20).unwrap();
    let opts = JournalOptions {
        compact_headroom: 16 << 10,
        ..JournalOptions::default()
    };
    let j = Journal::create(map, &0u64.to_le_bytes(), opts).unwrap();
    let stop = AtomicBool::new(false);
    let compactions = thread::scope(|sc| {
        let compactor = sc.spawn(|| {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                // The checkpoint says which records it holds: those before the
                // mark (a real one would be the state at the mark).
                let m = j.mark();
                let mut ck = (m.seq - 1).to_le_bytes().to_vec();
                ck.resize(8 + (n % 7) * 10_000, 0xcc);
                j.compact(m, &ck).unwrap();
                n += 1;
                thread::yield_now();
            }
            n
        });
        hammer(&j, 3, 4000);
        stop.store(true, Ordering::Relaxed);
        compactor.join().unwrap()
    });
    assert!(compactions > 0);
    let r = recover(j.storage()).unwrap();
    assert_eq!(r.next_seq, 12_001);
    let covered = u64::from_le_bytes(r.checkpoint[..8].try_into().unwrap());
    assert_eq!(covered + 1, r.first_seq);
    // The records before the checkpoint are gone; those after are complete per
    // thread from wherever each thread was at the mark.
    let mut from = vec![u64::MAX; 3];
    for rec in &r.records {
        if let Record::Lookup {
            nodeid, generation, ..
        } = rec
        {
            let f = &mut from[*nodeid as usize];
            *f = (*f).min(*generation);
        }
    }
    for f in &mut from {
        if *f == u64::MAX {
            *f = 4000;
        }
    }
    check_hammered(&r.records, 3, 4000, &from);
    assert_eq!(r.epoch, compactions as u64 + 1);
}

/// The child process of `kill_9_mid_append_recovers_a_consistent_prefix`: opens
/// the memfd its parent passed (`JOURNAL_KILL_FD`), starts a journal in it, and
/// appends from three threads and compacts from a fourth until it is killed.
#[test]
#[ignore = "the child of kill_9_mid_append_recovers_a_consistent_prefix"]
fn kill_9_child_writer() {
    let Ok(fd) = std::env::var("JOURNAL_KILL_FD") else {
        return;
    };
    // Never outlive the test that started this process (its thread, precisely).
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).unwrap();
    let parent: i32 = std::env::var("JOURNAL_KILL_PARENT")
        .unwrap()
        .parse()
        .unwrap();
    if nix::unistd::getppid().as_raw() != parent {
        return;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/self/fd/{fd}"))
        .unwrap();
    let map = JournalMap::from_fd(file.into(), 256 << 20).unwrap();
    let opts = JournalOptions {
        compact_headroom: 64 << 10,
        ..JournalOptions::default()
    };
    let j = Journal::create(map, &0u64.to_le_bytes(), opts).unwrap();
    thread::scope(|sc| {
        sc.spawn(|| loop {
            let m = j.mark();
            let mut ck = (m.seq - 1).to_le_bytes().to_vec();
            ck.resize(50_000, 0xcc);
            // Full would only mean the log outgrew the file: not expected.
            j.compact(m, &ck).unwrap();
            thread::sleep(std::time::Duration::from_millis(1));
        });
        for t in 0..3u64 {
            let j = &j;
            sc.spawn(move || {
                for i in 0.. {
                    let node = vec![t as u8; (i % 64) as usize];
                    j.append(&Record::Lookup {
                        nodeid: t,
                        generation: i,
                        delta: 1,
                        node: &node[..],
                    })
                    .unwrap();
                }
            });
        }
    });
}

/// A child process killed and reaped when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn kill_9_mid_append_recovers_a_consistent_prefix() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use std::os::fd::AsRawFd;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    for (round, target) in [3_000u64, 20_000, 60_000].into_iter().enumerate() {
        let map = JournalMap::memfd("journal-kill-test", 256 << 20).unwrap();
        // A descriptor without close-on-exec for the child (dup clears it); the
        // parent keeps its own, as the fd store would.
        let inherit = nix::unistd::dup(map.fd()).unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "kill_9_child_writer",
                "--ignored",
                "--test-threads=1",
            ])
            .env("JOURNAL_KILL_FD", inherit.as_raw_fd().to_string())
            .env("JOURNAL_KILL_PARENT", std::process::id().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Killed and reaped however this test ends (a failed assertion included).
        let mut child = KillOnDrop(child);
        let child = &mut child.0;
        drop(inherit);
        // Wait for progress (bounded, so a broken child cannot hang the test).
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            // A fresh mapping sees the length the child grew the file to.
            let view = JournalMap::from_fd(map.fd().try_clone_to_owned().unwrap(), 256 << 20);
            if let Ok(view) = view {
                if let Ok(r) = recover(&view) {
                    if r.next_seq > target {
                        break;
                    }
                }
            }
            if child.try_wait().unwrap().is_some() {
                let mut err = String::new();
                use std::io::Read;
                let _ = child.stdout.take().unwrap().read_to_string(&mut err);
                panic!("the child writer exited early: {err}");
            }
            assert!(Instant::now() < deadline, "round {round}: no progress");
            thread::sleep(Duration::from_millis(2));
        }
        kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
        child.wait().unwrap();

        // The memfd outlived its writer: recover what it left.
        let map = JournalMap::from_fd(map.fd().try_clone_to_owned().unwrap(), 256 << 20).unwrap();
        let r = recover(&map).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(r.next_seq > target, "round {round}: {}", r.next_seq);
        let covered = u64::from_le_bytes(r.checkpoint[..8].try_into().unwrap());
        assert_eq!(covered + 1, r.first_seq, "round {round}");
        // Each thread's records are consecutive from wherever it was at the mark.
        let mut next: [Option<u64>; 3] = [None; 3];
        for rec in &r.records {
            let Record::Lookup {
                nodeid,
                generation,
                node,
                ..
            } = rec
            else {
                panic!("round {round}: {rec:?}")
            };
            let n = &mut next[*nodeid as usize];
            if let Some(expected) = *n {
                assert_eq!(*generation, expected, "round {round}, thread {nodeid}");
            }
            assert_eq!(node, &vec![*nodeid as u8; (*generation % 64) as usize]);
            *n = Some(generation + 1);
        }
        eprintln!(
            "round {round}: killed at record {}, epoch {}, {} records after the checkpoint, {}",
            r.next_seq,
            r.epoch,
            r.records.len(),
            r.end
        );
    }
}

#[test]
fn a_journal_at_a_path_survives_its_writer() {
    let dir = std::env::temp_dir().join(format!("fuse-live-journal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("journal");
    let _ = std::fs::remove_file(&path);
    {
        let map = JournalMap::open_path(&path, 1 << 20).unwrap();
        let j = Journal::create(map, CK, SCRIPT_OPTIONS).unwrap();
        for seq in 1..=10 {
            j.append(&record_for(seq, seq as u8, 30)).unwrap();
        }
        // Too large a file for the maximum is refused with a clear error.
        let e = JournalMap::open_path(&path, 100).unwrap_err();
        assert!(e.to_string().contains("maximum"), "{e}");
    }
    let map = JournalMap::open_path(&path, 1 << 20).unwrap();
    let r = recover(&map).unwrap();
    let expected: Vec<Record> = (1..=10).map(|seq| record_for(seq, seq as u8, 30)).collect();
    assert_eq!(r.records, expected);
    assert_eq!(r.checkpoint, CK);
    std::fs::remove_dir_all(&dir).unwrap();
}
