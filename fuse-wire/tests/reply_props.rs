//! Property tests of the reply encoders, the directory writer and the reply parser:
//! encode then parse gives the value back, the encoded length is the header's `len`,
//! a too-small buffer is refused, and arbitrary bytes never panic the parser.
use std::time::Duration;

use fuse_wire::reply::{
    self, dirent_size, direntplus_size, Attr, CuseInitOut, Dirent, DirentPlus, DirentWriter, Entry,
    FileLock, InitOut, IoctlIovec, Open, Push, Reply, ReplyBody, ReplyShape, Statfs, Timestamp,
};
use fuse_wire::{
    abi, AttrFlags, EncodeError, FopenFlags, InitFlags, IoctlFlags, Negotiated, Opcode,
};
use proptest::prelude::*;

// ---------------------------------------------------------------- strategies

/// Minors that exercise every compat size: statfs (<4), entry/attr (<9), ioctl
/// iovecs (<16), init (<23), passthrough (<40), the newest.
fn proto() -> impl Strategy<Value = Negotiated> {
    (
        prop::sample::select(vec![3u32, 8, 9, 16, 23, 38, 40, 45]),
        any::<u64>(),
    )
        .prop_map(|(minor, flags)| Negotiated::new(minor, InitFlags(flags)))
}

fn unique() -> impl Strategy<Value = u64> {
    prop_oneof![1..=u64::MAX, Just(abi::FUSE_UNIQUE_RESEND | 5), Just(1u64)]
}

fn duration() -> impl Strategy<Value = Duration> {
    (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n))
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    (any::<i64>(), any::<u32>()).prop_map(|(sec, nsec)| Timestamp { sec, nsec })
}

prop_compose! {
    fn attr()(
        ino in any::<u64>(), size in any::<u64>(), blocks in any::<u64>(),
        atime in timestamp(), mtime in timestamp(), ctime in timestamp(),
        mode in any::<u32>(), nlink in any::<u32>(), uid in any::<u32>(), gid in any::<u32>(),
        rdev in any::<u32>(), blksize in any::<u32>(), flags in any::<u32>(),
    ) -> Attr {
        Attr { ino, size, blocks, atime, mtime, ctime, mode, nlink, uid, gid, rdev, blksize, flags: AttrFlags(flags) }
    }
}

prop_compose! {
    fn entry()(nodeid in any::<u64>(), generation in any::<u64>(), entry_valid in duration(),
               attr_valid in duration(), attr in attr()) -> Entry {
        Entry { nodeid, generation, entry_valid, attr_valid, attr }
    }
}

prop_compose! {
    fn open_out()(fh in any::<u64>(), flags in any::<u32>(), backing_id in any::<i32>()) -> Open {
        Open { fh, flags: FopenFlags(flags), backing_id }
    }
}

prop_compose! {
    fn statfs_val()(blocks in any::<u64>(), bfree in any::<u64>(), bavail in any::<u64>(), files in any::<u64>(),
                    ffree in any::<u64>(), bsize in any::<u32>(), namelen in any::<u32>(), frsize in any::<u32>())
                    -> Statfs {
        Statfs { blocks, bfree, bavail, files, ffree, bsize, namelen, frsize }
    }
}

fn iovec() -> impl Strategy<Value = IoctlIovec> {
    (any::<u64>(), any::<u64>()).prop_map(|(base, len)| IoctlIovec { base, len })
}

prop_compose! {
    fn init_out()(major in any::<u32>(), minor in any::<u32>(), max_readahead in any::<u32>(), flags in any::<u64>(),
                  max_background in any::<u16>(), congestion_threshold in any::<u16>(), max_write in any::<u32>(),
                  time_gran in any::<u32>(), max_pages in any::<u16>(), map_alignment in any::<u16>(),
                  max_stack_depth in any::<u32>(), request_timeout in any::<u16>()) -> InitOut {
        InitOut { major, minor, max_readahead, flags: InitFlags(flags), max_background, congestion_threshold,
                  max_write, time_gran, max_pages, map_alignment, max_stack_depth, request_timeout }
    }
}

/// Names the encoder accepts: no NUL, no '/', 1..=max bytes.
fn name(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        any::<u8>().prop_filter("no NUL or /", |b| *b != 0 && *b != b'/'),
        1..=max,
    )
}

// ---------------------------------------------------------------- helpers

