//! A phase trace for measuring where time goes (e.g. between a crash and `ready`):
//! with the environment variable [`ENV`] (`FUSE_LIVE_TRACE`) set to a non-empty
//! value, [`phase`] writes one line to stderr,
//!
//! ```text
//! fuse-live trace: MONO_NS pid PID WHAT
//! ```
//!
//! where `MONO_NS` is `CLOCK_MONOTONIC` in nanoseconds: comparable between
//! processes of one machine, so a benchmark that notes [`now_ns`] when it kills
//! a daemon can place each phase of the restarted daemon (and of the process
//! that restarts it) after the kill (examples/recovery_bench.rs does).
//!
//! The variable is read once. Unset, a phase costs one check of an initialized
//! `OnceLock`. A measuring aid, hidden from the API docs.
use std::io::Write;
use std::sync::OnceLock;

/// The environment variable read by [`phase`].
pub const ENV: &str = "FUSE_LIVE_TRACE";

/// The prefix of every trace line.
pub const PREFIX: &str = "fuse-live trace: ";

static ON: OnceLock<bool> = OnceLock::new();

/// True if [`ENV`] asks for the trace.
#[inline]
pub fn enabled() -> bool {
    *ON.get_or_init(|| std::env::var_os(ENV).is_some_and(|v| !v.is_empty()))
}

/// `CLOCK_MONOTONIC` in nanoseconds (0 if it cannot be read).
pub fn now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        (t.tv_sec() as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(t.tv_nsec() as u64)
    })
}

/// Writes the trace line of phase `what`, if the trace is on.
#[inline]
pub fn phase(what: &str) {
    if enabled() {
        write_line(what);
    }
}

#[cold]
fn write_line(what: &str) {
    let _ = writeln!(
        std::io::stderr().lock(),
        "{PREFIX}{} pid {} {what}",
        now_ns(),
        std::process::id()
    );
}

/// Parses a trace line: `(MONO_NS, PID, WHAT)`; `None` for any other line.
pub fn parse(line: &str) -> Option<(u64, u32, &str)> {
    let rest = line.strip_prefix(PREFIX)?;
    let (ns, rest) = rest.split_once(" pid ")?;
    let (pid, what) = rest.split_once(' ')?;
    Some((ns.parse().ok()?, pid.parse().ok()?, what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_back() {
        assert_eq!(
            parse("fuse-live trace: 123456789 pid 42 journal recovered"),
            Some((123_456_789, 42, "journal recovered"))
        );
        assert_eq!(parse("memfs INFO x: y"), None);
        assert_eq!(parse("fuse-live trace: x pid 1 a"), None);
        assert_eq!(parse("fuse-live trace: 1 pid 1"), None);
        assert!(now_ns() > 0);
    }
}
