#!/bin/sh
# Redraws docs/bench/serving.svg and serving-dev-fuse.svg from the RESULT files beside
# this script (run from the repository root). The timelines come from runs:
# cargo run --release --example handoff_bench -- 10000 3 --svg docs/bench/handoff-timeline.svg
# cargo run --release --example demo -- --svg docs/bench/demo-timeline.svg
set -e
B=docs/bench
cargo run -q -p fuse-live-testkit --bin serving_chart -- --out $B/serving.svg \
 --title "Serving, pinned to one CPU, 1 thread: ours through /dev/fuse and io_uring, libfuse, fuser" \
 --workloads stat1,orc1,seq1 \
 --series "libfuse 3.14=libfuse_st_to0@$B/U1P_pinned_to0.txt,$B/U2P_pinned_to0.txt,$B/U3P_pinned_to0.txt" \
 --series "fuser 0.18=fuser_st_to0@$B/U1P_pinned_to0.txt,$B/U2P_pinned_to0.txt,$B/U3P_pinned_to0.txt" \
 --series "ours, /dev/fuse=dev@$B/U4_ab_dev_vs_uring.txt:1-16" \
 --series "ours, io_uring=ours_st_to0@$B/U1P_pinned_to0.txt,$B/U2P_pinned_to0.txt,$B/U3P_pinned_to0.txt" \
 --caption "Bar: median of the runs' medians; whisker: lowest to highest repetition. Machine U1206 (2-core KVM guest, busy: load 2 – 6)." \
 --caption "libfuse, fuser, ours io_uring: 3 rounds (docs/bench/U1P..U3P_pinned_to0.txt); ours /dev/fuse: 2 interleaved rounds" \
 --caption "(docs/bench/U4_ab_dev_vs_uring.txt, stat1 and orc1 only). taskset -c 0; run_all.sh of the shared peers' fsbench."
cargo run -q -p fuse-live-testkit --bin serving_chart -- --out $B/serving-dev-fuse.svg \
 --title "Serving through /dev/fuse, pinned to one CPU, 1 thread (Q1129)" \
 --workloads stat1,orc1,seq1 \
 --series "libfuse 3.14=libfuse_st_to0@$B/S3P2_pinned_to0.txt,$B/S3P3_pinned_to0.txt" \
 --series "fuser 0.18=fuser_st_to0@$B/S3P2_pinned_to0.txt,$B/S3P3_pinned_to0.txt" \
 --series "ours, /dev/fuse=ours_st_to0@$B/S3P2_pinned_to0.txt,$B/S3P3_pinned_to0.txt" \
 --caption "Bar: median of the two sessions' medians (docs/bench/S3P2, S3P3_pinned_to0.txt); whisker: lowest to highest of their 6 repetitions." \
 --caption "Machine Q1129 (2-core KVM guest, load 2.3 – 2.9). taskset -c 0; run_all.sh of the shared peers' fsbench."
