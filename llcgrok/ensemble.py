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

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import metrics as metrics_mod
from . import runs
from .config_sections import RunConfig, TrainConfig
from .device import resolve_device
from .ensemble_model import EnsembleModel, _evaluate_members
from .model import GrokTransformer, build_model
from .seeding import BATCHES, EVALUATION, INIT, rng_seed
from .tasks import TaskData, make_task
from .loop import TrainingDiverged, checkpoint_steps, learning_rate, stop_step
from .train import METRIC_COLUMNS, TrainResult, adamw, eval_chunk_size, train

__all__ = ["train_ensemble", "EnsembleModel", "seed_config"]


def seed_config(cfg: RunConfig, seed: int) -> RunConfig:
    """``cfg`` with ``train.seed`` set: the config of one member, as ``train()`` would see it."""
    out = copy.deepcopy(cfg)
    out.train.seed = seed
    return out


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


@dataclass
class _EnsembleLoop:
    """What a vectorised ensemble carries from step to step: the stacked model and its
    optimizer, and per member its config, data (stacked along a leading member dimension),
    generators and progress."""

    cfg: RunConfig
    seeds: list[int]
    configs: list[RunConfig]  # seed_config(cfg, seed) of each member
    tasks: list[TaskData]
    device: torch.device
    train_inputs: torch.Tensor
    train_targets: torch.Tensor
    val_inputs: torch.Tensor
    val_targets: torch.Tensor
    models: list[GrokTransformer]  # the initial weights, for the step-0 checkpoints
    ensemble: EnsembleModel
    optimizer: torch.optim.Optimizer
    batch_gens: list[torch.Generator]
    eval_gens: list[torch.Generator]
    dirs: list[Path] | None = None
    member_index: torch.Tensor = field(init=False)  # (members, 1): picks each member's rows of the stacked data
    chunk: int = field(init=False)  # rows per forward pass in evaluation
    # Per member: train loss and correct count since its last row (on the device), rows, last step.
    loss_acc: torch.Tensor = field(init=False)
    correct_acc: torch.Tensor = field(init=False)
    since_eval: list[int] = field(init=False)
    rows: list[list[dict]] = field(init=False)
    stop_at: list[int] = field(init=False)
    grok_step: list[int | None] = field(init=False)
    final_state: list[dict | None] = field(init=False)
    final_step: list[int] = field(init=False)

    def __post_init__(self) -> None:
        size = len(self.seeds)
        self.member_index = torch.arange(size, device=self.device).unsqueeze(1)
        self.chunk = eval_chunk_size(self.device)
        self.loss_acc = torch.zeros(size, device=self.device)
        self.correct_acc = torch.zeros(size, device=self.device)
        self.since_eval = [0] * size
        self.rows = [[] for _ in range(size)]
        self.stop_at = [self.cfg.train.num_steps] * size
        self.grok_step = [None] * size
        self.final_state = [None] * size
        self.final_step = [0] * size


