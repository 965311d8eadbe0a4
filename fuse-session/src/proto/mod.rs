//! The sans-IO session core: request bytes in, reply parts out. No fds, no
//! syscalls (the page size is given: [`Session::set_page_size`]), no clock, no
//! channels or threads of its own, no unsafe. The IO layer ([`crate::dev`],
//! [`crate::serve`]) feeds it; what the core cannot do itself surfaces as an
//! [`Outcome`] (a NOTIFY_REPLY for a pending retrieve is [`Outcome::Retrieved`],
//! which the serving layer hands to the waiting caller).
//!
//! Methods by role, as in quinn-proto's `Connection`:
//! - input: [`Session::accept`] (one request from the kernel), then
//!   [`Session::call`] (run it);
//! - output: the [`Outcome`] of `call`: [`ReplyParts`] to send, or none;
//!   [`Session::respond`] marks it final (the hook sees it) before it is sent ([`step`] describes the three steps and the [`StepHook`] that watches them);
//! - feedback: [`Session::reply_lost`] when a reply could not be delivered;
//!   [`Session::begin_retrieve`] / [`Session::cancel_retrieve`] around a
//!   NOTIFY_RETRIEVE;
//! - notifications: [`crate::Notifier`] encodes them against this session's protocol.
pub mod bufs;
pub mod defer;
mod dispatch;
pub(crate) mod handles;
pub mod init;
pub(crate) mod nodes;
pub mod precopy;
pub(crate) mod session;
pub mod state;
pub mod step;

pub use defer::{DeferredReply, DeferredValue, ReplySender};
pub use session::{InitState, Session, SessionStats, DEFAULT_PAGE_SIZE, PAYLOAD_OFFSET, POKE_NAME};
pub use step::{Accepted, Outcome, ReplyParts, ReplySpace, StepHook, OUT_HEADER_SIZE};
