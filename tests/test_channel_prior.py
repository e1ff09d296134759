"""The coupled-channel group prior (lilnetx.core.channel_prior): which latent entries each coupled
channel gathers on ResNet-20 and LeNet-5 (against the weights' own layout), the value against a
brute-force computation, its gradient, and that training with it removes whole residual channels
that slim can drop."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

pytest.importorskip("torch_pruning")

from lilnetx import TrainConfig, create_model  # noqa: E402
from lilnetx.core.channel_prior import build_channel_groups, channel_group_lasso  # noqa: E402
from lilnetx.core.model import convert  # noqa: E402
from lilnetx.errors import ConfigError  # noqa: E402
from lilnetx.train import joint_loss  # noqa: E402


def resnet(width=0.5):
    torch.manual_seed(0)
    return convert(create_model("resnet20", in_channels=3, image_size=32, num_classes=10,
                                width=width))


def lenet():
    torch.manual_seed(0)
    return convert(create_model("lenet5", in_channels=1, image_size=28, num_classes=10))


def brute_force(model, groups) -> torch.Tensor:
    """The prior from the members list, slicing each layer's latent in weight layout."""
    layers = dict(model.latent_layers())
    terms = []
    for members in groups.members:
        seen: dict[tuple[str, int], torch.Tensor] = {}
        for name, side, idx in members:
            layer = layers[name]
            w = layer.latent.reshape(layer.weight_shape)
            flat_ids = torch.arange(w.numel()).reshape(w.shape)
            ids = flat_ids[idx] if side == "out" else flat_ids[:, idx]
            lat = layer.latent.reshape(-1)
            for i in ids.reshape(-1).tolist():
                seen[(name, i)] = lat[i]
        vals = torch.stack(list(seen.values()))
        terms.append(math.sqrt(len(vals)) * torch.sqrt(vals.square().sum() + 1e-12))
    return torch.stack(terms).sum()


def test_resnet20_residual_channels_gather_every_writer_and_reader():
    model = resnet(width=0.5)  # stages of 8, 16, 32 channels
    g = build_channel_groups(model, torch.randn(2, 3, 32, 32), "all")
    convs = [n for n, _ in model.latent_layers() if n != "fc"]
    # three residual streams (stem + 3 conv2 writers each) and one group per block's conv1
    assert g.groups == 3 + 9
    assert g.channels == (8 + 16 + 32) + 3 * (8 + 16 + 32)
    assert set(g.names) == {n for n, _ in model.latent_layers()}
    last = max(range(g.channels), key=lambda c: g.sizes[c])
    names = {(n, s) for n, s, _ in g.members[last]}
    assert names == {("layers.6.conv2", "out"), ("layers.6.shortcut.0", "out"),
                     ("layers.7.conv2", "out"), ("layers.8.conv2", "out"),
                     ("layers.7.conv1", "in"), ("layers.8.conv1", "in"), ("fc", "in")}
    # entries: 3 conv2 outputs of 32x3x3, the 1x1 shortcut's 16, two conv1 inputs of 32x3x3,
    # the classifier's 10 weights
    assert int(g.sizes[last]) == 3 * 32 * 9 + 16 + 2 * 32 * 9 + 10
    assert all(len(m) > 0 for m in g.members) and len(convs) == 21


def test_lenet5_flatten_reader_takes_every_feature_of_a_channel():
    model = lenet()
    g = build_channel_groups(model, torch.randn(2, 1, 28, 28), "all")
    layers = dict(model.latent_layers())
    conv2, fc1 = list(layers)[1], list(layers)[2]
    c = next(i for i, m in enumerate(g.members) if any(n == conv2 and s == "out" for n, s, _ in m))
    reads = [idx for n, s, idx in g.members[c] if n == fc1 and s == "in"]
    per_channel = layers[fc1].weight_shape[1] // layers[conv2].weight_shape[0]
    assert len(reads) == per_channel == 25  # a 5x5 map flattened into fc1's input
    w2, w3 = layers[conv2].weight_shape, layers[fc1].weight_shape
    assert int(g.sizes[c]) == math.prod(w2[1:]) + w3[0] * per_channel


