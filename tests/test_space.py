"""Tests of explorer.space (search-space YAML validation) and of `lilnetx sweep` on bad input.

Every bad input is a small YAML file written to tmp_path; the error must be a
``lilnetx.ConfigError`` whose message names the field path and what is allowed.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from _require import require

import lilnetx
from explorer.cli import main
from explorer.space import SearchSpace, load_space, objective_names, param_keys, sampler_names

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "search_spaces").glob("*.yaml"))

BASE: dict[str, Any] = {
    "name": "case",
    "model": "lenet5",
    "dataset": "fashion_mnist",
    "method": "lilnetx",
    "train": {"epochs": 2, "batch_size": 128, "seed": 0},
    "objectives": {"accuracy": "max", "size_bytes": "min"},
    "search": {"sampler": "tpe", "num_samples": 4, "max_concurrent": 2, "seed": 0},
    "params": {
        "lambda_rate": {"loguniform": [1.0e-4, 10.0]},
        "lambda_sparsity": {"loguniform": [1.0e-6, 1.0e-2]},
        "lr": {"choice": [0.01, 0.02]},
        "lambda_l2": 1.0e-6,
    },
}


def doc_with(**changes: Any) -> dict:
    """BASE with dotted keys set (``doc_with(**{"search.sampler": "x"})``)."""
    doc = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        d = doc
        for p in parents:
            d = d[p]
        d[last] = value
    return doc


def doc_without(key: str) -> dict:
    doc = copy.deepcopy(BASE)
    del doc[key]
    return doc


def dump(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False)


def write(tmp_path: Path, content: Any, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else dump(content), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- shipped spaces


def test_shipped_spaces_exist():
    assert SHIPPED, "search_spaces/*.yaml is empty"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_space_validates(path: Path):
    space = load_space(path)
    assert isinstance(space, SearchSpace)
    assert space.source == path.read_text(encoding="utf-8")
    assert 2 <= len(space.objectives) <= 3
    assert set(space.objectives) <= set(objective_names())
    assert set(space.objectives.values()) <= {"max", "min"}
    assert space.sampler in sampler_names()
    assert set(space.params) <= set(param_keys())
    assert space.searched(), "a shipped space should search at least one parameter"
    assert space.num_samples >= 1 and space.max_concurrent >= 1


def test_base_document_is_valid(tmp_path: Path):
    """The bad cases below are BASE plus one mistake, so BASE itself must be valid."""
    space = load_space(write(tmp_path, BASE))
    assert space.name == "case" and space.model == "lenet5" and space.sampler == "tpe"
    assert space.objectives == {"accuracy": "max", "size_bytes": "min"}
    assert set(space.searched()) == {"lambda_rate", "lambda_sparsity", "lr"}
    assert space.fixed() == {"epochs": 2, "batch_size": 128, "seed": 0, "lambda_l2": 1.0e-6}
    assert space.num_samples == 4 and space.max_concurrent == 2 and space.seed == 0


def test_grid_sampler_with_choices_is_valid(tmp_path: Path):
    doc = doc_with(**{"search.sampler": "grid",
                      "params.lambda_rate": {"choice": [1e-4, 1e-2]},
                      "params.lambda_sparsity": {"choice": [1e-6]}})
    assert load_space(write(tmp_path, doc)).sampler == "grid"


# --------------------------------------------------------------------------- bad inputs


@dataclass
class Bad:
    """A bad search space: ``content`` (a document or raw YAML text), the message prefix (the
    field path, a colon) and fragments (what is allowed; str or compiled regex) it must hold."""

    content: Any
    prefix: str
    fragments: tuple = ()
    marks: tuple = field(default=())


BAD: dict[str, Bad] = {
    # structure
    "unknown-top-level-key": Bad(
        doc_with(optimizer="adam"), "(top level):",
        ("'optimizer'", "allowed keys", "model", "dataset", "objectives", "params", "search")),
    "missing-model": Bad(doc_without("model"), "(top level):", ("'model'", "required")),
    "missing-dataset": Bad(doc_without("dataset"), "(top level):", ("'dataset'", "required")),
    "missing-params": Bad(doc_without("params"), "(top level):", ("'params'", "required")),
    "missing-objectives": Bad(doc_without("objectives"), "(top level):",
                              ("'objectives'", "required")),
    "top-level-list": Bad("- model: lenet5\n- dataset: mnist\n", "{path}:",
                          ("top level must be a mapping", "list")),
    "top-level-scalar": Bad("lenet5\n", "{path}:", ("top level must be a mapping", "str")),
    "empty-file": Bad("", "{path}:", ("top level must be a mapping",)),
    "name-with-slash": Bad(doc_with(name="a/b"), "name:", ("'a/b'", "A-Za-z0-9")),
    "empty-params": Bad(doc_with(params={}), "params:", ("non-empty",)),
    "objectives-as-list": Bad(doc_with(objectives=["accuracy", "size_bytes"]), "objectives:",
                              ("not of type 'object'",)),
    # wrong types and ranges
    "train-epochs-string": Bad(doc_with(**{"train.epochs": "three"}), "train.epochs:",
                               ("'three'", "number")),
    "params-epochs-string": Bad(doc_with(**{"params.epochs": "three"}), "params.epochs:",
                                ("'three'", "number", "uniform", "choice")),
    "num-samples-zero": Bad(doc_with(**{"search.num_samples": 0}), "search.num_samples:",
                            ("0", "minimum of 1")),
    "num-samples-float": Bad(doc_with(**{"search.num_samples": 2.5}), "search.num_samples:",
                             ("2.5", "integer")),
    "max-concurrent-zero": Bad(doc_with(**{"search.max_concurrent": 0}),
                               "search.max_concurrent:", ("minimum of 1",)),
    "cpus-per-trial-zero": Bad(doc_with(**{"search.cpus_per_trial": 0}),
                               "search.cpus_per_trial:", ("minimum of 0",)),
    "fixed-epochs-not-integer": Bad(doc_with(**{"params.epochs": 2.5}), "params.epochs:",
                                    ("integer", "2.5")),
    "negative-fixed-lambda": Bad(doc_with(**{"params.lambda_l2": -1.0e-6}), "params.lambda_l2:",
                                 ("non-negative", "-1e-06")),
    "negative-train-lambda": Bad(doc_with(**{"train.lambda_rate": -1.0}), "train.lambda_rate:",
                                 ("non-negative",)),
    "nan-fixed-value": Bad("model: lenet5\ndataset: mnist\n"
                           "objectives: {accuracy: max, size_bytes: min}\n"
                           "params: {lambda_l2: .nan}\n",
                           "params.lambda_l2:", ("finite number",)),
    "val-fraction-half": Bad(doc_with(**{"params.val_fraction": 0.5}), "params.val_fraction:",
                             ("[0, 0.5)",)),
    "zero-lr": Bad(doc_with(**{"params.lr": 0}), "params.lr:", ("positive",)),
    "choice-of-strings": Bad(doc_with(**{"params.lr": {"choice": ["fast"]}}), "params.lr:",
                             ("finite number", "'fast'")),
    # distributions
    "unknown-distribution": Bad(doc_with(**{"params.lr": {"normal": [0, 1]}}), "params.lr:",
                                ("normal", "uniform", "loguniform", "int", "choice")),
    "three-bounds": Bad(doc_with(**{"params.lambda_rate": {"loguniform": [1e-4, 1e-3, 1e-2]}}),
                        "params.lambda_rate:", ("[lo, hi]", "loguniform")),
    "two-kinds": Bad(doc_with(**{"params.lr": {"uniform": [0.01, 0.1], "choice": [0.01]}}),
                     "params.lr:", ("uniform", "choice")),
    "empty-choice": Bad(doc_with(**{"params.lr": {"choice": []}}), "params.lr:", ("choice",)),
    "uniform-low-above-high": Bad(doc_with(**{"params.lr": {"uniform": [0.1, 0.01]}}),
                                  "params.lr.uniform:",
                                  ("low must not exceed high", "[0.1, 0.01]")),
    "loguniform-low-above-high": Bad(
        doc_with(**{"params.lambda_rate": {"loguniform": [1e-2, 1e-4]}}),
        "params.lambda_rate.loguniform:", ("low must not exceed high",)),
    "int-low-above-high": Bad(doc_with(**{"params.epochs": {"int": [5, 1]}}),
                              "params.epochs.int:", ("low must not exceed high", "[5, 1]")),
    "loguniform-zero-bound": Bad(doc_with(**{"params.lambda_rate": {"loguniform": [0, 1]}}),
                                 "params.lambda_rate.loguniform:", ("> 0",)),
    "loguniform-negative-bound": Bad(
        doc_with(**{"params.lambda_rate": {"loguniform": [-1, 1]}}),
        "params.lambda_rate.loguniform:", ("> 0", "[-1, 1]")),
    "loguniform-infinite-bound": Bad(
        "model: lenet5\ndataset: mnist\nobjectives: {accuracy: max, size_bytes: min}\n"
        "params: {lambda_rate: {loguniform: [1.0e-3, .inf]}}\n",
        "params.lambda_rate:", ("finite number",)),
    "int-on-float-param": Bad(doc_with(**{"params.lr": {"int": [1, 3]}}), "params.lr:",
                              ("not an integer parameter", "uniform or loguniform")),
    "uniform-on-int-param": Bad(doc_with(**{"params.epochs": {"uniform": [1, 3]}}),
                                "params.epochs:", ("integer parameter", "int or choice")),
    "int-with-fractional-bounds": Bad(doc_with(**{"params.epochs": {"int": [1.5, 3]}}),
                                      "params.epochs:", ("int",)),
    # names
    "unknown-model": Bad(doc_with(model="resnet99"), "model:",
                         ("'resnet99'", "lenet5", "resnet20", "vgg16", "tv:NAME")),
    "model-not-string": Bad(doc_with(model=5), "model:", ("string",)),
    "unknown-dataset": Bad(doc_with(dataset="svhn"), "dataset:",
                           ("'svhn'", "fashion_mnist", "cifar10", "imagefolder:PATH")),
    "unknown-method": Bad(doc_with(method="prune"), "method:", ("'prune'", "lilnetx", "imp")),
    "unknown-sampler": Bad(doc_with(**{"search.sampler": "cmaes"}), "search.sampler:",
                           ("'cmaes'", *sampler_names())),
    "unknown-search-key": Bad(
        doc_with(**{"search.trials": 3}), "search:", ("'trials'", "sampler", "num_samples")),
    "unknown-objective": Bad(doc_with(**{"objectives.top5_accuracy": "max"}), "objectives:",
                             ("'top5_accuracy'", "size_bytes", "latency_ms", "channel_sparsity")),
    "objective-direction": Bad(doc_with(**{"objectives.accuracy": "up"}),
                               "objectives.accuracy:", ("'up'", "'max'", "'min'")),
    "unknown-param": Bad(doc_with(**{"params.momentum": 0.9}), "params:",
                         ("'momentum'", "lambda_rate", "lambda_sparsity", "val_fraction")),
    "unknown-train-key": Bad(
        doc_with(**{"train.momentum": 0.9}), "train:", ("'momentum'", "epochs", "lambda_rate")),
    "grid-with-loguniform": Bad(doc_with(**{"search.sampler": "grid"}), "params.lambda_rate:",
                                ("grid", "choice", "loguniform")),
    "grid-with-int": Bad(doc_with(**{"search.sampler": "grid",
                                     "params.lambda_rate": {"choice": [1e-3]},
                                     "params.lambda_sparsity": {"choice": [1e-5]},
                                     "params.epochs": {"int": [1, 3]}}),
                         "params.epochs:", ("grid", "choice")),
    # objective count: the message names the path but not the allowed count (see report)
    "one-objective": Bad(
        doc_with(objectives={"accuracy": "max"}), "objectives:", (re.compile(r"\b(2|two)\b"),)),
    "four-objectives": Bad(
        doc_with(objectives={"accuracy": "max", "size_bytes": "min", "flops": "min",
                             "latency_ms": "min"}),
        "objectives:", (re.compile(r"\b(3|three)\b"),)),
    # unreadable YAML: the message names the file and the line
    "yaml-tab": Bad("model: lenet5\ndataset: mnist\n\tparams: {}\n", "{path}:",
                    ("invalid YAML", "line 3")),
    "yaml-bad-indentation": Bad("model: lenet5\nparams:\n    lr: 0.01\n  epochs: 3\n",
                                "{path}:", ("invalid YAML", "line 4")),
    "yaml-mapping-in-scalar": Bad("model: lenet5\ndataset: mnist\n  objectives: x\n", "{path}:",
                                  ("invalid YAML", "line 3")),
    "yaml-unclosed-bracket": Bad("model: lenet5\ndataset: mnist\nparams:\n"
                                 "  lr: {choice: [0.01, 0.02}\nobjectives: {}\n",
                                 "{path}:", ("invalid YAML", "line 4")),
    # names that do not exist but pass validation (see report)
    "tv-model-does-not-exist": Bad(
        doc_with(model="tv:no_such_net"), "model:", ("'tv:no_such_net'",)),
    "tv-model-empty-name": Bad(
        doc_with(model="tv:"), "model:", ("tv:",)),
    "imagefolder-empty-path": Bad(
        doc_with(dataset="imagefolder:"), "dataset:", ("imagefolder:",)),
    "accuracy-and-val-accuracy": Bad(
        doc_with(objectives={"accuracy": "max", "val_accuracy": "max"}), "objectives:",
        ("accuracy", "val_accuracy")),
    "duplicate-key": Bad(
        "model: lenet5\ndataset: mnist\nobjectives: {accuracy: max, size_bytes: min}\n"
        "params: {lr: 0.01}\nmodel: vgg16\n",
        "", (re.compile(r"duplicate", re.IGNORECASE), "model")),
}


def _check_message(message: str, prefix: str, fragments: tuple) -> None:
    assert message.startswith(prefix), f"{message!r} does not start with {prefix!r}"
    assert "\n" not in message, f"multi-line message: {message!r}"
    assert "Traceback" not in message
    for frag in fragments:
        if isinstance(frag, re.Pattern):
            assert frag.search(message), f"{message!r} does not match {frag.pattern!r}"
        else:
            assert frag in message, f"{message!r} does not contain {frag!r}"


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=k, marks=c.marks) for k, c in BAD.items()])
def test_bad_space_is_rejected_with_path_and_allowed(tmp_path: Path, case: Bad):
    path = write(tmp_path, case.content)
    with pytest.raises(lilnetx.ConfigError) as exc:
        load_space(path)
    _check_message(str(exc.value), case.prefix.format(path=path), case.fragments)


def test_config_error_is_a_value_error():
    assert issubclass(lilnetx.ConfigError, ValueError)


def test_missing_file(tmp_path: Path):
    path = tmp_path / "nope" / "space.yaml"
    with pytest.raises(lilnetx.ConfigError) as exc:
        load_space(path)
    _check_message(str(exc.value), "cannot read search space", (repr(str(path)), "No such file"))


def test_directory_instead_of_file(tmp_path: Path):
    with pytest.raises(lilnetx.ConfigError) as exc:
        load_space(tmp_path)
    _check_message(str(exc.value), "cannot read search space", (repr(str(tmp_path)),))


def test_yaml_line_number_points_at_the_bad_line(tmp_path: Path):
    good = dump(BASE).splitlines()
    lines = [*good[:6], "\tbroken: 1", *good[6:]]
    path = write(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(lilnetx.ConfigError, match=r"line 7\b"):
        load_space(path)


def test_pathlike_and_str_paths(tmp_path: Path):
    path = write(tmp_path, BASE)
    assert load_space(str(path)).model == load_space(path).model == "lenet5"


# --------------------------------------------------------------------------- CLI

CLI_CASES = ["unknown-sampler", "unknown-model", "yaml-tab", "top-level-list",
             "loguniform-zero-bound", "unknown-top-level-key", "one-objective"]


@pytest.mark.parametrize("key", CLI_CASES)
def test_cli_sweep_bad_space_exit_2_one_error_line(tmp_path: Path, key: str, capsys):
    path = write(tmp_path, BAD[key].content)
    assert main(["sweep", str(path)]) == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    assert out == ""


def test_cli_sweep_missing_file(tmp_path: Path, capsys):
    path = tmp_path / "missing.yaml"
    assert main(["sweep", str(path), "--json"]) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == [err.strip()] and err.startswith("error: cannot read search space")
    assert out == ""


_PROBE = """
import json, sys
from explorer.cli import main
rc = main(["sweep", sys.argv[1]])
heavy = sorted(m for m in ("ray", "ray.tune", "optuna", "mlflow", "explorer.sweep")
               if m in sys.modules)
