//! [`RingArea`]: the memory of every fuse-over-io_uring entry of a mount in one
//! memfd, mapped at the same address in every process that serves the mount, so
//! that a successor (after `kill -9`, or a live handoff) can answer the requests
//! held in the entries of a process that is gone.
//!
//! # Why the same address
//!
//! `FUSE_IO_URING_CMD_REGISTER` records the *user addresses* of an entry's header
//! and payload buffers (`fs/fuse/dev_uring.c`, `fuse_uring_create_ring_ent`:
//! `ent->headers = iov[0].iov_base; ent->payload = iov[1].iov_base`), and a
//! `COMMIT_AND_FETCH` reads the reply from those addresses in the mm of the task
//! that commits (`fuse_uring_commit`: `copy_from_user(&req->out.h,
//! &ent->headers->in_out, ..)`), whichever process that is: the request is found
//! by its unique in the queue's processing list (`fuse_uring_commit_fetch`:
//! `fuse_request_find(fpq, commit_id)`), not by the ring that fetched it. So a
//! process that maps the same file `MAP_SHARED` at the same address sees the dead
//! entry's request and can answer it; the commit makes the entry its own (it
//! records the new command and fetches the next request into the same buffers).
//!
//! # Layout (integers little-endian in the file header, native in the entries;
//! `P` is the page size)
//!
//! ```text
//! page 0: magic "FLRING01", version u32 = 2, page size u32, queues u32, depth u32,
//!         payload length u64, base address u64, slots u32, zero u32,
//!         check u64 (FNV-1a of bytes 0..48)
//!         (version 1: no slots field, the check over bytes 0..40 at 40; slots =
//!         depth)
//! entry k = queue * slots + j, at P * (1 + k * (2 + R)), R = pages of the payload
//!   (`depth` is how many entries one process registers per queue; `slots` ≥ depth
//!   how many the file holds, so that a live successor registers its own entries
//!   while the old process's are still registered)
//!   one page: header  [0, 288)   struct fuse_uring_req_header (the kernel's)
//!                     [1024, ..) the entry's state, written by the daemon:
//!                       answered u64   the unique whose complete reply the entry holds
//!                       head u64       the unique whose in header and op struct
//!                                      (head_len u32 bytes) are in the save area
//!                       tail u64       the unique whose payload follows them there
//!                       clobbered u64  the unique whose payload was overwritten by
//!                                      its reply without being saved first
//!                       owner u64      the generation of the process that last
//!                                      registered or adopted the entry (0: none)
//!                     [1536, P)  the save area: a copy of the request in device
//!                                layout (in header, op struct, small payloads)
//!   one page + R pages: the reply buffer; from PAYLOAD_OFFSET (one page) on, the
//!                       payload buffer registered with the kernel
//! ```
//!
//! # Telling a pending request from an answered one
//!
//! The kernel writes a request's `commit_id` (its unique) into the trailer of the
//! header (`ring_ent_in_out`) when it copies a request in. The daemon stores the
//! unique in `answered` once the reply is complete in the entry, before it submits
//! the commit (one aligned 8-byte store, which `kill -9` cannot tear). So the
//! entry holds an *unanswered* request exactly when the trailer's `commit_id` is
//! non-zero and differs from `answered`; when they are equal, the entry holds the
//! complete reply, which the successor commits again as it is (the kernel refuses
//! it with `ENOENT` if the dead process's commit went through: exactly once). The
//! in header's unique alone cannot tell: the out header written over it keeps it.
//!
//! A reply encoded into the entry overwrites the request's payload (names, WRITE
//! data). The daemon keeps the in header and op struct in the save area when it
//! takes the request (that copy is the one the session parses), and, before a
//! reply overwrites a payload, copies the payload there too when it fits
//! (`tail`), or else marks it `clobbered`: such a request (a large WRITE, SETXATTR
//! or SYMLINK, all journaled) can only be answered from its recorded reply.
//!
//! # Unsafe
//! Mapping the file at a fixed address (`mmap(2)` with `MAP_FIXED_NOREPLACE`, which
//! never replaces a mapping), handing out slices of the mapping (disjoint per
//! entry, used by one queue thread each), and 8-byte atomic stores into it.
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

use fuse_wire::abi;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::libc;
use nix::sys::memfd::{memfd_create, MFdFlags};

use crate::proto::PAYLOAD_OFFSET;

const MAGIC: &[u8; 8] = b"FLRING01";
const VERSION: u32 = 2;
const FILE_HEADER: usize = 56;
/// The header of a version 1 area (no slots field).
const FILE_HEADER_V1: usize = 48;
/// Slots per entry of a memfd area: room for a live successor's entries while
/// the serving process owns its own and the ones it adopted (those that held a
/// request at its own handoff: the requests its predecessor's callers, and the
/// kernel's RELEASEs, sent during the pause).
pub const SLOTS_PER_ENTRY: usize = 4;
/// Most queues (possible CPUs) an area may describe.
pub const MAX_QUEUES: u32 = 4096;
/// Largest payload buffer an area may describe.
const MAX_PAYLOAD: u64 = 64 << 20;
/// Largest area (a hostile header could declare more).
const MAX_AREA: u64 = 64 << 30;

