//! Fuzz harnesses for everything this crate reads from outside: snapshot files
//! ([`snapshot`]), handoff messages and whole handoff conversations from another
//! process ([`handoff`]), and the pre-copy's base, rounds and changes
//! ([`precopy`]). The cargo-fuzz targets in `fuzz/` are one-line wrappers; the
//! committed corpora replay under `cargo test` (`tests/fuzz_corpus.rs`).
//!
//! A harness never panics on malformed input (neither may the library); it
//! panics only when an invariant is violated, which is what the fuzzer reports.
//! See `docs/FUZZING.md` for each input's layout.
#![allow(missing_docs)]

use std::ffi::OsStr;
use std::io;
use std::time::Duration;

use fuse_session::{Entry, Errno, FileAttr, FileType, Filesystem, RequestContext};

use crate::format::{crc32, HEADER_LEN as SNAP_HEADER};
use crate::handoff::machine::{
    Incoming, NewAction, NewConfig, NewEvent, NewSide, OldAction, OldConfig, OldEvent, OldSide,
};
use crate::handoff::message::{self, Hello, Kind, SnapshotMeta, HEADER_LEN};
use crate::handoff::HandoffError;
use crate::{FdRestorer, FdSaver, FormatError, Precopy, PrecopyOps, SnapshotFs};

/// The largest body a harness conversation may announce (so a hostile length is
/// refused by the header check, as [`crate::handoff::HandoffOptions::max_snapshot`]
/// does it for real).
pub const MAX_SNAPSHOT: usize = 1 << 16;

// ---------------------------------------------------------------------------
// A small filesystem whose state, nodes and handles are plain values
// ---------------------------------------------------------------------------

/// The filesystem the typed harnesses restore: nodes are `u64` (root 0), handles
/// `u32`, its state the list of nodes it knows; pre-copy base and changes are
/// lists too.
#[derive(Debug, Default)]
pub struct FuzzFs {
    /// The nodes it knows (sorted, no duplicates once restored).
    pub known: Vec<u64>,
}

impl Filesystem for FuzzFs {
    type Node = u64;
    type Handle = u32;

    fn root(&self) -> u64 {
        0
    }

    fn lookup(
        &self,
        _: &RequestContext<'_>,
        _: &u64,
        name: &OsStr,
    ) -> fuse_session::Result<Entry<u64>> {
        let n: u64 = name
            .to_str()
            .and_then(|s| s.parse().ok())
            .filter(|n| self.known.contains(n))
            .ok_or(Errno::ENOENT)?;
        Ok(Entry {
            node: n,
            attr: FileAttr::new(n + 2, FileType::RegularFile, 0o644),
            entry_ttl: Duration::ZERO,
            attr_ttl: Duration::ZERO,
        })
    }

    fn open(
        &self,
        _: &RequestContext<'_>,
        node: &u64,
        _: fuse_session::OpenFlags,
        _: fuse_session::FuseOpenFlags,
    ) -> fuse_session::Result<fuse_session::Opened<u32>> {
        Ok(fuse_session::Opened::new(*node as u32))
    }
}

/// The state is refused if it is not sorted and free of duplicates, so restore
/// has a filesystem-level check to run.
fn check_known(known: &[u64]) -> Result<(), String> {
    if known.windows(2).any(|w| w[0] >= w[1]) {
        return Err("the known nodes are not sorted and unique".into());
    }
    Ok(())
}

impl SnapshotFs for FuzzFs {
    type State = Vec<u64>;

    fn save(&self, _: &mut FdSaver) -> io::Result<Vec<u64>> {
        Ok(self.known.clone())
    }

    fn restore(state: Vec<u64>, _: &mut FdRestorer) -> Result<Self, String> {
        check_known(&state)?;
        Ok(FuzzFs { known: state })
    }

