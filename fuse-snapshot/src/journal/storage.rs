//! [`Storage`]: the bytes a journal lives in — the shared mapping
//! ([`JournalMap`], a memfd or a file) in a daemon, memory ([`MemStorage`]) in tests,
//! tools and the fuzzer.
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use fuse_session::dev::JournalMap;

/// A growable byte array a journal is written to, shared by many threads.
///
/// Writers store into disjoint ranges concurrently; [`Storage::commit`] stores an
/// aligned 8-byte word *after* every store the calling thread made before it (the
/// journal's commit words). Nothing has to be flushed: the journal protects
/// against the process dying, and what was stored is then still in the file.
pub trait Storage: Send + Sync {
    /// Current length in bytes.
    fn len(&self) -> u64;
    /// Whether the length is zero.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The most it may grow to.
    fn max_len(&self) -> u64;
    /// Grows to at least `new_len` bytes (new bytes read as zero); never shrinks.
    ///
    /// # Errors
    /// Past [`Storage::max_len`], or the system refusing.
    fn grow(&self, new_len: u64) -> io::Result<()>;
    /// Stores `data` at `off`.
    ///
    /// # Errors
    /// Outside the current length.
    fn write(&self, off: u64, data: &[u8]) -> io::Result<()>;
    /// Stores the word at `off` (a multiple of 8), ordered after this thread's
    /// earlier stores.
    ///
    /// # Errors
    /// Outside the current length, or unaligned.
    fn commit(&self, off: u64, word: [u8; 8]) -> io::Result<()>;
    /// Loads `buf.len()` bytes at `off`.
    ///
    /// # Errors
    /// Outside the current length.
    fn read(&self, off: u64, buf: &mut [u8]) -> io::Result<()>;
    /// The first offset at or after `off` that may hold data (`u64::MAX` if none):
    /// bytes before it are zero. The default says "here" (nothing is skipped);
    /// a sparse file answers from its holes (`SEEK_DATA`), so that recovery does not
    /// read megabytes of zeros past the end of a log.
    ///
    /// # Errors
    /// The storage's error (a failed `lseek`).
    fn next_data(&self, off: u64) -> io::Result<u64> {
        Ok(off)
    }
    /// Makes the bytes `[off, off + len)` (clipped to the length) cheap to store
    /// to soon: a mapping allocates their pages now instead of at a page fault per
    /// page on the appender's path. Best effort; the default does nothing.
    fn prefault(&self, off: u64, len: u64) {
        let _ = (off, len);
    }
}

impl Storage for JournalMap {
    fn next_data(&self, off: u64) -> io::Result<u64> {
        JournalMap::next_data(self, off)
    }
    fn prefault(&self, off: u64, len: u64) {
        JournalMap::prefault(self, off, len)
    }
    fn len(&self) -> u64 {
        JournalMap::len(self)
    }
    fn max_len(&self) -> u64 {
        JournalMap::max_len(self)
    }
    fn grow(&self, new_len: u64) -> io::Result<()> {
        JournalMap::grow(self, new_len)
    }
    fn write(&self, off: u64, data: &[u8]) -> io::Result<()> {
        JournalMap::write(self, off, data)
    }
    fn commit(&self, off: u64, word: [u8; 8]) -> io::Result<()> {
        JournalMap::commit(self, off, word)
    }
    fn read(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        JournalMap::read(self, off, buf)
    }
}

impl<T: Storage + ?Sized> Storage for Arc<T> {
    fn next_data(&self, off: u64) -> io::Result<u64> {
        (**self).next_data(off)
    }
    fn prefault(&self, off: u64, len: u64) {
        (**self).prefault(off, len)
    }
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn max_len(&self) -> u64 {
        (**self).max_len()
    }
    fn grow(&self, new_len: u64) -> io::Result<()> {
        (**self).grow(new_len)
    }
    fn write(&self, off: u64, data: &[u8]) -> io::Result<()> {
        (**self).write(off, data)
    }
    fn commit(&self, off: u64, word: [u8; 8]) -> io::Result<()> {
        (**self).commit(off, word)
    }
    fn read(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read(off, buf)
    }
}