/// Offset of the entry state in the header page.
const STATE_AT: usize = 1024;
const ANSWERED_AT: usize = STATE_AT;
const HEAD_AT: usize = STATE_AT + 8;
const HEAD_LEN_AT: usize = STATE_AT + 16;
const TAIL_AT: usize = STATE_AT + 24;
const TAIL_LEN_AT: usize = STATE_AT + 32;
const CLOBBERED_AT: usize = STATE_AT + 40;
const OWNER_AT: usize = STATE_AT + 48;
/// Offset of the save area in the header page.
pub(crate) const SAVE_AT: usize = 1536;
/// Offset of the trailer (`ring_ent_in_out`) in the header.
const TRAILER_AT: usize = abi::FUSE_URING_IN_OUT_HEADER_SZ + abi::FUSE_URING_OP_IN_OUT_SZ;

/// Where the area is tried first: far from the heap, the stack and the places the
/// kernel picks for `mmap` (top-down from below the stack), so that a successor
/// finds the range free. Then the kernel's choice.
const PREFERRED_BASES: [u64; 4] = [
    0x3f00_0000_0000,
    0x3e00_0000_0000,
    0x2f00_0000_0000,
    0x1f00_0000_0000,
];

fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default())
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

/// The shape of a [`RingArea`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingGeometry {
    /// Page size the area was made with.
    pub page: u32,
    /// Queues (one per possible CPU).
    pub queues: u32,
    /// Entries per queue one process registers.
    pub depth: u32,
    /// Entries per queue the file holds (at least `depth`): a live successor
    /// registers on those the serving process does not own.
    pub slots: u32,
    /// Bytes of each payload buffer.
    pub payload_len: u64,
}

impl RingGeometry {
    fn reply_len(&self) -> u64 {
        let p = u64::from(self.page);
        (PAYLOAD_OFFSET as u64 + self.payload_len).div_ceil(p) * p
    }

    fn stride(&self) -> u64 {
        u64::from(self.page) + self.reply_len()
    }

    fn entries(&self) -> u64 {
        u64::from(self.queues) * u64::from(self.slots)
    }

    /// Bytes of the whole file.
    pub fn file_len(&self) -> u64 {
        u64::from(self.page) + self.entries() * self.stride()
    }

    fn check(&self) -> Result<(), String> {
        if self.page as usize != crate::dev::page_size() {
            return Err(format!(
                "made with {}-byte pages, this system has {}",
                self.page,
                crate::dev::page_size()
            ));
        }
        if self.queues == 0 || self.queues > MAX_QUEUES {
            return Err(format!("{} queues", self.queues));
        }
        if self.depth == 0 || self.depth as usize > crate::dev::uring::MAX_DEPTH {
            return Err(format!("depth {}", self.depth));
        }
        if self.slots < self.depth
            || self.slots as usize > SLOTS_PER_ENTRY * crate::dev::uring::MAX_DEPTH
        {
            return Err(format!("{} slots for depth {}", self.slots, self.depth));
        }
        if (self.payload_len as usize) < abi::FUSE_MIN_READ_BUFFER || self.payload_len > MAX_PAYLOAD
        {
            return Err(format!("payload length {}", self.payload_len));
        }
        if self.file_len() > MAX_AREA {
            return Err(format!("{} bytes", self.file_len()));
        }
        Ok(())
    }
}

/// One entry's memory in a [`RingArea`]: its header page and its reply buffer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EntryMem {
    /// The header page.
    pub header: *mut u8,
    /// The reply buffer (`PAYLOAD_OFFSET + payload_len` bytes).
    pub buf: *mut u8,
    pub buf_len: usize,
    pub page: usize,
}

// SAFETY: an `EntryMem` is two addresses into a `RingArea` mapping, which lives as
// long as the `Arc<RingArea>` its user holds; each entry is used by one thread.
unsafe impl Send for EntryMem {}

impl EntryMem {
    fn word(&self, at: usize) -> &AtomicU64 {
        // SAFETY: `at` is one of the 8-aligned state offsets, inside the header
        // page, which is mapped and page-aligned; an AtomicU64 has the layout of a
        // u64, and every access to these words goes through atomics.
        unsafe { &*(self.header.add(at).cast::<AtomicU64>()) }
    }

    fn set_half(&self, at: usize, v: u32) {
        // SAFETY: as `word`, a 4-byte field inside the header page.
        unsafe { self.header.add(at).cast::<u32>().write_volatile(v) }
    }

