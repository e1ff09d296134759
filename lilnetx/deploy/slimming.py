"""Slim export: physically remove the channels that the structured zeros make dead.

A channel is removed when no consumer reads it: every conv (not depthwise) and linear layer that
takes it as input has an all-zero weight slice for it. Whatever the producer computes for that
channel (BatchNorm shift, bias) is then never used, so removing it, with the BatchNorm entries,
depthwise convs and residual partners coupled to it, leaves the outputs unchanged. The coupled
channel sets across residual connections, depthwise convs and BatchNorm come from Torch-Pruning's
dependency graph.

Before that, reads of *dead* channels are dropped (:func:`zero_dead_reads`): a channel whose every
writer has an all-zero weight slice for it is a constant, the same for every input; when that
constant is exactly zero where a layer reads it (a BatchNorm shift <= 0 under a ReLU, no bias),
the layer's weight slice for it multiplies zeros only and is set to zero, which changes no output
and lets the channel go. Repeated until nothing changes, since a dropped read can leave another
writer all zero.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from lilnetx.core.model import LilNetXModel, decode
from lilnetx.errors import ConfigError, check_positive_int


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


def _channel_groups(net: nn.Module, example: torch.Tensor):
    """Torch-Pruning's dependency graph of ``net`` and its coupled channel groups, rooted at the
    conv/linear layers whose outputs are not the network's."""
    import torch_pruning as tp

    ignored = _output_layers(net, example)
    dg = tp.DependencyGraph().build_dependency(net, example_inputs=example)
    return dg, list(dg.get_all_groups(ignored_layers=ignored))


def _reader_inputs(net: nn.Module, probes: list[torch.Tensor]) -> dict[nn.Module, torch.Tensor]:
    """Per reader layer, a bool mask of its input channels (features) that were exactly zero at
    every position of every probe."""
    zero: dict[nn.Module, torch.Tensor] = {}

    def hook(mod, inp, _out):
        x = inp[0].detach()
        z = x.eq(0).transpose(0, 1).reshape(x.shape[1], -1).all(dim=1)
        zero[mod] = z if mod not in zero else zero[mod] & z

    hooks = [m.register_forward_hook(hook) for m in net.modules() if _is_reader(m)]
    try:
        with torch.no_grad():
            for x in probes:
                net(x)
    finally:
        for h in hooks:
            h.remove()
    return zero


def zero_dead_reads(net: nn.Module, example: torch.Tensor, graph=None) -> int:
    """Zero, in place, the weight slices through which a layer reads a dead channel; returns how
    many (layer, input channel) reads were dropped. The outputs do not change.

    A channel is dead when every conv/linear layer writing it (the channel's output-pruning
    entries in its dependency group: the producer and its residual partners) has an all-zero
    weight slice for it, so the channel does not depend on the input, and a reader sees exact
    zeros in it on random probes shaped like ``example`` (N, C, H, W). ``net`` must be in eval
    mode. ``graph``: the result of :func:`_channel_groups` when the caller has it. Requires
    ``torch_pruning``.
    """
    dg, groups = graph or _channel_groups(net, example)
    gen = torch.Generator().manual_seed(0)
    probes = [example, *(torch.randn(example.shape, generator=gen) * s for s in (1.0, 10.0))]
    zero_in = _reader_inputs(net, probes)
    dropped = 0
    changed = True
    while changed:
        changed = False
        for group in groups:
            writers, readers = [], []
            for item in group.items:
                module, fn = item.dep.target.module, item.dep.handler
                if not isinstance(module, nn.Conv2d | nn.Linear):
                    continue
                if dg.is_out_channel_pruning_fn(fn):
                    writers.append((module, item.idxs, item.root_idxs))
                elif dg.is_in_channel_pruning_fn(fn) and _is_reader(module):
                    readers.append((module, item.idxs, item.root_idxs))
            if not writers or not readers:
                continue
            n = dg.get_out_channels(group[0].dep.target.module)
            constant = [True] * n
            for module, idxs, roots in writers:
                w = module.weight.detach()
                for idx, root in zip(idxs, roots, strict=True):
                    if constant[root] and w[idx].ne(0).any():
                        constant[root] = False
            with torch.no_grad():
                for module, idxs, roots in readers:
                    w, z = module.weight, zero_in.get(module)
                    for idx, root in zip(idxs, roots, strict=True):
                        if constant[root] and z is not None and z[idx] and w[:, idx].ne(0).any():
                            w[:, idx] = 0
                            dropped += 1
                            changed = True
    return dropped


