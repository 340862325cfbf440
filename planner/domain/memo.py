"""Results remembered by the identity of the immutable parts they were computed from.

A plan's expert placement can hold 15,000 entries: hashing it on every check would cost more than
the check. The solvers' moves (batching, boundaries, codec ranks) build new plans with
``dataclasses.replace``, which shares the unchanged parts, so the identity of a part says whether it
changed. Each entry keeps its parts alive, so their ids cannot be reused while it is remembered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_SCALARS = (str, int, float, bool, type(None))
_MUTABLE = (list, dict, set, bytearray)
_SCALAR_TYPES = frozenset(_SCALARS)  # exactly these types: by value
_FROZEN_TYPES = frozenset((tuple, frozenset))  # exactly these: by identity (subclasses take the general path)


class IdentityMemo:
    """``memo.get(parts, compute)``: ``compute()`` once per distinct ``parts`` (a tuple whose tuples and
    objects are compared by identity, its strings and numbers by value). Starts over after ``size``
    entries. Parts should be tuples and frozen objects: with a list, dict or set among them (which
    could change in place) nothing is remembered and ``compute()`` runs every time."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._entries: dict[tuple, tuple[tuple, Any]] = {}

    def get(self, parts: tuple, compute: Callable[[], Any]) -> Any:
        key = []
        for p in parts:  # a loop, not generators: the cost model asks several times per plan it prices
            t = type(p)
            if t in _SCALAR_TYPES:
                key.append(p)
            elif t in _FROZEN_TYPES:
                key.append(id(p))
            elif isinstance(p, _MUTABLE):
                return compute()
            else:
                key.append(p if isinstance(p, _SCALARS) else id(p))
        key = tuple(key)
        hit = self._entries.get(key)
        # The key holds scalars by value; the objects must be the very ones remembered.
        if hit is not None and all(a is b or isinstance(b, _SCALARS) for a, b in zip(hit[0], parts, strict=True)):
            return hit[1]
        if len(self._entries) >= self.size:
            self._entries.clear()
        value = compute()
        self._entries[key] = (parts, value)
        return value


class Identity:
    """A key part hashed and compared by the identity of ``obj``, which it keeps alive (so that the
    id cannot be reused while the key exists): a device's profile in a hardware signature, a large
    placement in a search's cache key."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other) -> bool:
        return isinstance(other, Identity) and other.obj is self.obj
