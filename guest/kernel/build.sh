#!/usr/bin/env bash
# Build a hutch guest kernel (Linux 6.1) from a source tarball.
#
#   build.sh <linux-source tarball> <work dir> <out dir> <fragment file> [jobs] [arch]
#
# arch is x86_64 (default; built natively) or arm64 (cross-built with
# gcc-aarch64-linux-gnu; CROSS_COMPILE names another toolchain).
# Steps: extract -> patch (x86_64 only) -> configure (tinyconfig + fragment,
# verified) -> build -> install: x86_64 <out>/vmlinux, bzImage, config;
# arm64 <out>/Image, config.
# Exit status: 0 ok, 1 failure, 2 usage, 3 missing build prerequisites.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PATCH_DIR="$SCRIPT_DIR/patches"
export LC_ALL=C

usage() {
    echo "usage: $0 <linux-source tarball> <work dir> <out dir> <fragment file> [jobs] [x86_64|arm64]" >&2
    exit 2
}

[ $# -ge 4 ] && [ $# -le 6 ] || usage
TARBALL=$1
WORK=$2
OUT=$3
FRAGMENT=$4
JOBS=${5:-$(nproc)}
[[ $JOBS =~ ^[1-9][0-9]*$ ]] || { echo "error: jobs must be a positive integer, got '$JOBS'" >&2; exit 2; }
ARCH=${6:-x86_64}
case $ARCH in
    x86_64) NSTEPS=5 KARCH=x86 CROSS_COMPILE= TARGETS=(vmlinux bzImage) ;;
    arm64) NSTEPS=4 KARCH=arm64 CROSS_COMPILE=${CROSS_COMPILE:-aarch64-linux-gnu-} TARGETS=(Image) ;;
    *) echo "error: arch must be x86_64 or arm64, got '$ARCH'" >&2; exit 2 ;;
esac
STEP=0

step() { STEP=$((STEP + 1)); echo "[$STEP/$NSTEPS] $1"; }
fail() { echo "error: $*" >&2; exit 1; }

# ---------------------------------------------------------------- prerequisites
missing_pkgs=()
need_cmd() { command -v "$1" >/dev/null 2>&1 || missing_pkgs+=("$2"); }
need_file() { [ -e "$1" ] || missing_pkgs+=("$2"); }
need_cmd gcc gcc
if [ "$ARCH" = arm64 ]; then
    need_cmd "${CROSS_COMPILE}gcc" gcc-aarch64-linux-gnu
    need_cmd "${CROSS_COMPILE}objcopy" binutils-aarch64-linux-gnu
fi
need_cmd make make
need_cmd bc bc
need_cmd flex flex
need_cmd bison bison
need_cmd perl perl
need_cmd xz xz-utils
need_cmd tar tar
need_cmd patch patch
need_cmd strip binutils
need_cmd readelf binutils
need_cmd gzip gzip
if [ ! -e /usr/include/gelf.h ] && [ ! -e /usr/include/libelf.h ]; then
    missing_pkgs+=(libelf-dev)
