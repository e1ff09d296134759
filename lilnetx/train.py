"""Training with the LilNetX joint loss and the two-optimizer schedule (LilNetX sec. 5).

``L = CE + lambda_rate * bits / N_rows + lambda_l2 * ||W~||^2 + lambda_sparsity * sum ||slice||_2``
``+ lambda_channel * P_channel`` (the coupled-channel prior of :mod:`lilnetx.core.channel_prior`,
our extension, off by default). With ``channel_finetune`` > 0 the prior acts on the first
``1 - channel_finetune`` of the steps only; then the channels it has removed (every reading slice
rounds to zero) are held at zero and the rest of the run fine-tunes without it, which undoes the
lasso's shrinkage of the channels that stay. ``channel_rewind`` says what that phase starts
from: the network as the prior left it (``none``), with the learning rate restarted (``lr``), or
the weights of step 0 with the learning rate restarted (``weights``).
With ``channel_solver="proximal"`` the prior is not in the loss: after every optimizer step the
channels are shrunk by the proximal operator of ``lr * lambda_channel * P_channel``
(:func:`lilnetx.core.channel_prior.group_shrink`).

Latents, decoders, BatchNorm and biases use Adam at ``lr`` with a linear warmup from 1e-6 and a
cosine decay to 0 (per iteration); the probability models use Adam at a constant ``prior_lr``.
A plain ``nn.Module`` (not converted) trains with cross-entropy alone under the same schedule,
which makes it the dense reference.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lilnetx.allocator import keep_freed_memory
from lilnetx.batches import Batches
from lilnetx.channel_phase import ChannelPhase
from lilnetx.core.model import LilNetXModel
from lilnetx.core.rate_table import DEFAULT_POINTS, MAX_POINTS
from lilnetx.data import DataSplits, iterate_batches, num_batches
from lilnetx.errors import ConfigError, LilNetXError, check_nonnegative, check_positive_int


class TrainingDiverged(LilNetXError):
    """The loss became NaN or infinite."""


LOG_EVERY = 20
"""Steps between reads of the device-side loss sums (the only host synchronisation of the
training loop: progress events, and the check that the loss stayed finite)."""


def _check_finite(finite: torch.Tensor, epoch: int, step: int) -> None:
    if not bool(finite):
        raise TrainingDiverged(f"loss is not finite at epoch {epoch}, step {step} (checked "
                               f"every {LOG_EVERY} steps); lower lr or lambdas")


@dataclass
class TrainConfig:
    """Hyperparameters of one training run (reference defaults of sec. 5, short schedule).

    ``warmup_epochs=None`` means ``min(5, epochs / 10)``, the reference 5-of-200 capped for
    short runs. ``lr=None`` means 1e-2 for a LilNetX model (its latents are integers) and 1e-3
    for a plain network. ``device=None`` picks CUDA when available. ``rate_table``: grid points
    per channel of the tabulated training rate (:mod:`lilnetx.core.rate_table`; on the CPU
    fewer when the latents span little, no finer than ``FINEST_STEP``); 0 evaluates the prior
    at every latent (the exact path). ``channel_solver``: ``gradient`` (the coupled-
    channel prior as a loss term) or ``proximal`` (a shrink of ``lr * lambda_channel`` per step
    after the optimizer step; :data:`lilnetx.core.channel_prior.SOLVERS`). ``channel_rewind``:
    what the fine-tuning phase starts from (``none``, ``lr`` or ``weights``;
    :data:`lilnetx.core.channel_prior.REWINDS`). ``channel_block``: channels of one dependency
    group that the prior shrinks and removes together, B at a time (default 1).
    ``channel_cost``: ``params`` or ``macs`` (each channel's term weighted by its
    multiply-accumulates; :data:`lilnetx.core.channel_prior.COSTS`).
    ``channel_round_to``: at the switch to fine-tuning, every dependency group that lost channels
    gets back the removed channels that lived longest until its width is a multiple of N (0:
    off; needs ``channel_finetune > 0``; :mod:`lilnetx.channel_phase`). ``channel_round``:
    ``up`` (that) or ``nearest`` (to the nearest multiple, channels given back or taken away;
    :data:`lilnetx.core.channel_options.ROUNDS`).
    """

    epochs: int = 5
    batch_size: int = 256
    lr: float | None = None
    prior_lr: float = 1e-4
    lambda_rate: float = 1e-4
    lambda_sparsity: float = 1e-6
    lambda_l2: float = 1e-6
    lambda_channel: float = 0.0
    channel_scope: str = "coupled"
    channel_finetune: float = 0.0
    channel_solver: str = "gradient"
    channel_rewind: str = "none"
    channel_block: int = 1
    channel_cost: str = "params"
    channel_round_to: int = 0
    channel_round: str = "up"
    warmup_epochs: float | None = None
    seed: int = 0
    device: str | None = None
    rate_table: int = DEFAULT_POINTS

    def validate(self) -> TrainConfig:
        check_positive_int("epochs", self.epochs)
        check_positive_int("batch_size", self.batch_size)
        for name in ("prior_lr", "lambda_rate", "lambda_sparsity", "lambda_l2", "lambda_channel"):
            check_nonnegative(name, getattr(self, name))
        if self.lr is not None:
            check_nonnegative("lr", self.lr)
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be positive, but got {self.lr}")
        if self.warmup_epochs is not None:
            check_nonnegative("warmup_epochs", self.warmup_epochs)
        from lilnetx.core.channel_options import (
            check_cost,
            check_rewind,
            check_round,
            check_scope,
            check_solver,
        )

        check_scope(self.channel_scope)
        check_cost(self.channel_cost)
        check_solver(self.channel_solver)
        check_rewind(self.channel_rewind)
        check_round(self.channel_round)
        check_positive_int("channel_block", self.channel_block)
        r = self.channel_round_to
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise ConfigError(f"channel_round_to must be a non-negative integer, but got "
                              f"{str(r)[:40]}")
        f = self.channel_finetune
        if isinstance(f, bool) or not isinstance(f, int | float) or not 0 <= f < 1:
            raise ConfigError(f"channel_finetune must be a fraction in [0, 1), but got "
                              f"{str(f)[:40]}")
        if self.channel_round_to and not f > 0:
            raise ConfigError(f"channel_round_to {r} needs a fine-tuning phase "
                              "(channel_finetune > 0)")
        if self.channel_rewind != "none" and not f > 0:
            raise ConfigError(f"channel_rewind {self.channel_rewind} needs a fine-tuning phase "
                              "(channel_finetune > 0)")
        if isinstance(self.rate_table, bool) or not isinstance(self.rate_table, int) or not (
                self.rate_table == 0 or 2 <= self.rate_table <= MAX_POINTS):
            raise ConfigError(f"rate_table must be 0 (exact) or an integer in 2..{MAX_POINTS}, "
                              f"but got {str(self.rate_table)[:40]}")
        return self

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    """What :func:`fit` returns: per-epoch history and wall time in seconds."""

    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def pick_device(device: str | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU. Raises :class:`ConfigError` for a
    device torch does not know or a CUDA device this machine does not have (never a silent
    fallback to the CPU)."""
    if not device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device must be cpu, cuda or cuda:N, but got {str(device)[:100]!r}") \
            from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (dev.index is not None and dev.index >= n):
            raise ConfigError(f"device {device!r} was asked for, but torch sees "
                              f"{n} CUDA device{'s' if n != 1 else ''} here")
    return dev


