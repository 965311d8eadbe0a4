//! # fuse-wire
//!
//! The Linux FUSE kernel protocol, minors 7.8 to 7.45, as zero-copy typed messages.
//!
//! - [`abi`]: every kernel struct, byte for byte, as alignment-1 zerocopy types.
//! - [`parse`]: request bytes plus the [`Negotiated`] protocol to a borrowed, typed
//!   [`Request`] for every opcode. Unknown opcodes are data ([`request::Operation::Unknown`]);
//!   malformed input is a [`ParseError`]. It never panics and never allocates.
//! - [`reply`]: encoders of every reply into caller-owned buffers (or a header for
//!   an iovec list, so large read payloads are never copied), and a directory-entry
//!   writer that handles the 8-byte alignment.
//! - [`notify`]: encoders of every notification (codes 1 to 9) and a parser for the
//!   daemon-to-kernel direction (used by fuzzers and fake kernels).
//! - [`request::encode`]: request encoders, as the kernel would write them, for
//!   tests, fake kernels and fuzzing.
//!
//! The crate is `no_std`, forbids `unsafe`, and allocates nothing.
//!
//! # Minors before 7.9
//! A connection negotiated at 7.8 (or lower) uses the shorter layouts the kernel
//! uses for it (`fuse_adjust_compat` in `fs/fuse/dev.c`, `fuse_write_args_fill` in
//! `fs/fuse/file.c`): the parsers read them and the encoders write them, chosen
//! by [`Negotiated`]. What those layouts drop:
//! - Replies to LOOKUP, MKNOD, MKDIR, SYMLINK, LINK and CREATE: `fuse_entry_out`
//!   in 120 bytes, and to GETATTR and SETATTR `fuse_attr_out` in 96: both end
//!   before `attr.blksize` and `attr.flags`, which the encoders leave out and the
//!   parser reads as 0. TMPFILE is not shortened: its reply is the whole 128-byte
//!   entry and `fuse_open_out` at every minor ([`reply::tmpfile`]).
//! - STATFS before 7.4: `fuse_kstatfs` in 48 bytes, without `frsize`.
//! - Requests: GETATTR has no `fuse_getattr_in` (`getattr_flags` and `fh` read
//!   as 0; current kernels send it anyway and it is ignored); READ, READDIR and
//!   READDIRPLUS read 24 bytes of `fuse_read_in` and WRITE gets 24 bytes of
//!   `fuse_write_in` (`lock_owner` and `flags` read as 0); before 7.12, MKNOD
//!   has no `umask` and CREATE neither `umask` nor `open_flags`.
//! - INIT: the kernel's own minor decides its size (8 bytes before 7.6: no
//!   `max_readahead` nor `flags`; 16 before 7.36: no `flags2`), and the INIT
//!   reply's ([`Negotiated::init_out_size`]). A body of another length is refused.
//!
//! # References
//! - Linux `include/uapi/linux/fuse.h`, protocol 7.45 (Linux 6.18)
//! - `fuse(4)` man page
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod abi;
mod encode;
mod error;
mod flags;
#[doc(hidden)]
pub mod fuzzing;
mod negotiated;
pub mod notify;
mod opcode;
pub mod reply;
pub mod request;

pub use error::{EncodeError, ParseError};
pub use flags::{
    AttrFlags, FopenFlags, InitFlags, IoctlFlags, RequestFlags, SetattrValid, FUSE_IOCTL_MAX_IOV,
};
pub use negotiated::Negotiated;
pub use opcode::{NotifyCode, Opcode};
pub use request::{parse, parse_header, Operation, Request, RequestHeader};
