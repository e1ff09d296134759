"""examples/shapes end to end, as its README says: a sweep over the project's own model and
data set (factories imported from its folder), `pareto`, `export`, then
`mlflow.pyfunc.load_model(...).predict` in a fresh process that has none of the project's
code: the `.lnx` file carries the network's graph."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.sweep]

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "shapes"


def cli(env, cwd, *args, timeout=900):
    return subprocess.run([sys.executable, "-m", "explorer.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_example_project_end_to_end(tmp_path, subprocess_env):
    project = tmp_path / "shapes"
    shutil.copytree(EXAMPLE, project)
    env = {**subprocess_env, "MLFLOW_DISABLE_TELEMETRY": "true"}
    for k in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "PYTHONPATH"):
        env.pop(k, None)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = cli(env, project, "sweep", "space.yaml", "--tracking-uri", uri, "--json")
    assert out.returncode == 0, out.stderr[-4000:]
    res = json.loads(out.stdout)
    assert res["finished"] == 4 and set(res["fronts"]) == {"lilnetx", "dense"}
    par = cli(env, project, "pareto", "--tracking-uri", uri, "--json")
    assert par.returncode == 0, par.stderr[-2000:]
    best = json.loads(par.stdout)["methods"]["lilnetx"]["front"][0]
    exp = cli(env, project, "export", best["run_id"], "--name", "shapes-net",
              "--tracking-uri", uri, "--json")
    assert exp.returncode == 0, exp.stderr[-2000:]

    shutil.rmtree(project)  # the project's code is gone: only the registry and the file remain
    code = f"""
import json, sys
import mlflow, numpy as np, torch
import lilnetx
assert not any('shapes' in p for p in sys.path)
for mod in ('tinynet', 'shapes'):
    try:
        __import__(mod)
    except ImportError:
        pass
    else:
        raise SystemExit(mod + ' is importable')
mlflow.set_tracking_uri({uri!r})
model = mlflow.pyfunc.load_model('models:/shapes-net@champion')
x = np.random.default_rng(0).standard_normal((5, 1, 16, 16)).astype(np.float32)
logits = model.predict(x)
path = mlflow.artifacts.download_artifacts(run_id={best['run_id']!r}, artifact_path='model.lnx',
                                           tracking_uri={uri!r})
net = lilnetx.load(path).eval()
with torch.no_grad():
    ref = net(torch.from_numpy(x)).numpy()
print(json.dumps({{"shape": list(logits.shape), "equal": bool(np.array_equal(logits, ref))}}))
"""
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"shape": [5, 4], "equal": True}
    assert not os.path.exists(project)
