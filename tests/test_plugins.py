"""Plugins: a third-party package, written here and installed with pip into a temporary folder,
adds a model, a dataset, a method and a metric through the ``lilnetx.*`` entry-point groups.
Without any change to our code they appear in ``lilnetx models|datasets|methods``, in the YAML
schema, in a real sweep (Ray, Optuna, MLflow) with their own front, and in ``pareto --json``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

PLUGIN = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "lnx-toyplugin"
        version = "0.1.0"

        [project.entry-points."lilnetx.models"]
        toynet = "lnx_toyplugin:toynet"

        [project.entry-points."lilnetx.datasets"]
        blobs = "lnx_toyplugin:blobs"

        [project.entry-points."lilnetx.methods"]
        oneshot = "lnx_toyplugin:OneShot"

        [project.entry-points."lilnetx.metrics"]
        pruned = "lnx_toyplugin:PRUNED"

        [tool.setuptools]
        py-modules = ["lnx_toyplugin"]
    """,
    "lnx_toyplugin.py": '''
        """A toy plugin: a model, a data set, a method and a metric."""
        import numpy as np
        import torch
        from torch import nn

        import lilnetx
        from lilnetx.methods import Method, Param


        def toynet(in_channels, image_size, num_classes, width):
            """A 2-layer CNN."""
            c = max(1, int(8 * width))
            return nn.Sequential(nn.Conv2d(in_channels, c, 3, padding=1), nn.ReLU(),
                                 nn.Flatten(), nn.Linear(c * image_size * image_size,
                                                         num_classes))


        def blobs(root=None, *, download=False, **split):
            """Four classes of noisy 8x8 blobs (synthetic, seeded)."""
            rng = np.random.default_rng(0)
            centers = rng.normal(size=(4, 1, 8, 8))
            y = rng.integers(0, 4, size=600)
            x = centers[y] + 0.8 * rng.normal(size=(600, 1, 8, 8))
            yt = rng.integers(0, 4, size=200)
            xt = centers[yt] + 0.8 * rng.normal(size=(200, 1, 8, 8))
            stats = ((float(x.mean()),), (float(x.std()),))
            return lilnetx.splits_from_arrays("blobs", x.astype("float32"), y, xt.astype(
                "float32"), yt, 4, 1.0, None, stats, **split)


        PRUNED = lilnetx.metrics.Metric("pruned", "max", "fraction", "weights pruned")


        class OneShot(Method):
            """One-shot global magnitude pruning after dense training, stored float32."""
            name = "oneshot"
            summary = "dense training, then one-shot global magnitude pruning"
            params = (Param("sparsity", float, 0.5, "fraction pruned", low=0.0, high=0.99),)
            default_lr = 1e-2

            def train(self, model, splits, cfg, progress, *, init=None):
                from lilnetx.methods.pruning import global_sparsity, prune_global
                from lilnetx.train import fit

                result = fit(model, splits, cfg, progress)
                prune_global(model, self.options["sparsity"])
                self.pruned = global_sparsity(model)
                return result

            def metrics(self, model):
                return {"pruned": self.pruned}

            def encode(self, model, arch):
                from lilnetx.fileformat import encode_plain

                return encode_plain(model, arch)
    ''',
}

SPACE = """
name: plugged
model: toynet
dataset: blobs
train: {epochs: 1, batch_size: 64, seed: 0}
objectives: {accuracy: max, size_bytes: min}
search: {sampler: random, num_samples: 2, max_concurrent: 1, seed: 0}
methods:
  oneshot:
    params: {sparsity: {uniform: [0.2, 0.9]}}
"""


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory, subprocess_env):
    """The plugin package installed with pip (entry points and all) into a private folder,
    and an environment whose PYTHONPATH reaches it."""
    root = tmp_path_factory.mktemp("plugin")
    src, target = root / "src", root / "site"
    src.mkdir()
    for name, text in PLUGIN.items():
        (src / name).write_text(textwrap.dedent(text).lstrip())
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                           "--no-build-isolation", "--disable-pip-version-check",
                           "--target", str(target), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(target.glob("lnx_toyplugin-0.1.0.dist-info/entry_points.txt"))
    env = {**subprocess_env, "PYTHONPATH": os.pathsep.join(
        [str(target), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "MLFLOW_DISABLE_TELEMETRY": "true"}
    for k in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(k, None)
    return env


def lilnetx_cli(env, cwd, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "explorer.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_listings_show_the_plugin(plugin_env, tmp_path):
    for what, name in (("models", "toynet"), ("datasets", "blobs"), ("methods", "oneshot")):
        out = lilnetx_cli(plugin_env, tmp_path, what, "--json")
        assert out.returncode == 0, out.stderr[-2000:]
        rows = {r["name"]: r for r in json.loads(out.stdout)[what]}
        assert name in rows and rows[name]["source"] == "lnx_toyplugin", rows.keys()
    method = rows["oneshot"]
    assert method["params"][0]["name"] == "sparsity" and method["params"][0]["default"] == 0.5


def test_plugin_method_flag_and_validation(plugin_env, tmp_path):
    """The method's parameter becomes a `train` flag, with its range checked."""
    out = lilnetx_cli(plugin_env, tmp_path, "train", "--model", "toynet", "--dataset", "blobs",
                      "--method", "oneshot", "--sparsity", "1.5", "--epochs", "1")
    assert out.returncode == 2
    assert out.stderr.strip() == ("error: argument --sparsity: sparsity must be in [0, 0.99], "
                                  "but got 1.5 (see `lilnetx train --help`)")


@pytest.mark.slow
@pytest.mark.sweep
def test_plugin_sweep_has_its_own_front(plugin_env, tmp_path):
    space = tmp_path / "plugged.yaml"
    space.write_text(SPACE)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = lilnetx_cli(plugin_env, tmp_path, "sweep", str(space), "--tracking-uri", uri, "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout)
    assert res["finished"] == 2 and set(res["fronts"]) == {"oneshot"}
    par = lilnetx_cli(plugin_env, tmp_path, "pareto", "--tracking-uri", uri, "--json")
    assert par.returncode == 0, par.stderr[-2000:]
    doc = json.loads(par.stdout)
    assert set(doc["methods"]) == {"oneshot"} and doc["methods"]["oneshot"]["front"]
    row = doc["methods"]["oneshot"]["front"][0]
    assert row["method"] == "oneshot" and 0.2 <= float(row["params"]["sparsity"]) <= 0.9
    assert 0 < row["metrics"]["pruned"] < 1 and row["metrics"]["size_bytes"] > 0
    # the plugin's metric is an axis of the dashboard, with its unit
    code = ("from dashboards.data import axis_metrics, direction\n"
            "from dashboards.figures import label\n"
            "from lilnetx.metrics import metric\n"
            "print(('pruned' in axis_metrics()), direction('pruned'), label('pruned'),"
            " metric('pruned').format(0.25))")
    show = subprocess.run([sys.executable, "-c", code], env=plugin_env, capture_output=True,
                          text=True, timeout=120)
    assert show.stdout.split() == ["True", "max", "weights", "pruned", "25.0%"], show.stderr