def _check_arguments(seeds: list[int], run_dirs) -> None:
    if not seeds:
        raise ValueError("train_ensemble needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"train_ensemble: repeated seeds in {seeds}")
    if run_dirs is not None and len(run_dirs) != len(seeds):
        raise ValueError(f"train_ensemble: {len(run_dirs)} run directories for {len(seeds)} seeds")


def _vectorized(tc: TrainConfig, device: torch.device, vectorize: bool | None) -> bool:
    """Whether the seeds train as one vectorised pass (see :func:`train_ensemble`)."""
    # Fingerprints and initial-weight perturbations are recorded and applied by train() alone.
    per_run_only = bool(tc.fingerprint_every) or tc.init_perturbation != 0
    if vectorize and per_run_only:
        raise ValueError("train_ensemble: train.fingerprint_every and train.init_perturbation need vectorize=False")
    if vectorize is None:
        return device.type != "cpu" and not per_run_only
    return bool(vectorize)


def _start(cfg: RunConfig, seeds: list[int], device: torch.device, attention: str) -> _EnsembleLoop:
    """Every member's task, initial weights and generators as ``train()`` draws them, the
    weights stacked into one model and one AdamW."""
    tc = cfg.train
    configs = [seed_config(cfg, s) for s in seeds]
    tasks = [make_task(cfg.task, seed=s) for s in seeds]
    data = [torch.stack([getattr(t, name) for t in tasks]).to(device)
            for name in ("train_inputs", "train_targets", "val_inputs", "val_targets")]
    models = []
    for s in seeds:
        torch.manual_seed(rng_seed(s, INIT))  # the initial weights train() would draw
        models.append(build_model(cfg.model, tasks[0].vocab_size, tasks[0].num_classes, tasks[0].seq_len).to(device))
    ensemble = EnsembleModel(models, attention)
    params = list(ensemble.params.values())  # model.parameters() order: state.pt loads into train()
    optimizer = adamw(params, tc, device)
    batch_gens = [torch.Generator().manual_seed(rng_seed(s, BATCHES)) for s in seeds]
    eval_gens = [torch.Generator().manual_seed(rng_seed(s, EVALUATION)) for s in seeds]
    return _EnsembleLoop(cfg, seeds, configs, tasks, device, *data, models, ensemble, optimizer, batch_gens, eval_gens)


def _prepare_dirs(loop: _EnsembleLoop, run_dirs: Sequence[str | Path]) -> None:
    loop.dirs = [Path(d) for d in run_dirs]
    for d, member_cfg, model in zip(loop.dirs, loop.configs, loop.models):
        runs.prepare_run_dir(d, runs.training_identity(member_cfg))  # another config there is refused
        runs.replace_run_dir(d)  # an ensemble starts at step 0: nothing of an earlier try stays
        runs.write_config(d, member_cfg)
        runs.save_checkpoint(runs.checkpoint_path(d, 0), model, 0, member_cfg)


def _save_member(loop: _EnsembleLoop, m: int, step: int, elapsed: float) -> None:
    """Member ``m``'s checkpoint, metrics and the ``state.pt`` that ``train()`` resumes from."""
    model = loop.ensemble.member(m, "cpu")
    run_dir, member_cfg = loop.dirs[m], loop.configs[m]
    runs.save_checkpoint(runs.checkpoint_path(run_dir, step), model, step, member_cfg)
    runs.save_state(
        run_dir,
        {
            "run_config": member_cfg.to_dict(),
            "step": step,
            "model": model.state_dict(),
            "optimizer": _member_optimizer_state(loop.optimizer.state_dict(), m),
            "batch_gen": loop.batch_gens[m].get_state(),
            "eval_gen": loop.eval_gens[m].get_state(),
            "rows": copy.deepcopy(loop.rows[m]),
            "elapsed_s": elapsed / len(loop.seeds),
        },
    )
    runs.atomic_write_csv(run_dir / runs.METRICS_CSV, pd.DataFrame(loop.rows[m], columns=METRIC_COLUMNS))


def _update(loop: _EnsembleLoop, step: int) -> None:
    """One AdamW update of every member on a batch of its own; its loss and correct count
    are added to the member's running sums."""
    tc, size = loop.cfg.train, len(loop.seeds)
    for group in loop.optimizer.param_groups:
        group["lr"] = learning_rate(tc, step)
    # Every member draws its batch from its own generator, finished members too, which
    # keeps the stacked step rectangular; their updates are never recorded.
    n_train = loop.train_inputs.shape[1]
    idx = torch.stack([torch.randint(n_train, (tc.batch_size,), generator=g) for g in loop.batch_gens]).to(loop.device, non_blocking=True)
    inputs, targets = loop.train_inputs[loop.member_index, idx], loop.train_targets[loop.member_index, idx]
    logits = loop.ensemble(inputs)
    losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(size, -1).mean(1)
    loop.optimizer.zero_grad(set_to_none=True)
    losses.sum().backward()  # each member's gradient is that of its own mean loss
    loop.optimizer.step()
    loop.loss_acc += losses.detach()
    loop.correct_acc += (logits.detach().argmax(-1) == targets).sum(1)
    for m in range(size):
        loop.since_eval[m] += 1


def _evaluate_due(loop: _EnsembleLoop, step: int, due: list[bool]) -> None:
    """A metrics row for every member ``due``: train loss and accuracy since its last row,
    validation on a sample of its own; a member that groks starts its early-stop countdown."""
    tc, size = loop.cfg.train, len(loop.seeds)
    train_loss = (loop.loss_acc.cpu() / torch.tensor(loop.since_eval, dtype=torch.float32)).tolist()
    train_acc = (loop.correct_acc.cpu() / torch.tensor([n * tc.batch_size for n in loop.since_eval], dtype=torch.float32)).tolist()
    for m in range(size):
        if due[m] and not math.isfinite(train_loss[m]):
            raise TrainingDiverged(step, f"train loss is {train_loss[m]} (seed {loop.seeds[m]})")
    eval_size, n_val = tc.eval_batches * tc.batch_size, loop.val_inputs.shape[1]
    draws = torch.stack([
        torch.randint(n_val, (eval_size,), generator=loop.eval_gens[m]) if due[m] else torch.zeros(eval_size, dtype=torch.long)
        for m in range(size)
    ]).to(loop.device)
    due_t = torch.tensor(due, device=loop.device)
    val_loss, val_acc = _evaluate_members(loop.ensemble, loop.val_inputs, loop.val_targets, draws, due_t, loop.chunk)
    for m in range(size):
        if not due[m]:
            continue
        loop.rows[m].append({"step": step, "train_loss": train_loss[m], "train_acc": train_acc[m],
                             "val_loss": val_loss[m], "val_acc": val_acc[m]})
        loop.loss_acc[m] = 0.0
        loop.correct_acc[m] = 0.0
        loop.since_eval[m] = 0
        if loop.grok_step[m] is None and val_acc[m] > metrics_mod.THRESHOLD:
            loop.grok_step[m] = step
            loop.stop_at[m] = min(loop.stop_at[m], stop_step(tc.num_steps, tc.early_stop_delay, step))


def _run_steps(loop: _EnsembleLoop, quiet: bool) -> float:
    """Train every member to its last step (early stop included), evaluating and saving each
    on the schedule of its own run; the wall time."""
    tc, size = loop.cfg.train, len(loop.seeds)
    save_points = set(checkpoint_steps(tc))
    t0 = time.perf_counter()
    step = 0
    with tqdm(total=tc.num_steps, disable=quiet, desc=f"{loop.cfg.run_id} x{size}", unit="step", leave=False) as bar:
        while step < max(loop.stop_at):
            active = [step < loop.stop_at[m] for m in range(size)]
            _update(loop, step)
            step += 1
            due = [
                active[m] and (step % tc.eval_every == 0 or step in save_points or step == loop.stop_at[m]) for m in range(size)
            ]
            if any(due):
                _evaluate_due(loop, step, due)
            for m in range(size):
                if active[m] and loop.dirs is not None and (step in save_points or step == loop.stop_at[m]):
                    _save_member(loop, m, step, time.perf_counter() - t0)
                if active[m] and step == loop.stop_at[m]:
                    loop.final_state[m] = loop.ensemble.state_dict(m)
                    loop.final_step[m] = step
            bar.update(1)
    return time.perf_counter() - t0


def _results(loop: _EnsembleLoop, elapsed: float) -> list[TrainResult]:
    """Each member as ``train()`` returns its run; with run directories, its metrics and
    ``summary.json`` (last: it marks the run finished) written there."""
    tc, size, device = loop.cfg.train, len(loop.seeds), loop.device
    results = []
    for m, task in enumerate(loop.tasks):
        model = build_model(loop.cfg.model, task.vocab_size, task.num_classes, task.seq_len)
        model.load_state_dict(loop.final_state[m])
        model.to(device)
        table = pd.DataFrame(loop.rows[m], columns=METRIC_COLUMNS)
        summary = {
            "run_id": loop.configs[m].run_id,
            "num_params": model.num_params,
            **metrics_mod.summarize(table),
            "num_steps_run": loop.final_step[m],
            "stopped_early": loop.final_step[m] < tc.num_steps,
            "wall_time_s": round(elapsed / size, 3),
            "ms_per_step": round(1000 * elapsed / size / max(loop.final_step[m], 1), 3),
            "device": str(device),
            "ensemble_size": size,
            "ensemble_wall_time_s": round(elapsed, 3),
        }
        if loop.dirs is not None:
            runs.atomic_write_csv(loop.dirs[m] / runs.METRICS_CSV, table)
            runs.atomic_write_json(loop.dirs[m] / runs.SUMMARY_JSON, summary)
        results.append(TrainResult(model=model, metrics=table, summary=summary, task=task))
    return results


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
    _check_arguments(seeds, run_dirs)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    device = resolve_device(cfg.train.device)
    if not _vectorized(cfg.train, device, vectorize):
        return _train_one_by_one(cfg, seeds, run_dirs, quiet)
    run = _start(cfg, seeds, device, attention)
    if run_dirs is not None:
        _prepare_dirs(run, run_dirs)
    return _results(run, _run_steps(run, quiet))
