#!/usr/bin/env bash
# Installs the Debian tools the test suite talks to (real clients), where they are missing.
set -euo pipefail
need=()
command -v curl >/dev/null 2>&1 || need+=(curl)
# systemd-analyze (verify, security) and systemd-socket-activate; neither needs a running systemd.
if ! command -v systemd-analyze >/dev/null 2>&1 || ! command -v systemd-socket-activate >/dev/null 2>&1; then
  need+=(systemd)
fi
# promtool (check metrics, check rules): Debian's prometheus package ships /usr/bin/promtool
# (tests/functional/test_admin.py, test_grafana.py). Its server is not started by the tests.
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${need[*]} (run as root, or install them)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}"
