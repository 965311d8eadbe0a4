//! Porting pitfalls, on real kernel mounts: a filesystem written the way a port of
//! fuser's `simple.rs` would be (an `open` that ignores `O_TRUNC`, a readdir loop)
//! must be correct with the library's defaults, and what a filesystem asks of INIT
//! must be visible and enforceable.
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use fuse_session::dev::fusectl::Watchdog;
use fuse_session::dev::MountOptions;
use fuse_session::serve::{ServeError, Server};
use fuse_session::wire::InitFlags;
use fuse_session::*;

mod common;
use common::{as_user, can_mount, errno_of, is_fuse_mounted, nobody, temp_dir, WATCHDOG};

const EXISTING: u64 = 2;

/// What the filesystem saw, for the assertions.
#[derive(Default)]
struct Seen {
    opens: Vec<(OpenFlags, FuseOpenFlags)>,
    truncates: Vec<u64>,
    reads: Vec<OpenFlags>,
    offered: Option<InitFlags>,
}

/// A file: name, data, permissions.
type File = (String, Vec<u8>, u16);

/// A literal port: `open` ignores its flags, `setattr` applies a size, files live in a
/// map. Entries `f0..f{n}` exist besides `existing` so a listing spans READDIRs.
struct Ported {
    wishes: Option<InitWishes>,
    files: Mutex<BTreeMap<u64, File>>,
    seen: Mutex<Seen>,
}

impl Ported {
    fn new(extra: u64, wishes: Option<InitWishes>) -> Ported {
        let mut files = BTreeMap::new();
        files.insert(
            EXISTING,
            ("existing".to_string(), b"hello world\n".to_vec(), 0o4777),
        );
        for i in 0..extra {
            files.insert(3 + i, (format!("f{i}"), Vec::new(), 0o644));
        }
        Ported {
            wishes,
            files: Mutex::new(files),
            seen: Mutex::new(Seen::default()),
        }
    }

    fn attr(&self, ino: u64) -> Result<FileAttr> {
        if ino == 1 {
            return Ok(FileAttr::new(1, FileType::Directory, 0o755));
        }
        let files = self.files.lock().unwrap();
        let (_, data, mode) = files.get(&ino).ok_or(Errno::ENOENT)?;
        Ok(FileAttr {
            size: data.len() as u64,
            ..FileAttr::new(ino, FileType::RegularFile, *mode)
        })
    }
}

fn ttl() -> Duration {
    Duration::from_secs(1)
}

impl Filesystem for Ported {
    type Node = u64;
    type Handle = ();

    fn root(&self) -> u64 {
        1
    }

    fn init(&self, wishes: &mut InitWishes) -> Result<()> {
        let offered = wishes.offered;
        if let Some(w) = self.wishes {
            *wishes = w;
        }
        self.seen.lock().unwrap().offered = Some(offered);
        Ok(())
    }

    fn lookup(&self, _: &RequestContext<'_>, parent: &u64, name: &OsStr) -> Result<Entry<u64>> {
        if *parent != 1 {
            return Err(Errno::ENOENT);
        }
        let ino = {
            let files = self.files.lock().unwrap();
            files
                .iter()
                .find(|(_, (n, _, _))| n.as_bytes() == name.as_bytes())
                .map(|(i, _)| *i)
                .ok_or(Errno::ENOENT)?
        };
        Ok(Entry {
            node: ino,
            attr: self.attr(ino)?,
            entry_ttl: ttl(),
            attr_ttl: ttl(),
        })
    }

    fn getattr(&self, _: &RequestContext<'_>, node: &u64, _: Option<&()>) -> Result<AttrReply> {
        Ok(AttrReply {
            attr: self.attr(*node)?,
            ttl: ttl(),
        })
    }

    fn setattr(
        &self,
        _: &RequestContext<'_>,
        node: &u64,
        _: Option<&()>,
        set: &SetAttr,
    ) -> Result<AttrReply> {
        if let Some(size) = set.size {
            let mut files = self.files.lock().unwrap();
            let (_, data, _) = files.get_mut(node).ok_or(Errno::ENOENT)?;
            data.resize(size as usize, 0);
            self.seen.lock().unwrap().truncates.push(size);
        }
        self.getattr(&RequestContext::new(0, 0, 0, 0), node, None)
    }

    // The port's `open`: it ignores the flags (fuser's simple.rs style), recording
    // them only for the test.
    fn open(
        &self,
        _: &RequestContext<'_>,
        _: &u64,
        flags: OpenFlags,
        open_flags: FuseOpenFlags,
    ) -> Result<Opened<()>> {
        self.seen.lock().unwrap().opens.push((flags, open_flags));
        Ok(Opened::new(()))
    }

