//! Requests: parsing kernel bytes into typed, borrowed views, and encoding them.
//!
//! [`parse`] turns the bytes of one `read(2)` from `/dev/fuse` into a [`Request`]:
//! the checked header, the checked extensions (7.36) and an [`Operation`] with one
//! variant per opcode. It borrows everything from the input, allocates nothing and
//! never panics; malformed input is a [`crate::ParseError`], an unknown
//! opcode is [`Operation::Unknown`].
//!
//! When the body is malformed, [`parse_header`] still yields `unique` and the
//! opcode, so the request can be answered with an error.
//!
//! Layout of a request:
//!
//! ```text
//! fuse_in_header (40 bytes) | body (opcode-specific) | extensions (total_extlen * 8 bytes)
//! ```
//!
//! [`encode`] writes requests as the kernel would, for fake kernels, property
//! tests and fuzzers.
//!
//! ```
//! use fuse_wire::request::encode::{encode, ExtensionArgs, HeaderFields};
//! use fuse_wire::request::{parse, Operation};
//! use fuse_wire::Negotiated;
//!
//! let proto = Negotiated::LATEST;
//! let header = HeaderFields { unique: 12, nodeid: 1, ..Default::default() };
//! let mut buf = [0u8; 64];
//! let op = Operation::Lookup { name: b"foo" };
//! let n = encode(&mut buf, &proto, &header, &op, &ExtensionArgs::NONE).unwrap();
//!
//! let req = parse(&buf[..n], &proto).unwrap();
//! assert_eq!(req.op(), &Operation::Lookup { name: b"foo" });
//! assert_eq!(req.unique(), 12);
//! assert_eq!(req.to_string(), r#"LOOKUP unique=12 nodeid=1 uid=0 gid=0 pid=0 name="foo""#);
//! ```
//!
//! # Representation of compat layouts
//!
//! Fixed structs that the negotiated protocol may send shorter (GETATTR, READ,
//! READDIR, READDIRPLUS and WRITE before 7.9, MKNOD and CREATE before 7.12,
//! SETXATTR without `FUSE_SETXATTR_EXT`, INIT from older kernels) are held by
//! value as the full `abi` struct, with the fields the wire did not carry set to
//! zero. All other structs are borrowed. Bytes after the last field an opcode
//! defines are ignored: kernels grow structs in later minors, and a request must
//! not fail because it says more than this crate understands.
//!
//! # References
//! - Linux `include/uapi/linux/fuse.h` (structs and the protocol changelog)
//! - Linux `fs/fuse/dir.c`, `fs/fuse/file.c`, `fs/fuse/inode.c`, `fs/fuse/dev.c`
//!   (what the kernel sends for each opcode)
use core::mem::size_of;

use crate::abi;
use crate::error::ParseError;
use crate::negotiated::Negotiated;
use crate::opcode::Opcode;

mod display;
pub mod encode;
mod ext;
mod header;
mod ops;
mod reader;

pub use ext::{Extensions, SecCtx, SecCtxIter};
pub use header::{parse_header, RequestHeader};
pub use ops::{init_flags, Operation};

/// A parsed request: header, extensions and operation, all borrowed from the
/// request bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Request<'a> {
    header: RequestHeader<'a>,
    op: Operation<'a>,
}

/// Parses one request as read from `/dev/fuse` on a connection that negotiated
/// `proto` (use [`Negotiated::BEFORE_INIT`] before INIT is answered; INIT and
/// CUSE_INIT parse the same under any `proto`).
///
/// Checks, in order: the header ([`parse_header`]: at least 40 bytes, `len` equal to
/// `bytes.len()`); that the extension area (`total_extlen * 8` bytes at the end,
/// 7.36) fits and is well-formed; then the body of the opcode, with struct sizes
/// taken from `proto`. An unknown opcode gives [`Operation::Unknown`].
///
/// Zero-copy, zero-allocation, and never panics on any input.
pub fn parse<'a>(bytes: &'a [u8], proto: &Negotiated) -> Result<Request<'a>, ParseError> {
    let header = parse_header(bytes)?;
    // The requests of every read and stat take a short path with a small stack frame;
    // it gives up (None) on anything unusual, which the general parser then handles
    // (and reports, if malformed), so both paths accept exactly the same requests.
    if header.extensions_len() == 0 {
        if let Some(op) = ops::parse_hot(header.opcode(), header.payload(), proto) {
            return Ok(Request { header, op });
        }
    }
    parse_general(header, proto)
}