/// Encodes with `enc` into a generous buffer, checks the length invariants and that
/// one byte less is refused, and returns the message.
fn encode(enc: impl Fn(&mut [u8]) -> Result<usize, EncodeError>) -> Vec<u8> {
    let mut buf = vec![0xAAu8; 8192];
    let n = enc(&mut buf).expect("encode");
    let header_len = u32::from_ne_bytes(buf[..4].try_into().unwrap()) as usize;
    assert_eq!(n, header_len, "returned length equals the header's len");
    assert!(n >= 16);
    let mut small = vec![0u8; n - 1];
    assert!(
        matches!(enc(&mut small), Err(EncodeError::BufferTooSmall { need, have }) if need == n && have == n - 1),
        "one byte less is refused"
    );
    buf.truncate(n);
    buf
}

/// Parses a message as `shape`, which must succeed.
fn parse<'m>(msg: &'m [u8], shape: ReplyShape, proto: &Negotiated) -> Reply<'m> {
    reply::parse_as(msg, Opcode(0), shape, proto).expect("parse")
}

/// What the kernel sees of an attr on a connection older than 7.9.
fn compat_attr(proto: &Negotiated, mut a: Attr) -> Attr {
    if proto.minor < 9 {
        a.blksize = 0;
        a.flags = AttrFlags::EMPTY;
    }
    a
}

fn compat_entry(proto: &Negotiated, mut e: Entry) -> Entry {
    e.attr = compat_attr(proto, e.attr);
    e
}

fn passthrough_ok(proto: &Negotiated, o: &Open) -> bool {
    proto.minor >= 40 || (o.backing_id == 0 && !o.flags.contains(FopenFlags::PASSTHROUGH))
}

