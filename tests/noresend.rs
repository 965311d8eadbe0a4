//! Crash recovery without `NOTIFY_RESEND`: the requests a dead daemon had read and
//! not answered are answered from its request slots (`fuse_session::dev::slots`),
//! with their original uniques, on a real mount.
//!
//! In-process (a memfs session served by the library): a request read into a slot
//! and left unanswered (as a dead worker leaves it) is answered by
//! `recover_requests` and its caller gets the answer; a slot reply the kernel
//! refuses takes back the lookup it counted, and a refused CREATE answered from the
//! journal counts nothing; a FORGET left in a slot is dropped when
//! no journal can say whether it was applied. Without a mount: a journaled FORGET's
//! marker survives recovery, so its copy in a slot is not applied twice. End to end (`fuse-live-keeper -- memfs
//! --no-resend`): a MKDIR held in the filesystem when memfs is SIGKILLed is
//! answered by the restarted memfs; a CREATE whose reply was recorded in the journal
//! before the crash is answered from the journal, not run twice.
mod common;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use fuse_session::dev::fusectl::{self, Watchdog};
use fuse_session::dev::{MountOptions, Received, RequestSlots};
use fuse_session::serve::{recover_requests, RequestRecovery, Server};
use fuse_session::wire::request::encode::{encode, ExtensionArgs, HeaderFields};
use fuse_session::wire::Operation;
use memfs::fs::{Config, MemFs};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A guard against hangs, not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(60);
const KEEPER: &str = env!("CARGO_BIN_EXE_fuse-live-keeper");

/// A memfs session served in-process by one worker reading into one request slot.
fn serve_in_process(
    tag: &str,
) -> (
    PathBuf,
    Watchdog,
    fuse_session::serve::Running<MemFs>,
    Arc<RequestSlots>,
) {
    let dir = common::temp_dir(tag);
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).expect("mountpoint");
    let watchdog = Watchdog::arm(&mnt, None, Duration::from_secs(300)).expect("watchdog");
    let fs = MemFs::new(
        0,
        0,
        1 << 30,
        Config {
            ttl: Duration::from_secs(60),
        },
    );
    let mut server =
        Server::mount(fs, &mnt, &MountOptions::new().fsname("memfs")).expect("mount memfs");
    let slots = Arc::new(
        RequestSlots::memfd("noresend-test", 1, server.session().read_buffer_size())
            .expect("request slots"),
    );
    server.set_request_slots(Arc::clone(&slots));
    let running = server.spawn(1).expect("serve");
    (mnt, watchdog, running, slots)
}

#[test]
fn a_refused_slot_reply_takes_its_lookup_back() {
    if !common::can_mount("a_refused_slot_reply_takes_its_lookup_back") {
        return;
    }
    let (mnt, watchdog, running, slots) = serve_in_process("noresend-refused");
    std::fs::write(mnt.join("a"), b"x").expect("create a");
    let session = Arc::clone(running.session());
    // The file's nodeid: the one counted besides the root.
    let id = (2..1000)
        .find(|n| session.lookup_count(*n).is_some())
        .expect("the file's nodeid");
    let mount = running.stop().expect("stopped with the mount");
    let before = session.lookup_count(id);
    // A LOOKUP of "a" the kernel is not waiting for (a unique it never sent, as
    // one the dead process had answered after all), left in the slot unanswered.
    let mut req = vec![0u8; 256];
    let header = HeaderFields {
        unique: 0x7fff_0000,
        nodeid: 1,
        ..HeaderFields::default()
    };
    let n = encode(
        &mut req,
        &session.negotiated(),
        &header,
        &Operation::Lookup { name: b"a" },
        &ExtensionArgs::NONE,
    )
    .expect("encode LOOKUP");
    {
        let (mut data, _mark) = slots.buffer(0).expect("map the slot");
        data[..n].copy_from_slice(&req[..n]);
    }
    let chan = mount.channel().expect("device");
    let report = recover_requests(&session, &chan, Some(&slots), false).expect("recover");
    assert_eq!(report.how, RequestRecovery::Slots);
    assert_eq!((report.held, report.answered, report.refused), (1, 0, 1));
    // Run again it counted a lookup; refused, it took it back.
    assert_eq!(
        session.lookup_count(id),
        before,
        "lookup count after a refusal"
    );
    // Marked answered: a second recovery finds nothing.
    let again = recover_requests(&session, &chan, Some(&slots), false).expect("recover");
    assert_eq!(again.held, 0);
    drop(chan);
    mount.unmount().expect("unmount");
    assert!(!watchdog.disarm(), "the watchdog fired");
}

