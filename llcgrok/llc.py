"""Local learning coefficient (LLC) of one model, and of every checkpoint of a run.

The estimator (Lau et al. 2023, as in devinterp):

    llc = n*beta * ( E_w[ L(w) ] - L_n(w*) )

where w* are the model's weights, L_n the mean loss over the ``n`` examples of ``data``,
and the expectation is over SGLD draws from the tempered posterior localised at w*,
``exp(-n*beta * L(w) - localization/2 * |w - w*|^2)``, each draw's loss taken on the
minibatch of its step (an unbiased estimate of L_n at that draw).

Choices, and why:

* ``nbeta=None`` means ``n / log n`` for the size ``n`` of ``data``: the theory's inverse
  temperature. devinterp's own default uses the *batch* size instead, which makes the
  number depend on a performance knob; we never use it.
* ``L_n(w*)`` is computed on all of ``data`` (one pass, no gradients), not on a few
  batches as devinterp does: the estimate subtracts it from every draw, so its noise
  would be multiplied by n*beta.
* A chain whose loss becomes NaN/inf, or whose LLC exceeds ``d`` (twice the largest
  value a local learning coefficient can take, d/2, for d parameters) is reported in
  ``diagnostics`` and left out of ``mean``; if every chain fails, :class:`AllChainsFailed`
  says which settings to lower.
* By default (``sampler="auto"``) all chains run as one batched computation
  (:mod:`llcgrok.sgld_batched`, the same update as devinterp's, tested step for step
  against it); ``sampler="devinterp"`` runs devinterp's own loop, chain after chain.
* devinterp's loop runs in parallel processes when ``cores > 1`` (CPU): a persistent pool, one
  torch thread per process, the model sent by cloudpickle (so a model class defined in
  a notebook works). Each chain's numbers depend only on its seed, not on ``cores``.
  In a script, guard the entry point with ``if __name__ == "__main__":`` (spawned worker
  processes import the main module).

Diagnostics (``LLCEstimate.diagnostics``, and columns of ``llc.csv``):

``mala_acceptance``  mean Metropolis-adjusted acceptance probability of the SGLD moves
                     (devinterp's MALA callback); about 0.9 is the usual target, low
                     values say the step is too coarse for the local geometry.
``frac_below_init``  fraction of draws whose loss is below L_n(w*): high values say w* is
                     not a local minimum at this temperature, or the minibatch noise
                     dwarfs the loss increase the estimate measures.
``num_diverged``     chains left out (``diverged_chains``, ``failure_reasons`` say which, why).
``trace_drift``      relative change of the LLC trace over the post-burn-in window, the same
                     draws the estimate averages (slope of the chain-averaged per-draw LLC
                     times the number of draws, over |llc|), with ``trace_drift_se`` its
                     standard error (from block means). ``converged``: ``|trace_drift| <=
                     CONVERGENCE_TOL``, or no more than twice its standard error.
``r_hat``            split Gelman-Rubin statistic of the loss over the same window (near 1:
                     chains agree; above R_HAT_MAX, 1.1, they do not, and the estimate is
                     not healthy).
``loss_excess``      mean draw loss minus L_n(w*), in loss units (= llc / nbeta).
``escaped``          (cross-entropy, w* better than chance) some chain's own mean loss climbed
                     more than ESCAPE_FRACTION (a fifth) of the way from L_n(w*) to chance,
                     log(classes): the chain has left the basin of w*. (Measured on the quick
                     preset: chains that stay in the basin add 0.01-0.2 nats, chains that
                     leave it 1.4 nats and more; a half-way threshold let through a chain at
                     1.6 nats whose LLC was 10x its neighbours'.) Measured here: a step too large for the sharpest
                     directions throws the chain to near-chance loss within a few draws,
                     and the "LLC" is then about n*beta * (chance - L_n(w*)), a function
                     of the train loss, not of the geometry.
``escaped_chains``   which chains did (judged per chain, so that a mean over the others
                     never hides one).
``healthy``          no chain left out, llc > 0, converged, chains agree, none escaped. (A high
                     ``frac_below_init`` alone does not bias the mean, so it is not part of
                     this flag; calibration, which picks settings, does reject it.)
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, TensorDataset

from . import _devinterp, sgld_batched
from .chains import (  # noqa: F401  (shutdown_workers, effective_cores: public here since before the split)
    LLCError, _sample, chain_seeds, choose_sampler, effective_cores, shutdown_workers,
)
from .config_sections import LLC_METHODS, LLC_SAMPLERS
from .diagnostics import CONVERGENCE_TOL, ESCAPE_FRACTION, R_HAT_MAX, summarize_chains  # noqa: F401  (public here)
from .device import resolve_device
from .loss_data import (  # noqa: F401  (full_loss, make_evaluate, ...: public here since before the split)
    DataSpec, LossSpec, as_dataset, default_nbeta, full_loss, make_evaluate, model_dtype,
)

# Sampler settings written beside every estimate; a resumed trajectory must match them.
SETTING_COLUMNS = ("epsilon", "nbeta", "localization", "num_chains", "num_draws", "num_burnin_steps", "batch_size", "seed")


class AllChainsFailed(LLCError):
    """Every SGLD chain diverged (non-finite loss or an impossible LLC)."""

    def __init__(self, message: str, reasons: Sequence[str], epsilon: float, nbeta: float):
        super().__init__(message)
        self.reasons = list(reasons)
        self.epsilon = epsilon
        self.nbeta = nbeta


# --------------------------------------------------------------------------- the estimate


@dataclass
class LLCEstimate:
    """One LLC estimate with its traces, settings and diagnostics."""

    mean: float  # over the chains that did not fail
    std: float  # across those chains (ddof=1; NaN with fewer than two)
    per_chain: np.ndarray  # (chains,), NaN for chains left out
    loss_trace: np.ndarray  # (chains, draws) minibatch loss per draw, NaN after a failure
    init_loss: float  # L_n(w*) on all of the data
    nbeta: float
    epsilon: float
    localization: float
    num_chains: int
    num_draws: int
    num_burnin_steps: int
    batch_size: int
    seed: int
    num_data: int
    num_params: int
    diagnostics: dict
    mala_trace: np.ndarray = field(repr=False, default_factory=lambda: np.empty((0, 0)))
    seconds: float = float("nan")

    @property
    def llc_trace(self) -> np.ndarray:
        """(chains, draws) per-draw LLC, n*beta * (L(w_t) - L_n(w*))."""
        return self.nbeta * (self.loss_trace - self.init_loss)

    @property
    def healthy(self) -> bool:
        return bool(self.diagnostics.get("healthy", False))

    def settings(self) -> dict:
        return {name: getattr(self, name) for name in SETTING_COLUMNS}

    def to_dict(self, traces: bool = False) -> dict:
        """Plain Python values (JSON-ready). ``traces=True`` adds the per-draw traces."""
        out = {
            "llc_mean": _py(self.mean),
            "llc_std": _py(self.std),
            "per_chain": [_py(v) for v in self.per_chain],
            "init_loss": _py(self.init_loss),
            **{k: _py(getattr(self, k)) for k in SETTING_COLUMNS},
            "num_data": self.num_data,
            "num_params": self.num_params,
            "seconds": _py(self.seconds),
            **{k: _py(v) for k, v in self.diagnostics.items()},
        }
        if traces:
            out["loss_trace"] = [[_py(v) for v in row] for row in self.loss_trace]
            out["mala_trace"] = [[_py(v) for v in row] for row in self.mala_trace]
        return out

    def to_row(self) -> dict:
        """One flat row for a table: lists become ``;``-joined strings."""
        row = self.to_dict()
        for key, value in list(row.items()):
            if isinstance(value, list):
                row[key] = ";".join(str(v) for v in value)
        return row

    def traces_frame(self) -> pd.DataFrame:
        """Tidy loss traces: chain, draw, loss, plus init_loss, epsilon and nbeta."""
        chains, draws = self.loss_trace.shape
        return pd.DataFrame(
            {
                "chain": np.repeat(np.arange(chains), draws),
                "draw": np.tile(np.arange(draws), chains),
                "loss": self.loss_trace.reshape(-1),
                "init_loss": self.init_loss,
                "epsilon": self.epsilon,
                "nbeta": self.nbeta,
            }
        )

    def __str__(self) -> str:
        d = self.diagnostics
        return (
            f"LLC {self.mean:.4g} ± {self.std:.2g} (eps={self.epsilon:g}, nbeta={self.nbeta:.4g}, "
            f"gamma={self.localization:g}; mala={d['mala_acceptance']:.2f}, drift={d['trace_drift']:+.2f}, "
            f"diverged={d['num_diverged']}/{self.num_chains}{'' if self.healthy else ', UNHEALTHY'})"
        )


def _py(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    return value


# --------------------------------------------------------------------------- estimate_llc


def _check(name: str, value, minimum: float = 0.0, allow_equal: bool = False) -> None:
    if value is None or not (value > minimum or (allow_equal and value == minimum)) or not math.isfinite(value):
        bound = f">= {minimum:g}" if allow_equal else f"> {minimum:g}"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def _check_settings(epsilon, nbeta, localization, num_chains, num_draws, num_burnin_steps, batch_size, cores,
                    sampler, method) -> None:
    _check("epsilon", epsilon)
    if nbeta is not None:
        _check("nbeta", nbeta)
    _check("localization", localization, allow_equal=True)
    for name, value in (("num_chains", num_chains), ("num_draws", num_draws), ("batch_size", batch_size), ("cores", cores)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(num_burnin_steps, (int, np.integer)) or num_burnin_steps < 0:
        raise ValueError(f"num_burnin_steps must be a non-negative integer, got {num_burnin_steps!r}")
    if sampler not in LLC_SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(LLC_SAMPLERS)}, got {sampler!r}")
    if method not in LLC_METHODS:
        raise ValueError(f"method must be one of {', '.join(LLC_METHODS)}, got {method!r}")


@dataclass
class _Centre:
    """One model at w*, ready to sample: on the device, its full-data loss and chance loss."""

    work: torch.nn.Module
    init_loss: float
    chance: float | None
    num_params: int


def _centre(model, dataset, evaluate, dev, chance_loss) -> _Centre:
    num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if num_params == 0:
        raise ValueError("the model has no trainable parameters")
    work = model
    if any(p.device != dev for p in model.parameters()):
        work = copy.deepcopy(model).to(dev)
    init_loss, classes = full_loss(work, dataset, evaluate, dev)
    if not math.isfinite(init_loss):
        raise LLCError(f"the loss at w* is {init_loss}: the model or data is broken, not the sampler")
    chance = chance_loss if chance_loss is not None else (math.log(classes) if classes and classes > 1 else None)
    return _Centre(work, init_loss, chance, num_params)


def _specs(settings: dict, dev, num_chains: int, seed: int) -> list:
    return [_devinterp.ChainSpec(**settings, seed=s, device=str(dev)) for s in chain_seeds(seed, num_chains)]


def _finish(centre: _Centre, results: list, used: str, settings: dict, *, num_chains: int, seed: int, n: int,
            method: str, seconds: float) -> LLCEstimate:
    """The estimate of one centre from its chains' results; AllChainsFailed when none survived."""
    nbeta, epsilon = settings["nbeta"], settings["epsilon"]
    loss_trace = np.stack([r.losses for r in results])
    mala_trace = np.stack([r.mala for r in results])
    mean, std, per_chain, diag = summarize_chains(
        loss_trace, centre.init_loss, nbeta, centre.num_params, mala_trace=mala_trace, chance_loss=centre.chance
    )
    diag.update(sampler=used, method=method)  # columns of llc.csv: the path that ran, and the update
    if diag["num_diverged"] == num_chains:
        raise AllChainsFailed(
            f"all {num_chains} SGLD chains failed at epsilon={epsilon:g}, nbeta={nbeta:.4g} "
            f"({'; '.join(diag['failure_reasons'])}). Lower epsilon (try {epsilon / 10:g}) "
            f"or nbeta (try {nbeta / 10:.4g}), or raise localization.",
            diag["failure_reasons"], float(epsilon), nbeta,
        )
    return LLCEstimate(
        mean=mean, std=std, per_chain=per_chain, loss_trace=loss_trace, init_loss=centre.init_loss, nbeta=nbeta,
        epsilon=float(epsilon), localization=settings["localization"], num_chains=int(num_chains),
        num_draws=settings["num_draws"], num_burnin_steps=settings["num_burnin_steps"], batch_size=settings["batch_size"],
        seed=int(seed), num_data=n, num_params=centre.num_params, diagnostics=diag, mala_trace=mala_trace, seconds=seconds,
    )