/// [`parse`] without its short path: the general parser alone. For tests and fuzzing,
/// which check that both paths give the same result for every input.
#[doc(hidden)]
pub fn parse_general_only<'a>(
    bytes: &'a [u8],
    proto: &Negotiated,
) -> Result<Request<'a>, ParseError> {
    parse_general(parse_header(bytes)?, proto)
}

/// Every request the short path of [`parse`] does not take.
#[inline(never)]
fn parse_general<'a>(
    header: RequestHeader<'a>,
    proto: &Negotiated,
) -> Result<Request<'a>, ParseError> {
    let payload = header.payload();
    let ext_len = header.extensions_len();
    // Most requests carry no extension: then the body is the whole payload.
    let body = if ext_len == 0 {
        payload
    } else {
        ext::split_and_check(payload, ext_len, header.opcode())?
    };
    let op = ops::parse_operation(header.opcode(), body, proto)?;
    // The request keeps only the header and the operation (small and cheap to build);
    // body and extensions are recomputed from the header when asked for.
    Ok(Request { header, op })
}

impl<'a> Request<'a> {
    /// The request id exactly as sent, bit 63 ([`abi::FUSE_UNIQUE_RESEND`]) included.
    /// Replies must echo this value unchanged.
    pub fn unique(&self) -> u64 {
        self.header.unique()
    }

    /// True if the kernel re-queued this request after `FUSE_NOTIFY_RESEND` (bit 63
    /// of `unique`, 7.40). It may already have been executed once.
    pub fn is_resend(&self) -> bool {
        self.header.is_resend()
    }

    /// The opcode (also for [`Operation::Unknown`]).
    pub fn opcode(&self) -> Opcode {
        self.header.opcode()
    }

    /// The inode the request is about.
    pub fn nodeid(&self) -> u64 {
        self.header.nodeid()
    }

    /// Effective uid of the calling process.
    pub fn uid(&self) -> u32 {
        self.header.uid()
    }

    /// Effective gid of the calling process.
    pub fn gid(&self) -> u32 {
        self.header.gid()
    }

    /// Thread group id of the calling process.
    pub fn pid(&self) -> u32 {
        self.header.pid()
    }

    /// The checked header.
    pub fn header(&self) -> &RequestHeader<'a> {
        &self.header
    }

    /// The extensions (7.36): security contexts and supplementary groups.
    pub fn extensions(&self) -> Extensions<'a> {
        ext::Extensions::from_area(self.ext_area())
    }

    /// The extension area: the last `total_extlen * 8` bytes (parse checked it fits).
    fn ext_area(&self) -> &'a [u8] {
        let payload = self.header.payload();
        let at = payload.len().saturating_sub(self.header.extensions_len());
        payload.get(at..).unwrap_or(&[])
    }

    /// The operation and its arguments.
    pub fn op(&self) -> &Operation<'a> {
        &self.op
    }

    /// The raw body: the bytes between the header and the extensions.
    pub fn body(&self) -> &'a [u8] {
        // parse() checked that the extensions fit in the payload.
        let payload = self.header.payload();
        let body_len = payload.len().saturating_sub(self.header.extensions_len());
        payload.get(..body_len).unwrap_or(payload)
    }

    /// Total length of the request in bytes.
    pub fn len(&self) -> usize {
        size_of::<abi::fuse_in_header>().saturating_add(self.header.payload().len())
    }

    /// Always false: a request has at least its header.
    pub fn is_empty(&self) -> bool {
        false
    }
}
