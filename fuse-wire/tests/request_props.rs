//! Property and unit tests of the request codec: for every opcode and several
//! negotiated protocols, encode then parse gives the operation, header and
//! extensions back; arbitrary and mutated bytes never make `parse` panic; and each
//! `ParseError` case has a targeted test.
use fuse_wire::abi;
use fuse_wire::request::encode::{encode, encoded_len, ExtensionArgs, HeaderFields};
use fuse_wire::request::{init_flags, parse_header, Operation, Request, SecCtx};
use fuse_wire::{parse, EncodeError, InitFlags, Negotiated, Opcode, ParseError};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use zerocopy::byteorder::native_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

// ---------------------------------------------------------------------------
// Protocols under test
// ---------------------------------------------------------------------------

fn all_named_init_flags() -> InitFlags {
    InitFlags::NAMED
        .iter()
        .fold(InitFlags::EMPTY, |acc, (_, f)| acc | *f)
}

fn protos() -> Vec<Negotiated> {
    vec![
        Negotiated::new(8, InitFlags::EMPTY),
        Negotiated::new(9, InitFlags::EMPTY),
        Negotiated::new(12, InitFlags::ASYNC_READ),
        Negotiated::new(23, InitFlags::WRITEBACK_CACHE),
        Negotiated::new(36, InitFlags::SETXATTR_EXT | InitFlags::INIT_EXT),
        Negotiated::new(45, all_named_init_flags()),
    ]
}

// ---------------------------------------------------------------------------
// Building operations from owned random material
// ---------------------------------------------------------------------------

/// Owned random material an operation of any opcode borrows from.
#[derive(Clone, Debug)]
struct Seed {
    fixed: Vec<u8>,
    name1: Vec<u8>,
    name2: Vec<u8>,
    data: Vec<u8>,
    entries: Vec<u8>,
    n_entries: usize,
    init_minor: u32,
    unknown: u32,
    header: HeaderFields,
    secctx: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    groups: Option<Vec<u32>>,
}

fn name_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(1u8..=255, 0..16)
}

prop_compose! {
    fn header_strategy()(unique in any::<u64>(), nodeid in any::<u64>(), uid in any::<u32>(),
                         gid in any::<u32>(), pid in any::<u32>()) -> HeaderFields {
        HeaderFields { unique, nodeid, uid, gid, pid }
    }
}

prop_compose! {
    fn seed_strategy()(
        fixed in prop::collection::vec(any::<u8>(), 128),
        name1 in name_strategy(),
        name2 in name_strategy(),
        data in prop::collection::vec(any::<u8>(), 0..48),
        entries in prop::collection::vec(any::<u8>(), 64),
        n_entries in 0usize..=4,
        init_minor in prop::sample::select(vec![5u32, 9, 23, 35, 36, 45, 99]),
        unknown in any::<u32>(),
        header in header_strategy(),
        secctx in prop::option::of(prop::collection::vec(
            (name_strategy(), prop::collection::vec(any::<u8>(), 0..12)), 0..3)),
        groups in prop::option::of(prop::collection::vec(any::<u32>(), 0..4)),
    ) -> Seed {
        Seed { fixed, name1, name2, data, entries, n_entries, init_minor, unknown, header, secctx, groups }
    }
}

/// An opcode this crate does not know, derived from `v`.
fn unknown_opcode(v: u32) -> Opcode {
    if Opcode(v).name().is_some() {
        Opcode(v | 0x1_0000)
    } else {
        Opcode(v)
    }
}

/// Wire size of `fuse_init_in` for a kernel of `minor`.
fn init_wire(minor: u32) -> usize {
    match minor {
        0..=5 => 8,
        6..=35 => 16,
        _ => 64,
    }
}

fn getattr_wire(p: &Negotiated) -> usize {
    if p.minor < 9 {
        0
    } else {
        16
    }
}