def _problem(loss, data, nbeta, device) -> tuple:
    """The loss as ``evaluate(model, batch)``, the dataset, its size, n*beta (n / log n when
    None) and the device: what every estimate of one data set shares."""
    evaluate, dataset = make_evaluate(loss), as_dataset(data)
    n = len(dataset)
    return evaluate, dataset, n, default_nbeta(n) if nbeta is None else float(nbeta), resolve_device(device)


def _chain_settings(epsilon, nbeta, localization, num_draws, num_burnin_steps, batch_size, method) -> dict:
    return dict(epsilon=float(epsilon), nbeta=nbeta, localization=float(localization), num_draws=int(num_draws),
                num_burnin_steps=int(num_burnin_steps), batch_size=int(batch_size), method=method)


def estimate_llc(
    model: torch.nn.Module,
    data: DataSpec,
    *,
    loss: LossSpec = "ce",
    epsilon: float,
    nbeta: float | None = None,
    localization: float,
    num_chains: int,
    num_draws: int,
    num_burnin_steps: int = 0,
    batch_size: int,
    seed: int = 0,
    device: str = "auto",
    cores: int = 1,
    chance_loss: float | None = None,
    sampler: str = "auto",
    method: str = "sgld",
    quiet: bool = True,
) -> LLCEstimate:
    """Estimate the local learning coefficient of ``model`` at its current weights.

    ``data``: ``(inputs, targets)`` tensors or a torch Dataset of ``(input, target)``.
    ``loss``: "ce" (cross-entropy on logits), "mse", or ``loss(model, inputs, targets)``
    returning the *mean* loss over the batch (the estimator scales a per-example loss).
    ``nbeta``: inverse temperature n*beta; None means n / log n for the n examples of
    ``data`` (not devinterp's batch-size default). ``epsilon``: SGLD step size.
    ``localization``: strength gamma of the pull towards w*. ``cores``: chain processes
    on a CPU. ``chance_loss``: the loss of a model that knows nothing, for the escape
    test (None: log(classes) for cross-entropy, no test otherwise). ``sampler``: "batched"
    (all chains as one computation, :mod:`llcgrok.sgld_batched`), "devinterp" (devinterp's
    loop, chain by chain; ``cores`` processes on a CPU) or "auto" (:func:`choose_sampler`;
    falls back to devinterp's loop, with a warning, for a model that cannot be batched).
    ``method``: "sgld" or "rmsprop_sgld" (devinterp's RMSProp-preconditioned SGLD). The
    path used is ``diagnostics["sampler"]``. Same arguments and seed give the same numbers
    on the same device and path.

    Raises :class:`AllChainsFailed` when no chain survives (lower epsilon or nbeta).
    """
    _check_settings(epsilon, nbeta, localization, num_chains, num_draws, num_burnin_steps, batch_size, cores, sampler, method)
    evaluate, dataset, n, nbeta, dev = _problem(loss, data, nbeta, device)
    start = time.perf_counter()
    centre = _centre(model, dataset, evaluate, dev, chance_loss)
    cores_used = effective_cores(cores, num_chains, dev)
    work = centre.work
    if cores_used > 1:
        work, dataset = work.cpu(), _to_cpu(dataset)
    settings = _chain_settings(epsilon, nbeta, localization, num_draws, num_burnin_steps, batch_size, method)
    specs = _specs(settings, dev, num_chains, seed)
    results, used = _sample(work, dataset, evaluate, specs, cores_used, quiet, choose_sampler(sampler, dev), sampler)
    return _finish(centre, results, used, settings, num_chains=num_chains, seed=seed, n=n, method=method,
                   seconds=time.perf_counter() - start)


