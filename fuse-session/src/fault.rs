//! Fault injection for crash tests: the process aborts itself at a named point.
//!
//! The library calls [`point`] at every instant where a crash matters to recovery
//! (each step of a request, inside a journal record, each step of a compaction, of
//! a recovery and of a handoff; the table of names is [`POINTS`] and
//! docs/RECOVERY.md, "Fault injection"). Nothing happens unless the environment
//! variable [`ENV`] (`FUSE_LIVE_FAULT`) names one of them:
//!
//! - `POINT:N` — abort the process (`std::process::abort`, so `SIGABRT`, no
//!   unwinding, no destructor) at the `N`th time `POINT` is reached in this
//!   process (counted from 1);
//! - `POINT:N-M` — the same at a hit number picked in `N..=M` once per process,
//!   from its pid: a daemon restarted by a keeper or systemd crashes again, at a
//!   different instant each time;
//! - either followed by `:error` or `:panic` — at that hit, a point that can fail
//!   ([`fallible`]) returns an error instead of aborting, and any point panics
//!   instead: the unexpected failures of a serving thread (a `:error` at a point
//!   that cannot fail aborts, said on stderr).
//!
//! The variable is read once, at the first [`point`]. A value that does not parse
//! is reported once on stderr and injects nothing; it never panics. A name not in
//! [`POINTS`] (a typo, or a point added elsewhere without its line there) is
//! armed anyway, with a warning on stderr. Just before aborting, one line goes to stderr:
//! `fuse-live fault: aborting at POINT (hit N), pid P`, which tests count.
//!
//! With [`DISARM_ENV`] (`FUSE_LIVE_FAULT_DISARM=PATH`) set too, the fault does
//! not fire while the file PATH exists. With [`ARM_ENV`]
//! (`FUSE_LIVE_FAULT_ARM=PATH`), hits are only counted while the file PATH exists:
//! a test arms the fault at the instant it chooses.
//!
//! Cost when the variable is unset: one initialized-`OnceLock` check per call.
//!
//! With the phase trace on ([`crate::trace`], `FUSE_LIVE_TRACE`), the points that
//! mark steps (compaction, recovery, handoff; not those every request or record
//! reaches) also write a trace line, `fault point NAME`.
//!
//! This is a testing aid, hidden from the API docs; it is not meant for production
//! configurations (though harmless there when unset).
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The environment variable read by [`point`].
pub const ENV: &str = "FUSE_LIVE_FAULT";

/// An optional environment variable naming a file: while it exists, the fault
/// does not fire (checked only when the hit number is reached, so it costs
/// nothing before). A test creates it to stop a process that crashes again after
/// every restart, e.g. before it unmounts.
pub const DISARM_ENV: &str = "FUSE_LIVE_FAULT_DISARM";

/// An optional environment variable naming a file: hits of the point are only
/// counted while it exists (checked at each hit of the named point only).
pub const ARM_ENV: &str = "FUSE_LIVE_FAULT_ARM";

