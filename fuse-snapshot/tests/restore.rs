//! The typed path end to end: a filesystem with its own state and a file
//! descriptor, snapshotted from a session driven by the fake kernel, written to a
//! file, read back and restored into a session that goes on serving.
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use fuse_snapshot::session::fake::FakeKernel;
use fuse_snapshot::session::*;
use fuse_snapshot::{
    load_file, load_file_with_limit, restore, save_file, snapshot, FdRestorer, FdSaver, FdSlot,
    FormatError, SnapshotFs,
};
use fuse_wire::InitFlags;

/// Names are numbers; node `n + 10`. Its own state: a label and an open file.
struct Numbers {
    label: String,
    backing: OwnedFd,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct NumbersState {
    label: String,
    backing: FdSlot,
}

fn attr(ino: u64) -> FileAttr {
    FileAttr {
        ino,
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0o644,
        nlink: 1,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl Filesystem for Numbers {
    type Node = u64;
    type Handle = u64;
    fn root(&self) -> u64 {
        1
    }
    fn lookup(&self, _: &RequestContext<'_>, _: &u64, name: &OsStr) -> Result<Entry<u64>> {
        let n: u64 = name
            .to_str()
            .and_then(|s| s.parse().ok())
            .ok_or(Errno::ENOENT)?;
        Ok(Entry {
            node: n + 10,
            attr: attr(n + 10),
            entry_ttl: Duration::ZERO,
            attr_ttl: Duration::ZERO,
        })
    }
    fn open(
        &self,
        _: &RequestContext<'_>,
        node: &u64,
        _: OpenFlags,
        _: FuseOpenFlags,
    ) -> Result<Opened<u64>> {
        Ok(Opened::new(node * 100))
    }
}

impl SnapshotFs for Numbers {
    type State = NumbersState;
    fn save(&self, fds: &mut FdSaver) -> io::Result<NumbersState> {
        Ok(NumbersState {
            label: self.label.clone(),
            backing: fds.add(self.backing.as_fd())?,
        })
    }
    fn restore(state: NumbersState, fds: &mut FdRestorer) -> std::result::Result<Self, String> {
        let backing = fds
            .take(state.backing)
            .ok_or_else(|| format!("no file descriptor in slot {}", state.backing.0))?;
        Ok(Numbers {
            label: state.label,
            backing,
        })
    }
}

fn numbers() -> Numbers {
    Numbers {
        label: "numbers".into(),
        backing: File::open("/dev/null").unwrap().into(),
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("fuse-snapshot-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn snapshot_file_restore_and_serve_on() {
    let mut k = FakeKernel::new(numbers());
    let mut fds = FdSaver::new();
    assert_eq!(
        snapshot(k.session(), &mut fds).unwrap_err(),
        FormatError::NotInitialized
    );
    k.init(45, InitFlags::INIT_EXT | InitFlags::HAS_RESEND);
    for i in 0..20u64 {
        let e = k.lookup(1, i.to_string().as_bytes()).unwrap();
        if i % 4 == 0 {
            k.open(e.nodeid, false, 0).unwrap();
        }
    }
    let before = k.session().snapshot().unwrap();
    let bytes = snapshot(k.session(), &mut fds).unwrap();
    assert_eq!(fds.len(), 1);

    let dir = scratch("restore");
    let path = dir.join("session.snap");
    save_file(&path, &bytes).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "no temporary file left"
    );
    let loaded = load_file(&path).unwrap();
    assert_eq!(loaded, bytes);

    // From a file there are no descriptors: this filesystem refuses, saying why.
    let err = restore::<Numbers>(&loaded, &mut FdRestorer::empty())
        .err()
        .unwrap();
    assert!(
        matches!(&err, FormatError::FsRestore(m) if m.contains("slot 0")),
        "{err:?}"
    );

    // With the descriptors passed beside it (as a handoff does), it restores.
    let mut restorer = FdRestorer::new(fds.into_fds());
    let restored = restore::<Numbers>(&loaded, &mut restorer).unwrap();
    assert!(restorer.into_unused().is_empty(), "the slot was taken");
    assert_eq!(restored.filesystem().label, "numbers");
    assert_eq!(restored.snapshot().unwrap(), before);
    let mut k2 = FakeKernel::with_session(restored);
    for (id, n) in k.kernel_lookups() {
        assert_eq!(k2.session().lookup_count(*id), Some(*n));
    }
    let again = k2.lookup(1, b"3").unwrap();
    assert_eq!(
        Some(again.nodeid),
        before.nodes.iter().find(|n| n.node == 13).map(|n| n.nodeid)
    );
    for h in &before.handles {
        assert_eq!(k2.release(h.nodeid, false, h.fh), 0);
    }

    // Saving over an existing file replaces it whole.
    save_file(&path, b"second").unwrap();
    assert_eq!(load_file(&path).unwrap(), b"second");
    let err = load_file_with_limit(&path, 5).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("limit"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fd_slots_are_taken_once_and_checked() {
    let null = File::open("/dev/null").unwrap();
    let mut saver = FdSaver::new();
    assert!(saver.is_empty());
    assert_eq!(saver.add(null.as_fd()).unwrap(), FdSlot(0));
    assert_eq!(saver.add(null.as_fd()).unwrap(), FdSlot(1));
    let fds = saver.into_fds();
    assert_eq!(fds.len(), 2);
    let mut r = FdRestorer::new(fds);
    assert_eq!(r.len(), 2);
    assert!(r.take(FdSlot(1)).is_some());
    assert!(r.take(FdSlot(1)).is_none(), "each slot once");
    assert!(r.take(FdSlot(2)).is_none(), "out of range");
    assert!(r.take(FdSlot(u32::MAX)).is_none(), "out of range");
    assert_eq!(r.into_unused().len(), 1, "slot 0 was not taken");
}

#[test]
fn save_file_errors_leave_nothing_behind() {
    let dir = scratch("errors");
    let err = save_file(&dir.join("missing-dir/x.snap"), b"x").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    let err = save_file(&dir, b"x").unwrap_err();
    // Renaming a file over a directory fails; the temporary file is removed.
    assert!(err.kind() != io::ErrorKind::NotFound, "{err}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}
