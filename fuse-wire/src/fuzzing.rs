//! Fuzz logic, kept in the library so that the cargo-fuzz targets in `fuzz/` are
//! thin wrappers and their corpora replay under plain `cargo test` on stable
//! (`fuse-wire/tests/fuzz_corpus.rs`).
//!
//! Each function takes arbitrary bytes, never panics on malformed input, and
//! panics only when an invariant of the codec is violated (that is what the fuzzer
//! reports):
//!
//! - [`parse_request`]: `request::parse` under one of [`PROTOCOLS`]; a parsed
//!   request re-encodes with `request::encode` to bytes that parse back to the same
//!   header fields, extensions and operation, and encoding that again gives the
//!   same bytes.
//! - [`parse_reply_side`]: daemon-to-kernel messages. Notifications
//!   (`notify::parse`), replies to a chosen opcode (`reply::parse`), and
//!   NOTIFY_REPLY requests; each parsed message is re-encoded with its encoder where
//!   one exists and must parse back equal.
//! - [`dirent`]: `DirentWriter` driven with arbitrary entries, buffer sizes and
//!   limits never writes past its limit, reports `Full` exactly when an entry does
//!   not fit, and its output parses back to the entries it accepted.
//!
//! Everything here is `no_std` and allocation-free like the rest of the crate:
//! re-encodings go to fixed stack buffers of [`SCRATCH`] bytes, and inputs whose
//! re-encoding would not fit are parsed but not round-tripped.
//!
//! # Selector bytes
//! The first bytes of an input choose what the rest is parsed as; corpus files
//! carry them. See each function.
use core::fmt::{self, Write};
use core::mem::size_of;

use zerocopy::IntoBytes;

use crate::abi;
use crate::error::EncodeError;
use crate::flags::{InitFlags, IoctlFlags};
use crate::negotiated::Negotiated;
use crate::notify::{self, Notification};
use crate::opcode::Opcode;
use crate::reply::{self, Dirent, DirentPlus, DirentWriter, Push, ReplyBody, ReplyShape};
use crate::request::encode::{encode, encoded_len, ExtensionArgs, HeaderFields};
use crate::request::{self, Operation, Request};

/// Size of the stack buffers re-encodings are written to. Inputs whose
/// re-encoding is larger are still parsed, but not round-tripped (run the fuzzer
/// with `-max_len` well below this).
pub const SCRATCH: usize = 16 * 1024;

/// Every INIT flag bit set: "a connection that agreed everything".
const ALL_FLAGS: InitFlags = InitFlags(u64::MAX);

/// The negotiated protocols the first byte of an input selects among
/// (`PROTOCOLS[byte % PROTOCOLS.len()]`): compat layouts before 7.9, 7.9, 7.12 and
/// 7.23, 7.36 with `SETXATTR_EXT`, 7.45 with no flag and 7.45 with every flag.
pub const PROTOCOLS: [Negotiated; 7] = [
    Negotiated::new(8, InitFlags::EMPTY),
    Negotiated::new(9, InitFlags::EMPTY),
    Negotiated::new(12, InitFlags::EMPTY),
    Negotiated::new(23, InitFlags::EMPTY),
    Negotiated::new(36, InitFlags::SETXATTR_EXT.union(InitFlags::INIT_EXT)),
    Negotiated::new(45, InitFlags::EMPTY),
    Negotiated::new(45, ALL_FLAGS),
];

/// The selector byte that picks `PROTOCOLS[i]` (used to build seed corpora).
pub const fn protocol_selector(i: usize) -> u8 {
    (i % PROTOCOLS.len()) as u8
}

fn protocol(selector: u8) -> Negotiated {
    let i = usize::from(selector) % PROTOCOLS.len();
    match PROTOCOLS.get(i) {
        Some(p) => *p,
        None => Negotiated::LATEST,
    }
}

/// A `fmt::Write` that discards everything: runs `Display` code without allocating.
struct Sink;

impl Write for Sink {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        core::hint::black_box(s);
        Ok(())
    }
}

