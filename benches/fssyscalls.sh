#!/usr/bin/env bash
# Host syscalls per FUSE request, hutch's backend against virtiofsd (issue 3's
# "fewer host syscalls per request" lever). Runs the device-level load
# generator (benches/fsload.sh) once at depth 1 with both servers under
# `strace -f -ttt`, cuts each trace into the generator's phases, and prints a
# table of syscalls per op for each server and the commonest ones.
#   benches/fssyscalls.sh [--secs S]          (default 0.3 s per phase)
# strace slows both servers; the counts, not the times, are the result.
# Needs strace (apt-get installs it when run as root) and virtiofsd (as for
# fsload.sh: $VIRTIOFSD, else target/tools/bin/virtiofsd).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=0.3
if [ "${1:-}" = --secs ]; then secs=${2:?--secs needs a value}; fi
if ! command -v strace >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get install -y -q strace >&2
    else
        echo "fssyscalls: needs strace" >&2
        exit 3
    fi
fi
VIRTIOFSD=${VIRTIOFSD:-$PWD/target/tools/bin/virtiofsd}
[ -x "$VIRTIOFSD" ] || { echo "fssyscalls: no virtiofsd at $VIRTIOFSD (run benches/fsload.sh once, or set VIRTIOFSD)" >&2; exit 3; }
cargo build --release -q --locked -p hutch-bench --bin hutch-bench-fsload --bin hutch-bench-fsserve
T=$PWD/target/x86_64-unknown-linux-gnu/release
work=$(mktemp -d "${TMPDIR:-/tmp}/hutch-fssyscalls-XXXXXX")
trap 'rm -rf "$work"' EXIT
for s in hutch virtiofsd; do
    real=$T/hutch-bench-fsserve
    [ $s = virtiofsd ] && real=$VIRTIOFSD
    printf '#!/bin/sh\nexec strace -f -qq -ttt -o %s %s "$@"\n' "$work/$s.strace" "$real" >"$work/$s"
    chmod +x "$work/$s"
done
vargs=(--virtiofsd-arg --cache --virtiofsd-arg auto)
[ "$(id -u)" = 0 ] || vargs+=(--virtiofsd-arg --sandbox --virtiofsd-arg none)
d=${FSLOAD_DIR:-/dev/shm}
[ -d "$d" ] && [ -w "$d" ] || d=${TMPDIR:-/tmp}
"$T/hutch-bench-fsload" --hutch "$work/hutch" --virtiofsd "$work/virtiofsd" "${vargs[@]}" \
    --dir "$d" --depth 1 --rounds 1 --secs "$secs" --phase-log "$work/phases" >/dev/null
python3 benches/fs/syscalls.py "$work/phases" "$work/hutch.strace" "$work/virtiofsd.strace"
