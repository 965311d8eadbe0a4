//! Shared by the format tests: value types and session states.
#![allow(dead_code)]

use fuse_snapshot::session::{
    Counters, HandleKind, HandleState, InitResult, InitState, KernelOffer, NodeState, SessionState,
};
use fuse_snapshot::FdSlot;
use fuse_wire::InitFlags;

/// A small handle struct, as a passthrough filesystem might keep.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Handle {
    pub backing: Option<FdSlot>,
    pub pos: u64,
    pub append: bool,
}

/// A filesystem state with a bit of everything.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FsState {
    pub label: String,
    pub inodes: Vec<(u64, String)>,
    pub root_fd: Option<FdSlot>,
}

pub type State = SessionState<u64, Handle>;

/// What INIT with a 7.45 kernel gives.
pub fn init() -> InitState {
    let offered = InitFlags::ASYNC_READ
        | InitFlags::BIG_WRITES
        | InitFlags::ATOMIC_O_TRUNC
        | InitFlags::PARALLEL_DIROPS
        | InitFlags::MAX_PAGES
        | InitFlags::INIT_EXT
        | InitFlags::HAS_RESEND;
    InitState {
        offer: KernelOffer {
            major: 7,
            minor: 45,
            max_readahead: 131072,
            flags: offered.0,
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
            request_timeout: 0,
        },
    }
}

/// A valid session of `n` nodeids (the root included) with an open handle on
/// every tenth, nodeids and fhs with gaps, node values distinct.
pub fn session(n: u64) -> State {
    let mut nodes = Vec::with_capacity(n as usize);
    nodes.push(NodeState {
        nodeid: 1,
        generation: 0,
        lookups: 0,
        node: 1,
    });
    let mut nodeid = 1;
    for i in 1..n {
        nodeid += 1 + (i % 3) / 2;
        nodes.push(NodeState {
            nodeid,
            generation: i / 1000,
            lookups: 1 + i % 4,
            node: 1000 + i * 37,
        });
    }
    let handles: Vec<_> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 10 == 0)
        .enumerate()
        .map(|(k, (_, node))| HandleState {
            fh: 2 * k as u64 + 1,
            kind: if k % 5 == 0 {
                HandleKind::Dir
            } else {
                HandleKind::File
            },
            nodeid: node.nodeid,
            flags: 0o100002,
            handle: Handle {
                backing: (k % 2 == 0).then_some(FdSlot(k as u32)),
                pos: k as u64 * 4096,
                append: k % 3 == 0,
            },
        })
        .collect();
    let next_fh = handles.last().map_or(1, |h| h.fh + 1);
    State {
        init: init(),
        counters: Counters {
            next_nodeid: nodeid + 1,
            next_generation: n / 1000 + 1,
            next_fh,
            next_notify_unique: 1,
            requests: n * 3,
            errors: n / 7,
            interrupts: 0,
            forgets: n / 2,
            malformed: 0,
        },
        nodes,
        handles,
        polls: vec![],
        only_uid: None,
    }
}

pub fn fs_state() -> FsState {
    FsState {
        label: "test".into(),
        inodes: vec![(1, "/".into()), (1037, "a".into())],
        root_fd: Some(FdSlot(0)),
    }
}
