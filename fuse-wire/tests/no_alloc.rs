//! fuse-wire allocates nothing: parsing every golden request, parsing requests
//! built by the request encoder, and encoding replies and notifications into
//! caller-owned buffers are all counted by a test-only global allocator and must
//! perform zero allocations.
//!
//! The counter is per thread, so the test harness's own allocations on other
//! threads do not disturb it.
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fs;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use fuse_wire::reply::{
    self, Attr, Dirent, DirentPlus, DirentWriter, Entry, FileLock, InitOut, Push,
};
use fuse_wire::request::encode::{encode, ExtensionArgs, HeaderFields};
use fuse_wire::{abi, notify, parse, InitFlags, Negotiated, Opcode, Operation, RequestFlags};
use zerocopy::byteorder::native_endian::{U32, U64};

/// [`System`], counting the allocations of the current thread.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_one() {
    // `try_with`: no panic while the thread's locals are being torn down. The
    // const-initialised `Cell` needs no lazy initialisation, so this never
    // allocates itself.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged,
// so `System`'s implementation upholds the `GlobalAlloc` contract; the only extra
// work is a thread-local counter increment, which neither allocates nor unwinds.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: same contract as our caller's; `ptr` came from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's; `ptr` came from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` and returns its result and how many allocations it made on this thread.
fn allocations<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = ALLOCATIONS.with(Cell::get);
    let out = f();
    let after = ALLOCATIONS.with(Cell::get);
    (out, after - before)
}

fn golden() -> (Negotiated, Vec<Vec<u8>>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/linux-6.18");
    let text = fs::read_to_string(dir.join("negotiated.txt")).expect("negotiated.txt");
    let value = |key: &str| -> u64 {
        let v = text
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            .expect("key in negotiated.txt");
        match v.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).unwrap(),
            None => v.parse().unwrap(),
        }
    };
    let proto = Negotiated::new(value("minor") as u32, InitFlags(value("flags")));
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    files.sort();
    let vectors: Vec<Vec<u8>> = files.iter().map(|p| fs::read(p).unwrap()).collect();
    assert!(vectors.len() > 100);
    (proto, vectors)
}

#[test]
fn the_counter_counts() {
    let (v, n) = allocations(|| black_box(vec![1u8; 16]));
    assert_eq!(v.len(), 16);
    assert!(n >= 1, "the counting allocator saw no allocation");
}

#[test]
fn parsing_golden_vectors_allocates_nothing() {
    let (proto, vectors) = golden();
    let (parsed, n) = allocations(|| {
        let mut ok = 0usize;
        for v in &vectors {
            let req = parse(black_box(v), &proto);
            if let Ok(req) = black_box(req) {
                // Touch the borrowed views too.
                black_box(req.op());
                black_box(req.extensions().supp_groups());
                black_box(req.extensions().security_contexts().count());
                ok += 1;
            }
        }
        ok
    });
    assert_eq!(parsed, vectors.len(), "every golden vector parses");
    assert_eq!(
        n,
        0,
        "parsing {} golden vectors allocated {n} times",
        vectors.len()
    );
}

#[test]
fn encoding_and_parsing_requests_allocates_nothing() {
    let proto = Negotiated::new(45, InitFlags::SETXATTR_EXT | InitFlags::INIT_EXT);
    let write_in = abi::fuse_write_in {
        size: U32::new(5),
        ..Default::default()
    };
    let forgets = [
        abi::fuse_forget_one {
            nodeid: U64::new(2),
            nlookup: U64::new(1),
        },
        abi::fuse_forget_one {
            nodeid: U64::new(3),
            nlookup: U64::new(4),
        },
    ];
    let rename = abi::fuse_rename_in {
        newdir: U64::new(1),
    };
    let setxattr = abi::fuse_setxattr_in {
        size: U32::new(3),
        ..Default::default()
    };
    let create = abi::fuse_create_in {
        mode: U32::new(0o100644),
        ..Default::default()
    };
    let ops = [
        Operation::Lookup { name: b"name" },
        Operation::Write {
            arg: write_in,
            data: b"hello",
        },
        Operation::BatchForget { forgets: &forgets },
        Operation::Rename {
            arg: &rename,
            name: b"a",
            newname: b"b",
        },
        Operation::Setxattr {
            arg: setxattr,
            name: b"user.x",
            value: b"abc",
        },
        Operation::Create {
            arg: create,
            name: b"new",
        },
        Operation::Statfs,
    ];
    let groups = [4242u32];
    let ext = ExtensionArgs {
        security_contexts: Some(&[]),
        supp_groups: Some(&groups),
        raw: &[],
    };
    let header = HeaderFields {
        unique: 7,
        nodeid: 1,
        ..Default::default()
    };
    let mut buf = [0u8; 512];
    let (done, n) = allocations(|| {
        let mut done = 0;
        for op in &ops {
            let e = if matches!(op, Operation::Create { .. }) {
                &ext
            } else {
                &ExtensionArgs::NONE
            };
            let len = encode(&mut buf, &proto, &header, op, e).expect("encode");
            let req = parse(&buf[..len], &proto).expect("parse");
            assert_eq!(req.op(), op);
            done += 1;
        }
        done
    });
    assert_eq!(done, ops.len());
    assert_eq!(n, 0, "encoding and parsing requests allocated {n} times");
}

