"""imagefolder:PATH read from disk: configurable image size, train/eval transforms, DataLoader
workers (seeded, torn down), nothing preloaded; in-memory data sets keep the tensor fast path.

The images are real PNG files written to tmp_path with PIL: 3 classes (ellipse, rectangle,
triangle) x 100 images of 40x40 random-color shapes."""

from __future__ import annotations

import math
import multiprocessing
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageDraw
from torch.utils.data import Subset

import lilnetx
from lilnetx.batches import Batches
from lilnetx.data import ImageFiles, create_dataset, image_transforms, iterate_batches
from lilnetx.errors import ConfigError
from lilnetx.sources import IMAGE_FOLDER_SIZE

SIZE = 24  #: the configured image size of these tests (the files are 40x40)
SHAPES = ("ellipse", "rectangle", "triangle")
ROOT = Path(__file__).resolve().parents[1]


def _write_shapes(folder: Path, per_class: int, rng: np.random.Generator) -> None:
    for shape in SHAPES:
        (folder / shape).mkdir(parents=True)
        for i in range(per_class):
            img = Image.new("RGB", (40, 40), tuple(int(c) for c in rng.integers(0, 256, 3)))
            draw = ImageDraw.Draw(img)
            x0, y0 = (int(v) for v in rng.integers(0, 16, 2))
            x1, y1 = (int(v) for v in rng.integers(24, 40, 2))
            fill = tuple(int(c) for c in rng.integers(0, 256, 3))
            if shape == "ellipse":
                draw.ellipse((x0, y0, x1, y1), fill=fill)
            elif shape == "rectangle":
                draw.rectangle((x0, y0, x1, y1), fill=fill)
            else:
                draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=fill)
            img.save(folder / shape / f"{i:03d}.png")


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory) -> Path:
    """A flat class-per-subfolder tree: 3 x 100 PNGs."""
    root = tmp_path_factory.mktemp("shapes")
    _write_shapes(root, 100, np.random.default_rng(0))
    return root


@pytest.fixture(scope="module")
def split_root(tmp_path_factory) -> Path:
    """train/ and val/ subfolders (ImageNet's layout)."""
    root = tmp_path_factory.mktemp("shapes_split")
    rng = np.random.default_rng(1)
    _write_shapes(root / "train", 20, rng)
    _write_shapes(root / "val", 5, rng)
    return root


def _base(ds) -> ImageFiles:
    while isinstance(ds, Subset):
        ds = ds.dataset
    return ds


def _workers() -> list:
    return [p for p in multiprocessing.active_children() if p.is_alive()]


def test_image_size_option_and_info(shapes_root):
    s = create_dataset(f"imagefolder:{shapes_root}", image_size=SIZE, workers=2)
    assert (s.info.channels, s.info.height, s.info.width, s.info.num_classes) == (3, SIZE, SIZE, 3)
    assert s.workers == 2 and s.augment is None
    assert len(s.test) == 60 and len(s.val) == 24 and len(s.train) == 216
    for split in (s.train, s.val, s.test):
        x, y = split[0]
        assert x.shape == (3, SIZE, SIZE) and x.dtype == torch.float32 and isinstance(y, int)
    default = create_dataset(f"imagefolder:{shapes_root}")  # the name form, unchanged default
    assert default.info.height == default.info.width == IMAGE_FOLDER_SIZE == 32
    assert default.workers is None
    assert default.train[0][0].shape == (3, 32, 32)


def test_nothing_is_preloaded(shapes_root):
    s = create_dataset(f"imagefolder:{shapes_root}", image_size=SIZE)
    files = _base(s.train)
    assert isinstance(files, ImageFiles) and len(files) == 300
    assert files.paths.dtype.kind == "S" and files.targets.dtype == np.int64
    assert not any(isinstance(v, torch.Tensor) for v in vars(files).values())
    pixels = 300 * 3 * SIZE * SIZE * 4
    for split in (s.train, s.val, s.test):  # the file list and indices only
        assert len(pickle.dumps(split)) < pixels / 20


def test_val_and_test_use_the_eval_view_of_the_same_files(shapes_root):
    s = create_dataset(f"imagefolder:{shapes_root}", image_size=SIZE, val_fraction=0.2)
    train, val, test = (_base(d) for d in (s.train, s.val, s.test))
    assert train.paths is val.paths is test.paths  # one file list, two transforms
    steps = [type(t).__name__ for t in train.transform.transforms]
    assert steps == ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    for ds in (val, test):
        steps = [type(t).__name__ for t in ds.transform.transforms]
        assert steps == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
        assert ds.transform.transforms[0].size == int(SIZE * 256 / 224)
    seen = [set(_indices_into_files(d)) for d in (s.train, s.val, s.test)]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert sum(map(len, seen)) == 300


