//! The snapshot format: an envelope (magic, version, length, checksum) around a
//! postcard body with one enum variant per format version.
//!
//! # Layout
//! A fixed [`HEADER_LEN`]-byte header, all integers little-endian:
//!
//! ```text
//! offset size  field
//!      0    8  magic            b"FUSELIVE" (MAGIC)
//!      8    2  format version   u16 (FORMAT_VERSION; 1 = SnapshotBody::V1)
//!     10    2  flags            u16, none defined: must be 0
//!     12    8  body length      u64, exactly the number of bytes that follow
//!     20    4  body checksum    CRC-32 (IEEE, as zlib) of the body, u32
//!     24    …  body
//! ```
//!
//! The body is the postcard encoding of `SnapshotBody`, whose only variant today is
//! `V1` (postcard: integers as varints, a sequence as a varint length and its
//! items, an enum as a varint variant index and its payload):
//!
//! ```text
//! SnapshotBody::V1 (varint 0)
//!   offer    major minor max_readahead flags                 (varints)
//!   result   minor flags max_write max_pages max_readahead max_background
//!            congestion_threshold time_gran max_stack_depth request_timeout
//!   nodes    len, then per node: nodeid generation lookups  node-blob
//!   handles  len, then per handle: fh kind(0 file, 1 dir) nodeid flags handle-blob
//!   polls    len, then each poll handle
//!   only_uid 0 | 1 uid
//!   counters next_nodeid next_generation next_fh next_notify_unique requests
//!            errors interrupts forgets malformed
//!   fs_state blob
//! ```
//!
//! A *blob* is a varint length followed by the postcard encoding of the
//! filesystem's value (its node, handle or state type). Blobs are what lets a tool
//! that does not know those types — [`summarize`], [`decode_raw`], the `inspect`
//! example — read any snapshot; the typed [`decode_state`] decodes them in a
//! second step and rejects trailing bytes in each.
//!
//! # Untrusted input
//! Decoding checks, in order: the magic, a known version, zero flags, a body
//! length exactly equal to what follows, the CRC-32, the body's structure (postcard
//! checks every length against the bytes left, so nothing is allocated from an
//! unchecked length), the body's version tag against the header's, each value, and
//! finally [`SessionState::validate`]. Any failure is a [`FormatError`], never a
//! panic.
//!
//! # Determinism
//! The same state always encodes to the same bytes: the session's vectors are
//! sorted, postcard has one encoding per value, and there are no timestamps.
use fuse_session::SessionState;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::hash::Hash;

pub(crate) mod crc;
pub(crate) mod envelope;
mod error;
mod fast;
mod raw;
#[cfg(test)]
mod tests;
mod v1;

pub use crc::crc32;
pub use envelope::{FORMAT_VERSION, HEADER_LEN, MAGIC};
pub use error::FormatError;
pub use raw::{RawHandle, RawNode, RawSnapshot, Summary};

#[cfg(test)]
use fuse_session::{HandleState, NodeState};
use postcard::ser_flavors::Flavor;
use v1::{BodyV1, SnapshotBody};

/// A postcard output that appends to a borrowed `Vec` (so one buffer can hold many
/// values back to back).
struct Append<'a>(&'a mut Vec<u8>);

impl Flavor for Append<'_> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

fn append<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), FormatError> {
    postcard::serialize_with_flavor(value, Append(out))
        .map_err(|e| FormatError::Encode(e.to_string()))
}

/// Decodes one blob, which must be consumed exactly.
fn value<T: DeserializeOwned>(blob: &[u8]) -> Result<T, String> {
    match postcard::take_from_bytes::<T>(blob) {
        Ok((v, [])) => Ok(v),
        Ok((_, rest)) => Err(format!("{} bytes left over", rest.len())),
        Err(e) => Err(e.to_string()),
    }
}

