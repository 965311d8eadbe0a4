//! The handoff messages and their bytes. Pure: no sockets here (see
//! `conn.rs` for the IO), so every decoder can be fed any bytes in tests.
//!
//! # Framing
//! Every message is a 12-byte header and a body:
//!
//! ```text
//! offset size  field
//!      0    4  magic  "FLHO"
//!      4    1  protocol version (1)
//!      5    1  kind   (1 Hello, 2 Accept, 3 Refuse, 4 Snapshot, 5 Ack, 6 Nack, 7 Commit,
//!                      8 Precopy, 9 Ready, 10 PrecopyRound, 11 RingsReady,
//!                      12 RingsReleased)
//!      6    2  reserved, zero
//!      8    4  body length, little-endian (bounded per kind, see `Kind::max_body`)
//! ```
//!
//! Bodies, all integers little-endian:
//!
//! ```text
//! Hello    min_version u16, max_version u16, pid u32,
//!          [features u32]                                        (new -> old)
//! Accept   version u16, [features u32]                           (old -> new)
//! Refuse   reason, UTF-8                                         (old -> new)
//! Snapshot since_pause_ns u64, has_unmount_socket u8, method u8,
//!          connection_id_present u8, connection_id u64, fs_fds u32,
//!          mountpoint_len u32, mountpoint bytes, snapshot bytes  (old -> new, with fds)
//! Ack      restore_ns u64                                        (new -> old)
//! Nack     reason, UTF-8                                         (new -> old)
//! Commit   since_pause_ns u64                                    (old -> new)
//! Precopy  the filesystem's pre-copied state                     (old -> new)
//! Ready    decode_ns u64                                         (new -> old)
//! PrecopyRound  changes since the pre-copy or the last round     (old -> new)
//! RingsReady    elapsed_ns u64 (after Commit, FEATURE_URING)     (new -> old)
//! RingsReleased elapsed_ns u64 (FEATURE_URING)                   (old -> new)
//! ```
//!
//! `features` is a bit set ([`FEATURE_PRECOPY`]); a Hello or Accept without it
//! (the first releases) means none. The new process offers, the old one answers
//! with what it will use. With [`FEATURE_PRECOPY`] agreed, the old process sends
//! Precopy right after Accept while it still serves, the new one answers Ready
//! (or Nack) once it has decoded it. The old one may then send PrecopyRounds —
//! what changed since, each answered Ready — and only then does it pause and send
//! Snapshot, which then carries the changes since the last round (see
//! [`crate::precopy`]).
//!
//! The descriptors of a Snapshot ride on its header bytes (`SCM_RIGHTS`), in this
//! order: the `/dev/fuse` descriptor, the `auto_unmount` socket if
//! `has_unmount_socket`, then `fs_fds` descriptors of the filesystem (its
//! [`FdSlot`](crate::FdSlot)s, in slot order).
use std::fmt;
use std::time::Duration;

/// The first four bytes of every handoff message.
pub const MAGIC: [u8; 4] = *b"FLHO";
/// The version of this message protocol (the snapshot format is negotiated
/// separately, in Hello/Accept).
pub const PROTOCOL: u8 = 1;
/// Size of a message header.
pub const HEADER_LEN: usize = 12;
/// The longest reason text a Refuse or Nack may carry.
pub const MAX_REASON: usize = 4096;
/// The longest mountpoint a Snapshot may carry (`PATH_MAX`).
pub const MAX_MOUNTPOINT: usize = 4096;
/// Feature bit: the new process takes a pre-copied filesystem state
/// ([`crate::precopy`]) before the pause.
pub const FEATURE_PRECOPY: u32 = 1;
/// Feature bit: the new process takes over a mount served through io_uring
/// (docs/DESIGN.md, "Live handoff over io_uring"). Agreed only when the old
/// process serves through io_uring with its entries in a memfd: the Snapshot's
/// last filesystem descriptor is then that ring area, and after Commit the new
/// process sends RingsReady once its own entries are registered, the old one
/// answers RingsReleased once its rings are closed. An old process serving
/// through io_uring refuses a Hello without it (`BackendUnsupported`).
pub const FEATURE_URING: u32 = 2;
/// Every feature bit this release knows.
pub const FEATURES: u32 = FEATURE_PRECOPY | FEATURE_URING;
/// Fixed part of a Snapshot body before the mountpoint.
const SNAPSHOT_FIXED: usize = 8 + 1 + 1 + 1 + 8 + 4 + 4;

