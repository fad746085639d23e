"""The base of the typed component states: dataclasses turned into the published JSON dict only at the edge.

A worker builds its state model; `Bus.set_state` (and so the MQTT worker) sees the plain dict from `to_json()`,
field order = key order, enums as their strings. A consumer of another component's state parses the dict back
with `from_json()`, which tolerates what an older daemon or a partial test state lacks (missing: the field's
default, or None) and keeps keys it does not know out of the model.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from enum import Enum
from typing import Any, TypeVar

S = TypeVar("S", bound="State")


class State:
    """Base of a component's retained state model (a dataclass): `to_json()` and tolerant `from_json()`."""

    __slots__ = ()

    def to_json(self) -> dict[str, Any]:
        """The JSON-ready dict the daemon publishes (keys in field order)."""
        return _plain(self)  # type: ignore[no-any-return]

    @classmethod
    def from_json(cls: type[S], data: object) -> S:
        """Parse a published state; missing keys read as the field's default (else None), unknown keys are ignored."""
        src = data if isinstance(data, Mapping) else {}
        kwargs: dict[str, Any] = {}
        for name, hint, default in _plan(cls):
            kwargs[name] = _parse(hint, src[name]) if name in src else default()
        return cls(**kwargs)


def _plain(value: Any) -> Any:
    if isinstance(value, State):
        return {name: _plain(getattr(value, name)) for name, _, _ in _plan(type(value))}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@functools.cache
def _plan(cls: type) -> tuple[tuple[str, Any, Any], ...]:
    """(name, type hint, default maker) of each field, in order; cached per class."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default: Any = functools.partial(lambda v: v, f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory
        else:
            default = _none
        out.append((f.name, hints[f.name], default))
    return tuple(out)


def _none() -> None:
    return None


def _parse(hint: Any, value: Any) -> Any:
    """`value` as `hint` where that is a State, an Enum, a dict or list of them, or an optional one; else as is."""
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        for arg in typing.get_args(hint):
            if arg is not type(None):
                parsed = _parse(arg, value)
                if parsed is not value or not _typed(arg):
                    return parsed
        return value
    if isinstance(hint, type) and issubclass(hint, State):
        return hint.from_json(value) if isinstance(value, Mapping) else value
    if isinstance(hint, type) and issubclass(hint, Enum):
        try:
            return hint(value)
        except ValueError:
            return value  # a status this version does not know: kept as the plain string
    if origin is dict and isinstance(value, Mapping):
        item = typing.get_args(hint)[1]
        return {k: _parse(item, v) for k, v in value.items()} if _typed(item) else dict(value)
    if origin is list and isinstance(value, list):
        item = typing.get_args(hint)[0]
        return [_parse(item, v) for v in value] if _typed(item) else list(value)
    return value


def _typed(hint: Any) -> bool:
    """Whether parsing can change a value of this hint (a State or Enum somewhere in it)."""
    if isinstance(hint, type):
        return issubclass(hint, (State, Enum))
    return any(_typed(arg) for arg in typing.get_args(hint))
