//! Journal appends per second on a memfd ([`JournalMap`]), from 1, 2 and 4
//! threads, for small records (a Lookup with a 40-byte node, 88 bytes in the log)
//! and 4 KiB ones (an Accepted WRITE-sized request); the cost of storing into
//! fresh and into already-touched memfd pages; then the longest append while
//! compactions of a 16 MiB checkpoint run beside it.
//!
//! `cargo bench -p fuse-snapshot --bench journal`. Results are recorded in
//! docs/BENCHMARKS.md. Rates are given per wall-clock second and per CPU second
//! (on a shared machine the first mostly measures the neighbours). Timings are
//! never asserted: this is a measurement.
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use fuse_session::dev::JournalMap;
use fuse_snapshot::journal::{Journal, JournalOptions, Record};

const MAX: u64 = 4 << 30;

/// CPU time this thread has run, in seconds (`/proc/thread-self/schedstat`).
fn cpu() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0.0, |ns| ns as f64 / 1e9)
}

fn journal() -> Journal<JournalMap> {
    let map = JournalMap::memfd("journal-bench", MAX).unwrap();
    let opts = JournalOptions {
        compact_after: u64::MAX,
        ..JournalOptions::default()
    };
    Journal::create(map, b"checkpoint", opts).unwrap()
}

/// Appends `per` records of `payload` bytes from each of `threads` threads;
/// returns appends per wall-clock second and per CPU second.
fn rate(threads: u64, per: u64, payload: usize) -> (f64, f64) {
    let j = journal();
    let bytes = vec![0x5au8; payload];
    let start = Instant::now();
    let cpu_total: f64 = thread::scope(|sc| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (j, bytes) = (&j, &bytes);
                sc.spawn(move || {
                    let c0 = cpu();
                    for i in 0..per {
                        let r = if payload <= 64 {
                            Record::Lookup {
                                nodeid: t,
                                generation: i,
                                delta: 1,
                                node: &bytes[..],
                            }
                        } else {
                            Record::Accepted {
                                unique: i,
                                nodeid: t,
                                opcode: 16,
                                request: &bytes[..],
                            }
                        };
                        j.append(&r).unwrap();
                    }
                    cpu() - c0
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    let n = (threads * per) as f64;
    (n / start.elapsed().as_secs_f64(), n / cpu_total)
}

fn main() {
    println!("threads  record   appends/s (wall)  MB/s (wall)  appends per CPU-s");
    for (payload, per) in [(40usize, 400_000u64), (4096, 40_000)] {
        for threads in [1u64, 2, 4] {
            let mut runs: Vec<(f64, f64)> = (0..3)
                .map(|_| rate(threads, per / threads, payload))
                .collect();
            runs.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (r, c) = runs[1];
            println!(
                "{threads:>7}  {:>6}  {:>16.0}  {:>11.0}  {:>17.0}",
                if payload <= 64 { "small" } else { "4 KiB" },
                r,
                r * payload as f64 / 1e6,
                c
            );
        }
    }

    // Storing 16 MiB into fresh memfd pages (page faults and zeroing included),
    // then into the same pages again.
    let map = JournalMap::memfd("journal-bench", MAX).unwrap();
    map.grow(16 << 20).unwrap();
    let data = vec![0x33u8; 16 << 20];
    for pass in ["fresh pages", "same pages"] {
        let (t, c) = (Instant::now(), cpu());
        map.write(0, &data).unwrap();
        let (d, c) = (t.elapsed().as_secs_f64(), cpu() - c);
        println!(
            "storing 16 MiB into {pass}: {:.1} ms wall, {:.1} ms CPU ({:.0} MB per CPU-s)",
            d * 1e3,
            c * 1e3,
            16.78 / c
        );
    }

    // The longest append while a 16 MiB checkpoint is compacted, five times.
    let j = journal();
    let stop = AtomicBool::new(false);
    let checkpoint = vec![0xc5u8; 16 << 20];
    let (worst, appends, compact_time) = thread::scope(|sc| {
        let appender = sc.spawn(|| {
            let mut worst = Duration::ZERO;
            let node = [1u8; 40];
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                j.append(&Record::Lookup {
                    nodeid: 1,
                    generation: i,
                    delta: 1,
                    node: &node[..],
                })
                .unwrap();
                worst = worst.max(t.elapsed());
                i += 1;
            }
            (worst, i)
        });
        let mut total = Duration::ZERO;
        for _ in 0..5 {
            thread::sleep(Duration::from_millis(20));
            let m = j.mark();
            let t = Instant::now();
            j.compact(m, &checkpoint).unwrap();
            total += t.elapsed();
        }
        stop.store(true, Ordering::Relaxed);
        let (worst, appends) = appender.join().unwrap();
        (worst, appends, total)
    });
    println!(
        "compaction of a 16 MiB checkpoint: {:.1} ms each (5 runs, wall); {appends} appends \
         meanwhile, the longest {:.0} us",
        compact_time.as_secs_f64() * 1e3 / 5.0,
        worst.as_secs_f64() * 1e6
    );
}
