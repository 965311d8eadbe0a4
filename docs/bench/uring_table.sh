#!/bin/bash
# The serving table of issue 11 (docs/BENCHMARKS.md): libfuse multi-threaded, fuser,
# and ours (benchfs) over /dev/fuse, over io_uring and with the transport `auto`,
# side by side in one session, interleaved over rounds: each round runs the three
# sets (unpinned, pinned, direct IO) and every configuration in a rotated order, so
# that a change of machine load spreads over all of them.
#
# usage: docs/bench/uring_table.sh [ROUNDS=3] [REPS=3] [SECS=3]
#   QUICK=1: 1 round, 1 rep of 1 s (a smoke run that proves the harness, not figures).
#   env: PEERS   the shared peers' folder (default ../shared/peers beside the
#                repository); copied with `cp -r` to $WORK/peers and built there as
#                its README says (libfuse3-dev and pkg-config installed with apt-get
#                if missing);
#        WORK    scratch (default /tmp/uring-table): mountpoint, builds, logs;
#        OUT     where the raw RESULT files and the summary go (default
#                $WORK/results-DATE);
#        CONFIGS configurations (default "lf_mt fu_st fu_mt ours_dev ours_uring
#                ours_auto"): lf_st lf_mt (libfuse single / MT_THREADS threads),
#                fu_st fu_mt (fuser), ours_dev (benchfs --transport dev-fuse
#                --mt=MT_THREADS), ours_uring (--transport io-uring), ours_auto
#                (--transport auto --mt=MT_THREADS); ours_dev_before and
#                ours_auto_before: the same two served by the benchfs binary
#                BEFORE names (an older build, for a before/after in one run);
#        SETS    which sets (default "unpinned pinned direct"): unpinned = stat1
#                stat2 orc1 orc2 seq1 seq2; pinned = the same under PIN_CMD (peer
#                and driver on one CPU); direct = seq1 seq2 with --direct-io;
#        PIN_CMD the pinned set's prefix (default "taskset -c 0");
#        MT_THREADS (4), TIMEOUT (entry/attr timeout given to every peer, 0);
#        BEFORE  a benchfs binary for the *_before configurations (copied).
# Needs root, /dev/fuse and, for ours_uring, the fuse module parameter
# enable_uring on (`echo Y > /sys/module/fuse/parameters/enable_uring` before
# mounting); without it ours_uring is skipped with a note and ours_auto serves
# through /dev/fuse.
#
# Output: $OUT/R<round><set letter>_<set>_to<TIMEOUT>.txt, the peers' run_all.sh
# format (RESULT lines from fsbench, `#` notes with the command, the load average
# and, for ours, the transport that served: io_uring when fuse-uring-* threads
# exist); $OUT/env.txt; $OUT/summary.md (the peers' summarize.py, one table per
# set, a row per configuration and round). The summary is also printed on stdout;
# progress goes to stderr. With the defaults a round takes about 15-20 minutes
# (QUICK=1: about 2 minutes after the builds). In the pinned set ours_uring's queue
# threads still pin themselves to their own CPUs; the driver's requests all go to
# CPU 0's queue (docs/bench/2026-12-06-serving-io-uring.md), and ours_auto sees one
# usable CPU and serves through /dev/fuse.
#
# Not here: the handoff stall and SIGKILL -> serving again over io_uring, measured
# like those over /dev/fuse by the examples `handoff_bench [FILES] [HANDOFFS]
# --transport io-uring` and `recovery_bench [FILES] [KILLS] --transport io-uring`
# (release builds). Until the library can hand off and recover io_uring mounts they
# stop before mounting, with the reason, and exit 1.
set -u
if [ "${QUICK:-0}" = 1 ]; then
  ROUNDS=1; REPS=1; SECS=1
else
  ROUNDS=${1:-3}; REPS=${2:-3}; SECS=${3:-3}
fi
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PEERS=${PEERS:-$(cd "$ROOT/.." && pwd)/shared/peers}
WORK=${WORK:-/tmp/uring-table}
OUT=${OUT:-$WORK/results-$(date -u +%Y%m%dT%H%M%SZ)}
CONFIGS=${CONFIGS:-"lf_mt fu_st fu_mt ours_dev ours_uring ours_auto"}
SETS=${SETS:-"unpinned pinned direct"}
PIN_CMD=${PIN_CMD:-taskset -c 0}
MT_THREADS=${MT_THREADS:-4}
TO=${TIMEOUT:-0}
MNT=$WORK/mnt
P=$WORK/peers
FSB=$P/fsbench/target/release/fsbench
LF=$P/libfuse_peer/libfuse_peer
FU=$P/fuser_peer/target/release/fuser_peer
OURS=$WORK/benchfs
OURS_BEFORE=$WORK/benchfs-before
PARAM=/sys/module/fuse/parameters/enable_uring
SRV=

