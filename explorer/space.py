"""Search spaces: YAML files over the LilNetX tradeoff, validated with a schema.

See the README for the form. Every error names the field path (``params.lambda_rate``) and what
is allowed; nothing starts before the whole file is valid.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from lilnetx.errors import ConfigError

from .pareto import search_metric
from .safe_yaml import clip, load_file, show

TRAIN_KEYS = ("epochs", "batch_size", "lr", "prior_lr", "lambda_rate", "lambda_sparsity",
              "lambda_l2", "lambda_channel", "channel_scope", "channel_finetune", "channel_solver",
              "channel_rewind", "channel_block", "channel_cost", "channel_round_to",
              "channel_round", "warmup_epochs", "seed", "rate_table")
"""Hyperparameters of :class:`lilnetx.TrainConfig` a space may fix or search."""
SPEC_KEYS = ("width", "limit", "val_fraction")
"""Hyperparameters of :class:`lilnetx.experiment.RunSpec` a space may fix or search."""
_INT_KEYS = ("epochs", "batch_size", "seed", "limit", "rate_table", "channel_block",
             "channel_round_to")
_POSITIVE_KEYS = ("epochs", "batch_size", "limit", "lr", "width", "channel_block")


def method_keys() -> dict[str, tuple[str, ...]]:
    """Per registered method, the parameters only it takes (from its ``params``)."""
    from lilnetx.methods import method_class, method_names

    return {m: tuple(p.name for p in method_class(m).params) for m in method_names()}


def param_keys() -> tuple[str, ...]:
    """Every key a space may fix or search: training, run, and every method's parameters."""
    from lilnetx.methods import all_params

    return TRAIN_KEYS + SPEC_KEYS + tuple(all_params())


def objective_names() -> list[str]:
    """Metrics a space may name as objectives (:mod:`lilnetx.metrics`)."""
    from lilnetx.metrics import metric_names

    return metric_names(objectives_only=True)


def sampler_names() -> list[str]:
    from .samplers import sampler_names as names

    return names()


_number = {"type": "number"}
_dist = {
    "type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": False,
    "properties": {
        "uniform": {"type": "array", "items": _number, "minItems": 2, "maxItems": 2},
        "loguniform": {"type": "array", "items": _number, "minItems": 2, "maxItems": 2},
        "int": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
        "choice": {"type": "array", "minItems": 1,
                   "items": {"type": ["number", "string", "boolean"]}},
    },
}
_factory = {"type": "object", "additionalProperties": False, "required": ["factory"],
            "properties": {"factory": {"type": "string",
                                       "pattern": r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"},
                           "args": {"type": "object"}}}


def schema() -> dict[str, Any]:
    """The JSON schema of a search space, built from the registries (methods, metrics,
    samplers, method parameters), so a plugin's entries are allowed as soon as it is installed."""
    from lilnetx.methods import method_names

    methods, samplers, keys = method_names(), sampler_names(), list(param_keys())
    params = {"type": "object", "propertyNames": {"enum": keys},
              "additionalProperties": {"anyOf": [_number, {"type": "string"}, _dist]}}
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["model", "dataset", "objectives"],
        "properties": {
            "name": {"type": "string", "pattern": r"^[A-Za-z0-9_.\-]{1,64}$"},
            "description": {"type": "string"},
            "model": {"anyOf": [{"type": "string", "minLength": 1}, _factory]},
            "dataset": {"anyOf": [{"type": "string", "minLength": 1}, _factory]},
            "data_root": {"type": ["string", "null"]},
            "init_from": {"type": "string", "minLength": 1, "maxLength": 4096},
            "method": {"enum": methods},
            "train": {"type": "object", "additionalProperties": False,
                      "properties": {k: {"type": ["number", "string", "null"]} for k in keys}
                      | {"device": {"type": ["string", "null"]}}},
            "objectives": {"type": "object", "minProperties": 2, "maxProperties": 3,
                           "propertyNames": {"enum": objective_names()},
                           "additionalProperties": {"enum": ["max", "min"]}},
            "search": {"type": "object", "additionalProperties": False, "properties": {
                "sampler": {"enum": samplers},
                "num_samples": {"type": "integer", "minimum": 1, "maximum": 100000},
                "max_concurrent": {"type": "integer", "minimum": 1, "maximum": 4096},
                "cpus_per_trial": {"type": "number", "exclusiveMinimum": 0},
                "gpus_per_trial": {"type": "number", "minimum": 0},
                "seed": {"type": "integer"},
            }},
            "cluster": {"type": "object", "additionalProperties": False, "properties": {
                "address": {"type": "string", "minLength": 1},
                "tracking_uri": {"type": "string", "minLength": 1},
                "study_storage": {"type": "string", "minLength": 1},
            }},
            "params": params,
            "methods": {"type": "object", "minProperties": 1, "propertyNames": {"enum": methods},
                        "additionalProperties": {
                            "type": ["object", "null"], "additionalProperties": False,
                            "properties": {
                                "num_samples": {"type": "integer", "minimum": 1,
                                                "maximum": 100000},
                                "sampler": {"enum": samplers},
                                "init_from": {"type": "string", "minLength": 1,
                                              "maxLength": 4096},
                                "params": params}}},
        },
    }


