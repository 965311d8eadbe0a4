//! The `/dev/fuse` worker pool: one worker per usable CPU at first, another (up
//! to the number asked) when a request is held in the filesystem while no worker
//! waits on the device, none appears while the workers are paused, and the extra
//! ones retire once no request is held.
//!
//! The test thread pins itself to one CPU before serving (the workers and callers
//! inherit it), as the pinned benchmark rows run: the pool then starts one worker,
//! and a request held in the filesystem would stall every other one without the
//! pool's watcher.
mod common;

use std::ffi::OsStr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::{can_mount, temp_dir};
use fuse_session::dev::fusectl::Watchdog;
use fuse_session::dev::MountOptions;
use fuse_session::serve::{ServeError, Server};
use fuse_session::*;

/// Root holds `file` and the files `hold-N`, whose LOOKUP waits until the test
/// opens the gate (at most a minute).
#[derive(Default)]
struct Gate {
    /// LOOKUPs of `hold-N` waiting; the gate is open.
    state: Mutex<(usize, bool)>,
    cond: Condvar,
}

impl Gate {
    fn wait_held(&self, n: usize) {
        let g = self.state.lock().unwrap();
        let (g, r) = self
            .cond
            .wait_timeout_while(g, Duration::from_secs(60), |s| s.0 < n)
            .unwrap();
        drop(g);
        assert!(!r.timed_out(), "{n} lookups held within a minute");
    }

    fn open(&self) {
        self.state.lock().unwrap().1 = true;
        self.cond.notify_all();
    }
}

struct Holding(Arc<Gate>);

fn attr(ino: u64) -> FileAttr {
    if ino == 1 {
        FileAttr {
            nlink: 2,
            ..FileAttr::new(1, FileType::Directory, 0o755)
        }
    } else {
        FileAttr::new(ino, FileType::RegularFile, 0o644)
    }
}

impl Filesystem for Holding {
    type Node = u64;
    type Handle = ();

    fn root(&self) -> u64 {
        1
    }

    fn lookup(&self, _: &RequestContext<'_>, parent: &u64, name: &OsStr) -> Result<Entry<u64>> {
        let name = name.to_str().unwrap_or("");
        let node = match name.strip_prefix("hold-") {
            _ if *parent != 1 => return Err(Errno::ENOENT),
            Some(n) => {
                let n: u64 = n.parse().map_err(|_| Errno::ENOENT)?;
                let mut g = self.0.state.lock().unwrap();
                g.0 += 1;
                self.0.cond.notify_all();
                let _ = self
                    .0
                    .cond
                    .wait_timeout_while(g, Duration::from_secs(60), |s| !s.1)
                    .unwrap();
                10 + n
            }
            None if name == "file" => 2,
            None => return Err(Errno::ENOENT),
        };
        Ok(Entry {
            node,
            attr: attr(node),
            entry_ttl: Duration::ZERO,
            attr_ttl: Duration::ZERO,
        })
    }

    fn getattr(&self, _: &RequestContext<'_>, node: &u64, _: Option<&()>) -> Result<AttrReply> {
        Ok(AttrReply {
            attr: attr(*node),
            ttl: Duration::ZERO,
        })
    }
}

/// Pins the calling thread to the first CPU it may run on.
fn pin_to_one_cpu() {
    for cpu in 0..1024 {
        if fuse_session::dev::uring::pin_to_cpu(cpu).is_ok() {
            return;
        }
    }
    panic!("cannot pin the test thread to any CPU");
}

#[test]
fn held_requests_on_one_cpu_get_workers_up_to_the_number_asked_not_while_paused_then_retire() {
    let test =
        "held_requests_on_one_cpu_get_workers_up_to_the_number_asked_not_while_paused_then_retire";
    if !can_mount(test) {
        return;
    }
    pin_to_one_cpu();
    let dir = temp_dir("pool");
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let gate = Arc::new(Gate::default());
    let opts = MountOptions::new().fsname("holding");
    let running = Server::mount(Holding(Arc::clone(&gate)), &mnt, &opts)
        .unwrap()
        .spawn(3)
        .unwrap();
    // A hung test aborts the connection: the held callers then fail, and so does
    // the test.
    let dog = Watchdog::arm(&mnt, None, Duration::from_secs(120)).unwrap();
    assert_eq!(running.workers(), 1, "one worker for one usable CPU");
    assert!(std::fs::metadata(mnt.join("file")).is_ok());
    assert_eq!(
        running.workers(),
        1,
        "no worker added for requests that return"
    );

    // Two callers held in the filesystem: each needs a worker of its own, and a
    // third request still gets one (the third worker, the most asked).
    let callers: Vec<_> = (0..2)
        .map(|i| {
            let p = mnt.join(format!("hold-{i}"));
            std::thread::spawn(move || std::fs::metadata(p).map(|_| ()))
        })
        .collect();
    gate.wait_held(2);
    assert!(
        std::fs::metadata(mnt.join("file")).is_ok(),
        "served while two requests are held"
    );
    assert_eq!(
        running.workers(),
        3,
        "a worker per held request, and one more"
    );

    // No worker may appear while paused: with every worker parked but two held,
    // a bounded pause gives up naming them.
    match running.pause_within(Duration::from_millis(300)) {
        Err(ServeError::Busy(reqs)) => assert_eq!(reqs.len(), 2, "the held requests: {reqs:?}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("paused although two requests are held"),
    }
    assert_eq!(running.workers(), 3, "never more than asked");

    gate.open();
    for c in callers {
        c.join().unwrap().expect("the held lookups are answered");
    }
    {
        let paused = running.pause();
        assert!(running.workers() <= 3, "every worker parked, none added");
        drop(paused);
    }
    assert!(std::fs::metadata(mnt.join("file")).is_ok(), "resumed");
    // No request held any more: the extra workers retire, each after a request
    // of its own (a minute at most, then the test fails).
    let mut tries = 0;
    while running.workers() > 1 {
        tries += 1;
        assert!(
            tries < 6000,
            "the extra workers retire: {} left",
            running.workers()
        );
        assert!(std::fs::metadata(mnt.join("file")).is_ok());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        std::fs::metadata(mnt.join("file")).is_ok(),
        "served after retiring"
    );
    running.unmount().unwrap();
    while running.is_serving() {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!dog.disarm(), "finished before the watchdog");
    let _ = std::fs::remove_dir_all(&dir);
}
