"""Learning coefficients known in closed form: the controls an LLC estimator is tested against.

* A regular model with d parameters: lambda = d / 2.
* A normal crossing K(w) = prod_i w_i^(2 k_i): lambda = min_i 1 / (2 k_i), multiplicity
  the number of i attaining the minimum.
* Reduced-rank regression, x in R^M -> rank H -> y in R^N with a true map of rank r:
  Aoyagi & Watanabe (2005), "Stochastic complexities of reduced rank regression in
  Bayesian estimation", Neural Networks 18(7), the four cases in :func:`rrr_lambda`.
* Deep linear networks of any depth: Aoyagi (2024), "Consideration on the learning
  efficiency of multiple-layered neural networks with linear units", Neural Networks 172
  (the DLN experiments of Lau et al. 2023 use it), in :func:`dln_lambda`.
* A quadratic loss with Hessian eigenvalues h, where the localized tempered posterior is
  Gaussian and the estimator's expectation is exact: :func:`quadratic_llc`.

Exact rational arithmetic (``fractions.Fraction``) is used where the formulas have
fractions, so that "agrees with" in the tests means equal, not close.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction
from typing import Sequence

import numpy as np


def _count(name: str, value, minimum: int) -> int:
    """An integer >= minimum (bools refused: True is not a width)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def regular_lambda(d: int) -> float:
    """lambda = d / 2 for a regular model with d parameters (the BIC's penalty)."""
    return _count("d", d, 0) / 2


def normal_crossing_lambda(ks: Sequence[int]) -> tuple[float, int]:
    """(lambda, multiplicity) of K(w) = prod_i w_i^(2 k_i) at w = 0.

    Each factor alone has lambda 1/(2 k_i); the product's lambda is the smallest, and its
    multiplicity (the power of log n in the free energy) counts the factors attaining it.
    """
    ks = [_count(f"ks[{i}]", k, 1) for i, k in enumerate(ks)]
    if not ks:
        raise ValueError("ks must name at least one exponent")
    kmax = max(ks)  # lambda = 1/(2 kmax): the largest exponent is the most singular factor
    return 1 / (2 * kmax), ks.count(kmax)


def rrr_lambda(M: int, H: int, N: int, r: int) -> float:
    """lambda of reduced-rank regression (Aoyagi & Watanabe 2005).

    The model y = B A x with A (H x M), B (N x H); the true map has rank r <= min(M, H, N).
    The multiplicity is 2 in the last case when M + N + H + r is odd, else 1;
    ``dln_lambda((M, H, N), r)`` returns it with the same lambda.
    """
    M, H, N = (_count(name, v, 1) for name, v in (("M", M), ("H", H), ("N", N)))
    r = _count("r", r, 0)
    if r > min(M, H, N):
        raise ValueError(f"rank r = {r} exceeds min(M, H, N) = {min(M, H, N)}: no such true map")
    if M + H < N + r:
        return (H * M - H * r + N * r) / 2
    if N + H < M + r:
        return (H * N - H * r + M * r) / 2
    if M + N < H + r:  # the hidden layer is wider than it can use: a regular M x N map
        return M * N / 2
    s = (M + N + H + r) % 2
    return float(Fraction(2 * (H + r) * (M + N) - (M - N) ** 2 - (H + r) ** 2 + s, 8))


def _dln_index_set(m: list[int]) -> list[int]:
    """The index set S of Aoyagi (2024): |S| = l + 1 >= 2 with max_S M < min_rest M,
    sum_S M >= l max_S M and sum_S M < l min_rest M.

    max_S < min_rest forces S to be the l + 1 smallest M (ties never split), so only the
    prefixes of the sorted list need checking; the paper shows exactly one qualifies.
    """
    order = sorted(range(len(m)), key=lambda j: m[j])
    for size in range(2, len(m) + 1):
        chosen, rest = order[:size], order[size:]
        l, total, top = size - 1, sum(m[j] for j in chosen), max(m[j] for j in chosen)
        low = min((m[j] for j in rest), default=math.inf)
        if top < low and total >= l * top and total < l * low:
            return chosen
    # Not reached for valid widths (the sweep in the tests checks many), kept as a guard.
    raise ValueError(f"no index set S satisfies Aoyagi's conditions for M = {m}")