@pytest.mark.parametrize("make,shape", [(resnet, (2, 3, 32, 32)), (lenet, (2, 1, 28, 28))])
def test_value_and_gradient_match_brute_force(make, shape):
    model = make()
    g = build_channel_groups(model, torch.randn(shape), "all")
    layers = dict(model.latent_layers())
    with torch.no_grad():  # some exact zeros, as training makes them
        first = next(iter(layers.values()))
        first.latent[: first.latent.shape[0] // 3] = 0
    fast = channel_group_lasso(layers, g)
    slow = brute_force(model, g)
    assert fast.item() == pytest.approx(slow.item(), rel=1e-5)
    grads = torch.autograd.grad(fast, [m.latent for m in layers.values()])
    ref = torch.autograd.grad(slow, [m.latent for m in layers.values()])
    for a, b in zip(grads, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-9)
    # a channel whose entries are all zero adds ~nothing and is not pulled anywhere
    assert all(torch.isfinite(a).all() for a in grads)


def test_every_entry_is_pulled_alike_whatever_its_group_or_network():
    """With every latent equal to s, the prior's gradient on an entry is sign(s) once per
    channel it belongs to: the pull does not depend on the group's size or the network's."""
    for model, shape in ((resnet(0.25), (2, 3, 32, 32)), (resnet(1.0), (2, 3, 32, 32)),
                         (lenet(), (2, 1, 28, 28))):
        g = build_channel_groups(model, torch.randn(shape), "all")
        layers = dict(model.latent_layers())
        with torch.no_grad():
            for layer in layers.values():
                layer.latent.fill_(-2.0)
        p = channel_group_lasso(layers, g)
        assert p.item() == pytest.approx(2.0 * sum(n ** 1.5 / n ** 0.5 for n in
                                                   g.sizes.tolist()), rel=1e-5)
        p.backward()
        for n, layer in layers.items():
            memberships = torch.zeros(layer.latent.numel())
            if n in g.entries:
                memberships.index_add_(0, g.entries[n], torch.ones(len(g.entries[n])))
            torch.testing.assert_close(layer.latent.grad.reshape(-1), -memberships)


def test_joint_loss_adds_the_term_only_when_asked():
    model = lenet()
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    off = joint_loss(model, model(x), y, TrainConfig(lambda_channel=0.0))
    assert "channel" not in off
    with pytest.raises(ConfigError, match="example input"):
        joint_loss(model, model(x), y, TrainConfig(lambda_channel=0.1))
    model.channel_penalty(x[:2], scope="all")
    on = joint_loss(model, model(x), y, TrainConfig(lambda_channel=0.1))
    assert on["channel"].item() > 0
    assert on["loss"].item() == pytest.approx(
        on["ce"].item() + 1e-4 * on["bits"].item() / model.n_rows()
        + 1e-6 * on["slice"].item() + 1e-6 * on["l2"].item() + 0.1 * on["channel"].item(),
        rel=1e-5)
    with pytest.raises(ConfigError, match="lambda_channel"):
        TrainConfig(lambda_channel=-1.0).validate()


def test_scope_coupled_keeps_only_the_channels_several_layers_write():
    model = resnet(width=0.5)
    example = torch.randn(2, 3, 32, 32)
    coupled = build_channel_groups(model, example)  # the default
    every = build_channel_groups(model, example, "all")
    assert coupled.channels == 8 + 16 + 32 and every.channels == 4 * (8 + 16 + 32)
    for members in coupled.members:
        writers = {n for n, side, _ in members if side == "out"}
        assert len(writers) >= 2
    # LeNet-5 has no coupled channel: the prior is zero there
    assert build_channel_groups(lenet(), torch.randn(2, 1, 28, 28)).channels == 0
    with pytest.raises(ConfigError, match="channel_scope"):
        build_channel_groups(model, example, "some")
    with pytest.raises(ConfigError, match="channel_scope"):
        TrainConfig(channel_scope="some").validate()


def test_a_space_may_search_the_scope(tmp_path):
    from explorer.space import load_space

    path = tmp_path / "s.yaml"
    path.write_text("name: s\nmodel: lenet5\ndataset: digits\nmethod: lilnetx\n"
                    "objectives: {accuracy: max, size_bytes: min}\n"
                    "params: {lambda_channel: {loguniform: [1.0e-5, 1.0e-3]}, "
                    "channel_scope: {choice: [coupled, all]}}\n")
    space = load_space(str(path))
    assert set(space.searched()) >= {"lambda_channel", "channel_scope"}
    path.write_text(path.read_text().replace("coupled, all", "coupled, some"))
    with pytest.raises(ConfigError, match="channel_scope"):
        load_space(str(path))


def test_unread_channels_are_those_whose_every_reading_entry_rounds_to_zero():
    from lilnetx.core.channel_prior import held_entries, hold_at_zero, unread_channels

    model = resnet(width=0.5)
    g = build_channel_groups(model, torch.randn(2, 3, 32, 32), "coupled")
    layers = dict(model.latent_layers())
    assert not unread_channels(layers, g).any()
    # zero every entry through which channel 3 is read (not those that write it), and push
    # channel 5's readers just under the rounding threshold
    with torch.no_grad():
        for name, side, idx in g.members[3]:
            if side == "in":
                layers[name].latent.reshape(layers[name].weight_shape)[:, idx] = 0.0
        for name, side, idx in g.members[5]:
            if side == "in":
                w = layers[name].latent.reshape(layers[name].weight_shape)
                w[:, idx] = 0.49 * torch.sign(w[:, idx])
    dead = unread_channels(layers, g)
    assert dead.nonzero().flatten().tolist() == [3, 5]
    held = held_entries(g, dead)
    assert sum(v.numel() for v in held.values()) == int(g.sizes[3] + g.sizes[5])
    hold_at_zero(layers, held)
    for c in (3, 5):  # written and read entries of the two channels: exactly zero now
        for name, side, idx in g.members[c]:
            w = layers[name].latent.reshape(layers[name].weight_shape)
            assert (w[idx] if side == "out" else w[:, idx]).eq(0).all()
    assert layers["conv1"].latent.ne(0).any()


def test_channel_finetune_holds_removed_channels_at_zero_and_slim_drops_them(digits):
    import lilnetx
    from lilnetx.core.channel_prior import unread_channels
    from lilnetx.train import fit

    torch.manual_seed(0)
    model = convert(create_model("resnet20", in_channels=1, image_size=8, num_classes=10,
                                 width=0.5))
    # a high lr moves the latents (initial magnitudes up to ~3) to zero within a few epochs
    cfg = TrainConfig(epochs=6, batch_size=64, lr=0.2, lambda_channel=3e-3,
                      channel_finetune=0.5, device="cpu")
    result = fit(model, digits, cfg)
    removed = [h["channels_removed"] for h in result.history if "channels_removed" in h]
    assert removed and removed[0] > 0, result.history
    assert "channels_removed" not in result.history[2]  # the switch is in the fourth epoch
    assert result.history[-1]["train_accuracy"] > result.history[2]["train_accuracy"]
    layers = dict(model.latent_layers())
    dead = unread_channels(layers, model.channel_groups.to("cpu"))
    assert int(dead.sum()) >= removed[0]  # still removed after the fine-tuning steps
    x = torch.as_tensor(digits.test[0][0]).unsqueeze(0).repeat(4, 1, 1, 1)
    dense = lilnetx.decode(model).eval()
    slim = lilnetx.slim(model, x)
    before = sum(m.out_channels for n, m in dense.named_modules() if n.endswith("conv2"))
    after = sum(m.out_channels for n, m in slim.named_modules() if n.endswith("conv2"))
    assert after < before
    with torch.no_grad():
        torch.testing.assert_close(slim(x), dense(x), rtol=1e-4, atol=1e-4)


def test_channel_finetune_is_a_fraction_and_searchable(tmp_path):
    from explorer.space import load_space

    for bad in (1.0, -0.1, "half", True):
        with pytest.raises(ConfigError, match="channel_finetune"):
            TrainConfig(channel_finetune=bad).validate()
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nmodel: lenet5\ndataset: digits\nmethod: lilnetx\n"
                    "objectives: {accuracy: max, size_bytes: min}\n"
                    "params: {lambda_channel: 1.0e-3, channel_finetune: {uniform: [0.2, 0.6]}}\n")
    assert "channel_finetune" in load_space(str(path)).searched()
    path.write_text(path.read_text().replace("[0.2, 0.6]", "[0.2, 1.5]"))
    with pytest.raises(ConfigError, match="channel_finetune"):
        load_space(str(path))