/// What a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// New process: the snapshot format versions it reads.
    Hello = 1,
    /// Old process: the version it will write.
    Accept = 2,
    /// Old process: no handoff (and why); nothing was touched.
    Refuse = 3,
    /// Old process: the snapshot, with the descriptors.
    Snapshot = 4,
    /// New process: restored, ready to serve.
    Ack = 5,
    /// New process: could not restore (and why).
    Nack = 6,
    /// Old process: stopped for good; serve now.
    Commit = 7,
    /// Old process, still serving: the filesystem's pre-copied state.
    Precopy = 8,
    /// New process: the pre-copied state is decoded; pause and send the rest.
    Ready = 9,
    /// Old process, still serving: changes since the pre-copy or the last round.
    PrecopyRound = 10,
    /// New process, after Commit ([`FEATURE_URING`]): its ring entries are
    /// registered; the old process may release its rings.
    RingsReady = 11,
    /// Old process ([`FEATURE_URING`]): its rings are closed; adopt what its
    /// entries held.
    RingsReleased = 12,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Accept,
            3 => Kind::Refuse,
            4 => Kind::Snapshot,
            5 => Kind::Ack,
            6 => Kind::Nack,
            7 => Kind::Commit,
            8 => Kind::Precopy,
            9 => Kind::Ready,
            10 => Kind::PrecopyRound,
            11 => Kind::RingsReady,
            12 => Kind::RingsReleased,
            _ => return None,
        })
    }

    /// The largest body this kind may have; `max_snapshot` bounds a Snapshot's
    /// snapshot bytes.
    pub fn max_body(self, max_snapshot: usize) -> usize {
        match self {
            Kind::Hello => 12,
            Kind::Accept => 6,
            Kind::Precopy | Kind::PrecopyRound => max_snapshot,
            Kind::Ready => 8,
            Kind::Refuse | Kind::Nack => MAX_REASON,
            Kind::Snapshot => SNAPSHOT_FIXED
                .saturating_add(MAX_MOUNTPOINT)
                .saturating_add(max_snapshot),
            Kind::Ack | Kind::Commit | Kind::RingsReady | Kind::RingsReleased => 8,
        }
    }
}

/// A message header, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The kind.
    pub kind: Kind,
    /// The body length.
    pub len: usize,
}

/// Why bytes are not a valid handoff message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageError {
    /// The magic is wrong: the peer does not speak this protocol.
    BadMagic([u8; 4]),
    /// Another version of the message protocol.
    UnsupportedProtocol(u8),
    /// A kind this protocol does not define.
    UnknownKind(u8),
    /// Reserved bytes are not zero.
    Reserved,
    /// The body is longer than this kind allows.
    TooLong {
        /// The kind.
        kind: Kind,
        /// Its announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A message arrived where another was expected.
    Unexpected {
        /// What arrived.
        got: Kind,
        /// What the protocol expected at this step.
        expected: &'static str,
    },
    /// The body does not have the layout of its kind.
    BadBody {
        /// The kind.
        kind: Kind,
        /// What is wrong.
        why: &'static str,
    },
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageError::BadMagic(m) => write!(
                f,
                "not a fuse-live handoff message (magic {m:02x?}); is the right program \
                 connected to the upgrade socket?"
            ),
            MessageError::UnsupportedProtocol(v) => write!(
                f,
                "handoff protocol version {v}, this program speaks {PROTOCOL}; \
                 upgrade in two steps through a release that speaks both"
            ),
            MessageError::UnknownKind(k) => write!(f, "unknown handoff message kind {k}"),
            MessageError::Reserved => {
                write!(f, "handoff message header has non-zero reserved bytes")
            }
            MessageError::TooLong { kind, len, max } => write!(
                f,
                "{kind:?} message of {len} bytes exceeds the limit of {max}; \
                 raise the snapshot size limit if the state is really that large"
            ),
            MessageError::Unexpected { got, expected } => {
                write!(f, "got a {got:?} message where {expected} was expected")
            }
            MessageError::BadBody { kind, why } => write!(f, "malformed {kind:?} message: {why}"),
        }
    }
}