/// Encodes a session state and a filesystem state as a snapshot in the current
/// [`FORMAT_VERSION`].
///
/// The state is not validated here ([`decode_state`] does it); encoding the same
/// values always gives the same bytes.
///
/// # Errors
/// [`FormatError::Encode`] if a value's serde implementation does something
/// postcard cannot represent.
pub fn encode_state<N: Serialize, H: Serialize, S: Serialize + ?Sized>(
    session: &SessionState<N, H>,
    fs_state: &S,
) -> Result<Vec<u8>, FormatError> {
    // A u64 node takes about 12 bytes, a small handle about 20: start there and
    // let the vector grow for larger values.
    let estimate = HEADER_LEN + 256 + session.nodes.len() * 16 + session.handles.len() * 32;
    let mut out = Vec::with_capacity(estimate);
    out.resize(HEADER_LEN, 0);
    fast::write_v1(&mut out, session, fs_state)?;
    envelope::seal(&mut out, FORMAT_VERSION);
    Ok(out)
}

/// [`encode_state`] through the serde types of the format (the reference the fast
/// path is tested against).
#[cfg(test)]
pub(crate) fn encode_state_via_serde<N: Serialize, H: Serialize, S: Serialize + ?Sized>(
    session: &SessionState<N, H>,
    fs_state: &S,
) -> Result<Vec<u8>, FormatError> {
    // Every filesystem value is encoded into one arena, back to back; the body then
    // borrows its blobs from it (no allocation per value).
    let mut arena = Vec::with_capacity(session.nodes.len() * 8 + session.handles.len() * 8);
    let mut ends = Vec::with_capacity(session.nodes.len() + session.handles.len() + 1);
    for n in &session.nodes {
        append(&mut arena, &n.node)?;
        ends.push(arena.len());
    }
    for h in &session.handles {
        append(&mut arena, &h.handle)?;
        ends.push(arena.len());
    }
    append(&mut arena, fs_state)?;
    ends.push(arena.len());

    let mut start = 0;
    let mut blobs = ends.iter().map(|&end| {
        let blob = &arena[start..end];
        start = end;
        blob
    });
    let raw = RawSnapshot {
        format_version: FORMAT_VERSION,
        init: session.init,
        nodes: session
            .nodes
            .iter()
            .zip(&mut blobs)
            .map(|(n, node)| RawNode {
                nodeid: n.nodeid,
                generation: n.generation,
                lookups: n.lookups,
                node,
            })
            .collect(),
        handles: session
            .handles
            .iter()
            .zip(&mut blobs)
            .map(|(h, handle)| RawHandle {
                fh: h.fh,
                kind: h.kind,
                nodeid: h.nodeid,
                flags: h.flags,
                handle,
            })
            .collect(),
        polls: session.polls.clone(),
        only_uid: session.only_uid,
        counters: session.counters,
        fs_state: blobs.next().unwrap_or_default(),
    };
    encode_raw(&raw)
}

/// Encodes an untyped snapshot (e.g. one from [`decode_raw`], edited by a tool) in
/// the current [`FORMAT_VERSION`]; `raw.format_version` is ignored.
///
/// # Errors
/// None today; the `Result` leaves room for limits.
pub fn encode_raw(raw: &RawSnapshot<'_>) -> Result<Vec<u8>, FormatError> {
    let body = SnapshotBody::V1(BodyV1::from_raw(raw));
    // Most of the body is the blobs plus a few varints per entry.
    let blobs: usize = raw.nodes.iter().map(|n| n.node.len() + 16).sum::<usize>()
        + raw
            .handles
            .iter()
            .map(|h| h.handle.len() + 24)
            .sum::<usize>()
        + raw.fs_state.len();
    let mut out = Vec::with_capacity(HEADER_LEN + 256 + blobs + raw.polls.len() * 4);
    out.resize(HEADER_LEN, 0);
    append(&mut out, &body)?;
    envelope::seal(&mut out, body.version());
    Ok(out)
}

