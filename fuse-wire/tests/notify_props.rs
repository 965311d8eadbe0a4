//! Property tests of the notification encoders and parser: encode then parse gives
//! the value back, the encoded length is the header's `len`, each code is refused
//! on a protocol older than it, and arbitrary bytes never panic the parser.
use fuse_wire::notify::{self, Notification};
use fuse_wire::{EncodeError, InitFlags, Negotiated, NotifyCode, ParseError, RequestFlags};
use proptest::prelude::*;

fn proto() -> impl Strategy<Value = Negotiated> {
    (
        prop::sample::select(vec![9u32, 11, 12, 15, 18, 23, 38, 40, 44, 45]),
        any::<u64>(),
    )
        .prop_map(|(minor, flags)| Negotiated::new(minor, InitFlags(flags)))
}

fn name(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        any::<u8>().prop_filter("no NUL or /", |b| *b != 0 && *b != b'/'),
        1..=max,
    )
}

/// Encodes, checks the invariants (length = header len, unique 0, code in error,
/// one byte less refused) and returns the message; or returns the error.
fn encode(
    code: NotifyCode,
    enc: impl Fn(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<Vec<u8>, EncodeError> {
    let mut buf = vec![0xAAu8; 8192];
    let n = enc(&mut buf)?;
    assert_eq!(n, u32::from_ne_bytes(buf[..4].try_into().unwrap()) as usize);
    assert_eq!(i32::from_ne_bytes(buf[4..8].try_into().unwrap()), code.0);
    assert_eq!(u64::from_ne_bytes(buf[8..16].try_into().unwrap()), 0);
    let mut small = vec![0u8; n - 1];
    assert!(matches!(
        enc(&mut small),
        Err(EncodeError::BufferTooSmall { .. })
    ));
    buf.truncate(n);
    Ok(buf)
}

/// Checks the minor gate: encoding fails with NotSupported exactly below `since`.
fn gated(p: &Negotiated, code: NotifyCode, r: &Result<Vec<u8>, EncodeError>) -> bool {
    let since = code.since_minor().unwrap();
    if p.minor < since {
        assert!(
            matches!(r, Err(EncodeError::NotSupported { since_minor, negotiated_minor, .. })
                if *since_minor == since && *negotiated_minor == p.minor),
            "{code:?} refused before 7.{since}: {r:?}"
        );
        false
    } else {
        true
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn poll_round_trips(p in proto(), kh in any::<u64>()) {
        let r = encode(NotifyCode::POLL, |b| notify::poll_wakeup(b, &p, kh));
        if gated(&p, NotifyCode::POLL, &r) {
            let msg = r.unwrap();
            prop_assert_eq!(msg.len(), 24);
            prop_assert_eq!(notify::parse(&msg).unwrap(), Notification::Poll { kh });
        }
    }

    #[test]
    fn inval_inode_round_trips(p in proto(), ino in any::<u64>(), off in any::<i64>(), len in any::<i64>()) {
        let r = encode(NotifyCode::INVAL_INODE, |b| notify::inval_inode(b, &p, ino, off, len));
        if gated(&p, NotifyCode::INVAL_INODE, &r) {
            let msg = r.unwrap();
            prop_assert_eq!(notify::parse(&msg).unwrap(), Notification::InvalInode { ino, off, len });
        }
    }

    #[test]
    fn inval_entry_round_trips(p in proto(), parent in any::<u64>(), n in prop_oneof![4 => name(32), 1 => name(1024)],
                               expire in any::<bool>()) {
        let flags = if expire { RequestFlags::EXPIRE_ONLY } else { RequestFlags::EMPTY };
        let r = encode(NotifyCode::INVAL_ENTRY, |b| notify::inval_entry(b, &p, parent, &n, flags));
        if gated(&p, NotifyCode::INVAL_ENTRY, &r) {
            if expire && p.minor < 38 {
                prop_assert!(matches!(r, Err(EncodeError::NotSupported { since_minor: 38, .. })), "flags before 7.38");
                return Ok(());
            }
            let msg = r.unwrap();
            prop_assert_eq!(msg.len(), 16 + 16 + n.len() + 1);
            prop_assert_eq!(*msg.last().unwrap(), 0u8);
            prop_assert_eq!(notify::parse(&msg).unwrap(), Notification::InvalEntry { parent, name: &n, flags });
        }
    }

    #[test]
    fn delete_round_trips(p in proto(), parent in any::<u64>(), child in any::<u64>(), n in name(64)) {
        let r = encode(NotifyCode::DELETE, |b| notify::delete(b, &p, parent, child, &n));
        if gated(&p, NotifyCode::DELETE, &r) {
            let msg = r.unwrap();
            prop_assert_eq!(notify::parse(&msg).unwrap(), Notification::Delete { parent, child, name: &n });
        }
    }

    #[test]
    fn store_round_trips(p in proto(), nodeid in any::<u64>(), offset in 0..i64::MAX as u64,
                         data in prop::collection::vec(any::<u8>(), 0..512)) {
        let r = encode(NotifyCode::STORE, |b| notify::store(b, &p, nodeid, offset, &data));
        if gated(&p, NotifyCode::STORE, &r) {
            let msg = r.unwrap();
            prop_assert_eq!(notify::parse(&msg).unwrap(), Notification::Store { nodeid, offset, data: &data });
            // The header-only form plus the data is the same message.
            let mut joined = notify::store_header(&p, nodeid, offset, data.len()).unwrap().to_vec();
            joined.extend_from_slice(&data);
            prop_assert_eq!(joined, msg);
        }
    }

    #[test]
    fn retrieve_round_trips(p in proto(), notify_unique in any::<u64>(), nodeid in any::<u64>(),
                            offset in 0..i64::MAX as u64, size in any::<u32>()) {
        let r = encode(NotifyCode::RETRIEVE, |b| notify::retrieve(b, &p, notify_unique, nodeid, offset, size));
        if gated(&p, NotifyCode::RETRIEVE, &r) {
            let msg = r.unwrap();
            prop_assert_eq!(notify::parse(&msg).unwrap(),
                Notification::Retrieve { notify_unique, nodeid, offset, size });
        }
    }

    #[test]
    fn bare_headers_round_trip(p in proto()) {
        let r = encode(NotifyCode::RESEND, |b| notify::resend(b, &p));
        if gated(&p, NotifyCode::RESEND, &r) {
            let msg = r.unwrap();
            prop_assert_eq!(msg.len(), 16);
            prop_assert_eq!(notify::parse(&msg).unwrap(), Notification::Resend);
        }
        let r = encode(NotifyCode::INC_EPOCH, |b| notify::inc_epoch(b, &p));
        if gated(&p, NotifyCode::INC_EPOCH, &r) {
            let msg = r.unwrap();
            prop_assert_eq!(msg.len(), 16);
            prop_assert_eq!(notify::parse(&msg).unwrap(), Notification::IncEpoch);
        }
    }

    #[test]
    fn prune_round_trips(p in proto(), ids in prop::collection::vec(any::<u64>(), 0..300)) {
        let r = encode(NotifyCode::PRUNE, |b| notify::prune(b, &p, &ids));
        if gated(&p, NotifyCode::PRUNE, &r) {
            let msg = r.unwrap();
            prop_assert_eq!(msg.len(), 32 + 8 * ids.len());
            match notify::parse(&msg).unwrap() {
                Notification::Prune { nodeids } => {
                    prop_assert_eq!(nodeids.len(), ids.len());
                    prop_assert_eq!(nodeids.collect::<Vec<_>>(), ids);
                }
                other => prop_assert!(false, "expected Prune, got {:?}", other),
            }
        }
    }
}

#[test]
fn golden_resend() {
    let mut buf = [0u8; 16];
    assert_eq!(notify::resend(&mut buf, &Negotiated::LATEST).unwrap(), 16);
    let mut want = Vec::new();
    want.extend_from_slice(&16u32.to_ne_bytes());
    want.extend_from_slice(&7i32.to_ne_bytes());
    want.extend_from_slice(&0u64.to_ne_bytes());
    assert_eq!(&buf[..], &want[..]);
}

#[test]
fn encoders_refuse_bad_arguments() {
    let p = Negotiated::LATEST;
    let mut buf = vec![0u8; 4096];
    let long = vec![b'x'; 1025];
    for bad in [&b""[..], b"a/b", b"a\0", &long] {
        assert!(matches!(
            notify::inval_entry(&mut buf, &p, 1, bad, RequestFlags::EMPTY),
            Err(EncodeError::BadName { .. })
        ));
        assert!(matches!(
            notify::delete(&mut buf, &p, 1, 2, bad),
            Err(EncodeError::BadName { .. })
        ));
    }
    assert!(notify::inval_entry(&mut buf, &p, 1, &long[..1024], RequestFlags::EMPTY).is_ok());
    let max = i64::MAX as u64;
    assert!(matches!(
        notify::store(&mut buf, &p, 1, max, b"x"),
        Err(EncodeError::Invalid { .. })
    ));
    assert!(matches!(
        notify::retrieve(&mut buf, &p, 1, 2, max, 1),
        Err(EncodeError::Invalid { .. })
    ));
    assert!(matches!(
        notify::store_header(&p, 1, 0, u32::MAX as usize + 1),
        Err(EncodeError::TooLarge { .. })
    ));
    assert!(matches!(
        notify::store_header(&p, 1, 0, u32::MAX as usize - 10),
        Err(EncodeError::TooLarge { .. })
    ));
}

fn msg(code: i32, unique: u64, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    v.extend_from_slice(&code.to_ne_bytes());
    v.extend_from_slice(&unique.to_ne_bytes());
    v.extend_from_slice(body);
    v
}

#[test]
fn parser_checks_framing() {
    // Unknown codes are data.
    assert_eq!(
        notify::parse(&msg(42, 0, b"xyz")).unwrap(),
        Notification::Unknown {
            code: NotifyCode(42),
            body: b"xyz"
        }
    );
    assert_eq!(
        notify::parse(&msg(-3, 0, b"")).unwrap().code(),
        NotifyCode(-3)
    );
    // A reply is not a notification.
    assert!(notify::parse(&msg(1, 5, &[0; 8])).is_err());
    // Short header, length mismatch.
    assert!(matches!(
        notify::parse(&[0; 15]),
        Err(ParseError::ShortHeader { .. })
    ));
    let mut m = msg(1, 0, &[0; 8]);
    m.push(0);
    assert!(matches!(
        notify::parse(&m),
        Err(ParseError::LengthMismatch { .. })
    ));
    // POLL body must be exactly 8 bytes.
    assert!(notify::parse(&msg(1, 0, &[0; 7])).is_err());
    assert!(notify::parse(&msg(1, 0, &[0; 9])).is_err());
    // PRUNE count must match the body, without overflow.
    let mut body = Vec::new();
    body.extend_from_slice(&0x2000_0000u32.to_ne_bytes());
    body.extend_from_slice(&[0; 12]);
    assert!(matches!(
        notify::parse(&msg(9, 0, &body)),
        Err(ParseError::CountOverrun { .. })
    ));
    // INVAL_ENTRY name must end with its NUL.
    let mut body = Vec::new();
    body.extend_from_slice(&1u64.to_ne_bytes());
    body.extend_from_slice(&2u32.to_ne_bytes());
    body.extend_from_slice(&0u32.to_ne_bytes());
    body.extend_from_slice(b"abX");
    assert!(matches!(
        notify::parse(&msg(3, 0, &body)),
        Err(ParseError::MissingNul { .. })
    ));
    // RESEND carries nothing.
    assert!(notify::parse(&msg(7, 0, &[0])).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = notify::parse(&bytes);
    }

    #[test]
    fn arbitrary_bodies_never_panic(code in prop_oneof![0i32..=10, any::<i32>()],
                                    body in prop::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(Notification::Prune { nodeids }) = notify::parse(&msg(code, 0, &body)) {
            let _ = nodeids.count();
        }
    }
}
