"""Label and field selectors as the API server parses and applies them.

The grammar is that of `k8s.io/apimachinery/pkg/labels.Parse`: comma-separated
requirements, each `key`, `!key`, `key=value`, `key==value`, `key!=value`,
`key in (a,b)`, `key notin (a,b)`, `key>N` or `key<N`. `!=` and `notin` also
match objects without the key, as on a real server. A selector that does not
parse is a `SelectorError` (the emulator answers 400 BadRequest, as the API
server does), never a silent "match everything".

Field selectors take `=`, `==` and `!=` on the fields a resource supports:
`metadata.name` and `metadata.namespace` for every resource (as for custom
resources on a real server); anything else is refused as the API server does
("field label not supported").
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

# A qualified name with an optional DNS-subdomain prefix (label keys), and a label value.
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_KEY = re.compile(rf"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?{_NAME}$")
_VALUE = re.compile(rf"^({_NAME})?$")
_TOKEN = re.compile(r"\s*(!=|==|=|!|\(|\)|,|<|>|[^\s!=(),<>]+)")

SUPPORTED_FIELDS = ("metadata.name", "metadata.namespace")


class SelectorError(ValueError):
    """The selector does not parse; the message says where, as the API server's would."""


@dataclasses.dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # exists, !, =, !=, in, notin, gt, lt
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.operator == "exists":
            return present
        if self.operator == "!":
            return not present
        if self.operator in ("=", "in"):
            return present and value in self.values
        if self.operator in ("!=", "notin"):
            return not present or value not in self.values
        # gt / lt: the label must be an integer
        if value is None or not re.fullmatch(r"-?\d+", value):
            return False
        bound = int(self.values[0])
        return int(value) > bound if self.operator == "gt" else int(value) < bound


@dataclasses.dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)


def _tokens(text: str) -> list[str]:
    tokens, position = [], 0
    text = text.rstrip()
    while position < len(text):
        found = _TOKEN.match(text, position)
        if found is None:  # pragma: no cover - the pattern matches any non-space character
            raise SelectorError(f"unable to parse requirement: unexpected character at {position}")
        tokens.append(found.group(1))
        position = found.end()
    return tokens


def _check_key(key: str) -> str:
    if not _KEY.match(key) or len(key.rsplit("/", 1)[-1]) > 63:
        raise SelectorError(f"unable to parse requirement: invalid label key {key!r}: must be a qualified name")
    return key


def _check_value(value: str) -> str:
    if len(value) > 63 or not _VALUE.match(value):
        raise SelectorError(f"unable to parse requirement: invalid label value {value!r}: must be a valid label value")
    return value


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.position = 0

    def peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise SelectorError(f"unable to parse requirement: {self.text!r} ends too early")
        self.position += 1
        return token

    def parse(self) -> LabelSelector:
        requirements = []
        while self.peek() is not None:
            requirements.append(self.requirement())
            separator = self.peek()
            if separator is None:
                break
            if separator != ",":
                raise SelectorError(f"found {separator!r}, expected: ',' or 'end of string' in {self.text!r}")
            self.take()
            if self.peek() is None:
                raise SelectorError(f"found 'end of string', expected: identifier after ',' in {self.text!r}")
        return LabelSelector(tuple(requirements))

    def requirement(self) -> Requirement:
        token = self.take()
        if token == "!":
            return Requirement(_check_key(self.take()), "!")
        key = _check_key(token)
        operator = self.peek()
        if operator is None or operator == ",":
            return Requirement(key, "exists")
        self.take()
        if operator in ("=", "==", "!="):
            value = self.peek()
            if value is None or value == ",":
                return Requirement(key, "!=" if operator == "!=" else "=", ("",))
            return Requirement(key, "!=" if operator == "!=" else "=", (_check_value(self.take()),))
        if operator in ("in", "notin"):
            return Requirement(key, operator, self.value_set())
        if operator in (">", "<"):
            bound = self.take()
            if not re.fullmatch(r"-?\d+", bound):
                raise SelectorError(f"unable to parse requirement: for {operator!r}, {bound!r} is not an integer")
            return Requirement(key, "gt" if operator == ">" else "lt", (bound,))
        raise SelectorError(
            f"found {operator!r}, expected: '=', '!=', '==', 'in', 'notin' after {key!r} in {self.text!r}"
        )

    def value_set(self) -> tuple[str, ...]:
        if self.take() != "(":
            raise SelectorError(f"found something else, expected: '(' in {self.text!r}")
        values: list[str] = []
        expect_value = True
        while (token := self.take()) != ")":
            if token == ",":
                if expect_value:
                    values.append("")  # `in (a,,b)` holds the empty value, as in Go
                expect_value = True
            elif expect_value:
                values.append(_check_value(token))
                expect_value = False
            else:
                raise SelectorError(f"found {token!r}, expected: ',' or ')' in {self.text!r}")
        if expect_value and values:
            values.append("")
        if not values:
            raise SelectorError(f"for 'in' and 'notin' operators, values set can't be empty in {self.text!r}")
        return tuple(values)


def parse_label_selector(text: str) -> LabelSelector:
    return _Parser(text).parse()


def parse_field_selector(text: str, supported: tuple[str, ...] = SUPPORTED_FIELDS) -> LabelSelector:
    """A field selector as requirements on a mapping of field path -> value."""
    requirements = []
    for term in filter(None, (t.strip() for t in text.split(","))):
        operator = "!=" if "!=" in term else "=" if "=" in term else None
        if operator is None:
            raise SelectorError(f"invalid selector: {term!r}; can't understand {term!r}")
        field, value = (part.strip() for part in term.replace("==", "=").split(operator, 1))
        if field not in supported:
            raise SelectorError(f'field label not supported: "{field}"')
        requirements.append(Requirement(field, operator, (value,)))
    return LabelSelector(tuple(requirements))


def match_labels(selector: Mapping[str, Any] | None) -> LabelSelector | None:
    """A `metav1.LabelSelector` (matchLabels + matchExpressions) as requirements; None selects nothing."""
    if selector is None:
        return None
    requirements = [Requirement(str(k), "=", (str(v),)) for k, v in (selector.get("matchLabels") or {}).items()]
    operators = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
    for expression in selector.get("matchExpressions") or []:
        operator = operators[expression["operator"]]
        requirements.append(Requirement(expression["key"], operator, tuple(expression.get("values") or ())))
    return LabelSelector(tuple(requirements))


__all__ = [
    "SUPPORTED_FIELDS",
    "LabelSelector",
    "Requirement",
    "SelectorError",
    "match_labels",
    "parse_field_selector",
    "parse_label_selector",
]
