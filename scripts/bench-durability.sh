#!/usr/bin/env bash
# QoS 1 to persistent sessions: shardmq in memory, with durability "relaxed" and "sync",
# side by side in one run (the brokers take turns round by round, so machine drift hits all).
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
  for mode in memory relaxed sync; do
    rm -rf "$data/store"
    case $mode in
      memory) flags=(--no-persistence) ;;
      *) flags=(--data-dir "$data/store" --durability "$mode") ;;
    esac
    "$bin" --listen "127.0.0.1:$port" --shards "$shards" --no-pin "${flags[@]}" --log-level warn &
    pid=$!
    sleep 0.5
    echo "== round $r: $mode"
    "$bin" bench pairs -n "$pairs" -q 1 --persistent -p "$port" -d "$duration" --warmup 1 \
      --broker-pid "$pid" || true
    kill "$pid"
    wait "$pid" 2>/dev/null || true
  done
done
