#!/usr/bin/env bash
# QoS 1 to persistent sessions: shardmq in memory, with durability "relaxed" and "sync", and
# mosquitto (when installed) with `persistence true` and a 1 s autosave (it acknowledges before
# saving), side by side in one run (the brokers take turns round by round).
#
#   scripts/bench-durability.sh [--rounds N] [--duration S] [--pairs N] [--shards N]
#
# Each broker starts fresh on an empty data directory; the load is
# `shardmq bench pairs -n N -q 1 --persistent` (publishers and subscribers with persistent
# sessions: every message is appended to the store and removed when acknowledged).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=2 duration=5 pairs=100 shards=2
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --pairs) pairs=$2; shift 2 ;;
    --shards) shards=$2; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "bench-durability.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

cargo build --release --quiet
bin=target/release/shardmq
port=18830
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
for r in $(seq 1 "$rounds"); do
  modes="memory relaxed sync"
  command -v mosquitto >/dev/null 2>&1 && modes="$modes mosquitto"
  for mode in $modes; do
    rm -rf "$data/store"
    port=$((port + 1))
    case $mode in
      memory) flags=(--no-persistence) ;;
      *) flags=(--data-dir "$data/store" --durability "$mode") ;;
    esac
    if [ "$mode" = mosquitto ]; then
      mkdir -p "$data/store"
      printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s/\nautosave_interval 1\nmax_queued_messages 100000\n' \
        "$port" "$data/store" > "$data/mosquitto.conf"
      mosquitto -c "$data/mosquitto.conf" >/dev/null 2>&1 &
    else
      "$bin" --listen "127.0.0.1:$port" --shards "$shards" --no-pin "${flags[@]}" --log-level warn &
    fi
    pid=$!
    sleep 0.5
    echo "== round $r: $mode"
    "$bin" bench pairs -n "$pairs" -q 1 --persistent -p "$port" -d "$duration" --warmup 1 \
      --broker-pid "$pid" || true
    kill "$pid"
    wait "$pid" 2>/dev/null || true
  done
done