die() { echo "uring_table.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root"
[ -c /dev/fuse ] || die "needs /dev/fuse"
[ -d "$PEERS/fsbench" ] || die "no fsbench in $PEERS (set PEERS)"

# The fusectl connection of the mount at $MNT, from the mount table (a stat of a
# hung mount would hang too).
conn_of() { awk -v m="$MNT" '$5 == m { split($3, d, ":"); print d[2] }' /proc/self/mountinfo | tail -1; }

# Leaves no mount and no server behind, also after a failure or ^C.
cleanup() {
  if mountpoint -q "$MNT"; then
    umount "$MNT" 2>/dev/null || {
      c=$(conn_of)
      [ -n "$c" ] && echo 1 > "/sys/fs/fuse/connections/$c/abort" 2>/dev/null
      umount -l "$MNT"
    }
  fi
  [ -n "$SRV" ] && kill "$SRV" 2>/dev/null
  SRV=
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$MNT" "$OUT" || die "cannot make $MNT and $OUT"

# --- builds --------------------------------------------------------------------
echo "# building benchfs (release) and the peers in $P" >&2
(cd "$ROOT" && cargo build --release -q --example benchfs) || die "build benchfs"
# A copy: a build during the runs cannot change what is measured.
cp "$ROOT/target/release/examples/benchfs" "$OURS" || die "copy benchfs"
if [ -n "${BEFORE:-}" ]; then
  cp "$BEFORE" "$OURS_BEFORE" || die "copy $BEFORE"
fi
if ! dpkg -s libfuse3-dev >/dev/null 2>&1 || ! command -v pkg-config >/dev/null; then
  (apt-get update -q && apt-get install -y -q libfuse3-dev pkg-config) >&2 ||
    die "install libfuse3-dev and pkg-config"
fi
[ -d "$P" ] || cp -r "$PEERS" "$P" || die "copy the peers"
make -s -C "$P/libfuse_peer" >&2 || die "build libfuse_peer"
(cd "$P/fuser_peer" && cargo build --release -q) || die "build fuser_peer"
(cd "$P/fsbench" && cargo build --release -q) || die "build fsbench"

uring=$(cat "$PARAM" 2>/dev/null || echo "absent")
{
  echo "# uring_table.sh: $(date -u +%FT%TZ), $(nproc) CPUs, $(uname -r), enable_uring=$uring"
  echo "# rounds $ROUNDS, reps $REPS of ${SECS}s, timeout $TO, configs: $CONFIGS; sets: $SETS; pinned with '$PIN_CMD'"
  echo "# repository $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (with local changes)'), benchfs sha256 $(sha256sum "$OURS" | cut -c1-16)"
  [ -n "${BEFORE:-}" ] && echo "# before: benchfs sha256 $(sha256sum "$OURS_BEFORE" | cut -c1-16)"
  echo "# loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  grep -m1 "model name" /proc/cpuinfo
} | tee "$OUT/env.txt" >&2

# --- one configuration -----------------------------------------------------------
# run LABEL PIN EXTRA ONLY -- COMMAND...: mounts, runs fsbench, unmounts; appends to
# the current RESULT file ($FILE).
run() {
  local label=$1 pin=$2 extra=$3 only=$4; shift 5
  local err="$WORK/$label.stderr"
  # shellcheck disable=SC2086 # $pin and $extra are word lists on purpose
  $pin "$@" $extra 2>"$err" >/dev/null &
  SRV=$!
  for _ in $(seq 200); do
    mountpoint -q "$MNT" && break
    kill -0 "$SRV" 2>/dev/null || break
    sleep 0.05
  done
  if ! mountpoint -q "$MNT"; then
    echo "# $label: mount failed: $(tr '\n' ' ' <"$err")" | tee -a "$FILE" >&2
    kill "$SRV" 2>/dev/null; wait "$SRV" 2>/dev/null; SRV=
    return 1
  fi
  local served=""
  case $label in
    ours*|before*)
      sleep 0.2 # the queue threads start once INIT is answered
      if grep -qs '^fuse-uring' /proc/"$SRV"/task/*/comm; then served=" | served by io_uring"; else served=" | served by /dev/fuse"; fi ;;
  esac
  echo "# $label: $pin $* $extra | loadavg $(cut -d' ' -f1-3 /proc/loadavg)$served" >>"$FILE"
  # shellcheck disable=SC2086
  $pin "$FSB" "$MNT" --label "$label" --server-pid "$SRV" --secs "$SECS" --reps "$REPS" --only "$only" >>"$FILE"
  # /dev/fuse workers at the end (the pool starts one per usable CPU and adds
  # more only while requests are held in the filesystem).
  echo "# $label: fuse-worker threads after the run: $(grep -s '^fuse-worker' /proc/"$SRV"/task/*/comm | wc -l)" >>"$FILE"
  umount "$MNT" || { cleanup; return 1; }
  wait "$SRV"
  SRV=
  sed 's/^/# /' "$err" >>"$FILE"
}