def channel_rms(layers, groups) -> torch.Tensor:
    """Root mean square of every channel's entries, from the members list (weight layout)."""
    out = []
    for members in groups.members:
        seen = {}
        for name, side, idx in members:
            w = layers[name].latent.detach().reshape(layers[name].weight_shape)
            ids = torch.arange(w.numel()).reshape(w.shape)
            for i in (ids[idx] if side == "out" else ids[:, idx]).reshape(-1).tolist():
                seen[(name, i)] = float(layers[name].latent.detach().reshape(-1)[i])
        out.append(math.sqrt(sum(v * v for v in seen.values()) / len(seen)))
    return torch.tensor(out)


def test_group_shrink_is_the_proximal_step_of_the_group_lasso():
    from lilnetx.core.channel_prior import group_shrink

    model = resnet(width=0.5)
    g = build_channel_groups(model, torch.randn(2, 3, 32, 32), "coupled")
    layers = dict(model.latent_layers())
    before = {n: m.latent.detach().clone().reshape(-1) for n, m in layers.items()}
    rms = channel_rms(layers, g)
    step = float(rms.median())  # half the channels go to exactly zero
    factor = torch.clamp(1 - step / rms, min=0)
    # the strongest channel of each dependency group (the channels with the same layers and
    # sides) is never shrunk: the group keeps a channel whose latents do not round to zero
    deps: dict[frozenset, list[int]] = {}
    for c, members in enumerate(g.members):
        deps.setdefault(frozenset((n, side) for n, side, _ in members), []).append(c)
    assert len(deps) == 3  # ResNet-20's three residual streams
    strongest = [max(cs, key=lambda c: float(rms[c])) for cs in deps.values()]
    factor[strongest] = 1.0
    # the expected result: every entry times the factor of each channel it belongs to
    expected = {n: v.clone() for n, v in before.items()}
    for c, members in enumerate(g.members):
        done = set()
        for name, side, idx in members:
            w = torch.arange(before[name].numel()).reshape(layers[name].weight_shape)
            for i in (w[idx] if side == "out" else w[:, idx]).reshape(-1).tolist():
                if (name, i) not in done:
                    done.add((name, i))
                    expected[name][i] *= factor[c]
    group_shrink(layers, g, step)
    for n, m in layers.items():
        torch.testing.assert_close(m.latent.detach().reshape(-1), expected[n])
    after = channel_rms(layers, g)
    assert after[rms <= step].eq(0).all() and after[rms > step].gt(0).all()
    # a group whose every channel is under the step keeps its strongest one (not shrunk; an
    # entry it shares with a removed channel of another group goes with that one)
    kept = channel_rms(layers, g)
    group_shrink(layers, g, 1e6)
    after = channel_rms(layers, g)
    now = [max(cs, key=lambda c: float(kept[c])) for cs in deps.values()]
    assert after.gt(0).sum() == len(deps) and after[now].gt(0).all()
    # an entry of two coupled channels (the downsampling shortcut writes one and reads another)
    # shows both factors; a channel's own rms drops by `step` when no other channel touches it
    kept = {n: m.latent.detach().clone() for n, m in layers.items()}
    group_shrink(layers, g, 0.0)  # a zero step changes nothing
    for n, m in layers.items():
        torch.testing.assert_close(m.latent.detach(), kept[n])