impl std::error::Error for MessageError {}

/// Encodes a header.
pub fn header(kind: Kind, len: usize) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&MAGIC);
    h[4] = PROTOCOL;
    h[5] = kind as u8;
    // Callers bound every body far below 4 GiB; saturate rather than wrap.
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    h[8..].copy_from_slice(&len.to_le_bytes());
    h
}

/// Checks a header against the bounds (`max_snapshot` for a Snapshot's bytes).
pub fn parse_header(h: &[u8; HEADER_LEN], max_snapshot: usize) -> Result<Header, MessageError> {
    let mut magic = [0u8; 4];
    magic.copy_from_slice(&h[..4]);
    if magic != MAGIC {
        return Err(MessageError::BadMagic(magic));
    }
    if h[4] != PROTOCOL {
        return Err(MessageError::UnsupportedProtocol(h[4]));
    }
    let kind = Kind::from_u8(h[5]).ok_or(MessageError::UnknownKind(h[5]))?;
    if h[6] != 0 || h[7] != 0 {
        return Err(MessageError::Reserved);
    }
    let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    let max = kind.max_body(max_snapshot);
    let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
    if len_usize > max {
        return Err(MessageError::TooLong {
            kind,
            len: u64::from(len),
            max,
        });
    }
    Ok(Header {
        kind,
        len: len_usize,
    })
}

/// A cursor over a body that never reads past its end.
struct Reader<'a> {
    kind: Kind,
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MessageError> {
        if self.rest.len() < n {
            return Err(MessageError::BadBody {
                kind: self.kind,
                why: "shorter than its fields",
            });
        }
        let (a, b) = self.rest.split_at(n);
        self.rest = b;
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, MessageError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, MessageError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, MessageError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, MessageError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn end(self) -> Result<(), MessageError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(MessageError::BadBody {
                kind: self.kind,
                why: "trailing bytes",
            })
        }
    }
}

fn reader(kind: Kind, body: &[u8]) -> Reader<'_> {
    Reader { kind, rest: body }
}

/// Hello: the snapshot format versions the new process reads, and its pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Oldest format version it reads.
    pub min_version: u16,
    /// Newest format version it reads.
    pub max_version: u16,
    /// Its process id (informational; the kernel's `SO_PEERCRED` is what counts).
    pub pid: u32,
    /// The features it offers ([`FEATURE_PRECOPY`]); unknown bits are ignored.
    pub features: u32,
}

impl Hello {
    /// The whole message.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = header(Kind::Hello, 12).to_vec();
        v.extend_from_slice(&self.min_version.to_le_bytes());
        v.extend_from_slice(&self.max_version.to_le_bytes());
        v.extend_from_slice(&self.pid.to_le_bytes());
        v.extend_from_slice(&self.features.to_le_bytes());
        v
    }

    /// Decodes a Hello body.
    pub fn decode(body: &[u8]) -> Result<Hello, MessageError> {
        let mut r = reader(Kind::Hello, body);
        let mut h = Hello {
            min_version: r.u16()?,
            max_version: r.u16()?,
            pid: r.u32()?,
            features: 0,
        };
        if !r.rest.is_empty() {
            h.features = r.u32()?;
        }
        r.end()?;
        if h.min_version > h.max_version {
            return Err(MessageError::BadBody {
                kind: Kind::Hello,
                why: "min_version above max_version",
            });
        }
        Ok(h)
    }
}

