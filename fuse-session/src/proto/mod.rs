//! The sans-IO session core: request bytes in, reply bytes out. No fds, no clock, no
//! threads, no unsafe. The IO layer ([`crate::dev`], [`crate::serve`]) feeds it.
//!
//! Methods by role, as in quinn-proto's `Connection`:
//! - input: [`Session::handle`] (one request from the kernel);
//! - output: the returned [`Handled`] (reply bytes to write, or none);
//! - feedback: [`Session::reply_lost`] when a reply could not be delivered;
//! - notifications: [`crate::Notifier`] encodes them against this session's protocol.
pub mod bufs;
mod dispatch;
pub mod handles;
pub mod init;
pub mod nodes;
pub mod precopy;
pub(crate) mod session;
pub mod state;

pub use session::{Handled, InitState, Session, SessionStats, PAYLOAD_OFFSET, POKE_NAME};
