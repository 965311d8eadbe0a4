//! The three steps of a request (accept, call, respond) in the sans-IO core, driven
//! by the fake kernel: a panic in a filesystem method is answered EIO and leaves the
//! session serving with its tables whole, and the step hook sees every accept and
//! every reply exactly once.
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuse_session::fake::FakeKernel;
use fuse_session::*;
use fuse_wire::request::Operation;
use fuse_wire::{abi, InitFlags};
use zerocopy::byteorder::native_endian::{U32, U64};

/// Root (node 0) holds "a0".."a9" (nodes 1..=10) and the trap "boom"; every method
/// panics when its argument names the trap or its node is the trap's (11).
struct PanickyFs;

const BOOM: u32 = 11;

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

impl Filesystem for PanickyFs {
    type Node = u32;
    type Handle = u32;

    fn root(&self) -> u32 {
        0
    }

    fn init(&self, w: &mut InitWishes) -> Result<()> {
        w.flags |= InitFlags::DO_READDIRPLUS;
        Ok(())
    }

    fn lookup(&self, _: &RequestContext<'_>, _: &u32, name: &OsStr) -> Result<Entry<u32>> {
        if name == "boom" {
            panic!("lookup of boom");
        }
        if name == "trap" {
            return Ok(entry(BOOM));
        }
        let n: u32 = name
            .to_str()
            .and_then(|s| s.strip_prefix('a'))
            .and_then(|s| s.parse().ok())
            .ok_or(Errno::ENOENT)?;
        if n >= 10 {
            return Err(Errno::ENOENT);
        }
        Ok(entry(n + 1))
    }

    fn getattr(&self, _: &RequestContext<'_>, node: &u32, _: Option<&u32>) -> Result<AttrReply> {
        if *node == BOOM {
            panic!("getattr of the trap");
        }
        Ok(AttrReply {
            attr: attr(*node),
            ttl: Duration::ZERO,
        })
    }

    fn rmdir(&self, _: &RequestContext<'_>, _: &u32, name: &OsStr) -> Result<()> {
        if name == "boom" {
            panic!("rmdir of boom");
        }
        Err(Errno::ENOTEMPTY)
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
        _: &RequestContext<'_>,
        node: &u32,
        _: &u32,
        _: u64,
        _: u32,
        _: OpenFlags,
        _: Option<u64>,
        out: &mut ReadBuf<'r, '_>,
    ) -> Result<()> {
        if *node == BOOM {
            panic!("read of the trap");
        }
        out.copy_from(b"data");
        Ok(())
    }

    fn readdirplus(
        &self,
        _: &RequestContext<'_>,
        node: &u32,
        _: &u32,
        _: u64,
        out: &mut DirEntriesPlus<'_, u32>,
    ) -> Result<()> {
        for i in 0..10u32 {
            let name = format!("a{i}");
            if out
                .push(
                    OsStr::from_bytes(name.as_bytes()),
                    u64::from(i) + 1,
                    &entry(i + 1),
                )
                .is_err()
            {
                break;
            }
            if *node == 0 && i == 4 {
                // Half a listing counted, then a panic.
                panic!("readdirplus after five entries");
            }
        }
        Ok(())
    }
}

fn kernel() -> FakeKernel<PanickyFs> {
    let mut k = FakeKernel::new(PanickyFs);
    k.init(45, InitFlags::INIT_EXT | InitFlags::DO_READDIRPLUS);
    k
}

fn silence_panics() {
    // Keep the test output readable: the panics below are expected.
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let msg = info.to_string();
            if !(msg.contains("boom") || msg.contains("trap") || msg.contains("readdirplus after"))
            {
                default(info);
            }
        }));
    });
}

fn read_in(fh: u64) -> abi::fuse_read_in {
    abi::fuse_read_in {
        fh: U64::new(fh),
        size: U32::new(64),
        ..Default::default()
    }
}

#[test]
fn a_panicking_method_is_answered_eio_and_the_session_goes_on() {
    silence_panics();
    let mut k = kernel();
    assert_eq!(k.lookup(1, b"boom").unwrap_err(), nix::libc::EIO);
    assert_eq!(
        k.status(1, &Operation::Rmdir { name: b"boom" }),
        nix::libc::EIO
    );
    assert_eq!(
        k.status(1, &Operation::Rmdir { name: b"a1" }),
        nix::libc::ENOTEMPTY
    );
    // A node the kernel knows, whose methods panic.
    let trap = k.lookup(1, b"trap").unwrap().nodeid;
    let getattr = abi::fuse_getattr_in::default();
    assert_eq!(
        k.status(trap, &Operation::Getattr { arg: getattr }),
        nix::libc::EIO
    );
    let fh = k.open(trap, false, 0).unwrap();
    assert_eq!(
        k.status(trap, &Operation::Read { arg: read_in(fh) }),
        nix::libc::EIO
    );
    // Still serving, tables whole: the lookups that succeeded are counted, the
    // panicking lookup counted nothing.
    let a3 = k.lookup(1, b"a3").unwrap().nodeid;
    assert_eq!(k.session().lookup_count(a3), Some(1));
    assert_eq!(k.session().lookup_count(trap), Some(1));
    assert_eq!(k.session().node_count(), 3, "root, trap, a3");
    assert_eq!(k.session().handle_count(), 1);
    assert_eq!(
        k.session()
            .stats()
            .panics
            .load(std::sync::atomic::Ordering::Relaxed),
        4
    );
}