fi
need_file /usr/include/openssl/opensslv.h libssl-dev
if [ ${#missing_pkgs[@]} -gt 0 ]; then
    # de-duplicate, keep order
    mapfile -t missing_pkgs < <(printf '%s\n' "${missing_pkgs[@]}" | awk '!seen[$0]++')
    echo "error: missing kernel build prerequisites; install them with:" >&2
    echo "apt-get install -y ${missing_pkgs[*]}" >&2
    exit 3
fi
[ "$(uname -m)" = x86_64 ] || fail "this recipe builds on an x86_64 host; this one is $(uname -m)"
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

# On failure after this point, show the end of the log (unless the failure
# was already explained without it, e.g. dropped config options).
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

KMAKE=(make -C "$SRC" ARCH="$ARCH" KBUILD_BUILD_USER=hutch KBUILD_BUILD_HOST=hutch)
[ -z "$CROSS_COMPILE" ] || KMAKE+=(CROSS_COMPILE="$CROSS_COMPILE")

# The patch set (x86_64 only): a tree is reused only if it holds exactly
# these patches, since patches that touch the same lines cannot be checked
# one by one on a tree that already has later ones.
patches=()
if [ "$ARCH" = x86_64 ]; then
    shopt -s nullglob
    patches=("$PATCH_DIR"/*.patch)
    shopt -u nullglob
    [ ${#patches[@]} -gt 0 ] || fail "no patches found in $PATCH_DIR"
    patch_set=$(cat "${patches[@]}" | sha256sum | cut -c1-16)
else
    patch_set=none
fi
PSTAMP="$SRC/.hutch-patched"

# ---------------------------------------------------------------- 1. extract
step "extract $(basename "$TARBALL") into $SRC"
STAMP="$SRC/.hutch-extracted"
tar_id="$TARBALL $(stat -c '%s %Y' "$TARBALL")"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$tar_id" ] && [ -f "$SRC/Makefile" ] \
    && [ "$(cat "$PSTAMP" 2>/dev/null)" = "$patch_set" ]; then
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
    [ -f "$SRC/Makefile" ] && [ -f "$SRC/arch/$KARCH/Kconfig" ] \
        || fail "$TARBALL does not look like a Linux source tree with $ARCH support"
    echo "$tar_id" >"$STAMP"
fi
kver=$(make -s -C "$SRC" kernelversion 2>/dev/null || echo unknown)
echo "      kernel version $kver"

# ---------------------------------------------------------------- patch (x86_64)
# The patches (skipping the int3 self-test for PVM hosts; FUSE keeping a
# directory's permission attributes across entry changes) are x86-only for now.
if [ "$ARCH" = x86_64 ]; then
step "patch"
if [ "$(cat "$PSTAMP" 2>/dev/null)" = "$patch_set" ]; then
    echo "      reusing the tree patched with these ${#patches[@]} patches"
    patches=()
fi
for p in "${patches[@]}"; do
    name=$(basename "$p")
    if patch -d "$SRC" -p1 -R -f -s --dry-run <"$p" >/dev/null 2>&1; then
        echo "      $name: already applied"
    elif patch -d "$SRC" -p1 -N -f -s --dry-run <"$p" >>"$LOG" 2>&1; then
        patch -d "$SRC" -p1 -N -f -s <"$p" >>"$LOG" 2>&1 || fail "applying $name failed"
        echo "      $name: applied"
    else
        LOG_TAIL=0
        echo "error: $name does not apply to this source tree (pattern not found)." >&2
        patch -d "$SRC" -p1 -N -f --dry-run <"$p" >&2 || true
        exit 1
    fi
done
# Belt and braces: the int3 self-test call must be disabled now.
grep -q '^	if (0)$' "$SRC/arch/x86/kernel/alternative.c" \
    && grep -A1 '^	if (0)$' "$SRC/arch/x86/kernel/alternative.c" | grep -q 'int3_selftest();' \
    || fail "int3_selftest() call in arch/x86/kernel/alternative.c is not disabled after patching"
fi
echo "$patch_set" >"$PSTAMP"

# ---------------------------------------------------------------- configure
step "configure: tinyconfig + $(basename "$FRAGMENT")"
{
    echo "== make tinyconfig" &&
    "${KMAKE[@]}" tinyconfig &&
    echo "== merge_config.sh -m .config $FRAGMENT" &&
    (cd "$SRC" && ./scripts/kconfig/merge_config.sh -m .config "$FRAGMENT") &&
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

# ---------------------------------------------------------------- build
step "build ${TARGETS[*]} with -j$JOBS (full log: $LOG)"
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
"${KMAKE[@]}" -j"$JOBS" "${TARGETS[@]}" 2>&1 | tee -a "$LOG" | progress
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -ne 0 ]; then
    echo "error: kernel build failed (make exit $rc); first errors:" >&2
    grep -nE 'error:|Error [0-9]+' "$LOG" | head -n 10 >&2 || true
    exit 1
fi
for f in "${TARGETS[@]}"; do
    [ "$f" = vmlinux ] || f=arch/$KARCH/boot/$f
    [ -s "$SRC/$f" ] || fail "build finished but $f is missing"
done
echo "      build took $((SECONDS - tb))s"

if [ "$ARCH" = arm64 ]; then
    step "install Image, config into $OUT"
    IMAGE="$SRC/arch/arm64/boot/Image"
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
    exit 0
fi

# ---------------------------------------------------------------- install (x86_64)
step "install vmlinux, bzImage, config into $OUT"
has_pvh_note() {
    # Xen ELF note type 0x12 = XEN_ELFNOTE_PHYS32_ENTRY (PVH entry point)
    readelf -n --wide "$1" 2>/dev/null | awk '$1 == "Xen" && /0x00000012|PHYS32/ {found=1} END {exit !found}'
}
has_pvh_note "$SRC/vmlinux" || fail "built vmlinux has no Xen PHYS32_ENTRY (0x12) note; is CONFIG_PVH set?"
tmp_v="$OUT/.vmlinux.tmp.$$" tmp_b="$OUT/.bzImage.tmp.$$" tmp_c="$OUT/.config.tmp.$$"
trap 'rm -f "$tmp_v" "$tmp_b" "$tmp_c"; show_log_tail' EXIT
strip --strip-debug -o "$tmp_v" "$SRC/vmlinux"
has_pvh_note "$tmp_v" || fail "stripped vmlinux lost the Xen PHYS32_ENTRY (0x12) note"
cp "$SRC/arch/x86/boot/bzImage" "$tmp_b"
cp "$SRC/.config" "$tmp_c"
chmod 0644 "$tmp_v" "$tmp_b" "$tmp_c"
mv -f "$tmp_v" "$OUT/vmlinux"
mv -f "$tmp_b" "$OUT/bzImage"
mv -f "$tmp_c" "$OUT/config"
for f in vmlinux bzImage config; do
    printf '      %-8s %9d bytes\n' "$f" "$(stat -c %s "$OUT/$f")"
done
echo "done: Linux $kver in $((SECONDS - T0))s"
