#!/usr/bin/env bash
# Hunts rare divergences of the resync compare engine: runs the
# convergence test (random trees, a full compare while three live writers
# change the primary) on fresh seeds, several test processes at once so
# that they load the CPUs as CI does (without load it almost never fails).
# A failing batch keeps its log and the trace of every op (TANDEM_COMPARE_LOG).
#
#   scripts/converge-hunt.sh [-j JOBS] [-n BATCHES] [-s FIRST_SEED] [-w] [-o DIR]
#
#   -j  test processes at once (default 3)
#   -n  batches of 30 seeds per process (default 20: 600 seeds each)
#   -s  first seed (default: from the clock)
#   -w  every fix freezes everything (the agent's fallback), not one file
#   -o  where logs and traces go (default /tmp/converge-hunt)
#
# Run it after a change to the compare engine, the applier or the FUSE
# layer's locking. It prints each failure as it happens and a summary;
# it exits 1 if any batch failed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

jobs=3 batches=20 first=$(( $(date +%s) % 1000000 * 100 )) whole="" out=/tmp/converge-hunt
while getopts "j:n:s:wo:" opt; do
  case $opt in
    j) jobs=$OPTARG ;;
    n) batches=$OPTARG ;;
    s) first=$OPTARG ;;
    w) whole=1 ;;
    o) out=$OPTARG ;;
    *) sed -n '2,17p' "$0" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
bin="$out/compare.test"
go test -c -o "$bin" ./internal/replica/compare
freeze=1
[ -n "$whole" ] && freeze=0
echo "seeds from $first, $jobs processes × $batches batches of 30; file freezes: $freeze; output in $out"

# Each job runs its batches in its own directory (traces are named by
# seed in TMPDIR), seeds first + (batch * jobs + job) * 30 on.
job() {
  local j=$1 b s dir rc
  for ((b = 0; b < batches; b++)); do
    s=$((first + (b * jobs + j) * 30))
    dir="$out/$s"
    mkdir -p "$dir"
    rc=0
    TMPDIR="$dir" TANDEM_COMPARE_LOG=1 TANDEM_COMPARE_FREEZE_FILE=$freeze \
      TANDEM_COMPARE_SEED=$s TANDEM_COMPARE_SEEDS=30 \
      timeout 900 "$bin" -test.run 'TestConvergeLive$' -test.count 1 >"$dir/log" 2>&1 || rc=$?
    if [ "$rc" = 0 ]; then
      rm -rf "$dir"
      echo ok >>"$out/results"
    else
      echo "FAIL: seeds $s..$((s + 29)) (rc $rc): $dir/log" | tee -a "$out/results"
    fi
  done
}
: >"$out/results"
pids=()
# Stop the jobs and the test each one runs (timeout passes the signal on).
stop_jobs() {
  local p kids
  for p in "${pids[@]}"; do
    kids=$(pgrep -P "$p" || true)
    kill "$p" 2>/dev/null || true
    [ -n "$kids" ] && kill $kids 2>/dev/null || true
  done
}
trap 'stop_jobs; exit 130' INT TERM
trap stop_jobs EXIT
for ((j = 0; j < jobs; j++)); do
  job "$j" &
  pids+=($!)
done
wait "${pids[@]}"
trap - EXIT INT TERM
ok=$(grep -c '^ok$' "$out/results" || true)
failed=$(grep -c '^FAIL' "$out/results" || true)
echo "$((ok * 30)) seed runs in passing batches, $failed failing batches"
[ "$failed" = 0 ]
