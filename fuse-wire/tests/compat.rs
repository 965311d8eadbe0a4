//! The compat layouts of old protocol minors, checked against what the kernel
//! does (`fuse_adjust_compat` in `fs/fuse/dev.c`, `process_init_reply` in
//! `fs/fuse/inode.c`): golden sizes and bytes.
use std::time::Duration;

use fuse_wire::abi;
use fuse_wire::reply::{self, Attr, Entry, InitOut, Open, ReplyBody, Timestamp};
use fuse_wire::{FopenFlags, InitFlags, Negotiated, Opcode};
use zerocopy::IntoBytes;

const V7_8: Negotiated = Negotiated::new(8, InitFlags::EMPTY);

fn entry() -> Entry {
    Entry {
        nodeid: 7,
        generation: 3,
        entry_valid: Duration::from_secs(1),
        attr_valid: Duration::from_secs(2),
        attr: Attr {
            ino: 7,
            size: 10,
            mtime: Timestamp::new(5, 6),
            mode: 0o100600,
            nlink: 1,
            // Fields a 7.8 entry drops: it ends before blksize and flags.
            blksize: 0,
            ..Default::default()
        },
    }
}

fn open() -> Open {
    Open {
        fh: 42,
        flags: FopenFlags::KEEP_CACHE,
        backing_id: 0,
    }
}

/// The bytes of a reply: out header, then `parts`.
fn reply_bytes(unique: u64, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = 16 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut v = Vec::new();
    v.extend_from_slice(&(len as u32).to_ne_bytes());
    v.extend_from_slice(&0i32.to_ne_bytes());
    v.extend_from_slice(&unique.to_ne_bytes());
    for p in parts {
        v.extend_from_slice(p);
    }
    v
}

#[test]
fn tmpfile_at_7_8_has_the_whole_entry() {
    let e = entry().to_abi();
    let o = open().to_abi();
    // What a 7.8 kernel expects for TMPFILE: 128 + 16 bytes.
    let full = reply_bytes(5, &[e.as_bytes(), o.as_bytes()]);
    assert_eq!(full.len(), 16 + 128 + 16);
    let r = reply::parse(&full, Opcode::TMPFILE, &V7_8).expect("a 7.8 TMPFILE reply");
    assert_eq!(
        r.body,
        ReplyBody::Create {
            entry: entry(),
            open: open()
        }
    );
    // The short entry is CREATE's, not TMPFILE's.
    let short = reply_bytes(5, &[&e.as_bytes()[..120], o.as_bytes()]);
    assert!(reply::parse(&short, Opcode::TMPFILE, &V7_8).is_err());
    assert!(reply::parse(&short, Opcode::CREATE, &V7_8).is_ok());
    assert!(reply::parse(&full, Opcode::CREATE, &V7_8).is_err());

    // The encoders write exactly these bytes.
    let mut buf = [0u8; 256];
    let n = reply::tmpfile(&mut buf, 5, &V7_8, &entry(), &open()).unwrap();
    assert_eq!(&buf[..n], &full[..]);
    let n = reply::create(&mut buf, 5, &V7_8, &entry(), &open()).unwrap();
    assert_eq!(&buf[..n], &short[..]);
    // From 7.9 on both are the same.
    let p = Negotiated::new(37, InitFlags::EMPTY);
    let a = reply::tmpfile(&mut buf, 5, &p, &entry(), &open()).unwrap();
    let t = buf[..a].to_vec();
    let b = reply::create(&mut buf, 5, &p, &entry(), &open()).unwrap();
    assert_eq!(&buf[..b], &t[..]);
}

