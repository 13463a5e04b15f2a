#!/bin/sh
# The file system benchmark's workloads, run in the current directory (a
# fresh copy of benches/fs/prepare.sh's inputs plus hutch-bench-fsops), on
# the host or inside a guest. Prints `fsops PHASE OPS SECONDS` lines from the
# loop runner, then `workload NAME MICROSECONDS` for each real workload.
# Usage: sh workloads.sh [--drop-caches]
set -u
export LC_ALL=C
now() { date +%s%N; }
timed() {
    name=$1; shift
    s=$(now)
    if "$@" >/dev/null 2>"err.$name"; then
        echo "workload $name $(( ($(now) - s) / 1000 ))"
        rm -f "err.$name"
    else
        echo "workload $name FAILED"
        cat "err.$name" >&2
    fi
}
git_status() { git -c safe.directory='*' -C repo status --porcelain; }
# Extract, resolve every package the way node's require() probes candidate
# files (most probes miss), read the sources, remove the tree.
npm_tree() {
    tar xf npm.tar || return 1
    for d in node_modules/pkg-*; do
        for c in node_modules "index.mjs" index.cjs index.json index.js package.json; do
            [ -e "$d/$c" ]
        done
    done
    find node_modules -name '*.js' -exec cat {} + >/dev/null && rm -rf node_modules
}
cargo_build() {
    CARGO_HOME=$PWD/.cargo-home RUSTC=/usr/bin/rustc /usr/bin/cargo build --offline -q \
        --manifest-path crates/Cargo.toml
}

./hutch-bench-fsops fsops-dir --n 1000 --mib 64 --readdir big "$@"
timed tar_extract tar xf src.tar
timed git_status_cold git_status
timed git_status_warm git_status
timed make_j make -C cproj -s -j"$(nproc)"
timed cargo_build cargo_build
timed npm_tree npm_tree
sync
