//! The byte layout of a journal: two header slots, areas of checkpoint + log,
//! record headers. All integers little-endian. See the [module docs](super).
use crate::format::crc::crc32;

/// The first eight bytes of each header slot.
pub const MAGIC: [u8; 8] = *b"FLJOURNL";
/// The journal format version this library writes and reads.
pub const JOURNAL_VERSION: u16 = 1;
/// Bytes of one header slot.
pub const SLOT_LEN: u64 = 64;
/// Where the header slots are: epoch `e` is written to slot `e % 2`.
pub const SLOTS: [u64; 2] = [0, SLOT_LEN];
/// The first byte an area may start at (areas are aligned to it).
pub const AREA_ALIGN: u64 = 4096;
/// Bytes of a record header.
pub const RECORD_HEADER_LEN: u64 = 24;
/// The largest record payload this library writes or reads.
pub const MAX_PAYLOAD: u64 = 8 << 20;
/// Bytes kept free at the end of a log for the record that seals it.
pub(crate) const SEAL_ROOM: u64 = RECORD_HEADER_LEN + 8;

/// Rounds up to a multiple of 8.
pub(crate) fn align8(n: u64) -> u64 {
    n.saturating_add(7) & !7
}

/// Rounds up to a multiple of [`AREA_ALIGN`].
pub(crate) fn align_area(n: u64) -> u64 {
    n.saturating_add(AREA_ALIGN - 1) & !(AREA_ALIGN - 1)
}

/// Bytes a record with `payload` payload bytes takes in the log.
pub(crate) fn record_len(payload: u64) -> u64 {
    RECORD_HEADER_LEN + align8(payload)
}

/// One header slot: which area is live and what its checkpoint is.
///
/// ```text
/// offset size
///      0    8  magic "FLJOURNL"
///      8    2  version (1)
///     10    2  flags (0)
///     12    4  zero
///     16    8  epoch (>= 1; slot = epoch % 2)
///     24    8  area offset (a multiple of 4096, >= 4096)
///     32    8  checkpoint length
///     40    8  first sequence number of the log
///     48    4  CRC-32 of the checkpoint
///     52    8  zero
///     60    4  CRC-32 of bytes 0..60      } bytes 56..64: the commit word,
/// ```                                        written last
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    pub epoch: u64,
    pub area: u64,
    pub checkpoint_len: u64,
    pub first_seq: u64,
    pub checkpoint_crc: u32,
}

/// What a header slot holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    /// All zero: never written.
    Empty,
    /// Not starting with the magic.
    NoMagic,
    /// The magic, a newer version.
    Version(u16),
    /// The magic and version, but the checksum fails (torn or damaged).
    Damaged,
    /// Intact.
    Valid(Meta),
}