def dead_channels(net: nn.Module, example: torch.Tensor,
                  graph=None) -> list[tuple[nn.Module, object, list[int]]]:
    """``(root layer, pruning function, channel indices)`` for every coupled channel set that no
    layer reads (``graph`` as in :func:`zero_dead_reads`). Requires ``torch_pruning``."""
    dg, groups = graph or _channel_groups(net, example)
    plans = []
    for group in groups:
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


def rounded_plan(n: int, idx: list[int], round_to: int | None,
                 round_narrow: bool = True) -> list[int]:
    """The channels of a coupled group of ``n`` channels to remove, given the removable ones
    ``idx``, so that the kept count is rounded up to a multiple of ``round_to`` and at most ``n``
    (with ``round_narrow`` False, a kept count under ``round_to`` stays as it is).

    The channels put back are the removable ones of highest index: no layer reads them (their
    reading weight slices are zero), so keeping them leaves every output unchanged.
    """
    if not round_to:
        return idx
    kept = n - len(idx)
    if not round_narrow and kept < round_to:
        return idx
    target = min(n, -(-kept // round_to) * round_to)
    return idx[:len(idx) - (target - kept)]


def slim(model: nn.Module, example_input: torch.Tensor, *, drop_dead: bool = True,
         round_to: int | None = None, round_narrow: bool = True) -> nn.Module:
    """A plain dense copy of ``model`` with unread channels physically removed.

    Args:
        model: a :class:`~lilnetx.core.model.LilNetXModel` (decoded first) or a plain network.
        example_input: a batch shaped like the network's input (N, C, H, W); used to trace.
        drop_dead: first drop the reads of dead channels (:func:`zero_dead_reads`), so that
            channels which are identically zero go too.
        round_to: when set (a positive integer), every coupled channel group that loses channels
            keeps a multiple of ``round_to`` of them (or all of its channels, when the rounded
            count would exceed them): the kept count is rounded up by keeping some removable
            (unread) channels, whose reading weights are zero, so outputs do not change. Groups
            that lose nothing keep their width as it is. Some CPU kernels are faster on channel
            counts that are multiples of 8; ``benchmarks/slim_speedup.py`` measures it.
        round_narrow: with ``round_to``, whether a group left with fewer than ``round_to``
            channels is rounded up too (the default). False keeps such a group as narrow as it
            is: a kernel that narrow is cheap on any path, and ONNX Runtime's blocked (NCHWc)
            convolutions, which need output channels in multiples of their block (16 with
            AVX-512, 8 with AVX2), read fewer input channels than a block directly; rounding a
            first stage left with 1 channel up to 16 would give back most of its saving
            (``benchmarks/width_map.py``).

    Returns a new network on the CPU in eval mode whose outputs equal the input network's.
    """
    if round_to is not None:
        check_positive_int("round_to", round_to)
    if isinstance(model, LilNetXModel):
        net = decode(model)
    elif isinstance(model, nn.Module):
        net = copy.deepcopy(model).cpu()
    else:
        raise ConfigError(f"slim expects an nn.Module, got {type(model).__name__}")
    net.eval()
    example = example_input.detach().cpu()
    graph = _channel_groups(net, example)  # the coupling does not depend on the weights
    if drop_dead:
        zero_dead_reads(net, example, graph)
    dg = graph[0]
    for root, fn, idx in dead_channels(net, example, graph):
        idx = rounded_plan(dg.get_out_channels(root), idx, round_to, round_narrow)
        if idx:
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
