"""An ONNX model's external data, read from the model's own folder and from nowhere else.

A model may keep its weights in files beside it (`location` in a tensor's
external_data). onnx and onnxruntime resolve a relative location from the
working directory or the model's folder depending on how the model is
loaded, and a location can name any file (`../../secret`, an absolute path, a
symlink out). Loading through `load_model` resolves every location under the
model's folder, symlinks included, and refuses the model otherwise. The server
loads by path with onnxruntime >= 1.24.1, which makes the same check itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import onnx
from onnx import external_data_helper

from .errors import ModelLoadError


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph holds: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)


def check_external_data(model: onnx.ModelProto, folder: Path) -> None:
    """Every external-data location of `model` resolves to a file under `folder`."""
    root = os.path.realpath(folder)
    for tensor in _tensors(model.graph):
        if not external_data_helper.uses_external_data(tensor):
            continue
        location = external_data_helper.ExternalDataInfo(tensor).location
        resolved = os.path.realpath(os.path.join(root, location))
        if not location or os.path.isabs(location) or os.path.commonpath([root, resolved]) != root:
            raise ModelLoadError(
                f"tensor {tensor.name!r} keeps its data in {location!r}, outside the model's folder; "
                "external data must lie beside the model"
            )


def load_model(path: Path) -> onnx.ModelProto:
    """The model at `path` with its external data, which must lie under the model's folder."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and onnx's own
        raise ModelLoadError(f"{path} is not an ONNX model: {exc}") from exc
    folder = path.parent
    check_external_data(model, folder)
    external_data_helper.load_external_data_for_model(model, os.path.realpath(folder))
    return model
