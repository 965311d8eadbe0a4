//! memfs's pre-copy (no mount): the state copied while it changes, plus the
//! changes noted meanwhile, is exactly the state at the pause; damaged changes are
//! refused by the incremental check, which agrees with the whole-state check.
use fuse_snapshot::{FdRestorer, FdSaver, Precopy, SnapshotFs};
use proptest::prelude::*;

// memfs's own modules (the memfs workspace crate).
use memfs::{fs, snapshot, state};

use fs::{Config, MemFs};
use state::{Caller, InodeChange, ROOT_INO};

const ROOT: Caller = Caller::ROOT;

fn memfs() -> MemFs {
    MemFs::new(0, 0, 1 << 26, Config::default())
}

#[derive(Clone, Debug)]
enum Op {
    Create(u8, u8),
    Mkdir(u8, u8),
    Write(u8, u16, u8),
    Unlink(u8, u8),
    Rmdir(u8, u8),
    Rename(u8, u8, u8, u8),
    Link(u8, u8, u8),
    Setxattr(u8, u8),
    Forget(u8),
    Truncate(u8, u16),
    Fallocate(u8, u16, u16, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..4, 0u8..6).prop_map(|(d, n)| Op::Create(d, n)),
        (0u8..4, 0u8..6).prop_map(|(d, n)| Op::Mkdir(d, n)),
        (0u8..40, 0u16..20000, any::<u8>()).prop_map(|(i, o, b)| Op::Write(i, o, b)),
        (0u8..4, 0u8..6).prop_map(|(d, n)| Op::Unlink(d, n)),
        (0u8..4, 0u8..6).prop_map(|(d, n)| Op::Rmdir(d, n)),
        (0u8..4, 0u8..6, 0u8..4, 0u8..6).prop_map(|(a, b, c, d)| Op::Rename(a, b, c, d)),
        (0u8..40, 0u8..4, 0u8..6).prop_map(|(i, d, n)| Op::Link(i, d, n)),
        (0u8..40, any::<u8>()).prop_map(|(i, v)| Op::Setxattr(i, v)),
        (0u8..40).prop_map(Op::Forget),
        (0u8..40, 0u16..30000).prop_map(|(i, n)| Op::Truncate(i, n)),
        (0u8..40, 0u16..20000, 1u16..9000, 0u8..3)
            .prop_map(|(i, o, l, m)| Op::Fallocate(i, o, l, m)),
    ]
}

/// Runs `op` on `fs`; errors (a missing name, a non-empty directory) are part of
/// the game. Directory `d` is the `d`-th directory inode (0 is the root).
fn run(fs: &MemFs, op: &Op) {
    let mut st = fs.lock_write();
    let dirs: Vec<u64> = (1..200u64)
        .filter(|&i| {
            st.contains(i)
                && st
                    .attr(i)
                    .is_ok_and(|a| a.kind == fuse_session::FileType::Directory)
        })
        .collect();
    let inos: Vec<u64> = (1..200u64).filter(|&i| st.contains(i)).collect();
    let dir = |d: u8| {
        dirs.get(d as usize % dirs.len().max(1))
            .copied()
            .unwrap_or(ROOT_INO)
    };
    let ino = |i: u8| {
        inos.get(i as usize % inos.len().max(1))
            .copied()
            .unwrap_or(ROOT_INO)
    };
    let name = |n: u8| format!("n{n}").into_bytes();
    match *op {
        Op::Create(d, n) => {
            let _ = st.create(ROOT, dir(d), &name(n), 0o644, 0);
        }
        Op::Mkdir(d, n) => {
            let _ = st.mkdir(ROOT, dir(d), &name(n), 0o755);
        }
        Op::Write(i, off, b) => {
            let _ = st.write(ROOT, ino(i), u64::from(off), &[b; 100], false);
        }
        Op::Unlink(d, n) => {
            let _ = st.unlink(dir(d), &name(n));
        }
        Op::Rmdir(d, n) => {
            let _ = st.rmdir(dir(d), &name(n));
        }
        Op::Rename(a, b, c, d) => {
            let _ = st.rename(dir(a), &name(b), dir(c), &name(d), 0);
        }
        Op::Link(i, d, n) => {
            let _ = st.link(ino(i), dir(d), &name(n));
        }
        Op::Setxattr(i, v) => {
            let _ = st.setxattr(ino(i), b"user.t", &[v], 0);
        }
        Op::Forget(i) => {
            let _ = st.forget(ino(i));
        }
        Op::Truncate(i, n) => {
            let set = fuse_session::SetAttr {
                size: Some(u64::from(n)),
                ..Default::default()
            };
            let _ = st.setattr(ROOT, ino(i), &set);
        }
        Op::Fallocate(i, off, len, mode) => {
            let mode = [
                0,
                state::FALLOC_FL_KEEP_SIZE | state::FALLOC_FL_PUNCH_HOLE,
                state::FALLOC_FL_ZERO_RANGE,
            ][mode as usize];
            let _ = st.fallocate(ino(i), u64::from(off), u64::from(len), mode);
        }
    }
}