def lr_factor(step: int, total: int, warmup: int, lr: float, start: float = 1e-6) -> float:
    """Learning rate at iteration ``step`` of ``total``: linear warmup then cosine to 0."""
    if step < warmup:
        return start + (lr - start) * step / max(warmup, 1)
    t = (step - warmup) / max(total - warmup, 1)
    return 0.5 * lr * (1.0 + math.cos(math.pi * min(t, 1.0)))


def joint_loss(
    model: nn.Module, logits: torch.Tensor, target: torch.Tensor, cfg: TrainConfig
) -> dict[str, torch.Tensor]:
    """The loss terms of one batch. Keys: ``loss``, ``ce``, and for LilNetX models ``bits``
    (noisy rate of all latents, bits), ``slice`` and ``l2`` (unweighted penalties)."""
    ce = F.cross_entropy(logits, target)
    if not isinstance(model, LilNetXModel):
        return {"loss": ce, "ce": ce}
    bits = model.rate_bits(table=cfg.rate_table or None)
    loss = ce + cfg.lambda_rate * bits / model.n_rows()
    out = {"ce": ce, "bits": bits}
    if cfg.lambda_sparsity > 0:
        out["slice"] = model.slice_penalty()
        loss = loss + cfg.lambda_sparsity * out["slice"]
    if cfg.lambda_channel > 0:
        out["channel"] = model.channel_penalty()
        loss = loss + cfg.lambda_channel * out["channel"]
    if cfg.lambda_l2 > 0:
        out["l2"] = model.l2_penalty()
        loss = loss + cfg.lambda_l2 * out["l2"]
    out["loss"] = loss
    return out


