"""Data sets: a registry, one factory (:func:`create_dataset`) and fast :func:`iterate_batches`.

In-memory data sets (digits, mnist, fashion_mnist, cifar10, cifar100) are converted once to
normalized float32 images of shape (N, C, H, W) and int64 labels of shape (N,) held in a
``TensorDataset``; ``train`` and ``val`` are ``Subset`` views of one training pool, ``test`` is its
own ``TensorDataset``. Validation is always carved from the training pool (stratified, seeded by
``seed``) so a sweep never selects on the test set; the test split never depends on ``seed``.

Data sets read from disk (``imagefolder:PATH``, or a plugin's) hold file paths only: an
:class:`ImageFiles` decodes and transforms an image when indexed (:func:`image_transforms`:
random train crops, deterministic eval crops), and the batches come from a DataLoader with
``DataSplits.workers`` worker processes (see :mod:`lilnetx.batches`).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset

from lilnetx.batches import (  # noqa: F401  (re-exported: lilnetx.data is their public home)
    AUGMENTS,
    CIFAR_PAD,
    Batches,
    _tensor_view,
    check_workers,
    cifar_augment,
    default_workers,
    iterate_batches,
    num_batches,
)
from lilnetx.errors import ConfigError, DataError, check_positive_int
from lilnetx.registry import Registry

TEST_FRACTION, TEST_SEED = 0.2, 0  #: held-out test split when a source has none (never varies)
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  #: per-channel mean, std


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
    """Train/val/test data sets yielding (image (C, H, W) float32, label int64) pairs.

    Any map-style data set works. A ``TensorDataset`` (or a ``Subset`` of one) is batched by
    slicing in memory; any other (e.g. :class:`ImageFiles`, or a plugin's data set returning
    tensors lazily) is read through a DataLoader with ``workers`` processes (``None``:
    ``min(4, CPUs)``; 0: in the training process), so its own transforms run there: give
    ``train`` the random augmentation and ``val``/``test`` the deterministic eval transform
    (:func:`image_transforms`; :meth:`ImageFiles.with_transform` gives both views of one file
    list). ``augment`` is a batch augmentation applied on the device ("cifar": random crop and
    horizontal flip) or None.
    """

    train: Dataset
    val: Dataset
    test: Dataset
    info: DataInfo
    augment: str | None
    workers: int | None = None


Loader = Callable[..., DataSplits]
"""A data set loader: ``loader(root, *, download, val_fraction, seed, limit, **options) ->
DataSplits``; ``root`` is ``data_root`` (or, for a path data set such as ``imagefolder:PATH``,
the path). Its other keyword-only parameters are its options (``imagefolder``: ``image_size``),
given as keywords to :func:`create_dataset`."""
_SPLIT_ARGS = {"root", "download", "val_fraction", "seed", "limit"}


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


def loader_options(loader: Loader) -> list[str] | None:
    """The options a loader takes (its keyword parameters beyond root, download, val_fraction,
    seed and limit), or None when it takes any (``**options``)."""
    try:
        params = inspect.signature(loader).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.name not in _SPLIT_ARGS
            and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def create_dataset(name: str | dict, data_root: str | None = None, *, val_fraction: float = 0.1,
                   seed: int = 0, download: bool = False, limit: int | None = None,
                   workers: int | None = None, **options: Any) -> DataSplits:
    """Load data set ``name`` and split it into train/val/test.

    ``name`` is a registered name (``lilnetx datasets`` lists them, plugins included), or a
    factory ``{"factory": "pkg.module:function", "args": {...}}`` naming the user's own code
    (see :func:`from_factory`). ``val_fraction`` (in [0, 0.5)) of the training pool becomes
    ``val`` (stratified, seeded by ``seed``); ``limit`` caps the number of training examples
    left after that. For ``imagefolder:PATH`` with a ``val/`` subfolder, that folder is used
    (``val_fraction`` unused).

    ``workers`` sets :attr:`DataSplits.workers` (DataLoader processes of a data set read from
    disk; ignored by in-memory ones). ``options`` go to the loader, which declares them as
    keyword parameters, e.g. ``create_dataset("imagefolder:/data/imagenet", image_size=224,
    workers=8)``; for a factory they are added to its ``args``.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float) \
            or not 0 <= val_fraction < 0.5:
        raise ConfigError(f"val_fraction must be a number in [0, 0.5), but got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, but got {seed!r}")
    if limit is not None:
        check_positive_int("limit", limit)
    check_workers(workers)
    split = dict(val_fraction=float(val_fraction), seed=seed, limit=limit)
    if isinstance(name, dict):
        args = name.get("args") or {}
        if options and isinstance(args, dict):
            name = {**name, "args": {**args, **options}}
        out = from_factory(name, **split)
    else:
        loader, base, path = resolve_dataset(name)
        accepted = loader_options(loader)
        unknown = sorted(set(options) - set(accepted)) if accepted is not None else []
        if unknown:
            raise ConfigError(f"dataset {base!r} takes no option {unknown[0]!r}; its options: "
                              f"{', '.join(accepted) or 'none'}")
        out = loader(path if path is not None else data_root, download=download, **split,
                     **options)
        if not isinstance(out, DataSplits):
            raise DataError(f"dataset {base!r}: its loader returned {type(out).__name__}, "
                            "not DataSplits")
    if workers is not None:
        out.workers = workers
    return out


