//! A journaled memfs session recovered twice in one process (no mount: the
//! session is driven with request bytes), the journal resumed *in place* after
//! the first recovery: the second recovery reads the first's records and the ones
//! appended after it from the same epoch, and rebuilds every change of both
//! processes.
use std::sync::Arc;

use fuse_live_testkit::requests::{call, name, request};
use fuse_session::dev::JournalMap;
use fuse_session::Session;
use fuse_snapshot::journal::session::{recover_session, JournalHook, RecoveredSession};
use fuse_snapshot::journal::JournalOptions;
use fuse_snapshot::FdRestorer;
use memfs::fs::MemFs;

const MAX: u64 = 1 << 26;
const FUSE_LOOKUP: u32 = 1;
const FUSE_MKDIR: u32 = 9;

fn mkdir(session: &Session<MemFs>, unique: u64, parent: u64, n: &str) -> u64 {
    let mut body = Vec::new();
    body.extend_from_slice(&0o755u32.to_ne_bytes()); // mode
    body.extend_from_slice(&0u32.to_ne_bytes()); // umask
    body.extend_from_slice(&name(n));
    let (error, nodeid) = call(session, &request(FUSE_MKDIR, unique, parent, &body));
    assert_eq!(error, 0, "mkdir {n}");
    nodeid
}

fn lookup(session: &Session<MemFs>, unique: u64, parent: u64, n: &str) -> (i32, u64) {
    call(session, &request(FUSE_LOOKUP, unique, parent, &name(n)))
}

/// Recovers the journal behind `fd` as a new process would, and resumes it in
/// place (or, with `new_epoch`, in a new epoch).
fn recover(
    fd: &std::os::fd::OwnedFd,
    new_epoch: bool,
) -> (Arc<Session<MemFs>>, Arc<JournalHook<MemFs>>, usize) {
    let map = JournalMap::from_fd(fd.try_clone().expect("dup"), MAX).expect("map");
    let recovered =
        recover_session::<MemFs>(map, &mut FdRestorer::empty(), JournalOptions::default())
            .expect("recover");
    let records = recovered.records;
    let (session, hook, map, rec) = recovered.into_parts();
    let session = Arc::new(session);
    if new_epoch {
        RecoveredSession::resume_new_epoch(&hook, &session, map, &rec).expect("resume");
    } else {
        RecoveredSession::resume(&hook, &session, map, &rec).expect("resume");
    }
    (session, hook, records)
}

fn journaled() -> (
    Arc<Session<MemFs>>,
    Arc<JournalHook<MemFs>>,
    std::os::fd::OwnedFd,
) {
    memfs::in_process::journaled(1 << 30, "in-place-test", MAX, JournalOptions::default())
}

#[test]
fn a_journal_resumed_in_place_recovers_both_processes_changes() {
    let (s1, _h1, fd) = journaled();
    let a = mkdir(&s1, 10, 1, "a");
    let b = mkdir(&s1, 11, a, "b");
    assert_eq!(lookup(&s1, 12, 1, "a"), (0, a));
    let nodes1 = s1.node_count();

    // Crash 1.
    let (s2, _h2, records1) = recover(&fd, false);
    assert_eq!(s2.node_count(), nodes1);
    assert_eq!(lookup(&s2, 20, a, "b"), (0, b));
    let c = mkdir(&s2, 21, b, "c");
    let nodes2 = s2.node_count();

    // Crash 2: the same log, longer by what the second process appended.
    let (s3, _h3, records2) = recover(&fd, false);
    assert!(
        records2 > records1,
        "resumed in place: the second recovery replays the first's {records1} records and \
         more, not {records2}"
    );
    assert_eq!(s3.node_count(), nodes2);
    assert_eq!(
        lookup(&s3, 30, b, "c"),
        (0, c),
        "the second process's mkdir"
    );
    assert_eq!(lookup(&s3, 31, 1, "a"), (0, a), "the first process's mkdir");
}

#[test]
fn in_place_and_new_epoch_recover_the_same_session() {
    for new_epoch in [false, true] {
        let (s1, _h1, fd) = journaled();
        let a = mkdir(&s1, 10, 1, "a");
        let (s2, _h2, _) = recover(&fd, new_epoch);
        let d = mkdir(&s2, 20, a, "d");
        assert_eq!(lookup(&s2, 21, 1, "a"), (0, a));
        let (s3, _h3, records) = recover(&fd, new_epoch);
        assert_eq!(s3.node_count(), s2.node_count(), "new epoch: {new_epoch}");
        assert_eq!(lookup(&s3, 30, a, "d"), (0, d), "new epoch: {new_epoch}");
        assert_eq!(lookup(&s3, 31, a, "missing").0, -libc_enoent());
        if new_epoch {
            assert!(
                records <= 3,
                "a new epoch holds only the second process's records"
            );
        }
    }
}

fn libc_enoent() -> i32 {
    nix::errno::Errno::ENOENT as i32
}