    fn read<'r>(
        &'r self,
        _: &RequestContext<'_>,
        node: &u64,
        _: &(),
        offset: u64,
        size: u32,
        flags: OpenFlags,
        _: Option<u64>,
        out: &mut ReadBuf<'r, '_>,
    ) -> Result<()> {
        self.seen.lock().unwrap().reads.push(flags);
        let files = self.files.lock().unwrap();
        let (_, data, _) = files.get(node).ok_or(Errno::ENOENT)?;
        let start = (offset as usize).min(data.len());
        let end = start.saturating_add(size as usize).min(data.len());
        let buf = out.buffer();
        let n = (end - start).min(buf.len());
        buf[..n].copy_from_slice(&data[start..start + n]);
        out.filled(n);
        Ok(())
    }

    fn write(
        &self,
        _: &RequestContext<'_>,
        node: &u64,
        _: &(),
        offset: u64,
        data: &[u8],
        _: WriteFlags,
        _: OpenFlags,
    ) -> Result<u32> {
        let mut files = self.files.lock().unwrap();
        let (_, file, _) = files.get_mut(node).ok_or(Errno::ENOENT)?;
        let end = offset as usize + data.len();
        if file.len() < end {
            file.resize(end, 0);
        }
        file[offset as usize..end].copy_from_slice(data);
        Ok(data.len() as u32)
    }

    fn opendir(&self, _: &RequestContext<'_>, _: &u64, _: i32) -> Result<Opened<()>> {
        Ok(Opened::new(()))
    }

    fn readdir(
        &self,
        _: &RequestContext<'_>,
        _: &u64,
        _: &(),
        offset: u64,
        out: &mut DirEntries<'_>,
    ) -> Result<()> {
        let files = self.files.lock().unwrap();
        let mut all = vec![
            (1, FileType::Directory, ".".to_string()),
            (1, FileType::Directory, "..".to_string()),
        ];
        all.extend(
            files
                .iter()
                .map(|(i, (n, _, _))| (*i, FileType::RegularFile, n.clone())),
        );
        for (i, (ino, kind, name)) in all.iter().enumerate().skip(offset as usize) {
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

struct Mounted {
    mnt: PathBuf,
    running: serve::Running<Ported>,
    dog: Watchdog,
}

fn mount(tag: &str, fs: Ported) -> Mounted {
    let mnt = temp_dir(tag);
    // allow_other: one test opens as `nobody`.
    let opts = MountOptions::new()
        .fsname("ported")
        .subtype("ported")
        .allow_other(true);
    let server = Server::mount(fs, &mnt, &opts).unwrap();
    let dog = Watchdog::arm(&mnt, None, WATCHDOG).unwrap();
    let running = server.spawn(2).unwrap();
    Mounted { mnt, running, dog }
}

impl Mounted {
    fn finish(self) {
        self.running.unmount().unwrap();
        assert!(!self.dog.disarm(), "finished before the watchdog");
        let _ = std::fs::remove_dir_all(&self.mnt);
    }
}

#[test]
fn o_trunc_is_applied_for_an_open_that_ignores_it() {
    if !can_mount("o_trunc_is_applied_for_an_open_that_ignores_it") {
        return;
    }
    let m = mount("port-trunc", Ported::new(0, None));
    let path = m.mnt.join("existing");
    // `echo ab > existing`.
    std::fs::write(&path, b"ab\n").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"ab\n", "no old bytes left");
    {
        let fs = m.running.session().filesystem();
        let seen = fs.seen.lock().unwrap();
        // The kernel truncated through SETATTR and kept O_TRUNC out of OPEN.
        assert_eq!(seen.truncates, vec![0]);
        assert!(!seen.opens.is_empty());
        for (flags, _) in &seen.opens {
            assert!(!flags.contains(OpenFlags::TRUNC), "{flags:?}");
        }
        let (first, _) = seen.opens[0];
        assert_eq!(first.access_mode(), OpenFlags::WRONLY);
        let offered = seen.offered.expect("init saw the offer");
        assert!(offered.contains(InitFlags::ASYNC_READ | InitFlags::ATOMIC_O_TRUNC));
    }
    m.finish();
}

#[test]
fn atomic_o_trunc_passes_trunc_and_kill_suidgid_to_open() {
    if !can_mount("atomic_o_trunc_passes_trunc_and_kill_suidgid_to_open") {
        return;
    }
    let mut wishes = InitWishes::default();
    wishes.flags |= InitFlags::ATOMIC_O_TRUNC | InitFlags::HANDLE_KILLPRIV_V2;
    let m = mount("port-atomic", Ported::new(0, Some(wishes)));
    let path = m.mnt.join("existing");
    // A caller without CAP_FSETID truncates a set-user-ID file.
    let (uid, gid) = nobody();
    let code = as_user(uid, gid, || {
        errno_of(
            std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .custom_flags(0)
                .open(&path)
                .and_then(|mut f| f.write_all(b"x")),
        )
    });
    assert_eq!(code, 0, "open as nobody");
    {
        let fs = m.running.session().filesystem();
        let seen = fs.seen.lock().unwrap();
        assert!(seen.truncates.is_empty(), "O_TRUNC is the filesystem's");
        let (flags, open_flags) = *seen.opens.last().unwrap();
        assert!(flags.contains(OpenFlags::TRUNC), "{flags:?}");
        assert!(
            open_flags.contains(FuseOpenFlags::KILL_SUIDGID),
            "{open_flags:?}"
        );
    }
    // This port ignored O_TRUNC with ATOMIC_O_TRUNC asked for: the old tail stays,
    // which is why the default does not ask for it.
    let fs = m.running.session().filesystem();
    let data = fs.files.lock().unwrap()[&EXISTING].1.clone();
    assert_eq!(data, b"xello world\n");
    m.finish();
}

#[test]
fn a_readdir_loop_lists_every_entry() {
    if !can_mount("a_readdir_loop_lists_every_entry") {
        return;
    }
    let m = mount("port-readdir", Ported::new(300, None));
    let names: Vec<_> = std::fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 301, "300 files and `existing`");
    m.finish();
}

