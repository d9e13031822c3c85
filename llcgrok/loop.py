"""The training loop of every task: updates, metrics rows, checkpoints and resume.

A trainer (:mod:`llcgrok.train` for the modular tasks, :mod:`llcgrok.seqtrain` for the
sequence tasks) subclasses :class:`Training` with what its task decides: the batch (a
curriculum is a batch hook), the loss, the learning rate, the metrics row and the progress
bar's postfix, the summary, and the run directory's config file, checkpoint format and
state. The loop decides the rest, the same for every task:

* a step sets the learning rate, draws the batch, takes one optimizer update on its loss,
  and sums the loss and the task's other batch statistics until the next row;
* a row is due every ``eval_every`` steps, at each checkpoint and at the last step; the mean
  loss since the previous row must be finite (:class:`TrainingDiverged`, naming the step);
* after a row the stop rule may bring the last step forward (:class:`EarlyStop`); then the
  step hooks run (fingerprints); then, at a checkpoint or the last step, the save:
  the checkpoint, ``state.pt`` (what resume needs), ``metrics.csv`` and the task's files;
* a run directory holds one config: another is refused
  (:class:`llcgrok.runs.RunDirConflict`), ``force`` replaces it, ``resume=False`` starts this
  config over, and a state of this config is resumed from, with the numbers of an
  uninterrupted run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import runs
from .config_sections import TrainConfig


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the message names the step."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"training diverged at step {step}: {reason}")
        self.step = step
        self.reason = reason


def checkpoint_steps(cfg: TrainConfig) -> list[int]:
    """Steps at which checkpoints are saved: always 0 and the last step.

    ``log`` spaces them geometrically from ``eval_every`` to ``num_steps``, so the
    memorization phase early in training is covered densely; ``linear`` spaces them
    evenly; ``mixed`` takes half of each. Steps are rounded to multiples of
    ``eval_every`` so that every checkpoint has a metrics row.
    """
    n, every, total = cfg.num_checkpoints, cfg.eval_every, cfg.num_steps
    if cfg.checkpoint_schedule == "linear":
        raw = np.linspace(0, total, n + 1)
    elif cfg.checkpoint_schedule == "log":
        raw = np.geomspace(min(every, total), total, n)
    else:
        raw = np.concatenate([np.geomspace(min(every, total), total, (n + 1) // 2), np.linspace(0, total, n // 2 + 1)])
    steps = {0, total}
    for value in raw:
        step = int(round(value / every) * every)
        if step > 0:
            steps.add(min(total, step))
    return sorted(steps)


def learning_rate(cfg, update: int) -> float:
    """The learning rate of update ``update`` (0-based) under ``cfg`` (a TrainConfig or a
    SeqConfig): ``lr * min(update / warmup_steps, 1)``, then constant, or with
    ``lr_schedule`` "cosine" or "linear" (a SeqConfig's; a TrainConfig has none and is
    constant) decayed to 0 at ``num_steps``, over the last ``decay_steps`` steps when that is
    positive."""
    lr = cfg.lr if cfg.warmup_steps == 0 else cfg.lr * min(update / cfg.warmup_steps, 1.0)
    schedule = getattr(cfg, "lr_schedule", "constant")
    if schedule == "constant":
        return lr
    start = cfg.warmup_steps if cfg.decay_steps == 0 else max(cfg.num_steps - cfg.decay_steps, cfg.warmup_steps)
    if update < start:
        return lr
    progress = min((update - start) / max(cfg.num_steps - start, 1), 1.0)
    return lr * (0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress)


def stop_step(num_steps: int, delay: int | None, transition: int | None) -> int:
    """The last step: ``num_steps``, or ``delay`` steps after the step of ``transition`` when
    that comes sooner (``delay`` or ``transition`` None: ``num_steps``)."""
    if transition is None or delay is None:
        return num_steps
    return min(num_steps, transition + delay)


class EarlyStop:
    """The stop rule: :func:`stop_step` after the first row that ``reached`` accepts (a
    transition, such as grokking); ``delay`` None never stops early. A resumed run finds the
    transition in the rows it resumes with."""

    def __init__(self, num_steps: int, delay: int | None = None, reached: Callable[[dict], bool] = lambda row: False):
        self.num_steps, self.delay, self.reached = num_steps, delay, reached
        self.transition: int | None = None

    def last_step(self, rows: list[dict]) -> int:
        """The last step of a run that starts with ``rows``."""
        self.transition = next((int(row["step"]) for row in rows if self.reached(row)), None)
        return stop_step(self.num_steps, self.delay, self.transition)

    def after_row(self, row: dict, last: int) -> int:
        """The last step once ``row`` is known; ``last`` the one before it."""
        if self.transition is None and self.reached(row):
            self.transition = int(row["step"])
            return min(last, stop_step(self.num_steps, self.delay, self.transition))
        return last


@dataclass(kw_only=True)
class Training:
    """One run as the loop sees it. A trainer subclasses it and fills in the hooks below;
    ``generators`` are the random streams that ``state.pt`` carries, by their key there."""

    run_id: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generators: dict[str, torch.Generator]
    columns: list[str]  # of metrics.csv
    num_steps: int
    eval_every: int
    save_points: set[int]
    sums_on: torch.device  # where the batch statistics are summed between rows
    loss_name: str  # in TrainingDiverged's message
    stop: EarlyStop | None = None  # None: num_steps steps
    step_hooks: list[Callable[[int], None]] = field(default_factory=list)  # after each update, and at 0 of a fresh run
    rows: list = field(default_factory=list)
    start_step: int = 0
    elapsed_before: float = 0.0

    # The update and the rows.
    def lr(self, update: int) -> float:
        raise NotImplementedError

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The inputs and targets of the batch of update ``step`` (0-based)."""
        raise NotImplementedError

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The batch's loss to minimise, then any other statistic to sum until the next row."""
        raise NotImplementedError

    def eval_row(self, step: int, sums: list[float], batches: int) -> dict:
        """The metrics row at ``step``; ``sums`` of ``loss``'s values over ``batches`` batches."""
        raise NotImplementedError

    def postfix(self, row: dict) -> dict:
        """The progress bar's postfix after ``row`` (tqdm shows it sorted by key)."""
        raise NotImplementedError

    def summary(self, table: pd.DataFrame, step: int, elapsed: float) -> dict:
        raise NotImplementedError

    # The run directory.
    def prepare(self, run_dir: Path, force: bool) -> bool:
        """:func:`llcgrok.runs.prepare_run_dir` for this run's config: True when it holds it."""
        raise NotImplementedError

    def write_config(self, run_dir: Path) -> None:
        raise NotImplementedError

    def save_checkpoint(self, path: Path, step: int) -> None:
        raise NotImplementedError

    def identity(self) -> dict:
        """The first entries of ``state.pt``: which config the state belongs to."""
        raise NotImplementedError

    def resumes(self, state: dict) -> bool:
        """Whether ``state`` is one of this config, to continue from."""
        raise NotImplementedError

    def extra_state(self) -> dict:
        """More entries of ``state.pt``, after the rows."""
        return {}

    def restore(self, state: dict) -> None:
        """Take back what :meth:`extra_state` saved."""

    def write_files(self, run_dir: Path) -> None:
        """Files written with metrics.csv."""

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=self.columns)


