//! The sans-IO session driven by the fake kernel: lookup accounting against a model,
//! interrupts, unknown ids, malformed input, DESTROY.
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fuse_session::fake::FakeKernel;
use fuse_session::*;
use fuse_wire::request::Operation;
use fuse_wire::{abi, reply, InitFlags};
use proptest::prelude::*;
use zerocopy::byteorder::native_endian::{U32, U64};
use zerocopy::IntoBytes;

/// Root (node 0) holds files "n0".."n{N-1}" (nodes 1..=N); nodes are u32.
#[derive(Default)]
struct TreeFs {
    forgotten: Mutex<Vec<u32>>,
    destroyed: AtomicUsize,
}

const N: u32 = 12;

fn attr(node: u32) -> FileAttr {
    let kind = if node == 0 {
        FileType::Directory
    } else {
        FileType::RegularFile
    };
    FileAttr {
        nlink: 1,
        ..FileAttr::new(u64::from(node) + 1, kind, 0o644)
    }
}

fn entry(node: u32) -> Entry<u32> {
    Entry {
        node,
        attr: attr(node),
        entry_ttl: Duration::ZERO,
        attr_ttl: Duration::ZERO,
    }
}

impl Filesystem for TreeFs {
    type Node = u32;
    type Handle = u32;

    fn root(&self) -> u32 {
        0
    }

    fn init(&self, w: &mut InitWishes) -> Result<()> {
        w.flags |= InitFlags::DO_READDIRPLUS;
        Ok(())
    }

    fn destroy(&self) {
        self.destroyed.fetch_add(1, Ordering::SeqCst);
    }

    fn forget(&self, node: u32) {
        self.forgotten.lock().unwrap().push(node);
    }

    fn lookup(&self, _: &RequestContext<'_>, parent: &u32, name: &OsStr) -> Result<Entry<u32>> {
        let n: u32 = name
            .to_str()
            .and_then(|s| s.strip_prefix('n'))
            .and_then(|s| s.parse().ok())
            .ok_or(Errno::ENOENT)?;
        if *parent != 0 || n >= N {
            return Err(Errno::ENOENT);
        }
        Ok(entry(n + 1))
    }

    fn getattr(&self, _: &RequestContext<'_>, node: &u32, _: Option<&u32>) -> Result<AttrReply> {
        Ok(AttrReply {
            attr: attr(*node),
            ttl: Duration::ZERO,
        })
    }

    fn opendir(&self, _: &RequestContext<'_>, node: &u32, _: i32) -> Result<Opened<u32>> {
        Ok(Opened::new(*node))
    }

    fn open(
        &self,
        _: &RequestContext<'_>,
        node: &u32,
        _: OpenFlags,
        _: FuseOpenFlags,
    ) -> Result<Opened<u32>> {
        Ok(Opened::new(*node))
    }

