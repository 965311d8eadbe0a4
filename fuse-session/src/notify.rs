//! Notifications to the kernel, from any thread while serving.
//!
//! The [`Notifier`] speaks in the filesystem's own node values and translates them to
//! nodeids through the session's table: a node the kernel does not know has nothing
//! cached, so invalidating it is a no-op ([`Notified::NotCached`]).
//!
//! # Deadlocks to avoid
//! The kernel may hold a directory's lock while it waits for a reply; sending
//! INVAL_ENTRY or DELETE for that directory from *inside* the handler of such a request
//! (LOOKUP, CREATE, RENAME ... in that directory) deadlocks. Send them from another
//! thread, as libfuse also requires.
use std::collections::HashMap;
use std::io::IoSlice;
use std::os::unix::ffi::OsStrExt;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuse_wire::{notify, EncodeError, RequestFlags};

use crate::dev::{Channel, WriteOutcome};
use crate::fs::{Filesystem, PollHandle};
use crate::proto::session::lock;
use crate::proto::Session;

/// What happened to a notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notified {
    /// The kernel took it.
    Delivered,
    /// The kernel has nothing cached for it (unknown node, or ENOENT from the kernel).
    NotCached,
}

/// Why a notification could not be sent.
#[derive(Debug)]
#[non_exhaustive]
pub enum NotifyError {
    /// The negotiated protocol does not have it, or an argument is out of range.
    Encode(EncodeError),
    /// The session has not been initialized yet.
    NotInitialized,
    /// The connection is gone.
    Closed,
    /// The kernel refused it or the device failed.
    Io(std::io::Error),
    /// A RETRIEVE got no answer in time.
    Timeout,
}

impl std::fmt::Display for NotifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotifyError::Encode(e) => write!(f, "notification refused: {e}"),
            NotifyError::NotInitialized => {
                write!(f, "notification before INIT: wait until the mount serves")
            }
            NotifyError::Closed => write!(f, "the FUSE connection is gone"),
            NotifyError::Io(e) => write!(f, "writing the notification failed: {e}"),
            NotifyError::Timeout => write!(f, "the kernel did not answer NOTIFY_RETRIEVE in time"),
        }
    }
}

impl std::error::Error for NotifyError {}

/// Callers of [`Notifier::retrieve`] waiting for their NOTIFY_REPLY, by notify
/// unique. The session core remembers which retrieves are pending and hands a
/// reply to the serving layer as [`Outcome::Retrieved`](crate::Outcome::Retrieved);
/// the worker that received it delivers it here.
#[derive(Debug, Default)]
pub(crate) struct RetrieveWaiters(Mutex<HashMap<u64, RetrieveSender>>);

/// Where a retrieve's offset and data go.
type RetrieveSender = mpsc::Sender<(u64, Vec<u8>)>;

impl RetrieveWaiters {
    /// Wakes the caller waiting for retrieve `unique`, if any is still waiting.
    pub(crate) fn deliver(&self, unique: u64, offset: u64, data: &[u8]) {
        if let Some(tx) = lock(&self.0).remove(&unique) {
            let _ = tx.send((offset, data.to_vec()));
        }
    }
}

/// Sends notifications for one session. Cheap to share (`&self` methods, `Sync`).
pub struct Notifier<F: Filesystem> {
    session: Arc<Session<F>>,
    channel: Channel,
    waiters: Arc<RetrieveWaiters>,
}

impl<F: Filesystem> Notifier<F> {
    pub(crate) fn new(
        session: Arc<Session<F>>,
        channel: Channel,
        waiters: Arc<RetrieveWaiters>,
    ) -> Self {
        Notifier {
            session,
            channel,
            waiters,
        }
    }

    fn send(
        &self,
        encode: impl FnOnce(&mut [u8]) -> Result<usize, EncodeError>,
        extra: &[u8],
    ) -> Result<Notified, NotifyError> {
        if self.session.init_state().is_none() {
            return Err(NotifyError::NotInitialized);
        }
        let mut buf = [0u8; 4096 + 64];
        let n = encode(&mut buf).map_err(NotifyError::Encode)?;
        let iov = [IoSlice::new(&buf[..n]), IoSlice::new(extra)];
        let iov = if extra.is_empty() {
            &iov[..1]
        } else {
            &iov[..]
        };
        match self.channel.write(iov) {
            Ok(WriteOutcome::Delivered) => Ok(Notified::Delivered),
            Ok(WriteOutcome::Gone) => Ok(Notified::NotCached),
            Ok(WriteOutcome::Closed) => Err(NotifyError::Closed),
            Err(e) => Err(NotifyError::Io(e)),
        }
    }

    fn nodeid(&self, node: &F::Node) -> Option<u64> {
        lock(&self.session.nodes).id_of(node)
    }

    /// NOTIFY_INVAL_INODE (7.12): drop cached attributes and the data in
    /// `[offset, offset+len)` (len 0: to the end; offset < 0: attributes only).
    pub fn inval_inode(
        &self,
        node: &F::Node,
        offset: i64,
        len: i64,
    ) -> Result<Notified, NotifyError> {
        let Some(id) = self.nodeid(node) else {
            return Ok(Notified::NotCached);
        };
        let proto = self.session.negotiated();
        self.send(|b| notify::inval_inode(b, &proto, id, offset, len), &[])
    }

