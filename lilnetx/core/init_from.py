"""Pretrained starts (``init_from``): read trained weights, check them against the run's network,
and for LilNetX turn them into integer latents and shared decoders.

The paper trains LilNetX from scratch (method.md sec. 2 and 5); starting from a trained network
is this project's extension. With a start, a LilNetX run (and a sweep of them) is a fine-tuning
of the pretrained network under the joint loss, with the usual schedule.

**Start files** (:func:`read_state_dict`): a PyTorch state dict (``.pt``/``.pth``, read with
``torch.load(weights_only=True)`` only, so no code in the file runs; a dict holding it under
``"state_dict"`` or ``"model"`` is unwrapped), a ``.safetensors`` file, or a ``.lnx`` file (its
decoded network's state). A ``module.`` prefix (``nn.DataParallel``) is stripped. The keys and
shapes must be exactly those of the run's network (:func:`match_state_dict`; a missing BatchNorm
``num_batches_tracked`` counter is allowed), else a :class:`~lilnetx.ConfigError` names the first
mismatching key and both shapes.

**The LilNetX init rule** (:func:`latents_from_weights`). A decoder is shared by all layers of
its group (sec. 2), so the rule works per group, on the weights ``W`` of all its layers together:

1. grid step ``s = max|W| / L`` (``L``: ``init_levels``, default :data:`DEFAULT_LEVELS`) and
   integer latents ``round(W / s)``, all in ``[-L, L]``: no weight is clipped, every weight is
   within ``s / 2`` of the grid. (The latents are entropy coded, so their bits are set by the
   step, not by the range: at a given step, clipping outliers only adds error. An MSE-optimal
   clipping search at a fixed ``L`` needs a finer step, so more bits, and doubles the largest
   error; ``benchmarks/init_from.py`` measures it.)
2. given the latents, the least-squares decoder: the whole ``k² x k²`` matrix of a conv group (a
   scalar for dense and 1x1 groups) minimizing the mean over the group's layers of each layer's
   squared error relative to its squared norm (every layer counts alike; a plain MSE would let
   the largest layer decide), kept when it beats ``s * I``. There is still no shift, so zero
   latent slices decode to zero kernels. It lowers the mean error (by about a third for a conv
   group) at the price of a somewhat larger largest error than ``s / 2``.
3. everything else (biases, BatchNorm affine parameters and running statistics) is copied
   exactly. The probability models keep their initialization and adapt in training.

A larger ``L`` reproduces the weights more closely but costs about one more bit per latent per
doubling; the rate term works down from there. Training then proceeds as usual: the decoders
and latents are fine-tuned jointly. Adam moves every decoder entry by about ``lr`` per step
whatever its size, and the start's decoder entries are ``max|W| / L`` (a few hundredths), so a
learning rate that suits training from scratch can erase the start in a short run: fine-tune
with a lower ``lr`` or a warmup of a few hundred steps (see the benchmark).
"""

from __future__ import annotations

import copy
import os
import pickle
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from lilnetx.core.latent import decode_exact
from lilnetx.errors import ConfigError

SUFFIXES = (".pt", ".pth", ".safetensors", ".lnx")
MAX_START_BYTES = 4 << 30
"""Largest start file read (4 GiB: a 200M-parameter network in float32 with room to spare)."""
DEFAULT_LEVELS = 15
"""Default ``L`` of the init rule: latents in [-15, 15], the dense accuracy within about a
point (see ``benchmarks/init_from.py``)."""


def short(value) -> str:
    """``repr(value)`` cut to about 60 characters, for error messages."""
    text = repr(value) if not isinstance(value, str) else repr(value[:80])
    return text if len(text) <= 60 else text[:57] + "..."


def _name(path) -> str:
    return f"init_from {short(os.path.basename(os.fspath(path)))}"


def check_start_path(path) -> str:
    """``path`` as a string, or :class:`ConfigError` unless it is an existing regular file of a
    supported kind and size."""
    if not isinstance(path, str | os.PathLike):
        raise ConfigError(f"init_from must be a file path, but got {short(path)}")
    path = os.fspath(path)
    if not path.lower().endswith(SUFFIXES):
        raise ConfigError(f"{_name(path)}: the file must be one of {', '.join(SUFFIXES)} "
                          "(a state dict, safetensors or a .lnx file)")
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        raise ConfigError(f"{_name(path)}: no such file") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{_name(path)}: not a regular file")
    if info.st_size > MAX_START_BYTES:
        raise ConfigError(f"{_name(path)}: {info.st_size} bytes, more than the "
                          f"{MAX_START_BYTES} a start file may have")
    return path


