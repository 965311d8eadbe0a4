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
    use fuse_session::dev::fusectl::{self, Watchdog};
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

/// The identity is re-derived by a process that took the mount over (it is not in
/// the handoff message): after a live handoff, an unmount from outside and a newer
/// mount at the same place, the exiting new daemon leaves the newer mount alone.
#[test]
fn taken_over_mount_leaves_a_newer_mount_alone() {
    if !can_mount("taken_over_mount_leaves_a_newer_mount_alone") {
        return;
    }
    for round in 0..5 {
        let dir = temp_dir("takeover-identity");
        let mnt = dir.join("mnt");
        fs::create_dir(&mnt).unwrap();
        let sock = dir.join("upgrade.sock");
        let sock_s = sock.to_str().unwrap().to_owned();
        let mut a = Mounted::start_in(
            "memfs",
            dir.clone(),
            "a.log",
            &["--upgrade-socket", &sock_s],
            &[],
        );
        let mut b =
            Mounted::take_over_in("memfs", dir.clone(), "b.log", &["--takeover", &sock_s], &[]);
        assert!(a
            .wait_exit(Duration::from_secs(60))
            .is_some_and(|s| s.success()));
        a.release_exited();
        nix::mount::umount(&mnt).expect("umount from outside");
        let c = Mounted::start_in("memfs", dir.clone(), "c.log", &[], &[]);
        let st = b
            .wait_exit(Duration::from_secs(60))
            .expect("the daemon that took over did not exit after the unmount");
        assert!(st.success(), "round {round}: {st}");
        b.release_exited();
        assert!(
            is_fuse_mounted(&mnt),
            "round {round}: the daemon that took over unmounted the newer mount"
        );
        fs::write(c.path("x"), b"c serves").unwrap();
        assert!(c.stop().success());
    }
}
