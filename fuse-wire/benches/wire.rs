//! Wire benchmarks: parsing requests and encoding replies, in ns per message.
//!
//! `cargo bench -p fuse-wire --bench wire` (optionally followed by `-- FILTER` to
//! run only the cases whose name contains FILTER).
//!
//! A tiny harness instead of a benchmark framework: each case is calibrated to
//! about 5 ms per run, run 31 times, and reported as the median, the minimum
//! and the maximum ns per operation (many short runs: on a shared machine the
//! minimum and the median stay meaningful when some runs are preempted). Inputs and outputs go through
//! `std::hint::black_box` so the optimiser can neither precompute the input nor
//! drop the work. Figures are recorded in `docs/BENCHMARKS.md`; no test depends
//! on them.
use std::hint::black_box;
use std::time::{Duration, Instant};

use fuse_wire::abi;
use fuse_wire::reply::{self, Attr, Dirent, DirentWriter, Entry, Push, Timestamp};
use fuse_wire::request::encode::{encode, ExtensionArgs, HeaderFields};
use fuse_wire::request::{parse_header, SecCtx};
use fuse_wire::{parse, InitFlags, Negotiated, Operation, SetattrValid};
use zerocopy::byteorder::native_endian::{U32, U64};
use zerocopy::FromZeros;

const RUNS: usize = 31;
const RUN_TARGET: Duration = Duration::from_millis(5);

/// Times `f` and prints `name  median ns/op  (min ..)`.
fn bench(filter: &Option<String>, name: &str, mut f: impl FnMut()) {
    if filter
        .as_ref()
        .is_some_and(|flt| !name.contains(flt.as_str()))
    {
        return;
    }
    // Profiling mode: a fixed number of iterations, no timing (for instruction
    // counts under `valgrind --tool=callgrind`; see docs/BENCHMARKS.md).
    if let Some(n) = std::env::var("WIRE_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        time(n, &mut f);
        println!("{name:<40} {n} iterations (profiling mode)");
        return;
    }
    // Calibrate: double the batch until it takes a millisecond, then scale it to
    // RUN_TARGET using the fastest of three timings (on a shared machine a batch
    // is only ever slowed down, never sped up).
    let mut iters: u64 = 1;
    let ms = Duration::from_millis(1);
    while time(iters, &mut f) < ms && iters < 1 << 40 {
        iters *= 2;
    }
    let fastest = (0..3).map(|_| time(iters, &mut f)).min().unwrap_or(ms);
    let scale = RUN_TARGET.as_nanos() / fastest.as_nanos().max(1);
    iters = iters.saturating_mul(u64::try_from(scale).unwrap_or(1).max(1));
    let mut per_op = [0f64; RUNS];
    for slot in per_op.iter_mut() {
        *slot = time(iters, &mut f).as_nanos() as f64 / iters as f64;
    }
    per_op.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{name:<40} {:>9.2} ns/op   (min {:>8.2}, max {:>8.2}; {RUNS} runs x {iters} iters)",
        per_op[RUNS / 2],
        per_op[0],
        per_op[RUNS - 1],
    );
}

fn time(iters: u64, f: &mut impl FnMut()) -> Duration {
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed()
}

fn header(unique: u64, nodeid: u64) -> HeaderFields {
    HeaderFields {
        unique,
        nodeid,
        uid: 1000,
        gid: 1000,
        pid: 4242,
    }
}

fn request(proto: &Negotiated, op: &Operation<'_>, ext: &ExtensionArgs<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; 8192];
    let n = encode(&mut buf, proto, &header(42, 7), op, ext).expect("encode");
    buf.truncate(n);
    buf
}

fn sample_attr() -> Attr {
    Attr {
        ino: 7,
        size: 12345,
        blocks: 24,
        atime: Timestamp::new(1_700_000_000, 5),
        mtime: Timestamp::new(1_700_000_000, 6),
        ctime: Timestamp::new(1_700_000_000, 7),
        mode: 0o100644,
        nlink: 1,
        uid: 1000,
        gid: 1000,
        rdev: 0,
        blksize: 4096,
        ..Default::default()
    }
}