/// Every size `fuse_adjust_compat` changes, by minor.
#[test]
fn compat_sizes_follow_the_kernel() {
    for minor in 0..=45u32 {
        let p = Negotiated::new(minor, InitFlags::EMPTY);
        let statfs = if minor < 4 { 48 } else { 80 };
        assert_eq!(p.statfs_out_size(), statfs, "statfs at 7.{minor}");
        let (entry, attr) = if minor < 9 { (120, 96) } else { (128, 104) };
        assert_eq!(p.entry_out_size(), entry, "entry at 7.{minor}");
        assert_eq!(p.attr_out_size(), attr, "attr at 7.{minor}");
        // Requests: CREATE sends a fuse_open_in (8 bytes) and MKNOD 8 bytes before
        // 7.12.
        let (create, mknod) = if minor < 12 { (8, 8) } else { (16, 16) };
        assert_eq!(p.create_in_size(), create, "create_in at 7.{minor}");
        assert_eq!(p.mknod_in_size(), mknod, "mknod_in at 7.{minor}");
        assert_eq!(
            std::mem::size_of::<abi::fuse_open_in>(),
            abi::FUSE_COMPAT_CREATE_IN_SIZE
        );
    }
}

/// Each reply shape whose size `fuse_adjust_compat` changes, parsed at 7.8 and 7.9
/// with exactly the kernel's size, and refused with the other.
#[test]
fn compat_replies_parse_at_their_size_only() {
    let e = entry().to_abi();
    let a = abi::fuse_attr_out::default();
    let s = abi::fuse_statfs_out::default();
    let cases: [(Opcode, &[u8], usize, usize); 8] = [
        (Opcode::LOOKUP, e.as_bytes(), 120, 128),
        (Opcode::MKNOD, e.as_bytes(), 120, 128),
        (Opcode::MKDIR, e.as_bytes(), 120, 128),
        (Opcode::SYMLINK, e.as_bytes(), 120, 128),
        (Opcode::LINK, e.as_bytes(), 120, 128),
        (Opcode::GETATTR, a.as_bytes(), 96, 104),
        (Opcode::SETATTR, a.as_bytes(), 96, 104),
        (Opcode::STATFS, s.as_bytes(), 80, 80),
    ];
    for (op, full, old, new) in cases {
        for (minor, size, other) in [(8, old, new), (9, new, old)] {
            let p = Negotiated::new(minor, InitFlags::EMPTY);
            let r = reply_bytes(1, &[&full[..size]]);
            assert!(reply::parse(&r, op, &p).is_ok(), "{op:?} at 7.{minor}");
            if other != size {
                let r = reply_bytes(1, &[&full[..other]]);
                assert!(reply::parse(&r, op, &p).is_err(), "{op:?} at 7.{minor}");
            }
        }
    }
    // STATFS is 48 bytes before 7.4.
    let p = Negotiated::new(3, InitFlags::EMPTY);
    let r = reply_bytes(1, &[&s.as_bytes()[..48]]);
    assert!(reply::parse(&r, Opcode::STATFS, &p).is_ok());
}

#[test]
fn init_reply_flags2_counts_only_with_init_ext() {
    let mut o = abi::fuse_init_out {
        major: 7.into(),
        minor: 45.into(),
        flags: InitFlags::ASYNC_READ.low().into(),
        flags2: InitFlags::HAS_RESEND.high().into(),
        ..Default::default()
    };
    let parse = |o: &abi::fuse_init_out| {
        let bytes = reply_bytes(1, &[o.as_bytes()]);
        match reply::parse(&bytes, Opcode::INIT, &Negotiated::BEFORE_INIT)
            .unwrap()
            .body
        {
            ReplyBody::Init { out, .. } => out.flags,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        parse(&o),
        InitFlags::ASYNC_READ,
        "no INIT_EXT: flags2 ignored"
    );
    o.flags = (InitFlags::ASYNC_READ | InitFlags::INIT_EXT).low().into();
    assert_eq!(
        parse(&o),
        InitFlags::ASYNC_READ | InitFlags::INIT_EXT | InitFlags::HAS_RESEND
    );
    // The encoder does not write a flags2 the kernel will not read.
    let out = InitOut {
        major: 7,
        minor: 45,
        flags: InitFlags::ASYNC_READ | InitFlags::HAS_RESEND,
        ..Default::default()
    };
    assert_eq!(out.to_abi().flags2.get(), 0);
}