@pytest.mark.parametrize("solver", ["gradient", "proximal"])
def test_channel_solver_removes_channels_and_slim_drops_them(digits, solver):
    import lilnetx
    from lilnetx.core.channel_prior import unread_channels
    from lilnetx.train import fit

    torch.manual_seed(0)
    model = convert(create_model("resnet20", in_channels=1, image_size=8, num_classes=10,
                                 width=0.5))
    lam = {"gradient": 3e-3, "proximal": 1.0}[solver]
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.2, lambda_channel=lam,
                      channel_solver=solver, device="cpu")
    fit(model, digits, cfg)
    layers = dict(model.latent_layers())
    dead = unread_channels(layers, model.channel_groups.to("cpu"))
    assert int(dead.sum()) > 0
    if solver == "proximal":  # the prox sets whole channels to exactly zero
        rms = channel_rms(layers, model.channel_groups)
        assert int(rms.eq(0).sum()) > 0
    x = torch.as_tensor(digits.test[0][0]).unsqueeze(0).repeat(4, 1, 1, 1)
    slim = lilnetx.slim(model, x)
    dense = lilnetx.decode(model).eval()
    with torch.no_grad():
        torch.testing.assert_close(slim(x), dense(x), rtol=1e-4, atol=1e-4)


def assert_searchable_choice(tmp_path, key: str, good: str, bad: str, extra: str = "") -> None:
    """A space may search ``key`` over the choices ``good`` and is refused, naming the key, for
    the choices ``bad``."""
    from explorer.space import load_space

    path = tmp_path / "s.yaml"
    path.write_text("name: s\nmodel: lenet5\ndataset: digits\nmethod: lilnetx\n"
                    "objectives: {accuracy: max, size_bytes: min}\n" + extra
                    + f"params: {{lambda_channel: 0.1, {key}: {{choice: [{good}]}}}}\n")
    assert key in load_space(str(path)).searched()
    path.write_text(path.read_text().replace(good, bad))
    with pytest.raises(ConfigError, match=key):
        load_space(str(path))


def test_channel_solver_is_validated_and_searchable(tmp_path):
    with pytest.raises(ConfigError, match="channel_solver"):
        TrainConfig(channel_solver="adam").validate()
    assert_searchable_choice(tmp_path, "channel_solver", "gradient, proximal", "gradient, newton")


def test_the_cli_offers_the_choices_the_library_knows():
    from explorer.cli import build_parser
    from lilnetx.core.channel_prior import SCOPES, SOLVERS

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    opts = {a.dest: a for a in train._actions}
    assert tuple(opts["channel_scope"].choices) == SCOPES
    assert tuple(opts["channel_solver"].choices) == SOLVERS
    args = build_parser().parse_args(["train", "--model", "lenet5", "--dataset", "digits",
                                      "--channel-solver", "proximal"])
    assert args.channel_solver == "proximal"


def test_channel_rewind_weights_restarts_from_step_0_but_the_removed_channels():
    from lilnetx.channel_phase import ChannelPhase
    from lilnetx.core.channel_prior import build_channel_groups as build
    from lilnetx.train import make_optimizers

    model = resnet()
    model.channel_groups = build(model, torch.randn(2, 3, 32, 32))
    cfg = TrainConfig(lambda_channel=0.1, channel_solver="proximal", channel_finetune=0.5,
                      channel_rewind="weights", device="cpu")
    opts = make_optimizers(model, cfg)
    prior = ChannelPhase(model, cfg, total=10, opts=opts)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    assert prior.lr_step(4, 10) == (4, 10)  # the prior phase runs the schedule as it is
    layers = dict(model.latent_layers())
    loss = sum(m.latent.sum() for m in layers.values())
    loss.backward()
    opts[0].step()
    assert opts[0].state
    with torch.no_grad():  # "training": every latent moves, one residual channel dies
        for m in layers.values():
            m.latent.add_(0.25)
        for name, side, idx in model.channel_groups.members[0]:
            w = layers[name].latent.reshape(layers[name].weight_shape)
            (w[idx] if side == "out" else w[:, idx]).zero_()
    cfg_ft = prior.before(5)  # the switch
    assert cfg_ft.lambda_channel == 0 and prior.removed >= 1
    assert not opts[0].state  # Adam starts afresh
    assert prior.lr_step(5, 10) == (0, 5) and prior.lr_step(9, 10) == (4, 5)
    held = {n: set(i.tolist()) for n, i in prior.held.items()}
    for n, m in layers.items():
        flat, start = m.latent.detach().reshape(-1), init[f"net.{n}.latent"].reshape(-1)
        keep = torch.tensor([i not in held.get(n, ()) for i in range(flat.numel())])
        torch.testing.assert_close(flat[keep], start[keep])  # back to step 0
        assert flat[~keep].eq(0).all()  # the removed channel stays removed


