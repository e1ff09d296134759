"""Tests of lilnetx.data on real data and real file formats written to tmp_path (no mocks)."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset, TensorDataset
from torchvision import datasets

from lilnetx.data import (
    DataInfo,
    cifar_augment,
    create_dataset,
    dataset_names,
    iterate_batches,
    num_batches,
)
from lilnetx.errors import ConfigError, DataError
from lilnetx.sources import DEBIAN_FASHION_MNIST, IMAGE_FOLDER_SIZE


def _indices(ds: Subset) -> list[int]:
    return list(ds.indices)


def _pixels(x: torch.Tensor, info: DataInfo, scale: float = 255.0) -> np.ndarray:
    """Undo the normalization: (N, C, H, W) float -> raw pixel values (rounded)."""
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return ((x * std + mean) * scale).round().numpy()


# ----------------------------------------------------------------------------- digits


def test_digits_shapes_info_and_split_sizes():
    s = create_dataset("digits")
    assert s.info == DataInfo("digits", 1, 8, 8, 10, s.info.mean, s.info.std)
    assert s.augment is None
    assert len(s.train) + len(s.val) + len(s.test) == 1797
    assert len(s.test) == round(0.2 * 1797)
    assert len(s.val) == round(0.1 * (1797 - len(s.test)))
    x, y = s.train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    pool_x = s.train.dataset.tensors[0]  # normalized with the pool's own statistics
    assert abs(float(pool_x.mean())) < 1e-4 and abs(float(pool_x.std()) - 1) < 1e-3


def test_digits_test_split_fixed_val_depends_on_seed():
    a, b = create_dataset("digits", seed=0), create_dataset("digits", seed=1)
    assert torch.equal(a.test.tensors[0], b.test.tensors[0])
    assert torch.equal(a.test.tensors[1], b.test.tensors[1])
    assert _indices(a.val) != _indices(b.val)
    again = create_dataset("digits", seed=1)
    assert _indices(again.val) == _indices(b.val) and _indices(again.train) == _indices(b.train)
    assert sorted(_indices(a.train) + _indices(a.val)) == list(range(len(a.train.dataset)))


def test_digits_stratified():
    from sklearn.datasets import load_digits

    counts = np.bincount(load_digits().target, minlength=10)
    s = create_dataset("digits", val_fraction=0.2)
    test_counts = np.bincount(s.test.tensors[1].numpy(), minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * counts) <= 1)
    pool_counts = np.bincount(s.train.dataset.tensors[1].numpy(), minlength=10)
    val_counts = np.bincount(s.train.dataset.tensors[1][_indices(s.val)].numpy(), minlength=10)
    assert np.all(np.abs(val_counts - 0.2 * pool_counts) <= 1)


def test_limit_and_zero_val_fraction():
    s = create_dataset("digits", limit=100)
    assert len(s.train) == 100
    s = create_dataset("digits", val_fraction=0.0)
    assert len(s.val) == 0 and len(s.train) == 1797 - len(s.test)


# ----------------------------------------------------------------------------- idx files


def _write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    raw = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw += arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def _write_idx_set(folder: Path, gz: bool, n_train: int = 20, n_test: int = 7) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test, dtype=np.uint8) * 3) % 10,
    }
    for base, arr in arrays.items():
        _write_idx(folder / (base + (".gz" if gz else "")), arr, gz)
    return arrays


@pytest.mark.parametrize(("name", "sub", "gz"), [
    ("mnist", "", False), ("mnist", "MNIST/raw", True),
    ("fashion_mnist", "", True), ("fashion_mnist", "FashionMNIST/raw", False),
])
def test_idx_round_trip(tmp_path, name, sub, gz):
    arrays = _write_idx_set(tmp_path / sub, gz)
    s = create_dataset(name, data_root=str(tmp_path), val_fraction=0.1)
    assert (s.info.channels, s.info.height, s.info.width, s.info.num_classes) == (1, 28, 28, 10)
    assert s.info.name == name and s.augment is None
    x_test, y_test = s.test.tensors
    assert x_test.shape == (7, 1, 28, 28) and x_test.dtype == torch.float32
    np.testing.assert_array_equal(_pixels(x_test, s.info)[:, 0], arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(y_test.numpy(), arrays["t10k-labels-idx1-ubyte"])
    pool_x, pool_y = s.train.dataset.tensors
    np.testing.assert_array_equal(_pixels(pool_x, s.info)[:, 0],
                                  arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(pool_y.numpy(), arrays["train-labels-idx1-ubyte"])
    assert len(s.val) == 2 and sorted(_indices(s.train) + _indices(s.val)) == list(range(20))


def test_truncated_gzip_stream_raises(tmp_path):
    _write_idx_set(tmp_path, gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(DataError, match=re.escape(str(path))):
        create_dataset("mnist", data_root=str(tmp_path))


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_idx_raises(tmp_path, gz):
    _write_idx_set(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    raw = path.read_bytes()[:-100]
    if gz:
        path.unlink()
        (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    with pytest.raises(DataError, match="truncated"):
        create_dataset("mnist", data_root=str(tmp_path))


def test_malformed_idx_raises(tmp_path):
    _write_idx_set(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x08\x03\x00\x00garbage")
    with pytest.raises(DataError, match="not an idx file"):
        create_dataset("fashion_mnist", data_root=str(tmp_path))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(7, 12, np.uint8), gz=False)
    with pytest.raises(DataError, match=r"labels must be in 0\.\.9"):
        create_dataset("fashion_mnist", data_root=str(tmp_path))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(6, np.uint8), gz=False)
    with pytest.raises(DataError, match="shapes"):
        create_dataset("fashion_mnist", data_root=str(tmp_path))


def test_fashion_mnist_from_debian(fashion_mnist_root):
    s = create_dataset("fashion_mnist")
    assert s.info == DataInfo("fashion_mnist", 1, 28, 28, 10, (0.2860,), (0.3530,))
    assert len(s.train) + len(s.val) == 60000 and len(s.val) == 6000
    assert len(s.test) == 10000
    x, y = s.test.tensors
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert y[:5].tolist() == [9, 2, 1, 1, 6]  # the published first test labels
    assert torch.equal(torch.bincount(y), torch.full((10,), 1000))
    xb, yb = next(iterate_batches(s.train, 256, shuffle=True, generator=torch.Generator()))
    assert xb.shape == (256, 1, 28, 28) and yb.shape == (256,)


def test_explicit_root_is_not_bypassed(tmp_path):
    with pytest.raises(DataError, match="download is off") as e:
        create_dataset("fashion_mnist", data_root=str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in str(e.value)
    assert str(DEBIAN_FASHION_MNIST) not in str(e.value)


def test_fashion_mnist_falls_back_to_cache(tmp_path, monkeypatch):
    import lilnetx.sources as data

    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    monkeypatch.setattr(data, "CACHE_ROOT", str(tmp_path / "cache"))
    arrays = _write_idx_set(tmp_path / "cache" / "FashionMNIST" / "raw", gz=True)
    s = create_dataset("fashion_mnist")
    np.testing.assert_array_equal(s.test.tensors[1].numpy(), arrays["t10k-labels-idx1-ubyte"])


# ----------------------------------------------------------------------------- CIFAR


class _Py2Str(bytes):
    """Pickled as a Python 2 ``str`` (opcode SHORT_BINSTRING), as in the real CIFAR files: it
    loads as ``str`` with ``encoding="latin1"`` (torchvision) and as bytes with ``"bytes"``."""


class _Py2Pickler(pickle._Pickler):
    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2str(self, obj: _Py2Str) -> None:
        self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + bytes(obj))
        self.memoize(obj)

    dispatch[_Py2Str] = _save_py2str


def _dump_py2(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def _write_cifar(root: Path, cls, n: int, num_classes: int, rng) -> dict[str, np.ndarray]:
    """A tiny real-format cifar-10-batches-py / cifar-100-python folder; returns its arrays."""
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    label_key = _Py2Str(b"labels" if num_classes == 10 else b"fine_labels")
    written = {}
    for fname, _ in cls.train_list + cls.test_list:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, num_classes, n)]
        batch = {_Py2Str(b"batch_label"): _Py2Str(fname.encode()), _Py2Str(b"data"): data,
                 label_key: labels,
                 _Py2Str(b"filenames"): [_Py2Str(b"img_%d.png" % i) for i in range(n)]}
        if num_classes == 100:
            batch[_Py2Str(b"coarse_labels")] = [v // 5 for v in labels]
        _dump_py2(folder / fname, batch)
        written[fname] = (data, labels)
    names = [_Py2Str(b"class%d" % i) for i in range(num_classes)]
    _dump_py2(folder / cls.meta["filename"], {_Py2Str(cls.meta["key"].encode()): names})
    return written


def _accept_md5(monkeypatch, cls, folder: Path) -> None:
    """Point torchvision's checksum lists at the tiny files (its integrity check still runs)."""
    def md5(name: str) -> str:
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    monkeypatch.setattr(cls, "train_list", [[f, md5(f)] for f, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[f, md5(f)] for f, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(cls.meta["filename"])})


