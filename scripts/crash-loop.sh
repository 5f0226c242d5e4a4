#!/usr/bin/env bash
# Crash-safety loop (issue 11; not run in CI): kill -9 shardmq again and again under QoS 1/2
# traffic to persistent sessions, restart it on the same data directory, and check that
# nothing it acknowledged was lost. The work is done by scripts/crash-loop.py.
#
#   scripts/crash-loop.sh [--rounds N (20)] [--shards N (2)] [--rate R (100)] [--bin PATH]
#                         [--seed S] [--keep]
#
# Each round: the broker (persistence on, --durability sync: QoS 1/2 acknowledged only once
# fsynced) serves 4 publishers (QoS 1/2 x MQTT 3.1.1/5.0, two with persistent sessions whose
# unacknowledged messages paho resends after the restart) and 8 persistent-session subscribers
# (QoS 1/2, half of them offline during the traffic); SIGKILL after a random 0.3-4 s; restart;
# the subscribers resume their sessions (in a third of the rounds the broker is killed again
# while they take their backlog, and restarted) and collect. Prints every round and a summary
# (rounds, kills, acknowledged, delivered, lost, duplicates by QoS). Exit status 1 when an
# acknowledged message was lost, a QoS 2 message arrived twice, a session did not survive,
# or a payload was damaged; 2 on bad arguments.
#
# The broker is target/release/shardmq (built first with `cargo build --release`; honours
# CARGO_TARGET_DIR), or --bin PATH (no build). The broker is stopped on exit, whatever
# happens; the run is bounded by `timeout` (30 s a round + 2 min). --keep keeps the
# temporary directory (data, broker.log) and prints its path; it is also kept on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=20 shards=2 rate=100 bin="" seed="" keep=0
die() { echo "crash-loop.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=${2:?--rounds needs a value}; shift 2 ;;
    --shards) shards=${2:?--shards needs a value}; shift 2 ;;
    --rate) rate=${2:?--rate needs a value}; shift 2 ;;
    --bin) bin=${2:?--bin needs a path}; shift 2 ;;
    --seed) seed=${2:?--seed needs a value}; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer, not '$rounds'"
[[ $shards =~ ^[1-9][0-9]*$ ]] || die "--shards must be a positive integer, not '$shards'"
[[ $rate =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--rate must be a number, not '$rate'"
python3 -c 'import paho.mqtt.client' 2>/dev/null \
  || die "python3 with paho-mqtt 2.x is needed (python3 -m pip install paho-mqtt==2.1.0)"

if [ -z "$bin" ]; then
  cargo build --release --quiet
  bin=${CARGO_TARGET_DIR:-target}/release/shardmq
fi
[ -x "$bin" ] || die "no broker binary at $bin"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/shardmq-crash.XXXXXX")
py_pid="" status=1
cleanup() {
  [ -n "$py_pid" ] && kill "$py_pid" 2>/dev/null && wait "$py_pid" 2>/dev/null || true
  # crash-loop.py stops its broker itself; this catches one it could not (killed hard).
  if [ -f "$tmp/broker.pid" ]; then
    pid=$(cat "$tmp/broker.pid")
    if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$(basename "$bin" | cut -c1-15)" ]; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  if [ "$keep" = 1 ] || [ "$status" != 0 ]; then
    echo "crash-loop.sh: data and broker log kept in $tmp"
  else
    rm -rf "$tmp"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bound=$((rounds * 30 + 120))
set +e
timeout --signal=TERM --kill-after=15 "$bound" python3 scripts/crash-loop.py --bin "$bin" \
  --dir "$tmp" --rounds "$rounds" --shards "$shards" --rate "$rate" ${seed:+--seed "$seed"} &
py_pid=$!
wait "$py_pid"
status=$?
py_pid=""
set -e
[ "$status" = 124 ] && echo "crash-loop.sh: crash-loop.py did not finish within $bound s" >&2
exit "$status"
