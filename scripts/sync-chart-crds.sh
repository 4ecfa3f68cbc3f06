#!/usr/bin/env bash
# Copy the CRDs from crds/ (the source of truth) into charts/modelfleet/crds/,
# byte for byte. With --check, change nothing and exit 1 if the chart differs.
# tests/chart/test_crds.py runs the same comparison.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$repo_root/crds"
dst="$repo_root/charts/modelfleet/crds"
check=false
[[ "${1:-}" == "--check" ]] && check=true

shopt -s nullglob
sources=("$src"/*.yaml)
if (( ${#sources[@]} == 0 )); then
    echo "sync-chart-crds: no CRDs in $src" >&2
    exit 1
fi

status=0
for file in "${sources[@]}"; do
    target="$dst/$(basename "$file")"
    if cmp -s "$file" "$target"; then
        continue
    fi
    if $check; then
        echo "sync-chart-crds: $target differs from $file; run scripts/sync-chart-crds.sh" >&2
        status=1
    else
        cp "$file" "$target"
        echo "sync-chart-crds: updated $target" >&2
    fi
done
exit $status
