//! Regression tests for what an outside filesystem test suite found when it ran memfs
//! next to tmpfs (docs/CONFORMANCE.md, "Outside suite"): each test replays one
//! finding on real kernel mounts.
use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

mod common;
use common::{can_mount, is_fuse_mounted, temp_dir, Mounted};

/// How often the unmount-from-outside sequence is replayed: it failed every time
/// before the fix, since the kernel hands the freed device number to the next mount.
const REMOUNT_ROUNDS: usize = 20;

/// Mount memfs A on P, unmount P from outside (as `umount P` does), mount memfs B on
/// P at once: when A notices its connection ended and exits, B's mount must stay.
/// A used to check "is the mount at P mine" by device number, which B's mount had
/// just been given, and unmounted it.
#[test]
fn exiting_daemon_leaves_a_newer_mount_alone() {
    if !can_mount("exiting_daemon_leaves_a_newer_mount_alone") {
        return;
    }
    for round in 0..REMOUNT_ROUNDS {
        let dir = temp_dir("remount");
        let mnt = dir.join("mnt");
        fs::create_dir(&mnt).unwrap();
        let mut a = Mounted::start_in("memfs", dir.clone(), "a.log", &[], &[]);
        fs::write(a.path("from-a"), b"a").unwrap();
        // The daemon's own pokes hold the root open for a moment (EBUSY): retry,
        // as an administrator would.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match nix::mount::umount(&mnt) {
                Err(nix::errno::Errno::EBUSY) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                r => break r.expect("umount P from outside"),
            }
        }
        assert!(
            !is_fuse_mounted(&mnt),
            "round {round}: still mounted after umount"
        );
        let b = Mounted::start_in("memfs", dir.clone(), "b.log", &[], &[]);
        let status = a
            .wait_exit(Duration::from_secs(60))
            .expect("A did not exit after its mount was unmounted");
        assert!(status.success(), "round {round}: A exited with {status}");
        a.release_exited();
        assert!(
            is_fuse_mounted(&mnt),
            "round {round}: the exiting daemon unmounted the newer mount at the same place"
        );
        // B's mount is still the one at P, and serves.
        assert!(!b.path("from-a").exists(), "round {round}: A's file at P");
        let mut f = fs::File::create(b.path("from-b")).unwrap();
        f.write_all(b"b").unwrap();
        drop(f);
        let mut back = String::new();
        fs::File::open(b.path("from-b"))
            .unwrap()
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, "b");
        let status = b.stop();
        assert!(status.success(), "round {round}: B exited with {status}");
    }
}

/// Mounts memfs with `allow_other` (children running as `nobody` get in).
fn memfs(test: &str, args: &[&str]) -> Option<Mounted> {
    if !can_mount(test) {
        return None;
    }
    let mut all = vec!["--allow-other"];
    all.extend_from_slice(args);
    Some(Mounted::start("memfs", &all, &[]))
}

/// The permission bits of `p` (through a fresh stat: memfs's attributes are cached
/// for a second, so the mount is asked with `statx(AT_STATX_FORCE_SYNC)`).
fn perm_of(p: &Path) -> u32 {
    let st = rustix::fs::statx(
        rustix::fs::CWD,
        p,
        rustix::fs::AtFlags::STATX_FORCE_SYNC,
        rustix::fs::StatxFlags::MODE,
    )
    .unwrap();
    u32::from(st.stx_mode) & 0o7777
}

