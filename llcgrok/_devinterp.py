"""The one module that imports devinterp: one SGLD chain, sampled with devinterp's API.

Everything else in llcgrok calls :func:`sample_chain` (or :func:`run_chain_payload` in a
worker process), so a devinterp upgrade touches this file only.

Why devinterp 1.3.2 and not 2.x: 1.3.2 has the API the field's grokking notebook uses
(``SGLD(lr, nbeta, localization)``, ``sample`` with callbacks, ``MalaAcceptanceRate``)
and light dependencies. 2.0 is built around language models (HF datasets of input_ids,
zarr, transformers) and dropped the calibration and diagnostic tools we rely on.

What this adapter does about 1.3.2's pitfalls (each measured with devinterp 1.3.2):

* ``optimizer_kwargs`` is mutated by devinterp (``metrics`` lists grow chain after chain):
  every chain gets a fresh dict.
* ``default_nbeta`` comes from the batch size, not the dataset size: nbeta is always
  passed explicitly (llcgrok's default, n / log n of the data, is set in ``llc.py``).
* Its ``LLCEstimator`` raises ``RuntimeError`` on a NaN loss, which aborts every chain of
  the run: we record the loss ourselves with a callback that stops only the chain that
  failed, and leave that chain out of the mean.
* ``cores > 1`` runs chains in a fresh spawn pool on every call and loses the model class
  when it lives in a notebook: ``llc.py`` runs one chain per call here instead, in its
  own persistent pool, with the model shipped by cloudpickle (by value for notebook
  classes) and one torch thread per worker.
* ``init_loss`` that is falsy (0.0) makes devinterp recompute it from the loader: we
  compute L_n(w*) ourselves and hand devinterp a placeholder it does not use.
* devinterp's warnings (seeded runs, deprecated SGLD class) are expected here and
  silenced; its "more draws than burn-in steps" warning only when a burn-in is set
  (with none it is right); warnings from the user's model are not.
* ``SGMCMC.rmsprop_sgld`` with ``MalaAcceptanceRate`` raises ``KeyError: 'distance'``
  (the optimizer adds to a "distance" metric it was not asked to track): "distance" is
  requested explicitly. Its drift list (``optimizer.dws``) is one list cleared and refilled
  in place every step, so the callback's previous and current drifts would be the same
  object: the callback is handed a copy of the list each draw. (The ``SGLD`` class makes a
  new list per step; the copy changes nothing there.)

``llcgrok.sgld_batched`` implements the same update without devinterp, many chains at a
time; this module stays the reference path it is tested against.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import Callable

import cloudpickle
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, TensorDataset

from devinterp.optim.sgld import SGLD
from devinterp.optim.sgmcmc import SGMCMC
from devinterp.slt.callback import SamplerCallback
from devinterp.slt.mala import MalaAcceptanceRate
from devinterp.slt.sampler import sample

DEVINTERP_VERSION = metadata.version("devinterp")
if not DEVINTERP_VERSION.startswith("1."):  # pragma: no cover - guarded by the pin
    warnings.warn(
        f"llcgrok was written against devinterp 1.3.x; found {DEVINTERP_VERSION}. "
        "Pin devinterp==1.3.2 (requirements.txt)."
    )

EvaluateFn = Callable[[torch.nn.Module, object], torch.Tensor]


@dataclass(frozen=True)
class ChainSpec:
    """Everything one chain needs besides the model, the data and the loss."""

    epsilon: float
    nbeta: float
    localization: float
    num_draws: int
    num_burnin_steps: int
    batch_size: int
    seed: int
    device: str = "cpu"
    mala: bool = True
    method: str = "sgld"  # "sgld" (devinterp's SGLD class) or "rmsprop_sgld" (SGMCMC.rmsprop_sgld)


@dataclass
class ChainResult:
    losses: np.ndarray  # (num_draws,) minibatch loss at each draw; NaN after a failure
    mala: np.ndarray  # (num_draws,) MALA acceptance probability; NaN where undefined
    failed_at: int | None  # draw whose loss was not finite, or None
    seconds: float


class _Mala(MalaAcceptanceRate):
    """devinterp's MALA callback, handed a snapshot of the optimizer's drift list (see the
    module docstring: SGMCMC reuses one list, which would alias the previous drift)."""

    def __call__(self, chain: int, draw: int, model: torch.nn.Module, loss, optimizer, **_):
        snapshot = _DriftSnapshot(list(optimizer.dws), optimizer.localization_loss)
        self.update(chain, draw, model, loss, snapshot)


@dataclass
class _DriftSnapshot:
    dws: list
    localization_loss: object


def _sampling_method(method: str):
    """devinterp's optimizer for ``method``, and the metrics it must be asked for."""
    if method == "sgld":
        return SGLD, []
    if method == "rmsprop_sgld":
        return SGMCMC.rmsprop_sgld, ["distance"]
    raise ValueError(f"method must be 'sgld' or 'rmsprop_sgld', got {method!r}")


class _ChainStopped(Exception):
    """Raised from inside devinterp's loop to end one chain whose loss is not finite."""

    def __init__(self, draw: int):
        super().__init__(draw)
        self.draw = draw


