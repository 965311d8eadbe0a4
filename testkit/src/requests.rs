//! Request bytes for tests that drive a [`Session`] without a mount.
use fuse_session::{Filesystem, Outcome, Session};

/// A request: the 40-byte `fuse_in_header` (uid, gid, pid zero), then `body`.
pub fn request(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let len = 40 + body.len() as u32;
    let mut b = Vec::with_capacity(len as usize);
    b.extend_from_slice(&len.to_ne_bytes());
    b.extend_from_slice(&opcode.to_ne_bytes());
    b.extend_from_slice(&unique.to_ne_bytes());
    b.extend_from_slice(&nodeid.to_ne_bytes());
    b.extend_from_slice(&[0u8; 16]); // uid, gid, pid, total_extlen, padding
    b.extend_from_slice(body);
    b
}

/// `n` NUL-terminated, as names travel in requests.
pub fn name(n: &str) -> Vec<u8> {
    let mut v = n.as_bytes().to_vec();
    v.push(0);
    v
}

/// Sends one request; returns the reply's error and the first 8 bytes after the
/// out header (an entry's nodeid), 0 for an error or a shorter reply.
///
/// # Panics
/// If the session gives no reply.
pub fn call<F: Filesystem>(session: &Session<F>, bytes: &[u8]) -> (i32, u64) {
    let mut out = vec![0u8; session.reply_buffer_size()];
    let Outcome::Reply(parts) = session.handle(bytes, &mut out) else {
        panic!("no reply");
    };
    let r = parts.to_vec();
    let word = |at: usize| r.get(at..at + 8).and_then(|b| b.try_into().ok());
    let error = r
        .get(4..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, i32::from_ne_bytes);
    let first = match word(16) {
        Some(b) if error == 0 => u64::from_ne_bytes(b),
        _ => 0,
    };
    (error, first)
}