    /// The unique whose complete reply the entry holds.
    pub fn answered(&self) -> u64 {
        self.word(ANSWERED_AT).load(Ordering::Acquire)
    }

    /// Records that the entry holds the complete reply to `unique` (after the
    /// reply is written, before the commit is submitted).
    pub fn set_answered(&self, unique: u64) {
        self.word(ANSWERED_AT).store(unique, Ordering::Release);
    }

    /// Records that the save area holds the request's in header and op struct.
    pub fn set_head(&self, unique: u64, len: usize) {
        self.set_half(HEAD_LEN_AT, u32::try_from(len).unwrap_or(0));
        self.word(HEAD_AT).store(unique, Ordering::Release);
    }

    /// Records that the save area also holds the request's payload, `len` bytes.
    pub fn set_tail(&self, unique: u64, len: usize) {
        self.set_half(TAIL_LEN_AT, u32::try_from(len).unwrap_or(0));
        self.word(TAIL_AT).store(unique, Ordering::Release);
    }

    /// Records that the request's payload is about to be overwritten unsaved.
    pub fn set_clobbered(&self, unique: u64) {
        self.word(CLOBBERED_AT).store(unique, Ordering::Release);
    }

    /// The generation of the process that last registered or adopted the entry
    /// (0: never registered).
    pub fn owner(&self) -> u64 {
        self.word(OWNER_AT).load(Ordering::Acquire)
    }

    /// Records that a process of `generation` registers or adopts the entry (before
    /// the command is submitted).
    pub fn set_owner(&self, generation: u64) {
        self.word(OWNER_AT).store(generation, Ordering::Release);
    }

    /// Bytes the save area holds.
    pub fn save_len(&self) -> usize {
        self.page - SAVE_AT
    }

    /// The save area.
    pub fn save(&self) -> *mut u8 {
        // SAFETY: SAVE_AT < page: inside the header page.
        unsafe { self.header.add(SAVE_AT) }
    }
}

/// What an entry of a dead process holds (see [`RingArea::inspect`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryHolds {
    /// No request (never fetched one, or nothing readable).
    Nothing,
    /// The complete reply to this unique: commit it again as it is.
    Reply(u64),
    /// An unanswered request: its unique, its bytes in device layout (the payload
    /// may be gone: `payload_lost`).
    Request {
        /// Its unique (the trailer's `commit_id`).
        unique: u64,
        /// In header, op struct, payload, as `read(2)` of the device gives them.
        bytes: Vec<u8>,
        /// The payload was overwritten by the reply before it was saved: only a
        /// recorded reply can answer it.
        payload_lost: bool,
    },
    /// The entry's bytes do not add up (logged by the caller): what is wrong, and
    /// the trailer's `commit_id` (the kernel may hold that request in the entry:
    /// answer it with an error rather than leave its caller waiting).
    Damaged(&'static str, u64),
}

/// The entries' memory of a mount served through io_uring: a memfd (or, for a
/// mount that need not survive its process, anonymous shared memory) mapped at a
/// recorded address (see the module docs).
#[derive(Debug)]
pub struct RingArea {
    file: Option<File>,
    geo: RingGeometry,
    base: usize,
    len: usize,
    /// The generation of this process's entries: 1 for a new area, one more than
    /// the highest owner found in an inherited one.
    generation: u64,
}

// SAFETY: the mapping is shared memory owned by this value; the slices it hands
// out are disjoint per entry and each is used by one thread at a time.
unsafe impl Send for RingArea {}
// SAFETY: as above.
unsafe impl Sync for RingArea {}

impl Drop for RingArea {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are the mapping made by `map_at`; the queues that
        // refer to it hold an `Arc<RingArea>` and close their rings first.
        unsafe {
            libc::munmap(self.base as *mut libc::c_void, self.len);
        }
    }
}

