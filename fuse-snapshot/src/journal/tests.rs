//! Unit tests of the layout; the behaviour is tested in `tests/journal.rs`.
use super::layout::{Meta, RecordHeader, Slot};

#[test]
fn meta_round_trips_and_any_flip_is_caught() {
    let m = Meta {
        epoch: 3,
        area: 8192,
        checkpoint_len: 100,
        first_seq: 7,
        checkpoint_crc: 0xdead_beef,
    };
    let b = m.encode();
    assert_eq!(Meta::decode(&b), Slot::Valid(m));
    for bit in 0..64 * 8 {
        let mut c = b;
        c[bit / 8] ^= 1 << (bit % 8);
        assert!(!matches!(Meta::decode(&c), Slot::Valid(_)), "bit {bit}");
    }
}

#[test]
fn record_header_is_salted_with_the_epoch() {
    let h = RecordHeader {
        len: 5,
        kind: 2,
        seq: 9,
        payload_crc: 1,
    };
    let b = h.encode(4);
    assert_eq!(RecordHeader::decode(&b, 4), Some(h));
    assert_eq!(RecordHeader::decode(&b, 5), None);
    assert_eq!(RecordHeader::decode(&[0; 24], 4), None);
}

#[test]
fn scan_finds_the_end_recover_finds() {
    use super::{recover, replay::scan, Journal, JournalOptions, MemStorage, Record};
    let s = MemStorage::new(1 << 20);
    let j = Journal::create(s.clone(), b"checkpoint", JournalOptions::default()).unwrap();
    for i in 0..20u64 {
        j.append(&Record::Accepted {
            unique: i,
            nodeid: 1,
            opcode: 16,
            request: vec![i as u8; (i as usize * 7) % 50],
        })
        .unwrap();
    }
    let full = recover(&s).unwrap();
    let quick = scan(&s).unwrap();
    assert_eq!(full.records.len(), 20);
    assert!(quick.records.is_empty());
    assert_eq!(
        (
            quick.epoch,
            quick.first_seq,
            quick.next_seq,
            quick.area,
            quick.end_offset
        ),
        (
            full.epoch,
            full.first_seq,
            full.next_seq,
            full.area,
            full.end_offset
        )
    );
    assert_eq!(quick.end, full.end);
}

/// A record appended with its bytes' checksum given (derived from a body's own
/// checksum, as the session does for large payloads) is byte for byte the record
/// `append` writes, for a kind with a fixed part and one without.
#[test]
fn append_with_a_given_crc_writes_the_same_record() {
    use super::{Journal, JournalOptions, MemStorage, Record};
    use crate::format::crc::{crc32, crc32_combine};
    let body: Vec<u8> = (0..70_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let mut payload = crc32(&body).to_le_bytes().to_vec();
    payload.extend_from_slice(&body);
    let given = crc32_combine(crc32(&payload[..4]), crc32(&body), body.len() as u64);
    let (a, b) = (MemStorage::new(1 << 20), MemStorage::new(1 << 20));
    let ja = Journal::create(a.clone(), b"checkpoint", JournalOptions::default()).unwrap();
    let jb = Journal::create(b.clone(), b"checkpoint", JournalOptions::default()).unwrap();
    for _ in 0..2 {
        ja.append(&Record::Delta(&payload[..])).unwrap();
        jb.append_with_crc(&Record::Delta(&payload[..]), given)
            .unwrap();
        let node = Record::Lookup {
            nodeid: 5,
            generation: 1,
            delta: 2,
            node: &payload[..],
        };
        ja.append(&node).unwrap();
        jb.append_with_crc(&node, given).unwrap();
    }
    assert_eq!(a.bytes(), b.bytes());
    assert_eq!(super::recover(&b).unwrap().records.len(), 4);
}
