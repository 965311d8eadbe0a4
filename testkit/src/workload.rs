//! A verified workload for crash tests, run by worker processes on a mount whose
//! daemon crashes again and again: creates, writes read back byte for byte,
//! renames, unlinks, listings, and a file held open across every crash and
//! written with `pwrite`/`pread`. Every call must succeed; every byte is checked,
//! as it goes and once more at the end. (The shape of `tests/crash.rs`'s worker.)
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Blocks of the held file.
pub const HELD_BLOCKS: u64 = 16;
/// Size of one block of the held file.
pub const BLOCK: usize = 4096;

/// The contents of file `n` of worker `w`: length (1 to 20000 bytes) and bytes
/// derived from both.
pub fn contents(w: u32, n: u64) -> Vec<u8> {
    let seed = (u64::from(w) << 32) ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let len = 1 + (seed % 20_000) as usize;
    crate::pattern(seed, len)
}

/// Block `i`'s contents in worker `w`'s held file.
pub fn held_block(w: u32, i: u64) -> Vec<u8> {
    crate::pattern((u64::from(w) << 40) ^ (i + 1), BLOCK)
}

/// One worker in directory `dir` (created here): runs until `stop` exists,
/// checking every result, then reads everything it left. Returns the number of
/// operations, or what failed (the first failure ends the worker).
pub fn work(dir: &Path, w: u32, stop: &Path) -> Result<u64, String> {
    let e = |what: String| move |err: std::io::Error| format!("{what}: {err}");
    std::fs::create_dir(dir).map_err(e(format!("mkdir {}", dir.display())))?;
    let held = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join("held"))
        .map_err(e("create held".into()))?;
    let mut model = vec![0u8; HELD_BLOCKS as usize * BLOCK];
    held.set_len(model.len() as u64)
        .map_err(e("truncate held".into()))?;
    let mut ops = 3u64;
    let mut live: BTreeSet<String> = BTreeSet::new();
    live.insert("held".into());
    let mut n = 0u64;
    while !stop.exists() {
        n += 1;
        let data = contents(w, n);
        let f = dir.join(format!("f{n}"));
        {
            let mut file = File::create(&f).map_err(e(format!("create f{n}")))?;
            file.write_all(&data).map_err(e(format!("write f{n}")))?;
        }
        let back = std::fs::read(&f).map_err(e(format!("read f{n}")))?;
        if back != data {
            return Err(format!("f{n}: read back differs from what was written"));
        }
        let g = dir.join(format!("g{n}"));
        std::fs::rename(&f, &g).map_err(e(format!("rename f{n}")))?;
        if f.exists() {
            return Err(format!("f{n} still exists after its rename"));
        }
        live.insert(format!("g{n}"));
        if n > 1 && n % 2 == 0 {
            let old = format!("g{}", n - 1);
            std::fs::remove_file(dir.join(&old)).map_err(e(format!("unlink {old}")))?;
            live.remove(&old);
            ops += 1;
        }
        let blk = n % HELD_BLOCKS;
        let bytes = held_block(w, n);
        held.write_all_at(&bytes, blk * BLOCK as u64)
            .map_err(e(format!("pwrite held block {blk}")))?;
        model[blk as usize * BLOCK..][..BLOCK].copy_from_slice(&bytes);
        let mut got = vec![0u8; BLOCK];
        held.read_exact_at(&mut got, blk * BLOCK as u64)
            .map_err(e(format!("pread held block {blk}")))?;
        if got != bytes {
            return Err(format!("held block {blk}: read back differs"));
        }
        let listed: BTreeSet<String> = std::fs::read_dir(dir)
            .map_err(e("readdir".into()))?
            .map(|d| d.map(|d| d.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()
            .map_err(e("readdir entry".into()))?;
        if listed != live {
            return Err(format!("listing {listed:?}, expected {live:?}"));
        }
        ops += 7;
    }
    for name in &live {
        let got = std::fs::read(dir.join(name)).map_err(e(format!("final read {name}")))?;
        let want = match name.strip_prefix('g') {
            Some(k) => contents(w, k.parse().map_err(|_| format!("bad name {name}"))?),
            None => model.clone(),
        };
        if got != want {
            return Err(format!("{name}: final contents differ"));
        }
        ops += 1;
    }
    let mut all = Vec::new();
    (&held)
        .read_to_end(&mut all)
        .map_err(e("read held through its descriptor".into()))?;
    if all != model {
        return Err("held: contents through the held descriptor differ".into());
    }
    Ok(ops + 1)
}

/// Starts worker `w` of the test `test` (a `#[test]` that calls [`run_from_env`]
/// with `env`) as a re-run of this test binary, in `dir`, until `stop` exists.
pub fn spawn(test: &str, env: &str, w: u32, dir: &Path, stop: &Path) -> std::process::Child {
    let spec = format!("{w}:{}:{}", dir.display(), stop.display());
    crate::spawn_test_worker(test, (env, &spec))
}

/// A worker's entry point: if the environment variable `env` is set (by
/// [`spawn`]), runs [`work`] as it says, prints `ops N` and returns; exits 1 after
/// printing `failed WHY` if the work failed. Does nothing when `env` is unset (the
/// test run as a test).
pub fn run_from_env(env: &str) {
    let Ok(spec) = std::env::var(env) else {
        return;
    };
    let mut it = spec.splitn(3, ':');
    let w: u32 = it
        .next()
        .and_then(|s| s.parse().ok())
        .expect("worker number");
    let dir = std::path::PathBuf::from(it.next().expect("dir"));
    let stop = std::path::PathBuf::from(it.next().expect("stop file"));
    match work(&dir, w, &stop) {
        Ok(ops) => println!("\nops {ops}"),
        Err(e) => {
            println!("\nfailed {e}");
            std::process::exit(1);
        }
    }
}