#[test]
fn encoding_replies_and_notifications_allocates_nothing() {
    let proto = Negotiated::new(45, InitFlags::EMPTY);
    let attr = Attr {
        ino: 2,
        size: 5,
        mode: 0o100644,
        nlink: 1,
        blksize: 4096,
        ..Default::default()
    };
    let entry = Entry {
        nodeid: 2,
        generation: 1,
        entry_valid: Duration::from_secs(1),
        attr_valid: Duration::from_secs(1),
        attr,
    };
    let open = reply::Open {
        fh: 9,
        ..Default::default()
    };
    let init = InitOut {
        major: 7,
        minor: 45,
        max_write: 1 << 17,
        max_pages: 32,
        flags: InitFlags::ASYNC_READ | InitFlags::INIT_EXT | InitFlags::HAS_RESEND,
        ..Default::default()
    };
    let statfs = reply::Statfs {
        blocks: 10,
        bsize: 4096,
        namelen: 255,
        ..Default::default()
    };
    let lock = FileLock {
        typ: 2,
        ..Default::default()
    };
    let statx = abi::fuse_statx::default();
    let nodeids = [2u64, 3, 4];
    let mut buf = [0u8; 4096];
    let (results, n) = allocations(|| {
        let u = 42;
        let r = [
            reply::error(&mut buf, u, 2),
            reply::empty(&mut buf, u),
            reply::data(&mut buf, u, b"some data"),
            reply::data_header(u, 9).map(|h| h.len()),
            reply::entry(&mut buf, u, &proto, &entry),
            reply::attr(&mut buf, u, &proto, Duration::from_secs(1), &attr),
            reply::statx(&mut buf, u, Duration::ZERO, 0, &statx),
            reply::open(&mut buf, u, &proto, &open),
            reply::create(&mut buf, u, &proto, &entry, &open),
            reply::write(&mut buf, u, 5),
            reply::copy_file_range(&mut buf, u, 5),
            reply::copy_file_range_64(&mut buf, u, 5),
            reply::statfs(&mut buf, u, &proto, &statfs),
            reply::xattr_size(&mut buf, u, 7),
            reply::lk(&mut buf, u, &lock),
            reply::bmap(&mut buf, u, 1),
            reply::poll(&mut buf, u, 1),
            reply::lseek(&mut buf, u, 0),
            reply::ioctl(&mut buf, u, 0, &[0; 4]),
            reply::init(&mut buf, u, 45, &init),
            notify::poll_wakeup(&mut buf, &proto, 1),
            notify::inval_inode(&mut buf, &proto, 2, 0, -1),
            notify::inval_entry(&mut buf, &proto, 1, b"name", RequestFlags::EMPTY),
            notify::delete(&mut buf, &proto, 1, 2, b"name"),
            notify::store(&mut buf, &proto, 2, 0, b"data"),
            notify::retrieve(&mut buf, &proto, 5, 2, 0, 4096),
            notify::resend(&mut buf, &proto),
            notify::inc_epoch(&mut buf, &proto),
            notify::prune(&mut buf, &proto, &nodeids),
        ];
        let mut dirs = DirentWriter::new(&mut buf, u, 4096).expect("dirent writer");
        let d = Dirent {
            ino: 2,
            off: 1,
            typ: 8,
            name: b"file",
        };
        assert!(matches!(dirs.push(&d), Ok(Push::Added)));
        let plain = dirs.finish();
        let mut plus = DirentWriter::new(&mut buf, u, 4096).expect("dirent writer");
        assert!(matches!(
            plus.push_plus(&DirentPlus { entry, dirent: d }),
            Ok(Push::Added)
        ));
        let plus = plus.finish();
        // Replies parse back without allocating either.
        let len = reply::entry(&mut buf, u, &proto, &entry).expect("entry");
        let parsed = reply::parse(&buf[..len], Opcode::LOOKUP, &proto).is_ok();
        (r, plain, plus, parsed)
    });
    let (r, plain, plus, parsed) = results;
    for (i, res) in r.iter().enumerate() {
        assert!(res.is_ok(), "encoder #{i}: {res:?}");
    }
    assert!(plain.is_ok() && plus.is_ok() && parsed);
    assert_eq!(n, 0, "encoding replies allocated {n} times");
}
