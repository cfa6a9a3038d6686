"""Reading a JSON document a person may have edited, field by field: every refusal starts with
the field's path (`components.dit.inputs[2].axes`), so the message says where to look."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

REQUIRED: Any = object()  # the default of a field that must be present


class InvalidField(ValueError):
    """A field is missing, of the wrong type, of an unknown value or not known at all."""


def is_string(value: Any) -> bool:
    return isinstance(value, str)


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is no size


def is_number(value: Any) -> bool:
    return is_integer(value) or isinstance(value, float)


def is_boolean(value: Any) -> bool:
    return isinstance(value, bool)


def checked(value: Any, path: str, check: Callable[[Any], bool], what: str) -> Any:
    """`value`, or the refusal naming `path`, what it must be and what it is."""
    if not check(value):
        shown = json.dumps(value)
        raise InvalidField(f"{path} must be {what}, got {shown if len(shown) <= 60 else shown[:57] + '...'}")
    return value


def child_path(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if not key.isidentifier():  # file names: "dit.onnx" is one key, not two
        return f"{path}[{json.dumps(key)}]"
    return f"{path}.{key}" if path else key


class Fields:
    """One JSON object at `path`. Each getter marks its key read; `done` refuses the keys none read
    (a field this version does not know is a manifest from elsewhere, not one to half-read)."""

    def __init__(self, value: Any, path: str) -> None:
        self.value: dict[str, Any] = checked(value, path or "the top level", _is_object, "an object")
        self.path = path
        self._unread = set(self.value)

    def get(self, key: str, check: Callable[[Any], bool], what: str, default: Any = REQUIRED) -> Any:
        self._unread.discard(key)
        if key not in self.value:
            if default is REQUIRED:
                raise InvalidField(f"{child_path(self.path, key)} is missing")
            return default
        return checked(self.value[key], child_path(self.path, key), check, what)

    def string(self, key: str, default: Any = REQUIRED) -> str:
        return self.get(key, is_string, "a string", default)

    def integer(self, key: str) -> int:
        return self.get(key, is_integer, "an integer")

    def number(self, key: str) -> float:
        return float(self.get(key, is_number, "a number"))

    def boolean(self, key: str) -> bool:
        return self.get(key, is_boolean, "true or false")

    def object(self, key: str) -> Fields:
        return Fields(self.get(key, _is_object, "an object"), child_path(self.path, key))

    def mapping(self, key: str, default: Any = REQUIRED) -> list[tuple[str, Any, str]]:
        """The (name, value, path) of each member of the object `key`."""
        members = self.get(key, _is_object, "an object", default)
        return [
            (name, value, child_path(child_path(self.path, key), name)) for name, value in members.items()
        ]

    def elements(self, key: str, what: str, default: Any = REQUIRED) -> list[tuple[Any, str]]:
        """The (value, path) of each element of the list `key`; `what` describes the list."""
        values = self.get(key, lambda v: isinstance(v, list), what, default)
        return [(value, child_path(child_path(self.path, key), i)) for i, value in enumerate(values)]

    def done(self) -> None:
        if self._unread:
            raise InvalidField(
                f"{child_path(self.path, sorted(self._unread)[0])} is not a field this version reads"
            )


def _is_object(value: Any) -> bool:
    return isinstance(value, dict)
