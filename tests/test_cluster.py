"""A sweep on a real Ray cluster, tracked by a real MLflow server on PostgreSQL, for real, on
loopback: a temporary PostgreSQL cluster, ``mlflow server`` with proxied artifacts, ``ray start
--head``, then ``lilnetx sweep --address`` with the study in the same PostgreSQL, a kill -9 of the
driver mid-sweep, ``--resume``, and a registry export loaded back through the server.

Every address is 127.0.0.1 with a free port; every process is started here and stopped by its
PID (or its own process group) in ``finally`` blocks. ``ray stop`` is never called: it kills
every Ray process on the machine, including other tests' clusters. See docs/cluster.md.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from _require import require

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

HOST = "127.0.0.1"
BIN = Path(sys.executable).parent
PG_REASON = ("PostgreSQL server binaries (initdb, pg_ctl, postgres) are missing under "
             "/usr/lib/postgresql/*/bin: install Debian's `postgresql` package (.ci/run does)")

SPACE = """
name: {name}
model: lenet5
dataset: digits
train: {{epochs: 1, batch_size: 128, seed: 0}}
objectives: {{accuracy: max, size_bytes: min}}
search: {{sampler: tpe, num_samples: {n}, max_concurrent: 2, cpus_per_trial: 1,
         gpus_per_trial: {gpus}, seed: 0}}
