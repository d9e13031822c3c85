"""Many SGLD chains advanced as one computation: the batched sampler.

devinterp's loop (``_devinterp.sample_chain``, the reference path) runs one chain at a time
and pays, every step, a DataLoader batch, a Python loop over parameters, callbacks, MALA
clones and a ``float(loss)``. Here the C chains' weights are one ``(C, D)`` tensor, every
chain's minibatch loss is one ``vmap`` of ``torch.func.functional_call`` (any
``evaluate(model, batch)`` works unchanged), one backward pass gives every gradient, the
update is a few elementwise operations, and the traces stay on the device until the end.

What it reproduces of devinterp 1.3.2, so that both paths sample the same chain:

* the update of its ``SGLD`` class (``method="sgld"``),
  ``w += -eps/2 * (nbeta * grad + gamma * (w - w*)) + sqrt(eps) * N(0, 1)``, and of
  ``SGMCMC.rmsprop_sgld`` (``method="rmsprop_sgld"``, alpha 0.99, eps 0.1): the drift and the
  noise scaled by ``1 / (sqrt(V) + 0.1)`` and its square root, V the running mean of grad^2;
* the loss recorded at each draw: the loss of the step's minibatch at the weights before
  the step; burn-in steps are taken and not recorded;
* the minibatches: each chain's come from ``_devinterp.make_loader`` with the chain's seed,
  so they are the batches the reference path sees;
* MALA: ``MalaAcceptanceRate``'s formula (drift as devinterp stores it, proposal variance
  epsilon, potential ``nbeta * loss + gamma/2 |w - w*|^2``), for the move into draw k >= 2;
* a chain stops at its first draw whose loss is not finite (the rest of its trace is NaN).

Each chain's noise is its own generator's (seeded with its seed), not devinterp's global
stream: the paths agree statistically; fed the same noise they agree step for step to
float rounding (tests/test_sgld_batched.py).

What it cannot batch raises :class:`BatchingUnsupported` before the first step, and
``llc.estimate_llc`` then falls back to the reference path: a parameter without
``requires_grad``, random operations in the loss (dropout), buffers written in the
forward pass, a non-scalar loss, or a functional forward that does not reproduce
``evaluate(model, batch)`` on the first batch.
"""

from __future__ import annotations

import time
import warnings
from typing import Callable, Sequence

import numpy as np
import torch
from torch.func import functional_call, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel  # torch >= 2.3 (pyproject: >= 2.4)
from torch.utils.data import Dataset, TensorDataset

from ._devinterp import ChainResult, ChainSpec, make_loader

METHODS = ("sgld", "rmsprop_sgld")
RMSPROP_ALPHA, RMSPROP_EPS = 0.99, 0.1  # devinterp 1.3.2's SGMCMC.rmsprop_sgld defaults
NOISE_BLOCK_BYTES = 8 << 20  # each chain's noise is drawn this many bytes (of steps) at a time
PROBE_RTOL = 1e-3  # first-batch loss and gradient of the batched forward vs evaluate(model, batch)


class BatchingUnsupported(RuntimeError):
    """The model or loss cannot run batched; the reference path can run it."""


def draw_noise(generators: Sequence[torch.Generator], steps: int, size: int, dtype, device) -> torch.Tensor:
    """(C, steps, size) standard normal noise, chain c from its own generator: one call per
    chain and block of steps instead of one per parameter and step."""
    out = torch.empty(len(generators), steps, size, dtype=dtype, device=device)
    for c, generator in enumerate(generators):
        out[c].normal_(generator=generator)
    return out


