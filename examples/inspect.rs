//! Prints a fuse-live snapshot in human terms, without knowing the filesystem's
//! types: format version, the negotiated connection, counts, counters, sizes and
//! the largest tables.
//!
//! ```text
//! cargo run --example inspect -- FILE
//! ```
//!
//! Exit status: 0 when the snapshot is readable, 1 when it is not (the reason is
//! printed), 2 on a usage error.
use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use fuse_snapshot::session::HandleKind;
use fuse_snapshot::{decode_raw, load_file, RawSnapshot};
use fuse_wire::InitFlags;

/// How many entries of each "largest" table to show.
const TOP: usize = 10;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = match args.as_slice() {
        [p] if p != "-h" && p != "--help" => p,
        _ => {
            eprintln!("usage: inspect FILE\n\nPrints what a fuse-live snapshot file holds.");
            return ExitCode::from(2);
        }
    };
    let bytes = match load_file(Path::new(path)) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("inspect: cannot read {path}: {e}");
            return ExitCode::from(1);
        }
    };
    match decode_raw(&bytes) {
        Ok(raw) => {
            print(path, &bytes, &raw);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("inspect: {path}: {e}");
            ExitCode::from(1)
        }
    }
}

fn print(path: &str, bytes: &[u8], raw: &RawSnapshot<'_>) {
    let sum = raw.summary(bytes.len());
    let offer = &raw.init.offer;
    let r = &raw.init.result;
    println!(
        "{path}: fuse-live snapshot, format version {}",
        sum.format_version
    );
    println!();
    println!("connection");
    println!(
        "  protocol        7.{} (kernel offered {}.{})",
        r.minor, offer.major, offer.minor
    );
    println!("  agreed flags    {:?}", InitFlags(r.flags));
    println!("  offered flags   {:?}", InitFlags(offer.flags));
    println!(
        "  kernel resend   {}",
        if offer.flags & InitFlags::HAS_RESEND.0 != 0 {
            "offered (FUSE_NOTIFY_RESEND usable after a restore)"
        } else {
            "not offered"
        }
    );
    println!(
        "  max_write       {} ({} KiB)",
        r.max_write,
        r.max_write / 1024
    );
    println!("  max_pages       {}", r.max_pages);
    println!(
        "  max_readahead   {} (kernel offered {})",
        r.max_readahead, offer.max_readahead
    );
    println!(
        "  background      max {}, congestion threshold {}",
        r.max_background, r.congestion_threshold
    );
    println!("  time_gran       {} ns", r.time_gran);
    println!(
        "  request_timeout {}",
        if r.request_timeout == 0 {
            "none".to_string()
        } else {
            format!("{} s", r.request_timeout)
        }
    );
    println!("  max_stack_depth {}", r.max_stack_depth);
    if let Some(uid) = raw.only_uid {
        println!("  allow_root      only uid {uid} besides root");
    }
    println!();
    println!("tables");
    println!("  nodeids         {}", sum.nodes);
    println!(
        "  handles         {} ({} files, {} directories)",
        sum.file_handles + sum.dir_handles,
        sum.file_handles,
        sum.dir_handles
    );
    println!("  polls           {}", sum.polls);
    let c = &raw.counters;
    println!();
    println!("counters");
    println!("  next nodeid     {}", c.next_nodeid);
    println!("  next generation {}", c.next_generation);
    println!("  next fh         {}", c.next_fh);
    println!("  next notify     {}", c.next_notify_unique);
    println!("  requests        {}", c.requests);
    println!("  errors          {}", c.errors);
    println!("  interrupts      {}", c.interrupts);
    println!("  forgets         {}", c.forgets);
    println!("  malformed       {}", c.malformed);
    println!();
    println!("sizes");
    println!("  total           {} bytes", sum.total_bytes);
    println!(
        "  per nodeid      {:.1} bytes (whole snapshot / nodeids)",
        sum.bytes_per_nodeid()
    );
    println!(
        "  node values     {} bytes ({:.1} per node)",
        sum.node_value_bytes,
        ratio(sum.node_value_bytes, sum.nodes)
    );
    println!(
        "  handle values   {} bytes ({:.1} per handle)",
        sum.handle_value_bytes,
        ratio(sum.handle_value_bytes, sum.file_handles + sum.dir_handles)
    );
    println!("  fs state        {} bytes", sum.fs_state_bytes);

    if !raw.nodes.is_empty() {
        println!();
        println!("top nodeids by lookup count");
        let mut by_lookups: Vec<_> = raw.nodes.iter().collect();
        by_lookups.sort_by(|a, b| b.lookups.cmp(&a.lookups).then(a.nodeid.cmp(&b.nodeid)));
        for n in by_lookups.iter().take(TOP) {
            println!(
                "  nodeid {:<12} lookups {:<10} generation {:<6} value {}",
                n.nodeid,
                n.lookups,
                n.generation,
                hex(n.node)
            );
        }
        println!();
        println!("largest node values");
        let mut by_size: Vec<_> = raw.nodes.iter().collect();
        by_size.sort_by(|a, b| {
            b.node
                .len()
                .cmp(&a.node.len())
                .then(a.nodeid.cmp(&b.nodeid))
        });
        for n in by_size.iter().take(TOP.min(5)) {
            println!("  nodeid {:<12} {} bytes", n.nodeid, n.node.len());
        }
    }
    if !raw.handles.is_empty() {
        println!();
        println!("handles by kind and open flags");
        let mut kinds: BTreeMap<(&str, u32), u64> = BTreeMap::new();
        for h in &raw.handles {
            let kind = match h.kind {
                HandleKind::File => "file",
                HandleKind::Dir => "dir",
            };
            *kinds.entry((kind, h.flags)).or_default() += 1;
        }
        let mut kinds: Vec<_> = kinds.into_iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        for ((kind, flags), count) in kinds.iter().take(TOP) {
            println!("  {kind:<4} flags {flags:#010o}  {count}");
        }
        println!();
        println!("nodeids with the most open handles");
        let mut per_node: BTreeMap<u64, u64> = BTreeMap::new();
        for h in &raw.handles {
            *per_node.entry(h.nodeid).or_default() += 1;
        }
        let mut per_node: Vec<_> = per_node.into_iter().collect();
        per_node.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        for (nodeid, count) in per_node.iter().take(TOP.min(5)) {
            println!("  nodeid {nodeid:<12} {count} handles");
        }
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// The first bytes of an encoded value, in hex.
fn hex(bytes: &[u8]) -> String {
    let mut s: String = bytes.iter().take(16).map(|b| format!("{b:02x}")).collect();
    if bytes.len() > 16 {
        s.push_str(&format!("… ({} bytes)", bytes.len()));
    }
    if s.is_empty() {
        s.push_str("(empty)");
    }
    s
}
