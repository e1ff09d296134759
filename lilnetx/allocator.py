"""Keep the memory a training step frees for the next step (Linux with glibc).

glibc hands allocations over 32 MB (and, by its sliding threshold, smaller ones) to ``mmap``,
unmaps them on ``free``, and trims the top of its heap back to the system; a CPU training step
allocates and frees the same large tensors (activations, gradients, temporaries) every
iteration, so each step faults all of them in again, pages zeroed by the kernel. Measured on
ResNet-20 width 4, batch 128, one thread (``benchmarks/page_faults.py``, from ``getrusage``):
217,000 minor faults and 0.45 s of system time per 5.8 s step of plain PyTorch training,
295,000 and 0.65 s for LilNetX; with :func:`keep_freed_memory` about 700 faults and 0.001 s,
for a resident size of 2.60 GB instead of 2.05 GB.

:func:`keep_freed_memory` sets ``M_MMAP_MAX`` to 0 (every allocation from the heap) and
``M_TRIM_THRESHOLD`` to 2 GiB (the heap is not given back while less than that is free), for
the whole process: its resident memory then stays at its peak, which is what a training process
reuses each step. :func:`lilnetx.train.fit` calls it; ``LILNETX_KEEP_FREED_MEMORY=0`` in the
environment turns it off. Elsewhere (other C libraries, other systems) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_BYTES = (1 << 31) - 1  # mallopt takes an int
ENV = "LILNETX_KEEP_FREED_MEMORY"

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (see the module docstring). Returns whether the
    setting is in force; the first call decides, later calls return its answer."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 (glibc only: musl has no such symbol)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_BYTES))
    return _applied
