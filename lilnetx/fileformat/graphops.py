"""The allowlist of a ``"kind": "graph"`` architecture (:mod:`lilnetx.fileformat.graph`).

A graph names its operators by strings that are looked up in the tables below, and nothing
else: a name that is not a key here is refused, no name is ever imported or evaluated.

- :data:`MODULES`: the layer types a graph may build, each with the schema of its constructor
  arguments (what a file may set, checked value by value, and the default of a missing key);
- :data:`FUNCTIONS`: the functions a ``call_function`` node may call;
- :data:`METHODS`: the tensor methods a ``call_method`` node may call;
- :data:`ATTRIBUTES`: the attributes ``getattr`` may read (a tensor's shape and rank).

None of these creates a tensor out of nothing, writes a file or reaches the interpreter: each
computes on the tensors its node is given.
"""

from __future__ import annotations

import math
import operator
import sys

import torch
import torch.nn.functional as F
from torch import nn

from lilnetx.errors import FormatError
from lilnetx.fileformat.limits import short

MAX_DIM = 1 << 20
"""Largest channel count, feature count, kernel size, stride, padding or dilation of a layer."""


class _Int:
    def __init__(self, lo: int = 0, hi: int = MAX_DIM, none: bool = False):
        self.lo, self.hi, self.none = lo, hi, none

    def check(self, v):
        if v is None and self.none:
            return None
        if type(v) is not int or not self.lo <= v <= self.hi:
            raise ValueError(f"an integer in {self.lo}..{self.hi}")
        return v


class _Pair(_Int):
    """An int or a pair of ints (stored as a list, built as a tuple)."""

    def __init__(self, lo: int = 0, hi: int = MAX_DIM, none: bool = False, words=()):
        super().__init__(lo, hi, none)
        self.words = tuple(words)

    def check(self, v):
        if isinstance(v, str) and v in self.words:
            return v
        if isinstance(v, list | tuple):
            if len(v) != 2:
                raise ValueError("two values")
            return tuple(_Int(self.lo, self.hi, self.none).check(x) for x in v)
        return super().check(v)


class _Float:
    def __init__(self, lo: float = -math.inf, hi: float = math.inf, none: bool = False):
        self.lo, self.hi, self.none = lo, hi, none

    def check(self, v):
        if v is None and self.none:
            return None
        if type(v) not in (int, float) or not (math.isfinite(v) and self.lo <= v <= self.hi):
            raise ValueError(f"a number in {self.lo:g}..{self.hi:g}")
        return float(v)


class _Bool:
    def check(self, v):
        if type(v) is not bool:
            raise ValueError("true or false")
        return v


class _Words:
    def __init__(self, *words: str):
        self.words = words

    def check(self, v):
        if v not in self.words:
            raise ValueError(f"one of {', '.join(self.words)}")
        return v


class _Shape:
    def check(self, v):
        if not isinstance(v, list | tuple) or not 1 <= len(v) <= 8:
            raise ValueError("a list of 1 to 8 sizes")
        return tuple(_Int(1).check(x) for x in v)


_INPLACE = {"inplace": (_Bool(), False)}
_BN = {"num_features": (_Int(1), None), "eps": (_Float(0.0, 1.0), 1e-5),
       "momentum": (_Float(0.0, 1.0, none=True), 0.1), "affine": (_Bool(), True),
       "track_running_stats": (_Bool(), True)}
_POOL = {"kernel_size": (_Pair(1), None), "stride": (_Pair(1, none=True), None),
         "padding": (_Pair(0), 0), "ceil_mode": (_Bool(), False)}
_ADAPTIVE = {"output_size": (_Pair(1, none=True), None)}

