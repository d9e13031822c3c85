"""Seeds of one architecture trained as one vectorised ensemble.

``train_ensemble(cfg, seeds)`` trains ``len(seeds)`` copies of the model in one pass: the
weights are stacked along a new leading dimension (``torch.func.stack_module_state``), the
forward pass is ``vmap`` of ``functional_call`` over the very :class:`GrokTransformer` that
``train()`` uses, and one fused AdamW steps the stacked tensors. AdamW is elementwise, so on
stacked tensors it is exactly per-seed AdamW; the loss is the sum of the per-seed mean
losses, so each seed's gradient is its own.

Each seed is what ``train(cfg with train.seed = seed)`` would be: the same initial weights,
the same split (when ``task.split_seed`` is None it follows the seed), the same batch and
validation draws from the same generators, the same learning-rate schedule, evaluation
rows at the same steps and the same early stop. The numbers agree with separate runs up to
float rounding (batched matrix products sum in another order); ``tests/test_ensemble.py``
checks the per-seed losses against separate runs.

Where it pays: on a GPU, where these models are far too small to fill the device and a
training step costs about the same for one seed as for five. On a CPU it does not: the
vectorised step ran at 0.43x the speed of separate runs here, so by default a CPU trains
the seeds one after another (``vectorize=None``; see docs/performance.md).

With ``run_dirs`` (one per seed) each seed gets a complete run directory, with the files
``train()`` writes at the same steps (config, checkpoints, metrics, ``state.pt``,
``summary.json`` last). An ensemble does not resume itself: it replaces what a directory of
the same config holds, refuses one of another config, and an interrupted seed can be
finished by ``train(cfg, run_dir)``, which resumes from the ``state.pt`` written here.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap
from tqdm.auto import tqdm

from . import metrics as metrics_mod
from . import runs
from .config import RunConfig
from .device import resolve_device
from .model import GrokTransformer, build_model
from .tasks import make_task
from .train import (
    METRIC_COLUMNS,
    TrainingDiverged,
    TrainResult,
    _rng_seed,
    checkpoint_steps,
    train,
    eval_chunk_size,
    learning_rate,
)

__all__ = ["train_ensemble", "EnsembleModel", "seed_config"]


def seed_config(cfg: RunConfig, seed: int) -> RunConfig:
    """``cfg`` with ``train.seed`` set: the config of one member, as ``train()`` would see it."""
    out = copy.deepcopy(cfg)
    out.train.seed = seed
    return out


def _math_attention():
    """On a CPU, torch's fused attention kernel has no vmap rule (vmap would loop over the
    seeds); the math path is plain matmul and softmax, which vmap batches, and at four
    tokens it is as fast (measured)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


class EnsembleModel:
    """Stacked weights of ``S`` models of one architecture and their vectorised forward.

    ``params[name]`` has shape ``(S, *shape)``; ``forward(inputs)`` maps ``(S, B, T)``
    token rows to ``(S, B, C)`` logits.
    """

    def __init__(self, models: Sequence[GrokTransformer], attention: str = "auto"):
        if attention not in ("auto", "math", "fused"):
            raise ValueError(f"attention must be 'auto', 'math' or 'fused', got {attention!r}")
        self.template = models[0]
        self.params, self.buffers = stack_module_state(list(models))
        self._skeleton = copy.deepcopy(models[0]).to("meta")
        self.size = len(models)
        self.device = next(iter(self.params.values())).device
        # "auto" is the math path everywhere: the fused CPU kernel has no vmap rule, and on
        # CUDA (torch 2.11, H100) the fused kernel's backward under vmap fails with "LSE is
        # not correctly aligned"; the math path gave the 1.9-2.35x ensemble speed-up there.
        self.use_math = attention in ("math", "auto")

        def one(params, buffers, x):
            return functional_call(self._skeleton, (params, buffers), (x,))

        self._forward = vmap(one)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        ctx = _math_attention() if self.use_math else contextlib.nullcontext()
        with ctx:
            return self._forward(self.params, self.buffers, inputs)

    __call__ = forward

    def state_dict(self, member: int) -> dict[str, torch.Tensor]:
        return {name: value[member].detach().clone() for name, value in {**self.params, **self.buffers}.items()}

    def member(self, index: int, device: torch.device | str | None = None) -> GrokTransformer:
        """A standalone model holding member ``index``'s current weights."""
        model = copy.deepcopy(self.template)
        model.load_state_dict(self.state_dict(index))
        return model.to(device or self.device)


