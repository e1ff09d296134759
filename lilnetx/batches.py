"""Batches for training and evaluation: :class:`Batches` (reusable, one epoch per ``for``) and
:func:`iterate_batches` (one pass).

Two paths, chosen by the data set:

- **in memory**: a ``TensorDataset`` or a (nested) ``Subset`` of one is sliced directly with a
  permutation drawn from ``generator`` (same generator state, same order): no DataLoader, no
  worker, no per-sample Python call;
- **lazy**: any other map-style data set (e.g. :class:`lilnetx.data.ImageFiles`, whose items are
  decoded and transformed on access) is read through a ``torch.utils.data.DataLoader`` with
  ``workers`` worker processes (``None``: :func:`default_workers`), pinned memory and
  non-blocking copies when the device is CUDA. The shuffle order and the workers' seeds
  (``random``, ``torch`` and ``numpy`` in each worker, derived by torch from a base seed drawn
  from the loader's generator at every pass) come from ``generator`` (``None``: torch's global
  generator), so a seeded run is reproducible.

Workers are always shut down: those of a single pass when the pass ends or is abandoned (an
exception, Ctrl-C, a ``break``), persistent ones (``persistent=True``, kept across epochs) by
:meth:`Batches.close` or the ``with`` block. No step waits on the device.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils import data as torch_data
from torch.utils.data import Dataset, Subset, TensorDataset

from lilnetx.errors import ConfigError, check_positive_int

CIFAR_PAD = 4  #: zero padding of the "cifar" random-crop augmentation
AUGMENTS = ("cifar",)
MAX_DEFAULT_WORKERS = 4  #: :func:`default_workers` caps the worker count here


def default_workers() -> int:
    """DataLoader workers when none are asked for: ``min(4, usable CPUs)``."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_WORKERS, cpus))


def check_workers(workers: object) -> int | None:
    """``workers`` if it is ``None`` or a non-negative integer, else :class:`ConfigError`."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 0):
        raise ConfigError(f"workers must be a non-negative integer (0: read in the training "
                          f"process) or None (min(4, CPUs)), but got {workers!r}")
    return workers


def num_batches(dataset: Dataset, batch_size: int) -> int:
    """Number of batches :func:`iterate_batches` yields (the last partial batch counts)."""
    return math.ceil(len(dataset) / check_positive_int("batch_size", batch_size))


def _tensor_view(dataset: Dataset) -> tuple[tuple[Tensor, ...], Tensor | None] | None:
    """(tensors, index (N,) or None) if ``dataset`` is a TensorDataset or (nested) Subset of one."""
    index = None
    while isinstance(dataset, Subset):
        idx = torch.as_tensor(dataset.indices, dtype=torch.long)
        index = idx if index is None else idx[index]
        dataset = dataset.dataset
    return (dataset.tensors, index) if isinstance(dataset, TensorDataset) else None


def cifar_augment(x: Tensor, generator: torch.Generator | None = None,
                  pad: int = CIFAR_PAD) -> Tensor:
    """Random crop of x's own size from ``x`` zero-padded by ``pad``, then random horizontal flip.

    Vectorized over the batch x (B, C, H, W) on x's device (zero is the mean color, as ``x`` is
    normalized); randomness is drawn from ``generator`` (on its device) and moved to x's device.
    """
    b, _, h, w = x.shape
    gdev = generator.device if generator is not None else torch.device("cpu")
    off = torch.randint(0, 2 * pad + 1, (2, b), generator=generator, device=gdev).to(x.device)
    flip = torch.randint(0, 2, (b, 1), generator=generator, device=gdev).to(x.device).bool()
    cols = torch.arange(w, device=x.device)
    rows = off[0, :, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = torch.where(flip, cols.flip(0), cols) + off[1, :, None]  # (B, W)
    padded = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # (B, H+2p, W+2p, C)
    bidx = torch.arange(b, device=x.device)[:, None, None]
    return padded[bidx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def _shutdown(iterator: object) -> None:
    """Stop a DataLoader iterator's worker processes now (idempotent; no-op without workers)."""
    stop = getattr(iterator, "_shutdown_workers", None)
    if stop is not None:
        stop()


