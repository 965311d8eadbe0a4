//! [`Record`]: what the log holds, and its payload layout.
//!
//! Each kind's payload is its fixed fields (little-endian), then one byte string
//! taking the rest of the payload. The byte strings are the session's or the
//! filesystem's own encodings, opaque here.

/// A log record. `B` is the byte-string type: `&[u8]` to append without copying
/// ([`RecordRef`]), `Vec<u8>` as recovery returns them.
///
/// | kind | record | fixed fields | bytes |
/// |---|---|---|---|
/// | 1 | `Init` | | the negotiated INIT result |
/// | 2 | `Lookup` | nodeid, generation, delta (u64 each) | the node's value |
/// | 3 | `Forget` | nodeid, count | |
/// | 4 | `Open` | fh | the handle's state |
/// | 5 | `Release` | fh | |
/// | 6 | `Counters` | | the session's counters |
/// | 7 | `FsChange` | | one change the filesystem recorded |
/// | 8 | `Accepted` | unique, nodeid (u64), opcode (u32) | the request |
/// | 9 | `Replied` | unique | the reply |
/// | 10 | `Done` | unique | |
/// | 11 | `Delta` | | changes since the previous record, unchanged parts left out |
///
/// (Kind 0xffff seals a log that a newer epoch superseded; recovery does not
/// return it.)
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Record<B = Vec<u8>> {
    /// The negotiated INIT, once per session (the session's encoding).
    Init(B),
    /// A lookup counted: written *before* the reply that makes the kernel count it,
    /// so the daemon's count may exceed the kernel's after a crash, never fall
    /// below it.
    Lookup {
        /// The nodeid.
        nodeid: u64,
        /// Its generation.
        generation: u64,
        /// How many lookups were added.
        delta: u64,
        /// The node's value (the session's encoding of the filesystem's node),
        /// needed when the nodeid is new.
        node: B,
    },
    /// Lookups dropped by FORGET or BATCH_FORGET.
    Forget {
        /// The nodeid.
        nodeid: u64,
        /// How many.
        count: u64,
    },
    /// A file or directory handle opened.
    Open {
        /// Its fh.
        fh: u64,
        /// Its state (the session's encoding: kind, nodeid, flags, value).
        handle: B,
    },
    /// A handle released.
    Release {
        /// Its fh.
        fh: u64,
    },
    /// The session's counters (the session's encoding).
    Counters(B),
    /// A change of the filesystem's own state, from the change recording pre-copy
    /// uses (the filesystem's encoding).
    FsChange(B),
    /// A request read from the kernel, before it is handled.
    Accepted {
        /// Its unique (bit 63 set if resent).
        unique: u64,
        /// Its nodeid.
        nodeid: u64,
        /// Its opcode.
        opcode: u32,
        /// The request's bytes (header included), for kernels that cannot resend.
        request: B,
    },
    /// The reply to a non-idempotent request, written before it is sent.
    Replied {
        /// The request's unique.
        unique: u64,
        /// The reply's bytes.
        reply: B,
    },
    /// A request answered: its records are no longer needed.
    Done {
        /// The request's unique.
        unique: u64,
    },
    /// Like [`Record::FsChange`], the changes since the previous record, but
    /// leaving out what did not change since then (the session's encoding,
    /// [`session`](super::session)). Kind 11, added after the first journals
    /// were written: a build that predates it refuses such a journal as of an
    /// unknown kind.
    Delta(B),
}

/// A record borrowing its bytes, for appending.
pub type RecordRef<'a> = Record<&'a [u8]>;

pub(crate) const KIND_SEAL: u16 = 0xffff;

/// At most this many bytes of fixed fields.
pub(crate) const MAX_FIXED: usize = 24;

impl<B: AsRef<[u8]>> Record<B> {
    /// The kind number of the record.
    pub fn kind(&self) -> u16 {
        match self {
            Record::Init(_) => 1,
            Record::Lookup { .. } => 2,
            Record::Forget { .. } => 3,
            Record::Open { .. } => 4,
            Record::Release { .. } => 5,
            Record::Counters(_) => 6,
            Record::FsChange(_) => 7,
            Record::Accepted { .. } => 8,
            Record::Replied { .. } => 9,
            Record::Done { .. } => 10,
            Record::Delta(_) => 11,
        }
    }

