//! Descriptors passed at start (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`), as
//! `sd_listen_fds(3)` defines them: what a service manager or keeper hands back to
//! a restarted daemon.
//!
//! The environment is untrusted input: a bad number or a name list of the wrong
//! length is a clear error, a descriptor that is not open is refused, and nothing
//! panics. Variables meant for another process (`LISTEN_PID` not ours, or, where
//! systemd 256+ sets it, `LISTEN_PIDFDID` not the inode of our pidfd) are ignored.
use std::ffi::{OsStr, OsString};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};

use super::message::check_fd_name;
use super::FdStoreError;

/// The first passed descriptor (`SD_LISTEN_FDS_START`); the others follow it.
pub const LISTEN_FDS_START: RawFd = 3;

/// The most descriptors accepted from `LISTEN_FDS` (a bound on untrusted input; a
/// keeper or systemd stores far fewer).
pub const MAX_LISTEN_FDS: u32 = 4096;

/// The name systemd gives passed descriptors when `LISTEN_FDNAMES` is not set.
pub const UNKNOWN_FD_NAME: &str = "unknown";

/// The variables of the protocol, removed from the environment once read.
const VARS: [&str; 4] = [
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "LISTEN_PIDFDID",
];

/// Set once the passed descriptors have been claimed: they have one owner.
static CLAIMED: AtomicBool = AtomicBool::new(false);

/// What the `LISTEN_*` variables say, checked: how many descriptors and their
/// names. `None` when they are absent or meant for another process.
///
/// # Errors
/// [`FdStoreError::Env`] naming the variable and what is wrong with it.
pub fn parse_listen_env(
    fds: Option<&OsStr>,
    pid: Option<&OsStr>,
    names: Option<&OsStr>,
    my_pid: u32,
) -> Result<Option<Vec<String>>, FdStoreError> {
    fn text<'a>(var: &'static str, v: &'a OsStr) -> Result<&'a str, FdStoreError> {
        v.to_str().ok_or_else(|| FdStoreError::Env {
            var,
            value: v.to_string_lossy().chars().take(120).collect(),
            reason: "not UTF-8",
        })
    }
    let bad = |var: &'static str, v: &str, reason: &'static str| FdStoreError::Env {
        var,
        value: v.chars().take(120).collect(),
        reason,
    };
    // As sd_listen_fds: without LISTEN_PID nothing was passed to anyone.
    let (Some(fds), Some(pid)) = (fds, pid) else {
        return Ok(None);
    };
    let pid = text("LISTEN_PID", pid)?;
    let pid: u32 = pid
        .parse()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| bad("LISTEN_PID", pid, "not a process id"))?;
    if pid != my_pid {
        return Ok(None);
    }
    let fds = text("LISTEN_FDS", fds)?;
    let n: u32 = fds
        .parse()
        .map_err(|_| bad("LISTEN_FDS", fds, "not a count of descriptors"))?;
    if n > MAX_LISTEN_FDS {
        return Err(bad("LISTEN_FDS", fds, "more than 4096 descriptors"));
    }
    let n = n as usize;
    let names: Vec<String> = match names {
        None => vec![UNKNOWN_FD_NAME.to_owned(); n],
        Some(v) => {
            let v = text("LISTEN_FDNAMES", v)?;
            let list: Vec<String> = if n == 0 && v.is_empty() {
                Vec::new()
            } else {
                v.split(':').map(str::to_owned).collect()
            };
            if list.len() != n {
                return Err(bad(
                    "LISTEN_FDNAMES",
                    v,
                    "does not hold one name per descriptor of LISTEN_FDS",
                ));
            }
            for name in &list {
                check_fd_name(name).map_err(|_| bad("LISTEN_FDNAMES", v, "holds a bad name"))?;
            }
            list
        }
    };
    Ok(Some(names))
}

/// The inode number of a pidfd of this process (unique per process on kernels with
/// pidfs, 6.9 and later, which is where systemd sets `LISTEN_PIDFDID`), or `None`
/// if `pidfd_open(2)` is not available.
fn own_pidfd_id() -> Option<u64> {
    // SAFETY: pidfd_open(2) with this process's pid and no flags; it returns a new
    // descriptor or -1, and touches no memory of ours.
    let fd = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_pidfd_open,
            nix::libc::getpid(),
            0 as nix::libc::c_uint,
        )
    };
    let fd = RawFd::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: the kernel has just returned `fd`, a new descriptor nothing else
    // in this process knows: this `OwnedFd` is its only owner.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    nix::sys::stat::fstat(&fd).ok().map(|st| st.st_ino)
}

