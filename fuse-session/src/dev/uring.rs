//! fuse-over-io_uring: one `io_uring` per queue of a `/dev/fuse` connection, each
//! holding a few registered entries the kernel fills with requests.
//!
//! # The protocol (Linux 6.14+, FUSE 7.42, `CONFIG_FUSE_IO_URING`)
//!
//! - The kernel offers `FUSE_OVER_IO_URING` in INIT only when the `fuse` module
//!   parameter `enable_uring` is `Y`; the daemon agrees by echoing the flag. INIT
//!   itself goes through `read`/`writev` on the device as always.
//! - After INIT the daemon sends `IORING_OP_URING_CMD` SQEs (128-byte SQEs: the
//!   command data, [`abi::fuse_uring_cmd_req`], is in the SQE's 80-byte `cmd` area)
//!   on the device fd. `FUSE_IO_URING_CMD_REGISTER` hands the kernel one *entry*:
//!   two iovecs (`addr` = the iovec array, `len` = 2), a header buffer of at least
//!   [`abi::fuse_uring_req_header`] and a payload buffer of at least
//!   `max(FUSE_MIN_READ_BUFFER, max_write, max_pages * page size)`. The command
//!   completes only when a request was copied into the entry.
//! - There is one queue per *possible* CPU (qid = CPU number); the kernel queues a
//!   request on the queue of the CPU its caller runs on. The ring becomes *ready*,
//!   and requests start going to it instead of the device's read queue, once every
//!   queue has at least one registered entry.
//! - A request in an entry: `fuse_in_header` at the start of `in_out`, the opcode's
//!   first argument (its fixed struct, empty for name-only operations) in `op_in`,
//!   every further argument (names, WRITE data, extension headers) in the payload
//!   buffer, `payload_sz` bytes. `fuse_in_header.len` is the total as on the device,
//!   so the size of the `op_in` part is `len - 40 - payload_sz`.
//!   `ring_ent_in_out.commit_id` names the request.
//! - The reply: `fuse_out_header` at the start of `in_out` (its `unique` must be the
//!   request's), the whole reply body (fixed struct and data) at the start of the
//!   payload buffer, its length in `ring_ent_in_out.payload_sz`; then
//!   `FUSE_IO_URING_CMD_COMMIT_AND_FETCH` with `commit_id` and `qid`, which also
//!   makes the entry wait for the next request: one `io_uring_enter` per request.
//! - Still on the device: FORGET/BATCH_FORGET and INTERRUPT (always), requests
//!   queued before the ring was ready, NOTIFY_* from the daemon (writes).
//! - Teardown: unmount or abort ends every waiting command with `-ENOTCONN`
//!   (`fuse_uring_stop_queues`); commands on a ring that is closed are cancelled
//!   (`fuse_uring_cancel`: the entry stays with the kernel, as "in userspace").
//!
//! # Memory
//!
//! Each entry owns two anonymous mappings (page-aligned): a page for the header
//! buffer, and the *reply buffer*, whose tail from [`PAYLOAD_OFFSET`] on is the
//! payload buffer registered with the kernel. The session writes a reply into the
//! reply buffer; its data (READ) lands in the payload buffer in place, so a reply
//! needs no copy of its data before the kernel's.
//!
//! The kernel writes into an entry's buffers only while the entry's command is
//! pending, and reads them while it handles a commit (during `io_uring_enter`).
//! This module touches them only between the completion of a command and the
//! submission of the next one; the ring is closed (which cancels pending commands
//! and stops all access) before the buffers are unmapped.
//!
//! # References
//! - Linux `fs/fuse/dev_uring.c`, `fs/fuse/dev_uring_i.h`, `include/uapi/linux/fuse.h`
//!   (`struct fuse_uring_req_header`, `struct fuse_uring_cmd_req`)
//! - `io_uring_setup(2)`, `io_uring_enter(2)`
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use fuse_wire::abi;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use nix::errno::Errno;
use zerocopy::{FromBytes, IntoBytes};

use crate::dev::ring_area::{EntryMem, RingArea};
use crate::proto::PAYLOAD_OFFSET;

/// Registered entries per queue unless told otherwise: two, so that a queue can
/// take the next request while one is being answered.
pub const DEFAULT_DEPTH: usize = 2;

/// Most entries one queue may register.
pub const MAX_DEPTH: usize = 64;

/// `user_data` of the waker's poll.
const WAKE_TOKEN: u64 = u64::MAX;

const IN_HEADER: usize = std::mem::size_of::<abi::fuse_in_header>();
const OUT_HEADER: usize = std::mem::size_of::<abi::fuse_out_header>();
const OP_IN_AT: usize = abi::FUSE_URING_IN_OUT_HEADER_SZ;
const ENT_IN_OUT_AT: usize = abi::FUSE_URING_IN_OUT_HEADER_SZ + abi::FUSE_URING_OP_IN_OUT_SZ;

/// Where an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Not given to the kernel (before registering, or after a failed command).
    Idle,
    /// A REGISTER command is pending.
    Registering,
    /// A COMMIT_AND_FETCH command is pending.
    Committing,
    /// Holds a request for the daemon to answer.
    Request,
    /// Not this queue's: a slot whose adoption the kernel refused (left free).
    Unused,
}