    fn read<'r>(
        &'r self,
        ctx: &RequestContext<'_>,
        _: &u32,
        _: &u32,
        _: u64,
        _: u32,
        _: OpenFlags,
        _: Option<u64>,
        out: &mut ReadBuf<'r, '_>,
    ) -> Result<()> {
        // Blocks until interrupted (at most 5 s): the interrupt test.
        let start = Instant::now();
        while !ctx.interrupted() {
            if start.elapsed() > Duration::from_secs(5) {
                out.copy_from(b"not interrupted");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Err(Errno::EINTR)
    }

    fn readdirplus(
        &self,
        _: &RequestContext<'_>,
        _: &u32,
        _: &u32,
        offset: u64,
        out: &mut DirEntriesPlus<'_, u32>,
    ) -> Result<()> {
        let mut list = vec![(b".".to_vec(), 0u32), (b"..".to_vec(), 0u32)];
        list.extend((0..N).map(|i| (format!("n{i}").into_bytes(), i + 1)));
        for (i, (name, node)) in list.iter().enumerate().skip(offset as usize) {
            if out
                .push(OsStr::from_bytes(name), i as u64 + 1, &entry(*node))
                .is_err()
            {
                break;
            }
        }
        Ok(())
    }
}

fn kernel() -> FakeKernel<TreeFs> {
    let mut k = FakeKernel::new(TreeFs::default());
    let r = k.init(
        45,
        InitFlags::INIT_EXT | InitFlags::DO_READDIRPLUS | InitFlags::MAX_PAGES,
    );
    assert!(matches!(
        r.parse(&k.proto()).unwrap().body,
        reply::ReplyBody::Init { .. }
    ));
    k
}

/// The session's lookup counts equal the kernel's, for every nodeid either knows.
fn check_counts(k: &FakeKernel<TreeFs>) {
    let model = k.kernel_lookups();
    for (&id, &n) in model {
        assert_eq!(k.session().lookup_count(id), Some(n), "nodeid {id}");
    }
    // Everything the session holds besides the root is known to the kernel.
    assert_eq!(k.session().node_count(), model.len() + 1);
}

#[derive(Clone, Debug)]
enum Step {
    Lookup(u32),
    Forget(usize, u64),
    BatchForget(Vec<(usize, u64)>),
    Readdirplus(u64, u32),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..N + 2).prop_map(Step::Lookup),
        (0usize..16, 1u64..4).prop_map(|(i, n)| Step::Forget(i, n)),
        prop::collection::vec((0usize..16, 1u64..3), 1..5).prop_map(Step::BatchForget),
        (0u64..16, 200u32..2000).prop_map(|(o, s)| Step::Readdirplus(o, s)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    /// Random LOOKUP / FORGET / BATCH_FORGET / READDIRPLUS sequences: the session's
    /// counts always equal the kernel's; a node is forgotten by the filesystem exactly
    /// when the kernel's count of it reaches zero; nodeids are stable while counted.
    #[test]
    fn lookup_accounting_matches_the_kernel(steps in prop::collection::vec(step(), 1..60)) {
        let mut k = kernel();
        let dir = k.open(1, true, 0).unwrap();
        let mut ids: BTreeMap<u32, u64> = BTreeMap::new();
        for s in steps {
            match s {
                Step::Lookup(i) => match k.lookup(1, format!("n{i}").as_bytes()) {
                    Ok(e) => {
                        let node = i + 1;
                        if let Some(&old) = ids.get(&node) {
                            if k.kernel_lookups().get(&old).copied().unwrap_or(0) > 1 {
                                prop_assert_eq!(old, e.nodeid, "a counted node keeps its nodeid");
                            }
                        }
                        ids.insert(node, e.nodeid);
                    }
                    Err(e) => prop_assert!(i >= N && e == nix::libc::ENOENT),
                },
                Step::Forget(i, n) => {
                    let known: Vec<(u64, u64)> = k.kernel_lookups().iter().map(|(&a, &b)| (a, b)).collect();
                    if let Some(&(id, c)) = known.get(i % known.len().max(1)) {
                        k.forget(id, n.min(c));
                    }
                }
                Step::BatchForget(items) => {
                    let known: Vec<(u64, u64)> = k.kernel_lookups().iter().map(|(&a, &b)| (a, b)).collect();
                    if known.is_empty() { continue; }
                    let mut left: BTreeMap<u64, u64> = known.iter().copied().collect();
                    let mut batch = Vec::new();
                    for (i, n) in items {
                        let (id, _) = known[i % known.len()];
                        let c = left.get_mut(&id).unwrap();
                        let take = n.min(*c);
                        if take > 0 { *c -= take; batch.push((id, take)); }
                    }
                    k.batch_forget(&batch);
                }
                Step::Readdirplus(off, size) => {
                    let _ = k.readdirplus(1, dir, off, size);
                }
            }
            check_counts(&k);
        }
        // The filesystem forgot exactly the nodes whose count went to zero: forget
        // everything and every node looked up is forgotten once more than it was re-found.
        let rest: Vec<(u64, u64)> = k.kernel_lookups().iter().map(|(&a, &b)| (a, b)).collect();
        k.batch_forget(&rest);
        prop_assert_eq!(k.session().node_count(), 1, "only the root is left");
        prop_assert!(k.session().filesystem().forgotten.lock().unwrap().iter().all(|&n| n != 0), "the root is never forgotten");
    }
}

#[test]
fn readdirplus_does_not_count_dot_entries_and_counts_each_other_entry() {
    let mut k = kernel();
    let dir = k.open(1, true, 0).unwrap();
    let list = k.readdirplus(1, dir, 0, 65536).unwrap();
    assert_eq!(list.len(), N as usize + 2);
    assert_eq!(list[0].1, 0, "`.` carries no nodeid");
    assert_eq!(list[1].1, 0, "`..` carries no nodeid");
    check_counts(&k);
    assert_eq!(k.session().node_count(), N as usize + 1);
    // A small buffer: only what fits is counted.
    let mut k = kernel();
    let dir = k.open(1, true, 0).unwrap();
    let list = k.readdirplus(1, dir, 2, 400).unwrap();
    assert_eq!(list.len(), 2, "two direntplus of ~160 bytes fit in 400");
    check_counts(&k);
}

#[test]
fn forget_reaches_the_filesystem_only_at_zero() {
    let mut k = kernel();
    let a = k.lookup(1, b"n3").unwrap().nodeid;
    let b = k.lookup(1, b"n3").unwrap().nodeid;
    assert_eq!(a, b, "deduplicated");
    k.forget(a, 1);
    assert!(k
        .session()
        .filesystem()
        .forgotten
        .lock()
        .unwrap()
        .is_empty());
    k.forget(a, 1);
    assert_eq!(*k.session().filesystem().forgotten.lock().unwrap(), vec![4]);
    let c = k.lookup(1, b"n3").unwrap();
    assert_ne!(c.nodeid, a, "nodeids are not reused");
}

#[test]
fn unknown_nodeids_and_handles_are_errors_not_panics() {
    let mut k = kernel();
    let arg = abi::fuse_getattr_in::default();
    assert_eq!(
        k.status(999, &Operation::Getattr { arg }),
        nix::libc::ESTALE
    );
    assert_eq!(
        k.status(999, &Operation::Lookup { name: b"n1" }),
        nix::libc::ESTALE
    );
    let read = abi::fuse_read_in {
        fh: U64::new(77),
        size: U32::new(10),
        ..Default::default()
    };
    assert_eq!(
        k.status(1, &Operation::Read { arg: read }),
        nix::libc::EBADF
    );
    assert_eq!(k.release(1, false, 77), nix::libc::EBADF);
    assert_eq!(k.release(1, true, 77), nix::libc::EBADF);
    // A file handle is not a directory handle.
    let fh = k.open(1, false, 0).unwrap();
    assert_eq!(k.release(1, true, fh), nix::libc::EBADF);
    assert_eq!(k.release(1, false, fh), 0);
    assert_eq!(k.session().handle_count(), 0);
}

#[test]
fn unknown_opcode_gets_enosys_and_malformed_body_gets_eio_with_its_unique() {
    let mut k = kernel();
    // Opcode 999 with a small body.
    let mut req = abi::fuse_in_header {
        len: U32::new(48),
        opcode: U32::new(999),
        unique: U64::new(4242),
        nodeid: U64::new(1),
        ..Default::default()
    }
    .as_bytes()
    .to_vec();
    req.extend_from_slice(&[0u8; 8]);
    let r = k.raw(&req).unwrap();
    let hdr = &r[..16];
    assert_eq!(
        i32::from_ne_bytes(hdr[4..8].try_into().unwrap()),
        -nix::libc::ENOSYS
    );
    assert_eq!(u64::from_ne_bytes(hdr[8..16].try_into().unwrap()), 4242);
    // LOOKUP whose name lacks its NUL.
    let mut req = abi::fuse_in_header {
        len: U32::new(43),
        opcode: U32::new(1),
        unique: U64::new(77),
        nodeid: U64::new(1),
        ..Default::default()
    }
    .as_bytes()
    .to_vec();
    req.extend_from_slice(b"abc");
    let r = k.raw(&req).unwrap();
    assert_eq!(
        i32::from_ne_bytes(r[4..8].try_into().unwrap()),
        -nix::libc::EIO
    );
    assert_eq!(u64::from_ne_bytes(r[8..16].try_into().unwrap()), 77);
    // A truncated header cannot be answered: dropped, not a panic.
    assert!(k.raw(&req[..20]).is_none());
    assert_eq!(
        k.session().stats().malformed.load(Ordering::Relaxed),
        2,
        "the bad body and the bad header"
    );
}

#[test]
fn requests_before_init_get_eio() {
    let mut k = FakeKernel::new(TreeFs::default());
    assert_eq!(
        k.status(1, &Operation::Lookup { name: b"n1" }),
        nix::libc::EIO
    );
}

#[test]
fn resend_bit_is_echoed() {
    let mut k = kernel();
    let unique = abi::FUSE_UNIQUE_RESEND | 55;
    let r = k
        .call_with_unique(unique, 1, &Operation::Lookup { name: b"n1" })
        .unwrap();
    assert_eq!(r.parse(&k.proto()).unwrap().unique, unique);
}

#[test]
fn destroy_is_answered_and_ends_the_session_once() {
    let mut k = kernel();
    assert_eq!(k.status(0, &Operation::Destroy), 0);
    assert!(k.session().is_destroyed());
    k.session().shutdown();
    assert_eq!(k.session().filesystem().destroyed.load(Ordering::SeqCst), 1);
}

#[test]
fn interrupt_reaches_a_running_request_and_one_that_has_not_arrived() {
    let mut k = kernel();
    let fh = k.open(1, false, 0).unwrap();
    // The session is Sync: drive it from two threads directly (leaked: test only).
    let k: &'static FakeKernel<TreeFs> = Box::leak(Box::new(k));
    let session: &'static Session<TreeFs> = k.session();
    let proto = session.negotiated();
    let enc = |unique: u64, op: &Operation<'_>| {
        let mut buf = vec![0u8; 4096];
        let h = fuse_wire::request::encode::HeaderFields {
            unique,
            nodeid: 1,
            uid: 0,
            gid: 0,
            pid: 1,
        };
        let n = fuse_wire::request::encode::encode(&mut buf, &proto, &h, op, &Default::default())
            .unwrap();
        buf.truncate(n);
        buf
    };
    let read = enc(
        100,
        &Operation::Read {
            arg: abi::fuse_read_in {
                fh: U64::new(fh),
                size: U32::new(64),
                ..Default::default()
            },
        },
    );
    let t = std::thread::spawn(move || {
        let mut out = vec![0u8; session.reply_buffer_size()];
        match session.handle(&read, &mut out) {
            Outcome::Reply(parts) => parts.error_code(),
            other => panic!("{other:?}"),
        }
    });
    std::thread::sleep(Duration::from_millis(50));
    let intr = enc(
        101,
        &Operation::Interrupt {
            arg: &abi::fuse_interrupt_in {
                unique: U64::new(100),
            },
        },
    );
    let mut out = vec![0u8; session.reply_buffer_size()];
    assert!(
        matches!(session.handle(&intr, &mut out), Outcome::NoReply),
        "INTERRUPT is never answered (never ENOSYS)"
    );
    assert_eq!(t.join().unwrap(), -nix::libc::EINTR);
    // The interrupt overtakes its request.
    let intr = enc(
        103,
        &Operation::Interrupt {
            arg: &abi::fuse_interrupt_in {
                unique: U64::new(102),
            },
        },
    );
    assert!(matches!(session.handle(&intr, &mut out), Outcome::NoReply));
    let read = enc(
        102,
        &Operation::Read {
            arg: abi::fuse_read_in {
                fh: U64::new(fh),
                size: U32::new(64),
                ..Default::default()
            },
        },
    );
    let start = Instant::now();
    match session.handle(&read, &mut out) {
        Outcome::Reply(parts) => assert_eq!(parts.error_code(), -nix::libc::EINTR),
        other => panic!("{other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn allow_root_lets_in_only_the_owner_and_root() {
    let mut s = Session::new(TreeFs::default());
    s.restrict_to_uid(Some(1000));
    let mut k = FakeKernel::with_session(s);
    k.init(45, InitFlags::INIT_EXT);
    k.caller = (1001, 1001, 7);
    assert_eq!(k.lookup(1, b"n1").unwrap_err(), nix::libc::EACCES);
    k.caller = (1000, 1000, 7);
    assert!(k.lookup(1, b"n1").is_ok());
    k.caller = (0, 0, 7);
    assert!(k.lookup(1, b"n2").is_ok());
}

#[test]
fn a_reply_buffer_smaller_than_a_page_gets_eio_not_a_panic() {
    let mut k = kernel();
    let fh = k.open(1, false, 0).unwrap();
    let proto = k.proto();
    let h = fuse_wire::request::encode::HeaderFields {
        unique: 9,
        nodeid: 1,
        uid: 0,
        gid: 0,
        pid: 1,
    };
    let read = abi::fuse_read_in {
        fh: U64::new(fh),
        size: U32::new(64),
        ..Default::default()
    };
    let mut req = vec![0u8; 4096];
    let n = fuse_wire::request::encode::encode(
        &mut req,
        &proto,
        &h,
        &Operation::Read { arg: read },
        &Default::default(),
    )
    .unwrap();
    let mut small = vec![0u8; 100];
    match k.session().handle(&req[..n], &mut small) {
        Outcome::Reply(parts) => assert_eq!(parts.error_code(), -nix::libc::EIO),
        other => panic!("{other:?}"),
    }
}