def base_lr(model: nn.Module, cfg: TrainConfig) -> float:
    """``cfg.lr``, or the default of the model kind (1e-2 LilNetX, 1e-3 plain)."""
    if cfg.lr is not None:
        return cfg.lr
    return 1e-2 if isinstance(model, LilNetXModel) else 1e-3


_FUSED_DEVICES = ("cpu", "cuda")


def adam(params: list[torch.Tensor], lr: float) -> torch.optim.Adam:
    """Adam over ``params``, with PyTorch's fused kernel when every tensor is a float tensor on
    the CPU or a CUDA device (one kernel for all tensors instead of a dozen ops per tensor:
    0.57 to 0.16 ms per LilNetX LeNet-5 step, 5.9 to 2.8 ms at ResNet-20 width 4, measured in
    ``benchmarks/train_step.py --profile``); the same update otherwise."""
    params = list(params)
    fused = bool(params) and all(p.device.type in _FUSED_DEVICES and p.is_floating_point()
                                 for p in params) and len({p.device for p in params}) == 1
    return torch.optim.Adam(params, lr=lr, fused=fused or None)


def make_optimizers(model: nn.Module, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """Adam for the network (latents, decoders, BN, biases) and Adam for the priors (each
    built by :func:`adam`)."""
    prior_ids = set()
    opts = []
    if isinstance(model, LilNetXModel):
        prior = model.prior_parameters()
        prior_ids = {id(p) for p in prior}
        opts.append(adam(prior, cfg.prior_lr))
    main = [p for p in model.parameters() if id(p) not in prior_ids and p.requires_grad]
    opts.insert(0, adam(main, base_lr(model, cfg)))
    return opts


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, dataset, batch_size: int = 512,
                      device: torch.device | str | None = None, *,
                      workers: int | None = None) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of ``model`` on ``dataset``, in eval mode.
    ``workers``: DataLoader processes for a data set read from disk (None: min(4, CPUs))."""
    device = pick_device(str(device) if device is not None else None)
    # A private generator: a DataLoader pass draws its workers' seed from it, not from torch's
    # global generator (whose state an evaluation between epochs must not change).
    return _accuracy(model, iterate_batches(dataset, batch_size, shuffle=False, device=device,
                                            workers=workers, generator=torch.Generator()))


@torch.no_grad()
def _accuracy(model: nn.Module, batches) -> float:
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in batches:
        correct += (model(x).argmax(1) == y).sum()  # a device tensor: no sync per batch
        total += int(y.numel())
    model.train(was_training)
    return int(correct) / max(total, 1)


def fit(
    model: nn.Module,
    splits: DataSplits,
    cfg: TrainConfig,
    progress: Callable[[dict], None] | None = None,
    *,
    schedule: Callable[[int, int], float] | None = None,
    after_step: Callable[[], None] | None = None,
    epoch_offset: int = 0,
) -> TrainResult:
    """Train ``model`` in place on ``splits.train``; validate on ``splits.val`` each epoch.

    ``progress`` receives ``{"event": "step", "epoch", "step", "steps", "loss", "bits"}`` after
    every step, with ``loss`` and ``bits`` (None for a plain network) read from the device only
    at the first step of every epoch, every :data:`LOG_EVERY` steps and at its last step (None
    in between), and ``{"event": "epoch", ...history row...}`` after every epoch.
    ``schedule(step, total)`` replaces the warmup-cosine learning rate of the network optimizer;
    ``after_step()`` runs after every optimizer step (IMP re-applies its masks there);
    ``epoch_offset`` numbers the epochs of a later training phase after the earlier ones.
    Raises :class:`TrainingDiverged` when the loss is not finite (checked at those steps and at
    the end of every epoch: the loop itself never waits for the device).
    """
    cfg.validate()
    device = pick_device(cfg.device)
    keep_freed_memory()  # each step reuses the memory the last one freed (lilnetx.allocator)
    key = (cfg.channel_scope, cfg.channel_block, cfg.channel_cost)
    if cfg.lambda_channel > 0 and isinstance(model, LilNetXModel) and (
            model.channel_groups is None or model.channel_groups.key != key):
        from lilnetx.core.channel_prior import build_channel_groups

        x0 = torch.as_tensor(splits.train[0][0])  # trace the coupled channels once, on the CPU
        model.channel_groups = build_channel_groups(
            model, x0.unsqueeze(0).repeat(2, *([1] * x0.dim())), *key)
    model.to(device).train()
    torch.manual_seed(cfg.seed)  # the rate's training noise comes from the global generator
    gen = torch.Generator().manual_seed(cfg.seed)
    steps = num_batches(splits.train, cfg.batch_size)
    total = steps * cfg.epochs
    warm_epochs = cfg.warmup_epochs if cfg.warmup_epochs is not None else min(5.0, cfg.epochs / 10)
    warmup = int(round(warm_epochs * steps))
    opts = make_optimizers(model, cfg)
    channel = ChannelPhase(model, cfg, total, opts)
    peak = base_lr(model, cfg)
    schedule = schedule or (lambda step, n: lr_factor(step, n, warmup, peak))
    result = TrainResult()
    start = time.perf_counter()
    # One loader per split for the whole run: a data set read from disk keeps its workers
    # between epochs; they end with the run, whatever ends it.
    workers = getattr(splits, "workers", None)
    train_batches = Batches(splits.train, cfg.batch_size, shuffle=True, generator=gen,
                            device=device, augment=splits.augment, workers=workers,
                            persistent=True)
    val_batches = Batches(splits.val, 512, shuffle=False, generator=torch.Generator(),
                          device=device, workers=workers, persistent=True)
    with train_batches, val_batches:
        it = 0
        for epoch in range(1, cfg.epochs + 1):
            sums = {k: torch.zeros((), device=device) for k in ("loss", "ce", "bits")}
            correct = torch.zeros((), dtype=torch.long, device=device)
            finite = torch.ones((), dtype=torch.bool, device=device)
            seen = 0
            for step, (x, y) in enumerate(train_batches, start=1):
                lr = schedule(*channel.lr_step(it, total))
                for g in opts[0].param_groups:
                    g["lr"] = lr
                step_cfg = channel.before(it)
                logits = model(x)
                terms = joint_loss(model, logits, y, step_cfg)
                loss = terms["loss"]
                for o in opts:
                    o.zero_grad(set_to_none=True)
                loss.backward()
                for o in opts:
                    o.step()
                channel.after(lr)
                if after_step is not None:
                    after_step()
                it += 1
                # everything below stays on the device: read at the logging interval only
                n = y.numel()
                finite &= torch.isfinite(loss.detach())
                for k in sums:
                    if k in terms:
                        sums[k] += terms[k].detach() * n
                correct += (logits.detach().argmax(1) == y).sum()
                seen += int(n)
                read = step == 1 or step % LOG_EVERY == 0 or step == steps
                if read:
                    _check_finite(finite, epoch, step)
                if progress is not None:
                    progress({"event": "step", "epoch": epoch + epoch_offset, "step": step,
                              "steps": steps,
                              "loss": float(loss.detach()) if read else None,
                              "bits": float(terms["bits"].detach()) if read and "bits" in terms
                              else None})
            _check_finite(finite, epoch, steps)
            sums = {k: float(v) for k, v in sums.items()}
            correct = int(correct)
            row = {"epoch": epoch + epoch_offset, "learning_rate": lr, "train_accuracy": correct / max(seen, 1)}
            row.update({f"train_{k}": v / max(seen, 1) for k, v in sums.items() if k in terms})
            if channel.removed is not None:
                row["channels_removed"] = channel.removed
            if channel.revived is not None:
                row["channels_revived"] = channel.revived
            row["val_accuracy"] = _accuracy(model, val_batches)
            if isinstance(model, LilNetXModel):
                model.eval()
                with torch.no_grad():
                    row["bits_estimate"] = float(model.rate_bits(noisy=False))
                model.train()
            row["elapsed_seconds"] = time.perf_counter() - start
            result.history.append(row)
            if progress is not None:
                progress({"event": "epoch", **row})
    model.eval()
    result.seconds = time.perf_counter() - start
    return result
