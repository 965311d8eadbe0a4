//! memfs takes part in snapshots and live handoff: its whole contents are one serde
//! value ([`MemFsImage`]) and it holds no file descriptors.
//!
//! The saved state is the postcard encoding of the image ([`MemFsBlob`]), written
//! straight from the live state under its read lock: no copy of the filesystem is
//! made while the mount is paused. (Cloning a 100k-inode state and then encoding
//! and dropping the clone cost about three times as much as encoding it in place:
//! docs/BENCHMARKS.md, "Live handoff".)
use std::fmt;
use std::io;

use fuse_live::snapshot::{FdRestorer, FdSaver, SnapshotFs};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::fs::{MemFs, MemFsImage};

/// A [`MemFsImage`] already encoded with postcard: an opaque byte string inside the
/// snapshot. Decoded (and validated) by [`SnapshotFs::restore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemFsBlob(pub Vec<u8>);

impl MemFsBlob {
    /// Decodes the image (untrusted bytes: an error, never a panic).
    pub fn image(&self) -> Result<MemFsImage, String> {
        match postcard::take_from_bytes::<MemFsImage>(&self.0) {
            Ok((image, [])) => Ok(image),
            Ok((_, rest)) => Err(format!("memfs state: {} trailing bytes", rest.len())),
            Err(e) => Err(format!("memfs state does not decode: {e}")),
        }
    }
}

impl Serialize for MemFsBlob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for MemFsBlob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl Visitor<'_> for Bytes {
            type Value = MemFsBlob;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<MemFsBlob, E> {
                Ok(MemFsBlob(v.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<MemFsBlob, E> {
                Ok(MemFsBlob(v))
            }
        }
        d.deserialize_byte_buf(Bytes)
    }
}

impl SnapshotFs for MemFs {
    type State = MemFsBlob;

    fn save(&self, _fds: &mut FdSaver) -> io::Result<MemFsBlob> {
        // `MemFs` serializes as a `MemFsImage` under its read lock, without a copy.
        postcard::to_allocvec(self)
            .map(MemFsBlob)
            .map_err(|e| io::Error::other(format!("encode the memfs state: {e}")))
    }

    fn restore(state: MemFsBlob, _fds: &mut FdRestorer) -> Result<MemFs, String> {
        MemFs::restore(state.image()?)
    }
}