def _member_optimizer_state(opt_state: dict, member: int) -> dict:
    """Member ``member``'s slice of the stacked AdamW state, in the layout ``train()``'s
    optimizer loads (the stacked parameters are in ``model.parameters()`` order)."""
    state = {}
    for index, slot in opt_state["state"].items():
        state[index] = {
            key: (value if key == "step" or value.dim() == 0 else value[member]).detach().clone().cpu()
            for key, value in slot.items()
        }
    return {"state": state, "param_groups": copy.deepcopy(opt_state["param_groups"])}


def _train_one_by_one(cfg: RunConfig, seeds: list[int], run_dirs, quiet: bool) -> list[TrainResult]:
    t0 = time.perf_counter()
    results = [
        train(seed_config(cfg, s), None if run_dirs is None else run_dirs[i], quiet=quiet) for i, s in enumerate(seeds)
    ]
    elapsed = time.perf_counter() - t0
    for r in results:
        r.summary["ensemble_size"] = len(seeds)
        r.summary["ensemble_wall_time_s"] = round(elapsed, 3)
    return results


@torch.inference_mode()
def _evaluate_members(model: EnsembleModel, inputs, targets, draws, due, chunk: int) -> tuple[list, list]:
    """Per member, mean loss and accuracy over ``inputs[m][draws[m]]`` (draws with
    replacement), each distinct row evaluated once and weighted by its count. Members not
    ``due`` get weight 0 everywhere (their numbers are discarded)."""
    size, n = inputs.shape[0], inputs.shape[1]
    counts = torch.zeros(size, n, device=inputs.device)
    counts.scatter_add_(1, draws, torch.ones_like(draws, dtype=counts.dtype))
    counts[~due] = 0
    present = counts > 0
    width = max(int(present.sum(1).max().item()), 1)
    # Distinct rows first (stable sort on "absent"), padded to a common width with weight 0.
    order = torch.sort((~present).to(torch.int8), dim=1, stable=True).indices[:, :width]
    weights = counts.gather(1, order)
    members = torch.arange(size, device=inputs.device).unsqueeze(1)
    rows, tgts = inputs[members, order], targets[members, order]
    loss_sum = torch.zeros(size, device=inputs.device)
    correct = torch.zeros(size, device=inputs.device)
    for start in range(0, width, chunk):
        logits = model(rows[:, start : start + chunk])
        tgt, w = tgts[:, start : start + chunk], weights[:, start : start + chunk]
        loss = F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), reduction="none").view_as(w)
        loss_sum += (loss * w).sum(1)
        correct += ((logits.argmax(-1) == tgt).to(w.dtype) * w).sum(1)
    total = counts.sum(1).clamp_min(1)
    return (loss_sum / total).tolist(), (correct / total).tolist()


