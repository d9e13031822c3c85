"""Small models whose learning coefficient is known (:mod:`llcgrok.known_lambda`).

Each ``make_*`` returns ``(model, (inputs, targets), loss)`` ready for
``estimate_llc(model, data, loss=loss, ...)`` and ``calibrate(...)``: the model sits at
the point w* whose coefficient is known, and ``loss(model, inputs, targets)`` is the mean
per-example loss. The losses are module-level functions reading their constants from the
model, so chain worker processes (spawned, not forked) can import them.

* :func:`make_dln`: a deep linear network at a factorisation of a rank-r teacher, with
  the per-example Gaussian negative log-likelihood as loss; lambda from Aoyagi (2024).
* :func:`make_rrr`: the same with two matrices, reduced-rank regression (Aoyagi &
  Watanabe 2005).
* :func:`make_quadratic`: 1/2 sum_i h_i (w_i - w*_i)^2 for a given Hessian spectrum; the
  estimator's exact value is :func:`~llcgrok.known_lambda.quadratic_llc`.
* :func:`make_normal_crossing`: K(w) = prod_i w_i^(2 k_i) at w* = 0.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .known_lambda import dln_lambda, normal_crossing_lambda

ToyProblem = tuple  # (model, (inputs, targets), loss)


# --------------------------------------------------------------------------- deep linear networks


class DeepLinearNetwork(torch.nn.Module):
    """x -> W_L ... W_1 x, no biases; ``widths`` = (input, hidden..., output)."""

    def __init__(self, widths: Sequence[int], noise_std: float = 1.0):
        super().__init__()
        self.widths = tuple(int(h) for h in widths)
        self.noise_std = float(noise_std)  # sigma of the Gaussian likelihood the loss is the NLL of
        self.weights = torch.nn.ParameterList(
            torch.nn.Parameter(torch.zeros(h_out, h_in)) for h_in, h_out in zip(self.widths[:-1], self.widths[1:])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for weight in self.weights:
            x = x @ weight.T
        return x

    def product(self) -> torch.Tensor:
        """The end-to-end matrix W_L ... W_1 (output x input)."""
        out = self.weights[0]
        for weight in self.weights[1:]:
            out = weight @ out
        return out


def gaussian_nll(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example negative log-likelihood of y ~ N(f(x), sigma^2 I), less its constant:
    ||y - f(x)||^2 / (2 sigma^2) summed over outputs, mean over the batch. With the
    likelihood's own scale, n*beta (E L - L(w*)) estimates lambda; a plain MSE would
    rescale the loss and so the temperature."""
    residual = targets - model(inputs)
    return residual.pow(2).sum(dim=-1).mean() / (2 * model.noise_std**2)


