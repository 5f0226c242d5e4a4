#!/usr/bin/env bash
# Soak test (issue 11; not run in CI): starts its own shardmq with persistence on (durability
# sync, a fresh data directory) and the Prometheus endpoint, runs scripts/soak.py against it
# for N minutes of mixed traffic, and exits non-zero when a check fails.
#
#   scripts/soak.sh [--minutes N (10)] [--shards N (2)] [--clients N (8)] [--rate R (150)]
#                   [--store-mib M] [--bin PATH] [--seed S] [--keep]
#
# Traffic: 6 publishers (QoS 0/1/2 x MQTT 3.1.1/5.0, sequence numbers in the payload, R
# messages a second in all); N persistent-session subscribers (QoS 1/2/0 subscriptions) that
# keep disconnecting (cleanly or by dropping the socket), getting taken over by a second
# connection with their client id, and resuming their sessions; 2 clean-session clients that
# come and go. Checks (details in scripts/soak.py): no acknowledged QoS 1/2 message lost for a
# persistent QoS 1/2 subscription, no QoS 2 (or 0) duplicates (QoS 1 duplicates are counted),
# sessions always resumed, takeovers clean, payloads intact, and broker RSS / fds (client
# sockets aside) at the end within +10 % (plus 64 MiB for the store's memtables, see
# soak.py) / +5 % of their values at minute 2 (sampled every 10 s). A summary block ends the
# output.
#
# --store-mib M caps the store's memtables and block cache at M MiB each
# (persistence.write_buffer_mib / cache_mib; defaults 64 / 32), so they are full well before
# minute 2 and the RSS check needs no allowance for them beyond one memtable's worth.
#
# The broker is target/release/shardmq (built first with `cargo build --release`; honours
# CARGO_TARGET_DIR), or --bin PATH (no build). Everything it starts is stopped on exit; the
# whole run is bounded by `timeout` (minutes + 5). --keep keeps the temporary directory
# (broker log, data) and prints its path; it is also kept when a check fails.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=10 shards=2 clients=8 rate=150 bin="" seed="" keep=0 store_mib=
die() { echo "soak.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes=${2:?--minutes needs a value}; shift 2 ;;
    --shards) shards=${2:?--shards needs a value}; shift 2 ;;
    --clients) clients=${2:?--clients needs a value}; shift 2 ;;
    --rate) rate=${2:?--rate needs a value}; shift 2 ;;
    --bin) bin=${2:?--bin needs a path}; shift 2 ;;
    --seed) seed=${2:?--seed needs a value}; shift 2 ;;
    --store-mib) store_mib=${2:?--store-mib needs a value}; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ $minutes =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--minutes must be a number, not '$minutes'"
[[ $shards =~ ^[1-9][0-9]*$ ]] || die "--shards must be a positive integer, not '$shards'"
[[ $clients =~ ^[1-9][0-9]*$ ]] || die "--clients must be a positive integer, not '$clients'"
[[ $rate =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--rate must be a number, not '$rate'"
[[ -z $store_mib || $store_mib =~ ^[1-9][0-9]*$ ]] \
  || die "--store-mib must be a positive integer, not '$store_mib'"
python3 -c 'import paho.mqtt.client' 2>/dev/null \
  || die "python3 with paho-mqtt 2.x is needed (python3 -m pip install paho-mqtt==2.1.0)"

if [ -z "$bin" ]; then
  cargo build --release --quiet
  bin=${CARGO_TARGET_DIR:-target}/release/shardmq
fi
[ -x "$bin" ] || die "no broker binary at $bin"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/shardmq-soak.XXXXXX")
broker_pid="" py_pid="" status=1
cleanup() {
  [ -n "$py_pid" ] && kill "$py_pid" 2>/dev/null || true
  if [ -n "$broker_pid" ] && kill -0 "$broker_pid" 2>/dev/null; then
    kill -TERM "$broker_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$broker_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$broker_pid" 2>/dev/null || true
  fi
  if [ "$keep" = 1 ] || [ "$status" != 0 ]; then
    echo "soak.sh: broker log and data kept in $tmp"
  else
    rm -rf "$tmp"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

config=() allowance=()
if [ -n "$store_mib" ]; then
  printf '[persistence]\nwrite_buffer_mib = %s\ncache_mib = %s\n' "$store_mib" "$store_mib" \
    >"$tmp/shardmq.toml"
  config=(--config "$tmp/shardmq.toml")
  allowance=(--store-allowance "$store_mib")
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" --shards "$shards" \
  --no-pin --data-dir "$tmp/data" --durability sync --log-level warn "${config[@]}" \
  >"$tmp/broker.log" 2>&1 &
broker_pid=$!
for _ in $(seq 100); do
  kill -0 "$broker_pid" 2>/dev/null || { cat "$tmp/broker.log" >&2; die "the broker exited at start-up"; }
  python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$port),0.2).close()" 2>/dev/null && break
  sleep 0.1
done
echo "soak.sh: shardmq pid $broker_pid on 127.0.0.1:$port (metrics :$mport), $shards shards, data $tmp/data"

bound=$(python3 -c "print(int($minutes * 60 + 300))")
set +e
timeout --signal=TERM --kill-after=10 "$bound" python3 scripts/soak.py --port "$port" \
  --metrics-port "$mport" --pid "$broker_pid" --data-dir "$tmp/data" --shards "$shards" \
  --minutes "$minutes" "${allowance[@]}" \
  --clients "$clients" --rate "$rate" ${seed:+--seed "$seed"} &
py_pid=$!
wait "$py_pid"
status=$?
py_pid=""
set -e
if [ "$status" = 124 ]; then
  echo "soak.sh: soak.py did not finish within $bound s" >&2
fi
if ! kill -0 "$broker_pid" 2>/dev/null; then
  echo "soak.sh: the broker died during the run; its log:" >&2
  tail -20 "$tmp/broker.log" >&2
  status=1
elif grep -E ' (ERROR|WARN) ' "$tmp/broker.log" | grep -qv 'open-file limit'; then
  echo "soak.sh: broker warnings/errors (from $tmp/broker.log):"
  grep -E ' (ERROR|WARN) ' "$tmp/broker.log" | grep -v 'open-file limit' | tail -10
fi
exit "$status"
