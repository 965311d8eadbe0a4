//! Golden vectors: requests recorded from a real Linux 6.18 kernel (protocol 7.45)
//! by `tools/src/bin/record_golden.rs`, committed under `tests/golden/linux-6.18/`.
//!
//! Every vector must parse, with the negotiation recorded next to it, to the opcode
//! its file name says, never to `Unknown`, and must re-encode to the same bytes
//! through the request encoder. Field-level checks pin what the kernel really sends
//! for the opcodes whose layout is easiest to get wrong.
use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use fuse_wire::request::encode::{encode, ExtensionArgs, HeaderFields};
use fuse_wire::request::Request;
use fuse_wire::{parse, InitFlags, Negotiated, Opcode, Operation};

/// One recorded request.
struct Vector {
    /// File name, e.g. `0003-LOOKUP.bin`.
    file: String,
    /// The opcode name in the file name, e.g. `LOOKUP`.
    name: String,
    bytes: Vec<u8>,
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/linux-6.18")
}

/// Reads `key=value` from `negotiated.txt`.
fn negotiated_value(text: &str, key: &str) -> u64 {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("negotiated.txt has no {key}="));
    match line.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).expect("hex value"),
        None => line.parse().expect("decimal value"),
    }
}

fn negotiated() -> Negotiated {
    let text = fs::read_to_string(golden_dir().join("negotiated.txt")).expect("negotiated.txt");
    Negotiated::new(
        negotiated_value(&text, "minor") as u32,
        InitFlags(negotiated_value(&text, "flags")),
    )
}

fn vectors() -> Vec<Vector> {
    let mut out = Vec::new();
    for entry in fs::read_dir(golden_dir()).expect("golden directory") {
        let path = entry.expect("dir entry").path();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let Some(stem) = file.strip_suffix(".bin") else {
            continue;
        };
        let (_, name) = stem.split_once('-').expect("NNNN-OPNAME.bin");
        out.push(Vector {
            name: name.to_string(),
            bytes: fs::read(&path).expect("vector"),
            file,
        });
    }
    out.sort_by(|a, b| a.file.cmp(&b.file));
    assert!(out.len() > 100, "only {} golden vectors", out.len());
    out
}

fn parsed<'a>(v: &'a Vector, proto: &Negotiated) -> Request<'a> {
    parse(&v.bytes, proto).unwrap_or_else(|e| panic!("{}: {e}", v.file))
}

/// All vectors of one opcode, parsed.
fn of<'a>(vs: &'a [Vector], proto: &Negotiated, name: &str) -> Vec<Request<'a>> {
    let r: Vec<_> = vs
        .iter()
        .filter(|v| v.name == name)
        .map(|v| parsed(v, proto))
        .collect();
    assert!(!r.is_empty(), "no {name} vector");
    r
}

#[test]
fn every_vector_parses_to_its_opcode() {
    let proto = negotiated();
    for v in &vectors() {
        let req = parsed(v, &proto);
        assert_eq!(req.opcode().name(), Some(v.name.as_str()), "{}", v.file);
        assert_eq!(req.op().opcode(), req.opcode(), "{}", v.file);
        assert!(
            !matches!(req.op(), Operation::Unknown { .. }),
            "{}: known opcode parsed as Unknown",
            v.file
        );
        assert_eq!(req.len(), v.bytes.len(), "{}", v.file);
        // Display must work for every real request.
        assert!(req.to_string().starts_with(&v.name), "{}", v.file);
    }
}

#[test]
fn every_vector_reencodes_to_the_same_bytes() {
    let proto = negotiated();
    let mut buf = vec![0u8; 1 << 16];
    for v in &vectors() {
        let req = parsed(v, &proto);
        let header = HeaderFields {
            unique: req.unique(),
            nodeid: req.nodeid(),
            uid: req.uid(),
            gid: req.gid(),
            pid: req.pid(),
        };
        let ext = ExtensionArgs {
            raw: req.extensions().raw(),
            ..ExtensionArgs::NONE
        };
        let n = encode(&mut buf, &proto, &header, req.op(), &ext)
            .unwrap_or_else(|e| panic!("{}: encode: {e}", v.file));
        assert_eq!(
            &buf[..n],
            &v.bytes[..],
            "{}: re-encoded bytes differ",
            v.file
        );
    }
}