def _frame(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """A random (rows x cols) matrix with orthonormal columns (rows >= cols)."""
    if cols == 0:
        return torch.zeros(rows, 0)
    q, r = torch.linalg.qr(torch.randn(rows, cols, generator=generator, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()  # sign fix: QR is unique up to signs


def _set_minimal_factorisation(model: DeepLinearNetwork, rank: int, generator: torch.Generator) -> None:
    """W_j = P_{j+1} Q_j P_j^T: every factor of rank exactly r, orthonormal frames P_j
    (H_j x r) and random rotations Q_j (r x r), so the teacher W_L ... W_1 has rank r
    and singular values 1.

    Why every factor has rank r, not just the product: the global lambda is the
    smallest local one over the set of true parameters, reached where the factors are
    least ranked. At a generic factorisation the local coefficient can be larger: for
    5-3-5 rank 0, W_1 = 0 with W_2 of full rank is locally regular in W_1, lambda 7.5
    against the global 6.5 at W_1 = W_2 = 0.
    """
    frames = [_frame(h, rank, generator) for h in model.widths]
    with torch.no_grad():
        for j, weight in enumerate(model.weights):
            rotation = _frame(rank, rank, generator)
            weight.copy_(frames[j + 1] @ rotation @ frames[j].T)


def _orthogonal_noise(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``noise`` less its least-squares projection on the columns of ``x``.

    Why: then sum_i noise_i x_i^T = 0, so for every linear map W the empirical loss is
    L_n(w*) + tr((W - W*) S (W - W*)^T) / (2 sigma^2) with S the inputs' second moment,
    exactly: w* is the minimiser of L_n, as the least-squares fit is in the regression
    test. Without it the noise's fit by nearby parameters lowers the estimate by about
    lambda / log n on average (the regular case: nbeta (L_n(w_hat) - L_n(w*)) =
    -beta chi^2_d / 2), and makes it depend on the data seed. Measured on 4-3-8 rank 0,
    n 300 (tests/test_known_lambda_estimates.py settings), seeds 0-3: 6.22, 5.85, 6.00,
    5.90 with it; 4.98, 5.31, 5.35, 4.33 without (lambda 6, lambda / log n = 1.05).
    """
    x64, e64 = x.double(), noise.double()
    coef = torch.linalg.lstsq(x64, e64).solution
    return (e64 - x64 @ coef).to(noise.dtype)


def make_dln(
    widths: Sequence[int],
    rank: int,
    num_data: int = 10_000,
    noise_std: float = 1.0,
    seed: int = 0,
    *,
    orthogonal_noise: bool = True,
) -> ToyProblem:
    """A deep linear network at the true parameter w*, its data and loss.

    The teacher is a rank-``rank`` map (singular values 1) written as a product of
    factors of rank ``rank`` each (:func:`_set_minimal_factorisation`); inputs are
    standard normal, targets teacher(x) + ``noise_std`` * noise (see
    :func:`_orthogonal_noise` for ``orthogonal_noise``). lambda and its multiplicity:
    ``known_lambda.dln_lambda(widths, rank)``.
    """
    dln_lambda(widths, rank)  # validates widths and rank with the formula's own messages
    if num_data < max(widths[0], 2):
        raise ValueError(f"num_data must be at least the input width {widths[0]} (and 2), got {num_data}")
    if not noise_std > 0:
        raise ValueError(f"noise_std must be > 0, got {noise_std!r}")
    generator = torch.Generator().manual_seed(int(seed))
    model = DeepLinearNetwork(widths, noise_std)
    _set_minimal_factorisation(model, int(rank), generator)
    inputs = torch.randn(num_data, widths[0], generator=generator)
    noise = torch.randn(num_data, widths[-1], generator=generator)
    if orthogonal_noise:
        noise = _orthogonal_noise(inputs, noise)
    with torch.no_grad():
        targets = model(inputs) + noise_std * noise
    return model, (inputs, targets), gaussian_nll


def make_rrr(M: int, H: int, N: int, r: int, num_data: int = 10_000, noise_std: float = 1.0, seed: int = 0, **kwargs) -> ToyProblem:
    """Reduced-rank regression x in R^M -> R^H -> R^N, true rank r: a DLN with two
    matrices (``known_lambda.rrr_lambda(M, H, N, r)``)."""
    return make_dln((M, H, N), r, num_data, noise_std, seed, **kwargs)


# --------------------------------------------------------------------------- potentials


def _placeholder_data(num_data: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Data of the right length for a loss that ignores it: n sets n*beta = n / log n,
    and the sampler needs batches to iterate over."""
    if num_data < 2:
        raise ValueError(f"num_data must be >= 2 (n*beta = n / log n), got {num_data}")
    return torch.zeros(num_data, 1), torch.zeros(num_data, 1)


class QuadraticBowl(torch.nn.Module):
    """w with loss 1/2 sum_i h_i (w_i - w*_i)^2; starts at w* (``center``)."""

    def __init__(self, eigenvalues: torch.Tensor, center: torch.Tensor):
        super().__init__()
        self.register_buffer("eigenvalues", eigenvalues.clone())
        self.register_buffer("center", center.clone())
        self.w = torch.nn.Parameter(center.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w


def quadratic_loss(model: QuadraticBowl, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1/2 sum_i h_i (w_i - w*_i)^2; the data are ignored (no minibatch noise)."""
    return 0.5 * (model.eigenvalues * (model.w - model.center).pow(2)).sum()


def make_quadratic(eigenvalues: Sequence[float], num_data: int = 1000, seed: int = 0) -> ToyProblem:
    """A quadratic loss with Hessian eigenvalues ``eigenvalues`` (>= 0), at its minimum w*.

    w* is drawn standard normal (``seed``) rather than put at 0, so a sampler that
    localised at the origin instead of at w* would show. The estimator's exact value is
    ``known_lambda.quadratic_llc(eigenvalues, nbeta, gamma)``.
    """
    h = torch.as_tensor(eigenvalues, dtype=torch.float32).reshape(-1)
    if h.numel() == 0 or not torch.isfinite(h).all() or (h < 0).any():
        raise ValueError("eigenvalues must be a non-empty list of finite values >= 0")
    center = torch.randn(h.numel(), generator=torch.Generator().manual_seed(int(seed)))
    return QuadraticBowl(h, center), _placeholder_data(num_data), quadratic_loss


class NormalCrossing(torch.nn.Module):
    """w with loss sum over copies of prod_i w_i^(2 k_i); starts at w* = 0."""

    def __init__(self, ks: Sequence[int], copies: int = 1):
        super().__init__()
        self.register_buffer("powers", 2 * torch.as_tensor(list(ks), dtype=torch.float32))
        self.w = torch.nn.Parameter(torch.zeros(int(copies), len(ks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w


def normal_crossing_loss(model: NormalCrossing, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """sum over copies of prod_i w_i^(2 k_i); the data are ignored."""
    return model.w.pow(model.powers).prod(dim=-1).sum()


def make_normal_crossing(ks: Sequence[int], num_data: int = 1000, copies: int = 1) -> ToyProblem:
    """K(w) = prod_i w_i^(2 k_i) at w* = 0: lambda = min_i 1/(2 k_i)
    (``known_lambda.normal_crossing_lambda(ks)``).

    ``copies`` > 1 sums that many independent copies: lambda adds (copies * lambda) and a
    multiplicity of one stays one, while the relative spread of the per-draw estimate
    falls as 1 / sqrt(copies). A single copy's n*beta K is roughly Gamma(lambda)
    distributed, spread 1 / sqrt(lambda) = 2 times its mean at lambda 1/4, so a test at
    a few seconds' cost needs the copies; the per-step cost hardly grows with them.
    """
    normal_crossing_lambda(ks)  # validates ks
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
        raise ValueError(f"copies must be an integer >= 1, got {copies!r}")
    return NormalCrossing(ks, copies), _placeholder_data(num_data), normal_crossing_loss
