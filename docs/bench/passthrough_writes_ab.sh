#!/bin/bash
# A/B of passthrough's 1 MiB sequential writes with kernel passthrough, two builds
# against the source directly, interleaved (docs/bench/2026-12-07-passthrough-writes.md).
#
# usage: OLD=path/to/passthrough NEW=path/to/passthrough \
#          bash docs/bench/passthrough_writes_ab.sh [ROUNDS=20] [MiB=512] > out.txt
# Needs root and /dev/fuse. The source is a fresh tmpfs under WORK (default
# /tmp/pt-writes-ab). Each round runs `source`, `old` and `new` in a rotated order;
# each run writes a new file of MiB MiB with dd, 1 MiB blocks, buffered + fsync
# (wbuf) and O_DIRECT (wdirect), as examples/passthrough/bench.sh does. Prints
# `ROW round config wbuf MiB/s wdirect MiB/s load 1-min-loadavg`.
set -u
R=${1:-20}; N=${2:-512}
: "${OLD:?set OLD to the first passthrough binary}" "${NEW:?set NEW to the second}"
WORK=${WORK:-/tmp/pt-writes-ab}
SRC=$WORK/src; MNT=$WORK/mnt
mkdir -p "$SRC" "$MNT"
mountpoint -q "$SRC" || mount -t tmpfs -o size=$((N + 256))m tmpfs "$SRC" || exit 1
cleanup() {
  mountpoint -q "$MNT" && umount -l "$MNT"
  mountpoint -q "$SRC" && umount -l "$SRC"
}
trap cleanup EXIT
rate() { LC_ALL=C dd "$@" 2>&1 >/dev/null | awk '/copied/ {printf "%.0f", $1/$(NF-3)/1048576}'; }
wait_mount() {
  for _ in $(seq 200); do grep -q " $MNT fuse" /proc/mounts && return 0; sleep 0.05; done
  return 1
}
run() {
  local cfg=$1 dir=$MNT
  case $cfg in
    source) dir=$SRC ;;
    old) "$OLD" "$SRC" "$MNT" --ttl 0 >/dev/null 2>"$WORK/$cfg.err" & ;;
    new) "$NEW" "$SRC" "$MNT" --ttl 0 >/dev/null 2>"$WORK/$cfg.err" & ;;
  esac
  if [ "$cfg" != source ]; then wait_mount || { echo "bench: $cfg did not mount" >&2; exit 1; }; fi
  local b d
  b=$(rate if=/dev/zero of="$dir/w" bs=1M count="$N" conv=fsync); rm -f "$dir/w"
  d=$(rate if=/dev/zero of="$dir/w" bs=1M count="$N" oflag=direct); rm -f "$dir/w"
  echo "ROW $r $cfg wbuf $b wdirect $d load $(cut -d' ' -f1 /proc/loadavg)"
  if [ "$cfg" != source ]; then umount "$MNT"; wait; fi
}
echo "# passthrough writes A/B: $(date -u +%FT%TZ), $(nproc) CPUs, $(uname -r), $R rounds of $N MiB"
CF=(source old new)
for r in $(seq 0 $((R - 1))); do
  for i in 0 1 2; do run "${CF[$(((i + r) % 3))]}"; done
done
