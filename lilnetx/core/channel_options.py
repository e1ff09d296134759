"""The options of the coupled-channel group prior (:mod:`lilnetx.core.channel_prior`): their
string choices and checks, without torch, so the command line and the sweep schema read them from
here (:data:`CHOICES`) without loading the network code."""

from __future__ import annotations


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> str:
    """``value`` when it is one of ``choices``, else a :class:`~lilnetx.errors.ConfigError`
    naming ``key`` (the value clipped to 40 characters)."""
    if value not in choices:
        from lilnetx.errors import ConfigError

        raise ConfigError(f"{key} must be one of {', '.join(choices)}, but got "
                          f"{str(value)[:40]!r}")
    return value


CHOICES: dict[str, tuple[str, ...]] = {}
"""The string choices of the channel prior's options, by ``TrainConfig`` field (filled below):
what the sweep schema checks a space's values against."""


SCOPES = ("coupled", "all")
"""``coupled``: only the channels of groups that more than one layer writes (residual streams,
depthwise pairs, concatenated branches), the slice prior alone acting on the others; ``all``:
every channel of every group (a plain conv's output channels too)."""


def check_scope(scope: str) -> str:
    """``scope`` when it is one of :data:`SCOPES`, else a :class:`~lilnetx.errors.ConfigError`."""
    return _check_choice("channel_scope", scope, SCOPES)


COSTS = ("params", "macs", "sqrt_macs")
"""What one channel of the prior costs. ``params``: its latent entries (the group lasso's
``sqrt(n_c)``, the same pull on every entry). ``macs``: the multiply-accumulates they take, a
resource-weighted regularizer as in MorphNet (Gordon et al., 2018): channel ``c``'s term is
multiplied by ``m_c``, the mean over its entries of their layer's output positions
(``H_out * W_out`` of a conv, 1 of a linear layer), divided by that mean over every entry of every
channel, so the mean multiplier per entry is 1 and one ``lambda_channel`` keeps its scale. On
ResNet-20 the first stage's channels (at full resolution, the most MACs per weight and the least
efficient kernels) are pulled 5.5-6.8x harder than with ``params``, the last stage's 0.43x.
``sqrt_macs``: the square root of that multiplier, renormalized to mean 1 per entry, a middle
way: on ResNet-20 the first stage 2.6-3.0x, the last 0.74x."""


def check_cost(cost: str) -> str:
    """``cost`` when it is one of :data:`COSTS`, else a :class:`~lilnetx.errors.ConfigError`."""
    return _check_choice("channel_cost", cost, COSTS)


SOLVERS = ("gradient", "proximal")
"""How the prior acts. ``gradient``: ``lambda_channel * P`` is a term of the loss, and its
gradient goes through Adam with the task's. Adam divides every gradient by its own running scale,
so a small, steady pull toward zero moves an entry whose task gradient is small or noisy by up to
a full learning-rate step, whatever the weight: measured, the kept channels lose 88-98% of their
slices even at small weights. ``proximal``: the prior is not in the loss; after every optimizer
step each channel is shrunk by the proximal operator of ``lr * lambda_channel * P`` (group
soft-thresholding, :func:`~lilnetx.core.channel_prior.group_shrink`), decoupled from Adam as AdamW decouples weight decay, so
the shrink is ``lr * lambda_channel`` per step in latent units, a fraction of Adam's step, and a
channel whose root mean square falls under it is set to exactly zero."""


def check_solver(solver: str) -> str:
    """``solver`` when it is one of :data:`SOLVERS`, else a :class:`~lilnetx.errors.ConfigError`."""
    return _check_choice("channel_solver", solver, SOLVERS)


REWINDS = ("none", "lr", "weights")
"""What the fine-tuning phase of ``channel_finetune`` starts from. ``none``: the network and the
learning-rate schedule go on as they are. ``lr``: the warmup-cosine learning rate restarts over
the remaining steps (learning-rate rewinding, Renda et al. 2020), so the network the prior
leaves trains at a full schedule again. ``weights``: every parameter and buffer goes back to its
value at the start of the run and the optimizers' states are cleared, and the learning rate
restarts too: the architecture the prior found trains from its initialization (weight
rewinding to step 0, Frankle et al. 2019; the run keeps a copy of the state at step 0, the
model's size once more in memory on its device, until the switch). Either way the removed
channels are held at zero."""


ROUNDS = ("up", "nearest")
"""How ``channel_round_to`` N rounds a dependency group's width at the switch to fine-tuning.
``up``: to the next multiple of N, with the removed channels that lived longest given back.
``nearest``: to the nearest multiple of N (halves up), given back as with ``up`` or taken away,
the weakest kept channels first (held at zero from then on, the fine-tuning recovering what they
did); a group kept narrower than N stays as it is, since a kernel that narrow is cheap on any
path (ONNX Runtime's blocked convolutions read fewer input channels than a block directly)."""


def check_round(mode: str) -> str:
    """``mode`` when it is one of :data:`ROUNDS`, else a :class:`~lilnetx.errors.ConfigError`."""
    return _check_choice("channel_round", mode, ROUNDS)


CHOICES.update(channel_scope=SCOPES, channel_solver=SOLVERS, channel_rewind=REWINDS,
               channel_cost=COSTS, channel_round=ROUNDS)


def check_rewind(rewind: str) -> str:
    """``rewind`` when it is one of :data:`REWINDS`, else a :class:`~lilnetx.errors.ConfigError`."""
    return _check_choice("channel_rewind", rewind, REWINDS)
