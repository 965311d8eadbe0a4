//! Faster serde for memfs's maps and byte strings, with the same postcard bytes as
//! the derived code: restoring a 100 000-inode state spent most of its time in
//! `BTreeMap::insert` and in byte strings decoded a byte at a time.
//!
//! - Maps are decoded into a `Vec` and built with `BTreeMap::from_iter`, which
//!   sorts (a single pass over input already in order, as every encoder writes it)
//!   and then builds the tree in bulk, instead of an insert (a descent, a node
//!   split now and then, every value moved several times) per entry. A key that
//!   comes twice keeps its last value, as inserting one by one did.
//! - Byte strings (xattrs, symlink targets, chunks; names are [`crate::state::Name`]) are read as serde
//!   byte strings: postcard encodes a `Vec<u8>` and a byte string alike (a varint
//!   length, then the bytes), and a byte string is one copy instead of a call per
//!   byte.
//!
//! Both read untrusted bytes: no length is trusted for an allocation beyond
//! [`CAUTIOUS`] entries (the `Vec` grows as entries actually decode).
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The most entries reserved up front from a map's encoded length (untrusted):
/// beyond it the `Vec` grows as entries are actually decoded.
pub const CAUTIOUS: usize = 4096;

/// A byte string borrowed for encoding: serialized as serde bytes.
pub struct Bytes<'a>(pub &'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// An owned byte string decoded from serde bytes (or, from a format that has
/// none, a sequence of `u8`).
pub struct ByteBuf(pub Vec<u8>);

impl From<ByteBuf> for Vec<u8> {
    fn from(b: ByteBuf) -> Vec<u8> {
        b.0
    }
}

impl ByteBuf {
    /// The bytes of a sequence of `u8` (a format without byte strings), reserving
    /// at most [`CAUTIOUS`] up front.
    pub fn visit_seq_of_u8<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(CAUTIOUS));
        while let Some(b) = seq.next_element::<u8>()? {
            v.push(b);
        }
        Ok(v)
    }
}

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<ByteBuf, A::Error> {
                ByteBuf::visit_seq_of_u8(seq).map(ByteBuf)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// Decodes a map whose entries are read as `KW` and `VW` and stored as `K` and
/// `V`, built in bulk.
fn bulk<'de, D, KW, VW, K, V>(d: D) -> Result<BTreeMap<K, V>, D::Error>
where
    D: Deserializer<'de>,
    KW: Deserialize<'de> + Into<K>,
    VW: Deserialize<'de> + Into<V>,
    K: Ord,
{
    /// The four types, owned by no value.
    type Types<KW, VW, K, V> = PhantomData<fn() -> (KW, VW, K, V)>;
    struct M<KW, VW, K, V>(Types<KW, VW, K, V>);
    impl<'de, KW, VW, K, V> Visitor<'de> for M<KW, VW, K, V>
    where
        KW: Deserialize<'de> + Into<K>,
        VW: Deserialize<'de> + Into<V>,
        K: Ord,
    {
        type Value = BTreeMap<K, V>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
            let mut v = Vec::with_capacity(a.size_hint().unwrap_or(0).min(CAUTIOUS));
            while let Some((k, x)) = a.next_entry::<KW, VW>()? {
                v.push((k.into(), x.into()));
            }
            // A stable sort (nothing to do for sorted input), the last of equal
            // keys kept, then a bulk build.
            Ok(BTreeMap::from_iter(v))
        }
    }
    d.deserialize_map(M::<KW, VW, K, V>(PhantomData))
}

/// `#[serde(deserialize_with)]` for any map: built in bulk.
pub fn map<'de, D, K, V>(d: D) -> Result<BTreeMap<K, V>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Ord,
    V: Deserialize<'de>,
{
    bulk::<D, K, V, K, V>(d)
}

/// `#[serde(with)]` for a map whose values are byte strings (a file's chunks).
pub mod bytes_value {
    use super::*;

    /// Encodes the values as byte strings.
    pub fn serialize<S: Serializer, K: Serialize>(
        m: &BTreeMap<K, Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_map(m.iter().map(|(k, v)| (k, Bytes(v))))
    }

