#!/bin/bash
# Side-by-side benchmark of the passthrough example (docs/BENCHMARKS.md):
# the source directory itself (the ceiling), passthrough with kernel passthrough,
# passthrough without it (--no-passthrough), and bindfs, over the same tmpfs
# source holding the shared peers' tree (1,000 files of 4 KiB and a 1 GiB `big`).
#
# usage: examples/passthrough/bench.sh [ROUNDS=3] [SECS=3] > out.txt
#   env: PEERS (the shared peers' folder, default ../shared/peers beside the
#        repository), WORK (scratch, default /tmp/pt-bench), TTL (entry and attr
#        timeout of every FUSE configuration, default 0: a LOOKUP+GETATTR per stat)
# Needs root, /dev/fuse and bindfs (apt-get install bindfs). Prints one line per
# measure: `ROW round config measure value unit`, and loadavg notes (`#`).
#
# Measures: stat1 and orc1 (fsbench: stat(), and open + read 4 KiB + close, of
# the small files, one thread, ops/s), seq1 (fsbench: buffered 1 MiB read()s of
# `big`, MiB/s), and with dd, 1 MiB blocks: dread (O_DIRECT read of `big`),
# wbuf (buffered write of 512 MiB, then fsync) and wdirect (O_DIRECT write of
# 512 MiB). The configurations run in a rotated order each round. Then, untimed,
# for each FUSE configuration: the requests its daemon got during a buffered
# 64 MiB write with 1 MiB blocks (`REQ round cfg OPCODE count`, from the kernel's
# fuse:fuse_request_send tracepoint with `perf record`; skipped without perf or
# the tracepoint).
set -u
ROUNDS=${1:-3}; SECS=${2:-3}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PEERS=${PEERS:-$(cd "$ROOT/.." && pwd)/shared/peers}
WORK=${WORK:-/tmp/pt-bench}
TTL=${TTL:-0}
SRC=$WORK/src; MNT=$WORK/mnt
PT=$ROOT/target/release/examples/passthrough
FSB=$WORK/fsbench/target/release/fsbench
PIDS=()
TRACEFS_MOUNTED=0

die() { echo "bench.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root"
command -v bindfs >/dev/null || die "needs bindfs (apt-get install bindfs)"
[ -d "$PEERS/fsbench" ] || die "no fsbench in $PEERS (set PEERS)"

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  mountpoint -q "$MNT" && umount -l "$MNT"
  mountpoint -q "$SRC" && umount -l "$SRC"
  rm -rf "$WORK/fsbench" "$WORK/req.data"
  [ "$TRACEFS_MOUNTED" = 1 ] && umount /sys/kernel/tracing
}
trap cleanup EXIT

mkdir -p "$SRC" "$MNT"
(cd "$ROOT" && cargo build --release --example passthrough -q) || die "build passthrough"
cp -r "$PEERS/fsbench" "$WORK/fsbench"
(cd "$WORK/fsbench" && cargo build --release -q) || die "build fsbench"
mountpoint -q "$SRC" || mount -t tmpfs -o size=2200m tmpfs "$SRC"
[ -f "$SRC/f0999" ] || python3 "$PEERS/mk_tmpfs_tree.py" "$SRC" >/dev/null

# Waits for MNT to become a FUSE mount (the daemon's pid in $1).
wait_mount() {
  for _ in $(seq 200); do
    grep -q " $MNT fuse" /proc/mounts && return 0
    kill -0 "$1" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

start() {
  case $1 in
    source) return 0 ;;
    pt_on) "$PT" "$SRC" "$MNT" --ttl "$TTL" >/dev/null 2>"$WORK/$1.err" & ;;
    pt_off) "$PT" "$SRC" "$MNT" --ttl "$TTL" --no-passthrough >/dev/null 2>"$WORK/$1.err" & ;;
    bindfs) bindfs -f -o "entry_timeout=$TTL,attr_timeout=$TTL,negative_timeout=$TTL" \
              "$SRC" "$MNT" 2>"$WORK/$1.err" & ;;
  esac
  local pid=$!
  PIDS+=("$pid")
  wait_mount "$pid" || die "$1 did not mount: $(cat "$WORK/$1.err")"
}