#[test]
fn a_request_left_in_a_slot_is_answered_with_its_unique() {
    if !common::can_mount("a_request_left_in_a_slot_is_answered_with_its_unique") {
        return;
    }
    let (mnt, watchdog, running, slots) = serve_in_process("noresend-held");
    let session = Arc::clone(running.session());
    let mount = running.stop().expect("stopped with the mount");
    // No worker reads now: a mkdir waits in the kernel's queue.
    let target = mnt.join("d");
    let (tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::create_dir(&target));
    });
    // Read requests into the slot as a worker that then dies would, and recover
    // each: the mkdir's caller must get its answer.
    let chan = mount.channel().expect("device");
    let start = Instant::now();
    let mut answered = 0;
    let result = loop {
        assert!(start.elapsed() < PATIENCE, "the mkdir was never answered");
        if let Ok(r) = done.try_recv() {
            break r;
        }
        let (mut data, _mark) = slots.buffer(0).expect("map the slot");
        match chan.try_read(&mut data).expect("read the device") {
            Some(Received::Request(_)) => {}
            None => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Some(other) => panic!("unexpected {other:?}"),
        }
        drop(data);
        let report = recover_requests(&session, &chan, Some(&slots), false).expect("recover");
        assert_eq!(report.refused, 0, "{report:?}");
        answered += report.answered;
    };
    result.expect("mkdir answered from the slot");
    assert!(answered >= 1);
    assert!(
        session.filesystem().lock_read().inode_count() >= 2,
        "the directory exists"
    );
    drop(chan);
    mount.unmount().expect("unmount");
    assert!(!watchdog.disarm(), "the watchdog fired");
}

#[test]
fn a_forget_in_a_slot_is_dropped_when_the_hook_cannot_tell() {
    if !common::can_mount("a_forget_in_a_slot_is_dropped_when_the_hook_cannot_tell") {
        return;
    }
    let (mnt, watchdog, running, slots) = serve_in_process("noresend-forget");
    std::fs::write(mnt.join("f"), b"x").expect("create f");
    let session = Arc::clone(running.session());
    let id = (2..1000)
        .find(|n| session.lookup_count(*n).is_some())
        .expect("the file's nodeid");
    let count = session.lookup_count(id);
    let mount = running.stop().expect("stopped with the mount");
    // Unlinking the closed file makes the kernel forget its inode: UNLINK, then a
    // FORGET (or BATCH_FORGET), each read into the slot and left there.
    let target = mnt.join("f");
    let (tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::remove_file(&target));
    });
    let chan = mount.channel().expect("device");
    let start = Instant::now();
    let (mut unlinked, mut dropped) = (None, 0);
    while unlinked.is_none() || dropped == 0 {
        assert!(
            start.elapsed() < PATIENCE,
            "no FORGET came (unlinked: {unlinked:?})"
        );
        if let Ok(r) = done.try_recv() {
            unlinked = Some(r.is_ok());
        }
        let (mut data, _mark) = slots.buffer(0).expect("map the slot");
        match chan.try_read(&mut data).expect("read the device") {
            Some(Received::Request(_)) => {}
            None => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Some(other) => panic!("unexpected {other:?}"),
        }
        drop(data);
        let report = recover_requests(&session, &chan, Some(&slots), false).expect("recover");
        assert_eq!(report.forgets_applied, 0, "{report:?}");
        dropped += report.forgets_dropped;
    }
    assert_eq!(unlinked, Some(true), "unlink answered from the slot");
    // No journal to ask: the FORGET was dropped, the count left as it was (above
    // the kernel's, which is zero now: the node is kept, never lost).
    assert_eq!(session.lookup_count(id), count);
    drop(chan);
    mount.unmount().expect("unmount");
    assert!(!watchdog.disarm(), "the watchdog fired");
}

