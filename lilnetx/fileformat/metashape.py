"""Shape-only evaluation of the graph allowlist on meta tensors, without ``torch._dynamo``.

The meta kernels of many element-wise ops, concatenation, means and normalizations are Python
references whose first use imports ``torch._dynamo`` (two seconds and 130 MB per process): a
reader checking a graph architecture would pay that on every load. :class:`MetaShapes` answers
those ops itself with a meta tensor of the right shape, after the checks the real kernel makes
(broadcastable operands, matching concatenation sizes, normalization parameters of the input's
channel count); every other op runs its own (C++) meta kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

T = torch.Tensor


def _meta(shape, like: T) -> T:
    return torch.empty(tuple(shape), dtype=like.dtype, device="meta")


def _same(x, *_args, **_kwargs):
    return torch.empty_like(x)


def _inplace(x, *_args, **_kwargs):
    return x


def _binary(a, b=None, *_args, **_kwargs):
    shapes = [t.shape for t in (a, b) if isinstance(t, T)]
    like = a if isinstance(a, T) else b
    return torch.empty(torch.broadcast_shapes(*shapes), dtype=torch.result_type(a, b),
                       device="meta") if b is not None else torch.empty_like(like)


def _binary_inplace(a, b, *_args, **_kwargs):
    if isinstance(b, T) and torch.broadcast_shapes(a.shape, b.shape) != a.shape:
        raise RuntimeError(f"in-place operand of shape {tuple(b.shape)} does not broadcast to "
                           f"{tuple(a.shape)}")
    return a


def _channels(x: T, n: int, what: str, *tensors) -> None:
    for t in tensors:
        if t is not None and (not isinstance(t, T) or t.numel() != n):
            raise RuntimeError(f"{what}: a parameter has {getattr(t, 'numel', lambda: '?')()} "
                               f"entries for {n} channels")


def _batch_norm(x, running_mean, running_var, weight=None, bias=None, *_args, **_kwargs):
    if x.dim() < 2:
        raise RuntimeError(f"batch_norm of a {x.dim()}-d input")
    _channels(x, x.shape[1], "batch_norm", running_mean, running_var, weight, bias)
    return torch.empty_like(x)


def _layer_norm(x, normalized_shape, weight=None, bias=None, *_args, **_kwargs):
    shape = tuple(normalized_shape)
    if x.dim() < len(shape) or tuple(x.shape[x.dim() - len(shape):]) != shape:
        raise RuntimeError(f"layer_norm over {shape} of an input {tuple(x.shape)}")
    _channels(x, math.prod(shape), "layer_norm", weight, bias)
    return torch.empty_like(x)


def _group_norm(x, num_groups, weight=None, bias=None, *_args, **_kwargs):
    if x.dim() < 2 or type(num_groups) is not int or num_groups < 1 or x.shape[1] % num_groups:
        raise RuntimeError(f"group_norm of {num_groups} groups over {tuple(x.shape)}")
    _channels(x, x.shape[1], "group_norm", weight, bias)
    return torch.empty_like(x)


def _adaptive_avg(x, output_size):
    return F.adaptive_max_pool2d(x, output_size)  # same shape and checks, a C++ meta kernel


def _mean(x, *args, **kwargs):
    return torch.sum(x, *args, **kwargs)  # same shape and checks, a C++ meta kernel


def _cat(tensors, dim=0):
    return _join(tensors, dim, stack=False)


def _stack(tensors, dim=0):
    return _join(tensors, dim, stack=True)


def _join(tensors, dim, *, stack: bool):
    tensors = list(tensors)
    if not tensors or not all(isinstance(t, T) for t in tensors):
        raise RuntimeError("cat/stack needs a non-empty list of tensors")
    first = tensors[0]
    rank = first.dim() + stack
    if type(dim) is not int or not -rank <= dim < rank:
        raise IndexError(f"dimension {dim} out of range for rank {rank}")
    dim %= rank
    shape = list(first.shape)
    for t in tensors[1:]:
        other = list(t.shape)
        if len(other) != len(shape) or any(
                a != b for i, (a, b) in enumerate(zip(other, shape, strict=True))
                if stack or i != dim):
            raise RuntimeError(f"cannot join tensors of shapes {tuple(first.shape)} and "
                               f"{tuple(t.shape)} along {dim}")
        if not stack:
            shape[dim] += other[dim]
    if stack:
        shape.insert(dim, len(tensors))
    return _meta(shape, first)


def _handlers() -> dict:
    out = {}
    unary = ("relu", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid",
             "hardtanh", "leaky_relu", "elu", "neg", "clamp")
    for space in (torch, T, F):
        for name in unary:
            if hasattr(space, name):
                out[getattr(space, name)] = _same
            if hasattr(space, f"{name}_"):
                out[getattr(space, f"{name}_")] = _inplace
        for name in ("add", "sub", "mul", "div", "rsub", "true_divide", "floor_divide"):
            if hasattr(space, name):
                out[getattr(space, name)] = _binary
            if hasattr(space, f"{name}_"):
                out[getattr(space, f"{name}_")] = _binary_inplace
        if hasattr(space, "mean"):
            out[space.mean] = _mean
    for name in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__",
                 "__truediv__", "__rtruediv__", "__floordiv__", "__rfloordiv__"):
        out[getattr(T, name)] = _binary
    for name in ("__iadd__", "__isub__", "__imul__", "__itruediv__"):
        out[getattr(T, name)] = _binary_inplace
    out[T.__neg__] = _same
    out.update({F.batch_norm: _batch_norm, torch.batch_norm: _batch_norm,
                F.layer_norm: _layer_norm, torch.layer_norm: _layer_norm,
                F.group_norm: _group_norm, torch.group_norm: _group_norm,
                F.adaptive_avg_pool2d: _adaptive_avg,
                torch.cat: _cat, torch.stack: _stack})
    return out


HANDLERS = _handlers()


def _has_meta(args) -> bool:
    for a in args:
        if isinstance(a, T) and a.is_meta:
            return True
        if isinstance(a, list | tuple) and _has_meta(a):
            return True
    return False


class MetaShapes(TorchFunctionMode):
    """Ops of :data:`HANDLERS` on meta tensors give a meta tensor of their output's shape."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        handler = HANDLERS.get(func)
        if handler is not None and _has_meta(args):
            return handler(*args, **kwargs)
        return func(*args, **kwargs)