def _torch_load(path: str):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ConfigError(f"{_name(path)}: the file holds pickled objects, not only tensors "
                          "(a whole module?); save model.state_dict() instead: "
                          "torch.save(model.state_dict(), PATH)") from None
    except Exception as e:  # a corrupt or foreign file: torch raises RuntimeError, EOFError...
        raise ConfigError(f"{_name(path)}: not a readable torch state dict "
                          f"({type(e).__name__}: {short(str(e))})") from None


def _unwrap(obj, path: str) -> dict[str, torch.Tensor]:
    """The state dict in a loaded object (itself, or under "state_dict"/"model")."""
    for _ in range(2):
        if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor)
                                                for v in obj.values()):
            inner = next((obj[k] for k in ("state_dict", "model") if isinstance(
                obj.get(k), Mapping)), None)
            if inner is not None:
                obj = inner
                continue
        break
    if not isinstance(obj, Mapping) or not obj:
        raise ConfigError(f"{_name(path)}: the file holds {type(obj).__name__}, not a state "
                          "dict (a mapping of names to tensors)")
    bad = next((k for k, v in obj.items() if not isinstance(k, str)
                or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise ConfigError(f"{_name(path)}: entry {short(bad)} of the state dict is "
                          f"{type(obj[bad]).__name__}, not a tensor")
    return dict(obj)


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """The state dict in a start file (see the module docstring), ``module.`` prefixes
    stripped. Raises :class:`ConfigError` (a ``.lnx`` file: :class:`~lilnetx.FormatError`)."""
    path = check_start_path(path)
    low = path.lower()
    if low.endswith(".lnx"):
        from lilnetx.fileformat import load

        state = load(path).state_dict()
    elif low.endswith(".safetensors"):
        from lilnetx.core.safetensors_io import read_safetensors

        try:
            state = read_safetensors(path)
        except ConfigError as e:
            raise ConfigError(f"{_name(path)}: {e}") from None
    else:
        state = _unwrap(_torch_load(path), path)
    out = {}
    for key, value in state.items():
        while key.startswith("module."):
            key = key[len("module."):]
        if key in out:
            raise ConfigError(f"{_name(path)}: key {short(key)} appears twice once the "
                              "'module.' prefix is stripped")
        out[key] = value
    return out


def _listing(keys: list[str]) -> str:
    shown = ", ".join(short(k) for k in keys[:3])
    return f"{len(keys)}: {shown}{', ...' if len(keys) > 3 else ''}"


def match_state_dict(state: Mapping[str, torch.Tensor], reference: nn.Module,
                     source: str = "init_from", network: str = "the network"
                     ) -> dict[str, torch.Tensor]:
    """``state`` checked against ``reference``'s state dict: the same keys (a missing
    ``num_batches_tracked`` is filled from ``reference``) and shapes, finite floats; values
    cast to the reference's dtypes. Raises :class:`ConfigError` naming the first bad key."""
    want = reference.state_dict()
    missing = [k for k in want if k not in state and not k.endswith("num_batches_tracked")]
    extra = [k for k in state if k not in want]
    for key, ref in want.items():
        if key in missing:
            raise ConfigError(f"{source}: key {short(key)} of {network} is not in the file "
                              f"(missing {_listing(missing)})")
        value = state.get(key)
        if value is not None and tuple(value.shape) != tuple(ref.shape):
            raise ConfigError(f"{source}: key {short(key)} has shape {tuple(value.shape)} in "
                              f"the file but {tuple(ref.shape)} in {network}")
    if extra:
        raise ConfigError(f"{source}: key {short(extra[0])} in the file is not in {network} "
                          f"(unexpected {_listing(extra)})")
    out = {}
    for key, ref in want.items():
        value = state.get(key, ref)
        if ref.is_floating_point():
            if not value.is_floating_point():
                raise ConfigError(f"{source}: key {short(key)} holds {value.dtype}, not floats")
            if not bool(torch.isfinite(value).all()):
                raise ConfigError(f"{source}: key {short(key)} holds NaN or infinite values")
        out[key] = value.detach().to(device="cpu", dtype=ref.dtype)
    return out


def start_network(path, reference: nn.Module, network: str = "the network") -> nn.Module:
    """A copy of the plain network ``reference`` holding the checked state of start file
    ``path`` (CPU, eval mode); ``network`` names it in error messages."""
    state = match_state_dict(read_state_dict(path), reference, _name(path), network)
    net = copy.deepcopy(reference).cpu()
    net.load_state_dict(state)
    return net.eval()


@dataclass
class InitReport:
    """What :func:`latents_from_weights` did: the largest absolute difference between a
    decoded and a given weight; per group the grid step ``scale``, the mean relative squared
    error of its layers, whether the least-squares decoder was kept (``refit``) and its largest
    error; per layer its largest absolute error."""

    levels: int
    max_weight_error: float = 0.0
    groups: dict[str, dict[str, float]] = field(default_factory=dict)
    layers: dict[str, float] = field(default_factory=dict)


def _fit_group(rows: list[torch.Tensor], levels: int) -> tuple[list[torch.Tensor], torch.Tensor,
                                                               dict[str, float]]:
    """Integer latents (one tensor per layer) and a float32 decoder matrix for the weight rows
    of one group (float64, (slices, k²) each), by the rule of the module docstring."""
    k = rows[0].shape[1]
    w = torch.cat(rows)
    top = float(w.abs().max())
    if top == 0:
        return [torch.zeros_like(r) for r in rows], torch.eye(k), {"scale": 1.0}
    s = top / levels
    q = torch.round(w / s)  # in [-levels, levels]: no weight is clipped
    # Each weight counts 1 / (its layer's mean square * its layer's size): the error is the
    # mean over layers of their relative squared errors.
    weight = torch.cat([torch.full((r.shape[0], 1), 1.0 / max(float(r.square().sum()), 1e-300),
                                   dtype=w.dtype) for r in rows])

    def error(dec):
        return float(((q @ dec.double() - w).square() * weight).sum())

    dec = (torch.eye(k, dtype=w.dtype) * s).float()
    sq = weight.sqrt()
    fit = torch.linalg.lstsq(q * sq, w * sq, driver="gelsd").solution.float()
    refit = bool(torch.isfinite(fit).all()) and error(fit) < error(dec)
    if refit:
        dec = fit
    return (list(q.split([r.shape[0] for r in rows])), dec,
            {"scale": s, "relative_error": error(dec) / len(rows), "refit": float(refit)})


@torch.no_grad()
def latents_from_weights(model, weights: Mapping[str, torch.Tensor] | nn.Module, *,
                         levels: int = DEFAULT_LEVELS, source: str = "init_from") -> InitReport:
    """Set the latents and decoders of LilNetX ``model`` (in place) so that it decodes to
    ``weights`` (a plain network of the same architecture, or its state dict) as closely as
    the rule of the module docstring allows, and copy every other tensor exactly.

    The result is the initialized, untrained model: ``lilnetx.decode(model)`` is the network
    the init reproduces. Raises :class:`ConfigError` when ``weights`` do not fit ``model``.
    """
    from lilnetx.core.model import LilNetXModel, decode

    if not isinstance(model, LilNetXModel):
        raise ConfigError(f"latents_from_weights expects a LilNetXModel, got "
                          f"{type(model).__name__}")
    if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= 4096:
        raise ConfigError(f"init_levels must be an integer in [1, 4096], but got {levels!r}")
    state = weights.state_dict() if isinstance(weights, nn.Module) else weights
    state = match_state_dict(state, decode(model), source)
    report = InitReport(levels=levels)
    targets = {}
    for group, layers in model.groups().items():
        rows = [state[f"{name}.weight"].double().reshape(layer.latent.shape)
                for name, layer in layers]
        latents, dec, info = _fit_group(rows, levels)
        decoder = model.decoders[group]
        decoder.set_from_matrix(dec.reshape(decoder.rows, decoder.rows))
        for (name, layer), q in zip(layers, latents, strict=True):
            layer.latent.copy_(q.to(layer.latent.dtype))
            got = decode_exact(layer.latent_int(), decoder.stored_weight(), layer.weight_shape)
            report.layers[name] = float((got - state[f"{name}.weight"]).abs().max())
            targets[f"{name}.weight"] = name
        report.groups[group] = {**info, "max_error": max(report.layers[n] for n, _ in layers)}
    report.max_weight_error = max(report.layers.values(), default=0.0)
    own = model.net.state_dict()
    for key, value in state.items():
        if key not in targets:
            own[key].copy_(value)
    return report