fn image_bytes(fs: &MemFs) -> Vec<u8> {
    postcard::to_allocvec(&fs.snapshot()).unwrap()
}

#[test]
fn a_quiet_precopy_is_the_saved_state() {
    let fs = memfs();
    for o in [Op::Mkdir(0, 1), Op::Create(1, 2), Op::Write(2, 10, 7)] {
        run(&fs, &o);
    }
    let base = fs.precopy_begin().unwrap();
    let saved = fs.save(&mut FdSaver::new()).unwrap();
    assert_eq!(base, saved.0, "the chunked encoding is the image's");
    fs.precopy_abort();
}

/// The most inodes one operation of [`op`] changes (a rename across directories over
/// an existing name).
const MAX_INODES_PER_OP: usize = 4;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// Whatever happens before and during the copy, base + changes is the state at
    /// the end, it passes the incremental check, and the whole-state check agrees.
    #[test]
    fn base_plus_changes_is_the_state(
        before in prop::collection::vec(op(), 0..40),
        rounds in prop::collection::vec(prop::collection::vec(op(), 0..15), 0..3),
        during in prop::collection::vec(op(), 0..40),
    ) {
        let fs = memfs();
        for o in &before {
            run(&fs, o);
        }
        let base = fs.precopy_begin().unwrap();
        let mut base = MemFs::decode_base(&base).unwrap();
        for round in &rounds {
            for o in round {
                run(&fs, o);
            }
            let r = fs.precopy_round().unwrap().expect("memfs takes rounds");
            // What changed, not the whole state: one operation touches at most four
            // inodes (a rename across directories over an existing name: both
            // parents, the moved inode's ctime, the replaced inode's link count).
            prop_assert!(r.state.inodes.len() <= MAX_INODES_PER_OP * round.len() + 1);
            MemFs::apply_round(&mut base, r).unwrap();
        }
        for o in &during {
            run(&fs, o);
        }
        let changes = fs.precopy_changes(&mut FdSaver::new()).unwrap();
        prop_assert!(changes.state.inodes.len() <= MAX_INODES_PER_OP * during.len() + 1);
        let want = image_bytes(&fs);
        let restored = MemFs::restore_precopied(
            base,
            changes,
            &mut FdRestorer::new(Vec::new()),
        ).unwrap();
        prop_assert_eq!(image_bytes(&restored), want);
        prop_assert!(restored.lock_read().validate().is_ok());
    }
}

/// A base and its changes: a directory `d` holding `f` (with data), then during the
/// copy a new file `g` in `d` and a write to `f`.
fn sample() -> (Vec<u8>, snapshot::MemFsChanges) {
    let fs = memfs();
    let d = fs.lock_write().mkdir(ROOT, ROOT_INO, b"d", 0o755).unwrap();
    let (f, _) = fs.lock_write().create(ROOT, d, b"f", 0o644, 0).unwrap();
    fs.lock_write().write(ROOT, f, 0, b"data", false).unwrap();
    let base = fs.precopy_begin().unwrap();
    fs.lock_write().create(ROOT, d, b"g", 0o644, 0).unwrap();
    fs.lock_write()
        .write(ROOT, f, 8192, b"more", false)
        .unwrap();
    (base, fs.precopy_changes(&mut FdSaver::new()).unwrap())
}