fn display(v: &dyn fmt::Display) {
    // A Display impl may only fail if the sink does; ours never does.
    if write!(Sink, "{v}").is_err() {
        panic!("Display returned an error into an infallible sink");
    }
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

/// Fuzzes request parsing and the encode/parse round trip.
///
/// Input: `[protocol selector] ++ request bytes`. The request is parsed under
/// `PROTOCOLS[selector % 7]`; errors and requests are formatted with `Display`.
/// A parsed request is re-encoded (same header fields, same operation, its raw
/// extensions verbatim) and must satisfy:
/// - `encoded_len` equals what `encode` wrote;
/// - the re-encoding parses, with equal `unique`, `nodeid`, `uid`, `gid`, `pid`,
///   opcode, extensions and operation;
/// - encoding the re-parsed request gives the same bytes again.
///
/// Two differences are normalisations, not bugs: bytes after the last field an
/// opcode defines are ignored by the parser and not re-encoded (so the raw body
/// may be shorter), and INIT is re-encoded in the layout of the kernel minor it
/// declares, so fields the kernel of that minor does not have come back zero.
pub fn parse_request(data: &[u8]) {
    let Some((&sel, bytes)) = data.split_first() else {
        return;
    };
    round_trip_request(bytes, &protocol(sel));
}

fn round_trip_request(bytes: &[u8], proto: &Negotiated) {
    // The short path of `parse` must give exactly what the general parser gives.
    let general = request::parse_general_only(bytes, proto);
    if request::parse(bytes, proto) != general {
        panic!("parse and its general path disagree on {bytes:?}");
    }
    // The header parser must agree with the full parser on what it accepts.
    let header = request::parse_header(bytes);
    let req = match request::parse(bytes, proto) {
        Ok(req) => req,
        Err(e) => {
            display(&e);
            return;
        }
    };
    let Ok(header) = header else {
        panic!("parse accepted what parse_header refused");
    };
    assert_eq!(header.unique(), req.unique(), "header and request disagree");
    assert_eq!(
        req.len(),
        bytes.len(),
        "Request::len differs from the input"
    );
    display(&req);

    let mut first = [0u8; SCRATCH];
    let Some(n1) = reencode(&req, proto, &mut first) else {
        return;
    };
    let Some(enc1) = first.get(..n1) else {
        panic!("encode returned a length beyond its buffer");
    };
    let again = match request::parse(enc1, proto) {
        Ok(r) => r,
        Err(e) => panic!("re-encoded request does not parse: {e}\n{req:?}"),
    };
    check_same_request(&req, &again, enc1);

    let mut second = [0u8; SCRATCH];
    let Some(n2) = reencode(&again, proto, &mut second) else {
        panic!("re-parsed request does not encode");
    };
    if second.get(..n2) != Some(enc1) {
        panic!("encoding is not stable across a parse round trip: {req:?}");
    }
}

/// Encodes `req` as it was parsed into `buf`; `None` when it does not fit.
fn reencode(req: &Request<'_>, proto: &Negotiated, buf: &mut [u8]) -> Option<usize> {
    let h = req.header();
    let fields = HeaderFields {
        unique: h.unique(),
        nodeid: h.nodeid(),
        uid: h.uid(),
        gid: h.gid(),
        pid: h.pid(),
    };
    let ext = ExtensionArgs {
        raw: req.extensions().raw(),
        ..ExtensionArgs::NONE
    };
    let len = match encoded_len(proto, req.op(), &ext) {
        Ok(len) => len,
        Err(e) => panic!("a parsed request does not encode: {e}\n{req:?}"),
    };
    if len > buf.len() {
        return None;
    }
    match encode(buf, proto, &fields, req.op(), &ext) {
        Ok(n) if n == len => Some(n),
        Ok(n) => panic!("encoded_len said {len}, encode wrote {n}"),
        Err(e) => panic!("encode failed where encoded_len succeeded: {e}"),
    }
}

fn check_same_request(orig: &Request<'_>, again: &Request<'_>, enc: &[u8]) {
    let same_header = orig.unique() == again.unique()
        && orig.nodeid() == again.nodeid()
        && orig.uid() == again.uid()
        && orig.gid() == again.gid()
        && orig.pid() == again.pid()
        && orig.opcode() == again.opcode()
        && orig.header().extensions_len() == again.header().extensions_len();
    if !same_header {
        panic!("header changed in a round trip:\n{orig:?}\n{again:?}");
    }
    if orig.extensions() != again.extensions() {
        panic!("extensions changed in a round trip:\n{orig:?}\n{again:?}");
    }
    let same_op = match (orig.op(), again.op()) {
        (Operation::Init { arg: a }, Operation::Init { arg: b }) => {
            // INIT is laid out for the kernel minor it declares: the bytes that
            // layout has must survive, the rest reads as zero.
            let body = enc
                .len()
                .saturating_sub(size_of::<abi::fuse_in_header>())
                .saturating_sub(again.header().extensions_len());
            let (a, b) = (a.as_bytes(), b.as_bytes());
            a.get(..body) == b.get(..body)
                && b.get(body..).is_some_and(|t| t.iter().all(|&x| x == 0))
        }
        (a, b) => a == b,
    };
    if !same_op {
        panic!("operation changed in a round trip:\n{orig:?}\n{again:?}");
    }
}

// ---------------------------------------------------------------------------
// Replies, notifications and NOTIFY_REPLY
// ---------------------------------------------------------------------------

/// Fuzzes the daemon-to-kernel direction: notifications, replies, and the
/// NOTIFY_REPLY request that answers a NOTIFY_RETRIEVE.
///
/// Input: `[mode, protocol selector, opcode selector] ++ message bytes`.
/// - `mode % 3 == 0`: a notification (`notify::parse`); re-encoded with the
///   `notify` encoder of its code (under 7.45, so every code exists) when the
///   encoder accepts the values, it must parse back equal.
/// - `mode % 3 == 1`: a reply to the opcode `opcode selector` (255 stands for
///   CUSE_INIT), parsed with `reply::parse` (or as [`ReplyShape::XattrSize`] when
///   the shape is `Data` and bit 7 of `mode` is set); re-encoded with the
///   matching `reply` encoder and parsed back, it must be equal (listings and
///   device info compared entry by entry, since padding is not kept).
/// - `mode % 3 == 2`: the message bytes with their opcode field set to
///   NOTIFY_REPLY, through the request round trip of [`parse_request`].
pub fn parse_reply_side(data: &[u8]) {
    let [mode, sel, op, bytes @ ..] = data else {
        return;
    };
    let proto = protocol(*sel);
    match mode % 3 {
        0 => notification(bytes),
        1 => {
            let opcode = if *op == 0xff {
                Opcode::CUSE_INIT
            } else {
                Opcode(u32::from(*op))
            };
            reply_round_trip(bytes, opcode, mode & 0x80 != 0, &proto);
        }
        _ => notify_reply_request(bytes, &proto),
    }
}

fn notify_reply_request(bytes: &[u8], proto: &Negotiated) {
    let mut buf = [0u8; SCRATCH];
    let Some(dst) = buf.get_mut(..bytes.len()) else {
        return;
    };
    dst.copy_from_slice(bytes);
    // fuse_in_header.opcode is at offset 4.
    if let Some(opcode) = dst.get_mut(4..8) {
        opcode.copy_from_slice(&Opcode::NOTIFY_REPLY.0.to_ne_bytes());
    }
    round_trip_request(dst, proto);
}

/// Largest NOTIFY_PRUNE re-encoded (its nodeids are copied to the stack).
const MAX_PRUNE: usize = 512;

fn notification(bytes: &[u8]) {
    let n = match notify::parse(bytes) {
        Ok(n) => n,
        Err(e) => {
            display(&e);
            return;
        }
    };
    let _ = n.code();
    let p = Negotiated::LATEST;
    let mut buf = [0u8; SCRATCH];
    let mut ids = [0u64; MAX_PRUNE];
    let res = match n {
        Notification::Poll { kh } => notify::poll_wakeup(&mut buf, &p, kh),
        Notification::InvalInode { ino, off, len } => {
            notify::inval_inode(&mut buf, &p, ino, off, len)
        }
        Notification::InvalEntry {
            parent,
            name,
            flags,
        } => notify::inval_entry(&mut buf, &p, parent, name, flags),
        Notification::Store {
            nodeid,
            offset,
            data,
        } => {
            let stored = notify::store(&mut buf, &p, nodeid, offset, data);
            // The vectored form's header must match the copied form's.
            if let (Ok(_), Ok(h)) = (stored, notify::store_header(&p, nodeid, offset, data.len())) {
                if buf.get(..h.len()) != Some(&h[..]) {
                    panic!("store_header differs from store");
                }
            }
            stored
        }
        Notification::Retrieve {
            notify_unique,
            nodeid,
            offset,
            size,
        } => notify::retrieve(&mut buf, &p, notify_unique, nodeid, offset, size),
        Notification::Delete {
            parent,
            child,
            name,
        } => notify::delete(&mut buf, &p, parent, child, name),
        Notification::Resend => notify::resend(&mut buf, &p),
        Notification::IncEpoch => notify::inc_epoch(&mut buf, &p),
        Notification::Prune { nodeids } => {
            if nodeids.len() > MAX_PRUNE {
                return;
            }
            let mut k = 0;
            for (slot, id) in ids.iter_mut().zip(nodeids) {
                *slot = id;
                k += 1;
            }
            notify::prune(&mut buf, &p, ids.get(..k).unwrap_or(&[]))
        }
        // No encoder for codes this crate does not know.
        _ => return,
    };
    let len = match res {
        Ok(len) => len,
        // Names the encoder refuses (longer than 1024, '/', NUL) but the kernel
        // and the parser accept; messages that do not fit the scratch buffer.
        Err(EncodeError::BadName { .. } | EncodeError::BufferTooSmall { .. }) => return,
        Err(e) => panic!("a parsed notification does not encode: {e}\n{n:?}"),
    };
    let Some(enc) = buf.get(..len) else {
        panic!("notification encoder returned a length beyond its buffer");
    };
    match notify::parse(enc) {
        Ok(again) if again == n => {}
        Ok(again) => panic!("notification changed in a round trip:\n{n:?}\n{again:?}"),
        Err(e) => panic!("re-encoded notification does not parse: {e}\n{n:?}"),
    }
}

/// Most CUSE device-info strings re-encoded (they are collected on the stack).
const MAX_DEV_INFO: usize = 64;

fn reply_round_trip(bytes: &[u8], opcode: Opcode, xattr_size: bool, proto: &Negotiated) {
    let shape = match ReplyShape::for_opcode(opcode) {
        Some(ReplyShape::Data) if xattr_size => ReplyShape::XattrSize,
        Some(s) => s,
        None => {
            // FORGET, BATCH_FORGET, NOTIFY_REPLY: never answered; must be an error.
            if reply::parse(bytes, opcode, proto).is_ok() {
                panic!("a reply to {opcode} was accepted");
            }
            return;
        }
    };
    let r = match reply::parse_as(bytes, opcode, shape, proto) {
        Ok(r) => r,
        Err(e) => {
            display(&e);
            return;
        }
    };
    if shape != ReplyShape::XattrSize && reply::parse(bytes, opcode, proto) != Ok(r) {
        panic!("parse and parse_as with the opcode's shape disagree");
    }
    let u = r.unique;
    let mut buf = [0u8; SCRATCH];
    let res = match r.body {
        ReplyBody::Error(e) => reply::error(&mut buf, u, e),
        ReplyBody::Empty => reply::empty(&mut buf, u),
        ReplyBody::Entry(e) => reply::entry(&mut buf, u, proto, &e),
        ReplyBody::Attr { attr_valid, attr } => reply::attr(&mut buf, u, proto, attr_valid, &attr),
        ReplyBody::Statx {
            attr_valid,
            flags,
            stat,
        } => reply::statx(&mut buf, u, attr_valid, flags, stat),
        ReplyBody::Open(o) => reply::open(&mut buf, u, proto, &o),
        ReplyBody::Create { entry, open } if opcode == Opcode::TMPFILE => {
            reply::tmpfile(&mut buf, u, proto, &entry, &open)
        }
        ReplyBody::Create { entry, open } => reply::create(&mut buf, u, proto, &entry, &open),
        ReplyBody::Write(n) => reply::write(&mut buf, u, n),
        ReplyBody::Statfs(s) => reply::statfs(&mut buf, u, proto, &s),
        ReplyBody::Data(d) => {
            let written = reply::data(&mut buf, u, d);
            if let (Ok(_), Ok(h)) = (written, reply::data_header(u, d.len())) {
                if buf.get(..h.len()) != Some(&h[..]) {
                    panic!("data_header differs from data");
                }
            }
            written
        }
        ReplyBody::XattrSize(n) => reply::xattr_size(&mut buf, u, n),
        ReplyBody::Lk(l) => reply::lk(&mut buf, u, &l),
        ReplyBody::Bmap(b) => reply::bmap(&mut buf, u, b),
        ReplyBody::Ioctl { result, data, .. } => reply::ioctl(&mut buf, u, result, data),
        ReplyBody::IoctlRetry {
            in_iovs, out_iovs, ..
        } => {
            let mut ins = [reply::IoctlIovec::default(); 256];
            let mut outs = [reply::IoctlIovec::default(); 256];
            let (ni, no) = (in_iovs.len(), out_iovs.len());
            for (slot, v) in ins.iter_mut().zip(in_iovs) {
                *slot = v;
            }
            for (slot, v) in outs.iter_mut().zip(out_iovs) {
                *slot = v;
            }
            reply::ioctl_retry(
                &mut buf,
                u,
                proto,
                ins.get(..ni).unwrap_or(&[]),
                outs.get(..no).unwrap_or(&[]),
            )
        }
        ReplyBody::Poll(p) => reply::poll(&mut buf, u, p),
        ReplyBody::Lseek(o) => reply::lseek(&mut buf, u, o),
        ReplyBody::CopyFileRange64(n) => reply::copy_file_range_64(&mut buf, u, n),
        ReplyBody::Dirents(d) => {
            let limit = d.as_bytes().len();
            let Ok(mut w) = DirentWriter::new(&mut buf, u, limit) else {
                return;
            };
            for e in d {
                match w.push(&e) {
                    Ok(Push::Added) => {}
                    Ok(Push::Full) => panic!("a parsed listing does not fit its own size"),
                    Err(_) => return, // a name the encoder refuses (see notification)
                }
            }
            w.finish()
        }
        ReplyBody::DirentsPlus(d) => {
            let limit = d.as_bytes().len();
            let Ok(mut w) = DirentWriter::new(&mut buf, u, limit) else {
                return;
            };
            for e in d {
                match w.push_plus(&e) {
                    Ok(Push::Added) => {}
                    Ok(Push::Full) => panic!("a parsed listing does not fit its own size"),
                    Err(_) => return,
                }
            }
            w.finish()
        }
        ReplyBody::Init { out, body_len } => {
            // The encoder writes the layout of a kernel minor: 8, 24 or 64 bytes.
            let kernel_minor = match body_len {
                8 => 4,
                24 => 22,
                64 => abi::FUSE_KERNEL_MINOR_VERSION,
                _ => return,
            };
            reply::init(&mut buf, u, kernel_minor, &out)
        }
        ReplyBody::CuseInit { out, dev_info } => {
            let mut strs = [""; MAX_DEV_INFO];
            let mut k = 0;
            for s in dev_info {
                let Ok(s) = core::str::from_utf8(s) else {
                    return;
                };
                let Some(slot) = strs.get_mut(k) else {
                    return;
                };
                *slot = s;
                k += 1;
            }
            reply::cuse_init(&mut buf, u, &out, strs.get(..k).unwrap_or(&[]))
        }
        ReplyBody::Unknown(b) => reply::data(&mut buf, u, b),
    };
    let len = match res {
        Ok(len) => len,
        Err(
            EncodeError::BufferTooSmall { .. }
            | EncodeError::NotSupported { .. }
            | EncodeError::BadName { .. }
            | EncodeError::Invalid { .. },
        ) if refusal_expected(&r.body) => return,
        Err(e) => panic!("a parsed reply does not encode: {e}\n{r:?}"),
    };
    let Some(enc) = buf.get(..len) else {
        panic!("reply encoder returned a length beyond its buffer");
    };
    let again = match reply::parse_as(enc, opcode, shape, proto) {
        Ok(a) => a,
        Err(e) => panic!("re-encoded reply does not parse: {e}\n{r:?}"),
    };
    if !same_reply(&r.body, &again.body) || r.unique != again.unique {
        panic!("reply changed in a round trip:\n{r:?}\n{again:?}");
    }
}

/// Replies the parser accepts (as the kernel would) that an encoder may
/// legitimately refuse: passthrough fields before 7.40, IOCTL retry before 7.16,
/// CUSE device info with empty strings, and anything not fitting the scratch
/// buffer.
fn refusal_expected(body: &ReplyBody<'_>) -> bool {
    matches!(
        body,
        ReplyBody::Open(_)
            | ReplyBody::Create { .. }
            | ReplyBody::IoctlRetry { .. }
            | ReplyBody::CuseInit { .. }
            | ReplyBody::Data(_)
            | ReplyBody::Unknown(_)
            | ReplyBody::Ioctl { .. }
    )
}

fn same_reply(a: &ReplyBody<'_>, b: &ReplyBody<'_>) -> bool {
    match (a, b) {
        (ReplyBody::Dirents(x), ReplyBody::Dirents(y)) => Iterator::eq(*x, *y),
        (ReplyBody::DirentsPlus(x), ReplyBody::DirentsPlus(y)) => Iterator::eq(*x, *y),
        // `reply::ioctl` writes flags 0: the flags are not round-tripped.
        (
            ReplyBody::Ioctl {
                result: r1,
                data: d1,
                ..
            },
            ReplyBody::Ioctl {
                result: r2,
                data: d2,
                flags,
            },
        ) => r1 == r2 && d1 == d2 && *flags == IoctlFlags(0),
        // `reply::ioctl_retry` writes exactly FUSE_IOCTL_RETRY.
        (
            ReplyBody::IoctlRetry {
                in_iovs: i1,
                out_iovs: o1,
                ..
            },
            ReplyBody::IoctlRetry {
                in_iovs: i2,
                out_iovs: o2,
                flags,
            },
        ) => i1 == i2 && o1 == o2 && *flags == IoctlFlags::RETRY,
        // The encoder NUL-terminates every string, so compare the strings.
        (
            ReplyBody::CuseInit {
                out: o1,
                dev_info: d1,
            },
            ReplyBody::CuseInit {
                out: o2,
                dev_info: d2,
            },
        ) => o1 == o2 && Iterator::eq(*d1, *d2),
        (a, b) => a == b,
    }
}

// ---------------------------------------------------------------------------
// Directory listings
// ---------------------------------------------------------------------------

/// A little cursor over fuzz input.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
}

