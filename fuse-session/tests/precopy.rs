//! Pre-copy of the session's tables: a base taken while serving plus the changes
//! made since give back exactly the session's state, and bad changes are refused.
use std::ffi::OsStr;
use std::time::Duration;

use fuse_session::fake::FakeKernel;
use fuse_session::*;
use fuse_wire::InitFlags;
use proptest::prelude::*;

/// Root (node 0) holds files "n0".."n{files-1}" (nodes 1..=files); nodes are u32.
struct Tree {
    files: u32,
}

/// The files of the small tree most tests use.
const N: u32 = 10;

/// The small tree.
const TREE: Tree = Tree { files: N };

fn attr(node: u32) -> FileAttr {
    let kind = if node == 0 {
        FileType::Directory
    } else {
        FileType::RegularFile
    };
    FileAttr {
        nlink: 1,
        ..FileAttr::new(u64::from(node) + 1, kind, 0o644)
    }
}

impl Filesystem for Tree {
    type Node = u32;
    type Handle = u32;

    fn root(&self) -> u32 {
        0
    }

    fn lookup(&self, _: &RequestContext<'_>, parent: &u32, name: &OsStr) -> Result<Entry<u32>> {
        let n: u32 = name
            .to_str()
            .and_then(|s| s.strip_prefix('n'))
            .and_then(|s| s.parse().ok())
            .ok_or(Errno::ENOENT)?;
        if *parent != 0 || n >= self.files {
            return Err(Errno::ENOENT);
        }
        Ok(Entry {
            node: n + 1,
            attr: attr(n + 1),
            entry_ttl: Duration::ZERO,
            attr_ttl: Duration::ZERO,
        })
    }

    fn open(
        &self,
        _: &RequestContext<'_>,
        node: &u32,
        _: OpenFlags,
        _: FuseOpenFlags,
    ) -> Result<Opened<u32>> {
        Ok(Opened::new(*node))
    }
}

fn kernel() -> FakeKernel<Tree> {
    let mut k = FakeKernel::new(TREE);
    let _ = k.init(45, InitFlags::INIT_EXT | InitFlags::MAX_PAGES);
    k
}

#[derive(Clone, Debug)]
enum Step {
    Lookup(u32),
    Forget(usize, u64),
    Open(usize),
    Release(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..N).prop_map(Step::Lookup),
        (0usize..16, 1u64..4).prop_map(|(i, n)| Step::Forget(i, n)),
        (0usize..16).prop_map(Step::Open),
        (0usize..16).prop_map(Step::Release),
    ]
}

/// A step made concrete against `k`'s view (which nodeid, which handle).
#[derive(Clone, Debug)]
enum Action {
    Lookup(u32),
    Forget(u64, u64),
    Open(u64),
    Release(usize),
    Nothing,
}

fn resolve(k: &FakeKernel<Tree>, open: &[(u64, u64)], s: &Step) -> Action {
    let known: Vec<(u64, u64)> = k.kernel_lookups().iter().map(|(&a, &b)| (a, b)).collect();
    match *s {
        Step::Lookup(i) => Action::Lookup(i),
        Step::Forget(i, n) => match known.get(i % known.len().max(1)) {
            // A node with an open handle stays looked up, as the kernel keeps it.
            Some(&(id, c)) if open.iter().all(|&(nid, _)| nid != id) || c > n => {
                Action::Forget(id, n.min(c))
            }
            _ => Action::Nothing,
        },
        Step::Open(i) => match known.get(i % known.len().max(1)) {
            Some(&(id, _)) => Action::Open(id),
            None => Action::Nothing,
        },
        Step::Release(i) if !open.is_empty() => Action::Release(i % open.len()),
        Step::Release(_) => Action::Nothing,
    }
}

fn apply(k: &mut FakeKernel<Tree>, open: &mut Vec<(u64, u64)>, a: &Action) {
    match *a {
        Action::Lookup(i) => {
            let _ = k.lookup(1, format!("n{i}").as_bytes());
        }
        Action::Forget(id, n) => k.forget(id, n),
        Action::Open(id) => {
            if let Ok(fh) = k.open(id, false, 0) {
                open.push((id, fh));
            }
        }
        Action::Release(i) => {
            let (id, fh) = open.remove(i);
            assert_eq!(k.release(id, false, fh), 0);
        }
        Action::Nothing => {}
    }
}