def from_factory(spec: dict, **split) -> DataSplits:
    """A data set from the user's own code: ``spec["factory"]`` (``"pkg.module:function"``)
    is called with ``spec["args"]`` and returns :class:`DataSplits`, or the arrays
    ``(x_train, y_train, x_test, y_test)`` (images (N, C, H, W), integer labels (N,)), which
    are normalized by the training pool's statistics and split like a built-in data set.
    A factory returning DataSplits also gets ``val_fraction``, ``seed`` and ``limit`` if its
    signature takes them (a registered loader such as ``lilnetx.sources:imagefolder`` does)."""
    from lilnetx.factory import call_factory

    out = call_factory(spec, "dataset", **split)
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
              limit: int | None, *, eval_pool: Dataset | None = None,
              workers: int | None = None) -> DataSplits:
    """Carve ``val`` from ``pool`` (labels (N,)) unless given, cap train at ``limit``.
    ``eval_pool``: the same items as ``pool`` with the eval transform, for ``val``."""
    if val is None:
        train_idx, val_idx = _stratified_split(labels, val_fraction, seed)
        val = Subset(eval_pool if eval_pool is not None else pool, val_idx.tolist())
    else:
        train_idx = np.random.default_rng(seed).permutation(len(labels))
    if limit is not None:
        train_idx = train_idx[:limit]
    return DataSplits(Subset(pool, train_idx.tolist()), val, test, info, augment,
                      check_workers(workers))


def image_transforms(size: int, mean: Sequence[float] = IMAGENET_STATS[0],
                     std: Sequence[float] = IMAGENET_STATS[1]) -> tuple[Callable, Callable]:
    """(train, eval) torchvision transforms from a PIL image to a normalized (3, size, size)
    tensor: train ``RandomResizedCrop(size)``, ``RandomHorizontalFlip``; eval
    ``Resize(int(size * 256 / 224))``, ``CenterCrop(size)``; both ``ToTensor``, ``Normalize``."""
    from torchvision import transforms as T

    check_positive_int("image_size", size)
    tail = [T.ToTensor(), T.Normalize(tuple(mean), tuple(std))]
    train = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), *tail])
    evaluate = T.Compose([T.Resize(int(size * 256 / 224)), T.CenterCrop(size), *tail])
    return train, evaluate


class ImageFiles(Dataset):
    """Images read from disk when indexed: ``(transform(RGB image), label)``.

    Holds the file list only: the paths as one bytes array and the labels as an int64 array
    (no Python object per file, so forked DataLoader workers do not copy the list page by
    page). :meth:`with_transform` is another view of the same arrays."""

    def __init__(self, paths: Sequence[str | os.PathLike], labels: Sequence[int],
                 transform: Callable | None = None, classes: Sequence[str] = ()) -> None:
        self.paths = np.array([os.fsencode(p) for p in paths], dtype=np.bytes_)
        self.targets = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(self.paths) != len(self.targets):
            raise DataError(f"ImageFiles: {len(self.paths)} paths but {len(self.targets)} labels")
        self.transform, self.classes = transform, list(classes)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, transform: Callable | None = None
                    ) -> ImageFiles:
        """The images of a class-per-subfolder tree (torchvision's ImageFolder scan: classes
        sorted, image extensions only); :class:`DataError` when it holds none."""
        from torchvision.datasets import ImageFolder

        try:
            scan = ImageFolder(os.fspath(folder))
        except (FileNotFoundError, OSError) as e:
            raise DataError(f"no images in class subfolders of {folder}: {e}") from None
        return cls([p for p, _ in scan.samples], scan.targets, transform, scan.classes)

    def with_transform(self, transform: Callable | None) -> ImageFiles:
        view = object.__new__(ImageFiles)
        view.paths, view.targets, view.classes = self.paths, self.targets, self.classes
        view.transform = transform
        return view

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        path = os.fsdecode(self.paths[index])
        try:
            with open(path, "rb") as f:
                image = Image.open(f).convert("RGB")
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read image {path}: {e}") from None
        return (self.transform(image) if self.transform else image), int(self.targets[index])


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