/// The journal's hook, keeping a copy of the bytes of the first CREATE it sees.
struct Spy {
    inner: Arc<fuse_snapshot::journal::session::JournalHook<MemFs>>,
    create: std::sync::Mutex<Option<Vec<u8>>>,
}

impl fuse_session::StepHook for Spy {
    fn accepted(&self, r: &fuse_session::Accepted<'_>) {
        self.inner.accepted(r);
    }
    fn recorded_reply(&self, r: &fuse_session::Accepted<'_>, out: &mut [u8]) -> Option<usize> {
        self.inner.recorded_reply(r, out)
    }
    fn responding(&self, r: &fuse_session::Accepted<'_>, reply: &fuse_session::ReplyParts<'_>) {
        self.inner.responding(r, reply);
        if r.opcode() == fuse_session::wire::Opcode::CREATE {
            let mut c = self.create.lock().unwrap_or_else(|e| e.into_inner());
            c.get_or_insert_with(|| r.bytes().to_vec());
        }
    }
    fn unanswered(&self, r: &fuse_session::Accepted<'_>) {
        self.inner.unanswered(r);
    }
    fn applied_before(&self, r: &fuse_session::Accepted<'_>) -> Option<bool> {
        self.inner.applied_before(r)
    }
}

#[test]
fn a_refused_create_answered_from_the_journal_counts_nothing() {
    use fuse_snapshot::journal::session::JournalHook;
    use fuse_snapshot::journal::JournalOptions;
    if !common::can_mount("a_refused_create_answered_from_the_journal_counts_nothing") {
        return;
    }
    let dir = common::temp_dir("noresend-create-refused");
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).expect("mountpoint");
    let watchdog = Watchdog::arm(&mnt, None, Duration::from_secs(300)).expect("watchdog");
    let fs = MemFs::new(
        0,
        0,
        1 << 30,
        Config {
            ttl: Duration::from_secs(60),
        },
    );
    let mut server =
        Server::mount(fs, &mnt, &MountOptions::new().fsname("memfs")).expect("mount memfs");
    let hook = JournalHook::<MemFs>::new(JournalOptions::default());
    let spy = Arc::new(Spy {
        inner: Arc::clone(&hook),
        create: std::sync::Mutex::new(None),
    });
    assert!(server.set_hook(spy.clone()));
    let slots = Arc::new(
        RequestSlots::memfd("noresend-test", 1, server.session().read_buffer_size())
            .expect("request slots"),
    );
    server.set_request_slots(Arc::clone(&slots));
    let running = server.spawn(1).expect("serve");
    let map = fuse_session::dev::JournalMap::memfd("noresend-journal", 1 << 30).expect("memfd");
    hook.start(running.session(), map)
        .expect("start the journal");
    // A CREATE, answered: its reply is in the journal.
    drop(File::create(mnt.join("c")).expect("create c"));
    let session = Arc::clone(running.session());
    let id = (2..1000)
        .find(|n| session.lookup_count(*n).is_some())
        .expect("the file's nodeid");
    let mount = running.stop().expect("stopped with the mount");
    let (count, handles) = (session.lookup_count(id), session.handle_count());
    // As if the worker had died between writing the reply and marking its slot.
    let create = spy
        .create
        .lock()
        .unwrap()
        .clone()
        .expect("the CREATE's bytes");
    {
        let (mut data, _mark) = slots.buffer(0).expect("map the slot");
        data[..create.len()].copy_from_slice(&create);
    }
    slots.mark_answered(0, 0).expect("unmark");
    let chan = mount.channel().expect("device");
    let report = recover_requests(&session, &chan, Some(&slots), false).expect("recover");
    assert_eq!(
        (report.held, report.answered, report.refused),
        (1, 0, 1),
        "{report:?}"
    );
    // Answered from the journal (not run again: no second file, no second
    // handle), refused, and nothing counted.
    assert_eq!(session.lookup_count(id), count, "lookup count");
    assert_eq!(session.handle_count(), handles, "handles");
    drop(chan);
    mount.unmount().expect("unmount");
    assert!(!watchdog.disarm(), "the watchdog fired");
}