def train_ensemble(
    cfg: RunConfig,
    seeds: Sequence[int],
    run_dirs: Sequence[str | Path] | None = None,
    *,
    quiet: bool = True,
    vectorize: bool | None = None,
    attention: str = "auto",
) -> list[TrainResult]:
    """Train ``cfg`` once per seed in ``seeds``, all seeds in one vectorised pass.

    Returns one :class:`TrainResult` per seed, in order, each as ``train()`` returns it for
    ``seed_config(cfg, seed)`` (the model on the training device, the metrics table, the
    summary, the task). ``summary["wall_time_s"]`` is the member's share of the ensemble's
    wall time; ``ensemble_size`` and ``ensemble_wall_time_s`` are added.

    ``vectorize``: None (default) vectorises on an accelerator and, on a CPU, trains the
    seeds one after another with ``train()`` (bit-identical to separate runs), because on a
    CPU the vectorised step is slower: vmap turns every linear layer into a batched matrix
    product that MKL runs at a fraction of the plain product's speed (measured 0.43x of
    sequential at 1x64 and 2x128, 5 seeds, docs/performance.md). True or False forces
    either path. ``attention`` picks the attention path under vmap (see
    :class:`EnsembleModel`); it changes speed only.
    """
    seeds = list(seeds)
    if not seeds:
        raise ValueError("train_ensemble needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"train_ensemble: repeated seeds in {seeds}")
    if run_dirs is not None and len(run_dirs) != len(seeds):
        raise ValueError(f"train_ensemble: {len(run_dirs)} run directories for {len(seeds)} seeds")
    size = len(seeds)
    tc = cfg.train
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    device = resolve_device(tc.device)
    # Fingerprints and initial-weight perturbations are recorded and applied by train() alone.
    per_run_only = bool(tc.fingerprint_every) or tc.init_perturbation != 0
    if vectorize and per_run_only:
        raise ValueError("train_ensemble: train.fingerprint_every and train.init_perturbation need vectorize=False")
    if vectorize is None:
        vectorize = device.type != "cpu" and not per_run_only
    if not vectorize:
        return _train_one_by_one(cfg, seeds, run_dirs, quiet)
    member_cfgs = [seed_config(cfg, s) for s in seeds]
    tasks = [make_task(cfg.task, seed=s) for s in seeds]
    train_inputs = torch.stack([t.train_inputs for t in tasks]).to(device)
    train_targets = torch.stack([t.train_targets for t in tasks]).to(device)
    val_inputs = torch.stack([t.val_inputs for t in tasks]).to(device)
    val_targets = torch.stack([t.val_targets for t in tasks]).to(device)
    n_train, n_val = train_inputs.shape[1], val_inputs.shape[1]

    models = []
    for s in seeds:
        torch.manual_seed(_rng_seed(s, 0))  # the initial weights train() would draw
        models.append(build_model(cfg.model, tasks[0].vocab_size, tasks[0].num_classes, tasks[0].seq_len).to(device))
    ensemble = EnsembleModel(models, attention)
    params = list(ensemble.params.values())  # model.parameters() order: state.pt loads into train()
    fused = device.type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(params, lr=tc.lr, betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay, fused=fused)
    batch_gens = [torch.Generator().manual_seed(_rng_seed(s, 1)) for s in seeds]
    eval_gens = [torch.Generator().manual_seed(_rng_seed(s, 2)) for s in seeds]

    save_points = set(checkpoint_steps(tc))
    dirs = [Path(d) for d in run_dirs] if run_dirs is not None else None
    if dirs is not None:
        for d, mc, m in zip(dirs, member_cfgs, models):
            runs.prepare_run_dir(d, runs.training_identity(mc))  # another config there is refused
            runs.replace_run_dir(d)  # an ensemble starts at step 0: nothing of an earlier try stays
            runs.write_config(d, mc)
            runs.save_checkpoint(runs.checkpoint_path(d, 0), m, 0, mc)

    eval_size = tc.eval_batches * tc.batch_size
    chunk = eval_chunk_size(device)
    members = torch.arange(size, device=device).unsqueeze(1)
    loss_acc = torch.zeros(size, device=device)
    correct_acc = torch.zeros(size, device=device)
    since_eval = [0] * size
    rows: list[list[dict]] = [[] for _ in range(size)]
    stop_at = [tc.num_steps] * size
    grok_step: list[int | None] = [None] * size
    final_state: list[dict | None] = [None] * size
    final_step = [0] * size

    def save_member(m: int, step: int, elapsed: float) -> None:
        model = ensemble.member(m, "cpu")
        runs.save_checkpoint(runs.checkpoint_path(dirs[m], step), model, step, member_cfgs[m])
        runs.save_state(
            dirs[m],
            {
                "run_config": member_cfgs[m].to_dict(),
                "step": step,
                "model": model.state_dict(),
                "optimizer": _member_optimizer_state(optimizer.state_dict(), m),
                "batch_gen": batch_gens[m].get_state(),
                "eval_gen": eval_gens[m].get_state(),
                "rows": copy.deepcopy(rows[m]),
                "elapsed_s": elapsed / size,
            },
        )
        runs.atomic_write_csv(dirs[m] / runs.METRICS_CSV, pd.DataFrame(rows[m], columns=METRIC_COLUMNS))

    t0 = time.perf_counter()
    bar = tqdm(total=tc.num_steps, disable=quiet, desc=f"{cfg.run_id} x{size}", unit="step", leave=False)
    step = 0
    while step < max(stop_at):
        active = [step < stop_at[m] for m in range(size)]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(tc, step)
        # Every member draws its batch from its own generator, finished members too, which
        # keeps the stacked step rectangular; their updates are never recorded.
        idx = torch.stack([torch.randint(n_train, (tc.batch_size,), generator=g) for g in batch_gens]).to(device, non_blocking=True)
        inputs, targets = train_inputs[members, idx], train_targets[members, idx]
        logits = ensemble(inputs)
        losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(size, -1).mean(1)
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # each member's gradient is that of its own mean loss
        optimizer.step()
        step += 1
        loss_acc += losses.detach()
        correct_acc += (logits.detach().argmax(-1) == targets).sum(1)
        for m in range(size):
            since_eval[m] += 1

        due = [
            active[m] and (step % tc.eval_every == 0 or step in save_points or step == stop_at[m]) for m in range(size)
        ]
        if any(due):
            train_loss = (loss_acc.cpu() / torch.tensor(since_eval, dtype=torch.float32)).tolist()
            train_acc = (correct_acc.cpu() / torch.tensor([n * tc.batch_size for n in since_eval], dtype=torch.float32)).tolist()
            for m in range(size):
                if due[m] and not math.isfinite(train_loss[m]):
                    bar.close()
                    raise TrainingDiverged(step, f"train loss is {train_loss[m]} (seed {seeds[m]})")
            draws = torch.stack([
                torch.randint(n_val, (eval_size,), generator=eval_gens[m]) if due[m] else torch.zeros(eval_size, dtype=torch.long)
                for m in range(size)
            ]).to(device)
            due_t = torch.tensor(due, device=device)
            val_loss, val_acc = _evaluate_members(ensemble, val_inputs, val_targets, draws, due_t, chunk)
            for m in range(size):
                if not due[m]:
                    continue
                rows[m].append({"step": step, "train_loss": train_loss[m], "train_acc": train_acc[m],
                                "val_loss": val_loss[m], "val_acc": val_acc[m]})
                loss_acc[m] = 0.0
                correct_acc[m] = 0.0
                since_eval[m] = 0
                if grok_step[m] is None and val_acc[m] > metrics_mod.THRESHOLD:
                    grok_step[m] = step
                    if tc.early_stop_delay is not None:
                        stop_at[m] = min(stop_at[m], step + tc.early_stop_delay)
        for m in range(size):
            if active[m] and dirs is not None and (step in save_points or step == stop_at[m]):
                save_member(m, step, time.perf_counter() - t0)
            if active[m] and step == stop_at[m]:
                final_state[m] = ensemble.state_dict(m)
                final_step[m] = step
        bar.update(1)
    bar.close()

    elapsed = time.perf_counter() - t0
    results = []
    for m, s in enumerate(seeds):
        model = build_model(cfg.model, tasks[m].vocab_size, tasks[m].num_classes, tasks[m].seq_len)
        model.load_state_dict(final_state[m])
        model.to(device)
        table = pd.DataFrame(rows[m], columns=METRIC_COLUMNS)
        summary = {
            "run_id": member_cfgs[m].run_id,
            "num_params": model.num_params,
            **metrics_mod.summarize(table),
            "num_steps_run": final_step[m],
            "stopped_early": final_step[m] < tc.num_steps,
            "wall_time_s": round(elapsed / size, 3),
            "ms_per_step": round(1000 * elapsed / size / max(final_step[m], 1), 3),
            "device": str(device),
            "ensemble_size": size,
            "ensemble_wall_time_s": round(elapsed, 3),
        }
        if dirs is not None:
            runs.atomic_write_csv(dirs[m] / runs.METRICS_CSV, table)
            runs.atomic_write_json(dirs[m] / runs.SUMMARY_JSON, summary)
        results.append(TrainResult(model=model, metrics=table, summary=summary, task=tasks[m]))
    return results

