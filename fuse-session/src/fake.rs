//! A fake kernel: drives a [`Session`] with encoded requests, without `/dev/fuse`.
//!
//! It encodes requests as the kernel does (through `fuse_wire::request::encode`),
//! feeds them to [`Session::handle`], parses the replies as the kernel would
//! (`fuse_wire::reply::parse`), and keeps the kernel's side of the bookkeeping —
//! its lookup count per nodeid — so tests can check the session against it.
//! Filesystem authors can use it to unit-test a filesystem through the real
//! protocol path.
use std::collections::BTreeMap;

use fuse_wire::request::encode::{encode, ExtensionArgs, HeaderFields};
use fuse_wire::request::Operation;
use fuse_wire::{abi, reply, InitFlags, Negotiated, Opcode};
use zerocopy::byteorder::native_endian::{U32, U64};

use crate::fs::Filesystem;
use crate::proto::{Outcome, Session};

/// A reply as the kernel received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawReply {
    /// The opcode of the request it answers.
    pub opcode: Opcode,
    /// The message bytes (header, body and payload).
    pub bytes: Vec<u8>,
}

impl RawReply {
    /// The reply parsed as the kernel would, for the connection `proto`.
    pub fn parse(&self, proto: &Negotiated) -> Result<reply::Reply<'_>, fuse_wire::ParseError> {
        reply::parse(&self.bytes, self.opcode, proto)
    }
}

/// The fake kernel. See the [module documentation](self).
pub struct FakeKernel<F: Filesystem> {
    session: Session<F>,
    next_unique: u64,
    reqbuf: Vec<u8>,
    out: Vec<u8>,
    lookups: BTreeMap<u64, u64>,
    /// uid, gid and pid put in request headers.
    pub caller: (u32, u32, u32),
}

impl<F: Filesystem> FakeKernel<F> {
    /// A fake kernel in front of a new session of `fs`.
    pub fn new(fs: F) -> Self {
        Self::with_session(Session::new(fs))
    }

    /// A fake kernel in front of `session`.
    pub fn with_session(session: Session<F>) -> Self {
        FakeKernel {
            session,
            next_unique: 1,
            reqbuf: vec![0; 1 << 21],
            out: vec![0; (1 << 21) + 8192],
            lookups: BTreeMap::new(),
            caller: (0, 0, 1),
        }
    }

    /// The session.
    pub fn session(&self) -> &Session<F> {
        &self.session
    }

    /// The session, taken out (e.g. to serve it elsewhere after INIT).
    pub fn into_session(self) -> Session<F> {
        self.session
    }

    /// The kernel's lookup count per nodeid (nodeids with a zero count are absent).
    pub fn kernel_lookups(&self) -> &BTreeMap<u64, u64> {
        &self.lookups
    }

    /// The protocol of the connection.
    pub fn proto(&self) -> Negotiated {
        self.session.negotiated()
    }

    /// The `unique` the next request will carry.
    pub fn next_unique(&self) -> u64 {
        self.next_unique
    }

    /// Sends INIT offering protocol 7.`minor` with `flags`; returns the reply.
    pub fn init(&mut self, minor: u32, flags: InitFlags) -> RawReply {
        let arg = abi::fuse_init_in {
            major: U32::new(7),
            minor: U32::new(minor),
            max_readahead: U32::new(131072),
            flags: U32::new(flags.low()),
            flags2: U32::new(flags.high()),
            unused: Default::default(),
        };
        self.call(0, &Operation::Init { arg })
            .expect("INIT is always answered")
    }

    /// Encodes and handles one request; returns the reply, or `None` for requests
    /// the kernel never expects an answer to (and for dropped ones).
    pub fn call(&mut self, nodeid: u64, op: &Operation<'_>) -> Option<RawReply> {
        let unique = self.next_unique;
        self.next_unique += 1;
        self.call_with_unique(unique, nodeid, op)
    }

    /// As [`FakeKernel::call`] with a chosen `unique` (e.g. with the resend bit).
    pub fn call_with_unique(
        &mut self,
        unique: u64,
        nodeid: u64,
        op: &Operation<'_>,
    ) -> Option<RawReply> {
        let header = HeaderFields {
            unique,
            nodeid,
            uid: self.caller.0,
            gid: self.caller.1,
            pid: self.caller.2,
        };
        let proto = self.session.negotiated();
        let n = encode(
            &mut self.reqbuf,
            &proto,
            &header,
            op,
            &ExtensionArgs::default(),
        )
        .ok()?;
        let bytes = self.reqbuf[..n].to_vec();
        self.raw(&bytes).map(|b| RawReply {
            opcode: op.opcode(),
            bytes: b,
        })
    }

    /// Hands raw request bytes to the session; returns the reply bytes, if any.
    pub fn raw(&mut self, request: &[u8]) -> Option<Vec<u8>> {
        match self.session.handle(request, &mut self.out) {
            Outcome::Reply(parts) => Some(parts.to_vec()),
            _ => None,
        }
    }

