"""One registry per concept (models, datasets, methods, metrics), with plugins.

A registry maps names to objects (a model builder, a dataset loader, a method class, a metric).
Entries come from this package (registered when their module is imported) and from installed
third-party packages through an entry-point group (``lilnetx.models``, ``lilnetx.datasets``,
``lilnetx.methods``, ``lilnetx.metrics``): an entry point names an object, registered under the
entry point's name, or a module whose import registers its entries with the decorators. Plugins
are loaded on the first lookup, so importing ``lilnetx`` stays cheap and a broken plugin is
reported when it is needed, as a :class:`ConfigError` naming it.

Every list the CLI, the YAML schema, the sweep and the dashboard offer is read from here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from lilnetx.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names to objects of one kind. ``kind`` is used in messages ("model", "method");
    ``group`` is the entry-point group plugins register through."""

    def __init__(self, kind: str, group: str, *, builtins: Callable[[], None] | None = None):
        self.kind, self.group = kind, group
        self._entries: dict[str, T] = {}
        self._builtins = builtins
        self._loaded = False

    def register(self, name: str, obj: T | None = None, *, replace: bool = False):
        """Register ``obj`` as ``name``; without ``obj``, a decorator. A name registered twice
        is an error unless ``replace``."""
        check_name(name, self.kind)

        def add(o: T) -> T:
            if name in self._entries and not replace and self._entries[name] is not o:
                raise ConfigError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = o
            return o

        return add(obj) if obj is not None else add

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if self._builtins is not None:
            self._builtins()
        from importlib.metadata import entry_points

        for ep in sorted(entry_points(group=self.group), key=lambda e: e.name):
            if ep.name in self._entries:
                continue
            try:
                obj = ep.load()
            except Exception as e:  # a plugin's own bug: name it, do not crash the listing
                raise ConfigError(f"plugin {ep.name!r} ({ep.value}) of {self.group} failed to "
                                  f"load: {type(e).__name__}: {str(e)[:150]}") from None
            if ep.name not in self._entries and not _is_module(obj):
                self._entries[ep.name] = obj

    def get(self, name: str) -> T:
        """The entry ``name``; :class:`ConfigError` listing the choices when unknown."""
        self._load()
        if not isinstance(name, str) or name not in self._entries:
            shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:80] + "..."
            raise ConfigError(f"unknown {self.kind} {shown}; choose one of: "
                              f"{', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        self._load()
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def items(self) -> Iterator[tuple[str, T]]:
        self._load()
        return iter(list(self._entries.items()))


def _is_module(obj: object) -> bool:
    import types

    return isinstance(obj, types.ModuleType)


def check_name(name: object, kind: str) -> str:
    """Registry names: 1-64 characters of letters, digits and ``_ - . :``, starting with a
    letter (they appear in YAML, on the command line, in MLflow tags and in ``.lnx`` files)."""
    import re

    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.:\-]{0,63}", name):
        raise ConfigError(f"a {kind} name must be 1-64 letters, digits or _-.: starting with a "
                          f"letter, but got {str(name)[:80]!r}")
    return name