def fit(run: Training, run_dir: str | Path | None, *, quiet: bool, resume: bool, force: bool) -> tuple[pd.DataFrame, dict]:
    """Train ``run`` to its last step; with ``run_dir``, write the run directory there
    (resuming from its state when it holds this config). The metrics table and summary."""
    run_dir = Path(run_dir) if run_dir is not None else None
    if run_dir is not None:
        open_run_dir(run, run_dir, resume, force)
    if run.start_step == 0:
        for hook in run.step_hooks:
            hook(0)
        if run_dir is not None:
            run.write_files(run_dir)
    step, elapsed = run_steps(run, run_dir, quiet)
    table = run.table()
    summary = run.summary(table, step, elapsed)
    if run_dir is not None:
        runs.atomic_write_csv(run_dir / runs.METRICS_CSV, table)
        run.write_files(run_dir)
        runs.atomic_write_json(run_dir / runs.SUMMARY_JSON, summary)  # last: marks the run finished
    return table, summary


def open_run_dir(run: Training, run_dir: Path, resume: bool, force: bool) -> None:
    """Prepare the run directory; continue from its state when it holds this config."""
    if run.prepare(run_dir, force) and not resume:
        runs.replace_run_dir(run_dir)
    state = runs.load_state(run_dir) if resume else None
    if state is not None and run.resumes(state):
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        for key, generator in run.generators.items():
            generator.set_state(state[key])
        run.rows, run.start_step, run.elapsed_before = list(state["rows"]), int(state["step"]), float(state.get("elapsed_s", 0.0))
        run.restore(state)
    run.write_config(run_dir)
    if run.start_step == 0:
        run.save_checkpoint(runs.checkpoint_path(run_dir, 0), 0)


