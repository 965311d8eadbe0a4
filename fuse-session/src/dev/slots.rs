//! [`RequestSlots`]: request buffers in a memfd, so that the requests a daemon had
//! read but not answered outlive it — crash recovery on kernels without
//! `FUSE_HAS_RESEND`.
//!
//! With `NOTIFY_RESEND` (Linux 6.9), a restarted daemon asks the kernel to queue again
//! what the dead process had read and not answered. Without it those requests stay in
//! the kernel's processing list (the fd store holds the same `/dev/fuse` file) with
//! nobody to answer them: their callers hang. The kernel still accepts a reply with
//! the original unique, from any holder of that file. So the library keeps each
//! worker's request buffer in a memfd (one *slot* per worker) that goes to the fd store
//! ([`REQUEST_SLOTS_FD`](super::fdstore::REQUEST_SLOTS_FD)); the restarted daemon reads
//! the slots and answers what they hold.
//!
//! # Layout (all integers little-endian; `P` is the page size the file was made with)
//!
//! ```text
//! page 0: file header   magic "FLSLOTS1", version u32 = 1, page size u32, slots u32,
//!                       reserved u32, data length u64, check u64 (FNV-1a of bytes 0..32)
//! slot i, at P * (1 + i * (1 + data length / P)):
//!   one page: slot header  magic "FLSLOT\0\0", index u32, reserved u32,
//!                          check u64 (FNV-1a of bytes 0..16), answered u64
//!   data length bytes:     the request buffer the worker reads into
//! ```
//!
//! The kernel writes each request into the slot's data area itself (the worker's
//! `read(2)` goes there): nothing is copied and nothing is written before the read.
//! After the reply is written (or the request needed none), the worker stores the
//! request's unique in `answered`: one aligned 8-byte store, which a `kill -9` cannot
//! tear. So a slot *holds an unanswered request* exactly when its data area starts with
//! a `fuse_in_header` whose unique differs from `answered`. A request answered whose
//! `answered` store was not made yet is seen as held too: answering it again is
//! refused by the kernel (`ENOENT`, its unique is never reused), see
//! `Server::recover_requests`.
//!
//! The worker only keeps the data area resident from the start (`MAP_POPULATE`) and
//! out of forked children (`MADV_DONTFORK`), as [`RequestBuffer`](super::RequestBuffer)
//! does: a page fault while the kernel copies a request into a dying process's buffer
//! makes the kernel end that request with `EIO`. With no fault possible, a request is
//! either wholly in the slot and in the kernel's processing list, or in neither.
//!
//! # Untrusted contents
//! A slot file read at recovery was written by a process that died at any instruction,
//! or by anyone holding the descriptor: [`RequestSlots::scan`] checks every length
//! against the geometry and the file's size before reading, allocates only checked
//! lengths (at most [`MAX_HELD_BYTES`] per scan), and reports a damaged slot instead
//! of failing the others.
//!
//! # Unsafe
//! Mapping a slot (`memmap2`'s `map_mut`, `unsafe` because another process could
//! truncate the file: the memfd is sealed against shrinking) and viewing its
//! `answered` word as an `AtomicU64`.
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

use fuse_wire::abi;
use memmap2::{Advice, MmapMut, MmapOptions};
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};

/// The file header's magic.
const FILE_MAGIC: &[u8; 8] = b"FLSLOTS1";
/// The slot header's magic.
const SLOT_MAGIC: &[u8; 8] = b"FLSLOT\0\0";
/// The format version.
const VERSION: u32 = 1;
/// Bytes of the file header.
const FILE_HEADER: usize = 40;
/// Bytes of a slot header.
const SLOT_HEADER: usize = 32;
/// Offset of `answered` in a slot header.
const ANSWERED_AT: usize = 24;
/// Most slots a file may have (a worker each).
pub const MAX_SLOTS: u32 = 1024;
/// Largest data area of a slot (as [`RequestBuffer`](super::RequestBuffer)'s limit).
const MAX_DATA: u64 = 64 << 20;
/// Bytes of `fuse_in_header`.
const IN_HEADER: usize = 40;
/// Most request bytes one scan copies out (a hostile file could declare 1024 slots
/// of 64 MiB, sparse): 256 full 1 MiB requests. Slots past it are reported damaged.
pub const MAX_HELD_BYTES: usize = 256 << 20;

