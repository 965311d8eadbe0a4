//! All IO of a FUSE session: opening `/dev/fuse`, mounting and unmounting, reading
//! requests and writing replies, the fuse control filesystem, and request buffers.
//!
//! This is the only module of the crate that talks to the kernel, and the only one
//! allowed `unsafe` code. Each `unsafe` block has a `// SAFETY:` comment: taking
//! ownership of a file descriptor received over `SCM_RIGHTS` (in `scm.rs`, which
//! `fusermount.rs` also uses: nix hands received descriptors out as raw integers), the
//! `FUSE_DEV_IOC_CLONE` ioctl and the request path's `read`/`writev` through
//! `syscall(2)` (in `channel.rs`: nix's ioctl wrappers are `unsafe fn`),
//! the passthrough ioctls `FUSE_DEV_IOC_BACKING_OPEN`/`CLOSE` (in `backing.rs`), the
//! file handle calls `name_to_handle_at`/`open_by_handle_at` (in `fhandle.rs`),
//! and in `uring.rs` the io_uring ones: pushing SQEs that point at buffers the kernel
//! fills, and setting the SQE field the io-uring crate does not expose; in
//! `journal_map.rs`, addressing the crash-recovery journal's shared mapping.
//!
//! The pieces, a file per idea:
//! - [`MountOptions`]: what to mount, rendered to the kernel's and `fusermount3`'s
//!   option strings.
//! - [`mount()`] and [`Mount`]: mount with `mount(2)` when privileged, through the
//!   setuid helper `fusermount3` otherwise. Dropping a [`Mount`] never unmounts: a live
//!   mount can be handed to another process ([`Mount::into_parts`],
//!   [`Mount::from_parts`]).
//! - [`Channel`]: read requests and write replies on a `/dev/fuse` descriptor, with
//!   reads a [`Waker`] can interrupt at a request boundary, without signals.
//! - [`RequestBuffer`]: page-aligned read buffers sized from the negotiated protocol.
//! - [`backing`]: kernel passthrough backing files (7.40).
//! - [`fhandle`]: file handles that name an inode without holding it open.
//! - [`uring`]: fuse-over-io_uring queues (one ring per CPU, registered entries).
//! - [`mountid`]: which mount is at a path, by the kernel's never-reused unique
//!   mount id (`statx`/`statmount`, in `mountid.rs`, which holds their `unsafe`), so
//!   that no code here mistakes a newer mount that reuses a device number for its own.
//! - [`fdstore`]: systemd's file descriptor store protocol (`NOTIFY_SOCKET`,
//!   `FDSTORE=1`, `LISTEN_FDS`), to keep a connection open while no daemon runs.
//! - [`JournalMap`]: the crash-recovery journal's shared mapping (a memfd or a file).
//! - [`slots`]: request buffers in a memfd ([`RequestSlots`]), so that requests a
//!   crashed daemon had read but not answered can be answered by its successor on
//!   kernels without `NOTIFY_RESEND`.
//! - [`fusectl`]: the fuse control filesystem (connection ids, abort, waiting
//!   requests) and a [`fusectl::Watchdog`] that tears down a hung mount.
//!
//! # References
//! - `fuse(4)`, `mount(2)`, `umount(2)`, `fusermount3(1)` man pages
//! - Linux `fs/fuse/dev.c` (the device), `fs/fuse/inode.c` (mount options),
//!   `fs/fuse/control.c` (fusectl), Documentation/filesystems/fuse.rst

#[allow(unsafe_code)]
pub mod backing;
mod buffer;
#[allow(unsafe_code)]
mod channel;
#[allow(unsafe_code)]
mod child_lookup;
mod error;
#[allow(unsafe_code)]
pub mod fdstore;
#[allow(unsafe_code)]
pub mod fhandle;
pub mod fusectl;
mod fusermount;
#[allow(unsafe_code)]
mod journal_map;
mod mount;
#[allow(unsafe_code)]
pub mod mountid;
pub(crate) mod mountinfo;
mod options;
#[allow(unsafe_code)]
pub mod ring_area;
#[allow(unsafe_code)]
mod scm;
#[allow(unsafe_code)]
pub mod slots;
#[allow(unsafe_code)]
pub mod uring;
mod waker;

pub use buffer::{page_size, RequestBuffer, REQUEST_HEADER_ROOM};
pub use channel::{Channel, Received, WriteOutcome};
pub use child_lookup::{lookup_in_child, statfs_in_child_on};
pub use error::{MountError, OptionError};
pub use fusermount::find_fusermount;
pub use journal_map::JournalMap;
pub use mount::{mount, Mount, MountMethod, MountParts};
pub use mountid::{AccessTimes, MountIdentity, Ownership};
pub use options::{Atime, MountOptions};
pub use ring_area::RingArea;
pub use scm::{
    peer_credentials, recv_exact_with_fds, recv_with_fds, send_with_fds, PeerCredentials,
    MAX_FDS_PER_MESSAGE,
};
pub use slots::{RequestSlots, SlotData, SlotMark};
pub use waker::Waker;

/// Path of the FUSE character device.
pub const FUSE_DEVICE: &str = "/dev/fuse";