fn main() {
    // `cargo bench` passes `--bench`; anything else is a name filter.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let f = &filter;
    // The negotiation of this machine's golden vectors: 7.45 with SETXATTR_EXT,
    // SECURITY_CTX, CREATE_SUPP_GROUP and more.
    let proto = Negotiated::new(
        45,
        InitFlags::SETXATTR_EXT
            | InitFlags::INIT_EXT
            | InitFlags::SECURITY_CTX
            | InitFlags::CREATE_SUPP_GROUP
            | InitFlags::ASYNC_READ
            | InitFlags::BIG_WRITES,
    );
    let none = ExtensionArgs::NONE;

    // ----- requests -----
    let lookup = request(&proto, &Operation::Lookup { name: b"hello.txt" }, &none);

    let mut getattr_in = abi::fuse_getattr_in::new_zeroed();
    getattr_in.fh = U64::new(3);
    let getattr = request(&proto, &Operation::Getattr { arg: getattr_in }, &none);

    let mut read_in = abi::fuse_read_in::new_zeroed();
    read_in.fh = U64::new(3);
    read_in.offset = U64::new(1 << 20);
    read_in.size = U32::new(4096);
    let read = request(&proto, &Operation::Read { arg: read_in }, &none);

    let payload = vec![0xa5u8; 4096];
    let mut write_in = abi::fuse_write_in::new_zeroed();
    write_in.fh = U64::new(3);
    write_in.offset = U64::new(1 << 20);
    write_in.size = U32::new(4096);
    let write = request(
        &proto,
        &Operation::Write {
            arg: write_in,
            data: &payload,
        },
        &none,
    );

    let mut setattr_in = abi::fuse_setattr_in::new_zeroed();
    setattr_in.valid = U32::new(SetattrValid::SIZE.bits());
    setattr_in.size = U64::new(0);
    let setattr = request(&proto, &Operation::Setattr { arg: &setattr_in }, &none);

    // CREATE as this kernel sends it with SECURITY_CTX and CREATE_SUPP_GROUP agreed:
    // an empty security-context extension and one supplementary group.
    let mut create_in = abi::fuse_create_in::new_zeroed();
    create_in.flags = U32::new(0o100101);
    create_in.mode = U32::new(0o100644);
    create_in.umask = U32::new(0o022);
    let no_ctx: [SecCtx<'_>; 0] = [];
    let create = request(
        &proto,
        &Operation::Create {
            arg: create_in,
            name: b"new-file.txt",
        },
        &ExtensionArgs {
            security_contexts: Some(&no_ctx),
            supp_groups: Some(&[1000]),
            raw: &[],
        },
    );

    let forgets: Vec<abi::fuse_forget_one> = (0..16u64)
        .map(|i| abi::fuse_forget_one {
            nodeid: U64::new(100 + i),
            nlookup: U64::new(1),
        })
        .collect();
    let batch_forget = request(&proto, &Operation::BatchForget { forgets: &forgets }, &none);

    println!("# fuse-wire: parse (header + body; each input checked to parse)");
    for (name, bytes) in [
        ("parse LOOKUP", &lookup),
        ("parse GETATTR", &getattr),
        ("parse READ", &read),
        ("parse WRITE (4 KiB payload)", &write),
        ("parse SETATTR", &setattr),
        ("parse CREATE (+ 2 extensions)", &create),
        ("parse BATCH_FORGET (16)", &batch_forget),
    ] {
        assert!(parse(bytes, &proto).is_ok(), "{name}: input does not parse");
        bench(f, name, || {
            let r = parse(black_box(bytes.as_slice()), black_box(&proto));
            black_box(&r);
        });
    }
    bench(f, "parse_header only (LOOKUP)", || {
        let h = parse_header(black_box(lookup.as_slice()));
        black_box(&h);
    });

    // ----- replies -----
    println!("# fuse-wire: encode (into a caller buffer)");
    let entry = Entry {
        nodeid: 7,
        generation: 1,
        entry_valid: Duration::from_secs(1),
        attr_valid: Duration::from_secs(1),
        attr: sample_attr(),
    };
    let attr = sample_attr();
    let mut out = vec![0u8; 8192];
    bench(f, "encode entry reply", || {
        let n = reply::entry(
            black_box(&mut out),
            black_box(42),
            black_box(&proto),
            black_box(&entry),
        );
        black_box(&n);
    });
    bench(f, "encode attr reply", || {
        let n = reply::attr(
            black_box(&mut out),
            black_box(42),
            black_box(&proto),
            black_box(Duration::from_secs(1)),
            black_box(&attr),
        );
        black_box(&n);
    });
    bench(f, "encode data header (16 bytes)", || {
        let h = reply::data_header(black_box(42), black_box(4096));
        black_box(&h);
    });
    bench(f, "encode error reply", || {
        let n = reply::error(black_box(&mut out), black_box(42), black_box(2));
        black_box(&n);
    });

    // A 4 KiB READDIR page: names file-0000, file-0001, ... (40 bytes an entry)
    // until the writer says Full.
    let names: Vec<Vec<u8>> = (0..1000)
        .map(|i| format!("file-{i:04}").into_bytes())
        .collect();
    let mut page_entries = 0;
    bench(f, "encode readdir page (4 KiB)", || {
        let Ok(mut w) = DirentWriter::new(black_box(&mut out), 42, 4096) else {
            return;
        };
        for (i, name) in names.iter().enumerate() {
            let d = Dirent {
                ino: i as u64 + 2,
                off: i as u64 + 1,
                typ: 8,
                name,
            };
            if !matches!(w.push(&d), Ok(Push::Added)) {
                break;
            }
        }
        page_entries = w.count();
        let n = w.finish();
        black_box(&n);
    });
    if page_entries > 0 {
        println!("  (a page holds {page_entries} entries)");
    }
}