/// Patches the declared sizes inside the fixed bytes so they match the data.
fn patch_fixed(op: Opcode, seed: &Seed) -> Vec<u8> {
    let mut fixed = seed.fixed.clone();
    let len = U32::new(seed.data.len() as u32);
    match op {
        Opcode::IOCTL => {
            abi::fuse_ioctl_in::mut_from_prefix(&mut fixed)
                .unwrap()
                .0
                .in_size = len
        }
        Opcode::NOTIFY_REPLY => {
            abi::fuse_notify_retrieve_in::mut_from_prefix(&mut fixed)
                .unwrap()
                .0
                .size = len
        }
        Opcode::WRITE => {
            abi::fuse_write_in::mut_from_prefix(&mut fixed)
                .unwrap()
                .0
                .size = len
        }
        Opcode::SETXATTR => {
            abi::fuse_setxattr_in::mut_from_prefix(&mut fixed)
                .unwrap()
                .0
                .size = len
        }
        Opcode::INIT => {
            abi::fuse_init_in::mut_from_prefix(&mut fixed)
                .unwrap()
                .0
                .minor = U32::new(seed.init_minor)
        }
        _ => {}
    }
    fixed
}

fn r<T: FromBytes + KnownLayout + Immutable>(fixed: &[u8]) -> &T {
    T::ref_from_prefix(fixed).unwrap().0
}

/// A by-value struct with the bytes beyond `wire` zeroed, as parse gives it back.
fn v<T: FromBytes + IntoBytes>(fixed: &[u8], wire: usize) -> T {
    let mut t = T::read_from_prefix(fixed).unwrap().0;
    let b = t.as_mut_bytes();
    let n = wire.min(b.len());
    b[n..].fill(0);
    t
}

/// The operation of `op` built from `seed` (and `fixed`, its patched fixed bytes),
/// normalized to what `proto` can carry.
fn build<'s>(op: Opcode, seed: &'s Seed, fixed: &'s [u8], p: &Negotiated) -> Operation<'s> {
    let n1 = &seed.name1[..];
    let n2 = &seed.name2[..];
    let data = &seed.data[..];
    let forgets = <[abi::fuse_forget_one]>::ref_from_bytes(&seed.entries[..seed.n_entries * 16]);
    let mappings =
        <[abi::fuse_removemapping_one]>::ref_from_bytes(&seed.entries[..seed.n_entries * 16]);
    match op {
        Opcode::LOOKUP => Operation::Lookup { name: n1 },
        Opcode::FORGET => Operation::Forget { arg: r(fixed) },
        Opcode::GETATTR => Operation::Getattr {
            arg: v(fixed, getattr_wire(p)),
        },
        Opcode::SETATTR => Operation::Setattr { arg: r(fixed) },
        Opcode::READLINK => Operation::Readlink,
        Opcode::SYMLINK => Operation::Symlink {
            name: n1,
            target: n2,
        },
        Opcode::MKNOD => Operation::Mknod {
            arg: v(fixed, p.mknod_in_size()),
            name: n1,
        },
        Opcode::MKDIR => Operation::Mkdir {
            arg: r(fixed),
            name: n1,
        },
        Opcode::UNLINK => Operation::Unlink { name: n1 },
        Opcode::RMDIR => Operation::Rmdir { name: n1 },
        Opcode::RENAME => Operation::Rename {
            arg: r(fixed),
            name: n1,
            newname: n2,
        },
        Opcode::LINK => Operation::Link {
            arg: r(fixed),
            newname: n1,
        },
        Opcode::OPEN => Operation::Open { arg: r(fixed) },
        Opcode::READ => Operation::Read {
            arg: v(fixed, p.read_in_size()),
        },
        Opcode::WRITE => Operation::Write {
            arg: v(fixed, p.write_in_size()),
            data,
        },
        Opcode::STATFS => Operation::Statfs,
        Opcode::RELEASE => Operation::Release { arg: r(fixed) },
        Opcode::FSYNC => Operation::Fsync { arg: r(fixed) },
        Opcode::SETXATTR => Operation::Setxattr {
            arg: v(fixed, p.setxattr_in_size()),
            name: n1,
            value: data,
        },
        Opcode::GETXATTR => Operation::Getxattr {
            arg: r(fixed),
            name: n1,
        },
        Opcode::LISTXATTR => Operation::Listxattr { arg: r(fixed) },
        Opcode::REMOVEXATTR => Operation::Removexattr { name: n1 },
        Opcode::FLUSH => Operation::Flush { arg: r(fixed) },
        Opcode::INIT => Operation::Init {
            arg: v(fixed, init_wire(seed.init_minor)),
        },
        Opcode::OPENDIR => Operation::Opendir { arg: r(fixed) },
        Opcode::READDIR => Operation::Readdir {
            arg: v(fixed, p.read_in_size()),
        },
        Opcode::RELEASEDIR => Operation::Releasedir { arg: r(fixed) },
        Opcode::FSYNCDIR => Operation::Fsyncdir { arg: r(fixed) },
        Opcode::GETLK => Operation::Getlk { arg: r(fixed) },
        Opcode::SETLK => Operation::Setlk { arg: r(fixed) },
        Opcode::SETLKW => Operation::Setlkw { arg: r(fixed) },
        Opcode::ACCESS => Operation::Access { arg: r(fixed) },
        Opcode::CREATE => Operation::Create {
            arg: v(fixed, p.create_in_size()),
            name: n1,
        },
        Opcode::INTERRUPT => Operation::Interrupt { arg: r(fixed) },
        Opcode::BMAP => Operation::Bmap { arg: r(fixed) },
        Opcode::DESTROY => Operation::Destroy,
        Opcode::IOCTL => Operation::Ioctl {
            arg: r(fixed),
            data,
        },
        Opcode::POLL => Operation::Poll { arg: r(fixed) },
        Opcode::NOTIFY_REPLY => Operation::NotifyReply {
            arg: r(fixed),
            data,
        },
        Opcode::BATCH_FORGET => Operation::BatchForget {
            forgets: forgets.unwrap(),
        },
        Opcode::FALLOCATE => Operation::Fallocate { arg: r(fixed) },
        Opcode::READDIRPLUS => Operation::Readdirplus {
            arg: v(fixed, p.read_in_size()),
        },
        Opcode::RENAME2 => Operation::Rename2 {
            arg: r(fixed),
            name: n1,
            newname: n2,
        },
        Opcode::LSEEK => Operation::Lseek { arg: r(fixed) },
        Opcode::COPY_FILE_RANGE => Operation::CopyFileRange { arg: r(fixed) },
        Opcode::SETUPMAPPING => Operation::Setupmapping { arg: r(fixed) },
        Opcode::REMOVEMAPPING => Operation::Removemapping {
            mappings: mappings.unwrap(),
        },
        Opcode::SYNCFS => Operation::Syncfs { arg: r(fixed) },
        Opcode::TMPFILE => Operation::Tmpfile {
            arg: r(fixed),
            name: n1,
        },
        Opcode::STATX => Operation::Statx { arg: r(fixed) },
        Opcode::COPY_FILE_RANGE_64 => Operation::CopyFileRange64 { arg: r(fixed) },
        Opcode::CUSE_INIT => Operation::CuseInit { arg: r(fixed) },
        other => Operation::Unknown {
            opcode: other,
            body: data,
        },
    }
}