def estimate_llc_many(models: Sequence[torch.nn.Module], data: DataSpec, *, loss: LossSpec = "ce", epsilon: float,
                      nbeta: float | None = None, localization: float, num_chains: int, num_draws: int,
                      num_burnin_steps: int = 0, batch_size: int, seed: int = 0, device: str = "auto",
                      chance_loss: float | None = None, method: str = "sgld") -> list:
    """:func:`estimate_llc` of several models of one architecture (say, the checkpoints of a
    run) at equal settings, all their chains advanced as one batched computation: the
    per-step cost of a small model is mostly overhead, which the models then share.

    Each model's chains have the seeds :func:`estimate_llc` gives them, and are localised at
    that model's weights; the numbers agree with one call per model to float rounding (the
    batched matrix products differ in shape). Returns one :class:`LLCEstimate` per model, or
    the :class:`AllChainsFailed` it raised. Raises
    :class:`~llcgrok.sgld_batched.BatchingUnsupported` for what the batched sampler refuses.
    """
    _check_settings(epsilon, nbeta, localization, num_chains, num_draws, num_burnin_steps, batch_size, 1, "batched", method)
    evaluate, dataset, n, nbeta, dev = _problem(loss, data, nbeta, device)
    start = time.perf_counter()
    centres = [_centre(m, dataset, evaluate, dev, chance_loss) for m in models]
    settings = _chain_settings(epsilon, nbeta, localization, num_draws, num_burnin_steps, batch_size, method)
    specs = _specs(settings, dev, num_chains, seed)
    results = sgld_batched.sample_chains([c.work for c in centres for _ in specs], dataset, evaluate, specs * len(centres))
    seconds, out = (time.perf_counter() - start) / len(centres), []
    for i, centre in enumerate(centres):
        try:
            out.append(_finish(centre, results[i * num_chains:(i + 1) * num_chains], "batched", settings,
                               num_chains=num_chains, seed=seed, n=n, method=method, seconds=seconds))
        except AllChainsFailed as exc:
            out.append(exc)
    return out


def _to_cpu(dataset: Dataset) -> Dataset:
    if isinstance(dataset, TensorDataset) and any(t.device.type != "cpu" for t in dataset.tensors):
        return TensorDataset(*(t.cpu() for t in dataset.tensors))
    return dataset
