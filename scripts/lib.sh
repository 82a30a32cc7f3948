# Shared helpers for the scripts in this directory. Source it; do not run it.
# shellcheck shell=bash

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$REPO/target/release"
VSWITCHD="$BIN/vswitchd"
VSWITCHCTL="$BIN/vswitchctl"

# Debian packages the build, the tests, the lab and the benchmarks use.
PACKAGES=(clang llvm libbpf-dev iproute2 iputils-ping iperf3 tcpdump ethtool procps python3 bpftool iptables prometheus
          docker.io podman containernetworking-plugins busybox-static
          etcd-server protobuf-compiler)

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# posint OPTION VALUE: dies unless VALUE, given to OPTION, is a positive whole number.
posint() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 expects a positive whole number, got '$2'"; }

need_root() {
    [ "$(id -u)" -eq 0 ] || die "run as root: vswitch creates namespaces, TAP devices and eBPF programs"
}

# Installs whatever of PACKAGES is missing (nothing when all are present).
install_deps() {
    local missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        say "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # Packages are tools here, not services: prometheus (for promtool)
        # would otherwise start its server and exporter where systemd runs.
        # policy-rc.d 101 is Debian's way to say "start nothing".
        local guard=""
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            guard=/usr/sbin/policy-rc.d
            printf '#!/bin/sh\nexit 101\n' > "$guard" && chmod 755 "$guard"
        fi
        # prometheus is wanted for promtool only: not its recommended
        # exporters. Everything else installs as it always has.
        local tools=() bare=()
        for p in "${missing[@]}"; do
            case "$p" in prometheus) bare+=("$p") ;; *) tools+=("$p") ;; esac
        done
        local ok=1
        [ "${#tools[@]}" -eq 0 ] || apt-get install -y -qq "${tools[@]}" >/dev/null || ok=0
        [ "${#bare[@]}" -eq 0 ] || apt-get install -y -qq --no-install-recommends "${bare[@]}" >/dev/null || ok=0
        [ -z "$guard" ] || rm -f "$guard"
        [ "$ok" -eq 1 ] || die "apt-get install ${missing[*]} failed"
    fi
    command -v cargo >/dev/null || export PATH="$HOME/.cargo/bin:$PATH"
    command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain"
}

# eBPF maps and programs are pinned under /sys/fs/bpf.
ensure_bpffs() {
    mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
}

build() {
    say "building (cargo build --release)"
    (cd "$REPO" && cargo build --release --workspace --locked --quiet)
}

# wait_for SECONDS CMD...: runs CMD until it succeeds or the deadline passes.
wait_for() {
    local deadline=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}