/// Every known opcode plus one unknown.
fn opcodes(seed: &Seed) -> Vec<Opcode> {
    let mut v = Opcode::ALL.to_vec();
    v.push(unknown_opcode(seed.unknown));
    v
}

fn encode_vec(
    p: &Negotiated,
    h: &HeaderFields,
    op: &Operation<'_>,
    ext: &ExtensionArgs<'_>,
) -> Vec<u8> {
    let len = encoded_len(p, op, ext).expect("encoded_len");
    let mut buf = vec![0xa5u8; len + 7];
    let n = encode(&mut buf, p, h, op, ext).expect("encode");
    assert_eq!(n, len);
    buf.truncate(n);
    buf
}

fn check_roundtrip(seed: &Seed) {
    let secctx: Option<Vec<SecCtx<'_>>> = seed.secctx.as_ref().map(|v| {
        v.iter()
            .map(|(n, c)| SecCtx {
                name: n,
                context: c,
            })
            .collect()
    });
    let ext = ExtensionArgs {
        security_contexts: secctx.as_deref(),
        supp_groups: seed.groups.as_deref(),
        raw: &[],
    };
    for p in protos() {
        for opc in opcodes(seed) {
            let fixed = patch_fixed(opc, seed);
            let op = build(opc, seed, &fixed, &p);
            assert_eq!(op.opcode(), opc);
            let bytes = encode_vec(&p, &seed.header, &op, &ext);
            let hdr = abi::fuse_in_header::read_from_prefix(&bytes).unwrap().0;
            assert_eq!(hdr.len.get() as usize, bytes.len(), "{opc:?}");

            let req = parse(&bytes, &p).unwrap_or_else(|e| panic!("{opc:?} under {p:?}: {e}"));
            assert_eq!(req.op(), &op, "{opc:?} under {p:?}");
            assert_eq!(req.opcode(), opc);
            assert_eq!(req.unique(), seed.header.unique);
            assert_eq!(req.is_resend(), seed.header.unique >> 63 == 1);
            assert_eq!(req.nodeid(), seed.header.nodeid);
            assert_eq!(req.uid(), seed.header.uid);
            assert_eq!(req.gid(), seed.header.gid);
            assert_eq!(req.pid(), seed.header.pid);
            assert_eq!(req.len(), bytes.len());

            let exts = req.extensions();
            assert_eq!(exts.has_security_context(), secctx.is_some());
            let got: Vec<SecCtx<'_>> = exts.security_contexts().collect();
            assert_eq!(got, secctx.clone().unwrap_or_default());
            let groups = exts
                .supp_groups()
                .map(|g| g.iter().map(|x| x.get()).collect::<Vec<_>>());
            assert_eq!(groups, seed.groups);

            // Re-encoding the parsed request gives the same bytes.
            let raw_ext = ExtensionArgs {
                raw: exts.raw(),
                ..ExtensionArgs::NONE
            };
            let again = encode_vec(&p, &seed.header, req.op(), &raw_ext);
            assert_eq!(again, bytes, "{opc:?}");

            // The one-line display never panics and starts with the opcode.
            let line = req.to_string();
            assert!(line.starts_with(&format!("{opc}")), "{line}");
        }
    }
}