#[test]
fn a_panic_in_readdirplus_takes_back_the_entries_it_counted() {
    silence_panics();
    let mut k = kernel();
    let fh = k.open(1, true, 0).unwrap();
    assert_eq!(k.readdirplus(1, fh, 0, 4096).unwrap_err(), nix::libc::EIO);
    // Five entries were counted before the panic; none reached the kernel.
    assert_eq!(k.session().node_count(), 1, "only the root");
    // A listing that does not panic (of another directory node) counts normally.
    let a1 = k.lookup(1, b"a1").unwrap().nodeid;
    let fh2 = k.open(a1, true, 0).unwrap();
    let list = k.readdirplus(a1, fh2, 0, 4096).unwrap();
    assert_eq!(list.len(), 10);
    assert_eq!(k.session().node_count(), 11);
}

/// Records every step the hook sees, by unique.
#[derive(Default)]
struct Recorder {
    accepted: Mutex<BTreeMap<u64, (u32, usize)>>,
    responded: Mutex<BTreeMap<u64, Vec<i32>>>,
    /// `unanswered` calls by unique.
    unanswered: Mutex<BTreeMap<u64, usize>>,
    out_of_order: Mutex<Vec<u64>>,
}

impl StepHook for Recorder {
    fn accepted(&self, request: &Accepted<'_>) {
        let prev = self.accepted.lock().unwrap().insert(
            request.unique(),
            (request.opcode().0, request.bytes().len()),
        );
        assert!(prev.is_none(), "unique {} accepted twice", request.unique());
    }

    fn responding(&self, request: &Accepted<'_>, reply: &ReplyParts<'_>) {
        assert_eq!(reply.unique(), request.unique());
        if !self
            .accepted
            .lock()
            .unwrap()
            .contains_key(&request.unique())
        {
            self.out_of_order.lock().unwrap().push(request.unique());
        }
        self.responded
            .lock()
            .unwrap()
            .entry(request.unique())
            .or_default()
            .push(reply.error_code());
    }

    fn unanswered(&self, request: &Accepted<'_>) {
        *self
            .unanswered
            .lock()
            .unwrap()
            .entry(request.unique())
            .or_default() += 1;
    }
}

#[test]
fn the_hook_sees_every_accept_and_every_reply_or_unanswered_exactly_once() {
    silence_panics();
    let hook = Arc::new(Recorder::default());
    let mut session = Session::new(PanickyFs);
    session.set_hook(hook.clone());
    let mut k = FakeKernel::with_session(session);
    k.init(45, InitFlags::INIT_EXT | InitFlags::DO_READDIRPLUS);
    let first = k.next_unique();
    let a1 = k.lookup(1, b"a1").unwrap().nodeid; // success
    assert!(k.lookup(1, b"zz").is_err()); // error
    assert!(k.lookup(1, b"boom").is_err()); // panic
    k.forget(a1, 1); // no reply
    let intr = abi::fuse_interrupt_in {
        unique: U64::new(12345),
    };
    assert!(k.call(1, &Operation::Interrupt { arg: &intr }).is_none()); // no reply
    let fh = k.open(1, true, 0).unwrap();
    assert!(k.readdirplus(1, fh, 0, 4096).is_err()); // panic mid-listing
    let last = k.next_unique();
    // A body that does not parse: a LOOKUP whose name has no terminating NUL.
    let mut bad = vec![0u8; 40];
    let len = 40u32 + 3;
    bad[0..4].copy_from_slice(&len.to_ne_bytes());
    bad[4..8].copy_from_slice(&fuse_wire::Opcode::LOOKUP.0.to_ne_bytes());
    bad[8..16].copy_from_slice(&9999u64.to_ne_bytes());
    bad[16..24].copy_from_slice(&1u64.to_ne_bytes());
    bad.extend_from_slice(b"abc");
    let reply = k.raw(&bad).expect("a malformed body is answered");
    assert_eq!(
        i32::from_ne_bytes(reply[4..8].try_into().unwrap()),
        -nix::libc::EIO
    );
    // A header that does not parse: dropped, not seen.
    assert!(k.raw(&[1, 2, 3]).is_none());

    let accepted = hook.accepted.lock().unwrap().clone();
    let responded = hook.responded.lock().unwrap().clone();
    assert!(hook.out_of_order.lock().unwrap().is_empty());
    for u in first..last {
        assert!(accepted.contains_key(&u), "unique {u} not accepted");
    }
    assert!(accepted.contains_key(&9999));
    assert_eq!(
        accepted.len() as u64,
        last - first + 1 + 1,
        "INIT is not in range"
    );
    for (u, (opcode, _)) in &accepted {
        let replies = responded.get(u).map_or(0, Vec::len);
        let unanswered =
            *opcode == fuse_wire::Opcode::FORGET.0 || *opcode == fuse_wire::Opcode::INTERRUPT.0;
        assert_eq!(
            replies,
            usize::from(!unanswered),
            "unique {u} opcode {opcode}: {replies} replies seen"
        );
        let calls = hook.unanswered.lock().unwrap().get(u).copied().unwrap_or(0);
        assert_eq!(
            calls,
            usize::from(unanswered),
            "unique {u} opcode {opcode}: {calls} unanswered calls seen"
        );
    }
    let eio = responded
        .values()
        .filter(|r| r[0] == -nix::libc::EIO)
        .count();
    assert_eq!(eio, 3, "two panics and one malformed body");
}

