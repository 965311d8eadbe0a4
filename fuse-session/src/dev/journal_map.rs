//! [`JournalMap`]: the shared memory mapping a crash-recovery journal lives in.
//!
//! A file (a memfd by default, or a path) mapped `MAP_SHARED` over a reserved range
//! of address space as large as the journal may ever grow. Growing is `ftruncate`
//! alone: the mapping already covers the range, so no remap ever moves it, and
//! writers on many threads can store into disjoint ranges without a lock.
//!
//! Every access goes through atomic loads and stores (`AtomicU64` for aligned words,
//! `AtomicU8` at the edges), so concurrent access from threads — and from whatever
//! other process maps the same file — is never a data race in Rust's sense. Accesses
//! are bounds-checked against the file's current length, so no access touches the
//! part of the reservation past the end of the file (which would raise `SIGBUS`).
//!
//! # Durability
//! A memfd's pages, and a `MAP_SHARED` file mapping's, belong to the page cache, not
//! to the process: whatever was stored before the process died (even by `kill -9`)
//! is in the file for the next process that opens it. Nothing here calls
//! `msync`/`fsync`: the journal protects against the process dying, not the machine.
//!
//! # Unsafe
//! The one `unsafe` operation is turning an address inside the mapping into a
//! reference to an atomic (see the `SAFETY` comment in `atomic_at`).
//!
//! # References
//! `memfd_create(2)`, `fcntl(2)` (file seals), `mmap(2)` (`MAP_SHARED`, `SIGBUS`
//! past the end of the file), `ftruncate(2)`.
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{fence, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

use memmap2::{MmapOptions, MmapRaw};
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};

/// [`JournalMap::read`]s of this many bytes or more use `pread(2)`.
const PREAD_FROM: usize = 16 << 10;

/// [`JournalMap::write`]s of this many bytes or more use `pwrite(2)`.
pub const PWRITE_FROM: usize = 16 << 10;

/// A journal file (a memfd, or a path) mapped shared, readable and writable,
/// growable up to a fixed maximum.
///
/// The mapping covers the whole maximum from the start, past the end of the file;
/// growing is `ftruncate` alone, so the mapping never moves and writers on many
/// threads store into disjoint ranges without a lock. Every access is an atomic
/// load or store (so concurrent threads, and other processes mapping the file, are
/// never a data race; reads of 16 KiB or more are `pread(2)`s) and is checked
/// against the file's length (so nothing touches the unbacked part of the mapping,
/// which would raise `SIGBUS`).
///
/// Nothing is flushed: a memfd's pages, and a `MAP_SHARED` file's, belong to the
/// page cache, so what was stored survives the process being killed (not the
/// machine losing power).
#[derive(Debug)]
pub struct JournalMap {
    file: File,
    map: MmapRaw,
    /// The file's length: every access is checked against it.
    len: AtomicU64,
    /// The reservation: the file never grows past it.
    max_len: u64,
    /// Serialises `grow` (so `len` never goes backwards).
    grow_lock: Mutex<()>,
}