/// Maps `len` bytes of `fd` (or anonymous shared memory) at `want` without
/// replacing anything, or anywhere for `None`. Returns the address.
fn map_at(fd: Option<BorrowedFd<'_>>, len: usize, want: Option<u64>) -> io::Result<usize> {
    let mut flags = libc::MAP_SHARED;
    let raw = match fd {
        Some(f) => f.as_raw_fd(),
        None => {
            flags |= libc::MAP_ANONYMOUS;
            -1
        }
    };
    if want.is_some() {
        flags |= libc::MAP_FIXED_NOREPLACE;
    }
    let hint = want.unwrap_or(0) as usize as *mut libc::c_void;
    // SAFETY: a new shared mapping; MAP_FIXED_NOREPLACE never replaces an existing
    // mapping (it fails with EEXIST instead), so no memory of this process changes.
    let p = unsafe { libc::mmap(hint, len, libc::PROT_READ | libc::PROT_WRITE, flags, raw, 0) };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let got = p as usize;
    if let Some(w) = want {
        if got as u64 != w {
            // A kernel before 4.17 takes MAP_FIXED_NOREPLACE as a hint.
            // SAFETY: the mapping just made, not used.
            unsafe { libc::munmap(p, len) };
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
    }
    Ok(got)
}

impl RingArea {
    /// A new area for `queues` queues of `depth` entries with payload buffers of
    /// `payload_len` bytes: a memfd named `name` (for the fd store) when `name` is
    /// given, with [`SLOTS_PER_ENTRY`] `× depth` slots per queue (room for a live successor's
    /// entries while the serving process owns its own and those it adopted;
    /// unused slots cost address space, not memory), else anonymous
    /// shared memory with `depth` slots. Mapped at an address chosen to be free in
    /// a successor too.
    ///
    /// # Errors
    /// A geometry out of range (`InvalidInput`), `memfd_create`, `ftruncate`,
    /// `mmap` errors.
    pub fn new(
        name: Option<&str>,
        queues: usize,
        depth: usize,
        payload_len: usize,
    ) -> io::Result<RingArea> {
        let geo = RingGeometry {
            page: u32::try_from(crate::dev::page_size()).unwrap_or(4096),
            queues: u32::try_from(queues).unwrap_or(u32::MAX),
            depth: u32::try_from(depth).unwrap_or(u32::MAX),
            slots: u32::try_from(if name.is_some() {
                SLOTS_PER_ENTRY * depth
            } else {
                depth
            })
            .unwrap_or(u32::MAX),
            payload_len: payload_len as u64,
        };
        geo.check()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("ring area: {e}")))?;
        let len = usize::try_from(geo.file_len()).map_err(|_| io::ErrorKind::InvalidInput)?;
        let file = match name {
            Some(n) => {
                let fd = memfd_create(n, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
                let file = File::from(fd);
                file.set_len(geo.file_len())?;
                fcntl(&file, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK))?;
                Some(file)
            }
            None => None,
        };
        let fd = file.as_ref().map(|f| f.as_fd());
        let base = PREFERRED_BASES
            .iter()
            .find_map(|&b| map_at(fd, len, Some(b)).ok())
            .map_or_else(|| map_at(fd, len, None), Ok)?;
        let area = RingArea {
            file,
            geo,
            base,
            len,
            generation: 1,
        };
        if let Some(f) = &area.file {
            f.write_all_at(&area.encode_header(), 0)?;
        }
        Ok(area)
    }

    fn encode_header(&self) -> [u8; FILE_HEADER] {
        let mut h = [0u8; FILE_HEADER];
        h[0..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&self.geo.page.to_le_bytes());
        h[16..20].copy_from_slice(&self.geo.queues.to_le_bytes());
        h[20..24].copy_from_slice(&self.geo.depth.to_le_bytes());
        h[24..32].copy_from_slice(&self.geo.payload_len.to_le_bytes());
        h[32..40].copy_from_slice(&(self.base as u64).to_le_bytes());
        h[40..44].copy_from_slice(&self.geo.slots.to_le_bytes());
        let check = fnv64(&h[0..48]);
        h[48..56].copy_from_slice(&check.to_le_bytes());
        h
    }

    /// Reads a file header: the geometry and the base address.
    ///
    /// # Errors
    /// `InvalidData` naming what is wrong.
    pub fn read_header(bytes: &[u8]) -> io::Result<(RingGeometry, u64)> {
        let bad =
            |why: String| io::Error::new(io::ErrorKind::InvalidData, format!("ring area: {why}"));
        if bytes.len() < FILE_HEADER_V1 {
            return Err(bad("short header".into()));
        }
        if &bytes[0..8] != MAGIC {
            return Err(bad("not a ring area (magic)".into()));
        }
        let version = le_u32(bytes, 8);
        let slots = match version {
            1 => {
                if le_u64(bytes, 40) != fnv64(&bytes[0..40]) {
                    return Err(bad("header check failed".into()));
                }
                le_u32(bytes, 20)
            }
            VERSION => {
                if bytes.len() < FILE_HEADER {
                    return Err(bad("short header".into()));
                }
                if le_u64(bytes, 48) != fnv64(&bytes[0..48]) {
                    return Err(bad("header check failed".into()));
                }
                if le_u32(bytes, 44) != 0 {
                    return Err(bad("reserved header bytes are not zero".into()));
                }
                le_u32(bytes, 40)
            }
            _ => {
                return Err(bad(format!(
                    "version {version}, this build reads 1 and {VERSION}"
                )))
            }
        };
        let geo = RingGeometry {
            page: le_u32(bytes, 12),
            queues: le_u32(bytes, 16),
            depth: le_u32(bytes, 20),
            slots,
            payload_len: le_u64(bytes, 24),
        };
        geo.check().map_err(bad)?;
        let base = le_u64(bytes, 32);
        if base == 0 || base % u64::from(geo.page) != 0 {
            return Err(bad(format!("base address {base:#x}")));
        }
        Ok((geo, base))
    }

    /// An area inherited as a descriptor (from the fd store, or a handoff): its
    /// header is checked and it is mapped back at the address it records. Do it
    /// early, before large mappings could take the range.
    ///
    /// # Errors
    /// `InvalidData` for a damaged header or a file shorter than it says;
    /// `AddrInUse` when something else is mapped in the range (the message gives
    /// it); `mmap` errors.
    pub fn from_fd(fd: OwnedFd) -> io::Result<RingArea> {
        let _ = fcntl(&fd, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK));
        let file = File::from(fd);
        let mut head = [0u8; FILE_HEADER];
        file.read_exact_at(&mut head, 0)?;
        let (geo, base) = Self::read_header(&head)?;
        if file.metadata()?.len() < geo.file_len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "ring area: the file is shorter than its header says",
            ));
        }
        let len = usize::try_from(geo.file_len()).map_err(|_| io::ErrorKind::InvalidData)?;
        let base_at = map_at(Some(file.as_fd()), len, Some(base)).map_err(|e| {
            if e.raw_os_error() == Some(libc::EEXIST) {
                io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "ring area: the range {base:#x}..{:#x} it must be mapped at is taken \
                         in this process (map it earlier, before other large mappings)",
                        base + len as u64
                    ),
                )
            } else {
                io::Error::new(e.kind(), format!("ring area: mapping it at {base:#x}: {e}"))
            }
        })?;
        let mut area = RingArea {
            file: Some(file),
            geo,
            base: base_at,
            len,
            generation: 0,
        };
        area.generation = area.highest_owner().saturating_add(1);
        Ok(area)
    }

    /// The generation this process tags the entries it registers or adopts with
    /// (written into each such entry's owner word).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The highest owner generation of any entry: the generation of the process
    /// that serves (or last served) through the area.
    pub fn highest_owner(&self) -> u64 {
        (0..self.geo.queues as usize)
            .flat_map(|q| (0..self.geo.slots as usize).map(move |j| (q, j)))
            .map(|(q, j)| self.entry(q, j).owner())
            .max()
            .unwrap_or(0)
    }

    /// How many slots of each queue this process's generation owns (registered or
    /// adopted): at most its depth plus the entries it adopted.
    pub fn owned_per_queue(&self) -> Vec<usize> {
        (0..self.geo.queues as usize)
            .map(|q| self.slots_of(q, self.generation).len())
            .collect()
    }

    /// The owner generation of each entry of queue `qid`.
    pub fn owners(&self, qid: usize) -> Vec<u64> {
        (0..self.geo.slots as usize)
            .map(|j| self.entry(qid, j).owner())
            .collect()
    }

    /// The slots of queue `qid` owned by generation `owner` (for an area no
    /// process tagged, `owner` 0: the first `depth`, where an older build
    /// registered).
    pub fn slots_of(&self, qid: usize, owner: u64) -> Vec<usize> {
        if owner == 0 {
            return (0..self.geo.depth as usize).collect();
        }
        self.owners(qid)
            .into_iter()
            .enumerate()
            .filter(|&(_, o)| o == owner)
            .map(|(j, _)| j)
            .collect()
    }

    /// The entries of queue `qid` that a live successor may register while the
    /// process of generation `serving` still serves through its own: those it
    /// does not own (never registered, cancelled with an older process's ring, or
    /// adopted and retagged since). A live handoff registers these before the old
    /// process releases its rings (docs/DESIGN.md, "Live handoff over io_uring").
    pub fn free_slots(&self, qid: usize, serving: u64) -> Vec<usize> {
        self.owners(qid)
            .into_iter()
            .enumerate()
            .filter(|&(_, o)| o != serving)
            .map(|(j, _)| j)
            .collect()
    }

    /// The memfd, for the fd store or a handoff (`None` for anonymous memory).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.file.as_ref().map(|f| f.as_fd())
    }

    /// The geometry.
    pub fn geometry(&self) -> RingGeometry {
        self.geo
    }

    /// The address the area is mapped at.
    pub fn base(&self) -> usize {
        self.base
    }

    /// Whether the area serves queues of this shape.
    pub fn fits(&self, queues: usize, payload_len: usize) -> bool {
        self.geo.queues as usize == queues && self.geo.payload_len as usize == payload_len
    }

    /// Entry `j` of queue `qid`.
    pub(crate) fn entry(&self, qid: usize, j: usize) -> EntryMem {
        let k = (qid * self.geo.slots as usize + j) as u64;
        let at = u64::from(self.geo.page) + k * self.geo.stride();
        let header = (self.base as u64 + at) as usize as *mut u8;
        EntryMem {
            header,
            // SAFETY: computed inside the mapping (checked geometry).
            buf: unsafe { header.add(self.geo.page as usize) },
            buf_len: PAYLOAD_OFFSET + self.geo.payload_len as usize,
            page: self.geo.page as usize,
        }
    }

    /// What entry `j` of queue `qid` holds, read after its process died.
    pub fn inspect(&self, qid: usize, j: usize) -> EntryHolds {
        let e = self.entry(qid, j);
        // SAFETY: the header page and the reply buffer are inside the mapping; no
        // thread of this process uses the entry yet (recovery runs before serving).
        let (header, buf) = unsafe {
            (
                std::slice::from_raw_parts(e.header.cast_const(), e.page),
                std::slice::from_raw_parts(e.buf.cast_const(), e.buf_len),
            )
        };
        let ne64 =
            |at: usize| u64::from_ne_bytes(header[at..at + 8].try_into().unwrap_or_default());
        let ne32 =
            |at: usize| u32::from_ne_bytes(header[at..at + 4].try_into().unwrap_or_default());
        let commit_id = ne64(TRAILER_AT + 8);
        let payload_sz = ne32(TRAILER_AT + 16) as usize;
        if commit_id == 0 {
            return EntryHolds::Nothing;
        }
        if e.answered() == commit_id {
            return EntryHolds::Reply(commit_id);
        }
        let head = ne64(HEAD_AT);
        let payload_max = self.geo.payload_len as usize;
        if payload_sz > payload_max {
            return EntryHolds::Damaged("payload_sz larger than the payload buffer", commit_id);
        }
        let (mut bytes, total) = if head == commit_id {
            let hl = ne32(HEAD_LEN_AT) as usize;
            if !(40..=40 + abi::FUSE_URING_OP_IN_OUT_SZ).contains(&hl) {
                return EntryHolds::Damaged("saved head length", commit_id);
            }
            let saved = &header[SAVE_AT..SAVE_AT + hl];
            (saved.to_vec(), hl)
        } else {
            // Not taken by the daemon: the kernel's bytes are as it wrote them.
            let total = ne32(0) as usize;
            let Some(op_len) = total
                .checked_sub(40)
                .and_then(|n| n.checked_sub(payload_sz))
            else {
                return EntryHolds::Damaged(
                    "header length shorter than header and payload",
                    commit_id,
                );
            };
            if op_len > abi::FUSE_URING_OP_IN_OUT_SZ {
                return EntryHolds::Damaged("op struct larger than the op_in area", commit_id);
            }
            let op_at = abi::FUSE_URING_IN_OUT_HEADER_SZ;
            let mut v = header[..40].to_vec();
            v.extend_from_slice(&header[op_at..op_at + op_len]);
            (v, 40 + op_len)
        };
        if u64::from_ne_bytes(bytes[8..16].try_into().unwrap_or_default()) != commit_id {
            return EntryHolds::Damaged("the in header's unique is not the commit id", commit_id);
        }
        let mut payload_lost = false;
        if payload_sz > 0 {
            if ne64(TAIL_AT) == commit_id {
                let tl = ne32(TAIL_LEN_AT) as usize;
                if tl != payload_sz || SAVE_AT + total + tl > e.page {
                    return EntryHolds::Damaged("saved payload length", commit_id);
                }
                bytes.extend_from_slice(&header[SAVE_AT + total..SAVE_AT + total + tl]);
            } else if ne64(CLOBBERED_AT) == commit_id {
                payload_lost = true;
                bytes.resize(total + payload_sz, 0);
            } else {
                bytes.extend_from_slice(&buf[PAYLOAD_OFFSET..PAYLOAD_OFFSET + payload_sz]);
            }
        }
        let declared = u32::from_ne_bytes(bytes[0..4].try_into().unwrap_or_default()) as usize;
        if declared != bytes.len() {
            return EntryHolds::Damaged("request length does not add up", commit_id);
        }
        EntryHolds::Request {
            unique: commit_id,
            bytes,
            payload_lost,
        }
    }

    /// Writes a complete reply into entry `j` of queue `qid` (out header with
    /// `unique`, `body` at the start of the payload buffer, the trailer) and marks
    /// it answered, so that committing it (here or after another crash) delivers it
    /// once. `body` longer than the payload buffer is cut (the caller checks).
    pub(crate) fn write_reply(&self, qid: usize, j: usize, error: i32, unique: u64, body: &[u8]) {
        let e = self.entry(qid, j);
        let body = &body[..body.len().min(self.geo.payload_len as usize)];
        let len = u32::try_from(16 + body.len()).unwrap_or(u32::MAX);
        let mut oh = [0u8; 16];
        oh[0..4].copy_from_slice(&len.to_ne_bytes());
        oh[4..8].copy_from_slice(&error.to_ne_bytes());
        oh[8..16].copy_from_slice(&unique.to_ne_bytes());
        let mut trailer = [0u8; 32];
        trailer[8..16].copy_from_slice(&unique.to_ne_bytes());
        trailer[16..20].copy_from_slice(&u32::try_from(body.len()).unwrap_or(0).to_ne_bytes());
        // SAFETY: inside the entry's header page and payload buffer; no other
        // thread uses the entry during recovery.
        unsafe {
            std::ptr::copy_nonoverlapping(body.as_ptr(), e.buf.add(PAYLOAD_OFFSET), body.len());
            std::ptr::copy_nonoverlapping(oh.as_ptr(), e.header, 16);
            std::ptr::copy_nonoverlapping(trailer.as_ptr(), e.header.add(TRAILER_AT), 32);
        }
        e.set_answered(unique);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_damage() {
        let area = RingArea::new(Some("ring-area-test"), 2, 2, 8192 + 4096).unwrap();
        let h = area.encode_header();
        let (geo, base) = RingArea::read_header(&h).unwrap();
        assert_eq!(geo, area.geometry());
        assert_eq!(base as usize, area.base());
        for i in 0..FILE_HEADER {
            let mut bad = h;
            bad[i] ^= 0x40;
            assert!(RingArea::read_header(&bad).is_err(), "byte {i}");
        }
        assert!(RingArea::read_header(&h[..10]).is_err());
        // A version 1 header (an area stored by an older build): slots = depth.
        let mut v1 = [0u8; FILE_HEADER_V1];
        v1[..40].copy_from_slice(&h[..40]);
        v1[8..12].copy_from_slice(&1u32.to_le_bytes());
        let check = fnv64(&v1[0..40]);
        v1[40..48].copy_from_slice(&check.to_le_bytes());
        let (g1, b1) = RingArea::read_header(&v1).unwrap();
        assert_eq!((g1.slots, g1.depth, b1), (geo.depth, geo.depth, base));
        // An unknown version is refused by name.
        let mut v9 = h;
        v9[8..12].copy_from_slice(&9u32.to_le_bytes());
        let check = fnv64(&v9[0..48]);
        v9[48..56].copy_from_slice(&check.to_le_bytes());
        let e = RingArea::read_header(&v9).unwrap_err();
        assert!(e.to_string().contains("version 9"), "{e}");
    }

    #[test]
    fn a_second_mapping_at_the_same_address_is_refused_clearly() {
        let area = RingArea::new(Some("ring-area-test"), 1, 1, 8192).unwrap();
        let fd = area.fd().unwrap().try_clone_to_owned().unwrap();
        let e = RingArea::from_fd(fd).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        assert!(e.to_string().contains("is taken"), "{e}");
    }

    #[test]
    fn random_entries_never_panic_and_requests_add_up() {
        // Entries a dying process (or anyone holding the memfd) left in any state.
        let area = RingArea::new(None, 1, 1, 8192).unwrap();
        let e = area.entry(0, 0);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..3000 {
            // A few random words at the places inspect reads, the rest kept.
            for _ in 0..8 {
                let r = next();
                let at = match r % 6 {
                    0 => (r >> 8) as usize % 48,
                    1 => TRAILER_AT + (r >> 8) as usize % 32,
                    2 => STATE_AT + (r >> 8) as usize % 48,
                    3 => SAVE_AT + (r >> 8) as usize % 64,
                    _ => (r >> 8) as usize % (e.page - 8),
                };
                let v = if round % 3 == 0 { next() % 300 } else { next() };
                // SAFETY: `at + 8 <= page`: inside entry 0's header page.
                unsafe { e.header.add(at).cast::<u64>().write_unaligned(v) };
            }
            match area.inspect(0, 0) {
                EntryHolds::Request { unique, bytes, .. } => {
                    assert!(bytes.len() >= 40);
                    let len = u32::from_ne_bytes(bytes[0..4].try_into().unwrap()) as usize;
                    assert_eq!(len, bytes.len());
                    assert_eq!(u64::from_ne_bytes(bytes[8..16].try_into().unwrap()), unique);
                }
                EntryHolds::Nothing | EntryHolds::Reply(_) | EntryHolds::Damaged(..) => {}
            }
        }
    }

    #[test]
    fn random_headers_are_refused_without_panic() {
        let mut x: u64 = 12345;
        for _ in 0..2000 {
            let mut h = [0u8; FILE_HEADER];
            for b in h.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            h[0..8].copy_from_slice(MAGIC);
            h[8..12].copy_from_slice(&(1 + (x as u32 & 1)).to_le_bytes());
            let check = fnv64(&h[0..40]);
            h[40..48].copy_from_slice(&check.to_le_bytes());
            let check = fnv64(&h[0..48]);
            h[48..56].copy_from_slice(&check.to_le_bytes());
            // Valid magic and check, random geometry: refused or in range.
            if let Ok((geo, _)) = RingArea::read_header(&h) {
                assert!(geo.file_len() <= MAX_AREA);
            }
        }
    }

    #[test]
    fn entries_tell_pending_from_answered() {
        let area = RingArea::new(None, 1, 2, 8192).unwrap();
        assert_eq!(area.inspect(0, 0), EntryHolds::Nothing);
        // A request as the kernel writes it: GETATTR (op struct 16 bytes).
        let e = area.entry(0, 1);
        let mut inh = [0u8; 40];
        inh[0..4].copy_from_slice(&56u32.to_ne_bytes());
        inh[4..8].copy_from_slice(&3u32.to_ne_bytes());
        inh[8..16].copy_from_slice(&42u64.to_ne_bytes());
        let mut trailer = [0u8; 32];
        trailer[8..16].copy_from_slice(&42u64.to_ne_bytes());
        // SAFETY: inside entry 1's header page.
        unsafe {
            std::ptr::copy_nonoverlapping(inh.as_ptr(), e.header, 40);
            std::ptr::copy_nonoverlapping(trailer.as_ptr(), e.header.add(TRAILER_AT), 32);
        }
        match area.inspect(0, 1) {
            EntryHolds::Request {
                unique,
                bytes,
                payload_lost,
            } => {
                assert_eq!((unique, bytes.len(), payload_lost), (42, 56, false));
            }
            other => panic!("{other:?}"),
        }
        area.write_reply(0, 1, 0, 42, &[1, 2, 3]);
        assert_eq!(area.inspect(0, 1), EntryHolds::Reply(42));
        // The owner word is not part of what inspect reads.
        e.set_owner(7);
        assert_eq!(area.inspect(0, 1), EntryHolds::Reply(42));
        // A damaged length.
        // SAFETY: as above.
        unsafe { std::ptr::write_bytes(e.header.add(TRAILER_AT + 8), 0x7f, 8) };
        assert!(matches!(area.inspect(0, 1), EntryHolds::Damaged(..)));
    }

    #[test]
    fn owners_tell_free_slots_and_successor_generation() {
        let area = RingArea::new(Some("ring-area-test"), 2, 4, 8192).unwrap();
        assert_eq!(area.generation(), 1);
        assert_eq!(area.highest_owner(), 0);
        assert_eq!(
            area.geometry().slots,
            16,
            "a memfd area has four slots per entry"
        );
        assert_eq!(area.free_slots(0, 1), (0..16).collect::<Vec<_>>());
        // Generation 1 serves on entries 0 and 1 of queue 0, entry 3 of queue 1;
        // entry 2 of queue 0 was an older process's (cancelled with its ring).
        area.entry(0, 0).set_owner(1);
        area.entry(0, 1).set_owner(1);
        area.entry(1, 3).set_owner(1);
        area.entry(0, 2).set_owner(0);
        let mut want = vec![1, 1];
        want.resize(16, 0);
        assert_eq!(area.owners(0), want);
        assert_eq!(area.free_slots(0, 1), (2..16).collect::<Vec<_>>());
        assert_eq!(
            area.free_slots(1, 1),
            (0..16).filter(|&j| j != 3).collect::<Vec<_>>()
        );
        assert_eq!(area.highest_owner(), 1);
        assert_eq!(area.owned_per_queue(), vec![2, 1], "this process's slots");
        // The owner word lives in the shared file, where a successor reads it.
        let mut word = [0u8; 8];
        let page = u64::from(area.geometry().page);
        let entry0 = page; // entry 0 of queue 0 starts after the file header page
        area.fd()
            .map(|fd| {
                let f = File::from(fd.try_clone_to_owned().unwrap());
                f.read_exact_at(&mut word, entry0 + OWNER_AT as u64)
                    .unwrap();
            })
            .unwrap();
        assert_eq!(
            u64::from_ne_bytes(word),
            1,
            "the owner word is in the shared file"
        );
        // Generation 2 registers on 2 and 3, then adopts entry 1 (it held a
        // request when generation 1 released its rings): retagged. Entry 0
        // (cancelled with generation 1's ring) is free for the next successor.
        for j in [1, 2, 3] {
            area.entry(0, j).set_owner(2);
        }
        assert_eq!(area.highest_owner(), 2);
        assert_eq!(
            area.free_slots(0, 2),
            (0..16)
                .filter(|j| ![1, 2, 3].contains(j))
                .collect::<Vec<_>>()
        );
        // Anonymous areas (never handed over) have one slot per entry.
        let plain = RingArea::new(None, 1, 4, 8192).unwrap();
        assert_eq!(plain.geometry().slots, 4);
    }
}