stop() {
  [ "$1" = source ] && return 0
  umount "$MNT" || umount -l "$MNT"
  wait
  PIDS=()
}

# dd's rate in MiB/s from its last line ("... copied, 0.3 s, 1.7 GB/s").
dd_rate() {
  local bytes secs
  read -r bytes secs < <(LC_ALL=C dd "$@" 2>&1 >/dev/null | awk '/copied/ {print $1, $(NF-3)}')
  awk -v b="$bytes" -v s="$secs" 'BEGIN { if (s > 0) printf "%.0f", b / s / 1048576; else print 0 }'
}

measure() {
  local round=$1 cfg=$2 dir=$MNT
  [ "$cfg" = source ] && dir=$SRC
  echo "# round $round $cfg | loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
  "$FSB" "$dir" --label "$cfg" --secs "$SECS" --reps 1 --only stat1,orc1,seq1 |
    awk -v r="$round" -v c="$cfg" '/^RESULT/ { print "ROW", r, c, $3, $4, $5 }'
  sync; echo 1 > /proc/sys/vm/drop_caches
  echo "ROW $round $cfg dread $(dd_rate if="$dir/big" of=/dev/null bs=1M iflag=direct) MiB/s"
  echo "ROW $round $cfg wbuf $(dd_rate if=/dev/zero of="$dir/w" bs=1M count=512 conv=fsync) MiB/s"
  rm -f "$dir/w"
  echo "ROW $round $cfg wdirect $(dd_rate if=/dev/zero of="$dir/w" bs=1M count=512 oflag=direct) MiB/s"
  rm -f "$dir/w"
}

# The requests MNT's connection got during a 64 MiB buffered write (1 MiB blocks).
count_requests() {
  local round=$1 cfg=$2 conn
  conn=$(( $(stat -c %d "$MNT") & 0xff ))
  perf record -q -e fuse:fuse_request_send -a -o "$WORK/req.data" -- \
    dd if=/dev/zero of="$MNT/w" bs=1M count=64 status=none 2>/dev/null
  rm -f "$MNT/w"
  perf script -i "$WORK/req.data" 2>/dev/null |
    awk -v c="connection $conn " -v r="$round" -v f="$cfg" 'index($0, c) {
      if (match($0, /\(FUSE_[A-Z_]+\)/)) n[substr($0, RSTART + 1, RLENGTH - 2)]++ }
      END { for (k in n) print "REQ", r, f, k, n[k] }' | sort
}
can_count() {
  command -v perf >/dev/null || return 1
  if [ ! -d /sys/kernel/tracing/events ]; then
    mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null && TRACEFS_MOUNTED=1
  fi
  [ -d /sys/kernel/tracing/events/fuse/fuse_request_send ]
}

CONFIGS=(source pt_on pt_off bindfs)
echo "# passthrough bench: $(date -u +%FT%TZ), $(nproc) CPUs, $(uname -r), TTL $TTL, $ROUNDS rounds of ${SECS}s"
for r in $(seq 0 $((ROUNDS - 1))); do
  for i in "${!CONFIGS[@]}"; do
    cfg=${CONFIGS[$(((i + r) % ${#CONFIGS[@]}))]}
    start "$cfg"
    measure "$r" "$cfg"
    stop "$cfg"
  done
done
if can_count; then
  echo "# requests during a 64 MiB buffered write (1 MiB blocks), by opcode"
  for cfg in pt_on pt_off bindfs; do
    start "$cfg"
    count_requests 0 "$cfg"
    stop "$cfg"
  done
else
  echo "# no request counts: perf or the fuse:fuse_request_send tracepoint is missing"
fi
