#!/usr/bin/env bash
# The project's one test command: make sure a pinned helm v3 is at hand for the chart
# tests, then run the whole pytest suite with the project's virtualenv.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
python="${PYTHON:-$root/.venv/bin/python}"
PYTHON="$python" "$root/scripts/get-helm.sh" >/dev/null
exec "$python" -m pytest "$@"