def noise_block(size: int, itemsize: int, steps: int) -> int:
    """Steps of noise drawn at a time. It depends on the model size only, not on the number
    of chains, so that a chain's noise depends on its seed alone."""
    return max(1, min(steps, NOISE_BLOCK_BYTES // (size * itemsize)))


# --------------------------------------------------------------------------- settings and weights


def _common(specs: Sequence[ChainSpec]) -> ChainSpec:
    """The settings every chain shares (all but the seed). Equal hyperparameters keep every
    update a scalar operation, the same operations devinterp applies."""
    first = specs[0]
    for name in ("epsilon", "nbeta", "localization", "num_draws", "num_burnin_steps", "batch_size", "device", "mala", "method"):
        if any(getattr(spec, name) != getattr(first, name) for spec in specs):
            raise ValueError(f"batched chains must share {name}")
    if first.method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {first.method!r}")
    return first


class _Weights:
    """The chains' weights as one (C, D) tensor ``w``, their centres w* as ``centre``, and
    each parameter as a (C, *shape) leaf sharing ``w``'s storage, so that the update writes
    the weights the next forward pass reads."""

    def __init__(self, models: Sequence[torch.nn.Module], device: torch.device):
        named = [list(m.named_parameters()) for m in models]
        self.names = [name for name, _ in named[0]]
        first = [p for _, p in named[0]]
        if any(not p.requires_grad for p in first):
            raise BatchingUnsupported("a parameter does not require grad (devinterp's SGLD still moves it)")
        if len({p.dtype for p in first}) != 1 or not first[0].is_floating_point():
            raise BatchingUnsupported("the parameters must share one floating dtype")
        for chain in named[1:]:
            if [(n, p.shape) for n, p in chain] != [(n, p.shape) for n, p in named[0]]:
                raise BatchingUnsupported("the models of the chains differ in architecture")
        with torch.no_grad():
            self.centre = torch.stack([torch.cat([p.detach().reshape(-1) for _, p in chain]) for chain in named]).to(device)
        self.w = self.centre.clone()
        self.num_chains, self.size = self.w.shape
        self.dtype = self.w.dtype
        self.leaves, offset = [], 0
        for p in first:
            view = self.w[:, offset:offset + p.numel()].view(self.num_chains, *p.shape)
            self.leaves.append(view.detach().requires_grad_(True))
            offset += p.numel()

    def flat(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([g.reshape(self.num_chains, -1) for g in grads], dim=1)


# --------------------------------------------------------------------------- minibatches


class _IndexBatches:
    """Each chain's minibatches as row indices into a TensorDataset on the device. The
    indices come from iterating ``make_loader``'s batch sampler, exactly as the reference
    path's loader (cycled as devinterp's ``cycle`` does), once for every step up front."""

    def __init__(self, data: TensorDataset, specs: Sequence[ChainSpec], steps: int, device: torch.device):
        self.tensors = [t.to(device) for t in data.tensors]
        rows = [self._indices(data, spec, steps) for spec in specs]
        self.index = torch.tensor(np.stack(rows, axis=1), dtype=torch.long, device=device)  # (steps, C, B)

    @staticmethod
    def _indices(data, spec: ChainSpec, steps: int) -> np.ndarray:
        sampler = make_loader(data, spec.batch_size, spec.seed).sampler
        out: list = []
        while len(out) < steps:
            before = len(out)
            for batch in sampler:
                out.append(batch)
                if len(out) == steps:
                    break
            if len(out) == before:
                raise ValueError("the data has fewer examples than one batch")
        return np.asarray(out, dtype=np.int64)

    def __call__(self, step: int) -> list:
        rows = self.index[step]
        return [t[rows] for t in self.tensors]


class _LoaderBatches:
    """Any other Dataset: each chain's own ``make_loader``, cycled, batches stacked per step."""

    def __init__(self, data: Dataset, specs: Sequence[ChainSpec], device: torch.device):
        self.iters = [self._cycle(make_loader(data, spec.batch_size, spec.seed)) for spec in specs]
        self.device = device

    @staticmethod
    def _cycle(loader):  # devinterp.utils.cycle: the same loader again, reshuffled
        while True:
            yield from loader

    def __call__(self, step: int) -> list:
        batches = [next(it) for it in self.iters]
        if not all(isinstance(b, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in b) for b in batches):
            raise BatchingUnsupported("batches must be lists or tuples of tensors")
        return [torch.stack(parts).to(self.device) for parts in zip(*batches)]


# --------------------------------------------------------------------------- loss and gradient


class _Evaluate(torch.nn.Module):
    """``evaluate(model, batch)`` as a module, so that ``functional_call`` can swap the
    model's parameters for one chain's while the user's evaluate runs unchanged."""

    def __init__(self, model: torch.nn.Module, evaluate: Callable):
        super().__init__()
        self.model = model
        self.evaluate = evaluate

    def forward(self, batch):
        return self.evaluate(self.model, batch)


class _LossGrad:
    """Every chain's minibatch loss and gradient in one vmapped forward and one backward."""

    def __init__(self, model: torch.nn.Module, evaluate: Callable, weights: _Weights):
        wrapper = _Evaluate(model, evaluate)
        keys = ["model." + name for name in weights.names]

        def one(params, batch):
            return functional_call(wrapper, dict(zip(keys, params)), (batch,))

        self.batched = vmap(one, in_dims=(0, 0), randomness="error")
        self.weights = weights

    def __call__(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        # torch's fused CPU attention kernel has no vmap rule (vmap would loop over the
        # chains); the math path is matmuls and a softmax, which vmap batches.
        with sdpa_kernel([SDPBackend.MATH]):
            losses = self.batched(self.weights.leaves, batch)
        if not isinstance(losses, torch.Tensor) or losses.shape != (self.weights.num_chains,):
            raise BatchingUnsupported("evaluate(model, batch) must return a scalar loss tensor")
        # The chains are independent, so the gradient of the sum is each chain's gradient.
        grads = torch.autograd.grad(losses.sum(), self.weights.leaves, allow_unused=True, materialize_grads=True)
        return losses.detach(), self.weights.flat(grads)


def _probe(loss_grad: _LossGrad, model, evaluate, batch, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The first step's losses and gradients, checked against ``evaluate(model, batch)`` on
    chain 0 with plain autograd: a model the functional forward does not reproduce (state
    kept outside its parameters, in-place buffer updates, random ops) is refused here."""
    try:
        losses, grads = loss_grad(batch)
    except Exception as exc:  # vmap and functional_call raise many kinds of errors
        if isinstance(exc, BatchingUnsupported):
            raise
        raise BatchingUnsupported(f"vmap cannot run this model/loss: {type(exc).__name__}: {exc}") from exc
    params = list(model.parameters())
    ref_loss = evaluate(model, [t[0] for t in batch])
    ref = torch.autograd.grad(ref_loss, params, allow_unused=True)
    if method == "rmsprop_sgld" and any(g is None for g in ref):
        # devinterp's SGMCMC skips a parameter without a gradient (no noise either).
        raise BatchingUnsupported("a parameter gets no gradient, which rmsprop_sgld leaves unmoved")
    ref_flat = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, ref)])
    ref_loss = ref_loss.detach()
    loss_ok = bool(torch.isclose(losses[0], ref_loss.to(losses.dtype), rtol=PROBE_RTOL, atol=1e-6)) or not torch.isfinite(ref_loss)
    scale = float(ref_flat.norm()) + 1e-12
    if not loss_ok or float((grads[0] - ref_flat.to(grads.device)).norm()) > PROBE_RTOL * scale + 1e-8:
        raise BatchingUnsupported("the batched forward does not reproduce evaluate(model, batch) on the first batch")
    return losses, grads


# --------------------------------------------------------------------------- the update


class _Update:
    """One SGLD step on all chains, in devinterp's order of operations. ``drift`` returns
    what devinterp's MALA callback reads (the drift it stores as ``dws``, and the
    localization term of the potential); ``apply`` moves the weights."""

    def __init__(self, spec: ChainSpec, weights: _Weights):
        self.eps, self.nbeta, self.gamma, self.method = spec.epsilon, spec.nbeta, spec.localization, spec.method
        self.square_avg = torch.zeros_like(weights.w) if self.method == "rmsprop_sgld" else None
        self.noise_coef = None

    def drift(self, w, centre, grad) -> tuple[torch.Tensor, torch.Tensor]:
        diff = w - centre
        if self.method == "sgld":  # devinterp.optim.sgld.SGLD.step
            drift = grad.mul_(self.nbeta)
            if self.gamma != 0:
                drift.add_(diff, alpha=self.gamma)
            return drift, (diff**2).sum(dim=1) * self.gamma / 2
        # SGMCMC.step with RMSpropPreconditioner and GaussianPrior(gamma, "initial")
        self.square_avg.mul_(RMSPROP_ALPHA).addcmul_(grad, grad, value=1 - RMSPROP_ALPHA)
        coef = 1.0 / (torch.sqrt(self.square_avg) + RMSPROP_EPS)
        drift = coef * grad.mul_(self.nbeta)
        drift.add_(coef * (self.gamma * diff))
        self.noise_coef = torch.sqrt(coef)
        # devinterp accumulates the distance, takes its square root, then squares it again
        return drift, torch.sqrt((diff**2).sum(dim=1)) ** 2 * self.gamma / 2

    def apply(self, w, drift, noise) -> None:
        w.add_(drift, alpha=-0.5 * self.eps)
        w.add_(noise if self.noise_coef is None else self.noise_coef * noise, alpha=self.eps**0.5)


def _mala(prev: tuple, cur: tuple, eps: float) -> torch.Tensor:
    """devinterp's ``mala_acceptance_probability`` for every chain: the move prev -> cur,
    each a (weights, drift, potential) triple; min(1, ratio) as Python's min takes it (NaN -> 1)."""
    (w0, d0, u0), (w1, d1, u1) = prev, cur
    log_q_back = -((w0 - w1 - (eps * 0.5 * -d1)) ** 2).sum(dim=1) / (2 * eps)
    log_q_forward = -((w1 - w0 - (eps * 0.5 * -d0)) ** 2).sum(dim=1) / (2 * eps)
    ratio = torch.exp(log_q_back - log_q_forward + u0 - u1)
    return torch.where(ratio < 1.0, ratio, torch.ones_like(ratio))


# --------------------------------------------------------------------------- the sampler


class _Run:
    """State of one batched run: weights, batches, noise, the recorded traces."""

    def __init__(self, models, data, evaluate, specs, spec: ChainSpec, device):
        self.spec, self.device = spec, device
        self.steps = spec.num_burnin_steps + spec.num_draws
        self.weights = _Weights(models, device)
        tensors = isinstance(data, TensorDataset)
        self.batches = _IndexBatches(data, specs, self.steps, device) if tensors else _LoaderBatches(data, specs, device)
        self.loss_grad = _LossGrad(models[0], evaluate, self.weights)
        self.model, self.evaluate = models[0], evaluate
        self.update = _Update(spec, self.weights)
        self.generators = [torch.Generator(device=device).manual_seed(int(s.seed) % (2**63)) for s in specs]
        self.mala_on, self.prev = spec.mala and spec.num_draws > 2, None
        self.losses = None  # (draws, C), in the loss dtype, allocated at the first step
        self.acceptance = torch.full((spec.num_draws, len(specs)), float("nan"), dtype=torch.float64, device=device)

    def run(self) -> tuple[np.ndarray, np.ndarray]:
        block = noise_block(self.weights.size, self.weights.w.element_size(), self.steps)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*performance drop because we have not yet implemented the batching rule.*")
            for start in range(0, self.steps, block):
                n = min(block, self.steps - start)
                noise = draw_noise(self.generators, n, self.weights.size, self.weights.dtype, self.device)
                for j in range(n):
                    self._step(start + j, noise[:, j])
                if self._all_failed(start + n):
                    break  # every chain has stopped: the remaining draws stay NaN
        return self.losses.double().cpu().numpy().T.copy(), self.acceptance.cpu().numpy().T.copy()

    def _step(self, i: int, noise: torch.Tensor) -> None:
        batch = self.batches(i)
        if i == 0:
            loss, grad = _probe(self.loss_grad, self.model, self.evaluate, batch, self.spec.method)
            self.losses = torch.full((self.spec.num_draws, self.weights.num_chains), float("nan"), dtype=loss.dtype, device=self.device)
        else:
            loss, grad = self.loss_grad(batch)
        w = self.weights.w
        with torch.no_grad():
            drift, local = self.update.drift(w, self.weights.centre, grad)
            draw = i - self.spec.num_burnin_steps
            if draw >= 0:
                self.losses[draw] = loss
                if self.mala_on:
                    self._record_mala(draw, w, drift, loss * self.spec.nbeta + local, loss)
            self.update.apply(w, drift, noise)

    def _record_mala(self, draw: int, w, drift, potential, loss) -> None:
        # devinterp compares draw k with draw k-1 from draw 2 on (draw 1 has no predecessor
        # in its callback's state); a non-finite loss gives NaN.
        cur = (w.clone(), drift, potential)
        if draw >= 2:
            rate = _mala(self.prev, cur, self.spec.epsilon)
            self.acceptance[draw] = torch.where(torch.isnan(loss), torch.full_like(rate, float("nan")), rate).double()
        self.prev = cur

    def _all_failed(self, steps_done: int) -> bool:
        draws = steps_done - self.spec.num_burnin_steps
        return draws > 0 and bool((~torch.isfinite(self.losses[:draws])).any(dim=0).all())


def _results(losses: np.ndarray, acceptance: np.ndarray, seconds: float) -> list[ChainResult]:
    """Per-chain results, cut at each chain's first non-finite draw as the reference path
    stops it there (that draw's loss is kept, as devinterp's callback records it first)."""
    out = []
    for trace, rates in zip(losses, acceptance):
        bad = np.flatnonzero(~np.isfinite(trace))
        failed_at = int(bad[0]) if len(bad) else None
        if failed_at is not None:
            trace[failed_at + 1:] = np.nan
            rates[failed_at:] = np.nan
        out.append(ChainResult(trace, rates, failed_at, seconds / len(losses)))
    return out


def run_payload(payload: bytes, specs: Sequence[ChainSpec]) -> list[ChainResult]:
    """Worker-process entry: ``payload`` is ``_devinterp.pack_job(model, data, evaluate)``."""
    import cloudpickle  # lazy: only chain worker processes unpack a job

    model, data, evaluate = cloudpickle.loads(payload)
    return sample_chains(model, data, evaluate, specs)


def sample_chains(
    models: torch.nn.Module | Sequence[torch.nn.Module],
    data: Dataset,
    evaluate: Callable,
    specs: Sequence[ChainSpec],
) -> list[ChainResult]:
    """Run the chains of ``specs`` as one batched computation; one :class:`ChainResult` per
    spec, as ``_devinterp.sample_chain`` returns it.

    ``models``: one model (every chain localised at its weights) or one per chain (same
    architecture; e.g. several checkpoints of a run, each chain localised at its own).
    The specs must share every setting but the seed. Models are left as they were.
    Raises :class:`BatchingUnsupported` (before any step is taken) for what cannot be batched.
    """
    start = time.perf_counter()
    specs = list(specs)
    if not specs:
        raise ValueError("sample_chains needs at least one chain")
    spec = _common(specs)
    if spec.num_burnin_steps == 0:  # as the reference path warns (devinterp's warning, which is right then)
        warnings.warn("no burn-in steps: the first draws sit at w* and the estimate is biased low", UserWarning, stacklevel=2)
    models = [models] * len(specs) if isinstance(models, torch.nn.Module) else list(models)
    if len(models) != len(specs):
        raise ValueError(f"{len(models)} models for {len(specs)} chains")
    modes = [m.training for m in models]
    try:
        for m in models:
            m.train()  # devinterp samples in train mode
        losses, acceptance = _Run(models, data, evaluate, specs, spec, torch.device(spec.device)).run()
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    return _results(losses, acceptance, time.perf_counter() - start)