/// Parses arbitrary bytes under every protocol; Ok results are displayed and
/// re-encoded. Nothing may panic.
fn parse_anything(bytes: &[u8]) {
    for p in protos() {
        let _ = parse_header(bytes);
        if let Ok(req) = parse(bytes, &p) {
            let _ = req.to_string();
            let _ = req.extensions().security_contexts().count();
            let ext = ExtensionArgs {
                raw: req.extensions().raw(),
                ..ExtensionArgs::NONE
            };
            let h = header_of(&req);
            let mut buf = vec![0u8; bytes.len() + 64];
            let _ = encode(&mut buf, &p, &h, req.op(), &ext);
        }
    }
}

fn header_of(req: &Request<'_>) -> HeaderFields {
    HeaderFields {
        unique: req.unique(),
        nodeid: req.nodeid(),
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

/// Sets the header's `len` to the buffer's length (when there is a header).
fn fix_len(bytes: &mut [u8]) {
    let n = bytes.len() as u32;
    if let Ok((h, _)) = abi::fuse_in_header::mut_from_prefix(bytes) {
        h.len = U32::new(n);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/request_props.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn encode_then_parse_gives_back_every_opcode(seed in seed_strategy()) {
        check_roundtrip(&seed);
    }

    #[test]
    fn arbitrary_bytes_never_panic(mut bytes in prop::collection::vec(any::<u8>(), 0..200),
                                   opcode_idx in any::<prop::sample::Index>(),
                                   extlen in 0u16..8,
                                   fix in any::<bool>()) {
        parse_anything(&bytes);
        // Give the bytes a plausible header so the body parsers are reached.
        if bytes.len() >= 40 {
            let op = Opcode::ALL[opcode_idx.index(Opcode::ALL.len())];
            let h = abi::fuse_in_header::mut_from_prefix(&mut bytes[..]).unwrap().0;
            h.opcode = U32::new(op.0);
            h.total_extlen = U16::new(extlen);
            if fix {
                fix_len(&mut bytes);
            }
            parse_anything(&bytes);
        }
    }

    #[test]
    fn mutated_and_truncated_encodings_never_panic(
        seed in seed_strategy(),
        opcode_idx in any::<prop::sample::Index>(),
        proto_idx in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
        fix in any::<bool>(),
    ) {
        let ps = protos();
        let p = ps[proto_idx.index(ps.len())];
        let ops = opcodes(&seed);
        let opc = ops[opcode_idx.index(ops.len())];
        let fixed = patch_fixed(opc, &seed);
        let op = build(opc, &seed, &fixed, &p);
        let secctx: Option<Vec<SecCtx<'_>>> = seed.secctx.as_ref().map(|v| {
            v.iter().map(|(n, c)| SecCtx { name: n, context: c }).collect()
        });
        let ext = ExtensionArgs {
            security_contexts: secctx.as_deref(),
            supp_groups: seed.groups.as_deref(),
            raw: &[],
        };
        let mut bytes = encode_vec(&p, &seed.header, &op, &ext);
        for (i, b) in flips {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        if truncate {
            let n = cut.index(bytes.len() + 1);
            bytes.truncate(n);
        }
        if fix {
            fix_len(&mut bytes);
        }
        parse_anything(&bytes);
    }
}

// ---------------------------------------------------------------------------
// Targeted tests
// ---------------------------------------------------------------------------

const P: Negotiated = Negotiated::LATEST;

fn hdr(unique: u64) -> HeaderFields {
    HeaderFields {
        unique,
        nodeid: 1,
        uid: 1000,
        gid: 100,
        pid: 42,
    }
}

fn lookup_bytes(name: &[u8]) -> Vec<u8> {
    encode_vec(
        &P,
        &hdr(12),
        &Operation::Lookup { name },
        &ExtensionArgs::NONE,
    )
}

#[test]
fn short_header() {
    let bytes = lookup_bytes(b"foo");
    for n in 0..40 {
        assert_eq!(
            parse(&bytes[..n], &P).unwrap_err(),
            ParseError::ShortHeader { need: 40, have: n }
        );
        assert!(parse_header(&bytes[..n]).is_err());
    }
}

#[test]
fn len_larger_than_buffer() {
    let bytes = lookup_bytes(b"foo");
    let cut = &bytes[..bytes.len() - 1];
    assert_eq!(
        parse(cut, &P).unwrap_err(),
        ParseError::LengthMismatch {
            header: bytes.len() as u32,
            buffer: bytes.len() - 1
        }
    );
}

#[test]
fn len_smaller_than_buffer() {
    let mut bytes = lookup_bytes(b"foo");
    bytes.extend_from_slice(&[0; 8]);
    assert_eq!(
        parse(&bytes, &P).unwrap_err(),
        ParseError::LengthMismatch {
            header: bytes.len() as u32 - 8,
            buffer: bytes.len()
        }
    );
}

#[test]
fn name_without_nul() {
    let mut bytes = lookup_bytes(b"foo");
    bytes.pop(); // drop the NUL
    fix_len(&mut bytes);
    assert_eq!(
        parse(&bytes, &P).unwrap_err(),
        ParseError::MissingNul {
            opcode: Opcode::LOOKUP,
            what: "name"
        }
    );
    // The header alone still parses, so the request can be answered.
    let h = parse_header(&bytes).unwrap();
    assert_eq!((h.unique(), h.opcode()), (12, Opcode::LOOKUP));
}

#[test]
fn second_name_without_nul() {
    let op = Operation::Rename {
        arg: &abi::fuse_rename_in {
            newdir: U64::new(5),
        },
        name: b"a",
        newname: b"b",
    };
    let mut bytes = encode_vec(&P, &hdr(3), &op, &ExtensionArgs::NONE);
    bytes.pop();
    fix_len(&mut bytes);
    assert_eq!(
        parse(&bytes, &P).unwrap_err(),
        ParseError::MissingNul {
            opcode: Opcode::RENAME,
            what: "new name"
        }
    );
}

#[test]
fn batch_forget_count_overrun() {
    let one = abi::fuse_forget_one {
        nodeid: U64::new(7),
        nlookup: U64::new(2),
    };
    let forgets = [one, one];
    let op = Operation::BatchForget { forgets: &forgets };
    let mut bytes = encode_vec(&P, &hdr(4), &op, &ExtensionArgs::NONE);
    // Claim 3 entries; 2 are there.
    bytes[40..44].copy_from_slice(&3u32.to_ne_bytes());
    assert_eq!(
        parse(&bytes, &P).unwrap_err(),
        ParseError::CountOverrun {
            opcode: Opcode::BATCH_FORGET,
            what: "forget entries",
            count: 3,
            available: 32
        }
    );
    // A count whose byte length overflows is an overrun too, not a panic.
    bytes[40..44].copy_from_slice(&u32::MAX.to_ne_bytes());
    assert!(matches!(
        parse(&bytes, &P).unwrap_err(),
        ParseError::CountOverrun { .. }
    ));
}

#[test]
fn write_data_shorter_than_size() {
    let arg = abi::fuse_write_in {
        size: U32::new(4),
        ..Default::default()
    };
    let op = Operation::Write { arg, data: b"abcd" };
    let mut bytes = encode_vec(&P, &hdr(5), &op, &ExtensionArgs::NONE);
    bytes.pop();
    fix_len(&mut bytes);
    assert_eq!(
        parse(&bytes, &P).unwrap_err(),
        ParseError::ShortBody {
            opcode: Opcode::WRITE,
            what: "write data",
            need: 4,
            have: 3
        }
    );
}

#[test]
fn short_fixed_struct() {
    let arg = abi::fuse_open_in::default();
    let op = Operation::Open { arg: &arg };
    let mut bytes = encode_vec(&P, &hdr(6), &op, &ExtensionArgs::NONE);
    bytes.truncate(44);
    fix_len(&mut bytes);
    assert_eq!(
        parse(&bytes, &P).unwrap_err(),
        ParseError::ShortBody {
            opcode: Opcode::OPEN,
            what: "fuse_open_in",
            need: 8,
            have: 4
        }
    );
}

#[test]
fn trailing_bytes_after_fixed_struct_are_tolerated() {
    let arg = abi::fuse_open_in {
        flags: U32::new(2),
        open_flags: U32::new(0),
    };
    let op = Operation::Open { arg: &arg };
    let mut bytes = encode_vec(&P, &hdr(6), &op, &ExtensionArgs::NONE);
    bytes.extend_from_slice(&[9; 16]);
    fix_len(&mut bytes);
    assert_eq!(parse(&bytes, &P).unwrap().op(), &op);
}

fn with_ext(ext: &[u8]) -> Vec<u8> {
    let mut bytes = lookup_bytes(b"foo");
    bytes.extend_from_slice(ext);
    fix_len(&mut bytes);
    let units = (ext.len() / 8) as u16;
    abi::fuse_in_header::mut_from_prefix(&mut bytes[..])
        .unwrap()
        .0
        .total_extlen = U16::new(units);
    bytes
}

fn ext_header(size: u32, typ: u32) -> Vec<u8> {
    abi::fuse_ext_header {
        size: U32::new(size),
        typ: U32::new(typ),
    }
    .as_bytes()
    .to_vec()
}

#[test]
fn bad_extension_sizes() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            ext_header(4, 99),
            "extension size is smaller than its header",
        ),
        (
            [ext_header(12, 99), vec![0; 8]].concat(),
            "extension size is not a multiple of 8",
        ),
        (
            ext_header(16, 99),
            "extension runs past the end of the message",
        ),
        (
            ext_header(0, 99),
            "extension size is smaller than its header",
        ),
    ];
    for (ext, reason) in cases {
        let bytes = with_ext(&ext);
        assert_eq!(
            parse(&bytes, &P).unwrap_err(),
            ParseError::BadExtension { reason },
            "{ext:?}"
        );
    }
}

