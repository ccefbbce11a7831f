#!/usr/bin/env bash
# Entry point of `make bench`: installs the Node packages of the peer and the load
# generator (from their package-lock.json), raises the open-file limit, then runs
# bench/run.py with the project's venv. Arguments go to run.py (--quick, --scenarios ...).
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-.venv/bin/python}"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "bench: Node.js 20+ and npm are required" >&2
  exit 2
fi
major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$major" -lt 20 ]; then
  echo "bench: Node.js 20+ is required (found $(node --version))" >&2
  exit 2
fi
if [ ! -x "$PY" ]; then
  echo "bench: $PY not found: create the project's venv first" >&2
  exit 2
fi

for dir in bench/peer-node bench/loadgen; do
  # Reinstall only when the lock file changed since the last install.
  if [ ! -f "$dir/node_modules/.package-lock.json" ] || ! cmp -s "$dir/package-lock.json" "$dir/node_modules/.bench-lock"; then
    echo "bench: npm ci in $dir" >&2
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    cp "$dir/package-lock.json" "$dir/node_modules/.bench-lock"
  fi
done

# Up to 10,000 viewers per process in scenario (e): raise the open-file limit.
ulimit -Hn 65536 2>/dev/null || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 20000 2>/dev/null || true

exec "$PY" bench/run.py "$@"