/// The descriptors passed to this process at start, by name.
///
/// Get them once with [`ListenFds::from_env`], early in `main` (it changes the
/// environment: call it before starting threads). Names need not be unique;
/// [`take`](ListenFds::take) hands out the first unclaimed descriptor of a name.
/// Descriptors nobody took are closed when this is dropped.
#[derive(Debug, Default)]
pub struct ListenFds {
    fds: Vec<(String, Option<OwnedFd>)>,
}

impl ListenFds {
    /// No descriptors.
    pub fn empty() -> ListenFds {
        ListenFds { fds: Vec::new() }
    }

    /// A list over descriptors this process already owns (for tests and for
    /// programs that received them another way).
    pub fn from_fds(fds: Vec<(String, OwnedFd)>) -> ListenFds {
        ListenFds {
            fds: fds.into_iter().map(|(n, f)| (n, Some(f))).collect(),
        }
    }

    /// Claims the descriptors `LISTEN_FDS` and `LISTEN_PID` pass to this process
    /// (numbers 3 and up), names them from `LISTEN_FDNAMES`, makes them
    /// close-on-exec, and removes the `LISTEN_*` variables from the environment (so
    /// that children do not see them), whatever the outcome.
    ///
    /// Variables meant for another process (`LISTEN_PID` is not ours), or absent,
    /// give an empty list. Only the first call in a process can claim descriptors;
    /// later calls give an empty list.
    ///
    /// # Errors
    /// [`FdStoreError::Env`] for a malformed variable, [`FdStoreError::FdNotOpen`]
    /// if a descriptor the variables announce is not open. No descriptor is claimed
    /// then.
    pub fn from_env() -> Result<ListenFds, FdStoreError> {
        let vals: Vec<Option<OsString>> = VARS.iter().map(std::env::var_os).collect();
        for v in VARS {
            std::env::remove_var(v);
        }
        let Some(names) = parse_listen_env(
            vals[0].as_deref(),
            vals[1].as_deref(),
            vals[2].as_deref(),
            std::process::id(),
        )?
        else {
            return Ok(ListenFds::empty());
        };
        if let Some(id) = vals[3].as_deref() {
            // systemd 256+: the inode number of the intended process's pidfd, which
            // (unlike a pid) is never reused.
            let text = id.to_string_lossy();
            let want: u64 = text.parse().map_err(|_| FdStoreError::Env {
                var: "LISTEN_PIDFDID",
                value: text.chars().take(120).collect(),
                reason: "not a pidfd inode number",
            })?;
            if own_pidfd_id().is_some_and(|mine| mine != want) {
                return Ok(ListenFds::empty());
            }
        }
        if CLAIMED.swap(true, Ordering::AcqRel) {
            return Ok(ListenFds::empty());
        }
        let mut raws = Vec::with_capacity(names.len());
        for i in 0..names.len() {
            // At most 4096 descriptors: no overflow.
            let fd = LISTEN_FDS_START + i as RawFd;
            // SAFETY: F_GETFD only reads the descriptor flags of a number; it
            // fails with EBADF, touching nothing, if the number is not open.
            if unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) } < 0 {
                return Err(FdStoreError::FdNotOpen {
                    fd,
                    count: names.len(),
                });
            }
            raws.push(fd);
        }
        let mut fds = Vec::with_capacity(names.len());
        for (name, fd) in names.into_iter().zip(raws) {
            // SAFETY: `LISTEN_PID` names this process, so by the protocol
            // (`sd_listen_fds(3)`) descriptor `fd`, just checked to be open, was
            // passed to it across exec for it to own. `CLAIMED` makes this the only
            // place in the process that takes ownership of it, once.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|e| FdStoreError::Io {
                what: "make a passed descriptor close-on-exec",
                source: e.into(),
            })?;
            fds.push((name, Some(owned)));
        }
        Ok(ListenFds { fds })
    }

    /// How many descriptors were passed (taken or not).
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    /// Whether none were passed.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// The names of the descriptors not taken yet, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fds
            .iter()
            .filter(|(_, f)| f.is_some())
            .map(|(n, _)| n.as_str())
    }

    /// Whether a descriptor named `name` is there (and not taken yet).
    pub fn contains(&self, name: &str) -> bool {
        self.names().any(|n| n == name)
    }

    /// The first descriptor named `name` not taken yet.
    pub fn take(&mut self, name: &str) -> Option<OwnedFd> {
        self.fds
            .iter_mut()
            .find(|(n, f)| n == name && f.is_some())
            .and_then(|(_, f)| f.take())
    }

    /// Every descriptor named `name` not taken yet, in order.
    pub fn take_all(&mut self, name: &str) -> Vec<OwnedFd> {
        self.fds
            .iter_mut()
            .filter(|(n, _)| n == name)
            .filter_map(|(_, f)| f.take())
            .collect()
    }

    /// The descriptors nobody took, with their names.
    pub fn into_remaining(self) -> Vec<(String, OwnedFd)> {
        self.fds
            .into_iter()
            .filter_map(|(n, f)| f.map(|f| (n, f)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(
        fds: Option<&str>,
        pid: Option<&str>,
        names: Option<&str>,
    ) -> Result<Option<Vec<String>>, FdStoreError> {
        parse_listen_env(
            fds.map(OsStr::new),
            pid.map(OsStr::new),
            names.map(OsStr::new),
            100,
        )
    }

    #[test]
    fn listen_env() {
        assert_eq!(p(None, None, None).unwrap(), None);
        assert_eq!(p(Some("2"), None, None).unwrap(), None, "no LISTEN_PID");
        assert_eq!(p(Some("2"), Some("101"), None).unwrap(), None, "not ours");
        assert_eq!(
            p(Some("2"), Some("100"), None).unwrap(),
            Some(vec!["unknown".to_owned(), "unknown".to_owned()])
        );
        assert_eq!(
            p(Some("2"), Some("100"), Some("fuse-device:journal")).unwrap(),
            Some(vec!["fuse-device".to_owned(), "journal".to_owned()])
        );
        assert_eq!(p(Some("0"), Some("100"), Some("")).unwrap(), Some(vec![]));
        assert_eq!(
            p(Some("1"), Some("100"), Some("")).unwrap(),
            Some(vec![String::new()])
        );
        for (fds, pid, names, var) in [
            ("x", "100", None, "LISTEN_FDS"),
            ("-1", "100", None, "LISTEN_FDS"),
            ("4097", "100", None, "LISTEN_FDS"),
            ("99999999999999999999", "100", None, "LISTEN_FDS"),
            ("1", "abc", None, "LISTEN_PID"),
            ("1", "0", None, "LISTEN_PID"),
            ("1", "-5", None, "LISTEN_PID"),
            ("2", "100", Some("a"), "LISTEN_FDNAMES"),
            ("1", "100", Some("a:b"), "LISTEN_FDNAMES"),
            ("1", "100", Some("a\nb"), "LISTEN_FDNAMES"),
        ] {
            match p(Some(fds), Some(pid), names) {
                Err(FdStoreError::Env { var: v, .. }) => assert_eq!(v, var, "{fds} {pid}"),
                other => panic!("{fds} {pid} {names:?}: {other:?}"),
            }
        }
        let e = p(Some("x"), Some("100"), None).unwrap_err().to_string();
        assert!(e.contains("LISTEN_FDS") && e.contains("\"x\""), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn listen_env_never_panics(
            fds in "[0-9a-z:-]{0,12}",
            pid in "[0-9a-z-]{0,12}",
            names in proptest::option::of("[ -~\n]{0,40}"),
        ) {
            let r = parse_listen_env(
                Some(OsStr::new(&fds)),
                Some(OsStr::new(&pid)),
                names.as_deref().map(OsStr::new),
                100,
            );
            if let Ok(Some(list)) = r {
                proptest::prop_assert_eq!(Ok(list.len()), fds.parse::<usize>());
                proptest::prop_assert!(list.iter().all(|n| check_fd_name(n).is_ok()));
            }
        }
    }

    #[test]
    fn own_pidfd_id_is_stable() {
        let a = own_pidfd_id();
        assert_eq!(a, own_pidfd_id(), "the same process, the same id");
    }

    #[test]
    fn taking_by_name() {
        let (a, b) = nix::unistd::pipe().unwrap();
        let c = a.try_clone().unwrap();
        let mut l = ListenFds::from_fds(vec![
            ("x".to_owned(), a),
            ("y".to_owned(), b),
            ("x".to_owned(), c),
        ]);
        assert_eq!(l.len(), 3);
        assert!(l.contains("y"));
        assert!(l.take("y").is_some());
        assert!(l.take("y").is_none());
        assert!(!l.contains("y"));
        assert_eq!(l.names().collect::<Vec<_>>(), ["x", "x"]);
        assert_eq!(l.take_all("x").len(), 2);
        assert!(l.into_remaining().is_empty());
    }
}
