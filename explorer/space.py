"""Search spaces: YAML files over the LilNetX tradeoff, validated with a schema.

See the README for the form. Every error names the field path (``params.lambda_rate``) and what
is allowed; nothing starts before the whole file is valid.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from lilnetx.errors import ConfigError

from .pareto import search_metric
from .safe_yaml import clip, load_file, show

SAMPLERS = ("tpe", "nsga2", "gp", "random", "grid")
OBJECTIVES = ("accuracy", "val_accuracy", "size_bytes", "compression_ratio", "bits_estimate",
              "flops", "latency_ms", "weight_sparsity", "slice_sparsity", "channel_sparsity")
METHODS = ("lilnetx", "dense", "quant", "imp")
TRAIN_KEYS = ("epochs", "batch_size", "lr", "prior_lr", "lambda_rate", "lambda_sparsity",
              "lambda_l2", "warmup_epochs", "seed")
"""Hyperparameters of :class:`lilnetx.TrainConfig` a space may fix or search."""
SPEC_KEYS = ("width", "limit", "val_fraction")
"""Hyperparameters of :class:`lilnetx.experiment.RunSpec` a space may fix or search."""
METHOD_KEYS = {"lilnetx": (), "dense": (), "quant": ("bits",),
               "imp": ("bits", "target_sparsity", "phases", "retrain_epochs", "schedule")}
"""Parameters that only some methods take (see ``lilnetx.experiment.RunSpec``)."""
PARAM_KEYS = TRAIN_KEYS + SPEC_KEYS + ("bits", "target_sparsity", "phases", "retrain_epochs",
                                       "schedule")
INT_KEYS = ("epochs", "batch_size", "seed", "limit", "bits", "phases", "retrain_epochs")
STRING_KEYS = {"schedule": ("FT", "SLR", "CLR", "LLR")}

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
SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["model", "dataset", "objectives"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[A-Za-z0-9_.\-]{1,64}$"},
        "description": {"type": "string"},
        "model": {"type": "string", "minLength": 1},
        "dataset": {"type": "string", "minLength": 1},
        "data_root": {"type": ["string", "null"]},
        "method": {"enum": list(METHODS)},
        "train": {"type": "object", "additionalProperties": False,
                  "properties": {k: {"type": ["number", "null"]} for k in PARAM_KEYS}
                  | {"device": {"type": ["string", "null"]}}},
        "objectives": {"type": "object", "minProperties": 2, "maxProperties": 3,
                       "propertyNames": {"enum": list(OBJECTIVES)},
                       "additionalProperties": {"enum": ["max", "min"]}},
        "search": {"type": "object", "additionalProperties": False, "properties": {
            "sampler": {"enum": list(SAMPLERS)},
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
        "params": {"type": "object",
                   "propertyNames": {"enum": list(PARAM_KEYS)},
                   "additionalProperties": {"anyOf": [_number, {"type": "string"}, _dist]}},
        "methods": {"type": "object", "minProperties": 1, "propertyNames": {"enum": list(METHODS)},
                    "additionalProperties": {
                        "type": ["object", "null"], "additionalProperties": False,
                        "properties": {
                            "num_samples": {"type": "integer", "minimum": 1, "maximum": 100000},
                            "sampler": {"enum": list(SAMPLERS)},
                            "params": {"type": "object",
                                       "propertyNames": {"enum": list(PARAM_KEYS)},
                                       "additionalProperties": {
                                           "anyOf": [_number, {"type": "string"}, _dist]}}}}},
    },
}


@dataclass
class SearchSpace:
    """A validated search space. ``params`` maps names to a fixed value or a distribution dict."""

    name: str
    model: str
    dataset: str
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
                f"{', '.join(OBJECTIVES)}")
    if v == "anyOf":
        return (f"{show(e.instance)} is neither a number nor a distribution "
                "({uniform|loguniform|int: [lo, hi]} or {choice: [...]})")
    message = _clip_message(e)
    if v == "additionalProperties" and e.path:
        allowed = ", ".join(e.schema.get("properties", {}))
        return f"{message}; allowed keys: {allowed}" if allowed else message
    if v == "additionalProperties":
        return f"{message}; allowed keys: {', '.join(SCHEMA['properties'])}"
    if v == "propertyNames":
        allowed = e.schema.get("enum") if isinstance(e.schema, dict) else None
        return f"{message}; allowed: {', '.join(allowed)}" if allowed else message
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
    from lilnetx.data import dataset_names
    from lilnetx.models import model_names

    if not isinstance(doc, dict):
        raise ConfigError(f"{source or 'search space'}: top level must be a mapping of keys, "
                          f"but got {type(doc).__name__}")
    errors = sorted(jsonschema.Draft202012Validator(SCHEMA).iter_errors(doc),
                    key=lambda e: (len(list(e.absolute_path)), str(list(e.absolute_path))))
    if errors:
        e = errors[-1] if errors[-1].absolute_path else errors[0]
        raise ConfigError(f"{_path(e)}: {_schema_message(e)}")
    model = doc["model"]
    if model.startswith("tv:"):
        from torchvision import models as tvm

        if model[3:] not in tvm.list_models(module=tvm):
            raise ConfigError(f"model: unknown torchvision classifier {show(model)}; allowed: "
                              "tv:NAME with NAME from torchvision.models.list_models(), "
                              "e.g. tv:resnet18")
    elif model not in model_names():
        raise ConfigError(f"model: unknown model {show(model)}; allowed: "
                          f"{', '.join(model_names())}, tv:NAME")
    dataset = doc["dataset"]
    names = [n for n in dataset_names() if not n.startswith("imagefolder")]
    if dataset not in names and not (dataset.startswith("imagefolder:") and dataset[12:].strip()):
        raise ConfigError(f"dataset: unknown dataset {show(dataset)}; allowed: "
                          f"{', '.join(names)}, imagefolder:PATH (a non-empty path)")
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
        extra = [k for k in params if k in {x for v in METHOD_KEYS.values() for x in v}
                 and k not in METHOD_KEYS[m]]
        if extra:
            where = f"methods.{m}.params" if "methods" in doc else "params"
            raise ConfigError(f"{where}.{extra[0]}: method {show(m)} takes no {show(extra[0])}; "
                              f"its own parameters: {', '.join(METHOD_KEYS[m]) or 'none'}")
        if m == "lilnetx" and not params and "methods" not in doc:
            raise ConfigError("params: must be non-empty (at least one parameter to fix or search)")
        msampler = entry.get("sampler", sampler)
        if msampler == "grid":
            for key, spec in params.items():
                if isinstance(spec, dict) and "choice" not in spec:
                    where = f"methods.{m}.params" if key in own else "params"
                    raise ConfigError(f"{where}.{key}: the grid sampler needs {{choice: [...]}} "
                                      f"distributions, but got {next(iter(spec))}")
        methods[m] = {"params": params, "sampler": msampler,
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
    def check_value(v: Any, in_choice: bool = False) -> None:
        if key in STRING_KEYS:
            if v not in STRING_KEYS[key]:
                raise ConfigError(f"{path}: must be one of {', '.join(STRING_KEYS[key])}, "
                                  f"but got {show(v)}")
            return
        if in_choice and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise ConfigError(f"{path}: choice values must be finite numbers, but got {show(v)}")
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ConfigError(f"{path}: must be a number or a distribution ({{uniform|loguniform|"
                              f"int: [lo, hi]}} or {{choice: [...]}}), but got {show(v)}")
        if not math.isfinite(v):
            raise ConfigError(f"{path}: must be a finite number, but got {show(v)}")
        if key in INT_KEYS and not float(v).is_integer():
            raise ConfigError(f"{path}: must be an integer, but got {show(v)}")
        if key in ("epochs", "batch_size", "limit", "lr", "width") and v <= 0:
            raise ConfigError(f"{path}: must be positive, but got {show(v)}")
        if v < 0:
            raise ConfigError(f"{path}: must be non-negative, but got {show(v)}")
        if key == "val_fraction" and not v < 0.5:
            raise ConfigError(f"{path}: must be in [0, 0.5), but got {show(v)}")
        if key == "target_sparsity" and not v < 1:
            raise ConfigError(f"{path}: must be in [0, 1), but got {show(v)}")
        if key == "bits" and not 2 <= v <= 12:
            raise ConfigError(f"{path}: must be in [2, 12], but got {show(v)}")
        if key == "phases" and v < 1:
            raise ConfigError(f"{path}: must be positive, but got {show(v)}")

    if not isinstance(spec, dict):
        check_value(spec)
        return
    kind, args = next(iter(spec.items()))
    if key in STRING_KEYS and kind != "choice":
        raise ConfigError(f"{path}: {key} takes a fixed value or {{choice: [...]}} of "
                          f"{', '.join(STRING_KEYS[key])}")
    if kind == "choice":
        for v in args:
            check_value(v, in_choice=True)
        return
    lo, hi = args
    if lo > hi:
        raise ConfigError(f"{path}.{kind}: low must not exceed high, but got [{lo}, {hi}]")
    if kind == "loguniform" and lo <= 0:
        raise ConfigError(f"{path}.loguniform: bounds must be > 0, but got [{lo}, {hi}]")
    if kind == "int" and key not in INT_KEYS:
        raise ConfigError(f"{path}: {key} is not an integer parameter; use uniform or loguniform")
    if kind != "int" and key in INT_KEYS:
        raise ConfigError(f"{path}: {key} is an integer parameter; use int or choice")
    check_value(lo)
    check_value(hi)


def load_space(path: str | os.PathLike) -> SearchSpace:
    """Read and validate a YAML search space file.

    The file is read and parsed within the limits of :mod:`explorer.safe_yaml` (at most 1 MiB,
    strict UTF-8, ``yaml.SafeLoader`` without object tags, bounded nesting and alias expansion,
    scalar keys given once, number literals of at most 100 characters).
    """
    path = os.fspath(path)
    doc, text = load_file(path, what="search space")
    space = validate(doc, source=path)
    space.source = text
    return space
