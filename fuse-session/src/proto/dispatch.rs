//! One request in, one reply out: the per-opcode logic of [`Session::call`].
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fuse_wire::request::{Operation, Request, RequestHeader};
use fuse_wire::{abi, reply, InitFlags, RequestFlags, SetattrValid};
use zerocopy::byteorder::native_endian::{I64, U16, U32, U64};

use crate::flags::{AccessMask, FuseOpenFlags, OpenFlags, RenameFlags, WriteFlags};
use crate::fs::{Filesystem, PollHandle, StatxReply};
use crate::proto::bufs::{DirEntries, DirEntriesPlus, ReadBuf, ReadData};
use crate::proto::defer::{DeferSeed, ReplySender};
use crate::proto::handles::{HandleEntry, HandleKind};
use crate::proto::init::{negotiate, InitError, KernelOffer};

/// `FUSE_READ_LOCKOWNER`: READ's `lock_owner` is set.
const READ_LOCKOWNER: u32 = 1 << 1;
use crate::proto::nodes::ROOT_ID;
use crate::proto::session::{lock, InitState, Session, POKE_NAME};
use crate::proto::step::{panic_message, Outcome, ReplyParts};
use crate::types::*;

/// The outcome of one operation before encoding errors are folded in.
type Out = std::result::Result<(usize, Option<u64>), Errno>;

