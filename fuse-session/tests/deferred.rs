//! Deferred replies in the sans-IO core, driven by the fake kernel: a request the
//! filesystem defers is answered later from another thread, with its own unique,
//! through the transport's `ReplySender`; a dropped token answers EIO; the step hook
//! sees each deferred reply exactly once; interrupts reach the token; requests that
//! cannot be deferred are answered synchronously.
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuse_session::fake::FakeKernel;
use fuse_session::*;
use fuse_wire::request::encode::{encode, HeaderFields};
use fuse_wire::request::Operation;
use fuse_wire::{abi, InitFlags};
use zerocopy::byteorder::native_endian::{U32, U64};

enum Token {
    Read(DeferredReply<Vec<u8>>),
    Write(DeferredReply<u32>),
    Lock(DeferredReply<()>),
}

/// Root (node 0) holds "f" (node 1). READ, WRITE and SETLKW are deferred and their
/// tokens sent to the test; LOOKUP tries to defer with the wrong type (refused) and
/// answers itself; FSYNC defers, then panics.
struct LaterFs {
    tokens: Mutex<mpsc::Sender<Token>>,
    lookup_could_defer: Mutex<Vec<bool>>,
}

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

impl Filesystem for LaterFs {
    type Node = u32;
    type Handle = u32;

    fn root(&self) -> u32 {
        0
    }

    fn lookup(&self, ctx: &RequestContext<'_>, _: &u32, name: &OsStr) -> Result<Entry<u32>> {
        self.lookup_could_defer
            .lock()
            .unwrap()
            .push(ctx.defer::<()>().is_some());
        if name != "f" {
            return Err(Errno::ENOENT);
        }
        Ok(Entry {
            node: 1,
            attr: attr(1),
            entry_ttl: Duration::ZERO,
            attr_ttl: Duration::ZERO,
        })
    }

    fn getattr(&self, _: &RequestContext<'_>, node: &u32, _: Option<&u32>) -> Result<AttrReply> {
        Ok(AttrReply {
            attr: attr(*node),
            ttl: Duration::ZERO,
        })
    }

    fn open(
        &self,
        _: &RequestContext<'_>,
        _: &u32,
        _: OpenFlags,
        _: FuseOpenFlags,
    ) -> Result<Opened<u32>> {
        Ok(Opened::new(7))
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
        match ctx.defer::<Vec<u8>>() {
            Some(t) => {
                self.tokens.lock().unwrap().send(Token::Read(t)).unwrap();
                // Ignored once deferred.
                Err(Errno::EAGAIN)
            }
            None => {
                out.set(b"synchronous");
                Ok(())
            }
        }
    }

    fn write(
        &self,
        ctx: &RequestContext<'_>,
        _: &u32,
        _: &u32,
        _: u64,
        _: &[u8],
        _: WriteFlags,
        _: OpenFlags,
    ) -> Result<u32> {
        let t = ctx.defer::<u32>().expect("WRITE can be deferred");
        // The wrong type, or a second token, is refused.
        assert!(ctx.defer::<()>().is_none());
        assert!(ctx.defer::<u32>().is_none());
        self.tokens.lock().unwrap().send(Token::Write(t)).unwrap();
        Ok(0)
    }

    fn setlk(
        &self,
        ctx: &RequestContext<'_>,
        _: &u32,
        _: &u32,
        _: u64,
        _: FileLock,
        _: bool,
        _: bool,
    ) -> Result<()> {
        let t = ctx.defer::<()>().expect("SETLKW can be deferred");
        self.tokens.lock().unwrap().send(Token::Lock(t)).unwrap();
        Ok(())
    }

    fn fsync(&self, ctx: &RequestContext<'_>, _: &u32, _: &u32, _: bool) -> Result<()> {
        let _t = ctx.defer::<()>().expect("FSYNC can be deferred");
        panic!("fsync panics after deferring");
    }
}

/// What the transport sent later: (tag, message).
#[derive(Default)]
struct Sent(Mutex<Vec<(usize, Vec<u8>)>>);

impl ReplySender for Sent {
    fn send_deferred(&self, tag: usize, reply: &ReplyParts<'_>) {
        self.0.lock().unwrap().push((tag, reply.to_vec()));
    }
}

/// Counts hook calls per unique.
#[derive(Default)]
struct Recorder {
    accepted: Mutex<BTreeMap<u64, usize>>,
    responded: Mutex<BTreeMap<u64, Vec<i32>>>,
}

impl StepHook for Recorder {
    fn accepted(&self, request: &Accepted<'_>) {
        *self
            .accepted
            .lock()
            .unwrap()
            .entry(request.unique())
            .or_default() += 1;
    }

