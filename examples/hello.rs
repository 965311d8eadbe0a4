//! The smallest complete fuse-live filesystem: a read-only directory holding one
//! file, `hello`, that says hello.
//!
//! ```text
//! cargo run --release --example hello -- MOUNTPOINT [--threads N] [--allow-other]
//! ```
//! Prints `ready MOUNTPOINT` once the mount serves, runs until it is unmounted or
//! gets SIGINT/SIGTERM (then it unmounts), and exits 0.
use std::ffi::OsStr;
use std::time::Duration;

use fuse_live::{
    AttrReply, DirEntries, Entry, Errno, FileAttr, FileType, Filesystem, FuseOpenFlags,
    MountOptions, OpenFlags, Opened, ReadBuf, RequestContext, Result, Server,
};

const TEXT: &[u8] = b"Hello, world!\n";
const TTL: Duration = Duration::from_secs(1);

struct Hello;

/// Nodes are inode numbers: 1 is the root, 2 the file.
fn attr(ino: u64) -> FileAttr {
    if ino == 1 {
        FileAttr::new(1, FileType::Directory, 0o555)
    } else {
        let size = TEXT.len() as u64;
        FileAttr {
            size,
            blocks: size.div_ceil(512),
            ..FileAttr::new(ino, FileType::RegularFile, 0o444)
        }
    }
}

impl Filesystem for Hello {
    type Node = u64;
    type Handle = ();

    fn root(&self) -> u64 {
        1
    }

    fn lookup(&self, _: &RequestContext<'_>, parent: &u64, name: &OsStr) -> Result<Entry<u64>> {
        if *parent == 1 && name == "hello" {
            Ok(Entry {
                node: 2,
                attr: attr(2),
                entry_ttl: TTL,
                attr_ttl: TTL,
            })
        } else {
            Err(Errno::ENOENT)
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
        node: &u64,
        flags: OpenFlags,
        _: FuseOpenFlags,
    ) -> Result<Opened<()>> {
        if *node != 2 {
            return Err(Errno::EISDIR);
        }
        if flags.access_mode() != OpenFlags::RDONLY {
            return Err(Errno::EROFS);
        }
        Ok(Opened::new(()))
    }

    fn read<'r>(
        &'r self,
        _: &RequestContext<'_>,
        _: &u64,
        _: &(),
        offset: u64,
        _size: u32,
        _: OpenFlags,
        _: Option<u64>,
        out: &mut ReadBuf<'r, '_>,
    ) -> Result<()> {
        let start = (offset as usize).min(TEXT.len());
        out.set(&TEXT[start..]);
        Ok(())
    }

    fn opendir(&self, _: &RequestContext<'_>, node: &u64, _: i32) -> Result<Opened<()>> {
        if *node == 1 {
            Ok(Opened::new(()))
        } else {
            Err(Errno::ENOTDIR)
        }
    }

    fn readdir(
        &self,
        _: &RequestContext<'_>,
        _: &u64,
        _: &(),
        offset: u64,
        out: &mut DirEntries<'_>,
    ) -> Result<()> {
        let entries = [
            (1, FileType::Directory, "."),
            (1, FileType::Directory, ".."),
            (2, FileType::RegularFile, "hello"),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if out
                .push(*ino, i as u64 + 1, *kind, OsStr::new(name))
                .is_err()
            {
                break;
            }
        }
        Ok(())
    }
}

fn usage() -> ! {
    eprintln!("usage: hello MOUNTPOINT [--threads N] [--allow-other]");
    std::process::exit(2)
}

fn main() {
    // Before any thread starts and before `ready` is printed: a SIGTERM sent right
    // after `ready` must reach run_until_signal, not the default action.
    fuse_live::block_termination_signals();
    let mut args = std::env::args().skip(1);
    let mut mountpoint = None;
    let mut threads = 1;
    let mut allow_other = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--threads" => {
                threads = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .unwrap_or_else(|| usage())
            }
            "--allow-other" => allow_other = true,
            _ if a.starts_with('-') || mountpoint.is_some() => usage(),
            _ => mountpoint = Some(std::path::PathBuf::from(a)),
        }
    }
    let Some(mountpoint) = mountpoint else {
        usage()
    };
    let opts = MountOptions::new()
        .fsname("hello")
        .subtype("hello")
        .read_only(true)
        .default_permissions(true)
        .allow_other(allow_other);
    let result = Server::mount(Hello, &mountpoint, &opts)
        .and_then(|server| server.spawn(threads))
        .and_then(|running| {
            println!("ready {}", mountpoint.display());
            use std::io::Write;
            let _ = std::io::stdout().flush();
            running.run_until_signal()
        });
    if let Err(e) = result {
        eprintln!("hello: {e}");
        std::process::exit(1);
    }
}