/// A byte range of a [`RingArea`] mapping, used as a slice by one thread.
pub(crate) struct Region {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a `Region` is an address range of a `RingArea` mapping that the queue
// holding it keeps alive (`UringQueue::_area`); one thread uses it at a time.
unsafe impl Send for Region {}

impl Region {
    fn new(ptr: *mut u8, len: usize) -> Region {
        Region { ptr, len }
    }
}

impl std::ops::Deref for Region {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the range is mapped (read-write, shared) for as long as the area
        // lives, and the regions of one queue do not overlap each other.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl std::ops::DerefMut for Region {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as `deref`; `&mut self` makes the borrow exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

/// Bytes of the header region the daemon reads and writes (the kernel's
/// `fuse_uring_req_header` lies at its start; the entry state follows it).
const HEADER_REGION: usize = 1024;

/// What a queue does with one of its entries when it starts (see
/// [`UringQueue::start`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EntryStart {
    /// Register it (a fresh entry).
    Register,
    /// Commit the reply it holds to this unique (written by a predecessor or by
    /// recovery), adopting the kernel's entry; a lookup the reply counted.
    Commit(u64, Option<u64>),
}

struct Entry {
    /// The kernel's header buffer (`fuse_uring_req_header`), in the ring area.
    header: Region,
    /// The entry's memory (state words) in the ring area.
    mem: EntryMem,
    /// Bytes of the current request's payload and of its saved head.
    payload: usize,
    head_len: usize,
    /// Address and length of the entry's reply space (in the queue's buffers).
    space: (usize, usize),
    /// The two iovecs REGISTER points the kernel at (read while it is issued).
    iov: Box<[nix::libc::iovec; 2]>,
    state: State,
    /// The pending request's `commit_id` (its `unique`).
    commit_id: u64,
    /// A nodeid whose lookup the committed reply counted (see
    /// [`crate::Session::reply_lost`]).
    counted: Option<u64>,
}

/// What [`UringQueue::next_event`] produced.
#[derive(Debug)]
#[non_exhaustive]
pub(crate) enum RingEvent {
    /// Entry `n` holds a request: [`UringQueue::locate_request`], then
    /// [`UringQueue::commit`].
    Request(usize),
    /// The waker armed with [`UringQueue::arm_waker`] fired.
    Woken,
    /// A reply that counted a lookup of this nodeid was refused because its request
    /// is gone (interrupted and ended): take the lookup back. The entry has been
    /// registered again.
    ReplyLost(u64),
    /// The connection ended (unmounted or aborted): no more requests will come.
    Closed,
}

/// How to answer the request in an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum Commit {
    /// A reply the session encoded in the entry's reply space
    /// ([`UringQueue::reply_space`]).
    Reply(Placed),
    /// Answer with this errno (positive), no body.
    Error(i32),
    /// A request that takes no answer (NOTIFY_REPLY): end it with an empty success,
    /// which frees the entry for the next request.
    Empty,
}

/// Where the parts of a reply lie in an entry's reply space: the out header by
/// value, the body and the data as offsets into the space (see
/// [`Placed::of_range`]). The kernel wants the header in the entry's header area
/// and body then data at the start of the payload buffer; the session encodes them
/// there (the space begins [`REPLY_DATA_AT`] bytes before the payload buffer), so
/// committing copies only the 16 header bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Placed {
    header: [u8; OUT_HEADER],
    body: (usize, usize),
    data: (usize, usize),
    counted: Option<u64>,
}

impl Placed {
    /// Locates `parts` in the reply space that starts at address `base` and has
    /// `len` bytes (the slice [`UringQueue::reply_space`] gave): `None` if the body
    /// or the data is not inside it (a reply built elsewhere).
    pub fn of_range(parts: &crate::ReplyParts<'_>, base: usize, len: usize) -> Option<Placed> {
        let at = |part: &[u8]| -> Option<(usize, usize)> {
            if part.is_empty() {
                return Some((REPLY_DATA_AT, 0));
            }
            let off = (part.as_ptr() as usize).checked_sub(base)?;
            (off.checked_add(part.len())? <= len).then_some((off, part.len()))
        };
        Some(Placed {
            header: *parts.header(),
            body: at(parts.body())?,
            data: at(parts.data())?,
            counted: parts.counted(),
        })
    }
}

/// Where the session puts a READ's data in [`UringQueue::reply_space`]: right after
/// the out header, at the start of the payload buffer.
pub(crate) const REPLY_DATA_AT: usize = OUT_HEADER;

/// Where [`UringQueue::locate_request`] put a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RequestAt {
    /// In the caller's buffer, this many bytes.
    Copied(usize),
    /// In the entry's buffer: `len` bytes from `start`.
    InEntry {
        /// Offset in the entry's buffer.
        start: usize,
        /// Length of the request.
        len: usize,
    },
}

/// A request in an entry that cannot be handed to the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BadRequest {
    /// What is wrong with it.
    pub reason: &'static str,
}

impl std::fmt::Display for BadRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed request in an io_uring entry: {}", self.reason)
    }
}

impl std::error::Error for BadRequest {}

/// One queue of fuse-over-io_uring: a ring of its own and `depth` registered entries.
///
/// Made and used by one thread (the ring is set up `SINGLE_ISSUER` with
/// `DEFER_TASKRUN` where the kernel has them: the kernel copies a request into an
/// entry in this thread, when it waits, not in the caller's).
///
/// It is two parts that can be borrowed apart ([`UringQueue::split`]): the entries'
/// reply buffers, which the session encodes replies into, and the [`RingCore`]
/// (the ring and each entry's header area), which commits them.
pub(crate) struct UringQueue {
    // Field order matters: the ring (in `core`) is dropped (closed, which cancels
    // every pending command) before the entries' buffers are unmapped.
    core: RingCore,
    /// Each entry's reply buffer; from [`PAYLOAD_OFFSET`] on, the kernel's payload
    /// buffer.
    bufs: Vec<Region>,
    /// Each entry's save area: the request in device layout, kept for a successor.
    saves: Vec<Region>,
    /// The memory all of it lies in.
    _area: std::sync::Arc<RingArea>,
}