impl JournalMap {
    /// A new, empty memfd named `name` (shown in `/proc/PID/fd`), `MFD_CLOEXEC`,
    /// sealed against shrinking, with room to grow to `max_len` bytes. Its
    /// descriptor ([`JournalMap::fd`]) is what goes to the fd store.
    ///
    /// # Errors
    /// `memfd_create`, `fcntl` or `mmap` failing; `InvalidInput` for a zero
    /// `max_len` or one the address space cannot hold.
    pub fn memfd(name: &str, max_len: u64) -> io::Result<JournalMap> {
        let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
        fcntl(&fd, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK))?;
        Self::map(File::from(fd), max_len)
    }

    /// A journal at `path`, created empty if it does not exist, with room to grow to
    /// `max_len` bytes (a file longer than that is refused). Another process that
    /// truncates the file while it is mapped makes this one's accesses fault
    /// (`SIGBUS`): keep the file private to the daemon.
    ///
    /// # Errors
    /// Opening or mapping failing; `InvalidInput` as for [`JournalMap::memfd`].
    pub fn open_path(path: &Path, max_len: u64) -> io::Result<JournalMap> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Self::map(file, max_len)
    }

    /// Maps a journal file inherited as a descriptor (from the fd store, after a
    /// crash). A memfd that allows it is sealed against shrinking.
    ///
    /// # Errors
    /// As [`JournalMap::open_path`].
    pub fn from_fd(fd: OwnedFd, max_len: u64) -> io::Result<JournalMap> {
        // Best effort: a memfd made by `memfd` has the seal already, a file cannot
        // take seals (EINVAL) or forbids them (EPERM). Either is fine.
        let _ = fcntl(&fd, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK));
        Self::map(File::from(fd), max_len)
    }

    fn map(file: File, max_len: u64) -> io::Result<JournalMap> {
        let len = file.metadata()?.len();
        if max_len == 0 || len > max_len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "journal file is {len} bytes, its maximum size is {max_len}: raise the maximum"
                ),
            ));
        }
        let reserve = usize::try_from(max_len).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "journal maximum size exceeds the address space",
            )
        })?;
        // The mapping covers the whole reservation, past the end of the file: mmap(2)
        // allows it, and only touching those pages faults, which the bounds checks
        // against `len` prevent. memmap2 does not check an explicit length against
        // the file's.
        let map = MmapOptions::new().len(reserve).map_raw(&file)?;
        Ok(JournalMap {
            file,
            map,
            len: AtomicU64::new(len),
            max_len,
            grow_lock: Mutex::new(()),
        })
    }

    /// The file descriptor (to hand to the fd store, or to `dup`).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The first offset at or after `off` that holds data (`u64::MAX` if none):
    /// `lseek(SEEK_DATA)`. A memfd, and most file systems, keep never-touched
    /// ranges as holes, which read as zeros. (A memfd allocates a page for a read
    /// through the mapping too: a reader that skips holes keeps them holes.)
    ///
    /// # Errors
    /// The error of `lseek(2)` other than `ENXIO` (no data after `off`).
    pub fn next_data(&self, off: u64) -> io::Result<u64> {
        let Ok(pos) = i64::try_from(off) else {
            return Ok(u64::MAX);
        };
        match nix::unistd::lseek(self.file.as_fd(), pos, nix::unistd::Whence::SeekData) {
            Ok(at) => Ok(u64::try_from(at).unwrap_or(off)),
            Err(nix::errno::Errno::ENXIO) => Ok(u64::MAX),
            Err(e) => Err(e.into()),
        }
    }

    /// The file's current length in bytes.
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most the file may grow to.
    pub fn max_len(&self) -> u64 {
        self.max_len
    }

    /// Grows the file to at least `new_len` bytes (`ftruncate`; new bytes read as
    /// zero). Never shrinks.
    ///
    /// # Errors
    /// An error past [`JournalMap::max_len`]; `ftruncate` failing (e.g.
    /// ENOSPC on tmpfs).
    pub fn grow(&self, new_len: u64) -> io::Result<()> {
        if new_len > self.max_len {
            return Err(io::Error::other(format!(
                "journal would grow to {new_len} bytes, past its maximum of {}",
                self.max_len
            )));
        }
        let _g = self.grow_lock.lock().unwrap_or_else(|e| e.into_inner());
        if new_len <= self.len() {
            return Ok(());
        }
        self.file.set_len(new_len)?;
        self.len.store(new_len, Ordering::Release);
        Ok(())
    }

    /// Checks that `[off, off + n)` lies inside the file.
    fn check(&self, off: u64, n: usize) -> io::Result<usize> {
        let end = off.checked_add(n as u64);
        match end {
            Some(end) if end <= self.len() => Ok(off as usize),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "journal access at {off}+{n} is past the end of the file ({} bytes)",
                    self.len()
                ),
            )),
        }
    }

    /// The atomic of type `T` at byte `pos` of the mapping.
    fn atomic_at<T>(&self, pos: usize) -> &T {
        debug_assert!(pos + std::mem::size_of::<T>() <= self.len() as usize);
        debug_assert_eq!(pos % std::mem::align_of::<T>(), 0);
        // SAFETY: every caller checked (`check`) that `pos..pos + size_of::<T>()` lies
        // inside the file, which lies inside the mapping (`len <= max_len`, the
        // mapping's length), so the address is valid, readable and writable memory
        // for as long as `self.map` lives, which outlives the returned reference
        // (it borrows `self`); the file never shrinks while mapped by us (we never
        // shrink it, and a memfd is sealed against it). The mapping is page
        // aligned and callers pass `pos` aligned for `T` (words at multiples of 8),
        // so the reference is aligned. `T` is `AtomicU8` or `AtomicU64`: every bit
        // pattern is valid, and all access to the memory goes through atomics
        // (shared references to atomics may alias freely), so other threads and
        // processes touching it are not data races.
        unsafe { &*(self.map.as_mut_ptr().add(pos) as *const T) }
    }

    /// Copies `data` into the file at `off`, with relaxed atomic stores; writes of
    /// 16 KiB (`PWRITE_FROM`) or more with `pwrite(2)`.
    ///
    /// Why `pwrite` for large writes: stored through the mapping, every fresh page
    /// of a memfd is a page fault that allocates the page and clears it, and then
    /// the stores fill it (a word at a time); `pwrite` allocates the page cache's
    /// pages without clearing those it fills whole and copies with the kernel's
    /// `memcpy`. A journaled memfs spent about half of a 1 MiB write's time in
    /// those faults. The bytes land in the same pages the mapping shows, before
    /// `pwrite` returns, so a [`JournalMap::commit`] after it is ordered after them
    /// as after this thread's stores.
    ///
    /// # Errors
    /// `UnexpectedEof` if the range is not inside the file; `pwrite` errors.
    pub fn write(&self, off: u64, data: &[u8]) -> io::Result<()> {
        let mut pos = self.check(off, data.len())?;
        if data.len() >= PWRITE_FROM {
            fence(Ordering::Release);
            return std::os::unix::fs::FileExt::write_all_at(&self.file, data, off);
        }
        let mut rest = data;
        while pos % 8 != 0 && !rest.is_empty() {
            self.atomic_at::<AtomicU8>(pos)
                .store(rest[0], Ordering::Relaxed);
            pos += 1;
            rest = &rest[1..];
        }
        let mut words = rest.chunks_exact(8);
        for w in &mut words {
            let v = u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            self.atomic_at::<AtomicU64>(pos).store(v, Ordering::Relaxed);
            pos += 8;
        }
        for &b in words.remainder() {
            self.atomic_at::<AtomicU8>(pos).store(b, Ordering::Relaxed);
            pos += 1;
        }
        Ok(())
    }

    /// Allocates the file's pages in `[off, off + len)` (clipped to the file) now,
    /// mapped writable (`madvise(MADV_POPULATE_WRITE)`), so that stores there later
    /// take no page fault: a journal calls it for the pages ahead of its log's end,
    /// a window at a time, instead of a fault per 4 KiB of small records. Best
    /// effort: a kernel without it (before 5.14) or a failure leaves the pages to
    /// be faulted in as before.
    pub fn prefault(&self, off: u64, len: u64) {
        let end = off.saturating_add(len).min(self.len());
        if off >= end {
            return;
        }
        let (Ok(start), Ok(n)) = (usize::try_from(off), usize::try_from(end - off)) else {
            return;
        };
        let _ = self
            .map
            .advise_range(memmap2::Advice::PopulateWrite, start, n);
    }

    /// Stores the 8-byte word `word` (native byte order) at `off`, a multiple of 8,
    /// after everything this thread stored before: the commit word of a record or
    /// a header, written last so that a reader after a crash sees it only if what
    /// it covers is complete.
    ///
    /// # Errors
    /// `InvalidInput` for an unaligned `off`; `UnexpectedEof` outside the file.
    pub fn commit(&self, off: u64, word: [u8; 8]) -> io::Result<()> {
        if off % 8 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "journal commit word not at a multiple of 8",
            ));
        }
        let pos = self.check(off, 8)?;
        fence(Ordering::Release);
        self.atomic_at::<AtomicU64>(pos)
            .store(u64::from_ne_bytes(word), Ordering::Release);
        Ok(())
    }

    /// Copies the file's bytes at `off` into `buf`.
    ///
    /// Reads of 16 KiB or more go through `pread(2)`: the kernel
    /// copies from the page cache, and no page of this mapping is faulted in. A
    /// process recovering a journal maps it afresh, so reading a 10 MB checkpoint
    /// through the mapping cost a page fault per 4 KiB (about half of the read's
    /// time). What such a read copies is committed (records are checked by their
    /// CRCs, and those that matter were ordered before by the journal's lock or a
    /// process's death), as with the word loads of the mapping.
    ///
    /// # Errors
    /// `UnexpectedEof` if the range is not inside the file; `pread` errors.
    pub fn read(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut pos = self.check(off, buf.len())?;
        fence(Ordering::Acquire);
        if buf.len() >= PREAD_FROM {
            return std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, off);
        }
        let mut rest: &mut [u8] = buf;
        while pos % 8 != 0 && !rest.is_empty() {
            rest[0] = self.atomic_at::<AtomicU8>(pos).load(Ordering::Relaxed);
            pos += 1;
            rest = &mut rest[1..];
        }
        let mut words = rest.chunks_exact_mut(8);
        for w in &mut words {
            let v = self.atomic_at::<AtomicU64>(pos).load(Ordering::Acquire);
            w.copy_from_slice(&v.to_ne_bytes());
            pos += 8;
        }
        for b in words.into_remainder() {
            *b = self.atomic_at::<AtomicU8>(pos).load(Ordering::Relaxed);
            pos += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memfd_grows_reads_back_and_refuses_out_of_bounds() {
        let m = JournalMap::memfd("journal-test", 1 << 20).unwrap();
        assert_eq!(m.len(), 0);
        assert!(m.write(0, b"x").is_err());
        m.grow(4096).unwrap();
        m.write(3, b"hello, journal!").unwrap();
        m.commit(24, *b"COMMITED").unwrap();
        let mut buf = [0u8; 29];
        m.read(3, &mut buf).unwrap();
        assert_eq!(&buf[..15], b"hello, journal!");
        assert_eq!(&buf[21..], b"COMMITED");
        assert!(m.read(4090, &mut [0u8; 7]).is_err());
        assert!(m.read(u64::MAX - 2, &mut [0u8; 7]).is_err());
        assert!(m.commit(4, [0; 8]).is_err());
        assert!(m.grow((1 << 20) + 1).is_err());
        // Shrinking is sealed off.
        assert!(nix::unistd::ftruncate(m.fd(), 0).is_err());
    }

    #[test]
    fn large_reads_see_what_the_mapping_stored() {
        let m = JournalMap::memfd("journal-test", 1 << 20).unwrap();
        m.grow(256 << 10).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        m.write(1001, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        m.read(1001, &mut back).unwrap();
        assert_eq!(back, data, "a pread sees the mapping's stores");
        // A large write is a pwrite: the mapping's loads see it.
        let big: Vec<u8> = (0..PWRITE_FROM as u32 + 5)
            .map(|i| (i % 241) as u8)
            .collect();
        m.write(130_003, &big).unwrap();
        for (at, n) in [
            (130_003u64, 13usize),
            (130_010, 4096),
            (130_003 + 16_000, 389),
        ] {
            let mut small = vec![0u8; n];
            m.read(at, &mut small).unwrap();
            let i = (at - 130_003) as usize;
            assert_eq!(small, big[i..i + n], "mapping loads at {at}");
        }
        assert!(m
            .write((256 << 10) - PWRITE_FROM as u64 + 1, &big[..PWRITE_FROM])
            .is_err());
        // Prefaulting is harmless to what is there, and clipped to the file.
        m.prefault(0, 1 << 30);
        let mut again = vec![0u8; big.len()];
        m.read(130_003, &mut again).unwrap();
        assert_eq!(again, big);
        let mut past = vec![0u8; PREAD_FROM];
        assert!(m
            .read((256 << 10) - PREAD_FROM as u64 + 1, &mut past)
            .is_err());
    }

    #[test]
    fn next_data_skips_the_holes_of_a_memfd() {
        let m = JournalMap::memfd("journal-test", 4 << 20).unwrap();
        m.grow(4 << 20).unwrap();
        assert_eq!(m.next_data(0).unwrap(), u64::MAX, "never written: a hole");
        m.write((1 << 20) + 100, b"data").unwrap();
        assert_eq!(m.next_data(0).unwrap(), 1 << 20, "the written page");
        assert_eq!(m.next_data((1 << 20) + 200).unwrap(), (1 << 20) + 200);
        assert_eq!(m.next_data(2 << 20).unwrap(), u64::MAX, "nothing after it");
        assert_eq!(m.next_data(u64::MAX).unwrap(), u64::MAX);
    }

    #[test]
    fn another_mapping_of_the_same_fd_sees_the_bytes() {
        let m = JournalMap::memfd("journal-test", 1 << 20).unwrap();
        m.grow(8192).unwrap();
        m.write(5000, b"survives").unwrap();
        let fd = m.fd().try_clone_to_owned().unwrap();
        drop(m);
        let again = JournalMap::from_fd(fd, 1 << 20).unwrap();
        assert_eq!(again.len(), 8192);
        let mut buf = [0u8; 8];
        again.read(5000, &mut buf).unwrap();
        assert_eq!(&buf, b"survives");
    }
}