    fn responding(&self, request: &Accepted<'_>, reply: &ReplyParts<'_>) {
        assert_eq!(request.unique(), reply.unique());
        assert!(
            request.request().is_some(),
            "the hook sees the request parsed"
        );
        self.responded
            .lock()
            .unwrap()
            .entry(request.unique())
            .or_default()
            .push(reply.error_code());
    }
}

struct Rig {
    k: FakeKernel<LaterFs>,
    tokens: mpsc::Receiver<Token>,
    hook: Arc<Recorder>,
    sent: Arc<Sent>,
    sender: Arc<dyn ReplySender>,
    fh: u64,
}

fn rig() -> Rig {
    let (tx, tokens) = mpsc::channel();
    let mut session = Session::new(LaterFs {
        tokens: Mutex::new(tx),
        lookup_could_defer: Mutex::new(Vec::new()),
    });
    let hook = Arc::new(Recorder::default());
    session.set_hook(hook.clone());
    let mut k = FakeKernel::with_session(session);
    k.init(45, InitFlags::INIT_EXT);
    let f = k.lookup(1, b"f").unwrap().nodeid;
    let fh = k.open(f, false, 0).unwrap();
    let sent = Arc::new(Sent::default());
    let sender: Arc<dyn ReplySender> = sent.clone();
    Rig {
        k,
        tokens,
        hook,
        sent,
        sender,
        fh,
    }
}

impl Rig {
    /// Runs `op` through the three steps with a reply space that allows deferring
    /// (tag `tag`); returns the unique and the synchronous reply, if any.
    fn call(&self, tag: usize, op: &Operation<'_>) -> (u64, Option<Vec<u8>>, bool) {
        let unique = self.k.next_unique() + 1000 + tag as u64;
        let session = self.k.session();
        let mut req = vec![0u8; 8192];
        let n = encode(
            &mut req,
            &session.negotiated(),
            &HeaderFields {
                unique,
                nodeid: 2,
                uid: 0,
                gid: 0,
                pid: 1,
            },
            op,
            &Default::default(),
        )
        .unwrap();
        let mut out = vec![0u8; session.reply_buffer_size()];
        let accepted = session.accept(&req[..n]);
        let outcome = session.call(
            &accepted,
            ReplySpace::new(&mut out).deferring(&self.sender, tag),
        );
        session.respond(&accepted, &outcome);
        match outcome {
            Outcome::Reply(p) => (unique, Some(p.to_vec()), false),
            Outcome::Deferred => (unique, None, true),
            other => panic!("unexpected outcome {other:?}"),
        }
    }

    fn sent(&self) -> Vec<(usize, Vec<u8>)> {
        self.sent.0.lock().unwrap().clone()
    }

    fn responded(&self, unique: u64) -> Vec<i32> {
        self.hook
            .responded
            .lock()
            .unwrap()
            .get(&unique)
            .cloned()
            .unwrap_or_default()
    }
}

fn header(msg: &[u8]) -> (u32, i32, u64) {
    (
        u32::from_ne_bytes(msg[0..4].try_into().unwrap()),
        i32::from_ne_bytes(msg[4..8].try_into().unwrap()),
        u64::from_ne_bytes(msg[8..16].try_into().unwrap()),
    )
}

fn read_op(fh: u64) -> abi::fuse_read_in {
    abi::fuse_read_in {
        fh: U64::new(fh),
        size: U32::new(8),
        ..Default::default()
    }
}

#[test]
fn a_deferred_read_answered_from_another_thread_reaches_the_kernel_with_its_unique() {
    let r = rig();
    let (unique, reply, deferred) = r.call(3, &Operation::Read { arg: read_op(r.fh) });
    assert!(deferred && reply.is_none());
    assert!(r.sent().is_empty(), "nothing is sent before the answer");
    assert!(
        r.responded(unique).is_empty(),
        "the hook waits for the answer"
    );
    // The worker serves other requests meanwhile.
    let (_, other, _) = r.call(
        0,
        &Operation::Getattr {
            arg: abi::fuse_getattr_in::default(),
        },
    );
    assert_eq!(header(&other.unwrap()).1, 0);
    let Token::Read(token) = r.tokens.try_recv().unwrap() else {
        panic!("not a read token")
    };
    assert_eq!(token.unique(), unique);
    assert!(!token.is_interrupted());
    // Answered on another thread, with more data than asked: cut to 8 bytes.
    std::thread::spawn(move || token.reply(b"0123456789abcdef".to_vec()))
        .join()
        .unwrap();
    let sent = r.sent();
    assert_eq!(sent.len(), 1);
    let (tag, msg) = &sent[0];
    assert_eq!(*tag, 3, "the transport's tag comes back");
    assert_eq!(header(msg), (16 + 8, 0, unique));
    assert_eq!(&msg[16..], b"01234567");
    assert_eq!(r.responded(unique), vec![0], "the hook saw it once");
    assert_eq!(r.hook.accepted.lock().unwrap().get(&unique), Some(&1));
}

