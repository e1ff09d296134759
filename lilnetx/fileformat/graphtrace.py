"""Tracing a network into a ``"kind": "graph"`` architecture (:mod:`lilnetx.fileformat.graph`
describes the format and reads it back).

:func:`describe` traces the network with ``torch.fx.symbolic_trace`` (its ``torch.nn`` layers
stay whole), writes every node over the allowlist (:mod:`lilnetx.fileformat.graphops`) and checks
the result the way a reader will: the JSON is parsed back, rebuilt on the meta device, given the
network's own tensors and must compute exactly the network's outputs on the example input.
"""

from __future__ import annotations

import copy
import json

import torch
from torch import fx, nn

from lilnetx.errors import FormatError
from lilnetx.fileformat import graphops as ops
from lilnetx.fileformat.archspec import LIMITS
from lilnetx.fileformat.graph import _PART, _RUN_ERRORS, VERSION, build, parse
from lilnetx.fileformat.limits import MAX_STRING_CHARS, cut, short


def _encode(v, index: dict, what: str):
    if isinstance(v, fx.Node):
        return {"node": index[v]}
    if v is None or type(v) in (bool, int):
        return v
    if type(v) is float:
        if v != v or v in (float("inf"), float("-inf")):
            raise FormatError(f"{what} passes a number that is not finite")
        return v
    if type(v) is str:
        if len(v) > MAX_STRING_CHARS:
            raise FormatError(f"{what} passes a string longer than {MAX_STRING_CHARS} characters")
        return v
    if isinstance(v, tuple):
        return {"tuple": [_encode(a, index, what) for a in v]}
    if isinstance(v, list):
        return [_encode(a, index, what) for a in v]
    if type(v) is slice:
        return {"slice": [_encode(a, index, what) for a in (v.start, v.stop, v.step)]}
    if v is Ellipsis:
        return {"ellipsis": True}
    raise FormatError(f"{what} passes a {type(v).__name__}, which a .lnx graph cannot hold")


def _module_entries(net: nn.Module) -> tuple[list[dict], dict[str, str]]:
    entries, leaves, seen = [], {}, {}
    for name, m in net.named_modules(remove_duplicate=False):
        if id(m) in seen:
            raise FormatError(f"module {short(name)} is the module {short(seen[id(m)])} again; "
                              "a graph stores each module once")
        seen[id(m)] = name
        if any(name.startswith(f"{leaf}.") for leaf in leaves):
            raise FormatError(f"module {short(name)} lies inside a layer, which a graph "
                              "cannot store")
        if name and not all(_PART.fullmatch(p) for p in name.split(".")):
            raise FormatError(f"module name {short(name)} holds other characters than letters, "
                              "digits, '_' and '-'")
        if type(m) in ops.TYPE_NAMES:
            entry = {"name": name, "type": ops.TYPE_NAMES[type(m)]}
            args = ops.module_arguments(m)
            entries.append({**entry, "args": args} if args else entry)
            leaves[name] = entry["type"]
            continue
        hidden = sorted(m._non_persistent_buffers_set)
        if hidden:
            raise FormatError(f"module {short(name)} has a buffer {short(hidden[0])} outside "
                              "its state_dict, which a .lnx file cannot store")
        params = {k: list(p.shape) for k, p in m._parameters.items() if p is not None}
        buffers = {k: list(b.shape) for k, b in m._buffers.items() if b is not None}
        if params or buffers:
            entries.append({"name": name, "params": params, "buffers": buffers})
    return entries, leaves


def _node_entries(gm: fx.GraphModule, net: nn.Module, leaves: dict) -> list[dict]:
    tensors = set(dict(net.named_parameters(remove_duplicate=False))) | set(
        dict(net.named_buffers(remove_duplicate=False)))
    index, nodes = {}, []
    for node in gm.graph.nodes:
        index[node] = len(nodes)
        what = f"node {node.name}"
        entry: dict = {"op": node.op}
        if node.op == "call_function":
            target = ops.traced_name(node.target)
            if target is None:
                name = f"{getattr(node.target, '__module__', '?')}." \
                       f"{getattr(node.target, '__qualname__', node.target)}"
                raise FormatError(f"{what} calls {short(name)}, which is not in the graph "
                                  "allowlist (lilnetx.fileformat.graphops.FUNCTIONS)")
            entry["target"] = target
        elif node.op == "call_method":
            if node.target not in ops.METHODS:
                raise FormatError(f"{what} calls the tensor method {short(node.target)}, "
                                  "which is not in the graph allowlist")
            entry["target"] = node.target
        elif node.op == "call_module":
            if node.target not in leaves:
                kind = type(net.get_submodule(node.target)).__name__
                raise FormatError(f"{what} calls the layer {short(node.target)} of type "
                                  f"{short(kind)}, which is not in the graph allowlist")
            entry["target"] = node.target
        elif node.op == "get_attr":
            if node.target not in tensors:
                raise FormatError(f"{what} reads {short(node.target)}, a constant that is not "
                                  "a parameter or buffer; register it as a buffer to store it")
            entry["target"] = node.target
        elif node.op == "placeholder" and node.args:
            raise FormatError(f"{what}: a forward argument with a default cannot be stored")
        args = [_encode(a, index, what) for a in node.args]
        kwargs = {k: _encode(v, index, what) for k, v in node.kwargs.items()}
        if args:
            entry["args"] = args
        if kwargs:
            entry["kwargs"] = kwargs
        nodes.append(entry)
    return nodes


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool(
            ((a == b) | (a.isnan() & b.isnan())).all())
    if isinstance(a, tuple | list) and isinstance(b, tuple | list) and len(a) == len(b):
        return all(_same(x, y) for x, y in zip(a, b, strict=True))
    return False


