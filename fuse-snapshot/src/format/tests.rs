//! The fast path ([`super::fast`]) against the serde types ([`super::v1`]) that
//! define version 1: same bytes out, same inputs accepted, same values back.
use fuse_session::{
    Counters, HandleKind, HandleState, InitResult, InitState, KernelOffer, NodeState, SessionState,
};
use proptest::prelude::*;

use super::*;

type State = SessionState<(u32, String), Vec<u16>>;

prop_compose! {
    /// Any state, valid or not: the two paths must agree on all of them.
    fn arb_state()(
        offer in any::<(u32, u32, u32, u64)>(),
        result in any::<(u32, u64, u32, u16, u32, u16, u16, u32, u32, u16)>(),
        nodes in proptest::collection::vec((any::<(u64, u64, u64, u32)>(), ".{0,3}"), 0..20),
        handles in proptest::collection::vec(
            (any::<(u64, bool, u64, u32)>(), proptest::collection::vec(any::<u16>(), 0..80)),
            0..10,
        ),
        polls in proptest::collection::vec(any::<u64>(), 0..4),
        only_uid in proptest::option::of(any::<u32>()),
        c in any::<[u64; 9]>(),
    ) -> State {
        SessionState {
            init: InitState {
                offer: KernelOffer { major: offer.0, minor: offer.1, max_readahead: offer.2, flags: offer.3 },
                result: InitResult {
                    minor: result.0, flags: result.1, max_write: result.2, max_pages: result.3,
                    max_readahead: result.4, max_background: result.5,
                    congestion_threshold: result.6, time_gran: result.7,
                    max_stack_depth: result.8, request_timeout: result.9,
                },
            },
            nodes: nodes.into_iter().map(|((nodeid, generation, lookups, a), b)| NodeState {
                nodeid, generation, lookups, node: (a, b),
            }).collect(),
            handles: handles.into_iter().map(|((fh, dir, nodeid, flags), handle)| HandleState {
                fh, kind: if dir { HandleKind::Dir } else { HandleKind::File }, nodeid, flags, handle,
            }).collect(),
            polls,
            only_uid,
            counters: Counters {
                next_nodeid: c[0], next_generation: c[1], next_fh: c[2], next_notify_unique: c[3],
                requests: c[4], errors: c[5], interrupts: c[6], forgets: c[7], malformed: c[8],
            },
        }
    }
}

fn reseal(mut bytes: Vec<u8>) -> Vec<u8> {
    let len = (bytes.len() - HEADER_LEN) as u64;
    bytes[12..20].copy_from_slice(&len.to_le_bytes());
    let crc = crc32(&bytes[HEADER_LEN..]);
    bytes[20..24].copy_from_slice(&crc.to_le_bytes());
    bytes
}

type Typed = Result<(State, Vec<String>), FormatError>;

fn via_serde(bytes: &[u8]) -> Typed {
    typed(decode_raw(bytes)?)
}

fn via_fast(bytes: &[u8]) -> Typed {
    decode_unvalidated(bytes)
}

proptest! {
    #[test]
    fn same_bytes_and_values(s in arb_state(), fs in proptest::collection::vec(".{0,40}", 0..6)) {
        let fast = encode_state(&s, &fs).unwrap();
        let reference = encode_state_via_serde(&s, &fs).unwrap();
        prop_assert_eq!(&fast, &reference);
        let want = (s, fs);
        prop_assert_eq!(via_fast(&fast).unwrap(), want.clone());
        prop_assert_eq!(via_serde(&fast).unwrap(), want);
    }

    #[test]
    fn same_inputs_accepted(
        s in arb_state(),
        edits in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 0..6),
        cut in proptest::option::of(any::<proptest::sample::Index>()),
        extra in proptest::collection::vec(any::<u8>(), 0..3),
    ) {
        let mut bytes = encode_state(&s, &vec!["x".to_string()]).unwrap();
        let body = bytes.len() - HEADER_LEN;
        for (at, v) in edits {
            bytes[HEADER_LEN + at.index(body)] = v;
        }
        if let Some(cut) = cut {
            bytes.truncate(HEADER_LEN + cut.index(body));
        }
        bytes.extend_from_slice(&extra);
        let bytes = reseal(bytes);
        let (a, b) = (via_fast(&bytes), via_serde(&bytes));
        match (&a, &b) {
            (Ok(x), Ok(y)) => prop_assert_eq!(x, y),
            (Err(_), Err(_)) => {}
            _ => prop_assert!(false, "fast {:?} vs serde {:?}", a, b),
        }
    }
}

#[test]
fn long_values_get_a_wide_length() {
    // Blobs of 127, 128 and 20000 bytes: the length prefix grows in place.
    for n in [0usize, 63, 64, 127, 128, 10_000] {
        let mut s: State = SessionState {
            init: InitState {
                offer: KernelOffer {
                    major: 7,
                    minor: 45,
                    max_readahead: 0,
                    flags: 0,
                },
                result: InitResult {
                    minor: 45,
                    flags: 0,
                    max_write: 4096,
                    max_pages: 0,
                    max_readahead: 0,
                    max_background: 0,
                    congestion_threshold: 0,
                    time_gran: 0,
                    max_stack_depth: 0,
                    request_timeout: 0,
                },
            },
            nodes: vec![],
            handles: vec![],
            polls: vec![],
            only_uid: Some(3),
            counters: Counters::default(),
        };
        s.nodes.push(NodeState {
            nodeid: 1,
            generation: 0,
            lookups: 0,
            node: (1, "a".repeat(n)),
        });
        s.handles.push(HandleState {
            fh: 1,
            kind: HandleKind::Dir,
            nodeid: 1,
            flags: 0,
            handle: vec![7; n],
        });
        let fs = vec!["b".repeat(n)];
        let fast = encode_state(&s, &fs).unwrap();
        assert_eq!(fast, encode_state_via_serde(&s, &fs).unwrap(), "n = {n}");
        assert_eq!(via_fast(&fast).unwrap(), (s, fs));
    }
}
