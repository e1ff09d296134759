"""A per-machine gate so latency is never timed while other trials train on the same cores.

Training trials hold a *shared* lock on ``gate.lock`` and call :meth:`CoreGate.checkpoint`
between steps. A trial that wants to time a model creates ``pause`` (serialized by
``measure.lock``), then takes the *exclusive* lock, which it gets once every trainer has reached a
checkpoint and let go. Trainers wait while ``pause`` exists, then take their shared lock back.
POSIX ``flock`` locks vanish with their process, so a killed trial never blocks the others.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager


class CoreGate:
    """Cooperative exclusive access to this machine's cores, through files in ``directory``."""

    def __init__(self, directory: str):
        os.makedirs(directory, exist_ok=True)
        self.dir = directory
        self._gate = open(os.path.join(directory, "gate.lock"), "a+")  # noqa: SIM115
        self._shared = False

    @property
    def _pause(self) -> str:
        return os.path.join(self.dir, "pause")

    def _paused(self) -> bool:
        """A measurement is waiting or running (a pause file left by a dead process is removed)."""
        try:
            with open(self._pause) as f:
                pid = int(f.read() or 0)
        except (FileNotFoundError, ValueError):
            return os.path.exists(self._pause)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            try:
                os.unlink(self._pause)
            except FileNotFoundError:
                pass
            return False
        except PermissionError:
            pass
        return True

    def enter(self) -> None:
        """Start training: wait while someone measures, then hold the shared lock."""
        while self._paused():
            time.sleep(0.05)
        fcntl.flock(self._gate, fcntl.LOCK_SH)
        self._shared = True

    def checkpoint(self) -> None:
        """Between training steps: step aside if a measurement is waiting."""
        if self._shared and self._paused():
            fcntl.flock(self._gate, fcntl.LOCK_UN)
            self._shared = False
            while self._paused():
                time.sleep(0.02)
            fcntl.flock(self._gate, fcntl.LOCK_SH)
            self._shared = True

    def leave(self) -> None:
        if self._shared:
            fcntl.flock(self._gate, fcntl.LOCK_UN)
            self._shared = False

    @contextmanager
    def exclusive(self):
        """Hold the machine alone (no trainer between steps) for the duration of the block."""
        self.leave()
        with open(os.path.join(self.dir, "measure.lock"), "a+") as m:
            fcntl.flock(m, fcntl.LOCK_EX)
            try:
                with open(self._pause, "w") as f:
                    f.write(str(os.getpid()))
                fcntl.flock(self._gate, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(self._gate, fcntl.LOCK_UN)
            finally:
                try:
                    os.unlink(self._pause)
                except FileNotFoundError:
                    pass
                fcntl.flock(m, fcntl.LOCK_UN)

    def close(self) -> None:
        self.leave()
        self._gate.close()
