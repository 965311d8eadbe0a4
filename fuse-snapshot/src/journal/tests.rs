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
