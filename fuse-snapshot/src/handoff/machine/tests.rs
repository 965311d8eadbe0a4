//! Both machines against each other, and each against an adversary: no
//! processes, no sockets.
use std::collections::VecDeque;

use super::*;
use crate::handoff::message::{
    encode_accept, encode_duration, encode_reason, header, parse_header, WireMethod,
    FEATURE_PRECOPY, HEADER_LEN,
};
use crate::precopy::{MAX_ROUNDS, ROUND_ENOUGH};

const MS: Duration = Duration::from_millis(1);

fn old_config(precopy: bool) -> OldConfig {
    OldConfig {
        version: 1,
        precopy,
        uring: false,
        uring_area: false,
        max_snapshot: 1 << 20,
    }
}

fn new_config(precopy: bool) -> NewConfig {
    NewConfig {
        versions: (1, 1),
        precopy,
        pid: 7,
    }
}

fn hello(features: u32) -> Vec<u8> {
    Hello {
        min_version: 1,
        max_version: 1,
        pid: 7,
        features,
    }
    .encode()
}

fn meta(fs_fds: u32) -> SnapshotMeta {
    SnapshotMeta {
        since_pause: MS,
        has_unmount_socket: false,
        method: WireMethod::Syscall,
        connection_id: Some(3),
        fs_fds,
        mountpoint: b"/mnt".to_vec(),
    }
}

/// A whole message's bytes as the kind, body and descriptor count a driver feeds.
struct Msg {
    kind: Kind,
    body: Vec<u8>,
    fds: usize,
}

impl Msg {
    fn parse(bytes: &[u8], fds: usize) -> Msg {
        let h: [u8; HEADER_LEN] = bytes[..HEADER_LEN].try_into().unwrap();
        let h = parse_header(&h, 1 << 20).unwrap();
        assert_eq!(h.len, bytes.len() - HEADER_LEN);
        Msg {
            kind: h.kind,
            body: bytes[HEADER_LEN..].to_vec(),
            fds,
        }
    }

    fn of(kind: Kind, body: &[u8]) -> Msg {
        Msg {
            kind,
            body: body.to_vec(),
            fds: 0,
        }
    }

    fn incoming(&self) -> Incoming<'_> {
        Incoming {
            kind: self.kind,
            body: &self.body,
            fds: self.fds,
        }
    }
}

fn snapshot_msg(fs_fds: u32, len: usize) -> Msg {
    let m = meta(fs_fds);
    let mut bytes = m.encode(len);
    bytes.resize(bytes.len() + len, 0xab);
    Msg::parse(&bytes, m.fd_count() as usize)
}

fn gone() -> HandoffError {
    HandoffError::PeerGone("read")
}

// ---------------------------------------------------------------------------
// Both machines against each other
// ---------------------------------------------------------------------------

/// The local results each side's driver reports.
#[derive(Clone)]
struct Script {
    old: OldConfig,
    new: NewConfig,
    can_precopy: bool,
    base: Result<usize, &'static str>,
    /// Rounds the filesystem offers, in order (then none).
    rounds: Vec<usize>,
    snapshot: Result<usize, &'static str>,
    fs_fds: u32,
    prepared: Result<(), &'static str>,
    restored: Result<(), &'static str>,
    accept: bool,
    /// Over io_uring: whether the new process registers its entries.
    registered: Result<(), &'static str>,
}

impl Script {
    fn new(precopy: bool) -> Script {
        Script {
            old: old_config(precopy),
            new: new_config(precopy),
            can_precopy: precopy,
            base: Ok(1000),
            rounds: Vec::new(),
            snapshot: Ok(500),
            fs_fds: 2,
            prepared: Ok(()),
            restored: Ok(()),
            accept: true,
            registered: Ok(()),
        }
    }
}

#[derive(Debug)]
enum OldEnd {
    Committed,
    Aborted(HandoffError),
}

#[derive(Debug)]
enum NewEnd {
    Served,
    /// Over io_uring: the old entries adopted.
    Adopted,
    Aborted(HandoffError),
}

struct Run {
    old: OldEnd,
    new: NewEnd,
    old_side: OldSide,
    new_side: NewSide,
    /// Kinds as they crossed, in order.
    wire: Vec<(bool, Kind)>,
    /// Whether the old side was paused when it resumed (aborted).
    paused_when_aborted: bool,
    /// Whether the old side released its rings (io_uring).
    released: bool,
}