impl Meta {
    /// The slot's 64 bytes; bytes 56..64 are the commit word.
    pub fn encode(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&JOURNAL_VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.epoch.to_le_bytes());
        b[24..32].copy_from_slice(&self.area.to_le_bytes());
        b[32..40].copy_from_slice(&self.checkpoint_len.to_le_bytes());
        b[40..48].copy_from_slice(&self.first_seq.to_le_bytes());
        b[48..52].copy_from_slice(&self.checkpoint_crc.to_le_bytes());
        let crc = crc32(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Reads a slot. `Valid` only says the bytes are intact; [`Meta::check`] says
    /// whether they make sense.
    pub fn decode(b: &[u8; 64]) -> Slot {
        if b.iter().all(|&x| x == 0) {
            return Slot::Empty;
        }
        if b[0..8] != MAGIC {
            return Slot::NoMagic;
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version > JOURNAL_VERSION {
            return Slot::Version(version);
        }
        // Version 0 was never written: a slot torn before its version was stored.
        if version != JOURNAL_VERSION {
            return Slot::Damaged;
        }
        if crc32(&b[..60]) != le32(&b[60..64]) {
            return Slot::Damaged;
        }
        Slot::Valid(Meta {
            epoch: le64(&b[16..24]),
            area: le64(&b[24..32]),
            checkpoint_len: le64(&b[32..40]),
            first_seq: le64(&b[40..48]),
            checkpoint_crc: le32(&b[48..52]),
        })
    }

    /// Checks an intact slot's fields (found in slot `slot` of a `file_len`-byte
    /// file); the message says what is impossible.
    pub fn check(&self, b: &[u8; 64], slot: usize, file_len: u64) -> Result<(), String> {
        if u16::from_le_bytes([b[10], b[11]]) != 0 || b[12..16] != [0; 4] || b[52..60] != [0; 8] {
            return Err(format!("slot {slot} has non-zero reserved bytes"));
        }
        if self.epoch == 0 || self.epoch > u64::MAX / 2 || self.epoch % 2 != slot as u64 {
            return Err(format!("slot {slot} holds epoch {}", self.epoch));
        }
        if self.area < AREA_ALIGN || self.area % AREA_ALIGN != 0 {
            return Err(format!("area offset {} is not a valid area", self.area));
        }
        let log_start = self
            .area
            .checked_add(align8(self.checkpoint_len))
            .filter(|&end| end <= file_len && self.checkpoint_len <= file_len);
        if log_start.is_none() {
            return Err(format!(
                "checkpoint of {} bytes at {} lies past the end of the {file_len}-byte file",
                self.checkpoint_len, self.area
            ));
        }
        if self.first_seq == 0 || self.first_seq > u64::MAX / 2 {
            return Err(format!("first sequence number {}", self.first_seq));
        }
        Ok(())
    }

    /// Where the log starts.
    pub fn log_start(&self) -> u64 {
        self.area + align8(self.checkpoint_len)
    }
}

/// A record header.
///
/// ```text
/// offset size
///      0    4  payload length (<= MAX_PAYLOAD)
///      4    2  kind
///      6    2  flags (0)
///      8    8  sequence number
///     16    4  CRC-32 of the payload       } bytes 16..24: the commit word,
///     20    4  CRC-32 of bytes 0..20 and   } written last
///              the epoch (u64 LE)
/// 24 ...       payload, then zero to eight bytes of padding (not checked)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub len: u32,
    pub kind: u16,
    pub seq: u64,
    pub payload_crc: u32,
}

impl RecordHeader {
    /// The header bytes for a log of epoch `epoch`; bytes 16..24 are the commit
    /// word.
    pub fn encode(&self, epoch: u64) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[0..4].copy_from_slice(&self.len.to_le_bytes());
        b[4..6].copy_from_slice(&self.kind.to_le_bytes());
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..20].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = header_crc(&b, epoch);
        b[20..24].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// The header, if its checksum is right for epoch `epoch` (flags must be 0).
    pub fn decode(b: &[u8; 24], epoch: u64) -> Option<RecordHeader> {
        if header_crc(b, epoch) != le32(&b[20..24]) || b[6..8] != [0, 0] {
            return None;
        }
        Some(RecordHeader {
            len: le32(&b[0..4]),
            kind: u16::from_le_bytes([b[4], b[5]]),
            seq: le64(&b[8..16]),
            payload_crc: le32(&b[16..20]),
        })
    }
}

/// The header checksum: its first 20 bytes, then the epoch (a salt, so that a
/// record left in the file by an older epoch never passes for one of this epoch).
fn header_crc(b: &[u8; 24], epoch: u64) -> u32 {
    // One pass over the 28 bytes (the same value as the first 20 bytes' CRC
    // continued with the epoch's): one small checksum per record, not two.
    let mut salted = [0u8; 28];
    salted[..20].copy_from_slice(&b[..20]);
    salted[20..].copy_from_slice(&epoch.to_le_bytes());
    crc32(&salted)
}

pub(crate) fn le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

pub(crate) fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}
