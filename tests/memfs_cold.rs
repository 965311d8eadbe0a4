//! Cold restore of memfs (no mount): a snapshot taken with open files and nodeids
//! restored for a fresh connection keeps the contents, drops what only the old
//! connection reached, and starts INIT from the recorded settings.
use fuse_session::wire::InitFlags;
use fuse_session::{
    Counters, HandleKind, HandleState, InitResult, InitState, KernelOffer, NodeState, SessionState,
};
use fuse_snapshot::{encode, restore_cold, FdSaver, FormatError, SnapshotFs};

// memfs's own modules (the memfs workspace crate).
use memfs::{fs, state};

use fs::{Config, Handle, MemFs};
use state::{Caller, ROOT_INO};

fn session(
    nodes: Vec<NodeState<u64>>,
    handles: Vec<HandleState<Handle>>,
) -> SessionState<u64, Handle> {
    let flags = (InitFlags::ASYNC_READ | InitFlags::EXPORT_SUPPORT | InitFlags::INIT_EXT).bits();
    SessionState {
        init: InitState {
            offer: KernelOffer {
                major: 7,
                minor: 45,
                max_readahead: 131072,
                flags,
            },
            result: InitResult {
                minor: 45,
                flags,
                max_write: 1 << 17,
                max_pages: 32,
                max_readahead: 65536,
                max_background: 20,
                congestion_threshold: 15,
                time_gran: 1,
                max_stack_depth: 0,
                request_timeout: 0,
            },
        },
        nodes,
        handles,
        polls: vec![],
        only_uid: None,
        counters: Counters {
            next_nodeid: 100,
            next_fh: 10,
            ..Counters::default()
        },
    }
}

#[test]
fn cold_restore_keeps_contents_and_drops_the_connection() {
    let fs = MemFs::new(0, 0, 1 << 26, Config::default());
    let (kept, gone) = {
        let mut st = fs.lock_write();
        let kept = st
            .mknod(Caller::ROOT, ROOT_INO, b"kept", 0o100644, 0)
            .unwrap();
        st.write(Caller::ROOT, kept, 0, b"data", false).unwrap();
        let gone = st
            .mknod(Caller::ROOT, ROOT_INO, b"gone", 0o100644, 0)
            .unwrap();
        // Unlinked while the old mount still had it open.
        st.unlink(ROOT_INO, b"gone").unwrap();
        (kept, gone)
    };
    assert!(fs.lock_read().contains(gone));
    let nodes = vec![
        NodeState {
            nodeid: 1,
            generation: 0,
            lookups: 0,
            node: ROOT_INO,
        },
        NodeState {
            nodeid: 5,
            generation: 0,
            lookups: 2,
            node: kept,
        },
        NodeState {
            nodeid: 6,
            generation: 0,
            lookups: 1,
            node: gone,
        },
    ];
    let handles = vec![HandleState {
        fh: 3,
        kind: HandleKind::File,
        nodeid: 6,
        flags: 2,
        handle: Handle {
            ino: gone,
            flags: 2,
        },
    }];
    let blob = fs.save(&mut FdSaver::new()).unwrap();
    let bytes = encode::<MemFs>(&session(nodes, handles), &blob).unwrap();

    let cold = restore_cold::<MemFs>(&bytes).unwrap();
    assert_eq!((cold.dropped_nodes, cold.dropped_handles), (3, 1));
    let w = cold.wishes();
    assert_eq!(w.max_write, 1 << 17);
    assert_eq!(w.max_background, 20);
    assert!(w.flags.contains(InitFlags::EXPORT_SUPPORT));
    let mut fs = cold.fs;
    assert_eq!(fs.prepare_cold(), 1);
    let st = fs.lock_read();
    assert!(!st.contains(gone));
    assert_eq!(st.lookup(ROOT_INO, b"kept"), Ok(kept));
    let mut buf = [0u8; 8];
    assert_eq!(st.read(kept, 0, &mut buf), Ok(4));
    st.validate().unwrap();
    drop(st);

    // Damaged bytes are an error, not a panic or an empty filesystem.
    let mut bad = bytes.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    assert!(matches!(
        restore_cold::<MemFs>(&bad),
        Err(FormatError::ChecksumMismatch { .. })
    ));
    assert!(restore_cold::<MemFs>(&bytes[..bytes.len() - 3]).is_err());
}

/// memfs names its nodes by inode number (stable ids), resolves a nodeid it handed
/// out while the inode exists, and answers `.` of a regular file with the file
/// (what the kernel asks to turn a file handle back into an inode).
#[test]
fn stable_ids_resolve_while_the_inode_exists() {
    use fuse_session::{Filesystem, RequestContext};
    use std::ffi::OsStr;
    let fs = MemFs::new(0, 0, 1 << 26, Config::default());
    let f = fs
        .lock_write()
        .mknod(Caller::ROOT, ROOT_INO, b"f", 0o100644, 0)
        .unwrap();
    assert_eq!(
        MemFs::stable_id(&ROOT_INO),
        Some((1, 0)),
        "the root is nodeid 1"
    );
    assert_eq!(MemFs::stable_id(&f), Some((f, 0)));
    assert_eq!(fs.resolve_stable_id(f), Some(f));
    let ctx = RequestContext::new(1, 0, 0, 1);
    assert_eq!(fs.lookup(&ctx, &f, OsStr::new(".")).unwrap().node, f);
    fs.lock_write().unlink(ROOT_INO, b"f").unwrap();
    fs.forget(f);
    assert_eq!(
        fs.resolve_stable_id(f),
        None,
        "gone once unlinked and forgotten"
    );
    assert_eq!(fs.resolve_stable_id(9999), None);
}
