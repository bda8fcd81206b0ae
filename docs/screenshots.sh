#!/usr/bin/env bash
# Screenshots of MLflow UI pages for the docs, taken by a headless Chromium.
#
#   docs/screenshots.sh STORE_URI OUT_DIR LINK...
#
# Starts the MLflow UI on STORE_URI at 127.0.0.1 (port $PORT, default 5055), takes one
# screenshot per LINK into OUT_DIR (1.png, 2.png, ...; NAME=LINK writes NAME.png) and stops the
# UI. A LINK is a link the sweep prints (http://127.0.0.1:5000/#/experiments/...) or its part
# from '#': it is opened on this script's UI. For example, after a sweep:
#
#   docs/screenshots.sh sqlite:///$PWD/runs/mlflow.db /tmp/shots \
#     "runs=http://127.0.0.1:5000/#/experiments/1/runs?viewStateShareKey=...&workflowType=machine_learning"
#
# Needs Chromium (Debian: apt-get install chromium) and the project's environment (uv sync).
# For the docs' pictures only: neither the tests nor CI run it.
# Environment: PORT (5055), WINDOW (1920,1000), MLFLOW (.venv/bin/mlflow), CHROMIUM (chromium),
# WAIT_S (how long the UI may take to start, 180).
set -euo pipefail

if [[ $# -lt 3 ]]; then
    sed -n '2,10s/^# \{0,1\}//p' "$0" >&2
    exit 2
fi
store=$1
out=$2
shift 2
port=${PORT:-5055}
address="http://127.0.0.1:$port"
mlflow=${MLFLOW:-$(dirname "$0")/../.venv/bin/mlflow}
chromium=${CHROMIUM:-chromium}
mkdir -p "$out"
work=$(mktemp -d)

# the UI in a process group of its own (set -m), so that stopping it stops its workers too;
# one worker and no job runner: a UI to look at, not a server
set -m
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false "$mlflow" ui --backend-store-uri "$store" \
    --host 127.0.0.1 --port "$port" --workers 1 >"$work/ui.log" 2>&1 &
ui=$!
set +m

stop_ui() {
    kill -TERM -- "-$ui" 2>/dev/null || return 0
    for _ in $(seq 20); do
        kill -0 -- "-$ui" 2>/dev/null || return 0
        sleep 1
    done
    kill -KILL -- "-$ui" 2>/dev/null || true
}
trap 'stop_ui; rm -rf "$work"' EXIT

for ((waited = 0; ; waited++)); do
    if curl -sf "$address/health" >/dev/null; then
        break
    fi
    if ! kill -0 "$ui" 2>/dev/null || ((waited >= ${WAIT_S:-180})); then
        echo "the MLflow UI did not start on $address; its log:" >&2
        cat "$work/ui.log" >&2
        exit 1
    fi
    sleep 1
done

n=0
for arg in "$@"; do
    n=$((n + 1))
    name=$n
    link=$arg
    if [[ $arg =~ ^([A-Za-z0-9_.-]+)=(.*)$ ]]; then
        name=${BASH_REMATCH[1]}
        link=${BASH_REMATCH[2]}
    fi
    case $link in
        *"#/"*) url="$address/#/${link#*#/}" ;;
        *) url="$address/${link#/}" ;;
    esac
    profile=$(mktemp -d -p "$work")
    # a fresh profile per page: no view state left in the browser's storage by the one before
    timeout 120 "$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --user-data-dir="$profile" --window-size="${WINDOW:-1920,1000}" \
        --virtual-time-budget=15000 --screenshot="$out/$name.png" "$url" \
        >"$work/chromium.log" 2>&1 || {
        echo "no screenshot of $url; Chromium's log:" >&2
        cat "$work/chromium.log" >&2
        exit 1
    }
    echo "$out/$name.png  $url"
done
