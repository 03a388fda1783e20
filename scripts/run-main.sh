#!/usr/bin/env bash
# The main job on the embedded default: the embedded cache (DRAM tier) over a
# multi-turn chat workload, showing prefix reuse.
set -euo pipefail
build_dir="${1:-build}"
exec "$build_dir/src/cli/kvtier" demo