/// A size or data change by a user who is neither privileged nor in the file's
/// group clears set-user-ID and set-group-ID, group-executable or not (the kernel's
/// `setattr_should_drop_suidgid`, which tmpfs follows): 6666 -> 666, 2666 -> 666.
/// FUSE sends no kill flag with FALLOCATE, and without `HANDLE_KILLPRIV` its own
/// SETATTR before the change clears set-group-ID only when group-executable.
#[test]
fn fallocate_write_truncate_by_others_drop_setgid() {
    use rustix::fs::FallocateFlags as F;
    let Some(m) = memfs("fallocate_write_truncate_by_others_drop_setgid", &[]) else {
        return;
    };
    let (uid, gid) = common::nobody();
    let src = m.path("copy-source");
    fs::write(&src, vec![1u8; 100]).unwrap();
    type Change = fn(&fs::File, &Path) -> std::io::Result<()>;
    let changes: [(&str, Change); 6] = [
        ("fallocate", |f, _| {
            Ok(rustix::fs::fallocate(f, F::empty(), 0, 8192)?)
        }),
        ("punch-hole", |f, _| {
            Ok(rustix::fs::fallocate(
                f,
                F::PUNCH_HOLE | F::KEEP_SIZE,
                0,
                4096,
            )?)
        }),
        ("zero-range", |f, _| {
            Ok(rustix::fs::fallocate(f, F::ZERO_RANGE, 0, 4096)?)
        }),
        ("write", |f, _| {
            use std::os::unix::fs::FileExt;
            f.write_at(b"x", 0).map(|_| ())
        }),
        ("truncate", |f, _| f.set_len(100)),
        ("copy_file_range", |f, src| {
            let src = fs::File::open(src)?;
            let mut off = 0u64;
            rustix::fs::copy_file_range(&src, Some(&mut off), f, Some(&mut 0u64), 10)?;
            Ok(())
        }),
    ];
    for (what, change) in changes {
        for (before, after) in [(0o6666, 0o666), (0o2666, 0o666), (0o4666, 0o666)] {
            let p = m.path(&format!("{what}-{before:o}"));
            fs::write(&p, vec![7u8; 8192]).unwrap();
            fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(before)).unwrap();
            assert_eq!(perm_of(&p), before);
            let q = p.clone();
            let src = src.clone();
            let rc = common::as_user(uid, gid, move || {
                let f = match fs::OpenOptions::new().write(true).open(&q) {
                    Ok(f) => f,
                    Err(e) => return 100 + e.raw_os_error().unwrap_or(0).min(100),
                };
                common::errno_of(change(&f, &src))
            });
            assert_eq!(rc, 0, "{what} as nobody on {before:o}");
            assert_eq!(
                perm_of(&p),
                after,
                "{what} by a user outside the file's group on a {before:o} file"
            );
        }
    }
    // The owner's own group keeps set-group-ID without group-exec (the rule is about
    // callers outside the group): root's privileged write keeps both bits.
    let p = m.path("root-writes");
    fs::write(&p, b"x").unwrap();
    fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o6666)).unwrap();
    rustix::fs::fallocate(
        fs::OpenOptions::new().write(true).open(&p).unwrap(),
        F::empty(),
        0,
        8192,
    )
    .unwrap();
    assert_eq!(
        perm_of(&p),
        0o6666,
        "a privileged fallocate keeps both bits"
    );
    m.stop();
}

/// Files listed while another thread renames them back and forth in the same
/// directory: every listing shows each file exactly once (an entry keeps its place
/// in the listing when renamed within its directory), and none is missed.
#[test]
fn readdir_while_renaming_lists_each_file_once() {
    use std::collections::BTreeSet;
    use std::os::unix::fs::DirEntryExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    const FILES: usize = 5000;
    const LISTINGS: usize = 6;
    let Some(m) = memfs("readdir_while_renaming_lists_each_file_once", &[]) else {
        return;
    };
    let dir = m.path("d");
    fs::create_dir(&dir).unwrap();
    for i in 0..FILES {
        fs::File::create(dir.join(format!("f{i}"))).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let renamer = {
        let (dir, stop) = (dir.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut renames = 0u64;
            let mut round = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let (from, to) = if round % 2 == 0 {
                    ("f", "g")
                } else {
                    ("g", "f")
                };
                for i in 0..FILES {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let a = dir.join(format!("{from}{i}"));
                    let b = dir.join(format!("{to}{i}"));
                    if fs::rename(&a, &b).is_ok() {
                        renames += 1;
                    }
                }
                round += 1;
            }
            renames
        })
    };
    let mut lists = Vec::new();
    for _ in 0..LISTINGS {
        let mut names = Vec::new();
        let mut inos = BTreeSet::new();
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            names.push(e.file_name());
            inos.insert(e.ino());
        }
        lists.push((names.len(), inos.len()));
    }
    stop.store(true, Ordering::Relaxed);
    let renames = renamer.join().unwrap();
    assert!(renames > 0, "the renamer never ran");
    for (i, (names, inos)) in lists.into_iter().enumerate() {
        assert_eq!(
            (names, inos),
            (FILES, FILES),
            "listing {i}: (entries, distinct inodes) for {FILES} files being renamed"
        );
    }
    m.stop();
}