MODULES: dict[str, tuple[type[nn.Module], dict]] = {
    "Conv2d": (nn.Conv2d, {
        "in_channels": (_Int(1), None), "out_channels": (_Int(1), None),
        "kernel_size": (_Pair(1), None), "stride": (_Pair(1), 1),
        "padding": (_Pair(0, words=("same", "valid")), 0), "dilation": (_Pair(1), 1),
        "groups": (_Int(1), 1), "bias": (_Bool(), True),
        "padding_mode": (_Words("zeros", "reflect", "replicate", "circular"), "zeros")}),
    "Linear": (nn.Linear, {"in_features": (_Int(1), None), "out_features": (_Int(1), None),
                           "bias": (_Bool(), True)}),
    "BatchNorm1d": (nn.BatchNorm1d, _BN),
    "BatchNorm2d": (nn.BatchNorm2d, _BN),
    "LayerNorm": (nn.LayerNorm, {"normalized_shape": (_Shape(), None),
                                 "eps": (_Float(0.0, 1.0), 1e-5),
                                 "elementwise_affine": (_Bool(), True), "bias": (_Bool(), True)}),
    "GroupNorm": (nn.GroupNorm, {"num_groups": (_Int(1), None), "num_channels": (_Int(1), None),
                                 "eps": (_Float(0.0, 1.0), 1e-5), "affine": (_Bool(), True)}),
    "ReLU": (nn.ReLU, _INPLACE),
    "ReLU6": (nn.ReLU6, _INPLACE),
    "SiLU": (nn.SiLU, _INPLACE),
    "Hardswish": (nn.Hardswish, _INPLACE),
    "Hardsigmoid": (nn.Hardsigmoid, _INPLACE),
    "GELU": (nn.GELU, {"approximate": (_Words("none", "tanh"), "none")}),
    "LeakyReLU": (nn.LeakyReLU, {"negative_slope": (_Float(), 0.01), **_INPLACE}),
    "ELU": (nn.ELU, {"alpha": (_Float(), 1.0), **_INPLACE}),
    "Hardtanh": (nn.Hardtanh, {"min_val": (_Float(), -1.0), "max_val": (_Float(), 1.0),
                               **_INPLACE}),
    "Sigmoid": (nn.Sigmoid, {}),
    "Tanh": (nn.Tanh, {}),
    "Softmax": (nn.Softmax, {"dim": (_Int(-8, 8, none=True), None)}),
    "Identity": (nn.Identity, {}),
    "Dropout": (nn.Dropout, {"p": (_Float(0.0, 1.0), 0.5), **_INPLACE}),
    "Dropout2d": (nn.Dropout2d, {"p": (_Float(0.0, 1.0), 0.5), **_INPLACE}),
    "Flatten": (nn.Flatten, {"start_dim": (_Int(-8, 8), 1), "end_dim": (_Int(-8, 8), -1)}),
    "MaxPool2d": (nn.MaxPool2d, {**_POOL, "dilation": (_Pair(1), 1)}),
    "AvgPool2d": (nn.AvgPool2d, {**_POOL, "count_include_pad": (_Bool(), True),
                                 "divisor_override": (_Int(1, none=True), None)}),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d, _ADAPTIVE),
    "AdaptiveMaxPool2d": (nn.AdaptiveMaxPool2d, _ADAPTIVE),
}
"""Layer type name -> (class, {argument: (check, default)}); a default of None is required."""

TYPE_NAMES = {cls: name for name, (cls, _) in MODULES.items()}

_FLAGS = {"bias": lambda m: m.bias is not None}
_NEVER = {"return_indices"}  # module attributes a stored layer must not have set


def _canon(check, value):
    return (value, value) if isinstance(check, _Pair) and type(value) is int else value


def module_arguments(module: nn.Module) -> dict:
    """The constructor arguments of an allowlisted layer, as JSON (only those that differ from
    the schema's defaults). Raises FormatError for a layer the schema cannot describe."""
    name = TYPE_NAMES[type(module)]
    if any(getattr(module, a, False) for a in _NEVER):
        raise FormatError(f"a {name} with {'/'.join(_NEVER)} cannot be stored in a graph")
    out = {}
    for key, (check, default) in MODULES[name][1].items():
        value = _FLAGS[key](module) if key in _FLAGS else getattr(module, key)
        if isinstance(value, tuple | list):
            value = list(value)
        try:
            checked = check.check(value)
        except ValueError as e:
            raise FormatError(f"a {name} has {key}={short(value)}; a graph stores {e}") from None
        if default is None or _canon(check, checked) != _canon(check, check.check(default)):
            out[key] = value
    return out


