#!/usr/bin/env bash
# Regenerates the Open Inference Protocol's gRPC code in runtime/modelfleet_runtime/grpc_predict_v2/
# from the vendored grpc_predict_v2.proto (KServe's docs/predict-api/v2, unchanged), with the
# grpcio-tools pinned in the dev extra. The generated code is committed: the runtime image needs
# no protoc. tests/runtime/test_grpc_codegen.py fails when the committed files differ from a run.
#
# One change to protoc's output: the messages go into a private descriptor pool instead of
# protobuf's default one, because tritonclient and kserve register the same `inference.*`
# names there and a process may import one of them beside this server (protobuf refuses
# a second definition of a name). The wire format does not depend on the pool.
#
# Usage: scripts/gen-grpc.sh [OUTPUT_ROOT]   (default: runtime/, i.e. in place)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
out="${1:-$root/runtime}"
proto=modelfleet_runtime/grpc_predict_v2/grpc_predict_v2.proto
mkdir -p "$out/$(dirname "$proto")"
"$python" -m grpc_tools.protoc -I "$root/runtime" \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" "$proto"
generated="$out/${proto%.proto}_pb2.py"
sed -i 's/_descriptor_pool\.Default()\.AddSerializedFile(/_descriptor_pool.DescriptorPool().AddSerializedFile(/' "$generated"
grep -q '_descriptor_pool.DescriptorPool().AddSerializedFile(' "$generated" || {
  echo "gen-grpc: protoc's output changed shape; the private-pool rewrite did not apply to $generated" >&2
  exit 1
}
