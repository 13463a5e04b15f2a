#!/usr/bin/env bash
# Cross-build the hutch arm64 guest kernel (Linux 6.1) from a source tarball
# with gcc-aarch64-linux-gnu. The x86_64 recipe is build.sh; this one has no
# patch step (the int3 patch is x86-only) and installs the uncompressed Image.
#
#   build-arm64.sh <linux-source tarball> <work dir> <out dir> <fragment file> [jobs]
#
# Steps: extract -> configure (tinyconfig + fragment, verified) -> build
# (Image) -> install (<out>/Image, config).
# Exit status: 0 ok, 1 failure, 2 usage, 3 missing build prerequisites.
# CROSS_COMPILE (default aarch64-linux-gnu-) names another cross toolchain.
set -euo pipefail

NSTEPS=4
CROSS_COMPILE=${CROSS_COMPILE:-aarch64-linux-gnu-}
export LC_ALL=C

usage() {
    echo "usage: $0 <linux-source tarball> <work dir> <out dir> <fragment file> [jobs]" >&2
    exit 2
}

[ $# -ge 4 ] && [ $# -le 5 ] || usage
TARBALL=$1
WORK=$2
OUT=$3
FRAGMENT=$4
JOBS=${5:-$(nproc)}
[[ $JOBS =~ ^[1-9][0-9]*$ ]] || { echo "error: jobs must be a positive integer, got '$JOBS'" >&2; exit 2; }

step() { echo "[$1/$NSTEPS] $2"; }
fail() { echo "error: $*" >&2; exit 1; }

# ---------------------------------------------------------------- prerequisites
missing_pkgs=()
need_cmd() { command -v "$1" >/dev/null 2>&1 || missing_pkgs+=("$2"); }
need_cmd gcc gcc
need_cmd "${CROSS_COMPILE}gcc" gcc-aarch64-linux-gnu
need_cmd "${CROSS_COMPILE}objcopy" binutils-aarch64-linux-gnu
need_cmd make make
need_cmd bc bc
need_cmd flex flex
need_cmd bison bison
need_cmd perl perl
need_cmd xz xz-utils
need_cmd tar tar
need_cmd gzip gzip
if [ ${#missing_pkgs[@]} -gt 0 ]; then
    mapfile -t missing_pkgs < <(printf '%s\n' "${missing_pkgs[@]}" | awk '!seen[$0]++')
    echo "error: missing arm64 kernel build prerequisites; install them with:" >&2
    echo "apt-get install -y ${missing_pkgs[*]}" >&2
    exit 3
fi
[ -f "$TARBALL" ] || fail "tarball not found: $TARBALL"
[ -f "$FRAGMENT" ] || fail "config fragment not found: $FRAGMENT"

TARBALL=$(realpath "$TARBALL")
FRAGMENT=$(realpath "$FRAGMENT")
mkdir -p "$WORK" "$OUT"
WORK=$(realpath "$WORK")
OUT=$(realpath "$OUT")
SRC="$WORK/linux"
LOG="$WORK/build.log"
: >"$LOG"
T0=$SECONDS

LOG_TAIL=1
show_log_tail() {
    local rc=$?
    if [ $rc -ne 0 ] && [ "$LOG_TAIL" = 1 ] && [ -s "$LOG" ]; then
        echo "---- last 40 lines of $LOG ----" >&2
        tail -n 40 "$LOG" >&2
        echo "---- end of $LOG (exit $rc) ----" >&2
    fi
}
trap show_log_tail EXIT

KMAKE=(make -C "$SRC" ARCH=arm64 CROSS_COMPILE="$CROSS_COMPILE" KBUILD_BUILD_USER=hutch KBUILD_BUILD_HOST=hutch)

# ---------------------------------------------------------------- 1. extract
step 1 "extract $(basename "$TARBALL") into $SRC"
STAMP="$SRC/.hutch-extracted"
tar_id="$TARBALL $(stat -c '%s %Y' "$TARBALL")"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$tar_id" ] && [ -f "$SRC/Makefile" ]; then
    echo "      reusing existing extraction"
else
    rm -rf "$SRC" "$WORK/extract.tmp"
    mkdir -p "$WORK/extract.tmp"
    tar -xf "$TARBALL" -C "$WORK/extract.tmp" >>"$LOG" 2>&1 || fail "extracting $TARBALL failed"
    shopt -s nullglob dotglob
    top=("$WORK/extract.tmp"/*)
    shopt -u nullglob dotglob
    if [ ${#top[@]} -eq 1 ] && [ -d "${top[0]}" ]; then
        mv "${top[0]}" "$SRC"
        rmdir "$WORK/extract.tmp"
    else
        mv "$WORK/extract.tmp" "$SRC"
    fi
    [ -f "$SRC/Makefile" ] && [ -f "$SRC/arch/arm64/Kconfig" ] \
        || fail "$TARBALL does not look like a Linux source tree with arm64 support"
    echo "$tar_id" >"$STAMP"
fi
kver=$(make -s -C "$SRC" kernelversion 2>/dev/null || echo unknown)
echo "      kernel version $kver"

# ---------------------------------------------------------------- 2. configure
step 2 "configure: ARCH=arm64 tinyconfig + $(basename "$FRAGMENT")"
{
    echo "== make tinyconfig" &&
    "${KMAKE[@]}" tinyconfig &&
    echo "== merge_config.sh -m .config $FRAGMENT" &&
    (cd "$SRC" && ARCH=arm64 ./scripts/kconfig/merge_config.sh -m .config "$FRAGMENT") &&
    echo "== make olddefconfig" &&
    "${KMAKE[@]}" olddefconfig
} >>"$LOG" 2>&1 || fail "kernel configuration failed"

dropped=()
while IFS= read -r line; do
    case $line in
        CONFIG_*=*)
            grep -qxF -- "$line" "$SRC/.config" || {
                sym=${line%%=*}
                now=$(grep -E "^(# )?$sym[= ]" "$SRC/.config" || echo "$sym absent (dependencies not met)")
                dropped+=("want $line, got: $now")
            }
            ;;
        "# CONFIG_"*" is not set")
            sym=${line#\# }
            sym=${sym%% *}
            if now=$(grep -E "^$sym=" "$SRC/.config"); then
                dropped+=("want $sym unset, got: $now (selected by something else?)")
            fi
            ;;
    esac
done <"$FRAGMENT"
if [ ${#dropped[@]} -gt 0 ]; then
    LOG_TAIL=0
    echo "error: ${#dropped[@]} option(s) of $FRAGMENT did not stick after olddefconfig:" >&2
    printf '  %s\n' "${dropped[@]}" >&2
    exit 1
fi
nwant=$(grep -cE '^(CONFIG_[A-Za-z0-9_]+=|# CONFIG_[A-Za-z0-9_]+ is not set)' "$FRAGMENT" || true)
echo "      all $nwant fragment options verified in .config"

# ---------------------------------------------------------------- 3. build
step 3 "build Image with ${CROSS_COMPILE}gcc -j$JOBS (full log: $LOG)"
tb=$SECONDS
# Pass make output to the log and print a progress line every 100 objects or 10 s.
progress() {
    local n=0 last="" next_n=100 next_t=$((SECONDS + 10)) line
    while :; do
        if IFS= read -r -t 10 line; then
            case $line in
                *"  CC  "*|*"  AS  "*|*"  HOSTCC  "*|*"  LD  "*|*"  AR  "*|*"  GEN  "*|*"  OBJCOPY  "*)
                    n=$((n + 1)); last=${line#"${line%%[! ]*}"} ;;
            esac
        elif [ $? -le 128 ]; then
            break   # EOF
        fi
        if [ $n -ge $next_n ] || [ $SECONDS -ge $next_t ]; then
            printf '      ... %5d build steps done, %3ds elapsed (last: %s)\n' "$n" $((SECONDS - tb)) "$last"
            next_n=$(( (n / 100 + 1) * 100 ))
            next_t=$((SECONDS + 10))
        fi
    done
    printf '      ... %5d build steps done, %3ds elapsed\n' "$n" $((SECONDS - tb))
}
set +e
"${KMAKE[@]}" -j"$JOBS" Image 2>&1 | tee -a "$LOG" | progress
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -ne 0 ]; then
    echo "error: kernel build failed (make exit $rc); first errors:" >&2
    grep -nE 'error:|Error [0-9]+' "$LOG" | head -n 10 >&2 || true
    exit 1
fi
IMAGE="$SRC/arch/arm64/boot/Image"
[ -s "$IMAGE" ] || fail "build finished but arch/arm64/boot/Image is missing"
echo "      build took $((SECONDS - tb))s"

# ---------------------------------------------------------------- 4. install
step 4 "install Image, config into $OUT"
# arm64 boot protocol (Documentation/arm64/booting.rst): magic "ARM\x64" at offset 56.
[ "$(od -An -c -j56 -N4 "$IMAGE" | tr -d ' ')" = 'ARMd' ] \
    || fail "arch/arm64/boot/Image has no arm64 Image header (magic ARM\\x64 at offset 56)"
tmp_i="$OUT/.Image.tmp.$$" tmp_c="$OUT/.config.tmp.$$"
trap 'rm -f "$tmp_i" "$tmp_c"; show_log_tail' EXIT
cp "$IMAGE" "$tmp_i"
cp "$SRC/.config" "$tmp_c"
chmod 0644 "$tmp_i" "$tmp_c"
mv -f "$tmp_i" "$OUT/Image"
mv -f "$tmp_c" "$OUT/config"
for f in Image config; do
    printf '      %-8s %9d bytes\n' "$f" "$(stat -c %s "$OUT/$f")"
done
echo "done: Linux $kver (arm64) in $((SECONDS - T0))s"
