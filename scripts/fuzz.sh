#!/usr/bin/env bash
# A short run of each cargo-fuzz target (fuzz/): the request head view and writer, the strict answer
# reader and the WebSocket frame tracker, each checked against a strict reference or a round trip.
# Starts from the committed corpus (fuzz/corpus/<target>), which a longer local run can grow:
#   FUZZ_SECONDS=600 scripts/fuzz.sh
# Needs the nightly toolchain (cargo-fuzz instruments with it) and cargo-fuzz, installed here if
# missing. A crash fails the run and leaves its input in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-20}"

if ! cargo +nightly --version >/dev/null 2>&1; then
  if command -v rustup >/dev/null 2>&1; then
    echo "==> installing the nightly toolchain (cargo-fuzz needs it)"
    rustup toolchain install nightly --profile minimal
  else
    echo "error: cargo-fuzz needs a nightly toolchain (rustup toolchain install nightly)" >&2
    exit 1
  fi
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install cargo-fuzz --locked --version 0.13.2
fi

cd fuzz
# Without a sanitizer: the targets are safe Rust, and the build is the slow part of the run.
echo "==> cargo fuzz build"
cargo +nightly fuzz build --sanitizer none
for target in request_head answer_reader frame_tracker; do
  echo "==> cargo fuzz run $target (${seconds}s)"
  # A scratch copy of the corpus: what the run finds stays out of the committed one.
  work="$(mktemp -d)"
  cp -r "corpus/$target/." "$work/"
  status=0
  cargo +nightly fuzz run --sanitizer none "$target" "$work" -- \
    -max_total_time="$seconds" >"$work.log" 2>&1 || status=$?
  grep -E "^Done|panicked at|SUMMARY|Test unit written" "$work.log" || true
  if [ "$status" -ne 0 ]; then
    tail -40 "$work.log" >&2
    echo "error: fuzz target $target failed (input in fuzz/artifacts/$target/)" >&2
    exit "$status"
  fi
  rm -rf "$work" "$work.log"
done
