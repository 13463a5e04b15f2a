#!/usr/bin/env bash
# Device-level virtio-fs load generator (issue 3): the same FUSE request stream, sent over
# vhost-user with no guest, to hutch's backend (hutch-bench-fsserve) and to virtiofsd.
# Builds in release mode, finds or installs virtiofsd, prints a Markdown table of per-op
# ops/s and p50/p90/p99 latency, and hutch's ops/s over virtiofsd's.
#   benches/fsload.sh [hutch-bench-fsload options]   (default: --depth 1,16 --rounds 5 --secs 0.5)
# virtiofsd comes from $VIRTIOFSD, else target/tools/bin/virtiofsd, which is installed
# with `cargo install --locked virtiofsd --root target/tools` when missing (it needs the
# libseccomp and libcap-ng headers: apt-get installs them when run as root).
# The shared directories go under /dev/shm (tmpfs) unless --dir DIR or FSLOAD_DIR says
# otherwise. Exits 3, saying why, when virtiofsd cannot be had.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# Sets VIRTIOFSD, or prints why it cannot and fails.
find_virtiofsd() {
  if [ -n "${VIRTIOFSD:-}" ]; then
    [ -x "$VIRTIOFSD" ] && return 0
    echo "fsload: VIRTIOFSD=$VIRTIOFSD is not an executable" >&2
    return 1
  fi
  local bin=$root/target/tools/bin/virtiofsd
  if [ ! -x "$bin" ]; then
    if [ ! -e /usr/include/seccomp.h ] || [ ! -e /usr/include/cap-ng.h ]; then
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get install -y -q libseccomp-dev libcap-ng-dev >&2 || {
          echo "fsload: apt-get could not install libseccomp-dev libcap-ng-dev" >&2
          return 1
        }
      else
        echo "fsload: building virtiofsd needs libseccomp-dev and libcap-ng-dev (or set VIRTIOFSD)" >&2
        return 1
      fi
    fi
    command -v cargo >/dev/null || { echo "fsload: no cargo to install virtiofsd with" >&2; return 1; }
    echo "fsload: installing virtiofsd into target/tools (a few minutes, once)" >&2
    # From outside the checkout: its .cargo/config.toml (static glibc) is not for virtiofsd.
    (cd "${TMPDIR:-/tmp}" && cargo install -q --locked virtiofsd --root "$root/target/tools") >&2 || {
      echo "fsload: cargo install virtiofsd failed" >&2
      return 1
    }
  fi
  VIRTIOFSD=$bin
}

cargo build --release -q --locked -p hutch-bench --bin hutch-bench-fsload --bin hutch-bench-fsserve
T=target/x86_64-unknown-linux-gnu/release
if ! find_virtiofsd; then
  exit 3
fi
vargs=(--virtiofsd-arg --cache --virtiofsd-arg auto)
if [ "$(id -u)" != 0 ]; then
  # Its namespace sandbox needs privileges an ordinary user may lack.
  vargs+=(--virtiofsd-arg --sandbox --virtiofsd-arg none)
fi
# The shared directories live on tmpfs unless told otherwise (--dir, or FSLOAD_DIR), so
# the host disk's journal does not drown the servers' own cost.
dir=()
case " $* " in
  *" --dir "*) ;;
  *)
    d=${FSLOAD_DIR:-/dev/shm}
    if [ -d "$d" ] && [ -w "$d" ]; then dir=(--dir "$d"); fi
    ;;
esac
echo "virtiofsd: $("$VIRTIOFSD" --version 2>&1 | head -n 1); $(nproc) CPUs; $(uname -r)" >&2
"$T/hutch-bench-fsload" --hutch "$T/hutch-bench-fsserve" --virtiofsd "$VIRTIOFSD" \
  "${vargs[@]}" "${dir[@]}" "$@"
