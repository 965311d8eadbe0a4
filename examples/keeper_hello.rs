//! A read-only filesystem with one file, `hello`, that recovers its mount after a
//! crash through the fd store (`fuse-live-keeper` or systemd) — "checkpoint only"
//! recovery, for the tests (tests/keeper.rs) and as the smallest example of the
//! protocol.
//!
//! ```text
//! fuse-live-keeper -- keeper_hello MOUNTPOINT CHECKPOINT_FILE
//! ```
//!
//! First start: mounts, serves, saves the session (negotiated INIT, nodeids) to
//! `CHECKPOINT_FILE`, stores the `/dev/fuse` descriptor in the fd store, says
//! `READY=1` and prints `ready MOUNTPOINT`. A start that finds the `/dev/fuse`
//! descriptor in `LISTEN_FDS` recovers instead: it restores the session from the
//! checkpoint onto that descriptor (the kernel sends no second INIT) and serves the
//! same connection, then prints `ready MOUNTPOINT` again. SIGTERM or SIGINT:
//! `STOPPING=1`, unmount, exit 0.
//!
//! The checkpoint is taken once, after INIT: what the session learns later
//! (nodeids the kernel looked up, open handles) is not in it, so a crash loses it.
//! The journal is what closes that gap; this example shows the fd store alone.
use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fuse_session::dev::fdstore::FdStore;
use fuse_session::dev::MountOptions;
use fuse_session::serve::{Running, Server};
use fuse_session::{
    AttrReply, DirEntries, Entry, Errno, FileAttr, FileType, Filesystem, Opened, ReadBuf,
    RequestContext, Result,
};
use fuse_session::{FuseOpenFlags, OpenFlags};
use fuse_snapshot::{FdRestorer, FdSaver, SnapshotFs};

const TEXT: &[u8] = b"Hello from a daemon that survives SIGKILL!\n";
const TTL: Duration = Duration::from_secs(1);

struct Hello;

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
        _flags: OpenFlags,
        _: FuseOpenFlags,
    ) -> Result<Opened<()>> {
        if *node == 2 {
            Ok(Opened::new(()))
        } else {
            Err(Errno::EISDIR)
        }
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
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(TEXT.len());
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

impl SnapshotFs for Hello {
    type State = ();

    fn save(&self, _: &mut FdSaver) -> std::io::Result<()> {
        Ok(())
    }

    fn restore(_: (), _: &mut FdRestorer) -> std::result::Result<Hello, String> {
        Ok(Hello)
    }

    fn check_session(
        &self,
        nodes: &[fuse_session::NodeState<u64>],
        _: &[fuse_session::HandleState<()>],
    ) -> std::result::Result<(), String> {
        match nodes.iter().find(|n| n.node != 1 && n.node != 2) {
            Some(n) => Err(format!("node {} is not a node of this filesystem", n.node)),
            None => Ok(()),
        }
    }
}

fn run(mountpoint: &Path, checkpoint: &Path) -> std::result::Result<(), String> {
    let mut store = FdStore::from_env().map_err(|e| e.to_string())?;
    let running: Running<Hello> = match store.take_mount(mountpoint).map_err(|e| e.to_string())? {
        Some(mount) => {
            let bytes = fuse_snapshot::load_file(checkpoint)
                .map_err(|e| format!("read the checkpoint {}: {e}", checkpoint.display()))?;
            let session = fuse_snapshot::restore::<Hello>(&bytes, &mut FdRestorer::empty())
                .map_err(|e| format!("restore the checkpoint: {e}"))?;
            let resend = session.snapshot().is_some_and(|s| s.kernel_has_resend());
            let running = Server::from_parts(session, mount)
                .spawn(1)
                .map_err(|e| e.to_string())?;
            // Requests the dead daemon read but did not answer are stuck in the
            // kernel's processing list: ask for them again (all of this
            // filesystem's requests are idempotent; a journal is what makes the
            // others safe).
            if resend {
                running
                    .notifier()
                    .resend()
                    .map_err(|e| format!("NOTIFY_RESEND: {e}"))?;
            }
            eprintln!(
                "keeper_hello: recovered the mount on connection {:?}",
                running.with_mount(|m| m.connection_id()).flatten()
            );
            running
        }
        None => {
            let opts = MountOptions::new()
                .fsname("keeper_hello")
                .subtype("keeper_hello")
                .read_only(true);
            let running = Server::mount(Hello, mountpoint, &opts)
                .and_then(|s| s.spawn(1))
                .map_err(|e| e.to_string())?;
            // Paused: no request in flight, the tables are one moment's.
            let bytes = {
                let _paused = running.pause();
                fuse_snapshot::snapshot(running.session(), &mut FdSaver::new())
                    .map_err(|e| format!("checkpoint: {e}"))?
            };
            fuse_snapshot::save_file(checkpoint, &bytes)
                .map_err(|e| format!("write the checkpoint {}: {e}", checkpoint.display()))?;
            running
                .with_mount(|m| store.store_mount(m))
                .transpose()
                .map_err(|e| e.to_string())?;
            running
        }
    };
    store.ready().map_err(|e| e.to_string())?;
    println!("ready {}", mountpoint.display());
    let _ = std::io::stdout().flush();
    let served = running.run_until_signal().map_err(|e| e.to_string());
    let _ = store.stopping();
    served
}

fn main() {
    fuse_session::serve::block_termination_signals();
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [mountpoint, checkpoint] = args.as_slice() else {
        eprintln!("usage: keeper_hello MOUNTPOINT CHECKPOINT_FILE");
        std::process::exit(2)
    };
    if let Err(e) = run(mountpoint, checkpoint) {
        eprintln!("keeper_hello: {e}");
        std::process::exit(1);
    }
}
