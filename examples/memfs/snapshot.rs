//! memfs takes part in snapshots and live handoff: its whole contents are one serde
//! value ([`MemFsImage`]) and it holds no file descriptors.
use std::io;

use fuse_live::snapshot::{FdRestorer, FdSaver, SnapshotFs};

use super::fs::{MemFs, MemFsImage};

impl SnapshotFs for MemFs {
    type State = MemFsImage;

    fn save(&self, _fds: &mut FdSaver) -> io::Result<MemFsImage> {
        Ok(self.snapshot())
    }

    fn restore(state: MemFsImage, _fds: &mut FdRestorer) -> Result<MemFs, String> {
        MemFs::restore(state)
    }
}