fn restore(base: &[u8], changes: snapshot::MemFsChanges) -> Result<MemFs, String> {
    MemFs::restore_precopied(
        MemFs::decode_base(base)?,
        changes,
        &mut FdRestorer::new(Vec::new()),
    )
}

/// A write to a large file sends its attributes and the chunks written, not the
/// file; a shrinking truncate sends the tail; both restore exactly.
#[test]
fn a_write_to_a_big_file_sends_only_its_chunks() {
    let fs = memfs();
    let (f, _) = fs
        .lock_write()
        .create(ROOT, ROOT_INO, b"big", 0o644, 0)
        .unwrap();
    let (t, _) = fs
        .lock_write()
        .create(ROOT, ROOT_INO, b"cut", 0o644, 0)
        .unwrap();
    let mib = vec![7u8; 1 << 20];
    for i in 0..8 {
        fs.lock_write()
            .write(ROOT, f, i << 20, &mib, false)
            .unwrap();
        fs.lock_write()
            .write(ROOT, t, i << 20, &mib, false)
            .unwrap();
    }
    let base = fs.precopy_begin().unwrap();
    fs.lock_write()
        .write(ROOT, f, 4096 * 3 + 5, b"changed", false)
        .unwrap();
    fs.lock_write().setxattr(f, b"user.x", b"1", 0).unwrap();
    fs.lock_write()
        .setattr(
            ROOT,
            t,
            &fuse_session::SetAttr {
                size: Some(3 << 20),
                ..Default::default()
            },
        )
        .unwrap();
    let changes = fs.precopy_changes(&mut FdSaver::new()).unwrap();
    let bytes = postcard::to_allocvec(&changes).unwrap();
    assert!(
        bytes.len() < 3 * 4096,
        "{} bytes of changes for 7 bytes written and a truncate",
        bytes.len()
    );
    let kinds: Vec<_> = changes
        .state
        .inodes
        .iter()
        .map(|(i, c)| match c {
            InodeChange::Data { chunks, from, .. } => (*i, chunks.clone(), *from),
            other => panic!("inode {i}: {other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        vec![(f, vec![3], None), (t, vec![], Some(3 << 8))],
        "the chunk written, and the truncated tail"
    );
    let want = image_bytes(&fs);
    let restored = restore(&base, changes).unwrap();
    assert_eq!(image_bytes(&restored), want);
}

#[test]
fn damaged_changes_are_refused() {
    let (base, good) = sample();
    let g = good.state.inodes.iter().map(|(i, _)| *i).max().unwrap();
    assert!(restore(&base, good.clone()).is_ok());

    // The new file is dropped, but the directory (changed) still names it.
    let mut c = good.clone();
    c.state.inodes.retain(|(i, _)| *i != g);
    c.state.inodes.push((g, InodeChange::Gone));
    let e = restore(&base, c).err().unwrap();
    assert!(e.contains("missing inode"), "{e}");

    // An unchanged directory's file disappears.
    let (base2, mut c) = sample();
    c.state.inodes.push((2, InodeChange::Gone)); // the directory d, named by the root
    c.state.inodes.sort_by_key(|(i, _)| *i);
    let e = restore(&base2, c).err().unwrap();
    assert!(e.contains("missing inode 2"), "{e}");

    // Counters that disagree with the inodes.
    let mut c = good.clone();
    c.state.counters[1] += 1; // used_chunks
    let e = restore(&base, c).err().unwrap();
    assert!(e.contains("chunks"), "{e}");
    let mut c = good.clone();
    c.state.counters[0] = 2; // next_ino
    let e = restore(&base, c).err().unwrap();
    assert!(e.contains("out of range"), "{e}");

    // A changed inode that is broken on its own.
    let mut c = good.clone();
    if let Some((_, InodeChange::Whole(i) | InodeChange::Data { inode: i, .. })) =
        c.state.inodes.last_mut()
    {
        i.perm = 0o170777;
    }
    let e = restore(&base, c).err().unwrap();
    assert!(e.contains("type bits"), "{e}");

    // A data change whose patch holds a chunk outside the ranges it names.
    let (base3, mut c) = sample();
    for (_, ch) in &mut c.state.inodes {
        if let InodeChange::Data { chunks, .. } = ch {
            chunks.clear();
        }
    }
    let e = restore(&base3, c).err().unwrap();
    assert!(e.contains("outside the ranges"), "{e}");

    // Damaged base bytes never panic.
    for n in 0..base.len().min(400) {
        let _ = MemFs::decode_base(&base[..n]);
        let mut b = base.clone();
        b[n] ^= 0x41;
        if let Ok(bb) = MemFs::decode_base(&b) {
            let _ = MemFs::restore_precopied(bb, good.clone(), &mut FdRestorer::new(Vec::new()));
        }
    }
}

#[test]
fn check_session_names_what_memfs_lacks() {
    use fuse_session::{HandleKind, HandleState, NodeState};
    let fs = memfs();
    let node = |n: u64| NodeState {
        nodeid: 7,
        generation: 1,
        lookups: 1,
        node: n,
    };
    assert!(fs.check_session(&[node(ROOT_INO)], &[]).is_ok());
    let e = fs.check_session(&[node(99)], &[]).unwrap_err();
    assert!(e.contains("inode 99"), "{e}");
    let h = HandleState {
        fh: 3,
        kind: HandleKind::File,
        nodeid: 1,
        flags: 0,
        handle: fs::Handle { ino: 42, flags: 0 },
    };
    let e = fs.check_session(&[], &[h]).unwrap_err();
    assert!(e.contains("fh 3"), "{e}");
}

/// Enough inodes for several chunks: the chunked base is the image, and with a
/// writer busy during the copy, base + changes is the state at the end.
#[test]
fn chunks_and_a_concurrent_writer() {
    let fs = std::sync::Arc::new(memfs());
    let d = fs.lock_write().mkdir(ROOT, ROOT_INO, b"d", 0o755).unwrap();
    for i in 0..6000 {
        let name = format!("f{i}");
        fs.lock_write()
            .create(ROOT, d, name.as_bytes(), 0o644, 0)
            .unwrap();
    }
    let base = fs.precopy_begin().unwrap();
    let saved = fs.save(&mut FdSaver::new()).unwrap();
    assert_eq!(base, saved.0, "several chunks make the image's bytes");
    fs.precopy_abort();

    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let rounds = std::sync::Arc::new(AtomicU64::new(0));
    let writer = {
        let (fs, stop, rounds) = (fs.clone(), stop.clone(), rounds.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut st = fs.lock_write();
                let name = format!("f{}", n % 5000);
                let _ = st.unlink(d, name.as_bytes());
                let _ = st.create(ROOT, d, format!("new{n}").as_bytes(), 0o644, 0);
                let _ = st.write(ROOT, 3 + n % 100, n * 7, b"x", false);
                drop(st);
                n += 1;
                rounds.store(n, Ordering::Relaxed);
            }
            n
        })
    };
    // Wait for the writer (however loaded the machine), copy while it writes,
    // and let it write some more after the copy.
    let wait_for = |at_least: u64| {
        while rounds.load(Ordering::Relaxed) < at_least {
            std::thread::yield_now();
        }
    };
    wait_for(10);
    let base = fs.precopy_begin().unwrap();
    let after_copy = rounds.load(Ordering::Relaxed);
    wait_for(after_copy + 10);
    stop.store(true, Ordering::Relaxed);
    let n = writer.join().unwrap();
    let changes = fs.precopy_changes(&mut FdSaver::new()).unwrap();
    let want = image_bytes(&fs);
    let restored = restore(&base, changes).unwrap();
    assert_eq!(image_bytes(&restored), want, "after {n} writer rounds");
}
