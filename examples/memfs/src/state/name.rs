//! [`Name`]: a directory entry's name, kept inline when short.
use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserializer, Serializer};

/// The longest name kept inline.
const INLINE: usize = 22;

/// A directory entry's name: up to 22 bytes inline, longer ones on the heap.
///
/// A directory holds each name twice (by name and in its listing), so a restore
/// of 100 000 entries made 200 000 small allocations; short names (most) now
/// make none. Compares, hashes and encodes as its bytes (postcard: a length,
/// then the bytes, as the `Vec<u8>` it replaces).
#[derive(Clone)]
pub struct Name(Repr);

#[derive(Clone)]
enum Repr {
    Inline(u8, [u8; INLINE]),
    Heap(Box<[u8]>),
}

impl Name {
    /// A name holding `bytes`.
    pub fn new(bytes: &[u8]) -> Name {
        if bytes.len() <= INLINE {
            let mut b = [0u8; INLINE];
            b[..bytes.len()].copy_from_slice(bytes);
            // At most INLINE (22): fits.
            Name(Repr::Inline(bytes.len() as u8, b))
        } else {
            Name(Repr::Heap(bytes.into()))
        }
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline(len, b) => &b[..usize::from(*len).min(INLINE)],
            Repr::Heap(b) => b,
        }
    }
}

impl From<Vec<u8>> for Name {
    fn from(v: Vec<u8>) -> Name {
        if v.len() <= INLINE {
            Name::new(&v)
        } else {
            Name(Repr::Heap(v.into_boxed_slice()))
        }
    }
}

impl Deref for Name {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Borrow<[u8]> for Name {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Name {}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Name) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Name {
    fn cmp(&self, other: &Name) -> Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl Hash for Name {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.as_bytes().hash(h);
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

impl serde::Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.as_bytes())
    }
}

impl<'de> serde::Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Name, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Name;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a name's bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Name, E> {
                Ok(Name::new(v))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Name, E> {
                Ok(Name::from(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Name, A::Error> {
                let bytes = crate::wire::ByteBuf::visit_seq_of_u8(seq)?;
                Ok(Name::from(bytes))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_names_are_their_bytes() {
        for len in [0, 1, 21, 22, 23, 255] {
            let bytes: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let n = Name::new(&bytes);
            assert_eq!(&*n, &bytes[..]);
            assert_eq!(Name::from(bytes.clone()), n);
            let enc = postcard::to_allocvec(&n).unwrap();
            assert_eq!(enc, postcard::to_allocvec(&bytes).unwrap());
            assert_eq!(postcard::from_bytes::<Name>(&enc).unwrap(), n);
        }
        assert!(Name::new(b"ab") < Name::new(b"abc"));
        assert!(Name::new(&[b'z'; 30]) > Name::new(b"a"));
    }
}