/// The opcodes the kernel was made to send; a re-recording must not lose any.
#[test]
fn coverage_of_the_recording() {
    let have: BTreeSet<String> = vectors().into_iter().map(|v| v.name).collect();
    let expected = [
        "LOOKUP",
        "FORGET",
        "GETATTR",
        "SETATTR",
        "READLINK",
        "SYMLINK",
        "MKNOD",
        "MKDIR",
        "UNLINK",
        "RMDIR",
        "RENAME",
        "LINK",
        "OPEN",
        "READ",
        "WRITE",
        "STATFS",
        "RELEASE",
        "FSYNC",
        "SETXATTR",
        "GETXATTR",
        "LISTXATTR",
        "REMOVEXATTR",
        "FLUSH",
        "INIT",
        "OPENDIR",
        "READDIR",
        "RELEASEDIR",
        "FSYNCDIR",
        "GETLK",
        "SETLK",
        "SETLKW",
        "ACCESS",
        "CREATE",
        "INTERRUPT",
        "BMAP",
        "DESTROY",
        "IOCTL",
        "POLL",
        "NOTIFY_REPLY",
        "BATCH_FORGET",
        "FALLOCATE",
        "READDIRPLUS",
        "RENAME2",
        "LSEEK",
        "COPY_FILE_RANGE",
        "TMPFILE",
        "STATX",
        "COPY_FILE_RANGE_64",
    ];
    for name in expected {
        assert!(have.contains(name), "no {name} vector");
    }
    for name in &have {
        assert!(
            Opcode::ALL.iter().any(|o| o.name() == Some(name.as_str())),
            "unknown opcode name {name}"
        );
    }
}

#[test]
fn init_offers_7_45_with_flags2() {
    let proto = negotiated();
    let text = fs::read_to_string(golden_dir().join("negotiated.txt")).unwrap();
    let vs = vectors();
    let inits = of(&vs, &proto, "INIT");
    let Operation::Init { arg } = inits[0].op() else {
        panic!("INIT parsed as {:?}", inits[0].op());
    };
    assert_eq!(arg.major.get(), 7);
    assert_eq!(arg.minor.get(), 45);
    assert_ne!(
        arg.flags.get() & InitFlags::INIT_EXT.low(),
        0,
        "INIT_EXT offered"
    );
    assert_ne!(arg.flags2.get(), 0, "flags2 present");
    let offered = InitFlags::from_halves(arg.flags.get(), arg.flags2.get());
    assert_eq!(offered.bits(), negotiated_value(&text, "kernel_flags"));
    assert!(offered.contains(InitFlags::HAS_RESEND));
    // What we agreed is a subset of the offer.
    assert!(offered.contains(proto.flags));
    assert_eq!(proto.minor, 45);
    // Beyond the 40-byte header and the 64-byte fuse_init_in, nothing.
    assert_eq!(inits[0].len(), 104);
}

#[test]
fn lookup_names() {
    let proto = negotiated();
    let vs = vectors();
    let lookups = of(&vs, &proto, "LOOKUP");
    let names: Vec<&[u8]> = lookups
        .iter()
        .map(|r| match r.op() {
            Operation::Lookup { name } => *name,
            other => panic!("LOOKUP parsed as {other:?}"),
        })
        .collect();
    for want in [
        &b"missing"[..],
        b"file",
        b"trigger-retrieve",
        b"dir",
        b"sub",
    ] {
        assert!(names.contains(&want), "no LOOKUP of {:?}", want);
    }
    // The first lookup is the negative one in the root, exactly as sent.
    assert_eq!(names[0], b"missing");
    assert_eq!(lookups[0].nodeid(), 1);
    assert_eq!(lookups[0].len(), 40 + b"missing\0".len());
    for n in names {
        assert!(!n.contains(&0), "name with NUL: {n:?}");
    }
}

