"""Turn JSON rows into a model input array, or say exactly what is wrong with them.

Shared by every endpoint that accepts rows of features (/predict, /feedback), so
the same input gets the same answer everywhere. Validation happens before a row
can reach a batch.
"""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

import numpy as np
import orjson

from .errors import InvalidInput, InvalidValue, PayloadTooLarge

_NUMBER_TYPES = {int, float}


def parse_json(body: bytes) -> Any:
    if not body:
        raise InvalidInput("empty request body: send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        hint = " (NaN and Infinity are not valid JSON numbers)" if b"NaN" in body or b"Infinity" in body else ""
        raise InvalidInput(f"malformed JSON: {exc}{hint}") from None


def parse_json_object(body: bytes) -> dict[str, Any]:
    payload = parse_json(body)
    if not isinstance(payload, dict):
        raise InvalidInput(f"the body must be a JSON object, got {type(payload).__name__}")
    return payload


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _find_problem(rows: list[Any], width: int | None) -> Exception:
    """Slow path: walk the rows to name the first bad one."""
    for r, row in enumerate(rows):
        if not isinstance(row, list):
            return InvalidInput(f"row {r} must be a list of numbers, got {type(row).__name__}")
        if width is not None and len(row) != width:
            return InvalidInput(f"row {r}: expected {width} features, got {len(row)}")
        for c, value in enumerate(row):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return InvalidValue(f"row {r} feature {c} is not a number: {_describe(value)}")
    return InvalidInput("rows must all have the same number of numeric features")


def payload_rows(payload: dict[str, Any], *, max_rows: int, entity: bool, missing: str) -> tuple[bool, list[Any]]:
    """(single, rows): the rows a request sends and whether it sent one row rather than a list.

    `{"features": row}` is one row, `{"instances": [row, ...]}` a list of them; with an
    entity that supplies every feature, a request may send neither (one empty row).
    Otherwise the request is refused with `missing`, which says what to send.
    """
    if "features" in payload:
        rows = [payload["features"]]
        if not isinstance(rows[0], list):
            raise InvalidInput("'features' must be a list of numbers")
        return True, rows
    if "instances" in payload:
        rows = payload["instances"]
        if not isinstance(rows, list):
            raise InvalidInput("'instances' must be a list of rows")
        check_row_count(len(rows), max_rows)
        return False, rows
    if entity:
        return True, [[]]
    raise InvalidInput(missing)


def check_entity_widths(rows: list[Any], prefix: np.ndarray, width: int) -> None:
    """The entity's features (`prefix`) and each row's own must add up to the model's `width`."""
    check_entity_rows(rows, prefix.shape[-1], width)


def check_entity_rows(rows: list[Any], entity_width: int, width: int) -> None:
    """Each row's own features and the `entity_width` an entity brings must add up to `width`.

    Checked before the entity is looked up: a request that cannot be served costs the store nothing.
    """
    for row in rows:
        if isinstance(row, list) and len(row) != width - entity_width:
            raise InvalidInput(
                f"entity features ({entity_width}) + request features ({len(row)}) "
                f"= {entity_width + len(row)}, but the model takes {width}"
            )


def check_entity_tensor(name: str, shape: list[int], entities: int, entity_width: int, width: int) -> None:
    """A V2 input sent with `entities` entity ids: one row per entity, the entity's features left out.

    Checked before any entity is looked up (DESIGN.md section 9: bounds before work).
    """
    own = width - entity_width
    if shape != [entities, own]:
        raise InvalidInput(
            f"input {name!r}: with {entities} entities of {entity_width} features, shape must be "
            f"[{entities}, {own}] (the model takes {width}), got {shape}"
        )


def check_row_count(rows: int, max_rows: int) -> None:
    if rows > max_rows:
        raise PayloadTooLarge(f"{rows} rows in one request; the limit is {max_rows}")


_NUMBER_SYNTAX = b"0123456789.eE+-[],: \t\r\n"


def only_numbers(body: bytes, payload: dict[str, Any]) -> bool:
    """True when every value below the top level of the JSON `body` is a number or a list of them.

    Deleting the bytes that numbers and lists are made of must leave exactly what
    the top-level keys and string values (an `entity_id`) leave: any other string,
    true/false/null or nested object leaves more. One C-speed pass over the bytes
    replaces a per-value type check, which on large requests cost more than the model run.
    """
    skeleton = orjson.dumps({key: value if isinstance(value, str) else 0 for key, value in payload.items()})
    return body.translate(None, _NUMBER_SYNTAX) == skeleton.translate(None, _NUMBER_SYNTAX)


def rows_to_array(
    rows: list[Any], width: int | None, dtype: np.dtype, *, prefix: np.ndarray | None = None, numbers_only: bool = False
) -> np.ndarray:
    """Validate `rows` (a list of feature lists) and return a (len(rows), width) array of `dtype`.

    `prefix` (one row of entity features) is placed before every row's own
    features; `width` is then the model's width minus the prefix's.
    `numbers_only` says the caller already knows every leaf is a JSON number (see `only_numbers`).
    """
    if not rows:
        raise InvalidInput("no rows: send at least one row of features")
    if not numbers_only:
        _check_numbers(rows, width)
    converted = _to_dtype(_parse_rows(rows, width, dtype, numbers_only), rows, dtype)
    return converted if prefix is None else prepend(prefix, converted)


def prepend(prefix: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """`prefix` (one row of entity features) placed before every row of `rows`, in their dtype."""
    dtype = rows.dtype
    return np.concatenate(
        [np.broadcast_to(prefix.astype(dtype, copy=False), (len(rows), prefix.shape[-1])), rows], axis=1
    )


def _check_numbers(rows: list[Any], width: int | None) -> None:
    # One C-speed pass over the element types; NumPy alone would quietly take booleans and strings.
    kinds: set[type] = set()
    try:
        for row in rows:
            kinds.update(map(type, row))
    except TypeError:
        raise _find_problem(rows, width) from None
    if not kinds <= _NUMBER_TYPES:
        raise _find_problem(rows, width)


def _parse_rows(rows: list[Any], width: int | None, dtype: np.dtype, numbers_only: bool) -> np.ndarray:
    """The rows as a 2-D numeric array of `width` columns, in the model's dtype when that is cheap."""
    try:
        with np.errstate(over="ignore"):
            if numbers_only and dtype.kind == "f" and width is not None and set(map(len, rows)) <= {width}:
                # Numbers of rows of the right width: straight into the model's float type.
                array = np.fromiter(itertools.chain.from_iterable(rows), dtype=dtype, count=len(rows) * width)
                array = array.reshape(len(rows), width)
            else:
                array = np.asarray(rows)
    except (ValueError, TypeError, OverflowError):
        raise _find_problem(rows, width) from None
    if array.ndim != 2 or array.dtype.kind not in "iuf":
        raise _find_problem(rows, width)
    if width is not None and array.shape[1] != width:
        raise InvalidInput(f"expected {width} features, got {array.shape[1]}")
    return array


def _to_dtype(array: np.ndarray, rows: list[Any], dtype: np.dtype) -> np.ndarray:
    """`array` in the model's `dtype`; refuses non-finite floats, and fractions for an integer model."""
    if array.dtype.kind == "f" or dtype.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            converted = array.astype(dtype, copy=False)
        if dtype.kind == "f" and not np.isfinite(converted).all():
            r, c = np.argwhere(~np.isfinite(converted))[0]
            raise InvalidValue(f"row {r} feature {c} is not a finite {dtype.name} number: {rows[r][c]!r}")
        if dtype.kind != "f" and not np.array_equal(converted, array):
            raise InvalidValue(f"the model takes {dtype.name} features; got non-integral values")
    else:
        converted = array.astype(dtype, copy=False)
    return converted


class PredictRows(NamedTuple):
    """A /predict body read into the model's dtype: its own features, and the entity to prepend."""

    single: bool
    array: np.ndarray
    entity_id: str | None


def read_predict_body(
    body: bytes, *, width: int, dtype: np.dtype, entity_width: int | None, max_rows: int
) -> PredictRows:
    """Parse and check a /predict body; pure, so a large body can be read in another process.

    `entity_width` is what a named entity brings (None: no feature store). The row count
    and the widths are checked before any array is built and before the entity is looked up.
    """
    payload = parse_json_object(body)
    entity_id = _entity_id(payload, entity_width is not None)
    single, rows = payload_rows(
        payload,
        max_rows=max_rows,
        entity=entity_id is not None,
        missing="expected 'features' (one row) or 'instances' (a list of rows)",
    )
    own_width = width
    if entity_width is not None and entity_id is not None:
        check_entity_rows(rows, entity_width, width)
        own_width = width - entity_width
    array = rows_to_array(rows, own_width, dtype, numbers_only=only_numbers(body, payload))
    return PredictRows(single, array, entity_id)


def read_instances_body(body: bytes, *, width: int, dtype: np.dtype, max_rows: int) -> np.ndarray:
    """Parse and check a KServe V1 body (`{"instances": [[...], ...]}`); pure, like read_predict_body."""
    payload = parse_json_object(body)
    if "instances" not in payload:
        raise InvalidInput("expected 'instances': a list of rows of features")
    _, rows = payload_rows(payload, max_rows=max_rows, entity=False, missing="")
    return rows_to_array(rows, width, dtype, numbers_only=only_numbers(body, payload))


def _entity_id(payload: dict[str, Any], has_store: bool) -> str | None:
    """The entity the request names, None when it names none."""
    if "entity_id" not in payload:
        return None
    if not has_store:
        raise InvalidInput("entity_id was given but this server has no feature store configured")
    entity_id = payload["entity_id"]
    if not isinstance(entity_id, str) or not entity_id:
        raise InvalidInput("entity_id must be a non-empty string")
    return entity_id