#[test]
fn total_extlen_longer_than_message() {
    let mut bytes = lookup_bytes(b"foo");
    abi::fuse_in_header::mut_from_prefix(&mut bytes[..])
        .unwrap()
        .0
        .total_extlen = U16::new(100);
    assert!(matches!(
        parse(&bytes, &P).unwrap_err(),
        ParseError::BadExtension { .. }
    ));
}

#[test]
fn unknown_extension_types_are_skipped() {
    let bytes = with_ext(&[ext_header(16, 77), vec![1; 8]].concat());
    let req = parse(&bytes, &P).unwrap();
    assert_eq!(req.op(), &Operation::Lookup { name: b"foo" });
    assert_eq!(req.extensions().raw().len(), 16);
    assert!(req.extensions().supp_groups().is_none());
    assert!(!req.extensions().has_security_context());
}

#[test]
fn supp_groups_count_overrun() {
    // size 16: header, nr_groups = 5, one gid.
    let mut ext = ext_header(16, abi::FUSE_EXT_GROUPS);
    ext.extend_from_slice(&5u32.to_ne_bytes());
    ext.extend_from_slice(&1u32.to_ne_bytes());
    let bytes = with_ext(&ext);
    assert!(matches!(
        parse(&bytes, &P).unwrap_err(),
        ParseError::CountOverrun {
            what: "supplementary groups",
            count: 5,
            ..
        }
    ));
}