@dataclass
class SearchSpace:
    """A validated search space. ``params`` maps names to a fixed value or a distribution dict."""

    name: str
    model: str | dict
    dataset: str | dict
    objectives: dict[str, str]
    params: dict[str, Any]
    method: str = "lilnetx"
    data_root: str | None = None
    train: dict[str, Any] = field(default_factory=dict)
    sampler: str = "tpe"
    num_samples: int = 12
    max_concurrent: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    seed: int = 0
    cluster: dict[str, str] = field(default_factory=dict)
    methods: dict[str, dict] = field(default_factory=dict)
    """Per method: ``params`` (shared params overridden by the method's own), ``num_samples``
    and ``sampler``. A single-method space has one entry."""
    source: str = ""
    code_dir: str | None = None
    """The folder of the YAML file: factories (``{factory: "module:function"}``) are imported
    from it (and from ``PYTHONPATH``), in the driver and in local trials."""

    def method_params(self, method: str | None = None) -> dict[str, Any]:
        return self.methods[method]["params"] if method else self.params

    def searched(self, method: str | None = None) -> dict[str, dict]:
        """The parameters with a distribution (of ``method``, default the shared ones)."""
        return {k: v for k, v in self.method_params(method).items() if isinstance(v, dict)}

    def fixed(self, method: str | None = None) -> dict[str, Any]:
        """Fixed values: the ``train`` section, then plain values in the params."""
        out = {k: v for k, v in self.train.items() if v is not None}
        out.update({k: v for k, v in self.method_params(method).items()
                    if not isinstance(v, dict)})
        return out


def _path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return clip(".".join(parts)) if parts else "(top level)"


def _schema_message(e: jsonschema.ValidationError) -> str:
    v = e.validator
    if v in ("minProperties", "maxProperties") and list(e.absolute_path) == ["objectives"]:
        return (f"needs 2 or 3 objectives, but got {len(e.instance)}; allowed metrics: "
                f"{', '.join(objective_names())}")
    if v == "anyOf" and list(e.absolute_path) in (["model"], ["dataset"]):
        return (f"must be a name (a string) or {{factory: 'package.module:function', args: "
                f"{{...}}}}, but got {show(e.instance)}")
    if v == "anyOf":
        return (f"{show(e.instance)} is neither a number nor a distribution "
                "({uniform|loguniform|int: [lo, hi]} or {choice: [...]})")
    if v == "enum" and isinstance(e.instance, str) and isinstance(e.validator_value, list) and (
            len(e.message) > 120):
        # an unknown key or name: jsonschema's message lists the allowed ones and would be cut
        return (f"{show(e.instance, 60)} is not allowed; allowed: "
                f"{', '.join(map(str, e.validator_value))}")
    message = _clip_message(e)
    if v == "additionalProperties" and e.path:
        allowed = ", ".join(e.schema.get("properties", {}))
        return f"{message}; allowed keys: {allowed}" if allowed else message
    if v == "additionalProperties":
        return f"{message}; allowed keys: {', '.join(schema()['properties'])}"
    if v == "propertyNames":
        allowed = e.schema.get("enum") if isinstance(e.schema, dict) else None
        # jsonschema's own message lists the allowed names too, and would be cut before them
        return (f"{show(e.instance, 60)} is not allowed here; allowed: {', '.join(allowed)}"
                if allowed else message)
    return message


def _clip_message(e: jsonschema.ValidationError) -> str:
    """jsonschema's message, with no value from the file quoted longer than ~100 characters."""
    message = e.message
    if len(message) <= 120:
        return message
    if e.validator == "additionalProperties" and isinstance(e.instance, dict):
        extra = sorted((k for k in e.instance if k not in e.schema.get("properties", {})), key=str)
        more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
        return (f"Additional properties are not allowed ({', '.join(show(k, 40) for k in extra[:3])}"
                f"{more} {'was' if len(extra) == 1 else 'were'} unexpected)")
    quoted = repr(e.instance)
    if len(quoted) > 100:
        message = message.replace(quoted, show(e.instance))
    return clip(message, 200)


