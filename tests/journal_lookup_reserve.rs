//! Lookup counts counted ahead (docs/RECOVERY.md, "Lookup counts counted ahead"):
//! a journaled memfs session driven with request bytes (no mount), its journal
//! read back as a crash at that instant would leave it (the memfd's bytes as they
//! are, without the process's last words: `recover_session` reads, the live
//! session goes on). After every request, the recovered count of the nodeid is at
//! least the kernel's and at most the kernel's plus `min(LOOKUP_RESERVE, c - 1)`;
//! a LOOKUP within the journaled figure appends no record; a nodeid the kernel
//! forgot is forgotten in the journal too. Also across compactions, an in-place
//! resume after a crash, and what a live handoff carries (the true counts).
use std::sync::Arc;

use fuse_live_testkit::requests::{call, name, request};
use fuse_session::dev::JournalMap;
use fuse_session::{Outcome, Session};
use fuse_snapshot::journal::session::{
    recover_session, JournalHook, RecoveredSession, LOOKUP_RESERVE,
};
use fuse_snapshot::journal::JournalOptions;
use fuse_snapshot::FdRestorer;
use memfs::fs::MemFs;

const MAX: u64 = 1 << 26;
const FUSE_LOOKUP: u32 = 1;
const FUSE_FORGET: u32 = 2;
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

fn lookup(session: &Session<MemFs>, unique: u64, parent: u64, n: &str) -> u64 {
    let (error, nodeid) = call(session, &request(FUSE_LOOKUP, unique, parent, &name(n)));
    assert_eq!(error, 0, "lookup {n}");
    nodeid
}

fn forget(session: &Session<MemFs>, unique: u64, nodeid: u64, nlookup: u64) {
    let mut out = vec![0u8; session.reply_buffer_size()];
    let req = request(FUSE_FORGET, unique, nodeid, &nlookup.to_ne_bytes());
    assert!(
        matches!(session.handle(&req, &mut out), Outcome::NoReply),
        "a FORGET gets no reply"
    );
}

/// The count of `nodeid` in `session` (what a snapshot, and so a live handoff,
/// carries), or `None` if the session does not hold it.
fn count(session: &Session<MemFs>, nodeid: u64) -> Option<u64> {
    let state = session.snapshot().expect("initialized");
    state
        .nodes
        .iter()
        .find(|n| n.nodeid == nodeid)
        .map(|n| n.lookups)
}

/// Reads the journal behind `fd` as a restarted process would after a crash now
/// (nothing written): the rebuilt session and the records replayed.
fn crash_now(
    fd: &std::os::fd::OwnedFd,
    options: JournalOptions,
) -> (RecoveredSession<MemFs>, usize) {
    let map = JournalMap::from_fd(fd.try_clone().expect("dup"), MAX).expect("map");
    let r = recover_session::<MemFs>(map, &mut FdRestorer::empty(), options).expect("recover");
    let records = r.records;
    (r, records)
}

fn journaled(
    options: JournalOptions,
) -> (
    Arc<Session<MemFs>>,
    Arc<JournalHook<MemFs>>,
    std::os::fd::OwnedFd,
) {
    memfs::in_process::journaled(1 << 30, "lookup-reserve-test", MAX, options)
}

/// `recovered` is what a crash would recover for a nodeid the kernel holds
/// `kernel` times: at least that, at most that plus the reserve.
fn assert_bound(recovered: Option<u64>, kernel: u64, what: &str) {
    if kernel == 0 {
        assert_eq!(recovered, None, "{what}: forgotten by the kernel");
        return;
    }
    let most = kernel + u64::from(LOOKUP_RESERVE).min(kernel - 1);
    match recovered {
        Some(c) => assert!(
            (kernel..=most).contains(&c),
            "{what}: recovered count {c}, the kernel's {kernel}: outside {kernel}..={most}"
        ),
        None => panic!("{what}: the kernel holds it {kernel} times, the journal lost it"),
    }
}

#[test]
fn lookups_of_one_node_recover_within_the_reserve() {
    let options = JournalOptions::default();
    let (s, _h, fd) = journaled(options);
    let a = mkdir(&s, 10, 1, "a");
    let mut kernel = 1u64;
    let (_, after_mkdir) = crash_now(&fd, options);
    let n = 1000u64;
    for i in 0..n {
        assert_eq!(lookup(&s, 100 + i, 1, "a"), a);
        kernel += 1;
        // What a live handoff carries: the count itself, never the journal's figure.
        assert_eq!(count(&s, a), Some(kernel), "the session's own count");
        let (r, _) = crash_now(&fd, options);
        assert_bound(count(&r.session, a), kernel, &format!("after lookup {i}"));
    }
    // The records: one each time the count passed its figure (doubling, then
    // every LOOKUP_RESERVE + 1 lookups), not one per LOOKUP.
    let (_, records) = crash_now(&fd, options);
    let lookups_recorded = (records - after_mkdir) as u64;
    let most = 8 + n / u64::from(LOOKUP_RESERVE);
    assert!(
        lookups_recorded <= most,
        "{n} LOOKUPs of one nodeid appended {lookups_recorded} records (at most {most} expected)"
    );
    assert!(lookups_recorded > 0, "the count passed its figure");
}

