"""Hostile input to the ``lilnetx`` CLI: exit code, wall time and peak memory of a fresh process.

Every hostile input the project refuses (``.lnx`` files for ``lilnetx inspect|evaluate|slim``,
search spaces for ``lilnetx sweep``, and two sweeps the preflight refuses) is built in a
temporary directory with the builders of ``tests/test_hostile_files.py``,
``tests/test_hostile_space.py`` and ``tests/test_sweep_preflight.py`` and handed to a fresh
``lilnetx`` process, whose exit code, wall time, peak RSS and first line of stderr are recorded.
Each must exit 2 with exactly one ``error:`` line on stderr (a sweep must also leave no MLflow
database behind); any other outcome is a FAIL row, and the script exits 1. Baselines: the same
``inspect``, ``evaluate`` and ``slim`` commands on the valid file the hostile files are made
from, i.e. the cost of starting the CLI and importing torch.

Linux carries a process's peak RSS over fork and exec into its child's ``ru_maxrss``, so a
``lilnetx`` started by this (large: torch is imported) process would report at least this
process's peak. Every command is therefore started by a small launcher (a Python without torch,
:data:`LAUNCHER`) that runs it, times it and reports ``RUSAGE_CHILDREN``: the peak of that
command alone. The launcher runs under an 8 GiB address-space limit (as the CLI tests do), so a
runaway allocation ends in a FAIL row rather than swapping a shared machine; each command is
killed after ``--timeout`` seconds (a blocking read, e.g. of a named pipe, is a FAIL row too).
The packages (``lilnetx``, ``explorer``, ``dashboards``) are copied from the working tree at the
start and every command runs that copy (``python -m explorer.cli`` with it first on
``PYTHONPATH``), so that the rows compare the same code while the tree is being edited
(``--no-snapshot``: the installed ``lilnetx`` on the live tree).

    python benchmarks/hostile_input.py                           # the section on stdout
    python benchmarks/hostile_input.py --out docs/benchmarks.md  # (re)write the `hostile` section
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests"))

from _report import command_line, loadavg, machine, machine_line, write_section  # noqa: E402

SECTION = "hostile"
TITLE = "Hostile input: bounded time and memory"
ADDRESS_SPACE = 8 << 30
STDERR_CHARS = 110
LIGHT_MB = 200  # a sweep refusal below this peak did not import torch
IMPORTS = ("torch", "torch, torchvision")  # reference: the peak of these imports alone
PACKAGES = ("lilnetx", "explorer", "dashboards")  # copied by snapshot()

# The test modules with the builders, imported by load_tests() (after snapshot(), so that they
# and the commands use the same copy of the packages).
hf = hs = None
PREFLIGHT_SPACE = ""

LAUNCHER = r"""
import json, resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:]).returncode
seconds = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"returncode": code, "seconds": seconds, "peak_mb": usage.ru_maxrss / 1024}))
"""


# ----------------------------------------------------------------------------- the cases


@dataclass
class Case:
    """One command on one input. ``make(folder, files)`` writes the input into ``folder`` and
    returns the argument to pass (a name relative to ``folder``, the command's cwd)."""

    name: str
    command: str  # inspect | evaluate | slim | sweep
    make: Callable[[Path, dict], str]
    baseline: bool = False
    extra: list[str] = field(default_factory=list)


def lnx(build) -> Callable[[Path, dict], str]:
    """An input written from the bytes ``build(files)`` returns."""
    def make(folder: Path, files: dict) -> str:
        (folder / "model.lnx").write_bytes(build(files))
        return "model.lnx"
    return make


def valid_lnx(folder: Path, files: dict) -> str:
    (folder / "model.lnx").write_bytes(files["lenet5"])
    return "model.lnx"


def dev_zero(folder: Path, files: dict) -> str:
    return "/dev/zero"


def sparse_3gib(folder: Path, files: dict) -> str:
    hf.big_file(folder / "model.lnx", files)  # the lenet5 bytes, then truncate() to 3 GiB
    return "model.lnx"


def fifo(folder: Path, files: dict) -> str:
    os.mkfifo(folder / "model.lnx")  # no writer: a reader that opens it blocks
    return "model.lnx"


def yaml(content: str | bytes | Callable[[], str]) -> Callable[[Path, dict], str]:
    def make(folder: Path, files: dict) -> str:
        hs.write(folder, content() if callable(content) else content)
        return "space.yaml"
    return make


def big_yaml(folder: Path, files: dict) -> str:
    return hs.write_big(folder).name  # 50 MB


def preflight(model: str, dataset: str, extra: str = "") -> Callable[[Path, dict], str]:
    return yaml(PREFLIGHT_SPACE.format(model=model, dataset=dataset, cpus=1, gpus=0, extra=extra))


def load_tests() -> None:
    global hf, hs, PREFLIGHT_SPACE
    import test_hostile_files
    import test_hostile_space
    import test_sweep_preflight

    hf, hs = test_hostile_files, test_hostile_space
    PREFLIGHT_SPACE = test_sweep_preflight.BASE


def cases() -> list[Case]:
    return [
        Case("valid LeNet-5 file (baseline)", "inspect", valid_lnx, baseline=True),
        Case("valid LeNet-5 file (baseline)", "evaluate", valid_lnx, baseline=True,
             extra=["--dataset", "digits"]),
        Case("valid LeNet-5 file (baseline)", "slim", valid_lnx, baseline=True),
        # .lnx files
        Case("arch resnet20 width 40 (435M parameters)", "inspect",
             lnx(hf.CASES["arch resnet20 width 40 (435M parameters)"])),
        Case("arch tv:vit_h_14 (632M parameters)", "inspect",
             lnx(hf.CASES["arch tv:vit_h_14 (632M parameters)"])),
        Case("arch mlp image_size 1448 (629M parameters)", "inspect",
             lnx(hf.CASES["arch mlp image_size 1448 (629M parameters)"])),
        Case("group rows disagree with its layers (2.4 GB decoded)", "evaluate",
             lnx(hf.rows_bomb), extra=["--dataset", "digits"]),
        Case("index integer of 5000 digits", "slim", lnx(hf.CASES["index integer of 5000 digits"])),
        Case("index zlib bomb (60 MB of JSON)", "inspect", lnx(hf.json_flood)),
        Case("arch nested 500 deep", "inspect", lnx(hf.deep_json)),
        Case("NaN in a stored bias", "inspect", lnx(hf.CASES["NaN bias"])),
        Case("Inf in the conv decoder", "inspect", lnx(hf.bad_decoder("lenet5", float("inf"), 3))),
        Case("/dev/zero", "inspect", dev_zero),
        Case("3 GiB sparse file", "inspect", sparse_3gib),
        Case("named pipe (no writer)", "inspect", fifo),
        # search spaces
        Case("billion laughs, depth 9 (10^10 strings)", "sweep", yaml(lambda: hs.bomb(9))),
        Case("50 MB file", "sweep", big_yaml),
        Case("non-UTF-8 byte", "sweep",
             yaml(hs.HEAD.encode() + b"description: caf\xe9\nparams: {lr: 0.01}\n")),
        Case("nesting 10,000 deep", "sweep",
             yaml(lambda: hs.HEAD + "params: {lr: " + "[" * 10_000 + "1" + "]" * 10_000 + "}\n")),
        Case("non-scalar key `? [a, b] : 1`", "sweep",
             yaml(hs.HEAD + "params:\n  lr: 0.01\n  ? [a, b]\n  : 1\n")),
        Case("integer of 5,000 digits", "sweep",
             yaml(lambda: hs.HEAD + "params: {lr: 0.01, seed: " + "9" * 5_000 + "}\n")),
        Case("model name of 100 kB", "sweep", yaml(lambda: hs.VALID.replace("lenet5", "m" * 100_000))),
        # sweeps the preflight refuses
        Case("preflight: `data_root: /nonexistent`", "sweep",
             preflight("lenet5", "fashion_mnist", "data_root: /nonexistent")),
        Case("preflight: tv:alexnet on digits (8x8)", "sweep", preflight("tv:alexnet", "digits")),
    ]


# ----------------------------------------------------------------------------- measuring


CODE: Path | None = None
"""The copy of the packages every command runs (None: the installed ``lilnetx`` as it is)."""


def snapshot(folder: Path) -> Path:
    """Copy :data:`PACKAGES` of the working tree into ``folder``: the code is edited while the
    benchmark runs, and every row (baselines included) must measure the same code."""
    import shutil

    for name in PACKAGES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, folder / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return folder


def lilnetx() -> list[str]:
    if CODE is not None:
        return [sys.executable, "-m", "explorer.cli"]
    exe = Path(sys.executable).with_name("lilnetx")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "explorer.cli"]


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    if CODE is not None:  # ahead of the editable install's finder (which comes after sys.path)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(CODE), env.get("PYTHONPATH")) if p)
    return env


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def launch(cmd: list[str], cwd: Path, timeout: float) -> dict:
    """Run ``cmd`` in ``cwd`` under :data:`LAUNCHER`: exit code (None on timeout), seconds,
    peak RSS in MB, stderr."""
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, *cmd], cwd=cwd, env=child_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace",
                            start_new_session=True, preexec_fn=_limit_address_space)
    start = time.perf_counter()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher's own session: it and the command
        _, err = proc.communicate()
        return {"returncode": None, "seconds": time.perf_counter() - start, "peak_mb": None,
                "stderr": err}
    lines = out.strip().splitlines()
    try:
        usage = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        usage = {"returncode": f"launcher {proc.returncode}", "seconds": None, "peak_mb": None}
    return {**usage, "stderr": err}


