//! The library's "is this mount mine" decisions against a newer mount that reuses
//! the device number (docs/CONFORMANCE.md, "Outside suite"); the daemon's own
//! unmount is in tests/conformance.rs.
use std::fs;
use std::time::Duration;

mod common;
use common::{can_mount, is_fuse_mounted, temp_dir, Mounted};

/// A watchdog armed on a mount by its connection id leaves alone a newer mount at
/// the same place that reuses the id: when it tears down (here: dropped while its
/// thread panics, as in a failed test), the mount it was armed on is gone.
#[test]
fn watchdog_leaves_a_newer_mount_alone() {
    use fuse_live::session::dev::fusectl::{self, Watchdog};
    if !can_mount("watchdog_leaves_a_newer_mount_alone") {
        return;
    }
    let dir = temp_dir("watchdog");
    let mnt = dir.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mut a = Mounted::start_in("memfs", dir.clone(), "a.log", &[], &[]);
    let conn_a = fusectl::connection_id(&mnt).unwrap();
    let w = Watchdog::arm(&mnt, Some(conn_a), Duration::from_secs(3600)).unwrap();
    nix::mount::umount(&mnt).expect("umount from outside");
    let b = Mounted::start_in("memfs", dir.clone(), "b.log", &[], &[]);
    let conn_b = fusectl::connection_id(&mnt).unwrap();
    if conn_a != conn_b {
        eprintln!("note: the kernel did not reuse connection id {conn_a} this time");
    }
    assert!(a.wait_exit(Duration::from_secs(60)).is_some());
    a.release_exited();
    // Dropped while panicking: the watchdog tears its mount down at once.
    let dropped = std::thread::spawn(move || {
        let _w = w;
        panic!("a failing test holding the watchdog");
    })
    .join();
    assert!(dropped.is_err());
    assert!(
        is_fuse_mounted(&mnt),
        "the watchdog unmounted the newer mount"
    );
    fs::write(b.path("still"), b"serving").unwrap();
    assert_eq!(fs::read(b.path("still")).unwrap(), b"serving");
    assert!(b.stop().success());
}