/// The ring of a [`UringQueue`] and its entries' header areas: what commits a reply.
pub(crate) struct RingCore {
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    entries: Vec<Entry>,
    /// A `dup` of the device, for as long as the ring refers to it.
    device: OwnedFd,
    qid: u16,
    payload_len: usize,
    /// The device is the ring's registered file 0 (saves a file lookup per command).
    fixed: bool,
    waker_armed: bool,
    /// Completions reaped but not yet returned.
    pending: std::collections::VecDeque<(u64, i32)>,
    /// Lookups counted by replies refused at [`UringQueue::start`], to report as
    /// [`RingEvent::ReplyLost`].
    lost: Vec<u64>,
    /// The entries are in a memfd a successor maps: keep their state (the saved
    /// request, `answered`) up to date. Otherwise only the copy the session parses
    /// is made.
    keep: bool,
    /// Address and length of the caller's staging area (see
    /// [`RingCore::set_staging_area`]).
    staging: (usize, usize),
    /// A reply encoded in the staging area, to commit by
    /// [`UringQueue::commit_staged`].
    staged: Option<(usize, Placed)>,
    /// The owner generation this process tags the entries it registers or adopts
    /// with ([`RingArea::generation`]): a live successor registers on the others.
    generation: u64,
}

impl std::fmt::Debug for UringQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.core.fmt(f)
    }
}

impl std::fmt::Debug for RingCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringQueue")
            .field("qid", &self.qid)
            .field("depth", &self.entries.len())
            .field("payload_len", &self.payload_len)
            .finish_non_exhaustive()
    }
}

