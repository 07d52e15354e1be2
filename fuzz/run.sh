#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (default 60 s each) from
# the checked-in seeds, into a scratch corpus, and fails on the first crash,
# leak or timeout libFuzzer reports (its artifact lands in fuzz/artifacts/).
# The machine's toolchain is stable; RUSTC_BOOTSTRAP lets cargo-fuzz pass
# the -Z sanitizer flags it needs (see ../shared/DEPENDENCIES.md).
set -euo pipefail
cd "$(dirname "$0")"
seconds="${MESH_FUZZ_SECONDS:-60}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
targets=(rules snapshot http_head admission)
echo "== cargo fuzz build (release, ASan)"
cargo fuzz build 2>&1 | tail -n 2
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  echo "== fuzz $t for ${seconds}s"
  # libFuzzer writes new inputs to the first directory and reads the seeds
  # from the second; -rss_limit_mb bounds memory, -timeout a single input.
  status=0
  cargo fuzz run "$t" "$scratch/$t" "seeds/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 >"$scratch/$t.log" 2>&1 || status=$?
  grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$scratch/$t.log" || true
  if [ "$status" -ne 0 ]; then
    tail -n 40 "$scratch/$t.log" >&2
    echo "fuzz target $t failed (exit $status); its input is in fuzz/artifacts/$t" >&2
    exit 1
  fi
done
