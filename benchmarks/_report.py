"""Shared helpers of the benchmark scripts: the machine description and the marked sections of
``docs/benchmarks.md``.

Every benchmark owns one section of the markdown file, delimited by ``<!-- NAME:start -->`` and
``<!-- NAME:end -->``; :func:`write_section` replaces that section (or appends it) and leaves the
rest of the file as it was. The file is written to a temporary name and renamed, so a reader (or
another benchmark writing its own section) never sees half a file.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

TITLE = "# Benchmarks\n"


def markers(name: str) -> tuple[str, str]:
    """The start and end markers of section ``name``."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def publish(text: str, path: str | os.PathLike, name: str, *, write: bool = True) -> None:
    """Print a benchmark's markdown and, with ``write``, make it section ``name`` of ``path``."""
    import sys

    print(text)
    if write:
        write_section(path, name, text)
        print(f"wrote section {name!r} of {path}", file=sys.stderr)


def write_section(path: str | os.PathLike, name: str, body: str) -> None:
    """Replace section ``name`` of the markdown file ``path`` with ``body`` (or append it).

    ``body`` is the text between the markers (the markers are added here). A missing file is
    created with a ``# Benchmarks`` title. Other sections and text are kept byte for byte. The new
    file is written next to the old one and renamed over it (atomic on POSIX).
    """
    path = Path(path)
    start, end = markers(name)
    section = f"{start}\n{body.strip(chr(10))}\n{end}"
    text = path.read_text() if path.exists() else TITLE
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or the platform's answer elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def vector_isa() -> str:
    """The widest x86 vector extension the CPU reports (``AVX-512``, ``AVX2``, ``AVX``), or
    ``""`` (another architecture, or no /proc/cpuinfo): it decides the channel block of the
    conv kernels (oneDNN and ONNX Runtime's NCHWc use 16 channels on AVX-512, 8 on AVX2)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
            else:
                return ""
    except OSError:
        return ""
    for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX")):
        if flag in flags:
            return name
    return ""


def machine() -> dict:
    """CPU model, logical cores (visible to this process), torch/numpy/Python versions."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    return {"cpu": cpu_model(), "isa": vector_isa(), "cores": cores, "torch": torch.__version__,
            "numpy": np.__version__, "python": platform.python_version(),
            "system": f"{platform.system()} {platform.machine()}"}


def machine_line(info: dict | None = None) -> str:
    """One markdown sentence describing the machine."""
    info = info or machine()
    isa = f" ({info['isa']})" if info.get("isa") else ""
    return (f"Machine: {info['cpu']}{isa}, {info['cores']} logical cores, {info['system']}, "
            f"torch {info['torch']}, numpy {info['numpy']}, Python {info['python']}.")


def command_line(script: str, argv: list[str] | None = None) -> str:
    """The shell command that reruns ``script`` with the same arguments."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", script, shlex.join(args)]).strip()


__all__ = ["command_line", "cpu_model", "machine", "machine_line", "markers", "write_section"]


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg gives them."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"