impl UringQueue {
    /// A ring for queue `qid` of the connection of `device`, with `depth` entries
    /// (1 to [`MAX_DEPTH`]) whose payload buffers have `payload_len` bytes (at least
    /// what the kernel requires for the negotiated limits, see
    /// [`UringQueue::payload_len_for`]). Nothing is registered yet.
    ///
    /// # Errors
    /// `io_uring_setup(2)` errors (`ENOSYS` without io_uring, `EPERM` when
    /// `kernel.io_uring_disabled` forbids it), `mmap(2)` and `dup(2)` errors;
    /// `InvalidInput` for a depth out of range.
    pub fn new(
        device: BorrowedFd<'_>,
        area: std::sync::Arc<RingArea>,
        qid: u16,
        slots: &[usize],
        payload_len: usize,
    ) -> io::Result<UringQueue> {
        let geo = area.geometry();
        let depth = slots.len();
        if geo.payload_len as usize != payload_len
            || usize::from(qid) >= geo.queues as usize
            || slots.iter().any(|&j| j >= geo.slots as usize)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the ring area ({geo:?}) does not fit queue {qid} on slots {slots:?} with {payload_len}-byte payloads"),
            ));
        }
        if !(1..=crate::dev::ring_area::SLOTS_PER_ENTRY * MAX_DEPTH).contains(&depth) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "an io_uring queue needs 1 to {} entries, not {depth}",
                    crate::dev::ring_area::SLOTS_PER_ENTRY * MAX_DEPTH
                ),
            ));
        }
        if payload_len < abi::FUSE_MIN_READ_BUFFER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "an io_uring payload buffer needs at least {} bytes, not {payload_len}",
                    abi::FUSE_MIN_READ_BUFFER
                ),
            ));
        }
        let device = device.try_clone_to_owned()?;
        // Room for every entry's command and the waker's poll, twice over.
        let size = u32::try_from(2 * (depth + 1))
            .unwrap_or(256)
            .next_power_of_two();
        // Entries a successor takes over (a memfd area): no DEFER_TASKRUN. With it,
        // a request the kernel gives an available entry while this thread is busy
        // is copied in only when the thread next waits; if the process is killed
        // first, the copy runs as cancelled (`fuse_uring_send_in_task` with
        // IO_URING_F_TASK_DEAD) and the caller gets ECANCELED. Without it the copy
        // runs at once (task work with TWA_SIGNAL), also on the way to dying
        // (`get_signal` runs pending task work first), so the request lands in the
        // entry, where the successor finds it. Measured: 6 ECANCELED in 15 kills
        // under load with it, 1 in 30 without (docs/RECOVERY.md).
        let plain = area.fd().is_some();
        let built = if plain {
            IoUring::<squeue::Entry128, cqueue::Entry>::builder()
                .setup_single_issuer()
                .build(size)
        } else {
            IoUring::<squeue::Entry128, cqueue::Entry>::builder()
                .setup_single_issuer()
                .setup_defer_taskrun()
                .build(size)
        };
        let ring = match built {
            Ok(r) => r,
            // Kernels before 6.1 lack DEFER_TASKRUN: a plain ring works too.
            Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => {
                IoUring::<squeue::Entry128, cqueue::Entry>::builder().build(size)?
            }
            Err(e) => return Err(e),
        };
        let fixed = match ring.submitter().register_files(&[device.as_raw_fd()]) {
            Ok(()) => true,
            Err(e) => {
                log::debug!(
                    "io_uring queue {qid}: cannot register the device as a fixed file: {e}"
                );
                false
            }
        };
        let mut entries = Vec::with_capacity(depth);
        let mut bufs = Vec::with_capacity(depth);
        let mut saves = Vec::with_capacity(depth);
        for &j in slots {
            let mem = area.entry(usize::from(qid), j);
            let header = Region::new(mem.header, HEADER_REGION);
            let buf = Region::new(mem.buf, mem.buf_len);
            saves.push(Region::new(mem.save(), mem.save_len()));
            let iov = Box::new([
                nix::libc::iovec {
                    iov_base: mem.header.cast(),
                    iov_len: std::mem::size_of::<abi::fuse_uring_req_header>(),
                },
                nix::libc::iovec {
                    // SAFETY: the buffer has PAYLOAD_OFFSET + payload_len bytes, so
                    // the offset stays inside the mapping.
                    iov_base: unsafe { mem.buf.add(PAYLOAD_OFFSET) }.cast(),
                    iov_len: payload_len,
                },
            ]);
            let space = &buf[PAYLOAD_OFFSET - REPLY_DATA_AT..];
            let space = (space.as_ptr() as usize, space.len());
            bufs.push(buf);
            entries.push(Entry {
                header,
                mem,
                payload: 0,
                head_len: 0,
                space,
                iov,
                state: State::Idle,
                commit_id: 0,
                counted: None,
            });
        }
        Ok(UringQueue {
            core: RingCore {
                ring,
                entries,
                device,
                qid,
                payload_len,
                fixed,
                waker_armed: false,
                pending: std::collections::VecDeque::new(),
                lost: Vec::new(),
                keep: plain,
                staging: (0, 0),
                staged: None,
                generation: area.generation(),
            },
            bufs,
            saves,
            _area: area,
        })
    }

    /// The payload buffer size the kernel requires for a connection with these
    /// negotiated limits (`max(FUSE_MIN_READ_BUFFER, max_write, max_pages * page)`),
    /// plus a page of slack.
    pub fn payload_len_for(max_write: u32, max_pages: u16, page_size: usize) -> usize {
        let pages = usize::from(max_pages).saturating_mul(page_size);
        (max_write as usize)
            .max(pages)
            .max(abi::FUSE_MIN_READ_BUFFER)
            .saturating_add(page_size)
    }

    /// The ring part ([`RingCore`]): registering, waiting, committing.
    pub fn core(&mut self) -> &mut RingCore {
        &mut self.core
    }

    /// Entry `i`'s reply space (see [`UringQueue::reply_space`]) and the
    /// [`RingCore`] that commits it, borrowed apart.
    pub fn split(&mut self, i: usize) -> (&mut [u8], &mut RingCore) {
        (
            &mut self.bufs[i][PAYLOAD_OFFSET - REPLY_DATA_AT..],
            &mut self.core,
        )
    }

    /// The queue id.
    pub fn qid(&self) -> u16 {
        self.core.qid
    }

    /// Starts the queue over entries a predecessor used (`plan[j]` for entry `j`):
    /// commits the replies the entries hold (adopting the kernel's entries, see
    /// [`crate::dev::ring_area`]) and registers the others. A commit the kernel
    /// refuses (`ENOENT`: the predecessor's commit went through, or the request was
    /// interrupted) registers its entry anew, as in serving, while the queue has
    /// fewer than the area's depth of entries; beyond that its slot is left free
    /// (reclaimed: a handoff's adopted entries do not stay this process's).
    ///
    /// # Errors
    /// As [`RingCore::register`].
    ///
    /// With `register_refused` false an entry whose commit the kernel refuses is
    /// left unregistered and its slot free (a live successor adopting its
    /// predecessor's entries keeps only those that held a request, so that slots
    /// stay free for the next successor).
    pub fn start(&mut self, plan: &[EntryStart], register_refused: bool) -> io::Result<()> {
        let mut committed = false;
        for (i, what) in plan.iter().enumerate().take(self.core.entries.len()) {
            if let EntryStart::Commit(unique, counted) = *what {
                self.core.recommit(i, unique, counted)?;
                committed = true;
            }
        }
        if committed {
            // A refused commit fails at issue: register its entry now, with the
            // others, so that every entry is available when this returns (a
            // request queued while none is would wait for the next commit).
            self.core.submit()?;
            self.core.reap();
            let pending = std::mem::take(&mut self.core.pending);
            let mut refused = Vec::new();
            for (token, res) in pending {
                let committing = usize::try_from(token)
                    .ok()
                    .and_then(|i| self.core.entries.get(i))
                    .is_some_and(|e| e.state == State::Committing);
                if committing && res < 0 {
                    let i = token as usize;
                    let counted = self.core.entries[i].counted.take();
                    log::debug!(
                        "io_uring queue {}: entry {i}'s reply was refused at restart ({})",
                        self.core.qid,
                        Errno::from_raw(-res)
                    );
                    refused.push(i);
                    if let Some(id) = counted.filter(|_| res == -nix::libc::ENOENT) {
                        self.core.lost.push(id);
                    }
                } else {
                    self.core.pending.push_back((token, res));
                }
            }
            // A refused entry is registered again only while the queue has fewer
            // than `depth` entries (the others: the commits the kernel took, and
            // the entries planned for a REGISTER); the rest are left free, their
            // slots reclaimed for a later successor (owner 0).
            let depth = self._area.geometry().depth as usize;
            let mut live = self
                .core
                .entries
                .iter()
                .filter(|e| e.state != State::Unused)
                .count()
                - refused.len();
            for i in refused {
                self.core.entries[i].state = if register_refused && live < depth {
                    live += 1;
                    State::Idle
                } else {
                    self.core.entries[i].mem.set_owner(0);
                    State::Unused
                };
            }
        }
        self.core.register()
    }

    /// See [`RingCore::arm_waker`].
    ///
    /// # Errors
    /// As [`RingCore::arm_waker`].
    pub fn arm_waker(&mut self, waker: BorrowedFd<'_>) -> io::Result<()> {
        self.core.arm_waker(waker)
    }

    /// See [`RingCore::next_event`].
    ///
    /// # Errors
    /// As [`RingCore::next_event`].
    pub fn next_event(&mut self) -> io::Result<RingEvent> {
        self.core.next_event()
    }

    /// Checks the lengths of the request in entry `i`: `(total, op_len, payload)`.
    fn request_lengths(&mut self, i: usize) -> Result<(usize, usize, usize), BadRequest> {
        let payload_len = self.core.payload_len;
        let e = &mut self.core.entries[i];
        if e.state != State::Request {
            return Err(BadRequest {
                reason: "the entry holds no request",
            });
        }
        let head = &e.header[..];
        let trailer = abi::fuse_uring_ent_in_out::read_from_prefix(&head[ENT_IN_OUT_AT..])
            .map(|(t, _)| t)
            .map_err(|_| BadRequest {
                reason: "short header buffer",
            })?;
        e.commit_id = trailer.commit_id.get();
        let inh = abi::fuse_in_header::read_from_prefix(&head[..IN_HEADER])
            .map(|(h, _)| h)
            .map_err(|_| BadRequest {
                reason: "short in header",
            })?;
        let total = inh.len.get() as usize;
        let payload = trailer.payload_sz.get() as usize;
        if payload > payload_len {
            return Err(BadRequest {
                reason: "payload_sz larger than the payload buffer",
            });
        }
        let op_len = total
            .checked_sub(IN_HEADER)
            .and_then(|n| n.checked_sub(payload))
            .ok_or(BadRequest {
                reason: "header length shorter than header and payload",
            })?;
        if op_len > abi::FUSE_URING_OP_IN_OUT_SZ {
            return Err(BadRequest {
                reason: "op struct larger than the op_in area",
            });
        }
        e.payload = payload;
        Ok((total, op_len, payload))
    }

    /// Copies the in header and op struct of the request in entry `i` into its save
    /// area and records it there (a successor reads it from there: a reply
    /// overwrites the in header's first bytes). Returns the length copied.
    fn save_head(&mut self, i: usize, op_len: usize) -> usize {
        let e = &self.core.entries[i];
        let save = &mut self.saves[i];
        let n = IN_HEADER + op_len;
        save[..IN_HEADER].copy_from_slice(&e.header[..IN_HEADER]);
        save[IN_HEADER..n].copy_from_slice(&e.header[OP_IN_AT..OP_IN_AT + op_len]);
        e.mem.set_head(e.commit_id, n);
        self.core.entries[i].head_len = n;
        n
    }

    /// Makes the request in entry `i` one contiguous message in device layout, as
    /// cheaply as possible: without a payload it is copied into the entry's save
    /// area (at most
    /// 168 bytes); with one (names, WRITE data) the header and op struct are copied
    /// in front of the payload the kernel wrote into the entry's buffer, so the
    /// payload itself is not copied ([`RequestAt::InEntry`]; read it with
    /// [`UringQueue::request_in_entry`]). Then the reply must not be encoded into
    /// the entry's reply space, which the request occupies: use a staging area
    /// ([`RingCore::set_staging_area`]).
    ///
    /// # Errors
    /// The header's lengths do not add up (a malformed request from the kernel):
    /// answer it with [`Commit::Error`] (its `unique` is known to the entry).
    pub fn locate_request(&mut self, i: usize) -> Result<RequestAt, BadRequest> {
        let (total, op_len, payload) = self.request_lengths(i)?;
        // The copy the session parses (without a payload) is the one kept for a
        // successor: no copy is added for it.
        if payload == 0 {
            let saved = self.save_head(i, op_len);
            return Ok(RequestAt::Copied(saved));
        }
        if self.core.keep {
            self.save_head(i, op_len);
        }
        let start = PAYLOAD_OFFSET - IN_HEADER - op_len;
        let head = &self.core.entries[i].header[..];
        let buf = &mut self.bufs[i];
        buf[start..start + IN_HEADER].copy_from_slice(&head[..IN_HEADER]);
        buf[start + IN_HEADER..PAYLOAD_OFFSET].copy_from_slice(&head[OP_IN_AT..OP_IN_AT + op_len]);
        Ok(RequestAt::InEntry { start, len: total })
    }

    /// The request [`UringQueue::locate_request`] copied into entry `i`'s save
    /// area (`len` bytes), the entry's reply space and the core, borrowed apart.
    pub fn request_saved(&mut self, i: usize, len: usize) -> (&[u8], &mut [u8], &mut RingCore) {
        let save = &self.saves[i];
        (
            &save[..len.min(save.len())],
            &mut self.bufs[i][PAYLOAD_OFFSET - REPLY_DATA_AT..],
            &mut self.core,
        )
    }

    /// The request [`UringQueue::locate_request`] left in entry `i`'s buffer, and
    /// the core, borrowed apart.
    pub fn request_in_entry(
        &mut self,
        i: usize,
        start: usize,
        len: usize,
    ) -> (&[u8], &mut RingCore) {
        let end = start.saturating_add(len).min(self.bufs[i].len());
        (&self.bufs[i][start.min(end)..end], &mut self.core)
    }

    /// Commits the reply [`RingCore::stage`] left in the staging area `from` (the
    /// area [`RingCore::set_staging_area`] named): copies body and data to the
    /// entry's payload buffer, then commits. Nothing if none is staged.
    ///
    /// # Errors
    /// As [`RingCore::commit`].
    pub fn commit_staged(&mut self, from: &[u8]) -> io::Result<()> {
        let Some((i, p)) = self.core.staged.take() else {
            return Ok(());
        };
        let (bo, bl) = p.body;
        let (dopos, dl) = p.data;
        let fits = bl + dl <= self.core.payload_len
            && bo.checked_add(bl).is_some_and(|e| e <= from.len())
            && dopos.checked_add(dl).is_some_and(|e| e <= from.len());
        if !fits {
            log::error!(
                "io_uring queue {}: a staged reply does not fit; answering EIO",
                self.core.qid
            );
            return self.core.commit(i, Commit::Error(nix::libc::EIO));
        }
        // The reply overwrites the request's payload: keep the payload for a
        // successor first where the save area has room, else say it is gone.
        let e = &self.core.entries[i];
        let (head, payload) = (e.head_len, e.payload);
        if payload > 0 && self.core.keep {
            if head + payload <= self.saves[i].len() && payload <= self.core.payload_len {
                self.saves[i][head..head + payload]
                    .copy_from_slice(&self.bufs[i][PAYLOAD_OFFSET..PAYLOAD_OFFSET + payload]);
                e.mem.set_tail(e.commit_id, payload);
            } else {
                e.mem.set_clobbered(e.commit_id);
            }
        }
        let buf = &mut self.bufs[i];
        buf[PAYLOAD_OFFSET..PAYLOAD_OFFSET + bl].copy_from_slice(&from[bo..bo + bl]);
        buf[PAYLOAD_OFFSET + bl..PAYLOAD_OFFSET + bl + dl]
            .copy_from_slice(&from[dopos..dopos + dl]);
        let placed = Placed {
            header: p.header,
            body: (REPLY_DATA_AT, bl),
            data: (REPLY_DATA_AT + bl, dl),
            counted: p.counted,
        };
        self.core.commit(i, Commit::Reply(placed))
    }
}