/// FNV-1a, 64 bits: detects a header that is not one (stray bytes), not an attacker.
fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The fixed part of slot `i`'s header: magic, index, and the check of both (the
/// `answered` word after it starts at 0).
fn slot_header(i: u32) -> [u8; 24] {
    let mut h = [0u8; 24];
    h[0..8].copy_from_slice(SLOT_MAGIC);
    h[8..12].copy_from_slice(&i.to_le_bytes());
    let check = fnv64(&h[0..16]);
    h[16..24].copy_from_slice(&check.to_le_bytes());
    h
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn ne_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn ne_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Where slot bytes are read from at recovery: the memfd, or (tests, fuzzing) bytes.
pub trait SlotSource {
    /// The size in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Fills `buf` from offset `at` (`UnexpectedEof` past the end).
    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> io::Result<()>;
}

impl SlotSource for File {
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, at)
    }
}

impl SlotSource for [u8] {
    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        let start = usize::try_from(at).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// A slot file's geometry, from its header (validated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotGeometry {
    /// Page size the file was laid out for.
    pub page: u64,
    /// Number of slots.
    pub slots: u32,
    /// Bytes of each slot's data area (a multiple of `page`).
    pub data_len: u64,
}

impl SlotGeometry {
    /// Checked: page a power of two from 4 KiB to 64 KiB, 1 to [`MAX_SLOTS`] slots, a
    /// data area a multiple of the page of at least the kernel's minimum read buffer
    /// and at most 64 MiB. `None` otherwise.
    pub fn new(page: u64, slots: u32, data_len: u64) -> Option<SlotGeometry> {
        let ok = page.is_power_of_two()
            && (4096..=65536).contains(&page)
            && (1..=MAX_SLOTS).contains(&slots)
            && (abi::FUSE_MIN_READ_BUFFER as u64..=MAX_DATA).contains(&data_len)
            && data_len % page == 0;
        ok.then_some(SlotGeometry {
            page,
            slots,
            data_len,
        })
    }

    /// Offset of slot `i`'s header page (the data follows one page later).
    fn slot_offset(&self, i: u32) -> u64 {
        // Bounded by the limits in `new`: 64 KiB * (1 + 1024 * (1 + 1024)) fits.
        self.page * (1 + u64::from(i) * (1 + self.data_len / self.page))
    }

    /// The file's total size.
    pub fn file_len(&self) -> u64 {
        self.slot_offset(self.slots)
    }

    fn encode(&self) -> [u8; FILE_HEADER] {
        let mut h = [0u8; FILE_HEADER];
        h[0..8].copy_from_slice(FILE_MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&(self.page as u32).to_le_bytes());
        h[16..20].copy_from_slice(&self.slots.to_le_bytes());
        h[24..32].copy_from_slice(&self.data_len.to_le_bytes());
        let check = fnv64(&h[0..32]);
        h[32..40].copy_from_slice(&check.to_le_bytes());
        h
    }

    /// Reads and checks the file header.
    ///
    /// # Errors
    /// `InvalidData` saying what is wrong; the source's read errors.
    pub fn read(src: &(impl SlotSource + ?Sized)) -> io::Result<SlotGeometry> {
        let mut h = [0u8; FILE_HEADER];
        src.read_exact_at(&mut h, 0)
            .map_err(|e| invalid(format!("request slots: no file header ({e})")))?;
        if &h[0..8] != FILE_MAGIC {
            return Err(invalid("request slots: not a slot file (bad magic)".into()));
        }
        if le_u64(&h, 32) != Some(fnv64(&h[0..32])) {
            return Err(invalid(
                "request slots: the file header's check fails".into(),
            ));
        }
        let version = le_u32(&h, 8).unwrap_or(0);
        if version != VERSION {
            return Err(invalid(format!(
                "request slots: format version {version}, this build reads {VERSION}"
            )));
        }
        let page = u64::from(le_u32(&h, 12).unwrap_or(0));
        let slots = le_u32(&h, 16).unwrap_or(0);
        let data_len = le_u64(&h, 24).unwrap_or(0);
        let geo = SlotGeometry::new(page, slots, data_len).ok_or_else(|| {
            invalid(format!(
                "request slots: impossible geometry ({slots} slots of {data_len} bytes, \
                 page {page})"
            ))
        })?;
        let size = src.size()?;
        if size < geo.file_len() {
            return Err(invalid(format!(
                "request slots: the file has {size} bytes, its header needs {}",
                geo.file_len()
            )));
        }
        Ok(geo)
    }
}

