//! Replays the fuzz corpora (`fuzz/corpus/<target>/`) and any crash artifacts
//! (`fuzz/artifacts/<target>/`) through the same library functions the cargo-fuzz
//! targets call, so every input the fuzzers found interesting stays a regression
//! test under plain `cargo test` on stable, without libFuzzer.
//!
//! `write_seeds` (ignored) regenerates the hand-made seed files: golden request
//! vectors with selector bytes, and replies, notifications and listings made with
//! the crate's encoders. See `docs/FUZZING.md`.
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fuse_wire::fuzzing::{self, protocol_selector, PROTOCOLS};
use fuse_wire::reply::{
    self, Attr, CuseInitOut, Dirent, DirentPlus, DirentWriter, Entry, FileLock, InitOut,
    IoctlIovec, Open, Statfs, Timestamp,
};
use fuse_wire::{abi, notify, FopenFlags, InitFlags, Negotiated, Opcode, RequestFlags};
use zerocopy::FromZeros;

/// A fuzz target's library function.
type Target = fn(&[u8]);

/// The fuzz targets and the library function each one calls.
const TARGETS: [(&str, Target); 3] = [
    ("parse_request", fuzzing::parse_request),
    ("parse_reply_side", fuzzing::parse_reply_side),
    ("dirent", fuzzing::dirent),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The regular files of `dir`, sorted; empty if it does not exist.
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
        // A panic names the file in the test output.
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

#[test]
fn artifacts_replay() {
    // Crash inputs left by a fuzzing run (git-ignored); none is fine.
    for (name, f) in TARGETS {
        replay(&fuzz_dir().join("artifacts").join(name), f);
    }
}

// ---------------------------------------------------------------------------
// Seed generation
// ---------------------------------------------------------------------------

const PROTO_LATEST_ALL: u8 = protocol_selector(PROTOCOLS.len() - 1);
const PROTO_COMPAT: u8 = protocol_selector(0);

fn write_seed(target: &str, name: &str, prefix: &[u8], body: &[u8]) {
    let dir = fuzz_dir().join("corpus").join(target);
    fs::create_dir_all(&dir).unwrap();
    let mut data = prefix.to_vec();
    data.extend_from_slice(body);
    fs::write(dir.join(format!("seed-{name}")), data).unwrap();
}

fn sample_attr() -> Attr {
    Attr {
        ino: 5,
        size: 4096,
        blocks: 8,
        atime: Timestamp::new(1_700_000_000, 1),
        mtime: Timestamp::new(-1, 999_999_999),
        ctime: Timestamp::new(0, 0),
        mode: 0o100644,
        nlink: 1,
        uid: 1000,
        gid: 1000,
        rdev: 0,
        blksize: 4096,
        ..Default::default()
    }
}

fn sample_entry() -> Entry {
    Entry {
        nodeid: 5,
        generation: 1,
        entry_valid: Duration::new(3600, 0),
        attr_valid: Duration::new(1, 500),
        attr: sample_attr(),
    }
}

/// Regenerates the hand-made seeds (run with `--ignored`, then minimise with
/// `cargo fuzz cmin`).
#[test]
#[ignore = "writes seed files into fuzz/corpus; run by hand"]
fn write_seeds() {
    // parse_request: every golden request under three protocols.
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/linux-6.18");
    let golden_files: Vec<PathBuf> = files(&golden)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    for p in &golden_files {
        let bytes = fs::read(p).unwrap();
        let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
        for sel in [PROTO_COMPAT, protocol_selector(4), PROTO_LATEST_ALL] {
            write_seed("parse_request", &format!("{stem}-p{sel}"), &[sel], &bytes);
        }
        // parse_reply_side mode 2 (NOTIFY_REPLY request) from the golden one.
        if stem.ends_with("NOTIFY_REPLY") {
            write_seed("parse_reply_side", &stem, &[2, PROTO_LATEST_ALL, 0], &bytes);
        }
    }

    // parse_reply_side mode 1: replies from the encoders.
    let p = Negotiated::new(45, InitFlags(u64::MAX));
    let u = 0x8000_0000_0000_0042; // a resent request's unique
    let mut buf = vec![0u8; 8192];
    let reply_seed = |name: &str, op: Opcode, mode: u8, n: usize, buf: &[u8]| {
        let op = if op == Opcode::CUSE_INIT {
            0xff
        } else {
            op.0 as u8
        };
        write_seed(
            "parse_reply_side",
            name,
            &[mode, PROTO_LATEST_ALL, op],
            &buf[..n],
        );
    };
    let n = reply::error(&mut buf, u, 2).unwrap();
    reply_seed("reply-error", Opcode::LOOKUP, 1, n, &buf);
    let n = reply::empty(&mut buf, u).unwrap();
    reply_seed("reply-empty", Opcode::SETXATTR, 1, n, &buf);
    let n = reply::entry(&mut buf, u, &p, &sample_entry()).unwrap();
    reply_seed("reply-entry", Opcode::LOOKUP, 1, n, &buf);
    let n = reply::attr(&mut buf, u, &p, Duration::new(1, 2), &sample_attr()).unwrap();
    reply_seed("reply-attr", Opcode::GETATTR, 1, n, &buf);
    let mut stat = abi::fuse_statx::new_zeroed();
    stat.mask.set(0x7ff);
    let n = reply::statx(&mut buf, u, Duration::new(1, 0), 0, &stat).unwrap();
    reply_seed("reply-statx", Opcode::STATX, 1, n, &buf);
    let open = Open {
        fh: 9,
        flags: FopenFlags::KEEP_CACHE,
        backing_id: 0,
    };
    let n = reply::open(&mut buf, u, &p, &open).unwrap();
    reply_seed("reply-open", Opcode::OPEN, 1, n, &buf);
    let n = reply::create(&mut buf, u, &p, &sample_entry(), &open).unwrap();
    reply_seed("reply-create", Opcode::CREATE, 1, n, &buf);
    let n = reply::write(&mut buf, u, 4096).unwrap();
    reply_seed("reply-write", Opcode::WRITE, 1, n, &buf);
    let st = Statfs {
        blocks: 100,
        bfree: 50,
        bavail: 40,
        files: 10,
        ffree: 5,
        bsize: 4096,
        namelen: 255,
        frsize: 4096,
    };
    let n = reply::statfs(&mut buf, u, &p, &st).unwrap();
    reply_seed("reply-statfs", Opcode::STATFS, 1, n, &buf);
    let n = reply::data(&mut buf, u, b"hello, world\n").unwrap();
    reply_seed("reply-data", Opcode::READ, 1, n, &buf);
    let n = reply::xattr_size(&mut buf, u, 12).unwrap();
    reply_seed("reply-xattr-size", Opcode::GETXATTR, 0x80 | 1, n, &buf);
    let lock = FileLock {
        start: 0,
        end: u64::MAX,
        typ: 1,
        pid: 42,
    };
    let n = reply::lk(&mut buf, u, &lock).unwrap();
    reply_seed("reply-lk", Opcode::GETLK, 1, n, &buf);
    let n = reply::bmap(&mut buf, u, 77).unwrap();
    reply_seed("reply-bmap", Opcode::BMAP, 1, n, &buf);
    let n = reply::ioctl(&mut buf, u, 0, b"\x01\x02\x03\x04").unwrap();
    reply_seed("reply-ioctl", Opcode::IOCTL, 1, n, &buf);
    let iov = IoctlIovec {
        base: 0x7fff_0000,
        len: 16,
    };
    let n = reply::ioctl_retry(&mut buf, u, &p, &[iov], &[iov, iov]).unwrap();
    reply_seed("reply-ioctl-retry", Opcode::IOCTL, 1, n, &buf);
    let n = reply::poll(&mut buf, u, 1).unwrap();
    reply_seed("reply-poll", Opcode::POLL, 1, n, &buf);
    let n = reply::lseek(&mut buf, u, 8192).unwrap();
    reply_seed("reply-lseek", Opcode::LSEEK, 1, n, &buf);
    let n = reply::copy_file_range_64(&mut buf, u, 1 << 33).unwrap();
    reply_seed("reply-cfr64", Opcode::COPY_FILE_RANGE_64, 1, n, &buf);
    for (i, kernel_minor) in [4u32, 22, 45].into_iter().enumerate() {
        let out = InitOut {
            major: 7,
            minor: 45,
            max_readahead: 1 << 17,
            flags: InitFlags::ASYNC_READ | InitFlags::INIT_EXT | InitFlags::HAS_RESEND,
            max_write: 1 << 17,
            max_pages: 32,
            ..Default::default()
        };
        let n = reply::init(&mut buf, u, kernel_minor, &out).unwrap();
        reply_seed(&format!("reply-init-{i}"), Opcode::INIT, 1, n, &buf);
    }
    let cuse = CuseInitOut {
        major: 7,
        minor: 45,
        max_read: 4096,
        max_write: 4096,
        ..Default::default()
    };
    let n = reply::cuse_init(&mut buf, u, &cuse, &["DEVNAME=fuzz", "X=1"]).unwrap();
    reply_seed("reply-cuse-init", Opcode::CUSE_INIT, 1, n, &buf);
    let n = reply::data(&mut buf, u, b"opaque").unwrap();
    reply_seed("reply-unknown", Opcode(99), 1, n, &buf);
    {
        let mut w = DirentWriter::new(&mut buf, u, 4096).unwrap();
        for (i, name) in [&b"."[..], b"..", b"a.txt", b"longer-name-0123456789"]
            .into_iter()
            .enumerate()
        {
            let d = Dirent {
                ino: i as u64 + 1,
                off: i as u64 + 1,
                typ: 8,
                name,
            };
            let _ = w.push(&d).unwrap();
        }
        let n = w.finish().unwrap();
        reply_seed("reply-readdir", Opcode::READDIR, 1, n, &buf);
    }
    {
        let mut w = DirentWriter::new(&mut buf, u, 4096).unwrap();
        for (i, name) in [&b"x"[..], b"yy"].into_iter().enumerate() {
            let d = DirentPlus {
                entry: sample_entry(),
                dirent: Dirent {
                    ino: 5,
                    off: i as u64 + 1,
                    typ: 4,
                    name,
                },
            };
            let _ = w.push_plus(&d).unwrap();
        }
        let n = w.finish().unwrap();
        reply_seed("reply-readdirplus", Opcode::READDIRPLUS, 1, n, &buf);
    }
    // Compat layouts (7.8): entry and attr replies.
    let old = PROTOCOLS[usize::from(PROTO_COMPAT)];
    let n = reply::entry(&mut buf, u, &old, &sample_entry()).unwrap();
    write_seed(
        "parse_reply_side",
        "reply-entry-compat",
        &[1, PROTO_COMPAT, Opcode::LOOKUP.0 as u8],
        &buf[..n],
    );

    // parse_reply_side mode 0: notifications.
    let notif = |name: &str, n: usize, buf: &[u8]| {
        write_seed(
            "parse_reply_side",
            name,
            &[0, PROTO_LATEST_ALL, 0],
            &buf[..n],
        );
    };
    let n = notify::poll_wakeup(&mut buf, &p, 3).unwrap();
    notif("notify-poll", n, &buf);
    let n = notify::inval_inode(&mut buf, &p, 5, 0, -1).unwrap();
    notif("notify-inval-inode", n, &buf);
    let n = notify::inval_entry(&mut buf, &p, 1, b"name", RequestFlags::EMPTY).unwrap();
    notif("notify-inval-entry", n, &buf);
    let n = notify::store(&mut buf, &p, 5, 4096, b"data").unwrap();
    notif("notify-store", n, &buf);
    let n = notify::retrieve(&mut buf, &p, 77, 5, 0, 4096).unwrap();
    notif("notify-retrieve", n, &buf);
    let n = notify::delete(&mut buf, &p, 1, 5, b"gone").unwrap();
    notif("notify-delete", n, &buf);
    let n = notify::resend(&mut buf, &p).unwrap();
    notif("notify-resend", n, &buf);
    let n = notify::inc_epoch(&mut buf, &p).unwrap();
    notif("notify-inc-epoch", n, &buf);
    let n = notify::prune(&mut buf, &p, &[5, 6, 7]).unwrap();
    notif("notify-prune", n, &buf);

    // dirent: [flags, buffer len, max_size] + entries [name len, ino, type] ++ name.
    let entries: &[u8] = b"\x01\x01\x04.\x02\x01\x04..\x05\x07\x08a.txt\x03\x08\x08a/b";
    for (i, (flags, buf_len, max)) in [
        (0u8, 4096u16, 4096u16),
        (1, 4096, 4096),
        (0, 80, 4096),
        (1, 4096, 200),
        (2, 4096, 4096),
        (3, 4096, 4096),
        (4, 4096, 4096),
    ]
    .into_iter()
    .enumerate()
    {
        let mut head = vec![flags];
        head.extend_from_slice(&buf_len.to_le_bytes());
        head.extend_from_slice(&max.to_le_bytes());
        write_seed("dirent", &format!("listing-{i}"), &head, entries);
    }
}
