//! File descriptors that ride beside a snapshot.
//!
//! A filesystem's own state often holds open files (a passthrough filesystem's
//! backing directory, a cache file, a socket). A file descriptor cannot be
//! serialized; what travels in the snapshot is an [`FdSlot`], an index into the list
//! of descriptors passed *beside* it: over a unix socket with `SCM_RIGHTS` in a live
//! handoff, or not at all for a snapshot written to a file (whose
//! [`SnapshotFs::restore`](crate::SnapshotFs::restore) then gets an empty
//! [`FdRestorer`] and must reopen what it needs, or refuse).
//!
//! The shape follows Firecracker's `persist.rs` and vm-virtio's state structs: the
//! saved value is plain data, and live resources come back in as constructor
//! arguments.
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

/// A placeholder for a file descriptor inside a filesystem's saved state: the index
/// of the descriptor in the list that travels beside the snapshot.
///
/// Get one from [`FdSaver::add`] when saving, turn it back into a descriptor with
/// [`FdRestorer::take`] when restoring.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct FdSlot(pub u32);

/// Collects the file descriptors a filesystem's state refers to, while saving.
///
/// Each [`add`](FdSaver::add) duplicates the descriptor (the new process gets its own
/// reference; the old one keeps its own until it exits).
#[derive(Default)]
pub struct FdSaver {
    fds: Vec<OwnedFd>,
}

impl FdSaver {
    /// An empty list.
    pub fn new() -> Self {
        FdSaver { fds: Vec::new() }
    }

    /// Duplicates `fd` (`F_DUPFD_CLOEXEC`) into the list and returns its slot.
    ///
    /// # Errors
    /// The `dup` failed (e.g. `EMFILE`), or the list already holds `u32::MAX` entries.
    pub fn add(&mut self, fd: BorrowedFd<'_>) -> io::Result<FdSlot> {
        let slot = u32::try_from(self.fds.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many fds to save"))?;
        self.fds.push(fd.try_clone_to_owned()?);
        Ok(FdSlot(slot))
    }

    /// How many descriptors were added.
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    /// Whether none were added.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// The descriptors, in slot order (slot `i` is element `i`): what to pass beside
    /// the snapshot.
    pub fn into_fds(self) -> Vec<OwnedFd> {
        self.fds
    }
}

impl fmt::Debug for FdSaver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.fds.iter().map(|fd| fd.as_raw_fd()))
            .finish()
    }
}

/// Hands out the file descriptors received beside a snapshot, while restoring.
///
/// Each slot can be taken once. Descriptors nobody took are closed when the
/// restorer is dropped (or returned by [`into_unused`](FdRestorer::into_unused)).
#[derive(Default)]
pub struct FdRestorer {
    fds: Vec<Option<OwnedFd>>,
}

impl FdRestorer {
    /// A restorer over `fds`, received in slot order.
    pub fn new(fds: Vec<OwnedFd>) -> Self {
        FdRestorer {
            fds: fds.into_iter().map(Some).collect(),
        }
    }

    /// A restorer with no descriptors (a snapshot read from a file).
    pub fn empty() -> Self {
        FdRestorer { fds: Vec::new() }
    }

    /// The descriptor in `slot`; `None` if the slot is out of range or was already
    /// taken. Saved state is untrusted: treat `None` as a restore error.
    pub fn take(&mut self, slot: FdSlot) -> Option<OwnedFd> {
        let i = usize::try_from(slot.0).ok()?;
        self.fds.get_mut(i)?.take()
    }

    /// How many slots were received (taken or not).
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    /// Whether no descriptors were received.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// The descriptors nobody took, in slot order.
    pub fn into_unused(self) -> Vec<OwnedFd> {
        self.fds.into_iter().flatten().collect()
    }
}

impl fmt::Debug for FdRestorer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.fds
                    .iter()
                    .map(|fd| fd.as_ref().map(|fd| fd.as_raw_fd())),
            )
            .finish()
    }
}