fn run(k: &mut FakeKernel<Tree>, open: &mut Vec<(u64, u64)>, s: &Step) {
    let a = resolve(k, open, s);
    apply(k, open, &a);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    /// Random lookups, forgets, opens and releases before and during a pre-copy:
    /// the base plus the changes restore exactly the state the session has at the
    /// end, and the restored session keeps counting as the kernel does.
    #[test]
    fn base_plus_changes_is_the_state(
        before in prop::collection::vec(step(), 0..30),
        rounds in prop::collection::vec(prop::collection::vec(step(), 0..15), 0..3),
        during in prop::collection::vec(step(), 0..30),
        after in prop::collection::vec(step(), 0..20),
    ) {
        let mut k = kernel();
        let mut open = Vec::new();
        for s in &before {
            run(&mut k, &mut open, s);
        }
        let base = k.session().precopy_begin().expect("initialized");
        let mut prepared = PrecopiedState::new(base).unwrap();
        // Rounds while serving: each carries what changed since the last one.
        for round in &rounds {
            for s in round {
                run(&mut k, &mut open, s);
            }
            let r = k.session().precopy_round().expect("recording");
            prop_assert!(r.nodes.len() + r.forgotten.len() <= round.len());
            prepared.apply_round(r).unwrap();
        }
        for s in &during {
            run(&mut k, &mut open, s);
        }
        let changes = k.session().precopy_changes().expect("recording");
        let want = k.session().snapshot().unwrap();
        prop_assert!(k.session().precopy_changes().is_none(), "recording stopped");

        // Only what changed travels: every changed nodeid is one the steps touched.
        prop_assert!(changes.nodes.len() + changes.forgotten.len() <= during.len());

        let restored = Session::restore_precopied(TREE, prepared, changes).unwrap();
        prop_assert_eq!(restored.snapshot().unwrap(), want);

        // The restored session serves on with the same counts.
        let lookups = k.kernel_lookups().clone();
        let mut k2 = FakeKernel::with_session(restored);
        for (&id, &n) in &lookups {
            prop_assert_eq!(k2.session().lookup_count(id), Some(n));
        }
        let mut open2 = open.clone();
        for s in &after {
            let a = resolve(&k, &open, s);
            apply(&mut k, &mut open, &a);
            apply(&mut k2, &mut open2, &a);
        }
        prop_assert_eq!(&open, &open2, "the same fhs are handed out");
        prop_assert_eq!(k2.session().snapshot().unwrap().nodes, k.session().snapshot().unwrap().nodes);
    }
}

/// A session with three files looked up and one open, a base taken, then one more
/// lookup and one forget: the changes to tamper with.
fn sample() -> (
    SessionState<u32, u32>,
    SessionChanges<u32, u32>,
    SessionState<u32, u32>,
) {
    let mut k = kernel();
    for i in 0..3 {
        k.lookup(1, format!("n{i}").as_bytes()).unwrap();
    }
    let base = k.session().precopy_begin().unwrap();
    k.lookup(1, b"n3").unwrap();
    k.lookup(1, b"n0").unwrap();
    let n1 = base.nodes[2].nodeid;
    k.forget(n1, 1);
    let n0 = base.nodes[1].nodeid;
    k.open(n0, false, 0).unwrap();
    let changes = k.session().precopy_changes().unwrap();
    let end = k.session().snapshot().unwrap();
    (base, changes, end)
}

fn restore(
    base: SessionState<u32, u32>,
    changes: SessionChanges<u32, u32>,
) -> std::result::Result<Session<Tree>, StateError> {
    Session::restore_precopied(TREE, PrecopiedState::new(base)?, changes)
}

#[test]
fn the_sample_restores() {
    let (base, changes, end) = sample();
    assert_eq!(changes.forgotten.len(), 1);
    assert_eq!(changes.nodes.len(), 2, "n0's count changed and n3 is new");
    assert_eq!(changes.handles.len(), 1);
    assert_eq!(restore(base, changes).unwrap().snapshot().unwrap(), end);
}

