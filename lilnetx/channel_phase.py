"""The phases of a run with the coupled-channel prior (:mod:`lilnetx.core.channel_prior`).

:class:`ChannelPhase` is what :func:`lilnetx.train.fit` asks, step by step, how the prior acts:
in the loss (``channel_solver`` ``gradient``) or as a proximal shrink after every optimizer step
(``proximal``), and, with ``channel_finetune``, until step ``start`` only. At that switch the
channels the prior removed are held at zero and the prior is off; ``channel_rewind`` restarts the
learning rate (``lr``) or the weights too (``weights``), and ``channel_round_to`` N gives every
dependency group that lost channels back the removed channels that lived longest, from their
values at step 0, until its width is a multiple of N: the widths fast kernels want, trained for
the rest of the run instead of padded with zeros at export (``lilnetx.slim(round_to=N)``);
with ``channel_round`` ``nearest`` a group goes to the nearest multiple instead, its weakest
kept channels taken away when that is below its width.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from lilnetx.core.model import LilNetXModel

if TYPE_CHECKING:
    from lilnetx.train import TrainConfig


class ChannelPhase:
    """How the coupled-channel prior acts during a run of ``total`` steps (see the module
    docstring). ``opts``: the run's optimizers (their states are cleared by a weight rewind).

    Attributes:
        start: the first step of the fine-tuning phase (None without one).
        held: per latent layer name, the flat latent indices held at zero after the switch.
        removed: network channels held at zero (read once, at the switch).
        revived: channels given back by ``channel_round_to`` (read once, at the switch).
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, total: int,
                 opts: list[torch.optim.Optimizer] = ()):
        self.on = isinstance(model, LilNetXModel) and cfg.lambda_channel > 0
        self.model, self.cfg, self.opts = model, cfg, list(opts)
        self.proximal = self.on and cfg.channel_solver == "proximal"
        self.start = (total - int(round(cfg.channel_finetune * total))
                      if self.on and cfg.channel_finetune > 0 else None)
        self.held: dict[str, torch.Tensor] | None = None
        self.removed: int | None = None
        self.revived: int | None = None
        self._off = replace(cfg, lambda_channel=0.0)
        self.rewind = cfg.channel_rewind if self.start is not None else "none"
        self.round_to = cfg.channel_round_to if self.start is not None else 0
        self._init = ({k: v.detach().clone() for k, v in model.state_dict().items()}
                      if self.rewind == "weights" else None)
        self._layers = dict(model.latent_layers()) if self.on else {}
        # what the round-up restores from, and how long each channel lived (steps of the
        # proximal shrink it came out of nonzero; counted on the device)
        self._start_latents = ({n: m.latent.detach().clone() for n, m in self._layers.items()}
                               if self.round_to and self._init is None else None)
        self._alive: torch.Tensor | None = None

    def lr_step(self, it: int, total: int) -> tuple[int, int]:
        """The (step, total) of the learning-rate schedule at iteration ``it`` of ``total``:
        after the switch with ``channel_rewind`` ``lr`` or ``weights``, the schedule restarts
        over the remaining steps."""
        if self.rewind == "none" or it < self.start:
            return it, total
        return it - self.start, total - self.start

    def _groups(self):
        groups = self.model.channel_groups
        device = next(iter(self._layers.values())).latent.device
        if groups.sizes.device != device:
            groups = self.model.channel_groups = groups.to(device)
        return groups

    def before(self, it: int) -> TrainConfig:
        """The loss configuration of iteration ``it`` (switching phases when it is due)."""
        if self.start is None or it < self.start:
            return self._off if self.proximal else self.cfg
        if self.held is None:
            self._switch()
        return self._off

    def _switch(self) -> None:
        from lilnetx.core.channel_prior import (
            _channel_sumsq,
            held_entries,
            hold_at_zero,
            nearest_widths,
            round_up_widths,
            spare_last_channels,
            unread_channels,
        )

        groups = self._groups()
        dead = unread_channels(self._layers, groups)
        with torch.no_grad():
            strength = _channel_sumsq(self._layers, groups)
        # no group loses its last channel: the strongest of an all-dead group trains on
        dead = dead & ~spare_last_channels(groups, dead, strength)
        revived = None
        if self.round_to:
            score = self._alive if self._alive is not None else strength
            if self.cfg.channel_round == "nearest":
                revived, taken = nearest_widths(groups, dead, score, strength, self.round_to)
                dead = (dead & ~revived) | taken
            else:
                revived = round_up_widths(groups, dead, score, self.round_to)
                dead = dead & ~revived
            self.revived = int(groups.widths[revived].sum())  # one host read, once per run
        self.held = held_entries(groups, dead)
        self.removed = int(groups.widths[dead].sum())  # one host read, once per run
        if self._init is not None:  # back to step 0, the removed channels excepted
            self.model.load_state_dict(self._init)
            self._init = None
            for o in self.opts:
                o.state.clear()
        elif revived is not None:  # the revived channels from their values at step 0
            with torch.no_grad():
                for n, idx in held_entries(groups, revived).items():
                    flat = self._layers[n].latent.view(-1)
                    flat.index_copy_(0, idx, self._start_latents[n].view(-1).index_select(0, idx))
            self._start_latents = None
        hold_at_zero(self._layers, self.held)

    def after(self, lr: float) -> None:
        """After an optimizer step at learning rate ``lr``: the proximal shrink of the prior
        phase (until the switch sets ``held``), or the removed channels back to exactly zero in
        the fine-tuning phase."""
        if self.held is not None:
            from lilnetx.core.channel_prior import hold_at_zero

            hold_at_zero(self._layers, self.held)
        elif self.proximal:
            from lilnetx.core.channel_prior import group_shrink

            alive = group_shrink(self._layers, self._groups(), lr * self.cfg.lambda_channel)
            if self.round_to and alive is not None:
                self._alive = alive.float() if self._alive is None else self._alive.add_(alive)
