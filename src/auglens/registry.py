"""A tiny name → factory registry (timm-style): CLI choices and error messages for free.

Besides plain names, a registry can hold **families**: every name ``"<prefix>:<member>"`` (e.g.
``"captum:IntegratedGradients"``) is resolved by the family's factory, which receives the member
name. `names` lists a family as one pattern (``"captum:<Attribution>"``), so `auglens list` and
every "valid …" error message show it; `describe` of the pattern lists the members.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .errors import AuglensError

T = TypeVar("T")


@dataclass(frozen=True)
class Family(Generic[T]):
    """Names ``"<prefix>:<member>"`` resolved by ``factory(member)``.

    members:     the valid member names; may raise `AuglensError` (e.g. a missing optional
                 package), which then reaches the caller of `Registry.get`.
    doc:         one line for `auglens list` (what the family is, how to install it).
    placeholder: shown in the pattern, ``"<prefix>:<placeholder>"``.
    """

    prefix: str
    factory: Callable[[str], T]
    members: Callable[[], list[str]]
    doc: str
    placeholder: str = "<Name>"

    @property
    def pattern(self) -> str:
        return f"{self.prefix}:{self.placeholder}"


class Registry(Generic[T]):
    """Maps names to factories; `get` on an unknown name raises an error listing the valid names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._families: dict[str, Family[T]] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: ``@REG.register("name")`` (defaults to the object's ``__name__``)."""

        def deco(obj: T) -> T:
            key = name or obj.__name__  # type: ignore[attr-defined]
            if key in self._items:
                raise ValueError(f"{self.kind} '{key}' is registered twice")
            if key.partition(":")[0] in self._families and ":" in key:
                raise ValueError(f"{self.kind} '{key}' collides with a registered family")
            self._items[key] = obj
            return obj

        return deco

    def register_family(
        self,
        prefix: str,
        factory: Callable[[str], T],
        members: Callable[[], list[str]],
        doc: str,
        placeholder: str = "<Name>",
    ) -> None:
        """Register the family of names ``"<prefix>:<member>"`` (see `Family`)."""
        if not prefix or ":" in prefix or prefix in self._families:
            raise ValueError(f"{self.kind} family prefix '{prefix}' is invalid or taken")
        self._families[prefix] = Family(prefix, factory, members, doc, placeholder)

    def families(self) -> dict[str, Family[T]]:
        """Registered families by prefix."""
        return dict(self._families)

    def get(self, name: str) -> T:
        if name in self._items:
            return self._items[name]
        prefix, sep, member = name.partition(":")
        family = self._families.get(prefix) if sep else None
        if family is None:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise AuglensError(
                f"unknown {self.kind} '{name}'{hint}; valid {self.kind}s: {', '.join(self.names())}"
            )
        valid = family.members()  # may raise (optional package missing)
        if member not in valid:
            close = difflib.get_close_matches(member, valid, n=1)
            hint = f" (did you mean '{prefix}:{close[0]}'?)" if close else ""
            raise AuglensError(
                f"unknown {self.kind} '{name}'{hint}; valid names for {family.pattern}: "
                + ", ".join(valid)
            )
        return family.factory(member)

    def names(self) -> list[str]:
        """Plain names (sorted), then one pattern per family (``"captum:<Attribution>"``)."""
        return sorted(self._items) + [self._families[p].pattern for p in sorted(self._families)]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        if name in self._items:
            return True
        prefix, sep, member = name.partition(":")
        family = self._families.get(prefix) if sep else None
        if family is None:
            return False
        try:
            return member in family.members()
        except AuglensError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def describe(self, name: str) -> dict[str, Any]:
        """Parameters (name → default) and first docstring line of a registered factory/class;
        for a family pattern, the family's line with its members (or why they are unavailable)."""
        for family in self._families.values():
            if name == family.pattern:
                try:
                    members = "members: " + ", ".join(family.members())
                except AuglensError as e:
                    members = f"unavailable: {e}"
                return {"params": {}, "doc": f"{family.doc}; {members}"}
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


@dataclass(frozen=True)
class Schema:
    """What a runtime registry accepts, declared without importing it (so `auglens.config`
    validates names and parameters without loading the modules that implement them): plain
    names with their parameter names, and family prefixes whose members (and their parameters)
    are only known at run time. A test keeps it equal to the registry it describes."""

    kind: str
    params: dict[str, tuple[str, ...]]
    families: dict[str, str]  # prefix → pattern shown in messages

    def names(self) -> list[str]:
        """As `Registry.names`: plain names sorted, then the family patterns."""
        return sorted(self.params) + [self.families[p] for p in sorted(self.families)]

    def check(self, name: str) -> tuple[str, ...] | None:
        """The parameter names of ``name`` (None for a family member: checked at run time);
        an unknown name raises the same error as `Registry.get`."""
        if name in self.params:
            return self.params[name]
        prefix, sep, member = name.partition(":")
        if sep and prefix in self.families and member:
            return None
        close = difflib.get_close_matches(name, self.params, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise AuglensError(
            f"unknown {self.kind} '{name}'{hint}; valid {self.kind}s: {', '.join(self.names())}"
        )
