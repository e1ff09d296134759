"""`lilnetx train`: one JSON document on success, exit code 2 and one `error:` line on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _require import require

from explorer import cli

JSON_KEYS = {"accuracy", "val_accuracy", "bits_estimate", "weight_sparsity", "slice_sparsity",
             "channel_sparsity", "params", "dense_bytes"}
SCRIPT = Path(sys.executable).with_name("lilnetx")
MISSING_ROOT = "/nonexistent"


def _last_json(stdout: str) -> dict:
    """The JSON document that ends ``stdout``; fails if anything but whitespace follows it."""
    text = stdout.rstrip()
    assert text.endswith("}"), f"stdout does not end with a JSON object: {text[-200:]!r}"
    decoder = json.JSONDecoder()
    starts = [i for i, ch in enumerate(text) if ch == "{" and (i == 0 or text[i - 1] == "\n")]
    for start in starts:  # the first line-initial "{" whose document runs to the end
        try:
            doc, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if end == len(text):
            assert isinstance(doc, dict)
            return doc
    raise AssertionError(f"no JSON document at the end of stdout: {text[-200:]!r}")


def _check_summary(doc: dict) -> None:
    assert JSON_KEYS <= set(doc)
    for key in ("accuracy", "val_accuracy", "weight_sparsity", "slice_sparsity",
                "channel_sparsity"):
        assert isinstance(doc[key], float) and 0.0 <= doc[key] <= 1.0, key
    assert isinstance(doc["bits_estimate"], float) and doc["bits_estimate"] > 0
    assert isinstance(doc["params"], int) and doc["params"] > 0
    assert isinstance(doc["dense_bytes"], int) and doc["dense_bytes"] >= 4 * doc["params"]


def _error_line(stderr: str) -> str:
    """The single `error:` line of ``stderr`` (and no traceback)."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


