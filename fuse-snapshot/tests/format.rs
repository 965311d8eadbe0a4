//! The snapshot format against good and bad input: round trips, and every kind of
//! damage giving its own error, never a panic.
mod util;

use fuse_snapshot::format::{crc32, HEADER_LEN, MAGIC};
use fuse_snapshot::session::{
    Counters, HandleKind, HandleState, InitResult, InitState, KernelOffer, NodeState, SessionState,
    StateError,
};
use fuse_snapshot::{
    decode_raw, decode_state, encode_raw, encode_state, summarize, FdSlot, FormatError,
    FORMAT_VERSION,
};
use proptest::prelude::*;
use util::{fs_state, session, FsState, Handle, State};

type Decoded = Result<(State, FsState), FormatError>;

fn decode(bytes: &[u8]) -> Decoded {
    decode_state(bytes)
}

fn small() -> Vec<u8> {
    encode_state(&session(30), &fs_state()).unwrap()
}

/// Rewrites the header's length and checksum to match the (edited) body.
fn reseal(mut bytes: Vec<u8>) -> Vec<u8> {
    let body_len = (bytes.len() - HEADER_LEN) as u64;
    bytes[12..20].copy_from_slice(&body_len.to_le_bytes());
    let crc = crc32(&bytes[HEADER_LEN..]);
    bytes[20..24].copy_from_slice(&crc.to_le_bytes());
    bytes
}

#[test]
fn round_trip_and_deterministic() {
    let s = session(30);
    let bytes = encode_state(&s, &fs_state()).unwrap();
    assert_eq!(&bytes[..8], &MAGIC);
    assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), FORMAT_VERSION);
    let (back, fs) = decode(&bytes).unwrap();
    assert_eq!(back, s);
    assert_eq!(fs, fs_state());
    assert_eq!(encode_state(&back, &fs).unwrap(), bytes);
    // The untyped path gives the same bytes back too.
    assert_eq!(encode_raw(&decode_raw(&bytes).unwrap()).unwrap(), bytes);
}

#[test]
fn summary_counts_without_types() {
    let bytes = small();
    let sum = summarize(&bytes).unwrap();
    let s = session(30);
    assert_eq!(sum.format_version, 1);
    assert_eq!(sum.total_bytes, bytes.len() as u64);
    assert_eq!(sum.nodes, 30);
    assert_eq!(sum.file_handles + sum.dir_handles, s.handles.len() as u64);
    assert_eq!(
        sum.dir_handles,
        s.handles
            .iter()
            .filter(|h| h.kind == HandleKind::Dir)
            .count() as u64
    );
    assert_eq!(sum.counters, s.counters);
    assert_eq!(sum.init, s.init);
    assert_eq!(
        sum.fs_state_bytes,
        postcard::to_allocvec(&fs_state()).unwrap().len() as u64
    );
    assert!(sum.bytes_per_nodeid() > 0.0);
}

#[test]
fn truncated_at_every_length() {
    let bytes = small();
    for len in 0..bytes.len() {
        let err = decode(&bytes[..len]).unwrap_err();
        let want = if len < HEADER_LEN {
            FormatError::TooShort { len }
        } else {
            FormatError::Truncated {
                expected: (bytes.len() - HEADER_LEN) as u64,
                found: (len - HEADER_LEN) as u64,
            }
        };
        assert_eq!(err, want, "length {len}");
        assert_eq!(summarize(&bytes[..len]).unwrap_err(), want);
    }
}