/// Every point the library calls [`point`] with, and where it is.
pub const POINTS: &[(&str, &str)] = &[
    (
        "after-accept",
        "a request was read and accepted (the journal hook saw it), not yet run",
    ),
    (
        "after-call",
        "the filesystem ran the request, its reply is encoded, nothing recorded yet",
    ),
    (
        "after-record",
        "the reply is recorded in the journal, not yet sent",
    ),
    ("after-reply", "the reply was sent to the kernel"),
    (
        "dev-request",
        "a /dev/fuse worker read a request, not yet accepted (fallible: `:error` fails \
         the worker's read)",
    ),
    (
        "uring-request",
        "an io_uring queue thread took a request from an entry, not yet accepted \
         (fallible: `:error` fails the queue's wait)",
    ),
    (
        "mid-record",
        "a journal record's header fields and payload are written, its commit word not",
    ),
    (
        "mid-header",
        "a journal header slot's fields are written, its commit word not (creation, \
         compaction)",
    ),
    (
        "resume-mid-header",
        "the same for the first header of a journal resumed after a crash (recovery)",
    ),
    (
        "resume-cut",
        "recovery, resuming in place: the log's torn tail is cut, nothing else written",
    ),
    (
        "compact-checkpoint",
        "compaction: the new checkpoint is written into the new area, no record copied",
    ),
    (
        "compact-copy",
        "compaction: the records since the mark (possibly none) are copied into the \
         new log, its header not written",
    ),
    (
        "compact-header",
        "compaction: the new header is committed, the old log not sealed",
    ),
    (
        "compact-seal",
        "compaction: the old log is sealed, the journal's memory not yet switched",
    ),
    (
        "recover-read",
        "recovery: the journal was read and replayed, nothing written, not serving",
    ),
    (
        "recover-resume",
        "recovery: the journal continues (in place, or in a new epoch), not serving yet",
    ),
    (
        "handoff-old-await-hello",
        "handoff, old side: peer checked, waiting for Hello",
    ),
    (
        "handoff-old-sending-accept",
        "handoff, old side: Hello taken, sending Accept",
    ),
    (
        "handoff-old-taking-base",
        "handoff, old side: pre-copy agreed, taking the base",
    ),
    (
        "handoff-old-sending-precopy",
        "handoff, old side: sending the base or a round",
    ),
    (
        "handoff-old-await-ready",
        "handoff, old side: waiting for Ready",
    ),
    (
        "handoff-old-taking-round",
        "handoff, old side: taking a pre-copy round",
    ),
    (
        "handoff-old-snapshotting",
        "handoff, old side: pausing the workers and taking the snapshot",
    ),
    (
        "handoff-old-sending-snapshot",
        "handoff, old side: paused, sending the Snapshot with the descriptors",
    ),
    (
        "handoff-old-await-ack",
        "handoff, old side: Snapshot sent, waiting for Ack",
    ),
    (
        "handoff-old-sending-commit",
        "handoff, old side: Ack taken, sending Commit",
    ),
    (
        "handoff-old-await-rings-ready",
        "handoff, old side, over io_uring: Commit sent, waiting for RingsReady",
    ),
    (
        "handoff-old-releasing-rings",
        "handoff, old side, over io_uring: closing this process's rings",
    ),
    (
        "handoff-old-sending-rings-released",
        "handoff, old side, over io_uring: rings closed, sending RingsReleased",
    ),
    (
        "handoff-old-done",
        "handoff, old side: final (committed or aborted)",
    ),
    (
        "handoff-new-sending-hello",
        "handoff, new side: peer checked, sending Hello",
    ),
    (
        "handoff-new-await-accept",
        "handoff, new side: waiting for Accept",
    ),
    (
        "handoff-new-agreed",
        "handoff, new side: version and features agreed",
    ),
    (
        "handoff-new-await-precopy",
        "handoff, new side: waiting for the pre-copy base or a round",
    ),
    (
        "handoff-new-decoding-base",
        "handoff, new side: decoding the pre-copied base",
    ),
    (
        "handoff-new-applying-round",
        "handoff, new side: applying a pre-copy round",
    ),
    (
        "handoff-new-sending-ready",
        "handoff, new side: sending Ready",
    ),
    (
        "handoff-new-await-snapshot",
        "handoff, new side: waiting for the Snapshot",
    ),
    (
        "handoff-new-restoring",
        "handoff, new side: Snapshot received, restoring",
    ),
    (
        "handoff-new-deciding",
        "handoff, new side: restored, deciding",
    ),
    ("handoff-new-sending-ack", "handoff, new side: sending Ack"),
    (
        "handoff-new-await-commit",
        "handoff, new side: Ack sent, waiting for Commit",
    ),
    (
        "handoff-new-registering-rings",
        "handoff, new side, over io_uring: Commit received, filling the old entries and \
         registering this process's",
    ),
    (
        "handoff-new-sending-rings-ready",
        "handoff, new side, over io_uring: registered, sending RingsReady",
    ),
    (
        "handoff-new-await-rings-released",
        "handoff, new side, over io_uring: RingsReady sent, waiting for RingsReleased",
    ),
    (
        "handoff-new-done",
        "handoff, new side: final (serving or aborted)",
    ),
    // The handoff drivers (listener.rs, takeover.rs): the steps a crash under the
    // keeper is tested at (tests/keeper_handoff.rs).
    (
        "handoff-old-accepted",
        "handoff driver, old side: connection accepted",
    ),
    (
        "handoff-old-paused",
        "handoff driver, old side: workers parked",
    ),
    (
        "handoff-old-sent",
        "handoff driver, old side: snapshot sent",
    ),
    (
        "handoff-old-acked",
        "handoff driver, old side: Ack received",
    ),
    (
        "handoff-old-observed",
        "handoff driver, old side: the commit observer ran (MAINPID= sent), before Commit",
    ),
    (
        "handoff-old-committed",
        "handoff driver, old side: Commit sent",
    ),
    (
        "handoff-new-connected",
        "handoff driver, new side: connected, versions agreed",
    ),
    (
        "handoff-new-received",
        "handoff driver, new side: snapshot restored, before Ack",
    ),
    ("handoff-new-acked", "handoff driver, new side: Ack sent"),
    (
        "handoff-new-committed",
        "handoff driver, new side: Commit received, before the commit hook",
    ),
    (
        "handoff-new-journaled",
        "handoff, new side (memfs): the journal continues in a new epoch, not serving",
    ),
    (
        "handoff-new-serving",
        "handoff driver, new side: workers started",
    ),
    // examples/passthrough (`passfs.rs`): a non-idempotent operation ran on the
    // source directory, its reply is not recorded (the window its intents close).
    // Reached by requests the kernel sent for the first time only, not by resent
    // ones, so that the restarted process answers the resent request.
    (
        "passthrough-after-create",
        "passthrough: CREATE made (or opened) the file and its handle, reply not recorded",
    ),
    (
        "passthrough-after-mknod",
        "passthrough: MKNOD ran on the source, reply not recorded",
    ),
    (
        "passthrough-after-mkdir",
        "passthrough: MKDIR ran on the source, reply not recorded",
    ),
    (
        "passthrough-after-symlink",
        "passthrough: SYMLINK ran on the source, reply not recorded",
    ),
    (
        "passthrough-after-link",
        "passthrough: LINK ran on the source, reply not recorded",
    ),
    (
        "passthrough-after-rename",
        "passthrough: RENAME ran on the source, reply not recorded",
    ),
    (
        "passthrough-after-unlink",
        "passthrough: UNLINK ran on the source, reply not recorded",
    ),
    (
        "passthrough-after-rmdir",
        "passthrough: RMDIR ran on the source, reply not recorded",
    ),
    (
        "passthrough-after-setxattr",
        "passthrough: SETXATTR with XATTR_CREATE ran on the source, reply not recorded",
    ),
    (
        "passthrough-after-removexattr",
        "passthrough: REMOVEXATTR ran on the source, reply not recorded",
    ),
    (
        "passthrough-after-open-trunc",
        "passthrough: OPEN with O_TRUNC truncated and opened the file, reply not recorded",
    ),
    (
        "passthrough-after-truncate",
        "passthrough: SETATTR changed the file's size, reply not recorded",
    ),
    (
        "passthrough-after-any",
        "passthrough: any of the operations above ran, reply not recorded; resent \
         requests too (a second crash in the same request)",
    ),
    (
        "passthrough-after-tmpfile",
        "passthrough: TMPFILE made and opened an unnamed file, reply not recorded",
    ),
    (
        "passthrough-before-backing-close",
        "passthrough: a RELEASE recorded its last use of a backing id as closing, the \
         id is not released on the connection yet",
    ),
    (
        "passthrough-after-backing-close",
        "passthrough: a RELEASE released its backing id on the connection, reply not \
         recorded",
    ),
];

