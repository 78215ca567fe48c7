#!/usr/bin/env bash
# Runs every check and test on a fresh machine: installs the real peers the tests
# talk to when they are missing (a warm machine pays nothing), then checks
# formatting, clippy with -D warnings, docs, and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -x /usr/sbin/dnsmasq ] || command -v dnsmasq >/dev/null 2>&1 || missing+=(dnsmasq-base)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# The benchmark's sidecar configuration (benches/, `compare -- --quick`) and its tests.
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || missing+=(nginx)
[ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
# Prometheus and promtool: a real scrape of /metrics, and the shipped alert rules.
{ [ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ]; } || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  echo "scripts/test.sh: installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  # Packages like nginx would start their system service on install; the tests
  # start their own instances, so forbid service starts for the install.
  policy=/usr/sbin/policy-rc.d
  added_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo_cmd tee "$policy" >/dev/null
    $sudo_cmd chmod +x "$policy"
    added_policy=1
  fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
  [ -z "$added_policy" ] || $sudo_cmd rm -f "$policy"
fi

# Google's gRPC in Python, the peer of the gRPC interop tests (tests/python/).
if ! python3 -c "import grpc, grpc_tools, grpc_health.v1" >/dev/null 2>&1; then
  command -v python3 >/dev/null 2>&1 || {
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    ${sudo_cmd:-} apt-get update -qq
    DEBIAN_FRONTEND=noninteractive ${sudo_cmd:-} apt-get install -y -qq --no-install-recommends python3 python3-pip
  }
  echo "scripts/test.sh: installing grpcio grpcio-health-checking grpcio-tools"
  python3 -m pip install -q grpcio grpcio-health-checking grpcio-tools \
    || python3 -m pip install -q --break-system-packages grpcio grpcio-health-checking grpcio-tools
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
# The quickstart tests run the example binary as a user would: build it first.
cargo build --workspace --examples
cargo test --workspace --all-targets
cargo test --workspace --doc
