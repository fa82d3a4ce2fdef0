"""Effective rank (Roy and Vetterli, 2007) of a token-representation matrix.

For a (tokens x D) matrix with singular values sigma_i, p_i = sigma_i / sum_j sigma_j and
erank = exp(-sum_i p_i log p_i), with 0 log 0 = 0. It lies between 1 (rank one) and min(tokens, D) (all singular
values equal). The matrix is used as it is (uncentered), in float64 whatever its dtype.
"""

from __future__ import annotations

import numpy as np
import torch


def effective_rank(matrix: torch.Tensor | np.ndarray) -> float:
    """exp of the entropy of the normalised singular values of a 2-D matrix (tokens x D), uncentered."""
    values = torch.as_tensor(matrix).detach().to(torch.float64)
    if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] == 0:
        raise ValueError(f"effective_rank needs a non-empty 2-D matrix, got shape {tuple(values.shape)}")
    if not torch.isfinite(values).all():
        raise ValueError("effective_rank: the matrix has non-finite values")
    # The singular values are the square roots of the eigenvalues of the smaller Gram matrix (tokens x tokens or
    # D x D): one small symmetric eigenproblem instead of an SVD of the whole matrix.
    gram = values @ values.T if values.shape[0] <= values.shape[1] else values.T @ values
    sigma = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt()
    total = sigma.sum()
    if total == 0:
        raise ValueError("effective_rank is undefined for a zero matrix")
    p = sigma / total
    p = p[p > 0]
    return float(torch.exp(-(p * torch.log(p)).sum()))
