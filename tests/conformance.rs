//! Regression tests for what an outside filesystem test suite found when it ran memfs
//! next to tmpfs (docs/CONFORMANCE.md, "Outside suite"): each test replays one
//! finding on real kernel mounts.
use std::fs;
use std::io::{Read, Write};
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
        nix::mount::umount(&mnt).expect("umount P from outside");
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