def verdict(case: Case, res: dict, folder: Path, timeout: float) -> str:
    """``ok``, or ``FAIL: why``."""
    if res["returncode"] is None:
        return f"FAIL: killed after {timeout:.0f} s"
    lines = [line for line in res["stderr"].splitlines() if line.strip()]
    if case.baseline:
        return "ok" if res["returncode"] == 0 else f"FAIL: exit {res['returncode']}"
    problems = []
    if res["returncode"] != 2:
        problems.append(f"exit {res['returncode']}")
    if len(lines) != 1 or not lines[0].startswith("error:"):
        problems.append(f"{len(lines)} stderr lines" if len(lines) != 1 else "no `error:`")
    if case.command == "sweep" and (folder / "mlflow.db").exists():
        problems.append("created mlflow.db")
    if case.command == "sweep" and (folder / ".lilnetx").exists():
        problems.append("started Ray Tune")
    return "FAIL: " + ", ".join(problems) if problems else "ok"


def run_case(case: Case, files: dict, root: Path, index: int, repeats: int,
             timeout: float) -> dict:
    folder = root / f"case{index:02d}"
    folder.mkdir()
    arg = case.make(folder, files)
    args = [case.command, arg, *case.extra]
    if case.command == "sweep":
        args += ["--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}"]
    runs = []
    try:
        for _ in range(repeats):
            res = launch([*lilnetx(), *args], folder, timeout)
            res["verdict"] = verdict(case, res, folder, timeout)
            runs.append(res)
            if res["returncode"] is None:
                break  # one timeout is enough
    finally:
        target = folder / arg
        if arg != "/dev/zero" and (target.is_fifo() or target.stat().st_size > 1 << 30):
            target.unlink()  # the named pipe and the 3 GiB sparse file go at once
    last = runs[-1]
    seconds = [r["seconds"] for r in runs if r["seconds"] is not None]
    peaks = [r["peak_mb"] for r in runs if r["peak_mb"] is not None]
    failed = [r["verdict"] for r in runs if r["verdict"] != "ok"]
    lines = [line for line in last["stderr"].splitlines() if line.strip()]
    shown = ["lilnetx", case.command, arg, *case.extra]
    return {"input": case.name, "command": " ".join(shown), "baseline": case.baseline,
            "sweep": case.command == "sweep", "kind": case.command,
            "returncode": last["returncode"], "stderr_lines": len(lines),
            "seconds": statistics.median(seconds) if seconds else None,
            "peak_mb": max(peaks) if peaks else None,
            "stderr": lines[0].replace(str(root), "$TMP") if lines else "",
            "verdict": failed[0] if failed else "ok", "repeats": len(runs),
            "stderr_tail": last["stderr"].splitlines()[-20:]}