#[test]
fn security_context_layout_matches_the_kernel() {
    // One context "security.selinux" = "ctx\0", as fs/fuse/dir.c lays it out:
    // secctx_header {size, nr=1}, fuse_secctx {size 4}, name\0, value, pad to 8.
    let ctxs = [SecCtx {
        name: b"security.selinux",
        context: b"ctx\0",
    }];
    let ext = ExtensionArgs {
        security_contexts: Some(&ctxs),
        supp_groups: Some(&[100]),
        raw: &[],
    };
    let bytes = encode_vec(&P, &hdr(9), &Operation::Lookup { name: b"f" }, &ext);
    let ext_area = &bytes[40 + 2..];
    // 8 + pad8(8 + 17 + 4 = 29 -> 32) = 40, then groups: pad8(8 + 4 + 4) = 16.
    assert_eq!(ext_area.len(), 56);
    assert_eq!(&ext_area[0..8], ext_header(40, 1).as_slice());
    assert_eq!(&ext_area[8..12], &4u32.to_ne_bytes());
    assert_eq!(&ext_area[16..33], b"security.selinux\0");
    assert_eq!(&ext_area[33..37], b"ctx\0");
    assert_eq!(&ext_area[40..48], ext_header(16, 32).as_slice());
    let req = parse(&bytes, &P).unwrap();
    assert_eq!(
        req.extensions().security_contexts().collect::<Vec<_>>(),
        ctxs
    );
    assert_eq!(req.header().extensions_len(), 56);
}

