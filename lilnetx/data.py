"""Data sets: a registry, one factory (:func:`create_dataset`) and fast :func:`iterate_batches`.

In-memory data sets (digits, mnist, fashion_mnist, cifar10, cifar100) are converted once to
normalized float32 images of shape (N, C, H, W) and int64 labels of shape (N,) held in a
``TensorDataset``; ``train`` and ``val`` are ``Subset`` views of one training pool, ``test`` is its
own ``TensorDataset``. Validation is always carved from the training pool (stratified, seeded by
``seed``) so a sweep never selects on the test set; the test split never depends on ``seed``.
"""

from __future__ import annotations

import gzip
import math
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from .errors import ConfigError, DataError, check_positive_int

IMAGE_FOLDER_SIZE = 32  #: side length imagefolder images are resized to
CIFAR_PAD = 4  #: zero padding of the "cifar" random-crop augmentation
TEST_FRACTION, TEST_SEED = 0.2, 0  #: held-out test split when a source has none (never varies)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CACHE_ROOT = "~/.cache/lilnetx"  #: default root for torchvision downloads
AUGMENTS = ("cifar",)

# Published per-channel statistics (of the pixel values scaled to [0, 1]).
_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet
}
_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


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


def dataset_names() -> list[str]:
    """The registry names accepted by :func:`create_dataset` (``PATH`` is a placeholder)."""
    return ["digits", "fashion_mnist", "mnist", "cifar10", "cifar100", "imagefolder:PATH"]


def create_dataset(name: str, data_root: str | None = None, *, val_fraction: float = 0.1,
                   seed: int = 0, download: bool = False, limit: int | None = None) -> DataSplits:
    """Load data set ``name`` and split it into train/val/test.

    ``val_fraction`` (in [0, 0.5)) of the training pool becomes ``val`` (stratified, seeded by
    ``seed``); ``limit`` caps the number of training examples left after that. For
    ``imagefolder:PATH`` with a ``val/`` subfolder, that folder is used (``val_fraction`` unused).
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float) \
            or not 0 <= val_fraction < 0.5:
        raise ConfigError(f"val_fraction must be a number in [0, 0.5), but got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, but got {seed!r}")
    if limit is not None:
        check_positive_int("limit", limit)
    if not (isinstance(name, str) and (name in dataset_names() or name.startswith("imagefolder:"))):
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(dataset_names())}")
    split = dict(val_fraction=float(val_fraction), seed=seed, limit=limit)
    if name == "digits":
        return _digits(**split)
    if name in ("mnist", "fashion_mnist"):
        x, y, xt, yt = _load_idx_set(_locate_idx(name, data_root, download), name)
        return _tensor_splits(name, x, y, xt, yt, 10, 255.0, None, **split)
    if name in ("cifar10", "cifar100"):
        return _cifar(name, data_root, download, **split)
    return _imagefolder(name, name.removeprefix("imagefolder:"), **split)


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


def _tensor_splits(name: str, x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray,
                   num_classes: int, scale: float, augment: str | None,
                   stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
                   **split) -> DataSplits:
    """Build splits from raw train-pool (N, C, H, W)/(N,) and test arrays; ``stats`` defaults to
    the published (mean, std) of ``name``."""
    for what, lab in (("training", y), ("test", yt)):
        if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
            raise DataError(f"{name}: {what} labels must be in 0..{num_classes - 1}, but found "
                            f"values from {lab.min()} to {lab.max()}")
    mean, std = stats if stats is not None else _STATS[name]
    info = DataInfo(name, x.shape[1], x.shape[2], x.shape[3], num_classes, mean, std)
    pool = TensorDataset(_normalize(x, scale, mean, std), torch.from_numpy(y.astype(np.int64)))
    test = TensorDataset(_normalize(xt, scale, mean, std), torch.from_numpy(yt.astype(np.int64)))
    return _assemble(info, pool, y, test, None, augment, **split)


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled ``digits.csv.gz`` (what ``load_digits`` reads), read without
    importing scikit-learn (seconds of start-up in every sweep trial). Images scaled to [0, 1]."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the digits data set needs scikit-learn (pip install scikit-learn)")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    data = np.loadtxt(path, delimiter=",", dtype=np.float64)
    return data[:, :-1].reshape(-1, 1, 8, 8) / 16.0, data[:, -1].astype(np.int64)


def _digits(**split) -> DataSplits:
    """scikit-learn's 1797 8x8 digits (values 0..16); normalized by the train-pool statistics."""
    x, y = _load_digits()
    pool_idx, test_idx = _stratified_split(y, TEST_FRACTION, TEST_SEED)
    pool_idx, test_idx = np.sort(pool_idx), np.sort(test_idx)
    stats = (float(x[pool_idx].mean()),), (float(x[pool_idx].std()),)
    return _tensor_splits("digits", x[pool_idx], y[pool_idx], x[test_idx], y[test_idx], 10, 1.0,
                          None, stats, **split)