/// The atime of `p`, asked of the mount (not the kernel's attribute cache).
fn atime_of(p: &Path) -> i64 {
    let st = rustix::fs::statx(
        rustix::fs::CWD,
        p,
        rustix::fs::AtFlags::STATX_FORCE_SYNC,
        rustix::fs::StatxFlags::ATIME,
    )
    .unwrap();
    st.stx_atime.tv_sec
}

/// Sets `p`'s atime to `secs` (mtime to now - 100 s, and so ctime to now).
fn set_atime(p: &Path, secs: i64) {
    use rustix::fs::{Timespec, Timestamps};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let ts = Timestamps {
        last_access: Timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
        last_modification: Timespec {
            tv_sec: now - 100,
            tv_nsec: 0,
        },
    };
    rustix::fs::utimensat(rustix::fs::CWD, p, &ts, rustix::fs::AtFlags::empty()).unwrap();
}

/// Reads `p` through the mount: the page cache is dropped first, so that the read
/// reaches the filesystem.
fn read_through(p: &Path) {
    let mut f = fs::File::open(p).unwrap();
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
}

/// memfs follows the mount's access-time mode: `noatime` never updates the atime
/// (not on read, not on exec), `strictatime` updates it on every access, `relatime`
/// (the default) only when it is not after mtime/ctime or is a day old.
#[test]
fn atime_follows_the_mount_mode() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (old, future) = (1000, now + 3600);
    // (options, atime updated when old, atime updated when in the future)
    let modes: [(&[&str], bool, bool); 3] = [
        (&["-o", "noatime"], false, false),
        (&["-o", "strictatime"], true, true),
        (&[], true, false),
    ];
    for (args, when_old, when_future) in modes {
        let Some(m) = memfs("atime_follows_the_mount_mode", args) else {
            return;
        };
        let file = m.path("file");
        fs::write(&file, vec![5u8; 16384]).unwrap();
        let exe = m.path("true");
        fs::copy("/bin/true", &exe).unwrap();
        fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        for (start, updated) in [(old, when_old), (future, when_future)] {
            set_atime(&file, start);
            read_through(&file);
            let after = atime_of(&file);
            assert_eq!(
                after != start,
                updated,
                "{args:?}: read of a file with atime {start}: atime now {after}"
            );
            set_atime(&exe, start);
            read_through(&exe);
            set_atime(&exe, start);
            {
                let f = fs::File::open(&exe).unwrap();
                rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
            }
            let st = std::process::Command::new(&exe).status().unwrap();
            assert!(st.success());
            let after = atime_of(&exe);
            assert_eq!(
                after != start,
                updated,
                "{args:?}: exec of a file with atime {start}: atime now {after}"
            );
        }
        m.stop();
    }
}

