"""Any network as a ``"kind": "graph"`` architecture: its ``torch.fx`` graph as JSON over an
allowlist of operators (:mod:`lilnetx.fileformat.graphops`), rebuilt as a
:class:`GraphNetwork` that interprets the nodes. Nothing in a file is ever imported, evaluated
or compiled: operator names are keys of fixed tables, module names only name attributes::

    {"kind": "graph", "version": 1, "in_channels": 3, "image_size": 32, "num_classes": 10,
     "input_shape": [3, 32, 32], "output_shape": [10],
     "modules": [{"name": "conv1", "type": "Conv2d", "args": {"in_channels": 3, ...}},
                 {"name": "head", "params": {"scale": [10]}, "buffers": {}}, ...],
     "nodes": [{"op": "placeholder"},
               {"op": "call_module", "target": "conv1", "args": [{"node": 0}]},
               {"op": "call_function", "target": "operator.add",
                "args": [{"node": 1}, {"node": 0}]}, ...,
               {"op": "output", "args": [{"node": 9}]}]}

``modules`` lists, in ``named_modules`` order, every allowlisted layer (type and the constructor
arguments that differ from the schema's defaults) and every other module that holds parameters
or buffers itself (their names and shapes), so the rebuilt network has the original's
``state_dict`` keys and layer order; the weights are stored by the file's encoders as for any
architecture. A node argument is a JSON scalar or list, ``{"node": i}`` (the value of the earlier
node ``i``), ``{"tuple": [...]}``, ``{"slice": [start, stop, step]}`` or ``{"ellipsis": true}``.

The reader checks the description (sizes, names, operators, references to earlier nodes only),
builds it on the meta device, counts its parameters against ``MAX_PARAMS`` and runs it once on a
meta input of ``input_shape`` (every intermediate at most ``MAX_ACTIVATION`` elements, the output
of ``output_shape``) before anything is allocated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import fx, nn

from lilnetx.errors import FormatError
from lilnetx.fileformat import graphops as ops
from lilnetx.fileformat.archspec import LIMITS
from lilnetx.fileformat.limits import (
    MAX_ACTIVATION,
    MAX_GRAPH_MODULES,
    MAX_GRAPH_NODES,
    MAX_NAME_CHARS,
    MAX_PARAMS,
    MAX_STRING_CHARS,
    cut,
    short,
)
from lilnetx.fileformat.metashape import MetaShapes

VERSION = 1
OPS = ("placeholder", "get_attr", "call_function", "call_method", "call_module", "output")
KEYS = {"kind", "version", "in_channels", "image_size", "num_classes", "input_shape",
        "output_shape", "modules", "nodes", "data"}
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_RUN_ERRORS = (RuntimeError, TypeError, ValueError, IndexError, AttributeError, KeyError,
               ZeroDivisionError, OverflowError, NotImplementedError, AssertionError)


class _Ref:
    """The value of an earlier node, in a decoded argument."""

    __slots__ = ("i",)

    def __init__(self, i: int):
        self.i = i


def _fill(v, env):
    t = type(v)
    if t is _Ref:
        return env[v.i]
    if t is tuple:
        return tuple(_fill(a, env) for a in v)
    if t is list:
        return [_fill(a, env) for a in v]
    if t is slice:
        return slice(_fill(v.start, env), _fill(v.stop, env), _fill(v.step, env))
    return v


def _refs(v, out: set[int]) -> set[int]:
    if type(v) is _Ref:
        out.add(v.i)
    elif type(v) in (tuple, list):
        for a in v:
            _refs(a, out)
    elif type(v) is slice:
        for a in (v.start, v.stop, v.step):
            _refs(a, out)
    return out


class GraphNetwork(nn.Module):
    """A network rebuilt from a graph architecture: its layers as submodules under their
    original names, its forward an interpreter over the checked nodes (``arch`` holds the
    description, so ``lilnetx.save`` can store it again)."""

    def __init__(self, steps: list):
        super().__init__()
        self._lnx_steps = steps  # (op, target, args, kwargs, values freed after the step)

    def forward(self, x):
        return self._run((x,))

    def _run(self, inputs, check=None):
        env, k = [None] * len(self._lnx_steps), 0
        for i, (op, target, args, kwargs, free) in enumerate(self._lnx_steps):
            a = _fill(args, env)
            kw = {key: _fill(v, env) for key, v in kwargs.items()}
            if op == "placeholder":
                value, k = inputs[k], k + 1
            elif op == "call_module":
                value = self.get_submodule(target)(*a, **kw)
            elif op == "call_function":
                value = target(*a, **kw)
            elif op == "call_method":
                if not isinstance(a[0], torch.Tensor | fx.Proxy):
                    raise TypeError(f"method {target} of a {type(a[0]).__name__}")
                if target in ops.METHOD_CHECKS:
                    ops.METHOD_CHECKS[target](*a, **kw)
                value = getattr(a[0], target)(*a[1:], **kw)
            elif op == "get_attr":
                owner, _, leaf = target.rpartition(".")
                value = getattr(self.get_submodule(owner), leaf)
            else:
                return a[0]
            if check is not None:
                check(i, value)
            env[i] = value
            for j in free:
                env[j] = None
        raise RuntimeError("the graph has no output node")

    def extra_repr(self) -> str:
        return f"graph of {len(self._lnx_steps)} nodes"


@dataclass
class Spec:
    """A checked graph description: module entries, interpreter steps, input and output."""

    modules: list[tuple[str, str | None, dict, dict]]  # name, type, args | params, buffers
    steps: list
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]


def _name(v, what: str, empty: bool = False) -> str:
    if not isinstance(v, str) or len(v) > MAX_NAME_CHARS or (not v and not empty) or (
            v and not all(_PART.fullmatch(p) for p in v.split("."))):
        raise FormatError(f"{what}: bad name {short(v)}")
    return v


def _sizes(v, what: str, lo: int = 0) -> tuple[int, ...]:
    if not isinstance(v, list) or len(v) > 8 or not all(
            type(s) is int and lo <= s <= MAX_ACTIVATION for s in v):
        raise FormatError(f"{what}: bad shape {short(v)}")
    return tuple(v)


def _decode(v, n: int, outputs: set[int], what: str):
    if v is None or type(v) in (bool, int, float):
        return v
    if type(v) is str:
        if len(v) > MAX_STRING_CHARS:
            raise FormatError(f"{what}: a string of {len(v)} characters")
        return v
    if type(v) is list:
        return [_decode(a, n, outputs, what) for a in v]
    if type(v) is dict and len(v) == 1:
        (key, x), = v.items()
        if key == "node" and type(x) is int and 0 <= x < n and x not in outputs:
            return _Ref(x)
        if key == "node":
            raise FormatError(f"{what} refers to {short(x)}, not an earlier node")
        if key == "tuple" and type(x) is list:
            return tuple(_decode(a, n, outputs, what) for a in x)
        if key == "slice" and type(x) is list and len(x) == 3:
            return slice(*(_decode(a, n, outputs, what) for a in x))
        if key == "ellipsis" and x is True:
            return Ellipsis
    raise FormatError(f"{what}: bad argument {short(v)}")


def _parse_modules(entries) -> list:
    if not isinstance(entries, list) or len(entries) > MAX_GRAPH_MODULES:
        raise FormatError(f"the graph's modules must be a list of at most {MAX_GRAPH_MODULES}")
    out = []
    for i, e in enumerate(entries):
        what = f"graph module {i}"
        if not isinstance(e, dict):
            raise FormatError(f"{what} is not an object")
        name = _name(e.get("name"), what, empty=True)
        if "type" in e:
            if set(e) - {"name", "type", "args"} or not name:
                raise FormatError(f"{what} has bad keys {short(sorted(e))}")
            out.append((name, e["type"], e.get("args", {}), {}))
            continue
        tensors = []
        for kind in ("params", "buffers"):
            group = e.get(kind)
            if not isinstance(group, dict) or set(e) - {"name", "params", "buffers"}:
                raise FormatError(f"{what} has bad {kind}")
            if not all(isinstance(k, str) and _WORD.fullmatch(k) for k in group):
                raise FormatError(f"{what}: bad tensor name in {short(sorted(map(str, group)))}")
            tensors.append({k: _sizes(s, f"{what} {k}") for k, s in group.items()})
        out.append((name, None, *tensors))
    return out


def _parse_nodes(entries) -> list:
    if not isinstance(entries, list) or not 2 <= len(entries) <= MAX_GRAPH_NODES:
        raise FormatError(f"the graph's nodes must be a list of 2 to {MAX_GRAPH_NODES} nodes"
                          if not isinstance(entries, list) else
                          f"the graph has {len(entries)} nodes (2 to {MAX_GRAPH_NODES} allowed)")
    steps, outputs, last_use = [], set(), {}
    for i, e in enumerate(entries):
        what = f"graph node {i}"
        if not isinstance(e, dict) or set(e) - {"op", "target", "args", "kwargs"}:
            raise FormatError(f"{what} is not a node object")
        op, target = e.get("op"), e.get("target")
        if op not in OPS:
            raise FormatError(f"{what} has the unknown op {short(op)}")
        if op == "call_function":
            if not isinstance(target, str) or target not in ops.FUNCTIONS:
                raise FormatError(f"{what} calls {short(target)}, which is not in the graph "
                                  "allowlist")
            target = ops.FUNCTIONS[target]
        elif op == "call_method" and not (isinstance(target, str) and target in ops.METHODS):
            raise FormatError(f"{what} calls the method {short(target)}, which is not in the "
                              "graph allowlist")
        elif op in ("call_module", "get_attr"):
            target = _name(target, what)
        elif op in ("placeholder", "output") and target is not None and not (
                isinstance(target, str) and _WORD.fullmatch(target)):
            raise FormatError(f"{what}: bad name {short(target)}")
        args, kwargs = e.get("args", []), e.get("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise FormatError(f"{what}: args must be a list and kwargs an object")
        if not all(isinstance(k, str) and _WORD.fullmatch(k) and k not in ops.FORBIDDEN_KWARGS
                   for k in kwargs):
            raise FormatError(f"{what}: bad keyword {short(sorted(map(str, kwargs)))}")
        args = tuple(_decode(a, i, outputs, what) for a in args)
        kwargs = {k: _decode(v, i, outputs, what) for k, v in kwargs.items()}
        if op in ("placeholder", "get_attr") and (args or kwargs):
            raise FormatError(f"{what}: a {op} takes no arguments")
        if op == "call_method" and not args:
            raise FormatError(f"{what}: a method needs its tensor")
        if op == "output" and (len(args) != 1 or kwargs or i != len(entries) - 1):
            raise FormatError(f"{what}: the output must be the last node, with one value")
        for j in _refs(list(args) + list(kwargs.values()), set()):
            last_use[j] = i
        if op == "output":
            outputs.add(i)
        steps.append([op, target, args, kwargs, []])
    if steps[-1][0] != "output":
        raise FormatError("the graph does not end with its output node")
    if sum(s[0] == "placeholder" for s in steps) != 1:
        raise FormatError("the graph must have exactly one input (placeholder) node")
    for j, i in last_use.items():
        steps[i][4].append(j)
    return [tuple(s) for s in steps]


def parse(arch: dict) -> Spec:
    """The checked description (no module built yet); raises :class:`FormatError`."""
    if not isinstance(arch, dict) or arch.get("kind") != "graph":
        raise FormatError("not a graph architecture")
    extra = sorted(set(arch) - KEYS)
    if extra or arch.get("version") != VERSION:
        raise FormatError(f"unsupported graph architecture (version {short(arch.get('version'))}"
                          f"{', keys ' + short(extra) if extra else ''})")
    bad = [f"{k}={short(arch.get(k))} (1..{hi})" for k, hi in LIMITS.items()
           if type(arch.get(k)) is not int or not 1 <= arch[k] <= hi]
    if bad:
        raise FormatError(cut(f"the architecture has invalid values: {', '.join(bad)}"))
    shape = _sizes(arch.get("input_shape"), "input_shape", 1)
    out = _sizes(arch.get("output_shape"), "output_shape")
    if (len(shape) != 3 or shape[:2] != (arch["in_channels"], arch["image_size"])
            or shape[2] > LIMITS["image_size"]):
        raise FormatError(f"input_shape {short(list(shape))} is not [in_channels, image_size, "
                          f"width at most {LIMITS['image_size']}]")
    if arch["num_classes"] != (out[0] if out else 1):
        raise FormatError(f"num_classes {arch['num_classes']} is not the output's size "
                          f"{short(list(out))}")
    return Spec(_parse_modules(arch.get("modules")), _parse_nodes(arch.get("nodes")), shape, out)


def _place(root: nn.Module, name: str, module: nn.Module | None, leaves: set) -> nn.Module:
    """The module at ``name``, creating containers on the way (``module`` at the end, if any)."""
    node = root
    parts = name.split(".") if name else []
    try:
        for k, part in enumerate(parts):
            prefix = ".".join(parts[:k + 1])
            if ".".join(parts[:k]) in leaves and k:
                raise FormatError(f"graph module {short(name)} lies inside a layer")
            last = k == len(parts) - 1
            if last and module is not None:
                if part in node._modules:
                    raise FormatError(f"graph module {short(name)} is declared twice")
                node.add_module(part, module)
                leaves.add(prefix)
            elif part not in node._modules:
                node.add_module(part, nn.Module())
            node = node._modules[part]
    except (KeyError, TypeError) as e:  # a name such as "forward" or "training"
        raise FormatError(f"graph module {short(name)} cannot be built: {short(str(e))}"
                          ) from None
    return node


def build(spec: Spec, arch: dict) -> GraphNetwork:
    """The described network on the ``meta`` device (shapes only, no storage)."""
    net, leaves = GraphNetwork(spec.steps), set()
    for name, kind, first, second in spec.modules:
        if kind is not None:
            _place(net, name, ops.build_module(kind, first, f"graph module {name}"), leaves)
            continue
        owner = _place(net, name, None, leaves)
        if name in leaves:
            raise FormatError(f"graph module {short(name)} is a layer and a container")
        try:
            for key, shape in first.items():
                owner.register_parameter(key, nn.Parameter(torch.empty(shape, device="meta")))
            for key, shape in second.items():
                owner.register_buffer(key, torch.empty(shape, device="meta"))
        except (KeyError, RuntimeError) as e:
            raise FormatError(f"graph module {short(name)}: {short(str(e))}") from None
    tensors = set(dict(net.named_parameters())) | set(dict(net.named_buffers()))
    for i, (op, target, *_) in enumerate(spec.steps):
        if op == "call_module" and target not in leaves:
            raise FormatError(f"graph node {i} calls {short(target)}, which is not a layer")
        if op == "get_attr" and target not in tensors:
            raise FormatError(f"graph node {i} reads {short(target)}, which is not a tensor")
    if not hasattr(net, "arch"):  # what lilnetx.save stores again (unless a layer is so named)
        net.arch = arch
    return net


class _SizeCheck:
    """After each node of the meta run: its tensors are within ``MAX_ACTIVATION`` elements."""

    def __init__(self):
        self.done = -1

    def __call__(self, i: int, value) -> None:
        items = value if isinstance(value, tuple | list) else (value,)
        for v in items:
            if isinstance(v, torch.Tensor) and v.numel() > MAX_ACTIVATION:
                raise FormatError(f"graph node {i} makes a tensor of {v.numel():,} elements per "
                                  f"sample, more than {MAX_ACTIVATION:,}")
        self.done = i


def _step_name(step) -> str:
    op, target = step[0], step[1]
    name = target if isinstance(target, str) else getattr(target, "__name__", "?")
    return f"{op} {name}" if name else op


def meta_network(arch: dict) -> tuple[GraphNetwork, int]:
    """The checked graph network on the meta device and its parameter count: within
    ``MAX_PARAMS``, and run once on a meta input of ``input_shape``, giving ``output_shape``."""
    spec = parse(arch)
    net = build(spec, arch)
    params = sum(p.numel() for p in net.parameters())
    total = params + sum(b.numel() for b in net.buffers())
    if total > MAX_PARAMS:
        raise FormatError(f"the graph architecture holds {total:,} parameters and buffers, more "
                          f"than the {MAX_PARAMS:,} a .lnx file may hold "
                          "(lilnetx.fileformat.limits.MAX_PARAMS)")
    x, check = torch.empty((1, *spec.input_shape), device="meta"), _SizeCheck()
    try:
        with torch.no_grad(), MetaShapes():
            out = net.eval()._run((x,), check)
    except _RUN_ERRORS as e:
        i = check.done + 1
        raise FormatError(cut(f"the graph does not run on its input {list(spec.input_shape)}: "
                              f"node {i} ({short(_step_name(spec.steps[i]))}) raises "
                              f"{type(e).__name__}: {e}")) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, *spec.output_shape):
        got = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__
        raise FormatError(f"the graph's output is {short(got)}, its description says "
                          f"{short(list(spec.output_shape))}")
    return net, params


def build_from_arch(arch: dict) -> GraphNetwork:
    """The described network on the CPU, every tensor zero (the weights are loaded next)."""
    net = build(parse(arch), arch).to_empty(device="cpu")
    with torch.no_grad():
        for t in [*net.parameters(), *net.buffers()]:
            t.zero_()
    return net.eval()
