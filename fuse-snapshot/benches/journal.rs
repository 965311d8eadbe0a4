//! Journal appends per second on a memfd ([`JournalMap`]), from 1, 2 and 4
//! threads, for small records (a Lookup with a 40-byte node, 88 bytes in the log)
//! and 4 KiB ones (an Accepted WRITE-sized request); then the longest append while
//! compactions of a 16 MiB checkpoint run beside it.
//!
//! `cargo bench -p fuse-snapshot --bench journal`. Results are recorded in
//! docs/BENCHMARKS.md. Timings are never asserted: this is a measurement.
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use fuse_session::dev::JournalMap;
use fuse_snapshot::journal::{Journal, JournalOptions, Record};

const MAX: u64 = 4 << 30;

fn journal() -> Journal<JournalMap> {
    let map = JournalMap::memfd("journal-bench", MAX).unwrap();
    let opts = JournalOptions {
        compact_after: u64::MAX,
        ..JournalOptions::default()
    };
    Journal::create(map, b"checkpoint", opts).unwrap()
}

/// Appends `per` records of `payload` bytes from each of `threads` threads;
/// returns appends per second.
fn rate(threads: u64, per: u64, payload: usize) -> f64 {
    let j = journal();
    let bytes = vec![0x5au8; payload];
    let start = Instant::now();
    thread::scope(|sc| {
        for t in 0..threads {
            let (j, bytes) = (&j, &bytes);
            sc.spawn(move || {
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
            });
        }
    });
    (threads * per) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    println!("threads  record    appends/s   MB/s (payload)");
    for (payload, per) in [(40usize, 400_000u64), (4096, 40_000)] {
        for threads in [1u64, 2, 4] {
            let mut runs: Vec<f64> = (0..3)
                .map(|_| rate(threads, per / threads, payload))
                .collect();
            runs.sort_by(f64::total_cmp);
            let r = runs[1];
            println!(
                "{threads:>7}  {:>6}  {:>11.0}   {:>6.0}",
                if payload <= 64 { "small" } else { "4 KiB" },
                r,
                r * payload as f64 / 1e6
            );
        }
    }

    // Baseline: storing 16 MiB into fresh memfd pages (page faults and zeroing
    // included), then into the same pages again.
    let map = JournalMap::memfd("journal-bench", MAX).unwrap();
    map.grow(16 << 20).unwrap();
    let data = vec![0x33u8; 16 << 20];
    for pass in ["fresh pages", "same pages"] {
        let t = Instant::now();
        map.write(0, &data).unwrap();
        let d = t.elapsed().as_secs_f64();
        println!(
            "storing 16 MiB into {pass}: {:.1} ms ({:.0} MB/s)",
            d * 1e3,
            16.78 / d
        );
    }

    // The longest append while a 16 MiB checkpoint is compacted, five times.
    let j = journal();
    let stop = AtomicBool::new(false);
    let checkpoint = vec![0xc5u8; 16 << 20];
    let (worst, compactions, compact_time) = thread::scope(|sc| {
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
            worst
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
        (appender.join().unwrap(), 5, total)
    });
    println!(
        "compaction of a 16 MiB checkpoint: {:.1} ms each ({compactions} runs); longest \
         append meanwhile: {:.0} us",
        compact_time.as_secs_f64() * 1e3 / f64::from(compactions),
        worst.as_secs_f64() * 1e6
    );
}
