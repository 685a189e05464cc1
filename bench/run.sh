#!/usr/bin/env bash
# `make bench`: installs the benchmark's own tools, then runs the driver.
#
# hardserve is installed editable from this checkout into bench/.venv, beside gunicorn,
# waitress and granian, so the servers run on the same interpreter with the same site-packages.
# The driver copies src/hardserve at the start of a run and serves that copy, so edits made
# while it runs do not mix two versions into one set of results.
#
# Usage: bench/run.sh [--quick] [--rounds N] [--duration S] [--apps A,B] [--servers S,T]
# [--scenarios matrix,versus,concurrency,workers,memory,attack,crowded]; --help lists the
# rest. A full run takes about 37 minutes on 2 cores, --quick (one short round) about 9.
set -euo pipefail
bench_dir="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$bench_dir")"
venv="$bench_dir/.venv"
python="${PYTHON:-python3}"

if ! command -v wrk >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "wrk is missing: install the Debian package wrk (run as root to have it installed)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi
command -v taskset >/dev/null 2>&1 || { echo "taskset (util-linux) is missing" >&2; exit 1; }

# Reinstall only when the requirements or the project's metadata change.
stamp="$venv/.installed"
if [ ! -f "$stamp" ] || [ "$bench_dir/requirements.txt" -nt "$stamp" ] \
    || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  echo "installing gunicorn, waitress, granian, matplotlib and hardserve into bench/.venv" >&2
  mkdir -p "$bench_dir/out"
  log="$bench_dir/out/install.log"
  # Quiet unless it fails: pip and the build backend print pages of notices.
  if ! {
    { [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"; } &&
      "$venv/bin/python" -m pip install --upgrade pip &&
      "$venv/bin/python" -m pip install -r "$bench_dir/requirements.txt" &&
      "$venv/bin/python" -m pip install -e "$root"
  } >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "install failed; the whole log is in $log" >&2
    exit 1
  fi
  touch "$stamp"
fi

cd "$root"
exec "$venv/bin/python" -m bench.bench "$@"
