"""A tiny name → factory registry (timm-style): CLI choices and error messages for free."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .errors import AuglensError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories; `get` on an unknown name raises an error listing the valid names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: ``@REG.register("name")`` (defaults to the object's ``__name__``)."""

        def deco(obj: T) -> T:
            key = name or obj.__name__  # type: ignore[attr-defined]
            if key in self._items:
                raise ValueError(f"{self.kind} '{key}' is registered twice")
            self._items[key] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise AuglensError(
                f"unknown {self.kind} '{name}'{hint}; valid {self.kind}s: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def describe(self, name: str) -> dict[str, Any]:
        """Parameters (name → default) and first docstring line of a registered factory/class."""
        obj = self.get(name)
        target = obj.__init__ if inspect.isclass(obj) else obj  # type: ignore[misc]
        params = {
            p.name: (None if p.default is inspect.Parameter.empty else p.default)
            for p in inspect.signature(target).parameters.values()
            if p.name not in ("self", "cfg", "num_classes", "kwargs", "ctx", "model")
            and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        }
        doc = (inspect.getdoc(obj) or "").split("\n")[0]
        return {"params": params, "doc": doc}
