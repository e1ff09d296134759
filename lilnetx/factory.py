"""The user's own code named in a search space or a run: ``{"factory": "pkg.module:function",
"args": {...}}`` (like Hydra's ``_target_``). Only a space or a command line the user wrote
names a factory; a ``.lnx`` file never does, so decoding a file never imports code."""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from typing import Any

from lilnetx.errors import ConfigError

_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def resolve(target: object, what: str) -> Callable[..., Any]:
    """The callable ``pkg.module:attr.path`` names; :class:`ConfigError` when it is malformed,
    cannot be imported or is not callable."""
    if not isinstance(target, str) or not _TARGET.match(target):
        raise ConfigError(f"{what} factory must look like 'package.module:function', but got "
                          f"{str(target)[:100]!r}")
    module, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"{what} factory {target!r}: cannot import {module!r}: "
                          f"{str(e)[:150]}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{what} factory {target!r}: {module!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{what} factory {target!r} is not callable")
    return obj


def call_factory(spec: dict, what: str, **offered: Any) -> Any:
    """Call ``spec["factory"]`` with ``spec["args"]`` and those of ``offered`` (e.g. the data's
    ``in_channels``) that its signature accepts and ``args`` does not set."""
    fn = resolve(spec.get("factory"), what)
    args = spec.get("args") or {}
    if not isinstance(args, dict):
        raise ConfigError(f"{what} factory args must be a mapping, but got "
                          f"{type(args).__name__}")
    try:
        params = inspect.signature(fn).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        extra = {k: v for k, v in offered.items()
                 if k not in args and (takes_any or k in params)}
    except (TypeError, ValueError):
        extra = {}
    try:
        return fn(**args, **extra)
    except TypeError as e:
        raise ConfigError(f"{what} factory {spec['factory']!r} rejected its arguments: "
                          f"{str(e)[:150]}") from None


def describe(spec: object) -> str:
    """A short name for a model or data set given by name or by factory."""
    if isinstance(spec, dict):
        return str(spec.get("factory"))
    return str(spec)