@pytest.mark.parametrize(("name", "cls", "num_classes"), [
    ("cifar10", datasets.CIFAR10, 10), ("cifar100", datasets.CIFAR100, 100),
])
def test_cifar_real_format(tmp_path, monkeypatch, name, cls, num_classes):
    written = _write_cifar(tmp_path, cls, 6, num_classes, np.random.default_rng(0))
    folder = tmp_path / cls.base_folder
    with open(folder / cls.test_list[0][0], "rb") as f:  # the layout the CIFAR site documents
        assert {b"data", b"batch_label"} <= set(pickle.load(f, encoding="bytes"))
    with pytest.raises(DataError, match="download is off"):  # real checksums reject tiny files
        create_dataset(name, data_root=str(tmp_path))
    _accept_md5(monkeypatch, cls, folder)
    s = create_dataset(name, data_root=str(tmp_path), val_fraction=0.2, seed=4)
    assert s.info.name == name and s.augment == "cifar"
    assert (s.info.channels, s.info.height, s.info.width, s.info.num_classes) == \
        (3, 32, 32, num_classes)
    train_data = np.concatenate([written[f][0] for f, _ in cls.train_list])
    train_labels = sum((written[f][1] for f, _ in cls.train_list), [])
    test_data, test_labels = written[cls.test_list[0][0]]
    pool_x, pool_y = s.train.dataset.tensors
    np.testing.assert_array_equal(_pixels(pool_x, s.info).reshape(len(pool_x), -1), train_data)
    assert pool_y.tolist() == train_labels
    np.testing.assert_array_equal(_pixels(s.test.tensors[0], s.info).reshape(6, -1), test_data)
    assert s.test.tensors[1].tolist() == test_labels
    assert len(s.val) == round(0.2 * len(train_labels))
    assert len(s.train) + len(s.val) == len(train_labels)


