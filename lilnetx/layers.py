"""Which layers of a network are weight layers that methods compress: every ``nn.Conv2d``
and ``nn.Linear`` (of any kernel, stride, dilation and groups), except the linear layers inside
``nn.MultiheadAttention``, which reads their weights directly. Shared by LilNetX's conversion,
the quantization and pruning baselines, the file format and the statistics."""

from __future__ import annotations

from torch import nn


def convertible_layers(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of every ``nn.Conv2d``/``nn.Linear`` of ``net`` a method compresses
    (what :func:`lilnetx.convert` replaces), in ``named_modules`` order."""
    attention = {n for n, m in net.named_modules() if isinstance(m, nn.MultiheadAttention)}
    return [(n, m) for n, m in net.named_modules()
            if type(m) in (nn.Conv2d, nn.Linear)
            and not any(n.startswith(a + ".") for a in attention)]
