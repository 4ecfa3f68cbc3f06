"""The Open Inference Protocol over REST byte by byte: exact datatypes, the binary extension,
content codings, and errors that are always `{"error": ...}` (real uvicorn, real onnxruntime)."""

from __future__ import annotations

import gzip
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from modelfleet_runtime.settings import Settings
from tests.support.live_server import live_server
from tests.support.protocol_models import build_every_datatype, build_labels, build_mixed


def settings_for(path: Path, **overrides: Any) -> Settings:
    return Settings(model=str(path), name="m", model_version="1", warmup_iterations=1, **overrides)


def one_input(datatype: str, data: list[Any], shape: list[int] | None = None) -> dict[str, Any]:
    return {"name": f"in_{datatype}", "shape": shape or [1, len(data)], "datatype": datatype, "data": data}


def binary_body(header: dict[str, Any], *tensors: bytes) -> tuple[bytes, dict[str, str]]:
    head = orjson.dumps(header)
    return head + b"".join(tensors), {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(head)),
    }


# The corruption cases (each was answered 200 with a wrong value), and their neighbours.
CORRUPTIONS = [
    ("INT8", [300, -129, 0], "flat index 0 is out of range for INT8 [-128, 127]: 300"),
    ("INT8", [0, -129, 0], "flat index 1 is out of range for INT8 [-128, 127]: -129"),
    ("UINT8", [0, 0, -1], "flat index 2 is out of range for UINT8 [0, 255]: -1"),
    ("INT64", [1.9, 0, 0], "flat index 0 is not an integer (INT64): 1.9"),
    ("UINT64", [0, -1, 0], "flat index 1 is out of range for UINT64 [0, 18446744073709551615]: -1"),
    ("UINT64", [18446744073709551616, 0, 0], "not an exact UINT64 integer"),
    ("INT64", [2**63, 0, 0], "flat index 0 is out of range for INT64"),
    ("INT64", [-(2**63) - 1, 0, 0], "not an exact INT64 integer"),
    ("INT32", [0, 2**31, 0], "flat index 1 is out of range for INT32"),
    ("UINT16", [0, 0, 65536], "flat index 2 is out of range for UINT16 [0, 65535]: 65536"),
    ("FP32", [1.0, True, 2.0], "flat index 1 is a boolean: True"),
    ("INT32", [1, 2, False], "flat index 2 is a boolean: False"),
    ("BOOL", [True, 1, False], "data must be BOOL values; the value at flat index 1 is a number: 1"),
    ("FP16", [1.0, 70000.0, 0.0], "flat index 1 is not a finite FP16 number: 70000.0"),
    ("FP32", [1.0, 1e39, 0.0], "flat index 1 is not a finite FP32 number"),
    ("FP64", [1.0, "2", 0.0], "flat index 1 is a string: '2'"),
    ("FP64", [1.0, None, 0.0], "flat index 1 is null"),
]


@pytest.mark.parametrize(("datatype", "data", "message"), CORRUPTIONS)
async def test_values_a_datatype_cannot_hold_are_refused_with_422_naming_input_index_and_value(
    tmp_path: Path, datatype: str, data: list[Any], message: str
) -> None:
    path = build_every_datatype(tmp_path / "all.onnx")
    async with live_server(settings_for(path)) as live:
        metadata = (await live.client.get("/v2/models/m")).json()
        inputs = [
            one_input(t["datatype"], [False] * 3 if t["datatype"] == "BOOL" else [0, 0, 0]) for t in metadata["inputs"]
        ]
        inputs = [one_input(datatype, data) if i["datatype"] == datatype else i for i in inputs]
        # The standard json module writes integers of any size, as a client in another language may.
        r = await live.client.post("/v2/models/m/infer", content=json.dumps({"inputs": inputs}))
    assert r.status_code == 422, r.text
    assert r.json()["error"].startswith(f"input 'in_{datatype}': ") and message in r.json()["error"]


async def test_the_largest_integers_pass_exactly_in_json(tmp_path: Path) -> None:
    path = build_every_datatype(tmp_path / "all.onnx")
    exact = {"INT64": [2**63 - 2, -(2**63), 2**53 + 1], "UINT64": [2**64 - 2, 2**63 + 1, 0]}
    async with live_server(settings_for(path)) as live:
        metadata = (await live.client.get("/v2/models/m")).json()
        inputs = [
            one_input(t["datatype"], exact.get(t["datatype"], [True] * 3 if t["datatype"] == "BOOL" else [1] * 3))
            for t in metadata["inputs"]
        ]
        r = await live.client.post(
            "/v2/models/m/infer", json={"inputs": inputs, "outputs": [{"name": "out_INT64"}, {"name": "out_UINT64"}]}
        )
    assert r.status_code == 200, r.text
    assert [o["data"] for o in r.json()["outputs"]] == [[2**63 - 1, -(2**63) + 1, 2**53 + 2], [2**64 - 1, 2**63 + 2, 1]]