#[test]
fn resend_bit_is_kept_in_unique() {
    let unique = abi::FUSE_UNIQUE_RESEND | 77;
    let bytes = encode_vec(&P, &hdr(unique), &Operation::Statfs, &ExtensionArgs::NONE);
    let req = parse(&bytes, &P).unwrap();
    assert_eq!(req.unique(), unique);
    assert!(req.is_resend());
    assert!(req.to_string().contains(" resend"));
    let plain = encode_vec(&P, &hdr(77), &Operation::Statfs, &ExtensionArgs::NONE);
    assert!(!parse(&plain, &P).unwrap().is_resend());
}

#[test]
fn unknown_opcode_is_data() {
    let op = Operation::Unknown {
        opcode: Opcode(9999),
        body: b"xyz",
    };
    let bytes = encode_vec(&P, &hdr(8), &op, &ExtensionArgs::NONE);
    let req = parse(&bytes, &P).unwrap();
    assert_eq!(req.op(), &op);
    assert_eq!(req.opcode(), Opcode(9999));
    assert_eq!(
        req.to_string(),
        "Opcode(9999) unique=8 nodeid=1 uid=1000 gid=100 pid=42 body_len=3"
    );
}

#[test]
fn display_line() {
    let bytes = lookup_bytes(b"fo\"o\xff");
    let req = parse(&bytes, &P).unwrap();
    assert_eq!(
        req.to_string(),
        "LOOKUP unique=12 nodeid=1 uid=1000 gid=100 pid=42 name=\"fo\\\"o\\xff\""
    );
}

#[test]
fn getattr_before_7_9_has_an_empty_body() {
    let p = Negotiated::new(8, InitFlags::EMPTY);
    let op = Operation::Getattr {
        arg: abi::fuse_getattr_in::default(),
    };
    let bytes = encode_vec(&p, &hdr(1), &op, &ExtensionArgs::NONE);
    assert_eq!(bytes.len(), 40);
    assert_eq!(parse(&bytes, &p).unwrap().op(), &op);
    // The same bytes under 7.9 lack fuse_getattr_in.
    assert!(matches!(
        parse(&bytes, &Negotiated::new(9, InitFlags::EMPTY)).unwrap_err(),
        ParseError::ShortBody { need: 16, .. }
    ));
}

#[test]
fn setxattr_layout_follows_setxattr_ext() {
    let arg = abi::fuse_setxattr_in {
        size: U32::new(2),
        flags: U32::new(1),
        setxattr_flags: U32::new(1),
        padding: U32::new(0),
    };
    let op = Operation::Setxattr {
        arg,
        name: b"user.x",
        value: b"hi",
    };
    let ext = Negotiated::new(45, InitFlags::SETXATTR_EXT);
    let bytes = encode_vec(&ext, &hdr(2), &op, &ExtensionArgs::NONE);
    assert_eq!(bytes.len(), 40 + 16 + 7 + 2);
    assert_eq!(parse(&bytes, &ext).unwrap().op(), &op);
    let bytes = encode_vec(&P, &hdr(2), &op, &ExtensionArgs::NONE);
    assert_eq!(bytes.len(), 40 + 8 + 7 + 2);
    let Operation::Setxattr { arg: got, .. } = *parse(&bytes, &P).unwrap().op() else {
        panic!("not setxattr");
    };
    assert_eq!(got.setxattr_flags.get(), 0);
    assert_eq!(got.size.get(), 2);
}