// ---------------------------------------------------------------- fixed shapes

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn error_round_trips(u in unique(), errno in 1i32..=511) {
        let buf = encode(|b| reply::error(b, u, errno));
        let r = parse(&buf, ReplyShape::Entry, &Negotiated::LATEST);
        prop_assert_eq!(r, Reply { unique: u, body: ReplyBody::Error(errno) });
        prop_assert_eq!(&buf[..], &reply::error_header(u, errno).unwrap()[..]);
    }

    #[test]
    fn error_out_of_range_is_refused(u in unique(), errno in prop_oneof![i32::MIN..=0, 512..=i32::MAX]) {
        let mut buf = [0u8; 16];
        prop_assert!(matches!(reply::error(&mut buf, u, errno), Err(EncodeError::Invalid { .. })), "errno {} refused", errno);
    }

    #[test]
    fn empty_round_trips(u in unique(), p in proto()) {
        let buf = encode(|b| reply::empty(b, u));
        let r = parse(&buf, ReplyShape::Empty, &p);
        prop_assert_eq!(r, Reply { unique: u, body: ReplyBody::Empty });
    }

    #[test]
    fn entry_round_trips(u in unique(), p in proto(), e in entry()) {
        let buf = encode(|b| reply::entry(b, u, &p, &e));
        let r = parse(&buf, ReplyShape::Entry, &p);
        prop_assert_eq!(buf.len(), 16 + if p.minor < 9 { 120 } else { 128 });
        prop_assert_eq!(r.body, ReplyBody::Entry(compat_entry(&p, e)));
        prop_assert_eq!(r.unique, u);
    }

    #[test]
    fn attr_round_trips(u in unique(), p in proto(), valid in duration(), a in attr()) {
        let buf = encode(|b| reply::attr(b, u, &p, valid, &a));
        let r = parse(&buf, ReplyShape::Attr, &p);
        prop_assert_eq!(buf.len(), 16 + if p.minor < 9 { 96 } else { 104 });
        prop_assert_eq!(r.body, ReplyBody::Attr { attr_valid: valid, attr: compat_attr(&p, a) });
    }

    #[test]
    fn statx_round_trips(u in unique(), valid in duration(), flags in any::<u32>(),
                         raw in prop::collection::vec(any::<u8>(), 256)) {
        use zerocopy::FromBytes;
        let stat = abi::fuse_statx::read_from_bytes(&raw).unwrap();
        let p = Negotiated::LATEST;
        let buf = encode(|b| reply::statx(b, u, valid, flags, &stat));
        let r = parse(&buf, ReplyShape::Statx, &p);
        prop_assert_eq!(r.body, ReplyBody::Statx { attr_valid: valid, flags, stat: &stat });
    }

    #[test]
    fn open_round_trips(u in unique(), p in proto(), o in open_out()) {
        let mut buf = vec![0u8; 64];
        if passthrough_ok(&p, &o) {
            let buf = encode(|b| reply::open(b, u, &p, &o));
        let r = parse(&buf, ReplyShape::Open, &p);
            prop_assert_eq!(r.body, ReplyBody::Open(o));
        } else {
            prop_assert!(matches!(reply::open(&mut buf, u, &p, &o),
                Err(EncodeError::NotSupported { since_minor: 40, .. })), "passthrough before 7.40 refused");
        }
    }

    #[test]
    fn create_round_trips(u in unique(), p in proto(), e in entry(), o in open_out()) {
        let mut buf = vec![0u8; 256];
        if passthrough_ok(&p, &o) {
            let buf = encode(|b| reply::create(b, u, &p, &e, &o));
        let r = parse(&buf, ReplyShape::Create, &p);
            prop_assert_eq!(r.body, ReplyBody::Create { entry: compat_entry(&p, e), open: o });
        } else {
            prop_assert!(matches!(reply::create(&mut buf, u, &p, &e, &o), Err(EncodeError::NotSupported { .. })), "refused");
        }
    }

    #[test]
    fn small_fixed_replies_round_trip(u in unique(), p in proto(), x in any::<u32>(), y in any::<u64>()) {
        let buf = encode(|b| reply::write(b, u, x));
        let r = parse(&buf, ReplyShape::Write, &p);
        prop_assert_eq!(r.body, ReplyBody::Write(x));
        let buf = encode(|b| reply::copy_file_range(b, u, x));
        let r = parse(&buf, ReplyShape::Write, &p);
        prop_assert_eq!(r.body, ReplyBody::Write(x));
        let buf = encode(|b| reply::copy_file_range_64(b, u, y));
        let r = parse(&buf, ReplyShape::CopyFileRange64, &p);
        prop_assert_eq!(r.body, ReplyBody::CopyFileRange64(y));
        let buf = encode(|b| reply::xattr_size(b, u, x));
        let r = parse(&buf, ReplyShape::XattrSize, &p);
        prop_assert_eq!(r.body, ReplyBody::XattrSize(x));
        let buf = encode(|b| reply::bmap(b, u, y));
        let r = parse(&buf, ReplyShape::Bmap, &p);
        prop_assert_eq!(r.body, ReplyBody::Bmap(y));
        let buf = encode(|b| reply::poll(b, u, x));
        let r = parse(&buf, ReplyShape::Poll, &p);
        prop_assert_eq!(r.body, ReplyBody::Poll(x));
        let buf = encode(|b| reply::lseek(b, u, y));
        let r = parse(&buf, ReplyShape::Lseek, &p);
        prop_assert_eq!(r.body, ReplyBody::Lseek(y));
        let lock = FileLock { start: y, end: y ^ 0xffff, typ: x, pid: x.rotate_left(7) };
        let buf = encode(|b| reply::lk(b, u, &lock));
        let r = parse(&buf, ReplyShape::Lk, &p);
        prop_assert_eq!(r.body, ReplyBody::Lk(lock));
    }

    #[test]
    fn statfs_round_trips(u in unique(), p in proto(), s in statfs_val()) {
        let buf = encode(|b| reply::statfs(b, u, &p, &s));
        let r = parse(&buf, ReplyShape::Statfs, &p);
        let mut expect = s;
        if p.minor < 4 {
            prop_assert_eq!(buf.len(), 16 + 48);
            expect.frsize = 0;
        } else {
            prop_assert_eq!(buf.len(), 16 + 80);
        }
        prop_assert_eq!(r.body, ReplyBody::Statfs(expect));
    }

    #[test]
    fn data_round_trips(u in unique(), p in proto(), payload in prop::collection::vec(any::<u8>(), 0..1024)) {
        let buf = encode(|b| reply::data(b, u, &payload));
        let r = parse(&buf, ReplyShape::Data, &p);
        prop_assert_eq!(r.body, ReplyBody::Data(&payload));
        // The vectored form produces the same bytes.
        let mut joined = reply::data_header(u, payload.len()).unwrap().to_vec();
        joined.extend_from_slice(&payload);
        prop_assert_eq!(&joined, &buf);
    }

    #[test]
    fn ioctl_round_trips(u in unique(), p in proto(), result in any::<i32>(),
                         payload in prop::collection::vec(any::<u8>(), 0..256)) {
        let buf = encode(|b| reply::ioctl(b, u, result, &payload));
        let r = parse(&buf, ReplyShape::Ioctl, &p);
        prop_assert_eq!(r.body, ReplyBody::Ioctl { result, flags: IoctlFlags::EMPTY, data: &payload });
    }

    #[test]
    fn ioctl_retry_round_trips(u in unique(), p in proto(),
                               ins in prop::collection::vec(iovec(), 0..20),
                               outs in prop::collection::vec(iovec(), 0..20)) {
        if p.minor < 16 {
            let mut buf = vec![0u8; 4096];
            prop_assert!(matches!(reply::ioctl_retry(&mut buf, u, &p, &ins, &outs),
                Err(EncodeError::NotSupported { since_minor: 16, .. })), "retry before 7.16 refused");
            return Ok(());
        }
        let buf = encode(|b| reply::ioctl_retry(b, u, &p, &ins, &outs));
        let r = parse(&buf, ReplyShape::Ioctl, &p);
        match r.body {
            ReplyBody::IoctlRetry { flags, in_iovs, out_iovs } => {
                prop_assert_eq!(flags, IoctlFlags::RETRY);
                prop_assert_eq!(in_iovs.collect::<Vec<_>>(), ins);
                prop_assert_eq!(out_iovs.collect::<Vec<_>>(), outs);
            }
            other => prop_assert!(false, "expected IoctlRetry, got {:?}", other),
        }
    }

    #[test]
    fn init_round_trips(u in unique(), kernel_minor in prop::sample::select(vec![4u32, 5, 22, 23, 36, 45]),
                        out in init_out()) {
        let p = Negotiated::BEFORE_INIT;
        let buf = encode(|b| reply::init(b, u, kernel_minor, &out));
        let r = parse(&buf, ReplyShape::Init, &p);
        let size = Negotiated::init_out_size(kernel_minor);
        prop_assert_eq!(buf.len(), 16 + size);
        // What the kernel sees: the first `size` bytes, the rest zero.
        let full = out.to_abi();
        let mut seen = [0u8; 64];
        seen[..size].copy_from_slice(&zerocopy::IntoBytes::as_bytes(&full)[..size]);
        let expect = InitOut::from_abi(&zerocopy::FromBytes::read_from_bytes(&seen[..]).unwrap());
        prop_assert_eq!(r.body, ReplyBody::Init { out: expect, body_len: size });
        if size == 64 {
            // flags2 counts only with INIT_EXT (the kernel ignores it otherwise).
            let mut want = out;
            if !out.flags.contains(fuse_wire::InitFlags::INIT_EXT) {
                want.flags = fuse_wire::InitFlags::from_halves(out.flags.low(), 0);
            }
            prop_assert_eq!(expect, want);
        }
    }

    #[test]
    fn cuse_init_round_trips(u in unique(), major in any::<u32>(), minor in any::<u32>(), flags in any::<u32>(),
                             dev_major in any::<u32>(), dev_minor in any::<u32>(),
                             info in prop::collection::vec("[A-Za-z0-9=_]{1,24}", 0..6)) {
        let out = CuseInitOut { major, minor, flags, max_read: 4096, max_write: 8192, dev_major, dev_minor };
        let strs: Vec<&str> = info.iter().map(|s| s.as_str()).collect();
        let p = Negotiated::LATEST;
        let buf = encode(|b| reply::cuse_init(b, u, &out, &strs));
        let r = parse(&buf, ReplyShape::CuseInit, &p);
        match r.body {
            ReplyBody::CuseInit { out: got, dev_info } => {
                prop_assert_eq!(got, out);
                let got: Vec<&[u8]> = dev_info.collect();
                let want: Vec<&[u8]> = strs.iter().map(|s| s.as_bytes()).collect();
                prop_assert_eq!(got, want);
            }
            other => prop_assert!(false, "expected CuseInit, got {:?}", other),
        }
    }
}

