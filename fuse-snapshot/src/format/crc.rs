//! CRC-32 (IEEE 802.3, the zlib/PNG/gzip polynomial, reflected).
//!
//! Computed by `crc32fast`, which folds 64 bytes at a time with the CPU's
//! carry-less multiply (PCLMULQDQ on x86-64, PMULL on aarch64) and falls back to
//! slicing-by-16 elsewhere. The project had its own slicing-by-8 loop here (about
//! 1.5 GB/s on the reference machine); the journal checksums every record payload
//! and every checkpoint, so with 1 MiB WRITEs journaled the CRC was 40 % of the
//! daemon's CPU (a `perf` profile, docs/BENCHMARKS.md), which the SIMD version
//! removes. The value is the standard one (`crc32("123456789") == 0xCBF4_3926`),
//! unchanged: every file written before still checks, and any other tool can check
//! a snapshot's body.

/// The CRC-32 of `data`.
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// The CRC-32 of the bytes `crc` is the CRC-32 of, followed by `data`
/// (`crc32_update(crc32(a), b) == crc32(a ++ b)`; start from 0).
pub fn crc32_update(crc: u32, data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(crc);
    h.update(data);
    h.finalize()
}

/// The CRC-32 of `a ++ b` from `crc32(a)`, `crc32(b)` and `b`'s length, without
/// reading the bytes again (zlib's `crc32_combine`: a few dozen carry-less
/// multiplications, whatever the length). The journal checksums a record's
/// payload so, whose encoding checksummed its body already.
pub fn crc32_combine(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(crc_a);
    h.combine(&crc32fast::Hasher::new_with_initial_len(crc_b, len_b));
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::crc32;

    #[test]
    fn combine_is_the_crc_of_both() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 251) as u8).collect();
        for split in [0, 1, 4, 63, 64, 65, 1000, 4999, 5000] {
            let (a, b) = data.split_at(split);
            assert_eq!(
                super::crc32_combine(crc32(a), crc32(b), b.len() as u64),
                crc32(&data),
                "split at {split}"
            );
        }
    }

    /// The reflected IEEE polynomial.
    const POLY: u32 = 0xEDB8_8320;

    /// Bit-at-a-time reference.
    fn slow(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    POLY ^ (crc >> 1)
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn update_continues() {
        let data = b"0123456789abcdefghijklmnopqrstuvwxyz";
        for split in 0..data.len() {
            let (a, b) = data.split_at(split);
            assert_eq!(
                super::crc32_update(crc32(a), b),
                crc32(data),
                "split {split}"
            );
        }
    }

    #[test]
    fn matches_bitwise_reference_at_every_length() {
        let data: Vec<u8> = (0..300u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for n in 0..data.len() {
            assert_eq!(crc32(&data[..n]), slow(&data[..n]), "length {n}");
        }
    }
}
