"""Curvature of the full-data loss at w*: the Hessian's trace and its largest eigenvalue.

Both come from Hessian-vector products (double backward through the loss), never from the
Hessian itself, so they cost a few dozen gradient evaluations whatever the model's size.

Why the estimator needs them:

* ``trace`` (Hutchinson, Rademacher probes) gives the pure-curvature value of a localised
  estimate, ``nbeta * tr(H) / (2 * gamma)``: what the estimate tends to when the
  localization gamma dominates every direction. ``trace_ratio`` = LLC / that value close to
  1 says the number measures curvature, not a learning coefficient.
* ``top_eigenvalue`` (power iteration) sets the SGLD step: a direction with eigenvalue h
  relaxes at rate ``epsilon * (nbeta * h + gamma)`` and is unstable above 2, so a step
  scaled to ``c / (nbeta * h_max + gamma)`` is equally safe at every gamma and nbeta.

Scaled dot-product attention's fused CPU kernels have no double backward, so products run
under the math backend (the same numbers, slower).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from .device import math_attention
from .loss_data import _chunks, as_dataset, make_evaluate

# A Hessian spectrum measured to a few per cent is all the step rule and the label need.
TRACE_PROBES = 20
POWER_ITERATIONS = 30
POWER_TOL = 1e-3


@dataclass(frozen=True)
class Curvature:
    trace: float  # Hutchinson estimate of tr(H)
    trace_se: float  # its standard error over the probes
    top_eigenvalue: float  # largest eigenvalue, by power iteration
    num_params: int


def _params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def hessian_vector_product(model, dataset: Dataset, evaluate, vector: list[torch.Tensor], chunk: int = 4096) -> list[torch.Tensor]:
    """H v for the mean loss over all of ``dataset`` (chunks weighted by size)."""
    params = _params(model)
    device = params[0].device
    total = [torch.zeros_like(p) for p in params]
    n = len(dataset)
    with math_attention():
        for batch in _chunks(dataset, chunk):
            batch = [t.to(device) for t in batch]
            loss = evaluate(model, batch) * (len(batch[0]) / n)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            dot = sum((g * v).sum() for g, v in zip(grads, vector))
            for acc, hv in zip(total, torch.autograd.grad(dot, params)):
                acc += hv
    return total


def _rademacher(params, generator: torch.Generator) -> list[torch.Tensor]:
    out = []
    for p in params:
        signs = torch.randint(0, 2, p.shape, generator=generator, dtype=torch.int8)
        out.append((signs.to(p.dtype) * 2 - 1).to(p.device))
    return out


def hessian_trace(model, dataset: Dataset, evaluate, *, probes: int = TRACE_PROBES, seed: int = 0) -> tuple[float, float]:
    """Hutchinson's estimate of tr(H) = E[v^T H v] over Rademacher v, and its standard error."""
    params = _params(model)
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(probes):
        v = _rademacher(params, generator)
        hv = hessian_vector_product(model, dataset, evaluate, v)
        values.append(float(sum((a * b).sum() for a, b in zip(v, hv))))
    mean = sum(values) / len(values)
    var = sum((x - mean) ** 2 for x in values) / max(len(values) - 1, 1)
    return mean, math.sqrt(var / len(values))


def top_eigenvalue(model, dataset: Dataset, evaluate, *, iterations: int = POWER_ITERATIONS, seed: int = 0) -> float:
    """Largest-magnitude Hessian eigenvalue by power iteration (stops at POWER_TOL relative change)."""
    params = _params(model)
    generator = torch.Generator().manual_seed(seed + 1)
    v = [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in params]
    estimate = 0.0
    for _ in range(iterations):
        norm = math.sqrt(sum(float((x * x).sum()) for x in v))
        if not norm > 0:  # H v = 0: a flat point (e.g. a deep linear network at w* = 0)
            return 0.0
        v = [x / norm for x in v]
        hv = hessian_vector_product(model, dataset, evaluate, v)
        new = float(sum((a * b).sum() for a, b in zip(v, hv)))
        v = hv
        if estimate and abs(new - estimate) <= POWER_TOL * abs(estimate):
            return new
        estimate = new
    return estimate


def measure_curvature(model, data, *, loss="ce", probes: int = TRACE_PROBES, seed: int = 0) -> Curvature:
    """tr(H) and h_max of the full-data loss at the model's current weights (train mode,
    as in sampling). The model is left as it was."""
    dataset, evaluate = as_dataset(data), make_evaluate(loss)
    was_training = model.training
    model.train()
    try:
        trace, trace_se = hessian_trace(model, dataset, evaluate, probes=probes, seed=seed)
        h_max = top_eigenvalue(model, dataset, evaluate, seed=seed)
    finally:
        model.train(was_training)
    return Curvature(trace, trace_se, h_max, sum(p.numel() for p in _params(model)))


def curvature_llc(trace: float, nbeta: float, gamma: float) -> float:
    """The value a localised estimate tends to when gamma dominates every direction:
    nbeta * tr(H) / (2 * gamma) (infinite at gamma 0)."""
    return nbeta * trace / (2 * gamma) if gamma > 0 else float("inf")


def curvature_subset(data, examples: int | None, seed: int = 0) -> Dataset:
    """The examples tr(H) and h_max are measured on: all of ``data`` (``examples`` None), or
    a fixed random subset of that many. The subset's mean loss is an unbiased estimate of the
    full-data loss, and a Hessian-vector product costs a pass over what it is given: for
    100,000 training sequences, 18 s per product on one core."""
    dataset = as_dataset(data)
    n = len(dataset)
    if examples is None or examples >= n:
        return dataset
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:examples].sort().values
    return torch.utils.data.TensorDataset(*(t[order] for t in dataset.tensors))


def trace_ratio(llc: float, trace: float, nbeta: float, gamma: float) -> float:
    """llc / (nbeta tr(H) / 2 gamma): near 1, the localization dominates what is measured.
    0 where that value is not positive (gamma 0, or a flat point whose tr(H) is 0: nothing
    there is localization-bound), NaN where tr(H) is unknown."""
    if gamma <= 0 or (math.isfinite(trace) and trace <= 0):
        return 0.0
    return llc / curvature_llc(trace, nbeta, gamma)
