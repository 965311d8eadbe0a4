//! Notifications: messages the daemon sends unasked, and a parser for them.
//!
//! A notification is a `fuse_out_header` with `unique` 0 and the notification code
//! ([`NotifyCode`](crate::NotifyCode)) in `error`, followed by the code's body. The
//! kernel answers the `write(2)` itself: an error there (`ENOENT` for an inode it
//! does not cache, `EINVAL` for a malformed message) is the notification's result.
//!
//! | code | minor | encoder |
//! |---|---|---|
//! | 1 POLL | 7.11 | [`poll_wakeup`] |
//! | 2 INVAL_INODE | 7.12 | [`inval_inode`] |
//! | 3 INVAL_ENTRY | 7.12 (`flags` 7.38) | [`inval_entry`] |
//! | 4 STORE | 7.15 | [`store`] / [`store_header`] + the data |
//! | 5 RETRIEVE | 7.15 | [`retrieve`] |
//! | 6 DELETE | 7.18 | [`delete`] |
//! | 7 RESEND | 7.40 | [`resend`] |
//! | 8 INC_EPOCH | 7.44 | [`inc_epoch`] |
//! | 9 PRUNE | 7.45 | [`prune`] |
//!
//! Every encoder takes the [`Negotiated`](crate::Negotiated) protocol and refuses
//! with [`EncodeError::NotSupported`](crate::EncodeError::NotSupported) when its
//! minor is older than the code (the kernel of an older minor would answer
//! `EINVAL`). [`parse`] reads the daemon-to-kernel bytes back, for fake kernels,
//! property tests and fuzzing.
//!
//! # References
//! - Linux `include/uapi/linux/fuse.h` (`enum fuse_notify_code`)
//! - Linux `fs/fuse/dev.c` (`fuse_notify_*`; `fs/fuse/notify.c` in later kernels)

mod encode;
mod parse;

pub use encode::{
    delete, inc_epoch, inval_entry, inval_inode, poll_wakeup, prune, resend, retrieve, store,
    store_header, STORE_HEADER_SIZE,
};
pub use parse::{parse, NodeIds, Notification};