#[test]
fn a_required_flag_the_kernel_lacks_fails_spawn_naming_it() {
    if !can_mount("a_required_flag_the_kernel_lacks_fails_spawn_naming_it") {
        return;
    }
    // No kernel offers this bit.
    let unknown = InitFlags(1 << 62);
    let wishes = InitWishes {
        required: unknown | InitFlags::ASYNC_READ,
        ..InitWishes::default()
    };
    let mnt = temp_dir("port-required");
    let opts = MountOptions::new().fsname("ported").subtype("ported");
    let server = Server::mount(Ported::new(0, Some(wishes)), &mnt, &opts).unwrap();
    let dog = Watchdog::arm(&mnt, None, WATCHDOG).unwrap();
    match server.spawn(1) {
        Err(ServeError::InitFlagsMissing(missing)) => {
            assert_eq!(missing, unknown);
            let text = ServeError::InitFlagsMissing(missing).to_string();
            assert!(text.contains("0x4000000000000000"), "{text}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("spawn succeeded without a required flag"),
    }
    assert!(!is_fuse_mounted(&mnt), "the refused mount was taken down");
    assert!(!dog.disarm(), "finished before the watchdog");
    let _ = std::fs::remove_dir_all(&mnt);
}

#[test]
fn a_rejected_option_is_named_and_mount_flags_apply() {
    if !can_mount("a_rejected_option_is_named_and_mount_flags_apply") {
        return;
    }
    let mnt = temp_dir("port-options");
    let opts = MountOptions::new().option("no_such_option=1");
    match Server::mount(Ported::new(0, None), &mnt, &opts) {
        Err(ServeError::Mount(e @ dev::MountError::OptionsRejected { .. })) => {
            let dev::MountError::OptionsRejected { ref suspects, .. } = e else {
                unreachable!()
            };
            assert_eq!(suspects, &["no_such_option=1"]);
            let text = e.to_string();
            assert!(
                text.contains("EINVAL") && text.contains("no_such_option=1"),
                "{text}"
            );
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("the kernel accepted an unknown option"),
    }
    assert!(!is_fuse_mounted(&mnt));

    // suid and dev on, exec off: the mount table shows it.
    let opts = MountOptions::new()
        .fsname("ported")
        .suid(true)
        .dev(true)
        .exec(false);
    let server = Server::mount(Ported::new(0, None), &mnt, &opts).unwrap();
    let dog = Watchdog::arm(&mnt, None, WATCHDOG).unwrap();
    let running = server.spawn(1).unwrap();
    let canonical = std::fs::canonicalize(&mnt).unwrap();
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = table
        .lines()
        .rfind(|l| l.split(' ').nth(4) == canonical.to_str())
        .expect("mounted");
    // Field 6: the per-mount options (flags).
    let flags: Vec<&str> = line.split(' ').nth(5).unwrap().split(',').collect();
    assert!(flags.contains(&"noexec"), "{flags:?}");
    assert!(
        !flags.contains(&"nosuid") && !flags.contains(&"nodev"),
        "{flags:?}"
    );
    running.unmount().unwrap();
    assert!(!dog.disarm(), "finished before the watchdog");
    let _ = std::fs::remove_dir_all(&mnt);
}

#[test]
fn read_sees_the_open_flags() {
    if !can_mount("read_sees_the_open_flags") {
        return;
    }
    let m = mount("port-read", Ported::new(0, None));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(m.mnt.join("existing"))
        .unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut f, &mut text).unwrap();
    assert_eq!(text, "hello world\n");
    drop(f);
    {
        let fs = m.running.session().filesystem();
        let seen = fs.seen.lock().unwrap();
        let flags = *seen.reads.first().expect("a READ");
        assert!(flags.contains(OpenFlags::NONBLOCK), "{flags:?}");
        assert_eq!(flags.access_mode(), OpenFlags::RDONLY);
    }
    m.finish();
}
