"""lilnetx.allocator: glibc keeps the memory a step frees, so the next step does not fault it
in again. Each case runs in a fresh interpreter (the setting is process-wide)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_PROBE = r"""
import json, os, resource, sys
import torch
from lilnetx.allocator import keep_freed_memory
applied = keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):  # 64 MB, above glibc's largest mmap threshold; the heap settles
    x = torch.ones(16 << 20)  # (aligned allocations fragment it for the first 6-8)
    del x
before = faults()
for _ in range(3):
    x = torch.ones(16 << 20)
    del x
print(json.dumps({"applied": applied, "again": keep_freed_memory(),
                  "faults": (faults() - before) / 3}))
"""


def _probe(env_value: str | None) -> dict:
    env = dict(os.environ)
    env.pop("LILNETX_KEEP_FREED_MEMORY", None)
    if env_value is not None:
        env["LILNETX_KEEP_FREED_MEMORY"] = env_value
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                         env=env, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_tensors_are_reused_without_page_faults():
    kept, default = _probe(None), _probe("0")
    assert kept["applied"] and kept["again"]
    assert not default["applied"]
    # 64 MB is 16,384 pages: glibc unmaps and maps it again each time unless told to keep it
    assert default["faults"] > 10_000
    assert kept["faults"] < 1_000
