#!/usr/bin/env bash
# Compares Postern's 1:1 delivery with Mosquitto's QoS 1 delivery, same
# traffic, same machine, back to back:
#
#   scripts/bench-delivery.sh                                  # defaults: 50 pairs, 200000 × 1 KiB
#   scripts/bench-delivery.sh --pairs 10 --messages 20000      # a quick pass
#   scripts/bench-delivery.sh --rate 5000                      # latency at a fixed offered load
#
# ARGS go unchanged to `postern bench delivery` and `postern bench mqtt`
# (--pairs, --messages, --size, --rate, --window; --synchronous only affects
# Postern). Builds the release binary, starts a private Mosquitto on a free
# loopback port (a system Mosquitto on 1883 is left alone), runs both
# benches, stops it, and prints both JSON lines and the ratios
# postern/mosquitto for messages/s and p99 latency.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

mosquitto_bin="$(command -v mosquitto || true)"
if [ -z "$mosquitto_bin" ] && [ -x /usr/sbin/mosquitto ]; then
    mosquitto_bin=/usr/sbin/mosquitto
fi
if [ -z "$mosquitto_bin" ]; then
    echo "mosquitto is not installed; on Debian/Ubuntu: sudo apt-get install mosquitto" >&2
    exit 1
fi

echo "Building the release binary…" >&2
cargo build --release -p postern >&2
postern="${CARGO_TARGET_DIR:-$root/target}/release/postern"

tmp="$(mktemp -d)"
mosquitto_pid=""
cleanup() {
    if [ -n "$mosquitto_pid" ] && kill -0 "$mosquitto_pid" 2>/dev/null; then
        kill "$mosquitto_pid" 2>/dev/null || true
        wait "$mosquitto_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

# A free loopback port: bind port 0 and let the kernel choose.
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

# Mosquitto's persistence is a periodic snapshot: with `persistence true` the
# broker keeps retained messages, persistent sessions, subscriptions and
# queued/in-flight QoS 1 messages in memory and writes all of it to
# mosquitto.db every `autosave_interval` seconds (and on shutdown). There is
# no write, let alone an fsync, per message: a PUBACK only means the broker
# holds the message in memory, and a crash loses up to a snapshot interval.
# Postern acknowledges a send only after the SQLite transaction holding it has
# committed (group commit per batch, fsync with synchronous=full).
# autosave_interval 1 is the most frequent snapshot Mosquitto offers.
#
# max_inflight_messages 0 and max_queued_messages 0 remove Mosquitto's
# per-client limits (default 20 in flight, 1000 queued) so it can carry the
# same windows as Postern without dropping or throttling. set_tcp_nodelay
# matches Postern, which disables Nagle on its sockets.
cat >"$tmp/mosquitto.conf" <<EOF
listener $port 127.0.0.1
allow_anonymous true
persistence true
persistence_location $tmp/
autosave_interval 1
max_inflight_messages 0
max_queued_messages 0
set_tcp_nodelay true
log_dest file $tmp/mosquitto.log
# Run as the invoking user (as root Mosquitto would switch to "mosquitto",
# which cannot write to this private directory).
user $(id -un)
EOF

"$mosquitto_bin" -c "$tmp/mosquitto.conf" &
mosquitto_pid=$!
for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        break
    fi
    if ! kill -0 "$mosquitto_pid" 2>/dev/null; then
        echo "mosquitto failed to start:" >&2
        cat "$tmp/mosquitto.log" >&2 || true
        exit 1
    fi
    sleep 0.1
done
echo "Mosquitto $("$mosquitto_bin" -h 2>/dev/null | head -1 | awk '{print $3}') listening on 127.0.0.1:$port (pid $mosquitto_pid)" >&2

echo "== postern bench delivery $*" >&2
"$postern" bench delivery "$@" | tee "$tmp/postern.out" >&2
echo "== postern bench mqtt --addr 127.0.0.1:$port $*" >&2
"$postern" bench mqtt --addr "127.0.0.1:$port" --server-pid "$mosquitto_pid" "$@" | tee "$tmp/mqtt.out" >&2

kill "$mosquitto_pid"
wait "$mosquitto_pid" 2>/dev/null || true
mosquitto_pid=""

postern_json="$(grep '^{' "$tmp/postern.out" | tail -1)"
mqtt_json="$(grep '^{' "$tmp/mqtt.out" | tail -1)"
echo "$postern_json"
echo "$mqtt_json"
python3 - "$postern_json" "$mqtt_json" <<'EOF'
import json, sys
p, m = json.loads(sys.argv[1]), json.loads(sys.argv[2])
def ratio(a, b):
    return a / b if b else float("inf")
print(json.dumps({
    "bench": "delivery-vs-mqtt",
    "messages_per_second_ratio": round(ratio(p["messages_per_second"], m["messages_per_second"]), 3),
    "latency_p99_ratio": round(ratio(p["latency_ms_p99"], m["latency_ms_p99"]), 3),
    "latency_p50_ratio": round(ratio(p["latency_ms_p50"], m["latency_ms_p50"]), 3),
}))
print(
    f"postern/mosquitto: messages/s {p['messages_per_second']:.0f} / {m['messages_per_second']:.0f}"
    f" = {ratio(p['messages_per_second'], m['messages_per_second']):.2f}×;"
    f" p99 {p['latency_ms_p99']:.1f} ms / {m['latency_ms_p99']:.1f} ms"
    f" = {ratio(p['latency_ms_p99'], m['latency_ms_p99']):.2f}×",
)
EOF
