"""Sweeps with real Ray, Optuna and MLflow on sqlite (tiny: digits, LeNet-5, 1 epoch)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.sweep]

SPACE = """
name: {name}
model: lenet5
dataset: digits
train: {{epochs: {epochs}, batch_size: 128, seed: 0}}
objectives: {{accuracy: max, size_bytes: min}}
search: {{sampler: {sampler}, num_samples: {n}, max_concurrent: {k}, cpus_per_trial: {cpus}, seed: 0}}
params:
{params}
"""
LAMBDAS = ("  lambda_rate: {loguniform: [1.0e-4, 1.0]}\n"
           "  lambda_sparsity: {loguniform: [1.0e-6, 1.0e-2]}")


def write_space(path, name, n=4, k=2, sampler="tpe", cpus=1, params=LAMBDAS, epochs=1):
    path.write_text(SPACE.format(name=name, n=n, k=k, sampler=sampler, cpus=cpus, params=params,
                                 epochs=epochs))
    return str(path)


@pytest.fixture(scope="module")
def ray_session():
    import ray

    from explorer.sweep import init_ray

    init_ray(None, num_cpus=2)
    yield
    ray.shutdown()


def trial_runs(uri, experiment):
    from explorer import tracking

    exp = tracking.client(uri).get_experiment_by_name(experiment)
    return tracking.child_runs(uri, exp.experiment_id)


def run(space_path, tmp_path, experiment, **kw):
    from explorer.space import load_space
    from explorer.sweep import SweepOptions, run_sweep

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = run_sweep(load_space(space_path),
                    SweepOptions(tracking_uri=uri, experiment=experiment, live=False, **kw))
    return uri, res


def test_four_trials_recorded_and_pareto(tmp_path, monkeypatch, ray_session, capsys):
    from explorer import tracking
    from explorer.cli import main
    from explorer.pareto import nondominated

    monkeypatch.chdir(tmp_path)
    uri, res = run(write_space(tmp_path / "s.yaml", "four"), tmp_path, "four")
    assert res.finished == 4 and res.failed == 0
    runs = trial_runs(uri, "four")
    assert len(runs) == 4
    c = tracking.client(uri)
    for r in runs:
        assert r.info.status == "FINISHED"
        m = r.data.metrics
        for key in ("accuracy", "val_accuracy", "size_bytes", "compression_ratio",
                    "bits_estimate", "flops", "latency_ms", "slice_sparsity", "params"):
            assert key in m, key
        assert 0 <= m["accuracy"] <= 1 and m["size_bytes"] > 100
        assert {"lambda_rate", "lambda_sparsity", "epochs", "model"} <= set(r.data.params)
        assert r.data.tags["mlflow.parentRunId"] == res.parent_run_id
        assert r.data.tags["lilnetx.method"] == "lilnetx"
        assert r.data.tags["lilnetx.sweep"] == res.sweep
        names = {a.path for a in c.list_artifacts(r.info.run_id)}
        assert {"model.lnx", "layers.json"} <= names
        curve = c.get_metric_history(r.info.run_id, "epoch_val_accuracy")
        assert [p.step for p in curve] == [1]
        # the run's val_accuracy is the stored network's, logged once at step 0
        assert [p.step for p in c.get_metric_history(r.info.run_id, "val_accuracy")] == [0]
    parent = c.get_run(res.parent_run_id)
    assert parent.data.metrics["front_size"] == len(res.front)
    assert parent.data.metrics["hypervolume"] > 0
    assert "search_space.yaml" in {a.path for a in c.list_artifacts(res.parent_run_id)}
    # The model file of a trial is a real .lnx that evaluates to the recorded accuracy.
    best = runs[0]
    local = c.download_artifacts(best.info.run_id, "model.lnx", str(tmp_path))
    import lilnetx
    from lilnetx import fileformat

    net = fileformat.load(local)
    splits = lilnetx.create_dataset("digits")
    assert lilnetx.evaluate_accuracy(net, splits.test) == pytest.approx(
        best.data.metrics["accuracy"], abs=1e-12)

    capsys.readouterr()
    assert main(["pareto", "--experiment", "four", "--tracking-uri", uri, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    objectives = {"accuracy": "max", "size_bytes": "min"}
    points = [r.data.metrics for r in runs]
    expected = {runs[i].info.run_id for i in nondominated(points, objectives)}
    # brute force, independent of the helper
    def dominated(p, q):
        return (q["val_accuracy"] >= p["val_accuracy"] and q["size_bytes"] <= p["size_bytes"]
                and (q["val_accuracy"] > p["val_accuracy"] or q["size_bytes"] < p["size_bytes"]))
    brute = {r.info.run_id for r in runs
             if not any(dominated(r.data.metrics, o.data.metrics) for o in runs)}
    assert expected == brute
    assert {row["run_id"] for row in out["front"]} == brute


def test_failing_trial_is_recorded_and_the_rest_finish(tmp_path, monkeypatch, ray_session):
    from optuna.trial import TrialState

    monkeypatch.chdir(tmp_path)
    params = "  lr: {choice: [0.01, 1.0e+30]}\n  lambda_rate: 1.0e-4"
    uri, res = run(write_space(tmp_path / "f.yaml", "fail", n=2, sampler="grid", params=params),
                   tmp_path, "fail")
    runs = trial_runs(uri, "fail")
    status = sorted(r.info.status for r in runs)
    assert status == ["FAILED", "FINISHED"]
    bad = next(r for r in runs if r.info.status == "FAILED")
    assert float(bad.data.params["lr"]) == 1e30
    assert "loss is" in bad.data.tags["lilnetx.error"]
    import optuna

    from explorer.sweep import SweepOptions, study_storage

    storage = study_storage(SweepOptions(), uri)
    study = optuna.load_study(study_name=res.studies["lilnetx"], storage=storage)
    states = sorted(t.state.name for t in study.trials)
    assert states == ["COMPLETE", "FAIL"]
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]


def test_eight_concurrent_trials_lose_nothing(tmp_path, monkeypatch, ray_session):
    monkeypatch.chdir(tmp_path)
    uri, res = run(write_space(tmp_path / "c.yaml", "eight", n=8, k=8, sampler="random",
                               cpus=0.25), tmp_path, "eight")
    runs = trial_runs(uri, "eight")
    assert len(runs) == 8 and res.finished == 8
    trials = sorted(int(r.data.tags["lilnetx.trial"]) for r in runs)
    assert trials == list(range(8))
    for r in runs:
        assert r.info.status == "FINISHED"
        assert {"accuracy", "size_bytes", "latency_ms", "flops"} <= set(r.data.metrics)


def _finished(uri, experiment):
    try:
        return [r for r in trial_runs(uri, experiment) if r.info.status == "FINISHED"]
    except Exception:
        return []


def test_kill_driver_then_resume(tmp_path):
    """kill -9 of the driver (its whole process group, as when a machine dies), then --resume:
    exactly num_samples finished runs, no duplicate trial in MLflow or in the study."""
    import optuna

    from explorer.sweep import SweepOptions, study_storage

    space = write_space(tmp_path / "k.yaml", "killme", n=4, k=1)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "explorer.cli", "sweep", space, "--tracking-uri", uri, "--json"]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and len(_finished(uri, "killme")) < 1:
            assert proc.poll() is None, "sweep ended before it could be killed"
            time.sleep(1)
        assert len(_finished(uri, "killme")) >= 1
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    time.sleep(1)
    first = len(_finished(uri, "killme"))
    assert first < 4
    out = subprocess.run(cmd + ["--resume"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600, start_new_session=True)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout)
    runs = _finished(uri, "killme")
    assert len(runs) == 4 and res["finished"] == 4
    numbers = [r.data.tags["lilnetx.trial"] for r in runs]
    assert len(set(numbers)) == 4
    statuses = {r.info.status for r in trial_runs(uri, "killme")}
    assert "RUNNING" not in statuses
    study = optuna.load_study(study_name=res["studies"]["lilnetx"],
                              storage=study_storage(SweepOptions(), uri))
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4
    assert not [t for t in study.trials if t.state.name == "RUNNING"]


MULTI = """
name: multi
model: lenet5
dataset: digits
train: {epochs: 1, batch_size: 64, seed: 0, lr: 0.01}
objectives: {accuracy: max, size_bytes: min}
search: {sampler: random, num_samples: 1, max_concurrent: 2, seed: 0}
methods:
  lilnetx:
    num_samples: 2
    params: {lambda_rate: {loguniform: [1.0e-3, 1.0]}}
  dense: {}
  quant:
    params: {bits: {int: [2, 8]}}
  imp:
    params: {target_sparsity: {uniform: [0.5, 0.9]}, phases: 1, retrain_epochs: 1,
             schedule: {choice: [SLR, LLR]}}
