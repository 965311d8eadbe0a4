#!/bin/bash
# Journal on vs off (docs/BENCHMARKS.md, crash recovery): memfs as a plain mount
# (`off`) and memfs under fuse-live-keeper, which journals every request into a
# memfd (`on`), side by side in one run, rotated per round.
#
# usage: docs/bench/journal_ab.sh [ROUNDS=3] [SECS=3] > out.txt
#   env: PEERS (the shared peers' folder, default ../shared/peers beside the
#        repository), WORK (scratch, default /tmp/journal-ab), PIN (prefix for the
#        daemon and the driver, default "taskset -c 0": one CPU, as the pinned
#        serving rows), THREADS (memfs workers, default 1), BASE (another memfs
#        binary, e.g. an older commit's release build: adds the config `base`, that
#        memfs under the keeper, to compare two journals in the same run),
#        SKIP_DD=1 (stat1 and orc1 only), FS (memfs, the default, or passthrough:
#        the passthrough example over a fresh tmpfs source under WORK; it journals
#        its session and intents, never file data), FS_ARGS (more daemon arguments,
#        e.g. --no-passthrough: passthrough's writes then reach the daemon).
# Needs root and /dev/fuse. Prints `ROW round config measure value unit` lines and
# loadavg notes (`#`). stat1_srv and orc1_srv are the serving daemon's CPU time
# (utime + stime, from fsbench --server-pid) per operation: steadier than ops/s
# on a shared machine.
#
# Measures: stat1 and orc1 (the peers' fsbench: stat(), and open + read 4 KiB +
# close, of 1,000 files of 4 KiB written into the mount first, one thread, ops/s;
# entry and attribute TTL 0, so each stat is a LOOKUP + GETATTR), and with dd,
# 1 MiB blocks: wbuf (buffered write of 512 MiB, then fsync) and wdirect
# (O_DIRECT write of 512 MiB), MiB/s.
set -u
ROUNDS=${1:-3}; SECS=${2:-3}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PEERS=${PEERS:-$(cd "$ROOT/.." && pwd)/shared/peers}
WORK=${WORK:-/tmp/journal-ab}
PIN=${PIN:-taskset -c 0}
THREADS=${THREADS:-1}
MNT=$WORK/mnt
FS=${FS:-memfs}
FS_ARGS=${FS_ARGS:-}
SRC=$WORK/src
case $FS in
  memfs) MEMFS=$ROOT/target/release/memfs; SRCARG=() ;;
  passthrough) MEMFS=$ROOT/target/release/examples/passthrough; SRCARG=("$SRC") ;;
  *) echo "journal_ab.sh: FS is memfs or passthrough" >&2; exit 1 ;;
esac
KEEPER=$ROOT/target/release/fuse-live-keeper
FSB=$WORK/fsbench/target/release/fsbench
PID=

die() { echo "journal_ab.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root"
[ -d "$PEERS/fsbench" ] || die "no fsbench in $PEERS (set PEERS)"

cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null
  mountpoint -q "$MNT" && umount -l "$MNT"
  mountpoint -q "$SRC" && umount -l "$SRC"
  rm -rf "$WORK/fsbench"
}
trap cleanup EXIT

mkdir -p "$MNT"
if [ "$FS" = passthrough ]; then
  mkdir -p "$SRC"
  mountpoint -q "$SRC" || mount -t tmpfs -o size=1g tmpfs "$SRC" || die "mount the tmpfs source"
  (cd "$ROOT" && cargo build --release -q --example passthrough) || die "build passthrough"
fi
(cd "$ROOT" && cargo build --release -q -p memfs --bin memfs && cargo build --release -q --bin fuse-live-keeper) ||
  die "build memfs and the keeper"
rm -rf "$WORK/fsbench"; cp -r "$PEERS/fsbench" "$WORK/fsbench"
(cd "$WORK/fsbench" && cargo build --release -q) || die "build fsbench"