    /// NOTIFY_INVAL_ENTRY (7.12): drop the cached entry `name` in `parent`
    /// (`expire_only`, 7.38: only mark it expired).
    pub fn inval_entry(
        &self,
        parent: &F::Node,
        name: &std::ffi::OsStr,
        expire_only: bool,
    ) -> Result<Notified, NotifyError> {
        let Some(id) = self.nodeid(parent) else {
            return Ok(Notified::NotCached);
        };
        let proto = self.session.negotiated();
        let flags = if expire_only {
            RequestFlags::EXPIRE_ONLY
        } else {
            RequestFlags::EMPTY
        };
        self.send(
            |b| notify::inval_entry(b, &proto, id, name.as_bytes(), flags),
            &[],
        )
    }

    /// NOTIFY_DELETE (7.18): `name` in `parent`, which was `child`, is gone.
    pub fn delete(
        &self,
        parent: &F::Node,
        child: &F::Node,
        name: &std::ffi::OsStr,
    ) -> Result<Notified, NotifyError> {
        let (Some(p), Some(c)) = (self.nodeid(parent), self.nodeid(child)) else {
            return Ok(Notified::NotCached);
        };
        let proto = self.session.negotiated();
        self.send(|b| notify::delete(b, &proto, p, c, name.as_bytes()), &[])
    }

    /// NOTIFY_STORE (7.15): put `data` into the kernel's page cache of `node` at `offset`.
    pub fn store(&self, node: &F::Node, offset: u64, data: &[u8]) -> Result<Notified, NotifyError> {
        let Some(id) = self.nodeid(node) else {
            return Ok(Notified::NotCached);
        };
        let proto = self.session.negotiated();
        self.send(
            |b| {
                let h = notify::store_header(&proto, id, offset, data.len())?;
                let dst = b.get_mut(..h.len()).ok_or(EncodeError::BufferTooSmall {
                    need: h.len(),
                    have: 0,
                })?;
                dst.copy_from_slice(&h);
                Ok(h.len())
            },
            data,
        )
    }

    /// NOTIFY_RETRIEVE (7.15): asks the kernel for up to `size` bytes of `node`'s
    /// page cache at `offset`, and waits (at most `timeout`) for the NOTIFY_REPLY that
    /// carries them. Returns the offset and the data (empty if nothing was cached).
    pub fn retrieve(
        &self,
        node: &F::Node,
        offset: u64,
        size: u32,
        timeout: Duration,
    ) -> Result<(u64, Vec<u8>), NotifyError> {
        let Some(id) = self.nodeid(node) else {
            return Ok((offset, Vec::new()));
        };
        let proto = self.session.negotiated();
        let unique = self.session.begin_retrieve();
        let (tx, rx) = mpsc::channel();
        lock(&self.waiters.0).insert(unique, tx);
        let sent = self.send(
            |b| notify::retrieve(b, &proto, unique, id, offset, size),
            &[],
        );
        let result = match sent {
            Ok(Notified::Delivered) => rx.recv_timeout(timeout).map_err(|_| NotifyError::Timeout),
            Ok(Notified::NotCached) => Ok((offset, Vec::new())),
            Err(e) => Err(e),
        };
        self.session.cancel_retrieve(unique);
        lock(&self.waiters.0).remove(&unique);
        result
    }

    /// NOTIFY_POLL (7.11): wakes up pollers waiting on `kh`.
    pub fn poll_wakeup(&self, kh: PollHandle) -> Result<Notified, NotifyError> {
        lock(&self.session.polls).remove(&kh.0);
        let proto = self.session.negotiated();
        self.send(|b| notify::poll_wakeup(b, &proto, kh.0), &[])
    }

    /// NOTIFY_INC_EPOCH (7.44): invalidates every cached dentry of the mount.
    pub fn inc_epoch(&self) -> Result<Notified, NotifyError> {
        let proto = self.session.negotiated();
        self.send(|b| notify::inc_epoch(b, &proto), &[])
    }

    /// NOTIFY_PRUNE (7.45): asks the kernel to drop unused cached inodes of `nodes`
    /// (it will FORGET them). Nodes the kernel does not know are skipped.
    pub fn prune(&self, nodes: &[F::Node]) -> Result<Notified, NotifyError> {
        let ids: Vec<u64> = nodes.iter().filter_map(|n| self.nodeid(n)).collect();
        if ids.is_empty() {
            return Ok(Notified::NotCached);
        }
        let proto = self.session.negotiated();
        let mut last = Notified::NotCached;
        // One message must fit the notification buffer: 500 nodeids at a time.
        for chunk in ids.chunks(500) {
            last = self.send(|b| notify::prune(b, &proto, chunk), &[])?;
        }
        Ok(last)
    }

    /// NOTIFY_RESEND (7.40): the kernel puts every request this connection has read
    /// but not answered back at the head of its queue, with bit 63 set in `unique`.
    pub fn resend(&self) -> Result<Notified, NotifyError> {
        let proto = self.session.negotiated();
        self.send(|b| notify::resend(b, &proto), &[])
    }
}