def _indices_into_files(ds) -> list[int]:
    index = None
    while isinstance(ds, Subset):
        idx = list(ds.indices)
        index = idx if index is None else [idx[i] for i in index]
        ds = ds.dataset
    return index


def test_split_folders_val_is_evaluated(split_root):
    s = create_dataset(f"imagefolder:{split_root}", image_size=SIZE)
    assert isinstance(s.val, ImageFiles) and len(s.val) == 15
    assert type(s.val.transform.transforms[1]).__name__ == "CenterCrop"
    assert torch.equal(s.val[3][0], s.val[3][0])
    assert len(s.test) == 12 and len(s.train) == 48  # test carved from train/ (20 %)


def test_train_crops_random_eval_deterministic_and_seeded(shapes_root):
    s = create_dataset(f"imagefolder:{shapes_root}", image_size=SIZE, workers=2)

    def first(ds, gen=None, shuffle=False):
        return next(iterate_batches(ds, 32, shuffle=shuffle, generator=gen, workers=2))

    assert not torch.equal(first(s.train)[0], first(s.train)[0])  # new crops each pass
    assert torch.equal(first(s.val)[0], first(s.val)[0])
    assert torch.equal(first(s.test)[0], first(s.test)[0])
    with Batches(s.train, 32, shuffle=False, workers=2, persistent=True) as epochs:
        a, b = (next(iter(epochs))[0] for _ in range(2))  # same images, two epochs
    assert a.shape == (32, 3, SIZE, SIZE) and not torch.equal(a, b)
    # Seeded: the order and the workers' crops come from the generator.
    xa, ya = first(s.train, torch.Generator().manual_seed(5), shuffle=True)
    xb, yb = first(s.train, torch.Generator().manual_seed(5), shuffle=True)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    xc, _ = first(s.train, torch.Generator().manual_seed(6), shuffle=True)
    assert not torch.equal(xa, xc)
    assert not _workers()


def test_fit_reads_through_dataloader_workers(shapes_root, monkeypatch):
    made = []

    class Recording(torch.utils.data.DataLoader):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(torch.utils.data, "DataLoader", Recording)
    s = create_dataset(f"imagefolder:{shapes_root}", image_size=SIZE, workers=2)
    net = lilnetx.create_model("lenet5", in_channels=3, image_size=SIZE, num_classes=3)
    shapes = []
    net.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape)))
    steps = []
    result = lilnetx.fit(net, s, lilnetx.TrainConfig(epochs=1, batch_size=32, device="cpu",
                                                     lr=1e-3),
                         lambda e: steps.append(e) if e["event"] == "step" else None)
    assert len(steps) == math.ceil(216 / 32) == 7
    assert shapes[:7] == [(32, 3, SIZE, SIZE)] * 6 + [(216 - 6 * 32, 3, SIZE, SIZE)]
    assert shapes[7:] == [(24, 3, SIZE, SIZE)]  # validation, one batch of 512 at most
    assert 0.0 <= result.history[0]["val_accuracy"] <= 1.0
    assert [(d.num_workers, d.persistent_workers) for d in made] == [(2, True), (2, True)]
    assert all(d._iterator is None for d in made)  # fit shut its workers down
    assert not _workers()
    acc = lilnetx.evaluate_accuracy(net, s.test, device="cpu", workers=2)
    assert 0.0 <= acc <= 1.0 and len(made) == 3 and made[2].num_workers == 2
    assert not _workers()