    /// A view borrowing this record's bytes.
    pub fn as_ref(&self) -> RecordRef<'_> {
        match self {
            Record::Init(b) => Record::Init(b.as_ref()),
            Record::Lookup {
                nodeid,
                generation,
                delta,
                node,
            } => Record::Lookup {
                nodeid: *nodeid,
                generation: *generation,
                delta: *delta,
                node: node.as_ref(),
            },
            Record::Forget { nodeid, count } => Record::Forget {
                nodeid: *nodeid,
                count: *count,
            },
            Record::Open { fh, handle } => Record::Open {
                fh: *fh,
                handle: handle.as_ref(),
            },
            Record::Release { fh } => Record::Release { fh: *fh },
            Record::Counters(b) => Record::Counters(b.as_ref()),
            Record::FsChange(b) => Record::FsChange(b.as_ref()),
            Record::Accepted {
                unique,
                nodeid,
                opcode,
                request,
            } => Record::Accepted {
                unique: *unique,
                nodeid: *nodeid,
                opcode: *opcode,
                request: request.as_ref(),
            },
            Record::Replied { unique, reply } => Record::Replied {
                unique: *unique,
                reply: reply.as_ref(),
            },
            Record::Done { unique } => Record::Done { unique: *unique },
            Record::Delta(b) => Record::Delta(b.as_ref()),
        }
    }

    /// A copy owning its bytes.
    pub fn owned(&self) -> Record {
        match self.as_ref() {
            Record::Init(b) => Record::Init(b.to_vec()),
            Record::Lookup {
                nodeid,
                generation,
                delta,
                node,
            } => Record::Lookup {
                nodeid,
                generation,
                delta,
                node: node.to_vec(),
            },
            Record::Forget { nodeid, count } => Record::Forget { nodeid, count },
            Record::Open { fh, handle } => Record::Open {
                fh,
                handle: handle.to_vec(),
            },
            Record::Release { fh } => Record::Release { fh },
            Record::Counters(b) => Record::Counters(b.to_vec()),
            Record::FsChange(b) => Record::FsChange(b.to_vec()),
            Record::Accepted {
                unique,
                nodeid,
                opcode,
                request,
            } => Record::Accepted {
                unique,
                nodeid,
                opcode,
                request: request.to_vec(),
            },
            Record::Replied { unique, reply } => Record::Replied {
                unique,
                reply: reply.to_vec(),
            },
            Record::Done { unique } => Record::Done { unique },
            Record::Delta(b) => Record::Delta(b.to_vec()),
        }
    }

    /// The fixed fields (in a buffer, with their length) and the byte string.
    pub(crate) fn parts(&self) -> ([u8; MAX_FIXED], usize, &[u8]) {
        let mut f = [0u8; MAX_FIXED];
        let mut n = 0;
        let mut put = |v: &[u8]| {
            f[n..n + v.len()].copy_from_slice(v);
            n += v.len();
        };
        let bytes: &[u8] = match self {
            Record::Init(b) | Record::Counters(b) | Record::FsChange(b) | Record::Delta(b) => {
                b.as_ref()
            }
            Record::Lookup {
                nodeid,
                generation,
                delta,
                node,
            } => {
                put(&nodeid.to_le_bytes());
                put(&generation.to_le_bytes());
                put(&delta.to_le_bytes());
                node.as_ref()
            }
            Record::Forget { nodeid, count } => {
                put(&nodeid.to_le_bytes());
                put(&count.to_le_bytes());
                &[]
            }
            Record::Open { fh, handle } => {
                put(&fh.to_le_bytes());
                handle.as_ref()
            }
            Record::Release { fh } => {
                put(&fh.to_le_bytes());
                &[]
            }
            Record::Accepted {
                unique,
                nodeid,
                opcode,
                request,
            } => {
                put(&unique.to_le_bytes());
                put(&nodeid.to_le_bytes());
                put(&opcode.to_le_bytes());
                request.as_ref()
            }
            Record::Replied { unique, reply } => {
                put(&unique.to_le_bytes());
                reply.as_ref()
            }
            Record::Done { unique } => {
                put(&unique.to_le_bytes());
                &[]
            }
        };
        (f, n, bytes)
    }

    /// The payload as one vector (fixed fields, then the bytes).
    pub fn payload(&self) -> Vec<u8> {
        let (f, n, bytes) = self.parts();
        let mut v = Vec::with_capacity(n + bytes.len());
        v.extend_from_slice(&f[..n]);
        v.extend_from_slice(bytes);
        v
    }
}

/// Why a payload does not decode.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DecodeError {
    UnknownKind(u16),
    Malformed(String),
}

impl Record {
    /// Decodes a payload of kind `kind`. Untrusted input: never panics.
    pub(crate) fn decode(kind: u16, p: &[u8]) -> Result<Record, DecodeError> {
        let fixed = match kind {
            1 | 6 | 7 | 11 => 0,
            2 => 24,
            3 => 16,
            4 | 5 | 9 | 10 => 8,
            8 => 20,
            k => return Err(DecodeError::UnknownKind(k)),
        };
        let exact = matches!(kind, 3 | 5 | 10);
        if p.len() < fixed || (exact && p.len() != fixed) {
            return Err(DecodeError::Malformed(format!(
                "a kind {kind} payload is {} bytes, it takes {}{fixed}",
                p.len(),
                if exact { "" } else { "at least " }
            )));
        }
        let (f, rest) = p.split_at(fixed);
        let u = |i: usize| super::layout::le64(&f[i * 8..]);
        let bytes = rest.to_vec();
        Ok(match kind {
            1 => Record::Init(bytes),
            2 => Record::Lookup {
                nodeid: u(0),
                generation: u(1),
                delta: u(2),
                node: bytes,
            },
            3 => Record::Forget {
                nodeid: u(0),
                count: u(1),
            },
            4 => Record::Open {
                fh: u(0),
                handle: bytes,
            },
            5 => Record::Release { fh: u(0) },
            6 => Record::Counters(bytes),
            7 => Record::FsChange(bytes),
            8 => Record::Accepted {
                unique: u(0),
                nodeid: u(1),
                opcode: super::layout::le32(&f[16..20]),
                request: bytes,
            },
            9 => Record::Replied {
                unique: u(0),
                reply: bytes,
            },
            10 => Record::Done { unique: u(0) },
            _ => Record::Delta(bytes),
        })
    }
}