def test_channel_rewind_lr_keeps_the_weights_and_is_validated(tmp_path):
    from explorer.cli import build_parser
    from lilnetx.channel_phase import ChannelPhase
    from lilnetx.core.channel_prior import REWINDS

    model = resnet()
    cfg = TrainConfig(lambda_channel=0.1, channel_finetune=0.3, channel_rewind="lr")
    prior = ChannelPhase(model, cfg, total=10)
    assert prior._init is None and prior.lr_step(6, 10) == (6, 10)
    assert prior.lr_step(7, 10) == (0, 3)
    off = ChannelPhase(model, TrainConfig(lambda_channel=0.0, channel_finetune=0.3,
                                           channel_rewind="lr"), total=10)
    assert off.lr_step(8, 10) == (8, 10)  # no prior, nothing to rewind
    with pytest.raises(ConfigError, match="channel_rewind"):
        TrainConfig(channel_rewind="init").validate()
    with pytest.raises(ConfigError, match="channel_finetune > 0"):
        TrainConfig(lambda_channel=0.1, channel_rewind="lr").validate()
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    assert tuple({a.dest: a for a in train._actions}["channel_rewind"].choices) == REWINDS
    assert_searchable_choice(tmp_path, "channel_rewind", "none, lr", "none, adam",
                             "train: {channel_finetune: 0.5}\n")


def test_channel_block_groups_consecutive_channels_and_removes_them_together(digits):
    from lilnetx.train import fit

    model = resnet()
    one = build_channel_groups(model, torch.randn(2, 3, 32, 32), "all")
    four = build_channel_groups(model, torch.randn(2, 3, 32, 32), "all", block=4)
    assert int(one.widths.sum()) == int(four.widths.sum()) == one.channels
    assert four.channels < one.channels and four.widths.max() == 4
    assert float(four.sizes.sum()) == float(one.sizes.sum())  # every entry once, in its block
    for members in four.members:  # a block: channels of one layer set, consecutive indices
        idx = sorted({i for name, side, i in members if side == "out"})
        assert idx == list(range(idx[0], idx[0] + len(idx))) and len(idx) <= 4
    with pytest.raises(ConfigError, match="channel_block"):
        TrainConfig(channel_block=0).validate()
    # trained with blocks of 4, the proximal shrink zeroes whole blocks: every channel of a
    # block is exactly zero or none is
    from lilnetx.core.channel_prior import _channel_sumsq

    torch.manual_seed(0)
    net = convert(create_model("resnet20", in_channels=1, image_size=8, num_classes=10,
                               width=0.5))
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.2, lambda_channel=0.15, channel_block=4,
                      channel_solver="proximal", channel_scope="all", device="cpu")
    fit(net, digits, cfg)
    blocks = net.channel_groups.to("cpu")
    assert blocks.widths.max() == 4
    layers = dict(net.latent_layers())
    x = torch.as_tensor(digits.test[0][0]).unsqueeze(0).repeat(2, 1, 1, 1)
    per_channel = build_channel_groups(net, x, "all")
    zero = (_channel_sumsq(layers, per_channel) == 0).tolist()
    block_of = {m: b for b, ms in enumerate(blocks.members) for m in ms}
    flags: dict[int, set[bool]] = {}
    for c, ms in enumerate(per_channel.members):
        flags.setdefault(block_of[ms[0]], set()).add(zero[c])
    assert any(f == {True} for f in flags.values()) and any(f == {False} for f in flags.values())
    assert all(len(f) == 1 for f in flags.values())
    removed = [h["channels_removed"] for h in fit(
        net, digits, replace(cfg, epochs=2, channel_finetune=0.5)).history
        if "channels_removed" in h]
    assert removed and removed[0] % 1 == 0 and removed[0] >= 4  # counted in channels