/// What an armed point does at its hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// `std::process::abort()`.
    Abort,
    /// [`fallible`] returns an error (a plain [`point`] aborts).
    Error,
    /// Panics.
    Panic,
}

/// The armed fault: the point's name, the hit that fires, the hits so far.
#[derive(Debug)]
struct Plan {
    point: Box<str>,
    at: u64,
    hits: AtomicU64,
    action: Action,
    disarm: Option<std::path::PathBuf>,
    arm: Option<std::path::PathBuf>,
}

/// The armed fault, and whether the points (those not reached per request)
/// also write a phase trace line ([`crate::trace`]).
struct Armed {
    plan: Option<Plan>,
    trace: bool,
}

static PLAN: OnceLock<Armed> = OnceLock::new();

fn armed() -> Armed {
    Armed {
        plan: from_env(),
        trace: crate::trace::enabled(),
    }
}

/// With the phase trace on: a line for the points that mark steps (compaction,
/// recovery, handoff), not for those reached by every request or record.
#[cold]
fn trace_point(name: &'static str) {
    let per_request = name.starts_with("after-")
        || name.starts_with("passthrough-")
        || matches!(name, "mid-record" | "dev-request" | "uring-request");
    if !per_request {
        crate::trace::phase(&format!("fault point {name}"));
    }
}

