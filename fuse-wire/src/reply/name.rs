//! File names in directory entries and notifications: the limits and the check.
use crate::error::EncodeError;

/// The longest name this crate encodes, in bytes: the kernel's `FUSE_NAME_LOW_MAX`.
///
/// Every kernel accepts names up to 1024 bytes in READDIR(PLUS) replies and in
/// NOTIFY_INVAL_ENTRY / NOTIFY_DELETE (`fc->name_max` starts at 1024). Linux 6.14 and
/// later raise the limit to [`KERNEL_NAME_MAX`] on connections whose INIT reply set
/// `FUSE_MAX_PAGES` with `max_pages > 1`; the encoders stay at 1024 so that a reply
/// is valid on every connection.
pub const NAME_MAX: usize = 1024;

/// The longest name the kernel (Linux 6.14 and later) ever accepts: `PATH_MAX - 1`.
///
/// The parsers accept names up to this length, as the kernel's own `parse_dirfile`
/// does (`FUSE_NAME_MAX`).
pub const KERNEL_NAME_MAX: usize = 4095;

/// Checks a name for a directory entry or an entry notification: non-empty, at most
/// [`NAME_MAX`] bytes, no NUL and no `/`.
///
/// The kernel fails a whole READDIR with `EIO` on an empty name or a name with `/`;
/// a NUL would silently truncate the name for applications.
pub fn validate_name(name: &[u8]) -> Result<(), EncodeError> {
    if name.is_empty() {
        return Err(EncodeError::BadName {
            reason: "name is empty",
        });
    }
    if name.len() > NAME_MAX {
        return Err(EncodeError::BadName {
            reason: "name is longer than 1024 bytes (FUSE_NAME_LOW_MAX)",
        });
    }
    if name.contains(&0) {
        return Err(EncodeError::BadName {
            reason: "name contains a NUL byte",
        });
    }
    if name.contains(&b'/') {
        return Err(EncodeError::BadName {
            reason: "name contains '/'",
        });
    }
    Ok(())
}