#[test]
fn a_dropped_token_answers_eio_once() {
    let r = rig();
    let arg = abi::fuse_write_in {
        fh: U64::new(r.fh),
        size: U32::new(3),
        ..Default::default()
    };
    let (unique, _, deferred) = r.call(1, &Operation::Write { arg, data: b"abc" });
    assert!(deferred);
    let Token::Write(token) = r.tokens.try_recv().unwrap() else {
        panic!("not a write token")
    };
    std::thread::spawn(move || drop(token)).join().unwrap();
    let sent = r.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(header(&sent[0].1), (16, -libc_eio(), unique));
    assert_eq!(r.responded(unique), vec![-libc_eio()]);
}

fn libc_eio() -> i32 {
    Errno::EIO.0
}

#[test]
fn a_deferred_write_answers_its_count() {
    let r = rig();
    let arg = abi::fuse_write_in {
        fh: U64::new(r.fh),
        size: U32::new(3),
        ..Default::default()
    };
    let (unique, _, _) = r.call(2, &Operation::Write { arg, data: b"abc" });
    let Token::Write(token) = r.tokens.try_recv().unwrap() else {
        panic!("not a write token")
    };
    token.answer(Ok(3));
    let sent = r.sent();
    let msg = &sent[0].1;
    assert_eq!(header(msg), (16 + 8, 0, unique));
    assert_eq!(u32::from_ne_bytes(msg[16..20].try_into().unwrap()), 3);
}

#[test]
fn an_interrupt_reaches_a_deferred_request() {
    let mut r = rig();
    let arg = abi::fuse_lk_in {
        fh: U64::new(r.fh),
        ..Default::default()
    };
    let (unique, _, deferred) = r.call(4, &Operation::Setlkw { arg: &arg });
    assert!(deferred);
    let Token::Lock(token) = r.tokens.try_recv().unwrap() else {
        panic!("not a lock token")
    };
    assert!(!token.is_interrupted());
    // The worker's next request reuses its interrupt flag: the deferred one must
    // not see that request's state, nor lose its own.
    let _ = r.call(
        0,
        &Operation::Getattr {
            arg: abi::fuse_getattr_in::default(),
        },
    );
    let intr = abi::fuse_interrupt_in {
        unique: U64::new(unique),
    };
    assert!(r.k.call(1, &Operation::Interrupt { arg: &intr }).is_none());
    assert!(token.is_interrupted());
    token.error(Errno::EINTR);
    assert_eq!(header(&r.sent()[0].1), (16, -Errno::EINTR.0, unique));
}

#[test]
fn what_cannot_be_deferred_is_answered_synchronously() {
    let mut r = rig();
    // LOOKUP asks to defer with `()`: refused, answered by the method.
    let (_, reply, deferred) = r.call(
        0,
        &Operation::Lookup {
            name: b"f".as_slice(),
        },
    );
    assert!(!deferred);
    assert_eq!(header(&reply.unwrap()).1, 0);
    assert_eq!(
        *r.k.session()
            .filesystem()
            .lookup_could_defer
            .lock()
            .unwrap(),
        [false, false]
    );
    // Without a deferring reply space (the fake kernel's own path), READ cannot
    // defer and answers synchronously.
    let reply =
        r.k.call(2, &Operation::Read { arg: read_op(r.fh) })
            .unwrap();
    assert_eq!(&reply.bytes[16..], b"synchron");
    assert!(r.sent().is_empty());
}

#[test]
fn a_panic_after_deferring_is_answered_once_by_the_token() {
    let r = rig();
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let arg = abi::fuse_fsync_in {
        fh: U64::new(r.fh),
        ..Default::default()
    };
    let (unique, reply, deferred) = r.call(5, &Operation::Fsync { arg: &arg });
    std::panic::set_hook(prev);
    assert!(
        deferred && reply.is_none(),
        "the session does not answer too"
    );
    let sent = r.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(header(&sent[0].1), (16, -Errno::EIO.0, unique));
    assert_eq!(r.responded(unique), vec![-Errno::EIO.0]);
}
