//! The session as a value: snapshot, restore without INIT, and refusal of
//! inconsistent states.
use std::ffi::OsStr;
use std::time::Duration;

use fuse_session::fake::FakeKernel;
use fuse_session::*;
use fuse_wire::InitFlags;

#[derive(Default)]
struct Flat;

fn attr(ino: u64) -> FileAttr {
    let kind = if ino == 1 {
        FileType::Directory
    } else {
        FileType::RegularFile
    };
    FileAttr {
        nlink: 1,
        ..FileAttr::new(ino, kind, 0o644)
    }
}

impl Filesystem for Flat {
    type Node = u64;
    type Handle = String;
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
    ) -> Result<Opened<String>> {
        Ok(Opened::new(format!("open-{node}")))
    }
    fn opendir(&self, _: &RequestContext<'_>, node: &u64, _: i32) -> Result<Opened<String>> {
        Ok(Opened::new(format!("dir-{node}")))
    }
}

fn busy_kernel() -> FakeKernel<Flat> {
    let mut k = FakeKernel::new(Flat);
    k.init(
        45,
        InitFlags::INIT_EXT | InitFlags::HAS_RESEND | InitFlags::ASYNC_READ,
    );
    for i in 0..50u64 {
        let e = k.lookup(1, i.to_string().as_bytes()).unwrap();
        if i % 3 == 0 {
            k.lookup(1, i.to_string().as_bytes()).unwrap();
        }
        if i % 5 == 0 {
            k.open(e.nodeid, false, 2).unwrap();
        }
    }
    k.open(1, true, 0).unwrap();
    k
}

#[test]
fn snapshot_restore_round_trip_keeps_every_table_and_counter() {
    let k = busy_kernel();
    let state = k.session().snapshot().unwrap();
    assert_eq!(state.nodes.len(), 51);
    assert_eq!(state.handles.len(), 11);
    assert!(state.kernel_has_resend());
    assert!(
        state.nodes.windows(2).all(|w| w[0].nodeid < w[1].nodeid),
        "sorted: deterministic"
    );
    let restored = Session::restore(Flat, state.clone()).unwrap();
    assert_eq!(
        restored.snapshot().unwrap(),
        state,
        "restore then snapshot gives the same value"
    );
    assert!(restored.init_state().is_some(), "no INIT needed");

    // The restored session goes on where the old one stopped: same nodeids for known
    // nodes, counts continue, new ids never collide.
    let mut k2 = FakeKernel::with_session(restored);
    for (id, n) in k.kernel_lookups() {
        assert_eq!(k2.session().lookup_count(*id), Some(*n));
    }
    let again = k2.lookup(1, b"7").unwrap();
    assert_eq!(
        Some(again.nodeid),
        state.nodes.iter().find(|n| n.node == 17).map(|n| n.nodeid)
    );
    let fresh = k2.lookup(1, b"1000").unwrap();
    assert!(fresh.nodeid >= state.counters.next_nodeid);
    let fh = k2.open(fresh.nodeid, false, 0).unwrap();
    assert!(state.handles.iter().all(|h| h.fh != fh));
    // Handles opened before the snapshot are released after it.
    for h in &state.handles {
        let dir = h.kind == HandleKind::Dir;
        assert_eq!(k2.release(h.nodeid, dir, h.fh), 0);
    }
}

#[test]
fn inconsistent_states_are_refused_with_the_reason() {
    let good = busy_kernel().session().snapshot().unwrap();
    let refuse = |f: &dyn Fn(&mut SessionState<u64, String>)| {
        let mut s = good.clone();
        f(&mut s);
        Session::restore(Flat, s).err().expect("refused")
    };
    assert!(matches!(
        refuse(&|s| s.init.result.minor = 8),
        StateError::UnsupportedMinor(8)
    ));
    assert!(matches!(
        refuse(&|s| s.init.result.minor = 46),
        StateError::UnsupportedMinor(46)
    ));
    assert!(matches!(
        refuse(&|s| s.nodes.remove(0).lookups = 0),
        StateError::BadRoot(_)
    ));
    assert!(matches!(
        refuse(&|s| s.nodes[0].lookups = 3),
        StateError::BadRoot(_)
    ));
    assert!(matches!(
        refuse(&|s| s.nodes[5].lookups = 0),
        StateError::ZeroLookups(_)
    ));
    assert!(matches!(
        refuse(&|s| s.nodes.swap(3, 4)),
        StateError::NodeidsNotSorted(_)
    ));
    assert!(matches!(
        refuse(&|s| s.nodes[4].node = s.nodes[3].node),
        StateError::DuplicateNode(_)
    ));
    assert!(matches!(
        refuse(&|s| s.handles[1].fh = s.handles[0].fh),
        StateError::BadFh(_)
    ));
    assert!(matches!(
        refuse(&|s| s.handles[0].fh = 0),
        StateError::BadFh(0)
    ));
    assert!(matches!(
        refuse(&|s| s.handles[2].nodeid = 99_999),
        StateError::HandleOnMissingNode { nodeid: 99_999, .. }
    ));
    assert!(matches!(
        refuse(&|s| s.counters.next_nodeid = 2),
        StateError::BadCounter("next_nodeid")
    ));
    assert!(matches!(
        refuse(&|s| s.counters.next_fh = 1),
        StateError::BadCounter("next_fh")
    ));
    assert!(matches!(
        refuse(&|s| s.init.result.flags |= 1 << 60),
        StateError::BadInit(_)
    ));
    assert!(matches!(
        refuse(&|s| s.nodes[0].node = 5),
        StateError::BadRoot(_)
    ));
    // Errors say what is wrong.
    let e = refuse(&|s| s.handles[2].nodeid = 99_999);
    assert!(e.to_string().contains("99999"), "{e}");
}

#[test]
fn no_snapshot_before_init() {
    let k = FakeKernel::new(Flat);
    assert!(k.session().snapshot().is_none());
}