def test_channel_cost_macs_weights_each_channel_by_its_multiply_accumulates():
    """``cost="macs"``: a channel's multiplier is the mean output positions of its entries'
    layers over that mean across all entries (brute force from the members list and the layers'
    output shapes), the entry-weighted mean is 1, the first stage (32 x 32) weighs 16x the last
    (8 x 8), the value is the weighted group lasso, and the proximal shrink removes the heaviest
    channels first."""
    from lilnetx.core.channel_prior import _channel_sumsq, group_shrink
    from lilnetx.core.model import decode

    model = resnet()
    x = torch.randn(2, 3, 32, 32)
    plain = decode(model)
    outs = {}
    for name, m in plain.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda mod, i, o, name=name: outs.__setitem__(
                name, o.shape[2] * o.shape[3]))
    plain(x)
    params = build_channel_groups(model, x, "all")
    macs = build_channel_groups(model, x, "all", cost="macs")
    assert params.weight.eq(1).all() and macs.key == ("all", 1, "macs")
    layers = dict(model.latent_layers())
    per_entry = []
    for members in macs.members:  # each entry once per channel, with its layer
        seen: dict[tuple[str, int], int] = {}
        for name, side, idx in members:
            w = torch.arange(layers[name].latent.numel()).reshape(layers[name].weight_shape)
            for i in (w[idx] if side == "out" else w[:, idx]).reshape(-1).tolist():
                seen[(name, i)] = outs.get(name, 1)
        per_entry.append(list(seen.values()))
    mean = sum(map(sum, per_entry)) / sum(map(len, per_entry))
    want = torch.tensor([sum(v) / len(v) / mean for v in per_entry])
    torch.testing.assert_close(macs.weight, want)
    assert float((macs.weight * macs.sizes).sum() / macs.sizes.sum()) == pytest.approx(1.0)
    root = build_channel_groups(model, x, "all", cost="sqrt_macs")  # the square root, mean 1
    sizes = torch.tensor([float(len(v)) for v in per_entry])
    torch.testing.assert_close(root.weight, want.sqrt() / ((want.sqrt() * sizes).sum() / sizes.sum()))
    assert root.key == ("all", 1, "sqrt_macs")

    def inner(block):  # the channels a block's conv1 writes and its conv2 reads, only those
        return [i for i, ms in enumerate(macs.members)
                if {(n, s) for n, s, _ in ms} == {(f"layers.{block}.conv1", "out"),
                                                   (f"layers.{block}.conv2", "in")}]

    stage1, stage3 = inner(0), inner(8)
    assert stage1 and stage3
    assert float(macs.weight[stage1].min()) == pytest.approx(16 * float(macs.weight[stage3].max()))
    torch.testing.assert_close(
        channel_group_lasso(layers, macs),
        (macs.weight * macs.sizes.sqrt()
         * torch.sqrt(_channel_sumsq(layers, macs) + 1e-12)).sum())
    with torch.no_grad():
        for m in layers.values():
            m.latent.fill_(1.0)
    step = 1.5 / float(macs.weight.max())  # kills a channel of rms 1 when its weight > 2/3 max
    group_shrink(layers, macs, step)
    sums = _channel_sumsq(layers, macs)
    heavy, light = macs.weight * step >= 1, macs.weight == macs.weight.min()
    # every heavy channel is removed but one per dependency group (never its last channel)
    alive_heavy = torch.zeros(int(macs.dep.max()) + 1).index_add_(
        0, macs.dep, (heavy & sums.gt(0)).float())
    assert heavy.any() and sums[heavy].eq(0).sum() >= heavy.sum() - alive_heavy.gt(0).sum()
    assert alive_heavy.max() == 1 and sums[light].gt(0).all()


def test_channel_cost_is_validated_searchable_and_rebuilds_the_groups(tmp_path, digits):
    from explorer.cli import build_parser
    from lilnetx.core.channel_prior import COSTS
    from lilnetx.train import fit

    with pytest.raises(ConfigError, match="channel_cost"):
        TrainConfig(channel_cost="flops").validate()
    assert_searchable_choice(tmp_path, "channel_cost", "params, macs", "params, flops")
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    assert tuple({a.dest: a for a in train._actions}["channel_cost"].choices) == COSTS
    torch.manual_seed(0)
    net = convert(create_model("resnet20", in_channels=1, image_size=8, num_classes=10,
                               width=0.25))
    cfg = TrainConfig(epochs=1, batch_size=256, lambda_channel=0.01, channel_scope="all",
                      channel_solver="proximal", device="cpu")
    fit(net, digits, cfg)
    assert net.channel_groups.key == ("all", 1, "params")
    fit(net, digits, replace(cfg, channel_cost="macs"))  # another cost: the groups follow
    assert net.channel_groups.key == ("all", 1, "macs")
    assert not net.channel_groups.weight.eq(1).all()


def test_round_up_widths_gives_back_the_longest_lived_channels_to_a_multiple():
    from lilnetx.core.channel_prior import round_up_widths

    model = resnet()  # width 0.5: stage widths 8, 16, 32
    g = build_channel_groups(model, torch.randn(2, 3, 32, 32), "all")
    deps = g.dep.tolist()
    inner = [d for d in sorted(set(deps)) if deps.count(d) == 8][1]  # a stage-1 conv1 group
    wide = [d for d in sorted(set(deps)) if deps.count(d) == 32][0]
    ids = {d: [i for i, x in enumerate(deps) if x == d] for d in (inner, wide)}
    dead = torch.zeros(g.channels, dtype=torch.bool)
    dead[ids[inner][:5]] = True  # 3 of 8 left: back to 4, the dead channel of highest score
    dead[ids[wide]] = True  # a group that loses every channel stays empty
    score = torch.arange(g.channels, dtype=torch.float)
    score[ids[inner][2]] = 1e6
    back = round_up_widths(g, dead, score, 4)
    assert back.nonzero().flatten().tolist() == [ids[inner][2]]
    dead[ids[inner][:5]] = False
    dead[ids[inner][:3]] = True  # 5 left: back to 8, all three
    dead[ids[wide]] = False
    assert round_up_widths(g, dead, score, 4).nonzero().flatten().tolist() == ids[inner][:3]
    assert not round_up_widths(g, dead, score, 1).any()  # every width is a multiple of 1