config() {
  local c=$1 pin=$2 extra=$3 only=$4
  case $c in
    lf_st) run "libfuse_st_to$TO" "$pin" "$extra" "$only" -- "$LF" "$MNT" "$TO" ;;
    lf_mt) run "libfuse_mt${MT_THREADS}_to$TO" "$pin" "$extra" "$only" -- "$LF" "$MNT" "$TO" --mt="$MT_THREADS" ;;
    fu_st) run "fuser_st_to$TO" "$pin" "$extra" "$only" -- "$FU" "$MNT" "$TO" ;;
    fu_mt) run "fuser_mt${MT_THREADS}_to$TO" "$pin" "$extra" "$only" -- "$FU" "$MNT" "$TO" --mt="$MT_THREADS" ;;
    ours_dev) run "ours_devfuse_mt${MT_THREADS}_to$TO" "$pin" "$extra" "$only" -- "$OURS" "$MNT" "$TO" --transport=dev-fuse --mt="$MT_THREADS" ;;
    ours_uring)
      if [ "$uring" != Y ]; then
        echo "# ours_uring_to$TO: skipped, enable_uring is $uring" >>"$FILE"
        return 0
      fi
      run "ours_uring_to$TO" "$pin" "$extra" "$only" -- "$OURS" "$MNT" "$TO" --transport=io-uring ;;
    ours_auto) run "ours_auto_mt${MT_THREADS}_to$TO" "$pin" "$extra" "$only" -- "$OURS" "$MNT" "$TO" --transport=auto --mt="$MT_THREADS" ;;
    ours_dev_before | ours_auto_before)
      [ -x "$OURS_BEFORE" ] || die "$c needs BEFORE (a benchfs binary)"
      local t=dev-fuse l=devfuse
      [ "$c" = ours_auto_before ] && t=auto l=auto
      run "before_${l}_mt${MT_THREADS}_to$TO" "$pin" "$extra" "$only" -- "$OURS_BEFORE" "$MNT" "$TO" --transport=$t --mt="$MT_THREADS" ;;
    *) die "unknown configuration $c" ;;
  esac
}

# --- the rounds --------------------------------------------------------------------
read -r -a cfgs <<<"$CONFIGS"
read -r -a sets <<<"$SETS"
for r in $(seq 1 "$ROUNDS"); do
  for i in "${!sets[@]}"; do
    kind=${sets[$(((i + r - 1) % ${#sets[@]}))]}
    case $kind in
      unpinned) letter=A; pin=""; extra=""; only=stat1,stat2,orc1,orc2,seq1,seq2 ;;
      pinned) letter=P; pin=$PIN_CMD; extra=""; only=stat1,stat2,orc1,orc2,seq1,seq2 ;;
      direct) letter=D; pin=""; extra=--direct-io; only=seq1,seq2 ;;
      *) die "unknown set $kind" ;;
    esac
    FILE="$OUT/R${r}${letter}_${kind}_to$TO.txt"
    echo "# round $r, $kind | loadavg $(cut -d' ' -f1-3 /proc/loadavg)" >>"$FILE"
    for j in "${!cfgs[@]}"; do
      c=${cfgs[$(((j + r - 1) % ${#cfgs[@]}))]}
      echo "# round $r/$ROUNDS, $kind, $c" >&2
      config "$c" "$pin" "$extra" "$only" || echo "# $c failed in round $r ($kind)" >&2
    done
  done
done

# --- the summary -------------------------------------------------------------------
{
  cat "$OUT/env.txt"
  for kind in "${sets[@]}"; do
    echo
    echo "## $kind"
    echo
    python3 "$P/summarize.py" "$OUT"/R*_"${kind}"_to"$TO".txt
  done
} >"$OUT/summary.md"
cat "$OUT/summary.md"
echo "# raw RESULT files and summary: $OUT" >&2
