#!/usr/bin/env bash
# The standard benchmark matrix: shardmq against other brokers, side by side, in one run.
#
#   scripts/bench.sh [--duration S] [--warmup S] [--quick] [--shards N] [--out DIR]
#                    [--only NAME[,NAME]] [--broker 'NAME=COMMAND with {port}'] ...
#
# Cells (64 B payloads unless noted), each once at full speed and once at a fixed moderate
# rate (latency at equal load):
#   fanin 50->1 QoS 0 | fanout 1->50 QoS 0 | pairs 100 QoS 1 | pairs 100 QoS 0 1 KiB | conn 5000
# Brokers: shardmq (target/release, --shards 2), mosquitto and rumqttd when installed
# (`apt-get install mosquitto`, `cargo install rumqttd`), and any --broker given. Each run
# starts its broker fresh (so peak RSS belongs to that cell) and the brokers take turns
# cell by cell, so machine drift hits all alike. The load comes from `shardmq bench`.
#
# Writes perf/results/<date>/{results.jsonl,table.md,chart.svg} and prints the table.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=10 warmup=2 shards=2 out="" only="" extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --quick) duration=3 warmup=1; shift ;;
    --shards) shards=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --broker) extra+=("$2"); shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

cargo build --release --quiet
bin=$PWD/target/release/shardmq
out=${out:-perf/results/$(date +%Y-%m-%d)}
mkdir -p "$out"
work=$(mktemp -d)
trap 'stop_broker; rm -rf "$work"' EXIT
results=$out/results.jsonl
: > "$results"

# Broker name -> start command ({port} is replaced).
declare -A start
order=(shardmq)
# A fresh data directory per run, like the fresh process.
start[shardmq]="$bin --listen 127.0.0.1:{port} --shards $shards --log-level warn --data-dir $work/shardmq-data-{port}"
if command -v mosquitto >/dev/null; then
  printf 'listener @PORT@ 127.0.0.1\nallow_anonymous true\n' > "$work/mosquitto.conf.in"
  order+=(mosquitto)
  start[mosquitto]="sh -c 'sed s/@PORT@/{port}/ $work/mosquitto.conf.in > $work/mosquitto-{port}.conf; exec mosquitto -c $work/mosquitto-{port}.conf'"
fi
rumqttd_bin=$(command -v rumqttd || true)
[ -z "$rumqttd_bin" ] && [ -x "$HOME/.cargo/bin/rumqttd" ] && rumqttd_bin=$HOME/.cargo/bin/rumqttd
if [ -n "$rumqttd_bin" ]; then
  cat > "$work/rumqttd.toml.in" <<'TOML'
id = 0
[router]
id = 0
max_connections = 20000
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:@PORT@"
next_connection_delay_ms = 1
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 100
    dynamic_filters = true
TOML
  order+=(rumqttd)
  start[rumqttd]="sh -c 'sed s/@PORT@/{port}/ $work/rumqttd.toml.in > $work/rumqttd-{port}.toml; exec $rumqttd_bin -q -c $work/rumqttd-{port}.toml'"
fi
for b in "${extra[@]}"; do
  name=${b%%=*}
  order+=("$name")
  start[$name]=${b#*=}
done
if [ -n "$only" ]; then
  IFS=, read -r -a order <<< "$only"
fi

broker_pid=""
stop_broker() {
  if [ -n "$broker_pid" ]; then
    kill "$broker_pid" 2>/dev/null || true
    wait "$broker_pid" 2>/dev/null || true
    broker_pid=""
  fi
}

port=19000
start_broker() { # name -> sets broker_pid, port
  port=$((port + 1))
  local cmd=${start[$1]//\{port\}/$port}
  eval "exec $cmd" > "$work/$1.log" 2>&1 &
  broker_pid=$!
  for _ in $(seq 100); do
    if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "bench.sh: $1 did not start listening on $port; its log:" >&2
  cat "$work/$1.log" >&2
  return 1
}

# label | bench arguments at full speed | fixed rate
cells=(
  "fanin 50->1 QoS 0|fanin -P 50 -S 1 -q 0 -s 64|20000"
  "fanout 1->50 QoS 0|fanout -P 1 -S 50 -q 0 -s 64|1000"
  "pairs 100 QoS 1|pairs -n 100 -q 1 -s 64|10000"
  "pairs 100 QoS 0 1 KiB|pairs -n 100 -q 0 -s 1024|10000"
  "conn 5000 idle|conn -n 5000|2000"
)

for cell in "${cells[@]}"; do
  IFS='|' read -r label args rate <<< "$cell"
  for mode in full fixed; do
    for name in "${order[@]}"; do
      [ -n "${start[$name]:-}" ] || { echo "bench.sh: no start command for $name" >&2; exit 2; }
      start_broker "$name"
      rate_args=()
      [ "$mode" = fixed ] && rate_args=(--rate "$rate")
      echo "== $label, $mode, $name" >&2
      set +e
      line=$("$bin" bench $args -p "$port" -d "$duration" --warmup "$warmup" \
               --broker-pid "$broker_pid" --quiet "${rate_args[@]}" | tee /dev/stderr | tail -1)
      set -e
      stop_broker
      if [ "${line:0:1}" = "{" ]; then
        printf '{"broker":"%s","cell":"%s","mode":"%s","run":%s}\n' "$name" "$label" "$mode" "$line" >> "$results"
      else
        printf '{"broker":"%s","cell":"%s","mode":"%s","run":null}\n' "$name" "$label" "$mode" >> "$results"
      fi
    done
  done
done

python3 scripts/bench_report.py "$results" "$out" \
  --note "$(nproc) cores, $(uname -r), shardmq --shards $shards, ${duration} s per run after ${warmup} s warm-up, $(date -u +%Y-%m-%dT%H:%MZ)"