#[test]
fn create_name_mode_and_extensions() {
    let proto = negotiated();
    let vs = vectors();
    let creates = of(&vs, &proto, "CREATE");
    let mut saw_file = false;
    let mut saw_supp = false;
    for r in &creates {
        let Operation::Create { arg, name } = r.op() else {
            panic!("CREATE parsed as {:?}", r.op());
        };
        // Every create carries the security-context extension (SECURITY_CTX agreed,
        // no LSM: an empty context header).
        assert!(r.extensions().has_security_context(), "{name:?}");
        assert_eq!(r.extensions().security_contexts().count(), 0);
        assert_eq!(
            arg.mode.get() & 0o170000,
            0o100000,
            "{name:?}: regular file"
        );
        if *name == b"file" {
            saw_file = true;
            assert_eq!(r.nodeid(), 1);
            assert_eq!(arg.mode.get(), 0o100644);
            assert_eq!(arg.umask.get(), 0o022);
            let flags = arg.flags.get() as i32;
            assert_eq!(flags & 0o3, 0o2, "O_RDWR");
            assert_ne!(flags & 0o100, 0, "O_CREAT");
            assert_ne!(flags & 0o1000, 0, "O_TRUNC");
        }
        if *name == b"supp-file" {
            saw_supp = true;
            let groups: Vec<u32> = r
                .extensions()
                .supp_groups()
                .expect("supplementary-groups extension")
                .iter()
                .map(|g| g.get())
                .collect();
            assert_eq!(groups, [4242]);
            assert_eq!(r.header().extensions_len(), 24);
        } else {
            assert!(r.extensions().supp_groups().is_none(), "{name:?}");
            assert_eq!(r.header().extensions_len(), 8);
        }
    }
    assert!(saw_file && saw_supp);
    // MKDIR with the same two extensions.
    let supp_mkdir = of(&vs, &proto, "MKDIR").into_iter().any(|r| {
        matches!(r.op(), Operation::Mkdir { name, .. } if *name == b"supp-dir")
            && r.extensions().supp_groups().map(|g| g.len()) == Some(1)
    });
    assert!(supp_mkdir, "MKDIR of supp-dir with a supplementary group");
}

#[test]
fn write_offset_size_data() {
    let proto = negotiated();
    let vs = vectors();
    let writes = of(&vs, &proto, "WRITE");
    let Operation::Write { arg, data } = writes[0].op() else {
        panic!("WRITE parsed as {:?}", writes[0].op());
    };
    assert_eq!(arg.offset.get(), 0);
    assert_eq!(arg.size.get(), 20);
    assert_eq!(*data, b"hello, golden world\n");
    assert_ne!(arg.fh.get(), 0);
    for r in &writes {
        let Operation::Write { arg, data } = r.op() else {
            panic!("WRITE parsed as {:?}", r.op());
        };
        assert_eq!(data.len(), arg.size.get() as usize);
        assert_eq!(r.len(), 40 + 40 + data.len());
    }
}

#[test]
fn rename_names_and_newdir() {
    let proto = negotiated();
    let vs = vectors();
    let renames = of(&vs, &proto, "RENAME");
    let Operation::Rename { arg, name, newname } = renames[0].op() else {
        panic!("RENAME parsed as {:?}", renames[0].op());
    };
    // dir/a -> moved: from the directory `dir` to the root.
    assert_eq!(*name, b"a");
    assert_eq!(*newname, b"moved");
    assert_eq!(arg.newdir.get(), 1);
    assert_ne!(renames[0].nodeid(), 1);

    let mut flags_seen = Vec::new();
    for r in of(&vs, &proto, "RENAME2") {
        let Operation::Rename2 { arg, name, newname } = r.op() else {
            panic!("RENAME2 parsed as {:?}", r.op());
        };
        flags_seen.push(arg.flags.get());
        match arg.flags.get() {
            1 => {
                // RENAME_NOREPLACE: dir/b -> b2.
                assert_eq!((*name, *newname), (&b"b"[..], &b"b2"[..]));
                assert_eq!(arg.newdir.get(), 1);
            }
            2 => {
                // RENAME_EXCHANGE: b2 <-> moved, both in the root.
                assert_eq!((*name, *newname), (&b"b2"[..], &b"moved"[..]));
                assert_eq!((r.nodeid(), arg.newdir.get()), (1, 1));
            }
            f => panic!("unexpected RENAME2 flags {f}"),
        }
    }
    flags_seen.sort_unstable();
    assert_eq!(flags_seen, [1, 2]);
}

#[test]
fn setxattr_name_and_value() {
    let proto = negotiated();
    assert!(proto.has(InitFlags::SETXATTR_EXT));
    let vs = vectors();
    let r = &of(&vs, &proto, "SETXATTR")[0];
    let Operation::Setxattr { arg, name, value } = r.op() else {
        panic!("SETXATTR parsed as {:?}", r.op());
    };
    assert_eq!(*name, b"user.golden");
    assert_eq!(*value, b"value-1");
    assert_eq!(arg.size.get(), 7);
    assert_eq!(arg.flags.get(), 1, "XATTR_CREATE");
    // The 16-byte fuse_setxattr_in of SETXATTR_EXT.
    assert_eq!(r.len(), 40 + 16 + b"user.golden\0".len() + 7);
}