/// A request a slot holds, not answered when the process died.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldRequest {
    /// The slot's index.
    pub slot: u32,
    /// The request's unique, as the kernel sent it (bit 63 set if it was resent).
    pub unique: u64,
    /// The request's opcode (from its header; not checked against known opcodes).
    pub opcode: u32,
    /// The whole request (`fuse_in_header` first), as long as its header says.
    pub bytes: Vec<u8>,
}

/// What [`RequestSlots::scan`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotScan {
    /// Requests held and not answered, in slot order, one per unique.
    pub held: Vec<HeldRequest>,
    /// Slots that hold nothing, or only an answered request.
    pub idle: u32,
    /// Slots whose contents are not valid (index and why): skipped.
    pub damaged: Vec<(u32, String)>,
}

/// Scans the slots of `src` (see the [module docs](self)): every slot holding a
/// request whose unique is not its `answered` one.
///
/// # Errors
/// The file header is missing or invalid, or the source cannot be read. A damaged
/// *slot* is not an error: it is listed in [`SlotScan::damaged`].
pub fn scan_slots(src: &(impl SlotSource + ?Sized)) -> io::Result<SlotScan> {
    let geo = SlotGeometry::read(src)?;
    let mut scan = SlotScan::default();
    let mut budget = MAX_HELD_BYTES;
    for i in 0..geo.slots {
        match read_slot(src, &geo, i, &mut budget) {
            Ok(None) => scan.idle += 1,
            Ok(Some(held)) => {
                if scan.held.iter().any(|h| h.unique == held.unique) {
                    scan.damaged
                        .push((i, format!("unique {:#x} held by two slots", held.unique)));
                } else {
                    scan.held.push(held);
                }
            }
            Err(why) => scan.damaged.push((i, why)),
        }
    }
    Ok(scan)
}

/// One slot: `Ok(None)` idle, `Ok(Some)` held, `Err` damaged (why).
fn read_slot(
    src: &(impl SlotSource + ?Sized),
    geo: &SlotGeometry,
    i: u32,
    budget: &mut usize,
) -> Result<Option<HeldRequest>, String> {
    let at = geo.slot_offset(i);
    let mut h = [0u8; SLOT_HEADER];
    src.read_exact_at(&mut h, at)
        .map_err(|e| format!("slot header unreadable: {e}"))?;
    if &h[0..8] != SLOT_MAGIC
        || le_u32(&h, 8) != Some(i)
        || le_u64(&h, 16) != Some(fnv64(&h[0..16]))
    {
        return Err("bad slot header".into());
    }
    let answered = le_u64(&h, ANSWERED_AT).unwrap_or(0);
    let data_at = at + geo.page;
    let mut ih = [0u8; IN_HEADER];
    src.read_exact_at(&mut ih, data_at)
        .map_err(|e| format!("request header unreadable: {e}"))?;
    // The kernel's header, in the machine's byte order.
    let len = ne_u32(&ih, 0).unwrap_or(0);
    let opcode = ne_u32(&ih, 4).unwrap_or(0);
    let unique = ne_u64(&ih, 8).unwrap_or(0);
    if unique == 0 && len == 0 {
        // Never read into.
        return Ok(None);
    }
    if unique == answered {
        return Ok(None);
    }
    // Bit 63 may be set: a request the kernel resent (after NOTIFY_RESEND) is
    // known to it by that unique.
    if unique == 0 {
        return Err("unique 0 (a notification's, never a request's)".into());
    }
    if (len as usize) < IN_HEADER || u64::from(len) > geo.data_len {
        return Err(format!(
            "request length {len} outside {IN_HEADER}..={}",
            geo.data_len
        ));
    }
    // `len` is checked against the data area, which the file was checked to hold,
    // and against what this scan may still copy.
    *budget = budget.checked_sub(len as usize).ok_or_else(|| {
        format!("request of {len} bytes past the scan's limit of {MAX_HELD_BYTES} bytes")
    })?;
    let mut bytes = vec![0u8; len as usize];
    src.read_exact_at(&mut bytes, data_at)
        .map_err(|e| format!("request unreadable: {e}"))?;
    Ok(Some(HeldRequest {
        slot: i,
        unique,
        opcode,
        bytes,
    }))
}