def describe(model: nn.Module, example_input: torch.Tensor) -> dict:
    """The graph architecture of ``model`` (a :class:`~lilnetx.core.model.LilNetXModel` is
    described by its decoded network), traced with ``torch.fx`` and checked: rebuilt from the
    description with the same tensors, it must compute exactly ``model``'s outputs on
    ``example_input``, a float batch (N, C, H, W). Raises :class:`FormatError` naming what
    cannot be described (an operator outside the allowlist, a tensor constant...)."""
    from lilnetx.core.model import LilNetXModel, decode

    x = example_input
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point() or min(
            x.shape) < 1:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise FormatError(f"example_input must be a float tensor (N, C, H, W), got {short(got)}")
    if any(s > LIMITS["image_size"] for s in x.shape[1:]):
        raise FormatError(f"example_input {short(tuple(x.shape))} is larger than a .lnx graph "
                          f"input may be ({LIMITS['image_size']} per dimension)")
    net = decode(model) if isinstance(model, LilNetXModel) else model
    if not isinstance(net, nn.Module):
        raise FormatError(f"save expects an nn.Module, got {type(model).__name__}")
    if any(t.device.type != "cpu" for t in [*net.parameters(), *net.buffers()]):
        net = copy.deepcopy(net).cpu()
    modes = [(m, m.training) for m in net.modules()]
    net.eval()
    try:
        return _describe(net, x.detach().cpu())
    finally:
        for m, mode in modes:
            m.training = mode


def _describe(net: nn.Module, x: torch.Tensor) -> dict:
    entries, leaves = _module_entries(net)
    try:
        gm = fx.symbolic_trace(net)
    except Exception as e:  # tracing runs the user's forward: any error of theirs
        raise FormatError(cut(f"the network cannot be traced with torch.fx "
                              f"({type(e).__name__}: {e})")) from None
    nodes = _node_entries(gm, net, leaves)
    if sum(n["op"] == "placeholder" for n in nodes) != 1:
        raise FormatError("a graph network must take exactly one input, the batch (N, C, H, W)")
    try:
        with torch.no_grad():
            out = net(x)
    except Exception as e:  # the user's forward on the user's example: any error of theirs
        raise FormatError(cut(f"the network does not run on example_input {tuple(x.shape)} "
                              f"({type(e).__name__}: {e})")) from None
    if not isinstance(out, torch.Tensor):
        raise FormatError(f"a graph network must return one tensor, got {type(out).__name__}")
    arch = {"kind": "graph", "version": VERSION, "in_channels": int(x.shape[1]),
            "image_size": int(x.shape[2]), "num_classes": int(out.shape[1]) if out.dim() > 1
            else 1, "input_shape": list(x.shape[1:]), "output_shape": list(out.shape[1:]),
            "modules": entries, "nodes": nodes}
    arch = json.loads(json.dumps(arch, allow_nan=False))  # exactly what a reader will see
    rebuilt = build(parse(arch), arch)
    try:
        rebuilt.load_state_dict(net.state_dict(), strict=True, assign=True)
    except RuntimeError as e:
        raise FormatError(cut(f"the graph's tensors do not match the network's: {e}")) from None
    try:
        with torch.no_grad():
            again = rebuilt.eval()(x)
    except _RUN_ERRORS as e:
        raise FormatError(cut(f"rebuilt from its graph, the network does not run "
                              f"({type(e).__name__}: {e})")) from None
    if not _same(out, again):
        raise FormatError("rebuilt from its graph, the network computes other outputs (does it "
                          "use hooks, or layers changed after construction?)")
    return arch
