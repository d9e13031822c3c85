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
* Chains run in parallel processes when ``cores > 1`` (CPU): a persistent pool, one
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
``trace_drift``      relative change of the LLC trace over the last half of the draws
                     (slope of the chain-averaged per-draw LLC times the number of draws
                     in that half, over |llc|), with ``trace_drift_se`` its standard error
                     (from block means). ``converged``: ``|trace_drift| <= CONVERGENCE_TOL``,
                     or no more than twice its standard error (a noisy, trendless trace).
``r_hat``            split Gelman-Rubin statistic of the loss over the last half of the
                     draws (near 1: chains agree; > 1.1: they do not).
``loss_excess``      mean draw loss minus L_n(w*), in loss units (= llc / nbeta).
``escaped``          (cross-entropy, w* better than chance) the draws' mean loss has climbed
                     more than ESCAPE_FRACTION (a fifth) of the way from L_n(w*) to chance,
                     log(classes): the chain has left the basin of w*. (Measured on the quick
                     preset: chains that stay in the basin add 0.01-0.2 nats, chains that
                     leave it 1.4 nats and more; a half-way threshold let through a chain at
                     1.6 nats whose LLC was 10x its neighbours'.) Measured here: a step too large for the sharpest
                     directions throws the chain to near-chance loss within a few draws,
                     and the "LLC" is then about n*beta * (chance - L_n(w*)), a function
                     of the train loss, not of the geometry.
``healthy``          no chain left out, llc > 0, converged, not escaped. (A high
                     ``frac_below_init`` alone does not bias the mean, so it is not part of
                     this flag; calibration, which picks settings, does reject it.)
"""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from . import _devinterp
from .device import resolve_device

LossSpec = Union[str, Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]]
DataSpec = Union[tuple, Dataset]

CONVERGENCE_TOL = 0.2  # |trace_drift| above this: the trace is still rising or falling
MAX_FRAC_BELOW = 0.2  # calibration rejects more draws below L_n(w*) than this: noise swamps the signal
ESCAPE_FRACTION = 0.2  # draws' mean loss this far from L_n(w*) towards chance: left the basin
LLC_CSV = "llc.csv"
# Sampler settings written beside every estimate; a resumed trajectory must match them.
SETTING_COLUMNS = ("epsilon", "nbeta", "localization", "num_chains", "num_draws", "num_burnin_steps", "batch_size", "seed")


class LLCError(RuntimeError):
    """LLC estimation could not produce a number; the message says what to change."""


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


# --------------------------------------------------------------------------- losses and data


def _evaluate_ce(model: torch.nn.Module, batch) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def _evaluate_mse(model: torch.nn.Module, batch) -> torch.Tensor:
    outputs, targets = model(batch[0]), batch[1].to(model_dtype(model))
    if outputs.shape != targets.shape and outputs.numel() == targets.numel():
        targets = targets.reshape(outputs.shape)  # (B,) targets for a (B, 1) output
    return F.mse_loss(outputs, targets)


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    for p in model.parameters():
        return p.dtype
    return torch.get_default_dtype()


class _CallableLoss:
    """Adapts ``loss(model, inputs, targets)`` to devinterp's ``evaluate(model, batch)``."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, model: torch.nn.Module, batch) -> torch.Tensor:
        return self.fn(model, batch[0], batch[1])


def make_evaluate(loss: LossSpec) -> Callable:
    if callable(loss):
        return _CallableLoss(loss)
    if loss == "ce":
        return _evaluate_ce
    if loss == "mse":
        return _evaluate_mse
    raise ValueError(f"loss must be 'ce', 'mse' or a callable (model, inputs, targets) -> loss, got {loss!r}")


def as_dataset(data: DataSpec) -> Dataset:
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        inputs, targets = data
        if len(inputs) != len(targets):
            raise ValueError(f"data: {len(inputs)} inputs but {len(targets)} targets")
        return TensorDataset(inputs, targets)
    raise TypeError("data must be an (inputs, targets) tuple of tensors or a torch Dataset of (input, target) pairs")


def _chunks(data: Dataset, size: int):
    if isinstance(data, TensorDataset):
        for start in range(0, len(data), size):
            yield tuple(t[start : start + size] for t in data.tensors)
    else:
        yield from DataLoader(data, batch_size=size, shuffle=False)


def full_loss(model: torch.nn.Module, data: Dataset, evaluate: Callable, device: torch.device, chunk: int = 4096) -> tuple[float, int | None]:
    """Mean loss over all of ``data`` (each chunk weighted by its size), and the number of
    output classes seen (for the cross-entropy chance level). Train mode, as in sampling."""
    was_training = model.training
    model.train()
    total, count, classes = 0.0, 0, None
    with torch.no_grad():
        for batch in _chunks(data, chunk):
            batch = [t.to(device) for t in batch]
            total += float(evaluate(model, batch)) * len(batch[0])
            count += len(batch[0])
            if classes is None and evaluate is _evaluate_ce:
                classes = int(model(batch[0][:1]).shape[-1])
    model.train(was_training)
    return total / count, classes


def default_nbeta(n: int) -> float:
    """n / log n, the theory's inverse temperature for n examples."""
    if n < 2:
        raise ValueError(f"n*beta = n / log n needs at least 2 examples, got {n}")
    return n / math.log(n)


# --------------------------------------------------------------------------- diagnostics


def _split_r_hat(trace: np.ndarray) -> float:
    """Split-R-hat of (chains, draws) values; NaN when it cannot be computed."""
    chains, draws = trace.shape
    half = draws // 2
    if chains < 1 or half < 2:
        return float("nan")
    parts = np.concatenate([trace[:, :half], trace[:, half : 2 * half]], axis=0)
    within = parts.var(axis=1, ddof=1).mean()
    between = half * parts.mean(axis=1).var(ddof=1)
    if within <= 0:
        return float("nan")
    var_plus = (half - 1) / half * within + between / half
    return float(np.sqrt(var_plus / within))


TREND_BLOCKS = 5


def _trend(values: np.ndarray, mean: float) -> tuple[float, float, float]:
    """Slope of ``values`` per draw, the relative drift it implies over their span, and
    that drift's standard error. The error comes from the slope fitted to block means
    (TREND_BLOCKS blocks): consecutive SGLD draws are correlated, block means far less."""
    n = len(values)
    if n < 3:
        return float("nan"), float("nan"), float("nan")
    x = np.arange(n)
    slope = float(np.polyfit(x, values, 1)[0])
    scale = max(abs(mean), 1e-12)
    drift = slope * n / scale
    blocks = min(TREND_BLOCKS, n // 2)
    if blocks < 3:
        return slope, drift, 0.0
    edges = np.linspace(0, n, blocks + 1).astype(int)
    centres = np.array([x[a:b].mean() for a, b in zip(edges[:-1], edges[1:])])
    means = np.array([values[a:b].mean() for a, b in zip(edges[:-1], edges[1:])])
    coef = np.polyfit(centres, means, 1)
    resid = means - np.polyval(coef, centres)
    slope_se = math.sqrt(float((resid**2).sum()) / (blocks - 2) / float(((centres - centres.mean()) ** 2).sum()))
    return slope, drift, slope_se * n / scale


def summarize_chains(
    loss_trace: np.ndarray,
    init_loss: float,
    nbeta: float,
    num_params: int,
    *,
    mala_trace: np.ndarray | None = None,
    chance_loss: float | None = None,
    convergence_tol: float = CONVERGENCE_TOL,
) -> tuple[float, float, np.ndarray, dict]:
    """LLC mean, std, per-chain values and diagnostics from raw (chains, draws) traces.

    A chain fails when any of its losses is not finite or when its LLC exceeds
    ``num_params`` (twice the bound d/2 on a learning coefficient: the chain has left the
    basin of w*). Failed chains are reported and left out of every other number.
    """
    loss_trace = np.asarray(loss_trace, dtype=float)
    chains, draws = loss_trace.shape
    per_chain = np.full(chains, np.nan)
    reasons, failed = [], []
    for c in range(chains):
        row = loss_trace[c]
        bad = np.flatnonzero(~np.isfinite(row))
        if len(bad):
            failed.append(c)
            reasons.append(f"chain {c}: non-finite loss at draw {int(bad[0])}")
            continue
        value = nbeta * (row.mean() - init_loss)
        if value > num_params:
            failed.append(c)
            reasons.append(f"chain {c}: LLC {value:.4g} exceeds d = {num_params} (the bound is d/2)")
            continue
        per_chain[c] = value
    ok = [c for c in range(chains) if c not in failed]
    diag: dict[str, Any] = {
        "num_diverged": len(failed),
        "diverged_chains": failed,
        "failure_reasons": reasons,
    }
    if not ok:
        diag.update(
            mala_acceptance=float("nan"), frac_below_init=float("nan"), trace_slope=float("nan"),
            trace_drift=float("nan"), trace_drift_se=float("nan"), converged=False, r_hat=float("nan"), loss_excess=float("nan"),
            chance_loss=float("nan") if chance_loss is None else chance_loss, escaped=False,
            negative=False, healthy=False, warnings=["every chain failed"],
        )
        return float("nan"), float("nan"), per_chain, diag
    good = loss_trace[ok]
    mean = float(per_chain[ok].mean())
    std = float(per_chain[ok].std(ddof=1)) if len(ok) > 1 else float("nan")
    llc_per_draw = nbeta * (good.mean(axis=0) - init_loss)
    start = draws // 2
    slope, drift, drift_se = _trend(llc_per_draw[start:], mean)
    # Flat: the drift is small, or no larger than twice its own noise (a noisy but
    # trendless trace, e.g. a small LLC whose per-draw values scatter by more than 20 %).
    converged = bool(np.isfinite(drift) and (abs(drift) <= convergence_tol or abs(drift) <= 2 * drift_se))
    mala = float("nan")
    if mala_trace is not None and np.size(mala_trace):
        values = np.asarray(mala_trace, dtype=float)[ok]
        if np.isfinite(values).any():
            mala = float(np.nanmean(values))
    mean_loss = float(good.mean())
    chance = float("nan") if chance_loss is None else float(chance_loss)
    # Only meaningful where w* beats chance: an untrained network starts at chance level.
    escaped = bool(np.isfinite(chance) and init_loss < chance and mean_loss - init_loss > ESCAPE_FRACTION * (chance - init_loss))
    notes = []
    if failed:
        notes.append(f"{len(failed)} of {chains} chains left out")
    if mean < 0:
        notes.append("negative LLC: w* is not a local minimum at this temperature")
    if not converged:
        notes.append(f"trace not flat over its last half (drift {drift:+.2f})")
    if escaped:
        notes.append(f"mean draw loss {mean_loss:.3g} climbed more than {ESCAPE_FRACTION:.0%} of the way to chance ({chance:.3g}): the chain left the basin")
    diag.update(
        mala_acceptance=mala,
        frac_below_init=float((good < init_loss).mean()),
        trace_slope=slope,
        trace_drift=float(drift),
        trace_drift_se=float(drift_se),
        converged=converged,
        r_hat=_split_r_hat(good[:, start:]),
        loss_excess=mean_loss - init_loss,
        chance_loss=chance,
        escaped=escaped,
        negative=bool(mean < 0),
        healthy=bool(not failed and mean > 0 and converged and not escaped),
        warnings=notes,
    )
    return mean, std, per_chain, diag


# --------------------------------------------------------------------------- parallel chains

_pool: ProcessPoolExecutor | None = None
_pool_size = 0


def _get_pool(cores: int) -> ProcessPoolExecutor:
    global _pool, _pool_size
    if _pool is None or _pool_size != cores:
        shutdown_workers()
        _pool = ProcessPoolExecutor(max_workers=cores, mp_context=get_context("spawn"), initializer=_devinterp.init_worker)
        _pool_size = cores
    return _pool


def shutdown_workers() -> None:
    """Stop the chain worker processes (started on the first ``cores > 1`` estimate and
    kept for the next ones; they also stop when the interpreter exits)."""
    global _pool, _pool_size
    if _pool is not None:
        _pool.shutdown(wait=True, cancel_futures=True)
    _pool, _pool_size = None, 0


def effective_cores(cores: int, num_chains: int, device: torch.device) -> int:
    """Processes actually used: at most one per chain and per CPU; accelerators run
    chains one after another (the device is the parallel resource)."""
    if device.type != "cpu":
        return 1
    return max(1, min(int(cores), num_chains, os.cpu_count() or 1))


def _run_chains(model, data, evaluate, specs, cores: int, quiet: bool) -> list:
    bar = tqdm(total=len(specs), desc="chains", unit="chain", disable=quiet, leave=False)
    try:
        if cores == 1:
            results = []
            for spec in specs:
                results.append(_devinterp.sample_chain(model, data, evaluate, spec))
                bar.update(1)
            return results
        payload = _devinterp.pack_job(model, data, evaluate)
        pool = _get_pool(cores)
        try:
            futures = [pool.submit(_devinterp.run_chain_payload, payload, spec) for spec in specs]
            results = []
            for future in futures:
                results.append(future.result())
                bar.update(1)
            return results
        except BrokenProcessPool:
            shutdown_workers()
            raise LLCError("a chain worker process died (out of memory?); try cores=1") from None
    finally:
        bar.close()


def chain_seeds(seed: int, num_chains: int) -> list[int]:
    """Per-chain seeds from one seed (the scheme devinterp uses for an integer seed)."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(num_chains)]


# --------------------------------------------------------------------------- estimate_llc


def _check(name: str, value, minimum: float = 0.0, allow_equal: bool = False) -> None:
    if value is None or not (value > minimum or (allow_equal and value == minimum)) or not math.isfinite(value):
        bound = f">= {minimum:g}" if allow_equal else f"> {minimum:g}"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


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
    quiet: bool = True,
) -> LLCEstimate:
    """Estimate the local learning coefficient of ``model`` at its current weights.

    ``data``: ``(inputs, targets)`` tensors or a torch Dataset of ``(input, target)``.
    ``loss``: "ce" (cross-entropy on logits), "mse", or ``loss(model, inputs, targets)``
    returning the *mean* loss over the batch (the estimator scales a per-example loss).
    ``nbeta``: inverse temperature n*beta; None means n / log n for the n examples of
    ``data`` (not devinterp's batch-size default). ``epsilon``: SGLD step size.
    ``localization``: strength gamma of the pull towards w*. ``cores``: chain processes
    on a CPU. Same arguments and seed give the same numbers on the same device.

    Raises :class:`AllChainsFailed` when no chain survives (lower epsilon or nbeta).
    """
    _check("epsilon", epsilon)
    if nbeta is not None:
        _check("nbeta", nbeta)
    _check("localization", localization, allow_equal=True)
    for name, value in (("num_chains", num_chains), ("num_draws", num_draws), ("batch_size", batch_size), ("cores", cores)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(num_burnin_steps, (int, np.integer)) or num_burnin_steps < 0:
        raise ValueError(f"num_burnin_steps must be a non-negative integer, got {num_burnin_steps!r}")
    evaluate = make_evaluate(loss)
    dataset = as_dataset(data)
    n = len(dataset)
    nbeta = default_nbeta(n) if nbeta is None else float(nbeta)
    dev = resolve_device(device)
    num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if num_params == 0:
        raise ValueError("the model has no trainable parameters")

    start = time.perf_counter()
    work = model
    if any(p.device != dev for p in model.parameters()):
        work = copy.deepcopy(model).to(dev)
    init_loss, classes = full_loss(work, dataset, evaluate, dev)
    if not math.isfinite(init_loss):
        raise LLCError(f"the loss at w* is {init_loss}: the model or data is broken, not the sampler")
    chance = math.log(classes) if classes and classes > 1 else None

    cores_used = effective_cores(cores, num_chains, dev)
    if cores_used > 1:
        work, dataset = work.cpu(), _to_cpu(dataset)
    specs = [
        _devinterp.ChainSpec(
            epsilon=float(epsilon), nbeta=nbeta, localization=float(localization), num_draws=int(num_draws),
            num_burnin_steps=int(num_burnin_steps), batch_size=int(batch_size), seed=s, device=str(dev),
        )
        for s in chain_seeds(seed, num_chains)
    ]
    results = _run_chains(work, dataset, evaluate, specs, cores_used, quiet)
    loss_trace = np.stack([r.losses for r in results])
    mala_trace = np.stack([r.mala for r in results])
    mean, std, per_chain, diag = summarize_chains(
        loss_trace, init_loss, nbeta, num_params, mala_trace=mala_trace, chance_loss=chance
    )
    estimate = LLCEstimate(
        mean=mean, std=std, per_chain=per_chain, loss_trace=loss_trace, init_loss=init_loss, nbeta=nbeta,
        epsilon=float(epsilon), localization=float(localization), num_chains=int(num_chains),
        num_draws=int(num_draws), num_burnin_steps=int(num_burnin_steps), batch_size=int(batch_size),
        seed=int(seed), num_data=n, num_params=num_params, diagnostics=diag, mala_trace=mala_trace,
        seconds=time.perf_counter() - start,
    )
    if diag["num_diverged"] == num_chains:
        raise AllChainsFailed(
            f"all {num_chains} SGLD chains failed at epsilon={epsilon:g}, nbeta={nbeta:.4g} "
            f"({'; '.join(diag['failure_reasons'])}). Lower epsilon (try {epsilon / 10:g}) "
            f"or nbeta (try {nbeta / 10:.4g}), or raise localization.",
            diag["failure_reasons"], float(epsilon), nbeta,
        )
    return estimate


def _to_cpu(dataset: Dataset) -> Dataset:
    if isinstance(dataset, TensorDataset) and any(t.device.type != "cpu" for t in dataset.tensors):
        return TensorDataset(*(t.cpu() for t in dataset.tensors))
    return dataset


# --------------------------------------------------------------------------- trajectories


def settings_from_config(llc_cfg, num_data: int) -> dict:
    """Sampler settings of an :class:`~llcgrok.config.LLCConfig`, nbeta resolved."""
    return {
        "epsilon": float(llc_cfg.epsilon),
        "nbeta": default_nbeta(num_data) if llc_cfg.nbeta is None else float(llc_cfg.nbeta),
        "localization": float(llc_cfg.localization),
        "num_chains": int(llc_cfg.num_chains),
        "num_draws": int(llc_cfg.num_draws),
        "num_burnin_steps": int(llc_cfg.num_burnin_steps),
        "batch_size": int(llc_cfg.batch_size),
        "seed": int(llc_cfg.seed),
    }


def _same_settings(row: pd.Series, settings: dict) -> bool:
    for key, value in settings.items():
        if key not in row or pd.isna(row[key]) or not math.isclose(float(row[key]), float(value), rel_tol=1e-9):
            return False
    return True


def _describe(settings: dict) -> str:
    return ", ".join(f"{k}={settings[k]:g}" if isinstance(settings[k], float) else f"{k}={settings[k]}" for k in SETTING_COLUMNS)


def apply_calibration(calibration, settings: dict, run_dir, *, strict: bool, widen_hint: str) -> tuple[dict, str, bool]:
    """The settings a trajectory runs with after ``calibration``: its recommendation, or,
    when it recommends nothing, ``settings`` unchanged with a loud warning and a
    ``settings_source`` starting with ``UNCALIBRATED`` (``strict`` raises
    :class:`~llcgrok.calibrate.NoRecommendation` instead). Returns (settings, source, calibrated)."""
    from .calibrate import NoRecommendation

    if calibration.recommended is None:
        if strict:
            raise NoRecommendation(f"{run_dir}: calibration found no healthy epsilon/nbeta ({calibration.reason}). {widen_hint}")
        warnings.warn(
            f"{run_dir}: calibration found no healthy epsilon/nbeta ({calibration.reason}). Estimating with "
            f"the given settings ({_describe(settings)}); every row of llc.csv says UNCALIBRATED in settings_source. "
            f"Treat these numbers with care. {widen_hint}",
            stacklevel=3,
        )
        return settings, f"UNCALIBRATED: calibration at step {calibration.step} recommended nothing; given epsilon/nbeta used", False
    recommended = calibration.recommended
    settings = {**settings, "epsilon": float(recommended["epsilon"]), "nbeta": float(recommended["nbeta"]),
                "localization": float(recommended.get("localization", settings["localization"]))}
    return settings, f"calibrated at step {calibration.step}", True


def rows_done(path: Path, settings: dict) -> list[dict]:
    """The rows of an existing trajectory file, to resume from; an error if any was made
    with other sampler settings (a trajectory mixes no settings)."""
    if not path.exists():
        return []
    done = pd.read_csv(path)
    mismatched = [int(r.step) for _, r in done.iterrows() if not _same_settings(r, settings)]
    if mismatched:
        first = done.iloc[0]
        recorded = {k: first[k] for k in SETTING_COLUMNS if k in first}
        raise LLCError(
            f"{path} holds estimates made with other sampler settings ({_describe_any(recorded)}) than "
            f"now ({_describe(settings)}); move it away to start a new trajectory"
        )
    return done.to_dict("records")


def failed_row(exc: AllChainsFailed, settings: dict) -> dict:
    """The trajectory row of a checkpoint where every chain failed: NaN LLC, the reasons."""
    return {
        "llc_mean": float("nan"), "llc_std": float("nan"), "healthy": False,
        "num_diverged": settings["num_chains"], "failure_reasons": "; ".join(exc.reasons),
        "warnings": "every chain failed", **settings,
    }


def trajectory_columns() -> list[str]:
    return [
        "step", "llc_mean", "llc_std", "healthy", "mala_acceptance", "frac_below_init", "num_diverged",
        "diverged_chains", "trace_drift", "trace_drift_se", "trace_slope", "converged", "r_hat", "loss_excess", "escaped",
        "negative", "init_loss", "failure_reasons", "warnings", *SETTING_COLUMNS, "settings_source",
        "train_loss", "train_acc", "val_loss", "val_acc", "num_params", "seconds",
    ]


def run_trajectory(run_dir, llc_cfg, *, calibrate: bool | None = None, quiet: bool = False, strict: bool = False) -> pd.DataFrame:
    """Estimate the LLC of every checkpoint of a run; write and return ``RUN_DIR/llc.csv``.

    One row per checkpoint: the LLC, its diagnostics, the sampler settings used, and
    train/val loss and accuracy of that checkpoint on the full train/val sets. Rows are
    appended (atomically) as each checkpoint finishes; a rerun skips the steps already in
    the file, so an interrupted trajectory loses at most one checkpoint.

    ``calibrate`` (None: ``llc_cfg.calibrate``): first calibrate epsilon and nbeta on the
    final checkpoint (reusing ``calibration.csv``/``.json`` when they match) and use the
    recommendation for every checkpoint. When calibration recommends nothing, the
    configured ``llc_cfg.epsilon``/``nbeta`` are used with a loud warning, and every row's
    ``settings_source`` starts with ``UNCALIBRATED`` (so a sweep still yields a flagged
    curve); ``strict=True`` raises :class:`~llcgrok.calibrate.NoRecommendation` instead.
    A checkpoint where every chain fails gets a row with NaN LLC and the reasons.
    """
    from . import runs
    from .tasks import make_task
    from .train import evaluate as evaluate_acc

    run_dir = Path(run_dir)
    cfg = runs.read_config(run_dir)
    checkpoints = runs.list_checkpoints(run_dir)
    if not checkpoints:
        raise FileNotFoundError(f"{run_dir}: no checkpoints; train the run first (llcgrok train)")
    calibrate = llc_cfg.calibrate if calibrate is None else calibrate
    task = make_task(cfg.task, seed=cfg.train.seed)
    settings = settings_from_config(llc_cfg, len(task.train_targets))
    source = "config"
    if calibrate:
        from .calibrate import calibrate_run

        if not runs.is_trained(run_dir):
            raise LLCError(f"{run_dir}: training has not finished; calibration needs the final checkpoint")
        calibration = calibrate_run(run_dir, llc_cfg, quiet=quiet)
        settings, source, _ = apply_calibration(
            calibration, settings, run_dir, strict=strict,
            widen_hint="Widen llc.calibration.epsilons/nbetas, or run uncalibrated with --no-calibrate.")

    path = run_dir / LLC_CSV
    columns = trajectory_columns()
    rows = rows_done(path, settings)
    done_steps = {int(r["step"]) for r in rows}
    todo = [(step, p) for step, p in checkpoints if step not in done_steps]
    device = resolve_device(llc_cfg.device)
    data = task.to(device)
    bar = tqdm(todo, desc=f"LLC {run_dir.name}", unit="ckpt", disable=quiet)
    for step, ckpt in bar:
        model, _ = runs.load_checkpoint(ckpt, device)
        t0 = time.perf_counter()
        try:
            est = estimate_llc(
                model, (data.train_inputs, data.train_targets), loss="ce", **settings,
                device=str(device), cores=llc_cfg.cores, quiet=True,
            )
            row = est.to_row()
        except AllChainsFailed as exc:
            row = failed_row(exc, settings)
        row["seconds"] = time.perf_counter() - t0
        train_loss, train_acc = evaluate_acc(model, data.train_inputs, data.train_targets)
        val_loss, val_acc = evaluate_acc(model, data.val_inputs, data.val_targets)
        row.update(step=step, settings_source=source, train_loss=train_loss, train_acc=train_acc, val_loss=val_loss, val_acc=val_acc)
        row["num_params"] = sum(p.numel() for p in model.parameters())
        rows.append(row)
        runs.atomic_write_csv(path, trajectory_frame(rows, columns))
        bar.set_postfix(step=step, llc=f"{row['llc_mean']:.3g}", refresh=False)
    bar.close()
    frame = trajectory_frame(rows, columns)
    if not todo and not path.exists():
        runs.atomic_write_csv(path, frame)
    return frame


def _describe_any(values: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def trajectory_frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    """Trajectory rows as a table: ``columns`` first (NaN where a row lacks one), then any
    others, sorted by step."""
    frame = pd.DataFrame(rows)
    for column in columns:
        if column not in frame:
            frame[column] = np.nan
    extra = [c for c in frame.columns if c not in columns]
    return frame[columns + extra].sort_values("step", kind="stable").reset_index(drop=True)