/// Encodes an Accept: the snapshot format version and the features the old
/// process will use.
pub fn encode_accept(version: u16, features: u32) -> Vec<u8> {
    let mut v = header(Kind::Accept, 6).to_vec();
    v.extend_from_slice(&version.to_le_bytes());
    v.extend_from_slice(&features.to_le_bytes());
    v
}

/// Decodes an Accept body: `(version, features)` (features 0 if absent).
pub fn decode_accept(body: &[u8]) -> Result<(u16, u32), MessageError> {
    let mut r = reader(Kind::Accept, body);
    let v = r.u16()?;
    let features = if r.rest.is_empty() { 0 } else { r.u32()? };
    r.end()?;
    Ok((v, features))
}

/// Encodes a Refuse or Nack with `reason` (cut to [`MAX_REASON`] bytes at a
/// character boundary).
pub fn encode_reason(kind: Kind, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let text = &reason.as_bytes()[..end];
    let mut v = header(kind, text.len()).to_vec();
    v.extend_from_slice(text);
    v
}

/// Decodes a Refuse or Nack body (invalid UTF-8 is replaced, not refused: it is
/// only shown to a person).
pub fn decode_reason(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

/// Encodes a message whose body is one duration in nanoseconds (Ack, Commit).
pub fn encode_duration(kind: Kind, d: Duration) -> Vec<u8> {
    let mut v = header(kind, 8).to_vec();
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    v.extend_from_slice(&ns.to_le_bytes());
    v
}

/// Decodes an Ack or Commit body.
pub fn decode_duration(kind: Kind, body: &[u8]) -> Result<Duration, MessageError> {
    let mut r = reader(kind, body);
    let ns = r.u64()?;
    r.end()?;
    Ok(Duration::from_nanos(ns))
}

/// How the mount was made, as a Snapshot carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireMethod {
    /// `mount(2)`.
    Syscall,
    /// `fusermount3`, without `auto_unmount`.
    Fusermount,
    /// `fusermount3 -o auto_unmount`.
    FusermountAutoUnmount,
}

/// The fixed part of a Snapshot (everything but the snapshot bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Time from the pause to sending this message.
    pub since_pause: Duration,
    /// Whether the second descriptor is the `auto_unmount` socket.
    pub has_unmount_socket: bool,
    /// How the mount was made.
    pub method: WireMethod,
    /// The fusectl connection id, if known.
    pub connection_id: Option<u64>,
    /// How many of the filesystem's own descriptors follow.
    pub fs_fds: u32,
    /// The mountpoint (bytes of the path).
    pub mountpoint: Vec<u8>,
}

impl SnapshotMeta {
    /// The descriptors that must ride on this message.
    pub fn fd_count(&self) -> u64 {
        1 + u64::from(self.has_unmount_socket) + u64::from(self.fs_fds)
    }

    /// The header and the fixed part of the body, for a snapshot of `snapshot_len`
    /// bytes that follows.
    pub fn encode(&self, snapshot_len: usize) -> Vec<u8> {
        let body = SNAPSHOT_FIXED + self.mountpoint.len() + snapshot_len;
        let mut v = header(Kind::Snapshot, body).to_vec();
        let ns = u64::try_from(self.since_pause.as_nanos()).unwrap_or(u64::MAX);
        v.extend_from_slice(&ns.to_le_bytes());
        v.push(u8::from(self.has_unmount_socket));
        v.push(match self.method {
            WireMethod::Syscall => 0,
            WireMethod::Fusermount => 1,
            WireMethod::FusermountAutoUnmount => 2,
        });
        v.push(u8::from(self.connection_id.is_some()));
        v.extend_from_slice(&self.connection_id.unwrap_or(0).to_le_bytes());
        v.extend_from_slice(&self.fs_fds.to_le_bytes());
        let mlen = u32::try_from(self.mountpoint.len()).unwrap_or(u32::MAX);
        v.extend_from_slice(&mlen.to_le_bytes());
        v.extend_from_slice(&self.mountpoint);
        v
    }