#[test]
fn every_header_bit_flip_is_caught_by_its_field() {
    let bytes = small();
    let body_len = (bytes.len() - HEADER_LEN) as u64;
    for bit in 0..HEADER_LEN * 8 {
        let mut b = bytes.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        let err = decode(&b).unwrap_err();
        let ok = match bit / 8 {
            0..=7 => err == FormatError::BadMagic,
            8..=9 => {
                matches!(err, FormatError::UnsupportedVersion { found, newest: 1 } if found != 1)
            }
            10..=11 => matches!(err, FormatError::UnknownFlags(f) if f != 0),
            12..=19 => match err {
                FormatError::Truncated { expected, found } => found == body_len && expected > found,
                FormatError::TrailingBytes { expected, found } => {
                    found == body_len && expected < found
                }
                _ => false,
            },
            _ => {
                matches!(err, FormatError::ChecksumMismatch { stored, computed } if stored != computed)
            }
        };
        assert!(ok, "bit {bit}: {err:?}");
    }
}

#[test]
fn every_body_bit_flip_is_a_checksum_mismatch() {
    // CRC-32 detects every single-bit error; the body of this snapshot is small
    // enough to try them all.
    let bytes = small();
    for bit in HEADER_LEN * 8..bytes.len() * 8 {
        let mut b = bytes.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        assert!(
            matches!(decode(&b), Err(FormatError::ChecksumMismatch { .. })),
            "bit {bit}"
        );
    }
}

#[test]
fn wrong_magic() {
    let mut b = small();
    b[..8].copy_from_slice(b"NOTASNAP");
    assert_eq!(decode(&b).unwrap_err(), FormatError::BadMagic);
    // Even a short file that is clearly something else.
    assert_eq!(decode(b"{\"json\"").unwrap_err(), FormatError::BadMagic);
    assert_eq!(decode(b"").unwrap_err(), FormatError::TooShort { len: 0 });
    assert_eq!(
        decode(b"FUSE").unwrap_err(),
        FormatError::TooShort { len: 4 }
    );
}

#[test]
fn future_and_zero_versions_are_refused() {
    let mut b = small();
    b[8..10].copy_from_slice(&2u16.to_le_bytes());
    let err = decode(&b).unwrap_err();
    assert_eq!(
        err,
        FormatError::UnsupportedVersion {
            found: 2,
            newest: 1
        }
    );
    assert!(err.to_string().contains("newer"), "{err}");
    assert!(err.to_string().contains("upgrade"), "{err}");
    b[8..10].copy_from_slice(&0u16.to_le_bytes());
    let err = decode(&b).unwrap_err();
    assert_eq!(
        err,
        FormatError::UnsupportedVersion {
            found: 0,
            newest: 1
        }
    );
    assert!(err.to_string().contains("never written"), "{err}");
}

#[test]
fn unknown_flags_are_refused() {
    let mut b = small();
    b[10] = 1;
    assert_eq!(decode(&b).unwrap_err(), FormatError::UnknownFlags(1));
}

#[test]
fn body_length_must_match_exactly() {
    let b = small();
    let body = (b.len() - HEADER_LEN) as u64;
    let mut longer = b.clone();
    longer.push(0);
    assert_eq!(
        decode(&longer).unwrap_err(),
        FormatError::TrailingBytes {
            expected: body,
            found: body + 1
        }
    );
    let mut lying = b.clone();
    lying[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(
        decode(&lying).unwrap_err(),
        FormatError::Truncated {
            expected: u64::MAX,
            found: body
        }
    );
}

#[test]
fn checksum_mismatch() {
    let mut b = small();
    let stored = u32::from_le_bytes([b[20], b[21], b[22], b[23]]);
    b[20..24].copy_from_slice(&(stored ^ 0xdead_beef).to_le_bytes());
    assert_eq!(
        decode(&b).unwrap_err(),
        FormatError::ChecksumMismatch {
            stored: stored ^ 0xdead_beef,
            computed: stored
        }
    );
}

#[test]
fn checksummed_but_malformed_bodies() {
    let b = small();
    // An unknown body variant (what a V2 body would look like) under a V1 header.
    let mut v2 = b.clone();
    v2[HEADER_LEN] = 1;
    assert!(matches!(
        decode(&reseal(v2)).unwrap_err(),
        FormatError::BadBody(_)
    ));
    // Extra bytes after the body, counted in the length and the checksum.
    let mut extra = b.clone();
    extra.push(0);
    let err = decode(&reseal(extra)).unwrap_err();
    assert!(
        matches!(&err, FormatError::BadBody(m) if m.contains("left over")),
        "{err:?}"
    );
    // The body cut short, with a matching length and checksum.
    let mut cut = b.clone();
    cut.truncate(b.len() - 3);
    assert!(matches!(
        decode(&reseal(cut)).unwrap_err(),
        FormatError::BadBody(_)
    ));
}

/// A state whose varints are all one byte, so the offsets of the body are known.
fn tiny_state() -> SessionState<u64, u64> {
    SessionState {
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
                max_write: 0,
                max_pages: 0,
                max_readahead: 0,
                max_background: 0,
                congestion_threshold: 0,
                time_gran: 0,
                max_stack_depth: 0,
                request_timeout: 0,
            },
        },
        nodes: vec![NodeState {
            nodeid: 1,
            generation: 0,
            lookups: 0,
            node: 5,
        }],
        handles: vec![],
        polls: vec![],
        only_uid: None,
        counters: Counters::default(),
    }
}