#[test]
fn batch_forget_count() {
    let proto = negotiated();
    let vs = vectors();
    for r in of(&vs, &proto, "BATCH_FORGET") {
        let Operation::BatchForget { forgets } = r.op() else {
            panic!("BATCH_FORGET parsed as {:?}", r.op());
        };
        let count = u32::from_ne_bytes(r.body()[..4].try_into().unwrap());
        assert_eq!(forgets.len(), count as usize);
        assert!(count >= 2, "a batch of {count}");
        assert_eq!(r.len(), 40 + 8 + 16 * forgets.len());
        for f in *forgets {
            assert_ne!(f.nodeid.get(), 0);
            assert_ne!(f.nodeid.get(), 1, "the root is never forgotten");
            assert!(f.nlookup.get() >= 1);
        }
    }
}

#[test]
fn resent_request_keeps_bit_63() {
    let proto = negotiated();
    let vs = vectors();
    let getx = of(&vs, &proto, "GETXATTR");
    let named = |r: &Request<'_>| matches!(r.op(), Operation::Getxattr { name, .. } if *name == b"user.golden.resend");
    let first = getx
        .iter()
        .find(|r| named(r) && !r.is_resend())
        .expect("original");
    let again = getx
        .iter()
        .find(|r| named(r) && r.is_resend())
        .expect("resent");
    assert_eq!(again.unique(), first.unique() | (1 << 63));
    assert_eq!(again.body(), first.body());
}

#[test]
fn interrupt_names_the_held_setlkw() {
    let proto = negotiated();
    let vs = vectors();
    let held = of(&vs, &proto, "SETLKW")
        .into_iter()
        .find(|r| matches!(r.op(), Operation::Setlkw { arg } if arg.lk.start.get() == 4242))
        .expect("the SETLKW on byte 4242");
    let intr = &of(&vs, &proto, "INTERRUPT")[0];
    let Operation::Interrupt { arg } = intr.op() else {
        panic!("INTERRUPT parsed as {:?}", intr.op());
    };
    assert_eq!(arg.unique.get(), held.unique());
    assert_eq!(intr.nodeid(), 0);
}

#[test]
fn notify_reply_carries_the_cached_data() {
    let proto = negotiated();
    let vs = vectors();
    let r = &of(&vs, &proto, "NOTIFY_REPLY")[0];
    let Operation::NotifyReply { arg, data } = r.op() else {
        panic!("NOTIFY_REPLY parsed as {:?}", r.op());
    };
    assert_eq!(
        r.unique(),
        0x00c0_ffee,
        "the notify_unique of our NOTIFY_RETRIEVE"
    );
    assert_eq!(arg.offset.get(), 0);
    assert_eq!(arg.size.get() as usize, data.len());
    assert!(data.starts_with(b"hello, golden world\n"));
}

#[test]
fn fixed_bodies_have_the_expected_values() {
    let proto = negotiated();
    let vs = vectors();
    for r in of(&vs, &proto, "READ") {
        let Operation::Read { arg } = r.op() else {
            panic!()
        };
        assert!(arg.size.get() > 0);
    }
    let flock_seen = of(&vs, &proto, "SETLKW")
        .into_iter()
        .any(|r| matches!(r.op(), Operation::Setlkw { arg } if arg.lk_flags.get() & 1 == 1));
    assert!(flock_seen, "a flock(2) SETLKW with FUSE_LK_FLOCK");
    let tmp = &of(&vs, &proto, "TMPFILE")[0];
    assert!(
        matches!(tmp.op(), Operation::Tmpfile { arg, .. } if arg.mode.get() & 0o170000 == 0o100000)
    );
    let cfr = &of(&vs, &proto, "COPY_FILE_RANGE")[0];
    assert!(matches!(cfr.op(), Operation::CopyFileRange { arg } if arg.len.get() == 3));
    let st = &of(&vs, &proto, "STATX")[0];
    assert!(matches!(st.op(), Operation::Statx { arg } if arg.sx_mask.get() & 0x800 != 0));
}