#[test]
fn abort_stops_recording() {
    let k = kernel();
    assert!(k.session().precopy_changes().is_none(), "not recording");
    assert!(k.session().precopy_round().is_none(), "not recording");
    k.session().precopy_begin().unwrap();
    k.session().precopy_abort();
    assert!(k.session().precopy_changes().is_none());
}

#[test]
fn bad_changes_are_refused_with_what_is_wrong() {
    let (base, good, _) = sample();
    let root = base.nodes[0].clone();
    let n2 = base.nodes[3].clone();

    let mut c = good.clone();
    c.forgotten.push(1);
    c.forgotten.sort();
    assert!(matches!(
        restore(base.clone(), c),
        Err(StateError::BadRoot(_))
    ));

    let mut c = good.clone();
    c.nodes[0].lookups = 0;
    assert!(matches!(
        restore(base.clone(), c),
        Err(StateError::ZeroLookups(_))
    ));

    // A changed node takes the value of an unchanged one.
    let mut c = good.clone();
    c.nodes[0].node = n2.node;
    assert!(matches!(
        restore(base.clone(), c),
        Err(StateError::DuplicateNode(_))
    ));

    let mut c = good.clone();
    c.nodes.reverse();
    assert!(matches!(
        restore(base.clone(), c),
        Err(StateError::NodeidsNotSorted(_))
    ));

    // Forgotten and changed at once.
    let mut c = good.clone();
    c.forgotten.push(c.nodes[1].nodeid);
    assert!(restore(base.clone(), c).is_err());

    let mut c = good.clone();
    c.handles[0].nodeid = 999;
    assert!(matches!(
        restore(base.clone(), c),
        Err(StateError::HandleOnMissingNode { .. })
    ));

    let mut c = good.clone();
    c.counters.next_nodeid = 2;
    assert!(matches!(
        restore(base.clone(), c),
        Err(StateError::BadCounter(_))
    ));

    let mut c = good.clone();
    c.counters.next_fh = 0;
    assert!(matches!(
        restore(base.clone(), c),
        Err(StateError::BadCounter(_))
    ));

    let mut c = good.clone();
    c.init.result.max_write += 4096;
    assert!(matches!(
        restore(base.clone(), c),
        Err(StateError::BadInit(_))
    ));

    // The root cannot change its value or be counted.
    let mut c = good.clone();
    let mut r = root.clone();
    r.lookups = 1;
    c.nodes.insert(0, r);
    assert!(matches!(
        restore(base.clone(), c),
        Err(StateError::BadRoot(_))
    ));

    // A round is checked like the final changes.
    let mut p = PrecopiedState::new(base.clone()).unwrap();
    let bad = NodeChanges {
        nodes: vec![NodeState {
            lookups: 0,
            ..good.nodes[0].clone()
        }],
        forgotten: vec![],
    };
    assert!(matches!(
        p.apply_round(bad),
        Err(StateError::ZeroLookups(_))
    ));

    // The base itself is validated.
    let mut b = base.clone();
    b.nodes[1].lookups = 0;
    assert!(matches!(
        PrecopiedState::new(b),
        Err(StateError::ZeroLookups(_))
    ));

    // And the good changes still restore after all that.
    assert!(restore(base, good).is_ok());
}

/// More files than one copy range of [`Session::precopy_begin`].
const BIG: u32 = 3 * fuse_session::proto::precopy::COPY_RANGE as u32 + 123;

/// Encodes one request for the session `s`.
fn request(
    s: &Session<Tree>,
    unique: u64,
    nodeid: u64,
    op: &fuse_wire::request::Operation<'_>,
) -> Vec<u8> {
    use fuse_wire::request::encode::{encode, ExtensionArgs, HeaderFields};
    let mut buf = vec![0u8; 8192];
    let header = HeaderFields {
        unique,
        nodeid,
        uid: 0,
        gid: 0,
        pid: 1,
    };
    let n = encode(
        &mut buf,
        &s.negotiated(),
        &header,
        op,
        &ExtensionArgs::default(),
    )
    .unwrap();
    buf.truncate(n);
    buf
}