print(json.dumps({"rc": rc, "heavy": heavy}))
"""


def test_cli_sweep_bad_space_starts_nothing(tmp_path: Path):
    """In a fresh interpreter (other tests may have imported ray here): exit 2 quickly, without
    importing Ray, Optuna, MLflow or the sweep driver, and without creating tracking files."""
    work = tmp_path / "cwd"
    work.mkdir()
    path = write(tmp_path, BAD["grid-with-loguniform"].content)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(path)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr  # the probe itself ran to the end
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"rc": 2, "heavy": []}
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: params.lambda_rate:"), proc.stderr
    assert list(work.iterdir()) == [], "nothing may be created before the space is valid"
    # Importing torch dominates; starting Ray alone would take longer than this on a loaded box.
    assert elapsed < 60, f"took {elapsed:.1f}s"


def test_console_script_bad_space(tmp_path: Path):
    """The installed `lilnetx` entry point: exit code 2 and one `error:` line."""
    exe = Path(sys.executable).with_name("lilnetx")
    require(exe.exists(), "console script not installed next to this interpreter")
    path = write(tmp_path, BAD["unknown-objective"].content)
    proc = subprocess.run([str(exe), "sweep", str(path)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: objectives:"), proc.stderr


def test_the_readme_lists_every_key_a_space_may_set():
    """The README's "Searchable/fixable keys" are the schema's, in its order."""
    import re
    from pathlib import Path

    from explorer.space import SPEC_KEYS, TRAIN_KEYS

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    listed = re.search(r"Searchable/fixable keys: `([^`]*)`", text).group(1).split()
    assert listed == [*TRAIN_KEYS, *SPEC_KEYS]