#[test]
fn huge_lengths_are_errors_not_allocations() {
    let b = encode_state(&tiny_state(), &()).unwrap();
    // Body: variant(1) offer(4) result(10), then the node count at offset 15.
    let at = HEADER_LEN + 15;
    assert_eq!(b[at], 1, "node count");
    let huge = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]; // 2^56
    for (what, at) in [("node count", at), ("node blob length", at + 4)] {
        let mut edited = b[..at].to_vec();
        edited.extend_from_slice(&huge);
        edited.extend_from_slice(&b[at + 1..]);
        let err = decode_state::<u64, u64, ()>(&reseal(edited)).unwrap_err();
        // The decoder reads entries until the input runs out (whichever entry that
        // is, its error says so); it never reserves room for 2^56 of them.
        assert!(
            matches!(err, FormatError::BadBody(_) | FormatError::BadNode { .. }),
            "{what}: {err:?}"
        );
    }
}

#[test]
fn values_of_another_type_are_refused() {
    let s = session(30);
    let bytes = encode_state(&s, &fs_state()).unwrap();
    // Node values of a longer type: (u64, u64) nodes read as u64 leave bytes over.
    let pairs: SessionState<(u64, u64), Handle> = SessionState {
        init: s.init,
        nodes: s
            .nodes
            .iter()
            .map(|n| NodeState {
                nodeid: n.nodeid,
                generation: n.generation,
                lookups: n.lookups,
                node: (n.node, 7),
            })
            .collect(),
        handles: s.handles.clone(),
        polls: vec![],
        only_uid: None,
        counters: s.counters,
    };
    let err = decode(&encode_state(&pairs, &fs_state()).unwrap()).unwrap_err();
    assert!(
        matches!(&err, FormatError::BadNode { nodeid: 1, detail } if detail.contains("left over")),
        "{err:?}"
    );
    // Handles that are not `Handle`s.
    let err = decode_state::<u64, bool, FsState>(&bytes).unwrap_err();
    assert!(
        matches!(err, FormatError::BadHandle { fh: 1, .. }),
        "{err:?}"
    );
    // A filesystem state of another type.
    let err = decode_state::<u64, Handle, Vec<String>>(&bytes).unwrap_err();
    assert!(matches!(err, FormatError::BadFsState(_)), "{err:?}");
    assert!(err.to_string().contains("another filesystem"), "{err}");
}

