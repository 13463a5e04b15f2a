#!/usr/bin/env bash
# hutch.sh: one command from a fresh checkout to a running sandbox, or to a
# full test run. It installs the Debian packages hutch needs (when run as
# root, or through sudo), builds hutch, and then:
#
#   ./hutch.sh run [WORKSPACE] [-- CMD...]   runs hutch (any subcommand), building
#                                            the guest kernel on first use
#   ./hutch.sh test                          runs the whole test suite (what CI runs)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TRIPLE=x86_64-unknown-linux-gnu
PACKAGES=(qemu-system-x86 linux-source-6.1 gcc make bc bison flex libelf-dev libssl-dev xz-utils patch cpio
          gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-system-arm device-tree-compiler
          tmux curl python3 tinyproxy git python3-pip openssl $(command -v npm >/dev/null || echo npm))

say() { printf 'hutch.sh: %s\n' "$*" >&2; }

# Prints the apt-get options that pick the release the qemu-system packages
# must come from. Some machines ship qemu-utils from bookworm-backports
# (qemu-img 10), which Breaks bookworm's qemu-system-common 7.2: there the
# qemu-system packages come from bookworm-backports too, whose source is
# added (hutch-bookworm-backports.list) when apt has none. Prints nothing
# when qemu-utils is absent or from the main release.
qemu_release() {
    local version
    version=$(dpkg-query -W -f='${Status} ${Version}' qemu-utils 2>/dev/null) || return 0
    case $version in
        *"ok installed"*"~bpo12"*) ;;
        *) return 0 ;;
    esac
    if ! grep -rqsE "^[^#]*bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        say "qemu-utils ${version##* } comes from bookworm-backports: adding that source for qemu-system"
        echo "deb http://deb.debian.org/debian bookworm-backports main" |
            "${sudo[@]}" tee /etc/apt/sources.list.d/hutch-bookworm-backports.list >/dev/null
    fi
    echo "-t bookworm-backports"
}

install_packages() {
    local missing=() qemu=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" && continue
        case $p in
            qemu-*) qemu+=("$p") ;;
            *) missing+=("$p") ;;
        esac
    done
    [ $((${#missing[@]} + ${#qemu[@]})) -eq 0 ] && return 0
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            say "missing Debian packages; install them with: apt-get install -y ${missing[*]} ${qemu[*]}"
            exit 1
        fi
    fi
    local release=()
    [ ${#qemu[@]} -eq 0 ] || read -r -a release <<<"$(qemu_release)"
    say "installing ${missing[*]} ${qemu[*]}"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    if [ ${#missing[@]} -gt 0 ]; then
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
    fi
    if [ ${#qemu[@]} -gt 0 ]; then
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${release[@]}" "${qemu[@]}" >&2 || {
            say "could not install ${qemu[*]}${release[*]:+ (${release[*]})}; apt-get said why above"
            exit 1
        }
    fi
}

run_tests() {
    cd "$ROOT"
    local bin="target/$TRIPLE/debug/hutch"
    say "format and lints (default build, and the whp, hvf and aarch64 features)"
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --locked -- -D warnings
    cargo clippy -p hutch --all-targets --locked --features whp,hvf -- -D warnings
    cargo clippy -p hutch --all-targets --locked --features aarch64 -- -D warnings
    # The test build carries the `aarch64` feature, so `hutch fdt` exists for
    # the arm64 boot test; the default build stays without it.
    say "build"
    cargo build --workspace --locked --features hutch/aarch64
    say "guest kernels (built once, then cached): x86_64, and arm64 cross-built"
    "$bin" kernel build
    "$bin" kernel build --arch arm64
    "$bin" doctor || true
    rm -f "target/$TRIPLE/e2e-report.txt"
    say "tests"
    cargo test --workspace --locked --features hutch/aarch64
    say "WHP and HVF backends against fakes of their platform APIs"
    cargo test -p hutch --lib --locked --features whp,hvf
    say "engines the end-to-end tests ran on:"
    sort "target/$TRIPLE/e2e-report.txt" >&2
}

case "${1:-}" in
    test)
        install_packages
        run_tests
        ;;
    "" | -h | --help)
        sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
        ;;
    *)
        install_packages
        (cd "$ROOT" && cargo build --release --locked -q -p hutch) >&2
        exec "$ROOT/target/$TRIPLE/release/hutch" "$@"
        ;;
esac
