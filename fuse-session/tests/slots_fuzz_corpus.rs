//! Replays the `request_slots` fuzz corpus (`fuzz/corpus/request_slots/`) and any
//! crash artifacts (`fuzz/artifacts/request_slots/`) through the library function
//! the cargo-fuzz target calls, so every input the fuzzer found interesting stays a
//! regression test under plain `cargo test` on stable. `write_seeds` (ignored)
//! regenerates the hand-made seeds. See `docs/FUZZING.md`.
use std::fs;
use std::path::{Path, PathBuf};

use fuse_session::dev::slots::fuzzing;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn replay(dir: &Path) -> usize {
    let Ok(rd) = fs::read_dir(dir) else {
        return 0;
    };
    let mut list: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    list.sort();
    for p in &list {
        let data = fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        eprintln!("replaying {}", p.display());
        fuzzing::request_slots(&data);
    }
    list.len()
}

#[test]
fn corpus_replays() {
    let n = replay(&fuzz_dir().join("corpus/request_slots"));
    assert!(n > 0, "fuzz/corpus/request_slots is empty or missing");
}

#[test]
fn artifacts_replay() {
    replay(&fuzz_dir().join("artifacts/request_slots"));
}

/// The hand-made seeds reach the cases they are named for.
#[test]
fn seeds_reach_their_cases() {
    let dir = fuzz_dir().join("corpus/request_slots");
    let scan = |name: &str| {
        let d = fs::read(dir.join(name)).expect("seed");
        let image = fuzzing::build(&d).expect("an image");
        fuse_session::dev::slots::scan_slots(&image[..])
    };
    let s = scan("seed-held-answered-damaged").expect("valid header");
    assert_eq!((s.held.len(), s.idle, s.damaged.len()), (1, 1, 1), "{s:?}");
    assert_eq!((s.held[0].unique, s.held[0].bytes.len()), (10, 48));
    let s = scan("seed-duplicate-resend-bit").expect("valid header");
    assert_eq!((s.held.len(), s.damaged.len()), (2, 1), "{s:?}");
    assert_eq!((s.held[0].slot, s.held[1].slot), (0, 2));
    let s = scan("seed-image-empty").expect("valid header");
    assert_eq!((s.held.len(), s.idle), (0, 2));
    assert!(scan("seed-image-cut").is_err());
}

/// A mode-1 write group: store `value` at image byte `at` of an image of `len`.
fn put(d: &mut Vec<u8>, len: usize, at: usize, value: u8) {
    // pos * len / 65536 == at for pos = ceil(at * 65536 / len).
    let pos = (at * 65536).div_ceil(len) as u16;
    d.extend_from_slice(&pos.to_le_bytes());
    d.push(value);
}

/// Regenerates the hand-made seeds (run with `--ignored`).
#[test]
#[ignore = "writes seed files into fuzz/corpus; run by hand"]
fn write_seeds() {
    let dir = fuzz_dir().join("corpus/request_slots");
    fs::create_dir_all(&dir).unwrap();
    // Mode 0: an empty image of two slots, and one cut short.
    let img = fuzzing::image(2);
    let mut d = vec![0u8];
    d.extend_from_slice(&img);
    fs::write(dir.join("seed-image-empty"), &d).unwrap();
    fs::write(dir.join("seed-image-cut"), &d[..5000]).unwrap();
    // Mode 1: three slots; slot 0 holds a 48-byte request of unique 10, slot 1 an
    // answered one (unique 12 = answered), slot 2 a length past its data area.
    let len = fuzzing::image(3).len();
    let slot = |i: usize| 4096 * (1 + i * 3);
    let mut d = vec![1u8, 2];
    for (i, unique, rlen) in [(0usize, 10u8, 48u8), (1, 12, 40), (2, 14, 0)] {
        let data = slot(i) + 4096;
        put(&mut d, len, data, rlen);
        put(&mut d, len, data + 8, unique);
    }
    put(&mut d, len, slot(2) + 4096 + 2, 0x40); // length 0x400000
    put(&mut d, len, slot(1) + 24, 12); // slot 1's answered word
    fs::write(dir.join("seed-held-answered-damaged"), &d).unwrap();
    // Mode 1: slots 0 and 1 holding the same unique, slot 2 one with bit 63 set.
    let len = fuzzing::image(3).len();
    let mut d = vec![1u8, 2];
    for i in 0..3 {
        let data = slot(i) + 4096;
        put(&mut d, len, data, 40);
        put(&mut d, len, data + 8, 7);
    }
    put(&mut d, len, slot(2) + 4096 + 15, 0x80);
    fs::write(dir.join("seed-duplicate-resend-bit"), &d).unwrap();
}