#[test]
fn inconsistent_but_checksummed_states_are_refused() {
    let good = session(30);
    let refuse = |f: &dyn Fn(&mut State)| {
        let mut s = good.clone();
        f(&mut s);
        let bytes = encode_state(&s, &fs_state()).unwrap();
        // The envelope and the structure are fine: only validation refuses it.
        assert!(summarize(&bytes).is_ok());
        match decode(&bytes).unwrap_err() {
            FormatError::State(e) => e,
            other => panic!("expected a state error, got {other:?}"),
        }
    };
    let missing = 3; // a gap in the nodeids
    assert!(good.nodes.iter().all(|n| n.nodeid != missing));
    assert_eq!(
        refuse(&|s| s.handles[1].nodeid = missing),
        StateError::HandleOnMissingNode {
            fh: good.handles[1].fh,
            nodeid: missing
        }
    );
    assert!(matches!(
        refuse(&|s| {
            s.nodes.remove(0);
        }),
        StateError::BadRoot(_)
    ));
    assert_eq!(
        refuse(&|s| s.nodes.swap(3, 4)),
        StateError::NodeidsNotSorted(good.nodes[3].nodeid)
    );
    assert_eq!(
        refuse(&|s| s.nodes[5].lookups = 0),
        StateError::ZeroLookups(good.nodes[5].nodeid)
    );
    assert_eq!(
        refuse(&|s| s.nodes[6].node = s.nodes[2].node),
        StateError::DuplicateNode(good.nodes[6].nodeid)
    );
    assert_eq!(
        refuse(&|s| s.counters.next_nodeid = 2),
        StateError::BadCounter("next_nodeid")
    );
    assert_eq!(refuse(&|s| s.handles[0].fh = 0), StateError::BadFh(0));
    assert!(matches!(
        refuse(&|s| s.init.result.minor = 99),
        StateError::UnsupportedMinor(99)
    ));
    let err = FormatError::State(StateError::BadFh(0));
    assert!(err.to_string().contains("refused"), "{err}");
}

#[test]
fn every_error_explains_itself() {
    let errs = [
        FormatError::TooShort { len: 3 },
        FormatError::BadMagic,
        FormatError::UnknownFlags(4),
        FormatError::Truncated {
            expected: 9,
            found: 3,
        },
        FormatError::TrailingBytes {
            expected: 3,
            found: 9,
        },
        FormatError::ChecksumMismatch {
            stored: 1,
            computed: 2,
        },
        FormatError::VersionMismatch { header: 1, body: 2 },
        FormatError::BadBody("x".into()),
        FormatError::NotInitialized,
    ];
    for e in errs {
        let s = e.to_string();
        assert!(s.len() > 30 && !s.contains('{'), "{s}");
    }
}

fn arb_init() -> impl Strategy<Value = InitState> {
    (
        12u32..=45,
        any::<u64>(),
        any::<u64>(),
        4096u32..=(1 << 30),
        any::<(u16, u32, u16, u16, u32, u32, u16)>(),
    )
        .prop_map(
            |(minor, offered, mask, max_write, (pages, ra, bg, ct, tg, depth, to))| InitState {
                offer: KernelOffer {
                    major: 7,
                    minor,
                    max_readahead: ra,
                    flags: offered,
                },
                result: InitResult {
                    minor,
                    flags: offered & mask,
                    max_write,
                    max_pages: pages,
                    max_readahead: ra,
                    max_background: bg,
                    congestion_threshold: ct,
                    time_gran: tg,
                    max_stack_depth: depth,
                    request_timeout: to,
                },
            },
        )
}

fn arb_handle() -> impl Strategy<Value = Handle> {
    (
        proptest::option::of(any::<u32>()),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(slot, pos, append)| Handle {
            backing: slot.map(FdSlot),
            pos,
            append,
        })
}

