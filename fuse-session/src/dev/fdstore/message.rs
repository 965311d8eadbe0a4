//! The text of a notify message: newline-separated `KEY=VALUE` assignments, as
//! `sd_notify(3)` defines them, and the names of stored descriptors.
//!
//! Parsing is for the receiving side (the keeper); the text comes from another
//! process and is untrusted: any bytes give a [`NotifyMessage`] or a
//! [`MessageError`], never a panic.
use std::fmt;

use super::FdStoreError;

/// The largest message a service manager reads: systemd's buffer is `PIPE_BUF`
/// (4096 bytes) and it drops longer messages. Senders here refuse them.
pub const MAX_MESSAGE: usize = 4096;

/// The longest descriptor name (`FDNAME=`) systemd accepts.
pub const MAX_NAME_LEN: usize = 255;

/// The name systemd gives a stored descriptor sent without `FDNAME=`.
pub const DEFAULT_FD_NAME: &str = "stored";

/// Checks a descriptor name as systemd does (`fdname_is_valid`): at most
/// [`MAX_NAME_LEN`] bytes of printable ASCII (space to `~`), without `:`, which
/// separates names in `LISTEN_FDNAMES`. The empty name is valid.
///
/// # Errors
/// [`FdStoreError::InvalidName`] saying which rule the name breaks.
pub fn check_fd_name(name: &str) -> Result<(), FdStoreError> {
    let bad = |reason: &'static str| {
        Err(FdStoreError::InvalidName {
            name: name.chars().take(64).collect(),
            reason,
        })
    };
    if name.len() > MAX_NAME_LEN {
        return bad("longer than 255 bytes");
    }
    if name.bytes().any(|b| !(b' '..=b'~').contains(&b)) {
        return bad("only printable ASCII is allowed");
    }
    if name.contains(':') {
        return bad("':' separates names in LISTEN_FDNAMES");
    }
    Ok(())
}

/// What a notify message says, as far as an fd store cares.
///
/// Keys this library does not act on (`STATUS=`, `ERRNO=`, `WATCHDOG=` ...) are
/// accepted and listed in [`other`](NotifyMessage::other) by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NotifyMessage {
    /// `READY=1`: start-up finished, the service serves.
    pub ready: bool,
    /// `STOPPING=1`: the service is shutting down on purpose.
    pub stopping: bool,
    /// `FDSTORE=1`: keep the descriptors that came with the message.
    pub fdstore: bool,
    /// `FDSTOREREMOVE=1`: close and forget every stored descriptor named
    /// [`fd_name`](NotifyMessage::fd_name).
    pub fdstore_remove: bool,
    /// `FDNAME=`: the name of the descriptors stored or removed (checked with
    /// [`check_fd_name`]).
    pub fd_name: Option<String>,
    /// `FDPOLL=0` clears this: by default a stored descriptor on which `POLLHUP` or
    /// `POLLERR` is seen is closed and removed.
    pub fd_poll: bool,
    /// `BARRIER=1` (`sd_notify_barrier(3)`): the sender waits until the receiver
    /// closes the one descriptor that came with it, which says every earlier
    /// message was processed.
    pub barrier: bool,
    /// `MAINPID=`: the service says its main process is another one.
    pub main_pid: Option<u32>,
    /// `STATUS=`: free text for humans.
    pub status: Option<String>,
    /// The keys of other assignments, in order.
    pub other: Vec<String>,
}

/// Why a notify message was ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageError {
    /// The message is empty.
    Empty,
    /// The message is longer than [`MAX_MESSAGE`] bytes.
    TooLong(usize),
    /// The message is not UTF-8 text.
    NotText,
    /// A line is not a `KEY=VALUE` assignment (the line, cut to 64 characters).
    NotAnAssignment(String),
    /// A known key has a value it cannot have.
    BadValue {
        /// The key.
        key: &'static str,
        /// The value, cut to 64 characters.
        value: String,
    },
    /// `FDNAME=` is not a valid descriptor name.
    BadName(String),
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageError::Empty => f.write_str("empty notify message"),
            MessageError::TooLong(n) => write!(
                f,
                "notify message of {n} bytes; at most {MAX_MESSAGE} are read"
            ),
            MessageError::NotText => f.write_str("notify message is not UTF-8 text"),
            MessageError::NotAnAssignment(l) => {
                write!(f, "notify message line {l:?} is not KEY=VALUE")
            }
            MessageError::BadValue { key, value } => {
                write!(f, "notify message has {key}={value:?}, which is not valid")
            }
            MessageError::BadName(why) => write!(f, "notify message has a bad FDNAME: {why}"),
        }
    }
}

impl std::error::Error for MessageError {}

