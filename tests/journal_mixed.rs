//! A journal written by a build that predates record kind 11 (`Delta`: records
//! that leave out what did not change) is recovered by this build, continued in
//! place with kind 11 records, and recovered again from the mix: every change of
//! both builds, the open handles included. No mount: the sessions are driven with
//! request bytes.
//!
//! The old journal is `fuse-snapshot/tests/golden/journal-v1-memfs-kind7.bin`,
//! written by the build before kind 11 (a memfs session: INIT, `mkdir /a`,
//! `mkdir /a/b`, OPENDIR `/a` (fh 1), LOOKUP `a`, OPENDIR `/` (fh 2)).
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use fuse_live_testkit::requests::{call, name, request};
use fuse_session::dev::JournalMap;
use fuse_session::Session;
use fuse_snapshot::journal::session::{recover_session, JournalHook, RecoveredSession};
use fuse_snapshot::journal::{recover, JournalOptions, LogEnd};
use fuse_snapshot::FdRestorer;
use memfs::fs::MemFs;

const MAX: u64 = 1 << 26;
const FUSE_LOOKUP: u32 = 1;
const FUSE_MKDIR: u32 = 9;
const FUSE_RELEASEDIR: u32 = 29;

fn lookup(session: &Session<MemFs>, unique: u64, parent: u64, n: &str) -> (i32, u64) {
    call(session, &request(FUSE_LOOKUP, unique, parent, &name(n)))
}

fn mkdir(session: &Session<MemFs>, unique: u64, parent: u64, n: &str) -> u64 {
    let mut body = Vec::new();
    body.extend_from_slice(&0o755u32.to_ne_bytes());
    body.extend_from_slice(&0u32.to_ne_bytes());
    body.extend_from_slice(&name(n));
    let (error, nodeid) = call(session, &request(FUSE_MKDIR, unique, parent, &body));
    assert_eq!(error, 0, "mkdir {n}");
    nodeid
}

fn releasedir(session: &Session<MemFs>, unique: u64, nodeid: u64, fh: u64) {
    let mut body = Vec::new();
    body.extend_from_slice(&fh.to_ne_bytes());
    body.extend_from_slice(&[0u8; 16]);
    let (error, _) = call(session, &request(FUSE_RELEASEDIR, unique, nodeid, &body));
    assert_eq!(error, 0, "releasedir {fh}");
}

/// The old build's journal in a memfd, as the fd store would hand it over.
fn old_journal() -> OwnedFd {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuse-snapshot/tests/golden/journal-v1-memfs-kind7.bin");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let map = JournalMap::memfd("old-journal", MAX).expect("memfd");
    let mut file = std::fs::File::from(map.fd().try_clone_to_owned().expect("dup"));
    file.write_all(&bytes).expect("write the old journal");
    map.fd().try_clone_to_owned().expect("dup")
}

/// The kinds of the records the journal behind `fd` holds.
fn kinds(fd: &OwnedFd) -> Vec<u16> {
    let map = JournalMap::from_fd(fd.try_clone().expect("dup"), MAX).expect("map");
    let r = recover(&map).expect("the journal reads back");
    assert!(matches!(r.end, LogEnd::Clean { .. }), "{}", r.end);
    r.records.iter().map(|r| r.kind()).collect()
}

/// The payload sizes of the records the journal behind `fd` holds.
fn payload_sizes(fd: &OwnedFd) -> Vec<usize> {
    let map = JournalMap::from_fd(fd.try_clone().expect("dup"), MAX).expect("map");
    let r = recover(&map).expect("the journal reads back");
    r.records.iter().map(|r| r.payload().len()).collect()
}

/// Recovers the journal behind `fd` as a new process would, and resumes it in
/// place.
fn recover_in_place(fd: &OwnedFd) -> (Arc<Session<MemFs>>, Arc<JournalHook<MemFs>>) {
    let map = JournalMap::from_fd(fd.try_clone().expect("dup"), MAX).expect("map");
    let recovered =
        recover_session::<MemFs>(map, &mut FdRestorer::empty(), JournalOptions::default())
            .expect("recover");
    let (session, hook, map, rec) = recovered.into_parts();
    let session = Arc::new(session);
    RecoveredSession::resume(&hook, &session, map, &rec).expect("resume in place");
    (session, hook)
}

#[test]
fn an_old_builds_journal_is_recovered_continued_and_recovered_again() {
    let fd = old_journal();
    let old = kinds(&fd);
    assert!(
        !old.is_empty() && old.iter().all(|&k| k == 7),
        "the old build's journal holds kind 7 records only: {old:?}"
    );

    // This build recovers the old build's journal and continues it in place.
    // The first record after the resume carries the handle table whole, the
    // next one (nothing opened or released) leaves it out: two LOOKUPs of
    // nodeids the old build counted, the second record shorter. (Not the same
    // nodeid twice: the second LOOKUP would be within the count the first
    // record reserved, and append nothing.)
    let (s1, _h1) = recover_in_place(&fd);
    let (e, a) = lookup(&s1, 100, 1, "a");
    assert_eq!(e, 0, "the old build's mkdir /a");
    assert_ne!(lookup(&s1, 101, a, "b").1, 0, "the old build's mkdir /a/b");
    let sizes = payload_sizes(&fd);
    assert_eq!(sizes.len(), old.len() + 2);
    let (first, second) = (sizes[old.len()], sizes[old.len() + 1]);
    assert!(
        second < first,
        "a record that changes no handle leaves the table out: {second} bytes, the \
         first after the resume {first}"
    );
    assert_ne!(lookup(&s1, 102, a, "b").1, 0, "the old build's mkdir /a/b");
    assert_eq!(s1.handle_count(), 2, "the old build's two OPENDIRs");

    // Handles unchanged (records that leave them out), then one released, then
    // a new directory.
    let c = mkdir(&s1, 103, a, "c");
    assert_eq!(lookup(&s1, 104, a, "c"), (0, c));
    releasedir(&s1, 105, a, 1);
    let d = mkdir(&s1, 106, 1, "d");
    assert_eq!(s1.handle_count(), 1);
    let nodes = s1.node_count();

    let mixed = kinds(&fd);
    assert_eq!(&mixed[..old.len()], &old[..], "the old records stay");
    assert!(
        mixed.len() > old.len() && mixed[old.len()..].iter().all(|&k| k == 11),
        "this build appends kind 11 records: {mixed:?}"
    );

    // A second crash: the mix of both builds' records.
    let (s2, _h2) = recover_in_place(&fd);
    assert_eq!(s2.node_count(), nodes);
    assert_eq!(s2.handle_count(), 1, "fh 1 released, fh 2 still open");
    assert_eq!(lookup(&s2, 200, a, "c"), (0, c));
    assert_eq!(lookup(&s2, 201, 1, "d"), (0, d));
    assert_ne!(lookup(&s2, 202, a, "b").1, 0);
    // The handle that stayed open is still there: releasing it works, releasing
    // the released one is refused.
    releasedir(&s2, 203, 1, 2);
    assert_eq!(s2.handle_count(), 0);
    let mut body = 1u64.to_ne_bytes().to_vec();
    body.extend_from_slice(&[0u8; 16]);
    let (error, _) = call(&s2, &request(FUSE_RELEASEDIR, 204, a, &body));
    assert_ne!(error, 0, "fh 1 was released before the second crash");
}
