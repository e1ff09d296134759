"""Slim export: physically remove the channels that the structured zeros make dead.

A channel is removed when no consumer reads it: every conv (not depthwise) and linear layer that
takes it as input has an all-zero weight slice for it. Whatever the producer computes for that
channel (BatchNorm shift, bias) is then never used, so removing it, with the BatchNorm entries,
depthwise convs and residual partners coupled to it, leaves the outputs unchanged. The coupled
channel sets across residual connections, depthwise convs and BatchNorm come from Torch-Pruning's
dependency graph.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .errors import ConfigError
from .model import LilNetXModel, decode


def _output_layers(net: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The conv/linear layers whose output is (part of) the network's output."""
    produced: dict[int, nn.Module] = {}
    hooks = [m.register_forward_hook(lambda mod, _i, out: produced.__setitem__(id(out), mod))
             for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        with torch.no_grad():
            out = net(example)
    finally:
        for h in hooks:
            h.remove()
    outs = out if isinstance(out, list | tuple) else [out]
    found = [produced[id(o)] for o in outs if id(o) in produced]
    if found:
        return found
    layers = [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    return layers[-1:]


def _is_reader(module: nn.Module) -> bool:
    """Layers whose weights say whether an input channel is read (dense conv, linear)."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.groups == 1


def _read_mask(module: nn.Module, idx: int) -> bool:
    """Whether ``module`` reads input channel/feature ``idx`` (non-zero weight slice)."""
    return bool(module.weight.detach()[:, idx].ne(0).any())


def dead_channels(net: nn.Module, example: torch.Tensor) -> list[tuple[nn.Module, object, list[int]]]:
    """``(root layer, pruning function, channel indices)`` for every coupled channel set that no
    layer reads. Requires ``torch_pruning``."""
    import torch_pruning as tp

    ignored = _output_layers(net, example)
    dg = tp.DependencyGraph().build_dependency(net, example_inputs=example)
    plans = []
    for group in dg.get_all_groups(ignored_layers=ignored):
        root_dep = group[0].dep
        root, fn = root_dep.target.module, root_dep.handler
        n = dg.get_out_channels(root)
        dead = [True] * n
        readers = 0
        for item in group.items:
            module = item.dep.target.module
            if not (dg.is_in_channel_pruning_fn(item.dep.handler) and _is_reader(module)):
                continue
            readers += 1
            for idx, root_idx in zip(item.idxs, item.root_idxs, strict=True):
                if dead[root_idx] and _read_mask(module, idx):
                    dead[root_idx] = False
        idx = [i for i, d in enumerate(dead) if d]
        if readers == 0 or not idx:
            continue
        if len(idx) == n:
            idx = idx[1:]  # keep one channel so every layer keeps a valid shape
        if idx:
            plans.append((root, fn, idx))
    return plans


def slim(model: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """A plain dense copy of ``model`` with unread channels physically removed.

    Args:
        model: a :class:`~lilnetx.model.LilNetXModel` (decoded first) or a plain network.
        example_input: a batch shaped like the network's input (N, C, H, W); used to trace.

    Returns a new network on the CPU in eval mode whose outputs equal the input network's.
    """
    if isinstance(model, LilNetXModel):
        net = decode(model)
    elif isinstance(model, nn.Module):
        net = copy.deepcopy(model).cpu()
    else:
        raise ConfigError(f"slim expects an nn.Module, got {type(model).__name__}")
    net.eval()
    example = example_input.detach().cpu()
    import torch_pruning as tp

    dg = tp.DependencyGraph().build_dependency(net, example_inputs=example)
    for root, fn, idx in dead_channels(net, example):
        dg.get_pruning_group(root, fn, idx).prune()
    return net.eval()


def _conv_like(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d | nn.Linear)


def count_macs(net: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates per sample of ``net`` (batch of ``example`` divided out).

    ``flops``: torch's own FLOP counter (``torch.utils.flop_counter``) halved (1 MAC = 2 FLOPs),
    over every op it knows (convs, matmuls). ``sparse_flops``: what a kernel that skips zero
    k x k slices (zero weights for linear layers) would do, counted analytically for conv and
    linear layers.
    """
    from torch.utils.flop_counter import FlopCounterMode

    n = example.shape[0]
    sparse = 0
    hooks = []

    def hook(mod, _inp, out):
        nonlocal sparse
        w = mod.weight.detach()
        if isinstance(mod, nn.Linear):
            sparse += int(w.ne(0).sum()) * (out.numel() // out.shape[-1]) // n
        else:
            nz_slices = int(w.flatten(2).ne(0).any(dim=2).sum())
            spatial = out.shape[2] * out.shape[3]
            sparse += nz_slices * w.shape[2] * w.shape[3] * spatial

    for m in net.modules():
        if _conv_like(m):
            hooks.append(m.register_forward_hook(hook))
    was_training = net.training
    net.eval()  # counting must not update BatchNorm statistics
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(example)
    finally:
        net.train(was_training)
        for h in hooks:
            h.remove()
    return {"flops": int(counter.get_total_flops() // 2 // n), "sparse_flops": int(sparse)}