/// A fault point named `name`: aborts the process if [`ENV`] says so (see the
/// [module docs](self)); otherwise returns at once.
#[inline]
pub fn point(name: &'static str) {
    let armed = PLAN.get_or_init(armed);
    if armed.trace {
        trace_point(name);
    }
    if let Some(plan) = &armed.plan {
        if let Err(e) = hit(plan, name) {
            eprintln!(
                "fuse-live fault: {name} cannot fail ({e}): aborting instead, pid {}",
                std::process::id()
            );
            std::process::abort();
        }
    }
}

/// A fault point where the caller can fail: as [`point`], but with the action
/// `:error` this returns an error (kind `Unsupported`, as the kernel's
/// `EOPNOTSUPP`; its text names the point) instead of aborting.
///
/// # Errors
/// Only when [`ENV`] arms `name` with `:error` and this is the hit.
#[inline]
pub fn fallible(name: &'static str) -> std::io::Result<()> {
    let armed = PLAN.get_or_init(armed);
    if armed.trace {
        trace_point(name);
    }
    match &armed.plan {
        Some(plan) => hit(plan, name),
        None => Ok(()),
    }
}

#[cold]
fn hit(plan: &Plan, name: &'static str) -> std::io::Result<()> {
    if *plan.point != *name {
        return Ok(());
    }
    if plan.arm.as_deref().is_some_and(|p| !p.exists()) {
        return Ok(());
    }
    let n = plan.hits.fetch_add(1, Ordering::Relaxed) + 1;
    if n != plan.at {
        return Ok(());
    }
    let what = match plan.action {
        Action::Abort => "aborting",
        Action::Error => "failing",
        Action::Panic => "panicking",
    };
    if let Some(path) = plan.disarm.as_deref().filter(|p| p.exists()) {
        eprintln!(
            "fuse-live fault: not {what} at {name} (hit {n}): {} exists",
            path.display()
        );
        return Ok(());
    }
    eprintln!(
        "fuse-live fault: {what} at {name} (hit {n}), pid {}",
        std::process::id()
    );
    match plan.action {
        Action::Abort => std::process::abort(),
        Action::Error => Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!("fuse-live fault: injected error at {name} (hit {n})"),
        )),
        Action::Panic => panic!("fuse-live fault: injected panic at {name} (hit {n})"),
    }
}

fn from_env() -> Option<Plan> {
    let value = std::env::var_os(ENV)?;
    let parsed = value
        .to_str()
        .ok_or_else(|| "not UTF-8".to_owned())
        .and_then(|v| parse(v, std::process::id()));
    match parsed {
        Ok(plan) => plan.map(|p| Plan {
            disarm: std::env::var_os(DISARM_ENV)
                .filter(|v| !v.is_empty())
                .map(Into::into),
            arm: std::env::var_os(ARM_ENV)
                .filter(|v| !v.is_empty())
                .map(Into::into),
            ..p
        }),
        Err(why) => {
            eprintln!(
                "fuse-live fault: ignoring {ENV}={value:?}: {why} (expected POINT:N or \
                 POINT:N-M, N >= 1, optionally followed by :error or :panic)"
            );
            None
        }
    }
}

/// Parses `POINT:N` or `POINT:N-M` (the hit picked from `seed`), optionally
/// followed by `:error` or `:panic`; an empty value arms nothing.
fn parse(value: &str, seed: u32) -> Result<Option<Plan>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    let (value, action) = if let Some(v) = value.strip_suffix(":error") {
        (v, Action::Error)
    } else if let Some(v) = value.strip_suffix(":panic") {
        (v, Action::Panic)
    } else {
        (value, Action::Abort)
    };
    let (name, count) = value
        .rsplit_once(':')
        .ok_or_else(|| "no ':' before the hit number".to_owned())?;
    let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if name.is_empty() || !name.chars().all(valid) {
        return Err(format!(
            "bad point name {name:?} (lowercase letters, digits and '-')"
        ));
    }
    if !POINTS.iter().any(|(p, _)| *p == name) {
        eprintln!("fuse-live fault: {name:?} is not a documented point; armed anyway");
    }
    let point = Box::from(name);
    let number = |s: &str| {
        s.parse::<u64>()
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| format!("bad hit number {s:?}"))
    };
    let at = match count.split_once('-') {
        None => number(count)?,
        Some((lo, hi)) => {
            let (lo, hi) = (number(lo)?, number(hi)?);
            if hi < lo {
                return Err(format!("empty range {lo}-{hi}"));
            }
            let span = hi - lo;
            match span.checked_add(1) {
                Some(width) => lo + mix(u64::from(seed)) % width,
                // 1..=u64::MAX: any number but 0.
                None => mix(u64::from(seed)).max(lo),
            }
        }
    };
    Ok(Some(Plan {
        point,
        at,
        hits: AtomicU64::new(0),
        action,
        disarm: None,
        arm: None,
    }))
}