fn name(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

fn ttl_entry<N>(e: &Entry<N>, nodeid: u64, generation: u64) -> reply::Entry {
    reply::Entry {
        nodeid,
        generation,
        entry_valid: e.entry_ttl,
        attr_valid: e.attr_ttl,
        attr: e.attr.to_wire(),
    }
}

fn encode_failed(e: fuse_wire::EncodeError) -> Errno {
    log::error!("could not encode a reply: {e}");
    Errno::EIO
}

fn enc(r: std::result::Result<usize, fuse_wire::EncodeError>) -> std::result::Result<usize, Errno> {
    r.map_err(encode_failed)
}

fn time_of(secs: u64, nsecs: u32) -> std::time::SystemTime {
    join_time(secs as i64, nsecs)
}

impl<F: Filesystem> Session<F> {
    /// Runs one parsed request (the body of [`Session::call`], inside its
    /// `catch_unwind`): `out` is the reply space, READ data goes at `out[data_at..]`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run<'a>(
        &'a self,
        req: &Request<'a>,
        out: &'a mut [u8],
        data_at: usize,
        data_in_space: bool,
        defer: Option<(&'a Arc<dyn ReplySender>, usize)>,
        bytes: &'a [u8],
        taken: &AtomicBool,
    ) -> Outcome<'a> {
        let header = *req.header();
        let unique = header.unique();
        let op = *req.op();
        if log::log_enabled!(log::Level::Debug) {
            log::debug!("<- {req}");
        }
        // Requests that are never answered, and INIT.
        match op {
            Operation::Forget { arg } => {
                self.forget_one(header.nodeid(), arg.nlookup.get());
                return Outcome::NoReply;
            }
            Operation::BatchForget { forgets } => {
                for f in forgets {
                    self.forget_one(f.nodeid.get(), f.nlookup.get());
                }
                return Outcome::NoReply;
            }
            Operation::Interrupt { arg } => {
                self.interrupt(arg.unique.get());
                return Outcome::NoReply;
            }
            Operation::NotifyReply { arg, data } => {
                // The answer to a NOTIFY_RETRIEVE: `unique` is the notify unique.
                if lock(&self.retrieves).remove(&unique) {
                    return Outcome::Retrieved {
                        notify_unique: unique,
                        offset: arg.offset.get(),
                        data,
                    };
                }
                log::debug!("NOTIFY_REPLY for unknown retrieve {unique}: dropped");
                return Outcome::NoReply;
            }
            Operation::Init { arg } => return self.do_init(out, unique, &arg),
            _ => {}
        }
        if self.init.get().is_none() {
            log::warn!("{} before INIT: answering EIO", header.opcode());
            return Outcome::Reply(self.error_parts(unique, Errno::EIO));
        }
        if let Operation::Lookup { name } = op {
            if header.nodeid() == ROOT_ID && name == POKE_NAME.as_bytes() {
                // A wake-up poke from the serving layer: no filesystem call.
                self.stats.pokes.fetch_add(1, Ordering::Relaxed);
                return Outcome::Reply(ReplyParts::error(unique, Errno::ENOENT));
            }
        }
        if let Some(owner) = self.only_uid {
            if header.uid() != owner && header.uid() != 0 {
                return Outcome::Reply(self.error_parts(unique, Errno::EACCES));
            }
        }
        // The interrupt flag is the worker thread's, reused from one request to the
        // next and borrowed here (no reference count taken for the request itself).
        thread_local! {
            static FLAG: Arc<AtomicBool> = Arc::new(AtomicBool::new(false));
        }
        FLAG.with(|flag| {
            self.begin(unique, flag);
            let seed = defer.map(|(sink, tag)| DeferSeed {
                sink,
                tag,
                shared: &self.deferred,
                hook: self.hook.as_ref(),
                bytes,
                proto: self.negotiated(),
                unique,
                opcode: header.opcode(),
                max_data: match op {
                    Operation::Read { arg } => arg.size.get() as usize,
                    _ => 0,
                },
                flag,
                taken,
            });
            let ctx = RequestContext {
                unique,
                uid: crate::types::id_of(header.uid()),
                gid: crate::types::id_of(header.gid()),
                pid: header.pid(),
                umask: None,
                // Most requests carry no extension: skip looking for one.
                supp_groups: if header.extensions_len() == 0 {
                    &[]
                } else {
                    req.extensions().supp_groups().unwrap_or(&[])
                },
                interrupted: Some(&**flag),
                defer: seed.as_ref(),
            };
            let result = self.dispatch(&header, op, ctx, out, data_at);
            if taken.load(Ordering::Acquire) {
                // The token owns the request now (and ends it when answered).
                return Outcome::Deferred;
            }
            self.end(unique);
            match result {
                Ok(Dispatched::Whole(n, counted)) => {
                    log::debug!("-> unique={unique} ok ({n} bytes)");
                    Outcome::Reply(ReplyParts::encoded(&out[..n], unique, counted))
                }
                Ok(Dispatched::Read(data)) => self.finish_read(
                    out.get_mut(data_at..).unwrap_or_default(),
                    unique,
                    data,
                    data_in_space,
                ),
                Ok(Dispatched::Destroy(n)) => {
                    self.shutdown();
                    Outcome::Reply(ReplyParts::encoded(&out[..n], unique, None))
                }
                Err(errno) => Outcome::Reply(self.error_parts(unique, errno)),
            }
        })
    }

    fn finish_read<'a>(
        &'a self,
        rest: &'a mut [u8],
        unique: u64,
        data: ReadData<'a>,
        data_in_space: bool,
    ) -> Outcome<'a> {
        let payload: &'a [u8] = match data {
            ReadData::Lent(d) if data_in_space => match rest.get_mut(..d.len()) {
                Some(space) => {
                    space.copy_from_slice(d);
                    space
                }
                None => return Outcome::Reply(self.error_parts(unique, Errno::EIO)),
            },
            ReadData::Lent(d) => d,
            ReadData::InPlace(n) => {
                let n = n.min(rest.len());
                &rest[..n]
            }
        };
        let head = match reply::data_header(unique, payload.len()) {
            Ok(h) => h,
            Err(_) => return Outcome::Reply(self.error_parts(unique, Errno::EIO)),
        };
        log::debug!("-> unique={unique} ok ({} bytes of data)", payload.len());
        Outcome::Reply(ReplyParts::with_data(head, payload))
    }

    fn do_init<'a>(&self, out: &'a mut [u8], unique: u64, arg: &abi::fuse_init_in) -> Outcome<'a> {
        let low = arg.flags.get();
        let high = if low & InitFlags::INIT_EXT.low() != 0 {
            arg.flags2.get()
        } else {
            0
        };
        let offer = KernelOffer {
            major: arg.major.get(),
            minor: arg.minor.get(),
            max_readahead: arg.max_readahead.get(),
            flags: InitFlags::from_halves(low, high).0,
        };
        if self.init.get().is_some() {
            log::warn!("second INIT on an initialized session: answering EIO");
            return Outcome::Reply(self.error_parts(unique, Errno::EIO));
        }
        let mut wishes = lock(&self.wishes).unwrap_or_default();
        wishes.offered = offer.init_flags();
        if !wishes.offered.contains(InitFlags::INIT_EXT) {
            wishes.offered = InitFlags(wishes.offered.0 & 0xffff_ffff);
        }
        match catch_unwind(AssertUnwindSafe(|| self.fs.init(&mut wishes))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                log::error!("filesystem init failed: {e}");
                return Outcome::Reply(self.error_parts(unique, e));
            }
            Err(payload) => {
                let msg = panic_message(&*payload);
                log::error!("the filesystem panicked in init: {msg}; answering INIT with EIO");
                self.stats.panics.fetch_add(1, Ordering::Relaxed);
                *lock(&self.init_panic) = Some(msg);
                return Outcome::Reply(self.error_parts(unique, Errno::EIO));
            }
        }
        if self.uring_wish.load(Ordering::Relaxed) {
            // The serving layer will register io_uring queues once INIT is done.
            wishes.flags |= InitFlags::OVER_IO_URING;
        }
        match negotiate(&offer, &wishes, self.page_size) {
            Ok(result) => {
                let _ = self.init.set(InitState { offer, result });
                *lock(&self.wishes) = Some(wishes);
                log::info!(
                    "INIT: kernel 7.{} offered {:?}; agreed 7.{} {:?}, max_write {}, max_pages {}",
                    offer.minor,
                    offer.init_flags(),
                    result.minor,
                    InitFlags(result.flags),
                    result.max_write,
                    result.max_pages
                );
                match enc(reply::init(out, unique, offer.minor, &result.to_init_out())) {
                    Ok(n) => Outcome::Reply(ReplyParts::encoded(&out[..n], unique, None)),
                    Err(e) => Outcome::Reply(self.error_parts(unique, e)),
                }
            }
            Err(InitError::NewerMajor) => {
                // Answer with our major only; the kernel sends a new INIT.
                let o = reply::InitOut {
                    major: abi::FUSE_KERNEL_VERSION,
                    minor: abi::FUSE_KERNEL_MINOR_VERSION,
                    ..Default::default()
                };
                match enc(reply::init(out, unique, offer.minor, &o)) {
                    Ok(n) => Outcome::Reply(ReplyParts::encoded(&out[..n], unique, None)),
                    Err(e) => Outcome::Reply(self.error_parts(unique, e)),
                }
            }
            Err(e @ InitError::TooOld { .. }) => {
                log::error!("{e}");
                Outcome::Reply(self.error_parts(unique, Errno(nix::libc::EPROTO)))
            }
            Err(e @ InitError::Missing(missing)) => {
                log::error!("{e}; answering INIT with EPROTO");
                *lock(&self.init_missing) = Some(missing);
                Outcome::Reply(self.error_parts(unique, Errno(nix::libc::EPROTO)))
            }
        }
    }

    /// The filesystem's node of `nodeid`.
    fn node(&self, nodeid: u64) -> Result<F::Node> {
        if let Some(e) = lock(&self.nodes).get(nodeid) {
            return Ok(e.node.clone());
        }
        // A nodeid the kernel forgot, named again through a file handle
        // (EXPORT_SUPPORT): a filesystem with stable ids can resolve it. The reply's
        // entry then gets this nodeid again (NodeTable numbers it by stable_id).
        if let Some(node) = self.fs.resolve_stable_id(nodeid) {
            if F::stable_id(&node).is_some_and(|(id, _)| id == nodeid) {
                log::debug!(
                    "nodeid {nodeid} resolved by the filesystem after the kernel forgot it"
                );
                return Ok(node);
            }
        }
        log::warn!("request for unknown nodeid {nodeid}: answering ESTALE");
        Err(Errno::ESTALE)
    }

    /// The filesystem's handle of `fh`.
    fn handle_of(&self, fh: u64, kind: HandleKind) -> Result<F::Handle> {
        match lock(&self.handles).get(fh, kind) {
            Some(e) => Ok(e.handle.clone()),
            None => {
                log::warn!("request for unknown {kind:?} handle {fh}: answering EBADF");
                Err(Errno::EBADF)
            }
        }
    }

    /// Counts a lookup of `entry` and encodes the entry reply.
    fn entry_reply(&self, out: &mut [u8], unique: u64, entry: &Entry<F::Node>) -> Out {
        let (id, generation) = lock(&self.nodes).lookup(&entry.node);
        let proto = self.negotiated();
        match reply::entry(out, unique, &proto, &ttl_entry(entry, id, generation)) {
            Ok(n) => Ok((n, Some(id))),
            Err(e) => {
                self.reply_lost(id);
                log::error!("could not encode an entry reply: {e}");
                Err(Errno::EIO)
            }
        }
    }

    /// Counts a lookup, stores the handle, and encodes a CREATE/TMPFILE reply.
    fn create_reply(
        &self,
        out: &mut [u8],
        unique: u64,
        flags: u32,
        (entry, opened): (Entry<F::Node>, Opened<F::Handle>),
        tmpfile: bool,
    ) -> Out {
        let (id, generation) = lock(&self.nodes).lookup(&entry.node);
        let fh = lock(&self.handles).insert(HandleEntry {
            handle: opened.handle,
            kind: HandleKind::File,
            nodeid: id,
            flags,
        });
        let proto = self.negotiated();
        let open = reply::Open {
            fh,
            flags: opened.flags,
            backing_id: opened.backing_id,
        };
        // TMPFILE keeps the whole entry at every minor (the kernel's
        // fuse_adjust_compat shortens it only for the six older operations).
        let encode = if tmpfile {
            reply::tmpfile
        } else {
            reply::create
        };
        match encode(
            out,
            unique,
            &proto,
            &ttl_entry(&entry, id, generation),
            &open,
        ) {
            Ok(n) => Ok((n, Some(id))),
            Err(e) => {
                log::error!("could not encode a create reply: {e}");
                lock(&self.handles).remove(fh, HandleKind::File);
                self.reply_lost(id);
                Err(Errno::EIO)
            }
        }
    }

    fn open_reply(
        &self,
        out: &mut [u8],
        unique: u64,
        nodeid: u64,
        kind: HandleKind,
        flags: u32,
        opened: Opened<F::Handle>,
    ) -> Out {
        let fh = lock(&self.handles).insert(HandleEntry {
            handle: opened.handle,
            kind,
            nodeid,
            flags,
        });
        let open = reply::Open {
            fh,
            flags: opened.flags,
            backing_id: opened.backing_id,
        };
        match reply::open(out, unique, &self.negotiated(), &open) {
            Ok(n) => Ok((n, None)),
            Err(e) => {
                log::error!("could not encode an open reply: {e}");
                lock(&self.handles).remove(fh, kind);
                Err(Errno::EIO)
            }
        }
    }

    fn dispatch<'a>(
        &'a self,
        header: &RequestHeader<'_>,
        op: Operation<'_>,
        mut ctx: RequestContext<'_>,
        out: &mut [u8],
        data_at: usize,
    ) -> std::result::Result<Dispatched<'a>, Errno> {
        let fs = &self.fs;
        let unique = header.unique();
        let nodeid = header.nodeid();
        let proto = self.negotiated();
        let whole = |r: Out| r.map(|(n, c)| Dispatched::Whole(n, c));
        let empty = |out: &mut [u8], r: Result<()>| {
            r?;
            enc(reply::empty(out, unique)).map(|n| Dispatched::Whole(n, None))
        };
        match op {
            Operation::Lookup { name: n } => {
                let parent = self.node(nodeid)?;
                let e = fs.lookup(&ctx, &parent, name(n))?;
                whole(self.entry_reply(out, unique, &e))
            }
            Operation::Getattr { arg } => {
                let node = self.node(nodeid)?;
                let fh = if arg.getattr_flags.get() & RequestFlags::GETATTR_FH.0 != 0 {
                    lock(&self.handles)
                        .get_any(arg.fh.get())
                        .map(|e| e.handle.clone())
                } else {
                    None
                };
                let a = fs.getattr(&ctx, &node, fh.as_ref())?;
                whole(
                    enc(reply::attr(out, unique, &proto, a.ttl, &a.attr.to_wire()))
                        .map(|n| (n, None)),
                )
            }
            Operation::Setattr { arg } => {
                let node = self.node(nodeid)?;
                let valid = SetattrValid(arg.valid.get());
                let fh = if valid.contains(SetattrValid::FH) {
                    lock(&self.handles)
                        .get_any(arg.fh.get())
                        .map(|e| e.handle.clone())
                } else {
                    None
                };
                let set = setattr_of(arg, valid);
                let a = fs.setattr(&ctx, &node, fh.as_ref(), &set)?;
                whole(
                    enc(reply::attr(out, unique, &proto, a.ttl, &a.attr.to_wire()))
                        .map(|n| (n, None)),
                )
            }
            Operation::Readlink => {
                let node = self.node(nodeid)?;
                let target = fs.readlink(&ctx, &node)?;
                whole(enc(reply::data(out, unique, &target)).map(|n| (n, None)))
            }
            Operation::Symlink { name: n, target } => {
                let parent = self.node(nodeid)?;
                let e = fs.symlink(&ctx, &parent, name(n), name(target))?;
                whole(self.entry_reply(out, unique, &e))
            }
            Operation::Mknod { arg, name: n } => {
                let parent = self.node(nodeid)?;
                ctx.umask = Some(arg.umask.get());
                let e = fs.mknod(&ctx, &parent, name(n), arg.mode.get(), arg.rdev.get())?;
                whole(self.entry_reply(out, unique, &e))
            }
            Operation::Mkdir { arg, name: n } => {
                let parent = self.node(nodeid)?;
                ctx.umask = Some(arg.umask.get());
                let e = fs.mkdir(&ctx, &parent, name(n), arg.mode.get())?;
                whole(self.entry_reply(out, unique, &e))
            }
            Operation::Unlink { name: n } => {
                let parent = self.node(nodeid)?;
                empty(out, fs.unlink(&ctx, &parent, name(n)))
            }
            Operation::Rmdir { name: n } => {
                let parent = self.node(nodeid)?;
                empty(out, fs.rmdir(&ctx, &parent, name(n)))
            }
            Operation::Rename {
                arg,
                name: n,
                newname,
            } => {
                let parent = self.node(nodeid)?;
                let newparent = self.node(arg.newdir.get())?;
                empty(
                    out,
                    fs.rename(
                        &ctx,
                        &parent,
                        name(n),
                        &newparent,
                        name(newname),
                        RenameFlags::EMPTY,
                    ),
                )
            }
            Operation::Rename2 {
                arg,
                name: n,
                newname,
            } => {
                let parent = self.node(nodeid)?;
                let newparent = self.node(arg.newdir.get())?;
                let r = fs.rename(
                    &ctx,
                    &parent,
                    name(n),
                    &newparent,
                    name(newname),
                    RenameFlags(arg.flags.get()),
                );
                empty(out, r)
            }
            Operation::Link { arg, newname } => {
                let node = self.node(arg.oldnodeid.get())?;
                let newparent = self.node(nodeid)?;
                let e = fs.link(&ctx, &node, &newparent, name(newname))?;
                whole(self.entry_reply(out, unique, &e))
            }
            Operation::Open { arg } => {
                let node = self.node(nodeid)?;
                let flags = arg.flags.get();
                let opened = fs.open(
                    &ctx,
                    &node,
                    OpenFlags(flags as i32),
                    FuseOpenFlags(arg.open_flags.get()),
                )?;
                whole(self.open_reply(out, unique, nodeid, HandleKind::File, flags, opened))
            }
            Operation::Read { arg } => {
                let node = self.node(nodeid)?;
                let fh = self.handle_of(arg.fh.get(), HandleKind::File)?;
                let Some((_, rest)) = out.split_at_mut_checked(data_at) else {
                    log::error!(
                        "reply space shorter than its data offset: see Session::reply_buffer_size"
                    );
                    return Err(Errno::EIO);
                };
                let size = (arg.size.get() as usize).min(rest.len());
                let mut buf = ReadBuf::new(&mut rest[..size]);
                // FUSE_READ_LOCKOWNER: the lock owner field is meaningful.
                let lock_owner =
                    (arg.read_flags.get() & READ_LOCKOWNER != 0).then(|| arg.lock_owner.get());
                fs.read(
                    &ctx,
                    &node,
                    &fh,
                    arg.offset.get(),
                    size as u32,
                    OpenFlags(arg.flags.get() as i32),
                    lock_owner,
                    &mut buf,
                )?;
                Ok(Dispatched::Read(buf.into_data()))
            }
            Operation::Write { arg, data } => {
                let node = self.node(nodeid)?;
                let fh = self.handle_of(arg.fh.get(), HandleKind::File)?;
                let n = fs.write(
                    &ctx,
                    &node,
                    &fh,
                    arg.offset.get(),
                    data,
                    WriteFlags(arg.write_flags.get()),
                    OpenFlags(arg.flags.get() as i32),
                )?;
                whole(enc(reply::write(out, unique, n)).map(|n| (n, None)))
            }
            Operation::Statfs => {
                let node = self.node(nodeid)?;
                let st = fs.statfs(&ctx, &node)?;
                whole(enc(reply::statfs(out, unique, &proto, &st)).map(|n| (n, None)))
            }
            Operation::Release { arg } => {
                let node = self.node(nodeid)?;
                let entry = lock(&self.handles)
                    .remove(arg.fh.get(), HandleKind::File)
                    .ok_or(Errno::EBADF)?;
                let flush = arg.release_flags.get() & RequestFlags::RELEASE_FLUSH.0 != 0;
                let r = fs.release(
                    &ctx,
                    &node,
                    entry.handle,
                    arg.flags.get() as i32,
                    arg.lock_owner.get(),
                    flush,
                );
                empty(out, r)
            }
            Operation::Fsync { arg } => {
                let node = self.node(nodeid)?;
                let fh = self.handle_of(arg.fh.get(), HandleKind::File)?;
                let datasync = arg.fsync_flags.get() & RequestFlags::FSYNC_FDATASYNC.0 != 0;
                empty(out, fs.fsync(&ctx, &node, &fh, datasync))
            }
            Operation::Setxattr {
                arg,
                name: n,
                value,
            } => {
                let node = self.node(nodeid)?;
                let r = fs.setxattr(
                    &ctx,
                    &node,
                    name(n),
                    value,
                    arg.flags.get() as i32,
                    arg.setxattr_flags.get(),
                );
                empty(out, r)
            }
            Operation::Getxattr { arg, name: n } => {
                let node = self.node(nodeid)?;
                let size = arg.size.get();
                let x = fs.getxattr(&ctx, &node, name(n), size)?;
                whole(self.xattr_reply(out, unique, size, x))
            }
            Operation::Listxattr { arg } => {
                let node = self.node(nodeid)?;
                let size = arg.size.get();
                let x = fs.listxattr(&ctx, &node, size)?;
                whole(self.xattr_reply(out, unique, size, x))
            }
            Operation::Removexattr { name: n } => {
                let node = self.node(nodeid)?;
                empty(out, fs.removexattr(&ctx, &node, name(n)))
            }
            Operation::Flush { arg } => {
                let node = self.node(nodeid)?;
                let fh = self.handle_of(arg.fh.get(), HandleKind::File)?;
                empty(out, fs.flush(&ctx, &node, &fh, arg.lock_owner.get()))
            }
            Operation::Opendir { arg } => {
                let node = self.node(nodeid)?;
                let flags = arg.flags.get();
                let opened = fs.opendir(&ctx, &node, flags as i32)?;
                whole(self.open_reply(out, unique, nodeid, HandleKind::Dir, flags, opened))
            }
            Operation::Readdir { arg } => {
                let node = self.node(nodeid)?;
                let fh = self.handle_of(arg.fh.get(), HandleKind::Dir)?;
                let writer = reply::DirentWriter::new(out, unique, arg.size.get() as usize)
                    .map_err(encode_failed)?;
                let mut entries = DirEntries {
                    writer,
                    error: None,
                };
                fs.readdir(&ctx, &node, &fh, arg.offset.get(), &mut entries)?;
                if let Some(e) = entries.error {
                    log::warn!("readdir entry refused: {e}");
                }
                let n = enc(entries.writer.finish())?;
                Ok(Dispatched::Whole(n, None))
            }
            Operation::Readdirplus { arg } => {
                let node = self.node(nodeid)?;
                let fh = self.handle_of(arg.fh.get(), HandleKind::Dir)?;
                let writer = reply::DirentWriter::new(out, unique, arg.size.get() as usize)
                    .map_err(encode_failed)?;
                let mut entries = DirEntriesPlus {
                    writer,
                    nodes: &self.nodes,
                    error: None,
                    dropped: Vec::new(),
                    counted: Vec::new(),
                };
                let r = catch_unwind(AssertUnwindSafe(|| {
                    fs.readdirplus(&ctx, &node, &fh, arg.offset.get(), &mut entries)
                }));
                let r = match r {
                    Ok(r) => r,
                    Err(payload) => {
                        // The entries added so far were counted and will never reach
                        // the kernel: take the counts back before answering.
                        entries.undo();
                        for n in entries.dropped.drain(..) {
                            fs.forget(n);
                        }
                        resume_unwind(payload)
                    }
                };
                for n in entries.dropped.drain(..) {
                    fs.forget(n);
                }
                r?;
                if let Some(e) = entries.error {
                    log::warn!("readdirplus entry refused: {e}");
                }
                let n = enc(entries.writer.finish())?;
                Ok(Dispatched::Whole(n, None))
            }
            Operation::Releasedir { arg } => {
                let node = self.node(nodeid)?;
                let entry = lock(&self.handles)
                    .remove(arg.fh.get(), HandleKind::Dir)
                    .ok_or(Errno::EBADF)?;
                empty(
                    out,
                    fs.releasedir(&ctx, &node, entry.handle, arg.flags.get() as i32),
                )
            }
            Operation::Fsyncdir { arg } => {
                let node = self.node(nodeid)?;
                let fh = self.handle_of(arg.fh.get(), HandleKind::Dir)?;
                let datasync = arg.fsync_flags.get() & RequestFlags::FSYNC_FDATASYNC.0 != 0;
                empty(out, fs.fsyncdir(&ctx, &node, &fh, datasync))
            }
            Operation::Getlk { arg } => {
                let node = self.node(nodeid)?;
                let fh = self.handle_of(arg.fh.get(), HandleKind::File)?;
                let lk = fs.getlk(
                    &ctx,
                    &node,
                    &fh,
                    arg.owner.get(),
                    FileLock::from_abi(&arg.lk),
                )?;
                whole(enc(reply::lk(out, unique, &lk)).map(|n| (n, None)))
            }
            Operation::Setlk { arg } | Operation::Setlkw { arg } => {
                let sleep = matches!(op, Operation::Setlkw { .. });
                let node = self.node(nodeid)?;
                let fh = self.handle_of(arg.fh.get(), HandleKind::File)?;
                let flock = arg.lk_flags.get() & RequestFlags::LK_FLOCK.0 != 0;
                let r = fs.setlk(
                    &ctx,
                    &node,
                    &fh,
                    arg.owner.get(),
                    FileLock::from_abi(&arg.lk),
                    sleep,
                    flock,
                );
                empty(out, r)
            }
            Operation::Access { arg } => {
                let node = self.node(nodeid)?;
                empty(out, fs.access(&ctx, &node, AccessMask(arg.mask.get())))
            }
            Operation::Create { arg, name: n } => {
                let parent = self.node(nodeid)?;
                ctx.umask = Some(arg.umask.get());
                let flags = arg.flags.get();
                let created = fs.create(
                    &ctx,
                    &parent,
                    name(n),
                    arg.mode.get(),
                    OpenFlags(flags as i32),
                    FuseOpenFlags(arg.open_flags.get()),
                )?;
                whole(self.create_reply(out, unique, flags, created, false))
            }
            Operation::Tmpfile { arg, .. } => {
                let parent = self.node(nodeid)?;
                ctx.umask = Some(arg.umask.get());
                let flags = arg.flags.get();
                let created = fs.tmpfile(
                    &ctx,
                    &parent,
                    arg.mode.get(),
                    OpenFlags(flags as i32),
                    FuseOpenFlags(arg.open_flags.get()),
                )?;
                whole(self.create_reply(out, unique, flags, created, true))
            }
            Operation::Bmap { arg } => {
                let node = self.node(nodeid)?;
                let b = fs.bmap(&ctx, &node, arg.blocksize.get(), arg.block.get())?;
                whole(enc(reply::bmap(out, unique, b)).map(|n| (n, None)))
            }
            Operation::Destroy => {
                let n = enc(reply::empty(out, unique))?;
                Ok(Dispatched::Destroy(n))
            }
            Operation::Ioctl { arg, data } => {
                let node = self.node(nodeid)?;
                let fh = self
                    .handle_of(arg.fh.get(), HandleKind::File)
                    .or_else(|_| self.handle_of(arg.fh.get(), HandleKind::Dir))?;
                let r = fs.ioctl(
                    &ctx,
                    &node,
                    &fh,
                    arg.flags.get(),
                    arg.cmd.get(),
                    arg.arg.get(),
                    data,
                    arg.out_size.get(),
                )?;
                let n = match r {
                    IoctlReply::Done { result, data } => {
                        let max = arg.out_size.get() as usize;
                        enc(reply::ioctl(
                            out,
                            unique,
                            result,
                            &data[..data.len().min(max)],
                        ))?
                    }
                    IoctlReply::Retry { input, output } => {
                        enc(reply::ioctl_retry(out, unique, &proto, &input, &output))?
                    }
                };
                Ok(Dispatched::Whole(n, None))
            }
            Operation::Poll { arg } => {
                let node = self.node(nodeid)?;
                let fh = self.handle_of(arg.fh.get(), HandleKind::File)?;
                let kh = if arg.flags.get() & RequestFlags::POLL_SCHEDULE_NOTIFY.0 != 0 {
                    lock(&self.polls).insert(arg.kh.get());
                    Some(PollHandle(arg.kh.get()))
                } else {
                    None
                };
                let revents = fs.poll(&ctx, &node, &fh, kh, arg.events.get())?;
                whole(enc(reply::poll(out, unique, revents)).map(|n| (n, None)))
            }
            Operation::Fallocate { arg } => {
                let node = self.node(nodeid)?;
                let fh = self.handle_of(arg.fh.get(), HandleKind::File)?;
                empty(
                    out,
                    fs.fallocate(
                        &ctx,
                        &node,
                        &fh,
                        arg.offset.get(),
                        arg.length.get(),
                        arg.mode.get(),
                    ),
                )
            }
            Operation::Lseek { arg } => {
                let node = self.node(nodeid)?;
                let fh = self.handle_of(arg.fh.get(), HandleKind::File)?;
                let off = fs.lseek(&ctx, &node, &fh, arg.offset.get(), arg.whence.get())?;
                whole(enc(reply::lseek(out, unique, off)).map(|n| (n, None)))
            }
            Operation::CopyFileRange { arg } | Operation::CopyFileRange64 { arg } => {
                let wide = matches!(op, Operation::CopyFileRange64 { .. });
                let node_in = self.node(nodeid)?;
                let fh_in = self.handle_of(arg.fh_in.get(), HandleKind::File)?;
                let node_out = self.node(arg.nodeid_out.get())?;
                let fh_out = self.handle_of(arg.fh_out.get(), HandleKind::File)?;
                let len = if wide {
                    arg.len.get()
                } else {
                    arg.len.get().min(u64::from(u32::MAX) - 4095)
                };
                let n = fs.copy_file_range(
                    &ctx,
                    &node_in,
                    &fh_in,
                    arg.off_in.get(),
                    &node_out,
                    &fh_out,
                    arg.off_out.get(),
                    len,
                    arg.flags.get(),
                )?;
                let r = if wide {
                    reply::copy_file_range_64(out, unique, n)
                } else {
                    reply::copy_file_range(out, unique, u32::try_from(n).unwrap_or(u32::MAX))
                };
                whole(enc(r).map(|n| (n, None)))
            }
            Operation::Syncfs { .. } => {
                let node = self.node(nodeid)?;
                empty(out, fs.syncfs(&ctx, &node))
            }
            Operation::Statx { arg } => {
                let node = self.node(nodeid)?;
                let fh = if arg.getattr_flags.get() & RequestFlags::GETATTR_FH.0 != 0 {
                    lock(&self.handles)
                        .get_any(arg.fh.get())
                        .map(|e| e.handle.clone())
                } else {
                    None
                };
                let sx = fs.statx(
                    &ctx,
                    &node,
                    fh.as_ref(),
                    arg.sx_flags.get(),
                    arg.sx_mask.get(),
                )?;
                let stat = statx_of(&sx);
                whole(enc(reply::statx(out, unique, sx.ttl, 0, &stat)).map(|n| (n, None)))
            }
            Operation::Setupmapping { arg } => {
                let node = self.node(nodeid)?;
                let fh = self.handle_of(arg.fh.get(), HandleKind::File)?;
                let r = fs.setupmapping(
                    &ctx,
                    &node,
                    &fh,
                    arg.foffset.get(),
                    arg.len.get(),
                    arg.flags.get(),
                    arg.moffset.get(),
                );
                empty(out, r)
            }
            Operation::Removemapping { mappings } => {
                let node = self.node(nodeid)?;
                let list: Vec<(u64, u64)> = mappings
                    .iter()
                    .map(|m| (m.moffset.get(), m.len.get()))
                    .collect();
                empty(out, fs.removemapping(&ctx, &node, &list))
            }
            // CUSE is a different device (/dev/cuse); this library serves FUSE mounts.
            Operation::CuseInit { .. } => Err(Errno::ENOSYS),
            Operation::Unknown { opcode, .. } => {
                log::debug!("unknown opcode {opcode}: answering ENOSYS");
                Err(Errno::ENOSYS)
            }
            // Handled before dispatch.
            Operation::Forget { .. }
            | Operation::BatchForget { .. }
            | Operation::Interrupt { .. }
            | Operation::NotifyReply { .. }
            | Operation::Init { .. } => Err(Errno::EIO),
        }
    }

    fn xattr_reply(&self, out: &mut [u8], unique: u64, size: u32, x: Xattr) -> Out {
        let n = match x {
            Xattr::Size(n) => enc(reply::xattr_size(out, unique, n))?,
            Xattr::Data(d) => {
                if size == 0 {
                    let len = u32::try_from(d.len()).map_err(|_| Errno::E2BIG)?;
                    enc(reply::xattr_size(out, unique, len))?
                } else if d.len() > size as usize {
                    return Err(Errno::ERANGE);
                } else {
                    enc(reply::data(out, unique, &d))?
                }
            }
        };
        Ok((n, None))
    }
}

