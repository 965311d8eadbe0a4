//! Golden snapshots: one file per format version ever written, decoded and
//! re-encoded byte for byte. See `tests/golden/README.md`.
//!
//! If `v1_*` fails after a change, the change altered format version 1, which
//! files already on disk and processes already running depend on. Undo it, or add
//! a new format version (a new `SnapshotBody` variant) and a new golden file.
use std::path::PathBuf;

use fuse_snapshot::session::{
    Counters, HandleKind, HandleState, InitResult, InitState, KernelOffer, NodeState, SessionState,
};
use fuse_snapshot::{decode_state, encode_state, summarize, FdSlot};
use fuse_wire::InitFlags;

/// The handle value of the golden session.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct GoldHandle {
    pos: u64,
    backing: Option<FdSlot>,
}

/// The filesystem state of the golden session.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct GoldFs {
    name: String,
    next_ino: u64,
    root: Option<FdSlot>,
}

/// The golden session of version 1, written out field by field so that no change
/// elsewhere (a constructor, a default) can change it.
fn v1_value() -> (SessionState<u64, GoldHandle>, GoldFs) {
    let session = SessionState {
        init: InitState {
            offer: KernelOffer {
                major: 7,
                minor: 45,
                max_readahead: 131072,
                flags: (InitFlags::ASYNC_READ
                    | InitFlags::BIG_WRITES
                    | InitFlags::ATOMIC_O_TRUNC
                    | InitFlags::PARALLEL_DIROPS
                    | InitFlags::MAX_PAGES
                    | InitFlags::INIT_EXT
                    | InitFlags::HAS_RESEND)
                    .0,
            },
            result: InitResult {
                minor: 45,
                flags: (InitFlags::ASYNC_READ
                    | InitFlags::BIG_WRITES
                    | InitFlags::MAX_PAGES
                    | InitFlags::INIT_EXT)
                    .0,
                max_write: 1 << 20,
                max_pages: 256,
                max_readahead: 131072,
                max_background: 16,
                congestion_threshold: 12,
                time_gran: 1,
                max_stack_depth: 0,
                request_timeout: 30,
            },
        },
        nodes: vec![
            NodeState {
                nodeid: 1,
                generation: 0,
                lookups: 0,
                node: 1,
            },
            NodeState {
                nodeid: 2,
                generation: 0,
                lookups: 3,
                node: 1001,
            },
            NodeState {
                nodeid: 5,
                generation: 1,
                lookups: 1,
                node: 300,
            },
            NodeState {
                nodeid: 1 << 33,
                generation: 7,
                lookups: u64::MAX,
                node: u64::MAX,
            },
        ],
        handles: vec![
            HandleState {
                fh: 1,
                kind: HandleKind::Dir,
                nodeid: 1,
                flags: 0o200000,
                handle: GoldHandle {
                    pos: 0,
                    backing: None,
                },
            },
            HandleState {
                fh: 4,
                kind: HandleKind::File,
                nodeid: 5,
                flags: 0o100002,
                handle: GoldHandle {
                    pos: 65536,
                    backing: Some(FdSlot(1)),
                },
            },
        ],
        polls: vec![9],
        only_uid: Some(1000),
        counters: Counters {
            next_nodeid: (1 << 33) + 1,
            next_generation: 8,
            next_fh: 5,
            next_notify_unique: 2,
            requests: 1234,
            errors: 56,
            interrupts: 7,
            forgets: 89,
            malformed: 1,
        },
    };
    let fs = GoldFs {
        name: "golden-v1".into(),
        next_ino: 1002,
        root: Some(FdSlot(0)),
    };
    (session, fs)
}

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// Reads a golden file. With `FUSE_SNAPSHOT_BLESS=1` a *missing* one is written
/// from `fresh` (an existing one is never overwritten).
fn golden(name: &str, fresh: &[u8]) -> Vec<u8> {
    let path = golden_path(name);
    if !path.exists() && std::env::var_os("FUSE_SNAPSHOT_BLESS").is_some() {
        std::fs::write(&path, fresh).unwrap();
    }
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; golden files are committed and never deleted (see tests/golden/README.md)",
            path.display()
        )
    })
}

#[test]
fn v1_decodes_to_the_value_it_was_written_from() {
    let (session, fs) = v1_value();
    let fresh = encode_state(&session, &fs).unwrap();
    let bytes = golden("v1-small.snap", &fresh);
    assert_eq!(&bytes[..10], b"FUSELIVE\x01\x00", "magic and version 1");

    let (back, fs_back) =
        decode_state::<u64, GoldHandle, GoldFs>(&bytes).expect("version 1 stays readable");
    // Field by field, so a failure names the field.
    assert_eq!(back.init.offer, session.init.offer);
    assert_eq!(back.init.result, session.init.result);
    assert_eq!(back.nodes.len(), 4);
    for (got, want) in back.nodes.iter().zip(&session.nodes) {
        assert_eq!(got, want);
    }
    assert_eq!(back.handles, session.handles);
    assert_eq!(back.polls, vec![9]);
    assert_eq!(back.only_uid, Some(1000));
    assert_eq!(back.counters, session.counters);
    assert_eq!(fs_back, fs);
    assert_eq!(back, session);
    assert!(back.kernel_has_resend());

    let sum = summarize(&bytes).unwrap();
    assert_eq!(sum.format_version, 1);
    assert_eq!(
        (sum.nodes, sum.file_handles, sum.dir_handles, sum.polls),
        (4, 1, 1, 1)
    );
    assert_eq!(sum.total_bytes, bytes.len() as u64);
}

#[test]
fn v1_value_encodes_to_the_golden_bytes() {
    let (session, fs) = v1_value();
    let fresh = encode_state(&session, &fs).unwrap();
    let bytes = golden("v1-small.snap", &fresh);
    assert!(
        fresh == bytes,
        "the encoding of format version 1 changed (golden {} bytes, now {} bytes): add a new \
         format version instead",
        bytes.len(),
        fresh.len()
    );
}
