#!/usr/bin/env bash
# The one test command (README, .ci/run): formatting, lints, every test, a fuzz smoke run.
# Installs what it needs on a fresh machine first. Options:
#   --quick      skip the fuzz smoke run
#   FUZZ_SECONDS (env, default 30): how long the fuzz smoke run lasts
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    *) echo "scripts/test.sh: unknown option '$arg' (known: --quick)" >&2; exit 2 ;;
  esac
done

step() { printf '\n== %s\n' "$*"; }

step "test dependencies"
# One package-list refresh at most, for whichever installs below need apt.
apt_updated=0
apt_update() { if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi; }
# The integration tests drive the broker with mosquitto's command-line clients too, and
# check that password files made by mosquitto_passwd (package mosquitto) work.
if ! command -v mosquitto_pub >/dev/null 2>&1 || ! command -v mosquitto_sub >/dev/null 2>&1 \
  || ! command -v mosquitto_passwd >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt_update
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto-clients mosquitto >/dev/null
  else
    echo "scripts/test.sh: mosquitto_pub/mosquitto_sub/mosquitto_passwd missing; install mosquitto-clients and mosquitto" >&2
    exit 1
  fi
fi
echo "mosquitto clients: $(command -v mosquitto_pub), $(command -v mosquitto_passwd)"
# ... and Python paho-mqtt 2.x for the MQTT 5.0 features rumqttc cannot exercise
# (tests/paho_v5.rs runs the scripts in tests/paho/).
if ! python3 -c 'import paho.mqtt, sys; sys.exit(paho.mqtt.__version__ < "2")' >/dev/null 2>&1; then
  if ! command -v python3 >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt_update
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-pip >/dev/null
  fi
  if ! command -v python3 >/dev/null 2>&1; then
    echo "scripts/test.sh: python3 missing; install Python 3 (the paho-mqtt tests need it)" >&2
    exit 1
  fi
  # pip of this python3 (a bare `pip` may belong to another interpreter).
  if python3 -m pip --version >/dev/null 2>&1; then
    python3 -m pip install --quiet paho-mqtt==2.1.0
  else
    pip install --quiet paho-mqtt==2.1.0
  fi
fi
echo "paho-mqtt: $(python3 -c 'import paho.mqtt; print(paho.mqtt.__version__)')"
# ... and redis-server + redis-cli for the cluster tests (tests/cluster.rs start their own on
# free ports, also a three-node Redis Cluster made with redis-cli --cluster create).
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt_update
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
  else
    echo "scripts/test.sh: redis-server missing; install Debian's redis-server (the cluster tests need it)" >&2
    exit 1
  fi
fi
echo "redis-server: $(redis-server --version | cut -d' ' -f3)"
# ... and, for MQTT over WebSocket (tests/websocket/, tests/paho/websocket.py), MQTT.js under
# Node and in headless Chromium: Debian's chromium driven by playwright-core (no browser download).
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt_update
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "scripts/test.sh: /usr/bin/chromium missing; install Debian's chromium (the browser WebSocket test needs it)" >&2
    exit 1
  fi
fi
if [ ! -d tests/websocket/node_modules ] \
  || [ tests/websocket/package-lock.json -nt tests/websocket/node_modules/.package-lock.json ]; then
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "scripts/test.sh: node/npm missing; install Node.js 20+ and npm (tests/websocket needs them)" >&2
    exit 1
  fi
  (cd tests/websocket && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
echo "websocket clients: MQTT.js $(node -p 'require("./tests/websocket/node_modules/mqtt/package.json").version'), $(/usr/bin/chromium --version 2>/dev/null)"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast
  # nextest does not run doctests.
  cargo test --locked --doc
else
  cargo test --locked
fi

step "loom models of the mesh ring and doorbell"
LOOM_MAX_PREEMPTIONS=2 RUSTFLAGS="--cfg shardmq_loom" CARGO_TARGET_DIR=target/loom \
  cargo test --locked --release --lib mesh

if [ "$quick" = 1 ]; then
  echo "(fuzz smoke run skipped: --quick)"
  exit 0
fi

step "fuzz smoke run (${FUZZ_SECONDS:-30}s per target)"
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "no nightly toolchain on this machine: fuzz smoke run skipped (cargo-fuzz needs nightly)"
  exit 0
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz
fi
for target in $(cd fuzz && cargo +nightly fuzz list); do
  mkdir -p "fuzz/corpus/$target"
  # Committed seeds (valid and malformed packets) start the corpus.
  if [ -d "fuzz/seeds/$target" ]; then cp -n "fuzz/seeds/$target"/* "fuzz/corpus/$target/" 2>/dev/null || true; fi
  (cd fuzz && cargo +nightly fuzz run "$target" -- \
      -max_total_time="${FUZZ_SECONDS:-30}" -print_final_stats=0 2>&1 | grep -E '^(Done|SUMMARY|==)|panicked' || true)
  # libFuzzer exits non-zero and writes an artifact on a crash.
  if ls "fuzz/artifacts/$target"/crash-* >/dev/null 2>&1; then
    echo "fuzz target $target crashed; reproduce with: cd fuzz && cargo +nightly fuzz run $target fuzz/artifacts/$target/<file>" >&2
    exit 1
  fi
done
echo "fuzz smoke run: no crash"