def test_interrupted_fit_leaves_no_worker(shapes_root):
    s = create_dataset(f"imagefolder:{shapes_root}", image_size=SIZE, workers=2)
    net = lilnetx.create_model("mlp", in_channels=3, image_size=SIZE, num_classes=3)

    def stop(event):
        if event["event"] == "step" and event["step"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        lilnetx.fit(net, s, lilnetx.TrainConfig(epochs=2, batch_size=32, device="cpu"), stop)
    assert not _workers()
    it = iterate_batches(s.train, 32, shuffle=True, workers=2)
    next(it)
    assert _workers()
    it.close()  # an abandoned pass ends its workers at once
    assert not _workers()


def test_tensor_data_sets_keep_the_fast_path(monkeypatch):
    def no_loader(*args, **kwargs):
        raise AssertionError("a DataLoader was created for an in-memory data set")

    monkeypatch.setattr(torch.utils.data, "DataLoader", no_loader)
    s = create_dataset("digits", workers=2, limit=256)
    assert Batches(s.train, 64, shuffle=True).in_memory
    net = lilnetx.create_model("mlp", in_channels=1, image_size=8, num_classes=10)
    lilnetx.fit(net, s, lilnetx.TrainConfig(epochs=1, batch_size=64, device="cpu"))
    assert 0.0 <= lilnetx.evaluate_accuracy(net, s.test, device="cpu") <= 1.0


def test_options_are_checked(shapes_root):
    with pytest.raises(ConfigError, match="'digits' takes no option 'image_size'; its options: "
                                          "none"):
        create_dataset("digits", image_size=24)
    with pytest.raises(ConfigError, match="its options: image_size, workers"):
        create_dataset(f"imagefolder:{shapes_root}", size=24)
    for bad in (0, -3, 2.5, True, 10**6):
        with pytest.raises(ConfigError, match="image_size"):
            create_dataset(f"imagefolder:{shapes_root}", image_size=bad)
    for bad in (-1, 1.5, "2", True):
        with pytest.raises(ConfigError, match="workers"):
            create_dataset("digits", workers=bad)
    with pytest.raises(ConfigError, match="workers"):
        iterate_batches(create_dataset("digits").train, 4, shuffle=False, workers=-1)


def test_factory_form_matches_the_name_form(shapes_root):
    """What the ImageNet search space uses: the registered loader named as a factory."""
    spec = {"factory": "lilnetx.sources:imagefolder",
            "args": {"root": str(shapes_root), "image_size": SIZE, "workers": 2}}
    a = create_dataset(spec, val_fraction=0.2, seed=3, limit=100)
    b = create_dataset(f"imagefolder:{shapes_root}", val_fraction=0.2, seed=3, limit=100,
                       image_size=SIZE)
    assert a.info == b.info and a.workers == 2 and len(a.train) == 100
    for x, y in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        assert _indices_into_files(x) == _indices_into_files(y)
    space = yaml.safe_load((ROOT / "search_spaces" / "imagenet_resnet50.yaml").read_text())
    assert space["dataset"]["factory"] == spec["factory"]
    assert space["dataset"]["args"]["image_size"] == 224


def test_image_transforms_for_a_plugin(shapes_root):
    train, evaluate = image_transforms(16)
    files = ImageFiles(sorted(shapes_root.glob("*/*.png"))[:8], [0] * 8, train)
    assert files[0][0].shape == (3, 16, 16)
    assert torch.equal(files.with_transform(evaluate)[0][0], files.with_transform(evaluate)[0][0])


def test_seeded_fit_on_files_is_reproducible(shapes_root):
    s = create_dataset(f"imagefolder:{shapes_root}", image_size=SIZE, workers=2, limit=96)

    def train(seed: int) -> list[dict]:
        torch.manual_seed(0)
        net = lilnetx.create_model("mlp", in_channels=3, image_size=SIZE, num_classes=3)
        cfg = lilnetx.TrainConfig(epochs=2, batch_size=32, device="cpu", seed=seed)
        rows = lilnetx.fit(net, s, cfg).history
        return [{k: v for k, v in r.items() if k != "elapsed_seconds"} for r in rows]

    first = train(0)
    assert train(0) == first
    assert train(1) != first


def test_cli_train_and_evaluate_take_image_size_and_workers(shapes_root, tmp_path):
    """`lilnetx train/evaluate --image-size --workers` reach the imagefolder loader: the file's
    architecture records the chosen size, evaluate reads the folder at that size, and another
    size does not fit the model."""
    from explorer import cli

    out = tmp_path / "m.lnx"
    args = ["--dataset", f"imagefolder:{shapes_root}", "--workers", "0"]
    assert cli.main(["train", "--model", "mlp", "--epochs", "1", "--batch-size", "64", *args,
                     "--image-size", "20", "--out", str(out), "--no-latency", "--json"]) == 0
    arch = lilnetx.fileformat.read(out).arch
    assert arch["image_size"] == 20 and arch["in_channels"] == 3
    assert cli.main(["evaluate", str(out), *args, "--image-size", "20", "--json"]) == 0
    with pytest.raises(lilnetx.ConfigError, match="does not fit"):
        cli.cmd_evaluate(cli.build_parser(["evaluate"]).parse_args(
            ["evaluate", str(out), *args, "--image-size", "24"]))