/// Most entries one [`dirent`] input pushes (they are remembered on the stack).
const MAX_ENTRIES: usize = 256;

/// Fuzzes [`DirentWriter`].
///
/// Input: `[flags, buffer len (u16 LE), max_size (u16 LE)]` then entries, each
/// `[name length, ino byte, type byte] ++ name`. Bit 0 of `flags` selects
/// READDIRPLUS; bit 1 makes the second push use the other kind when the first
/// fixed the writer's kind (must fail and write nothing); bit 2 makes `unique` 0 (must be refused).
/// The buffer is `buffer len % SCRATCH` bytes. Invariants:
/// - `push` fails exactly for names `validate_name` refuses, and then writes
///   nothing;
/// - `push` says `Full` exactly when the padded entry does not fit in
///   `min(buffer - 16, max_size)`, and then writes nothing;
/// - `finish` returns `16 + body_len`, at most the buffer and `16 + max_size`;
/// - the output parses as a READDIR / READDIRPLUS reply whose entries are exactly
///   the ones accepted, in order.
pub fn dirent(data: &[u8]) {
    let mut input = Bytes(data);
    let (Some(flags), Some(buf_len), Some(max_size)) = (input.u8(), input.u16(), input.u16())
    else {
        return;
    };
    let plus = flags & 1 != 0;
    let mix = flags & 2 != 0;
    let unique = if flags & 4 != 0 { 0 } else { 7 };
    let max_size = usize::from(max_size);
    let mut storage = [0u8; SCRATCH];
    let buf_len = usize::from(buf_len) % SCRATCH;
    let Some(buf) = storage.get_mut(..buf_len) else {
        return;
    };
    let mut w = match DirentWriter::new(buf, unique, max_size) {
        Ok(w) => w,
        Err(_) if unique == 0 || buf_len < reply::OUT_HEADER_SIZE => return,
        Err(e) => panic!("DirentWriter::new refused a valid buffer: {e}"),
    };
    if unique == 0 || buf_len < reply::OUT_HEADER_SIZE {
        panic!("DirentWriter::new accepted unique 0 or a buffer without room for the header");
    }
    let limit = (buf_len - reply::OUT_HEADER_SIZE).min(max_size);
    // What was accepted: (name range in `data`, ino, typ, off).
    let mut accepted = [(0usize, 0usize, 0u64, 0u32); MAX_ENTRIES];
    let mut n_acc = 0;
    // Whether the writer's kind is fixed (a push with a valid name happened), and
    // how many pushes were attempted.
    let mut kind_set = false;
    let mut attempt = 0usize;
    while n_acc < MAX_ENTRIES {
        let (Some(nlen), Some(ino), Some(typ)) = (input.u8(), input.u8(), input.u8()) else {
            break;
        };
        let start = data.len() - input.0.len();
        let Some(name) = input.take(usize::from(nlen)) else {
            break;
        };
        let off = (n_acc as u64) + 1;
        let d = Dirent {
            ino: u64::from(ino),
            off,
            typ: u32::from(typ),
            name,
        };
        // With `mix`, the second push uses the other kind, once the kind is fixed.
        let wrong_kind = mix && attempt == 1 && kind_set;
        attempt += 1;
        let use_plus = plus != wrong_kind;
        let before = w.body_len();
        let res = if use_plus {
            w.push_plus(&DirentPlus {
                entry: reply::Entry {
                    nodeid: u64::from(ino),
                    generation: u64::from(typ),
                    ..Default::default()
                },
                dirent: d,
            })
        } else {
            w.push(&d)
        };
        let size = if use_plus {
            reply::direntplus_size(name.len())
        } else {
            reply::dirent_size(name.len())
        };
        let name_ok = reply::validate_name(name).is_ok();
        match res {
            Err(_) => {
                let explained = wrong_kind || !name_ok;
                if !explained || w.body_len() != before {
                    panic!("push failed without cause, or wrote on failure");
                }
            }
            Ok(_) if wrong_kind || !name_ok => {
                panic!("push accepted a mixed listing or a bad name")
            }
            Ok(Push::Full) => {
                if before + size <= limit || w.body_len() != before {
                    panic!("Full for an entry that fits, or Full wrote bytes");
                }
            }
            Ok(Push::Added) => {
                if before + size > limit || w.body_len() != before + size {
                    panic!("Added an entry beyond the limit, or of the wrong size");
                }
                if let Some(slot) = accepted.get_mut(n_acc) {
                    *slot = (start, name.len(), u64::from(ino), u32::from(typ));
                }
                n_acc += 1;
            }
        }
        kind_set |= name_ok && !wrong_kind;
        if w.count() != n_acc || w.remaining() != limit - w.body_len() {
            panic!("count or remaining is wrong");
        }
    }
    let body_len = w.body_len();
    let total = match w.finish() {
        Ok(t) => t,
        Err(e) => panic!("finish failed: {e}"),
    };
    if total != reply::OUT_HEADER_SIZE + body_len || total > buf_len || body_len > max_size {
        panic!("finish returned a wrong length");
    }
    let Some(out) = storage.get(..total) else {
        panic!("finish returned a length beyond its buffer");
    };
    let opcode = if plus {
        Opcode::READDIRPLUS
    } else {
        Opcode::READDIR
    };
    let parsed = match reply::parse(out, opcode, &Negotiated::LATEST) {
        Ok(r) => r,
        Err(e) => panic!("a written listing does not parse: {e}"),
    };
    let expected = accepted.get(..n_acc).unwrap_or(&[]);
    let name_of = |start: usize, len: usize| data.get(start..start + len).unwrap_or(&[]);
    let ok = match parsed.body {
        ReplyBody::Dirents(d) if !plus => {
            d.count() == n_acc
                && d.zip(expected)
                    .enumerate()
                    .all(|(i, (e, &(s, l, ino, typ)))| {
                        e.name == name_of(s, l)
                            && e.ino == ino
                            && e.typ == typ
                            && e.off == i as u64 + 1
                    })
        }
        ReplyBody::DirentsPlus(d) if plus => {
            d.count() == n_acc
                && d.zip(expected)
                    .enumerate()
                    .all(|(i, (e, &(s, l, ino, typ)))| {
                        let x = &e.dirent;
                        x.name == name_of(s, l)
                            && x.ino == ino
                            && x.typ == typ
                            && x.off == i as u64 + 1
                            && e.entry.nodeid == ino
                            && e.entry.generation == u64::from(typ)
                    })
        }
        _ => false,
    };
    if !ok || parsed.unique != unique {
        panic!("a written listing parses to other entries");
    }
}