def save(run: Training, run_dir: Path, step: int, elapsed: float) -> None:
    """The checkpoint of ``step``, the state to resume from, metrics.csv and the task's files."""
    run.save_checkpoint(runs.checkpoint_path(run_dir, step), step)
    runs.save_state(run_dir, {
        **run.identity(), "step": step, "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
        **{key: generator.get_state() for key, generator in run.generators.items()}, "rows": run.rows,
        **run.extra_state(), "elapsed_s": elapsed,
    })
    runs.atomic_write_csv(run_dir / runs.METRICS_CSV, run.table())
    run.write_files(run_dir)


def _update(run: Training, step: int) -> list[torch.Tensor]:
    """One optimizer update on the batch of ``step``; its statistics, where they are summed."""
    for group in run.optimizer.param_groups:
        group["lr"] = run.lr(step)
    loss, *more = run.loss(*run.batch(step))
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    return [stat.detach().to(run.sums_on) for stat in (loss, *more)]


def _row(run: Training, step: int, sums: list[torch.Tensor], batches: int) -> dict:
    """The row at ``step`` from the sums since the previous one (then reset), appended."""
    totals = [total.item() for total in sums]
    mean_loss = totals[0] / batches
    if not math.isfinite(mean_loss):
        raise TrainingDiverged(step, f"{run.loss_name} is {mean_loss}")
    row = run.eval_row(step, totals, batches)
    run.rows.append(row)
    for total in sums:
        total.zero_()
    return row


def run_steps(run: Training, run_dir: Path | None, quiet: bool) -> tuple[int, float]:
    """Train from ``run.start_step`` to the last step (the stop rule's), with the rows, step
    hooks and saves on schedule; the last step and the run's wall time so far."""
    stop = run.stop if run.stop is not None else EarlyStop(run.num_steps)
    stop_at = stop.last_step(run.rows)
    sums, batches = None, 0
    run.model.train()
    t0 = time.perf_counter()
    step = run.start_step
    with tqdm(total=run.num_steps, initial=step, disable=quiet, desc=run.run_id, unit="step", leave=False) as bar:
        while step < stop_at:
            stats = _update(run, step)
            step += 1
            # On run.sums_on: on the training device, a step never waits for a read-back.
            sums = sums if sums is not None else [torch.zeros((), device=run.sums_on) for _ in stats]
            for total, stat in zip(sums, stats):
                total += stat
            batches += 1
            if step % run.eval_every == 0 or step in run.save_points or step == stop_at:
                row = _row(run, step, sums, batches)
                batches = 0
                bar.set_postfix(**run.postfix(row), refresh=False)
                stop_at = stop.after_row(row, stop_at)
            for hook in run.step_hooks:
                hook(step)
            bar.update(1)
            if run_dir is not None and (step in run.save_points or step == stop_at):
                save(run, run_dir, step, run.elapsed_before + time.perf_counter() - t0)
    return step, run.elapsed_before + time.perf_counter() - t0
