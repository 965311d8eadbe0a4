//! Format version 1: the body's wire types.
//!
//! These types *are* the format. They are private and separate from
//! `fuse-session`'s own types on purpose: a field added to `InitResult` or
//! `Counters` must not silently change what version 1 means. Changing anything
//! here (a field, its type, its order, a variant) changes version 1's bytes and
//! breaks the golden test in `tests/golden.rs`. Don't: add `SnapshotBody::V2`
//! with its own types, bump [`FORMAT_VERSION`](super::FORMAT_VERSION), keep
//! reading V1, and commit a new golden file.
//!
//! `fast.rs` writes and reads the same bytes by hand (for speed, straight from
//! and into the typed state); unit tests hold the two together.
//!
//! postcard writes a struct as its fields in order, integers as varints, a
//! `Vec` or byte blob as a varint length then the items, an enum as a varint
//! variant index then the payload.
use fuse_session::{Counters, HandleKind, InitResult, InitState, KernelOffer};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::raw::{RawHandle, RawNode, RawSnapshot};

/// A value encoded on its own (postcard), carried as length-prefixed bytes so that
/// a tool can read the body without the filesystem's types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Blob<'a>(pub &'a [u8]);

impl Serialize for Blob<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Blob<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Borrows from the input: postcard checks the length against what is left,
        // so a lying length is an error, not an allocation.
        <&'a [u8]>::deserialize(d).map(Blob)
    }
}

/// The body: one variant per format version, ever. The variant's index is its
/// version minus one (postcard writes the index as a varint).
#[derive(Serialize, Deserialize)]
pub(crate) enum SnapshotBody<'a> {
    /// Format version 1.
    #[serde(borrow)]
    V1(BodyV1<'a>),
}

impl SnapshotBody<'_> {
    /// The format version of this variant.
    pub(crate) fn version(&self) -> u16 {
        match self {
            SnapshotBody::V1(_) => 1,
        }
    }
}

/// Version 1's body.
#[derive(Serialize, Deserialize)]
pub(crate) struct BodyV1<'a> {
    offer: OfferV1,
    result: ResultV1,
    #[serde(borrow)]
    nodes: Vec<NodeV1<'a>>,
    #[serde(borrow)]
    handles: Vec<HandleV1<'a>>,
    polls: Vec<u64>,
    only_uid: Option<u32>,
    counters: CountersV1,
    #[serde(borrow)]
    fs_state: Blob<'a>,
}

#[derive(Serialize, Deserialize)]
struct OfferV1 {
    major: u32,
    minor: u32,
    max_readahead: u32,
    flags: u64,
}

#[derive(Serialize, Deserialize)]
struct ResultV1 {
    minor: u32,
    flags: u64,
    max_write: u32,
    max_pages: u16,
    max_readahead: u32,
    max_background: u16,
    congestion_threshold: u16,
    time_gran: u32,
    max_stack_depth: u32,
    request_timeout: u16,
}

#[derive(Serialize, Deserialize)]
struct CountersV1 {
    next_nodeid: u64,
    next_generation: u64,
    next_fh: u64,
    next_notify_unique: u64,
    requests: u64,
    errors: u64,
    interrupts: u64,
    forgets: u64,
    malformed: u64,
}

#[derive(Serialize, Deserialize)]
struct NodeV1<'a> {
    nodeid: u64,
    generation: u64,
    lookups: u64,
    #[serde(borrow)]
    node: Blob<'a>,
}

#[derive(Serialize, Deserialize)]
enum KindV1 {
    File,
    Dir,
}

#[derive(Serialize, Deserialize)]
struct HandleV1<'a> {
    fh: u64,
    kind: KindV1,
    nodeid: u64,
    flags: u32,
    #[serde(borrow)]
    handle: Blob<'a>,
}

