//! memfs driven in process, without a mount: a session whose INIT a
//! [`FakeKernel`] answered (protocol 7.45 with `INIT_EXT`), for the tests and the
//! benchmark that send it request bytes, journaled or not.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use fuse_session::dev::JournalMap;
use fuse_session::fake::FakeKernel;
use fuse_session::wire::InitFlags;
use fuse_session::Session;
use fuse_snapshot::journal::session::JournalHook;
use fuse_snapshot::journal::JournalOptions;

use crate::fs::{Config, MemFs};

/// A memfs of `capacity` bytes (owned by root, nothing cached by the kernel:
/// TTL 0) whose INIT is answered.
pub fn session(capacity: u64) -> Session<MemFs> {
    let fs = MemFs::new(
        0,
        0,
        capacity,
        Config {
            ttl: Duration::ZERO,
        },
    );
    let mut k = FakeKernel::new(fs);
    k.init(45, InitFlags::INIT_EXT);
    k.into_session()
}

/// [`session`] with a [`JournalHook`] of `options`, its journal started in a
/// memfd named `name` of at most `max_len` bytes. Returns the session, the hook
/// and a descriptor of the memfd (to map it again, as a restarted process would).
///
/// # Panics
/// If the memfd cannot be made or the journal cannot start (tests and benches).
pub fn journaled(
    capacity: u64,
    name: &str,
    max_len: u64,
    options: JournalOptions,
) -> (Arc<Session<MemFs>>, Arc<JournalHook<MemFs>>, OwnedFd) {
    let mut session = session(capacity);
    let hook = JournalHook::<MemFs>::new(options);
    session.set_hook(hook.clone());
    let session = Arc::new(session);
    let map = JournalMap::memfd(name, max_len).expect("memfd");
    let fd = map.fd().try_clone_to_owned().expect("dup");
    hook.start(&session, map).expect("start the journal");
    (session, hook, fd)
}