/// What a dispatched operation left in the reply buffer.
pub(crate) enum Dispatched<'a> {
    /// A whole reply of this many bytes at the start of the buffer, maybe counting a
    /// lookup of a nodeid.
    Whole(usize, Option<u64>),
    /// READ data, its header still to be written.
    Read(ReadData<'a>),
    /// The reply to DESTROY; the session ends after it.
    Destroy(usize),
}

fn setattr_of(arg: &abi::fuse_setattr_in, valid: SetattrValid) -> SetAttr {
    let has = |f: SetattrValid| valid.contains(f);
    let time = |set: SetattrValid, now: SetattrValid, secs: u64, nsecs: u32| {
        if has(now) {
            Some(TimeOrNow::Now)
        } else if has(set) {
            Some(TimeOrNow::Time(time_of(secs, nsecs)))
        } else {
            None
        }
    };
    SetAttr {
        mode: has(SetattrValid::MODE).then(|| arg.mode.get()),
        uid: has(SetattrValid::UID).then(|| arg.uid.get()),
        gid: has(SetattrValid::GID).then(|| arg.gid.get()),
        size: has(SetattrValid::SIZE).then(|| arg.size.get()),
        atime: time(
            SetattrValid::ATIME,
            SetattrValid::ATIME_NOW,
            arg.atime.get(),
            arg.atimensec.get(),
        ),
        mtime: time(
            SetattrValid::MTIME,
            SetattrValid::MTIME_NOW,
            arg.mtime.get(),
            arg.mtimensec.get(),
        ),
        ctime: has(SetattrValid::CTIME).then(|| time_of(arg.ctime.get(), arg.ctimensec.get())),
        lock_owner: has(SetattrValid::LOCKOWNER).then(|| arg.lock_owner.get()),
        kill_suidgid: has(SetattrValid::KILL_SUIDGID),
    }
}

