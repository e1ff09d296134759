"""The trial runs of an experiment, kept in memory and refreshed incrementally from MLflow.

A live page polls every few seconds, and a cluster sweep reaches thousands of runs: reading
every run again on each poll costs about a second per thousand runs on sqlite (MLflow builds an
object for every metric, parameter and tag row). :class:`RunCache` reads everything once and then
asks only for what can have changed:

1. the runs still ``RUNNING`` (their metrics grow as they train), one query;
2. the runs that ended since the last poll (``attributes.end_time`` after the last poll's
   watermark, less :data:`OVERLAP_MS` for clocks that disagree), one query, which leaves out
   (``attributes.run_id NOT IN``) the runs of the overlap that are already here: a finished
   run is not read again;
3. the runs that were ``RUNNING`` at the last poll and are in neither answer (ended with an end
   time older than the watermark, or deleted): fetched by id, one query, only when there are
   such runs.

So a poll with nothing new costs two small queries, on sqlite and on an MLflow server alike.
Sweep parents (their objectives) are read again only when a trial names a sweep not seen yet.
:meth:`RunCache.reload` reads everything again (deleted runs go away; the dashboard does it
every :data:`FULL_RELOAD_S` seconds). ``lilnetx pareto`` reads through the same cache once.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

from . import tracking

OVERLAP_MS = 30_000
"""How far before the last poll's watermark the "ended since" query starts (ms)."""
MAX_EXCLUDED = 2000
"""At most this many known run ids are excluded from the "ended since" query (its filter string
grows by 35 bytes per id; runs beyond it are read again, which is only slower)."""
FULL_RELOAD_S = 600.0
"""Seconds between full reloads of a long-lived cache (catches deleted runs)."""
PAGE = 1000


@dataclass
class RunRecord:
    """One trial run as the explorer uses it. Times in ms since the epoch (0: unknown)."""

    run_id: str
    name: str
    status: str
    sweep: str
    method: str
    trial: int
    start_time: int
    params: dict
    metrics: dict
    error: str = ""
    end_time: int = 0
    rev: int = 0
    """The cache refresh that last changed this record (for incremental figures)."""


def _number(v: str):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return int(f) if f.is_integer() and "." not in str(v) and "e" not in str(v).lower() else f


def record(run, rev: int = 0) -> RunRecord:
    """A :class:`RunRecord` of an MLflow ``Run``."""
    tags = run.data.tags
    try:
        trial = int(tags.get(tracking.TAG_TRIAL, -1))
    except ValueError:
        trial = -1
    return RunRecord(
        run_id=run.info.run_id, name=run.info.run_name or run.info.run_id[:8],
        status=run.info.status, sweep=tags.get(tracking.TAG_SWEEP, ""),
        method=tags.get(tracking.TAG_METHOD, "lilnetx"), trial=trial,
        start_time=run.info.start_time or 0,
        params={k: _number(v) for k, v in run.data.params.items()},
        metrics=dict(run.data.metrics), error=tags.get(tracking.TAG_ERROR, ""),
        end_time=run.info.end_time or 0, rev=rev)


def _same(a: RunRecord, b: RunRecord) -> bool:
    return (a.status == b.status and a.metrics == b.metrics and a.params == b.params
            and a.end_time == b.end_time and a.error == b.error and a.name == b.name)


@dataclass
class RefreshStats:
    """What one refresh did: queries sent, runs read, runs added or changed, seconds."""

    queries: int = 0
    read: int = 0
    changed: int = 0
    removed: int = 0
    full: bool = False
    seconds: float = 0.0


