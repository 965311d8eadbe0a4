//! Version 1 written from and read into the typed state directly: the fast path.
//!
//! [`v1`](super::v1)'s serde types define format version 1; this module produces
//! and accepts exactly the same bytes by hand, without the intermediate vectors of
//! borrowed blobs (three 1M-entry vectors for a 1M-nodeid session), and decodes
//! each filesystem value straight from the input. The unit tests in
//! `format/mod.rs` check, over random states and random damage, that both paths
//! give the same bytes and accept the same inputs; the golden test pins both.
use fuse_session::{
    Counters, HandleKind, HandleState, InitResult, InitState, KernelOffer, NodeState, SessionState,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{append, FormatError};

/// A varint as postcard writes it: 7 bits a byte, low first, high bit = more.
fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A value as a blob: varint length, then its postcard encoding, written in place.
fn blob<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), FormatError> {
    let at = out.len();
    out.push(0);
    append(out, value)?;
    let len = out.len() - at - 1;
    if len < 0x80 {
        out[at] = len as u8;
    } else {
        // Rare (values of 128 bytes or more): widen the length in place.
        let mut prefix = Vec::with_capacity(10);
        varint(&mut prefix, len as u64);
        out.splice(at..at + 1, prefix);
    }
    Ok(())
}

fn write_init(out: &mut Vec<u8>, init: &InitState) {
    let InitState { offer, result } = init;
    let KernelOffer {
        major,
        minor,
        max_readahead,
        flags,
    } = *offer;
    for v in [major.into(), minor.into(), max_readahead.into(), flags] {
        varint(out, v);
    }
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
    } = *result;
    for v in [
        minor.into(),
        flags,
        max_write.into(),
        max_pages.into(),
        max_readahead.into(),
        max_background.into(),
        congestion_threshold.into(),
        time_gran.into(),
        max_stack_depth.into(),
        request_timeout.into(),
    ] {
        varint(out, v);
    }
}

fn write_counters(out: &mut Vec<u8>, c: &Counters) {
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
    } = *c;
    for v in [
        next_nodeid,
        next_generation,
        next_fh,
        next_notify_unique,
        requests,
        errors,
        interrupts,
        forgets,
        malformed,
    ] {
        varint(out, v);
    }
}

/// Appends the body `SnapshotBody::V1` of `session` and `fs_state` to `out`.
pub(crate) fn write_v1<N: Serialize, H: Serialize, S: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    session: &SessionState<N, H>,
    fs_state: &S,
) -> Result<(), FormatError> {
    varint(out, 0); // SnapshotBody::V1
    write_init(out, &session.init);
    varint(out, session.nodes.len() as u64);
    for n in &session.nodes {
        varint(out, n.nodeid);
        varint(out, n.generation);
        varint(out, n.lookups);
        blob(out, &n.node)?;
    }
    varint(out, session.handles.len() as u64);
    for h in &session.handles {
        varint(out, h.fh);
        varint(
            out,
            match h.kind {
                HandleKind::File => 0,
                HandleKind::Dir => 1,
            },
        );
        varint(out, h.nodeid);
        varint(out, h.flags.into());
        blob(out, &h.handle)?;
    }
    varint(out, session.polls.len() as u64);
    for &p in &session.polls {
        varint(out, p);
    }
    match session.only_uid {
        None => out.push(0),
        Some(uid) => {
            out.push(1);
            varint(out, uid.into());
        }
    }
    write_counters(out, &session.counters);
    blob(out, fs_state)
}

/// Reads postcard primitives from a byte slice, as strictly as postcard does.
struct Reader<'a> {
    buf: &'a [u8],
}

fn bad(what: &str) -> FormatError {
    FormatError::BadBody(what.to_string())
}

