"""Row validation: the fast path for bodies of plain numbers gives the same answers as the careful one."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from modelfleet_runtime.errors import InvalidInput, InvalidValue
from modelfleet_runtime.inputs import only_numbers, rows_to_array

F32 = np.dtype(np.float32)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"instances": [[1, 2.5, -3e-2, 4E+3]]}', True),
        (b'{"features": [1, 2], "other": 3}', True),
        (b'{"instances": [[1, "2"]]}', False),
        (b'{"instances": [[1, true]]}', False),
        (b'{"instances": [[1, false]]}', False),
        (b'{"instances": [[1, null]]}', False),
        (b'{"instances": [[1, {"a": 1}]]}', False),
        (b'{"features": [1, 2], "entity_id": "u1"}', True),
        (b'{"features": [1, "2"], "entity_id": "u1"}', False),
        (b'{"entity_id": "u1", "features": [1, "u1"]}', False),
        (b'{"features": [1], "features": [2]}', False),
    ],
)
def test_only_numbers_sees_every_non_number(body: bytes, expected: bool) -> None:
    assert only_numbers(body, orjson.loads(body)) is expected


@pytest.mark.parametrize(
    "rows",
    [
        [[1, 2, 3]],
        [[1.5, -2.25, 3e38], [0, 0, 0]],
        [[1, 2], [3, 4, 5]],
        [[1, 2, 3], [4, 5]],
        [[1, 2, 1e39]],
        [[[1, 2, 3]]],
        [1, 2, 3],
    ],
)
def test_fast_and_careful_paths_agree(rows: list) -> None:
    def outcome(numbers_only: bool) -> object:
        try:
            return rows_to_array(rows, 3, F32, numbers_only=numbers_only).tolist()
        except (InvalidInput, InvalidValue) as exc:
            return type(exc).__name__, exc.message

    assert outcome(True) == outcome(False)