fn cut(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Parses a notify message. A trailing newline is allowed, as are empty lines;
/// a key given twice keeps its last value.
///
/// # Errors
/// [`MessageError`]: the message is empty, too long, not text, has a line that is
/// not an assignment, a bad value for a key this library acts on, or a bad
/// `FDNAME=`.
pub fn parse_message(bytes: &[u8]) -> Result<NotifyMessage, MessageError> {
    if bytes.len() > MAX_MESSAGE {
        return Err(MessageError::TooLong(bytes.len()));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| MessageError::NotText)?;
    let mut m = NotifyMessage {
        fd_poll: true,
        ..NotifyMessage::default()
    };
    let mut any = false;
    for line in text.split('\n').filter(|l| !l.is_empty()) {
        any = true;
        let Some((key, value)) = line.split_once('=') else {
            return Err(MessageError::NotAnAssignment(cut(line)));
        };
        if key.is_empty() || key.bytes().any(|b| !(b'!'..=b'~').contains(&b)) {
            return Err(MessageError::NotAnAssignment(cut(line)));
        }
        let flag = |key: &'static str| match value {
            "1" => Ok(true),
            "0" => Ok(false),
            _ => Err(MessageError::BadValue {
                key,
                value: cut(value),
            }),
        };
        match key {
            "READY" => m.ready = flag("READY")?,
            "STOPPING" => m.stopping = flag("STOPPING")?,
            "FDSTORE" => m.fdstore = flag("FDSTORE")?,
            "FDSTOREREMOVE" => m.fdstore_remove = flag("FDSTOREREMOVE")?,
            "FDPOLL" => m.fd_poll = flag("FDPOLL")?,
            "BARRIER" => m.barrier = flag("BARRIER")?,
            "FDNAME" => {
                check_fd_name(value).map_err(|e| MessageError::BadName(e.to_string()))?;
                m.fd_name = Some(value.to_owned());
            }
            "MAINPID" => {
                let pid = value
                    .parse::<u32>()
                    .ok()
                    .filter(|&p| p > 0 && p <= i32::MAX as u32)
                    .ok_or_else(|| MessageError::BadValue {
                        key: "MAINPID",
                        value: cut(value),
                    })?;
                m.main_pid = Some(pid);
            }
            "STATUS" => m.status = Some(value.to_owned()),
            _ => m.other.push(key.to_owned()),
        }
    }
    if !any {
        return Err(MessageError::Empty);
    }
    Ok(m)
}

/// The message that stores descriptors under `name` (`FDSTORE=1`, `FDNAME=`).
///
/// # Errors
/// [`FdStoreError::InvalidName`].
pub fn store_message(name: &str) -> Result<String, FdStoreError> {
    check_fd_name(name)?;
    Ok(format!("FDSTORE=1\nFDNAME={name}\n"))
}

/// The message that removes the stored descriptors named `name`
/// (`FDSTOREREMOVE=1`, `FDNAME=`).
///
/// # Errors
/// [`FdStoreError::InvalidName`].
pub fn remove_message(name: &str) -> Result<String, FdStoreError> {
    check_fd_name(name)?;
    Ok(format!("FDSTOREREMOVE=1\nFDNAME={name}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names() {
        assert!(check_fd_name("").is_ok());
        assert!(check_fd_name("fuse-device").is_ok());
        assert!(check_fd_name("a b~").is_ok());
        assert!(check_fd_name("a:b").is_err());
        assert!(check_fd_name("a\nb").is_err());
        assert!(check_fd_name("é").is_err());
        assert!(check_fd_name(&"x".repeat(255)).is_ok());
        assert!(check_fd_name(&"x".repeat(256)).is_err());
    }

    #[test]
    fn parses_what_sd_notify_sends() {
        let m = parse_message(b"FDSTORE=1\nFDNAME=fuse-device\nFDPOLL=0").unwrap();
        assert!(m.fdstore && !m.fd_poll && !m.ready);
        assert_eq!(m.fd_name.as_deref(), Some("fuse-device"));
        let m = parse_message(b"READY=1\nSTATUS=serving /mnt\nX_CUSTOM=1\n").unwrap();
        assert!(m.ready && m.fd_poll);
        assert_eq!(m.status.as_deref(), Some("serving /mnt"));
        assert_eq!(m.other, vec!["X_CUSTOM".to_owned()]);
        assert!(parse_message(b"BARRIER=1").unwrap().barrier);
        let m = parse_message(b"FDSTOREREMOVE=1\nFDNAME=j\nMAINPID=42\nSTOPPING=1").unwrap();
        assert!(m.fdstore_remove && m.stopping);
        assert_eq!(m.main_pid, Some(42));
        assert_eq!(
            parse_message(store_message("a").unwrap().as_bytes())
                .unwrap()
                .fd_name
                .as_deref(),
            Some("a")
        );
    }

    #[test]
    fn refuses_garbage() {
        assert_eq!(parse_message(b""), Err(MessageError::Empty));
        assert_eq!(parse_message(b"\n\n"), Err(MessageError::Empty));
        assert_eq!(parse_message(b"\xff\xfe"), Err(MessageError::NotText));
        assert!(matches!(
            parse_message(b"hello"),
            Err(MessageError::NotAnAssignment(_))
        ));
        assert!(matches!(
            parse_message(b"=1"),
            Err(MessageError::NotAnAssignment(_))
        ));
        assert!(matches!(
            parse_message(b"READY=yes"),
            Err(MessageError::BadValue { key: "READY", .. })
        ));
        assert!(matches!(
            parse_message(b"MAINPID=-1"),
            Err(MessageError::BadValue { .. })
        ));
        assert!(matches!(
            parse_message(b"MAINPID=0"),
            Err(MessageError::BadValue { .. })
        ));
        assert!(matches!(
            parse_message(b"FDSTORE=1\nFDNAME=a:b"),
            Err(MessageError::BadName(_))
        ));
        assert!(matches!(
            parse_message(&[b'A'; MAX_MESSAGE + 1]),
            Err(MessageError::TooLong(_))
        ));
        assert!(store_message("a:b").is_err());
        assert!(remove_message("a\n").is_err());
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_message(&bytes);
        }

        #[test]
        fn valid_names_round_trip(name in "[ -9;-~]{0,40}") {
            let m = parse_message(store_message(&name).unwrap().as_bytes()).unwrap();
            prop_assert!(m.fdstore);
            prop_assert_eq!(m.fd_name, Some(name));
        }
    }
}
