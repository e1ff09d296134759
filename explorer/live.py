"""The live terminal view of a sweep: trials done, running and failed, elapsed and estimated
time, and the current front, on standard error."""

from __future__ import annotations

import time

from ray.tune import Callback

from .pareto import nondominated, search_metric


class LiveView(Callback):
    """A Ray Tune callback that redraws a rich table as trials start and end."""

    def __init__(self, space, total: int, enabled: bool = True, method: str = ""):
        self.space, self.total, self.enabled, self.method = space, total, enabled, method
        self.running: set[str] = set()
        self.done: list[dict] = []
        self.failed = 0
        self.start = time.time()
        self._live = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self._render(), console=Console(stderr=True), refresh_per_second=2)
            self._live.__enter__()
        return self

    def __exit__(self, *exc):
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(*exc)

    def _render(self):
        from rich.table import Table

        elapsed = time.time() - self.start
        finished = len(self.done) + self.failed
        eta = (elapsed / finished * (self.total - finished)) if finished else float("nan")
        t = Table(title=(f"sweep {self.space.name} [{self.method}]: {len(self.done)} done, {len(self.running)} "
                         f"running, {self.failed} failed of {self.total} | elapsed "
                         f"{elapsed:,.0f}s, remaining ~{eta:,.0f}s"))
        objectives = self.space.objectives
        for o in objectives:
            t.add_column(f"{search_metric(o)} ({objectives[o]})", justify="right")
        t.add_column("params")
        if self.done:
            for i in nondominated(self.done, objectives):
                r = self.done[i]
                t.add_row(*[f"{r[search_metric(o)]:.4g}" for o in objectives],
                          ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                    for k, v in r["config"].items() if k != "optuna_trial"))
        return t

    def _refresh(self):
        if self._live is not None:
            self._live.update(self._render())

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)
        self._refresh()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        result = trial.last_result or {}
        if all(search_metric(o) in result for o in self.space.objectives):
            self.done.append({**result, "config": dict(trial.config)})
        self._refresh()

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self.failed += 1
        self._refresh()