/// `fuse-live-keeper -- memfs MNT --no-resend --threads 2` with `MEMFS_CRASH_TEST`.
struct Kept {
    keeper: Option<Child>,
    lines: mpsc::Receiver<String>,
    mnt: PathBuf,
    dir: PathBuf,
    log: PathBuf,
    watchdog: Option<Watchdog>,
}

impl Kept {
    fn start(tag: &str, hook: &str) -> Kept {
        let dir = common::temp_dir(tag);
        let mnt = dir.join("mnt");
        std::fs::create_dir(&mnt).expect("mountpoint");
        let log = dir.join("keeper.log");
        let marker = dir.join("marker");
        let mut cmd = Command::new(KEEPER);
        cmd.arg("--")
            .arg(common::example_binary("memfs"))
            .arg(&mnt)
            .args(["--threads", "2", "--no-resend"])
            .env("RUST_LOG", "info")
            .env("MEMFS_CRASH_TEST", format!("{hook}:{}", marker.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).expect("log"));
        // SAFETY: only prctl(2) in the forked child, async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        let watchdog = Watchdog::arm(&mnt, None, Duration::from_secs(300)).expect("watchdog");
        let mut keeper = cmd.spawn().expect("spawn fuse-live-keeper");
        let out = keeper.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let k = Kept {
            keeper: Some(keeper),
            lines,
            mnt,
            dir,
            log,
            watchdog: Some(watchdog),
        };
        k.next_ready("at the first start");
        k
    }