class Batches:
    """The batches of ``dataset``: each ``for x, y in batches`` is one epoch of (images
    (B, C, H, W), labels (B,)) on ``device``, reshuffled from ``generator`` when ``shuffle``;
    the last batch may be smaller. ``augment="cifar"`` applies :func:`cifar_augment` on
    ``device``. ``workers`` and ``persistent`` (keep the workers between epochs; end them with
    :meth:`close` or a ``with`` block) only concern a lazy data set (see the module)."""

    def __init__(self, dataset: Dataset, batch_size: int, *, shuffle: bool,
                 generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu", augment: str | None = None,
                 workers: int | None = None, persistent: bool = False) -> None:
        check_positive_int("batch_size", batch_size)
        if augment is not None and augment not in AUGMENTS:
            raise ConfigError(f"unknown augment {augment!r}; choose one of: None, "
                              f"{', '.join(AUGMENTS)}")
        check_workers(workers)
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.generator, self.device, self.augment = generator, torch.device(device), augment
        self.workers = default_workers() if workers is None else workers
        self.persistent = persistent
        self._view = _tensor_view(dataset)
        self._loader: torch_data.DataLoader | None = None

    def __len__(self) -> int:
        return num_batches(self.dataset, self.batch_size)

    @property
    def in_memory(self) -> bool:
        """True when the batches are sliced from tensors (no DataLoader)."""
        return self._view is not None

    def _tensor_batches(self) -> Iterator[tuple[Tensor, ...]]:
        (x_all, y_all, *_), index = self._view
        n, gen = len(self.dataset), self.generator
        gdev = gen.device if gen is not None else "cpu"
        order = (torch.randperm(n, generator=gen, device=gdev).cpu() if self.shuffle
                 else torch.arange(n))
        if index is not None:
            order = index[order]
        return ((x_all[i], y_all[i]) for i in order.split(self.batch_size))

    def _make_loader(self) -> torch_data.DataLoader:
        gen = self.generator
        if gen is not None and gen.device.type != "cpu":  # the sampler needs a CPU generator
            seed = int(torch.randint(0, 2**62, (), generator=gen, device=gen.device))
            gen = torch.Generator().manual_seed(seed)
        workers = self.workers
        return torch_data.DataLoader(
            self.dataset, batch_size=self.batch_size, shuffle=self.shuffle, generator=gen,
            num_workers=workers, pin_memory=self.device.type == "cuda",
            persistent_workers=self.persistent and workers > 0,
            prefetch_factor=2 if workers > 0 else None)

    def _loader_batches(self) -> Iterator:
        if self._loader is None:
            self._loader = self._make_loader()
        loader = self._loader
        iterator = iter(loader)
        try:
            yield from iterator
        finally:
            if not loader.persistent_workers:
                _shutdown(iterator)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        batches = self._tensor_batches() if self._view is not None else self._loader_batches()
        device, augment, gen = self.device, self.augment, self.generator
        try:
            for batch in batches:
                x = batch[0].to(device, non_blocking=True)
                y = batch[1].to(device, non_blocking=True)
                yield (cifar_augment(x, gen) if augment else x), y
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # runs the loader pass's clean-up now, not when collected

    def close(self) -> None:
        """End persistent workers (a later epoch starts new ones)."""
        loader, self._loader = self._loader, None
        if loader is not None and loader._iterator is not None:
            iterator, loader._iterator = loader._iterator, None
            _shutdown(iterator)

    def __enter__(self) -> Batches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iterate_batches(dataset: Dataset, batch_size: int, *, shuffle: bool,
                    generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                    augment: str | None = None,
                    workers: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """One pass of (images (B, C, H, W), labels (B,)) on ``device``; the last batch may be
    smaller. See :class:`Batches` (arguments are checked here, before the first batch);
    a lazy data set's workers end with the pass."""
    return iter(Batches(dataset, batch_size, shuffle=shuffle, generator=generator,
                        device=device, augment=augment, workers=workers))