async def test_binary_inputs_and_outputs_follow_the_json_header(tmp_path: Path) -> None:
    x = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    header = {
        "id": "b1",
        "inputs": [
            {"name": "x", "shape": [1, 3], "datatype": "FP32", "parameters": {"binary_data_size": 12}},
            {"name": "k", "shape": [1, 1], "datatype": "INT64", "data": [5]},
        ],
        "outputs": [{"name": "scaled", "parameters": {"binary_data": True}}, {"name": "next"}],
    }
    body, headers = binary_body(header, x.tobytes())
    async with live_server(settings_for(build_mixed(tmp_path / "mixed.onnx"))) as live:
        r = await live.client.post("/v2/models/m/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    length = int(r.headers["inference-header-content-length"])
    answer = orjson.loads(r.content[:length])
    scaled, following = answer["outputs"]
    assert answer["id"] == "b1" and scaled["parameters"] == {"binary_data_size": 12} and "data" not in scaled
    np.testing.assert_array_equal(np.frombuffer(r.content[length:], dtype="<f4").reshape(1, 3), x * 5)
    assert following == {"name": "next", "datatype": "INT64", "shape": [1, 1], "data": [6]}
    assert len(r.content) == length + 12


async def test_a_raw_binary_request_is_the_one_input_with_binary_outputs(tmp_path: Path) -> None:
    from tests.support.onnx_models import build_mlp

    path = build_mlp(tmp_path / "mlp.onnx", (4, 8, 1))
    rows = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    async with live_server(settings_for(path)) as live:
        raw = await live.client.post(
            "/v2/models/m/infer", content=rows.tobytes(), headers={"Inference-Header-Content-Length": "0"}
        )
        plain = await live.client.post(
            "/v2/models/m/infer",
            json={"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32", "data": rows.ravel().tolist()}]},
        )
        torn = await live.client.post(
            "/v2/models/m/infer", content=rows.tobytes()[:-1], headers={"Inference-Header-Content-Length": "0"}
        )
    length = int(raw.headers["inference-header-content-length"])
    assert orjson.loads(raw.content[:length])["outputs"][0]["shape"] == [3, 1]
    from_json = np.array(plain.json()["outputs"][0]["data"], dtype=np.float32)
    np.testing.assert_array_equal(np.frombuffer(raw.content[length:], dtype="<f4"), from_json)
    assert torn.status_code == 400 and "not a whole number of rows" in torn.json()["error"]


def _labels_header(size: int) -> dict[str, Any]:
    return {
        "inputs": [{"name": "text", "shape": [1, 2], "datatype": "BYTES", "parameters": {"binary_data_size": size}}]
    }


@pytest.mark.parametrize(
    ("tensor", "status", "message"),
    [
        (
            struct.pack("<I", 3) + b"cat" + struct.pack("<I", 9) + b"dog",
            400,
            "element 1 declares 9 bytes, only 3 remain",
        ),
        (struct.pack("<I", 3) + b"cat\x01\x00", 400, "ends before element 1 of 2"),
        (struct.pack("<I", 3) + b"cat" + struct.pack("<I", 1) + b"\xff", 422, "element 1 is not UTF-8 text"),
        (struct.pack("<I", 0) + struct.pack("<I", 1) + b"ab", 400, "1 bytes left after the 2 BYTES elements"),
        (struct.pack("<I", 0), 400, "has 2 BYTES elements, but 4 bytes cannot hold their 4-byte lengths"),
    ],
    ids=["overrun", "short", "not-utf8", "trailing", "shape-beyond-the-bytes"],
)
async def test_bad_bytes_tensors_are_refused_with_the_reason(
    tmp_path: Path, tensor: bytes, status: int, message: str
) -> None:
    body, headers = binary_body(_labels_header(len(tensor)), tensor)
    async with live_server(settings_for(build_labels(tmp_path / "labels.onnx"))) as live:
        r = await live.client.post("/v2/models/m/infer", content=body, headers=headers)
    assert r.status_code == status and message in r.json()["error"], r.text


