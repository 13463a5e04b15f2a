#!/usr/bin/env bash
# Boots hutch-init under QEMU (microvm, TCG) with a hand-made initramfs and
# shows what came back on the serial line.
#
#   guest/init/try-in-qemu.sh KERNEL INIT [MKSPEC-OPTIONS] [-- ARGV...]
#
# KERNEL: a bzImage. INIT: the static hutch-init binary. MKSPEC-OPTIONS go to
# `cargo run --example mkspec` (--env K=V, --cwd, --workspace, --home); ARGV
# defaults to `/bin/sh -c 'echo hello'`.
#
# The initramfs holds /init and /hutch/spec only. No virtio-fs server runs
# here, so init is expected to fail at the first mount and report it: an Error
# frame, then Exit 125, then the VM resets and QEMU exits by itself.
#
# Environment: ACCEL (default tcg), TIMEOUT seconds (default 120),
# APPEND (extra kernel arguments, e.g. hutch.selftest=1), QEMU_EXTRA (extra
# QEMU arguments, word-split), STDIN_FILE (bytes sent to the guest serial
# port, default /dev/null), KEEP=1 keeps the work directory.
# Exit status: QEMU's (124 on timeout). The raw serial capture is printed
# decoded by `cargo run --example showframes`.
#
# With a virtiofsd (not part of hutch) serving ROOT.sock (a directory holding
# usr, etc, ... and bin -> usr/bin style links) and WS.sock, the whole run
# path works; pass --workspace DIR and:
#   QEMU_EXTRA="-object memory-backend-memfd,id=mem,size=256M,share=on
#     -machine memory-backend=mem
#     -chardev socket,id=fs0,path=ROOT.sock -device vhost-user-fs-device,chardev=fs0,tag=hutch-root
#     -chardev socket,id=fs1,path=WS.sock -device vhost-user-fs-device,chardev=fs1,tag=hutch-ws"
set -euo pipefail

if [ $# -lt 2 ]; then
    sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
kernel=$(realpath "$1")
init=$(realpath "$2")
shift 2
spec_opts=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do
    spec_opts+=("$1")
    shift
done
[ "${1:-}" = -- ] && shift
[ $# -gt 0 ] || set -- /bin/sh -c 'echo hello'

here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/hutch-try.XXXXXX)
if [ "${KEEP:-0}" != 1 ]; then trap 'rm -rf "$work"' EXIT; fi

mkdir -p "$work/root/hutch"
install -m 0755 "$init" "$work/root/init"
(cd "$here" && cargo run -q -p hutch-init --example mkspec -- "${spec_opts[@]}" -- "$@") \
    >"$work/root/hutch/spec"
(cd "$work/root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) \
    >"$work/initramfs.cpio"

append="console=ttyS0 loglevel=1 reboot=t panic=-1 ${APPEND:-}"
# shellcheck disable=SC2086
set +e
timeout "${TIMEOUT:-120}" qemu-system-x86_64 \
    -M microvm,acpi=off -accel "${ACCEL:-tcg}" -m 256M -smp 1 \
    -nographic -no-reboot -monitor none -serial stdio \
    -kernel "$kernel" -initrd "$work/initramfs.cpio" -append "$append" \
    ${QEMU_EXTRA:-} <"${STDIN_FILE:-/dev/null}" >"$work/serial.raw"
rc=$?
set -e

echo "--- serial line, decoded (frames as [Kind] payload) ---"
(cd "$here" && cargo run -q -p hutch-init --example showframes) <"$work/serial.raw" || true
echo "--- qemu exit status: $rc$([ $rc = 124 ] && echo ' (timeout)') ---"
[ "${KEEP:-0}" = 1 ] && echo "work directory kept: $work"
exit "$rc"