def dln_lambda(widths: Sequence[int], rank: int) -> tuple[float, int]:
    """(lambda, multiplicity) of a deep linear network (Aoyagi 2024).

    ``widths`` = (H_1, ..., H_{L+1}): input, hidden layers, output; the model is
    W_L ... W_1 x and the true map has rank ``rank`` = r. With M_j = H_j - r and S the
    index set of :func:`_dln_index_set`, |S| = l + 1,

        a = sum_S M - (ceil(sum_S M / l) - 1) l,
        lambda = (r (H_1 + H_{L+1}) - r^2) / 2 + a (l - a) / (4 l)
                 - l (l - 1) / 4 (sum_S M / l)^2 + 1/2 sum_{i<j in S} M_i M_j,

    and the multiplicity is 1 if a = l, else 2. With two widths (one matrix) this gives
    H_1 H_2 / 2, the regular count; with three it is reduced-rank regression.
    """
    widths = [_count(f"widths[{i}]", h, 1) for i, h in enumerate(widths)]
    if len(widths) < 2:
        raise ValueError(f"widths must hold an input and an output width at least, got {widths}")
    r = _count("rank", rank, 0)
    if r > min(widths):
        raise ValueError(f"rank {r} exceeds the smallest width {min(widths)}: no product of these matrices has it")
    m = [h - r for h in widths]
    chosen = _dln_index_set(m)
    l = len(chosen) - 1
    total = sum(m[j] for j in chosen)
    a = total - (-(-total // l) - 1) * l  # -(-x // l) is ceil(x / l) in integers
    pairs = (total**2 - sum(m[j] ** 2 for j in chosen)) // 2  # sum over i < j in S of M_i M_j
    lam = (
        Fraction(r * (widths[0] + widths[-1]) - r * r, 2)
        + Fraction(a * (l - a), 4 * l)
        - Fraction(l * (l - 1), 4) * Fraction(total, l) ** 2
        + Fraction(pairs, 2)
    )
    return float(lam), 1 if a == l else 2


def quadratic_llc(eigenvalues, nbeta: float, gamma: float, epsilon: float = 0.0) -> float:
    """The localized estimator's exact value for L(w) = 1/2 sum_i h_i (w_i - w*_i)^2.

    The sampled density exp(-nbeta L - gamma/2 |w - w*|^2) is Gaussian with precision
    a_i = nbeta h_i + gamma per eigendirection, so E[nbeta (L - L(w*))] =
    1/2 sum_i nbeta h_i / (nbeta h_i + gamma). Directions with nbeta h_i << gamma count
    for nothing: this is how a strong localization turns the estimate into
    nbeta tr(H) / (2 gamma), a curvature rather than a learning coefficient.

    ``epsilon`` > 0 gives instead the exact stationary value of the discretised chain
    devinterp runs, w <- w - epsilon/2 (grad) + sqrt(epsilon) xi: its variance per
    direction is 1 / (a_i (1 - epsilon a_i / 4)), so the step's bias is known exactly
    (about epsilon a_max / 4 on the sharpest direction). It needs epsilon a_i < 4.
    """
    h = np.asarray(eigenvalues, dtype=float).reshape(-1)
    if h.size == 0 or not np.all(np.isfinite(h)) or (h < 0).any():
        raise ValueError("eigenvalues must be finite and >= 0 (a negative one: w* is not a minimum)")
    if not (nbeta > 0 and math.isfinite(nbeta)):
        raise ValueError(f"nbeta must be > 0, got {nbeta!r}")
    if not (gamma >= 0 and math.isfinite(gamma)):
        raise ValueError(f"gamma must be >= 0, got {gamma!r}")
    precision = nbeta * h + gamma
    if (precision == 0).any():
        raise ValueError("a zero eigenvalue with gamma = 0: that direction's posterior is improper")
    if not (epsilon >= 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be >= 0, got {epsilon!r}")
    inflation = 1 - epsilon * precision / 4
    if (inflation <= 0).any():
        raise ValueError(f"epsilon {epsilon:g} is above the stability limit 4 / a_max = {4 / precision.max():g}")
    return float(0.5 * np.sum(nbeta * h / (precision * inflation)))