/// A memfd of request slots: made by a first start (one slot per worker), stored in
/// the fd store, and read after a crash by the next process. See the
/// [module docs](self).
#[derive(Debug)]
pub struct RequestSlots {
    file: File,
    geo: SlotGeometry,
}

impl RequestSlots {
    /// A new memfd named `name` with `slots` slots whose data areas hold requests of
    /// `data_len` bytes (rounded up to the page), sealed against shrinking.
    ///
    /// # Errors
    /// `InvalidInput` for a count or size out of range (1 to [`MAX_SLOTS`]; the
    /// kernel's minimum read buffer to 64 MiB); `memfd_create`, `ftruncate` or write
    /// errors.
    pub fn memfd(name: &str, slots: usize, data_len: usize) -> io::Result<RequestSlots> {
        let page = super::page_size() as u64;
        let rounded = (data_len as u64)
            .checked_next_multiple_of(page)
            .unwrap_or(u64::MAX);
        let geo = u32::try_from(slots)
            .ok()
            .and_then(|n| SlotGeometry::new(page, n, rounded))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "request slots: {slots} slots of {data_len} bytes is out of range \
                         (1 to {MAX_SLOTS} slots, {} bytes to 64 MiB)",
                        abi::FUSE_MIN_READ_BUFFER
                    ),
                )
            })?;
        let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
        let file = File::from(fd);
        file.set_len(geo.file_len())?;
        fcntl(&file, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK))?;
        file.write_all_at(&geo.encode(), 0)?;
        for i in 0..geo.slots {
            file.write_all_at(&slot_header(i), geo.slot_offset(i))?;
        }
        Ok(RequestSlots { file, geo })
    }

    /// A slot file inherited as a descriptor (from the fd store, after a crash): its
    /// header is checked, and it is sealed against shrinking where it allows.
    ///
    /// # Errors
    /// As [`SlotGeometry::read`].
    pub fn from_fd(fd: OwnedFd) -> io::Result<RequestSlots> {
        let _ = fcntl(&fd, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK));
        let file = File::from(fd);
        let geo = SlotGeometry::read(&file)?;
        Ok(RequestSlots { file, geo })
    }

    /// The descriptor (for the fd store).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The geometry.
    pub fn geometry(&self) -> SlotGeometry {
        self.geo
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.geo.slots as usize
    }

    /// Always false (a slot file has at least one slot).
    pub fn is_empty(&self) -> bool {
        self.geo.slots == 0
    }

    /// Whether a worker reading requests of `read_size` bytes fits a slot.
    pub fn fits(&self, read_size: usize) -> bool {
        read_size as u64 <= self.geo.data_len
    }

    /// The requests the slots hold unanswered (see [`scan_slots`]).
    ///
    /// # Errors
    /// As [`scan_slots`].
    pub fn scan(&self) -> io::Result<SlotScan> {
        scan_slots(&self.file)
    }

    /// Records that slot `i`'s request `unique` is answered (after a recovery
    /// answered it, or let it go): one 8-byte write.
    ///
    /// # Errors
    /// `InvalidInput` for a slot out of range; `pwrite` errors.
    pub fn mark_answered(&self, i: u32, unique: u64) -> io::Result<()> {
        if i >= self.geo.slots {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let at = self.geo.slot_offset(i) + ANSWERED_AT as u64;
        self.file.write_all_at(&unique.to_le_bytes(), at)
    }

    /// Maps slot `i` for a worker: its data area to read requests into (resident,
    /// not inherited by `fork`), and its `answered` word.
    ///
    /// # Errors
    /// `InvalidInput` for a slot out of range; `mmap` errors.
    pub fn buffer(&self, i: u32) -> io::Result<(SlotData, SlotMark)> {
        if i >= self.geo.slots {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let at = self.geo.slot_offset(i);
        let len = usize::try_from(self.geo.data_len).map_err(|_| io::ErrorKind::InvalidInput)?;
        let page = usize::try_from(self.geo.page).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: the memfd is this daemon's (made by `memfd`, or inherited from the
        // fd store, which only the daemon writes to) and sealed against shrinking, so
        // no part of the mapping can lose its backing (SIGBUS); both ranges lie
        // within the file, whose size `SlotGeometry::read`/`memfd` checked. Other
        // processes may write the file meanwhile: the data area is only read as
        // plain bytes, and the header word only through an atomic.
        let data = unsafe {
            MmapOptions::new()
                .offset(at + self.geo.page)
                .len(len)
                .populate()
                .map_mut(&self.file)?
        };
        // Advice only, as for `RequestBuffer`.
        let _ = data.advise(Advice::DontFork);
        // SAFETY: as above.
        let header = unsafe {
            MmapOptions::new()
                .offset(at)
                .len(page)
                .populate()
                .map_mut(&self.file)?
        };
        Ok((SlotData { map: data }, SlotMark { header, index: i }))
    }
}

/// A slot's data area, mapped: a worker reads requests into it.
#[derive(Debug)]
pub struct SlotData {
    map: MmapMut,
}

impl SlotData {
    /// The unique in the request header the data area holds (0 if none).
    pub fn held_unique(&self) -> u64 {
        ne_u64(&self.map, 8).unwrap_or(0)
    }
}

impl std::ops::Deref for SlotData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map
    }
}

