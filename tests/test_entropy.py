"""The learned factorized probability model: a proper pmf over integers, bits, coder tables."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lilnetx
from lilnetx.core.entropy import LIKELIHOOD_FLOOR, FactorizedPrior
from lilnetx.errors import FormatError


def _randomized(channels: int, seed: int, spread: float = 1.0) -> FactorizedPrior:
    """A prior whose parameters are all perturbed (any parameter values must give a valid CDF)."""
    gen = torch.Generator().manual_seed(seed)
    prior = FactorizedPrior(channels)
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * spread)
    return prior


PRIORS = {
    "init-9": lambda: FactorizedPrior(9),
    "init-1": lambda: FactorizedPrior(1),
    "random-4": lambda: _randomized(4, seed=1),
    "narrow-3": lambda: FactorizedPrior(3, init_scale=0.5),
}


@pytest.mark.parametrize("which", list(PRIORS))
def test_likelihoods_are_probabilities(which):
    prior = PRIORS[which]()
    c = prior.channels
    x = torch.cat([torch.arange(-60, 61, dtype=torch.float32).expand(c, -1),
                   torch.randn(c, 200) * 20], dim=1)
    p = prior.likelihood(x)
    assert p.shape == x.shape
    assert torch.isfinite(p).all()
    assert (p > 0).all() and (p <= 1).all()
    assert (p >= LIKELIHOOD_FLOOR).all()


@pytest.mark.parametrize("which", list(PRIORS))
def test_integer_probabilities_sum_to_one_per_channel(which):
    prior = PRIORS[which]()
    grid = torch.arange(-2000, 2001, dtype=torch.float32)
    with torch.no_grad():
        p = prior.likelihood(grid.expand(prior.channels, -1)).double()
        # The floor adds at most 1e-9 per value; telescoping sums make the rest exact.
        total = p.sum(dim=1)
    assert total.shape == (prior.channels,)
    assert torch.allclose(total, torch.ones_like(total), atol=1e-4), total


@pytest.mark.parametrize("which", list(PRIORS))
def test_cdf_is_monotone(which):
    prior = PRIORS[which]()
    x = torch.linspace(-100, 100, 4001).expand(prior.channels, -1)
    with torch.no_grad():
        logits = prior.logits_cdf(x)
        cdf = torch.sigmoid(logits.double())
    assert (logits[:, 1:] >= logits[:, :-1]).all()
    assert (cdf[:, 1:] >= cdf[:, :-1]).all()
    assert (cdf[:, 0] < 0.01).all() and (cdf[:, -1] > 0.99).all()


def test_bits_are_minus_log2_of_likelihoods():
    prior = _randomized(3, seed=2, spread=0.3)
    x = torch.randint(-8, 9, (3, 50)).float()
    with torch.no_grad():
        p = prior.likelihood(x)
        bits = prior.bits(x)
    assert bits.dim() == 0
    torch.testing.assert_close(bits, -torch.log2(p).sum(), rtol=1e-4, atol=1e-3)
    one = x[:, :1]
    with torch.no_grad():
        assert math.isclose(float(prior.bits(one)),
                            -sum(math.log2(float(v)) for v in prior.likelihood(one).flatten()),
                            rel_tol=1e-5)
    # A value more probable than another costs fewer bits.
    with torch.no_grad():
        p_all = prior.likelihood(torch.arange(-8, 9).float().expand(3, -1))
        b_all = -torch.log2(p_all)
    order = torch.argsort(p_all, dim=1)
    assert (torch.gather(b_all, 1, order)[:, 1:] <= torch.gather(b_all, 1, order)[:, :-1]).all()


@pytest.mark.parametrize(("channels", "n", "seed"), [(2, 30, 0), (9, 5000, 1), (1, 40000, 2)])
def test_bits_gradients_match_the_likelihood_formula(channels, n, seed):
    """bits() must give -log2(likelihood) and its gradients, whatever the implementation
    (long inputs cover chunked evaluation)."""
    prior = _randomized(channels, seed=seed, spread=0.3)
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(channels, n, generator=gen) * 4 + torch.rand(channels, n, generator=gen)
    x0[:, : n // 3] = torch.round(x0[:, : n // 3])

    x = x0.clone().requires_grad_(True)
    bits = prior.bits(x)
    bits.backward()
    got = [x.grad] + [p.grad for p in prior.parameters()]
    prior.zero_grad(set_to_none=True)

    x_ref = x0.clone().requires_grad_(True)
    ref = -torch.log2(prior.likelihood(x_ref)).sum()
    ref.backward()
    expected = [x_ref.grad] + [p.grad for p in prior.parameters()]

    torch.testing.assert_close(bits.detach(), ref.detach(), rtol=1e-4, atol=1e-3)
    names = ["x"] + [name for name, _ in prior.named_parameters()]
    for name, g, e in zip(names, got, expected, strict=True):
        assert g is not None and torch.isfinite(g).all(), name
        scale = float(e.abs().max()) + 1e-6
        torch.testing.assert_close(g / scale, e / scale, rtol=0, atol=2e-3, msg=name)
    assert x.grad.abs().sum() > 0
    with torch.no_grad():  # the no-grad path gives the same number
        torch.testing.assert_close(prior.bits(x0), bits.detach(), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize(("lo", "hi"), [
    ([-5, -30, 0], [5, 2, 0]),
    ([-1, 0, -3], [1, 1, 3]),
    ([-3000, -2, 7], [3000, 40, 9]),
])
def test_quantized_tables_are_valid_coder_tables(lo, hi):
    prior = _randomized(3, seed=3, spread=0.5)
    lo_a, hi_a = np.array(lo), np.array(hi)
    tables = prior.quantized_tables(lo_a, hi_a)
    assert len(tables) == 3
    for c, t in enumerate(tables):
        assert isinstance(t, np.ndarray) and t.dtype == np.uint32
        assert t.shape == (hi[c] - lo[c] + 1,)
        assert int(t.astype(np.int64).sum()) == 2 ** 16
        assert int(t.min()) >= 1
    # The tables follow the model's probabilities (renormalized over the range).
    c = 0
    grid = torch.arange(lo[c], hi[c] + 1, dtype=torch.float32)
    with torch.no_grad():
        p = prior.likelihood(grid.expand(3, -1))[c].double().numpy()
    p = p / p.sum()
    q = tables[c].astype(np.float64) / 2 ** 16
    assert np.abs(p - q).max() < len(p) / 2 ** 16 + 1e-4


def test_quantized_tables_other_precision_and_too_wide_range():
    prior = FactorizedPrior(1)
    (t,) = prior.quantized_tables(np.array([-20]), np.array([20]), precision=12)
    assert int(t.sum()) == 2 ** 12 and t.min() >= 1 and t.dtype == np.uint32
    with pytest.raises(FormatError, match="too wide"):
        prior.quantized_tables(np.array([-40000]), np.array([40000]))


def test_training_on_a_peaked_distribution_lowers_the_bits():
    gen = torch.Generator().manual_seed(0)
    # Discretized Laplace-like integers, peaked at 0 (channel 0) and at 2 (channel 1).
    u = torch.rand(2, 4000, generator=gen)
    lap = -torch.sign(u - 0.5) * torch.log1p(-2 * (u - 0.5).abs()) * 0.8
    x = torch.round(lap + torch.tensor([[0.0], [2.0]]))
    entropy = 0.0  # empirical entropy per symbol, averaged over the two channels
    for row in x:
        _, counts = np.unique(row.numpy(), return_counts=True)
        freq = counts / counts.sum()
        entropy += float(-(freq * np.log2(freq)).sum()) / 2

    prior = FactorizedPrior(2)
    with torch.no_grad():
        before = float(prior.bits(x))
    opt = torch.optim.Adam(prior.parameters(), lr=3e-2)
    for _ in range(150):
        noisy = x + torch.rand(x.shape, generator=gen) - 0.5  # the training proxy of sec. 3
        loss = prior.bits(noisy) / x.numel()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(prior.bits(x))
        p0 = prior.likelihood(torch.arange(-3.0, 6.0).expand(2, -1))
    assert after < 0.6 * before, (before, after)
    # Cross-entropy cannot beat the empirical entropy, and a trained prior gets close to it.
    assert entropy - 0.05 < after / x.numel() < entropy + 0.5
    # The modes moved to where the data is.
    assert int(torch.argmax(p0[0])) == 3 and int(torch.argmax(p0[1])) == 5


def test_likelihood_at_the_exact_median_of_a_symmetric_prior():
    prior = FactorizedPrior(1)
    with torch.no_grad():
        for b in prior.biases:
            b.zero_()  # odd logits: the CDF is symmetric about 0
        lo, hi = prior.logits_cdf(torch.tensor([[-0.5, 0.5]]))[0]
        expected = float(torch.sigmoid(hi) - torch.sigmoid(lo))
        assert expected > 0.01
        assert math.isclose(float(prior.likelihood(torch.zeros(1, 1))), expected, rel_tol=1e-4)
        assert math.isclose(float(prior.bits(torch.zeros(1, 1))), -math.log2(expected),
                            rel_tol=1e-4)


def test_model_rate_is_the_sum_of_per_layer_bits():
    net = lilnetx.create_model("lenet5", in_channels=1, image_size=8, num_classes=10)
    model = lilnetx.convert(net)
    model.eval()
    with torch.no_grad():
        eval_bits = float(model.rate_bits())
        assert float(model.rate_bits()) == eval_bits  # evaluation rate: rounded, no noise
        noisy = [float(model.rate_bits(noisy=True)) for _ in range(2)]
    assert noisy[0] != noisy[1]
    stats = lilnetx.layer_stats(model)
    summary = lilnetx.summarize(stats)
    assert math.isclose(summary["bits_estimate"], eval_bits, rel_tol=1e-5)
    assert summary["bits_estimate"] > 0
    # A per-symbol rate within what a distribution over a handful of integers can cost.
    n = sum(s.params for s in stats)
    assert 0.5 < summary["bits_estimate"] / n < 12