def validate(doc: Any, *, source: str = "") -> SearchSpace:
    """Check a parsed YAML document and return a :class:`SearchSpace`.

    Raises :class:`ConfigError` naming the field path and what is allowed.
    """
    from lilnetx.data import dataset_names, resolve_dataset
    from lilnetx.models import model_names

    if not isinstance(doc, dict):
        raise ConfigError(f"{source or 'search space'}: top level must be a mapping of keys, "
                          f"but got {type(doc).__name__}")
    errors = sorted(jsonschema.Draft202012Validator(schema()).iter_errors(doc),
                    key=lambda e: (len(list(e.absolute_path)), str(list(e.absolute_path))))
    if errors:
        e = errors[-1] if errors[-1].absolute_path else errors[0]
        raise ConfigError(f"{_path(e)}: {_schema_message(e)}")
    model, dataset = doc["model"], doc["dataset"]
    if isinstance(model, dict):
        _check_factory("model", model)
    elif model.startswith("tv:"):
        from torchvision import models as tvm

        if model[3:] not in tvm.list_models(module=tvm):
            raise ConfigError(f"model: unknown torchvision classifier {show(model)}; allowed: "
                              "tv:NAME with NAME from torchvision.models.list_models(), "
                              "e.g. tv:resnet18")
    elif model not in model_names():
        raise ConfigError(f"model: unknown model {show(model)}; allowed: "
                          f"{', '.join(model_names())}, tv:NAME, or {{factory: 'pkg.mod:fn'}}")
    if isinstance(dataset, dict):
        _check_factory("dataset", dataset)
    else:
        try:
            resolve_dataset(dataset)
        except ConfigError:
            raise ConfigError(f"dataset: unknown dataset {show(dataset)}; allowed: "
                              f"{', '.join(dataset_names())} (a non-empty path), or "
                              "{factory: 'pkg.mod:fn'}") from None
    seen: dict[str, str] = {}
    for o in doc["objectives"]:
        m = search_metric(o)
        if m in seen:
            raise ConfigError(f"objectives: {show(seen[m])} and {show(o)} are both searched on "
                              f"{show(m)}; keep one of them")
        seen[m] = o
    if "methods" in doc and "method" in doc:
        raise ConfigError("method: give either `method` (one method) or `methods` (several), "
                          "not both")
    if "methods" not in doc and "params" not in doc:
        raise ConfigError("(top level): 'params' is a required property (or give `methods`)")
    shared = dict(doc.get("params") or {})
    for key, spec in shared.items():
        _check_param(f"params.{key}", key, spec)
    for key, value in (doc.get("train") or {}).items():
        if key != "device" and value is not None:
            _check_param(f"train.{key}", key, value)
    search = doc.get("search") or {}
    sampler = search.get("sampler", "tpe")
    num_samples = int(search.get("num_samples", 12))
    single = doc.get("method", "lilnetx")
    given = doc.get("methods") or {single: {"params": {}}}
    methods: dict[str, dict] = {}
    for m, entry in given.items():
        entry = entry or {}
        own = dict(entry.get("params") or {})
        for key, spec in own.items():
            _check_param(f"methods.{m}.params.{key}", key, spec)
        params = {**shared, **own}
        own_keys = method_keys()
        extra = [k for k in params if k in {x for v in own_keys.values() for x in v}
                 and k not in own_keys[m]]
        if extra:
            where = f"methods.{m}.params" if "methods" in doc else "params"
            raise ConfigError(f"{where}.{extra[0]}: method {show(m)} takes no {show(extra[0])}; "
                              f"its own parameters: {', '.join(own_keys[m]) or 'none'}")
        if m == "lilnetx" and not params and "methods" not in doc:
            raise ConfigError("params: must be non-empty (at least one parameter to fix or search)")
        msampler = entry.get("sampler", sampler)
        if msampler == "grid":
            for key, spec in params.items():
                if isinstance(spec, dict) and "choice" not in spec:
                    where = f"methods.{m}.params" if key in own else "params"
                    raise ConfigError(f"{where}.{key}: the grid sampler needs {{choice: [...]}} "
                                      f"distributions, but got {next(iter(spec))}")
        start = entry.get("init_from", doc.get("init_from"))
        if start is not None:
            from lilnetx.methods import method_class

            if not method_class(m).accepts_init:
                where = f"methods.{m}.init_from" if "init_from" in entry else "init_from"
                raise ConfigError(f"{where}: method {show(m)} cannot start from a trained "
                                  "network")
        methods[m] = {"params": params, "sampler": msampler, "init_from": start,
                      "num_samples": int(entry.get("num_samples", num_samples))}
    first = next(iter(methods))
    return SearchSpace(
        name=doc.get("name") or "lilnetx", model=model, dataset=dataset,
        objectives=dict(doc["objectives"]), params=methods[first]["params"],
        method=first, methods=methods, data_root=doc.get("data_root"),
        train=dict(doc.get("train") or {}), sampler=sampler,
        num_samples=int(search.get("num_samples", 12)),
        max_concurrent=int(search.get("max_concurrent", 2)),
        cpus_per_trial=float(search.get("cpus_per_trial", 1)),
        gpus_per_trial=float(search.get("gpus_per_trial", 0)),
        seed=int(search.get("seed", 0)), cluster=dict(doc.get("cluster") or {}), source=source,
    )