impl RingCore {
    /// Names the caller's staging area (its address and length): where replies to
    /// requests left in their entry ([`RequestAt::InEntry`]) are encoded.
    pub fn set_staging_area(&mut self, base: usize, len: usize) {
        self.staging = (base, len);
    }

    /// Address and length of the staging area.
    pub fn staging_area(&self) -> (usize, usize) {
        self.staging
    }

    /// Keeps the reply to entry `i`, encoded in the staging area, for
    /// [`UringQueue::commit_staged`].
    pub fn stage(&mut self, i: usize, placed: Placed) {
        self.staged = Some((i, placed));
    }

    /// Address and length of entry `i`'s reply space ([`UringQueue::reply_space`]),
    /// to locate a reply's parts in it ([`Placed::of_range`]).
    pub fn space_of(&self, i: usize) -> (usize, usize) {
        self.entries[i].space
    }

    /// Registers every entry that is not with the kernel (FUSE_IO_URING_CMD_REGISTER)
    /// and submits. Errors the kernel returns at once are reported here; an entry
    /// whose registration fails later with `EAGAIN` (INIT not processed yet) is
    /// registered again by [`UringQueue::next_event`].
    ///
    /// # Errors
    /// `EOPNOTSUPP`: the module parameter `enable_uring` is off; `EINVAL`: a buffer
    /// is too small or the queue id is out of range; `ENOTCONN`/`ECONNABORTED`: the
    /// connection is gone; `io_uring_enter(2)` errors.
    pub fn register(&mut self) -> io::Result<()> {
        for i in 0..self.entries.len() {
            if self.entries[i].state == State::Idle {
                self.push_register(i)?;
            }
        }
        self.submit()?;
        // Errors found at issue time are already in the completion queue.
        self.reap();
        let mut failed = None;
        let entries = &self.entries;
        self.pending.retain(|&(token, res)| {
            let registering = usize::try_from(token)
                .ok()
                .and_then(|i| entries.get(i))
                .is_some_and(|e| e.state == State::Registering);
            let is_register_error = registering && res < 0 && res != -nix::libc::EAGAIN;
            if is_register_error && failed.is_none() {
                failed = Some(res);
            }
            !is_register_error
        });
        match failed {
            Some(res) => {
                let e = io::Error::from_raw_os_error(-res);
                Err(io::Error::new(
                    e.kind(),
                    format!("registering io_uring queue {} failed: {e}", self.qid),
                ))
            }
            None => Ok(()),
        }
    }

