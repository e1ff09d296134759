"""Optuna samplers by name, in one registry (``search.sampler`` in YAML): ``tpe``, ``nsga2``,
``gp``, ``random``, ``grid``, and any a package adds through the ``lilnetx.samplers``
entry-point group. A sampler factory takes ``(seed, choices)``: the seed, and the searched
parameters' ``{choice: [...]}`` lists (what ``grid`` enumerates)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lilnetx.registry import Registry

SamplerFactory = Callable[[int, dict[str, list[Any]]], Any]

SAMPLERS: Registry[SamplerFactory] = Registry("sampler", "lilnetx.samplers")

NEEDS_CHOICES = {"grid"}
"""Samplers that enumerate ``{choice: [...]}`` distributions only."""


def register_sampler(name: str):
    """Decorator adding a sampler factory ``f(seed, choices) -> optuna.samplers.BaseSampler``."""
    return SAMPLERS.register(name)


def sampler_names() -> list[str]:
    return SAMPLERS.names()


def create_sampler(name: str, seed: int, choices: dict[str, list[Any]]):
    return SAMPLERS.get(name)(seed, choices)


@register_sampler("tpe")
def _tpe(seed, choices):
    import optuna

    return optuna.samplers.TPESampler(seed=seed, multivariate=True)


@register_sampler("nsga2")
def _nsga2(seed, choices):
    import optuna

    return optuna.samplers.NSGAIISampler(seed=seed)


@register_sampler("gp")
def _gp(seed, choices):
    import optuna

    return optuna.samplers.GPSampler(seed=seed)


@register_sampler("random")
def _random(seed, choices):
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


@register_sampler("grid")
def _grid(seed, choices):
    import optuna

    return optuna.samplers.GridSampler(choices, seed=seed)  # skips grid points the study has
