#!/usr/bin/env bash
# Installs what the benchmarks need and is not on a fresh machine: oha (the
# HTTP load generator) from crates.io, nginx, haproxy and valgrind (for
# instruction counts) from Debian. Stops the system services the packages
# start, so they cannot skew measurements.
set -euo pipefail
need_apt=()
command -v nginx >/dev/null 2>&1 || need_apt+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
command -v valgrind >/dev/null 2>&1 || need_apt+=(valgrind)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  (service nginx stop; service haproxy stop) >/dev/null 2>&1 || true
fi
command -v oha >/dev/null 2>&1 || cargo install oha --locked --quiet
