"""Shared fixtures: small real data sets loaded once per session, threads, seeding."""

from __future__ import annotations

import os

import pytest
import torch
from _require import require

import lilnetx
from lilnetx.sources import DEBIAN_FASHION_MNIST

TEST_THREADS = int(os.environ.get("LILNETX_TEST_THREADS", "1"))
"""Intra-op threads of the test process and (through ``OMP_NUM_THREADS``) of the processes tests
start. One by default: on a small shared machine, OpenMP threads spin-waiting for a busy core make
small ops 10-50x slower, and no result depends on the thread count."""


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(TEST_THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed_torch():
    """Every test starts from the same global torch RNG state."""
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def subprocess_env() -> dict[str, str]:
    """Environment for a subprocess under test: this one, with the test thread count."""
    return {**os.environ, "OMP_NUM_THREADS": str(TEST_THREADS)}


@pytest.fixture(scope="session")
def digits() -> lilnetx.DataSplits:
    """scikit-learn's 8x8 digits (1797 images, 10 classes), default split, seed 0."""
    return lilnetx.create_dataset("digits")


@pytest.fixture(scope="session")
def digits_batch(digits) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 64 training images (64, 1, 8, 8) and labels (64,) of :func:`digits`."""
    x, y = next(lilnetx.iterate_batches(digits.train, 64, shuffle=False))
    return x, y


@pytest.fixture(scope="session")
def fashion_mnist_root() -> str:
    """Debian's Fashion-MNIST folder (skipped when missing; a failure under ``CI=true``)."""
    require(DEBIAN_FASHION_MNIST.is_dir(), f"Fashion-MNIST is not installed at "
            f"{DEBIAN_FASHION_MNIST} (apt-get install dataset-fashion-mnist, or make deps)")
    return str(DEBIAN_FASHION_MNIST)