#[test]
fn a_panic_in_init_is_answered_eio_and_reported() {
    silence_panics();
    struct BadInit;
    impl Filesystem for BadInit {
        type Node = u32;
        type Handle = u32;
        fn root(&self) -> u32 {
            0
        }
        fn init(&self, _: &mut InitWishes) -> Result<()> {
            panic!("boom in init");
        }
    }
    let mut k = FakeKernel::new(BadInit);
    let r = k.init(45, InitFlags::INIT_EXT);
    assert_eq!(
        i32::from_ne_bytes(r.bytes[4..8].try_into().unwrap()),
        -nix::libc::EIO
    );
    assert!(k.session().init_state().is_none());
    assert_eq!(k.session().init_panic().as_deref(), Some("boom in init"));
}

#[test]
fn a_notify_reply_for_a_pending_retrieve_is_an_outcome_once() {
    let k = kernel();
    let session = k.session();
    let unique = session.begin_retrieve();
    let proto = k.proto();
    let arg = abi::fuse_notify_retrieve_in {
        offset: U64::new(4096),
        size: U32::new(3),
        ..Default::default()
    };
    let h = fuse_wire::request::encode::HeaderFields {
        unique,
        nodeid: 2,
        uid: 0,
        gid: 0,
        pid: 0,
    };
    let mut req = vec![0u8; 4096];
    let n = fuse_wire::request::encode::encode(
        &mut req,
        &proto,
        &h,
        &Operation::NotifyReply {
            arg: &arg,
            data: b"abc",
        },
        &Default::default(),
    )
    .unwrap();
    let mut out = vec![0u8; session.reply_buffer_size()];
    match session.handle(&req[..n], &mut out) {
        Outcome::Retrieved {
            notify_unique,
            offset,
            data,
        } => assert_eq!((notify_unique, offset, data), (unique, 4096, &b"abc"[..])),
        other => panic!("{other:?}"),
    }
    // Answered once: the same reply again is nobody's.
    assert!(matches!(
        session.handle(&req[..n], &mut out),
        Outcome::NoReply
    ));
    // A cancelled retrieve's late reply is dropped too.
    let late = session.begin_retrieve();
    session.cancel_retrieve(late);
    let h = fuse_wire::request::encode::HeaderFields { unique: late, ..h };
    let n = fuse_wire::request::encode::encode(
        &mut req,
        &proto,
        &h,
        &Operation::NotifyReply {
            arg: &arg,
            data: b"abc",
        },
        &Default::default(),
    )
    .unwrap();
    assert!(matches!(
        session.handle(&req[..n], &mut out),
        Outcome::NoReply
    ));
}

#[test]
fn a_panic_in_forget_or_destroy_is_contained() {
    silence_panics();
    struct BadEnd;
    impl Filesystem for BadEnd {
        type Node = u32;
        type Handle = u32;
        fn root(&self) -> u32 {
            0
        }
        fn lookup(&self, _: &RequestContext<'_>, _: &u32, _: &OsStr) -> Result<Entry<u32>> {
            Ok(entry(5))
        }
        fn forget(&self, _: u32) {
            panic!("boom in forget");
        }
        fn destroy(&self) {
            panic!("boom in destroy");
        }
    }
    let mut k = FakeKernel::new(BadEnd);
    k.init(45, InitFlags::INIT_EXT);
    let id = k.lookup(1, b"x").unwrap().nodeid;
    k.forget(id, 1);
    assert_eq!(
        k.session().node_count(),
        1,
        "forgotten although forget panicked"
    );
    // Still serving.
    assert!(k.lookup(1, b"y").is_ok());
    assert_eq!(k.status(1, &Operation::Destroy), 0, "DESTROY is answered");
    assert!(k.session().is_destroyed());
    assert_eq!(
        k.session()
            .stats()
            .panics
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}
