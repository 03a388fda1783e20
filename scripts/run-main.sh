#!/usr/bin/env bash
# The main job: starts kvtierd on the embedded default (Unix socket only; data
# dir ./.kvtier-data with the socket in it; NVMe tier in ./.kvtier-data/nvme)
# but with a 64 MiB DRAM tier, so that the demo's conversations outgrow DRAM
# and older chunks are served from NVMe; waits until it is ready, runs the
# multi-turn chat demo through it (kvtier::Client over the Unix socket and the
# shared arena), shows the daemon's statistics for both tiers, then keeps
# serving until Ctrl-C (SIGINT/SIGTERM drain the daemon, which writes its NVMe
# index snapshot and exits 0). A later run finds the NVMe chunks again.
#
#   scripts/run-main.sh [BUILD_DIR] [--exit-after-demo]
#
# Environment: KVTIER_DATA_DIR (default ./.kvtier-data), KVTIER_HTTP (metrics
# listener, default 127.0.0.1:9464), KVTIER_DRAM (DRAM tier, default 64MiB
# here), KVTIER_DEMO_CONVERSATIONS (default 16), and every KVTIER_* variable
# kvtierd reads (docs/daemon.md).
set -euo pipefail
build_dir="${1:-build}"
mode="${2:-serve}"
kvtierd="$build_dir/src/server/kvtierd"
kvtier="$build_dir/src/cli/kvtier"
data_dir="${KVTIER_DATA_DIR:-./.kvtier-data}"
http="${KVTIER_HTTP:-127.0.0.1:9464}"
dram="${KVTIER_DRAM:-64MiB}"
conversations="${KVTIER_DEMO_CONVERSATIONS:-16}"
mkdir -p "$data_dir"
socket="$data_dir/kvtierd.sock"
log="$data_dir/kvtierd.log"

"$kvtierd" --data-dir "$data_dir" --socket "$socket" --http "$http" --dram "$dram" 2>"$log" &
daemon=$!
stop_daemon() {
  if kill -0 "$daemon" 2>/dev/null; then
    kill -TERM "$daemon" 2>/dev/null || true
    wait "$daemon" 2>/dev/null || true
  fi
}
trap 'stop_daemon; exit 0' INT TERM
trap 'stop_daemon' EXIT

# Ready when it answers over its socket.
for _ in $(seq 1 300); do
  if ! kill -0 "$daemon" 2>/dev/null; then
    echo "run-main: kvtierd did not start:" >&2
    cat "$log" >&2
    exit 1
  fi
  if "$kvtier" stats --socket "$socket" >/dev/null 2>&1; then break; fi
  sleep 0.1
done
if ! "$kvtier" stats --socket "$socket" >/dev/null 2>&1; then
  echo "run-main: kvtierd is not answering on $socket; its log:" >&2
  cat "$log" >&2
  exit 1
fi
bound=$(grep -o '"http":"[^"]*"' "$log" | head -1 | cut -d'"' -f4)
echo "kvtierd is ready: socket $socket, metrics http://${bound:-$http}/metrics, log $log"
echo

"$kvtier" demo --socket "$socket" --conversations "$conversations"
echo
"$kvtier" stats --socket "$socket"

if [ "$mode" = "--exit-after-demo" ]; then
  exit 0
fi
echo
echo "kvtierd keeps serving on $socket (try: $kvtier stats --socket $socket)."
echo "Press Ctrl-C to stop it."
wait "$daemon"
