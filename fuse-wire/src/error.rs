//! The errors of this crate: one for parsing, one for encoding. Both are `Copy`.
use core::fmt;

use crate::opcode::Opcode;

/// Why bytes could not be parsed as a FUSE message.
///
/// Every variant names what was wrong; none is a panic. Parsing never allocates, so
/// these carry only static strings and numbers.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Fewer bytes than a header (`fuse_in_header` 40, `fuse_out_header` 16).
    ShortHeader {
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// The header's `len` disagrees with the number of bytes given.
    LengthMismatch {
        /// `len` in the header.
        header: u32,
        /// Bytes given.
        buffer: usize,
    },
    /// The body is shorter than the opcode's fixed struct or a declared size.
    ShortBody {
        /// The request's opcode.
        opcode: Opcode,
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// A name or string ran to the end of the body without its NUL terminator.
    MissingNul {
        /// The request's opcode.
        opcode: Opcode,
        /// Which string.
        what: &'static str,
    },
    /// A count (forgets, iovecs, groups, nodeids) needs more bytes than the body has.
    CountOverrun {
        /// The request's opcode.
        opcode: Opcode,
        /// What was counted.
        what: &'static str,
        /// The count as given.
        count: u64,
        /// Bytes left for the entries.
        available: usize,
    },
    /// The request extension area (7.36: security context, supplementary groups) is
    /// malformed.
    BadExtension {
        /// What was wrong.
        reason: &'static str,
    },
    /// A field holds a value the protocol forbids.
    Invalid {
        /// The message's opcode (or `Opcode(0)` for a notification).
        opcode: Opcode,
        /// What was wrong.
        reason: &'static str,
    },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ParseError::ShortHeader { need, have } => write!(
                f,
                "message of {have} bytes is shorter than its {need}-byte header; \
                 the read was truncated or the buffer is not a FUSE message"
            ),
            ParseError::LengthMismatch { header, buffer } => write!(
                f,
                "header says the message is {header} bytes but {buffer} were given; \
                 pass exactly the bytes of one read(2) from /dev/fuse"
            ),
            ParseError::ShortBody {
                opcode,
                what,
                need,
                have,
            } => write!(
                f,
                "{opcode} body too short for {what}: need {need} bytes, have {have}; \
                 check the negotiated minor and flags passed to parse"
            ),
            ParseError::MissingNul { opcode, what } => {
                write!(
                    f,
                    "{opcode}: {what} is not NUL-terminated within the message"
                )
            }
            ParseError::CountOverrun {
                opcode,
                what,
                count,
                available,
            } => write!(
                f,
                "{opcode}: {count} {what} declared but only {available} bytes remain"
            ),
            ParseError::BadExtension { reason } => {
                write!(f, "malformed request extension: {reason}")
            }
            ParseError::Invalid { opcode, reason } => write!(f, "{opcode}: {reason}"),
        }
    }
}

/// Why a message could not be encoded.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The caller's buffer is too small; nothing meaningful was written.
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The message would be longer than a `u32` length or the protocol allows.
    TooLarge {
        /// What was too large.
        what: &'static str,
    },
    /// A name is empty, too long, or contains a NUL or `/` where not allowed.
    BadName {
        /// What was wrong.
        reason: &'static str,
    },
    /// The negotiated protocol does not have this message or feature.
    NotSupported {
        /// The message or feature.
        what: &'static str,
        /// The minor that introduced it.
        since_minor: u32,
        /// The negotiated minor.
        negotiated_minor: u32,
    },
    /// An argument is outside what the protocol can express.
    Invalid {
        /// What was wrong.
        reason: &'static str,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EncodeError::BufferTooSmall { need, have } => write!(
                f,
                "buffer of {have} bytes is too small, {need} needed; pass a larger buffer"
            ),
            EncodeError::TooLarge { what } => write!(f, "{what} is too large for a FUSE message"),
            EncodeError::BadName { reason } => write!(f, "bad name: {reason}"),
            EncodeError::NotSupported {
                what,
                since_minor,
                negotiated_minor,
            } => write!(
                f,
                "{what} needs protocol 7.{since_minor} but 7.{negotiated_minor} was negotiated; \
                 the kernel would reject it"
            ),
            EncodeError::Invalid { reason } => write!(f, "invalid argument: {reason}"),
        }
    }
}

impl core::error::Error for ParseError {}
impl core::error::Error for EncodeError {}