#[test]
fn forgets_interleaved_keep_the_bound() {
    // A small log threshold: many compactions on the way, whose checkpoints
    // must hold counts at least the kernel's too.
    let options = JournalOptions {
        compact_after: 2048,
        ..JournalOptions::default()
    };
    let (mut s, _h, fd) = journaled(options);
    let mut a = mkdir(&s, 10, 1, "a");
    let mut kernel = 1u64;
    // What the daemon's table holds (the kernel's count, or more after a crash).
    let mut daemon = 1u64;
    let mut unique = 100u64;
    let mut next = || {
        unique += 1;
        unique
    };
    // A fixed pseudo-random walk: runs of lookups, forgets of 1 to 40, the count
    // down to zero now and then, a crash every 97 steps.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut crashes = 0;
    for step in 0..1500u32 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        match x % 8 {
            0 | 1 if daemon > 0 => {
                let n = (x >> 8) % 40 + 1;
                let n = n.min(daemon);
                forget(&s, next(), a, n);
                daemon -= n;
                kernel = kernel.saturating_sub(n);
            }
            2 if daemon > 0 => {
                // The kernel drops the inode: every lookup it holds at once.
                forget(&s, next(), a, daemon);
                daemon = 0;
                kernel = 0;
            }
            _ => {
                let id = lookup(&s, next(), 1, "a");
                if daemon == 0 {
                    // Counted anew (memfs numbers nodeids by inode: the same one).
                    a = id;
                }
                assert_eq!(id, a);
                daemon += 1;
                kernel += 1;
            }
        }
        assert_eq!(count(&s, a), (daemon > 0).then_some(daemon), "step {step}");
        let (r, _) = crash_now(&fd, options);
        let recovered = count(&r.session, a);
        // The journal holds at least what the daemon holds (which is at least
        // the kernel's), at most that plus the reserve.
        assert_bound(recovered, daemon, &format!("step {step}"));
        assert!(
            recovered.unwrap_or(0) >= kernel,
            "step {step}: below the kernel's count"
        );
        if step % 97 == 96 {
            // Crash: the recovered process goes on, its journal resumed in place.
            let (session, hook, map, rec) = r.into_parts();
            let session = Arc::new(session);
            RecoveredSession::resume(&hook, &session, map, &rec).expect("resume");
            daemon = count(&session, a).unwrap_or(0);
            s = session;
            crashes += 1;
        }
    }
    assert!(crashes >= 10);
}

#[test]
fn lookups_from_many_threads_are_all_covered() {
    // Workers counting the same nodeids at once: no LOOKUP is lost between
    // the noted changes and the slack a record gave. Every 500 LOOKUPs the
    // workers stop together (a crash freezes them all at once; a journal read
    // while others append is no crash image) and the journal is read back:
    // every count is covered. (What the gate orders — no reply before the
    // record covering its count — is not seen here: at each stop every reply
    // and record is done.)
    let options = JournalOptions::default();
    let (s, _h, fd) = journaled(options);
    let a = mkdir(&s, 10, 1, "a");
    let b = mkdir(&s, 11, 1, "b");
    let threads = 4u64;
    let per = 3000u64;
    let stop = std::sync::Barrier::new(threads as usize);
    // The counts after `i` LOOKUPs by every worker (1 for the MKDIR).
    let kernel = |i: u64| {
        let b = 1 + threads * i.div_ceil(3);
        (1 + threads * i - (b - 1), b)
    };
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (s, fd, stop) = (&s, &fd, &stop);
            scope.spawn(move || {
                for i in 0..per {
                    let unique = 1000 + t * per + i;
                    let n = if i % 3 == 0 { "b" } else { "a" };
                    lookup(s, unique, 1, n);
                    if i % 500 == 499 {
                        stop.wait();
                        if t == 0 {
                            let (r, _) = crash_now(fd, options);
                            let (ka, kb) = kernel(i + 1);
                            let what = format!("after {} LOOKUPs per worker", i + 1);
                            assert_bound(count(&r.session, a), ka, &format!("a, {what}"));
                            assert_bound(count(&r.session, b), kb, &format!("b, {what}"));
                        }
                        stop.wait();
                    }
                }
            });
        }
    });
    let (ka, kb) = kernel(per);
    assert_eq!(count(&s, a), Some(ka));
    assert_eq!(count(&s, b), Some(kb));
}