    /// Commits the reply entry `i` already holds (out header, trailer, payload) to
    /// `unique`, as it is.
    fn recommit(&mut self, i: usize, unique: u64, counted: Option<u64>) -> io::Result<()> {
        let cmd = abi::fuse_uring_cmd_req {
            flags: 0.into(),
            commit_id: unique.into(),
            qid: self.qid.into(),
            padding: [0; 6],
        };
        let sqe = self.cmd_sqe(abi::FUSE_IO_URING_CMD_COMMIT_AND_FETCH, &cmd, None, i);
        self.push(&sqe)?;
        let e = &mut self.entries[i];
        // The commit adopts the kernel's entry: it is this process's now.
        e.mem.set_owner(self.generation);
        e.commit_id = unique;
        e.counted = counted;
        e.state = State::Committing;
        Ok(())
    }

    fn push_register(&mut self, i: usize) -> io::Result<()> {
        let cmd = abi::fuse_uring_cmd_req {
            flags: 0.into(),
            commit_id: 0.into(),
            qid: self.qid.into(),
            padding: [0; 6],
        };
        let iov_addr = self.entries[i].iov.as_ptr() as u64;
        let sqe = with_len(
            self.cmd_sqe(abi::FUSE_IO_URING_CMD_REGISTER, &cmd, Some(iov_addr), i),
            2,
        );
        self.push(&sqe)?;
        self.entries[i].mem.set_owner(self.generation);
        self.entries[i].state = State::Registering;
        Ok(())
    }

    fn cmd_sqe(
        &self,
        op: u32,
        cmd: &abi::fuse_uring_cmd_req,
        addr: Option<u64>,
        i: usize,
    ) -> squeue::Entry128 {
        let mut area = [0u8; 80];
        area[..std::mem::size_of::<abi::fuse_uring_cmd_req>()].copy_from_slice(cmd.as_bytes());
        let mut b = if self.fixed {
            opcode::UringCmd80::new(types::Fixed(0), op)
        } else {
            opcode::UringCmd80::new(types::Fd(self.device.as_raw_fd()), op)
        }
        .cmd(area);
        if let Some(a) = addr {
            b = b.addr(Some(a));
        }
        b.build().user_data(i as u64)
    }

    fn push(&mut self, sqe: &squeue::Entry128) -> io::Result<()> {
        loop {
            // SAFETY: every buffer an SQE of this module refers to lives as long as
            // the ring: REGISTER's iovec array is owned by `self.entries` and the
            // buffers it describes by the `UringQueue` that holds this core (both
            // dropped after the ring: field order), the poll's fd is the
            // waker's, which the caller keeps alive while it uses this queue
            // ([`UringQueue::arm_waker`]), and COMMIT_AND_FETCH carries its data in
            // the SQE itself.
            let pushed = unsafe { self.ring.submission().push(sqe) };
            match pushed {
                Ok(()) => return Ok(()),
                // Full: hand what is queued to the kernel, then retry.
                Err(_) => {
                    self.submit()?;
                }
            }
        }
    }