# ----------------------------------------------------------------------------- the section


def cell(text: str) -> str:
    """``text`` cut to :data:`STDERR_CHARS` characters, as a code span inside a table cell."""
    if len(text) > STDERR_CHARS:
        text = text[:STDERR_CHARS - 1].rstrip() + "…"
    if not text:
        return ""
    text = text.replace("|", "\\|")
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def code_version() -> str:
    """The commit of the working tree and whether it had uncommitted changes (read-only git)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *PACKAGES], cwd=REPO,
                               text=True, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    n = len(dirty.splitlines())
    where = ", ".join(f"`{p}/`" for p in PACKAGES)
    return f"commit {head}" + (f" plus {n} changed or new files in {where}" if n else "")


def fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def markdown(rows: list[dict], settings: dict, command: str) -> str:
    base = {r["kind"]: r["peak_mb"] for r in rows if r["baseline"]}
    hostile = [r for r in rows if not r["baseline"]]
    fails = [r for r in rows if r["verdict"] != "ok"]
    lnx_rows = [r for r in hostile if not r["sweep"]]
    yaml_rows = [r for r in hostile if r["sweep"] and not r["input"].startswith("preflight")]
    pre_rows = [r for r in hostile if r["input"].startswith("preflight")]

    def growth(r: dict) -> float | None:
        ref = base.get(r["kind"], base.get("inspect"))
        return None if r["peak_mb"] is None or ref is None else r["peak_mb"] - ref

    def worst(rs: list[dict], key, digits: int = 1) -> str:
        values = [key(r) for r in rs if key(r) is not None]
        return "—" if not values else f"{max(values):.{digits}f}"

    code = settings["code"] + (", copied at the start of the run, so that every row runs the "
                               "same code" if settings["snapshot"] else "")
    lines = [
        f"## {TITLE}",
        "",
        "Every hostile input the project refuses, given to a fresh `lilnetx` process: its exit "
        "code, wall time, peak memory and first line of stderr. Each hostile input must exit 2 "
        "with exactly one stderr line, starting with `error:`; a baseline (the same command on "
        "the valid file the hostile `.lnx` files are made from: LeNet-5 for 8x8 digits) must "
        "exit 0. Anything else is a **FAIL** row.",
        "",
        machine_line(settings["machine"]) + " Load average before / after: "
        f"{settings['loadavg_before']} / {settings['loadavg_after']} (a shared machine: the wall "
        "times are noisy).",
        "",
        f"Code: {code}. Reproduce: `{command}` (took {settings['total_s']:.0f} s).",
        "",
        f"- Inputs: built in a temporary directory (`$TMP`) by the builders of "
        "`tests/test_hostile_files.py`, `tests/test_hostile_space.py` and "
        "`tests/test_sweep_preflight.py`; each command runs in a directory of its own, as "
        f"`{settings['cli']} ARGS`, under an 8 GiB address-space limit and a "
        f"{settings['timeout']:.0f} s timeout. `sweep` commands also get `--tracking-uri "
        "sqlite:///<their directory>/mlflow.db` and must leave no `mlflow.db` (and no Ray Tune "
        "directory) behind.",
        "- `wall s`: the whole process, from start to exit, Python start-up and imports included"
        + (f" (median of {settings['repeats']} runs; `peak RSS`: the largest)"
           if settings["repeats"] > 1 else "") + ".",
        "- `peak RSS`: the process's `ru_maxrss`, reported by a small launcher process without "
        "torch that starts it (Linux copies a parent's peak into its child's `ru_maxrss`, so a "
        "child of the benchmark itself would report the benchmark's peak). `over baseline`: "
        "minus the peak of the baseline of the same command (for `sweep`: of `inspect`).",
        f"- Stderr lines are cut to {STDERR_CHARS} characters.",
        "",
        "| input | command | exit | wall s | peak RSS MB | over baseline MB | stderr, first line "
        "| check |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        g = "" if r["baseline"] else fmt(growth(r), "+.0f")
        check = r["verdict"] if r["verdict"] == "ok" else f"**{r['verdict']}**"
        name = f"**{r['input']}**" if r["baseline"] else r["input"]
        lines.append(f"| {name} | `{r['command']}` | {r['returncode']} | "
                     f"{fmt(r['seconds'], '.2f')} | {fmt(r['peak_mb'], '.0f')} | {g} | "
                     f"{cell(r['stderr'])} | {check} |")
    lines.append("")
    if fails:
        lines.append(f"**{len(fails)} of {len(rows)} rows FAILED:** "
                     + "; ".join(f"{r['input']} (`{r['command']}`): {r['verdict']}"
                                 for r in fails) + ".")
    else:
        lines.append(f"All {len(hostile)} hostile inputs exit 2 with one `error:` line, and the "
                     f"{len(rows) - len(hostile)} baselines exit 0.")
    light = [r for r in yaml_rows if r["peak_mb"] is not None and r["peak_mb"] < LIGHT_MB]
    heavy = [r for r in yaml_rows if r not in light]
    imports = settings["imports"]
    above = [r for r in lnx_rows if (growth(r) or 0) > 0]
    top = [growth(r) for r in lnx_rows if growth(r) is not None]
    over = ("never above the baseline of the same command" if top and max(top) <= 0 else
            f"at most {worst(lnx_rows, growth, 0)} MB above the baseline of the same command")
    lines += [
        "",
        f"- `.lnx` files ({len(lnx_rows)}): at most {worst(lnx_rows, lambda r: r['seconds'])} s "
        f"and {worst(lnx_rows, lambda r: r['peak_mb'], 0)} MB, {over} (baselines: "
        + ", ".join(f"`{k}` {v:.0f} MB" for k, v in base.items() if v is not None)
        + "). For scale, a fresh `python -c 'import torch'` peaks at "
        f"{fmt(imports.get('torch'), '.0f')} MB here, and `python -c 'import torch, "
        f"torchvision'` at {fmt(imports.get('torch, torchvision'), '.0f')} MB: what a refusal "
        "costs is the start-up."
        + (" Above the baseline: " + ", ".join(f"{r['input']} ({fmt(growth(r), '+.0f')} MB)"
                                               for r in above)
           + "; torchvision (which a `tv:` architecture needs) adds "
           + fmt(_diff(imports.get("torch, torchvision"), imports.get("torch")), ".0f")
           + " MB to the peak of torch by itself." if above else "")
        + " The files claim networks of hundreds of millions of parameters, decode to "
        "gigabytes, or never end; each is refused before anything of that size is allocated or "
        "read.",
        f"- Search spaces ({len(yaml_rows)}): the {len(light)} refused while the YAML is read "
        f"take at most {worst(light, lambda r: r['seconds'])} s and "
        f"{worst(light, lambda r: r['peak_mb'], 0)} MB: `lilnetx sweep` reads and checks the "
        "file before it imports torch."
        + (" Refused after torch is imported: " + "; ".join(
            f"{r['input']} ({fmt(r['peak_mb'], '.0f')} MB, {fmt(r['seconds'], '.1f')} s)"
            for r in heavy) + "." if heavy else ""),
        f"- Preflight ({len(pre_rows)}): at most {worst(pre_rows, lambda r: r['seconds'])} s and "
        f"{worst(pre_rows, lambda r: r['peak_mb'], 0)} MB: the spaces are valid YAML; the "
        "preflight builds the model and looks for the data, and refuses before Ray or MLflow "
        "start.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs of each command (median time, largest peak; default 1)")
    ap.add_argument("--timeout", type=float, default=60.0,
                    help="seconds before a command is killed (default 60)")
    ap.add_argument("--json", action="store_true", help="also print the rows as JSON")
    ap.add_argument("--out", type=Path, default=None,
                    help="markdown file whose `hostile` section to (re)write")
    ap.add_argument("--no-snapshot", action="store_true",
                    help="run the installed lilnetx on the live working tree (default: a copy "
                         "of its packages, taken at the start, so every row runs the same code)")
    args = ap.parse_args(argv)
    global CODE
    tmp = tempfile.TemporaryDirectory(prefix="lnx-hostile-bench-")
    root = Path(tmp.name)
    if not args.no_snapshot:
        CODE = snapshot(root / "code")
        sys.path.insert(0, str(CODE))
    load_tests()
    settings = {"machine": machine(), "repeats": args.repeats, "timeout": args.timeout,
                "loadavg_before": loadavg(), "code": code_version(),
                "snapshot": CODE is not None, "cli": " ".join(Path(c).name for c in lilnetx())}
    start = time.perf_counter()
    rows = []
    with tmp:
        (root / "base").mkdir()
        files = hf.make_files(root / "base")
        settings["imports"] = {}
        for modules in IMPORTS:
            res = launch([sys.executable, "-c", f"import {modules}"], root, args.timeout)
            settings["imports"][modules] = res["peak_mb"]
            print(f"      python -c 'import {modules}': {fmt(res['peak_mb'], '.0f')} MB, "
                  f"{fmt(res['seconds'], '.2f')} s", flush=True)
        for i, case in enumerate(cases()):
            row = run_case(case, files, root, i, args.repeats, args.timeout)
            rows.append(row)
            print(f"{row['verdict']:>4s}  {row['command']:<45.45s} {row['input']:<45.45s} exit "
                  f"{row['returncode']}  {fmt(row['seconds'], '6.2f')} s  "
                  f"{fmt(row['peak_mb'], '6.0f')} MB  {row['stderr'][:80]}", flush=True)
            if row["verdict"] != "ok":
                print("      stderr: " + "\n      ".join(row["stderr_tail"]), flush=True)
    settings["total_s"] = time.perf_counter() - start
    settings["loadavg_after"] = loadavg()
    if args.json:
        print(json.dumps({"settings": settings, "rows": rows}, indent=2))
    text = markdown(rows, settings, command_line("benchmarks/hostile_input.py", argv))
    if args.out is not None:
        write_section(args.out, SECTION, text)
        print(f"wrote the `{SECTION}` section of {args.out}")
    else:
        print()
        print(text)
    return 1 if any(r["verdict"] != "ok" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
