"""What a compression method is: its searchable parameters, how it trains, what it stores.

A method is a small class registered by name (:func:`register_method`, or a third-party
package's ``lilnetx.methods`` entry point). Its :attr:`Method.params` are the single source of
the YAML schema's method keys, the ``lilnetx train`` flags and the ``lilnetx methods`` listing.
One instance serves one run::

    method = create_method("imp", target_sparsity=0.9)
    model = method.prepare(net)                 # e.g. LilNetX converts to latent layers
    result = method.train(model, splits, cfg, progress, init=start_network_or_None)
    plain = method.plain(model)                  # the torch network that is measured
    data = method.encode(model, arch)            # the .lnx bytes, through lilnetx.format
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from lilnetx.errors import ConfigError
from lilnetx.registry import Registry


@dataclass(frozen=True)
class Param:
    """A method parameter. ``kind`` is ``int``, ``float`` or ``str``; ``low``/``high`` are
    inclusive bounds (``high_open``: ``high`` excluded); ``choices`` the allowed strings."""

    name: str
    kind: type
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    high_open: bool = False
    choices: tuple[str, ...] | None = None

    def check(self, value: Any) -> Any:
        """``value`` converted to :attr:`kind`, or :class:`ConfigError` saying what is allowed."""
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:80] + "..."
        if self.kind is str:
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                raise ConfigError(f"{self.name} must be one of {', '.join(self.choices or ())}, "
                                  f"but got {shown}")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{self.name} must be a number, but got {shown}")
        if self.kind is int:
            if float(value) != int(value):
                raise ConfigError(f"{self.name} must be an integer, but got {shown}")
            value = int(value)
        else:
            value = float(value)
        too_high = self.high is not None and (value >= self.high if self.high_open
                                              else value > self.high)
        if (self.low is not None and value < self.low) or too_high:
            raise ConfigError(f"{self.name} must be in {self.range_text()}, but got {shown}")
        return value

    def range_text(self) -> str:
        if self.choices:
            return ", ".join(self.choices)
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        return f"[{lo}, {hi}{')' if self.high_open else ']'}"


class Method:
    """Base class of compression methods. Subclasses set :attr:`name`, :attr:`summary`,
    :attr:`params` and :attr:`default_lr`, and implement :meth:`train` and :meth:`encode`."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    default_lr: ClassVar[float] = 1e-3
    """Learning rate when the run gives none."""
    accepts_init: ClassVar[bool] = True
    """Whether a run may start from a trained network (``init_from``)."""

    def __init__(self, **options: Any):
        known = {p.name: p for p in self.params}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(f"method {self.name} takes no parameter {unknown[0]!r}; its "
                              f"parameters: {', '.join(known) or 'none'}")
        self.options = {p.name: p.check(options.get(p.name, p.default)) for p in self.params}

    def prepare(self, net: nn.Module, *, width: float = 1.0) -> nn.Module:
        """The network this method trains, from a freshly built plain ``net`` (``width``: the
        width multiplier it was built with)."""
        return net

    def train(self, model: nn.Module, splits, cfg, progress: Callable[[dict], None] | None,
              *, init: nn.Module | None = None):
        """Train (and compress) ``model`` in place on ``splits`` with ``cfg`` (a
        :class:`lilnetx.TrainConfig`); ``init`` is a plain network whose state to start from.
        Returns a :class:`lilnetx.train.TrainResult`."""
        raise NotImplementedError

    def plain(self, model: nn.Module) -> nn.Module:
        """The plain torch network whose accuracy, size and speed are measured (exactly what
        the file decodes to)."""
        return model

    def metrics(self, model: nn.Module) -> dict[str, float]:
        """Extra summary metrics of the trained model (e.g. ``bits_estimate``)."""
        return {}

    def encode(self, model: nn.Module, arch: dict) -> bytes:
        """The ``.lnx`` bytes of the trained ``model`` (built with :mod:`lilnetx.format`)."""
        raise NotImplementedError


def _builtins() -> None:
    import importlib

    importlib.import_module("lilnetx.methods")  # registers lilnetx, dense, quant, imp


METHODS: Registry[type[Method]] = Registry("method", "lilnetx.methods", builtins=_builtins)


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register a :class:`Method` subclass under its :attr:`Method.name`."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise ConfigError(f"register_method takes a Method subclass, but got {cls!r}")
    METHODS.register(cls.name, cls)
    return cls


def method_names() -> list[str]:
    return METHODS.names()


def method_class(name: str) -> type[Method]:
    cls = METHODS.get(name)
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise ConfigError(f"plugin method {name!r} is not a lilnetx.methods.Method subclass")
    return cls


def create_method(name: str, **options: Any) -> Method:
    """An instance of method ``name`` with validated ``options``."""
    return method_class(name)(**options)


def all_params() -> dict[str, Param]:
    """Every method parameter by name (a name shared by several methods has one meaning)."""
    out: dict[str, Param] = {}
    for name in method_names():
        for p in method_class(name).params:
            out.setdefault(p.name, p)
    return out
