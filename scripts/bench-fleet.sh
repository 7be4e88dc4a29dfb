#!/usr/bin/env bash
# Fleet throughput on this machine (issue 21): 1 API node and N = 1, 2, 4 workers over a local
# nats-server -js, tiny-sd, fixed steps; jobs/s for each N, the efficiency against N x the
# embedded single-worker throughput, and the NATS overhead for one worker. A measurement, not
# a test. Needs nats-server (apt-get install nats-server) and a release build.
#
#   scripts/bench-fleet.sh [JOBS] [STEPS]        (default 40 jobs of 8 steps)
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${1:-40}
STEPS=${2:-8}
BIN=target/release/beeswax
[ -x "$BIN" ] || cargo build --release -p beeswax
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

# The committed tiny-sd pack.
MANIFESTS=$WORK/packs
mkdir -p "$MANIFESTS"
printf '[pack]\nname = "tiny-sd"\nfamily = "sd1"\npath = "%s"\n' \
    "$PWD/tests/fixtures/models/tiny-sd" > "$MANIFESTS/tiny.toml"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts `beeswax ARGS` in the background and waits for its first stdout line, left in LINE
# (its pid is the last of PIDS).
start() {
    local log=$WORK/$1.log; shift
    "$BIN" "$@" > "$log" 2> "$log.err" &
    PIDS+=($!)
    for _ in $(seq 600); do [ -s "$log" ] && break; sleep 0.1; done
    LINE=$(head -1 "$log")
}

# Submits JOBS native jobs to $1 and waits for all; prints jobs/s.
run_jobs() {
    python3 - "$1" "$JOBS" "$STEPS" <<'PY'
import json, sys, time, urllib.request
base, jobs, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def call(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)
start = time.time()
ids = [call("POST", "/v1/jobs", {"pipeline": "tiny-sd", "prompt": f"bee {i}", "steps": steps,
                                 "seed": i, "width": 64, "height": 64})["id"] for i in range(jobs)]
pending = set(ids)
while pending:
    for i in list(pending):
        s = call("GET", f"/v1/jobs/{i}")["status"]
        if s == "completed":
            pending.discard(i)
        elif s in ("failed", "cancelled"):
            sys.exit(f"job {i} {s}")
    time.sleep(0.05)
print(f"{jobs / (time.time() - start):.3f}")
PY
}

# Embedded: one `beeswax serve`, one worker thread.
start embedded serve --port 0 --manifests "$MANIFESTS" --queue-size 1000 --no-ui --data-dir none
embedded=$(run_jobs "${LINE#beeswax listening on }")
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
echo "embedded, 1 worker thread: $embedded jobs/s"

printf '| workers | jobs/s | efficiency vs N x embedded |\n|---|---|---|\n'
for n in 1 2 4; do
    port=$(free_port)
    nats-server -js -a 127.0.0.1 -p "$port" -sd "$WORK/nats-$n" > /dev/null 2>&1 &
    NATS_PID=$!; PIDS+=($NATS_PID)
    sleep 0.5
    url=nats://127.0.0.1:$port
    start api-$n serve --port 0 --manifests "$MANIFESTS" --nats "$url" --queue-size 1000 --no-ui
    api=${LINE#beeswax listening on }
    worker_pids=()
    for w in $(seq "$n"); do
        start worker-$n-$w worker --manifests "$MANIFESTS" --nats "$url"
        worker_pids+=("${PIDS[-1]}")
    done
    rate=$(run_jobs "$api")
    eff=$(python3 -c "print(f'{$rate / ($n * $embedded):.2f}')")
    echo "| $n | $rate | $eff |"
    [ "$n" = 1 ] && one=$rate
    kill "${worker_pids[@]}" "$NATS_PID" 2>/dev/null || true
    kill "${PIDS[-$((n + 1))]}" 2>/dev/null || true
    sleep 0.5
done
python3 -c "print(f'NATS mode vs embedded, 1 worker: {100 * ($one / $embedded - 1):+.1f}% jobs/s')"
echo "(on $(nproc) cores: workers share them, so N > cores adds no compute; $(uptime | sed 's/.*load/load/'))"