    fn check_session(
        &self,
        nodes: &[fuse_session::NodeState<u64>],
        _: &[fuse_session::HandleState<u32>],
    ) -> Result<(), String> {
        match nodes
            .iter()
            .find(|n| n.node != 0 && self.known.binary_search(&n.node).is_err())
        {
            Some(n) => Err(format!("node {} is not known", n.node)),
            None => Ok(()),
        }
    }

    fn precopy() -> Option<PrecopyOps<Self>> {
        Some(PrecopyOps::new())
    }
}

impl Precopy for FuzzFs {
    type Base = Vec<u64>;
    /// Nodes added since.
    type Changes = Vec<u64>;

    fn precopy_begin(&self) -> io::Result<Vec<u8>> {
        postcard::to_allocvec(&self.known).map_err(io::Error::other)
    }

    fn precopy_changes(&self, _: &mut FdSaver) -> io::Result<Vec<u64>> {
        Ok(Vec::new())
    }

    fn precopy_round(&self) -> io::Result<Option<Vec<u64>>> {
        Ok(Some(self.known.clone()))
    }

    fn apply_round(base: &mut Vec<u64>, changes: Vec<u64>) -> Result<(), String> {
        base.extend(changes);
        base.sort_unstable();
        base.dedup();
        Ok(())
    }

    fn precopy_abort(&self) {}