_FACTORY = {nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm}


def build_module(type_name, args, what: str, device: str = "meta") -> nn.Module:
    """A fresh allowlisted layer from a file's type name and arguments (checked), its tensors
    on ``device``."""
    if not isinstance(type_name, str) or type_name not in MODULES:
        raise FormatError(f"{what}: layer type {short(type_name)} is not in the allowlist")
    cls, schema = MODULES[type_name]
    if not isinstance(args, dict) or set(args) - set(schema):
        extra = sorted(set(args) - set(schema)) if isinstance(args, dict) else args
        raise FormatError(f"{what}: bad arguments {short(extra)} for {type_name}")
    kwargs = {}
    for key, (check, default) in schema.items():
        if key not in args and default is None:
            raise FormatError(f"{what}: {type_name} needs {key}")
        try:
            kwargs[key] = check.check(args.get(key, default))
        except ValueError as e:
            raise FormatError(f"{what}: {type_name} {key}={short(args.get(key))}, expected {e}"
                              ) from None
    if cls in _FACTORY:
        kwargs["device"] = device
    try:
        return cls(**kwargs)
    except (ValueError, TypeError, RuntimeError, ZeroDivisionError, OverflowError) as e:
        raise FormatError(f"{what}: {type_name} cannot be built: {short(str(e))}") from None


_NUMBER = (bool, int, float)
_BIG = 1 << 62


def _scalar_or_tensor(v) -> bool:
    return isinstance(v, torch.Tensor | torch.fx.Proxy) or type(v) in _NUMBER


class _Arithmetic:
    """An ``operator`` function on tensors and numbers only (never sequences: ``(1,) * 10**9``
    would be a memory bomb), refusing integers beyond 2**62 (repeated squaring of a size would
    be a time bomb). A class, so that a rebuilt network can be pickled."""

    def __init__(self, name: str):
        self.fn = getattr(operator, name)
        self.__name__ = name

    def __call__(self, *args):
        if not all(_scalar_or_tensor(a) for a in args):
            raise TypeError(f"{self.__name__} of {', '.join(type(a).__name__ for a in args)}")
        out = self.fn(*args)
        if type(out) is int and not -_BIG <= out <= _BIG:
            raise OverflowError(f"{self.__name__} gives an integer beyond 2**62")
        return out

    def __reduce__(self):
        return (_Arithmetic, (self.__name__,))


MAX_PIECES = 4096
"""Most tensors one ``split`` or ``chunk`` may return."""


