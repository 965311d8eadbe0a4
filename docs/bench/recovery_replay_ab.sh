#!/bin/bash
# A/B of `recovery_bench --replay` between two builds, interleaved: each round
# runs each build's harness once in a fresh process (REPS recoveries; the first
# is as a restarted daemon's, a fresh heap) and the summary takes the first
# recovery of every process.
#
#   bash docs/bench/recovery_replay_ab.sh BASE_TREE NEW_TREE JOURNAL [ROUNDS] [REPS]
#
# BASE_TREE and NEW_TREE are worktrees with `cargo build --release --example
# recovery_bench` done (the base with this branch's examples/recovery_bench.rs
# copied in, for its CPU column); JOURNAL was saved with RECOVERY_BENCH_SAVE.
# Prints, per build, the wall-clock and CPU time (all threads) of a recovery,
# median and minimum, and the ratios new / base.
set -euo pipefail
BASE=$1 NEW=$2 J=$3 R=${4:-8} N=${5:-1}
echo "# $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg)"
rows=$(for _ in $(seq "$R"); do
  for t in base new; do
    dir=$BASE; [ "$t" = new ] && dir=$NEW
    RUST_LOG=info "$dir/target/release/examples/recovery_bench" --replay "$J" "$N" 2>&1 |
      grep -E '^ +[0-9]+  (in-place|new-epoch)' | head -1 | sed "s/^/$t /"
  done
done)
echo "$rows"
echo "$rows" | python3 -c '
import sys, statistics as st, collections
d = collections.defaultdict(lambda: collections.defaultdict(list))
for l in sys.stdin:
    f = l.split()
    d[f[0]]["wall"].append(float(f[3])); d[f[0]]["cpu"].append(float(f[4]))
for t in ("base", "new"):
    print(t, "  ".join(f"{k} median {st.median(v):.1f} min {min(v):.1f}" for k, v in d[t].items()),
          "n=%d" % len(d[t]["cpu"]))
for k in ("wall", "cpu"):
    print("new/base %s: median %.3f, min %.3f" % (k, st.median(d["new"][k]) / st.median(d["base"][k]),
          min(d["new"][k]) / min(d["base"][k])))
'
echo "# $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg)"
