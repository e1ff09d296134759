"""explorer.preflight and the read-only stores: a sweep that cannot work fails before anything
starts (no Ray, no MLflow database, no parent run) with exit code 2 and one ``error:`` line
naming the field; ``pareto``, ``export`` and ``dashboard`` never create a store."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from explorer.cli import main

BASE = """
name: pre
model: {model}
dataset: {dataset}
train: {{epochs: 1, batch_size: 64, seed: 0}}
objectives: {{accuracy: max, size_bytes: min}}
search: {{sampler: random, num_samples: 2, max_concurrent: 1, cpus_per_trial: {cpus},
          gpus_per_trial: {gpus}}}
params:
  lambda_rate: {{loguniform: [1.0e-3, 1.0]}}
{extra}
"""


def space(tmp_path: Path, model="lenet5", dataset="digits", cpus=1, gpus=0, extra="") -> str:
    path = tmp_path / "space.yaml"
    path.write_text(BASE.format(model=model, dataset=dataset, cpus=cpus, gpus=gpus, extra=extra))
    return str(path)


def sweep_fails(tmp_path, capsys, space_path, *, uri=None) -> str:
    """Run ``lilnetx sweep``; it must exit 2 within seconds with one ``error:`` line, having
    started nothing: no tracking database, no Ray results."""
    uri = uri or f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}"
    t0 = time.time()
    code = main(["sweep", space_path, "--tracking-uri", uri, "--json"])
    elapsed = time.time() - t0
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert len(lines[0]) < 600, lines[0]
    assert elapsed < 60, f"took {elapsed:.1f} s"
    assert not (tmp_path / "db" / "mlflow.db").exists(), "the database was created"
    assert not (tmp_path / ".lilnetx").exists(), "Ray Tune started"
    return lines[0]


@pytest.fixture(autouse=True)
def _cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_missing_data_root(tmp_path, capsys):
    path = space(tmp_path, dataset="fashion_mnist", extra=f"data_root: {tmp_path / 'nowhere'}")
    line = sweep_fails(tmp_path, capsys, path)
    assert line.startswith("error: data_root: ") and "nowhere" in line


def test_missing_image_folder(tmp_path, capsys):
    line = sweep_fails(tmp_path, capsys, space(tmp_path, dataset=f"imagefolder:{tmp_path}/no"))
    assert line.startswith("error: dataset: ") and "does not exist" in line


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    """What `make demo` prints on a machine without Debian's data set and without internet."""
    from lilnetx import sources as data

    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    monkeypatch.setattr(data, "CACHE_ROOT", str(tmp_path / "cache"))

    def no_download(*a, **k):
        raise data.DataError("download is not possible here")

    monkeypatch.setattr(data, "_idx_in_root", no_download)
    line = sweep_fails(tmp_path, capsys, space(tmp_path, dataset="fashion_mnist"))
    assert line.startswith("error: dataset: cannot find fashion_mnist")
    assert "apt-get install dataset-fashion-mnist" in line


def test_model_that_cannot_run_on_the_data(tmp_path, capsys):
    line = sweep_fails(tmp_path, capsys, space(tmp_path, model="tv:alexnet"))
    assert line.startswith("error: model: tv:alexnet cannot run on digits inputs (1x8x8")


def test_width_that_load_would_refuse(tmp_path, capsys):
    line = sweep_fails(tmp_path, capsys, space(tmp_path, model="resnet20",
                                               extra="  width: {choice: [1, 64]}"))
    assert line.startswith("error: params.width: resnet20 at width 64 cannot be stored")


def test_more_cpus_per_trial_than_the_machine_has(tmp_path, capsys):
    from explorer.preflight import local_resources

    cpus, _ = local_resources()
    line = sweep_fails(tmp_path, capsys, space(tmp_path, cpus=int(cpus) + 1))
    assert line.startswith("error: search.cpus_per_trial: ")


def test_more_gpus_per_trial_than_the_machine_has(tmp_path, capsys):
    from explorer.preflight import local_resources

    _, gpus = local_resources()
    line = sweep_fails(tmp_path, capsys, space(tmp_path, gpus=int(gpus) + 1))
    assert line.startswith("error: search.gpus_per_trial: ")


@pytest.mark.parametrize("val", ["0", "{uniform: [0.0, 0.2]}"])
def test_no_validation_split_with_an_accuracy_objective(tmp_path, capsys, val):
    line = sweep_fails(tmp_path, capsys, space(tmp_path, extra=f"  val_fraction: {val}"))
    assert line.startswith("error: params.val_fraction: ")


