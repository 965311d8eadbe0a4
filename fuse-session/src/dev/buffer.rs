//! Page-aligned buffers for reading requests from `/dev/fuse`.
use fuse_wire::abi;
use memmap2::{Advice, MmapMut, MmapOptions};
use std::io;
use std::ops::{Deref, DerefMut};

/// Room reserved for the request header and the fixed-size part of any request body
/// (the largest, `fuse_in_header` + `fuse_write_in`, is 80 bytes; a page is a safe
/// round-up that also covers extension headers and file names of other requests).
pub const REQUEST_HEADER_ROOM: usize = 4096;

/// Upper bound on a request buffer: the kernel's `max_pages` is a `u16` and `max_write`
/// is clamped by it in practice; 64 MiB leaves room and refuses absurd sizes.
const MAX_BUFFER: usize = 64 << 20;

/// A page-aligned, zero-initialised buffer to read requests into.
///
/// Page alignment lets WRITE payloads (which start at a fixed offset after the header)
/// be handed on without copying to APIs that want aligned memory (`O_DIRECT`, splice).
/// The memory is an anonymous private mapping, so it is page-aligned by construction.
/// It is populated when made (every page resident) and not inherited by `fork`, so
/// the kernel never has to fault a page in while copying a request into it: a daemon
/// killed mid-copy would otherwise make the kernel fail that request with `EIO`
/// (`fuse_dev_do_read`: a failed copy ends the request) instead of keeping it for a
/// restarted daemon to get through `NOTIFY_RESEND`.
///
/// # Kernel behaviour
/// A read needs a buffer of at least header + `max(max_write, max_pages * page size)`
/// bytes for the negotiated values, and never less than
/// [`abi::FUSE_MIN_READ_BUFFER`]; a request that does not fit is failed with `EIO`
/// and silently skipped by the kernel. A restored daemon must size from the
/// negotiated values it saved, since INIT is never sent again.
///
/// # References
/// - Linux `fs/fuse/dev.c` (`fuse_dev_do_read`: the `nbytes < reqsize` case),
///   `fs/fuse/inode.c` (`process_init_reply`: max_write, max_pages)
#[derive(Debug)]
pub struct RequestBuffer {
    map: MmapMut,
}

impl RequestBuffer {
    /// The buffer size a connection needs:
    /// [`REQUEST_HEADER_ROOM`] + `max(max_write, max_pages * page_size)`, at least
    /// [`abi::FUSE_MIN_READ_BUFFER`].
    ///
    /// `max_pages` is the negotiated value (0 if `FUSE_MAX_PAGES` was not agreed, then
    /// only `max_write` counts). Returns `None` if the size overflows or exceeds 64 MiB.
    pub fn required_size(max_write: u32, max_pages: u16, page_size: usize) -> Option<usize> {
        let pages = usize::from(max_pages).checked_mul(page_size)?;
        let payload = usize::try_from(max_write).ok()?.max(pages);
        let size = REQUEST_HEADER_ROOM
            .checked_add(payload)?
            .max(abi::FUSE_MIN_READ_BUFFER);
        (size <= MAX_BUFFER).then_some(size)
    }

    /// A buffer of exactly `len` bytes (at least [`abi::FUSE_MIN_READ_BUFFER`]).
    ///
    /// # Errors
    /// `InvalidInput` if `len` is below the kernel's minimum or above 64 MiB; the error
    /// of `mmap(2)` (`ENOMEM`).
    pub fn with_len(len: usize) -> io::Result<RequestBuffer> {
        if !(abi::FUSE_MIN_READ_BUFFER..=MAX_BUFFER).contains(&len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a request buffer must have {} to {} bytes, not {}",
                    abi::FUSE_MIN_READ_BUFFER,
                    MAX_BUFFER,
                    len
                ),
            ));
        }
        // Resident from the start (MAP_POPULATE), and not shared copy-on-write with a
        // forked child (MADV_DONTFORK): the kernel copies a request into this memory
        // while the daemon may be dying. A page fault then fails (a fatal signal is
        // pending) and the kernel ends that request with EIO instead of leaving it
        // for NOTIFY_RESEND — the one EIO the crash test saw after a recovery.
        let map = MmapOptions::new().len(len).populate().map_anon()?;
        // Advice only: a kernel that refuses it still gets a working buffer.
        let _ = map.advise(Advice::DontFork);
        Ok(RequestBuffer { map })
    }

    /// A buffer sized for the negotiated `max_write` and `max_pages`
    /// (see [`RequestBuffer::required_size`]).
    ///
    /// # Errors
    /// As [`RequestBuffer::with_len`]; `InvalidInput` if the size overflows.
    pub fn for_protocol(max_write: u32, max_pages: u16) -> io::Result<RequestBuffer> {
        let size = Self::required_size(max_write, max_pages, page_size()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("max_write {max_write} / max_pages {max_pages} need too large a buffer"),
            )
        })?;
        Self::with_len(size)
    }

    /// A buffer large enough for any connection this kernel accepts by default: 256
    /// pages (the kernel's default `max_pages_limit`) plus the header room. Use it to
    /// read INIT, before the limits are known.
    ///
    /// # Errors
    /// As [`RequestBuffer::with_len`].
    pub fn for_any_protocol() -> io::Result<RequestBuffer> {
        Self::for_protocol(0, 256)
    }

    /// The buffer's length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Always false: a buffer has at least [`abi::FUSE_MIN_READ_BUFFER`] bytes.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl Deref for RequestBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map
    }
}

impl DerefMut for RequestBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.map
    }
}

/// The system page size (`sysconf(_SC_PAGESIZE)`), 4096 if it cannot be read.
pub fn page_size() -> usize {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE) {
        Ok(Some(n)) => usize::try_from(n).unwrap_or(4096),
        _ => 4096,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(RequestBuffer::required_size(0, 0, 4096), Some(8192));
        assert_eq!(
            RequestBuffer::required_size(131072, 32, 4096),
            Some(4096 + 131072)
        );
        assert_eq!(
            RequestBuffer::required_size(4096, 256, 4096),
            Some(4096 + (1 << 20))
        );
        assert_eq!(RequestBuffer::required_size(u32::MAX, 0, 4096), None);
        assert_eq!(RequestBuffer::required_size(0, u16::MAX, usize::MAX), None);
    }

    #[test]
    fn aligned_and_sized() {
        let b = RequestBuffer::for_protocol(131072, 32).unwrap();
        assert_eq!(b.as_ptr() as usize % page_size(), 0);
        assert!(b.len() >= 4096 + 131072);
        assert!(!b.is_empty());
        assert!(RequestBuffer::with_len(100).is_err());
        assert!(RequestBuffer::for_protocol(u32::MAX, 0).is_err());
        assert!(RequestBuffer::for_any_protocol().unwrap().len() >= (1 << 20));
    }
}