@pytest.mark.slow
def test_train_json_in_a_subprocess(tmp_path, subprocess_env):
    proc = subprocess.run(
        [sys.executable, "-m", "explorer.cli", "train", "--model", "lenet5", "--dataset",
         "digits", "--epochs", "1", "--json"],
        cwd=tmp_path, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    doc = _last_json(proc.stdout)
    _check_summary(doc)
    assert doc["model"] == "lenet5" and doc["dataset"] == "digits" and doc["epochs"] == 1
    assert list(tmp_path.iterdir()) == []  # no --out: nothing written


def test_train_json_in_process(capsys):
    argv = ["train", "--model", "mlp", "--dataset", "digits", "--epochs", "2", "--limit", "300",
            "--batch-size", "64", "--lambda-rate", "0", "--lambda-sparsity", "0", "--seed", "3",
            "--json"]
    assert cli.main(argv) == 0
    out = capsys.readouterr()
    doc = _last_json(out.out)
    _check_summary(doc)
    assert doc["epochs"] == 2 and doc["model"] == "mlp"
    assert out.out.strip().startswith("{")  # --json: nothing else on stdout
    # mlp on 8x8 digits: 64*300 + 300 + 300*100 + 100 + 100*10 + 10 parameters
    assert doc["params"] == 64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    assert doc["dense_bytes"] == 4 * doc["params"]


def test_train_table_output_in_process(capsys):
    assert cli.main(["train", "--model", "lenet5", "--dataset", "digits", "--epochs", "1",
                     "--limit", "200"]) == 0
    out = capsys.readouterr()
    assert "bits_estimate" in out.out and "accuracy" in out.out
    assert "Traceback" not in out.err


# (arguments, texts the error line must contain: the bad value and what is allowed)
BAD_INPUTS = {
    "unknown-model": (["--model", "nope-model", "--dataset", "digits"],
                      ["'nope-model'", "lenet5", "resnet20", "tv:NAME"]),
    "unknown-tv-model": (["--model", "tv:nope", "--dataset", "digits"],
                         ["'nope'", "tv:resnet18"]),
    "unknown-dataset": (["--dataset", "nope-data"], ["'nope-data'", "digits", "fashion_mnist"]),
    "missing-data-root": (["--dataset", "fashion_mnist", "--data-root", MISSING_ROOT],
                          [MISSING_ROOT, "train-images-idx3-ubyte"]),
    "negative-lambda-rate": (["--dataset", "digits", "--lambda-rate", "-1"],
                             ["--lambda-rate", "-1", "non-negative"]),
    "negative-lambda-sparsity": (["--dataset", "digits", "--lambda-sparsity", "-0.5"],
                                 ["--lambda-sparsity", "-0.5", "non-negative"]),
    "nan-lambda-l2": (["--dataset", "digits", "--lambda-l2", "nan"],
                      ["--lambda-l2", "nan", "non-negative"]),
    "unknown-method": (["--dataset", "digits", "--method", "magic"], ["'magic'", "lilnetx"]),
    "zero-epochs": (["--dataset", "digits", "--epochs", "0"],
                    ["--epochs", "0", "positive integer"]),
    "text-epochs": (["--dataset", "digits", "--epochs", "abc"], ["--epochs", "'abc'", "integer"]),
    "fraction-epochs": (["--dataset", "digits", "--epochs", "1.5"],
                        ["--epochs", "'1.5'", "integer"]),
    "unknown-option": (["--dataset", "digits", "--lambda", "1"], ["--lambda"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_error_line(case, capsys):
    assert not Path(MISSING_ROOT).exists()
    args, expected = BAD_INPUTS[case]
    assert cli.main(["train", *args, "--json"]) == cli.EXIT_BAD_INPUT == 2
    out = capsys.readouterr()
    line = _error_line(out.err)
    assert out.err.strip().splitlines() == [line]  # --json: no progress output either
    for text in expected:
        assert text in line, f"{text!r} missing from {line!r}"
    assert out.out == ""


@pytest.mark.parametrize("case", ["unknown-model", "unknown-method", "zero-epochs"])
def test_bad_input_without_json_has_one_error_line(case, capsys):
    args, expected = BAD_INPUTS[case]
    assert cli.main(["train", *args]) == 2
    line = _error_line(capsys.readouterr().err)
    assert expected[0] in line


@pytest.mark.parametrize("case", ["unknown-model", "unknown-dataset", "missing-data-root"])
def test_bad_input_without_json_prints_only_the_error_line(case, capsys):
    # These fail after the run has begun (data loading, model building): no progress output
    # may precede the error line.
    args, _ = BAD_INPUTS[case]
    assert cli.main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [_error_line(err)]


@pytest.mark.parametrize(("case", "use_script"), [
    ("unknown-model", True), ("negative-lambda-rate", False)])
def test_bad_input_in_a_subprocess(case, use_script, tmp_path, subprocess_env):
    args, expected = BAD_INPUTS[case]
    if use_script:
        require(SCRIPT.exists(), f"console script {SCRIPT} is not installed")
    cmd = [str(SCRIPT)] if use_script else [sys.executable, "-m", "explorer.cli"]
    proc = subprocess.run([*cmd, "train", *args, "--json"], cwd=tmp_path, env=subprocess_env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    line = _error_line(proc.stderr)
    assert proc.stderr.strip().splitlines() == [line]
    assert all(text in line for text in expected), line
    assert proc.stdout == ""


def test_missing_command_is_bad_input(capsys):
    assert cli.main([]) == 2
    line = _error_line(capsys.readouterr().err)
    assert "command" in line and "--help" in line


@pytest.mark.parametrize(("command", "extra", "module"), [
    (["sweep", "space.yaml"], "sweep", "ray"), (["pareto"], "sweep", "mlflow"),
    (["export", "0" * 32, "--name", "m"], "sweep", "optuna"),
    (["dashboard"], "dashboard", "dash")])
def test_commands_name_the_extra_they_need(command, extra, module, monkeypatch, capsys):
    """A core install (no [sweep] / [dashboard] extra): the command says what to install."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == module else real(name, *a))
    assert cli.main(command) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: `lilnetx {command[0]}` needs the [{extra}] extra (missing: {module}); "
                   f"install it with: pip install 'lilnetx-explorer[{extra}]'")


def test_core_commands_import_no_sweep_stack(tmp_path, subprocess_env):
    """`lilnetx train` and `inspect` work without Ray, MLflow, Optuna and Dash: run with those
    packages made unimportable."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    for name in ("ray", "mlflow", "optuna", "dash", "plotly", "yaml", "jsonschema"):
        (blocker / f"{name}.py").write_text(f"raise ImportError('{name} is not installed')\n")
    env = {**subprocess_env, "PYTHONPATH": str(blocker)}
    out = tmp_path / "m.lnx"
    proc = subprocess.run([sys.executable, "-m", "explorer.cli", "train", "--model", "mlp",
                           "--dataset", "digits", "--epochs", "1", "--out", str(out),
                           "--no-latency", "--json"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = subprocess.run([sys.executable, "-m", "explorer.cli", "inspect", str(out), "--json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and json.loads(proc.stdout)["size_bytes"] == out.stat().st_size