    /// Decodes the values as byte strings, built in bulk.
    pub fn deserialize<'de, D: Deserializer<'de>, K: Deserialize<'de> + Ord>(
        d: D,
    ) -> Result<BTreeMap<K, Vec<u8>>, D::Error> {
        bulk::<D, K, ByteBuf, K, Vec<u8>>(d)
    }
}

/// `#[serde(with)]` for a map of byte strings to byte strings (extended
/// attributes).
pub mod bytes_both {
    use super::*;

    /// Encodes keys and values as byte strings.
    pub fn serialize<S: Serializer>(
        m: &BTreeMap<Vec<u8>, Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_map(m.iter().map(|(k, v)| (Bytes(k), Bytes(v))))
    }

    /// Decodes keys and values as byte strings, built in bulk.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, D::Error> {
        bulk::<D, ByteBuf, ByteBuf, Vec<u8>, Vec<u8>>(d)
    }
}

/// `#[serde(with)]` for one byte string (a symlink's target).
pub mod bytes {
    use super::*;

    /// Encodes it as a byte string.
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    /// Decodes it as a byte string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        ByteBuf::deserialize(d).map(|b| b.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The derived encoding: plain maps of `Vec<u8>`.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Plain {
        names: BTreeMap<Vec<u8>, u64>,
        listing: BTreeMap<u64, Vec<u8>>,
        xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
        target: Vec<u8>,
        ids: BTreeMap<u64, u64>,
    }

    /// The same through this module.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Fast {
        #[serde(deserialize_with = "map")]
        names: BTreeMap<crate::state::Name, u64>,
        #[serde(with = "bytes_value")]
        listing: BTreeMap<u64, Vec<u8>>,
        #[serde(with = "bytes_both")]
        xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
        #[serde(with = "bytes")]
        target: Vec<u8>,
        #[serde(deserialize_with = "map")]
        ids: BTreeMap<u64, u64>,
    }

    #[test]
    fn the_bytes_are_the_derived_ones() {
        let names: BTreeMap<Vec<u8>, u64> = (0..300u64)
            .map(|i| (format!("name{i}").into_bytes(), i))
            .collect();
        let listing = names.iter().map(|(n, &i)| (i, n.clone())).collect();
        let xattrs = [
            (b"user.a".to_vec(), vec![0u8; 200]),
            (b"b".to_vec(), vec![]),
        ]
        .into();
        let ids = (0..5000u64).map(|i| (i * 3, i)).collect();
        let plain = Plain {
            names,
            listing,
            xattrs,
            target: b"../x".to_vec(),
            ids,
        };
        let fast = Fast {
            names: plain
                .names
                .iter()
                .map(|(n, &i)| (crate::state::Name::new(n), i))
                .collect(),
            listing: plain.listing.clone(),
            xattrs: plain.xattrs.clone(),
            target: plain.target.clone(),
            ids: plain.ids.clone(),
        };
        let bytes = postcard::to_allocvec(&plain).unwrap();
        assert_eq!(postcard::to_allocvec(&fast).unwrap(), bytes);
        assert_eq!(postcard::from_bytes::<Fast>(&bytes).unwrap(), fast);
    }

    #[derive(Deserialize, Debug)]
    struct Ids(#[serde(deserialize_with = "map")] BTreeMap<u64, u64>);

    #[test]
    fn unsorted_and_repeated_keys_decode_as_inserted_one_by_one() {
        // Three entries: 3 -> 1, 1 -> 2, 3 -> 4 (postcard: a length, then pairs).
        let m: Ids = postcard::from_bytes(&[3, 3, 1, 1, 2, 3, 4]).unwrap();
        assert_eq!(m.0, BTreeMap::from([(1, 2), (3, 4)]));
    }

    #[test]
    fn a_hostile_length_is_an_error_not_an_allocation() {
        // A map of 2^63 entries, and a byte string as long, then nothing.
        let huge = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert!(postcard::from_bytes::<Ids>(&huge).is_err());
        assert!(postcard::from_bytes::<ByteBuf>(&huge).is_err());
        // A map that claims more entries than it holds.
        assert!(postcard::from_bytes::<Ids>(&[200, 1, 1]).is_err());
    }
}