def test_tracking_database_folder_not_writable(tmp_path, capsys):
    (tmp_path / "afile").write_text("not a folder")
    line = sweep_fails(tmp_path, capsys, space(tmp_path),
                       uri=f"sqlite:///{tmp_path / 'afile' / 'mlflow.db'}")
    assert "not writable" in line and "afile" in line


def test_artifact_location_not_writable(tmp_path, capsys):
    """An existing experiment whose artifact location cannot be written: exit 2 before the
    parent run is created (no run left RUNNING)."""
    from mlflow.tracking import MlflowClient

    (tmp_path / "afile").write_text("not a folder")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(tracking_uri=uri)
    exp = c.create_experiment("pre", artifact_location=(tmp_path / "afile" / "a").as_uri())
    capsys.readouterr()  # MLflow's own log lines while the test created the database
    t0 = time.time()
    code = main(["sweep", space(tmp_path), "--tracking-uri", uri])
    err = capsys.readouterr().err
    assert code == 2 and time.time() - t0 < 60
    assert err.startswith("error: artifact location ") and "not writable" in err
    assert len(err.strip().splitlines()) == 1, err
    assert c.search_runs([exp]) == []


@pytest.mark.parametrize("command", [["pareto"], ["export", "0123abcd", "--name", "m"],
                                     ["dashboard", "--port", "8799"]])
def test_read_only_commands_never_create_a_store(tmp_path, capsys, command):
    missing = tmp_path / "typo" / "mlflow.db"
    code = main([*command, "--tracking-uri", f"sqlite:///{missing}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: no tracking database at ") and "typo" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "typo").exists()


def test_default_store_missing_is_named(tmp_path, capsys):
    assert main(["pareto"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "mlflow.db") in err
    assert not (tmp_path / "mlflow.db").exists()


def test_dataset_factory_is_checked_and_loaded(tmp_path, capsys, monkeypatch):
    """`dataset: {factory: ...}` names the user's code: a missing module is exit 2 naming the
    field; a working factory passes the checks (the model then runs on its data)."""
    line = sweep_fails(tmp_path, capsys, space(
        tmp_path, dataset="{factory: 'no_such_pkg.data:load'}"))
    assert line.startswith("error: dataset.factory: dataset factory 'no_such_pkg.data:load': "
                           "cannot import 'no_such_pkg.data'")
    (tmp_path / "userdata.py").write_text(
        "import numpy as np\n"
        "def load(n=200):\n"
        "    rng = np.random.default_rng(0)\n"
        "    y = rng.integers(0, 3, n)\n"
        "    x = rng.normal(size=(n, 1, 8, 8)) + y[:, None, None, None]\n"
        "    return x, y, x[:50], y[:50]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from explorer.preflight import check_data_and_model
    from explorer.space import load_space

    s = load_space(space(tmp_path, dataset="{factory: 'userdata:load', args: {n: 120}}"))
    assert check_data_and_model(s) == {"channels": 1, "height": 8, "width": 8, "num_classes": 3}


def test_factory_model_checked_on_its_meta_network(tmp_path, capsys, monkeypatch):
    """A factory model runs on a dummy batch on the meta device and must be traceable by
    torch.fx (its file records its graph): a forward with data-dependent control flow is
    refused before anything starts, naming the reason."""
    (tmp_path / "usernet.py").write_text(
        "from torch import nn\n"
        "class Branchy(nn.Module):\n"
        "    def __init__(self, c, k):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(c * 64, k)\n"
        "    def forward(self, x):\n"
        "        if x.sum() > 0:\n"
        "            x = -x\n"
        "        return self.fc(x.flatten(1))\n"
        "def plain(in_channels, image_size, num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, "
        "num_classes))\n"
        "def branchy(in_channels, num_classes):\n"
        "    return Branchy(in_channels, num_classes)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from explorer.preflight import check_data_and_model
    from explorer.space import load_space

    ok = load_space(space(tmp_path, model="{factory: 'usernet:plain'}"))
    assert check_data_and_model(ok)["num_classes"] == 10
    line = sweep_fails(tmp_path, capsys, space(tmp_path, model="{factory: 'usernet:branchy'}"))
    assert line.startswith("error: model: usernet:branchy cannot be traced with torch.fx")