    /// Decodes a Snapshot body into its fixed part and the snapshot bytes.
    pub fn decode(body: &[u8]) -> Result<(SnapshotMeta, &[u8]), MessageError> {
        let bad = |why| MessageError::BadBody {
            kind: Kind::Snapshot,
            why,
        };
        let mut r = reader(Kind::Snapshot, body);
        let since_pause = Duration::from_nanos(r.u64()?);
        let has_unmount_socket = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(bad("has_unmount_socket is neither 0 nor 1")),
        };
        let method = match r.u8()? {
            0 => WireMethod::Syscall,
            1 => WireMethod::Fusermount,
            2 => WireMethod::FusermountAutoUnmount,
            _ => return Err(bad("unknown mount method")),
        };
        let present = r.u8()?;
        let id = r.u64()?;
        let connection_id = match present {
            0 => None,
            1 => Some(id),
            _ => return Err(bad("connection_id_present is neither 0 nor 1")),
        };
        if has_unmount_socket && method != WireMethod::FusermountAutoUnmount {
            return Err(bad(
                "an auto_unmount socket for a mount without auto_unmount",
            ));
        }
        let fs_fds = r.u32()?;
        let mlen = usize::try_from(r.u32()?).unwrap_or(usize::MAX);
        if mlen == 0 || mlen > MAX_MOUNTPOINT {
            return Err(bad("mountpoint empty or longer than PATH_MAX"));
        }
        let mountpoint = r.take(mlen)?.to_vec();
        if mountpoint.first() != Some(&b'/') || mountpoint.contains(&0) {
            return Err(bad("mountpoint is not an absolute path"));
        }
        let snapshot = r.rest;
        Ok((
            SnapshotMeta {
                since_pause,
                has_unmount_socket,
                method,
                connection_id,
                fs_fds,
                mountpoint,
            },
            snapshot,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(msg: &[u8]) -> (Header, &[u8]) {
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&msg[..HEADER_LEN]);
        let h = parse_header(&h, 1 << 20).unwrap();
        assert_eq!(h.len, msg.len() - HEADER_LEN, "header length is the body's");
        (h, &msg[HEADER_LEN..])
    }

    #[test]
    fn round_trips() {
        let hello = Hello {
            min_version: 1,
            max_version: 3,
            pid: 42,
            features: FEATURE_PRECOPY,
        };
        let m = hello.encode();
        let (h, b) = split(&m);
        assert_eq!(h.kind, Kind::Hello);
        assert_eq!(Hello::decode(b).unwrap(), hello);
        // The first releases' Hello has no features word: none offered.
        let old = Hello::decode(&b[..8]).unwrap();
        assert_eq!(old.features, 0);
        assert_eq!((old.min_version, old.max_version, old.pid), (1, 3, 42));

        let m = encode_accept(7, FEATURE_PRECOPY);
        let (h, b) = split(&m);
        assert_eq!(
            (h.kind, decode_accept(b).unwrap()),
            (Kind::Accept, (7, FEATURE_PRECOPY))
        );
        assert_eq!(decode_accept(&b[..2]).unwrap(), (7, 0), "an old Accept");

        let m = encode_duration(Kind::Ready, Duration::from_millis(3));
        let (h, b) = split(&m);
        assert_eq!(h.kind, Kind::Ready);
        assert_eq!(
            decode_duration(Kind::Ready, b).unwrap(),
            Duration::from_millis(3)
        );
        let h = header(Kind::Precopy, 5);
        assert_eq!(parse_header(&h, 5).unwrap().len, 5);
        assert!(
            parse_header(&h, 4).is_err(),
            "a Precopy is bounded by max_snapshot"
        );

        let m = encode_reason(Kind::Nack, "no");
        let (h, b) = split(&m);
        assert_eq!((h.kind, decode_reason(b)), (Kind::Nack, "no".to_owned()));

        let d = Duration::from_micros(1234);
        let m = encode_duration(Kind::Commit, d);
        let (h, b) = split(&m);
        assert_eq!(decode_duration(h.kind, b).unwrap(), d);

        let meta = SnapshotMeta {
            since_pause: d,
            has_unmount_socket: true,
            method: WireMethod::FusermountAutoUnmount,
            connection_id: Some(77),
            fs_fds: 2,
            mountpoint: b"/mnt/x".to_vec(),
        };
        let mut m = meta.encode(3);
        m.extend_from_slice(b"abc");
        let (h, b) = split(&m);
        assert_eq!(h.kind, Kind::Snapshot);
        let (back, snap) = SnapshotMeta::decode(b).unwrap();
        assert_eq!((back, snap), (meta.clone(), &b"abc"[..]));
        assert_eq!(meta.fd_count(), 4);
    }

    #[test]
    fn bad_headers() {
        let mut h = header(Kind::Hello, 8);
        h[0] = b'X';
        assert!(matches!(
            parse_header(&h, 0),
            Err(MessageError::BadMagic(_))
        ));
        let mut h = header(Kind::Hello, 8);
        h[4] = 9;
        assert_eq!(
            parse_header(&h, 0),
            Err(MessageError::UnsupportedProtocol(9))
        );
        let mut h = header(Kind::Hello, 8);
        h[5] = 99;
        assert_eq!(parse_header(&h, 0), Err(MessageError::UnknownKind(99)));
        let mut h = header(Kind::Hello, 8);
        h[7] = 1;
        assert_eq!(parse_header(&h, 0), Err(MessageError::Reserved));
        let h = header(Kind::Hello, 13);
        assert!(matches!(
            parse_header(&h, 0),
            Err(MessageError::TooLong { .. })
        ));
        let h = header(Kind::Snapshot, 1 << 30);
        assert!(matches!(
            parse_header(&h, 1 << 20),
            Err(MessageError::TooLong { .. })
        ));
    }

    #[test]
    fn bad_bodies_never_panic() {
        assert!(Hello::decode(&[1, 0, 0]).is_err());
        assert!(
            Hello::decode(&[2, 0, 1, 0, 0, 0, 0, 0]).is_err(),
            "min > max"
        );
        assert!(decode_accept(&[1, 0, 0]).is_err());
        assert!(
            decode_accept(&[1, 0, 0, 0, 0]).is_err(),
            "half a features word"
        );
        assert!(Hello::decode(&[1, 0, 1, 0, 0, 0, 0, 0, 1]).is_err());
        assert!(decode_duration(Kind::Ack, &[0; 7]).is_err());
        let meta = SnapshotMeta {
            since_pause: Duration::ZERO,
            has_unmount_socket: false,
            method: WireMethod::Syscall,
            connection_id: None,
            fs_fds: 0,
            mountpoint: b"/m".to_vec(),
        };
        let good = meta.encode(0);
        let body = &good[HEADER_LEN..];
        // Every truncation and every single-byte change decodes or errs, never panics.
        for n in 0..body.len() {
            let _ = SnapshotMeta::decode(&body[..n]);
            for bit in 0..8 {
                let mut b = body.to_vec();
                b[n] ^= 1 << bit;
                let _ = SnapshotMeta::decode(&b);
            }
        }
        let mut relative = meta.clone();
        relative.mountpoint = b"m".to_vec();
        assert!(SnapshotMeta::decode(&relative.encode(0)[HEADER_LEN..]).is_err());
        assert_eq!(decode_reason(&[0xff, b'a']), "\u{fffd}a");
        let long = "é".repeat(MAX_REASON);
        let m = encode_reason(Kind::Refuse, &long);
        assert!(m.len() - HEADER_LEN <= MAX_REASON);
    }
}