/// The base is copied a range at a time while another thread looks nodes up and
/// forgets them: base + changes is still exactly the end state.
#[test]
fn a_copy_in_ranges_with_requests_in_between() {
    let mut k = FakeKernel::new(Tree { files: BIG });
    let _ = k.init(45, InitFlags::INIT_EXT | InitFlags::MAX_PAGES);
    for i in 0..BIG {
        k.lookup(1, format!("n{i}").as_bytes()).unwrap();
    }
    let s = k.session();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (base, rounds) = std::thread::scope(|sc| {
        let worker = sc.spawn(|| {
            let mut out = vec![0u8; 1 << 20];
            let mut i = 0u32;
            let mut unique = 1u64 << 32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Look a node up twice, forget it once: its count changes, and
                // some new nodes appear (BIG..) and go again.
                let name = format!("n{}", (i * 7919) % (BIG + 50));
                for _ in 0..2 {
                    unique += 1;
                    let r = request(
                        s,
                        unique,
                        1,
                        &fuse_wire::request::Operation::Lookup {
                            name: name.as_bytes(),
                        },
                    );
                    let _ = s.handle(&r, &mut out);
                }
                let nodeid = (i % (BIG + 40)) as u64 + 2;
                let arg = fuse_wire::abi::fuse_forget_in {
                    nlookup: zerocopy::byteorder::native_endian::U64::new(1),
                };
                unique += 1;
                let r = request(
                    s,
                    unique,
                    nodeid,
                    &fuse_wire::request::Operation::Forget { arg: &arg },
                );
                let _ = s.handle(&r, &mut out);
                i += 1;
            }
            i
        });
        std::thread::sleep(Duration::from_millis(2));
        let base = s.precopy_begin().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let round = s.precopy_round().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let n = worker.join().unwrap();
        assert!(n > 0, "the worker ran");
        (base, round)
    });
    let changes = s.precopy_changes().unwrap();
    let want = s.snapshot().unwrap();
    let mut prepared = PrecopiedState::new(base).unwrap();
    prepared.apply_round(rounds).unwrap();
    let restored = Session::restore_precopied(Tree { files: BIG }, prepared, changes).unwrap();
    assert_eq!(restored.snapshot().unwrap(), want);
}

/// `journal_delta` carries the handle table only when its version moved since the
/// one passed, and then the table `journal_changes` would carry.
#[test]
fn a_journal_delta_leaves_unchanged_handles_out() {
    let mut k = kernel();
    assert!(k.session().journal_delta(None).is_none(), "not recording");
    assert!(k.session().start_change_recording());
    let id = k.lookup(1, b"n3").unwrap().nodeid;
    let first = k.session().journal_delta(None).unwrap();
    assert_eq!(
        first.handles,
        Some(Vec::new()),
        "None passed: carried whole"
    );
    assert_eq!(first.nodes.len(), 1, "the lookup");

    // Another lookup, no handle opened or released: left out.
    let _ = k.lookup(1, b"n3");
    let d = k
        .session()
        .journal_delta(Some(first.handles_version))
        .unwrap();
    assert_eq!(d.handles, None);
    assert_eq!(d.handles_version, first.handles_version);
    assert_eq!(d.nodes.len(), 1, "the count change");

    // An open: carried, the same as the whole changes say.
    let fh = k.open(id, false, 0).unwrap();
    let d = k
        .session()
        .journal_delta(Some(first.handles_version))
        .unwrap();
    let opened = d.handles.clone().expect("changed: carried");
    assert_eq!(opened.len(), 1);
    assert_eq!((opened[0].fh, opened[0].nodeid), (fh, id));
    assert_eq!(
        k.session().journal_changes().unwrap().handles,
        opened,
        "the table journal_changes carries"
    );
    let after_open = d.handles_version;
    assert!(k
        .session()
        .journal_delta(Some(after_open))
        .unwrap()
        .handles
        .is_none());

    // A release: carried (now empty).
    assert_eq!(k.release(id, false, fh), 0);
    let d = k.session().journal_delta(Some(after_open)).unwrap();
    assert_eq!(d.handles, Some(Vec::new()));
}
