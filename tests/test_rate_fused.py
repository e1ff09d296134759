"""The fused rate pass of FactorizedPrior.bits against the autograd reference (likelihood()).

In float64 the two must agree to rounding (the fused pass is the same function, differentiated by
hand); in float32 to the usual single-precision tolerance.
"""

from __future__ import annotations

import pytest
import torch

from lilnetx.core.entropy import LIKELIHOOD_FLOOR, FactorizedPrior


def _reference(prior: FactorizedPrior, x: torch.Tensor) -> torch.Tensor:
    return -torch.log2(prior.likelihood(x)).sum()


def _bits_and_grads(prior: FactorizedPrior, fn, base: torch.Tensor):
    x = base.clone().requires_grad_()
    prior.zero_grad(set_to_none=True)
    bits = fn(prior, x.t())
    bits.backward()
    return bits.detach(), x.grad, [p.grad for p in prior.parameters()]


def _assert_float64_match(new, ref) -> None:
    """Bits, latent gradient and prior gradients agree to float64 rounding."""
    (b_new, gx_new, gp_new), (b_ref, gx_ref, gp_ref) = new, ref
    torch.testing.assert_close(b_new, b_ref, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(gx_new, gx_ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(gp_new, gp_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def _random_prior(channels: int, filters: tuple[int, ...], dtype: torch.dtype) -> FactorizedPrior:
    prior = FactorizedPrior(channels, filters).to(dtype)
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(torch.randn_like(p) * 0.5)  # nonzero tanh factors, varied slopes
    return prior


@pytest.mark.parametrize("filters", [(3, 3, 3), (), (4,), (2, 5)])
@pytest.mark.parametrize("channels,n,scale", [(9, 20000, 3.0), (1, 40000, 2.0), (25, 300, 1.0),
                                              (9, 7, 200.0), (1, 1, 0.3)])
def test_fused_bits_match_the_reference_in_float64(filters, channels, n, scale):
    torch.manual_seed(channels * 1000 + n)
    prior = _random_prior(channels, filters, torch.float64)
    base = torch.randn(n, channels, dtype=torch.float64) * scale  # (rows, channels), as latents
    b_ref, gx_ref, gp_ref = _bits_and_grads(prior, _reference, base)
    b_new, gx_new, gp_new = _bits_and_grads(prior, FactorizedPrior.bits, base)
    _assert_float64_match((b_new, gx_new, gp_new), (b_ref, gx_ref, gp_ref))


def test_fused_bits_float32_floor_and_no_grad():
    torch.manual_seed(0)
    prior = _random_prior(9, (3, 3, 3), torch.float32)
    # Typical values, far tails (likelihood floored at 1e-9) and exact zeros.
    base = torch.cat([torch.randn(3000, 9) * 3, torch.randn(500, 9) * 1e3, torch.zeros(4, 9)])
    assert bool((prior.likelihood(base.t()) <= LIKELIHOOD_FLOOR).any())
    b_ref, gx_ref, gp_ref = _bits_and_grads(prior, _reference, base)
    b_new, gx_new, gp_new = _bits_and_grads(prior, FactorizedPrior.bits, base)
    torch.testing.assert_close(b_new, b_ref, rtol=1e-5, atol=1e-2)
    torch.testing.assert_close(gx_new, gx_ref, rtol=1e-4, atol=1e-6)
    for a, b in zip(gp_new, gp_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(prior.bits(base.t()), b_new, rtol=1e-6, atol=1e-3)


def test_fused_bits_of_rounded_values_give_no_gradient_to_the_latents():
    prior = FactorizedPrior(9)
    latent = (torch.randn(50, 9) * 3).requires_grad_()
    prior.bits(torch.round(latent).t()).backward()
    assert latent.grad is not None and float(latent.grad.abs().sum()) == 0.0
    assert all(p.grad is not None for p in prior.parameters())


def test_fused_bits_of_no_values_is_zero():
    prior = FactorizedPrior(9)
    x = torch.zeros(9, 0, requires_grad=True)
    bits = prior.bits(x)
    bits.backward()
    assert float(bits) == 0.0 and x.grad.shape == (9, 0)


@pytest.mark.parametrize("threads", [1, 2])
def test_fused_bits_agree_with_one_or_several_torch_threads(threads):
    """The chunked pass gives the same numbers whether its ops run on one thread or several."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(3)
        prior = _random_prior(9, (3, 3, 3), torch.float64)
        base = torch.randn(30000, 9, dtype=torch.float64) * 4
        b_ref, gx_ref, gp_ref = _bits_and_grads(prior, _reference, base)
        b_new, gx_new, gp_new = _bits_and_grads(prior, FactorizedPrior.bits, base)
    finally:
        torch.set_num_threads(old)
    _assert_float64_match((b_new, gx_new, gp_new), (b_ref, gx_ref, gp_ref))


def test_model_penalties_match_the_per_layer_formulas():
    from lilnetx import convert, create_model
    from lilnetx.core.priors import l2_prior, slice_group_lasso

    torch.manual_seed(0)
    net = create_model("resnet20", in_channels=3, image_size=32, num_classes=10, width=0.5)
    model = convert(net).double()
    latents = model.latent_parameters()
    with torch.no_grad():
        latents[2][:7].zero_()  # all-zero slices: finite gradient thanks to the epsilon
    for method, formula in ((model.slice_penalty, slice_group_lasso), (model.l2_penalty, l2_prior)):
        used = [lat for lat in latents if formula is l2_prior or lat.shape[1] > 1]
        results = []
        for fn in (method, lambda used=used, formula=formula: sum(formula(t) for t in used)):
            model.zero_grad(set_to_none=True)
            value = fn()
            value.backward()
            results.append((value.detach(), [t.grad for t in used]))
        (v_new, g_new), (v_ref, g_ref) = results
        torch.testing.assert_close(v_new, v_ref, rtol=1e-12, atol=0)
        for a, b in zip(g_new, g_ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