def test_channel_round_to_revives_from_step_0_at_the_switch(tmp_path, digits):
    from explorer.cli import build_parser
    from lilnetx.channel_phase import ChannelPhase
    from lilnetx.core.channel_prior import held_entries
    from lilnetx.train import fit

    model = resnet()
    model.channel_groups = build_channel_groups(model, torch.randn(2, 3, 32, 32), "all")
    g = model.channel_groups
    cfg = TrainConfig(lambda_channel=0.1, channel_scope="all", channel_solver="proximal",
                      channel_finetune=0.5, channel_rewind="lr", channel_round_to=4)
    phase = ChannelPhase(model, cfg, total=10)
    layers = dict(model.latent_layers())
    start = {n: m.latent.detach().clone() for n, m in layers.items()}
    deps = g.dep.tolist()
    inner = [i for i, x in enumerate(deps) if x == [d for d in sorted(set(deps))
                                                     if deps.count(d) == 8][1]]
    with torch.no_grad():
        for m in layers.values():
            m.latent.add_(0.25)  # "training" moves every latent
        for c in inner[:5]:  # and five of the group's eight channels die
            for name, side, idx in g.members[c]:
                w = layers[name].latent.reshape(layers[name].weight_shape)
                (w[idx] if side == "out" else w[:, idx]).zero_()
    phase._alive = torch.zeros(g.channels)
    phase._alive[inner[3]] = 7.0  # the one that lived longest
    phase.before(5)
    assert phase.revived == 1 and phase.removed == 4
    back = torch.zeros(g.channels, dtype=torch.bool)
    back[inner[3]] = True
    held = {n: set(i.tolist()) for n, i in phase.held.items()}
    for n, idx in held_entries(g, back).items():
        got = layers[n].latent.detach().reshape(-1)
        for i in idx.tolist():
            want = 0.0 if i in held.get(n, ()) else float(start[n].reshape(-1)[i])
            assert float(got[i]) == want  # from step 0, unless a removed channel holds it
    for n, idx in phase.held.items():
        assert layers[n].latent.detach().reshape(-1)[idx].eq(0).all()
    with pytest.raises(ConfigError, match="channel_round_to"):
        TrainConfig(channel_round_to=-8).validate()
    with pytest.raises(ConfigError, match="channel_finetune > 0"):
        TrainConfig(lambda_channel=0.1, channel_round_to=8).validate()
    args = build_parser().parse_args(["train", "--model", "lenet5", "--dataset", "digits",
                                      "--channel-round-to", "8"])
    assert args.channel_round_to == 8
    assert_searchable_choice(tmp_path, "channel_round_to", "0, 8", "0, 8.5",
                             "train: {channel_finetune: 0.5}\n")
    # a real run: at the switch every group that lost channels keeps a multiple of 4 (the
    # groups of width 0.5 are 8, 16 and 32 wide, so the channels removed are a multiple of 4
    # too); the rate and slice priors may still zero channels during the fine-tuning
    torch.manual_seed(0)
    net = convert(create_model("resnet20", in_channels=1, image_size=8, num_classes=10,
                               width=0.5))
    run_cfg = TrainConfig(epochs=6, batch_size=64, lr=0.2, lambda_channel=0.08,
                          channel_solver="proximal", channel_scope="all", channel_finetune=0.5,
                          channel_round_to=4, device="cpu")
    hist = fit(net, digits, run_cfg).history
    switch = next(h for h in hist if "channels_revived" in h)
    assert switch["channels_removed"] >= 4 and switch["channels_removed"] % 4 == 0
    assert switch["channels_revived"] > 0


def test_the_switch_never_removes_a_groups_last_channel():
    """At the switch to fine-tuning, a dependency group whose every channel rounds to zero (a
    residual stream shrunk under 1/2 everywhere) keeps its strongest channel: held at zero, it
    would cut the network for the rest of the run."""
    from lilnetx.channel_phase import ChannelPhase
    from lilnetx.core.channel_prior import spare_last_channels, unread_channels

    model = resnet()  # width 0.5: the first stage's residual stream is 8 channels wide
    model.channel_groups = build_channel_groups(model, torch.randn(2, 3, 32, 32), "all")
    g = model.channel_groups
    layers = dict(model.latent_layers())
    stream = next(d for d in range(g.ndeps)
                  if any(n == "conv1" for n, _, _ in g.members[int((g.dep == d).nonzero()[0])]))
    ids = (g.dep == stream).nonzero().flatten().tolist()
    assert len(ids) == 8
    with torch.no_grad():
        for rank, c in enumerate(ids):  # every entry under 1/2, channel ids[5] the strongest
            for name, side, idx in g.members[c]:
                w = layers[name].latent.reshape(layers[name].weight_shape)
                part = w[idx] if side == "out" else w[:, idx]
                part.copy_(torch.sign(part) * (0.45 if c == ids[5] else 0.01 * (rank + 1)))
    dead = unread_channels(layers, g)
    assert dead[ids].all()
    sums = torch.zeros(g.channels)
    sums[ids[2]] = 1.0
    spared = spare_last_channels(g, dead, sums)  # in every all-dead group, its top score
    assert [c for c in ids if spared[c]] == [ids[2]]
    for d in g.dep[dead].unique().tolist():  # (the first stage's inner groups died too)
        members = g.dep == d
        assert int(spared[members].sum()) == (1 if bool(dead[members].all()) else 0)
    some = torch.zeros_like(dead)
    some[ids[:7]] = True  # seven of eight: nothing spared
    assert not spare_last_channels(g, some, sums).any()
    cfg = TrainConfig(lambda_channel=0.1, channel_scope="all", channel_solver="proximal",
                      channel_finetune=0.5)
    phase = ChannelPhase(model, cfg, total=10)
    phase.before(5)
    assert phase.removed == int(dead.sum() - spare_last_channels(g, dead, sums * 0).sum())
    held = {n: set(i.tolist()) for n, i in phase.held.items()}
    free = 0  # the strongest is not held: its entries that no held channel shares train on
    for name, side, idx in g.members[ids[5]]:
        flat = torch.arange(layers[name].latent.numel()).reshape(layers[name].weight_shape)
        for i in (flat[idx] if side == "out" else flat[:, idx]).reshape(-1).tolist():
            if i not in held.get(name, ()):
                free += 1
                assert abs(float(layers[name].latent.detach().reshape(-1)[i])) == pytest.approx(0.45)
    assert free >= 27  # the stem's 3 x 3 x 3 kernel of the channel at least
    for c in ids[:5]:
        for name, side, idx in g.members[c]:
            w = layers[name].latent.detach().reshape(layers[name].weight_shape)
            assert (w[idx] if side == "out" else w[:, idx]).eq(0).all()