// ---------------------------------------------------------------- directory writer

/// The listing the writer should produce: which entries fit, by the sizes alone.
fn expected_fit(sizes: &[usize], limit: usize) -> Vec<bool> {
    let mut used = 0usize;
    sizes
        .iter()
        .map(|&s| {
            if used + s <= limit {
                used += s;
                true
            } else {
                false
            }
        })
        .collect()
}

fn check_alignment(body: &[u8], fixed: usize) {
    // Walk the entries by their namelen and check 8-byte alignment and zero padding.
    let mut at = 0;
    while at < body.len() {
        assert_eq!(at % 8, 0);
        let nl_at = at + fixed - 8;
        let namelen = u32::from_ne_bytes(body[nl_at..nl_at + 4].try_into().unwrap()) as usize;
        let end = at + fixed + namelen;
        let padded = (end + 7) & !7;
        assert!(body[end..padded].iter().all(|&b| b == 0), "padding is zero");
        at = padded;
    }
    assert_eq!(at, body.len());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn dirents_pack_and_parse_back(
        u in unique(),
        names in prop::collection::vec(prop_oneof![4 => name(40), 1 => name(1024)], 0..40),
        buf_len in 0usize..6000,
        max_size in 0usize..6000,
        base in any::<u64>(),
    ) {
        let mut buf = vec![0x55u8; buf_len];
        let mut w = match DirentWriter::new(&mut buf, u, max_size) {
            Ok(w) => w,
            Err(e) => {
                prop_assert!(buf_len < 16);
                prop_assert!(matches!(e, EncodeError::BufferTooSmall { .. }), "buffer below a header is refused");
                return Ok(());
            }
        };
        let limit = (buf_len - 16).min(max_size);
        let sizes: Vec<usize> = names.iter().map(|n| dirent_size(n.len())).collect();
        let fits = expected_fit(&sizes, limit);
        let mut added = Vec::new();
        for (i, n) in names.iter().enumerate() {
            let d = Dirent { ino: base.wrapping_add(i as u64), off: i as u64 + 1, typ: (i % 15) as u32, name: n };
            let before = w.remaining();
            let pushed = w.push(&d).unwrap();
            prop_assert_eq!(pushed == Push::Added, fits[i], "Full exactly when the entry does not fit");
            prop_assert_eq!(pushed == Push::Full, sizes[i] > before);
            if pushed == Push::Added {
                added.push(d);
            } else {
                prop_assert_eq!(w.remaining(), before, "nothing written on Full");
            }
        }
        prop_assert_eq!(w.count(), added.len());
        let len = w.finish().unwrap();
        prop_assert!(len <= buf_len && len - 16 <= max_size);
        prop_assert_eq!(len, 16 + added.iter().map(|d| dirent_size(d.name.len())).sum::<usize>());
        let msg = &buf[..len];
        check_alignment(&msg[16..], 24);
        let r = reply::parse(msg, Opcode::READDIR, &Negotiated::LATEST).unwrap();
        prop_assert_eq!(r.unique, u);
        match r.body {
            ReplyBody::Dirents(it) => prop_assert_eq!(it.collect::<Vec<_>>(), added),
            other => prop_assert!(false, "expected Dirents, got {:?}", other),
        }
    }

    #[test]
    fn direntsplus_pack_and_parse_back(
        u in unique(),
        items in prop::collection::vec((name(64), entry()), 0..24),
        buf_len in 16usize..6000,
        max_size in 0usize..6000,
    ) {
        let mut buf = vec![0x55u8; buf_len];
        let mut w = DirentWriter::new(&mut buf, u, max_size).unwrap();
        let limit = (buf_len - 16).min(max_size);
        let sizes: Vec<usize> = items.iter().map(|(n, _)| direntplus_size(n.len())).collect();
        let fits = expected_fit(&sizes, limit);
        let mut added = Vec::new();
        for (i, (n, e)) in items.iter().enumerate() {
            let d = DirentPlus { entry: *e, dirent: Dirent { ino: e.attr.ino, off: i as u64 + 1, typ: 8, name: n } };
            let pushed = w.push_plus(&d).unwrap();
            prop_assert_eq!(pushed == Push::Added, fits[i]);
            if pushed == Push::Added {
                added.push(d);
            }
        }
        let len = w.finish().unwrap();
        prop_assert!(len <= buf_len && len - 16 <= max_size);
        check_alignment(&buf[16..len], 152);
        let r = reply::parse(&buf[..len], Opcode::READDIRPLUS, &Negotiated::LATEST).unwrap();
        match r.body {
            ReplyBody::DirentsPlus(it) => prop_assert_eq!(it.collect::<Vec<_>>(), added),
            other => prop_assert!(false, "expected DirentsPlus, got {:?}", other),
        }
    }
}