def check_pieces(x, n=None, dim=0, **kwargs) -> None:
    """Refuse a ``split``/``chunk`` of ``x`` into more than :data:`MAX_PIECES` tensors (a meta
    tensor of 2**31 elements split in ones would be a memory bomb of the check itself)."""
    if not isinstance(x, torch.Tensor):
        return
    n = n if n is not None else kwargs.get("split_size", kwargs.get("split_size_or_sections"))
    if isinstance(n, list | tuple):
        pieces = len(n)
    elif type(n) is int and n > 0 and type(dim) is int and -x.dim() <= dim < max(x.dim(), 1):
        pieces = -(-x.shape[dim] // n)
    else:
        return  # the op itself refuses it
    if pieces > MAX_PIECES:
        raise ValueError(f"split into {pieces} tensors (at most {MAX_PIECES})")


def split(x, split_size_or_sections, dim=0):
    check_pieces(x, split_size_or_sections, dim)
    return torch.split(x, split_size_or_sections, dim)


def check_chunks(_x, chunks=None, _dim=0, **_kwargs) -> None:
    if type(chunks) is int and chunks > MAX_PIECES:
        raise ValueError(f"chunk into {chunks} tensors (at most {MAX_PIECES})")


def chunk(x, chunks, dim=0):
    check_chunks(x, chunks)
    return torch.chunk(x, chunks, dim)


def _getattr(obj, name):
    if not isinstance(name, str) or name not in ATTRIBUTES:
        raise AttributeError(f"getattr of {short(name)} is not allowed")
    return getattr(obj, name)


_getattr.__name__ = _getattr.__qualname__ = "getattr"


def stochastic_depth(input, p, mode, training=True):
    """``torchvision.ops.stochastic_depth``: the identity at evaluation (``training`` false or
    ``p`` 0), torchvision's own function otherwise (imported then, not at load)."""
    if (not training or p == 0.0) and mode in ("row", "batch") and 0.0 <= p <= 1.0:
        return input
    import torchvision.ops

    return torchvision.ops.stochastic_depth(input, p, mode, training)


def traced_name(fn) -> str | None:
    """The name in a file of a function a traced graph calls, or None if it is not allowed."""
    name = FUNCTION_NAMES.get(id(fn))
    tv = sys.modules.get("torchvision.ops")  # traced only if the network imported it
    if name is None and tv is not None and fn is getattr(tv, "stochastic_depth", None):
        name = "torchvision.ops.stochastic_depth"
    return name


def _table() -> list[tuple[str, object, object]]:
    """(name in a file, the function a traced graph calls, the function the reader calls)."""
    rows = [(f"operator.{n}", getattr(operator, n), _Arithmetic(n))
            for n in ("add", "sub", "mul", "truediv", "floordiv", "neg")]
    rows += [("operator.getitem", operator.getitem, operator.getitem),
             ("builtins.getattr", getattr, _getattr),
             ("torch.split", torch.split, split), ("torch.chunk", torch.chunk, chunk)]
    for prefix, space, names in (
            ("torch", torch, (
                "add", "sub", "mul", "div", "neg", "cat", "stack", "flatten", "reshape",
                "permute", "transpose", "swapaxes", "squeeze", "unsqueeze", "mean", "sum", "amax", "relu", "sigmoid", "tanh", "softmax", "conv2d",
                "batch_norm", "layer_norm", "group_norm", "max_pool2d", "dropout", "clamp",
                "matmul")),
            ("torch.nn.functional", F, (
                "relu", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid",
                "hardtanh", "leaky_relu", "elu", "softmax", "dropout", "dropout2d", "linear",
                "conv2d", "batch_norm", "layer_norm", "group_norm", "max_pool2d", "avg_pool2d",
                "adaptive_avg_pool2d", "adaptive_max_pool2d"))):
        rows += [(f"{prefix}.{n}", getattr(space, n), getattr(space, n)) for n in names]
    return [*rows, ("torchvision.ops.stochastic_depth", stochastic_depth, stochastic_depth)]


FUNCTIONS: dict[str, object] = {name: run for name, _, run in _table()}
"""Name in a file -> the function a ``call_function`` node calls."""

FUNCTION_NAMES: dict[int, str] = {}
"""``id`` of a function a traced graph calls -> its name in a file (``F.conv2d`` is
``torch.conv2d``: the first name wins)."""
for _name, _traced, _ in _table():
    FUNCTION_NAMES.setdefault(id(_traced), _name)

METHODS = frozenset({
    "add", "sub", "mul", "div", "neg", "view", "reshape", "flatten", "permute", "transpose",
    "squeeze", "unsqueeze", "contiguous", "chunk", "split", "size", "dim", "mean", "sum",
    "amax", "relu", "sigmoid", "tanh", "softmax", "clamp", "matmul"})
"""Tensor methods a ``call_method`` node may call (none writes into its tensor; ``split`` and
``chunk`` are checked by :data:`METHOD_CHECKS` first)."""

METHOD_CHECKS = {"split": check_pieces, "chunk": check_chunks}

ATTRIBUTES = frozenset({"shape", "ndim"})
"""Attributes ``builtins.getattr`` may read."""

FORBIDDEN_KWARGS = frozenset({"out"})
"""Keyword arguments no node may pass (``out=`` writes into a stored tensor)."""
