#!/usr/bin/env bash
# Cross-node against same-node, in one run: two shardmq nodes (`--shards 1` each) on one Redis
# (`--redis single`, the default) or on a three-master Redis Cluster (`--redis cluster`), and
# `shardmq bench pairs` with the publishers on node A and the subscribers on node B
# (cross-node) or on A as well (same-node), taking turns round by round.
#
#   scripts/bench-cluster.sh [--redis single|cluster] [--rounds N] [--duration S] [--pairs N]
#                            [--rate R]
#
# Each round runs QoS 0 and QoS 1 at full speed, then QoS 1 at a fixed --rate (default 20000
# msg/s in all) for latency. Needs redis-server and redis-cli (Debian: redis-server).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=single rounds=2 duration=5 pairs=10 rate=20000
while [ $# -gt 0 ]; do
  case "$1" in
    --redis) mode=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --pairs) pairs=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "bench-cluster.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case $mode in single|cluster) ;; *) echo "bench-cluster.sh: --redis single or cluster" >&2; exit 2 ;; esac
for tool in redis-server redis-cli; do
  command -v "$tool" >/dev/null || { echo "bench-cluster.sh: $tool missing (apt-get install -y redis-server)" >&2; exit 1; }
done

cargo build --release --quiet
bin=target/release/shardmq
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

base=26379
if [ "$mode" = single ]; then
  redis-server --port "$base" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" >/dev/null &
  pids+=($!)
  url="redis://127.0.0.1:$base"
else
  for i in 0 1 2; do
    p=$((base + i))
    redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
      --cluster-enabled yes --cluster-port $((p + 100)) --cluster-node-timeout 2000 \
      --cluster-config-file "$dir/nodes-$i.conf" >/dev/null &
    pids+=($!)
  done
  sleep 0.5
  redis-cli --cluster create "127.0.0.1:$base" "127.0.0.1:$((base + 1))" "127.0.0.1:$((base + 2))" \
    --cluster-replicas 0 --cluster-yes >/dev/null
  until redis-cli -p "$base" cluster info | grep -q cluster_state:ok; do sleep 0.2; done
  url="redis+cluster://127.0.0.1:$base,127.0.0.1:$((base + 1))"
fi
sleep 0.5

a=18931 b=18932
for port in $a $b; do
  "$bin" --listen "127.0.0.1:$port" --shards 1 --no-pin --no-persistence --log-level warn \
    --cluster "$url" &
  pids+=($!)
done
sleep 1
echo "redis: $mode ($url); nodes A=127.0.0.1:$a B=127.0.0.1:$b, --shards 1 each"

for r in $(seq 1 "$rounds"); do
  for where in same cross; do
    sub=$a
    [ "$where" = cross ] && sub=$b
    for q in 0 1; do
      echo "== round $r: $where-node, QoS $q, full speed"
      "$bin" bench pairs -n "$pairs" -s 64 -q "$q" -p "$a" --sub-port "$sub" -d "$duration" \
        --warmup 1 || true
    done
    echo "== round $r: $where-node, QoS 1 at $rate msg/s"
    "$bin" bench pairs -n "$pairs" -s 64 -q 1 -r "$rate" -p "$a" --sub-port "$sub" \
      -d "$duration" --warmup 1 || true
  done
done