    fn count(&mut self, nodeid: u64) {
        if nodeid != 0 && nodeid != abi::FUSE_ROOT_ID {
            *self.lookups.entry(nodeid).or_default() += 1;
        }
    }

    /// LOOKUP; on success the kernel counts the nodeid. Returns the entry or errno.
    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> Result<reply::Entry, i32> {
        let r = self.call(parent, &Operation::Lookup { name }).ok_or(0)?;
        let proto = self.proto();
        match r.parse(&proto).map_err(|_| -1)?.body {
            reply::ReplyBody::Entry(e) => {
                self.count(e.nodeid);
                Ok(e)
            }
            reply::ReplyBody::Error(e) => Err(e),
            _ => Err(-1),
        }
    }

    /// FORGET of `n` lookups of `nodeid` (the kernel's count drops too).
    pub fn forget(&mut self, nodeid: u64, n: u64) {
        self.drop_count(nodeid, n);
        let arg = abi::fuse_forget_in {
            nlookup: U64::new(n),
        };
        let _ = self.call(nodeid, &Operation::Forget { arg: &arg });
    }

    /// BATCH_FORGET of `(nodeid, n)` pairs.
    pub fn batch_forget(&mut self, items: &[(u64, u64)]) {
        let forgets: Vec<abi::fuse_forget_one> = items
            .iter()
            .map(|&(id, n)| {
                self.drop_count(id, n);
                abi::fuse_forget_one {
                    nodeid: U64::new(id),
                    nlookup: U64::new(n),
                }
            })
            .collect();
        let _ = self.call(0, &Operation::BatchForget { forgets: &forgets });
    }

    fn drop_count(&mut self, nodeid: u64, n: u64) {
        if let Some(c) = self.lookups.get_mut(&nodeid) {
            *c = c.saturating_sub(n);
            if *c == 0 {
                self.lookups.remove(&nodeid);
            }
        }
    }

    /// OPENDIR then READDIRPLUS from `offset` with a `size`-byte buffer; the kernel
    /// counts every entry with a nodeid except `.` and `..`. Returns
    /// `(name, nodeid, next offset)` per entry.
    pub fn readdirplus(
        &mut self,
        dir: u64,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> Result<Vec<(Vec<u8>, u64, u64)>, i32> {
        let arg = abi::fuse_read_in {
            fh: U64::new(fh),
            offset: U64::new(offset),
            size: U32::new(size),
            ..Default::default()
        };
        let r = self.call(dir, &Operation::Readdirplus { arg }).ok_or(0)?;
        let proto = self.proto();
        let mut out = Vec::new();
        match r.parse(&proto).map_err(|_| -1)?.body {
            reply::ReplyBody::DirentsPlus(list) => {
                for d in list {
                    let name = d.dirent.name.to_vec();
                    if name != b"." && name != b".." {
                        self.count(d.entry.nodeid);
                    }
                    out.push((name, d.entry.nodeid, d.dirent.off));
                }
                Ok(out)
            }
            reply::ReplyBody::Error(e) => Err(e),
            _ => Err(-1),
        }
    }

    /// OPEN or OPENDIR; returns the fh.
    pub fn open(&mut self, nodeid: u64, dir: bool, flags: u32) -> Result<u64, i32> {
        let arg = abi::fuse_open_in {
            flags: U32::new(flags),
            open_flags: U32::new(0),
        };
        let op = if dir {
            Operation::Opendir { arg: &arg }
        } else {
            Operation::Open { arg: &arg }
        };
        let r = self.call(nodeid, &op).ok_or(0)?;
        let proto = self.proto();
        match r.parse(&proto).map_err(|_| -1)?.body {
            reply::ReplyBody::Open(o) => Ok(o.fh),
            reply::ReplyBody::Error(e) => Err(e),
            _ => Err(-1),
        }
    }

    /// RELEASE or RELEASEDIR; returns 0 or the errno.
    pub fn release(&mut self, nodeid: u64, dir: bool, fh: u64) -> i32 {
        let arg = abi::fuse_release_in {
            fh: U64::new(fh),
            ..Default::default()
        };
        let op = if dir {
            Operation::Releasedir { arg: &arg }
        } else {
            Operation::Release { arg: &arg }
        };
        self.status(nodeid, &op)
    }

    /// Sends `op` and returns 0 for success or the errno of an error reply
    /// (-1 if the reply did not parse, -2 if there was none).
    pub fn status(&mut self, nodeid: u64, op: &Operation<'_>) -> i32 {
        let Some(r) = self.call(nodeid, op) else {
            return -2;
        };
        let proto = self.proto();
        match r.parse(&proto) {
            Ok(reply::Reply {
                body: reply::ReplyBody::Error(e),
                ..
            }) => e,
            Ok(_) => 0,
            Err(_) => -1,
        }
    }
}