    fn decode_base(bytes: &[u8]) -> Result<Vec<u64>, String> {
        match postcard::take_from_bytes::<Vec<u64>>(bytes) {
            Ok((v, [])) => Ok(v),
            Ok(_) => Err("trailing bytes after the base".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn restore_precopied(
        mut base: Vec<u64>,
        changes: Vec<u64>,
        _: &mut FdRestorer,
    ) -> Result<Self, String> {
        Self::apply_round(&mut base, changes)?;
        check_known(&base)?;
        Ok(FuzzFs { known: base })
    }
}

// ---------------------------------------------------------------------------
// Snapshot files
// ---------------------------------------------------------------------------

/// Rewrites the envelope's body length and CRC-32 to match what follows, so the
/// fuzzer gets past the checksum to the body decoder.
pub fn fix_envelope(bytes: &mut [u8]) {
    if bytes.len() < SNAP_HEADER {
        return;
    }
    let body_len = (bytes.len() - SNAP_HEADER) as u64;
    bytes[12..20].copy_from_slice(&body_len.to_le_bytes());
    let crc = crc32(&bytes[SNAP_HEADER..]);
    bytes[20..24].copy_from_slice(&crc.to_le_bytes());
}

/// `[mode] ++ snapshot file bytes`. Bit 0 of `mode`: fix the envelope's length
/// and checksum first ([`fix_envelope`]).
///
/// Every decoder must answer without panicking; and:
/// - [`crate::summarize`] succeeds exactly when [`crate::decode_raw`] does;
///   a raw snapshot re-encodes ([`crate::encode_raw`]) to bytes that decode to the
///   same raw snapshot;
/// - a typed, validated state ([`crate::decode_state`]) re-encodes
///   ([`crate::encode_state`]) to bytes no longer than the input that decode to
///   the same state and re-encode to themselves (overlong varints, which postcard
///   reads, are the only other encoding of a value);
/// - [`crate::restore`] succeeds only where `decode_state` does, and the restored
///   session's snapshot decodes back to the same tables.
pub fn snapshot(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    if mode & 1 != 0 {
        fix_envelope(&mut bytes);
    }
    let summary = crate::summarize(&bytes);
    match crate::decode_raw(&bytes) {
        Ok(raw) => {
            assert!(summary.is_ok(), "summarize refuses what decode_raw reads");
            let again = crate::encode_raw(&raw).expect("a decoded raw snapshot encodes");
            let back = crate::decode_raw(&again).expect("a re-encoded raw snapshot decodes");
            assert_eq!(back, raw, "raw round trip");
        }
        Err(e) => {
            assert!(summary.is_err(), "summarize reads what decode_raw refuses");
            let _ = e.to_string();
        }
    }
    type State = crate::StateOf<FuzzFs>;
    let typed = crate::decode_state::<u64, u32, Vec<u64>>(&bytes);
    if let Ok((state, fs)) = &typed {
        // Not byte-equal: postcard (and so the format) reads an overlong varint
        // (`ff .. fb 00` for `ff .. 7b`) as the same value, and the encoder writes
        // the shortest form. Equal values, never longer, and stable from there.
        let again = crate::encode_state(state, fs).expect("a decoded state encodes");
        assert!(again.len() <= bytes.len(), "re-encoding grew");
        let back =
            crate::decode_state::<u64, u32, Vec<u64>>(&again).expect("a re-encoded state decodes");
        assert_eq!((&back.0, &back.1), (state, fs), "state round trip");
        let third = crate::encode_state(&back.0, &back.1).expect("encodes");
        assert_eq!(third, again, "encoding is stable");
    }
    match crate::restore::<FuzzFs>(&bytes, &mut FdRestorer::new(Vec::new())) {
        Ok(session) => {
            let (state, _): (State, Vec<u64>) = match &typed {
                Ok(t) => t.clone(),
                Err(e) => panic!("restore accepts what decode_state refuses: {e}"),
            };
            let now = session.snapshot().expect("a restored session snapshots");
            assert_eq!(now.nodes.len(), state.nodes.len());
            assert_eq!(now.handles.len(), state.handles.len());
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

// ---------------------------------------------------------------------------
// Handoff conversations
// ---------------------------------------------------------------------------

/// Reads the peer's side of a conversation: `[fds] ++ header ++ body`, repeated.
/// `fds` 0xff is a timeout instead of a message.
struct Stream<'a> {
    rest: &'a [u8],
}

enum Next<'a> {
    Message(Incoming<'a>),
    Failed(HandoffError),
}

impl<'a> Stream<'a> {
    fn next(&mut self) -> Next<'a> {
        let Some((&fds, rest)) = self.rest.split_first() else {
            return Next::Failed(HandoffError::PeerGone("read a message"));
        };
        if fds == 0xff {
            self.rest = rest;
            return Next::Failed(HandoffError::Timeout("read a message"));
        }
        let Some((h, rest)) = rest.split_first_chunk::<HEADER_LEN>() else {
            self.rest = &[];
            return Next::Failed(HandoffError::PeerGone("read a header"));
        };
        let header = match message::parse_header(h, MAX_SNAPSHOT) {
            Ok(h) => h,
            Err(e) => {
                self.rest = &[];
                return Next::Failed(HandoffError::Message(e));
            }
        };
        if rest.len() < header.len {
            self.rest = &[];
            return Next::Failed(HandoffError::PeerGone("read a body"));
        }
        let (body, rest) = rest.split_at(header.len);
        self.rest = rest;
        Next::Message(Incoming {
            kind: header.kind,
            body,
            fds: usize::from(fds),
        })
    }
}

/// Checks that bytes a machine sends are one whole, valid message of `kinds`.
fn check_sent(bytes: &[u8], kinds: &[Kind]) -> Kind {
    let (h, body) = bytes
        .split_first_chunk::<HEADER_LEN>()
        .expect("a sent message has a header");
    let h = message::parse_header(h, 0).expect("a sent message's header is valid");
    assert_eq!(h.len, body.len(), "a sent message's length is its body's");
    assert!(kinds.contains(&h.kind), "sent {:?}", h.kind);
    match h.kind {
        Kind::Accept => {
            message::decode_accept(body).expect("a sent Accept decodes");
        }
        Kind::Hello => {
            Hello::decode(body).expect("a sent Hello decodes");
        }
        Kind::Ready | Kind::Ack | Kind::Commit => {
            message::decode_duration(h.kind, body).expect("a sent duration decodes");
        }
        _ => {}
    }
    h.kind
}

/// Every decoder of a message body on `m`: none may panic; what decodes encodes
/// back to itself.
fn decode_all(m: &Incoming<'_>) {
    if let Ok(h) = Hello::decode(m.body) {
        let again = h.encode();
        assert_eq!(Hello::decode(&again[HEADER_LEN..]), Ok(h));
    }
    if let Ok((v, f)) = message::decode_accept(m.body) {
        let again = message::encode_accept(v, f);
        assert_eq!(message::decode_accept(&again[HEADER_LEN..]), Ok((v, f)));
    }
    if let Ok(d) = message::decode_duration(m.kind, m.body) {
        let again = message::encode_duration(m.kind, d);
        assert_eq!(
            message::decode_duration(m.kind, &again[HEADER_LEN..]),
            Ok(d)
        );
    }
    if let Ok((meta, snap)) = SnapshotMeta::decode(m.body) {
        let mut again = meta.encode(snap.len());
        again.extend_from_slice(snap);
        assert_eq!(
            SnapshotMeta::decode(&again[HEADER_LEN..]),
            Ok((meta.clone(), snap))
        );
        assert!(meta.mountpoint.len() <= message::MAX_MOUNTPOINT);
    }
    let _ = message::decode_reason(m.body);
}

/// The local outcomes of a conversation, from the input's first bytes.
struct Local {
    byte: [u8; 4],
}

impl Local {
    fn bit(&self, n: usize) -> bool {
        self.byte[n / 8] & (1 << (n % 8)) != 0
    }
}

/// `[side+config, outcomes, outcomes, outcomes] ++ the peer's messages`, each
/// `[fds] ++ header ++ body` (`fds` 0xff: a timeout instead). Bit 0 of the first
/// byte: 0 runs the old side, 1 the new side. The other bits and bytes choose
/// the configuration and the local steps' results (see the code); the peer's
/// messages are fed in order whenever the machine receives; the end of the input
/// is end of stream.
///
/// Invariants: every action is answered in at most a few hundred steps, and the
/// machine then is finished; every message it sends is whole and valid for that
/// side; old side: never a commit without a valid Ack after a snapshot sent under
/// the pause, never a pre-copy step once paused, and an abort once paused is
/// `RolledBack`; new side: it serves only after its Ack went out, and a
/// Snapshot's offset is inside its body. Every body also goes through every
/// message decoder, whose results must re-encode to themselves.
pub fn handoff(data: &[u8]) {
    let _ = handoff_outcome(data);
}

/// How a [`handoff`] conversation ended: `Some(true)` committed (old side) or
/// serving (new side), `Some(false)` aborted, `None` for an input too short.
pub fn handoff_outcome(data: &[u8]) -> Option<bool> {
    let (cfg, rest) = data.split_first_chunk::<4>()?;
    let local = Local { byte: *cfg };
    let mut stream = Stream { rest };
    Some(if cfg[0] & 1 == 0 {
        handoff_old(&local, &mut stream)
    } else {
        handoff_new(&local, &mut stream)
    })
}

const MAX_STEPS: usize = 512;

fn handoff_old(local: &Local, stream: &mut Stream<'_>) -> bool {
    let config = OldConfig {
        version: 1 + u16::from(local.bit(1)),
        precopy: local.bit(2),
        uring: local.bit(3) && local.bit(4),
        uring_area: local.bit(3) && !local.bit(4),
        max_snapshot: if local.bit(5) { 100 } else { MAX_SNAPSHOT },
    };
    let mut m = OldSide::new(config);
    let mut action = m.handle(OldEvent::PeerChecked(if local.bit(6) && local.bit(7) {
        Err(HandoffError::PeerGone("credentials"))
    } else {
        Ok(())
    }));
    let mut rounds = 0u32;
    let mut snapshot_sent = false;
    let mut was_paused = false;
    let mut commit_sent = false;
    let mut released = false;
    for _ in 0..MAX_STEPS {
        was_paused |= m.paused();
        action = match action {
            OldAction::Recv => match stream.next() {
                Next::Message(msg) => {
                    decode_all(&msg);
                    m.handle(OldEvent::Received(msg))
                }
                Next::Failed(e) => m.handle(OldEvent::Failed(e)),
            },
            OldAction::Send(bytes) => {
                if check_sent(&bytes, &[Kind::Accept, Kind::RingsReleased]) == Kind::RingsReleased {
                    assert!(released, "RingsReleased before the rings were released");
                    if local.bit(13) && local.bit(14) {
                        m.handle(OldEvent::Failed(HandoffError::PeerGone(
                            "send RingsReleased",
                        )))
                    } else {
                        m.handle(OldEvent::Sent)
                    }
                } else {
                    assert!(!m.paused());
                    m.handle(OldEvent::Sent)
                }
            }
            OldAction::ReleaseRings => {
                assert!(config.uring_area, "rings released without io_uring");
                assert!(
                    commit_sent && !released,
                    "rings released before Commit, or twice"
                );
                released = true;
                m.handle(OldEvent::RingsReleased(Duration::from_millis(2)))
            }
            OldAction::TakeBase => {
                assert!(!m.paused(), "pre-copy under the pause");
                let r = if local.bit(8) {
                    Err(FormatError::FsSave("fuzz".into()))
                } else {
                    Ok(usize::from(local.byte[2]) * 4)
                };
                m.handle(OldEvent::BaseTaken(r))
            }
            OldAction::SendPrecopy(kind) => {
                assert!(matches!(kind, Kind::Precopy | Kind::PrecopyRound));
                assert!(!m.paused(), "pre-copy under the pause");
                m.handle(OldEvent::Sent)
            }
            OldAction::TakeRound => {
                assert!(!m.paused(), "pre-copy round under the pause");
                rounds += 1;
                let r = match local.byte[3] >> ((rounds % 4) * 2) & 3 {
                    0 => Ok(None),
                    1 => Ok(Some(10)),
                    2 => Ok(Some(crate::precopy::ROUND_ENOUGH)),
                    _ => Err(FormatError::FsSave("fuzz".into())),
                };
                m.handle(OldEvent::RoundTaken(r))
            }
            OldAction::PauseAndSnapshot => {
                assert!(m.paused());
                let r = if local.bit(9) && local.bit(10) {
                    Err(HandoffError::NotServing)
                } else {
                    Ok(50)
                };
                m.handle(OldEvent::SnapshotTaken(r))
            }
            OldAction::SendSnapshot => {
                assert!(m.paused());
                snapshot_sent = true;
                m.handle(OldEvent::Sent)
            }
            OldAction::Commit { .. } => {
                assert!(m.paused() && snapshot_sent, "Commit before a snapshot");
                if local.bit(11) && local.bit(12) {
                    m.handle(OldEvent::Failed(HandoffError::PeerGone("send Commit")))
                } else {
                    commit_sent = true;
                    m.handle(OldEvent::Sent)
                }
            }
            OldAction::Committed => {
                assert!(m.is_finished() && snapshot_sent && commit_sent);
                // Over io_uring the rings are released before the end (unless an
                // event out of order ended it, which a driver never feeds here).
                assert_eq!(
                    released, config.uring_area,
                    "rings released exactly over io_uring"
                );
                finished_old(&mut m);
                return true;
            }
            OldAction::Abort { error, refuse } => {
                assert!(m.is_finished());
                assert!(!commit_sent, "an abort after Commit went out: {error}");
                assert_eq!(
                    matches!(error, HandoffError::RolledBack(_)),
                    was_paused,
                    "an abort is RolledBack exactly once paused: {error}"
                );
                if let Some(r) = refuse {
                    check_sent(&r, &[Kind::Refuse]);
                }
                let _ = error.to_string();
                finished_old(&mut m);
                return false;
            }
        };
    }
    panic!("the old side did not finish in {MAX_STEPS} steps");
}

fn finished_old(m: &mut OldSide) {
    assert!(m.is_finished());
    assert!(matches!(
        m.handle(OldEvent::Sent),
        OldAction::Abort {
            error: HandoffError::OutOfOrder { .. },
            refuse: None
        }
    ));
}

fn handoff_new(local: &Local, stream: &mut Stream<'_>) -> bool {
    let config = NewConfig {
        versions: (1, 1 + u16::from(local.bit(1))),
        precopy: local.bit(2),
        pid: 1,
    };
    let mut m = NewSide::new(config);
    let mut action = m.handle(NewEvent::PeerChecked(Ok(())));
    let mut acked = false;
    let mut body_len = 0;
    let mut prepared = 0u32;
    let mut registered = false;
    for _ in 0..MAX_STEPS {
        action = match action {
            NewAction::Send(bytes) => {
                let kind = check_sent(
                    &bytes,
                    &[Kind::Hello, Kind::Ready, Kind::Ack, Kind::RingsReady],
                );
                acked |= kind == Kind::Ack;
                if kind == Kind::RingsReady {
                    assert!(registered, "RingsReady before the rings were registered");
                }
                if local.bit(3) && local.bit(4) && kind == Kind::Hello {
                    m.handle(NewEvent::Failed(HandoffError::PeerGone("send Hello")))
                } else {
                    m.handle(NewEvent::Sent)
                }
            }
            NewAction::Recv => match stream.next() {
                Next::Message(msg) => {
                    decode_all(&msg);
                    body_len = msg.body.len();
                    m.handle(NewEvent::Received(msg))
                }
                Next::Failed(e) => m.handle(NewEvent::Failed(e)),
            },
            NewAction::Agreed { version, features } => {
                assert!((config.versions.0..=config.versions.1).contains(&version));
                assert_eq!(features & !message::FEATURES, 0, "an unknown feature");
                // The new side always offers FEATURE_URING (it can adopt rings),
                // pre-copy only when configured.
                if !config.precopy {
                    assert_eq!(
                        features & message::FEATURE_PRECOPY,
                        0,
                        "a feature that was not offered"
                    );
                }
                m.handle(NewEvent::Receive {
                    can_precopy: !local.bit(5),
                })
            }
            NewAction::DecodeBase | NewAction::ApplyRound => {
                prepared += 1;
                let fail = local.byte[3] >> (prepared % 8) & 1 != 0 && local.bit(6);
                m.handle(NewEvent::Prepared(if fail {
                    Err(FormatError::BadPrecopy("fuzz".into()))
                } else {
                    Ok(Duration::from_nanos(u64::from(prepared)))
                }))
            }
            NewAction::Restore { meta, offset } => {
                assert!(offset <= body_len, "the snapshot bytes start past the body");
                assert!(!meta.mountpoint.is_empty());
                m.handle(NewEvent::Restored(if local.bit(7) {
                    Err(HandoffError::Snapshot(FormatError::NotInitialized))
                } else {
                    Ok(())
                }))
            }
            NewAction::Decide => m.handle(if local.bit(8) {
                NewEvent::Decline("fuzz".into())
            } else {
                NewEvent::Ack(Duration::from_millis(1))
            }),
            NewAction::Serve { .. } => {
                assert!(acked, "serving without an Ack");
                assert_eq!(m.features() & message::FEATURE_URING, 0, "io_uring skipped");
                finished_new(&mut m);
                return true;
            }
            NewAction::RegisterRings { .. } => {
                assert!(acked, "registering rings without an Ack");
                assert_ne!(
                    m.features() & message::FEATURE_URING,
                    0,
                    "rings without io_uring"
                );
                assert!(!registered, "registering twice");
                registered = !local.bit(9);
                m.handle(NewEvent::RingsRegistered(if registered {
                    Ok(Duration::from_millis(1))
                } else {
                    Err(HandoffError::NotServing)
                }))
            }
            NewAction::AdoptRings => {
                assert!(registered, "adopting without having registered");
                finished_new(&mut m);
                return true;
            }
            NewAction::Abort { error, nack } => {
                assert!(
                    !registered,
                    "an abort once the rings were registered: {error}"
                );
                if let Some(n) = nack {
                    check_sent(&n, &[Kind::Nack]);
                }
                let _ = error.to_string();
                finished_new(&mut m);
                return false;
            }
        };
    }
    panic!("the new side did not finish in {MAX_STEPS} steps");
}

fn finished_new(m: &mut NewSide) {
    assert!(m.is_finished());
    assert!(matches!(
        m.handle(NewEvent::Sent),
        NewAction::Abort {
            error: HandoffError::OutOfOrder { .. },
            nack: None
        }
    ));
}

// ---------------------------------------------------------------------------
// Pre-copy
// ---------------------------------------------------------------------------

/// Sets the CRC-32 in the first 4 bytes of a round or changes message.
pub fn fix_checked(bytes: &mut [u8]) {
    if bytes.len() >= 4 {
        let crc = crc32(&bytes[4..]);
        bytes[..4].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Splits `[len u16 LE] ++ part` off the front.
fn part(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return (&[], &[]);
    };
    let n = usize::from(u16::from_le_bytes(*len)).min(rest.len());
    rest.split_at(n)
}

/// `[mode] ++ [len u16] base ++ ([len u16] round)* ++ changes`: the pre-copied
/// base (`session_len u32, session snapshot, filesystem bytes`), rounds, and the
/// changes under the pause, as the new process receives them, for [`FuzzFs`].
/// `mode` bit 0: fix the base's embedded snapshot envelope (length and CRC);
/// bit 1: fix each round's and the changes' CRC; bits 4..6: how many rounds
/// follow the base (0 to 7).
///
/// Nothing may panic; a restored session must snapshot, and its tables must
/// validate.
pub fn precopy(data: &[u8]) {
    let _ = precopy_outcome(data);
}

/// Whether a [`precopy`] input restored a session.
pub fn precopy_outcome(data: &[u8]) -> bool {
    let Some((&mode, rest)) = data.split_first() else {
        return false;
    };
    let ops = PrecopyOps::<FuzzFs>::new();
    let (base, mut rest) = part(rest);
    let mut base = base.to_vec();
    if mode & 1 != 0 {
        if let Some((len, tail)) = base.split_first_chunk_mut::<4>() {
            let n = (u32::from_le_bytes(*len) as usize).min(tail.len());
            fix_envelope(&mut tail[..n]);
        }
    }
    let decoded = (ops.decode_base)(&base);
    let Ok(mut prepared) = decoded else {
        return false;
    };
    for _ in 0..(mode >> 4) & 7 {
        let (round, tail) = part(rest);
        rest = tail;
        let mut round = round.to_vec();
        if mode & 2 != 0 {
            fix_checked(&mut round);
        }
        if let Err(e) = (ops.apply_round)(&mut prepared, &round) {
            let _ = e.to_string();
            return false;
        }
    }
    let mut changes = rest.to_vec();
    if mode & 2 != 0 {
        fix_checked(&mut changes);
    }
    match (ops.restore)(prepared, &changes, &mut FdRestorer::new(Vec::new())) {
        Ok(session) => {
            let state = session.snapshot().expect("a restored session snapshots");
            state
                .validate()
                .expect("a restored session's tables validate");
            assert!(check_known(&session.filesystem().known).is_ok());
            true
        }
        Err(e) => {
            let _ = e.to_string();
            false
        }
    }
}

/// The pre-copy of a live session of [`FuzzFs`], as the old process sends it: the
/// base, one round, and the changes under the pause (for seeds).
///
/// # Panics
/// If the session is not initialized.
pub fn precopy_bytes(session: &fuse_session::Session<FuzzFs>) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let ops = PrecopyOps::<FuzzFs>::new();
    let base = (ops.begin)(session).expect("a pre-copy base");
    let round = (ops.round)(session)
        .expect("a pre-copy round")
        .unwrap_or_default();
    let changes = (ops.changes)(session, &mut FdSaver::new()).expect("the changes");
    (base, round, changes)
}