prop_compose! {
    fn arb_session()(
        init in arb_init(),
        values in proptest::collection::btree_set(2u64.., 0..80),
        gaps in proptest::collection::vec((1u64..1 << 40, any::<u64>(), 1u64..), 80),
        raw_handles in proptest::collection::vec(
            (any::<proptest::sample::Index>(), 1u64..1 << 20, any::<bool>(), any::<u32>(), arb_handle()),
            0..40,
        ),
        polls in proptest::collection::btree_set(any::<u64>(), 0..5),
        only_uid in proptest::option::of(any::<u32>()),
        extra in (0u64..1 << 50, 0u64..1 << 50),
        stats in any::<(u64, u64, u64, u64, u64, u64)>(),
    ) -> State {
        let mut nodes = vec![NodeState { nodeid: 1, generation: gaps[0].1, lookups: 0, node: 1 }];
        let mut nodeid = 1u64;
        for (value, (gap, generation, lookups)) in values.into_iter().zip(&gaps) {
            nodeid += gap;
            nodes.push(NodeState { nodeid, generation: *generation, lookups: *lookups, node: value });
        }
        let mut fh = 0u64;
        let handles: Vec<_> = raw_handles
            .into_iter()
            .map(|(at, gap, dir, flags, handle)| {
                fh += gap;
                HandleState {
                    fh,
                    kind: if dir { HandleKind::Dir } else { HandleKind::File },
                    nodeid: nodes[at.index(nodes.len())].nodeid,
                    flags,
                    handle,
                }
            })
            .collect();
        SessionState {
            init,
            counters: Counters {
                next_nodeid: nodeid + 1 + extra.0,
                next_generation: stats.0,
                next_fh: fh + 1 + extra.1,
                next_notify_unique: stats.1,
                requests: stats.2,
                errors: stats.3,
                interrupts: stats.4,
                forgets: stats.5,
                malformed: stats.0 ^ stats.1,
            },
            nodes,
            handles,
            polls: polls.into_iter().collect(),
            only_uid,
        }
    }
}

fn arb_fs_state() -> impl Strategy<Value = FsState> {
    (
        ".{0,20}",
        proptest::collection::vec((any::<u64>(), ".{0,8}"), 0..10),
        proptest::option::of(any::<u32>()),
    )
        .prop_map(|(label, inodes, fd)| FsState {
            label,
            inodes,
            root_fd: fd.map(FdSlot),
        })
}

proptest! {
    #[test]
    fn prop_round_trip(s in arb_session(), fs in arb_fs_state()) {
        prop_assert_eq!(s.validate(), Ok(()), "the generator makes valid states");
        let bytes = encode_state(&s, &fs).unwrap();
        let sum = summarize(&bytes).unwrap();
        prop_assert_eq!(sum.nodes, s.nodes.len() as u64);
        prop_assert_eq!(sum.file_handles + sum.dir_handles, s.handles.len() as u64);
        prop_assert_eq!(sum.polls, s.polls.len() as u64);
        let (back, fs_back) = decode(&bytes).unwrap();
        prop_assert_eq!(&back, &s);
        prop_assert_eq!(&fs_back, &fs);
        prop_assert_eq!(encode_state(&back, &fs_back).unwrap(), bytes);
    }

    #[test]
    fn prop_any_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..400), magic in any::<bool>()) {
        if magic && bytes.len() >= 8 {
            bytes[..8].copy_from_slice(&MAGIC);
        }
        let _ = decode(&bytes);
        let _ = summarize(&bytes);
    }

    #[test]
    fn prop_resealed_garbage_never_panics(
        s in arb_session(),
        edits in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<proptest::sample::Index>(),
        do_cut in any::<bool>(),
    ) {
        // Damage past the checksum (the writer was broken, or an attacker): the
        // decoder must still refuse cleanly or decode something that validates.
        let mut bytes = encode_state(&s, &fs_state()).unwrap();
        let body = bytes.len() - HEADER_LEN;
        for (at, v) in edits {
            let i = HEADER_LEN + at.index(body);
            bytes[i] = v;
        }
        if do_cut {
            bytes.truncate(HEADER_LEN + cut.index(body));
        }
        let bytes = reseal(bytes);
        let _ = summarize(&bytes);
        if let Ok((state, _)) = decode(&bytes) {
            prop_assert_eq!(state.validate(), Ok(()));
        }
    }
}