impl<'a> Reader<'a> {
    /// A varint of at most `max_bytes` bytes whose last byte is at most `max_last`
    /// (postcard's limits for each integer width).
    #[inline]
    fn varint_of(&mut self, max_bytes: usize, max_last: u8) -> Result<u64, FormatError> {
        let mut out = 0u64;
        for i in 0..max_bytes {
            let Some((&b, rest)) = self.buf.split_first() else {
                return Err(bad("unexpected end of input"));
            };
            self.buf = rest;
            out |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if i == max_bytes - 1 && b > max_last {
                    return Err(bad("bad varint"));
                }
                return Ok(out);
            }
        }
        Err(bad("bad varint"))
    }

    fn u64(&mut self) -> Result<u64, FormatError> {
        // Fast path: one byte.
        if let Some((&b, rest)) = self.buf.split_first() {
            if b < 0x80 {
                self.buf = rest;
                return Ok(u64::from(b));
            }
        }
        self.varint_of(10, 0x01)
    }

    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(self.varint_of(5, 0x0f)? as u32)
    }

    fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(self.varint_of(3, 0x03)? as u16)
    }

    fn byte(&mut self) -> Result<u8, FormatError> {
        let (&b, rest) = self
            .buf
            .split_first()
            .ok_or_else(|| bad("unexpected end of input"))?;
        self.buf = rest;
        Ok(b)
    }

    fn len(&mut self) -> Result<usize, FormatError> {
        usize::try_from(self.u64()?).map_err(|_| bad("length does not fit in memory"))
    }

    fn blob(&mut self) -> Result<&'a [u8], FormatError> {
        let n = self.len()?;
        if n > self.buf.len() {
            return Err(bad("unexpected end of input"));
        }
        let (b, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(b)
    }

    /// Room for `n` entries of at least `min_bytes` each, capped by what is left.
    fn capacity(&self, n: usize, min_bytes: usize) -> usize {
        n.min(self.buf.len() / min_bytes)
    }
}

fn value<T: DeserializeOwned>(blob: &[u8]) -> Result<T, String> {
    super::value(blob)
}

/// Reads a body written by [`write_v1`] (or by the serde types) into the typed
/// state, without validating it.
pub(crate) fn read_v1<N, H, S>(body: &[u8]) -> Result<(SessionState<N, H>, S), FormatError>
where
    N: DeserializeOwned,
    H: DeserializeOwned,
    S: DeserializeOwned,
{
    let mut r = Reader { buf: body };
    if r.u32()? != 0 {
        return Err(bad("unknown body variant"));
    }
    let offer = KernelOffer {
        major: r.u32()?,
        minor: r.u32()?,
        max_readahead: r.u32()?,
        flags: r.u64()?,
    };
    let result = InitResult {
        minor: r.u32()?,
        flags: r.u64()?,
        max_write: r.u32()?,
        max_pages: r.u16()?,
        max_readahead: r.u32()?,
        max_background: r.u16()?,
        congestion_threshold: r.u16()?,
        time_gran: r.u32()?,
        max_stack_depth: r.u32()?,
        request_timeout: r.u16()?,
    };
    let count = r.len()?;
    // Each node takes at least four bytes (three varints and a blob length).
    let mut nodes = Vec::with_capacity(r.capacity(count, 4));
    for _ in 0..count {
        let nodeid = r.u64()?;
        let generation = r.u64()?;
        let lookups = r.u64()?;
        let blob = r.blob()?;
        let node = value(blob).map_err(|detail| FormatError::BadNode { nodeid, detail })?;
        nodes.push(NodeState {
            nodeid,
            generation,
            lookups,
            node,
        });
    }
    let count = r.len()?;
    let mut handles = Vec::with_capacity(r.capacity(count, 5));
    for _ in 0..count {
        let fh = r.u64()?;
        let kind = match r.u32()? {
            0 => HandleKind::File,
            1 => HandleKind::Dir,
            _ => return Err(bad("unknown handle kind")),
        };
        let nodeid = r.u64()?;
        let flags = r.u32()?;
        let blob = r.blob()?;
        let handle = value(blob).map_err(|detail| FormatError::BadHandle { fh, detail })?;
        handles.push(HandleState {
            fh,
            kind,
            nodeid,
            flags,
            handle,
        });
    }
    let count = r.len()?;
    let mut polls = Vec::with_capacity(r.capacity(count, 1));
    for _ in 0..count {
        polls.push(r.u64()?);
    }
    let only_uid = match r.byte()? {
        0 => None,
        1 => Some(r.u32()?),
        _ => return Err(bad("bad option tag")),
    };
    let counters = Counters {
        next_nodeid: r.u64()?,
        next_generation: r.u64()?,
        next_fh: r.u64()?,
        next_notify_unique: r.u64()?,
        requests: r.u64()?,
        errors: r.u64()?,
        interrupts: r.u64()?,
        forgets: r.u64()?,
        malformed: r.u64()?,
    };
    let fs_blob = r.blob()?;
    if !r.buf.is_empty() {
        return Err(FormatError::BadBody(format!(
            "{} bytes left over after the body",
            r.buf.len()
        )));
    }
    let fs_state = value(fs_blob).map_err(FormatError::BadFsState)?;
    let session = SessionState {
        init: InitState { offer, result },
        nodes,
        handles,
        polls,
        only_uid,
        counters,
    };
    Ok((session, fs_state))
}
