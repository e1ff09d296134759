"""Data sets: a registry, one factory (:func:`create_dataset`) and fast :func:`iterate_batches`.

In-memory data sets (digits, mnist, fashion_mnist, cifar10, cifar100) are converted once to
normalized float32 images of shape (N, C, H, W) and int64 labels of shape (N,) held in a
``TensorDataset``; ``train`` and ``val`` are ``Subset`` views of one training pool, ``test`` is its
own ``TensorDataset``. Validation is always carved from the training pool (stratified, seeded by
``seed``) so a sweep never selects on the test set; the test split never depends on ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from lilnetx.errors import ConfigError, DataError, check_positive_int
from lilnetx.registry import Registry

CIFAR_PAD = 4  #: zero padding of the "cifar" random-crop augmentation
TEST_FRACTION, TEST_SEED = 0.2, 0  #: held-out test split when a source has none (never varies)
AUGMENTS = ("cifar",)


@dataclass(frozen=True)
class DataInfo:
    """Static description of a data set: image shape (C, H, W), classes, normalization used."""

    name: str
    channels: int
    height: int
    width: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass
class DataSplits:
    """Train/val/test data sets yielding (image (C, H, W) float32, label int64) pairs."""

    train: Dataset
    val: Dataset
    test: Dataset
    info: DataInfo
    augment: str | None  # "cifar" (random crop + horizontal flip) or None


Loader = Callable[..., DataSplits]
"""A data set loader: ``loader(root, *, val_fraction, seed, limit, download) -> DataSplits``;
``root`` is ``data_root`` (or, for a path data set such as ``imagefolder:PATH``, the path)."""


def _builtins() -> None:
    import importlib

    importlib.import_module("lilnetx.sources")  # digits, mnist, fashion_mnist, cifar, folders


DATASETS: Registry[Loader] = Registry("dataset", "lilnetx.datasets", builtins=_builtins)
_PATH_DATASETS: set[str] = set()


def register_dataset(name: str, *, takes_path: bool = False):
    """Decorator adding a loader (see :data:`Loader`). ``takes_path``: the data set is named
    ``NAME:PATH`` and the loader gets ``PATH`` as ``root``."""
    if takes_path:
        _PATH_DATASETS.add(name)
    return DATASETS.register(name)


def dataset_names() -> list[str]:
    """The names accepted by :func:`create_dataset` (``PATH`` is a placeholder)."""
    return [f"{n}:PATH" if n in _PATH_DATASETS else n for n in DATASETS.names()]


def resolve_dataset(name: str) -> tuple[Loader, str, str | None]:
    """(loader, registry name, path) of a data set name such as ``digits`` or
    ``imagefolder:PATH``; :class:`ConfigError` naming the choices when unknown."""
    base, sep, path = name.partition(":") if isinstance(name, str) else (name, "", "")
    if isinstance(name, str) and base in DATASETS and (base in _PATH_DATASETS) == bool(sep):
        if sep and not path.strip():
            raise ConfigError(f"{base} needs a path, as in '{base}:PATH', but got no path")
        return DATASETS.get(base), base, (path if sep else None)
    shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:80] + "..."
    raise ConfigError(f"unknown dataset {shown}; choose one of: {', '.join(dataset_names())}")


def create_dataset(name: str | dict, data_root: str | None = None, *, val_fraction: float = 0.1,
                   seed: int = 0, download: bool = False, limit: int | None = None) -> DataSplits:
    """Load data set ``name`` and split it into train/val/test.

    ``name`` is a registered name (``lilnetx datasets`` lists them, plugins included), or a
    factory ``{"factory": "pkg.module:function", "args": {...}}`` naming the user's own code
    (see :func:`from_factory`). ``val_fraction`` (in [0, 0.5)) of the training pool becomes
    ``val`` (stratified, seeded by ``seed``); ``limit`` caps the number of training examples
    left after that. For ``imagefolder:PATH`` with a ``val/`` subfolder, that folder is used
    (``val_fraction`` unused).
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float) \
            or not 0 <= val_fraction < 0.5:
        raise ConfigError(f"val_fraction must be a number in [0, 0.5), but got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, but got {seed!r}")
    if limit is not None:
        check_positive_int("limit", limit)
    split = dict(val_fraction=float(val_fraction), seed=seed, limit=limit)
    if isinstance(name, dict):
        return from_factory(name, **split)
    loader, base, path = resolve_dataset(name)
    out = loader(path if path is not None else data_root, download=download, **split)
    if not isinstance(out, DataSplits):
        raise DataError(f"dataset {base!r}: its loader returned {type(out).__name__}, "
                        "not DataSplits")
    return out