def test_cifar_missing_root(tmp_path):
    with pytest.raises(DataError, match="download is off") as e:
        create_dataset("cifar10", data_root=str(tmp_path))
    assert str(tmp_path / "cifar-10-batches-py") in str(e.value)


# ----------------------------------------------------------------------------- ImageFolder


def _write_pngs(folder: Path, classes: dict[str, int], rng) -> None:
    for c, n in classes.items():
        (folder / c).mkdir(parents=True)
        for i in range(n):
            px = rng.integers(0, 256, (10 + i, 12, 3), dtype=np.uint8)
            img = Image.fromarray(px)
            (img.convert("L") if i == 0 else img).save(folder / c / f"{i}.png")


def test_imagefolder_single_folder(tmp_path):
    _write_pngs(tmp_path, {"cat": 5, "dog": 5, "emu": 5}, np.random.default_rng(0))
    s = create_dataset(f"imagefolder:{tmp_path}", val_fraction=0.25)
    size = IMAGE_FOLDER_SIZE
    assert s.info == DataInfo(f"imagefolder:{tmp_path}", 3, size, size, 3, s.info.mean,
                              s.info.std)
    assert len(s.test) == 3 and len(s.val) == 3 and len(s.train) == 9
    again = create_dataset(f"imagefolder:{tmp_path}", val_fraction=0.25, seed=9)
    assert _indices(again.test) == _indices(s.test)
    batches = list(iterate_batches(s.train, 4, shuffle=True, generator=torch.Generator()))
    assert [tuple(x.shape) for x, _ in batches] == [(4, 3, size, size)] * 2 + [(1, 3, size, size)]
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_imagefolder_class_named_test_without_train(tmp_path):
    _write_pngs(tmp_path, {"test": 5, "val": 5}, np.random.default_rng(2))
    s = create_dataset(f"imagefolder:{tmp_path}")
    assert s.info.num_classes == 2 and len(s.test) == 2


def test_imagefolder_split_folders(tmp_path):
    rng = np.random.default_rng(1)
    _write_pngs(tmp_path / "train", {"a": 6, "b": 4}, rng)
    _write_pngs(tmp_path / "test", {"a": 2, "b": 2}, rng)
    s = create_dataset(f"imagefolder:{tmp_path}", val_fraction=0.2, limit=5)
    assert len(s.test) == 4 and len(s.val) == 2 and len(s.train) == 5
    assert s.info.num_classes == 2
    _write_pngs(tmp_path / "val", {"a": 1, "c": 1}, rng)
    with pytest.raises(DataError, match="classes"):
        create_dataset(f"imagefolder:{tmp_path}")