"""


def test_several_methods_one_front_each(tmp_path, monkeypatch, ray_session, capsys):
    from explorer.cli import main
    from explorer.pareto import hypervolume, nondominated, reference_point

    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.yaml").write_text(MULTI)
    uri, res = run(str(tmp_path / "m.yaml"), tmp_path, "multi")
    runs = trial_runs(uri, "multi")
    by_method = {}
    for r in runs:
        assert r.info.status == "FINISHED"
        by_method.setdefault(r.data.tags["lilnetx.method"], []).append(r)
    assert {m: len(v) for m, v in by_method.items()} == {"lilnetx": 2, "dense": 1, "quant": 1,
                                                          "imp": 1}
    assert set(res.studies) == set(by_method) and len(set(res.studies.values())) == 4
    objectives = {"accuracy": "max", "size_bytes": "min"}
    ref = reference_point([r.data.metrics for r in runs], objectives)
    capsys.readouterr()
    assert main(["pareto", "--experiment", "multi", "--tracking-uri", uri, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for m, rs in by_method.items():
        points = [r.data.metrics for r in rs]
        front = {rs[i].info.run_id for i in nondominated(points, objectives)}
        assert {row["run_id"] for row in out["methods"][m]["front"]} == front
        expected = hypervolume([points[i] for i in nondominated(points, objectives)],
                               objectives, ref)
        assert out["methods"][m]["hypervolume"] == pytest.approx(expected)
    from explorer import tracking

    c = tracking.client(uri)
    for r in runs:  # every method's val_accuracy is that of its stored network (step 0 only)
        assert [p.step for p in c.get_metric_history(r.info.run_id, "val_accuracy")] == [0]
    # a dense fp32 file is the largest; imp stores 8-bit nonzeros
    size = {m: min(r.data.metrics["size_bytes"] for r in rs) for m, rs in by_method.items()}
    assert size["dense"] > size["imp"] and size["dense"] > size["quant"]


def test_sweep_whose_trials_all_fail_exits_1(tmp_path, monkeypatch, ray_session, capsys):
    """Every trial diverges: exit code 1, one `error:` line with the count and the first error,
    the JSON summary on stdout, and the parent run FAILED (not FINISHED)."""
    from explorer import tracking
    from explorer.cli import main

    monkeypatch.chdir(tmp_path)
    params = "  lr: {choice: [1.0e+30]}\n  lambda_rate: 1.0e-4"
    path = write_space(tmp_path / "allfail.yaml", "allfail", n=2, k=1, sampler="random",
                       params=params)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    capsys.readouterr()
    code = main(["sweep", path, "--tracking-uri", uri, "--json"])
    out, err = capsys.readouterr()
    assert code == 1, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: all 2 trials of sweep allfail-") and "loss is" in line, line
    doc = json.loads(out)
    assert doc["finished"] == 0 and doc["failed"] == 2 and doc["errors"]
    c = tracking.client(uri)
    parent = c.get_run(doc["parent_run_id"])
    assert parent.info.status == "FAILED"


def _descendants(pid: int) -> set[int]:
    """``pid`` and every process below it, from /proc."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo.extend(children.get(p, []))
    return out


