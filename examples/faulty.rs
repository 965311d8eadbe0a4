//! A filesystem with bugs: some of its methods panic. It shows (and the tests in
//! `tests/panics.rs` check) that a panic in a filesystem method is answered `EIO`
//! to the one caller while the mount keeps serving everyone else, and that the
//! daemon still unmounts and exits on SIGTERM.
//!
//! ```text
//! cargo run --example faulty -- MOUNTPOINT [--threads N] [--uring]
//! ```
//! The tree: `file` (readable, writable), `dir` (an empty directory), and traps:
//! looking up any name that starts with `panic`, reading or writing `boomfile`,
//! listing `boomdir`, and removing the directory `boom` panic. Prints
//! `ready MOUNTPOINT` once the mount serves, runs until it is unmounted or gets
//! SIGINT/SIGTERM (then it unmounts), and exits 0.
use std::ffi::OsStr;
use std::time::Duration;

use fuse_session::dev::MountOptions;
use fuse_session::serve::{Server, UringOptions};
use fuse_session::{
    AttrReply, DirEntries, Entry, Errno, FileAttr, FileType, Filesystem, Opened, ReadBuf,
    RequestContext, Result,
};
use fuse_session::{FuseOpenFlags, OpenFlags, WriteFlags};

const TEXT: &[u8] = b"all is well\n";
const TTL: Duration = Duration::ZERO;

/// Nodes are inode numbers.
const ROOT: u64 = 1;
const FILE: u64 = 2;
const BOOMFILE: u64 = 3;
const DIR: u64 = 4;
const BOOMDIR: u64 = 5;
const BOOM: u64 = 6;

const NAMES: [(&str, u64); 5] = [
    ("file", FILE),
    ("boomfile", BOOMFILE),
    ("dir", DIR),
    ("boomdir", BOOMDIR),
    ("boom", BOOM),
];

struct Faulty;

fn attr(ino: u64) -> FileAttr {
    match ino {
        FILE | BOOMFILE => FileAttr {
            size: TEXT.len() as u64,
            blocks: 1,
            ..FileAttr::new(ino, FileType::RegularFile, 0o666)
        },
        _ => FileAttr {
            nlink: 2,
            ..FileAttr::new(ino, FileType::Directory, 0o777)
        },
    }
}

impl Filesystem for Faulty {
    type Node = u64;
    type Handle = ();

    fn root(&self) -> u64 {
        ROOT
    }

    fn lookup(&self, _: &RequestContext<'_>, parent: &u64, name: &OsStr) -> Result<Entry<u64>> {
        let name = name.to_str().ok_or(Errno::ENOENT)?;
        if name.starts_with("panic") {
            panic!("faulty: lookup of {name:?}");
        }
        match NAMES.iter().find(|(n, _)| *n == name) {
            Some(&(_, node)) if *parent == ROOT => Ok(Entry {
                node,
                attr: attr(node),
                entry_ttl: TTL,
                attr_ttl: TTL,
            }),
            _ => Err(Errno::ENOENT),
        }
    }

    fn getattr(&self, _: &RequestContext<'_>, node: &u64, _: Option<&()>) -> Result<AttrReply> {
        Ok(AttrReply {
            attr: attr(*node),
            ttl: TTL,
        })
    }

    fn open(
        &self,
        _: &RequestContext<'_>,
        _: &u64,
        _: OpenFlags,
        _: FuseOpenFlags,
    ) -> Result<Opened<()>> {
        Ok(Opened::new(()))
    }

    fn read<'r>(
        &'r self,
        _: &RequestContext<'_>,
        node: &u64,
        _: &(),
        offset: u64,
        _: u32,
        _: OpenFlags,
        _: Option<u64>,
        out: &mut ReadBuf<'r, '_>,
    ) -> Result<()> {
        if *node == BOOMFILE {
            panic!("faulty: read of boomfile");
        }
        let start = (offset as usize).min(TEXT.len());
        out.set(&TEXT[start..]);
        Ok(())
    }

    fn write(
        &self,
        _: &RequestContext<'_>,
        node: &u64,
        _: &(),
        _: u64,
        data: &[u8],
        _: WriteFlags,
        _: OpenFlags,
    ) -> Result<u32> {
        if *node == BOOMFILE {
            panic!("faulty: write to boomfile");
        }
        // Accepted and forgotten.
        Ok(data.len() as u32)
    }

    fn opendir(&self, _: &RequestContext<'_>, _: &u64, _: i32) -> Result<Opened<()>> {
        Ok(Opened::new(()))
    }

    fn readdir(
        &self,
        _: &RequestContext<'_>,
        node: &u64,
        _: &(),
        offset: u64,
        out: &mut DirEntries<'_>,
    ) -> Result<()> {
        if *node == BOOMDIR {
            panic!("faulty: readdir of boomdir");
        }
        let mut list = vec![
            (ROOT, FileType::Directory, "."),
            (ROOT, FileType::Directory, ".."),
        ];
        if *node == ROOT {
            list.extend(NAMES.iter().map(|&(n, i)| (i, attr(i).kind, n)));
        }
        for (i, (ino, kind, name)) in list.iter().enumerate().skip(offset as usize) {
            if out
                .push(*ino, i as u64 + 1, *kind, OsStr::new(name))
                .is_err()
            {
                break;
            }
        }
        Ok(())
    }

    fn rmdir(&self, _: &RequestContext<'_>, _: &u64, name: &OsStr) -> Result<()> {
        if name == "boom" {
            panic!("faulty: rmdir of boom");
        }
        Err(Errno::EPERM)
    }
}

fn usage() -> ! {
    eprintln!("usage: faulty MOUNTPOINT [--threads N] [--uring]");
    std::process::exit(2);
}

fn main() {
    // Before any thread starts and before `ready` is printed: a SIGTERM sent right
    // after `ready` must reach run_until_signal, not the default action.
    fuse_session::serve::block_termination_signals();
    let mut args = std::env::args().skip(1);
    let mut mountpoint = None;
    let mut threads = 1;
    let mut uring = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--threads" => {
                threads = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .unwrap_or_else(|| usage())
            }
            "--uring" => uring = true,
            _ if a.starts_with('-') || mountpoint.is_some() => usage(),
            _ => mountpoint = Some(std::path::PathBuf::from(a)),
        }
    }
    let Some(mountpoint) = mountpoint else {
        usage()
    };
    let opts = MountOptions::new()
        .fsname("faulty")
        .subtype("faulty")
        .default_permissions(true);
    let result = Server::mount(Faulty, &mountpoint, &opts)
        .and_then(|server| {
            if uring {
                let mut o = UringOptions::default();
                o.fallback_threads = threads;
                server.spawn_uring(&o)
            } else {
                server.spawn(threads)
            }
        })
        .and_then(|running| {
            println!("ready {}", mountpoint.display());
            use std::io::Write;
            let _ = std::io::stdout().flush();
            running.run_until_signal()
        });
    if let Err(e) = result {
        eprintln!("faulty: {e}");
        std::process::exit(1);
    }
}