@dataclass
class RunCache:
    """The trial runs of experiment ``experiment_id`` at ``uri``, by run id.

    ``refresh()`` brings them up to date incrementally (see the module docstring) and returns
    :class:`RefreshStats`; ``version`` grows by one whenever a refresh changed anything, so a
    page can rebuild a figure only when its data changed. Thread-safe: one refresh at a time.
    """

    uri: str
    experiment_id: str
    runs: dict[str, RunRecord] = field(default_factory=dict)
    objectives: dict[str, dict] = field(default_factory=dict)
    version: int = 0
    last: RefreshStats | None = None
    _watermark: int = 0
    _others: dict[str, int] = field(default_factory=dict)
    """Ended runs that are not trials (sweep parents), by id: their end times."""
    _loaded_at: float = 0.0
    _sorted: tuple = (-1, [])
    _reloading: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _reload_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # ------------------------------------------------------------------ reading
    def _search(self, filt: str, stats: RefreshStats) -> list:
        from mlflow.entities import ViewType

        c = tracking.client(self.uri)
        out, token = [], None
        while True:
            page = c.search_runs([self.experiment_id], filter_string=filt,
                                 run_view_type=ViewType.ACTIVE_ONLY, max_results=PAGE,
                                 page_token=token)
            stats.queries += 1
            out.extend(page)
            token = page.token
            if not token:
                break
        stats.read += len(out)
        # the role filter is applied here, not in the query: one join less on every poll;
        # the ended runs of other roles (sweep parents) are remembered so that the "ended
        # since" query leaves them out too
        trials = []
        for r in out:
            if r.data.tags.get(tracking.TAG_ROLE) == "trial":
                trials.append(r)
            elif r.info.status != "RUNNING" and r.info.end_time:
                self._others[r.info.run_id] = r.info.end_time
        return trials

    def _read_parents(self, stats: RefreshStats) -> None:
        parents = tracking.client(self.uri).search_runs(
            [self.experiment_id], filter_string=f"tags.`{tracking.TAG_ROLE}` = 'sweep'",
            order_by=["attributes.start_time ASC"], max_results=PAGE)
        stats.queries += 1
        objectives = {}
        for p in parents:
            if p.info.status != "RUNNING" and p.info.end_time:
                self._others[p.info.run_id] = p.info.end_time
            try:
                objectives[p.data.tags[tracking.TAG_SWEEP]] = json.loads(
                    p.data.tags.get(tracking.TAG_OBJECTIVES, "{}"))
            except (KeyError, json.JSONDecodeError):
                continue
        self.objectives = objectives

    def _mark(self, ends: list[int], poll_ms: int) -> None:
        seen = max((e for e in ends if e), default=0)
        # the watermark never runs ahead of this machine's clock (a worker whose clock is
        # ahead would otherwise make later polls miss runs), nor behind what was seen
        self._watermark = max(self._watermark, min(seen, poll_ms) if seen else 0)

    def reload(self) -> RefreshStats:
        """Read every trial run and the sweep parents again. The store is read without holding
        the cache's lock, so refreshes may run meanwhile: a record they changed after the read
        began is kept over the (older) one read here."""
        with self._reload_lock:  # one full read at a time; a second caller waits for it
            return self._reload()

    def _reload(self) -> RefreshStats:
        t0 = time.perf_counter()
        stats = RefreshStats(full=True)
        poll_ms = int(time.time() * 1000)
        with self._lock:
            began = self.version
        snapshot = self._search(f"tags.`{tracking.TAG_ROLE}` = 'trial'", stats)
        with self._lock:
            rev = self.version + 1
            new: dict[str, RunRecord] = {}
            for r in snapshot:
                rec, old = record(r, rev), self.runs.get(r.info.run_id)
                if old is not None and (old.rev > began or _same(old, rec)):
                    new[rec.run_id] = old
                else:
                    new[rec.run_id] = rec
            for rid, old in self.runs.items():  # created by a refresh while this read ran
                if rid not in new and old.rev > began:
                    new[rid] = old
            stats.removed = len(set(self.runs) - set(new))
            stats.changed = sum(new[k] is not self.runs.get(k) for k in new)
            if stats.changed or stats.removed or not self._loaded_at:
                self.version = rev
            self.runs = new
            self._read_parents(stats)
            self._mark([r.end_time for r in new.values()], poll_ms)
            self._loaded_at = time.monotonic()
            stats.seconds = time.perf_counter() - t0
            self.last = stats
            return stats

    def _reload_quietly(self) -> None:
        try:
            self.reload()
        except Exception:  # the next poll reports a store that is down
            self._loaded_at = time.monotonic()
        finally:
            self._reloading = False

    def refresh(self, *, background: bool = False) -> RefreshStats:
        """Bring the runs up to date with two or three queries; a full read the first time, and
        again every :data:`FULL_RELOAD_S` s (``background``: in a thread, while this call and
        later ones stay incremental, so a page never waits for it)."""
        if not self._loaded_at:
            with self._reload_lock:
                if not self._loaded_at:  # not read by another caller meanwhile
                    return self._reload()
        if time.monotonic() - self._loaded_at > FULL_RELOAD_S:
            if not background:
                return self.reload()
            if not self._reloading:
                self._reloading = True
                threading.Thread(target=self._reload_quietly, daemon=True,
                                 name="lilnetx-run-reload").start()
        with self._lock:
            t0 = time.perf_counter()
            stats = RefreshStats()
            poll_ms = int(time.time() * 1000)
            since = self._watermark - OVERLAP_MS
            running = self._search("attributes.status = 'RUNNING'", stats)
            # runs that ended in the overlap and are already here are not read again: a
            # finished run does not change (a full reload catches anything written later)
            seen = [rid for rid, rec in self.runs.items()
                    if rec.status != "RUNNING" and rec.end_time > since]
            seen += [rid for rid, end in self._others.items() if end > since]
            filt = (f"attributes.end_time > {since}" if since > 0
                    else "attributes.status != 'RUNNING'")
            if seen:
                filt += " AND attributes.run_id NOT IN ({})".format(
                    ", ".join(f"'{rid}'" for rid in seen[-MAX_EXCLUDED:]))
            ended = self._search(filt, stats)
            got = {r.info.run_id: r for r in ended}
            got.update({r.info.run_id: r for r in running})
            # runs that were running and are in neither answer: ended with an older end time
            # (a clock behind), or deleted
            lost = [rid for rid, rec in self.runs.items()
                    if rec.status == "RUNNING" and rid not in got]
            if lost:
                ids = ", ".join(f"'{rid}'" for rid in lost)
                for r in self._search(f"attributes.run_id IN ({ids})", stats):
                    got[r.info.run_id] = r
            rev = self.version + 1
            changed = 0
            new_sweep = False
            for rid, run in got.items():
                rec = record(run, rev)
                old = self.runs.get(rid)
                if old is not None and _same(old, rec):
                    continue
                if rec.sweep and rec.sweep not in self.objectives:
                    new_sweep = True
                self.runs[rid] = rec
                changed += 1
            removed = [rid for rid in lost if rid not in got]
            for rid in removed:
                del self.runs[rid]
            if new_sweep:
                self._read_parents(stats)
            if changed or removed:
                self.version = rev
            self._mark([r.info.end_time or 0 for r in got.values()], poll_ms)
            stats.changed, stats.removed = changed, len(removed)
            stats.seconds = time.perf_counter() - t0
            self.last = stats
            return stats

    # ------------------------------------------------------------------ views
    def records(self) -> list[RunRecord]:
        """The runs, oldest first (by start time, then trial number); a new list, sorted once
        per :attr:`version`."""
        with self._lock:
            if self._sorted[0] != self.version or len(self._sorted[1]) != len(self.runs):
                self._sorted = (self.version, sorted(self.runs.values(),
                                                     key=lambda r: (r.start_time, r.trial)))
            return list(self._sorted[1])

    @property
    def sweeps(self) -> list[str]:
        """Sweep ids, oldest first."""
        return list(self.objectives)


_CACHES: dict[tuple[str, str], RunCache] = {}
_CACHES_LOCK = threading.Lock()


def cache_for(uri: str, experiment_id: str) -> RunCache:
    """The process-wide :class:`RunCache` of one experiment (created empty, filled on the first
    refresh)."""
    with _CACHES_LOCK:
        key = (uri, experiment_id)
        if key not in _CACHES:
            _CACHES[key] = RunCache(uri, experiment_id)
        return _CACHES[key]