def _check_param(path: str, key: str, spec: Any) -> None:
    """A fixed value or a distribution of parameter ``key``: its type and range (a method
    parameter's from its :class:`lilnetx.methods.Param`)."""
    from lilnetx.methods import all_params

    mparam = all_params().get(key)
    strings = mparam.choices if mparam is not None and mparam.kind is str else None
    if key.startswith("channel_"):
        from lilnetx.core.channel_options import CHOICES

        strings = CHOICES.get(key, strings)
    is_int = key in _INT_KEYS or (mparam is not None and mparam.kind is int)

    def check_value(v: Any, in_choice: bool = False) -> None:
        if strings is not None:
            if v not in strings:
                raise ConfigError(f"{path}: must be one of {', '.join(strings)}, "
                                  f"but got {show(v)}")
            return
        if in_choice and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise ConfigError(f"{path}: choice values must be finite numbers, but got {show(v)}")
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ConfigError(f"{path}: must be a number or a distribution ({{uniform|loguniform|"
                              f"int: [lo, hi]}} or {{choice: [...]}}), but got {show(v)}")
        if not math.isfinite(v):
            raise ConfigError(f"{path}: must be a finite number, but got {show(v)}")
        if is_int and not float(v).is_integer():
            raise ConfigError(f"{path}: must be an integer, but got {show(v)}")
        if key in _POSITIVE_KEYS and v <= 0:
            raise ConfigError(f"{path}: must be positive, but got {show(v)}")
        if v < 0:
            raise ConfigError(f"{path}: must be non-negative, but got {show(v)}")
        if key == "channel_finetune" and not v < 1:
            raise ConfigError(f"{path}: must be in [0, 1), but got {show(v)}")
        if key == "val_fraction" and not v < 0.5:
            raise ConfigError(f"{path}: must be in [0, 0.5), but got {show(v)}")
        if mparam is not None:
            try:
                mparam.check(v)
            except ConfigError:
                raise ConfigError(f"{path}: must be in {mparam.range_text()}, but got "
                                  f"{show(v)}") from None

    if not isinstance(spec, dict):
        check_value(spec)
        return
    kind, args = next(iter(spec.items()))
    if strings is not None and kind != "choice":
        raise ConfigError(f"{path}: {key} takes a fixed value or {{choice: [...]}} of "
                          f"{', '.join(strings)}")
    if kind == "choice":
        for v in args:
            check_value(v, in_choice=True)
        return
    lo, hi = args
    if lo > hi:
        raise ConfigError(f"{path}.{kind}: low must not exceed high, but got [{lo}, {hi}]")
    if kind == "loguniform" and lo <= 0:
        raise ConfigError(f"{path}.loguniform: bounds must be > 0, but got [{lo}, {hi}]")
    if kind == "int" and not is_int:
        raise ConfigError(f"{path}: {key} is not an integer parameter; use uniform or loguniform")
    if kind != "int" and is_int:
        raise ConfigError(f"{path}: {key} is an integer parameter; use int or choice")
    check_value(lo)
    check_value(hi)


def _check_factory(field: str, spec: dict) -> None:
    """``{factory: "pkg.module:function", args: {...}}``: the callable must import (the user's
    own code, named by the user's own space)."""
    from lilnetx.factory import resolve

    try:
        resolve(spec["factory"], field)
    except ConfigError as e:
        raise ConfigError(f"{field}.factory: {e}") from None


def load_space(path: str | os.PathLike) -> SearchSpace:
    """Read and validate a YAML search space file.

    The file is read and parsed within the limits of :mod:`explorer.safe_yaml` (at most 1 MiB,
    strict UTF-8, ``yaml.SafeLoader`` without object tags, bounded nesting and alias expansion,
    scalar keys given once, number literals of at most 100 characters).
    """
    path = os.fspath(path)
    doc, text = load_file(path, what="search space")
    code_dir = os.path.dirname(os.path.abspath(path))
    with factory_path(code_dir):
        space = validate(doc, source=path)
    space.source, space.code_dir = text, code_dir
    for entry in space.methods.values():  # a relative start file is relative to the YAML
        if entry.get("init_from"):
            entry["init_from"] = os.path.join(code_dir, os.path.expanduser(entry["init_from"]))
    return space


@contextlib.contextmanager
def factory_path(code_dir: str | None):
    """``code_dir`` first on ``sys.path`` while factories are resolved."""
    import sys

    if not code_dir or code_dir in sys.path:
        yield
        return
    sys.path.insert(0, code_dir)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(code_dir)
