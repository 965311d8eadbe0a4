//! Replies: encoders of every reply into caller-owned buffers, the directory-entry
//! writer, and a parser that reads replies as the kernel does.
//!
//! # Encoding
//! Every encoder takes the buffer, the `unique` of the request being answered (echo
//! it exactly, bit 63 included for a resent request, 7.40) and the body, and returns
//! the number of bytes written, equal to the header's `len`. Nothing is allocated;
//! the buffer size is checked before the first byte is written.
//!
//! | request | encoder |
//! |---|---|
//! | any (failure) | [`error()`] / [`error_header`] |
//! | SETLK, UNLINK, RENAME, RELEASE, FSYNC, FLUSH, SETXATTR, ACCESS, ... | [`empty`] |
//! | LOOKUP, MKNOD, MKDIR, SYMLINK, LINK | [`entry()`] |
//! | GETATTR, SETATTR | [`attr()`] |
//! | STATX (7.39) | [`statx`] |
//! | OPEN, OPENDIR | [`open()`] |
//! | CREATE | [`create`] |
//! | TMPFILE (7.37) | [`tmpfile`] |
//! | WRITE | [`write()`] |
//! | COPY_FILE_RANGE (7.28) / COPY_FILE_RANGE_64 (7.45) | [`copy_file_range`] / [`copy_file_range_64`] |
//! | STATFS | [`statfs()`] |
//! | READ, READLINK, GETXATTR, LISTXATTR | [`data()`] or [`data_header`] + the payload |
//! | GETXATTR, LISTXATTR with size 0 | [`xattr_size`] |
//! | GETLK | [`lk`] |
//! | BMAP | [`bmap`] |
//! | IOCTL | [`ioctl`] / [`ioctl_retry`] |
//! | POLL | [`poll`] |
//! | LSEEK | [`lseek`] |
//! | READDIR, READDIRPLUS | [`DirentWriter`] |
//! | INIT | [`init()`] |
//! | CUSE_INIT | [`cuse_init`] |
//!
//! Sizes that depend on the negotiated minor (`fuse_entry_out` and `fuse_attr_out`
//! before 7.9, `fuse_statfs_out` before 7.4, `fuse_init_out` by the kernel's minor)
//! are taken from [`Negotiated`](crate::Negotiated).
//!
//! # Parsing
//! [`parse`] reads a reply to a given opcode as the kernel's `fuse_dev_do_write`
//! would, returning a borrowed [`Reply`]. It is meant for fake kernels, property
//! tests and fuzzing; it never panics and never allocates.
//!
//! # References
//! - Linux `include/uapi/linux/fuse.h`
//! - Linux `fs/fuse/dev.c` (`fuse_dev_do_write`, `copy_out_args`),
//!   `fs/fuse/readdir.c` (`parse_dirfile`, `parse_dirplusfile`)

mod attr;
mod dirent;
mod encode;
mod init;
mod name;
mod parse;

pub use attr::{Attr, Entry, FileLock, IoctlIovec, Open, Statfs, Timestamp};
pub use dirent::{
    dirent_size, direntplus_size, Dirent, DirentPlus, DirentWriter, Dirents, DirentsPlus, Push,
};
pub use encode::{
    attr, bmap, copy_file_range, copy_file_range_64, create, cuse_init, data, data_header, empty,
    entry, error, error_header, init, ioctl, ioctl_retry, lk, lseek, open, poll, statfs, statx,
    tmpfile, write, xattr_size, ERRNO_MAX, OUT_HEADER_SIZE,
};
pub use init::{CuseInitOut, InitOut, CUSE_INIT_INFO_MAX};
pub use name::{validate_name, KERNEL_NAME_MAX, NAME_MAX};
pub use parse::{parse, parse_as, DevInfo, IoctlIovecs, Reply, ReplyBody, ReplyShape};

pub(crate) use encode::out_header;