params:
  lambda_rate: {{loguniform: [1.0e-4, 1.0]}}
  lambda_sparsity: {{loguniform: [1.0e-6, 1.0e-2]}}
{cluster}"""


def space_yaml(name: str, n: int = 4, gpus: int = 0, cluster: str = "") -> str:
    return SPACE.format(name=name, n=n, gpus=gpus, cluster=cluster)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


RAY_TOKEN = secrets.token_hex(32)


def base_env() -> dict[str, str]:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
           # Ray's token authentication on, with one token for the head and every driver
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": RAY_TOKEN,
           # Ray turns 127.0.0.1 into the machine's routable address unless told otherwise: with
           # this, the head binds and registers 127.0.0.1 and drivers connect to 127.0.0.1.
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for k in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        env.pop(k, None)
    return env


def tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def wait_until(check, timeout: float, what: str, proc: subprocess.Popen | None = None,
               log: Path | None = None, every: float = 0.3):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited with {proc.returncode}\n"
                                 f"{tail(log) if log else ''}")
        try:
            out = check()
        except Exception:
            out = None
        if out:
            return out
        time.sleep(every)
    raise AssertionError(f"{what}: not ready after {timeout:.0f} s\n{tail(log) if log else ''}")


def pids_mentioning(text: str) -> list[int]:
    """PIDs of the processes whose command line contains ``text`` (a unique temp dir)."""
    out = []
    for d in glob.glob("/proc/[0-9]*"):
        try:
            with open(os.path.join(d, "cmdline"), "rb") as f:
                if text.encode() in f.read():
                    out.append(int(os.path.basename(d)))
        except OSError:
            pass
    return [p for p in out if p != os.getpid()]


def stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 30.0,
         group: bool = True) -> None:
    """Stop a process this module started (``start_new_session=True``): ``sig`` to it, then
    SIGKILL to its own process group once it has exited or after ``timeout``."""
    if proc is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    if group:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def kill_pids(pids: list[int]) -> None:
    for p in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# PostgreSQL from a temporary data directory

def pg_bindir() -> str | None:
    dirs = [d for d in glob.glob("/usr/lib/postgresql/*/bin")
            if all(os.access(os.path.join(d, b), os.X_OK) for b in ("initdb", "pg_ctl",
                                                                    "postgres"))]

    def version(d: str) -> float:
        try:
            return float(Path(d).parent.name)
        except ValueError:
            return 0.0

    return max(dirs, key=version) if dirs else None


@dataclass
class Postgres:
    port: int
    user: str
    password: str
    proc: subprocess.Popen

    def url(self, db: str) -> str:
        return f"postgresql+psycopg2://{self.user}:{self.password}@{HOST}:{self.port}/{db}"


@contextlib.contextmanager
def postgres(root: Path):
    """initdb + postgres on 127.0.0.1 (scram-sha-256 passwords, the socket in a private dir),
    run as user ``postgres`` when we are root; databases ``mlflow`` and ``optuna`` owned by role
    ``lilnetx``. Stopped by PID (fast shutdown) on exit."""
    import psycopg2

    bindir = pg_bindir()
    require(bindir is not None, PG_REASON)
    user = None
    if os.geteuid() == 0:
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            require(False, "running as root and there is no `postgres` system user to run the "
                    "temporary PostgreSQL cluster (Debian's `postgresql` package creates it)")
        user = "postgres"
    base = Path(tempfile.mkdtemp(prefix="lnxpg-", dir="/tmp"))  # short: holds the socket
    admin_pw, lnx_pw = secrets.token_hex(16), secrets.token_hex(16)
    (base / "pw").write_text(admin_pw + "\n")
    if user:
        for p in (base, base / "pw"):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    os.chmod(base, 0o700)
    data, log = base / "data", root / "postgres.log"
    proc = None
    try:
        r = subprocess.run([os.path.join(bindir, "initdb"), "-D", str(data), "-U", "lnxadmin",
                            f"--pwfile={base / 'pw'}", "--auth=scram-sha-256", "-E", "UTF8",
                            "--no-locale", "--no-sync"],
                           user=user, cwd=base, capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        port = free_port()
        with open(log, "wb") as f:
            proc = subprocess.Popen(
                [os.path.join(bindir, "postgres"), "-D", str(data), "-p", str(port),
                 "-c", f"listen_addresses={HOST}", "-c", f"unix_socket_directories={base}",
                 "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off", "-c", "max_connections=200"],
                user=user, cwd=base, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)

        def connect():
            return psycopg2.connect(host=HOST, port=port, user="lnxadmin", password=admin_pw,
                                    dbname="postgres", connect_timeout=3)

        conn = wait_until(connect, 60, "PostgreSQL", proc, log)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"CREATE ROLE lilnetx LOGIN PASSWORD '{lnx_pw}'")
            for db in ("mlflow", "optuna"):
                cur.execute(f"CREATE DATABASE {db} OWNER lilnetx")
        conn.close()
        yield Postgres(port, "lilnetx", lnx_pw, proc)
    finally:
        stop(proc, signal.SIGINT, timeout=30)  # SIGINT to the postmaster: fast shutdown
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# MLflow tracking server and Ray head

@contextlib.contextmanager
def mlflow_server(root: Path, backend: str):
    port, art, log = free_port(), root / "artifacts", root / "mlflow-server.log"
    art.mkdir()
    proc = None
    try:
        with open(log, "wb") as f:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(port),
                 "--workers", "1", "--backend-store-uri", backend,
                 "--artifacts-destination", str(art)],
                cwd=root, env=base_env(), stdout=f, stderr=subprocess.STDOUT,
                start_new_session=True)
        uri = f"http://{HOST}:{port}"

        def healthy():
            with urllib.request.urlopen(f"{uri}/health", timeout=3) as r:
                return r.status == 200

        wait_until(healthy, 180, "mlflow server", proc, log, every=0.5)
        yield uri
    finally:
        stop(proc, signal.SIGTERM, timeout=20)


@contextlib.contextmanager
def ray_head(root: Path):
    """``ray start --head --block`` in its own session and temp dir; stopped by its PID (it
    terminates what it started), then any process still naming its temp dir, by PID. It offers
    2 CPUs and 1 GPU (whether or not the machine has one), so a GPU trial can be scheduled."""
    tmp = tempfile.mkdtemp(prefix="lnxray-", dir="/tmp")  # short: Ray's socket paths
    port, log = free_port(), root / "ray-head.log"
    proc = None
    try:
        with open(log, "wb") as f:
            proc = subprocess.Popen(
                [str(BIN / "ray"), "start", "--head", "--node-ip-address", HOST,
                 "--port", str(port), "--num-cpus", "2", "--num-gpus", "1",
                 "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", tmp,
                 "--dashboard-agent-listen-port", str(free_port()),
                 "--object-store-memory", str(100 * 2**20), "--block"],
                cwd=tmp, env=base_env(), stdout=f, stderr=subprocess.STDOUT,
                start_new_session=True)
        wait_until(lambda: "Ray runtime started" in tail(log, 10**6), 120, "ray head", proc, log)
        yield f"{HOST}:{port}"
    finally:
        stop(proc, signal.SIGTERM, timeout=30)
        kill_pids(pids_mentioning(tmp))
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class Cluster:
    root: Path
    pg: Postgres
    tracking_uri: str
    address: str

    @property
    def study_storage(self) -> str:
        return self.pg.url("optuna")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import importlib.util

    require(importlib.util.find_spec("psycopg2") is not None, "psycopg2-binary is needed for "
            "PostgreSQL (MLflow backend store and Optuna storage)")
    require(pg_bindir() is not None, PG_REASON)
    root = tmp_path_factory.mktemp("cluster")
    with postgres(root) as pg, mlflow_server(root, pg.url("mlflow")) as uri, \
            ray_head(root) as address:
        yield Cluster(root, pg, uri, address)


# ---------------------------------------------------------------------------------------------

def lilnetx_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "explorer.cli", *args]


def trial_runs(uri: str, experiment: str) -> list:
    from explorer import tracking

    exp = tracking.client(uri).get_experiment_by_name(experiment)
    return tracking.child_runs(uri, exp.experiment_id) if exp else []


def finished(uri: str, experiment: str) -> list:
    try:
        return [r for r in trial_runs(uri, experiment) if r.info.status == "FINISHED"]
    except Exception:
        return []


def test_sweep_on_ray_cluster_with_mlflow_server_and_postgres(cluster, tmp_path):
    import numpy as np
    import optuna
    import torch

    import lilnetx
    from explorer import tracking

    uri, name = cluster.tracking_uri, "clustered"
    work = tmp_path / "driver"  # the driver's cwd: nothing shared with the server or the head
    work.mkdir()
    space = work / "space.yaml"
    space.write_text(space_yaml(name))
    cmd = lilnetx_cmd("sweep", str(space), "--address", cluster.address, "--tracking-uri", uri,
                      "--study-storage", cluster.study_storage, "--json")
    log = tmp_path / "driver.log"
    started = time.time()
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, cwd=work, env=base_env(), stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: finished(uri, name), 240, "first finished trial", proc, log, every=1)
    finally:  # kill -9 of the driver's whole process group (not the Ray head: its own session)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first = len(finished(uri, name))
    killed_at = time.time()
    assert 1 <= first < 4, f"{first} trials finished before the kill"

    # Resume from a fresh process; this time the cluster comes from the YAML's `cluster:`.
    space2 = work / "space-cluster.yaml"
    space2.write_text(space_yaml(name, cluster=(
        f"cluster: {{address: '{cluster.address}', tracking_uri: '{uri}',\n"
        f"          study_storage: '{cluster.study_storage}'}}\n")))
    out = subprocess.run(lilnetx_cmd("sweep", str(space2), "--resume", "--json"), cwd=work,
                         env=base_env(), capture_output=True, text=True, timeout=400,
                         start_new_session=True)
    assert out.returncode == 0, out.stderr[-4000:]
    res = json.loads(out.stdout)
    assert res["finished"] == 4, res
    print(f"\nfirst run: {killed_at - started:.0f} s ({first} finished at the kill); "
          f"resume: {time.time() - killed_at:.0f} s")

    # Exactly 4 finished child runs, one per study trial, none left RUNNING.
    runs = trial_runs(uri, name)
    done = [r for r in runs if r.info.status == "FINISHED"]
    assert len(done) == 4, sorted((r.data.tags["lilnetx.trial"], r.info.status) for r in runs)
    assert len({r.data.tags["lilnetx.trial"] for r in done}) == 4
    assert "RUNNING" not in {r.info.status for r in runs}
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {res["parent_run_id"]}

    # The study lives in PostgreSQL: exactly the 4 COMPLETE trials, nothing left open.
    study = optuna.load_study(study_name=res["studies"]["lilnetx"],
                              storage=cluster.study_storage)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 4, states
    assert not {"RUNNING", "WAITING"} & set(states), states
    complete = {str(t.number) for t in study.trials if t.state.name == "COMPLETE"}
    assert complete == {r.data.tags["lilnetx.trial"] for r in done}

    # Artifacts are proxied by the server (no path on a shared disk) and come back through it.
    c = tracking.client(uri)
    splits = lilnetx.create_dataset("digits")
    nets = {}
    for r in done:
        assert r.info.artifact_uri.startswith("mlflow-artifacts:"), r.info.artifact_uri
        assert {"model.lnx", "layers.json"} <= {a.path for a in c.list_artifacts(r.info.run_id)}
        dst = tmp_path / "fetched" / r.info.run_id
        dst.mkdir(parents=True)
        local = c.download_artifacts(r.info.run_id, "model.lnx", str(dst))
        net = lilnetx.load(local)
        assert lilnetx.evaluate_accuracy(net, splits.test) == pytest.approx(
            r.data.metrics["accuracy"], abs=1e-12)
        nets[r.info.run_id] = net

    # Registry export through the server, loaded back in a fresh process.
    best = res["front"][0]["run_id"]
    exp = subprocess.run(lilnetx_cmd("export", best, "--name", "lenet5-cluster",
                                     "--tracking-uri", uri),
                         cwd=work, env=base_env(), capture_output=True, text=True, timeout=180)
    assert exp.returncode == 0, exp.stderr[-3000:]
    version = c.get_model_version_by_alias("lenet5-cluster", "champion")
    assert version.tags["source_run"] == best
    x = torch.stack([splits.test[i][0] for i in range(16)]).numpy().astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code = ("import sys, mlflow, numpy as np\n"
            f"mlflow.set_tracking_uri({uri!r})\n"
            "m = mlflow.pyfunc.load_model('models:/lenet5-cluster@champion')\n"
            f"np.save(sys.argv[1], m.predict(np.load({str(tmp_path / 'x.npy')!r})))\n")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    got = subprocess.run([sys.executable, "-c", code, str(tmp_path / "y.npy")], cwd=fresh,
                         env=base_env(), capture_output=True, text=True, timeout=180)
    assert got.returncode == 0, got.stderr[-3000:]
    with torch.inference_mode():
        want = nets[best].eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want, rtol=1e-5, atol=1e-5)


def test_gpu_trial_gets_a_gpu_from_ray_and_uses_cuda(cluster, tmp_path):
    """``gpus_per_trial: 1``: Ray grants the trial the head's GPU and the trial trains on CUDA.
    On a machine without one the head's GPU is only a resource, so the trial must fail reaching
    for CUDA (not quietly train on the CPU), and the sweep records it and ends."""
    import torch

    uri, name = cluster.tracking_uri, "gpu"
    space = tmp_path / "gpu.yaml"
    space.write_text(space_yaml(name, n=1, gpus=1))
    out = subprocess.run(lilnetx_cmd("sweep", str(space), "--address", cluster.address,
                                     "--tracking-uri", uri, "--study-storage",
                                     cluster.study_storage, "--json"),
                         cwd=tmp_path, env=base_env(), capture_output=True, text=True,
                         timeout=300, start_new_session=True)
    # its only trial fails without a GPU: a sweep whose every trial failed exits 1
    assert out.returncode == (0 if torch.cuda.is_available() else 1), out.stderr[-4000:]
    res = json.loads(out.stdout)
    (run,) = trial_runs(uri, name)
    if torch.cuda.is_available():
        assert res["finished"] == 1 and run.info.status == "FINISHED"
    else:
        assert res["finished"] == 0 and res["failed"] == 1, res
        assert run.info.status == "FAILED"
        assert "NVIDIA" in run.data.tags["lilnetx.error"] or "CUDA" in run.data.tags[
            "lilnetx.error"], run.data.tags["lilnetx.error"]


def test_orphaned_trial_settled_by_a_resume_does_not_finish(tmp_path, monkeypatch):
    """A trial left running on the cluster by a dead driver, whose run a --resume has already
    marked KILLED (its study trial failed and replaced), must not turn it FINISHED afterwards:
    that would count one trial twice. Simulated here without Ray: the resume strikes just
    before the trial logs its final metrics."""
    from explorer import tracking, trial

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp_id = tracking.ensure_experiment(uri, "orphan")
    c = tracking.client(uri)
    parent = c.create_run(exp_id, tags={tracking.TAG_ROLE: "sweep", tracking.TAG_SWEEP: "s"})
    ctx = {"tracking_uri": uri, "experiment_id": exp_id, "parent_run_id": parent.info.run_id,
           "sweep": "s", "model": "lenet5", "dataset": "digits", "method": "lilnetx",
           "data_root": None, "objectives": {"accuracy": "max", "size_bytes": "min"},
           "fixed": {"epochs": 1, "batch_size": 128, "seed": 0, "limit": 256},
           "cpus_per_trial": 1, "device": "cpu", "gate_dir": str(tmp_path / "gate")}
    log_metrics = tracking.log_metrics

    def resume_strikes(uri_, run_id, metrics, step=0):
        if "size_bytes" in metrics:  # the final summary: a --resume settles the run first
            c.set_tag(run_id, tracking.TAG_ERROR, "driver stopped before the trial ended")
            c.set_terminated(run_id, "KILLED")
        log_metrics(uri_, run_id, metrics, step)

    monkeypatch.setattr(tracking, "log_metrics", resume_strikes)
    with pytest.raises(trial.SettledElsewhere):
        trial.run_trial({"lambda_rate": 1e-3, "optuna_trial": 1}, ctx)
    (run,) = tracking.child_runs(uri, exp_id, "s")
    assert run.info.status == "KILLED"
    assert run.data.tags[tracking.TAG_ERROR] == "driver stopped before the trial ended"


# ---------------------------------------------------------------------------------------------
# Unreachable cluster pieces: exit 2 with one `error:` line, fast (no fixture needed)

def _sweep_fails_fast(tmp_path, *args: str, cluster_yaml: str = "") -> str:
    space = tmp_path / "space.yaml"
    space.write_text(space_yaml("unreachable", cluster=cluster_yaml))
    t0 = time.time()
    out = subprocess.run(lilnetx_cmd("sweep", str(space), *args), cwd=tmp_path, env=base_env(),
                         capture_output=True, text=True, timeout=60)
    took = time.time() - t0
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-3000:]
    assert took < 30, took
    assert not (tmp_path / "mlflow.db").exists()  # nothing was created before the check
    return lines[0]


def test_unreachable_ray_address_exits_2_fast(tmp_path):
    line = _sweep_fails_fast(tmp_path, "--address", f"{HOST}:1",
                             "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert "Ray cluster" in line and f"{HOST}:1" in line and "unreachable" in line


def test_unreachable_ray_address_from_the_yaml_exits_2_fast(tmp_path):
    line = _sweep_fails_fast(tmp_path, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                             cluster_yaml=f"cluster: {{address: '{HOST}:1'}}\n")
    assert "Ray cluster" in line and "unreachable" in line


def test_unreachable_tracking_server_exits_2_fast(tmp_path):
    line = _sweep_fails_fast(tmp_path, "--tracking-uri", f"http://{HOST}:9")
    assert f"http://{HOST}:9" in line and "unreachable" in line