    fn marker(&self) -> PathBuf {
        self.dir.join("marker")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn next_ready(&self, what: &str) {
        let ready = format!("ready {}", self.mnt.display());
        match self.lines.recv_timeout(PATIENCE) {
            Ok(l) => assert_eq!(l, ready, "{what}"),
            Err(e) => panic!("no ready line {what} ({e}); log:\n{}", self.log_text()),
        }
    }

    fn daemon(&self) -> i32 {
        let pid = self.keeper.as_ref().expect("keeper").id();
        let kids: Vec<i32> = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        assert_eq!(kids.len(), 1, "one daemon: {kids:?}");
        kids[0]
    }

    /// SIGTERM: memfs unmounts, the keeper exits 0.
    fn stop(mut self) {
        let mut c = self.keeper.take().expect("keeper");
        kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM).expect("SIGTERM");
        let st = common::wait_exit(&mut c, PATIENCE).expect("the keeper exits");
        assert_eq!(st.code(), Some(0), "log:\n{}", self.log_text());
        assert!(!common::is_fuse_mounted(&self.mnt), "unmounted");
        let fired = self.watchdog.take().expect("watchdog").disarm();
        assert!(!fired, "the watchdog fired");
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        if let Some(mut c) = self.keeper.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            if common::wait_exit(&mut c, Duration::from_secs(15)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if common::is_fuse_mounted(&self.mnt) {
            let _ = fusectl::tear_down(&self.mnt, None);
        }
        if !common::is_fuse_mounted(&self.mnt) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn wait_for(path: &Path, what: &str) {
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < PATIENCE, "{what} never happened");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_request_held_at_sigkill_is_answered_by_the_restarted_memfs() {
    if !common::can_mount("a_request_held_at_sigkill_is_answered_by_the_restarted_memfs") {
        return;
    }
    let k = Kept::start("noresend-hold", "hold-mkdir:held");
    let target = k.mnt.join("held");
    let (tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::create_dir(&target));
    });
    wait_for(&k.marker(), "the MKDIR being held");
    kill(Pid::from_raw(k.daemon()), Signal::SIGKILL).expect("kill memfs");
    k.next_ready("after the kill");
    let r = done
        .recv_timeout(PATIENCE)
        .unwrap_or_else(|e| panic!("mkdir not answered ({e}); log:\n{}", k.log_text()));
    r.unwrap_or_else(|e| panic!("mkdir failed: {e}; log:\n{}", k.log_text()));
    assert!(k.mnt.join("held").is_dir());
    let log = k.log_text();
    assert!(
        log.lines().any(|l| l.contains("request slot")
            && l.contains("MKDIR unique=")
            && l.ends_with(": Answered")),
        "the restarted memfs answered the MKDIR from its slot; log:\n{log}"
    );
    k.stop();
}

#[test]
fn a_recorded_create_is_answered_from_the_journal_not_run_twice() {
    if !common::can_mount("a_recorded_create_is_answered_from_the_journal_not_run_twice") {
        return;
    }
    let k = Kept::start("noresend-create", "die-after-record:c");
    // O_EXCL: a CREATE run a second time would fail with EEXIST.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(k.mnt.join("c"))
        .unwrap_or_else(|e| panic!("create c: {e}; log:\n{}", k.log_text()));
    k.next_ready("after memfs killed itself");
    assert!(k.marker().exists(), "the hook fired");
    // The handle the recorded reply gave works.
    f.write_all(b"once")
        .expect("write through the recorded handle");
    f.rewind().expect("seek");
    let mut back = String::new();
    f.read_to_string(&mut back).expect("read back");
    assert_eq!(back, "once");
    drop(f);
    let names: Vec<String> = std::fs::read_dir(&k.mnt)
        .expect("readdir")
        .map(|d| d.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["c".to_string()]);
    let log = k.log_text();
    assert!(
        log.contains("answered from the journal"),
        "the CREATE was answered from the journal; log:\n{log}"
    );
    assert!(
        !log.contains("resent without a recorded reply"),
        "nothing ran again; log:\n{log}"
    );
    k.stop();
}

/// A FORGET request as the kernel sends it: `fuse_in_header` and `fuse_forget_in`.
fn forget_bytes(unique: u64, nodeid: u64, nlookup: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(48);
    b.extend_from_slice(&48u32.to_ne_bytes());
    b.extend_from_slice(&2u32.to_ne_bytes()); // FUSE_FORGET
    b.extend_from_slice(&unique.to_ne_bytes());
    b.extend_from_slice(&nodeid.to_ne_bytes());
    b.extend_from_slice(&[0u8; 16]); // uid, gid, pid, total_extlen, padding
    b.extend_from_slice(&nlookup.to_ne_bytes());
    b
}

#[test]
fn a_journaled_forget_is_marked_so_a_slot_copy_is_not_applied_twice() {
    use fuse_snapshot::journal::session::recover_session;
    use fuse_snapshot::journal::JournalOptions;
    use fuse_snapshot::FdRestorer;

    let (session, _hook, fd) =
        memfs::in_process::journaled(1 << 30, "forget-test", 1 << 26, JournalOptions::default());
    // A FORGET served: its record carries its marker.
    let mut out = vec![0u8; session.reply_buffer_size()];
    let f = forget_bytes(77, 1, 1);
    let outcome = session.handle(&f, &mut out);
    assert!(matches!(outcome, fuse_session::Outcome::NoReply));
    // The crash: a new process recovers from the journal.
    let map = fuse_session::dev::JournalMap::from_fd(fd, 1 << 26).expect("map");
    let recovered =
        recover_session::<MemFs>(map, &mut FdRestorer::empty(), JournalOptions::default())
            .expect("recover");
    let (session, _hook, _map, _rec) = recovered.into_parts();
    let ask = |unique: u64| {
        // As recover_requests presents a slot's request: resent.
        let bytes = forget_bytes(unique | (1 << 63), 1, 1);
        let accepted = session.accept(&bytes);
        let applied = session.applied_before(&accepted);
        // Not run: the hook releases what it took in `accepted`.
        session.respond(&accepted, &fuse_session::Outcome::NoReply);
        applied
    };
    assert_eq!(ask(77), Some(true), "the served FORGET is known applied");
    assert_eq!(ask(79), Some(false), "another FORGET is known not applied");
}