/// splitmix64's finalizer: nearby pids give unrelated hit numbers.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_fixed_hit_and_a_range() {
        let p = parse("after-call:3", 7).unwrap().unwrap();
        assert_eq!((&*p.point, p.at), ("after-call", 3));
        let mut seen = std::collections::BTreeSet::new();
        for pid in 0..200 {
            let p = parse("mid-record:10-13", pid).unwrap().unwrap();
            assert!((10..=13).contains(&p.at));
            seen.insert(p.at);
        }
        assert_eq!(
            seen.len(),
            4,
            "every hit of the range is picked for some pid"
        );
        let p = parse("after-reply:1-18446744073709551615", 5)
            .unwrap()
            .unwrap();
        assert!(p.at >= 1);
        assert!(parse("", 1).unwrap().is_none());
        // Not in the table: armed all the same (with a warning).
        let p = parse("a-new-point:2", 1).unwrap().unwrap();
        assert_eq!((&*p.point, p.at), ("a-new-point", 2));
        assert_eq!(p.action, Action::Abort);
        let p = parse("uring-request:4:error", 1).unwrap().unwrap();
        assert_eq!(
            (&*p.point, p.at, p.action),
            ("uring-request", 4, Action::Error)
        );
        let p = parse("dev-request:2-3:panic", 1).unwrap().unwrap();
        assert_eq!((&*p.point, p.action), ("dev-request", Action::Panic));
        assert!((2..=3).contains(&p.at));
    }

    #[test]
    fn a_fallible_point_fails_panics_or_passes_at_its_hit_only() {
        let plan = |action| Plan {
            point: Box::from("dev-request"),
            at: 2,
            hits: AtomicU64::new(0),
            action,
            disarm: None,
            arm: None,
        };
        let p = plan(Action::Error);
        assert!(
            hit(&p, "uring-request").is_ok(),
            "another point is not counted"
        );
        assert!(hit(&p, "dev-request").is_ok(), "hit 1 passes");
        let e = hit(&p, "dev-request").expect_err("hit 2 fails");
        assert_eq!(e.kind(), std::io::ErrorKind::Unsupported);
        assert!(e.to_string().contains("dev-request"), "{e}");
        assert!(hit(&p, "dev-request").is_ok(), "hit 3 passes");
        let p = plan(Action::Panic);
        assert!(hit(&p, "dev-request").is_ok());
        let panicked = std::panic::catch_unwind(|| hit(&p, "dev-request"));
        assert!(panicked.is_err(), "hit 2 panics");
    }

    #[test]
    fn hits_are_counted_only_while_the_arm_file_exists() {
        let arm = std::env::temp_dir().join(format!("fault-arm-{}", std::process::id()));
        let _ = std::fs::remove_file(&arm);
        let p = Plan {
            point: Box::from("uring-request"),
            at: 1,
            hits: AtomicU64::new(0),
            action: Action::Error,
            disarm: None,
            arm: Some(arm.clone()),
        };
        for _ in 0..3 {
            assert!(
                hit(&p, "uring-request").is_ok(),
                "not armed: no hit counted"
            );
        }
        std::fs::write(&arm, b"").unwrap();
        assert!(
            hit(&p, "uring-request").is_err(),
            "the first armed hit fires"
        );
        std::fs::remove_file(&arm).unwrap();
    }

    #[test]
    fn refuses_what_does_not_parse() {
        for bad in [
            "after-call",
            "after-call:",
            "after-call:0",
            "after-call:x",
            "after-call:5-3",
            "after-call:-3",
            "after-call:1:abort",
            "after-call:error",
            "after-call:1:error:panic",
            "after-call:1-",
            "After-Call:1",
            "after call:1",
            ":1",
        ] {
            assert!(parse(bad, 1).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = POINTS.iter().map(|(p, _)| *p).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n);
    }
}
