#!/usr/bin/env bash
# The file system benchmark of issue 3, three ways in one run, plus the floor:
#   host       the workloads straight on the host file system;
#   hutch      in a qemu-engine guest, the workspace served by hutch's backend;
#   virtiofsd  the same kernel and guest, the workspace served by virtiofsd
#              (crates.io, default flags, --cache auto) over vhost-user;
#   native     hutch's own VMM, only where /dev/kvm is real (kvm_intel/amd);
#   guest-tmpfs the same qemu guest working on a copy in its own tmpfs (/tmp):
#              no FUSE at all, so it is the floor under hutch and virtiofsd,
#              the guest's own cost; the table then shows how much each
#              server's way costs above it;
#   hutch-b    only with HUTCH_B_LEVERS or HUTCH_B_KERNEL_ARGS set: hutch
#              again, with those levers (HUTCH_FS_LEVERS syntax,
#              docs/fs-levers.md) and/or guest kernel parameters (say
#              "virtiofs.hutch_poll_us=300"), so their effect is measured in
#              the same run; the table adds hutch-b ÷ hutch.
# Ways alternate within each round; the table shows medians over rounds.
#   benches/fs3way.sh [ROUNDS]       (VIRTIOFSD=path to skip installing it)
#   HUTCH_B_LEVERS=irq_window=10 FS3WAY_WAYS="hutch hutch-b" benches/fs3way.sh 4
#   VIRTIOFSD_ARGS=--thread-pool-size=4 FS3WAY_WAYS="hutch virtiofsd" benches/fs3way.sh 3
# The workspace lives under $TMPDIR (default /tmp): all three ways use it, so
# pick a file system whose create cost is steady (see docs/fs-levers.md).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
T=target/x86_64-unknown-linux-gnu/release
say() { printf 'fs bench: %s\n' "$*" >&2; }

need=()
for p in gcc make git cargo python3 linux-source-6.1 libseccomp-dev libcap-ng-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    sudo=(); [ "$(id -u)" -ne 0 ] && sudo=(sudo)
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >&2
fi
say "building hutch and the loop runner (release)"
cargo build --release -q --locked -p hutch -p hutch-bench --bin hutch --bin hutch-bench-fsops
"$T/hutch" kernel build >/dev/null
if [ -z "${VIRTIOFSD:-}" ]; then
    VIRTIOFSD=target/tools/bin/virtiofsd
    if [ ! -x "$VIRTIOFSD" ]; then
        say "installing virtiofsd from crates.io into target/tools (a few minutes, once)"
        cargo install -q --locked virtiofsd --root target/tools
    fi
fi
"$VIRTIOFSD" --version >&2
[ -z "${VIRTIOFSD_ARGS:-}" ] || say "virtiofsd gets: $VIRTIOFSD_ARGS"

inputs=target/fsbench/inputs
benches/fs/prepare.sh "$inputs"
work=$(mktemp -d "${TMPDIR:-/tmp}/hutch-fsbench-XXXXXX")
vfsd_pid=
cleanup() { [ -n "$vfsd_pid" ] && kill "$vfsd_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
ws=$work/ws
results=target/fsbench/results-$(date +%Y%m%d-%H%M%S).txt

fresh() {
    rm -rf "$ws" && mkdir "$ws"
    cp -a "$inputs"/{src.tar,repo,cproj,crates,npm.tar,big} "$ws"/
    cp "$T/hutch-bench-fsops" benches/fs/workloads.sh "$ws"/
    git -C "$ws/repo" status --porcelain >/dev/null # refresh the index's stat data
    sync
}
guest() {
    local engine=$1
    shift # the rest: extra `hutch run` options
    "$T/hutch" run --engine "$engine" --memory 2G --cpus 2 "$@" "$ws" -- sh workloads.sh --drop-caches
}
way() {
    case $1 in
    host) (cd "$ws" && sh workloads.sh) ;;
    hutch) guest qemu ;;
    hutch-b) HUTCH_FS_LEVERS=${HUTCH_B_LEVERS:-} guest qemu "${bkargs[@]}" ;;
    native) guest native ;;
    guest-tmpfs)
        # The copy and the index refresh (new inode numbers) are not timed.
        "$T/hutch" run --engine qemu --memory 2G --cpus 2 "$ws" -- sh -c \
            'cp -a . /tmp/w && cd /tmp/w && git -c safe.directory="*" -C repo status --porcelain >/dev/null && sh workloads.sh --drop-caches'
        ;;
    virtiofsd)
        local sock=$work/virtiofsd.sock
        rm -f "$sock"
        "$VIRTIOFSD" --socket-path "$sock" --shared-dir "$ws" --cache auto "${vextra[@]}" \
            2>"$work/virtiofsd.log" &
        vfsd_pid=$!
        for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
        HUTCH_QEMU_WORKSPACE_BACKEND=$sock guest qemu
        wait "$vfsd_pid" 2>/dev/null || true
        vfsd_pid=
        ;;
    esac
}

# VIRTIOFSD_ARGS adds arguments to virtiofsd's (say "--thread-pool-size=4").
read -r -a vextra <<<"${VIRTIOFSD_ARGS:-}"
# HUTCH_B_KERNEL_ARGS: guest kernel parameters for the hutch-b way only.
bkargs=()
for k in ${HUTCH_B_KERNEL_ARGS:-}; do bkargs+=(--kernel-arg "$k"); done
hutch_b=${HUTCH_B_LEVERS:-}${HUTCH_B_KERNEL_ARGS:-}
# FS3WAY_WAYS picks ways (say "hutch hutch-b" to time a lever alone).
read -r -a ways <<<"${FS3WAY_WAYS:-host hutch virtiofsd guest-tmpfs}"
if [ -z "${FS3WAY_WAYS:-}" ]; then
    if grep -qE '^kvm_(intel|amd) ' /proc/modules 2>/dev/null; then ways+=(native); fi
    if [ -n "$hutch_b" ]; then ways+=(hutch-b); fi
fi
for w in "${ways[@]}"; do
    case $w in
    host | hutch | virtiofsd | native | guest-tmpfs) ;;
    hutch-b) [ -n "$hutch_b" ] || { say "hutch-b needs HUTCH_B_LEVERS or HUTCH_B_KERNEL_ARGS"; exit 2; } ;;
    *) say "unknown way $w (host, hutch, virtiofsd, guest-tmpfs, native, hutch-b)"; exit 2 ;;
    esac
done
mkdir -p target/fsbench
for r in $(seq 1 "$ROUNDS"); do
    # Odd rounds in the given order, even rounds reversed.
    order=("${ways[@]}")
    if [ $((r % 2)) -eq 0 ]; then
        order=()
        for ((i = ${#ways[@]} - 1; i >= 0; i--)); do order+=("${ways[i]}"); done
    fi
    for w in "${order[@]}"; do
        say "round $r/$ROUNDS: $w"
        fresh
        way "$w" | sed "s/^/$w $r /" | tee -a "$results" >&2 || say "$w failed in round $r"
    done
done
say "raw results: $results"
python3 benches/fs/table.py "$results"