impl<'a> BodyV1<'a> {
    /// The wire form of `raw` (its version field is ignored).
    pub(crate) fn from_raw(raw: &RawSnapshot<'a>) -> Self {
        let InitState { offer, result } = raw.init;
        let KernelOffer {
            major,
            minor,
            max_readahead,
            flags,
        } = offer;
        let offer = OfferV1 {
            major,
            minor,
            max_readahead,
            flags,
        };
        let InitResult {
            minor,
            flags,
            max_write,
            max_pages,
            max_readahead,
            max_background,
            congestion_threshold,
            time_gran,
            max_stack_depth,
            request_timeout,
        } = result;
        let result = ResultV1 {
            minor,
            flags,
            max_write,
            max_pages,
            max_readahead,
            max_background,
            congestion_threshold,
            time_gran,
            max_stack_depth,
            request_timeout,
        };
        let Counters {
            next_nodeid,
            next_generation,
            next_fh,
            next_notify_unique,
            requests,
            errors,
            interrupts,
            forgets,
            malformed,
        } = raw.counters;
        let counters = CountersV1 {
            next_nodeid,
            next_generation,
            next_fh,
            next_notify_unique,
            requests,
            errors,
            interrupts,
            forgets,
            malformed,
        };
        BodyV1 {
            offer,
            result,
            nodes: raw
                .nodes
                .iter()
                .map(|n| NodeV1 {
                    nodeid: n.nodeid,
                    generation: n.generation,
                    lookups: n.lookups,
                    node: Blob(n.node),
                })
                .collect(),
            handles: raw
                .handles
                .iter()
                .map(|h| HandleV1 {
                    fh: h.fh,
                    kind: match h.kind {
                        HandleKind::File => KindV1::File,
                        HandleKind::Dir => KindV1::Dir,
                    },
                    nodeid: h.nodeid,
                    flags: h.flags,
                    handle: Blob(h.handle),
                })
                .collect(),
            polls: raw.polls.clone(),
            only_uid: raw.only_uid,
            counters,
            fs_state: Blob(raw.fs_state),
        }
    }

    /// The untyped view of this body.
    pub(crate) fn into_raw(self) -> RawSnapshot<'a> {
        let OfferV1 {
            major,
            minor,
            max_readahead,
            flags,
        } = self.offer;
        let offer = KernelOffer {
            major,
            minor,
            max_readahead,
            flags,
        };
        let ResultV1 {
            minor,
            flags,
            max_write,
            max_pages,
            max_readahead,
            max_background,
            congestion_threshold,
            time_gran,
            max_stack_depth,
            request_timeout,
        } = self.result;
        let result = InitResult {
            minor,
            flags,
            max_write,
            max_pages,
            max_readahead,
            max_background,
            congestion_threshold,
            time_gran,
            max_stack_depth,
            request_timeout,
        };
        let CountersV1 {
            next_nodeid,
            next_generation,
            next_fh,
            next_notify_unique,
            requests,
            errors,
            interrupts,
            forgets,
            malformed,
        } = self.counters;
        RawSnapshot {
            format_version: 1,
            init: InitState { offer, result },
            nodes: self
                .nodes
                .into_iter()
                .map(|n| RawNode {
                    nodeid: n.nodeid,
                    generation: n.generation,
                    lookups: n.lookups,
                    node: n.node.0,
                })
                .collect(),
            handles: self
                .handles
                .into_iter()
                .map(|h| RawHandle {
                    fh: h.fh,
                    kind: match h.kind {
                        KindV1::File => HandleKind::File,
                        KindV1::Dir => HandleKind::Dir,
                    },
                    nodeid: h.nodeid,
                    flags: h.flags,
                    handle: h.handle.0,
                })
                .collect(),
            polls: self.polls,
            only_uid: self.only_uid,
            counters: Counters {
                next_nodeid,
                next_generation,
                next_fh,
                next_notify_unique,
                requests,
                errors,
                interrupts,
                forgets,
                malformed,
            },
            fs_state: self.fs_state.0,
        }
    }
}
