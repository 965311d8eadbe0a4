//! The envelope: a fixed 24-byte header in front of the postcard body.
//!
//! ```text
//! offset size  field
//!      0    8  magic            b"FUSELIVE"
//!      8    2  format version   u16 little-endian (1 = SnapshotBody::V1)
//!     10    2  flags            u16 little-endian, none defined: must be 0
//!     12    8  body length      u64 little-endian, exactly the bytes that follow
//!     20    4  body checksum    CRC-32 (IEEE) of the body, u32 little-endian
//!     24    …  body             postcard of SnapshotBody
//! ```
//!
//! Like Firecracker's snapshot header, the version is read before anything else and
//! a version this library does not know is refused, not guessed at. The checksum
//! covers the body; every header field is itself checked (magic, known version,
//! zero flags, length equal to what follows), so a damaged header is caught too.
use super::crc::crc32;
use super::error::FormatError;

/// The first eight bytes of every snapshot.
pub const MAGIC: [u8; 8] = *b"FUSELIVE";

/// The format version this library writes, and the newest it reads.
pub const FORMAT_VERSION: u16 = 1;

/// Size of the fixed header.
pub const HEADER_LEN: usize = 24;

/// The parsed header, with the body it frames.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Envelope<'a> {
    pub version: u16,
    pub body: &'a [u8],
}

/// Writes the header for the body in `out[HEADER_LEN..]` into `out[..HEADER_LEN]`.
pub(crate) fn seal(out: &mut [u8], version: u16) {
    let (head, body) = out.split_at_mut(HEADER_LEN);
    head[0..8].copy_from_slice(&MAGIC);
    head[8..10].copy_from_slice(&version.to_le_bytes());
    head[10..12].copy_from_slice(&0u16.to_le_bytes());
    head[12..20].copy_from_slice(&(body.len() as u64).to_le_bytes());
    head[20..24].copy_from_slice(&crc32(body).to_le_bytes());
}

/// Checks the header and the checksum; returns the body.
pub(crate) fn open(bytes: &[u8]) -> Result<Envelope<'_>, FormatError> {
    let magic_len = bytes.len().min(MAGIC.len());
    if bytes[..magic_len] != MAGIC[..magic_len] {
        return Err(FormatError::BadMagic);
    }
    let Some((head, body)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(FormatError::TooShort { len: bytes.len() });
    };
    let version = u16::from_le_bytes([head[8], head[9]]);
    if version == 0 || version > FORMAT_VERSION {
        return Err(FormatError::UnsupportedVersion {
            found: version,
            newest: FORMAT_VERSION,
        });
    }
    let flags = u16::from_le_bytes([head[10], head[11]]);
    if flags != 0 {
        return Err(FormatError::UnknownFlags(flags));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&head[12..20]);
    let expected = u64::from_le_bytes(len);
    let found = body.len() as u64;
    if found < expected {
        return Err(FormatError::Truncated { expected, found });
    }
    if found > expected {
        return Err(FormatError::TrailingBytes { expected, found });
    }
    let stored = u32::from_le_bytes([head[20], head[21], head[22], head[23]]);
    let computed = crc32(body);
    if stored != computed {
        return Err(FormatError::ChecksumMismatch { stored, computed });
    }
    Ok(Envelope { version, body })
}
