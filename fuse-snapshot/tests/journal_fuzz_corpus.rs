//! Replays the `journal` fuzz corpus (`fuzz/corpus/journal/`) and any crash
//! artifacts (`fuzz/artifacts/journal/`) through the library function the
//! cargo-fuzz target calls, so every input the fuzzer found interesting stays a
//! regression test under plain `cargo test` on stable. `write_seeds` (ignored)
//! regenerates the hand-made seeds. See `docs/FUZZING.md`.
use std::fs;
use std::path::{Path, PathBuf};

use fuse_snapshot::journal::fuzzing::{self, run_script, SCRIPT_MAX_LEN};
use fuse_snapshot::journal::MemStorage;

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

fn replay(dir: &Path) -> usize {
    let list = files(dir);
    for p in &list {
        let data = fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        eprintln!("replaying {}", p.display());
        fuzzing::journal(&data);
    }
    list.len()
}

#[test]
fn corpus_replays() {
    let n = replay(&fuzz_dir().join("corpus/journal"));
    assert!(n > 0, "fuzz/corpus/journal is empty or missing");
}

#[test]
fn artifacts_replay() {
    replay(&fuzz_dir().join("artifacts/journal"));
}

/// A script with appends of every kind, marks and compactions.
fn script() -> Vec<u8> {
    let mut s = Vec::new();
    for k in 0..10u8 {
        s.extend_from_slice(&[k * 8, 3 + k]);
    }
    s.push(6);
    s.extend_from_slice(&[8, 20, 56, 1]);
    s.extend_from_slice(&[7, 30]);
    for k in 0..6u8 {
        s.extend_from_slice(&[k * 8 + 1, 50]);
    }
    s.push(6);
    s.extend_from_slice(&[7, 200]);
    s.extend_from_slice(&[16, 9]);
    s
}

/// Regenerates the hand-made seeds (run with `--ignored`).
#[test]
#[ignore = "writes seed files into fuzz/corpus; run by hand"]
fn write_seeds() {
    let dir = fuzz_dir().join("corpus/journal");
    fs::create_dir_all(&dir).unwrap();
    let s = script();
    // Mode 0: the images a short script and the whole one leave.
    for (name, script) in [("short", &s[..12]), ("whole", &s[..])] {
        let storage = MemStorage::new(SCRIPT_MAX_LEN);
        run_script(&storage, script);
        let mut image = vec![0u8];
        image.extend_from_slice(&storage.bytes());
        fs::write(dir.join(format!("seed-image-{name}")), &image).unwrap();
    }
    // Mode 1: crashes at a few points, and none.
    for point in [0u16, 100, 4200, 4500, 5000, 9000] {
        let mut d = vec![1u8];
        d.extend_from_slice(&point.to_le_bytes());
        d.extend_from_slice(&s);
        fs::write(dir.join(format!("seed-crash-{point}")), d).unwrap();
    }
    // Mode 2: the script, then flips in a header slot, the checkpoint, the log.
    for (name, pos) in [("slot", 20u32), ("checkpoint", 4100), ("log", 4400)] {
        let mut d = vec![2u8, 0, 0];
        d.extend_from_slice(&s);
        d.push(0);
        d.extend_from_slice(&(pos as u16).to_le_bytes());
        d.push((pos >> 16) as u8);
        d.push(0x10);
        fs::write(dir.join(format!("seed-damage-{name}")), d).unwrap();
    }
}
