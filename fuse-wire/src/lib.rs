//! # fuse-wire
//!
//! The Linux FUSE kernel protocol, minors 7.9 to 7.45, as zero-copy typed messages.
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