@pytest.mark.parametrize(
    ("header_length", "extra", "message"),
    [
        (None, b"", "needs the Inference-Header-Content-Length header"),
        ("abc", b"", "Inference-Header-Content-Length is not a number"),
        ("99999", b"", "Inference-Header-Content-Length is 99999, but the body has"),
        (
            "len",
            b"\x00" * 4,
            "4 bytes of binary data follow the JSON header, but the inputs' binary_data_size add up to 0",
        ),
    ],
    ids=["no-header-length", "not-a-number", "past-the-end", "unclaimed-bytes"],
)
async def test_a_malformed_binary_request_says_what_is_wrong(
    tmp_path: Path, header_length: str | None, extra: bytes, message: str
) -> None:
    head = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]},
                {"name": "k", "shape": [1, 1], "datatype": "INT64", "data": [1]},
            ]
        }
    )
    headers = (
        {}
        if header_length is None
        else {"Inference-Header-Content-Length": str(len(head)) if header_length == "len" else header_length}
    )
    body = head + (extra or b"\x00\x00")
    async with live_server(settings_for(build_mixed(tmp_path / "mixed.onnx"))) as live:
        r = await live.client.post("/v2/models/m/infer", content=body, headers=headers)
    assert r.status_code == 400 and message in r.json()["error"], r.text


async def test_bool_bytes_other_than_0_and_1_are_refused(tmp_path: Path) -> None:
    async with live_server(settings_for(build_every_datatype(tmp_path / "all.onnx"))) as live:
        metadata = (await live.client.get("/v2/models/m")).json()
        inputs = [one_input(t["datatype"], [0, 0, 0]) for t in metadata["inputs"] if t["datatype"] != "BOOL"]
        inputs.append({"name": "in_BOOL", "shape": [1, 3], "datatype": "BOOL", "parameters": {"binary_data_size": 3}})
        body, headers = binary_body({"inputs": inputs}, b"\x01\x02\x00")
        r = await live.client.post("/v2/models/m/infer", content=body, headers=headers)
    assert r.status_code == 422 and "the BOOL at flat index 1 is byte 2" in r.json()["error"], r.text


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}] * 2,
            "input 'x' is given twice",
        ),
        (
            [
                {
                    "name": "x",
                    "shape": [1, 3],
                    "datatype": "FP32",
                    "data": [1, 2, 3],
                    "parameters": {"binary_data_size": 12},
                }
            ],
            "has both 'data'",
        ),
        ([{"name": "x", "shape": [1, -3], "datatype": "FP32", "data": [1, 2, 3]}], "dimensions must not be negative"),
        ([{"name": "x", "shape": [1, 3], "datatype": "FP8", "data": [1, 2, 3]}], "the model takes 'FP32'"),
    ],
    ids=["duplicate", "data-and-binary", "negative-dim", "unknown-datatype"],
)
async def test_malformed_inference_requests_are_400(tmp_path: Path, inputs: list[Any], message: str) -> None:
    body = {"inputs": [*inputs, {"name": "k", "shape": [1, 1], "datatype": "INT64", "data": [1]}]}
    async with live_server(settings_for(build_mixed(tmp_path / "mixed.onnx"))) as live:
        r = await live.client.post("/v2/models/m/infer", json=body)
    assert r.status_code == 400 and message in r.json()["error"], r.text


def _mixed_request(rows: int) -> bytes:
    return orjson.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [rows, 3], "datatype": "FP32", "data": np.linspace(0.1, 9.9, 3 * rows).tolist()},
                {"name": "k", "shape": [rows, 1], "datatype": "INT64", "data": [2] * rows},
            ]
        }
    )


@pytest.mark.parametrize("coding", ["gzip", "deflate", "raw-deflate"])
async def test_compressed_request_bodies_are_accepted(tmp_path: Path, coding: str) -> None:
    plain = _mixed_request(4)
    body = {"gzip": gzip.compress, "deflate": zlib.compress, "raw-deflate": lambda b: zlib.compress(b, wbits=-15)}[
        coding
    ](plain)
    async with live_server(settings_for(build_mixed(tmp_path / "mixed.onnx"))) as live:
        r = await live.client.post(
            "/v2/models/m/infer", content=body, headers={"Content-Encoding": coding.removeprefix("raw-")}
        )
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][1]["data"] == [3, 3, 3, 3]


