#!/usr/bin/env bash
# Tools the end-to-end tests run that no one here wrote: Prometheus' own
# parsers (prometheus_client from PyPI; promtool from Debian's prometheus
# package), Kubernetes' schemas (kubernetes-validate, with the
# jsonschema library it brings, from PyPI), and, as root, iptables (nft
# and legacy, Debian) for the redirect tests in network namespaces. Idempotent and quick when they are present; tests/exposition.rs
# runs it itself when they are missing, so `cargo test` on a fresh root
# machine sets itself up.
set -euo pipefail
if ! python3 -c 'import prometheus_client' >/dev/null 2>&1; then
  pip install --quiet prometheus-client || python3 -m pip install --quiet prometheus-client
fi
if ! command -v kubernetes-validate >/dev/null 2>&1 || ! python3 -c 'import jsonschema, yaml' >/dev/null 2>&1; then
  pip install --quiet kubernetes-validate jsonschema pyyaml || python3 -m pip install --quiet kubernetes-validate jsonschema pyyaml
fi
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    # Only promtool is wanted: policy-rc.d (exit 101, Debian's "do not
    # start services") keeps the package from starting a Prometheus server.
    had_policy=0; [ -e /usr/sbin/policy-rc.d ] && had_policy=1
    [ "$had_policy" = 1 ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; }
    apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null; }
    apt_install || { apt-get update -q >/dev/null && apt_install; }
    [ "$had_policy" = 1 ] || rm -f /usr/sbin/policy-rc.d
  else
    echo "tests/setup.sh: promtool missing and cannot apt-get install prometheus (not root?)" >&2
    exit 1
  fi
fi
if [ "$(id -u)" = 0 ] && ! command -v iptables-nft-restore >/dev/null 2>&1; then
  apt_iptables() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends iptables >/dev/null; }
  apt_iptables || { apt-get update -q >/dev/null && apt_iptables; }
fi
