//! The typed flags reach the filesystem as the kernel sent them: OPEN's FUSE
//! `open_flags`, READ's open flags and lock owner (only with `FUSE_READ_LOCKOWNER`),
//! WRITE's flags, RENAME2's flags, ACCESS's mask; and the invalid id of an idmapped
//! mount is no caller.
use std::ffi::OsStr;
use std::sync::Mutex;
use std::time::Duration;

use fuse_session::fake::FakeKernel;
use fuse_session::*;
use fuse_wire::request::Operation;
use fuse_wire::{abi, InitFlags};
use zerocopy::byteorder::native_endian::{U32, U64};

#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<String>>,
}

impl Recorder {
    fn note(&self, s: String) {
        self.seen.lock().unwrap().push(s);
    }
}

impl Filesystem for Recorder {
    type Node = u64;
    type Handle = u64;
    fn root(&self) -> u64 {
        1
    }
    fn lookup(&self, _: &RequestContext<'_>, _: &u64, _: &OsStr) -> Result<Entry<u64>> {
        Ok(Entry {
            node: 2,
            attr: FileAttr::new(2, FileType::RegularFile, 0o644),
            entry_ttl: Duration::ZERO,
            attr_ttl: Duration::ZERO,
        })
    }
    fn open(
        &self,
        _: &RequestContext<'_>,
        _: &u64,
        flags: OpenFlags,
        open_flags: FuseOpenFlags,
    ) -> Result<Opened<u64>> {
        self.note(format!("open {flags:?} {open_flags:?}"));
        Ok(Opened::new(0))
    }
    fn read<'r>(
        &'r self,
        ctx: &RequestContext<'_>,
        _: &u64,
        _: &u64,
        _: u64,
        _: u32,
        flags: OpenFlags,
        lock_owner: Option<u64>,
        _: &mut ReadBuf<'r, '_>,
    ) -> Result<()> {
        self.note(format!("read {flags:?} {lock_owner:?} {:?}", ctx.uid));
        Ok(())
    }
    fn write(
        &self,
        _: &RequestContext<'_>,
        _: &u64,
        _: &u64,
        _: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
    ) -> Result<u32> {
        self.note(format!("write {write_flags:?} {flags:?}"));
        Ok(data.len() as u32)
    }
    fn rename(
        &self,
        _: &RequestContext<'_>,
        _: &u64,
        _: &OsStr,
        _: &u64,
        _: &OsStr,
        flags: RenameFlags,
    ) -> Result<()> {
        self.note(format!("rename {flags:?}"));
        Ok(())
    }
    fn access(&self, _: &RequestContext<'_>, _: &u64, mask: AccessMask) -> Result<()> {
        self.note(format!("access {mask:?}"));
        Ok(())
    }
}

#[test]
fn flags_reach_the_filesystem_typed() {
    let mut k = FakeKernel::new(Recorder::default());
    k.init(45, InitFlags::ASYNC_READ | InitFlags::INIT_EXT);
    k.lookup(1, b"f").unwrap();
    let open = abi::fuse_open_in {
        flags: U32::new((nix::libc::O_RDWR | nix::libc::O_APPEND) as u32),
        open_flags: U32::new(1),
    };
    assert_eq!(k.status(2, &Operation::Open { arg: &open }), 0);
    let fh = 1;
    let read = |read_flags: u32| abi::fuse_read_in {
        fh: U64::new(fh),
        size: U32::new(8),
        read_flags: U32::new(read_flags),
        lock_owner: U64::new(77),
        flags: U32::new(nix::libc::O_RDONLY as u32),
        ..Default::default()
    };
    // With FUSE_READ_LOCKOWNER the owner is given; without it, the field is noise.
    assert_eq!(k.status(2, &Operation::Read { arg: read(2) }), 0);
    assert_eq!(k.status(2, &Operation::Read { arg: read(0) }), 0);
    let write = abi::fuse_write_in {
        fh: U64::new(fh),
        size: U32::new(1),
        write_flags: U32::new(4),
        flags: U32::new(nix::libc::O_WRONLY as u32),
        ..Default::default()
    };
    assert_eq!(
        k.status(
            2,
            &Operation::Write {
                arg: write,
                data: b"x"
            }
        ),
        0
    );
    let rename = abi::fuse_rename2_in {
        newdir: U64::new(1),
        flags: U32::new(nix::libc::RENAME_NOREPLACE),
        ..Default::default()
    };
    assert_eq!(
        k.status(
            1,
            &Operation::Rename2 {
                arg: &rename,
                name: b"f",
                newname: b"g"
            }
        ),
        0
    );
    let access = abi::fuse_access_in {
        mask: U32::new(6),
        ..Default::default()
    };
    assert_eq!(k.status(2, &Operation::Access { arg: &access }), 0);
    let seen = k.session().filesystem().seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            format!(
                "open {:?} {:?}",
                OpenFlags::RDWR | OpenFlags::APPEND,
                FuseOpenFlags::KILL_SUIDGID
            ),
            format!("read {:?} Some(77) Some(0)", OpenFlags::RDONLY),
            format!("read {:?} None Some(0)", OpenFlags::RDONLY),
            format!(
                "write {:?} {:?}",
                WriteFlags::KILL_SUIDGID,
                OpenFlags::WRONLY
            ),
            format!("rename {:?}", RenameFlags::NOREPLACE),
            format!("access {:?}", AccessMask::READ | AccessMask::WRITE),
        ]
    );
}
