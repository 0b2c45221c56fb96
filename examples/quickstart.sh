#!/usr/bin/env bash
# Start Caviar on the embedded default (local Ray head on 127.0.0.1 + API on 127.0.0.1:8000 + SQLite),
# submit the quick digits study, follow it with a progress bar and print the best configuration.
# The API keeps running afterwards (its PID is printed) so you can explore; the Ray dashboard is at
# http://127.0.0.1:8265. Stop with: kill <pid>; .venv/bin/ray stop
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
URL=${CAVIAR_URL:-http://127.0.0.1:8000}
if ! curl -fsS "$URL/healthz" >/dev/null 2>&1; then
  mkdir -p "${CAVIAR_DATA_DIR:-$HOME/.caviar}"
  nohup "$BIN/caviar" serve > "${CAVIAR_DATA_DIR:-$HOME/.caviar}/serve.log" 2>&1 &
  pid=$!
  echo "caviar serve started (pid $pid, log ${CAVIAR_DATA_DIR:-$HOME/.caviar}/serve.log)"
  for _ in $(seq 120); do
    curl -fsS "$URL/healthz" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { echo "error: caviar serve exited; see its log" >&2; exit 2; }
    sleep 1
  done
fi
"$BIN/caviar" submit examples/digits_quick.yaml --wait --url "$URL"
