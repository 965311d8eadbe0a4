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
