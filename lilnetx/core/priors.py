"""Sparsity and weight priors on latents (LilNetX sec. 4).

Both take latent matrices of shape ``(slices, rows)`` and return scalar tensors (unitless).
"""

from __future__ import annotations

import torch

_EPS = 1e-12


def slice_group_lasso(latent: torch.Tensor) -> torch.Tensor:
    """Sum over slices of the L2 norm of each latent row (not squared, not scaled by row size).

    A tiny epsilon under the square root keeps the gradient finite at an all-zero slice.
    """
    return torch.sqrt(latent.pow(2).sum(dim=1) + _EPS).sum()


def l2_prior(latent: torch.Tensor) -> torch.Tensor:
    """Sum of squares of the latent values."""
    return latent.pow(2).sum()