/// Checks the envelope and decodes the body, leaving the filesystem's values
/// encoded. What a generic tool uses.
///
/// # Errors
/// Every envelope and structure error of [`FormatError`] (not `State`, `BadNode`,
/// `BadHandle` or `BadFsState`, which need the types).
pub fn decode_raw(bytes: &[u8]) -> Result<RawSnapshot<'_>, FormatError> {
    let env = envelope::open(bytes)?;
    let (body, rest) = postcard::take_from_bytes::<SnapshotBody<'_>>(env.body)
        .map_err(|e| FormatError::BadBody(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FormatError::BadBody(format!(
            "{} bytes left over after the body",
            rest.len()
        )));
    }
    if body.version() != env.version {
        return Err(FormatError::VersionMismatch {
            header: env.version,
            body: body.version(),
        });
    }
    Ok(match body {
        SnapshotBody::V1(b) => b.into_raw(),
    })
}

/// Decodes the filesystem values of `raw`, without validating the state (the
/// reference the fast path is tested against).
#[cfg(test)]
pub(crate) fn typed<N: DeserializeOwned, H: DeserializeOwned, S: DeserializeOwned>(
    raw: RawSnapshot<'_>,
) -> Result<(SessionState<N, H>, S), FormatError> {
    let mut nodes = Vec::with_capacity(raw.nodes.len());
    for n in &raw.nodes {
        nodes.push(NodeState {
            nodeid: n.nodeid,
            generation: n.generation,
            lookups: n.lookups,
            node: value(n.node).map_err(|detail| FormatError::BadNode {
                nodeid: n.nodeid,
                detail,
            })?,
        });
    }
    let mut handles = Vec::with_capacity(raw.handles.len());
    for h in &raw.handles {
        handles.push(HandleState {
            fh: h.fh,
            kind: h.kind,
            nodeid: h.nodeid,
            flags: h.flags,
            handle: value(h.handle)
                .map_err(|detail| FormatError::BadHandle { fh: h.fh, detail })?,
        });
    }
    let fs_state = value(raw.fs_state).map_err(FormatError::BadFsState)?;
    let session = SessionState {
        init: raw.init,
        nodes,
        handles,
        polls: raw.polls,
        only_uid: raw.only_uid,
        counters: raw.counters,
    };
    Ok((session, fs_state))
}

/// Decodes a snapshot into a session state and a filesystem state, and validates
/// the session state ([`SessionState::validate`]).
///
/// # Errors
/// Any [`FormatError`]: the envelope, the body, a value that does not decode as
/// its type, or [`FormatError::State`] for an inconsistent state.
pub fn decode_state<N, H, S>(bytes: &[u8]) -> Result<(SessionState<N, H>, S), FormatError>
where
    N: DeserializeOwned + Eq + Hash,
    H: DeserializeOwned,
    S: DeserializeOwned,
{
    let (session, fs) = decode_unvalidated(bytes)?;
    session.validate().map_err(FormatError::State)?;
    Ok((session, fs))
}

/// [`decode_state`] without the validation (for callers that validate anyway).
pub(crate) fn decode_unvalidated<N, H, S>(
    bytes: &[u8],
) -> Result<(SessionState<N, H>, S), FormatError>
where
    N: DeserializeOwned,
    H: DeserializeOwned,
    S: DeserializeOwned,
{
    let env = envelope::open(bytes)?;
    match env.version {
        1 => fast::read_v1(env.body),
        found => Err(FormatError::UnsupportedVersion {
            found,
            newest: FORMAT_VERSION,
        }),
    }
}

/// Checks a snapshot and counts what it holds, without knowing the filesystem's
/// types (the state is not validated: that needs them).
///
/// # Errors
/// As [`decode_raw`].
pub fn summarize(bytes: &[u8]) -> Result<Summary, FormatError> {
    Ok(decode_raw(bytes)?.summary(bytes.len()))
}
