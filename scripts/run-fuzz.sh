#!/usr/bin/env bash
# Runs each libFuzzer target of a KVTIER_FUZZ build for SECONDS, keeping its
# corpus in BUILD_DIR/fuzz-corpus/<target> between runs (seeded on the first)
# and any input that fails a check in BUILD_DIR/fuzz-artifacts/.
# Usage: scripts/run-fuzz.sh BUILD_DIR SECONDS
set -euo pipefail
build="${1:?build dir}"
seconds="${2:?seconds per target}"
mapfile -t targets < <(find "$build/fuzz" -maxdepth 1 -type f -name 'fuzz_*' -executable \
  -printf '%f\n' | sort)
if [ ${#targets[@]} -eq 0 ]; then
  echo "run-fuzz: no fuzz targets in $build/fuzz (build the fuzz_all target first)" >&2
  exit 1
fi
mkdir -p "$build/fuzz-artifacts"
failed=()
for t in "${targets[@]}"; do
  corpus="$build/fuzz-corpus/$t"
  mkdir -p "$corpus"
  echo "== $t: ${seconds}s, corpus $corpus"
  if ! ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
      "$build/fuzz/$t" -max_total_time="$seconds" -print_final_stats=1 \
      -artifact_prefix="$build/fuzz-artifacts/$t-" "$corpus" 2>"$build/fuzz-artifacts/$t.log"; then
    failed+=("$t")
    tail -40 "$build/fuzz-artifacts/$t.log"
  fi
  grep -E "^stat::(number_of_executed_units|new_units_added)|^Done" "$build/fuzz-artifacts/$t.log" || true
  echo "   corpus: $(find "$corpus" -type f | wc -l) inputs"
done
if [ ${#failed[@]} -ne 0 ]; then
  echo "run-fuzz: failed: ${failed[*]} (inputs in $build/fuzz-artifacts; replay one with build/fuzz/<target> FILE)"
  exit 1
fi
echo "run-fuzz: ${#targets[@]} targets, ${seconds}s each, no failed check"