    /// Submits the commands queued so far (the commits of replies), without
    /// waiting: before the queue's thread parks or leaves, so that no reply waits
    /// in the submission queue through a pause, or is lost with the ring.
    pub fn submit_pending(&mut self) -> io::Result<()> {
        self.submit()
    }

    fn submit(&mut self) -> io::Result<()> {
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(nix::libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
                    // The completion queue is full: make room, then retry.
                    self.reap();
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn reap(&mut self) {
        let mut cq = self.ring.completion();
        cq.sync();
        for cqe in &mut cq {
            self.pending.push_back((cqe.user_data(), cqe.result()));
        }
    }

    /// Polls `waker` (its readable end): [`UringQueue::next_event`] returns
    /// [`RingEvent::Woken`] once it is readable. One-shot: arm again after each
    /// `Woken`. Arming twice before it fires is a no-op.
    ///
    /// The descriptor must stay open while the poll is pending (until `Woken`, or the
    /// queue is dropped).
    ///
    /// # Errors
    /// `io_uring_enter(2)` errors while making room in the submission queue.
    pub fn arm_waker(&mut self, waker: BorrowedFd<'_>) -> io::Result<()> {
        if self.waker_armed {
            return Ok(());
        }
        let sqe: squeue::Entry128 =
            opcode::PollAdd::new(types::Fd(waker.as_raw_fd()), nix::libc::POLLIN as u32)
                .build()
                .user_data(WAKE_TOKEN)
                .into();
        self.push(&sqe)?;
        self.waker_armed = true;
        Ok(())
    }

    /// Submits what is queued (commits, registrations) and waits for the next event.
    ///
    /// # Errors
    /// `io_uring_enter(2)` errors; a registration or commit that failed for another
    /// reason than the end of the connection (the message names the errno).
    pub fn next_event(&mut self) -> io::Result<RingEvent> {
        if let Some(id) = self.lost.pop() {
            return Ok(RingEvent::ReplyLost(id));
        }
        loop {
            if self.pending.is_empty() {
                self.reap();
            }
            if let Some((token, res)) = self.pending.pop_front() {
                if let Some(ev) = self.completion(token, res)? {
                    return Ok(ev);
                }
                continue;
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// One completion: an event for the caller, or `None` (handled here).
    fn completion(&mut self, token: u64, res: i32) -> io::Result<Option<RingEvent>> {
        if token == WAKE_TOKEN {
            self.waker_armed = false;
            if res < 0 && res != -nix::libc::ECANCELED {
                log::warn!(
                    "io_uring queue {}: waker poll failed: {}",
                    self.qid,
                    Errno::from_raw(-res)
                );
            }
            return Ok(Some(RingEvent::Woken));
        }
        let i = usize::try_from(token)
            .ok()
            .filter(|&i| i < self.entries.len());
        let Some(i) = i else {
            log::warn!(
                "io_uring queue {}: completion for unknown entry {token}",
                self.qid
            );
            return Ok(None);
        };
        let was = self.entries[i].state;
        if res >= 0 {
            self.entries[i].state = State::Request;
            self.entries[i].counted = None;
            return Ok(Some(RingEvent::Request(i)));
        }
        self.entries[i].state = State::Idle;
        let errno = Errno::from_raw(-res);
        match errno {
            // The connection ended (unmount, abort), or the ring is being closed.
            Errno::ENOTCONN | Errno::ECONNABORTED | Errno::ECANCELED | Errno::ENODEV => {
                Ok(Some(RingEvent::Closed))
            }
            // REGISTER before the kernel processed INIT's reply: try again shortly.
            Errno::EAGAIN if was == State::Registering => {
                std::thread::sleep(std::time::Duration::from_millis(1));
                self.push_register(i)?;
                Ok(None)
            }
            // The committed request is gone (interrupted and ended): the entry is
            // lost to the kernel; register it anew.
            Errno::ENOENT if was == State::Committing => {
                log::debug!("io_uring queue {}: committed request was gone", self.qid);
                let counted = self.entries[i].counted.take();
                self.push_register(i)?;
                Ok(counted.map(RingEvent::ReplyLost))
            }
            _ if was == State::Committing => {
                log::error!(
                    "io_uring queue {}: committing a reply failed: {errno}; registering the entry again",
                    self.qid
                );
                self.push_register(i)?;
                Ok(None)
            }
            _ => Err(io::Error::new(
                io::Error::from(errno).kind(),
                format!(
                    "registering an entry of io_uring queue {} failed: {errno}",
                    self.qid
                ),
            )),
        }
    }

    /// Answers the request in entry `i` and makes the entry fetch the next one
    /// (FUSE_IO_URING_CMD_COMMIT_AND_FETCH). Queued; submitted by the next
    /// [`UringQueue::next_event`].
    ///
    /// # Errors
    /// A reply that does not fit the payload buffer or lacks its out header is
    /// answered `EIO` instead (and logged); errors only come from making room in the
    /// submission queue.
    pub fn commit(&mut self, i: usize, commit: Commit) -> io::Result<()> {
        let unique = self.entries[i].commit_id;
        let payload_cap = self.payload_len;
        let e = &mut self.entries[i];
        let (error, body_len, counted) = match commit {
            Commit::Reply(p) => {
                let (body_off, body_len) = p.body;
                let (data_off, data_len) = p.data;
                // The session encoded body and data where the kernel reads them
                // (see `UringQueue::reply_space`): body at the payload's start, data
                // right behind it. Anything else is a bug, answered EIO.
                let in_place = (body_len == 0 || body_off == REPLY_DATA_AT)
                    && (data_len == 0 || data_off == REPLY_DATA_AT + body_len);
                let total = body_len + data_len;
                if in_place && total <= payload_cap {
                    e.header[..OUT_HEADER].copy_from_slice(&p.header);
                    (None, total, p.counted)
                } else {
                    log::error!(
                        "io_uring queue {}: a reply of {body_len}+{data_len} bytes is not in place or does not fit; answering EIO",
                        self.qid
                    );
                    (Some(nix::libc::EIO), 0, None)
                }
            }
            Commit::Error(errno) => (Some(errno), 0, None),
            Commit::Empty => (Some(0), 0, None),
        };
        let e = &mut self.entries[i];
        if let Some(errno) = error {
            let oh = abi::fuse_out_header {
                len: (OUT_HEADER as u32).into(),
                error: (-errno).into(),
                unique: unique.into(),
            };
            e.header[..OUT_HEADER].copy_from_slice(oh.as_bytes());
        }
        let trailer = abi::fuse_uring_ent_in_out {
            flags: 0.into(),
            commit_id: unique.into(),
            payload_sz: u32::try_from(body_len).unwrap_or(0).into(),
            padding: 0.into(),
            reserved: 0.into(),
        };
        e.header[ENT_IN_OUT_AT..ENT_IN_OUT_AT + std::mem::size_of::<abi::fuse_uring_ent_in_out>()]
            .copy_from_slice(trailer.as_bytes());
        e.counted = counted;
        // The entry holds the complete reply: a successor commits it as it is.
        if self.keep {
            e.mem.set_answered(unique);
        }
        let cmd = abi::fuse_uring_cmd_req {
            flags: 0.into(),
            commit_id: unique.into(),
            qid: self.qid.into(),
            padding: [0; 6],
        };
        let sqe = self.cmd_sqe(abi::FUSE_IO_URING_CMD_COMMIT_AND_FETCH, &cmd, None, i);
        self.push(&sqe)?;
        self.entries[i].state = State::Committing;
        Ok(())
    }
}

/// Sets the SQE's `len` field (REGISTER wants the iovec count there), which the
/// io-uring crate's `UringCmd80` builder does not expose.
fn with_len(sqe: squeue::Entry128, len: u32) -> squeue::Entry128 {
    /// Offset of `len` in `struct io_uring_sqe` (include/uapi/linux/io_uring.h:
    /// opcode, flags, ioprio, fd, off, addr, then `__u32 len`).
    const LEN_AT: usize = 24;
    // SAFETY: `Entry128` is `#[repr(C)]` holding a `#[repr(C)]` 64-byte
    // `io_uring_sqe` and a `[u8; 64]`: 128 bytes, no padding, every byte initialised
    // (the builder starts from a zeroed SQE), so it can be viewed as bytes and any
    // bytes form a valid value (plain integers and unions of integers).
    let mut bytes: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    bytes[LEN_AT..LEN_AT + 4].copy_from_slice(&len.to_ne_bytes());
    // SAFETY: as above: the same layout back, with one integer field changed.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(bytes) }
}

/// The number of queues the kernel makes for a connection: the number of possible
/// CPUs (`/sys/devices/system/cpu/possible`), falling back to the CPUs online.
pub fn queue_count() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| parse_cpu_list(s.trim()))
        .filter(|&n| n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
}

/// Counts the CPUs in a list like `0-3,5`.
fn parse_cpu_list(s: &str) -> Option<usize> {
    let mut n = 0usize;
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.parse().ok()?;
                let b: usize = b.parse().ok()?;
                n += b.checked_sub(a)? + 1;
            }
            None => {
                part.parse::<usize>().ok()?;
                n += 1;
            }
        }
    }
    Some(n)
}

/// Whether the `fuse` module allows io_uring (`/sys/module/fuse/parameters/enable_uring`):
/// `None` if the parameter does not exist (a kernel without `CONFIG_FUSE_IO_URING`).
/// Root can switch it on with `echo Y > /sys/module/fuse/parameters/enable_uring`.
pub fn uring_enabled() -> Option<bool> {
    std::fs::read_to_string("/sys/module/fuse/parameters/enable_uring")
        .ok()
        .map(|s| s.trim() == "Y" || s.trim() == "1")
}

/// Pins the calling thread to `cpu` (`sched_setaffinity(2)`).
///
/// # Errors
/// `EINVAL` if the CPU is not online or not allowed to this process.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-1"), Some(2));
        assert_eq!(parse_cpu_list("0-3,5,7-8"), Some(7));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
        assert!(queue_count() >= 1);
    }

    #[test]
    fn payload_sizes() {
        assert_eq!(UringQueue::payload_len_for(0, 0, 4096), 8192 + 4096);
        assert_eq!(
            UringQueue::payload_len_for(1 << 20, 256, 4096),
            (1 << 20) + 4096
        );
    }

    #[test]
    fn sqe_len_is_set() {
        let sqe = opcode::UringCmd80::new(types::Fd(3), 1).build();
        let sqe = with_len(sqe, 2);
        // SAFETY: as in `with_len`.
        let bytes: [u8; 128] = unsafe { std::mem::transmute(sqe) };
        assert_eq!(u32::from_ne_bytes(bytes[24..28].try_into().unwrap()), 2);
        assert_eq!(bytes[0], 46, "IORING_OP_URING_CMD");
        assert_eq!(
            u32::from_ne_bytes(bytes[8..12].try_into().unwrap()),
            1,
            "cmd_op"
        );
    }

    #[test]
    fn header_layout() {
        assert_eq!(
            ENT_IN_OUT_AT + std::mem::size_of::<abi::fuse_uring_ent_in_out>(),
            std::mem::size_of::<abi::fuse_uring_req_header>()
        );
        assert!(crate::dev::page_size() >= std::mem::size_of::<abi::fuse_uring_req_header>());
    }
}