def from_factory(spec: dict, **split) -> DataSplits:
    """A data set from the user's own code: ``spec["factory"]`` (``"pkg.module:function"``)
    is called with ``spec["args"]`` and returns :class:`DataSplits`, or the arrays
    ``(x_train, y_train, x_test, y_test)`` (images (N, C, H, W), integer labels (N,)), which
    are normalized by the training pool's statistics and split like a built-in data set."""
    from lilnetx.factory import call_factory

    out = call_factory(spec, "dataset")
    if isinstance(out, DataSplits):
        return out
    if not (isinstance(out, tuple | list) and len(out) == 4):
        raise DataError(f"dataset factory {spec.get('factory')!r} must return DataSplits or "
                        f"(x_train, y_train, x_test, y_test), but returned {type(out).__name__}")
    x, y, xt, yt = (np.asarray(a) for a in out)
    if x.ndim != 4 or xt.ndim != 4 or y.ndim != 1 or yt.ndim != 1:
        raise DataError(f"dataset factory {spec.get('factory')!r}: images must be (N, C, H, W) "
                        f"and labels (N,), but got {x.shape}, {y.shape}, {xt.shape}, {yt.shape}")
    num_classes = int(max(y.max(initial=0), yt.max(initial=0))) + 1
    x, xt = x.astype(np.float32), xt.astype(np.float32)
    stats = (tuple(float(c) for c in x.mean(axis=(0, 2, 3))),
             tuple(float(c) + 1e-12 for c in x.std(axis=(0, 2, 3))))
    return splits_from_arrays(str(spec.get("factory")), x, y.astype(np.int64), xt,
                              yt.astype(np.int64), num_classes, 1.0, None, stats, **split)


def _stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Split indices of ``labels`` (N,) into (rest, carved); carved has round(fraction * N) items,
    allotted to classes in proportion (largest remainder). Both come back in seeded random order."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * fraction
    take = np.floor(quota).astype(np.int64)
    extra = int(round(fraction * len(labels))) - int(take.sum())
    if extra > 0:
        take[np.argsort(-(quota - take), kind="stable")[:extra]] += 1
    rest, carved = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for c, k in zip(classes, take, strict=True):
        idx = rng.permutation(np.flatnonzero(labels == c))
        carved.append(idx[:k])
        rest.append(idx[k:])
    return rng.permutation(np.concatenate(rest)), rng.permutation(np.concatenate(carved))


def _assemble(info: DataInfo, pool: Dataset, labels: np.ndarray, test: Dataset,
              val: Dataset | None, augment: str | None, val_fraction: float, seed: int,
              limit: int | None) -> DataSplits:
    """Carve ``val`` from ``pool`` (labels (N,)) unless given, cap train at ``limit``."""
    if val is None:
        train_idx, val_idx = _stratified_split(labels, val_fraction, seed)
        val = Subset(pool, val_idx.tolist())
    else:
        train_idx = np.random.default_rng(seed).permutation(len(labels))
    if limit is not None:
        train_idx = train_idx[:limit]
    return DataSplits(Subset(pool, train_idx.tolist()), val, test, info, augment)


def _normalize(x: np.ndarray, scale: float, mean: tuple[float, ...],
               std: tuple[float, ...]) -> Tensor:
    """(N, C, H, W) raw pixels -> float32 ``(x / scale - mean) / std`` per channel."""
    t = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32).div_(scale)
    return t.sub_(torch.tensor(mean).view(1, -1, 1, 1)).div_(torch.tensor(std).view(1, -1, 1, 1))


def splits_from_arrays(name: str, x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray,
                   num_classes: int, scale: float, augment: str | None,
                   stats: tuple[tuple[float, ...], tuple[float, ...]],
                   **split) -> DataSplits:
    """Splits from raw train-pool images (N, C, H, W) and labels (N,) and test arrays, pixels
    divided by ``scale`` then normalized by ``stats`` = (mean, std) per channel; ``augment``
    is ``"cifar"`` or ``None``. The helper for a plugin's loader."""
    for what, lab in (("training", y), ("test", yt)):
        if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
            raise DataError(f"{name}: {what} labels must be in 0..{num_classes - 1}, but found "
                            f"values from {lab.min()} to {lab.max()}")
    mean, std = stats
    info = DataInfo(name, x.shape[1], x.shape[2], x.shape[3], num_classes, mean, std)
    pool = TensorDataset(_normalize(x, scale, mean, std), torch.from_numpy(y.astype(np.int64)))
    test = TensorDataset(_normalize(xt, scale, mean, std), torch.from_numpy(yt.astype(np.int64)))
    return _assemble(info, pool, y, test, None, augment, **split)


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


def iterate_batches(dataset: Dataset, batch_size: int, *, shuffle: bool,
                    generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                    augment: str | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (images (B, C, H, W), labels (B,)) on ``device``; the last batch may be smaller.

    Tensor-backed data sets are sliced directly with a permutation drawn from ``generator``
    (same generator state, same order); others go through a single-process DataLoader.
    ``augment="cifar"`` applies :func:`cifar_augment` to each batch on ``device``.
    """
    check_positive_int("batch_size", batch_size)
    if augment is not None and augment not in AUGMENTS:
        raise ConfigError(f"unknown augment {augment!r}; choose one of: None, "
                          f"{', '.join(AUGMENTS)}")
    device, view = torch.device(device), _tensor_view(dataset)
    if view is None:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                            num_workers=0)
        batches: Iterator = iter(loader)
    else:
        (x_all, y_all, *_), index = view
        n = len(dataset)
        gdev = generator.device if generator is not None else "cpu"
        order = (torch.randperm(n, generator=generator, device=gdev).cpu() if shuffle
                 else torch.arange(n))
        if index is not None:
            order = index[order]
        batches = ((x_all[i], y_all[i]) for i in order.split(batch_size))

    def move(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x = x.to(device, non_blocking=True)
        return (cifar_augment(x, generator) if augment else x), y.to(device, non_blocking=True)

    return (move(x, y) for x, y in batches)