#[test]
fn dirent_sizes_match_the_kernel_macros() {
    assert_eq!(dirent_size(1), 32);
    assert_eq!(dirent_size(8), 32);
    assert_eq!(dirent_size(9), 40);
    assert_eq!(direntplus_size(1), 160);
    assert_eq!(direntplus_size(8), 160);
    assert_eq!(direntplus_size(9), 168);
}

#[test]
fn dirent_writer_refuses_bad_names_and_mixing() {
    let mut buf = vec![0u8; 8192];
    let mut w = DirentWriter::new(&mut buf, 1, 8192).unwrap();
    let long = vec![b'a'; 1025];
    for bad in [&b""[..], b"a/b", b"a\0b", &long] {
        let d = Dirent {
            ino: 1,
            off: 1,
            typ: 0,
            name: bad,
        };
        assert!(
            matches!(w.push(&d), Err(EncodeError::BadName { .. })),
            "{bad:?}"
        );
    }
    assert_eq!(w.count(), 0);
    let max = vec![b'a'; 1024];
    assert_eq!(
        w.push(&Dirent {
            ino: 1,
            off: 1,
            typ: 0,
            name: &max
        })
        .unwrap(),
        Push::Added
    );
    assert_eq!(
        w.push(&Dirent {
            ino: 1,
            off: 2,
            typ: 0,
            name: b"."
        })
        .unwrap(),
        Push::Added
    );
    let plus = DirentPlus {
        entry: Entry::default(),
        dirent: Dirent {
            ino: 1,
            off: 3,
            typ: 0,
            name: b"x",
        },
    };
    assert!(matches!(
        w.push_plus(&plus),
        Err(EncodeError::Invalid { .. })
    ));
    let len = w.finish().unwrap();
    assert_eq!(len, 16 + dirent_size(1024) + dirent_size(1));
}