async def test_a_body_that_inflates_past_the_limit_is_413_not_an_out_of_memory(tmp_path: Path) -> None:
    limit = 64 * 1024
    bomb = gzip.compress(b" " * (1024 * 1024 * 1024 // 16))  # 64 MiB of spaces in about 64 KiB
    async with live_server(settings_for(build_mixed(tmp_path / "mixed.onnx"), max_body_bytes=limit * 2)) as live:
        r = await live.client.post("/v2/models/m/infer", content=bomb, headers={"Content-Encoding": "gzip"})
        broken = await live.client.post("/v2/models/m/infer", content=b"not gzip", headers={"Content-Encoding": "gzip"})
        other = await live.client.post("/v2/models/m/infer", content=b"{}", headers={"Content-Encoding": "br"})
    assert len(bomb) < limit * 2
    assert r.status_code == 413 and "inflates beyond the limit" in r.json()["error"]
    assert broken.status_code == 400 and "not valid gzip data" in broken.json()["error"]
    assert other.status_code == 400 and "'br' is not supported" in other.json()["error"]


async def test_large_answers_are_compressed_when_the_client_accepts_it(tmp_path: Path) -> None:
    settings = settings_for(build_mixed(tmp_path / "mixed.onnx"), max_queue=4000)
    async with live_server(settings) as live:
        # httpx announces gzip and deflate and inflates the answer itself.
        big = await live.client.post("/v2/models/m/infer", content=_mixed_request(3000))
        small = await live.client.post("/v2/models/m/infer", content=_mixed_request(1))
        refused = await live.client.post(
            "/v2/models/m/infer", content=_mixed_request(3000), headers={"Accept-Encoding": "gzip;q=0, identity"}
        )
    assert big.headers["content-encoding"] == "gzip" and len(big.json()["outputs"][0]["data"]) == 9000
    assert "content-encoding" not in small.headers and "content-encoding" not in refused.headers
    assert len(refused.content) >= 32 * 1024 and len(refused.content) > int(big.headers["content-length"])


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("GET", "/nowhere", 404, "no endpoint GET /nowhere"),
        ("GET", "/v2/models/m/config", 404, "model configuration"),
        ("POST", "/v2/repository/index", 404, "repository"),
        ("GET", "/v2/models/m/infer", 405, "GET is not allowed on /v2/models/m/infer; use POST"),
        ("DELETE", "/predict", 405, "DELETE is not allowed on /predict"),
        ("POST", "/feedback", 404, "feedback is not enabled"),
    ],
)
async def test_framework_errors_are_json_error_objects(
    tmp_path: Path, method: str, path: str, status: int, message: str
) -> None:
    async with live_server(settings_for(build_mixed(tmp_path / "mixed.onnx"))) as live:
        r = await live.client.request(method, path, json={"features": [1, 2, 3, 4], "label": 1})
    assert r.status_code == status and r.headers["content-type"] == "application/json"
    assert list(r.json()) == ["error"] and message in r.json()["error"]


async def test_v2_server_metadata_lists_the_binary_extension(tmp_path: Path) -> None:
    async with live_server(settings_for(build_mixed(tmp_path / "mixed.onnx"))) as live:
        r = await live.client.get("/v2")
    assert r.json()["extensions"] == ["binary_tensor_data"]


async def test_the_v2_json_path_still_reads_nested_data_and_booleans_in_parameters(tmp_path: Path) -> None:
    body = {
        "parameters": {"binary_data_output": False, "note": "true"},
        "inputs": [
            {"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [[1, 2, 3], [4, 5, 6]]},
            {"name": "k", "shape": [2, 1], "datatype": "INT64", "data": [[1], [2]]},
        ],
        "outputs": [{"name": "scaled", "parameters": {"binary_data": False}}],
    }
    async with live_server(settings_for(build_mixed(tmp_path / "mixed.onnx"))) as live:
        r = await live.client.post("/v2/models/m/infer", json=body)
        sneaky = await live.client.post(
            "/v2/models/m/infer",
            json={**body, "inputs": [{**body["inputs"][0], "data": [[1, 2, 3], [4, True, 6]]}, body["inputs"][1]]},
        )
    assert r.json()["outputs"] == [
        {"name": "scaled", "datatype": "FP32", "shape": [2, 3], "data": [1, 2, 3, 8, 10, 12]}
    ]
    assert sneaky.status_code == 422 and "flat index 4 is a boolean" in sneaky.json()["error"]


@pytest.mark.parametrize("rows", [2, 600])  # a body of a few hundred bytes, and one of several KiB
async def test_a_boolean_among_v2_json_numbers_is_refused_whatever_the_size_of_the_body(
    tmp_path: Path, rows: int
) -> None:
    x: list[list[Any]] = [[float(i), 2.0, 3.0] for i in range(rows)]
    x[-1][1] = True
    inputs = [
        {"name": "x", "shape": [rows, 3], "datatype": "FP32", "data": x},
        {"name": "k", "shape": [rows, 1], "datatype": "INT64", "data": [[1]] * rows},
    ]
    async with live_server(settings_for(build_mixed(tmp_path / "mixed.onnx"))) as live:
        wanted = [{"name": "scaled"}]
        r = await live.client.post("/v2/models/m/infer", json={"inputs": inputs, "outputs": wanted})
        x[-1][1] = 2.0
        fine = await live.client.post("/v2/models/m/infer", json={"inputs": inputs, "outputs": wanted})
    assert r.status_code == 422 and f"flat index {rows * 3 - 2} is a boolean" in r.json()["error"]
    assert fine.status_code == 200 and fine.json()["outputs"][0]["shape"] == [rows, 3]
