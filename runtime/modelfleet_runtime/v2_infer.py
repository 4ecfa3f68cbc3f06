"""The Open Inference Protocol's infer step, shared by REST (v2_api.py) and gRPC (grpc_api.py).

A protocol module turns its request into `InputTensor`s (name, datatype, shape and a
decoder of the data) and the names of the outputs asked for; this module checks them
against the model before any data is decoded, decodes them, adds feature-store
entities, runs the rows through the batcher and returns the outputs by name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InvalidInput
from .inputs import check_entity_tensor, check_row_count
from .model import OnnxModel, TensorSpec
from .model_server import ModelServer


@dataclass(frozen=True)
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    # The data as an array of `shape` in the datatype's dtype; raises RuntimeProblem naming what is wrong.
    decode: Callable[[], np.ndarray]


def _check_names(model: OnnxModel, given: Sequence[InputTensor]) -> None:
    """The request sends exactly the model's inputs, by name (each once: the parsers refuse repeats)."""
    specs = {s.name for s in model.inputs}
    names = {t.name for t in given}
    missing, unknown = sorted(specs - names), sorted(names - specs)
    if unknown or missing:
        problems = ([f"unknown inputs {unknown}"] if unknown else []) + (
            [f"missing inputs {missing}"] if missing else []
        )
        raise InvalidInput(f"{'; '.join(problems)}; the model takes {[s.name for s in model.inputs]}")


def _check_tensor(spec: TensorSpec, given: InputTensor, rows: int | None) -> int:
    """`given` fits `spec` (datatype, rank, fixed dimensions, rows like the other inputs); returns its rows."""
    if given.datatype != spec.datatype:
        raise InvalidInput(f"input {spec.name!r}: datatype {given.datatype!r} given, the model takes {spec.datatype!r}")
    shape = given.shape
    if len(shape) != len(spec.shape) or any(d is not None and d != g for d, g in zip(spec.shape, shape, strict=True)):
        expected = [-1 if d is None else d for d in spec.shape]
        raise InvalidInput(f"input {spec.name!r}: shape {list(shape)} given, the model takes {expected}")
    if shape[0] == 0:
        raise InvalidInput(f"input {spec.name!r}: shape {list(shape)} has no rows; send at least one")
    if rows is not None and shape[0] != rows:
        raise InvalidInput(f"input {spec.name!r} has {shape[0]} rows; the other inputs have {rows}")
    return shape[0]


def output_names(model: OnnxModel, wanted: Sequence[str] | None) -> list[str]:
    """The outputs asked for, in the request's order; all of the model's when it names none."""
    if not wanted:
        return model.output_names
    unknown = sorted(set(wanted) - set(model.output_names))
    if unknown:
        raise InvalidInput(f"outputs {unknown} unknown; the model has {model.output_names}")
    return list(wanted)


def datatypes(model: OnnxModel) -> dict[str, str]:
    return {o.name: o.datatype for o in model.outputs}


@dataclass(frozen=True)
class Inferred:
    outputs: dict[str, np.ndarray]
    # The prediction's id in the prediction log, for feedback; None when it is not logged.
    request_id: str | None


async def infer(
    server: ModelServer, model: OnnxModel, given: Sequence[InputTensor], entity_ids: Any = None
) -> Inferred:
    """Every output of the model for `given`, after the checks above (entity_ids: parameters.entity_ids)."""
    _check_names(model, given)
    by_name = {t.name: t for t in given}
    if entity_ids is not None:
        feeds, rows = await _with_entities(server, model, by_name, entity_ids)
    else:
        rows_seen: int | None = None
        for spec in model.inputs:
            rows_seen = _check_tensor(spec, by_name[spec.name], rows_seen)
        assert rows_seen is not None  # a model has at least one input
        rows = rows_seen
        check_row_count(rows, server.settings.max_queue)
        feeds = {spec.name: by_name[spec.name].decode() for spec in model.inputs}
    outputs = await server.infer(feeds, rows)
    # The prediction log (--feedback-dir): queued for a background write, never waited for.
    request_id = server.prediction_log.record(feeds, outputs) if server.prediction_log is not None else None
    return Inferred(outputs, request_id)


def entity_ids_of(parameters: dict[str, Any], model: OnnxModel) -> Any:
    """`parameters.entity_ids` (or one `entity_id`) as sent, None when the request names no entity."""
    entity_ids = parameters.get("entity_ids") or ([parameters["entity_id"]] if "entity_id" in parameters else None)
    if entity_ids is not None and model.input_width is None:
        raise InvalidInput("entity_id needs a model with one 2-D feature input")
    return entity_ids


async def _with_entities(
    server: ModelServer, model: OnnxModel, given: dict[str, InputTensor], entity_ids: Any
) -> tuple[dict[str, np.ndarray], int]:
    """The request's own feature columns with each row's entity features placed before them."""
    if not isinstance(entity_ids, list) or not all(isinstance(e, str) and e for e in entity_ids):
        raise InvalidInput("parameters.entity_id must be a string (entity_ids: a list of strings)")
    if server.features is None:
        raise InvalidInput("entity_id was given but this server has no feature store configured")
    spec = model.inputs[0]  # entity_ids_of allowed only a model with one 2-D input
    tensor = given[spec.name]
    if tensor.datatype != spec.datatype:
        raise InvalidInput(
            f"input {spec.name!r}: datatype {tensor.datatype!r} given, the model takes {spec.datatype!r}"
        )
    # The row limit and the shape are checked before the store is asked for anything (DESIGN.md section 9).
    check_row_count(len(entity_ids), server.settings.max_queue)
    width = spec.shape[1]
    assert width is not None
    check_entity_tensor(spec.name, list(tensor.shape), len(entity_ids), server.features.width, width)
    prefixes = await server.features.get_many(entity_ids)
    array = tensor.decode()
    feeds = {spec.name: np.concatenate([np.stack(prefixes).astype(spec.dtype, copy=False), array], axis=1)}
    return feeds, len(entity_ids)