#[test]
fn empty_listing_is_a_bare_header() {
    let mut buf = [0u8; 16];
    let w = DirentWriter::new(&mut buf, 9, 4096).unwrap();
    assert!(w.is_empty());
    assert_eq!(w.finish().unwrap(), 16);
    let r = reply::parse(&buf, Opcode::READDIR, &Negotiated::LATEST).unwrap();
    assert!(matches!(r.body, ReplyBody::Dirents(it) if it.count() == 0));
}

// ---------------------------------------------------------------- parser edge cases

#[test]
fn golden_error_reply() {
    let mut buf = [0u8; 16];
    assert_eq!(reply::error(&mut buf, 0x1122, 2).unwrap(), 16);
    let mut want = Vec::new();
    want.extend_from_slice(&16u32.to_ne_bytes());
    want.extend_from_slice(&(-2i32).to_ne_bytes());
    want.extend_from_slice(&0x1122u64.to_ne_bytes());
    assert_eq!(&buf[..], &want[..]);
}

#[test]
fn parser_mirrors_fuse_dev_do_write() {
    let p = Negotiated::LATEST;
    let header = |len: u32, error: i32, unique: u64| {
        let mut v = Vec::new();
        v.extend_from_slice(&len.to_ne_bytes());
        v.extend_from_slice(&error.to_ne_bytes());
        v.extend_from_slice(&unique.to_ne_bytes());
        v
    };
    // error range: 0 and -1..=-511 only.
    assert!(reply::parse(&header(16, -511, 1), Opcode::UNLINK, &p).is_ok());
    assert!(reply::parse(&header(16, -512, 1), Opcode::UNLINK, &p).is_err());
    assert!(reply::parse(&header(16, 1, 1), Opcode::UNLINK, &p).is_err());
    // an error reply has no body.
    let mut with_body = header(24, -2, 1);
    with_body.extend_from_slice(&[0; 8]);
    assert!(reply::parse(&with_body, Opcode::LOOKUP, &p).is_err());
    // len must equal the bytes.
    assert!(matches!(
        reply::parse(&header(17, 0, 1), Opcode::UNLINK, &p),
        Err(fuse_wire::ParseError::LengthMismatch { .. })
    ));
    // unique 0 is a notification.
    assert!(reply::parse(&header(16, 0, 0), Opcode::UNLINK, &p).is_err());
    // a fixed body must be exact.
    let mut short = header(16 + 127, 0, 1);
    short.resize(16 + 127, 0);
    assert!(matches!(
        reply::parse(&short, Opcode::LOOKUP, &p),
        Err(fuse_wire::ParseError::ShortBody { .. })
    ));
    let mut long = header(16 + 129, 0, 1);
    long.resize(16 + 129, 0);
    assert!(reply::parse(&long, Opcode::LOOKUP, &p).is_err());
    // FORGET is never answered.
    assert!(reply::parse(&header(16, 0, 1), Opcode::FORGET, &p).is_err());
    // unknown opcode: the body as is.
    let mut unk = header(19, 0, 1);
    unk.extend_from_slice(b"abc");
    assert_eq!(
        reply::parse(&unk, Opcode(999), &p).unwrap().body,
        ReplyBody::Unknown(b"abc")
    );
    // data_header refuses a length beyond u32.
    assert!(matches!(
        reply::data_header(1, u32::MAX as usize),
        Err(EncodeError::TooLarge { .. })
    ));
    assert!(reply::data_header(1, u32::MAX as usize - 16).is_ok());
    // unique 0 is refused by the encoders.
    assert!(matches!(
        reply::empty(&mut [0u8; 16], 0),
        Err(EncodeError::Invalid { .. })
    ));
}