/// A remount that changes the access-time mode is followed (memfs reads the mode
/// again at most a second after the last reading).
#[test]
fn atime_follows_a_remount() {
    use nix::mount::MsFlags;
    let Some(m) = memfs("atime_follows_a_remount", &[]) else {
        return;
    };
    let file = m.path("file");
    fs::write(&file, vec![5u8; 4096]).unwrap();
    set_atime(&file, 1000);
    read_through(&file);
    assert_ne!(atime_of(&file), 1000, "relatime updates an old atime");
    nix::mount::mount(
        None::<&str>,
        &m.mnt,
        None::<&str>,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_NOATIME
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .expect("remount noatime");
    // Past memfs's refresh period of the mount's mode (not a timing assumption about
    // the machine: the period is measured by memfs from its last reading).
    std::thread::sleep(Duration::from_millis(1100));
    set_atime(&file, 1000);
    read_through(&file);
    assert_eq!(atime_of(&file), 1000, "noatime after the remount");
    m.stop();
}

/// `memfs --state FILE` keeps the contents across mounts: saved at SIGTERM and at an
/// unmount from outside, restored at the next start (fresh connection, same inode
/// numbers); a damaged state file is refused with exit 1, never replaced by an empty
/// filesystem.
#[test]
fn state_file_survives_remounts() {
    use std::os::unix::fs::MetadataExt;
    if !can_mount("state_file_survives_remounts") {
        return;
    }
    let keep = temp_dir("state");
    let file = keep.join("memfs.state");
    let arg = file.to_str().unwrap().to_owned();

    // First mount: make a tree, stop with SIGTERM.
    let m = Mounted::start("memfs", &["--state", &arg], &[]);
    fs::create_dir(m.path("dir")).unwrap();
    fs::write(m.path("dir/a"), b"hello across mounts").unwrap();
    std::os::unix::fs::symlink("dir/a", m.path("link")).unwrap();
    rustix::fs::setxattr(
        m.path("dir/a"),
        "user.k",
        b"v",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    fs::set_permissions(
        m.path("dir/a"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    let ino = fs::metadata(m.path("dir/a")).unwrap().ino();
    assert!(m.stop().success());
    assert!(file.exists(), "no state file after SIGTERM");

    // Second mount: everything is back; then unmount from outside.
    let mut m = Mounted::start("memfs", &["--state", &arg], &[]);
    assert_eq!(fs::read(m.path("dir/a")).unwrap(), b"hello across mounts");
    assert_eq!(fs::read_link(m.path("link")).unwrap(), Path::new("dir/a"));
    let md = fs::metadata(m.path("dir/a")).unwrap();
    assert_eq!((md.ino(), md.mode() & 0o7777), (ino, 0o640));
    let mut v = [0u8; 8];
    let n = rustix::fs::getxattr(m.path("dir/a"), "user.k", &mut v).unwrap();
    assert_eq!(&v[..n], b"v");
    fs::write(m.path("second"), b"2").unwrap();
    nix::mount::umount(&m.mnt).expect("umount from outside");
    let st = m
        .wait_exit(Duration::from_secs(60))
        .expect("memfs did not exit");
    assert!(st.success());
    drop(m);

    // Third mount: the second mount's change is there too.
    let m = Mounted::start("memfs", &["--state", &arg], &[]);
    assert_eq!(fs::read(m.path("second")).unwrap(), b"2");
    assert_eq!(fs::read(m.path("dir/a")).unwrap(), b"hello across mounts");
    assert!(m.stop().success());

    // A damaged state file: exit 1, and the file is left as it was.
    let mut bytes = fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&file, &bytes).unwrap();
    let mnt = keep.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let out = std::process::Command::new(common::example_binary("memfs"))
        .arg(&mnt)
        .args(["--state", &arg])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a damaged state file must be refused"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--state"), "stderr: {err}");
    assert!(!is_fuse_mounted(&mnt));
    assert_eq!(fs::read(&file).unwrap(), bytes);
    fs::remove_dir_all(&keep).unwrap();
}

/// A file handle of `path` (`name_to_handle_at`): the raw `struct file_handle`.
fn handle_of(path: &Path) -> Vec<u32> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // struct file_handle: u32 handle_bytes, i32 handle_type, then MAX_HANDLE_SZ (128)
    // bytes; kept in u32s for its alignment.
    let mut buf = vec![0u32; 2 + 128 / 4];
    buf[0] = 128;
    let mut mount_id: nix::libc::c_int = 0;
    // SAFETY: `c` is a NUL-terminated path; `buf` is a writable, u32-aligned
    // `struct file_handle` whose `handle_bytes` says how much room follows the
    // header; `mount_id` is a writable int.
    let rc = unsafe {
        nix::libc::name_to_handle_at(
            nix::libc::AT_FDCWD,
            c.as_ptr(),
            buf.as_mut_ptr().cast(),
            &mut mount_id,
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "name_to_handle_at: {}",
        std::io::Error::last_os_error()
    );
    buf
}

/// Opens file handle `h` on the filesystem of `mount_fd`.
fn open_by_handle(mount_fd: &fs::File, h: &mut [u32], flags: i32) -> std::io::Result<fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: `h` is a `struct file_handle` filled by name_to_handle_at; the kernel
    // only reads it. On success the returned descriptor is new and ours.
    let fd =
        unsafe { nix::libc::open_by_handle_at(mount_fd.as_raw_fd(), h.as_mut_ptr().cast(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by open_by_handle_at and is owned by no one else.
    Ok(unsafe { fs::File::from_raw_fd(fd) })
}

/// Evicts unused inodes and dentries machine-wide, so that the kernel forgets the
/// mount's inodes that no one holds (FORGET reaches the daemon).
fn evict_inodes() {
    fs::write("/proc/sys/vm/drop_caches", b"2").expect("write drop_caches");
}

/// Waits (a bounded while) until every request of the mount's connection has been
/// answered: a file just closed is held in the kernel by its RELEASE until the
/// daemon answers it, so its inode cannot be evicted before (under load that
/// answer can lag behind `drop_caches`).
fn wait_answered(mnt: &Path) {
    use fuse_session::dev::fusectl;
    let Ok(conn) = fusectl::connection_id(mnt) else {
        return;
    };
    for _ in 0..500 {
        if fusectl::waiting(conn).is_ok_and(|n| n == 0) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// File handles (`name_to_handle_at`, as NFS export uses them) of a file and a
/// directory still open by handle after the kernel evicted their inodes: the kernel
/// asks LOOKUP of `.` (and `..`) on nodeids the session had forgotten, and memfs
/// resolves them (its nodeids are its inode numbers).
#[test]
fn file_handles_work_after_eviction() {
    if !can_mount("file_handles_work_after_eviction") {
        return;
    }
    let m = Mounted::start("memfs", &["--allow-other"], &[("RUST_LOG", "debug")]);
    fs::create_dir_all(m.path("d/sub")).unwrap();
    fs::write(m.path("d/sub/f"), b"by handle").unwrap();
    let mut file_h = handle_of(&m.path("d/sub/f"));
    let mut dir_h = handle_of(&m.path("d/sub"));
    let root = fs::File::open(&m.mnt).unwrap();
    let mut resolved = false;
    // Eviction is the kernel's choice: try a few times until memfs saw a nodeid
    // named again after it was forgotten.
    for _ in 0..10 {
        wait_answered(&m.mnt);
        evict_inodes();
        let mut f = open_by_handle(&root, &mut file_h, nix::libc::O_RDONLY)
            .expect("open_by_handle_at of a file after eviction");
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "by handle");
        drop(f);
        let d = open_by_handle(
            &root,
            &mut dir_h,
            nix::libc::O_RDONLY | nix::libc::O_DIRECTORY,
        )
        .expect("open_by_handle_at of a directory after eviction");
        drop(d);
        if m.log_text()
            .contains("resolved by the filesystem after the kernel forgot it")
        {
            resolved = true;
            break;
        }
    }
    assert!(
        resolved,
        "the kernel never forgot the inodes; log:\n{}",
        m.log_text()
    );
    assert!(
        !m.log_text().contains("unknown nodeid"),
        "log:\n{}",
        m.log_text()
    );
    // A deleted file's handle is stale, as on any filesystem. While the kernel still
    // caches a dentry alias of the inode (`d_obtain_alias` above made one; a
    // referenced dentry survives one pass of drop_caches), fuse_get_dentry finds the
    // inode without asking the daemon and the open succeeds: that is the kernel's
    // cache, not the filesystem's answer. Once the inode is evicted, the kernel asks
    // LOOKUP "." and memfs must answer ESTALE.
    //
    // Each open that still succeeds is closed at once, and its RELEASE holds the
    // inode in the kernel until the daemon answers it: wait for every request of
    // the connection to be answered before the next eviction (under load the
    // answer can lag behind drop_caches, and the inode then stays cached).
    fs::remove_file(m.path("d/sub/f")).unwrap();
    let mut last = None;
    for _ in 0..10 {
        wait_answered(&m.mnt);
        evict_inodes();
        match open_by_handle(&root, &mut file_h, nix::libc::O_RDONLY) {
            Ok(f) => last = Some(format!("opened {f:?}")),
            Err(e) => {
                last = None;
                assert_eq!(e.raw_os_error(), Some(nix::libc::ESTALE), "{e}");
                break;
            }
        }
    }
    assert!(
        last.is_none(),
        "a deleted file's handle never went stale: {last:?}"
    );
    drop(root);
    m.stop();
}

/// File handles stay valid when the session moves: across a live handoff to a new
/// process (evicted inodes resolved by the new one), and across a cold restore
/// (`--state`) onto a new mount, since memfs's nodeids are its inode numbers.
#[test]
fn file_handles_survive_handoff_and_cold_restore() {
    if !can_mount("file_handles_survive_handoff_and_cold_restore") {
        return;
    }
    let dir = temp_dir("handles");
    fs::create_dir(dir.join("mnt")).unwrap();
    let sock = dir.join("upgrade.sock");
    // Outside `dir`, which the daemon's guard removes when it stops.
    let keep = temp_dir("handles-state");
    let state = keep.join("memfs.state");
    let (sock_s, state_s) = (sock.to_str().unwrap(), state.to_str().unwrap());
    let mut a = Mounted::start_in(
        "memfs",
        dir.clone(),
        "a.log",
        &["--upgrade-socket", sock_s],
        &[],
    );
    fs::create_dir(a.path("d")).unwrap();
    fs::write(a.path("d/f"), b"moved").unwrap();
    let mut h = handle_of(&a.path("d/f"));
    let b = Mounted::take_over_in(
        "memfs",
        dir.clone(),
        "b.log",
        &["--takeover", sock_s, "--state", state_s],
        &[("RUST_LOG", "debug")],
    );
    let st = a
        .wait_exit(Duration::from_secs(60))
        .expect("the old daemon did not exit");
    assert!(st.success());
    a.release_exited();
    let root = fs::File::open(&b.mnt).unwrap();
    let mut ok = false;
    for _ in 0..10 {
        wait_answered(&b.mnt);
        evict_inodes();
        let mut s = String::new();
        open_by_handle(&root, &mut h, nix::libc::O_RDONLY)
            .expect("open_by_handle_at after the handoff")
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "moved");
        if b.log_text().contains("resolved by the filesystem") {
            ok = true;
            break;
        }
    }
    assert!(
        ok,
        "the kernel never forgot the inode; log:\n{}",
        b.log_text()
    );
    drop(root);
    assert!(b.stop().success());
    assert!(
        state.exists(),
        "no state saved by the daemon that took over"
    );

    // Cold restore onto a new mount: the handle taken on the first mount opens the
    // same file on the new one.
    let c = Mounted::start("memfs", &["--state", state_s], &[]);
    assert_eq!(
        fs::read(c.path("d/f")).unwrap(),
        b"moved",
        "restored contents"
    );
    let root = fs::File::open(&c.mnt).unwrap();
    let mut s = String::new();
    open_by_handle(&root, &mut h, nix::libc::O_RDONLY)
        .expect("open_by_handle_at on the restored mount")
        .read_to_string(&mut s)
        .unwrap();
    assert_eq!(s, "moved");
    drop(root);
    assert!(c.stop().success());
    fs::remove_dir_all(&keep).unwrap();
}