/// A journal in memory: for tests, tools (a journal file read into memory) and
/// the fuzzer. Clones share the bytes.
///
/// It can simulate the process dying at any byte ([`MemStorage::crash_after`]): the
/// fault-injection hook the crash tests use.
#[derive(Clone, Debug)]
pub struct MemStorage {
    inner: Arc<Mutex<Mem>>,
}

#[derive(Debug)]
struct Mem {
    bytes: Vec<u8>,
    max_len: u64,
    /// Bytes that may still be stored before the simulated crash.
    budget: Option<u64>,
}

fn crashed() -> io::Error {
    io::Error::other("simulated crash: the process died here")
}

fn out_of_range(off: u64, n: usize, len: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("access at {off}+{n} is past the end ({len} bytes)"),
    )
}

impl MemStorage {
    /// Empty, growing up to `max_len` bytes.
    pub fn new(max_len: u64) -> MemStorage {
        Self::from_bytes(Vec::new(), max_len)
    }

    /// Holding `bytes` (e.g. a journal file read whole), growing up to `max_len`
    /// (at least their length).
    pub fn from_bytes(bytes: Vec<u8>, max_len: u64) -> MemStorage {
        let max_len = max_len.max(bytes.len() as u64);
        MemStorage {
            inner: Arc::new(Mutex::new(Mem {
                bytes,
                max_len,
                budget: None,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Mem> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the bytes, as a process opening the file after a crash would
    /// find them.
    pub fn bytes(&self) -> Vec<u8> {
        self.lock().bytes.clone()
    }

    /// Fault injection: after `bytes` more bytes are stored, the process "dies":
    /// the store in progress is applied only in part (a prefix of a write; a
    /// commit word all or nothing, as the CPU stores it), and every later store
    /// and growth fails, so the journal's caller sees an error and the bytes stay
    /// as a crash at that instant would leave them.
    pub fn crash_after(&self, bytes: u64) {
        self.lock().budget = Some(bytes);
    }

    /// Whether the crash point was reached (every byte allowed was stored).
    pub fn has_crashed(&self) -> bool {
        self.lock().budget == Some(0)
    }
}

impl Storage for MemStorage {
    fn len(&self) -> u64 {
        self.lock().bytes.len() as u64
    }

    fn max_len(&self) -> u64 {
        self.lock().max_len
    }

    fn grow(&self, new_len: u64) -> io::Result<()> {
        let mut m = self.lock();
        if m.budget == Some(0) {
            return Err(crashed());
        }
        if new_len > m.max_len {
            return Err(io::Error::other(format!(
                "would grow to {new_len} bytes, past the maximum of {}",
                m.max_len
            )));
        }
        let new_len = usize::try_from(new_len).map_err(|_| io::Error::other("too large"))?;
        if new_len > m.bytes.len() {
            m.bytes.resize(new_len, 0);
        }
        Ok(())
    }

    fn write(&self, off: u64, data: &[u8]) -> io::Result<()> {
        let mut m = self.lock();
        let len = m.bytes.len();
        let start = usize::try_from(off)
            .ok()
            .filter(|&s| s.checked_add(data.len()).is_some_and(|e| e <= len))
            .ok_or_else(|| out_of_range(off, data.len(), len))?;
        let n = match m.budget {
            Some(b) => (b.min(data.len() as u64)) as usize,
            None => data.len(),
        };
        m.bytes[start..start + n].copy_from_slice(&data[..n]);
        if let Some(b) = m.budget.as_mut() {
            *b -= n as u64;
            if n < data.len() {
                return Err(crashed());
            }
        }
        Ok(())
    }

    fn commit(&self, off: u64, word: [u8; 8]) -> io::Result<()> {
        if off % 8 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "commit word not at a multiple of 8",
            ));
        }
        let mut m = self.lock();
        if let Some(b) = m.budget.as_mut() {
            if *b < 8 {
                *b = 0;
                return Err(crashed());
            }
        }
        drop(m);
        self.write(off, &word)
    }

    fn read(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let m = self.lock();
        let len = m.bytes.len();
        let start = usize::try_from(off)
            .ok()
            .filter(|&s| s.checked_add(buf.len()).is_some_and(|e| e <= len))
            .ok_or_else(|| out_of_range(off, buf.len(), len))?;
        buf.copy_from_slice(&m.bytes[start..start + buf.len()]);
        Ok(())
    }
}