def read_idx(path: str | Path) -> np.ndarray:
    """Read one idx file (gzip-compressed or not) into an array of the dims its header declares."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read idx file {path}: {e}") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an idx file: expected magic bytes 00 00 <type> <ndim>, "
                        f"but got {raw[:4].hex(' ') or 'an empty file'}")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated idx header (needs {header} bytes, has {len(raw)})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(dims) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "trailing data"
        raise DataError(f"{path}: header declares dims {dims} ({expected} bytes) but the file has "
                        f"{len(raw)} bytes ({what})")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(dirs: list[Path]) -> dict[str, Path] | None:
    """The four idx files (plain or .gz) from the first of ``dirs`` that holds all of them."""
    for d in dirs:
        found = {key: p for key, base in _IDX_FILES.items()
                 for p in (d / f"{base}.gz", d / base) if p.is_file()}
        if len(found) == len(_IDX_FILES):
            return found
    return None


def _idx_in_root(name: str, root: Path, download: bool) -> dict[str, Path]:
    """Idx files in ``root`` or torchvision's ``root/<Class>/raw``, downloading if allowed."""
    from torchvision import datasets

    cls = datasets.FashionMNIST if name == "fashion_mnist" else datasets.MNIST
    dirs = [root, root / cls.__name__ / "raw"]
    files = _find_idx(dirs)
    if files is None and download:
        try:
            cls(str(root), train=True, download=True)
        except (OSError, RuntimeError, ValueError) as e:
            raise DataError(f"downloading {name} into {root} failed: {e}") from None
        files = _find_idx(dirs)
    if files is None:
        raise DataError(f"no {name} idx files ({', '.join(_IDX_FILES.values())}, optionally .gz) "
                        f"in {dirs[0]} or {dirs[1]}"
                        + ("" if download else "; download is off (pass download=True to fetch)"))
    return files


def _locate_idx(name: str, data_root: str | None, download: bool) -> dict[str, Path]:
    """fashion_mnist: data_root, else Debian's copy, else torchvision into the cache; mnist:
    data_root (default: the cache). An explicit ``data_root`` is never silently bypassed."""
    if data_root is not None:
        return _idx_in_root(name, Path(data_root).expanduser(), download)
    cache = Path(CACHE_ROOT).expanduser()
    if name == "mnist":
        return _idx_in_root(name, cache, download)
    files = _find_idx([DEBIAN_FASHION_MNIST])
    if files is not None:
        return files
    try:
        return _idx_in_root(name, cache, download=True)
    except DataError as e:
        reason = " ".join(str(e).split())
        raise DataError(f"cannot find fashion_mnist; tried (1) data_root: not given, (2) "
                        f"{DEBIAN_FASHION_MNIST}: missing, (3) a download into {cache}: "
                        f"{reason[:120]}. To get it: apt-get install dataset-fashion-mnist "
                        f"(Debian; `make deps` does it), or set data_root to a folder with the "
                        f"four idx files") from None


def _load_idx_set(files: dict[str, Path], name: str) -> tuple[np.ndarray, ...]:
    """Read and cross-check the four idx files -> train x (N, 1, H, W), y (N,), test x, y."""
    a = {key: read_idx(path) for key, path in files.items()}
    out = []
    for split in ("train", "test"):
        x, y = a[f"{split}_images"], a[f"{split}_labels"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{name}: expected {split} images (N, H, W) and labels (N,), but got "
                            f"shapes {x.shape} and {y.shape}")
        out += [x[:, None], y]
    if out[0].shape[2:] != out[2].shape[2:]:
        raise DataError(f"{name}: train images are {out[0].shape[2:]} but test images "
                        f"{out[2].shape[2:]}")
    return tuple(out)


def _cifar(name: str, data_root: str | None, download: bool, **split) -> DataSplits:
    """CIFAR-10/100 through torchvision (python-pickle batches under ``data_root``)."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    root = Path(data_root if data_root is not None else CACHE_ROOT).expanduser()
    try:
        train, test = (cls(str(root), train=t, download=download) for t in (True, False))
    except (OSError, RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as e:
        raise DataError(f"cannot load {name} from {root / cls.base_folder}: {e}"
                        + ("" if download else "; download is off (pass download=True to fetch)"))\
            from None
    arrays = [train.data.transpose(0, 3, 1, 2), np.asarray(train.targets),
              test.data.transpose(0, 3, 1, 2), np.asarray(test.targets)]
    return _tensor_splits(name, *arrays, 10 if name == "cifar10" else 100, 255.0, "cifar", **split)


def _imagefolder(name: str, path: str, **split) -> DataSplits:
    """Class-per-subfolder images resized to IMAGE_FOLDER_SIZE, RGB, ImageNet-normalized."""
    from torchvision import datasets, transforms

    if not path:
        raise ConfigError("imagefolder needs a path, as in 'imagefolder:PATH', but got no path")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a directory")
    mean, std = _STATS["imagefolder"]
    tf = transforms.Compose([transforms.Resize((IMAGE_FOLDER_SIZE, IMAGE_FOLDER_SIZE)),
                             transforms.ToTensor(), transforms.Normalize(mean, std)])

    def load(folder: Path) -> datasets.ImageFolder:
        try:
            return datasets.ImageFolder(str(folder), transform=tf)
        except (FileNotFoundError, OSError) as e:
            raise DataError(f"no images in class subfolders of {folder}: {e}") from None

    # With train/ use train/, val/, test/ as given; else root's subfolders are the classes.
    parts = {s: root / s for s in ("train", "val", "test") if (root / "train").is_dir()
             and (root / s).is_dir()}
    full = load(parts.get("train", root))
    val, test = (load(parts[s]) if s in parts else None for s in ("val", "test"))
    for s, ds in (("val", val), ("test", test)):
        if ds is not None and ds.classes != full.classes:
            raise DataError(f"{root / s} has classes {ds.classes}, but train has {full.classes}")
    labels = np.asarray(full.targets, dtype=np.int64)
    pool: Dataset = full
    if test is None:
        pool_idx, test_idx = _stratified_split(labels, TEST_FRACTION, TEST_SEED)
        test, pool, labels = Subset(full, test_idx.tolist()), Subset(full, pool_idx.tolist()), \
            labels[pool_idx]
    info = DataInfo(name, 3, IMAGE_FOLDER_SIZE, IMAGE_FOLDER_SIZE, len(full.classes), mean, std)
    return _assemble(info, pool, labels, test, val, None, **split)


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