/// Runs both machines over two in-memory queues until both are finished. A side
/// that receives from an empty queue whose writer finished sees end of stream.
fn run(script: Script) -> Run {
    let mut old = OldSide::new(script.old);
    let mut new = NewSide::new(script.new);
    let mut to_new: VecDeque<Msg> = VecDeque::new();
    let mut to_old: VecDeque<Msg> = VecDeque::new();
    let mut wire = Vec::new();
    let mut rounds = script.rounds.clone().into_iter();
    let mut old_action = Some(old.handle(OldEvent::PeerChecked(Ok(()))));
    let mut new_action = Some(new.handle(NewEvent::PeerChecked(Ok(()))));
    let mut old_end = None;
    let mut new_end = None;
    let mut paused_when_aborted = false;
    let mut released = false;
    let mut pending_len = 0;
    for _ in 0..1000 {
        let mut progressed = false;
        // Old side, one action.
        if let Some(a) = old_action.take() {
            progressed = true;
            let next = match a {
                OldAction::Recv => match to_old.pop_front() {
                    Some(m) => Some(old.handle(OldEvent::Received(m.incoming()))),
                    None if new_end.is_some() => Some(old.handle(OldEvent::Failed(gone()))),
                    None => {
                        progressed = false;
                        Some(OldAction::Recv)
                    }
                },
                OldAction::Send(bytes) => {
                    let m = Msg::parse(&bytes, 0);
                    wire.push((true, m.kind));
                    to_new.push_back(m);
                    Some(old.handle(OldEvent::Sent))
                }
                OldAction::TakeBase => Some(
                    old.handle(OldEvent::BaseTaken(
                        script
                            .base
                            .inspect(|&l| pending_len = l)
                            .map_err(|e| FormatError::FsSave(e.into())),
                    )),
                ),
                OldAction::TakeRound => {
                    let r = rounds.next();
                    if let Some(l) = r {
                        pending_len = l;
                    }
                    Some(old.handle(OldEvent::RoundTaken(Ok(r))))
                }
                OldAction::SendPrecopy(kind) => {
                    let mut bytes = header(kind, pending_len).to_vec();
                    bytes.resize(HEADER_LEN + pending_len, 1);
                    wire.push((true, kind));
                    to_new.push_back(Msg::parse(&bytes, 0));
                    Some(old.handle(OldEvent::Sent))
                }
                OldAction::PauseAndSnapshot => {
                    assert!(old.paused());
                    Some(
                        old.handle(OldEvent::SnapshotTaken(script.snapshot.map_err(|e| {
                            HandoffError::Snapshot(FormatError::FsSave(e.into()))
                        }))),
                    )
                }
                OldAction::SendSnapshot => {
                    let m = snapshot_msg(script.fs_fds, script.snapshot.unwrap_or(0));
                    wire.push((true, m.kind));
                    to_new.push_back(m);
                    Some(old.handle(OldEvent::Sent))
                }
                OldAction::Commit { restore } => {
                    assert_eq!(restore, 3 * MS, "the new side's restore time");
                    let m = Msg::parse(&encode_duration(Kind::Commit, 9 * MS), 0);
                    wire.push((true, m.kind));
                    to_new.push_back(m);
                    Some(old.handle(OldEvent::Sent))
                }
                OldAction::ReleaseRings => {
                    assert!(!released, "rings released twice");
                    released = true;
                    Some(old.handle(OldEvent::RingsReleased(2 * MS)))
                }
                OldAction::Committed => {
                    old_end = Some(OldEnd::Committed);
                    None
                }
                OldAction::Abort { error, refuse } => {
                    paused_when_aborted = matches!(error, HandoffError::RolledBack(_));
                    if let Some(bytes) = refuse {
                        let m = Msg::parse(&bytes, 0);
                        wire.push((true, m.kind));
                        to_new.push_back(m);
                    }
                    old_end = Some(OldEnd::Aborted(error));
                    None
                }
            };
            old_action = next;
        }
        // New side, one action.
        if let Some(a) = new_action.take() {
            let mut moved = true;
            let next =
                match a {
                    NewAction::Send(bytes) => {
                        let m = Msg::parse(&bytes, 0);
                        wire.push((false, m.kind));
                        to_old.push_back(m);
                        Some(new.handle(NewEvent::Sent))
                    }
                    NewAction::Recv => match to_new.pop_front() {
                        Some(m) => Some(new.handle(NewEvent::Received(m.incoming()))),
                        None if old_end.is_some() => Some(new.handle(NewEvent::Failed(gone()))),
                        None => {
                            moved = false;
                            Some(NewAction::Recv)
                        }
                    },
                    NewAction::Agreed { version, features } => {
                        assert_eq!(version, 1);
                        assert_eq!(features, new.features());
                        Some(new.handle(NewEvent::Receive {
                            can_precopy: script.can_precopy,
                        }))
                    }
                    NewAction::DecodeBase | NewAction::ApplyRound => Some(
                        new.handle(NewEvent::Prepared(
                            script
                                .prepared
                                .map(|()| MS)
                                .map_err(|e| FormatError::BadPrecopy(e.into())),
                        )),
                    ),
                    NewAction::Restore { meta: m, offset } => {
                        assert_eq!(m, meta(script.fs_fds));
                        assert_eq!(offset, 27 + 4);
                        Some(new.handle(NewEvent::Restored(script.restored.map_err(|e| {
                            HandoffError::Snapshot(FormatError::FsRestore(e.into()))
                        }))))
                    }
                    NewAction::Decide => Some(new.handle(if script.accept {
                        NewEvent::Ack(3 * MS)
                    } else {
                        NewEvent::Decline("not today".into())
                    })),
                    NewAction::Serve { since_pause } => {
                        assert_eq!(since_pause, 9 * MS);
                        new_end = Some(NewEnd::Served);
                        None
                    }
                    NewAction::RegisterRings { since_pause } => {
                        assert_eq!(since_pause, 9 * MS);
                        Some(
                            new.handle(NewEvent::RingsRegistered(
                                script
                                    .registered
                                    .map(|()| 4 * MS)
                                    .map_err(|e| HandoffError::Prepare(e.into())),
                            )),
                        )
                    }
                    NewAction::AdoptRings => {
                        new_end = Some(NewEnd::Adopted);
                        None
                    }
                    NewAction::Abort { error, nack } => {
                        if let Some(bytes) = nack {
                            let m = Msg::parse(&bytes, 0);
                            wire.push((false, m.kind));
                            to_old.push_back(m);
                        }
                        new_end = Some(NewEnd::Aborted(error));
                        None
                    }
                };
            new_action = next;
            progressed |= moved;
        }
        if old_end.is_some() && new_end.is_some() {
            let (Some(o), Some(n)) = (old_end.take(), new_end.take()) else {
                unreachable!()
            };
            return Run {
                old: o,
                new: n,
                old_side: old,
                new_side: new,
                wire,
                paused_when_aborted,
                released,
            };
        }
        assert!(progressed, "both sides wait for each other: {wire:?}");
    }
    panic!("no end after 1000 steps: {wire:?}");
}

fn kinds(run: &Run) -> Vec<Kind> {
    run.wire.iter().map(|(_, k)| *k).collect()
}

#[test]
fn a_plain_handoff_commits() {
    let r = run(Script::new(false));
    assert!(matches!(r.old, OldEnd::Committed));
    assert!(matches!(r.new, NewEnd::Served));
    use Kind::*;
    assert_eq!(kinds(&r), [Hello, Accept, Snapshot, Ack, Commit]);
    assert!(!r.old_side.precopy());
}

#[test]
fn a_precopy_handoff_sends_rounds_while_they_shrink() {
    let mut s = Script::new(true);
    s.rounds = vec![ROUND_ENOUGH * 2, ROUND_ENOUGH, 10, 5];
    let r = run(s);
    assert!(matches!(r.old, OldEnd::Committed));
    assert!(matches!(r.new, NewEnd::Served));
    use Kind::*;
    assert_eq!(
        kinds(&r),
        [
            Hello,
            Accept,
            Precopy,
            Ready,
            PrecopyRound,
            Ready,
            PrecopyRound,
            Ready,
            PrecopyRound,
            Ready,
            Snapshot,
            Ack,
            Commit
        ],
        "a round under ROUND_ENOUGH is the last"
    );
    assert_eq!(r.old_side.precopy_rounds(), 3);
    assert_eq!(r.new_side.precopy_rounds(), 3);
    assert_eq!(r.old_side.precopy_bytes(), 1000 + ROUND_ENOUGH * 3 + 10);
}

#[test]
fn rounds_stop_at_max_rounds() {
    let mut s = Script::new(true);
    s.rounds = vec![ROUND_ENOUGH; 10];
    let r = run(s);
    assert!(matches!(r.old, OldEnd::Committed));
    assert_eq!(r.old_side.precopy_rounds(), MAX_ROUNDS);
    let n = kinds(&r)
        .iter()
        .filter(|k| **k == Kind::PrecopyRound)
        .count();
    assert_eq!(n, MAX_ROUNDS as usize);
}

