"""Resource quantities in the canonical form the API server stores and returns.

`k8s.io/apimachinery/pkg/api/resource.Quantity` keeps the format a quantity was
written in (binary `Ki`..`Ei`, decimal SI `n`..`E`, or an exponent `e3`) and
serialises it canonically: no fractional digits, the largest suffix that loses
no precision, a binary quantity below 1024 or with a fraction written as decimal
SI. So `1` stays "1", `0.5` and `500m` are "500m", `1000m` is "1", `1024Mi` is
"1Gi", `1.5Gi` is "1536Mi", `2000` is "2k", `1e3` stays "1e3", and a JSON number
becomes its string. Precision below 1n rounds up to 1n, as the parser does.
"""

from __future__ import annotations

import decimal
import re

_PATTERN = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(([eE][+-]?[0-9]+)|([numkMGTPE]|[KMGTPE]i))?$")
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY = {"": 0, "Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL_SUFFIX = {exponent: suffix for suffix, exponent in _DECIMAL.items()}
_BINARY_SUFFIX = {exponent: suffix for suffix, exponent in _BINARY.items()}
_NANO = decimal.Decimal("1e-9")
_CONTEXT = decimal.Context(prec=80)


class QuantityError(ValueError):
    pass


def parse(value: object) -> tuple[decimal.Decimal, str]:
    """(exact value, format) of a quantity given as a string or a JSON number; format is binary, si or exponent."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise QuantityError(f"quantities must be strings or numbers, got {value!r}")
    text = repr(value) if isinstance(value, float) else str(value)
    match = _PATTERN.match(text.strip())
    if match is None:
        raise QuantityError(
            f"quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {value!r}"
        )
    number, _, exponent, suffix = match.groups()
    amount = _CONTEXT.create_decimal(number)
    if exponent is not None:
        return _round_up(amount.scaleb(int(exponent[1:]), _CONTEXT)), "exponent"
    if suffix in _BINARY and suffix:
        return _round_up(_CONTEXT.multiply(amount, decimal.Decimal(2) ** _BINARY[suffix])), "binary"
    return _round_up(amount.scaleb(_DECIMAL[suffix or ""], _CONTEXT)), "si"


def _round_up(amount: decimal.Decimal) -> decimal.Decimal:
    """Precision below one nano rounds away from zero, as resource.ParseQuantity does."""
    scaled = _CONTEXT.divide(amount, _NANO)
    whole = scaled.to_integral_value(rounding=decimal.ROUND_UP)
    return _CONTEXT.multiply(whole, _NANO)


def canonical(value: object) -> str:
    amount, form = parse(value)
    if amount == 0:
        return "0"
    if form == "binary" and (abs(amount) < 1024 or amount != amount.to_integral_value()):
        form = "si"
    sign = "-" if amount < 0 else ""
    magnitude = abs(amount)
    if form == "binary":
        whole = int(magnitude)
        exponent = 0
        while exponent < 60 and whole % 1024 == 0:
            whole //= 1024
            exponent += 10
        return f"{sign}{whole}{_BINARY_SUFFIX[exponent]}"
    # Decimal: an integer mantissa with an exponent that is a multiple of 3, as large as possible.
    exponent = -9
    mantissa = int(_CONTEXT.divide(magnitude, decimal.Decimal(10) ** exponent))
    while mantissa % 1000 == 0 and exponent < 18:
        mantissa //= 1000
        exponent += 3
    if form == "exponent":
        return f"{sign}{mantissa}" + (f"e{exponent}" if exponent else "")
    return f"{sign}{mantissa}{_DECIMAL_SUFFIX[exponent]}"


__all__ = ["QuantityError", "canonical", "parse"]