fn statx_of(sx: &StatxReply) -> abi::fuse_statx {
    let a = &sx.attr;
    let t = |time: std::time::SystemTime| {
        let (sec, nsec) = split_time(time);
        abi::fuse_sx_time {
            tv_sec: I64::new(sec),
            tv_nsec: U32::new(nsec),
            reserved: Default::default(),
        }
    };
    // STATX_BASIC_STATS (0x7ff) plus STATX_BTIME (0x800) when known.
    let mut mask = 0x7ffu32;
    let btime = match sx.btime {
        Some(b) => {
            mask |= 0x800;
            t(b)
        }
        None => Default::default(),
    };
    abi::fuse_statx {
        mask: U32::new(mask),
        blksize: U32::new(a.blksize),
        attributes: U64::new(sx.attributes.0),
        nlink: U32::new(a.nlink),
        uid: U32::new(a.uid),
        gid: U32::new(a.gid),
        mode: U16::new(a.mode() as u16),
        ino: U64::new(a.ino),
        size: U64::new(a.size),
        blocks: U64::new(a.blocks),
        attributes_mask: U64::new(sx.attributes_mask.0),
        atime: t(a.atime),
        btime,
        ctime: t(a.ctime),
        mtime: t(a.mtime),
        // The kernel's new_decode_dev() split of a 32-bit device number.
        rdev_major: U32::new((a.rdev & 0xfff00) >> 8),
        rdev_minor: U32::new((a.rdev & 0xff) | ((a.rdev >> 12) & 0xfff00)),
        ..Default::default()
    }
}