class _LossRecorder(SamplerCallback):
    """Records the minibatch loss of every draw; stops the chain at a non-finite loss.

    devinterp calls each callback with the sampler loop's locals; ``loss`` is the loss of
    the batch the step was taken on, evaluated at the weights before the step.
    """

    def __init__(self, num_draws: int):
        super().__init__("cpu")
        self.losses = np.full(num_draws, np.nan)

    def __call__(self, draw: int, loss: torch.Tensor, **_):
        value = float(loss)
        self.losses[draw] = value
        if not math.isfinite(value):
            raise _ChainStopped(draw)

    def get_results(self):
        return {"losses": self.losses}


def make_loader(data: Dataset, batch_size: int, seed: int) -> DataLoader:
    """Shuffled batches, reshuffled each pass, seeded. Tensor data is indexed a batch at a
    time (no per-example collation); a batch smaller than the rest is dropped so that
    every draw's loss has the same variance and its mean over draws stays unbiased."""
    n = len(data)
    batch_size = min(batch_size, n)
    generator = torch.Generator().manual_seed(int(seed) % (2**63))
    if isinstance(data, TensorDataset):
        sampler = BatchSampler(RandomSampler(data, generator=generator), batch_size, drop_last=True)
        loader = DataLoader(data, sampler=sampler, batch_size=None)
        # devinterp evaluates default_nbeta(loader) (batch_size * ...) even when nbeta is
        # given, and a batch-sampling loader reports batch_size None; report the real one.
        # DataLoader forbids setting it after __init__; nothing else reads it.
        object.__setattr__(loader, "batch_size", batch_size)
        return loader
    return DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True, generator=generator)


def sample_chain(model: torch.nn.Module, data: Dataset, evaluate: EvaluateFn, spec: ChainSpec) -> ChainResult:
    """One SGLD chain localised at the current weights of ``model`` (left untouched).

    The draw losses are the minibatch losses devinterp's sampler sees at each step after
    burn-in. A non-finite loss ends the chain there; the rest of its trace is NaN.
    """
    start = time.perf_counter()
    device = torch.device(spec.device)
    recorder = _LossRecorder(spec.num_draws)
    callbacks: list = [recorder]
    mala = None
    if spec.mala and spec.num_draws > 2:
        mala = _Mala(num_chains=1, num_draws=spec.num_draws, learning_rate=spec.epsilon, nbeta=spec.nbeta, device="cpu")
        callbacks.append(mala)
    sampling_method, metrics = _sampling_method(spec.method)
    optimizer_kwargs = {"lr": spec.epsilon, "nbeta": spec.nbeta, "localization": spec.localization}
    if metrics:
        optimizer_kwargs["metrics"] = metrics
    failed_at = None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"devinterp(\..*)?$")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*SGLD.*")
        if spec.num_burnin_steps == 0:
            # With no burn-in at all the first draws sit at w* and the estimate is biased
            # low: devinterp's warning says so, and it is right. With a burn-in set by the
            # rule (5 relaxation times), "more draws than burn-in steps" is no concern.
            warnings.filterwarnings("default", message=".*more draws than burn-in.*")
        # devinterp reseeds the global torch RNG per chain; keep the caller's stream intact.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            try:
                sample(
                    model,
                    make_loader(data, spec.batch_size, spec.seed),
                    callbacks=callbacks,
                    evaluate=evaluate,
                    sampling_method=sampling_method,
                    optimizer_kwargs=optimizer_kwargs,
                    num_draws=spec.num_draws,
                    num_chains=1,
                    num_burnin_steps=spec.num_burnin_steps,
                    init_loss=1.0,  # placeholder: llcgrok computes L_n(w*) itself
                    cores=1,
                    seed=[int(spec.seed)],
                    device=device,
                    verbose=False,
                )
            except _ChainStopped as stop:
                failed_at = stop.draw
    acceptance = np.full(spec.num_draws, np.nan)
    if mala is not None:
        # devinterp fills entries 1 .. num_draws-2 (the transition into draw k+1 is stored
        # at k); entry 0 is never written. Shift so that acceptance[k] is the move into draw k.
        rates = mala.mala_acceptance_rate[0].cpu().numpy().astype(float)
        acceptance[2:] = rates[1:]
        stop = failed_at if failed_at is not None else spec.num_draws
        acceptance[stop:] = np.nan
    return ChainResult(recorder.losses, acceptance, failed_at, time.perf_counter() - start)


# --------------------------------------------------------------------------- worker processes


def init_worker(num_threads: int = 1) -> None:
    """Process-pool initializer: one torch thread per chain process, or the processes
    fight over the cores (measured: oversubscription makes 2 processes slower than 1)."""
    torch.set_num_threads(num_threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work already ran
        pass


def pack_job(model: torch.nn.Module, data: Dataset, evaluate: EvaluateFn) -> bytes:
    """Serialise what a worker needs. cloudpickle sends classes and functions defined in a
    notebook by value, so the worker does not need to import them."""
    return cloudpickle.dumps((model, data, evaluate))


def run_chain_payload(payload: bytes, spec: ChainSpec) -> ChainResult:
    model, data, evaluate = cloudpickle.loads(payload)
    return sample_chain(model, data, evaluate, spec)
