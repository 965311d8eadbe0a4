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
        match parse(&v) {
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

/// `POINT:N` with N at least 1 and a non-empty POINT.
fn parse(v: &std::ffi::OsStr) -> Option<(String, u64)> {
    let (name, n) = v.to_str()?.rsplit_once(':')?;
    let nth = n.parse::<u64>().ok().filter(|&n| n > 0)?;
    (!name.is_empty()).then(|| (name.to_owned(), nth))
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

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn point_and_count() {
        let p = |s: &str| parse(std::ffi::OsStr::new(s));
        assert_eq!(
            p("handoff-old-paused:2"),
            Some(("handoff-old-paused".into(), 2))
        );
        assert_eq!(p("a:b:1"), Some(("a:b".into(), 1)));
        for bad in ["", "x", "x:", ":1", "x:0", "x:-1", "x:1.5", "x: 1"] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
    }
}