#[test]
fn ioctl_retry_limits() {
    let p = Negotiated::LATEST;
    let mut buf = vec![0u8; 16 + 16 + 257 * 16];
    let v = vec![IoctlIovec::default(); 257];
    assert!(matches!(
        reply::ioctl_retry(&mut buf, 1, &p, &v[..200], &v[..57]),
        Err(EncodeError::TooLarge { .. })
    ));
    assert!(reply::ioctl_retry(&mut buf, 1, &p, &v[..200], &v[..56]).is_ok());
}

#[test]
fn dirent_parser_rejects_what_the_kernel_rejects() {
    let p = Negotiated::LATEST;
    let mut buf = vec![0u8; 256];
    let mut w = DirentWriter::new(&mut buf, 3, 256).unwrap();
    let _ = w
        .push(&Dirent {
            ino: 1,
            off: 1,
            typ: 4,
            name: b"abc",
        })
        .unwrap();
    let len = w.finish().unwrap();
    let good = buf[..len].to_vec();
    assert!(reply::parse(&good, Opcode::READDIR, &p).is_ok());
    // '/' in a name: EIO in the kernel.
    let mut slash = good.clone();
    slash[16 + 24 + 1] = b'/';
    assert!(reply::parse(&slash, Opcode::READDIR, &p).is_err());
    // namelen 0.
    let mut zero = good.clone();
    zero[16 + 16..16 + 20].copy_from_slice(&0u32.to_ne_bytes());
    assert!(reply::parse(&zero, Opcode::READDIR, &p).is_err());
    // a truncated entry (the kernel drops it silently; we refuse).
    let mut cut = good[..len - 4].to_vec();
    cut[..4].copy_from_slice(&((len - 4) as u32).to_ne_bytes());
    assert!(reply::parse(&cut, Opcode::READDIR, &p).is_err());
}

// ---------------------------------------------------------------- robustness

fn opcode() -> impl Strategy<Value = Opcode> {
    prop_oneof![
        prop::sample::select(Opcode::ALL.to_vec()),
        any::<u32>().prop_map(Opcode)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), op in opcode(), p in proto()) {
        let _ = reply::parse(&bytes, op, &p);
    }

    #[test]
    fn arbitrary_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..1200), op in opcode(),
                                    p in proto(), unique in any::<u64>(), error in prop_oneof![Just(0i32), any::<i32>()]) {
        let mut msg = Vec::with_capacity(16 + body.len());
        msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&error.to_ne_bytes());
        msg.extend_from_slice(&unique.to_ne_bytes());
        msg.extend_from_slice(&body);
        if let Ok(r) = reply::parse(&msg, op, &p) {
            // Iterating a parsed listing never panics either.
            match r.body {
                ReplyBody::Dirents(it) => { let _ = it.count(); }
                ReplyBody::DirentsPlus(it) => { let _ = it.count(); }
                ReplyBody::CuseInit { dev_info, .. } => { let _ = dev_info.count(); }
                ReplyBody::IoctlRetry { in_iovs, out_iovs, .. } => { let _ = in_iovs.count() + out_iovs.count(); }
                _ => {}
            }
        }
    }
}