impl std::ops::DerefMut for SlotData {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.map
    }
}

/// A slot's `answered` word, mapped: the worker marks each request answered.
#[derive(Debug)]
pub struct SlotMark {
    header: MmapMut,
    index: u32,
}

impl SlotMark {
    /// The slot's index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Records `unique` as answered: one aligned 8-byte store (little-endian in the
    /// file), which a `kill -9` cannot tear.
    pub fn mark(&mut self, unique: u64) {
        let word = &mut self.header[ANSWERED_AT..ANSWERED_AT + 8];
        let ptr = word.as_mut_ptr().cast::<u64>();
        debug_assert_eq!(ptr as usize % std::mem::align_of::<AtomicU64>(), 0);
        // SAFETY: the pointer is 8-byte aligned (the mapping is page-aligned, the
        // word at offset 24), points to 8 bytes of the mapping borrowed mutably for
        // this call, and this process accesses them only through this atomic.
        let atomic = unsafe { AtomicU64::from_ptr(ptr) };
        atomic.store(unique.to_le(), Ordering::Release);
    }
}

/// Fuzz logic for the slot format, kept in the library so that the
/// `request_slots` target in `fuzz/` is a one-line wrapper and its corpus replays
/// under plain `cargo test` (`fuse-session/tests/slots_fuzz_corpus.rs`).
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// A valid image of `slots` slots of 8 KiB (page 4 KiB), nothing held.
    pub fn image(slots: u32) -> Vec<u8> {
        let geo = SlotGeometry::new(4096, slots.clamp(1, 8), 8192).unwrap_or(SlotGeometry {
            page: 4096,
            slots: 1,
            data_len: 8192,
        });
        let mut v = vec![0u8; geo.file_len() as usize];
        v[..FILE_HEADER].copy_from_slice(&geo.encode());
        for i in 0..geo.slots {
            let at = geo.slot_offset(i) as usize;
            v[at..at + 24].copy_from_slice(&slot_header(i));
        }
        v
    }

    /// The fuzz target. The first byte selects a mode:
    ///
    /// - `0`: the rest is a whole slot file;
    /// - `1`: byte 1 gives the number of slots (1 to 8) of a valid image; the rest,
    ///   in groups of 3 (`pos u16 LE` scaled to the image, `value`), are bytes
    ///   stored into it (request headers, `answered` words, damage).
    ///
    /// [`scan_slots`] must not panic, and what it reports must hold: every held
    /// request is as long as its header says, within a data area, with a unique
    /// that is not zero and is held by no other slot, and held + idle +
    /// damaged slots add up to the slots the header declares.
    pub fn request_slots(data: &[u8]) {
        let Some(image) = build(data) else {
            return;
        };
        check(&image);
    }

    /// The slot file a fuzz input describes (see [`request_slots`]).
    pub fn build(data: &[u8]) -> Option<Vec<u8>> {
        let (&mode, rest) = data.split_first()?;
        let image = match mode {
            0 => rest.to_vec(),
            1 => {
                let (&n, writes) = rest.split_first()?;
                let mut v = image(1 + u32::from(n % 8));
                let len = v.len();
                for w in writes.chunks_exact(3) {
                    let pos = usize::from(u16::from_le_bytes([w[0], w[1]])) * len / 65536;
                    v[pos] = w[2];
                }
                v
            }
            _ => return None,
        };
        Some(image)
    }

    /// Scans `image` and checks what [`request_slots`] promises.
    fn check(image: &[u8]) {
        let Ok(scan) = scan_slots(image) else {
            return;
        };
        let geo = SlotGeometry::read(image).expect("scan accepted the header");
        let mut seen = std::collections::BTreeSet::new();
        for h in &scan.held {
            assert!(h.slot < geo.slots);
            assert!(h.bytes.len() >= IN_HEADER && h.bytes.len() as u64 <= geo.data_len);
            assert_eq!(ne_u32(&h.bytes, 0), Some(h.bytes.len() as u32));
            assert_eq!(ne_u64(&h.bytes, 8), Some(h.unique));
            assert!(h.unique != 0);
            assert!(seen.insert(h.unique), "a unique held twice");
        }
        assert_eq!(
            scan.held.len() + scan.idle as usize + scan.damaged.len(),
            geo.slots as usize
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A slot file image with `slots` slots of 8 KiB (page 4 KiB).
    fn image(slots: u32) -> (SlotGeometry, Vec<u8>) {
        let geo = SlotGeometry::new(4096, slots, 8192).unwrap();
        let mut v = vec![0u8; geo.file_len() as usize];
        v[..FILE_HEADER].copy_from_slice(&geo.encode());
        for i in 0..slots {
            let at = geo.slot_offset(i) as usize;
            v[at..at + 24].copy_from_slice(&slot_header(i));
        }
        (geo, v)
    }

    fn put_request(v: &mut [u8], geo: &SlotGeometry, i: u32, unique: u64, len: u32) {
        let at = (geo.slot_offset(i) + geo.page) as usize;
        v[at..at + 4].copy_from_slice(&len.to_ne_bytes());
        v[at + 4..at + 8].copy_from_slice(&1u32.to_ne_bytes());
        v[at + 8..at + 16].copy_from_slice(&unique.to_ne_bytes());
    }

    fn put_answered(v: &mut [u8], geo: &SlotGeometry, i: u32, unique: u64) {
        let at = geo.slot_offset(i) as usize + ANSWERED_AT;
        v[at..at + 8].copy_from_slice(&unique.to_le_bytes());
    }

    #[test]
    fn held_idle_answered_damaged() {
        let (geo, mut v) = image(4);
        put_request(&mut v, &geo, 0, 10, 48); // held
        put_request(&mut v, &geo, 1, 12, 48);
        put_answered(&mut v, &geo, 1, 12); // answered
                                           // slot 2: never used
        put_request(&mut v, &geo, 3, 14, 9000); // longer than the data area
        let s = scan_slots(&v[..]).unwrap();
        assert_eq!(s.held.len(), 1);
        assert_eq!((s.held[0].slot, s.held[0].unique), (0, 10));
        assert_eq!(s.held[0].bytes.len(), 48);
        assert_eq!(s.idle, 2);
        assert_eq!(s.damaged.len(), 1);
        assert_eq!(s.damaged[0].0, 3);
    }

    #[test]
    fn duplicates_are_damage_and_the_resend_bit_is_kept() {
        let (geo, mut v) = image(3);
        put_request(&mut v, &geo, 0, 10, 40);
        put_request(&mut v, &geo, 1, 10, 40);
        put_request(&mut v, &geo, 2, 10 | abi::FUSE_UNIQUE_RESEND, 40);
        let s = scan_slots(&v[..]).unwrap();
        assert_eq!(s.held.len(), 2);
        assert_eq!(s.held[1].unique, 10 | abi::FUSE_UNIQUE_RESEND);
        assert_eq!(s.damaged.len(), 1);
    }

    #[test]
    fn bad_headers_are_errors() {
        let (_, v) = image(2);
        assert!(scan_slots(&v[..10]).is_err());
        let mut w = v.clone();
        w[0] ^= 1;
        assert!(scan_slots(&w[..]).is_err());
        let mut w = v.clone();
        w[16] = 200; // slots changed: the check fails
        assert!(scan_slots(&w[..]).is_err());
        // Truncated after the header: the file is shorter than its geometry.
        assert!(scan_slots(&v[..4096]).is_err());
        let mut w = v.clone();
        w[4096] ^= 1; // slot 0's magic
        let s = scan_slots(&w[..]).unwrap();
        assert_eq!(s.damaged.len(), 1);
    }

    #[test]
    fn a_scan_copies_at_most_its_budget() {
        // 260 slots of 1 MiB, each holding a full-length request: 256 fit.
        let data = 1 << 20;
        let geo = SlotGeometry::new(4096, 260, data).unwrap();
        let mut v = vec![0u8; geo.file_len() as usize];
        v[..FILE_HEADER].copy_from_slice(&geo.encode());
        for i in 0..geo.slots {
            let at = geo.slot_offset(i) as usize;
            v[at..at + 24].copy_from_slice(&slot_header(i));
            put_request(&mut v, &geo, i, 2 + 2 * u64::from(i), data as u32);
        }
        let s = scan_slots(&v[..]).unwrap();
        assert_eq!(s.held.len(), MAX_HELD_BYTES / data as usize);
        assert_eq!(s.damaged.len(), 260 - s.held.len());
    }

    #[test]
    fn geometry_limits() {
        assert!(SlotGeometry::new(4096, 0, 8192).is_none());
        assert!(SlotGeometry::new(4096, MAX_SLOTS + 1, 8192).is_none());
        assert!(SlotGeometry::new(4096, 1, 4096).is_none());
        assert!(SlotGeometry::new(4096, 1, 8193).is_none());
        assert!(SlotGeometry::new(3000, 1, 9000).is_none());
        assert!(SlotGeometry::new(4096, 1, MAX_DATA + 4096).is_none());
        let g = SlotGeometry::new(65536, MAX_SLOTS, MAX_DATA).unwrap();
        assert!(g.file_len() > 0);
    }

    #[test]
    fn memfd_round_trip() {
        let slots = RequestSlots::memfd("slots-test", 2, 10000).unwrap();
        assert_eq!(slots.len(), 2);
        assert!(slots.fits(10000));
        let (mut data, mut mark) = slots.buffer(1).unwrap();
        assert_eq!(mark.index(), 1);
        {
            data[..4].copy_from_slice(&64u32.to_ne_bytes());
            data[4..8].copy_from_slice(&1u32.to_ne_bytes());
            data[8..16].copy_from_slice(&0x22u64.to_ne_bytes());
        }
        assert_eq!(data.held_unique(), 0x22);
        let s = slots.scan().unwrap();
        assert_eq!(s.held.len(), 1);
        assert_eq!((s.held[0].slot, s.held[0].unique), (1, 0x22));
        mark.mark(0x22);
        assert!(slots.scan().unwrap().held.is_empty());
        // A descriptor of it reads the same (what a recovering process gets).
        let dup = slots.fd().try_clone_to_owned().unwrap();
        let again = RequestSlots::from_fd(dup).unwrap();
        assert_eq!(again.geometry(), slots.geometry());
        data[8..16].copy_from_slice(&0x24u64.to_ne_bytes());
        let s = again.scan().unwrap();
        assert_eq!(s.held[0].unique, 0x24);
        again.mark_answered(1, 0x24).unwrap();
        assert!(slots.scan().unwrap().held.is_empty());
        assert!(again.mark_answered(2, 1).is_err());
        assert!(RequestSlots::memfd("x", 0, 10000).is_err());
    }

    proptest! {
        /// Hostile bytes anywhere: scanning never panics, and what it reports held
        /// has a length its header allows.
        #[test]
        fn hostile_bytes(flips in proptest::collection::vec((0usize..3 * 12288, any::<u8>()), 0..64),
                         cut in 0usize..3 * 12288 + 4096) {
            let (geo, mut v) = image(3);
            put_request(&mut v, &geo, 0, 10, 100);
            put_request(&mut v, &geo, 2, 30, 8192);
            for (at, b) in flips {
                if let Some(x) = v.get_mut(at) { *x = b; }
            }
            v.truncate(cut.min(v.len()));
            if let Ok(s) = scan_slots(&v[..]) {
                for h in &s.held {
                    prop_assert!(h.bytes.len() >= IN_HEADER);
                    prop_assert!(h.bytes.len() as u64 <= geo.data_len);
                    prop_assert!(h.unique != 0);
                }
            }
        }

        /// Arbitrary bytes as a whole file: no panic.
        #[test]
        fn arbitrary_files(v in proptest::collection::vec(any::<u8>(), 0..9000)) {
            let _ = scan_slots(&v[..]);
        }
    }
}