def _listening(pids: set[int]) -> list[tuple[str, str, int]]:
    """(process name, local address, port) of every listening TCP socket and bound UDP socket
    of ``pids``, read from /proc/net (no ss or psutil needed)."""
    import ipaddress

    inodes: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes[link[8:-1]] = pid
        except OSError:
            continue
    found = []
    for table, listen_state in (("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")):
        try:
            with open(f"/proc/net/{table}") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            local, state, inode = cols[1], cols[3], cols[9]
            if state != listen_state or inode not in inodes:
                continue
            hexip, hexport = local.split(":")
            raw = bytes.fromhex(hexip)
            if len(raw) == 4:
                ip = ipaddress.IPv4Address(raw[::-1])
            else:  # four little-endian 32-bit words
                ip = ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
            try:
                name = open(f"/proc/{inodes[inode]}/comm").read().strip()
            except OSError:
                name = "?"
            found.append((name, str(ip), int(hexport, 16)))
    return found


def _loopback(addr: str) -> bool:
    import ipaddress

    ip = ipaddress.ip_address(addr)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _popen_interruptible(cmd: list[str], **kw) -> subprocess.Popen:
    """``subprocess.Popen(cmd, **kw)`` with SIGINT at its default in the child, as a terminal's
    shell starts a command. A shell without job control starts a background command (``nohup
    make test &``) with SIGINT ignored; a child inherits that, and Python then never raises
    KeyboardInterrupt in it (a CI run started that way saw the sweep ignore its SIGINT and
    finish with exit 0). A handled signal is reset to its default at exec, so the test's
    process handles SIGINT while it starts the child."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(cmd, **kw)
    finally:
        signal.signal(signal.SIGINT, old)


def test_ctrl_c_then_resume_on_loopback(tmp_path):
    """A local sweep in a subprocess, as a user runs it:
    - while it runs, every listening socket of its processes (driver, GCS, raylet, workers,
      agents) is on a loopback address;
    - Ctrl-C (SIGINT to its process group, as a terminal sends it) exits 130 with the parent
      run KILLED and no trial run left RUNNING;
    - ``--resume`` finishes the sweep without evaluating any configuration twice: the resumed
      sampler continues the study instead of replaying its seed."""
    import optuna

    from explorer import tracking
    from explorer.sweep import SweepOptions, study_storage

    # 6 epochs make a trial last a second or more, so the three trials after the first finished
    # one (one at a time) cannot all end between the poll that sees it and the SIGINT
    space = write_space(tmp_path / "int.yaml", "intr", n=4, k=1, sampler="random", epochs=6)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "explorer.cli", "sweep", space, "--tracking-uri", uri, "--json"]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    for k in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
        env.pop(k, None)
    log = open(tmp_path / "sweep.log", "w")
    proc = _popen_interruptible(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                stderr=log, start_new_session=True)
    sockets: set[tuple[str, str, int]] = set()
    try:
        deadline = time.time() + 300
        while time.time() < deadline and len(_finished(uri, "intr")) < 1:
            assert proc.poll() is None, "sweep ended before it could be interrupted"
            sockets |= set(_listening(_descendants(proc.pid)))
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)  # at once: the remaining trials are running
        code = proc.wait(timeout=120)
        assert len(_finished(uri, "intr")) >= 1
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    names = {name for name, _, _ in sockets}
    assert {"gcs_server", "raylet"} <= names, sockets  # Ray's own servers were seen
    exposed = sorted(s for s in sockets if not _loopback(s[1]))
    assert not exposed, f"listening beyond loopback: {exposed}"
    stderr = (tmp_path / "sweep.log").read_text()
    assert code == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "error: interrupted"
    c = tracking.client(uri)
    exp = c.get_experiment_by_name("intr")
    parent = c.search_runs([exp.experiment_id], filter_string="tags.`lilnetx.role` = 'sweep'")[0]
    assert parent.info.status == "KILLED"
    assert "RUNNING" not in {r.info.status for r in trial_runs(uri, "intr")}
    first = len(_finished(uri, "intr"))
    assert first < 4

    out = subprocess.run(cmd + ["--resume"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600, start_new_session=True)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout)
    assert res["finished"] == 4
    assert c.get_run(parent.info.run_id).info.status == "FINISHED"
    study = optuna.load_study(study_name=res["studies"]["lilnetx"],
                              storage=study_storage(SweepOptions(), uri))
    configs = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(configs) == len(set(configs)), f"a configuration was evaluated twice: {configs}"
    finished = [tuple(sorted((k, r.data.params[k]) for k in ("lambda_rate", "lambda_sparsity")))
                for r in _finished(uri, "intr")]
    assert len(finished) == 4 and len(set(finished)) == 4