#[test]
fn precopy_needs_both_sides() {
    for (old, new) in [(true, false), (false, true)] {
        let mut s = Script::new(false);
        s.old.precopy = old;
        s.new.precopy = new;
        s.can_precopy = new;
        let r = run(s);
        assert!(matches!(r.old, OldEnd::Committed));
        assert!(!kinds(&r).contains(&Kind::Precopy), "{old} {new}");
        assert_eq!(r.new_side.features(), 0);
    }
}

#[test]
fn a_type_without_precopy_declines_an_agreed_one() {
    let mut s = Script::new(true);
    s.can_precopy = false;
    let r = run(s);
    assert!(matches!(
        r.new,
        NewEnd::Aborted(HandoffError::PrecopyUnsupported)
    ));
    // The old side was waiting for Ready: it hears Nack and serves on, unpaused.
    assert!(matches!(r.old, OldEnd::Aborted(HandoffError::Refused(_))));
    assert!(!r.paused_when_aborted);
}

#[test]
fn no_common_version_is_refused_before_anything_is_touched() {
    let mut s = Script::new(true);
    s.new.versions = (2, 3);
    let r = run(s);
    assert!(matches!(
        r.old,
        OldEnd::Aborted(HandoffError::VersionMismatch { .. })
    ));
    assert!(matches!(r.new, NewEnd::Aborted(HandoffError::Refused(_))));
    assert_eq!(kinds(&r), [Kind::Hello, Kind::Refuse]);
}

#[test]
fn a_ring_mount_with_a_memfd_area_is_handed_to_a_new_process_offering_rings() {
    let mut s = Script::new(false);
    s.old.uring_area = true;
    let r = run(s);
    assert!(matches!(r.old, OldEnd::Committed), "{:?}", r.old);
    assert!(matches!(r.new, NewEnd::Adopted), "{:?}", r.new);
    // After Commit: the new process registers, says so; the old one releases
    // its rings, says so; the new one adopts the old entries.
    use Kind::*;
    assert_eq!(
        kinds(&r),
        [
            Hello,
            Accept,
            Snapshot,
            Ack,
            Commit,
            RingsReady,
            RingsReleased
        ]
    );
    assert!(r.released);
    assert!(r.old_side.after_commit_problem().is_none());
    assert!(r.new_side.after_commit_problem().is_none());
    assert_ne!(r.new_side.features() & FEATURE_URING, 0);
}

