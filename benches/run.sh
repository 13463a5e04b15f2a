#!/usr/bin/env bash
# Builds hutch and the benchmarks in release mode, makes sure the guest
# kernel is built, and prints every benchmark's figures and ratios.
#   benches/run.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p hutch -p hutch-bench
T=target/x86_64-unknown-linux-gnu/release
"$T/hutch" kernel build >/dev/null
"$T/hutch-bench-boot" "$T/hutch" "${1:-21}"
"$T/hutch-bench-agent" "$T/hutch" "${1:-21}"
"$T/hutch-bench-proxy"
# virtio-fs device-level load, hutch vs virtiofsd; skipped, with the reason, when
# virtiofsd can be neither found nor installed.
rc=0
benches/fsload.sh || rc=$?
if [ "$rc" = 3 ]; then
  echo "fsload: skipped (virtiofsd unavailable, see above)"
elif [ "$rc" != 0 ]; then
  exit "$rc"
fi