#[test]
fn init_parses_old_and_new_kernels_under_any_proto() {
    let new = abi::fuse_init_in {
        major: U32::new(7),
        minor: U32::new(45),
        max_readahead: U32::new(131072),
        flags: U32::new(InitFlags::INIT_EXT.low() | InitFlags::ASYNC_READ.low()),
        flags2: U32::new(InitFlags::HAS_RESEND.high()),
        ..Default::default()
    };
    let op = Operation::Init { arg: new };
    let bytes = encode_vec(&P, &hdr(1), &op, &ExtensionArgs::NONE);
    assert_eq!(bytes.len(), 104);
    for p in protos() {
        let req = parse(&bytes, &p).unwrap();
        let Operation::Init { arg } = req.op() else {
            panic!()
        };
        assert!(init_flags(arg).contains(InitFlags::HAS_RESEND | InitFlags::ASYNC_READ));
    }
    // A 7.23 kernel sends 16 bytes.
    let mut old = new;
    old.minor = U32::new(23);
    let bytes = encode_vec(
        &P,
        &hdr(1),
        &Operation::Init { arg: old },
        &ExtensionArgs::NONE,
    );
    assert_eq!(bytes.len(), 56);
    let req = parse(&bytes, &P).unwrap();
    let Operation::Init { arg } = req.op() else {
        panic!()
    };
    assert_eq!(arg.flags2.get(), 0);
    assert_eq!(arg.max_readahead.get(), 131072);
    // flags2 without INIT_EXT in flags does not count.
    let mut no_ext = new;
    no_ext.flags = U32::new(InitFlags::ASYNC_READ.low());
    assert_eq!(init_flags(&no_ext), InitFlags::ASYNC_READ);
    // A kernel sends 8, 16 or 64 bytes: every other length is refused, not
    // zero-filled (a longer body is read as its first 64 bytes, as for every
    // struct a kernel may grow).
    let full = encode_vec(&P, &hdr(1), &op, &ExtensionArgs::NONE);
    for body in 0..=80usize {
        let mut b = full[..40].to_vec();
        b.extend((0..body).map(|i| full.get(40 + i).copied().unwrap_or(0)));
        fix_len(&mut b);
        let r = parse(&b, &P);
        if matches!(body, 8 | 16) || body >= 64 {
            assert!(r.is_ok(), "INIT body of {body} bytes: {r:?}");
        } else {
            assert!(
                matches!(r, Err(ParseError::Invalid { .. })),
                "INIT body of {body} bytes: {r:?}"
            );
        }
    }
}

#[test]
fn encode_checks_before_writing() {
    let op = Operation::Lookup { name: b"foo" };
    let need = encoded_len(&P, &op, &ExtensionArgs::NONE).unwrap();
    assert_eq!(need, 44);
    let mut buf = [0xeeu8; 43];
    assert_eq!(
        encode(&mut buf, &P, &hdr(1), &op, &ExtensionArgs::NONE).unwrap_err(),
        EncodeError::BufferTooSmall { need: 44, have: 43 }
    );
    assert!(buf.iter().all(|&b| b == 0xee));

    let mut buf = [0xeeu8; 128];
    let bad = Operation::Lookup { name: b"a\0b" };
    assert!(matches!(
        encode(&mut buf, &P, &hdr(1), &bad, &ExtensionArgs::NONE).unwrap_err(),
        EncodeError::BadName { .. }
    ));
    let write = Operation::Write {
        arg: abi::fuse_write_in {
            size: U32::new(9),
            ..Default::default()
        },
        data: b"abc",
    };
    assert!(matches!(
        encode(&mut buf, &P, &hdr(1), &write, &ExtensionArgs::NONE).unwrap_err(),
        EncodeError::Invalid { .. }
    ));
    let odd_raw = ExtensionArgs {
        raw: &[0; 4],
        ..ExtensionArgs::NONE
    };
    assert!(matches!(
        encode(&mut buf, &P, &hdr(1), &op, &odd_raw).unwrap_err(),
        EncodeError::Invalid { .. }
    ));
    assert!(buf.iter().all(|&b| b == 0xee));
}