#[test]
fn a_ring_mount_is_refused_to_a_new_process_that_does_not_offer_rings() {
    for features in [0, FEATURE_PRECOPY] {
        let mut m = OldSide::new(OldConfig {
            uring_area: true,
            ..old_config(true)
        });
        m.handle(OldEvent::PeerChecked(Ok(())));
        let h = Msg::parse(&hello(features), 0);
        match m.handle(OldEvent::Received(h.incoming())) {
            OldAction::Abort {
                error: HandoffError::BackendUnsupported,
                refuse: Some(_),
            } => {}
            other => panic!("features {features}: {other:?}"),
        }
    }
    // Offered: accepted with the bit.
    let mut m = OldSide::new(OldConfig {
        uring_area: true,
        ..old_config(false)
    });
    m.handle(OldEvent::PeerChecked(Ok(())));
    let h = Msg::parse(&hello(FEATURE_URING), 0);
    match m.handle(OldEvent::Received(h.incoming())) {
        OldAction::Send(bytes) => {
            let accept = Msg::parse(&bytes, 0);
            assert_eq!(
                message::decode_accept(&accept.body).unwrap(),
                (1, FEATURE_URING)
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_io_uring_mount_is_refused() {
    let mut s = Script::new(false);
    s.old.uring = true;
    let r = run(s);
    assert!(matches!(
        r.old,
        OldEnd::Aborted(HandoffError::BackendUnsupported)
    ));
    assert!(matches!(r.new, NewEnd::Aborted(HandoffError::Refused(_))));
}

#[test]
fn failures_before_the_pause_do_not_pause() {
    let mut s = Script::new(true);
    s.base = Err("disk on fire");
    let r = run(s);
    assert!(matches!(r.old, OldEnd::Aborted(HandoffError::Snapshot(_))));
    assert!(matches!(r.new, NewEnd::Aborted(HandoffError::Refused(_))));
    assert!(!r.paused_when_aborted);

    let mut s = Script::new(true);
    s.prepared = Err("bad base");
    let r = run(s);
    assert!(matches!(r.new, NewEnd::Aborted(HandoffError::Snapshot(_))));
    assert!(matches!(r.old, OldEnd::Aborted(HandoffError::Refused(_))));
    assert!(!r.paused_when_aborted);

    let mut s = Script::new(true);
    s.base = Ok(s.old.max_snapshot + 1);
    let r = run(s);
    assert!(matches!(r.old, OldEnd::Aborted(HandoffError::Snapshot(_))));
    assert!(
        !kinds(&r).contains(&Kind::Precopy),
        "an oversize base is not sent"
    );
}

#[test]
fn failures_under_the_pause_roll_back() {
    let mut s = Script::new(false);
    s.snapshot = Err("cannot save");
    let r = run(s);
    assert!(r.paused_when_aborted);
    assert!(matches!(r.new, NewEnd::Aborted(HandoffError::Refused(_))));

    let mut s = Script::new(true);
    s.restored = Err("bad state");
    let r = run(s);
    assert!(r.paused_when_aborted);
    match &r.old {
        OldEnd::Aborted(HandoffError::RolledBack(e)) => {
            assert!(matches!(**e, HandoffError::Refused(ref why) if why.contains("bad state")))
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(r.new, NewEnd::Aborted(HandoffError::Snapshot(_))));

    let mut s = Script::new(false);
    s.accept = false;
    let r = run(s);
    assert!(r.paused_when_aborted);
    assert!(!kinds(&r).contains(&Kind::Commit));
}

// ---------------------------------------------------------------------------
// The old side against an adversary
// ---------------------------------------------------------------------------

/// Events of the good path, by step; messages are built per call.
fn old_event(step: usize, m: &Msg) -> OldEvent<'_> {
    match step {
        0 => OldEvent::PeerChecked(Ok(())),
        1 | 5 | 8 | 11 => OldEvent::Received(m.incoming()),
        2 | 4 | 7 | 10 | 12 => OldEvent::Sent,
        3 => OldEvent::BaseTaken(Ok(100)),
        6 => OldEvent::RoundTaken(Ok(Some(10))),
        9 => OldEvent::SnapshotTaken(Ok(50)),
        _ => unreachable!(),
    }
}

fn old_msg(step: usize) -> Msg {
    match step {
        1 => Msg::parse(&hello(FEATURE_PRECOPY), 0),
        5 | 8 => Msg::parse(&encode_duration(Kind::Ready, MS), 0),
        11 => Msg::parse(&encode_duration(Kind::Ack, MS), 0),
        _ => Msg::of(Kind::Hello, &[]),
    }
}

const OLD_STEPS: usize = 13;

/// An old side after the first `k` events of the good path.
fn old_after(k: usize) -> OldSide {
    let mut m = OldSide::new(old_config(true));
    for step in 0..k {
        let msg = old_msg(step);
        let a = m.handle(old_event(step, &msg));
        assert!(!matches!(a, OldAction::Abort { .. }), "step {step}: {a:?}");
    }
    m
}

fn every_kind() -> [Kind; 10] {
    use Kind::*;
    [
        Hello,
        Accept,
        Refuse,
        Snapshot,
        Ack,
        Nack,
        Commit,
        Precopy,
        Ready,
        PrecopyRound,
    ]
}

#[test]
fn the_old_good_path() {
    let mut m = OldSide::new(old_config(true));
    let mut got = Vec::new();
    for step in 0..OLD_STEPS {
        let msg = old_msg(step);
        got.push(format!("{:?}", m.handle(old_event(step, &msg))));
        assert_eq!(
            m.paused(),
            (8..OLD_STEPS - 1).contains(&step),
            "step {step}"
        );
    }
    let names: Vec<&str> = got
        .iter()
        .map(|s| s.split(['(', ' ', '{']).next().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "Recv",
            "Send",
            "TakeBase",
            "SendPrecopy",
            "Recv",
            "TakeRound",
            "SendPrecopy",
            "Recv",
            "PauseAndSnapshot",
            "SendSnapshot",
            "Recv",
            "Commit",
            "Committed"
        ]
    );
    assert!(m.is_finished());
    assert_eq!((m.precopy_rounds(), m.precopy_bytes()), (1, 110));
}

/// Checks an old side's abort: never a commit; a Refuse exactly when `refuse`;
/// wrapped in RolledBack exactly when the workers were paused.
fn assert_old_abort(a: OldAction, paused: bool, refuse: bool, what: &str) -> HandoffError {
    match a {
        OldAction::Abort { error, refuse: r } => {
            assert_eq!(r.is_some(), refuse, "{what}: refuse");
            if let Some(r) = r {
                assert_eq!(Msg::parse(&r, 0).kind, Kind::Refuse);
            }
            match error {
                HandoffError::RolledBack(e) => {
                    assert!(paused, "{what}: rolled back while not paused");
                    *e
                }
                e => {
                    assert!(!paused, "{what}: paused but not rolled back: {e}");
                    e
                }
            }
        }
        other => panic!("{what}: expected an abort, got {other:?}"),
    }
}

#[test]
fn old_side_unexpected_messages_in_each_state() {
    for k in 0..OLD_STEPS {
        let expected = old_msg(k).kind;
        let receives = matches!(k, 1 | 5 | 8 | 11);
        for kind in every_kind() {
            if receives && kind == expected {
                continue;
            }
            let mut m = old_after(k);
            let paused = m.paused();
            let msg = Msg::of(kind, &[0; 8]);
            let a = m.handle(OldEvent::Received(msg.incoming()));
            let what = format!("step {k}, {kind:?}");
            // A driver's out-of-order event is a local failure: the peer is told.
            let e = assert_old_abort(a, paused, !receives || k <= 1, &what);
            if receives {
                let nack = kind == Kind::Nack && k != 1;
                assert!(
                    matches!(e, HandoffError::Message(MessageError::Unexpected { .. }))
                        || (nack && matches!(e, HandoffError::Refused(_))),
                    "{what}: {e:?}"
                );
            } else {
                assert!(
                    matches!(e, HandoffError::OutOfOrder { .. }),
                    "{what}: {e:?}"
                );
            }
            assert!(m.is_finished());
            // Finished is final: anything more is refused, nothing is sent.
            let again = m.handle(OldEvent::Sent);
            assert!(matches!(
                again,
                OldAction::Abort {
                    error: HandoffError::OutOfOrder { .. },
                    refuse: None
                }
            ));
        }
    }
}

#[test]
fn old_side_end_of_stream_and_timeouts_at_each_step() {
    for k in 0..OLD_STEPS {
        for e in [gone(), HandoffError::Timeout("read")] {
            let mut m = old_after(k);
            let paused = m.paused();
            let a = m.handle(OldEvent::Failed(e));
            let e = assert_old_abort(a, paused, k <= 1, &format!("step {k}"));
            assert!(matches!(
                e,
                HandoffError::PeerGone(_) | HandoffError::Timeout(_)
            ));
        }
    }
}

#[test]
fn old_side_nack_and_bad_bodies() {
    // A Nack where Ready or Ack is awaited ends the attempt with its reason.
    for k in [5, 8, 11] {
        let mut m = old_after(k);
        let paused = m.paused();
        let nack = Msg::parse(&encode_reason(Kind::Nack, "no thanks"), 0);
        let e = assert_old_abort(
            m.handle(OldEvent::Received(nack.incoming())),
            paused,
            false,
            "nack",
        );
        assert!(matches!(e, HandoffError::Refused(ref why) if why == "no thanks"));
        // A short body of the right kind is malformed.
        let mut m = old_after(k);
        let short = Msg::of(old_msg(k).kind, &[0; 7]);
        let e = assert_old_abort(
            m.handle(OldEvent::Received(short.incoming())),
            paused,
            false,
            "short",
        );
        assert!(matches!(
            e,
            HandoffError::Message(MessageError::BadBody { .. })
        ));
        // Descriptors on a message that carries none.
        let mut m = old_after(k);
        let mut with_fds = old_msg(k);
        with_fds.fds = 1;
        let e = assert_old_abort(
            m.handle(OldEvent::Received(with_fds.incoming())),
            paused,
            false,
            "fds",
        );
        assert!(matches!(
            e,
            HandoffError::Message(MessageError::BadBody { .. })
        ));
    }
    // A malformed Hello is refused.
    let mut m = old_after(1);
    let bad = Msg::of(Kind::Hello, &[2, 0, 1, 0, 0, 0, 0, 0]);
    let e = assert_old_abort(
        m.handle(OldEvent::Received(bad.incoming())),
        false,
        true,
        "min > max",
    );
    assert!(matches!(e, HandoffError::Message(_)));
}

#[test]
fn old_side_duplicates() {
    // A second Hello, Ready or Ack where the next step's message is awaited.
    for (k, dup) in [(5, 1), (8, 5), (11, 8), (11, 1)] {
        let mut m = old_after(k);
        let paused = m.paused();
        let msg = old_msg(dup);
        let a = m.handle(OldEvent::Received(msg.incoming()));
        if msg.kind == old_msg(k).kind {
            // A Ready is the awaited kind: a duplicate is read as the next answer.
            assert!(!matches!(a, OldAction::Abort { .. }));
            continue;
        }
        let e = assert_old_abort(a, paused, false, "duplicate");
        assert!(matches!(
            e,
            HandoffError::Message(MessageError::Unexpected { .. })
        ));
    }
    // A second Ack after Commit went out changes nothing.
    let mut m = old_after(OLD_STEPS);
    assert!(m.is_finished());
    let ack = old_msg(11);
    assert!(matches!(
        m.handle(OldEvent::Received(ack.incoming())),
        OldAction::Abort { refuse: None, .. }
    ));
}

#[test]
fn old_side_features_not_offered() {
    // A Hello without the features word (the first releases): no pre-copy.
    let mut m = OldSide::new(old_config(true));
    m.handle(OldEvent::PeerChecked(Ok(())));
    let old_hello = Msg::of(Kind::Hello, &hello(0)[HEADER_LEN..HEADER_LEN + 8]);
    match m.handle(OldEvent::Received(old_hello.incoming())) {
        OldAction::Send(bytes) => {
            let accept = Msg::parse(&bytes, 0);
            assert_eq!(message::decode_accept(&accept.body).unwrap(), (1, 0));
        }
        other => panic!("{other:?}"),
    }
    assert!(!m.precopy());
    assert!(matches!(
        m.handle(OldEvent::Sent),
        OldAction::PauseAndSnapshot
    ));
    // Unknown feature bits are ignored, not accepted.
    let mut m = OldSide::new(old_config(true));
    m.handle(OldEvent::PeerChecked(Ok(())));
    let h = Msg::parse(&hello(0xffff_fffe), 0);
    match m.handle(OldEvent::Received(h.incoming())) {
        OldAction::Send(bytes) => {
            assert_eq!(
                message::decode_accept(&Msg::parse(&bytes, 0).body).unwrap(),
                (1, 0)
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn old_side_oversize_rounds_are_not_sent() {
    let mut m = old_after(6);
    let e = assert_old_abort(
        m.handle(OldEvent::RoundTaken(Ok(Some(usize::MAX)))),
        false,
        true,
        "huge round",
    );
    assert!(matches!(e, HandoffError::Snapshot(_)));
}

#[test]
fn old_side_untrusted_peer_is_refused() {
    let mut m = OldSide::new(old_config(true));
    let e = HandoffError::PeerNotTrusted {
        peer_uid: 1,
        peer_pid: 2,
        our_uid: 3,
    };
    let e = assert_old_abort(m.handle(OldEvent::PeerChecked(Err(e))), false, true, "cred");
    assert!(matches!(e, HandoffError::PeerNotTrusted { .. }));
}

// ---------------------------------------------------------------------------
// The new side against an adversary
// ---------------------------------------------------------------------------

const NEW_STEPS: usize = 15;

fn new_msg(step: usize) -> Msg {
    match step {
        2 => Msg::parse(&encode_accept(1, FEATURE_PRECOPY), 0),
        4 => Msg::of(Kind::Precopy, &[1; 100]),
        7 => Msg::of(Kind::PrecopyRound, &[2; 10]),
        10 => snapshot_msg(1, 20),
        14 => Msg::parse(&encode_duration(Kind::Commit, MS), 0),
        _ => Msg::of(Kind::Hello, &[]),
    }
}

fn new_event(step: usize, m: &Msg) -> NewEvent<'_> {
    match step {
        0 => NewEvent::PeerChecked(Ok(())),
        1 | 6 | 9 | 13 => NewEvent::Sent,
        2 | 4 | 7 | 10 | 14 => NewEvent::Received(m.incoming()),
        3 => NewEvent::Receive { can_precopy: true },
        5 | 8 => NewEvent::Prepared(Ok(MS)),
        11 => NewEvent::Restored(Ok(())),
        12 => NewEvent::Ack(MS),
        _ => unreachable!(),
    }
}

fn new_after(k: usize) -> NewSide {
    let mut m = NewSide::new(new_config(true));
    for step in 0..k {
        let msg = new_msg(step);
        let a = m.handle(new_event(step, &msg));
        assert!(!matches!(a, NewAction::Abort { .. }), "step {step}: {a:?}");
    }
    m
}

/// Which steps wait for a message, and whether a failure there is told (Nack).
fn new_receives(k: usize) -> Option<bool> {
    match k {
        2 | 14 => Some(false),
        4 | 7 | 10 => Some(true),
        _ => None,
    }
}

fn assert_new_abort(a: NewAction, nack: bool, what: &str) -> HandoffError {
    match a {
        NewAction::Abort { error, nack: n } => {
            assert_eq!(n.is_some(), nack, "{what}: nack");
            if let Some(n) = n {
                assert_eq!(Msg::parse(&n, 0).kind, Kind::Nack);
            }
            error
        }
        other => panic!("{what}: expected an abort, got {other:?}"),
    }
}

#[test]
fn the_new_good_path() {
    let mut m = NewSide::new(new_config(true));
    let mut names = Vec::new();
    for step in 0..NEW_STEPS {
        let msg = new_msg(step);
        let a = m.handle(new_event(step, &msg));
        names.push(
            format!("{a:?}")
                .split(['(', ' ', '{'])
                .next()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(
        names,
        [
            "Send",
            "Recv",
            "Agreed",
            "Recv",
            "DecodeBase",
            "Send",
            "Recv",
            "ApplyRound",
            "Send",
            "Recv",
            "Restore",
            "Decide",
            "Send",
            "Recv",
            "Serve"
        ]
    );
    assert!(m.is_finished());
    assert_eq!(m.precopy_rounds(), 1);
}

#[test]
fn new_side_unexpected_messages_in_each_state() {
    for k in 0..NEW_STEPS {
        for kind in every_kind() {
            let mut m = new_after(k);
            let receives = new_receives(k);
            let expected = new_msg(k).kind;
            if receives.is_some() && kind == expected {
                continue;
            }
            // Allowed alternatives: Refuse before the Snapshot, a round in its place.
            if matches!(k, 2 | 4 | 7 | 10) && kind == Kind::Refuse {
                let msg = Msg::parse(&encode_reason(Kind::Refuse, "busy"), 0);
                let e = assert_new_abort(
                    m.handle(NewEvent::Received(msg.incoming())),
                    false,
                    "refuse",
                );
                assert!(matches!(e, HandoffError::Refused(ref why) if why == "busy"));
                continue;
            }
            if matches!(k, 7 | 10) && matches!(kind, Kind::PrecopyRound | Kind::Snapshot) {
                continue;
            }
            let msg = Msg::of(kind, &[0; 8]);
            let a = m.handle(NewEvent::Received(msg.incoming()));
            let what = format!("step {k}, {kind:?}");
            let tell = receives.unwrap_or(!matches!(k, 0..=2));
            let e = assert_new_abort(a, tell, &what);
            if receives.is_some() {
                assert!(
                    matches!(e, HandoffError::Message(MessageError::Unexpected { .. })),
                    "{what}: {e:?}"
                );
            } else {
                assert!(
                    matches!(e, HandoffError::OutOfOrder { .. }),
                    "{what}: {e:?}"
                );
            }
            assert!(m.is_finished());
        }
    }
}

#[test]
fn new_side_end_of_stream_at_each_receive() {
    for k in 0..NEW_STEPS {
        let Some(tell) = new_receives(k) else {
            continue;
        };
        let mut m = new_after(k);
        let e = assert_new_abort(m.handle(NewEvent::Failed(gone())), tell, "eof");
        assert!(matches!(e, HandoffError::PeerGone(_)));
    }
    // A Hello that could not be sent: a Refuse waiting to be read says more...
    let mut m = new_after(1);
    assert!(matches!(
        m.handle(NewEvent::Failed(HandoffError::PeerGone("send"))),
        NewAction::Recv
    ));
    let refuse = Msg::parse(&encode_reason(Kind::Refuse, "uid"), 0);
    let e = assert_new_abort(m.handle(NewEvent::Received(refuse.incoming())), false, "r");
    assert!(matches!(e, HandoffError::Refused(_)));
    // ... and without one, the send's error is reported.
    let mut m = new_after(1);
    m.handle(NewEvent::Failed(HandoffError::PeerGone("send Hello")));
    let e = assert_new_abort(m.handle(NewEvent::Failed(gone())), false, "eof");
    assert!(matches!(e, HandoffError::PeerGone("send Hello")));
}

#[test]
fn new_side_accept_checks() {
    // A feature that was not offered.
    let mut m = NewSide::new(new_config(false));
    m.handle(NewEvent::PeerChecked(Ok(())));
    m.handle(NewEvent::Sent);
    let accept = Msg::parse(&encode_accept(1, FEATURE_PRECOPY), 0);
    let e = assert_new_abort(m.handle(NewEvent::Received(accept.incoming())), true, "f");
    assert!(matches!(
        e,
        HandoffError::Message(MessageError::BadBody { .. })
    ));
    // A version outside the range.
    let mut m = new_after(2);
    let accept = Msg::parse(&encode_accept(9, 0), 0);
    let e = assert_new_abort(m.handle(NewEvent::Received(accept.incoming())), true, "v");
    assert!(matches!(e, HandoffError::VersionMismatch { .. }));
    // An Accept without the features word (the first releases): no pre-copy.
    let mut m = new_after(2);
    let accept = Msg::of(Kind::Accept, &[1, 0]);
    assert!(matches!(
        m.handle(NewEvent::Received(accept.incoming())),
        NewAction::Agreed {
            version: 1,
            features: 0
        }
    ));
    assert!(matches!(
        m.handle(NewEvent::Receive { can_precopy: true }),
        NewAction::Recv
    ));
    // Then a round is unexpected.
    let round = Msg::of(Kind::PrecopyRound, &[0; 4]);
    let e = assert_new_abort(
        m.handle(NewEvent::Received(round.incoming())),
        true,
        "round",
    );
    assert!(matches!(
        e,
        HandoffError::Message(MessageError::Unexpected { .. })
    ));
}

#[test]
fn new_side_snapshot_checks() {
    // The descriptor count must match the message.
    let mut m = new_after(10);
    let mut snap = snapshot_msg(1, 20);
    snap.fds = 1;
    let e = assert_new_abort(m.handle(NewEvent::Received(snap.incoming())), true, "fds");
    assert!(matches!(
        e,
        HandoffError::Message(MessageError::BadBody { .. })
    ));
    // A hostile mountpoint length.
    let mut m = new_after(10);
    let mut snap = snapshot_msg(0, 0);
    let at = 8 + 1 + 1 + 1 + 8 + 4;
    snap.body[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let e = assert_new_abort(m.handle(NewEvent::Received(snap.incoming())), true, "len");
    assert!(matches!(
        e,
        HandoffError::Message(MessageError::BadBody { .. })
    ));
    // Every truncation of the fixed part is an error, never a panic.
    let full = snapshot_msg(0, 0);
    for n in 0..full.body.len() {
        let mut m = new_after(10);
        let cut = Msg {
            kind: Kind::Snapshot,
            body: full.body[..n].to_vec(),
            fds: 1,
        };
        assert_new_abort(m.handle(NewEvent::Received(cut.incoming())), true, "cut");
    }
    // A failed restore is told; a decline is told with its reason.
    let mut m = new_after(11);
    let e = HandoffError::Snapshot(FormatError::NotInitialized);
    assert_new_abort(m.handle(NewEvent::Restored(Err(e))), true, "restore");
    let mut m = new_after(12);
    match m.handle(NewEvent::Decline("later".into())) {
        NewAction::Abort {
            nack: Some(n),
            error,
        } => {
            let n = Msg::parse(&n, 0);
            assert_eq!(
                (n.kind, message::decode_reason(&n.body)),
                (Kind::Nack, "later".into())
            );
            assert!(matches!(error, HandoffError::Refused(_)));
        }
        other => panic!("{other:?}"),
    }
    // No Commit after Ack: nothing is served, nothing more is said.
    let mut m = new_after(14);
    let short = Msg::of(Kind::Commit, &[0; 3]);
    assert_new_abort(
        m.handle(NewEvent::Received(short.incoming())),
        false,
        "commit",
    );
}

#[test]
fn hostile_lengths_are_refused_in_the_header() {
    for kind in every_kind() {
        let h = header(kind, u32::MAX as usize);
        assert!(
            matches!(parse_header(&h, 1 << 20), Err(MessageError::TooLong { .. })),
            "{kind:?}"
        );
    }
    // Exactly at each limit is fine, one over is not.
    for kind in every_kind() {
        let max = kind.max_body(1 << 20);
        assert!(parse_header(&header(kind, max), 1 << 20).is_ok());
        assert!(parse_header(&header(kind, max + 1), 1 << 20).is_err());
    }
}

// ---------------------------------------------------------------------------
// After Commit over io_uring: RingsReady, ReleaseRings, RingsReleased, AdoptRings
// ---------------------------------------------------------------------------

#[test]
fn without_rings_nothing_follows_commit() {
    let r = run(Script::new(false));
    assert!(!r.released);
    assert!(matches!(r.new, NewEnd::Served));
}

#[test]
fn rings_are_released_when_the_new_process_cannot_register() {
    let mut s = Script::new(false);
    s.old.uring_area = true;
    s.registered = Err("no io_uring");
    let r = run(s);
    // Committed, nothing served: no Nack (the old side decides alone), and the
    // old side, hearing nothing, closes its rings all the same.
    assert!(
        matches!(r.new, NewEnd::Aborted(HandoffError::Prepare(_))),
        "{:?}",
        r.new
    );
    assert!(matches!(r.old, OldEnd::Committed), "{:?}", r.old);
    assert!(r.released, "rings released");
    use Kind::*;
    assert_eq!(
        kinds(&r),
        [Hello, Accept, Snapshot, Ack, Commit, RingsReleased]
    );
    assert!(matches!(
        r.old_side.after_commit_problem(),
        Some(HandoffError::PeerGone(_))
    ));
}

/// An old side over io_uring at "waiting for RingsReady" (Commit sent).
fn old_awaiting_rings() -> OldSide {
    let mut m = OldSide::new(OldConfig {
        uring_area: true,
        ..old_config(false)
    });
    let hello = Msg::parse(&hello(FEATURE_URING), 0);
    let ack = Msg::parse(&encode_duration(Kind::Ack, 3 * MS), 0);
    assert!(matches!(
        m.handle(OldEvent::PeerChecked(Ok(()))),
        OldAction::Recv
    ));
    assert!(matches!(
        m.handle(OldEvent::Received(hello.incoming())),
        OldAction::Send(_)
    ));
    assert!(matches!(
        m.handle(OldEvent::Sent),
        OldAction::PauseAndSnapshot
    ));
    assert!(matches!(
        m.handle(OldEvent::SnapshotTaken(Ok(50))),
        OldAction::SendSnapshot
    ));
    assert!(matches!(m.handle(OldEvent::Sent), OldAction::Recv));
    assert!(matches!(
        m.handle(OldEvent::Received(ack.incoming())),
        OldAction::Commit { .. }
    ));
    assert!(matches!(m.handle(OldEvent::Sent), OldAction::Recv));
    assert!(m.paused() && !m.is_finished());
    m
}

/// Drives `m` (at "waiting for RingsReady") with `first`, then through the
/// release: ReleaseRings comes whatever `first` was, then RingsReleased, then
/// Committed. Returns the problem noted.
fn old_releases_after(mut m: OldSide, first: OldEvent<'_>, what: &str) -> Option<String> {
    match m.handle(first) {
        OldAction::ReleaseRings => {}
        other => panic!("{what}: expected ReleaseRings, got {other:?}"),
    }
    match m.handle(OldEvent::RingsReleased(5 * MS)) {
        OldAction::Send(bytes) => {
            let msg = Msg::parse(&bytes, 0);
            assert_eq!(msg.kind, Kind::RingsReleased, "{what}");
            assert_eq!(
                message::decode_duration(Kind::RingsReleased, &msg.body).unwrap(),
                5 * MS
            );
        }
        other => panic!("{what}: expected Send(RingsReleased), got {other:?}"),
    }
    assert!(
        matches!(m.handle(OldEvent::Sent), OldAction::Committed),
        "{what}"
    );
    assert!(m.is_finished());
    m.after_commit_problem().map(|e| e.to_string())
}

#[test]
fn old_side_releases_its_rings_whatever_follows_commit() {
    let ready = Msg::parse(&encode_duration(Kind::RingsReady, MS), 0);
    assert_eq!(
        old_releases_after(
            old_awaiting_rings(),
            OldEvent::Received(ready.incoming()),
            "RingsReady"
        ),
        None
    );
    // The peer gone, or timed out, before RingsReady.
    let p = old_releases_after(old_awaiting_rings(), OldEvent::Failed(gone()), "gone");
    assert!(p.is_some_and(|p| p.contains("read")));
    // Every other kind in its place, a RingsReady with descriptors, a short or
    // long body.
    let mut kinds: Vec<Kind> = every_kind().to_vec();
    kinds.push(Kind::RingsReleased);
    for k in kinds {
        let m = Msg::of(k, &MS.as_nanos().to_le_bytes()[..8]);
        let p = old_releases_after(
            old_awaiting_rings(),
            OldEvent::Received(m.incoming()),
            "kind",
        );
        assert!(p.is_some(), "{k:?} taken for RingsReady");
    }
    let with_fds = Msg {
        fds: 1,
        ..Msg::parse(&encode_duration(Kind::RingsReady, MS), 0)
    };
    assert!(old_releases_after(
        old_awaiting_rings(),
        OldEvent::Received(with_fds.incoming()),
        "fds"
    )
    .is_some());
    for body in [&[][..], &[0; 7][..], &[0; 9][..]] {
        let m = Msg::of(Kind::RingsReady, body);
        assert!(
            old_releases_after(
                old_awaiting_rings(),
                OldEvent::Received(m.incoming()),
                "body"
            )
            .is_some(),
            "a {}-byte RingsReady body",
            body.len()
        );
    }
}

#[test]
fn old_side_never_rolls_back_after_commit() {
    // Events out of order in each state after Commit: the handoff ends
    // committed (the workers stop for good), never with an Abort that would
    // resume serving beside the new process.
    let out_of_order = |m: &mut OldSide| m.handle(OldEvent::BaseTaken(Ok(1)));
    let mut m = old_awaiting_rings();
    assert!(matches!(out_of_order(&mut m), OldAction::Committed));
    assert!(matches!(
        m.after_commit_problem(),
        Some(HandoffError::OutOfOrder { .. })
    ));
    let ready = Msg::parse(&encode_duration(Kind::RingsReady, MS), 0);
    let mut m = old_awaiting_rings();
    assert!(matches!(
        m.handle(OldEvent::Received(ready.incoming())),
        OldAction::ReleaseRings
    ));
    // While releasing: a message, a failure, a send done: none rolls back.
    for ev in 0..3 {
        let mut m = old_awaiting_rings();
        m.handle(OldEvent::Received(ready.incoming()));
        let a = match ev {
            0 => m.handle(OldEvent::Received(ready.incoming())),
            1 => m.handle(OldEvent::Failed(gone())),
            _ => m.handle(OldEvent::Sent),
        };
        assert!(matches!(a, OldAction::Committed), "event {ev}: {a:?}");
        assert!(m.after_commit_problem().is_some());
    }
    // RingsReleased that cannot be sent: committed all the same.
    m.handle(OldEvent::RingsReleased(MS));
    assert!(matches!(
        m.handle(OldEvent::Failed(gone())),
        OldAction::Committed
    ));
    assert!(m.after_commit_problem().is_some());
    // Finished: every further event is out of order, without a Refuse.
    assert!(matches!(
        m.handle(OldEvent::RingsReleased(MS)),
        OldAction::Abort {
            error: HandoffError::OutOfOrder { .. },
            refuse: None
        }
    ));
}

#[test]
fn old_side_without_rings_takes_no_ring_message() {
    // A mount not served through a ring area ends at Commit: nothing is
    // received after it, and RingsReleased is not an event it takes.
    let mut m = old_after(OLD_STEPS);
    assert!(m.is_finished());
    assert!(matches!(
        m.handle(OldEvent::RingsReleased(MS)),
        OldAction::Abort { .. }
    ));
    // Before the pause, a ring message is just an unexpected message.
    let mut m = old_after(1);
    let ready = Msg::parse(&encode_duration(Kind::RingsReady, MS), 0);
    let e = assert_old_abort(
        m.handle(OldEvent::Received(ready.incoming())),
        false,
        true,
        "RingsReady for Hello",
    );
    assert!(matches!(e, HandoffError::Message(_)), "{e}");
}

/// A new side over io_uring right after Commit arrived (RegisterRings).
fn new_registering() -> NewSide {
    let mut m = NewSide::new(new_config(false));
    let accept = Msg::parse(&encode_accept(1, FEATURE_URING), 0);
    let snap = snapshot_msg(0, 20);
    let commit = Msg::parse(&encode_duration(Kind::Commit, 9 * MS), 0);
    assert!(matches!(
        m.handle(NewEvent::PeerChecked(Ok(()))),
        NewAction::Send(_)
    ));
    assert!(matches!(m.handle(NewEvent::Sent), NewAction::Recv));
    assert!(matches!(
        m.handle(NewEvent::Received(accept.incoming())),
        NewAction::Agreed { .. }
    ));
    assert!(matches!(
        m.handle(NewEvent::Receive { can_precopy: false }),
        NewAction::Recv
    ));
    assert!(matches!(
        m.handle(NewEvent::Received(snap.incoming())),
        NewAction::Restore { .. }
    ));
    assert!(matches!(
        m.handle(NewEvent::Restored(Ok(()))),
        NewAction::Decide
    ));
    assert!(matches!(
        m.handle(NewEvent::Ack(3 * MS)),
        NewAction::Send(_)
    ));
    assert!(matches!(m.handle(NewEvent::Sent), NewAction::Recv));
    match m.handle(NewEvent::Received(commit.incoming())) {
        NewAction::RegisterRings { since_pause } => assert_eq!(since_pause, 9 * MS),
        other => panic!("expected RegisterRings, got {other:?}"),
    }
    m
}

/// `m` just registered (RingsRegistered(Ok)); returns it after RingsReady went
/// out (it waits for RingsReleased).
fn new_awaiting_release() -> NewSide {
    let mut m = new_registering();
    match m.handle(NewEvent::RingsRegistered(Ok(4 * MS))) {
        NewAction::Send(bytes) => {
            let msg = Msg::parse(&bytes, 0);
            assert_eq!(msg.kind, Kind::RingsReady);
            assert_eq!(
                message::decode_duration(Kind::RingsReady, &msg.body).unwrap(),
                4 * MS
            );
        }
        other => panic!("expected Send(RingsReady), got {other:?}"),
    }
    assert!(matches!(m.handle(NewEvent::Sent), NewAction::Recv));
    m
}

#[test]
fn new_side_adopts_the_old_entries_once_released() {
    let mut m = new_awaiting_release();
    let released = Msg::parse(&encode_duration(Kind::RingsReleased, 5 * MS), 0);
    assert!(matches!(
        m.handle(NewEvent::Received(released.incoming())),
        NewAction::AdoptRings
    ));
    assert!(m.is_finished() && m.after_commit_problem().is_none());
}

#[test]
fn new_side_adopts_whatever_follows_registration() {
    // RingsReady not sent, RingsReleased missing, of another kind, with
    // descriptors, with a bad body, or an event out of order: the entries are
    // adopted all the same (both sides are committed), the problem noted, and
    // nothing is sent back.
    let check = |a: NewAction, m: &NewSide, what: &str| {
        assert!(matches!(a, NewAction::AdoptRings), "{what}: {a:?}");
        assert!(m.is_finished(), "{what}");
        assert!(m.after_commit_problem().is_some(), "{what}");
    };
    let mut m = new_registering();
    m.handle(NewEvent::RingsRegistered(Ok(MS)));
    let a = m.handle(NewEvent::Failed(gone()));
    check(a, &m, "RingsReady not sent");
    let mut m = new_awaiting_release();
    let a = m.handle(NewEvent::Failed(gone()));
    check(a, &m, "no RingsReleased");
    let mut kinds: Vec<Kind> = every_kind().to_vec();
    kinds.push(Kind::RingsReady);
    for k in kinds {
        let mut m = new_awaiting_release();
        let msg = Msg::of(k, &MS.as_nanos().to_le_bytes()[..8]);
        let a = m.handle(NewEvent::Received(msg.incoming()));
        check(a, &m, &format!("{k:?} for RingsReleased"));
    }
    let mut m = new_awaiting_release();
    let with_fds = Msg {
        fds: 2,
        ..Msg::parse(&encode_duration(Kind::RingsReleased, MS), 0)
    };
    let a = m.handle(NewEvent::Received(with_fds.incoming()));
    check(a, &m, "descriptors");
    for body in [&[][..], &[0; 3][..], &[0; 16][..]] {
        let mut m = new_awaiting_release();
        let msg = Msg::of(Kind::RingsReleased, body);
        let a = m.handle(NewEvent::Received(msg.incoming()));
        check(a, &m, "body");
    }
    for ev in 0..2 {
        let mut m = new_awaiting_release();
        let a = match ev {
            0 => m.handle(NewEvent::Ack(MS)),
            _ => m.handle(NewEvent::RingsRegistered(Ok(MS))),
        };
        check(a, &m, "out of order");
    }
}

#[test]
fn new_side_that_cannot_register_ends_without_a_nack() {
    // Committed: the old side decides alone; nothing is sent back.
    let mut m = new_registering();
    let e = assert_new_abort(
        m.handle(NewEvent::RingsRegistered(Err(HandoffError::NotServing))),
        false,
        "registration failed",
    );
    assert!(matches!(e, HandoffError::NotServing));
    // The transport failing, or an event out of order, while registering.
    let mut m = new_registering();
    assert_new_abort(m.handle(NewEvent::Failed(gone())), false, "failed");
    let mut m = new_registering();
    let e = assert_new_abort(m.handle(NewEvent::Ack(MS)), false, "out of order");
    assert!(matches!(e, HandoffError::OutOfOrder { .. }));
}

#[test]
fn ring_events_before_commit_are_out_of_order() {
    // RingsRegistered before Commit: a driver bug, refused like any other.
    for k in 0..15 {
        let mut m = new_after(k);
        let a = m.handle(NewEvent::RingsRegistered(Ok(MS)));
        assert!(
            matches!(a, NewAction::Abort { .. }),
            "after {k} steps: {a:?}"
        );
    }
    // Without FEATURE_URING, Commit means Serve, never RegisterRings.
    let mut m = new_after(15);
    assert!(m.is_finished());
    assert!(matches!(
        m.handle(NewEvent::RingsRegistered(Ok(MS))),
        NewAction::Abort { .. }
    ));
}
