"""Bounds on what a ``.lnx`` file may ask of the reader, so that a hostile or damaged file costs
bounded time and memory and ends in one :class:`lilnetx.FormatError`.

Every count, shape and length of a file is checked against its architecture, built on PyTorch's
``meta`` device (shapes only, no storage), before any tensor is allocated or any latent decoded;
the architecture itself must stay within :data:`MAX_PARAMS`. ``save`` applies the same checks, so
it never writes a file that ``load`` refuses.
"""

from __future__ import annotations

import reprlib

MAX_PARAMS = 200_000_000
"""Most numbers (parameters and buffers) a network stored in a ``.lnx`` file may hold.

Decoding needs about 4 bytes (float32 weights) plus 16 (int64 latents, decoded and stacked) per
weight, so this caps a legitimate load at a few GB. It admits every CIFAR-style registry model at sane widths and the
large torchvision classifiers people train (ResNet-50 25.6M, ViT-B/16 86.6M, VGG-19 143.7M,
ConvNeXt-Large 197.8M with 1000 classes) and refuses ViT-L (304M) and ViT-H/14 (632M)."""

MAX_FILE_BYTES = 1 << 30
"""Largest ``.lnx`` file the reader opens (1 GiB). A file of a network at :data:`MAX_PARAMS`
stored densely in float32 (the largest encoding this format has: ``encode_plain`` without
quantization) is 4 bytes per number, 800 MB, plus tables and index."""

MAX_JSON_BYTES = 4 << 20
"""Largest decompressed ``arch`` or ``index`` JSON section (4 MiB). The largest index of a
torchvision model under the budget is 137 KB (``tv:efficientnet_v2_l``, quantized: one group per
layer); decompression stops at this size, so a zlib bomb cannot expand further."""

MAX_JSON_DEPTH = 16
"""Deepest nesting of lists and objects in a JSON section (a real index nests 5 deep)."""

MAX_JSON_DIGITS = 30
"""Most digits of an integer in a JSON section (every real value fits in 64 bits)."""

MAX_MESSAGE_CHARS = 100
"""Values quoted in error messages are cut to about this many characters."""

MAX_GRAPH_NODES = 2048
"""Most nodes of a ``"kind": "graph"`` architecture (torchvision's largest traceable classifiers:
EfficientNet-V2-L 1,094 nodes, DenseNet-201 713, ResNet-152 517): the reader runs the graph once on
the meta device to check it, about 0.2 ms a node."""

MAX_GRAPH_MODULES = 2048
"""Most layers and containers a graph architecture may declare (EfficientNet-V2-L has 963
layers); building one on the meta device takes about 0.2 ms, so the largest graph is checked in
about a second."""

MAX_NAME_CHARS = 200
"""Longest module, tensor or operator name in a graph architecture."""

MAX_STRING_CHARS = 64
"""Longest string constant a graph node may pass to an operator."""

MAX_ACTIVATION = 1 << 31
"""Most elements one intermediate tensor of a graph may have for one input sample."""

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxtuple = 3, 6, 4, 6
_REPR.maxstring, _REPR.maxlong, _REPR.maxother = 60, 40, 60


def short(value) -> str:
    """``repr(value)`` cut to about :data:`MAX_MESSAGE_CHARS` characters, for error messages."""
    try:
        text = _REPR.repr(value)
    except (ValueError, RecursionError):  # an int too long to print, a cyclic oddity
        text = f"<{type(value).__name__}>"
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[:MAX_MESSAGE_CHARS - 3] + "..."
    return text


def cut(text: str) -> str:
    """``text`` cut to a few times :data:`MAX_MESSAGE_CHARS` (a message built from parts)."""
    limit = 3 * MAX_MESSAGE_CHARS
    return text if len(text) <= limit else text[:limit - 3] + "..."
