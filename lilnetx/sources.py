"""The built-in data sets, registered in :data:`lilnetx.data.DATASETS`: ``digits``
(scikit-learn's bundled 8x8 digits), ``mnist`` and ``fashion_mnist`` (idx files: ``data_root``,
Debian's ``dataset-fashion-mnist``, or a torchvision download), ``cifar10`` and ``cifar100``
(torchvision roots) and ``imagefolder:PATH`` (class-per-subfolder images read from disk by
DataLoader workers, option ``image_size``).

A new source is one function ``loader(root, *, download, val_fraction, seed, limit, **options)``
decorated with :func:`lilnetx.data.register_dataset` (here, or in a plugin package).
"""

from __future__ import annotations

import gzip
import math
import pickle
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset, Subset

from lilnetx.data import (
    IMAGENET_STATS,
    TEST_FRACTION,
    TEST_SEED,
    DataInfo,
    DataSplits,
    ImageFiles,
    _assemble,
    _stratified_split,
    check_workers,
    image_transforms,
    register_dataset,
    splits_from_arrays,
)
from lilnetx.errors import ConfigError, DataError, check_positive_int

IMAGE_FOLDER_SIZE = 32  #: default side length of imagefolder crops (``image_size``)
MAX_IMAGE_SIZE = 4096  #: largest ``image_size`` accepted
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CACHE_ROOT = "~/.cache/lilnetx"  #: default root for torchvision downloads
# Published per-channel statistics (of the pixel values scaled to [0, 1]).
_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": IMAGENET_STATS,
}
_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


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
    return splits_from_arrays("digits", x[pool_idx], y[pool_idx], x[test_idx], y[test_idx], 10, 1.0,
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
    return splits_from_arrays(name, *arrays, 10 if name == "cifar10" else 100, 255.0, "cifar",
                              _STATS[name], **split)


def _imagefolder(name: str, path: str, image_size: int, workers: int | None,
                 **split) -> DataSplits:
    """Class-per-subfolder RGB images, ImageNet-normalized, read from disk on access: train
    with random resized crops and flips, val and test with resize and center crop
    (:func:`lilnetx.data.image_transforms` at ``image_size``)."""
    if not path:
        raise ConfigError("imagefolder needs a path, as in 'imagefolder:PATH', but got no path")
    check_positive_int("image_size", image_size)
    if image_size > MAX_IMAGE_SIZE:
        raise ConfigError(f"image_size must be at most {MAX_IMAGE_SIZE}, but got {image_size}")
    check_workers(workers)
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a directory")
    mean, std = _STATS["imagefolder"]
    train_tf, eval_tf = image_transforms(image_size, mean, std)
    # With train/ use train/, val/, test/ as given; else root's subfolders are the classes.
    parts = {s: root / s for s in ("train", "val", "test") if (root / "train").is_dir()
             and (root / s).is_dir()}
    full = ImageFiles.from_folder(parts.get("train", root), train_tf)
    evaluated = full.with_transform(eval_tf)  # the same files, for what is carved from them
    val, test = (ImageFiles.from_folder(parts[s], eval_tf) if s in parts else None
                 for s in ("val", "test"))
    for s, ds in (("val", val), ("test", test)):
        if ds is not None and ds.classes != full.classes:
            raise DataError(f"{root / s} has classes {ds.classes}, but train has {full.classes}")
    labels = full.targets
    pool: Dataset = full
    eval_pool: Dataset = evaluated
    if test is None:
        pool_idx, test_idx = _stratified_split(labels, TEST_FRACTION, TEST_SEED)
        keep = pool_idx.tolist()
        test, pool, eval_pool = Subset(evaluated, test_idx.tolist()), Subset(full, keep), \
            Subset(evaluated, keep)
        labels = labels[pool_idx]
    info = DataInfo(name, 3, image_size, image_size, len(full.classes), mean, std)
    return _assemble(info, pool, labels, test, val, None, **split, eval_pool=eval_pool,
                     workers=workers)


@register_dataset("digits")
def digits(root: str | None = None, *, download: bool = False, val_fraction: float = 0.1,
           seed: int = 0, limit: int | None = None) -> DataSplits:
    """scikit-learn's 1797 8x8 grey digits, 10 classes (no root, nothing to download)."""
    return _digits(val_fraction=val_fraction, seed=seed, limit=limit)


def _idx_dataset(name: str):
    def load(root: str | None = None, *, download: bool = False, val_fraction: float = 0.1,
             seed: int = 0, limit: int | None = None) -> DataSplits:
        x, y, xt, yt = _load_idx_set(_locate_idx(name, root, download), name)
        return splits_from_arrays(name, x, y, xt, yt, 10, 255.0, None, _STATS[name],
                                  val_fraction=val_fraction, seed=seed, limit=limit)

    load.__doc__ = f"{name}: 28x28 grey images, 10 classes, from idx files."
    return load


register_dataset("fashion_mnist")(_idx_dataset("fashion_mnist"))
register_dataset("mnist")(_idx_dataset("mnist"))


@register_dataset("cifar10")
def cifar10(root: str | None = None, *, download: bool = False, val_fraction: float = 0.1,
            seed: int = 0, limit: int | None = None) -> DataSplits:
    """CIFAR-10: 32x32 RGB, 10 classes (torchvision's python batches under ``root``)."""
    return _cifar("cifar10", root, download, val_fraction=val_fraction, seed=seed, limit=limit)


@register_dataset("cifar100")
def cifar100(root: str | None = None, *, download: bool = False, val_fraction: float = 0.1,
             seed: int = 0, limit: int | None = None) -> DataSplits:
    """CIFAR-100: 32x32 RGB, 100 classes (torchvision's python batches under ``root``)."""
    return _cifar("cifar100", root, download, val_fraction=val_fraction, seed=seed, limit=limit)


@register_dataset("imagefolder", takes_path=True)
def imagefolder(root: str | None = None, *, download: bool = False, val_fraction: float = 0.1,
                seed: int = 0, limit: int | None = None, image_size: int = IMAGE_FOLDER_SIZE,
                workers: int | None = None) -> DataSplits:
    """Class-per-subfolder images at ``imagefolder:PATH`` (``train/``, ``val/``, ``test/``
    optional), read from disk by DataLoader workers; RGB crops of ``image_size`` (default 32;
    224 for ImageNet): random resized crops and flips in training, resize and center crop in
    evaluation. ``workers``: DataLoader processes (None: min(4, CPUs))."""
    return _imagefolder(f"imagefolder:{root}", root or "", image_size, workers,
                        val_fraction=val_fraction, seed=seed, limit=limit)