def test_nearest_widths_rounds_each_group_to_its_nearest_multiple():
    """``channel_round nearest``: 5 of 8 kept -> 4 (the weakest kept channel taken away), 7 of
    8 -> 8 (the longest-lived dead one given back), 3 of 8 (under 4) left as it is, 13 of 16 ->
    12; halves go up (6 of 8 -> 8)."""
    from lilnetx.core.channel_prior import nearest_widths

    model = resnet()  # width 0.5: stage widths 8, 16, 32
    g = build_channel_groups(model, torch.randn(2, 3, 32, 32), "all")
    deps = g.dep.tolist()
    eights = [d for d in sorted(set(deps)) if deps.count(d) == 8]
    sixteen = [d for d in sorted(set(deps)) if deps.count(d) == 16][0]
    assert len(eights) == 4  # the first stage's residual stream and three inner groups
    a, b, c, h = (sorted(i for i, x in enumerate(deps) if x == d) for d in eights)
    e = sorted(i for i, x in enumerate(deps) if x == sixteen)
    dead = torch.zeros(g.channels, dtype=torch.bool)
    dead[a[:3]] = True  # 5 kept -> 4
    dead[b[:1]] = True  # 7 kept -> 8
    dead[c[:5]] = True  # 3 kept, under 4: as it is
    dead[h[:2]] = True  # 6 kept: a half, up to 8
    dead[e[:3]] = True  # 13 kept -> 12
    score = torch.arange(g.channels, dtype=torch.float)
    strength = torch.ones(g.channels)
    strength[a[6]] = 0.1  # the weakest kept channel of group a
    strength[e[9]] = 0.2
    revived, taken = nearest_widths(g, dead, score, strength, 4)
    assert taken.nonzero().flatten().tolist() == sorted([a[6], e[9]])
    assert revived.nonzero().flatten().tolist() == sorted([b[0], h[0], h[1]])
    assert not (revived & ~dead).any() and not (taken & dead).any()
    assert not nearest_widths(g, dead, score, strength, 1)[0].any()


def test_channel_round_is_validated_searchable_and_on_the_cli(tmp_path):
    from explorer.cli import build_parser

    with pytest.raises(ConfigError, match="channel_round"):
        TrainConfig(channel_round="down").validate()
    assert_searchable_choice(tmp_path, "channel_round", "up, nearest", "up, down",
                             "train: {channel_finetune: 0.5, channel_round_to: 8}\n")
    args = build_parser().parse_args(["train", "--model", "lenet5", "--dataset", "digits",
                                      "--channel-round", "nearest"])
    assert args.channel_round == "nearest"


def test_channel_round_nearest_takes_the_weakest_channel_away_at_the_switch():
    from lilnetx.channel_phase import ChannelPhase

    model = resnet()
    model.channel_groups = build_channel_groups(model, torch.randn(2, 3, 32, 32), "all")
    g = model.channel_groups
    cfg = TrainConfig(lambda_channel=0.1, channel_scope="all", channel_solver="proximal",
                      channel_finetune=0.5, channel_round_to=4, channel_round="nearest")
    phase = ChannelPhase(model, cfg, total=10)
    layers = dict(model.latent_layers())
    deps = g.dep.tolist()
    inner = [i for i, x in enumerate(deps)
             if x == [d for d in sorted(set(deps)) if deps.count(d) == 8][1]]
    with torch.no_grad():
        for m in layers.values():
            m.latent.add_(torch.sign(m.latent) * 2)  # every channel well alive
        for c in inner[:3]:  # three of the group's eight die: 5 kept, nearest 4
            for name, side, idx in g.members[c]:
                w = layers[name].latent.reshape(layers[name].weight_shape)
                (w[idx] if side == "out" else w[:, idx]).zero_()
        for name, side, idx in g.members[inner[6]]:  # the weakest of the five kept
            w = layers[name].latent.reshape(layers[name].weight_shape)
            part = w[idx] if side == "out" else w[:, idx]
            part.copy_(torch.sign(part) * 0.6)
    phase.before(5)
    assert phase.removed == 4 and phase.revived == 0
    for name, side, idx in g.members[inner[6]]:
        w = layers[name].latent.detach().reshape(layers[name].weight_shape)
        assert (w[idx] if side == "out" else w[:, idx]).eq(0).all()
    phase.after(0.1)  # held at zero after every step from then on
    for name, side, idx in g.members[inner[6]]:
        w = layers[name].latent.detach().reshape(layers[name].weight_shape)
        assert (w[idx] if side == "out" else w[:, idx]).eq(0).all()