def test_imagefolder_missing_or_empty(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        create_dataset(f"imagefolder:{tmp_path / 'nope'}")
    with pytest.raises(DataError, match=re.escape(str(tmp_path))):
        create_dataset(f"imagefolder:{tmp_path}")
    with pytest.raises(ConfigError, match="path"):
        create_dataset("imagefolder:")


# ----------------------------------------------------------------------------- user errors


def test_unknown_name():
    with pytest.raises(ConfigError, match="'foo'") as e:
        create_dataset("foo")
    assert isinstance(e.value, ValueError)
    assert "digits, fashion_mnist, mnist, cifar10, cifar100, imagefolder:PATH" in str(e.value)
    assert dataset_names()[:5] == ["digits", "fashion_mnist", "mnist", "cifar10", "cifar100"]


@pytest.mark.parametrize("bad", [0.5, -0.1, 1.0, float("nan"), "0.1", True])
def test_bad_val_fraction(bad):
    with pytest.raises(ConfigError, match="val_fraction") as e:
        create_dataset("digits", val_fraction=bad)
    assert repr(bad) in str(e.value)


def test_bad_limit_and_missing_mnist(tmp_path):
    with pytest.raises(ConfigError, match="limit"):
        create_dataset("digits", limit=0)
    with pytest.raises(ConfigError, match="seed.*-1"):
        create_dataset("digits", seed=-1)
    with pytest.raises(DataError, match="download is off") as e:
        create_dataset("mnist", data_root=str(tmp_path / "missing"))
    assert str(tmp_path / "missing") in str(e.value)


# ----------------------------------------------------------------------------- batches


def _toy(n: int = 10) -> TensorDataset:
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 4, 4).contiguous()
    return TensorDataset(x, torch.arange(n))


def test_batches_count_and_last_partial():
    ds = _toy()
    batches = list(iterate_batches(ds, 4, shuffle=False))
    assert num_batches(ds, 4) == len(batches) == 3
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert torch.cat([y for _, y in batches]).tolist() == list(range(10))
    assert batches[0][0].shape == (4, 3, 4, 4)
    assert num_batches(ds, 10) == 1 and num_batches(ds, 11) == 1


def test_batches_reproducible_shuffle():
    def order(ds, seed):
        it = iterate_batches(ds, 3, shuffle=True, generator=torch.Generator().manual_seed(seed))
        return torch.cat([y for _, y in it]).tolist()

    ds = _toy(20)
    assert order(ds, 1) == order(ds, 1)
    assert order(ds, 1) != order(ds, 2)
    assert sorted(order(ds, 1)) == list(range(20))
    sub = Subset(Subset(ds, list(range(10, 20))), [0, 2, 4, 6])
    assert sorted(order(sub, 5)) == [10, 12, 14, 16]
    assert [int(y) for _, ys in iterate_batches(sub, 3, shuffle=False) for y in ys] == \
        [10, 12, 14, 16]


def test_augment_keeps_shapes_and_is_a_padded_crop_or_flip():
    x = torch.randn(16, 3, 32, 32)
    out = cifar_augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, cifar_augment(x, torch.Generator().manual_seed(0)))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(16):
        crops = [padded[i, :, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(-1)) for c in crops)
    batches = list(iterate_batches(_toy(), 4, shuffle=True, generator=torch.Generator(),
                                   augment="cifar"))
    assert [tuple(b.shape) for b, _ in batches] == [(4, 3, 4, 4)] * 2 + [(2, 3, 4, 4)]


def test_batches_on_cuda():
    """On a CUDA machine batches land on the GPU; without one, asking for CUDA is a clear
    ConfigError (never a silent CPU run), so the test proves something on either machine."""
    from lilnetx.train import pick_device

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees 0 CUDA devices"):
            pick_device("cuda")
        assert pick_device(None).type == "cpu"
        return
    batches = list(iterate_batches(_toy(), 4, shuffle=True, generator=torch.Generator(),
                                   device=pick_device("cuda"), augment="cifar"))
    assert all(x.is_cuda and y.is_cuda for x, y in batches)


def test_batch_argument_errors():
    with pytest.raises(ConfigError, match="'mixup'"):
        iterate_batches(_toy(), 4, shuffle=False, augment="mixup")
    with pytest.raises(ConfigError, match="batch_size"):
        iterate_batches(_toy(), 0, shuffle=False)
