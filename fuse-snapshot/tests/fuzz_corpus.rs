//! Replays the fuzz corpora of this crate's targets (`fuzz/corpus/<target>/`) and
//! any crash artifacts (`fuzz/artifacts/<target>/`) through the same library
//! functions the cargo-fuzz targets call (`fuse_snapshot::fuzzing`), so every
//! input a fuzzer found interesting stays a regression test on stable.
//!
//! `write_seeds` (ignored) regenerates the hand-made seeds: snapshots and
//! pre-copies of a live session of the fuzzing filesystem, the golden snapshot,
//! and whole handoff conversations for each side. See `docs/FUZZING.md`.
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fuse_session::fake::FakeKernel;
use fuse_snapshot::fuzzing::{self, FuzzFs};
use fuse_snapshot::handoff::message::{
    encode_accept, encode_duration, encode_reason, header, Hello, Kind, SnapshotMeta, WireMethod,
    FEATURE_PRECOPY,
};
use fuse_snapshot::FdSaver;
use fuse_wire::InitFlags;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 3] = [
    ("snapshot", fuzzing::snapshot),
    ("handoff", fuzzing::handoff),
    ("precopy", fuzzing::precopy),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

fn replay(dir: &Path, f: Target) -> usize {
    let list = files(dir);
    for p in &list {
        let data = fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        eprintln!("replaying {}", p.display());
        f(&data);
    }
    list.len()
}

#[test]
fn corpora_replay() {
    for (name, f) in TARGETS {
        let n = replay(&fuzz_dir().join("corpus").join(name), f);
        assert!(n > 0, "fuzz/corpus/{name} is empty or missing");
    }
}

/// The hand-made conversations reach the end they were written for, so the
/// fuzzer starts from whole handoffs.
#[test]
fn handoff_seeds_end_as_written() {
    let dir = fuzz_dir().join("corpus/handoff");
    for (name, committed) in [
        ("old-plain", true),
        ("old-precopy", true),
        ("old-nack", false),
        ("new-plain", true),
        ("new-precopy", true),
        ("new-refused", false),
    ] {
        let data = fs::read(dir.join(format!("seed-{name}"))).unwrap();
        assert_eq!(fuzzing::handoff_outcome(&data), Some(committed), "{name}");
    }
}

/// The pre-copies of a live session restore, with and without a round.
#[test]
fn precopy_seeds_restore() {
    let dir = fuzz_dir().join("corpus/precopy");
    for name in ["live-0", "live-1"] {
        let data = fs::read(dir.join(format!("seed-{name}"))).unwrap();
        assert!(fuzzing::precopy_outcome(&data), "{name}");
    }
}

#[test]
fn artifacts_replay() {
    for (name, f) in TARGETS {
        replay(&fuzz_dir().join("artifacts").join(name), f);
    }
}

/// Hostile lengths in each decoder: an error, no allocation from the length.
#[test]
fn hostile_lengths_are_errors() {
    let k = kernel();
    let good = fuse_snapshot::snapshot(k.session(), &mut FdSaver::new()).unwrap();
    // Envelope body length of u64::MAX.
    let mut bad = good.clone();
    bad[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(fuse_snapshot::decode_raw(&bad).is_err());
    // A node count of u64::MAX (varint) right after the init fields, with a
    // fixed-up envelope: refused by the body decoder, not preallocated.
    let mut body = good[24..].to_vec();
    body.truncate(30);
    body.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    let mut bad = good[..24].to_vec();
    bad.extend_from_slice(&body);
    fuzzing::fix_envelope(&mut bad);
    assert!(fuse_snapshot::decode_raw(&bad).is_err());
    assert!(fuse_snapshot::decode_state::<u64, u32, Vec<u64>>(&bad).is_err());
    // A pre-copy whose session part claims 4 GiB.
    let mut base = u32::MAX.to_le_bytes().to_vec();
    base.extend_from_slice(&good);
    let mut data = vec![0];
    data.extend_from_slice(&(base.len() as u16).to_le_bytes());
    data.extend_from_slice(&base);
    fuzzing::precopy(&data);
    // A handoff body of u32::MAX bytes is refused at the header.
    let mut conv = vec![0, 0, 0, 0, 0];
    conv.extend_from_slice(&header(Kind::Hello, u32::MAX as usize));
    fuzzing::handoff(&conv);
}

// ---------------------------------------------------------------------------
// Seeds
// ---------------------------------------------------------------------------

fn write_seed(target: &str, name: &str, data: &[u8]) {
    let dir = fuzz_dir().join("corpus").join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(format!("seed-{name}")), data).unwrap();
}

fn kernel() -> FakeKernel<FuzzFs> {
    let mut k = FakeKernel::new(FuzzFs {
        known: (1..=8).collect(),
    });
    let _ = k.init(45, InitFlags::INIT_EXT | InitFlags::MAX_PAGES);
    for n in 1..=4u32 {
        k.lookup(1, n.to_string().as_bytes()).unwrap();
    }
    k.lookup(1, b"2").unwrap();
    let id = k.lookup(1, b"3").unwrap().nodeid;
    k.open(id, false, 0).unwrap();
    k
}

fn with_len(v: &mut Vec<u8>, part: &[u8]) {
    v.extend_from_slice(&(part.len() as u16).to_le_bytes());
    v.extend_from_slice(part);
}

fn framed(fds: u8, msg: &[u8]) -> Vec<u8> {
    let mut v = vec![fds];
    v.extend_from_slice(msg);
    v
}

fn conversation(cfg: [u8; 4], msgs: &[Vec<u8>]) -> Vec<u8> {
    let mut v = cfg.to_vec();
    for m in msgs {
        v.extend_from_slice(m);
    }
    v
}

#[test]
#[ignore = "regenerates the seed files in fuzz/corpus"]
fn write_seeds() {
    // snapshot: a live session's snapshot, as is and with a fixed-up envelope; the
    // golden file of format version 1.
    let k = kernel();
    let snap = fuse_snapshot::snapshot(k.session(), &mut FdSaver::new()).unwrap();
    for mode in [0u8, 1] {
        let mut v = vec![mode];
        v.extend_from_slice(&snap);
        write_seed("snapshot", &format!("live-{mode}"), &v);
    }
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v1-small.snap");
    let mut v = vec![0];
    v.extend_from_slice(&fs::read(golden).unwrap());
    write_seed("snapshot", "golden-v1", &v);

    // precopy: base, a round, the changes of a live session.
    let k = kernel();
    let (begin, round, changes) = fuzzing::precopy_bytes(k.session());
    for rounds in [0u8, 1] {
        let mut v = vec![rounds << 4];
        with_len(&mut v, &begin);
        if rounds == 1 {
            with_len(&mut v, &round);
        }
        v.extend_from_slice(&changes);
        write_seed("precopy", &format!("live-{rounds}"), &v);
    }

    // handoff, old side: Hello (with and without pre-copy), Ready, Ready, Ack.
    let hello = |features| {
        Hello {
            min_version: 1,
            max_version: 1,
            pid: 9,
            features,
        }
        .encode()
    };
    let ready = encode_duration(Kind::Ready, Duration::from_millis(1));
    let ack = encode_duration(Kind::Ack, Duration::from_millis(2));
    let old_plain = conversation([0, 0, 0, 0], &[framed(0, &hello(0)), framed(0, &ack)]);
    write_seed("handoff", "old-plain", &old_plain);
    let old_precopy = conversation(
        [4, 0, 10, 0b0101_0101],
        &[
            framed(0, &hello(FEATURE_PRECOPY)),
            framed(0, &ready),
            framed(0, &ready),
            framed(0, &ack),
        ],
    );
    write_seed("handoff", "old-precopy", &old_precopy);
    let nack = encode_reason(Kind::Nack, "no");
    let old_nack = conversation([0, 0, 0, 0], &[framed(0, &hello(0)), framed(0, &nack)]);
    write_seed("handoff", "old-nack", &old_nack);

    // handoff, new side: Accept, Precopy, PrecopyRound, Snapshot, Commit.
    let meta = SnapshotMeta {
        since_pause: Duration::from_millis(1),
        has_unmount_socket: true,
        method: WireMethod::FusermountAutoUnmount,
        connection_id: Some(42),
        fs_fds: 1,
        mountpoint: b"/mnt/fuzz".to_vec(),
    };
    let mut snapshot = meta.encode(snap.len());
    snapshot.extend_from_slice(&snap);
    let mut pre = header(Kind::Precopy, begin.len()).to_vec();
    pre.extend_from_slice(&begin);
    let mut rnd = header(Kind::PrecopyRound, round.len()).to_vec();
    rnd.extend_from_slice(&round);
    let commit = encode_duration(Kind::Commit, Duration::from_millis(3));
    let new_plain = conversation(
        [1, 0, 0, 0],
        &[
            framed(0, &encode_accept(1, 0)),
            framed(3, &snapshot),
            framed(0, &commit),
        ],
    );
    write_seed("handoff", "new-plain", &new_plain);
    let new_precopy = conversation(
        [5, 0, 0, 0],
        &[
            framed(0, &encode_accept(1, FEATURE_PRECOPY)),
            framed(0, &pre),
            framed(0, &rnd),
            framed(3, &snapshot),
            framed(0, &commit),
        ],
    );
    write_seed("handoff", "new-precopy", &new_precopy);
    let refuse = encode_reason(Kind::Refuse, "busy");
    write_seed(
        "handoff",
        "new-refused",
        &conversation([1, 0, 0, 0], &[framed(0, &refuse)]),
    );
}
