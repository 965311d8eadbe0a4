//! Fault injection for crash tests: [`point`] aborts the process at the Nth hit of
//! a named point when the environment says so.
//!
//! `FUSE_LIVE_FAULT=POINT:N` (N at least 1) makes the Nth call of
//! `point("POINT")` in this process abort it (`std::process::abort`: as abrupt as a
//! `kill -9` for everything outside the process). Unset, every point is one atomic
//! load. A malformed value is reported once on stderr and injects no fault.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The environment variable read once, at the first [`point`].
pub const FAULT_ENV: &str = "FUSE_LIVE_FAULT";

struct Plan {
    name: String,
    nth: u64,
    hits: AtomicU64,
}

fn plan() -> Option<&'static Plan> {
    static PLAN: OnceLock<Option<Plan>> = OnceLock::new();
    PLAN.get_or_init(|| {
        let v = std::env::var_os(FAULT_ENV)?;
        let parsed = v.to_str().and_then(|s| {
            let (name, n) = s.rsplit_once(':')?;
            let nth = n.parse::<u64>().ok().filter(|&n| n > 0)?;
            (!name.is_empty()).then(|| (name.to_owned(), nth))
        });
        match parsed {
            Some((name, nth)) => Some(Plan {
                name,
                nth,
                hits: AtomicU64::new(0),
            }),
            None => {
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stderr(),
                    "{FAULT_ENV}={}: not POINT:N (N >= 1); no fault injected",
                    v.to_string_lossy()
                );
                None
            }
        }
    })
    .as_ref()
}

/// A named fault point: aborts the process if `FUSE_LIVE_FAULT` names this point
/// and this is its Nth hit.
pub fn point(name: &'static str) {
    let Some(p) = plan() else {
        return;
    };
    if p.name == name && p.hits.fetch_add(1, Ordering::Relaxed) + 1 == p.nth {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "fault point {name} (hit {}): aborting pid {}",
            p.nth,
            std::process::id()
        );
        std::process::abort();
    }
}