start() {
  [ "$FS" = passthrough ] && find "$SRC" -mindepth 1 -delete
  # shellcheck disable=SC2086 # FS_ARGS: words
  case $1 in
    off) $PIN "$MEMFS" "${SRCARG[@]}" "$MNT" --ttl 0 --threads "$THREADS" $FS_ARGS >"$WORK/out" 2>"$WORK/$1.err" & ;;
    on) $PIN "$KEEPER" -- "$MEMFS" "${SRCARG[@]}" "$MNT" --ttl 0 --threads "$THREADS" $FS_ARGS >"$WORK/out" 2>"$WORK/$1.err" & ;;
    base) $PIN "$KEEPER" -- "$BASE" "${SRCARG[@]}" "$MNT" --ttl 0 --threads "$THREADS" $FS_ARGS >"$WORK/out" 2>"$WORK/$1.err" & ;;
  esac
  PID=$!
  SRV=$PID
  for _ in $(seq 200); do
    grep -q "^ready" "$WORK/out" 2>/dev/null && break
    kill -0 "$PID" 2>/dev/null || die "$1 did not start: $(cat "$WORK/$1.err")"
    sleep 0.05
  done
  grep -q "^ready" "$WORK/out" || die "$1 did not get ready"
  # The daemon that serves (and journals): the keeper's child under the keeper.
  [ "$1" != off ] && SRV=$(pgrep -P "$PID" | head -1)
  python3 - "$MNT" <<'PY'
import sys
d = sys.argv[1]
block = bytes(i % 251 for i in range(4096))
for i in range(1000):
    with open(f"{d}/f{i:04}", "wb") as f:
        f.write(block)
PY
}

stop() {
  umount "$MNT" || umount -l "$MNT"
  wait "$PID"
  PID=
}

dd_rate() {
  local bytes secs
  read -r bytes secs < <(LC_ALL=C $PIN dd "$@" 2>&1 >/dev/null | awk '/copied/ {print $1, $(NF-3)}')
  awk -v b="$bytes" -v s="$secs" 'BEGIN { if (s > 0) printf "%.0f", b / s / 1048576; else print 0 }'
}

measure() {
  local round=$1 cfg=$2
  echo "# round $round $cfg | loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
  $PIN "$FSB" "$MNT" --label "$cfg" --secs "$SECS" --reps 1 --only stat1,orc1 --server-pid "$SRV" |
    awk -v r="$round" -v c="$cfg" '/^RESULT/ {
      print "ROW", r, c, $3, $4, $5
      for (i = 6; i <= NF; i++) if ($i ~ /^srv_cpu_us_per_op=/) {
        split($i, kv, "="); print "ROW", r, c, $3 "_srv", kv[2], "us/op"
      }
    }'
  [ "${SKIP_DD:-0}" = 1 ] && return
  echo "ROW $round $cfg wbuf $(dd_rate if=/dev/zero of="$MNT/w" bs=1M count=512 conv=fsync) MiB/s"
  rm -f "$MNT/w"
  echo "ROW $round $cfg wdirect $(dd_rate if=/dev/zero of="$MNT/w" bs=1M count=512 oflag=direct) MiB/s"
  rm -f "$MNT/w"
}

CONFIGS=(off on)
if [ -n "${BASE:-}" ]; then
  [ -x "$BASE" ] || die "BASE $BASE is not an executable"
  CONFIGS=(off on base)
fi
echo "# journal A/B ($FS $FS_ARGS): $(date -u +%FT%TZ), $(nproc) CPUs, $(uname -r), PIN '$PIN', $THREADS thread(s), $ROUNDS rounds of ${SECS}s"
for r in $(seq 0 $((ROUNDS - 1))); do
  for i in "${!CONFIGS[@]}"; do
    cfg=${CONFIGS[$(((i + r) % ${#CONFIGS[@]}))]}
    start "$cfg"
    measure "$r" "$cfg"
    stop "$cfg"
  done
done
